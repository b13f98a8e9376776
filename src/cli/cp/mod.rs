//! `berth cp SRC DST`: files and directories between the host (or a tar stream) and a
//! project's container, with `docker cp`'s semantics (`spec.rs`), over `fs.*` calls.
//!
//! Streaming and bounded: a file travels in chunks (writes sized to the daemon's
//! `max_line`, reads of `READ_CHUNK`), never whole; at most `IN_FLIGHT` chunk requests
//! are out at once on the one connection, across files, so memory stays at a few times
//! `IN_FLIGHT` chunks whatever the size. Writes of one file after its first go at their
//! offsets in any order; reads land at their offsets on the host, or in order into a
//! tar stream.
//!
//! Checks come first: the source exists, the destination can take it (`docker cp`'s
//! rules), before anything is written. An error names the path; exit code 1 (2 for
//! usage errors, as everywhere in the CLI).

mod from_container;
mod progress;
mod remote;
pub mod spec;
mod to_container;

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::mux::{CallError, Mux};
use progress::Progress;
use remote::Remote;
use spec::Direction;

/// Chunk requests in flight at once.
const IN_FLIGHT: usize = 8;
/// Bytes asked for per `fs.read` (at most the daemon's `exec.max_output`): what
/// berth-agent moves in one frame, so each read is one round trip to it. Larger reads
/// measured slower (berthd puts them together from 256 KiB pieces, and the agent keeps
/// the calls on one file in order), and take more memory.
const READ_CHUNK: u64 = 256 << 10;
/// The line limit assumed when the daemon does not say.
const DEFAULT_MAX_LINE: usize = 1 << 20;

/// What an entry is, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Why a copy stopped: the message (without `berth: `) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub msg: String,
}

impl Failure {
    pub fn new(msg: impl Into<String>) -> Failure {
        Failure { code: 1, msg: msg.into() }
    }

    pub fn usage(msg: impl Into<String>) -> Failure {
        Failure { code: 2, msg: msg.into() }
    }

    /// A daemon error about `shown` (the path as the user would name it). The message
    /// names it, once.
    pub fn call(shown: &str, path: &str, e: CallError) -> Failure {
        let code = match e.kind() {
            Some("invalid_params" | "invalid_name") => 2,
            _ => 1,
        };
        let m = e.message();
        let msg = if m.contains(path) || m.contains(shown) { m } else { format!("{shown}: {m}") };
        Failure { code, msg }
    }

    /// A host I/O error on `path`.
    pub fn io(path: &Path, e: std::io::Error) -> Failure {
        Failure::new(format!("{}: {}", path.display(), io_text(&e)))
    }
}

/// An I/O error's text without Rust's `(os error N)`, lower-case first.
pub fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}

/// What was copied, for `--json`.
#[derive(Default)]
pub struct Tally {
    pub files: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn json(&self) -> Value {
        json!({
            "files": self.files.load(Ordering::Relaxed),
            "dirs": self.dirs.load(Ordering::Relaxed),
            "symlinks": self.symlinks.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "skipped": *self.skipped.lock().unwrap(),
        })
    }
}

/// Everything a copy's tasks share.
pub struct Ctx {
    pub remote: Remote,
    /// Chunk requests in flight.
    pub slots: Semaphore,
    pub progress: Progress,
    pub tally: Tally,
}

impl Ctx {
    /// `NAME:PATH`, how messages name a container path.
    pub fn shown(&self, path: &str) -> String {
        format!("{}:{path}", self.remote.name)
    }

    /// Says on stderr that `what` was skipped, and why.
    pub fn skip(&self, what: String, why: &str) {
        self.progress.interrupt();
        eprintln!("berth: skipping {what}: {why}");
        self.tally.skipped.lock().unwrap().push(what);
    }
}

/// The options of `berth cp`.
pub struct Options {
    pub src: String,
    pub dst: String,
    /// `-L`: follow a symlink SRC.
    pub follow: bool,
    /// `-q`: no progress.
    pub quiet: bool,
    pub json: bool,
}

/// Runs `berth cp`.
pub async fn run(socket: &Path, o: Options) -> ExitCode {
    let fail = |f: Failure| {
        eprintln!("berth: {}", f.msg);
        ExitCode::from(f.code)
    };
    let dir = match spec::direction(&o.src, &o.dst) {
        Ok(d) => d,
        Err(e) => return fail(Failure::usage(e)),
    };
    if o.json && matches!(dir, Direction::TarOut { .. }) {
        return fail(Failure::usage("--json cannot be used with - as DST: stdout carries the tar stream"));
    }
    let mux = match Mux::open(socket, 64).await {
        Ok(m) => m,
        Err(e) => return fail(Failure::new(format!("cannot connect to berthd at {}: {e}", socket.display()))),
    };
    let name = match &dir {
        Direction::In { name, .. }
        | Direction::TarIn { name, .. }
        | Direction::Out { name, .. }
        | Direction::TarOut { name, .. } => name.clone(),
    };
    let ctx = match context(mux, name, o.quiet).await {
        Ok(c) => Arc::new(c),
        Err(f) => return fail(f),
    };
    let done = match dir {
        Direction::In { src, dst, .. } => to_container::from_host(&ctx, &src, &o.src, &dst, o.follow).await,
        Direction::TarIn { dst, .. } => to_container::from_tar(&ctx, &dst).await,
        Direction::Out { src, dst, .. } => from_container::to_host(&ctx, &src, &dst, &o.dst, o.follow).await,
        Direction::TarOut { src, .. } => from_container::to_tar(&ctx, &src, o.follow).await,
    };
    ctx.progress.finish();
    match done {
        Ok(()) => {
            if o.json {
                println!("{}", ctx.tally.json());
            }
            ExitCode::SUCCESS
        }
        Err(f) => fail(f),
    }
}

/// Asks the daemon its limits and whether the project exists.
async fn context(mux: Mux, name: String, quiet: bool) -> Result<Ctx, Failure> {
    let info: Value = mux.call("daemon.info", &json!({})).await.map_err(|e| Failure::new(e.message()))?;
    let max_line = info["max_line"].as_u64().map(|n| n as usize).unwrap_or(DEFAULT_MAX_LINE);
    let read_chunk = info["max_output"].as_u64().map_or(READ_CHUNK, |m| m.clamp(1, READ_CHUNK));
    // An unknown project is an error of its own, before any path is looked at.
    let _: Value = mux.call("project.get", &json!({"name": name})).await.map_err(|e| Failure::call(&name, &name, e))?;
    Ok(Ctx {
        remote: Remote { mux, name, max_line, read_chunk },
        slots: Semaphore::new(IN_FLIGHT),
        progress: Progress::new(quiet),
        tally: Tally::default(),
    })
}

/// Sets `path`'s mtime without following a symlink.
pub fn set_mtime_nofollow(path: &Path, t: SystemTime) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as _ },
    ];
    // SAFETY: `c` is a NUL-terminated path and `times` two valid timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
