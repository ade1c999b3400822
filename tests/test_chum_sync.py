"""Two stores syncing over CHUM v8 through the sans-I/O pump (docs/chum-session.md §2): a
chat-like graph both ways, access rules, and hostile peers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from chum_graph import Chat, assert_no_holes, deterministic_bytes, grant_id, grant_object, person_id, register_recipes, texts
from chum_pump import Pump
from lama import access
from lama._core import core
from lama.chum import SyncResult, handle_event, write_chum_log
from lama.objects import versions

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


def open_pair(tmp_path: Path) -> tuple[Any, Any, str, str]:
    a = core.Store(str(tmp_path / "a"))
    b = core.Store(str(tmp_path / "b"))
    pa = person_id(a, "alice@a.example")
    pb = person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    return a, b, pa, pb


def sync_pair(a: Any, b: Any, pa: str, pb: str, *, filters: tuple[Any, Any] = (None, None),
              options_a: dict[str, Any] | None = None, options_b: dict[str, Any] | None = None,
              max_time: float = 3600.0) -> tuple[SyncResult, SyncResult, Pump]:
    sa = core.ChumSession(a, pa, pb, **(options_a or {}))
    sb = core.ChumSession(b, pb, pa, **(options_b or {}))
    results = (SyncResult(), SyncResult())
    stores = (a, b)

    def on_event(side: int, kind: str, data: dict[str, Any]) -> None:
        handle_event(stores[side], kind, data, results[side])

    pump = Pump(sa, sb, on_event=on_event)
    pump.filters = list(filters)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=max_time)
    return results[0], results[1], pump


def closure(store: Any, roots: list[str]) -> set[str]:
    out = set(roots)
    for r in roots:
        out.update(store.children(r))
    return out


def moved(r: SyncResult) -> int:
    return sum(len(r.log[k]) for k in ("BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob"))


@pytest.mark.parametrize("fast", [False, True])
def test_chat_graph_both_ways_then_nothing(tmp_path: Path, fast: bool) -> None:
    """The issue's graph: a versioned channel with a history, unversioned signed entries, a
    5 MiB BLOB and a CLOB, then concurrent versions of a document edited on both sides; v8 and
    the fast path; both stores verify clean and a further sync moves nothing."""
    a, b, pa, pb = open_pair(tmp_path)
    opts = {"fast_path": fast}
    chat_a = Chat(a, pa, pb)
    chat_a.share([pa, pb])
    chat_a.post("hello from a")
    big = deterministic_bytes(5 * MiB + 123)
    chat_a.post("a file", attachments=[chat_a.attach_blob(big)])
    chat_a.post("a note", attachments=[chat_a.attach_clob("ünïcode CLOB text " * 1000)])
    chat_a.post("last from a")

    ra, rb, pump = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
    mode = "fast" if fast else "v8"
    assert ("version", {"remote": 8, "mode": mode}) in pump.events[0]
    assert ("version", {"remote": 8, "mode": mode}) in pump.events[1]
    requests = [json.loads(f) for f in pump.sent[1] if isinstance(f, str) and '"type":"request"' in f]
    if fast:
        # objects come inline with the pruned closures (106, docs/chum-fastpath.md "closure")
        # or in batches of up to 256, instead of one request each
        assert not [m for m in requests if m["serviceId"] in (4, 5, 6, 7, 105)]
        assert len([m for m in requests if m["serviceId"] == 101]) <= 2
        assert 1 <= len([m for m in requests if m["serviceId"] == 106]) <= 3
    else:
        assert len([m for m in requests if m["serviceId"] == 6]) == len(rb.log["BtoAObjects"])
    for r in (ra, rb):
        assert r.reason == "chum finished", r
        assert [e for e in r.errors if e["fatal"]] == []
    assert texts(b, chat_a.ci) == ["last from a", "a note", "a file", "hello from a"]
    assert b.read_blob(core.sha256_hex(big)) == big
    assert rb.log["BtoABlob"] == [core.sha256_hex(big)] and len(rb.log["BtoAClob"]) == 1
    assert ra.log["AtoBBlob"] == rb.log["BtoABlob"]
    assert sorted(ra.log["AtoBObjects"]) == sorted(rb.log["BtoAObjects"])
    # BLOB chunks on the wire: [f64 id][<= 65,528 bytes], never above 65,536 (chum.md §2.6)
    # (the fast path's binary object batches, docs/chum-fastpath.md "batch-binary", are no
    # BLOB chunks)
    blob_ids = {json.loads(f)["requestId"] for f in pump.sent[1] if isinstance(f, str) and '"serviceId":8,' in f}
    binary = [f for f in pump.sent[0] if isinstance(f, bytes) and int(struct.unpack("<d", f[:8])[0]) in blob_ids]
    assert binary and max(len(f) for f in binary) == 65_536
    shared = closure(a, [chat_a.topic, versions.head_node(a, chat_a.ci).hash])
    assert b.missing(sorted(shared - {versions.head_node(a, chat_a.ci).hash})) == []
    assert a.verify() == [] and b.verify() == []

    # concurrent versions: both sides edit one shared document, A posts again; then sync
    doc = {"$type$": "LamaChumTestDoc", "name": "plan", "title": "v1", "tags": {"x"}}
    d1 = versions.store_versioned(a, doc, timestamp_ms=1)
    grant_id(a, d1.id_hash, [pa, pb])
    ra, rb, _ = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
    assert [e for e in ra.errors + rb.errors if e["fatal"]] == []
    assert versions.current(b, d1.id_hash)["title"] == "v1"
    grant_id(b, d1.id_hash, [pa, pb])
    versions.store_versioned(a, {**doc, "title": "from a", "tags": {"x", "a"}}, timestamp_ms=10)
    versions.store_versioned(b, {**doc, "tags": {"x", "b"}}, timestamp_ms=20)
    # and a second round of channel posts on both sides: concurrent ChannelInfo versions, merged
    # by the linked-list CRDT (app-layer.md §2.5) on each side
    chat_b = Chat.joined(b, pb, chat_a)
    chat_b.share([pa, pb])
    chat_a.post("a again")
    chat_b.post("b replies")
    ra, rb, _ = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
    assert [e for e in ra.errors + rb.errors if e["fatal"]] == []
    # converge: each side merged the other's node into one shared version graph, so one more
    # round carries the merge nodes (identical on both sides) and then nothing moves
    for _ in range(3):
        ra, rb, _ = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
        if moved(ra) == 0 and moved(rb) == 0:
            break
    assert moved(ra) == 0 and moved(rb) == 0
    # both sides hold every version of the document and merged them to the same value: the
    # Set unites, and the Register "title" keeps A's edit, which B never touched.  The
    # reference merges a remote version as a detached edge (objects.md §9 quirk 17), which
    # makes "title" end as "v1" on A and "from a" on B.
    datas = {h for s in (a, b) for h in (versions.load_node(s, n).data for n in s.version_nodes(d1.id_hash))}
    assert a.missing(sorted(datas)) == [] and b.missing(sorted(datas)) == []
    for s in (a, b):
        assert sorted(versions.current(s, d1.id_hash)["tags"]) == ["a", "b", "x"]
        assert versions.current(s, d1.id_hash)["title"] == "from a"
    assert a.get_head(d1.id_hash) == b.get_head(d1.id_hash)
    assert a.get_head(chat_a.ci) == b.get_head(chat_a.ci)
    assert texts(b, chat_a.ci) == texts(a, chat_a.ci)
    assert sorted(texts(a, chat_a.ci)[:2]) == ["a again", "b replies"]
    assert len(texts(a, chat_a.ci)) == 6
    assert a.verify() == [] and b.verify() == []


def test_object_not_granted_is_never_sent(tmp_path: Path) -> None:
    """chum.md §5.2: only hashes unlocked in this session are served (CES-GO1), even when the
    peer knows the hash."""
    a, b, pa, pb = open_pair(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("shared")
    (secret,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "secret", "sender": pa}])]
    session = core.ChumSession(a, pa, pb, importer=False)
    session.start(0.0)
    session.receive_text(json.dumps({"requestId": 0, "type": "request", "serviceId": 6, "args": [secret]}), 0.0)
    session.receive_text(json.dumps({"requestId": 1, "type": "request", "serviceId": 2, "args": []}), 0.0)
    session.receive_text(json.dumps({"requestId": 2, "type": "request", "serviceId": 6, "args": [secret]}), 0.0)
    session.receive_text(json.dumps({"requestId": 3, "type": "request", "serviceId": 4, "args": [secret]}), 0.0)
    session.receive_text(json.dumps({"requestId": 4, "type": "request", "serviceId": 6, "args": [chat.topic]}), 0.0)
    # the fast path's batch fetch obeys the same rule (docs/chum-fastpath.md)
    session.receive_text(json.dumps({"requestId": 5, "type": "request", "serviceId": 101,
                                     "args": [[secret, chat.topic]]}), 0.0)
    # ... and its binary twin (docs/chum-fastpath.md "batch-binary")
    session.receive_text(json.dumps({"requestId": 6, "type": "request", "serviceId": 108,
                                     "args": [[secret, chat.topic]]}), 0.0)
    frames = session.poll_transmit()
    (binary,) = [f for f in frames if isinstance(f, bytes)]
    assert struct.unpack("<dI", binary[:12]) == (6.0, 0xFFFFFFFF)  # the secret: null
    (n,) = struct.unpack("<I", binary[12:16])
    assert binary[16:16 + n].decode() == a.get(chat.topic) and len(binary) == 16 + n
    assert a.get(secret).encode() not in binary
    out = [json.loads(f) for f in frames if isinstance(f, str)]
    assert out[0] == {"responseId": 0, "type": "error", "error": {
        "name": "Error", "message": f"CES-GO1: Unauthorized, obj {secret}", "code": "CES-GO1"}}
    assert secret not in out[1]["data"]
    assert out[2]["error"]["code"] == "CES-GO1"
    assert out[3]["error"]["code"] == "CES-GOC1"
    assert out[4]["type"] == "data" and "Topic" in out[4]["data"]
    batch = json.loads(out[5]["data"])
    assert batch[0] is None and "Topic" in batch[1]
    secret_md = a.get(secret)
    assert all(m.get("data") != secret_md for m in out)
    events = session.poll_events()
    assert [e[1]["code"] for e in events if e[0] == "error"] == ["CES-GO1"] * 4


@pytest.mark.parametrize("fast", [False, True])
def test_a_group_grant_reaches_members_only(tmp_path: Path, fast: bool) -> None:
    """Issue 8 "Access": an object granted to a group (lama honours group grants, unlike the
    reference) is synced to a member, and not to a person outside the group."""
    a, b, pa, pb = open_pair(tmp_path)
    c = core.Store(str(tmp_path / "c"))
    pc = person_id(a, "carol@c.example")
    for p in ("alice@a.example", "bob@b.example", "carol@c.example"):
        person_id(c, p)
    (msg,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "for the team", "sender": pa}])]
    access.set_group(a, "team", [pa, pb])
    access.grant(a, object=msg, groups=[access.group_id("team")])
    opts = {"fast_path": fast}
    _ra, rb, _ = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
    assert rb.reason == "chum finished" and rb.errors == []
    assert b.get_object(msg)["text"] == "for the team" and b.verify() == []
    _ra, rc, _ = sync_pair(a, c, pa, pc, options_a=opts, options_b=opts)
    assert rc.reason == "chum finished" and rc.errors == []
    assert not c.has(msg) and moved(rc) == 0
    # membership is the group's current version: carol joins, and the next sync brings it
    access.set_group(a, "team", [pa, pb, pc])
    _ra, rc, _ = sync_pair(a, c, pa, pc, options_a=opts, options_b=opts)
    assert rc.reason == "chum finished" and c.has(msg) and c.verify() == []


@pytest.mark.parametrize("fast", [False, True])
def test_keep_running_a_new_grant_arrives_in_the_same_session(tmp_path: Path, fast: bool) -> None:
    """chum.md §6.1 keepRunning: no FIN, a roots poll every poll_interval; something granted
    during the session reaches the peer at the next poll (v8), or at once when the exporter's
    driver reports the write and the peer subscribed (fast path: NOTIFY, no polling)."""
    a, b, pa, pb = open_pair(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("first")
    opts = {"keep_running": True, "poll_interval": 5.0, "fast_path": fast}
    sa = core.ChumSession(a, pa, pb, **opts)
    sb = core.ChumSession(b, pb, pa, **opts)
    rb = SyncResult()
    pump = Pump(sa, sb, on_event=lambda side, k, d: handle_event(b, k, d, rb) if side == 1 else None)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert rb.full_sync and b.has(chat.topic)
    assert not sa.finished and not sb.finished
    assert sb.poll_timeout() == pytest.approx(pump.now + (50.0 if fast else 5.0), abs=1.0)
    (note,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "later", "sender": pa}])]
    grant_object(a, note, [pb])
    if fast:
        t0 = pump.now
        sa.store_changed(pump.now)  # what the driver does on the store's event feed
        pump.run(max_time=0.5)
        assert b.has(note) and pump.now - t0 < 0.5
    else:
        pump.run(max_time=6.0)
    assert b.has(note)
    fin = [m for m in pump.sent[1] if isinstance(m, str) and '"serviceId":10,' in m]
    assert fin == []  # keep-running sessions never send FIN (chum.md §4.7)
    sa.connection_closed("bye", pump.now)
    pump.step()
    assert sa.finished and sb.finished and sb.close_reason == "bye"
    assert rb.reason == "bye" and rb.log["BtoAObjects"]


def test_chum_log_object_is_shared_by_both_sides(tmp_path: Path) -> None:
    """chum.md §7: instances sorted, persons in that order, so both sides write versions of
    one ID; "A" is always the writer."""
    a, b, pa, pb = open_pair(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("hi")
    ra, rb, _ = sync_pair(a, b, pa, pb)
    ha = write_chum_log(a, ra.log, local_person=pa, remote_person=pb, local_instance="zeta",
                        remote_instance="alpha")
    hb = write_chum_log(b, rb.log, local_person=pb, remote_person=pa, local_instance="alpha",
                        remote_instance="zeta")
    assert ha and hb
    oa, ob = a.get_object(ha), b.get_object(hb)
    assert oa["instance"] == ob["instance"] == ["alpha", "zeta"]
    assert oa["person"] == ob["person"] == [pb, pa]
    assert core.id_hash(oa) == core.id_hash(ob)
    assert sorted(oa["AtoBObjects"]) == sorted(ob["BtoAObjects"]) and oa["BtoAObjects"] == []
    assert oa["highestRemoteTimestamp"] == 0 and oa["BtoAExists"] == 0
    assert oa["statistics"]["requestsReceivedTotal"] == ob["statistics"]["requestsSentTotal"]
    # each session appends its own log as a change on the head (not a merge over the whole
    # history, whose cost grows with every session): the current version is the last session
    head = a.get_head(core.id_hash(oa))
    again = dict(ra.log, AtoBObjects=ra.log["AtoBObjects"][:1])
    h2 = write_chum_log(a, again, local_person=pa, remote_person=pb, local_instance="zeta",
                        remote_instance="alpha")
    node = versions.head_node(a, core.id_hash(oa))
    assert node.parents == (head,) and node.data == h2
    assert a.get_object(h2)["AtoBObjects"] == ra.log["AtoBObjects"][:1]
    assert [v.hash for v in versions.history(a, core.id_hash(oa))] == [ha, h2]
    # a failed session that moved nothing writes no log (chum.md §3.2 item 5)
    assert write_chum_log(a, {"errors": ["CS-MISMATCH: x"]}, local_person=pa, remote_person=pb,
                          local_instance="zeta", remote_instance="alpha") is None


@pytest.mark.parametrize("fast", [False, True])
def test_interrupted_sync_leaves_nothing_half_written(tmp_path: Path, fast: bool) -> None:
    """The connection drops in the middle of a BLOB stream: the partial BLOB is dropped (never
    visible), nothing is committed that depends on it (objects that do not may be: issue 8
    commits as it goes), both stores verify clean, and the next sync completes."""
    a, b, pa, pb = open_pair(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    big = deterministic_bytes(3 * MiB)
    chat.post("file", attachments=[chat.attach_blob(big)])
    opts = {"fast_path": fast}
    sa = core.ChumSession(a, pa, pb, **opts)
    sb = core.ChumSession(b, pb, pa, **opts)
    pump = Pump(sa, sb)
    chunks = []

    def cut(f: str | bytes) -> str | bytes | None:
        if isinstance(f, bytes):
            chunks.append(len(f))
            return f if len(chunks) <= 10 else None
        return None if len(chunks) > 10 else f

    pump.filters = [cut, None]
    sa.start(pump.now)
    sb.start(pump.now)
    while len(chunks) <= 10:
        assert pump.step()
    sa.connection_closed("network gone", pump.now)
    sb.connection_closed("network gone", pump.now)
    blob_hash = core.sha256_hex(big)
    assert not b.has(blob_hash)
    assert_no_holes(b)
    assert b.verify() == [] and a.verify() == []
    ra, rb, _ = sync_pair(a, b, pa, pb, options_a=opts, options_b=opts)
    assert rb.reason == "chum finished" and rb.errors == []
    assert texts(b, chat.ci) == ["file"] and b.read_blob(blob_hash) == big
    assert a.verify() == [] and b.verify() == []


def test_fast_path_reconnect_asks_only_for_roots_since_the_mark(tmp_path: Path) -> None:
    """docs/chum-fastpath.md: after a clean pass the importer keeps the exporter's mark
    (Store.peer_mark); the next session asks GET_ROOTS_SINCE with it and gets only the new
    roots; a pass with a pending BLOB does not move the mark."""
    a, b, pa, pb = open_pair(tmp_path)
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    opts = {"fast_path": True, "exporter": False}
    ra, rb, pump = sync_pair(a, b, pa, pb, options_a={"fast_path": True, "importer": False}, options_b=opts)
    since = [json.loads(f)["args"][0] for f in pump.sent[1] if isinstance(f, str) and '"serviceId":102,' in f]
    assert since == [0]
    answer = next(json.loads(json.loads(f)["data"]) for f in pump.sent[0]
                  if isinstance(f, str) and '"responseId":%d,' % 2 in f)
    mark = answer["mark"]
    assert mark > 0 and len(answer["roots"]) >= 3
    # the next session starts from the persisted mark and finds nothing new
    ra, rb, pump = sync_pair(a, b, pa, pb, options_a={"fast_path": True, "importer": False}, options_b=opts)
    since = [json.loads(f)["args"][0] for f in pump.sent[1] if isinstance(f, str) and '"serviceId":102,' in f]
    assert since == [mark]
    roots_answers = [json.loads(json.loads(f)["data"]) for f in pump.sent[0]
                     if isinstance(f, str) and '"data":"{' in f]
    assert roots_answers[0]["roots"] == [] and moved(rb) == 0
    # something granted later is in the next delta, and only it
    (note,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "later", "sender": pa}])]
    grant_object(a, note, [pb])
    ra, rb, pump = sync_pair(a, b, pa, pb, options_a={"fast_path": True, "importer": False}, options_b=opts)
    roots_answers = [json.loads(json.loads(f)["data"]) for f in pump.sent[0]
                     if isinstance(f, str) and '"data":"{' in f]
    assert [r["hash"] for r in roots_answers[0]["roots"]] == [note]
    assert b.has(note) and rb.log["BtoAObjects"] == [note]
