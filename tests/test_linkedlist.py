"""The channel linked-list CRDT (app-layer.md §2.5, §2.6): single inserts, two-list merges,
convergence of replicas, and concurrent ChannelInfo versions merged through the version layer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lama._core import core
from lama.errors import NotFoundError
from lama.objects import crdt, linkedlist, versions

SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


class Side:
    """A store with the loader/putter pair the list functions take."""

    def __init__(self, path: Path) -> None:
        self.store = core.Store(str(path), durable=False)

    def load(self, h: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.store.get_object(h)
            return obj
        except NotFoundError:
            return None

    def put(self, obj: dict[str, Any]) -> str:
        ((h, _s, _i),) = self.store.put_objects([obj])
        return str(h)

    def post(self, head: str | None, text: str, ts: int, metadata: list[str] | None = None) -> tuple[str, str]:
        msg = self.put({"$type$": "ChatMessage", "text": text, "sender": SENDER})
        ct = self.put({"$type$": "CreationTime", "timestamp": ts, "data": msg})
        return linkedlist.insert(self.load, self.put, head, ct, ts, metadata), ct

    def copy_from(self, other: "Side", head: str | None) -> None:
        """Give this store every object of ``other``'s list (what a sync would bring)."""
        for el in linkedlist.entries(other.load, head):
            ct = other.store.get_object(el.creation_time)
            self.put(other.store.get_object(ct["data"]))
            self.put(ct)
            self.put(other.store.get_object(el.entry))

    def keys(self, head: str | None) -> list[tuple[float, str]]:
        return [el.key for el in linkedlist.entries(self.load, head)]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def two(tmp_path: Path):
    a, b = Side(tmp_path / "a"), Side(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def test_posts_chain_like_the_app(two: tuple[Side, Side]) -> None:
    a, _ = two
    h1, ct1 = a.post(None, "one", 1000, [SENDER])
    h2, ct2 = a.post(h1, "two", 2000)
    # app-layer.md §2.4 / objects.md §9: {data, metadata?, previous?}
    assert a.store.get_object(h1) == {"$type$": "LinkedListEntry", "data": ct1, "metadata": [SENDER]}
    assert a.store.get_object(h2) == {"$type$": "LinkedListEntry", "data": ct2, "previous": h1}
    assert [k[0] for k in a.keys(h2)] == [2000, 1000]


def test_older_insert_rewrites_newer_entries_and_keeps_creation_times(two: tuple[Side, Side]) -> None:
    a, _ = two
    h, _ = a.post(None, "t10", 10)
    h, _ = a.post(h, "t30", 30)
    old_entries = [el.entry for el in linkedlist.entries(a.load, h)]
    h2, ct20 = a.post(h, "t20", 20)
    els = list(linkedlist.entries(a.load, h2))
    assert [el.timestamp for el in els] == [30, 20, 10]
    assert els[1].creation_time == ct20
    assert els[2].entry == old_entries[1]  # below the insert point nothing changes
    assert els[0].entry != old_entries[0]  # above it the entry is re-created
    # Older than everything: the whole list is rebuilt from nothing.
    h3, _ = a.post(h2, "t5", 5)
    assert [el.timestamp for el in linkedlist.entries(a.load, h3)] == [30, 20, 10, 5]
    assert a.store.get_object(list(linkedlist.entries(a.load, h3))[-1].entry).get("previous") is None


def test_equal_timestamps_order_by_larger_creation_time_hash(two: tuple[Side, Side]) -> None:
    a, _ = two
    h = None
    cts = []
    for i in range(6):
        h, ct = a.post(h, f"same time {i}", 500)
        cts.append(ct)
    assert [k[1] for k in a.keys(h)] == sorted(cts, reverse=True)


def test_concurrent_posts_converge_in_both_merge_directions(two: tuple[Side, Side]) -> None:
    a, b = two
    base = None
    for i in range(3):
        base, _ = a.post(base, f"shared {i}", 100 + i)
    b.copy_from(a, base)
    ha, hb = base, base
    for i in range(4):
        ha, _ = a.post(ha, f"a {i}", 200 + 2 * i)
        hb, _ = b.post(hb, f"b {i}", 201 + 2 * i)
    a.copy_from(b, hb)
    b.copy_from(a, ha)
    ma = linkedlist.merge_heads(a.load, a.put, ha, hb)
    mb = linkedlist.merge_heads(b.load, b.put, hb, ha)
    assert ma == mb  # both replicas compute the same entries: no ping-pong
    keys = a.keys(ma)
    assert keys == sorted(keys, reverse=True) and len(keys) == 11 and len(set(keys)) == 11
    # Merging again, or with an ancestor, changes nothing.
    assert linkedlist.merge_heads(a.load, a.put, ma, ha) == ma
    assert linkedlist.merge_heads(a.load, a.put, ma, base) == ma
    assert linkedlist.merge_heads(a.load, a.put, None, ma) == ma


def test_same_post_with_other_metadata_incoming_wins_and_history_stays(two: tuple[Side, Side]) -> None:
    a, _ = two
    h, _ = a.post(None, "first", 1)
    h2, ct = a.post(h, "second", 2, ["a" * 64])
    other = a.put({"$type$": "LinkedListEntry", "data": ct, "metadata": ["b" * 64], "previous": h})
    merged = linkedlist.merge_heads(a.load, a.put, h2, other)
    assert merged == other
    # The incoming copy without the history below it: the history is kept.
    lone = a.put({"$type$": "LinkedListEntry", "data": ct, "metadata": ["c" * 64]})
    merged = linkedlist.merge_heads(a.load, a.put, h2, lone)
    els = list(linkedlist.entries(a.load, merged))
    assert [el.timestamp for el in els] == [2, 1] and els[0].metadata == ("c" * 64,)


@settings(max_examples=25, deadline=None)
@given(
    shared=st.lists(st.integers(0, 50), max_size=5),
    left=st.lists(st.integers(0, 60), max_size=6),
    right=st.lists(st.integers(0, 60), max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_replicas_converge_for_any_posts(tmp_path_factory: pytest.TempPathFactory, shared: list[int],
                                         left: list[int], right: list[int], seed: int) -> None:
    d = tmp_path_factory.mktemp("ll")
    a, b = Side(d / "a"), Side(d / "b")
    try:
        rnd = random.Random(seed)
        base = None
        for i, t in enumerate(shared):
            base, _ = a.post(base, f"s{i}-{rnd.random()}", t)
        b.copy_from(a, base)
        ha, hb = base, base
        for i, t in enumerate(left):
            ha, _ = a.post(ha, f"l{i}-{rnd.random()}", t)
        for i, t in enumerate(right):
            hb, _ = b.post(hb, f"r{i}-{rnd.random()}", t)
        a.copy_from(b, hb)
        b.copy_from(a, ha)
        ma = linkedlist.merge_heads(a.load, a.put, ha, hb)
        mb = linkedlist.merge_heads(b.load, b.put, hb, ha)
        assert ma == mb
        keys = a.keys(ma)
        assert keys == sorted(keys, reverse=True)
        assert len(keys) == len(shared) + len(left) + len(right)
    finally:
        a.close()
        b.close()


def test_concurrent_channel_versions_merge_through_the_version_layer(two: tuple[Side, Side]) -> None:
    """Before this algorithm existed the second merge failed with LAMA-CRDT2."""
    assert linkedlist.ALGORITHM_ID in crdt.algorithm_ids()
    a, b = two
    info = {"$type$": "ChannelInfo", "id": "topic"}
    versions.store_versioned(a.store, dict(info), timestamp_ms=1)
    ha, _ = a.post(None, "a0", 10)
    va = versions.store_versioned(a.store, {**info, "head": ha}, timestamp_ms=10)
    # b receives a's first version as a peer would, then both post concurrently.
    b.copy_from(a, ha)
    versions.merge_remote_version(b.store, a.store.get_object(va.hash), 10)
    hb = versions.current(b.store, va.id_hash)["head"]
    assert hb == ha
    hb, _ = b.post(hb, "b1", 20)
    vb = versions.store_versioned(b.store, {**info, "head": hb}, timestamp_ms=20)
    ha2, _ = a.post(ha, "a1", 21)
    va2 = versions.store_versioned(a.store, {**info, "head": ha2}, timestamp_ms=21)
    # Exchange: each side merges the other's latest version.
    a.copy_from(b, hb)
    b.copy_from(a, ha2)
    ra = versions.merge_remote_version(a.store, b.store.get_object(vb.hash), 20)
    rb = versions.merge_remote_version(b.store, a.store.get_object(va2.hash), 21)
    heads = [versions.current(a.store, ra.id_hash)["head"], versions.current(b.store, rb.id_hash)["head"]]
    assert heads[0] == heads[1]
    assert [k[0] for k in a.keys(heads[0])] == [21, 20, 10]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), max_size=12), st.lists(st.integers(0, 40), min_size=1, max_size=12))
def test_insert_many_equals_one_by_one(existing: list[int], batch: list[int]) -> None:
    """``insert_many`` (a bulk post) builds exactly the list - the same entry hashes - that
    inserting the elements one by one does, from an empty or a filled list, with elements
    older than, between and newer than the stored ones (app-layer.md §2.5)."""
    objs: dict[str, Any] = {}

    def put(obj: dict[str, Any]) -> str:
        h = str(core.object_hash(obj))
        objs[h] = obj
        return h

    def ct(i: int, tag: str) -> tuple[str, int]:
        # a distinct CreationTime each time (equal timestamps are frequent: ties order by hash)
        data = core.sha256_hex(f"{tag}{i}{random.random()}")
        return put({"$type$": "CreationTime", "timestamp": i, "data": data}), i

    head = None
    for i in existing:
        c, t = ct(i, "e")
        head = linkedlist.insert(objs.get, put, head, c, t, [c])
    new = [ct(i, "n") for i in batch]
    one = head
    for c, t in new:
        one = linkedlist.insert(objs.get, put, one, c, t, [c])
    many = linkedlist.insert_many(objs.get, put, head, [(c, t, [c]) for c, t in new])
    assert many == one
    assert len(list(linkedlist.entries(objs.get, many))) == len(existing) + len(batch)
