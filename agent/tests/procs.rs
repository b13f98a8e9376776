//! End-to-end tests of the agent's background processes, on the host, over a temporary
//! socket. Every process a test starts is under the agent, so dropping the `Agent` (which
//! stops it with SIGTERM) ends them all, even when an assertion failed first.

mod common;

use std::fs;
use std::time::Duration;

use berth_wire::{FailReason, Frame, ProcInfo, RefusedKind, Start, MAX_DATA};
use common::*;

fn bg(argv: &[&str]) -> Start {
    let mut s = start_frame(call_id(), argv);
    s.workdir = Vec::new();
    s
}

fn output(proc: u32, offsets: [u64; 2], limit: u32, wait_ms: u32) -> Frame {
    Frame::ProcOutput { id: call_id(), proc, stdout_offset: offsets[0], stderr_offset: offsets[1], limit, wait_ms }
}

struct Data {
    info: ProcInfo,
    offsets: [u64; 2],
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    dropped: u64,
}

fn data(c: &mut Client, f: Frame) -> Data {
    match c.call(f) {
        Frame::ProcData { info, stdout_offset, stdout, stderr_offset, stderr, dropped, .. } => {
            Data { info, offsets: [stdout_offset, stderr_offset], stdout, stderr, dropped }
        }
        other => panic!("expected process data, got {other:?}"),
    }
}

fn kill(c: &mut Client, proc: u32, signal: i32, grace_ms: u32) -> ProcInfo {
    c.proc_call(Frame::ProcKill { id: call_id(), proc, signal, grace_ms })
}

fn list(c: &mut Client) -> Vec<ProcInfo> {
    match c.call(Frame::ProcList { id: call_id() }) {
        Frame::Procs { procs, .. } => procs,
        other => panic!("expected processes, got {other:?}"),
    }
}

#[test]
fn a_background_process_outlives_its_connection_and_term_kills_its_tree() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let info = c.spawn(bg(&["sh", "-c", "echo ready; sleep 30 & wait"]), 4096);
    assert!(info.running && info.pid > 0 && info.proc >= 1, "{info:?}");
    assert_eq!(info.argv, [&b"sh"[..], b"-c", b"echo ready; sleep 30 & wait"]);
    assert!(info.started_ms > 0 && info.ended_ms == 0);
    drop(c);

    // A second connection sees it, and its output, once there is some.
    let mut c = agent.connect();
    let d = data(&mut c, output(info.proc, [0, 0], 1024, 10_000));
    assert_eq!((d.stdout.as_slice(), d.offsets, d.dropped), (&b"ready\n"[..], [0, 0], 0));
    assert!(d.info.running);
    let ps = list(&mut c);
    assert_eq!(ps.len(), 1);
    assert_eq!((ps[0].proc, ps[0].pid, ps[0].running), (info.proc, info.pid, true));
    assert!(c.proc_wait(info.proc, 50).running, "it cannot have ended");

    let mut child = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        child = find_under(info.pid as i32, &["sleep", "30"]);
        child.len() == 1
    }));
    let ended = kill(&mut c, info.proc, libc::SIGTERM, 10_000);
    assert!(!ended.running);
    assert_eq!((ended.code, ended.signal), (0, libc::SIGTERM));
    assert!(ended.ended_ms >= ended.started_ms);
    assert!(wait_until(Duration::from_secs(5), || !alive(child[0])), "the child outlived the kill");
    assert!(!alive(info.pid as i32));
    // Ended, it stays listed with its status and output; a wait or kill answers at once.
    let ps = list(&mut c);
    assert_eq!((ps[0].running, ps[0].signal), (false, libc::SIGTERM));
    assert_eq!(c.proc_wait(info.proc, 60_000), ended);
    assert_eq!(kill(&mut c, info.proc, libc::SIGKILL, 0), ended);
    assert_eq!(data(&mut c, output(info.proc, [0, 0], 1024, 60_000)).stdout, b"ready\n");
    assert_eq!(agent.own_output(), "");
}

#[test]
fn output_past_keep_reports_exactly_what_was_dropped() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let script = "yes abcdefghi | head -c 100000; yes E | head -c 5000 >&2; printf END";
    let info = c.spawn(bg(&["sh", "-c", script]), 1000);
    let end = c.proc_wait(info.proc, 30_000);
    assert_eq!((end.running, end.code), (false, 0));
    let all_out: Vec<u8> = b"abcdefghi\n".iter().copied().cycle().take(100_000).chain(*b"END").collect();
    let all_err: Vec<u8> = b"E\n".iter().copied().cycle().take(5000).collect();
    let d = data(&mut c, output(info.proc, [0, 0], MAX_DATA as u32, 0));
    // 100003 and 5000 bytes written, the newest 1000 of each kept.
    assert_eq!(d.offsets, [99_003, 4000]);
    assert_eq!(d.dropped, 99_003 + 4000);
    assert_eq!(d.stdout, all_out[99_003..]);
    assert_eq!(d.stderr, all_err[4000..]);
    // From an offset still kept: nothing dropped; a limit is kept to.
    let d = data(&mut c, output(info.proc, [99_500, 5000], 10, 0));
    assert_eq!((d.offsets, d.dropped), ([99_500, 5000], 0));
    assert_eq!((d.stdout.as_slice(), d.stderr.len()), (&all_out[99_500..99_510], 0));
    // Past the end: refused, naming the stream.
    let (kind, msg) = c.refused(output(info.proc, [100_004, 0], 10, 0));
    assert_eq!(kind, RefusedKind::Invalid);
    assert!(msg.contains("stdout") && msg.contains("100004"), "{msg}");
    let (kind, msg) = c.refused(output(info.proc, [0, 5001], 10, 0));
    assert_eq!(kind, RefusedKind::Invalid);
    assert!(msg.contains("stderr"), "{msg}");
}

#[test]
fn input_reaches_the_process_and_close_ends_it() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut s = bg(&["cat"]);
    s.stdin = true;
    let info = c.spawn(s, 1 << 20);
    let input = |data: &[u8], close| Frame::ProcInput { id: call_id(), proc: info.proc, data: data.to_vec(), close };
    assert!(matches!(c.call(input(b"hello\n", false)), Frame::Done { size: 0, .. }));
    let d = data(&mut c, output(info.proc, [0, 0], 1024, 10_000));
    assert_eq!(d.stdout, b"hello\n");
    // A lot, in order, then the end.
    let big: Vec<u8> = (0..=255u8).cycle().take(600_000).collect();
    for chunk in big.chunks(MAX_DATA) {
        assert!(matches!(c.call(input(chunk, false)), Frame::Done { .. }));
    }
    assert!(matches!(c.call(input(b"", true)), Frame::Done { .. }));
    let end = c.proc_wait(info.proc, 30_000);
    assert_eq!((end.running, end.code, end.signal), (false, 0, 0));
    let (out, _) = c.proc_output_all(info.proc);
    assert!(out[6..] == big[..], "stdin came back altered ({} bytes)", out.len());
    // Closed now, and for a process without stdin, never open.
    let (kind, msg) = c.refused(input(b"more", false));
    assert_eq!(kind, RefusedKind::WrongKind, "{msg}");
    let other = c.spawn(bg(&["sleep", "30"]), 0);
    let (kind, msg) =
        c.refused(Frame::ProcInput { id: call_id(), proc: other.proc, data: b"x".to_vec(), close: false });
    assert_eq!(kind, RefusedKind::WrongKind);
    assert!(msg.contains("stdin") && msg.contains(&other.proc.to_string()), "{msg}");
    kill(&mut c, other.proc, libc::SIGKILL, 0);
}

#[test]
fn a_long_poll_is_answered_as_soon_as_output_comes() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut s = bg(&["sh", "-c", "read x; echo got-$x; read y; echo err-$y >&2"]);
    s.stdin = true;
    let info = c.spawn(s, 4096);
    // The long poll is pending: a ping sent after it is answered first.
    let poll = output(info.proc, [0, 0], 1024, 60_000);
    let poll_id = poll.id().unwrap();
    c.send(&poll);
    c.send(&Frame::Ping { nonce: 1 });
    assert_eq!(c.recv(), Frame::Pong { nonce: 1 });
    // Input from another connection makes the output that answers it.
    let mut other = agent.connect();
    let input = |d: &[u8]| Frame::ProcInput { id: call_id(), proc: info.proc, data: d.to_vec(), close: false };
    assert!(matches!(other.call(input(b"one\n")), Frame::Done { .. }));
    match c.answer(poll_id) {
        Frame::ProcData { stdout, stdout_offset: 0, dropped: 0, .. } => assert_eq!(stdout, b"got-one\n"),
        f => panic!("{f:?}"),
    }
    // Past both offsets, on stderr this time.
    let poll = output(info.proc, [8, 0], 1024, 60_000);
    let poll_id = poll.id().unwrap();
    c.send(&poll);
    assert!(matches!(other.call(input(b"two\n")), Frame::Done { .. }));
    match c.answer(poll_id) {
        Frame::ProcData { stdout, stderr, .. } => {
            assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b""[..], &b"err-two\n"[..]))
        }
        f => panic!("{f:?}"),
    }
    // The end answers a poll too; a short one times out empty while it runs.
    let mut s = bg(&["sleep", "30"]);
    s.stdin = false;
    let sleeper = c.spawn(s, 10);
    let d = data(&mut c, output(sleeper.proc, [0, 0], 10, 30));
    assert!(d.info.running && d.stdout.is_empty() && d.stderr.is_empty());
    let poll = output(sleeper.proc, [0, 0], 10, 60_000);
    let poll_id = poll.id().unwrap();
    c.send(&poll);
    assert!(!kill(&mut other, sleeper.proc, libc::SIGKILL, 0).running);
    match c.answer(poll_id) {
        Frame::ProcData { info, .. } => assert_eq!((info.running, info.signal), (false, libc::SIGKILL)),
        f => panic!("{f:?}"),
    }
}

#[test]
fn numbers_are_never_reused_across_a_restart() {
    let mut agent = Agent::start();
    let mut c = agent.connect();
    let a = c.spawn(bg(&["true"]), 0).proc;
    let b = c.spawn(bg(&["sleep", "30"]), 0).proc;
    assert!(b > a);
    drop(c);
    // The sleep is killed with the agent; the next agent goes on counting.
    agent.restart();
    assert!(agent.dir.path().join("processes.next").exists());
    let mut c = agent.connect();
    assert!(list(&mut c).is_empty(), "a new agent has no processes");
    assert_eq!(c.spawn(bg(&["true"]), 0).proc, b + 1);
    let (kind, msg) = c.refused(Frame::ProcWait { id: call_id(), proc: a, timeout_ms: 0 });
    assert_eq!(kind, RefusedKind::NotFound);
    assert_eq!(msg, format!("no background process {a}"));
}

#[test]
fn at_most_64_run_at_once() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut procs = Vec::new();
    for _ in 0..64 {
        procs.push(c.spawn(bg(&["sleep", "1000"]), 0));
    }
    let (kind, msg) = match c.call(Frame::Spawn { start: bg(&["sleep", "1000"]), keep: 0 }) {
        Frame::Refused { kind, message, .. } => (kind, message),
        other => panic!("the 65th started: {other:?}"),
    };
    assert_eq!(kind, RefusedKind::Busy);
    assert!(msg.contains("64"), "{msg}");
    // One ended makes room for one.
    assert!(!kill(&mut c, procs[0].proc, libc::SIGKILL, 0).running);
    let last = c.spawn(bg(&["sleep", "1000"]), 0);
    assert_eq!(list(&mut c).len(), 65);
    assert!(matches!(
        c.call(Frame::Spawn { start: bg(&["true"]), keep: 0 }),
        Frame::Refused { kind: RefusedKind::Busy, .. }
    ));
    kill(&mut c, last.proc, libc::SIGKILL, 0);
}

#[test]
fn ended_processes_are_kept_up_to_64_the_first_ended_dropped_first() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let mut nums = Vec::new();
    for i in 0..66 {
        let p = c.spawn(bg(&["sh", "-c", &format!("exit {}", i % 7)]), 16).proc;
        assert_eq!(c.proc_wait(p, 30_000).code, i % 7);
        nums.push(p);
    }
    let ps = list(&mut c);
    assert_eq!(ps.iter().map(|p| p.proc).collect::<Vec<_>>(), nums[2..]);
    for gone in &nums[..2] {
        assert_eq!(c.refused(output(*gone, [0, 0], 1, 0)).0, RefusedKind::NotFound);
    }
}

#[test]
fn unknown_numbers_bad_signals_and_unstartable_commands() {
    let agent = Agent::start();
    let mut c = agent.connect();
    for f in [
        output(999, [0, 0], 1, 0),
        Frame::ProcWait { id: call_id(), proc: 999, timeout_ms: 0 },
        Frame::ProcKill { id: call_id(), proc: 999, signal: 15, grace_ms: 0 },
        Frame::ProcInput { id: call_id(), proc: 999, data: vec![], close: true },
    ] {
        let (kind, msg) = c.refused(f);
        assert_eq!((kind, msg.as_str()), (RefusedKind::NotFound, "no background process 999"));
    }
    let p = c.spawn(bg(&["sleep", "30"]), 0);
    for signal in [0, 65, -9] {
        let (kind, msg) = c.refused(Frame::ProcKill { id: call_id(), proc: p.proc, signal, grace_ms: 0 });
        assert_eq!(kind, RefusedKind::Invalid, "{msg}");
    }
    assert!(c.proc_wait(p.proc, 0).running);
    kill(&mut c, p.proc, libc::SIGKILL, 0);
    // A command that cannot start is `Failed`, and takes no number.
    let id = call_id();
    let mut s = bg(&["berth-no-such-program"]);
    s.id = id;
    match c.call(Frame::Spawn { start: s, keep: 0 }) {
        Frame::Failed { id: i, reason, message } => {
            assert_eq!((i, reason), (id, FailReason::NotFound));
            assert!(message.contains("berth-no-such-program"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(list(&mut c).len(), 1);
    let mut s = bg(&["true"]);
    s.workdir = b"/no/such/dir".to_vec();
    assert!(matches!(c.call(Frame::Spawn { start: s, keep: 0 }), Frame::Failed { reason: FailReason::BadWorkdir, .. }));
    assert_eq!(c.spawn(bg(&["true"]), 0).proc, p.proc + 1);
    // A keep past the limit is refused.
    let (kind, _) = match c.call(Frame::Spawn { start: bg(&["true"]), keep: u32::MAX }) {
        Frame::Refused { kind, message, .. } => (kind, message),
        other => panic!("{other:?}"),
    };
    assert_eq!(kind, RefusedKind::Invalid);
}

#[test]
fn a_tree_that_ignores_term_is_killed_after_the_grace_and_other_signals_answer_at_once() {
    let agent = Agent::start();
    let mut c = agent.connect();
    let script = "trap '' TERM; trap 'echo usr1' USR1; echo ready; while :; do sleep 0.05; done";
    let p = c.spawn(bg(&["sh", "-c", script]), 4096);
    assert_eq!(data(&mut c, output(p.proc, [0, 0], 100, 10_000)).stdout, b"ready\n");
    // USR1: delivered to the tree, answered at once with the process running.
    assert!(kill(&mut c, p.proc, libc::SIGUSR1, 0).running);
    // (The shell may also say on stderr that its sleep died of USR1: read past that.)
    let mut offsets = [6, 0];
    let mut out = Vec::new();
    for _ in 0..20 {
        if !out.is_empty() {
            break;
        }
        let d = data(&mut c, output(p.proc, offsets, 100, 10_000));
        assert!(d.info.running);
        offsets = [d.offsets[0] + d.stdout.len() as u64, d.offsets[1] + d.stderr.len() as u64];
        out = d.stdout;
    }
    assert_eq!(out, b"usr1\n");
    // TERM is ignored: after the grace, the tree is killed.
    let ended = kill(&mut c, p.proc, libc::SIGTERM, 200);
    assert_eq!((ended.running, ended.signal), (false, libc::SIGKILL));
    assert!(wait_until(Duration::from_secs(5), || descendants(agent.pid())
        .iter()
        .all(|&d| fs::read_to_string(format!("/proc/{d}/cmdline")).map_or(true, |c| !c.starts_with("sleep")))));
}
