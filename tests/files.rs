//! Files in a project (`fs.*`), on the real engine through berth-agent and on the host
//! for projects without a container: binary-safe chunked round trips, every bad path and
//! param refused with the right kind and nothing changed, and symlinks seen as the
//! container (or the workspace's confinement) sees them, never resolved on the host.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(v: &Value) -> Vec<u8> {
    match v["encoding"].as_str() {
        Some("base64") => base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap(),
        _ => v["data"].as_str().unwrap().as_bytes().to_vec(),
    }
}

/// Bytes that are not UTF-8 and not compressible: a xorshift stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A daemon with no engine and local execution on: projects live on the host.
fn host_daemon() -> Daemon {
    Daemon::start(&format!(
        "[docker]\nhost = \"unix:///nonexistent/berth-test.sock\"\ndefault_image = \"{IMAGE}\"\n[local]\nenabled = true\n"
    ))
}

/// Writes `data` to `path` in 512 KiB chunks at their offsets (the first one replaces
/// the file), then reads it back in 4 MiB chunks.
fn round_trip(d: &Daemon, name: &str, path: &str, data: &[u8]) {
    let mut c = d.client();
    for (i, chunk) in data.chunks(512 * 1024).enumerate() {
        let mut p = json!({"name": name, "path": path, "data": b64(chunk), "encoding": "base64", "mkdirs": true});
        if i > 0 {
            p["offset"] = json!(i * 512 * 1024);
        }
        let r = c.call("fs.write", p);
        assert_eq!(r["result"]["size"], json!((i * 512 * 1024 + chunk.len()) as u64), "{r}");
    }
    let st = d.ok("fs.stat", json!({"name": name, "path": path}));
    assert_eq!((st["type"].as_str(), st["size"].as_u64()), (Some("file"), Some(data.len() as u64)), "{st}");
    let mut back = Vec::with_capacity(data.len());
    loop {
        let r = c.call("fs.read", json!({"name": name, "path": path, "offset": back.len(), "limit": 4 << 20}));
        let r = &r["result"];
        assert_eq!(r["size"], json!(data.len()));
        back.extend_from_slice(&unb64(r));
        if r["eof"] == true {
            break;
        }
    }
    assert!(back == data, "the {} bytes read back differ from those written", back.len());
}

#[test]
fn a_50_mib_binary_file_round_trips_in_chunks_in_a_container() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("big");
    d.ok("project.create", json!({"name": name}));
    let data = noise(50 << 20, 7);
    round_trip(&d, &name, "deep/er/blob.bin", &data);
    // The container sees the same bytes where the relative path says.
    let r = d.ok("project.exec", json!({"name": name, "command": ["wc", "-c", "/workspace/deep/er/blob.bin"]}));
    assert!(r["stdout"].as_str().unwrap().starts_with(&format!("{} ", data.len())), "{r}");
    // Absolute paths anywhere in the container, text kept as text.
    d.ok("fs.write", json!({"name": name, "path": "/root/note.txt", "data": "héllo\n", "mode": "0600"}));
    let r = d.ok("fs.read", json!({"name": name, "path": "/root/note.txt"}));
    assert_eq!((r["data"].as_str(), r["encoding"].as_str(), r["eof"].as_bool()), (Some("héllo\n"), None, Some(true)));
    let st = d.ok("fs.stat", json!({"name": name, "path": "/root/note.txt"}));
    assert_eq!((st["mode"].as_str(), st["path"].as_str()), (Some("0600"), Some("/root/note.txt")), "{st}");
    // Appends, and a read in the middle.
    d.ok("fs.write", json!({"name": name, "path": "/root/note.txt", "data": "more", "append": true}));
    let r = d.ok("fs.read", json!({"name": name, "path": "/root/note.txt", "offset": 7, "limit": 3}));
    assert_eq!((r["data"].as_str(), r["size"].as_u64(), r["eof"].as_bool()), (Some("mor"), Some(11), Some(false)));
}

#[test]
fn a_50_mib_binary_file_round_trips_in_chunks_on_the_host() {
    if !docker_available() {
        return;
    }
    let d = host_daemon();
    let name = d.name("hostbig");
    d.ok("project.create", json!({"name": name}));
    let data = noise(50 << 20, 11);
    round_trip(&d, &name, "blob.bin", &data);
    let host = d.state.join("projects").join(&name).join("blob.bin");
    assert!(std::fs::read(&host).unwrap() == data, "the workspace file differs");
}

/// The listing of a directory, names and sizes and modes, to see that nothing changed.
fn snapshot(d: &Daemon, name: &str, path: &str) -> Value {
    d.ok("fs.list", json!({"name": name, "path": path}))
}

fn bad_calls_change_nothing(d: &Daemon, name: &str) {
    let ok = |m: &str, p: Value| d.ok(m, p);
    ok("fs.mkdir", json!({"name": name, "path": "t/dir/sub", "parents": true}));
    ok("fs.write", json!({"name": name, "path": "t/file", "data": "keep"}));
    let before = snapshot(d, name, "t");
    let n = name;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        ("fs.read", json!({"name": n, "path": "t/dir"}), "invalid_params", "t/dir"),
        ("fs.read", json!({"name": n, "path": "t/missing"}), "not_found", "t/missing"),
        ("fs.write", json!({"name": n, "path": "t/dir", "data": "x"}), "invalid_params", "t/dir"),
        ("fs.write", json!({"name": n, "path": "t/nope/f", "data": "x"}), "invalid_params", "t/nope"),
        ("fs.write", json!({"name": n, "path": "t/file/under", "data": "x"}), "invalid_params", "t/file"),
        ("fs.write", json!({"name": n, "path": "t/f2", "data": "x", "mode": "999"}), "invalid_params", "999"),
        ("fs.write", json!({"name": n, "path": "t/f2", "data": "x", "mode": "17777"}), "invalid_params", "17777"),
        (
            "fs.write",
            json!({"name": n, "path": "t/f2", "data": "x", "append": true, "offset": 1}),
            "invalid_params",
            "append",
        ),
        (
            "fs.write",
            json!({"name": n, "path": "t/f2", "data": "%%", "encoding": "base64"}),
            "invalid_params",
            "base64",
        ),
        ("fs.write", json!({"name": n, "path": "t/f2", "data": "x", "encoding": "rot13"}), "invalid_params", "rot13"),
        ("fs.write", json!({"name": n, "path": "", "data": "x"}), "invalid_params", "path"),
        ("fs.write", json!({"name": n, "path": "t/a\u{0}b", "data": "x"}), "invalid_params", "NUL"),
        ("fs.write", json!({"name": n, "path": "t/f2", "data": "x", "color": "red"}), "invalid_params", "color"),
        ("fs.read", json!({"name": n, "path": "t/file", "limit": 1u64 << 40}), "invalid_params", "limit"),
        ("fs.list", json!({"name": n, "path": "t/file"}), "invalid_params", "t/file"),
        ("fs.list", json!({"name": n, "path": "t/missing"}), "not_found", "t/missing"),
        ("fs.stat", json!({"name": n, "path": "t/missing"}), "not_found", "t/missing"),
        ("fs.remove", json!({"name": n, "path": "t/dir"}), "invalid_params", "t/dir"),
        ("fs.remove", json!({"name": n, "path": "t/missing"}), "not_found", "t/missing"),
        ("fs.mkdir", json!({"name": n, "path": "t/dir"}), "already_exists", "t/dir"),
        ("fs.mkdir", json!({"name": n, "path": "t/file", "parents": true}), "already_exists", "t/file"),
        ("fs.mkdir", json!({"name": n, "path": "t/x/y"}), "invalid_params", "t/x"),
        ("fs.mkdir", json!({"name": n, "path": "t/m", "mode": "rwx"}), "invalid_params", "rwx"),
        ("fs.read", json!({"name": "no-such-project-here", "path": "t/file"}), "not_found", "no-such-project-here"),
        ("fs.read", json!({"name": "../etc", "path": "t/file"}), "invalid_name", "../etc"),
    ];
    for (method, params, kind, named) in cases {
        let r = d.rpc(method, params.clone());
        let got = r["error"]["data"]["kind"].as_str().unwrap_or_else(|| panic!("{method} {params} should fail: {r}"));
        assert_eq!(got, kind, "{method} {params}: {r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(named), "{method} {params}: the message should name {named:?}: {msg}");
    }
    assert_eq!(snapshot(d, name, "t"), before, "a refused call changed something");
    assert_eq!(d.ok("fs.read", json!({"name": name, "path": "t/file"}))["data"], "keep");
}

#[test]
fn bad_paths_and_params_get_the_right_error_and_change_nothing_in_a_container() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("badfs");
    d.ok("project.create", json!({"name": name}));
    bad_calls_change_nothing(&d, &name);
    // Mount points, and trees that hold them, are never emptied: the workspace, berth's
    // own run dir (the agent's socket), the root.
    for path in ["/workspace", "/workspace/", "/.berth", "/.berth/run", "/", "/tmp/.."] {
        let r = d.rpc("fs.remove", json!({"name": name, "path": path, "recursive": true}));
        assert_eq!(r["error"]["data"]["kind"], "invalid_params", "{path}: {r}");
    }
    assert_eq!(d.ok("fs.read", json!({"name": name, "path": "t/file"}))["data"], "keep");
    let r = d.ok("project.exec", json!({"name": name, "command": ["ls", "/.berth/run"]}));
    assert_eq!(r["path"], "agent", "{r}");
    assert!(r["stdout"].as_str().unwrap().lines().any(|l| l == "agent.sock"), "{r}");
}

#[test]
fn bad_paths_and_params_get_the_right_error_and_change_nothing_on_the_host() {
    if !docker_available() {
        return;
    }
    let d = host_daemon();
    let name = d.name("hostbad");
    d.ok("project.create", json!({"name": name}));
    bad_calls_change_nothing(&d, &name);
    // And on the host nothing leaves the workspace.
    for path in ["/etc/passwd", "/workspace/../x", "t/../../x"] {
        let r = d.rpc("fs.read", json!({"name": name, "path": path}));
        assert_eq!(r["error"]["data"]["kind"], "forbidden", "{path}: {r}");
    }
}

#[test]
fn a_symlink_planted_in_the_container_is_what_the_container_sees() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("");
    let name = d.name("links");
    d.ok("project.create", json!({"name": name}));
    // A host file the container's symlinks name by its host path.
    let host_dir = tempfile::tempdir().unwrap();
    let host_file = host_dir.path().join("secret");
    std::fs::write(&host_file, "host secret").unwrap();
    let hf = host_file.to_str().unwrap();
    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c",
            format!("echo container-passwd > /tmp/pw && ln -s /tmp/pw /workspace/pw && ln -s /etc /workspace/etc \
                     && ln -s {hf} /workspace/evil && ls /etc")]}),
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let container_etc = r["stdout"].as_str().unwrap().to_string();
    let st = d.ok("fs.stat", json!({"name": name, "path": "etc"}));
    assert_eq!((st["type"].as_str(), st["target"].as_str()), (Some("symlink"), Some("/etc")), "{st}");
    // Read through a link: the container's file.
    assert_eq!(d.ok("fs.read", json!({"name": name, "path": "pw"}))["data"], "container-passwd\n");
    // List through a link: the container's /etc, not the host's.
    let listed: Vec<String> = d
        .ok("fs.list", json!({"name": name, "path": "etc"}))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    let mut expected: Vec<String> = container_etc.split_whitespace().map(String::from).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // A link to a host path: the host file is never read or written.
    let r = d.rpc("fs.read", json!({"name": name, "path": "evil"}));
    assert_eq!(r["error"]["data"]["kind"], "not_found", "{r}");
    // (Its directory does not exist in the container, so the write fails there.)
    let r = d.rpc("fs.write", json!({"name": name, "path": "evil", "data": "overwritten"}));
    assert!(r["error"].is_object(), "{r}");
    assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host secret");
    // Removing a link removes the link only.
    d.ok("fs.remove", json!({"name": name, "path": "etc"}));
    d.ok("fs.remove", json!({"name": name, "path": "pw"}));
    let r = d.ok(
        "project.exec",
        json!({"name": name, "command": ["sh", "-c", "cat /tmp/pw; ls /etc | wc -l; ls /workspace"]}),
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(out.starts_with("container-passwd\n"), "{out}");
    assert!(!out.contains("etc\n") && !out.contains("pw\n"), "{out}");
    // Recursive removal, modes, mkdir.
    d.ok("fs.mkdir", json!({"name": name, "path": "a/b/c", "parents": true, "mode": "0700"}));
    assert_eq!(d.ok("fs.stat", json!({"name": name, "path": "a/b/c"}))["mode"], "0700");
    d.ok("fs.remove", json!({"name": name, "path": "a", "recursive": true}));
    assert_eq!(d.err_kind("fs.stat", json!({"name": name, "path": "a"})), "not_found");
}

#[test]
fn a_symlink_out_of_the_workspace_is_refused_on_the_host() {
    if !docker_available() {
        return;
    }
    let d = host_daemon();
    let name = d.name("hostlinks");
    d.ok("project.create", json!({"name": name}));
    let ws = d.state.join("projects").join(&name);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("keep"), "outside").unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.join("out")).unwrap();
    // (Made through berth, so that it belongs to the user host files are made as.)
    d.ok("fs.mkdir", json!({"name": name, "path": "in"}));
    std::os::unix::fs::symlink("in", ws.join("alias")).unwrap();
    for (m, p) in [
        ("fs.read", json!({"name": name, "path": "out/keep"})),
        ("fs.write", json!({"name": name, "path": "out/new", "data": "x"})),
        ("fs.list", json!({"name": name, "path": "out"})),
    ] {
        assert_eq!(d.err_kind(m, p.clone()), "forbidden", "{m} {p}");
    }
    // A link that stays inside works; stat shows the link itself.
    d.ok("fs.write", json!({"name": name, "path": "alias/f", "data": "inside"}));
    assert_eq!(std::fs::read_to_string(ws.join("in/f")).unwrap(), "inside");
    let st = d.ok("fs.stat", json!({"name": name, "path": "out"}));
    assert_eq!(st["type"], "symlink", "{st}");
    d.ok("fs.remove", json!({"name": name, "path": "out"}));
    assert_eq!(std::fs::read_to_string(outside.path().join("keep")).unwrap(), "outside");
    assert!(std::fs::symlink_metadata(ws.join("out")).is_err());
}

#[test]
fn a_container_without_the_agent_says_why_it_has_no_files() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nagent = false\n");
    let name = d.name("noagent");
    d.ok("project.create", json!({"name": name}));
    let r = d.rpc("fs.read", json!({"name": name, "path": "/etc/hostname"}));
    assert_eq!(r["error"]["data"]["kind"], "runtime_unavailable", "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("berth-agent"), "{r}");
    let r = d.rpc("process.spawn", json!({"name": name, "command": ["sleep", "1"]}));
    assert_eq!(r["error"]["data"]["kind"], "runtime_unavailable", "{r}");
}
