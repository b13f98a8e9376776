//! One connection from berthd: the handshake, then one reader (this thread) that decodes
//! frames and routes them to commands by id, and one writer thread that alone writes the
//! socket, so frames never interleave. Owns the connection's id table; when the
//! connection ends, for whatever reason, every command started on it is killed.
//! Calls (file calls, background processes) take ids from the same table; each gets a
//! `Reply`, through which its one answer is queued whenever it is ready. File calls run on
//! the connection's call workers (`pool`); process calls are handed to `procs`, which
//! answers at once or from the process's pump. The reader thread itself never blocks on
//! either. Background processes outlive the connection.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use berth_wire::{read_frame, FailReason, Frame, RefusedKind, Start, MAX_FRAME, VERSION};

use crate::command::{self, BaseEnv, Handle, Msg};
use crate::pool::Pool;
use crate::{fs, procs, sys};

/// What the writer thread is asked to do.
pub enum Out {
    /// Write these bytes (one or more encoded frames).
    Frame(Vec<u8>),
    /// Write what came before, then shut the socket down.
    Close,
}

pub type Outbox = Sender<Out>;

/// Where a call's answer goes: the call's id on its connection. Cheap to clone; sending
/// never blocks (after the connection ended, what is sent is dropped).
#[derive(Clone)]
pub struct Reply {
    id: u32,
    out: Outbox,
    gone: Arc<AtomicBool>,
}

impl Reply {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn send(&self, f: Frame) {
        let _ = self.out.send(Out::Frame(f.to_bytes()));
    }

    pub fn refuse(&self, kind: RefusedKind, message: String) {
        self.send(Frame::Refused { id: self.id, kind, message });
    }

    /// Whether the connection has ended (nobody will read the answer).
    pub fn gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }
}

struct Running {
    handle: Handle,
    stdin_open: bool,
}

/// Command ids of this connection. Finished ids are kept so that late frames for them
/// (an `Ack` or `Kill` crossing `Exited` on the wire) are ignored, and reuse is refused.
#[derive(Default)]
struct Ids {
    running: HashMap<u32, Running>,
    finished: HashSet<u32>,
}

/// Why the connection ends.
enum End {
    /// The peer hung up or the socket failed: nothing more to say.
    Gone,
    /// The peer broke the protocol: tell it why, then close.
    Protocol(String),
}

struct Conn {
    out: Outbox,
    ids: Arc<Mutex<Ids>>,
    env: BaseEnv,
    calls: Pool,
    gone: Arc<AtomicBool>,
}

/// Serves one connection until it ends.
pub fn serve(stream: UnixStream, env: BaseEnv) {
    let Ok(w) = stream.try_clone() else { return };
    let (out, rx) = mpsc::channel();
    if thread::Builder::new().name("writer".into()).spawn(move || write_loop(w, rx)).is_err() {
        return;
    }
    let conn = Conn { out, ids: Default::default(), env, calls: Pool::default(), gone: Default::default() };
    conn.frame(Frame::Hello { version: VERSION, pid: sys::getpid() as u32 });
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let end: Result<(), End> = conn.handshake(&mut r).and_then(|()| loop {
        conn.dispatch(next(&mut r)?)?;
    });
    if let Err(End::Protocol(message)) = end {
        conn.frame(Frame::Error { message });
    }
    let _ = conn.out.send(Out::Close);
    conn.gone.store(true, Ordering::Relaxed);
    conn.calls.close();
    for r in conn.ids().running.values() {
        r.handle.send(Msg::Kill);
    }
}

fn next(r: &mut BufReader<UnixStream>) -> Result<Frame, End> {
    match read_frame(r) {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(End::Gone),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(End::Protocol(e.to_string())),
        Err(_) => Err(End::Gone),
    }
}

impl Conn {
    fn frame(&self, f: Frame) {
        let _ = self.out.send(Out::Frame(f.to_bytes()));
    }

    fn ids(&self) -> MutexGuard<'_, Ids> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handshake(&self, r: &mut BufReader<UnixStream>) -> Result<(), End> {
        match next(r)? {
            Frame::Hello { version, .. } if version == VERSION => Ok(()),
            Frame::Hello { version, .. } => Err(End::Protocol(format!(
                "berth-agent speaks protocol version {VERSION}, the peer speaks version {version}"
            ))),
            other => Err(End::Protocol(format!("expected hello first, got {}", other.kind_name()))),
        }
    }

    fn dispatch(&self, f: Frame) -> Result<(), End> {
        match f {
            Frame::Start(s) => self.start(s),
            Frame::Stdin { id, data } => self.route(id, "stdin", |r| match r.stdin_open {
                true => Ok(Msg::Stdin(data)),
                false => Err(format!("stdin for command {id}, whose stdin is not open")),
            }),
            Frame::StdinEnd { id } => self.route(id, "stdin end", |r| match std::mem::take(&mut r.stdin_open) {
                true => Ok(Msg::StdinEnd),
                false => Err(format!("stdin end for command {id}, whose stdin is not open")),
            }),
            Frame::Ack { id, bytes } => self.route(id, "ack", |_| Ok(Msg::Ack(bytes))),
            Frame::Kill { id } => self.route(id, "kill", |_| Ok(Msg::Kill)),
            Frame::Ping { nonce } => {
                self.frame(Frame::Pong { nonce });
                Ok(())
            }
            Frame::Error { .. } => Err(End::Gone),
            f @ (Frame::FsRead { .. }
            | Frame::FsWrite { .. }
            | Frame::FsList { .. }
            | Frame::FsStat { .. }
            | Frame::FsRemove { .. }
            | Frame::FsMkdir { .. }) => self.file_call(f),
            Frame::Spawn { start, keep } => {
                let reply = self.call(start.id)?;
                procs::spawn(start, keep, self.env.clone(), reply);
                Ok(())
            }
            Frame::ProcList { id } => {
                procs::list(&self.call(id)?);
                Ok(())
            }
            Frame::ProcOutput { id, proc, stdout_offset, stderr_offset, limit, wait_ms } => {
                procs::output(&self.call(id)?, proc, [stdout_offset, stderr_offset], limit, wait_ms);
                Ok(())
            }
            Frame::ProcWait { id, proc, timeout_ms } => {
                procs::wait(&self.call(id)?, proc, timeout_ms);
                Ok(())
            }
            Frame::ProcKill { id, proc, signal, grace_ms } => {
                procs::kill(&self.call(id)?, proc, signal, grace_ms);
                Ok(())
            }
            Frame::ProcInput { id, proc, data, close } => {
                procs::input(&self.call(id)?, proc, data, close);
                Ok(())
            }
            other => Err(End::Protocol(format!("unexpected {} from berthd", other.kind_name()))),
        }
    }

    /// Takes `id` for a call. Calls are not remembered once answered (berthd sends no
    /// frame about a call after the call itself), so a connection that lives for a
    /// container's lifetime and makes millions of calls keeps no record of them.
    fn call(&self, id: u32) -> Result<Reply, End> {
        let ids = self.ids();
        if ids.running.contains_key(&id) || ids.finished.contains(&id) {
            return Err(End::Protocol(format!("duplicate id {id} (a command's)")));
        }
        Ok(Reply { id, out: self.out.clone(), gone: self.gone.clone() })
    }

    /// Queues a file call on the call workers.
    fn file_call(&self, f: Frame) -> Result<(), End> {
        let (key, bytes) = match &f {
            Frame::FsWrite { path, data, .. } => (path.clone(), data.len() + path.len()),
            Frame::FsRead { path, .. }
            | Frame::FsList { path, .. }
            | Frame::FsStat { path, .. }
            | Frame::FsRemove { path, .. }
            | Frame::FsMkdir { path, .. } => (path.clone(), path.len()),
            _ => (Vec::new(), 0),
        };
        let reply = self.call(f.id().unwrap_or(0))?;
        let r = reply.clone();
        let job = Box::new(move || {
            for answer in fs::answer(f) {
                r.send(answer);
            }
        });
        if let Err(message) = self.calls.submit(key, bytes, job) {
            reply.refuse(RefusedKind::Busy, message);
        }
        Ok(())
    }

    fn start(&self, s: Start) -> Result<(), End> {
        let mut ids = self.ids();
        let id = s.id;
        if ids.running.contains_key(&id) || ids.finished.contains(&id) {
            return Err(End::Protocol(format!("duplicate command id {id}")));
        }
        let stdin_open = s.stdin;
        let table = self.ids.clone();
        let done = Box::new(move || {
            let mut ids = table.lock().unwrap_or_else(|e| e.into_inner());
            ids.running.remove(&id);
            ids.finished.insert(id);
        });
        match command::start(s, self.env.clone(), self.out.clone(), done) {
            Ok(handle) => {
                ids.running.insert(id, Running { handle, stdin_open });
            }
            Err(e) => {
                ids.finished.insert(id);
                let message = format!("cannot start a thread for the command: {e}");
                self.frame(Frame::Failed { id, reason: FailReason::Other, message });
            }
        }
        Ok(())
    }

    /// Sends a command the message `f` makes of its entry; ignores finished commands;
    /// an id never started is a protocol error.
    fn route(&self, id: u32, what: &str, f: impl FnOnce(&mut Running) -> Result<Msg, String>) -> Result<(), End> {
        let mut ids = self.ids();
        if let Some(r) = ids.running.get_mut(&id) {
            let m = f(r).map_err(End::Protocol)?;
            r.handle.send(m);
            Ok(())
        } else if ids.finished.contains(&id) {
            Ok(())
        } else {
            Err(End::Protocol(format!("{what} for unknown command id {id}")))
        }
    }
}

/// The only writer of the socket. Batches whatever is queued into one write. After a
/// write error or `Close` it keeps draining the queue (so senders never block) but
/// writes nothing more; it ends when every sender is gone.
fn write_loop(mut s: UnixStream, rx: Receiver<Out>) {
    let mut open = true;
    let mut buf = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut close = false;
        let mut next = Some(first);
        while let Some(o) = next {
            match o {
                Out::Frame(b) if !close => buf.extend_from_slice(&b),
                Out::Frame(_) => {}
                Out::Close => close = true,
            }
            next = if buf.len() < MAX_FRAME { rx.try_recv().ok() } else { None };
        }
        if open && !buf.is_empty() && s.write_all(&buf).is_err() {
            close = true;
        }
        buf.clear();
        if open && close {
            let _ = s.shutdown(Shutdown::Both);
            open = false;
        }
    }
}
