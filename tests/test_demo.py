"""The demo (`./dev demo`, `lama demo`): a comm server and two `lama serve` processes on
127.0.0.1 pair, chat both ways with an attachment, and stop cleanly - on the active core
(the children inherit LAMA_CORE)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lama import demo

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--dir", str(tmp_path / "demo"), "--attachment-size", "300000"]) == 0
    out = capsys.readouterr().out
    core = os.environ.get("LAMA_CORE", "rust")
    assert f"core: {core}" in out
    assert "paired in" in out
    # four messages, each seen at the peer, with a measured time
    assert len(re.findall(r"visible at (Alice|Bob)'s device [0-9.]+ ms after the send", out)) == 4
    assert "to received-alice-notes.bin: identical" in out       # the attachment, byte for byte
    assert "(4 messages, identical)" in out                       # the same history on both
    assert "stopped cleanly on SIGTERM" in out
    assert "send -> visible at the peer" in out                   # the timings table
    assert out.rstrip().endswith("demo ok")
    # nothing left running: the instance directories have no live control file
    assert not list((tmp_path / "demo").glob("*/*/control.json"))


def test_lama_demo_command(tmp_path: Path) -> None:
    """`lama demo` is the same demo as a CLI command, exit status 0."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "lama.cli", "demo", "--dir", str(tmp_path / "d"),
                        "--attachment-size", "1000"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo ok" in r.stdout
