"""The reserve of a durable store (docs/store-format.md "Reserve"): data.mdb is kept
zero-filled past LMDB's last page, between an eighth of the used size (at least 256 KiB) and
4 MiB, so a commit writes into blocks the file already has; nothing else about the store
changes, and the other core opens it as before."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

from lama._core import core
from lama._pure import lmdbcheck

KIB = 1024
MIN, MAX = 256 * KIB, 4096 * KIB


def _layout(path: Path) -> tuple[int, int, bytes]:
    """(used bytes, file size, the bytes past the used ones) of the store at ``path``."""
    meta = lmdbcheck.inspect(str(path))
    assert isinstance(meta, lmdbcheck.Meta), meta
    used = (meta.last_pg + 1) * meta.psize
    data = (path / "data.mdb").read_bytes()
    return used, len(data), data[used:]


def _messages(store: object, n: int, size: int, tag: str) -> list[str]:
    """``n`` commits of one ChatMessage of about ``size`` characters each."""
    out = []
    for i in range(n):
        msg = {"$type$": "ChatMessage", "text": f"{tag} {i} " + "x" * size,
               "sender": "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"}
        (h, status, _), = store.put_objects([msg])  # type: ignore[attr-defined]
        assert status == "new"
        out.append(h)
    return out


def test_a_durable_store_keeps_a_zero_filled_reserve(tmp_path: Path) -> None:
    s = core.Store(str(tmp_path / "s"))
    hashes = _messages(s, 40, 100, "small")
    s.close()
    used, size, rest = _layout(tmp_path / "s")
    # a small store: the minimum, refilled before a commit once less than half of it is left
    # (that commit's pages then come out of it)
    assert MIN // 4 <= size - used <= MIN + 4 * KIB, (used, size)
    assert rest == bytes(len(rest)), "the reserve is zeros"

    # it grows with the store (an eighth of it), stays bounded, and the store is unchanged
    s = core.Store(str(tmp_path / "s"))
    hashes += _messages(s, 300, 8000, "large")  # about 2.4 MB
    assert s.verify() == []
    s.close()
    used, size, rest = _layout(tmp_path / "s")
    assert used > 2_000_000
    target = min(max(used // 8, MIN), MAX)
    assert target // 4 <= size - used <= target + 4 * KIB, (used, size)
    assert rest == bytes(len(rest))
    s = core.Store(str(tmp_path / "s"))
    try:
        assert s.verify() == []
        assert all(s.get_object(h)["$type$"] == "ChatMessage" for h in hashes)
    finally:
        s.close()


def test_a_commit_larger_than_the_reserve_skips_the_next_refill(tmp_path: Path) -> None:
    """A commit that grows the file past the reserve's target (a bulk write: an initial sync's
    batches) writes its own pages over the zeros and has its fsync commit the journal anyway,
    so the next commit does not write zeros; a commit that fits brings the reserve back."""
    s = core.Store(str(tmp_path / "s"))
    try:
        _messages(s, 5, 100, "small")
        used0, size0, _ = _layout(tmp_path / "s")
        assert size0 - used0 >= MIN // 4
        sender = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
        bulk = [{"$type$": "ChatMessage", "text": f"bulk {i} " + "y" * 3000, "sender": sender} for i in range(400)]
        assert all(st == "new" for _h, st, _i in s.put_objects(bulk))
        used1, size1, _ = _layout(tmp_path / "s")
        assert used1 - used0 > MIN  # it grew by more than the reserve
        _messages(s, 1, 100, "after")  # no refill before this one
        used2, size2, _ = _layout(tmp_path / "s")
        assert size2 == used2, (used2, size2)
        _messages(s, 1, 100, "again")  # the last one fitted: refilled
        used3, size3, rest = _layout(tmp_path / "s")
        target = min(max(used3 // 8, MIN), MAX)
        assert target // 4 <= size3 - used3 <= target + 4 * KIB and rest == bytes(len(rest))
        assert s.verify() == []
    finally:
        s.close()


def test_a_non_durable_store_keeps_none(tmp_path: Path) -> None:
    s = core.Store(str(tmp_path / "s"), durable=False)
    _messages(s, 40, 100, "nosync")
    s.close()
    used, size, _ = _layout(tmp_path / "s")
    assert size == used


def test_a_reserve_survives_a_kill(tmp_path: Path) -> None:
    """A process killed right after its commits (the reserve written in the same transaction
    as LMDB's pages) leaves a store that opens with the full check and holds every commit."""
    import subprocess
    import sys
    script = (
        "import os, sys\n"
        "from lama._core import core\n"
        "s = core.Store(sys.argv[1])\n"
        "for i in range(200):\n"
        "    s.put_objects([{'$type$': 'ChatMessage', 'text': f'k {i} ' + 'y' * 3000,\n"
        "                    'sender': '0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152'}])\n"
        "print('done', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=120, env={**os.environ})
    assert p.stdout.strip() == "done", p.stderr
    used, size, rest = _layout(tmp_path / "s")
    assert size > used and rest == bytes(len(rest))
    s = core.Store(str(tmp_path / "s"))
    try:
        assert s.verify() == []
        assert len(_messages(s, 1, 10, "after")) == 1
    finally:
        s.close()


@pytest.mark.cross_core
@pytest.mark.parametrize("writer,reader", [("rust", "pure"), ("pure", "rust")])
def test_the_other_core_opens_and_keeps_the_reserve(
    tmp_path: Path, rust_core: ModuleType, pure_core: ModuleType, writer: str, reader: str
) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    w = cores[writer].Store(str(tmp_path / "s"))
    first = _messages(w, 100, 4000, writer)
    w.close()
    used0, size0, _ = _layout(tmp_path / "s")
    assert size0 > used0
    r = cores[reader].Store(str(tmp_path / "s"))
    try:
        assert r.verify() == []
        assert all(r.get_object(h)["text"].startswith(writer) for h in first)
        second = _messages(r, 300, 4000, reader)
    finally:
        r.close()
    used, size, rest = _layout(tmp_path / "s")
    assert used > used0 and size - used >= MIN // 4 and rest == bytes(len(rest))
    w = cores[writer].Store(str(tmp_path / "s"))
    try:
        assert w.verify() == []
        assert all(w.get_object(h)["text"].startswith(reader) for h in second)
    finally:
        w.close()
