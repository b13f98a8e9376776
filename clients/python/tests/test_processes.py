"""process.* through the client against a real berthd."""

from __future__ import annotations

from typing import List, Tuple

import berth
from conftest import Daemon


def test_spawn_follow_and_kill(client: berth.Client, project: str, daemon: Daemon) -> None:
    p = client.spawn(project, "echo ready; echo warn >&2; exec sleep 1000")
    assert isinstance(p, berth.Process) and p.running and p.project == project
    assert p.id in [q.id for q in client.processes(project)]

    # Follow the output; once both lines came, kill the process from a second client.
    # The follow ends only when the process does.
    seen: List[Tuple[str, bytes]] = []
    killed: List[berth.Process] = []
    with berth.Client(daemon.socket) as helper:

        def on_output(stream: str, data: bytes) -> None:
            seen.append((stream, data))
            got = {s: b"".join(d for t, d in seen if t == s) for s in ("stdout", "stderr")}
            if got == {"stdout": b"ready\n", "stderr": b"warn\n"}:
                killed.append(helper.kill(project, p.id, "TERM", grace=5))

        out = client.process_output(project, p.id, follow=True, on_output=on_output)
    assert killed and killed[0].running is False
    assert (out.running, out.exit_code) == (False, 128 + 15)
    assert out.stdout_offset == len(b"ready\n") and out.stderr_offset == len(b"warn\n")
    assert b"".join(d for s, d in seen if s == "stdout") == b"ready\n"
    assert b"".join(d for s, d in seen if s == "stderr") == b"warn\n"

    ended = client.wait(project, p.id)
    assert (ended.running, ended.exit_code, ended.signal) == (False, 143, "TERM") and ended.ended

    # Read back from offsets.
    whole = client.process_output(project, p.id)
    assert (whole.stdout, whole.stderr, whole.stdout_offset) == (b"ready\n", b"warn\n", 6)
    tail = client.process_output(project, p.id, stdout_offset=2, stderr_offset=5)
    assert (tail.stdout, tail.stderr, tail.dropped) == (b"ady\n", b"", 0)


def test_follow_without_callback_collects(client: berth.Client, project: str) -> None:
    p = client.spawn(project, ["sh", "-c", "echo a; echo b >&2; exit 4"])
    out = client.process_output(project, p.id, follow=True)
    assert (out.stdout_text, out.stderr_text, out.exit_code, out.running) == ("a\n", "b\n", 4, False)


def test_stdin_input_and_wait(client: berth.Client, project: str) -> None:
    p = client.spawn(project, ["cat"], stdin=True)
    client.send_input(project, p.id, b"\x00bin\xff")
    client.send_input(project, p.id, "text", close=True)
    done = client.wait(project, p.id, timeout=30)
    assert (done.running, done.exit_code) == (False, 0)
    assert client.process_output(project, p.id).stdout == b"\x00bin\xfftext"
    with_timeout = client.spawn(project, ["sleep", "1000"])
    assert client.wait(project, with_timeout.id, timeout=0.2).running is True
    assert client.kill(project, with_timeout.id, "KILL").exit_code == 137


def test_unknown_process_is_not_found(client: berth.Client, project: str) -> None:
    try:
        client.wait(project, 999_999, timeout=1)
    except berth.NotFound as e:
        assert "999999" in e.message
    else:
        raise AssertionError("no such process")
