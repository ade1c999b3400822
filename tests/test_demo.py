"""The demo (`./dev demo`) runs to a clean store on the active core."""

from __future__ import annotations

from pathlib import Path

import pytest

from lama import demo


def test_demo_runs_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    # the ownerless 1-to-1 channel of alice@example.com and bob@example.com (objects.md §8)
    assert "a6c681afd72de71113cbb69d829df72cf5f976b4ef70415d1c6a95d5d18638ab" in out
    assert out.count("verifies with") == 2
    assert "verify(): clean" in out
