//! `berth cp`, `exec -d`, `ps`, `logs --process` and `kill` end to end: the real `berth`
//! against a real `berthd` and a real Docker engine (paths checked from inside the
//! container with its own busybox), temp dirs for the host side.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Bytes that are neither UTF-8 nor compressible: a xorshift stream.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `berth ARGS` with `input` on stdin.
fn berth_with_stdin(d: &Daemon, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(berth_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `berth ARGS` that must fail with `code`; returns stderr.
fn berth_fails(d: &Daemon, args: &[&str], code: i32) -> String {
    let o = d.berth(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "berth {args:?}: stdout {} stderr {err}", text(&o.stdout));
    assert!(err.starts_with("berth: "), "{err}");
    err
}

/// A shell script's stdout, run in the project's container.
fn sh(d: &Daemon, name: &str, script: &str) -> String {
    d.berth_ok(&["exec", name, "--", "sh", "-c", script])
}

/// A running project, and a temp dir for the host side.
fn setup(tag: &str) -> Option<(Daemon, String, tempfile::TempDir)> {
    if !docker_available() {
        return None;
    }
    let d = Daemon::start("");
    let name = d.name(tag);
    d.berth_ok(&["create", &name]);
    Some((d, name, tempfile::tempdir().unwrap()))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

#[test]
fn a_50_mib_binary_file_round_trips_host_container_host() {
    let Some((d, name, tmp)) = setup("big") else { return };
    let data = noise(50 << 20, 11);
    let src = tmp.path().join("big.bin");
    std::fs::write(&src, &data).unwrap();
    set_mode(&src, 0o640);
    d.berth_ok(&["cp", src.to_str().unwrap(), &format!("{name}:/tmp/big.bin")]);
    // The container has the same bytes, with the mode.
    let want = Command::new("sha256sum").arg(&src).output().unwrap();
    let want = text(&want.stdout).split_whitespace().next().unwrap().to_string();
    assert_eq!(sh(&d, &name, "sha256sum /tmp/big.bin | cut -d' ' -f1").trim(), want);
    assert_eq!(sh(&d, &name, "stat -c %a /tmp/big.bin").trim(), "640");
    // And back.
    let back = tmp.path().join("back.bin");
    d.berth_ok(&["cp", &format!("{name}:/tmp/big.bin"), back.to_str().unwrap()]);
    let got = std::fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes copied back differ from those copied in");
    assert_eq!(mode(&back), 0o640);
    // --json says what moved.
    let j: Value =
        serde_json::from_str(&d.berth_ok(&["cp", "--json", &format!("{name}:/tmp/big.bin"), back.to_str().unwrap()]))
            .unwrap();
    assert_eq!((j["files"].as_u64(), j["bytes"].as_u64()), (Some(1), Some(50 << 20)), "{j}");
}

/// A tree with modes: `t/` 0755, `t/secret` 0600, `t/run.sh` 0755, `t/sub/` 0700 with
/// `t/sub/deep/note.txt` 0644, and an empty file.
fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deep")).unwrap();
    std::fs::write(root.join("secret"), "s3cret\n").unwrap();
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::write(root.join("sub/deep/note.txt"), noise(300_000, 3)).unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    set_mode(root, 0o755);
    set_mode(&root.join("secret"), 0o600);
    set_mode(&root.join("run.sh"), 0o755);
    set_mode(&root.join("empty"), 0o644);
    set_mode(&root.join("sub/deep/note.txt"), 0o644);
    set_mode(&root.join("sub/deep"), 0o755);
    set_mode(&root.join("sub"), 0o700);
}

/// Every path below `root` with its mode and, for files, its bytes.
fn snapshot(root: &Path) -> Vec<(String, u32, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p.clone());
                out.push((rel, mode(&p), None));
            } else {
                out.push((rel, mode(&p), Some(std::fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_tree_keeps_its_modes_in_and_out() {
    let Some((d, name, tmp)) = setup("tree") else { return };
    let t = tmp.path().join("t");
    make_tree(&t);
    // Onto a missing path: it becomes the tree.
    d.berth_ok(&["cp", t.to_str().unwrap(), &format!("{name}:/tmp/t")]);
    let modes = sh(&d, &name, "cd /tmp/t && stat -c '%a %n' . secret run.sh sub sub/deep sub/deep/note.txt empty");
    assert_eq!(modes, "755 .\n600 secret\n755 run.sh\n700 sub\n755 sub/deep\n644 sub/deep/note.txt\n644 empty\n");
    assert_eq!(sh(&d, &name, "/tmp/t/run.sh"), "ran\n", "the script runs where it landed");
    // An mtime set in the container comes out to the host.
    sh(&d, &name, "touch -d '2021-03-04 05:06:07' /tmp/t/secret");
    let want_mtime: i64 = sh(&d, &name, "stat -c %Y /tmp/t/secret").trim().parse().unwrap();

    let out = tmp.path().join("out");
    d.berth_ok(&["cp", &format!("{name}:/tmp/t"), out.to_str().unwrap()]);
    assert_eq!(snapshot(&out), snapshot(&t), "the tree came back as it went");
    assert_eq!(mode(&out), 0o755);
    assert_eq!(std::fs::metadata(out.join("secret")).unwrap().mtime(), want_mtime);
}

#[test]
fn tar_streams_in_and_out() {
    let Some((d, name, tmp)) = setup("tar") else { return };
    // In: a tar made here, with a symlink berth cannot make in the container.
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, m: u32, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        b.append_data(&mut h, path, data).unwrap();
    };
    let big = noise(3 << 20, 5);
    add("pkg/", tar::EntryType::Directory, 0o750, b"");
    add("pkg/a.txt", tar::EntryType::Regular, 0o640, b"alpha\n");
    add("pkg/bin/tool", tar::EntryType::Regular, 0o755, &big);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "pkg/link", "a.txt").unwrap();
    let archive = b.into_inner().unwrap();

    sh(&d, &name, "mkdir /tmp/in");
    let o = berth_with_stdin(&d, &["cp", "-", &format!("{name}:/tmp/in")], &archive);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("berth: skipping pkg/link: a symlink"), "the symlink is named: {err}");
    assert_eq!(
        sh(&d, &name, "cd /tmp/in/pkg && stat -c '%a %n' . a.txt bin/tool && stat -c %s bin/tool && ls"),
        format!("750 .\n640 a.txt\n755 bin/tool\n{}\na.txt\nbin\n", big.len())
    );
    assert_eq!(sh(&d, &name, "cat /tmp/in/pkg/a.txt"), "alpha\n");

    // Out: the directory as a tar on stdout, with a symlink made in the container.
    sh(&d, &name, "ln -s a.txt /tmp/in/pkg/ln");
    let o = d.berth(&["cp", &format!("{name}:/tmp/in/pkg"), "-"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(&o.stdout[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let kind = e.header().entry_type();
        let m = e.header().mode().unwrap();
        let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        entries.push((path, kind, m, link, data));
    }
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["pkg/", "pkg/a.txt", "pkg/bin/", "pkg/bin/tool", "pkg/ln"]);
    assert_eq!((entries[0].1, entries[0].2), (tar::EntryType::Directory, 0o750));
    assert_eq!((entries[1].2, entries[1].4.as_slice()), (0o640, &b"alpha\n"[..]));
    assert!(entries[3].4 == big, "the 3 MiB file's bytes");
    assert_eq!((entries[4].1, entries[4].3.as_deref()), (tar::EntryType::Symlink, Some("a.txt")));
    // The system's tar reads it too; `dir/.` gives the contents without the directory.
    let o = d.berth(&["cp", &format!("{name}:/tmp/in/pkg/."), "-"]);
    let listed = tar_list(&o.stdout);
    assert_eq!(listed, ["a.txt", "bin/", "bin/tool", "ln"], "contents only");
    // Extracted on the host by tar(1), the symlink is a symlink.
    let x = tmp.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let mut tar = Command::new("tar").arg("-x").arg("-C").arg(&x).stdin(Stdio::piped()).spawn().unwrap();
    tar.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    assert!(tar.wait().unwrap().success());
    assert_eq!(std::fs::read_link(x.join("ln")).unwrap().to_str(), Some("a.txt"));
    assert_eq!(std::fs::read(x.join("bin/tool")).unwrap().len(), big.len());
    // A tar into something that is not a directory is refused, naming it.
    let o = berth_with_stdin(&d, &["cp", "-", &format!("{name}:/tmp/in/pkg/a.txt")], &archive);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("/tmp/in/pkg/a.txt") && text(&o.stderr).contains("not a directory"));
}

/// `tar -t` of `archive`.
fn tar_list(archive: &[u8]) -> Vec<String> {
    let mut tar = Command::new("tar").arg("-t").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = tar.stdin.take().unwrap();
    let a = archive.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&a));
    let out = tar.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success());
    text(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn destinations_follow_docker_cp() {
    let Some((d, name, tmp)) = setup("sem") else { return };
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("inner")).unwrap();
    std::fs::write(src.join("a"), "A").unwrap();
    std::fs::write(src.join("inner/b"), "B").unwrap();
    let f = tmp.path().join("f.txt");
    std::fs::write(&f, "F").unwrap();
    let (src_s, f_s) = (src.to_str().unwrap(), f.to_str().unwrap());
    let c = |p: &str| format!("{name}:{p}");
    sh(&d, &name, "mkdir -p /tmp/d /tmp/e /tmp/d2");

    // A file: into an existing directory (with or without /), onto a missing path, onto a file.
    d.berth_ok(&["cp", f_s, &c("/tmp/d")]);
    d.berth_ok(&["cp", f_s, &c("/tmp/d2/")]);
    d.berth_ok(&["cp", f_s, &c("/tmp/g.txt")]);
    std::fs::write(&f, "F2").unwrap();
    d.berth_ok(&["cp", f_s, &c("/tmp/g.txt")]);
    // A directory: into an existing one, onto a missing path, its contents with `/.`.
    d.berth_ok(&["cp", src_s, &c("/tmp/d")]);
    d.berth_ok(&["cp", src_s, &c("/tmp/newdir")]);
    d.berth_ok(&["cp", &format!("{src_s}/."), &c("/tmp/e")]);
    // Relative container paths are from /workspace; `NAME:` alone is /workspace.
    d.berth_ok(&["cp", f_s, &c("rel.txt")]);
    let listing =
        sh(&d, &name, "cd /tmp && find d d2 e newdir g.txt -print | sort; cat g.txt; echo; cat /workspace/rel.txt");
    assert_eq!(
        listing,
        "d\nd/f.txt\nd/src\nd/src/a\nd/src/inner\nd/src/inner/b\nd2\nd2/f.txt\ne\ne/a\ne/inner\ne/inner/b\n\
         g.txt\nnewdir\nnewdir/a\nnewdir/inner\nnewdir/inner/b\nF2\nF2"
    );

    // The same rules out of the container.
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = out.to_str().unwrap();
    d.berth_ok(&["cp", &c("/tmp/d/src"), o]); // into an existing directory
    d.berth_ok(&["cp", &c("/tmp/d/src"), &format!("{o}/fresh")]); // onto a missing path
    std::fs::create_dir(out.join("contents")).unwrap();
    d.berth_ok(&["cp", &c("/tmp/d/src/."), &format!("{o}/contents")]); // the contents
    d.berth_ok(&["cp", &c("/tmp/g.txt"), o]); // a file into a directory
    d.berth_ok(&["cp", &c("/tmp/g.txt"), &format!("{o}/h.txt")]); // onto a missing path
    d.berth_ok(&["cp", &c(""), &format!("{o}/ws")]); // the workspace
    let mut got: Vec<String> = Vec::new();
    let mut stack = vec![out.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            got.push(p.strip_prefix(&out).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            "contents",
            "contents/a",
            "contents/inner",
            "contents/inner/b",
            "fresh",
            "fresh/a",
            "fresh/inner",
            "fresh/inner/b",
            "g.txt",
            "h.txt",
            "src",
            "src/a",
            "src/inner",
            "src/inner/b",
            "ws",
            "ws/rel.txt",
        ]
    );
    assert_eq!(std::fs::read_to_string(out.join("h.txt")).unwrap(), "F2");
}

#[test]
fn errors_name_the_path_and_write_nothing() {
    let Some((d, name, tmp)) = setup("err") else { return };
    let f = tmp.path().join("f.txt");
    std::fs::write(&f, "F").unwrap();
    let f_s = f.to_str().unwrap();
    let c = |p: &str| format!("{name}:{p}");

    // Usage: no project side, two project sides.
    let e = berth_fails(&d, &["cp", "a", "b"], 2);
    assert!(e.contains("NAME:PATH"), "{e}");
    berth_fails(&d, &["cp", &c("/a"), &c("/b")], 2);
    berth_fails(&d, &["cp", "-", "-"], 2);

    // A missing source, on either side.
    let missing = tmp.path().join("no-such-file");
    let e = berth_fails(&d, &["cp", missing.to_str().unwrap(), &c("/tmp/")], 1);
    assert!(e.contains(missing.to_str().unwrap()), "{e}");
    let out = tmp.path().join("out");
    let e = berth_fails(&d, &["cp", &c("/tmp/nope"), out.to_str().unwrap()], 1);
    assert!(e.contains("/tmp/nope") && e.contains("no such file"), "{e}");
    assert!(!out.exists(), "nothing written");

    // An unknown project, either way.
    let ghost = d.name("ghost");
    let e = berth_fails(&d, &["cp", f_s, &format!("{ghost}:/tmp/")], 1);
    assert!(e.contains(&ghost), "{e}");
    let e = berth_fails(&d, &["cp", &format!("{ghost}:/etc/hosts"), out.to_str().unwrap()], 1);
    assert!(e.contains(&ghost), "{e}");
    assert!(!out.exists());
    assert!(docker_inspect(&format!("berth-{ghost}"), "{{.Id}}").is_none(), "cp creates no project");

    // A DST ending in / must be a directory.
    let e = berth_fails(&d, &["cp", f_s, &c("/tmp/x/")], 1);
    assert!(e.contains("/tmp/x/") && e.contains("no such directory"), "{e}");
    assert_eq!(sh(&d, &name, "ls -d /tmp/x 2>/dev/null; true"), "", "nothing written");
    sh(&d, &name, "echo G > /tmp/g.txt");
    let e = berth_fails(&d, &["cp", f_s, &c("/tmp/g.txt/")], 1);
    assert!(e.contains("/tmp/g.txt/") && e.contains("not a directory"), "{e}");
    assert_eq!(sh(&d, &name, "cat /tmp/g.txt"), "G\n", "nothing written");
    let x = format!("{}/x/", tmp.path().display());
    let e = berth_fails(&d, &["cp", &c("/tmp/g.txt"), &x], 1);
    assert!(e.contains(&x), "{e}");
    assert!(!tmp.path().join("x").exists(), "nothing written");
    // A missing parent, and a directory onto a file.
    let e = berth_fails(&d, &["cp", f_s, &c("/tmp/no/such/f")], 1);
    assert!(e.contains("/tmp/no/such/f"), "{e}");
    let e = berth_fails(&d, &["cp", tmp.path().to_str().unwrap(), &c("/tmp/g.txt")], 1);
    assert!(e.contains("/tmp/g.txt"), "{e}");
    // A file where a directory is asserted.
    let e = berth_fails(&d, &["cp", &c("/tmp/g.txt/."), out.to_str().unwrap()], 1);
    assert!(e.contains("/tmp/g.txt") && e.contains("not a directory"), "{e}");
}

#[test]
fn symlinks_stay_links_out_and_are_skipped_in_with_a_warning() {
    let Some((d, name, tmp)) = setup("ln") else { return };
    let t = tmp.path().join("t");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("real"), "R").unwrap();
    std::os::unix::fs::symlink("real", t.join("link")).unwrap();
    let o = d.berth(&["cp", t.to_str().unwrap(), &format!("{name}:/tmp/t")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains(&format!("skipping {}", t.join("link").display())) && err.contains("symlink"), "{err}");
    assert_eq!(sh(&d, &name, "ls /tmp/t"), "real\n");
    // A symlink SRC is refused, naming it, unless -L follows it.
    let e = berth_fails(&d, &["cp", t.join("link").to_str().unwrap(), &format!("{name}:/tmp/")], 1);
    assert!(e.contains("link") && e.contains("-L"), "{e}");
    d.berth_ok(&["cp", "-L", t.join("link").to_str().unwrap(), &format!("{name}:/tmp/followed")]);
    assert_eq!(sh(&d, &name, "cat /tmp/followed"), "R");

    // Out of the container, links stay links (dangling ones too), inside a tree or alone.
    sh(&d, &name, "ln -s real /tmp/t/l2 && ln -s /nowhere /tmp/t/dangling");
    let out = tmp.path().join("out");
    d.berth_ok(&["cp", &format!("{name}:/tmp/t"), out.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(out.join("l2")).unwrap().to_str(), Some("real"));
    assert_eq!(std::fs::read_link(out.join("dangling")).unwrap().to_str(), Some("/nowhere"));
    let alone = tmp.path().join("alone");
    d.berth_ok(&["cp", &format!("{name}:/tmp/t/l2"), alone.to_str().unwrap()]);
    assert_eq!(std::fs::read_link(&alone).unwrap().to_str(), Some("real"));
    d.berth_ok(&["cp", "-L", &format!("{name}:/tmp/t/l2"), tmp.path().join("deref").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(tmp.path().join("deref")).unwrap(), "R");
}

/// Polls `berth logs NAME --process ID` until its stdout contains `needle` (30 s at most).
fn logs_until(d: &Daemon, name: &str, id: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = d.berth_ok(&["logs", name, "--process", id]);
        if out.contains(needle) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the output: {out:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn background_processes_start_list_log_and_die() {
    let Some((d, name, _tmp)) = setup("ps") else { return };
    let id = d.berth_ok(&["exec", "-d", &name, "--", "sh", "-c", "while :; do echo tick; sleep 0.2; done"]);
    let id = id.trim().to_string();
    assert!(id.parse::<u64>().is_ok(), "exec -d prints the id only: {id:?}");

    let ps = d.berth_ok(&["ps", &name]);
    let mut lines = ps.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["ID", "STATUS", "EXIT", "STARTED", "COMMAND"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [id.as_str(), "running", "-"], "{ps}");
    assert!(ps.contains("sh -c 'while :; do echo tick; sleep 0.2; done'"), "{ps}");

    let out = logs_until(&d, &name, &id, "tick\ntick\n");
    assert!(out.lines().all(|l| l == "tick"), "{out:?}");

    let killed = d.berth_ok(&["kill", &name, &id]);
    assert!(killed.starts_with(&format!("{id} ")) && killed.contains("killed(TERM)"), "{killed}");
    let ps = d.berth_ok(&["ps", &name]);
    let row = ps.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["killed(TERM)", "143"], "{ps}");
    let j: Value = serde_json::from_str(&d.berth_ok(&["ps", "--json", &name])).unwrap();
    assert_eq!(j[0]["signal"], "TERM");
    // Killing it again says the same; an unknown id is an error naming it.
    assert!(d.berth_ok(&["kill", &name, &id]).contains("killed(TERM)"));
    let e = berth_fails(&d, &["kill", &name, "99999"], 1);
    assert!(e.contains("99999"), "{e}");
    let e = berth_fails(&d, &["logs", &name, "--process", "99999"], 1);
    assert!(e.contains("99999"), "{e}");

    // --json: the Process; --signal and a process that ends on its own.
    let p: Value = serde_json::from_str(&d.berth_ok(&["exec", "-d", "--json", &name, "--", "sleep", "300"])).unwrap();
    let sid = p["id"].to_string();
    assert_eq!(p["running"], true);
    let killed = d.berth_ok(&["kill", "--signal", "KILL", &name, &sid]);
    assert!(killed.contains("killed(KILL)") && killed.contains(" 137 "), "{killed}");
}

#[test]
fn logs_follow_streams_both_outputs_until_the_end() {
    let Some((d, name, _tmp)) = setup("follow") else { return };
    // Waits for its go file, so following starts before the output does.
    let id = d.berth_ok(&[
        "exec",
        "-d",
        &name,
        "--",
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done; exit 3",
    ]);
    let id = id.trim();
    let follow = Command::new(berth_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", &name, "--process", id, "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sh(&d, &name, "touch /tmp/go");
    let out = follow.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out1\nout2\nout3\n");
    assert_eq!(text(&out.stderr), "err1\nerr2\nerr3\n");
    let ps = d.berth_ok(&["ps", &name]);
    let row: Vec<&str> = ps.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [id, "exited", "3"], "{ps}");
    // --json with -f is a usage error (one document, not a stream).
    berth_fails(&d, &["logs", "--json", &name, "--process", id, "-f"], 2);

    // More than one page of output (the daemon gives 256 KiB a call), all of it.
    let id = d.berth_ok(&["exec", "-d", &name, "--", "sh", "-c", "head -c 600000 /dev/zero | tr '\\0' b"]);
    let id = id.trim();
    let num: u64 = id.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps: Value = serde_json::from_str(&d.berth_ok(&["ps", "--json", &name])).unwrap();
        let p = ps.as_array().unwrap().iter().find(|p| p["id"] == num).unwrap().clone();
        if p["running"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "{p}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = d.berth(&["logs", &name, "--process", id]);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o.stderr));
    assert_eq!(o.stdout.len(), 600_000);
    assert!(o.stdout.iter().all(|b| *b == b'b'));
}

#[test]
fn logs_say_when_output_was_dropped() {
    if !docker_available() {
        return;
    }
    let d = Daemon::start("[exec]\nmax_output = \"1KiB\"\n");
    let name = d.name("drop");
    d.berth_ok(&["create", &name]);
    let id = d.berth_ok(&["exec", "-d", &name, "--", "sh", "-c", "head -c 5000 /dev/zero | tr '\\0' a"]);
    let id = id.trim();
    let deadline = Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o = d.berth(&["logs", &name, "--process", id]);
        if o.stdout.len() == 1024 {
            break o;
        }
        assert!(Instant::now() < deadline, "{o:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(o.stdout.iter().all(|b| *b == b'a'));
    let err = text(&o.stderr);
    assert!(err.contains("3976 bytes dropped"), "{err}");
}

#[test]
fn completions_know_the_new_commands() {
    let o = Command::new(berth_bin()).args(["completions", "bash"]).output().unwrap();
    assert!(o.status.success());
    let script = text(&o.stdout);
    for word in ["cp", "ps", "kill", "--process", "--follow-link", "--detach"] {
        assert!(script.contains(word), "{word}");
    }
    // And the help says what happens to symlinks.
    let o = Command::new(berth_bin()).args(["cp", "--help"]).output().unwrap();
    let help = text(&o.stdout);
    assert!(help.contains("symlink") && help.contains("skipped with a warning"), "{help}");
}

#[test]
fn progress_shows_on_a_terminal_for_copies_over_4_mib_only() {
    let Some((d, name, tmp)) = setup("prog") else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: no script(1) to give berth a terminal (util-linux)");
        return;
    }
    let big = tmp.path().join("big.bin");
    std::fs::write(&big, noise(8 << 20, 9)).unwrap();
    let small = tmp.path().join("small.bin");
    std::fs::write(&small, noise(1 << 20, 9)).unwrap();
    // berth on a pseudo-terminal: what it showed there.
    let on_terminal = |args: &str| {
        let line = format!("{} --socket {} cp {args} {name}:/tmp/", berth_bin(), d.socket.display());
        let o = Command::new("script").args(["-q", "-e", "-c", &line, "/dev/null"]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stdout));
        text(&o.stdout)
    };
    let shown = on_terminal(big.to_str().unwrap());
    assert!(shown.contains("berth: copied 8.0 MiB of 8.0 MiB (100%)"), "{shown:?}");
    let shown = on_terminal(small.to_str().unwrap());
    assert!(!shown.contains("copied"), "1 MiB: no progress: {shown:?}");
    let shown = on_terminal(&format!("-q {}", big.display()));
    assert!(!shown.contains("copied"), "-q: no progress: {shown:?}");
    // Not a terminal: nothing on stderr.
    let o = d.berth(&["cp", big.to_str().unwrap(), &format!("{name}:/tmp/")]);
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o.stderr));
}
