"""The sans-io layer on its own: no daemon, no engine."""

from __future__ import annotations

import base64
import inspect
import json
import os
from typing import Any, Dict, List

import pytest

import berth
from berth import _ops as ops
from berth._protocol import Call, Connection, Done, Output, encode_data, encode_request


def line(obj: Dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_durations() -> None:
    assert ops.duration("30s") == "30s"
    assert ops.duration(30) == "30s"
    assert ops.duration(2.0) == "2s"
    assert ops.duration(1.5) == "1500ms"
    assert ops.duration(0.25) == "250ms"
    assert ops.duration(0.0005) == "500us"
    assert ops.duration(0) == "0s"
    with pytest.raises(ValueError):
        ops.duration(-1)
    with pytest.raises(ValueError):
        ops.duration(float("inf"))
    with pytest.raises(TypeError):
        ops.duration(True)


def test_commands() -> None:
    assert ops.command_argv("echo hi | wc -c") == ["/bin/sh", "-c", "echo hi | wc -c"]
    assert ops.command_argv(["ls", "-l"]) == ["ls", "-l"]
    assert ops.command_argv(("ls",)) == ["ls"]
    with pytest.raises(TypeError):
        ops.command_argv(b"ls")
    with pytest.raises(TypeError):
        ops.command_argv(["ls", 1])  # type: ignore[list-item]


def test_requests_are_one_json_line() -> None:
    raw = encode_request(7, "project.exec", {"name": "a", "command": ["echo", "é\n"]})
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "project.exec",
        "params": {"name": "a", "command": ["echo", "é\n"]},
    }


def test_data_encoding_picks_text_or_base64() -> None:
    assert encode_data(b"hello\n") == {"data": "hello\n"}
    assert encode_data(b"\xff\x00") == {"data": base64.b64encode(b"\xff\x00").decode(), "encoding": "base64"}
    # Valid UTF-8 whose escapes would outgrow base64 goes as base64.
    assert encode_data(b"\x00" * 30)["encoding"] == "base64"


def test_responses_and_notifications_are_routed_by_id() -> None:
    conn = Connection()
    seen: List[Any] = []
    a, _ = conn.send(Call("project.exec", {}, ops.parse_exec, on_output=lambda s, d: None, collect=True))
    b, _ = conn.send(Call("project.exec", {}, ops.parse_exec, on_output=lambda s, d: None, collect=True))
    note = {"jsonrpc": "2.0", "method": "exec.output", "params": {"id": b, "stream": "stdout", "data": "to b\n"}}
    binary = {
        "jsonrpc": "2.0",
        "method": "exec.output",
        "params": {"id": a, "stream": "stderr", "data": base64.b64encode(b"\xff").decode(), "encoding": "base64"},
    }
    result = {"exit_code": 0, "stdout": "", "stderr": "", "timed_out": False, "truncated": False}
    stream = line(note) + line(binary) + line({"jsonrpc": "2.0", "id": a, "result": dict(result, exit_code=3)})
    stream += line({"jsonrpc": "2.0", "id": b, "result": result})
    # Bytes arrive cut anywhere: one at a time.
    for i in range(len(stream)):
        seen.extend(conn.receive(stream[i : i + 1]))
    assert seen[0] == Output(b, "stdout", b"to b\n")
    assert seen[1] == Output(a, "stderr", b"\xff")
    assert isinstance(seen[2], Done) and seen[2].id == a
    assert seen[2].value.exit_code == 3 and seen[2].value.stderr == b"\xff"
    assert isinstance(seen[3], Done) and seen[3].id == b and seen[3].value.stdout == b"to b\n"
    assert conn.in_flight == 0


def test_answers_of_forgotten_calls_are_dropped() -> None:
    conn = Connection()
    a, _ = conn.send(Call("daemon.info"))
    conn.forget(a)
    assert conn.receive(line({"jsonrpc": "2.0", "id": a, "result": {}})) == []


@pytest.mark.parametrize(
    "kind, code, cls",
    [
        ("not_found", -32004, berth.NotFound),
        ("already_exists", -32009, berth.AlreadyExists),
        ("invalid_params", -32602, berth.InvalidParams),
        ("invalid_name", -32602, berth.InvalidName),
        ("runtime_unavailable", -32010, berth.RuntimeUnavailable),
        ("runtime_error", -32011, berth.RuntimeFailure),
        ("timeout", -32012, berth.Timeout),
        ("busy", -32013, berth.Busy),
        ("too_large", -32014, berth.TooLarge),
        ("forbidden", -32003, berth.Forbidden),
        ("parse_error", -32700, berth.ProtocolError),
        ("invalid_request", -32600, berth.ProtocolError),
        ("method_not_found", -32601, berth.ProtocolError),
        ("internal", -32603, berth.InternalError),
    ],
)
def test_errors_map_to_their_class(kind: str, code: int, cls: type) -> None:
    conn = Connection()
    a, _ = conn.send(Call("project.get", {"name": "x"}))
    err = {"code": code, "message": f"it went {kind}", "data": {"kind": kind}}
    (done,) = conn.receive(line({"jsonrpc": "2.0", "id": a, "error": err}))
    assert isinstance(done, Done)
    e = done.error
    assert type(e) is cls and isinstance(e, berth.BerthError)
    assert (e.kind, e.code, e.message, str(e)) == (kind, code, f"it went {kind}", f"it went {kind}")


def test_an_error_without_id_fails_every_call() -> None:
    conn = Connection()
    ids = [conn.send(Call("daemon.info"))[0] for _ in range(3)]
    err = {"code": -32014, "message": "request line longer than 10 bytes; closing", "data": {"kind": "too_large"}}
    events = conn.receive(line({"jsonrpc": "2.0", "id": None, "error": err}))
    assert sorted(e.id for e in events) == ids
    assert all(isinstance(e, Done) and isinstance(e.error, berth.TooLarge) for e in events)
    assert conn.broken


def test_a_garbled_line_breaks_the_connection() -> None:
    conn = Connection()
    a, _ = conn.send(Call("daemon.info"))
    (done,) = conn.receive(b"{not json\n")
    assert isinstance(done, Done) and isinstance(done.error, berth.ProtocolError)
    assert done.error.kind == "bad_response" and conn.broken


def drive_offline(op: "ops.Op[Any]", limits: ops.Limits, answer: Any) -> List[Call]:
    """Runs an operation against ``answer(call)``, returning every call it made."""
    calls: List[Call] = []
    step = next(op)
    try:
        while True:
            if step is ops.NEED_LIMITS:
                value: Any = limits
            elif isinstance(step, list):
                calls.extend(step)
                value = [answer(c) for c in step]
            else:
                calls.append(step)
                value = answer(step)
            step = op.send(value)
    except StopIteration:
        return calls


@pytest.mark.parametrize("max_line", [4096, 65536, 1 << 20])
@pytest.mark.parametrize("kind", ["binary", "text", "escapes"])
def test_large_writes_go_in_pieces_under_max_line(max_line: int, kind: str) -> None:
    size = max(50_000, 2 * max_line)
    data = {
        "binary": os.urandom(size),
        "text": ("añ€😀" * size)[:size].encode()[:size],
        "escapes": b'\x00\n"' * (size // 3),
    }[kind]
    file = bytearray()

    def answer(c: Call) -> Any:
        p = c.params
        piece = base64.b64decode(p["data"]) if p.get("encoding") == "base64" else p["data"].encode()
        at = p.get("offset", len(file) if p.get("append") else 0)
        if "offset" not in p and not p.get("append"):
            file.clear()
        file[at : at + len(piece)] = piece
        return c.parse({"path": "/workspace/f", "size": len(file)}, {})

    op = ops.write_file("p", "f", data, mode="0600", mkdirs=True, append=False, window=4)
    calls = drive_offline(op, ops.Limits(max_line=max_line, max_output=1 << 20), answer)
    assert bytes(file) == data
    assert len(calls) > 1
    for i, c in enumerate(calls):
        assert len(encode_request(2**31, c.method, c.params)) <= max_line
        assert ("mode" in c.params, "mkdirs" in c.params, "offset" in c.params) == (i == 0, i == 0, i > 0)


def test_appends_go_in_order() -> None:
    data = os.urandom(50_000)
    file = bytearray(b"head")

    def answer(c: Call) -> Any:
        assert c.params["append"] is True and "offset" not in c.params
        file.extend(base64.b64decode(c.params["data"]) if c.params.get("encoding") else c.params["data"].encode())
        return c.parse({"path": "/workspace/f", "size": len(file)}, {})

    calls = drive_offline(
        ops.write_file("p", "f", data, mode=None, mkdirs=False, append=True), ops.Limits(8192, 1 << 20), answer
    )
    assert len(calls) > 1 and bytes(file) == b"head" + data


def test_reads_go_in_pieces_until_eof() -> None:
    data = os.urandom(10_000)

    def answer(c: Call) -> Any:
        off, limit = c.params.get("offset", 0), c.params["limit"]
        piece = data[off : off + limit]
        r = {"path": "/workspace/f", "size": len(data), "data": base64.b64encode(piece).decode()}
        return c.parse(dict(r, encoding="base64", eof=off + len(piece) >= len(data)), {})

    op = ops.read_file("p", "f")
    calls = drive_offline(op, ops.Limits(1 << 20, 3000), answer)
    assert len(calls) == 4
    op = ops.read_file("p", "f")
    out: Any = None
    step = next(op)
    try:
        while True:
            step = op.send(ops.Limits(1 << 20, 3000) if step is ops.NEED_LIMITS else answer(step))
    except StopIteration as stop:
        out = stop.value
    assert out == data


SNAPSHOT = {
    "id": "snap-0123456789ab",
    "project": "p",
    "label": "l",
    "created": "2025-01-01T00:00:00Z",
    "image": "berth-snapshot:snap-0123456789ab",
    "workspace_bytes": 7,
    "base_image": "busybox:latest",
}
PROJECT = {"name": "q", "status": "running", "image": "berth-snapshot:snap-0123456789ab"}


@pytest.mark.parametrize(
    "op, method, params, result",
    [
        (ops.snapshot_create("p", None), "snapshot.create", {"name": "p"}, SNAPSHOT),
        (ops.snapshot_create("p", "l"), "snapshot.create", {"name": "p", "label": "l"}, SNAPSHOT),
        (ops.snapshot_list(None), "snapshot.list", {}, [SNAPSHOT]),
        (ops.snapshot_list("p"), "snapshot.list", {"name": "p"}, [SNAPSHOT]),
        (ops.snapshot_restore("p", "snap-0123456789ab"), "snapshot.restore", {"name": "p", "id": "snap-0123456789ab"},
         PROJECT),
        (ops.snapshot_delete("snap-0123456789ab"), "snapshot.delete", {"id": "snap-0123456789ab"}, {}),
        (ops.fork("p", "q", None), "project.fork", {"from": "p", "name": "q"}, PROJECT),
        (ops.fork("p", "q", "snap-0123456789ab"), "project.fork",
         {"from": "p", "name": "q", "snapshot": "snap-0123456789ab"}, PROJECT),
        (ops.delete("p", False, False), "project.delete", {"name": "p"}, {}),
        (ops.delete("p", True, True), "project.delete", {"name": "p", "purge": True, "keep_snapshots": True},
         {"purged": True}),
    ],
)  # fmt: skip
def test_snapshot_calls(op: "ops.Op[Any]", method: str, params: Dict[str, Any], result: Any) -> None:
    call = next(op)
    assert isinstance(call, Call) and (call.method, call.params) == (method, params)
    try:
        op.send(call.parse(result, {}))
        raise AssertionError("the operation made a second call")
    except StopIteration as stop:
        value = stop.value
    if method == "snapshot.delete":
        assert value is None
    elif method == "project.delete":
        assert value == result
    elif method in ("snapshot.restore", "project.fork"):
        assert isinstance(value, berth.Project) and value.name == "q"
    else:
        snaps = value if isinstance(value, list) else [value]
        assert [type(s) for s in snaps] == [berth.Snapshot]
        s = snaps[0]
        assert (s.id, s.project, s.label, s.image, s.workspace_bytes, s.base_image) == (
            "snap-0123456789ab", "p", "l", "berth-snapshot:snap-0123456789ab", 7, "busybox:latest"
        )  # fmt: skip
        assert s.raw == SNAPSHOT


def test_socket_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_SOCKET", "/env/berth.sock")
    assert berth.Client("/given.sock").socket == "/given.sock"
    assert berth.Client().socket == "/env/berth.sock"
    assert berth.AsyncClient().socket == "/env/berth.sock"
    monkeypatch.setenv("BERTH_SOCKET", "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert berth.Client().socket == "/run/berth/berth.sock"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert berth.default_socket() == "/run/user/1000/berth/berth.sock"


def test_a_missing_socket_is_a_connection_error_naming_it(tmp_path: Any) -> None:
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(berth.BerthConnectionError) as e:
        berth.Client(path).info()
    assert e.value.kind == "connection" and e.value.socket == path and path in e.value.message
    import asyncio

    async def main() -> None:
        async with berth.AsyncClient(path) as c:
            await c.info()

    with pytest.raises(berth.BerthConnectionError) as e:
        asyncio.run(main())
    assert path in str(e.value)


def test_async_client_mirrors_client() -> None:
    def public(cls: type) -> Dict[str, Any]:
        return {n: v for n, v in vars(cls).items() if callable(v) and not n.startswith("_")}

    sync, aio = public(berth.Client), public(berth.AsyncClient)
    assert sorted(sync) == sorted(aio)
    for n in sync:
        assert inspect.iscoroutinefunction(aio[n]), n
        assert inspect.signature(sync[n]).parameters == inspect.signature(aio[n]).parameters, n
        assert aio[n].__doc__, n
    for m in [
        "info", "create", "get_or_create", "get", "list", "start", "stop", "delete", "status", "logs", "path",
        "exec", "reconcile", "archive_stale", "read_file", "write_file", "append_file", "list_files", "stat",
        "remove", "mkdir", "fs_read", "spawn", "processes", "process_output", "wait", "kill", "send_input",
        "snapshot_create", "snapshot_list", "snapshot_restore", "snapshot_delete", "fork",
    ]:  # fmt: skip
        assert m in sync, m
