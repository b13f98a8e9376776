//! The per-command shim (`berth-agent --shim`): a single-threaded process the agent
//! starts ahead of need, so that its exec is off a command's critical path. Idle, it
//! waits on the control channel (descriptor 3, see `ctl`) for a `Launch`: the command,
//! its full environment, its working directory and its descriptors 0–2 (its own 0–2 are
//! `/dev/null`). It is a child subreaper from the start; it enters the working directory,
//! spawns the command, tells the agent its pid, and then waits for it: it alone reaps the
//! command (so its status is never stolen) and every orphan the command leaves, and on
//! request signals, or freezes and kills, the whole tree. If the agent goes away while the shim is idle, the shim just exits.
//! This file also holds how the agent starts a shim (`spawn`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use berth_wire::FailReason;

use crate::ctl::{FromShim, Launch, ToShim, SHIM_FD};
use crate::proctree;
use crate::sys::{self, pid_t, SigSet};

/// How long a kill keeps at a tree that will not die.
const KILL_PATIENCE: Duration = Duration::from_secs(5);

/// Starts a shim (agent side): its pid and the agent's end of its control channel. The
/// shim sits idle until it is sent a `Launch`.
pub fn spawn() -> io::Result<(pid_t, OwnedFd)> {
    let (ctl, theirs) = sys::seqpacket_pair()?;
    let null = sys::dev_null(true)?;
    let n = null.as_raw_fd();
    let argv = [CString::from(c"berth-agent"), CString::from(c"--shim")];
    let pid = sys::spawn(c"/proc/self/exe", &argv, None, &[n, n, n, theirs.as_raw_fd()], false)?;
    Ok((pid, ctl))
}

/// Runs the shim; returns its exit code.
pub fn main() -> i32 {
    let ctl = adopt_ctl();
    if sys::set_cloexec(ctl.as_raw_fd()).is_err() {
        return 125;
    }
    // The shim must outlive every signal the command's process group may receive.
    SigSet::full().block();
    sys::set_name(c"berth-shim");
    sys::setsid();
    let _ = sys::set_child_subreaper();
    // Idle: wait for the command. None coming means the agent is gone.
    let Some((launch, fds)) = Launch::recv(ctl.as_raw_fd()) else { return 0 };
    let report = |m: FromShim| {
        let _ = sys::send(ctl.as_raw_fd(), &m.encode());
    };
    let sigchld = match SigSet::of(&[libc::SIGCHLD]).signalfd() {
        Ok(fd) => fd,
        Err(e) => {
            report(FromShim::Failed(FailReason::Other, format!("signalfd: {e}")));
            return 125;
        }
    };
    sys::set_environ(launch.env);
    let started = start(&launch.workdir, &launch.argv, &fds.each_ref().map(|f| f.as_raw_fd()));
    // Only the command holds its pipes now.
    drop(fds);
    match started {
        Err((reason, message)) => {
            report(FromShim::Failed(reason, message));
            0
        }
        Ok(main) => {
            report(FromShim::Started { pid: main });
            Shim { ctl, sigchld, main, status: None, reported: false }.run()
        }
    }
}

/// Takes ownership of the control channel the agent put on descriptor 3.
fn adopt_ctl() -> OwnedFd {
    // SAFETY: the agent always spawns the shim with its end of the channel on fd 3, and
    // nothing else in this process owns that descriptor.
    unsafe { OwnedFd::from_raw_fd(SHIM_FD) }
}

/// Enters the working directory and spawns the command on `fds`: its pid, or why not.
fn start(workdir: &CStr, argv: &[CString], fds: &[RawFd; 3]) -> Result<pid_t, (FailReason, String)> {
    if !workdir.is_empty() {
        sys::chdir(workdir).map_err(|e| {
            (FailReason::BadWorkdir, format!("working directory {}: {}", workdir.to_string_lossy(), plain(&e)))
        })?;
    }
    let Some(program) = argv.first() else { return Err((FailReason::Other, "empty command".into())) };
    sys::spawn(program, argv, None, fds, true).map_err(|e| {
        let reason = classify(&e);
        let program = program.to_string_lossy();
        match e.raw_os_error() {
            Some(libc::ENOENT) if !program.contains('/') => (reason, format!("{program}: command not found")),
            _ => (reason, format!("{program}: {}", plain(&e))),
        }
    })
}

/// Why an exec failed, in the protocol's terms.
pub fn classify(e: &io::Error) -> FailReason {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => FailReason::NotFound,
        Some(libc::EACCES | libc::EPERM | libc::ENOEXEC | libc::EISDIR) => FailReason::NotExecutable,
        _ => FailReason::Other,
    }
}

/// An OS error's text without Rust's " (os error N)" suffix.
pub(crate) fn plain(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}

struct Shim {
    ctl: OwnedFd,
    sigchld: OwnedFd,
    main: pid_t,
    status: Option<libc::c_int>,
    reported: bool,
}

impl Shim {
    fn run(mut self) -> i32 {
        let mut buf = [0u8; 64];
        loop {
            let mut fds =
                [sys::pollfd(self.ctl.as_raw_fd(), libc::POLLIN), sys::pollfd(self.sigchld.as_raw_fd(), libc::POLLIN)];
            if sys::poll(&mut fds, None).is_err() {
                continue;
            }
            if fds[1].revents != 0 {
                sys::signalfd_drain(&self.sigchld);
                self.reap();
            }
            if fds[0].revents == 0 {
                continue;
            }
            let msg = match sys::recv(self.ctl.as_raw_fd(), &mut buf) {
                Ok(0) => None,
                Ok(n) => ToShim::decode(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => None,
            };
            match msg {
                Some(ToShim::Signal(sig)) => {
                    for p in proctree::descendants(sys::getpid()) {
                        let _ = sys::kill(p, sig);
                    }
                }
                Some(ToShim::Release) if self.reported => return 0,
                Some(ToShim::Release) => {}
                // Kill, or the agent is gone (end of file): nobody is left to answer for
                // the command, so it goes too.
                Some(ToShim::Kill) | None => {
                    self.kill_tree();
                    return 0;
                }
            }
        }
    }

    /// Reaps every exited child; reports the command's status the first time it shows.
    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            if pid == self.main {
                self.status = Some(status);
            }
        }
        if let (Some(status), false) = (self.status, self.reported) {
            let (code, signal) = sys::decode_status(status);
            let _ = sys::send(self.ctl.as_raw_fd(), &FromShim::Exited { code, signal }.encode());
            self.reported = true;
        }
    }

    /// Freezes and kills every descendant, over and over until none is left: a process
    /// forked between a scan and the kill is orphaned to us (the subreaper) and found by
    /// the next scan. Then reports the command's status.
    fn kill_tree(&mut self) {
        let me = sys::getpid();
        // A process stuck in the kernel (uninterruptible sleep) may not die for a long
        // time; after this long the shim reports and leaves it.
        let give_up = Instant::now() + KILL_PATIENCE;
        while Instant::now() < give_up {
            let mut frozen = Vec::new();
            loop {
                let fresh: Vec<pid_t> = proctree::descendants(me).into_iter().filter(|p| !frozen.contains(p)).collect();
                if fresh.is_empty() {
                    break;
                }
                for &p in &fresh {
                    let _ = sys::kill(p, libc::SIGSTOP);
                }
                frozen.extend(fresh);
            }
            if frozen.is_empty() {
                break;
            }
            for &p in &frozen {
                let _ = sys::kill(p, libc::SIGKILL);
            }
            // Give the kernel a moment to turn them into zombies before looking again.
            let mut fds = [sys::pollfd(self.sigchld.as_raw_fd(), libc::POLLIN)];
            let _ = sys::poll(&mut fds, Some(Duration::from_millis(20)));
            sys::signalfd_drain(&self.sigchld);
            self.reap();
        }
        self.reap();
        if !self.reported {
            // The command would not die in time: it was sent SIGKILL, so say so.
            let _ = sys::send(self.ctl.as_raw_fd(), &FromShim::Exited { code: 0, signal: libc::SIGKILL }.encode());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_errors_map_to_reasons() {
        let cases = [
            (libc::ENOENT, FailReason::NotFound),
            (libc::ENOTDIR, FailReason::NotFound),
            (libc::EACCES, FailReason::NotExecutable),
            (libc::ENOEXEC, FailReason::NotExecutable),
            (libc::E2BIG, FailReason::Other),
            (libc::ENOMEM, FailReason::Other),
        ];
        for (errno, want) in cases {
            assert_eq!(classify(&io::Error::from_raw_os_error(errno)), want, "errno {errno}");
        }
        assert_eq!(plain(&io::Error::from_raw_os_error(libc::ENOENT)), "no such file or directory");
    }
}
