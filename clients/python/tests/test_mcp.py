"""``berth mcp`` through the official MCP Python SDK's stdio client, against a real berthd.

Needs the ``mcp`` package (``pip install mcp``) and the ``berth`` binary
(``$BERTH_BIN`` or ``<repo>/target/debug/berth``: ``cargo build --bin berth``). Without
``mcp`` the module is skipped, unless ``REQUIRE_DOCKER`` is set, which makes that a
failure (CI installs it).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, List

import pytest
from conftest import REPO, Daemon

try:
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client
except ImportError as e:
    if os.environ.get("REQUIRE_DOCKER"):
        raise ImportError(f"REQUIRE_DOCKER is set but the MCP SDK is missing ({e}): pip install mcp") from e
    pytest.skip(
        "the official MCP Python SDK is not installed (pip install mcp); set REQUIRE_DOCKER=1 to make this a failure",
        allow_module_level=True,
    )


def berth_binary() -> str:
    binary = os.environ.get("BERTH_BIN") or str(REPO / "target" / "debug" / "berth")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no berth at {binary}: build it with `cargo build --bin berth` or set BERTH_BIN")
    return binary


def text_of(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def session_run(socket: str, body: Any) -> Any:
    params = StdioServerParameters(command=berth_binary(), args=["mcp", "--socket", socket])
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.server_info.name == "berth"
        return await body(session)


def test_sdk_lists_tools_and_runs_a_project(daemon: Daemon, name: str) -> None:
    async def body(s: ClientSession) -> None:
        tools = (await s.list_tools()).tools
        names = {t.name for t in tools}
        assert {"project_create", "project_exec", "file_read", "file_edit", "process_spawn"} <= names
        assert {"snapshot_create", "snapshot_list", "snapshot_restore", "project_fork"} <= names
        for t in tools:
            assert t.description
            for field, schema in t.input_schema.get("properties", {}).items():
                assert schema.get("description"), f"{t.name}.{field} has no description"

        r = await s.call_tool("project_create", {"name": name})
        assert not r.is_error, text_of(r)
        assert r.structured_content["name"] == name

        progress: list[tuple[float, str]] = []

        async def on_progress(p: float, total: Any, message: Any) -> None:
            progress.append((p, message or ""))

        r = await s.call_tool(
            "project_exec",
            {"name": name, "command": "echo hello > greet.txt; cat greet.txt; echo warn >&2; exit 5"},
            progress_callback=on_progress,
        )
        assert not r.is_error, text_of(r)
        assert text_of(r).startswith("exit code: 5")
        sc: dict[str, Any] = r.structured_content
        assert (sc["exit_code"], sc["stdout"], sc["stderr"]) == (5, "hello\n", "warn\n")
        assert any("hello" in m for _, m in progress), progress

        r = await s.call_tool("file_read", {"name": name, "path": "greet.txt"})
        assert not r.is_error, text_of(r)
        assert text_of(r) == "hello\n"
        assert r.structured_content["path"] == "/workspace/greet.txt"

        # Berth's refusal is a tool error carrying its message, not a protocol failure.
        r = await s.call_tool("file_read", {"name": name, "path": "missing.txt"})
        assert r.is_error
        assert "missing.txt" in text_of(r)
        r = await s.call_tool("project_create", {"name": name})
        assert r.is_error and name in text_of(r)

        r = await s.call_tool("project_delete", {"name": name, "purge": True})
        assert not r.is_error, text_of(r)

    asyncio.run(session_run(daemon.socket, body))


def test_sdk_snapshot_restore_and_fork(daemon: Daemon, cleanup: List[str]) -> None:
    name, fork = daemon.name("mcp-snap"), daemon.name("mcp-fork")
    cleanup.extend([name, fork])

    async def body(s: ClientSession) -> None:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools["project_fork"].input_schema["required"]) == {"from", "name"}
        assert set(tools["snapshot_restore"].input_schema["required"]) == {"name", "id"}

        r = await s.call_tool("project_create", {"name": name})
        assert not r.is_error, text_of(r)
        r = await s.call_tool("file_write", {"name": name, "path": "w.txt", "content": "before\n"})
        assert not r.is_error, text_of(r)

        r = await s.call_tool("snapshot_create", {"name": name, "label": "sdk"})
        assert not r.is_error, text_of(r)
        snap = r.structured_content
        assert snap["project"] == name and snap["label"] == "sdk" and snap["id"].startswith("snap-")
        assert snap["id"] in text_of(r)
        r = await s.call_tool("snapshot_list", {"name": name})
        assert not r.is_error, text_of(r)
        assert [x["id"] for x in r.structured_content["snapshots"]] == [snap["id"]]

        r = await s.call_tool("file_write", {"name": name, "path": "w.txt", "content": "after\n"})
        assert not r.is_error, text_of(r)
        r = await s.call_tool("snapshot_restore", {"name": name, "id": snap["id"]})
        assert not r.is_error, text_of(r)
        assert r.structured_content["name"] == name and r.structured_content["status"] == "running"
        r = await s.call_tool("file_read", {"name": name, "path": "w.txt"})
        assert text_of(r) == "before\n"

        r = await s.call_tool("project_fork", {"from": name, "name": fork, "snapshot": snap["id"]})
        assert not r.is_error, text_of(r)
        assert r.structured_content["name"] == fork
        r = await s.call_tool("file_write", {"name": fork, "path": "w.txt", "content": "fork\n"})
        assert not r.is_error, text_of(r)
        r = await s.call_tool("file_read", {"name": name, "path": "w.txt"})
        assert text_of(r) == "before\n"

        # A bad or unknown id is a tool error naming it, not a protocol failure.
        for bad in ("snap-000000000000", "latest"):
            r = await s.call_tool("snapshot_restore", {"name": name, "id": bad})
            assert r.is_error and bad in text_of(r), text_of(r)
        r = await s.call_tool("project_fork", {"from": name, "name": fork})
        assert r.is_error and fork in text_of(r)

    asyncio.run(session_run(daemon.socket, body))
