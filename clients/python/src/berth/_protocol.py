"""The wire protocol, without I/O (sans-io).

:class:`Connection` turns calls into request lines and the bytes read from the socket
into events: output chunks (``exec.output`` / ``process.output`` notifications, routed
to their call by ``params.id``) and finished calls (their result parsed, or their
error as a :class:`~berth.BerthError`). The blocking :class:`~berth.Client` and the
asyncio :class:`~berth.AsyncClient` both drive this one state machine; neither encodes
or decodes anything itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .errors import BerthError, ProtocolError, error_for

__all__ = [
    "Call",
    "Connection",
    "Done",
    "Output",
    "Event",
    "OutputCallback",
    "decode_data",
    "encode_data",
    "encode_request",
]

#: ``on_output(stream, data)``: ``stream`` is ``"stdout"`` or ``"stderr"``, ``data`` the
#: chunk's bytes. Its return value is ignored (an :class:`~berth.AsyncClient` awaits it
#: when it is awaitable).
OutputCallback = Callable[[str, bytes], Any]

#: Notification methods that carry a call's output.
OUTPUT_METHODS = ("exec.output", "process.output")


def bad_response(what: str) -> ProtocolError:
    return ProtocolError(f"berthd sent something the client does not understand: {what}", kind="bad_response")


def decode_data(data: Any, encoding: Any = None, what: str = "data") -> bytes:
    """Bytes from the protocol's data: a JSON string, base64 when ``encoding`` says so."""
    if data is None:
        return b""
    if not isinstance(data, str):
        raise bad_response(f"{what} is not a string: {data!r:.80}")
    if encoding is None or encoding in ("utf-8", "utf8"):
        # surrogatepass: a lone surrogate cannot come from berthd (it sends UTF-8), but a
        # decoding error here must not lose the rest of the answer.
        return data.encode("utf-8", errors="surrogatepass")
    if encoding == "base64":
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise bad_response(f"{what} is not valid base64: {e}") from None
    raise bad_response(f"{what} has unknown encoding {encoding!r}")


def _json_len(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8")) - 2


def encode_data(data: bytes) -> Dict[str, str]:
    """``{"data": ...}`` for bytes, with ``"encoding": "base64"`` unless plain text is
    no longer than base64 would be (so a piece never outgrows its base64 size)."""
    b64 = base64.b64encode(data).decode("ascii")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return {"data": b64, "encoding": "base64"}
    if _json_len(text) <= len(b64):
        return {"data": text}
    return {"data": b64, "encoding": "base64"}


def encode_request(id: Union[int, str], method: str, params: Optional[Dict[str, Any]] = None) -> bytes:
    """One request line, ``\\n``-terminated."""
    msg: Dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        msg["params"] = params
    return json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def _identity(result: Any, streamed: Dict[str, bytes]) -> Any:
    return result


@dataclass
class Call:
    """One request to make: its method and params, how to turn its result into a value,
    and where its streamed output goes."""

    method: str
    params: Dict[str, Any] = field(default_factory=dict)
    #: ``parse(result, streamed)`` -> the value the call returns; ``streamed`` holds the
    #: output collected from notifications (``{"stdout": b"...", "stderr": b"..."}``).
    parse: Callable[[Any, Dict[str, bytes]], Any] = _identity
    #: Called with each output chunk of this call, as it arrives.
    on_output: Optional[OutputCallback] = None
    #: Keep streamed output for ``parse``.
    collect: bool = False


@dataclass
class Output:
    """A chunk of a call's output."""

    id: int
    stream: str
    data: bytes


@dataclass
class Done:
    """A call finished: ``value`` is its parsed result, unless ``error`` is set."""

    id: int
    value: Any = None
    error: Optional[BerthError] = None


Event = Union[Output, Done]


@dataclass
class _Pending:
    call: Call
    streamed: Dict[str, bytearray] = field(default_factory=lambda: {"stdout": bytearray(), "stderr": bytearray()})


class Connection:
    """The protocol state of one connection: ids, calls in flight, the partial line.

    ``send(call)`` gives the request's id and its line to write; ``receive(data)`` takes
    bytes read from the socket and gives the events they complete, in order.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._buf = bytearray()
        self._scan = 0
        self._pending: Dict[int, _Pending] = {}
        #: Set when the daemon sent something that ends the connection (a garbled line,
        #: an error about the connection itself): the driver should close it.
        self.broken = False

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(self, call: Call) -> Tuple[int, bytes]:
        """Registers ``call`` and returns ``(id, line)``."""
        self._next_id += 1
        id = self._next_id
        line = encode_request(id, call.method, call.params)
        self._pending[id] = _Pending(call)
        return id, line

    def forget(self, id: int) -> None:
        """Stops tracking a call (abandoned by its caller); its late answers are dropped."""
        self._pending.pop(id, None)

    def pending_ids(self) -> List[int]:
        return list(self._pending)

    def lost(self, make_error: Callable[[], BerthError]) -> List[Event]:
        """The connection is gone: every call in flight fails with a fresh error."""
        done: List[Event] = [Done(id, error=make_error()) for id in self._pending]
        self._pending.clear()
        return done

    def receive(self, data: bytes) -> List[Event]:
        """Feeds bytes read from the socket; returns the events of the lines they complete."""
        self._buf += data
        events: List[Event] = []
        while True:
            i = self._buf.find(b"\n", self._scan)
            if i < 0:
                self._scan = len(self._buf)
                return events
            line = bytes(self._buf[:i])
            del self._buf[: i + 1]
            self._scan = 0
            if line.strip():
                events.extend(self._line(line))

    def _line(self, line: bytes) -> List[Event]:
        try:
            msg = json.loads(line)
        except ValueError as e:
            # Nothing on this connection can be trusted after a garbled line.
            what = f"a line that is not JSON ({e}): {line[:120]!r}"
            self.broken = True
            return self.lost(lambda: bad_response(what))
        if not isinstance(msg, dict):
            self.broken = True
            return self.lost(lambda: bad_response(f"a line that is not an object: {line[:120]!r}"))
        if "id" not in msg:
            return self._notification(msg)
        id = msg.get("id")
        if id is None:
            # An error about the connection itself (a line too long, unparsable): the
            # daemon could not tell which request it was about, so it is every one's.
            self.broken = True
            return self.lost(lambda: error_for(msg.get("error")))
        pending = self._pending.pop(id, None) if isinstance(id, int) else None
        if pending is None:
            return []  # an abandoned call's answer
        if "error" in msg:
            return [Done(id, error=error_for(msg["error"]))]
        if "result" not in msg:
            return [Done(id, error=bad_response(f"a response without result or error: {line[:120]!r}"))]
        streamed = {k: bytes(v) for k, v in pending.streamed.items()}
        try:
            value = pending.call.parse(msg["result"], streamed)
        except BerthError as e:
            return [Done(id, error=e)]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return [Done(id, error=bad_response(f"{pending.call.method} result {msg['result']!r:.200}: {e!r}"))]
        return [Done(id, value=value)]

    def _notification(self, msg: Dict[str, Any]) -> List[Event]:
        if msg.get("method") not in OUTPUT_METHODS:
            return []
        params = msg.get("params")
        if not isinstance(params, dict):
            return []
        id = params.get("id")
        if not isinstance(id, int):
            return []
        pending = self._pending.get(id)
        if pending is None:
            return []
        stream = params.get("stream")
        if stream not in ("stdout", "stderr"):
            return []
        try:
            data = decode_data(params.get("data"), params.get("encoding"), f"{msg['method']} data")
        except BerthError as e:
            self._pending.pop(id, None)
            return [Done(id, error=e)]
        if pending.call.collect:
            pending.streamed[stream] += data
        if pending.call.on_output is None:
            return []
        return [Output(id, stream, data)]
