"""The Rust core and the pure-Python core agree byte for byte.

Random recipes (every value type, nested objects and collections, optional rules, ID rules)
with random objects of those recipes are serialized by both cores; the microdata, the hashes
and the ID microdata must be identical and parse back to the same value in both.  Runs once
(marker ``cross_core``), independent of ``LAMA_CORE``.
"""

from __future__ import annotations

import itertools
import json
import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lama.errors import LamaError

pytestmark = pytest.mark.cross_core

_names = itertools.count()

HEX = st.binary(min_size=32, max_size=32).map(bytes.hex)
SAFE_INT = st.integers(min_value=-(2**53), max_value=2**53)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
# lone surrogates (JS strings are UTF-16) and the private-use characters the Rust core uses to
# carry them (rust/lama-core/src/microdata/text.rs) are ordinary text
SPECIAL_CHARS = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\U0010f7ff", "\U0010f800",
                                 "\U0010ffff", "\U0001f600", "\ufffd", "\ue000", "<", "&", ">", '"', "\\"])
TEXT = st.text(st.one_of(st.characters(exclude_categories=()), SPECIAL_CHARS), max_size=12)
PROP = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$0123456789", min_size=1,
               max_size=8).filter(lambda p: p not in ("$type$", "$versionHash$"))
# JSON numbers beyond 2**53 do not survive a JS round trip exactly; the reference has the same limit
JSON_FLOAT = st.floats(min_value=-(2.0**53), max_value=2.0**53, allow_nan=False)

LEAF_TYPES = ["string", "integer", "number", "boolean", "stringifiable",
              "referenceToObj", "referenceToId", "referenceToClob", "referenceToBlob"]
SET_ITEM_TYPES = ["string", "integer", "referenceToObj", "referenceToId", "boolean", "stringifiable"]
KEY_TYPES = ["string", "integer", "referenceToObj", "referenceToId"]


def _leaf(t: str) -> dict[str, Any]:
    if t.startswith("reference") and t in ("referenceToObj", "referenceToId"):
        return {"type": t, "allowedTypes": {"$set": ["*"]}}
    return {"type": t}


def _rules(children: st.SearchStrategy[dict[str, Any]], allow_id: bool) -> st.SearchStrategy[list[dict[str, Any]]]:
    def build(props: list[str], types: list[dict[str, Any]], flags: list[tuple[bool, bool]]) -> list[dict[str, Any]]:
        out = []
        for p, t, (opt, is_id) in zip(props, types, flags):
            r: dict[str, Any] = {"itemprop": p, "itemtype": t}
            if opt:
                r["optional"] = True
            if is_id and allow_id and t["type"] != "object":  # objects.md §3: no isId on nested rules
                r["isId"] = True
            out.append(r)
        return out

    return st.lists(PROP, min_size=1, max_size=5, unique=True).flatmap(
        lambda props: st.builds(
            build,
            st.just(props),
            st.lists(children, min_size=len(props), max_size=len(props)),
            st.lists(st.tuples(st.booleans(), st.booleans()), min_size=len(props), max_size=len(props)),
        )
    )


def _itemtype() -> st.SearchStrategy[dict[str, Any]]:
    leaves = st.sampled_from(LEAF_TYPES).map(_leaf)

    def extend(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
        return st.one_of(
            children.map(lambda c: {"type": "array", "item": c}),
            children.map(lambda c: {"type": "bag", "item": c}),
            st.sampled_from(SET_ITEM_TYPES).map(lambda t: {"type": "set", "item": _leaf(t)}),
            children.map(lambda c: {"type": "set", "item": {"type": "set", "item": c}}),
            st.tuples(st.sampled_from(KEY_TYPES), children).map(
                lambda kv: {"type": "map", "key": _leaf(kv[0]), "value": kv[1]}),
            _rules(children, allow_id=False).map(lambda rs: {"type": "object", "rules": rs}),
        )

    return st.recursive(leaves, extend, max_leaves=6)


JSON_KEY = st.text(alphabet=st.one_of(st.characters(blacklist_categories=("Cc",), blacklist_characters='"\\'),
                                      st.sampled_from(["\ud800", "\udc00", "\U0010ffff"])), max_size=6)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), SAFE_INT, JSON_FLOAT, TEXT),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(JSON_KEY, c, max_size=3)),
    max_leaves=8,
)


def _deep(n: int) -> Any:
    v: Any = "x"
    for _ in range(n):
        v = [v]
    return v


class _Opaque:
    """A Python value with no ONE form."""

    def __repr__(self) -> str:
        return "<opaque>"


# values that are wrong somewhere: each type rejects most of them (objects.md §1.3, §10)
BAD = st.one_of(
    st.sampled_from([None, b"x", "x", "a" * 64, "A" * 64, 1.5, -0.0, True, 0, 10**400, 2**70,
                     float("nan"), [], (), set(), frozenset(), {}, {1: 2}, {None: 1}, {"k": b"v"},
                     _Opaque(), [None], [b"x"], {"x": None}]),
    st.integers(min_value=97, max_value=103).map(_deep),  # around the JSON depth limit
    HEX, TEXT, st.lists(TEXT, max_size=2), st.sets(TEXT, max_size=2),
    st.dictionaries(st.one_of(TEXT, st.integers(), st.booleans()), st.one_of(TEXT, st.none()), max_size=2),
)


# wrong values that can be set items or dict keys
BAD_HASHABLE = st.sampled_from([None, b"x", "x", "a" * 64, 1.5, True, 0, 10**400, frozenset(), ("x",),
                                _Opaque()])


def _hashable(t: dict[str, Any], bad: bool) -> st.SearchStrategy[Any]:
    good = _good_value(t, False)
    return st.one_of(good, good, BAD_HASHABLE) if bad else good


def _value(t: dict[str, Any], bad: bool = False) -> st.SearchStrategy[Any]:
    good = _good_value(t, bad)
    return st.one_of(good, good, BAD) if bad else good


def _good_value(t: dict[str, Any], bad: bool) -> st.SearchStrategy[Any]:
    kind = t["type"]
    if kind == "string":
        return TEXT
    if kind == "integer":
        return SAFE_INT
    if kind == "number":
        return st.one_of(SAFE_INT, FINITE)
    if kind == "boolean":
        return st.booleans()
    if kind == "stringifiable":
        return JSONISH.filter(lambda v: v is not None)  # None means "absent" for a property
    if kind.startswith("reference"):
        return HEX
    if kind in ("array", "bag"):
        return st.lists(_value(t["item"], bad), max_size=4)
    if kind == "set":
        if t["item"]["type"] in ("set", "stringifiable", "object", "map", "array", "bag"):
            # unhashable (or possibly unhashable) items: a list, with equal items repeated
            return st.lists(_value(t["item"], bad), max_size=3).map(lambda xs: xs + xs[:1])
        return st.sets(_hashable(t["item"], bad), max_size=4)
    if kind == "map":
        return st.dictionaries(_hashable(t["key"], bad), _value(t["value"], bad), max_size=3)
    if kind == "object":
        return _object(t["rules"], None, bad)
    raise AssertionError(kind)


def _object(rules: list[dict[str, Any]], type_name: str | None,
            bad: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    def build(values: list[Any], present: list[bool], extra: dict[Any, Any]) -> dict[str, Any]:
        out: dict[Any, Any] = {} if type_name is None else {"$type$": type_name}
        for r, v, p in zip(rules, values, present):
            if p or not r.get("optional"):
                out[r["itemprop"]] = v
        if bad:  # unknown keys (an error at the top level, ignored in nested objects) and
            # missing mandatory properties
            for k, x in extra.items():
                if x is None:
                    out.pop(k, None)
                else:
                    out[k] = x
        return out

    n = len(rules)
    extra = (st.dictionaries(st.one_of(st.sampled_from([r["itemprop"] for r in rules]), PROP, st.integers()),
                             st.one_of(st.none(), BAD), max_size=2) if bad else st.just({}))
    return st.builds(
        build,
        st.tuples(*[_value(r["itemtype"], bad) for r in rules]).map(list),
        st.lists(st.booleans(), min_size=n, max_size=n),
        extra,
    )


@st.composite
def recipe_and_object(draw: st.DrawFn, bad: bool = False) -> tuple[str, dict[str, Any]]:
    rules = draw(_rules(_itemtype(), allow_id=True))
    name = f"Rand{next(_names)}"
    recipe = {"$type$": "Recipe", "name": name, "rule": rules}
    obj = draw(_object(rules, name, bad))
    return json.dumps(recipe), obj


def _canon(v: Any, t: dict[str, Any]) -> Any:
    """A JSON-able comparable form: bags and sets as sorted lists of their items' JSON, numbers
    by value."""
    kind = t["type"]
    if kind == "bag":
        return sorted(json.dumps(_canon(x, t["item"]), sort_keys=True) for x in v)
    if kind == "array":
        return [_canon(x, t["item"]) for x in v]
    if kind == "set":
        return sorted({json.dumps(_canon(x, t["item"]), sort_keys=True) for x in v})
    if kind == "map":
        return [(_canon(k, t["key"]), _canon(x, t["value"])) for k, x in v.items()]
    if kind == "object":
        return {r["itemprop"]: _canon(v[r["itemprop"]], r["itemtype"]) for r in t["rules"] if r["itemprop"] in v}
    if kind in ("integer", "number"):
        # -0 is written "0" (JS number formatting), so it reads back as 0
        return None if math.isnan(v) else float(v) + 0.0
    if kind == "stringifiable":
        return _canon_json(v)
    return v


def _canon_json(v: Any) -> Any:
    """JSON values compare by value: 0.0 and 0 are the same JS number."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_canon_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _canon_json(x) for k, x in v.items()}
    return v


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipe_and_object())
def test_both_cores_identical_bytes(rust_core: ModuleType, pure_core: ModuleType, case: tuple[str, dict[str, Any]]) -> None:
    recipe_json, obj = case
    rust_core.register_recipe(recipe_json)
    pure_core.register_recipe(recipe_json)
    md = rust_core.serialize(obj)
    assert pure_core.serialize(obj) == md
    assert rust_core.object_hash(obj) == pure_core.object_hash(obj) == pure_core.sha256_hex(md)
    versioned = rust_core.is_versioned(obj["$type$"])
    assert pure_core.is_versioned(obj["$type$"]) == versioned
    if versioned:
        idm = rust_core.id_microdata(obj)
        assert pure_core.id_microdata(obj) == idm
        assert rust_core.id_microdata_of(md) == pure_core.id_microdata_of(md) == idm
        assert rust_core.id_hash(obj) == pure_core.id_hash(obj)
    assert rust_core.references(md) == pure_core.references(md)
    # parse(serialize(x)) == x in both cores, and re-serializing is stable
    rules = json.loads(recipe_json)["rule"]
    t = {"type": "object", "rules": rules}
    for core in (rust_core, pure_core):
        back = core.parse(md)
        assert back["$type$"] == obj["$type$"]
        assert _canon(back, t) == _canon(obj, t)
        assert core.serialize(back) == md


def test_both_cores_same_errors(rust_core: ModuleType, pure_core: ModuleType) -> None:
    bad = [
        {"$type$": "Person"},
        {"$type$": "Person", "email": 5},
        {"$type$": "Person", "email": "a", "extra": 1},
        {"$type$": "NoSuchType"},
        {"$type$": "CreationTime", "timestamp": True, "data": "0" * 64},
        {"$type$": "CreationTime", "timestamp": 1, "data": "0" * 63},
        {"email": "x"},
        "not a dict",
    ]
    for obj in bad:
        codes = []
        for core in (rust_core, pure_core):
            with pytest.raises(ValueError) as info:
                core.serialize(obj)
            codes.append(getattr(info.value, "code", None))
        assert codes[0] == codes[1] and codes[0], (obj, codes)


# --------------------------------------------------------------------------------------------
# recipes: the same error code for the same invalid recipe, the same resolved recipes


def test_both_cores_same_recipe_error_codes(rust_core: ModuleType, pure_core: ModuleType) -> None:
    from test_microdata import INVALID_RECIPES  # the table of invalid recipes and their codes

    from lama.errors import RecipeError

    cases = [json.dumps(r) for r, _ in INVALID_RECIPES] + ["{not json", "[]", "null"]
    for text in cases:
        codes = []
        for core in (rust_core, pure_core):
            with pytest.raises(RecipeError) as info:
                core.register_recipe(text)
            codes.append(info.value.code)
        assert codes[0] == codes[1], (text, codes)


def test_both_cores_same_resolved_recipes(rust_core: ModuleType, pure_core: ModuleType) -> None:
    for name in rust_core.recipe_names():
        if name in pure_core.recipe_names():
            assert json.loads(rust_core.resolved_recipe(name)) == json.loads(
                pure_core.resolved_recipe(name)
            ), name


# Patterns exercising what differs between JavaScript and other engines: UTF-16 units, line
# terminators, ASCII classes, Annex B, surrogate ranges, case folding, sticky.
REGEXPS = [
    ("^.$", ""), ("^..$", ""), ("^.$", "u"), ("^.+$", "s"), ("^[^a]$", ""), ("^[^a]{2}$", ""),
    ("^\\w+$", ""), ("^\\d+$", ""), ("\\bx", ""), ("^\\s*$", ""), ("\\uD83D", ""),
    ("[\\uD800-\\uDFFF]", ""), ("^[\\u0000-\\uFFFF]*$", ""), ("[\\uDC00-\\uE000]", ""),
    ("^[😀-😎]$", "u"), ("😀+", ""), ("^x{,2}$", ""), ("^(a|b)\\1$", ""), ("É", "i"), ("ſ", "i"),
    ("^\\p{L}+$", "u"), ("^\\P{L}$", "u"), ("k", "iu"), ("a$", "m"), ("^a", "y"), ("[\\s\\S]", ""),
    ("^[\\d-z]+$", ""), ("\\0", ""), ("[\\101-\\132]", ""), ("\\cA", ""),
]
VALUES = st.text(
    alphabet=st.sampled_from(list("aAbxzé1-_ \n\r\u2028\u2029\x00\x01ſkKÉ\ufeff") + ["😀", "😃", "\U0001F60F", "\uffff", "\ue000",
                                                                           "\ud83d", "\ude00", "\udfff"]),
    max_size=6,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(REGEXPS), VALUES)
def test_both_cores_same_regexp_answers(rust_core: ModuleType, pure_core: ModuleType,
                                        pattern: tuple[str, str], value: str) -> None:
    from lama.errors import MicrodataError

    src, flags = pattern
    name = "TestCrossRegexp" + str(REGEXPS.index(pattern))
    recipe = json.dumps({"$type$": "Recipe", "name": name, "rule": [
        {"itemprop": "s", "itemtype": {"type": "string", "regexp": {"$regexp": src, "flags": flags}}}]})
    answers = []
    for core in (rust_core, pure_core):
        core.register_recipe(recipe)
        try:
            core.serialize({"$type$": name, "s": value})
            answers.append(True)
        except MicrodataError as e:
            assert e.code == "O2M-RTYC3"
            answers.append(False)
    assert answers[0] == answers[1], (src, flags, value, answers)


def _outcome(f: Any, *args: Any) -> tuple[Any, ...]:
    """("ok", result) or ("error", class name, code); anything but a lama error fails."""
    try:
        return ("ok", f(*args))
    except LamaError as e:
        return ("error", type(e).__name__, e.code)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recipe_and_object(bad=True))
def test_both_cores_same_errors_generated(rust_core: ModuleType, pure_core: ModuleType,
                                          case: tuple[str, dict[str, Any]]) -> None:
    """Objects with wrong values anywhere (wrong types, None, unsupported Python values,
    unknown and missing keys, values around the depth limit, non-string JSON keys): both cores
    give the same microdata or the same error class and code, i.e. they check in the same
    order (objects.md §1.2-§1.3)."""
    recipe_json, obj = case
    rust_core.register_recipe(recipe_json)
    pure_core.register_recipe(recipe_json)
    fns = ["serialize", "object_hash", "serialize_many"]
    if rust_core.is_versioned(obj["$type$"]):
        fns += ["id_microdata", "id_hash"]
    for fn in fns:
        arg = [obj] if fn == "serialize_many" else obj
        r, p = _outcome(getattr(rust_core, fn), arg), _outcome(getattr(pure_core, fn), arg)
        assert r == p, (fn, r, p)
    out = _outcome(rust_core.serialize, obj)
    if out[0] == "ok":  # whatever is written is read back alike by both cores
        md = out[1]
        back = _outcome(rust_core.parse, md)
        assert back[0] == "ok"
        assert _same(back, _outcome(pure_core.parse, md))
        assert rust_core.serialize(back[1]) == pure_core.serialize(back[1]) == md


def _same(a: Any, b: Any) -> bool:
    """Equality of results, with types, NaN equal to itself (also inside sets)."""
    return _key(a) == _key(b)


def _key(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "float:nan"
    if isinstance(v, (set, frozenset)):
        return type(v).__name__ + "{" + ",".join(sorted(_key(x) for x in v)) + "}"
    if isinstance(v, (list, tuple)):
        return type(v).__name__ + "[" + ",".join(_key(x) for x in v) + "]"
    if isinstance(v, dict):
        return "dict{" + ",".join(_key(k) + ":" + _key(x) for k, x in v.items()) + "}"
    return type(v).__name__ + ":" + ascii(v)


def _mutations(md: str) -> st.SearchStrategy[str]:
    """Microdata damaged the way a hostile or broken peer might: characters cut, inserted or
    replaced (tags, entities, lone surrogates, deep JSON, digits of other scripts)."""
    pieces = st.sampled_from(["<", ">", "</li>", "<li>", "</span>", "&amp;", "&", "\ud800", "\udfff",
                              "\U0010f800", '"', "[" * 101, "1" * 4400, "\u0663", "", "</div>", "null",
                              "<ul>", "<dl><dt>", '<span itemprop="x">', "\n"])

    def mutate(ops: list[tuple[int, int, str]]) -> str:
        s = md
        for pos, cut, ins in ops:
            pos %= len(s) + 1
            s = s[:pos] + ins + s[pos + cut:]
        return s

    return st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 3), pieces), min_size=1,
                    max_size=3).map(mutate)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_both_cores_parse_damaged_microdata_alike(rust_core: ModuleType, pure_core: ModuleType,
                                                  data: st.DataObject) -> None:
    """Parsing (and the other readers) of damaged microdata: the same value or the same lama
    error in both cores, never a plain Python error."""
    recipe_json, obj = data.draw(recipe_and_object())
    rust_core.register_recipe(recipe_json)
    pure_core.register_recipe(recipe_json)
    text = data.draw(_mutations(rust_core.serialize(obj)))
    for fn in ("parse", "type_of", "id_microdata_of", "references"):
        r, p = _outcome(getattr(rust_core, fn), text), _outcome(getattr(pure_core, fn), text)
        assert _same(r, p), (fn, text, r, p)
