"""A damaged store never crashes the process and never silently passes for a good one
(docs/store-format.md "Damaged files"): truncated and bit-flipped ``data.mdb`` files, an
empty one, a lost format record, and a store held open by the other core.

Damaged stores are opened in a child process (tests/store_probe.py), so that a crash shows
up as a negative return code, i.e. a test failure, instead of killing the test run.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lama._core import CORE_NAME, core
from lama.errors import StoreError

HERE = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent / "python"))
OTHER_CORE = "pure" if CORE_NAME == "rust" else "rust"
ALICE_ID = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def fill(path: Path, n: int = 150, big_blob: bool = True) -> None:
    """A store with objects, ID objects, heads, reverse maps, CLOBs and BLOBs (inline, some
    large enough for LMDB overflow pages, and with ``big_blob`` one chunked)."""
    with core.Store(str(path)) as s:
        people = [{"$type$": "Person", "email": f"p{i}@example.com", "name": f"P {i}"}
                  for i in range(n)]
        res = s.put_objects(people)
        msgs = [{"$type$": "ChatMessage", "text": f"m{i} " + "y" * (i % 300), "sender": ALICE_ID}
                for i in range(n)]
        s.put_objects(msgs)
        s.put_objects([{"$type$": "Access", "object": res[i][0], "person": [ALICE_ID],
                        "group": []} for i in range(0, n, 10)])
        for i in range(0, n, 15):
            edge = {"$type$": "VersionNodeEdge", "data": res[i][0], "depth": 0,
                    "creationTime": 1_700_000_000_000 + i}
            s.write_batch([edge], [(res[i][2], None, core.object_hash(edge))])
        for i in range(20):
            s.put_clob(f"clob {i} " + "z" * (i * 40))
            s.put_blob(bytes([i]) * (i * 500 + 1))
        if big_blob:
            s.put_blob(random.Random(7).randbytes((1 << 20) + 5000))


def probe(dirs: list[Path], timeout: float = 300) -> tuple[list[str], int]:
    proc = subprocess.run([sys.executable, str(HERE / "store_probe.py"), CORE_NAME,
                           *map(str, dirs)], capture_output=True, text=True, env=ENV,
                          timeout=timeout)
    return proc.stdout.splitlines(), proc.returncode


def outcomes(dirs: list[Path]) -> dict[int, str]:
    """Run the probe over ``dirs``; a crash on one store is recorded and the probe restarted
    after it.  Returns ``{index: outcome}`` (``signal N`` for a crash)."""
    result: dict[int, str] = {}
    start = 0
    while start < len(dirs):
        lines, rc = probe(dirs[start:])
        current = None
        for line in lines:
            word, idx, *rest = line.split(" ", 2)
            i = start + int(idx)
            if word == "start":
                current = i
            elif word == "done":
                result[i] = rest[0]
                current = None
            elif word == "fail":
                result[i] = "fail " + rest[0]
                current = None
        if rc == 0:
            break
        if current is None:  # failed with an exception (reported) or before starting
            assert result, f"probe failed before the first store: rc={rc} {lines}"
            start = max(result) + 1
            continue
        result[current] = f"signal {-rc}"
        start = current + 1
    return result


def meta_of(data: bytes) -> tuple[int, int]:
    """(page size, last page) of the newest meta page (store-format.md "Damaged files")."""
    psize = struct.unpack_from("<I", data, 40)[0]
    metas = [struct.unpack_from("<QQ", data, off + 136) for off in (0, psize)]
    last_pg, _txnid = max(metas, key=lambda m: m[1])
    return psize, last_pg


FRACTIONS = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]


def test_truncated_data_file_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good"
    fill(good)
    data = (good / "data.mdb").read_bytes()
    psize, last_pg = meta_of(data)
    assert len(data) == (last_pg + 1) * psize
    sizes = sorted({int(len(data) * f) for f in FRACTIONS}
                   | {len(data) - psize, len(data) - psize // 2, len(data) - 1, 100, psize + 10})
    dirs = []
    for n in sizes:
        d = tmp_path / f"cut{n}"
        d.mkdir()
        (d / "data.mdb").write_bytes(data[:n])
        dirs.append(d)
    got = outcomes(dirs)
    assert got == {i: "refused LAMA-CORRUPT" for i in range(len(dirs))}, got
    # in this process too: a StoreError that says why
    with pytest.raises(StoreError, match="truncated") as e:
        core.Store(str(dirs[len(dirs) // 2]))
    assert e.value.code == "LAMA-CORRUPT"
    # nothing was changed by the refusal: the file is still the truncated one
    assert (dirs[0] / "data.mdb").stat().st_size == sizes[0]


def test_bit_flips_never_crash(tmp_path: Path) -> None:
    """A few hundred single-bit flips across the file (half of them in B-tree and meta pages,
    where LMDB follows offsets and page numbers): each store opens, verifies and reads, or is
    refused with StoreError; never a crash and never another exception."""
    good = tmp_path / "good"
    fill(good, n=60, big_blob=False)
    data = (good / "data.mdb").read_bytes()
    psize, last_pg = meta_of(data)
    tree_pages = [p for p in range(last_pg + 1)
                  if struct.unpack_from("<H", data, p * psize + 10)[0] in (0x01, 0x02, 0x08, 0x09)
                  and struct.unpack_from("<Q", data, p * psize)[0] == p]
    assert len(tree_pages) > 20
    rng = random.Random(20261130)
    dirs = []
    flips = 240
    for i in range(flips):
        if i % 2:
            pos = rng.randrange(len(data))
        else:
            pos = rng.choice(tree_pages) * psize + rng.randrange(psize)
        d = tmp_path / f"flip{i}"
        d.mkdir()
        damaged = bytearray(data)
        damaged[pos] ^= 1 << rng.randrange(8)
        (d / "data.mdb").write_bytes(bytes(damaged))
        dirs.append(d)
    started = time.monotonic()
    got = outcomes(dirs)
    elapsed = time.monotonic() - started
    bad = {i: o for i, o in got.items()
           if not (o.startswith(("refused", "problems", "clean")))}
    assert not bad, bad
    assert len(got) == flips
    kinds = {o.split()[0] for o in got.values()}
    # the flips did damage something: some stores are refused, some are reported by verify()
    assert "refused" in kinds and "problems" in kinds, (kinds, elapsed)


def test_empty_data_file_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "store"
    fill(d, n=5, big_blob=False)
    (d / "data.mdb").write_bytes(b"")
    with pytest.raises(StoreError, match="empty data.mdb") as e:
        core.Store(str(d))
    assert e.value.code == "LAMA-FORMAT"
    assert (d / "data.mdb").stat().st_size == 0  # not silently re-created as a new store


def test_store_without_format_record_is_refused(tmp_path: Path) -> None:
    import lmdb

    d = tmp_path / "store"
    fill(d, n=5, big_blob=False)
    env = lmdb.open(str(d), max_dbs=16)
    with env.begin(write=True) as txn:
        assert txn.delete(b"format", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(StoreError, match="no format record") as e:
        core.Store(str(d))
    assert e.value.code == "LAMA-FORMAT"


def test_new_store_in_existing_empty_directory(tmp_path: Path) -> None:
    d = tmp_path / "store"
    d.mkdir()
    with core.Store(str(d)) as s:
        assert s.count() == 0 and s.verify() == []
    with core.Store(str(d)) as s:  # and it is a lama store now
        assert s.verify() == []


@pytest.mark.parametrize("holder_core", [OTHER_CORE])
def test_store_held_by_the_other_core_is_refused(tmp_path: Path, holder_core: str) -> None:
    d = tmp_path / "store"
    fill(d, n=5, big_blob=False)
    code = ("import os, sys; os.environ['LAMA_CORE'] = sys.argv[1]\n"
            "from lama._core import core\n"
            "s = core.Store(sys.argv[2]); print('ready', flush=True); sys.stdin.read(); s.close()")
    proc = subprocess.Popen([sys.executable, "-c", code, holder_core, str(d)], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError, match="other lama core") as e:
            core.Store(str(d))
        assert e.value.code == "LAMA-OTHERCORE"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    with core.Store(str(d)) as s:  # once the other process is gone, it opens
        assert s.verify() == []


# -- damaged values: every read path raises StoreError LAMA-CORRUPT ---------------------------


def _raw_put(path: Path, db: str, key: bytes, value: bytes) -> None:
    import lmdb

    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db.encode(), txn=txn))
    env.close()


def _raw_delete(path: Path, db: str, key: bytes) -> None:
    import lmdb

    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        assert txn.delete(key, db=env.open_db(db.encode(), txn=txn))
    env.close()


BAD_UTF8 = b"\xff\xfe not utf-8"


def _corrupt(call: Any) -> str:
    with pytest.raises(StoreError) as e:
        call()
    return str(e.value.code)


def test_damaged_values_raise_store_error(tmp_path: Path) -> None:
    d = tmp_path / "store"
    with core.Store(str(d)) as s:
        (p, _, pid), = s.put_objects([{"$type$": "Person", "email": "a@example.com"}])
        blob, _ = s.put_blob(os.urandom((1 << 20) + 10))
        blob2, _ = s.put_blob(os.urandom((1 << 20) + 10))
        clob, _ = s.put_clob("hello")
        edge = {"$type$": "VersionNodeEdge", "data": p, "depth": 0, "creationTime": 1}
        s.write_batch([edge], [(pid, None, core.object_hash(edge))])
    _raw_put(d, "objects", bytes.fromhex(p), b"O" + BAD_UTF8)  # bad UTF-8
    _raw_put(d, "objects", bytes.fromhex(clob), b"Zhello")  # unknown kind byte
    _raw_put(d, "objects", bytes.fromhex(blob), b"b\x00\x00")  # truncated chunked header
    _raw_delete(d, "chunks", bytes.fromhex(blob2) + (1).to_bytes(4, "big"))  # lost chunk
    _raw_put(d, "vheads", bytes.fromhex(pid), b"\x01\x02")  # malformed head
    with core.Store(str(d)) as s:
        assert _corrupt(lambda: s.get(p)) == "LAMA-CORRUPT"
        assert _corrupt(lambda: s.get_object(p)) == "LAMA-CORRUPT"
        assert _corrupt(lambda: s.kind(clob)) == "LAMA-CORRUPT"
        assert _corrupt(lambda: s.get(clob)) == "LAMA-CORRUPT"
        assert _corrupt(lambda: s.read_blob(clob)) == "LAMA-CORRUPT"
        for call in (s.read_blob, s.read_blob_chunks, s.blob_size):
            assert _corrupt(lambda: call(blob)) == "LAMA-CORRUPT"
        for call in (s.read_blob, s.read_blob_chunks):
            assert _corrupt(lambda: call(blob2)) == "LAMA-CORRUPT"
        assert _corrupt(lambda: s.get_head(pid)) == "LAMA-CORRUPT"
        assert sorted(s.verify()) == sorted([
            f"objects/{p}: content hashes to {hashlib.sha256(BAD_UTF8).hexdigest()}",
            f"objects/{clob}: unknown kind byte 0x5a",
            f"objects/{blob}: bad chunked header",
            f"chunks/{blob}00000000: chunk of no chunked BLOB/CLOB",
            f"chunks/{blob}00000001: chunk of no chunked BLOB/CLOB",
            f"objects/{blob2}: chunk 1 of 2 is missing",
            f"vheads/{pid}: malformed entry",
        ])
    # a damaged version node: write_batch refuses it with StoreError, no other exception
    d2 = tmp_path / "store2"
    with core.Store(str(d2)) as s:
        (p, _, pid), = s.put_objects([{"$type$": "Person", "email": "a@example.com"}])
        edge = {"$type$": "VersionNodeEdge", "data": p, "depth": 0, "creationTime": 1}
        (e, _, _), = s.put_objects([edge])
    _raw_put(d2, "objects", bytes.fromhex(e), b"O\xff")
    with core.Store(str(d2)) as s:
        assert _corrupt(lambda: s.write_batch([], [(pid, None, e)])) == "LAMA-HEAD"


def test_damaged_reverse_map_setting_is_store_error(tmp_path: Path) -> None:
    d = tmp_path / "store"
    with core.Store(str(d)) as s:
        s.enable_reverse_maps("ChatMessage", ["sender"])
    _raw_put(d, "meta", b"rmap.O.ChatMessage", b"\xff[not json")
    with pytest.raises(StoreError) as e:
        core.Store(str(d))
    assert e.value.code == "LAMA-CORRUPT"
    d2 = tmp_path / "store2"
    core.Store(str(d2)).close()
    _raw_put(d2, "meta", b"rmap.X.ChatMessage", b'["*"]')  # unknown map kind
    with pytest.raises(StoreError) as e:
        core.Store(str(d2))
    assert e.value.code == "LAMA-CORRUPT"


def test_open_time_check_cost_is_recorded(tmp_path: Path) -> None:
    """Not a benchmark: the structural check runs at every open, so opening a store of a few
    thousand objects must stay well under a second (docs/store-format.md records the cost for
    100k objects)."""
    d = tmp_path / "store"
    with core.Store(str(d)) as s:
        s.put_objects([{"$type$": "ChatMessage", "text": f"m{i}", "sender": ALICE_ID}
                       for i in range(5000)])
    t = time.monotonic()
    core.Store(str(d)).close()
    assert time.monotonic() - t < 1.0


@pytest.mark.parametrize("name", ["CorruptedError", "PageNotFoundError", "InvalidError"])
def test_pure_core_maps_lmdb_damage_errors_to_store_error(name: str) -> None:
    """LMDB's own damage reports (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID) from any store
    call of the pure core are StoreError LAMA-CORRUPT (the Rust core: error.rs unit test)."""
    import lmdb

    from lama._pure.store import _lmdb_errors

    @_lmdb_errors
    def call() -> None:
        raise getattr(lmdb, name)("damaged")

    with pytest.raises(StoreError) as e:
        call()
    assert e.value.code == "LAMA-CORRUPT"
