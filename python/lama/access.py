"""Access rights: what this instance shares with whom (objects.md §6, app-layer.md §4,
docs/chum-session.md §1).

Python decides what to grant; the store answers who may see what.  A grant is a versioned
object written with :func:`lama.objects.versions.store_versioned` (CHANGE mode), and only the
current version of each counts, so a new version revokes what it no longer lists:

* ``Access{object, person[], group[]}`` shares one concrete object (an unversioned object or one
  version of a versioned one); its ID is the ``object``.
* ``IdAccess{id, person[], group[]}`` shares an ID object and all its versions, current and
  future (every version node); its ID is the ``id``.
* ``Group{name, person[]}`` is a named set of persons; its ID is the ``name``.  lama honours
  grants to groups (the reference ignores them, objects.md §6.2 item 4): a person sees what is
  granted to every group whose current version lists them.

The store keeps the index the CHUM exporter reads (``Store.accessible_roots``) in the same
transaction as the grant's version head.
"""

from __future__ import annotations

import threading
from typing import Iterable, Literal, NamedTuple

from lama._core import Store, core
from lama.errors import InvalidArgumentError
from lama.objects import versions
from lama.objects.versions import VersionResult

__all__ = [
    "Root",
    "accessible_roots",
    "grant",
    "grant_id",
    "group_id",
    "group_members",
    "grants",
    "revoke",
    "set_group",
]

Mode = Literal["add", "set"]

# "add" and revoke read the current grant and write the next version: one at a time in this
# process, so two threads adding to the same grant both get in (the head's compare-and-set in
# write_batch keeps the store consistent in any case; another process could still interleave).
_RMW_LOCK = threading.RLock()


class Root(NamedTuple):
    """One accessible root (chum.md §4.2): ``kind`` is ``"unversioned"``, ``"versioned"``,
    ``"id"`` or ``"version_node"``; ``id_hash`` is the object's ID hash (versioned) or the
    node's ``dataIdHash`` (version_node), else ``None``; ``type_name`` the object's type, the ID
    object's type or the node's ``dataType``."""

    kind: str
    hash: str
    id_hash: str | None
    type_name: str


def _hashes(values: Iterable[str] | None, what: str) -> list[str]:
    """Checked hashes, de-duplicated in first-seen order (objects.md §6.1)."""
    if values is None:
        return []
    if isinstance(values, str):
        raise InvalidArgumentError(f"{what} must be a list of hashes, not a str", code="LAMA-ARG")
    out: list[str] = []
    for v in values:
        h = core.check_hash(v, what)
        if h not in out:
            out.append(h)
    return out


def _target(object: str | None, id: str | None) -> tuple[str, str, str]:
    """``(type, target property, hash)`` of the grant for exactly one of ``object``/``id``."""
    if (object is None) == (id is None):
        raise InvalidArgumentError("give exactly one of object= and id=", code="LAMA-ARG")
    if object is not None:
        return "Access", "object", core.check_hash(object, "object")
    assert id is not None
    return "IdAccess", "id", core.check_hash(id, "id")


def grant_id(*, object: str | None = None, id: str | None = None) -> str:
    """The ID hash of the Access (``object=``) or IdAccess (``id=``) grant of that target."""
    type_name, prop, h = _target(object, id)
    return str(core.id_hash({"$type$": type_name, prop: h, "person": [], "group": []}))


def grants(store: Store, *, object: str | None = None, id: str | None = None) -> tuple[list[str], list[str]]:
    """``(persons, groups)`` of the current grant of ``object`` or ``id`` (``([], [])`` if none)."""
    gid = grant_id(object=object, id=id)
    h = versions.current_hash(store, gid)
    if h is None:
        return [], []
    cur = store.get_object(h)
    return list(cur.get("person", [])), list(cur.get("group", []))


def grant(
    store: Store,
    *,
    object: str | None = None,
    id: str | None = None,
    persons: Iterable[str] = (),
    groups: Iterable[str] = (),
    mode: Mode = "add",
) -> VersionResult:
    """Grant ``persons`` and ``groups`` (Person / Group ID hashes) access to ``object`` (one
    concrete object: Access) or ``id`` (an ID object and all its versions: IdAccess).

    ``mode="add"`` unions the lists with the current grant; ``mode="set"`` writes them as they
    are (the reference's ``'replace'``), so ``set`` with empty lists revokes everything
    (objects.md §6.1).  Lists are de-duplicated.  Returns the version written (status
    ``"exists"`` if the grant did not change).  ``StoreError LAMA-GRANT`` if the target is not a
    stored object (``object``) or ID object (``id``)."""
    if mode not in ("add", "set"):
        raise InvalidArgumentError(f"mode must be 'add' or 'set', not {mode!r}", code="LAMA-ARG")
    type_name, prop, h = _target(object, id)
    ps = _hashes(persons, "persons")
    gs = _hashes(groups, "groups")
    with _RMW_LOCK:
        if mode == "add":
            old_ps, old_gs = grants(store, object=object, id=id)
            ps = _hashes([*old_ps, *ps], "persons")
            gs = _hashes([*old_gs, *gs], "groups")
        return versions.store_versioned(store, {"$type$": type_name, prop: h, "person": ps, "group": gs})


def revoke(
    store: Store,
    *,
    object: str | None = None,
    id: str | None = None,
    persons: Iterable[str] | None = None,
    groups: Iterable[str] | None = None,
) -> VersionResult | None:
    """Withdraw the grant of ``object`` or ``id`` from ``persons`` and ``groups`` by writing a
    new version without them; with neither given, from everybody.  ``None`` if there is no
    grant of that target.  What a peer already fetched stays with it (app-layer.md §4.4)."""
    _target(object, id)
    gid = grant_id(object=object, id=id)
    drop_ps = set(_hashes(persons, "persons"))
    drop_gs = set(_hashes(groups, "groups"))
    with _RMW_LOCK:
        if versions.current_hash(store, gid) is None:
            return None
        old_ps, old_gs = grants(store, object=object, id=id)
        if persons is None and groups is None:
            ps: list[str] = []
            gs: list[str] = []
        else:
            ps = [p for p in old_ps if p not in drop_ps]
            gs = [g for g in old_gs if g not in drop_gs]
        return grant(store, object=object, id=id, persons=ps, groups=gs, mode="set")


def group_id(name: str) -> str:
    """The ID hash of the Group named ``name`` (objects.md §6.5: ``everyone`` →
    ``bf06aaea…``)."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"a group name must be a non-empty str, got {name!r}", code="LAMA-ARG")
    return str(core.id_hash({"$type$": "Group", "name": name, "person": []}))


def group_members(store: Store, name: str) -> list[str]:
    """The persons of the current version of the group ``name`` (``[]`` if it has none)."""
    h = versions.current_hash(store, group_id(name))
    return [] if h is None else list(store.get_object(h).get("person", []))


def set_group(store: Store, name: str, persons: Iterable[str]) -> VersionResult:
    """Write the group ``name`` with exactly ``persons`` (de-duplicated) as its new version.
    Persons added get the group's roots from this write on; persons left out lose them."""
    gid = group_id(name)
    ps = _hashes(persons, "persons")
    result = versions.store_versioned(store, {"$type$": "Group", "name": name, "person": ps})
    assert result.id_hash == gid
    return result


def accessible_roots(store: Store, person: str, since: int = 0) -> tuple[int, list[Root]]:
    """``(mark, roots)``: the store's write sequence now, and the roots accessible to
    ``person`` (directly and through its groups) that became accessible after ``since`` (0:
    all), oldest grant first.  Pass ``mark`` as ``since`` next time for the delta."""
    mark, roots = store.accessible_roots(core.check_hash(person, "person"), since)
    return mark, [Root(*r) for r in roots]
