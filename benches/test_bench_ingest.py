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
