"""Two stores sync with CHUM sessions over real transports (issue 8): each side's
``ChumSession`` runs in ``spawn_session`` over the in-memory pair or WebSocket on 127.0.0.1, all
of one core (the core under test), and Rust <-> pure over WebSocket (each side its own core's
store, session, transport and driver)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chum_graph import Chat, deterministic_bytes, person_id, register_recipes, texts
from lama import _pure
from lama._core import core
from lama.chum import SyncResult, handle_event

MOVED = ("BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob")


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()  # in both cores (the cross-core tests)


async def connect(kind: str, cores: tuple[ModuleType, ModuleType]) -> tuple[Any, Any]:
    if kind == "memory":
        return cores[0].memory_pair()
    listener = await cores[1].ws_listen("127.0.0.1", 0)
    try:
        client = await cores[0].ws_connect(f"ws://127.0.0.1:{listener.port}/")
        server = await listener.accept()
    finally:
        await listener.close()
    return client, server


async def run_side(side: ModuleType, store: Any, transport: Any, me: str, peer: str, fast: bool) -> SyncResult:
    session = side.ChumSession(store, me, peer, fast_path=fast)
    task = side.spawn_session(session, transport, store=store)
    result = SyncResult()
    for _ in range(1_000_000):
        events = await task.events()
        if events is None:
            break
        for kind, data in events:
            handle_event(store, kind, data, result)
    result.stats = await task.wait()
    return result


def sync_over(kind: str, a: Any, b: Any, pa: str, pb: str, drivers: tuple[ModuleType, ModuleType],
              fast: bool) -> tuple[SyncResult, SyncResult]:
    async def main() -> tuple[SyncResult, SyncResult]:
        ta, tb = await connect(kind, drivers)
        ra, rb = await asyncio.gather(run_side(drivers[0], a, ta, pa, pb, fast),
                                      run_side(drivers[1], b, tb, pb, pa, fast))
        assert ta.close_reason == tb.close_reason == "chum finished"
        return ra, rb

    async def bounded() -> tuple[SyncResult, SyncResult]:
        return await asyncio.wait_for(main(), 120)

    return asyncio.run(bounded())


def check(tmp_path: Path, kind: str, drivers: tuple[ModuleType, ModuleType], fast: bool) -> None:
    a = drivers[0].Store(str(tmp_path / "a"))
    b = drivers[1].Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    data = deterministic_bytes(300_000)
    chat.post("file", attachments=[chat.attach_blob(data)])
    chat.post("note", attachments=[chat.attach_clob("text ✓ " * 500)])

    ra, rb = sync_over(kind, a, b, pa, pb, drivers, fast)
    for r in (ra, rb):
        assert r.reason == "chum finished", r
        assert [e for e in r.errors if e["fatal"]] == []
        assert r.stats, "wait() returns the session's stats"
    assert texts(b, chat.ci) == ["note", "file", "one"]
    assert b.read_blob(_pure.sha256_hex(data)) == data
    assert sorted(ra.log["AtoBObjects"]) == sorted(rb.log["BtoAObjects"])
    assert rb.log["BtoABlob"] == [_pure.sha256_hex(data)]
    assert a.verify() == [] and b.verify() == []
    # a second sync over a new connection moves nothing
    ra, rb = sync_over(kind, a, b, pa, pb, drivers, fast)
    for r in (ra, rb):
        assert r.reason == "chum finished"
        assert sum(len(r.log[k]) for k in MOVED) == 0
    a.close()
    b.close()


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("kind", ["memory", "ws"])
def test_two_sessions_sync_over_a_transport(tmp_path: Path, kind: str, fast: bool) -> None:
    check(tmp_path, kind, (core, core), fast)


@pytest.mark.cross_core
@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("rust_side", [0, 1])
def test_sessions_sync_between_rust_and_pure_drivers(tmp_path: Path, rust_core: ModuleType,
                                                     pure_core: ModuleType, rust_side: int, fast: bool) -> None:
    """Issue 8: Rust <-> pure over WebSocket, v8 and the fast path."""
    drivers = (rust_core, pure_core) if rust_side == 0 else (pure_core, rust_core)
    check(tmp_path, "ws", drivers, fast=fast)


class Proxy:
    """Hides a session's class: the driver sees only an object with the ChumSession methods
    (in the Rust core: the GIL-taking path instead of the native one)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


@pytest.mark.parametrize("kind", ["memory", "ws"])
def test_the_core_session_runs_the_same_native_or_proxied(tmp_path: Path, kind: str) -> None:
    """The core's own ChumSession (in the Rust core: driven natively, without the GIL) and the
    same session behind a plain Python object give the same events, stats and close reasons."""

    def once(name: str, wrap: Any) -> Any:
        a = core.Store(str(tmp_path / name / "a"))
        b = core.Store(str(tmp_path / name / "b"))
        pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
        person_id(b, "alice@a.example")
        person_id(b, "bob@b.example")
        chat = Chat(a, pa, pb)
        chat.share([pa, pb])
        chat.post("one")

        async def side(store: Any, t: Any, me: str, peer: str) -> Any:
            task = core.spawn_session(wrap(core.ChumSession(store, me, peer)), t, store=store)
            events = []
            for _ in range(100_000):
                batch = await task.events()
                if batch is None:
                    break
                events.extend(batch)
            return events, await task.wait(), t.close_reason

        async def main() -> Any:
            ta, tb = await connect(kind, (core, core))
            return await asyncio.wait_for(asyncio.gather(side(a, ta, pa, pb), side(b, tb, pb, pa)), 60)

        out = asyncio.run(main())
        a.close()
        b.close()
        return out

    native = once("native", lambda s: s)
    proxied = once("proxied", Proxy)
    assert native == proxied
    for events, stats, reason in native:
        assert events[0][0] == "version" and events[-1][0] == "finished"
        assert reason == events[-1][1]["reason"]
        assert stats["requests_sent"] > 0
