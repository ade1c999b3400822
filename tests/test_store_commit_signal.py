"""Issue 10: ``Store.commit_signal()`` (docs/core-interface.md "Event feed"), on the core under
test: a file descriptor that the committing thread makes readable right after every commit of
this process, so an event loop reads the feed on its own wake-up (lama.chat's attach_loop)
instead of a thread that waits on a Subscription and hands over."""

from __future__ import annotations

import select
import threading
from pathlib import Path

import pytest

from chum_graph import person_id, register_recipes
from lama._core import core
from lama.errors import LamaError, StoreError


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


def _readable(fd: int, timeout: float = 0.0) -> bool:
    r, _w, _x = select.select([fd], [], [], timeout)
    return bool(r)


def test_a_commit_makes_it_readable_until_cleared(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    try:
        sig = store.commit_signal()
        fd = sig.fileno()
        assert isinstance(fd, int) and not sig.closed
        assert not _readable(fd)
        assert sig.clear() is False  # nothing committed yet
        person_id(store, "alice@a.example")
        assert _readable(fd)  # signalled by the committing thread before put_objects returned
        assert sig.clear() is True
        assert not _readable(fd)
        # several commits before a clear: one readable state, one clear
        person_id(store, "bob@b.example")
        person_id(store, "carol@c.example")
        assert _readable(fd) and sig.clear() and not _readable(fd)
        # a commit of another thread, through another handle of the same directory
        other = core.Store(str(tmp_path / "s"))
        try:
            t = threading.Thread(target=person_id, args=(other, "dave@d.example"))
            t.start()
            assert _readable(fd, 30.0)
            t.join()
        finally:
            other.close()
        assert sig.clear()
        # a transaction that writes no event (a peer mark) does not signal
        store.set_peer_mark("some-peer", 7)
        assert not _readable(fd)
        sig.close()
        sig.close()  # twice is harmless
        assert sig.closed and sig.clear() is False
        with pytest.raises(StoreError) as e:
            sig.fileno()
        assert isinstance(e.value, LamaError) and e.value.code == "LAMA-CLOSED"
        person_id(store, "erin@e.example")  # a commit after close still works
        assert store.last_seq() > 0
    finally:
        store.close()


def test_two_signals_are_independent(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    try:
        a, b = store.commit_signal(), store.commit_signal()
        assert a.fileno() != b.fileno()
        person_id(store, "alice@a.example")
        assert _readable(a.fileno()) and _readable(b.fileno())
        a.clear()
        assert not _readable(a.fileno()) and _readable(b.fileno())
        a.close()
        person_id(store, "bob@b.example")
        b.clear()
        person_id(store, "carol@c.example")
        assert _readable(b.fileno())
        b.close()
    finally:
        store.close()
