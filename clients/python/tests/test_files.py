"""fs.* through the client against a real berthd."""

from __future__ import annotations

import os

import pytest

import berth


def test_binary_round_trip_of_several_mib(client: berth.Client, project: str) -> None:
    info = client.info()
    assert info.max_line is not None and info.max_output is not None
    data = os.urandom(5 << 20)
    # Bigger than one request line and than one read: both go in pieces.
    assert len(data) > 4 * info.max_line and len(data) > 2 * info.max_output
    w = client.write_file(project, "deep/er/blob.bin", data, mkdirs=True)
    assert (w.path, w.size) == ("/workspace/deep/er/blob.bin", len(data))
    assert client.read_file(project, "deep/er/blob.bin") == data
    with open(os.path.join(client.path(project), "deep/er/blob.bin"), "rb") as f:
        assert f.read() == data
    # A rewrite replaces the whole file.
    client.write_file(project, "deep/er/blob.bin", b"short")
    assert client.read_file(project, "/workspace/deep/er/blob.bin") == b"short"


def test_text_append_mode_and_raw_reads(client: berth.Client, project: str) -> None:
    client.write_file(project, "notes.txt", "héllo\n")
    assert client.append_file(project, "notes.txt", b"w\xc3\xb6rld\n").size == len("héllo\nwörld\n".encode())
    assert client.read_file(project, "notes.txt") == "héllo\nwörld\n".encode()

    chunk = client.fs_read(project, "notes.txt", offset=1, limit=2)
    assert isinstance(chunk, berth.FileChunk)
    assert (chunk.data, chunk.eof, chunk.size) == ("é".encode(), False, 14)
    assert client.fs_read(project, "notes.txt", offset=7).eof is True

    client.write_file(project, "run.sh", "#!/bin/sh\necho ran\n", mode=0o755)
    assert client.stat(project, "run.sh").mode == "0755"
    assert client.exec(project, ["./run.sh"]).stdout == b"ran\n"

    client.write_file(project, "empty", b"")
    assert client.read_file(project, "empty") == b""

    with pytest.raises(berth.InvalidParams) as e:
        client.write_file(project, "no/such/dir/f", "x")
    assert "no/such/dir" in e.value.message


def test_list_stat_mkdir_remove(client: berth.Client, project: str) -> None:
    client.mkdir(project, "tree")
    with pytest.raises(berth.AlreadyExists):
        client.mkdir(project, "tree")
    with pytest.raises(berth.InvalidParams):
        client.mkdir(project, "tree/a/b")
    client.mkdir(project, "tree/a/b", parents=True)
    client.mkdir(project, "tree/a/b", parents=True)  # an existing directory is fine then
    client.write_file(project, "tree/file.txt", "1234")

    entries = client.list_files(project, "tree")
    assert [(e.name, e.type) for e in entries] == [("a", "dir"), ("file.txt", "file")]
    assert all(isinstance(e, berth.FileEntry) for e in entries)
    f = client.stat(project, "tree/file.txt")
    assert (f.path, f.size, f.is_file, f.mode, f.mode_bits) == ("/workspace/tree/file.txt", 4, True, "0644", 0o644)
    assert client.stat(project, "tree/a").is_dir

    with pytest.raises(berth.InvalidParams):
        client.remove(project, "tree")  # not empty
    client.remove(project, "tree/file.txt")
    client.remove(project, "tree", recursive=True)
    with pytest.raises(berth.NotFound) as e:
        client.stat(project, "tree")
    assert e.value.kind == "not_found" and "tree" in e.value.message
    with pytest.raises(berth.NotFound):
        client.read_file(project, "tree/file.txt")
