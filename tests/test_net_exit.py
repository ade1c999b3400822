"""A process that ends right after a CHUM session exits cleanly.

Regression: in the Rust core, pyo3-async-runtimes handed a finished future's result to asyncio
from a tokio thread while the interpreter was finalizing (a transport or session task still
open at exit), and about one exit in four died with SIGSEGV/SIGBUS in a tokio thread
(rust/lama-py/src/net.rs `py_future`, `at_exit`).  Both sides of a one-shot fast-path sync on
empty stores run as their own processes (benches/chum_side.py) and must exit with status 0,
several times over: the crash was intermittent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lama._core import CORE_NAME

ROOT = Path(__file__).resolve().parent.parent
SIDE = ROOT / "benches" / "chum_side.py"
RUNS = 8


def _env() -> dict[str, str]:
    return {**os.environ, "LAMA_CORE": CORE_NAME, "PYTHONFAULTHANDLER": "1"}


def test_both_sides_exit_cleanly_after_a_sync(tmp_path: Path) -> None:
    for i in range(RUNS):
        d = tmp_path / str(i)
        d.mkdir()
        subprocess.run([sys.executable, str(SIDE), "build", str(d), "0"], env=_env(),
                       check=True, capture_output=True, timeout=120)
        listen = subprocess.Popen([sys.executable, "-u", str(SIDE), "sync", "listen", str(d / "a"),
                                   "0", "fast"], env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert listen.stdout is not None
            line = listen.stdout.readline()
            deadline = time.monotonic() + 60
            while not line.startswith("PORT ") and time.monotonic() < deadline and line:
                line = listen.stdout.readline()
            assert line.startswith("PORT "), line
            port = line.split()[1]
            conn = subprocess.run([sys.executable, str(SIDE), "sync", "connect", str(d / "b"),
                                   port, "fast"], env=_env(), capture_output=True, text=True,
                                  timeout=120)
            out, err = listen.communicate(timeout=120)
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.wait()
        assert conn.returncode == 0, (i, conn.returncode, conn.stderr[-2000:])
        assert listen.returncode == 0, (i, listen.returncode, err[-2000:])
