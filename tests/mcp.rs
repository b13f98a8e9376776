//! `berth mcp` driven over stdio with raw JSON-RPC lines, as an MCP client would, against
//! the real berthd and engine: the handshake, every tool's described schema, exec results
//! (a non-zero exit is a result), berth's refusals as tool errors, file edits, progress
//! streaming, cancellation killing the command, background processes, and snapshots,
//! restore and fork.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A running `berth mcp`, initialized.
struct Mcp {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Mcp {
    fn start(socket: &Path) -> Mcp {
        let mut child = Command::new(berth_bin())
            .args(["mcp", "--socket"])
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn berth mcp");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut m = Mcp { child, stdin: Some(stdin), stdout, next_id: 1 };
        let init = m.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "berth-test", "version": "0"}}),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "berth", "{init}");
        assert!(init["result"]["capabilities"]["tools"].is_object(), "{init}");
        m.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    fn send(&mut self, v: Value) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next line from the server; every line must be a JSON-RPC message.
    fn read(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.stdout.read_line(&mut line).unwrap() > 0, "berth mcp closed its stdout");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
        assert_eq!(v["jsonrpc"], "2.0", "{line}");
        v
    }

    fn send_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        id
    }

    /// The response to request `id`, and the notifications that came before it.
    fn response(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let v = self.read();
            if v.get("id") == Some(&json!(id)) {
                return (v, notes);
            }
            notes.push(v);
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.send_request(method, params);
        self.response(id).0
    }

    /// A tools/call's result (a protocol error fails the test).
    fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.request("tools/call", json!({"name": tool, "arguments": args}));
        assert!(r.get("error").is_none(), "{tool}: a protocol error instead of a result: {r}");
        r["result"].clone()
    }

    /// A call that must succeed; returns (text, structured).
    fn ok(&mut self, tool: &str, args: Value) -> (String, Value) {
        let r = self.call(tool, args.clone());
        assert_eq!(r["isError"], false, "{tool} {args}: {r}");
        (text(&r), r["structuredContent"].clone())
    }

    /// A call that must be a tool error; returns its text.
    fn tool_err(&mut self, tool: &str, args: Value) -> String {
        let r = self.call(tool, args.clone());
        assert_eq!(r["isError"], true, "{tool} {args} should be a tool error: {r}");
        text(&r)
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(result: &Value) -> String {
    result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text content: {result}")).to_string()
}

#[test]
fn every_tool_is_listed_with_a_described_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = Mcp::start(&dir.path().join("none.sock"));
    let r = m.request("tools/list", json!({}));
    let tools = r["result"]["tools"].as_array().unwrap_or_else(|| panic!("{r}"));
    let mut names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "file_edit",
            "file_list",
            "file_read",
            "file_write",
            "process_kill",
            "process_list",
            "process_output",
            "process_spawn",
            "project_create",
            "project_delete",
            "project_exec",
            "project_fork",
            "project_list",
            "snapshot_create",
            "snapshot_list",
            "snapshot_restore",
        ]
    );
    for t in tools {
        let name = &t["name"];
        assert!(!t["description"].as_str().unwrap_or("").is_empty(), "{name} has no description");
        let schema = &t["inputSchema"];
        assert_eq!(schema["type"], "object", "{name}: {schema}");
        for (field, s) in schema["properties"].as_object().into_iter().flatten() {
            let d = s["description"].as_str().unwrap_or("");
            assert!(!d.trim().is_empty(), "{name}.{field} has no description: {schema}");
        }
    }
    let exec = tools.iter().find(|t| t["name"] == "project_exec").unwrap();
    let mut required: Vec<&str> =
        exec["inputSchema"]["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    required.sort();
    assert_eq!(required, ["command", "name"]);
    for f in ["workdir", "timeout", "stdin"] {
        assert!(exec["inputSchema"]["properties"][f].is_object(), "project_exec.{f} missing");
    }
    // The snapshot tools' fields, as the contract names them.
    for (tool, want, optional) in [
        ("snapshot_create", &["name"][..], &["label"][..]),
        ("snapshot_list", &[], &["name"]),
        ("snapshot_restore", &["id", "name"], &[]),
        ("project_fork", &["from", "name"], &["snapshot"]),
    ] {
        let t = tools.iter().find(|t| t["name"] == tool).unwrap();
        let schema = &t["inputSchema"];
        let mut required: Vec<&str> =
            schema["required"].as_array().into_iter().flatten().map(|v| v.as_str().unwrap()).collect();
        required.sort();
        assert_eq!(required, want, "{tool}: {schema}");
        for f in want.iter().chain(optional) {
            assert!(schema["properties"][f].is_object(), "{tool}.{f} missing: {schema}");
        }
        assert_eq!(schema["properties"].as_object().unwrap().len(), want.len() + optional.len(), "{tool}: {schema}");
    }
}

#[test]
fn a_daemon_that_is_not_there_is_a_tool_error_not_a_protocol_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let mut m = Mcp::start(&sock);
    let t = m.tool_err("project_list", json!({}));
    assert!(t.contains(&sock.display().to_string()), "{t}");
    // The server is still there for the next call.
    m.tool_err("project_exec", json!({"name": "x", "command": "true"}));
}

#[test]
fn exec_files_and_refusals() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("mcp");
    let mut m = Mcp::start(&d.socket);

    let (t, s) = m.ok("project_create", json!({"name": name, "image": IMAGE, "env": {"GREETING": "hi"}}));
    assert!(t.contains(&name), "{t}");
    assert_eq!(s["name"], name.as_str());
    let (t, s) = m.ok("project_list", json!({}));
    assert!(t.contains(&name), "{t}");
    assert!(s["projects"].as_array().unwrap().iter().any(|p| p["name"] == name.as_str()), "{s}");
    // Berth's own refusals: a taken name, a bad name, an unknown project.
    let t = m.tool_err("project_create", json!({"name": name, "image": IMAGE}));
    assert!(t.contains(&name), "{t}");
    m.tool_err("project_create", json!({"name": "../Bad"}));
    let t = m.tool_err("file_read", json!({"name": d.name("nope"), "path": "a.txt"}));
    assert!(!t.is_empty());

    // A non-zero exit is a result whose text says the exit code.
    let (t, s) = m.ok(
        "project_exec",
        json!({"name": name, "command": "echo out $GREETING; echo err >&2; cat; exit 3", "stdin": "in\n"}),
    );
    assert!(t.starts_with("exit code: 3"), "{t}");
    assert!(t.contains("out hi\nin\n") && t.contains("err\n"), "{t}");
    assert_eq!(s["exit_code"], 3);
    assert_eq!(s["stdout"], "out hi\nin\n");
    assert_eq!(s["stderr"], "err\n");
    let (_, s) = m.ok("project_exec", json!({"name": name, "command": "pwd", "workdir": "/tmp"}));
    assert_eq!(s["stdout"], "/tmp\n");
    let (t, s) = m.ok("project_exec", json!({"name": name, "command": "sleep 30", "timeout": "1s"}));
    assert_eq!(s["exit_code"], 124, "{t}");
    assert_eq!(s["timed_out"], true);
    let (_, s) = m.ok("project_exec", json!({"name": name, "command": "sleep 30", "timeout": 1}));
    assert_eq!(s["exit_code"], 124);
    // Output that is not UTF-8: said in the text, base64 beside it.
    let (t, s) = m.ok("project_exec", json!({"name": name, "command": "printf '\\377\\376'"}));
    assert!(t.contains("not UTF-8"), "{t}");
    assert_eq!(s["stdout_base64"], "//4=", "{s}");

    // Files.
    let (t, s) = m.ok("file_write", json!({"name": name, "path": "src/a.txt", "content": "one two two\n"}));
    assert!(t.contains("/workspace/src/a.txt"), "{t}");
    assert_eq!(s["size"], 12);
    m.ok("file_write", json!({"name": name, "path": "src/a.txt", "content": "three\n", "append": true}));
    let (t, s) = m.ok("file_read", json!({"name": name, "path": "src/a.txt"}));
    assert_eq!(t, "one two two\nthree\n");
    assert_eq!(s["content"], "one two two\nthree\n");
    let (t, _) = m.ok("file_read", json!({"name": name, "path": "/workspace/src/a.txt", "offset": 4, "limit": 3}));
    assert!(t.starts_with("two\n[read 3 bytes at offset 4"), "{t}");
    let t = m.tool_err("file_edit", json!({"name": name, "path": "src/a.txt", "old": "four", "new": "4"}));
    assert!(t.contains("0 occurrences"), "{t}");
    let t = m.tool_err("file_edit", json!({"name": name, "path": "src/a.txt", "old": "two", "new": "2"}));
    assert!(t.contains("2 occurrences"), "{t}");
    let (t, _) = m.ok("file_edit", json!({"name": name, "path": "src/a.txt", "old": "one", "new": "1"}));
    assert!(t.contains("replaced 1 occurrence"), "{t}");
    let (t, _) = m.ok("file_read", json!({"name": name, "path": "src/a.txt"}));
    assert_eq!(t, "1 two two\nthree\n");
    let t = m.tool_err("file_read", json!({"name": name, "path": "src/missing.txt"}));
    assert!(t.contains("missing.txt"), "{t}");
    m.ok("project_exec", json!({"name": name, "command": "printf 'a\\377b' > src/bin.dat"}));
    let (t, s) = m.ok("file_read", json!({"name": name, "path": "src/bin.dat"}));
    assert!(t.contains("3 bytes, not UTF-8"), "{t}");
    assert_eq!(s["content_base64"], "Yf9i", "{s}");
    assert!(s.get("content").is_none(), "{s}");
    let t = m.tool_err("file_edit", json!({"name": name, "path": "src/bin.dat", "old": "a", "new": "b"}));
    assert!(t.contains("not UTF-8"), "{t}");
    let (t, s) = m.ok("file_list", json!({"name": name, "path": "src"}));
    assert!(t.contains("file") && t.contains("a.txt"), "{t}");
    assert_eq!(s["entries"][0]["name"], "a.txt");

    let (t, _) = m.ok("project_delete", json!({"name": name, "purge": true}));
    assert!(t.contains("purged"), "{t}");
    m.tool_err("project_delete", json!({"name": name}));
}

#[test]
fn exec_streams_progress_and_a_cancelled_call_kills_its_command() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("mcpstream");
    let mut m = Mcp::start(&d.socket);
    m.ok("project_create", json!({"name": name, "image": IMAGE}));

    // With a progress token, output comes as progress notifications before the result.
    let id = m.send_request(
        "tools/call",
        json!({"name": "project_exec", "arguments": {"name": name, "command": "echo first; echo second >&2"},
               "_meta": {"progressToken": "tok"}}),
    );
    let (r, notes) = m.response(id);
    let progress: Vec<&Value> = notes.iter().filter(|n| n["method"] == "notifications/progress").collect();
    assert!(!progress.is_empty(), "no progress notifications: {notes:?}");
    assert!(progress.iter().all(|n| n["params"]["progressToken"] == "tok"), "{progress:?}");
    let msgs: String = progress.iter().map(|n| n["params"]["message"].as_str().unwrap_or("")).collect();
    assert!(msgs.contains("[stdout] first") && msgs.contains("[stderr] second"), "{msgs}");
    assert_eq!(r["result"]["structuredContent"]["stdout"], "first\n", "{r}");
    assert_eq!(r["result"]["structuredContent"]["stderr"], "second\n", "{r}");

    // A long command, cancelled once it has started: the command dies.
    let id = m.send_request(
        "tools/call",
        json!({"name": "project_exec", "arguments": {"name": name, "command": "echo started; exec sleep 3000"},
               "_meta": {"progressToken": 7}}),
    );
    loop {
        let v = m.read();
        assert_ne!(v.get("id"), Some(&json!(id)), "the exec ended before it was cancelled: {v}");
        if v["method"] == "notifications/progress" && v["params"]["message"].as_str().unwrap_or("").contains("started")
        {
            break;
        }
    }
    assert!(sleeping(&d, &name), "sleep 3000 is not running");
    m.send(
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": id, "reason": "test"}}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeping(&d, &name) {
        assert!(Instant::now() < deadline, "the cancelled exec's command still runs");
        // Waits on the daemon rather than the clock: a short exec in the container.
        let _ = d.rpc("project.exec", json!({"name": name, "command": ["sh", "-c", "true"]}));
    }
    // The server still answers.
    let (t, _) = m.ok("project_exec", json!({"name": name, "command": "echo after"}));
    assert!(t.contains("after"), "{t}");
}

/// Whether `sleep 3000` runs in the project's container.
fn sleeping(d: &Daemon, name: &str) -> bool {
    let r = d.ok("project.exec", json!({"name": name, "command": ["ps", "-o", "args"]}));
    r["stdout"].as_str().unwrap().lines().any(|l| l.trim() == "sleep 3000")
}

#[test]
fn background_processes() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("mcpproc");
    let mut m = Mcp::start(&d.socket);
    m.ok("project_create", json!({"name": name, "image": IMAGE}));

    let (t, s) = m.ok("process_spawn", json!({"name": name, "command": "echo hello; echo oops >&2; exec sleep 3000"}));
    assert!(t.contains("running"), "{t}");
    let id = s["id"].as_u64().unwrap_or_else(|| panic!("{s}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (t, s) = m.ok("process_output", json!({"name": name, "id": id}));
        if s["stdout"] == "hello\n" && s["stderr"] == "oops\n" {
            assert!(t.contains("running") && t.contains("hello") && t.contains("oops"), "{t}");
            assert_eq!(s["running"], true);
            break;
        }
        assert!(Instant::now() < deadline, "no output from process {id}: {t}");
        let _ = d.ok("process.wait", json!({"name": name, "id": id, "timeout": "50ms"}));
    }
    let (t, s) = m.ok("process_list", json!({"name": name}));
    assert!(t.contains(&format!("process {id}: running")), "{t}");
    assert_eq!(s["processes"][0]["id"], id);
    let (t, s) = m.ok("process_kill", json!({"name": name, "id": id, "signal": "KILL"}));
    assert_eq!(s["running"], false, "{s}");
    assert!(t.contains("exited with code 137"), "{t}");
    let (t, _) = m.ok("process_output", json!({"name": name, "id": id}));
    assert!(t.contains("exited with code 137"), "{t}");
    // Berth's refusals: an unknown process, an unknown project.
    m.tool_err("process_output", json!({"name": name, "id": 9999}));
    m.tool_err("process_list", json!({"name": d.name("nope")}));
    // Parameters of the wrong shape are the client's mistake: a protocol error.
    let r = m.request("tools/call", json!({"name": "process_kill", "arguments": {"name": name}}));
    assert!(r.get("error").is_some() || r["result"]["isError"] == true, "{r}");
}

#[test]
fn snapshots_restore_and_fork_through_tools() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let (name, fork, old) = (d.name("mcpsnap"), d.name("mcpfork"), d.name("mcpold"));
    let mut m = Mcp::start(&d.socket);
    m.ok("project_create", json!({"name": name, "image": IMAGE}));
    let (t, _) = m.ok("snapshot_list", json!({"name": name}));
    assert_eq!(t, "no snapshots");

    m.ok("file_write", json!({"name": name, "path": "w.txt", "content": "before\n"}));
    let (t, s) = m.ok("snapshot_create", json!({"name": name, "label": "before the change"}));
    let id = s["id"].as_str().unwrap_or_else(|| panic!("{s}")).to_string();
    assert!(id.starts_with("snap-"), "{s}");
    assert_eq!(s["project"], name.as_str());
    assert_eq!(s["workspace_bytes"], 7);
    assert!(t.contains(&id) && t.contains(&name) && t.contains("before the change"), "{t}");
    let (t, s) = m.ok("snapshot_list", json!({"name": name}));
    assert!(t.contains(&id) && t.contains("before the change"), "{t}");
    assert_eq!(s["snapshots"][0]["id"], id.as_str(), "{s}");
    let (t, s) = m.ok("snapshot_list", json!({}));
    assert!(t.contains(&id), "{t}");
    assert_eq!(s["snapshots"].as_array().unwrap().len(), 1, "{s}");

    m.ok("file_write", json!({"name": name, "path": "w.txt", "content": "after\n"}));
    m.ok("file_write", json!({"name": name, "path": "new.txt", "content": "new\n"}));
    let (t, s) = m.ok("snapshot_restore", json!({"name": name, "id": id}));
    assert!(t.contains(&id) && t.contains(&format!("{name}: running")), "{t}");
    assert_eq!(s["name"], name.as_str());
    assert_eq!(s["status"], "running");
    let (t, _) = m.ok("file_read", json!({"name": name, "path": "w.txt"}));
    assert_eq!(t, "before\n");
    let t = m.tool_err("file_read", json!({"name": name, "path": "new.txt"}));
    assert!(t.contains("new.txt"), "{t}");

    // Forks: of the current state and of the snapshot, independent of the source.
    m.ok("file_write", json!({"name": name, "path": "w.txt", "content": "now\n"}));
    let (t, s) = m.ok("project_fork", json!({"from": name, "name": fork}));
    assert!(t.contains(&format!("forked {name} into {fork}: running")), "{t}");
    assert_eq!(s["name"], fork.as_str());
    let (t, s) = m.ok("project_fork", json!({"from": name, "name": old, "snapshot": id}));
    assert!(t.contains(&format!("forked {name} at snapshot {id} into {old}")), "{t}");
    assert_eq!(s["status"], "running");
    m.ok("file_write", json!({"name": fork, "path": "w.txt", "content": "fork\n"}));
    assert_eq!(m.ok("file_read", json!({"name": name, "path": "w.txt"})).0, "now\n");
    assert_eq!(m.ok("file_read", json!({"name": fork, "path": "w.txt"})).0, "fork\n");
    assert_eq!(m.ok("file_read", json!({"name": old, "path": "w.txt"})).0, "before\n");

    // Berth's refusals are tool errors naming what was wrong, and change nothing.
    for (tool, args, named) in [
        ("snapshot_restore", json!({"name": name, "id": "snap-000000000000"}), "snap-000000000000"),
        ("snapshot_restore", json!({"name": name, "id": "latest"}), "latest"),
        ("snapshot_restore", json!({"name": d.name("nope"), "id": id}), "nope"),
        ("snapshot_create", json!({"name": d.name("nope")}), "nope"),
        ("snapshot_create", json!({"name": name, "label": "a\nb"}), "a\\nb"),
        ("snapshot_list", json!({"name": d.name("nope")}), "nope"),
        ("project_fork", json!({"from": name, "name": fork}), &fork),
        (
            "project_fork",
            json!({"from": name, "name": d.name("nope"), "snapshot": "snap-000000000000"}),
            "snap-000000000000",
        ),
    ] {
        let r = m.call(tool, args.clone());
        assert_eq!(r["isError"], true, "{tool} {args} should be a tool error: {r}");
        let t = text(&r);
        assert!(t.contains(named), "{tool} {args}: the text names {named:?}: {t}");
        assert!(r["structuredContent"]["error"]["kind"].is_string(), "{r}");
    }
    let (_, s) = m.ok("snapshot_list", json!({}));
    assert_eq!(s["snapshots"].as_array().unwrap().len(), 1, "{s}");
    let (t, _) = m.ok("project_list", json!({}));
    assert_eq!(t.lines().count(), 3, "{t}");
}

#[test]
fn a_client_that_goes_away_ends_the_server_and_its_commands() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("mcpgone");
    let mut m = Mcp::start(&d.socket);
    m.ok("project_create", json!({"name": name, "image": IMAGE}));
    let id = m.send_request(
        "tools/call",
        json!({"name": "project_exec", "arguments": {"name": name, "command": "echo started; exec sleep 3000"},
               "_meta": {"progressToken": 1}}),
    );
    loop {
        let v = m.read();
        assert_ne!(v.get("id"), Some(&json!(id)), "the exec ended early: {v}");
        if v["params"]["message"].as_str().unwrap_or("").contains("started") {
            break;
        }
    }
    assert!(sleeping(&d, &name));
    // The client closes our stdin: the server exits (rmcp gives in-flight calls 5 s to
    // answer first), and the exec's connection closes with it.
    drop(m.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = m.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "berth mcp did not exit when its stdin closed");
        let _ = d.rpc("project.exec", json!({"name": name, "command": ["sh", "-c", "true"]}));
    };
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sleeping(&d, &name) {
        assert!(Instant::now() < deadline, "the exec of a server that went away still runs");
        let _ = d.rpc("project.exec", json!({"name": name, "command": ["sh", "-c", "true"]}));
    }
}
