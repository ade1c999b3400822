"""The lama receipt (service 107, docs/tracing.md §4) and the session option ``trace``: after
each pass a lama importer tells the exporter its mark (or its errors); a plain v8 importer (a
ONE peer) never calls 107; ``exported`` events only with ``trace=True``; malformed receipt
arguments are read as "no mark" (a receipt only informs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from chum_graph import Chat, person_id, register_recipes
from chum_pump import Pump
from lama._core import core


def _pair(tmp_path: Path, **a_opts: Any) -> tuple[Any, Any, Any, Any, Chat, str, str]:
    register_recipes()
    a, b = core.Store(str(tmp_path / "a")), core.Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
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
