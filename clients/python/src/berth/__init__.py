"""berth: a Python client for berthd, the daemon that gives each project its own container.

>>> import berth
>>> with berth.Client() as c:
...     c.create("demo")
...     r = c.exec("demo", "echo hello")
...     print(r.exit_code, r.stdout_text)

:class:`Client` blocks; :class:`AsyncClient` is the same for asyncio. Errors answered
by the daemon raise a :class:`BerthError` subclass named after the error's kind.
"""

from __future__ import annotations

from ._ops import default_socket
from .aio import AsyncClient
from .client import Client
from .errors import (
    AlreadyExists,
    BerthConnectionError,
    BerthError,
    Busy,
    Forbidden,
    InternalError,
    InvalidName,
    InvalidParams,
    NotFound,
    ProtocolError,
    RuntimeFailure,
    RuntimeUnavailable,
    Timeout,
    TooLarge,
)
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

__version__ = "0.1.0"

__all__ = [
    "Client",
    "AsyncClient",
    "default_socket",
    "BerthError",
    "BerthConnectionError",
    "NotFound",
    "AlreadyExists",
    "InvalidParams",
    "InvalidName",
    "RuntimeUnavailable",
    "RuntimeFailure",
    "Timeout",
    "Busy",
    "TooLarge",
    "Forbidden",
    "ProtocolError",
    "InternalError",
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
