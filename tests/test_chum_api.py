"""``lama.chum.sync`` (docs/chum-session.md §2.1 "Python layer"): the public entry point runs a
session of the core under test over a transport through ``spawn_session``, merges the remote
versions, writes the Chum log object (chum.md §7) and returns what happened."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from chum_graph import Chat, deterministic_bytes, person_id, register_recipes, texts
from lama._core import core
from lama.chum import LOG_BAGS, SyncResult, sync
from lama.objects import versions


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


def test_sync_over_a_memory_pair_writes_the_chum_log(tmp_path: Path) -> None:
    a = core.Store(str(tmp_path / "a"))
    b = core.Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("hello")
    data = deterministic_bytes(300_000)
    chat.post("file", attachments=[chat.attach_blob(data)])
    seen: list[str] = []

    async def main() -> tuple[SyncResult, SyncResult]:
        ta, tb = core.memory_pair()
        return await asyncio.wait_for(asyncio.gather(
            sync(a, ta, pa, pb, local_instance="inst-a", remote_instance="inst-b",
                 on_event=lambda k, d: seen.append(k)),
            sync(b, tb, pb, pa, local_instance="inst-b", remote_instance="inst-a", request_timeout=20.0),
        ), 120)

    ra, rb = asyncio.run(main())
    assert ra.reason == rb.reason == "chum finished"
    assert rb.full_sync and len(rb.merged) == 1 and rb.pending == {}
    assert texts(b, chat.ci) == ["file", "hello"] and b.read_blob(core.sha256_hex(data)) == data
    assert rb.stats["objects_received"] == len(rb.log["BtoAObjects"]) > 0
    # the finished event's log as both cores give it (the Rust core builds it directly, not
    # through JSON, issue 8): the same keys in the same order, lists of hex strings
    for r in (ra, rb):
        assert list(r.log) == ["AtoBObjects", "AtoBIdObjects", "AtoBBlob", "AtoBClob", "BtoAObjects",
                               "BtoAIdObjects", "BtoABlob", "BtoAClob", "errors", "statistics"]
        assert list(r.log["statistics"]) == ["requestsSentTotal", "requestsReceivedTotal", "requestsReceivedInvalid"]
        assert all(type(v) is int for v in r.log["statistics"].values())
        assert all(type(h) is str and len(h) == 64 for k in LOG_BAGS for h in r.log[k])
    assert seen[0] == "version" and seen[-1] == "finished"
    # the Chum log objects: one ID for both sides, "A" is the writer (chum.md §7)
    assert ra.chum and rb.chum
    la, lb = a.get_object(ra.chum), b.get_object(rb.chum)
    assert la["instance"] == lb["instance"] == ["inst-a", "inst-b"]
    assert la["person"] == lb["person"] == [pa, pb]
    assert core.id_hash(la) == core.id_hash(lb)
    assert versions.current_hash(b, core.id_hash(lb)) == rb.chum
    assert sorted(la["AtoBObjects"]) == sorted(lb["BtoAObjects"])
    assert la["AtoBBlob"] == lb["BtoABlob"] == [core.sha256_hex(data)]
    assert a.verify() == [] and b.verify() == []
