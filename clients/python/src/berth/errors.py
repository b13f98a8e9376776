"""The exceptions the client raises: one class per error ``kind`` of the protocol.

Every error the daemon answers becomes a :class:`BerthError` subclass chosen by the
error's ``data.kind``; the exception carries the daemon's ``kind``, ``message`` and
JSON-RPC ``code``. Problems reaching the daemon are :class:`BerthConnectionError`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
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
    "error_for",
]


class BerthError(Exception):
    """An error answered by berthd, or met on the way to it.

    ``kind`` is the protocol's ``data.kind`` (``"not_found"``, ``"invalid_params"``, ...;
    ``"connection"`` for :class:`BerthConnectionError`, ``"bad_response"`` when the
    daemon's answer could not be understood), ``message`` the daemon's words, ``code``
    the JSON-RPC error code (``None`` for errors raised by the client itself), ``data``
    the error's whole ``data`` object.
    """

    #: The kind a class stands for (``None`` for the base class).
    KIND: Optional[str] = None

    def __init__(
        self,
        message: str,
        *,
        kind: Optional[str] = None,
        code: Optional[int] = None,
        data: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.kind: str = kind or self.KIND or "unknown"
        self.code: Optional[int] = code
        self.data: Dict[str, Any] = dict(data or {})

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, code={self.code!r}, message={self.message!r})"


class BerthConnectionError(BerthError):
    """The daemon could not be reached, or the connection broke mid-call.

    ``socket`` is the path the client tried.
    """

    KIND = "connection"

    def __init__(self, message: str, *, socket: str) -> None:
        super().__init__(message, kind="connection")
        self.socket: str = socket


class NotFound(BerthError):
    """No such project, file, or background process (``not_found``)."""

    KIND = "not_found"


class AlreadyExists(BerthError):
    """Create of a taken name, mkdir of an existing path (``already_exists``)."""

    KIND = "already_exists"


class InvalidParams(BerthError):
    """A param is missing, of the wrong type, unknown or out of bounds (``invalid_params``)."""

    KIND = "invalid_params"


class InvalidName(InvalidParams):
    """The project name is not valid (``invalid_name``).

    A subclass of :class:`InvalidParams`: both are JSON-RPC code -32602.
    """

    KIND = "invalid_name"


class RuntimeUnavailable(BerthError):
    """The container engine does not answer and the request needs it (``runtime_unavailable``)."""

    KIND = "runtime_unavailable"


class RuntimeFailure(BerthError):
    """The engine refused, or an exec was killed by a stop/delete (``runtime_error``)."""

    KIND = "runtime_error"


class Timeout(BerthError):
    """An internal call or the engine did not answer in time (``timeout``).

    A command that runs past its own exec timeout is not an error: its
    :class:`~berth.ExecResult` has ``timed_out`` set.
    """

    KIND = "timeout"


class Busy(BerthError):
    """Too many connections or requests in flight, or a project mid-create/delete (``busy``)."""

    KIND = "busy"


class TooLarge(BerthError):
    """The request line was longer than the daemon's ``server.max_line`` (``too_large``)."""

    KIND = "too_large"


class Forbidden(BerthError):
    """The peer may not use the socket, or the request is not allowed (``forbidden``)."""

    KIND = "forbidden"


class ProtocolError(BerthError):
    """The daemon did not understand the request (``parse_error``, ``invalid_request``,
    ``method_not_found``), or the client did not understand the answer (``bad_response``)."""

    KIND = "bad_response"


class InternalError(BerthError):
    """A bug or a crashed actor in the daemon (``internal``)."""

    KIND = "internal"


_BY_KIND: Dict[str, Type[BerthError]] = {
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "invalid_params": InvalidParams,
    "invalid_name": InvalidName,
    "runtime_unavailable": RuntimeUnavailable,
    "runtime_error": RuntimeFailure,
    "timeout": Timeout,
    "busy": Busy,
    "too_large": TooLarge,
    "forbidden": Forbidden,
    "parse_error": ProtocolError,
    "invalid_request": ProtocolError,
    "method_not_found": ProtocolError,
    "internal": InternalError,
}

# Kinds the JSON-RPC code implies when an error carries no `data.kind`.
_KIND_BY_CODE: Dict[int, str] = {
    -32700: "parse_error",
    -32600: "invalid_request",
    -32601: "method_not_found",
    -32602: "invalid_params",
    -32603: "internal",
    -32004: "not_found",
    -32009: "already_exists",
    -32010: "runtime_unavailable",
    -32011: "runtime_error",
    -32012: "timeout",
    -32013: "busy",
    -32014: "too_large",
    -32003: "forbidden",
}


def error_for(error: Any) -> BerthError:
    """The exception for a JSON-RPC ``error`` object as berthd sends it."""
    if not isinstance(error, dict):
        return ProtocolError(f"berthd answered an error that is not an object: {error!r}", kind="bad_response")
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    data = error.get("data")
    data = data if isinstance(data, dict) else {}
    kind = data.get("kind")
    if not isinstance(kind, str) or not kind:
        kind = _KIND_BY_CODE.get(code, "unknown") if code is not None else "unknown"
    message = error.get("message")
    if not isinstance(message, str):
        message = f"berthd answered error {kind}"
    cls = _BY_KIND.get(kind, BerthError)
    return cls(message, kind=kind, code=code, data=data)
