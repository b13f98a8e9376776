//! PID 1 duties, done the same way when the agent is a plain process: the registry of live
//! shims (pid → command), and the one signal thread that reaps every child (dispatching
//! shim statuses by pid, dropping orphans'), forwards SIGHUP/SIGUSR1/SIGUSR2/SIGWINCH to
//! every command's tree, and on SIGTERM/SIGINT/SIGQUIT kills every tree and exits 0.
//! Nothing else in the agent calls `waitpid`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::command::{Handle, Msg};
use crate::shim;
use crate::sys::{self, pid_t, SigSet};

/// How long shutdown waits for the shims to kill their trees before exiting anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(600);

const STOP: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT];
const FORWARD: [libc::c_int; 4] = [libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

#[derive(Default)]
struct Registry {
    shims: HashMap<pid_t, Handle>,
    stopping: bool,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns a shim for `h`'s command and registers it under its pid, atomically with
/// respect to the reaper: a shim that dies at once is still dispatched to its command,
/// never taken for an orphan.
pub fn spawn_shim(h: &Handle) -> io::Result<(pid_t, OwnedFd)> {
    let mut r = registry();
    if r.stopping {
        return Err(io::Error::other("the agent is shutting down"));
    }
    let (pid, ctl) = shim::spawn()?;
    r.shims.insert(pid, h.clone());
    Ok((pid, ctl))
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
                let shims: Vec<Handle> = registry().shims.values().cloned().collect();
                for h in shims {
                    h.send(Msg::Signal(s));
                }
            }
            None => {}
        }
    })?;
    Ok(())
}

/// Reaps every exited child: a shim's status goes to its command, an orphan's nowhere.
fn reap() {
    while let Some((pid, status)) = sys::reap_one() {
        let shim = registry().shims.remove(&pid);
        if let Some(h) = shim {
            h.send(Msg::ShimExited(pid, status));
        }
    }
}

fn shutdown(socket: &PathBuf) -> ! {
    let shims: Vec<Handle> = {
        let mut r = registry();
        r.stopping = true;
        r.shims.values().cloned().collect()
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
