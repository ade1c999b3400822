"""The exporter half of a CHUM session (chum.md §4, §5): answers services 1, 2, 4, 5, 6, 7, 8
and 10 for one remote person, authorised by the session's accessible set (§5.2)."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, overload

from ...errors import LamaError
from ..microdata import js_utf8, references
from . import rpc

PROTOCOL_VERSION = 8

# chum.md §3.1 service ids
GET_PROTOCOL_VERSION = 1
GET_ACCESSIBLE_ROOTS = 2
NEW_ACCESSIBLE_ROOT_EVENT = 3
GET_OBJECT_CHILDREN = 4
GET_ID_OBJECT_CHILDREN = 5
GET_OBJECT = 6
GET_ID_OBJECT = 7
GET_BLOB = 8
FIN = 10

# lama extensions (docs/chum-fastpath.md), probed by a lama importer after the version check
LAMA_PROBE = 100
GET_OBJECTS_BATCH = 101
GET_ROOTS_SINCE = 102
SUBSCRIBE = 103
NOTIFY = 104  # served by the importer
GET_CHILDREN_BATCH = 105
GET_CLOSURE = 106  # docs/chum-fastpath.md "closure"
LAMA_RECEIPT = 107  # docs/tracing.md §4: the importer confirms a pass (called on the exporter)
GET_OBJECTS_BINARY = 108  # docs/chum-fastpath.md "batch-binary"
GET_CLOSURE_PAGE = 109  # docs/chum-fastpath.md "closure-pages"
CLOSURE_PAGE_MAX = 65_536
"""Entries per closure page at most (a larger ``{"page": L}`` is cut to this)."""
CLOSURE_WALKS_MAX = 8
"""Paged walks a session keeps open at once; a root beyond them is answered whole."""
BATCH_MAX = 256
CLOSURE_HINTS_MAX = 4096
"""Hints (hashes the importer holds with their closure) per GET_CLOSURE request."""
CLOSURE_INLINE_MAX = 1024
CLOSURE_INLINE_CHARS = 4 * 1024 * 1024
"""Inline microdata per GET_CLOSURE answer (objects, characters); the rest is listed without
``data`` and fetched with 101."""
_SENT_MAX = 4_000_000
NOTIFY_INLINE_ENTRIES = 64
NOTIFY_INLINE_CHARS = 256 * 1024
"""docs/chum-fastpath.md "notify-closure": a NOTIFY carries the roots' pruned closures inline
only if they list at most this many entries and characters of microdata, with no BLOB/CLOB
(else the importer asks 106 as before)."""
_NOTIFIED_MAX = 256  # inline NOTIFYs remembered until a receipt confirms them
"""Hashes remembered in sent closures before that memory is dropped."""
_TAGS = {"obj": "object", "id": "id", "blob": "blob", "clob": "clob"}
FASTPATH_VERSION = 1

EXPORTER_SERVICES = frozenset({1, 2, 4, 5, 6, 7, 8, 10, 100, 101, 102, 103, 105, 106, 107, 108, 109})

BLOB_PAYLOAD = 65_528
"""chum.md §2.6/§10.2: 8-byte id + payload ≤ 65,536, so the fragmentation layer never splits a
chunk (the reference's 65,536-byte reads become 4 messages each)."""

CLOB_CHUNK = 4_096
"""Characters per CLOB text chunk: small enough that a chunk message stays below the
fragmentation threshold of 16,384 UTF-16 units (chum.md §1): 4,096 code points are at most
8,192 UTF-16 units, twice that escaped."""

_HASH = re.compile(r"^[0-9a-f]{64}$")


_NULL = b"\xff\xff\xff\xff"


def batch_binary(texts: list[str | None]) -> bytes:
    """The payload of a GET_OBJECTS_BINARY answer (docs/chum-fastpath.md "batch-binary"): per
    requested hash, in order, a u32 LE length and that many bytes of UTF-8 microdata, or
    0xFFFFFFFF for ``null``."""
    parts: list[bytes] = []
    for t in texts:
        if t is None:
            parts.append(_NULL)
        else:
            b = js_utf8(t)
            parts.append(len(b).to_bytes(4, "little"))
            parts.append(b)
    return b"".join(parts)


def parse_batch_binary(payload: bytes, n: int) -> list[str | None] | None:
    """The entries of a GET_OBJECTS_BINARY payload for ``n`` hashes; ``None`` if it is malformed
    (a wrong count, a length past the end, trailing bytes, invalid UTF-8)."""
    out: list[str | None] = []
    view = memoryview(payload)
    i, end = 0, len(payload)
    try:
        while i < end:
            if end - i < 4:
                return None
            length = int.from_bytes(view[i:i + 4], "little")
            i += 4
            if length == 0xFFFFFFFF:
                out.append(None)
                continue
            if length > end - i:
                return None
            out.append(str(view[i:i + length], "utf-8"))
            i += length
    except UnicodeDecodeError:
        return None
    return out if len(out) == n else None


class ServiceError(Exception):
    """An error answer: ``{name, message, code}`` on the wire (chum.md §2.4)."""

    def __init__(self, code: str, text: str, name: str = "Error"):
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = f"{code}: {text}"
        self.name = name


def _wire_root(kind: str, h: str, id_hash: str | None, type_name: str) -> dict[str, Any]:
    """chum.md §4.2 AccessibleObject, fields in the reference's order."""
    if kind == "unversioned":
        return {"type": "unversioned", "hash": h, "oneType": type_name}
    if kind == "versioned":
        return {"type": "versioned", "hash": h, "idHash": id_hash, "oneType": type_name}
    if kind == "id":
        return {"type": "id", "idHash": h, "oneType": type_name}
    if kind == "version_node":
        return {"type": "version_node", "node": h, "dataIdHash": id_hash, "dataType": type_name}
    raise ValueError(f"unknown root kind {kind!r}")


RECEIPT_ERRORS_MAX = 10
RECEIPT_ERROR_CHARS = 300


def _receipt(arg: Any) -> dict[str, Any]:
    """A LAMA_RECEIPT argument as the ``receipt`` event's data (docs/tracing.md §4): ``mark``
    an int >= 0 or None, ``errors`` at most 10 strings of at most 300 characters; anything
    malformed is read as "no mark" with no errors (a receipt only ever informs)."""
    mark = arg.get("mark") if isinstance(arg, dict) else None
    if isinstance(mark, bool) or not isinstance(mark, int) or mark < 0:
        mark = None
    errs = arg.get("errors") if isinstance(arg, dict) else None
    errors = [e[:RECEIPT_ERROR_CHARS] for e in errs if isinstance(e, str)][:RECEIPT_ERRORS_MAX] \
        if isinstance(errs, list) else []
    return {"mark": mark, "errors": errors}


class _PageWalk:
    """A paged closure walk (docs/chum-fastpath.md "closure-pages"): the depth-first
    post-order walk's stack (the entry listed when a frame is done, its references, the next
    index) and the hashes met, kept between pages; its root, page size, what it listed so far,
    the page number its token asks next and the last page answered (a retry gets it again)."""

    def __init__(self, root: str, kind: str, refs: list[tuple[str, str, str]], page: int):
        self.root, self.kind, self.page = root, kind, page
        self.stack: list[list[Any]] = [[None, refs, 0]]
        self.seen = {root}
        self.listed: list[str] = []
        self.seq = 1
        self.last: tuple[int, str] | None = None

    def next(self, snap: Any, known: set[str], limit: int) -> list[tuple[str, str]]:
        """The next at most ``limit`` entries, dependencies first, pruned at ``known``: nothing
        in ``known`` is listed, not even an entry the walk had entered before ``known`` grew
        (a frame on its stack, docs/chum-fastpath.md "Walk ahead")."""
        out: list[tuple[str, str]] = []
        stack, seen = self.stack, self.seen
        while stack and len(out) < limit:
            frame = stack[-1]
            done, refs, i = frame
            if i == len(refs):
                stack.pop()
                if done is not None and done[1] not in known:
                    out.append(done)
                continue
            frame[2] = i + 1
            _path, kind, c = refs[i]
            if c in known or c in seen:
                continue
            seen.add(c)
            tag = _TAGS.get(kind, kind)
            if tag in ("blob", "clob"):
                out.append((tag, c))
            else:
                stack.append([(tag, c), references(snap.get(c)), 0])
        # the root's frame alone, all its references met: nothing is left
        if len(stack) == 1 and stack[0][0] is None and stack[0][2] == len(stack[0][1]):
            stack.clear()
        return out

    @property
    def done(self) -> bool:
        return not self.stack


def _closure_entry(root_text: str | None, entries: list[dict[str, str]], more: str | None) -> dict[str, Any]:
    e: dict[str, Any] = {"root": root_text, "children": entries}
    if more is not None:
        e["more"] = more
    return e


class Exporter:
    """Serves one connection.  ``handle`` returns the frames to send for one request."""

    def __init__(self, store: Any, remote_person: str, log: dict[str, list[str]],
                 stats: dict[str, int], on_error: Callable[[str, str], None]):
        self.store = store
        self.remote_person = remote_person
        self.accessible: set[str] = set()  # chum.md §5.2: never shrinks in a session
        self.log = log
        self.stats = stats
        self.on_error = on_error
        self.done = False  # FIN received (§4.7)
        self.roots_mark = 0  # write sequence of the last roots answer (fast path bookkeeping)
        self.subscribed = False  # the peer asked for NOTIFY pushes (SUBSCRIBE)
        self.notify_mark = 0  # roots up to this write sequence are known to the peer
        # "notify-roots": NOTIFY carries the roots after notify_base (the mark of the previous
        # NOTIFY or of the subscription)
        self.notify_roots = False
        self.notify_base = 0
        # "notify-closure": a NOTIFY also carries the roots' pruned closures; per NOTIFY its
        # mark and roots until a receipt with a mark at least as high confirms them
        self.notify_closure = False
        self.notified: list[tuple[int, list[str]]] = []
        self.receipt_mark = 0  # the highest mark of a receipt without errors
        # "closure": hashes the importer holds with their whole closure (downward closed),
        # and root -> the pruned closure sent for it (extends `known` without a walk)
        self.known: set[str] = set()
        self.sent: dict[str, list[str]] = {}
        self.sent_total = 0
        self.seeded = False  # known was seeded from the importer's mark
        # docs/tracing.md §4: receipts the importer sent (drained by the session into events),
        # and, with the session's `trace` option, the roots announced (else None: no cost)
        self.receipts: list[dict[str, Any]] = []
        self.announced: list[str] | None = None
        self.probed = False  # the importer called LAMA_PROBE (a lama peer; ONE never does)
        # "closure-pages": the open paged walks by id (at most CLOSURE_WALKS_MAX), the next id
        self.walks: dict[int, _PageWalk] = {}
        self.next_walk = 1

    # -- dispatch ------------------------------------------------------------------------

    def handle(self, rid: int, service: int, args: list[Any]) -> list[str | bytes]:
        try:
            if service == GET_PROTOCOL_VERSION:
                return [rpc.data_response(rid, PROTOCOL_VERSION)]
            if service == GET_ACCESSIBLE_ROOTS:
                return [rpc.data_response(rid, self._roots())]
            if service == GET_OBJECT_CHILDREN:
                return [rpc.data_response(rid, self._children(args, id_object=False))]
            if service == GET_ID_OBJECT_CHILDREN:
                return [rpc.data_response(rid, self._children(args, id_object=True))]
            if service == GET_OBJECT:
                return [rpc.data_response(rid, self._object(args, id_object=False))]
            if service == GET_ID_OBJECT:
                return [rpc.data_response(rid, self._object(args, id_object=True))]
            if service == GET_BLOB:
                return self._blob(rid, args)
            if service == FIN:
                self.done = True
                return [rpc.data_response(rid, rpc.UNDEF)]
            if service == LAMA_PROBE:
                self.probed = True
                return [rpc.data_response(rid, self._probe())]
            if service == GET_OBJECTS_BATCH:
                return [rpc.data_response(rid, json.dumps(self._batch(args), ensure_ascii=False,
                                                          separators=(",", ":")))]
            if service == GET_OBJECTS_BINARY:
                return [rpc.binary_frame(rid, batch_binary(self._batch(args)))]
            if service == GET_CHILDREN_BATCH:
                return [rpc.data_response(rid, self._children_batch(args))]
            if service == GET_CLOSURE:
                return [rpc.data_response(rid, self._closure(args))]
            if service == GET_CLOSURE_PAGE:
                return [rpc.data_response(rid, self._closure_page(args))]
            if service == LAMA_RECEIPT:
                receipt = _receipt(args[0] if args else None)
                if receipt["mark"] is not None and not receipt["errors"]:
                    self._receipt_mark(receipt["mark"])
                self.receipts.append(receipt)
                return [rpc.data_response(rid, rpc.UNDEF)]
            if service == GET_ROOTS_SINCE and self.roots_since_supported():
                return [rpc.data_response(rid, self._roots_since(args))]
            if service == SUBSCRIBE:
                self.subscribed = True
                self.notify_mark = max(self.notify_mark, self.roots_mark)
                self.notify_base = self.notify_mark
                # "notify-roots": [{"roots": true}] asks for the roots in the NOTIFY itself
                first = args[0] if args else None
                self.notify_roots = isinstance(first, dict) and first.get("roots") is True
                # "notify-closure": {"roots": true, "closure": true} also asks for the closures
                self.notify_closure = isinstance(first, dict) and self.notify_roots \
                    and first.get("closure") is True
                # with it the importer's mark, if it has one: it holds every root accessible
                # up to it (as a receipt says)
                held = first.get("mark") if isinstance(first, dict) and self.notify_closure else None
                if isinstance(held, int) and not isinstance(held, bool) and held > 0:
                    self.receipt_mark = max(self.receipt_mark, held)
                return [rpc.data_response(rid, rpc.UNDEF)]
        except ServiceError as e:
            return [rpc.error_response(rid, e.name, e.text, e.code)]
        except LamaError as e:
            # a storage error during the walk fails the whole call (chum.md §4.3, SB-READ2)
            self.on_error(e.code, str(e))
            return [rpc.error_response(rid, "Error", str(e), e.code)]
        return [rpc.unknown_service(rid, service)]

    # -- services ------------------------------------------------------------------------

    def _roots(self, since: int = 0) -> str:
        return rpc.list_json(self._unlock_roots(since))

    def _unlock_roots(self, since: int) -> list[dict[str, Any]]:
        mark, roots = (self.store.accessible_roots(self.remote_person, since) if since
                       else self.store.accessible_roots(self.remote_person))
        self.roots_mark = max(self.roots_mark, mark)
        return self._unlock_rows(roots)

    def _unlock_rows(self, roots: list[tuple[str, str, str | None, str]]) -> list[dict[str, Any]]:
        out = []
        for kind, h, id_hash, type_name in roots:
            out.append(_wire_root(kind, h, id_hash, type_name))
            if self.announced is not None:
                self.announced.append(h)
            # chum.md §4.2 "unlocks"
            self.accessible.add(h)
            if kind == "versioned" and id_hash:
                self.accessible.add(id_hash)
        return out

    # -- lama extensions (docs/chum-fastpath.md) ------------------------------------------------

    def roots_since_supported(self) -> bool:
        return hasattr(self.store, "peer_mark")

    def epoch(self) -> str:
        """Names this store's write-sequence space, so a peer keeps one high-water mark per
        exporter store: the store's random identity (docs/store-format.md "meta" store_id), so
        two stores whose first write is the same object still differ."""
        return str(self.store.store_id)

    def _probe(self) -> dict[str, Any]:
        features = ["batch", "children-batch", "push"] + (["roots-since"] if self.roots_since_supported() else []) \
            + ["closure", "notify-roots", "receipt", "batch-binary", "closure-pages", "notify-closure"]
        return {"lama": FASTPATH_VERSION, "features": features, "epoch": self.epoch()}

    def _batch(self, args: list[Any]) -> list[str | None]:
        hashes = args[0] if args else None
        if not isinstance(hashes, list) or len(hashes) > BATCH_MAX:
            raise ServiceError("LAMA-CHUM-BATCH", f"expected a list of at most {BATCH_MAX} hashes")
        out: list[str | None] = []
        for h in hashes:
            if not isinstance(h, str) or not _HASH.match(h) or h not in self.accessible:
                if isinstance(h, str) and _HASH.match(h):
                    self.on_error("CES-GO1", f"refused {h}: not accessible to {self.remote_person}")
                out.append(None)
                continue
            kind = self.store.kind(h)
            if kind == "object":
                self.log["AtoBObjects"].append(h)
                self.stats["objects_sent"] += 1
            elif kind == "id":
                self.log["AtoBIdObjects"].append(h)
                self.stats["id_objects_sent"] += 1
            else:
                out.append(None)
                continue
            out.append(self.store.get(h))
        return out

    def _children_batch(self, args: list[Any]) -> str:
        """GET_CHILDREN_BATCH: ``[[h, ...]]`` (objects and ID objects alike) -> JSON string of
        ``[children list | null, ...]``; each list as service 4/5 would send it, unlocked the
        same way; ``null`` for a hash not unlocked, malformed or not stored."""
        hashes = args[0] if args else None
        if not isinstance(hashes, list) or len(hashes) > BATCH_MAX:
            raise ServiceError("LAMA-CHUM-BATCH", f"expected a list of at most {BATCH_MAX} hashes")
        out: list[list[dict[str, str]] | None] = []
        for h in hashes:
            if not isinstance(h, str) or not _HASH.match(h) or h not in self.accessible \
                    or self.store.kind(h) not in ("object", "id"):
                out.append(None)
                continue
            children = self.children_list(h)
            for c in children:
                self.accessible.add(c["hash"])
            out.append(children)
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    def _roots_since(self, args: list[Any]) -> str:
        since = args[0] if args else 0
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ServiceError("LAMA-CHUM-BATCH", f"expected a write sequence, got {since!r}")
        roots = self._unlock_roots(since)
        return json.dumps({"mark": self.roots_mark, "roots": roots}, ensure_ascii=False,
                          separators=(",", ":"))

    def changed_roots(self) -> list[Any] | None:
        """After a local write: the NOTIFY args if roots became accessible to the peer since
        the last notification (only when it subscribed), else None.  With "notify-roots" the
        args carry ``{"since", "mark", "roots"}``: the roots that became accessible after
        ``since`` up to ``mark``, unlocked as by a roots answer; ``since`` is the mark of the
        previous NOTIFY (a write that made nothing accessible moves no base), so the importer
        can chain them (docs/chum-fastpath.md "Push")."""
        if not self.subscribed or self.done:
            return None
        mark, roots = self.store.accessible_roots(self.remote_person, self.notify_mark)
        self.notify_mark = max(self.notify_mark, mark)
        if not roots:
            return None
        if not self.notify_roots:
            return []
        hashes = [h for kind, h, id_hash, _t in roots
                  for h in ([h, id_hash] if kind == "versioned" and id_hash else [h])]
        try:
            if self.notify_closure and not self.known and self.receipt_mark > 0:
                # the importer said what it holds only by its receipts (its first pass sent
                # no hint or mark): seed `known` from the receipt's mark as from a 106 mark
                with self.store.snapshot() as snap:
                    self._seed_known(snap, self.receipt_mark)
        except LamaError:
            pass  # `known` only stays smaller
        # the importer lacks at most the roots not in `known`: only theirs are needed
        lacking = [h for h in hashes if h not in self.known]
        if self.notify_closure and not lacking:
            # "No echo" (docs/chum-fastpath.md): the importer holds every new root (our import
            # of its own post made them accessible to it again); the base stays, so the next
            # NOTIFY still chains onto the importer's mark and its `mark` covers these roots
            return None
        payload = {"since": self.notify_base, "mark": self.notify_mark,
                   "roots": self._unlock_rows(roots)}
        if self.notify_closure and self.known and lacking:
            try:
                closure = self._notify_closure(lacking)
            except LamaError:
                closure = None  # a store error only leaves the closures out (the importer asks 106)
            if closure is not None:
                payload["closure"] = closure
        if self.notify_closure:
            # with or without closures: a receipt up to this mark says the importer holds them
            self.notified.append((self.notify_mark, hashes))
            del self.notified[:-_NOTIFIED_MAX]
        self.notify_base = self.notify_mark
        return [payload]

    def _notify_closure(self, hashes: list[str]) -> dict[str, Any] | None:
        """"notify-closure": the paged 106 entry of each of ``hashes`` (pruned at ``known``,
        dependencies first, microdata inline), or None when they do not fit the NOTIFY bounds
        or list a BLOB/CLOB.  Inline objects are logged like 101's, only when sent."""
        out: dict[str, Any] = {}
        sent: list[tuple[str, str]] = []
        listed: list[tuple[str, list[str]]] = []
        entries_n = 0
        chars = 0
        with self.store.snapshot() as snap:
            walks = []
            for h in hashes:
                kind = snap.kind(h)
                if kind not in ("object", "id"):
                    return None
                walk = self._walk_except(snap, h, NOTIFY_INLINE_ENTRIES - entries_n)
                if walk is None:
                    return None  # more than a NOTIFY carries: found without walking all of it
                entries_n += len(walk) + 1
                if entries_n > NOTIFY_INLINE_ENTRIES or any(t in ("blob", "clob") for t, _c in walk):
                    return None
                walks.append((h, kind, walk))
            for h, kind, walk in walks:
                root_text = snap.get(h)
                chars += len(root_text)
                sent.append((h, kind))
                entries = []
                for tag, c in walk:
                    text = snap.get(c)
                    chars += len(text)
                    sent.append((c, tag))
                    entries.append({"type": tag, "hash": c, "data": text})
                if chars > NOTIFY_INLINE_CHARS:
                    return None
                out[h] = {"root": root_text, "children": entries}
                listed.append((h, [c for _t, c in walk]))
        for _h, entries in ((h, e["children"]) for h, e in out.items()):
            self.accessible.update(e["hash"] for e in entries)
        for h, lst in listed:
            self._remember_sent(h, lst)
        for h, kind in sent:
            self._log_sent(h, kind)
        return out

    def _receipt_mark(self, mark: int) -> None:
        """A receipt with ``mark`` and no error: the importer holds everything accessible up
        to it, so the roots of every NOTIFY up to ``mark`` join ``known`` (without a walk when
        their closure was sent, inline or by 106), and the next NOTIFY's closures list only
        what is new."""
        self.receipt_mark = max(self.receipt_mark, mark)
        confirmed = [hs for m, hs in self.notified if m <= mark]
        self.notified = [(m, hs) for m, hs in self.notified if m > mark]
        if not confirmed:
            return
        with self.store.snapshot() as snap:
            for hs in confirmed:
                # newest first: the newest node's closure (often a sent list) holds the rest
                for h in reversed(hs):
                    self._hold(snap, h)

    def _hold(self, snap: Any, k: Any) -> None:
        """The importer holds ``k`` (a hint, or a root a receipt confirmed): ``k`` and its
        closure join ``known``, from the list sent for it if there is one, else by one walk
        stopped at ``known``.  Only a hash unlocked in this session counts."""
        if not isinstance(k, str) or not _HASH.match(k) or k in self.known \
                or k not in self.accessible:
            return
        sent = self.sent.pop(k, None)
        if sent is not None:
            # known was downward closed when the list was cut from the closure, so the
            # list plus known is the whole closure of the hint
            self.sent_total -= len(sent)
            self.known.update(sent)
            self.known.add(k)
            return
        if snap.kind(k) not in ("object", "id"):
            return
        self.known.update(c for _t, c in self._walk_except(snap, k))
        self.known.add(k)

    @overload
    def _walk_except(self, snap: Any, h: str) -> list[tuple[str, str]]: ...
    @overload
    def _walk_except(self, snap: Any, h: str, limit: int) -> list[tuple[str, str]] | None: ...

    def _walk_except(self, snap: Any, h: str, limit: int | None = None) -> list[tuple[str, str]] | None:
        """chum.md §5.3 children of ``h`` as ``(tag, hash)``, dependencies first, pruned at
        ``known``: a known hash is neither listed nor descended into (as ``known`` is downward
        closed, this is the closure minus ``known``).  With ``limit``: None as soon as more than
        ``limit`` hashes are found (a NOTIFY's bound: a big closure is not walked twice)."""
        known = self.known
        seen = {h}
        out: list[tuple[str, str]] = []
        stack: list[tuple[tuple[str, str] | None, list[tuple[str, str, str]], int]] = [
            (None, references(snap.get(h)), 0)]
        while stack:
            done, refs, i = stack[-1]
            if i == len(refs):
                stack.pop()
                if done is not None:
                    out.append(done)
                continue
            stack[-1] = (done, refs, i + 1)
            _path, kind, c = refs[i]
            if c in known or c in seen:
                continue
            seen.add(c)
            if limit is not None and len(seen) > limit + 1:
                return None
            tag = _TAGS.get(kind, kind)
            if tag in ("blob", "clob"):
                out.append((tag, c))
            else:
                stack.append(((tag, c), references(snap.get(c)), 0))
        return out

    def _seed_known(self, snap: Any, mark: int) -> None:
        """docs/chum-fastpath.md "Mark": once per session, ``known`` gets the closure of the
        newest version node of each ID among the roots that were accessible to the peer at its
        ``mark`` (it imported all of them and holds their closures by its "no holes"
        invariant), so the first push after a reconnect lists only what is new instead of the
        whole history.  Only roots accessible to the peer are used: the pruning tells it
        nothing it may not see."""
        if self.seeded:
            return
        self.seeded = True
        _m, every = self.store.accessible_roots(self.remote_person)
        _m, after = self.store.accessible_roots(self.remote_person, mark)
        later = {h for _k, h, _i, _t in after}
        newest: dict[str, str] = {}  # data ID -> node; roots come in the order they became accessible
        for kind, h, id_hash, _t in every:
            if kind == "version_node" and id_hash and h not in later:
                newest[id_hash] = h
        for h in newest.values():
            if h not in self.known:
                self.known.update(c for _t, c in self._walk_except(snap, h))
                self.known.add(h)

    def _closure(self, args: list[Any]) -> str:
        """106 GET_CLOSURE ``[[root, ...], [hint, ...]]`` (docs/chum-fastpath.md "closure").
        Hints are hashes the importer holds; by its "no holes" invariant it holds their whole
        closure, so they and their closures join ``known`` (only hints unlocked in this session
        count: a hint must not tell the peer whether we hold something it may not see).  Each
        root's answer is its children list (as 105) without anything in ``known``, objects
        and ID objects with their microdata inline (``data``) within the inline budget, plus
        the root's own microdata.  Everything listed is unlocked; inline objects are logged
        like 101."""
        roots = args[0] if args else None
        if not isinstance(roots, list) or len(roots) > BATCH_MAX:
            raise ServiceError("LAMA-CHUM-BATCH", f"expected a list of at most {BATCH_MAX} hashes")
        hints = args[1] if len(args) > 1 else []
        if hints is rpc.UNDEF or hints is None:
            hints = []
        if not isinstance(hints, list) or len(hints) > CLOSURE_HINTS_MAX:
            raise ServiceError("LAMA-CHUM-BATCH", f"expected a list of at most {CLOSURE_HINTS_MAX} hints")
        page = None
        if len(args) > 3 and isinstance(args[3], dict):
            # "closure-pages": each root's closure in pages of L entries, dependencies first
            page = args[3].get("page")
            if not isinstance(page, int) or isinstance(page, bool) or page < 1:
                raise ServiceError("LAMA-CHUM-BATCH", 'expected {"page": L} with an integer L >= 1')
            page = min(page, CLOSURE_PAGE_MAX)
        chars_left = CLOSURE_INLINE_CHARS
        out: list[dict[str, Any] | None] = []
        with self.store.snapshot() as snap:
            # the importer's mark (a write sequence of this store up to which it imported every
            # root accessible to it), sent with its first 106 of the session
            mark = args[2] if len(args) > 2 else None
            if isinstance(mark, int) and not isinstance(mark, bool) and mark > 0:
                self._seed_known(snap, mark)
            for k in hints:
                self._hold(snap, k)
            # inline only once the importer said what it holds: the list is then what it lacks
            # (a push).  Without hints (a first or resumed sync) the list is the whole closure,
            # of which it may hold most: it fetches only what it lacks with 101.
            inline_left = CLOSURE_INLINE_MAX if self.known else 0
            for r in roots:
                kind = snap.kind(r) if isinstance(r, str) and _HASH.match(r) else None
                if kind not in ("object", "id") or r not in self.accessible:
                    out.append(None)
                    continue
                if page is not None and len(self.walks) < CLOSURE_WALKS_MAX:
                    pw = _PageWalk(r, kind, references(snap.get(r)), page)
                    first = pw.next(snap, self.known, page)
                    if not pw.done:
                        entries, inline_left, chars_left = self._entries(snap, first, inline_left, chars_left)
                        wid = self.next_walk
                        self.next_walk += 1
                        pw.listed = [c for _t, c in first]
                        self.walks[wid] = pw
                        out.append(_closure_entry(None, entries, f"{wid}.1"))
                        continue
                    walk = first  # the whole closure fit in one page
                else:
                    walk = self._walk_except(snap, r)
                root_text = None
                if inline_left:
                    root_text = snap.get(r)
                    self._log_sent(r, kind)
                    chars_left -= len(root_text)
                # inline in dependency order; unpaged, listed parents first (the 4/5 order)
                entries, inline_left, chars_left = self._entries(snap, walk, inline_left, chars_left)
                if page is None:
                    entries.reverse()
                self._remember_sent(r, [c for _t, c in walk])
                out.append({"root": root_text, "children": entries})
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    def _entries(self, snap: Any, walk: list[tuple[str, str]], inline_left: int,
                 chars_left: int) -> tuple[list[dict[str, str]], int, int]:
        """The wire entries of ``walk`` (in its order), the microdata of objects and ID
        objects inline within the budget left; every listed hash is unlocked."""
        entries: list[dict[str, str]] = []
        for tag, c in walk:
            e = {"type": tag, "hash": c}
            if tag in ("object", "id") and inline_left > 0 and chars_left > 0:
                text = snap.get(c)
                inline_left -= 1
                chars_left -= len(text)
                self._log_sent(c, tag)
                e["data"] = text
            self.accessible.add(c)
            entries.append(e)
        return entries, inline_left, chars_left

    def _remember_sent(self, r: str, listed: list[str]) -> None:
        """The pruned closure sent for ``r``: when the importer later says it holds ``r``,
        ``known`` grows by it without a walk."""
        if self.sent_total + len(listed) > _SENT_MAX:
            self.sent.clear()
            self.sent_total = 0
        old = self.sent.get(r)
        if old is not None:
            self.sent_total -= len(old)
        self.sent[r] = listed
        self.sent_total += len(listed)

    def _closure_page(self, args: list[Any]) -> str:
        """109 GET_CLOSURE_PAGE ``[t]`` (docs/chum-fastpath.md "closure-pages"): the next
        page of the walk the token names, as a JSON string of one root's 106 entry,
        dependencies first, with ``"more": t'`` unless it is the last (which carries the
        root's microdata when data goes inline).  The previous page's token gets that page
        again (a retry); any other token: LAMA-CHUM-PAGE."""
        token = args[0] if args else None
        if not isinstance(token, str):
            shown = "undefined" if token is None or token is rpc.UNDEF else \
                json.dumps(token, ensure_ascii=False, separators=(",", ":"))
            raise ServiceError("LAMA-CHUM-PAGE", f"not a page token: {shown[:100]}")
        wid_s, _dot, k_s = token.partition(".")
        pw = None
        k = -1
        if wid_s.isdigit() and k_s.isdigit() and wid_s.isascii() and k_s.isascii():
            pw = self.walks.get(int(wid_s))
            k = int(k_s)
        if pw is not None and pw.last is not None and pw.last[0] == k:
            return pw.last[1]
        if pw is None or pw.seq != k:
            raise ServiceError("LAMA-CHUM-PAGE", f"unknown or expired page token {token[:100]}")
        wid = int(wid_s)
        with self.store.snapshot() as snap:
            walk = pw.next(snap, self.known, pw.page)
            pw.listed.extend(c for _t, c in walk)
            inline_left = CLOSURE_INLINE_MAX if self.known else 0
            chars_left = CLOSURE_INLINE_CHARS
            if pw.done:
                del self.walks[wid]
                root_text = None
                if inline_left:
                    root_text = snap.get(pw.root)
                    self._log_sent(pw.root, pw.kind)
                    chars_left -= len(root_text)
                entries, _i, _c = self._entries(snap, walk, inline_left, chars_left)
                self._remember_sent(pw.root, pw.listed)
                return json.dumps(_closure_entry(root_text, entries, None), ensure_ascii=False,
                                  separators=(",", ":"))
            entries, _i, _c = self._entries(snap, walk, inline_left, chars_left)
            text = json.dumps(_closure_entry(None, entries, f"{wid}.{k + 1}"), ensure_ascii=False,
                              separators=(",", ":"))
            pw.seq = k + 1
            pw.last = (k, text)
            return text

    def _log_sent(self, h: str, kind: str) -> None:
        if kind == "id":
            self.log["AtoBIdObjects"].append(h)
            self.stats["id_objects_sent"] += 1
        else:
            self.log["AtoBObjects"].append(h)
            self.stats["objects_sent"] += 1

    def _arg_hash(self, args: list[Any], code: str, what: str) -> str:
        h = args[0] if args else None
        if not isinstance(h, str) or not _HASH.match(h):
            # the value as JSON, cut to 100 characters (language-neutral: both cores agree)
            raise ServiceError(code, f"Not a valid {what}: {json.dumps(h, ensure_ascii=False, separators=(',', ':'))[:100]}")
        return h

    def children_list(self, h: str) -> list[dict[str, str]]:
        """The wire children of ``h``: the store's §5.3 post-order walk reversed (parents first
        on the wire), each tagged with the kind of its stored entry."""
        with self.store.snapshot() as snap:
            post = snap.children(h)
            out = []
            for c in reversed(post):
                kind = snap.kind(c)
                if kind is None:  # cannot happen: the walk loaded it or it is a leaf
                    kind = "blob"
                out.append({"type": kind, "hash": c})
        return out

    def _children(self, args: list[Any], id_object: bool) -> str:
        if id_object:
            h = self._arg_hash(args, "UTC-EIDHASH", "ID hash")
            if h not in self.accessible:
                raise ServiceError("CES-GIDOC1", f"Unauthorized, id obj children for {h}")
        else:
            h = self._arg_hash(args, "UTC-EHASH", "hash")
            if h not in self.accessible:
                raise ServiceError("CES-GOC1", f"Unauthorized, obj children for {h}")
        children = self.children_list(h)
        for c in children:
            self.accessible.add(c["hash"])
        return rpc.list_json(children)

    def _object(self, args: list[Any], id_object: bool) -> str:
        h = self._arg_hash(args, "UTC-EIDHASH" if id_object else "UTC-EHASH",
                           "ID hash" if id_object else "hash")
        if h not in self.accessible:
            self.on_error("CES-GIDO1" if id_object else "CES-GO1",
                          f"refused {h}: not accessible to {self.remote_person}")
            if id_object:
                raise ServiceError("CES-GIDO1", f"Unauthorized, id obj {h}")
            raise ServiceError("CES-GO1", f"Unauthorized, obj {h}")
        kind = self.store.kind(h)
        if id_object and kind != "id":
            raise ServiceError("CES-GIDO2", f"Not an ID object: {h}")
        if not id_object and kind != "object":
            raise ServiceError("CES-GO2", f"Not an object: {h}")
        text: str = self.store.get(h)
        if id_object:
            self.log["AtoBIdObjects"].append(h)
            self.stats["id_objects_sent"] += 1
        else:
            self.log["AtoBObjects"].append(h)
            self.stats["objects_sent"] += 1
        return text

    def _blob(self, rid: int, args: list[Any]) -> list[str | bytes]:
        h = self._arg_hash(args, "UTC-EHASH", "hash")
        encoding = args[1] if len(args) > 1 else None
        if encoding not in (None, "utf8"):
            raise ServiceError("CES-GBL2", f"Unsupported encoding {encoding!r}")
        if h not in self.accessible:
            self.on_error("CES-GBL1", f"refused BLOB {h}: not accessible to {self.remote_person}")
            raise ServiceError("CES-GBL1", f"Unauthorized, BLOB {h}")
        kind = self.store.kind(h)
        if kind not in ("blob", "clob"):
            # the reference fails while reading the file: a stream error, not an error answer
            return [rpc.stream_error(rid)]
        chunks: list[bytes] = self.store.read_blob_chunks(h)
        out: list[str | bytes] = []
        if encoding is None:
            # chum.md §2.6: binary frames of at most BLOB_PAYLOAD bytes each
            for c in chunks:
                mv = memoryview(c)
                for off in range(0, len(c), BLOB_PAYLOAD):
                    out.append(rpc.binary_frame(rid, mv[off:off + BLOB_PAYLOAD]))
        else:
            try:
                text = b"".join(chunks).decode("utf-8")
            except UnicodeDecodeError:
                return [rpc.stream_error(rid)]
            for i, off in enumerate(range(0, len(text), CLOB_CHUNK)):
                out.append(rpc.stream_chunk(rid, text[off:off + CLOB_CHUNK], "utf8" if i == 0 else None))
        out.append(rpc.stream_end(rid))
        if kind == "clob":
            self.log["AtoBClob"].append(h)
            self.stats["clobs_sent"] += 1
        else:
            self.log["AtoBBlob"].append(h)
            self.stats["blobs_sent"] += 1
        return out
