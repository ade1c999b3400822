"""Versioned objects: version nodes, the version tree, current versions, history, merges.

objects.md §4: every ID hash has a DAG of unversioned version nodes - ``VersionNodeEdge``
(a root), ``VersionNodeChange`` (one predecessor ``prev``) and ``VersionNodeMerge`` (a set of
predecessors ``nodes``) - each pointing with ``data`` at one concrete version of the object.
The store's version head (``vheads``) names the head node; the current version is that node's
``data``.

* :func:`store_versioned` stores a new version (§4.2).  Nothing is written when the head
  already has this data.  The first version gets a ``VersionNodeEdge``.  Mode ``"change"`` (a
  local edit, the default) appends a ``VersionNodeChange`` to the head; mode ``"merge"``
  (remote or concurrent data) stores a ``VersionNodeEdge`` for the data and merges it with
  the head (§4.3): if one contains the other the head stays or fast-forwards, otherwise the
  CRDT engine (:mod:`lama.objects.crdt`, §4.4) computes the merged object, which is stored (no node of
  its own) and referenced by a ``VersionNodeMerge{nodes: {head, edge}, depth: max+1,
  creationTime: max}`` that becomes the head (§9 quirk 18).
* :func:`merge_remote_version` is the import path (§6.6, §9 quirk 17): a version received
  from a peer is merged through a *local* ``VersionNodeEdge`` carrying the remote node's
  ``creationTime``.
* :func:`merge_node` merges an already stored version node (another branch's head) into the
  head: nothing if the head contains it, fast-forward if it contains the head, else as above.
  CHUM's import uses it for the fetched remote node (lama.chum.handle_event), so peers share
  one version graph and agree on merges where the reference diverges (§9 quirk 17).  A merge
  depends only on the two heads (the one with the smaller hash is "left"), never on which is
  local.
* :func:`current`, :func:`current_hash`, :func:`current_version`, :func:`head_node` read the
  head; :func:`history` lists the versions oldest first, merge nodes excluded (§4.1 walk).

Writes go through ``Store.write_batch`` - one transaction that stores the objects and
compare-and-sets the head - under a per-(store, ID hash) lock.  A lost race (another process
moved the head) raises ``ConflictError`` inside; the operation re-reads the head and retries a
bounded number of times, so concurrent writers never lose an update.  (Deliberately not copied:
the reference's create-exclusive vhead write in the single-remaining-node merge path, §9
quirk 19 - here the head always moves.)

Timestamps are integers, milliseconds since the epoch.
"""

from __future__ import annotations

import heapq
import functools
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from lama.objects import crdt
from lama._core import Store, core
from lama.objects.crdt import ABSENT, MergeHistory, VersionNode
from lama.errors import ConflictError, InvalidArgumentError, MicrodataError, NotFoundError

__all__ = [
    "MAX_ATTEMPTS",
    "Version",
    "VersionNode",
    "VersionResult",
    "current",
    "current_hash",
    "current_version",
    "head_node",
    "history",
    "load_node",
    "merge_node",
    "merge_remote_version",
    "now_ms",
    "store_versioned",
    "update_versioned",
]

MAX_ATTEMPTS = 32
"""How often a write re-reads the head and retries after losing a compare-and-set race."""

_NODE_KINDS = {"VersionNodeEdge": "edge", "VersionNodeChange": "change", "VersionNodeMerge": "merge"}


@functools.lru_cache(maxsize=256)
def _real_path(path: str) -> str:
    """The store's real path (a few lstat calls), once per path: it was a tenth of a single
    post's Python time (issue 10)."""
    return os.path.realpath(path)


@dataclass(frozen=True)
class VersionResult:
    """Result of storing a version (objects.md §2.4 plus the version node).

    ``hash``/``id_hash``: the stored object and its ID hash; ``status``: ``"new"`` if the
    object itself was newly written, ``"exists"`` otherwise; ``node_hash``: the version node
    whose ``data`` is this object (the existing head when nothing was written); ``timestamp``:
    that node's ``creationTime``; ``head``: the head node after the operation (a merge node
    after a CRDT merge); ``merged``: the data hash of the head (differs from ``hash`` after a
    merge).
    """

    hash: str
    id_hash: str
    status: str
    node_hash: str
    timestamp: int | float
    head: str
    merged: str


@dataclass(frozen=True)
class Version:
    """One listed version: the object ``hash``, its node and the node's ``creationTime``."""

    hash: str
    node_hash: str
    kind: str
    depth: int | float
    timestamp: int | float


def now_ms() -> int:
    """Milliseconds since the epoch (``Date.now()``)."""
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------
# Per-ID locks

class _IdLocks:
    """One lock per (store, ID hash) while someone writes that ID, dropped after the last one.

    The compare-and-set on the version head (``write_batch``) is what keeps concurrent writers
    correct; the lock only spares them merges that would lose the race.  Entries live while
    they are held (a sync server touches millions of IDs over its life: nothing may grow
    without bound).  Keyed by the store's real path because every ``Store`` handle of one path
    in a process shares one LMDB environment, and so one head.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[tuple[str, str], list[Any]] = {}  # key -> [lock, users]

    @contextmanager
    def hold(self, store: Store, id_hash: str) -> Iterator[None]:
        key = (_real_path(store.path), id_hash)
        with self._guard:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = [threading.Lock(), 0]
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._held[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._held)


_ID_LOCKS = _IdLocks()


# --------------------------------------------------------------------------------------------
# Reading nodes


def _check_time(value: Any, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise MicrodataError(f"{what} must be a number of milliseconds, got {value!r}", code="O2M-RTYC1")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def node_from_object(node_hash: str, obj: dict[str, Any]) -> VersionNode:
    """A :class:`VersionNode` from a parsed version node object."""
    kind = _NODE_KINDS.get(obj.get("$type$", ""))
    if kind is None:
        raise MicrodataError(f"{node_hash} is a {obj.get('$type$')}, not a version node", code="LAMA-VNODE")
    if kind == "edge":
        parents: tuple[str, ...] = ()
    elif kind == "change":
        parents = (obj["prev"],) if obj.get("prev") else ()
    else:
        parents = tuple(sorted(obj.get("nodes", ())))
    return VersionNode(
        hash=node_hash,
        kind=kind,
        data=obj["data"],
        depth=obj["depth"],
        creation_time=obj["creationTime"],
        parents=parents,
    )


def load_node(store: Store, node_hash: str) -> VersionNode:
    """Load and parse the version node ``node_hash`` (NotFoundError if missing)."""
    return node_from_object(node_hash, store.get_object(core.check_hash(node_hash, "a version node hash")))


def _make_node(kind: str, data: str, depth: int | float, creation_time: int | float, parents: tuple[str, ...] = ()) -> VersionNode:
    """A new node (not stored) with its hash; a merge node's members are kept sorted."""
    if kind == "merge":
        parents = tuple(sorted(parents))
    proto = VersionNode("", kind, data, depth, creation_time, parents)
    return VersionNode(core.object_hash(proto.to_object()), kind, data, depth, creation_time, parents)


# --------------------------------------------------------------------------------------------
# Reading versions


def head_node(store: Store, id_hash: str) -> VersionNode | None:
    """The head version node of ``id_hash``, or ``None`` if it has no version."""
    head = store.get_head(core.check_hash(id_hash, "an ID hash"))
    return None if head is None else load_node(store, head)


def current_hash(store: Store, id_hash: str) -> str | None:
    """Hash of the current version of ``id_hash`` (the head node's ``data``), or ``None``."""
    node = head_node(store, id_hash)
    return None if node is None else node.data


def current_version(store: Store, id_hash: str) -> Version | None:
    """The current version with its node and timestamp (``creationTime``), or ``None``."""
    node = head_node(store, id_hash)
    if node is None:
        return None
    return Version(hash=node.data, node_hash=node.hash, kind=node.kind, depth=node.depth, timestamp=node.creation_time)


def current(store: Store, id_hash: str) -> dict[str, Any]:
    """The current version of ``id_hash`` as an object (NotFoundError ``SB-READ2`` if none)."""
    h = current_hash(store, id_hash)
    if h is None:
        raise NotFoundError(f"no version of ID hash {id_hash} is stored", code="SB-READ2")
    return store.get_object(h)


def _walk_versions(store: Store, start: str) -> Iterator[VersionNode]:
    """objects.md §4.1 walk from ``start``: Edge -> itself; Change -> itself then prev...;
    Merge -> the walks of its members (sorted), not itself.  Nodes met again are skipped."""
    stack = [start]
    seen: set[str] = set()
    while stack:
        h = stack.pop()
        while h is not None and h not in seen:
            seen.add(h)
            node = load_node(store, h)
            if node.kind == "merge":
                stack.extend(reversed(node.parents))
                break
            yield node
            h = node.parents[0] if node.parents else None  # type: ignore[assignment]


def history(store: Store, id_hash: str) -> list[Version]:
    """All versions of ``id_hash``, oldest first, merge nodes excluded (objects.md §4.1)."""
    head = store.get_head(core.check_hash(id_hash, "an ID hash"))
    if head is None:
        return []
    nodes = list(_walk_versions(store, head))
    nodes.reverse()
    return [
        Version(hash=n.data, node_hash=n.hash, kind=n.kind, depth=n.depth, timestamp=n.creation_time)
        for n in nodes
    ]


# --------------------------------------------------------------------------------------------
# The version graph of a merge (objects.md §4.3 step 3)

_LEFT, _RIGHT, _STALE = 1, 2, 4
_BOTH = _LEFT | _RIGHT


class _Graph:
    """Nodes reachable from two heads, painted by which head reaches them.

    Nodes are visited deepest first (a node's depth exceeds its predecessors'), so a node's
    paint is final when it is popped; the walk stops once only common nodes are queued.
    """

    def __init__(self, store: Store, pending: dict[str, VersionNode]):
        self.store = store
        self.nodes: dict[str, VersionNode] = dict(pending)

    def node(self, h: str) -> VersionNode:
        n = self.nodes.get(h)
        if n is None:
            n = self.nodes[h] = load_node(self.store, h)
        return n

    def paint(self, left: str, right: str) -> tuple[dict[str, int], list[str], list[str], list[str]]:
        flags: dict[str, int] = {left: _LEFT}
        flags[right] = flags.get(right, 0) | _RIGHT
        heap: list[tuple[Any, Any, str]] = []
        queued: set[str] = set()

        def push(h: str) -> None:
            if h not in queued:
                n = self.node(h)
                heapq.heappush(heap, (-n.depth, _neg_rank(n), h))
                queued.add(h)

        push(left)
        push(right)
        left_only: list[str] = []
        right_only: list[str] = []
        bases: list[str] = []
        while heap and any(not flags[h] & _STALE for _, _, h in heap):
            _, _, h = heapq.heappop(heap)
            queued.discard(h)
            f = flags[h]
            if f & _BOTH == _BOTH:
                if not f & _STALE:
                    bases.append(h)
                    f |= _STALE
                    flags[h] = f
            elif f & _LEFT:
                left_only.append(h)
            else:
                right_only.append(h)
            for p in self.node(h).parents:
                nf = flags.get(p, 0) | f
                if nf != flags.get(p):
                    flags[p] = nf
                    push(p)
        return flags, left_only, right_only, bases


def _neg_rank(n: VersionNode) -> tuple[Any, str]:
    # heapq is a min-heap: invert creationTime; for the hash use a complement so that the
    # larger hash comes first among equal depth and time.
    return (-n.creation_time, "".join(chr(0x7F - ord(c)) for c in n.hash))


def _base_object(store: Store, graph: _Graph, bases: list[str], type_name: str, depth: int, extra: list[dict[str, Any]]) -> Any:
    """The object of the common history: none -> ABSENT; one base -> its data; several
    (criss-cross merges) -> the CRDT merge of the two deepest ones, a virtual base that is
    not a version of its own (further bases are ignored; nesting is bounded)."""
    if not bases:
        return ABSENT
    if len(bases) == 1 or depth >= 4:
        return store.get_object(graph.node(bases[0]).data)
    sub = _Graph(store, graph.nodes)
    history = _history(store, sub, graph.node(bases[0]), graph.node(bases[1]), type_name, depth + 1, extra)
    obj, objs = crdt.merge_objects(store, history, type_name)
    extra.extend(objs)
    return obj


def _history(
    store: Store,
    graph: _Graph,
    left: VersionNode,
    right: VersionNode,
    type_name: str,
    depth: int,
    extra: list[dict[str, Any]],
    painted: tuple[dict[str, int], list[str], list[str], list[str]] | None = None,
) -> MergeHistory:
    _, left_only, right_only, bases = painted or graph.paint(left.hash, right.hash)
    base = _base_object(store, graph, bases, type_name, depth, extra)
    return MergeHistory(
        left_head=left,
        right_head=right,
        left=[graph.node(h) for h in left_only],
        right=[graph.node(h) for h in right_only],
        nodes=graph.nodes,
        base=base,
    )


@dataclass
class _Plan:
    objects: list[dict[str, Any]]
    head: str
    merged: str


def _plan_merge(store: Store, type_name: str, head: VersionNode, new: VersionNode, pending: dict[str, VersionNode], data_objects: dict[str, dict[str, Any]]) -> _Plan:
    """objects.md §4.3: merge node ``new`` (not yet stored) into ``head``."""
    if head.hash == new.hash:
        return _Plan([], head.hash, head.data)
    graph = _Graph(store, pending)
    painted = graph.paint(head.hash, new.hash)
    flags = painted[0]
    if flags.get(new.hash, 0) & _LEFT:
        return _Plan([], head.hash, head.data)  # the head already contains it
    if flags.get(head.hash, 0) & _RIGHT:
        return _Plan([], new.hash, new.data)  # fast-forward
    extra: list[dict[str, Any]] = []
    # The merge is a function of the two heads, not of which one is local: the head with the
    # smaller hash is always "left".  Array/bag order (objects.md §9 quirk 25) and every other
    # asymmetry then come out the same on every peer that merges the same two nodes, so the
    # merged data and the VersionNodeMerge (nodes is a set, depth max+1, creationTime max) are
    # byte-identical there, and two peers never ping-pong ever-new merges of one pair.
    left, right = (head, new) if head.hash < new.hash else (new, head)
    if left is not head:
        painted = graph.paint(left.hash, right.hash)
    history = _history(store, graph, left, right, type_name, 0, extra, painted)
    ctx_store = _OverlayStore(store, data_objects)
    merged, objs = crdt.merge_objects(ctx_store, history, type_name)
    merged_hash: str = core.object_hash(merged)
    node = _make_node(
        "merge",
        merged_hash,
        max(head.depth, new.depth) + 1,
        max(head.creation_time, new.creation_time),
        (head.hash, new.hash),
    )
    return _Plan([*extra, *objs, merged, node.to_object()], node.hash, merged_hash)


class _OverlayStore:
    """Read access to a store plus objects of the current batch that are not written yet."""

    def __init__(self, store: Store, objects: dict[str, dict[str, Any]]):
        self._store = store
        self._objects = objects

    def get_object(self, hash: str) -> dict[str, Any]:
        obj = self._objects.get(hash)
        if obj is not None:
            return obj
        return self._store.get_object(hash)


# --------------------------------------------------------------------------------------------
# Writing versions


def store_versioned(store: Store, obj: dict[str, Any], *, mode: str = "change", timestamp_ms: int | float | None = None) -> VersionResult:
    """Store ``obj`` (a versioned object) as a new version (objects.md §4.2).

    ``mode`` is ``"change"`` (local edit: a ``VersionNodeChange`` on the head) or ``"merge"``
    (remote/concurrent data: a ``VersionNodeEdge`` CRDT-merged with the head).
    ``timestamp_ms`` is the node's ``creationTime`` (default: now).  Raises
    ``MicrodataError O2M-COBJ1`` for an unversioned type.
    """
    if mode not in ("change", "merge"):
        raise InvalidArgumentError(f"mode must be 'change' or 'merge', not {mode!r}", code="LAMA-ARG")
    ts = None if timestamp_ms is None else _check_time(timestamp_ms, "timestamp_ms")
    if not isinstance(obj, dict):
        raise MicrodataError(f"a versioned object must be a dict, not {type(obj).__name__}", code="O2M-CONV")
    id_hash: str = core.id_hash(obj)
    h: str = core.object_hash(obj)
    return _store_data(store, str(obj["$type$"]), h, id_hash, obj, mode, ts)



def update_versioned(
    store: Store,
    id_hash: str,
    build: Any,
    *,
    timestamp_ms: int | float | None = None,
    force: bool = False,
    posts: Any = None,
    known: dict[str, tuple[VersionNode, dict[str, Any]]] | None = None,
) -> VersionResult:
    """A local edit derived from the current version, written with other objects in ONE
    transaction (objects.md §4.2, CHANGE mode).

    ``build(current)`` gets the current version (``None`` if there is none) and returns
    ``(new_version, extra_objects)``; ``extra_objects`` (e.g. the entries a channel post
    creates, app-layer.md §2.4) are stored in the same ``write_batch`` as the version and its
    node.  It runs under the ID's lock and again after a lost compare-and-set race, so it must
    be a pure function of ``current``.  This is the write path of a chat post: one transaction
    per post instead of one per object.

    ``force`` writes the change node even when the data equals the head's: a head that is a
    local ``VersionNodeMerge`` is never exported (objects.md §6.2 item 3), so a merged state
    reaches a third replica only through such a change node on top of it.

    ``posts`` (a ``core.chat_posts`` batch, issue 10) is written first in the same transaction
    (``core.chat_commit``): the objects of a chat post built in the core, not as dicts.

    ``known`` (a dict the caller keeps per ID, empty at first) remembers the node and data of
    the version this call wrote; while the head is still that node, the next call takes them
    from there instead of reading both again (a node and its data are content-addressed, so
    they cannot differ from the stored ones; another writer moves the head, and then they are
    read). It saves a chat sender two reads per post (issue 10)."""
    core.check_hash(id_hash, "an ID hash")
    ts = None if timestamp_ms is None else _check_time(timestamp_ms, "timestamp_ms")
    with _ID_LOCKS.hold(store, id_hash):
        for _attempt in range(MAX_ATTEMPTS):
            head_hash = store.get_head(id_hash)
            hit = None if known is None or head_hash is None else known.get(head_hash)
            head: VersionNode | None
            cur: dict[str, Any] | None
            if hit is not None:
                head, cur = hit[0], dict(hit[1])
            else:
                head = None if head_hash is None else load_node(store, head_hash)
                cur = None if head is None else store.get_object(head.data)
            obj, extra = build(cur)
            if core.id_hash(obj) != id_hash:
                raise InvalidArgumentError(f"the new version is not a version of {id_hash}", code="LAMA-ARG")
            h: str = core.object_hash(obj)
            if head is not None and head.data == h and not force:
                if posts is not None:
                    core.chat_commit(store, posts, list(extra), [])
                elif extra:
                    store.put_objects(list(extra))
                return VersionResult(h, id_hash, "exists", head.hash, head.creation_time, head.hash, head.data)
            t = ts if ts is not None else now_ms()
            if head is None:
                node = _make_node("edge", h, 0, t)
            else:
                node = _make_node("change", h, head.depth + 1, t, (head.hash,))
            try:
                objs = [*extra, obj, node.to_object()]
                heads = [(id_hash, head_hash, node.hash)]
                if posts is not None:
                    results = core.chat_commit(store, posts, objs, heads)
                else:
                    results = store.write_batch(objs, heads)
            except ConflictError:
                continue
            if known is not None:
                known.clear()
                known[node.hash] = (node, dict(obj))
            status = next((r[1] for r in results if r[0] == h), "exists")
            return VersionResult(h, id_hash, status, node.hash, node.creation_time, node.hash, h)
    raise ConflictError(
        f"gave up storing a version of {id_hash} after {MAX_ATTEMPTS} lost compare-and-set races",
        code="LAMA-CONFLICT",
    )

def merge_remote_version(store: Store, obj_or_hash: dict[str, Any] | str, creation_time: int | float) -> VersionResult:
    """Merge a version received from a peer (objects.md §6.6, §9 quirk 17).

    ``obj_or_hash`` is the object, or the hash of an object already stored (e.g. with
    ``put_microdata``, whose received bytes are kept).  A local ``VersionNodeEdge`` with the
    remote ``creation_time`` is merged with the head.
    """
    ct = _check_time(creation_time, "creation_time")
    if isinstance(obj_or_hash, dict):
        return store_versioned(store, obj_or_hash, mode="merge", timestamp_ms=ct)
    h = core.check_hash(obj_or_hash, "a version hash")
    microdata = store.get(h)
    id_md = core.id_microdata_of(microdata)
    if id_md is None:
        type_name, _ = core.type_of(microdata)
        raise MicrodataError(f"{h} is a {type_name}, which is not a versioned type", code="O2M-COBJ1")
    type_name, _ = core.type_of(microdata)
    return _store_data(store, type_name, h, core.sha256_hex(id_md), None, "merge", ct)


def merge_node(store: Store, node_hash: str, id_hint: str | None = None) -> VersionResult:
    """Merge an already stored version node (e.g. the head of another branch) into the head
    of its ID hash (objects.md §4.3): nothing if the head contains it, fast-forward if it
    contains the head, otherwise a CRDT merge recorded in a ``VersionNodeMerge``.

    ``id_hint`` (the CHUM importer's ``merge`` event names the ID) is only a hint: when that
    ID's head already is the node - the importer fast-forwarded it in the import's
    transaction, the common case of a live push - nothing is read but the node (a node that
    is an ID's head is a version of that ID); otherwise the ID is computed from the data."""
    if id_hint is not None and store.get_head(core.check_hash(id_hint, "an ID hash")) == node_hash:
        node = load_node(store, node_hash)
        return VersionResult(node.data, id_hint, "exists", node.hash, node.creation_time, node.hash, node.data)
    node = load_node(store, node_hash)
    microdata = store.get(node.data)
    id_md = core.id_microdata_of(microdata)
    type_name, _ = core.type_of(microdata)
    if id_md is None:
        raise MicrodataError(f"{node.data} is a {type_name}, which is not a versioned type", code="O2M-COBJ1")
    id_hash: str = core.sha256_hex(id_md)
    with _ID_LOCKS.hold(store, id_hash):
        for _attempt in range(MAX_ATTEMPTS):
            head_hash = store.get_head(id_hash)
            if head_hash is None:
                batch: list[dict[str, Any]] = []
                new_head, merged = node.hash, node.data
            else:
                head = load_node(store, head_hash)
                plan = _plan_merge(store, type_name, head, node, {}, {})
                batch, new_head, merged = plan.objects, plan.head, plan.merged
            if new_head == head_hash:
                return VersionResult(node.data, id_hash, "exists", node.hash, node.creation_time, new_head, merged)
            try:
                store.write_batch(batch, [(id_hash, head_hash, new_head)])
            except ConflictError:
                continue
            return VersionResult(node.data, id_hash, "exists", node.hash, node.creation_time, new_head, merged)
    raise ConflictError(
        f"gave up merging into {id_hash} after {MAX_ATTEMPTS} lost compare-and-set races",
        code="LAMA-CONFLICT",
    )


def _store_data(store: Store, type_name: str, h: str, id_hash: str, obj: dict[str, Any] | None, mode: str, ts: int | float | None) -> VersionResult:
    objs = [obj] if obj is not None else []
    with _ID_LOCKS.hold(store, id_hash):
        for _attempt in range(MAX_ATTEMPTS):
            head_hash = store.get_head(id_hash)
            head = None if head_hash is None else load_node(store, head_hash)
            if head is not None and head.data == h:
                return VersionResult(h, id_hash, "exists", head.hash, head.creation_time, head.hash, head.data)
            t = ts if ts is not None else now_ms()
            if head is None:
                node = _make_node("edge", h, 0, t)
                batch, new_head, merged = [*objs, node.to_object()], node.hash, h
            elif mode == "change":
                node = _make_node("change", h, head.depth + 1, t, (head.hash,))
                batch, new_head, merged = [*objs, node.to_object()], node.hash, h
            else:
                node = _make_node("edge", h, 0, t)
                plan = _plan_merge(store, type_name, head, node, {node.hash: node}, {h: obj} if obj is not None else {})
                batch = [*objs, node.to_object(), *plan.objects]
                new_head, merged = plan.head, plan.merged
            try:
                results = store.write_batch(batch, [(id_hash, head_hash, new_head)])
            except ConflictError:
                continue
            status = "exists"
            if obj is not None:
                status = next((r[1] for r in results if r[0] == h), "exists")
            return VersionResult(h, id_hash, status, node.hash, node.creation_time, new_head, merged)
    raise ConflictError(
        f"gave up storing a version of {id_hash} after {MAX_ATTEMPTS} lost compare-and-set races",
        code="LAMA-CONFLICT",
    )
