"""The core does its work without starving other Python threads: the Rust core releases the
GIL around serialization, hashing and LMDB work (the pure core yields at the interpreter's
switch interval).

The check is deterministic, not timed: a worker thread marks which call it is in, and the main
thread, which sleeps (without the GIL) until the mark appears, then counts how often it got to
run while the mark was still up. It can only run inside a call that let go of the GIL: with the
Rust core the switch interval is set to 100 s, so the worker is never forced to hand the GIL
over and only a real release lets the main thread in; with the pure core the interpreter's
usual switch interval applies (a long pure-Python call is preempted). Once the main thread has
seen enough, it blocks in ``join`` (releasing the GIL) and the worker finishes."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from lama._core import CORE_NAME, core

SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def _objects(n: int) -> list[dict[str, object]]:
    return [{"$type$": "ChatMessage", "text": f"message {i} " + "x" * 200, "sender": SENDER}
            for i in range(n)]


SPINS = 20_000  # how much running the main thread must get inside each call


def test_batch_work_does_not_block_other_threads(tmp_path: Path) -> None:
    objs = _objects(150_000)
    store = core.Store(str(tmp_path / "store"))
    phase = [0]  # 1: in serialize_many, 2: in put_objects, 3: done

    def ingest() -> None:
        phase[0] = 1
        core.serialize_many(objs)
        phase[0] = 2
        store.put_objects(objs)
        phase[0] = 3

    seen = {1: 0, 2: 0}
    old = sys.getswitchinterval()
    if CORE_NAME == "rust":
        sys.setswitchinterval(100.0)
    worker = threading.Thread(target=ingest)
    try:
        worker.start()
        deadline = time.monotonic() + 120
        for p in (1, 2):
            while phase[0] < p and time.monotonic() < deadline:
                time.sleep(0.0005)  # without the GIL: the worker runs
            # Running here at all means the worker's call let the GIL go.
            while phase[0] == p and seen[p] < SPINS:
                seen[p] += 1
    finally:
        worker.join(timeout=120)
        sys.setswitchinterval(old)
    assert phase[0] == 3 and store.count() == len(objs)
    store.close()
    assert seen == {1: SPINS, 2: SPINS}, seen


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
