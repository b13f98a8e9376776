//! Background processes (`Spawn`, `ProcList`, `ProcOutput`, `ProcWait`, `ProcKill`,
//! `ProcInput`): the agent's one table of them, shared by every connection (closing the
//! connection that spawned one leaves it running), and one pump thread per process.
//!
//! A process is launched like a command (the same shims, through `command::launch`, so
//! `init` reaps and routes its shim, forwards signals to its tree and kills it on the way
//! out). Its pump reads stdout and stderr continuously, with no window, into one ring per
//! stream that keeps the newest `keep` bytes and counts them all (offsets are bytes since
//! the start); it writes the stdin that `ProcInput` queues; and it answers the calls that
//! wait on the process (output past given offsets, the end, a kill's grace) as things
//! happen. The entry points here run on a connection's reader thread and never block:
//! they answer at once or leave a waiter for the pump.
//!
//! A process has ended once its main process exited and its pipes are drained (closed, or
//! `command::DRAIN` after the exit, as for commands); what it left behind is then left
//! alone, as a command's is — unless it was being killed, in which case the rest of its
//! tree is killed too. Numbers are 1, 2, 3, ... and never reused while the run directory
//! lives: the next one is kept in `processes.next` beside the agent's socket. At most
//! `MAX_RUNNING` run at once; ended ones stay (status, output) up to `MAX_ENDED`, the one
//! that ended first dropped first.

use std::cmp::min;
use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_wire::{FailReason, Frame, ProcInfo, RefusedKind, Start, MAX_CHUNK};

use crate::command::{self, BaseEnv, Fds, Handle, Msg, DRAIN};
use crate::conn::Reply;
use crate::ctl::{FromShim, ToShim};
use crate::sys;

/// Background processes running (or starting) at once, at most.
pub const MAX_RUNNING: usize = 64;
/// Ended background processes kept, at most.
pub const MAX_ENDED: usize = 64;
/// The largest `keep` a spawn may ask for (bytes of each stream): with the limits on
/// processes, what all rings may ever hold is bounded (128 × 2 × 16 MiB at worst).
pub const MAX_KEEP: u32 = 16 << 20;
/// `ProcInfo.argv` is cut to about this many bytes as encoded (so that a `Procs` of every
/// process kept stays far below `MAX_FRAME`).
const ARGV_SHOWN: usize = 4096;
/// Calls waiting on one process at once, at most.
const MAX_WAITERS: usize = 256;
/// Stdin bytes queued for a process and not yet taken by it, at most.
const MAX_STDIN_QUEUED: usize = 8 << 20;
/// The file, beside the socket, that holds the next process number.
const NEXT_FILE: &str = "processes.next";

#[derive(Default)]
struct Table {
    procs: BTreeMap<u32, Arc<Proc>>,
    running: usize,
    /// Spawns not yet started nor failed: they count as running.
    starting: usize,
    /// Numbers of the ended processes kept, in the order they ended.
    ended: VecDeque<u32>,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Default::default);

fn table() -> MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

struct Numbers {
    next: u32,
    file: Option<PathBuf>,
}

static NUMBERS: Mutex<Numbers> = Mutex::new(Numbers { next: 1, file: None });

fn numbers() -> MutexGuard<'static, Numbers> {
    NUMBERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the next number is kept: beside `socket`. Reads the number kept there by an
/// earlier agent, if any. Call once, before serving.
pub fn set_run_dir(socket: &Path) {
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = dir.join(NEXT_FILE);
    let kept = fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u32>().ok());
    let mut n = numbers();
    n.next = n.next.max(kept.unwrap_or(1)).max(1);
    n.file = Some(file);
}

/// The next number; the one after it is kept on disk (through a temporary file and a
/// rename). If it cannot be written, counting goes on in memory.
fn next_number() -> u32 {
    let mut n = numbers();
    let num = n.next;
    n.next = n.next.saturating_add(1);
    if let Some(file) = &n.file {
        let mut tmp = file.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        if fs::write(&tmp, format!("{}\n", n.next)).and_then(|()| fs::rename(&tmp, file)).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }
    num
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The newest `keep` bytes of a stream, and how many bytes it ever had.
struct Ring {
    buf: VecDeque<u8>,
    keep: usize,
    total: u64,
}

impl Ring {
    fn new(keep: usize) -> Ring {
        Ring { buf: VecDeque::new(), keep, total: 0 }
    }

    fn push(&mut self, d: &[u8]) {
        self.total += d.len() as u64;
        if self.buf.capacity() == 0 && !d.is_empty() {
            // Exactly `keep`, once: grown by doubling it would end near twice that. The
            // pages are touched only as output fills them.
            self.buf.reserve_exact(self.keep);
        }
        if d.len() >= self.keep {
            self.buf.clear();
            self.buf.extend(&d[d.len() - self.keep..]);
            return;
        }
        let over = (self.buf.len() + d.len()).saturating_sub(self.keep);
        self.buf.drain(..over);
        self.buf.extend(d);
    }

    /// Up to `limit` bytes from `offset` (at most `total`), or from the oldest byte kept
    /// if that is later: where they start, the bytes, and how many were skipped.
    fn read(&self, offset: u64, limit: usize) -> (u64, Vec<u8>, u64) {
        let oldest = self.total - self.buf.len() as u64;
        let start = offset.clamp(oldest, self.total);
        let from = (start - oldest) as usize;
        let to = from + min(limit, self.buf.len() - from);
        let (a, b) = self.buf.as_slices();
        let mut data = Vec::with_capacity(to - from);
        if from < a.len() {
            data.extend_from_slice(&a[from..min(to, a.len())]);
        }
        if to > a.len() {
            data.extend_from_slice(&b[from.saturating_sub(a.len())..to - a.len()]);
        }
        (start, data, start - offset.min(start))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stdin {
    /// Spawned without stdin (it reads /dev/null).
    Never,
    Open,
    /// Closed by a `ProcInput` with `close`, or by the process (its reading end is gone).
    Closed,
}

/// A call waiting on a process, answered by its pump.
struct Waiter {
    reply: Reply,
    deadline: Option<Instant>,
    what: Wait,
}

enum Wait {
    /// `ProcOutput` with `wait_ms`: answered once there is output past the offsets, at the
    /// end, or at the deadline.
    Output { offsets: [u64; 2], limit: usize },
    /// `ProcWait`, and a kill: answered at the end (or, with the process still running, at
    /// the deadline).
    End,
    /// A kill with a grace: the deadline is when the tree is killed if still there. The
    /// pump takes the deadline for itself and turns this into `End` without one.
    Grace,
}

struct State {
    streams: [Ring; 2],
    /// Exit code, signal, and when it ended; set once it ended and its pipes are drained.
    end: Option<(i32, i32, u64)>,
    stdin: Stdin,
    stdin_queued: usize,
    waiters: Vec<Waiter>,
}

struct Proc {
    num: u32,
    pid: u32,
    /// As shown, cut to `ARGV_SHOWN`.
    argv: Vec<Vec<u8>>,
    started_ms: u64,
    handle: Handle,
    state: Mutex<State>,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, st: &State) -> ProcInfo {
        let (running, code, signal, ended_ms) = match st.end {
            Some((code, signal, at)) => (false, code, signal, at),
            None => (true, 0, 0, 0),
        };
        ProcInfo {
            proc: self.num,
            pid: self.pid,
            argv: self.argv.clone(),
            running,
            code,
            signal,
            started_ms: self.started_ms,
            ended_ms,
        }
    }

    fn procs_frame(&self, id: u32, st: &State) -> Frame {
        Frame::Procs { id, procs: vec![self.info(st)] }
    }

    fn output_frame(&self, id: u32, st: &State, offsets: [u64; 2], limit: usize) -> Frame {
        let (stdout_offset, stdout, d1) = st.streams[0].read(offsets[0], limit);
        let (stderr_offset, stderr, d2) = st.streams[1].read(offsets[1], limit);
        Frame::ProcData { id, info: self.info(st), stdout_offset, stdout, stderr_offset, stderr, dropped: d1 + d2 }
    }

    /// Leaves a waiter for the pump, or refuses the call if too many wait already.
    fn add_waiter(&self, mut st: MutexGuard<'_, State>, w: Waiter) -> bool {
        if st.waiters.len() >= MAX_WAITERS {
            // Waiters whose connection is gone go first.
            st.waiters.retain(|w| matches!(w.what, Wait::Grace) || !w.reply.gone());
        }
        if st.waiters.len() >= MAX_WAITERS {
            let message = format!("{MAX_WAITERS} calls are already waiting on background process {}", self.num);
            w.reply.refuse(RefusedKind::Busy, message);
            return false;
        }
        st.waiters.push(w);
        drop(st);
        self.handle.wake();
        true
    }
}

fn has_new(st: &State, offsets: [u64; 2]) -> bool {
    st.streams[0].total > offsets[0] || st.streams[1].total > offsets[1]
}

fn deadline(ms: u32) -> Option<Instant> {
    Instant::now().checked_add(Duration::from_millis(ms.into()))
}

/// The process numbered `num`, or a refusal saying there is none.
fn find(reply: &Reply, num: u32) -> Option<Arc<Proc>> {
    let p = table().procs.get(&num).cloned();
    if p.is_none() {
        reply.refuse(RefusedKind::NotFound, format!("no background process {num}"));
    }
    p
}

/// `argv` cut to about `ARGV_SHOWN` bytes as encoded (each argument costs its length
/// and 4), for display.
fn shown(argv: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut left = ARGV_SHOWN;
    let mut out = Vec::new();
    for a in argv {
        if left <= 4 {
            break;
        }
        let take = a.len().min(left - 4);
        out.push(a[..take].to_vec());
        left -= take + 4;
    }
    out
}

/// `Spawn`: reserves a place (or refuses: too many running), then starts the process on
/// a thread of its own, which answers once it knows it started (`Procs`) or not
/// (`Failed`), and then becomes its pump.
pub fn spawn(start: Start, keep: u32, env: BaseEnv, reply: Reply) {
    if keep > MAX_KEEP {
        let message = format!("keep {keep} is more than the {MAX_KEEP} bytes a background process may keep");
        return reply.refuse(RefusedKind::Invalid, message);
    }
    {
        let mut t = table();
        if t.running + t.starting >= MAX_RUNNING {
            let message = format!("{MAX_RUNNING} background processes are running, the most there may be at once");
            return reply.refuse(RefusedKind::Busy, message);
        }
        t.starting += 1;
    }
    let r = reply.clone();
    let started = thread::Builder::new().name(format!("proc-{}", reply.id())).spawn(move || {
        if let Some(pump) = launch(&start, keep, &env, &r) {
            pump.run();
        }
    });
    if let Err(e) = started {
        table().starting -= 1;
        let message = format!("cannot start a thread for the process: {e}");
        reply.send(Frame::Failed { id: reply.id(), reason: FailReason::Other, message });
    }
}

/// Starts the process and puts it in the table: its pump, or `None` once `Failed` is
/// sent.
fn launch(start: &Start, keep: u32, env: &BaseEnv, reply: &Reply) -> Option<Pump> {
    let launched = Handle::new()
        .map_err(|e| (FailReason::Other, format!("eventfd: {e}")))
        .and_then(|(handle, rx)| Ok((command::launch(start, env, &handle)?, handle, rx)))
        .and_then(|(fds, handle, rx)| {
            let mut early = Vec::new();
            let pid = started(&fds, &handle, &rx, &mut early)?;
            Ok((fds, handle, rx, pid, early))
        });
    let (fds, handle, rx, pid, early) = match launched {
        Ok(l) => l,
        Err((reason, message)) => {
            table().starting -= 1;
            reply.send(Frame::Failed { id: reply.id(), reason, message });
            return None;
        }
    };
    let keep = keep as usize;
    let state = State {
        streams: [Ring::new(keep), Ring::new(keep)],
        end: None,
        stdin: if fds.stdin.is_some() { Stdin::Open } else { Stdin::Never },
        stdin_queued: 0,
        waiters: Vec::new(),
    };
    let proc = Arc::new(Proc {
        num: next_number(),
        pid: pid as u32,
        argv: shown(&start.argv),
        started_ms: now_ms(),
        handle: handle.clone(),
        state: Mutex::new(state),
    });
    {
        let mut t = table();
        t.starting -= 1;
        t.running += 1;
        t.procs.insert(proc.num, proc.clone());
    }
    reply.send(proc.procs_frame(reply.id(), &proc.lock()));
    let mut pump = Pump::new(proc, rx, handle.waker(), fds);
    for m in early {
        pump.handle(m);
    }
    Some(pump)
}

/// Waits (blocking: on the spawning thread) for the shim to say the command runs: its
/// pid, or why it did not start. Messages for the pump that come meanwhile are kept.
fn started(fds: &Fds, h: &Handle, rx: &Receiver<Msg>, early: &mut Vec<Msg>) -> Result<i32, (FailReason, String)> {
    let wake = h.waker();
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = [sys::pollfd(wake.as_raw_fd(), libc::POLLIN), sys::pollfd(fds.ctl.as_raw_fd(), libc::POLLIN)];
        if sys::poll(&mut pfd, None).is_err() {
            continue;
        }
        if pfd[0].revents != 0 {
            sys::eventfd_drain(&wake);
            early.extend(rx.try_iter());
        }
        if pfd[1].revents == 0 {
            continue;
        }
        match sys::recv(fds.ctl.as_raw_fd(), &mut buf) {
            Ok(n) if n > 0 => match FromShim::decode(&buf[..n]) {
                Some(FromShim::Started { pid }) => return Ok(pid),
                Some(FromShim::Failed(reason, message)) => return Err((reason, message)),
                Some(FromShim::Exited { .. }) | None => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return Err((FailReason::Other, "the shim died before it started the command".into())),
        }
    }
}

/// `ProcList`.
pub fn list(reply: &Reply) {
    let all: Vec<Arc<Proc>> = table().procs.values().cloned().collect();
    let procs = all.iter().map(|p| p.info(&p.lock())).collect();
    reply.send(Frame::Procs { id: reply.id(), procs });
}

/// `ProcOutput`.
pub fn output(reply: &Reply, num: u32, offsets: [u64; 2], limit: u32, wait_ms: u32) {
    let Some(p) = find(reply, num) else { return };
    let st = p.lock();
    for (i, name) in ["stdout", "stderr"].into_iter().enumerate() {
        let total = st.streams[i].total;
        if offsets[i] > total {
            let message = format!(
                "{name} offset {} is past the end of background process {num}'s {name} ({total} bytes so far)",
                offsets[i]
            );
            return reply.refuse(RefusedKind::Invalid, message);
        }
    }
    let limit = limit as usize;
    if wait_ms == 0 || st.end.is_some() || has_new(&st, offsets) {
        return reply.send(p.output_frame(reply.id(), &st, offsets, limit));
    }
    let w = Waiter { reply: reply.clone(), deadline: deadline(wait_ms), what: Wait::Output { offsets, limit } };
    p.add_waiter(st, w);
}

/// `ProcWait`.
pub fn wait(reply: &Reply, num: u32, timeout_ms: u32) {
    let Some(p) = find(reply, num) else { return };
    let st = p.lock();
    if timeout_ms == 0 || st.end.is_some() {
        return reply.send(p.procs_frame(reply.id(), &st));
    }
    p.add_waiter(st, Waiter { reply: reply.clone(), deadline: deadline(timeout_ms), what: Wait::End });
}

/// `ProcKill`.
pub fn kill(reply: &Reply, num: u32, signal: i32, grace_ms: u32) {
    let Some(p) = find(reply, num) else { return };
    if !(1..=64).contains(&signal) {
        let message = format!("signal {signal} for background process {num} is not a signal (1 to 64)");
        return reply.refuse(RefusedKind::Invalid, message);
    }
    let st = p.lock();
    if st.end.is_some() {
        return reply.send(p.procs_frame(reply.id(), &st));
    }
    match signal {
        libc::SIGKILL => {
            if p.add_waiter(st, Waiter { reply: reply.clone(), deadline: None, what: Wait::End }) {
                p.handle.send(Msg::Kill);
            }
        }
        libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP => {
            let w = Waiter {
                reply: reply.clone(),
                deadline: Some(deadline(grace_ms).unwrap_or_else(far)),
                what: Wait::Grace,
            };
            if p.add_waiter(st, w) {
                p.handle.send(Msg::Signal(signal));
            }
        }
        _ => {
            let frame = p.procs_frame(reply.id(), &st);
            drop(st);
            p.handle.send(Msg::Signal(signal));
            reply.send(frame);
        }
    }
}

/// An instant far enough ahead to stand for "never".
fn far() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// `ProcInput`.
pub fn input(reply: &Reply, num: u32, data: Vec<u8>, close: bool) {
    let Some(p) = find(reply, num) else { return };
    let mut st = p.lock();
    let wrong = |why: String| reply.refuse(RefusedKind::WrongKind, why);
    if st.end.is_some() {
        return wrong(format!("background process {num} has ended: its stdin is closed"));
    }
    match st.stdin {
        Stdin::Never => return wrong(format!("background process {num} was not started with stdin")),
        Stdin::Closed => return wrong(format!("the stdin of background process {num} is closed")),
        Stdin::Open => {}
    }
    if st.stdin_queued + data.len() > MAX_STDIN_QUEUED {
        let message = format!(
            "background process {num} has not yet read {} bytes of its stdin (at most {MAX_STDIN_QUEUED} may wait)",
            st.stdin_queued
        );
        return reply.refuse(RefusedKind::Busy, message);
    }
    st.stdin_queued += data.len();
    if close {
        st.stdin = Stdin::Closed;
    }
    // Under the state's lock, so that inputs reach the pump in the order they were taken.
    if !data.is_empty() {
        p.handle.send(Msg::Stdin(data));
    }
    if close {
        p.handle.send(Msg::StdinEnd);
    }
    drop(st);
    reply.send(Frame::Done { id: reply.id(), size: 0 });
}

/// One background process's pump: moves its bytes, relays kills and signals to its shim,
/// answers its waiters, and, once it ended, records the end.
struct Pump {
    p: Arc<Proc>,
    rx: Receiver<Msg>,
    wake: Arc<OwnedFd>,
    streams: [Option<OwnedFd>; 2],
    stdin: Option<OwnedFd>,
    stdin_buf: VecDeque<u8>,
    stdin_end: bool,
    ctl: Option<OwnedFd>,
    shim: sys::pid_t,
    exit: Option<(i32, i32)>,
    exited_at: Option<Instant>,
    shim_status: Option<libc::c_int>,
    /// Being killed: the tree is killed at `kill_at`, or as soon as the main process
    /// exited, whichever comes first.
    kill_at: Option<Instant>,
    kill_sent: bool,
    scratch: Vec<u8>,
}

impl Pump {
    fn new(p: Arc<Proc>, rx: Receiver<Msg>, wake: Arc<OwnedFd>, fds: Fds) -> Pump {
        Pump {
            p,
            rx,
            wake,
            streams: [Some(fds.stdout), Some(fds.stderr)],
            stdin: fds.stdin,
            stdin_buf: VecDeque::new(),
            stdin_end: false,
            ctl: Some(fds.ctl),
            shim: fds.shim,
            exit: None,
            exited_at: None,
            shim_status: None,
            kill_at: None,
            kill_sent: false,
            scratch: vec![0u8; MAX_CHUNK],
        }
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            if self.exit.is_none() && self.ctl.is_none() {
                // The shim died without reporting: its own status is all there is.
                self.exit = self.shim_status.map(sys::decode_status);
            }
            if self.exit.is_some() && self.exited_at.is_none() {
                self.exited_at = Some(now);
            }
            let mut next = self.sweep(now);
            if let Some(at) = self.kill_at.filter(|_| !self.kill_sent) {
                if self.exit.is_some() || at <= now {
                    self.tell(ToShim::Kill);
                    self.kill_sent = true;
                } else {
                    next = earliest(next, Some(at));
                }
            }
            if let Some(at) = self.exited_at {
                let drained = self.streams.iter().all(Option::is_none);
                if drained || now >= at + DRAIN {
                    break;
                }
                next = earliest(next, Some(at + DRAIN));
            }
            self.wait(next.map(|d| d.saturating_duration_since(now)));
        }
        self.finish();
    }

    /// Records the end, answers every waiter, and lets the shim go (or has it kill what is
    /// left of the tree, if the process was being killed). The table counts it as ended
    /// before anyone hears of the end, so that a spawn that follows a kill's answer finds
    /// its place free.
    fn finish(mut self) {
        let (code, signal) = self.exit.unwrap_or((0, libc::SIGKILL));
        self.tell(if self.kill_at.is_some() { ToShim::Kill } else { ToShim::Release });
        {
            let mut t = table();
            t.running -= 1;
            t.ended.push_back(self.p.num);
            while t.ended.len() > MAX_ENDED {
                if let Some(old) = t.ended.pop_front() {
                    t.procs.remove(&old);
                }
            }
        }
        let mut st = self.p.lock();
        st.end = Some((code, signal, now_ms()));
        st.stdin_queued = 0;
        for w in std::mem::take(&mut st.waiters) {
            let f = match w.what {
                Wait::Output { offsets, limit } => self.p.output_frame(w.reply.id(), &st, offsets, limit),
                Wait::End | Wait::Grace => self.p.procs_frame(w.reply.id(), &st),
            };
            w.reply.send(f);
        }
    }

    /// Answers the waiters that can be answered now; the earliest deadline of the rest.
    fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut st = self.p.lock();
        if st.waiters.is_empty() {
            return None;
        }
        let mut next = None;
        let mut kept = Vec::with_capacity(st.waiters.len());
        for mut w in std::mem::take(&mut st.waiters) {
            if let Wait::Grace = w.what {
                self.kill_at = earliest(self.kill_at, w.deadline);
                w = Waiter { reply: w.reply, deadline: None, what: Wait::End };
            }
            if w.reply.gone() {
                continue;
            }
            let due = w.deadline.is_some_and(|d| d <= now);
            let frame = match w.what {
                Wait::Output { offsets, limit } if due || has_new(&st, offsets) => {
                    Some(self.p.output_frame(w.reply.id(), &st, offsets, limit))
                }
                Wait::End if due => Some(self.p.procs_frame(w.reply.id(), &st)),
                _ => None,
            };
            match frame {
                Some(f) => w.reply.send(f),
                None => {
                    next = earliest(next, w.deadline);
                    kept.push(w);
                }
            }
        }
        st.waiters = kept;
        next
    }

    fn tell(&mut self, m: ToShim) {
        if let Some(ctl) = &self.ctl {
            let _ = sys::send(ctl.as_raw_fd(), &m.encode());
        }
    }

    /// One round: poll whatever can move now, then move it.
    fn wait(&mut self, timeout: Option<Duration>) {
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        let writing = !self.stdin_buf.is_empty();
        let mut fds = [
            sys::pollfd(self.wake.as_raw_fd(), libc::POLLIN),
            sys::pollfd(raw(&self.ctl), libc::POLLIN),
            sys::pollfd(raw(&self.streams[0]), libc::POLLIN),
            sys::pollfd(raw(&self.streams[1]), libc::POLLIN),
            sys::pollfd(if writing { raw(&self.stdin) } else { -1 }, libc::POLLOUT),
        ];
        if sys::poll(&mut fds, timeout).is_err() {
            return;
        }
        if fds[0].revents != 0 {
            sys::eventfd_drain(&self.wake);
            while let Ok(m) = self.rx.try_recv() {
                self.handle(m);
            }
        }
        if fds[1].revents != 0 {
            self.read_ctl();
        }
        for i in 0..2 {
            if fds[2 + i].revents != 0 {
                self.read_output(i);
            }
        }
        if fds[4].revents != 0 {
            self.flush_stdin();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Stdin(data) => {
                if self.stdin.is_some() {
                    self.stdin_buf.extend(data);
                }
            }
            Msg::StdinEnd => self.stdin_end = true,
            Msg::Ack(_) => {}
            Msg::Kill => self.kill_at = Some(Instant::now()),
            Msg::Signal(sig) => self.tell(ToShim::Signal(sig)),
            Msg::ShimExited(pid, status) if pid == self.shim => self.shim_status = Some(status),
            // An idle shim that died before it could be given this process.
            Msg::ShimExited(..) => {}
        }
        self.flush_stdin();
    }

    fn read_ctl(&mut self) {
        let Some(ctl) = &self.ctl else { return };
        let mut buf = [0u8; 4096];
        match sys::recv(ctl.as_raw_fd(), &mut buf) {
            Ok(0) => self.ctl = None,
            Ok(n) => {
                if let Some(FromShim::Exited { code, signal }) = FromShim::decode(&buf[..n]) {
                    self.exit = Some((code, signal));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.ctl = None,
        }
    }

    fn read_output(&mut self, i: usize) {
        let Some(fd) = &self.streams[i] else { return };
        match sys::read(fd.as_raw_fd(), &mut self.scratch) {
            Ok(0) => self.streams[i] = None,
            Ok(n) => self.p.lock().streams[i].push(&self.scratch[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.streams[i] = None,
        }
    }

    /// Writes queued stdin as far as the pipe takes it; closes it after `StdinEnd`.
    fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf = VecDeque::new();
            return;
        };
        let mut written = 0;
        let mut broken = false;
        while !self.stdin_buf.is_empty() {
            let (chunk, _) = self.stdin_buf.as_slices();
            match sys::write(fd.as_raw_fd(), chunk) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                    written += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The process closed its stdin: what it did not read is dropped.
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        if written > 0 || broken {
            let mut st = self.p.lock();
            st.stdin_queued = st.stdin_queued.saturating_sub(written);
            if broken {
                st.stdin = Stdin::Closed;
                st.stdin_queued = 0;
            }
        }
        if broken || (self.stdin_buf.is_empty() && self.stdin_end) {
            self.stdin = None;
            self.stdin_buf = VecDeque::new();
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest_bytes_and_counts_all() {
        let mut r = Ring::new(10);
        r.push(b"0123456");
        assert_eq!(r.read(0, 100), (0, b"0123456".to_vec(), 0));
        r.push(b"789abc");
        // 13 bytes in all, the newest 10 kept: 3 dropped.
        assert_eq!(r.total, 13);
        assert_eq!(r.read(0, 100), (3, b"3456789abc".to_vec(), 3));
        assert_eq!(r.read(5, 3), (5, b"567".to_vec(), 0));
        assert_eq!(r.read(13, 3), (13, vec![], 0));
        r.push(&[b'x'; 25]);
        assert_eq!(r.read(13, 100), (28, vec![b'x'; 10], 15));
        let mut none = Ring::new(0);
        none.push(b"abc");
        assert_eq!(none.read(1, 10), (3, vec![], 2));
    }

    #[test]
    fn a_ring_reads_across_its_wrap() {
        let mut r = Ring::new(8);
        for chunk in [&b"abcde"[..], b"fgh", b"ij", b"klm"] {
            r.push(chunk);
        }
        let all = b"abcdefghijklm";
        for off in 5..=13u64 {
            for limit in 0..10 {
                let (start, data, dropped) = r.read(off, limit);
                assert_eq!((start, dropped), (off, 0));
                let end = (off as usize + limit).min(13);
                assert_eq!(data, &all[off as usize..end], "offset {off} limit {limit}");
            }
        }
    }

    #[test]
    fn argv_is_cut_for_display() {
        let argv = vec![vec![b'a'; 3000], vec![b'b'; 3000], vec![b'c'; 10]];
        let s = shown(&argv);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].len(), 3000);
        assert_eq!(s[1].len(), ARGV_SHOWN - 3004 - 4);
        assert_eq!(shown(&[b"ls".to_vec(), b"-l".to_vec()]), vec![b"ls".to_vec(), b"-l".to_vec()]);
        // Many empty arguments are cut too: each costs its length prefix.
        assert_eq!(shown(&vec![Vec::new(); 100_000]).len(), ARGV_SHOWN / 4 - 1);
    }

    #[test]
    fn a_ring_holds_exactly_keep_however_its_output_arrives() {
        let keep = 1 << 20;
        let mut r = Ring::new(keep);
        for i in 0..2000u32 {
            r.push(&[i as u8; 4000]);
        }
        assert!(r.buf.capacity() < keep + keep / 8, "capacity {} for keep {keep}", r.buf.capacity());
        assert_eq!((r.buf.len(), r.total), (keep, 8_000_000));
        let (start, data, skipped) = r.read(0, 10);
        assert_eq!((start, data.len(), skipped), (8_000_000 - keep as u64, 10, 8_000_000 - keep as u64));
    }
}
