//! Test harness: starts the real `berthd` on a temp socket and temp state dir, talks to it
//! with the real `berth` binary and over the raw socket, and removes every container the
//! test made (by the project label, whose values all start with the test's own prefix)
//! when the harness is dropped — also when the test panics.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const IMAGE: &str = "berth-test/busybox:latest";

/// Whether the engine answers; when it does, the test image is built first if missing
/// (`tests/image/build.sh`, which serialises concurrent callers), so the README's test
/// command works on a fresh machine. With `REQUIRE_DOCKER=1` a missing engine fails the
/// test instead of skipping it.
pub fn docker_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    let ok = *OK.get_or_init(|| {
        let up = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if up {
            let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/image/build.sh"))
                .arg(IMAGE)
                .status()
                .expect("run tests/image/build.sh");
            assert!(built.success(), "building the test image {IMAGE} failed: tests/image/build.sh said why above");
        }
        up
    });
    if !ok && std::env::var("REQUIRE_DOCKER").as_deref() == Ok("1") {
        panic!("REQUIRE_DOCKER=1 but no Docker engine answers");
    }
    if !ok {
        eprintln!("skipping: no Docker engine (set REQUIRE_DOCKER=1 to make this a failure)");
    }
    ok
}

/// The engine the tests run against, as CI says (`BERTH_TEST_ENGINE`: `docker`, the
/// default, or `podman`), for the few places where engines differ in what they report.
pub fn engine() -> &'static str {
    match std::env::var("BERTH_TEST_ENGINE").as_deref() {
        Ok("podman") => "podman",
        _ => "docker",
    }
}

/// A unique prefix for this test's project names.
pub fn prefix() -> String {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).unwrap();
    format!("t{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub prefix: String,
    /// Extra environment for every start of the daemon.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

pub fn berthd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berthd")
}

pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

impl Daemon {
    /// Starts a daemon whose config is the defaults with the test image as default image,
    /// then `extra` TOML appended (sections included).
    pub fn start(extra: &str) -> Daemon {
        Self::start_env(extra, &[])
    }

    /// Like `start`, with extra environment variables for berthd.
    pub fn start_env(extra: &str, env: &[(&str, &str)]) -> Daemon {
        let mut d = Self::prepare(extra);
        d.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        d.spawn();
        d
    }

    /// Writes the config and picks the paths, without starting the daemon.
    pub fn prepare(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        // Traversable (not listable) like /var/lib: with `[local] enabled` as root, local
        // commands run as `local.user` and must reach their workspace below it.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).unwrap();
        let socket = dir.path().join("run/berth.sock");
        let state = dir.path().join("state");
        let config = dir.path().join("berth.toml");
        let text = if extra.contains("[docker]") {
            extra.to_string()
        } else {
            format!("[docker]\ndefault_image = \"{IMAGE}\"\n{extra}")
        };
        std::fs::write(&config, text).unwrap();
        let log = dir.path().join("berthd.log");
        Daemon { dir, socket, state, config, prefix: prefix(), env: Vec::new(), child: None, log }
    }

    pub fn spawn(&mut self) {
        let cmd = self.command();
        self.spawn_command(cmd);
    }

    /// Starts berthd as `uid`:`gid` (the test must be root): its temp dir is handed over.
    pub fn spawn_as(&mut self, uid: u32, gid: u32) {
        std::os::unix::fs::chown(self.dir.path(), Some(uid), Some(gid)).unwrap();
        std::os::unix::fs::chown(&self.config, Some(uid), Some(gid)).unwrap();
        let mut cmd = self.command();
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, gid);
        self.spawn_command(cmd);
    }

    /// The berthd command line for this daemon.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(berthd_bin());
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .env("BERTH_DEBUG_HOOKS", "1")
            .env("BERTH_LOG", "info,berth=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts `cmd` as this daemon and waits until it serves.
    pub fn spawn_command(&mut self, mut cmd: Command) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().expect("spawn berthd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls until the socket answers `daemon.info` (or the daemon dies).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("berthd exited early with {status}; log:\n{}", self.log_text());
            }
            if let Ok(mut c) = Client::connect(&self.socket) {
                if c.call("daemon.info", json!({})).get("result").is_some() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "berthd not ready in time; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A project name unique to this test.
    pub fn name(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to berthd")
    }

    /// One RPC on a fresh connection; returns the whole response object.
    pub fn rpc(&self, method: &str, params: Value) -> Value {
        self.client().call(method, params)
    }

    /// One RPC that must succeed; returns its result.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        let r = self.rpc(method, params.clone());
        match r.get("result") {
            Some(v) => v.clone(),
            None => panic!("{method} {params} failed: {r}\nlog:\n{}", self.log_text()),
        }
    }

    /// One RPC that must fail; returns its error kind.
    pub fn err_kind(&self, method: &str, params: Value) -> String {
        let r = self.rpc(method, params.clone());
        r["error"]["data"]["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {params} should fail, got {r}"))
            .to_string()
    }

    /// Runs `berth ARGS` against this daemon.
    pub fn berth(&self, args: &[&str]) -> Output {
        Command::new(berth_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run berth")
    }

    /// Starts a streaming exec of `sh -c "echo up; REST"` on a fresh connection and
    /// returns that connection once `up` arrived: the command is running.
    pub fn running_exec(&self, name: &str, rest: &str) -> Client {
        let mut c = self.client();
        c.send_line(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "project.exec",
                "params": {"name": name, "stream": true, "command": ["sh", "-c", format!("echo up; {rest}")]}})
            .to_string(),
        );
        assert_eq!(c.read_msg()["params"]["data"], "up\n");
        c
    }

    /// Repeats `project.exec` with `params` until its result satisfies `done` (or fails
    /// the test after 30 s, saying `what`); returns that result.
    pub fn exec_until(&self, params: Value, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.rpc("project.exec", params.clone());
            if done(&r["result"]) {
                return r["result"].clone();
            }
            assert!(Instant::now() < deadline, "{what}: {r}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `berth ARGS` that must exit 0; returns stdout.
    pub fn berth_ok(&self, args: &[&str]) -> String {
        let o = self.berth(args);
        assert!(
            o.status.success(),
            "berth {args:?} failed with {}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Sends SIGTERM and waits for the exit status code.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("daemon running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("berthd exits after SIGTERM");
        status.code().unwrap_or(-1)
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

fn wait_timeout(child: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        remove_containers(&self.prefix);
        if self.state.join("snapshots").exists() {
            remove_snapshot_images(&self.state);
        }
    }
}

/// Removes every snapshot image a daemon with state dir `state` made (by its label).
///
/// Newest first, as the engine lists them: a fork of a project that runs on a snapshot's
/// image commits a child of that image, and the engine refuses to remove a parent (even
/// with `-f`) before its children. A second pass takes whatever the first could not.
pub fn remove_snapshot_images(state: &Path) {
    let filter = format!("label=berth.state-dir={}", state.display());
    for _ in 0..2 {
        let Ok(out) = Command::new("docker").args(["images", "-q", "--filter", &filter]).output() else { return };
        let mut ids: Vec<String> = Vec::new();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            if !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
            }
        }
        if ids.is_empty() {
            return;
        }
        let _ =
            Command::new("docker").args(["rmi", "-f"]).args(&ids).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Removes every container whose project label starts with `prefix`.
pub fn remove_containers(prefix: &str) {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=vega.project", "--format", "{{.ID}} {{.Label \"vega.project\"}}"])
        .output();
    let Ok(out) = out else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, p)| p.starts_with(prefix))
        .map(|(id, _)| id.to_string())
        .collect();
    if !ids.is_empty() {
        let _ = Command::new("docker").arg("rm").arg("-f").args(&ids).stdout(Stdio::null()).status();
    }
}

/// `docker inspect -f FORMAT NAME`, trimmed; `None` when the container does not exist.
pub fn docker_inspect(name: &str, format: &str) -> Option<String> {
    let o = Command::new("docker").args(["inspect", "-f", format, name]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

pub fn docker(args: &[&str]) -> String {
    let o = Command::new("docker").args(args).output().expect("docker");
    assert!(o.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A raw JSON-RPC client over the socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client { reader: BufReader::new(s.try_clone()?), writer: s, next_id: 1 })
    }

    pub fn send_line(&mut self, line: &str) {
        self.writer.write_all(line.as_bytes()).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    pub fn read_msg(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from berthd");
        assert!(n > 0, "berthd closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON from berthd ({e}): {line}"))
    }

    /// Reads until the next response (a message with an id); returns it and the
    /// notifications that came before it.
    pub fn read_response(&mut self) -> (Value, Vec<Value>) {
        let mut notes = Vec::new();
        loop {
            let m = self.read_msg();
            if m.get("id").is_some() {
                return (m, notes);
            }
            notes.push(m);
        }
    }

    /// Sends a request and returns its response; notifications are dropped.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.call_collect(method, params).0
    }

    /// Sends a request; returns its response and the notifications that came before it.
    pub fn call_collect(&mut self, method: &str, params: Value) -> (Value, Vec<Value>) {
        let id = self.next_id;
        self.next_id += 1;
        self.send_line(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string());
        let (m, notes) = self.read_response();
        assert_eq!(m["id"], json!(id), "one request in flight on this connection");
        (m, notes)
    }
}

/// How container execs run in a test: through berth-agent or through the engine's exec
/// API (`[exec] agent = false`). Exec tests run on both (`on_both_paths!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecPath {
    Agent,
    Exec,
}

impl ExecPath {
    /// `extra` config with this path chosen.
    pub fn config(self, extra: &str) -> String {
        match self {
            ExecPath::Agent => extra.to_string(),
            ExecPath::Exec if extra.contains("[exec]\n") => extra.replacen("[exec]\n", "[exec]\nagent = false\n", 1),
            ExecPath::Exec => format!("{extra}\n[exec]\nagent = false\n"),
        }
    }

    /// What an ExecResult's `path` says for this path.
    pub fn name(self) -> &'static str {
        match self {
            ExecPath::Agent => "agent",
            ExecPath::Exec => "exec",
        }
    }
}

/// Makes each named `fn(ExecPath)` two tests, `NAME::agent` and `NAME::exec`.
#[macro_export]
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn agent() {
                super::$name($crate::common::ExecPath::Agent)
            }
            #[test]
            fn exec() {
                super::$name($crate::common::ExecPath::Exec)
            }
        })*
    };
}

/// An image with nothing but a static `/busybox`: no `/bin/sh`, no libc.
pub const NOSHELL_IMAGE: &str = "berth-test/noshell:latest";

/// Builds `NOSHELL_IMAGE` if missing (the engine must answer).
pub fn noshell_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/image/build.sh"))
            .args(["--no-shell", NOSHELL_IMAGE])
            .status()
            .expect("run tests/image/build.sh");
        assert!(built.success(), "building {NOSHELL_IMAGE} failed");
    });
    NOSHELL_IMAGE
}

/// The host pid of a running container's PID 1.
pub fn container_pid(name: &str) -> u32 {
    docker_inspect(name, "{{.State.Pid}}").and_then(|p| p.parse().ok()).filter(|p| *p > 0).expect("a running container")
}
