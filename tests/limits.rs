//! Limits that hold: what a client may ask of a container (never past the operator's
//! ceilings), where ports are published, who can reach the state dir, the daemon-wide
//! cap on buffered output, and timeouts that fire while a client does not read.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn clients_can_tighten_limits_but_never_loosen_them() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start(
        "[container]\nprofile = \"strict\"\nmemory = \"256MiB\"\nmax_memory = \"512MiB\"\nmax_pids_limit = 2048\nmax_cpus = 2.0\ncpus = 1.0\n",
    );
    let name = d.name("lim");
    // (extra create params, words the refusal must contain)
    let rows = [
        (json!({"memory": "1g"}), "max_memory = 512MiB"),
        (json!({"memory": "0"}), "0 (no limit)"),
        (json!({"pids_limit": 4096}), "max_pids_limit = 2048"),
        (json!({"pids_limit": 0}), "max_pids_limit"),
        (json!({"cpus": 4.0}), "max_cpus = 2"),
        (json!({"cpus": 0.0}), "max_cpus"),
        (json!({"profile": "default"}), "[container] profile = \"strict\""),
    ];
    for (extra, words) in rows {
        let mut p = json!({"name": name});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        let r = d.rpc("project.create", p.clone());
        assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{p}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{p}: {msg}");
    }
    assert_eq!(d.ok("project.list", json!({})), json!([]), "nothing was created by any of it");
    // Tighter is fine, and what the project gets is what it shows.
    let p = d.ok("project.create", json!({"name": name, "memory": "128m", "pids_limit": 64}));
    assert_eq!(
        p["limits"],
        json!({"profile": "strict", "offline": false, "memory": 128 << 20, "pids_limit": 64, "cpus": 1.0})
    );
    let c = format!("berth-{name}");
    assert_eq!(docker_inspect(&c, "{{.HostConfig.Memory}}").unwrap(), (128u64 << 20).to_string());
    assert_eq!(docker_inspect(&c, "{{.HostConfig.PidsLimit}}").unwrap(), "64");
    assert_eq!(docker_inspect(&c, "{{.HostConfig.NanoCpus}}").unwrap(), "1000000000");
    assert_eq!(docker_inspect(&c, "{{.HostConfig.ReadonlyRootfs}}").unwrap(), "true");
}

#[test]
fn published_ports_bind_to_the_publish_address() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("ports");
    d.ok("project.create", json!({"name": name, "ports": {"80": "18093"}}));
    let c = format!("berth-{name}");
    let bindings = docker_inspect(&c, "{{json .HostConfig.PortBindings}}").unwrap();
    let v: Value = serde_json::from_str(&bindings).unwrap();
    assert_eq!(v["80/tcp"][0]["HostIp"], "127.0.0.1", "{v}");
    assert_eq!(v["80/tcp"][0]["HostPort"], "18093", "{v}");
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn nothing_in_the_state_dir_is_reachable_by_other_users() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("perm");
    d.ok("project.create", json!({"name": name}));
    let ws = d.state.join("projects").join(&name);
    assert_eq!(mode(&d.state), 0o711, "state dir: traversable, not listable");
    assert_eq!(mode(&d.state.join("projects")), 0o711);
    assert_eq!(mode(&d.state.join("archive")), 0o700);
    assert_eq!(mode(&ws), 0o700);
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    assert_eq!(std::fs::metadata(&ws).unwrap().uid(), me);
    // A setuid file planted by the container is out of other users' reach: the
    // workspace cannot be entered by them.
    d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "cp /bin/busybox suid && chmod 4755 suid"]}));
    assert_eq!(mode(&ws.join("suid")) & 0o4000, 0o4000);
    if me == 0 {
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
            .arg(&ws)
            .output()
            .expect("setpriv");
        assert!(!o.status.success(), "another user listed the workspace: {o:?}");
    } else {
        eprintln!("skipping the other-user check: needs root");
    }
    // Archived workspaces stay private.
    let r = d.ok("project.delete", json!({"name": name}));
    let archived = std::path::PathBuf::from(r["archived"].as_str().expect("delete says where the workspace went"));
    assert_eq!(mode(&archived), 0o700);
    assert!(archived.starts_with(d.state.join("archive")));
}

#[test]
fn with_local_execution_workspaces_belong_to_the_local_user() {
    if !docker_available() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (local.user applies only to a root berthd)");
        return;
    }
    let d = Daemon::start("[local]\nenabled = true\n[container]\nprofile = \"strict\"\n");
    let name = d.name("both");
    d.ok("project.create", json!({"name": name}));
    let ws = d.state.join("projects").join(&name);
    assert_eq!(std::fs::metadata(&ws).unwrap().uid(), 65534, "owned by local.user");
    assert_eq!(mode(&ws), 0o700);
    // Both sides write the workspace, the strict (capability-less) container included,
    // and each can change what the other wrote.
    let host =
        d.ok("project.exec", json!({"name": name, "local": true, "command": ["sh", "-c", "id -u; echo host > h"]}));
    assert_eq!(host["stdout"], "65534\n", "{host}");
    let cont = d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "echo container >> h; echo c > c"]}));
    assert_eq!(cont["exit_code"], 0, "{cont}");
    let host =
        d.ok("project.exec", json!({"name": name, "local": true, "command": ["sh", "-c", "echo more >> c; cat h c"]}));
    assert_eq!(host["stdout"], "host\ncontainer\nc\nmore\n", "{host}");
}

/// Sends one request line on a fresh connection and returns the stream.
fn send(d: &Daemon, req: Value) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    s
}

#[test]
fn all_execs_together_stay_under_the_buffered_output_cap() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nmax_output = \"1MiB\"\n[server]\nmax_buffered = \"256KiB\"\n");
    let name = d.name("cap");
    d.ok("project.create", json!({"name": name}));
    // Four execs of 200 KB each, each under its own cap, all waiting together on a
    // barrier file until every one has printed: the four cannot all be buffered.
    let cmd = "head -c 200000 /dev/zero | tr '\\0' 'x'; touch /tmp/$1; while [ $(ls /tmp | grep -c '^w') -lt 4 ]; do sleep 0.05; done";
    let mut c = d.client();
    for i in 0..4 {
        let req = json!({"jsonrpc": "2.0", "id": i, "method": "project.exec",
            "params": {"name": name, "command": ["sh", "-c", cmd, "sh", format!("w{i}")]}});
        c.send_line(&req.to_string());
    }
    let mut kept = 0;
    let mut truncated = 0;
    for _ in 0..4 {
        let (r, _) = c.read_response();
        let res = &r["result"];
        assert_eq!(res["exit_code"], 0, "{r}");
        kept += res["stdout"].as_str().unwrap().len();
        truncated += usize::from(res["truncated"] == true);
    }
    assert!(kept <= 256 * 1024, "{kept} bytes kept at once, over the 256 KiB cap");
    assert!(truncated >= 1, "some output was dropped and said so");
    // Given back once the results were written: the next exec gets its whole output.
    let r =
        d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' 'y'"]}));
    assert_eq!((r["stdout"].as_str().unwrap().len(), r["truncated"].clone()), (200000, json!(false)));
}

#[test]
fn a_timeout_fires_while_streamed_output_waits_on_a_client_that_does_not_read() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("stuck");
    d.ok("project.create", json!({"name": name}));
    // Streams endless output and never reads a byte of it.
    let _silent = send(
        &d,
        json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
            "params": {"name": name, "stream": true, "timeout": "2s", "command": ["sh", "-c", "yes stuck-marker"]}}),
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let running = || {
        let ps = d.ok("project.exec", json!({"name": name, "command": ["ps", "-o", "args"]}));
        ps["stdout"].as_str().unwrap().contains("yes stuck-marker")
    };
    while !running() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The command is killed at its timeout, though its output has nowhere to go.
    while running() {
        assert!(Instant::now() < deadline, "still running {:?} after a 2s timeout", started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(started.elapsed() >= Duration::from_millis(1900), "killed before its timeout");
}
