//! Engine outages: berthd is pointed at a proxy socket in front of the real engine; the
//! test takes the proxy away and brings it back, which to berthd is the engine going
//! down and coming back.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const ENGINE: &str = "/var/run/docker.sock";

/// A Unix-socket proxy to the engine that can be switched off, dropping every connection,
/// or made to hang (requests are swallowed, nothing is answered: a slow engine).
struct Proxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    hang: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(path: &Path) -> Proxy {
        let listener = UnixListener::bind(path).expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hang = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let (s, c, h) = (stop.clone(), conns.clone(), hang.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(upstream) = UnixStream::connect(ENGINE) else { continue };
                        c.lock().unwrap().push(client.try_clone().unwrap());
                        c.lock().unwrap().push(upstream.try_clone().unwrap());
                        pump(client.try_clone().unwrap(), upstream.try_clone().unwrap(), Some(h.clone()));
                        pump(upstream, client, None);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { path: path.to_path_buf(), stop, hang, conns, accept: Some(accept) }
    }

    /// Cuts every open connection; new ones are still served (a broken stream, not an
    /// engine outage).
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// While set, requests reach the proxy and are never answered.
    fn set_hang(&self, on: bool) {
        self.hang.store(on, Ordering::SeqCst);
    }

    /// The engine "goes away": no socket, every open connection cut.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` on a thread; while `hang` is set, what is read is dropped.
fn pump(mut from: UnixStream, mut to: UnixStream, hang: Option<Arc<AtomicBool>>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if hang.as_ref().is_some_and(|h| h.load(Ordering::SeqCst)) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn wait_for_runtime(d: &Daemon, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.ok("daemon.info", json!({}))["runtime"] != want {
        assert!(Instant::now() < deadline, "runtime never became {want}; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_engine(d: &Daemon, available: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.ok("daemon.info", json!({}))["docker"]["available"] != available {
        assert!(Instant::now() < deadline, "docker.available never became {available}; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn engine_appears_later_goes_away_and_comes_back() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy_path = dir.path().join("engine.sock");
    let d = Daemon::start(&format!(
        "[docker]\nhost = \"unix://{}\"\ndefault_image = \"{IMAGE}\"\n[janitor]\nreconcile_interval = \"1s\"\n\
         [local]\nenabled = true\n",
        proxy_path.display()
    ));
    // No engine yet: local mode.
    assert_eq!(d.ok("daemon.info", json!({}))["runtime"], "local");
    let early = d.name("early");
    assert_eq!(d.ok("project.create", json!({"name": early}))["status"], "created");

    // The engine appears: berthd notices without a restart.
    let proxy = Proxy::start(&proxy_path);
    wait_for_runtime(&d, "docker");
    let r = d.ok("project.exec", json!({"name": early, "command": ["cat", "/proc/1/cmdline"]}));
    assert_eq!(r["runtime"], "docker", "a project made offline gets its container: {r}");
    assert_eq!(d.ok("project.get", json!({"name": early}))["status"], "running");
    let late = d.name("late");
    assert_eq!(d.ok("project.create", json!({"name": late}))["status"], "running");

    // The engine goes away: its container still runs commands through its agent; what
    // needs the engine fails fast with runtime_unavailable, no hang; and a container
    // project is never run on the host instead.
    proxy.stop();
    let r =
        d.ok("project.exec", json!({"name": late, "command": ["sh", "-c", "echo in-container; cat /proc/1/cmdline"]}));
    assert_eq!(r["path"], "agent", "{r}");
    assert!(r["stdout"].as_str().unwrap().contains("/.berth/berth-agent"), "{r}");
    let t = Instant::now();
    let r = d.rpc("project.exec", json!({"name": late, "path": "exec", "command": ["true"]}));
    assert_eq!(r["error"]["data"]["kind"], "runtime_unavailable", "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "failed fast: {:?}", t.elapsed());
    assert_eq!(d.err_kind("project.status", json!({"name": late})), "runtime_unavailable");
    assert_eq!(d.err_kind("project.stop", json!({"name": late})), "runtime_unavailable");
    // The daemon and its actors are still there.
    assert_eq!(d.ok("project.get", json!({"name": late}))["status"], "running");
    wait_for_runtime(&d, "local");

    // The engine is back: everything works again, and the containers never stopped.
    let proxy = Proxy::start(&proxy_path);
    wait_for_runtime(&d, "docker");
    let r = d.ok("project.exec", json!({"name": late, "command": ["echo", "back"]}));
    assert_eq!(r["stdout"], "back\n");
    assert_eq!(docker_inspect(&format!("berth-{early}"), "{{.State.Running}}").unwrap(), "true");
    proxy.stop();
}

#[test]
fn a_slow_engine_is_not_an_absent_one_nothing_falls_back_to_the_host() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy_path = dir.path().join("engine.sock");
    let d = Daemon::start(&format!(
        // (3 s: a container start on a fuse-overlayfs engine alone can take a second.)
        "[docker]\nhost = \"unix://{}\"\ndefault_image = \"{IMAGE}\"\napi_timeout = \"3s\"\n\
         [janitor]\nreconcile_interval = \"1h\"\n[local]\nenabled = true\n",
        proxy_path.display()
    ));
    // Made while no engine answered: it has no container, so it may run on the host while
    // the engine is absent...
    let name = d.name("slow");
    assert_eq!(d.ok("project.create", json!({"name": name}))["status"], "created");
    let proxy = Proxy::start(&proxy_path);
    wait_for_engine(&d, true);
    // ...but not while it is merely slow: the exec fails with a timeout, and nothing ran.
    proxy.set_hang(true);
    let r = d.rpc("project.exec", json!({"name": name, "command": ["sh", "-c", "touch /workspace/ran-somewhere"]}));
    assert_eq!(r["error"]["data"]["kind"], "timeout", "{r}");
    assert!(!d.state.join("projects").join(&name).join("ran-somewhere").exists(), "it ran on the host");
    assert_eq!(d.ok("daemon.info", json!({}))["docker"]["available"], true, "a slow engine stays available");
    // Once the engine answers again, the exec runs in the container.
    proxy.set_hang(false);
    let r = d.ok("project.exec", json!({"name": name, "command": ["cat", "/proc/1/cmdline"]}));
    assert_eq!(r["runtime"], "docker", "{r}");
    proxy.stop();
}

#[test]
fn a_broken_output_stream_kills_the_exec_at_once() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy_path = dir.path().join("engine.sock");
    let proxy = Proxy::start(&proxy_path);
    let d =
        Daemon::start(&format!("[docker]\nhost = \"unix://{}\"\ndefault_image = \"{IMAGE}\"\n", proxy_path.display()));
    let name = d.name("cut");
    d.ok("project.create", json!({"name": name}));
    let container = format!("berth-{name}");
    let mut c = d.client();
    c.send_line(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "project.exec",
            "params": {"name": name, "path": "exec", "command": ["sh", "-c", "sleep 431"]}})
        .to_string(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !docker(&["top", &container, "-o", "pid,args"]).contains("sleep 431") {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let cut_at = Instant::now();
    proxy.cut();
    let (r, _) = c.read_response();
    assert!(cut_at.elapsed() < Duration::from_secs(10), "answered after {:?}", cut_at.elapsed());
    assert_eq!(r["error"]["data"]["kind"], "runtime_error", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("it was killed"), "{r}");
    assert!(!docker(&["top", &container, "-o", "pid,args"]).contains("sleep 431"), "the command still runs");
    proxy.stop();
}
