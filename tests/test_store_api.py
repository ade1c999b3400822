"""The store API of the sync layer (project issue 6; docs/core-interface.md "Store: reads for
sync", "Snapshot", "Event feed"; docs/store-format.md "events"): check_hash, snapshots,
missing, children (chum.md §5.3), version_nodes (objects.md §4.1) and the event feed.

Runs against ``lama._core.core``; the cross-core tests (marker ``cross_core``) run both.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import lmdb
import pytest

from lama._core import core
from lama.errors import LamaError, MicrodataError, NotFoundError, StoreError

H = "0123456789abcdef" * 4
ALICE = {"$type$": "Person", "email": "alice@example.com", "name": "Alice"}


def _store(tmp_path: Path, name: str = "s", c: ModuleType = core) -> Any:
    return c.Store(str(tmp_path / name))


# ---------------------------------------------------------------------------- check_hash


def test_check_hash_accepts_exactly_64_lowercase_hex() -> None:
    assert core.check_hash(H) == H
    assert core.check_hash("f" * 64, "keys hash") == "f" * 64


@pytest.mark.parametrize(
    "bad",
    ["a" * 64 + "\n", "\n" + "a" * 64, " " + "a" * 64, "A" * 64, "a" * 63, "a" * 65, "",
     "g" * 64, "é" * 32, "a" * 63 + "\ud800", b"a" * 64, None, 1, ["a" * 64], 0.5],
)
def test_check_hash_refuses_everything_else(bad: object) -> None:
    with pytest.raises(MicrodataError) as e:
        core.check_hash(bad, "keys hash")
    assert e.value.code == "LAMA-BADHASH"
    assert isinstance(e.value, ValueError)
    assert "keys hash" in str(e.value)


# ---------------------------------------------------------------------------- fixtures


def _chat(s: Any) -> dict[str, str]:
    """A chat message with an attachment (object -> BLOB) and a sender (ID reference)."""
    blob, _ = s.put_blob(b"picture bytes")
    desc = {"$type$": "BlobDescriptor", "data": blob, "lastModified": 1, "name": "p.jpg",
            "size": 13, "type": "image/jpeg"}
    (desc_h, _, _), (p_h, _, alice_id) = s.put_objects([desc, ALICE])
    # the same attachment twice and the same blob through both: each listed once
    msg = {"$type$": "ChatMessage", "text": "hi", "attachments": [desc_h, desc_h],
           "sender": alice_id}
    (msg_h, _, _), = s.put_objects([msg])
    access = {"$type$": "Access", "object": msg_h, "person": [alice_id], "group": []}
    (acc_h, _, acc_id), = s.put_objects([access])
    return {"blob": blob, "desc": desc_h, "person": p_h, "alice_id": alice_id, "msg": msg_h,
            "access": acc_h, "access_id": acc_id}


def _versions(s: Any) -> dict[str, str]:
    """Person Bob: edge -> change -> (second edge) -> merge of both branches."""
    bobs = [{"$type$": "Person", "email": "bob@example.com", "name": n}
            for n in ("Bob", "Bobby", "Robert", "Rob")]
    res = s.put_objects(bobs)
    data = [r[0] for r in res]
    bob_id = res[0][2]
    edge = {"$type$": "VersionNodeEdge", "data": data[0], "depth": 0, "creationTime": 1}
    edge_h = core.object_hash(edge)
    change = {"$type$": "VersionNodeChange", "prev": edge_h, "data": data[1], "depth": 1,
              "creationTime": 2}
    change_h = core.object_hash(change)
    edge2 = {"$type$": "VersionNodeEdge", "data": data[2], "depth": 0, "creationTime": 3}
    edge2_h = core.object_hash(edge2)
    merge = {"$type$": "VersionNodeMerge", "nodes": {change_h, edge2_h}, "data": data[3],
             "depth": 2, "creationTime": 3}
    merge_h = core.object_hash(merge)
    s.write_batch([edge], [(bob_id, None, edge_h)])
    s.write_batch([change], [(bob_id, edge_h, change_h)])
    s.write_batch([edge2, merge], [(bob_id, change_h, merge_h)])
    return {"id": bob_id, "edge": edge_h, "change": change_h, "edge2": edge2_h,
            "merge": merge_h, "d0": data[0], "d1": data[1], "d2": data[2], "d3": data[3]}


# ---------------------------------------------------------------------------- missing


def test_missing_in_input_order_over_every_kind(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        h = _chat(s)
        clob, _ = s.put_clob("text")
        absent = [core.sha256_hex(str(i)) for i in range(3)]
        ask = [absent[2], h["msg"], h["alice_id"], absent[0], h["blob"], clob, absent[2],
               absent[1]]
        assert s.missing(ask) == [absent[2], absent[0], absent[2], absent[1]]
        assert s.missing([]) == []
        assert s.missing((h["msg"],)) == []


@pytest.mark.parametrize("bad", [["a" * 64 + "\n"], [H, None], [H.upper()]])
def test_missing_refuses_bad_hashes(tmp_path: Path, bad: list[Any]) -> None:
    with _store(tmp_path) as s:
        with pytest.raises(MicrodataError) as e:
            s.missing(bad)
        assert e.value.code == "LAMA-BADHASH"


def test_missing_needs_a_list(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        with pytest.raises(StoreError) as e:
            s.missing(H)
        assert e.value.code == "LAMA-ARG"


# ---------------------------------------------------------------------------- children


def test_children_post_order_dedup_and_id_objects(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        h = _chat(s)
        # ChatMessage: attachments.0 -> descriptor -> blob (leaf, first), then the descriptor
        # after its sub-walk; attachments.1 already seen; sender -> ID object of Alice (its ID
        # properties have no references), recorded after its (empty) walk. chum.md §5.3.
        assert s.children(h["msg"]) == [h["blob"], h["desc"], h["alice_id"]]
        # Access: object (the message subtree, then the message), person: Alice's ID (seen)
        assert s.children(h["access"]) == [h["blob"], h["desc"], h["alice_id"], h["msg"]]
        # the ID object of the Access (GET_ID_OBJECT_CHILDREN): only its ID property `object`
        assert s.children(h["access_id"]) == [h["blob"], h["desc"], h["alice_id"], h["msg"]]
        # the Person's versions are not children of its ID object
        assert s.children(h["alice_id"]) == []
        assert s.children(h["person"]) == []
        # a BLOB is a leaf
        assert s.children(h["blob"]) == []


def test_children_follow_version_nodes_down_to_the_first_version(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        v = _versions(s)
        # chum.md §5.3 note: a Change's children include its prev, that node's data, ...
        assert s.children(v["change"]) == [v["d0"], v["edge"], v["d1"]]
        # Merge: `nodes` (a set, in microdata order = sorted), then data
        first, second = sorted([v["change"], v["edge2"]])
        sub = {v["change"]: [v["d0"], v["edge"], v["d1"], v["change"]],
               v["edge2"]: [v["d2"], v["edge2"]]}
        assert s.children(v["merge"]) == sub[first] + sub[second] + [v["d3"]]


def test_children_of_unknown_or_dangling(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        with pytest.raises(NotFoundError) as e:
            s.children(H)
        assert e.value.code == "SB-READ2"
        # a reference to an object that is not stored fails the whole call (chum.md §4.3)
        msg = {"$type$": "ChatMessage", "text": "x", "sender": H}
        (m, _, _), = s.put_objects([msg])
        with pytest.raises(NotFoundError) as e:
            s.children(m)
        assert e.value.code == "SB-READ2"
        # a BLOB reference is a leaf: listed without being loaded
        desc = {"$type$": "BlobDescriptor", "data": H, "lastModified": 1, "name": "n",
                "size": 1, "type": "t"}
        (d, _, _), = s.put_objects([desc])
        assert s.children(d) == [H]
        with pytest.raises(MicrodataError):
            s.children("x")


def test_children_of_a_long_chain(tmp_path: Path) -> None:
    """No recursion limit: a 3000-node version chain."""
    with _store(tmp_path) as s:
        (p, _, pid), = s.put_objects([ALICE])
        prev = None
        nodes = []
        objs = []
        for i in range(3000):
            n: dict[str, Any] = {"$type$": "VersionNodeChange", "data": p, "depth": i,
                                 "creationTime": i}
            if prev is not None:
                n["prev"] = prev
            else:
                n = {"$type$": "VersionNodeEdge", "data": p, "depth": 0, "creationTime": 0}
            objs.append(n)
            prev = core.object_hash(n)
            nodes.append(prev)
        s.write_batch(objs, [(pid, None, prev)])
        kids = s.children(prev)
        assert kids == [p] + nodes[:-1]
        assert s.version_nodes(pid) == nodes[::-1]


# ---------------------------------------------------------------------------- version_nodes


def test_version_nodes_newest_first(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        assert s.version_nodes(H) == []
        v = _versions(s)
        first, second = sorted([v["change"], v["edge2"]])
        walk = {v["change"]: [v["change"], v["edge"]], v["edge2"]: [v["edge2"]]}
        assert s.version_nodes(v["id"]) == [v["merge"]] + walk[first] + walk[second]
        with pytest.raises(MicrodataError) as e:
            s.version_nodes(v["id"] + "\n")
        assert e.value.code == "LAMA-BADHASH"


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_does_not_see_later_writes(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        h = _chat(s)
        v = _versions(s)
        before = s.last_seq()
        with s.snapshot() as snap:
            bob2 = {"$type$": "Person", "email": "carol@example.com", "name": "Carol"}
            (c, _, c_id), = s.put_objects([bob2])
            blob, _ = s.put_blob(b"later")
            edge = {"$type$": "VersionNodeEdge", "data": c, "depth": 0, "creationTime": 9}
            s.write_batch([edge], [(c_id, None, core.object_hash(edge))])
            assert s.has(c) and s.get_head(c_id) is not None
            assert not snap.has(c) and snap.kind(c) is None and snap.get_head(c_id) is None
            assert snap.missing([c, blob, h["msg"]]) == [c, blob]
            with pytest.raises(NotFoundError):
                snap.get(c)
            with pytest.raises(NotFoundError):
                snap.read_blob(blob)
            assert snap.last_seq() == before < s.last_seq()
            assert snap.changes(before, 10) == []
            # what was there is readable
            assert snap.get_object(h["person"]) == ALICE
            assert snap.get(h["msg"]) == s.get(h["msg"])
            assert snap.kind(h["alice_id"]) == "id"
            assert snap.read_blob(h["blob"]) == b"picture bytes"
            assert snap.get_head(v["id"]) == v["merge"]
            assert snap.children(h["access"]) == s.children(h["access"])
            assert snap.version_nodes(v["id"]) == s.version_nodes(v["id"])
        assert snap.closed
        with pytest.raises(StoreError) as e:
            snap.has(c)
        assert e.value.code == "LAMA-CLOSED"
        snap.close()  # twice: harmless


def test_snapshot_reads_chunked_blobs_and_clobs_as_the_store_does(tmp_path: Path) -> None:
    big = bytes(range(256)) * (5 * 4096 + 3)  # > 5 MiB: stored in chunks
    text = "é" * (600 * 1024)  # a chunked CLOB
    with _store(tmp_path) as s:
        b, _ = s.put_blob(big)
        c, _ = s.put_clob(text)
        with s.snapshot() as snap:
            assert snap.read_blob(b) == s.read_blob(b) == big
            assert snap.read_blob(c) == text.encode()


def test_snapshot_from_another_thread_and_after_store_close(tmp_path: Path) -> None:
    s = _store(tmp_path)
    (p, _, _), = s.put_objects([ALICE])
    snap = s.snapshot()
    s.put_blob(b"after")
    s.close()
    out: list[Any] = []

    def reader() -> None:
        out.append((snap.get_object(p), snap.has(core.sha256_hex(b"after"))))

    t = threading.Thread(target=reader)
    t.start()
    t.join()
    assert out == [(ALICE, False)]
    snap.close()
    # the environment is released: the store opens again normally
    with _store(tmp_path) as s2:
        assert s2.has(core.sha256_hex(b"after"))


def test_many_snapshots_in_turn(tmp_path: Path) -> None:
    """Closed snapshots give their LMDB reader slot back (the default table has 126)."""
    with _store(tmp_path) as s:
        for _ in range(300):
            with s.snapshot() as snap:
                snap.last_seq()


def test_snapshot_of_a_closed_store(tmp_path: Path) -> None:
    s = _store(tmp_path)
    s.close()
    with pytest.raises(StoreError) as e:
        s.snapshot()
    assert e.value.code == "LAMA-CLOSED"


# ---------------------------------------------------------------------------- event feed


def test_feed_records_every_new_entry_in_commit_order(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        assert s.last_seq() == 0 and s.changes(0, 10) == []
        (p, _, pid), = s.put_objects([ALICE])
        assert s.changes(0, 10) == [(1, p, "object"), (2, pid, "id")]
        s.put_objects([ALICE])  # exists: no event
        blob, _ = s.put_blob(b"b" * 10)
        big, _ = s.put_blob(b"x" * (1 << 20) + b"y")  # chunked: still "blob"
        clob, _ = s.put_clob("c")
        w = s.blob_writer(clob=True)
        w.write(b"streamed")
        wc, _ = w.finish()
        s.put_blob(b"b" * 10)
        msg = {"$type$": "ChatMessage", "text": "m", "sender": pid}
        md = core.serialize(msg)
        (m, _, _), = s.put_microdata([(md, None)])
        edge = {"$type$": "VersionNodeEdge", "data": p, "depth": 0, "creationTime": 1}
        e = core.object_hash(edge)
        s.write_batch([edge], [(pid, None, e)])
        s.write_batch([], [(pid, e, e)])  # head unchanged: no event
        want = [(1, p, "object"), (2, pid, "id"), (3, blob, "blob"), (4, big, "blob"),
                (5, clob, "clob"), (6, wc, "clob"), (7, m, "object"), (8, e, "object"),
                (9, pid, "head")]
        assert s.changes(0, 100) == want
        assert s.last_seq() == 9
        assert s.changes(3, 2) == want[3:5]
        assert s.changes(9, 5) == [] and s.changes(2**63, 5) == []
        assert s.changes(0, 0) == []
        # a failed batch writes no event
        with pytest.raises(LamaError):
            s.write_batch([{"$type$": "Person", "email": "z@z", "name": "Z"}], [(pid, None, e)])
        assert s.last_seq() == 9
    with _store(tmp_path) as s:  # persisted
        assert s.changes(0, 100) == want


def test_feed_batch_order_is_input_order_object_then_id(tmp_path: Path) -> None:
    objs = [{"$type$": "Person", "email": f"p{i}@x", "name": str(i)} for i in range(20)]
    with _store(tmp_path) as s:
        res = s.put_objects(objs + objs[:3])
        want = []
        for h, _, i in res[:20]:
            want += [(h, "object"), (i, "id")]
        assert [(h, k) for _, h, k in s.changes(0, 1000)] == want


@pytest.mark.parametrize("since,limit", [(-1, 1), (0, -1), (True, 1), (0, 1.5), ("0", 1)])
def test_changes_argument_errors(tmp_path: Path, since: Any, limit: Any) -> None:
    with _store(tmp_path) as s:
        with pytest.raises(StoreError) as e:
            s.changes(since, limit)
        assert e.value.code == "LAMA-ARG"


def test_subscription_sees_only_later_events(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        (p, _, pid), = s.put_objects([ALICE])
        with s.subscribe() as sub:
            assert sub.position == 2
            t0 = time.monotonic()
            assert sub.wait(0.2) == []
            assert 0.15 < time.monotonic() - t0 < 5
            b, _ = s.put_blob(b"1")
            c, _ = s.put_blob(b"2")
            assert sub.wait(0) == [(3, b, "blob"), (4, c, "blob")]
            d, _ = s.put_blob(b"3")
            e_, _ = s.put_blob(b"4")
            assert sub.wait(1, 1) == [(5, d, "blob")]
            assert sub.wait(1) == [(6, e_, "blob")]
            with pytest.raises(StoreError) as e:
                sub.wait(-1)
            assert e.value.code == "LAMA-ARG"
        assert sub.closed
        with pytest.raises(StoreError) as e:
            sub.wait(0)
        assert e.value.code == "LAMA-CLOSED"


def test_subscription_is_woken_by_another_handle_and_releases_the_gil(tmp_path: Path) -> None:
    s = _store(tmp_path)
    other = _store(tmp_path)  # a second handle on the same directory
    sub = s.subscribe()
    got: list[Any] = []
    ticks = [0]
    stop = threading.Event()

    def waiter() -> None:
        got.append(sub.wait(30))
        stop.set()

    def ticker() -> None:  # runs only if the waiter does not hold the GIL
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    tw = threading.Thread(target=waiter)
    tt = threading.Thread(target=ticker)
    tw.start()
    tt.start()
    time.sleep(0.3)
    assert tw.is_alive()
    t0 = time.monotonic()
    h, _ = other.put_blob(b"wake up")
    tw.join(10)
    tt.join(10)
    assert not tw.is_alive()
    assert time.monotonic() - t0 < 2  # woken by the commit, not by the 30 s timeout
    assert got == [[(1, h, "blob")]]
    assert ticks[0] > 20
    sub.close()
    other.close()
    s.close()


def test_subscription_keeps_the_store_open(tmp_path: Path) -> None:
    s = _store(tmp_path)
    sub = s.subscribe()
    s.close()
    with _store(tmp_path) as s2:
        h, _ = s2.put_blob(b"x")
    assert sub.wait(1) == [(1, h, "blob")]
    sub.close()


def _strip_feed(path: Path) -> None:
    """Turn a closed store into one written before the event feed existed."""
    env = lmdb.open(str(path), max_dbs=16, subdir=True)
    with env.begin(write=True) as txn:
        events = env.open_db(b"events", txn=txn)
        txn.drop(events, delete=True)
        assert txn.delete(b"events", db=env.open_db(b"meta", txn=txn))
    env.close()


def test_store_from_before_the_feed_is_upgraded_on_open(tmp_path: Path) -> None:
    with _store(tmp_path) as s:
        h = _chat(s)
        v = _versions(s)
        hashes = s.hashes()
    _strip_feed(tmp_path / "s")
    with _store(tmp_path) as s:
        # every stored entry in key order, then every head in key order
        events = s.changes(0, 1000)
        assert [e[0] for e in events] == list(range(1, len(hashes) + 2))
        assert [e[1] for e in events] == hashes + [v["id"]]
        kinds = {e[1]: e[2] for e in events[:-1]}
        assert kinds[h["blob"]] == "blob" and kinds[h["alice_id"]] == "id"
        assert kinds[h["msg"]] == "object" and events[-1][2] == "head"
        b, _ = s.put_blob(b"new")
        assert s.changes(len(hashes) + 1, 10) == [(len(hashes) + 2, b, "blob")]
        assert s.verify() == []
    with _store(tmp_path) as s:  # upgraded once only
        assert s.last_seq() == len(hashes) + 2


# ---------------------------------------------------------------------------- cross-core


def _ops(c: ModuleType, path: Path) -> list[Any]:
    """The same sequence of writes and reads through a core; the answers."""
    s = c.Store(str(path))
    h = _chat(s)
    v = _versions(s)
    out = [s.changes(0, 1000), s.last_seq(), s.children(h["access"]), s.children(v["merge"]),
           s.version_nodes(v["id"]), s.missing([h["msg"], H, v["edge2"]])]
    s.close()
    return out


@pytest.mark.cross_core
def test_both_cores_give_the_same_answers(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType
) -> None:
    assert _ops(rust_core, tmp_path / "r") == _ops(pure_core, tmp_path / "p")


@pytest.mark.cross_core
@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_feed_written_by_one_core_is_continued_by_the_other(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    w = cores[writer].Store(str(tmp_path / "s"))
    h = _chat(w)
    events = w.changes(0, 1000)
    w.close()
    r = cores[reader].Store(str(tmp_path / "s"))
    assert r.changes(0, 1000) == events
    assert r.children(h["access"]) == [h["blob"], h["desc"], h["alice_id"], h["msg"]]
    b, _ = r.put_blob(b"from the reader")
    assert r.changes(events[-1][0], 10) == [(events[-1][0] + 1, b, "blob")]
    r.close()
    w = cores[writer].Store(str(tmp_path / "s"))
    assert w.changes(0, 1000) == events + [(events[-1][0] + 1, b, "blob")]
    assert w.verify() == []
    w.close()


@pytest.mark.cross_core
@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_upgrade_by_one_core_matches_the_other(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    for name in ("a", "b"):
        w = cores[writer].Store(str(tmp_path / name))
        _chat(w)
        _versions(w)
        w.close()
        _strip_feed(tmp_path / name)
    a = cores[writer].Store(str(tmp_path / "a"))
    b = cores[reader].Store(str(tmp_path / "b"))
    assert a.changes(0, 1000) == b.changes(0, 1000) != []
    a.close()
    b.close()
