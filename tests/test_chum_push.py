"""Fast-path push (docs/chum-fastpath.md, services 103/104) under a steady stream of writes:
a NOTIFY that arrives while the importer's pass is still running must not be lost (found by
the live push latency benchmark, benches/RESULTS.md 2026-11-30 "CHUM sync": a post written
while the previous post's pass ran reached the peer only at the fallback poll, 10 ×
poll_interval later)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chum_graph import Chat, chat_pair, person_id, register_recipes
from chum_pump import Pump
from lama._core import core


def _old_probe(f: str | bytes) -> str | bytes:
    """A lama exporter from before "closure"/"notify-roots" (its probe answer)."""
    if isinstance(f, str) and '"lama"' in f:
        m = json.loads(f)
        if isinstance(m.get("data"), dict) and "features" in m["data"]:
            m["data"]["features"] = ["batch", "children-batch", "push", "roots-since"]
            return json.dumps(m)
    return f


@pytest.mark.parametrize("extensions", [False, True])
def test_notify_during_a_pass_starts_another_pass(tmp_path: Path, extensions: bool) -> None:
    """``extensions``: with roots in NOTIFY and 106, a push is one request, so the second
    NOTIFY arrives while the importer yields before writing its peer mark; without them (an
    older lama exporter) it arrives while the pass waits for the objects."""
    register_recipes()
    a, b, pa, pb, chat = chat_pair(tmp_path)
    chat.post("first")
    opts = {"keep_running": True, "poll_interval": 5.0, "fast_path": True}
    sa, sb = core.ChumSession(a, pa, pb, **opts), core.ChumSession(b, pb, pa, **opts)
    pump = Pump(sa, sb)
    if not extensions:
        pump.filters[0] = _old_probe
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert ("version", {"remote": 8, "mode": "fast"}) in pump.events[1]
    assert sb.poll_timeout() is not None and sb.poll_timeout() >= pump.now + 40  # subscribed
    t0 = pump.now

    second = chat.post("second")
    sa.store_changed(pump.now)  # A's driver saw the write: NOTIFY
    pump.step()  # B gets the NOTIFY, starts a pass, A answers its roots request
    third = chat.post("third")
    sa.store_changed(pump.now)  # NOTIFY again, behind the roots answer
    pump.step()  # B reads the answer (without `third`), then the NOTIFY
    if not extensions:
        assert not b.has(second)  # the NOTIFY came in the middle of the pass

    pump.run(max_time=1.0)
    assert b.has(second)
    assert b.has(third), "the NOTIFY that arrived during a pass was lost"
    assert pump.now - t0 < 1.0
    sa.connection_closed("bye", pump.now)
    pump.step()
    assert sa.finished and sb.finished
    assert a.verify() == [] and b.verify() == []
    a.close()
    b.close()


def test_roots_granted_before_the_subscription_are_notified_at_once(tmp_path: Path) -> None:
    """A grant written after the exporter answered the roots request but before the
    importer's SUBSCRIBE (103) arrived raised its store event while nobody had subscribed: the
    exporter checks once when it accepts the subscription, so the new root is pushed at once
    instead of waiting for the importer's next poll (found by the chat benchmark: a message
    posted right after a connection came up waited about 10 s)."""
    register_recipes()
    a = core.Store(str(tmp_path / "a"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    session = core.ChumSession(a, pa, pb, importer=False)
    session.start(0.0)
    session.receive_text(json.dumps({"requestId": 0, "type": "request", "serviceId": 2, "args": []}), 0.0)
    roots = json.loads(json.loads(session.poll_transmit()[0])["data"])
    later = Chat(a, pa, pb, topic="later")
    later.share([pa, pb])  # no store_changed: the driver's call came before the subscription
    session.receive_text(json.dumps({"requestId": 1, "type": "request", "serviceId": 103,
                                     "args": [{"roots": True}]}), 0.0)
    out = [json.loads(f) for f in session.poll_transmit()]
    assert out[0]["responseId"] == 1 and out[0]["type"] != "error"
    notify = [m for m in out if m.get("type") == "request" and m.get("serviceId") == 104]
    assert len(notify) == 1
    pushed = {r.get("hash") or r.get("idHash") or r.get("node") for r in notify[0]["args"][0]["roots"]}
    assert later.topic in pushed and not pushed & {r.get("hash") for r in roots}
    a.close()
