"""lama.chat events on an asyncio loop (docs/chat.md §5): a callback subscribed while a loop
runs is called on that loop's thread, for local posts and for messages imported by CHUM."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from chat_util import make, pair, sync
from lama.chat import Chat


def test_callbacks_run_on_the_subscribing_loop(tmp_path: Path) -> None:
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)

    async def main() -> list[tuple[str, Any, bool]]:
        loop_thread = threading.get_ident()
        seen: list[tuple[str, Any, bool]] = []
        got = asyncio.Event()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            seen.append((kind, data, threading.get_ident() == loop_thread))
            if sum(1 for k, _d, _t in seen if k == "message") >= 2:
                got.set()

        unsubscribe = ca.subscribe(on_event)
        await asyncio.to_thread(pair, ca, cb)
        await asyncio.to_thread(ca.send, cb.me, "mine")
        await asyncio.to_thread(cb.send, ca.me, "theirs")
        await asyncio.to_thread(sync, ca, cb)
        await asyncio.wait_for(got.wait(), 20)
        unsubscribe()
        await asyncio.to_thread(ca.send, cb.me, "after unsubscribe")
        await asyncio.sleep(0.5)
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()
    assert all(on_loop for _k, _d, on_loop in seen)
    msgs = [d["message"].text for k, d, _t in seen if k == "message"]
    assert sorted(msgs) == ["mine", "theirs"]
    assert {k for k, _d, _t in seen} == {"contact", "topic", "message"}


def test_own_posts_are_emitted_once_and_not_kept(tmp_path: Path) -> None:
    """The event thread emits my posts with the Message objects the post built (no second
    read); whichever of the two threads comes first, every message is emitted exactly once and
    neither side keeps them afterwards (Chat._posted / Chat._built_own end empty)."""
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    seen: list[str] = []
    done = threading.Event()
    n_single, n_bulk = 30, 600

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "message":
            seen.append(data["message"].text)
            if len(seen) >= n_single + n_bulk:
                done.set()

    try:
        pair(ca, cb)
        ca.subscribe(on_event)
        posted = [ca.send(cb.me, f"one {i}") for i in range(n_single)]
        posted += ca.send_many(cb.me, [f"bulk {i}" for i in range(n_bulk)])
        assert done.wait(30), len(seen)
        deadline = time.monotonic() + 5
        while (ca._posted or ca._built_own) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(seen) == sorted(m.text for m in posted)
        assert not ca._posted and not ca._built_own, (len(ca._posted), len(ca._built_own))
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()


def test_own_commits_are_emitted_without_walking_the_list(tmp_path: Path, monkeypatch: Any) -> None:
    """A head move made only by my own commits (several, as App.send_many's growing batches
    make them) is emitted from the posts' own Message objects: the event thread does not walk
    the channel's list (lama.chat.channel.new_elements), every message comes once, oldest
    first in list order. A move that also holds an imported message is walked as before."""
    from lama.chat import channel as ch

    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    seen: list[Any] = []
    walks: list[int] = []
    arrived = threading.Condition()
    real = ch.new_elements

    def counting(store: Any, old: Any, new: Any) -> Any:
        els = real(store, old, new)
        walks.append(len(els))
        return els

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "message":
            with arrived:
                seen.append(data["message"])
                arrived.notify_all()

    def wait_for(n: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(seen) >= n, 30), len(seen)

    monkeypatch.setattr(ch, "new_elements", counting)
    try:
        pair(ca, cb)
        ca.subscribe(on_event)
        first = ca.send(cb.me, "first")
        wait_for(1)
        walks.clear()
        # the event thread waits (it takes Chat._lock first) until all nine commits are in
        with ca._lock:
            posted = ca.send_many(cb.me, [f"bulk {i}" for i in range(400)], batch=50)
            posted.append(ca.send(cb.me, "last"))
        wait_for(402)
        assert walks == []  # no list walk for my own commits
        assert [m.id for m in seen[1:]] == [m.id for m in reversed(list(ca.messages(cb.me, limit=401)))]
        assert {m.id for m in seen} == {m.id for m in [first, *posted]}
        # an imported message in between: that move is walked, nothing is lost or doubled
        cb.send(ca.me, "theirs")
        sync(ca, cb)
        ca.send_many(cb.me, ["after 1", "after 2"])
        wait_for(405)
        texts = [m.text for m in seen]
        assert len(texts) == 405 == len(set(m.id for m in seen))
        assert set(texts[-3:]) == {"theirs", "after 1", "after 2"}
        # in list order (both may carry the same millisecond: then the CreationTime hash orders)
        listed = [m.text for m in reversed(list(ca.messages(cb.me, limit=2)))]
        assert [x for x in texts if x.startswith("after ")] == listed
        deadline = time.monotonic() + 5
        while (ca._posted or ca._built_own) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ca._posted and not ca._built_own
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()
