"""Group topics between three (four) instances synced by CHUM in-process (docs/chat.md §3.1,
lama.chat.groups): the participants travel as membership certificates, every participant
shares the topic with the others, all converge on the same history and participants."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from chat_util import keys, make, pair, sync, texts
from lama import access
from lama.chat import Chat
from lama.chat import groups


@pytest.fixture
def three(tmp_path: Path) -> Iterator[tuple[Chat, Chat, Chat]]:
    """Alice paired with Bob and with Carol; Bob and Carol do not know each other."""
    chats = [Chat(make(tmp_path, n), events=False) for n in ("alice", "bob", "carol")]
    ca, cb, cc = chats
    pair(ca, cb)
    pair(ca, cc)
    yield ca, cb, cc
    for x in chats:
        x.close()
        x.instance.close()


def test_group_topic_participants_and_posts_of_all_members(three: Any) -> None:
    ca, cb, cc = three
    everyone = tuple(sorted([ca.me, cb.me, cc.me]))
    t = ca.create_group("trip", [cb.me, cc.me], topic_id="trip-2026")
    assert t.participants == everyone
    sync(ca, cb)
    sync(ca, cc)
    for x in (cb, cc):
        tx = x.topic("trip-2026")
        # the participants arrived with the topic, although Group/Access objects never travel
        assert tx.kind == "group" and tx.name == "trip" and tx.participants == everyone
        assert sorted(groups.members(x.store, tx.channel)) == list(everyone)
        # ... so the receiver shares the channel with every participant itself
        assert sorted(access.grants(x.store, id=tx.channel)[0]) == list(everyone)
    ca.send(t, "who brings the tent?", timestamp=1_700_000_000_000)
    cb.send("trip-2026", "I do", timestamp=1_700_000_000_100)
    cc.send("trip-2026", "I bring the stove", timestamp=1_700_000_000_200)
    # Bob and Carol are not connected: Carol's post reaches Bob through Alice and back
    for _ in range(2):
        sync(cb, ca)
        sync(cc, ca)
    want = ["who brings the tent?", "I do", "I bring the stove"]
    assert texts(ca, t) == texts(cb, t) == texts(cc, t) == want
    assert keys(ca, t) == keys(cb, t) == keys(cc, t)
    assert [m.sender for m in ca.history(t)] == [ca.me, cb.me, cc.me]
    assert ca.topic(t).participants == cb.topic(t).participants == cc.topic(t).participants \
        == everyone
    # nothing more to write on a repeat: idempotent creation, no new certificates
    n = len(groups.members(ca.store, t.channel)[cb.me])
    assert ca.create_group("trip", [cb.me, cc.me], topic_id="trip-2026").hash == t.hash
    assert len(groups.members(ca.store, t.channel)[cb.me]) == n == 1


def test_member_posts_reach_a_directly_connected_member(tmp_path: Path) -> None:
    """Carol's own grants carry her post to Bob without the creator in between."""
    chats = [Chat(make(tmp_path, n), events=False) for n in ("alice", "bob", "carol")]
    ca, cb, cc = chats
    try:
        pair(ca, cb)
        pair(ca, cc)
        pair(cb, cc)
        t = ca.create_group("trip", [cb.me, cc.me], topic_id="trip")
        sync(ca, cb)
        sync(ca, cc)
        cc.send("trip", "hello Bob", timestamp=1_700_000_000_000)
        sync(cc, cb)
        assert texts(cb, t) == ["hello Bob"]
        assert texts(ca, t) == []  # Alice has not synced since
    finally:
        for x in chats:
            x.close()
            x.instance.close()


def test_added_participant_travels_to_everyone(three: Any, tmp_path: Path) -> None:
    """Bob adds Dave (his contact only): Dave gets the topic with all four participants, and
    Alice learns of Dave from Bob's certificate."""
    ca, cb, cc = three
    cd = Chat(make(tmp_path, "dave"), events=False)
    try:
        pair(cb, cd)
        t = ca.create_group("trip", [cb.me, cc.me], topic_id="trip")
        sync(ca, cb)
        cb.add_participants("trip", [cd.me])
        everyone = tuple(sorted([ca.me, cb.me, cc.me, cd.me]))
        assert cb.topic("trip").participants == everyone
        sync(cb, cd)
        assert cd.topic("trip").participants == everyone
        cd.send("trip", "hi all, Dave here", timestamp=1_700_000_000_000)
        sync(cd, cb)
        sync(cb, ca)
        sync(ca, cc)
        for x in (ca, cb, cc, cd):
            assert x.topic(t).participants == everyone
            assert texts(x, t) == ["hi all, Dave here"]
    finally:
        cd.close()
        cd.instance.close()


def test_events_report_the_group_topic(tmp_path: Path) -> None:
    """The receiver's chat layer raises `topic` with the participants once they are known."""
    chats = [Chat(make(tmp_path, n), events=False) for n in ("alice", "bob", "carol")]
    ca, cb, cc = chats
    try:
        pair(ca, cb)
        pair(ca, cc)
        seen: list[tuple[str, Any]] = []
        cb.subscribe(lambda kind, data: seen.append((kind, data)))
        ca.create_group("trip", [cb.me, cc.me], topic_id="trip")
        sync(ca, cb)
        cb.process_changes()
        topics = [d["topic"] for k, d in seen if k == "topic" and d["topic"].id == "trip"]
        assert topics and topics[-1].participants == tuple(sorted([ca.me, cb.me, cc.me]))
    finally:
        for x in chats:
            x.close()
            x.instance.close()


@pytest.mark.timeout(180)
def test_group_topic_between_three_running_apps(tmp_path: Path) -> None:
    """Three lama.App instances through a comm server on 127.0.0.1 (their connection managers
    and chat event threads): Alice makes a group with Bob and Carol, who never paired with each
    other; everyone posts; all three converge on the same history and participants."""
    import asyncio
    import time

    from lama import App, AppConfig
    from lama._core import core

    async def until(pred: Any, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.05)

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        apps: list[App] = []
        try:
            for n in ("alice", "bob", "carol"):
                app = await App.create(tmp_path / n, email=f"{n}@example.com", name=n.title(),
                                       instance_name=n, secret="group-secret",
                                       config=AppConfig(comm_server_url=server.url))
                await app.start()
                apps.append(app)
            alice, bob, carol = apps
            for other in (bob, carol):
                await other.accept(await alice.invite())
                await alice.wait_contact(30)
            t = await alice.create_group("trip", ["bob@example.com", carol.person_id],
                                         topic_id="trip")
            everyone = tuple(sorted(a.person_id for a in apps))
            assert t.participants == everyone

            def has_topic(a: App) -> bool:
                return any(x.id == "trip" and x.participants == everyone
                           for x in a.chat.topics())

            await until(lambda: has_topic(bob) and has_topic(carol))
            for a, text in zip(apps, ("tent?", "I bring it", "I bring the stove")):
                await a.send("trip", text)
            want = sorted(["tent?", "I bring it", "I bring the stove"])
            await until(lambda: all(sorted(m.text for m in a.history("trip")) == want
                                    for a in apps))
            ids = [[m.id for m in a.history("trip")] for a in apps]
            assert ids[0] == ids[1] == ids[2]
        finally:
            for a in apps:
                await a.close()
            await server.close()

    asyncio.run(main())
