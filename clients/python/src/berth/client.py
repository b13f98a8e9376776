"""The blocking client."""

from __future__ import annotations

import functools
import os
import select
import socket as _socket
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple, TypeVar, Union

from . import _ops as ops
from ._ops import Command, Data, Duration, Limits
from ._protocol import Call, Connection, Done, Output, OutputCallback
from .errors import BerthConnectionError, Timeout
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

__all__ = ["Client"]

_RECV = 1 << 16

SocketPath = Union[str, "os.PathLike[str]"]


def connect_error(path: str, e: OSError) -> BerthConnectionError:
    """The error for a failed connect to ``path``, saying what to check."""
    if isinstance(e, FileNotFoundError):
        why = "no such socket (is berthd running? pass socket= or set BERTH_SOCKET)"
    elif isinstance(e, PermissionError):
        why = "permission denied (the socket's owner, group and mode decide who may connect)"
    elif isinstance(e, ConnectionRefusedError):
        why = "connection refused (nothing listens there: is berthd running?)"
    else:
        why = e.strerror or str(e)
    return BerthConnectionError(f"cannot connect to berthd at {path}: {why}", socket=path)


def lost_error(path: str, cause: Optional[BaseException] = None) -> BerthConnectionError:
    detail = f" ({cause})" if cause is not None else ""
    return BerthConnectionError(
        f"the connection to berthd at {path} closed before the answer came{detail}", socket=path
    )


class Client:
    """A blocking client of berthd.

    ``socket`` is the daemon's socket path; without it, the client resolves it as the
    ``berth`` command does: ``$BERTH_SOCKET``, else ``/run/berth/berth.sock`` as root,
    else ``$XDG_RUNTIME_DIR/berth/berth.sock``. (The daemon's own config file is not
    read: pass ``socket=`` or set ``BERTH_SOCKET`` when berthd listens elsewhere.)

    One client keeps one connection, opened on the first call and opened again when
    the daemon has closed it (for instance after its idle timeout). Calls are made one
    at a time (a lock serialises threads); for calls in flight together, use
    :class:`~berth.AsyncClient` or one client per thread. Use it as a context manager,
    or call :meth:`close`.

    Errors the daemon answers raise a :class:`~berth.BerthError` subclass; a daemon
    that cannot be reached raises :class:`~berth.BerthConnectionError`.

    ``timeout`` (seconds; default none) bounds how long a call waits for the daemon to
    send anything — a reply or streamed output. Past it the call raises
    :class:`~berth.Timeout` and the connection is closed (which stops its exec). Leave it
    unset for calls that may rightly be silent for long (``wait``, a ``follow``).
    """

    def __init__(self, socket: Optional[SocketPath] = None, *, timeout: Optional[float] = None) -> None:
        #: The socket path this client connects to.
        self.socket: str = ops.resolve_socket(socket)
        #: Seconds a call waits for the daemon to send anything (``None``: no limit).
        self.timeout: Optional[float] = timeout
        self._sock: Optional[_socket.socket] = None
        self._conn: Optional[Connection] = None
        self._limits: Optional[Limits] = None
        self._lock = threading.Lock()
        self._owner: Optional[int] = None

    # --- connection ----------------------------------------------------------------

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<berth.Client socket={self.socket!r} connected={self._sock is not None}>"

    def close(self) -> None:
        """Closes the connection (the next call opens a new one). Closing a connection
        stops the execs it is running."""
        if self._owner == threading.get_ident():
            self._reset()  # from a callback: the call in progress fails
            return
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        sock, self._sock, self._conn, self._limits = self._sock, None, None, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _connect(self) -> None:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket)
        except _socket.timeout as e:
            sock.close()
            raise BerthConnectionError(
                f"cannot connect to berthd at {self.socket}: no answer within {self.timeout} s", socket=self.socket
            ) from e
        except OSError as e:
            sock.close()
            raise connect_error(self.socket, e) from e
        self._sock, self._conn, self._limits = sock, Connection(), None

    def _stale(self, sock: _socket.socket) -> bool:
        """The daemon closed the connection while it was idle: it reads as end of file."""
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            if not poller.poll(0):
                return False
            return sock.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _ready(self) -> Tuple[_socket.socket, Connection]:
        if self._sock is not None and self._stale(self._sock):
            self._reset()
        if self._sock is None:
            self._connect()
        assert self._sock is not None and self._conn is not None
        self._sock.settimeout(self.timeout)  # as it is now, should it have changed
        return self._sock, self._conn

    # --- calls ---------------------------------------------------------------------

    def _run(self, call: Call) -> Any:
        sock, conn = self._ready()
        id, line = conn.send(call)
        try:
            done = self._exchange(sock, conn, id, line, call.on_output)
        except BaseException:
            # Abandoned mid-call (a callback raised, an interrupt): the connection's
            # state is unknown, so it goes; closing it stops the daemon's exec too.
            self._reset()
            raise
        if conn.broken:
            self._reset()
        if done.error is not None:
            raise done.error
        return done.value

    def _exchange(
        self, sock: _socket.socket, conn: Connection, id: int, line: bytes, on_output: Optional[OutputCallback]
    ) -> Done:
        cause: Optional[BaseException] = None
        try:
            sock.sendall(line)
        except _socket.timeout:
            raise self._timed_out() from None
        except OSError as e:
            # Read on: the daemon may have answered (a line too long) before closing.
            cause = e
        while True:
            try:
                data = sock.recv(_RECV)
            except _socket.timeout:
                raise self._timed_out() from None
            except OSError as e:
                cause, data = e, b""
            if data:
                events = conn.receive(data)
            else:
                conn.broken = True
                events = conn.lost(functools.partial(lost_error, self.socket, cause))
            for ev in events:
                if ev.id != id:
                    continue
                if isinstance(ev, Output):
                    if on_output is not None:
                        on_output(ev.stream, ev.data)
                    continue
                return ev
            if not data:
                return Done(id, error=lost_error(self.socket, cause))

    def _timed_out(self) -> Timeout:
        return Timeout(
            f"berthd at {self.socket} sent nothing for {self.timeout} s (the client's timeout); "
            "the connection is closed",
            kind="timeout",
        )

    def _drive(self, op: "ops.Op[T]") -> T:
        if self._owner == threading.get_ident():
            op.close()
            raise RuntimeError(
                "a berth.Client call was made from inside a callback of a call on the same client; "
                "use another Client (or AsyncClient, whose callbacks may make calls)"
            )
        with self._lock:
            self._owner = threading.get_ident()
            try:
                step = next(op)
                while True:
                    if isinstance(step, list):
                        value: Any = [self._run(c) for c in step]
                    elif isinstance(step, Call):
                        value = self._run(step)
                    else:  # NEED_LIMITS
                        if self._limits is None:
                            self._limits = self._run(ops.limits_call())
                        value = self._limits
                    step = op.send(value)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            finally:
                self._owner = None
                op.close()

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        """Makes any call and returns its result as the daemon sent it (a JSON value):
        for methods this client does not know yet. Notifications are not delivered."""
        return self._drive(ops.raw(method, params))

    # --- daemon and projects -------------------------------------------------------

    def info(self) -> DaemonInfo:
        """``daemon.info``: version, runtime, engine, project count and size limits."""
        return self._drive(ops.info())

    def create(
        self,
        name: str,
        image: Optional[str] = None,
        *,
        description: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        ports: Optional[Mapping[Any, Any]] = None,
        profile: Optional[str] = None,
        network: Optional[str] = None,
        memory: Optional[Union[str, int]] = None,
        pids_limit: Optional[int] = None,
        cpus: Optional[float] = None,
    ) -> Project:
        """``project.create``: registers the project, makes its workspace, creates and
        starts its container (``image``, else the daemon's default).

        ``ports`` maps container ports to host ports (``{8080: 18080}`` or
        ``{"53/udp": "5353"}``). ``profile`` (``"default"``/``"strict"``), ``network``
        (``"none"``/``"default"``), ``memory`` (``"512m"``), ``pids_limit`` and ``cpus``
        tighten the container's limits (never past the daemon's ceilings). Raises
        :class:`~berth.AlreadyExists` for a taken name."""
        return self._drive(
            ops.create(
                name,
                image,
                description=description,
                env=env,
                ports=ports,
                profile=profile,
                network=network,
                memory=memory,
                pids_limit=pids_limit,
                cpus=cpus,
                or_get=False,
            )
        )

    def get_or_create(
        self,
        name: str,
        image: Optional[str] = None,
        *,
        description: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        ports: Optional[Mapping[Any, Any]] = None,
        profile: Optional[str] = None,
        network: Optional[str] = None,
        memory: Optional[Union[str, int]] = None,
        pids_limit: Optional[int] = None,
        cpus: Optional[float] = None,
    ) -> Project:
        """``project.get_or_create``: as :meth:`create`, but a taken name answers the
        existing project, unchanged."""
        return self._drive(
            ops.create(
                name,
                image,
                description=description,
                env=env,
                ports=ports,
                profile=profile,
                network=network,
                memory=memory,
                pids_limit=pids_limit,
                cpus=cpus,
                or_get=True,
            )
        )

    def get(self, name: str) -> Project:
        """``project.get``: the project as the registry records it."""
        return self._drive(ops.by_name("project.get", name))

    def list(self) -> List[Project]:
        """``project.list``: every project, by name."""
        return self._drive(ops.list_projects())

    def start(self, name: str) -> Project:
        """``project.start``: starts the project's container."""
        return self._drive(ops.by_name("project.start", name))

    def stop(self, name: str) -> Project:
        """``project.stop``: stops the project's container (its background processes end)."""
        return self._drive(ops.by_name("project.stop", name))

    def delete(self, name: str, purge: bool = False, keep_snapshots: bool = False) -> Dict[str, Any]:
        """``project.delete``: removes the container and the registry entry; the
        workspace moves to the archive (``{"archived": path}``) unless ``purge``. The
        project's snapshots are deleted too, unless ``keep_snapshots`` (kept ones stay
        listed under the name and can be forked from)."""
        return self._drive(ops.delete(name, purge, keep_snapshots))

    def status(self, name: str) -> ProjectStatus:
        """``project.status``: the live container's state."""
        return self._drive(ops.status(name))

    def logs(self, name: str, tail: Optional[int] = None) -> ProjectLogs:
        """``project.logs``: the container's log (the last ``tail`` lines) and recent execs."""
        return self._drive(ops.logs(name, tail))

    def path(self, name: str) -> str:
        """``project.path``: the workspace's path on the daemon's host."""
        return self._drive(ops.path(name))

    def exec(
        self,
        name: str,
        command: Command,
        *,
        workdir: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[Duration] = None,
        stdin: Optional[Data] = None,
        on_output: Optional[OutputCallback] = None,
        local: bool = False,
        tool: Optional[str] = None,
    ) -> ExecResult:
        """``project.exec``: runs a command in the project and returns what it did.

        ``command`` is a list of arguments, or a string run by ``/bin/sh -c``.
        ``timeout`` is seconds (int or float) or a duration string (``"30s"``); past it
        the command is killed and the result has ``timed_out`` set and exit code 124 —
        a result, not an exception. ``stdin`` is bytes or str. ``on_output(stream,
        data)`` is called with each chunk of output (``stream`` ``"stdout"`` or
        ``"stderr"``, ``data`` bytes) as it arrives; the result's ``stdout``/``stderr``
        still hold all of it. If ``on_output`` raises, the call ends with that exception
        and the connection is closed, which stops the command. ``local`` and ``tool``
        route the command to the host (only where the daemon enables it)."""
        return self._drive(
            ops.exec_(
                name,
                command,
                workdir=workdir,
                env=env,
                timeout=timeout,
                stdin=stdin,
                on_output=on_output,
                local=local,
                tool=tool,
            )
        )

    def reconcile(self) -> List[Dict[str, Any]]:
        """``janitor.reconcile``: runs the reconcile now; returns what changed
        (``[{name, from, to, reason}]``)."""
        return self._drive(ops.reconcile())

    def archive_stale(self) -> List[str]:
        """``janitor.archive_stale``: archives stale projects now; returns their names."""
        return self._drive(ops.archive_stale())

    # --- snapshots -----------------------------------------------------------------

    def snapshot_create(self, name: str, label: Optional[str] = None) -> Snapshot:
        """``snapshot.create``: takes a snapshot of the project: its container (paused a
        moment) is committed as an image and its workspace copied. The daemon keeps the
        newest ``[snapshots] keep`` of a project (10 by default) and prunes the older ones.
        No room on the disk: :class:`~berth.TooLarge`."""
        return self._drive(ops.snapshot_create(name, label))

    def snapshot_list(self, name: Optional[str] = None) -> List[Snapshot]:
        """``snapshot.list``: the snapshots of project ``name`` (also one deleted with
        ``keep_snapshots``), or of every project, oldest first."""
        return self._drive(ops.snapshot_list(name))

    def snapshot_restore(self, name: str, id: str) -> Project:
        """``snapshot.restore``: puts project ``name`` back as it was at snapshot ``id``:
        its workspace, its container's files (the container is re-created from the
        snapshot's image, so its processes end) and its settings. A snapshot of another
        project is :class:`~berth.InvalidParams`; an unknown id :class:`~berth.NotFound`."""
        return self._drive(ops.snapshot_restore(name, id))

    def snapshot_delete(self, id: str) -> None:
        """``snapshot.delete``: deletes the snapshot's image and workspace copy (an image
        a project still runs on stays until that project goes)."""
        return self._drive(ops.snapshot_delete(id))

    def fork(self, from_project: str, name: str, snapshot: Optional[str] = None) -> Project:
        """``project.fork``: a new project ``name`` from ``from_project``'s current state
        (its container and workspace, captured now), or from its snapshot ``snapshot``.
        The fork takes the source's env and limits, publishes no ports, and is
        independent of the source from then on. A taken name is
        :class:`~berth.AlreadyExists`."""
        return self._drive(ops.fork(from_project, name, snapshot))

    # --- files ---------------------------------------------------------------------

    def read_file(self, name: str, path: str) -> bytes:
        """The whole file at ``path`` (absolute in the container, or relative to
        ``/workspace``), read in pieces of at most the daemon's ``max_output``."""
        return self._drive(ops.read_file(name, path))

    def write_file(
        self, name: str, path: str, data: Data, *, mode: Optional[Union[str, int]] = None, mkdirs: bool = False
    ) -> WriteResult:
        """Replaces (or creates) the file at ``path`` with ``data`` (bytes, or str as
        UTF-8). Large data goes in pieces that fit the daemon's ``max_line``: the first
        replaces the file, the rest are written at their offsets. ``mode`` (``"0755"``
        or ``0o755``) is set exactly; new files otherwise get 0644. ``mkdirs`` makes
        missing parent directories."""
        return self._drive(ops.write_file(name, path, data, mode=mode, mkdirs=mkdirs, append=False))

    def append_file(
        self, name: str, path: str, data: Data, *, mode: Optional[Union[str, int]] = None, mkdirs: bool = False
    ) -> WriteResult:
        """Adds ``data`` to the end of the file at ``path`` (creating it), in pieces
        under ``max_line``, in order."""
        return self._drive(ops.write_file(name, path, data, mode=mode, mkdirs=mkdirs, append=True))

    def fs_read(self, name: str, path: str, offset: int = 0, limit: Optional[int] = None) -> FileChunk:
        """``fs.read``: one piece of a file from ``offset``, at most ``limit`` bytes
        (default and most: the daemon's ``max_output``)."""
        return self._drive(ops.fs_read(name, path, offset, limit))

    def list_files(self, name: str, path: str) -> List[FileEntry]:
        """``fs.list``: a directory's entries, by name."""
        return self._drive(ops.list_files(name, path))

    def stat(self, name: str, path: str) -> FileEntry:
        """``fs.stat``: one entry, as ``lstat`` sees it. Missing: :class:`~berth.NotFound`."""
        return self._drive(ops.stat(name, path))

    def remove(self, name: str, path: str, recursive: bool = False) -> None:
        """``fs.remove``: removes a file, a symlink, or an empty directory (any
        directory with ``recursive``)."""
        return self._drive(ops.remove(name, path, recursive))

    def mkdir(self, name: str, path: str, parents: bool = False, mode: Optional[Union[str, int]] = None) -> None:
        """``fs.mkdir``: makes a directory (and its parents with ``parents``, where an
        existing directory is fine). Existing path: :class:`~berth.AlreadyExists`."""
        return self._drive(ops.mkdir(name, path, parents, mode))

    # --- background processes ------------------------------------------------------

    def spawn(
        self,
        name: str,
        command: Command,
        *,
        workdir: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: bool = False,
    ) -> Process:
        """``process.spawn``: starts a background process, held by the container's
        agent (it outlives this client). ``command`` as for :meth:`exec`; ``stdin=True``
        keeps its stdin open for :meth:`send_input`."""
        return self._drive(ops.spawn(name, command, workdir=workdir, env=env, stdin=stdin))

    def processes(self, name: str) -> List[Process]:
        """``process.list``: the project's background processes, oldest first."""
        return self._drive(ops.processes(name))

    def process_output(
        self,
        name: str,
        id: int,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        follow: bool = False,
        on_output: Optional[OutputCallback] = None,
        limit: Optional[int] = None,
    ) -> ProcessOutput:
        """``process.output``: a process's output from the given offsets (at most
        ``limit`` bytes per stream; the result's offsets are the ones to ask for next).

        With ``follow=True`` the call lasts until the process ends, passing output to
        ``on_output(stream, data)`` as it comes; without a callback the followed output
        is collected into the result."""
        return self._drive(
            ops.process_output(
                name,
                id,
                stdout_offset=stdout_offset,
                stderr_offset=stderr_offset,
                follow=follow,
                on_output=on_output,
                limit=limit,
            )
        )

    def wait(self, name: str, id: int, timeout: Optional[Duration] = None) -> Process:
        """``process.wait``: the process once it ended, or after ``timeout`` (seconds or
        ``"30s"``) with ``running`` still true."""
        return self._drive(ops.wait(name, id, timeout))

    def kill(self, name: str, id: int, signal: Union[str, int] = "TERM", grace: Optional[Duration] = None) -> Process:
        """``process.kill``: signals the process's whole tree; for TERM/INT/QUIT/HUP what
        is left after ``grace`` (default 5 s) is killed. Answers once it ended."""
        return self._drive(ops.kill(name, id, signal, grace))

    def send_input(self, name: str, id: int, data: Optional[Data] = None, close: bool = False) -> None:
        """``process.input``: writes ``data`` to the stdin of a process spawned with
        ``stdin=True``; ``close`` then closes it."""
        return self._drive(ops.send_input(name, id, data, close))


def _method_names() -> List[str]:
    """The public methods a client has (AsyncClient mirrors them)."""
    return sorted(n for n, v in vars(Client).items() if callable(v) and not n.startswith("_"))
