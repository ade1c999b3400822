"""The layout of the access index in store format 2 (docs/store-format.md "access index",
"Upgrade from lama-store-1"; issue 10): a head move of a granted ID writes its nodes once per ID
(`anodes`, `aseq`), nothing per principal; version-node roots are derived at read time from
`aids` (the IDs granted to a principal) and `aseq`, in the order the per-principal roots had.

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
from lama.objects import versions

BOB = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a"
CAROL = "c" * 64
DAVE = "d" * 64
EVERYONE = "bf06aaea8080afd76bfabefc631f53c55006e96b020cd1b96f7a01215d2fc06c"
T0 = 1_700_000_000_000
INDEX_DBS = (b"agrants", b"amembers", b"anodes", b"aroots", b"arefs", b"aids", b"aseq")


def keys(store: Any, n: int) -> str:
    obj = {"$type$": "Keys", "owner": BOB, "publicKey": f"{n:064x}", "publicSignKey": "b" * 64}
    return str(store.put_objects([obj])[0][0])


def version(store: Any, name: str, ts: int, email: str = "alice@example.com") -> versions.VersionResult:
    return versions.store_versioned(store, {"$type$": "Person", "email": email, "name": name}, timestamp_ms=ts)


def hashes(roots: list[Any]) -> list[str]:
    return [r[1] for r in roots]


def dump(path: Path, dbs: tuple[bytes, ...] = INDEX_DBS) -> dict[bytes, list[tuple[bytes, bytes]]]:
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return {db: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=env.open_db(db, txn=txn))]
                    for db in dbs}
    finally:
        env.close()


def test_a_head_move_of_a_granted_id_writes_nothing_per_principal(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    p1 = version(s, "A", T0)
    access.set_group(s, "everyone", [DAVE])
    access.grant(s, id=p1.id_hash, persons=[BOB, CAROL], groups=[EVERYONE])
    s.close()
    before = dump(path)
    s = core.Store(str(path))
    p2 = version(s, "B", T0 + 1)
    (seq,) = [q for q, h, kind in s.changes(s.last_seq() - 1, 10) if kind == "head"]
    s.close()
    after = dump(path)
    # the per-principal tables are untouched by the head move
    for db in (b"agrants", b"amembers", b"aroots", b"arefs", b"aids"):
        assert after[db] == before[db], db
    x, n = bytes.fromhex(p1.id_hash), bytes.fromhex(p2.node_hash)
    pos = seq.to_bytes(8, "big") + (0).to_bytes(4, "big")
    assert set(after[b"anodes"]) - set(before[b"anodes"]) == {(x + n, pos + b"N")}
    assert set(after[b"aseq"]) - set(before[b"aseq"]) == {(x + pos, n)}
    # aids: one entry per principal granted the ID, pointing at its `i` root in aroots
    aroots = dict(after[b"aroots"])
    for k, v in after[b"aids"]:
        assert k[32:] == x and aroots[k[:32] + v][:33] == x + b"i"
    assert sorted(k[:32].hex() for k, _ in after[b"aids"]) == sorted([BOB, CAROL, EVERYONE])
    # no version-node root is stored per principal
    assert all(v[32:33] != b"n" for _, v in after[b"aroots"])
    s = core.Store(str(path))
    try:
        for who in (BOB, CAROL, DAVE):
            assert s.accessible_roots(who, seq - 1)[1] == [("version_node", p2.node_hash, p1.id_hash, "Person")]
        assert s.verify() == []
    finally:
        s.close()


def test_node_roots_keep_the_order_of_grants_and_head_moves(tmp_path: Path) -> None:
    """Version nodes indexed before a grant count from the grant, right after its `i` root;
    later ones from their own head move, after the roots that move gave directly."""
    s = core.Store(str(tmp_path / "s"))
    try:
        k1, k2 = keys(s, 1), keys(s, 2)
        a1, a2 = version(s, "A1", T0), version(s, "A2", T0 + 1)
        b1 = version(s, "B1", T0 + 2, "bob@example.com")
        access.grant(s, object=k1, persons=[BOB])
        access.grant(s, id=a1.id_hash, persons=[BOB])
        s_x = s.last_seq()  # the head event of the IdAccess
        a3 = version(s, "A3", T0 + 3)
        s_y = s.last_seq()
        access.grant(s, id=b1.id_hash, persons=[BOB])
        access.grant(s, object=k2, persons=[BOB])
        b2 = version(s, "B2", T0 + 4, "bob@example.com")
        a4 = version(s, "A4", T0 + 5)
        x, y = a1.id_hash, b1.id_hash
        full = [k1, x, a1.node_hash, a2.node_hash, a3.node_hash, y, b1.node_hash, k2,
                b2.node_hash, a4.node_hash]
        assert hashes(s.accessible_roots(BOB)[1]) == full
        assert hashes(s.accessible_roots(BOB, s_x - 1)[1]) == full[1:]
        assert hashes(s.accessible_roots(BOB, s_x)[1]) == full[4:]
        assert hashes(s.accessible_roots(BOB, s_y)[1]) == full[5:]
        kinds = {r[1]: r for r in s.accessible_roots(BOB)[1]}
        assert kinds[b2.node_hash] == ("version_node", b2.node_hash, y, "Person")
        assert kinds[y] == ("id", y, None, "Person")
        # a group member joining later gets the group's roots from the joining, in their order
        access.set_group(s, "everyone", [CAROL])
        access.grant(s, id=x, groups=[EVERYONE])
        mark = s.last_seq()
        a5 = version(s, "A5", T0 + 6)
        access.set_group(s, "everyone", [CAROL, DAVE])
        group_roots = [x, a1.node_hash, a2.node_hash, a3.node_hash, a4.node_hash, a5.node_hash]
        assert hashes(s.accessible_roots(DAVE, mark)[1]) == group_roots
        assert hashes(s.accessible_roots(CAROL, mark)[1]) == [a5.node_hash]
        # Bob has x directly and through the group once he joins: nothing new, no duplicates
        m2 = s.last_seq()
        access.set_group(s, "everyone", [BOB, CAROL, DAVE])
        assert s.accessible_roots(BOB, m2)[1] == []
        assert hashes(s.accessible_roots(BOB)[1]) == full + [a5.node_hash]
        # revoking Bob's own grant leaves the group's: the nodes now count from his joining
        access.revoke(s, id=x, persons=[BOB])
        assert hashes(s.accessible_roots(BOB, m2)[1]) == group_roots
        access.revoke(s, id=x)
        assert hashes(s.accessible_roots(BOB)[1]) == [k1, y, b1.node_hash, k2, b2.node_hash]
        assert s.verify() == []
    finally:
        s.close()


def _write_format_1(path: Path) -> None:
    """Turn a store into one as a lama-store-1 build left it: that format stored a root per
    principal for every version node of an IdAccess-granted ID (aroots `n` entries counted in
    arefs) and had no aids/aseq tables."""
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        db = {name: env.open_db(name, txn=txn) for name in INDEX_DBS + (b"meta",)}
        aseq = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db[b"aseq"])]
        for p_x, g_i in [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db[b"aids"])]:
            p, x = p_x[:32], p_x[32:]
            for i, (k, node) in enumerate(e for e in aseq if e[0][:32] == x):
                seq_idx = g_i[:8] + (1000 + i).to_bytes(4, "big")
                txn.put(p + seq_idx, node + b"n" + x + b"Person", db=db[b"aroots"])
                txn.put(p + node, seq_idx + (1).to_bytes(4, "big"), db=db[b"arefs"])
        for name in (b"aids", b"aseq"):
            txn.drop(db[name], delete=True)
        txn.put(b"format", b"lama-store-1", db=db[b"meta"])
    env.close()


def test_a_format_1_store_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    k1 = keys(s, 1)
    p1 = version(s, "A", T0)
    access.set_group(s, "everyone", [CAROL])
    access.grant(s, object=k1, persons=[BOB])
    access.grant(s, id=p1.id_hash, persons=[BOB], groups=[EVERYONE])
    p2 = version(s, "B", T0 + 1)
    want = {who: s.accessible_roots(who)[1] for who in (BOB, CAROL, DAVE)}
    last = s.last_seq()
    s.close()
    _write_format_1(path)
    assert any(v[32:33] == b"n" for _, v in dump(path, (b"aroots",))[b"aroots"])
    s = core.Store(str(path))
    try:
        assert s.verify() == []
        assert s.last_seq() == last
        for who, roots in want.items():
            assert sorted(s.accessible_roots(who)[1]) == sorted(roots)
            # the index was rebuilt at the open: everything counts from the last sequence number
            assert s.accessible_roots(who, last)[1] == []
        p3 = version(s, "C", T0 + 2)
        assert s.accessible_roots(CAROL, last)[1] == [("version_node", p3.node_hash, p1.id_hash, "Person")]
        assert p2.node_hash in hashes(s.accessible_roots(BOB)[1])
    finally:
        s.close()
    raw = dump(path, (b"meta", b"aroots"))
    assert dict(raw[b"meta"])[b"format"] == b"lama-store-2"
    assert all(v[32:33] != b"n" for _, v in raw[b"aroots"])


def test_a_store_of_an_unknown_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    s.close()
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"lama-store-3", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(Exception) as e:
        core.Store(str(path))
    assert getattr(e.value, "code", None) == "LAMA-FORMAT"
    assert dict(dump(path, (b"meta",))[b"meta"])[b"format"] == b"lama-store-3"


def _fill(s: Any) -> dict[str, str]:
    k1 = keys(s, 1)
    p1 = version(s, "A", T0)
    version(s, "B", T0 + 1)
    access.set_group(s, "everyone", [CAROL, DAVE])
    access.grant(s, object=k1, persons=[BOB])
    access.grant(s, id=p1.id_hash, persons=[BOB], groups=[EVERYONE])
    version(s, "C", T0 + 2)
    return {"pid": p1.id_hash}


def _corrupt(path: Path) -> None:
    """One problem of each kind in the new tables."""
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        aseq = env.open_db(b"aseq", txn=txn)
        aids = env.open_db(b"aids", txn=txn)
        cur = txn.cursor(db=aseq)
        assert cur.first()
        k0 = bytes(cur.key())
        cur.delete()  # missing
        assert cur.last()
        txn.put(bytes(cur.key()), b"\x07" * 32, db=aseq)  # another node than anodes says
        txn.put(b"\x01" * 44, b"\x02" * 32, db=aseq)  # of no anodes entry
        txn.put(b"\x01" * 10, b"x", db=aseq)  # malformed
        cur = txn.cursor(db=aids)
        assert cur.first()
        txn.put(bytes(cur.key()), b"\x00" * 12, db=aids)  # points elsewhere
        assert cur.last()
        cur.delete()  # missing
        txn.put(b"\x03" * 64, b"\x00" * 11, db=aids)  # malformed
    env.close()
    assert k0


def test_verify_checks_aseq_and_aids(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = core.Store(str(path))
    _fill(s)
    s.close()
    good = dump(path)
    _corrupt(path)
    s = core.Store(str(path))
    problems = s.verify()
    s.close()
    first_seq, last_seq = good[b"aseq"][0][0].hex(), good[b"aseq"][-1][0].hex()
    first_aids, last_aids = good[b"aids"][0][0].hex(), good[b"aids"][-1][0].hex()
    ones10, ones44, threes = (b"\x01" * 10).hex(), (b"\x01" * 44).hex(), (b"\x03" * 64).hex()
    assert problems == [
        f"aseq/{ones10}: malformed entry",
        f"aseq/{ones44}: no anodes entry of this node here",
        f"aseq/{last_seq}: no anodes entry of this node here",
        f"aseq/{first_seq}: missing",
        f"aids/{threes}: malformed entry",
        f"aids/{first_aids}: no id root in aroots there",
        f"aids/{last_aids}: missing",
    ]


@pytest.mark.cross_core
def test_both_cores_write_the_same_bytes_in_every_index_table(
        tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions, "now_ms", lambda: T0 + 100)
    dumps = []
    for name, c in (("rust", rust_core), ("pure", pure_core)):
        s = c.Store(str(tmp_path / name))
        _fill(s)
        s.close()
        dumps.append(dump(tmp_path / name))
    assert dumps[0] == dumps[1]
    assert dumps[0][b"aseq"] and dumps[0][b"aids"]


@pytest.mark.cross_core
@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_the_other_core_upgrades_a_format_1_store_the_same_way(
        tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    for name in ("w", "r"):
        s = cores[writer].Store(str(tmp_path / name))
        _fill(s)
        s.close()
        _write_format_1(tmp_path / name)
    for name, c in (("w", cores[writer]), ("r", cores[reader])):
        s = c.Store(str(tmp_path / name))
        assert s.verify() == []
        s.close()
    assert dump(tmp_path / "w") == dump(tmp_path / "r")


@pytest.mark.cross_core
def test_both_cores_report_the_same_problems_in_the_new_tables(
        tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType) -> None:
    path = tmp_path / "s"
    s = pure_core.Store(str(path))
    _fill(s)
    s.close()
    _corrupt(path)
    reports = []
    for c in (rust_core, pure_core):
        s = c.Store(str(path))
        reports.append(s.verify())
        s.close()
    assert reports[0] == reports[1]
    assert sum(p.startswith(("aseq/", "aids/")) for p in reports[0]) == 7
