//! Exec as agents rely on it: streaming, stdin, binary output, timeouts and disconnects
//! that kill, output caps, concurrency, routing — on the real engine.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// Polls `berth exec NAME -- ps` until `gone` no longer appears (or fails the test).
fn wait_gone(d: &Daemon, name: &str, gone: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = d.ok("project.exec", json!({"name": name, "command": ["ps", "-o", "pid,args"]}));
        let out = ps["stdout"].as_str().unwrap().to_string();
        if !out.contains(gone) {
            return;
        }
        assert!(Instant::now() < deadline, "{gone} still running:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output_streams_while_the_command_runs(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("stream");
    d.ok("project.create", json!({"name": name}));
    let go = d.state.join("projects").join(&name).join("go");
    let mut c = d.client();
    // The command prints, then waits for a file only the test creates after it has seen
    // the first chunk: the chunk must arrive while the command still runs.
    c.send_line(
        &json!({"jsonrpc":"2.0","id":7,"method":"project.exec","params":{"name": name, "stream": true,
            "command":["sh","-c","echo first; echo err-first >&2; i=0; while [ ! -f go ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo second"]}})
        .to_string(),
    );
    let mut seen = String::new();
    while !seen.contains("first\n") {
        let m = c.read_msg();
        assert_eq!(m["method"], "exec.output", "a notification before any response: {m}");
        assert_eq!(m["params"]["id"], 7);
        if m["params"]["stream"] == "stdout" {
            seen.push_str(m["params"]["data"].as_str().unwrap());
        }
    }
    std::fs::write(&go, "").unwrap();
    let (resp, rest) = c.read_response();
    let more: String = rest
        .iter()
        .filter(|m| m["params"]["stream"] == "stdout")
        .map(|m| m["params"]["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(format!("{seen}{more}"), "first\nsecond\n");
    assert_eq!(resp["result"]["exit_code"], 0);
    assert_eq!(resp["result"]["path"], path.name(), "{resp}");
    assert_eq!(resp["result"]["stdout"], "", "streamed output is not repeated in the response");
}

fn cli_streams_live_and_forwards_stdin(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("stdin");
    d.ok("project.create", json!({"name": name}));
    let mut child = Command::new(berth_bin())
        .args(["--socket", d.socket.to_str().unwrap(), "exec", &name, "--", "sh", "-c", "tr a-z A-Z; echo done >&2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWORLD\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n");

    // Raw socket: stdin then EOF (cat ends).
    let r = d.ok("project.exec", json!({"name": name, "command": ["wc", "-c"], "stdin": "12345"}));
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "5");
    let b64 = base64::engine::general_purpose::STANDARD.encode([0u8, 0xff, 0x10]);
    let r = d.ok("project.exec", json!({"name": name, "command": ["wc", "-c"], "stdin_base64": b64}));
    assert_eq!(r["stdout"].as_str().unwrap().trim(), "3");
}

fn binary_output_travels_as_base64_and_the_cli_writes_the_bytes(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("bin");
    d.ok("project.create", json!({"name": name}));
    let cmd = json!(["printf", "a\\377\\376b"]);
    let r = d.ok("project.exec", json!({"name": name, "command": cmd}));
    assert_eq!(r["stdout_encoding"], "base64");
    let bytes = base64::engine::general_purpose::STANDARD.decode(r["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(bytes, b"a\xff\xfeb");
    let (resp, notes) = d.client().call_collect("project.exec", json!({"name": name, "command": cmd, "stream": true}));
    assert_eq!(resp["result"]["exit_code"], 0);
    let mut streamed = Vec::new();
    for n in notes {
        let data = n["params"]["data"].as_str().unwrap();
        match n["params"]["encoding"].as_str() {
            Some("base64") => streamed.extend(base64::engine::general_purpose::STANDARD.decode(data).unwrap()),
            _ => streamed.extend(data.as_bytes()),
        }
    }
    assert_eq!(streamed, b"a\xff\xfeb");
    let o = d.berth(&["exec", &name, "--", "printf", "a\\377\\376b"]);
    assert_eq!(o.stdout, b"a\xff\xfeb");
    // Multi-byte characters stay text even when streamed.
    let r = d.ok("project.exec", json!({"name": name, "command": ["printf", "h\\303\\251llo"]}));
    assert_eq!(r["stdout"], "héllo");
    assert!(r.get("stdout_encoding").is_none());
}

fn a_disconnected_client_gets_its_command_killed(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("hangup");
    d.ok("project.create", json!({"name": name}));
    {
        let mut c = d.client();
        c.send_line(
            &json!({"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name": name, "stream": true,
                "command":["sh","-c","echo up; sleep 417 & sleep 418"]}})
            .to_string(),
        );
        let first = c.read_msg();
        assert_eq!(first["params"]["data"], "up\n");
    } // connection dropped here
    wait_gone(&d, &name, "sleep 41");
}

fn output_beyond_the_cap_is_dropped_and_memory_stays_bounded(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config("[exec]\nmax_output = \"1MiB\"\n"));
    let name = d.name("flood");
    d.ok("project.create", json!({"name": name}));
    // 200 MB on stdout, then a marker on stderr: the command runs to its end.
    let cmd = json!(["sh", "-c", "yes abcdefghijklmnopqrstuvwxyz | head -c 200000000; echo end >&2; exit 3"]);
    let r = d.ok("project.exec", json!({"name": name, "command": cmd}));
    assert_eq!(r["truncated"], true);
    assert_eq!(r["exit_code"], 3, "the command ran to its end");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(r["stderr"], "end\n");
    // Streamed: what reaches the client is capped too.
    let (resp, notes) = d.client().call_collect("project.exec", json!({"name": name, "command": cmd, "stream": true}));
    assert_eq!(resp["result"]["truncated"], true);
    let streamed: usize = notes
        .iter()
        .filter(|n| n["params"]["stream"] == "stdout")
        .map(|n| n["params"]["data"].as_str().unwrap().len())
        .sum();
    assert_eq!(streamed, 1 << 20);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss_kib < 100 * 1024, "berthd peak RSS {rss_kib} KiB after 400 MB of output");
}

fn execs_in_one_project_run_concurrently_and_never_block_reads(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("conc");
    let other = d.name("other");
    d.ok("project.create", json!({"name": name}));
    // Four execs that each wait until all four have started: serialised execs would
    // never finish (each gives up after 30 s and exits 1).
    let script = "touch started.$0; i=0; while [ $(ls started.* | wc -l) -lt 4 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; [ $i -lt 300 ]";
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let socket = d.socket.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                c.call("project.exec", json!({"name": name, "command": ["sh", "-c", script, i.to_string()]}))
            })
        })
        .collect();
    // While a long exec holds the project, reads, another exec and another project's
    // lifecycle go through.
    let go = d.state.join("projects").join(&name).join("release");
    let mut long = d.client();
    long.send_line(
        &json!({"jsonrpc":"2.0","id":"long","method":"project.exec","params":{"name": name,
            "command":["sh","-c","while [ ! -f release ]; do sleep 0.1; done; echo released"]}})
        .to_string(),
    );
    for h in handles {
        let r: Value = h.join().unwrap();
        assert_eq!(r["result"]["exit_code"], 0, "concurrent exec: {r}");
    }
    assert_eq!(d.ok("project.status", json!({"name": name}))["running"], true);
    assert_eq!(d.ok("project.list", json!({})).as_array().unwrap().len(), 1);
    assert_eq!(d.ok("project.exec", json!({"name": name, "command": ["echo", "side"]}))["stdout"], "side\n");
    assert_eq!(d.ok("project.create", json!({"name": other}))["status"], "running");
    assert_eq!(d.ok("project.stop", json!({"name": other}))["status"], "stopped");
    std::fs::write(go, "").unwrap();
    assert_eq!(long.read_msg()["result"]["stdout"], "released\n");
}

fn stopping_a_project_fails_its_running_execs(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("stopme");
    d.ok("project.create", json!({"name": name}));
    let mut c = d.client();
    c.send_line(
        &json!({"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name": name, "stream": true,
            "command":["sh","-c","echo up; sleep 300"]}})
        .to_string(),
    );
    assert_eq!(c.read_msg()["params"]["data"], "up\n");
    d.ok("project.stop", json!({"name": name}));
    let (r, _) = c.read_response();
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("stopped or deleted") && msg.contains("it was killed"), "{r}");
}

#[test]
fn local_execution_has_the_same_semantics() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nmax_output = \"1KiB\"\n[local]\nenabled = true\n");
    let name = d.name("loc");
    d.ok("project.create", json!({"name": name}));
    let ws = d.state.join("projects").join(&name).canonicalize().unwrap();
    let r = d.ok(
        "project.exec",
        json!({"name": name, "local": true, "env": {"V": "1"},
        "command": ["sh", "-c", "pwd; echo $V; echo e >&2; id -u; echo made > f"]}),
    );
    assert_eq!(r["runtime"], "local");
    // As root, berthd runs local commands as `local.user` (nobody), never as root, and
    // they can write their workspace.
    let uid =
        if unsafe { libc::geteuid() } == 0 { "65534".to_string() } else { unsafe { libc::geteuid() }.to_string() };
    assert_eq!(r["stdout"], format!("{}\n1\n{uid}\n", ws.display()));
    assert_eq!(r["stderr"], "e\n");
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "made\n");
    // The container side can still write the same workspace.
    let c = d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "echo from-container >> f"]}));
    assert_eq!(c["exit_code"], 0, "{c}");
    assert_eq!(std::fs::read_to_string(ws.join("f")).unwrap(), "made\nfrom-container\n");
    // Timeout kills the process group.
    let t = d.ok(
        "project.exec",
        json!({"name": name, "local": true, "timeout": "500ms",
        "command": ["sh", "-c", "sleep 30 & sleep 31"]}),
    );
    assert_eq!(t["timed_out"], true);
    assert_eq!(t["exit_code"], 124);
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(!ps.lines().any(|l| l == "sleep 30" || l == "sleep 31"), "the group is gone");
    // Caps.
    let big =
        d.ok("project.exec", json!({"name": name, "local": true, "command": ["sh", "-c", "yes | head -c 100000"]}));
    assert_eq!(big["truncated"], true);
    assert_eq!(big["stdout"].as_str().unwrap().len(), 1024);
    // Streaming.
    let (resp, notes) = d.client().call_collect(
        "project.exec",
        json!({"name": name, "local": true, "stream": true,
        "command": ["echo", "live"]}),
    );
    assert_eq!(resp["result"]["runtime"], "local");
    assert_eq!(notes[0]["params"]["data"], "live\n");
    // Escaping workdirs are refused.
    for w in ["/etc", "/workspace/..", "/workspace/../../.."] {
        let e = d.rpc("project.exec", json!({"name": name, "local": true, "workdir": w, "command": ["pwd"]}));
        assert_eq!(e["error"]["data"]["kind"], "invalid_params", "{w}: {e}");
    }
    std::os::unix::fs::symlink("/etc", ws.join("escape")).unwrap();
    let e =
        d.rpc("project.exec", json!({"name": name, "local": true, "workdir": "/workspace/escape", "command": ["pwd"]}));
    assert_eq!(e["error"]["data"]["kind"], "invalid_params", "{e}");
}

#[test]
fn without_local_execution_nothing_runs_on_the_host() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[routing]\ncontainer_tools = [\"shell\"]\n");
    let name = d.name("noloc");
    d.ok("project.create", json!({"name": name}));
    // `local: true` is refused, naming the key that would allow it.
    let e =
        d.rpc("project.exec", json!({"name": name, "local": true, "command": ["touch", "/tmp/berth-must-not-exist"]}));
    assert_eq!(e["error"]["data"]["kind"], "forbidden", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("[local] enabled"), "{e}");
    assert!(!std::path::Path::new("/tmp/berth-must-not-exist").exists());
    // A tool not routed to the container still runs in the container.
    for tool in ["git", "shell"] {
        let r = d.ok("project.exec", json!({"name": name, "tool": tool, "command": ["cat", "/proc/1/cmdline"]}));
        assert_eq!(r["runtime"], "docker", "{tool}: {r}");
        assert!(r["stdout"].as_str().unwrap().contains("berth-agent"), "{tool} ran in the container: {r}");
    }
    // The CLI's --local says the same.
    let o = d.berth(&["exec", "--local", &name, "--", "true"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("[local] enabled"), "{o:?}");
}

#[test]
fn tools_are_routed_by_config() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[routing]\ncontainer_tools = [\"shell\", \"python\"]\n[local]\nenabled = true\n");
    let name = d.name("route");
    d.ok("project.create", json!({"name": name}));
    let r = d.ok("project.exec", json!({"name": name, "tool": "shell", "command": ["cat", "/proc/1/cmdline"]}));
    assert_eq!(r["runtime"], "docker");
    assert!(r["stdout"].as_str().unwrap().contains("berth-agent"), "ran in the container: {r}");
    // An unrouted tool runs on the host, in the workspace, and never as root.
    let ws = d.state.join("projects").join(&name).canonicalize().unwrap();
    let r = d.ok("project.exec", json!({"name": name, "tool": "git", "command": ["sh", "-c", "pwd; id -u"]}));
    assert_eq!(r["runtime"], "local");
    let mut lines = r["stdout"].as_str().unwrap().lines();
    assert_eq!(lines.next(), Some(ws.to_str().unwrap()), "{r}");
    let uid: u32 = lines.next().unwrap().parse().unwrap();
    assert!(uid != 0 || unsafe { libc::geteuid() } != 0, "a local command ran as root: {r}");
    let o = d.berth(&["exec", "--tool", "shell", "--json", &name, "--", "true"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runtime"], "docker");
}

fn commands_that_cannot_start_exit_127_or_126_with_the_reason_on_stderr(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("nostart");
    d.ok("project.create", json!({"name": name}));
    // (command, exit code, words of the reason)
    let rows = [
        (json!(["no-such-command"]), 127, "not found"),
        (json!(["/no/such/path"]), 127, "not found"),
        (json!(["/etc/passwd"]), 126, "not executable"),
    ];
    for (cmd, code, words) in rows {
        for stream in [false, true] {
            let (r, notes) =
                d.client().call_collect("project.exec", json!({"name": name, "command": cmd, "stream": stream}));
            let res = &r["result"];
            assert_eq!(res["exit_code"], code, "{cmd} {r}");
            assert_eq!(res["stdout"], "", "the engine's text is not the command's output: {r}");
            assert!(notes.is_empty(), "nothing streamed as output: {notes:?}");
            let why = res["exec_error"].as_str().unwrap_or_else(|| panic!("exec_error in {r}"));
            assert!(why.contains(words) && why.contains(cmd[0].as_str().unwrap()), "{why}");
        }
        let o = d.berth(&["exec", &name, "--", cmd[0].as_str().unwrap()]);
        assert_eq!(o.status.code(), Some(code), "{o:?}");
        assert!(o.stdout.is_empty(), "{o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(words), "{o:?}");
    }
    // A missing workdir is the request's fault.
    let e = d.rpc("project.exec", json!({"name": name, "command": ["ls"], "workdir": "/no/such/dir"}));
    assert_eq!(e["error"]["data"]["kind"], "invalid_params", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"/no/such/dir\""), "{e}");
    // A command that prints the engine's words itself is still just output.
    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "echo 'OCI runtime exec failed: x'; exit 126"]}),
    );
    assert_eq!((r["exit_code"].clone(), r["stdout"].clone()), (json!(126), json!("OCI runtime exec failed: x\n")));
    assert!(r.get("exec_error").is_none(), "{r}");
}

fn a_loud_command_is_killed_at_its_timeout_without_delay(path: ExecPath) {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&path.config(""));
    let name = d.name("loud");
    d.ok("project.create", json!({"name": name}));
    for stream in [false, true] {
        let started = Instant::now();
        let (r, _) = d.client().call_collect(
            "project.exec",
            json!({"name": name, "timeout": "1s", "stream": stream, "command": ["yes", "loud"]}),
        );
        assert_eq!(r["result"]["timed_out"], true, "{}", r.to_string().chars().take(300).collect::<String>());
        assert!(started.elapsed() < Duration::from_secs(8), "answered after {:?}", started.elapsed());
    }
    wait_gone(&d, &name, "yes loud");
}

on_both_paths!(
    output_streams_while_the_command_runs,
    cli_streams_live_and_forwards_stdin,
    binary_output_travels_as_base64_and_the_cli_writes_the_bytes,
    a_disconnected_client_gets_its_command_killed,
    output_beyond_the_cap_is_dropped_and_memory_stays_bounded,
    execs_in_one_project_run_concurrently_and_never_block_reads,
    stopping_a_project_fails_its_running_execs,
    commands_that_cannot_start_exit_127_or_126_with_the_reason_on_stderr,
    a_loud_command_is_killed_at_its_timeout_without_delay,
);
