"""Recipes: the type descriptions that drive microdata (objects.md §1.2, §1.9, §3).

A recipe arrives in the JSON form of ``tests/vectors/recipes.json`` ("recipe" entries):
``{"$type$": "Recipe", "name": ..., "rule": [...], "crdtConfig"?: {"$map": [[k, v], ...]}}``
where a set is ``{"$set": [...]}`` (``allowedTypes``) and a RegExp is
``{"$regexp": source, "flags": flags}``.

At registration a recipe is validated (§3 "Recipe validity checks") and compiled once into
:class:`Rule` / :class:`ValueType` objects: rule inheritance (``inheritFrom``, §1.9) is
resolved, regular expressions are translated from JavaScript syntax and compiled, and the
exact opening/closing tags of every rule are precomputed, so that serializing and parsing never
look at the recipe JSON again.  Inheritance may be recursive (``Questionnaire.item`` contains
items that inherit from ``Questionnaire.item``): the compiled value types then form a cycle.

The module-level registry is pre-loaded with the built-in recipes of
``lama/data/builtin_recipes.json`` (one.core's ``CORE_RECIPES`` and the one.models recipes).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .jsonstar import stringify

__all__ = [
    "ValueType",
    "Rule",
    "Recipe",
    "register_recipe",
    "recipe_names",
    "recipe_json",
    "is_versioned",
    "get_recipe",
    "find_recipe",
    "js_regex",
]

PRIMITIVE_KINDS = frozenset({"string", "integer", "number", "boolean", "stringifiable"})
REFERENCE_KINDS = {
    "referenceToObj": "obj",
    "referenceToId": "id",
    "referenceToClob": "clob",
    "referenceToBlob": "blob",
}
COLLECTION_KINDS = {"array": "ol", "bag": "ul", "set": "ul"}
ALL_KINDS = PRIMITIVE_KINDS | set(REFERENCE_KINDS) | set(COLLECTION_KINDS) | {"map", "object"}
#: Item kinds whose Python values are unhashable: a ``set`` of those is a ``list`` in Python.
UNHASHABLE_KINDS = frozenset({"object", "map", "array", "bag"})

_ITEMPROP_BAD = re.compile(r"[<>.\s]")
_NAME_OK = re.compile(r'[^"<>\s]+\Z')


class ValueType:
    """A compiled ``itemtype``.

    ``kind`` is the ONE type name; ``regex`` (strings) is a compiled Python pattern and
    ``regex_src`` its JavaScript source; ``item`` (array/bag/set), ``key``/``value`` (map) and
    ``rules`` (object) describe the contents; ``ref`` is the ``data-type`` of references.
    ``nopen``/``nclose`` are the tags of the nested (itemprop-less) form, empty for primitives.
    """

    __slots__ = (
        "kind", "regex", "regex_src", "item", "key", "value", "rules", "ref",
        "nopen", "nclose", "hashable_items",
    )

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.regex: re.Pattern[str] | None = None
        self.regex_src: str | None = None
        self.item: ValueType | None = None
        self.key: ValueType | None = None
        self.value: ValueType | None = None
        self.rules: list[Rule] = []
        self.ref = REFERENCE_KINDS.get(kind)
        if self.ref is not None:
            self.nopen, self.nclose = f'<a data-type="{self.ref}">', "</a>"
        elif kind in COLLECTION_KINDS:
            tag = COLLECTION_KINDS[kind]
            self.nopen, self.nclose = f"<{tag}>", f"</{tag}>"
        elif kind == "map":
            self.nopen, self.nclose = "<dl>", "</dl>"
        elif kind == "object":
            self.nopen, self.nclose = "<div>", "</div>"
        else:
            self.nopen = self.nclose = ""
        self.hashable_items = True


class Rule:
    """A compiled recipe rule with inheritance resolved.

    ``open``/``close`` are the exact tags of the top-level (itemprop) form, e.g.
    ``<span itemprop="P">`` / ``</span>``.  ``raw`` is the rule as given (JSON form), used in
    error messages.
    """

    __slots__ = ("itemprop", "itemtype", "optional", "is_id", "raw", "open", "close", "_inherit")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.itemprop: str = raw["itemprop"]
        self.itemtype: ValueType | None = None
        self.optional = raw.get("optional") is True
        self.is_id = raw.get("isId") is True
        self.open = self.close = ""
        self._inherit: Any = raw.get("inheritFrom")

    def finalize(self) -> None:
        """Compute the top-level tags once the item type is known."""
        t = self.itemtype
        assert t is not None
        p = self.itemprop
        if t.ref is not None:
            self.open, self.close = f'<a itemprop="{p}" data-type="{t.ref}">', "</a>"
        elif t.kind in COLLECTION_KINDS:
            tag = COLLECTION_KINDS[t.kind]
            self.open, self.close = f'<{tag} itemprop="{p}">', f"</{tag}>"
        elif t.kind == "map":
            self.open, self.close = f'<dl itemprop="{p}">', "</dl>"
        elif t.kind == "object":
            self.open, self.close = f'<div itemprop="{p}">', "</div>"
        else:
            self.open, self.close = f'<span itemprop="{p}">', "</span>"

    def js_text(self) -> str:
        """The rule as the reference prints it in messages: JSON* of the JS rule object."""
        return stringify(_to_js(self.raw))


class Recipe:
    """A compiled recipe: ``rules`` in order, ``id_rules`` (own ``isId``), the raw JSON form."""

    __slots__ = ("name", "rules", "id_rules", "versioned", "raw", "json_text", "rule_by_prop")

    def __init__(self, raw: dict[str, Any], rules: list[Rule]) -> None:
        self.raw = raw
        self.name: str = raw["name"]
        self.rules = rules
        self.id_rules = [r for r in rules if r.is_id]
        self.versioned = bool(self.id_rules)
        self.json_text = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
        self.rule_by_prop = {r.itemprop: r for r in rules}


# --------------------------------------------------------------------------------------------
# JavaScript regular expressions


def js_regex(src: str, flags: str = "") -> re.Pattern[str]:
    """Compile a JavaScript RegExp source for use with ``search`` (``RegExp.prototype.test``).

    Translates the differences that matter for recipe patterns: ``$`` (end of input unless
    ``m``), ``\\d``/``\\w`` (ASCII only in JS), named groups ``(?<n>``; flags ``i``, ``m``, ``s``.
    """
    out: list[str] = []
    in_class = False
    multiline = "m" in flags
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c == "\\" and i + 1 < n:
            e = src[i + 1]
            if e == "d":
                out.append("0-9" if in_class else "[0-9]")
            elif e == "w":
                out.append("A-Za-z0-9_" if in_class else "[A-Za-z0-9_]")
            elif e == "D" and not in_class:
                out.append("[^0-9]")
            elif e == "W" and not in_class:
                out.append("[^A-Za-z0-9_]")
            elif e == "/":
                out.append("/")
            else:
                out.append(c + e)
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
        elif c == "[":
            in_class = True
            out.append(c)
            if src.startswith("^]", i + 1) or src.startswith("]", i + 1):
                raise re.error("empty or negated-empty character class is not supported")
        elif c == "$" and not multiline:
            out.append(r"\Z")
        elif c == "(" and src.startswith("(?<", i) and not src.startswith(("(?<=", "(?<!"), i):
            out.append("(?P<")
            i += 3
            continue
        else:
            out.append(c)
        i += 1
    pyflags = 0
    if "i" in flags:
        pyflags |= re.IGNORECASE
    if multiline:
        pyflags |= re.MULTILINE
    if "s" in flags:
        pyflags |= re.DOTALL
    return re.compile("".join(out), pyflags)


# --------------------------------------------------------------------------------------------
# JSON form <-> JS values (for messages and identity)


def _to_js(v: Any) -> Any:
    """Turn the JSON form into what JSON* of the JS value gives: sets -> sorted arrays,
    RegExps -> their source, maps -> arrays of pairs."""
    if isinstance(v, dict):
        if "$set" in v and len(v) == 1:
            return frozenset(_hashable(_to_js(x)) for x in v["$set"])
        if "$regexp" in v:
            return v["$regexp"]
        if "$map" in v and len(v) == 1:
            return frozenset(_hashable([_to_js(k), _to_js(x)]) for k, x in v["$map"])
        return {k: _to_js(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_to_js(x) for x in v]
    return v


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return _FrozenDict(v)
    return v


class _FrozenDict(dict):  # only used to put dicts into frozensets for JSON* output
    def __hash__(self) -> int:  # type: ignore[override]
        return hash(stringify(dict(self)))


# --------------------------------------------------------------------------------------------
# compilation


class _Compiler:
    """Compiles one recipe against the registry (for ``inheritFrom`` targets)."""

    def __init__(self, registry: dict[str, Recipe], name: str) -> None:
        self.registry = registry
        self.name = name
        self.all_rules: list[Rule] = []
        self.top: dict[str, Rule] = {}
        self.resolving: set[int] = set()

    def fail(self, code: str, msg: str) -> RecipeError:
        return RecipeError(f"{code}: Recipe {self.name!r}: {msg}", code)

    def compile_rules(self, raw_rules: Any, nested: bool) -> list[Rule]:
        if not isinstance(raw_rules, list):
            raise self.fail("URC-ERULES1", "rules must be an array")
        rules: list[Rule] = []
        seen: set[str] = set()
        for raw in raw_rules:
            if not isinstance(raw, dict):
                raise self.fail("URC-ERULES1", f"rule must be an object, got {raw!r}")
            prop = raw.get("itemprop")
            if not isinstance(prop, str) or not prop or _ITEMPROP_BAD.search(prop):
                raise self.fail(
                    "URC-EITP1",
                    f"invalid itemprop {prop!r} (non-empty, no '<', '>', '.' or whitespace)",
                )
            if prop in seen:
                raise self.fail("URC-EITP2", f"duplicate itemprop {prop!r}")
            seen.add(prop)
            for flag in ("optional", "isId"):
                if flag in raw and not isinstance(raw[flag], bool):
                    raise self.fail("URC-ERULES1", f"{flag} of {prop!r} must be a boolean")
            if nested and raw.get("isId") is True:
                raise self.fail("URC-ERECI2", f"nested rule {prop!r} cannot have isId")
            rule = Rule(raw)
            self.all_rules.append(rule)
            if "itemtype" in raw:
                rule.itemtype = self.compile_type(raw["itemtype"], prop)
            elif rule._inherit is None:
                rule.itemtype = ValueType("string")
            inh = rule._inherit
            if inh is not None and not (
                isinstance(inh, str)
                or (isinstance(inh, dict) and isinstance(inh.get("rule"), str))
            ):
                raise self.fail("URC-EINH1", f"invalid inheritFrom of {prop!r}: {inh!r}")
            rules.append(rule)
        return rules

    def compile_type(self, raw: Any, prop: str) -> ValueType:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise self.fail("URC-ETYPE1", f"itemtype of {prop!r} must be an object with a type")
        kind = raw["type"]
        if kind not in ALL_KINDS:
            raise self.fail("URC-ETYPE1", f"unknown type {kind!r} of {prop!r}")
        t = ValueType(kind)
        if kind == "string" and raw.get("regexp") is not None:
            rx = raw["regexp"]
            if isinstance(rx, dict) and isinstance(rx.get("$regexp"), str):
                src, flags = rx["$regexp"], rx.get("flags") or ""
            elif isinstance(rx, str):
                src, flags = rx, ""
            else:
                raise self.fail("URC-EREGEX1", f"invalid regexp of {prop!r}: {rx!r}")
            try:
                t.regex = js_regex(src, flags)
            except (re.error, TypeError) as e:
                raise self.fail("URC-EREGEX1", f"invalid regexp {src!r} of {prop!r}: {e}") from None
            t.regex_src = src
        elif kind in COLLECTION_KINDS:
            if "item" not in raw:
                raise self.fail("URC-ETYPE1", f"{kind} {prop!r} needs an item type")
            t.item = self.compile_type(raw["item"], prop)
            if kind == "set" and t.item.kind in UNHASHABLE_KINDS:
                t.hashable_items = False
        elif kind == "map":
            if "key" not in raw or "value" not in raw:
                raise self.fail("URC-ETYPE1", f"map {prop!r} needs key and value types")
            t.key = self.compile_type(raw["key"], prop)
            if t.key.kind not in PRIMITIVE_KINDS and t.key.ref is None:
                raise self.fail(
                    "URC-EMAPK1", f"map key of {prop!r} must be a primitive or reference type"
                )
            t.value = self.compile_type(raw["value"], prop)
        elif kind == "object":
            t.rules = self.compile_rules(raw.get("rules"), nested=True)
        return t

    # inheritance (§1.9)

    def resolve_all(self) -> None:
        i = 0
        while i < len(self.all_rules):  # MapItemType extraction may append rules
            self.resolve(self.all_rules[i])
            i += 1
        for r in self.all_rules:
            r.finalize()

    def resolve(self, rule: Rule) -> None:
        inh = rule._inherit
        if inh is None:
            return
        if id(rule) in self.resolving:
            raise self.fail("URC-EINH1", f"circular inheritFrom at {rule.itemprop!r}")
        self.resolving.add(id(rule))
        target_path = inh if isinstance(inh, str) else inh["rule"]
        extract = None if isinstance(inh, str) else inh.get("extract")
        tname, _, tprop = target_path.rpartition(".")
        if tname == self.name:
            target = self.top.get(tprop)
        else:
            rec = self.registry.get(tname)
            target = rec.rule_by_prop.get(tprop) if rec is not None else None
        if target is None:
            raise self.fail("URC-EINH1", f"inheritFrom target {target_path!r} not found")
        self.resolve(target)
        ttype = target.itemtype
        assert ttype is not None
        if extract == "CollectionItemType":
            if ttype.kind not in COLLECTION_KINDS:
                raise self.fail("URC-EINH1", f"{target_path!r} is not a collection")
            ttype = ttype.item
        elif extract == "MapItemType":
            if ttype.kind != "map":
                raise self.fail("URC-EINH1", f"{target_path!r} is not a map")
            obj = ValueType("object")
            for prop, sub in (("key", ttype.key), ("value", ttype.value)):
                r = Rule({"itemprop": prop})
                r.itemtype = sub
                obj.rules.append(r)
                self.all_rules.append(r)
            ttype = obj
        elif extract is not None:
            raise self.fail("URC-EINH1", f"unknown extract {extract!r}")
        if rule.itemtype is None:  # the rule's own itemtype overrides the inherited one
            rule.itemtype = ttype
        if "optional" not in rule.raw:
            rule.optional = target.optional
        rule._inherit = None
        self.resolving.discard(id(rule))


def _compile(registry: dict[str, Recipe], raw: Any) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("URC-ERECIPE1: A recipe must be a JSON object", "URC-ERECIPE1")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_OK.match(name):
        raise RecipeError(f"URC-ENAME1: Invalid recipe name {name!r}", "URC-ENAME1")
    if raw.get("$type$", "Recipe") != "Recipe":
        raise RecipeError(f"URC-ERECIPE1: Recipe {name!r}: $type$ must be 'Recipe'", "URC-ERECIPE1")
    crdt = raw.get("crdtConfig")
    if crdt is not None and not (
        isinstance(crdt, dict)
        and isinstance(crdt.get("$map"), list)
        and all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
            for e in crdt["$map"]
        )
    ):
        raise RecipeError(
            f"URC-ECRDT1: Recipe {name!r}: crdtConfig must be {{\"$map\": [[str, str], ...]}}",
            "URC-ECRDT1",
        )
    c = _Compiler(registry, name)
    rules = c.compile_rules(raw.get("rule"), nested=False)
    c.top = {r.itemprop: r for r in rules}
    c.resolve_all()
    for r in rules:
        if r.is_id and r.itemtype is not None and r.itemtype.kind == "object":
            raise c.fail("URC-ERECI1", f"isId rule {r.itemprop!r} cannot have nested rules")
    return Recipe(raw, rules)


# --------------------------------------------------------------------------------------------
# the registry

_lock = threading.Lock()
_registry: dict[str, Recipe] = {}  # insertion order = registration order


def _add(raw: Any) -> None:
    name = raw.get("name") if isinstance(raw, dict) else None
    existing = _registry.get(name) if isinstance(name, str) else None
    if existing is not None:
        if existing.raw == raw:
            return
        raise RecipeError(
            f"OR-ADDR1: A different recipe named {name!r} is already registered", "OR-ADDR1"
        )
    rec = _compile(_registry, raw)
    _registry[rec.name] = rec


def register_recipe(recipe_json: str) -> None:
    """Register a recipe given as JSON text (objects.md §3). Identical re-registration is a
    no-op; a *different* recipe under an existing name raises ``OR-ADDR1``."""
    if isinstance(recipe_json, (bytes, bytearray)):
        recipe_json = recipe_json.decode("utf-8")
    if not isinstance(recipe_json, str):
        raise RecipeError("URC-ERECIPE1: recipe_json must be a JSON string", "URC-ERECIPE1")
    try:
        raw = json.loads(recipe_json)
    except ValueError as e:
        raise RecipeError(f"URC-ERECIPE1: Recipe is not valid JSON: {e}", "URC-ERECIPE1") from None
    with _lock:
        _add(raw)


def recipe_names() -> list[str]:
    """Registered recipe names: built-ins first, then in registration order."""
    return list(_registry)


def get_recipe(name: str) -> Recipe:
    """The compiled recipe of ``name``; ``OR-GR1`` if unknown."""
    rec = _registry.get(name)
    if rec is None:
        raise RecipeError(f'OR-GR1: Type "{name}" not found in recipes', "OR-GR1")
    return rec


def find_recipe(name: str) -> Recipe | None:
    return _registry.get(name)


def recipe_json(name: str) -> str:
    """The recipe in its JSON form (compact)."""
    return get_recipe(name).json_text


def is_versioned(name: str) -> bool:
    """True if the recipe has a top-level ``isId`` rule (objects.md §2.2)."""
    return get_recipe(name).versioned


def _load_builtins() -> None:
    path = Path(__file__).resolve().parent.parent / "data" / "builtin_recipes.json"
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    for e in entries:
        _add(e["recipe"])


_load_builtins()
