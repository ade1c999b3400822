"""Processes for benches/test_bench_connect.py (issue 9), each run as its own process so the
comm server's RSS is its own and the CHUM connection time includes no state of the benchmark.

``python connect_side.py server CORE``: a comm server (docs/connections.md §2a) on 127.0.0.1,
port 0, with the spare limits raised for the spare-count benchmark; prints its URL, then on each
line ``rss`` read from stdin prints ``<VmRSS kB> <spares>``; ``quit`` closes it.

``python connect_side.py reconnect CORE DIR ROUNDS``: two instances paired through a
ConnectionManager each (docs/connections.md §3.3) and a comm server in this process; then
ROUNDS times B's manager is closed and a fresh one started, and the time from its ``start()``
to the CHUM connection being up on both sides, and to B's first CHUM ``full_sync`` event (its first
full pass ended), is printed
as ``<ms connected> <ms first sync>``.

``python connect_side.py encrypted CORE``: the receiving end of the encrypted-connection
throughput benchmark (docs/connections.md §1a) in its own process: listens with ``ws_listen`` on
127.0.0.1 (prints the port), accepts one ``encrypted_accept`` connection (key "bench B"), then
for each text message ``<count> <size>`` receives ``count`` messages of ``size`` bytes and
answers ``done <CPU seconds of this process for them>``, until the connection closes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def server(core: Any) -> None:
    srv = await core.comm_server("127.0.0.1", 0, max_spares_per_key=100_000,
                                 max_spares_per_address=100_000, ping_interval=60.0,
                                 pong_timeout=10.0)
    print(srv.url, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "rss":
            print(rss_kb(), srv.counters()["spares"], flush=True)
        else:
            break
    await srv.close()


async def reconnect(base: Path, rounds: int) -> None:
    from lama._core import core
    from lama.connect.manager import ConnectionManager, ManagerConfig
    from lama.identity.instance import Instance

    fast: dict[str, Any] = dict(
        retry_delay=0.2, retry_max_delay=1.0, reconnect_delay=0.1, refused_retry_delay=0.1,
        discovery_interval=0.2, health_check_interval=0.2, sync_interval=1.0)
    a = Instance.create(base / "a", email="a@example.org", instance_name="a", secret="s")
    b = Instance.create(base / "b", email="b@example.org", instance_name="b", secret="s")
    srv = await core.comm_server("127.0.0.1", 0)
    cfg = ManagerConfig(comm_server_url=srv.url, **fast)
    ma, mb = ConnectionManager(a, cfg), ConnectionManager(b, cfg)
    await ma.start()
    await mb.start()

    async def until(pred: Any, timeout: float = 20.0) -> None:
        t0 = time.monotonic()
        while not pred():
            if time.monotonic() - t0 > timeout:
                raise TimeoutError("benchmark condition not reached")
            await asyncio.sleep(0.001)

    try:
        await mb.accept_invitation(ma.create_invitation())
        try:
            await until(lambda: ma.connected(b.person_id) and mb.connected(a.person_id))
        except TimeoutError:
            # exit status 3: the first CHUM connection after the pairing never came up
            print("initial-connect-timeout", flush=True)
            raise SystemExit(3)
        for _ in range(rounds):
            await mb.close()
            await until(lambda: not ma.connected(b.person_id))
            await asyncio.sleep(0.3)  # let A's own dial attempts settle (B is offline)
            mb = ConnectionManager(b, cfg)
            first_sync: list[float] = []
            mb.subscribe(lambda kind, data: first_sync.append(time.monotonic())
                         if kind == "sync" and data.get("state") == "full_sync"
                         and not first_sync else None)
            t0 = time.monotonic()
            await mb.start()
            await until(lambda: ma.connected(b.person_id) and mb.connected(a.person_id))
            t1 = time.monotonic()
            await until(lambda: bool(first_sync))
            print(f"{(t1 - t0) * 1000:.2f} {(first_sync[0] - t0) * 1000:.2f}", flush=True)
    finally:
        await mb.close()
        await ma.close()
        await srv.close()
        a.close()
        b.close()


async def encrypted(core: Any) -> None:
    import hashlib

    sk = hashlib.sha256(b"bench B").digest()
    keys = [(core.box_public_from_secret(sk), sk)]
    listener = await core.ws_listen("127.0.0.1", 0)
    print(listener.port, flush=True)
    conn = await core.encrypted_accept(await listener.accept(), keys)
    await listener.close()
    while True:
        head = await conn.recv()
        if head is None:
            break
        count, size = (int(x) for x in str(head).split())
        cpu0 = time.process_time()
        for _ in range(count):
            m = await conn.recv()
            assert m is not None and len(m) == size, (m if m is None else len(m), conn.close_reason)
        await conn.send(f"done {time.process_time() - cpu0}")
    await conn.close()


def main() -> None:
    sys.path.insert(0, str(ROOT / "python"))
    what, core_name = sys.argv[1], sys.argv[2]
    os.environ["LAMA_CORE"] = core_name
    if what == "server":
        from lama import _lama, _pure  # type: ignore[attr-defined]

        asyncio.run(server(_lama if core_name == "rust" else _pure))
    elif what == "encrypted":
        from lama import _lama, _pure  # type: ignore[attr-defined]

        asyncio.run(encrypted(_lama if core_name == "rust" else _pure))
    elif what == "reconnect":
        asyncio.run(reconnect(Path(sys.argv[3]), int(sys.argv[4])))
    else:
        raise SystemExit(f"unknown command {what}")


if __name__ == "__main__":
    main()
