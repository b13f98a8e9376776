//! Snapshots, restore and fork on the real engine: what comes back, what stays apart,
//! what bad input gets, how many are kept, and what a kill -9 at any moment leaves.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs a shell command in the project; returns its stdout (the exit code must be 0).
fn sh(d: &Daemon, name: &str, script: &str) -> String {
    let r = d.ok("project.exec", json!({"name": name, "command": ["sh", "-c", script]}));
    assert_eq!(r["exit_code"], 0, "{script}: {r}");
    r["stdout"].as_str().unwrap().to_string()
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
}

fn image_exists(image: &str) -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The names in `<state>/snapshots`.
fn snapshot_dir_entries(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("snapshots"))
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Images labelled as made by this daemon (its state dir), as `repo:tag` names.
fn daemon_images(state: &Path) -> Vec<String> {
    let filter = format!("label=berth.state-dir={}", state.display());
    let out = docker(&["images", "--filter", &filter, "--format", "{{.Repository}}:{{.Tag}}"]);
    // Podman lists `berth-snapshot:x` as `localhost/berth-snapshot:x`.
    let mut v: Vec<String> = out.lines().map(|l| l.strip_prefix("localhost/").unwrap_or(l).to_string()).collect();
    v.sort();
    v
}

#[test]
fn restore_brings_back_the_workspace_the_container_and_the_settings() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("snap");
    d.ok("project.create", json!({"name": name, "env": {"STAGE": "one"}}));
    sh(&d, &name, "echo before > /workspace/w.txt; mkdir -p /root && echo before > /root/r.txt");

    // Through the CLI, as a user would: create prints the id, ls shows it.
    let id = d.berth_ok(&["snapshot", "create", &name, "--label", "before the change"]).trim().to_string();
    assert!(id.starts_with("snap-"), "{id}");
    let ls = d.berth_ok(&["snapshot", "ls", &name]);
    assert!(ls.contains(&id) && ls.contains("before the change"), "{ls}");
    let listed = d.ok("snapshot.list", json!({"name": name}));
    let s = &listed[0];
    assert_eq!((s["id"].as_str(), s["project"].as_str()), (Some(id.as_str()), Some(name.as_str())));
    assert_eq!(s["workspace_bytes"], 7, "w.txt is the workspace: {s}");
    let image = s["image"].as_str().unwrap().to_string();
    // The image carries berth's labels and the project.
    let labels = docker(&["image", "inspect", "-f", "{{json .Config.Labels}}", &image]);
    let labels: Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["vega.project"], name.as_str());
    assert_eq!(labels["vega.managed-by"], "berth");
    assert_eq!(labels["berth.snapshot"], id.as_str());
    // The container is running again (not left paused).
    assert_eq!(docker_inspect(&format!("berth-{name}"), "{{.State.Status}}").as_deref(), Some("running"));

    sh(&d, &name, "echo after > /workspace/w.txt; echo extra > /workspace/new.txt; rm /root/r.txt; echo x > /root/x");
    let restored = d.ok("snapshot.restore", json!({"name": name, "id": id}));
    assert_eq!(restored["name"], name.as_str());
    assert_eq!(restored["status"], "running");
    assert_eq!(restored["env"]["STAGE"], "one");
    assert_eq!(sh(&d, &name, "cat /workspace/w.txt /root/r.txt"), "before\nbefore\n");
    assert_eq!(sh(&d, &name, "ls /workspace; ls /root"), "w.txt\nr.txt\n", "what came after the snapshot is gone");
    assert_eq!(sh(&d, &name, "echo $STAGE"), "one\n");
    // The snapshot is still there and can be restored again.
    assert_eq!(ids(&d.ok("snapshot.list", json!({"name": name}))), std::slice::from_ref(&id));
    assert!(
        snapshot_dir_entries(&d.state).iter().all(|e| !e.starts_with('.') || e.starts_with(".gone-")),
        "no staging left behind"
    );
    // The replaced workspace goes in the background, soon.
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot_dir_entries(&d.state).iter().any(|e| e.starts_with(".gone-")) {
        assert!(Instant::now() < deadline, "the replaced workspace was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Deleting the snapshot while the project runs on its image keeps the image.
    d.ok("snapshot.delete", json!({"id": id}));
    assert!(d.ok("snapshot.list", json!({})).as_array().unwrap().is_empty());
    assert!(image_exists(&image), "the project still runs on {image}");
    assert_eq!(snapshot_dir_entries(&d.state), Vec::<String>::new());
    // Deleting the project releases it.
    d.ok("project.delete", json!({"name": name, "purge": true}));
    assert!(!image_exists(&image), "{image} outlived everything that used it");
}

#[test]
fn a_fork_diverges_from_its_source_and_bad_requests_change_nothing() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let (src, live, old, other) = (d.name("src"), d.name("live"), d.name("old"), d.name("other"));
    d.ok("project.create", json!({"name": src, "ports": {}}));
    d.ok("project.create", json!({"name": other}));
    sh(&d, &src, "echo one > /workspace/f; mkdir -p /root && echo one > /root/g");
    let snap = d.ok("snapshot.create", json!({"name": src}))["id"].as_str().unwrap().to_string();
    let foreign = d.ok("snapshot.create", json!({"name": other}))["id"].as_str().unwrap().to_string();
    sh(&d, &src, "echo two > /workspace/f; echo two > /root/g");

    // From the current state (through the CLI) and from the snapshot.
    let out = d.berth_ok(&["fork", &src, &live]);
    assert!(out.contains(&format!("fork of {src}")), "{out}");
    d.ok("project.fork", json!({"from": src, "name": old, "snapshot": snap}));
    assert_eq!(sh(&d, &live, "cat /workspace/f /root/g"), "two\ntwo\n");
    assert_eq!(sh(&d, &old, "cat /workspace/f /root/g"), "one\none\n");
    // Independent afterwards, both ways.
    sh(&d, &live, "echo three > /workspace/f; echo three > /root/g");
    assert_eq!(sh(&d, &src, "cat /workspace/f /root/g"), "two\ntwo\n");
    sh(&d, &src, "echo four > /workspace/f");
    assert_eq!(sh(&d, &live, "cat /workspace/f"), "three\n");
    assert_ne!(d.ok("project.path", json!({"name": live}))["path"], d.ok("project.path", json!({"name": src}))["path"]);

    let projects = d.ok("project.list", json!({}));
    let snaps = d.ok("snapshot.list", json!({}));
    let images = daemon_images(&d.state);
    let unknown = "snap-000000000000";
    // (method, params, kind, a value the message must name)
    let rows: Vec<(&str, Value, &str, &str)> = vec![
        ("project.fork", json!({"from": src, "name": live}), "already_exists", &live),
        ("project.fork", json!({"from": src, "name": src}), "already_exists", &src),
        ("project.fork", json!({"from": src, "name": "../x"}), "invalid_name", "../x"),
        ("project.fork", json!({"from": d.name("nosuch"), "name": d.name("n1")}), "not_found", "nosuch"),
        ("project.fork", json!({"from": src, "name": d.name("n2"), "snapshot": foreign}), "invalid_params", &foreign),
        ("project.fork", json!({"from": src, "name": d.name("n3"), "snapshot": unknown}), "not_found", unknown),
        ("project.fork", json!({"from": src, "name": d.name("n4"), "snapshot": "latest"}), "invalid_params", "latest"),
        ("project.fork", json!({"from": src, "name": d.name("n5"), "ports": {}}), "invalid_params", "ports"),
        ("snapshot.restore", json!({"name": src, "id": foreign}), "invalid_params", &foreign),
        ("snapshot.restore", json!({"name": src, "id": unknown}), "not_found", unknown),
        ("snapshot.restore", json!({"name": d.name("nosuch"), "id": snap}), "not_found", "nosuch"),
        ("snapshot.restore", json!({"name": src, "id": "../../etc"}), "invalid_params", "../../etc"),
        ("snapshot.delete", json!({"id": unknown}), "not_found", unknown),
        ("snapshot.delete", json!({"id": "snap-XYZ"}), "invalid_params", "snap-XYZ"),
        ("snapshot.create", json!({"name": d.name("nosuch")}), "not_found", "nosuch"),
        ("snapshot.create", json!({"name": src, "label": "a\nb"}), "invalid_params", "a\\nb"),
        ("snapshot.create", json!({"name": "Bad Name"}), "invalid_name", "Bad Name"),
        ("snapshot.list", json!({"name": d.name("nosuch")}), "not_found", "nosuch"),
    ];
    for (method, params, kind, named) in rows {
        let r = d.rpc(method, params.clone());
        assert_eq!(r["error"]["data"]["kind"], kind, "{method} {params}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{method} {params}: the message names {named:?}: {msg}");
    }
    assert_eq!(d.ok("project.list", json!({})), projects, "bad requests changed no project");
    assert_eq!(d.ok("snapshot.list", json!({})), snaps, "bad requests changed no snapshot");
    assert_eq!(daemon_images(&d.state), images, "bad requests made or removed no image");
    // Nothing was forked under the refused names.
    assert!(!d.state.join("projects").join(d.name("n2")).exists());
}

#[test]
fn keep_bounds_snapshots_and_the_janitor_prunes_after_it_is_lowered() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("[snapshots]\nkeep = 2\n");
    let name = d.name("keep");
    d.ok("project.create", json!({"name": name}));
    let mut taken = Vec::new();
    for i in 0..3 {
        sh(&d, &name, &format!("echo {i} > /workspace/n"));
        taken.push(
            d.ok("snapshot.create", json!({"name": name, "label": format!("n{i}")}))["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(ids(&d.ok("snapshot.list", json!({"name": name}))), taken[1..], "the oldest was pruned");
    assert!(!image_exists(&format!("berth-snapshot:{}", taken[0])));
    assert!(!d.state.join("snapshots").join(&taken[0]).exists());

    // Lowered to 1: the start-up reconcile (the janitor) prunes to the newest.
    d.terminate();
    std::fs::write(&d.config, format!("[docker]\ndefault_image = \"{IMAGE}\"\n[snapshots]\nkeep = 1\n")).unwrap();
    d.spawn();
    assert_eq!(ids(&d.ok("snapshot.list", json!({"name": name}))), taken[2..]);
    assert!(!image_exists(&format!("berth-snapshot:{}", taken[1])));
    assert_eq!(snapshot_dir_entries(&d.state), taken[2..]);
}

#[test]
fn deleting_a_project_deletes_its_snapshots_unless_kept() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let (gone, kept, revived) = (d.name("gone"), d.name("kept"), d.name("revived"));
    for n in [&gone, &kept] {
        d.ok("project.create", json!({"name": n}));
        sh(&d, n, "echo data > /workspace/d");
        d.ok("snapshot.create", json!({"name": n}));
    }
    d.ok("project.delete", json!({"name": gone, "purge": true}));
    d.berth_ok(&["rm", &kept, "--purge", "--keep-snapshots"]);
    let left = d.ok("snapshot.list", json!({}));
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left[0]["project"], kept.as_str());
    let id = left[0]["id"].as_str().unwrap().to_string();
    assert_eq!(snapshot_dir_entries(&d.state), std::slice::from_ref(&id));
    assert_eq!(daemon_images(&d.state), [format!("berth-snapshot:{id}")]);
    // A kept snapshot of a deleted project still forks.
    d.ok("project.fork", json!({"from": kept, "name": revived, "snapshot": id}));
    assert_eq!(sh(&d, &revived, "cat /workspace/d"), "data\n");
}

#[test]
fn a_snapshot_that_does_not_fit_is_refused_before_anything_is_copied() {
    if !docker_available() {
        return;
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("REQUIRE_DOCKER").is_none(), "this test needs root (a tmpfs state dir) under CI");
        return;
    }
    // The state dir on a 48 MiB tmpfs; the workspace takes 24 MiB of it.
    let small = Tmpfs::new(48);
    let mut d = Daemon::prepare("");
    d.state = small.path.clone();
    d.spawn();
    let name = d.name("full");
    d.ok("project.create", json!({"name": name}));
    sh(&d, &name, "dd if=/dev/zero of=/workspace/big bs=1M count=24 2>/dev/null");
    let r = d.rpc("snapshot.create", json!({"name": name}));
    assert_eq!(r["error"]["data"]["kind"], "too_large", "{r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&(24u64 << 20).to_string()) && msg.contains("free"), "names the bytes: {msg}");
    assert!(d.ok("snapshot.list", json!({})).as_array().unwrap().is_empty());
    assert_eq!(snapshot_dir_entries(&d.state), Vec::<String>::new());
    assert_eq!(daemon_images(&d.state), Vec::<String>::new());
    assert_eq!(docker_inspect(&format!("berth-{name}"), "{{.State.Status}}").as_deref(), Some("running"));
}

/// A tmpfs of `mib` MiB, unmounted and removed on drop (after the daemon using it).
struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        std::fs::create_dir(&path).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0711"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// What must hold after any crash: every listed snapshot is whole (its copy and its
/// image are there), nothing unfinished is left (no staging, no journal, no orphan
/// image, no paused container), and a fork either exists whole or not at all.
fn check_settled(d: &Daemon, context: &str) {
    let listed = d.ok("snapshot.list", json!({}));
    let mut ready = ids(&listed);
    ready.sort();
    let entries = snapshot_dir_entries(&d.state);
    assert_eq!(entries, ready, "{context}: snapshot directories are exactly the listed snapshots");
    let projects = d.ok("project.list", json!({}));
    let used: Vec<String> =
        projects.as_array().unwrap().iter().map(|p| p["image"].as_str().unwrap().to_string()).collect();
    // The engine finishes a commit that berthd was killed waiting for: the image can
    // appear after the restart's reconcile. The next reconcile removes it.
    let orphans = || {
        daemon_images(&d.state)
            .into_iter()
            .filter(|i| !ready.iter().any(|r| i == &format!("berth-snapshot:{r}")) && !used.contains(i))
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = orphans();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{context}: images {left:?} belong to no snapshot and no project\nimages: {}\nlog:\n{}",
            docker(&["images", "-a", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}} {{.CreatedAt}}"]),
            d.log_text()
        );
        d.ok("janitor.reconcile", json!({}));
    }
    for id in &ready {
        assert!(image_exists(&format!("berth-snapshot:{id}")), "{context}: listed snapshot {id} lost its image");
    }
    for p in projects.as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert_ne!(p["status"], "creating", "{context}: {name} left creating");
        let state = docker_inspect(&format!("berth-{name}"), "{{.State.Status}}");
        assert_ne!(state.as_deref(), Some("paused"), "{context}: {name} left paused");
        if name.contains("fork") {
            // A fork that exists is whole.
            assert_eq!(sh(d, name, "cat /workspace/marker /root/marker"), "m\nm\n", "{context}: fork {name}");
        }
    }
}

#[test]
fn kill_9_at_any_moment_of_snapshot_restore_or_fork_leaves_nothing_half_done() {
    if !docker_available() {
        return;
    }
    let mut d = Daemon::start("");
    let name = d.name("crash");
    d.ok("project.create", json!({"name": name}));
    // Enough to copy that a kill lands in the middle of it often.
    sh(
        &d,
        &name,
        "echo m > /workspace/marker; mkdir -p /root && echo m > /root/marker; \
         for i in $(seq 1 40); do dd if=/dev/urandom of=/workspace/f$i bs=64k count=16 2>/dev/null; done",
    );
    let base = d.ok("snapshot.create", json!({"name": name}))["id"].as_str().unwrap().to_string();
    let prefix = d.prefix.clone();
    let request = |round: usize| {
        let fork = format!("{prefix}-fork{round}");
        match round % 4 {
            0 => ("snapshot.create", json!({"name": name})),
            1 => ("snapshot.restore", json!({"name": name, "id": base})),
            2 => ("project.fork", json!({"from": name, "name": fork, "snapshot": base})),
            _ => ("project.fork", json!({"from": name, "name": fork})),
        }
    };
    // Time each kind undisturbed, to aim the kills inside it.
    let mut spans = Vec::new();
    for kind in 0..4 {
        let (method, params) = request(100 + kind);
        let t0 = Instant::now();
        let r = d.ok(method, params);
        spans.push(t0.elapsed());
        match kind {
            0 => drop(d.ok("snapshot.delete", json!({"id": r["id"]}))),
            2 | 3 => drop(d.ok("project.delete", json!({"name": r["name"], "purge": true}))),
            _ => {}
        }
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}, undisturbed: {spans:?}");
    let mut rng = seed;
    for round in 0..12 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let span = spans[round % 4];
        let at = Duration::from_micros(rng % (span.as_micros() as u64 * 11 / 10 + 1));
        let (method, params) = request(round);
        let mut c = d.client();
        c.send_line(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string());
        // The kill's moment is what is random here; nothing waits on it.
        std::thread::sleep(at);
        d.kill9();
        d.spawn();
        let context = format!("round {round}: kill -9 {at:?} into {method} (seed {seed})");
        check_settled(&d, &context);
        // The project itself still works and holds its files.
        assert_eq!(sh(&d, &name, "cat /workspace/marker"), "m\n", "{context}");
    }
    let log = d.log_text();
    let recovered =
        ["interrupted while being taken", "finished an interrupted restore", "rolled back an interrupted fork"]
            .map(|what| log.matches(what).count());
    eprintln!("recovered after the kills: {recovered:?} (snapshot, restore, fork)");
}
