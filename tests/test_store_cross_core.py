"""Both cores open the same store: write with one, read and verify with the other."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.cross_core

ALICE = {"$type$": "Person", "email": "alice@example.com", "name": "Alice"}
ALICE_ID = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def _fill(core: ModuleType, path: Path) -> dict[str, str]:
    s = core.Store(str(path))
    msg = {"$type$": "ChatMessage", "text": "Hi Bob <3", "sender": ALICE_ID}
    (msg_hash, status, _), (p_hash, _, p_id) = s.put_objects([msg, ALICE])
    assert status == "new" and p_id == ALICE_ID
    access = {"$type$": "Access", "object": msg_hash, "person": [ALICE_ID], "group": []}
    (acc_hash, _, acc_id), = s.put_objects([access])
    blob, _ = s.put_blob(bytes(range(256)) * 5000)  # > 1 MiB: chunked
    clob, _ = s.put_clob("hello world")
    edge = {"$type$": "VersionNodeEdge", "data": p_hash, "depth": 0, "creationTime": 1700000000000}
    s.write_batch([edge], [(ALICE_ID, None, core.object_hash(edge))])
    s.enable_reverse_maps("ChatMessage", ["sender"])
    msg2 = {"$type$": "ChatMessage", "text": "second", "sender": ALICE_ID}
    (msg2_hash, _, _), = s.put_objects([msg2])
    s.close()
    return {"msg": msg_hash, "person": p_hash, "access": acc_hash, "access_id": acc_id,
            "blob": blob, "clob": clob, "edge": core.object_hash(edge), "msg2": msg2_hash}


@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_store_written_by_one_core_is_read_by_the_other(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    h = _fill(cores[writer], tmp_path / "store")
    r = cores[reader].Store(str(tmp_path / "store"))
    try:
        assert r.verify() == []
        assert r.get_object(h["person"]) == ALICE
        assert r.kind(ALICE_ID) == "id"
        assert r.kind(h["blob"]) == "blob" and r.kind(h["clob"]) == "clob"
        assert r.read_blob(h["blob"]) == bytes(range(256)) * 5000
        assert r.read_blob(h["clob"]) == b"hello world"
        assert r.get_head(ALICE_ID) == h["edge"]
        assert r.referencing(h["msg"], "Access") == [h["access"]]
        assert r.referencing(ALICE_ID, "Access") == [h["access"]]
        assert r.referencing(h["msg"], "Access", id_objects=True) == [h["access_id"]]
        # the extra reverse map enabled by the writer is honoured by the reader (and it
        # covers the message stored before it was enabled: indexed when enabled)
        assert sorted(r.referencing(ALICE_ID, "ChatMessage")) == sorted([h["msg"], h["msg2"]])
        msg3 = {"$type$": "ChatMessage", "text": "third", "sender": ALICE_ID}
        (m3, status, _), = r.put_objects([msg3])
        assert status == "new"
        assert sorted(r.referencing(ALICE_ID, "ChatMessage")) == sorted([h["msg"], h["msg2"], m3])
        # the reader's writes are valid for the writer again
        assert r.put_objects([ALICE])[0][1] == "exists"
        assert r.count() == len(r.hashes())
    finally:
        r.close()
    w = cores[writer].Store(str(tmp_path / "store"))
    assert w.verify() == []
    w.close()


# -- verify(): the same checks and the same messages in both cores ------------------------------

CHUNK = 1 << 20


def _sha(b: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(b).digest()


def _damage(path: Path, h: dict[str, str]) -> None:
    """Damage a closed store in many ways with direct LMDB writes (docs/store-format.md)."""
    import lmdb

    env = lmdb.open(str(path), max_dbs=16)
    dbs = {n: env.open_db(n.encode()) for n in ("objects", "chunks", "vheads", "rmaps", "events")}
    with env.begin(write=True) as txn:
        def put(db: str, k: bytes, v: bytes) -> None:
            txn.put(k, v, db=dbs[db])

        raw = bytes.fromhex
        put("objects", raw(h["msg"]), b"O<div>changed</div>")  # content hashes elsewhere
        person = txn.get(raw(h["person"]), db=dbs["objects"])
        put("objects", raw(h["person"]), b"I" + person[1:])  # an object stored as ID object
        bad_md = b'<div itemscope itemtype="//refin.io/Nope"></div>'
        put("objects", _sha(bad_md), b"O" + bad_md)  # hash fine, not ONE microdata
        put("objects", _sha(b""), b"C")  # empty CLOB
        big = b"\x01" * (CHUNK + 1)
        put("objects", _sha(big), b"B" + big)  # inline content larger than CHUNK
        put("objects", _sha(b"\xff"), b"C\xff")  # CLOB not UTF-8
        put("objects", b"\x07" * 32, b"Qjunk")  # unknown kind byte
        put("objects", b"\x08" * 32, b"")  # empty value
        put("objects", b"\x09" * 31, b"Bx")  # key too short
        put("objects", b"\x0a" * 32, b"b\x00\x00")  # bad chunked header
        put("objects", b"\x0b" * 32, b"b" + (5).to_bytes(8, "big") + (1).to_bytes(4, "big"))
        put("objects", b"\x0c" * 32, b"b" + (CHUNK + 5).to_bytes(8, "big") + (3).to_bytes(4, "big"))
        blob = raw(h["blob"])
        txn.put(blob + (1).to_bytes(4, "big"), b"short", db=dbs["chunks"])  # wrong chunk size
        put("chunks", b"\x0d" * 32 + (0).to_bytes(4, "big"), b"orphan")
        put("chunks", b"\x0e" * 3, b"bad key")
        bad_clob = b"\xff" * (CHUNK + 3)  # chunked CLOB whose bytes are not UTF-8
        put("objects", _sha(bad_clob), b"c" + len(bad_clob).to_bytes(8, "big") + (2).to_bytes(4, "big"))
        put("chunks", _sha(bad_clob) + (0).to_bytes(4, "big"), bad_clob[:CHUNK])
        put("chunks", _sha(bad_clob) + (1).to_bytes(4, "big"), bad_clob[CHUNK:])
        lost = b"\x01\x02" * (CHUNK // 2 + 10)  # a chunked BLOB that lost its last chunk
        put("objects", _sha(lost), b"b" + len(lost).to_bytes(8, "big") + (2).to_bytes(4, "big"))
        put("chunks", _sha(lost) + (0).to_bytes(4, "big"), lost[:CHUNK])
        put("vheads", raw(ALICE_ID), raw(h["person"]))  # head is not a version node
        put("vheads", b"\x10" * 32, b"\x11" * 5)  # malformed head
        put("vheads", b"\x12" * 32, b"\x13" * 32)  # head not stored
        put("rmaps", raw(ALICE_ID) + b"OKeys\x00" + b"\x14" * 32, b"")  # referrer not stored
        put("rmaps", b"\x15" * 40, b"")  # malformed key
        put("rmaps", raw(ALICE_ID) + b"X" + b"T\x00" + b"\x16" * 32, b"")  # bad map kind
        with txn.cursor(db=dbs["events"]) as cur:
            last = int.from_bytes(cur.key(), "big") if cur.last() else 0
        seq = lambda n: (last + n).to_bytes(8, "big")  # noqa: E731
        put("events", seq(1), b"\x17" * 32 + b"O")  # an object that is not stored
        put("events", seq(2), b"\x18" * 32 + b"H")  # a head that does not exist
        put("events", seq(3), b"\x19" * 32 + b"Z")  # unknown kind
        put("events", seq(4), b"short")  # malformed value
        put("events", seq(9), raw(h["msg"]) + b"O")  # a gap before it
    env.close()


@pytest.mark.parametrize("writer", ["rust", "pure"])
def test_verify_reports_the_same_problems_in_both_cores(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    h = _fill(cores[writer], tmp_path / "store")
    _damage(tmp_path / "store", h)
    lists = {}
    for name, core in cores.items():
        with core.Store(str(tmp_path / "store")) as s:
            lists[name] = s.verify()
    assert lists["rust"] == lists["pure"]
    problems = lists["rust"]
    for table in ("objects/", "chunks/", "vheads/", "rmaps/", "events/"):  # one check per table, in order
        assert any(p.startswith(table) for p in problems), table
    order = [p.split("/")[0] for p in problems]
    assert order == sorted(order, key=["objects", "chunks", "vheads", "rmaps", "events"].index)
    expected_fragments = [
        "content hashes to", "stored as an ID object but the microdata is an object",
        "not ONE microdata (", "empty CLOB", f"inline content of {CHUNK + 1} bytes",
        "text is not UTF-8", "unknown kind byte 0x51", "empty value",
        "key is not a 32-byte hash", "bad chunked header", "chunked header says 5 bytes in 1",
        f"chunked header says {CHUNK + 5} bytes in 3", "chunk 1 has 5 bytes, expected",
        "chunk of no chunked BLOB/CLOB", "chunk 1 of 2 is missing",
        "is not a stored version node", "malformed entry", "referencing", "malformed key",
        "is not stored", "has no head", "was expected",
    ]
    for frag in expected_fragments:
        assert any(frag in p for p in problems), (frag, problems)
    assert sum("text is not UTF-8" in p for p in problems) == 2  # inline and chunked CLOB


def _main_root_leaf(data: bytes, psize: int, meta: int) -> int:
    """The root page of the main database in the newest tree: a leaf page (it only lists the
    handful of named databases) that LMDB surely reaches. The meta page holds two 48-byte
    database records from offset 40 (free list, then main); the root page number is the last
    field of a record."""
    import struct

    root: int = struct.unpack_from("<Q", data, meta * psize + 88 + 40)[0]
    assert struct.unpack_from("<Q", data, root * psize)[0] == root
    assert struct.unpack_from("<H", data, root * psize + 10)[0] == 0x02, "main root is a leaf"
    return root


@pytest.mark.parametrize("damage", ["truncate", "pgno", "bounds", "node", "last_pg", "magic"])
def test_structural_damage_is_reported_the_same_way(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, damage: str
) -> None:
    """The structural check (docs/store-format.md "Damaged files") finds the same first problem
    in both cores, which refuse to open the store with it."""
    import struct

    from lama.errors import StoreError

    _fill(rust_core, tmp_path / "store")
    path = tmp_path / "store" / "data.mdb"
    data = bytearray(path.read_bytes())
    psize = struct.unpack_from("<I", data, 40)[0]
    metas = [struct.unpack_from("<QQ", data, off + 136) for off in (0, psize)]
    newest = 0 if metas[0][1] >= metas[1][1] else 1
    last_pg = metas[newest][0]
    leaf = _main_root_leaf(bytes(data), psize, newest)
    if damage == "truncate":
        del data[len(data) * 2 // 3:]
    elif damage == "pgno":
        struct.pack_into("<Q", data, leaf * psize, leaf + 7)
    elif damage == "bounds":
        struct.pack_into("<HH", data, leaf * psize + 12, 40, 30)
    elif damage == "node":
        struct.pack_into("<H", data, leaf * psize + 16, psize - 2)
    elif damage == "last_pg":
        struct.pack_into("<Q", data, newest * psize + 136, last_pg + 100)
    else:
        struct.pack_into("<I", data, psize + 16, 0x12345678)
    path.write_bytes(bytes(data))
    messages = {}
    for name, core in (("rust", rust_core), ("pure", pure_core)):
        with pytest.raises(StoreError) as e:
            core.Store(str(tmp_path / "store"))
        assert e.value.code == "LAMA-CORRUPT", (name, e.value)
        messages[name] = str(e.value).split("is damaged: ", 1)[1]
    assert messages["rust"] == messages["pure"]
    assert messages["rust"].startswith("lmdb: ")


def _leaf_of_db(data: bytes, psize: int, meta: int, name: bytes) -> int:
    """A leaf page of the named database ``name`` in the newest tree: its record in the main
    database's root leaf gives its root; descend through the first child of branch pages."""
    import struct

    main = _main_root_leaf(data, psize, meta)
    base = main * psize
    lower = struct.unpack_from("<H", data, base + 12)[0]
    for i in range((lower - 16) // 2):
        off = struct.unpack_from("<H", data, base + 16 + 2 * i)[0]
        ksize = struct.unpack_from("<H", data, base + off + 6)[0]
        if data[base + off + 8:base + off + 8 + ksize] == name:
            page: int = struct.unpack_from("<Q", data, base + off + 8 + ksize + 40)[0]
            break
    else:
        raise AssertionError(f"no database {name!r}")
    while struct.unpack_from("<H", data, page * psize + 10)[0] == 0x01:  # a branch page
        off = struct.unpack_from("<H", data, page * psize + 16)[0]
        lo, hi, flags = struct.unpack_from("<HHH", data, page * psize + off)
        page = lo | hi << 16 | flags << 32
    assert struct.unpack_from("<H", data, page * psize + 10)[0] == 0x02
    return page


@pytest.mark.parametrize("table", ["objects", "events"])
@pytest.mark.parametrize("node", ["first", "last"])
@pytest.mark.parametrize("damage", ["below_upper", "past_end", "odd", "key_size", "data_size",
                                    "flags", "big_size"])
def test_damaged_node_of_a_lama_table_is_reported_the_same_way(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, damage: str, node: str,
    table: str
) -> None:
    """A damaged node on a leaf page of a lama table: the pure core first checks such pages a
    page at a time (``events``: nodes of one size tiling the page) or with one combined test
    per node (``objects``), and only words the problem in the node-by-node loop, the Rust core
    node by node; both refuse the store with the same first problem, naming the page and the
    node."""
    import struct

    from lama.errors import StoreError

    _fill(rust_core, tmp_path / "store")
    path = tmp_path / "store" / "data.mdb"
    data = bytearray(path.read_bytes())
    psize = struct.unpack_from("<I", data, 40)[0]
    metas = [struct.unpack_from("<QQ", data, off + 136) for off in (0, psize)]
    newest = 0 if metas[0][1] >= metas[1][1] else 1
    leaf = _leaf_of_db(bytes(data), psize, newest, table.encode())
    base = leaf * psize
    lower, upper = struct.unpack_from("<HH", data, base + 12)
    n = (lower - 16) // 2
    assert n > 8  # (the pure core's page-at-a-time test needs more than 8 nodes)
    i = 0 if node == "first" else n - 1
    slot = base + 16 + 2 * i
    off = struct.unpack_from("<H", data, slot)[0]
    if damage == "below_upper":
        struct.pack_into("<H", data, slot, upper - 2)
    elif damage == "past_end":
        struct.pack_into("<H", data, slot, psize - 6)
    elif damage == "odd":  # LMDB writes even offsets; an odd one points into another node
        struct.pack_into("<H", data, slot, off + 1)
    elif damage == "key_size":
        struct.pack_into("<H", data, base + off + 6, 600)
    elif damage == "data_size":
        struct.pack_into("<H", data, base + off, psize)
    elif damage == "flags":
        struct.pack_into("<H", data, base + off + 4, 0x40)
    else:  # a data size of 64 KiB and more in the high half
        struct.pack_into("<H", data, base + off + 2, 1)
    path.write_bytes(bytes(data))
    messages = {}
    for name, core in (("rust", rust_core), ("pure", pure_core)):
        try:
            core.Store(str(tmp_path / "store")).close()
            messages[name] = "opened"
        except StoreError as e:
            assert e.code == "LAMA-CORRUPT", (name, e)
            messages[name] = str(e).split("is damaged: ", 1)[1]
    assert messages["rust"] == messages["pure"], messages
    if damage != "odd":  # (an odd offset may land on bytes that pass every check)
        assert messages["rust"].startswith(f"lmdb: db {table} page {leaf}: node {i}"), messages
