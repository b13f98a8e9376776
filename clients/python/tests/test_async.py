"""AsyncClient against a real berthd: many calls in flight on one connection."""

from __future__ import annotations

import asyncio
import os
from typing import Dict, List

import pytest

import berth
from conftest import Daemon


def test_async_basics(daemon: Daemon, project: str) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket) as c:
            info = await c.info()
            assert info.runtime == "docker"
            assert (await c.get(project)).name == project
            r = await c.exec(project, "echo hi; exit 2")
            assert (r.exit_code, r.stdout) == (2, b"hi\n")
            with pytest.raises(berth.InvalidName):
                await c.get("NOT VALID")
            with pytest.raises(berth.NotFound):
                await c.get(daemon.name("absent"))

    asyncio.run(main())


def test_concurrent_execs_share_one_connection(daemon: Daemon, project: str) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket) as c:
            assert (await c.exec(project, "rm -f /tmp/async-fifo; mkfifo /tmp/async-fifo")).ok
            conn = c._conn
            # The reader blocks until the writer runs: both must be in flight together.
            reader, writer = await asyncio.gather(
                c.exec(project, ["cat", "/tmp/async-fifo"], timeout=20),
                c.exec(project, "echo through-the-fifo > /tmp/async-fifo", timeout=20),
            )
            assert reader.ok and not reader.timed_out, reader
            assert reader.stdout == b"through-the-fifo\n" and writer.ok
            assert c._conn is conn

            # Streamed output goes to the call it belongs to.
            seen: Dict[int, List[bytes]] = {i: [] for i in range(8)}

            def collector(i: int):  # type: ignore[no-untyped-def]
                async def on_output(stream: str, data: bytes) -> None:
                    seen[i].append(data)

                return on_output

            results = await asyncio.gather(
                *(
                    c.exec(
                        project, f"for n in 1 2 3; do echo call{i}-$n; done; echo err{i} >&2", on_output=collector(i)
                    )
                    for i in range(8)
                ),
                c.get(daemon.name("absent")),
                return_exceptions=True,
            )
            assert isinstance(results[-1], berth.NotFound)
            for i, r in enumerate(results[:-1]):
                assert isinstance(r, berth.ExecResult) and r.ok
                want = "".join(f"call{i}-{n}\n" for n in (1, 2, 3)).encode()
                assert r.stdout == want and r.stderr == f"err{i}\n".encode()
                assert sorted(b"".join(seen[i]).splitlines()) == sorted((want + r.stderr).splitlines())
            assert c._conn is conn

    asyncio.run(main())


def test_async_files_and_processes(daemon: Daemon, project: str) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket) as c:
            data = os.urandom(3 << 20)
            w = await c.write_file(project, "async/blob", data, mkdirs=True)
            assert w.size == len(data)
            back, listing = await asyncio.gather(c.read_file(project, "async/blob"), c.list_files(project, "async"))
            assert back == data and [e.name for e in listing] == ["blob"]

            p = await c.spawn(project, "echo started; exec sleep 1000")
            chunks: List[bytes] = []

            async def on_output(stream: str, data: bytes) -> None:
                chunks.append(data)
                if b"started" in data:
                    # Another call on the same connection while the follow is in flight.
                    await c.kill(project, p.id)

            out = await c.process_output(project, p.id, follow=True, on_output=on_output)
            assert out.exit_code == 143 and b"".join(chunks) == b"started\n"

    asyncio.run(main())


def test_async_reconnects_after_the_daemon_closed_the_connection(daemon: Daemon) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket) as c:
            info = await c.info()
            assert info.max_line is not None
            with pytest.raises(berth.TooLarge):
                await c.call("daemon.info", {"pad": "x" * (info.max_line + 1)})
            assert (await c.info()).version == info.version

    asyncio.run(main())


def test_more_calls_than_the_daemon_takes_in_flight_wait_their_turn(daemon: Daemon, project: str) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket) as c:
            results = await asyncio.gather(*(c.exec(project, ["echo", str(i)]) for i in range(150)))
            assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(150)]

    asyncio.run(main())


def test_async_client_timeout_leaves_the_connection_to_the_other_calls(daemon: Daemon, project: str) -> None:
    async def main() -> None:
        async with berth.AsyncClient(daemon.socket, timeout=0.3) as c:
            slow, fast = await asyncio.gather(
                c.exec(project, ["sleep", "30"]), c.exec(project, "echo quick"), return_exceptions=True
            )
            assert isinstance(slow, berth.Timeout) and slow.kind == "timeout"
            assert isinstance(fast, berth.ExecResult) and fast.stdout == b"quick\n"
            assert (await c.exec(project, "echo after")).stdout == b"after\n"

    asyncio.run(main())
