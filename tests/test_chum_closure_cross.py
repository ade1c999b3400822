"""A Rust-core peer and a pure-core peer push to each other with the fast path's pruned
closures and roots in NOTIFY (docs/chum-fastpath.md "closure", "notify-roots"): both cores
speak the same services 104/106, and a push on a long channel moves only the new objects.
With "notify-closure" on both sides the NOTIFY carries the new closures and the push needs no
request; against an exporter without it (its probe answer does not list it), 106 as before."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from chum_graph import Chat, person_id, register_recipes
from chum_pump import Pump, without_notify_closure

pytestmark = pytest.mark.cross_core

POSTS = 400
PER_POST = 6  # ChatMessage, CreationTime, Signature, LinkedListEntry, ChannelInfo version, node


@pytest.mark.parametrize("rust_side", [0, 1])
@pytest.mark.parametrize("notify_closure", [True, False])
def test_rust_and_pure_push_only_the_new_objects(tmp_path: Path, rust_core: ModuleType,
                                                 pure_core: ModuleType, rust_side: int,
                                                 notify_closure: bool) -> None:
    register_recipes()
    cores = (rust_core, pure_core) if rust_side == 0 else (pure_core, rust_core)
    a = cores[0].Store(str(tmp_path / "a"), durable=False)
    b = cores[1].Store(str(tmp_path / "b"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    for i in range(POSTS):
        chat.post(f"message {i}")
    opts = {"keep_running": True, "poll_interval": 5.0, "fast_path": True}
    sa = cores[0].ChumSession(a, pa, pb, **opts)
    sb = cores[1].ChumSession(b, pb, pa, **opts)
    pump = Pump(sa, sb)
    if not notify_closure:
        pump.filters[0] = without_notify_closure
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=1.0)
    assert ("full_sync", {}) in pump.events[1]
    for k in range(2):
        before_a, before_b, sent_b = sa.stats(), sb.stats(), len(pump.sent[1])
        sent_a = len(pump.sent[0])
        head = chat.post(f"live {k}")
        sa.store_changed(pump.now)
        pump.run(max_time=1.0)
        assert b.has(head)
        requests = [json.loads(f)["serviceId"] for f in pump.sent[1][sent_b:]
                    if isinstance(f, str) and '"type":"request"' in f.replace(" ", "")]
        # the push's one data request (none when the NOTIFY carried the closures), then the
        # pass's receipt (107, docs/tracing.md §4)
        assert requests == ([107] if notify_closure else [106, 107])
        assert sa.stats()["objects_sent"] - before_a["objects_sent"] == PER_POST
        assert sb.stats()["objects_received"] - before_b["objects_received"] == PER_POST
        assert sa.stats()["bytes_sent"] - before_a["bytes_sent"] < 8_000
        notifies = [json.loads(f) for f in pump.sent[0][sent_a:]
                    if isinstance(f, str) and '"serviceId":104' in f.replace(" ", "")]
        assert len(notifies) == 1 and ("closure" in notifies[0]["args"][0]) == notify_closure
    assert [e for e in pump.events[1] if e[0] == "error"] == []
    hashes = set(b.hashes())
    for h in hashes:  # chum.md §5.3 "no holes", in linear time
        if b.kind(h) in ("object", "id"):
            assert all(r in hashes for _p, _k, r in cores[1].references(b.get(h)))
    assert b.verify() == []
    sa.connection_closed("bye", pump.now)
    pump.step()
    a.close()
    b.close()
