"""The LMDB store of the selected core (docs/core-interface.md "Store", docs/store-format.md).

Runs against ``lama._core.core`` (``LAMA_CORE=pure`` or ``rust``).  Where the on-disk bytes
matter (format conformance, corruption) the store is closed and the LMDB environment is opened
directly with the ``lmdb`` package.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import lmdb
import pytest

from lama._core import core
from lama.errors import (
    ConflictError,
    HashMismatchError,
    LamaError,
    MicrodataError,
    NotFoundError,
    StoreError,
)

CHUNK = 1 << 20

ALICE = {"$type$": "Person", "email": "alice@example.com", "name": "Alice"}
ALICE_MD = ('<div itemscope itemtype="//refin.io/Person"><span itemprop="email">'
            'alice@example.com</span><span itemprop="name">Alice</span></div>')
ALICE_HASH = "04cf557ffbf2f128a7f61cbb28ba7a42cc22bb59f2f6793f81feff0a64b8ff41"
ALICE_ID_MD = ('<div data-id-object="true" itemscope itemtype="//refin.io/Person">'
               '<span itemprop="email">alice@example.com</span></div>')
ALICE_ID = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
BOB = {"$type$": "Person", "email": "bob@example.com"}
BOB_ID = "58c379901b18278fa72f55f57d15f041b524655e2bbe55bef73383e35c2eae0a"
HELLO_CLOB = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
BLOB_123 = "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81"


def keys_obj(owner: str, n: int = 0) -> dict[str, Any]:
    return {"$type$": "Keys", "owner": owner, "publicKey": f"{n:064x}",
            "publicSignKey": f"{n + 1:064x}"}


def edge(data: str, t: int = 1_700_000_000_000) -> dict[str, Any]:
    return {"$type$": "VersionNodeEdge", "data": data, "depth": 0, "creationTime": t}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path) -> Iterator[Any]:
    s = core.Store(str(store_path))
    yield s
    s.close()


class RawEnv:
    """Direct access to a (closed) store's LMDB environment with the lmdb package."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(str(path), max_dbs=16, subdir=True)
        self.dbs = {n: self.env.open_db(n.encode()) for n in
                    ("meta", "objects", "chunks", "vheads", "rmaps", "tmp")}

    def __enter__(self) -> RawEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.env.close()

    def get(self, db: str, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self.dbs[db])

    def meta_json(self, key: bytes) -> Any:
        v = self.get("meta", key)
        assert v is not None, key
        return json.loads(v)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key, value, db=self.dbs[db])

    def delete(self, db: str, key: bytes) -> None:
        with self.env.begin(write=True) as txn:
            assert txn.delete(key, db=self.dbs[db])

    def items(self, db: str) -> list[tuple[bytes, bytes]]:
        with self.env.begin() as txn:
            return list(txn.cursor(db=self.dbs[db]))


# -- objects ------------------------------------------------------------------------------


def test_put_get_round_trip_with_statuses(store: Any) -> None:
    assert store.count() == 0
    (h, status, id_hash), = store.put_objects([ALICE])
    assert (h, status, id_hash) == (ALICE_HASH, "new", ALICE_ID)
    assert store.get(ALICE_HASH) == ALICE_MD
    assert store.get_object(ALICE_HASH) == ALICE
    assert store.has(ALICE_HASH) and store.kind(ALICE_HASH) == "object"
    # storing it again: write-once, nothing changes
    assert store.put_objects([ALICE]) == [(ALICE_HASH, "exists", ALICE_ID)]
    k = keys_obj(ALICE_ID)
    (kh, kst, kid), (ah, ast, _) = store.put_objects([k, ALICE])
    assert kh == core.object_hash(k) and kst == "new" and kid is None
    assert (ah, ast) == (ALICE_HASH, "exists")
    assert store.get_object(kh) == k
    assert store.count() == 3  # Alice, Alice's ID object, Keys
    assert sorted(store.hashes()) == sorted([ALICE_HASH, ALICE_ID, kh])


def test_duplicate_in_one_batch_is_new_then_exists(store: Any) -> None:
    res = store.put_objects([BOB, BOB])
    assert [r[1] for r in res] == ["new", "exists"]
    assert res[0][0] == res[1][0] and res[0][2] == res[1][2] == BOB_ID


def test_versioned_object_stores_its_id_object(store: Any) -> None:
    store.put_objects([ALICE])
    assert store.kind(ALICE_ID) == "id"
    assert store.get(ALICE_ID) == ALICE_ID_MD
    assert store.get_object(ALICE_ID) == {"$type$": "Person", "email": "alice@example.com"}
    assert store.get_head(ALICE_ID) is None  # put_objects writes no version nodes


def test_missing_objects(store: Any) -> None:
    missing = "ab" * 32
    for call in (store.get, store.get_object, store.read_blob, store.blob_size,
                 store.read_blob_chunks):
        with pytest.raises(NotFoundError) as e:
            call(missing)
        assert e.value.code == "SB-READ2"
    assert not store.has(missing) and store.kind(missing) is None
    assert store.get_head(missing) is None
    # a malformed hash is bad input (a ValueError), not a missing object
    for call in (store.get, store.has, store.kind, store.get_head, store.read_blob):
        for bad in ("not a hash", "AB" * 32, "ab" * 31):
            with pytest.raises(MicrodataError) as e:
                call(bad)
            assert e.value.code == "LAMA-BADHASH" and isinstance(e.value, ValueError)
    with pytest.raises(MicrodataError):
        store.referencing("not a hash", "Access")


def test_bad_object_writes_nothing(store: Any) -> None:
    bad = {"$type$": "Person", "name": "no email"}  # mandatory ID property missing
    with pytest.raises(LamaError):
        store.put_objects([BOB, keys_obj(BOB_ID), bad])
    assert store.count() == 0
    with pytest.raises(LamaError):
        store.put_objects([BOB, {"$type$": "NoSuchType"}])
    assert store.count() == 0


# -- put_microdata ------------------------------------------------------------------------


def test_put_microdata_verifies_hashes(store: Any) -> None:
    assert store.put_microdata([(ALICE_MD, ALICE_HASH)]) == [(ALICE_HASH, "new", ALICE_ID)]
    # the ID object came with it, stored from the received text
    assert store.get(ALICE_ID) == ALICE_ID_MD
    assert store.put_microdata([(ALICE_MD, None)]) == [(ALICE_HASH, "exists", ALICE_ID)]
    before = store.count()
    k = keys_obj(ALICE_ID)
    kmd = core.serialize(k)
    with pytest.raises(HashMismatchError) as e:
        store.put_microdata([(kmd, core.object_hash(k)), (core.serialize(BOB), ALICE_HASH)])
    assert e.value.code == "LAMA-HASH"
    assert store.count() == before and not store.has(core.object_hash(k))
    # received microdata is stored verbatim, not re-serialized
    (kh, st, kid), = store.put_microdata([(kmd, None)])
    assert (kh, st, kid) == (sha(kmd.encode()), "new", None)
    assert store.get(kh) == kmd


def test_put_microdata_stores_id_object_texts_as_id_objects(store: Any) -> None:
    (h, status, _), = store.put_microdata([(ALICE_ID_MD, ALICE_ID)])
    assert (h, status) == (ALICE_ID, "new")
    assert store.kind(ALICE_ID) == "id" and store.count() == 1


@pytest.mark.parametrize("text", [
    "",
    "hello",
    '<div itemscope itemtype="//refin.io/NoSuchType"><span itemprop="x">1</span></div>',
    '<div itemscope itemtype="//refin.io/Person"><span itemprop="name">no email</span></div>',
    ALICE_MD[:-6],  # truncated
    ALICE_MD + "trailing",
    # unversioned types are parsed too (the Rust core once stored these unchecked)
    '<div itemscope itemtype="//refin.io/ChatMessage">garbage</div>',
    '<div itemscope itemtype="//refin.io/Keys"></div>',
    '<div data-id-object="true" itemscope itemtype="//refin.io/Keys"></div>',
])
def test_put_microdata_refuses_malformed_text_without_writing(store: Any, text: str) -> None:
    before = store.count()
    with pytest.raises(LamaError):
        store.put_microdata([(core.serialize(BOB), None), (text, None)])
    assert store.count() == before == 0


def test_lone_surrogates_are_stored_as_node_writes_them(store: Any) -> None:
    """A JS string may hold a lone surrogate; Node.js hashes and writes it as U+FFFD
    (objects.md §2.1), so the stored text is that UTF-8 and verify() finds it clean."""
    obj = {"$type$": "Person", "email": "x\ud800y"}
    (h, status, id_h), = store.put_objects([obj])
    assert (h, status) == (core.object_hash(obj), "new") and id_h == core.id_hash(obj)
    assert h == hashlib.sha256(
        '<div itemscope itemtype="//refin.io/Person"><span itemprop="email">x\ufffdy</span></div>'
        .encode()).hexdigest()
    assert store.get(h) == core.serialize(obj).replace("\ud800", "\ufffd")
    assert store.get_object(h) == {"$type$": "Person", "email": "x\ufffdy"}
    md = '<div itemscope itemtype="//refin.io/Person"><span itemprop="email">q\udc00</span></div>'
    (h2, _, _), = store.put_microdata([(md, core.sha256_hex(md))])
    assert h2 == core.sha256_hex(md) and store.get(h2) == md.replace("\udc00", "\ufffd")
    assert store.verify() == []


def test_what_is_written_is_readable(store: Any) -> None:
    """One nesting limit, enforced on write (objects.md §1.6 JSON* values: 100 levels): what
    the store accepts, get_object and verify() read back; more is refused, nothing written."""
    core.register_recipe(json.dumps({"$type$": "Recipe", "name": "TestStoreDeepJson",
                                     "rule": [{"itemprop": "j", "itemtype": {"type": "stringifiable"}}]}))
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    (h, _, _), = store.put_objects([{"$type$": "TestStoreDeepJson", "j": deep}])
    assert store.get_object(h)["j"] == deep and store.verify() == []
    with pytest.raises(MicrodataError) as ei:
        store.put_objects([{"$type$": "TestStoreDeepJson", "j": [deep]}])
    assert ei.value.code == "USS-STR1" and store.count() == 1


# -- BLOB / CLOB --------------------------------------------------------------------------


def test_blob_and_clob_inline(store: Any) -> None:
    assert store.put_blob(b"\x01\x02\x03") == (BLOB_123, "new")
    assert store.put_blob(b"\x01\x02\x03") == (BLOB_123, "exists")
    assert store.put_clob("hello world") == (HELLO_CLOB, "new")
    assert store.put_clob("hello world") == (HELLO_CLOB, "exists")
    assert store.kind(BLOB_123) == "blob" and store.kind(HELLO_CLOB) == "clob"
    assert store.read_blob(BLOB_123) == b"\x01\x02\x03"
    assert store.read_blob(HELLO_CLOB) == b"hello world"
    assert store.blob_size(HELLO_CLOB) == 11
    assert store.read_blob_chunks(BLOB_123) == [b"\x01\x02\x03"]
    text = "Grüße ✓ 😀"
    h, _ = store.put_clob(text)
    assert h == sha(text.encode()) and store.read_blob(h).decode() == text
    with pytest.raises(NotFoundError):  # a CLOB is not a ONE object
        store.get(HELLO_CLOB)
    with pytest.raises(NotFoundError):  # an object is not a BLOB
        store.put_objects([BOB])
        store.read_blob(core.object_hash(BOB))
    assert store.count() == 5


def test_empty_clob_is_refused(store: Any) -> None:
    with pytest.raises(StoreError) as e:
        store.put_clob("")
    assert e.value.code == "SB-STORE"
    w = store.blob_writer(clob=True)
    with pytest.raises(StoreError) as e:
        w.finish()
    assert e.value.code == "SB-STORE"
    assert store.count() == 0
    # an empty BLOB is allowed (only empty CLOBs are rejected, objects.md §2.3)
    assert store.put_blob(b"") == (sha(b""), "new")


@pytest.mark.parametrize("size,chunks", [
    (CHUNK, [CHUNK]),
    (CHUNK + 1, [CHUNK, 1]),
    (2 * CHUNK + 5, [CHUNK, CHUNK, 5]),
])
def test_blob_chunking(store: Any, size: int, chunks: list[int]) -> None:
    data = os.urandom(size)
    h, status = store.put_blob(data)
    assert (h, status) == (sha(data), "new")
    assert store.put_blob(data) == (h, "exists")
    assert store.read_blob(h) == data
    assert store.blob_size(h) == size
    assert [len(c) for c in store.read_blob_chunks(h)] == chunks
    assert store.count() == 1 and store.verify() == []



@pytest.mark.parametrize("size", [0, 5, CHUNK, CHUNK + 1, 2 * CHUNK + 5])
def test_read_blob_range_reads_in_pieces_within_chunks(store: Any, size: int) -> None:
    data = os.urandom(size)
    h, _ = store.put_blob(data)
    for piece in (1 << 20, 300_000, 7):
        if piece == 7 and size > CHUNK:
            continue  # 7-byte pieces of a multi-MiB BLOB: too many calls for a unit test
        got, offset = [], 0
        while True:
            p = store.read_blob_range(h, offset, piece)
            if not p:
                break
            assert len(p) <= piece
            # a piece never crosses a stored chunk's end
            assert offset // CHUNK == (offset + len(p) - 1) // CHUNK
            got.append(p)
            offset += len(p)
        assert b"".join(got) == data
    assert store.read_blob_range(h, size + 10, 100) == b""
    assert store.read_blob_range(h, 0, 0) == b""
    for bad in (-1, 1.5, True, "0"):
        with pytest.raises(StoreError) as e:
            store.read_blob_range(h, bad, 10)
        assert e.value.code == "LAMA-ARG"
        with pytest.raises(StoreError):
            store.read_blob_range(h, 0, bad)
    with pytest.raises(NotFoundError) as nf:
        store.read_blob_range("ab" * 32, 0, 10)
    assert nf.value.code == "SB-READ2"

def test_chunked_clob_and_on_disk_format(store_path: Path) -> None:
    text = "ä" * (CHUNK // 2 + 7)  # 2 bytes each in UTF-8: > 1 MiB
    data = text.encode()
    with core.Store(str(store_path)) as s:
        h, status = s.put_clob(text)
        assert (h, status) == (sha(data), "new") and s.kind(h) == "clob"
        assert s.read_blob(h) == data
        small, _ = s.put_blob(b"\x01\x02\x03")
        s.put_objects([ALICE])
    with RawEnv(store_path) as raw:
        assert raw.get("meta", b"format") == b"lama-store-2"
        assert raw.get("objects", bytes.fromhex(h)) == (
            b"c" + len(data).to_bytes(8, "big") + (2).to_bytes(4, "big"))
        assert raw.get("chunks", bytes.fromhex(h) + (0).to_bytes(4, "big")) == data[:CHUNK]
        assert raw.get("chunks", bytes.fromhex(h) + (1).to_bytes(4, "big")) == data[CHUNK:]
        assert raw.get("objects", bytes.fromhex(small)) == b"B\x01\x02\x03"
        assert raw.get("objects", bytes.fromhex(ALICE_HASH)) == b"O" + ALICE_MD.encode()
        assert raw.get("objects", bytes.fromhex(ALICE_ID)) == b"I" + ALICE_ID_MD.encode()


def test_blob_writer_streams_and_publishes_atomically(store_path: Path) -> None:
    data = os.urandom(2 * CHUNK + CHUNK // 2)
    with core.Store(str(store_path)) as s:
        w = s.blob_writer()
        for off in range(0, len(data), 300_000):
            w.write(data[off:off + 300_000])
            assert s.count() == 0  # nothing visible before finish
        assert w.finish(sha(data)) == (sha(data), "new")
        assert s.read_blob(sha(data)) == data
        assert [len(c) for c in s.read_blob_chunks(sha(data))] == [CHUNK, CHUNK, CHUNK // 2]
        with pytest.raises(StoreError):
            w.write(b"more")  # a finished writer is spent
        w2 = s.blob_writer()
        w2.write(data)
        assert w2.finish() == (sha(data), "exists")
        w3 = s.blob_writer(clob=True)
        w3.write("hello ".encode())
        w3.write(b"world")
        assert w3.finish(HELLO_CLOB) == (HELLO_CLOB, "new")
        assert s.kind(HELLO_CLOB) == "clob"
        w4 = s.blob_writer()
        w4.write(b"\x01\x02")
        w4.write(b"\x03")
        assert w4.finish() == (BLOB_123, "new")
        assert s.count() == 3 and s.verify() == []
    with RawEnv(store_path) as raw:
        assert raw.items("tmp") == []  # staging cleaned up


def test_blob_writer_abort_and_hash_mismatch_leave_nothing(store_path: Path) -> None:
    data = os.urandom(CHUNK * 3 + 10)
    with core.Store(str(store_path)) as s:
        w = s.blob_writer()
        w.write(data)
        w.abort()
        assert s.count() == 0 and not s.has(sha(data))
        w = s.blob_writer()
        w.write(data)
        with pytest.raises(HashMismatchError) as e:
            w.finish("00" * 32)
        assert e.value.code == "LAMA-HASH"
        assert s.count() == 0 and not s.has(sha(data))
        w = s.blob_writer(clob=True)
        with pytest.raises(LamaError):  # a CLOB must be UTF-8
            w.write(b"\xff\xfe not UTF-8")
            w.finish()
        assert s.count() == 0
    with RawEnv(store_path) as raw:
        assert raw.items("tmp") == [] and raw.items("chunks") == []


def test_stale_staged_chunks_are_dropped_on_open(store_path: Path) -> None:
    core.Store(str(store_path)).close()
    now = int(time.time() * 1000)
    old = (now - 2 * 3_600_000).to_bytes(8, "big") + os.urandom(8) + (0).to_bytes(4, "big")
    recent = now.to_bytes(8, "big") + os.urandom(8) + (0).to_bytes(4, "big")
    with RawEnv(store_path) as raw:
        raw.put("tmp", old, b"x" * 100)
        raw.put("tmp", recent, b"y" * 100)
    core.Store(str(store_path)).close()
    with RawEnv(store_path) as raw:
        assert [k for k, _ in raw.items("tmp")] == [recent]


# -- heads and write_batch ----------------------------------------------------------------


def test_write_batch_moves_heads_with_compare_and_set(store: Any) -> None:
    e1 = edge(ALICE_HASH)
    e1h = core.object_hash(e1)
    res = store.write_batch([ALICE, e1], [(ALICE_ID, None, e1h)])
    assert res == [(ALICE_HASH, "new", ALICE_ID), (e1h, "new", None)]
    assert store.get_head(ALICE_ID) == e1h
    alice2 = {"$type$": "Person", "email": "alice@example.com", "name": "Alice B."}
    a2 = core.object_hash(alice2)
    change = {"$type$": "VersionNodeChange", "prev": e1h, "data": a2, "depth": 1,
              "creationTime": 1_700_000_000_001}
    ch = core.object_hash(change)
    before = store.count()
    # a stale expectation (None) loses: nothing of the batch is written
    with pytest.raises(ConflictError) as e:
        store.write_batch([alice2, change, keys_obj(ALICE_ID)],
                          [(BOB_ID, None, e1h), (ALICE_ID, None, ch)])
    assert e.value.code == "LAMA-CONFLICT"
    assert store.count() == before and not store.has(a2) and not store.has(ch)
    assert store.get_head(ALICE_ID) == e1h and store.get_head(BOB_ID) is None
    assert store.referencing(ALICE_ID, "Keys") == []
    with pytest.raises(ConflictError):
        store.write_batch([], [(ALICE_ID, "ab" * 32, e1h)])
    # the right expectation wins
    store.write_batch([alice2, change], [(ALICE_ID, e1h, ch)])
    assert store.get_head(ALICE_ID) == ch
    assert store.verify() == []


def test_write_batch_refuses_a_head_that_is_not_a_version_node(store: Any) -> None:
    for head in (core.object_hash(BOB), "cd" * 32):  # a stored non-node, nothing stored
        with pytest.raises(StoreError) as e:
            store.write_batch([BOB], [(BOB_ID, None, head)])
        assert e.value.code == "LAMA-HEAD"
    assert store.count() == 0 and store.get_head(BOB_ID) is None


# -- reverse maps -------------------------------------------------------------------------


def test_reverse_maps_for_access_and_keys(store: Any) -> None:
    # objects.md §5.3 example: createAccess({object: clobHash, person: [bob]})
    clob, _ = store.put_clob("a shared note")
    access = {"$type$": "Access", "object": clob, "person": [BOB_ID], "group": []}
    (acc, _, acc_id), = store.put_objects([access])
    assert acc_id == core.id_hash(access)
    assert store.referencing(clob, "Access") == [acc]
    assert store.referencing(BOB_ID, "Access") == [acc]
    assert store.referencing(clob, "Access", id_objects=True) == [acc_id]
    assert store.referencing(BOB_ID, "Access", id_objects=True) == []  # person is no ID prop
    k1, k2 = keys_obj(ALICE_ID, 1), keys_obj(ALICE_ID, 2)
    (h1, _, _), (h2, _, _), _ = store.put_objects([k1, k2, keys_obj(BOB_ID, 3)])
    assert sorted(store.referencing(ALICE_ID, "Keys")) == sorted([h1, h2])
    assert store.referencing(ALICE_ID, "Access") == []
    # Person and version nodes get no reverse maps by default
    store.put_objects([edge(ALICE_HASH)])
    assert store.referencing(ALICE_HASH, "VersionNodeEdge") == []
    # a later IdAccess on the Access ID object
    ida = {"$type$": "IdAccess", "id": acc_id, "person": [ALICE_ID], "group": []}
    (ih, _, iid), = store.put_objects([ida])
    assert store.referencing(acc_id, "IdAccess") == [ih]
    assert store.referencing(acc_id, "IdAccess", id_objects=True) == [iid]


def test_reverse_maps_received_as_microdata(store: Any) -> None:
    k = keys_obj(BOB_ID, 7)
    (h, _, _), = store.put_microdata([(core.serialize(k), None)])
    assert store.referencing(BOB_ID, "Keys") == [h]


def test_enable_reverse_maps_is_persisted(store_path: Path) -> None:
    e1, e2 = edge(ALICE_HASH, 1), edge(ALICE_HASH, 2)
    with core.Store(str(store_path)) as s:
        (h1, _, _), = s.put_objects([e1])
        s.enable_reverse_maps("VersionNodeEdge")
        s.enable_reverse_maps("VersionNodeChange", ["prev"])
        s.enable_reverse_maps("Person", ["email"], id_objects=True)
        (h2, _, _), = s.put_objects([e2])
        # objects written before enabling are indexed when the map is enabled
        assert sorted(s.referencing(ALICE_HASH, "VersionNodeEdge")) == sorted([h1, h2])
    with core.Store(str(store_path)) as s:
        (h3, _, _), = s.put_objects([edge(ALICE_HASH, 3)])
        assert sorted(s.referencing(ALICE_HASH, "VersionNodeEdge")) == sorted([h1, h2, h3])
        # only the enabled itemprop "prev" is mapped, not "data"
        ch = {"$type$": "VersionNodeChange", "prev": h2, "data": ALICE_HASH, "depth": 1,
              "creationTime": 4}
        (chh, _, _), = s.put_objects([ch])
        assert s.referencing(h2, "VersionNodeChange") == [chh]
        assert s.referencing(ALICE_HASH, "VersionNodeChange") == []
    with RawEnv(store_path) as raw:
        assert raw.meta_json(b"rmap.O.VersionNodeEdge") == ["*"]
        assert raw.meta_json(b"rmap.O.VersionNodeChange") == ["prev"]
        assert raw.meta_json(b"rmap.I.Person") == ["email"]
        assert raw.get("meta", b"rmap.O.Keys") is None  # built-ins are not stored
        key = (bytes.fromhex(h2) + b"O" + b"VersionNodeChange" + b"\x00" + bytes.fromhex(chh))
        assert raw.get("rmaps", key) == b""


def test_enable_reverse_maps_indexes_objects_stored_before(store_path: Path) -> None:
    """A reverse map is complete whenever it is enabled (docs/core-interface.md): objects of
    the type already stored get their entries then - for a newly enabled type and for
    itemprops added to an enabled one - and the store still verifies clean."""
    with core.Store(str(store_path)) as s:
        (h1, _, _), (h2, _, _) = s.put_objects([edge(ALICE_HASH, 1), edge(BOB_ID, 2)])
        ch = {"$type$": "VersionNodeChange", "prev": h1, "data": ALICE_HASH, "depth": 1,
              "creationTime": 4}
        (chh, _, _), = s.put_objects([ch])
        assert s.referencing(ALICE_HASH, "VersionNodeEdge") == []
        s.enable_reverse_maps("VersionNodeEdge", ["data"])
        assert s.referencing(ALICE_HASH, "VersionNodeEdge") == [h1]
        assert s.referencing(BOB_ID, "VersionNodeEdge") == [h2]
        s.enable_reverse_maps("VersionNodeChange", ["prev"])
        assert s.referencing(h1, "VersionNodeChange") == [chh]
        assert s.referencing(ALICE_HASH, "VersionNodeChange") == []  # "data" not enabled yet
        s.enable_reverse_maps("VersionNodeChange", ["data"])  # widened: indexed now
        assert s.referencing(ALICE_HASH, "VersionNodeChange") == [chh]
        s.enable_reverse_maps("VersionNodeChange", ["prev"])  # nothing new: unchanged
        assert s.referencing(h1, "VersionNodeChange") == [chh]
        assert s.verify() == []
    with core.Store(str(store_path)) as s:  # persisted
        assert s.referencing(ALICE_HASH, "VersionNodeChange") == [chh]
        assert s.referencing(ALICE_HASH, "VersionNodeEdge") == [h1]


# -- verify, lifecycle --------------------------------------------------------------------


def _fill(s: Any) -> dict[str, str]:
    (p, _, pid), = s.put_objects([ALICE])
    e1 = edge(p)
    s.write_batch([e1], [(pid, None, core.object_hash(e1))])
    (k, _, _), = s.put_objects([keys_obj(pid)])
    big = os.urandom(CHUNK + 100)
    b, _ = s.put_blob(big)
    c, _ = s.put_clob("hello world")
    return {"person": p, "keys": k, "blob": b, "clob": c, "edge": core.object_hash(e1)}


def test_verify_clean_store(store: Any) -> None:
    assert store.verify() == []
    _fill(store)
    assert store.verify() == []


@pytest.mark.parametrize("damage", ["object", "id", "clob", "chunk", "kind", "head", "rmap"])
def test_verify_reports_corruption(store_path: Path, damage: str) -> None:
    with core.Store(str(store_path)) as s:
        h = _fill(s)
    with RawEnv(store_path) as raw:
        if damage == "object":
            bad = ALICE_MD.replace("Alice<", "Mallory<")
            raw.put("objects", bytes.fromhex(h["person"]), b"O" + bad.encode())
            culprit = h["person"]
        elif damage == "id":  # an object stored as an ID object
            raw.put("objects", bytes.fromhex(h["person"]), b"I" + ALICE_MD.encode())
            culprit = h["person"]
        elif damage == "clob":
            raw.put("objects", bytes.fromhex(h["clob"]), b"Chello World")
            culprit = h["clob"]
        elif damage == "chunk":
            raw.delete("chunks", bytes.fromhex(h["blob"]) + (1).to_bytes(4, "big"))
            culprit = h["blob"]
        elif damage == "kind":
            raw.put("objects", bytes.fromhex(h["keys"]), b"Z" + b"junk")
            culprit = h["keys"]
        elif damage == "head":
            raw.put("vheads", bytes.fromhex(ALICE_ID), bytes.fromhex(h["person"]))
            culprit = ALICE_ID
        else:
            raw.put("rmaps", bytes.fromhex(ALICE_ID) + b"OKeys\x00" + b"\x11" * 32, b"")
            culprit = "11" * 32
    with core.Store(str(store_path)) as s:
        problems = s.verify()
    assert problems and all(isinstance(p, str) for p in problems)
    assert any(culprit in p for p in problems), problems


def test_other_format_is_refused(store_path: Path) -> None:
    core.Store(str(store_path)).close()
    with RawEnv(store_path) as raw:
        raw.put("meta", b"format", b"lama-store-999")
    with pytest.raises(StoreError) as e:
        core.Store(str(store_path))
    assert e.value.code == "LAMA-FORMAT"


def test_closed_store_raises(store_path: Path) -> None:
    s = core.Store(str(store_path))
    assert s.path == str(store_path)
    s.put_objects([BOB])
    w = s.blob_writer()
    s.close()
    s.close()  # harmless
    for call in (lambda: s.get(core.object_hash(BOB)), lambda: s.put_objects([ALICE]),
                 s.count, s.verify, lambda: s.put_blob(b"x"), lambda: s.get_head(BOB_ID),
                 lambda: s.blob_writer(), lambda: w.write(b"x"),
                 lambda: s.write_batch([], []), lambda: s.enable_reverse_maps("Person")):
        with pytest.raises(StoreError):
            call()
    with core.Store(str(store_path)) as again:  # reopening finds the data
        assert again.get_object(core.object_hash(BOB)) == BOB


def test_batch_of_10k_objects_in_one_call(store: Any) -> None:
    objs = [keys_obj(ALICE_ID, i) for i in range(10_000)]
    res = store.put_objects(objs)
    assert len(res) == 10_000 and all(st == "new" for _, st, _ in res)
    assert len({h for h, _, _ in res}) == 10_000
    assert store.count() == 10_000
    assert len(store.referencing(ALICE_ID, "Keys")) == 10_000
    assert res[1234][0] == core.object_hash(objs[1234])
    assert store.get_object(res[9999][0]) == objs[9999]


def test_concurrent_writers_and_readers(store: Any) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                (h, _, _), = store.put_objects([keys_obj(BOB_ID, n * 1000 + i)])
                assert store.has(h)
                store.put_blob(f"{n}/{i}".encode())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count() == 400
    assert len(store.referencing(BOB_ID, "Keys")) == 200


# -- durability (docs/store-format.md "Durability") --------------------------------------


def test_store_is_durable_by_default(store: Any) -> None:
    assert store.durable is True
    store.put_objects([ALICE])
    store.sync()  # harmless on a durable store


def test_non_durable_store_round_trip_sync_and_reopen(store_path: Path) -> None:
    s = core.Store(str(store_path), durable=False)
    assert s.durable is False
    res = s.put_objects([ALICE, BOB, keys_obj(ALICE_ID)])
    assert [st for _, st, _ in res] == ["new"] * 3
    assert s.put_objects([ALICE])[0][1] == "exists"
    assert s.get(ALICE_HASH) == ALICE_MD
    s.sync()
    h_blob, _ = s.put_blob(b"123")
    s.close()  # flushes
    s.close()  # harmless
    with pytest.raises(StoreError) as e:
        s.sync()
    assert e.value.code == "LAMA-CLOSED"
    # the same bytes on disk: a durable handle (either core) reads it all back
    with core.Store(str(store_path)) as again:
        assert again.durable is True
        assert again.get(ALICE_HASH) == ALICE_MD
        assert again.get(ALICE_ID) == ALICE_ID_MD
        assert again.read_blob(h_blob) == b"123"
        assert again.referencing(ALICE_ID, "Keys") == [res[2][0]]
        assert again.verify() == []
    with RawEnv(store_path) as raw:
        assert raw.get("objects", bytes.fromhex(ALICE_HASH)) == b"O" + ALICE_MD.encode()


def test_durability_of_an_open_environment_cannot_change(store_path: Path) -> None:
    with core.Store(str(store_path), durable=False) as s:
        with pytest.raises(StoreError) as e:
            core.Store(str(store_path))
        assert e.value.code == "LAMA-DURABLE"
        with core.Store(str(store_path), durable=False) as second:  # same durability: shared
            assert second.has(ALICE_HASH) is False
            s.put_objects([ALICE])
            assert second.has(ALICE_HASH) is True
    with core.Store(str(store_path)) as durable:  # closed: may reopen either way
        assert durable.has(ALICE_HASH)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_durable_must_be_a_bool(store_path: Path, bad: Any) -> None:
    with pytest.raises(TypeError):
        core.Store(str(store_path), durable=bad)


def test_non_durable_commits_survive_a_killed_process(store_path: Path) -> None:
    """NOSYNC skips only the fsync: the OS keeps the committed pages of a process killed
    without close() or sync(), and every batch is whole."""
    script = (
        "import os, signal, sys\n"
        "from lama._core import core\n"
        "s = core.Store(sys.argv[1], durable=False)\n"
        "for b in range(5):\n"
        "    s.put_objects([{'$type$': 'Keys', 'owner': sys.argv[2], 'publicKey': f'{b * 1000 + i:064x}',\n"
        "                    'publicSignKey': f'{i:064x}'} for i in range(1000)])\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, LAMA_CORE=core.CORE_NAME,
               PYTHONPATH=str(Path(__file__).resolve().parent.parent / "python"))
    proc = subprocess.run([sys.executable, "-c", script, str(store_path), ALICE_ID],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with core.Store(str(store_path)) as s:
        assert s.count() == 5000
        assert len(s.referencing(ALICE_ID, "Keys")) == 5000
        assert s.get_object(core.object_hash(keys_obj(ALICE_ID, 4999) | {"publicSignKey": f"{999:064x}"}))
        assert s.verify() == []


def test_clob_with_a_lone_surrogate_is_stored_as_node_writes_it(store: Any) -> None:
    """A CLOB is a JavaScript string: a lone surrogate is written as U+FFFD (objects.md §2.1),
    not refused with a UnicodeEncodeError; a pair is its character."""
    import hashlib

    h, status = store.put_clob("note \ud800 and \ud83d\ude00")
    expected = "note \ufffd and \U0001f600".encode()
    assert status == "new" and h == hashlib.sha256(expected).hexdigest()
    assert store.read_blob(h) == expected
    assert store.verify() == []


@pytest.mark.parametrize("call", [
    lambda s: s.enable_reverse_maps("Ke\ud800ys"),
    lambda s: s.enable_reverse_maps("Keys", "owner"),
    lambda s: s.enable_reverse_maps("Keys", ["ow\udc00ner"]),
    lambda s: s.referencing("a" * 64, "Ke\ud800ys"),
    lambda s: s.referencing("a" * 64, 5),
    lambda s: s.put_microdata("not a list"),
    lambda s: s.put_microdata([("only one",)]),
    lambda s: s.put_microdata([(5, None)]),
    lambda s: s.put_microdata([('<div itemscope itemtype="//refin.io/Person"></div>', 5)]),
    lambda s: s.put_clob(b"bytes are not a CLOB"),
], ids=["surrogate-type", "props-str", "surrogate-prop", "referencing-surrogate", "referencing-int",
        "items-str", "item-short", "text-int", "expected-int", "clob-bytes"])
def test_malformed_store_arguments_are_lama_errors(store: Any, call: Any) -> None:
    """Bad arguments are StoreError LAMA-ARG (a lama error) in both cores, never a TypeError or
    a UnicodeEncodeError from the bindings; nothing is written."""
    with pytest.raises(StoreError) as e:
        call(store)
    assert e.value.code == "LAMA-ARG"
    assert store.count() == 0
