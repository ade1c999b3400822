"""Killing a writer with SIGKILL in the middle of large writes leaves a store that opens and
verifies clean, with every batch either wholly there or wholly absent."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from lama._core import CORE_NAME, core

HERE = Path(__file__).resolve().parent


def test_sigkill_mid_write_leaves_consistent_store(tmp_path: Path) -> None:
    rng = random.Random(1234)
    store_dir = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent / "python"))
    for round_no in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), str(store_dir), CORE_NAME],
            stdout=subprocess.PIPE, env=env, text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", f"writer did not start: {line!r}"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        store = core.Store(str(store_dir))
        try:
            assert store.verify() == [], f"round {round_no}"
            # batches are atomic: every ChatMessage batch has 5000 objects (+ blobs)
            n_msgs = sum(1 for h in store.hashes() if store.kind(h) == "object")
            assert n_msgs % 5000 == 0 and n_msgs >= 5000
        finally:
            store.close()
