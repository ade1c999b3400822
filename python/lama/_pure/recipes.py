"""Recipes: the type descriptions that drive microdata (objects.md §1.2, §1.9, §3).

A recipe arrives in the JSON form of ``tests/vectors/recipes.json`` ("recipe" entries):
``{"$type$": "Recipe", "name": ..., "rule": [...], "crdtConfig"?: {"$map": [[k, v], ...]}}``
where a set is ``{"$set": [...]}`` (``allowedTypes``) and a RegExp is
``{"$regexp": source, "flags": flags}``.

At registration a recipe is validated (§3 "Recipe validity checks") and compiled once into
:class:`Rule` / :class:`ValueType` objects: rule inheritance (``inheritFrom``, §1.9) is
resolved, regular expressions are compiled with JavaScript semantics (``jsregex``), and the
exact opening/closing tags of every rule are precomputed, so that serializing and parsing never
look at the recipe JSON again.  Inheritance is resolved one level deep, as the reference does
(objects.md §1.9 "Correction"), so compiled types are always a finite tree.

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
from .jsregex import JsRegex, JsRegexError

__all__ = [
    "ValueType",
    "Rule",
    "Recipe",
    "register_recipe",
    "recipe_names",
    "recipe_json",
    "resolved_recipe",
    "is_versioned",
    "get_recipe",
    "find_recipe",
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

#: JavaScript ``\s`` (WhiteSpace and LineTerminator): the white space recipe checks forbid.
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + (
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
#: objects.md §3: no ``<``, ``>``, ``.`` or white space; ``"`` would end the itemprop attribute.
_ITEMPROP_BAD = re.compile("[<>.\"" + re.escape(_JS_SPACE) + "]")
#: objects.md §1.1: the name is written raw into ``itemtype="//refin.io/NAME"`` and read back up
#: to the first ``">``: non-empty, no ``"``, ``<``, ``>`` or white space (URC-ENAME1).
_NAME_BAD = re.compile("[\"<>" + re.escape(_JS_SPACE) + "]")
_RECIPE_KEYS = frozenset({"$type$", "name", "rule", "crdtConfig"})
_RULE_KEYS = frozenset({"itemprop", "itemtype", "inheritFrom", "optional", "isId"})
_TYPE_KEYS = {
    "string": {"type", "regexp"},
    "integer": {"type", "min", "max"},
    "number": {"type", "min", "max"},
    "boolean": {"type"},
    "stringifiable": {"type"},
    "referenceToClob": {"type"},
    "referenceToBlob": {"type"},
    "referenceToObj": {"type", "allowedTypes"},
    "referenceToId": {"type", "allowedTypes"},
    "array": {"type", "item"},
    "bag": {"type", "item"},
    "set": {"type", "item"},
    "map": {"type", "key", "value"},
    "object": {"type", "rules"},
}


class ValueType:
    """A compiled ``itemtype``.

    ``kind`` is the ONE type name; ``regex`` (strings) is a compiled JavaScript RegExp and
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
        self.regex: JsRegex | None = None
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

    __slots__ = ("itemprop", "itemtype", "optional", "is_id", "raw", "open", "close")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.itemprop: str = raw["itemprop"]
        self.itemtype: ValueType | None = None
        self.optional = raw.get("optional") is True
        self.is_id = raw.get("isId") is True
        self.open = self.close = ""

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
            unknown = sorted(set(raw) - _RULE_KEYS)
            if unknown:
                raise self.fail("URC-ERULES1", f"unknown key {unknown[0]!r} in rule {prop!r}")
            if nested and raw.get("isId") is True:
                raise self.fail("URC-ERECI2", f"nested rule {prop!r} cannot have isId")
            rule = Rule(raw)
            self.all_rules.append(rule)
            if "itemtype" in raw:
                rule.itemtype = self.compile_type(raw["itemtype"], prop)
            else:
                rule.itemtype = ValueType("string")
            rules.append(rule)
        return rules

    def compile_type(self, raw: Any, prop: str) -> ValueType:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            raise self.fail("URC-ETYPE1", f"itemtype of {prop!r} must be an object with a type")
        kind = raw["type"]
        if kind not in ALL_KINDS:
            raise self.fail("URC-ETYPE1", f"unknown type {kind!r} of {prop!r}")
        unknown = sorted(set(raw) - _TYPE_KEYS[kind])
        if unknown:
            raise self.fail("URC-ETYPE1", f"unexpected key {unknown[0]!r} in itemtype of {prop!r}")
        allowed = raw.get("allowedTypes")
        if allowed is not None and not (
            isinstance(allowed, dict)
            and isinstance(allowed.get("$set"), list)
            and all(isinstance(x, str) for x in allowed["$set"])
        ):
            raise self.fail(
                "URC-ETYPE1", f"allowedTypes of {prop!r} must be {{\"$set\": [string, ...]}}"
            )
        t = ValueType(kind)
        if kind == "string" and raw.get("regexp") is not None:
            rx = raw["regexp"]
            if isinstance(rx, dict) and isinstance(rx.get("$regexp"), str):
                src, flags = rx["$regexp"], rx.get("flags") or ""
            elif isinstance(rx, str):
                src, flags = rx, ""
            else:
                raise self.fail("URC-EREGEX1", f"invalid regexp of {prop!r}: {rx!r}")
            if not isinstance(flags, str):
                raise self.fail("URC-EREGEX1", f"invalid regexp flags of {prop!r}: {flags!r}")
            try:
                t.regex = JsRegex(src, flags)
            except JsRegexError as e:
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

    def finalize_all(self) -> None:
        for r in self.all_rules:
            r.finalize()


# --------------------------------------------------------------------------------------------
# inheritance (objects.md §1.9, with its correction: one level, no MapItemType)


class _Inheritance:
    """Resolves ``inheritFrom`` the way the reference does (objects.md §1.9 "Correction"):
    every rule of the recipe's own tree that has ``inheritFrom`` is replaced by the *unresolved*
    target rule (as written in its recipe) overlaid with the rule's own fields; ``inheritFrom``
    and ``isId`` of the target are dropped, and rules below the copied target keep no
    ``inheritFrom`` (so they are plain strings unless they have an itemtype: the Questionnaire
    ``item`` below the second level).  ``extract: 'CollectionItemType'`` takes the target's
    ``item``; ``extract: 'MapItemType'`` is checked but never applied (the rule stays a map).
    The result has no ``inheritFrom`` left, so compiled types form a finite tree."""

    def __init__(self, registry: dict[str, Recipe], name: str, top: list[Any]) -> None:
        self.registry = registry
        self.name = name
        self.top = top

    def fail(self, msg: str) -> RecipeError:
        return RecipeError(f"URC-EINH1: Recipe {self.name!r}: {msg}", "URC-EINH1")

    def rules(self, rules: list[Any]) -> list[Any]:
        return [self.rule(r) if isinstance(r, dict) else r for r in rules]

    def itemtype(self, t: Any) -> Any:
        if not isinstance(t, dict):
            return t
        out = dict(t)
        if isinstance(out.get("rules"), list):
            out["rules"] = self.rules(out["rules"])
        for k in ("item", "key", "value"):
            if k in out:
                out[k] = self.itemtype(out[k])
        return out

    def rule(self, raw: dict[str, Any]) -> dict[str, Any]:
        own = {k: v for k, v in raw.items() if k != "inheritFrom"}
        if "itemtype" in own:
            own["itemtype"] = self.itemtype(own["itemtype"])
        inh = raw.get("inheritFrom")
        if inh is None:
            return own
        if isinstance(inh, str):
            path, extract = inh, None
        elif isinstance(inh, dict) and isinstance(inh.get("rule"), str):
            path, extract = inh["rule"], inh.get("extract")
        else:
            raise self.fail(f"invalid inheritFrom {inh!r}")
        tname, dot, tprop = path.rpartition(".")
        if not dot:
            raise self.fail(f"inheritFrom {path!r} is not 'Type.itemprop'")
        if tname == self.name:
            candidates = self.top
        else:
            rec = self.registry.get(tname)
            if rec is None:
                raise self.fail(f"inheritFrom type {tname!r} not found")
            candidates = rec.raw.get("rule", [])
        target = next(
            (r for r in candidates if isinstance(r, dict) and r.get("itemprop") == tprop), None
        )
        if target is None:
            raise self.fail(f"inheritFrom target {path!r} not found")
        eff = {k: v for k, v in target.items() if k not in ("inheritFrom", "isId")}
        if "itemtype" in eff:
            eff["itemtype"] = _strip_inherit(eff["itemtype"])
        ttype = eff.get("itemtype", {"type": "string"})
        kind = ttype.get("type") if isinstance(ttype, dict) else None
        if extract == "CollectionItemType":
            if kind not in COLLECTION_KINDS or "item" not in ttype:
                raise self.fail(f"CollectionItemType of non-collection {path!r}")
            eff["itemtype"] = ttype["item"]
        elif extract == "MapItemType":
            if kind != "map":
                raise self.fail(f"MapItemType of non-map {path!r}")
        elif extract is not None:
            raise self.fail(f"unknown extract {extract!r}")
        eff.update(own)
        return eff


def _strip_inherit(t: Any) -> Any:
    """A copied target itemtype: rules below it keep their fields but lose ``inheritFrom``."""
    if not isinstance(t, dict):
        return t
    out = dict(t)
    if isinstance(out.get("rules"), list):
        out["rules"] = [
            _strip_inherit_rule(r) if isinstance(r, dict) else r for r in out["rules"]
        ]
    for k in ("item", "key", "value"):
        if k in out:
            out[k] = _strip_inherit(out[k])
    return out


def _strip_inherit_rule(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k != "inheritFrom"}
    if "itemtype" in out:
        out["itemtype"] = _strip_inherit(out["itemtype"])
    return out


def _compile(registry: dict[str, Recipe], raw: Any) -> Recipe:
    if not isinstance(raw, dict):
        raise RecipeError("URC-ERECIPE1: A recipe must be a JSON object", "URC-ERECIPE1")
    name = raw.get("name")
    if not isinstance(name, str) or not name or _NAME_BAD.search(name):
        raise RecipeError(
            f"URC-ENAME1: Invalid recipe name {name!r} (non-empty, no '\"', '<', '>' or white "
            "space)",
            "URC-ENAME1",
        )
    if "$type$" in raw and raw["$type$"] != "Recipe":
        raise RecipeError(f"URC-ERECIPE1: Recipe {name!r}: $type$ must be 'Recipe'", "URC-ERECIPE1")
    unknown = sorted(set(raw) - _RECIPE_KEYS)
    if unknown:
        raise RecipeError(
            f"URC-ERECIPE1: Unknown recipe key {unknown[0]!r} in recipe {name!r}", "URC-ERECIPE1"
        )
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
    raw_rules = raw.get("rule")
    if isinstance(raw_rules, list):
        raw_rules = _Inheritance(registry, name, raw_rules).rules(raw_rules)
    rules = c.compile_rules(raw_rules, nested=False)
    for r in rules:  # the object's own keys (objects.md §1.2), never properties
        if r.itemprop in ("$type$", "$versionHash$"):
            raise c.fail("URC-EITP1", f"reserved itemprop {r.itemprop!r}")
    c.finalize_all()
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
    if not isinstance(recipe_json, str):
        raise RecipeError("URC-ERECIPE1: recipe_json must be a JSON string", "URC-ERECIPE1")
    try:
        recipe_json.encode("utf-8")
    except UnicodeEncodeError:
        # names, itemprops and regexps are written into microdata and compared as text: a
        # recipe is refused whole rather than half-encoded (the Rust core cannot hold it)
        raise RecipeError("URC-ERECIPE1: recipe_json contains a lone surrogate", "URC-ERECIPE1") from None
    try:
        raw = json.loads(recipe_json)
    except ValueError as e:
        raise RecipeError(f"URC-ERECIPE1: Recipe is not valid JSON: {e}", "URC-ERECIPE1") from None
    try:  # an escaped lone surrogate (\ud800) is refused too, as the Rust core's JSON reader does
        json.dumps(raw, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RecipeError("URC-ERECIPE1: Recipe is not valid JSON: a lone surrogate escape",
                          "URC-ERECIPE1") from None
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


def _normalized_rule(rule: Rule) -> dict[str, Any]:
    t = rule.itemtype
    assert t is not None
    return {
        "itemprop": rule.itemprop,
        "itemtype": _normalized_type(t, rule.raw.get("itemtype")),
        "optional": rule.optional,
        "isId": rule.is_id,
    }


def _normalized_type(t: ValueType, raw: Any) -> dict[str, Any]:
    if t.kind == "object":
        return {"type": "object", "rules": [_normalized_rule(r) for r in t.rules]}
    out = dict(raw) if isinstance(raw, dict) else {"type": t.kind}
    if t.item is not None:
        out["item"] = _normalized_type(t.item, out.get("item"))
    if t.key is not None and t.value is not None:
        out["key"] = _normalized_type(t.key, out.get("key"))
        out["value"] = _normalized_type(t.value, out.get("value"))
    return out


def resolved_recipe(name: str) -> str:
    """The recipe with inheritance applied (objects.md §1.9), as JSON text:
    ``{"name", "rule": [{"itemprop", "itemtype", "optional", "isId"}, ...], "crdtConfig"?}``;
    every rule (nested ones too) has all four keys, ``itemtype`` in the recipe JSON form
    (default ``{"type": "string"}``).  ``OR-GR1`` if unknown."""
    rec = get_recipe(name)
    out: dict[str, Any] = {"name": rec.name, "rule": [_normalized_rule(r) for r in rec.rules]}
    if rec.raw.get("crdtConfig") is not None:
        out["crdtConfig"] = rec.raw["crdtConfig"]
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


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
