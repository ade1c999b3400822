"""Importer work that must stay linear in the size of a roots answer (found by
benches/test_bench_chum.py, benches/RESULTS.md 2026-11-30 "CHUM sync").

A channel with n posts has n version nodes, all of them roots under an IdAccess grant
(chum.md §4.2, docs/chum-session.md §1).  Grouping the missing nodes per ID deduplicated each
node against a list, n²/2 string comparisons: 10,000 posts cost 50 million comparisons before
the first children request went out."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from chum_graph import person_id
from lama._core import core

N_NODES = 40_000


def _hash(i: int) -> str:
    return hashlib.sha256(f"node {i}".encode()).hexdigest()


def _requests(frames: list[str | bytes]) -> list[dict]:
    return [json.loads(f) for f in frames if isinstance(f, str) and '"type":"request"' in f]


def test_many_version_node_roots_are_grouped_in_linear_time(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "b"))
    pb, pa = person_id(store, "bob@b.example"), person_id(store, "alice@a.example")
    s = core.ChumSession(store, pb, pa, exporter=False, fast_path=False)
    s.start(0.0)
    (version,) = _requests(s.poll_transmit())
    assert version["serviceId"] == 1
    s.receive_text(json.dumps({"responseId": version["requestId"], "type": "data", "data": 8}), 0.0)
    (roots,) = _requests(s.poll_transmit())
    assert roots["serviceId"] == 2
    ci = _hash(-1)
    listed = [{"type": "version_node", "node": _hash(i), "dataIdHash": ci, "dataType": "ChannelInfo"}
              for i in range(N_NODES)]
    listed += listed[:100]  # listed twice: asked once
    answer = json.dumps({"responseId": roots["requestId"], "type": "data", "data": json.dumps(listed)})
    # CPU time of this thread (the session works in it, also in the Rust core): on a shared
    # host the wall time mostly measures the neighbours (3 s at a load average of 13)
    t0 = time.thread_time()
    s.receive_text(answer, 0.0)
    seconds = time.thread_time() - t0
    # chum.md §10.2: of one ID's version nodes only one is asked first (its closure holds the
    # older ones)
    children = _requests(s.poll_transmit())
    assert [r["serviceId"] for r in children] == [4]
    assert children[0]["args"][0] in {r["node"] for r in listed}
    # linear: about 0.1 s (pure) and 0.02 s (Rust) here; the quadratic grouping took 40 s
    # (pure) and 4 s (Rust)
    assert seconds < 2.0, f"{N_NODES} version-node roots took {seconds:.1f} s to group"
    store.close()
