"""The LMDB object store of the pure-Python core (docs/store-format.md, ``lama-store-2``).

It keeps the semantics of the reference's file store (objects.md §5) in one LMDB environment
with the named databases ``meta``, ``objects``, ``chunks``, ``vheads``, ``rmaps`` and ``tmp``,
byte-for-byte the same layout as the Rust core writes with heed, so either core opens a store
written by the other:

* ONE objects, ID objects, CLOBs and BLOBs share one content-addressed, write-once namespace
  keyed by the raw 32-byte SHA-256 (objects.md §2.1-§2.4, §5.1); writing an existing hash
  changes nothing and reports ``"exists"``.
* A versioned object is stored together with its ID object (objects.md §2.2, §4.2 step 3).
* One head per ID hash in ``vheads`` (objects.md §4.1), changed only by :meth:`Store.write_batch`
  with compare-and-set, in the same transaction as the objects it points to.
* Reverse maps (objects.md §5.3) are written in the transaction of a *new* object, for the
  built-in types and for the types enabled with :meth:`Store.enable_reverse_maps` (persisted in
  ``meta``); a reference is any ``referenceTo*`` value (objects.md §6.4).
* BLOBs/CLOBs above ``CHUNK`` bytes are cut into chunks; :class:`BlobWriter` streams them
  through ``tmp`` and publishes them atomically (objects.md §2.3).

Every public call is one LMDB transaction: a failure anywhere in a batch (bad object, hash
mismatch, head conflict) aborts it whole, so nothing is half-written.  An ``lmdb.Environment``
is safe to use from several threads; the store's own state (reverse-map configuration, open
count) is guarded by a lock.  LMDB forbids opening one environment twice in a process, so
stores opened on the same directory share one environment (reference counted).
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import itertools
import json
import os
import struct
import threading
import time
import types
from typing import Any, Callable, Iterable, Literal, TypeVar, cast

import lmdb

from ..errors import (
    ConflictError,
    HashMismatchError,
    LamaError,
    MicrodataError,
    NotFoundError,
    StoreError,
)
from .microdata import (
    id_microdata,
    id_microdata_of,
    js_utf8,
    parse,
    references,
    serialize,
    type_of,
)
from . import access as _access
from . import checkmark, lmdbcheck
from .recipes import is_versioned

__all__ = ["Store", "BlobWriter", "Snapshot", "Subscription", "check_hash", "CHUNK", "FORMAT"]

FORMAT = b"lama-store-2"
# the previous format, upgraded on open (docs/store-format.md "Upgrade from lama-store-1")
FORMAT_1 = b"lama-store-1"
CHUNK = 1 << 20  # BLOB/CLOB chunk size; content of at most CHUNK bytes is stored inline
DEFAULT_MAP_SIZE = 1 << 36  # 64 GiB, sparse
STALE_TMP_MS = 3_600_000  # staged BLOB chunks older than one hour are garbage

# `objects` value kinds (first byte)
K_OBJECT = 0x4F  # 'O'
K_ID = 0x49  # 'I'
K_CLOB = 0x43  # 'C'
K_BLOB = 0x42  # 'B'
K_CLOB_CHUNKED = 0x63  # 'c'
K_BLOB_CHUNKED = 0x62  # 'b'
_K_HEAD = 0x48  # 'H': a version-head change in `events`
_EVENT_KINDS = frozenset((K_OBJECT, K_ID, K_CLOB, K_BLOB, _K_HEAD))
_KIND_NAMES = {
    K_OBJECT: "object",
    K_ID: "id",
    K_CLOB: "clob",
    K_BLOB: "blob",
    K_CLOB_CHUNKED: "clob",
    K_BLOB_CHUNKED: "blob",
}

# Built-in reverse maps (objects.md §5.3), always on, all properties; never stored in meta.
BUILTIN_OBJECT_MAPS = frozenset({"Access", "Group", "IdAccess", "Keys"})
BUILTIN_ID_MAPS = frozenset({"Access", "IdAccess", "Instance"})
VERSION_NODE_TYPES = frozenset({"VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge"})

_HEX = frozenset("0123456789abcdef")
_DB_NAMES = (b"meta", b"objects", b"chunks", b"vheads", b"rmaps", b"tmp", b"events",
             # the access index (access.py; docs/store-format.md "access index")
             b"agrants", b"amembers", b"anodes", b"aroots", b"arefs", b"aids", b"aseq", b"peers")

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

# type name -> is_versioned; a registered recipe never changes (OR-ADDR1), so caching is safe.
_versioned_cache: dict[str, bool] = {}


def _versioned(type_name: str) -> bool:
    v = _versioned_cache.get(type_name)
    if v is None:
        v = _versioned_cache[type_name] = bool(is_versioned(type_name))
    return v


def _is_hash(h: object) -> bool:
    return isinstance(h, str) and len(h) == 64 and _HEX.issuperset(h)


def _raw(h: object, what: str = "hash") -> bytes:
    """The 32 raw bytes of a lowercase hex hash (objects.md §2.1); MicrodataError
    ``LAMA-BADHASH`` (a ValueError) if malformed, as in the Rust core."""
    if not _is_hash(h):
        raise MicrodataError(
            f"LAMA-BADHASH: {what} is not a hash (64 lowercase hex characters): {h!r}", "LAMA-BADHASH"
        )
    return bytes.fromhex(h)  # type: ignore[arg-type]


def _lmdb_errors(fn: _F) -> _F:
    """Turn errors of the lmdb package into StoreError (never a bare exception)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except lmdb.MapFullError as e:
            raise StoreError(f"the store is full (map_size too small): {e}", "LAMA-STOREFULL") from e
        except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError) as e:
            raise StoreError(f"the store is damaged: {e}", "LAMA-CORRUPT") from e
        except lmdb.Error as e:
            raise StoreError(f"LMDB error: {e}", "LAMA-LMDB") from e

    return wrapper  # type: ignore[return-value]


def _prop_filter(props: frozenset[str] | None, path: str) -> bool:
    """objects.md §5.3: a path like ``a.0.b`` matches if any segment is an enabled itemprop."""
    if props is None:
        return True
    return any(seg in props for seg in path.split("."))


_HOOK_IDS = itertools.count(1)  # keys of Store._on_commit hooks
# The reserve's bounds and its zeros (docs/store-format.md "Reserve"; RESERVE_MIN/MAX in Rust).
_RESERVE_MIN = 256 << 10
_RESERVE_MAX = 4 << 20
_ZEROS = memoryview(bytes(64 << 10))


def _reserve_target(used: int) -> int:
    """The reserve kept past ``used`` bytes (docs/store-format.md "Reserve")."""
    return min(max(used // 8, _RESERVE_MIN), _RESERVE_MAX)


class _Shared:
    """One open LMDB environment and the state every Store on it shares."""

    def __init__(self, key: str, env: lmdb.Environment, dbs: dict[bytes, Any], durable: bool) -> None:
        self.key = key
        self.env = env
        self.durable = durable
        self.meta = dbs[b"meta"]
        self.objects = dbs[b"objects"]
        self.chunks = dbs[b"chunks"]
        self.vheads = dbs[b"vheads"]
        self.rmaps = dbs[b"rmaps"]
        self.tmp = dbs[b"tmp"]
        self.events = dbs[b"events"]  # the post-commit event feed (_Feed below)
        self.agrants = dbs[b"agrants"]
        self.amembers = dbs[b"amembers"]
        self.anodes = dbs[b"anodes"]
        self.aroots = dbs[b"aroots"]
        self.arefs = dbs[b"arefs"]
        self.aids = dbs[b"aids"]
        self.aseq = dbs[b"aseq"]
        self.peers = dbs[b"peers"]
        # Highest event sequence number committed in this process; subscriptions wait on
        # `cond` for it to grow (docs/core-interface.md "Event feed").
        self.cond = threading.Condition()
        self.committed = 0
        # Commit hooks (Store._on_commit), called by the committing thread after `cond`.
        self.hooks: dict[int, Callable[[int], None]] = {}
        # The types of this process's newest events (_TypeMemo; Store.changes_of).
        self.types = _TypeMemo()
        self.refs = 0
        self.lock = threading.Lock()
        # Enabled reverse maps beyond the built-ins: type -> itemprops (None = all, "*").
        # Replaced (never mutated) under `lock`, so readers need no lock.
        self.obj_maps: dict[str, frozenset[str] | None] = {t: None for t in BUILTIN_OBJECT_MAPS}
        self.id_maps: dict[str, frozenset[str] | None] = {t: None for t in BUILTIN_ID_MAPS}
        # Check mark (docs/store-format.md "Check mark"): the state of data.mdb checked at
        # open, the newest transaction this process committed (0: none, see _WriteTxn) and
        # whether a check here found damage (then the file is never vouched for).
        self.opened: lmdbcheck.FileState | None = None
        self.own_txnid = 0
        self.damaged = False
        # The reserve (docs/store-format.md "Reserve"): a write descriptor of data.mdb and
        # LMDB's page size, for a durable store; None: no reserve is kept.
        self.reserve_fd: int | None = None
        self.psize = 0
        # The last commit grew the file past the reserve's target (a bulk write): the next one
        # does not refill it (as Shared::note_growth).
        self.past_reserve = False

    def open_reserve(self) -> None:
        if not self.durable or not hasattr(os, "pwrite"):
            return
        try:
            self.reserve_fd = os.open(os.path.join(self.key, "data.mdb"), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return
        self.psize = self.env.stat()["psize"]

    def grow_reserve(self) -> None:
        """Keep data.mdb zero-filled past LMDB's last page (as Shared::grow_reserve in
        store/mod.rs): a commit then writes into blocks the file already has, and its
        fdatasync does not also commit the file system's journal for a grown file. Called in
        a write transaction before its commit, under LMDB's writer lock; a failure (a full
        disk) only leaves a smaller reserve."""
        fd = self.reserve_fd
        if fd is None:
            return
        used = (self.env.info()["last_pgno"] + 1) * self.psize
        try:
            size = os.fstat(fd).st_size
            target = _reserve_target(used)
            if size >= used + target // 2:
                return
            end = -(-(used + target) // self.psize) * self.psize
            while size < end:
                n = min(end - size, len(_ZEROS))
                size += os.pwrite(fd, _ZEROS[:n], size)
        except OSError:
            return

    def note_growth(self, before: int, after: int) -> None:
        """After a commit that moved LMDB's last page from ``before`` to ``after``: one that
        grew the file by more than the reserve's target overwrote the zeros with its own pages
        and had its fsync commit the journal anyway, so the next commit skips the refill; one
        that fits brings it back (docs/store-format.md "Reserve")."""
        if self.reserve_fd is None:
            return
        grown = max(after - before, 0) * self.psize
        self.past_reserve = grown > _reserve_target((after + 1) * self.psize)

    def close_reserve(self) -> None:
        if self.reserve_fd is not None:
            os.close(self.reserve_fd)
            self.reserve_fd = None


class _WriteTxn:
    """``env.begin(write=True)`` as a context manager (commit on success, abort on error) that
    records the id of a commit that advanced the file: the check mark vouches only for
    transactions this process committed (as ``WriteTxn`` in store/mod.rs)."""

    __slots__ = ("shared", "txn")

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared

    def __enter__(self) -> lmdb.Transaction[bytes]:
        self.txn = self.shared.env.begin(write=True)
        return self.txn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> Literal[False]:
        txn = self.txn
        if exc_type is not None:
            txn.abort()
            return False
        tid = txn.id()
        shared = self.shared
        before = shared.env.info()["last_pgno"] if shared.reserve_fd is not None else None
        if not shared.past_reserve:
            shared.grow_reserve()
        txn.commit()
        info = shared.env.info()
        if before is not None:
            shared.note_growth(before, info["last_pgno"])
        # LMDB does not advance the transaction id for a commit that wrote nothing; then the
        # id is not ours (another process may commit it next).
        if info["last_txnid"] == tid and tid > self.shared.own_txnid:
            self.shared.own_txnid = tid
        return False


def _close_env(shared: _Shared) -> None:
    """Close the environment of the last handle (a non-durable one is synced by the caller),
    then write the check mark if this process can vouch for the file as it is now
    (docs/store-format.md "Check mark"): it is the state checked at open, or its newest
    transaction is one this process committed, and no check here found damage."""
    shared.env.close()
    shared.close_reserve()
    try:
        if shared.damaged:
            checkmark.remove(shared.key, False)
            return
        now = lmdbcheck.meta_state(shared.key, None)
        if now is not None and (now == shared.opened or
                                0 != shared.own_txnid == now.newest()):
            checkmark.write(shared.key, now)
    except (OSError, lmdbcheck.Problem):
        pass  # no mark: the next open runs the full check


_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()


def _open_shared(path: str, map_size: int, durable: bool, check: str) -> tuple[_Shared, str]:
    """The environment of ``path`` and which check its open ran ("full", "mark" or
    "shared"; docs/store-format.md "Check mark")."""
    key = os.path.realpath(path)
    with _registry_lock:
        shared = _registry.get(key)
        if shared is None:
            shared, open_check = _create_shared(path, key, map_size, durable, check)
            _registry[key] = shared
        elif shared.durable != durable:
            raise StoreError(
                f"{key} is already open in this process with durable={shared.durable}", "LAMA-DURABLE"
            )
        elif check == "always":
            # the full check on the current snapshot, as the Rust core
            try:
                _checked_txn(shared.env, key).abort()
            except lmdbcheck.Problem as e:
                shared.damaged = True
                raise _damaged(key, str(e)) from None
            open_check = "full"
        else:
            open_check = "shared"
        shared.refs += 1
        return shared, open_check


def _damaged(path: str, problem: str) -> StoreError:
    return StoreError(f"the store at {path} is damaged: {problem}", "LAMA-CORRUPT")


def _preflight(path: str) -> bool:
    """Look at ``data.mdb`` before LMDB maps it (store-format.md "Damaged files").  True if
    the store may be created: no ``data.mdb`` yet or nothing ever committed to it
    (transaction 0), so a missing format record means a store being born, not a lost one."""
    for _ in range(21):
        try:
            header = lmdbcheck.inspect(path)
        except lmdbcheck.Problem as e:
            raise _damaged(path, str(e)) from None
        if header == lmdbcheck.MISSING:
            return True
        if isinstance(header, lmdbcheck.Meta):
            return header.txnid == 0
        # EMPTY: LMDB creates the file and writes its meta pages right after, under its
        # lock; give a process creating the store that moment.
        time.sleep(0.005)
    raise StoreError(
        f"the store at {path} has an empty data.mdb: it has lost its format record (and "
        "everything else); refusing to start a new store over it", "LAMA-FORMAT")


def _checked_txn(env: lmdb.Environment, path: str) -> lmdb.Transaction:
    """A read transaction whose snapshot passed the structural check of the file (done with
    plain reads before LMDB follows any page of it); lmdbcheck.Problem if damaged.  Retried
    when commits of other processes overwrote the snapshot's meta page meanwhile (its pages
    stay protected by the read transaction)."""
    for _ in range(1000):
        txn = env.begin()
        try:
            if lmdbcheck.check_snapshot(path, txn.id()):
                return txn
        except BaseException:
            txn.abort()
            raise
        txn.abort()
    raise StoreError("the store changes too fast to check a snapshot", "LAMA-LMDB")


def _checked_open_txn(env: lmdb.Environment, path: str,
                      check: str) -> tuple[lmdbcheck.FileState | None, str]:
    """``_checked_txn`` at the open of the environment: with ``check="auto"`` and a check mark
    that matches the file exactly (stat and both meta pages, the snapshot being the newest
    transaction), only the meta checks run.  Returns the state checked (for the mark written
    at close) and which check ran; lmdbcheck.Problem if damaged.  As
    ``checked_open_snapshot`` in store/mod.rs."""
    if check == "auto":
        marked = checkmark.read(path)
        if marked is not None:
            for _ in range(1001):
                with env.begin() as txn:
                    tid = txn.id()
                    now = lmdbcheck.meta_state(path, tid)
                if now is None:
                    continue
                if now == marked and now.newest() == tid:
                    return now, "mark"
                break
    for _ in range(1001):
        checked = _checked_txn(env, path)
        try:
            tid = checked.id()
            # The state vouched for at close must be the one checked: taken while the
            # snapshot is held and only if no commit came after it.
            now = lmdbcheck.meta_state(path, tid)
        finally:
            checked.abort()
        if now is not None and now.newest() == tid:
            return now, "full"
    return None, "full"


def _create_shared(path: str, key: str, map_size: int, durable: bool,
                   check: str) -> tuple[_Shared, str]:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store directory {path!r}: {e}", "LAMA-OPEN") from e
    creatable = _preflight(key)
    try:
        # durable=False is LMDB's MDB_NOSYNC: no fsync at commit, still atomic and consistent;
        # durable=True is MDB_NOMETASYNC: the data pages are fsynced at commit, the meta page
        # is written without its own sync and flushed by the next commit's fsync, sync() or the
        # close (an OS crash may undo the last commit, never damage the file; a killed process
        # loses nothing), as the Rust core (docs/store-format.md "Durability").
        env = lmdb.open(path, max_dbs=16, map_size=map_size, subdir=True, sync=durable,
                        metasync=False)
    except lmdb.VersionMismatchError as e:
        # The data file's version was checked by _preflight, so this is the lock file: it is
        # in use by the other core's LMDB build (store-format.md "Both cores").
        raise StoreError(
            f"the store at {key} is open in another process that uses the other lama core "
            "(the Rust and the pure core bundle LMDB builds whose lock files differ); close it "
            "there or use the same core", "LAMA-OTHERCORE") from e
    except (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError) as e:
        raise _damaged(key, str(e)) from e
    except lmdb.Error as e:
        raise StoreError(f"cannot open the store at {path!r}: {e}", "LAMA-OPEN") from e
    try:
        try:
            opened, open_check = _checked_open_txn(env, key, check)
        except lmdbcheck.Problem as e:
            try:
                checkmark.remove(key, False)
            except OSError:
                pass
            raise _damaged(key, str(e)) from None
        if not durable:
            # Commits without fsync may reach the disk in any order, pages before the meta
            # page and the new mtime (docs/store-format.md "Check mark"): the mark must be gone
            # for good before the first of them.
            try:
                checkmark.remove(key, True)
            except OSError as e:
                raise StoreError(f"cannot remove the check mark of {key}: {e}",
                                 "LAMA-OPEN") from e
        own = 0
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn) for name in _DB_NAMES}
            fmt = txn.get(b"format", db=dbs[b"meta"])
            if fmt is None and creatable:
                txn.put(b"format", FORMAT, db=dbs[b"meta"])
            elif fmt is None:
                raise StoreError(
                    f"the store at {key} has data but no format record (meta \"format\"): it is "
                    "not a lama store or it lost its format record", "LAMA-FORMAT")
            elif fmt != FORMAT and fmt != FORMAT_1:
                raise StoreError(
                    f"{path!r} is a store of format {fmt!r}, expected {FORMAT.decode()!r}",
                    "LAMA-FORMAT",
                )
            _delete_stale_tmp(txn, dbs[b"tmp"])
            # the store's identity (docs/store-format.md "meta"): 16 random bytes, created at
            # the first open, also for a store created before it existed
            if txn.get(b"store_id", db=dbs[b"meta"]) is None:
                txn.put(b"store_id", os.urandom(16).hex().encode(), db=dbs[b"meta"])
            # a store created before the event feed gets sequence numbers for what it holds
            _upgrade_feed(txn, dbs)
            last = _last_seq(txn, dbs[b"events"])
            # a store created before the access index gets it built from its grants
            shared = _Shared(key, env, dbs, durable)
            if fmt == FORMAT_1:
                # a format-1 store: its access index is rebuilt in the layout of format 2
                _access.clear(shared, txn)
                txn.put(b"format", FORMAT, db=dbs[b"meta"])
            _access.upgrade(shared, txn, last)
            own = txn.id()
        # as _WriteTxn: the id is ours only if the commit wrote something
        shared.committed = last
        shared.opened = opened
        shared.own_txnid = own if env.info()["last_txnid"] == own else 0
        _load_rmap_config(shared)
        shared.open_reserve()
        return shared, open_check
    except BaseException as e:
        env.close()
        if isinstance(e, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)):
            raise _damaged(key, str(e)) from e
        if isinstance(e, lmdb.Error):
            raise StoreError(f"cannot open the store at {path!r}: {e}", "LAMA-OPEN") from e
        raise


def _delete_stale_tmp(txn: lmdb.Transaction, tmp_db: Any) -> None:
    """Drop staged chunks of writers that died more than an hour ago (store-format.md)."""
    cutoff = int(time.time() * 1000) - STALE_TMP_MS
    cur = txn.cursor(db=tmp_db)
    if not cur.first():
        return
    while True:
        k = cur.key()
        if not k or int.from_bytes(k[:8], "big") >= cutoff:
            return
        if not cur.delete():
            return


def _load_rmap_config(shared: _Shared) -> None:
    obj_maps = dict(shared.obj_maps)
    id_maps = dict(shared.id_maps)
    with shared.env.begin() as txn:
        cur = txn.cursor(db=shared.meta)
        prefix = b"rmap."
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                try:
                    name = k.decode("utf-8")
                except UnicodeDecodeError:
                    raise StoreError(f"bad reverse-map setting {k!r} in meta",
                                     "LAMA-CORRUPT") from None
                kind, _, type_name = name[len("rmap."):].partition(".")
                target = obj_maps if kind == "O" else id_maps if kind == "I" else None
                if target is None:
                    raise StoreError(f"bad reverse-map setting {name!r} in meta", "LAMA-CORRUPT")
                if not type_name or type_name in target and target[type_name] is None:
                    continue
                try:
                    props = json.loads(v.decode("utf-8"))
                    if not isinstance(props, list) or not all(isinstance(p, str) for p in props):
                        raise ValueError(props)
                except ValueError:  # also UnicodeDecodeError, json.JSONDecodeError
                    raise StoreError(f"bad reverse-map setting {name!r} in meta",
                                     "LAMA-CORRUPT") from None
                target[type_name] = None if "*" in props else frozenset(props)
    shared.obj_maps = obj_maps
    shared.id_maps = id_maps


class _Prepared:
    """An object serialized and hashed outside the transaction (all checks done)."""

    __slots__ = ("raw", "data", "kind", "type_name", "text", "id_raw", "id_data", "id_text")

    def __init__(
        self,
        raw: bytes,
        data: bytes,
        kind: bytes,
        type_name: str,
        text: str,
        id_raw: bytes | None = None,
        id_data: bytes | None = None,
        id_text: str | None = None,
    ) -> None:
        self.raw = raw
        self.data = data  # kind byte + UTF-8 microdata
        self.kind = kind
        self.type_name = type_name
        self.text = text
        self.id_raw = id_raw
        self.id_data = id_data
        self.id_text = id_text


class Store:
    """A lama store (docs/core-interface.md "Store", docs/store-format.md)."""

    _path: str
    _durable: bool
    _open_check: str
    _lock: threading.Lock
    _shared: _Shared | None

    # ``__new__`` rather than ``__init__``: the constructor as the stub (a pyclass) has it.
    def __new__(
        cls, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE, durable: bool = True,
        check: str = "auto",
    ) -> Store:
        self = super().__new__(cls)
        self._path = os.fspath(path)
        if not isinstance(map_size, int) or isinstance(map_size, bool) or map_size <= 0:
            raise StoreError(f"map_size must be a positive int, got {map_size!r}", "LAMA-OPEN")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, got {type(durable).__name__}")
        if not isinstance(check, str):
            raise TypeError(f"check must be a str, got {type(check).__name__}")
        if check not in ("auto", "always"):
            raise StoreError(f'check must be "auto" or "always", got {check!r}', "LAMA-OPEN")
        self._durable = durable
        self._lock = threading.Lock()
        self._shared, self._open_check = _open_shared(self._path, map_size, durable, check)
        return self

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._shared is None

    @property
    def durable(self) -> bool:
        """False if opened with ``durable=False`` (LMDB NOSYNC)."""
        return self._durable

    @property
    def open_check(self) -> str:
        """Which structural check the open of this handle ran: "full" (the page walk),
        "mark" (a valid check mark matched the file: meta checks only) or "shared" (the
        environment was already open in this process).  docs/store-format.md "Check mark"."""
        return self._open_check

    @_lmdb_errors
    def sync(self) -> None:
        """Flush every committed transaction to disk (fsync)."""
        self._s().env.sync(True)

    def close(self) -> None:
        """Close the store (flushing it first); closing twice is harmless.
        Later calls raise StoreError."""
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is None:
            return
        with _registry_lock:
            try:
                # a non-durable store's commits, a durable one's last meta page (NOMETASYNC)
                shared.env.sync(True)
            except lmdb.Error as e:
                raise StoreError(f"cannot flush the store {self._path!r}: {e}", "LAMA-LMDB") from e
            finally:
                shared.refs -= 1
                if shared.refs == 0:
                    _registry.pop(shared.key, None)
                    _close_env(shared)

    def __enter__(self) -> Store:
        self._s()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: types.TracebackType | None = None,
    ) -> Literal[False]:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "closed" if self._shared is None else "open"
        return f"<lama._pure.Store {self._path!r} {state}>"

    def _s(self) -> _Shared:
        shared = self._shared
        if shared is None:
            raise StoreError(f"the store {self._path!r} is closed", "LAMA-CLOSED")
        return shared

    # -- objects and ID objects -----------------------------------------------------------

    def _prepare_objects(self, objs: Iterable[dict[str, Any]]) -> list[_Prepared]:
        if not isinstance(objs, (list, tuple)):
            raise StoreError(f"expected a list of objects, got {type(objs).__name__}", "LAMA-ARG")
        sha = hashlib.sha256
        out: list[_Prepared] = []
        append = out.append
        for obj in objs:
            text = serialize(obj)  # MicrodataError / RecipeError for a bad object
            try:
                data = text.encode()  # (js_utf8's common case, without a call per object)
            except UnicodeEncodeError:
                data = js_utf8(text)  # lone surrogates as U+FFFD, like Node (objects.md §2.1)
            type_name = obj["$type$"]
            if _versioned(type_name):
                id_text = id_microdata(obj)
                id_data = js_utf8(id_text)
                append(_Prepared(sha(data).digest(), b"O" + data, b"O", type_name, text,
                                 sha(id_data).digest(), b"I" + id_data, id_text))
            else:
                append(_Prepared(sha(data).digest(), b"O" + data, b"O", type_name, text))
        return out

    def _prepare_texts(self, texts: list[tuple[str, str]]) -> list[_Prepared]:
        """``(type, microdata)`` of unversioned objects serialized by the caller (the chat
        post's objects, lama._pure.chatpost): the items ``_prepare_objects`` makes of them."""
        sha = hashlib.sha256
        out: list[_Prepared] = []
        for type_name, text in texts:
            if _versioned(type_name):
                raise StoreError(f"{type_name} is versioned: write it as an object", "LAMA-ARG")
            try:
                data = text.encode()
            except UnicodeEncodeError:
                data = js_utf8(text)
            out.append(_Prepared(sha(data).digest(), b"O" + data, b"O", type_name, text))
        return out

    def _write_prepared(
        self, shared: _Shared, txn: lmdb.Transaction, items: list[_Prepared], feed: _Feed
    ) -> list[tuple[str, str, str | None]]:
        objects_db = shared.objects
        rmaps_db = shared.rmaps
        obj_maps = shared.obj_maps
        id_maps = shared.id_maps
        put = txn.put
        results: list[tuple[str, str, str | None]] = []
        append = results.append
        event = feed.pending.append  # feed order: input order, object then its ID object
        typed = feed.types.append  # with its type (an ID object's is its object's): _TypeMemo
        for p in items:
            new = put(p.raw, p.data, overwrite=False, db=objects_db)
            t = p.type_name
            if new:
                event(p.raw + p.kind)
                typed(t)
                maps = id_maps if p.kind == b"I" else obj_maps
                if t in maps:
                    self._put_rmaps(txn, rmaps_db, p.text, t, maps[t], p.kind, p.raw)
            id_hex: str | None = None
            if p.id_raw is not None:
                id_hex = p.id_raw.hex()
                id_new = put(p.id_raw, cast(bytes, p.id_data), overwrite=False, db=objects_db)
                if id_new:
                    event(p.id_raw + b"I")
                    typed(t)
                if id_new and t in id_maps:
                    self._put_rmaps(txn, rmaps_db, p.id_text, t, id_maps[t], b"I", p.id_raw)
            append((p.raw.hex(), "new" if new else "exists", id_hex))
        return results

    @staticmethod
    def _put_rmaps(
        txn: lmdb.Transaction,
        rmaps_db: Any,
        text: str | None,
        type_name: str,
        props: frozenset[str] | None,
        map_kind: bytes,
        source: bytes,
    ) -> None:
        """Reverse-map entries ``target ‖ kind ‖ Type ‖ 0 ‖ source`` (store-format.md)."""
        assert text is not None
        tail = map_kind + type_name.encode("utf-8") + b"\x00" + source
        for path, _kind, target in references(text):
            if _prop_filter(props, path):
                txn.put(bytes.fromhex(target) + tail, b"", db=rmaps_db)

    @_lmdb_errors
    def put_objects(self, objs: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
        """Serialize, hash and store each object (and the ID object of a versioned one) in one
        transaction; reverse maps for new objects.  Returns ``[(hash, status, id_hash)]``."""
        shared = self._s()
        items = self._prepare_objects(objs)
        feed = _Feed(shared)
        with _WriteTxn(shared) as txn:
            results = self._write_prepared(shared, txn, items, feed)
            feed.flush(txn)
        feed.publish()
        return results

    @_lmdb_errors
    def put_microdata(
        self, items: list[tuple[str, str | None]]
    ) -> list[tuple[str, str, str | None]]:
        """Store received microdata verbatim (objects.md §9.23) after verifying every hash and
        parsing every text; nothing is written unless all items are valid.  An ID object text
        is stored as an ID object (its third result is None); a versioned object also stores
        its ID object, whose hash is the third result."""
        return self._put_microdata(items, ())[0]

    def _put_microdata_forward(
        self, items: list[tuple[str, str | None]], forward: list[tuple[str, str]],
        mark: tuple[str, int] | None = None,
    ) -> tuple[list[tuple[str, str, str | None]], list[str]]:
        """The pure importer's last commit of a pass (the Rust core's
        ``Store::put_verified_batch``): ``put_microdata``, and in the same transaction the
        head of each ``(id_hash, node)`` of ``forward`` becomes ``node`` when that is a
        fast-forward - ``node`` is a stored version node of that ID and the ID has no head or
        the head is one of its parents - and, with ``mark = (peer, m)``, the peer mark of
        ``peer`` becomes ``m`` (docs/chum-fastpath.md "The mark in a push's commit"). Returns
        the results and the ID hashes moved."""
        return self._put_microdata(items, forward, mark)

    @_lmdb_errors
    def _put_microdata(
        self, items: list[tuple[str, str | None]], forward: Iterable[tuple[str, str]],
        mark: tuple[str, int] | None = None,
    ) -> tuple[list[tuple[str, str, str | None]], list[str]]:
        shared = self._s()
        marked = None if mark is None else (_access.check_peer(mark[0]),
                                            _count_arg(mark[1], "mark"))
        if not isinstance(items, (list, tuple)):
            raise StoreError(f"expected a list of (text, hash), got {type(items).__name__}",
                             "LAMA-ARG")
        sha = hashlib.sha256
        prepared: list[_Prepared] = []
        for item in items:
            try:
                text, expected = item
            except (TypeError, ValueError):
                raise StoreError(f"expected a (text, hash) pair, got {item!r}", "LAMA-ARG") from None
            if not isinstance(text, str):
                raise StoreError(f"microdata must be a str, got {type(text).__name__}", "LAMA-ARG")
            if expected is not None and not isinstance(expected, str):
                raise StoreError(f"an expected hash must be a str or None, got {expected!r}",
                                 "LAMA-ARG")
            data = js_utf8(text)  # lone surrogates as U+FFFD, like Node (objects.md §2.1)
            raw = sha(data).digest()
            if expected is not None and expected != raw.hex():
                raise HashMismatchError(
                    f"microdata hashes to {raw.hex()}, expected {expected}", "LAMA-HASH"
                )
            type_name, is_id = type_of(text)
            if is_id or not _versioned(type_name):
                parse(text)  # full check: known type, well formed (MicrodataError/RecipeError)
                id_text = None
            else:
                id_text = id_microdata_of(text)  # parses the whole text first
            if is_id:
                prepared.append(_Prepared(raw, b"I" + data, b"I", type_name, text))
                continue
            if id_text is None:
                prepared.append(_Prepared(raw, b"O" + data, b"O", type_name, text))
            else:
                id_data = js_utf8(id_text)
                prepared.append(_Prepared(raw, b"O" + data, b"O", type_name, text,
                                          sha(id_data).digest(), b"I" + id_data, id_text))
        fwd = [(id_hash, _raw(id_hash, "id_hash"), _raw(node, "node")) for id_hash, node in forward]
        moved: list[str] = []
        feed = _Feed(shared)
        with _WriteTxn(shared) as txn:
            results = self._write_prepared(shared, txn, prepared, feed)
            base: int | None = None
            for id_hash, id_raw, node_raw in fwd:
                current = txn.get(id_raw, db=shared.vheads)
                if current == node_raw or not _fast_forwards(shared, txn, id_raw, node_raw, current):
                    continue
                txn.put(id_raw, node_raw, db=shared.vheads)
                feed.push(id_raw, b"H")
                if base is None:
                    base = _last_seq(txn, shared.events)
                _access.head_moved(shared, txn, id_raw, node_raw, base + len(feed.pending))
                moved.append(id_hash)
            if marked is not None:
                txn.put(marked[0], marked[1].to_bytes(8, "big"), db=shared.peers)
            feed.flush(txn)
        feed.publish()
        return results, moved

    def _get_entry(self, h: str) -> bytes | None:
        raw = _raw(h)
        shared = self._s()
        with shared.env.begin() as txn:
            return txn.get(raw, db=shared.objects)

    @_lmdb_errors
    def get(self, hash: str) -> str:
        """The microdata of a ONE object or ID object; NotFoundError SB-READ2 if missing."""
        v = self._get_entry(hash)
        if v is None:
            raise NotFoundError(f"object {hash!r} not found", "SB-READ2")
        if v[0:1] not in (b"O", b"I"):
            raise NotFoundError(f"{hash} is a {_kind_name(hash, v)}, not a ONE object", "SB-READ2")
        try:
            return v[1:].decode("utf-8")
        except UnicodeDecodeError:
            raise StoreError(f"object {hash} is not UTF-8", "LAMA-CORRUPT") from None

    def get_object(self, hash: str) -> dict[str, Any]:
        return parse(self.get(hash))

    @_lmdb_errors
    def has(self, hash: str) -> bool:
        return self._get_entry(hash) is not None

    @_lmdb_errors
    def kind(self, hash: str) -> str | None:
        """``"object" | "id" | "clob" | "blob"``, or None if not stored."""
        v = self._get_entry(hash)
        return None if v is None else _kind_name(hash, v)

    # -- BLOB / CLOB ------------------------------------------------------------------------

    @_lmdb_errors
    def put_blob(self, data: bytes) -> tuple[str, str]:
        """Store a BLOB (objects.md §2.3); ``(hash, "new"|"exists")``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StoreError(f"a BLOB must be bytes, got {type(data).__name__}", "LAMA-ARG")
        return self._put_content(bytes(data), clob=False)

    @_lmdb_errors
    def put_clob(self, text: str) -> tuple[str, str]:
        """Store a CLOB (UTF-8 text, objects.md §2.3); empty text is refused (SB-STORE)."""
        if not isinstance(text, str):
            raise StoreError(f"a CLOB must be a str, got {type(text).__name__}", "LAMA-ARG")
        if not text:
            raise StoreError("an empty CLOB cannot be stored", "SB-STORE")
        # a JavaScript string: a lone surrogate is stored as Node writes it (U+FFFD)
        return self._put_content(js_utf8(text), clob=True)

    def _put_content(self, data: bytes, clob: bool) -> tuple[str, str]:
        shared = self._s()
        raw = hashlib.sha256(data).digest()
        feed = _Feed(shared)
        with _WriteTxn(shared) as txn:
            if txn.get(raw, db=shared.objects) is not None:
                return raw.hex(), "exists"
            feed.push(raw, b"C" if clob else b"B")
            if len(data) <= CHUNK:
                txn.put(raw, (b"C" if clob else b"B") + data, db=shared.objects)
            else:
                mv = memoryview(data)
                n = 0
                for off in range(0, len(data), CHUNK):
                    txn.put(raw + n.to_bytes(4, "big"), mv[off:off + CHUNK], db=shared.chunks)
                    n += 1
                txn.put(raw, _chunked_header(clob, len(data), n), db=shared.objects)
            feed.flush(txn)
        feed.publish()
        return raw.hex(), "new"

    def blob_writer(self, clob: bool = False) -> BlobWriter:
        """A streaming writer for a BLOB (or a CLOB with ``clob=True``)."""
        return BlobWriter._create(self, bool(clob))

    @staticmethod
    def _content_entry(txn: lmdb.Transaction, shared: _Shared, h: str) -> bytes:
        v = cast("bytes | None", txn.get(_raw(h), db=shared.objects))
        if v is None:
            raise NotFoundError(f"BLOB/CLOB {h!r} not found", "SB-READ2")
        if v[0:1] not in (b"B", b"C", b"b", b"c"):
            raise NotFoundError(f"{h} is a {_kind_name(h, v)}, not a BLOB or CLOB", "SB-READ2")
        if v[0] in (K_BLOB_CHUNKED, K_CLOB_CHUNKED):
            _parse_chunked_header(h, v)
        return cast(bytes, v)

    @staticmethod
    def _chunks(txn: lmdb.Transaction, shared: _Shared, h: str, v: bytes) -> list[bytes]:
        if v[0] in (K_BLOB, K_CLOB):
            return [v[1:]]
        size, count = _parse_chunked_header(h, v)
        raw = bytes.fromhex(h)
        out = []
        for i in range(count):
            c = txn.get(raw + i.to_bytes(4, "big"), db=shared.chunks)
            if c is None:
                raise StoreError(f"chunk {i} of {h} is missing", "LAMA-CORRUPT")
            out.append(cast(bytes, c))
        if sum(map(len, out)) != size:
            raise StoreError(f"the chunks of {h} hold {sum(map(len, out))} bytes, its header "
                             f"says {size}", "LAMA-CORRUPT")
        return out

    @_lmdb_errors
    def read_blob(self, hash: str) -> bytes:
        """The bytes of a BLOB or CLOB (NotFoundError SB-READ2 if missing)."""
        return b"".join(self.read_blob_chunks(hash))

    @_lmdb_errors
    def read_blob_chunks(self, hash: str) -> list[bytes]:
        """The stored chunks of a BLOB/CLOB in order (one for inline content)."""
        shared = self._s()
        with shared.env.begin() as txn:
            return self._chunks(txn, shared, hash, self._content_entry(txn, shared, hash))

    @_lmdb_errors
    def read_blob_range(self, hash: str, offset: int, max: int) -> bytes:
        """Up to ``max`` bytes of a BLOB/CLOB from byte ``offset``, never across a stored
        chunk's end; empty at or past the end. One read transaction per call, so a large BLOB
        is read in bounded memory (docs/core-interface.md)."""
        offset = _count_arg(offset, "offset")
        max = _count_arg(max, "max")
        shared = self._s()
        with shared.env.begin() as txn:
            v = self._content_entry(txn, shared, hash)
            if v[0] in (K_BLOB, K_CLOB):
                return bytes(v[1 + offset:1 + offset + max]) if offset < len(v) - 1 else b""
            size, count = _parse_chunked_header(hash, v)
            if offset >= size:
                return b""
            i = offset // CHUNK
            if i >= count:
                raise StoreError(f"chunk {i} of {hash} is missing", "LAMA-CORRUPT")
            c = txn.get(bytes.fromhex(hash) + i.to_bytes(4, "big"), db=shared.chunks)
            if c is None:
                raise StoreError(f"chunk {i} of {hash} is missing", "LAMA-CORRUPT")
            want = min(size - i * CHUNK, CHUNK)
            if len(c) != want:
                raise StoreError(f"chunk {i} of {hash} holds {len(c)} bytes, its header says "
                                 f"{want}", "LAMA-CORRUPT")
            start = offset - i * CHUNK
            return bytes(c[start:start + max])

    @_lmdb_errors
    def blob_size(self, hash: str) -> int:
        shared = self._s()
        with shared.env.begin() as txn:
            v = self._content_entry(txn, shared, hash)
        if v[0] in (K_BLOB, K_CLOB):
            return len(v) - 1
        return _parse_chunked_header(hash, v)[0]

    # -- version heads + atomic batch -----------------------------------------------------

    @_lmdb_errors
    def get_head(self, id_hash: str) -> str | None:
        """The hash of the head version node of ``id_hash`` (objects.md §4.1), or None."""
        raw = _raw(id_hash, "ID hash")
        shared = self._s()
        with shared.env.begin() as txn:
            v = txn.get(raw, db=shared.vheads)
        if v is not None and len(v) != 32:
            raise StoreError(f"the head of {id_hash} is malformed", "LAMA-CORRUPT")
        return None if v is None else v.hex()

    @_lmdb_errors
    def write_batch(
        self, objs: list[dict[str, Any]], heads: list[tuple[str, str | None, str]]
    ) -> list[tuple[str, str, str | None]]:
        """One transaction: store ``objs`` like put_objects, then move each head with
        compare-and-set.  If a current head differs from its expected value: ConflictError
        LAMA-CONFLICT and nothing at all is written.  A new head must be a version node stored
        in the store or in this batch."""
        return self._write_batch(self._prepare_objects(objs), heads)

    @_lmdb_errors
    def _write_batch(
        self, items: list[_Prepared], heads: list[tuple[str, str | None, str]]
    ) -> list[tuple[str, str, str | None]]:
        """:meth:`write_batch` of prepared items."""
        shared = self._s()
        if not isinstance(heads, (list, tuple)):
            raise StoreError(f"expected a list of heads, got {type(heads).__name__}", "LAMA-ARG")
        checked: list[tuple[str, bytes, bytes | None, bytes]] = []
        for head in heads:
            try:
                id_hash, expected, new_head = head
            except (TypeError, ValueError):
                raise StoreError(f"expected (id_hash, expected, new_head), got {head!r}",
                                 "LAMA-ARG") from None
            checked.append((
                id_hash,
                _raw(id_hash, "id_hash"),
                None if expected is None else _raw(expected, "expected head"),
                _raw(new_head, "new head"),
            ))
        feed = _Feed(shared)
        with _WriteTxn(shared) as txn:
            results = self._write_prepared(shared, txn, items, feed)
            base: int | None = None  # the last sequence number before this transaction
            for id_hash, id_raw, expected_raw, new_raw in checked:
                current = txn.get(id_raw, db=shared.vheads)
                if current != expected_raw:
                    raise ConflictError(
                        f"head of {id_hash} is {current.hex() if current else None}, "
                        f"expected {expected_raw.hex() if expected_raw else None}",
                        "LAMA-CONFLICT",
                    )
                if not _is_version_node(txn.get(new_raw, db=shared.objects)):
                    raise StoreError(f"new head {new_raw.hex()} of {id_hash} is not a stored "
                                     "version node", "LAMA-HEAD")
                if current != new_raw:
                    txn.put(id_raw, new_raw, db=shared.vheads)
                    feed.push(id_raw, b"H")
                    # the access index follows grant heads and granted IDs (access.py), under
                    # the sequence number the feed gives this head event at flush
                    if base is None:
                        base = _last_seq(txn, shared.events)
                    _access.head_moved(shared, txn, id_raw, new_raw, base + len(feed.pending))
            feed.flush(txn)
        feed.publish()
        return results

    # -- reverse maps ---------------------------------------------------------------------

    @_lmdb_errors
    def enable_reverse_maps(
        self, type_name: str, props: list[str] | None = None, id_objects: bool = False
    ) -> None:
        """Enable reverse maps of ``type_name`` for ``props`` (None = all properties), for
        objects or (``id_objects=True``) ID objects; persisted in ``meta`` and added to what is
        already enabled (objects.md §5.3).  Objects already stored get their entries at once
        (one pass over ``objects`` when the setting changes), so a map is always complete."""
        shared = self._s()
        if not _is_text(type_name) or not type_name or "\x00" in type_name:
            raise StoreError(f"invalid type name {type_name!r}", "LAMA-ARG")
        if props is not None:
            if isinstance(props, str) or not all(_is_text(p) for p in props):
                raise StoreError(f"props must be a list of str or None, got {props!r}", "LAMA-ARG")
            wanted: frozenset[str] | None = None if "*" in props else frozenset(props)
        else:
            wanted = None
        kind = "I" if id_objects else "O"
        with shared.lock:
            maps = shared.id_maps if id_objects else shared.obj_maps
            if type_name in maps:
                old = maps[type_name]
                if old is None:
                    return
                merged = None if wanted is None else old | wanted
                if merged == old:
                    return  # nothing new: no write transaction (no fsync)
            else:
                merged = wanted
            value = ["*"] if merged is None else sorted(merged)
            key = f"rmap.{kind}.{type_name}".encode("utf-8")
            old_props = maps.get(type_name, frozenset())
            with _WriteTxn(shared) as txn:
                txn.put(key, json.dumps(value, separators=(",", ":")).encode("utf-8"),
                        db=shared.meta)
                # The map is complete from now on: the objects of this type stored before it
                # was enabled get their entries in the same transaction (store-format.md
                # "Write rules"; one pass over `objects`, only when the setting changes).
                self._backfill_rmaps(txn, shared, type_name, kind.encode(), merged, old_props)
            new_maps = dict(maps)
            new_maps[type_name] = merged
            if id_objects:
                shared.id_maps = new_maps
            else:
                shared.obj_maps = new_maps

    @staticmethod
    def _backfill_rmaps(txn: lmdb.Transaction, shared: _Shared, type_name: str, kind: bytes,
                        props: frozenset[str] | None, old: frozenset[str] | None) -> None:
        entries = []
        for h, v in txn.cursor(db=shared.objects):
            if v[:1] != kind or len(h) != 32:
                continue
            try:
                text = bytes(v[1:]).decode("utf-8")
                if type_of(text)[0] != type_name:
                    continue
                refs = references(text)
            except (UnicodeDecodeError, LamaError):
                continue  # a damaged entry is left out; verify() reports it
            tail = kind + type_name.encode("utf-8") + b"\x00" + bytes(h)
            for path, _kind, target in refs:
                if _prop_filter(props, path) and not (old is None or _prop_filter(old, path)):
                    entries.append(bytes.fromhex(target) + tail)
        for k in entries:
            txn.put(k, b"", db=shared.rmaps)

    @_lmdb_errors
    def referencing(self, target: str, type_name: str, id_objects: bool = False) -> list[str]:
        """Hashes of the ``type_name`` objects (ID objects with ``id_objects=True``) whose
        reverse map entries reference ``target`` (objects.md §5.3)."""
        shared = self._s()
        if not _is_text(type_name):
            raise StoreError(f"invalid type name {type_name!r}", "LAMA-ARG")
        prefix = (_raw(target, "target") + (b"I" if id_objects else b"O")
                  + type_name.encode("utf-8") + b"\x00")
        out: list[str] = []
        with shared.env.begin() as txn:
            cur = txn.cursor(db=shared.rmaps)
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    if len(k) == len(prefix) + 32:
                        out.append(k[len(prefix):].hex())
        return out

    # -- reads for the sync layer and the event feed (project issue 6) --------------------

    def snapshot(self) -> Snapshot:
        """A consistent read view as of now (docs/core-interface.md "Snapshot")."""
        return Snapshot._create(self._s())

    @_lmdb_errors
    def missing(self, hashes: list[str]) -> list[str]:
        """The hashes of ``hashes`` that are not stored (objects, ID objects, BLOBs, CLOBs), in
        input order, duplicates kept; one read transaction."""
        raws = _hash_list(hashes)
        shared = self._s()
        with shared.env.begin() as txn:
            return _missing(shared, txn, raws)

    @_lmdb_errors
    def children(self, hash: str) -> list[str]:
        """chum.md §5.3 children of an object or ID object (see :func:`_children`)."""
        raw = _raw(hash)
        shared = self._s()
        with shared.env.begin() as txn:
            return _children(shared, txn, raw)

    @_lmdb_errors
    def version_nodes(self, id_hash: str) -> list[str]:
        """The version nodes of ``id_hash``, newest first (see :func:`_version_nodes`)."""
        raw = _raw(id_hash, "ID hash")
        shared = self._s()
        with shared.env.begin() as txn:
            return _version_nodes(shared, txn, raw)

    @_lmdb_errors
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 if none)."""
        shared = self._s()
        with shared.env.begin() as txn:
            return _last_seq(txn, shared.events)

    @_lmdb_errors
    def changes(self, since: int, limit: int) -> list[tuple[int, str, str]]:
        """Up to ``limit`` events ``(seq, hash, kind)`` with ``seq > since``, in commit order."""
        since = _count_arg(since, "since")
        limit = _count_arg(limit, "limit")
        shared = self._s()
        with shared.env.begin() as txn:
            return _changes(txn, shared.events, since, limit)

    @_lmdb_errors
    def changes_of(self, types: Any, since: int, limit: int) -> tuple[int, list[tuple[int, str, str]]]:
        """``(position, events)``: of the (at most ``limit``) events with ``seq > since``, those
        of objects, ID objects and heads (the ID object's type) whose type is in ``types``;
        ``position`` = the last event scanned (``since`` if none), where the next call starts
        (issue 10, the typed change feed)."""
        wanted = _types_arg(types)
        since = _count_arg(since, "since")
        limit = _count_arg(limit, "limit")
        shared = self._s()
        with shared.env.begin() as txn:
            return _changes_of(txn, shared, since, limit, wanted)

    def subscribe(self) -> Subscription:
        """Events committed from now on, by any handle of this directory in this process."""
        return Subscription._create(self._s())

    def commit_signal(self) -> CommitSignal:
        """A :class:`CommitSignal`: a file descriptor made readable right after every commit
        of this process (issue 10: an event loop reads the feed without a thread hop)."""
        return CommitSignal._create(self)

    def _on_commit(self, hook: Callable[[int], None]) -> Callable[[], None]:
        """Call ``hook(seq)`` in the committing thread after every commit of this process that
        appended events (``seq``: its last event), until the returned function is called. The
        hook must not block or write (a waker). The Rust core's ``Store::on_commit``; not part
        of the Python interface (the session driver uses it)."""
        shared = self._s()
        key = next(_HOOK_IDS)
        shared.hooks[key] = hook

        def remove() -> None:
            shared.hooks.pop(key, None)

        return remove

    # -- access index (docs/chum-session.md §1; access.py) ---------------------------------

    @_lmdb_errors
    def accessible_roots(
        self, person: str, since: int = 0
    ) -> tuple[int, list[tuple[str, str, str | None, str]]]:
        """``(mark, roots)``: the write sequence at the read, and the roots accessible to
        ``person`` now that became accessible after sequence ``since`` (0: all), each
        ``(kind, hash, id_hash, type_name)``, deduplicated by hash, in the order they became
        accessible (docs/chum-session.md §1)."""
        raw = _raw(person, "person")
        since = _count_arg(since, "since")
        shared = self._s()
        with shared.env.begin() as txn:
            return _access.accessible_roots(shared, txn, raw, since, _last_seq(txn, shared.events))

    @property
    @_lmdb_errors
    def store_id(self) -> str:
        """This store's identity: 32 hex digits, random, fixed at its first open."""
        shared = self._s()
        with shared.env.begin() as txn:
            raw = txn.get(b"store_id", db=shared.meta)
        return bytes(raw).decode() if raw is not None else ""

    @_lmdb_errors
    def peer_mark(self, peer: str) -> int:
        """The high-water mark stored for ``peer`` (0 if never set)."""
        raw = _access.check_peer(peer)
        shared = self._s()
        with shared.env.begin() as txn:
            return _access.peer_mark(shared, txn, raw)

    @_lmdb_errors
    def set_peer_mark(self, peer: str, mark: int) -> None:
        """Store the high-water mark of ``peer`` (one write transaction)."""
        raw = _access.check_peer(peer)
        mark = _count_arg(mark, "mark")
        shared = self._s()
        with _WriteTxn(shared) as txn:
            txn.put(raw, mark.to_bytes(8, "big"), db=shared.peers)

    # -- inventory and verification -------------------------------------------------------

    @_lmdb_errors
    def count(self) -> int:
        """Entries in ``objects`` (objects, ID objects, BLOBs, CLOBs)."""
        shared = self._s()
        with shared.env.begin() as txn:
            return int(txn.stat(shared.objects)["entries"])

    @_lmdb_errors
    def hashes(self) -> list[str]:
        shared = self._s()
        with shared.env.begin() as txn:
            return [k.hex() for k in txn.cursor(db=shared.objects).iternext(values=False)]

    @_lmdb_errors
    def verify(self) -> list[str]:
        """Re-read and re-hash everything (store-format.md "verify()"); the problems found.

        One check per table, in this order, each in key order: the structural check of the
        LMDB file (lmdbcheck; if it finds damage nothing else is read, since LMDB could crash
        on it), then ``objects``, ``chunks``, ``vheads``, ``rmaps``.  The messages are the Rust
        core's word for word (store/verify.rs)."""
        shared = self._s()
        try:
            txn = _checked_txn(shared.env, shared.key)
        except lmdbcheck.Problem as e:
            shared.damaged = True
            return [str(e)]
        try:
            problems: list[str] = []
            _check_objects(shared, txn, problems)
            _check_chunks(shared, txn, problems)
            _check_vheads(shared, txn, problems)
            _check_rmaps(shared, txn, problems)
            _check_events(shared, txn, problems)
            _access.check_index(shared, txn, _last_seq(txn, shared.events), problems)
            return problems
        finally:
            txn.abort()


def _check_microdata(text: str, kind: int) -> str | None:
    """The microdata check of an ``O``/``I`` entry: None if fine."""
    try:
        _type_name, is_id = type_of(text)
    except LamaError as e:
        return f"not ONE microdata ({e.code})"
    if is_id != (kind == K_ID):
        stored = "an ID object" if kind == K_ID else "an object"
        actual = "an ID object" if is_id else "an object"
        return f"stored as {stored} but the microdata is {actual}"
    try:
        parse(text)
    except LamaError as e:
        return f"not ONE microdata ({e.code})"
    return None


def _check_entry(shared: _Shared, txn: lmdb.Transaction, h: bytes, v: bytes) -> str | None:
    """The problem of one ``objects`` entry, if any."""
    if not v:
        return "empty value"
    kind = v[0]
    payload = v[1:]
    if kind in (K_OBJECT, K_ID, K_CLOB, K_BLOB):
        digest = hashlib.sha256(payload).digest()
        if digest != h:
            return f"content hashes to {digest.hex()}"
        if kind in (K_CLOB, K_BLOB) and len(payload) > CHUNK:
            return f"inline content of {len(payload)} bytes (more than {CHUNK})"
        if kind == K_BLOB:
            return None
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return "text is not UTF-8"
        if kind == K_CLOB:
            return "empty CLOB" if not text else None
        return _check_microdata(text, kind)
    if kind in (K_CLOB_CHUNKED, K_BLOB_CHUNKED):
        if len(v) != 13:
            return "bad chunked header"
        size, count = int.from_bytes(v[1:9], "big"), int.from_bytes(v[9:13], "big")
        if size <= CHUNK or -(-size // CHUNK) != count:
            return f"chunked header says {size} bytes in {count} chunks"
        hasher = hashlib.sha256()
        dec = codecs.getincrementaldecoder("utf-8")()
        utf8_ok = True
        for i in range(count):
            c = txn.get(h + i.to_bytes(4, "big"), db=shared.chunks)
            if c is None:
                return f"chunk {i} of {count} is missing"
            expected = CHUNK if i + 1 < count else size - (count - 1) * CHUNK
            if len(c) != expected:
                return f"chunk {i} has {len(c)} bytes, expected {expected}"
            hasher.update(c)
            if kind == K_CLOB_CHUNKED and utf8_ok:
                try:
                    dec.decode(c)
                except UnicodeDecodeError:
                    utf8_ok = False
        if hasher.digest() != h:
            return f"content hashes to {hasher.hexdigest()}"
        if kind == K_CLOB_CHUNKED:
            if utf8_ok:
                try:
                    dec.decode(b"", final=True)
                except UnicodeDecodeError:
                    utf8_ok = False
            if not utf8_ok:
                return "text is not UTF-8"
        return None
    return f"unknown kind byte 0x{kind:02x}"


def _check_objects(shared: _Shared, txn: lmdb.Transaction, problems: list[str]) -> None:
    """``objects``: each value hashes to its key and is well formed for its kind."""
    for k, v in txn.cursor(db=shared.objects):
        if len(k) != 32:
            problems.append(f"objects/{k.hex()}: key is not a 32-byte hash")
            continue
        p = _check_entry(shared, txn, cast(bytes, k), cast(bytes, v))
        if p is not None:
            problems.append(f"objects/{k.hex()}: {p}")


def _check_chunks(shared: _Shared, txn: lmdb.Transaction, problems: list[str]) -> None:
    """``chunks``: each chunk belongs to a chunked ``objects`` entry (index below its count)."""
    for k in txn.cursor(db=shared.chunks).iternext(values=False):
        owned = False
        if len(k) == 36:
            v = txn.get(k[:32], db=shared.objects)
            owned = (v is not None and len(v) == 13 and v[0] in (K_BLOB_CHUNKED, K_CLOB_CHUNKED)
                     and int.from_bytes(k[32:], "big") < int.from_bytes(v[9:13], "big"))
        if not owned:
            problems.append(f"chunks/{k.hex()}: chunk of no chunked BLOB/CLOB")


def _fast_forwards(shared: _Shared, txn: lmdb.Transaction, id_raw: bytes, node_raw: bytes,
                   head: bytes | None) -> bool:
    """True if ``node_raw`` is a stored version node of the ID ``id_raw`` whose parents include
    ``head`` (or there is no head): moving the head to it is a fast-forward."""
    got = txn.get(node_raw, db=shared.objects)
    entry = None if got is None else bytes(got)
    if entry is None or not _is_version_node(entry):
        return False
    try:
        refs = references(entry[1:].decode("utf-8"))
    except (LamaError, UnicodeDecodeError):
        return False
    head_hex = None if head is None else bytes(head).hex()
    data = None
    parent = head is None
    for path, kind, h in refs:
        if kind != "obj":
            continue
        if path == "data":
            data = h
        elif (path == "prev" or path.startswith("nodes.")) and h == head_hex:
            parent = True
    if not parent or data is None:
        return False
    d = txn.get(bytes.fromhex(data), db=shared.objects)
    if not d or d[0] != K_OBJECT:
        return False
    try:
        id_md = id_microdata_of(bytes(d[1:]).decode("utf-8"))
    except (LamaError, UnicodeDecodeError):
        return False
    return id_md is not None and hashlib.sha256(js_utf8(id_md)).digest() == bytes(id_raw)


def _is_version_node(node: bytes | None) -> bool:
    """True if ``node`` (an ``objects`` value) is a version node (objects.md §4.1)."""
    if not node or node[0] != K_OBJECT:
        return False
    try:
        type_name, is_id = type_of(node[1:].decode("utf-8"))
    except (LamaError, UnicodeDecodeError):
        return False
    return not is_id and type_name in VERSION_NODE_TYPES


def _check_vheads(shared: _Shared, txn: lmdb.Transaction, problems: list[str]) -> None:
    """``vheads``: each value is a stored version node (objects.md §4.1)."""
    for k, v in txn.cursor(db=shared.vheads):
        if len(k) != 32 or len(v) != 32:
            problems.append(f"vheads/{k.hex()}: malformed entry")
        elif not _is_version_node(cast("bytes | None", txn.get(v, db=shared.objects))):
            problems.append(f"vheads/{k.hex()}: head {v.hex()} is not a stored version node")


def _check_rmaps(shared: _Shared, txn: lmdb.Transaction, problems: list[str]) -> None:
    """``rmaps``: each key is ``target ‖ O|I ‖ type ‖ 0 ‖ referrer``, the referrer stored."""
    for k in txn.cursor(db=shared.rmaps).iternext(values=False):
        n = len(k)
        well_formed = n >= 32 + 1 + 1 + 1 + 32 and k[32] in (K_OBJECT, K_ID) and k[n - 33] == 0
        if well_formed:
            try:
                well_formed = "\x00" not in bytes(k[33:n - 33]).decode("utf-8")
            except UnicodeDecodeError:
                well_formed = False
        if not well_formed:
            problems.append(f"rmaps/{k.hex()}: malformed key")
        elif txn.get(k[-32:], db=shared.objects) is None:
            problems.append(f"rmaps/{k.hex()}: referencing {k[-32:].hex()} is not stored")


def _check_events(shared: _Shared, txn: lmdb.Transaction, problems: list[str]) -> None:
    """``events``: sequence numbers 1, 2, 3, ... without a gap, each value ``hash ‖ kind`` with a
    known kind, naming a stored entry (object kinds) or an ID that has a head (``H``)."""
    expected = 1
    for k, v in txn.cursor(db=shared.events):
        kx = bytes(k).hex()
        if len(k) != 8:
            problems.append(f"events/{kx}: malformed entry")
            continue
        seq = int.from_bytes(k, "big")
        if seq != expected:
            problems.append(f"events/{kx}: sequence number {seq} where {expected} was expected")
        expected = seq + 1
        if len(v) != 33 or v[32] not in _EVENT_KINDS:
            problems.append(f"events/{kx}: malformed entry")
            continue
        h, kind = bytes(v[:32]), v[32]
        if kind == _K_HEAD:
            if txn.get(h, db=shared.vheads) is None:
                problems.append(f"events/{kx}: {h.hex()} has no head")
        elif txn.get(h, db=shared.objects) is None:
            problems.append(f"events/{kx}: {h.hex()} is not stored")


def _is_text(v: object) -> bool:
    """A ``str`` that is text: type names and properties are names, so a lone surrogate in one
    is a bad argument (LAMA-ARG), not a UnicodeEncodeError from deep inside."""
    if not isinstance(v, str):
        return False
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _chunked_header(clob: bool, size: int, count: int) -> bytes:
    return (b"c" if clob else b"b") + size.to_bytes(8, "big") + count.to_bytes(4, "big")


def _parse_chunked_header(h: str, v: bytes) -> tuple[int, int]:
    if len(v) != 13:
        raise StoreError(f"chunked entry {h} has a bad header", "LAMA-CORRUPT")
    return int.from_bytes(v[1:9], "big"), int.from_bytes(v[9:13], "big")


def _kind_name(h: str, v: bytes) -> str:
    """The kind of an ``objects`` value; StoreError LAMA-CORRUPT for a damaged one (the kind
    byte is not one of store-format.md "objects values")."""
    name = _KIND_NAMES.get(v[0]) if v else None
    if name is None:
        raise StoreError(f"entry {h} has an unknown kind byte", "LAMA-CORRUPT")
    return name


class BlobWriter:
    """Streams a BLOB/CLOB into the store (objects.md §2.3, store-format.md "Write rules").

    Full chunks are staged in ``tmp`` (each flush its own transaction) while the content is
    hashed; :meth:`finish` publishes the object in one transaction and drops the staging, and
    :meth:`abort` just drops the staging.  Nothing is visible before ``finish``.
    """

    _store: Store
    _clob: bool
    _lock: threading.Lock
    _hash: Any  # hashlib's sha256 object
    _buf: bytearray
    _size: int
    _staged: int  # number of chunks in tmp
    _prefix: bytes
    _done: bool
    _utf8: codecs.IncrementalDecoder | None

    # Made by Store.blob_writer() only, as the native BlobWriter (no public constructor).
    @classmethod
    def _create(cls, store: Store, clob: bool = False) -> BlobWriter:
        store._s()
        self = cls.__new__(cls)
        self._store = store
        self._clob = clob
        self._lock = threading.Lock()
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._size = 0
        self._staged = 0  # number of chunks in tmp
        self._prefix = int(time.time() * 1000).to_bytes(8, "big") + os.urandom(8)
        self._done = False
        self._utf8 = codecs.getincrementaldecoder("utf-8")() if clob else None
        return self

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: types.TracebackType | None = None,
    ) -> Literal[False]:
        if not self._done:
            self.abort()
        return False

    def _tmp_key(self, i: int) -> bytes:
        return self._prefix + i.to_bytes(4, "big")

    def _check_open(self) -> _Shared:
        if self._done:
            raise StoreError("this BlobWriter is already finished or aborted", "LAMA-WRITER")
        return self._store._s()

    @_lmdb_errors
    def write(self, chunk: bytes) -> None:
        """Append bytes; every full ``CHUNK`` is staged in ``tmp`` in its own transaction."""
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise StoreError(f"BlobWriter.write needs bytes, got {type(chunk).__name__}",
                             "LAMA-ARG")
        with self._lock:
            shared = self._check_open()
            if self._utf8 is not None:
                try:
                    self._utf8.decode(chunk)
                except UnicodeDecodeError as e:
                    self._abort_locked(shared)
                    raise StoreError(f"a CLOB must be UTF-8: {e}", "SB-STORE") from e
            self._hash.update(chunk)
            self._size += len(chunk)
            self._buf += chunk
            if len(self._buf) >= CHUNK:
                mv = memoryview(self._buf)
                n = len(self._buf) // CHUNK
                with _WriteTxn(shared) as txn:
                    for j in range(n):
                        txn.put(self._tmp_key(self._staged + j), mv[j * CHUNK:(j + 1) * CHUNK],
                                db=shared.tmp)
                mv.release()
                self._staged += n
                del self._buf[: n * CHUNK]

    @_lmdb_errors
    def finish(self, expected_hash: str | None = None) -> tuple[str, str]:
        """Publish the content; ``(hash, "new"|"exists")``.  HashMismatchError LAMA-HASH if it
        does not hash to ``expected_hash``, StoreError SB-STORE for an empty CLOB; in both
        cases nothing is stored and the writer is spent."""
        with self._lock:
            shared = self._check_open()
            raw = self._hash.digest()
            if expected_hash is not None and expected_hash != raw.hex():
                self._abort_locked(shared)
                raise HashMismatchError(
                    f"content hashes to {raw.hex()}, expected {expected_hash}", "LAMA-HASH"
                )
            if self._clob:
                try:
                    assert self._utf8 is not None
                    self._utf8.decode(b"", final=True)
                except UnicodeDecodeError as e:
                    self._abort_locked(shared)
                    raise StoreError(f"a CLOB must be UTF-8: {e}", "SB-STORE") from e
                if self._size == 0:
                    self._abort_locked(shared)
                    raise StoreError("an empty CLOB cannot be stored", "SB-STORE")
            feed = _Feed(shared)
            with _WriteTxn(shared) as txn:
                staged = [txn.pop(self._tmp_key(i), db=shared.tmp) for i in range(self._staged)]
                if any(c is None for c in staged):
                    raise StoreError("staged chunks of this BlobWriter vanished", "LAMA-CORRUPT")
                if txn.get(raw, db=shared.objects) is not None:
                    status = "exists"
                elif self._size <= CHUNK:
                    content = b"".join(staged) + bytes(self._buf)  # type: ignore[arg-type]
                    txn.put(raw, (b"C" if self._clob else b"B") + content, db=shared.objects)
                    status = "new"
                else:
                    n = 0
                    for c in cast("list[bytes]", staged):
                        txn.put(raw + n.to_bytes(4, "big"), c, db=shared.chunks)
                        n += 1
                    if self._buf:
                        txn.put(raw + n.to_bytes(4, "big"), bytes(self._buf), db=shared.chunks)
                        n += 1
                    txn.put(raw, _chunked_header(self._clob, self._size, n), db=shared.objects)
                    status = "new"
                if status == "new":
                    feed.push(raw, b"C" if self._clob else b"B")
                feed.flush(txn)
            feed.publish()
            self._done = True
            self._buf = bytearray()
            return raw.hex(), status

    @_lmdb_errors
    def abort(self) -> None:
        """Drop everything written so far; aborting a spent writer does nothing."""
        with self._lock:
            if self._done:
                return
            shared = self._store._shared
            if shared is None:  # store closed: the staged chunks expire (cleaned at open)
                self._done = True
                self._buf = bytearray()
                return
            self._abort_locked(shared)

    def _abort_locked(self, shared: _Shared) -> None:
        self._done = True
        self._buf = bytearray()
        if self._staged:
            with _WriteTxn(shared) as txn:
                for i in range(self._staged):
                    txn.delete(self._tmp_key(i), db=shared.tmp)


# -- hash validation ------------------------------------------------------------------------


def check_hash(value: object, what: str = "hash") -> str:
    """``value`` if it is a ``str`` of exactly 64 lowercase hex characters (objects.md §2.1),
    else MicrodataError ``LAMA-BADHASH`` naming ``what`` (docs/core-interface.md).  Nothing
    else passes: no trailing newline (which a ``^...$`` regexp lets through), no uppercase, no
    whitespace, no non-``str``."""
    if not _is_hash(value):
        raise MicrodataError(
            f"LAMA-BADHASH: {what} is not a hash (64 lowercase hex characters): {value!r}",
            "LAMA-BADHASH",
        )
    return cast(str, value)


def _hash_list(values: object) -> list[bytes]:
    if not isinstance(values, (list, tuple)):
        raise StoreError(f"expected a list of hashes, got {type(values).__name__}", "LAMA-ARG")
    return [_raw(v) for v in values]


def _count_arg(value: object, what: str) -> int:
    """A non-negative ``int`` (not ``bool``), else StoreError LAMA-ARG (as the Rust core)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 1 << 64:
        raise StoreError(f"{what} must be an int >= 0, got {value!r}", "LAMA-ARG")
    return value


# -- the event feed (docs/store-format.md "events") -----------------------------------------

_FEED_KINDS = {ord("O"): "object", ord("I"): "id", ord("C"): "clob", ord("B"): "blob",
               ord("H"): "head"}
_FEED_KIND_OF_ENTRY = {K_OBJECT: b"O", K_ID: b"I", K_CLOB: b"C", K_BLOB: b"B",
                       K_CLOB_CHUNKED: b"C", K_BLOB_CHUNKED: b"B"}
_META_EVENTS = b"events"
_SEQ_KEY = struct.Struct(">Q").pack  # an events key: u64 big-endian sequence number


class _Feed:
    """The events one write transaction appends, in that transaction (so the feed shows every
    committed write and nothing else, even after a crash).  :meth:`push` collects them and
    :meth:`flush`, the last step inside the transaction, numbers them from the largest key + 1
    and writes them with one ``putmulti(append=True)`` (``MDB_APPEND``: keys only grow), which
    keeps the per-object cost on the batch path to a list append."""

    __slots__ = ("shared", "pending", "types", "last")

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.pending: list[bytes] = []
        # the type name of each event (None: a head, a BLOB/CLOB), for this process's
        # _TypeMemo after the commit; appended with each pending event
        self.types: list[str | None] = []
        self.last = 0

    def push(self, raw: bytes, kind: bytes) -> None:
        self.pending.append(raw + kind)
        self.types.append(None)

    def flush(self, txn: lmdb.Transaction) -> None:
        pending = self.pending
        if not pending:
            return
        first = _last_seq(txn, self.shared.events) + 1
        cur = txn.cursor(db=self.shared.events)
        # keys packed by map() in C: a generator of int.to_bytes calls cost as much per event
        # as LMDB's append itself
        cur.putmulti(zip(map(_SEQ_KEY, range(first, first + len(pending))), pending),
                     append=True)
        self.last = first + len(pending) - 1
        self.pending = []

    def publish(self) -> None:
        """After the commit: wake this process's subscriptions."""
        if self.last:
            shared = self.shared
            shared.types.record(self.last - len(self.types) + 1, self.types)
            with shared.cond:
                if self.last > shared.committed:
                    shared.committed = self.last
                shared.cond.notify_all()
            # in the committing thread, no hop through a watcher thread (issue 10)
            for hook in list(shared.hooks.values()):
                hook(self.last)


def _last_seq(txn: lmdb.Transaction, events_db: Any) -> int:
    cur = txn.cursor(db=events_db)
    if not cur.last():
        return 0
    k = cur.key()
    if len(k) != 8:
        raise StoreError(f"malformed events key {bytes(k).hex()}", "LAMA-CORRUPT")
    return int.from_bytes(k, "big")


def _changes(txn: lmdb.Transaction, events_db: Any, since: int, limit: int) -> list[tuple[int, str, str]]:
    out: list[tuple[int, str, str]] = []
    if limit == 0 or since + 1 >= 1 << 64:
        return out
    cur = txn.cursor(db=events_db)
    if not cur.set_range((since + 1).to_bytes(8, "big")):
        return out
    for k, v in cur:
        kind = _FEED_KINDS.get(v[32]) if len(v) == 33 and len(k) == 8 else None
        if kind is None:
            raise StoreError(f"malformed events entry {bytes(k).hex()}", "LAMA-CORRUPT")
        out.append((int.from_bytes(k, "big"), bytes(v[:32]).hex(), kind))
        if len(out) >= limit:
            break
    return out


def _types_arg(types: Any) -> frozenset[str]:
    if not isinstance(types, (list, tuple, set, frozenset)):
        raise StoreError(f"types must be a list, tuple or set of str, got {type(types).__name__}",
                         "LAMA-ARG")
    for t in types:
        if not isinstance(t, str):
            raise StoreError(f"a type name must be a str, got {type(t).__name__}", "LAMA-ARG")
    return frozenset(types)


_TYPE_PREFIXES = (b'<div itemscope itemtype="//refin.io/',
                  b'<div data-id-object="true" itemscope itemtype="//refin.io/')


def _changes_of(txn: lmdb.Transaction, shared: _Shared, since: int, limit: int,
                types: frozenset[str]) -> tuple[int, list[tuple[int, str, str]]]:
    """The typed feed: the type of an ``object``/``id`` event is its stored header's, of a
    ``head`` event its ID object's; BLOB/CLOB events never match. The ``object``/``id`` events
    this process committed recently take their type from its _TypeMemo: no read of the object
    (the connection manager's endpoint scan and the chat feed on a receiver, issue 10)."""
    if limit == 0 or since + 1 >= 1 << 64:
        return since, []
    known_from, known = shared.types.slice(since + 1, limit)
    n_known = len(known)
    out = []
    objects = shared.objects
    cur = txn.cursor(db=shared.events)
    if not cur.set_range((since + 1).to_bytes(8, "big")):
        return since, []
    seq = since
    n = 0
    for k, v in cur:
        if len(v) != 33 or len(k) != 8 or v[32] not in _FEED_KINDS:
            raise StoreError(f"malformed events entry {bytes(k).hex()}", "LAMA-CORRUPT")
        seq = int.from_bytes(k, "big")
        n += 1
        kb = v[32]
        if kb == 0x4F or kb == 0x49:  # 'O', 'I': typed by this process's memo if it has them
            i = seq - known_from
            if 0 <= i < n_known:
                t = known[i]
                if t is not None:
                    if t in types:
                        out.append((seq, bytes(v[:32]).hex(), _FEED_KINDS[kb]))
                    if n >= limit:
                        break
                    continue
        if kb == 0x4F or kb == 0x49 or kb == 0x48:  # else (and heads) by the stored header
            e = v[:32]
            ov = txn.get(bytes(e), db=objects)
            if ov and ov[0] in (K_OBJECT, K_ID):
                head = bytes(ov[1:220])
                for prefix in _TYPE_PREFIXES:
                    if head.startswith(prefix):
                        end = head.find(b'"', len(prefix))
                        if end > 0 and head[len(prefix):end].decode("utf-8", "replace") in types:
                            out.append((seq, bytes(e).hex(), _FEED_KINDS[kb]))
                        break
        if n >= limit:
            break
    return seq, out


_TYPE_MEMO_EVENTS = 1 << 16  # how many of the newest events a _TypeMemo keeps


class _TypeMemo:
    """The types of the newest events this process committed (per environment, in memory
    only; the Rust core's ``TypeMemo``): ``ids[i]`` is the type name of event ``base + i``
    (None: unknown - a head, a BLOB/CLOB). Recorded after the commit, so every entry is a
    committed event's; an event committed by another process (or a commit recorded out of
    order) is not in it and :func:`_changes_of` reads its type from the store. Nothing on disk
    changes."""

    __slots__ = ("lock", "base", "ids")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base = 0
        self.ids: list[str | None] = []

    def record(self, first: int, ids: list[str | None]) -> None:
        """Record the types of events ``first, first + 1, ...``."""
        if not ids:
            return
        with self.lock:
            end = self.base + len(self.ids)
            if first != end or not self.ids:
                if first < end and self.ids:
                    return  # an older commit recorded after a newer one: left to the reads
                # the first record, or a gap (another process's or thread's commit between)
                self.ids = []
                self.base = first
            self.ids.extend(ids)
            if len(self.ids) > 2 * _TYPE_MEMO_EVENTS:  # trimmed in halves: amortised
                drop = len(self.ids) - _TYPE_MEMO_EVENTS
                del self.ids[:drop]
                self.base += drop

    def slice(self, start: int, limit: int) -> tuple[int, list[str | None]]:
        """``(first seq, types)``: the entries for at most ``limit`` events from ``start``."""
        with self.lock:
            start = max(start, self.base)
            i = start - self.base
            return start, self.ids[i:i + limit]


def _upgrade_feed(txn: lmdb.Transaction, dbs: dict[bytes, Any]) -> None:
    """Give a store created before the feed its events, once: every ``objects`` entry in key
    order, then every version head in key order (docs/store-format.md "events")."""
    if txn.get(_META_EVENTS, db=dbs[b"meta"]) is not None:
        return
    found: list[tuple[bytes, bytes]] = []
    for k, v in txn.cursor(db=dbs[b"objects"]):
        if len(k) == 32 and v and v[0] in _FEED_KIND_OF_ENTRY:
            found.append((bytes(k), _FEED_KIND_OF_ENTRY[v[0]]))
    for k in txn.cursor(db=dbs[b"vheads"]).iternext(values=False):
        if len(k) == 32:
            found.append((bytes(k), b"H"))
    n = _last_seq(txn, dbs[b"events"])
    for raw, kind in found:
        n += 1
        txn.put(n.to_bytes(8, "big"), raw + kind, append=True, db=dbs[b"events"])
    txn.put(_META_EVENTS, b"1", db=dbs[b"meta"])


# -- reads inside one transaction (Store: a short one per call; Snapshot: one held open) -----


def _retain(shared: _Shared) -> None:
    with _registry_lock:
        if shared.refs <= 0:
            raise StoreError("the store is closed", "LAMA-CLOSED")
        shared.refs += 1


def _release(shared: _Shared) -> None:
    with _registry_lock:
        shared.refs -= 1
        if shared.refs == 0:
            _registry.pop(shared.key, None)
            try:
                # a non-durable store's commits, a durable one's last meta page (NOMETASYNC)
                shared.env.sync(True)
            finally:
                _close_env(shared)


def _text(shared: _Shared, txn: lmdb.Transaction, raw: bytes, kind: int) -> str:
    """Microdata stored under ``raw`` as ``kind`` (K_OBJECT or K_ID); SB-READ2 otherwise."""
    v = txn.get(raw, db=shared.objects)
    if v is None or v[0] != kind:
        what = "ID object" if kind == K_ID else "object"
        raise NotFoundError(f"{what} {raw.hex()} not found in the store", "SB-READ2")
    try:
        return bytes(v[1:]).decode("utf-8")
    except UnicodeDecodeError:
        raise StoreError(f"entry {raw.hex()} is not UTF-8", "LAMA-CORRUPT") from None


def _read_blob(shared: _Shared, txn: lmdb.Transaction, raw: bytes) -> bytes:
    """The bytes of the BLOB/CLOB stored under ``raw`` (NotFoundError SB-READ2 otherwise), read
    as Store.read_blob reads it (the same checks of damaged entries)."""
    h = raw.hex()
    return b"".join(Store._chunks(txn, shared, h, Store._content_entry(txn, shared, h)))


def _missing(shared: _Shared, txn: lmdb.Transaction, raws: list[bytes]) -> list[str]:
    objects = shared.objects
    return [r.hex() for r in raws if txn.get(r, db=objects) is None]


def _children(shared: _Shared, txn: lmdb.Transaction, root: bytes) -> list[str]:
    """chum.md §5.3: the transitive closure of what ``root`` references, without ``root``, each
    hash once; an object or ID object is recorded after its own sub-walk (post-order,
    "dependencies first"), a BLOB/CLOB when first met (a leaf, not loaded).  References are
    visited in microdata order = recipe rule order, collections in order (objects.md §1.2,
    §1.7).  ``referenceToObj`` descends into the object, ``referenceToId`` into the ID object
    (its ID properties, never its versions).  A BLOB/CLOB root has no children; an unstored
    referenced object or ID object fails the call (NotFoundError SB-READ2, chum.md §4.3)."""
    v = txn.get(root, db=shared.objects)
    if v is None:
        raise NotFoundError(f"object {root.hex()} not found in the store", "SB-READ2")
    if v[0] not in (K_OBJECT, K_ID):
        if v[0] in _KIND_NAMES:
            return []
        raise StoreError(f"entry {root.hex()} has an unknown kind byte", "LAMA-CORRUPT")
    seen = {root.hex()}
    out: list[str] = []
    # explicit stack, not recursion: version chains are arbitrarily long
    stack: list[tuple[str | None, list[tuple[str, str, str]], int]] = [
        (None, references(_text(shared, txn, root, v[0])), 0)
    ]
    while stack:
        done, refs, i = stack[-1]
        if i == len(refs):
            stack.pop()
            if done is not None:
                out.append(done)
            continue
        stack[-1] = (done, refs, i + 1)
        _path, kind, h = refs[i]
        if h in seen:
            continue
        seen.add(h)
        if kind in ("blob", "clob"):
            out.append(h)
        else:
            text = _text(shared, txn, bytes.fromhex(h), K_ID if kind == "id" else K_OBJECT)
            stack.append((h, references(text), 0))
    return out


def _version_nodes(shared: _Shared, txn: lmdb.Transaction, id_raw: bytes) -> list[str]:
    """objects.md §4.1: walk back from the head along the parent links (``prev`` of a Change,
    ``nodes`` of a Merge in stored order), depth-first, each node once at its first visit:
    newest first.  Merge nodes are listed too.  ``[]`` if the ID has no head."""
    head = txn.get(id_raw, db=shared.vheads)
    if head is None:
        return []
    out: list[str] = []
    seen: set[bytes] = set()
    stack = [bytes(head)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        out.append(n.hex())
        text = _text(shared, txn, n, K_OBJECT)
        type_name = type_of(text)[0]
        if type_name not in VERSION_NODE_TYPES:
            raise StoreError(f"entry {n.hex()} is a {type_name}, not a version node",
                             "LAMA-CORRUPT")
        parents = [bytes.fromhex(h) for path, kind, h in references(text)
                   if kind == "obj" and (path == "prev" or path.startswith("nodes."))]
        stack.extend(reversed(parents))
    return out


class Snapshot:
    """A consistent read view: one LMDB read transaction held open, so every read sees the
    store as committed when the snapshot was taken (docs/core-interface.md "Snapshot").

    py-lmdb opens environments with ``MDB_NOTLS``, so the transaction may be used from any
    thread, one at a time (a lock here).  It holds an LMDB reader slot and pins the pages of its
    state until :meth:`close` (or the end of a ``with`` block); it keeps the environment open.
    """

    # Made by Store.snapshot() only (no public constructor, as the native class).
    @classmethod
    def _create(cls, shared: _Shared) -> Snapshot:
        self = cls.__new__(cls)
        self._init(shared)
        return self

    def _init(self, shared: _Shared) -> None:
        _retain(shared)
        try:
            self._txn: lmdb.Transaction | None = shared.env.begin()
        except lmdb.Error as e:
            _release(shared)
            raise StoreError(f"LMDB error: {e}", "LAMA-LMDB") from e
        self._shared = shared
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._txn is None

    def close(self) -> None:
        """End the read transaction (frees its reader slot); closing twice is harmless."""
        with self._lock:
            txn, self._txn = self._txn, None
            if txn is None:
                return
            try:
                txn.abort()
            finally:
                _release(self._shared)

    def __enter__(self) -> Snapshot:
        if self._txn is None:
            raise StoreError("the snapshot is closed", "LAMA-CLOSED")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _run(self, fn: Callable[[lmdb.Transaction], _T]) -> _T:
        with self._lock:
            if self._txn is None:
                raise StoreError("the snapshot is closed", "LAMA-CLOSED")
            try:
                return fn(self._txn)
            except lmdb.Error as e:
                raise StoreError(f"LMDB error: {e}", "LAMA-LMDB") from e

    def get(self, hash: str) -> str:
        raw = _raw(hash)

        def fn(txn: lmdb.Transaction) -> str:
            v = txn.get(raw, db=self._shared.objects)
            if v is None:
                raise NotFoundError(f"object {hash!r} not found", "SB-READ2")
            if v[0] not in (K_OBJECT, K_ID):
                raise NotFoundError(
                    f"{hash} is a {_KIND_NAMES.get(v[0], 'unknown entry')}, not a ONE object",
                    "SB-READ2",
                )
            return bytes(v[1:]).decode("utf-8")

        return self._run(fn)

    def get_object(self, hash: str) -> dict[str, Any]:
        return parse(self.get(hash))

    def has(self, hash: str) -> bool:
        raw = _raw(hash)
        return self._run(lambda txn: txn.get(raw, db=self._shared.objects) is not None)

    def kind(self, hash: str) -> str | None:
        raw = _raw(hash)

        def fn(txn: lmdb.Transaction) -> str | None:
            v = txn.get(raw, db=self._shared.objects)
            return None if v is None else _KIND_NAMES.get(v[0])

        return self._run(fn)

    def get_head(self, id_hash: str) -> str | None:
        raw = _raw(id_hash, "ID hash")

        def fn(txn: lmdb.Transaction) -> str | None:
            v = txn.get(raw, db=self._shared.vheads)
            return None if v is None else bytes(v).hex()

        return self._run(fn)

    def read_blob(self, hash: str) -> bytes:
        raw = _raw(hash)
        return self._run(lambda txn: _read_blob(self._shared, txn, raw))

    def missing(self, hashes: list[str]) -> list[str]:
        raws = _hash_list(hashes)
        return self._run(lambda txn: _missing(self._shared, txn, raws))

    def children(self, hash: str) -> list[str]:
        raw = _raw(hash)
        return self._run(lambda txn: _children(self._shared, txn, raw))

    def version_nodes(self, id_hash: str) -> list[str]:
        raw = _raw(id_hash, "ID hash")
        return self._run(lambda txn: _version_nodes(self._shared, txn, raw))

    def last_seq(self) -> int:
        return self._run(lambda txn: _last_seq(txn, self._shared.events))

    def changes(self, since: int, limit: int) -> list[tuple[int, str, str]]:
        since = _count_arg(since, "since")
        limit = _count_arg(limit, "limit")
        return self._run(lambda txn: _changes(txn, self._shared.events, since, limit))

    def accessible_roots(
        self, person: str, since: int = 0
    ) -> tuple[int, list[tuple[str, str, str | None, str]]]:
        """Store.accessible_roots as of this snapshot."""
        raw = _raw(person, "person")
        since = _count_arg(since, "since")
        shared = self._shared
        return self._run(lambda txn: _access.accessible_roots(
            shared, txn, raw, since, _last_seq(txn, shared.events)))


class CommitSignal:
    """A file descriptor (Linux eventfd) made readable by the committing thread right after
    every commit of this process that appended events (``Store._on_commit``), until
    :meth:`clear`: an event loop waits on it with ``add_reader`` instead of a thread waiting
    on a :class:`Subscription` and handing over (issue 10). Commits of other processes do not
    signal it. The native ``CommitSignal``."""

    # Made by Store.commit_signal() only (no public constructor, as the native class).
    @classmethod
    def _create(cls, store: Store) -> CommitSignal:
        self = cls.__new__(cls)
        self._init(store)
        return self

    def _init(self, store: Store) -> None:
        try:
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (AttributeError, OSError) as e:
            raise StoreError(f"cannot make the commit signal: {e}", "LAMA-IO") from e
        self._lock = threading.Lock()  # a hook call in flight keeps the fd open
        self._fd: int | None = fd
        self._remove = store._on_commit(self._signal)

    def _signal(self, _seq: int) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.eventfd_write(self._fd, 1)
                except BlockingIOError:  # the counter's maximum: it stays readable
                    pass

    def fileno(self) -> int:
        """The file descriptor to wait on for reading (``LAMA-CLOSED`` once closed)."""
        fd = self._fd
        if fd is None:
            raise StoreError("the commit signal is closed", "LAMA-CLOSED")
        return fd

    def clear(self) -> bool:
        """Make it unreadable until the next commit; ``True`` if a commit had signalled it."""
        with self._lock:
            if self._fd is None:
                return False
            try:
                return os.eventfd_read(self._fd) > 0
            except BlockingIOError:
                return False

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Stop signalling and close the descriptor; closing twice is harmless."""
        self._remove()
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


_WAIT_SLICE = 1.0  # longest single Condition.wait (below threading.TIMEOUT_MAX, any timeout)


class Subscription:
    """Events committed after :meth:`Store.subscribe` (docs/core-interface.md "Event feed"),
    by any ``Store`` of the same directory in this process.  Keeps the environment open until
    :meth:`close`."""

    # Made by Store.subscribe() only (no public constructor, as the native class).
    @classmethod
    def _create(cls, shared: _Shared) -> Subscription:
        self = cls.__new__(cls)
        self._init(shared)
        return self

    def _init(self, shared: _Shared) -> None:
        _retain(shared)
        self._shared: _Shared | None = shared
        self._lock = threading.Lock()
        try:
            with shared.env.begin() as txn:
                self._pos = _last_seq(txn, shared.events)
        except BaseException:
            self.close()
            raise

    @property
    def position(self) -> int:
        """Sequence number of the last event returned (the feed's end when subscribed)."""
        if self._shared is None:
            raise StoreError("the subscription is closed", "LAMA-CLOSED")
        return self._pos

    @property
    def closed(self) -> bool:
        return self._shared is None

    @_lmdb_errors
    def wait(self, timeout: float, limit: int | None = None,
             types: Any = None) -> list[tuple[int, str, str]]:
        """The next events (at most ``limit``, default 1000), waiting up to ``timeout`` seconds
        for one; ``[]`` after the timeout.  ``types`` (issue 10): only the events of objects,
        ID objects and heads of these types (``Store.changes_of``); returns as soon as any
        event was committed, so ``[]`` may come back early while ``position`` moved."""
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise StoreError(f"timeout must be a number of seconds >= 0, got {timeout!r}",
                             "LAMA-ARG")
        limit = 1000 if limit is None else _count_arg(limit, "limit")
        wanted = None if types is None else _types_arg(types)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                shared = self._shared
                if shared is None:
                    raise StoreError("the subscription is closed", "LAMA-CLOSED")
                with shared.env.begin() as txn:
                    if wanted is None:
                        events = _changes(txn, shared.events, self._pos, limit)
                        pos = events[-1][0] if events else self._pos
                    else:
                        pos, events = _changes_of(txn, shared, self._pos, limit, wanted)
                if pos > self._pos or limit == 0:
                    self._pos = pos
                    return events
                with shared.cond:
                    # a writer bumps `committed` after its commit, under this condition's
                    # lock: either we see the bump and read again, or we are waiting when the
                    # notification comes; nothing committed in between is missed
                    if shared.committed > self._pos:
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    shared.cond.wait(min(remaining, _WAIT_SLICE))

    def close(self) -> None:
        """Stop the subscription; closing twice is harmless."""
        shared, self._shared = self._shared, None
        if shared is not None:
            _release(shared)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
