"""Every client method as a sans-io operation.

An operation is a generator: it yields what it needs — a :class:`~berth._protocol.Call`
to make, a list of calls that may run concurrently, or :data:`NEED_LIMITS` for the
daemon's size limits — receives the value (results in the same order for a list), and
returns the method's value. :class:`~berth.Client` drives operations with blocking
I/O, :class:`~berth.AsyncClient` with asyncio; the params, the parsing and the file
chunking live here once.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Generator, List, Mapping, Optional, Sequence, TypeVar, Union

from ._protocol import Call, OutputCallback, bad_response, decode_data, encode_data, encode_request
from .types import (
    DaemonInfo,
    ExecResult,
    FileChunk,
    FileEntry,
    Process,
    ProcessOutput,
    Project,
    ProjectLogs,
    ProjectStatus,
    Snapshot,
    WriteResult,
)

T = TypeVar("T")


class _NeedLimits:
    def __repr__(self) -> str:
        return "NEED_LIMITS"


#: Yielded by an operation that needs the daemon's limits; the driver sends back :class:`Limits`.
NEED_LIMITS = _NeedLimits()

Step = Union[Call, List[Call], _NeedLimits]
Op = Generator[Step, Any, T]

#: The daemon's defaults, for daemons whose ``daemon.info`` does not say.
DEFAULT_MAX_LINE = 1 << 20
DEFAULT_MAX_OUTPUT = 16 << 20
#: How many pieces of one file an AsyncClient writes at once.
WRITE_WINDOW = 4
#: Room left in a line for what the size estimate does not count.
LINE_SLACK = 256

Command = Union[str, Sequence[str]]
Duration = Union[int, float, str]
Data = Union[bytes, bytearray, memoryview, str]


@dataclass(frozen=True)
class Limits:
    """The daemon's size limits, from ``daemon.info``."""

    max_line: int
    max_output: int


# --- where the socket is ---------------------------------------------------------------


def default_socket() -> str:
    """The socket path ``berth`` uses without ``--socket``: ``$BERTH_SOCKET``, else
    ``/run/berth/berth.sock`` as root, else ``$XDG_RUNTIME_DIR/berth/berth.sock``
    (``$TMPDIR/berth-<uid>/berth/berth.sock`` without ``XDG_RUNTIME_DIR``)."""
    env = os.environ.get("BERTH_SOCKET")
    if env:
        return env
    if os.geteuid() == 0:
        return "/run/berth/berth.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        runtime = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"berth-{os.getuid()}")
    return os.path.join(runtime, "berth", "berth.sock")


def resolve_socket(socket: "Optional[Union[str, os.PathLike[str]]]" = None) -> str:
    """``socket`` if given, else :func:`default_socket`."""
    if socket is not None:
        path = os.fspath(socket)
        if path:
            return path
    return default_socket()


# --- params ----------------------------------------------------------------------------


def duration(value: Duration, what: str = "timeout") -> str:
    """A duration as the daemon takes it: strings pass as they are (``"30s"``, ``"10m"``);
    seconds (int or float) become ``"30s"``, ``"1500ms"`` or ``"250us"``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be seconds (int or float) or a duration string such as '30s', not {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what} must be finite, not {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, not {value!r}")
    if isinstance(value, int):
        return f"{value}s"
    micros = round(value * 1_000_000)
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}us"


def command_argv(command: Command) -> List[str]:
    """A list of arguments as it is, a string as ``["/bin/sh", "-c", command]``."""
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    if isinstance(command, (bytes, bytearray)):
        raise TypeError("command must be a str or a list of str, not bytes")
    argv = list(command)
    for a in argv:
        if not isinstance(a, str):
            raise TypeError(f"command arguments must be str, not {type(a).__name__}: {a!r}")
    return argv


def to_bytes(data: Data) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


def _env(env: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
    """The env as given (the daemon names any value that is not a string)."""
    return None if env is None else dict(env)


def _ports(ports: Optional[Mapping[Any, Any]]) -> Optional[Dict[str, str]]:
    """Ports as strings: ``{8080: 18080}`` is ``{"8080": "18080"}``."""
    return None if ports is None else {str(k): str(v) for k, v in ports.items()}


def _put(params: Dict[str, Any], **kv: Any) -> Dict[str, Any]:
    """``params`` with every ``kv`` that is not ``None``."""
    for k, v in kv.items():
        if v is not None:
            params[k] = v
    return params


# --- results ---------------------------------------------------------------------------


def _dict(r: Any, what: str) -> Dict[str, Any]:
    if not isinstance(r, dict):
        raise bad_response(f"{what} is not an object: {r!r:.200}")
    return r


def _list(r: Any, what: str) -> List[Any]:
    if not isinstance(r, list):
        raise bad_response(f"{what} is not a list: {r!r:.200}")
    return r


def parse_info(r: Any) -> DaemonInfo:
    r = _dict(r, "daemon.info result")
    return DaemonInfo(
        version=r.get("version", ""),
        runtime=r.get("runtime", ""),
        docker=r.get("docker") or {},
        projects=r.get("projects", 0),
        max_line=r.get("max_line"),
        max_output=r.get("max_output"),
        local_enabled=r.get("local_enabled"),
        raw=r,
    )


def parse_project(r: Any) -> Project:
    r = _dict(r, "project")
    return Project(
        name=r["name"],
        description=r.get("description", ""),
        image=r.get("image", ""),
        created=r.get("created", ""),
        last_used=r.get("last_used", ""),
        status=r.get("status", ""),
        env=r.get("env") or {},
        ports=r.get("ports") or {},
        path=r.get("path", ""),
        limits=r.get("limits"),
        raw=r,
    )


def parse_status(r: Any) -> ProjectStatus:
    r = _dict(r, "project.status result")
    return ProjectStatus(
        container_id=r.get("container_id"),
        running=bool(r.get("running")),
        image=r.get("image"),
        created=r.get("created"),
        agent=r.get("agent"),
        raw=r,
    )


def parse_exec(r: Any, streamed: Dict[str, bytes]) -> ExecResult:
    r = _dict(r, "project.exec result")
    stdout = streamed.get("stdout", b"") + decode_data(r.get("stdout"), r.get("stdout_encoding"), "stdout")
    stderr = streamed.get("stderr", b"") + decode_data(r.get("stderr"), r.get("stderr_encoding"), "stderr")
    return ExecResult(
        exit_code=r["exit_code"],
        stdout=stdout,
        stderr=stderr,
        timed_out=bool(r.get("timed_out")),
        truncated=bool(r.get("truncated")),
        duration_ms=r.get("duration_ms", 0),
        runtime=r.get("runtime", ""),
        path=r.get("path"),
        exec_error=r.get("exec_error"),
        raw=r,
    )


def parse_entry(r: Any) -> FileEntry:
    r = _dict(r, "file entry")
    return FileEntry(
        name=r["name"],
        path=r["path"],
        type=r["type"],
        size=r.get("size", 0),
        mode=r.get("mode", ""),
        mtime=r.get("mtime", ""),
        target=r.get("target"),
        raw=r,
    )


def parse_chunk(r: Any) -> FileChunk:
    r = _dict(r, "fs.read result")
    return FileChunk(
        path=r.get("path", ""),
        size=r["size"],
        data=decode_data(r.get("data"), r.get("encoding"), "fs.read data"),
        eof=bool(r["eof"]),
        raw=r,
    )


def parse_write(r: Any) -> WriteResult:
    r = _dict(r, "fs.write result")
    return WriteResult(path=r.get("path", ""), size=r["size"], raw=r)


def parse_process(r: Any) -> Process:
    r = _dict(r, "process")
    return Process(
        id=r["id"],
        project=r.get("project", ""),
        command=list(r.get("command") or []),
        running=bool(r.get("running")),
        exit_code=r.get("exit_code"),
        started=r.get("started"),
        ended=r.get("ended"),
        pid=r.get("pid"),
        signal=r.get("signal"),
        raw=r,
    )


def parse_process_output(r: Any, streamed: Dict[str, bytes]) -> ProcessOutput:
    r = _dict(r, "process.output result")
    stdout = streamed.get("stdout", b"") + decode_data(r.get("stdout"), r.get("stdout_encoding"), "stdout")
    stderr = streamed.get("stderr", b"") + decode_data(r.get("stderr"), r.get("stderr_encoding"), "stderr")
    return ProcessOutput(
        stdout=stdout,
        stderr=stderr,
        stdout_offset=r["stdout_offset"],
        stderr_offset=r["stderr_offset"],
        dropped=r.get("dropped", 0),
        running=bool(r.get("running")),
        exit_code=r.get("exit_code"),
        raw=r,
    )


def parse_snapshot(r: Any) -> Snapshot:
    r = _dict(r, "snapshot")
    return Snapshot(
        id=r["id"],
        project=r.get("project", ""),
        label=r.get("label", ""),
        created=r.get("created", ""),
        image=r.get("image", ""),
        workspace_bytes=r.get("workspace_bytes", 0),
        base_image=r.get("base_image"),
        raw=r,
    )


def parse_limits(r: Any) -> Limits:
    r = _dict(r, "daemon.info result")
    max_line = r.get("max_line")
    max_output = r.get("max_output")
    return Limits(
        max_line=max_line if isinstance(max_line, int) and max_line > 0 else DEFAULT_MAX_LINE,
        max_output=max_output if isinstance(max_output, int) and max_output > 0 else DEFAULT_MAX_OUTPUT,
    )


def _call(method: str, params: Dict[str, Any], parse: Any = None) -> Call:
    """A call whose result goes through ``parse(result)`` (or comes back as it is)."""
    if parse is None:
        return Call(method, params)
    return Call(method, params, lambda r, _s: parse(r))


def limits_call() -> Call:
    """The call a driver makes to answer :data:`NEED_LIMITS`."""
    return _call("daemon.info", {}, parse_limits)


# --- operations ------------------------------------------------------------------------


def raw(method: str, params: Optional[Dict[str, Any]] = None) -> Op[Any]:
    return (yield _call(method, dict(params or {})))


def info() -> Op[DaemonInfo]:
    return (yield _call("daemon.info", {}, parse_info))


def create(
    name: str,
    image: Optional[str],
    *,
    description: Optional[str],
    env: Optional[Mapping[str, str]],
    ports: Optional[Mapping[Any, Any]],
    profile: Optional[str],
    network: Optional[str],
    memory: Optional[Union[str, int]],
    pids_limit: Optional[int],
    cpus: Optional[float],
    or_get: bool,
) -> Op[Project]:
    params = _put(
        {"name": name},
        image=image,
        description=description,
        env=_env(env),
        ports=_ports(ports),
        profile=profile,
        network=network,
        memory=str(memory) if memory is not None else None,
        pids_limit=pids_limit,
        cpus=cpus,
    )
    method = "project.get_or_create" if or_get else "project.create"
    return (yield _call(method, params, parse_project))


def by_name(method: str, name: str) -> Op[Project]:
    return (yield _call(method, {"name": name}, parse_project))


def list_projects() -> Op[List[Project]]:
    return (yield _call("project.list", {}, lambda r: [parse_project(p) for p in _list(r, "project.list result")]))


def delete(name: str, purge: bool, keep_snapshots: bool) -> Op[Dict[str, Any]]:
    params: Dict[str, Any] = {"name": name}
    if purge:
        params["purge"] = True
    if keep_snapshots:
        params["keep_snapshots"] = True
    return (yield _call("project.delete", params, lambda r: _dict(r, "project.delete result")))


def status(name: str) -> Op[ProjectStatus]:
    return (yield _call("project.status", {"name": name}, parse_status))


def logs(name: str, tail: Optional[int]) -> Op[ProjectLogs]:
    def parse(r: Any) -> ProjectLogs:
        r = _dict(r, "project.logs result")
        return ProjectLogs(logs=r.get("logs", ""), activity=list(r.get("activity") or []), raw=r)

    return (yield _call("project.logs", _put({"name": name}, tail=tail), parse))


def path(name: str) -> Op[str]:
    return (yield _call("project.path", {"name": name}, lambda r: _dict(r, "project.path result")["path"]))


def exec_(
    name: str,
    command: Command,
    *,
    workdir: Optional[str],
    env: Optional[Mapping[str, str]],
    timeout: Optional[Duration],
    stdin: Optional[Data],
    on_output: Optional[OutputCallback],
    local: bool,
    tool: Optional[str],
) -> Op[ExecResult]:
    params = _put(
        {"name": name, "command": command_argv(command)},
        workdir=workdir,
        env=_env(env),
        timeout=duration(timeout) if timeout is not None else None,
        tool=tool,
    )
    if isinstance(stdin, str):
        params["stdin"] = stdin
    elif stdin is not None:
        params.update(stdin_base64=encode_data_b64(to_bytes(stdin)))
    if local:
        params["local"] = True
    if on_output is not None:
        params["stream"] = True
    return (yield Call("project.exec", params, parse_exec, on_output=on_output, collect=True))


def encode_data_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reconcile() -> Op[List[Dict[str, Any]]]:
    return (
        yield _call("janitor.reconcile", {}, lambda r: list(_dict(r, "janitor.reconcile result").get("changed") or []))
    )


def archive_stale() -> Op[List[str]]:
    return (
        yield _call(
            "janitor.archive_stale", {}, lambda r: list(_dict(r, "janitor.archive_stale result").get("archived") or [])
        )
    )


# --- snapshots -------------------------------------------------------------------------


def snapshot_create(name: str, label: Optional[str]) -> Op[Snapshot]:
    return (yield _call("snapshot.create", _put({"name": name}, label=label), parse_snapshot))


def snapshot_list(name: Optional[str]) -> Op[List[Snapshot]]:
    return (
        yield _call(
            "snapshot.list", _put({}, name=name), lambda r: [parse_snapshot(s) for s in _list(r, "snapshot.list")]
        )
    )


def snapshot_restore(name: str, id: str) -> Op[Project]:
    return (yield _call("snapshot.restore", {"name": name, "id": id}, parse_project))


def snapshot_delete(id: str) -> Op[None]:
    yield _call("snapshot.delete", {"id": id})
    return None


def fork(from_project: str, name: str, snapshot: Optional[str]) -> Op[Project]:
    params = _put({"from": from_project, "name": name}, snapshot=snapshot)
    return (yield _call("project.fork", params, parse_project))


# --- files -----------------------------------------------------------------------------


def fs_read(name: str, path: str, offset: int, limit: Optional[int]) -> Op[FileChunk]:
    params: Dict[str, Any] = {"name": name, "path": path}
    if offset:
        params["offset"] = offset
    return (yield _call("fs.read", _put(params, limit=limit), parse_chunk))


def read_file(name: str, path: str) -> Op[bytes]:
    """The whole file, in pieces of at most the daemon's ``max_output``."""
    limits: Limits = yield NEED_LIMITS
    out = bytearray()
    offset = 0
    while True:
        chunk: FileChunk = yield from fs_read(name, path, offset, limits.max_output)
        out += chunk.data
        offset += len(chunk.data)
        if chunk.eof or not chunk.data:
            return bytes(out)


def piece_size(max_line: int, params: Dict[str, Any]) -> int:
    """How many bytes of data fit in one ``fs.write`` line of ``params`` under ``max_line``,
    counting the data as base64 (the longest it travels as)."""
    line = encode_request(2**53, "fs.write", dict(params, data="", encoding="base64"))
    room = max_line - len(line) - LINE_SLACK
    return max(3, room // 4 * 3)


def write_file(
    name: str,
    path: str,
    data: Data,
    *,
    mode: Optional[Union[str, int]],
    mkdirs: bool,
    append: bool,
    window: int = 1,
) -> Op[WriteResult]:
    """Writes ``data`` in pieces that fit the daemon's ``max_line``: the first piece
    replaces (or appends to) the file, the rest go at their offsets, ``window`` at a time
    (appends go one after another)."""
    body = to_bytes(data)
    limits: Limits = yield NEED_LIMITS
    base: Dict[str, Any] = {"name": name, "path": path}
    if isinstance(mode, int) and not isinstance(mode, bool):
        mode = format(mode, "04o")
    first = dict(base)
    _put(first, mode=mode)
    if mkdirs:
        first["mkdirs"] = True
    if append:
        first["append"] = True
    size = piece_size(limits.max_line, dict(first, offset=len(body), append=True))
    result: WriteResult = yield _call("fs.write", dict(first, **encode_data(body[:size])), parse_write)
    rest = list(range(size, len(body), size))
    if not rest:
        return result
    if append:
        for start in rest:
            piece = encode_data(body[start : start + size])
            result = yield _call("fs.write", dict(base, append=True, **piece), parse_write)
        return result
    window = max(1, window)
    for i in range(0, len(rest), window):
        batch = [
            _call("fs.write", dict(base, offset=start, **encode_data(body[start : start + size])), parse_write)
            for start in rest[i : i + window]
        ]
        results: List[WriteResult] = yield batch
        result = max([result] + results, key=lambda w: w.size)
    return result


def list_files(name: str, path: str) -> Op[List[FileEntry]]:
    return (
        yield _call("fs.list", {"name": name, "path": path}, lambda r: [parse_entry(e) for e in _list(r, "fs.list")])
    )


def stat(name: str, path: str) -> Op[FileEntry]:
    return (yield _call("fs.stat", {"name": name, "path": path}, parse_entry))


def remove(name: str, path: str, recursive: bool) -> Op[None]:
    params: Dict[str, Any] = {"name": name, "path": path}
    if recursive:
        params["recursive"] = True
    yield _call("fs.remove", params)
    return None


def mkdir(name: str, path: str, parents: bool, mode: Optional[Union[str, int]]) -> Op[None]:
    params: Dict[str, Any] = {"name": name, "path": path}
    if parents:
        params["parents"] = True
    if isinstance(mode, int) and not isinstance(mode, bool):
        mode = format(mode, "04o")
    yield _call("fs.mkdir", _put(params, mode=mode))
    return None


# --- background processes --------------------------------------------------------------


def spawn(
    name: str, command: Command, *, workdir: Optional[str], env: Optional[Mapping[str, str]], stdin: bool
) -> Op[Process]:
    params = _put({"name": name, "command": command_argv(command)}, workdir=workdir, env=_env(env))
    if stdin:
        params["stdin"] = True
    return (yield _call("process.spawn", params, parse_process))


def processes(name: str) -> Op[List[Process]]:
    return (yield _call("process.list", {"name": name}, lambda r: [parse_process(p) for p in _list(r, "process.list")]))


def process_output(
    name: str,
    id: int,
    *,
    stdout_offset: int,
    stderr_offset: int,
    follow: bool,
    on_output: Optional[OutputCallback],
    limit: Optional[int],
) -> Op[ProcessOutput]:
    params: Dict[str, Any] = {"name": name, "id": id}
    if stdout_offset:
        params["stdout_offset"] = stdout_offset
    if stderr_offset:
        params["stderr_offset"] = stderr_offset
    if follow:
        params["follow"] = True
    _put(params, limit=limit)
    # Followed output is collected into the result unless a callback takes it (a
    # followed process may run for long and say much).
    collect = follow and on_output is None
    return (yield Call("process.output", params, parse_process_output, on_output=on_output, collect=collect))


def wait(name: str, id: int, timeout: Optional[Duration]) -> Op[Process]:
    params = _put({"name": name, "id": id}, timeout=duration(timeout) if timeout is not None else None)
    return (yield _call("process.wait", params, parse_process))


def kill(name: str, id: int, signal: Union[str, int], grace: Optional[Duration]) -> Op[Process]:
    params = _put(
        {"name": name, "id": id, "signal": signal}, grace=duration(grace, "grace") if grace is not None else None
    )
    return (yield _call("process.kill", params, parse_process))


def send_input(name: str, id: int, data: Optional[Data], close: bool) -> Op[None]:
    """Writes ``data`` in order, in pieces that fit ``max_line``; closes stdin after the last."""
    body = to_bytes(data) if data is not None else b""
    base: Dict[str, Any] = {"name": name, "id": id}
    size = len(body) or 1
    if body:
        limits: Limits = yield NEED_LIMITS
        line = encode_request(2**53, "process.input", dict(base, data="", encoding="base64", close=True))
        size = max(3, (limits.max_line - len(line) - LINE_SLACK) // 4 * 3)
    starts = list(range(0, len(body), size)) or [0]
    for i, start in enumerate(starts):
        params = dict(base)
        if body:
            params.update(encode_data(body[start : start + size]))
        if close and i == len(starts) - 1:
            params["close"] = True
        yield _call("process.input", params)
    return None
