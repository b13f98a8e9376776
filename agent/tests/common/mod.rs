//! Test harness: starts the real `berth-agent` binary on a socket in a fresh temporary
//! directory, speaks the wire protocol to it, and looks at processes through `/proc`.
//! Dropping an `Agent` kills every process under it, so a failing test leaves nothing.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use berth_wire::{read_frame, write_frame, FailReason, Frame, ProcInfo, RefusedKind, Start, Stream, VERSION};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("berth-agent-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The binary under test: this build's, or `BERTH_AGENT_BIN` (say, the static release
/// build) when set.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("BERTH_AGENT_BIN").map_or_else(|| env!("CARGO_BIN_EXE_berth-agent").into(), PathBuf::from)
}

pub struct Agent {
    pub child: Child,
    pub dir: TempDir,
    pub sock: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Agent {
        Agent::start_as(None, env)
    }

    /// An agent running as `uid` (and the same gid), when given (the test must be root).
    pub fn start_as(uid: Option<u32>, env: &[(&str, &str)]) -> Agent {
        let dir = TempDir::new();
        let sock = dir.path().join("agent.sock");
        if uid.is_some() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        }
        let child = spawn_agent(&dir, &sock, env, uid);
        let agent = Agent { child, dir, sock };
        assert!(wait_until(Duration::from_secs(10), || agent.sock.exists()), "the agent never made its socket");
        agent
    }

    /// Stops the agent (SIGTERM: its processes go with it) and starts a new one on the
    /// same socket, in the same directory (as a restarted container would).
    pub fn restart(&mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        assert!(wait_until(Duration::from_secs(10), || self.child.try_wait().unwrap().is_some()));
        assert!(!self.sock.exists());
        self.child = spawn_agent(&self.dir, &self.sock, &[], None);
        assert!(wait_until(Duration::from_secs(10), || self.sock.exists()), "the agent never made its socket");
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn connect(&self) -> Client {
        let mut c = self.connect_raw();
        match c.recv() {
            Frame::Hello { version, pid } => {
                assert_eq!(version, VERSION);
                assert_eq!(pid, self.child.id());
            }
            other => panic!("expected hello, got {other:?}"),
        }
        c.send(&Frame::Hello { version: VERSION, pid: std::process::id() });
        c
    }

    pub fn connect_raw(&self) -> Client {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client { s }
    }

    /// What the agent wrote to its own stdout and stderr.
    pub fn own_output(&self) -> String {
        let out = fs::read_to_string(self.dir.path().join("agent.out")).unwrap();
        let err = fs::read_to_string(self.dir.path().join("agent.err")).unwrap();
        out + &err
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only while the agent is unreaped can its pid not have been reused.
        if matches!(self.child.try_wait(), Ok(None)) {
            // Processes that outlived their commands were adopted by the agent: kill them
            // while it is alive to reap them; then SIGTERM makes it kill every command's
            // tree and reap the shims before it exits.
            for (pid, _, ppid) in processes() {
                if ppid == self.pid() && comm(pid) != "berth-shim" {
                    kill_tree(pid);
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let _ = wait_until(Duration::from_secs(3), || !matches!(self.child.try_wait(), Ok(None)));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_tree(self.pid());
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn spawn_agent(dir: &TempDir, sock: &Path, env: &[(&str, &str)], uid: Option<u32>) -> Child {
    let log = |name: &str| fs::OpenOptions::new().create(true).append(true).open(dir.path().join(name)).unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--socket")
        .arg(sock)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log("agent.out"))
        .stderr(log("agent.err"));
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        // (std drops root's supplementary groups along with the uid.)
        cmd.uid(uid).gid(uid);
    }
    cmd.spawn().unwrap()
}

pub struct Client {
    pub s: UnixStream,
}

/// Ids for calls: unique in the whole test process, so unique on every connection.
static CALL_IDS: AtomicU32 = AtomicU32::new(1_000_000);

pub fn call_id() -> u32 {
    CALL_IDS.fetch_add(1, Ordering::SeqCst)
}

/// A command's collected output and its final frame.
#[derive(Debug)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub end: Frame,
}

impl Outcome {
    pub fn exited(&self) -> (i32, i32) {
        match self.end {
            Frame::Exited { code, signal, .. } => (code, signal),
            ref other => panic!("expected exited, got {other:?} after {:?}", String::from_utf8_lossy(&self.stderr)),
        }
    }
    pub fn failed(&self) -> FailReason {
        match self.end {
            Frame::Failed { reason, .. } => reason,
            ref other => panic!("expected failed, got {other:?}"),
        }
    }
}

pub fn start_frame(id: u32, argv: &[&str]) -> Start {
    Start {
        id,
        argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
        env: Vec::new(),
        workdir: b"/".to_vec(),
        stdin: false,
    }
}

impl Client {
    pub fn send(&mut self, f: &Frame) {
        write_frame(&mut self.s, f).unwrap();
        self.s.flush().unwrap();
    }

    pub fn recv(&mut self) -> Frame {
        read_frame(&mut self.s).unwrap().expect("the agent closed the connection")
    }

    /// The next frame, or `None` at end of stream.
    pub fn recv_or_eof(&mut self) -> Option<Frame> {
        read_frame(&mut self.s).ok().flatten()
    }

    pub fn start(&mut self, id: u32, argv: &[&str]) {
        self.send(&Frame::Start(start_frame(id, argv)));
    }

    /// Collects command `id`'s output (acking it at once) until its final frame.
    pub fn finish(&mut self, id: u32) -> Outcome {
        let mut o = Outcome { stdout: Vec::new(), stderr: Vec::new(), end: Frame::Ping { nonce: 0 } };
        loop {
            match self.recv() {
                Frame::Output { id: i, stream, data } if i == id => {
                    self.send(&Frame::Ack { id, bytes: data.len() as u32 });
                    match stream {
                        Stream::Stdout => o.stdout.extend(data),
                        Stream::Stderr => o.stderr.extend(data),
                    }
                }
                f @ (Frame::Exited { .. } | Frame::Failed { .. }) if f.id() == Some(id) => {
                    o.end = f;
                    return o;
                }
                other => panic!("unexpected frame while waiting for command {id}: {other:?}"),
            }
        }
    }

    pub fn run(&mut self, id: u32, argv: &[&str]) -> Outcome {
        self.start(id, argv);
        self.finish(id)
    }

    pub fn run_start(&mut self, s: Start) -> Outcome {
        let id = s.id;
        self.send(&Frame::Start(s));
        self.finish(id)
    }

    /// Sends a call and returns its answer; the entries of several `Entries` frames are
    /// joined into one.
    pub fn call(&mut self, f: Frame) -> Frame {
        let id = f.id().unwrap();
        self.send(&f);
        self.answer(id)
    }

    /// The answer to call `id` (which must be the next frames).
    pub fn answer(&mut self, id: u32) -> Frame {
        let mut all = Vec::new();
        loop {
            match self.recv() {
                Frame::Entries { id: i, entries, more } if i == id => {
                    all.extend(entries);
                    if !more {
                        return Frame::Entries { id, entries: all, more: false };
                    }
                }
                f if f.id() == Some(id) => return f,
                other => panic!("unexpected frame while waiting for call {id}: {other:?}"),
            }
        }
    }

    /// A call that must be refused: its kind and message.
    pub fn refused(&mut self, f: Frame) -> (RefusedKind, String) {
        let what = format!("{f:?}");
        match self.call(f) {
            Frame::Refused { kind, message, .. } => (kind, message),
            other => panic!("expected a refusal of {what:.200}, got {other:?}"),
        }
    }

    /// Spawns a background process; its info.
    pub fn spawn(&mut self, s: Start, keep: u32) -> ProcInfo {
        match self.call(Frame::Spawn { start: s, keep }) {
            Frame::Procs { mut procs, .. } if procs.len() == 1 => procs.remove(0),
            other => panic!("expected the spawned process, got {other:?}"),
        }
    }

    /// The one process a `ProcWait`, `ProcKill` (or `Spawn`) answers with.
    pub fn proc_call(&mut self, f: Frame) -> ProcInfo {
        match self.call(f) {
            Frame::Procs { mut procs, .. } if procs.len() == 1 => procs.remove(0),
            other => panic!("expected one process, got {other:?}"),
        }
    }

    pub fn proc_wait(&mut self, proc: u32, timeout_ms: u32) -> ProcInfo {
        self.proc_call(Frame::ProcWait { id: call_id(), proc, timeout_ms })
    }

    /// Everything of a background process's output still kept, once it ended.
    pub fn proc_output_all(&mut self, proc: u32) -> (Vec<u8>, Vec<u8>) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut offsets = [0, 0];
        loop {
            let f = Frame::ProcOutput {
                id: call_id(),
                proc,
                stdout_offset: offsets[0],
                stderr_offset: offsets[1],
                limit: berth_wire::MAX_DATA as u32,
                wait_ms: 0,
            };
            match self.call(f) {
                Frame::ProcData { info, stdout, stderr, stdout_offset, stderr_offset, .. } => {
                    let empty = stdout.is_empty() && stderr.is_empty();
                    offsets = [stdout_offset + stdout.len() as u64, stderr_offset + stderr.len() as u64];
                    out.extend(stdout);
                    err.extend(stderr);
                    if empty && !info.running {
                        return (out, err);
                    }
                    if empty {
                        self.proc_wait(proc, 10_000);
                    }
                }
                other => panic!("expected process data, got {other:?}"),
            }
        }
    }
}

/// Polls `cond` until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `(pid, state, ppid)` of every process.
pub fn processes() -> Vec<(i32, u8, i32)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let mut f = stat[close + 1..].split_whitespace();
        let (Some(state), Some(ppid)) = (f.next(), f.next()) else { continue };
        out.push((pid, state.as_bytes()[0], ppid.parse().unwrap_or(0)));
    }
    out
}

/// When `pid` started (field 22 of `/proc/PID/stat`, in clock ticks since boot): with the
/// pid, it names one process, whatever later reuses the pid. `None` once it is reaped.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    // Fields after the name start at field 3 (the state).
    stat[close + 1..].split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Live descendants of `root`.
pub fn descendants(root: i32) -> Vec<i32> {
    let procs = processes();
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(pid, state, ppid) in &procs {
            if ppid == p && !out.contains(&pid) {
                todo.push(pid);
                if state != b'Z' {
                    out.push(pid);
                }
            }
        }
    }
    out
}

/// Zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    processes().into_iter().filter(|&(_, s, pp)| pp == parent && s == b'Z').map(|(p, _, _)| p).collect()
}

pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_string()
}

pub fn alive(pid: i32) -> bool {
    processes().iter().any(|&(p, s, _)| p == pid && s != b'Z')
}

/// Pids of live processes whose command line is exactly `argv`, under `root`.
pub fn find_under(root: i32, argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    descendants(root).into_iter().filter(|p| fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want)).collect()
}

/// The agent's idle shims: those not yet given a command, which (unlike a shim that
/// was) have no signalfd open, but do have their control channel (descriptor 3). Once
/// things settle there is exactly one.
///
/// The channel matters: a shim whose command is over closes the channel and then its
/// signalfd (in that order, `Shim`'s fields) and exits, and an exiting process has no
/// descriptors left at all; for that moment, which a loaded machine stretches, it has no
/// signalfd either, and must not pass for the idle shim.
pub fn idle_shims(agent: i32) -> Vec<i32> {
    let idle = |p: i32| {
        let fd = format!("/proc/{p}/fd");
        let Ok(d) = fs::read_dir(&fd) else { return false };
        let launched =
            d.flatten().any(|e| fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("signalfd")));
        // Still open after the scan: the shim was not on its way out during the scan.
        !launched && fs::read_link(format!("{fd}/3")).is_ok()
    };
    let procs = processes();
    let shims = procs.iter().filter(|&&(p, s, pp)| pp == agent && s != b'Z' && comm(p) == "berth-shim");
    shims.map(|&(p, _, _)| p).filter(|&p| idle(p)).collect()
}

/// The agent's idle shim, once there is exactly one.
pub fn idle_shim(agent: i32) -> i32 {
    let mut idle = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            idle = idle_shims(agent);
            idle.len() == 1
        }),
        "no single idle shim: {idle:?}"
    );
    idle[0]
}

/// Signals pending for a process (`ShdPnd | SigPnd` of `/proc/PID/status`), as a mask.
pub fn pending_signals(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:")))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .fold(0, |a, b| a | b)
}

/// SIGKILLs every descendant of `root` until none is left.
pub fn kill_tree(root: i32) {
    for _ in 0..100 {
        let d = descendants(root);
        if d.is_empty() {
            return;
        }
        for p in d {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(5));
    }
}
