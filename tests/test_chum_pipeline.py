"""Issue 8: the importer keeps the next fetch chunks asked for while it verifies and commits
one (so the exporter serves while the importer works), and never more than three chunks: what
it holds stays bounded (docs/chum-session.md "Importer").  Both cores; v8 chunks are 256
GET_OBJECT/GET_ID_OBJECT requests, fast-path chunks 8 GET_OBJECTS_BATCH of 256."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chum_graph import grant_object, person_id
from lama._core import core

AHEAD = 3


def _chain(store: Any, me: str, links: int) -> str:
    """``links`` posts (ChatMessage, CreationTime, LinkedListEntry), the newest entry granted."""
    objs: list[dict[str, Any]] = []
    prev = None
    for i in range(links):
        m = {"$type$": "ChatMessage", "text": f"message {i}", "sender": me}
        ct = {"$type$": "CreationTime", "timestamp": 1_700_000_000_000 + i, "data": core.object_hash(m)}
        lle: dict[str, Any] = {"$type$": "LinkedListEntry", "data": core.object_hash(ct)}
        if prev:
            lle["previous"] = prev
        prev = core.object_hash(lle)
        objs += [m, ct, lle]
    store.put_objects(objs)
    assert prev is not None
    return prev


@pytest.mark.parametrize("fast,links,chunk", [(False, 400, 256), (True, 2100, 2048)])
def test_fetch_keeps_the_next_chunks_out_and_at_most_three(tmp_path: Path, fast: bool, links: int, chunk: int) -> None:
    a = core.Store(str(tmp_path / "a"), durable=False)
    b = core.Store(str(tmp_path / "b"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    top = _chain(a, pa, links)
    grant_object(a, top, [pb])
    sa = core.ChumSession(a, pa, pb, importer=False)
    # a window that never limits: only the importer's own bound applies
    sb = core.ChumSession(b, pb, pa, exporter=False, fast_path=fast, window=100_000)
    now = 1000.0
    sa.start(now)
    sb.start(now)
    out: dict[int, int] = {}
    outstanding = most = asked = 0
    before_commit = None
    for _ in range(1_000_000):
        moved = False
        for f in sb.poll_transmit():
            moved = True
            m = json.loads(f) if isinstance(f, str) else {}
            if m.get("type") == "request" and m["serviceId"] in (6, 7, 101):
                n = len(m["args"][0]) if m["serviceId"] == 101 else 1
                out[m["requestId"]] = n
                outstanding += n
                asked += n
                most = max(most, outstanding)
            sa.receive_text(f, now) if isinstance(f, str) else sa.receive_binary(f, now)
        # A's answers reach B one by one: B commits a chunk when its last answer arrives
        for f in sa.poll_transmit():
            moved = True
            if isinstance(f, str):
                m = json.loads(f)
                outstanding -= out.pop(m.get("responseId", -1), 0)
                sb.receive_text(f, now)
            else:
                sb.receive_binary(f, now)
            for kind, data in sb.poll_events():
                assert kind != "error", data
                if kind == "imported" and before_commit is None:
                    before_commit = asked
        sa.poll_events()
        if sb.finished or not moved:
            break
    assert sb.close_reason == "chum finished"
    assert sb.stats()["objects_received"] == 3 * links
    assert b.verify() == []
    # the first chunk's commit came with the next two chunks already asked for, never more
    assert before_commit == AHEAD * chunk
    assert most == AHEAD * chunk
    a.close()
    b.close()


def test_fast_path_commits_the_first_chunk_at_once_then_in_large_transactions(tmp_path: Path) -> None:
    """docs/chum-fastpath.md "Commits": the first fetched chunk of a pass is committed at once,
    later ones only once 8,192 items are ready (each LMDB commit rewrites the B-tree pages its
    random keys touch, issue 8): one ``imported`` event per transaction, both cores."""
    links = 7000  # 21,000 objects: 11 chunks of 2,048
    a = core.Store(str(tmp_path / "a"), durable=False)
    b = core.Store(str(tmp_path / "b"), durable=False)
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    grant_object(a, _chain(a, pa, links), [pb])
    sa = core.ChumSession(a, pa, pb, importer=False)
    sb = core.ChumSession(b, pb, pa, exporter=False, fast_path=True)
    now = 1000.0
    sa.start(now)
    sb.start(now)
    commits: list[int] = []
    for _ in range(1_000_000):
        moved = False
        for f in sb.poll_transmit():
            moved = True
            sa.receive_text(f, now) if isinstance(f, str) else sa.receive_binary(f, now)
        for f in sa.poll_transmit():
            moved = True
            sb.receive_text(f, now) if isinstance(f, str) else sb.receive_binary(f, now)
        for kind, data in sb.poll_events():
            assert kind != "error", data
            if kind == "imported":
                commits.append(len(data["objects"]) + len(data["id_objects"]))
        sa.poll_events()
        if sb.finished or not moved:
            break
    assert sb.close_reason == "chum finished"
    assert sum(commits) == 3 * links == sb.stats()["objects_received"]
    # the first chunk's ready items at once (its newest entries wait for what references them)
    assert 0 < commits[0] <= 2048, commits
    assert all(n >= 8192 for n in commits[1:-1]) and len(commits) <= 4, commits
    assert b.verify() == []
    a.close()
    b.close()
