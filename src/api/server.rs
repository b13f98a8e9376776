//! The control socket: accepts connections, gates them by peer credentials, reads
//! newline-delimited JSON-RPC, runs requests concurrently and writes responses in the
//! order they finish.
//!
//! Limits live here: the line length (`too_large`, then close), open connections and
//! in-flight requests per connection (`busy`), an idle timeout for connections with
//! nothing in flight, and a write timeout for clients that stop reading. Closing a
//! connection (or its write half, or failing to write to it) cancels its running execs.
//! The server decides nothing about projects: it hands each decoded request to `Service`.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{ConnHandle, Service};
use super::protocol::{self, Outgoing};
use crate::config::ServerConfig;
use crate::error::{Error, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another berthd is already serving {0}")]
    InUse(PathBuf),
    // Not `source`: the message already carries it, and a source would print it twice.
    #[error("socket {}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error(
        "socket dir {} is writable by everyone; refusing to put the socket there: use a directory only you can write, such as {} (--socket or $BERTH_SOCKET)",
        dir.display(), suggestion.display()
    )]
    WorldWritable { dir: PathBuf, suggestion: PathBuf },
    #[error(
        "socket dir {} cannot be made: {} is {what}; use a directory you can write, such as {} (--socket or $BERTH_SOCKET)",
        dir.display(), blocker.display(), suggestion.display()
    )]
    DirUnusable { dir: PathBuf, blocker: PathBuf, what: &'static str, suggestion: PathBuf },
    #[error("socket path {} is {what}, not a socket; refusing to replace it (move it away or choose another --socket)", path.display())]
    NotASocket { path: PathBuf, what: &'static str },
    #[error("socket_group {0:?} does not exist")]
    NoGroup(String),
}

/// Who may talk to the daemon.
#[derive(Debug, Clone)]
pub struct Gate {
    pub daemon_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub group: Option<u32>,
}

/// The credentials a peer had when it connected, as the kernel recorded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    /// For logs only: a pid can be reused, so nothing is decided by it.
    pub pid: Option<i32>,
    /// Supplementary groups (SO_PEERGROUPS).
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer's credentials from the connected socket; an unknown peer is
    /// `u32::MAX`, which nothing allows.
    fn of(stream: &UnixStream) -> Peer {
        let (uid, gid, pid) =
            stream.peer_cred().map(|c| (c.uid(), c.gid(), c.pid())).unwrap_or((u32::MAX, u32::MAX, None));
        let groups = peer_groups(stream.as_raw_fd()).unwrap_or_else(|e| {
            tracing::debug!(uid, error = %e, "cannot read the peer's supplementary groups");
            Vec::new()
        });
        Peer { uid, gid, pid, groups }
    }
}

/// `getsockopt(SO_PEERGROUPS)` (Linux 4.13+), growing the buffer while the kernel says
/// it is too small.
fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `groups`, which holds that many.
        let rc = unsafe {
            libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len)
        };
        if rc == 0 {
            groups.truncate(len as usize / GID);
            return Ok(groups);
        }
        let err = std::io::Error::last_os_error();
        // ERANGE: `len` now holds the size needed.
        if err.raw_os_error() == Some(libc::ERANGE) && len as usize > groups.len() * GID {
            groups.resize(len as usize / GID, 0);
            continue;
        }
        return Err(err);
    }
}

impl Gate {
    /// `socket_group = ""` means the daemon's own group, as the socket file's group is.
    pub fn from_config(cfg: &ServerConfig) -> Result<Gate, BindError> {
        let group = if cfg.socket_group.is_empty() {
            // SAFETY: getegid cannot fail.
            unsafe { libc::getegid() }
        } else {
            lookup_group(&cfg.socket_group).ok_or_else(|| BindError::NoGroup(cfg.socket_group.clone()))?
        };
        // SAFETY: geteuid cannot fail.
        let daemon_uid = unsafe { libc::geteuid() };
        Ok(Gate { daemon_uid, allowed_uids: cfg.allowed_uids.clone(), group: Some(group) })
    }

    /// Root, the daemon's own uid, `allowed_uids`, and members of `socket_group` (as the
    /// primary or a supplementary group).
    pub fn allows(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.daemon_uid || self.allowed_uids.contains(&peer.uid) {
            return true;
        }
        self.group.is_some_and(|g| peer.gid == g || peer.groups.contains(&g))
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
    })
}

/// A socket path that works for whoever runs the daemon: `$XDG_RUNTIME_DIR/berth/`,
/// `/run/berth/` as root, else under `~/.local/state/berth/`.
pub fn suggested_socket() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("berth/berth.sock");
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/berth/berth.sock");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    home.join(".local/state/berth/berth.sock")
}

fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symlink"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_file() {
        "a regular file"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// Anyone who can write the socket's directory could swap the socket for their own; the
/// sticky bit does not stop them from placing one first.
fn check_dir(dir: &Path) -> Result<(), BindError> {
    let meta = std::fs::metadata(dir).map_err(|source| BindError::Io { path: dir.to_path_buf(), err: source })?;
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(BindError::WorldWritable { dir: dir.to_path_buf(), suggestion: suggested_socket() });
    }
    Ok(())
}

/// A missing socket dir must be makeable: its nearest existing ancestor is a directory
/// this process may write.
fn check_creatable(dir: &Path) -> Result<(), BindError> {
    let unusable = |blocker: &Path, what| BindError::DirUnusable {
        dir: dir.to_path_buf(),
        blocker: blocker.to_path_buf(),
        what,
        suggestion: suggested_socket(),
    };
    let Some(ancestor) = dir.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.exists()) else {
        return Ok(());
    };
    let ancestor = if ancestor.as_os_str().is_empty() { Path::new(".") } else { ancestor };
    if !ancestor.is_dir() {
        return Err(unusable(ancestor, "not a directory"));
    }
    let c = std::ffi::CString::new(ancestor.as_os_str().as_encoded_bytes())
        .map_err(|_| unusable(ancestor, "not a valid path"))?;
    // SAFETY: access reads a NUL-terminated path we own.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(unusable(ancestor, "not writable by berthd"));
    }
    Ok(())
}

/// What sits at the socket path: nothing (`false`), a stale socket (`true`), or an error
/// for a live socket or anything that is not a socket (never removed).
async fn stale_socket(path: &Path) -> Result<bool, BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(BindError::Io { path: path.to_path_buf(), err: source }),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket { path: path.to_path_buf(), what: kind_of(meta.file_type()) });
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(BindError::InUse(path.to_path_buf()));
    }
    Ok(true)
}

/// Checks, before the daemon creates anything, that the socket can go at `path`: its
/// directory exists and is not writable by everyone (or can be made), and nothing but a
/// stale socket is at the path.
pub async fn preflight(path: &Path) -> Result<(), BindError> {
    let dir = socket_dir(path);
    match std::fs::metadata(&dir) {
        Ok(_) => check_dir(&dir)?,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            check_creatable(&dir)?
        }
        Err(err) => return Err(BindError::Io { path: dir, err }),
    }
    stale_socket(path).await.map(|_| ())
}

/// Binds the socket: refuses a live one and anything that is not a socket, replaces a
/// stale one, makes the parent dir if needed (0755, never world-writable), then applies
/// mode and group.
pub async fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io { path: path.to_path_buf(), err: source };
    let dir = socket_dir(path);
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(io)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    }
    check_dir(&dir)?;
    if stale_socket(path).await? {
        tracing::info!(socket = %path.display(), "replacing stale socket file");
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io)?;
    }
    Ok(listener)
}

pub struct Server {
    pub listener: UnixListener,
    pub service: Arc<Service>,
    pub config: ServerConfig,
    pub gate: Gate,
}

struct Shared {
    service: Arc<Service>,
    config: ServerConfig,
    gate: Gate,
    shutdown: CancellationToken,
    debug_hooks: bool,
}

impl Server {
    /// Serves until `shutdown` is cancelled, then waits (up to `shutdown_grace`) for the
    /// requests in flight before failing the rest.
    pub async fn run(self, shutdown: CancellationToken) {
        let debug_hooks = self.service.ctx.debug_hooks;
        let shared = Arc::new(Shared {
            service: self.service,
            config: self.config.clone(),
            gate: self.gate,
            shutdown: shutdown.clone(),
            debug_hooks,
        });
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let shared = shared.clone();
                        match slots.clone().try_acquire_owned() {
                            Ok(permit) => {
                                tracker.spawn(async move {
                                    serve_conn(stream, shared).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                tracker.spawn(refuse(stream, Error::new(ErrorKind::Busy, format!(
                                    "too many open connections (max {})", self.config.max_connections
                                ))));
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        drop(self.listener);
        tracker.close();
        tracker.wait().await;
    }
}

async fn refuse(mut stream: UnixStream, e: Error) {
    let line = protocol::error_response(&Value::Null, &e) + "\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes())).await;
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line (or the last bytes before EOF) is in the caller's buffer.
    Done,
    TooLong,
    Eof,
}

/// Reads one `\n`-terminated line of at most `max` bytes into `line` without holding more
/// than that. Cancel-safe: bytes read before the future is dropped stay in `line` (or in
/// the reader's buffer), so a later call carries on where this one stopped.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if line.is_empty() { Line::Eof } else { Line::Done });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        if line.len() + chunk.len() > max {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(chunk);
        let found = done != buf.len() || buf.last() == Some(&b'\n');
        r.consume(done);
        if found {
            return Ok(Line::Done);
        }
    }
}

/// Writes the connection's outgoing lines; a write that does not complete within
/// `timeout` (a client that stopped reading) drops the connection and cancels its execs.
/// Each line's output budget is given back once it has been written.
fn spawn_writer(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    gone: CancellationToken,
    timeout: Duration,
    uid: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Outgoing { mut line, hold }) = rx.recv().await {
            line.push('\n');
            match tokio::time::timeout(timeout, write.write_all(line.as_bytes())).await {
                Ok(Ok(())) => drop(hold),
                Ok(Err(_)) => {
                    gone.cancel();
                    return;
                }
                Err(_) => {
                    let waited = humantime::format_duration(timeout);
                    tracing::warn!(uid, %waited, "a client stopped reading its responses; closing its connection");
                    gone.cancel();
                    return;
                }
            }
        }
        let _ = write.shutdown().await;
    })
}

async fn serve_conn(stream: UnixStream, shared: Arc<Shared>) {
    let peer = Peer::of(&stream);
    let (uid, pid) = (peer.uid, peer.pid);
    if !shared.gate.allows(&peer) {
        tracing::warn!(uid, gid = peer.gid, groups = ?peer.groups, pid, "refused a connection from a peer that is not allowed");
        let e = Error::new(ErrorKind::Forbidden, format!("uid {uid} is not allowed to use this socket"));
        refuse(stream, e).await;
        return;
    }
    let (read, write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let (tx, rx) = mpsc::channel::<Outgoing>(256);
    let gone = CancellationToken::new();
    let writer = spawn_writer(write, rx, gone.clone(), shared.config.write_timeout.0, uid);
    let conn = ConnHandle { out: tx.clone(), gone: gone.clone(), uid };
    let in_flight = Arc::new(Semaphore::new(shared.config.max_in_flight));
    let finished = Arc::new(Notify::new());
    let requests = TaskTracker::new();
    let max_line = shared.config.max_line.0 as usize;
    let idle = shared.config.idle_timeout.0;
    // Lives across loop turns: waking up for another branch never loses a partial line.
    let mut line = Vec::new();
    let mut last_activity = Instant::now();
    loop {
        let busy = in_flight.available_permits() < shared.config.max_in_flight;
        let next = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            // The writer gave up on the client.
            _ = gone.cancelled() => break,
            r = read_line(&mut reader, &mut line, max_line) => r,
            // A request finished: the idle deadline runs from now.
            _ = finished.notified() => {
                last_activity = Instant::now();
                continue;
            }
            _ = tokio::time::sleep_until(last_activity + idle), if !busy => {
                tracing::debug!(uid, "closing an idle connection");
                break;
            }
        };
        last_activity = Instant::now();
        match next {
            Ok(Line::Done) => {}
            Ok(Line::Eof) | Err(_) => {
                // The client is gone (or closed its write half): its execs are killed.
                gone.cancel();
                break;
            }
            Ok(Line::TooLong) => {
                let e = Error::new(ErrorKind::TooLarge, format!("request line longer than {max_line} bytes; closing"));
                let _ = tx.send(protocol::error_response(&Value::Null, &e).into()).await;
                gone.cancel();
                break;
            }
        }
        let line = std::mem::take(&mut line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = protocol::decode(&line, &shared.service.ctx.config, shared.debug_hooks);
        let request = match decoded.request {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(uid, method = %decoded.method, error = %e, "refused a request");
                let _ = tx.send(protocol::error_response(&decoded.id, &e).into()).await;
                continue;
            }
        };
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let e = Error::new(
                ErrorKind::Busy,
                format!("too many requests in flight on this connection (max {})", shared.config.max_in_flight),
            );
            let _ = tx.send(protocol::error_response(&decoded.id, &e).into()).await;
            continue;
        };
        if request.is_mutating() {
            let project = request.project().map(|n| n.as_str());
            tracing::info!(uid, pid, method = %decoded.method, project, "request");
        }
        let (service, conn, tx, id) = (shared.service.clone(), conn.clone(), tx.clone(), decoded.id);
        let finished = finished.clone();
        requests.spawn(async move {
            let out = match service.handle(&id, request, &conn).await {
                Ok(a) => Outgoing { line: protocol::response(&id, a.result), hold: a.hold },
                Err(e) => protocol::error_response(&id, &e).into(),
            };
            let _ = tx.send(out).await;
            drop(permit);
            finished.notify_one();
        });
    }
    requests.close();
    if shared.shutdown.is_cancelled() {
        // Give what is running a grace period, then fail it.
        if tokio::time::timeout(shared.config.shutdown_grace.0, requests.wait()).await.is_err() {
            gone.cancel();
        }
    }
    requests.wait().await;
    drop(conn);
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_capped() {
        let data = b"abc\ndefghij\nxy".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line, 5).await.unwrap(), Line::Done);
        assert_eq!(line, b"abc");
        line.clear();
        assert_eq!(read_line(&mut r, &mut line, 5).await.unwrap(), Line::TooLong);
    }

    #[tokio::test]
    async fn a_line_survives_a_cancelled_read() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut r = BufReader::new(server);
        let mut line = Vec::new();
        client.write_all(b"{\"half\":").await.unwrap();
        // The read is dropped mid-line, as select! does when another branch wins.
        let cut = tokio::time::timeout(Duration::from_millis(50), read_line(&mut r, &mut line, 1024)).await;
        assert!(cut.is_err(), "no whole line yet");
        client.write_all(b"1}\n").await.unwrap();
        assert_eq!(read_line(&mut r, &mut line, 1024).await.unwrap(), Line::Done);
        assert_eq!(line, b"{\"half\":1}");
    }

    #[test]
    fn gate_table() {
        let g = Gate { daemon_uid: 1000, allowed_uids: vec![2000], group: Some(3000) };
        let rows: &[(u32, u32, &[u32], bool)] = &[
            (0, 0, &[], true),
            (1000, 5, &[], true),
            (2000, 5, &[], true),
            (4000, 3000, &[], true),
            (4000, 5, &[3000], true),
            (4000, 5, &[7, 8], false),
            (4000, 5, &[], false),
        ];
        for (uid, gid, groups, ok) in rows {
            let peer = Peer { uid: *uid, gid: *gid, pid: None, groups: groups.to_vec() };
            assert_eq!(g.allows(&peer), *ok, "{peer:?}");
        }
    }

    #[test]
    fn peer_groups_are_the_connecting_processs_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut want: Vec<u32> = vec![0; 256];
        // SAFETY: getgroups writes at most 256 entries into a buffer of 256.
        let n = unsafe { libc::getgroups(256, want.as_mut_ptr()) };
        want.truncate(n as usize);
        let mut got = peer_groups(a.as_raw_fd()).unwrap();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn many_peer_groups_grow_the_buffer() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: many_peer_groups_grow_the_buffer needs root to set a thread's groups");
            return;
        }
        let want: Vec<libc::gid_t> = (5000..5100).collect();
        let got = std::thread::spawn(move || {
            // The raw syscall changes this thread's groups only (libc's wrapper changes all).
            // SAFETY: `want` holds `want.len()` gids.
            let rc = unsafe { libc::syscall(libc::SYS_setgroups, want.len(), want.as_ptr()) };
            assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
            let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
            peer_groups(a.as_raw_fd()).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, (5000..5100).collect::<Vec<u32>>());
    }

    #[test]
    fn non_sockets_are_named_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (p, what) in [(file.clone(), "a regular file"), (dir.path().to_path_buf(), "a directory")] {
            let e = rt.block_on(stale_socket(&p)).unwrap_err();
            assert!(matches!(e, BindError::NotASocket { what: w, .. } if w == what), "{e}");
        }
        assert!(!rt.block_on(stale_socket(&dir.path().join("none"))).unwrap());
    }
}
