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
        # the extra reverse map enabled by the writer is honoured by the reader
        assert r.referencing(ALICE_ID, "ChatMessage") == [h["msg2"]]
        msg3 = {"$type$": "ChatMessage", "text": "third", "sender": ALICE_ID}
        (m3, status, _), = r.put_objects([msg3])
        assert status == "new"
        assert sorted(r.referencing(ALICE_ID, "ChatMessage")) == sorted([h["msg2"], m3])
        # the reader's writes are valid for the writer again
        assert r.put_objects([ALICE])[0][1] == "exists"
        assert r.count() == len(r.hashes())
    finally:
        r.close()
    w = cores[writer].Store(str(tmp_path / "store"))
    assert w.verify() == []
    w.close()
