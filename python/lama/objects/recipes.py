"""Recipes: the type definitions that drive microdata (objects.md §3).

The core recipes of one.core and the recipes of one.models (chat, contacts, certificates, ...)
are built in.  Applications register their own at run time with :func:`register`, in the JSON
form of ``shared/vectors/recipes.json``::

    register({"$type$": "Recipe", "name": "Note",
              "rule": [{"itemprop": "id", "isId": True},
                       {"itemprop": "tags", "itemtype": {"type": "set", "item": {"type": "string"}}}]})

For convenience Python ``set``/``frozenset`` may stand for ``{"$set": [...]}`` (``allowedTypes``),
a compiled ``re.Pattern`` or a plain string for ``{"$regexp": ..., "flags": ""}`` (``regexp``),
and a ``dict`` for ``{"$map": [...]}`` (``crdtConfig``).  A wrapper ``{"recipe": {...}, ...}`` as in
the vectors file is accepted too.  Registering an identical recipe again is a no-op; a different
recipe under an existing name raises :class:`lama.RecipeError` (``OR-ADDR1``).

:func:`load` does the same but takes a recipe that differs only in the order of a set (a
stored ``Recipe`` object's ``allowedTypes``) as the same one; :func:`load_stored` registers
Recipe objects of a store (an imported ONE instance's app recipes, docs/migration.md).
"""

from __future__ import annotations

import json
import re
from typing import Any

from lama._core import core
from lama.errors import RecipeError


def _normalize_itemtype(t: Any) -> Any:
    if isinstance(t, dict):
        out: dict[str, Any] = {}
        for k, v in t.items():
            if k == "allowedTypes" and isinstance(v, (set, frozenset, list, tuple)):
                out[k] = {"$set": sorted(v)}
            elif k == "regexp" and isinstance(v, re.Pattern):
                out[k] = {"$regexp": v.pattern, "flags": ""}
            elif k == "regexp" and isinstance(v, str):
                out[k] = {"$regexp": v, "flags": ""}
            else:
                out[k] = _normalize_itemtype(v)
        return out
    if isinstance(t, list):
        return [_normalize_itemtype(x) for x in t]
    return t


def normalize(recipe: dict[str, Any]) -> dict[str, Any]:
    """The canonical JSON form of a recipe given in any accepted Python form."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"a recipe must be a dict, not {type(recipe).__name__}", code="URC-ERECI1")
    if "rule" not in recipe and isinstance(recipe.get("recipe"), dict):
        recipe = recipe["recipe"]
    out = _normalize_itemtype(dict(recipe))
    out.setdefault("$type$", "Recipe")
    crdt = recipe.get("crdtConfig")
    if isinstance(crdt, dict) and "$map" not in crdt:
        out["crdtConfig"] = {"$map": [[k, v] for k, v in crdt.items()]}
    return out


def register(recipe: dict[str, Any]) -> None:
    """Register a recipe with the active core (see module docs for the accepted forms)."""
    try:
        text = json.dumps(normalize(recipe), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"recipe is not JSON-serializable: {e}", code="URC-ERECI1") from None
    core.register_recipe(text)


def names() -> list[str]:
    """Names of all registered recipes, built-in ones first."""
    return core.recipe_names()


def get(name: str) -> dict[str, Any]:
    """The recipe registered under ``name`` in its JSON form (``OR-GR1`` if unknown)."""
    return json.loads(core.recipe_json(name))


def is_versioned(name: str) -> bool:
    """True if the type has at least one top-level ``isId`` rule."""
    return core.is_versioned(name)


def canonical(recipe: dict[str, Any]) -> dict[str, Any]:
    """:func:`normalize` with every ``$set`` sorted: two recipes that differ only in the order
    of a set (``allowedTypes``: objects.md §3, a set, written sorted in a Recipe object) are
    the same recipe."""

    def sort_sets(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: (sorted(x, key=json.dumps) if k == "$set" and isinstance(x, list)
                        else sort_sets(x)) for k, x in v.items()}
        if isinstance(v, list):
            return [sort_sets(x) for x in v]
        return v

    return sort_sets(normalize(recipe))


def load(recipe: dict[str, Any]) -> bool:
    """Register ``recipe`` unless the same recipe (:func:`canonical`) is registered already.
    True if it was new. ``RecipeError OR-ADDR1`` if a different recipe has its name, the
    core's ``URC-…``/``OR-…`` error if it is no valid recipe."""
    name = recipe.get("name") if isinstance(recipe, dict) else None
    if isinstance(name, str) and name in core.recipe_names():
        if canonical(get(name)) == canonical(recipe):
            return False
        raise RecipeError(
            f"A different recipe named {name!r} is already registered", code="OR-ADDR1"
        )
    register(recipe)
    return True


def load_stored(store: Any, hashes: list[str]) -> list[tuple[str, str]]:
    """Register the ``Recipe`` objects ``hashes`` of ``store`` (objects.md §3: an application's
    recipes are stored as versioned Recipe objects). Returns ``(hash, reason)`` for each one not
    loaded (missing, not a Recipe, invalid, or a different recipe has its name); the others are
    registered (or were already)."""
    from lama.errors import LamaError

    problems = []
    for h in hashes:
        try:
            obj = store.get_object(h)
            if obj.get("$type$") != "Recipe":
                problems.append((h, f"not a Recipe object but {obj.get('$type$')!r}"))
                continue
            load(obj)
        except LamaError as e:
            problems.append((h, str(e)))
    return problems


__all__ = ["register", "names", "get", "is_versioned", "normalize", "canonical", "load",
           "load_stored"]
