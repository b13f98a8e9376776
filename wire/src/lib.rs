//! The berth agent protocol: its frames and their codec, in one place, shared by berthd
//! and berth-agent so that the two can never disagree about a frame.
//!
//! A frame is `len: u32 BE | kind: u8 | id: u32 BE | payload`, where `len` counts the
//! bytes after itself. `len` is checked against `MAX_FRAME` before anything is
//! allocated. Decoding any bytes yields a frame, "need more", or an error — never a
//! panic (a fuzz target checks this). Both sides send `Hello` first and refuse a
//! version they do not speak. The codec knows nothing of the byte stream under it: the
//! sans-io `Decoder` is fed bytes from a Unix socket today and could be fed from any
//! other transport.
//!
//! Flow: berthd sends `Start` (id chosen by berthd, unique per connection), then maybe
//! `Stdin`/`StdinEnd`; the agent answers with `Output` frames and finally one `Exited` or
//! `Failed`. The agent keeps at most `WINDOW` bytes of a command's output unacknowledged;
//! berthd sends `Ack` as it consumes output, so a slow reader holds the command back
//! (backpressure) without holding back the other commands on the connection. `Kill`
//! kills the command's whole tree. A closed connection kills every command started on it.
//!
//! Details both ends rely on: ids are chosen by berthd and never reused on a connection;
//! an empty `Start.workdir` means the agent's own working directory; `Stdin`/`StdinEnd`
//! are sent only for a command started with `stdin: true` (stdin has no window of its
//! own: berthd bounds it, by `server.max_line`); `Ack`, `Stdin` or `Kill` that arrive
//! after a command ended are ignored; `Output` and `Stdin` carry at most `MAX_CHUNK`
//! bytes (a larger one is a malformed frame).
//!
//! Calls (protocol version 1, second part): besides commands, berthd asks the agent for
//! file operations (`FsRead`, `FsWrite`, `FsList`, `FsStat`, `FsRemove`, `FsMkdir`) and
//! for work on its table of background processes (`Spawn`, `ProcList`, `ProcOutput`,
//! `ProcWait`, `ProcKill`, `ProcInput`). Each call takes an id from the same per-connection
//! id space as `Start` and is answered by exactly one reply frame with that id: `Data`,
//! `Entries` (possibly several, all but the last with `more`), `Done`, `Procs`,
//! `ProcData`, `Failed` (a `Spawn` that could not start its command) or `Refused` (the
//! call could not be done; a kind and a message). Background processes belong to the
//! agent, not to the connection that spawned them: closing a connection leaves them
//! running. Paths are the agent's (the container's) paths, resolved as the agent's own
//! user resolves them; `FsWrite` and `Data` carry at most `MAX_DATA` bytes, paths at most
//! `MAX_PATH`.
#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Write};

/// The protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// The largest `len` a frame may declare (kind, id and payload).
pub const MAX_FRAME: usize = (1 << 20) + 64;
/// The largest data an `Output` or `Stdin` frame carries.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Unacknowledged output bytes the agent allows one command before it stops reading it.
pub const WINDOW: u32 = 512 * 1024;
/// The largest data an `FsWrite`, `Data`, `ProcInput`, or each stream of a `ProcData`
/// carries.
pub const MAX_DATA: usize = 256 * 1024;
/// The longest path a call may name (Linux's `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// `FsWrite`/`FsMkdir` mode meaning "none given".
pub const NO_MODE: u32 = u32::MAX;

const HEADER: usize = 4 + 1 + 4;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Why a command could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// No such program (exit 127, as shells say).
    NotFound,
    /// Not executable (exit 126).
    NotExecutable,
    /// The working directory does not exist or cannot be entered.
    BadWorkdir,
    Other,
}

/// A command to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub id: u32,
    pub argv: Vec<Vec<u8>>,
    /// Variables set over the agent's own environment (the container's).
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    pub workdir: Vec<u8>,
    /// Whether `Stdin` frames follow; without, the command's stdin is empty.
    pub stdin: bool,
}

/// What a file-system entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryType {
    File,
    Dir,
    Symlink,
    Other,
}

/// One file-system entry, as `lstat` sees it (a symlink is not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The last component of its path.
    pub name: Vec<u8>,
    pub kind: EntryType,
    pub size: u64,
    /// Permission bits and setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, milliseconds since the Unix epoch.
    pub mtime_ms: i64,
    /// Where a symlink points (empty for everything else).
    pub target: Vec<u8>,
}

/// Why a call could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedKind {
    /// The path, or the process id, does not exist.
    NotFound,
    /// The path is of the wrong kind: a directory where a file is needed or the other
    /// way round, a missing parent, a directory that is not empty.
    WrongKind,
    /// The path already exists.
    Exists,
    /// The agent's user may not do this.
    Denied,
    /// The call's fields make no sense (an empty or relative path, a bad signal).
    Invalid,
    /// A limit is reached (too many running processes).
    Busy,
    Other,
}

/// `FsWrite` flags.
pub mod write_flags {
    /// Write at the end of the file (its `offset` is ignored).
    pub const APPEND: u8 = 1;
    /// Cut the file to `offset` first (a whole-file write starts with this).
    pub const TRUNCATE: u8 = 2;
    /// Create missing parent directories.
    pub const MKDIRS: u8 = 4;
    pub const ALL: u8 = APPEND | TRUNCATE | MKDIRS;
}

/// A background process as the agent keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// The agent's number for it, never reused while the container's run dir lives.
    pub proc: u32,
    /// Its pid inside the container.
    pub pid: u32,
    /// Its command, cut to a few KiB for display.
    pub argv: Vec<Vec<u8>>,
    pub running: bool,
    /// Exit code, or the signal that ended it (`signal > 0`); both 0 while running.
    pub code: i32,
    pub signal: i32,
    /// Milliseconds since the Unix epoch; `ended_ms` is 0 while it runs.
    pub started_ms: u64,
    pub ended_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame each way: the version spoken and the sender's pid (in its own pid
    /// namespace).
    Hello {
        version: u16,
        pid: u32,
    },
    Start(Start),
    Stdin {
        id: u32,
        data: Vec<u8>,
    },
    StdinEnd {
        id: u32,
    },
    Output {
        id: u32,
        stream: Stream,
        data: Vec<u8>,
    },
    Ack {
        id: u32,
        bytes: u32,
    },
    /// The command ended: its exit code, or the signal that ended it (`signal > 0`).
    Exited {
        id: u32,
        code: i32,
        signal: i32,
    },
    Failed {
        id: u32,
        reason: FailReason,
        message: String,
    },
    /// Kill the command and every process it started.
    Kill {
        id: u32,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// A protocol error; the sender closes the connection after it.
    Error {
        message: String,
    },
    /// Read up to `limit` (at most `MAX_DATA`) bytes from `offset`; answered by `Data`.
    FsRead {
        id: u32,
        path: Vec<u8>,
        offset: u64,
        limit: u32,
    },
    /// Write `data` at `offset` (see `write_flags`), creating the file with `mode` (or
    /// 0644) if it is missing, and setting `mode` if one is given; answered by `Done`
    /// with the file's size after the write.
    FsWrite {
        id: u32,
        path: Vec<u8>,
        offset: u64,
        flags: u8,
        mode: u32,
        data: Vec<u8>,
    },
    /// A directory's entries, sorted by name; answered by `Entries`.
    FsList {
        id: u32,
        path: Vec<u8>,
    },
    /// One entry; answered by `Entries` holding it.
    FsStat {
        id: u32,
        path: Vec<u8>,
    },
    /// Remove a file, a symlink (not what it points to) or an empty directory, or with
    /// `recursive` a whole tree; answered by `Done`.
    FsRemove {
        id: u32,
        path: Vec<u8>,
        recursive: bool,
    },
    /// Make a directory (with `parents`, its missing parents too, and an existing
    /// directory is no error); answered by `Done`.
    FsMkdir {
        id: u32,
        path: Vec<u8>,
        parents: bool,
        mode: u32,
    },
    /// Start a background process; `keep` bytes of each stream's newest output are kept.
    /// Answered by `Procs` holding it, or `Failed` if its command cannot start.
    Spawn {
        start: Start,
        keep: u32,
    },
    /// Every background process, running and ended, oldest first; answered by `Procs`.
    ProcList {
        id: u32,
    },
    /// A process's output from these offsets (bytes since it started, per stream), at
    /// most `limit` (≤ `MAX_DATA`) bytes of each stream. With `wait_ms`, the answer waits
    /// that long for output past the offsets or for the end of the process. Answered by
    /// `ProcData`.
    ProcOutput {
        id: u32,
        proc: u32,
        stdout_offset: u64,
        stderr_offset: u64,
        limit: u32,
        wait_ms: u32,
    },
    /// Answered by `Procs` holding the process once it ended or `timeout_ms` passed.
    ProcWait {
        id: u32,
        proc: u32,
        timeout_ms: u32,
    },
    /// Send `signal` to the process's whole tree. For SIGTERM, SIGINT, SIGQUIT and
    /// SIGHUP the tree is killed after `grace_ms` if it is still there; SIGKILL kills
    /// it at once. Answered by `Procs` holding the process, once it ended (or at once
    /// for other signals).
    ProcKill {
        id: u32,
        proc: u32,
        signal: i32,
        grace_ms: u32,
    },
    /// Write to the process's stdin (it was spawned with `stdin: true`), then with
    /// `close` close it; answered by `Done`.
    ProcInput {
        id: u32,
        proc: u32,
        data: Vec<u8>,
        close: bool,
    },
    /// File data from `FsRead`: `size` is the whole file's, `eof` says the data reaches
    /// its end.
    Data {
        id: u32,
        size: u64,
        eof: bool,
        data: Vec<u8>,
    },
    /// Entries for `FsList` or `FsStat`; `more` says another `Entries` frame follows.
    Entries {
        id: u32,
        entries: Vec<Entry>,
        more: bool,
    },
    /// A call is done; `size` is a written file's size (0 for other calls).
    Done {
        id: u32,
        size: u64,
    },
    /// Background processes, for `Spawn`, `ProcList`, `ProcWait` and `ProcKill`.
    Procs {
        id: u32,
        procs: Vec<ProcInfo>,
    },
    /// Output for `ProcOutput`: each stream's data starts at its `*_offset`; `dropped`
    /// counts the bytes between the offsets asked for and the data returned that are no
    /// longer kept (both streams together).
    ProcData {
        id: u32,
        info: ProcInfo,
        stdout_offset: u64,
        stdout: Vec<u8>,
        stderr_offset: u64,
        stderr: Vec<u8>,
        dropped: u64,
    },
    /// A call that could not be done.
    Refused {
        id: u32,
        kind: RefusedKind,
        message: String,
    },
}

mod kind {
    pub const HELLO: u8 = 1;
    pub const START: u8 = 2;
    pub const STDIN: u8 = 3;
    pub const STDIN_END: u8 = 4;
    pub const OUTPUT: u8 = 5;
    pub const ACK: u8 = 6;
    pub const EXITED: u8 = 7;
    pub const FAILED: u8 = 8;
    pub const KILL: u8 = 9;
    pub const PING: u8 = 10;
    pub const PONG: u8 = 11;
    pub const ERROR: u8 = 12;
    pub const FS_READ: u8 = 13;
    pub const FS_WRITE: u8 = 14;
    pub const FS_LIST: u8 = 15;
    pub const FS_STAT: u8 = 16;
    pub const FS_REMOVE: u8 = 17;
    pub const FS_MKDIR: u8 = 18;
    pub const SPAWN: u8 = 19;
    pub const PROC_LIST: u8 = 20;
    pub const PROC_OUTPUT: u8 = 21;
    pub const PROC_WAIT: u8 = 22;
    pub const PROC_KILL: u8 = 23;
    pub const PROC_INPUT: u8 = 24;
    pub const DATA: u8 = 30;
    pub const ENTRIES: u8 = 31;
    pub const DONE: u8 = 32;
    pub const PROCS: u8 = 33;
    pub const PROC_DATA: u8 = 34;
    pub const REFUSED: u8 = 35;
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    TooLarge(usize),
    TooShort(usize),
    UnknownKind(u8),
    /// The payload ended before a field, or had bytes left over, or a field was invalid.
    Malformed {
        kind: u8,
        why: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge(n) => write!(f, "frame of {n} bytes is larger than {MAX_FRAME}"),
            WireError::TooShort(n) => write!(f, "frame of {n} bytes is shorter than its header"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::Malformed { kind, why } => write!(f, "malformed frame of kind {kind}: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for io::Error {
    fn from(e: WireError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Frame {
    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        let (k, id) = self.kind_and_id();
        out.push(k);
        out.extend_from_slice(&id.to_be_bytes());
        let mut w = Writer(out);
        match self {
            Frame::Hello { version, pid } => {
                w.u16(*version);
                w.u32(*pid);
            }
            Frame::Start(s) => w.start(s),
            Frame::Stdin { data, .. } => w.bytes(data),
            Frame::Output { stream, data, .. } => {
                w.u8(match stream {
                    Stream::Stdout => 1,
                    Stream::Stderr => 2,
                });
                w.bytes(data);
            }
            Frame::Ack { bytes, .. } => w.u32(*bytes),
            Frame::Exited { code, signal, .. } => {
                w.u32(*code as u32);
                w.u32(*signal as u32);
            }
            Frame::Failed { reason, message, .. } => {
                w.u8(match reason {
                    FailReason::NotFound => 1,
                    FailReason::NotExecutable => 2,
                    FailReason::BadWorkdir => 3,
                    FailReason::Other => 4,
                });
                w.bytes(message.as_bytes());
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => w.u64(*nonce),
            Frame::Error { message } => w.bytes(message.as_bytes()),
            Frame::StdinEnd { .. } | Frame::Kill { .. } | Frame::ProcList { .. } => {}
            Frame::FsRead { path, offset, limit, .. } => {
                w.bytes(path);
                w.u64(*offset);
                w.u32(*limit);
            }
            Frame::FsWrite { path, offset, flags, mode, data, .. } => {
                w.bytes(path);
                w.u64(*offset);
                w.u8(*flags);
                w.u32(*mode);
                w.bytes(data);
            }
            Frame::FsList { path, .. } | Frame::FsStat { path, .. } => w.bytes(path),
            Frame::FsRemove { path, recursive, .. } => {
                w.bytes(path);
                w.u8(*recursive as u8);
            }
            Frame::FsMkdir { path, parents, mode, .. } => {
                w.bytes(path);
                w.u8(*parents as u8);
                w.u32(*mode);
            }
            Frame::Spawn { start, keep } => {
                w.start(start);
                w.u32(*keep);
            }
            Frame::ProcOutput { proc, stdout_offset, stderr_offset, limit, wait_ms, .. } => {
                w.u32(*proc);
                w.u64(*stdout_offset);
                w.u64(*stderr_offset);
                w.u32(*limit);
                w.u32(*wait_ms);
            }
            Frame::ProcWait { proc, timeout_ms, .. } => {
                w.u32(*proc);
                w.u32(*timeout_ms);
            }
            Frame::ProcKill { proc, signal, grace_ms, .. } => {
                w.u32(*proc);
                w.u32(*signal as u32);
                w.u32(*grace_ms);
            }
            Frame::ProcInput { proc, data, close, .. } => {
                w.u32(*proc);
                w.bytes(data);
                w.u8(*close as u8);
            }
            Frame::Data { size, eof, data, .. } => {
                w.u64(*size);
                w.u8(*eof as u8);
                w.bytes(data);
            }
            Frame::Entries { entries, more, .. } => {
                w.u32(entries.len() as u32);
                for e in entries {
                    w.entry(e);
                }
                w.u8(*more as u8);
            }
            Frame::Done { size, .. } => w.u64(*size),
            Frame::Procs { procs, .. } => {
                w.u32(procs.len() as u32);
                for p in procs {
                    w.proc_info(p);
                }
            }
            Frame::ProcData { info, stdout_offset, stdout, stderr_offset, stderr, dropped, .. } => {
                w.proc_info(info);
                w.u64(*stdout_offset);
                w.bytes(stdout);
                w.u64(*stderr_offset);
                w.bytes(stderr);
                w.u64(*dropped);
            }
            Frame::Refused { kind, message, .. } => {
                w.u8(refused_code(*kind));
                w.bytes(message.as_bytes());
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    fn kind_and_id(&self) -> (u8, u32) {
        match self {
            Frame::Hello { .. } => (kind::HELLO, 0),
            Frame::Start(s) => (kind::START, s.id),
            Frame::Stdin { id, .. } => (kind::STDIN, *id),
            Frame::StdinEnd { id } => (kind::STDIN_END, *id),
            Frame::Output { id, .. } => (kind::OUTPUT, *id),
            Frame::Ack { id, .. } => (kind::ACK, *id),
            Frame::Exited { id, .. } => (kind::EXITED, *id),
            Frame::Failed { id, .. } => (kind::FAILED, *id),
            Frame::Kill { id } => (kind::KILL, *id),
            Frame::Ping { .. } => (kind::PING, 0),
            Frame::Pong { .. } => (kind::PONG, 0),
            Frame::Error { .. } => (kind::ERROR, 0),
            Frame::FsRead { id, .. } => (kind::FS_READ, *id),
            Frame::FsWrite { id, .. } => (kind::FS_WRITE, *id),
            Frame::FsList { id, .. } => (kind::FS_LIST, *id),
            Frame::FsStat { id, .. } => (kind::FS_STAT, *id),
            Frame::FsRemove { id, .. } => (kind::FS_REMOVE, *id),
            Frame::FsMkdir { id, .. } => (kind::FS_MKDIR, *id),
            Frame::Spawn { start, .. } => (kind::SPAWN, start.id),
            Frame::ProcList { id } => (kind::PROC_LIST, *id),
            Frame::ProcOutput { id, .. } => (kind::PROC_OUTPUT, *id),
            Frame::ProcWait { id, .. } => (kind::PROC_WAIT, *id),
            Frame::ProcKill { id, .. } => (kind::PROC_KILL, *id),
            Frame::ProcInput { id, .. } => (kind::PROC_INPUT, *id),
            Frame::Data { id, .. } => (kind::DATA, *id),
            Frame::Entries { id, .. } => (kind::ENTRIES, *id),
            Frame::Done { id, .. } => (kind::DONE, *id),
            Frame::Procs { id, .. } => (kind::PROCS, *id),
            Frame::ProcData { id, .. } => (kind::PROC_DATA, *id),
            Frame::Refused { id, .. } => (kind::REFUSED, *id),
        }
    }

    /// A short name of the frame's kind, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Start(_) => "start",
            Frame::Stdin { .. } => "stdin",
            Frame::StdinEnd { .. } => "stdin end",
            Frame::Output { .. } => "output",
            Frame::Ack { .. } => "ack",
            Frame::Exited { .. } => "exited",
            Frame::Failed { .. } => "failed",
            Frame::Kill { .. } => "kill",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Error { .. } => "error",
            Frame::FsRead { .. } => "fs read",
            Frame::FsWrite { .. } => "fs write",
            Frame::FsList { .. } => "fs list",
            Frame::FsStat { .. } => "fs stat",
            Frame::FsRemove { .. } => "fs remove",
            Frame::FsMkdir { .. } => "fs mkdir",
            Frame::Spawn { .. } => "spawn",
            Frame::ProcList { .. } => "process list",
            Frame::ProcOutput { .. } => "process output",
            Frame::ProcWait { .. } => "process wait",
            Frame::ProcKill { .. } => "process kill",
            Frame::ProcInput { .. } => "process input",
            Frame::Data { .. } => "data",
            Frame::Entries { .. } => "entries",
            Frame::Done { .. } => "done",
            Frame::Procs { .. } => "processes",
            Frame::ProcData { .. } => "process data",
            Frame::Refused { .. } => "refused",
        }
    }

    /// The command this frame is about, if any.
    pub fn id(&self) -> Option<u32> {
        match self {
            Frame::Hello { .. } | Frame::Ping { .. } | Frame::Pong { .. } | Frame::Error { .. } => None,
            other => Some(other.kind_and_id().1),
        }
    }
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed,
/// else the frame and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len < HEADER - 4 {
        return Err(WireError::TooShort(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let k = buf[4];
    let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if matches!(k, kind::HELLO | kind::PING | kind::PONG | kind::ERROR) && id != 0 {
        // Frames about no command carry id 0, so every frame has one encoding.
        return Err(WireError::Malformed { kind: k, why: "a frame about no command must carry id 0" });
    }
    let mut r = Reader { buf: &buf[HEADER..4 + len], kind: k };
    let frame = match k {
        kind::HELLO => Frame::Hello { version: r.u16()?, pid: r.u32()? },
        kind::START => Frame::Start(r.start(id)?),
        kind::STDIN => Frame::Stdin { id, data: r.chunk()? },
        kind::STDIN_END => Frame::StdinEnd { id },
        kind::OUTPUT => {
            let stream = match r.u8()? {
                1 => Stream::Stdout,
                2 => Stream::Stderr,
                _ => return Err(WireError::Malformed { kind: k, why: "unknown stream" }),
            };
            Frame::Output { id, stream, data: r.chunk()? }
        }
        kind::ACK => Frame::Ack { id, bytes: r.u32()? },
        kind::EXITED => Frame::Exited { id, code: r.u32()? as i32, signal: r.u32()? as i32 },
        kind::FAILED => {
            let reason = match r.u8()? {
                1 => FailReason::NotFound,
                2 => FailReason::NotExecutable,
                3 => FailReason::BadWorkdir,
                4 => FailReason::Other,
                _ => return Err(WireError::Malformed { kind: k, why: "unknown failure reason" }),
            };
            Frame::Failed { id, reason, message: r.string()? }
        }
        kind::KILL => Frame::Kill { id },
        kind::PING => Frame::Ping { nonce: r.u64()? },
        kind::PONG => Frame::Pong { nonce: r.u64()? },
        kind::ERROR => Frame::Error { message: r.string()? },
        kind::FS_READ => {
            let (path, offset) = (r.path()?, r.u64()?);
            let limit = r.u32()?;
            if limit as usize > MAX_DATA {
                return Err(WireError::Malformed { kind: k, why: "limit larger than MAX_DATA" });
            }
            Frame::FsRead { id, path, offset, limit }
        }
        kind::FS_WRITE => {
            let (path, offset, flags) = (r.path()?, r.u64()?, r.u8()?);
            if flags & !write_flags::ALL != 0 {
                return Err(WireError::Malformed { kind: k, why: "unknown write flag" });
            }
            Frame::FsWrite { id, path, offset, flags, mode: r.u32()?, data: r.data()? }
        }
        kind::FS_LIST => Frame::FsList { id, path: r.path()? },
        kind::FS_STAT => Frame::FsStat { id, path: r.path()? },
        kind::FS_REMOVE => Frame::FsRemove { id, path: r.path()?, recursive: r.bool()? },
        kind::FS_MKDIR => Frame::FsMkdir { id, path: r.path()?, parents: r.bool()?, mode: r.u32()? },
        kind::SPAWN => Frame::Spawn { start: r.start(id)?, keep: r.u32()? },
        kind::PROC_LIST => Frame::ProcList { id },
        kind::PROC_OUTPUT => {
            let (proc, stdout_offset, stderr_offset) = (r.u32()?, r.u64()?, r.u64()?);
            let (limit, wait_ms) = (r.u32()?, r.u32()?);
            if limit as usize > MAX_DATA {
                return Err(WireError::Malformed { kind: k, why: "limit larger than MAX_DATA" });
            }
            Frame::ProcOutput { id, proc, stdout_offset, stderr_offset, limit, wait_ms }
        }
        kind::PROC_WAIT => Frame::ProcWait { id, proc: r.u32()?, timeout_ms: r.u32()? },
        kind::PROC_KILL => Frame::ProcKill { id, proc: r.u32()?, signal: r.u32()? as i32, grace_ms: r.u32()? },
        kind::PROC_INPUT => Frame::ProcInput { id, proc: r.u32()?, data: r.data()?, close: r.bool()? },
        kind::DATA => Frame::Data { id, size: r.u64()?, eof: r.bool()?, data: r.data()? },
        kind::ENTRIES => {
            let n = r.count(ENTRY_MIN)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(r.entry()?);
            }
            Frame::Entries { id, entries, more: r.bool()? }
        }
        kind::DONE => Frame::Done { id, size: r.u64()? },
        kind::PROCS => {
            let n = r.count(PROC_INFO_MIN)?;
            let mut procs = Vec::with_capacity(n);
            for _ in 0..n {
                procs.push(r.proc_info()?);
            }
            Frame::Procs { id, procs }
        }
        kind::PROC_DATA => Frame::ProcData {
            id,
            info: r.proc_info()?,
            stdout_offset: r.u64()?,
            stdout: r.data()?,
            stderr_offset: r.u64()?,
            stderr: r.data()?,
            dropped: r.u64()?,
        },
        kind::REFUSED => {
            let kind = match r.u8()? {
                1 => RefusedKind::NotFound,
                2 => RefusedKind::WrongKind,
                3 => RefusedKind::Exists,
                4 => RefusedKind::Denied,
                5 => RefusedKind::Invalid,
                6 => RefusedKind::Busy,
                7 => RefusedKind::Other,
                _ => return Err(WireError::Malformed { kind: k, why: "unknown refusal kind" }),
            };
            Frame::Refused { id, kind, message: r.string()? }
        }
        other => return Err(WireError::UnknownKind(other)),
    };
    if !r.buf.is_empty() {
        return Err(WireError::Malformed { kind: k, why: "bytes left over after the last field" });
    }
    Ok(Some((frame, 4 + len)))
}

/// The fewest bytes an encoded `Entry` / `ProcInfo` takes (for bounding list counts).
const ENTRY_MIN: usize = 4 + 1 + 8 + 4 + 8 + 4;
const PROC_INFO_MIN: usize = 4 + 4 + 4 + 1 + 4 + 4 + 8 + 8;

fn refused_code(k: RefusedKind) -> u8 {
    match k {
        RefusedKind::NotFound => 1,
        RefusedKind::WrongKind => 2,
        RefusedKind::Exists => 3,
        RefusedKind::Denied => 4,
        RefusedKind::Invalid => 5,
        RefusedKind::Busy => 6,
        RefusedKind::Other => 7,
    }
}

/// Sans-io decoding: feed bytes as they arrive, take frames as they complete.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an error the
    /// stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        match decode(&self.buf[self.start..])? {
            None => {
                if self.start > 0 {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(None)
            }
            Some((f, used)) => {
                self.start += used;
                Ok(Some(f))
            }
        }
    }

    /// Bytes received but not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Reads one frame from a blocking reader; `Ok(None)` on a clean end of stream between
/// frames.
pub fn read_frame<R: Read>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut head = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_be_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len).into());
    }
    let mut buf = vec![0u8; 4 + len];
    buf[..4].copy_from_slice(&head);
    r.read_exact(&mut buf[4..])?;
    match decode(&buf)? {
        Some((f, _)) => Ok(Some(f)),
        None => Err(WireError::TooShort(len).into()),
    }
}

/// Writes one frame to a blocking writer.
pub fn write_frame<W: Write>(w: &mut W, f: &Frame) -> io::Result<()> {
    w.write_all(&f.to_bytes())
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn start(&mut self, s: &Start) {
        self.u32(s.argv.len() as u32);
        for a in &s.argv {
            self.bytes(a);
        }
        self.u32(s.env.len() as u32);
        for (k, v) in &s.env {
            self.bytes(k);
            self.bytes(v);
        }
        self.bytes(&s.workdir);
        self.u8(s.stdin as u8);
    }
    fn entry(&mut self, e: &Entry) {
        self.bytes(&e.name);
        self.u8(match e.kind {
            EntryType::File => 1,
            EntryType::Dir => 2,
            EntryType::Symlink => 3,
            EntryType::Other => 4,
        });
        self.u64(e.size);
        self.u32(e.mode);
        self.u64(e.mtime_ms as u64);
        self.bytes(&e.target);
    }
    fn proc_info(&mut self, p: &ProcInfo) {
        self.u32(p.proc);
        self.u32(p.pid);
        self.u32(p.argv.len() as u32);
        for a in &p.argv {
            self.bytes(a);
        }
        self.u8(p.running as u8);
        self.u32(p.code as u32);
        self.u32(p.signal as u32);
        self.u64(p.started_ms);
        self.u64(p.ended_ms);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: u8,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Malformed { kind: self.kind, why: "payload ends inside a field" });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Malformed { kind: self.kind, why: "boolean not 0 or 1" }),
        }
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, WireError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// Bytes of an `Output` or `Stdin` frame: at most `MAX_CHUNK`.
    fn chunk(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.bytes()?;
        if b.len() > MAX_CHUNK {
            return Err(WireError::Malformed { kind: self.kind, why: "data longer than MAX_CHUNK" });
        }
        Ok(b)
    }
    /// Data of an `FsWrite`, `Data`, `ProcInput` or `ProcData`: at most `MAX_DATA`.
    fn data(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.bytes()?;
        if b.len() > MAX_DATA {
            return Err(WireError::Malformed { kind: self.kind, why: "data longer than MAX_DATA" });
        }
        Ok(b)
    }
    /// A call's path: at most `MAX_PATH` bytes.
    fn path(&mut self) -> Result<Vec<u8>, WireError> {
        let b = self.bytes()?;
        if b.len() > MAX_PATH {
            return Err(WireError::Malformed { kind: self.kind, why: "path longer than MAX_PATH" });
        }
        Ok(b)
    }
    fn start(&mut self, id: u32) -> Result<Start, WireError> {
        let n = self.count(4)?;
        let mut argv = Vec::with_capacity(n);
        for _ in 0..n {
            argv.push(self.bytes()?);
        }
        let n = self.count(8)?;
        let mut env = Vec::with_capacity(n);
        for _ in 0..n {
            env.push((self.bytes()?, self.bytes()?));
        }
        let workdir = self.bytes()?;
        let stdin = self.bool()?;
        Ok(Start { id, argv, env, workdir, stdin })
    }
    fn entry(&mut self) -> Result<Entry, WireError> {
        let name = self.bytes()?;
        let kind = match self.u8()? {
            1 => EntryType::File,
            2 => EntryType::Dir,
            3 => EntryType::Symlink,
            4 => EntryType::Other,
            _ => return Err(WireError::Malformed { kind: self.kind, why: "unknown entry type" }),
        };
        Ok(Entry {
            name,
            kind,
            size: self.u64()?,
            mode: self.u32()?,
            mtime_ms: self.u64()? as i64,
            target: self.bytes()?,
        })
    }
    fn proc_info(&mut self) -> Result<ProcInfo, WireError> {
        let (proc, pid) = (self.u32()?, self.u32()?);
        let n = self.count(4)?;
        let mut argv = Vec::with_capacity(n);
        for _ in 0..n {
            argv.push(self.bytes()?);
        }
        Ok(ProcInfo {
            proc,
            pid,
            argv,
            running: self.bool()?,
            code: self.u32()? as i32,
            signal: self.u32()? as i32,
            started_ms: self.u64()?,
            ended_ms: self.u64()?,
        })
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?).map_err(|_| WireError::Malformed { kind: self.kind, why: "text not UTF-8" })
    }
    /// A list length, bounded by what the payload could hold (`min` bytes an element),
    /// so a lying count never makes a large allocation.
    fn count(&mut self, min: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / min.max(1) {
            return Err(WireError::Malformed { kind: self.kind, why: "list longer than its payload" });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Frame> {
        vec![
            Frame::Hello { version: VERSION, pid: 1 },
            Frame::Start(Start {
                id: 7,
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
                env: vec![(b"A".to_vec(), b"1".to_vec()), (b"EMPTY".to_vec(), Vec::new())],
                workdir: b"/workspace".to_vec(),
                stdin: true,
            }),
            Frame::Stdin { id: 7, data: vec![0, 1, 2, 255] },
            Frame::StdinEnd { id: 7 },
            Frame::Output { id: 7, stream: Stream::Stderr, data: b"oops\n".to_vec() },
            Frame::Ack { id: 7, bytes: 4096 },
            Frame::Exited { id: 7, code: 0, signal: 9 },
            Frame::Exited { id: 8, code: -1, signal: 0 },
            Frame::Failed { id: 9, reason: FailReason::NotExecutable, message: "permission denied".into() },
            Frame::Kill { id: 7 },
            Frame::Ping { nonce: u64::MAX },
            Frame::Pong { nonce: 3 },
            Frame::Error { message: "version 9 is not spoken here".into() },
            Frame::FsRead { id: 10, path: b"/etc/\xffpasswd".to_vec(), offset: 1 << 40, limit: MAX_DATA as u32 },
            Frame::FsWrite {
                id: 11,
                path: b"notes.txt".to_vec(),
                offset: 5,
                flags: write_flags::TRUNCATE | write_flags::MKDIRS,
                mode: 0o600,
                data: vec![0, 255, 10],
            },
            Frame::FsList { id: 12, path: b"/".to_vec() },
            Frame::FsStat { id: 13, path: b"/workspace/link".to_vec() },
            Frame::FsRemove { id: 14, path: b"/tmp/x".to_vec(), recursive: true },
            Frame::FsMkdir { id: 15, path: b"a/b/c".to_vec(), parents: true, mode: NO_MODE },
            Frame::Spawn {
                start: Start { id: 16, argv: vec![b"sleep".to_vec()], env: vec![], workdir: vec![], stdin: false },
                keep: 1 << 20,
            },
            Frame::ProcList { id: 17 },
            Frame::ProcOutput { id: 18, proc: 3, stdout_offset: 7, stderr_offset: 0, limit: 4096, wait_ms: 500 },
            Frame::ProcWait { id: 19, proc: 3, timeout_ms: 1000 },
            Frame::ProcKill { id: 20, proc: 3, signal: 15, grace_ms: 5000 },
            Frame::ProcInput { id: 21, proc: 3, data: b"quit\n".to_vec(), close: true },
            Frame::Data { id: 10, size: 3, eof: true, data: vec![1, 2, 3] },
            Frame::Entries {
                id: 12,
                entries: vec![
                    Entry {
                        name: b"a".to_vec(),
                        kind: EntryType::File,
                        size: 3,
                        mode: 0o644,
                        mtime_ms: -5,
                        target: vec![],
                    },
                    Entry {
                        name: b"l".to_vec(),
                        kind: EntryType::Symlink,
                        size: 4,
                        mode: 0o777,
                        mtime_ms: 1_700_000_000_000,
                        target: b"/etc".to_vec(),
                    },
                ],
                more: true,
            },
            Frame::Done { id: 11, size: 8 },
            Frame::Procs { id: 17, procs: vec![proc_info()] },
            Frame::ProcData {
                id: 18,
                info: proc_info(),
                stdout_offset: 7,
                stdout: b"ready\n".to_vec(),
                stderr_offset: 0,
                stderr: vec![],
                dropped: 99,
            },
            Frame::Refused { id: 13, kind: RefusedKind::WrongKind, message: "/etc is a directory".into() },
        ]
    }

    fn proc_info() -> ProcInfo {
        ProcInfo {
            proc: 3,
            pid: 42,
            argv: vec![b"python3".to_vec(), b"-m".to_vec(), b"http.server".to_vec()],
            running: false,
            code: 0,
            signal: 15,
            started_ms: 1,
            ended_ms: 2,
        }
    }

    #[test]
    fn every_frame_round_trips_alone_and_in_a_stream() {
        let mut all = Vec::new();
        for f in every_kind() {
            let b = f.to_bytes();
            assert_eq!(decode(&b).unwrap(), Some((f.clone(), b.len())), "{f:?}");
            all.extend_from_slice(&b);
        }
        // Fed one byte at a time, the decoder yields the same frames in order.
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for byte in &all {
            d.push(std::slice::from_ref(byte));
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, every_kind());
        assert_eq!(d.pending(), 0);
        // And through the blocking helpers.
        let mut r = &all[..];
        for f in every_kind() {
            assert_eq!(read_frame(&mut r).unwrap(), Some(f));
        }
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics_or_allocations() {
        // A declared length past the maximum is refused before anything is read.
        let huge = [0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(decode(&huge), Err(WireError::TooLarge(_))));
        assert!(matches!(decode(&[0, 0, 0, 2, 1, 0]), Err(WireError::TooShort(2))));
        let mut unknown = Frame::Kill { id: 1 }.to_bytes();
        unknown[4] = 200;
        assert_eq!(decode(&unknown), Err(WireError::UnknownKind(200)));
        // The fuzzer's find: an id on a frame that is about no command.
        let mut odd = Frame::Error { message: String::new() }.to_bytes();
        odd[5..9].copy_from_slice(&0xff0a_f547u32.to_be_bytes());
        assert!(matches!(decode(&odd), Err(WireError::Malformed { .. })));
        // Data past MAX_CHUNK.
        let big = Frame::Output { id: 1, stream: Stream::Stdout, data: vec![0; MAX_CHUNK + 1] }.to_bytes();
        assert!(matches!(decode(&big), Err(WireError::Malformed { .. })));
        // Call data and paths past their bounds.
        let big = Frame::FsWrite {
            id: 1,
            path: b"x".to_vec(),
            offset: 0,
            flags: 0,
            mode: NO_MODE,
            data: vec![0; MAX_DATA + 1],
        };
        assert!(matches!(decode(&big.to_bytes()), Err(WireError::Malformed { .. })));
        let long = Frame::FsStat { id: 1, path: vec![b'a'; MAX_PATH + 1] };
        assert!(matches!(decode(&long.to_bytes()), Err(WireError::Malformed { .. })));
        let flags = Frame::FsWrite { id: 1, path: b"x".to_vec(), offset: 0, flags: 64, mode: NO_MODE, data: vec![] };
        assert!(matches!(decode(&flags.to_bytes()), Err(WireError::Malformed { .. })));
        let limit = Frame::FsRead { id: 1, path: b"x".to_vec(), offset: 0, limit: MAX_DATA as u32 + 1 };
        assert!(matches!(decode(&limit.to_bytes()), Err(WireError::Malformed { .. })));
        // A list count far beyond its payload.
        let mut lying =
            Frame::Start(Start { id: 1, argv: vec![], env: vec![], workdir: vec![], stdin: false }).to_bytes();
        lying[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&lying), Err(WireError::Malformed { .. })));
        // Every truncation of every frame is "need more", every corruption of its length
        // an error or another frame, never a panic.
        for f in every_kind() {
            let b = f.to_bytes();
            for cut in 0..b.len() {
                assert_eq!(decode(&b[..cut]), Ok(None), "{f:?} cut at {cut}");
            }
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x5a;
                let _ = decode(&c);
            }
        }
    }
}
