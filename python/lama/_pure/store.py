"""The LMDB object store of the pure-Python core (docs/store-format.md, ``lama-store-1``).

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
import json
import os
import threading
import time
from typing import Any, Callable, Iterable, TypeVar, cast

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
from .recipes import is_versioned

__all__ = ["Store", "BlobWriter", "CHUNK", "FORMAT"]

FORMAT = b"lama-store-1"
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
_DB_NAMES = (b"meta", b"objects", b"chunks", b"vheads", b"rmaps", b"tmp")

_F = TypeVar("_F", bound=Callable[..., Any])

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
        except lmdb.Error as e:
            raise StoreError(f"LMDB error: {e}", "LAMA-LMDB") from e

    return wrapper  # type: ignore[return-value]


def _prop_filter(props: frozenset[str] | None, path: str) -> bool:
    """objects.md §5.3: a path like ``a.0.b`` matches if any segment is an enabled itemprop."""
    if props is None:
        return True
    return any(seg in props for seg in path.split("."))


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
        self.refs = 0
        self.lock = threading.Lock()
        # Enabled reverse maps beyond the built-ins: type -> itemprops (None = all, "*").
        # Replaced (never mutated) under `lock`, so readers need no lock.
        self.obj_maps: dict[str, frozenset[str] | None] = {t: None for t in BUILTIN_OBJECT_MAPS}
        self.id_maps: dict[str, frozenset[str] | None] = {t: None for t in BUILTIN_ID_MAPS}


_registry: dict[str, _Shared] = {}
_registry_lock = threading.Lock()


def _open_shared(path: str, map_size: int, durable: bool) -> _Shared:
    key = os.path.realpath(path)
    with _registry_lock:
        shared = _registry.get(key)
        if shared is None:
            shared = _create_shared(path, key, map_size, durable)
            _registry[key] = shared
        elif shared.durable != durable:
            raise StoreError(
                f"{key} is already open in this process with durable={shared.durable}", "LAMA-DURABLE"
            )
        shared.refs += 1
        return shared


def _create_shared(path: str, key: str, map_size: int, durable: bool) -> _Shared:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store directory {path!r}: {e}", "LAMA-OPEN") from e
    try:
        # durable=False is LMDB's MDB_NOSYNC: no fsync at commit, still atomic and consistent
        # (docs/store-format.md "Durability").
        env = lmdb.open(path, max_dbs=16, map_size=map_size, subdir=True, sync=durable)
    except lmdb.Error as e:
        raise StoreError(f"cannot open the store at {path!r}: {e}", "LAMA-OPEN") from e
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn) for name in _DB_NAMES}
            fmt = txn.get(b"format", db=dbs[b"meta"])
            if fmt is None:
                txn.put(b"format", FORMAT, db=dbs[b"meta"])
            elif fmt != FORMAT:
                raise StoreError(
                    f"{path!r} is a store of format {fmt!r}, expected {FORMAT.decode()!r}",
                    "LAMA-FORMAT",
                )
            _delete_stale_tmp(txn, dbs[b"tmp"])
        shared = _Shared(key, env, dbs, durable)
        _load_rmap_config(shared)
        return shared
    except BaseException as e:
        env.close()
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
                name = k.decode("utf-8")
                kind, _, type_name = name[len("rmap."):].partition(".")
                target = obj_maps if kind == "O" else id_maps if kind == "I" else None
                if target is None or not type_name or type_name in target and target[type_name] is None:
                    continue
                props = json.loads(v.decode("utf-8"))
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

    def __init__(
        self, path: str | os.PathLike[str], map_size: int = DEFAULT_MAP_SIZE, durable: bool = True
    ) -> None:
        self._path = os.fspath(path)
        if not isinstance(map_size, int) or isinstance(map_size, bool) or map_size <= 0:
            raise StoreError(f"map_size must be a positive int, got {map_size!r}", "LAMA-OPEN")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, got {type(durable).__name__}")
        self._durable = durable
        self._lock = threading.Lock()
        self._shared: _Shared | None = _open_shared(self._path, map_size, durable)

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

    @_lmdb_errors
    def sync(self) -> None:
        """Flush every committed transaction to disk (fsync)."""
        self._s().env.sync(True)

    def close(self) -> None:
        """Close the store (flushing a non-durable one first); closing twice is harmless.
        Later calls raise StoreError."""
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is None:
            return
        with _registry_lock:
            try:
                if not shared.durable:
                    shared.env.sync(True)
            except lmdb.Error as e:
                raise StoreError(f"cannot flush the store {self._path!r}: {e}", "LAMA-LMDB") from e
            finally:
                shared.refs -= 1
                if shared.refs == 0:
                    _registry.pop(shared.key, None)
                    shared.env.close()

    def __enter__(self) -> Store:
        self._s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    def _write_prepared(
        self, shared: _Shared, txn: lmdb.Transaction, items: list[_Prepared]
    ) -> list[tuple[str, str, str | None]]:
        objects_db = shared.objects
        rmaps_db = shared.rmaps
        obj_maps = shared.obj_maps
        id_maps = shared.id_maps
        put = txn.put
        results: list[tuple[str, str, str | None]] = []
        append = results.append
        for p in items:
            new = put(p.raw, p.data, overwrite=False, db=objects_db)
            t = p.type_name
            if new:
                maps = id_maps if p.kind == b"I" else obj_maps
                if t in maps:
                    self._put_rmaps(txn, rmaps_db, p.text, t, maps[t], p.kind, p.raw)
            id_hex: str | None = None
            if p.id_raw is not None:
                id_hex = p.id_raw.hex()
                id_new = put(p.id_raw, cast(bytes, p.id_data), overwrite=False, db=objects_db)
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
        with shared.env.begin(write=True) as txn:
            return self._write_prepared(shared, txn, items)

    @_lmdb_errors
    def put_microdata(
        self, items: list[tuple[str, str | None]]
    ) -> list[tuple[str, str, str | None]]:
        """Store received microdata verbatim (objects.md §9.23) after verifying every hash and
        parsing every text; nothing is written unless all items are valid.  An ID object text
        is stored as an ID object (its third result is None); a versioned object also stores
        its ID object, whose hash is the third result."""
        shared = self._s()
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
        with shared.env.begin(write=True) as txn:
            return self._write_prepared(shared, txn, prepared)

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
        if v[0] not in (K_OBJECT, K_ID):
            raise NotFoundError(
                f"{hash} is a {_KIND_NAMES.get(v[0], 'unknown entry')}, not a ONE object",
                "SB-READ2",
            )
        return v[1:].decode("utf-8")

    def get_object(self, hash: str) -> dict[str, Any]:
        return parse(self.get(hash))

    @_lmdb_errors
    def has(self, hash: str) -> bool:
        return self._get_entry(hash) is not None

    @_lmdb_errors
    def kind(self, hash: str) -> str | None:
        """``"object" | "id" | "clob" | "blob"``, or None if not stored."""
        v = self._get_entry(hash)
        return None if v is None else _KIND_NAMES.get(v[0])

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
        return self._put_content(text.encode("utf-8"), clob=True)

    def _put_content(self, data: bytes, clob: bool) -> tuple[str, str]:
        shared = self._s()
        raw = hashlib.sha256(data).digest()
        with shared.env.begin(write=True) as txn:
            if txn.get(raw, db=shared.objects) is not None:
                return raw.hex(), "exists"
            if len(data) <= CHUNK:
                txn.put(raw, (b"C" if clob else b"B") + data, db=shared.objects)
            else:
                mv = memoryview(data)
                n = 0
                for off in range(0, len(data), CHUNK):
                    txn.put(raw + n.to_bytes(4, "big"), mv[off:off + CHUNK], db=shared.chunks)
                    n += 1
                txn.put(raw, _chunked_header(clob, len(data), n), db=shared.objects)
        return raw.hex(), "new"

    def blob_writer(self, clob: bool = False) -> BlobWriter:
        """A streaming writer for a BLOB (or a CLOB with ``clob=True``)."""
        return BlobWriter(self, bool(clob))

    def _content_entry(self, txn: lmdb.Transaction, shared: _Shared, h: str) -> bytes:
        v = txn.get(_raw(h), db=shared.objects)
        if v is None:
            raise NotFoundError(f"BLOB/CLOB {h!r} not found", "SB-READ2")
        if v[0] not in (K_BLOB, K_CLOB, K_BLOB_CHUNKED, K_CLOB_CHUNKED):
            raise NotFoundError(f"{h} is a {_KIND_NAMES.get(v[0], 'unknown entry')}, "
                                "not a BLOB or CLOB", "SB-READ2")
        return cast(bytes, v)

    def _chunks(self, txn: lmdb.Transaction, shared: _Shared, h: str, v: bytes) -> list[bytes]:
        if v[0] in (K_BLOB, K_CLOB):
            return [v[1:]]
        size, count = _parse_chunked_header(v)
        raw = bytes.fromhex(h)
        out = []
        for i in range(count):
            c = txn.get(raw + i.to_bytes(4, "big"), db=shared.chunks)
            if c is None:
                raise StoreError(f"chunk {i} of {h} is missing", "LAMA-CORRUPT")
            out.append(cast(bytes, c))
        if sum(map(len, out)) != size:
            raise StoreError(f"the chunks of {h} do not add up to {size} bytes", "LAMA-CORRUPT")
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
    def blob_size(self, hash: str) -> int:
        shared = self._s()
        with shared.env.begin() as txn:
            v = self._content_entry(txn, shared, hash)
        if v[0] in (K_BLOB, K_CLOB):
            return len(v) - 1
        return _parse_chunked_header(v)[0]

    # -- version heads + atomic batch -----------------------------------------------------

    @_lmdb_errors
    def get_head(self, id_hash: str) -> str | None:
        """The hash of the head version node of ``id_hash`` (objects.md §4.1), or None."""
        raw = _raw(id_hash, "ID hash")
        shared = self._s()
        with shared.env.begin() as txn:
            v = txn.get(raw, db=shared.vheads)
        return None if v is None else v.hex()

    @_lmdb_errors
    def write_batch(
        self, objs: list[dict[str, Any]], heads: list[tuple[str, str | None, str]]
    ) -> list[tuple[str, str, str | None]]:
        """One transaction: store ``objs`` like put_objects, then move each head with
        compare-and-set.  If a current head differs from its expected value: ConflictError
        LAMA-CONFLICT and nothing at all is written.  A new head must be a version node stored
        in the store or in this batch."""
        shared = self._s()
        items = self._prepare_objects(objs)
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
        with shared.env.begin(write=True) as txn:
            results = self._write_prepared(shared, txn, items)
            for id_hash, id_raw, expected_raw, new_raw in checked:
                current = txn.get(id_raw, db=shared.vheads)
                if current != expected_raw:
                    raise ConflictError(
                        f"head of {id_hash} is {current.hex() if current else None}, "
                        f"expected {expected_raw.hex() if expected_raw else None}",
                        "LAMA-CONFLICT",
                    )
                node = txn.get(new_raw, db=shared.objects)
                if node is None or node[0] != K_OBJECT or \
                        type_of(node[1:].decode("utf-8"))[0] not in VERSION_NODE_TYPES:
                    raise StoreError(f"new head {new_raw.hex()} of {id_hash} is not a stored "
                                     "version node", "LAMA-HEAD")
                txn.put(id_raw, new_raw, db=shared.vheads)
        return results

    # -- reverse maps ---------------------------------------------------------------------

    @_lmdb_errors
    def enable_reverse_maps(
        self, type_name: str, props: list[str] | None = None, id_objects: bool = False
    ) -> None:
        """Enable reverse maps of ``type_name`` for ``props`` (None = all properties), for
        objects or (``id_objects=True``) ID objects; persisted in ``meta`` and added to what is
        already enabled.  Applies to objects written from now on (objects.md §5.3)."""
        shared = self._s()
        if not isinstance(type_name, str) or not type_name or "\x00" in type_name:
            raise StoreError(f"invalid type name {type_name!r}", "LAMA-ARG")
        if props is not None:
            if isinstance(props, str) or not all(isinstance(p, str) for p in props):
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
            else:
                merged = wanted
            value = ["*"] if merged is None else sorted(merged)
            key = f"rmap.{kind}.{type_name}".encode("utf-8")
            with shared.env.begin(write=True) as txn:
                txn.put(key, json.dumps(value, separators=(",", ":")).encode("utf-8"),
                        db=shared.meta)
            new_maps = dict(maps)
            new_maps[type_name] = merged
            if id_objects:
                shared.id_maps = new_maps
            else:
                shared.obj_maps = new_maps

    @_lmdb_errors
    def referencing(self, target: str, type_name: str, id_objects: bool = False) -> list[str]:
        """Hashes of the ``type_name`` objects (ID objects with ``id_objects=True``) whose
        reverse map entries reference ``target`` (objects.md §5.3)."""
        shared = self._s()
        if not isinstance(type_name, str):
            raise StoreError(f"type name must be a str, not {type(type_name).__name__}", "LAMA-ARG")
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
        """Re-read and re-hash everything (store-format.md "verify()"); the problems found."""
        shared = self._s()
        problems: list[str] = []
        with shared.env.begin() as txn:
            chunked: set[bytes] = set()
            for k, v in txn.cursor(db=shared.objects):
                problems.extend(self._verify_entry(txn, shared, k, v, chunked))
            for k in txn.cursor(db=shared.chunks).iternext(values=False):
                if len(k) != 36 or k[:32] not in chunked:
                    problems.append(f"chunks/{k.hex()}: chunk of no chunked BLOB/CLOB")
            for k, v in txn.cursor(db=shared.vheads):
                if len(k) != 32 or len(v) != 32:
                    problems.append(f"vheads/{k.hex()}: malformed entry")
                    continue
                node = txn.get(v, db=shared.objects)
                ok = False
                if node is not None and node[0] == K_OBJECT:
                    try:
                        ok = type_of(node[1:].decode("utf-8"))[0] in VERSION_NODE_TYPES
                    except (LamaError, UnicodeDecodeError):
                        ok = False
                if not ok:
                    problems.append(f"vheads/{k.hex()}: head {v.hex()} is not a stored "
                                    "version node")
            for k in txn.cursor(db=shared.rmaps).iternext(values=False):
                if len(k) < 32 + 1 + 1 + 32 or k[32] not in (K_OBJECT, K_ID) or k[-33] != 0:
                    problems.append(f"rmaps/{k.hex()}: malformed key")
                elif txn.get(k[-32:], db=shared.objects) is None:
                    problems.append(f"rmaps/{k.hex()}: referencing {k[-32:].hex()} is not stored")
        return problems

    def _verify_entry(
        self, txn: lmdb.Transaction, shared: _Shared, k: bytes, v: bytes, chunked: set[bytes]
    ) -> list[str]:
        name = f"objects/{k.hex()}"
        if len(k) != 32 or not v:
            return [f"{name}: malformed entry"]
        kind = v[0]
        if kind in (K_BLOB_CHUNKED, K_CLOB_CHUNKED):
            chunked.add(k)
            if len(v) != 13:
                return [f"{name}: malformed chunked header"]
            size, count = _parse_chunked_header(v)
            h = hashlib.sha256()
            total = 0
            for i in range(count):
                c = txn.get(k + i.to_bytes(4, "big"), db=shared.chunks)
                if c is None:
                    return [f"{name}: chunk {i} of {count} is missing"]
                h.update(c)
                total += len(c)
            if total != size:
                return [f"{name}: chunks hold {total} bytes, header says {size}"]
            if h.digest() != k:
                return [f"{name}: content hashes to {h.hexdigest()}"]
            if kind == K_CLOB_CHUNKED:
                try:
                    dec = codecs.getincrementaldecoder("utf-8")()
                    for i in range(count):
                        dec.decode(cast(bytes, txn.get(k + i.to_bytes(4, "big"), db=shared.chunks)))
                    dec.decode(b"", final=True)
                except UnicodeDecodeError:
                    return [f"{name}: CLOB is not valid UTF-8"]
            return []
        if kind not in _KIND_NAMES:
            return [f"{name}: unknown kind byte {kind:#04x}"]
        payload = v[1:]
        digest = hashlib.sha256(payload).digest()
        if digest != k:
            return [f"{name}: content hashes to {digest.hex()}"]
        if kind == K_BLOB:
            return []
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return [f"{name}: not valid UTF-8"]
        if kind == K_CLOB:
            return []
        try:
            type_name, is_id = type_of(text)
            parse(text)
        except LamaError as e:
            return [f"{name}: does not parse: {e}"]
        if is_id != (kind == K_ID):
            what = "an ID object" if is_id else "an object"
            return [f"{name}: stored as {_KIND_NAMES[kind]} but is {what} of type {type_name}"]
        return []


def _chunked_header(clob: bool, size: int, count: int) -> bytes:
    return (b"c" if clob else b"b") + size.to_bytes(8, "big") + count.to_bytes(4, "big")


def _parse_chunked_header(v: bytes) -> tuple[int, int]:
    if len(v) != 13:
        raise StoreError("malformed chunked BLOB/CLOB header", "LAMA-CORRUPT")
    return int.from_bytes(v[1:9], "big"), int.from_bytes(v[9:13], "big")


class BlobWriter:
    """Streams a BLOB/CLOB into the store (objects.md §2.3, store-format.md "Write rules").

    Full chunks are staged in ``tmp`` (each flush its own transaction) while the content is
    hashed; :meth:`finish` publishes the object in one transaction and drops the staging, and
    :meth:`abort` just drops the staging.  Nothing is visible before ``finish``.
    """

    def __init__(self, store: Store, clob: bool = False) -> None:
        store._s()
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

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if not self._done:
            self.abort()

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
                with shared.env.begin(write=True) as txn:
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
            with shared.env.begin(write=True) as txn:
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
            with shared.env.begin(write=True) as txn:
                for i in range(self._staged):
                    txn.delete(self._tmp_key(i), db=shared.tmp)
