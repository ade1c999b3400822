"""Issue 8 "Where it runs": the GIL is not held while a session of the Rust core works.

Two native ``ChumSession``s of the Rust core sync a large graph over the Rust in-memory pair
while the Python main thread runs a pure-Python busy loop and never lets the GIL go
(``sys.setswitchinterval`` far beyond the loop, no call that releases it except a rare store
read to see whether the sync is done): the sync must complete during the loop.  The same sync
with the session behind a Python proxy (the driver then takes the GIL for every call of the
protocol, as it does for any session that is not the core's own) must *not* complete during
the same loop: that shows the test fails when the path needs the GIL.

This is about the Rust core only (the pure core's session runs in the asyncio loop of the main
thread by design), so the test uses ``lama._lama`` directly and is marked ``cross_core``: it
runs once, in the Rust run of ``./dev test``, whatever ``LAMA_CORE`` says.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chum_graph import grant_object, person_id

pytestmark = pytest.mark.cross_core

LINKS = 1500  # 4,500 objects, v8: one request and one answer per object
BUSY_SECONDS = 60.0  # the longest the main thread keeps the GIL (the native sync takes ~1 s)
POLL_SECONDS = 0.5  # how often the busy loop looks (a store read: it releases the GIL briefly)


class Proxy:
    """The session behind a plain Python object: ``spawn_session`` then drives it with the GIL
    taken for every call (rust/lama-py/src/net.rs, ``PyProtocol``)."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _build(core: ModuleType, tmp: Path) -> tuple[Any, Any, str, str, int]:
    a, b = core.Store(str(tmp / "a"), durable=False), core.Store(str(tmp / "b"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    objs: list[dict[str, Any]] = []
    prev = None
    for i in range(LINKS):
        m = {"$type$": "ChatMessage", "text": f"message {i}", "sender": pa}
        ct = {"$type$": "CreationTime", "timestamp": 1_700_000_000_000 + i, "data": core.object_hash(m)}
        lle: dict[str, Any] = {"$type$": "LinkedListEntry", "data": core.object_hash(ct)}
        if prev:
            lle["previous"] = prev
        prev = core.object_hash(lle)
        objs += [m, ct, lle]
    a.put_objects(objs)
    assert prev is not None
    grant_object(a, prev, [pb])
    return a, b, pa, pb, b.count() + 3 * LINKS


def _sync_while_holding_the_gil(core: ModuleType, tmp: Path, wrap: Any, busy: float) -> tuple[bool, float, int, int]:
    """Start both sessions, then hold the GIL in a busy loop until B has every object or the
    loop's time is up. (done during the loop, seconds, B's count, expected count)."""
    a, b, pa, pb, want = _build(core, tmp)

    async def main() -> tuple[bool, float, int]:
        ta, tb = core.memory_pair()
        task_a = core.spawn_session(wrap(core.ChumSession(a, pa, pb, importer=False, fast_path=False)), ta, store=a)
        task_b = core.spawn_session(wrap(core.ChumSession(b, pb, pa, exporter=False, fast_path=False)), tb, store=b)
        old = sys.getswitchinterval()
        sys.setswitchinterval(busy * 10)
        try:
            t0 = time.monotonic()
            next_look = t0 + POLL_SECONDS
            done = False
            x = 0
            while True:
                x += 1  # pure Python: never releases the GIL
                now = time.monotonic()
                if now >= next_look:
                    done = b.count() >= want
                    if done or now - t0 >= busy:
                        break
                    next_look = now + POLL_SECONDS
            seconds = time.monotonic() - t0
        finally:
            sys.setswitchinterval(old)
        await asyncio.wait_for(asyncio.gather(task_a.wait(), task_b.wait()), 600)
        return done, seconds, b.count()

    done, seconds, count = asyncio.run(main())
    assert b.verify() == []
    a.close()
    b.close()
    return done, seconds, count, want


def test_a_native_session_syncs_while_python_holds_the_gil(tmp_path: Path, rust_core: ModuleType) -> None:
    done, seconds, count, want = _sync_while_holding_the_gil(rust_core, tmp_path / "native", lambda s: s, BUSY_SECONDS)
    assert done, f"B had {count} of {want} objects after {seconds:.1f} s of the main thread holding the GIL"
    # The same sync behind a proxy needs the GIL for each call of the protocol: held for
    # longer than the native sync took (at least 3 s), it cannot finish during the loop (a few
    # calls get through at each look of the loop, and it needs more than 9,000).
    busy = max(3.0, 3 * seconds)
    done, seconds, count, want = _sync_while_holding_the_gil(rust_core, tmp_path / "proxied", Proxy, busy)
    assert not done, f"a session that needs the GIL for every call finished in {seconds:.1f} s while the GIL was held"
    assert count == want  # and it finished once the loop let go
