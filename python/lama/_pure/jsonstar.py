"""one.core's deterministic JSON ("JSON*", objects.md §1.6), used for ``stringifiable`` values.

Differences from plain ``JSON.stringify``:

* object keys are sorted by UTF-16 code units and written raw between quotes (not escaped);
* a set is written as an array whose element JSON texts are sorted (UTF-16 code units);
* lists/tuples keep their order; primitives are exactly ``JSON.stringify`` (numbers per §1.5,
  NaN/±Infinity as ``null``).

The HTML escaping of §1.4 is applied by the caller, not here.
"""

from __future__ import annotations

import json
import re

from ..errors import MicrodataError
from .jsnum import format_number

__all__ = ["stringify", "utf16_key", "json_string", "json_depth_ok", "MAX_DEPTH", "MAX_JSON_DEPTH"]

# Nesting limits shared with the Rust core (rust/lama-core/src/microdata/mod.rs): MAX_DEPTH
# containers (<ol>/<ul>/<dl>/<div>) in one object, MAX_JSON_DEPTH nested JSON arrays/objects in
# one stringifiable value. Enforced on write and on read, so whatever one core writes both read.
MAX_DEPTH = 200
MAX_JSON_DEPTH = 100

_json_str = json.encoder.encode_basestring  # escapes " \\ and C0 controls like JSON.stringify
# a surrogate code point that is not half of a high+low pair: JSON.stringify writes it as \udxxx
_LONE_SURROGATE = re.compile(
    "[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', re.DOTALL)


def utf16_key(s: str) -> bytes:
    """Sort key giving JavaScript's default string order (UTF-16 code units)."""
    return s.encode("utf-16-be", "surrogatepass")


def json_string(s: str) -> str:
    """``JSON.stringify`` of a string: quotes, ``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t``, other C0
    as lowercase ``\\u00xx``, lone surrogates as ``\\udxxx``; everything else raw."""
    out = _json_str(s)
    if not out.isascii() and _LONE_SURROGATE.search(out):
        out = _LONE_SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), out)
    return out


def json_depth_ok(text: str) -> bool:
    """True if the JSON text nests at most MAX_JSON_DEPTH arrays/objects (strings skipped)."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return True
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif c in "]}":
            depth -= 1
    return True


def stringify(value: object) -> str:
    """JSON* text of a JSON-like Python value (dict, list/tuple, set/frozenset, str, int,
    float, bool, None).  Raises :class:`MicrodataError` ``O2M-RTYC1`` for other types."""
    return _stringify(value, 0)


def _number(v: int | float) -> str:
    try:
        return format_number(v)
    except OverflowError:
        raise MicrodataError(
            f"O2M-RTYC1: Integer {v} is too large for a JavaScript number", "O2M-RTYC1"
        ) from None


def _too_deep() -> MicrodataError:
    # the reference's code for a circular structure; a deeper one could not be read back
    return MicrodataError(
        f"USS-STR1: Structure nested deeper than {MAX_JSON_DEPTH} levels or circular", "USS-STR1"
    )


def _stringify(v: object, depth: int) -> str:
    """``depth`` = number of arrays/objects around ``v``."""
    t = type(v)
    if t is str:
        return json_string(v)  # type: ignore[arg-type]
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return _number(v)  # type: ignore[arg-type]
    if v is None:
        return "null"
    if isinstance(v, dict):
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        items = []
        for k, x in v.items():
            if not isinstance(k, str):
                # docs/core-interface.md: a stringifiable dict has str keys
                raise MicrodataError(
                    f"O2M-RTYC1: Value of type stringifiable has a {type(k).__name__} object "
                    f"key: {k!r} (object keys must be strings)",
                    "O2M-RTYC1",
                )
            items.append((utf16_key(k), k, x))
        items.sort(key=lambda e: e[0])
        return "{" + ",".join('"' + ks + '":' + _stringify(x, depth + 1) for _, ks, x in items) + "}"
    if isinstance(v, (list, tuple)):
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        return "[" + ",".join(_stringify(x, depth + 1) for x in v) + "]"
    if isinstance(v, (set, frozenset)):
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        parts = [_stringify(x, depth + 1) for x in v]
        parts.sort(key=utf16_key)
        return "[" + ",".join(parts) + "]"
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number(v)
    raise MicrodataError(
        f"O2M-RTYC1: Value of type {type(v).__name__} is not JSON-stringifiable", "O2M-RTYC1"
    )
