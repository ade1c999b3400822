"""Issue 10: the typed change feed, ``Store.changes_of(types, since, limit)`` and
``Subscription.wait(..., types=...)`` (docs/core-interface.md "Event feed"), on the core under
test: the events of objects, ID objects and heads of the given types, with the position where
the next call starts, so a consumer that wants a few types reads no other object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chum_graph import person_id, register_recipes
from lama._core import core
from lama.errors import LamaError
from lama.objects import versions


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


def _type(store: Any, seq_hash_kind: tuple[int, str, str]) -> str | None:
    _seq, h, kind = seq_hash_kind
    if kind in ("blob", "clob"):
        return None
    return str(core.type_of(store.get(h))[0])


def _note(store: Any, title: str) -> str:
    body, _ = store.put_clob(f"the body of {title}")
    return str(store.put_objects([{"$type$": "LamaChumTestNote", "title": title, "body": body}])[0][0])


def _fill(store: Any) -> dict[str, Any]:
    p = person_id(store, "alice@a.example")
    note = _note(store, "n")
    blob, _ = store.put_blob(b"some bytes")
    doc = versions.store_versioned(store, {"$type$": "LamaChumTestDoc", "name": "d", "title": "v1", "tags": set()})
    versions.store_versioned(store, {"$type$": "LamaChumTestDoc", "name": "d", "title": "v2", "tags": set()})
    return {"person": p, "note": note, "blob": blob, "doc_id": doc.id_hash}


def test_changes_of_is_the_filtered_feed(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    made = _fill(store)
    everything = store.changes(0, 10_000)
    end = everything[-1][0]
    for types in (["Person"], ["LamaChumTestDoc"], ("LamaChumTestNote", "VersionNodeEdge"),
                  {"VersionNodeChange"}, frozenset(), ["NoSuchType"]):
        want = [e for e in everything if _type(store, e) in set(types)]
        assert store.changes_of(types, 0, 10_000) == (end, want)
    # the ID object and both head moves of the versioned document, by the ID object's type
    docs = store.changes_of(["LamaChumTestDoc"], 0, 10_000)[1]
    assert [(h, k) for _s, h, k in docs if k != "object"] == [
        (made["doc_id"], "id"), (made["doc_id"], "head"), (made["doc_id"], "head")]
    assert all(h != made["blob"] for _s, h, _k in store.changes_of(["LamaChumTestNote"], 0, 100)[1])
    assert store.changes_of(["Person"], 0, 10_000)[1] == [e for e in everything if e[1] == made["person"]]


def test_changes_of_position_and_limit(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    _fill(store)
    everything = store.changes(0, 10_000)
    # the limit bounds the events scanned; the position is the last one scanned
    pos, hits = store.changes_of(["LamaChumTestDoc"], 0, 2)
    assert pos == everything[1][0]
    seen: list[tuple[int, str, str]] = list(hits)
    while True:
        nxt, hits = store.changes_of(["LamaChumTestDoc"], pos, 2)
        if nxt == pos:
            break
        assert nxt > pos
        seen.extend(hits)
        pos = nxt
    assert pos == everything[-1][0]
    assert seen == store.changes_of(["LamaChumTestDoc"], 0, 10_000)[1]
    # at the end: the position stays, nothing comes back
    assert store.changes_of(["Person"], pos, 10) == (pos, [])
    assert store.changes_of(["Person"], 0, 0) == (0, [])


@pytest.mark.parametrize("bad", ["Person", None, 3, [1], [b"Person"]])
def test_changes_of_bad_types(tmp_path: Path, bad: Any) -> None:
    store = core.Store(str(tmp_path / "s"))
    with pytest.raises(LamaError) as e:
        store.changes_of(bad, 0, 10)
    assert e.value.code == "LAMA-ARG"
    sub = store.subscribe()
    with pytest.raises(LamaError) as e:
        sub.wait(0.0, 10, bad if bad is not None else 3)
    assert e.value.code == "LAMA-ARG"
    sub.close()


def test_subscription_wait_with_types(tmp_path: Path) -> None:
    store = core.Store(str(tmp_path / "s"))
    sub = store.subscribe()
    plain = store.subscribe()
    start = sub.position
    # other types only: the wait returns with nothing, its position past them (it does not
    # wait for the timeout: the position moved)
    _note(store, "x")
    assert sub.wait(30.0, 100, ["Person"]) == []
    assert start < sub.position == store.last_seq()
    q = person_id(store, "carol@c.example")
    _note(store, "y")
    got = sub.wait(30.0, 100, ["Person"])
    assert [(h, k) for _s, h, k in got] == [(q, "id")]
    assert sub.position == store.last_seq()
    assert sub.wait(0.0, 100, ["Person"]) == []
    # a subscription without a filter: everything, as before
    everything = plain.wait(0.0, 100)
    assert everything == store.changes(start, 100)
    assert plain.position == store.last_seq()
    sub.close()
    plain.close()


_OTHER = """
import json, sys
sys.path.insert(0, sys.argv[2])
from chum_graph import person_id, register_recipes
from lama._core import core
register_recipes()
store = core.Store(sys.argv[1])
if sys.argv[3] == "write":
    person_id(store, "zed@z.example")
    store.put_objects([{"$type$": "LamaChumTestNote", "title": "other",
                        "body": store.put_clob("other body")[0]}])
else:
    out = {}
    for types in json.loads(sys.argv[3]):
        out[",".join(types)] = [list(e) for e in store.changes_of(types, 0, 100_000)[1]]
    print(json.dumps(out))
store.close()
"""


def _other_process(path: Path, what: str) -> str:
    here = Path(__file__).resolve().parent
    env = dict(os.environ, LAMA_CORE=core.CORE_NAME,
               PYTHONPATH=str(here.parent / "python") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _OTHER, str(path), str(here), what], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_changes_of_alike_in_the_writing_process_and_another(tmp_path: Path) -> None:
    """The writing process types its own newest events from memory (the cores' type memo, no
    read of the object); a process that did not write them reads their headers. Both give the
    same events, also when another process committed in between (a gap in the memo), at any
    limit."""
    path = tmp_path / "s"
    store = core.Store(str(path))
    _fill(store)
    _other_process(path, "write")  # committed while this process holds the store open
    _fill(store)
    person_id(store, "bob@b.example")
    everything = store.changes(0, 10_000)
    all_types = [["Person"], ["LamaChumTestDoc"], ["LamaChumTestNote", "VersionNodeEdge"],
                 ["VersionNodeChange", "Person"], ["NoSuchType"]]
    mine: dict[str, list[list[Any]]] = {}
    for types in all_types:
        want = [e for e in everything if _type(store, e) in set(types)]
        assert store.changes_of(types, 0, 10_000) == (everything[-1][0], want)
        for limit in (1, 3, 7):
            pos, seen = 0, []
            while True:
                nxt, hits = store.changes_of(types, pos, limit)
                if nxt == pos:
                    break
                seen.extend(hits)
                pos = nxt
            assert seen == want, (types, limit)
        mine[",".join(types)] = [list(e) for e in want]
    assert any(h for e in mine["Person"] for h in e if h == core.sha256_hex(
        core.id_microdata({"$type$": "Person", "email": "zed@z.example"})))
    assert json.loads(_other_process(path, json.dumps(all_types))) == mine
    store.close()


def test_changes_of_refuses_a_damaged_feed_entry(tmp_path: Path) -> None:
    """A feed entry that is not ``hash ‖ kind`` (written by another program) is LAMA-CORRUPT for
    the typed feed as for the plain one (the pure core's typed feed walks the feed itself)."""
    import lmdb

    path = tmp_path / "s"
    store = core.Store(str(path))
    _fill(store)
    n = store.last_seq()
    store.close()
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    try:
        events = env.open_db(b"events")
        with env.begin(write=True) as txn:
            txn.put((2).to_bytes(8, "big"), b"\x00" * 34, db=events)
    finally:
        env.close()
    store = core.Store(str(path))
    try:
        for call in (lambda: store.changes(0, 100), lambda: store.changes_of(["Person"], 0, 100),
                     lambda: store.changes_of(["Person"], 1, 100)):
            with pytest.raises(LamaError) as e:
                call()
            assert e.value.code == "LAMA-CORRUPT"
        # past the damaged entry the feed reads on
        assert store.changes_of(["NoSuchType"], 2, 100) == (n, [])
    finally:
        store.close()
