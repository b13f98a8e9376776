//! berth-agent on the real engine: execs in about a millisecond through the agent that
//! runs as every container's PID 1, in any image; its trust checks; and what happens when
//! the agent, berthd or the container goes away. (The exec semantics themselves are the
//! exec tests, run on both paths.)

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn ps(d: &Daemon, name: &str) -> String {
    let r = d.ok("project.exec", json!({"name": name, "command": ["ps", "-o", "pid,args"]}));
    r["stdout"].as_str().unwrap().to_string()
}

#[test]
fn execs_run_through_the_agent_and_status_says_it_answers() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("ag");
    d.ok("project.create", json!({"name": name}));
    let r = d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "echo $$; cat /proc/1/cmdline"]}));
    assert_eq!(r["path"], "agent", "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("/.berth/berth-agent"), "{r}");
    assert_eq!(d.ok("project.status", json!({"name": name}))["agent"], true);
    // The engine's exec path says so, and has no agent.
    let e = Daemon::start("[exec]\nagent = false\n");
    let other = e.name("noag");
    e.ok("project.create", json!({"name": other}));
    assert_eq!(e.ok("project.exec", json!({"name": other, "command": ["true"]}))["path"], "exec");
    assert_eq!(e.ok("project.status", json!({"name": other}))["agent"], false);
}

#[test]
fn an_image_without_a_shell_runs_execs() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("noshell");
    let image = noshell_image();
    let p = d.ok("project.create", json!({"name": name, "image": image}));
    assert_eq!(p["status"], "running");
    let r = d.ok("project.exec", json!({"name": name, "command": ["/busybox", "echo", "no shell needed"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("no shell needed\n"), Some("agent")), "{r}");
    let r = d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "true"]}));
    assert_eq!(r["exit_code"], 127, "{r}");
}

#[test]
fn a_timeout_kills_a_tree_that_left_with_setsid_and_double_forks() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("tree");
    d.ok("project.create", json!({"name": name}));
    let r = d.ok(
        "project.exec",
        json!({"name": name, "timeout": "1s",
            "command": ["sh", "-c", "setsid sleep 1001 & (sleep 1002 &); (setsid sh -c 'sleep 1004 &' &); sleep 1003"]}),
    );
    assert_eq!((r["timed_out"].clone(), r["path"].clone()), (json!(true), json!("agent")), "{r}");
    let left = ps(&d, &name);
    for s in ["sleep 1001", "sleep 1002", "sleep 1003", "sleep 1004"] {
        assert!(!left.contains(s), "{s} survived the timeout:\n{left}");
    }
}

#[test]
fn the_agent_killed_mid_exec_fails_that_exec_and_the_next_one_works() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("agkill");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    let mut c = d.running_exec(&name, "sleep 300");
    // SIGKILL to the agent from outside (the host): the container goes with it.
    let pid = container_pid(&container);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (r, _) = c.read_response();
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
    // The next exec works (the container is restarted or the exec path used).
    let params = json!({"name": name, "command": ["echo", "again"]});
    d.exec_until(params, "no exec worked after the agent died", |r| r["stdout"] == "again\n");
}

#[test]
fn after_a_kill_9_of_berthd_its_execs_are_killed_and_the_agent_path_resumes() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let name = d.name("resume");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    let started = docker_inspect(&container, "{{.State.StartedAt}}").unwrap();
    let _c = d.running_exec(&name, "sleep 1201");
    d.kill9();
    // Its client (berthd) is gone, so the command is killed: nothing outlives a dead berthd.
    let deadline = Instant::now() + Duration::from_secs(10);
    while docker(&["top", &container, "-o", "pid,args"]).contains("sleep 1201") {
        assert!(Instant::now() < deadline, "the command outlived berthd");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.spawn();
    let r = d.ok("project.exec", json!({"name": name, "command": ["echo", "back"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("back\n"), Some("agent")), "{r}");
    assert_eq!(docker_inspect(&container, "{{.State.StartedAt}}").unwrap(), started, "the container was not restarted");
}

#[test]
fn a_docker_restart_of_the_container_is_survived() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("restart");
    d.ok("project.create", json!({"name": name}));
    assert_eq!(d.ok("project.exec", json!({"name": name, "command": ["true"]}))["path"], "agent");
    docker(&["restart", "-t", "1", &format!("berth-{name}")]);
    let params = json!({"name": name, "command": ["echo", "hi"]});
    let r = d.exec_until(params, "the agent path never came back", |r| r["path"] == "agent");
    assert_eq!(r["stdout"], "hi\n");
}

#[test]
fn a_planted_symlink_or_fake_listener_never_reaches_another_project() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let (evil, victim) = (d.name("evil"), d.name("victim"));
    d.ok("project.create", json!({"name": evil}));
    d.ok("project.create", json!({"name": victim}));
    let victim_sock = d.state.join("run").join(&victim).join("agent.sock");
    // Inside `evil`: its agent socket becomes a symlink to the victim's agent (by host
    // path, which berthd would resolve on the host).
    let plant = format!("rm -f /.berth/run/agent.sock && ln -s {} /.berth/run/agent.sock", victim_sock.display());
    assert_eq!(d.ok("project.exec", json!({"name": evil, "command": ["sh", "-c", plant]}))["exit_code"], 0);
    // A fresh berthd has no connection cached: it must refuse the link.
    d.kill9();
    d.spawn();
    let r = d.ok("project.exec", json!({"name": evil, "command": ["sh", "-c", "hostname"]}));
    assert_eq!(r["path"], "exec", "the planted link was not followed: {r}");
    let evil_host = r["stdout"].as_str().unwrap().to_string();
    let v = d.ok("project.exec", json!({"name": victim, "command": ["hostname"]}));
    assert_ne!(v["stdout"].as_str().unwrap(), evil_host, "ran in the victim's container");

    // A listener of its own in `evil` (a second agent, which is not the container's
    // PID 1) is refused: berthd never takes its answers.
    let fake = "rm -f /.berth/run/agent.sock; /.berth/berth-agent --socket /.berth/run/agent.sock >/dev/null 2>&1 &";
    d.ok("project.exec", json!({"name": evil, "command": ["sh", "-c", fake]}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.state.join("run").join(&evil).join("agent.sock").exists() {
        assert!(Instant::now() < deadline, "the fake listener never bound");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    d.spawn();
    let r = d.ok("project.exec", json!({"name": evil, "command": ["true"]}));
    assert_eq!(r["path"], "exec", "the fake listener was refused: {r}");
    assert!(d.log_text().contains("refused a forged agent socket"), "refusals are logged");
}

#[test]
fn the_container_log_stays_small_after_thousands_of_execs() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("quiet");
    d.ok("project.create", json!({"name": name}));
    let mut c = d.client();
    for i in 0..2000 {
        let r = c.call("project.exec", json!({"name": name, "command": ["echo", format!("line {i}")]}));
        assert_eq!(r["result"]["path"], "agent", "{r}");
    }
    let logs = d.ok("project.logs", json!({"name": name}))["logs"].as_str().unwrap().len();
    assert!(logs < 1024, "the container log grew to {logs} bytes");
}

#[test]
fn a_container_made_before_the_agent_keeps_the_exec_path_until_it_is_re_created() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("[exec]\nagent = false\n");
    let name = d.name("legacy");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    assert_eq!(docker_inspect(&container, "{{.HostConfig.Init}}").unwrap(), "true", "made the old way");
    // The same state dir, now with the agent on.
    d.kill9();
    std::fs::write(&d.config, format!("[docker]\ndefault_image = \"{IMAGE}\"\n")).unwrap();
    d.spawn();
    let r = d.ok("project.exec", json!({"name": name, "command": ["echo", "old"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("old\n"), Some("exec")), "{r}");
    assert_eq!(d.ok("project.status", json!({"name": name}))["agent"], false);
    // Re-created (here: removed behind berth's back), it moves to the agent.
    docker(&["rm", "-f", &container]);
    let r = d.ok("project.exec", json!({"name": name, "command": ["echo", "new"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("new\n"), Some("agent")), "{r}");
}

#[test]
fn the_agent_exits_cleanly_on_stop() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("stopclean");
    d.ok("project.create", json!({"name": name}));
    // A command running, as when a user stops a busy project.
    let mut c = d.client();
    c.send_line(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
            "params": {"name": name, "command": ["sleep", "300"]}})
        .to_string(),
    );
    let container = format!("berth-{name}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !docker(&["top", &container, "-o", "pid,args"]).contains("sleep 300") {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.ok("project.stop", json!({"name": name}));
    // The agent handled SIGTERM and exited 0 itself: not killed after the stop grace (137).
    assert_eq!(docker_inspect(&container, "{{.State.ExitCode}}").unwrap(), "0");
    let (r, _) = c.read_response();
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
}

#[test]
fn concurrent_first_execs_share_one_connection_to_the_agent() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let name = d.name("race");
    d.ok("project.create", json!({"name": name}));
    // A fresh berthd has no connection yet: the first execs race to make it.
    d.kill9();
    d.spawn();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (socket, name) = (d.socket.clone(), name.clone());
            std::thread::spawn(move || {
                Client::connect(&socket)
                    .unwrap()
                    .call("project.exec", json!({"name": name, "command": ["sh", "-c", format!("sleep 1; echo {i}")]}))
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let r = w.join().unwrap();
        assert_eq!(r["result"]["stdout"], format!("{i}\n"), "{r}");
        assert_eq!(r["result"]["path"], "agent", "{r}");
    }
}

#[test]
fn a_command_too_large_for_one_frame_takes_the_exec_path_and_harms_no_other() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[server]\nmax_line = \"4MiB\"\n");
    let name = d.name("large");
    d.ok("project.create", json!({"name": name}));
    let mut other = d.client();
    other.send_line(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
            "params": {"name": name, "command": ["sh", "-c", "sleep 2; echo survived"]}})
        .to_string(),
    );
    // 1.2 MB of arguments: a request the daemon takes, more than one agent frame holds.
    let mut argv = vec!["true".to_string()];
    argv.extend(std::iter::repeat_n("a".repeat(60_000), 20));
    let r = d.ok("project.exec", json!({"name": name, "command": argv}));
    assert_eq!((r["exit_code"].clone(), r["path"].clone()), (json!(0), json!("exec")), "{}", r["stderr"]);
    let (o, _) = other.read_response();
    assert_eq!(o["result"]["stdout"], "survived\n", "{o}");
    assert_eq!(o["result"]["path"], "agent");
}

#[test]
fn a_container_whose_socket_path_was_spoiled_is_kept_and_its_agent_comes_back() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("spoiled");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    let id = docker_inspect(&container, "{{.Id}}").unwrap();
    // Something in the container leaves a directory where the agent's socket goes, and a
    // file of its own in the container's root.
    let spoil = "echo mine > /root/keep; rm -f /.berth/run/agent.sock; mkdir /.berth/run/agent.sock";
    assert_eq!(d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", spoil]}))["exit_code"], 0);
    d.ok("project.stop", json!({"name": name}));
    let r = d.ok("project.exec", json!({"name": name, "command": ["cat", "/root/keep"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("mine\n"), Some("agent")), "{r}");
    assert_eq!(docker_inspect(&container, "{{.Id}}").unwrap(), id, "the same container");
}

#[test]
fn a_non_root_berthd_in_the_engines_group_uses_the_agent_too() {
    if !docker_available() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: a_non_root_berthd_in_the_engines_group_uses_the_agent_too needs root to run berthd as another user");
        return;
    }
    let engine_gid =
        std::fs::metadata("/var/run/docker.sock").map(|m| std::os::unix::fs::MetadataExt::gid(&m)).unwrap();
    let mut d = Daemon::prepare("");
    d.spawn_as(4747, engine_gid);
    let name = d.name("user");
    d.ok("project.create", json!({"name": name}));
    let r =
        d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "id -u; touch /workspace/by-container"]}));
    assert_eq!((r["stdout"].as_str(), r["path"].as_str()), (Some("0\n"), Some("agent")), "{r}");
    let ws = d.state.join("projects").join(&name);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&ws).unwrap()), 4747, "the user's workspace");
    assert!(ws.join("by-container").exists());
}
