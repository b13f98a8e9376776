//! berthd's side of berth-agent: install the binary, connect to a project's agent,
//! prove that what answers is that project's container, and multiplex execs over one
//! connection per project.
//!
//! The agent listens on `<state_dir>/run/<project>/agent.sock` (bind-mounted at
//! `/.berth/run` in the container). A process in the container can replace that file
//! with a symlink or a listener of its own, so the socket is checked not to be a link,
//! and after connecting the peer's pid (SO_PEERCRED, taken when it called `listen`) must
//! be the container's PID 1, which is the agent: a symlink to another project's agent,
//! to the engine or to anything on the host is refused before a byte is written, and a
//! forged listener inside the container costs at most that project's own results.
//! Nothing here imports bollard: the docker runtime hands over the container's pid.

mod calls;
mod exec;

pub use calls::{ProcOutput, SpawnSpec};

pub use exec::{fits, AgentExecError};

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_wire::{Decoder, Frame, MAX_CHUNK, VERSION, WINDOW};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::ProjectName;
use crate::workspace::Access;

/// The agent binary berthd carries, built static by `build.rs`.
const AGENT: &[u8] = include_bytes!(env!("BERTH_AGENT_BIN"));

/// Where the agent and its socket are inside a container.
pub const AGENT_IN_CONTAINER: &str = "/.berth/berth-agent";
pub const RUN_IN_CONTAINER: &str = "/.berth/run";
pub const SOCKET_IN_CONTAINER: &str = "/.berth/run/agent.sock";
const SOCKET_NAME: &str = "agent.sock";

/// How long connecting and the hello exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// Nothing usable answers (no socket yet, refused, not a socket): use the exec path.
    #[error("no agent answers: {0}")]
    Unavailable(String),
    /// The container has no agent (made with `[exec] agent = false`, or before berth
    /// had one), or the agent is off in berthd.
    #[error("{0}")]
    Absent(String),
    /// Something answered that is not this project's agent.
    #[error("{0}")]
    Forged(String),
    /// What is there cannot be used and will not become usable by waiting (not a
    /// socket, permission denied).
    #[error("no usable agent: {0}")]
    Refused(String),
    /// The connection died while a command ran.
    #[error("{0}")]
    Lost(String),
    #[error("agent protocol: {0}")]
    Protocol(String),
}

/// The installed agent binary, the per-project run dirs, and the live connections.
pub struct Agents {
    binary: PathBuf,
    run: PathBuf,
    access: Access,
    conns: Mutex<HashMap<ProjectName, Arc<AgentConn>>>,
    /// One connect at a time per project: racing connects would each replace (and so
    /// close, killing its commands) the other's connection.
    connecting: Mutex<HashMap<ProjectName, Arc<tokio::sync::Mutex<()>>>>,
}

impl Agents {
    /// Writes the embedded agent to `<state_dir>/agent/berth-agent-<hash>` unless this
    /// build's is there already (each container keeps the one it was made with), and
    /// makes `run/`.
    pub fn install(state_dir: &Path, access: Access) -> io::Result<Agents> {
        let dir = state_dir.join("agent");
        make_private_dir(&dir, 0o711)?;
        let binary = dir.join(format!("berth-agent-{}", env!("BERTH_AGENT_HASH")));
        let current = std::fs::symlink_metadata(&binary).is_ok_and(|m| m.is_file() && m.len() == AGENT.len() as u64);
        if !current {
            let tmp = dir.join(format!(".berth-agent.{}", std::process::id()));
            std::fs::write(&tmp, AGENT)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
            std::fs::rename(&tmp, &binary)?;
        }
        // Only berthd gets through `run/` on the host: containers reach their own directory
        // by its bind mount, and no local user (local execs included) reaches any agent.
        release_embedded_copy();
        let run = state_dir.join("run");
        make_private_dir(&run, 0o700)?;
        Ok(Agents { binary, run, access, conns: Mutex::default(), connecting: Mutex::default() })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The project's run dir, made (owned by the workspace owner, so a container running
    /// as that user can bind its socket there) if missing.
    pub async fn run_dir(&self, project: &ProjectName) -> io::Result<PathBuf> {
        let (dir, a) = (self.run.join(project.as_str()), self.access);
        blocking(move || {
            make_private_dir(&dir, 0o700)?;
            std::os::unix::fs::lchown(&dir, Some(a.uid), Some(a.gid))?;
            Ok(dir)
        })
        .await
    }

    /// Removes whatever is at the project's socket path if it is not a socket (a file,
    /// a directory or a link a container left there), so that its agent can start.
    pub async fn clear_socket_path(&self, project: &ProjectName) {
        let sock = self.run.join(project.as_str()).join(SOCKET_NAME);
        let _ = blocking(move || match std::fs::symlink_metadata(&sock) {
            Ok(m) if m.file_type().is_socket() => Ok(()),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&sock),
            Ok(_) => std::fs::remove_file(&sock),
            Err(_) => Ok(()),
        })
        .await;
    }

    /// Removes a deleted project's run dir.
    pub async fn remove_run_dir(&self, project: &ProjectName) {
        self.forget(project);
        let dir = self.run.join(project.as_str());
        let _ = blocking(move || match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&dir),
            _ => Ok(()),
        })
        .await;
    }

    /// The live connection to the project's agent, if there is one.
    pub fn cached(&self, project: &ProjectName) -> Option<Arc<AgentConn>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.get(project).filter(|c| !c.closed.is_cancelled()).cloned()
    }

    pub fn forget(&self, project: &ProjectName) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = conns.remove(project) {
            c.closed.cancel();
        }
    }

    /// Connects to the agent of the project whose container's PID 1 is `container_pid`
    /// (reusing a live connection to that same agent).
    pub async fn connect(&self, project: &ProjectName, container_pid: u32) -> Result<Arc<AgentConn>, AgentError> {
        if let Some(c) = self.cached(project).filter(|c| c.agent_pid == container_pid) {
            return Ok(c);
        }
        let lock = {
            let mut m = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(project.clone()).or_default().clone()
        };
        let _one = lock.lock().await;
        // Made by the connect this one waited for.
        if let Some(c) = self.cached(project).filter(|c| c.agent_pid == container_pid) {
            return Ok(c);
        }
        let sock = self.run.join(project.as_str()).join(SOCKET_NAME);
        let conn = AgentConn::open(project, &sock, container_pid).await?;
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = conns.insert(project.clone(), conn.clone()) {
            // A connection to a previous agent (the container restarted).
            old.closed.cancel();
        }
        Ok(conn)
    }
}

/// Drops the embedded agent's pages from berthd's memory: they are read once (to install
/// the file) or not at all, but the loader maps them in with their neighbours.
fn release_embedded_copy() {
    const PAGE: usize = 4096;
    let start = AGENT.as_ptr() as usize;
    let first = start.div_ceil(PAGE) * PAGE;
    let end = (start + AGENT.len()) / PAGE * PAGE;
    if end > first {
        // SAFETY: the range lies inside the read-only, file-backed bytes of `AGENT`; on
        // such a mapping MADV_DONTNEED only unmaps pages, which are read back from the
        // executable if ever touched again.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

/// A directory of berth's own, with the workspaces' rules: made if missing, never a
/// symlink, `mode` set.
fn make_private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    crate::workspace::ensure_real_dir(dir)
        .and_then(|()| crate::workspace::set_mode(dir, mode))
        .map_err(|e| io::Error::other(e.to_string()))
}

/// Disk work off the async workers (what a container left in its run dir can be large).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io::Error::other)?
}

/// What the reader task hands to one exec.
#[derive(Debug)]
enum Event {
    Frame(Frame),
}

/// A running command's event channel and its unacknowledged output.
type Call = (mpsc::UnboundedSender<Event>, Arc<AtomicU64>);

/// One connection to one project's agent, shared by that project's execs.
pub struct AgentConn {
    project: ProjectName,
    /// The agent's pid as the host sees it (the container's PID 1).
    agent_pid: u32,
    out: mpsc::UnboundedSender<Frame>,
    /// Each running command's events, and its output not yet acknowledged: an agent that
    /// sends past its window (a hijacked PID 1) loses the connection instead of filling
    /// berthd's memory.
    calls: Mutex<HashMap<u32, Call>>,
    pings: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_id: AtomicU32,
    closed: CancellationToken,
}

impl AgentConn {
    async fn open(project: &ProjectName, sock: &Path, container_pid: u32) -> Result<Arc<AgentConn>, AgentError> {
        let unavailable = |why: String| AgentError::Unavailable(format!("project {project}: {why}"));
        // Never through a link a container planted: the socket's inode is pinned (an
        // O_PATH descriptor that does not follow a final symlink) and checked, and the
        // connect goes to that very inode, so nothing can be swapped in between. The peer
        // check below is what decides; this refuses the obvious cases without connecting.
        let pinned = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(sock)
            .map_err(|e| unavailable(format!("{}: {e}", sock.display())))?;
        let meta = pinned.metadata().map_err(|e| unavailable(format!("{}: {e}", sock.display())))?;
        if !meta.file_type().is_socket() {
            return Err(AgentError::Refused(format!("{} is not a socket; not connecting", sock.display())));
        }
        let via = PathBuf::from(format!("/proc/self/fd/{}", pinned.as_raw_fd()));
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&via))
            .await
            .map_err(|_| unavailable(format!("{} did not accept within {CONNECT_TIMEOUT:?}", sock.display())))?
            .map_err(|e| match e.kind() {
                io::ErrorKind::PermissionDenied => AgentError::Refused(format!("{}: {e}", sock.display())),
                _ => unavailable(format!("{}: {e}", sock.display())),
            })?;
        let peer = stream.peer_cred().map_err(|e| unavailable(format!("peer credentials: {e}")))?;
        match peer.pid() {
            Some(pid) if pid as u32 == container_pid => {}
            other => {
                let who = other.map(|p| format!("pid {p}")).unwrap_or_else(|| "an unknown process".into());
                tracing::warn!(project = %project, peer = %who, agent = container_pid, "refused a forged agent socket");
                return Err(AgentError::Forged(format!(
                    "the agent socket of project {project} is answered by {who}, not its container's agent (pid \
                     {container_pid}); refusing it"
                )));
            }
        }
        let (mut read, mut write) = stream.into_split();
        let hello = Frame::Hello { version: VERSION, pid: std::process::id() };
        let mut decoder = Decoder::new();
        let handshake = async {
            write.write_all(&hello.to_bytes()).await?;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                if let Some(f) = decoder.next_frame()? {
                    return Ok::<_, io::Error>(f);
                }
                let n = read.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                decoder.push(&buf[..n]);
            }
        };
        let first = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| unavailable("the agent sent no hello in time".into()))?
            .map_err(|e| unavailable(format!("hello: {e}")))?;
        match first {
            Frame::Hello { version, .. } if version == VERSION => {}
            Frame::Hello { version, .. } => {
                return Err(AgentError::Protocol(format!(
                    "project {project}'s agent speaks version {version}, berthd speaks {VERSION}"
                )))
            }
            other => return Err(AgentError::Protocol(format!("expected hello, got {other:?}"))),
        }
        let (out, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(AgentConn {
            project: project.clone(),
            agent_pid: container_pid,
            out,
            calls: Mutex::new(HashMap::new()),
            pings: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed: CancellationToken::new(),
        });
        tokio::spawn(write_loop(write, rx, conn.closed.clone()));
        conn.spawn_reader(read, decoder);
        Ok(conn)
    }

    /// Starts the reader; separate from `open` so that the reader can hold an `Arc`.
    fn spawn_reader(self: &Arc<Self>, read: tokio::net::unix::OwnedReadHalf, decoder: Decoder) {
        let me = Arc::downgrade(self);
        let closed = self.closed.clone();
        tokio::spawn(async move {
            let why = read_loop(read, decoder, &me, &closed).await;
            closed.cancel();
            if let Some(me) = me.upgrade() {
                tracing::debug!(project = %me.project, %why, "agent connection closed");
                // Every exec waiting on this connection learns it is gone.
                me.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
                me.pings.lock().unwrap_or_else(|p| p.into_inner()).clear();
            }
        });
    }

    fn send(&self, f: Frame) -> Result<(), AgentError> {
        self.out
            .send(f)
            .map_err(|_| AgentError::Lost(format!("the connection to project {}'s agent is closed", self.project)))
    }

    /// Registers a new command and returns its id, where its events arrive, and its
    /// count of unacknowledged output.
    fn register(&self) -> (u32, mpsc::UnboundedReceiver<Event>, Arc<AtomicU64>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let unacked = Arc::new(AtomicU64::new(0));
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (tx, unacked.clone()));
        (id, rx, unacked)
    }

    fn unregister(&self, id: u32) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Whether the agent answers a ping within `within`.
    pub async fn ping(&self, within: Duration) -> bool {
        let nonce = u64::from(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pings.lock().unwrap_or_else(|p| p.into_inner()).insert(nonce, tx);
        let answered =
            self.send(Frame::Ping { nonce }).is_ok() && matches!(tokio::time::timeout(within, rx).await, Ok(Ok(())));
        self.pings.lock().unwrap_or_else(|p| p.into_inner()).remove(&nonce);
        answered
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }
}

impl Drop for AgentConn {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

async fn write_loop(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    closed: CancellationToken,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            f = rx.recv() => f,
            _ = closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        buf.clear();
        first.encode(&mut buf);
        // Whatever else is queued goes out in the same write.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => f.encode(&mut buf),
                Err(_) => break,
            }
        }
        if write.write_all(&buf).await.is_err() {
            break;
        }
    }
    closed.cancel();
    let _ = write.shutdown().await;
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    mut decoder: Decoder,
    conn: &std::sync::Weak<AgentConn>,
    closed: &CancellationToken,
) -> String {
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return format!("bad frame from the agent: {e}"),
            };
            let Some(conn) = conn.upgrade() else { return "connection dropped".into() };
            match frame {
                Frame::Pong { nonce } => {
                    if let Some(tx) = conn.pings.lock().unwrap_or_else(|p| p.into_inner()).remove(&nonce) {
                        let _ = tx.send(());
                    }
                }
                Frame::Error { message } => return format!("the agent said: {message}"),
                f @ (Frame::Output { .. }
                | Frame::Exited { .. }
                | Frame::Failed { .. }
                | Frame::Data { .. }
                | Frame::Entries { .. }
                | Frame::Done { .. }
                | Frame::Procs { .. }
                | Frame::ProcData { .. }
                | Frame::Refused { .. }) => {
                    let id = f.id().unwrap_or(0);
                    let calls = conn.calls.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((tx, unacked)) = calls.get(&id) {
                        if let Frame::Output { data, .. } = &f {
                            let n = unacked.fetch_add(data.len() as u64, Ordering::AcqRel) + data.len() as u64;
                            if n > u64::from(WINDOW) + MAX_CHUNK as u64 {
                                return format!("the agent sent {n} bytes past its window for command {id}");
                            }
                        }
                        let _ = tx.send(Event::Frame(f));
                    }
                }
                other => return format!("unexpected frame from the agent: {other:?}"),
            }
        }
        let n = tokio::select! {
            r = read.read(&mut buf) => match r {
                Ok(0) => return "the agent closed the connection".into(),
                Ok(n) => n,
                Err(e) => return format!("reading from the agent: {e}"),
            },
            _ = closed.cancelled() => return "closed by berthd".into(),
        };
        decoder.push(&buf[..n]);
    }
}
