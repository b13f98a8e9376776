"""The asyncio client: :class:`AsyncClient` mirrors :class:`~berth.Client` method for method."""

from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any, Dict, List, Mapping, Optional, TypeVar, Union

from . import _ops as ops
from ._ops import Command, Data, Duration, Limits
from ._protocol import Call, Connection, Done, Event, Output, OutputCallback
from .client import Client, connect_error, lost_error
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

__all__ = ["AsyncClient"]

_RECV = 1 << 16

SocketPath = Union[str, "os.PathLike[str]"]


class _Conn:
    """One open connection: its streams, protocol state, reader task and the queue of
    each call in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.proto = Connection()
        self.queues: Dict[int, "asyncio.Queue[Event]"] = {}
        self.write_lock = asyncio.Lock()
        self.closed = False
        self.limits: Optional[Limits] = None
        self.task: "Optional[asyncio.Task[None]]" = None


class AsyncClient:
    """An asyncio client of berthd; every method of :class:`~berth.Client` is here as a
    coroutine, with the same parameters and results.

    One connection carries every call: several calls may be in flight at once (from
    several tasks, or ``asyncio.gather``); responses are matched to calls by id and
    streamed output goes to the call it belongs to. The connection is opened on the
    first call and again when the daemon has closed it. Use ``async with
    AsyncClient() as c``, or ``await c.close()``; use a client within one event loop.

    ``on_output`` callbacks may be plain functions or coroutine functions; they run in
    the calling task, in order. If a callback raises, or the calling task is cancelled,
    the call ends there, but the daemon finishes the command (the connection is shared
    with other calls, so it stays open).

    ``max_in_flight`` bounds the calls on the connection at once (berthd serves at least
    64 per connection and answers ``busy`` beyond its limit); further calls wait their
    turn in the client.

    ``timeout`` (seconds; default none) bounds how long a call waits for the daemon to
    send it anything; past it the call raises :class:`~berth.Timeout` (the connection
    stays open for the other calls). ``asyncio.wait_for`` bounds a call as a whole.
    """

    def __init__(
        self, socket: Optional[SocketPath] = None, *, timeout: Optional[float] = None, max_in_flight: int = 64
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        #: The socket path this client connects to (resolved as :class:`~berth.Client` does).
        self.socket: str = ops.resolve_socket(socket)
        self.max_in_flight = max_in_flight
        #: Seconds a call waits for the daemon to send it anything (``None``: no limit).
        self.timeout: Optional[float] = timeout
        self._conn: Optional[_Conn] = None
        self._connect_lock: Optional[asyncio.Lock] = None
        self._lock_loop: Optional[asyncio.AbstractEventLoop] = None
        self._slots: Optional[asyncio.Semaphore] = None

    # --- connection ----------------------------------------------------------------

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<berth.AsyncClient socket={self.socket!r} connected={self._conn is not None}>"

    async def close(self) -> None:
        """Closes the connection; calls still in flight fail with
        :class:`~berth.BerthConnectionError` and the daemon stops their execs."""
        c, self._conn = self._conn, None
        if c is None or c.loop is not asyncio.get_running_loop():
            return
        c.closed = True
        if c.task is not None:
            c.task.cancel()
            try:
                await c.task
            except BaseException:
                pass
        c.writer.close()
        try:
            await c.writer.wait_closed()
        except (OSError, asyncio.CancelledError):
            pass

    async def _ready(self) -> _Conn:
        loop = asyncio.get_running_loop()
        c = self._conn
        if c is not None and not c.closed and c.loop is loop:
            return c
        self._for_loop(loop)
        assert self._connect_lock is not None
        async with self._connect_lock:
            c = self._conn
            if c is not None and not c.closed and c.loop is loop:
                return c
            if c is not None and c.loop is loop:
                c.writer.close()
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.socket), self.timeout)
            except asyncio.TimeoutError as e:
                raise BerthConnectionError(
                    f"cannot connect to berthd at {self.socket}: no answer within {self.timeout} s",
                    socket=self.socket,
                ) from e
            except OSError as e:
                raise connect_error(self.socket, e) from e
            c = _Conn(reader, writer)
            c.task = loop.create_task(self._read(c))
            self._conn = c
            return c

    def _for_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Makes the client's lock and semaphore for the running loop (asyncio's
        primitives belong to one loop)."""
        if self._connect_lock is None or self._slots is None or self._lock_loop is not loop:
            self._connect_lock, self._slots = asyncio.Lock(), asyncio.Semaphore(self.max_in_flight)
            self._lock_loop = loop

    async def _read(self, c: _Conn) -> None:
        """Reads the connection until it ends, handing each event to its call."""
        cause: Optional[BaseException] = None
        try:
            while not c.proto.broken:
                data = await c.reader.read(_RECV)
                if not data:
                    break
                for ev in c.proto.receive(data):
                    self._deliver(c, ev)
        except asyncio.CancelledError:
            pass
        except Exception as e:  # a reset connection, above all
            cause = e
        finally:
            c.closed = True
            for done in c.proto.lost(lambda: lost_error(self.socket, cause)):
                self._deliver(c, done)
            c.writer.close()

    @staticmethod
    def _deliver(c: _Conn, ev: Event) -> None:
        q = c.queues.get(ev.id)
        if q is not None:
            q.put_nowait(ev)

    # --- calls ---------------------------------------------------------------------

    async def _run(self, call: Call) -> Any:
        self._for_loop(asyncio.get_running_loop())
        assert self._slots is not None
        async with self._slots:
            return await self._run_on(await self._ready(), call)

    async def _run_on(self, c: _Conn, call: Call) -> Any:
        # No await between the check in _ready and here: a connection that dies from
        # now on fails this call through the reader's `lost`.
        id, line = c.proto.send(call)
        q: "asyncio.Queue[Event]" = asyncio.Queue()
        c.queues[id] = q
        try:
            try:
                async with c.write_lock:
                    c.writer.write(line)
                    await c.writer.drain()
            except (OSError, RuntimeError):
                # The transport is gone; the reader sees it end and fails the call (with
                # the daemon's own error if it answered first, such as too_large).
                pass
            while True:
                try:
                    ev = await asyncio.wait_for(q.get(), self.timeout)
                except asyncio.TimeoutError:
                    raise Timeout(
                        f"berthd at {self.socket} sent nothing for {self.timeout} s (the client's timeout)",
                        kind="timeout",
                    ) from None
                if isinstance(ev, Output):
                    if call.on_output is not None:
                        r = call.on_output(ev.stream, ev.data)
                        if inspect.isawaitable(r):
                            await r
                    continue
                assert isinstance(ev, Done)
                if ev.error is not None:
                    raise ev.error
                return ev.value
        finally:
            c.queues.pop(id, None)
            c.proto.forget(id)

    async def _limits(self) -> Limits:
        c = await self._ready()
        if c.limits is None:
            c.limits = await self._run(ops.limits_call())
        return c.limits

    async def _drive(self, op: "ops.Op[T]") -> T:
        try:
            step = next(op)
            while True:
                if isinstance(step, list):
                    results = await asyncio.gather(*(self._run(c) for c in step), return_exceptions=True)
                    for r in results:
                        if isinstance(r, BaseException):
                            raise r
                    value: Any = results
                elif isinstance(step, Call):
                    value = await self._run(step)
                else:  # NEED_LIMITS
                    value = await self._limits()
                step = op.send(value)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        finally:
            op.close()

    async def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Any:
        return await self._drive(ops.raw(method, params))

    # --- daemon and projects -------------------------------------------------------

    async def info(self) -> DaemonInfo:
        return await self._drive(ops.info())

    async def create(
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
        return await self._drive(
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

    async def get_or_create(
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
        return await self._drive(
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

    async def get(self, name: str) -> Project:
        return await self._drive(ops.by_name("project.get", name))

    async def list(self) -> List[Project]:
        return await self._drive(ops.list_projects())

    async def start(self, name: str) -> Project:
        return await self._drive(ops.by_name("project.start", name))

    async def stop(self, name: str) -> Project:
        return await self._drive(ops.by_name("project.stop", name))

    async def delete(self, name: str, purge: bool = False, keep_snapshots: bool = False) -> Dict[str, Any]:
        return await self._drive(ops.delete(name, purge, keep_snapshots))

    async def status(self, name: str) -> ProjectStatus:
        return await self._drive(ops.status(name))

    async def logs(self, name: str, tail: Optional[int] = None) -> ProjectLogs:
        return await self._drive(ops.logs(name, tail))

    async def path(self, name: str) -> str:
        return await self._drive(ops.path(name))

    async def exec(
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
        """``project.exec``: as :meth:`Client.exec <berth.Client.exec>`, awaited.

        ``on_output`` may be a plain function or a coroutine function. If it raises, or
        the awaiting task is cancelled, the call ends with that, while the daemon runs
        the command to its end (the connection is shared, so it stays open)."""
        return await self._drive(
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

    async def reconcile(self) -> List[Dict[str, Any]]:
        return await self._drive(ops.reconcile())

    async def archive_stale(self) -> List[str]:
        return await self._drive(ops.archive_stale())

    # --- snapshots -----------------------------------------------------------------

    async def snapshot_create(self, name: str, label: Optional[str] = None) -> Snapshot:
        return await self._drive(ops.snapshot_create(name, label))

    async def snapshot_list(self, name: Optional[str] = None) -> List[Snapshot]:
        return await self._drive(ops.snapshot_list(name))

    async def snapshot_restore(self, name: str, id: str) -> Project:
        return await self._drive(ops.snapshot_restore(name, id))

    async def snapshot_delete(self, id: str) -> None:
        return await self._drive(ops.snapshot_delete(id))

    async def fork(self, from_project: str, name: str, snapshot: Optional[str] = None) -> Project:
        return await self._drive(ops.fork(from_project, name, snapshot))

    # --- files ---------------------------------------------------------------------

    async def read_file(self, name: str, path: str) -> bytes:
        return await self._drive(ops.read_file(name, path))

    async def write_file(
        self, name: str, path: str, data: Data, *, mode: Optional[Union[str, int]] = None, mkdirs: bool = False
    ) -> WriteResult:
        return await self._drive(
            ops.write_file(name, path, data, mode=mode, mkdirs=mkdirs, append=False, window=ops.WRITE_WINDOW)
        )

    async def append_file(
        self, name: str, path: str, data: Data, *, mode: Optional[Union[str, int]] = None, mkdirs: bool = False
    ) -> WriteResult:
        return await self._drive(ops.write_file(name, path, data, mode=mode, mkdirs=mkdirs, append=True))

    async def fs_read(self, name: str, path: str, offset: int = 0, limit: Optional[int] = None) -> FileChunk:
        return await self._drive(ops.fs_read(name, path, offset, limit))

    async def list_files(self, name: str, path: str) -> List[FileEntry]:
        return await self._drive(ops.list_files(name, path))

    async def stat(self, name: str, path: str) -> FileEntry:
        return await self._drive(ops.stat(name, path))

    async def remove(self, name: str, path: str, recursive: bool = False) -> None:
        return await self._drive(ops.remove(name, path, recursive))

    async def mkdir(self, name: str, path: str, parents: bool = False, mode: Optional[Union[str, int]] = None) -> None:
        return await self._drive(ops.mkdir(name, path, parents, mode))

    # --- background processes ------------------------------------------------------

    async def spawn(
        self,
        name: str,
        command: Command,
        *,
        workdir: Optional[str] = None,
        env: Optional[Mapping[str, str]] = None,
        stdin: bool = False,
    ) -> Process:
        return await self._drive(ops.spawn(name, command, workdir=workdir, env=env, stdin=stdin))

    async def processes(self, name: str) -> List[Process]:
        return await self._drive(ops.processes(name))

    async def process_output(
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
        return await self._drive(
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

    async def wait(self, name: str, id: int, timeout: Optional[Duration] = None) -> Process:
        return await self._drive(ops.wait(name, id, timeout))

    async def kill(
        self, name: str, id: int, signal: Union[str, int] = "TERM", grace: Optional[Duration] = None
    ) -> Process:
        return await self._drive(ops.kill(name, id, signal, grace))

    async def send_input(self, name: str, id: int, data: Optional[Data] = None, close: bool = False) -> None:
        return await self._drive(ops.send_input(name, id, data, close))


def _copy_docs() -> None:
    """The methods' documentation is Client's (the behaviour is the same, awaited)."""
    for name in vars(AsyncClient):
        mine = getattr(AsyncClient, name)
        theirs = getattr(Client, name, None)
        if callable(mine) and theirs is not None and not getattr(mine, "__doc__", None):
            try:
                mine.__doc__ = theirs.__doc__
            except AttributeError:
                pass


_copy_docs()
