//! End-to-end tests of the real `berth-agent` binary, on the host, over a temporary socket.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use berth_wire::{FailReason, Frame, Stream, MAX_CHUNK, WINDOW};
use common::*;

#[test]
fn echo_and_exact_exit_codes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let o = c.run(1, &["echo", "hi"]);
    assert_eq!(o.stdout, b"hi\n");
    assert_eq!(o.exited(), (0, 0));
    for (id, code) in [(2, 0), (3, 3), (4, 255)] {
        let o = c.run(id, &["sh", "-c", &format!("exit {code}")]);
        assert_eq!(o.exited(), (code, 0));
    }
    assert_eq!(agent.own_output(), "", "the agent must not write to its own stdout/stderr");
}

#[test]
fn death_by_signal_is_reported_as_the_signal() {
    let agent = Agent::start();
    let mut c = agent.connect();
    assert_eq!(c.run(1, &["sh", "-c", "kill -9 $$"]).exited(), (0, 9));
    assert_eq!(c.run(2, &["sh", "-c", "kill -TERM $$"]).exited(), (0, 15));
}

#[test]
fn stdout_and_stderr_stay_separate() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let o = c.run(1, &["sh", "-c", "echo out; echo err >&2; echo out2"]);
    assert_eq!(o.stdout, b"out\nout2\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.exited(), (0, 0));
}

#[test]
fn binary_output_with_every_byte_value() {
    let agent = Agent::start();
    let file = agent.dir.path().join("bytes");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 300).collect();
    fs::write(&file, &bytes).unwrap();
    let mut c = agent.connect();
    let o = c.run(1, &["cat", file.to_str().unwrap()]);
    assert_eq!(o.stdout, bytes);
    assert_eq!(o.exited(), (0, 0));
}

#[test]
fn stdin_is_delivered_then_ends() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut s = start_frame(1, &["cat"]);
    s.stdin = true;
    c.send(&Frame::Start(s));
    let big: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    c.send(&Frame::Stdin { id: 1, data: b"hello ".to_vec() });
    for chunk in big.chunks(berth_wire::MAX_CHUNK) {
        c.send(&Frame::Stdin { id: 1, data: chunk.to_vec() });
    }
    c.send(&Frame::StdinEnd { id: 1 });
    let o = c.finish(1);
    assert_eq!(o.stdout[..6], *b"hello ");
    assert!(o.stdout[6..] == big[..], "stdin came back altered");
    assert_eq!(o.exited(), (0, 0));
}

#[test]
fn without_stdin_cat_ends_at_once() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let t = Instant::now();
    let o = c.run(1, &["cat"]);
    assert_eq!(o.exited(), (0, 0));
    assert!(o.stdout.is_empty());
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn start_env_is_set_over_the_agents_and_path_lookup_uses_it() {
    let agent = Agent::start_with(&[("BERTH_T_FOO", "agent"), ("BERTH_T_BAR", "kept")]);
    let bin = agent.dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let script = bin.join("berth-test-hello");
    fs::write(&script, "#!/bin/sh\necho from-path\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = agent.connect();
    let mut s = start_frame(1, &["sh", "-c", "echo $BERTH_T_FOO $BERTH_T_BAR $BERTH_T_NEW"]);
    s.env = vec![(b"BERTH_T_FOO".to_vec(), b"start".to_vec()), (b"BERTH_T_NEW".to_vec(), b"new".to_vec())];
    assert_eq!(c.run_start(s).stdout, b"start kept new\n");
    let mut s = start_frame(2, &["berth-test-hello"]);
    s.env = vec![(b"PATH".to_vec(), format!("{}:/usr/bin:/bin", bin.display()).into_bytes())];
    let o = c.run_start(s);
    assert_eq!(o.stdout, b"from-path\n");
    assert_eq!(o.exited(), (0, 0));
}

#[test]
fn workdir_is_honoured() {
    let agent = Agent::start();
    let dir = fs::canonicalize(agent.dir.path()).unwrap();
    let mut c = agent.connect();
    let mut s = start_frame(1, &["pwd"]);
    s.workdir = dir.to_str().unwrap().as_bytes().to_vec();
    assert_eq!(c.run_start(s).stdout, format!("{}\n", dir.display()).into_bytes());
}

#[test]
fn start_failures_are_failed_frames_never_output() {
    let agent = Agent::start();
    let d = agent.dir.path();
    let plain = d.join("plain");
    fs::write(&plain, "echo no\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let garbage = d.join("garbage");
    fs::write(&garbage, [0x7f, b'E', b'L', b'F', 0, 0, 0, 0, 1, 2, 3]).unwrap();
    fs::set_permissions(&garbage, fs::Permissions::from_mode(0o755)).unwrap();
    let (plain, garbage, dir) = (plain.to_str().unwrap(), garbage.to_str().unwrap(), d.to_str().unwrap());
    let file_dir = format!("{plain}/sub");
    let cases: &[(&[&str], &str, FailReason)] = &[
        (&["berth-no-such-program"], "/", FailReason::NotFound),
        (&["/no/such/program"], "/", FailReason::NotFound),
        (&[plain], "/", FailReason::NotExecutable),
        (&[garbage], "/", FailReason::NotExecutable),
        (&[dir], "/", FailReason::NotExecutable),
        (&["true"], "/no/such/dir", FailReason::BadWorkdir),
        (&["true"], plain, FailReason::BadWorkdir),
        (&["true"], &file_dir, FailReason::BadWorkdir),
        (&[], "/", FailReason::Other),
        (&["a\0b"], "/", FailReason::Other),
    ];
    let mut c = agent.connect();
    for (i, (argv, workdir, want)) in cases.iter().enumerate() {
        let mut s = start_frame(i as u32 + 1, argv);
        s.workdir = workdir.as_bytes().to_vec();
        let o = c.run_start(s);
        assert_eq!(o.failed(), *want, "{argv:?} in {workdir}: {o:?}");
        assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{argv:?}: {o:?}");
    }
}

#[test]
fn concurrent_commands_are_demultiplexed() {
    let agent = Agent::start();
    let mut c = agent.connect();
    for id in 1..=8u32 {
        let script =
            format!("i=0; while [ $i -lt 200 ]; do echo {id}-$i; echo e{id}-$i >&2; i=$((i+1)); done; exit {id}");
        c.start(id, &["sh", "-c", &script]);
    }
    let mut out = vec![Vec::new(); 9];
    let mut err = vec![Vec::new(); 9];
    let mut ended = 0;
    while ended < 8 {
        match c.recv() {
            Frame::Output { id, stream, data } => {
                c.send(&Frame::Ack { id, bytes: data.len() as u32 });
                match stream {
                    Stream::Stdout => out[id as usize].extend(data),
                    Stream::Stderr => err[id as usize].extend(data),
                }
            }
            Frame::Exited { id, code, signal } => {
                assert_eq!((code, signal), (id as i32, 0));
                ended += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for id in 1..=8 {
        let want: String = (0..200).map(|i| format!("{id}-{i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out[id]), want);
        let want: String = (0..200).map(|i| format!("e{id}-{i}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&err[id]), want);
    }
}

#[test]
fn backpressure_bounds_unacked_output_and_keeps_order() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let n = 1_500_000;
    let want: Vec<u8> = (1..=n).flat_map(|i| format!("{i}\n").into_bytes()).collect();
    assert!(want.len() >= 10 << 20);
    c.start(1, &["seq", "1", &n.to_string()]);
    let mut got = Vec::new();
    let mut acked = 0usize;
    let mut checked_stall = false;
    loop {
        match c.recv() {
            Frame::Output { id: 1, stream: Stream::Stdout, data } => {
                assert!(data.len() <= MAX_CHUNK);
                got.extend(data);
                let inflight = got.len() - acked;
                assert!(inflight <= WINDOW as usize, "{inflight} bytes unacknowledged");
                if inflight == WINDOW as usize {
                    if !checked_stall {
                        // The window is full: nothing more may come, yet another command
                        // on the same connection runs normally.
                        c.s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                        assert!(c.recv_or_eof().is_none(), "output beyond the window");
                        c.s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let o = c.run(2, &["echo", "other"]);
                        assert_eq!(o.stdout, b"other\n");
                        checked_stall = true;
                    }
                    // Acknowledge slowly: a little at a time.
                    c.send(&Frame::Ack { id: 1, bytes: 100_000 });
                    acked += 100_000;
                }
            }
            Frame::Exited { id: 1, code, signal } => {
                assert_eq!((code, signal), (0, 0));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(checked_stall);
    assert!(got == want, "output altered or reordered ({} bytes of {})", got.len(), want.len());
}

#[test]
fn kill_takes_the_whole_tree_even_escaped_processes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start(1, &["sh", "-c", "setsid sleep 1001 & (sleep 1002 &) ; sleep 1003"]);
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        pids = ["1001", "1002", "1003"].iter().flat_map(|n| find_under(agent.pid(), &["sleep", n])).collect();
        pids.len() == 3
    }));
    c.send(&Frame::Kill { id: 1 });
    let o = c.finish(1);
    assert_eq!(o.exited(), (0, 9));
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))), "left alive: {pids:?}");
    // A late kill for the finished command is harmless.
    c.send(&Frame::Kill { id: 1 });
    c.send(&Frame::Ping { nonce: 5 });
    assert_eq!(c.recv(), Frame::Pong { nonce: 5 });
}

#[test]
fn a_closed_connection_kills_its_commands() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start(1, &["sh", "-c", "sleep 1004 & sleep 1005"]);
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        pids = ["1004", "1005"].iter().flat_map(|n| find_under(agent.pid(), &["sleep", n])).collect();
        pids.len() == 2
    }));
    drop(c);
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p))), "left alive: {pids:?}");
    // The agent itself carries on.
    let mut c = agent.connect();
    assert_eq!(c.run(1, &["true"]).exited(), (0, 0));
}

#[test]
fn a_version_mismatch_gets_an_error() {
    let agent = Agent::start();
    let mut c = agent.connect_raw();
    assert!(matches!(c.recv(), Frame::Hello { .. }));
    c.send(&Frame::Hello { version: 99, pid: 1 });
    match c.recv() {
        Frame::Error { message } => assert!(message.contains("99") && message.contains('1'), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(c.recv_or_eof(), None);
}

#[test]
fn protocol_errors_get_an_error_and_a_close() {
    let agent = Agent::start();
    let cases: Vec<Vec<Frame>> = vec![
        vec![Frame::Ack { id: 7, bytes: 1 }],
        vec![Frame::Kill { id: 7 }],
        vec![Frame::Exited { id: 1, code: 0, signal: 0 }],
        vec![Frame::Hello { version: berth_wire::VERSION, pid: 1 }],
        vec![Frame::Start(start_frame(1, &["sleep", "1006"])), Frame::Start(start_frame(1, &["true"]))],
        vec![Frame::Start(start_frame(1, &["sleep", "1006"])), Frame::Stdin { id: 1, data: b"x".to_vec() }],
    ];
    for frames in cases {
        let mut c = agent.connect();
        for f in &frames {
            c.send(f);
        }
        let mut saw_error = false;
        while let Some(f) = c.recv_or_eof() {
            saw_error |= matches!(f, Frame::Error { .. });
        }
        assert!(saw_error, "{frames:?}");
    }
    // Garbage bytes too.
    let mut c = agent.connect();
    use std::io::Write;
    c.s.write_all(&[0, 0, 0, 9, 200, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert!(matches!(c.recv(), Frame::Error { .. }));
    // The sleeps started on the closed connections are gone.
    assert!(wait_until(Duration::from_secs(5), || find_under(agent.pid(), &["sleep", "1006"]).is_empty()));
}

#[test]
fn ping_gets_pong() {
    let agent = Agent::start();
    let mut c = agent.connect();
    for nonce in [0, 1, u64::MAX] {
        c.send(&Frame::Ping { nonce });
        assert_eq!(c.recv(), Frame::Pong { nonce });
    }
}

#[test]
fn a_background_process_holding_stdout_does_not_hold_the_exec() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let t = Instant::now();
    let o = c.run(1, &["sh", "-c", "sleep 1007 & echo hi"]);
    let took = t.elapsed();
    // Left behind, it keeps running, as with `docker exec`. Killed here, before any
    // assertion: once its shim is gone it is no longer under the agent for the harness
    // to find.
    let left = find_under(agent.pid(), &["sleep", "1007"]);
    for p in &left {
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(o.stdout, b"hi\n");
    assert_eq!(o.exited(), (0, 0));
    assert_eq!(left.len(), 1, "the background process kept running");
}

#[test]
fn forwarded_signals_reach_the_command() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start(1, &["sh", "-c", "trap 'echo got-hup; exit 7' HUP; echo ready; while :; do sleep 0.05; done"]);
    match c.recv() {
        Frame::Output { data, .. } => assert_eq!(data, b"ready\n"),
        other => panic!("unexpected {other:?}"),
    }
    unsafe { libc::kill(agent.pid(), libc::SIGHUP) };
    let o = c.finish(1);
    assert_eq!(o.stdout, b"got-hup\n");
    assert_eq!(o.exited(), (7, 0));
}

#[test]
fn sigterm_kills_the_commands_and_exits_zero_and_orphans_are_reaped() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    // An orphan that outlives its command and then exits must not stay a zombie.
    assert_eq!(c.run(1, &["sh", "-c", "(sleep 0.2 &) ; exit 0"]).exited(), (0, 0));
    // Nothing is left under the agent but its idle shim.
    assert!(wait_until(Duration::from_secs(5), || descendants(agent.pid()) == idle_shims(agent.pid())
        && descendants(agent.pid()).len() == 1
        && zombie_children(agent.pid()).is_empty()));
    c.start(2, &["sh", "-c", "sleep 1008"]);
    let mut pids = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        pids = find_under(agent.pid(), &["sleep", "1008"]);
        pids.len() == 1
    }));
    let idle = idle_shim(agent.pid());
    let t = Instant::now();
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    let mut status = None;
    assert!(wait_until(Duration::from_secs(5), || {
        status = agent.child.try_wait().unwrap();
        status.is_some()
    }));
    assert!(t.elapsed() < Duration::from_millis(900), "took {:?}", t.elapsed());
    assert!(!alive(idle), "the idle shim outlived the agent");
    assert_eq!(status.unwrap().code(), Some(0));
    assert!(wait_until(Duration::from_secs(5), || !alive(pids[0])));
    assert!(!agent.sock.exists(), "the socket is removed on the way out");
    assert_eq!(agent.own_output(), "");
}

#[test]
fn a_stale_socket_is_replaced_but_nothing_else_is_touched() {
    // A regular file at the path is refused and kept.
    let dir = TempDir::new();
    let file = dir.path().join("not-a-socket");
    fs::write(&file, "keep").unwrap();
    let out = std::process::Command::new(agent_bin()).arg("--socket").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep");
    // An agent killed outright leaves its socket file behind; the next one replaces it.
    let mut agent = Agent::start();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(agent.sock.exists());
    agent.child = std::process::Command::new(agent_bin()).arg("--socket").arg(&agent.sock).spawn().unwrap();
    let mut c = None;
    assert!(wait_until(Duration::from_secs(10), || {
        c = std::os::unix::net::UnixStream::connect(&agent.sock).ok();
        c.is_some()
    }));
    let mut c = Client { s: c.unwrap() };
    assert_eq!(c.recv(), Frame::Hello { version: berth_wire::VERSION, pid: agent.child.id() });
    let mode = fs::metadata(&agent.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
}

#[test]
fn sigint_and_sigquit_also_stop_the_agent_cleanly() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        let mut agent = Agent::start();
        let mut c = agent.connect();
        c.start(1, &["sleep", "1009"]);
        let mut pids = Vec::new();
        assert!(wait_until(Duration::from_secs(10), || {
            pids = find_under(agent.pid(), &["sleep", "1009"]);
            pids.len() == 1
        }));
        unsafe { libc::kill(agent.pid(), sig) };
        let mut status = None;
        assert!(wait_until(Duration::from_secs(5), || {
            status = agent.child.try_wait().unwrap();
            status.is_some()
        }));
        assert_eq!(status.unwrap().code(), Some(0), "signal {sig}");
        assert!(wait_until(Duration::from_secs(5), || !alive(pids[0])));
    }
}

#[test]
fn several_connections_at_once_each_with_its_own_ids() {
    let agent = Agent::start();
    let mut a = agent.connect();
    let mut b = agent.connect();
    // The same id on two connections names two commands.
    a.start(1, &["sh", "-c", "read x; echo a-$x"]);
    let mut s = start_frame(1, &["sh", "-c", "read x; echo b-$x"]);
    s.stdin = true;
    b.send(&Frame::Start(s));
    b.send(&Frame::Stdin { id: 1, data: b"two\n".to_vec() });
    b.send(&Frame::StdinEnd { id: 1 });
    let ob = b.finish(1);
    assert_eq!(ob.stdout, b"b-two\n");
    let oa = a.finish(1);
    assert_eq!(oa.stdout, b"a-\n", "a command without stdin reads end-of-file");
    // Closing one connection leaves the other working.
    drop(a);
    assert_eq!(b.run(2, &["echo", "still"]).stdout, b"still\n");
}

#[test]
fn stdin_for_a_command_that_never_reads_it_does_not_wedge_anything() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut s = start_frame(1, &["true"]);
    s.stdin = true;
    c.send(&Frame::Start(s));
    for _ in 0..16 {
        c.send(&Frame::Stdin { id: 1, data: vec![b'x'; MAX_CHUNK] });
    }
    let o = c.finish(1);
    assert_eq!(o.exited(), (0, 0));
    // Stdin crossing the exit on the wire is ignored, not an error.
    c.send(&Frame::Stdin { id: 1, data: b"late".to_vec() });
    c.send(&Frame::StdinEnd { id: 1 });
    c.send(&Frame::Ack { id: 1, bytes: 10 });
    c.send(&Frame::Ping { nonce: 9 });
    assert_eq!(c.recv(), Frame::Pong { nonce: 9 });
}

#[test]
fn a_command_inherits_no_descriptor_but_its_three_streams() {
    let agent = Agent::start();
    let mut c = agent.connect();
    // Another command's pipes are open in the agent meanwhile.
    let mut s = start_frame(1, &["cat"]);
    s.stdin = true;
    c.send(&Frame::Start(s));
    let o = c.run(2, &["sh", "-c", "ls /proc/$$/fd"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "0\n1\n2\n");
    c.send(&Frame::StdinEnd { id: 1 });
    assert_eq!(c.finish(1).exited(), (0, 0));
}

/// The pid of the shim that ran a command: the parent `sh -c 'echo $PPID'` reports.
fn shim_of(c: &mut Client, id: u32) -> i32 {
    let o = c.run(id, &["sh", "-c", "echo $PPID"]);
    assert_eq!(o.exited(), (0, 0));
    String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn starts_are_served_by_the_idle_shim_which_is_replaced_each_time() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut served = Vec::new();
    for id in 1..=3 {
        let idle = idle_shim(agent.pid());
        assert_eq!(shim_of(&mut c, id), idle, "command {id} did not run under the idle shim");
        assert!(!served.contains(&idle), "a shim served twice");
        served.push(idle);
    }
}

#[test]
fn the_idle_shim_is_outside_every_command_tree_and_gets_no_forwarded_signal() {
    let agent = Agent::start();
    let mut c = agent.connect();
    c.start(1, &["sh", "-c", "trap 'echo got-hup; exit 7' HUP; echo ready; while :; do sleep 0.05; done"]);
    match c.recv() {
        Frame::Output { data, .. } => assert_eq!(data, b"ready\n"),
        other => panic!("unexpected {other:?}"),
    }
    let idle = idle_shim(agent.pid());
    unsafe { libc::kill(agent.pid(), libc::SIGHUP) };
    let o = c.finish(1);
    assert_eq!((o.stdout.as_slice(), o.exited()), (&b"got-hup\n"[..], (7, 0)));
    // The idle shim blocks every signal, so one sent to it would still be pending.
    assert!(alive(idle));
    assert_eq!(pending_signals(idle) & (1 << (libc::SIGHUP - 1)), 0, "the idle shim was sent SIGHUP");
    // Killing a whole command tree leaves the idle shim alone, and it serves the next command.
    c.start(2, &["sh", "-c", "setsid sleep 1010 & sleep 1011"]);
    assert!(wait_until(Duration::from_secs(10), || find_under(agent.pid(), &["sleep", "1011"]).len() == 1));
    let idle = idle_shim(agent.pid());
    c.send(&Frame::Kill { id: 2 });
    assert_eq!(c.finish(2).exited(), (0, 9));
    assert!(alive(idle) && pending_signals(idle) == 0, "the kill reached the idle shim");
    assert_eq!(shim_of(&mut c, 3), idle);
}

#[test]
fn an_idle_shim_killed_from_outside_is_replaced() {
    let agent = Agent::start();
    let mut c = agent.connect();
    for id in [1, 3] {
        let idle = idle_shim(agent.pid());
        unsafe { libc::kill(idle, libc::SIGKILL) };
        // At once: the dead shim cannot serve it, so a fresh one does.
        let o = c.run(id, &["echo", "hi"]);
        assert_eq!((o.stdout.as_slice(), o.exited()), (&b"hi\n"[..], (0, 0)));
        assert!(wait_until(Duration::from_secs(5), || !alive(idle)));
        // And a new idle shim takes its place.
        let next = idle_shim(agent.pid());
        assert_ne!(next, idle);
        assert_eq!(shim_of(&mut c, id + 1), next);
    }
}

#[test]
fn on_sigterm_no_shim_is_left() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    // A finished command's shim is released, and exits and is reaped in its own time
    // (the `Exited` frame does not wait for it): wait for that, so that just two are left.
    let done = shim_of(&mut c, 1);
    assert!(
        wait_until(Duration::from_secs(10), || !processes().iter().any(|&(p, _, pp)| p == done && pp == agent.pid())),
        "the shim of a finished command was never reaped"
    );
    c.start(2, &["sleep", "1012"]);
    assert!(wait_until(Duration::from_secs(10), || find_under(agent.pid(), &["sleep", "1012"]).len() == 1));
    let idle = idle_shim(agent.pid());
    let shims: Vec<(i32, u64)> = processes()
        .into_iter()
        .filter(|&(p, _, pp)| pp == agent.pid() && comm(p) == "berth-shim")
        .filter_map(|(p, _, _)| Some((p, start_time(p)?)))
        .collect();
    assert!(shims.len() == 2 && shims.iter().any(|&(p, _)| p == idle), "{shims:?}");
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    assert!(wait_until(Duration::from_secs(5), || agent.child.try_wait().unwrap().is_some()));
    // The agent reaped them before it exited: not even zombies are left. (A pid may have
    // been reused since; the start time tells the shim from a newcomer.)
    let left: Vec<(i32, u64)> = shims.into_iter().filter(|&(p, t)| start_time(p) == Some(t)).collect();
    assert!(left.is_empty(), "shims left: {left:?}");
}

#[test]
fn an_idle_shim_does_not_outlive_an_agent_killed_outright() {
    let mut agent = Agent::start();
    let idle = idle_shim(agent.pid());
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(idle)), "the idle shim outlived the agent");
}
