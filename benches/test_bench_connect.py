"""Issue 9 benchmarks (docs/connections.md §1a, §2a, §3.3), both cores in one run.

1. Comm server: idle spares held and the server's RSS (the server runs in its own process,
   ``connect_side.py server``; the spares are registered from this process with
   ``comm_listen``), handover latency (``communication_request`` sent -> the listener's
   ``accept()`` returns), relayed throughput (raw WebSocket frames through a handed-over pair).
2. Encrypted connection over a direct WebSocket on 127.0.0.1: 1 KiB messages/s and 1 MiB
   messages MiB/s, both ends in this process, and with the receiving end in its own process
   (``connect_side.py encrypted``; the time runs from the first message sent to the receiver's
   answer after the last one, and each side's CPU seconds are reported).
3. Time for a fresh ConnectionManager of an already paired instance from ``start()`` to the
   CHUM connection up on both sides and to its first CHUM ``full_sync`` event
   (``connect_side.py reconnect``).

Small sizes in the plain test run; the real ones with ``--benchmark-enable``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from conftest import record, report_line

HERE = Path(__file__).resolve().parent
SIDE = HERE / "connect_side.py"

SPARES_BENCH = {"rust": 10_000, "pure": 2_000}
SPARES_TEST = 50
SPARE_KEYS = 10  # listeners (keys) registering in parallel, each holding its share

HANDOVERS_BENCH, HANDOVERS_TEST = 300, 20

KIB = bytes(range(256)) * 4
MIB = bytes(range(256)) * 4096
RELAY_SMALL = 200 * b"m"


def keypair(label: str, core: ModuleType) -> tuple[bytes, bytes]:
    sk = hashlib.sha256(label.encode()).digest()
    return core.box_public_from_secret(sk), sk


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p * (len(s) - 1))))]


class ServerProcess:
    """A comm server in its own process (connect_side.py server)."""

    def __init__(self, core_name: str) -> None:
        self.p = subprocess.Popen([sys.executable, str(SIDE), "server", core_name],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        self.url = self.p.stdout.readline().strip()
        assert self.url.startswith("ws://"), self.url

    def rss(self) -> tuple[int, int]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("rss\n")
        self.p.stdin.flush()
        kb, spares = self.p.stdout.readline().split()
        return int(kb), int(spares)

    def stop(self) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(60)
        except Exception:
            self.p.kill()
            self.p.wait()


@pytest.fixture
def server_process(core: ModuleType) -> Any:
    s = ServerProcess(core.CORE_NAME)
    yield s
    s.stop()


# -- 1. comm server ------------------------------------------------------------------------------

def test_comm_server_idle_spares(benchmark: Any, core: ModuleType, server_process: ServerProcess) -> None:
    total = SPARES_TEST if benchmark.disabled else SPARES_BENCH[core.CORE_NAME]
    per_key = total // SPARE_KEYS
    base_kb, _ = server_process.rss()
    result: dict[str, float] = {}

    async def main() -> None:
        listeners = []
        t0 = time.monotonic()
        try:
            for i in range(SPARE_KEYS):
                pk, sk = keypair(f"spare {i}", core)
                listeners.append(await core.comm_listen(server_process.url, pk, sk, spares=per_key,
                                                        reconnect_delay=1.0))
            deadline = time.monotonic() + 600
            while True:
                kb, spares = server_process.rss()
                if spares >= per_key * SPARE_KEYS or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            result.update(seconds=time.monotonic() - t0, kb=kb, spares=spares)
            await asyncio.sleep(2)  # idle: the server's RSS with nothing happening
            kb2, spares2 = server_process.rss()
            result.update(kb=max(kb, kb2), spares=min(spares, spares2))
        finally:
            for lst in listeners:
                await lst.close()

    benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
    spares = int(result["spares"])
    assert spares == per_key * SPARE_KEYS, result
    rss_mib = result["kb"] / 1024
    per_spare = (result["kb"] - base_kb) / spares
    report_line(f"comm server ({core.CORE_NAME}): {spares:,} idle spares, RSS {rss_mib:.1f} MiB "
                f"(empty {base_kb / 1024:.1f} MiB, {per_spare:.1f} KiB per spare), "
                f"registered in {result['seconds']:.1f} s")
    record("comm server spares registered (spare)", core.CORE_NAME, spares, result["seconds"])


def test_comm_server_handover_latency(benchmark: Any, core: ModuleType,
                                      server_process: ServerProcess) -> None:
    n = HANDOVERS_TEST if benchmark.disabled else HANDOVERS_BENCH
    pk, sk = keypair("handover", core)
    src, _ = keypair("handover source", core)
    request = json.dumps({"command": "communication_request", "sourcePublicKey": src.hex(),
                          "targetPublicKey": pk.hex()}, separators=(",", ":"))
    lat: list[float] = []

    async def main() -> None:
        listener = await core.comm_listen(server_process.url, pk, sk, spares=4, reconnect_delay=0.1)
        try:
            for _ in range(n):
                c = await core.ws_connect(server_process.url)
                await asyncio.sleep(0.005)  # the listener's replacement spare registers
                t0 = time.perf_counter()
                await c.send(request)
                t = await listener.accept()
                lat.append(time.perf_counter() - t0)
                assert json.loads(await t.recv())["command"] == "communication_request"
                await c.close()
                await t.close()
        finally:
            await listener.close()

    benchmark.pedantic(lambda: asyncio.run(main()), rounds=1, iterations=1)
    report_line(f"handover latency ({core.CORE_NAME}, {n} handovers): p50 {pct(lat, .5) * 1e3:.2f} ms, "
                f"p99 {pct(lat, .99) * 1e3:.2f} ms, max {max(lat) * 1e3:.2f} ms")
    record("handover (median, 1/s)", core.CORE_NAME, 1, pct(lat, .5))


async def _pending(ws: Any) -> object:
    """What the initiator received instead of the handover, if anything (for the error)."""
    try:
        return await asyncio.wait_for(ws.recv(), 1)
    except Exception as e:  # noqa: BLE001 - only for the message
        return e


def _relay(core: ModuleType, url: str, payload: bytes, count: int, ask_url: str | None = None) -> float:
    """Seconds to relay ``count`` frames; the listener at ``url``, the initiator at ``ask_url``
    (another node of a cluster, test_bench_cluster.py) or ``url``."""
    pk, sk = keypair("relay", core)

    async def main() -> float:
        listener = await core.comm_listen(url, pk, sk, spares=1)
        a = await core.ws_connect(ask_url or url, max_message=2 * len(MIB))
        await a.send(json.dumps({"command": "communication_request", "sourcePublicKey": pk.hex(),
                                 "targetPublicKey": pk.hex()}))
        # a refused handover (the initiator gets an error, the listener nothing) is an error
        # here, not a wait until the 300 s limit below
        try:
            b = await asyncio.wait_for(listener.accept(), 10)
            await asyncio.wait_for(b.recv(), 10)
        except asyncio.TimeoutError:
            raise AssertionError(f"no handover within 10 s (initiator got: {await _pending(a)!r})")

        async def send() -> None:
            for _ in range(count):
                await a.send(payload)

        t0 = time.perf_counter()
        sender = asyncio.ensure_future(send())
        for _ in range(count):
            got = await b.recv()
            assert got is not None and len(got) == len(payload)
        await sender
        seconds = time.perf_counter() - t0
        await a.close()
        await listener.close()
        return seconds

    return asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.parametrize("size", ["200B", "1MiB"])
def test_comm_server_relay(benchmark: Any, core: ModuleType, server_process: ServerProcess,
                           size: str) -> None:
    payload = RELAY_SMALL if size == "200B" else MIB
    count = (2_000 if size == "200B" else 8) if benchmark.disabled else (10_000 if size == "200B" else 64)
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(_relay(core, server_process.url, payload, count)),
                       rounds=3, iterations=1)
    unit = "msg" if size == "200B" else "MiB"
    record(f"relayed {size} messages ({unit})", core.CORE_NAME, count, sorted(times)[len(times) // 2])


# -- 2. encrypted connection ---------------------------------------------------------------------

def _encrypted(core: ModuleType, payload: bytes, count: int) -> float:
    A, B = keypair("bench A", core), keypair("bench B", core)

    async def main() -> float:
        listener = await core.ws_listen("127.0.0.1", 0)

        async def server() -> Any:
            return await core.encrypted_accept(await listener.accept(), [B])

        a, b = await asyncio.gather(
            core.encrypted_connect(f"ws://127.0.0.1:{listener.port}", A[0], A[1], B[0]), server())
        await listener.close()

        async def send() -> None:
            for _ in range(count):
                await a.send(payload)

        t0 = time.perf_counter()
        sender = asyncio.ensure_future(send())
        for _ in range(count):
            got = await b.recv()
            assert got is not None and len(got) == len(payload)
        await sender
        seconds = time.perf_counter() - t0
        await a.close()
        return seconds

    return asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.parametrize("size", ["1KiB", "1MiB"])
def test_encrypted_throughput(benchmark: Any, core: ModuleType, size: str) -> None:
    payload = KIB if size == "1KiB" else MIB
    count = (1_000 if size == "1KiB" else 8) if benchmark.disabled else (10_000 if size == "1KiB" else 128)
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(_encrypted(core, payload, count)), rounds=3, iterations=1)
    unit = "msg" if size == "1KiB" else "MiB"
    record(f"encrypted {size} messages ({unit})", core.CORE_NAME, count, sorted(times)[len(times) // 2])


@pytest.mark.parametrize("size", ["1KiB", "1MiB"])
def test_encrypted_throughput_two_processes(benchmark: Any, core: ModuleType, size: str) -> None:
    payload = KIB if size == "1KiB" else MIB
    count = (1_000 if size == "1KiB" else 8) if benchmark.disabled else (20_000 if size == "1KiB" else 256)
    A = keypair("bench A", core)
    B = keypair("bench B", core)
    p = subprocess.Popen([sys.executable, str(SIDE), "encrypted", core.CORE_NAME],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    rounds: list[tuple[float, float, float]] = []  # wall s, sender CPU s, receiver CPU s

    async def main() -> None:
        conn = await core.encrypted_connect(f"ws://127.0.0.1:{port}", A[0], A[1], B[0])
        try:
            for _ in range(3):
                await conn.send(f"{count} {len(payload)}")
                cpu0 = time.process_time()
                t0 = time.perf_counter()
                for _ in range(count):
                    await conn.send(payload)
                done = await conn.recv()
                wall = time.perf_counter() - t0
                cpu = time.process_time() - cpu0
                assert isinstance(done, str) and done.startswith("done "), (done, conn.close_reason)
                rounds.append((wall, cpu, float(done.split()[1])))
        finally:
            await conn.close()

    try:
        benchmark.pedantic(lambda: asyncio.run(asyncio.wait_for(main(), 300)), rounds=1, iterations=1)
    finally:
        p.wait(30)
    wall, cpu_s, cpu_r = sorted(rounds)[len(rounds) // 2]
    unit = "msg" if size == "1KiB" else "MiB"
    per = count if size == "1KiB" else count * len(payload) / 2**20
    report_line(f"encrypted {size} messages, two processes ({core.CORE_NAME}): {per / wall:,.0f} {unit}/s "
                f"(median of 3); CPU per {unit}: sender {cpu_s / per * 1e6:.1f} us, receiver "
                f"{cpu_r / per * 1e6:.1f} us; {unit}/s per CPU-second: sender {per / cpu_s:,.0f}, "
                f"receiver {per / cpu_r:,.0f}")
    record(f"encrypted {size} messages, two processes ({unit})", core.CORE_NAME, count, wall)


# -- 3. fresh dial -> usable CHUM connection -----------------------------------------------------

def test_connection_manager_dial_to_chum(benchmark: Any, core: ModuleType, tmp_path: Path) -> None:
    rounds = 3 if benchmark.disabled else 15
    out: list[str] = []

    def once() -> None:
        env = {**os.environ, "LAMA_CORE": core.CORE_NAME}
        # no retry: the first CHUM connection after the pairing must come up (exit status 3
        # if it does not; it once failed in 1 run of 4, docs/connections.md §3.3 "Shutdown")
        r = subprocess.run([sys.executable, str(SIDE), "reconnect", core.CORE_NAME,
                            str(tmp_path), str(rounds)],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.returncode, r.stdout[-500:], r.stderr[-3000:])
        out.extend(r.stdout.split("\n"))

    benchmark.pedantic(once, rounds=1, iterations=1)
    rows = [tuple(float(x) for x in line.split()) for line in out if line.strip()]
    assert len(rows) == rounds
    up = [r[0] for r in rows]
    sync = [r[1] for r in rows]
    report_line(f"fresh ConnectionManager start -> CHUM up both ways ({core.CORE_NAME}, {rounds} rounds): "
                f"p50 {pct(up, .5):.1f} ms, max {max(up):.1f} ms; -> first full_sync "
                f"p50 {pct(sync, .5):.1f} ms, max {max(sync):.1f} ms")
    record("start -> CHUM up (median, 1/s)", core.CORE_NAME, 1, pct(up, .5) / 1000)
