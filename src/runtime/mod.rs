//! Where commands run: the `Runtime` trait and what both runtimes share.
//!
//! `docker/` runs projects in containers on the engine (and is the only module that
//! imports bollard); `local.rs` runs plain processes in the project's workspace when no
//! engine answers or when a request asks for it. Output capture with its per-stream cap
//! lives here so both runtimes truncate the same way. Runtimes know nothing of the
//! registry or the actors.

pub mod docker;
pub mod local;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{EnvMap, ImageRef, Limits, PortMap, ProjectName, Workdir};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    #[error("container engine unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    InvalidWorkdir(String),
    #[error("container engine: {0}")]
    Engine(String),
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
    /// Per-stream cap on kept output, in bytes.
    pub max_output: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// A piece of live output, sent while the command runs.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub stream: StreamKind,
    pub data: Bytes,
}

pub type LiveTx = mpsc::Sender<Chunk>;

/// How a command ended.
#[derive(Debug, Clone, Default)]
pub struct ExecOutcome {
    /// The command's exit code; 124 when it was killed at its timeout, 128+N when a
    /// signal N ended it.
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
    pub truncated: bool,
    /// The caller went away (or the project was stopped) and the command was killed.
    pub cancelled: bool,
}

/// Exit code reported when a command is killed at its timeout, as timeout(1) does.
pub const TIMEOUT_EXIT: i64 = 124;

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Checks the runtime answers; returns its version.
    async fn ping(&self) -> Result<String, RuntimeError>;

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

    /// Runs a command to its end, its timeout, or `cancel`; kills every process it
    /// started in the last two cases.
    async fn exec(
        &self,
        project: &ProjectName,
        workspace: &Path,
        spec: ExecSpec,
        live: Option<LiveTx>,
        cancel: CancellationToken,
    ) -> Result<ExecOutcome, RuntimeError>;
}

/// Collects a command's output under a per-stream cap, forwarding it live when asked.
///
/// When streaming, output is forwarded and not kept (the response then carries empty
/// stdout/stderr), so the daemon holds at most one chunk per exec in memory.
pub struct Capture {
    max: usize,
    out: Vec<u8>,
    err: Vec<u8>,
    seen_out: usize,
    seen_err: usize,
    truncated: bool,
    live: Option<LiveTx>,
}

impl Capture {
    pub fn new(max: usize, live: Option<LiveTx>) -> Self {
        Self { max, out: Vec::new(), err: Vec::new(), seen_out: 0, seen_err: 0, truncated: false, live }
    }

    pub async fn push(&mut self, stream: StreamKind, data: Bytes) {
        let seen = match stream {
            StreamKind::Stdout => &mut self.seen_out,
            StreamKind::Stderr => &mut self.seen_err,
        };
        let room = self.max.saturating_sub(*seen);
        let keep = room.min(data.len());
        *seen += keep;
        if keep < data.len() {
            self.truncated = true;
        }
        if keep == 0 {
            return;
        }
        let kept = data.slice(..keep);
        match &self.live {
            Some(tx) => {
                // A closed receiver means the client is gone; the exec is cancelled by
                // its connection, so dropping output here is right.
                let _ = tx.send(Chunk { stream, data: kept }).await;
            }
            None => match stream {
                StreamKind::Stdout => self.out.extend_from_slice(&kept),
                StreamKind::Stderr => self.err.extend_from_slice(&kept),
            },
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
        }
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
    version: std::sync::Mutex<Option<String>>,
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
        let ok = res.is_ok();
        let was = self.available.swap(ok, std::sync::atomic::Ordering::SeqCst);
        if ok != was {
            match &res {
                Ok(v) => tracing::info!(version = %v, "container engine is available"),
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

    pub fn docker_version(&self) -> Option<String> {
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

    #[tokio::test]
    async fn capture_caps_each_stream_and_keeps_counting() {
        let mut c = Capture::new(5, None);
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
        let mut c = Capture::new(4, Some(tx));
        c.push(StreamKind::Stderr, Bytes::from_static(b"hello")).await;
        let got = rx.recv().await.unwrap();
        assert_eq!(got.stream, StreamKind::Stderr);
        assert_eq!(&got.data[..], b"hell");
        let o = c.finish(3, true, false);
        assert!(o.stderr.is_empty() && o.truncated && o.timed_out);
        assert_eq!(o.exit_code, TIMEOUT_EXIT);
    }

    #[test]
    fn tokens_are_distinct_hex() {
        let a = token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, token());
    }
}
