"""The core does its work without starving other Python threads: the Rust core releases the
GIL around serialization, hashing and LMDB work (the pure core yields at the interpreter's
switch interval).  A long batch runs in a worker thread while the main thread measures the
longest gap between its own iterations."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lama._core import core

SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def _objects(n: int) -> list[dict[str, object]]:
    return [{"$type$": "ChatMessage", "text": f"message {i} " + "x" * 200, "sender": SENDER}
            for i in range(n)]


def _longest_gap_while(work: "threading.Thread") -> float:
    gaps = []
    last = time.perf_counter()
    work.start()
    while work.is_alive():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        time.sleep(0.002)  # a thread that wakes up often, like an event loop with timers
    work.join()
    return max(gaps)


def test_batch_work_does_not_block_other_threads(tmp_path: Path) -> None:
    objs = _objects(150_000)
    store = core.Store(str(tmp_path / "store"))
    durations: list[float] = []

    def ingest() -> None:
        t0 = time.perf_counter()
        core.serialize_many(objs)
        t1 = time.perf_counter()
        store.put_objects(objs)
        durations.extend([t1 - t0, time.perf_counter() - t1])

    gap = _longest_gap_while(threading.Thread(target=ingest))
    assert store.count() == len(objs)
    store.close()
    # had either call held the GIL throughout, the sleeping thread could not have woken up
    # during it: the gap would be at least that call's duration
    assert gap < 0.5 * min(durations), (gap, durations)


def test_stores_are_usable_from_many_threads(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "store"))
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for j in range(20):
                objs = [{"$type$": "ChatMessage", "text": f"t{k}-{j}-{i}", "sender": SENDER}
                        for i in range(50)]
                rows = store.put_objects(objs)
                for (h, _, _), o in zip(rows, objs):
                    assert store.get_object(h) == o
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert store.count() == 4 * 20 * 50
    assert store.verify() == []
    store.close()
