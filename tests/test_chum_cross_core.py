"""A Rust-core peer and a pure-core peer sync with each other over CHUM (issue 8), in v8 and
in the fast path, through the sans-I/O pump: each session runs on its own core's store."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from chum_graph import Chat, deterministic_bytes, person_id, register_recipes, texts
from chum_pump import Pump
from lama.chum import SyncResult, handle_event

pytestmark = pytest.mark.cross_core


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()  # in both cores: a peer runs on each


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("rust_side", [0, 1])
def test_rust_and_pure_peers_sync(tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType,
                                  fast: bool, rust_side: int) -> None:
    cores = (rust_core, pure_core) if rust_side == 0 else (pure_core, rust_core)
    a = cores[0].Store(str(tmp_path / "a"))
    b = cores[1].Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    data = deterministic_bytes(200_000)
    chat.post("file", attachments=[chat.attach_blob(data)])
    chat.post("note", attachments=[chat.attach_clob("text ✓ " * 500)])
    stores = (a, b)
    results = (SyncResult(), SyncResult())

    def on_event(side: int, kind: str, d: dict[str, Any]) -> None:
        handle_event(stores[side], kind, d, results[side])

    def run() -> Pump:
        sa = cores[0].ChumSession(a, pa, pb, fast_path=fast)
        sb = cores[1].ChumSession(b, pb, pa, fast_path=fast)
        pump = Pump(sa, sb, on_event=on_event)
        sa.start(pump.now)
        sb.start(pump.now)
        pump.run()
        return pump

    pump = run()
    mode = "fast" if fast else "v8"
    assert ("version", {"remote": 8, "mode": mode}) in pump.events[1]
    # the fast path fetches objects with the binary batch (108, docs/chum-fastpath.md
    # "batch-binary") whichever core serves or asks; v8 never asks a lama service
    asked = {json.loads(f)["serviceId"] for side in (0, 1) for f in pump.sent[side]
             if isinstance(f, str) and '"type":"request"' in f}
    assert (108 in asked and 101 not in asked) if fast else not any(s >= 100 for s in asked)
    assert results[1].reason == results[0].reason == "chum finished"
    assert [e for e in results[0].errors + results[1].errors if e["fatal"]] == []
    assert texts(b, chat.ci) == ["note", "file", "one"]
    assert b.read_blob(pure_core.sha256_hex(data)) == data
    assert a.verify() == [] and b.verify() == []
    # a second sync moves nothing
    results = (SyncResult(), SyncResult())
    run()
    for r in results:
        assert sum(len(r.log[k]) for k in ("BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob")) == 0
