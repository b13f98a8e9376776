//! Every method of the socket protocol over the raw socket, and its error kinds.

mod common;

use common::*;
use serde_json::json;

#[test]
fn every_method_over_the_raw_socket() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("rpc");

    let info = d.ok("daemon.info", json!({}));
    assert_eq!(info["runtime"], "docker");
    assert_eq!(info["projects"], 0);

    let p = d
        .ok("project.create", json!({"name": name, "env": {"K": "V"}, "ports": {"8080": "18932"}, "description": "d"}));
    assert_eq!(p["status"], "running");
    assert_eq!(p["ports"]["8080/tcp"], "18932");
    for key in ["name", "description", "image", "created", "last_used", "status", "env", "ports", "path"] {
        assert!(p.get(key).is_some(), "Project has {key}: {p}");
    }
    // RFC 3339 times.
    assert!(p["created"].as_str().unwrap().ends_with('Z'), "{p}");

    let same = d.ok("project.get_or_create", json!({"name": name, "image": "ignored:1"}));
    assert_eq!(same["created"], p["created"], "get_or_create returns the existing project");
    assert_eq!(same["image"], IMAGE);
    assert_eq!(d.ok("project.get", json!({"name": name}))["name"], name.as_str());
    assert_eq!(d.ok("project.list", json!({})).as_array().unwrap().len(), 1);
    assert_eq!(d.ok("daemon.info", json!({}))["projects"], 1);

    let st = d.ok("project.status", json!({"name": name}));
    assert_eq!(st["running"], true);
    assert!(st["container_id"].as_str().unwrap().len() >= 12);
    assert!(st.get("created").is_some() && st.get("image").is_some());

    let stopped = d.ok("project.stop", json!({"name": name}));
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(d.ok("project.status", json!({"name": name}))["running"], false);
    assert_eq!(d.ok("project.start", json!({"name": name}))["status"], "running");

    let path = d.ok("project.path", json!({"name": name}));
    assert_eq!(path["path"], d.state.join("projects").join(&name).to_str().unwrap());

    // Buffered exec.
    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "echo $K $X; cat; echo e >&2; exit 3"], "env": {"X": "y"}, "stdin": "piped\n"}),
    );
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "V y\npiped\n");
    assert_eq!(r["stderr"], "e\n");
    assert_eq!(r["timed_out"], false);
    assert_eq!(r["truncated"], false);
    assert_eq!(r["runtime"], "docker");
    assert!(r["duration_ms"].as_u64().is_some());

    // Streamed exec: notifications first, then the response.
    let mut c = d.client();
    let (resp, notes) = c.call_collect(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "echo a; echo b >&2"], "stream": true}),
    );
    assert_eq!(resp["result"]["exit_code"], 0);
    let mut out = String::new();
    let mut err = String::new();
    for n in &notes {
        assert_eq!(n["method"], "exec.output");
        assert!(n.get("id").is_none(), "notifications carry no id");
        assert_eq!(n["params"]["id"], resp["id"]);
        match n["params"]["stream"].as_str().unwrap() {
            "stdout" => out.push_str(n["params"]["data"].as_str().unwrap()),
            "stderr" => err.push_str(n["params"]["data"].as_str().unwrap()),
            s => panic!("stream {s}"),
        }
    }
    assert_eq!((out.as_str(), err.as_str()), ("a\n", "b\n"));

    let logs = d.ok("project.logs", json!({"name": name, "tail": 10}));
    assert!(logs["logs"].is_string());

    let rec = d.ok("janitor.reconcile", json!({}));
    assert_eq!(rec["changed"], json!([]), "nothing to change");
    let arch = d.ok("janitor.archive_stale", json!({}));
    assert_eq!(arch["archived"], json!([]), "nothing is 30 days old");

    assert_eq!(d.ok("project.delete", json!({"name": name, "purge": true})), json!({"purged": true}));
    assert_eq!(d.err_kind("project.get", json!({"name": name})), "not_found");
}

#[test]
fn error_kinds_and_messages() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("err");
    let cases = [
        ("project.get", json!({"name": name}), "not_found"),
        ("project.start", json!({"name": name}), "not_found"),
        ("project.stop", json!({"name": name}), "not_found"),
        ("project.delete", json!({"name": name}), "not_found"),
        ("project.status", json!({"name": name}), "not_found"),
        ("project.logs", json!({"name": name}), "not_found"),
        ("project.path", json!({"name": name}), "not_found"),
        ("project.get", json!({"name": "../x"}), "invalid_name"),
        ("project.create", json!({"name": "UPPER"}), "invalid_name"),
        ("project.create", json!({"name": "ok", "bogus": 1}), "invalid_params"),
        ("project.exec", json!({"name": name, "command": []}), "invalid_params"),
        ("project.exec", json!({"name": name, "command": ["x"], "timeout": "-5s"}), "invalid_params"),
        ("project.logs", json!({"name": name, "tail": -1}), "invalid_params"),
        ("no.such", json!({}), "method_not_found"),
    ];
    for (method, params, kind) in cases {
        let r = d.rpc(method, params.clone());
        assert_eq!(r["error"]["data"]["kind"], kind, "{method} {params}: {r}");
        assert!(!r["error"]["message"].as_str().unwrap().is_empty());
        assert!(r["error"]["code"].is_i64());
    }
    // A bad param wins over a missing project: nothing is looked up first.
    assert_eq!(
        d.err_kind("project.exec", json!({"name": name, "command": ["ls"], "workdir": "relative"})),
        "invalid_params"
    );
    // Messages name the bad value.
    let r = d.rpc("project.get", json!({"name": "Bad/Name"}));
    assert!(r["error"]["message"].as_str().unwrap().contains("\"Bad/Name\""), "{r}");
    let r = d.rpc("project.exec", json!({"name": name, "command": ["ls"], "timeout": "soon"}));
    assert!(r["error"]["message"].as_str().unwrap().contains("\"soon\""), "{r}");

    // Parse errors answer with id null, and the connection keeps serving.
    let mut c = d.client();
    c.send_line("{not json");
    let m = c.read_msg();
    assert_eq!(m["error"]["data"]["kind"], "parse_error");
    assert_eq!(m["error"]["code"], -32700);
    assert!(m["id"].is_null());
    assert_eq!(c.call("daemon.info", json!({}))["result"]["runtime"], "docker");

    d.ok("project.create", json!({"name": name}));
    assert_eq!(d.err_kind("project.create", json!({"name": name})), "already_exists");
}

#[test]
fn several_requests_in_flight_on_one_connection() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("many");
    d.ok("project.create", json!({"name": name}));
    let mut c = d.client();
    // A slow exec first, then a quick one: the quick one's answer comes back first.
    c.send_line(
        &json!({"jsonrpc":"2.0","id":"slow","method":"project.exec","params":{"name": name, "command":["sleep","2"]}})
            .to_string(),
    );
    c.send_line(&json!({"jsonrpc":"2.0","id":"fast","method":"project.status","params":{"name": name}}).to_string());
    let first = c.read_msg();
    assert_eq!(first["id"], "fast", "responses come back as they finish: {first}");
    let second = c.read_msg();
    assert_eq!(second["id"], "slow");
    assert_eq!(second["result"]["exit_code"], 0);
}
