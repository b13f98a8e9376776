"""Snapshots, restore and fork against a real berthd on the real engine."""

from __future__ import annotations

import asyncio
from typing import List

import pytest

import berth
from conftest import IMAGE, Daemon

UNKNOWN = "snap-000000000000"


def test_snapshot_restore_round_trip(client: berth.Client, name: str, cleanup: List[str]) -> None:
    cleanup.append(name)
    client.create(name, env={"STAGE": "one"})
    client.write_file(name, "w.txt", "before\n")
    client.write_file(name, "/root/r.txt", "outside the workspace\n", mkdirs=True)

    s = client.snapshot_create(name, label="before the change")
    assert isinstance(s, berth.Snapshot)
    assert (s.project, s.label, s.base_image) == (name, "before the change", IMAGE)
    assert s.id.startswith("snap-") and s.image == f"berth-snapshot:{s.id}"
    assert s.workspace_bytes == len("before\n") and s.created and s.raw["id"] == s.id
    assert [x.id for x in client.snapshot_list(name)] == [s.id]
    assert s.id in [x.id for x in client.snapshot_list()]
    assert client.snapshot_list(name) == [s]

    client.write_file(name, "w.txt", "after\n")
    client.write_file(name, "new.txt", "made after the snapshot\n")
    client.remove(name, "/root/r.txt")
    assert client.exec(name, "echo two > /root/x").ok

    p = client.snapshot_restore(name, s.id)
    assert isinstance(p, berth.Project)
    assert (p.name, p.status, p.env) == (name, "running", {"STAGE": "one"})
    assert client.read_file(name, "w.txt") == b"before\n"
    assert client.read_file(name, "/root/r.txt") == b"outside the workspace\n"
    with pytest.raises(berth.NotFound):
        client.stat(name, "new.txt")
    with pytest.raises(berth.NotFound):
        client.stat(name, "/root/x")
    # A snapshot outlives its restore, and restores again.
    client.write_file(name, "w.txt", "again\n")
    client.snapshot_restore(name, s.id)
    assert client.read_file(name, "w.txt") == b"before\n"

    assert client.snapshot_delete(s.id) is None
    assert client.snapshot_list(name) == []
    with pytest.raises(berth.NotFound) as e:
        client.snapshot_delete(s.id)
    assert s.id in e.value.message


def test_forks_are_independent(client: berth.Client, daemon: Daemon, cleanup: List[str]) -> None:
    src, live, old = daemon.name("src"), daemon.name("live"), daemon.name("old")
    cleanup.extend([src, live, old])
    client.create(src, env={"STAGE": "one"})
    client.write_file(src, "f", "one\n")
    snap = client.snapshot_create(src)
    client.write_file(src, "f", "two\n")

    # From the source's current state, and from its snapshot.
    p = client.fork(src, live)
    assert isinstance(p, berth.Project)
    assert (p.name, p.status, p.env, p.description) == (live, "running", {"STAGE": "one"}, f"fork of {src}")
    q = client.fork(src, old, snapshot=snap.id)
    assert (q.name, q.status) == (old, "running")
    assert client.read_file(live, "f") == b"two\n"
    assert client.read_file(old, "f") == b"one\n"
    assert client.exec(live, "echo $STAGE").stdout == b"one\n"

    # Changes go nowhere else, whichever side makes them.
    client.write_file(live, "f", "three\n")
    client.write_file(old, "g", "only in old\n")
    assert client.read_file(src, "f") == b"two\n"
    client.write_file(src, "f", "four\n")
    assert client.read_file(live, "f") == b"three\n"
    assert client.read_file(old, "f") == b"one\n"
    with pytest.raises(berth.NotFound):
        client.stat(src, "g")
    assert len({client.path(n) for n in (src, live, old)}) == 3

    # The snapshot stays the source's: a fork's snapshots are its own.
    assert [s.id for s in client.snapshot_list(src)] == [snap.id]
    assert client.snapshot_list(live) == []


def test_delete_keeps_snapshots_only_when_asked(client: berth.Client, daemon: Daemon, cleanup: List[str]) -> None:
    kept, gone, revived = daemon.name("kept"), daemon.name("gone"), daemon.name("revived")
    cleanup.extend([kept, gone, revived])
    for n in (kept, gone):
        client.create(n)
        client.write_file(n, "d", f"data of {n}\n")
        client.snapshot_create(n)

    client.delete(gone, purge=True)
    with pytest.raises(berth.NotFound):
        client.snapshot_list(gone)
    assert client.delete(kept, purge=True, keep_snapshots=True) == {"purged": True}
    (s,) = client.snapshot_list(kept)
    assert s.project == kept
    # A kept snapshot of a deleted project still forks.
    client.fork(kept, revived, snapshot=s.id)
    assert client.read_file(revived, "d") == f"data of {kept}\n".encode()
    client.snapshot_delete(s.id)
    with pytest.raises(berth.NotFound):
        client.snapshot_list(kept)


def test_snapshot_errors_map_to_their_classes(client: berth.Client, daemon: Daemon, cleanup: List[str]) -> None:
    src, other, absent = daemon.name("src"), daemon.name("other"), daemon.name("absent")
    refused = [daemon.name(f"refused-{i}") for i in range(3)]
    cleanup.extend([src, other])
    client.create(src)
    client.create(other)
    foreign = client.snapshot_create(other).id

    def raises(cls: type, named: str, f, *args, **kwargs) -> berth.BerthError:  # type: ignore[no-untyped-def]
        with pytest.raises(cls) as e:
            f(*args, **kwargs)
        assert named in e.value.message, e.value.message
        return e.value

    # Unknown ids and projects.
    e = raises(berth.NotFound, UNKNOWN, client.snapshot_restore, src, UNKNOWN)
    assert (e.kind, e.code) == ("not_found", -32004)
    raises(berth.NotFound, UNKNOWN, client.snapshot_delete, UNKNOWN)
    raises(berth.NotFound, UNKNOWN, client.fork, src, refused[0], snapshot=UNKNOWN)
    raises(berth.NotFound, absent, client.snapshot_create, absent)
    raises(berth.NotFound, absent, client.snapshot_list, absent)
    raises(berth.NotFound, absent, client.snapshot_restore, absent, foreign)
    raises(berth.NotFound, absent, client.fork, absent, refused[1])

    # Bad ids, a snapshot of another project, bad labels, unknown fields.
    e = raises(berth.InvalidParams, "latest", client.snapshot_restore, src, "latest")
    assert (e.kind, e.code) == ("invalid_params", -32602)
    raises(berth.InvalidParams, "snap-XYZ", client.snapshot_delete, "snap-XYZ")
    raises(berth.InvalidParams, foreign, client.snapshot_restore, src, foreign)
    raises(berth.InvalidParams, foreign, client.fork, src, refused[2], snapshot=foreign)
    raises(berth.InvalidParams, "a\\nb", client.snapshot_create, src, label="a\nb")
    raises(berth.InvalidParams, "bogus", client.call, "snapshot.create", {"name": src, "bogus": 1})
    e = raises(berth.InvalidName, "Bad Name", client.fork, src, "Bad Name")
    assert e.kind == "invalid_name" and isinstance(e, berth.InvalidParams)

    # Forks onto a taken name.
    e = raises(berth.AlreadyExists, other, client.fork, src, other)
    assert (e.kind, e.code) == ("already_exists", -32009)
    raises(berth.AlreadyExists, src, client.fork, src, src)

    # None of it made or removed anything.
    assert [s.id for s in client.snapshot_list() if s.project in (src, other)] == [foreign]
    assert client.snapshot_list(src) == []
    for n in refused:
        with pytest.raises(berth.NotFound):
            client.get(n)


def test_snapshots_need_the_engine(offline_daemon: Daemon) -> None:
    name = offline_daemon.name("offline")
    with berth.Client(offline_daemon.socket, timeout=120) as c:
        assert c.create(name).status == "created"
        try:
            with pytest.raises(berth.RuntimeUnavailable) as e:
                c.snapshot_create(name)
            assert e.value.kind == "runtime_unavailable" and name in e.value.message
            with pytest.raises(berth.RuntimeUnavailable):
                c.fork(name, offline_daemon.name("fork"))
            assert c.snapshot_list(name) == []
        finally:
            c.delete(name, purge=True)


def test_async_snapshots(daemon: Daemon, cleanup: List[str]) -> None:
    name, forked = daemon.name("async-snap"), daemon.name("async-fork")
    cleanup.extend([name, forked])

    async def main() -> None:
        async with berth.AsyncClient(daemon.socket, timeout=120) as c:
            await c.create(name)
            await c.write_file(name, "v", "1")
            s = await c.snapshot_create(name, label="one")
            assert isinstance(s, berth.Snapshot) and s.label == "one"
            await c.write_file(name, "v", "2")
            listed, p = await asyncio.gather(c.snapshot_list(name), c.fork(name, forked, snapshot=s.id))
            assert [x.id for x in listed] == [s.id] and p.name == forked
            assert (await c.read_file(forked, "v")) == b"1"
            assert (await c.snapshot_restore(name, s.id)).status == "running"
            assert (await c.read_file(name, "v")) == b"1"
            await c.snapshot_delete(s.id)
            with pytest.raises(berth.NotFound):
                await c.snapshot_delete(s.id)
            assert name not in [x.project for x in await c.snapshot_list()]

    asyncio.run(main())
