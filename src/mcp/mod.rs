//! `berth mcp`: a Model Context Protocol server on stdio, a client of berthd like the CLI.
//!
//! Every tool call opens its own connection to berthd and closes it when done, so a
//! cancelled call (its future dropped, or its cancellation token fired) closes that
//! connection and berthd kills the exec running on it. Stdout carries only MCP messages;
//! logs go to stderr (`RUST_LOG`, default `warn`).
//!
//! Results: a text block an agent reads (exit code, stdout, stderr, file content) and the
//! structured result beside it. A command's non-zero exit is a result, not an error; berth
//! refusing a request (or not answering) is a tool error (`isError: true`) carrying
//! berth's message. Bytes that are not UTF-8 are said to be so in the text and given as
//! base64 in the structured result.

mod conn;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{schemars, tool, tool_handler, tool_router, RoleServer, ServerHandler, ServiceExt};
use serde::Deserialize;
use serde_json::{json, Value};

use conn::{b64, decode, Conn, Msg, Reply};

/// Runs the server on stdin/stdout until the client closes it.
pub fn main(socket: Option<&Path>) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let socket = crate::config::resolve_socket(socket, None);
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let server = match Berth::new(socket).serve(rmcp::transport::stdio()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("berth: mcp: {e}");
                return ExitCode::from(1);
            }
        };
        match server.waiting().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: mcp: {e}");
                ExitCode::from(1)
            }
        }
    })
}

#[derive(Clone)]
pub struct Berth {
    socket: PathBuf,
    // Read by the code `#[tool_router]`/`#[tool_handler]` generate.
    #[allow(dead_code)]
    tool_router: rmcp::handler::server::router::tool::ToolRouter<Berth>,
}

// ---- tool parameters ------------------------------------------------------------------

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct CreateParams {
    /// Project name: a-z, 0-9, then also _ . - (up to 63 characters).
    pub name: String,
    /// Image to run (default: the daemon's default image).
    pub image: Option<String>,
    /// Environment variables for every command in the project (default: none).
    pub env: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListParams {}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct DeleteParams {
    /// Project name.
    pub name: String,
    /// Delete the workspace instead of archiving it (default: false, archive).
    pub purge: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ExecParams {
    /// Project name; an unknown one is created with the default image unless the daemon's exec.auto_create is off.
    pub name: String,
    /// The command, one string run by `/bin/sh -c` in the project's container.
    pub command: String,
    /// Working directory, absolute (default: /workspace).
    pub workdir: Option<String>,
    /// Kill the command after this long: seconds, or a duration such as "30s", "5m" (default: the daemon's exec.default_timeout, 10m out of the box).
    pub timeout: Option<Timeout>,
    /// Text given to the command on its standard input (default: none).
    pub stdin: Option<String>,
}

/// A timeout: seconds, or a duration string.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Timeout {
    /// Seconds.
    Seconds(u64),
    /// A duration such as "30s", "5m", "1h".
    Duration(String),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ReadParams {
    /// Project name.
    pub name: String,
    /// File path: absolute in the container, or relative to /workspace.
    pub path: String,
    /// Byte offset to start reading at (default: 0).
    pub offset: Option<u64>,
    /// Most bytes to read (default and maximum: the daemon's exec.max_output, 16 MiB out of the box).
    pub limit: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WriteParams {
    /// Project name.
    pub name: String,
    /// File path: absolute in the container, or relative to /workspace; missing parent directories are made.
    pub path: String,
    /// The text to write.
    pub content: String,
    /// Add to the end of the file instead of replacing it (default: false, replace).
    pub append: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct EditParams {
    /// Project name.
    pub name: String,
    /// File path: absolute in the container, or relative to /workspace.
    pub path: String,
    /// The exact text to replace; it must occur exactly once in the file.
    pub old: String,
    /// The text to put in its place.
    pub new: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ListDirParams {
    /// Project name.
    pub name: String,
    /// Directory path: absolute in the container, or relative to /workspace.
    pub path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SpawnParams {
    /// Project name.
    pub name: String,
    /// The command, one string run by `/bin/sh -c` in the background; it outlives this call.
    pub command: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ProcListParams {
    /// Project name.
    pub name: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ProcParams {
    /// Project name.
    pub name: String,
    /// Process id, as process_spawn or process_list gave it.
    pub id: u64,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct KillParams {
    /// Project name.
    pub name: String,
    /// Process id, as process_spawn or process_list gave it.
    pub id: u64,
    /// Signal name, e.g. TERM, KILL, INT, HUP (default: TERM; what is left after 5 s is killed).
    pub signal: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SnapshotCreateParams {
    /// Project name.
    pub name: String,
    /// A note to recognise the snapshot by: up to 200 bytes, no control characters (default: none).
    pub label: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SnapshotListParams {
    /// Only this project's snapshots (default: every project's).
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct SnapshotRestoreParams {
    /// Project name.
    pub name: String,
    /// Snapshot id (snap- and 12 hex digits), as snapshot_create or snapshot_list gave it; a snapshot of this project.
    pub id: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct ForkParams {
    /// The project to copy.
    pub from: String,
    /// Name of the new project: a-z, 0-9, then also _ . - (up to 63 characters); no project may have it yet.
    pub name: String,
    /// Copy this snapshot of `from` (an id as snapshot_list gives it) instead of its current state (default: its current state).
    pub snapshot: Option<String>,
}

// ---- results ----------------------------------------------------------------------------

type ToolResult = Result<CallToolResult, rmcp::ErrorData>;

/// A successful result: `text` for the agent, `structured` beside it.
fn ok(text: String, structured: Value) -> ToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = Some(structured);
    Ok(r)
}

/// A tool error: berth refused or failed the request; `text` is its message.
fn refused(text: String, structured: Value) -> ToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(structured);
    Ok(r)
}

/// The tool error for berth's error object.
fn berth_error(err: Value) -> ToolResult {
    let msg = err["message"].as_str().unwrap_or("berthd returned an error").to_string();
    let kind = err["data"]["kind"].clone();
    refused(msg.clone(), json!({"error": {"kind": kind, "code": err["code"], "message": msg}}))
}

fn io_error(socket: &Path, e: std::io::Error) -> ToolResult {
    let msg = format!("berthd at {}: {e}", socket.display());
    refused(msg.clone(), json!({"error": {"kind": "unavailable", "message": msg}}))
}

/// Text for the agent and the structured fields for `bytes`: `<key>` as text when it is
/// UTF-8, else `<key>_base64`.
fn bytes_field(out: &mut Value, key: &str, bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            out[key] = json!(s);
            s.to_string()
        }
        Err(_) => {
            out[format!("{key}_base64")] = json!(b64(bytes));
            format!("[{} bytes, not UTF-8: base64 in the structured result's {key}_base64]", bytes.len())
        }
    }
}

fn project_line(p: &Value) -> String {
    format!(
        "{}: {} (image {}, workspace {})",
        p["name"].as_str().unwrap_or("?"),
        p["status"].as_str().unwrap_or("?"),
        p["image"].as_str().unwrap_or("?"),
        p["path"].as_str().unwrap_or("?"),
    )
}

fn process_line(p: &Value) -> String {
    let state = if p["running"].as_bool() == Some(true) {
        "running".to_string()
    } else {
        let mut s = format!("exited with code {}", p["exit_code"]);
        if let Some(sig) = p["signal"].as_str() {
            s.push_str(&format!(" (signal {sig})"));
        }
        s
    };
    let cmd = match &p["command"] {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "),
        v => v.to_string(),
    };
    format!("process {}: {state}: {cmd}", p["id"])
}

fn snapshot_line(s: &Value) -> String {
    let mut line = format!(
        "{}: snapshot of {} taken {}, workspace {} bytes",
        s["id"].as_str().unwrap_or("?"),
        s["project"].as_str().unwrap_or("?"),
        s["created"].as_str().unwrap_or("?"),
        s["workspace_bytes"],
    );
    if let Some(l) = s["label"].as_str().filter(|l| !l.is_empty()) {
        line.push_str(&format!(", label {l:?}"));
    }
    line
}

fn sh(command: &str) -> Value {
    json!(["/bin/sh", "-c", command])
}

// ---- the tools ---------------------------------------------------------------------------

#[tool_router]
impl Berth {
    pub fn new(socket: PathBuf) -> Berth {
        Berth { socket, tool_router: Self::tool_router() }
    }

    /// One request on a fresh connection.
    async fn request(&self, method: &str, params: Value) -> std::io::Result<Reply> {
        let mut c = Conn::open(&self.socket).await?;
        c.call(method, params).await
    }

    /// One request; `done` makes the result of its answer, berth's error becomes a tool error.
    async fn simple(&self, method: &str, params: Value, done: impl FnOnce(Value) -> ToolResult + Send) -> ToolResult {
        match self.request(method, params).await {
            Ok(Ok(v)) => done(v),
            Ok(Err(e)) => berth_error(e),
            Err(e) => io_error(&self.socket, e),
        }
    }

    #[tool(
        description = "Create a project: register it, make its workspace (/workspace), create and start its container."
    )]
    async fn project_create(&self, Parameters(p): Parameters<CreateParams>) -> ToolResult {
        let mut params = json!({"name": p.name});
        if let Some(i) = p.image {
            params["image"] = json!(i);
        }
        if let Some(e) = p.env {
            params["env"] = json!(e);
        }
        self.simple("project.create", params, |v| ok(format!("created {}", project_line(&v)), v)).await
    }

    #[tool(description = "List all projects with their status, image and workspace path.")]
    async fn project_list(&self, Parameters(_): Parameters<ListParams>) -> ToolResult {
        self.simple("project.list", json!({}), |v| {
            let list = v.as_array().cloned().unwrap_or_default();
            let text = if list.is_empty() {
                "no projects".to_string()
            } else {
                list.iter().map(project_line).collect::<Vec<_>>().join("\n")
            };
            ok(text, json!({"projects": list}))
        })
        .await
    }

    #[tool(
        description = "Delete a project: remove its container and registry entry; its workspace is archived unless purge is true."
    )]
    async fn project_delete(&self, Parameters(p): Parameters<DeleteParams>) -> ToolResult {
        let name = p.name.clone();
        let params = json!({"name": p.name, "purge": p.purge.unwrap_or(false)});
        self.simple("project.delete", params, move |v| {
            let text = if let Some(a) = v["archived"].as_str() {
                format!("deleted {name}; workspace archived at {a}")
            } else if v["purged"].as_bool() == Some(true) {
                format!("deleted {name}; workspace purged")
            } else {
                format!("deleted {name}")
            };
            let v = if v.is_object() { v } else { json!({}) };
            ok(text, v)
        })
        .await
    }

    #[tool(
        description = "Run a shell command (one string, run by /bin/sh -c) in the project's container and wait for it. The result gives its exit code, stdout and stderr; a non-zero exit is a result, not an error. Output streams as progress notifications when the call carries a progress token; cancelling the call kills the command."
    )]
    async fn project_exec(&self, Parameters(p): Parameters<ExecParams>, ctx: RequestContext<RoleServer>) -> ToolResult {
        let token = ctx.meta.get_progress_token();
        let mut params = json!({"name": p.name, "command": sh(&p.command), "stream": true});
        if let Some(w) = p.workdir {
            params["workdir"] = json!(w);
        }
        match p.timeout {
            Some(Timeout::Seconds(n)) => params["timeout"] = json!(format!("{n}s")),
            Some(Timeout::Duration(d)) => params["timeout"] = json!(d),
            None => {}
        }
        if let Some(s) = p.stdin {
            params["stdin"] = json!(s);
        }
        let mut conn = match Conn::open(&self.socket).await {
            Ok(c) => c,
            Err(e) => return io_error(&self.socket, e),
        };
        let (mut out, mut err) = (Vec::<u8>::new(), Vec::<u8>::new());
        let run = async {
            let id = conn.send("project.exec", params).await?;
            let mut sent = 0f64;
            loop {
                let n = match conn.recv(id).await? {
                    Msg::Reply(r) => return Ok::<Reply, std::io::Error>(r),
                    Msg::Note(n) if n["method"].as_str() == Some("exec.output") => n,
                    _ => continue,
                };
                let p = &n["params"];
                let (stream, data) = (p["stream"].as_str().unwrap_or("stdout"), decode(p, "data", "encoding"));
                {
                    if stream == "stderr" { &mut err } else { &mut out }.extend_from_slice(&data);
                    if let Some(t) = &token {
                        sent += data.len() as f64;
                        let msg = format!("[{stream}] {}", String::from_utf8_lossy(&data));
                        let note = ProgressNotificationParam::new(t.clone(), sent).with_message(msg);
                        if let Err(e) = ctx.peer.notify_progress(note).await {
                            tracing::debug!("progress notification not sent: {e}");
                        }
                    }
                }
            }
        };
        // A cancelled call: dropping `run` and then `conn` closes the connection, and berthd
        // kills the command.
        let reply = tokio::select! {
            r = run => r,
            _ = ctx.ct.cancelled() => {
                return refused("cancelled; the command was killed".into(), json!({"error": {"kind": "cancelled"}}));
            }
        };
        drop(conn);
        match reply {
            Ok(Ok(v)) => {
                // Whatever the response itself still carries comes after the streamed output.
                out.extend(decode(&v, "stdout", "stdout_encoding"));
                err.extend(decode(&v, "stderr", "stderr_encoding"));
                ok_exec(&v, &out, &err)
            }
            Ok(Err(e)) => berth_error(e),
            Err(e) => io_error(&self.socket, e),
        }
    }

    #[tool(
        description = "Read a file in the project's container (text; binary content comes base64 in the structured result). Large files can be read in pieces with offset and limit."
    )]
    async fn file_read(&self, Parameters(p): Parameters<ReadParams>) -> ToolResult {
        let offset = p.offset.unwrap_or(0);
        let mut params = json!({"name": p.name, "path": p.path, "offset": offset});
        if let Some(l) = p.limit {
            params["limit"] = json!(l);
        }
        self.simple("fs.read", params, |v| {
            let data = decode(&v, "data", "encoding");
            let mut s = json!({"path": v["path"], "size": v["size"], "offset": offset, "eof": v["eof"]});
            let mut text = bytes_field(&mut s, "content", &data);
            if v["eof"].as_bool() == Some(false) {
                text.push_str(&format!(
                    "\n[read {} bytes at offset {offset} of {} bytes; more from offset {}]",
                    data.len(),
                    v["size"],
                    offset + data.len() as u64
                ));
            }
            ok(text, s)
        })
        .await
    }

    #[tool(
        description = "Write text to a file in the project's container, replacing it (or appending with append: true); missing parent directories are made."
    )]
    async fn file_write(&self, Parameters(p): Parameters<WriteParams>) -> ToolResult {
        let len = p.content.len();
        let append = p.append.unwrap_or(false);
        let params = json!({"name": p.name, "path": p.path, "data": p.content, "append": append, "mkdirs": true});
        self.simple("fs.write", params, move |v| {
            let verb = if append { "appended" } else { "wrote" };
            ok(
                format!("{verb} {len} bytes to {} (now {} bytes)", v["path"].as_str().unwrap_or("?"), v["size"]),
                json!({"path": v["path"], "size": v["size"], "written": len}),
            )
        })
        .await
    }

    #[tool(
        description = "Replace exactly one occurrence of `old` with `new` in a text file in the project's container; zero or several occurrences are an error that says how many were found."
    )]
    async fn file_edit(&self, Parameters(p): Parameters<EditParams>) -> ToolResult {
        let mut c = match Conn::open(&self.socket).await {
            Ok(c) => c,
            Err(e) => return io_error(&self.socket, e),
        };
        let read = match c.call("fs.read", json!({"name": p.name, "path": p.path})).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return berth_error(e),
            Err(e) => return io_error(&self.socket, e),
        };
        let path = read["path"].as_str().unwrap_or(&p.path).to_string();
        let fail = |msg: String, found: Option<usize>| {
            refused(
                msg.clone(),
                json!({"error": {"kind": "invalid_params", "message": msg}, "path": path, "occurrences": found}),
            )
        };
        if read["eof"].as_bool() == Some(false) {
            return fail(format!("{path} is too large to edit in one piece ({} bytes)", read["size"]), None);
        }
        let Ok(text) = String::from_utf8(decode(&read, "data", "encoding")) else {
            return fail(format!("{path} is not UTF-8 text; it cannot be edited"), None);
        };
        if p.old.is_empty() {
            return fail("old must not be empty".to_string(), None);
        }
        let found = text.matches(&p.old).count();
        if found != 1 {
            let msg = if found == 0 {
                format!("old text not found in {path} (0 occurrences); it must occur exactly once")
            } else {
                format!(
                    "old text found {found} times in {path} ({found} occurrences); it must occur exactly once: \
                     include more surrounding text to make it unique"
                )
            };
            return fail(msg, Some(found));
        }
        let new_text = text.replacen(&p.old, &p.new, 1);
        match c.call("fs.write", json!({"name": p.name, "path": path, "data": new_text})).await {
            Ok(Ok(v)) => ok(
                format!("edited {path}: replaced 1 occurrence (now {} bytes)", v["size"]),
                json!({"path": path, "size": v["size"], "occurrences": 1}),
            ),
            Ok(Err(e)) => berth_error(e),
            Err(e) => io_error(&self.socket, e),
        }
    }

    #[tool(description = "List a directory in the project's container: each entry's type, size, mode and name.")]
    async fn file_list(&self, Parameters(p): Parameters<ListDirParams>) -> ToolResult {
        self.simple("fs.list", json!({"name": p.name, "path": p.path}), |v| {
            let list = v.as_array().cloned().unwrap_or_default();
            let text = if list.is_empty() {
                "(empty directory)".to_string()
            } else {
                list.iter()
                    .map(|e| {
                        let mut l = format!(
                            "{:<7} {:>10} {} {}",
                            e["type"].as_str().unwrap_or("?"),
                            e["size"],
                            e["mode"].as_str().unwrap_or("?"),
                            e["name"].as_str().unwrap_or("?")
                        );
                        if let Some(t) = e["target"].as_str() {
                            l.push_str(&format!(" -> {t}"));
                        }
                        l
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            ok(text, json!({"entries": list}))
        })
        .await
    }

    #[tool(
        description = "Start a background process (one string, run by /bin/sh -c) in the project's container; it keeps running after this call. Read its output with process_output, stop it with process_kill."
    )]
    async fn process_spawn(&self, Parameters(p): Parameters<SpawnParams>) -> ToolResult {
        self.simple("process.spawn", json!({"name": p.name, "command": sh(&p.command)}), |v| {
            ok(format!("started {}", process_line(&v)), v)
        })
        .await
    }

    #[tool(description = "List the project's background processes (running and recently ended), oldest first.")]
    async fn process_list(&self, Parameters(p): Parameters<ProcListParams>) -> ToolResult {
        self.simple("process.list", json!({"name": p.name}), |v| {
            let list = v.as_array().cloned().unwrap_or_default();
            let text = if list.is_empty() {
                "no processes".to_string()
            } else {
                list.iter().map(process_line).collect::<Vec<_>>().join("\n")
            };
            ok(text, json!({"processes": list}))
        })
        .await
    }

    #[tool(
        description = "A background process's output so far (stdout and stderr, up to 256 KiB of each from its start) and whether it is still running or its exit code."
    )]
    async fn process_output(&self, Parameters(p): Parameters<ProcParams>) -> ToolResult {
        let id = p.id;
        self.simple("process.output", json!({"name": p.name, "id": p.id}), move |v| {
            let out = decode(&v, "stdout", "stdout_encoding");
            let err = decode(&v, "stderr", "stderr_encoding");
            let running = v["running"].as_bool() == Some(true);
            let mut s = json!({
                "id": id, "running": running, "exit_code": v["exit_code"], "dropped": v["dropped"],
                "stdout_offset": v["stdout_offset"], "stderr_offset": v["stderr_offset"],
            });
            let out_t = bytes_field(&mut s, "stdout", &out);
            let err_t = bytes_field(&mut s, "stderr", &err);
            let state = if running { "running".to_string() } else { format!("exited with code {}", v["exit_code"]) };
            let mut text = format!("process {id}: {state}\n--- stdout ---\n{out_t}\n--- stderr ---\n{err_t}");
            if v["dropped"].as_u64().unwrap_or(0) > 0 {
                text.push_str(&format!("\n[{} older bytes were dropped]", v["dropped"]));
            }
            ok(text, s)
        })
        .await
    }

    #[tool(
        description = "Signal a background process and its whole tree (default TERM, then KILL after 5 s); answers once it ended."
    )]
    async fn process_kill(&self, Parameters(p): Parameters<KillParams>) -> ToolResult {
        let mut params = json!({"name": p.name, "id": p.id});
        if let Some(s) = p.signal {
            params["signal"] = json!(s);
        }
        self.simple("process.kill", params, |v| ok(process_line(&v), v)).await
    }

    #[tool(
        description = "Take a snapshot of a project: its container's files (committed as an image), its workspace and its settings, to go back to with snapshot_restore or copy with project_fork. The daemon keeps each project's newest snapshots ([snapshots] keep, 10 out of the box) and prunes older ones."
    )]
    async fn snapshot_create(&self, Parameters(p): Parameters<SnapshotCreateParams>) -> ToolResult {
        let mut params = json!({"name": p.name});
        if let Some(l) = p.label {
            params["label"] = json!(l);
        }
        self.simple("snapshot.create", params, |v| ok(format!("took {}", snapshot_line(&v)), v)).await
    }

    #[tool(description = "List snapshots, oldest first: of one project, or of every project.")]
    async fn snapshot_list(&self, Parameters(p): Parameters<SnapshotListParams>) -> ToolResult {
        let mut params = json!({});
        if let Some(n) = p.name {
            params["name"] = json!(n);
        }
        self.simple("snapshot.list", params, |v| {
            let list = v.as_array().cloned().unwrap_or_default();
            let text = if list.is_empty() {
                "no snapshots".to_string()
            } else {
                list.iter().map(snapshot_line).collect::<Vec<_>>().join("\n")
            };
            ok(text, json!({"snapshots": list}))
        })
        .await
    }

    #[tool(
        description = "Put a project back as it was at one of its snapshots: its workspace, its container's files and its settings. Everything changed since is lost, and its running commands and background processes end; the snapshot stays."
    )]
    async fn snapshot_restore(&self, Parameters(p): Parameters<SnapshotRestoreParams>) -> ToolResult {
        let id = p.id.clone();
        self.simple("snapshot.restore", json!({"name": p.name, "id": p.id}), move |v| {
            ok(format!("restored snapshot {id}: {}", project_line(&v)), v)
        })
        .await
    }

    #[tool(
        description = "Create a new project as a copy of another: of its current state (container files and workspace), or of one of its snapshots. The copy has the source's environment and limits but publishes no ports; afterwards the two are independent."
    )]
    async fn project_fork(&self, Parameters(p): Parameters<ForkParams>) -> ToolResult {
        let mut params = json!({"from": p.from, "name": p.name});
        let source = match &p.snapshot {
            Some(id) => format!("{} at snapshot {id}", p.from),
            None => p.from.clone(),
        };
        if let Some(id) = p.snapshot {
            params["snapshot"] = json!(id);
        }
        self.simple("project.fork", params, move |v| ok(format!("forked {source} into {}", project_line(&v)), v)).await
    }
}

/// The result of a finished exec: its exit code first, then stdout and stderr.
fn ok_exec(v: &Value, out: &[u8], err: &[u8]) -> ToolResult {
    let code = v["exit_code"].as_i64().unwrap_or(-1);
    let timed_out = v["timed_out"].as_bool() == Some(true);
    let mut s = json!({
        "exit_code": code, "timed_out": timed_out, "truncated": v["truncated"],
        "duration_ms": v["duration_ms"], "runtime": v["runtime"],
    });
    for k in ["exec_error", "auto_created"] {
        if let Some(x) = v.get(k) {
            s[k] = x.clone();
        }
    }
    let out_t = bytes_field(&mut s, "stdout", out);
    let err_t = bytes_field(&mut s, "stderr", err);
    let mut text = format!("exit code: {code}");
    if timed_out {
        text.push_str(" (killed at its timeout)");
    }
    if let Some(e) = v["exec_error"].as_str() {
        text.push_str(&format!(" ({e})"));
    }
    if v["truncated"].as_bool() == Some(true) {
        text.push_str("\n[output truncated]");
    }
    text.push_str(&format!("\n--- stdout ---\n{out_t}\n--- stderr ---\n{err_t}"));
    ok(text, s)
}

#[tool_handler]
impl ServerHandler for Berth {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("berth", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "berth gives each project its own Docker container with a /workspace. Create a project, \
                 run shell commands in it (project_exec), read and edit its files, run background \
                 processes, and take snapshots to go back to (snapshot_restore) or copy (project_fork). \
                 A command's non-zero exit is reported in the result, not as an error.",
            )
    }
}
