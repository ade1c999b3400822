"""The CRDT engine that merges concurrent versions of a versioned object (objects.md §4.4).

When two version nodes of one ID hash are concurrent (neither is an ancestor of the other),
:mod:`lama.objects.versions` builds the version graph down to their common history and asks this
module for the merged object.  The merge walks the object by *path* (``prop``, ``prop.sub``,
a map key appended as ``.key``) and picks an *algorithm* per path:

* the recipe's optional ``crdtConfig`` (``{"$map": [[pattern, algorithmId], ...]}``) is
  searched first: exact ``path#type``, then exact ``path``, then wildcard patterns of equal
  depth (``*`` per segment; the last segment may be ``name#type``, ``*#type``, ``name`` or
  ``*``, in decreasing priority) - see :func:`resolve_algorithm_id`;
* otherwise the default for the value type: ``Register`` for primitives, ``referenceToId``,
  CLOB/BLOB references and ``stringifiable``; ``ReferenceToObj`` for ``referenceToObj``;
  ``Set`` for ``array``/``bag``/``set``; ``NotAvailable`` (merge structurally, per key or
  property) for ``map`` and nested ``object``.  The presence of every object property and map
  entry is decided by ``OptionalValue`` first.

The built-in algorithms (clean-room, from the behaviour described in objects.md §4.4):

* **Register** (last writer wins): on each side find the top-most node that changed the value
  (its value differs from that of every predecessor; a ``VersionNodeEdge``'s predecessor is
  the artificial empty node).  A side that changed it beats one that did not; then the larger
  ``creationTime`` wins, then the lexicographically larger node hash.  Untouched on both
  sides: the common history's value.
* **Set** (arrays, bags, sets): per element (identified by its canonical form) find on each
  side the top-most node that added or removed it; a node with an ``add`` outranks one without
  (add wins over a concurrent remove regardless of time), then one with a ``remove`` outranks
  one without, then ``creationTime``, then node hash; the winner's op decides presence.
  Elements untouched on both sides follow the common history; elements in both heads stay.
  Arrays and bags lose order and duplicates (objects.md §9 quirk 25): the result lists the
  left head's surviving elements in their order, then the right head's new ones.
* **OptionalValue** (presence of a property / map entry): both heads have it -> merge the
  value; only one has it -> it stays if that side set it, it goes if the other side deleted
  it and this side did not touch it.
* **ReferenceToObj**: if both references point to stored objects of the same type, merge
  those objects recursively (paths continue into the referenced object), store the result as
  a new object and reference it; otherwise LWW like ``Register``.
* **NotAvailable**: no algorithm for the whole value; maps and objects merge per key/property.

Further algorithms are registered by id with :func:`register_algorithm` (one.models
registers ``LinkedListCrdtAlgorithm`` for ``ChannelInfo``'s ``head#referenceToObj``, see
app-layer.md §2.6).  An algorithm is a callable (or an object with a ``merge`` method)::

    algorithm(ctx: MergeContext, path: tuple, itemtype: dict, base, left, right) -> value

where ``base``/``left``/``right`` are the values at ``path`` in the common history and the two
heads (:data:`ABSENT` when missing).  "left" is the head with the smaller node hash, not the
local one, so every peer merging the same two heads gets the same result.  It may return :data:`ABSENT`, read objects with
``ctx.load(hash)``, add objects to be stored with the merge result with ``ctx.add_object``,
and inspect the graph through ``ctx.history`` (``left_head``, ``right_head``,
``side("left")``...).
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from lama._core import core
from lama.errors import LamaError, NotFoundError, RecipeError


class ObjectSource(Protocol):
    """What a merge reads: objects by hash (a :class:`lama.store.Store`, or a store seen
    together with the objects of a batch not written yet)."""

    def get_object(self, hash: str) -> dict[str, Any]: ...


__all__ = [
    "ABSENT",
    "EMPTY_NODE",
    "MergeContext",
    "MergeHistory",
    "VersionNode",
    "algorithm_ids",
    "get_algorithm",
    "merge_objects",
    "register_algorithm",
    "resolve_algorithm_id",
    "unregister_algorithm",
]

MAX_REFERENCE_DEPTH = 16
"""How deep ``ReferenceToObj`` follows references before falling back to LWW."""


class _Absent:
    """The marker for "no value at this path" (absent optional property, missing key)."""

    _instance: "_Absent | None" = None

    def __new__(cls) -> "_Absent":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Any = _Absent()


# --------------------------------------------------------------------------------------------
# Version nodes and the merge history


@dataclass(frozen=True)
class VersionNode:
    """A parsed version node (objects.md §4.1).

    ``kind`` is ``"edge"``, ``"change"`` or ``"merge"``; ``parents`` is empty for an edge, the
    ``prev`` of a change, the sorted ``nodes`` of a merge.
    """

    hash: str
    kind: str
    data: str
    depth: int | float
    creation_time: int | float
    parents: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        return {"edge": "VersionNodeEdge", "change": "VersionNodeChange", "merge": "VersionNodeMerge"}[
            self.kind
        ]

    def rank(self) -> tuple[Any, str]:
        """The LWW order of objects.md §4.4: larger ``creationTime``, then larger node hash."""
        return (self.creation_time, self.hash)

    def to_object(self) -> dict[str, Any]:
        """The ONE object of this node (VersionNodeEdge / Change / Merge)."""
        if self.kind == "edge":
            return {
                "$type$": "VersionNodeEdge",
                "data": self.data,
                "depth": self.depth,
                "creationTime": self.creation_time,
            }
        if self.kind == "change":
            return {
                "$type$": "VersionNodeChange",
                "prev": self.parents[0],
                "data": self.data,
                "depth": self.depth,
                "creationTime": self.creation_time,
            }
        return {
            "$type$": "VersionNodeMerge",
            "nodes": set(self.parents),
            "data": self.data,
            "depth": self.depth,
            "creationTime": self.creation_time,
        }


EMPTY_NODE = VersionNode(hash="", kind="empty", data="", depth=-1, creation_time=-math.inf)
"""The artificial predecessor of every VersionNodeEdge (its value is absent everywhere)."""


@dataclass
class MergeHistory:
    """The part of the version graph a merge looks at.

    ``left``/``right`` are the nodes reachable from one head but not the other, ordered
    top-most first (depth, then creationTime, then hash, descending); ``nodes`` holds every
    loaded node (also common ones, which are needed as predecessors); ``base`` is the object
    of the common history (:data:`ABSENT` when the heads share no history).
    """

    left_head: VersionNode
    right_head: VersionNode
    left: list[VersionNode]
    right: list[VersionNode]
    nodes: dict[str, VersionNode]
    base: Any = ABSENT

    def side(self, name: str) -> list[VersionNode]:
        if name == "left":
            return self.left
        if name == "right":
            return self.right
        raise ValueError(f"side must be 'left' or 'right', not {name!r}")

    def parents(self, node: VersionNode) -> list[VersionNode]:
        """The predecessors of ``node``; ``[EMPTY_NODE]`` for an edge."""
        if not node.parents:
            return [EMPTY_NODE]
        return [self.nodes[p] for p in node.parents]


# --------------------------------------------------------------------------------------------
# Algorithm registry

Algorithm = Callable[["MergeContext", tuple, dict, Any, Any, Any], Any]

_REGISTRY: dict[str, Algorithm] = {}
_REGISTRY_LOCK = threading.Lock()
_BUILTIN_IDS = ("Register", "Set", "OptionalValue", "ReferenceToObj", "NotAvailable")


def register_algorithm(algorithm_id: str, algorithm: Any, *, replace: bool = False) -> None:
    """Register a CRDT algorithm under ``algorithm_id`` (the id used in ``crdtConfig``).

    ``algorithm`` is a callable ``(ctx, path, itemtype, base, left, right) -> value`` or an
    object with such a ``merge`` method.  Re-registering an id raises
    :class:`lama.RecipeError` (``LAMA-CRDT1``) unless ``replace`` is set or it is the same
    algorithm; the built-in ids cannot be replaced.
    """
    if not isinstance(algorithm_id, str) or not algorithm_id:
        raise RecipeError("an algorithm id must be a non-empty string", code="LAMA-CRDT1")
    fn = algorithm if callable(algorithm) and not hasattr(algorithm, "merge") else getattr(
        algorithm, "merge", None
    )
    if not callable(fn):
        raise RecipeError(
            f"algorithm {algorithm_id!r} is neither callable nor has a merge method", code="LAMA-CRDT1"
        )
    with _REGISTRY_LOCK:
        old = _REGISTRY.get(algorithm_id)
        if old is not None and old != fn:
            if algorithm_id in _BUILTIN_IDS or not replace:
                raise RecipeError(
                    f"a different CRDT algorithm is already registered as {algorithm_id!r}",
                    code="LAMA-CRDT1",
                )
        _REGISTRY[algorithm_id] = fn


def unregister_algorithm(algorithm_id: str) -> None:
    """Remove a registered (non built-in) algorithm; unknown ids are ignored."""
    if algorithm_id in _BUILTIN_IDS:
        raise RecipeError(f"built-in CRDT algorithm {algorithm_id!r} cannot be removed", code="LAMA-CRDT1")
    with _REGISTRY_LOCK:
        _REGISTRY.pop(algorithm_id, None)


def get_algorithm(algorithm_id: str) -> Algorithm:
    """The algorithm registered under ``algorithm_id`` (RecipeError ``LAMA-CRDT2`` if none)."""
    try:
        return _REGISTRY[algorithm_id]
    except KeyError:
        raise RecipeError(f"no CRDT algorithm registered as {algorithm_id!r}", code="LAMA-CRDT2") from None


def algorithm_ids() -> list[str]:
    """Ids of all registered algorithms, built-in ones first."""
    return list(_REGISTRY)


# --------------------------------------------------------------------------------------------
# crdtConfig path patterns


def resolve_algorithm_id(
    config: Sequence[tuple[str, str]] | Mapping[str, str], path: Sequence[Any], value_type: str
) -> str | None:
    """The algorithm id ``crdtConfig`` gives for ``path`` holding a value of ``value_type``.

    Exact ``path#type`` first, then exact ``path``, then wildcard patterns with the same
    number of segments: every segment but the last is ``*`` or equal; the last is scored
    ``name#type`` > ``*#type`` > ``name`` > ``*``; among equal scores the pattern with more
    literal segments wins, then the first in configuration order.  ``None`` if nothing
    matches (the type's default applies).
    """
    pairs = list(config.items()) if isinstance(config, Mapping) else list(config)
    if not pairs or not path:
        return None
    segs = [str(s) for s in path]
    joined = ".".join(segs)
    exact = dict(pairs)
    if f"{joined}#{value_type}" in exact:
        return exact[f"{joined}#{value_type}"]
    if joined in exact:
        return exact[joined]
    best: tuple[int, int] | None = None
    best_id: str | None = None
    for pattern, alg_id in pairs:
        psegs = pattern.split(".")
        if len(psegs) != len(segs):
            continue
        if any(p != "*" and p != s for p, s in zip(psegs[:-1], segs[:-1])):
            continue
        name, has_type, typ = psegs[-1].partition("#")
        if has_type and typ != value_type:
            continue
        if name != "*" and name != segs[-1]:
            continue
        literal_name = name != "*"
        score = (4 if has_type else 2) if literal_name else (3 if has_type else 1)
        literals = sum(1 for p in psegs[:-1] if p != "*")
        key = (score, literals)
        if best is None or key > best:
            best, best_id = key, alg_id
    return best_id


# --------------------------------------------------------------------------------------------
# Recipes: rules with inheritance resolved -- by the core (``resolved_recipe``, objects.md §1.9),
# so the merge sees exactly the types the serializer uses.

_RECIPES: dict[str, dict[str, Any]] = {}


def _recipe(type_name: str) -> dict[str, Any]:
    """The resolved recipe: every rule (nested too) with itemprop, itemtype, optional, isId.
    Cached: a registered recipe never changes (a different one under its name is OR-ADDR1)."""
    r = _RECIPES.get(type_name)
    if r is None:
        r = json.loads(core.resolved_recipe(type_name))
        _RECIPES[type_name] = r
    return r


def _crdt_config(type_name: str) -> list[tuple[str, str]]:
    cfg = _recipe(type_name).get("crdtConfig")
    if not cfg:
        return []
    return [(str(k), str(v)) for k, v in cfg["$map"]]


def _rule_itemtype(rule: dict[str, Any]) -> dict[str, Any]:
    return rule["itemtype"]


def object_itemtype(type_name: str) -> dict[str, Any]:
    """The itemtype of a whole top-level object of ``type_name`` (its recipe's rules)."""
    return {"type": "object", "rules": _recipe(type_name)["rule"], "typeName": type_name}


# --------------------------------------------------------------------------------------------
# Canonical forms (element identity and value comparison)


def _norm(v: Any) -> Any:
    if v is ABSENT or v is None:
        return ["\x00absent"]
    if isinstance(v, bool):
        return ["\x00bool", v]
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return ["\x00num", "NaN"]
        if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
            v = int(v)
        return ["\x00num", repr(v)]
    if isinstance(v, str):
        return v
    if isinstance(v, (set, frozenset)):
        return ["\x00set", sorted(canon(x) for x in v)]
    if isinstance(v, (list, tuple)):
        return ["\x00list", [_norm(x) for x in v]]
    if isinstance(v, dict):
        return ["\x00map", [[canon(k), _norm(x)] for k, x in v.items()]]
    return ["\x00other", repr(v)]


def canon(v: Any) -> str:
    """A canonical string of a value: equal strings <=> equal ONE values (element identity)."""
    return json.dumps(_norm(v), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


# --------------------------------------------------------------------------------------------
# The merge context


@dataclass
class MergeContext:
    """State of one merge: the store, the history and the objects the merge creates."""

    store: ObjectSource
    history: MergeHistory
    type_name: str
    new_objects: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[str, Any] = field(default_factory=dict)
    _scopes: list[tuple[tuple, list[tuple[str, str]]]] = field(default_factory=list)
    _value_cache: dict[tuple[str, tuple], str] = field(default_factory=dict)
    _ref_depth: int = 0

    # -- objects ---------------------------------------------------------------------------

    def load(self, hash_: str) -> dict[str, Any] | None:
        """The object stored (or created by this merge) under ``hash_``; ``None`` if missing."""
        if hash_ in self.objects:
            return self.objects[hash_]
        try:
            obj = self.store.get_object(hash_)
        except NotFoundError:
            obj = None
        except LamaError:
            obj = None
        self.objects[hash_] = obj
        return obj

    def add_object(self, obj: dict[str, Any]) -> str:
        """Queue ``obj`` to be stored together with the merge result; returns its hash."""
        h: str = core.object_hash(obj)
        if h not in self.objects or self.objects[h] is None:
            self.objects[h] = obj
        self.new_objects.append(obj)
        return h

    def node_object(self, node: VersionNode) -> Any:
        """The data object of a version node (:data:`ABSENT` for the empty node)."""
        if node is EMPTY_NODE or node.kind == "empty":
            return ABSENT
        obj = self.load(node.data)
        if obj is None:
            raise NotFoundError(f"data {node.data} of version node {node.hash} is missing", code="SB-READ2")
        return obj

    # -- values by path ----------------------------------------------------------------------

    def value_at(self, obj: Any, path: Sequence[Any]) -> Any:
        """The value at ``path`` inside ``obj``, following object references; ABSENT if none."""
        cur = obj
        for seg in path:
            if cur is ABSENT or cur is None:
                return ABSENT
            if isinstance(cur, str):
                loaded = self.load(cur) if len(cur) == 64 else None
                if loaded is None:
                    return ABSENT
                cur = loaded
            if isinstance(cur, dict):
                cur = cur.get(seg, ABSENT)
            else:
                return ABSENT
        return ABSENT if cur is None else cur

    def node_value(self, node: VersionNode, path: Sequence[Any]) -> Any:
        return self.value_at(self.node_object(node), path)

    def base_value(self, path: Sequence[Any]) -> Any:
        return self.value_at(self.history.base, path)

    def _node_canon(self, node: VersionNode, path: tuple) -> str:
        key = (node.hash, path)
        c = self._value_cache.get(key)
        if c is None:
            c = canon(self.node_value(node, path))
            self._value_cache[key] = c
        return c

    def changed_by(self, node: VersionNode, path: Sequence[Any]) -> bool:
        """True if ``node``'s value at ``path`` differs from that of every predecessor."""
        p = tuple(path)
        mine = self._node_canon(node, p)
        return all(self._node_canon(parent, p) != mine for parent in self.history.parents(node))

    def top_change(self, side: str, path: Sequence[Any]) -> VersionNode | None:
        """The top-most node on ``side`` that changed the value at ``path`` (None: untouched)."""
        for node in self.history.side(side):
            if self.changed_by(node, path):
                return node
        return None

    def element_touches(self, side: str, path: Sequence[Any], keys: Iterable[str]) -> dict[str, tuple[VersionNode, str]]:
        """For each element key: the top-most node on ``side`` adding/removing it, and the op."""
        wanted = set(keys)
        found: dict[str, tuple[VersionNode, str]] = {}
        key_sets: dict[str, set[str]] = {}

        def elements(node: VersionNode) -> set[str]:
            s = key_sets.get(node.hash)
            if s is None:
                s = set(_element_map(self.node_value(node, path)))
                key_sets[node.hash] = s
            return s

        for node in self.history.side(side):
            if len(found) == len(wanted):
                break
            mine = elements(node)
            parents = [elements(p) for p in self.history.parents(node)]
            for k in wanted - found.keys():
                present = k in mine
                if all((k in ps) != present for ps in parents):
                    found[k] = (node, "add" if present else "remove")
        return found

    # -- dispatch --------------------------------------------------------------------------

    def _config_for(self, path: tuple) -> tuple[tuple, list[tuple[str, str]]]:
        for prefix, cfg in reversed(self._scopes):
            if path[: len(prefix)] == prefix:
                return prefix, cfg
        return (), []

    def algorithm_id(self, path: Sequence[Any], itemtype: dict[str, Any]) -> str:
        """The id of the algorithm for ``path`` (crdtConfig, else the type's default)."""
        p = tuple(path)
        prefix, cfg = self._config_for(p)
        t = str(itemtype.get("type", "string"))
        found = resolve_algorithm_id(cfg, p[len(prefix) :], t) if cfg else None
        return found if found is not None else default_algorithm_id(t)

    def merge_value(self, path: Sequence[Any], itemtype: dict[str, Any], base: Any, left: Any, right: Any) -> Any:
        """Merge the values at ``path`` with the algorithm configured for it."""
        alg = get_algorithm(self.algorithm_id(path, itemtype))
        return alg(self, tuple(path), itemtype, base, left, right)

    def merge_default(self, path: Sequence[Any], itemtype: dict[str, Any], base: Any, left: Any, right: Any) -> Any:
        """Merge with the type's default algorithm, ignoring crdtConfig."""
        alg = get_algorithm(default_algorithm_id(str(itemtype.get("type", "string"))))
        return alg(self, tuple(path), itemtype, base, left, right)

    def merge_property(self, path: Sequence[Any], itemtype: dict[str, Any], base: Any, left: Any, right: Any) -> Any:
        """Presence (``OptionalValue``) and then value of an object property or map entry."""
        return _optional_value(self, tuple(path), itemtype, base, left, right, configured=True)

    def merge_object(self, path: Sequence[Any], type_name: str, base: Any, left: Any, right: Any) -> dict[str, Any]:
        """Merge two whole objects of ``type_name`` at ``path`` with that type's crdtConfig."""
        p = tuple(path)
        self._scopes.append((p, _crdt_config(type_name)))
        try:
            return _not_available(self, p, object_itemtype(type_name), base, left, right)
        finally:
            self._scopes.pop()


def default_algorithm_id(value_type: str) -> str:
    """The default algorithm of a value type (objects.md §4.4 table)."""
    if value_type == "referenceToObj":
        return "ReferenceToObj"
    if value_type in ("array", "bag", "set"):
        return "Set"
    if value_type in ("map", "object"):
        return "NotAvailable"
    return "Register"


# --------------------------------------------------------------------------------------------
# Built-in algorithms


def _register(ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    if canon(left) == canon(right):
        return left
    lc = ctx.top_change("left", path)
    rc = ctx.top_change("right", path)
    if lc is None and rc is None:
        # Untouched on both sides yet different: only possible with a synthesized common
        # history; fall back to LWW between the heads.
        lc, rc = ctx.history.left_head, ctx.history.right_head
    if rc is None:
        return left
    if lc is None:
        return right
    return left if lc.rank() > rc.rank() else right


def _element_map(value: Any) -> dict[str, Any]:
    if value is ABSENT or value is None:
        return {}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=canon) if isinstance(value, (set, frozenset)) else value
        out: dict[str, Any] = {}
        for x in items:
            out.setdefault(canon(x), x)
        return out
    return {canon(value): value}


def _set(ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    if left is ABSENT and right is ABSENT:
        return ABSENT
    lmap, rmap, bmap = _element_map(left), _element_map(right), _element_map(base)
    # in both heads: kept; in neither: gone; in one: decided by the top-most add/remove
    undecided = [k for k in {**lmap, **rmap} if not (k in lmap and k in rmap)]
    ltouch = ctx.element_touches("left", path, undecided) if undecided else {}
    rtouch = ctx.element_touches("right", path, undecided) if undecided else {}
    keep: set[str] = {k for k in lmap if k in rmap}
    for k in undecided:
        lt, rt = ltouch.get(k), rtouch.get(k)
        if lt is None and rt is None:
            if k in bmap:
                keep.add(k)
            continue
        if lt is None or rt is None:
            winner = lt if rt is None else rt
        else:
            def order(t: tuple[VersionNode, str]) -> tuple[bool, bool, Any, str]:
                return (t[1] == "add", t[1] == "remove", t[0].creation_time, t[0].hash)

            winner = lt if order(lt) > order(rt) else rt
        assert winner is not None
        if winner[1] == "add":
            keep.add(k)
    ordered: dict[str, Any] = {}
    for m in (lmap, rmap, bmap):
        for k, v in m.items():
            if k in keep and k not in ordered:
                ordered[k] = v
    sample = left if left is not ABSENT else right
    if isinstance(sample, (set, frozenset)) or (
        itemtype.get("type") == "set" and all(_hashable(v) for v in ordered.values())
    ):
        return set(ordered.values())
    return list(ordered.values())


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _optional_value(
    ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any, configured: bool = False
) -> Any:
    if left is ABSENT and right is ABSENT:
        return ABSENT
    if left is not ABSENT and right is not ABSENT:
        if configured:
            return ctx.merge_value(path, itemtype, base, left, right)
        return ctx.merge_default(path, itemtype, base, left, right)
    present, other, value = ("left", "right", left) if right is ABSENT else ("right", "left", right)
    setter = ctx.top_change(present, path)
    deleter = ctx.top_change(other, path)
    if setter is None:
        # Not set on the side that has it: deleted on the other side -> gone; untouched on
        # both -> the common history.
        return ABSENT if deleter is not None else base
    return value


def _optional_value_algorithm(ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    return _optional_value(ctx, path, itemtype, base, left, right, configured=False)


def _not_available(ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    if left is ABSENT and right is ABSENT:
        return ABSENT
    if left is ABSENT or right is ABSENT or not isinstance(left, dict) or not isinstance(right, dict):
        return _register(ctx, path, itemtype, base, left, right)
    b = base if isinstance(base, dict) else {}
    if itemtype.get("type") == "map":
        vt = itemtype.get("value") or {"type": "string"}
        out: dict[Any, Any] = {}
        for k in dict.fromkeys([*left, *right, *b]):
            v = ctx.merge_property(path + (k,), vt, b.get(k, ABSENT), left.get(k, ABSENT), right.get(k, ABSENT))
            if v is not ABSENT:
                out[k] = v
        return out
    obj: dict[str, Any] = {}
    if "$type$" in left:
        obj["$type$"] = left["$type$"]
    for rule in itemtype.get("rules", []):
        prop = rule["itemprop"]
        v = ctx.merge_property(
            path + (prop,), _rule_itemtype(rule), b.get(prop, ABSENT), left.get(prop, ABSENT), right.get(prop, ABSENT)
        )
        if v is not ABSENT:
            obj[prop] = v
    return obj


def _reference_to_obj(ctx: MergeContext, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    if canon(left) == canon(right):
        return left
    if isinstance(left, str) and isinstance(right, str) and ctx._ref_depth < MAX_REFERENCE_DEPTH:
        lo, ro = ctx.load(left), ctx.load(right)
        if lo is not None and ro is not None and lo.get("$type$") == ro.get("$type$"):
            type_name = str(lo["$type$"])
            if not type_name.startswith("VersionNode"):
                bo = ctx.load(base) if isinstance(base, str) else None
                if bo is not None and bo.get("$type$") != type_name:
                    bo = None
                ctx._ref_depth += 1
                try:
                    merged = ctx.merge_object(path, type_name, ABSENT if bo is None else bo, lo, ro)
                finally:
                    ctx._ref_depth -= 1
                return ctx.add_object(merged)
    return _register(ctx, path, itemtype, base, left, right)


for _id, _fn in (
    ("Register", _register),
    ("Set", _set),
    ("OptionalValue", _optional_value_algorithm),
    ("ReferenceToObj", _reference_to_obj),
    ("NotAvailable", _not_available),
):
    _REGISTRY[_id] = _fn


# --------------------------------------------------------------------------------------------
# Entry point


def merge_objects(store: ObjectSource, history: MergeHistory, type_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Merge the data of ``history.left_head`` and ``history.right_head``.

    Returns ``(merged object, further objects to store with it)``; nothing is written.
    """
    ctx = MergeContext(store=store, history=history, type_name=type_name)
    left = ctx.node_object(history.left_head)
    right = ctx.node_object(history.right_head)
    merged = ctx.merge_object((), type_name, history.base, left, right)
    merged = {"$type$": type_name, **{k: v for k, v in merged.items() if k != "$type$"}}
    return merged, ctx.new_objects


# The channel list algorithm named by the built-in ChannelInfo recipe's crdtConfig
# (app-layer.md §2.6) is always available; it registers itself on import.
from lama.objects import linkedlist as _linkedlist  # noqa: E402,F401
