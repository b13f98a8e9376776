//! Background processes (`process.*`) on the real engine: held by the container's
//! berth-agent, independent of any connection and of berthd itself; output kept in a
//! bounded buffer that says what it dropped; waits, input and kills of the whole tree.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// Polls `process.output` (on fresh connections) until stdout holds `needle`; returns
/// all of stdout read so far.
fn output_until(d: &Daemon, name: &str, id: &Value, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    let mut offset = 0;
    loop {
        let r = d.ok("process.output", json!({"name": name, "id": id, "stdout_offset": offset}));
        text.push_str(r["stdout"].as_str().unwrap());
        offset = r["stdout_offset"].as_u64().unwrap();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the output of process {id}: {text:?}");
        let _ = d.ok("process.wait", json!({"name": name, "id": id, "timeout": "50ms"}));
    }
}

fn in_container(d: &Daemon, name: &str, script: &str) -> Value {
    d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", script]}))
}

#[test]
fn a_background_server_outlives_its_client_and_berthd_then_dies_with_its_children() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let name = d.name("bg");
    d.ok("project.create", json!({"name": name}));
    // Spawned on a connection that then closes.
    let p = {
        let mut c = d.client();
        c.call(
            "process.spawn",
            json!({"name": name, "command": ["sh", "-c",
                "sleep 1000 & echo child $!; while :; do echo tick; sleep 0.1; done"]}),
        )["result"]
            .clone()
    };
    assert_eq!(p["running"], true, "{p}");
    let id = p["id"].clone();
    let text = output_until(&d, &name, &id, "tick");
    let child: u32 = text.lines().next().unwrap().strip_prefix("child ").unwrap().parse().unwrap();
    // Polled over two connections at once: both see it.
    let (mut a, mut b) = (d.client(), d.client());
    let ra = a.call("process.list", json!({"name": name}));
    let rb = b.call("process.output", json!({"name": name, "id": id}));
    assert_eq!(ra["result"][0]["id"], id, "{ra}");
    assert!(rb["result"]["stdout"].as_str().unwrap().contains("tick"), "{rb}");
    drop((a, b));
    // berthd dies hard and comes back: the process never noticed.
    d.kill9();
    d.spawn();
    let list = d.ok("process.list", json!({"name": name}));
    assert_eq!((list[0]["id"].clone(), list[0]["running"].clone()), (id.clone(), json!(true)), "{list}");
    let before = d.ok("process.output", json!({"name": name, "id": id}))["stdout_offset"].as_u64().unwrap();
    let after = output_until(&d, &name, &id, "tick");
    assert!(!after.is_empty() && before > 0);
    // Killed: TERM, and the tree goes with it, the child included.
    let k = d.ok("process.kill", json!({"name": name, "id": id}));
    assert_eq!((k["running"].clone(), k["signal"].clone()), (json!(false), json!("TERM")), "{k}");
    assert_eq!(k["exit_code"], 128 + 15, "{k}");
    assert!(k["ended"].is_string(), "{k}");
    let r = in_container(&d, &name, &format!("test -e /proc/{child} && echo alive || echo gone"));
    assert_eq!(r["stdout"], "gone\n", "the child {child} outlived the kill");
    // Ended processes stay listed.
    let list = d.ok("process.list", json!({"name": name}));
    assert_eq!((list[0]["running"].clone(), list[0]["exit_code"].clone()), (json!(false), json!(143)), "{list}");
}

#[test]
fn output_past_the_buffer_is_dropped_and_counted() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nmax_output = \"64KiB\"\n");
    let name = d.name("drop");
    d.ok("project.create", json!({"name": name}));
    let p = d.ok(
        "process.spawn",
        json!({"name": name, "command": ["sh", "-c", "head -c 1000000 /dev/zero | tr '\\000' a; echo err >&2"]}),
    );
    let w = d.ok("process.wait", json!({"name": name, "id": p["id"], "timeout": "30s"}));
    assert_eq!((w["running"].clone(), w["exit_code"].clone()), (json!(false), json!(0)), "{w}");
    let o = d.ok("process.output", json!({"name": name, "id": p["id"]}));
    let out = o["stdout"].as_str().unwrap();
    assert_eq!(out.len(), 64 * 1024);
    assert!(out.bytes().all(|b| b == b'a'));
    assert_eq!(o["dropped"], 1_000_000 - 64 * 1024, "{}", o["dropped"]);
    assert_eq!((o["stdout_offset"].as_u64(), o["stderr"].as_str()), (Some(1_000_000), Some("err\n")));
    // From where the kept output starts, nothing is dropped.
    let o = d.ok(
        "process.output",
        json!({"name": name, "id": p["id"], "stdout_offset": 1_000_000 - 10, "stderr_offset": 4}),
    );
    assert_eq!((o["stdout"].as_str().map(str::len), o["dropped"].as_u64()), (Some(10), Some(0)), "{o}");
    // Past the end is a bad offset.
    let r = d.rpc("process.output", json!({"name": name, "id": p["id"], "stdout_offset": 2_000_000}));
    assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{r}");
}

#[test]
fn follow_streams_output_until_the_end() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("follow");
    d.ok("project.create", json!({"name": name}));
    let p = d.ok(
        "process.spawn",
        json!({"name": name, "command": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done; echo bye >&2; exit 3"]}),
    );
    let (r, notes) = d.client().call_collect("process.output", json!({"name": name, "id": p["id"], "follow": true}));
    let text = |stream: &str| -> String {
        notes
            .iter()
            .filter(|n| n["method"] == "process.output" && n["params"]["stream"] == stream)
            .map(|n| n["params"]["data"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!((text("stdout"), text("stderr")), ("1\n2\n3\n".to_string(), "bye\n".to_string()), "{notes:?}");
    let r = &r["result"];
    assert_eq!((r["running"].clone(), r["exit_code"].clone()), (json!(false), json!(3)), "{r}");
    assert_eq!((r["stdout_offset"].as_u64(), r["stderr_offset"].as_u64()), (Some(6), Some(4)));
}

#[test]
fn wait_times_out_and_input_reaches_stdin() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("input");
    d.ok("project.create", json!({"name": name}));
    let p = d.ok(
        "process.spawn",
        json!({"name": name, "stdin": true, "env": {"GREETING": "got"},
            "command": ["sh", "-c", "read x; echo $GREETING $x; cat"]}),
    );
    let id = p["id"].clone();
    let w = d.ok("process.wait", json!({"name": name, "id": id, "timeout": "100ms"}));
    assert_eq!(w["running"], true, "{w}");
    d.ok("process.input", json!({"name": name, "id": id, "data": "hello\n"}));
    d.ok("process.input", json!({"name": name, "id": id, "data": "AAEC", "encoding": "base64", "close": true}));
    let w = d.ok("process.wait", json!({"name": name, "id": id}));
    assert_eq!((w["running"].clone(), w["exit_code"].clone()), (json!(false), json!(0)), "{w}");
    let o = d.ok("process.output", json!({"name": name, "id": id}));
    // Control bytes make the text travel as base64.
    assert_eq!(o["stdout_encoding"], "base64", "{o}");
    let out = base64::engine::general_purpose::STANDARD.decode(o["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(out, b"got hello\n\x00\x01\x02", "{o}");
    // Its stdin is closed now.
    let r = d.rpc("process.input", json!({"name": name, "id": id, "data": "late"}));
    assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{r}");
    // A process spawned without stdin takes none.
    let q = d.ok("process.spawn", json!({"name": name, "command": ["sleep", "30"]}));
    let r = d.rpc("process.input", json!({"name": name, "id": q["id"], "data": "x"}));
    assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{r}");
    // KILL ends it at once.
    let k = d.ok("process.kill", json!({"name": name, "id": q["id"], "signal": "KILL"}));
    assert_eq!((k["signal"].clone(), k["exit_code"].clone()), (json!("KILL"), json!(137)), "{k}");
}

#[test]
fn bad_process_requests_get_the_right_error() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("badproc");
    d.ok("project.create", json!({"name": name}));
    let n = name.as_str();
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("process.spawn", json!({"name": n, "command": []}), "invalid_params", "empty"),
        ("process.spawn", json!({"name": n, "command": ["no-such-program-x"]}), "invalid_params", "no-such-program-x"),
        ("process.spawn", json!({"name": n, "command": ["true"], "workdir": "/nope"}), "invalid_params", "/nope"),
        ("process.spawn", json!({"name": n, "command": ["true"], "workdir": "rel"}), "invalid_params", "rel"),
        ("process.output", json!({"name": n, "id": 999}), "not_found", "999"),
        ("process.wait", json!({"name": n, "id": 999, "timeout": "1s"}), "not_found", "999"),
        ("process.kill", json!({"name": n, "id": 999}), "not_found", "999"),
        ("process.kill", json!({"name": n, "id": 1, "signal": "NOPE"}), "invalid_params", "NOPE"),
        ("process.kill", json!({"name": n, "id": 1, "signal": 99}), "invalid_params", "99"),
        ("process.input", json!({"name": n, "id": 1}), "invalid_params", "data"),
        ("process.wait", json!({"name": n, "id": 1, "timeout": "soon"}), "invalid_params", "soon"),
        ("process.output", json!({"name": n, "id": -1}), "invalid_params", "-1"),
        ("process.list", json!({"name": "no-such-project-here"}), "not_found", "no-such-project-here"),
        ("process.list", json!({"name": n, "extra": 1}), "invalid_params", "extra"),
    ];
    for (method, params, kind, named) in cases {
        let r = d.rpc(method, params.clone());
        let got = r["error"]["data"]["kind"].as_str().unwrap_or_else(|| panic!("{method} {params} should fail: {r}"));
        assert_eq!(got, kind, "{method} {params}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{method} {params}: the message should name {named:?}: {msg}");
    }
    assert_eq!(d.ok("process.list", json!({"name": name})), json!([]), "a refused spawn left a process");
    // A stopped project has no processes, and stopping ends them.
    let p = d.ok("process.spawn", json!({"name": name, "command": ["sleep", "300"]}));
    d.ok("project.stop", json!({"name": name}));
    assert_eq!(d.ok("process.list", json!({"name": name})), json!([]));
    assert_eq!(d.err_kind("process.output", json!({"name": name, "id": p["id"]})), "not_found");
    // Ids are never handed out again, even after a restart of the container.
    let q = d.ok("process.spawn", json!({"name": name, "command": ["true"]}));
    assert!(q["id"].as_u64() > p["id"].as_u64(), "{p} then {q}");
}

#[test]
fn a_spawn_too_large_for_the_agent_is_refused_and_hurts_nothing_else() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("bigspawn");
    d.ok("project.create", json!({"name": name}));
    let mut running = d.running_exec(&name, "sleep 2; echo finished");
    // Many small variables: the agent frame grows past what one frame holds while the
    // request stays under server.max_line.
    let env: serde_json::Map<String, Value> = (0..85_000).map(|i| (format!("K{i:05}"), json!(""))).collect();
    let r = d.rpc("process.spawn", json!({"name": name, "command": ["true"], "env": env}));
    assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{}", &r.to_string()[..300.min(r.to_string().len())]);
    assert!(r["error"]["message"].as_str().unwrap().contains("bytes"), "{}", r["error"]);
    // The exec that was running is still running, on the same agent connection.
    let p = d.ok("process.spawn", json!({"name": name, "command": ["sh", "-c", "echo ok"]}));
    assert_eq!(d.ok("process.wait", json!({"name": name, "id": p["id"]}))["exit_code"], 0);
    let (r, notes) = running.read_response();
    assert_eq!(r["result"]["exit_code"], 0, "the running exec was hurt: {r}");
    assert!(notes.iter().any(|n| n["params"]["data"] == "finished\n"), "{notes:?}");
}

#[test]
fn projects_on_the_host_say_why_they_have_no_background_processes() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(&format!(
        "[docker]\nhost = \"unix:///nonexistent/berth-test.sock\"\ndefault_image = \"{IMAGE}\"\n[local]\nenabled = true\n"
    ));
    let name = d.name("hostproc");
    d.ok("project.create", json!({"name": name}));
    let r = d.rpc("process.spawn", json!({"name": name, "command": ["sleep", "1"]}));
    assert_eq!(r["error"]["data"]["kind"], "runtime_unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("berth-agent"), "{r}");
    for (m, p) in [
        ("process.list", json!({"name": name})),
        ("process.wait", json!({"name": name, "id": 1, "timeout": "1s"})),
        ("process.kill", json!({"name": name, "id": 1})),
    ] {
        assert_eq!(d.err_kind(m, p.clone()), "runtime_unavailable", "{m} {p}");
    }
}

#[test]
fn a_running_background_process_keeps_its_project_from_idle_stop() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nidle_stop_after = \"1s\"\n");
    let (busy, idle) = (d.name("a-busy"), d.name("b-idle"));
    d.ok("project.create", json!({"name": busy}));
    d.ok("project.create", json!({"name": idle}));
    let p = d.ok("process.spawn", json!({"name": busy, "command": ["sleep", "600"]}));
    // The janitor sweeps both in the same rounds; the idle one goes first to a stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.ok("project.get", json!({"name": idle}))["status"] != "stopped" {
        assert!(Instant::now() < deadline, "never idle-stopped; log:\n{}", d.log_text());
        let _ = d.ok("process.wait", json!({"name": busy, "id": p["id"], "timeout": "100ms"}));
    }
    assert_eq!(d.ok("project.get", json!({"name": busy}))["status"], "running");
    assert_eq!(d.ok("process.list", json!({"name": busy}))[0]["running"], true);
}
