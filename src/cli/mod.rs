//! `berth`: the command-line client. Each command is one JSON-RPC request over the
//! socket; `--json` prints the result exactly as the protocol returns it.
//!
//! Exit codes: 0 on success, 2 on a usage error (whether clap, this client or the daemon
//! finds it: a daemon error of kind `invalid_params` or `invalid_name`), 1 on any other
//! error (printed as `berth: <message>`); `berth exec` exits with the command's own code
//! (124 on timeout). The client validates nothing the daemon validates: the daemon's
//! error is the one shown.
//!
//! `mod.rs` holds the commands and the run; `request.rs` builds each request,
//! `conn.rs` speaks the wire, `human.rs` formats results for people. Commands of more
//! than one request have modules of their own over `mux.rs` (many requests in flight on
//! one connection): `cp/` (`berth cp`) and `procs.rs` (`logs --process`).

mod conn;
mod cp;
mod human;
mod mux;
mod procs;
mod request;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::aot::Shell;
use serde_json::{json, Value};

use crate::config;
use conn::{decode_data, Conn};

/// Exit code of a usage error.
const USAGE: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Drive berthd: isolated containers, one per project")]
pub struct Cli {
    /// Control socket (default: $BERTH_SOCKET, else /run/berth/berth.sock as root, else
    /// $XDG_RUNTIME_DIR/berth/berth.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the protocol's result as one JSON document (default: human output).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon version, runtime, Docker availability, project count.
    Info,
    /// Register a project, make its workspace, create and start its container.
    Create {
        /// Project name: a-z, 0-9, then also _ . - (up to 63 characters).
        name: String,
        /// Image to run (default: the daemon's docker.default_image, node:20-slim out of the box).
        #[arg(long)]
        image: Option<String>,
        /// Free text shown by get (default: empty).
        #[arg(long)]
        description: Option<String>,
        /// Environment variable for every exec, K=V, repeatable (default: none).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Published port, HOST:CONTAINER[/udp], repeatable (default: none).
        #[arg(long = "port", value_name = "HOST:CONTAINER")]
        port: Vec<String>,
        /// Container profile, default or strict (default: the daemon's [container] profile, "default" out of the box).
        #[arg(long)]
        profile: Option<String>,
        /// "none" for a container without network, for offline work (default: the daemon's docker.network bridge).
        #[arg(long)]
        network: Option<String>,
        /// Memory limit, e.g. 512m, 1.5GiB; "0" for none (default: the daemon's [container] memory, 4GiB out of the box).
        #[arg(long)]
        memory: Option<String>,
        /// Process limit; 0 for none (default: the daemon's [container] pids_limit, 1024 out of the box).
        #[arg(long)]
        pids_limit: Option<i64>,
        /// CPU limit in cores, e.g. 1.5; 0 for none (default: the daemon's [container] cpus, none out of the box).
        #[arg(long)]
        cpus: Option<f64>,
    },
    /// List all projects.
    Ls,
    /// One project, as the registry has it.
    Get {
        /// Project name.
        name: String,
    },
    /// Live container status.
    Status {
        /// Project name.
        name: String,
    },
    /// Start the project's container.
    Start {
        /// Project name.
        name: String,
    },
    /// Stop the project's container (it is kept).
    Stop {
        /// Project name.
        name: String,
    },
    /// Remove container and registry entry; the workspace moves to archive/ unless --purge.
    Rm {
        /// Project name.
        name: String,
        /// Delete the workspace instead of archiving it (default: archive).
        #[arg(long)]
        purge: bool,
        /// Keep the project's snapshots (still listed, restorable into a fork) (default: deleted with it).
        #[arg(long)]
        keep_snapshots: bool,
    },
    /// Snapshots: take, list, restore and delete them.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// A new project from SRC's current state (or from one of its snapshots); the two are
    /// independent afterwards. A fork publishes no ports.
    Fork {
        /// The project to fork.
        src: String,
        /// The new project's name.
        dst: String,
        /// Fork from this snapshot of SRC instead of its current state (default: current state).
        #[arg(long, value_name = "ID")]
        snapshot: Option<String>,
    },
    /// Run a command in the project; output streams live; exits with its exit code. With
    /// -d, start it in the background and print its process id instead.
    Exec {
        /// Start the command as a background process and print its id (see ps, logs
        /// --process, kill); berth returns at once.
        #[arg(short = 'd', long, conflicts_with_all = ["timeout", "local", "tool"])]
        detach: bool,
        /// Working directory, absolute (default: /workspace).
        #[arg(long)]
        workdir: Option<String>,
        /// Environment variable, K=V, repeatable; overrides the project's (default: the project's env only).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Kill the command after this long, e.g. 30s, 5m (default: the daemon's exec.default_timeout, 10m out of the box).
        #[arg(long)]
        timeout: Option<String>,
        /// Run on the host in the workspace instead of the container (default: off, the daemon decides where).
        #[arg(long)]
        local: bool,
        /// Tool name, for the daemon's [routing] container_tools rules (default: none).
        #[arg(long)]
        tool: Option<String>,
        /// Do not forward berth's own stdin (default: forwarded when it is not a terminal).
        #[arg(long)]
        no_stdin: bool,
        /// Project name; an unknown one is created with the default image unless the daemon's exec.auto_create is off.
        name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The container's log, then the project's recent execs; or, with --process, a
    /// background process's output (stdout to stdout, stderr to stderr, as raw bytes).
    Logs {
        /// Project name.
        name: String,
        /// Only the last N lines of the log (default: all).
        #[arg(long, value_name = "N", conflicts_with = "process")]
        tail: Option<u64>,
        /// The output of this background process (see ps) instead of the container's log (default: the container's log).
        #[arg(long, value_name = "ID")]
        process: Option<u64>,
        /// With --process: keep following the output until the process ends.
        #[arg(short = 'f', long, requires = "process")]
        follow: bool,
    },
    /// The project's background processes (started by exec -d).
    Ps {
        /// Project name.
        name: String,
    },
    /// Signal a background process and its whole tree; prints it once it ended.
    Kill {
        /// Project name.
        name: String,
        /// Process id, as exec -d printed it (see ps).
        id: u64,
        /// Signal: a name such as TERM, KILL, INT, HUP, or a number (default: TERM).
        #[arg(long, short = 's', value_name = "SIG")]
        signal: Option<String>,
        /// After a TERM-like signal, how long before the tree is killed, e.g. 2s (default: the daemon's, 5s).
        #[arg(long, value_name = "DUR")]
        grace: Option<String>,
    },
    /// Copy files and directories between the host and a project, like docker cp.
    #[command(long_about = CP_HELP)]
    Cp {
        /// Follow SRC if it is a symlink (default: copy the symlink itself).
        #[arg(short = 'L', long)]
        follow_link: bool,
        /// No progress on stderr (default: shown for transfers over 4 MiB when stderr is a terminal).
        #[arg(short, long)]
        quiet: bool,
        /// What to copy: NAME:PATH, a host path, or - for a tar stream on stdin.
        src: String,
        /// Where to: NAME:PATH, a host path, or - for a tar stream on stdout.
        dst: String,
    },
    /// Host path of the workspace.
    Path {
        /// Project name.
        name: String,
    },
    /// Run the janitor's reconcile now; prints what changed.
    Reconcile,
    /// Run the janitor's stale-archive now; prints the archived names.
    ArchiveStale,
    /// Serve the Model Context Protocol on stdio (for AI agents), as a client of berthd.
    Mcp,
    /// Print a shell completion script, e.g. `berth completions bash > /etc/bash_completion.d/berth`.
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot: the container's filesystem, the workspace and the settings
    /// (the container is paused meanwhile); prints its id.
    Create {
        /// Project name.
        name: String,
        /// Free text shown by ls (default: none).
        #[arg(long)]
        label: Option<String>,
    },
    /// List snapshots: ID PROJECT LABEL CREATED SIZE.
    Ls {
        /// Only this project's (default: every project's).
        name: Option<String>,
    },
    /// Put the project back as it was at the snapshot: container filesystem, workspace
    /// and settings (commands running in it are ended).
    Restore {
        /// Project name.
        name: String,
        /// Snapshot id.
        id: String,
    },
    /// Delete a snapshot.
    Rm {
        /// Snapshot id.
        id: String,
    },
}

const CP_HELP: &str = "\
Copy files and directories between the host and a project's container, like docker cp.

One side is NAME:PATH, a path in the project's container: absolute, or relative to
/workspace (NAME: alone is /workspace). The other is a host path, or -:
  berth cp FILE|DIR NAME:PATH     host to container
  berth cp NAME:PATH FILE|DIR     container to host
  berth cp - NAME:DIR             extract a tar stream read from stdin into DIR
  berth cp NAME:PATH -            write a tar stream of PATH to stdout

Where the copy lands (as docker cp):
  - a file onto an existing directory goes inside it, under its own name; onto a file
    replaces it; onto a missing path becomes it (its directory must exist);
  - a directory onto an existing directory goes inside it, under its own name; onto a
    missing path becomes it; SRC/. copies a directory's contents instead;
  - a DST ending in / must be an existing directory (for a file source).

Modes are kept; on the host, so are mtimes. Symlinks stay symlinks from the container to
the host and into a tar stream. Into a container there is no way to make a symlink yet:
each one is skipped with a warning naming it (-L follows a symlink SRC itself). Special
files are skipped likewise.

Files travel in chunks, several at once, so memory stays small whatever their size.
Progress is shown on stderr when it is a terminal and the copy is over 4 MiB (-q: never).
With --json, a summary is printed: {files, dirs, symlinks, bytes, skipped}.
Exit code: 0, 1 on an error (which names the path), 2 on a usage error.";

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Mcp = cli.command {
        return crate::mcp::main(cli.socket.as_deref());
    }
    if let Command::Completions { shell } = cli.command {
        clap_complete::aot::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // A copy encodes and decodes chunks on one core while the connection is served on
    // the other; everything else is one request and needs one thread.
    let rt = match &cli.command {
        Command::Cp { .. } => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
        _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(run(cli))
}

fn fail_with(code: u8, msg: &str) -> ExitCode {
    eprintln!("berth: {msg}");
    ExitCode::from(code)
}

fn fail(msg: &str) -> ExitCode {
    fail_with(1, msg)
}

/// The exit code for a daemon error: a bad argument is a usage error wherever it is found.
fn error_exit_code(err: &Value) -> u8 {
    error_exit_code_of(err["data"]["kind"].as_str().unwrap_or(""))
}

fn error_exit_code_of(kind: &str) -> u8 {
    match kind {
        "invalid_params" | "invalid_name" => USAGE,
        _ => 1,
    }
}

async fn run(cli: Cli) -> ExitCode {
    let socket = config::resolve_socket(cli.socket.as_deref(), None);
    match &cli.command {
        Command::Cp { follow_link, quiet, src, dst } => {
            let o =
                cp::Options { src: src.clone(), dst: dst.clone(), follow: *follow_link, quiet: *quiet, json: cli.json };
            return cp::run(&socket, o).await;
        }
        Command::Logs { name, process: Some(id), follow, .. } => {
            return procs::logs(&socket, name, *id, *follow, cli.json).await;
        }
        _ => {}
    }
    let (method, mut params) = match request::request_for(&cli.command) {
        Ok(Some(r)) => r,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => return fail_with(USAGE, &e),
    };
    let mut conn = match Conn::open(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot connect to berthd at {}: {e}", socket.display())),
    };
    let is_exec = matches!(cli.command, Command::Exec { detach: false, .. });
    // With --json, exec's output comes back inside the one JSON document instead of
    // streaming to berth's stdout and stderr.
    if is_exec && cli.json {
        params["stream"] = json!(false);
    }
    let result = match conn.call(method, params, is_exec && !cli.json).await {
        Ok(Ok(v)) => v,
        Ok(Err(err)) => return fail_with(error_exit_code(&err), err["message"].as_str().unwrap_or("unknown error")),
        Err(e) => return fail(&format!("connection to berthd failed: {e}")),
    };
    if let Command::Exec { name, detach: false, .. } = &cli.command {
        return finish_exec(name, &result, cli.json);
    }
    if cli.json {
        println!("{result}");
    } else {
        print!("{}", human_output(&cli.command, &result));
    }
    ExitCode::SUCCESS
}

fn human_output(cmd: &Command, r: &Value) -> String {
    match cmd {
        Command::Info => human::info(r),
        Command::Create { .. } | Command::Get { .. } | Command::Start { .. } | Command::Stop { .. } => {
            human::project(r)
        }
        Command::Ls => human::list(r),
        Command::Status { .. } => human::status(r),
        Command::Rm { name, .. } => human::removed(name, r),
        Command::Fork { .. } | Command::Snapshot(SnapshotCommand::Restore { .. }) => human::project(r),
        Command::Snapshot(SnapshotCommand::Create { .. }) => format!("{}\n", human::s(&r["id"])),
        Command::Snapshot(SnapshotCommand::Ls { .. }) => human::snapshots(r),
        Command::Snapshot(SnapshotCommand::Rm { .. }) => String::new(),
        Command::Logs { .. } => human::logs(r),
        Command::Path { .. } => format!("{}\n", r["path"].as_str().unwrap_or("-")),
        Command::Reconcile => human::reconcile(r),
        Command::ArchiveStale => human::archive_stale(r),
        Command::Exec { detach: true, .. } => format!("{}\n", human::s(&r["id"])),
        Command::Ps { .. } => human::processes(r),
        Command::Kill { .. } => human::process_line(r),
        Command::Exec { .. } | Command::Cp { .. } | Command::Completions { .. } | Command::Mcp => String::new(),
    }
}

fn finish_exec(name: &str, result: &Value, json_out: bool) -> ExitCode {
    if json_out {
        println!("{result}");
    } else {
        // Output already streamed; whatever the response still carries is printed too,
        // then what the output itself cannot say.
        let out = decode_data(result, "stdout", "stdout_encoding");
        let err = decode_data(result, "stderr", "stderr_encoding");
        let _ = std::io::stdout().write_all(&out);
        let _ = std::io::stdout().flush();
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(&err);
        for note in human::exec_notes(name, result) {
            let _ = writeln!(stderr, "berth: {note}");
        }
    }
    if result["timed_out"].as_bool() == Some(true) {
        return ExitCode::from(124);
    }
    let code = result["exit_code"].as_i64().unwrap_or(1);
    ExitCode::from((code & 0xff) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag and option, in every subcommand, with its help text.
    fn options(cmd: &clap::Command, path: &str, out: &mut Vec<(String, Option<String>, bool)>) {
        for a in cmd.get_arguments().filter(|a| !a.is_positional()) {
            let takes_value = matches!(a.get_action(), clap::ArgAction::Set | clap::ArgAction::Append);
            let name = format!("{path} --{}", a.get_long().unwrap_or(a.get_id().as_str()));
            out.push((name, a.get_help().map(|h| h.to_string()), takes_value));
        }
        for sub in cmd.get_subcommands() {
            options(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_has_help_and_every_option_names_its_default() {
        let mut all = Vec::new();
        options(&Cli::command(), "berth", &mut all);
        assert!(all.iter().any(|(n, _, _)| n == "berth exec --timeout"), "the walk reaches subcommands");
        for (name, help, takes_value) in all {
            let help = help.unwrap_or_else(|| panic!("{name} has no help text"));
            assert!(!help.trim().is_empty(), "{name} has no help text");
            if takes_value {
                assert!(help.contains("default"), "{name} does not name its default: {help}");
            }
        }
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn background_commands_take_only_what_applies_to_them() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["berth"][..], args].concat());
        for bad in [
            &["exec", "-d", "--timeout", "1s", "web", "--", "true"][..],
            &["exec", "-d", "--local", "web", "--", "true"],
            &["logs", "web", "-f"],
            &["logs", "web", "--process", "3", "--tail", "5"],
            &["kill", "web"],
            &["kill", "web", "x"],
            &["cp", "only-one"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        let c = parse(&["exec", "-d", "--env", "A=1", "--workdir", "/tmp", "web", "--", "sleep", "9"]).unwrap();
        let (method, params) = request::request_for(&c.command).unwrap().unwrap();
        assert_eq!(method, "process.spawn");
        assert_eq!(params, json!({"name": "web", "command": ["sleep", "9"], "workdir": "/tmp", "env": {"A": "1"}}));
        let c = parse(&["kill", "-s", "KILL", "--grace", "2s", "web", "7"]).unwrap();
        let (method, params) = request::request_for(&c.command).unwrap().unwrap();
        assert_eq!(method, "process.kill");
        assert_eq!(params, json!({"name": "web", "id": 7, "signal": "KILL", "grace": "2s"}));
        let c = parse(&["ps", "web"]).unwrap();
        assert_eq!(request::request_for(&c.command).unwrap().unwrap(), ("process.list", json!({"name": "web"})));
        let c = parse(&["cp", "-L", "-q", "web:/a", "-"]).unwrap();
        assert!(matches!(c.command, Command::Cp { follow_link: true, quiet: true, .. }));
    }

    #[test]
    fn bad_arguments_found_by_the_daemon_are_usage_errors() {
        let err = |kind: &str| json!({"code": -32602, "message": "m", "data": {"kind": kind}});
        assert_eq!(error_exit_code(&err("invalid_params")), 2);
        assert_eq!(error_exit_code(&err("invalid_name")), 2);
        for kind in ["not_found", "already_exists", "runtime_unavailable", "internal", "forbidden"] {
            assert_eq!(error_exit_code(&err(kind)), 1, "{kind}");
        }
        assert_eq!(error_exit_code(&json!({"code": -32000, "message": "m"})), 1);
    }
}
