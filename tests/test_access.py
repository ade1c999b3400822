"""Access rights and the store's access index (objects.md §6, chum.md §4.2/§5.1,
docs/chum-session.md §1, docs/store-format.md "access index").

Runs against the core selected by ``LAMA_CORE``; the tests marked ``cross_core`` compare the two
cores on one store.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import lmdb
import pytest

from lama import access
from lama._core import core
from lama.errors import InvalidArgumentError, LamaError, StoreError
from lama.objects import versions

ALICE = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"  # Person ID alice
BOB = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a"  # Person ID bob
CAROL = "c" * 64
DAVE = "d" * 64
SHA_X = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
EVERYONE = "bf06aaea8080afd76bfabefc631f53c55006e96b020cd1b96f7a01215d2fc06c"
FRIENDS = "81eac537269d173a6ef5581fefb78cc10729d778f756b9e8977fe49097510031"
T0 = 1_700_000_000_000

INDEX_DBS = (b"agrants", b"amembers", b"anodes", b"aroots", b"arefs")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = core.Store(str(tmp_path / "store"))
    yield s
    s.close()


def keys_obj(n: int) -> dict[str, Any]:
    """An unversioned core object (Keys), distinct per ``n``."""
    return {"$type$": "Keys", "owner": ALICE, "publicKey": f"{n:064x}", "publicSignKey": "b" * 64}


def put_keys(store: Any, n: int) -> str:
    return str(store.put_objects([keys_obj(n)])[0][0])


def person(store: Any, email: str, name: str | None = None, ts: int = T0) -> versions.VersionResult:
    obj: dict[str, Any] = {"$type$": "Person", "email": email}
    if name is not None:
        obj["name"] = name
    return versions.store_versioned(store, obj, timestamp_ms=ts)


def hashes(roots: list[Any]) -> list[str]:
    return [r[1] for r in roots]


def non_merge_nodes_oldest_first(store: Any, id_hash: str) -> list[str]:
    nodes = [n for n in store.version_nodes(id_hash)
             if core.type_of(store.get(n))[0] != "VersionNodeMerge"]
    return list(reversed(nodes))


# -- reference vectors (objects.md Appendix B) --------------------------------------------------


def test_reference_hashes_of_access_idaccess_and_groups() -> None:
    acc = {"$type$": "Access", "object": SHA_X, "person": [BOB], "group": []}
    assert core.object_hash(acc) == "06af49e749c3a3b23f95a14a18e258b492db10f44359fecfb5f60e293f8facc6"
    ida = {"$type$": "IdAccess", "id": ALICE, "person": [BOB], "group": [EVERYONE]}
    assert core.object_hash(ida) == "f477fcddf9e95359843ade463196ee6a4ce053cdaf7d3ca237418ffac19c04ae"
    assert access.grant_id(id=ALICE) == "1e187d50206f267c990ffd90a939c75002cfb8932aa67b3f9cff62a46b8c950e"
    assert core.id_hash(ida) == access.grant_id(id=ALICE)
    assert access.group_id("everyone") == EVERYONE
    assert access.group_id("friends") == FRIENDS


def test_grant_writes_the_reference_objects(store: Any) -> None:
    p = person(store, "bob@example.com")
    r = access.grant(store, id=p.id_hash, persons=[BOB, BOB], groups=[EVERYONE])
    obj = store.get_object(r.hash)
    assert obj == {"$type$": "IdAccess", "id": p.id_hash, "person": [BOB], "group": [EVERYONE]}
    assert r.id_hash == access.grant_id(id=p.id_hash)


# -- direct grants ------------------------------------------------------------------------------


def test_access_gives_unversioned_and_versioned_roots(store: Any) -> None:
    k = put_keys(store, 1)
    p = person(store, "alice@example.com", "Alice")
    assert store.accessible_roots(BOB) == (store.last_seq(), [])
    access.grant(store, object=k, persons=[BOB])
    access.grant(store, object=p.hash, persons=[BOB])
    mark, roots = store.accessible_roots(BOB)
    assert mark == store.last_seq()
    assert roots == [("unversioned", k, None, "Keys"), ("versioned", p.hash, p.id_hash, "Person")]
    # the Python API wraps the same rows
    m2, roots2 = access.accessible_roots(store, BOB)
    assert m2 == mark and roots2 == roots and roots2[1].id_hash == p.id_hash
    # the snapshot sees the same, and not what is granted after it
    with store.snapshot() as snap:
        access.grant(store, object=put_keys(store, 2), persons=[BOB])
        assert snap.accessible_roots(BOB) == (mark, roots)
    assert len(store.accessible_roots(BOB)[1]) == 3
    assert store.verify() == []


def test_two_persons_see_different_roots(store: Any) -> None:
    k1, k2, k3 = (put_keys(store, i) for i in (1, 2, 3))
    access.grant(store, object=k1, persons=[BOB])
    access.grant(store, object=k2, persons=[CAROL])
    access.grant(store, object=k3, persons=[BOB, CAROL])
    assert hashes(store.accessible_roots(BOB)[1]) == [k1, k3]
    assert hashes(store.accessible_roots(CAROL)[1]) == [k2, k3]
    assert store.accessible_roots(DAVE)[1] == []


def test_idaccess_gives_id_and_version_nodes_oldest_first(store: Any) -> None:
    p1 = person(store, "alice@example.com", "A", T0)
    p2 = person(store, "alice@example.com", "B", T0 + 1)
    access.grant(store, id=p1.id_hash, persons=[BOB])
    mark, roots = store.accessible_roots(BOB)
    assert roots == [
        ("id", p1.id_hash, None, "Person"),
        ("version_node", p1.node_hash, p1.id_hash, "Person"),
        ("version_node", p2.node_hash, p1.id_hash, "Person"),
    ]
    # a later version becomes accessible at the sequence of its write, nothing else is new
    p3 = person(store, "alice@example.com", "C", T0 + 2)
    mark2, delta = store.accessible_roots(BOB, mark)
    assert delta == [("version_node", p3.node_hash, p1.id_hash, "Person")]
    assert store.accessible_roots(BOB, mark2) == (mark2, [])
    assert hashes(store.accessible_roots(BOB)[1])[1:] == non_merge_nodes_oldest_first(store, p1.id_hash)
    # exactly the sequence number of the head event of that write (docs/store-format.md)
    (h_seq,) = [seq for seq, h, kind in store.changes(mark, 100) if kind == "head" and h == p1.id_hash]
    assert hashes(store.accessible_roots(BOB, h_seq - 1)[1]) == [p3.node_hash]
    assert store.accessible_roots(BOB, h_seq)[1] == []
    assert store.verify() == []


def test_idaccess_on_an_id_without_versions_then_versions_arrive(store: Any) -> None:
    # the ID object alone (as an importer stores it before any version node)
    (_, _, pid), = store.put_objects([{"$type$": "Person", "email": "eve@example.com"}])
    access.grant(store, id=pid, persons=[BOB])
    mark, roots = store.accessible_roots(BOB)
    assert roots == [("id", pid, None, "Person")]
    v = person(store, "eve@example.com", "Eve")
    assert store.accessible_roots(BOB, mark)[1] == [("version_node", v.node_hash, pid, "Person")]


def test_merge_nodes_are_not_roots(store: Any) -> None:
    base = person(store, "alice@example.com", "A", T0)
    access.grant(store, id=base.id_hash, persons=[BOB])
    mark = store.last_seq()
    # a concurrent (remote) version is merged: an Edge for it and a Merge node
    merged = versions.store_versioned(store, {"$type$": "Person", "email": "alice@example.com", "name": "Z"},
                                      mode="merge", timestamp_ms=T0 + 5)
    head_type = core.type_of(store.get(store.get_head(base.id_hash)))[0]
    assert head_type == "VersionNodeMerge"
    delta = store.accessible_roots(BOB, mark)[1]
    assert [r[0] for r in delta] == ["version_node"]
    assert delta[0][1] == merged.node_hash
    all_nodes = hashes(store.accessible_roots(BOB)[1])[1:]
    assert all_nodes == non_merge_nodes_oldest_first(store, base.id_hash)
    assert store.get_head(base.id_hash) not in all_nodes
    # a change on top of the merge node: only the new node is new
    mark = store.last_seq()
    nxt = person(store, "alice@example.com", "after", T0 + 9)
    assert hashes(store.accessible_roots(BOB, mark)[1]) == [nxt.node_hash]
    assert store.verify() == []


# -- modes, revocation ---------------------------------------------------------------------------


def test_add_and_set_modes(store: Any) -> None:
    k = put_keys(store, 1)
    access.grant(store, object=k, persons=[BOB])
    access.grant(store, object=k, persons=[CAROL], groups=[FRIENDS])
    assert access.grants(store, object=k) == ([BOB, CAROL], [FRIENDS])
    r = access.grant(store, object=k, persons=[CAROL, BOB], groups=[FRIENDS])  # nothing new
    assert r.status == "exists"
    access.grant(store, object=k, persons=[DAVE], mode="set")
    assert access.grants(store, object=k) == ([DAVE], [])
    assert store.accessible_roots(BOB)[1] == [] and hashes(store.accessible_roots(DAVE)[1]) == [k]
    # set with empty lists revokes everything
    access.grant(store, object=k, mode="set")
    assert access.grants(store, object=k) == ([], [])
    assert store.accessible_roots(DAVE)[1] == []
    assert store.verify() == []
    with pytest.raises(InvalidArgumentError):
        access.grant(store, object=k, persons=[BOB], mode="replace")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        access.grant(store, object=k, id=k, persons=[BOB])
    with pytest.raises(InvalidArgumentError):
        access.grant(store, persons=[BOB])
    with pytest.raises(LamaError):
        access.grant(store, object=k, persons=["not a hash"])


def test_revoke(store: Any) -> None:
    k = put_keys(store, 1)
    p = person(store, "alice@example.com", "A")
    assert access.revoke(store, object=k) is None
    access.grant(store, object=k, persons=[BOB, CAROL])
    access.grant(store, id=p.id_hash, persons=[BOB, CAROL])
    access.revoke(store, object=k, persons=[BOB])
    assert k not in hashes(store.accessible_roots(BOB)[1])
    assert k in hashes(store.accessible_roots(CAROL)[1])
    access.revoke(store, id=p.id_hash)  # everybody
    assert store.accessible_roots(BOB)[1] == []
    assert hashes(store.accessible_roots(CAROL)[1]) == [k]
    # a version written after the IdAccess was revoked reaches nobody
    person(store, "alice@example.com", "B", T0 + 1)
    assert hashes(store.accessible_roots(CAROL)[1]) == [k]
    # granting again gives every version node, at the new grant's sequence
    mark = store.last_seq()
    access.grant(store, id=p.id_hash, persons=[BOB])
    delta = store.accessible_roots(BOB, mark)[1]
    assert hashes(delta) == [p.id_hash, *non_merge_nodes_oldest_first(store, p.id_hash)]
    assert store.verify() == []


def test_a_root_granted_twice_stays_until_both_grants_are_revoked(store: Any) -> None:
    k = put_keys(store, 1)
    access.set_group(store, "friends", [BOB])
    access.grant(store, object=k, persons=[BOB], groups=[FRIENDS])
    assert hashes(store.accessible_roots(BOB)[1]) == [k]
    access.revoke(store, object=k, persons=[BOB])
    assert hashes(store.accessible_roots(BOB)[1]) == [k]  # still through the group
    access.revoke(store, object=k, groups=[FRIENDS])
    assert store.accessible_roots(BOB)[1] == []
    # the same version node granted by an Access on the node and by the IdAccess of its ID
    p = person(store, "alice@example.com", "A")
    access.grant(store, object=p.node_hash, persons=[BOB])
    access.grant(store, id=p.id_hash, persons=[BOB])
    assert hashes(store.accessible_roots(BOB)[1]) == [p.node_hash, p.id_hash]
    access.revoke(store, id=p.id_hash)
    assert hashes(store.accessible_roots(BOB)[1]) == [p.node_hash]
    access.revoke(store, object=p.node_hash)
    assert store.accessible_roots(BOB)[1] == []
    assert store.verify() == []


# -- groups --------------------------------------------------------------------------------------


def test_group_grants_and_membership_changes(store: Any) -> None:
    k1, k2 = put_keys(store, 1), put_keys(store, 2)
    r = access.set_group(store, "friends", [BOB, BOB])
    assert r.id_hash == FRIENDS and access.group_members(store, "friends") == [BOB]
    access.grant(store, object=k1, groups=[FRIENDS])
    assert hashes(store.accessible_roots(BOB)[1]) == [k1]
    assert store.accessible_roots(CAROL)[1] == []
    # Carol joins later: she gets the group's roots at the sequence of joining
    mark = store.last_seq()
    access.set_group(store, "friends", [BOB, CAROL])
    assert hashes(store.accessible_roots(CAROL, mark)[1]) == [k1]
    assert store.accessible_roots(BOB, mark)[1] == []  # nothing new for Bob
    # a grant to the group after that reaches both
    mark = store.last_seq()
    access.grant(store, object=k2, groups=[FRIENDS])
    assert hashes(store.accessible_roots(BOB, mark)[1]) == [k2]
    assert hashes(store.accessible_roots(CAROL, mark)[1]) == [k2]
    # Bob leaves: he loses the group's roots
    access.set_group(store, "friends", [CAROL])
    assert store.accessible_roots(BOB)[1] == []
    assert hashes(store.accessible_roots(CAROL)[1]) == [k1, k2]
    assert store.verify() == []


def test_group_idaccess_new_versions_reach_members(store: Any) -> None:
    access.set_group(store, "everyone", [BOB, CAROL])
    p = person(store, "alice@example.com", "A")
    access.grant(store, id=p.id_hash, groups=[EVERYONE])
    mark = store.last_seq()
    p2 = person(store, "alice@example.com", "B", T0 + 1)
    for who in (BOB, CAROL):
        assert store.accessible_roots(who, mark)[1] == [("version_node", p2.node_hash, p.id_hash, "Person")]
    assert store.verify() == []


def test_since_deltas_and_the_mark(store: Any) -> None:
    assert store.accessible_roots(BOB) == (0, [])
    k1 = put_keys(store, 1)
    access.grant(store, object=k1, persons=[BOB])
    m1, roots = store.accessible_roots(BOB)
    assert m1 == store.last_seq() and hashes(roots) == [k1]
    assert store.accessible_roots(BOB, m1) == (m1, [])
    k2 = put_keys(store, 2)  # a write that grants nothing moves the mark only
    m2, delta = store.accessible_roots(BOB, m1)
    assert m2 > m1 and delta == []
    access.grant(store, object=k2, persons=[BOB])
    m3, delta = store.accessible_roots(BOB, m2)
    assert hashes(delta) == [k2]
    # a root revoked and granted again is new again
    access.revoke(store, object=k1)
    access.grant(store, object=k1, persons=[BOB])
    assert hashes(store.accessible_roots(BOB, m3)[1]) == [k1]
    for bad in (-1, True, "1", 1.0):
        with pytest.raises(StoreError) as e:
            store.accessible_roots(BOB, bad)
        assert e.value.code == "LAMA-ARG"
    with pytest.raises(LamaError) as e2:
        store.accessible_roots("B" * 64)
    assert e2.value.code == "LAMA-BADHASH"


def test_bad_grants_are_refused_and_write_nothing(store: Any) -> None:
    missing = "e" * 64
    before = store.last_seq()
    with pytest.raises(StoreError) as e:
        access.grant(store, object=missing, persons=[BOB])
    assert e.value.code == "LAMA-GRANT"
    clob, _ = store.put_clob("x")
    with pytest.raises(StoreError) as e:
        access.grant(store, object=clob, persons=[BOB])  # not a ONE object
    assert e.value.code == "LAMA-GRANT"
    k = put_keys(store, 1)
    with pytest.raises(StoreError) as e:
        access.grant(store, id=k, persons=[BOB])  # IdAccess on an object hash
    assert e.value.code == "LAMA-GRANT"
    assert access.grants(store, object=missing) == ([], [])
    assert store.accessible_roots(BOB)[1] == []
    assert store.get_head(access.grant_id(object=missing)) is None
    assert store.last_seq() == before + 2  # the CLOB and the Keys, no grant
    assert store.verify() == []


def test_peer_marks_persist(tmp_path: Path) -> None:
    s = core.Store(str(tmp_path / "s"))
    assert s.peer_mark(f"{BOB}/{CAROL}") == 0
    s.set_peer_mark(f"{BOB}/{CAROL}", 42)
    s.set_peer_mark("other", 7)
    s.set_peer_mark("other", 3)
    bad_peers: list[Any] = ["", "x" * 401, 5, "\ud800", None]
    for bad_peer in bad_peers:
        with pytest.raises(StoreError) as e:
            s.peer_mark(bad_peer)
        assert e.value.code == "LAMA-ARG"
    with pytest.raises(StoreError):
        s.set_peer_mark("p", -1)
    s.close()
    s = core.Store(str(tmp_path / "s"))
    assert s.peer_mark(f"{BOB}/{CAROL}") == 42 and s.peer_mark("other") == 3
    assert s.verify() == []
    s.close()


# -- upgrade and verify ----------------------------------------------------------------------------


def _fill(store: Any) -> dict[str, str]:
    """Grants of every kind: direct Access, IdAccess with history, group grants."""
    k1, k2 = put_keys(store, 1), put_keys(store, 2)
    p = person(store, "alice@example.com", "A", T0)
    person(store, "alice@example.com", "B", T0 + 1)
    access.set_group(store, "friends", [BOB, CAROL])
    access.grant(store, object=k1, persons=[BOB])
    access.grant(store, object=k2, groups=[FRIENDS])
    access.grant(store, id=p.id_hash, persons=[CAROL], groups=[FRIENDS])
    person(store, "alice@example.com", "C", T0 + 2)
    return {"k1": k1, "k2": k2, "pid": p.id_hash}


def _strip_index(path: Path) -> None:
    """Make the store look like one written before the access index existed."""
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        for name in INDEX_DBS:
            txn.drop(env.open_db(name, txn=txn), delete=True)
        assert txn.delete(b"access", db=env.open_db(b"meta", txn=txn))
    env.close()


def _raw_delete(path: Path, db: bytes, first: bool = True) -> bytes:
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        d = env.open_db(db, txn=txn)
        cur = txn.cursor(db=d)
        assert cur.first() if first else cur.last()
        k = bytes(cur.key())
        cur.delete()
    env.close()
    return k


def _as_sets(roots: list[Any]) -> set[tuple[Any, ...]]:
    return {tuple(r) for r in roots}


def test_store_without_the_index_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    _fill(s)
    want = {who: s.accessible_roots(who)[1] for who in (BOB, CAROL, DAVE)}
    last = s.last_seq()
    s.close()
    _strip_index(path)
    s = core.Store(str(path))
    try:
        assert s.verify() == []
        assert s.last_seq() == last
        for who, roots in want.items():
            mark, got = s.accessible_roots(who)
            assert _as_sets(got) == _as_sets(roots)
            # everything became accessible at the upgrade, i.e. at the last sequence number
            assert s.accessible_roots(who, last - 1)[1] == got
            assert s.accessible_roots(who, last)[1] == []
        # the upgraded index keeps working
        p2 = person(s, "alice@example.com", "D", T0 + 3)
        assert hashes(s.accessible_roots(CAROL, last)[1]) == [p2.node_hash]
        assert s.verify() == []
    finally:
        s.close()


def test_verify_finds_a_damaged_index(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    _fill(s)
    s.close()
    k = _raw_delete(path, b"aroots")
    s = core.Store(str(path))
    problems = s.verify()
    s.close()
    assert problems and all(p.startswith(("arefs/", "aroots/")) for p in problems), problems
    assert any(p.startswith(f"arefs/{k[:32].hex()}") and p.endswith(": no aroots entry")
               for p in problems), problems
    k = _raw_delete(path, b"amembers")
    s = core.Store(str(path))
    problems = s.verify()
    s.close()
    assert f"amembers/{k.hex()}: missing" in problems
    k = _raw_delete(path, b"agrants", first=False)
    s = core.Store(str(path))
    problems = s.verify()
    s.close()
    assert f"agrants/{k.hex()}: missing for the current grant" in problems


# -- both cores ------------------------------------------------------------------------------------


@pytest.mark.cross_core
@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_a_store_written_by_one_core_gives_the_same_roots_in_the_other(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    path = tmp_path / "s"
    w = cores[writer].Store(str(path))
    _fill(w)
    want = {who: [w.accessible_roots(who, since) for since in (0, 5, 15)] for who in (BOB, CAROL, DAVE)}
    w.close()
    r = cores[reader].Store(str(path))
    try:
        assert r.verify() == []
        for who, answers in want.items():
            assert [r.accessible_roots(who, since) for since in (0, 5, 15)] == answers
        # the reader keeps the index the writer's way
        access.revoke(r, object=put_keys(r, 1), persons=[BOB])
        p = person(r, "alice@example.com", "E", T0 + 4)
        assert p.node_hash in hashes(r.accessible_roots(CAROL)[1])
        assert r.verify() == []
    finally:
        r.close()


@pytest.mark.cross_core
def test_both_cores_build_the_same_index_bytes(tmp_path: Path, rust_core: ModuleType,
                                               pure_core: ModuleType,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "now_ms", lambda: T0 + 100)
    dumps = []
    for name, c in (("rust", rust_core), ("pure", pure_core)):
        path = tmp_path / name
        s = c.Store(str(path))
        # fixed timestamps everywhere, so both stores hold the same objects
        _fill(s)
        s.close()
        env = lmdb.open(str(path), max_dbs=16)
        with env.begin() as txn:
            dumps.append({db: list(txn.cursor(db=env.open_db(db, txn=txn))) for db in INDEX_DBS})
        env.close()
    assert dumps[0] == dumps[1]


@pytest.mark.cross_core
def test_both_cores_report_the_same_index_problems(tmp_path: Path, rust_core: ModuleType,
                                                   pure_core: ModuleType) -> None:
    path = tmp_path / "s"
    s = pure_core.Store(str(path))
    _fill(s)
    s.close()
    _raw_delete(path, b"aroots")
    _raw_delete(path, b"anodes", first=False)
    _raw_delete(path, b"amembers")
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"\x01" * 32, b"A" + b"\x02" * 64, db=env.open_db(b"agrants", txn=txn))
        txn.put(b"x", b"short", db=env.open_db(b"peers", txn=txn))
    env.close()
    reports = []
    for c in (rust_core, pure_core):
        s = c.Store(str(path))
        reports.append(s.verify())
        s.close()
    assert reports[0] == reports[1]
    assert len(reports[0]) >= 5


def test_concurrent_add_grants_all_get_in(store: Any) -> None:
    import threading

    k = put_keys(store, 1)
    people = [f"{i:064x}" for i in range(1, 17)]
    threads = [threading.Thread(target=access.grant, args=(store,), kwargs={"object": k, "persons": [p]})
               for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(access.grants(store, object=k)[0]) == people
    assert all(hashes(store.accessible_roots(p)[1]) == [k] for p in people)
    assert store.verify() == []
