"""The lama receipt (service 107, docs/tracing.md §4) and the session option ``trace``: after
each pass a lama importer tells the exporter its mark (or its errors); a plain v8 importer (a
ONE peer) never calls 107; ``exported`` events only with ``trace=True``; malformed receipt
arguments are read as "no mark" (a receipt only informs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chum_graph import Chat, chat_pair, person_id, register_recipes
from chum_pump import Pump
from lama._core import core


def _pair(tmp_path: Path, **a_opts: Any) -> tuple[Any, Any, Any, Any, Chat, str, str]:
    register_recipes()
    a, b, pa, pb, chat = chat_pair(tmp_path)
    return a, b, None, None, chat, pa, pb


def _services(frames: list[str | bytes]) -> list[int]:
    out = []
    for f in frames:
        if isinstance(f, str):
            m = json.loads(f)
            if m.get("type") == "request":
                out.append(m["serviceId"])
    return out


def test_receipt_after_each_pass_and_exported_events(tmp_path: Path) -> None:
    a, b, _, _, chat, pa, pb = _pair(tmp_path)
    first = chat.post("first")
    opts = {"keep_running": True, "poll_interval": 5.0}
    sa = core.ChumSession(a, pa, pb, trace=True, **opts)
    sb = core.ChumSession(b, pb, pa, **opts)
    pump = Pump(sa, sb)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert b.has(first)
    got = [d for k, d in pump.events[0] if k == "receipt"]
    sent = [d for k, d in pump.events[1] if k == "receipt_sent"]
    assert got and got == sent
    assert got[-1]["errors"] == [] and got[-1]["mark"] >= 1
    mark1 = got[-1]["mark"]
    exported = [d for k, d in pump.events[0] if k == "exported"]
    assert exported and any(d["roots"] for d in exported)
    assert all(d["probed"] is True for d in exported)  # a lama importer probes first
    assert first in {h for d in exported for h in d["objects"]}
    # the peer exported nothing traced (its option is off)
    assert not [k for k, _ in pump.events[1] if k == "exported"]

    second = chat.post("second")
    sa.store_changed(pump.now)  # NOTIFY: a pass, then a receipt with a higher mark
    pump.run(max_time=1.0)
    assert b.has(second)
    got = [d for k, d in pump.events[0] if k == "receipt"]
    assert got[-1]["mark"] > mark1 and got[-1]["mark"] >= a.last_seq() - 1
    assert second in {h for k, d in pump.events[0] if k == "exported" for h in d["objects"]}
    sa.connection_closed("bye", pump.now)
    pump.step()
    assert sa.finished and sb.finished
    a.close()
    b.close()


def test_plain_v8_importer_never_sends_a_receipt(tmp_path: Path) -> None:
    a, b, _, _, chat, pa, pb = _pair(tmp_path)
    first = chat.post("first")
    sa = core.ChumSession(a, pa, pb, trace=True)
    sb = core.ChumSession(b, pb, pa, fast_path=False)  # as a ONE peer: no probe, no 107
    pump = Pump(sa, sb)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=5.0)
    assert b.has(first)
    assert 107 not in _services(pump.sent[1])
    assert not [k for k, _ in pump.events[0] if k == "receipt"]
    assert not [k for k, _ in pump.events[1] if k == "receipt_sent"]
    # what ONE fetched is still observed on the exporter side
    assert first in {h for k, d in pump.events[0] if k == "exported" for h in d["objects"]}
    # ... and it never probed: the tracer's kind "one" (docs/tracing.md §1)
    assert {d["probed"] for k, d in pump.events[0] if k == "exported"} == {False}
    a.close()
    b.close()


def test_malformed_receipts_only_inform(tmp_path: Path) -> None:
    a, _b, _, _, _chat, pa, pb = _pair(tmp_path)
    s = core.ChumSession(a, pa, pb, importer=False)
    s.start(0.0)
    args: list[Any] = [
        [{"mark": 5, "errors": []}],
        [{"mark": -1, "errors": "x"}],
        [{"mark": True, "errors": [1, "e"]}],
        ["nonsense"],
        [],
        [{"mark": 7, "errors": ["y" * 1000] * 20}],
    ]
    for i, a_ in enumerate(args):
        s.receive_text(json.dumps({"requestId": i, "type": "request", "serviceId": 107,
                                   "args": a_}), 0.0)
    answers = [json.loads(f) for f in s.poll_transmit() if isinstance(f, str)]
    assert [(m["responseId"], m["type"]) for m in answers] == [(i, "data") for i in range(6)]
    got = [d for k, d in s.poll_events() if k == "receipt"]
    assert got[:5] == [{"mark": 5, "errors": []}, {"mark": None, "errors": []},
                       {"mark": None, "errors": ["e"]}, {"mark": None, "errors": []},
                       {"mark": None, "errors": []}]
    assert got[5]["mark"] == 7 and len(got[5]["errors"]) == 10
    assert all(len(e) == 300 for e in got[5]["errors"])
    assert not [k for k, _ in s.poll_events() if k == "exported"]  # trace is off
    a.close()


def _run_until(pump: Pump, done: Any, max_time: float = 60.0) -> None:
    """Pump.run, stopping as soon as ``done()`` holds (a B "killed" there does nothing more)."""
    end = pump.now + max_time
    for _ in range(100_000):
        if done() or all(p.finished for p in pump.peers):
            return
        if pump.step():
            continue
        deadlines = [t for t in (p.poll_timeout() for p in pump.peers if not p.finished) if t is not None]
        if not deadlines or min(deadlines) > end:
            return
        pump.now = max(pump.now, min(deadlines))
        for p in pump.peers:
            if not p.finished:
                p.handle_timeout(pump.now)
    raise AssertionError("pump did not settle")


def test_receipt_goes_out_before_the_peer_mark_and_a_crash_between_loses_nothing(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "Receipt before the mark": when B's receipt leaves, its imported
    objects are stored and its peer mark is still the old one; a B that stops right there (a
    kill between the two) keeps the old mark, and its next session lists again, fetches
    nothing, and writes the mark once its receipt is answered.  One-shot and keep-running."""
    a, b, _, _, chat, pa, pb = _pair(tmp_path)
    first = chat.post("first")
    key = f"{pa}/{a.store_id}"
    for keep_running in (False, True):
        bs = b if not keep_running else core.Store(str(tmp_path / "b2"))
        if keep_running:
            person_id(bs, "alice@a.example")
            person_id(bs, "bob@b.example")
        opts: dict[str, Any] = {"keep_running": True, "poll_interval": 5.0} if keep_running else {}
        sa = core.ChumSession(a, pa, pb, **opts)
        sb = core.ChumSession(bs, pb, pa, **opts)
        pump = Pump(sa, sb)
        at_receipt: list[int] = []

        def watch(f: str | bytes, store: Any = bs, seen: list[int] = at_receipt) -> str | bytes | None:
            if isinstance(f, str) and json.loads(f).get("serviceId") == 107 and not seen:
                seen.append(store.peer_mark(key))
            return f

        pump.filters = [None, watch]
        sa.start(pump.now)
        sb.start(pump.now)
        _run_until(pump, lambda seen=at_receipt: bool(seen))  # type: ignore[misc]
        assert at_receipt == [0], keep_running
        assert bs.has(first) and bs.peer_mark(key) == 0
        # B is gone here: its next session (one-shot) re-lists, fetches nothing, writes the mark
        sa = core.ChumSession(a, pa, pb)
        sb = core.ChumSession(bs, pb, pa)
        pump = Pump(sa, sb)
        sa.start(pump.now)
        sb.start(pump.now)
        pump.run(max_time=60.0)
        assert sb.close_reason == "chum finished"
        assert [k for k, _ in pump.events[1] if k == "error"] == []
        assert not any(d["objects"] or d["id_objects"] for k, d in pump.events[1] if k == "imported")
        sent = [d for k, d in pump.events[1] if k == "receipt_sent"]
        assert len(sent) == 1 and sent[0]["mark"] >= 1
        assert bs.peer_mark(key) == sent[0]["mark"]
        assert bs.verify() == []


def test_a_push_pass_writes_the_peer_mark_with_its_objects(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "The mark in a push's commit", both cores: in a keep-running
    session that has subscribed, a push pass that ends clean writes its peer mark in the
    transaction of its last commit, so when its receipt leaves B the new mark is on disk
    already; the session's first pass still writes it after its receipt. The next session
    lists nothing new."""
    a, b, _, _, chat, pa, pb = _pair(tmp_path)
    chat.post("first")
    key = f"{pa}/{a.store_id}"
    opts: dict[str, Any] = {"keep_running": True, "poll_interval": 5.0}
    sa = core.ChumSession(a, pa, pb, **opts)
    sb = core.ChumSession(b, pb, pa, **opts)
    pump = Pump(sa, sb)
    at_receipt: list[int] = []

    def watch(f: str | bytes) -> str | bytes | None:
        if isinstance(f, str) and json.loads(f).get("serviceId") == 107:
            at_receipt.append(b.peer_mark(key))
        return f

    pump.filters = [None, watch]
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    sent = [d["mark"] for k, d in pump.events[1] if k == "receipt_sent"]
    assert at_receipt[:1] == [0] and sent[0] >= 1  # the first pass: the receipt first
    assert b.peer_mark(key) == sent[-1]
    for i in range(3):  # pushes
        n = len(at_receipt)
        second = chat.post(f"pushed {i}")
        sa.store_changed(pump.now)
        pump.run(max_time=1.0)
        assert b.has(second)
        sent = [d["mark"] for k, d in pump.events[1] if k == "receipt_sent"]
        assert len(at_receipt) == n + 1 and sent[-1] > sent[-2]
        assert at_receipt[-1] == sent[-1], "the push's mark is on disk when its receipt leaves"
        assert b.peer_mark(key) == sent[-1]
    assert [k for k, _ in pump.events[1] if k == "error"] == []
    sa.connection_closed("bye", pump.now)
    pump.step()
    # the next session lists nothing new and fetches nothing
    sa, sb = core.ChumSession(a, pa, pb), core.ChumSession(b, pb, pa)
    pump = Pump(sa, sb)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=60.0)
    assert sb.close_reason == "chum finished"
    assert not any(d["objects"] or d["id_objects"] for k, d in pump.events[1] if k == "imported")
    assert [k for k, _ in pump.events[1] if k == "error"] == []
    assert b.verify() == []
    a.close()
    b.close()
