"""ONE microdata: serialization, parsing, hashes and references (objects.md §1, §2, §6.4).

Both directions are driven by the compiled recipe (:mod:`.recipes`), never by the object's
keys: the serializer walks the rules in recipe order (§1.2) and emits each present value in
top-level form (``<span itemprop="P">…</span>``, ``<a itemprop="P" data-type="K">…</a>``,
``<ol|ul|dl|div itemprop="P">…</…>``) or, inside collections, in nested form (§1.3).  Strings
are HTML-escaped (§1.4), numbers use ECMAScript formatting (§1.5, :mod:`.jsnum`),
``stringifiable`` values deterministic JSON (§1.6, :mod:`.jsonstar`), bag/set items are sorted
by the UTF-16 code units of the whole ``<li>…</li>`` text and maps keep insertion order (§1.7).

The parser (§1.11) is strict: at each position it expects exactly the tag of the next rule,
and the text must end right after the closing ``</div>``.

Python value mapping: docs/core-interface.md ("Python values").

Error codes: the reference's where known (``O2M-*``, ``M2O-*``, ``OR-*``); codes this port had
to name itself are ``M2O-PCONV1`` (an expected tag is missing / unexpected content) and
``M2O-PV2`` (a ``stringifiable`` text is not valid JSON).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from typing import Any, Callable

from ..errors import LamaError, MicrodataError, RecipeError
from .jsnum import format_number, js_number
from .jsonstar import MAX_DEPTH, MAX_JSON_DEPTH, json_depth_ok, json_string, stringify, utf16_key
from .recipes import Recipe, Rule, ValueType, find_recipe, get_recipe

# Nesting limits, the same in both cores (rust/lama-core/src/microdata/mod.rs MAX_DEPTH and
# MAX_JSON_DEPTH): microdata from the network may be adversarial, and the serializer enforces
# the same limits so that whatever is written can be read back by both cores.
MAX_PARSE_DEPTH = MAX_DEPTH  # containers (<ol>/<ul>/<dl>/<div>) inside one object

__all__ = [
    "MICRODATA_START",
    "ID_OBJ_MICRODATA_START",
    "serialize",
    "parse",
    "object_hash",
    "id_microdata",
    "id_hash",
    "id_microdata_of",
    "type_of",
    "serialize_many",
    "references",
    "sha256_hex",
    "js_utf8",
]

MICRODATA_START = '<div itemscope itemtype="//refin.io/'
ID_OBJ_MICRODATA_START = '<div data-id-object="true" itemscope itemtype="//refin.io/'

_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_SAFE = 2**53
_IGNORED_KEYS = frozenset({"$type$", "$versionHash$"})
# set item types whose Python values may be unhashable: a set of them may be given (and is
# parsed) as a list (docs/core-interface.md)
_LIST_SET_KINDS = frozenset({"object", "map", "array", "bag", "set", "stringifiable"})


# --------------------------------------------------------------------------------------------
# helpers


def js_utf8(s: str) -> bytes:
    """UTF-8 bytes of ``s`` read as a JavaScript (UTF-16) string, as Node.js writes and hashes
    it (objects.md §2.1): a high+low surrogate pair is one character, a lone surrogate becomes
    U+FFFD.  Microdata with lone surrogates is hashed and stored in this form."""
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def sha256_hex(data: bytes | bytearray | memoryview | str) -> str:
    """Lowercase hex SHA-256; a ``str`` is hashed as UTF-8 (a lone surrogate as U+FFFD, like
    Node.js: :func:`js_utf8`)."""
    if isinstance(data, str):
        return hashlib.sha256(js_utf8(data)).hexdigest()
    return hashlib.sha256(data).hexdigest()


def _esc(s: str) -> str:
    """HTML escaping of §1.4: only ``&``, ``<``, ``>``, in that order."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _unesc(s: str) -> str:
    """Inverse of :func:`_esc` in the reference's order: ``&gt;``, ``&lt;``, then ``&amp;``."""
    if "&" not in s:
        return s
    return s.replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")


def _show(v: Any) -> str:
    """A value as the reference prints it in messages: strings raw, the rest as JSON."""
    if isinstance(v, str):
        return v
    try:
        return _js_json(v)
    except (LamaError, RecursionError, OverflowError):
        return repr(v)


def _js_json(v: Any) -> str:
    """``JSON.stringify``-like text (insertion-ordered keys) for messages."""
    if isinstance(v, dict):
        return "{" + ",".join(json_string(str(k)) + ":" + _js_json(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_js_json(x) for x in v) + "]"
    return stringify(v)


def _type_error(prop: str, kind: str, v: Any) -> MicrodataError:
    return MicrodataError(
        f'O2M-RTYC1: Value for itemprop "{prop}" should be of type "{kind}", Value: {_show(v)}',
        "O2M-RTYC1",
    )


def _missing(rule: Rule) -> MicrodataError:
    return MicrodataError(
        f'O2M-RTYC2: Mandatory property "{rule.itemprop}" missing; Rule: {rule.js_text()}',
        "O2M-RTYC2",
    )


# --------------------------------------------------------------------------------------------
# serialization: each function returns the *content* of a value (without its tags)

_Ser = Callable[[Any, ValueType, str], str]


def _ser_string(v: Any, t: ValueType, prop: str) -> str:
    if not isinstance(v, str):
        raise _type_error(prop, "string", v)
    if t.regex is not None and t.regex.search(v) is None:
        raise MicrodataError(
            f'O2M-RTYC3: Property "{prop}" value "{v}" does not match RegExp "{t.regex_src}"',
            "O2M-RTYC3",
        )
    return _esc(v)


def _ser_integer(v: Any, t: ValueType, prop: str) -> str:
    tv = type(v)
    if tv is int or (isinstance(v, int) and tv is not bool):
        try:
            return format_number(v)
        except OverflowError:
            raise _type_error(prop, "integer", v) from None
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return format_number(v)
    raise _type_error(prop, "integer", v)


def _ser_number(v: Any, t: ValueType, prop: str) -> str:
    if isinstance(v, (int, float)) and type(v) is not bool:
        try:
            return format_number(v)
        except OverflowError:
            raise _type_error(prop, "number", v) from None
    raise _type_error(prop, "number", v)


def _ser_boolean(v: Any, t: ValueType, prop: str) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    raise _type_error(prop, "boolean", v)


def _ser_stringifiable(v: Any, t: ValueType, prop: str) -> str:
    return _esc(stringify(v))


def _ser_reference(v: Any, t: ValueType, prop: str) -> str:
    if isinstance(v, str) and _HASH_RE.match(v):
        return v
    raise MicrodataError(
        f'O2M-RTYC4: Value for hash-link itemprop "{prop}" should be SHA-256 hash '
        f"(lower case hex 64 characters), Value: {_show(v)}",
        "O2M-RTYC4",
    )


def _items(v: Any, t: ValueType, prop: str) -> list[str]:
    item = t.item
    assert item is not None
    f = _SER[item.kind]
    o, c = "<li>" + item.nopen, item.nclose + "</li>"
    return [o + f(x, item, prop) + c for x in v]


def _sorted_join(lis: list[str], unique: bool = False) -> str:
    """Join ``<li>`` strings sorted by UTF-16 code units (§1.7). Code-point order is the same
    unless astral characters occur, so ASCII-only lists take the fast path.  With ``unique``
    (sets) equal items are written once: a Set holds no duplicates (§9.24), and parsing gives
    one item for them, so this keeps parse(serialize(x)) hashing like x."""
    if all(s.isascii() for s in lis):
        lis.sort()
    else:
        lis.sort(key=utf16_key)
    if unique and len(lis) > 1:
        lis = [x for k, x in enumerate(lis) if k == 0 or x != lis[k - 1]]
    return "".join(lis)


def _not_an_array(prop: str, v: Any) -> MicrodataError:
    return MicrodataError(
        f'O2M-CVAL4: Value for array/bag itemprop "{prop}" is not an array, Value: {_show(v)}',
        "O2M-CVAL4",
    )


def _ser_array(v: Any, t: ValueType, prop: str) -> str:
    if not isinstance(v, (list, tuple)):
        raise _not_an_array(prop, v)
    return "".join(_items(v, t, prop))


def _ser_bag(v: Any, t: ValueType, prop: str) -> str:
    if not isinstance(v, (list, tuple)):
        raise _not_an_array(prop, v)
    return _sorted_join(_items(v, t, prop))


def _ser_set(v: Any, t: ValueType, prop: str) -> str:
    # a list/tuple stands for a set only where Python sets cannot hold the items
    # (docs/core-interface.md): sets of objects, maps, arrays, bags or sets
    if not (
        isinstance(v, (set, frozenset))
        or (isinstance(v, (list, tuple)) and t.item is not None and t.item.kind in _LIST_SET_KINDS)
    ):
        raise _type_error(prop, "set", v)
    return _sorted_join(_items(v, t, prop), unique=True)


def _ser_map(v: Any, t: ValueType, prop: str) -> str:
    if not isinstance(v, dict):
        raise _type_error(prop, "map", v)
    kt, vt = t.key, t.value
    assert kt is not None and vt is not None
    fk, fv = _SER[kt.kind], _SER[vt.kind]
    ko, kc = "<dt>" + kt.nopen, kt.nclose + "</dt><dd>" + vt.nopen
    vc = vt.nclose + "</dd>"
    return "".join(ko + fk(k, kt, prop) + kc + fv(x, vt, prop) + vc for k, x in v.items())


def _ser_object(v: Any, t: ValueType, prop: str) -> str:
    if not isinstance(v, dict):
        if isinstance(v, (list, tuple, set, frozenset)):
            # the reference accepts any JS object here, and an array or Set has none of the
            # nested properties (objects.md §1.3 "object must be a non-null object")
            raise MicrodataError(
                f'O2M-RTYC2: Value for nested object itemprop "{prop}" is an array or set, '
                f"Value: {_show(v)}",
                "O2M-RTYC2",
            )
        raise _type_error(prop, "object", v)
    parts = []
    for r in t.rules:
        p = r.itemprop
        if p not in v:
            if r.optional:
                continue
            raise _missing(r)
        x = v[p]
        rt = r.itemtype
        assert rt is not None
        # inside a nested object None is a value, not "absent" (objects.md §9.2): the type
        # check of the rule rejects it with its own code; JSON* would write it as null
        if x is None and rt.kind == "stringifiable":
            raise _type_error(p, rt.kind, x)
        parts.append(r.open + _SER[rt.kind](x, rt, p) + r.close)
    return "".join(parts)


_ser_depth = threading.local()


def _ser_nested(f: _Ser) -> _Ser:
    """Count container nesting while serializing (the parser's limit, MAX_PARSE_DEPTH: never
    write what cannot be read back)."""

    def body(v: Any, t: ValueType, prop: str) -> str:
        d = getattr(_ser_depth, "d", 0)
        if d >= MAX_PARSE_DEPTH:
            raise MicrodataError(
                f"O2M-RTYC1: Value nested deeper than {MAX_PARSE_DEPTH} levels", "O2M-RTYC1"
            )
        _ser_depth.d = d + 1
        try:
            return f(v, t, prop)
        finally:
            _ser_depth.d = d

    return body


_SER: dict[str, _Ser] = {
    "string": _ser_string,
    "integer": _ser_integer,
    "number": _ser_number,
    "boolean": _ser_boolean,
    "stringifiable": _ser_stringifiable,
    "referenceToObj": _ser_reference,
    "referenceToId": _ser_reference,
    "referenceToClob": _ser_reference,
    "referenceToBlob": _ser_reference,
    "array": _ser_nested(_ser_array),
    "bag": _ser_nested(_ser_bag),
    "set": _ser_nested(_ser_set),
    "map": _ser_nested(_ser_map),
    "object": _ser_nested(_ser_object),
}


def _recipe_of(obj: Any) -> Recipe:
    if not isinstance(obj, dict):
        raise MicrodataError(
            f"O2M-CONV: Expected a ONE object (dict with $type$), got {type(obj).__name__}",
            "O2M-CONV",
        )
    tname = obj.get("$type$")
    if not isinstance(tname, str):
        raise MicrodataError(f"O2M-CONV: Object has no $type$ string: {_show(obj)}", "O2M-CONV")
    return get_recipe(tname)


def _serialize(obj: Any, id_only: bool) -> str:
    try:
        return _serialize_inner(obj, id_only)
    except RecursionError:
        raise _too_deep() from None


def _serialize_inner(obj: Any, id_only: bool) -> str:
    rec = _recipe_of(obj)
    if id_only:
        rules = rec.id_rules
        if not rules:
            raise MicrodataError(
                f'O2M-COBJ1: Type "{rec.name}" is not versioned, it has no ID object',
                "O2M-COBJ1",
            )
        parts = [ID_OBJ_MICRODATA_START, rec.name, '">']
    else:
        rules = rec.rules
        parts = [MICRODATA_START, rec.name, '">']
    found = 1  # "$type$", which _recipe_of found
    for r in rules:
        p = r.itemprop
        x = obj.get(p)
        if x is None:
            if r.optional:
                continue
            raise _missing(r)
        found += 1
        t = r.itemtype
        assert t is not None
        parts.append(r.open + _SER[t.kind](x, t, p) + r.close)
    # Top-level itemprops are distinct and never "$type$" (recipes.py URC-EITP2, URC-EITP1), so
    # when the keys found equal the dict's size every key is known: the search for unknown
    # keys (a list comprehension per object) is only made otherwise.
    if not id_only and found != len(obj):
        known = rec.rule_by_prop
        unknown = [k for k in obj if k not in known and k not in _IGNORED_KEYS]
        if unknown:
            raise MicrodataError(
                f"O2M-COBJ2: Unknown properties {_js_json(unknown)} in {_show(obj)}",
                "O2M-COBJ2",
            )
    parts.append("</div>")
    return "".join(parts)


def serialize(obj: dict[str, Any]) -> str:
    """Microdata of a ONE object (objects.md §1)."""
    return _serialize(obj, False)


def _too_deep() -> MicrodataError:
    return MicrodataError(f"O2M-RTYC1: Value nested deeper than {MAX_DEPTH} levels", "O2M-RTYC1")


def object_hash(obj: dict[str, Any]) -> str:
    """SHA-256 of the object's microdata (§2.1)."""
    return sha256_hex(_serialize(obj, False))


def id_microdata(obj: dict[str, Any]) -> str:
    """Microdata of the object's ID object (§2.2); ``O2M-COBJ1`` for unversioned types."""
    return _serialize(obj, True)


def id_hash(obj: dict[str, Any]) -> str:
    """SHA-256 of the ID microdata (§2.2)."""
    return sha256_hex(_serialize(obj, True))


def serialize_many(objs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """``[(microdata, hash)]`` for a batch of objects."""
    out = []
    for o in objs:
        md = _serialize(o, False)
        out.append((md, sha256_hex(md)))
    return out


# --------------------------------------------------------------------------------------------
# parsing (§1.11): each function parses the *content* of a value starting at ``i`` and returns
# (value, position of the closing tag); the caller checks the tags.


class _Parser:
    __slots__ = ("s", "refs", "depth")

    def __init__(self, s: str, refs: list[tuple[str, str, str]] | None) -> None:
        self.s = s
        self.refs = refs
        self.depth = 0

    def fail(self, code: str, msg: str, i: int) -> MicrodataError:
        near = self.s[i : i + 40]
        return MicrodataError(f"{code}: {msg} at position {i} (near {near!r})", code)

    def expect(self, tag: str, i: int) -> int:
        if self.s.startswith(tag, i):
            return i + len(tag)
        raise self.fail("M2O-PCONV1", f"Expected {tag!r}", i)

    def text(self, i: int) -> tuple[str, int]:
        j = self.s.find("<", i)
        if j < 0:
            raise self.fail("M2O-PCONV1", "Unterminated value", i)
        return self.s[i:j], j


_Parse = Callable[[_Parser, int, ValueType, str], "tuple[Any, int]"]


def _to_py_number(d: float) -> int | float:
    if d.is_integer() and -_SAFE <= d <= _SAFE:
        return int(d)
    return d


def _p_string(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    raw, j = p.text(i)
    if not raw:
        # an empty text is "" for every primitive type, before any conversion or check
        # (objects.md §1.11), so an empty string passes a regexp rule on read
        return "", j
    v = _unesc(raw)
    if t.regex is not None and t.regex.search(v) is None:
        raise p.fail(
            "M2O-PV3", f'Value "{v}" does not match RegExp "{t.regex_src}" ({path})', i
        )
    return v, j


def _p_number(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    raw, j = p.text(i)
    if not raw:
        return "", j
    return _to_py_number(js_number(_unesc(raw))), j


def _p_boolean(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    raw, j = p.text(i)
    if not raw:
        return "", j
    return raw == "true", j


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _p_stringifiable(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    raw, j = p.text(i)
    if not raw:
        return "", j
    text = _unesc(raw)
    if not json_depth_ok(text):
        raise p.fail(
            "M2O-PV2", f"Stringifiable value of {path} nested deeper than {MAX_JSON_DEPTH}", i
        )
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_int=_json_int), j
    except (ValueError, RecursionError) as e:
        raise p.fail("M2O-PV2", f"Stringifiable value of {path} is not valid JSON: {e}", i) from None


def _json_int(lit: str) -> int | float:
    """A JSON integer literal as ``int``; one with more digits than Python converts
    (``sys.get_int_max_str_digits``) as the double JavaScript reads (``inf`` when huge)."""
    try:
        return int(lit)
    except ValueError:
        return float(lit)


def _p_reference(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    raw, j = p.text(i)
    if not _HASH_RE.match(raw):
        raise p.fail("M2O-PV1", f"Invalid hash {raw!r} for {path}", i)
    if p.refs is not None:
        p.refs.append((path, t.ref, raw))  # type: ignore[arg-type]
    return raw, j


def _p_list(p: _Parser, i: int, t: ValueType, path: str) -> tuple[list[Any], int]:
    s = p.s
    item = t.item
    assert item is not None
    f = _PARSE[item.kind]
    close, no, nc = t.nclose, item.nopen, item.nclose
    out = []
    refs = p.refs
    k = 0
    while not s.startswith(close, i):
        i = p.expect("<li>", i)
        if no:
            i = p.expect(no, i)
        v, i = f(p, i, item, f"{path}.{k}" if refs is not None else path)
        if nc:
            i = p.expect(nc, i)
        i = p.expect("</li>", i)
        out.append(v)
        k += 1
    return out, i


def _p_set(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    out, i = _p_list(p, i, t, path)
    if not t.hashable_items:
        return out, i
    assert t.item is not None
    if t.item.kind == "set":  # inner sets as frozensets, or lists if their items are unhashable
        out = [frozenset(x) if isinstance(x, set) else x for x in out]
    try:
        return set(out), i
    except TypeError:  # unhashable items (JSON arrays/objects, lists of maps): a list
        return out, i


def _p_map(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    s = p.s
    kt, vt = t.key, t.value
    assert kt is not None and vt is not None
    fk, fv = _PARSE[kt.kind], _PARSE[vt.kind]
    out: dict[Any, Any] = {}
    refs = p.refs
    k = 0
    while not s.startswith("</dl>", i):
        i = p.expect("<dt>" + kt.nopen, i)
        key, i = fk(p, i, kt, f"{path}.{k}.key" if refs is not None else path)
        i = p.expect(kt.nclose + "</dt><dd>" + vt.nopen, i)
        val, i = fv(p, i, vt, f"{path}.{k}.value" if refs is not None else path)
        i = p.expect(vt.nclose + "</dd>", i)
        out[key] = val
        k += 1
    return out, i


def _p_object(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
    s = p.s
    out: dict[str, Any] = {}
    refs = p.refs
    for r in t.rules:
        if not s.startswith(r.open, i):
            if r.optional:
                continue
            raise p.fail(
                "M2O-EOTFM1", f'Mandatory property "{r.itemprop}" of nested object {path} missing', i
            )
        rt = r.itemtype
        assert rt is not None
        v, i = _PARSE[rt.kind](
            p, i + len(r.open), rt, f"{path}.{r.itemprop}" if refs is not None else path
        )
        i = p.expect(r.close, i)
        out[r.itemprop] = v
    return out, i


def _nested(f: _Parse) -> _Parse:
    """Count container nesting while parsing ``f``'s body (limit MAX_PARSE_DEPTH)."""

    def body(p: _Parser, i: int, t: ValueType, path: str) -> tuple[Any, int]:
        if p.depth >= MAX_PARSE_DEPTH:
            raise MicrodataError(
                f"M2O-PD1: Microdata nested deeper than {MAX_PARSE_DEPTH} levels", "M2O-PD1"
            )
        p.depth += 1
        try:
            return f(p, i, t, path)
        finally:
            p.depth -= 1

    return body


_PARSE: dict[str, _Parse] = {
    "string": _p_string,
    "integer": _p_number,
    "number": _p_number,
    "boolean": _p_boolean,
    "stringifiable": _p_stringifiable,
    "referenceToObj": _p_reference,
    "referenceToId": _p_reference,
    "referenceToClob": _p_reference,
    "referenceToBlob": _p_reference,
    "array": _nested(_p_list),
    "bag": _nested(_p_list),
    "set": _nested(_p_set),
    "map": _nested(_p_map),
    "object": _nested(_p_object),
}


def _header(text: str) -> tuple[str, bool, int]:
    """(type name, is ID object, position after the header); ``M2O-PH1`` if not ONE microdata."""
    if not isinstance(text, str):
        raise MicrodataError(
            f"M2O-PH1: Microdata must be a str, got {type(text).__name__}", "M2O-PH1"
        )
    if text.startswith(ID_OBJ_MICRODATA_START):
        is_id, i = True, len(ID_OBJ_MICRODATA_START)
    elif text.startswith(MICRODATA_START):
        is_id, i = False, len(MICRODATA_START)
    else:
        raise MicrodataError(
            f"M2O-PH1: Not ONE microdata (bad header): {text[:60]!r}", "M2O-PH1"
        )
    j = text.find('">', i)
    name = text[i:j]
    if j < 0 or not name or any(c in name for c in '"<>'):
        raise MicrodataError(f"M2O-PH1: Bad type name in header: {text[:80]!r}", "M2O-PH1")
    return name, is_id, j + 2


def _parse(
    text: str,
    refs: list[tuple[str, str, str]] | None = None,
    spans: list[tuple[Rule, int, int]] | None = None,
) -> tuple[dict[str, Any], Recipe, bool]:
    name, is_id, i = _header(text)
    rec = find_recipe(name)
    if rec is None:
        raise RecipeError(f'OR-ET1: Type "{name}" not found in recipes', "OR-ET1")
    if is_id:
        rules = rec.id_rules
        if not rules:
            raise MicrodataError(
                f'M2O-PH1: ID object of unversioned type "{name}" (isIdObj is true)', "M2O-PH1"
            )
    else:
        rules = rec.rules
    p = _Parser(text, refs)
    out: dict[str, Any] = {"$type$": name}
    for r in rules:
        if not text.startswith(r.open, i):
            if r.optional:
                continue
            raise p.fail("M2O-PD1", f'Mandatory property "{r.itemprop}" of {name} missing', i)
        start = i
        t = r.itemtype
        assert t is not None
        v, i = _PARSE[t.kind](p, i + len(r.open), t, r.itemprop)
        i = p.expect(r.close, i)
        out[r.itemprop] = v
        if spans is not None:
            spans.append((r, start, i))
    i = p.expect("</div>", i)
    if i != len(text):
        raise p.fail("M2O-PCONV2", "Trailing characters after the object", i)
    return out, rec, is_id


def parse(text: str) -> dict[str, Any]:
    """Parse microdata (or ID-object microdata) into a dict: ``$type$`` first, then the present
    properties in recipe order (§1.11)."""
    return _parse(text)[0]


def type_of(text: str) -> tuple[str, bool]:
    """(type name, is ID object) from the header alone (§1.1)."""
    name, is_id, _ = _header(text)
    return name, is_id


def id_microdata_of(microdata: str) -> str | None:
    """ID microdata derived from concrete microdata by copying the ID properties' tags
    (§2.2 "alternative computation"); ``None`` for unversioned types, from the header alone
    (docs/core-interface.md, as the Rust core; this does not validate their body).  A
    versioned type's text is fully parsed (validated) first; an ID object is returned
    unchanged."""
    name, _, _ = _header(microdata)
    rec = find_recipe(name)
    if rec is None:
        raise RecipeError(f'OR-ET1: Type "{name}" not found in recipes', "OR-ET1")
    if not rec.versioned:
        return None
    spans: list[tuple[Rule, int, int]] = []
    _, rec, is_id = _parse(microdata, spans=spans)
    if not rec.versioned:
        return None
    if is_id:
        return microdata
    found = {r.itemprop for r, _, _ in spans}
    for r in rec.id_rules:
        if r.itemprop not in found and not r.optional:  # unreachable after a strict parse
            raise MicrodataError(f'M2IH-XID1: ID property "{r.itemprop}" not found', "M2IH-XID1")
    body = "".join(microdata[a:b] for r, a, b in spans if r.is_id)
    return ID_OBJ_MICRODATA_START + rec.name + '">' + body + "</div>"


def references(microdata: str) -> list[tuple[str, str, str]]:
    """Every reference in the object as ``(path, kind, hash)`` in microdata order (§6.4):
    top-level, inside lists/sets/maps (keys too) and nested objects; stringifiable content is
    not scanned."""
    refs: list[tuple[str, str, str]] = []
    _parse(microdata, refs=refs)
    return refs
