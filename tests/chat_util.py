"""Two (or more) lama instances chatting in one process for the lama.chat tests: pairing
stores each other's identity (connections.md §6.4, the storage half of a pairing) and runs the
chat layer's on-paired hook on both sides; CHUM v8 runs between two stores through the
sans-I/O pump (docs/chum-session.md §2), as tests/test_chum_sync.py does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from chum_pump import Pump
from lama._core import core
from lama.chat import Chat
from lama.chum import SyncResult, handle_event
from lama.connect import pairing
from lama.identity.instance import Instance

URL = "ws://127.0.0.1:1"


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[Chat, Chat]]:
    """Alice's and Bob's chat layers on fresh instances, paired (events off); closed after."""
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    pair(ca, cb)
    yield ca, cb
    for c in (ca, cb):
        c.close()
        c.instance.close()


def make(tmp: Path, name: str, email: str | None = None) -> Instance:
    return Instance.create(str(tmp / name), email=email or f"{name}@example.com",
                           person_name=name.capitalize(), instance_name=f"{name}-device",
                           secret="chat-test-secret-" + name)


def store_pairing(a: Instance, b: Instance) -> None:
    """What a pairing stores on both sides (Person, Instance, Keys, endpoint, Profile, trust)."""
    pairing.store_identity(a, pairing.identity_of(b, URL))
    pairing.store_identity(b, pairing.identity_of(a, URL))


def pair(ca: Chat, cb: Chat) -> None:
    store_pairing(ca.instance, cb.instance)
    ca.on_paired(cb.me)
    cb.on_paired(ca.me)


def sync(a: Chat | Instance, b: Chat | Instance, *, fast: bool = False,
         rounds: int = 4) -> tuple[SyncResult, SyncResult]:
    """CHUM between the two stores until a session moves nothing (at most ``rounds``)."""
    sa_store, sb_store = a.store, b.store
    pa = str(a.me if isinstance(a, Chat) else a.person_id)
    pb = str(b.me if isinstance(b, Chat) else b.person_id)
    for round_ in range(rounds):
        sa = core.ChumSession(sa_store, pa, pb, fast_path=fast)
        sb = core.ChumSession(sb_store, pb, pa, fast_path=fast)
        results = (SyncResult(), SyncResult())
        stores = (sa_store, sb_store)

        def on_event(side: int, kind: str, data: dict[str, Any]) -> None:
            handle_event(stores[side], kind, data, results[side])

        pump = Pump(sa, sb, on_event=on_event)
        sa.start(pump.now)
        sb.start(pump.now)
        pump.run(max_time=3600.0)
        for c in (a, b):
            # what the event thread of a running chat layer does after an import (register
            # topics, republish a merged channel version); here by hand
            if isinstance(c, Chat) and c._sub is None:
                c.process_changes()
        for r in results:
            assert [e for e in r.errors if e.get("fatal")] == [], r.errors
        moved = sum(len(r.log.get(k, ())) for r in results
                    for k in ("BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob"))
        if moved == 0 and round_ > 0:
            break
    return results


def texts(chat: Chat, target: Any) -> list[str]:
    """The texts oldest first."""
    return [m.text for m in chat.history(target)]


def keys(chat: Chat, target: Any) -> list[tuple[int, str, str, str]]:
    return [(m.timestamp, m.id, m.sender, m.text) for m in chat.history(target)]


class CountingStore:
    """The instance's store, counting the objects read through ``get``/``get_object`` and the
    change-feed entries read through ``changes``/``changes_of`` (``feed``)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.reads = 0
        self.feed = 0

    def changes(self, since: int, limit: int) -> Any:
        got = self._store.changes(since, limit)
        self.feed += len(got)
        return got

    def changes_of(self, types: Any, since: int, limit: int) -> Any:
        pos, got = self._store.changes_of(types, since, limit)
        self.feed += max(0, pos - since)  # every entry scanned, whatever its type
        return pos, got

    def get(self, h: str) -> str:
        self.reads += 1
        return str(self._store.get(h))

    def get_object(self, h: str) -> Any:
        self.reads += 1
        return self._store.get_object(h)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
