"""Issue 12 benchmarks (docs/cluster.md): a comm-server cluster of two rust nodes, each in its
own process, and a nats-server, on 127.0.0.1. Handover latency (``communication_request``
sent -> the listener's ``accept()`` returns) and relayed throughput (raw WebSocket frames
through a handed-over pair), with the initiator at the listener's node ("one node") and at
the other node ("cross-node": NATS lookup, node-to-node WebSocket, two relays). The client
side is the rust core. Small sizes in the plain test run; the real ones with
``--benchmark-enable``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import report_line
from test_bench_connect import MIB, RELAY_SMALL, _relay, keypair, pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_util import Nats, NodeProcess, needs_nats  # noqa: E402

pytestmark = needs_nats()

HANDOVERS_BENCH, HANDOVERS_TEST = 300, 20
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def cluster() -> Any:
    nats = Nats()
    n1, n2 = NodeProcess(nats.url), NodeProcess(nats.url)
    yield n1.url, n2.url
    for n in (n1, n2):
        n.stop()
    nats.stop()


def _handovers(listen_url: str, ask_url: str, n: int) -> list[float]:
    from lama import _lama as core  # type: ignore[attr-defined]

    pk, sk = keypair("cluster handover", core)
    src, _ = keypair("cluster handover source", core)
    request = json.dumps({"command": "communication_request", "sourcePublicKey": src.hex(),
                          "targetPublicKey": pk.hex()}, separators=(",", ":"))
    lat: list[float] = []

    async def main() -> None:
        listener = await core.comm_listen(listen_url, pk, sk, spares=4, reconnect_delay=0.1)
        try:
            for _ in range(n):
                c = await core.ws_connect(ask_url)
                await asyncio.sleep(0.005)  # the listener's replacement spare registers
                t0 = time.perf_counter()
                await c.send(request)
                t = await asyncio.wait_for(listener.accept(), 10)
                lat.append(time.perf_counter() - t0)
                assert json.loads(await t.recv())["command"] == "communication_request"
                await c.close()
                await t.close()
        finally:
            await listener.close()

    asyncio.run(asyncio.wait_for(main(), 300))
    return lat


@pytest.mark.parametrize("where", ["one node", "cross-node"])
def test_cluster_handover_latency(benchmark: Any, cluster: tuple[str, str], where: str) -> None:
    n = HANDOVERS_TEST if benchmark.disabled else HANDOVERS_BENCH
    n1, n2 = cluster
    lat: list[float] = []
    benchmark.pedantic(lambda: lat.extend(_handovers(n1, n1 if where == "one node" else n2, n)),
                       rounds=1, iterations=1)
    RESULTS.setdefault("handover p50 (ms)", {})[where] = pct(lat, .5) * 1e3
    report_line(f"cluster handover latency ({where}, {n} handovers): p50 {pct(lat, .5) * 1e3:.2f} ms, "
                f"p99 {pct(lat, .99) * 1e3:.2f} ms, max {max(lat) * 1e3:.2f} ms")


@pytest.mark.parametrize("size", ["200B", "1MiB"])
@pytest.mark.parametrize("where", ["one node", "cross-node"])
def test_cluster_relay(benchmark: Any, cluster: tuple[str, str], where: str, size: str) -> None:
    from lama import _lama as core  # type: ignore[attr-defined]

    n1, n2 = cluster
    payload = RELAY_SMALL if size == "200B" else MIB
    count = (2_000 if size == "200B" else 8) if benchmark.disabled else (10_000 if size == "200B" else 64)
    times: list[float] = []
    ask = n1 if where == "one node" else n2
    benchmark.pedantic(lambda: times.append(_relay(core, n1, payload, count, ask_url=ask)),
                       rounds=3, iterations=1)
    rate = count / sorted(times)[len(times) // 2]
    unit = "msg/s" if size == "200B" else "MiB/s"
    RESULTS.setdefault(f"relayed {size} ({unit})", {})[where] = rate
    report_line(f"cluster relay {size} ({where}): {rate:,.0f} {unit}")
    both = RESULTS[f"relayed {size} ({unit})"]
    if len(both) == 2:
        report_line(f"cluster relay {size}: cross-node / one node = {both['cross-node'] / both['one node']:.2f}")
