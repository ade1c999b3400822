"""Memory of idle spares in the comm server (issue 9 goal: 10,000 spares under 300 MiB,
docs/connections.md §2a "Bounded memory"). The server runs in its own process so its RSS is
its own; 400 spares are registered from this process. Before the Rust server's WebSocket
read buffer was made small, each spare cost about 141 KiB (tungstenite's 128 KiB default
buffer, zero-filled per socket)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from lama._core import core

SERVER = textwrap.dedent("""
    import asyncio, sys
    from lama._core import core

    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    async def main():
        srv = await core.comm_server("127.0.0.1", 0, max_spares_per_key=1000,
                                     max_spares_per_address=1000, ping_interval=60.0)
        print(srv.url, flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "rss":
            print(rss_kb(), srv.counters()["spares"], flush=True)
        await srv.close()

    asyncio.run(main())
""")

SPARES = 400
KEYS = 4
LIMIT_KIB = 28  # 10,000 spares under 300 MiB with room for the empty server (~45 MiB)


def test_idle_spares_cost_little_server_memory() -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root / "python")}
    p = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdin is not None and p.stdout is not None
    stdin, stdout = p.stdin, p.stdout

    def rss() -> tuple[int, int]:
        stdin.write("rss\n")
        stdin.flush()
        kb, spares = stdout.readline().split()
        return int(kb), int(spares)

    try:
        url = stdout.readline().strip()
        assert url.startswith("ws://"), url
        base, _ = rss()

        async def main() -> tuple[int, int]:
            listeners = []
            try:
                for i in range(KEYS):
                    sk = hashlib.sha256(f"memory {i}".encode()).digest()
                    listeners.append(await core.comm_listen(url, core.box_public_from_secret(sk), sk,
                                                            spares=SPARES // KEYS))
                t0 = time.monotonic()
                while (r := rss())[1] < SPARES and time.monotonic() - t0 < 60:
                    await asyncio.sleep(0.2)
                return r
            finally:
                for lst in listeners:
                    await lst.close()

        kb, spares = asyncio.run(main())
        assert spares == SPARES
        per_spare = (kb - base) / spares
        assert per_spare < LIMIT_KIB, f"{per_spare:.1f} KiB of server RSS per idle spare"
    finally:
        stdin.write("quit\n")
        stdin.flush()
        p.wait(30)
