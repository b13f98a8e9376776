//! berth-agent: PID 1 of every berth project container. It listens on a Unix socket that
//! berthd reaches from the host, speaks the `berth-wire` protocol, and runs each command
//! under its own shim (`--shim`, a re-execution of this binary). This file owns the
//! command line and start-up order only; it writes to stderr once, on a fatal start-up
//! error, and never otherwise (PID 1's output fills the container's log).
//! One shim is always started ahead of need (see `init`), so a command pays for no exec
//! but its own.
//!
//! Code map: `server` listens, `conn` speaks one connection, `command` pumps one
//! command's bytes, `shim` is the per-command process, `ctl` the agent–shim channel,
//! `init` the PID 1 duties (reaping, signals), `proctree` walks `/proc`, `sys` wraps libc.
//! Calls: `fs` does the file calls, on a connection's call workers (`pool`); `procs` owns
//! the agent-wide table of background processes (launched like commands, one pump each).

mod command;
mod conn;
mod ctl;
mod fs;
mod init;
mod pool;
mod procs;
mod proctree;
mod server;
mod shim;
mod sys;

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process;
use std::sync::Arc;

const DEFAULT_SOCKET: &str = "/.berth/run/agent.sock";
const USAGE: &str = "usage: berth-agent [--socket PATH] | --version";

#[derive(Debug, PartialEq)]
enum Cli {
    Run { socket: PathBuf },
    Version,
}

fn parse(args: &[OsString]) -> Result<Cli, String> {
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--version") => return Ok(Cli::Version),
            Some("--socket") => socket = it.next().ok_or("--socket needs a path")?.into(),
            Some(s) if s.starts_with("--socket=") => socket = s["--socket=".len()..].into(),
            _ => return Err(format!("unexpected argument {:?}", a.to_string_lossy())),
        }
    }
    if socket.as_os_str().is_empty() {
        return Err("--socket needs a path".into());
    }
    Ok(Cli::Run { socket })
}

fn main() {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--shim") {
        process::exit(shim::main());
    }
    match parse(&args) {
        Ok(Cli::Version) => {
            println!("berth-agent {} (protocol {})", env!("CARGO_PKG_VERSION"), berth_wire::VERSION);
        }
        Ok(Cli::Run { socket }) => run(socket),
        Err(e) => {
            eprintln!("berth-agent: {e}\n{USAGE}");
            process::exit(2);
        }
    }
}

fn run(socket: PathBuf) -> ! {
    sys::ensure_std_fds();
    sys::cloexec_inherited_fds();
    // Before any thread exists, so that every thread inherits the blocked signals.
    let signals = init::take_signals();
    // Orphans of finished commands come to us (and are reaped) even when not PID 1.
    let _ = sys::set_child_subreaper();
    let env = Arc::new(env::vars_os().collect());
    let fatal = |e: std::io::Error| -> ! {
        eprintln!("berth-agent: {e}");
        process::exit(1)
    };
    procs::set_run_dir(&socket);
    let listener = server::listen(&socket).unwrap_or_else(|e| fatal(e));
    init::spawn_signal_thread(signals, socket).unwrap_or_else(|e| fatal(e));
    init::spawn_pool_thread().unwrap_or_else(|e| fatal(e));
    server::serve(listener, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let os = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let run = |p: &str| Ok(Cli::Run { socket: p.into() });
        assert_eq!(parse(&os(&[])), run(DEFAULT_SOCKET));
        assert_eq!(parse(&os(&["--socket", "/x.sock"])), run("/x.sock"));
        assert_eq!(parse(&os(&["--socket=/y.sock"])), run("/y.sock"));
        assert_eq!(parse(&os(&["--version"])), Ok(Cli::Version));
        for bad in [&["--socket"][..], &["--socket="], &["-x"], &["run"]] {
            assert!(parse(&os(bad)).is_err(), "{bad:?}");
        }
    }
}
