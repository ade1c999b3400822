"""A hostile or broken exporter against lama's importer (chum.md §6.4, docs/chum-session.md
§2): every case is refused with a clear error, nothing wrong is stored, the session ends
cleanly and the honest side's store is intact.  The hostile peer is a real lama exporter whose
answers the test rewrites on the way (tests/chum_pump.py filters)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Callable

import pytest

from chum_graph import Chat, person_id, register_recipes
from chum_pump import Pump
from lama._core import core
from lama.chum import SyncResult, handle_event


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


class Hostile:
    """Rewrites the answers of A (side 0) by the request they answer: ``rewrite(request,
    frame) -> frame | None`` (None drops it)."""

    def __init__(self, rewrite: Callable[[dict[str, Any], str | bytes], str | bytes | None]):
        self.rewrite = rewrite
        self.requests: dict[int, dict[str, Any]] = {}

    def from_b(self, f: str | bytes) -> str | bytes:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request":
                self.requests[m["requestId"]] = m
        return f

    def from_a(self, f: str | bytes) -> str | bytes | None:
        if isinstance(f, bytes):  # a stream chunk: [f64-LE request id][payload] (chum.md §2.6)
            return self.rewrite(self.requests.get(int(struct.unpack("<d", f[:8])[0]), {}), f)
        m = json.loads(f)
        req = self.requests.get(m.get("responseId", -1), {})
        return self.rewrite(req, f)


def setup(tmp_path: Path) -> tuple[Any, Any, str, str, Chat]:
    a = core.Store(str(tmp_path / "a"))
    b = core.Store(str(tmp_path / "b"))
    pa = person_id(a, "alice@a.example")
    pb = person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    chat.post("two")
    return a, b, pa, pb, chat


def run(a: Any, b: Any, pa: str, pb: str, hostile: Hostile | None, **b_options: Any) -> tuple[Any, SyncResult, Pump]:
    sa = core.ChumSession(a, pa, pb, importer=False)
    b_options.setdefault("fast_path", False)  # the rewrites below speak v8 services
    sb = core.ChumSession(b, pb, pa, exporter=False, **b_options)
    rb = SyncResult()
    pump = Pump(sa, sb, on_event=lambda side, k, d: handle_event(b, k, d, rb) if side == 1 else None)
    if hostile is not None:
        pump.filters = [hostile.from_a, hostile.from_b]
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run()
    return sb, rb, pump


def data_of(frame: str | bytes) -> Any:
    assert isinstance(frame, str)
    return json.loads(frame).get("data")


def with_data(frame: str | bytes, data: Any) -> str:
    m = json.loads(frame)  # type: ignore[arg-type]
    m["data"] = data
    return json.dumps(m)


def codes(r: SyncResult) -> list[str]:
    return [e["code"] for e in r.errors]


def test_wrong_bytes_for_a_hash(tmp_path: Path) -> None:
    a, b, pa, pb, chat = setup(tmp_path)
    target = next(h for h in a.children(chat.head) if a.kind(h) == "object" and
                  a.get_object(h)["$type$"] == "ChatMessage")
    forged = a.get(target).replace('itemprop="text">', 'itemprop="text">forged ')
    assert forged != a.get(target)

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 6 and req["args"] == [target]:
            return with_data(f, forged)
        return f

    sb, rb, _ = run(a, b, pa, pb, Hostile(rewrite))
    assert sb.close_reason == "chum finished"
    assert "CIEC-FO2" in codes(rb)
    assert not b.has(target) and not b.has(core.sha256_hex(forged))
    assert b.verify() == [] and a.verify() == []
    # what does not depend on the forged message still arrived (chum.md §2.6 spirit)
    assert b.has(chat.topic)


def test_object_not_reachable_from_the_root_is_refused(tmp_path: Path) -> None:
    a, b, pa, pb, chat = setup(tmp_path)
    (stray,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "stray", "sender": pa}])]
    stray_md = a.get(stray)

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 4 and req["args"] == [chat.topic]:
            children = json.loads(data_of(f))
            return with_data(f, json.dumps([{"type": "object", "hash": stray}] + children))
        if req.get("serviceId") == 6 and req["args"] == [stray]:
            m = json.loads(f)  # type: ignore[arg-type]
            return json.dumps({"responseId": m["responseId"], "type": "data", "data": stray_md})
        return f

    sb, rb, _ = run(a, b, pa, pb, Hostile(rewrite))
    assert sb.close_reason == "chum finished"
    assert "LAMA-CHUM-NOTREACHABLE" in codes(rb)
    assert not b.has(stray)
    assert b.has(chat.topic) and b.verify() == []


def test_access_object_pushed_as_a_child_is_refused(tmp_path: Path) -> None:
    a, b, pa, pb, chat = setup(tmp_path)
    from lama.objects import versions

    access = versions.store_versioned(a, {"$type$": "Access", "object": chat.topic, "person": [pb],
                                          "group": []}).hash
    access_md = a.get(access)

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 4 and req["args"] == [chat.topic]:
            children = json.loads(data_of(f))
            return with_data(f, json.dumps([{"type": "object", "hash": access}] + children))
        if req.get("serviceId") == 6 and req["args"] == [access]:
            m = json.loads(f)  # type: ignore[arg-type]
            return json.dumps({"responseId": m["responseId"], "type": "data", "data": access_md})
        return f

    sb, rb, _ = run(a, b, pa, pb, Hostile(rewrite))
    assert sb.close_reason == "chum finished"
    assert "CIEC-FO3" in codes(rb)
    assert not b.has(access)
    assert b.verify() == []


def test_malformed_frames_are_ignored_and_counted(tmp_path: Path) -> None:
    a, b, pa, pb, chat = setup(tmp_path)
    sent = []

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 2 and not sent:
            sent.append(1)
            return "{not json"
        return f

    # the roots answer is replaced by garbage: that request times out and is retried
    sb, rb, _ = run(a, b, pa, pb, Hostile(rewrite), request_timeout=2.0)
    assert sb.close_reason == "chum finished"
    assert "LAMA-CHUM-FRAME" in codes(rb)
    assert sb.stats()["requests_invalid"] == 1 and sb.stats()["retries"] == 1
    assert b.has(chat.topic) and b.verify() == []


def test_oversized_frame_ends_the_session(tmp_path: Path) -> None:
    a, b, pa, pb, chat = setup(tmp_path)

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 4:
            return with_data(f, "x" * 10_000)
        return f

    sb, rb, _ = run(a, b, pa, pb, Hostile(rewrite), max_message=4096)
    assert sb.finished and sb.close_reason is not None and sb.close_reason.startswith("LAMA-CHUM-FRAME")
    assert [e for e in rb.errors if e["fatal"]][0]["code"] == "LAMA-CHUM-FRAME"
    assert rb.reason == sb.close_reason
    assert not b.has(chat.topic) and b.verify() == [] and a.verify() == []


def test_unknown_service_gets_the_reference_error(tmp_path: Path) -> None:
    a, _b, pa, pb, _chat = setup(tmp_path)
    s = core.ChumSession(a, pa, pb, importer=False)
    s.start(0.0)
    s.receive_text('{"requestId":7,"type":"request","serviceId":42,"args":[]}', 0.0)
    s.receive_text('{"requestId":8,"type":"request","serviceId":9,"args":[]}', 0.0)
    assert s.poll_transmit() == [
        '{"responseId":7,"type":"error","error":{"name":"TypeError","message":"Not a function: '
        'Servcie ID 42 [number]","code":"UNKNOWN-SERVICE"}}',
        '{"responseId":8,"type":"error","error":{"name":"TypeError","message":"Not a function: '
        'Servcie ID 9 [number]","code":"UNKNOWN-SERVICE"}}']
    assert not s.finished


def test_peer_that_stops_answering_times_out(tmp_path: Path) -> None:
    a, b, pa, pb, _chat = setup(tmp_path)
    seen = []

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") in (1, 2):
            return f
        seen.append(req.get("requestId"))
        return None  # silence after the roots

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), request_timeout=10.0, max_retries=2)
    assert sb.finished and sb.close_reason.startswith("LAMA-CHUM-TIMEOUT")
    assert rb.errors[-1]["fatal"] and rb.errors[-1]["code"] == "LAMA-CHUM-TIMEOUT"
    assert sb.stats()["retries"] >= 2
    assert pump.now <= 1000.0 + 3 * 10.0 + 1
    assert b.verify() == [] and a.verify() == []
    assert rb.log["BtoAObjects"] == []


def test_wrong_bytes_in_a_batch_answer(tmp_path: Path) -> None:
    """The fast path's GET_OBJECTS_BATCH (docs/chum-fastpath.md) is verified like GET_OBJECT:
    a forged entry is refused, the rest of the batch is stored.  The exporter answers the probe
    as a lama before "batch-binary" did, so the importer asks 101 (not 108)."""
    a, b, pa, pb, chat = setup(tmp_path)
    target = next(h for h in a.children(chat.head) if a.kind(h) == "object" and
                  a.get_object(h)["$type$"] == "ChatMessage")
    forged = a.get(target).replace('itemprop="text">', 'itemprop="text">forged ')
    batches = []

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 100:
            m = json.loads(f)
            m["data"]["features"].remove("batch-binary")
            return json.dumps(m)
        if req.get("serviceId") == 101 and target in req["args"][0]:
            texts = json.loads(data_of(f))
            texts[req["args"][0].index(target)] = forged
            batches.append(len(texts))
            return with_data(f, json.dumps(texts))
        return f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), fast_path=True)
    assert batches and sb.close_reason == "chum finished"
    assert ("version", {"remote": 8, "mode": "fast"}) in pump.events[1]
    assert "CIEC-FO2" in codes(rb)
    assert not b.has(target) and not b.has(core.sha256_hex(forged))
    assert b.has(chat.topic) and b.verify() == []


def binary_entries(frame: bytes) -> list[bytes | None]:
    """docs/chum-fastpath.md "batch-binary": a GET_OBJECTS_BINARY answer's entries."""
    out: list[bytes | None] = []
    i = 8
    while i < len(frame):
        (n,) = struct.unpack("<I", frame[i:i + 4])
        i += 4
        if n == 0xFFFFFFFF:
            out.append(None)
        else:
            out.append(frame[i:i + n])
            i += n
    return out


def binary_frame(frame: bytes, entries: list[bytes | None]) -> bytes:
    return frame[:8] + b"".join(struct.pack("<I", 0xFFFFFFFF) if e is None else struct.pack("<I", len(e)) + e
                                for e in entries)


def test_wrong_bytes_in_a_binary_batch_answer(tmp_path: Path) -> None:
    """The binary batch (108, docs/chum-fastpath.md "batch-binary") is verified like 101: a
    forged entry is refused, the rest of the batch is stored."""
    a, b, pa, pb, chat = setup(tmp_path)
    target = next(h for h in a.children(chat.head) if a.kind(h) == "object" and
                  a.get_object(h)["$type$"] == "ChatMessage")
    forged = a.get(target).replace('itemprop="text">', 'itemprop="text">forged ')
    batches = []

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 108 and target in req["args"][0]:
            assert isinstance(f, bytes)
            entries = binary_entries(f)
            assert entries[req["args"][0].index(target)] == a.get(target).encode()
            entries[req["args"][0].index(target)] = forged.encode()
            batches.append(len(entries))
            return binary_frame(f, entries)
        return f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), fast_path=True)
    assert batches and sb.close_reason == "chum finished"
    assert not any('"serviceId":101,' in f for f in pump.sent[1] if isinstance(f, str))
    assert "CIEC-FO2" in codes(rb)
    assert not b.has(target) and not b.has(core.sha256_hex(forged))
    assert b.has(chat.topic) and b.verify() == []


@pytest.mark.parametrize("damage", ["cut short", "an entry too many", "bad utf-8", "empty"])
def test_malformed_binary_batch_answer(tmp_path: Path, damage: str) -> None:
    """A binary batch answer that is not exactly one entry per hash, or not UTF-8, fails every
    hash of that request with LAMA-CHUM-BATCH; nothing of it is stored, the session ends
    cleanly, and the next sync (an honest exporter) completes."""
    a, b, pa, pb, chat = setup(tmp_path)
    hit = []

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 108 and not hit:
            assert isinstance(f, bytes)
            hit.append(req["args"][0])
            if damage == "cut short":
                return f[:-1]
            if damage == "an entry too many":
                return binary_frame(f, binary_entries(f) + [None])
            if damage == "bad utf-8":
                entries = binary_entries(f)
                entries[0] = b"\xff" + (entries[0] or b"")
                return binary_frame(f, entries)
            return f[:8]  # the id alone: no entry at all
        return f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), fast_path=True)
    assert hit and sb.close_reason == "chum finished"
    assert "LAMA-CHUM-BATCH" in codes(rb)
    assert not any(b.has(h) for h in hit[0])
    assert b.verify() == [] and a.verify() == []
    # the next sync, unharmed, fetches the rest
    sb2, rb2, _ = run(a, b, pa, pb, None, fast_path=True)
    assert sb2.close_reason == "chum finished" and rb2.errors == []
    assert b.has(chat.head) and b.verify() == []


def test_object_listed_as_a_blob_is_not_fetched_as_one(tmp_path: Path) -> None:
    """A children list that tags an object as "blob" must not make the importer store the
    object's bytes as a BLOB (the wrong kind under the right hash would block the object for
    good): streams are only fetched for hashes a verified object references as such."""
    a, b, pa, pb, chat = setup(tmp_path)
    target = next(h for h in a.children(chat.head) if a.kind(h) == "object" and
                  a.get_object(h)["$type$"] == "ChatMessage")

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 4 and isinstance(f, str) and target in f:
            children = json.loads(data_of(f))
            for c in children:
                if c["hash"] == target:
                    c["type"] = "blob"
            return with_data(f, json.dumps(children))
        return f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite))
    assert sb.close_reason == "chum finished"
    assert "LAMA-CHUM-NOTREACHABLE" in codes(rb)
    assert not any('"serviceId":8,' in f for f in pump.sent[1] if isinstance(f, str))
    assert not b.has(target) and b.kind(target) is None
    assert b.has(chat.topic) and b.verify() == []


def test_pending_blob_keeps_the_fast_path_mark(tmp_path: Path) -> None:
    """chum.md §2.6 with the fast path: a BLOB whose stream arrives empty (the reference's
    broken sender) stays pending, the entry that references it is not stored, and the
    exporter's mark does not move, so the next session asks for those roots again."""
    from chum_graph import deterministic_bytes, grant_object

    a, b, pa, pb, chat = setup(tmp_path)
    data = deterministic_bytes(100_000)
    # a message shared on its own (an unversioned root): no channel merge involved
    (msg,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "file", "sender": pa,
                                                 "attachments": [chat.attach_blob(data)]}])]
    grant_object(a, msg, [pb])

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        # the BLOB's chunks lost, its stream-end arrives (the binary object batches pass)
        return None if isinstance(f, bytes) and req.get("serviceId") == 8 else f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), fast_path=True)
    blob = core.sha256_hex(data)
    assert sb.close_reason == "chum finished" and list(rb.pending) == [blob]
    assert rb.pending[blob].startswith("CIEC-FBL2")
    assert not b.has(blob) and b.verify() == []
    assert not b.has(msg)
    epoch = a.store_id  # the probe's epoch (docs/chum-fastpath.md)
    assert b.peer_mark(f"{pa}/{epoch}") == 0
    sb, rb, pump = run(a, b, pa, pb, None, fast_path=True)
    assert sb.close_reason == "chum finished" and rb.pending == {} and b.read_blob(blob) == data
    assert b.has(msg)
    assert b.peer_mark(f"{pa}/{epoch}") > 0


def test_hostile_exporter_in_a_large_paged_pass(tmp_path: Path) -> None:
    """A pass of about 10,800 objects (more than a 4,096-entry page, and enough ready items for
    a mid-pass commit batch, COMMIT_MIN_FAST): the exporter sends wrong bytes for a message
    late in the chain in a 101 answer, and slips an object no granted root reaches into its
    second page (with its bytes in a 101 answer).  B refuses both, keeps every good object
    (the chain before the forged message, every other message), nothing that needs the forged
    one, ends the session with the errors, and verifies clean; an honest sync then completes."""
    register_recipes()
    a = core.Store(str(tmp_path / "a"), durable=False)
    b = core.Store(str(tmp_path / "b"), durable=False)
    pa = person_id(a, "alice@a.example")
    pb = person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    posts, k = 1800, 1500
    heads = [chat.post(f"message {i}") for i in range(posts)]
    entry = a.get_object(heads[k])
    target = a.get_object(entry["data"])["data"]  # the ChatMessage of post k
    forged = a.get(target).replace(f"message {k}<", f"message {k} forged<")
    assert forged != a.get(target)
    (stray,) = [h for h, _s, _i in a.put_objects([{"$type$": "ChatMessage", "text": "stray", "sender": pa}])]
    stray_md = a.get(stray)
    hits = {"forged": 0, "listed": 0, "stray": 0}

    def rewrite(req: dict[str, Any], f: str | bytes) -> str | bytes | None:
        if req.get("serviceId") == 100:
            m = json.loads(f)
            m["data"]["features"].remove("batch-binary")  # 101 answers (JSON), not 108
            return json.dumps(m)
        if req.get("serviceId") == 109 and not hits["listed"]:
            page = json.loads(data_of(f))
            page["children"].insert(0, {"type": "object", "hash": stray})
            hits["listed"] += 1
            return with_data(f, json.dumps(page))
        if req.get("serviceId") == 101:
            asked = req["args"][0]
            if target in asked or stray in asked:
                texts_ = json.loads(data_of(f))
                if target in asked:
                    texts_[asked.index(target)] = forged
                    hits["forged"] += 1
                if stray in asked:
                    texts_[asked.index(stray)] = stray_md
                    hits["stray"] += 1
                return with_data(f, json.dumps(texts_))
        return f

    sb, rb, pump = run(a, b, pa, pb, Hostile(rewrite), fast_path=True)
    assert hits == {"forged": 1, "listed": 1, "stray": 1}
    assert ("version", {"remote": 8, "mode": "fast"}) in pump.events[1]
    assert sb.close_reason == "chum finished"
    assert "CIEC-FO2" in codes(rb) and "LAMA-CHUM-NOTREACHABLE" in codes(rb)
    # nothing bad kept
    assert not b.has(target) and not b.has(core.sha256_hex(forged)) and not b.has(stray)
    assert not b.has(heads[-1])
    # the good ones kept
    for i, h in enumerate(heads):
        e = a.get_object(h)
        msg = a.get_object(e["data"])["data"]
        assert b.has(h) == (i < k), i
        assert b.has(msg) == (i != k), i
    assert sum(len(d["objects"]) + len(d["id_objects"]) for k_, d in pump.events[1] if k_ == "imported") > 4 * k
    assert b.verify() == [] and a.verify() == []
    # an honest exporter then completes the sync
    sb, rb, _ = run(a, b, pa, pb, None, fast_path=True)
    assert sb.close_reason == "chum finished" and rb.errors == []
    assert all(b.has(h) for h in heads) and b.has(target) and not b.has(stray)
    assert b.verify() == []
