"""The check mark (docs/store-format.md "Check mark"): an open skips the page walk of the
structural check only when ``data.mdb`` is exactly as lama left it at a clean close; a file
changed since (a bit flip, a killed writer, another process's commits), a damaged mark,
``check="always"`` and ``verify()`` get the full check.

``Store.open_check`` says which check the open of a handle ran ("full", "mark", "shared").
"""

from __future__ import annotations

import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lama._core import CORE_NAME, core
from lama.errors import StoreError

HERE = Path(__file__).resolve().parent
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent / "python"))
OTHER_CORE = "pure" if CORE_NAME == "rust" else "rust"
SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
MARK_SIZE = 136


def fill(path: Path, n: int = 300) -> None:
    with core.Store(str(path)) as s:
        s.put_objects([{"$type$": "ChatMessage", "text": f"m{i} " + "y" * (i % 200),
                        "sender": SENDER} for i in range(n)])
        s.put_blob(b"b" * 5000)


def mark_bytes(path: Path) -> bytes:
    return (path / "check-mark").read_bytes()


def main_root(data: bytes) -> tuple[int, int]:
    """(root page of the main database in the newest meta page, page size); store-format.md
    "Damaged files": the main database's record is at meta offset 88, its root at +40."""
    psize = struct.unpack_from("<I", data, 40)[0]
    metas = [(struct.unpack_from("<Q", data, off + 144)[0], off) for off in (0, psize)]
    _txnid, off = max(metas)
    return struct.unpack_from("<Q", data, off + 88 + 40)[0], psize


def flip_root_page_number(path: Path) -> None:
    """Flip a bit of the page number in the header of a page the check reaches (the main
    database's root): the check reports "header says page ..."."""
    data = (path / "data.mdb").read_bytes()
    root, psize = main_root(data)
    fd = os.open(path / "data.mdb", os.O_WRONLY)
    try:
        os.pwrite(fd, bytes([data[root * psize] ^ 0x40]), root * psize)
    finally:
        os.close(fd)


def open_check_in(core_name: str, path: Path) -> str:
    """open_check of a fresh process of ``core_name`` opening ``path`` (then closing it)."""
    code = ("import os, sys; os.environ['LAMA_CORE'] = sys.argv[1]\n"
            "from lama._core import core\n"
            "s = core.Store(sys.argv[2]); print(s.open_check); s.close()\n")
    proc = subprocess.run([sys.executable, "-c", code, core_name, str(path)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_clean_close_then_reopen_skips_the_walk(tmp_path: Path) -> None:
    d = tmp_path / "s"
    s = core.Store(str(d))
    assert s.open_check == "full"  # a new store: nothing to vouch for yet
    s.close()
    assert len(mark_bytes(d)) == MARK_SIZE
    fill(d)
    with core.Store(str(d)) as s:
        assert s.open_check == "mark"
        # a second handle shares the checked environment
        with core.Store(str(d)) as s2:
            assert s2.open_check == "shared"
        assert s.count() == 301
        assert s.verify() == []
    # reading only, or writing: the mark is renewed for the state left at close
    with core.Store(str(d)) as s:
        assert s.open_check == "mark"
    assert open_check_in(CORE_NAME, d) == "mark"


def test_bit_flip_after_close_is_found_at_next_open(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    marked_mtime = struct.unpack_from("<q", mark_bytes(d), 24)[0]
    # a write in the same clock tick as the close could keep the mtime (store-format.md
    # "Check mark": what it does not protect against); a real bit flip comes later
    time.sleep(0.05)
    flip_root_page_number(d)
    assert (d / "data.mdb").stat().st_mtime_ns != marked_mtime
    with pytest.raises(StoreError, match="header says page") as e:
        core.Store(str(d))
    assert e.value.code == "LAMA-CORRUPT"
    # the refusal removed the mark; the check keeps refusing
    assert not (d / "check-mark").exists()
    with pytest.raises(StoreError, match="header says page"):
        core.Store(str(d))


def test_killed_writer_leaves_a_file_that_gets_the_full_check(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    before = mark_bytes(d)
    code = ("import os, sys; os.environ['LAMA_CORE'] = sys.argv[1]\n"
            "from lama._core import core\n"
            "s = core.Store(sys.argv[2])\n"
            "for b in range(10**9):\n"
            "    s.put_objects([{'$type$': 'ChatMessage', 'text': f'k{b} {i}', 'sender': "
            f"'{SENDER}'}} for i in range(200)])\n"
            "    print(b, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, CORE_NAME, str(d)],
                            stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        for _ in range(3):
            assert proc.stdout.readline().strip() != ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert mark_bytes(d) == before  # the killed writer did not touch it, and it no longer matches
    with core.Store(str(d)) as s:
        assert s.open_check == "full"
        assert s.verify() == []
        assert s.count() >= 301 + 3 * 200
    with core.Store(str(d)) as s:
        assert s.open_check == "mark"


def test_commits_of_another_process_are_not_vouched_for(tmp_path: Path) -> None:
    """A process closing cleanly writes a mark only for a state it checked or committed: here
    another process commits while this one holds the store open, and exits without closing."""
    d = tmp_path / "s"
    fill(d)
    s = core.Store(str(d))
    assert s.open_check == "mark"
    code = ("import os, sys; os.environ['LAMA_CORE'] = sys.argv[1]\n"
            "from lama._core import core\n"
            "s = core.Store(sys.argv[2])\n"
            f"s.put_objects([{{'$type$': 'ChatMessage', 'text': 'other', 'sender': '{SENDER}'}}])\n"
            "os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, CORE_NAME, str(d)], check=True, env=ENV,
                   timeout=120)
    s.close()
    assert open_check_in(CORE_NAME, d) == "full"
    # once this process committed on top, the newest transaction is its own again
    with core.Store(str(d)) as s:
        assert s.open_check == "mark"
        s.put_objects([{"$type$": "ChatMessage", "text": "mine", "sender": SENDER}])
    assert open_check_in(CORE_NAME, d) == "mark"


def _resum(b: bytearray) -> bytes:
    b[104:] = hashlib.sha256(bytes(b[:104])).digest()
    return bytes(b)


def test_damaged_or_foreign_marks_get_the_full_check(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    good = mark_bytes(d)
    wrong_size = bytearray(good)
    struct.pack_into("<Q", wrong_size, 16, struct.unpack_from("<Q", good, 16)[0] + 4096)
    wrong_meta = bytearray(good)
    wrong_meta[72] ^= 1
    version2 = bytearray(good)
    version2[8] = 2
    cases = {
        "garbage": b"\x00garbage" * 17,
        "empty": b"",
        "truncated": good[:-1],
        "longer": good + b"\x00",
        "bad checksum": good[:100] + bytes([good[100] ^ 1]) + good[101:],
        "wrong size, valid checksum": _resum(wrong_size),
        "wrong meta hash, valid checksum": _resum(wrong_meta),
        "version 2": _resum(version2),
    }
    for name, content in cases.items():
        (d / "check-mark").write_bytes(content)
        with core.Store(str(d)) as s:
            assert s.open_check == "full", name
            assert s.count() == 301, name
        # the clean close wrote a valid mark again
        assert mark_bytes(d) == good, name
    (d / "check-mark").unlink()
    (d / "check-mark").mkdir()  # not even a file
    with core.Store(str(d)) as s:
        assert s.open_check == "full"
    (d / "check-mark").rmdir()


def test_check_always_runs_the_walk(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    with core.Store(str(d), check="always") as s:
        assert s.open_check == "full"
        with core.Store(str(d)) as s2:
            assert s2.open_check == "shared"
        with core.Store(str(d), check="always") as s3:
            assert s3.open_check == "full"
    with core.Store(str(d), check="auto") as s:
        assert s.open_check == "mark"
    with pytest.raises(StoreError) as e:
        core.Store(str(d), check="never")
    assert e.value.code == "LAMA-OPEN"
    with pytest.raises(TypeError):
        core.Store(str(d), check=1)  # type: ignore[arg-type]


def test_verify_runs_the_walk_and_damage_found_removes_the_mark(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    s = core.Store(str(d))
    assert s.open_check == "mark"
    flip_root_page_number(d)  # damage while open: only verify() can see it
    problems = s.verify()
    assert len(problems) == 1 and "header says page" in problems[0], problems
    s.close()
    assert not (d / "check-mark").exists()
    with pytest.raises(StoreError) as e:
        core.Store(str(d))
    assert e.value.code == "LAMA-CORRUPT"


def test_non_durable_store_removes_the_mark_while_open(tmp_path: Path) -> None:
    d = tmp_path / "s"
    fill(d)
    with core.Store(str(d), durable=False) as s:
        assert s.open_check == "mark"
        assert not (d / "check-mark").exists()
        s.put_blob(b"nd")
    assert len(mark_bytes(d)) == MARK_SIZE
    with core.Store(str(d)) as s:
        assert s.open_check == "mark"
        assert s.put_blob(b"nd")[1] == "exists"  # the non-durable commit was kept


@pytest.mark.cross_core
@pytest.mark.parametrize("writer", ["rust", "pure"])
def test_mark_written_by_one_core_is_accepted_by_the_other(tmp_path: Path, writer: str) -> None:
    reader = "pure" if writer == "rust" else "rust"
    d = tmp_path / "s"
    assert open_check_in(writer, d) == "full"
    written = mark_bytes(d)
    assert open_check_in(reader, d) == "mark"
    # the reader's close renewed nothing: both cores encode the same state to the same bytes
    assert mark_bytes(d) == written
    (d / "check-mark").unlink()
    assert open_check_in(reader, d) == "full"
    assert mark_bytes(d) == written
