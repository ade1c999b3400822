"""The check mark: a sidecar file ``check-mark`` in the store directory that lets an open skip
the page walk of the structural check when ``data.mdb`` is exactly as lama left it
(docs/store-format.md "Check mark"; the Rust core's ``store/mark.rs`` reads and writes the
same bytes).

Layout (136 bytes, integers little-endian): ``b"LAMAMARK"`` · u32 version (1) · u32 0 · u64
size · i64 mtime_ns · i64 ctime_ns · u64 inode · u64 device · u64 txnid of meta page 0 · u64
txnid of meta page 1 · SHA-256 of both meta pages' first 168 bytes · SHA-256 of the 104 bytes
before it.
"""

from __future__ import annotations

import hashlib
import os
import struct

from .lmdbcheck import FileState

NAME = "check-mark"
_HEAD = b"LAMAMARK" + struct.pack("<II", 1, 0)
_BODY = struct.Struct("<16sQqqQQQQ32s")
SIZE = _BODY.size + 32


def encode(s: FileState) -> bytes:
    body = _BODY.pack(_HEAD, s.size, s.mtime_ns, s.ctime_ns, s.ino, s.dev, s.txnid0, s.txnid1,
                      s.meta_hash)
    return body + hashlib.sha256(body).digest()


def decode(b: bytes) -> FileState | None:
    """The state a mark records; None for anything but a well-formed mark of this version."""
    if len(b) != SIZE or not b.startswith(_HEAD):
        return None
    body = b[:_BODY.size]
    if hashlib.sha256(body).digest() != b[_BODY.size:]:
        return None
    return FileState(*_BODY.unpack(body)[1:])


def read_raw(directory: str) -> bytes | None:
    """The raw bytes of the mark, if there is one (at most one byte more than a mark)."""
    try:
        with open(os.path.join(directory, NAME), "rb") as f:
            return f.read(SIZE + 1)
    except OSError:
        return None


def read(directory: str) -> FileState | None:
    """The state the mark of ``directory`` vouches for, if it has a valid one."""
    raw = read_raw(directory)
    return None if raw is None else decode(raw)


def write(directory: str, s: FileState) -> None:
    """Replace the mark atomically (a temporary file renamed over it).  Not fsynced:
    ``data.mdb`` was synced before this is called, so after a crash the mark is the new one,
    the old one or missing/garbled, and each of those either matches what is on disk or makes
    the next open run the full check."""
    data = encode(s)
    if read_raw(directory) == data:
        return
    tmp = os.path.join(directory, f"{NAME}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, os.path.join(directory, NAME))
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove(directory: str, sync_dir: bool) -> None:
    """Remove the mark; with ``sync_dir``, make the removal durable (fsync of the directory)
    before anything else is written."""
    try:
        os.unlink(os.path.join(directory, NAME))
    except FileNotFoundError:
        return
    if sync_dir and hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
