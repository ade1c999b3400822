"""Structural check of the LMDB file with bounds-checked reads (docs/store-format.md "Damaged
files").

LMDB keeps no checksums and follows the page numbers and node offsets it finds in its memory
map: a truncated ``data.mdb`` makes it touch pages past the end of the file (SIGBUS) and a
damaged page makes it read out of bounds (SIGSEGV), which no Python code can catch.  So before
LMDB reads anything of a snapshot, this module checks all it could reach, reading the file
through bounds-checked slices of one read-only map of its length (never past the end, never
following an offset unchecked): the meta pages, then every page of the main database, of each
named database and of the free list (page header, page number, bounds, node offsets and sizes,
key sizes, child and overflow page numbers inside the file, depth, no page reached twice, the
counts recorded in the database records, free-list entries).

The same check, with the same messages in the same order, is ``store/check.rs`` of the Rust
core; the page layout is described there.  The check stops at the first problem.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from typing import NamedTuple

PAGEHDRSZ = 16
META_SIZE = PAGEHDRSZ + 152
MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_BRANCH = 0x01
P_LEAF = 0x02
P_OVERFLOW = 0x04
P_META = 0x08
F_BIGDATA = 0x01
F_SUBDATA = 0x02
INTEGERKEY = 0x08
P_INVALID = (1 << 64) - 1
MAX_KEY = 511
MAX_DEPTH = 32
DB_REC = 48

_DB = struct.Struct("<IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
_HDR = struct.Struct("<QHHHH")  # pgno, pad, flags, lower, upper
_OVHDR = struct.Struct("<QHHI")  # pgno, pad, flags, pages
_NODE = struct.Struct("<HHHH")  # lo, hi, flags, ksize
_U64 = struct.Struct("<Q")

MISSING = "missing"
EMPTY = "empty"

MAIN, FREE, PLAIN = 0, 1, 2


class Problem(Exception):
    """The first structural problem found (its message is the problem)."""


class Meta:
    __slots__ = ("psize", "last_pg", "txnid", "free", "main")

    def __init__(self, psize: int, last_pg: int, txnid: int, free: tuple[int, ...],
                 main: tuple[int, ...]) -> None:
        self.psize = psize
        self.last_pg = last_pg
        self.txnid = txnid
        self.free = free
        self.main = main



def _map(fd: int, length: int) -> mmap.mmap | bytes:
    """The file as one read-only map (one system call instead of a ``pread`` per page: the
    walk reads every reachable page, and the calls were much of its time); read only through
    :func:`_read`, which checks every slice against the length first."""
    if length == 0:
        return b""
    try:
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise Problem(f"lmdb: cannot map data.mdb: {e}") from None


def _read(f: mmap.mmap | bytes, n: int, off: int) -> bytes:
    if off + n > len(f):
        raise Problem(f"lmdb: cannot read data.mdb at offset {off}: failed to fill whole buffer")
    return f[off:off + n]


def _parse_meta(i: int, buf: bytes) -> Meta:
    if not struct.unpack_from("<H", buf, 10)[0] & P_META:
        raise Problem(f"lmdb: page {i} is not a meta page")
    magic, version = struct.unpack_from("<II", buf, 16)
    if magic != MAGIC:
        raise Problem(f"lmdb: meta page {i} has a bad magic number")
    if version != DATA_VERSION:
        raise Problem(f"lmdb: meta page {i} has data version {version}, expected {DATA_VERSION}")
    free = _DB.unpack_from(buf, 40)
    main = _DB.unpack_from(buf, 88)
    last_pg, txnid = struct.unpack_from("<QQ", buf, 136)
    return Meta(free[0], last_pg, txnid, free, main)


def _read_metas(f: mmap.mmap | bytes, length: int, txnid: int | None) -> Meta | None:
    truncated = (f"lmdb: data.mdb is {length} bytes, too short for its meta pages: "
                 "the file is truncated")
    if length < META_SIZE:
        raise Problem(truncated)
    m0 = _parse_meta(0, _read(f, META_SIZE, 0))
    psize = m0.psize
    if psize & (psize - 1) or not 512 <= psize <= 32768:
        raise Problem(f"lmdb: meta page 0 has page size {psize}")
    if length < psize + META_SIZE:
        raise Problem(truncated)
    m1 = _parse_meta(1, _read(f, META_SIZE, psize))
    for i, m in ((0, m0), (1, m1)):
        if m.psize != psize:
            raise Problem(f"lmdb: meta page {i} has page size {m.psize}, meta page 0 {psize}")
    if txnid is None:
        m = m1 if m1.txnid > m0.txnid else m0
    else:
        found = [x for x in (m0, m1) if x.txnid == txnid]
        if not found:
            return None
        m = found[0]
    if m.last_pg < 1 or m.last_pg >= 1 << 48:
        raise Problem(f"lmdb: meta of transaction {m.txnid} has last page {m.last_pg}")
    need = (m.last_pg + 1) * psize
    if length < need:
        raise Problem(f"lmdb: data.mdb is {length} bytes but its last page {m.last_pg} ends at "
                      f"byte {need}: the file is truncated")
    if m.free[1] != INTEGERKEY or m.main[1] != 0:
        raise Problem(f"lmdb: meta of transaction {m.txnid} has database flags "
                      f"0x{m.free[1]:x}/0x{m.main[1]:x}, expected 0x8/0x0")
    return m


def inspect(directory: str) -> str | Meta:
    """Look at ``data.mdb`` before LMDB opens it: ``MISSING``, ``EMPTY`` or the meta LMDB will
    use; Problem if damaged."""
    path = os.path.join(directory, "data.mdb")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return MISSING
    except OSError as e:
        raise Problem(f"lmdb: cannot open {path}: {e}") from None
    try:
        length = os.fstat(fd).st_size
        if length == 0:
            return EMPTY
        m = _read_metas(_map(fd, length), length, None)
        assert m is not None
        return m
    finally:
        os.close(fd)


def check_snapshot(directory: str, txnid: int) -> bool:
    """Check everything reachable in the snapshot of transaction ``txnid`` (the caller holds a
    read transaction on it).  False: its meta page was overwritten by newer commits (retry
    with a new read transaction).  Problem at the first damage found."""
    path = os.path.join(directory, "data.mdb")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise Problem(f"lmdb: cannot open {path}: {e}") from None
    try:
        length = os.fstat(fd).st_size
        f = _map(fd, length)
        meta = _read_metas(f, length, txnid)
        if meta is None:
            return False
        w = _Walker(f, meta.psize, meta.last_pg)
        named: list[tuple[bytes, bytes]] = []
        w.tree("main", meta.main, MAIN, named)
        for name, rec_bytes in named:
            rec = _DB.unpack(rec_bytes)
            label = "db " + name.decode("utf-8", "replace")
            if rec[1] != 0:
                raise Problem(f"lmdb: {label} has flags 0x{rec[1]:x}, expected 0")
            w.tree(label, rec, PLAIN, None)
        free: list[tuple[int, list[int]]] = []
        w.tree("free list", meta.free, FREE, free)
        # A page listed as free must be unreachable and listed once: LMDB hands it out for new
        # data, so a live page here would be overwritten (silent loss).
        listed: set[int] = set()
        seen = w.seen
        last = w.last_pg
        for txn, pages in free:
            for p in pages:
                if p < 2 or p > last:
                    raise Problem(f"lmdb: free list of transaction {txn}: page {p} is outside "
                                  f"the data pages 2..={last}")
                if seen[p]:
                    raise Problem(f"lmdb: free list of transaction {txn}: page {p} is in use")
                if p in listed:
                    raise Problem(f"lmdb: free list of transaction {txn}: page {p} is listed "
                                  "twice")
                listed.add(p)
        return True
    finally:
        os.close(fd)


class _Walker:
    def __init__(self, f: mmap.mmap | bytes, psize: int, last_pg: int) -> None:
        self.f = f
        self.psize = psize
        self.last_pg = last_pg
        self.seen = bytearray(last_pg + 1)
        # counts of the tree being walked: branch, leaf, overflow, entries
        self.counts = [0, 0, 0, 0]

    def claim(self, db: str, p: int) -> None:
        if p < 2 or p > self.last_pg:
            raise Problem(f"lmdb: {db}: page reference {p} is outside the data pages "
                          f"2..={self.last_pg}")
        if self.seen[p]:
            raise Problem(f"lmdb: {db}: page {p} is reached twice")
        self.seen[p] = 1

    def tree(self, db: str, rec: tuple[int, ...], kind: int, out: list | None) -> None:
        _pad, _flags, depth, branch, leaf, overflow, entries, root = rec
        if root == P_INVALID:
            if depth or entries or branch or leaf or overflow:
                raise Problem(f"lmdb: {db}: empty database with non-zero counts")
            return
        if depth == 0 or depth > MAX_DEPTH:
            raise Problem(f"lmdb: {db}: depth {depth} is outside 1..={MAX_DEPTH}")
        self.counts = [0, 0, 0, 0]
        self.visit(db, root, 1, depth, kind, out)
        found = tuple(self.counts)
        recorded = (branch, leaf, overflow, entries)
        if recorded != found:
            raise Problem(
                f"lmdb: {db}: records {recorded[0]}/{recorded[1]}/{recorded[2]} "
                f"branch/leaf/overflow pages and {recorded[3]} entries, the tree holds "
                f"{found[0]}/{found[1]}/{found[2]} and {found[3]}")

    def visit(self, db: str, p: int, depth: int, max_depth: int, kind: int,
              out: list | None) -> None:
        self.claim(db, p)
        psize = self.psize
        # claim() bounded p by last_pg, and _read_metas (last_pg + 1) * psize by the length
        start = p * psize
        page = self.f[start:start + psize]
        pgno, _pad, flags, lower, upper = _HDR.unpack_from(page, 0)
        if pgno != p:
            raise Problem(f"lmdb: {db} page {p}: header says page {pgno}")
        branch = depth < max_depth
        want = P_BRANCH if branch else P_LEAF
        if flags != want:
            raise Problem(f"lmdb: {db} page {p}: flags 0x{flags:x}, expected a "
                          f"{'branch' if branch else 'leaf'} page (0x{want:x}) at depth {depth} "
                          f"of {max_depth}")
        if lower < PAGEHDRSZ or lower % 2 or lower > upper or upper > psize:
            raise Problem(f"lmdb: {db} page {p}: bad bounds lower={lower} upper={upper}")
        n = (lower - PAGEHDRSZ) // 2
        counts = self.counts
        if branch:
            counts[0] += 1
            if n == 0:
                raise Problem(f"lmdb: {db} page {p}: branch page without nodes")
        else:
            counts[1] += 1
        offsets = struct.unpack_from(f"<{n}H", page, PAGEHDRSZ)
        node = _NODE.unpack_from
        if kind == PLAIN and not branch:
            # The bulk of every store, so first one pass with the checks of the loop below
            # combined into one test per node, for the common node (flags 0, data on the
            # page): header, key and data end by psize (all sizes are unsigned, so this bounds
            # every part). Only a page where some node fails it (damage, or a big-data node)
            # is looked at again by the loop below, which words the first problem.
            limit = psize - 8
            if n > 8 and _uniform_leaf_ok(page, offsets, n, upper, psize):
                counts[3] += n
                return
            for off in offsets:
                if off < upper or off > limit:
                    break
                lo, hi, nflags, ksize = node(page, off)
                if nflags or hi or ksize > MAX_KEY or off + ksize + lo > limit:
                    break
            else:
                counts[3] += n
                return
            # The same checks as the general loop further below, in the same order, without
            # what only the main database and the free list need.
            for i, off in enumerate(offsets):
                if off < upper or off + 8 > psize:
                    raise Problem(f"lmdb: {db} page {p}: node {i} at offset {off} is outside "
                                  f"{upper}..{psize}")
                lo, hi, nflags, ksize = node(page, off)
                data_off = off + 8 + ksize
                if ksize > MAX_KEY or data_off > psize:
                    raise Problem(f"lmdb: {db} page {p}: node {i} has a key of {ksize} bytes")
                dsize = lo | (hi << 16)
                if nflags == 0:
                    if data_off + dsize > psize:
                        raise Problem(f"lmdb: {db} page {p}: node {i}: data of {dsize} bytes "
                                      "outside the page")
                elif nflags == F_BIGDATA:
                    if data_off + 8 > psize:
                        raise Problem(f"lmdb: {db} page {p}: node {i}: data outside the page")
                    counts[2] += self.overflow(db, p, i, _U64.unpack_from(page, data_off)[0],
                                               dsize)
                else:
                    raise Problem(f"lmdb: {db} page {p}: node {i} has flags 0x{nflags:x}")
            counts[3] += n
            return
        for i, off in enumerate(offsets):
            if off < upper or off + 8 > psize:
                raise Problem(f"lmdb: {db} page {p}: node {i} at offset {off} is outside "
                              f"{upper}..{psize}")
            lo, hi, nflags, ksize = node(page, off)
            if ksize > MAX_KEY or off + 8 + ksize > psize:
                raise Problem(f"lmdb: {db} page {p}: node {i} has a key of {ksize} bytes")
            if branch:
                self.visit(db, lo | (hi << 16) | (nflags << 32), depth + 1, max_depth, kind, out)
                continue
            counts[3] += 1
            dsize = lo | (hi << 16)
            data_off = off + 8 + ksize
            if kind == MAIN:
                allowed = nflags == F_SUBDATA
            else:
                allowed = nflags == 0 or nflags == F_BIGDATA
            if not allowed:
                raise Problem(f"lmdb: {db} page {p}: node {i} has flags 0x{nflags:x}")
            if kind == FREE and ksize != 8:
                raise Problem(f"lmdb: {db} page {p}: node {i} has a key of {ksize} bytes")
            if nflags == F_BIGDATA:
                if data_off + 8 > psize:
                    raise Problem(f"lmdb: {db} page {p}: node {i}: data outside the page")
                ov = _U64.unpack_from(page, data_off)[0]
                counts[2] += self.overflow(db, p, i, ov, dsize)
                data = _read(self.f, dsize, ov * psize + PAGEHDRSZ) if kind == FREE else b""
            else:
                if data_off + dsize > psize:
                    raise Problem(f"lmdb: {db} page {p}: node {i}: data of {dsize} bytes "
                                  "outside the page")
                data = page[data_off:data_off + dsize] if kind != PLAIN else b""
            if kind == MAIN:
                if dsize != DB_REC:
                    raise Problem(f"lmdb: {db} page {p}: node {i}: database record of "
                                  f"{dsize} bytes")
                assert out is not None
                out.append((page[off + 8:off + 8 + ksize], data))
            elif kind == FREE:
                txn = _U64.unpack_from(page, off + 8)[0]
                count = _U64.unpack_from(data, 0)[0] if len(data) >= 8 else None
                if len(data) % 8 or count is None or (count + 1) * 8 != len(data):
                    raise Problem(f"lmdb: free list of transaction {txn}: a list of "
                                  f"{len(data)} bytes")
                assert out is not None
                out.append((txn, list(struct.unpack_from(f"<{count}Q", data, 8))))

    def overflow(self, db: str, p: int, i: int, ov: int, dsize: int) -> int:
        at = f"lmdb: {db} page {p}: node {i}: "
        if ov < 2 or ov > self.last_pg:
            raise Problem(f"{at}overflow page {ov} is outside the data pages 2..={self.last_pg}")
        pgno, _pad, flags, pages = _OVHDR.unpack(_read(self.f, PAGEHDRSZ, ov * self.psize))
        if pgno != ov or flags != P_OVERFLOW:
            raise Problem(f"{at}page {ov} is not an overflow page")
        need = (PAGEHDRSZ - 1 + dsize) // self.psize + 1
        if pages < need or ov + pages - 1 > self.last_pg:
            raise Problem(f"{at}overflow run of {pages} pages at {ov} cannot hold {dsize} bytes")
        for q in range(ov, ov + pages):
            self.claim(db, q)
        return pages


_TILES: dict[int, struct.Struct] = {}


def _uniform_leaf_ok(page: bytes, offsets: tuple[int, ...], n: int, upper: int,
                     psize: int) -> bool:
    """True if the nodes of this leaf page all have the header of the node at ``upper`` (flags
    0, data on the page) and tile ``upper..psize`` exactly, one every ``size`` bytes (LMDB
    packs a page's nodes without gaps, each ``8 + key + data`` rounded up to even): then every
    node passes the checks of the node loop, tested for the whole page in C (``sorted``,
    ``iter_unpack``) instead of per node. Pages of fixed-size entries (``events``, most
    ``rmaps`` pages) are this way; False sends a page to the per-node tests."""
    if upper > psize - 8:
        return False
    lo, hi, nflags, ksize = _NODE.unpack_from(page, upper)
    size = 8 + ksize + lo
    size += size & 1
    if nflags or hi or ksize > MAX_KEY or psize - upper != n * size:
        return False
    if sorted(offsets) != list(range(upper, psize, size)):
        return False
    tile = _TILES.get(size)
    if tile is None:
        tile = _TILES[size] = struct.Struct(f"<Q{size - 8}x")  # the header, as one u64
    return len(set(tile.iter_unpack(page[upper:]))) == 1


class FileState(NamedTuple):
    """The state of ``data.mdb`` a check mark records (docs/store-format.md "Check mark"):
    what ``fstat`` says of the file and both meta pages as they are on disk."""

    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    dev: int
    txnid0: int
    txnid1: int
    meta_hash: bytes  # SHA-256 of the first META_SIZE bytes of meta page 0, then of meta page 1

    def newest(self) -> int:
        return max(self.txnid0, self.txnid1)


_I64 = range(-(1 << 63), 1 << 63)


def meta_state(directory: str, txnid: int | None) -> FileState | None:
    """The cheap part of the check, for an open that a matching check mark vouches for: stat
    ``data.mdb`` and check its meta pages as ``_read_metas`` does (for the snapshot of
    ``txnid``).  None: the meta page of ``txnid`` was overwritten meanwhile (retry) or the
    file cannot be described (no mark); Problem if damaged.  As ``check.rs::meta_state``."""
    path = os.path.join(directory, "data.mdb")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise Problem(f"lmdb: cannot open {path}: {e}") from None
    try:
        # stat before reading the meta pages: a commit between the two shows as a newer mtime
        # (or newer meta pages) at the next comparison, never as an old state with new pages.
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise Problem(f"lmdb: cannot stat data.mdb: {e}") from None
        length = st.st_size
        f = _map(fd, length)
        meta = _read_metas(f, length, txnid)
        if meta is None or st.st_mtime_ns not in _I64 or st.st_ctime_ns not in _I64:
            return None
        m0 = _read(f, META_SIZE, 0)
        m1 = _read(f, META_SIZE, meta.psize)
        return FileState(length, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                         _U64.unpack_from(m0, 144)[0], _U64.unpack_from(m1, 144)[0],
                         hashlib.sha256(m0 + m1).digest())
    finally:
        os.close(fd)
