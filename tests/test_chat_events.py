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
        # in list order (timestamp, then CreationTime hash: one millisecond may hold both)
        listed = [m.text for m in reversed(list(ca.messages(cb.me, limit=3)))
                  if m.text in ("after 1", "after 2")]
        assert [t for t in texts if t in ("after 1", "after 2")] == listed
        deadline = time.monotonic() + 5
        while (ca._posted or ca._built_own) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ca._posted and not ca._built_own
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()


def test_attach_loop_reads_the_feed_on_the_loop(tmp_path: Path, monkeypatch: Any) -> None:
    """Chat.attach_loop (issue 10, what App.start does): the event thread ends, and the loop
    itself reads the feed when the store's commit signal wakes it. Own posts (committed by a
    worker thread) and imported messages (committed by the CHUM import in another thread)
    reach a subscriber on the loop's thread, each exactly once, in list order; after
    detach_loop nothing more is dispatched. The loop's poll for other processes' commits is
    set beyond the test's waits: only the commit signal can deliver here."""
    from lama.chat import chat as chat_module

    monkeypatch.setattr(chat_module, "_LOOP_POLL", 600.0)
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    pair(ca, cb)
    posted_before = ca.send(cb.me, "before attach")  # the thread's, or the loop's first pump

    async def main() -> tuple[list[tuple[str, bool]], bool, bool, list[str]]:
        loop_thread = threading.get_ident()
        seen: list[tuple[str, bool]] = []
        changed = asyncio.Event()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "message":
                seen.append((data["message"].text, threading.get_ident() == loop_thread))
                changed.set()

        async def wait_for(n: int) -> None:
            while len(seen) < n:
                changed.clear()
                await asyncio.wait_for(changed.wait(), 20)

        ca.subscribe(on_event)
        attached = ca.attach_loop()
        again = ca.attach_loop()  # already attached
        thread = ca._thread
        assert thread is not None
        await asyncio.to_thread(thread.join, 5.0)
        await asyncio.to_thread(ca.send, cb.me, "mine 1")
        await asyncio.to_thread(ca.send_many, cb.me, ["mine 2", "mine 3"])
        await wait_for(3)
        await asyncio.to_thread(cb.send, ca.me, "theirs")
        await asyncio.to_thread(sync, ca, cb)
        await wait_for(4)
        ca.detach_loop()
        await asyncio.to_thread(ca.send, cb.me, "after detach")
        await asyncio.sleep(0.5)  # the signal would have delivered it by now
        listed = [m.text for m in ca.history(cb.me)]
        return seen, attached and not thread.is_alive(), again, listed

    try:
        seen, attached, again, listed = asyncio.run(main())
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()
    assert attached and not again
    assert all(on_loop for _t, on_loop in seen)
    texts = [t for t, _l in seen if t != posted_before.text]
    assert len(texts) == 4 and set(texts) == {"mine 1", "mine 2", "mine 3", "theirs"}
    # in list order (timestamp, then CreationTime hash: one millisecond may hold two posts)
    assert [t for t in listed if t not in ("after detach", posted_before.text)] == texts


def test_attach_loop_sees_commits_of_another_process(tmp_path: Path) -> None:
    """Commits of another process do not signal this one: the loop finds them by its poll
    (as the thread did by its wait slice). Here the other process is a second ``Instance``
    handle's writes made invisible to the signal: the Chat's poll must still find them."""
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    pair(ca, cb)

    async def main() -> list[str]:
        seen: list[str] = []
        changed = asyncio.Event()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "message":
                seen.append(data["message"].text)
                changed.set()

        ca.subscribe(on_event)
        assert ca.attach_loop()
        # the signal is gone (as for a commit by another process): only the poll can see it
        sig = ca._signal
        assert sig is not None
        asyncio.get_running_loop().remove_reader(sig.fileno())
        await asyncio.to_thread(cb.send, ca.me, "from elsewhere")
        await asyncio.to_thread(sync, ca, cb)
        while not seen:
            changed.clear()
            await asyncio.wait_for(changed.wait(), 20)
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()
    assert seen == ["from elsewhere"]


def test_attach_loop_persists_the_mark_when_idle(tmp_path: Path) -> None:
    """On the loop the chat's feed mark (Store.peer_mark("lama.chat"), where the next open's
    catch-up starts) is persisted once the feed has been quiet for a poll, off the loop."""
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    pair(ca, cb)

    async def main() -> tuple[int, int]:
        got = asyncio.Event()
        ca.subscribe(lambda kind, data: got.set() if kind == "message" else None)
        assert ca.attach_loop()
        await asyncio.to_thread(ca.send, cb.me, "one")
        await asyncio.wait_for(got.wait(), 20)
        end = a.store.last_seq()
        for _ in range(200):  # at most 20 s
            if a.store.peer_mark("lama.chat") >= end:
                break
            await asyncio.sleep(0.1)
        return a.store.peer_mark("lama.chat"), end

    try:
        mark, end = asyncio.run(main())
    finally:
        ca.close()
        cb.close()
        a.close()
        b.close()
    assert mark >= end


def test_attach_loop_does_not_block_on_the_posting_thread(tmp_path: Path, monkeypatch: Any) -> None:
    """On the loop, a head move of my own post whose Message the posting thread has not handed
    over yet is deferred, not waited for (the loop stays free); the post's hand-over wakes the
    loop, which then emits the message once, from the post's own Message."""
    from lama.chat import chat as chat_module

    monkeypatch.setattr(chat_module, "_LOOP_POLL", 600.0)  # only the hand-over can wake it
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    pair(ca, cb)
    release = threading.Event()
    real_cache = ca._cache

    def held_cache(m: Any) -> None:  # in _post, after the commit, before the hand-over
        if m.text == "held":
            release.wait(30)
        real_cache(m)

    ca._cache = held_cache  # type: ignore[method-assign]

    async def main() -> tuple[list[Any], bool, Any]:
        seen: list[Any] = []
        changed = asyncio.Event()

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "message":
                seen.append(data["message"])
                changed.set()

        ca.subscribe(on_event)
        assert ca.attach_loop()
        sending = asyncio.ensure_future(asyncio.to_thread(ca.send, cb.me, "held"))
        for _ in range(400):  # the loop runs while the post is held: it deferred the move
            if ca._deferred:
                break
            await asyncio.sleep(0.05)
        deferred = bool(ca._deferred) and not seen
        release.set()
        m = await sending
        while not seen:
            changed.clear()
            await asyncio.wait_for(changed.wait(), 20)
        await asyncio.sleep(0.2)  # nothing more comes
        return seen, deferred, m

    try:
        seen, deferred, m = asyncio.run(main())
    finally:
        release.set()
        ca.close()
        cb.close()
        a.close()
        b.close()
    assert deferred
    assert [x.id for x in seen] == [m.id]
    assert seen[0] is m  # the post's own Message: no list walk
    assert not ca._deferred and not ca._posted and not ca._built_own


def test_a_chat_left_open_does_not_abort_the_process_at_exit(tmp_path: Path) -> None:
    """A program that ends without closing its Chat exits normally (issue 10): the event thread
    is closed at interpreter exit, before Python stops daemon threads; stopped while it
    waited in the native core's feed, it aborted the process ("FATAL: exception not
    rethrown", exit code 134, in about two runs of three before the fix)."""
    import os
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from chat_util import make, pair\n"
        "from lama.chat import Chat\n"
        "d = Path(sys.argv[1])\n"
        "ca, cb = Chat(make(d, 'alice')), Chat(make(d, 'bob'))\n"
        "pair(ca, cb)\n"
        "ca.send(cb.me, 'left open')\n"
        "print('end', flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    for i in range(6):
        p = subprocess.run([sys.executable, "-c", script, str(tmp_path / str(i))], env=env,
                           capture_output=True, text=True, timeout=120)
        assert (p.returncode, p.stdout.strip()) == (0, "end"), p.stderr[-2000:]
