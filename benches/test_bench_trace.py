"""Message transfer tracing (issue 11, docs/tracing.md): the cost on the send path. Both cores,
each in its own process (``benches/trace_side.py``); per core one process holds two instances,
one with ``trace=False`` and one with ``trace=True``, and runs interleaved rounds of

* sequential ``App.send`` (each message its own durable commit), and
* concurrent ``App.send`` (``asyncio.gather`` of many: group commit, the CPU-bound case), the
  tracer's deferred work (grant check, rows handed to the writer thread) included;

reporting the medians' ratio (goal: < 5 % with tracing on), next to a control run with
tracing off in both instances (the machine's noise for the same comparison), and the CPU the
tracer itself spent (its functions on the loop thread, its writer thread). With tracing off the send path
runs one ``is None`` check per batch; its cost is reported against the time of one send.

Run: ``.venv/bin/python -m pytest benches/test_bench_trace.py --benchmark-enable -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import record, report_line

HERE = Path(__file__).resolve().parent
SIDE = HERE / "trace_side.py"
ROUNDS = os.environ.get("LAMA_BENCH_TRACE_ROUNDS", "9")


def side(core: str, *args: str, timeout: float = 1800.0) -> list[dict[str, Any]]:
    env = dict(os.environ, LAMA_CORE=core)
    p = subprocess.run([sys.executable, str(SIDE), *args], env=env, capture_output=True,
                       text=True, timeout=timeout, cwd=str(HERE))
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_trace_cost_on_the_send_path(core: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lama-bench-trace-") as d:
        res = {r["what"]: r for r in side(core, d, ROUNDS, "100", "2000")}
    with tempfile.TemporaryDirectory(prefix="lama-bench-trace-aa-") as d:
        aa = {r["what"]: r for r in side(core, d, ROUNDS, "100", "2000", "aa")}
    chk = res["disabled_check"]
    for what in ("sequential", "concurrent"):
        r = res[what]
        record(f"trace: {what} sends, tracing off (msg/s)", core, r["n"], r["off_s"])
        record(f"trace: {what} sends, tracing on (msg/s)", core, r["n"], r["on_s"])
        report_line(f"{core}: {what} {r['n']:,} sends x {r['rounds']} rounds: off "
                    f"{r['off_rate']:,.0f} msg/s, on {r['on_rate']:,.0f} msg/s (medians): wall "
                    f"{r['overhead'] * 100:+.1f} % (best rounds {r['best_overhead'] * 100:+.1f} %), "
                    f"process CPU {r['cpu_off_us']:.0f} -> {r['cpu_on_us']:.0f} us/msg "
                    f"({r['cpu_overhead'] * 100:+.1f} %); control (both off): wall "
                    f"{aa[what]['overhead'] * 100:+.1f} %, CPU {aa[what]['cpu_overhead'] * 100:+.1f} %")
    per_send_ns = res["concurrent"]["off_per_msg_us"] * 1000
    report_line(f"{core}: disabled path: one `is None` check = {chk['ns']:.0f} ns, "
                f"{chk['ns'] / per_send_ns * 100:.4f} % of one concurrent send")
    report_line(f"{core}: CPU inside the tracer (posted; flush with the grant check) "
                f"{chk['tracer_s']:.3f} s + its writer thread "
                f"{chk['writer_s']:.3f} s of {chk['on_total_s']:.2f} s process CPU = "
                f"{chk['tracer_share'] * 100:.2f} % of the traced sends")
    assert chk["traced"] > 0
