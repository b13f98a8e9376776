//! berth's benchmark: one run prints berth side by side with the raw Docker API on the same
//! machine and the same containers.
//!
//!   cargo bench --bench berth_bench            # everything
//!   cargo bench --bench berth_bench -- exec    # only the sections whose name matches
//!
//! Sections: `exec` (exec latency and throughput at concurrency 1, 8, 32 across 8
//! projects, berth over the socket vs bollard direct), `status` (status/list latency while
//! 32 long execs run), `restart` (restart to serving with 2,000 registered projects, and
//! daemon RSS), `reconcile` (200 containers: berth's reconcile vs one raw list call vs one
//! raw inspect per container), `cp` (200 MiB as one file and as a tree of 2,000 files,
//! into and out of a container: `berth cp` vs `docker cp` on the same container, with
//! `berth`'s peak RSS), `snapshot` (a project with a 200 MiB workspace and 50 MiB of
//! changes in its container: snapshot, restore and fork vs the same by hand with `docker
//! commit`, `docker run` and `cp -a`). The raw baseline uses bollard directly; that is the point of
//! a baseline, and why this file (not `src/`) imports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

const IMAGE: &str = "berth-test/busybox:latest";

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |s: &str| filter.is_empty() || filter.iter().any(|f| s.contains(f.as_str()));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let status = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/image/build.sh")).arg(IMAGE).status();
        assert!(status.map(|s| s.success()).unwrap_or(false), "cannot build the test image");
        let docker = Docker::connect_with_local_defaults().unwrap().negotiate_version().await.unwrap();
        let v = docker.version().await.unwrap();
        println!(
            "# berth benchmark — engine {} (API {}), {} cores, berth {}",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            env!("CARGO_PKG_VERSION")
        );
        if wants("exec") || wants("status") {
            exec_and_status(&docker, &wants).await;
        }
        if wants("restart") {
            restart_and_rss().await;
        }
        if wants("reconcile") {
            reconcile(&docker).await;
        }
        if wants("agent") {
            agent(&docker).await;
        }
        if wants("session") {
            session(&docker).await;
        }
        if wants("cp") {
            cp().await;
        }
        if wants("snapshot") {
            snapshot().await;
        }
    });
}

// ---------------------------------------------------------------- the daemon under test

struct Daemon {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    state: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    prefix: String,
}

impl Daemon {
    fn new(extra: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("berth.toml");
        std::fs::write(&config, format!("[docker]\ndefault_image = \"{IMAGE}\"\n{extra}")).unwrap();
        let prefix = format!("b{}", std::process::id());
        Daemon {
            socket: dir.path().join("berth.sock"),
            state: dir.path().join("state"),
            config,
            child: None,
            _dir: dir,
            prefix,
        }
    }

    /// Starts berthd; returns the time until it answered `daemon.info`.
    async fn start(&mut self) -> Duration {
        let t = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_berthd"))
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .env("BERTH_LOG", std::env::var("BENCH_BERTH_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        loop {
            if let Ok(mut c) = Client::connect(&self.socket).await {
                if c.call("daemon.info", json!({})).await.get("result").is_some() {
                    return t.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            assert!(t.elapsed() < Duration::from_secs(60), "berthd did not start");
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn name(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        remove_containers(&self.prefix);
    }
}

fn remove_containers(prefix: &str) {
    let out = Command::new("docker")
        .args(["ps", "-a", "--filter", "label=vega.project", "--format", "{{.ID}} {{.Label \"vega.project\"}}"])
        .output()
        .unwrap();
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, p)| p.starts_with(prefix))
        .map(|(id, _)| id.to_string())
        .collect();
    for chunk in ids.chunks(50) {
        let _ = Command::new("docker").arg("rm").arg("-f").args(chunk).stdout(Stdio::null()).status();
    }
}

struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    id: u64,
    line: String,
}

impl Client {
    async fn connect(path: &Path) -> std::io::Result<Client> {
        let (r, w) = UnixStream::connect(path).await?.into_split();
        Ok(Client { reader: BufReader::new(r), writer: w, id: 0, line: String::new() })
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let req = json!({"jsonrpc": "2.0", "id": self.id, "method": method, "params": params}).to_string() + "\n";
        self.writer.write_all(req.as_bytes()).await.unwrap();
        loop {
            self.line.clear();
            assert!(self.reader.read_line(&mut self.line).await.unwrap() > 0, "berthd closed the connection");
            let v: Value = serde_json::from_str(&self.line).unwrap();
            if v.get("id") == Some(&json!(self.id)) {
                return v;
            }
        }
    }

    async fn ok(&mut self, method: &str, params: Value) -> Value {
        let r = self.call(method, params.clone()).await;
        r.get("result").cloned().unwrap_or_else(|| panic!("{method} {params}: {r}"))
    }
}

// ---------------------------------------------------------------- statistics

struct Stats {
    p50: Duration,
    p99: Duration,
    per_sec: f64,
}

fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    Stats { p50: pick(0.50), p99: pick(0.99), per_sec: lat.len() as f64 / wall.as_secs_f64() }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------- exec and status

async fn raw_exec(docker: &Docker, container: &str, cmd: &[&str]) -> i64 {
    let opts = CreateExecOptions {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        working_dir: Some("/workspace".to_string()),
        ..Default::default()
    };
    let created = docker.create_exec(container, opts).await.unwrap();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&created.id, None).await.unwrap() {
        while output.next().await.is_some() {}
    }
    loop {
        let i = docker.inspect_exec(&created.id).await.unwrap();
        if i.running != Some(true) {
            if let Some(c) = i.exit_code {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `total` execs of `true` with `conc` workers, raw (with `docker`) or through berth
/// over the engine's exec path; returns per-exec latencies and the wall time.
async fn run_load(
    conc: usize,
    total: usize,
    projects: &Arc<Vec<String>>,
    docker: Option<&Docker>,
    socket: &Path,
) -> (Vec<Duration>, Duration) {
    run_cmd(conc, total, projects, docker, socket, &["true"], "exec").await
}

/// Runs `total` execs of `cmd` with `conc` workers: raw when `docker` is given, else
/// through berth on `path` (`"agent"` or `"exec"`).
async fn run_cmd(
    conc: usize,
    total: usize,
    projects: &Arc<Vec<String>>,
    docker: Option<&Docker>,
    socket: &Path,
    cmd: &'static [&'static str],
    path: &'static str,
) -> (Vec<Duration>, Duration) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let t = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conc {
        let (next, lat, projects) = (next.clone(), lat.clone(), projects.clone());
        let docker = docker.cloned();
        let socket = socket.to_path_buf();
        workers.push(tokio::spawn(async move {
            let mut client = if docker.is_none() { Some(Client::connect(&socket).await.unwrap()) } else { None };
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= total {
                    break;
                }
                let p = &projects[i % projects.len()];
                let t = Instant::now();
                match (&docker, client.as_mut()) {
                    (Some(d), _) => assert_eq!(raw_exec(d, &format!("berth-{p}"), cmd).await, 0),
                    (None, Some(c)) => {
                        let r = c.ok("project.exec", json!({"name": p, "command": cmd, "path": path})).await;
                        assert_eq!(r["exit_code"], 0);
                        assert_eq!(r["path"], path, "{r}");
                    }
                    _ => unreachable!(),
                }
                lat.lock().await.push(t.elapsed());
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let wall = t.elapsed();
    let lat = std::mem::take(&mut *lat.lock().await);
    (lat, wall)
}

async fn exec_and_status(docker: &Docker, wants: &dyn Fn(&str) -> bool) {
    let mut d = Daemon::new("");
    d.start().await;
    let mut c = Client::connect(&d.socket).await.unwrap();
    let projects: Vec<String> = (0..8).map(|i| d.name(&format!("p{i}"))).collect();
    for p in &projects {
        c.ok("project.create", json!({"name": p})).await;
    }
    let projects = Arc::new(projects);
    if wants("exec") {
        println!("\n## exec: `true` in 8 projects, berth's engine exec path over the socket vs raw bollard exec");
        println!("| concurrency | execs | raw p50 | berth p50 | p50 ratio | raw p99 | berth p99 | raw exec/s | berth exec/s | throughput ratio |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        // Warm both paths.
        run_load(4, 40, &projects, Some(docker), &d.socket).await;
        run_load(4, 40, &projects, None, &d.socket).await;
        for (conc, total) in [(1usize, 400usize), (8, 640), (32, 768)] {
            // Interleave small blocks, flipping which side goes first, so that drift on
            // the machine (2 cores shared with the engine) hits both sides alike.
            let block = (conc * 8).max(10);
            let (mut raw_l, mut raw_w) = (Vec::new(), Duration::ZERO);
            let (mut b_l, mut b_w) = (Vec::new(), Duration::ZERO);
            for i in 0..total.div_ceil(block) {
                for side in [i % 2, 1 - i % 2] {
                    let raw_side = side == 0;
                    let (l, w) = run_load(conc, block, &projects, raw_side.then_some(docker), &d.socket).await;
                    if raw_side {
                        raw_l.extend(l);
                        raw_w += w;
                    } else {
                        b_l.extend(l);
                        b_w += w;
                    }
                }
            }
            let raw = stats(raw_l, raw_w);
            let b = stats(b_l, b_w);
            println!(
                "| {conc} | {total} | {} | {} | {:.3} | {} | {} | {:.0} | {:.0} | {:.3} |",
                ms(raw.p50),
                ms(b.p50),
                b.p50.as_secs_f64() / raw.p50.as_secs_f64(),
                ms(raw.p99),
                ms(b.p99),
                raw.per_sec,
                b.per_sec,
                b.per_sec / raw.per_sec
            );
        }
    }
    if wants("status") {
        println!("\n## status and list while 32 long execs run (`sleep 8`, 4 per project)");
        let mut longs = Vec::new();
        for i in 0..32 {
            let (socket, p) = (d.socket.clone(), projects[i % 8].clone());
            longs.push(tokio::spawn(async move {
                let mut c = Client::connect(&socket).await.unwrap();
                c.ok("project.exec", json!({"name": p, "command": ["sleep", "8"]})).await
            }));
        }
        // Let all 32 start.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut status_l = Vec::new();
        let mut list_l = Vec::new();
        let mut raw_l = Vec::new();
        let t0 = Instant::now();
        for i in 0..200 {
            let p = &projects[i % 8];
            let t = Instant::now();
            c.ok("project.status", json!({"name": p})).await;
            status_l.push(t.elapsed());
            let t = Instant::now();
            c.ok("project.list", json!({})).await;
            list_l.push(t.elapsed());
            let t = Instant::now();
            docker.inspect_container(&format!("berth-{p}"), None).await.unwrap();
            raw_l.push(t.elapsed());
        }
        let wall = t0.elapsed();
        let (s, l, r) = (stats(status_l, wall), stats(list_l, wall), stats(raw_l, wall));
        println!("| call | p50 | p99 |\n|---|---|---|");
        println!("| raw inspect_container | {} | {} |", ms(r.p50), ms(r.p99));
        println!("| berth project.status | {} | {} |", ms(s.p50), ms(s.p99));
        println!("| berth project.list | {} | {} |", ms(l.p50), ms(l.p99));
        for l in longs {
            assert_eq!(l.await.unwrap()["exit_code"], 0);
        }
        println!("\nberthd RSS after these runs (8 projects): {} KiB", d.rss_kib());
    }
    d.stop();
}

// ---------------------------------------------------------------- restart and memory

async fn restart_and_rss() {
    // Register projects without an engine (no containers needed to count as registered).
    // Actors are kept (worst case: every project active since the start).
    let mut d = Daemon::new("host = \"unix:///nonexistent/docker.sock\"\n[janitor]\nretire_actors_after = \"off\"\n");
    d.start().await;
    let base = d.rss_kib();
    let mut c = Client::connect(&d.socket).await.unwrap();
    for i in 0..1000 {
        c.ok("project.create", json!({"name": d.name(&format!("r{i}"))})).await;
    }
    let rss_1000 = d.rss_kib();
    for i in 1000..2000 {
        c.ok("project.create", json!({"name": d.name(&format!("r{i}"))})).await;
    }
    let rss_2000 = d.rss_kib();
    drop(c);
    d.stop();
    // The same with idle actors retiring: memory follows the active projects.
    let mut r = Daemon::new("host = \"unix:///nonexistent/docker.sock\"\n[janitor]\nretire_actors_after = \"1s\"\n");
    r.start().await;
    let mut c = Client::connect(&r.socket).await.unwrap();
    for i in 0..1000 {
        c.ok("project.create", json!({"name": r.name(&format!("q{i}"))})).await;
    }
    while c.ok("daemon.info", json!({})).await["project_actors"] != 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Memory goes back to the system at the supervisor's next retire round (every 500 ms).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_retired = r.rss_kib();
    drop(c);
    r.stop();
    println!("\n## restart and memory");
    println!("| measure | value |\n|---|---|");
    println!("| berthd RSS, empty | {base} KiB |");
    println!("| berthd RSS, 1,000 projects created (1,000 live project actors) | {rss_1000} KiB |");
    println!("| berthd RSS, 2,000 projects created | {rss_2000} KiB |");
    println!("| berthd RSS, 1,000 projects created, idle actors retired (`retire_actors_after`) | {rss_retired} KiB |");
    let mut runs = Vec::new();
    for _ in 0..5 {
        runs.push(d.start().await);
        d.stop();
    }
    // With the engine answering (the real start-up reconcile).
    std::fs::write(&d.config, format!("[docker]\ndefault_image = \"{IMAGE}\"\n")).unwrap();
    let mut with_engine = Vec::new();
    for _ in 0..5 {
        with_engine.push(d.start().await);
        d.stop();
    }
    let rss_restart = {
        d.start().await;
        let r = d.rss_kib();
        d.stop();
        r
    };
    runs.sort();
    with_engine.sort();
    println!("| restart to serving, 2,000 projects, no engine (median of 5) | {} |", ms(runs[2]));
    println!("| restart to serving, 2,000 projects, engine answering (median of 5) | {} |", ms(with_engine[2]));
    println!("| berthd RSS right after that restart (2,000 rows) | {rss_restart} KiB |");
}

// ---------------------------------------------------------------- reconcile

async fn reconcile(docker: &Docker) {
    let mut d = Daemon::new("[janitor]\nreconcile_interval = \"1h\"\n");
    d.start().await;
    let names: Vec<String> = (0..200).map(|i| d.name(&format!("c{i}"))).collect();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for chunk in names.chunks(25) {
        let (socket, chunk) = (d.socket.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&socket).await.unwrap();
            for n in chunk {
                c.ok("project.create", json!({"name": n})).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let made = t.elapsed();
    let mut c = Client::connect(&d.socket).await.unwrap();
    let mut berth = Vec::new();
    let mut list = Vec::new();
    let mut inspects = Vec::new();
    let filters = HashMap::from([("label", vec!["vega.managed-by=berth"])]);
    for _ in 0..5 {
        let t = Instant::now();
        let r = c.ok("janitor.reconcile", json!({})).await;
        assert_eq!(r["changed"], json!([]));
        berth.push(t.elapsed());
        let t = Instant::now();
        let opts = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let got = docker.list_containers(Some(opts)).await.unwrap();
        assert!(got.len() >= 200);
        list.push(t.elapsed());
        let t = Instant::now();
        for n in &names {
            docker.inspect_container(&format!("berth-{n}"), None).await.unwrap();
        }
        inspects.push(t.elapsed());
    }
    berth.sort();
    list.sort();
    inspects.sort();
    println!("\n## reconcile of 200 containers (created in {:.1} s, 8 at a time)", made.as_secs_f64());
    println!("| method | median of 5 |\n|---|---|");
    println!("| raw: one list_containers call | {} |", ms(list[2]));
    println!("| raw: one inspect_container per project (200 calls) | {} |", ms(inspects[2]));
    println!("| berth janitor.reconcile (one list + registry compare) | {} |", ms(berth[2]));
    println!("| ratio berth / raw list | {:.2} |", berth[2].as_secs_f64() / list[2].as_secs_f64());
    println!("| ratio berth / raw inspects | {:.2} |", berth[2].as_secs_f64() / inspects[2].as_secs_f64());
    drop(c);
    d.stop();
}

// ---------------------------------------------------------------- the agent

/// `echo hi` in 8 projects: berth through berth-agent vs berth through the engine's exec
/// API vs raw bollard exec, the same containers, interleaved in small blocks.
async fn agent(docker: &Docker) {
    let mut d = Daemon::new("");
    d.start().await;
    let mut c = Client::connect(&d.socket).await.unwrap();
    let projects: Vec<String> = (0..8).map(|i| d.name(&format!("a{i}"))).collect();
    for p in &projects {
        c.ok("project.create", json!({"name": p})).await;
    }
    let projects = Arc::new(projects);
    const ECHO: &[&str] = &["echo", "hi"];
    println!("\n## agent: `echo hi` in 8 projects — berth via berth-agent vs berth via the engine's exec vs raw bollard exec");
    println!("| concurrency | execs per side | raw p50 | exec-path p50 | agent p50 | raw p50 / agent p50 | raw p99 | exec-path p99 | agent p99 | raw exec/s | agent exec/s | agent / raw throughput |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    run_cmd(4, 40, &projects, Some(docker), &d.socket, ECHO, "exec").await;
    run_cmd(4, 40, &projects, None, &d.socket, ECHO, "exec").await;
    run_cmd(4, 400, &projects, None, &d.socket, ECHO, "agent").await;
    for (conc, total) in [(1usize, 300usize), (32, 640)] {
        let block = (conc * 4).max(20);
        let mut lat: [Vec<Duration>; 3] = Default::default();
        let mut wall = [Duration::ZERO; 3];
        for i in 0..total.div_ceil(block) {
            for k in 0..3 {
                let side = (i + k) % 3;
                let (l, w) = match side {
                    0 => run_cmd(conc, block, &projects, Some(docker), &d.socket, ECHO, "exec").await,
                    1 => run_cmd(conc, block, &projects, None, &d.socket, ECHO, "exec").await,
                    _ => run_cmd(conc, block, &projects, None, &d.socket, ECHO, "agent").await,
                };
                lat[side].extend(l);
                wall[side] += w;
            }
        }
        let [raw, exe, ag] = [0, 1, 2].map(|i| stats(std::mem::take(&mut lat[i]), wall[i]));
        println!(
            "| {conc} | {total} | {} | {} | {} | {:.1}x | {} | {} | {} | {:.0} | {:.0} | {:.1}x |",
            ms(raw.p50),
            ms(exe.p50),
            ms(ag.p50),
            raw.p50.as_secs_f64() / ag.p50.as_secs_f64(),
            ms(raw.p99),
            ms(exe.p99),
            ms(ag.p99),
            raw.per_sec,
            ag.per_sec,
            ag.per_sec / raw.per_sec
        );
    }
    d.stop();
}

const SESSION_IMAGE: &str = "berth-bench/bookworm-python:latest";

/// A minimal Debian with python3, built once with debootstrap (about a minute).
fn session_image() -> bool {
    let have = || {
        Command::new("docker")
            .args(["image", "inspect", SESSION_IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return true;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ok = Command::new("debootstrap")
        .args(["--variant=minbase", "--include=python3-minimal", "bookworm"])
        .arg(&root)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("(session: debootstrap failed or is missing: apt-get install debootstrap)");
        return false;
    }
    let mut tar = Command::new("tar").arg("-C").arg(&root).args(["-c", "."]).stdout(Stdio::piped()).spawn().unwrap();
    let status = Command::new("docker")
        .args(["import", "-", SESSION_IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    tar.wait().is_ok_and(|s| s.success()) && status.success()
}

/// The 120 commands of an agent-like session: look around, read, search, compute.
fn session_commands() -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for i in 0..24 {
        let f = format!("src/mod{}.py", i % 6);
        cmds.push(vec!["sh".into(), "-c".into(), "cd /workspace/src && ls".into()]);
        cmds.push(vec!["ls".into(), "-la".into(), "/workspace/src".into()]);
        cmds.push(vec!["cat".into(), f.clone()]);
        cmds.push(vec!["grep".into(), "-rn".into(), format!("def f{}", i % 5), "/workspace/src".into()]);
        cmds.push(vec!["python3".into(), "-c".into(), format!("print(sum(range({})))", 1000 + i)]);
    }
    cmds
}

/// The same 120-command session through berth (via the agent) and through docker-py's
/// `exec_run` on the same container.
async fn session(docker: &Docker) {
    println!("\n## session: 120 agent-like commands (cd+ls, ls, cat, grep, python3 -c), one after another");
    if !session_image() {
        return;
    }
    let py = PathBuf::from(std::env::var("BERTH_BENCH_PYTHON").unwrap_or_else(|_| "python3".into()));
    let has_docker_py =
        Command::new(&py).args(["-c", "import docker"]).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has_docker_py {
        println!(
            "(session: no docker-py for {}: pip install docker, or set BERTH_BENCH_PYTHON to a venv's python)",
            py.display()
        );
        return;
    }
    let mut d = Daemon::new("");
    d.start().await;
    let mut c = Client::connect(&d.socket).await.unwrap();
    let name = d.name("session");
    c.ok("project.create", json!({"name": name, "image": SESSION_IMAGE})).await;
    let src = d.state.join("projects").join(&name).join("src");
    std::fs::create_dir_all(&src).unwrap();
    for m in 0..6 {
        let body: String = (0..40).map(|k| format!("def f{}(x):\n    return x * {k}\n\n", k % 5)).collect();
        std::fs::write(src.join(format!("mod{m}.py")), body).unwrap();
    }
    let cmds = session_commands();
    let script = r#"
import json, sys, time, docker
client = docker.from_env()
c = client.containers.get(sys.argv[1])
cmds = json.load(open(sys.argv[2]))
t = time.monotonic()
for cmd in cmds:
    r = c.exec_run(cmd, workdir="/workspace")
    assert r.exit_code == 0, (cmd, r)
print(time.monotonic() - t)
"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.py"), script).unwrap();
    std::fs::write(dir.path().join("cmds.json"), serde_json::to_string(&cmds).unwrap()).unwrap();
    let run_py = || {
        let out = Command::new(&py)
            .arg(dir.path().join("s.py"))
            .arg(format!("berth-{name}"))
            .arg(dir.path().join("cmds.json"))
            .output()
            .unwrap();
        assert!(out.status.success(), "docker-py session: {}", String::from_utf8_lossy(&out.stderr));
        Duration::from_secs_f64(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
    };
    let _ = docker;
    println!("| run | docker-py exec_run | berth (agent) | speedup |\n|---|---|---|---|");
    for run in 1..=3 {
        let py_t = run_py();
        let t = Instant::now();
        for cmd in &cmds {
            let r = c.ok("project.exec", json!({"name": name, "command": cmd, "workdir": "/workspace"})).await;
            assert_eq!(r["exit_code"], 0, "{cmd:?}: {r}");
            assert_eq!(r["path"], "agent");
        }
        let b_t = t.elapsed();
        println!(
            "| {run} | {:.0} ms | {:.0} ms | {:.1}x |",
            py_t.as_secs_f64() * 1e3,
            b_t.as_secs_f64() * 1e3,
            py_t.as_secs_f64() / b_t.as_secs_f64()
        );
    }
    d.stop();
}

// ---------------------------------------------------------------- cp

/// Runs `cmd` to its end; its wall time and peak RSS (KiB: its `VmHWM`, read every 2 ms
/// while it runs; `wait4`'s `ru_maxrss` would count the bench's own memory, which the
/// child shares between fork and exec).
fn run_measured(mut cmd: Command) -> (Duration, u64) {
    let t = Instant::now();
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            let hwm = s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next());
            peak = peak.max(hwm.and_then(|v| v.parse().ok()).unwrap_or(0));
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = t.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{cmd:?} failed: {err}");
    (wall, peak)
}

/// Bytes that do not compress: a xorshift stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes under `p` (files only).
fn tree_bytes(p: &Path) -> u64 {
    let m = std::fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        std::fs::read_dir(p).unwrap().map(|e| tree_bytes(&e.unwrap().path())).sum()
    } else {
        m.len()
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// 200 MiB into and out of one container, as one file and as 2,000 files in 40
/// directories: `berth cp` and `docker cp` alternately (which goes first flips each
/// round), 3 rounds, medians.
async fn cp() {
    const MIB: usize = 1 << 20;
    let mut d = Daemon::new("");
    d.start().await;
    let mut c = Client::connect(&d.socket).await.unwrap();
    let name = d.name("cp");
    c.ok("project.create", json!({"name": name})).await;
    let container = format!("berth-{name}");
    let host = tempfile::tempdir().unwrap();
    let file = host.path().join("one.bin");
    std::fs::write(&file, noise(200 * MIB, 1)).unwrap();
    let tree = host.path().join("tree");
    for dir in 0..40 {
        let sub = tree.join(format!("d{dir:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..50 {
            std::fs::write(sub.join(format!("f{f:02}.bin")), noise(200 * MIB / 2000, (dir * 50 + f) as u64)).unwrap();
        }
    }
    let docker = |args: &[&str]| {
        let st = Command::new("docker").args(args).stdout(Stdio::null()).status().unwrap();
        assert!(st.success(), "docker {args:?}");
    };
    // What the copies out start from, put there by docker cp.
    docker(&["exec", &container, "mkdir", "-p", "/tmp/src", "/tmp/in"]);
    docker(&["cp", file.to_str().unwrap(), &format!("{container}:/tmp/src/one.bin")]);
    docker(&["cp", tree.to_str().unwrap(), &format!("{container}:/tmp/src/tree")]);
    let berth = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("--socket").arg(&d.socket).arg("cp").arg("-q").args(args);
        cmd
    };
    let out_dir = host.path().join("out");
    println!("\n## cp: 200 MiB into and out of a container, `berth cp` vs `docker cp` (median of 3, alternating)");
    println!("| what | direction | docker cp | berth cp | berth / docker | berth peak RSS |");
    println!("|---|---|---|---|---|---|");
    for (what, src) in [("one 200 MiB file", &file), ("2,000 files of 100 KiB in 40 dirs", &tree)] {
        let base = src.file_name().unwrap().to_str().unwrap().to_string();
        let size = tree_bytes(src);
        for dir in ["in", "out"] {
            let (mut b_t, mut d_t, mut rss) = (Vec::new(), Vec::new(), 0u64);
            for round in 0..3 {
                for side in [round % 2, 1 - round % 2] {
                    // A fresh destination each time.
                    docker(&["exec", &container, "rm", "-rf", &format!("/tmp/in/{base}")]);
                    let _ = std::fs::remove_dir_all(&out_dir);
                    let _ = std::fs::remove_file(&out_dir);
                    let in_dst = format!("/tmp/in/{base}");
                    let out_src = format!("/tmp/src/{base}");
                    let cmd = match (dir, side) {
                        ("in", 0) => berth(&[src.to_str().unwrap(), &format!("{name}:{in_dst}")]),
                        ("out", 0) => berth(&[&format!("{name}:{out_src}"), out_dir.to_str().unwrap()]),
                        (_, _) => {
                            let mut cmd = Command::new("docker");
                            cmd.arg("cp");
                            if dir == "in" {
                                cmd.arg(src).arg(format!("{container}:{in_dst}"));
                            } else {
                                cmd.arg(format!("{container}:{out_src}")).arg(&out_dir);
                            }
                            cmd
                        }
                    };
                    let (t, r) = run_measured(cmd);
                    // The copy is all there.
                    let landed = if dir == "in" {
                        let o =
                            Command::new("docker").args(["exec", &container, "du", "-sb", &in_dst]).output().unwrap();
                        let du =
                            String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("0").to_string();
                        // du counts the directories' own sizes too.
                        du.parse::<u64>().unwrap() >= size
                    } else {
                        tree_bytes(&out_dir) == size
                    };
                    assert!(landed, "{what} {dir}: the copy is incomplete");
                    if side == 0 {
                        b_t.push(t);
                        rss = rss.max(r);
                    } else {
                        d_t.push(t);
                    }
                }
            }
            let (b, dk) = (median(b_t), median(d_t));
            println!(
                "| {what} | {dir} | {} | {} | {:.2}x | {} MiB |",
                ms(dk),
                ms(b),
                b.as_secs_f64() / dk.as_secs_f64(),
                rss / 1024
            );
        }
    }
    drop(c);
    d.stop();
}

// ---------------------------------------------------------------- snapshot

/// Runs a command to its end and returns how long it took.
fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed()
}

fn sh(args: &[&str]) -> Duration {
    timed(Command::new(args[0]).args(&args[1..]))
}

/// A project whose workspace holds 200 MiB of mixed files (one of 100 MiB, 2,000 of
/// 50 KiB in 40 dirs) and whose container holds 50 MiB of changes: snapshot, restore and
/// fork through berth, and the same by hand (`docker commit` + `cp -a`; `docker rm` +
/// `docker run` + `cp -a`), alternately, 5 rounds, medians; the page cache is written
/// back (`sync`) before each timed operation so one's writeback does not land on the next.
async fn snapshot() {
    const MIB: usize = 1 << 20;
    let mut d = Daemon::new("[snapshots]\nkeep = 50\n");
    d.start().await;
    let mut c = Client::connect(&d.socket).await.unwrap();
    let name = d.name("snap");
    let p = c.ok("project.create", json!({"name": name})).await;
    let ws = PathBuf::from(p["path"].as_str().unwrap());
    std::fs::write(ws.join("big.bin"), noise(100 * MIB, 7)).unwrap();
    for dir in 0..40 {
        let sub = ws.join(format!("src/d{dir:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..50 {
            std::fs::write(sub.join(format!("f{f:02}.txt")), noise(50 * 1024, (dir * 50 + f) as u64)).unwrap();
        }
    }
    let container = format!("berth-{name}");
    sh(&[
        "docker",
        "exec",
        &container,
        "sh",
        "-c",
        "mkdir -p /opt/changes && for i in $(seq 1 50); do head -c 1048576 /dev/urandom > /opt/changes/c$i; done",
    ]);
    let scratch = tempfile::tempdir_in(d.state.parent().unwrap()).unwrap();
    let by_hand_image = |i: usize| format!("berth-bench-hand:{}-{i}", d.prefix);
    let hand_container = format!("{}-hand", d.prefix);
    let run_by_hand = |image: &str, ws: &Path| {
        let mount = format!("{}:/workspace", ws.display());
        let label = format!("vega.project={}-hand", d.prefix);
        sh(&[
            "docker",
            "run",
            "-d",
            "--name",
            &hand_container,
            "--label",
            &label,
            "-v",
            &mount,
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            "sleep 1000000",
        ]);
    };
    println!("\n## snapshot: 200 MiB workspace, 50 MiB of container changes; berth vs by hand (median of 5; each operation on both sides back to back, order flipping; `sync` before each)");
    println!("| operation | by hand | berth | berth / by hand |");
    println!("|---|---|---|---|");
    let (mut snap_b, mut snap_h, mut rest_b, mut rest_h) = (vec![], vec![], vec![], vec![]);
    let (mut fork_b, mut fork_h, mut forkc_b, mut forkc_h) = (vec![], vec![], vec![], vec![]);
    let mut snapshots = Vec::new();
    let fork = d.name("fork");
    for round in 0..5 {
        let image = by_hand_image(round);
        let copy = scratch.path().join(format!("snap{round}"));
        let forked = scratch.path().join("fork");
        let target = scratch.path().join("restored");
        let mut id = String::new();
        // Each operation on both sides back to back (which side goes first flips each
        // round), so both meet the same disk weather.
        for op in 0..4 {
            for side in [round % 2, 1 - round % 2] {
                // A restore deletes the workspace it replaced after answering: let that
                // finish, so that neither side's timed step runs on a disk still busy
                // with the other's deletes.
                let snapdir = d.state.join("snapshots");
                let busy = || {
                    std::fs::read_dir(&snapdir)
                        .map(|r| r.flatten().any(|e| e.file_name().to_string_lossy().starts_with(".gone-")))
                        .unwrap_or(false)
                };
                while busy() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sh(&["sync"]);
                let t = Instant::now();
                match (op, side) {
                    (0, 0) => {
                        id = c.ok("snapshot.create", json!({"name": name})).await["id"].as_str().unwrap().to_string();
                        snapshots.push(id.clone());
                    }
                    (0, _) => {
                        sh(&["docker", "commit", "--pause=true", &container, &image]);
                        sh(&["cp", "-a", ws.to_str().unwrap(), copy.to_str().unwrap()]);
                    }
                    (1, 0) => drop(c.ok("snapshot.restore", json!({"name": name, "id": id})).await),
                    (1, _) => {
                        // A new container from the image and the copy put back (into a
                        // scratch workspace: the project's own stays berth's).
                        let _ = Command::new("docker")
                            .args(["rm", "-f", &hand_container])
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status();
                        sh(&["rm", "-rf", target.to_str().unwrap()]);
                        sh(&["cp", "-a", copy.to_str().unwrap(), target.to_str().unwrap()]);
                        run_by_hand(&image, &target);
                    }
                    (2, 0) => drop(c.ok("project.fork", json!({"from": name, "name": fork, "snapshot": id})).await),
                    (2, _) => {
                        sh(&["cp", "-a", copy.to_str().unwrap(), forked.to_str().unwrap()]);
                        run_by_hand(&image, &forked);
                    }
                    (_, 0) => drop(c.ok("project.fork", json!({"from": name, "name": fork})).await),
                    (_, _) => {
                        sh(&["docker", "commit", "--pause=true", &container, &format!("{image}-cur")]);
                        sh(&["cp", "-a", ws.to_str().unwrap(), forked.to_str().unwrap()]);
                        run_by_hand(&format!("{image}-cur"), &forked);
                    }
                }
                let took = t.elapsed();
                let (b, h) = match op {
                    0 => (&mut snap_b, &mut snap_h),
                    1 => (&mut rest_b, &mut rest_h),
                    2 => (&mut fork_b, &mut fork_h),
                    _ => (&mut forkc_b, &mut forkc_h),
                };
                if side == 0 { b } else { h }.push(took);
                // Untimed clean-up.
                match (op, side) {
                    (2 | 3, 0) => drop(c.ok("project.delete", json!({"name": fork, "purge": true})).await),
                    (1..=3, _) if side == 1 => {
                        sh(&["docker", "rm", "-f", &hand_container]);
                        let _ = std::fs::remove_dir_all(&forked);
                    }
                    _ => {}
                }
            }
        }
        let _ = std::fs::remove_dir_all(&copy);
        let _ = Command::new("docker")
            .args(["rmi", &image, &format!("{image}-cur")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for (what, b, h) in [
        ("snapshot (commit + workspace copy)", snap_b, snap_h),
        ("restore", rest_b, rest_h),
        ("fork from a snapshot", fork_b, fork_h),
        ("fork from the current state", forkc_b, forkc_h),
    ] {
        eprintln!("{what}: berth {b:?}, by hand {h:?}");
        let (b, h) = (median(b), median(h));
        println!("| {what} | {} | {} | {:.2}x |", ms(h), ms(b), b.as_secs_f64() / h.as_secs_f64());
    }
    for id in snapshots {
        c.ok("snapshot.delete", json!({"id": id})).await;
    }
    c.ok("project.delete", json!({"name": name, "purge": true})).await;
    drop(c);
    d.stop();
}
