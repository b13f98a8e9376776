//! Supervision, degraded mode and the janitor, against the real binaries.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn a_panicking_project_actor_is_restarted_and_others_do_not_notice() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let a = d.name("crashy");
    let b = d.name("calm");
    d.ok("project.create", json!({"name": a}));
    d.ok("project.create", json!({"name": b}));

    // A long exec in b runs across a's crash.
    let mut long = d.client();
    long.send_line(
        &json!({"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name": b, "command":["sh","-c","sleep 1; echo done"]}})
            .to_string(),
    );
    assert_eq!(d.ok("debug.panic", json!({"name": a}))["restarted"], true);
    // The supervisor restarts the actor; it rebuilds from the registry and the engine.
    let r = d.ok("project.exec", json!({"name": a, "command": ["echo", "alive"]}));
    assert_eq!(r["stdout"], "alive\n");
    assert_eq!(d.ok("project.get", json!({"name": a}))["status"], "running");
    assert_eq!(d.ok("project.stop", json!({"name": a}))["status"], "stopped");
    let done = long.read_msg();
    assert_eq!(done["result"]["stdout"], "done\n", "other project's exec unaffected: {done}");
    assert!(d.log_text().contains("project actor failed; restarting it"));
}

/// A daemon pointed at an engine socket that does not exist, with `extra` config.
fn without_engine(extra: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-docker.sock");
    let d = Daemon::start(&format!("[docker]\nhost = \"unix://{}\"\n{extra}", missing.display()));
    (dir, d)
}

#[test]
fn without_an_engine_and_without_local_execution_nothing_runs() {
    let (_dir, d) = without_engine("");
    let info = d.ok("daemon.info", json!({}));
    assert_eq!(info["docker"]["available"], false);
    assert_eq!(info["runtime"], "docker", "nothing runs on the host: {info}");
    assert!(d.log_text().contains("NO CONTAINER ENGINE"), "berthd says it loudly at start-up");
    let name = d.name("offline");
    assert_eq!(d.ok("project.create", json!({"name": name}))["status"], "created");
    let e = d.rpc("project.exec", json!({"name": name, "command": ["sh", "-c", "touch ran"]}));
    assert_eq!(e["error"]["data"]["kind"], "runtime_unavailable", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("[local] enabled = false"), "{e}");
    assert_eq!(d.err_kind("project.exec", json!({"name": name, "local": true, "command": ["true"]})), "forbidden");
    assert!(!d.state.join("projects").join(&name).join("ran").exists());
}

#[test]
fn without_an_engine_projects_are_created_and_exec_runs_locally() {
    // Needs no engine at all: points berthd at a socket that does not exist.
    let (_dir, d) = without_engine("[local]\nenabled = true\n");
    let info = d.ok("daemon.info", json!({}));
    assert_eq!(info["runtime"], "local");
    assert_eq!(info["docker"]["available"], false);
    assert!(info["docker"].get("version").is_none());
    assert!(d.log_text().contains("ON THIS HOST"), "berthd says it loudly at start-up");

    let name = d.name("offline");
    let p = d.ok("project.create", json!({"name": name}));
    assert_eq!(p["status"], "created");
    let ws = d.state.join("projects").join(&name);
    assert!(ws.is_dir());

    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "pwd; echo local > f.txt; echo e >&2; exit 4"]}),
    );
    assert_eq!(r["runtime"], "local");
    assert_eq!(r["exit_code"], 4);
    assert_eq!(r["stdout"].as_str().unwrap().trim(), ws.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(r["stderr"], "e\n");
    assert_eq!(std::fs::read_to_string(ws.join("f.txt")).unwrap(), "local\n");

    // A workdir outside the workspace is refused.
    let e = d.rpc("project.exec", json!({"name": name, "command": ["pwd"], "workdir": "/etc"}));
    assert_eq!(e["error"]["data"]["kind"], "invalid_params");
    assert!(e["error"]["message"].as_str().unwrap().contains("\"/etc\""));

    // The CLI says the same.
    let o = d.berth(&["exec", &name, "--", "sh", "-c", "echo via-cli"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "via-cli\n");
    assert!(d.berth_ok(&["info"]).contains("local"));
    let st = d.ok("project.status", json!({"name": name}));
    assert_eq!(st["running"], false);
    assert!(st["container_id"].is_null());
    assert_eq!(d.err_kind("project.start", json!({"name": name})), "runtime_unavailable");
}

#[test]
fn reconcile_reports_what_changed_behind_berths_back() {
    if !docker_available() {
        return;
    }
    // A long interval: only the explicit reconcile below runs.
    let d = Daemon::start("[janitor]\nreconcile_interval = \"1h\"\n");
    let stopped = d.name("stopped");
    let removed = d.name("removed");
    d.ok("project.create", json!({"name": stopped}));
    d.ok("project.create", json!({"name": removed}));
    docker(&["stop", "-t", "1", &format!("berth-{stopped}")]);
    docker(&["rm", "-f", &format!("berth-{removed}")]);

    let out = d.berth_ok(&["reconcile"]);
    assert!(out.contains(&format!("{stopped}: running -> stopped")), "{out}");
    assert!(out.contains(&format!("{removed}: running -> stopped")), "{out}");
    assert_eq!(d.ok("project.get", json!({"name": stopped}))["status"], "stopped");
    assert_eq!(d.ok("janitor.reconcile", json!({}))["changed"], json!([]), "converged");

    // The engine wins on running/stopped: started behind berth's back.
    docker(&["start", &format!("berth-{stopped}")]);
    let changed = d.ok("janitor.reconcile", json!({}))["changed"].clone();
    assert_eq!(changed[0]["name"], stopped.as_str());
    assert_eq!(changed[0]["to"], "running");
}

#[test]
fn the_janitor_reconciles_on_its_own_schedule() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nreconcile_interval = \"1s\"\n");
    let name = d.name("sched");
    d.ok("project.create", json!({"name": name}));
    docker(&["stop", "-t", "1", &format!("berth-{name}")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.ok("project.get", json!({"name": name}))["status"] != "stopped" {
        assert!(Instant::now() < deadline, "janitor never reconciled; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn stale_projects_are_archived_by_last_use() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nstale_after = \"2s\"\narchive_interval = \"1h\"\n");
    let name = d.name("stale");
    d.ok("project.create", json!({"name": name}));
    d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "echo keep > f"]}));
    // Just used: not stale.
    assert_eq!(d.ok("janitor.archive_stale", json!({}))["archived"], json!([]));
    // Reads are not activity; once 2 s pass without activity the project is archived.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        d.ok("project.get", json!({"name": name}));
        let archived = d.ok("janitor.archive_stale", json!({}))["archived"].clone();
        if archived == json!([name]) {
            break;
        }
        assert_eq!(archived, json!([]));
        assert!(Instant::now() < deadline, "never archived");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.err_kind("project.get", json!({"name": name})), "not_found");
    assert!(docker_inspect(&format!("berth-{name}"), "{{.Id}}").is_none(), "container removed");
    let entry = std::fs::read_dir(d.state.join("archive"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}-")))
        .expect("archived workspace");
    assert_eq!(std::fs::read_to_string(entry.join("f")).unwrap(), "keep\n");
}

#[test]
fn sigterm_answers_in_flight_requests_then_exits_zero() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("[server]\nshutdown_grace = \"1s\"\n");
    let name = d.name("inflight");
    d.ok("project.create", json!({"name": name}));
    let mut c = d.client();
    c.send_line(
        &json!({"jsonrpc":"2.0","id":9,"method":"project.exec","params":{"name": name, "stream": true,
            "command":["sh","-c","echo up; sleep 300"]}})
        .to_string(),
    );
    assert_eq!(c.read_msg()["params"]["data"], "up\n");
    assert_eq!(d.terminate(), 0, "clean exit; log:\n{}", d.log_text());
    // The exec outlived the grace period: it was failed with an answer, not dropped.
    let r = c.read_msg();
    assert_eq!(r["id"], 9);
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("shutting down"), "{r}");
    // Its process is gone; the container is not.
    let ps = docker(&["exec", &format!("berth-{name}"), "ps", "-o", "args"]);
    assert!(!ps.contains("sleep 300"), "{ps}");
    assert_eq!(docker_inspect(&format!("berth-{name}"), "{{.State.Running}}").unwrap(), "true");
}

fn wait_actors(d: &Daemon, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while d.ok("daemon.info", json!({}))["project_actors"] != want {
        assert!(Instant::now() < deadline, "project actors never became {want}; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_project_actors_retire_but_never_under_a_running_exec() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nretire_actors_after = \"300ms\"\n");
    let idle = d.name("idle");
    let busy = d.name("busy");
    d.ok("project.create", json!({"name": idle}));
    d.ok("project.create", json!({"name": busy}));
    // busy's exec runs until it is stopped.
    let go = d.state.join("projects").join(&busy).join("go");
    let mut long = d.client();
    long.send_line(
        &json!({"jsonrpc":"2.0","id":1,"method":"project.exec","params":{"name": busy, "stream": true,
            "command":["sh","-c","echo up; while [ ! -f go ]; do sleep 0.05; done; echo done"]}})
        .to_string(),
    );
    assert_eq!(long.read_msg()["params"]["data"], "up\n");
    // idle's actor retires; busy's stays, several retire rounds later, because of its exec.
    wait_actors(&d, 1);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(d.ok("daemon.info", json!({}))["project_actors"], 1, "busy's actor must not retire");
    }
    // The survivor still holds the exec: stopping busy fails it through the actor's cancel
    // token (a fresh actor could not; the exec would just die with its container).
    d.ok("project.stop", json!({"name": busy}));
    let (done, _) = long.read_response();
    assert!(done["error"]["message"].as_str().is_some_and(|m| m.contains("stopped or deleted")), "{done}");
    assert!(!go.exists());
    // Retired projects are served as before by a fresh actor, rebuilt from registry + engine.
    assert_eq!(d.ok("project.get", json!({"name": idle}))["status"], "running");
    let r = d.ok("project.exec", json!({"name": idle, "command": ["echo", "back"]}));
    assert_eq!(r["stdout"], "back\n");
    assert_eq!(d.ok("project.stop", json!({"name": idle}))["status"], "stopped");
    wait_actors(&d, 0);
    assert_eq!(d.ok("project.start", json!({"name": idle}))["status"], "running");
    assert!(d.log_text().contains("project actor retired"));
}

#[test]
fn requests_that_arrive_while_an_actor_retires_are_served_by_its_successor() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nretire_actors_after = \"off\"\n");
    let name = d.name("handoff");
    d.ok("project.create", json!({"name": name}));
    let before = d.ok("daemon.info", json!({}))["project_actor_handoffs"].as_u64().unwrap();
    // The actor's retirement takes 1.5 s; everything sent meanwhile waits for it.
    assert_eq!(d.ok("debug.retire", json!({"name": name, "delay_ms": 1500}))["parked"], true);
    let started = Instant::now();
    let workers: Vec<_> = (0..5)
        .map(|i| {
            let (socket, name) = (d.socket.clone(), name.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).unwrap();
                let r = c.call("project.exec", json!({"name": name, "command": ["echo", format!("n{i}")]}));
                (i, r)
            })
        })
        .collect();
    for w in workers {
        let (i, r) = w.join().unwrap();
        assert_eq!(r["result"]["stdout"], format!("n{i}\n"), "{r}");
    }
    assert!(started.elapsed() >= Duration::from_millis(1000), "the requests did not wait for the retirement");
    let info = d.ok("daemon.info", json!({}));
    assert!(info["project_actor_handoffs"].as_u64().unwrap() >= before + 5, "{info}");
    assert_eq!(info["project_actors"], 1, "one actor per project, never two: {info}");
}

#[test]
fn running_execs_stay_cancellable_after_their_actor_panics_and_restarts() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("cancel");
    d.ok("project.create", json!({"name": name}));
    let mut c = d.running_exec(&name, "sleep 300");
    assert_eq!(d.ok("debug.panic", json!({"name": name}))["restarted"], true);
    // The successor's stop fails the exec its predecessor leased.
    d.ok("project.stop", json!({"name": name}));
    let (r, _) = c.read_response();
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("stopped or deleted"), "{r}");
}

#[test]
fn a_busy_actor_is_not_retired() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[janitor]\nretire_actors_after = \"100ms\"\n");
    let name = d.name("busy");
    d.ok("project.create", json!({"name": name}));
    // Busy for 1.5 s, as in a long image pull; the supervisor looks for idle actors every
    // 100 ms meanwhile.
    d.ok("debug.busy", json!({"name": name, "delay_ms": 1500}));
    std::thread::sleep(Duration::from_millis(600)); // time for several retirement rounds to pass
                                                    // A request sent now waits for the busy actor itself; it is not parked for a
                                                    // retirement that was asked of a busy actor.
    let p = d.ok("project.start", json!({"name": name}));
    assert_eq!(p["status"], "running");
    assert_eq!(d.ok("daemon.info", json!({}))["project_actor_handoffs"], 0, "the busy actor was asked to retire");
}
