"""The RPC layer ("websocket promisifier", chum.md §2), sans-I/O: encoding and classifying
messages.  No state lives here; :mod:`.session` keeps request ids and pending requests."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

UNDEFINED = "$__undefined$"
"""chum.md §2.3: a JS ``undefined`` travels as this string, in both directions."""


class _Undefined:
    """Marks an array hole or an absent value to encode as the sentinel (``None`` is JSON null,
    which is a different value on the wire)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEF"


UNDEF = _Undefined()


def _to_wire(v: Any) -> Any:
    if v is UNDEF:
        return UNDEFINED
    if isinstance(v, list):
        return [_to_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: _to_wire(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        # chum.md §2.3: NaN/Infinity are refused locally (WSP-ESV)
        raise ValueError("WSP-ESV: cannot send a non-finite number")
    return v


def _from_wire(v: Any) -> Any:
    """The sentinel back to "absent": an object property is dropped, an array element becomes
    ``None`` (a hole keeps the length), a top-level value becomes ``None``."""
    if isinstance(v, str):
        return None if v == UNDEFINED else v
    if isinstance(v, list):
        return [_from_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: _from_wire(x) for k, x in v.items() if not (isinstance(x, str) and x == UNDEFINED)}
    return v


def dumps(obj: dict[str, Any]) -> str:
    """One text message as the reference emits it: ``JSON.stringify`` (no spaces, non-ASCII
    raw), keys in insertion order, the undefined sentinel applied everywhere."""
    return json.dumps(_to_wire(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def list_json(items: list[dict[str, Any]]) -> str:
    """chum.md §2.5: roots and children travel as a JSON *string* holding the list."""
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def request(request_id: int, service: int, args: list[Any]) -> str:
    return dumps({"requestId": request_id, "type": "request", "serviceId": service, "args": args})


def data_response(response_id: int, data: Any) -> str:
    return dumps({"responseId": response_id, "type": "data", "data": data})


def error_response(response_id: int, name: str, message: str, code: str | None) -> str:
    return dumps({"responseId": response_id, "type": "error",
                  "error": {"name": name, "message": message, "code": UNDEF if code is None else code}})


def unknown_service(response_id: int, service: Any) -> str:
    # chum.md §2.4: the reference's text, misspelling included (informational; match on code)
    kind = "number" if isinstance(service, (int, float)) and not isinstance(service, bool) else "string"
    return error_response(response_id, "TypeError", f"Not a function: Servcie ID {service} [{kind}]",
                          "UNKNOWN-SERVICE")


def stream_chunk(response_id: int, chunk: str, encoding: str | None) -> str:
    return dumps({"responseId": response_id, "type": "stream", "chunk": chunk,
                  "encoding": UNDEF if encoding is None else encoding})


def stream_end(response_id: int) -> str:
    return dumps({"responseId": response_id, "type": "stream-end"})


def stream_error(response_id: int, text: str = "Error while reading the file stream") -> str:
    return dumps({"responseId": response_id, "type": "stream-error", "error": text})


def write_stream_error(request_id: int) -> str:
    return dumps({"requestId": request_id, "type": "write-stream-error"})


def binary_frame(request_id: int, payload: bytes | memoryview) -> bytes:
    """chum.md §2.6: the request id as an IEEE-754 float64, little-endian, then the payload."""
    return struct.pack("<d", float(request_id)) + bytes(payload)


def binary_id(frame: bytes) -> int | None:
    """The request id of a binary stream chunk, or None if the frame cannot be one (shorter
    than 8 bytes, or an id that is not a non-negative integer)."""
    if len(frame) < 8:
        return None
    (v,) = struct.unpack_from("<d", frame, 0)
    if not math.isfinite(v) or v < 0 or v != int(v):
        return None
    return int(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) or (
        isinstance(v, float) and math.isfinite(v) and v == int(v))


RESPONSE_TYPES = frozenset({"data", "stream", "stream-end", "stream-error", "error"})


def classify(text: str) -> tuple[str, dict[str, Any]] | None:
    """chum.md §2.1 classification: ``("request", msg)``, ``("write-stream-error", msg)``,
    ``("response", msg)`` or None (invalid: not JSON, not an object, unknown shape).  The
    sentinel is decoded; ids are ints."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    t = raw.get("type")
    if t == "request" and _is_int(raw.get("requestId")) and _is_int(raw.get("serviceId")):
        msg = _from_wire(raw)
        msg["requestId"] = int(raw["requestId"])
        msg["serviceId"] = int(raw["serviceId"])
        return "request", msg
    if t == "write-stream-error" and _is_int(raw.get("requestId")):
        return "write-stream-error", {"requestId": int(raw["requestId"])}
    if t in RESPONSE_TYPES and _is_int(raw.get("responseId")):
        msg = _from_wire(raw)
        msg["responseId"] = int(raw["responseId"])
        return "response", msg
    return None
