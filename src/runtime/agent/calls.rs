//! File calls and background processes over the agent: each call is one request frame
//! and one reply (`Entries` may come in several frames), multiplexed by id on the
//! project's connection like execs. Large reads and writes are cut into `MAX_DATA`
//! pieces here; the agent never sees more than one frame's worth.

use std::sync::Arc;
use std::time::Duration;

use berth_wire::{
    write_flags, Entry, EntryType, FailReason, Frame, ProcInfo, RefusedKind, Start, MAX_DATA, MAX_FRAME, NO_MODE,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AgentConn, AgentError, Event};
use crate::error::{Error, ErrorKind};
use crate::files::{FsCall, FsEntry, FsPath, FsReply, WriteAt};

/// The most entries one `fs.list` returns; a larger directory is `too_large`.
pub const MAX_LIST: usize = 10_000;

/// Reads sent ahead of the one being waited for, within one `fs.read`.
const READS_AHEAD: usize = 8;

/// Output of a background process, as `ProcOutput` returns it.
#[derive(Debug, Clone)]
pub struct ProcOutput {
    pub info: ProcInfo,
    pub stdout_offset: u64,
    pub stdout: Vec<u8>,
    pub stderr_offset: u64,
    pub stderr: Vec<u8>,
    pub dropped: u64,
}

/// What a process spawn asks for.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub stdin: bool,
    /// Bytes of each stream's newest output the agent keeps.
    pub keep: u32,
}

/// One call in flight: its id and where its reply frames arrive. Unregisters on drop,
/// so a call given up (its client gone) leaves nothing behind.
struct Pending {
    conn: Arc<AgentConn>,
    id: u32,
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.conn.unregister(self.id);
    }
}

impl Pending {
    /// The next reply frame, within `within`; the connection closing is an error.
    async fn next(&mut self, within: Duration) -> Result<Frame, Error> {
        match tokio::time::timeout(within, self.rx.recv()).await {
            Ok(Some(Event::Frame(f))) => Ok(f),
            Ok(None) => Err(lost(&self.conn)),
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!("project {}'s agent did not answer within {within:?}", self.conn.project),
            )),
        }
    }
}

fn lost(conn: &AgentConn) -> Error {
    Error::new(
        ErrorKind::RuntimeUnavailable,
        format!("the connection to project {}'s agent closed during the call", conn.project),
    )
}

impl From<AgentError> for Error {
    fn from(e: AgentError) -> Self {
        Error::new(ErrorKind::RuntimeUnavailable, e.to_string())
    }
}

/// The error a refusal becomes, in berth's kinds.
fn refused(kind: RefusedKind, message: String) -> Error {
    let k = match kind {
        RefusedKind::NotFound => ErrorKind::NotFound,
        RefusedKind::WrongKind | RefusedKind::Invalid => ErrorKind::InvalidParams,
        RefusedKind::Exists => ErrorKind::AlreadyExists,
        RefusedKind::Denied => ErrorKind::Forbidden,
        RefusedKind::Busy => ErrorKind::Busy,
        RefusedKind::Other => ErrorKind::RuntimeError,
    };
    Error::new(k, message)
}

fn unexpected(f: &Frame) -> Error {
    Error::internal(format!("the agent answered a call with an unexpected {} frame", f.kind_name()))
}

impl AgentConn {
    /// Sends the frame `make` builds for a fresh id; the reply frames arrive on the
    /// returned `Pending`.
    fn request(self: &Arc<Self>, make: impl FnOnce(u32) -> Frame) -> Result<Pending, Error> {
        let (id, rx, _) = self.register();
        let pending = Pending { conn: self.clone(), id, rx };
        let frame = make(id);
        // A frame the agent would refuse as malformed would cost the whole connection
        // (and every command on it): refuse it here, as the request's own error.
        if let Frame::Spawn { .. } = &frame {
            let len = frame.to_bytes().len() - 4;
            if len > MAX_FRAME {
                return Err(Error::invalid_params(format!(
                    "the command and its environment take {len} bytes, more than the {MAX_FRAME} one agent frame holds"
                )));
            }
        }
        self.send(frame)?;
        Ok(pending)
    }

    /// One request, one reply (refusals made errors).
    async fn call(self: &Arc<Self>, within: Duration, make: impl FnOnce(u32) -> Frame) -> Result<Frame, Error> {
        let mut p = self.request(make)?;
        match p.next(within).await? {
            Frame::Refused { kind, message, .. } => Err(refused(kind, message)),
            f => Ok(f),
        }
    }

    /// Carries out one file call in the container, as the agent's (the container's) user.
    /// Read data is held in `hold` (the output budget) piece by piece, before each piece
    /// is asked for.
    pub async fn fs(
        self: &Arc<Self>,
        call: FsCall,
        within: Duration,
        hold: &mut crate::runtime::Reservation,
    ) -> Result<FsReply, Error> {
        match call {
            FsCall::Read { path, offset, limit } => self.read(&path, offset, limit, within, hold).await,
            FsCall::Write { path, data, at, mode, mkdirs } => {
                self.write(&path, &data, at, mode, mkdirs, within).await.map(|size| FsReply::Done { size })
            }
            FsCall::List { path } => self.entries(&path, true, within).await.map(FsReply::Entries),
            FsCall::Stat { path } => self.entries(&path, false, within).await.map(FsReply::Entries),
            FsCall::Remove { path, recursive } => {
                let p = path.as_str().as_bytes().to_vec();
                self.done(within, |id| Frame::FsRemove { id, path: p, recursive }).await
            }
            FsCall::Mkdir { path, parents, mode } => {
                let p = path.as_str().as_bytes().to_vec();
                let mode = mode.unwrap_or(NO_MODE);
                self.done(within, |id| Frame::FsMkdir { id, path: p, parents, mode }).await
            }
        }
    }

    async fn done(self: &Arc<Self>, within: Duration, make: impl FnOnce(u32) -> Frame) -> Result<FsReply, Error> {
        match self.call(within, make).await? {
            Frame::Done { size, .. } => Ok(FsReply::Done { size }),
            f => Err(unexpected(&f)),
        }
    }

    /// Up to `limit` bytes from `offset`: the first piece tells the file's size, the
    /// rest are asked for a few at a time and put together in order.
    async fn read(
        self: &Arc<Self>,
        path: &FsPath,
        offset: u64,
        limit: u64,
        within: Duration,
        hold: &mut crate::runtime::Reservation,
    ) -> Result<FsReply, Error> {
        let p = path.as_str().as_bytes().to_vec();
        if !hold.grow(limit.min(MAX_DATA as u64) as usize) {
            return Err(crate::files::budget_full(path));
        }
        let piece = |at: u64, left: u64| {
            let p = p.clone();
            let n = left.min(MAX_DATA as u64) as u32;
            move |id| Frame::FsRead { id, path: p, offset: at, limit: n }
        };
        let (mut data, size, mut eof) = match self.call(within, piece(offset, limit)).await? {
            Frame::Data { data, size, eof, .. } => (data, size, eof),
            f => return Err(unexpected(&f)),
        };
        let want = limit.min(size.saturating_sub(offset));
        let mut queue = std::collections::VecDeque::new();
        let mut next = offset + data.len() as u64;
        let end = offset + want;
        while !eof && (data.len() as u64) < want {
            while queue.len() < READS_AHEAD && next < end {
                let n = (end - next).min(MAX_DATA as u64);
                if !hold.grow(n as usize) {
                    return Err(crate::files::budget_full(path));
                }
                queue.push_back(self.request(piece(next, n))?);
                next += n;
            }
            let Some(mut pending) = queue.pop_front() else { break };
            match pending.next(within).await? {
                Frame::Data { data: d, eof: e, .. } => {
                    let short = (d.len() as u64) < MAX_DATA as u64 && !e;
                    data.extend_from_slice(&d);
                    eof = e;
                    // The file shrank while it was read: what follows is not there.
                    if short || d.is_empty() {
                        break;
                    }
                }
                Frame::Refused { kind, message, .. } => return Err(refused(kind, message)),
                f => return Err(unexpected(&f)),
            }
        }
        data.truncate(want.min(limit) as usize);
        hold.shrink_to(data.len());
        let eof = eof || offset + data.len() as u64 >= size;
        Ok(FsReply::Data { data, size, eof })
    }

    /// Writes `data` in pieces, in order: the first piece creates, truncates or appends
    /// as asked, the rest follow it.
    async fn write(
        self: &Arc<Self>,
        path: &FsPath,
        data: &[u8],
        at: WriteAt,
        mode: Option<u32>,
        mkdirs: bool,
        within: Duration,
    ) -> Result<u64, Error> {
        let p = path.as_str().as_bytes();
        let (mut offset, base) = match at {
            WriteAt::Replace => (0, write_flags::TRUNCATE),
            WriteAt::Append => (0, write_flags::APPEND),
            WriteAt::Offset(n) => (n, 0),
        };
        let mut size = 0;
        let mut pieces: Vec<&[u8]> = data.chunks(MAX_DATA).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut flags = base & write_flags::APPEND;
            if i == 0 {
                flags = base | if mkdirs { write_flags::MKDIRS } else { 0 };
            }
            let (pp, d, m) = (p.to_vec(), piece.to_vec(), mode.unwrap_or(NO_MODE));
            let f = self.call(within, |id| Frame::FsWrite { id, path: pp, offset, flags, mode: m, data: d }).await?;
            match f {
                Frame::Done { size: s, .. } => size = s,
                f => return Err(unexpected(&f)),
            }
            offset += piece.len() as u64;
        }
        Ok(size)
    }

    async fn entries(self: &Arc<Self>, path: &FsPath, list: bool, within: Duration) -> Result<Vec<FsEntry>, Error> {
        let p = path.as_str().as_bytes().to_vec();
        let mut pending = self.request(|id| match list {
            true => Frame::FsList { id, path: p },
            false => Frame::FsStat { id, path: p },
        })?;
        let mut out = Vec::new();
        loop {
            match pending.next(within).await? {
                Frame::Entries { entries, more, .. } => {
                    if out.len() + entries.len() > MAX_LIST {
                        // The rest of the agent's frames find no call and are dropped.
                        return Err(Error::new(
                            ErrorKind::TooLarge,
                            format!("{path} has more than {MAX_LIST} entries; berth lists at most {MAX_LIST}"),
                        ));
                    }
                    out.extend(entries.into_iter().map(|e| entry(path, e, list)));
                    if !more {
                        return Ok(out);
                    }
                }
                Frame::Refused { kind, message, .. } => return Err(refused(kind, message)),
                f => return Err(unexpected(&f)),
            }
        }
    }

    /// Starts a background process; its record, or why it could not start.
    pub async fn spawn(self: &Arc<Self>, spec: SpawnSpec, within: Duration) -> Result<ProcInfo, Error> {
        let program = spec.argv.first().cloned().unwrap_or_default();
        let workdir = spec.workdir.clone();
        let f = self
            .call(within, |id| Frame::Spawn {
                start: Start {
                    id,
                    argv: spec.argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
                    env: spec.env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
                    workdir: spec.workdir.as_bytes().to_vec(),
                    stdin: spec.stdin,
                },
                keep: spec.keep,
            })
            .await?;
        match f {
            Frame::Procs { mut procs, .. } if procs.len() == 1 => Ok(procs.remove(0)),
            Frame::Failed { reason, message, .. } => Err(match reason {
                FailReason::NotFound => Error::invalid_params(format!(
                    "command {program:?} not found in the container (not on $PATH, or no such file)"
                )),
                FailReason::NotExecutable => {
                    Error::invalid_params(format!("command {program:?} is not executable in the container ({message})"))
                }
                FailReason::BadWorkdir => {
                    Error::invalid_params(format!("invalid workdir {workdir:?}: no such directory in the container"))
                }
                FailReason::Other => Error::new(ErrorKind::RuntimeError, format!("cannot run {program:?}: {message}")),
            }),
            f => Err(unexpected(&f)),
        }
    }

    pub async fn proc_list(self: &Arc<Self>, within: Duration) -> Result<Vec<ProcInfo>, Error> {
        match self.call(within, |id| Frame::ProcList { id }).await? {
            Frame::Procs { procs, .. } => Ok(procs),
            f => Err(unexpected(&f)),
        }
    }

    /// A process's output past the offsets; with `wait`, held until there is some, the
    /// process ends, or `wait` passes.
    pub async fn proc_output(
        self: &Arc<Self>,
        proc: u32,
        offsets: (u64, u64),
        limit: u32,
        wait: Duration,
        within: Duration,
    ) -> Result<ProcOutput, Error> {
        let wait_ms = wait.as_millis().min(u128::from(u32::MAX)) as u32;
        let f = self
            .call(within + wait, |id| Frame::ProcOutput {
                id,
                proc,
                stdout_offset: offsets.0,
                stderr_offset: offsets.1,
                limit: limit.min(MAX_DATA as u32),
                wait_ms,
            })
            .await?;
        match f {
            Frame::ProcData { info, stdout_offset, stdout, stderr_offset, stderr, dropped, .. } => {
                Ok(ProcOutput { info, stdout_offset, stdout, stderr_offset, stderr, dropped })
            }
            f => Err(unexpected(&f)),
        }
    }

    /// Waits for a process's end, at most `timeout`; cancelled with `cancel`.
    pub async fn proc_wait(
        self: &Arc<Self>,
        proc: u32,
        timeout: Duration,
        within: Duration,
        cancel: &CancellationToken,
    ) -> Result<ProcInfo, Error> {
        let timeout_ms = timeout.as_millis().min(u128::from(u32::MAX)) as u32;
        let call = self.call(within + timeout, |id| Frame::ProcWait { id, proc, timeout_ms });
        let f = tokio::select! {
            f = call => f?,
            _ = cancel.cancelled() => return Err(Error::new(ErrorKind::RuntimeError, "the client went away")),
        };
        one_proc(f)
    }

    /// Signals a process's tree (killing it after `grace` for terminating signals).
    pub async fn proc_kill(
        self: &Arc<Self>,
        proc: u32,
        signal: i32,
        grace: Duration,
        within: Duration,
    ) -> Result<ProcInfo, Error> {
        let grace_ms = grace.as_millis().min(u128::from(u32::MAX)) as u32;
        one_proc(self.call(within + grace, |id| Frame::ProcKill { id, proc, signal, grace_ms }).await?)
    }

    /// Writes to a process's stdin (in pieces), then closes it if asked.
    pub async fn proc_input(
        self: &Arc<Self>,
        proc: u32,
        data: &[u8],
        close: bool,
        within: Duration,
    ) -> Result<(), Error> {
        let mut pieces: Vec<&[u8]> = data.chunks(MAX_DATA).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let last = pieces.len() - 1;
        for (i, piece) in pieces.into_iter().enumerate() {
            let (d, c) = (piece.to_vec(), close && i == last);
            match self.call(within, |id| Frame::ProcInput { id, proc, data: d, close: c }).await? {
                Frame::Done { .. } => {}
                f => return Err(unexpected(&f)),
            }
        }
        Ok(())
    }
}

fn one_proc(f: Frame) -> Result<ProcInfo, Error> {
    match f {
        Frame::Procs { mut procs, .. } if procs.len() == 1 => Ok(procs.remove(0)),
        f => Err(unexpected(&f)),
    }
}

/// An entry as the protocol gives it: its full path in the container.
fn entry(dir: &FsPath, e: Entry, listed: bool) -> FsEntry {
    let name = String::from_utf8_lossy(&e.name).into_owned();
    let path = match listed {
        true => format!("{}/{name}", dir.as_str().trim_end_matches('/')),
        false => dir.as_str().to_string(),
    };
    FsEntry {
        name,
        path,
        kind: e.kind,
        size: e.size,
        mode: e.mode,
        mtime_ms: e.mtime_ms,
        target: (e.kind == EntryType::Symlink).then(|| String::from_utf8_lossy(&e.target).into_owned()),
    }
}
