//! `berth`: the command-line client. Each command is one JSON-RPC request over the
//! socket; `--json` prints the result exactly as the protocol returns it.
//!
//! Exit codes: 0 on success, 1 on an error (printed as `berth: <message>`), 2 on a usage
//! error; `berth exec` exits with the command's own code (124 on timeout). The client
//! validates nothing the daemon validates: the daemon's error is the one shown.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::config;

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Drive berthd: isolated containers, one per project")]
pub struct Cli {
    /// Control socket (default: $BERTH_SOCKET, else /run/berth/berth.sock as root, else
    /// $XDG_RUNTIME_DIR/berth/berth.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the protocol's result as one JSON document.
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
        name: String,
        #[arg(long)]
        image: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// K=V, repeatable.
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// HOST:CONTAINER[/udp], repeatable.
        #[arg(long = "port", value_name = "HOST:CONTAINER")]
        port: Vec<String>,
        /// Container profile: default or strict (overrides the daemon's [container] profile).
        #[arg(long)]
        profile: Option<String>,
        /// "none" for a container without network (offline work).
        #[arg(long)]
        network: Option<String>,
        /// Memory limit, e.g. 512MiB ("0": none).
        #[arg(long)]
        memory: Option<String>,
        /// Process limit (0: none).
        #[arg(long)]
        pids_limit: Option<i64>,
        /// CPU limit in cores, e.g. 1.5.
        #[arg(long)]
        cpus: Option<f64>,
    },
    /// List all projects.
    Ls,
    /// One project, as the registry has it.
    Get { name: String },
    /// Live container status.
    Status { name: String },
    /// Start the project's container.
    Start { name: String },
    /// Stop the project's container (it is kept).
    Stop { name: String },
    /// Remove container and registry entry; the workspace moves to archive/ unless --purge.
    Rm {
        name: String,
        #[arg(long)]
        purge: bool,
    },
    /// Run a command in the project; output streams live; exits with its exit code.
    Exec {
        #[arg(long)]
        workdir: Option<String>,
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// e.g. 30s, 5m (default: the daemon's exec.default_timeout).
        #[arg(long)]
        timeout: Option<String>,
        /// Run on the host in the workspace instead of the container.
        #[arg(long)]
        local: bool,
        /// Tool name, for the daemon's routing rules.
        #[arg(long)]
        tool: Option<String>,
        /// Do not forward berth's own stdin even when it is not a terminal.
        #[arg(long)]
        no_stdin: bool,
        name: String,
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The container's log.
    Logs {
        name: String,
        #[arg(long)]
        tail: Option<u64>,
    },
    /// Host path of the workspace.
    Path { name: String },
    /// Run the janitor's reconcile now.
    Reconcile,
    /// Run the janitor's stale-archive now.
    ArchiveStale,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(run(cli))
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("berth: {msg}");
    ExitCode::from(1)
}

fn pairs(list: &[String], sep: char, what: &str) -> Result<BTreeMap<String, String>, String> {
    list.iter()
        .map(|p| {
            p.split_once(sep)
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("invalid {what} {p:?}"))
        })
        .collect()
}

async fn run(cli: Cli) -> ExitCode {
    let socket = config::resolve_socket(cli.socket.as_deref(), None);
    let (method, params) = match request_for(&cli.command) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: {e}");
            return ExitCode::from(2);
        }
    };
    let mut conn = match Conn::open(&socket).await {
        Ok(c) => c,
        Err(e) => return fail(&format!("cannot connect to berthd at {}: {e}", socket.display())),
    };
    let is_exec = matches!(cli.command, Command::Exec { .. });
    // With --json, exec's output comes back inside the one JSON document instead of
    // streaming to berth's stdout and stderr.
    let mut params = params;
    if is_exec && cli.json {
        params["stream"] = json!(false);
    }
    let reply = conn.call(method, params, is_exec && !cli.json).await;
    let result = match reply {
        Ok(Ok(v)) => v,
        Ok(Err(err)) => {
            let msg = err["message"].as_str().unwrap_or("unknown error");
            return fail(msg);
        }
        Err(e) => return fail(&format!("connection to berthd failed: {e}")),
    };
    if is_exec {
        return finish_exec(&result, cli.json);
    }
    if cli.json {
        println!("{result}");
    } else {
        print_human(&cli.command, &result);
    }
    ExitCode::SUCCESS
}

fn request_for(cmd: &Command) -> Result<(&'static str, Value), String> {
    Ok(match cmd {
        Command::Info => ("daemon.info", json!({})),
        Command::Create { name, image, description, env, port, profile, network, memory, pids_limit, cpus } => {
            let mut p = json!({"name": name});
            let extras = [
                ("profile", profile.as_ref().map(|v| json!(v))),
                ("network", network.as_ref().map(|v| json!(v))),
                ("memory", memory.as_ref().map(|v| json!(v))),
                ("pids_limit", pids_limit.map(|v| json!(v))),
                ("cpus", cpus.map(|v| json!(v))),
            ];
            for (key, value) in extras {
                if let Some(v) = value {
                    p[key] = v;
                }
            }
            if let Some(i) = image {
                p["image"] = json!(i);
            }
            if let Some(d) = description {
                p["description"] = json!(d);
            }
            if !env.is_empty() {
                p["env"] = json!(pairs(env, '=', "env (want K=V)")?);
            }
            if !port.is_empty() {
                let hc = pairs(port, ':', "port (want HOST:CONTAINER)")?;
                let cont_to_host: BTreeMap<String, String> = hc.into_iter().map(|(h, c)| (c, h)).collect();
                p["ports"] = json!(cont_to_host);
            }
            ("project.create", p)
        }
        Command::Ls => ("project.list", json!({})),
        Command::Get { name } => ("project.get", json!({"name": name})),
        Command::Status { name } => ("project.status", json!({"name": name})),
        Command::Start { name } => ("project.start", json!({"name": name})),
        Command::Stop { name } => ("project.stop", json!({"name": name})),
        Command::Rm { name, purge } => ("project.delete", json!({"name": name, "purge": purge})),
        Command::Logs { name, tail } => {
            let mut p = json!({"name": name});
            if let Some(t) = tail {
                p["tail"] = json!(t);
            }
            ("project.logs", p)
        }
        Command::Path { name } => ("project.path", json!({"name": name})),
        Command::Reconcile => ("janitor.reconcile", json!({})),
        Command::ArchiveStale => ("janitor.archive_stale", json!({})),
        Command::Exec { workdir, env, timeout, local, tool, no_stdin, name, command } => {
            let mut p = json!({"name": name, "command": command, "stream": true});
            if let Some(w) = workdir {
                p["workdir"] = json!(w);
            }
            if !env.is_empty() {
                p["env"] = json!(pairs(env, '=', "env (want K=V)")?);
            }
            if let Some(t) = timeout {
                p["timeout"] = json!(t);
            }
            if *local {
                p["local"] = json!(true);
            }
            if let Some(t) = tool {
                p["tool"] = json!(t);
            }
            if !no_stdin && !std::io::stdin().is_terminal() {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).map_err(|e| format!("reading stdin: {e}"))?;
                if !buf.is_empty() {
                    match String::from_utf8(buf) {
                        Ok(s) => p["stdin"] = json!(s),
                        Err(e) => {
                            p["stdin_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
                        }
                    }
                }
            }
            ("project.exec", p)
        }
    })
}

struct Conn {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Conn {
    async fn open(path: &std::path::Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(path).await?;
        let (r, w) = s.into_split();
        Ok(Conn { reader: BufReader::new(r), writer: w })
    }

    /// Sends one request and waits for its response, printing `exec.output`
    /// notifications as they come. `Ok(Err(error object))` for a protocol error.
    async fn call(&mut self, method: &str, params: Value, stream: bool) -> std::io::Result<Result<Value, Value>> {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        // A daemon that refuses the peer answers and closes before reading; the write then
        // fails, but its answer is still there to read.
        let sent = self.writer.write_all(format!("{req}\n").as_bytes()).await;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                sent?;
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "berthd closed the connection"));
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            if v.get("method").and_then(Value::as_str) == Some("exec.output") {
                if stream {
                    print_chunk(&v["params"]);
                }
                continue;
            }
            if let Some(err) = v.get("error") {
                // Ours, or a refusal of the whole connection (id null).
                if v.get("id") == Some(&json!(1)) || v.get("id").is_none_or(Value::is_null) {
                    return Ok(Err(err.clone()));
                }
            }
            if v.get("id") == Some(&json!(1)) {
                return Ok(Ok(v.get("result").cloned().unwrap_or(Value::Null)));
            }
        }
    }
}

fn decode_data(v: &Value, data_key: &str, enc_key: &str) -> Vec<u8> {
    let text = v[data_key].as_str().unwrap_or("");
    if v[enc_key].as_str() == Some("base64") {
        base64::engine::general_purpose::STANDARD.decode(text).unwrap_or_default()
    } else {
        text.as_bytes().to_vec()
    }
}

fn print_chunk(p: &Value) {
    let data = decode_data(p, "data", "encoding");
    if p["stream"].as_str() == Some("stderr") {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(&data);
        let _ = e.flush();
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(&data);
        let _ = o.flush();
    }
}

fn finish_exec(result: &Value, json_out: bool) -> ExitCode {
    if json_out {
        println!("{result}");
    } else {
        // Output already streamed; whatever the response still carries is printed too.
        let out = decode_data(result, "stdout", "stdout_encoding");
        let err = decode_data(result, "stderr", "stderr_encoding");
        let _ = std::io::stdout().write_all(&out);
        let _ = std::io::stderr().write_all(&err);
    }
    if result["timed_out"].as_bool() == Some(true) {
        if !json_out {
            eprintln!("berth: command timed out and was killed");
        }
        return ExitCode::from(124);
    }
    let code = result["exit_code"].as_i64().unwrap_or(1);
    ExitCode::from((code & 0xff) as u8)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_project(p: &Value) {
    for key in ["name", "description", "image", "status", "created", "last_used", "path"] {
        println!("{key:<12} {}", s(&p[key]));
    }
    for (title, key) in [("env", "env"), ("ports", "ports")] {
        if let Some(m) = p[key].as_object().filter(|m| !m.is_empty()) {
            let joined: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", s(v))).collect();
            println!("{title:<12} {}", joined.join(" "));
        }
    }
}

fn print_human(cmd: &Command, r: &Value) {
    match cmd {
        Command::Info => {
            let d = &r["docker"];
            let docker = if d["available"].as_bool() == Some(true) {
                format!("available ({})", s(&d["version"]))
            } else {
                "unavailable".into()
            };
            println!(
                "version   {}\nruntime   {}\ndocker    {docker}\nprojects  {}",
                s(&r["version"]),
                s(&r["runtime"]),
                s(&r["projects"])
            );
        }
        Command::Create { .. } | Command::Get { .. } | Command::Start { .. } | Command::Stop { .. } => print_project(r),
        Command::Ls => {
            println!("{:<24} {:<9} {:<24} {:<21} LAST-USED", "NAME", "STATUS", "IMAGE", "CREATED");
            for p in r.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<9} {:<24} {:<21} {}",
                    s(&p["name"]),
                    s(&p["status"]),
                    s(&p["image"]),
                    s(&p["created"]),
                    s(&p["last_used"])
                );
            }
        }
        Command::Status { .. } => {
            for key in ["container_id", "running", "image", "created"] {
                println!("{key:<13} {}", s(&r[key]));
            }
        }
        Command::Rm { .. } => {}
        Command::Logs { .. } => {
            print!("{}", r["logs"].as_str().unwrap_or(""));
        }
        Command::Path { .. } => println!("{}", s(&r["path"])),
        Command::Reconcile => {
            let changed = r["changed"].as_array().cloned().unwrap_or_default();
            if changed.is_empty() {
                println!("no changes");
            }
            for c in changed {
                println!("{}: {} -> {} ({})", s(&c["name"]), s(&c["from"]), s(&c["to"]), s(&c["reason"]));
            }
        }
        Command::ArchiveStale => {
            for n in r["archived"].as_array().into_iter().flatten() {
                println!("{}", s(n));
            }
        }
        Command::Exec { .. } => {}
    }
}
