"""Projects and errors against a real berthd."""

from __future__ import annotations

import asyncio
import os
import select
import socket

import pytest

import berth
from conftest import Daemon


def test_info(client: berth.Client) -> None:
    info = client.info()
    assert info.runtime == "docker" and info.docker["available"] is True
    assert isinstance(info.version, str) and info.version
    assert info.max_line is not None and info.max_line > 0
    assert info.max_output == 2 << 20  # the test config's


def test_create_get_list_status_stop_start_delete(client: berth.Client, name: str) -> None:
    p = client.create(name, description="made by the Python tests", env={"GREETING": "hi"})
    assert isinstance(p, berth.Project)
    assert (p.name, p.status, p.description, p.env) == (name, "running", "made by the Python tests", {"GREETING": "hi"})
    assert p.image == "berth-test/busybox:latest"
    assert p.raw["name"] == name

    got = client.get(name)
    assert (got.name, got.created, got.path) == (name, p.created, p.path)
    assert name in [q.name for q in client.list()]
    assert client.path(name) == p.path and os.path.isdir(p.path)

    st = client.status(name)
    assert st.running is True and st.container_id and st.agent is True

    # The project's env reaches its commands.
    assert client.exec(name, "echo $GREETING").stdout == b"hi\n"
    logs = client.logs(name, tail=10)
    assert isinstance(logs.logs, str) and any("echo" in " ".join(a["command"]) for a in logs.activity)

    assert client.stop(name).status == "stopped"
    assert client.status(name).running is False
    assert client.start(name).status == "running"

    with pytest.raises(berth.AlreadyExists) as e:
        client.create(name)
    assert e.value.kind == "already_exists" and name in e.value.message
    assert client.get_or_create(name).created == p.created

    assert client.delete(name, purge=True) == {"purged": True}
    with pytest.raises(berth.NotFound):
        client.get(name)
    assert name not in [q.name for q in client.list()]


def test_create_with_ports_and_limits(client: berth.Client, name: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = client.create(name, ports={8080: port}, memory="256m", pids_limit=100, cpus=0.5, profile="strict")
    try:
        assert p.ports == {"8080/tcp": str(port)}
        assert p.limits == {"cpus": 0.5, "memory": 256 << 20, "offline": False, "pids_limit": 100, "profile": "strict"}
    finally:
        client.delete(name, purge=True)
    with pytest.raises(berth.InvalidParams) as e:
        client.create(name, network="nope")
    assert "nope" in e.value.message


def test_delete_archives_the_workspace_by_default(client: berth.Client, name: str) -> None:
    client.create(name)
    client.write_file(name, "keep.txt", "kept")
    archived = client.delete(name)["archived"]
    assert open(os.path.join(archived, "keep.txt")).read() == "kept"


def test_janitor_runs_on_demand(client: berth.Client) -> None:
    assert isinstance(client.reconcile(), list)
    assert isinstance(client.archive_stale(), list)


def test_errors_carry_kind_message_and_code(client: berth.Client, daemon: Daemon) -> None:
    with pytest.raises(berth.InvalidName) as e:
        client.get("Not A Name")
    assert (e.value.kind, e.value.code) == ("invalid_name", -32602)
    assert "Not A Name" in e.value.message and isinstance(e.value, berth.InvalidParams)

    unknown = daemon.name("never-made")
    with pytest.raises(berth.NotFound) as e:
        client.get(unknown)
    assert (e.value.kind, e.value.code) == ("not_found", -32004) and unknown in e.value.message

    # Params are checked before the project is looked up.
    with pytest.raises(berth.InvalidParams) as e:
        client.exec(unknown, ["true"], timeout="soon")
    assert e.value.kind == "invalid_params" and "soon" in e.value.message

    with pytest.raises(berth.Forbidden) as e:
        client.exec(unknown, ["true"], local=True)
    assert e.value.kind == "forbidden"

    with pytest.raises(berth.ProtocolError) as e:
        client.call("no.such.method")
    assert e.value.kind == "method_not_found" and "no.such.method" in e.value.message


def test_a_line_too_long_is_too_large_and_the_client_reconnects(client: berth.Client) -> None:
    max_line = client.info().max_line
    assert max_line is not None
    with pytest.raises(berth.TooLarge) as e:
        client.call("daemon.info", {"pad": "x" * (max_line + 1)})
    assert e.value.kind == "too_large"
    # The daemon closed that connection; the same client carries on over a new one.
    assert client.info().version
    client.close()
    assert client.info().version


def test_many_calls_on_one_connection(client: berth.Client) -> None:
    client.info()
    sock = client._sock
    for _ in range(50):
        client.info()
    assert client._sock is sock


def test_a_connection_the_daemon_closed_when_idle_is_opened_again(idle_daemon: Daemon) -> None:
    with berth.Client(idle_daemon.socket, timeout=60) as c:
        c.info()
        sock = c._sock
        assert sock is not None
        # Wait for the daemon's close itself: the socket turns readable at end of file.
        readable, _, _ = select.select([sock], [], [], 30)
        assert readable and sock.recv(1, socket.MSG_PEEK) == b""
        assert c.info().version
        assert c._sock is not sock

    async def main() -> None:
        async with berth.AsyncClient(idle_daemon.socket, timeout=60) as a:
            await a.info()
            conn = a._conn
            assert conn is not None and conn.task is not None
            await asyncio.wait_for(asyncio.shield(conn.task), 30)  # the reader saw the close
            assert conn.closed
            assert (await a.info()).version
            assert a._conn is not conn

    asyncio.run(main())
