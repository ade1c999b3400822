"""Killing a writer with SIGKILL in the middle of its writes loses nothing it reported
committed and leaves a store that opens and verifies clean, with every batch either wholly
there or wholly absent (docs/store-format.md "Durability")."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lama._core import CORE_NAME, core

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import crash_writer  # noqa: E402

ROUNDS = 25
BUDGET_S = 100  # the suite runs on 2 shared cores, twice: stop killing after this long
MIN_ROUNDS = 10


def present(store: Any, objs: list[dict[str, Any]]) -> int:
    return sum(store.has(core.object_hash(o)) for o in objs)


def check_round(store: Any, run: int, reported: list[int]) -> None:
    """Every batch the writer reported committed is there in full; the next one (maybe
    committed, not yet reported) is all or nothing; the head is at the last reported batch
    or a later one."""
    for b in reported:
        objs, edge, blob = crash_writer.batch(core, run, b)
        assert present(store, objs + [edge]) == len(objs) + 1, f"round {run} batch {b} lost"
        h = hashlib.sha256(blob).hexdigest()
        assert store.kind(h) == "blob" and store.blob_size(h) == len(blob), (run, b)
    nxt = reported[-1] + 1
    objs, edge, _ = crash_writer.batch(core, run, nxt)
    assert present(store, objs + [edge]) in (0, len(objs) + 1), f"round {run}: torn batch {nxt}"
    id_hash = core.id_hash(crash_writer.person(run, 0))
    heads = {core.object_hash(crash_writer.batch(core, run, b)[1]): b for b in (nxt - 1, nxt)}
    assert store.get_head(id_hash) in heads, f"round {run}: head lost"


def test_sigkill_mid_write_loses_nothing_reported_committed(tmp_path: Path) -> None:
    rng = random.Random(1234)
    store_dir = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "python"))
    started = time.monotonic()
    rounds = 0
    all_reported: dict[int, list[int]] = {}
    for run in range(ROUNDS):
        if time.monotonic() - started > BUDGET_S and rounds >= MIN_ROUNDS:
            break
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), str(store_dir), CORE_NAME, str(run)],
            stdout=subprocess.PIPE, env=env, text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            assert first.strip() == "0", f"writer did not commit its first batch: {first!r}"
            # land anywhere: in the objects' commit, between the two commits, in the BLOB
            time.sleep(rng.uniform(0.0, 0.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            rest = proc.stdout.read() if proc.stdout else ""
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        reported = [0] + [int(line) for line in rest.split()]
        assert reported == list(range(len(reported)))
        store = core.Store(str(store_dir))
        try:
            assert store.verify() == [], f"round {run}"
            check_round(store, run, reported)
        finally:
            store.close()
        all_reported[run] = reported
        rounds += 1
    print(f"{rounds} kills in {time.monotonic() - started:.0f} s")
    assert rounds >= MIN_ROUNDS
    with core.Store(str(store_dir)) as store:  # and nothing of the earlier rounds went missing
        for run, reported in all_reported.items():
            for b in reported:
                objs, edge, _ = crash_writer.batch(core, run, b)
                assert present(store, objs + [edge]) == len(objs) + 1, (run, b)
