"""Transport throughput (issue 8, docs/chum-session.md §3): messages/s of small messages and
MiB/s of 1 MiB messages, over the in-memory pair and over WebSocket on 127.0.0.1, for both cores
in the same run. One task sends, the other receives; a round ends when the receiver has every
message (so the time includes the whole path and its back-pressure)."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import pytest

from conftest import record

SMALL = 200 * b"m"  # about a CHUM request
SMALL_COUNT = 5_000
BIG = bytes(range(256)) * 4096  # 1 MiB
BIG_COUNT = 64


async def _pair(core: ModuleType, kind: str) -> tuple[Any, Any, Any]:
    if kind == "memory":
        a, b = core.memory_pair()
        return a, b, None
    listener = await core.ws_listen("127.0.0.1", 0)
    a = await core.ws_connect(f"ws://127.0.0.1:{listener.port}/")
    b = await listener.accept()
    return a, b, listener


def _transfer(core: ModuleType, kind: str, payload: bytes, count: int) -> float:
    async def main() -> float:
        a, b, listener = await _pair(core, kind)
        loop = asyncio.get_running_loop()

        async def send() -> None:
            for _ in range(count):
                await a.send(payload)

        t0 = loop.time()
        sender = asyncio.ensure_future(send())
        for _ in range(count):
            got = await b.recv()
            assert got is not None and len(got) == len(payload)
        await sender
        seconds = loop.time() - t0
        await a.close("done")
        if listener is not None:
            await listener.close()
        return seconds

    return asyncio.run(asyncio.wait_for(main(), 300))


@pytest.mark.parametrize("kind", ["memory", "ws"])
def test_small_messages(benchmark: Any, core: ModuleType, kind: str) -> None:
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(_transfer(core, kind, SMALL, SMALL_COUNT)), rounds=3, iterations=1)
    record(f"{kind} 200 B messages (msg)", core.CORE_NAME, SMALL_COUNT, sorted(times)[len(times) // 2])


@pytest.mark.parametrize("kind", ["memory", "ws"])
def test_large_messages(benchmark: Any, core: ModuleType, kind: str) -> None:
    times: list[float] = []
    benchmark.pedantic(lambda: times.append(_transfer(core, kind, BIG, BIG_COUNT)), rounds=3, iterations=1)
    record(f"{kind} 1 MiB messages (MiB)", core.CORE_NAME, BIG_COUNT, sorted(times)[len(times) // 2])
