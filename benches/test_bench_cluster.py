"""Issue 12 benchmarks (docs/cluster.md): a comm-server cluster of two nodes, each in its own
process, and a nats-server, on 127.0.0.1; once with two rust nodes, once with two pure nodes,
in one run. Handover latency (``communication_request`` sent -> the listener's ``accept()``
returns) and relayed throughput (raw WebSocket frames through a handed-over pair), with the
initiator at the listener's node ("one node") and at the other node ("cross-node": NATS
lookup, node-to-node WebSocket, two relays). Besides wall time, the CPU time the two node
processes spent (``/proc/<pid>/stat``), which a loaded machine distorts less. The client side
is the rust core. Small sizes in the plain test run; the real ones with
``--benchmark-enable``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import report_line
from test_bench_connect import MIB, RELAY_SMALL, _relay, keypair, pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_util import Nats, NodeProcess, counters_of, needs_nats  # noqa: E402

pytestmark = needs_nats()

HANDOVERS_BENCH, HANDOVERS_TEST = 300, 20
# docs/cluster.md §4: one address may cause 20 lookups/s (bursts of 40); the handovers are
# paced below that (in both cases, so they compare), or cross-node requests would be refused
PACE = 1 / 18
RESULTS: dict[str, dict[str, float]] = {}


class Cluster:
    def __init__(self, core: str, n1: NodeProcess, n2: NodeProcess) -> None:
        self.core, self.n1, self.n2 = core, n1, n2

    def cpu(self) -> float:
        """CPU seconds (user + system) the two node processes have used so far."""
        total = 0
        for n in (self.n1, self.n2):
            with open(f"/proc/{n.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module", params=["rust", "pure"], ids=lambda c: f"{c} nodes")
def cluster(request: Any) -> Any:
    nats = Nats()
    n1, n2 = NodeProcess(nats.url, request.param), NodeProcess(nats.url, request.param)
    yield Cluster(request.param, n1, n2)
    for name, n in (("1", n1), ("2", n2)):
        c = counters_of(n.stop())
        report_line(f"{request.param} node {name}: " + ", ".join(
            f"{k} {c.get(k)}" for k in ("requests", "handovers", "refused", "forwarded", "cluster_lookups",
                                         "cluster_answers", "cluster_throttled")))
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
                await asyncio.sleep(PACE)  # the rate limit; the listener's replacement spare registers
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
def test_cluster_handover_latency(benchmark: Any, cluster: Cluster, where: str) -> None:
    n = HANDOVERS_TEST if benchmark.disabled else HANDOVERS_BENCH
    n1, n2 = cluster.n1.url, cluster.n2.url
    lat: list[float] = []
    cpu0 = cluster.cpu()
    benchmark.pedantic(lambda: lat.extend(_handovers(n1, n1 if where == "one node" else n2, n)),
                       rounds=1, iterations=1)
    cpu = (cluster.cpu() - cpu0) / n
    RESULTS.setdefault(f"{cluster.core}: handover p50 (ms)", {})[where] = pct(lat, .5) * 1e3
    report_line(f"cluster handover latency ({cluster.core} nodes, {where}, {n} handovers): "
                f"p50 {pct(lat, .5) * 1e3:.2f} ms, p99 {pct(lat, .99) * 1e3:.2f} ms, "
                f"max {max(lat) * 1e3:.2f} ms; nodes' CPU {cpu * 1e3:.2f} ms per handover")


@pytest.mark.parametrize("size", ["200B", "1MiB"])
@pytest.mark.parametrize("where", ["one node", "cross-node"])
def test_cluster_relay(benchmark: Any, cluster: Cluster, where: str, size: str) -> None:
    from lama import _lama as core  # type: ignore[attr-defined]

    n1, n2 = cluster.n1.url, cluster.n2.url
    payload = RELAY_SMALL if size == "200B" else MIB
    count = (2_000 if size == "200B" else 8) if benchmark.disabled else (10_000 if size == "200B" else 64)
    times: list[float] = []
    ask = n1 if where == "one node" else n2
    cpu0 = cluster.cpu()
    benchmark.pedantic(lambda: times.append(_relay(core, n1, payload, count, ask_url=ask)),
                       rounds=3, iterations=1)
    cpu = (cluster.cpu() - cpu0) / (3 * count)
    rate = count / sorted(times)[len(times) // 2]
    unit = "msg/s" if size == "200B" else "MiB/s"
    key = f"{cluster.core}: relayed {size} ({unit})"
    RESULTS.setdefault(key, {})[where] = rate
    RESULTS.setdefault(f"{key} CPU", {})[where] = cpu
    report_line(f"cluster relay {size} ({cluster.core} nodes, {where}): {rate:,.0f} {unit}; "
                f"nodes' CPU {cpu * 1e6:,.1f} µs per frame")
    both, cpus = RESULTS[key], RESULTS[f"{key} CPU"]
    if len(both) == 2:
        report_line(f"cluster relay {size} ({cluster.core} nodes): cross-node / one node = "
                    f"{both['cross-node'] / both['one node']:.2f} (rate), "
                    f"{cpus['cross-node'] / max(cpus['one node'], 1e-9):.2f} (nodes' CPU per frame)")
