//! End-to-end tests of the agent's file calls, on the host, over a temporary socket: the
//! paths are the host's (the agent's), inside each test's temporary directory.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_wire::{write_flags, Entry, EntryType, Frame, RefusedKind, MAX_DATA, NO_MODE};
use common::*;

fn b(p: &Path) -> Vec<u8> {
    p.to_str().unwrap().as_bytes().to_vec()
}

fn write(path: &Path, offset: u64, flags: u8, mode: u32, data: &[u8]) -> Frame {
    Frame::FsWrite { id: call_id(), path: b(path), offset, flags, mode, data: data.to_vec() }
}

fn read(path: &Path, offset: u64, limit: u32) -> Frame {
    Frame::FsRead { id: call_id(), path: b(path), offset, limit }
}

/// A write that must succeed: the file's size after it.
fn written(c: &mut Client, f: Frame) -> u64 {
    match c.call(f) {
        Frame::Done { size, .. } => size,
        other => panic!("expected done, got {other:?}"),
    }
}

fn done(c: &mut Client, f: Frame) {
    match c.call(f) {
        Frame::Done { size: 0, .. } => {}
        other => panic!("expected done, got {other:?}"),
    }
}

/// The whole file, read in chunks of `chunk` bytes.
fn read_all(c: &mut Client, path: &Path, chunk: u32) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        match c.call(read(path, all.len() as u64, chunk)) {
            Frame::Data { size, eof, data, .. } => {
                assert!(data.len() <= chunk as usize);
                all.extend(data);
                assert_eq!(eof, all.len() as u64 >= size);
                if eof {
                    assert_eq!(all.len() as u64, size);
                    return all;
                }
            }
            other => panic!("expected data, got {other:?}"),
        }
    }
}

fn entries(c: &mut Client, f: Frame) -> Vec<Entry> {
    match c.call(f) {
        Frame::Entries { entries, more: false, .. } => entries,
        other => panic!("expected entries, got {other:?}"),
    }
}

/// Pseudo-random bytes, every value present.
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

#[test]
fn a_large_binary_file_travels_in_chunks_both_ways() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let data = noise(5 << 20);
    let chunk = MAX_DATA;
    let file = agent.dir.path().join("big.bin");

    // At offsets, the chunks sent in reverse order (a hole grows, then fills), the first
    // with TRUNCATE (so a previous, longer file would be cut).
    fs::write(&file, vec![7u8; 6 << 20]).unwrap();
    let chunks: Vec<(usize, &[u8])> = data.chunks(chunk).enumerate().map(|(i, d)| (i * chunk, d)).collect();
    assert_eq!(written(&mut c, write(&file, 0, write_flags::TRUNCATE, NO_MODE, chunks[0].1)), chunk as u64);
    let mut size = 0;
    for &(off, d) in chunks[1..].iter().rev() {
        size = written(&mut c, write(&file, off as u64, 0, NO_MODE, d));
    }
    assert_eq!(size, data.len() as u64);
    assert!(fs::read(&file).unwrap() == data, "the file on disk differs");
    // Read back in chunks of another size.
    assert!(read_all(&mut c, &file, 100_000) == data, "the file read back differs");
    assert!(read_all(&mut c, &file, MAX_DATA as u32) == data);

    // With APPEND, after cutting the file to nothing.
    assert_eq!(written(&mut c, write(&file, 0, write_flags::TRUNCATE, NO_MODE, b"")), 0);
    for (i, d) in data.chunks(chunk).enumerate() {
        // The offset is ignored.
        let size = written(&mut c, write(&file, 3, write_flags::APPEND, NO_MODE, d));
        assert_eq!(size, (i * chunk + d.len()) as u64);
    }
    assert!(read_all(&mut c, &file, 77_777) == data, "the appended file differs");

    // TRUNCATE at an offset keeps what is before it.
    assert_eq!(written(&mut c, write(&file, 1000, write_flags::TRUNCATE, NO_MODE, b"xyz")), 1003);
    let mut want = data[..1000].to_vec();
    want.extend_from_slice(b"xyz");
    assert_eq!(read_all(&mut c, &file, 4096), want);

    // Past the end: empty, and the end.
    match c.call(read(&file, 5000, 10)) {
        Frame::Data { size: 1003, eof: true, data, .. } => assert!(data.is_empty()),
        other => panic!("{other:?}"),
    }
    match c.call(read(&file, 1000, 2)) {
        Frame::Data { size: 1003, eof: false, data, .. } => assert_eq!(data, b"xy"),
        other => panic!("{other:?}"),
    }
    // A write past the end leaves a hole of zeros.
    let holed = agent.dir.path().join("holed");
    assert_eq!(written(&mut c, write(&holed, 10, 0, NO_MODE, b"end")), 13);
    assert_eq!(fs::read(&holed).unwrap(), b"\0\0\0\0\0\0\0\0\0\0end");
}

#[test]
fn refusals_say_what_is_wrong_with_which_path() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let d = agent.dir.path();
    let show = |p: &Path| p.to_str().unwrap().to_string();
    let dir = d.join("dir");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("f"), "x").unwrap();
    let file = d.join("file");
    fs::write(&file, "data").unwrap();
    let expect = |(kind, msg): (RefusedKind, String), want: RefusedKind, words: &[&str]| {
        assert_eq!(kind, want, "{msg}");
        for w in words {
            assert!(msg.contains(w), "{msg:?} does not say {w:?}");
        }
    };

    // Reading a directory, writing over one.
    expect(c.refused(read(&dir, 0, 10)), RefusedKind::WrongKind, &[&show(&dir), "is a directory"]);
    expect(
        c.refused(write(&dir, 0, write_flags::TRUNCATE, NO_MODE, b"x")),
        RefusedKind::WrongKind,
        &[&show(&dir), "is a directory"],
    );
    // A missing parent is named; with MKDIRS it is made.
    let deep = d.join("no/such/parent/f.txt");
    expect(
        c.refused(write(&deep, 0, 0, NO_MODE, b"x")),
        RefusedKind::WrongKind,
        &[&show(&deep), &format!("parent directory {} does not exist", show(&d.join("no")))],
    );
    assert_eq!(written(&mut c, write(&deep, 0, write_flags::MKDIRS, NO_MODE, b"made")), 4);
    assert_eq!(fs::read(&deep).unwrap(), b"made");
    assert!(fs::metadata(d.join("no/such")).unwrap().is_dir());
    // A parent that is a file.
    let under_file = file.join("x");
    expect(
        c.refused(write(&under_file, 0, write_flags::MKDIRS, NO_MODE, b"x")),
        RefusedKind::WrongKind,
        &[&show(&under_file), &format!("{} is not a directory", show(&file))],
    );
    expect(c.refused(read(&under_file, 0, 1)), RefusedKind::WrongKind, &[&show(&file), "is not a directory"]);
    let slashed = format!("{}/", show(&file));
    let (kind, msg) = c.refused(Frame::FsWrite {
        id: call_id(),
        path: slashed.clone().into_bytes(),
        offset: 0,
        flags: 0,
        mode: NO_MODE,
        data: vec![],
    });
    assert_eq!(kind, RefusedKind::WrongKind, "{msg}");
    assert!(msg.contains(&slashed) && msg.contains("not a directory"), "{msg}");
    // Missing things.
    let missing = d.join("missing");
    expect(c.refused(read(&missing, 0, 1)), RefusedKind::NotFound, &[&show(&missing), "does not exist"]);
    expect(c.refused(Frame::FsStat { id: call_id(), path: b(&missing) }), RefusedKind::NotFound, &[&show(&missing)]);
    expect(c.refused(Frame::FsList { id: call_id(), path: b(&missing) }), RefusedKind::NotFound, &[&show(&missing)]);
    expect(
        c.refused(Frame::FsRemove { id: call_id(), path: b(&missing), recursive: true }),
        RefusedKind::NotFound,
        &[&show(&missing)],
    );
    expect(
        c.refused(Frame::FsList { id: call_id(), path: b(&file) }),
        RefusedKind::WrongKind,
        &[&show(&file), "is not a directory"],
    );

    // A non-empty directory is not removed without `recursive`, and is with it.
    let rm = |recursive| Frame::FsRemove { id: call_id(), path: b(&dir), recursive };
    expect(c.refused(rm(false)), RefusedKind::WrongKind, &[&show(&dir), "is not empty"]);
    assert!(dir.join("f").exists());
    done(&mut c, rm(true));
    assert!(!dir.exists());
    // An empty one is, a file is.
    fs::create_dir(&dir).unwrap();
    done(&mut c, rm(false));
    done(&mut c, Frame::FsRemove { id: call_id(), path: b(&file), recursive: false });
    assert!(!file.exists());
    // The root never is.
    for root in ["/", "//", "/."] {
        let (kind, _) = c.refused(Frame::FsRemove { id: call_id(), path: root.into(), recursive: true });
        assert_eq!(kind, RefusedKind::Invalid, "{root}");
    }
    assert!(Path::new("/tmp").exists());

    // Relative and empty paths, for every call.
    for path in [&b"relative/path"[..], b"", b"./x"] {
        let p = path.to_vec();
        let calls = [
            Frame::FsRead { id: call_id(), path: p.clone(), offset: 0, limit: 1 },
            Frame::FsWrite { id: call_id(), path: p.clone(), offset: 0, flags: 0, mode: NO_MODE, data: vec![] },
            Frame::FsList { id: call_id(), path: p.clone() },
            Frame::FsStat { id: call_id(), path: p.clone() },
            Frame::FsRemove { id: call_id(), path: p.clone(), recursive: false },
            Frame::FsMkdir { id: call_id(), path: p.clone(), parents: true, mode: NO_MODE },
        ];
        for f in calls {
            let (kind, msg) = c.refused(f);
            assert_eq!(kind, RefusedKind::Invalid, "{msg}");
            assert!(msg.contains(std::str::from_utf8(path).unwrap()), "{msg}");
        }
    }

    // mkdir: an existing one, a missing parent, `parents`.
    let made = d.join("made");
    let mkdir = |path: &Path, parents| Frame::FsMkdir { id: call_id(), path: b(path), parents, mode: NO_MODE };
    done(&mut c, mkdir(&made, false));
    expect(c.refused(mkdir(&made, false)), RefusedKind::Exists, &[&show(&made), "already exists"]);
    done(&mut c, mkdir(&made, true));
    let orphan = d.join("nope/child");
    expect(c.refused(mkdir(&orphan, false)), RefusedKind::WrongKind, &[&show(&orphan), "does not exist"]);
    done(&mut c, mkdir(&orphan, true));
    assert!(orphan.is_dir());
    fs::write(d.join("plain"), "").unwrap();
    expect(c.refused(mkdir(&d.join("plain"), true)), RefusedKind::Exists, &["plain", "is not a directory"]);
    expect(c.refused(mkdir(&d.join("plain"), false)), RefusedKind::Exists, &["plain"]);
    // A bad mode.
    let (kind, msg) = c.refused(Frame::FsMkdir { id: call_id(), path: b(&d.join("m")), parents: false, mode: 0o10000 });
    assert_eq!(kind, RefusedKind::Invalid, "{msg}");
    let (kind, _) = c.refused(write(&d.join("m"), 0, 0, 0o17777, b""));
    assert_eq!(kind, RefusedKind::Invalid);
    assert!(!d.join("m").exists());

    // A FIFO is refused at once, read or written, and nothing hangs.
    let fifo = d.join("fifo");
    let cpath = std::ffi::CString::new(show(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o644) }, 0);
    expect(c.refused(read(&fifo, 0, 10)), RefusedKind::WrongKind, &[&show(&fifo), "not a regular file", "FIFO"]);
    expect(c.refused(write(&fifo, 0, 0, NO_MODE, b"x")), RefusedKind::WrongKind, &[&show(&fifo), "FIFO"]);
    // A device too.
    let (kind, msg) = c.refused(read(Path::new("/dev/null"), 0, 10));
    assert_eq!(kind, RefusedKind::WrongKind, "{msg}");
    assert_eq!(agent.own_output(), "");
}

#[test]
fn symlinks_are_reported_and_removed_never_followed_out() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let d = agent.dir.path();
    // Outside the test's directory: /etc, and a directory of our own elsewhere.
    let link = d.join("etc-link");
    symlink("/etc", &link).unwrap();
    let outside = TempDir::new();
    fs::write(outside.path().join("keep"), "precious").unwrap();
    let tree = d.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    symlink(outside.path(), tree.join("sub/out")).unwrap();
    fs::write(tree.join("sub/own"), "mine").unwrap();

    let e = entries(&mut c, Frame::FsStat { id: call_id(), path: b(&link) });
    assert_eq!(e.len(), 1);
    assert_eq!(
        (e[0].name.as_slice(), e[0].kind, e[0].target.as_slice()),
        (&b"etc-link"[..], EntryType::Symlink, &b"/etc"[..])
    );

    let listed = entries(&mut c, Frame::FsList { id: call_id(), path: b(d) });
    let l = listed.iter().find(|e| e.name == b"etc-link").expect("the link is listed");
    assert_eq!((l.kind, l.target.as_slice()), (EntryType::Symlink, &b"/etc"[..]));
    // Listing the link itself lists what it points to.
    let etc = entries(&mut c, Frame::FsList { id: call_id(), path: b(&link) });
    let want: Vec<Vec<u8>> = {
        let mut v: Vec<Vec<u8>> = fs::read_dir("/etc")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().as_bytes().to_vec())
            .collect();
        v.sort();
        v
    };
    assert_eq!(etc.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), want);

    // Removing the link (even written "link/") removes the link only.
    let with_slash = format!("{}/", link.display()).into_bytes();
    done(&mut c, Frame::FsRemove { id: call_id(), path: with_slash, recursive: true });
    assert!(fs::symlink_metadata(&link).is_err());
    assert!(Path::new("/etc").is_dir());
    // A tree holding a link out is removed without following it.
    done(&mut c, Frame::FsRemove { id: call_id(), path: b(&tree), recursive: true });
    assert!(!tree.exists());
    assert_eq!(fs::read_to_string(outside.path().join("keep")).unwrap(), "precious");
}

#[test]
fn list_and_stat_describe_entries_sorted_by_name() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let d = agent.dir.path().join("list");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("b.txt"), "12345").unwrap();
    fs::write(d.join("B"), "").unwrap();
    fs::write(d.join("a\u{e9}"), "").unwrap();
    fs::create_dir(d.join("c")).unwrap();
    symlink("b.txt", d.join("l")).unwrap();
    fs::set_permissions(d.join("b.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    let got = entries(&mut c, Frame::FsList { id: call_id(), path: b(&d) });
    let names: Vec<&[u8]> = got.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, [&b"B"[..], "a\u{e9}".as_bytes(), b"b.txt", b"c", b"l"]);
    let bt = &got[2];
    assert_eq!((bt.kind, bt.size, bt.mode), (EntryType::File, 5, 0o640));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert!((now - bt.mtime_ms).abs() < 60_000, "mtime {} vs now {now}", bt.mtime_ms);
    assert_eq!(bt.mtime_ms / 1000, fs::metadata(d.join("b.txt")).unwrap().mtime());
    assert_eq!(got[3].kind, EntryType::Dir);
    assert_eq!((got[4].kind, got[4].target.as_slice()), (EntryType::Symlink, &b"b.txt"[..]));
    let st = entries(&mut c, Frame::FsStat { id: call_id(), path: b(&d.join("b.txt")) });
    assert_eq!(st, vec![bt.clone()]);
    // An empty directory: one frame, no entries.
    fs::create_dir(d.join("c/empty")).unwrap();
    assert!(entries(&mut c, Frame::FsList { id: call_id(), path: b(&d.join("c/empty")) }).is_empty());

    // A large directory comes in several frames, all but the last with `more`.
    let big = agent.dir.path().join("big");
    fs::create_dir(&big).unwrap();
    let long = "n".repeat(200);
    for i in 0..3000 {
        fs::write(big.join(format!("{long}{i:05}")), "").unwrap();
    }
    let id = call_id();
    c.send(&Frame::FsList { id, path: b(&big) });
    let mut frames = 0;
    let mut all = Vec::new();
    loop {
        match c.recv() {
            Frame::Entries { id: i, entries, more } if i == id => {
                frames += 1;
                all.extend(entries);
                if !more {
                    break;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(frames > 1, "{frames} frames");
    assert_eq!(all.len(), 3000);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name));
}

#[test]
fn modes_are_set_exactly_whatever_the_umask() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let d = agent.dir.path();
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777;
    // Created with a mode the umask would cut, set exactly.
    let f = d.join("f");
    written(&mut c, write(&f, 0, 0, 0o777, b"x"));
    assert_eq!(mode(&f), 0o777);
    // An existing file's mode is changed, and setuid survives the write.
    written(&mut c, write(&f, 0, write_flags::APPEND, 0o4750, b"y"));
    assert_eq!(mode(&f), 0o4750);
    // Without a mode: 0644 for a new file, an existing file's mode unchanged.
    let g = d.join("g");
    written(&mut c, write(&g, 0, 0, NO_MODE, b"x"));
    let umask = 0o644 & !mode(&g);
    assert_eq!(mode(&g), 0o644 & !umask);
    written(&mut c, write(&f, 0, 0, NO_MODE, b"z"));
    assert_eq!(mode(&f) & 0o777, 0o750);
    // Directories: exact when given (parents made 0755 before the umask).
    let dd = d.join("p/q/r");
    done(&mut c, Frame::FsMkdir { id: call_id(), path: b(&dd), parents: true, mode: 0o1777 });
    assert_eq!(mode(&dd), 0o1777);
    assert_eq!(mode(&d.join("p/q")), 0o755 & !umask);
    let plain = d.join("plain");
    done(&mut c, Frame::FsMkdir { id: call_id(), path: b(&plain), parents: false, mode: NO_MODE });
    assert_eq!(mode(&plain), 0o755 & !umask);
    let exact = d.join("exact");
    done(&mut c, Frame::FsMkdir { id: call_id(), path: b(&exact), parents: false, mode: 0o700 });
    assert_eq!(mode(&exact), 0o700);
}

#[test]
fn file_calls_interleave_with_a_running_command() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let f = agent.dir.path().join("while-running");
    // A command is running (and holds its output until told to go on).
    let mut s = start_frame(1, &["sh", "-c", "echo started; read x; echo $x"]);
    s.stdin = true;
    c.send(&Frame::Start(s));
    match c.recv() {
        Frame::Output { id: 1, data, .. } => assert_eq!(data, b"started\n"),
        other => panic!("{other:?}"),
    }
    // Calls are answered meanwhile.
    assert_eq!(written(&mut c, write(&f, 0, 0, NO_MODE, b"abc")), 3);
    assert_eq!(read_all(&mut c, &f, 2), b"abc");
    c.send(&Frame::Stdin { id: 1, data: b"done\n".to_vec() });
    c.send(&Frame::StdinEnd { id: 1 });
    let o = c.finish(1);
    assert_eq!((o.stdout.as_slice(), o.exited()), (&b"done\n"[..], (0, 0)));
    // A call with a command's id is a protocol error (call ids themselves are not kept:
    // a connection's memory does not grow with the calls it makes).
    c.send(&Frame::FsStat { id: 1, path: b(&f) });
    assert!(matches!(c.recv(), Frame::Error { .. }));
}

#[test]
fn what_the_agents_user_may_not_do_is_denied() {
    // As root (who may do anything), the agent runs as nobody for this test.
    let root = unsafe { libc::geteuid() } == 0;
    let agent = Agent::start_as(root.then_some(65534), &[]);
    let mut c = agent.connect();
    let probe = Path::new("/berth-agent-denied-probe");
    let (kind, msg) = c.refused(write(probe, 0, 0, NO_MODE, b"x"));
    assert_eq!((kind, msg.as_str()), (RefusedKind::Denied, "/berth-agent-denied-probe: permission denied"));
    let (kind, _) = c.refused(Frame::FsMkdir { id: call_id(), path: b(probe), parents: true, mode: NO_MODE });
    assert_eq!(kind, RefusedKind::Denied);
    assert!(!probe.exists());
    // A file of our own that the agent's user may read but not change.
    let mine = agent.dir.path().join("mine");
    fs::write(&mine, "ro").unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o444)).unwrap();
    if root {
        assert_eq!(read_all(&mut c, &mine, 10), b"ro");
        let (kind, msg) = c.refused(write(&mine, 0, 0, NO_MODE, b"x"));
        assert_eq!(kind, RefusedKind::Denied, "{msg}");
        // In a directory of root's (0755), nothing may be removed or made.
        let locked = agent.dir.path().join("locked");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(locked.join("f"), "").unwrap();
        let (kind, msg) = c.refused(Frame::FsRemove { id: call_id(), path: b(&locked.join("f")), recursive: false });
        assert_eq!(kind, RefusedKind::Denied, "{msg}");
        assert!(msg.contains("locked/f"), "{msg}");
        let (kind, _) = c.refused(Frame::FsRemove { id: call_id(), path: b(&locked), recursive: true });
        assert_eq!(kind, RefusedKind::Denied);
        assert!(locked.join("f").exists());
    }
}
