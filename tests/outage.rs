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

/// A Unix-socket proxy to the engine that can be switched off, dropping every connection.
struct Proxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(path: &Path) -> Proxy {
        let listener = UnixListener::bind(path).expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let (s, c) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(upstream) = UnixStream::connect(ENGINE) else { continue };
                        c.lock().unwrap().push(client.try_clone().unwrap());
                        c.lock().unwrap().push(upstream.try_clone().unwrap());
                        pump(client.try_clone().unwrap(), upstream.try_clone().unwrap());
                        pump(upstream, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { path: path.to_path_buf(), stop, conns, accept: Some(accept) }
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

fn pump(mut from: UnixStream, mut to: UnixStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
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

#[test]
fn engine_appears_later_goes_away_and_comes_back() {
    if !docker_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let proxy_path = dir.path().join("engine.sock");
    let d = Daemon::start(&format!(
        "[docker]\nhost = \"unix://{}\"\ndefault_image = \"{IMAGE}\"\n[janitor]\nreconcile_interval = \"1s\"\n",
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

    // The engine goes away: requests fail fast with runtime_unavailable, no hang, and a
    // container project is never run on the host instead.
    proxy.stop();
    let t = Instant::now();
    let r = d.rpc("project.exec", json!({"name": late, "command": ["true"]}));
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
