//! One command, agent side: hands it to the idle shim (or, when none is ready, to a
//! freshly spawned one) and then runs a pump thread that moves its bytes — stdin in,
//! stdout/stderr out as `Output` frames within the flow-control window — relays kills
//! and signals to the shim, and ends with exactly one `Exited` or `Failed`. The pump
//! never waits for a process itself: statuses come from the shim (or, if the shim dies,
//! from the reaper in `init`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use berth_wire::{FailReason, Frame, Start, Stream, MAX_CHUNK, WINDOW};

use crate::conn::{Out, Outbox};
use crate::ctl::{FromShim, Launch, ToShim};
use crate::init;
use crate::sys;

/// How long output is still read after the command's main process exited, for whatever
/// background processes it left holding its pipes.
pub(crate) const DRAIN: Duration = Duration::from_millis(200);

/// What the connection (or the reaper) tells a running command.
#[derive(Debug)]
pub enum Msg {
    Stdin(Vec<u8>),
    StdinEnd,
    Ack(u32),
    Kill,
    Signal(i32),
    /// The shim with this pid ended, with this raw wait status.
    ShimExited(sys::pid_t, libc::c_int),
}

/// The way to reach a command's pump; cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Msg>,
    wake: Arc<OwnedFd>,
}

impl Handle {
    /// A handle and the receiving end its pump reads.
    pub fn new() -> io::Result<(Handle, Receiver<Msg>)> {
        let (tx, rx) = mpsc::channel();
        Ok((Handle { tx, wake: Arc::new(sys::eventfd()?) }, rx))
    }

    pub fn send(&self, m: Msg) {
        if self.tx.send(m).is_ok() {
            sys::eventfd_signal(&self.wake);
        }
    }

    /// Wakes the pump without a message (it has something else to look at).
    pub fn wake(&self) {
        sys::eventfd_signal(&self.wake);
    }

    /// The eventfd the pump polls (and drains) to learn of messages.
    pub fn waker(&self) -> Arc<OwnedFd> {
        self.wake.clone()
    }
}

/// The container's environment, which every command starts from.
pub type BaseEnv = Arc<Vec<(OsString, OsString)>>;

/// Starts a command's pump (which first gives the command to a shim). `done` runs once the command is over,
/// just before its final frame is queued.
pub fn start(s: Start, env: BaseEnv, out: Outbox, done: Box<dyn FnOnce() + Send>) -> io::Result<Handle> {
    let (handle, rx) = Handle::new()?;
    let h = handle.clone();
    thread::Builder::new().name(format!("cmd-{}", s.id)).spawn(move || {
        let id = s.id;
        let last = match launch(&s, &env, &h) {
            Ok(fds) => Pump::new(id, rx, h.wake.clone(), out.clone(), fds).run(),
            Err((reason, message)) => Frame::Failed { id, reason, message },
        };
        done();
        let _ = out.send(Out::Frame(last.to_bytes()));
    })?;
    Ok(handle)
}

/// What the shim is to run for `s`: the environment is the agent's with `s.env` set over
/// it. Or why `s` cannot run.
fn launch_message(s: &Start, env: &[(OsString, OsString)]) -> Result<Launch, String> {
    if s.argv.is_empty() {
        return Err("empty command".into());
    }
    let workdir = sys::cstring(&s.workdir, "the working directory")?;
    let argv = s.argv.iter().map(|a| sys::cstring(a, "an argument")).collect::<Result<_, _>>()?;
    let mut merged: Vec<(&[u8], &[u8])> = env.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
    for (k, v) in &s.env {
        if k.is_empty() || k.contains(&b'=') {
            return Err(format!("bad environment variable name {:?}", String::from_utf8_lossy(k)));
        }
        match merged.iter_mut().find(|(mk, _)| *mk == k.as_slice()) {
            Some(slot) => slot.1 = v,
            None => merged.push((k, v)),
        }
    }
    let mut envp = Vec::with_capacity(merged.len());
    for (k, v) in merged {
        let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
        kv.extend_from_slice(k);
        kv.push(b'=');
        kv.extend_from_slice(v);
        envp.push(sys::cstring(&kv, "an environment variable")?);
    }
    Ok(Launch { workdir, argv, env: envp })
}

/// Creates the command's pipes and gives the command to a shim: the idle one if it is
/// alive to take it, else a fresh one. The shim is registered with `init` under `h`.
pub(crate) fn launch(s: &Start, env: &[(OsString, OsString)], h: &Handle) -> Result<Fds, (FailReason, String)> {
    let other = |m: String| (FailReason::Other, m);
    let io = |what: &'static str| move |e: io::Error| (FailReason::Other, format!("{what}: {e}"));
    let msg = launch_message(s, env).map_err(other)?;
    let (out_r, out_w) = sys::pipe().map_err(io("pipe"))?;
    let (err_r, err_w) = sys::pipe().map_err(io("pipe"))?;
    let (stdin_r, stdin_w) = if s.stdin {
        let (r, w) = sys::pipe().map_err(io("pipe"))?;
        (r, Some(w))
    } else {
        (sys::dev_null(false).map_err(io("/dev/null"))?, None)
    };
    let fds = [stdin_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    let idle = init::take_idle(h).and_then(|(pid, ctl)| match msg.send(ctl.as_raw_fd(), fds) {
        Ok(()) => Some((pid, ctl)),
        Err(_) => {
            init::give_up(pid);
            None
        }
    });
    let (shim, ctl) = match idle {
        Some(taken) => taken,
        None => {
            let (pid, ctl) = init::spawn_shim(h).map_err(io("cannot start the shim"))?;
            msg.send(ctl.as_raw_fd(), fds).map_err(io("cannot start the shim"))?;
            (pid, ctl)
        }
    };
    drop((stdin_r, out_w, err_w));
    for fd in [Some(&out_r), Some(&err_r), Some(&ctl), stdin_w.as_ref()].into_iter().flatten() {
        sys::set_nonblocking(fd).map_err(io("fcntl"))?;
    }
    Ok(Fds { stdout: out_r, stderr: err_r, stdin: stdin_w, ctl, shim })
}

/// The agent's ends of a running command's pipes and control channel (all
/// non-blocking).
pub(crate) struct Fds {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub ctl: OwnedFd,
    pub shim: sys::pid_t,
}

struct Pump {
    id: u32,
    rx: Receiver<Msg>,
    wake: Arc<OwnedFd>,
    out: Outbox,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdin_buf: Vec<u8>,
    stdin_end: bool,
    ctl: Option<OwnedFd>,
    shim: sys::pid_t,
    unacked: u32,
    exit: Option<(i32, i32)>,
    failed: Option<(FailReason, String)>,
    shim_status: Option<libc::c_int>,
    killed: bool,
    scratch: Option<Vec<u8>>,
}

impl Pump {
    fn new(id: u32, rx: Receiver<Msg>, wake: Arc<OwnedFd>, out: Outbox, fds: Fds) -> Pump {
        Pump {
            id,
            rx,
            wake,
            out,
            stdout: Some(fds.stdout),
            stderr: Some(fds.stderr),
            stdin: fds.stdin,
            stdin_buf: Vec::new(),
            stdin_end: false,
            ctl: Some(fds.ctl),
            shim: fds.shim,
            unacked: 0,
            exit: None,
            failed: None,
            shim_status: None,
            killed: false,
            scratch: None,
        }
    }

    /// Pumps until the command is over; returns its final frame.
    fn run(mut self) -> Frame {
        let id = self.id;
        let mut drain_left = DRAIN;
        let mut last = Instant::now();
        let frame = loop {
            if let Some((reason, message)) = self.failed.take() {
                break Frame::Failed { id, reason, message };
            }
            if self.exit.is_none() && self.ctl.is_none() {
                // The shim died without reporting: its own status is all there is.
                self.exit = self.shim_status.map(sys::decode_status);
            }
            let counting = self.room() > 0 || self.killed;
            if let Some((code, signal)) = self.exit {
                let now = Instant::now();
                if counting {
                    drain_left = drain_left.saturating_sub(now - last);
                }
                last = now;
                if (self.stdout.is_none() && self.stderr.is_none()) || drain_left.is_zero() {
                    break Frame::Exited { id, code, signal };
                }
            } else {
                last = Instant::now();
            }
            let timeout = (self.exit.is_some() && counting).then_some(drain_left);
            self.wait(timeout);
        };
        if let Some(ctl) = self.ctl.take() {
            let _ = sys::send(ctl.as_raw_fd(), &ToShim::Release.encode());
        }
        frame
    }

    /// Output bytes that may still be sent before an `Ack`.
    fn room(&self) -> u32 {
        WINDOW.saturating_sub(self.unacked)
    }

    /// One round: poll whatever can move now, then move it.
    fn wait(&mut self, timeout: Option<Duration>) {
        let mut fds = Vec::with_capacity(5);
        fds.push(sys::pollfd(self.wake.as_raw_fd(), libc::POLLIN));
        let raw = |fd: &Option<OwnedFd>| fd.as_ref().map_or(-1, |f| f.as_raw_fd());
        fds.push(sys::pollfd(raw(&self.ctl), libc::POLLIN));
        let reading = self.room() > 0;
        fds.push(sys::pollfd(if reading { raw(&self.stdout) } else { -1 }, libc::POLLIN));
        fds.push(sys::pollfd(if reading { raw(&self.stderr) } else { -1 }, libc::POLLIN));
        let writing = !self.stdin_buf.is_empty();
        fds.push(sys::pollfd(if writing { raw(&self.stdin) } else { -1 }, libc::POLLOUT));
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
        if fds[2].revents != 0 {
            self.read_output(Stream::Stdout);
        }
        if fds[3].revents != 0 {
            self.read_output(Stream::Stderr);
        }
        if fds[4].revents != 0 || writing {
            self.flush_stdin();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Stdin(data) => {
                if self.stdin.is_some() {
                    self.stdin_buf.extend_from_slice(&data);
                }
            }
            Msg::StdinEnd => self.stdin_end = true,
            Msg::Ack(n) => self.unacked = self.unacked.saturating_sub(n),
            Msg::Kill => {
                self.killed = true;
                self.tell(ToShim::Kill);
            }
            Msg::Signal(sig) => self.tell(ToShim::Signal(sig)),
            Msg::ShimExited(pid, status) if pid == self.shim => self.shim_status = Some(status),
            // An idle shim that died before it could be given this command.
            Msg::ShimExited(..) => {}
        }
        self.flush_stdin();
    }

    fn tell(&mut self, m: ToShim) {
        if let Some(ctl) = &self.ctl {
            let _ = sys::send(ctl.as_raw_fd(), &m.encode());
        }
    }

    fn read_ctl(&mut self) {
        let Some(ctl) = &self.ctl else { return };
        let mut buf = [0u8; 4096];
        match sys::recv(ctl.as_raw_fd(), &mut buf) {
            Ok(0) => self.ctl = None,
            Ok(n) => match FromShim::decode(&buf[..n]) {
                Some(FromShim::Exited { code, signal }) => self.exit = Some((code, signal)),
                Some(FromShim::Failed(reason, message)) => self.failed = Some((reason, message)),
                Some(FromShim::Started { .. }) | None => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.ctl = None,
        }
    }

    fn read_output(&mut self, stream: Stream) {
        let slot = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let Some(fd) = slot else { return };
        let want = MAX_CHUNK.min(WINDOW.saturating_sub(self.unacked) as usize);
        if want == 0 {
            return;
        }
        // One scratch buffer per command: a read costs what it returns, not MAX_CHUNK.
        let scratch = self.scratch.get_or_insert_with(|| vec![0u8; MAX_CHUNK]);
        match sys::read(fd.as_raw_fd(), &mut scratch[..want]) {
            Ok(0) => *slot = None,
            Ok(n) => {
                self.unacked += n as u32;
                let f = Frame::Output { id: self.id, stream, data: scratch[..n].to_vec() };
                let _ = self.out.send(Out::Frame(f.to_bytes()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => *slot = None,
        }
    }

    /// Writes buffered stdin as far as the pipe takes it; closes it after `StdinEnd`.
    fn flush_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf = Vec::new();
            return;
        };
        let raw: RawFd = fd.as_raw_fd();
        let mut done = 0;
        while done < self.stdin_buf.len() {
            match sys::write(raw, &self.stdin_buf[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // The command closed its stdin: what it did not read is dropped.
                Err(_) => {
                    self.stdin = None;
                    self.stdin_buf = Vec::new();
                    return;
                }
            }
        }
        self.stdin_buf.drain(..done);
        if self.stdin_buf.is_empty() && self.stdin_end {
            self.stdin = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(argv: &[&str], env: &[(&str, &str)]) -> Start {
        Start {
            id: 1,
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            env: env.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            workdir: b"/tmp".to_vec(),
            stdin: false,
        }
    }

    #[test]
    fn start_env_is_set_over_the_base_env() {
        let base = vec![("PATH".into(), "/bin".into()), ("KEEP".into(), "1".into())];
        let l = launch_message(&start(&["ls", "-l"], &[("PATH", "/x"), ("NEW", "")]), &base).unwrap();
        let strs = |v: Vec<std::ffi::CString>| v.into_iter().map(|c| c.into_string().unwrap()).collect::<Vec<_>>();
        assert_eq!(l.workdir.to_str(), Ok("/tmp"));
        assert_eq!(strs(l.argv), ["ls", "-l"]);
        assert_eq!(strs(l.env), ["PATH=/x", "KEEP=1", "NEW="]);
    }

    #[test]
    fn unrunnable_starts_are_refused() {
        let base = Vec::new();
        for (argv, env) in [
            (vec![], vec![]),
            (vec!["a\0b"], vec![]),
            (vec!["ls"], vec![("A=B", "1")]),
            (vec!["ls"], vec![("", "1")]),
            (vec!["ls"], vec![("A", "x\0")]),
        ] {
            assert!(launch_message(&start(&argv, &env), &base).is_err(), "{argv:?} {env:?}");
        }
    }
}
