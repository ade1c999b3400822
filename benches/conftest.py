"""Benchmark fixtures: both cores side by side in one run, so ratios are comparable.

Run with ``./dev bench`` (pytest-benchmark is disabled in the normal test run).  At the end
the session prints objects/s per core and the Rust/pure ratio of each benchmark group.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

RATES: dict[str, dict[str, float]] = defaultdict(dict)
LINES: list[str] = []


def cores() -> dict[str, ModuleType]:
    from lama import _lama, _pure  # type: ignore[attr-defined]

    return {"rust": _lama, "pure": _pure}


@pytest.fixture(params=["rust", "pure"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    return cores()[request.param]


def record(group: str, core_name: str, n_items: int, seconds: float) -> None:
    RATES[group][core_name] = n_items / seconds


def report_line(line: str) -> None:
    """A free-form line for the summary (benchmarks with more than one figure per case)."""
    LINES.append(line)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    tr = terminalreporter
    if LINES:
        tr.section("lama details")
        for line in LINES:
            tr.write_line(line)
    if not RATES:
        return
    tr.section("lama throughput (median round)")
    for group, per_core in RATES.items():
        line = ", ".join(f"{c}: {r:,.0f}/s" for c, r in per_core.items())
        if "rust" in per_core and "pure" in per_core:
            line += f"  -> rust/pure = {per_core['rust'] / per_core['pure']:.1f}x"
        tr.write_line(f"{group}: {line}")
