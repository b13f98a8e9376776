//! PID 1 duties, done the same way when the agent is a plain process: the registry of live
//! shims (pid → the pump of the command or background process it runs), the pool of one idle shim kept ready for the next command (and
//! the thread that refills it), and the one signal thread that reaps every child
//! (dispatching shim statuses by pid, replacing an idle shim that died, dropping
//! orphans'), forwards SIGHUP/SIGUSR1/SIGUSR2/SIGWINCH to every command's tree (never to
//! the idle shim, which has none), and on SIGTERM/SIGINT/SIGQUIT kills every tree and the
//! idle shim and exits 0. A background process's shim is registered like a command's
//! (both go through `command::launch`), so all of this holds for it too: its status goes
//! to its pump, signals reach its tree, and shutdown kills it. Nothing else in the agent
//! calls `waitpid`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::command::{Handle, Msg};
use crate::shim;
use crate::sys::{self, pid_t, SigSet};

/// How long the pool waits before replacing an idle shim that died (or could not be
/// started), so that shims that cannot live are not started in a tight loop.
const REFILL_PAUSE: Duration = Duration::from_millis(100);

/// How long shutdown waits for the shims to kill their trees before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(600);

const STOP: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];
const FORWARD: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

#[derive(Default)]
struct Registry {
    /// Every unreaped shim, with the pump of the command or background process it runs
    /// (`None`: idle, or given up on).
    shims: HashMap<pid_t, Option<Handle>>,
    /// The idle shim and the agent's end of its control channel.
    idle: Option<(pid_t, OwnedFd)>,
    /// The last idle shim died idle, or could not be started: pause before the next.
    pause: bool,
    stopping: bool,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);
/// Signalled when the pool needs a new idle shim (or may stop waiting to start one).
static REFILL: Condvar = Condvar::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a fresh shim for `h`'s command (when none is idle) and registers it under its
/// pid, atomically with respect to the reaper: a shim that dies at once is still
/// dispatched to its command, never taken for an orphan.
pub fn spawn_shim(h: &Handle) -> io::Result<(pid_t, OwnedFd)> {
    let mut r = registry();
    if r.stopping {
        return Err(io::Error::other("the agent is shutting down"));
    }
    let (pid, ctl) = shim::spawn()?;
    r.shims.insert(pid, Some(h.clone()));
    Ok((pid, ctl))
}

/// Gives the idle shim, if there is one, to `h`'s command, and has the pool start the
/// next. An idle shim in the registry is unreaped, so its pid is still its own.
pub fn take_idle(h: &Handle) -> Option<(pid_t, OwnedFd)> {
    let mut r = registry();
    let (pid, ctl) = r.idle.take()?;
    r.shims.insert(pid, Some(h.clone()));
    REFILL.notify_one();
    Some((pid, ctl))
}

/// Detaches a taken shim from its command: it died before it got the command, which
/// then runs under a fresh shim instead.
pub fn give_up(pid: pid_t) {
    if let Some(slot) = registry().shims.get_mut(&pid) {
        *slot = None;
    }
}

/// Starts the pool thread, which keeps one idle shim ready whenever the agent is not
/// stopping.
pub fn spawn_pool_thread() -> io::Result<()> {
    thread::Builder::new().name("pool".into()).spawn(|| {
        let mut r = registry();
        loop {
            if r.pause {
                r.pause = false;
                drop(r);
                thread::sleep(REFILL_PAUSE);
                r = registry();
            }
            if r.idle.is_none() && !r.stopping {
                // Under the lock, like `spawn_shim`: the reaper cannot see it before it is known.
                match shim::spawn() {
                    Ok((pid, ctl)) => {
                        r.shims.insert(pid, None);
                        r.idle = Some((pid, ctl));
                    }
                    // Out of processes or descriptors: commands start fresh shims meanwhile.
                    Err(_) => r.pause = true,
                }
                continue;
            }
            r = REFILL.wait(r).unwrap_or_else(|e| e.into_inner());
        }
    })?;
    Ok(())
}

/// Blocks the signals the signal thread waits for, in this (the main, still only) thread
/// and so in every thread spawned later. Call before spawning any thread.
pub fn take_signals() -> SigSet {
    let all: Vec<libc::c_int> = [libc::SIGCHLD].iter().chain(&STOP).chain(&FORWARD).copied().collect();
    for &s in &all {
        sys::install_noop_handler(s);
    }
    let set = SigSet::of(&all);
    set.block();
    set
}

/// Starts the signal thread; `socket` is removed on the way out.
pub fn spawn_signal_thread(set: SigSet, socket: PathBuf) -> io::Result<()> {
    thread::Builder::new().name("signals".into()).spawn(move || loop {
        match set.wait(None) {
            Some(libc::SIGCHLD) => reap(),
            Some(s) if STOP.contains(&s) => shutdown(&socket),
            Some(s) => {
                let shims: Vec<Handle> = registry().shims.values().flatten().cloned().collect();
                for h in shims {
                    h.send(Msg::Signal(s));
                }
            }
            None => {}
        }
    })?;
    Ok(())
}

/// Reaps every exited child: a shim's status goes to its command, an orphan's nowhere;
/// an idle shim that died is replaced.
fn reap() {
    while let Some((pid, status)) = sys::reap_one() {
        let mut r = registry();
        match r.shims.remove(&pid) {
            Some(Some(h)) => h.send(Msg::ShimExited(pid, status)),
            _ if r.idle.as_ref().is_some_and(|(idle, _)| *idle == pid) => {
                r.idle = None;
                r.pause = true;
                REFILL.notify_one();
            }
            _ => {}
        }
    }
}

fn shutdown(socket: &PathBuf) -> ! {
    let shims: Vec<Handle> = {
        let mut r = registry();
        r.stopping = true;
        // The idle shim (and any given up on) has no tree: it just goes.
        r.idle = None;
        for (&pid, h) in &r.shims {
            if h.is_none() {
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
        r.shims.values().flatten().cloned().collect()
    };
    for h in shims {
        h.send(Msg::Kill);
    }
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    let chld = SigSet::of(&[libc::SIGCHLD]);
    loop {
        reap();
        let now = Instant::now();
        if registry().shims.is_empty() || now >= deadline {
            break;
        }
        chld.wait(Some(deadline - now));
    }
    if fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = fs::remove_file(socket);
    }
    std::process::exit(0)
}
