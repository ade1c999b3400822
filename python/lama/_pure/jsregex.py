"""JavaScript RegExp semantics for recipe regexps (objects.md §1.3 "Type checks on write").

The reference checks a ``string`` value with ``RegExp.prototype.test``: ECMAScript syntax
(Annex B included: ``a{,2}`` and ``]`` are literals, ``\\cJ``, ``\\0``, octal escapes), ``.``
not matching ``\\n \\r \\u2028 \\u2029``, ASCII ``\\d \\w \\b``, and -- without the ``u`` flag --
matching over UTF-16 *code units*: ``^one.leute$`` does not match ``"one😀leute"`` because the
emoji is two units.

Matching uses ``regress`` (an ECMAScript engine, the same 0.12 release as the Rust core's crate).
It matches code points, so without ``u``/``v`` both the pattern and the value are first mapped
onto a code-point string that has one code point per UTF-16 unit: a surrogate unit ``c`` becomes
the code point ``0x10F800 + (c - 0xD800)`` (the last 2048 code points of plane 16, which cannot
occur in the mapped text otherwise: astral characters are always split into their units).
Pattern rewriting follows: a surrogate in the pattern (``\\uD83D``, or either half of a literal
emoji) becomes its mapped code point, and class ranges that overlap the surrogate block are
split around it.  With ``u``/``v`` the pattern and value are used as they are (code points are
the JS semantics then).  The Rust core (``rust/lama-core/src/microdata/jsregex.rs``) implements
the same algorithm step by step, so both cores give the same answers.

A lone surrogate in a value is matched as U+FFFD, which is what the Rust core receives for it
(and what is hashed, see ``microdata.sha256_hex``).

Backtracking safety: regress backtracks, and ``^(a+)+$`` against ``"a"*34 + "b"`` would take
hours.  The scanner flags patterns that can need exponential backtracking -- a group repeated
more than once (``*``, ``+``, ``{n,m}`` with m >= 2) whose body contains a quantifier of
variable count or an alternation whose branches are not single, pairwise disjoint characters
(``(\\S|\\s)*`` is fine, ``(a+)+``, ``(a|aa)*`` and ``([a-z]|_)*`` are flagged).  Such a pattern
registers, but checking a value against it fails closed with ``MicrodataError``
``LAMA-REGEXP-UNSAFE`` instead of hanging (docs/core-interface.md).  Known gaps, documented
there too: polynomial blow-ups of *consecutive* overlapping quantifiers (``a*a*a*b``) are not
flagged.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

import regress

from ..errors import MicrodataError

__all__ = ["JsRegexError", "JsRegex", "UNSAFE_CODE"]

UNSAFE_CODE = "LAMA-REGEXP-UNSAFE"
_MAP_BASE = 0x10F800
_INF = -1  # "no upper bound" of a quantifier


class JsRegexError(Exception):
    """The pattern or its flags are not a valid JavaScript RegExp."""


def _m(u: int) -> str:
    return chr(_MAP_BASE + (u - 0xD800))


def _is_sur(u: int) -> bool:
    return 0xD800 <= u <= 0xDFFF


def _units(s: str) -> list[int]:
    a = array("H")
    a.frombytes(s.encode("utf-16-le", "surrogatepass"))
    if sys.byteorder == "big":
        a.byteswap()
    return a.tolist()


def _hex(units: list[int], i: int, k: int) -> int | None:
    """The value of k hex digits at units[i:i+k], or None."""
    if i + k > len(units):
        return None
    v = 0
    for u in units[i : i + k]:
        c = chr(u)
        if c not in "0123456789abcdefABCDEF":
            return None
        v = v * 16 + int(c, 16)
    return v


def _emit_cp(v: int) -> str:
    return _m(v) if _is_sur(v) else f"\\u{v:04X}"


def _emit_range(lo: int, hi: int) -> str:
    if lo > hi:
        raise JsRegexError("Range out of order in character class")
    if hi < 0xD800 or lo > 0xDFFF:
        return f"{_emit_cp(lo)}-{_emit_cp(hi)}"
    out = []
    if lo < 0xD800:
        out.append(f"{_emit_cp(lo)}-\\uD7FF")
    out.append(f"{_m(max(lo, 0xD800))}-{_m(min(hi, 0xDFFF))}")
    if hi > 0xDFFF:
        out.append(f"\\uE000-{_emit_cp(hi)}")
    return "".join(out)


def _class_atom(units: list[int], i: int) -> tuple[int | None, str | None, int]:
    """One ClassAtom (non-u, Annex B) at units[i]: (value, class escape, next index)."""
    n = len(units)
    u = units[i]
    if u != 0x5C:  # not a backslash
        return u, None, i + 1
    if i + 1 >= n:
        raise JsRegexError("\\ at end of pattern")
    e = units[i + 1]
    c = chr(e) if not _is_sur(e) else ""
    if c and c in "dDsSwW":
        return None, "\\" + c, i + 2
    if c == "u":
        v = _hex(units, i + 2, 4)
        if v is not None:
            return v, None, i + 6
        return e, None, i + 2
    if c == "x":
        v = _hex(units, i + 2, 2)
        if v is not None:
            return v, None, i + 4
        return e, None, i + 2
    if c == "c":
        if i + 2 < n and (chr(units[i + 2]).isascii() and (chr(units[i + 2]).isalnum() or units[i + 2] == 0x5F)):
            return units[i + 2] % 32, None, i + 3
        return 0x5C, None, i + 1  # a lone "\c": the backslash is literal
    if c and c in "01234567":
        # LegacyOctalEscapeSequence: up to 3 digits starting with 0-3, else up to 2
        maxlen = 3 if c in "0123" else 2
        j, v = i + 1, 0
        while j < n and j - (i + 1) < maxlen and chr(units[j]) in "01234567":
            v = v * 8 + int(chr(units[j]))
            j += 1
        return v, None, j
    simple = {"b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11}
    if c in simple:
        return simple[c], None, i + 2
    return e, None, i + 2  # identity escape (non-u: any character, e.g. \- \p \k \8)


def _rewrite_class(units: list[int], i: int) -> tuple[str, int]:
    """Rewrite the class starting at units[i] == '[' (non-u mode); returns (text, next index)."""
    n = len(units)
    j = i + 1
    out = ["["]
    if j < n and units[j] == 0x5E:  # ^
        out.append("^")
        j += 1
    while True:
        if j >= n:
            raise JsRegexError("Unterminated character class")
        if units[j] == 0x5D:  # ]
            out.append("]")
            return "".join(out), j + 1
        a, a_esc, j = _class_atom(units, j)
        if j + 1 < n and units[j] == 0x2D and units[j + 1] != 0x5D:  # a-b
            b, b_esc, k = _class_atom(units, j + 1)
            if a_esc is None and b_esc is None:
                assert a is not None and b is not None
                out.append(_emit_range(a, b))
            else:  # Annex B: [\d-x] is \d, '-', x
                out.append(a_esc if a_esc is not None else _emit_cp(a))  # type: ignore[arg-type]
                out.append("\\-")
                out.append(b_esc if b_esc is not None else _emit_cp(b))  # type: ignore[arg-type]
            j = k
        else:
            out.append(a_esc if a_esc is not None else _emit_cp(a))  # type: ignore[arg-type]


def _skip_class(units: list[int], i: int, nested: bool) -> int:
    """Index after the class starting at units[i] == '[' (u/v mode: no rewriting)."""
    n = len(units)
    depth, j = 0, i
    while j < n:
        u = units[j]
        if u == 0x5C:
            j += 2
            continue
        if u == 0x5B and (nested or depth == 0):
            depth += 1
        elif u == 0x5D:
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise JsRegexError("Unterminated character class")


class _Group:
    __slots__ = ("branches", "inner_var", "alt_risky")

    def __init__(self) -> None:
        self.branches: list[list[str | None]] = [[]]
        self.inner_var = False
        self.alt_risky = False


def _disjoint(branches: list[list[str | None]], icase: bool) -> bool:
    """True if each branch is one single-character atom and no two can match the same text."""
    toks: list[str] = []
    for b in branches:
        if len(b) != 1 or b[0] is None:
            return False
        toks.append(b[0])
    if all(len(t) == 1 and t != "." for t in toks):
        keys = [t.lower() if icase else t for t in toks]
        return len(set(keys)) == len(keys)
    return len(toks) == 2 and set(toks) in ({"\\s", "\\S"}, {"\\d", "\\D"}, {"\\w", "\\W"})


def _quantifier(units: list[int], i: int) -> tuple[int, int, int] | None:
    """(min, max or _INF, next index) of a quantifier at units[i], or None."""
    n = len(units)
    c = units[i]
    if c == 0x2A:
        lo, hi, j = 0, _INF, i + 1
    elif c == 0x2B:
        lo, hi, j = 1, _INF, i + 1
    elif c == 0x3F:
        lo, hi, j = 0, 1, i + 1
    elif c == 0x7B:  # {n}, {n,}, {n,m}; anything else is a literal '{' (Annex B)
        j = i + 1
        k = j
        while k < n and 0x30 <= units[k] <= 0x39:
            k += 1
        if k == j:
            return None
        lo = int("".join(map(chr, units[j:k])))
        if k < n and units[k] == 0x7D:
            hi, j = lo, k + 1
        elif k < n and units[k] == 0x2C:
            m = k + 1
            while m < n and 0x30 <= units[m] <= 0x39:
                m += 1
            if m >= n or units[m] != 0x7D:
                return None
            hi = int("".join(map(chr, units[k + 1 : m]))) if m > k + 1 else _INF
            j = m + 1
        else:
            return None
    else:
        return None
    if j < n and units[j] == 0x3F:  # lazy
        j += 1
    return lo, hi, j


def scan(pattern: str, unicode: bool, icase: bool) -> tuple[str, bool]:
    """(pattern for regress, unsafe) -- see the module docstring."""
    units = _units(pattern)
    n = len(units)
    out: list[str] = []
    stack = [_Group()]
    last: Any = None  # ("atom",) or ("group", _Group) -- what a quantifier would apply to
    unsafe = False
    i = 0
    while i < n:
        u = units[i]
        cur = stack[-1]
        if u == 0x5C:  # backslash
            if i + 1 >= n:
                raise JsRegexError("\\ at end of pattern")
            e = units[i + 1]
            c = chr(e) if not _is_sur(e) else ""
            j = i + 2
            if unicode and c in ("u", "p", "P") and j < n and units[j] == 0x7B:
                while j < n and units[j] != 0x7D:
                    j += 1
                j += 1
                tok: str | None = "\\" + c + "{}"
            elif c == "u" and _hex(units, i + 2, 4) is not None:
                v = _hex(units, i + 2, 4)
                assert v is not None
                j = i + 6
                tok = chr(v) if not _is_sur(v) else _m(v)
                if not unicode and _is_sur(v):
                    out.append(_m(v))
                    i = j
                    cur.branches[-1].append(tok)
                    last = ("atom",)
                    continue
            elif c == "x" and _hex(units, i + 2, 2) is not None:
                v = _hex(units, i + 2, 2)
                assert v is not None
                j = i + 4
                tok = chr(v)
            elif c == "c" and j < n and chr(units[j]).isascii() and chr(units[j]).isalpha():
                j += 1
                tok = "\\c"
            elif not c:  # identity escape of a surrogate (non-u: half of an astral literal)
                if not unicode:
                    out.append(_m(e))
                    i = j
                    cur.branches[-1].append(_m(e))
                    last = ("atom",)
                    continue
                tok = None
            elif c.isalnum():
                tok = "\\" + c
            else:
                tok = c
            out.append(pattern_slice(units, i, j))
            assertion = c in ("b", "B")  # \b \B are assertions, not atoms
            cur.branches[-1].append(None if assertion else tok)
            last = None if assertion else ("atom",)
            i = j
            continue
        if u == 0x5B:  # [
            if unicode:
                j = _skip_class(units, i, nested=False)
                out.append(pattern_slice(units, i, j))
            else:
                text, j = _rewrite_class(units, i)
                out.append(text)
            cur.branches[-1].append(pattern_slice(units, i, j))
            last = ("atom",)
            i = j
            continue
        if u == 0x28:  # (
            stack.append(_Group())
            out.append("(")
            last = None
            i += 1
            continue
        if u == 0x29 and len(stack) > 1:  # )
            g = stack.pop()
            if len(g.branches) > 1 and not _disjoint(g.branches, icase):
                g.alt_risky = True
            parent = stack[-1]
            parent.inner_var |= g.inner_var
            parent.alt_risky |= g.alt_risky
            parent.branches[-1].append(None)
            out.append(")")
            last = ("group", g)
            i += 1
            continue
        if u == 0x7C:  # |
            cur.branches.append([])
            out.append("|")
            last = None
            i += 1
            continue
        q = _quantifier(units, i)
        if q is not None:
            lo, hi, j = q
            if last is not None:
                if lo != hi:
                    cur.inner_var = True
                if last[0] == "group" and (hi == _INF or hi >= 2):
                    g = last[1]
                    if g.inner_var or g.alt_risky:
                        unsafe = True
                if cur.branches[-1]:
                    cur.branches[-1][-1] = None
            out.append(pattern_slice(units, i, j))
            last = None
            i = j
            continue
        # a plain character (or ^ $ .)
        if _is_sur(u) and not unicode:
            out.append(_m(u))
            cur.branches[-1].append(_m(u))
            last = ("atom",)
            i += 1
            continue
        # a surrogate here (u mode) is half of an astral literal: one atom with its pair
        j = i + 2 if _is_sur(u) and i + 1 < n and _is_sur(units[i + 1]) else i + 1
        out.append(pattern_slice(units, i, j))
        assertion = u in (0x5E, 0x24)  # ^ $
        cur.branches[-1].append(None if assertion else pattern_slice(units, i, j))
        last = None if assertion else ("atom",)
        i = j
    return ("".join(out) if not unicode else pattern), unsafe


def pattern_slice(units: list[int], i: int, j: int) -> str:
    """The text of units[i:j] (surrogate pairs joined back into code points)."""
    a = array("H", units[i:j])
    if sys.byteorder == "big":
        a.byteswap()
    return a.tobytes().decode("utf-16-le", "surrogatepass")


def map_value(s: str, unicode: bool) -> str:
    """The value as regress sees it: one code point per UTF-16 unit without ``u`` (a lone
    surrogate is a unit like the halves of a pair, as in JavaScript); with ``u`` a lone
    surrogate, which regress cannot take, is matched as U+FFFD (what is hashed)."""
    if s.isascii():
        return s
    out = []
    for ch in s:
        c = ord(ch)
        if 0xD800 <= c <= 0xDFFF:
            out.append("\ufffd" if unicode else _m(c))
        elif c >= 0x10000 and not unicode:
            c -= 0x10000
            out.append(_m(0xD800 + (c >> 10)))
            out.append(_m(0xDC00 + (c & 0x3FF)))
        else:
            out.append(ch)
    return "".join(out)


class JsRegex:
    """A compiled recipe regexp: ``search(value)`` is ``RegExp.prototype.test`` (a truthy
    result or None), or raises ``MicrodataError`` ``LAMA-REGEXP-UNSAFE``."""

    __slots__ = ("source", "flags", "unicode", "sticky", "unsafe", "_re")

    def __init__(self, source: str, flags: str) -> None:
        seen: set[str] = set()
        for f in flags:
            if f not in "dgimsuvy" or f in seen:
                raise JsRegexError(f"Invalid flags supplied to RegExp constructor '{flags}'")
            seen.add(f)
        if "u" in seen and "v" in seen:
            raise JsRegexError(f"Invalid flags supplied to RegExp constructor '{flags}'")
        self.source = source
        self.flags = flags
        self.unicode = bool(seen & {"u", "v"})
        self.sticky = "y" in seen
        rewritten, self.unsafe = scan(source, self.unicode, "i" in seen)
        try:
            self._re = regress.Regex(rewritten, "".join(f for f in flags if f in "imsuv"))
        except Exception as e:  # regress.RegressError: not a valid ECMAScript pattern
            raise JsRegexError(str(e)) from None

    def search(self, value: str) -> Any:
        if self.unsafe:
            raise MicrodataError(
                f"{UNSAFE_CODE}: RegExp /{self.source}/ may need exponential backtracking; "
                "lama does not evaluate it",
                UNSAFE_CODE,
            )
        m = self._re.find(map_value(value, self.unicode))
        if m is None or (self.sticky and m.range().start != 0):
            return None
        return m
