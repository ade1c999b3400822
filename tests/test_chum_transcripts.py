"""CHUM against the reference as recorded (chum.md §9, vectors/README.md): lama as importer
fed by the recorded exporter answers, and lama as exporter answering the recorded importer
requests.  Sessions run sans-I/O through tests/chum_pump.py."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from chum_pump import Pump
from chum_replay import RecordedExporter, recorded_answers
from conftest import load_vectors
from lama._core import core
from lama.chum import SyncResult, handle_event
from lama.objects import versions

PA = "496da8476fd83adee9fc87c44c51128de71b8074ab3133cd11bb01a9e36c9ca8"  # alice@peer-a.example
PB = "f2834d7e717944a95011038735244928de8c721cd357da676097932c45d6e652"  # bob@peer-b.example
CI = "0d1d48b949614e5312a0b30d25bc37d3d582f0f55fdb1ba73ba330674e0d4a21"  # the 1:1 ChannelInfo
TOPIC = "e4e1d04d7b420ce075e2b964c2a59e99444a1a5c133b98b8b78e520d31724462"
BLOB = "adbe40837d739157a7145e1e043513ead0ecde6de83f78335efbc4d5d1edbdd7"


def person_id(email: str) -> str:
    return f'<div data-id-object="true" itemscope itemtype="//refin.io/Person"><span itemprop="email">{email}</span></div>'


def new_store(tmp_path: Path, name: str) -> Any:
    s = core.Store(str(tmp_path / name))
    # the Person ID objects exist before CHUM starts (exchanged at connection setup, chum.md §9)
    s.put_microdata([(person_id("alice@peer-a.example"), PA), (person_id("bob@peer-b.example"), PB)])
    return s


def run_importer(store: Any, answers: Any, **options: Any) -> tuple[Any, RecordedExporter, SyncResult, Pump]:
    session = core.ChumSession(store, PB, PA, exporter=False, **options)
    peer = RecordedExporter(answers)
    result = SyncResult()
    pump = Pump(session, peer, on_event=lambda side, k, d: handle_event(store, k, d, result) if side == 0 else None)
    session.start(pump.now)
    if options.get("keep_running"):
        pump.run(max_time=3 * options.get("poll_interval", 5.0) + 1)
        session.connection_closed("test over", pump.now)
        pump.step()
    else:
        pump.run()
    return session, peer, result, pump


def chat_texts(store: Any) -> list[str]:
    """Texts of the messages reachable from the channel's current version (newest first)."""
    out = []
    head = versions.current_hash(store, CI)
    if head is None:
        return out
    entry = store.get_object(head).get("head")
    while entry:
        lle = store.get_object(entry)
        ct = store.get_object(lle["data"])
        out.append(store.get_object(ct["data"])["text"])
        entry = lle.get("previous")
    return out


def test_import_from_recorded_exporter_pairing_and_chat(tmp_path: Path) -> None:
    """B's importer against A's recorded exporter (chum.md §9): the Topic, the channel ID
    object, both version nodes, and the message closure arrive verified, and the version
    node group is merged so the channel shows the message."""
    events = load_vectors("transcript-pairing-and-chat.json")
    answers = recorded_answers([e for e in events if e.get("conn") == "B#5"], "B")
    store = new_store(tmp_path, "b")
    session, peer, result, _pump = run_importer(store, answers)
    assert session.finished and session.close_reason == "chum finished"
    assert peer.unrecorded == []  # every request lama sent has a recorded twin
    # the lama extension probe (docs/chum-fastpath.md) got UNKNOWN-SERVICE: plain v8
    probes = [m for m in peer.requests if m["serviceId"] == 100]
    assert len(probes) == 1 and probes[0]["requestId"] == 1
    assert ("version", {"remote": 8, "mode": "v8"}) in _pump.events[0]
    fatal = [e for e in result.errors if e["fatal"]]
    assert fatal == [] and result.errors == []
    assert result.full_sync
    # the shape of every request: as the reference sends them (chum.md §4)
    for m in peer.requests:
        assert list(m) == ["requestId", "type", "serviceId", "args"]
    assert [m["requestId"] for m in peer.requests] == list(range(len(peer.requests)))
    peer.requests = [m for m in peer.requests if m["serviceId"] != 100]
    # everything the reference B fetched, lama fetched and stored too
    fetched = {m["args"][0] for m in peer.requests if m["serviceId"] in (6, 7)}
    recorded = {json.loads(k[1])[0] for k in answers if k[0] in (6, 7)}
    assert fetched == recorded
    assert store.missing(sorted(fetched)) == []
    assert store.get_object(TOPIC)["$type$"] == "Topic"
    assert chat_texts(store) == ["Hello Bob! <ä&ö> from A 😀"]
    assert len(result.merged) == 1
    assert store.verify() == []
    log = result.log
    assert sorted(log["BtoAObjects"]) == sorted(h for h in fetched if store.kind(h) == "object")
    assert log["BtoAIdObjects"] == [CI]
    assert log["AtoBObjects"] == []
    assert log["statistics"]["requestsSentTotal"] == len(peer.requests) + 1


def test_import_is_pipelined_and_version_nodes_need_one_children_call(tmp_path: Path) -> None:
    """chum.md §10.2: the newest node's closure unlocks the older ones, so a fresh channel costs
    one children call for its version nodes, and the fetches go out together."""
    events = load_vectors("transcript-pairing-and-chat.json")
    answers = recorded_answers([e for e in events if e.get("conn") == "B#5"], "B")
    store = new_store(tmp_path, "b")
    _s, peer, _r, pump = run_importer(store, answers, fast_path=False)
    children = [m for m in peer.requests if m["serviceId"] == 4]
    roots = json.loads(answers[(2, "[]")][0][0]["data"])
    nodes = [r["node"] for r in roots if r["type"] == "version_node"]
    assert [m["args"][0] for m in children if m["args"][0] in nodes] == [nodes[-1]]
    # the reference needed 17 sequential round trips; lama needs 5: version, roots, children
    # (of the Topic and the newest node), every missing object at once, FIN
    assert len(peer.requests) == 17
    assert len(pump.rounds[0]) == 5


def test_import_retries_version_check_on_unknown_service(tmp_path: Path) -> None:
    """chum.md §3.3: UNKNOWN-SERVICE on service 1 is retried after 300 ms with a fresh id (the
    recorded A side got exactly this from B)."""
    events = load_vectors("transcript-pairing-and-chat.json")
    answers = recorded_answers([e for e in events if e.get("conn") == "A#4"], "A")
    # A's first answer to service 1 is the recorded UNKNOWN-SERVICE error, then 8
    assert answers[(1, "[]")][0][0]["error"]["code"] == "UNKNOWN-SERVICE"
    store = core.Store(str(tmp_path / "a"))
    store.put_microdata([(person_id("alice@peer-a.example"), PA), (person_id("bob@peer-b.example"), PB)])
    session = core.ChumSession(store, PA, PB, exporter=False, fast_path=False)
    peer = RecordedExporter(answers)
    pump = Pump(session, peer)
    t0 = pump.now
    session.start(t0)
    pump.step()
    assert session.poll_timeout() == pytest.approx(t0 + 0.3)
    pump.run()
    v = [m for m in peer.requests if m["serviceId"] == 1]
    assert [m["requestId"] for m in v] == [0, 1]
    assert ("version", {"remote": 8, "mode": "v8"}) in pump.events[0]
    assert session.close_reason == "chum finished"


def test_import_recorded_broken_blob_keeps_only_the_attachment_pending(tmp_path: Path) -> None:
    """chum.md §2.6: the reference sends 0-byte binary messages for every BLOB chunk.  lama
    drops them, times the BLOB out (bounded retries), marks it pending, and stores the five
    plain messages; nothing that references the BLOB is stored.  B's store starts without its
    phase-1 state (the recording does not hold all of it), so lama also asks for the Topic and
    the channel."""
    events = load_vectors("transcript-initial-sync-with-blob.json")
    store = new_store(tmp_path, "b")
    b_events = [e for e in events if e.get("conn", "").startswith("B#") and e.get("conn") != "B#2"]
    answers = recorded_answers(b_events, "B")
    # lama verifies the BlobDescriptor before it asks for the BLOB; the broken run never got
    # that far, the patched run served the very same object (same hash: same bytes)
    patched = recorded_answers(load_vectors("transcript-initial-sync-with-blob.PATCHED-comparison.json"), "B")
    descriptor_key = (6, json.dumps(["f1f62b1a8dd97487bb0890f8441b3721adb3afa41a0367b4a9a76d0534b64044"]))
    assert descriptor_key not in answers
    answers[descriptor_key] = patched[descriptor_key]
    session, peer, result, pump = run_importer(store, answers, request_timeout=5.0, max_retries=2,
                                               fast_path=False)
    assert session.finished and session.close_reason == "chum finished"
    assert list(result.pending) == [BLOB]
    assert not store.has(BLOB)
    blob_requests = [m for m in peer.requests if m["serviceId"] == 8]
    assert len(blob_requests) == 3  # first try + 2 retries, each with a fresh id
    assert len({m["requestId"] for m in blob_requests}) == 3
    assert blob_requests[0]["args"] == [BLOB, "$__undefined$"]
    roots = json.loads(answers[(2, "[]")][0][0]["data"])
    texts = []
    for m in roots:
        if m["type"] == "unversioned" and m["oneType"] == "ChatMessage" and store.has(m["hash"]):
            texts.append(store.get_object(m["hash"])["text"])
    assert sorted(texts) == [f"Alice → Bob, offline message {i}/5" + (" <ä&ö> 😀" if i == 2 else "")
                             for i in range(1, 6)]
    attachment_msg = "39cfc04563c4946f49046c8d9c2225536c999f8a262aef3e02dacb6912474a84"
    descriptor = "f1f62b1a8dd97487bb0890f8441b3721adb3afa41a0367b4a9a76d0534b64044"
    assert not store.has(attachment_msg) and not store.has(descriptor)  # both need the BLOB
    # every LinkedListEntry root whose closure is free of the BLOB is stored
    entries = [m["hash"] for m in roots if m["type"] == "unversioned" and m["oneType"] == "LinkedListEntry"]
    assert len([h for h in entries if store.has(h)]) == 5
    assert store.verify() == []
    # Requests without a recorded twin: lama asks in parallel what the reference B never
    # reached before the BLOB broke its connection (the version nodes, the attachment's
    # entry, the descriptor and message it would have fetched after the BLOB).  Each is a
    # request a reference exporter answers; the replay answers them with an error.
    nodes = {r["node"] for r in roots if r["type"] == "version_node"}
    later = nodes | {attachment_msg, TOPIC, CI} | set(entries)
    assert peer.unrecorded and all(
        m["serviceId"] in (4, 5, 6, 7) and m["args"][0] in later for m in peer.unrecorded), peer.unrecorded
    errors = [e["code"] for e in result.errors]
    assert "LAMA-CHUM-FRAME" in errors  # the 0-byte binary messages, dropped with a warning
    assert all(not e["fatal"] for e in result.errors)
    assert result.log["BtoABlob"] == []


def recorded_exchange(events: list[dict[str, Any]], conn: str, importer: str) -> list[tuple[dict[str, Any], list[Any]]]:
    """The importer's requests on ``conn`` with the answers it got, in order."""
    other = "B" if importer == "A" else "A"
    reqs: list[tuple[dict[str, Any], list[Any]]] = []
    by_id: dict[int, list[Any]] = {}
    for e in events:
        m = e.get("message")
        if e.get("conn") != conn or e.get("layer") != "encrypted/chum" or not isinstance(m, dict):
            continue
        if e["direction"] == f"{importer}→{other}" and m.get("type") == "request":
            answers: list[Any] = []
            by_id[m["requestId"]] = answers
            reqs.append((m, answers))
        elif e["direction"] == f"{importer}←{other}" and "responseId" in m and m["responseId"] in by_id:
            by_id[m["responseId"]].append(m)
    return reqs


def exporter_store_from_recording(tmp_path: Path, answers: list[tuple[dict[str, Any], list[Any]]]) -> Any:
    """A's store as the recording shows it: every object A served, the channel's version head
    at the newest node, and A's grants (Access for the Topic, IdAccess for the channel, chum.md
    §9)."""
    from chum_graph import grant_id, grant_object

    store = new_store(tmp_path, "a")
    texts = [a[0]["data"] for m, a in answers if m["serviceId"] in (6, 7) and a and a[0]["type"] == "data"]
    store.put_microdata([(t, None) for t in texts])
    nodes = [r["node"] for r in json.loads(answers[1][1][0]["data"]) if r["type"] == "version_node"]
    store.write_batch([], [(CI, None, nodes[-1])])
    grant_object(store, TOPIC, [PA, PB])
    grant_id(store, CI, [PA, PB])
    return store


def test_export_answers_recorded_importer_requests(tmp_path: Path) -> None:
    """lama as A's exporter answers every request B's reference importer sent (chum.md §9)
    with the answer A's reference exporter gave: the roots list, the children lists in
    reversed post-order (§5.3), and the microdata, field for field."""
    events = load_vectors("transcript-pairing-and-chat.json")
    exchange = recorded_exchange(events, "B#5", "B")
    assert [m["serviceId"] for m, _ in exchange[:2]] == [1, 2]
    store = exporter_store_from_recording(tmp_path, exchange)
    session = core.ChumSession(store, PA, PB, importer=False, keep_running=True)
    session.start(0.0)
    compared = 0
    for m, answer in exchange:
        if not answer:
            continue
        session.receive_text(json.dumps(m), 1.0)
        out = [json.loads(f) for f in session.poll_transmit()]
        assert out == answer, m
        compared += 1
    assert compared == 17  # B's requests 0-16 of chum.md §9, every one answered identically
    assert not session.finished
    session.connection_closed("test over", 2.0)
    (finished,) = [d for k, d in session.poll_events() if k == "finished"]
    # chum.md §9: A's exporter logs T, CI1, N1, M, C, Lic, AC, S, L, CI2, N2 and CI
    assert len(finished["log"]["AtoBObjects"]) == 11
    assert finished["log"]["AtoBIdObjects"] == [CI]


def test_export_blob_framing_as_the_patched_recording(tmp_path: Path) -> None:
    """chum.md §2.6: lama streams a BLOB as binary frames [f64-LE request id][<= 65,528 bytes]
    (never fragmented), then the recorded `stream-end`; the patched recording shows a reference
    importer accepting exactly this framing (its chunks carry the same 8-byte header)."""
    events = load_vectors("transcript-initial-sync-with-blob.PATCHED-comparison.json")
    req = next(e["message"] for e in events if e.get("conn") == "A#4" and isinstance(e.get("message"), dict)
               and e["message"].get("serviceId") == 8 and e["direction"] == "A←B")
    recorded = [e["message"] for e in events if e.get("conn") == "A#4" and e["direction"] == "A→B"
                and e["layer"] == "encrypted/chum" and isinstance(e["message"], dict)
                and (e["message"].get("binary") or e["message"].get("responseId") == req["requestId"])]
    assert recorded[-1] == {"responseId": req["requestId"], "type": "stream-end"}
    header = recorded[0]["first_64_bytes_hex"][:16]
    from chum_graph import deterministic_bytes, grant_object

    store = new_store(tmp_path, "a")
    data = deterministic_bytes(150_000)
    blob, _ = store.put_blob(data)
    desc = {"$type$": "BlobDescriptor", "data": blob, "lastModified": 1767225600000, "name": "vector-blob.bin",
            "size": len(data), "type": "application/octet-stream"}
    (d,) = [h for h, _s, _i in store.put_objects([desc])]
    grant_object(store, d, [PB])
    session = core.ChumSession(store, PA, PB, importer=False)
    session.start(0.0)
    session.receive_text('{"requestId":0,"type":"request","serviceId":2,"args":[]}', 0.0)
    session.receive_text(json.dumps({"requestId": 1, "type": "request", "serviceId": 4, "args": [d]}), 0.0)
    session.poll_transmit()
    session.receive_text(json.dumps({**req, "args": [blob, "$__undefined$"]}), 0.0)
    frames = session.poll_transmit()
    binary = [f for f in frames if isinstance(f, bytes)]
    assert [len(f) for f in binary] == [65_536, 65_536, 150_000 - 2 * 65_528 + 8]
    assert all(f[:8].hex() == header for f in binary)  # the request id as f64 LE, as recorded
    assert b"".join(f[8:] for f in binary) == data
    assert json.loads(frames[-1]) == recorded[-1]
    assert frames[-1] == '{"responseId":%d,"type":"stream-end"}' % req["requestId"]


def test_import_accepts_reference_sized_chunks(tmp_path: Path) -> None:
    """The reference (Node) sends 65,536-byte payloads (65,544-byte messages, as in the patched
    recording), the browser build one chunk: lama's importer accepts any chunk size and checks
    the hash before the BLOB becomes visible."""
    from chum_graph import deterministic_bytes

    store = new_store(tmp_path, "b")
    data = deterministic_bytes(150_000)
    h = core.sha256_hex(data)
    session = core.ChumSession(store, PB, PA, exporter=False, fast_path=False)
    session.start(0.0)
    # version, roots with one BlobDescriptor
    session.poll_transmit()
    session.receive_text('{"responseId":0,"type":"data","data":8}', 0.0)
    desc = {"$type$": "BlobDescriptor", "data": h, "lastModified": 1, "name": "x", "size": len(data), "type": "t"}
    d = core.object_hash(desc)
    session.receive_text(json.dumps({"responseId": 1, "type": "data", "data": json.dumps(
        [{"type": "unversioned", "hash": d, "oneType": "BlobDescriptor"}])}), 0.0)
    session.receive_text(json.dumps({"responseId": 2, "type": "data", "data": json.dumps(
        [{"type": "blob", "hash": h}])}), 0.0)
    obj_req = [json.loads(f) for f in session.poll_transmit()][-1]  # after roots, children
    assert obj_req["serviceId"] == 6 and obj_req["args"] == [d]
    session.receive_text(json.dumps({"responseId": obj_req["requestId"], "type": "data",
                                     "data": core.serialize(desc)}), 0.0)
    # the BLOB is asked for once an object that references it as a BLOB is verified
    (blob_req,) = [json.loads(f) for f in session.poll_transmit()]
    assert blob_req["serviceId"] == 8 and blob_req["args"] == [h, "$__undefined$"]
    rid = blob_req["requestId"]
    for off in range(0, len(data), 65_536):
        session.receive_binary(struct.pack("<d", rid) + data[off:off + 65_536], 0.0)
        assert not store.has(h)  # nothing visible before the end and the hash check
    session.receive_text(json.dumps({"responseId": rid, "type": "stream-end"}), 0.0)
    assert store.read_blob(h) == data and store.has(d)
    (fin,) = [json.loads(f) for f in session.poll_transmit()]
    assert fin["serviceId"] == 10 and fin["args"] == []
    session.receive_text('{"responseId":%d,"type":"data","data":"$__undefined$"}' % fin["requestId"], 0.0)
    assert session.finished and session.close_reason == "chum finished"
