"""Object-core throughput: serialize+hash, and serialize+hash+store in batches, of 100,000
chat-sized objects (ChatMessage with ~200 characters, CreationTime, LinkedListEntry), for both
cores in the same run.  Goal (issue 2): Rust >= 150,000 objects/s for batched ingest and >= 20x
the pure core.

Store ingest is measured durable (LMDB syncs every commit; batches of 1000 and 10,000) and with
``durable=False`` (LMDB NOSYNC, batches of 1000; docs/store-format.md "Durability").  Durable
small batches are bound by the disk's fsync latency, which both cores pay alike."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from types import ModuleType
from typing import Any

import pytest

from conftest import record

N = 100_000
BATCH = 1_000
SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def chat_objects(n: int) -> list[dict[str, Any]]:
    """n objects: repeating (ChatMessage, CreationTime, LinkedListEntry) as a chat would store
    them; references point at plausible hashes (computed with hashlib, not the core)."""
    out: list[dict[str, Any]] = []
    prev = None
    i = 0
    while len(out) < n:
        text = f"message {i}: " + ("lorem ipsum dolor sit amet, consectetur adipiscing elit " * 4)[:190]
        msg = {"$type$": "ChatMessage", "text": text, "sender": SENDER}
        h = hashlib.sha256(text.encode()).hexdigest()
        ct = {"$type$": "CreationTime", "timestamp": 1_700_000_000_000 + i, "data": h}
        h2 = hashlib.sha256(h.encode()).hexdigest()
        lle: dict[str, Any] = {"$type$": "LinkedListEntry", "data": h2}
        if prev:
            lle["previous"] = prev
        prev = hashlib.sha256(h2.encode()).hexdigest()
        out.extend([msg, ct, lle])
        i += 1
    return out[:n]


OBJECTS = chat_objects(N)


def _median_seconds(benchmark: Any) -> float:
    return float(benchmark.stats.stats.median)


def test_serialize_and_hash(benchmark: Any, core: ModuleType) -> None:
    result = benchmark.pedantic(core.serialize_many, args=(OBJECTS,), rounds=3, iterations=1)
    assert len(result) == N and len(result[0][1]) == 64
    record("serialize+hash", core.CORE_NAME, N, _median_seconds(benchmark))


@pytest.mark.parametrize(
    ("durable", "batch"), [(True, 1_000), (True, 10_000), (False, 1_000)],
    ids=["durable-1000", "durable-10000", "nosync-1000"],
)
def test_serialize_hash_store_batched(benchmark: Any, core: ModuleType, durable: bool, batch: int) -> None:
    dirs: list[str] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        d = tempfile.mkdtemp(prefix="lama-bench-")
        dirs.append(d)
        return (core.Store(d, durable=durable),), {}

    def ingest(store: Any) -> int:
        new = 0
        for i in range(0, N, batch):
            new += sum(1 for _, status, _ in store.put_objects(OBJECTS[i:i + batch]) if status == "new")
        store.close()  # flushes a non-durable store: part of the measured time
        return new

    try:
        new = benchmark.pedantic(ingest, setup=setup, rounds=3, iterations=1)
        assert new == N
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    mode = "durable" if durable else "durable=False"
    record(f"serialize+hash+store ({mode}, batches of {batch})", core.CORE_NAME, N, _median_seconds(benchmark))


# -- head moves and the access index (docs/store-format.md "access index") ----------------------

CHAIN = 2_000
READER = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a"


def _chain(core: ModuleType, n: int) -> list[tuple[list[dict[str, Any]], list[tuple[str, str | None, str]]]]:
    """n versions of one Person ID as CHANGE nodes, one write_batch (one head move) each."""
    out: list[tuple[list[dict[str, Any]], list[tuple[str, str | None, str]]]] = []
    prev: str | None = None
    for j in range(n):
        p = {"$type$": "Person", "email": "channel@example.com", "name": f"v{j}"}
        h = core.object_hash(p)
        node: dict[str, Any] = {"$type$": "VersionNodeEdge", "data": h, "depth": 0, "creationTime": 1_700_000_000_000 + j}
        if prev is not None:
            node = {"$type$": "VersionNodeChange", "prev": prev, "data": h, "depth": j, "creationTime": 1_700_000_000_000 + j}
        nh = core.object_hash(node)
        out.append(([p, node], [(core.id_hash(p), prev, nh)]))
        prev = nh
    return out


@pytest.mark.parametrize("granted", [False, True], ids=["not-granted", "idaccess-granted"])
def test_head_moves(benchmark: Any, core: ModuleType, granted: bool) -> None:
    """The access index's cost on the write path: head moves of an ID nobody is granted (the
    index only looks up the ID object's header and `anodes`) against head moves of an ID that
    an IdAccess grants to two persons (each new version node becomes a root of both)."""
    from lama import access

    batches = _chain(core, CHAIN + 1)
    dirs: list[str] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        d = tempfile.mkdtemp(prefix="lama-bench-")
        dirs.append(d)
        store = core.Store(d, durable=False)
        store.write_batch(*batches[0])
        if granted:
            access.grant(store, id=batches[0][1][0][0], persons=[READER, SENDER])
        return (store,), {}

    def moves(store: Any) -> int:
        for objs, heads in batches[1:]:
            store.write_batch(objs, heads)
        n = len(store.accessible_roots(READER)[1])
        store.close()
        return n

    try:
        n = benchmark.pedantic(moves, setup=setup, rounds=3, iterations=1)
        assert n == (CHAIN + 2 if granted else 0)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    what = "IdAccess-granted ID" if granted else "ungranted ID"
    record(f"head moves, one per batch, {what} (durable=False)", core.CORE_NAME, CHAIN, _median_seconds(benchmark))
