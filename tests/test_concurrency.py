"""The core does its work without starving other Python threads: the Rust core releases the
GIL around serialization, hashing and LMDB work (the pure core yields at the interpreter's
switch interval).  A long batch runs in a worker thread while the main thread, waking up every
2 ms, counts how often it got to run during each call (a call that held the GIL throughout,
such as a catastrophic regular expression, lets it run about once)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from lama._core import core

SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def _objects(n: int) -> list[dict[str, object]]:
    return [{"$type$": "ChatMessage", "text": f"message {i} " + "x" * 200, "sender": SENDER}
            for i in range(n)]


TICK = 0.002


def _ticks_while(work: "threading.Thread") -> list[float]:
    """Run ``work`` while this thread wakes up every TICK seconds; return the wake-up times."""
    ticks = []
    work.start()
    while work.is_alive():
        ticks.append(time.perf_counter())
        time.sleep(TICK)  # a thread that wakes up often, like an event loop with timers
    work.join()
    return ticks


def test_batch_work_does_not_block_other_threads(tmp_path: Path) -> None:
    objs = _objects(150_000)
    store = core.Store(str(tmp_path / "store"))
    marks: list[float] = []

    def ingest() -> None:
        marks.append(time.perf_counter())
        core.serialize_many(objs)
        marks.append(time.perf_counter())
        store.put_objects(objs)
        marks.append(time.perf_counter())

    ticks = _ticks_while(threading.Thread(target=ingest))
    assert store.count() == len(objs)
    store.close()
    # Had a call held the GIL throughout, the other thread could not have woken up during it.
    # Count its wake-ups inside each call and ask for a quarter of what an idle process gets
    # (robust to the odd pause of the interpreter or the OS, which is not what this tests).
    for start, end in zip(marks, marks[1:]):
        woke = sum(1 for t in ticks if start < t < end)
        possible = (end - start) / (TICK + 0.0002)
        assert woke >= 0.25 * possible, (woke, possible, end - start)


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
