"""Fast-path pruned closures and roots in NOTIFY (docs/chum-fastpath.md "closure",
"notify-roots"; issue 8's live-push latency): a push on a long channel moves only the new
objects, in one request, and a hostile exporter using service 106 cannot make the importer
store anything wrong.  Before these extensions every pushed post made the exporter walk and
send the channel's whole history (chum.md §10.1 items 4, 5) and took three requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from chum_graph import Chat, grant_object, person_id, register_recipes
from chum_pump import Pump, without_notify_closure
from lama._core import core

LONG = 2000
"""Posts already synced: a whole-history children list for the next post is about 12,000
entries (~1 MB); the pruned closure is 6 objects."""

PER_POST = 6
"""New objects per Chat.post: ChatMessage, CreationTime, Signature, LinkedListEntry, the
ChannelInfo version and its version node."""

OPTS: dict[str, Any] = {"keep_running": True, "poll_interval": 5.0, "fast_path": True}


def _stores(tmp_path: Path, name: str = "") -> tuple[Any, Any, str, str]:
    a = core.Store(str(tmp_path / f"a{name}"), durable=False)
    b = core.Store(str(tmp_path / f"b{name}"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    return a, b, pa, pb


def _live(a: Any, b: Any, pa: str, pb: str) -> tuple[Any, Any, Pump]:
    sa, sb = core.ChumSession(a, pa, pb, **OPTS), core.ChumSession(b, pb, pa, **OPTS)
    pump = Pump(sa, sb)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert ("version", {"remote": 8, "mode": "fast"}) in pump.events[1]
    assert ("full_sync", {}) in pump.events[1]
    return sa, sb, pump


def _no_holes(store: Any) -> None:
    """chum.md §5.3 "no holes" in linear time: every reference of every stored object or ID
    object is stored (chum_graph.assert_no_holes walks each object's whole closure, which on a
    long channel is quadratic)."""
    hashes = set(store.hashes())
    for h in hashes:
        if store.kind(h) in ("object", "id"):
            for _path, _kind, r in core.references(store.get(h)):
                assert r in hashes, f"{h} references {r}, which is not stored"


def _end_clean(a: Any, b: Any, sa: Any, pump: Pump) -> None:
    """The end of a test: B has no holes and verifies clean, A's session closes, both close."""
    _no_holes(b)
    assert b.verify() == []
    sa.connection_closed("bye", pump.now)
    pump.step()
    a.close()
    b.close()


def _requests(frames: list[str | bytes], since: int = 0) -> list[int]:
    """Service ids of the requests among ``frames[since:]`` that fetch something: the 107
    receipt an importer sends after a pass (docs/chum-fastpath.md, tracing) moves no object
    and is left out."""
    out = []
    for f in frames[since:]:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m["serviceId"] != 107:
                out.append(m["serviceId"])
    return out


def test_a_push_on_a_long_channel_moves_only_the_new_objects(tmp_path: Path) -> None:
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(LONG):
        chat.post(f"message {i}")
    sa, sb, pump = _live(a, b, pa, pb)
    assert b.has(chat.head)

    for k in range(3):  # the first push, and pushes whose hints extend what A knows for free
        before_a, before_b = sa.stats(), sb.stats()
        sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
        head = chat.post(f"live {k}")
        sa.store_changed(pump.now)  # A's driver saw the write
        pump.run(max_time=1.0)
        assert b.has(head)
        after_a, after_b = sa.stats(), sb.stats()
        # no request for the whole push: the roots and their pruned closures came with the
        # NOTIFY ("notify-closure"; A seeded what B holds from its receipt)
        assert _requests(pump.sent[1], sent_b) == [], _requests(pump.sent[1], sent_b)
        # B's import made the post accessible to A at B: B's NOTIFY back to A carries no
        # closure (A sent it all, so B knows A holds it), and A asks for nothing: A only
        # sends the NOTIFY of the push
        echoes = _notifies(pump.sent[1], sent_b)
        assert all("closure" not in n for n in echoes), echoes
        assert _requests(pump.sent[0], sent_a) == [104]  # the push itself
        assert after_a["objects_sent"] - before_a["objects_sent"] == PER_POST
        assert after_b["objects_received"] - before_b["objects_received"] == PER_POST
        # the whole-history list alone would be ~1 MB
        moved = after_a["bytes_sent"] - before_a["bytes_sent"]
        assert moved < 8_000, moved
    assert [e for e in pump.events[1] if e[0] == "error"] == []
    _end_clean(a, b, sa, pump)


def test_no_echo_notify_and_the_next_notify_still_chains(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "No echo": when B's import of A's push makes the push's roots
    accessible to A at B (B shares the channel with A too), B's exporter sends no NOTIFY back:
    A holds every one of those roots (it sent them). Before, that NOTIFY made A run an empty
    pass and send a receipt: four frames per chat message, and a durable write of A's mark.
    B's next NOTIFY (its own post) still chains onto A's mark: A asks for nothing, neither
    roots (102) nor closures (106), and its mark covers the roots never announced."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    sa, sb, pump = _live(a, b, pa, pb)
    theirs = Chat.joined(b, pb, chat)
    theirs.share([pa, pb])  # B's own grants (an App's chat writes them on both sides)
    sb.store_changed(pump.now)
    pump.run(max_time=1.0)
    for k in range(3):
        sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
        head = chat.post(f"live {k}")
        sa.store_changed(pump.now)
        pump.run(max_time=1.0)
        assert b.has(head)
        sb.store_changed(pump.now)  # B's driver saw its import commit
        pump.run(max_time=1.0)
        assert _notifies(pump.sent[1], sent_b) == [], _notifies(pump.sent[1], sent_b)
        # A sent its NOTIFY and the answer to B's receipt, nothing else
        assert [json.loads(f)["type"] for f in pump.sent[0][sent_a:] if isinstance(f, str)] == ["request", "data"]
    sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
    theirs.head = chat.head
    reply = theirs.post("reply")
    sb.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert a.has(reply)
    (note,) = _notifies(pump.sent[1], sent_b)
    assert "closure" in note
    assert _requests(pump.sent[0], sent_a) == []  # no 102, no 106: the NOTIFY chained
    for side in (0, 1):
        assert [e for e in pump.events[side] if e[0] == "error"] == []
    _end_clean(a, b, sa, pump)


def test_pushes_after_a_reconnect_arrive_complete(tmp_path: Path) -> None:
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(30):
        chat.post(f"message {i}")
    sa, sb, pump = _live(a, b, pa, pb)
    chat.post("live before the drop")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    sa.connection_closed("dropped", pump.now)
    pump.step()
    assert sa.finished and sb.finished

    # written while disconnected: the next session's roots-since pass brings them
    offline = [chat.post(f"offline {i}") for i in range(3)]
    sa, sb, pump = _live(a, b, pa, pb)
    assert all(b.has(h) for h in offline)
    sent_b = len(pump.sent[1])
    live = []
    for k in range(3):
        live.append(chat.post(f"after reconnect {k}"))
        sa.store_changed(pump.now)
        pump.run(max_time=1.0)
        assert b.has(live[-1])
    # the first push of a session walks nothing A was not told of; each push needs no request
    # (the closures come with the NOTIFY)
    assert _requests(pump.sent[1], sent_b) == []
    assert [e for e in pump.events[1] if e[0] == "error"] == []
    # the whole history up to the last post is here
    assert all(b.has(h) for h in a.children(live[-1]))
    _end_clean(a, b, sa, pump)


def _live_without_notify_closure(a: Any, b: Any, pa: str, pb: str) -> tuple[Any, Any, Pump]:
    sa, sb = core.ChumSession(a, pa, pb, **OPTS), core.ChumSession(b, pb, pa, **OPTS)
    pump = Pump(sa, sb)
    pump.filters[0] = without_notify_closure
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert ("full_sync", {}) in pump.events[1]
    pump.filters[0] = None
    return sa, sb, pump


LIVE = {"notify-closure": _live, "106": _live_without_notify_closure}
"""The two ways a push's closure reaches the importer: inline in the NOTIFY, or (an exporter
without "notify-closure") in the answer to a 106 request."""


def _rewrite_closure_answers(pump: Pump, rewrite: Callable[[list[Any]], list[Any]]) -> list[int]:
    """Make A's answers to B's GET_CLOSURE requests, and the closures A's NOTIFYs carry
    ("notify-closure"), pass through ``rewrite`` (a hostile or broken exporter); returns the
    ids of the rewritten answers and NOTIFYs."""
    ids: set[int] = set()
    done: list[int] = []

    def watch_b(f: str | bytes) -> str | bytes:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m.get("serviceId") == 106:
                ids.add(m["requestId"])
        return f

    def rewrite_a(f: str | bytes) -> str | bytes:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m.get("serviceId") == 104 and m["args"] \
                    and isinstance(m["args"][0], dict) and "closure" in m["args"][0]:
                closure = m["args"][0]["closure"]
                keys = list(closure)
                m["args"][0]["closure"] = dict(zip(keys, rewrite([closure[k] for k in keys])))
                done.append(m["requestId"])
                return json.dumps(m, separators=(",", ":"))
            if m.get("type") == "data" and m.get("responseId") in ids:
                ids.discard(m["responseId"])
                done.append(m["responseId"])
                m["data"] = json.dumps(rewrite(json.loads(m["data"])), separators=(",", ":"))
                return json.dumps(m, separators=(",", ":"))
        return f

    pump.filters[1] = watch_b
    pump.filters[0] = rewrite_a
    return done


@pytest.mark.parametrize("way", sorted(LIVE))
def test_an_exporter_that_claims_an_object_is_present_stores_nothing_wrong(tmp_path: Path, way: str) -> None:
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(20):
        chat.post(f"message {i}")
    sa, sb, pump = LIVE[way](a, b, pa, pb)
    msg_hash: list[str] = []

    def omit_message(answer: list[Any]) -> list[Any]:
        # drop the new ChatMessage from the list and its data: "B already has it"
        for entry in answer:
            keep = []
            for e in entry["children"]:
                if e.get("data") and '/ChatMessage"' in e["data"] and not msg_hash:
                    msg_hash.append(e["hash"])
                    continue
                keep.append(e)
            entry["children"] = keep
        return answer

    rewritten = _rewrite_closure_answers(pump, omit_message)
    head = chat.post("the exporter hides my message")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert rewritten and msg_hash
    (m,) = msg_hash
    assert not b.has(m)
    # nothing that references the hidden object was stored: no hole
    errors = [d["code"] for k, d in pump.events[1] if k == "error"]
    assert "CI-ACO" in errors
    assert not b.has(head)
    _no_holes(b)
    assert b.verify() == []

    # the session stopped trusting pruned closures: the next pass (the fallback poll) walks
    # the whole closure with 105 and completes the post
    pump.filters[0] = pump.filters[1] = None
    sent_b = len(pump.sent[1])
    pump.run(max_time=60.0)
    assert 105 in _requests(pump.sent[1], sent_b) and 106 not in _requests(pump.sent[1], sent_b)
    assert b.has(m) and b.has(head)
    _end_clean(a, b, sa, pump)


@pytest.mark.parametrize("way", sorted(LIVE))
def test_an_exporter_that_slips_objects_into_a_closure_stores_nothing_wrong(tmp_path: Path, way: str) -> None:
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    # objects B must never get: a private message not granted, and A's Access grant object
    (secret,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "private", "sender": pa}])]
    grant = grant_object(a, secret, [pa])
    sa, sb, pump = LIVE[way](a, b, pa, pb)
    wrong = core.object_hash({"$type$": "ChatMessage", "text": "forged", "sender": pa})

    def slip(answer: list[Any]) -> list[Any]:
        for entry in answer:
            entry["children"][:0] = [
                {"type": "object", "hash": secret, "data": a.get(secret)},  # unreachable
                {"type": "object", "hash": grant, "data": a.get(grant)},  # an Access object
                {"type": "object", "hash": wrong, "data": a.get(secret)},  # wrong bytes
            ]
            entry["children"].append({"type": "object", "hash": "ab" * 32})  # listed, no data
        return answer

    rewritten = _rewrite_closure_answers(pump, slip)
    head = chat.post("second")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert rewritten
    assert b.has(head)  # the real post still arrives
    assert not b.has(secret) and not b.has(grant) and not b.has(wrong) and not b.has("ab" * 32)
    codes = {d["code"] for k, d in pump.events[1] if k == "error"}
    assert "CIEC-FO2" in codes  # wrong bytes for a hash
    assert "LAMA-CHUM-NOTREACHABLE" in codes or "CIEC-FO3" in codes
    _end_clean(a, b, sa, pump)


@pytest.mark.parametrize("way", sorted(LIVE))
def test_a_closure_answer_with_a_malformed_entry_is_refused_whole(tmp_path: Path, way: str) -> None:
    """An entry that is not a hash: the whole list of that root is refused with DC-PC4 (the
    Rust importer reads good 106 answers straight into typed entries; anything else must
    still take the general way that reports it), nothing is stored, and the next pass (105)
    completes the post."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    sa, sb, pump = LIVE[way](a, b, pa, pb)

    def bad_hash(answer: list[Any]) -> list[Any]:
        for entry in answer:
            if entry:
                entry["children"].append({"type": "object", "hash": "AB" * 32})  # uppercase
        return answer

    rewritten = _rewrite_closure_answers(pump, bad_hash)
    head = chat.post("second")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert rewritten
    codes = [d["code"] for k, d in pump.events[1] if k == "error"]
    assert "DC-PC4" in codes
    assert not b.has(head)
    _no_holes(b)
    assert b.verify() == []
    pump.filters[0] = pump.filters[1] = None
    pump.run(max_time=60.0)
    assert b.has(head)
    _end_clean(a, b, sa, pump)


def test_an_older_lama_exporter_without_the_extensions_still_pushes(tmp_path: Path) -> None:
    """A probe answer without "closure"/"notify-roots" (a lama from before them): the
    importer uses 102, 105 and 101 as before, and the pushes arrive."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    sa, sb = core.ChumSession(a, pa, pb, **OPTS), core.ChumSession(b, pb, pa, **OPTS)
    pump = Pump(sa, sb)

    def old_probe(f: str | bytes) -> str | bytes:
        if isinstance(f, str) and '"lama"' in f:
            m = json.loads(f)
            if isinstance(m.get("data"), dict) and "features" in m["data"]:
                m["data"]["features"] = ["batch", "children-batch", "push", "roots-since"]
                return json.dumps(m)
        return f

    pump.filters[0] = old_probe
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    sent_b = len(pump.sent[1])
    head = chat.post("second")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert b.has(head)
    assert _requests(pump.sent[1], sent_b) == [102, 105, 101]
    # the NOTIFY of an exporter not asked for roots carries none
    notifies = [json.loads(f) for f in pump.sent[0] if isinstance(f, str) and '"serviceId":104' in f.replace(" ", "")]
    assert notifies and all(n["args"] == [] for n in notifies)
    _no_holes(b)
    sa.connection_closed("bye", pump.now)
    pump.step()
    a.close()
    b.close()


def _listed(frames: list[str | bytes], since: int = 0) -> int:
    """Entries listed in the 106 answers and NOTIFY closures among ``frames[since:]`` (children of every root)."""
    n = 0
    for f in frames[since:]:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m.get("serviceId") == 104 and m["args"] \
                    and isinstance(m["args"][0], dict):
                # "notify-closure": the closures the NOTIFY carries
                n += sum(len(r["children"]) for r in m["args"][0].get("closure", {}).values())
            if m.get("type") == "data" and isinstance(m.get("data"), str) and '"children"' in m["data"]:
                for r in json.loads(m["data"]):
                    n += len(r["children"]) if isinstance(r, dict) else 0
    return n


def _push_counts(tmp_path: Path, length: int) -> list[tuple[int, int, int, int]]:
    """(requests, entries listed, objects sent by A, objects received by B) of pushes on a
    channel of ``length`` posts: two in the first session, then, after a reconnect with
    nothing new, two more (the first of them has no hint from this session: only the mark)."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path, str(length))
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(length):
        chat.post(f"message {i}")
    counts = []
    for session in range(2):
        sa, sb, pump = _live(a, b, pa, pb)
        for k in range(2):
            before_a, before_b = sa.stats(), sb.stats()
            sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
            head = chat.post(f"live {session} {k}")
            sa.store_changed(pump.now)
            pump.run(max_time=1.0)
            assert b.has(head)
            after_a, after_b = sa.stats(), sb.stats()
            counts.append((len(_requests(pump.sent[1], sent_b)), _listed(pump.sent[0], sent_a),
                           after_a["objects_sent"] - before_a["objects_sent"],
                           after_b["objects_received"] - before_b["objects_received"]))
        assert [e for e in pump.events[1] if e[0] == "error"] == []
        sa.connection_closed("bye", pump.now)
        pump.step()
    _no_holes(b)
    a.close()
    b.close()
    return counts


def test_the_work_of_a_push_does_not_grow_with_the_channel(tmp_path: Path) -> None:
    """Issue 10: the CHUM export of a long channel must not be quadratic. Every push, in a
    live session and as the first push after a reconnect (the importer's mark seeds what the
    exporter knows it holds, docs/chum-fastpath.md "Mark"), costs the same counts on a channel
    of 40 and of 400 posts: no request (the NOTIFY carries the closures), the new objects listed (the exporter's walk reads
    exactly the listed objects and the root: it stops at what the importer holds), sent and
    received once."""
    short, long_ = _push_counts(tmp_path, 40), _push_counts(tmp_path, 400)
    assert short == long_, (short, long_)
    for requests, listed, sent, received in long_:
        # the closures came with the NOTIFY ("notify-closure"; the first push after the
        # reconnect too: B's SUBSCRIBE told A its mark)
        assert requests == 0
        assert listed <= PER_POST
        assert sent == received == PER_POST


def _notifies(frames: list[str | bytes], since: int = 0) -> list[dict[str, Any]]:
    """The NOTIFY payloads among ``frames[since:]``."""
    out = []
    for f in frames[since:]:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m.get("serviceId") == 104:
                out.append(m["args"][0] if m["args"] else {})
    return out


def test_a_push_too_large_for_the_notify_is_fetched_with_106(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "notify-closure": the exporter inlines a NOTIFY's closures only
    within its bounds (64 entries); 30 posts written between two NOTIFYs list more, so that
    NOTIFY carries the roots alone and the importer asks 106 as before. The next push is
    inline again."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    sa, sb, pump = _live(a, b, pa, pb)
    sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
    heads = [chat.post(f"burst {i}") for i in range(30)]
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert all(b.has(h) for h in heads)
    (note,) = _notifies(pump.sent[0], sent_a)
    assert "closure" not in note and note["roots"]
    assert 106 in _requests(pump.sent[1], sent_b)
    sent_a, sent_b = len(pump.sent[0]), len(pump.sent[1])
    head = chat.post("after the burst")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert b.has(head)
    (note,) = _notifies(pump.sent[0], sent_a)
    assert "closure" in note
    assert _requests(pump.sent[1], sent_b) == []
    assert [e for e in pump.events[1] if e[0] == "error"] == []
    _end_clean(a, b, sa, pump)


@pytest.mark.parametrize("attack", ["oversized", "extra-root", "page-token"])
def test_a_hostile_notify_closure_is_dropped_and_nothing_wrong_is_stored(tmp_path: Path, attack: str) -> None:
    """A NOTIFY whose closure breaks the rules is not used at all: one larger than the 106
    inline bounds (more than 1,024 listed entries), or with a page token, is dropped whole and
    the importer asks 106; an entry for a hash that is not a root of this round (a private
    object the exporter slips in, with its data) is never asked for, so nothing of it is
    stored. The real post arrives either way."""
    register_recipes()
    a, b, pa, pb = _stores(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    (secret,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "private", "sender": pa}])]
    sa, sb, pump = _live(a, b, pa, pb)
    rewritten: list[int] = []

    def hostile(f: str | bytes) -> str | bytes:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request" and m.get("serviceId") == 104 and "closure" in m["args"][0]:
                closure = m["args"][0]["closure"]
                entry = next(iter(closure.values()))
                if attack == "oversized":
                    entry["children"][:0] = [{"type": "object", "hash": f"{i:064x}"} for i in range(1100)]
                elif attack == "page-token":
                    entry["more"] = "1.1"
                else:
                    closure[secret] = {"root": a.get(secret), "children": []}
                rewritten.append(m["requestId"])
                return json.dumps(m, separators=(",", ":"))
        return f

    pump.filters[0] = hostile
    sent_b = len(pump.sent[1])
    head = chat.post("second")
    sa.store_changed(pump.now)
    pump.run(max_time=1.0)
    assert rewritten
    assert b.has(head)
    assert not b.has(secret)
    expected = [] if attack == "extra-root" else [106]  # a dropped closure: asked as before
    assert _requests(pump.sent[1], sent_b) == expected
    assert [e for e in pump.events[1] if e[0] == "error"] == []
    _end_clean(a, b, sa, pump)
