"""project.exec through the client against a real berthd."""

from __future__ import annotations

from typing import List, Tuple

import pytest

import berth
from conftest import Daemon


def test_exit_codes(client: berth.Client, project: str) -> None:
    assert client.exec(project, ["true"]).exit_code == 0
    r = client.exec(project, "echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, b"out\n", b"err\n", False)
    assert (r.stdout_text, r.stderr_text, r.runtime, r.timed_out, r.truncated) == (
        "out\n",
        "err\n",
        "docker",
        False,
        False,
    )
    assert isinstance(r.duration_ms, int) and r.path in ("agent", "exec")
    r = client.exec(project, ["no-such-command"])
    assert r.exit_code == 127 and r.exec_error


def test_argv_is_not_shell(client: berth.Client, project: str) -> None:
    r = client.exec(project, ["echo", "$HOME; x", "'q'"])
    assert r.stdout == b"$HOME; x 'q'\n"


def test_env_and_workdir(client: berth.Client, project: str) -> None:
    r = client.exec(project, "echo $A-$B; pwd", env={"A": "1", "B": "two words"}, workdir="/tmp")
    assert r.stdout_text == "1-two words\n/tmp\n"
    assert client.exec(project, "pwd").stdout == b"/workspace\n"


def test_stdin_bytes_and_text(client: berth.Client, project: str) -> None:
    blob = bytes(range(256)) * 40
    r = client.exec(project, ["cat"], stdin=blob)
    assert r.ok and r.stdout == blob
    r = client.exec(project, ["wc", "-c"], stdin="héllo")
    assert r.stdout.strip() == b"6"


def test_binary_output(client: berth.Client, project: str) -> None:
    r = client.exec(project, r"printf '\000\377\001'; printf '\376' >&2")
    assert (r.stdout, r.stderr) == (b"\x00\xff\x01", b"\xfe")


def test_timeout_is_a_result(client: berth.Client, project: str) -> None:
    r = client.exec(project, ["sleep", "30"], timeout=0.5)
    assert (r.timed_out, r.exit_code, r.ok) == (True, 124, False)
    assert r.duration_ms < 20_000
    r = client.exec(project, ["sleep", "30"], timeout="300ms")
    assert r.timed_out and r.exit_code == 124


def test_streaming_delivers_output_before_the_command_ends(client: berth.Client, project: str, daemon: Daemon) -> None:
    # The command prints "ready", then blocks on a FIFO until something writes to it.
    # Only the callback writes to it (with a second client), when it has seen "ready":
    # the command can only end if the callback ran while it was running.
    seen: List[Tuple[str, bytes]] = []
    with berth.Client(daemon.socket) as helper:

        def on_output(stream: str, data: bytes) -> None:
            seen.append((stream, data))
            if stream == "stdout" and b"ready" in data:
                assert helper.exec(project, "echo go > /tmp/stream-fifo", timeout=10).ok

        r = client.exec(
            project,
            "rm -f /tmp/stream-fifo; mkfifo /tmp/stream-fifo && echo ready && echo progress >&2 && cat /tmp/stream-fifo",
            timeout=20,
            on_output=on_output,
        )
    assert r.ok, r
    assert (r.stdout, r.stderr) == (b"ready\ngo\n", b"progress\n")
    assert b"".join(d for s, d in seen if s == "stdout") == b"ready\ngo\n"
    assert b"".join(d for s, d in seen if s == "stderr") == b"progress\n"


def test_a_raising_callback_ends_the_call_and_the_client_goes_on(client: berth.Client, project: str) -> None:
    class Stop(Exception):
        pass

    def on_output(stream: str, data: bytes) -> None:
        raise Stop()

    try:
        client.exec(project, "echo one; cat", on_output=on_output, timeout=30)
    except Stop:
        pass
    else:
        raise AssertionError("the callback's exception should end the call")
    assert client.exec(project, "echo after").stdout == b"after\n"


def test_a_callback_may_not_call_its_own_client(client: berth.Client, project: str) -> None:
    errors: List[BaseException] = []

    def on_output(stream: str, data: bytes) -> None:
        try:
            client.info()
        except RuntimeError as e:
            errors.append(e)

    r = client.exec(project, "echo hi", on_output=on_output)
    assert r.stdout == b"hi\n" and len(errors) == 1 and "another Client" in str(errors[0])


def test_client_timeout_bounds_the_wait_for_the_daemon(daemon: Daemon, project: str) -> None:
    with berth.Client(daemon.socket, timeout=0.3) as c:
        with pytest.raises(berth.Timeout) as e:
            c.exec(project, ["sleep", "30"])
        assert e.value.kind == "timeout" and "0.3" in e.value.message
        assert c.exec(project, "echo still here").stdout == b"still here\n"
