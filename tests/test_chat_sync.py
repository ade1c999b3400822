"""lama.chat between instances synced by CHUM in-process (docs/chat.md; app-layer.md §2-§5):
both ways, concurrent posts merged, no duplicates after repeated pairing and sync, a second
device of the same person, events for imported messages."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chat_util import CountingStore, keys, make, pair, store_pairing, sync, texts, two  # noqa: F401 (two: a fixture)
from lama import access
from lama._core import core
from lama.chat import Chat, one_to_one_id
from lama.objects import versions


def test_topic_and_channel_are_the_reference_ones(two: Any) -> None:
    """objects.md §8: the 1-to-1 topic id and its ownerless channel (vector a6c681af…38ab for
    alice@example.com / bob@example.com); both sides compute the same, grants written at once."""
    ca, cb = two
    ta, tb = ca.one_to_one(cb.me), cb.one_to_one(ca.me)
    assert ta.id == tb.id == one_to_one_id(ca.me, cb.me) == f"{min(ca.me, cb.me)}<->{max(ca.me, cb.me)}"
    assert ta.channel == tb.channel == "a6c681afd72de71113cbb69d829df72cf5f976b4ef70415d1c6a95d5d18638ab"
    assert ta.hash == tb.hash and ta.kind == "one_to_one" and ta.peer == cb.me and tb.peer == ca.me
    assert ca.store.get_object(ta.hash) == {"$type$": "Topic", "name": ta.id, "id": ta.id,
                                            "channel": ta.channel}
    # §4.3 / B1: IdAccess on the channel and Access on the Topic for both, before any message
    for c in (ca, cb):
        assert sorted(access.grants(c.store, id=ta.channel)[0]) == sorted([ca.me, cb.me])
        assert sorted(access.grants(c.store, object=ta.hash)[0]) == sorted([ca.me, cb.me])
    _mark, roots = access.accessible_roots(ca.store, cb.me)
    assert ("id", ta.channel) in {(r.kind, r.hash) for r in roots}
    assert ("unversioned", ta.hash) in {(r.kind, r.hash) for r in roots}


def test_chat_both_ways_identical_history(two: Any) -> None:
    ca, cb = two
    ca.send(cb.me, "hi bob <3", timestamp=1_700_000_000_000)
    cb.send(ca.me, "hi alice 👋", timestamp=1_700_000_000_500)
    ca.send(cb.me, "how are you?", timestamp=1_700_000_001_000)
    sync(ca, cb)
    assert texts(ca, cb.me) == texts(cb, ca.me) == ["hi bob <3", "hi alice 👋", "how are you?"]
    assert keys(ca, cb.me) == keys(cb, ca.me)
    ha, hb = ca.history(cb.me), cb.history(ca.me)
    assert [m.sender for m in ha] == [ca.me, cb.me, ca.me]
    assert [m.outgoing for m in ha] == [True, False, True]
    assert [m.outgoing for m in hb] == [False, True, False]
    # the signatures verify with the keys pairing stored (app-layer.md §1.7)
    assert all(ca.verify(m) for m in ha) and all(cb.verify(m) for m in hb)
    assert [m.sender_name for m in ha] == ["Alice", "bob@example.com", "Alice"]
    # the merged channel heads are the same object on both sides
    cid = ca.one_to_one(cb.me).channel
    assert versions.current(ca.store, cid)["head"] == versions.current(cb.store, cid)["head"]
    assert ca.store.verify() == [] and cb.store.verify() == []


def test_concurrent_posts_merge(two: Any) -> None:
    """Both sides post while apart; the linked-list CRDT (§2.5) merges to one order:
    (timestamp, CreationTime hash) ascending, the same on both sides."""
    ca, cb = two
    sync(ca, cb)
    base = 1_700_000_000_000
    for i in range(5):
        ca.send(cb.me, f"a{i}", timestamp=base + 10 * i)
        cb.send(ca.me, f"b{i}", timestamp=base + 10 * i + 5)
    cb.send(ca.me, "same ms as a2", timestamp=base + 20)
    sync(ca, cb)
    ha, hb = keys(ca, cb.me), keys(cb, ca.me)
    assert ha == hb and len(ha) == 11
    assert ha == sorted(ha, key=lambda k: (k[0], k[1]))
    assert [k[3] for k in ha if k[3].startswith("a")] == [f"a{i}" for i in range(5)]
    # a further round of posts and sync still converges, nothing moves afterwards
    ca.send(cb.me, "after merge a")
    cb.send(ca.me, "after merge b")
    sync(ca, cb)
    assert keys(ca, cb.me) == keys(cb, ca.me) and len(keys(ca, cb.me)) == 13
    ra, rb = sync(ca, cb, rounds=1)
    assert sum(len(v) for k, v in ra.log.items() if k.startswith("BtoA")) == 0
    assert sum(len(v) for k, v in rb.log.items() if k.startswith("BtoA")) == 0


@pytest.mark.parametrize("fast", [False, True])
def test_no_duplicates_after_repeated_pairing_and_sync(two: Any, fast: bool) -> None:
    ca, cb = two
    ca.send(cb.me, "one")
    sync(ca, cb, fast=fast)
    leute_before = ca.store.get_head(ca._leute_id)
    for _ in range(3):
        pair(ca, cb)  # pairing stores the identities again and runs the hook on both sides
        assert ca.on_paired(cb.me) == ca.contact(cb.me)
        sync(ca, cb, fast=fast)
    assert ca.store.get_head(ca._leute_id) == leute_before  # nothing rewritten
    for c, other in ((ca, cb), (cb, ca)):
        cs = c.contacts()
        assert [x.person_id for x in cs] == [other.me]
        assert len(versions.current(c.store, c._leute_id)["other"]) == 1
        assert [t.id for t in c.topics()] == [one_to_one_id(ca.me, cb.me)]
        assert texts(c, other.me) == ["one"]
    # the chat layer on a reopened instance finds the same contact and topic
    ca.close()
    ca2 = Chat(ca.instance, events=False)
    assert [x.person_id for x in ca2.contacts()] == [cb.me]
    assert [t.id for t in ca2.topics()] == [one_to_one_id(ca.me, cb.me)]
    ca2.close()


def test_second_device_converges(tmp_path: Path) -> None:
    """A second instance of Alice's person (same email) synced with her first one joins the
    conversation: the channel is a pure function of the topic (B6), the grants name her person,
    so all three end with one history."""
    a1, a2, b = make(tmp_path, "alice"), make(tmp_path, "alice2", "alice@example.com"), make(tmp_path, "bob")
    c1, c2, cb = Chat(a1, events=False), Chat(a2, events=False), Chat(b, events=False)
    try:
        assert c1.me == c2.me
        pair(c1, cb)
        store_pairing(a1, a2)
        assert c1.on_paired(c2.me) is None and c2.on_paired(c1.me) is None  # my own device
        c1.send(cb.me, "from laptop", timestamp=1_700_000_000_000)
        cb.send(c1.me, "from bob", timestamp=1_700_000_000_100)
        sync(c1, cb)
        sync(c1, c2)
        c2.process_changes()
        topic = one_to_one_id(c1.me, cb.me)
        assert [t.id for t in c2.topics()] == [topic]
        assert texts(c2, topic) == ["from laptop", "from bob"]
        c2.send(topic, "from phone", timestamp=1_700_000_000_200)
        sync(c2, c1)
        sync(c1, cb)
        want = ["from laptop", "from bob", "from phone"]
        assert texts(c1, cb.me) == texts(cb, c1.me) == texts(c2, topic) == want
        sync(c1, c2)
        assert keys(c1, cb.me) == keys(cb, c1.me) == keys(c2, topic)
        # one channel, the ownerless one, on every device
        for c in (c1, c2, cb):
            assert {m.channel for m in c.history(topic)} == {c.topic(topic).channel}
    finally:
        for c in (c1, c2, cb):
            c.close()
            c.instance.close()



def test_two_devices_and_a_contact_stop_merging_once_converged(tmp_path: Path) -> None:
    """Laptop and phone of Alice and Bob, the laptop in the middle (its CHUM sessions with both
    end before its chat layer sees the imports, as with a running ``lama serve``, whose event
    thread republishes after the importer merged). Once all three hold the same messages, a
    round of sessions writes nothing more. Before, every merge of two branches with the same
    data was republished as a new change node, which the other two merged with their own
    branches again: six new version nodes a round, for ever - a running laptop spent its time
    in that exchange and answered a new connection's identity steps too late (issue 10,
    test_device_cli)."""
    a1, a2, b = (make(tmp_path, "alice"), make(tmp_path, "alice2", "alice@example.com"),
                 make(tmp_path, "bob"))
    laptop, phone, cb = Chat(a1, events=False), Chat(a2, events=False), Chat(b, events=False)
    chats = (laptop, phone, cb)
    try:
        pair(laptop, cb)
        store_pairing(a1, a2)
        laptop.on_paired(phone.me)
        phone.on_paired(laptop.me)
        laptop.send(cb.me, "from laptop", timestamp=1_700_000_000_000)
        cb.send(laptop.me, "from bob", timestamp=1_700_000_000_100)
        sync(laptop, cb)
        sync(laptop, phone)
        topic = one_to_one_id(laptop.me, cb.me)
        cid = laptop.one_to_one(cb.me).channel
        # one post on each at once: three branches
        phone.send(topic, "from phone", timestamp=1_700_000_000_200)
        cb.send(laptop.me, "bob again", timestamp=1_700_000_000_300)
        laptop.send(cb.me, "laptop again", timestamp=1_700_000_000_400)
        want = ["from laptop", "from bob", "from phone", "bob again", "laptop again"]
        nodes: list[int] = []
        for _ in range(10):
            sync(a1, a2, rounds=1)  # the instances: the chat layers have not looked yet
            sync(a1, b, rounds=1)
            for c in chats:
                c.process_changes()  # now the chat layers (the event threads) catch up
            nodes.append(sum(len(c.store.version_nodes(cid)) for c in chats))
        assert texts(laptop, cb.me) == texts(cb, laptop.me) == texts(phone, topic) == want
        assert nodes[-1] == nodes[-4], f"version nodes still growing after convergence: {nodes}"
        # each replica's head may now be a merge it did not republish: posts made on top of it
        # still reach the other two, and the three converge again
        laptop.send(cb.me, "laptop 3", timestamp=1_700_000_000_500)
        phone.send(topic, "phone 3", timestamp=1_700_000_000_600)
        cb.send(laptop.me, "bob 3", timestamp=1_700_000_000_700)
        for _ in range(4):
            sync(a1, a2, rounds=1)
            sync(a1, b, rounds=1)
            for c in chats:
                c.process_changes()
        want += ["laptop 3", "phone 3", "bob 3"]
        assert texts(laptop, cb.me) == texts(cb, laptop.me) == texts(phone, topic) == want
    finally:
        for c in chats:
            c.close()
            c.instance.close()

def test_events_for_imported_and_local_messages(tmp_path: Path) -> None:
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a), Chat(b)  # with the event threads
    got: dict[str, list[tuple[str, Any]]] = {"a": [], "b": []}
    cond = threading.Condition()

    def collect(side: str) -> Any:
        def cb_(kind: str, data: dict[str, Any]) -> None:
            with cond:
                got[side].append((kind, data))
                cond.notify_all()
        return cb_

    ca.subscribe(collect("a"))
    cb.subscribe(collect("b"))

    def wait_for(side: str, pred: Any, timeout: float = 20.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                msgs = [d["message"] for k, d in got[side] if k == "message"]
                if pred(msgs):
                    return msgs
                left = deadline - time.monotonic()
                assert left > 0, (side, got[side])
                cond.wait(left)

    try:
        pair(ca, cb)
        m1 = ca.send(cb.me, "local")
        msgs = wait_for("a", lambda ms: len(ms) >= 1)
        assert [m.id for m in msgs] == [m1.id] and msgs[0].text == "local" and msgs[0].outgoing
        sync(ca, cb)
        msgs = wait_for("b", lambda ms: len(ms) >= 1)
        assert msgs[0].id == m1.id and msgs[0].text == "local" and not msgs[0].outgoing
        assert msgs[0].peer == ca.me and msgs[0].topic_id == one_to_one_id(ca.me, cb.me)
        m2 = cb.send(ca.me, "reply")
        sync(ca, cb)
        msgs = wait_for("a", lambda ms: len(ms) >= 2)
        assert [m.id for m in msgs] == [m1.id, m2.id]
        # repeated sync and merges raise nothing again: exactly once per message
        sync(ca, cb)
        time.sleep(0.5)
        for side in ("a", "b"):
            ids = [d["message"].id for k, d in got[side] if k == "message"]
            assert sorted(ids) == sorted({m1.id, m2.id}), side
        kinds_b = [(k, d.get("change")) for k, d in got["b"]]
        assert sorted(kinds_b[:2]) == [("contact", "added"), ("topic", None)]
        assert [k for k, _ in got["b"][2:]] == ["message", "message"]
    finally:
        for c in (ca, cb):
            c.close()
            c.instance.close()


def test_catch_up_after_reopen(tmp_path: Path) -> None:
    """Objects imported while no Chat was open (a sync by another tool) are registered at the
    next open (the persisted feed mark)."""
    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    try:
        store_pairing(a, b)
        ca.on_paired(cb.me)  # only Alice runs the hook; Bob's chat is closed during the sync
        cb.close()
        ca.send(cb.me, "while you were away")
        ca.create_group("friends", [cb.me], topic_id="friends-topic")
        sync(ca, b)
        cb = Chat(b, events=False)
        ids = sorted(t.id for t in cb.topics())
        assert ids == sorted([one_to_one_id(ca.me, cb.me), "friends-topic"])
        assert texts(cb, one_to_one_id(ca.me, cb.me)) == ["while you were away"]
    finally:
        for c in (ca, cb):
            c.close()
            c.instance.close()


class _Reopened:
    """An open instance whose chat layer reads through a :class:`CountingStore`."""

    def __init__(self, inst: Any) -> None:
        self._inst = inst
        self.store = CountingStore(inst.store)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inst, name)


def test_catch_up_reads_no_message(tmp_path: Path) -> None:
    """Issue 10: the catch-up at open read every object committed since the persisted mark to
    find Topic objects (after a bulk fill, most of the store). It now reads the feed's
    head/id entries and finds Topics through the Topic.channel reverse map: the same number
    of object reads for 10 and 400 messages behind the mark, and the topics, channels and
    messages are all there."""
    reads = []
    for n in (10, 400):
        base = tmp_path / f"n{n}"
        a, b = make(base, "alice"), make(base, "bob")
        ca, cb = Chat(a, events=False), Chat(b, events=False)
        store_pairing(a, b)
        ca.on_paired(cb.me)
        cb.close()  # Bob's mark stays before everything below
        ca.create_group("friends", [cb.me], topic_id="friends-topic")
        ca.send_many(cb.me, [f"m {i}" for i in range(n)])
        ca.send_many("friends-topic", [f"g {i}" for i in range(n)])
        sync(ca, b)
        ca.close()
        assert b.store.last_seq() - b.store.peer_mark("lama.chat") > 8 * n
        counted = _Reopened(b)
        cb = Chat(counted, events=False)
        try:
            reads.append(counted.store.reads)
            ids = sorted(t.id for t in cb.topics())
            assert ids == sorted([one_to_one_id(ca.me, cb.me), "friends-topic"])
            assert len(cb.history("friends-topic")) == n
            got = texts(cb, one_to_one_id(ca.me, cb.me))
            assert sorted(got) == sorted(f"m {i}" for i in range(n))
        finally:
            cb.close()
            a.close()
            b.close()
    assert reads[0] == reads[1], reads
    # a constant: the feed's head/id entries, the topics, and the group topic's membership
    # certificates (docs/chat.md §3.1) -- none of the n messages
    assert reads[0] < 100, reads


def test_group_topic(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "alice"), make(tmp_path, "bob"), make(tmp_path, "carol")
    ca, cb, cc = Chat(a, events=False), Chat(b, events=False), Chat(c, events=False)
    try:
        pair(ca, cb)
        pair(ca, cc)
        t = ca.create_group("trip", [cb.me, cc.me], topic_id="trip-2026")
        assert t.kind == "group" and t.participants == tuple(sorted([ca.me, cb.me, cc.me]))
        assert sorted(access.grants(ca.store, id=t.channel)[0]) == sorted([ca.me, cb.me, cc.me])
        ca.send(t, "who brings the tent?", timestamp=1_700_000_000_000)
        sync(ca, cb)
        sync(ca, cc)
        for x in (cb, cc):
            x.process_changes()
            assert texts(x, "trip-2026") == ["who brings the tent?"]
        # Bob answers; the participants came with the topic (docs/chat.md §3.1), Bob shares
        # his copy with them, so his post reaches Carol through Alice (re-adding is a no-op)
        assert cb.topic("trip-2026").participants == t.participants
        cb.add_participants("trip-2026", [ca.me, cc.me])
        cb.send("trip-2026", "me", timestamp=1_700_000_000_100)
        sync(cb, ca)
        sync(ca, cc)
        assert texts(ca, t) == texts(cb, t) == texts(cc, t) == ["who brings the tent?", "me"]
        assert ca.create_group("trip", [cb.me, cc.me], topic_id="trip-2026").hash == t.hash
    finally:
        for x in (ca, cb, cc):
            x.close()
            x.instance.close()


def test_remove_contact_revokes_and_repair_restores(two: Any) -> None:
    ca, cb = two
    t = ca.one_to_one(cb.me)
    ca.send(cb.me, "before")
    sync(ca, cb)
    removed = ca.remove_contact(cb.me)
    assert removed.person_id == cb.me and removed.instances == (cb.instance.instance_id,)
    assert sorted(removed.revoked) == sorted([access.grant_id(id=t.channel), access.grant_id(object=t.hash)])
    assert ca.contacts() == []
    assert access.grants(ca.store, id=t.channel)[0] == [ca.me]
    ca.send(t, "after removal")
    sync(ca, cb)
    assert texts(cb, ca.me) == ["before"]  # nothing new reaches a removed contact
    assert texts(ca, t) == ["before", "after removal"]  # the history stays readable
    # the start-up re-run of the hook does not bring it back; a new pairing does
    assert ca.on_paired(cb.me, readd=False) is None and ca.contacts() == []
    Chat(ca.instance, events=False).close()  # the start-up share does not re-grant either
    assert access.grants(ca.store, id=t.channel)[0] == [ca.me]
    assert ca.on_paired(cb.me) is not None
    assert [c.person_id for c in ca.contacts()] == [cb.me]
    sync(ca, cb)
    assert texts(cb, ca.me) == ["before", "after removal"]


def test_rename_and_paging(two: Any) -> None:
    ca, cb = two
    c = ca.rename(cb.me, "Bobby")
    assert c.name == "Bobby" and ca.contact(cb.me).name == "Bobby"
    assert [x.name for x in ca.contacts()] == ["Bobby"]
    base = 1_700_000_000_000
    sent = [ca.send(cb.me, f"m{i}", timestamp=base + i) for i in range(30)]
    page1 = list(ca.messages(cb.me, limit=10))
    assert [m.text for m in page1] == [f"m{i}" for i in range(29, 19, -1)]
    page2 = list(ca.messages(cb.me, limit=10, before=page1[-1].id))
    assert [m.text for m in page2] == [f"m{i}" for i in range(19, 9, -1)]
    assert list(ca.messages(cb.me, limit=0)) == []
    assert ca.message(sent[3].id).text == "m3"
    bulk = ca.send_many(cb.me, [f"bulk{i}" for i in range(50)], timestamp=None)
    assert len(bulk) == 50 and len({m.id for m in bulk}) == 50
    hist = ca.history(cb.me)
    assert len(hist) == 80 and {m.text for m in hist[30:]} == {f"bulk{i}" for i in range(50)}
    sync(ca, cb)
    assert keys(cb, ca.me) == keys(ca, cb.me)
    assert all(cb.verify(m) for m in cb.history(ca.me))


def test_concurrent_senders_share_commits(two: Any) -> None:
    """Group commit: sends from many threads at once are written together, each sender gets
    its own message back, nothing is lost or duplicated, and the peer receives them all."""
    from concurrent.futures import ThreadPoolExecutor

    ca, cb = two
    n = 120
    with ThreadPoolExecutor(12) as ex:
        sent = list(ex.map(lambda i: ca.send(cb.me, f"t{i}"), range(n)))
    assert [m.text for m in sent] == [f"t{i}" for i in range(n)]
    assert len({m.id for m in sent}) == n
    hist = ca.history(cb.me)
    assert sorted(m.text for m in hist) == sorted(f"t{i}" for i in range(n))
    assert {m.id for m in hist} == {m.id for m in sent}
    sync(ca, cb)
    assert keys(cb, ca.me) == keys(ca, cb.me)
