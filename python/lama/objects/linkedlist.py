"""The linked-list CRDT of channels (app-layer.md §2.5, §2.6): ``LinkedListCrdtAlgorithm``.

A channel's ``ChannelInfo.head`` points at the newest ``LinkedListEntry``; each entry points at
its ``CreationTime`` (``data``), optional ``metadata`` (signatures, profiles) and the next older
entry (``previous``). The order is a pure function of the CreationTimes, so replicas holding the
same set converge:

* ordering key ``(timestamp, creationTimeHash)``, compared descending (on equal timestamps the
  lexicographically larger CreationTime hash comes first);
* the merge iterator walks several lists at once, newest first, drops an iterator that reaches
  an entry another one sits on (the histories below are identical), and skips an element whose
  key equals the one yielded just before (one post reached through two histories; the copy from
  the later iterator — the incoming list — wins);
* a two-list merge yields elements until one iterator is left; the first element of that one is
  the common history head H, the others are the unmerged elements U. U is re-created on top of
  H, oldest first (entries above the merge point get new hashes: their ``previous`` changed); if
  H itself is new (a single insert older than every entry), the list is rebuilt from nothing.

This module registers the algorithm under its ONE id with :mod:`lama.objects.crdt`, so every
merge of two concurrent ``ChannelInfo`` versions (a local post racing an imported one, two
imports) goes through it; :func:`insert` is the single insert a post performs (§2.4 step 7).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from lama.errors import NotFoundError

__all__ = ["ALGORITHM_ID", "Element", "entries", "insert", "insert_many", "merge_heads", "merge_iterator",
           "stored_above"]

ALGORITHM_ID = "LinkedListCrdtAlgorithm"

Loader = Callable[[str], "dict[str, Any] | None"]
Putter = Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Element:
    """One list element: its entry (``None`` for an element not stored yet), CreationTime hash,
    timestamp and metadata hashes (``None``: the entry has no ``metadata`` property)."""

    entry: str | None
    creation_time: str
    timestamp: float
    metadata: tuple[str, ...] | None
    previous: str | None = None
    #: the CreationTime's ``data`` (the posted object's hash) when the element was read from
    #: the store; readers use it instead of loading the CreationTime again
    data: str | None = field(default=None, compare=False)

    @property
    def key(self) -> tuple[float, str]:
        return (self.timestamp, self.creation_time)


def _need(load: Loader, h: str, what: str) -> dict[str, Any]:
    obj = load(h)
    if obj is None:
        raise NotFoundError(f"{what} {h} of a channel list is not stored", code="SB-READ2")
    return obj


def element(load: Loader, entry_hash: str) -> Element:
    """The element stored as LinkedListEntry ``entry_hash``."""
    e = _need(load, entry_hash, "LinkedListEntry")
    ct_hash = e["data"]
    ct = _need(load, ct_hash, "CreationTime")
    md = e.get("metadata")
    data = ct.get("data")
    return Element(
        entry_hash, ct_hash, ct["timestamp"], None if md is None else tuple(md), e.get("previous"),
        None if data is None else str(data),
    )


def entries(load: Loader, head: str | None) -> Iterator[Element]:
    """The list from ``head``, newest first (follows ``previous``; stops at a repeated entry,
    which only a forged list can contain)."""
    seen: set[str] = set()
    h = head
    while h is not None and h not in seen:
        seen.add(h)
        el = element(load, h)
        yield el
        h = el.previous


def merge_iterator(
    lists: list[Iterator[Element]],
    *,
    terminate_on_single: bool = False,
    yield_common: bool = True,
) -> Iterator[tuple[Element, int, int]]:
    """app-layer.md §2.5 merge iterator: ``(element, index of its list, active lists)``."""
    cur: list[Element | None] = [next(it, None) for it in lists]
    active = [i for i, c in enumerate(cur) if c is not None]
    last_key: tuple[float, str] | None = None
    while active:
        if terminate_on_single and len(active) == 1:
            # The first element of the last list is the common history head; one that
            # repeats the element just yielded (the same post, other metadata) is passed.
            i = active[0]
            c = cur[i]
            while c is not None and c.key == last_key:
                c = next(lists[i], None)
            if yield_common and c is not None:
                yield c, i, 1
            return
        # The greatest key; ties go to the later list.
        best = active[0]
        for i in active[1:]:
            if cur[i].key >= cur[best].key:  # type: ignore[union-attr]
                best = i
        chosen = cur[best]
        assert chosen is not None
        # Two lists on the same stored entry: the histories below are identical, drop one.
        for i in list(active):
            c = cur[i]
            if i != best and c is not None and c.entry is not None and c.entry == chosen.entry:
                active.remove(i)
                cur[i] = None
        if terminate_on_single and len(active) == 1:
            continue  # the chosen entry is the common history head
        if chosen.key != last_key:
            yield chosen, best, len(active)
            last_key = chosen.key
        nxt = next(lists[best], None)
        cur[best] = nxt
        if nxt is None:
            active.remove(best)


def _entry_object(el: Element, previous: str | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"$type$": "LinkedListEntry", "data": el.creation_time}
    if el.metadata is not None:
        obj["metadata"] = list(el.metadata)
    if previous is not None:
        obj["previous"] = previous
    return obj


def _merge(load: Loader, put: Putter, current: Iterator[Element], incoming: Iterator[Element]) -> str | None:
    out = [el for el, _i, _n in merge_iterator([current, incoming], terminate_on_single=True)]
    if not out:
        return None
    common, unmerged = out[-1], out[:-1]
    if common.entry is not None:
        prev: str | None = common.entry
        chain = reversed(unmerged)
    else:  # a new element older than every entry: rebuild from nothing
        prev = None
        chain = iter([common, *reversed(unmerged)])
    for el in chain:
        prev = put(_entry_object(el, prev))
    return prev


def merge_heads(load: Loader, put: Putter, current: str | None, incoming: str | None) -> str | None:
    """The head of the merged list of ``current`` and ``incoming`` (entries created through
    ``put``, which stores an object or queues it and returns its hash)."""
    if current == incoming or incoming is None:
        return current
    if current is None:
        return incoming
    return _merge(load, put, entries(load, current), entries(load, incoming))


def insert(
    load: Loader,
    put: Putter,
    head: str | None,
    creation_time: str,
    timestamp: float,
    metadata: list[str] | None = None,
) -> str:
    """Insert one element (a post's CreationTime) into the list at ``head``; the new head."""
    new = Element(None, creation_time, timestamp, None if metadata is None else tuple(metadata))
    result = _merge(load, put, entries(load, head), iter([new]))
    assert result is not None
    return result



def insert_many(
    load: Loader,
    put: Putter,
    head: str | None,
    elements: list[tuple[str, float, list[str] | None]],
) -> str | None:
    """Insert several new elements ``(creationTime, timestamp, metadata)`` at once: the same
    list as inserting them one by one (the order is a pure function of the keys, §2.5), but
    one merge, so an entry is created once for each element (no intermediate entries that a
    later insert would rewrite).  A bulk post uses it."""
    new = [Element(None, ct, ts, None if md is None else tuple(md)) for ct, ts, md in elements]
    if not new:
        return head
    if len(new) == 1:
        return insert(load, put, head, new[0].creation_time, new[0].timestamp,
                      None if new[0].metadata is None else list(new[0].metadata))
    # The two-list merge of §2.5 with a list of new elements: the stored entries newer than
    # the oldest new element are re-created together with the new ones, oldest first, on top
    # of the first stored entry below them (H); with no such entry the list is rebuilt from
    # nothing.  (merge_iterator's terminate-on-single cannot be used here: it would take the
    # rest of the new list for common history once the stored list runs out.)
    base, above = stored_above(load, head, min(el.key for el in new), {el.key for el in new})
    chain = sorted([*above, *new], key=lambda el: el.key)
    prev = base
    for el in chain:
        prev = put(_entry_object(el, prev))
    return prev


def stored_above(
    load: Loader, head: str | None, lowest: tuple[float, str], keys: set[tuple[float, str]],
) -> tuple[str | None, list[Element]]:
    """The walk of :func:`insert_many`: the first stored entry older than ``lowest`` (the new
    elements go on top of it; ``None``: none) and the stored elements above it, newest first,
    without those whose key is in ``keys`` (the same post in both: the new copy wins, §2.5)."""
    above: list[Element] = []
    for el in entries(load, head):
        if el.key < lowest:
            return el.entry, above
        if el.key not in keys:
            above.append(el)
    return None, above


def _algorithm(ctx: Any, path: tuple, itemtype: dict, base: Any, left: Any, right: Any) -> Any:
    """``LinkedListCrdtAlgorithm`` for :mod:`lama.objects.crdt`: left = the local head, right
    = the incoming one (app-layer.md §2.6)."""
    from lama.objects.crdt import ABSENT

    def load(h: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = ctx.load(h)
        return obj

    lh = None if left is ABSENT else left
    rh = None if right is ABSENT else right
    if not (lh is None or isinstance(lh, str)) or not (rh is None or isinstance(rh, str)):
        return ctx.merge_default(path, itemtype, base, left, right)
    result = merge_heads(load, ctx.add_object, lh, rh)
    return ABSENT if result is None else result


def _register() -> None:
    from lama.objects import crdt

    crdt.register_algorithm(ALGORITHM_ID, _algorithm)


_register()
