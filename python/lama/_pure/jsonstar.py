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

__all__ = ["stringify", "utf16_key", "json_string"]

_json_str = json.encoder.encode_basestring  # escapes " \\ and C0 controls like JSON.stringify
_SURROGATE = re.compile("[\ud800-\udfff]")


def utf16_key(s: str) -> bytes:
    """Sort key giving JavaScript's default string order (UTF-16 code units)."""
    return s.encode("utf-16-be", "surrogatepass")


def json_string(s: str) -> str:
    """``JSON.stringify`` of a string: quotes, ``\\"``, ``\\\\``, ``\\b\\f\\n\\r\\t``, other C0
    as lowercase ``\\u00xx``, lone surrogates as ``\\udxxx``; everything else raw."""
    out = _json_str(s)
    if _SURROGATE.search(out):
        out = _SURROGATE.sub(lambda m: "\\u%04x" % ord(m.group()), out)
    return out


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


def _stringify(v: object, depth: int) -> str:
    if depth > 500:
        raise MicrodataError("USS-STR1: Structure too deep or circular", "USS-STR1")
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
        items = []
        for k, x in v.items():
            if isinstance(k, str):
                ks = k
            elif isinstance(k, bool):
                ks = "true" if k else "false"
            elif isinstance(k, (int, float)):
                ks = _number(k)
            elif k is None:
                ks = "null"
            else:
                raise MicrodataError(
                    f"O2M-RTYC1: Value of type {type(k).__name__} cannot be a JSON object key",
                    "O2M-RTYC1",
                )
            items.append((utf16_key(ks), ks, x))
        items.sort(key=lambda e: e[0])
        return "{" + ",".join('"' + ks + '":' + _stringify(x, depth + 1) for _, ks, x in items) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_stringify(x, depth + 1) for x in v) + "]"
    if isinstance(v, (set, frozenset)):
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
