"""ECMAScript number formatting and parsing (objects.md §1.5, §1.11).

ONE numbers are JavaScript doubles.  They are written with ECMAScript ``Number::toString(10)``
(shortest round-trip digits, plain decimal for decimal exponents in [-7, 21), otherwise
``d[.ddd]e±X``), except that NaN and ±Infinity are written ``null`` (``JSON.stringify``) and
``-0`` is written ``0``.  Python's ``repr`` gives the same shortest digits but a different
layout (``1e-07``, ``1e+16``), so this module re-lays them out.

Reading uses JavaScript ``Number(text)`` semantics (:func:`js_number`).
"""

from __future__ import annotations

import math
import re

__all__ = ["format_number", "js_number", "to_double"]

_SAFE = 2**53


def to_double(x: int | float) -> float:
    """Convert an ``int``/``float`` to the double JavaScript would hold (OverflowError if huge)."""
    return x if type(x) is float else float(x)


def format_number(x: int | float) -> str:
    """ECMAScript ``JSON.stringify`` of a number: shortest round-trip digits, ``null`` for
    NaN/±Infinity, ``0`` for ``-0``.  A Python ``int`` is first rounded to the nearest double."""
    if type(x) is int and -_SAFE <= x <= _SAFE:
        return str(x)  # exactly representable: digits are the integer itself
    d = float(x)
    if d != d or d in (math.inf, -math.inf):
        return "null"
    if d == 0.0:
        return "0"
    if d.is_integer() and -_SAFE <= d <= _SAFE:
        return str(int(d))
    r = repr(d)
    neg = r[0] == "-"
    if neg:
        r = r[1:]
    # split repr into significant digits and the ECMAScript exponent n
    # (value = 0.d1d2...dk * 10**n)
    mant, _, exp = r.partition("e")
    e = int(exp) if exp else 0
    ip, _, fp = mant.partition(".")
    if fp == "0":
        fp = ""
    digits = (ip + fp).lstrip("0")
    n = len(ip) + e if ip != "0" else e - (len(fp) - len(fp.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        sign = "+" if e >= 0 else "-"
        s = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + sign + str(abs(e))
    return "-" + s if neg else s


# ASCII digits only: JS Number("\u0663") is NaN, while Python's \d and float() accept any
# Unicode decimal digit
_DEC_RE = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)\Z", re.ASCII)
_RADIX_DIGITS = {
    16: re.compile(r"[0-9a-fA-F]+\Z"),
    8: re.compile(r"[0-7]+\Z"),
    2: re.compile(r"[01]+\Z"),
}
_RADIX = {"0x": 16, "0X": 16, "0o": 8, "0O": 8, "0b": 2, "0B": 2}
# ECMAScript StrWhiteSpaceChar: WhiteSpace + LineTerminator
_JS_WS = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
         "\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


def js_number(text: str) -> float:
    """JavaScript ``Number(text)``: trims whitespace, ``""`` is 0, decimal literals, signed
    ``Infinity``, ``0x``/``0o``/``0b`` integers; anything else is NaN."""
    s = text.strip(_JS_WS)
    if not s:
        return 0.0
    if _DEC_RE.match(s):
        return float(s)
    if s in ("Infinity", "+Infinity"):
        return math.inf
    if s == "-Infinity":
        return -math.inf
    base = _RADIX.get(s[:2])
    if base is not None and _RADIX_DIGITS[base].match(s, 2):
        try:
            return float(int(s[2:], base))
        except OverflowError:
            return math.inf
    return math.nan
