//! The socket is a root-equivalent door: bad input, peers, limits, host paths and the
//! hardening of containers, checked against the real daemon and engine.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn req(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string()
}

fn exec(params: Value) -> String {
    let mut p = json!({"name": "ok", "command": ["true"]});
    for (k, v) in params.as_object().unwrap() {
        p[k] = v.clone();
    }
    req("project.exec", p)
}

fn create(params: Value) -> String {
    let mut p = json!({"name": "ok"});
    for (k, v) in params.as_object().unwrap() {
        p[k] = v.clone();
    }
    req("project.create", p)
}

#[test]
fn bad_inputs_get_clear_errors_and_the_daemon_keeps_serving() {
    // Needs no engine: every row is refused before anything is looked up.
    let d = Daemon::start_env(
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nmax_line = \"8KiB\"\n",
        &[("BERTH_DEBUG_HOOKS", "0")],
    );
    let long_name = "a".repeat(64);
    let huge = format!("{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\",\"x\":\"{}\"}}", "x".repeat(9000));
    let rows: Vec<(String, &str)> = vec![
        // The envelope.
        ("{".into(), "parse_error"),
        ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.info\"".into(), "parse_error"),
        ("\u{1}\u{2}".into(), "parse_error"),
        ("[]".into(), "invalid_request"),
        ("123".into(), "invalid_request"),
        ("\"daemon.info\"".into(), "invalid_request"),
        ("null".into(), "invalid_request"),
        (json!({"id": 1, "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "1.0", "id": 1, "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": [1], "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": true, "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "method": "daemon.info"}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": 1, "method": 7}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": 1}).to_string(), "invalid_request"),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "daemon.info", "extra": 1}).to_string(), "invalid_request"),
        // Methods.
        (req("nope", json!({})), "method_not_found"),
        (req("Project.get", json!({"name": "ok"})), "method_not_found"),
        (req("debug.panic", json!({"name": "ok"})), "method_not_found"),
        // Params in general.
        (json!({"jsonrpc": "2.0", "id": 1, "method": "daemon.info", "params": [1]}).to_string(), "invalid_params"),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "project.get", "params": "ok"}).to_string(), "invalid_params"),
        (req("daemon.info", json!({"verbose": true})), "invalid_params"),
        (req("project.get", json!({})), "invalid_params"),
        (req("project.get", json!({"name": 5})), "invalid_params"),
        (req("project.get", json!({"name": "ok", "x": 1})), "invalid_params"),
        (req("project.list", json!({"all": true})), "invalid_params"),
        // Names.
        (req("project.get", json!({"name": "../x"})), "invalid_name"),
        (req("project.get", json!({"name": ".."})), "invalid_name"),
        (req("project.get", json!({"name": "."})), "invalid_name"),
        (req("project.get", json!({"name": ""})), "invalid_name"),
        (req("project.get", json!({"name": "Upper"})), "invalid_name"),
        (req("project.get", json!({"name": "a/b"})), "invalid_name"),
        (req("project.get", json!({"name": "-x"})), "invalid_name"),
        (req("project.get", json!({"name": long_name})), "invalid_name"),
        (req("project.get", json!({"name": "café"})), "invalid_name"),
        (req("project.delete", json!({"name": "a\u{0}b"})), "invalid_name"),
        // Create params.
        (create(json!({"image": "has space"})), "invalid_params"),
        (create(json!({"image": "-rm"})), "invalid_params"),
        (create(json!({"image": ""})), "invalid_params"),
        (create(json!({"env": {"A=B": "1"}})), "invalid_params"),
        (create(json!({"env": {"": "1"}})), "invalid_params"),
        (create(json!({"env": {"A": "x\u{0}y"}})), "invalid_params"),
        (create(json!({"env": {"A": 1}})), "invalid_params"),
        (create(json!({"ports": {"0": "80"}})), "invalid_params"),
        (create(json!({"ports": {"80": "65536"}})), "invalid_params"),
        (create(json!({"ports": {"80/sctp": "8080"}})), "invalid_params"),
        (create(json!({"ports": {"80": "http"}})), "invalid_params"),
        (create(json!({"profile": "loose"})), "invalid_params"),
        (create(json!({"network": "host"})), "invalid_params"),
        (create(json!({"memory": "1KiB"})), "invalid_params"),
        (create(json!({"memory": "lots"})), "invalid_params"),
        (create(json!({"pids_limit": 1})), "invalid_params"),
        (create(json!({"cpus": -1.0})), "invalid_params"),
        // Over the description's own limit, well under max_line.
        (create(json!({"description": "d".repeat(5000)})), "invalid_params"),
        // Exec params.
        (exec(json!({"command": []})), "invalid_params"),
        (exec(json!({"command": "ls"})), "invalid_params"),
        (exec(json!({"command": [""]})), "invalid_params"),
        (exec(json!({"command": ["ls", "a\u{0}b"]})), "invalid_params"),
        (exec(json!({"command": [1]})), "invalid_params"),
        (exec(json!({"timeout": "soon"})), "invalid_params"),
        (exec(json!({"timeout": "0s"})), "invalid_params"),
        (exec(json!({"timeout": "1000d"})), "invalid_params"),
        (exec(json!({"timeout": 30})), "invalid_params"),
        (exec(json!({"workdir": "relative"})), "invalid_params"),
        (exec(json!({"workdir": "/proc/self"})), "invalid_params"),
        (exec(json!({"workdir": "/tmp/../proc"})), "invalid_params"),
        (exec(json!({"workdir": "/a\u{0}"})), "invalid_params"),
        (exec(json!({"env": {"A=": "1"}})), "invalid_params"),
        (exec(json!({"stdin": 5})), "invalid_params"),
        (exec(json!({"stdin": "a", "stdin_base64": "YQ=="})), "invalid_params"),
        (exec(json!({"stdin_base64": "***"})), "invalid_params"),
        (exec(json!({"stream": "yes"})), "invalid_params"),
        (exec(json!({"local": 1})), "invalid_params"),
        (exec(json!({"tool": ""})), "invalid_params"),
        (exec(json!({"tty": true})), "invalid_params"),
        // Logs.
        (req("project.logs", json!({"name": "ok", "tail": -1})), "invalid_params"),
        (req("project.logs", json!({"name": "ok", "tail": "10"})), "invalid_params"),
        (req("project.logs", json!({"name": "ok", "tail": 1.5})), "invalid_params"),
        (req("project.logs", json!({"name": "ok", "tail": 1_000_000_000u64})), "invalid_params"),
        (req("project.delete", json!({"name": "ok", "purge": "yes"})), "invalid_params"),
        // Size.
        (huge, "too_large"),
    ];
    // The table covers every kind of refusal a bad request can get.
    let kinds: std::collections::BTreeSet<&str> = rows.iter().map(|(_, k)| *k).collect();
    for kind in ["parse_error", "invalid_request", "method_not_found", "invalid_params", "invalid_name", "too_large"] {
        assert!(kinds.contains(kind), "no row expects {kind}");
    }
    for (line, want) in &rows {
        let mut c = d.client();
        c.send_line(line);
        let r = c.read_msg();
        let shown: String = line.chars().take(120).collect();
        assert_eq!(r["error"]["data"]["kind"], *want, "{shown}: {r}");
        assert!(r["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{shown}: {r}");
        // The daemon keeps serving (a fresh connection: too_large closes this one).
        assert_eq!(d.ok("daemon.info", json!({}))["version"], env!("CARGO_PKG_VERSION"), "after {shown}");
    }
    // Nothing was created by any of it.
    assert_eq!(d.ok("project.list", json!({})), json!([]));
    assert!(std::fs::read_dir(d.state.join("projects")).unwrap().next().is_none());
}

#[test]
fn messages_name_the_bad_value() {
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    let cases = [
        (req("project.get", json!({"name": "../etc"})), "\"../etc\""),
        (create(json!({"image": "bad image"})), "\"bad image\""),
        (create(json!({"env": {"K=V": "1"}})), "\"K=V\""),
        (create(json!({"ports": {"80": "99999"}})), "\"99999\""),
        (exec(json!({"timeout": "forever"})), "\"forever\""),
        (exec(json!({"workdir": "/proc/1"})), "\"/proc/1\""),
        (req("nope.method", json!({})), "\"nope.method\""),
        (req("project.get", json!({"name": "ok", "colour": 1})), "colour"),
    ];
    for (line, needle) in cases {
        let mut c = d.client();
        c.send_line(&line);
        let r = c.read_msg();
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{line}: {msg}");
    }
}

#[test]
fn socket_mode_stale_and_live_sockets_and_world_writable_dirs() {
    let mut d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o660);
    let dir_mode = std::fs::metadata(d.socket.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o002, 0, "socket dir not world-writable");

    // A second daemon on the live socket refuses to start (other state dir).
    let other_state = d.dir.path().join("state2");
    let out = Command::new(berthd_bin())
        .args(["--config", d.config.to_str().unwrap(), "--socket", d.socket.to_str().unwrap()])
        .arg("--state-dir")
        .arg(&other_state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and one on the same state dir with another socket too.
    let out = Command::new(berthd_bin())
        .args(["--config", d.config.to_str().unwrap(), "--state-dir", d.state.to_str().unwrap()])
        .arg("--socket")
        .arg(d.dir.path().join("run/other.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("state dir"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(d.ok("daemon.info", json!({}))["version"], env!("CARGO_PKG_VERSION"), "the first daemon is unharmed");

    // A stale socket file (a crash) is replaced.
    d.kill9();
    assert!(d.socket.exists());
    d.spawn();
    assert_eq!(d.ok("daemon.info", json!({}))["version"], env!("CARGO_PKG_VERSION"));
}

/// Runs berthd with `args` (after `--config CONFIG`) and returns its exit code and
/// stderr; one that is still running after 20 s is killed and the test fails.
fn berthd_refuses(config: &std::path::Path, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(berthd_bin());
    cmd.arg("--config").arg(config).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("berthd {args:?} started instead of refusing; log:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), err)
}

#[test]
fn a_refused_socket_dir_leaves_nothing_behind_and_names_a_dir_that_works() {
    let d = Daemon::prepare("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    let open = d.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    // The sticky bit does not help: anyone could still place a socket there first.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let xdg = d.dir.path().join("xdg");
    let sock = open.join("b.sock");
    let args = ["--state-dir".as_ref(), d.state.as_os_str(), "--socket".as_ref(), sock.as_os_str()];
    let (code, err) = berthd_refuses(&d.config, &args, &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())]);
    assert_eq!(code, 1, "{err}");
    let suggestion = format!("such as {}/berth/berth.sock", xdg.display());
    assert!(err.contains(&format!("socket dir {} is writable by everyone", open.display())), "{err}");
    assert!(err.contains(&suggestion) && err.contains("--socket"), "{err}");
    assert!(!d.state.exists(), "the state dir was not made");
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0, "nothing was put in the open dir");
    // Root without $XDG_RUNTIME_DIR is pointed at /run/berth.
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new(berthd_bin())
            .env_remove("XDG_RUNTIME_DIR")
            .arg("--config")
            .arg(&d.config)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("such as /run/berth/berth.sock"), "{err}");
    }
    // A socket dir that cannot be made (a file is in the way) is refused the same way.
    let file = d.dir.path().join("plain");
    std::fs::write(&file, "keep").unwrap();
    let sock = file.join("run/b.sock");
    let args = ["--state-dir".as_ref(), d.state.as_os_str(), "--socket".as_ref(), sock.as_os_str()];
    let (code, err) = berthd_refuses(&d.config, &args, &[("XDG_RUNTIME_DIR", xdg.to_str().unwrap())]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{} is not a directory", file.display())) && err.contains(&suggestion), "{err}");
    assert!(!d.state.exists(), "the state dir was not made");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
}

#[test]
fn what_is_at_the_socket_path_is_never_removed_unless_it_is_a_stale_socket() {
    let d = Daemon::prepare("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    let target = d.dir.path().join("target");
    std::fs::write(&target, "keep").unwrap();
    type Make = fn(&std::path::Path, &std::path::Path);
    let rows: [(&str, Make); 3] = [
        ("a regular file", |p, _| std::fs::write(p, "keep").unwrap()),
        ("a directory", |p, _| std::fs::create_dir(p).unwrap()),
        ("a symlink", |p, t| std::os::unix::fs::symlink(t, p).unwrap()),
    ];
    for (what, make) in rows {
        make(&d.socket, &target);
        let args = ["--state-dir".as_ref(), d.state.as_os_str(), "--socket".as_ref(), d.socket.as_os_str()];
        let (code, err) = berthd_refuses(&d.config, &args, &[]);
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains(&format!("{} is {what}, not a socket", d.socket.display())), "{what}: {err}");
        // Untouched.
        let meta = std::fs::symlink_metadata(&d.socket).unwrap();
        match what {
            "a regular file" => assert_eq!(std::fs::read_to_string(&d.socket).unwrap(), "keep"),
            "a directory" => assert!(meta.is_dir()),
            _ => assert_eq!(std::fs::read_link(&d.socket).unwrap(), target),
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!d.state.exists(), "{what}: the state dir was not made");
        if meta.is_dir() {
            std::fs::remove_dir(&d.socket).unwrap();
        } else {
            std::fs::remove_file(&d.socket).unwrap();
        }
    }
}

/// Runs `berth info --json` as `uid:gid` with no supplementary groups.
fn berth_as(d: &Daemon, uid: u32, gid: u32) -> std::process::Output {
    berth_as_in(d, uid, gid, &[])
}

/// Runs `berth info --json` as `uid:gid` with the supplementary `groups`.
fn berth_as_in(d: &Daemon, uid: u32, gid: u32, groups: &[u32]) -> std::process::Output {
    let mut cmd = Command::new(berth_bin());
    cmd.args(["--socket", d.socket.to_str().unwrap(), "info", "--json"]).stdin(Stdio::null());
    let groups: Vec<libc::gid_t> = groups.to_vec();
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().unwrap()
}

fn socket_gid(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().gid()
}

#[test]
fn members_of_the_daemons_own_group_are_let_in_when_socket_group_is_empty() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: members_of_the_daemons_own_group_are_let_in_when_socket_group_is_empty needs root to run a client as another uid");
        return;
    }
    // The daemon runs as root:root; "" means its own group (0) is the socket's group.
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nsocket_mode = \"0666\"\n");
    open_up(&d);
    assert!(berth_as(&d, 4646, 0).status.success(), "a member of the daemon's group");
    assert_eq!(berth_as(&d, 4646, 4646).status.code(), Some(1), "a stranger");
}

fn open_up(d: &Daemon) {
    // Let other uids reach the socket file; the daemon's own gate must still refuse them.
    for p in [d.dir.path().to_path_buf(), d.dir.path().join("run")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn peers_are_checked_by_credentials() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: peers_are_checked_by_credentials needs root to run a client as another uid");
        return;
    }
    let d = Daemon::start(
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nsocket_mode = \"0666\"\nallowed_uids = [4343]\nsocket_group = \"4545\"\n",
    );
    open_up(&d);
    assert_eq!(std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777, 0o666);
    // A stranger: refused with forbidden, naming the uid.
    let out = berth_as(&d, 4242, 4242);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uid 4242") && err.contains("not allowed"), "{err}");
    // An allowed uid, and a member of socket_group.
    assert!(berth_as(&d, 4343, 4343).status.success());
    assert!(berth_as(&d, 4444, 4545).status.success());
    // Root always.
    assert!(berth_as(&d, 0, 0).status.success());
    let group = socket_gid(&d.socket);
    assert_eq!(group, 4545, "the socket file carries socket_group");
    let log = d.log_text();
    assert!(log.contains("refused a connection") && log.contains("4242"), "refusals are logged");
    // Mutations are logged with the peer's uid and pid.
    d.rpc("project.create", json!({"name": d.name("logged")}));
    assert!(d
        .log_text()
        .lines()
        .any(|l| l.contains("method=project.create") && l.contains("uid=0") && l.contains("pid=")));
}

#[test]
fn supplementary_members_of_socket_group_are_let_in() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping: supplementary_members_of_socket_group_are_let_in needs root to run a client as another uid"
        );
        return;
    }
    let d = Daemon::start(
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nsocket_mode = \"0666\"\nsocket_group = \"4545\"\n",
    );
    open_up(&d);
    let out = berth_as_in(&d, 4747, 4747, &[4646, 4545]);
    assert!(out.status.success(), "socket_group as a supplementary group: {}", String::from_utf8_lossy(&out.stderr));
    let out = berth_as_in(&d, 4747, 4747, &[4646]);
    assert_eq!(out.status.code(), Some(1), "other groups only");
    assert!(String::from_utf8_lossy(&out.stderr).contains("uid 4747"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Credentials of one thread only (raw syscalls; libc's wrappers change every thread's).
fn become_in_this_thread(uid: u32, gid: u32, groups: &[u32]) -> std::io::Result<()> {
    unsafe {
        if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn the_gate_uses_the_groups_the_peer_connected_with() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "skipping: the_gate_uses_the_groups_the_peer_connected_with needs root to change a thread's credentials"
        );
        return;
    }
    let d = Daemon::start(
        "[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nsocket_mode = \"0666\"\nsocket_group = \"4545\"\n",
    );
    open_up(&d);
    // The connecting thread is a member of socket_group; the process's main thread (which
    // is what /proc/<pid>/status shows) is not. The socket's own record decides.
    let socket = d.socket.clone();
    let r = std::thread::spawn(move || {
        become_in_this_thread(4848, 4848, &[4545]).expect("set this thread's credentials");
        let mut c = Client::connect(&socket).unwrap();
        c.send_line(&req("daemon.info", json!({})));
        c.read_msg()
    })
    .join()
    .unwrap();
    assert!(r.get("result").is_some(), "a member of socket_group by the socket's record: {r}");
    let socket = d.socket.clone();
    let r = std::thread::spawn(move || {
        become_in_this_thread(4848, 4848, &[4646]).expect("set this thread's credentials");
        // Refused at once, before any request (one sent could meet a closed socket).
        Client::connect(&socket).unwrap().read_msg()
    })
    .join()
    .unwrap();
    assert_eq!(r["error"]["data"]["kind"], "forbidden", "{r}");
}

#[test]
fn in_flight_requests_per_connection_are_capped() {
    // Slow requests in a container: execs on the host are opt-in.
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[server]\nmax_in_flight = 2\n");
    let name = d.name("lim");
    d.ok("project.create", json!({"name": name}));
    // Two slow execs on one connection; the third is refused at once as busy.
    let mut c = d.client();
    for id in 1..=3 {
        c.send_line(
            &json!({"jsonrpc":"2.0","id":id,"method":"project.exec","params":{"name": name, "command":["sleep","1"]}})
                .to_string(),
        );
    }
    let first = c.read_msg();
    assert_eq!(first["id"], 3, "the third answers first, refused: {first}");
    assert_eq!(first["error"]["data"]["kind"], "busy");
    for _ in 0..2 {
        assert_eq!(c.read_msg()["result"]["exit_code"], 0);
    }
}

#[test]
fn connections_beyond_the_cap_are_told_busy() {
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nmax_connections = 8\n");
    // Hold 8 served connections. A slot is freed once the daemon has seen a closed
    // connection's EOF, so a connection may briefly find the harness's start-up probe
    // still counted: such a one is told busy and is retried.
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.len() < 8 {
        let mut c = Client::connect(&d.socket).unwrap();
        c.send_line(&req("daemon.info", json!({})));
        let r = c.read_msg();
        match r["error"]["data"]["kind"].as_str() {
            None => held.push(c),
            Some("busy") => assert!(std::time::Instant::now() < deadline, "slots never freed"),
            Some(k) => panic!("unexpected {k}: {r}"),
        }
    }
    // ... and the 9th is told busy and closed.
    let mut extra = UnixStream::connect(&d.socket).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    extra.read_to_string(&mut line).unwrap();
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["error"]["data"]["kind"], "busy");
    assert!(v["error"]["message"].as_str().unwrap().contains('8'));
}

#[test]
fn silent_connections_are_closed_after_the_idle_timeout() {
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n[server]\nidle_timeout = \"1s\"\n");
    let mut idle = UnixStream::connect(&d.socket).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by the daemon");
}

#[test]
fn connections_go_idle_once_their_requests_finish() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[server]\nidle_timeout = \"1s\"\n");
    let name = d.name("idle");
    d.ok("project.create", json!({"name": name}));
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let read = |r: &mut BufReader<UnixStream>| -> Value {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "berthd closed the connection");
        serde_json::from_str(&line).unwrap()
    };
    // A request running longer than the idle timeout keeps its connection open...
    let exec = json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
        "params": {"name": name, "command": ["sleep", "2"]}});
    writeln!(s, "{exec}").unwrap();
    // ... and half a line sent meanwhile is kept while the daemon wakes up for the
    // request's end.
    let info = json!({"jsonrpc": "2.0", "id": 2, "method": "daemon.info", "params": {}}).to_string();
    let (head, tail) = info.split_at(info.len() / 2);
    s.write_all(head.as_bytes()).unwrap();
    let first = read(&mut r);
    assert_eq!(first["id"], 1, "{first}");
    assert_eq!(first["result"]["exit_code"], 0, "{first}");
    writeln!(s, "{tail}").unwrap();
    let second = read(&mut r);
    assert_eq!(second["id"], 2, "{second}");
    assert!(second["result"]["version"].is_string(), "{second}");
    // Then, silent with nothing in flight, it is closed after the idle timeout.
    let quiet = Instant::now();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).expect("closed by the daemon within 15 s");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(quiet.elapsed() >= Duration::from_millis(500), "not before the idle timeout: {:?}", quiet.elapsed());
}

/// Whether `comm` runs in the container (`docker top`).
fn runs_in(container: &str, comm: &str) -> bool {
    docker(&["top", container, "-o", "pid,comm"]).lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some(comm))
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_its_exec_killed() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[server]\nwrite_timeout = \"1s\"\n");
    let name = d.name("flood");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    // Endless streamed output to a client that never reads.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let exec = json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
        "params": {"name": name, "command": ["yes"], "stream": true, "timeout": "1h"}});
    writeln!(s, "{exec}").unwrap();
    wait_for("yes running", Duration::from_secs(30), || runs_in(&container, "yes"));
    // The daemon gives up writing after the write timeout and kills the command...
    wait_for("yes killed", Duration::from_secs(30), || !runs_in(&container, "yes"));
    // ... and closes the connection: what was already sent drains, then EOF.
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut sink = Vec::new();
    s.read_to_end(&mut sink).expect("closed by the daemon");
    assert!(d.log_text().contains("stopped reading"), "logged:\n{}", d.log_text());
    // The daemon serves on. (Not an exec in this project yet: killing a chatty command
    // stalls the engine for the project until the kill exec's own timeout; see
    // runtime/docker/exec.rs, which does not read output while it kills.)
    assert!(d.ok("daemon.info", json!({}))["version"].is_string());
}

/// Connects, retrying while the listen backlog is momentarily full.
fn connect(path: &std::path::Path) -> UnixStream {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("connect: {e}"),
        }
    }
}

#[test]
fn a_thousand_idle_connections_do_not_lock_others_out() {
    // The test process needs the descriptors too.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    let mut held: Vec<UnixStream> = (0..1023).map(|_| connect(&d.socket)).collect();
    // The 1,024th connection is served while 1,023 sit idle (retried while the harness's
    // start-up probe may still hold a slot)...
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = loop {
        let mut c = Client::connect(&d.socket).unwrap();
        c.send_line(&req("daemon.info", json!({})));
        if c.read_msg().get("result").is_some() {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "the 1,024th connection was never served");
    };
    // ... the 1,025th is refused as busy...
    let mut over = connect(&d.socket);
    over.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = String::new();
    over.read_to_string(&mut line).unwrap();
    assert!(line.contains("busy"), "{line}");
    // ... and once idle ones go, others get in again.
    held.truncate(1000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Client::connect(&d.socket).unwrap();
        c.send_line(&req("daemon.info", json!({})));
        if c.read_msg().get("result").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "closed connections never freed their slots");
    }
    assert_eq!(last.call("daemon.info", json!({}))["result"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn planted_symlinks_never_lead_outside_the_state_dir() {
    let d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "x").unwrap();
    // A symlink where a new project's workspace would go: create fails, nothing written.
    let planted = d.name("planted");
    std::os::unix::fs::symlink(outside.path(), d.state.join("projects").join(&planted)).unwrap();
    let r = d.rpc("project.create", json!({"name": planted}));
    assert!(r["error"]["message"].as_str().unwrap().contains("symlink"), "{r}");
    assert_eq!(d.err_kind("project.get", json!({"name": planted})), "not_found");
    // A workspace swapped for a symlink after create: purge and archive refuse.
    let swapped = d.name("swapped");
    d.ok("project.create", json!({"name": swapped}));
    let ws = d.state.join("projects").join(&swapped);
    std::fs::remove_dir(&ws).unwrap();
    std::os::unix::fs::symlink(outside.path(), &ws).unwrap();
    let r = d.rpc("project.delete", json!({"name": swapped, "purge": true}));
    assert!(r["error"]["message"].as_str().unwrap().contains("symlink"), "{r}");
    let r = d.rpc("project.delete", json!({"name": swapped}));
    assert!(r["error"]["message"].as_str().unwrap().contains("symlink"), "{r}");
    assert_eq!(d.ok("project.get", json!({"name": swapped}))["name"], swapped.as_str(), "row kept");
    // Local exec does not follow it either.
    let e = d.rpc("project.exec", json!({"name": swapped, "command": ["touch", "pwned"]}));
    assert!(e.get("error").is_some(), "{e}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1, "nothing written outside");
    assert_eq!(std::fs::read_to_string(outside.path().join("keep")).unwrap(), "x");
}

#[test]
fn default_containers_are_hardened() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("hard");
    d.ok("project.create", json!({"name": name}));
    let c = format!("berth-{name}");
    let get = |f: &str| docker_inspect(&c, f).unwrap();
    assert_eq!(get("{{json .HostConfig.SecurityOpt}}"), "[\"no-new-privileges\"]");
    assert_eq!(get("{{json .HostConfig.CapDrop}}"), "[\"ALL\"]");
    assert_eq!(
        get("{{json .HostConfig.CapAdd}}"),
        "[\"CHOWN\",\"DAC_OVERRIDE\",\"FOWNER\",\"FSETID\",\"KILL\",\"SETGID\",\"SETUID\"]"
    );
    assert_eq!(get("{{.HostConfig.PidsLimit}}"), "1024");
    assert_eq!(get("{{.HostConfig.Memory}}"), (4u64 << 30).to_string());
    assert_eq!(get("{{.HostConfig.Privileged}}"), "false");
    assert_eq!(get("{{.HostConfig.NetworkMode}}"), "vega-network");
    // berth-agent is PID 1 (no Docker init); the only mounts are the workspace and
    // berth's own under /.berth/, the agent binary read-only.
    assert_eq!(get("{{.HostConfig.Init}}"), "false");
    assert_eq!(get("{{.HostConfig.ReadonlyRootfs}}"), "false");
    let mounts = get("{{range .Mounts}}{{.Destination}}:{{.RW}} {{end}}");
    let mut mounts: Vec<&str> = mounts.split_whitespace().collect();
    mounts.sort();
    assert_eq!(mounts, ["/.berth/berth-agent:false", "/.berth/run:true", "/workspace:true"]);
    // Probes from inside.
    let sh = |cmd: &str| d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", cmd]}));
    let r = sh("mkdir -p /mnt/x && mount -t tmpfs none /mnt/x");
    assert_ne!(r["exit_code"], 0, "mount is refused: {r}");
    let r = sh("ls /var/run/docker.sock /run/docker.sock");
    assert_ne!(r["exit_code"], 0, "no engine socket inside: {r}");
    assert_eq!(
        sh("cat /proc/1/cmdline | tr '\\0' ' '")["stdout"].as_str().unwrap().split(' ').next(),
        Some("/.berth/berth-agent")
    );
    // The agent binary cannot be changed from inside.
    let r = sh("echo x >> /.berth/berth-agent");
    assert_ne!(r["exit_code"], 0, "the agent binary is read-only: {r}");
}

#[test]
fn strict_offline_and_limited_projects() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[container]\nprofile = \"strict\"\n");
    let name = d.name("strict");
    let p = d.ok("project.create", json!({"name": name, "network": "none", "pids_limit": 64, "memory": "256MiB"}));
    assert_eq!(p["limits"]["offline"], true);
    let c = format!("berth-{name}");
    let get = |f: &str| docker_inspect(&c, f).unwrap();
    assert_eq!(get("{{json .HostConfig.CapAdd}}"), "[]");
    assert_eq!(get("{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(get("{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(get("{{.HostConfig.PidsLimit}}"), "64");
    assert_eq!(get("{{.HostConfig.Memory}}"), (256u64 << 20).to_string());
    let sh = |cmd: &str| d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", cmd]}));
    assert_ne!(sh("echo x > /etc/x")["exit_code"], 0, "root filesystem is read-only");
    assert_ne!(sh("echo x > /x")["exit_code"], 0);
    assert_eq!(sh("echo x > /tmp/x && cat /tmp/x")["stdout"], "x\n");
    assert_eq!(sh("echo x > /workspace/x && cat /workspace/x")["stdout"], "x\n");
    // Offline: no interface but loopback.
    let ifaces = sh("ls /sys/class/net")["stdout"].as_str().unwrap().trim().to_string();
    assert_eq!(ifaces, "lo");
    // The project's own settings survive re-creation.
    docker(&["rm", "-f", &c]);
    sh("true");
    assert_eq!(get("{{.HostConfig.NetworkMode}}"), "none");
    assert_eq!(get("{{.HostConfig.PidsLimit}}"), "64");
    // A project cannot loosen the daemon's strict profile (a usage error naming the
    // floor), but it can tighten other settings through the CLI's flags.
    let loose = d.name("loose");
    let o = d.berth(&["create", &loose, "--profile", "default"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("[container] profile = \"strict\""), "{o:?}");
    d.berth_ok(&["create", &loose, "--cpus", "0.5"]);
    assert_eq!(docker_inspect(&format!("berth-{loose}"), "{{.HostConfig.NanoCpus}}").unwrap(), "500000000");
    assert_eq!(docker_inspect(&format!("berth-{loose}"), "{{.HostConfig.ReadonlyRootfs}}").unwrap(), "true");
    // The pids limit stops a fork loop (the looping subshell dies when fork fails; the
    // count uses shell builtins only, since no fork is left to spare).
    let r = sh("(i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done) 2>/dev/null; n=0; for d in /proc/[0-9]*; do read -r c < $d/comm 2>/dev/null && [ \"$c\" = sleep ] && n=$((n+1)); done; echo $n");
    let running: u32 = r["stdout"].as_str().unwrap().trim().parse().unwrap_or(0);
    assert!(running > 0 && running < 64, "pids limit held the loop to {running} processes: {r}");
}
