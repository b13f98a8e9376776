"""Typed views of the protocol's results.

Every dataclass keeps the daemon's whole answer in ``raw`` (left out of ``repr`` and
comparisons), so fields the daemon adds later stay reachable. Times are RFC 3339
strings exactly as berthd sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

__all__ = [
    "DaemonInfo",
    "Project",
    "ProjectStatus",
    "ProjectLogs",
    "ExecResult",
    "FileEntry",
    "FileChunk",
    "WriteResult",
    "Process",
    "ProcessOutput",
    "Snapshot",
]


def _text(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


@dataclass
class DaemonInfo:
    """``daemon.info``: the daemon's version, runtime and limits."""

    version: str
    runtime: str
    docker: Dict[str, Any]
    projects: int
    #: The longest request line the daemon accepts (bytes); ``None`` from daemons that do not say.
    max_line: Optional[int] = None
    #: The most output kept per stream, and the most one ``fs.read`` returns (bytes).
    max_output: Optional[int] = None
    local_enabled: Optional[bool] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Project:
    """A project as the registry records it."""

    name: str
    description: str
    image: str
    created: str
    last_used: str
    #: ``creating``, ``created``, ``running`` or ``stopped``.
    status: str
    env: Dict[str, str]
    ports: Dict[str, str]
    #: The workspace's path on the daemon's host.
    path: str
    #: The effective container settings ``{profile, offline, memory, pids_limit, cpus}``.
    limits: Optional[Dict[str, Any]] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ProjectStatus:
    """``project.status``: the live container's state."""

    container_id: Optional[str]
    running: bool
    image: Optional[str]
    created: Optional[str]
    #: The container's berth-agent answers.
    agent: Optional[bool] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ProjectLogs:
    """``project.logs``: the container's log and the newest execs."""

    logs: str
    activity: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ExecResult:
    """What a command did. ``stdout``/``stderr`` hold all of its output, also when it
    was streamed to an ``on_output`` callback."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    #: The command was killed at its timeout (``exit_code`` is then 124).
    timed_out: bool
    #: Output passed the daemon's ``exec.max_output`` (or its buffers) and was cut.
    truncated: bool
    duration_ms: int
    #: ``"docker"`` or ``"local"``.
    runtime: str
    #: For docker runs, ``"agent"`` or ``"exec"``.
    path: Optional[str] = None
    #: Why the command could not run (exit 126/127), when it could not.
    exec_error: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """The command exited 0 and did not time out."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def stdout_text(self) -> str:
        """``stdout`` decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return _text(self.stdout)

    @property
    def stderr_text(self) -> str:
        """``stderr`` decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return _text(self.stderr)

    @property
    def output(self) -> str:
        """stdout then stderr, as text."""
        return self.stdout_text + self.stderr_text


@dataclass
class FileEntry:
    """One file system entry, as ``lstat`` sees it."""

    name: str
    path: str
    #: ``file``, ``dir``, ``symlink`` or ``other``.
    type: str
    size: int
    #: Permission bits as an octal string, such as ``"0644"``.
    mode: str
    mtime: str
    #: Where a symlink points.
    target: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_symlink(self) -> bool:
        return self.type == "symlink"

    @property
    def mode_bits(self) -> int:
        """``mode`` as a number (``0o644``)."""
        return int(self.mode, 8)


@dataclass
class FileChunk:
    """One ``fs.read`` answer: a piece of a file."""

    path: str
    #: The whole file's size.
    size: int
    data: bytes
    #: ``data`` reaches the end of the file.
    eof: bool
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class WriteResult:
    """What a write did: the file's absolute path and its size after the write."""

    path: str
    size: int
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Process:
    """A background process."""

    id: int
    project: str
    command: List[str]
    running: bool
    #: ``None`` while running; 128+N when signal N ended it.
    exit_code: Optional[int]
    started: Optional[str]
    ended: Optional[str]
    #: Its pid in the container.
    pid: Optional[int] = None
    #: The signal that ended it (``"TERM"``, ...).
    signal: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ProcessOutput:
    """A piece of a background process's output and the offsets to ask for next."""

    stdout: bytes
    stderr: bytes
    stdout_offset: int
    stderr_offset: int
    #: Bytes between the offsets asked for and the data returned that are no longer kept.
    dropped: int
    running: bool
    exit_code: Optional[int]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def stdout_text(self) -> str:
        return _text(self.stdout)

    @property
    def stderr_text(self) -> str:
        return _text(self.stderr)


@dataclass
class Snapshot:
    """A snapshot of a project: its container committed as an image, a copy of its
    workspace, and its settings (env, ports, limits, description)."""

    #: ``snap-`` and 12 hex digits.
    id: str
    #: The project it was taken of (which may since be deleted, with ``keep_snapshots``).
    project: str
    label: str
    created: str
    #: The committed image: ``berth-snapshot:<id>``.
    image: str
    #: The size of the workspace copy (bytes).
    workspace_bytes: int
    #: The image the project ran when the snapshot was taken.
    base_image: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
