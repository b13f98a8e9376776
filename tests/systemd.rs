//! The systemd integration: unit files verify, READY/STOPPING/WATCHDOG notifications
//! arrive, and socket activation serves on the listener systemd hands over.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn unit_files_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        // CI installs it (Debian: the `systemd` package); there, missing is a failure.
        let required = std::env::var("REQUIRE_DOCKER").as_deref() == Ok("1") || std::env::var_os("CI").is_some();
        assert!(
            !required,
            "systemd-analyze is not installed (apt-get install systemd); the unit files were not checked"
        );
        eprintln!("skipping: unit_files_verify needs systemd-analyze (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    for unit in ["berthd.service", "berthd.socket"] {
        let text = std::fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        // verify checks that ExecStart exists: point it at the binary under test.
        let text = text.replace("/usr/local/bin/berthd", berthd_bin());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("berthd.service"))
        .arg(dir.path().join("berthd.socket"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The user units (rootless Podman): verified the same way (a user manager is not
    // there to ask under CI; the system manager checks the same directives).
    for unit in ["berthd-user.service", "berthd-user.socket"] {
        let text = std::fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        std::fs::write(dir.path().join(unit), text.replace("%h/.local/bin/berthd", berthd_bin())).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("berthd-user.service"))
        .arg(dir.path().join("berthd-user.socket"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify (user units): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let user = std::fs::read_to_string(dir.path().join("berthd-user.service")).unwrap();
    for line in
        ["Type=notify", "Wants=podman.socket", "DOCKER_HOST=unix://%t/podman/podman.sock", "WantedBy=default.target"]
    {
        assert!(user.contains(line), "berthd-user.service has {line}");
    }
    let socket = std::fs::read_to_string(dir.path().join("berthd-user.socket")).unwrap();
    assert!(socket.contains("ListenStream=%t/berth/berth.sock"), "the user socket is where berth looks");
    let service = std::fs::read_to_string(dir.path().join("berthd.service")).unwrap();
    for line in ["Type=notify", "Restart=on-failure", "WatchdogSec=", "NoNewPrivileges=yes", "ReadWritePaths="] {
        assert!(service.contains(line), "berthd.service has {line}");
    }
}

fn recv_until(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            got.push(msg);
            if done {
                return got;
            }
        }
    }
    panic!("no {want} within {within:?}; got {got:?}");
}

#[test]
fn notifies_ready_watchdog_and_stopping() {
    // Needs no engine: READY comes after the registry is loaded and the first reconcile
    // (which is a no-op without an engine).
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut d = Daemon::start_env(
        &format!("[docker]\nhost = \"unix://{}/none.sock\"\n", dir.path().display()),
        &[("NOTIFY_SOCKET", notify.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    recv_until(&sock, "READY=1", Duration::from_secs(10));
    // The socket serves once READY is sent.
    assert_eq!(d.ok("daemon.info", json!({}))["version"], env!("CARGO_PKG_VERSION"));
    // The watchdog is pinged at half the period while the supervisor answers.
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    assert_eq!(d.terminate(), 0);
    // STOPPING came before the exit.
    let mut buf = [0u8; 4096];
    let mut seen = false;
    while let Ok(n) = sock.recv(&mut buf) {
        seen |= String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "STOPPING=1");
    }
    assert!(seen, "STOPPING=1 sent on shutdown");
}

#[test]
fn socket_activation_serves_the_inherited_listener() {
    let mut d = Daemon::prepare("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    std::fs::create_dir_all(d.socket.parent().unwrap()).unwrap();
    let listener = UnixListener::bind(&d.socket).unwrap();
    let fd = listener.as_raw_fd();
    let inner = d.command();
    // systemd's protocol: the listener is fd 3, LISTEN_FDS=1, LISTEN_PID is the daemon's
    // pid (set by a shell that then execs berthd, keeping its pid).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"").arg(inner.get_program()).args(inner.get_args());
    for (k, v) in inner.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; if the listener already is fd 3, clear it.
            let rc = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    d.spawn_command(cmd);
    drop(listener);
    assert_eq!(d.ok("daemon.info", json!({}))["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(d.terminate(), 0);
    assert!(d.socket.exists(), "a socket systemd owns is left for systemd to remove");
}

/// Whether process `pid` has exited (gone, or a zombie waiting to be reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

// needs daemon: debug.kill_supervisor
#[test]
fn berthd_exits_non_zero_when_its_supervisor_dies() {
    let mut d = Daemon::start("[docker]\nhost = \"unix:///nonexistent/docker.sock\"\n");
    // The daemon may exit before it answers: only send.
    d.client()
        .send_line(&json!({"jsonrpc": "2.0", "id": 1, "method": "debug.kill_supervisor", "params": {}}).to_string());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !exited(d.pid()) {
        assert!(Instant::now() < deadline, "berthd still runs without its supervisor; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGTERM to an exited process changes nothing: this reaps it and reads its status.
    let code = d.terminate();
    assert_ne!(code, 0, "exits non-zero, so that systemd restarts it; log:\n{}", d.log_text());
    assert!(!d.socket.exists(), "its socket file is removed");
    assert!(d.log_text().contains("supervisor"), "the log says why:\n{}", d.log_text());
}

// needs daemon: debug.wedge_supervisor
#[test]
fn the_watchdog_goes_quiet_when_the_supervisor_wedges() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let period = Duration::from_millis(400);
    let d = Daemon::start_env(
        &format!("[docker]\nhost = \"unix://{}/none.sock\"\n", dir.path().display()),
        &[("NOTIFY_SOCKET", notify.to_str().unwrap()), ("WATCHDOG_USEC", &period.as_micros().to_string())],
    );
    recv_until(&sock, "READY=1", Duration::from_secs(10));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5));
    d.ok("debug.wedge_supervisor", json!({}));
    let wedged = Instant::now();
    // A check that started before the wedge may still be answered within one period;
    // after that, three whole periods without a ping.
    let mut late = Vec::new();
    let mut buf = [0u8; 4096];
    while wedged.elapsed() < period * 4 {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "WATCHDOG=1") && wedged.elapsed() > period {
                late.push(wedged.elapsed());
            }
        }
    }
    assert!(late.is_empty(), "WATCHDOG=1 kept coming with the supervisor wedged, at {late:?} after the wedge");
    assert!(d.log_text().contains("did not answer the watchdog"), "log:\n{}", d.log_text());
}
