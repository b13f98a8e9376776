//! Where commands run: the `Runtime` trait and what both runtimes share.
//!
//! `docker/` runs projects in containers on the engine (and is the only module that
//! imports bollard); `local.rs` runs plain processes in the project's workspace when no
//! engine answers or when a request asks for it. Output capture with its per-stream cap
//! lives here so both runtimes truncate the same way. Runtimes know nothing of the
//! registry or the actors.

pub mod agent;
pub mod docker;
pub mod local;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{EnvMap, ImageRef, Limits, PortMap, ProjectName, Workdir};

/// Why a runtime call failed, typed so that no caller has to read an error's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// No engine answers at all (refused, no socket): the only error that marks the
    /// engine absent.
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    /// The engine did not answer in time. A slow engine is not an absent one.
    #[error("container engine is slow: {0}")]
    Timeout(String),
    #[error("{0}")]
    InvalidWorkdir(String),
    /// The container (or exec) does not exist.
    #[error("container engine: {0}")]
    NotFound(String),
    /// The engine refused because of the container's state (not running, paused, being
    /// removed, name taken).
    #[error("container engine: {0}")]
    Conflict(String),
    /// Local execution is not allowed by the daemon's config.
    #[error("{0}")]
    Forbidden(String),
    #[error("container engine: {0}")]
    Engine(String),
    /// The engine answered something berth cannot read.
    #[error("container engine: unreadable answer: {0}")]
    Unreadable(String),
    #[error("image {image}: {why}")]
    Image { image: String, why: String },
    #[error("{0}")]
    Io(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Docker,
    Local,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Docker => "docker",
            RuntimeKind::Local => "local",
        }
    }
}

/// What a project's container is made from.
#[derive(Debug, Clone)]
pub struct ContainerSpec<'a> {
    pub project: &'a ProjectName,
    pub image: &'a ImageRef,
    pub env: &'a EnvMap,
    pub ports: &'a PortMap,
    pub workspace: &'a Path,
    /// The project's own settings over the daemon's `[container]` defaults.
    pub limits: &'a Limits,
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    pub container_id: String,
    /// The value of the project label, when it parses as a project name.
    #[serde(skip)]
    pub project: Option<String>,
    pub running: bool,
    pub image: String,
    pub created: String,
    /// The container's PID 1 as the host sees it, while it runs.
    #[serde(skip)]
    pub pid: Option<u32>,
    /// Made with berth-agent as its PID 1.
    #[serde(skip)]
    pub agent: bool,
    /// Frozen by a pause (a snapshot being taken, or one a crash interrupted).
    #[serde(skip)]
    pub paused: bool,
}

/// Which engine answers, as `daemon.info` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// `docker` or `podman`.
    pub engine: String,
    pub version: String,
    /// The engine runs as an unprivileged user (rootless Docker or Podman): a container's
    /// root is that user on the host.
    pub rootless: bool,
}

/// An image berth committed for a snapshot (or a fork), as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotImage {
    /// The engine's id of the image.
    pub id: String,
    /// Its snapshot-id label.
    pub snapshot: String,
    /// The project label: the project it was taken from.
    pub project: Option<String>,
    /// Its `repo:tag` names (none: a commit cut short by a crash, left untagged).
    pub tags: Vec<String>,
}

/// One command to run, validated.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub argv: Vec<String>,
    pub workdir: Option<Workdir>,
    /// The project's env with the request's env layered on top.
    pub env: EnvMap,
    pub timeout: Duration,
    pub stdin: Option<Bytes>,
    /// Use the engine's exec API even where an agent answers.
    pub engine_exec: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// A piece of live output, sent while the command runs. It holds its share of the
/// daemon's output budget until it has been written to the client.
#[derive(Debug)]
pub struct Chunk {
    pub stream: StreamKind,
    pub data: Bytes,
    pub hold: Reservation,
}

pub type LiveTx = mpsc::Sender<Chunk>;

/// How a command ended.
#[derive(Debug, Default)]
pub struct ExecOutcome {
    /// The command's exit code; 124 when it was killed at its timeout, 128+N when a
    /// signal N ended it, 127 when it was not found, 126 when it could not be executed.
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
    /// The caller went away (or the project was stopped) and the command was killed.
    pub cancelled: bool,
    /// The command could not be started (not found, not executable); `exit_code` says
    /// which, as shells do.
    pub exec_error: Option<String>,
    /// Killing the command's processes (at a timeout or cancel) failed, and why: they
    /// may still run.
    pub kill_error: Option<String>,
    /// The budget held by `stdout` and `stderr`.
    pub hold: Reservation,
    /// How a container exec ran: `"agent"` or `"exec"` (the engine's exec API); empty
    /// for local runs.
    pub path: &'static str,
}

/// Exit code reported when a command is killed at its timeout, as timeout(1) does.
pub const TIMEOUT_EXIT: i64 = 124;
/// Exit codes of a command that was not found / could not be executed, as shells use.
pub const NOT_FOUND_EXIT: i64 = 127;
pub const NOT_EXECUTABLE_EXIT: i64 = 126;

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Checks the runtime answers; says which engine it is.
    async fn ping(&self) -> Result<EngineInfo, RuntimeError>;

    /// Makes the project's sandbox ready to exec in (creating and starting its container,
    /// pulling the image if needed). `None` when the runtime has no containers.
    async fn ensure_running(&self, spec: &ContainerSpec<'_>) -> Result<Option<ContainerInfo>, RuntimeError>;

    async fn stop(&self, project: &ProjectName) -> Result<(), RuntimeError>;

    /// Removes the project's container if there is one.
    async fn remove(&self, project: &ProjectName) -> Result<(), RuntimeError>;

    async fn inspect(&self, project: &ProjectName) -> Result<Option<ContainerInfo>, RuntimeError>;

    /// Every container carrying berth's managed-by label, in one call.
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;

    async fn logs(&self, project: &ProjectName, tail: Option<u64>) -> Result<String, RuntimeError>;

    /// Freezes (`true`) or thaws the project's container; idempotent.
    async fn pause(&self, _project: &ProjectName, _paused: bool) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable("snapshots need a container engine".into()))
    }

    /// Commits the project's container as `image`, labelled as snapshot `snapshot` of it.
    async fn commit(
        &self,
        _project: &ProjectName,
        _snapshot: &crate::snapshot::SnapshotId,
        _image: &str,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable("snapshots need a container engine".into()))
    }

    /// Every snapshot image this daemon made (by its labels), in one call.
    async fn snapshot_images(&self) -> Result<Vec<SnapshotImage>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Removes one image name; `Ok(false)` when the engine keeps the image because a
    /// container uses it. A name that is not there is `Ok(true)`.
    async fn remove_image(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(true)
    }

    async fn image_exists(&self, _image: &str) -> Result<bool, RuntimeError> {
        Ok(false)
    }

    /// Whether the project's agent answers (its container runs one and it replies).
    async fn agent_answers(&self, _project: &ProjectName) -> bool {
        false
    }

    /// Whether berthd holds a live connection to the project's agent: its container can
    /// run commands even while the engine does not answer.
    fn agent_connected(&self, _project: &ProjectName) -> bool {
        false
    }

    /// The connection to the project's berth-agent, which files and background
    /// processes go through. Only containers have one.
    async fn agent(&self, project: &ProjectName) -> Result<Arc<agent::AgentConn>, crate::error::Error> {
        Err(crate::error::Error::new(
            crate::error::ErrorKind::RuntimeUnavailable,
            format!(
                "project {project} runs on the host (no container engine answers), and background processes \
                 need berth-agent, which runs only in containers"
            ),
        ))
    }

    /// Carries out a file call in the project (`workspace` is its host directory), within
    /// `within`.
    async fn fs(
        &self,
        project: &ProjectName,
        workspace: &Path,
        call: crate::files::FsCall,
        within: Duration,
        hold: &mut Reservation,
    ) -> Result<crate::files::FsReply, crate::error::Error>;

    /// Runs a command to its end, its timeout, or `cancel`; kills every process it
    /// started in the last two cases. Output is kept (or sent live) through `capture`.
    async fn exec(
        &self,
        project: &ProjectName,
        workspace: &Path,
        spec: ExecSpec,
        capture: Capture,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, RuntimeError>;
}

/// The daemon-wide cap on exec output held in memory (`server.max_buffered`): captured
/// output waiting for its response, and live output queued for a client. Output that
/// finds no room is dropped and the exec marked `truncated`.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub fn new(max: usize) -> Arc<Budget> {
        Arc::new(Budget { used: AtomicUsize::new(0), max })
    }

    /// Reserves up to `want` bytes; the reservation may be smaller (even empty).
    pub fn reserve(self: &Arc<Self>, want: usize) -> Reservation {
        let mut got = 0;
        let _ = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            got = want.min(self.max.saturating_sub(used));
            Some(used + got)
        });
        Reservation { budget: Some(self.clone()), n: got }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Bytes of the budget held until dropped.
#[derive(Debug, Default)]
pub struct Reservation {
    budget: Option<Arc<Budget>>,
    n: usize,
}

impl Reservation {
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Reserves `n` more bytes, all or nothing; false when the budget has no room (or
    /// this reservation belongs to no budget).
    pub fn grow(&mut self, n: usize) -> bool {
        let Some(b) = &self.budget else { return false };
        let ok =
            b.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| (used + n <= b.max).then_some(used + n));
        if ok.is_ok() {
            self.n += n;
        }
        ok.is_ok()
    }

    /// Gives back what is held beyond `n` bytes.
    pub fn shrink_to(&mut self, n: usize) {
        if let (Some(b), true) = (&self.budget, self.n > n) {
            b.used.fetch_sub(self.n - n, Ordering::AcqRel);
            self.n = n;
        }
    }

    /// Takes over what `other` holds.
    pub fn absorb(&mut self, mut other: Reservation) {
        if self.budget.is_none() {
            self.budget = other.budget.take();
            self.n = std::mem::take(&mut other.n);
            return;
        }
        self.n += std::mem::take(&mut other.n);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.used.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// Why a wait was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    Timeout,
    Cancel,
}

/// Awaits `fut` unless the deadline passes or `cancel` fires first. Every wait of an exec
/// goes through this, the writes of its output to a slow client included, so nothing can
/// hold an exec past its timeout.
pub async fn until<F: std::future::Future>(
    fut: F,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<F::Output, Interrupt> {
    tokio::select! {
        v = fut => Ok(v),
        _ = tokio::time::sleep_until(deadline) => Err(Interrupt::Timeout),
        _ = cancel.cancelled() => Err(Interrupt::Cancel),
    }
}

/// Collects a command's output under a per-stream cap and the daemon's budget,
/// forwarding it live when asked.
///
/// When streaming, output is forwarded and not kept (the response then carries empty
/// stdout/stderr), so the daemon holds at most a few chunks per exec in memory.
pub struct Capture {
    max: usize,
    out: Vec<u8>,
    err: Vec<u8>,
    seen_out: usize,
    seen_err: usize,
    truncated: bool,
    live: Option<LiveTx>,
    budget: Arc<Budget>,
    hold: Reservation,
}

impl Capture {
    pub fn new(max: usize, live: Option<LiveTx>, budget: Arc<Budget>) -> Self {
        Self {
            max,
            out: Vec::new(),
            err: Vec::new(),
            seen_out: 0,
            seen_err: 0,
            truncated: false,
            live,
            budget,
            hold: Reservation::default(),
        }
    }

    /// Keeps (or forwards) what the caps allow of `data`. Forwarding waits for room in
    /// the live channel: callers race this against their deadline (`until`).
    pub async fn push(&mut self, stream: StreamKind, data: Bytes) {
        let seen = match stream {
            StreamKind::Stdout => &mut self.seen_out,
            StreamKind::Stderr => &mut self.seen_err,
        };
        let room = self.max.saturating_sub(*seen);
        let hold = self.budget.reserve(room.min(data.len()));
        let keep = hold.len();
        *seen += keep;
        if keep < data.len() {
            self.truncated = true;
            // Nothing more of this stream is kept, even if room frees up later: output
            // is cut at one place, never missing a piece from its middle.
            *seen = self.max;
        }
        if keep == 0 {
            return;
        }
        let kept = data.slice(..keep);
        match &self.live {
            Some(tx) => {
                // A closed receiver means the client is gone; the exec is cancelled by
                // its connection, so dropping output here is right.
                let _ = tx.send(Chunk { stream, data: kept, hold }).await;
            }
            None => {
                match stream {
                    StreamKind::Stdout => self.out.extend_from_slice(&kept),
                    StreamKind::Stderr => self.err.extend_from_slice(&kept),
                }
                self.hold.absorb(hold);
            }
        }
    }

    pub fn finish(self, exit_code: i64, timed_out: bool, cancelled: bool) -> ExecOutcome {
        ExecOutcome {
            exit_code: if timed_out { TIMEOUT_EXIT } else { exit_code },
            stdout: self.out,
            stderr: self.err,
            timed_out,
            truncated: self.truncated,
            cancelled,
            exec_error: None,
            kill_error: None,
            hold: self.hold,
            path: "",
        }
    }

    /// The command never started: `code` and the reason, no output.
    pub fn failed_to_start(self, code: i64, why: String) -> ExecOutcome {
        let mut o = self.finish(code, false, false);
        o.stdout.clear();
        o.stderr.clear();
        o.exec_error = Some(why);
        o
    }
}

/// A random 128-bit hex token: marks the processes of one exec so they can be found and
/// killed, and makes container-side names unguessable.
pub fn token() -> String {
    let mut buf = [0u8; 16];
    if getrandom(&mut buf).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        buf = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Both runtimes and whether the engine answers right now.
///
/// The flag is refreshed by the janitor's periodic ping and by every engine call that
/// fails for want of an engine, so requests fail fast while it is down and find it again
/// once it is back, without a restart of the daemon.
pub struct Runtimes {
    pub docker: std::sync::Arc<dyn Runtime>,
    pub local: std::sync::Arc<dyn Runtime>,
    available: std::sync::atomic::AtomicBool,
    version: std::sync::Mutex<Option<EngineInfo>>,
}

impl Runtimes {
    pub fn new(docker: std::sync::Arc<dyn Runtime>, local: std::sync::Arc<dyn Runtime>) -> Self {
        Self {
            docker,
            local,
            available: std::sync::atomic::AtomicBool::new(false),
            version: std::sync::Mutex::new(None),
        }
    }

    /// Pings the engine and records the answer; true when it answered.
    pub async fn refresh(&self) -> bool {
        let res = self.docker.ping().await;
        if let Err(RuntimeError::Timeout(e)) = &res {
            // Slow, not gone: keep what was known.
            tracing::warn!(error = %e, "container engine answered no ping in time");
            return self.docker_available();
        }
        let ok = res.is_ok();
        let was = self.available.swap(ok, std::sync::atomic::Ordering::SeqCst);
        if ok != was {
            match &res {
                Ok(v) => {
                    tracing::info!(engine = %v.engine, version = %v.version, rootless = v.rootless, "container engine is available")
                }
                Err(e) => tracing::warn!(error = %e, "container engine is unavailable; running locally"),
            }
        }
        if let Ok(mut v) = self.version.lock() {
            *v = res.ok();
        }
        ok
    }

    pub fn docker_available(&self) -> bool {
        self.available.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn docker_version(&self) -> Option<EngineInfo> {
        self.version.lock().ok().and_then(|v| v.clone())
    }

    /// Records that an engine call found no engine.
    pub fn note(&self, e: &RuntimeError) {
        if matches!(e, RuntimeError::Unavailable(_)) && self.available.swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::warn!(error = %e, "container engine went away; running locally until it is back");
        }
    }

    /// The runtime that project containers live in now: the engine if it answers.
    pub fn primary(&self) -> &std::sync::Arc<dyn Runtime> {
        if self.docker_available() {
            &self.docker
        } else {
            &self.local
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget() -> Arc<Budget> {
        Budget::new(usize::MAX)
    }

    #[tokio::test]
    async fn capture_caps_each_stream_and_keeps_counting() {
        let mut c = Capture::new(5, None, budget());
        c.push(StreamKind::Stdout, Bytes::from_static(b"abc")).await;
        c.push(StreamKind::Stdout, Bytes::from_static(b"defgh")).await;
        c.push(StreamKind::Stderr, Bytes::from_static(b"12")).await;
        c.push(StreamKind::Stdout, Bytes::from_static(b"more")).await;
        let o = c.finish(0, false, false);
        assert_eq!(o.stdout, b"abcde");
        assert_eq!(o.stderr, b"12");
        assert!(o.truncated);
    }

    #[tokio::test]
    async fn capture_streams_without_keeping() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut c = Capture::new(4, Some(tx), budget());
        c.push(StreamKind::Stderr, Bytes::from_static(b"hello")).await;
        let got = rx.recv().await.unwrap();
        assert_eq!(got.stream, StreamKind::Stderr);
        assert_eq!(&got.data[..], b"hell");
        let o = c.finish(3, true, false);
        assert!(o.stderr.is_empty() && o.truncated && o.timed_out);
        assert_eq!(o.exit_code, TIMEOUT_EXIT);
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_given_back() {
        let b = Budget::new(10);
        let mut one = Capture::new(100, None, b.clone());
        let mut two = Capture::new(100, None, b.clone());
        one.push(StreamKind::Stdout, Bytes::from_static(b"1234567")).await;
        two.push(StreamKind::Stdout, Bytes::from_static(b"abcdefg")).await;
        assert_eq!(b.used(), 10);
        let (o1, o2) = (one.finish(0, false, false), two.finish(0, false, false));
        assert_eq!((o1.stdout.as_slice(), o1.truncated), (&b"1234567"[..], false));
        assert_eq!((o2.stdout.as_slice(), o2.truncated), (&b"abc"[..], true), "only what fit the budget");
        drop(o1);
        assert_eq!(b.used(), 3, "a finished exec's output is given back when its result is gone");
        drop(o2);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_stream_cut_short_by_the_budget_keeps_no_later_piece() {
        let b = Budget::new(4);
        let mut c = Capture::new(100, None, b.clone());
        let hog = b.reserve(4);
        c.push(StreamKind::Stdout, Bytes::from_static(b"lost")).await;
        drop(hog);
        c.push(StreamKind::Stdout, Bytes::from_static(b"late")).await;
        let o = c.finish(0, false, false);
        assert!(o.stdout.is_empty() && o.truncated, "{:?}", o.stdout);
    }

    #[tokio::test]
    async fn a_full_live_channel_does_not_outlast_the_deadline() {
        let (tx, _rx) = mpsc::channel(1);
        let mut c = Capture::new(100, Some(tx), budget());
        c.push(StreamKind::Stdout, Bytes::from_static(b"fills the channel")).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let never = CancellationToken::new();
        let r = until(c.push(StreamKind::Stdout, Bytes::from_static(b"blocks")), deadline, &never).await;
        assert_eq!(r, Err(Interrupt::Timeout));
    }

    #[test]
    fn tokens_are_distinct_hex() {
        let a = token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, token());
    }
}
