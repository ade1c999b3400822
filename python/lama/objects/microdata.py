"""ONE microdata: serialize Python objects, parse microdata, compute hashes (objects.md §1-§2).

An object is a ``dict`` with a ``"$type$"`` key naming a registered recipe; see
docs/core-interface.md for how Python values map to ONE values (``set``/``frozenset`` for sets,
``dict`` for maps and nested objects, ``list`` for arrays and bags, ...).  All functions raise
:class:`lama.MicrodataError` (a ``ValueError``) or :class:`lama.RecipeError` with the
reference's error code on bad input.
"""

from __future__ import annotations

from typing import Any

from lama._core import core

Obj = dict[str, Any]


def serialize(obj: Obj) -> str:
    """The canonical microdata of ``obj``."""
    return core.serialize(obj)


def parse(text: str) -> Obj:
    """Parse microdata (of an object or an ID object) back into a dict."""
    return core.parse(text)


def object_hash(obj: Obj) -> str:
    """SHA-256 (lowercase hex) of the object's microdata."""
    return core.object_hash(obj)


def id_microdata(obj: Obj) -> str:
    """Microdata of the ID object of a versioned object (``O2M-COBJ1`` if unversioned)."""
    return core.id_microdata(obj)


def id_hash(obj: Obj) -> str:
    """SHA-256 of the ID microdata: the identity shared by all versions of the object."""
    return core.id_hash(obj)


def id_microdata_of(microdata: str) -> str | None:
    """ID microdata derived from a concrete object's microdata; ``None`` if unversioned."""
    return core.id_microdata_of(microdata)


def type_of(text: str) -> tuple[str, bool]:
    """``(type name, is_id_object)`` from a microdata header."""
    return core.type_of(text)


def references(microdata: str) -> list[tuple[str, str, str]]:
    """Every reference of an object: ``(path, kind, hash)``, kind in obj/id/clob/blob."""
    return core.references(microdata)


def serialize_many(objs: list[Obj]) -> list[tuple[str, str]]:
    """``[(microdata, hash)]`` for many objects in one call into the core."""
    return core.serialize_many(objs)


def sha256_hex(data: bytes | str) -> str:
    """SHA-256 as lowercase hex; a ``str`` is hashed as UTF-8 (CLOB hash)."""
    return core.sha256_hex(data)


__all__ = [
    "serialize",
    "parse",
    "object_hash",
    "id_microdata",
    "id_hash",
    "id_microdata_of",
    "type_of",
    "references",
    "serialize_many",
    "sha256_hex",
]
