"""Issue 11: what an open diagnostics page costs (docs/metrics.md). The chat benchmark's
latency and throughput (benches/test_bench_chat.py, both instances in their own processes)
run twice in one run per core: plain, and with both instances serving ``--http`` with a page
watching ``/api/events`` and ``/metrics`` scraped every second (``LAMA_BENCH_DIAG=1``,
benches/chat_side.py). Reported as the ratio with/without."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import report_line
from test_bench_chat import Pair, pct


@pytest.fixture(params=["rust", "pure"])
def core_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _measure(core_name: str, base: Path, n_lat: int, n_thr: int) -> tuple[float, float, float]:
    pair = Pair(core_name, base)
    try:
        sent = pair.alice.ask(cmd="send", n=n_lat, gap=0.02, tag="lat")["sent"]
        seen = pair.bob.ask(cmd="expect", tag="lat", n=n_lat)["seen"]
        lat = [(b - a) * 1000 for a, b in zip(sent, seen)]
        r = pair.alice.ask(cmd="send", n=n_thr, gap=0, tag="thr")
        seen = pair.bob.ask(cmd="expect", tag="thr", n=n_thr)["seen"]
        return pct(lat, 0.5), pct(lat, 0.99), n_thr / (max(seen) - r["sent"][0])
    finally:
        pair.stop()


def test_diagnostics_page_overhead(benchmark: Any, core_name: str, tmp_path: Path) -> None:
    n_lat = 20 if benchmark.disabled else 100
    n_thr = 200 if benchmark.disabled else 2_000

    def run() -> None:
        results = {}
        for diag in ("0", "1") * 3:  # interleaved: the machine's load drifts
            os.environ["LAMA_BENCH_DIAG"] = diag
            try:
                got = _measure(core_name, tmp_path / f"run{time.monotonic_ns()}", n_lat, n_thr)
            finally:
                os.environ.pop("LAMA_BENCH_DIAG", None)
            prev = results.get(diag)
            results[diag] = got if prev is None else tuple(
                min(a, b) if i < 2 else max(a, b) for i, (a, b) in enumerate(zip(prev, got)))
        (p50a, p99a, thra), (p50b, p99b, thrb) = results["0"], results["1"]
        report_line(f"diagnostics page {core_name}: with/without an open page + 1 s scrapes: "
                    f"latency p50 {p50b:.2f}/{p50a:.2f} ms ({p50b / p50a:.2f}x), p99 "
                    f"{p99b:.2f}/{p99a:.2f} ms, throughput {thrb:,.0f}/{thra:,.0f} msg/s "
                    f"({thrb / thra:.2f}x) (best of 3 each, {n_lat} latency + {n_thr} messages)")

    benchmark.pedantic(run, rounds=1, iterations=1)


def test_observer_costs(benchmark: Any, tmp_path: Path) -> None:
    """In one process (the core of ``LAMA_CORE``): what the page's observer adds per message
    (its ``on_message`` handler, against ``App.send`` of one message), and what one page update
    (``/api/state``) and one ``/metrics`` scrape cost - the work an open page does at most four
    times a second and a scraper once per scrape."""
    import asyncio
    import statistics
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from web_util import paired_apps, until

    from lama._core import CORE_NAME
    from lama.web.observer import AppObserver

    n = 200 if benchmark.disabled else 2_000

    async def main() -> None:
        server, alice, bob = await paired_apps(tmp_path)
        try:
            sends = []
            for i in range(n):
                t = time.perf_counter()
                await alice.send(bob.person_id, f"m {i}")
                sends.append(time.perf_counter() - t)
            await until(lambda: len(bob.history(alice.person_id)) == n, 120)
            msgs = bob.history(alice.person_id)
            obs = AppObserver(bob)  # not started: its handler is called directly
            t = time.perf_counter()
            for m in msgs:
                obs._on_message(m)
            per_msg = (time.perf_counter() - t) / n
            await obs.state()  # the first one counts each conversation's messages once
            states, scrapes = [], []
            for _ in range(20):
                t = time.perf_counter()
                await obs.state()
                states.append(time.perf_counter() - t)
                t = time.perf_counter()
                obs.metrics_text()
                scrapes.append(time.perf_counter() - t)
            send = statistics.median(sends)
            report_line(f"diagnostics observer {CORE_NAME}: on_message {per_msg * 1e6:.1f} us "
                        f"per message = {per_msg / send * 100:.3f} % of App.send's median "
                        f"{send * 1e3:.2f} ms; a page update (state) {statistics.median(states) * 1e3:.2f} ms, "
                        f"a /metrics scrape {statistics.median(scrapes) * 1e3:.2f} ms (median "
                        f"of 20; {n} messages in the conversation)")
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
