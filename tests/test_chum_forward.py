"""Issue 10: the CHUM importer moves the head of an imported version node in its own last
commit when that is a fast-forward (Rust ``Store::put_verified_forward``, the pure store's
``_put_microdata_forward``), so the receiver's ``versions.merge_node`` has nothing to write and
a chat message costs one durable commit less at the receiver. Any other case (a concurrent
local version) is still merged by ``merge_node``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chum_graph import Chat, person_id, register_recipes, texts
from chum_pump import Pump
from lama._core import core
from lama.chum import SyncResult, handle_event
from lama.objects import versions


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


def _sync(a: Any, b: Any, pa: str, pb: str, fast: bool, seen: list[tuple[str, str | None, str]]) -> SyncResult:
    """One session a -> b; ``seen`` gets, for each of b's ``merge`` events, (node, b's head
    when the event arrived, b's head after merge_node)."""
    opts = {"fast_path": fast}
    sa = core.ChumSession(a, pa, pb, **opts)
    sb = core.ChumSession(b, pb, pa, **opts)
    result = SyncResult()

    def on_event(side: int, kind: str, data: dict[str, Any]) -> None:
        if side == 0:
            return
        before = b.get_head(data["id_hash"]) if kind == "merge" else None
        handle_event(b, kind, data, result)
        if kind == "merge":
            seen.append((data["node"], before, b.get_head(data["id_hash"])))

    pump = Pump(sa, sb, on_event=on_event)
    sa.start(pump.now)
    sb.start(pump.now)
    pump.run(max_time=3600.0)
    return result


@pytest.mark.parametrize("fast", [False, True])
def test_import_fast_forwards_the_head_in_its_commit(tmp_path: Path, fast: bool) -> None:
    a = core.Store(str(tmp_path / "a"))
    b = core.Store(str(tmp_path / "b"))
    pa = person_id(a, "alice@a.example")
    pb = person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    seen: list[tuple[str, str | None, str]] = []
    r = _sync(a, b, pa, pb, fast, seen)
    assert not [e for e in r.errors if e["fatal"]]
    # the first version: the head was set by the import's commit, before the merge event
    channel = [s for s in seen if s[0] == a.get_head(chat.ci)]
    assert channel and channel[0][1] == channel[0][0] == channel[0][2]
    assert all(before == node for node, before, _after in seen)
    last_seq = b.last_seq()

    # a later version whose parent is b's head: a fast-forward in the import commit again
    chat.post("two")
    seen.clear()
    _sync(a, b, pa, pb, fast, seen)
    node = a.get_head(chat.ci)
    assert (node, node, node) in seen
    assert texts(b, chat.ci) == ["two", "one"]
    # merge_node wrote nothing: every head event after the first sync is the import's
    # (one per ID it moved, and each follows objects of the same commit)
    heads = [h for _s, h, k in b.changes(last_seq, 10_000) if k == "head"]
    assert heads.count(chat.ci) == 1

    # a concurrent local version: no fast-forward, merge_node merges as before
    chat_b = Chat.joined(b, pb, chat)
    chat_b.share([pa, pb])
    chat_b.post("from b")
    chat.post("three")
    seen.clear()
    _sync(a, b, pa, pb, fast, seen)
    node = a.get_head(chat.ci)
    mine = [s for s in seen if s[0] == node]
    assert mine and mine[0][1] != node  # the head was b's own version when the event came
    merged = versions.head_node(b, chat.ci)
    assert merged is not None and merged.kind == "merge"
    assert sorted(texts(b, chat.ci)) == ["from b", "one", "three", "two"]
    assert a.verify() == [] and b.verify() == []
