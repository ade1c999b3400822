"""The importer half of a CHUM session (chum.md §6), written as a generator: it yields
:class:`Call` (requests to send, pipelined) and :class:`Sleep`, and the session resumes it with
the outcomes.  No I/O and no clock here; the session owns both."""

from __future__ import annotations

import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

from ...errors import LamaError
from ..microdata import id_microdata_of, parse, references, sha256_hex, type_of
from . import rpc
from .exporter import (BATCH_MAX, CLOSURE_HINTS_MAX, CLOSURE_INLINE_CHARS, CLOSURE_INLINE_MAX, FASTPATH_VERSION, GET_CLOSURE, GET_CLOSURE_PAGE, FIN, GET_ACCESSIBLE_ROOTS, GET_BLOB,
                       GET_ID_OBJECT, GET_ID_OBJECT_CHILDREN, GET_OBJECT, GET_OBJECT_CHILDREN,
                       GET_CHILDREN_BATCH, GET_OBJECTS_BATCH, GET_OBJECTS_BINARY, GET_PROTOCOL_VERSION,
                       GET_ROOTS_SINCE, LAMA_PROBE, LAMA_RECEIPT,
                       RECEIPT_ERROR_CHARS, RECEIPT_ERRORS_MAX, SUBSCRIBE, parse_batch_binary)

_HASH = re.compile(r"^[0-9a-f]{64}$")

VERSION_RETRY_DELAY = 0.3
# an error answer to the roots request: retries, and the pause per attempt (seconds)
ROOTS_RETRIES = 3
ROOTS_RETRY_DELAY = 0.2
VERSION_RETRIES = 15
"""chum.md §3.3: service 1 is retried every 300 ms, 15 times, on UNKNOWN-SERVICE only."""

ACCEPTED_VERSIONS = (8, 9)
"""chum.md §10.3: accept 8, and 9 as "v8 + maybe extensions"."""

REFUSED_TYPES = frozenset({"Access", "IdAccess", "Group"})
"""chum.md §6.4: remote peers must not alter local access rights."""

_REF_KINDS = {"obj": "object", "id": "id", "blob": "blob", "clob": "clob"}
"""The kind of a reference (microdata ``data-type``) -> the children-list tag it must have."""

VERSION_NODE_TYPES = frozenset({"VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge"})

COMMIT_BATCH = 4096
"""Objects per store transaction.  The fetch commits what is ready once this many are (or would
be after the next call), not after every call: every commit of a durable store costs an fsync,
and v8's 256-request calls made a 70,000-object sync 273 commits (issue 8, benches/RESULTS.md
session 4)."""
COMMIT_INTERVAL = 0.5
"""... and at the latest this many seconds after the oldest uncommitted item became ready (the
session's timer drives it: :meth:`Importer.commit_deadline`), at the end of the fetch, and when
the session ends (connection closed, fatal error): a slow or interrupted pass keeps what it
verified, and ``imported`` events keep coming."""
CLOSURE_PAGE = 4096
"""docs/chum-fastpath.md "closure-pages": entries per closure page the importer asks for."""
COMMIT_MIN_FAST = 8192
COMMIT_BATCH_FAST = 32768
"""With "batch" (docs/chum-fastpath.md): a fetched chunk is committed only once this many items
are ready (the first chunk of a pass at once, and at the end), up to COMMIT_BATCH_FAST per
transaction: each commit rewrites the B-tree pages its random keys touch (issue 8)."""

FETCH_CHUNK = 256
"""Object requests per call (v8; with "batch", FETCH_CHUNK_BATCHES requests of BATCH_MAX): the
unit the session hands back whole (its answers are verified together)."""
FETCH_CHUNK_BATCHES = 8
FETCH_AHEAD = 3
"""Calls of a pass's fetch kept out at once: while the importer verifies and commits one chunk,
the exporter serves the next ones (issue 8); bounds what is held to this many chunks of answers."""


@dataclass
class Req:
    service: int
    args: list[Any]
    stream: str | None = None  # "blob" / "clob": a GET_BLOB stream answer is expected
    binary: bool = False  # GET_OBJECTS_BINARY: the answer is one binary message


@dataclass
class Outcome:
    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""


@dataclass
class Call:
    reqs: list[Req]


@dataclass
class Calls:
    """Several calls, each answered (resumed) separately, in order; none at all means: wait
    for the calls already out. Only the fetch of a pass keeps more than one call out."""

    calls: list[list[Req]]


@dataclass
class Sleep:
    seconds: float


class Fatal(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message if message.startswith(code) else f"{code}: {message}")
        self.code = code


@dataclass
class _Item:
    """One hash to fetch in a pass."""

    hash: str
    kind: str  # object / id / blob / clob
    expected_type: str | None = None
    text: str | None = None
    type_name: str = ""
    refs: list[tuple[str, str, str]] = field(default_factory=list)
    depth: float | None = None  # a listed version node's, kept when it is committed
    ok: bool = False
    stored: bool = False
    fetched: bool = False  # its answer was processed (verified or refused)
    bad: bool = False  # verified, but refused for a reference (CI-ACO) or by the store


class Importer:
    def __init__(self, store: Any, keep_running: bool, poll_interval: float,
                 emit: Callable[[str, dict[str, Any]], None],
                 error: Callable[[str, str, bool], None],
                 log: dict[str, list[str]], stats: dict[str, int],
                 fast_path: bool = False, remote_person: str = ""):
        self.store = store
        self.fast_path = fast_path
        self.remote_person = remote_person
        self.mode = "v8"
        self.features: set[str] = set()
        self.peer_key: str | None = None  # store.peer_mark key of the remote exporter
        self.since = 0  # its write sequence up to which every root was imported
        self.mark_told = False  # the mark went with a 106 in this session
        self.subscribed = False
        self.keep_running = keep_running
        self.poll_interval = poll_interval
        self.emit = emit
        self.error = error
        self.pass_errors = 0
        self.log = log
        self.stats = stats
        self.full_sync = False
        self.pass_errors = 0
        self.pass_error_texts: list[str] = []
        self.pass_roots = 0
        self.receipt_mark: int | None = None
        self.pending: dict[str, str] = {}  # BLOB/CLOB hash -> reason (chum.md §2.6)
        self.remote_version: int | None = None
        # "notify-roots": (since, mark, roots) carried by NOTIFYs not used yet; notes_bad when
        # one could not be read (the next pass then asks 102)
        self.notes: list[tuple[int, int, list[Any]]] = []
        self.notes_bad = False
        # "notify-closure": the closures those NOTIFYs carried (hash -> a paged 106 entry), and
        # those of the notes the current pass took (a children round whose every root is here
        # uses them instead of asking 106)
        self.note_closure: dict[str, Any] = {}
        self.inline: dict[str, Any] = {}
        # "closure" hints: roots of earlier passes of this session stored here (so is their
        # closure), not told to the exporter yet; the hashes told or queued
        self.hints: list[str] = []
        self.hinted: set[str] = set()
        self.pass_hints: list[str] = []
        self.pass_closure = False
        self.persisting = False  # a zero sleep before the peer mark is written
        self.mark_due: int | None = None  # the pass's mark, written after its receipt
        # docs/chum-fastpath.md "The mark in a push's commit": the mark of the running pass (if
        # its roots request gave one), the pending BLOBs/CLOBs when it started, and the mark
        # written in the transaction of its last commit (then no separate mark commit follows)
        self.pass_mark: int | None = None
        self.pending_before = 0
        self.mark_committed: int | None = None
        self.now: float | None = None  # the driver's time of the call being handled (session)
        self._com: _Committer | None = None  # the commit state of the pass's fetch
        self._ready_since: float | None = None  # ready items wait uncommitted since then

    def commit_deadline(self) -> float | None:
        """When the session should call :meth:`commit_ready`: verified items wait for their
        commit (at most COMMIT_INTERVAL)."""
        if self._com is None or not self._com.ready or self._ready_since is None:
            return None
        return self._ready_since + COMMIT_INTERVAL

    def commit_ready(self) -> None:
        """Commit every verified item that may be stored now: the commit interval passed, or
        the session ends (connection closed, a fatal error), so an interrupted pass keeps what
        it verified and the next one fetches only the rest."""
        if self._com is not None and self._com.ready:
            self._com.flush([], [])
        self._ready_since = None

    def _mark_in_commit(self) -> tuple[str, int] | None:
        """docs/chum-fastpath.md "The mark in a push's commit": ``(peer key, mark)`` when the
        running pass may write its mark in the transaction of its last commit - a keep-running
        session that has subscribed (its pushes; the first pass keeps "Receipt before the
        mark"), a mark from the roots request, and no error or pending BLOB/CLOB so far. The
        commit then adds it only if every item of the pass is stored or in that batch."""
        if self.peer_key is None or self.pass_mark is None or not (self.keep_running and self.subscribed):
            return None
        if self.pass_errors or self.pending or self.pending_before:
            return None
        return self.peer_key, self.pass_mark

    def _end_flush(self, com: _Committer) -> None:
        """The fetch is over: commit what is ready, fast-forwarding heads - unless the pass
        may write its mark with its last commit; then that commit is ``_finish``'s (nothing
        can follow it: BLOBs/CLOBs come before it, the paged walk's rounds are over)."""
        if self._mark_in_commit() is None:
            com.flush([], [], forward=True)
        self._ready_since = None

    def _commit_if_due(self, com: _Committer, end: bool, chunk: int) -> None:
        """After a fetch call was verified: commit what is ready if COMMIT_BATCH items are (or
        would be after the next call), the fetch is over, or the oldest waited COMMIT_INTERVAL;
        else remember since when they wait."""
        if not com.ready:
            self._ready_since = None
            return
        late = (self._ready_since is not None and self.now is not None
                and self.now - self._ready_since >= COMMIT_INTERVAL)
        # v8: a full COMMIT_BATCH; fast path: the pass's first chunk at once (the first objects
        # are visible early), then COMMIT_MIN_FAST
        if "batch" in self.features:
            full = not com.stored or len(com.ready) >= COMMIT_MIN_FAST
        else:
            full = len(com.ready) + chunk > COMMIT_BATCH
        if end:
            # the fetch is over: this commit may be the pass's last one (no BLOB/CLOB after)
            self._end_flush(com)
        elif late or full:
            com.flush([], [])
            self._ready_since = None
        elif self._ready_since is None:
            self._ready_since = self.now

    def notified(self, payload: Any) -> None:
        """A NOTIFY came (docs/chum-fastpath.md "Push"); with "notify-roots" its argument is
        ``{"since", "mark", "roots"}``, kept for the next pass."""
        if self.peer_key is None or "notify-roots" not in self.features:
            return
        ok = isinstance(payload, dict)
        since = payload.get("since") if ok else None
        mark = payload.get("mark") if ok else None
        roots = payload.get("roots") if ok else None
        if all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (since, mark)) \
                and isinstance(roots, list):
            self.notes.append((since, mark, roots))  # type: ignore[arg-type]
        else:
            self.notes_bad = True
        if "notify-closure" in self.features and isinstance(payload, dict):
            closure = _notify_closure(payload.get("closure"))
            if closure is not None:
                self.note_closure.update(closure)

    def _take_inline(self, calls: list[tuple[int, str, str, str | None]]) -> str | None:
        """"notify-closure": the entries the NOTIFYs carried for a children round whose every
        root has one, as a paged 106 answer text (in ``calls``' order); None (ask 106)
        otherwise.  What is taken is verified exactly like a 106 answer."""
        if not self.inline or not calls or not all(h in self.inline for _s, h, _k, _e in calls):
            return None
        return json.dumps([self.inline.pop(h) for _s, h, _k, _e in calls], ensure_ascii=False,
                          separators=(",", ":"))

    def _take_notes(self) -> tuple[int, list[Any]] | None:
        """The roots the NOTIFYs carried, with their mark, when they chain onto our mark
        (every root that became accessible after it is among them); else None."""
        notes, self.notes = self.notes, []
        bad, self.notes_bad = self.notes_bad, False
        closures, self.note_closure = self.note_closure, {}
        if bad or not notes or self.peer_key is None:
            return None
        upto = self.since
        roots: list[Any] = []
        for since, mark, lst in notes:
            if since > upto:
                return None
            upto = max(upto, mark)
            roots.extend(lst)
        self.inline = closures
        return upto, roots

    def _closure_pass_ended(self) -> None:
        """The pass's hint candidates that are stored here become hints; a 106 pass that
        recorded an error stops using 106 for this session (the exporter may have pruned
        wrongly, or our store lost something: 105's whole-closure walk fetches what is
        missing)."""
        self.inline = {}
        cand = [h for h in self.pass_hints if h not in self.hinted]
        self.pass_hints = []
        if cand:
            have = set(cand) - set(self.store.missing(cand))
            for h in cand:
                if h in have and h not in self.hinted:
                    self.hinted.add(h)
                    self.hints.append(h)
        if self.pass_closure and self.pass_errors:
            self.features.discard("closure")
        self.pass_closure = False

    def _note_hint_candidates(self, roots: list[dict[str, Any]]) -> None:
        """Per version-node ID the newest listed node (its closure holds the older ones),
        every other root itself."""
        self.pass_hints = []
        if "closure" not in self.features:
            return
        newest: dict[str, str] = {}
        for r in roots:
            if r["type"] == "version_node":
                newest[r["dataIdHash"]] = r["node"]
            else:
                self.pass_hints.extend(r[k] for k in ("hash", "idHash") if k in r)
        self.pass_hints.extend(newest.values())

    def _err(self, code: str, message: str, fatal: bool) -> None:
        self.pass_errors += 1
        if len(self.pass_error_texts) < RECEIPT_ERRORS_MAX:
            text = message if message.startswith(f"{code}:") else f"{code}: {message}"
            self.pass_error_texts.append(text[:RECEIPT_ERROR_CHARS])
        self.error(code, message, fatal)

    # -- main loop (chum.md §6.1) -------------------------------------------------------------

    def run(self) -> Generator[Call | Calls | Sleep, Any, None]:
        yield from self._version_check()
        while True:
            yield from self._pass()
            self._closure_pass_ended()
            if not self.full_sync:
                self.full_sync = True
                self.emit("full_sync", {})
            if not self.keep_running:
                (fin,) = yield Call([Req(FIN, [])])
                if not fin.ok and fin.code == "LAMA-CHUM-TIMEOUT":
                    raise Fatal(fin.code, fin.message)
                return
            if "push" in self.features and not self.subscribed:
                # docs/chum-fastpath.md: the exporter calls our NOTIFY when roots appear
                # "notify-roots": the NOTIFYs carry the new roots (an older lama ignores this)
                # "notify-closure": and the new roots' closures, when the pass can use them
                arg: dict[str, Any] = {"roots": True}
                if {"notify-closure", "closure", "closure-pages"} <= self.features:
                    # with our mark: the exporter seeds what we hold from it ("Mark")
                    arg["closure"] = True
                    arg["mark"] = self.since
                (sub,) = yield Call([Req(SUBSCRIBE, [arg] if "notify-roots" in self.features else [])])
                self.subscribed = sub.ok
                self.notes = []
                self.note_closure = {}
            # with pushes, polling is only the fallback (the uvc note: 10 x pollInterval)
            yield Sleep(self.poll_interval * (10 if self.subscribed else 1))

    def _version_check(self) -> Generator[Call | Calls | Sleep, Any, None]:
        for attempt in range(VERSION_RETRIES + 1):
            (r,) = yield Call([Req(GET_PROTOCOL_VERSION, [])])
            if r.ok:
                break
            if r.code == "UNKNOWN-SERVICE" and attempt < VERSION_RETRIES:
                yield Sleep(VERSION_RETRY_DELAY)
                continue
            raise Fatal(r.code or "CS-MISMATCH", f"version check failed: {r.message}")
        v = r.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v not in ACCEPTED_VERSIONS:
            raise Fatal("CS-MISMATCH", f"remote protocol version {v!r}, expected 8")
        self.remote_version = int(v)
        if self.fast_path:
            # chum.md §10.3: probe only after the version check; a ONE peer answers
            # UNKNOWN-SERVICE and the session stays plain v8
            (p,) = yield Call([Req(LAMA_PROBE, [])])
            if p.ok and isinstance(p.value, dict) and p.value.get("lama") == FASTPATH_VERSION:
                feats = p.value.get("features")
                self.features = {f for f in feats if isinstance(f, str)} if isinstance(feats, list) else set()
                self.mode = "fast"
                epoch = p.value.get("epoch")
                if "roots-since" in self.features and hasattr(self.store, "peer_mark") and isinstance(epoch, str):
                    self.peer_key = f"{self.remote_person}/{epoch}"
                    self.since = int(self.store.peer_mark(self.peer_key))
        self.emit("version", {"remote": int(v), "mode": self.mode})

    # -- one pass ------------------------------------------------------------------------------

    def _pass(self) -> Generator[Call | Calls | Sleep, Any, None]:
        self.mark_due = self.mark_committed = None
        yield from self._pass_inner()
        due, self.mark_due = self.mark_due, None
        # written with the pass's last commit: the receipt still goes out (after the zero
        # sleep), and no mark commit follows it
        in_commit, self.mark_committed = due is not None and self.mark_committed == due, None
        # docs/tracing.md §4: a lama exporter learns what this pass stored (its mark) or why
        # it did not; only after a pass that listed something or failed
        if "receipt" in self.features and self.peer_key is not None \
                and (self.pass_roots or self.pass_error_texts):
            errors = list(self.pass_error_texts)
            if self.receipt_mark is None:  # what is still missing (BLOBs retried later)
                errors.extend(self.pending[h][:RECEIPT_ERROR_CHARS] for h in sorted(self.pending))
            receipt = {"mark": self.receipt_mark, "errors": errors[:RECEIPT_ERRORS_MAX]}
            # docs/chum-fastpath.md "Receipt before the mark": the receipt goes out before the
            # peer mark is written (the objects it vouches for are durable already); a crash
            # in between leaves the older mark, and the next session re-lists what B holds
            if due is not None and self.keep_running and self.subscribed:
                # the zero sleep of a push (below): this pass's events go out first
                self.persisting = True
                try:
                    yield Sleep(0.0)
                finally:
                    self.persisting = False
            (r,) = yield Call([Req(LAMA_RECEIPT, [receipt])])
            if due is not None and self.peer_key is not None and not in_commit:
                self.store.set_peer_mark(self.peer_key, due)
            if not r.ok and r.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(r.code, r.message)
            self.emit("receipt_sent", receipt)
        elif due is not None and self.peer_key is not None and not in_commit and self.pass_roots:
            # (a pass that listed nothing writes no mark: the roots between the lower mark on
            # disk and `due` are none, so it re-lists no more; as the Rust core)
            if self.keep_running and self.subscribed:
                # a stale mark on disk is safe (a reconnect re-lists roots it has): yield to
                # the driver first, so this pass's `imported` events go out before this
                # second commit (docs/chum-fastpath.md "Push")
                self.persisting = True
                try:
                    yield Sleep(0.0)
                finally:
                    self.persisting = False
            self.store.set_peer_mark(self.peer_key, due)

    def _ask_roots(self, service: int, args: list[Any]) -> Generator[Call | Calls | Sleep, Any, Outcome]:
        """The roots request; an error answer (not a timeout) is retried ROOTS_RETRIES times
        after a growing pause (connections.md §5.5: the reference answers SB-READ2 under write
        load). The last answer is returned."""
        attempt = 0
        while True:
            (r,) = yield Call([Req(service, args)])
            if r.ok or r.code == "LAMA-CHUM-TIMEOUT" or attempt >= ROOTS_RETRIES:
                return r
            attempt += 1
            self.stats["retries"] += 1
            yield Sleep(ROOTS_RETRY_DELAY * attempt)

    def _pass_inner(self) -> Generator[Call | Calls | Sleep, Any, None]:
        self.pass_errors = 0
        self.pass_error_texts = []
        self.pass_roots = 0
        self.receipt_mark = None
        pending_before = len(self.pending)
        mark = None
        noted = self._take_notes()
        if noted is not None:
            mark = noted[0]
            r = Outcome(True, json.dumps(noted[1]))
            value = r.value
        elif self.peer_key is not None:
            r = yield from self._ask_roots(GET_ROOTS_SINCE, [self.since])
            value = r.value
            if r.ok:
                if not isinstance(value, str):
                    value = None
                else:
                    try:
                        d = json.loads(value)
                        mark, value = d["mark"], json.dumps(d["roots"])
                        if isinstance(mark, bool) or not isinstance(mark, int):
                            raise TypeError
                    except (ValueError, KeyError, TypeError):
                        mark = value = None
        else:
            r = yield from self._ask_roots(GET_ACCESSIBLE_ROOTS, [])
            value = r.value
        if not r.ok:
            if r.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(r.code, r.message)
            self._err(r.code, f"roots request failed: {r.message}", False)
            return
        roots = self._parse_roots(value)
        if roots is None:
            return
        self.pass_roots = len(roots)
        self._note_hint_candidates(roots)
        self.pass_mark, self.pending_before = mark, pending_before
        try:
            yield from self._import_roots(roots)
        finally:
            self.pass_mark = None
        # the high-water mark moves only after a pass that imported everything it listed
        if self.mark_committed is not None and (self.pass_errors or self.pending or pending_before):
            # not reached (_mark_in_commit lets nothing follow that commit); should it be, the
            # mark on disk goes back to where this pass started
            if self.peer_key is not None:
                self.store.set_peer_mark(self.peer_key, self.since)
            self.mark_committed = None
        if mark is not None and self.pass_errors == 0 and len(self.pending) == 0 and pending_before == 0:
            self.since = mark
            self.receipt_mark = mark
            if self.peer_key is not None:
                if self.keep_running and self.subscribed and not self.full_sync:
                    self.full_sync = True
                    self.emit("full_sync", {})
                self.mark_due = mark  # written by _pass, after the receipt (if any)

    def _import_roots(self, roots: list[dict[str, Any]]) -> Generator[Call | Calls | Sleep, Any, None]:

        # chum.md §6.2: what is missing decides what is asked for (one read for all)
        cand: list[str] = []
        for root in roots:
            cand.extend(h for h in (root.get("hash"), root.get("idHash"), root.get("node")) if h)
        missing = set(self.store.missing(cand)) if cand else set()

        # jobs: (children service, hash, fetch kind, expected type)
        jobs: list[tuple[int, str, str, str | None]] = []
        groups: dict[str, list[dict[str, Any]]] = {}
        for root in roots:
            t = root["type"]
            if t == "unversioned":
                if root["hash"] in missing:
                    jobs.append((GET_OBJECT_CHILDREN, root["hash"], "object", root.get("oneType")))
            elif t == "versioned":
                if root["idHash"] in missing:
                    jobs.append((GET_ID_OBJECT_CHILDREN, root["idHash"], "id", root.get("oneType")))
                if root["hash"] in missing:
                    jobs.append((GET_OBJECT_CHILDREN, root["hash"], "object", root.get("oneType")))
            elif t == "id":
                if root["idHash"] in missing:
                    jobs.append((GET_ID_OBJECT_CHILDREN, root["idHash"], "id", root.get("oneType")))
            else:
                groups.setdefault(root["dataIdHash"], []).append(root)

        group_missing: dict[str, list[str]] = {}
        for id_hash, nodes in groups.items():
            # dict.fromkeys keeps the order and deduplicates in linear time (a channel with n
            # posts lists n nodes; `not in` on a list was n²/2 comparisons)
            ms = list(dict.fromkeys(root["node"] for root in nodes if root["node"] in missing))
            if ms:
                group_missing[id_hash] = ms

        items: dict[str, _Item] = {}
        order: list[str] = []  # dependencies first, over all children lists
        start: list[str] = []  # hashes whose children were asked for (reachability roots)
        seen_jobs: set[tuple[int, str]] = set()
        prefetched: dict[str, str] = {}  # "closure": microdata that came inline

        # Children calls go out in rounds.  A root that an earlier answer listed as a child
        # needs no call of its own (it is fetched as a child, chum.md §8: the reference skips
        # roots that exist by the time it reaches them), so rounds start small and double:
        # one call when one root's closure covers the rest (a chat's newest entry lists the
        # older ones), log2(n) rounds when the roots are independent.  Of the version nodes of
        # an ID only the newest missing one is asked first: its closure holds the older ones
        # (§10.2); any node it does not cover is asked next round.  ID roots come after the
        # object roots: a Topic's closure holds its channel's ID object.
        queue = [j for j in jobs if j[0] == GET_OBJECT_CHILDREN] + [
            j for j in jobs if j[0] == GET_ID_OBJECT_CHILDREN]
        covered: set[str] = set()
        batch = 1

        def next_calls() -> list[tuple[int, str, str, str | None]]:
            nonlocal queue, batch
            calls: list[tuple[int, str, str, str | None]] = []
            rest = []
            for j in queue:
                if (j[0], j[1]) in seen_jobs:
                    continue
                if j[1] in covered:
                    if j[3] is not None and j[1] in items:
                        items[j[1]].expected_type = j[3]
                    continue
                if len(calls) < batch:
                    seen_jobs.add((j[0], j[1]))
                    calls.append(j)
                else:
                    rest.append(j)
            queue = rest
            for ms in group_missing.values():
                for n in reversed(ms):
                    if n not in covered and (GET_OBJECT_CHILDREN, n) not in seen_jobs:
                        seen_jobs.add((GET_OBJECT_CHILDREN, n))
                        calls.append((GET_OBJECT_CHILDREN, n, "object", None))
                        break
            if calls:
                batch *= 2
            return calls

        def closure_reqs(calls: list[tuple[int, str, str, str | None]], paged: bool) -> list[Req]:
            # docs/chum-fastpath.md "closure": children pruned at what we told the exporter
            # we hold, microdata inline; the first request carries the new hints
            reqs = []
            for o in range(0, len(calls), BATCH_MAX):
                hints, self.hints = self.hints[:CLOSURE_HINTS_MAX], self.hints[CLOSURE_HINTS_MAX:]
                args: list[Any] = [[h for _s, h, _k, _e in calls[o:o + BATCH_MAX]], hints]
                # the first 106 of the session tells the exporter our mark, so it can seed
                # what it knows we hold (docs/chum-fastpath.md "Mark")
                if not self.mark_told and self.peer_key is not None and self.since > 0:
                    self.mark_told = True
                    args.append(self.since)
                if paged:
                    # "closure-pages": each root's closure in pages, dependencies first
                    if len(args) == 2:
                        args.append(None)
                    args.append({"page": CLOSURE_PAGE})
                reqs.append(Req(GET_CLOSURE, args))
            return reqs

        first_calls: list[tuple[int, str, str, str | None]] | None = next_calls()
        if first_calls and "closure" in self.features and "closure-pages" in self.features:
            # "closure-pages" (docs/chum-fastpath.md): the fetch starts with the first page
            yield from self._paged(first_calls, next_calls, closure_reqs, items, order, covered,
                                   groups, group_missing, {j[1]: j[3] for j in jobs if j[3] is not None})
            return
        while True:
            calls = first_calls if first_calls is not None else next_calls()
            first_calls = None
            if not calls:
                break
            self.pass_closure = "closure" in self.features
            if self.pass_closure:
                closure_answers = yield Call(closure_reqs(calls, False))
                answers: list[Outcome] = []
                for k, res in enumerate(closure_answers):
                    answers.extend(o for o, _m in self._closure_result(calls[k * BATCH_MAX:(k + 1) * BATCH_MAX], res, prefetched))
            elif "children-batch" in self.features:
                # docs/chum-fastpath.md: one request per BATCH_MAX children lists
                batch_answers = yield Call([Req(GET_CHILDREN_BATCH, [[h for _s, h, _k, _e in calls[o:o + BATCH_MAX]]])
                                            for o in range(0, len(calls), BATCH_MAX)])
                answers = []
                for k, res in enumerate(batch_answers):
                    answers.extend(self._children_batch_result(len(calls[k * BATCH_MAX:(k + 1) * BATCH_MAX]), res))
            else:
                answers = yield Call([Req(s, [h]) for s, h, _, _ in calls])
            for (s, h, kind, expected), res in zip(calls, answers):
                children = self._children_result(h, res)
                if children is None:
                    continue
                start.append(h)
                for ckind, ch in children:
                    covered.add(ch)
                    if ch not in items:
                        items[ch] = _Item(ch, ckind)
                        order.append(ch)
                if h not in items:
                    items[h] = _Item(h, kind, expected)
                    order.append(h)
                elif expected is not None:
                    items[h].expected_type = expected
                covered.add(h)

        if not items:
            return
        need = set(self.store.missing(order))
        fetch = [items[h] for h in order if h in need]
        for h in order:
            if h not in need:
                items[h].ok = True
                items[h].stored = True  # already local
        # Objects first, then only the BLOBs/CLOBs that a verified object references as such:
        # a stream is stored as soon as it ends (before the objects are committed), so a hash
        # listed as "blob" that is really an object must never be fetched as one, or the store
        # would hold the right bytes under the wrong kind for good.
        texts = [it for it in fetch if it.kind in ("object", "id")]
        streams = [it for it in fetch if it.kind in ("blob", "clob")]
        if fetch:  # the total behind this pass's `imported` events (progress displays)
            self.emit("listed", {"objects": len(texts), "streams": len(streams)})
        node_ids = {n: id_hash for id_hash, ms in group_missing.items() for n in ms}
        node_types = {g["node"]: g["dataType"] for nodes in groups.values() for g in nodes}
        com = _Committer(self, items, start, node_ids, node_types, group_missing)
        self._com = com
        self._ready_since = None
        batched = "batch" in self.features
        com.max_batch = COMMIT_BATCH_FAST if batched else COMMIT_BATCH
        # Fetched in calls of a bounded size (dependencies first, docs/chum-session.md §2.1);
        # what may be stored is committed in batches of COMMIT_BATCH, at the latest
        # COMMIT_INTERVAL after it became ready, so an interrupted pass keeps what it verified
        # and the next session asks only for the rest (issue 8).
        chunk = BATCH_MAX * FETCH_CHUNK_BATCHES if batched else FETCH_CHUNK
        offset = 0
        if prefetched:
            # what came inline is verified as if a 101 answer had brought it, before anything
            # is fetched; only items this pass fetches count, other inline data is dropped
            pre = [it for it in texts if it.hash in prefetched]
            if pre:
                for it in pre:
                    self._verify(it, Outcome(True, prefetched[it.hash]))
                com.received(pre)
                if len(pre) == len(texts):
                    # nothing left to fetch: this may be the pass's last commit
                    self._end_flush(com)
                else:
                    com.flush([], [])
                pre_set = {it.hash for it in pre}
                texts = pre + [it for it in texts if it.hash not in pre_set]
                offset = len(pre)
            prefetched.clear()
        inflight: deque[list[_Item]] = deque()

        def top_up() -> list[list[Req]]:
            # up to FETCH_AHEAD calls out: the exporter serves them while this one is processed
            nonlocal offset
            calls = []
            while len(inflight) < FETCH_AHEAD and offset < len(texts):
                part = texts[offset:offset + chunk]
                offset += chunk
                calls.append(self._fetch_call(part, batched))
                inflight.append(part)
            return calls

        first = top_up()
        raw_results = (yield Calls(first)) if first else []
        while inflight:
            part = inflight.popleft()
            self._received_part(part, raw_results, batched, com)
            self._commit_if_due(com, not inflight and offset >= len(texts), chunk)
            more = top_up()
            if inflight:
                # resumed with the answers of the oldest call still out
                raw_results = yield Calls(more)
        yield from self._finish(items, texts, streams, com, groups, group_missing)

    def _paged(self, first_calls: list[tuple[int, str, str, str | None]],
               next_calls: Callable[[], list[tuple[int, str, str, str | None]]],
               closure_reqs: Callable[[list[tuple[int, str, str, str | None]], bool], list[Req]],
               items: dict[str, _Item], order: list[str], covered: set[str],
               groups: dict[str, list[dict[str, Any]]], group_missing: dict[str, list[str]],
               expects: dict[str, str]) -> Generator[Call | Calls | Sleep, Any, None]:
        """docs/chum-fastpath.md "closure-pages": 106 asks for pages of each root's closure
        (dependencies first); the fetch starts with the first page and one closure request
        (the next page of a walk, else the next round of roots once every walk of this one is
        complete) stays out beside the fetch calls.  Each list joins the pass and goes to the
        fetch at once; a root whose walk is complete is added after its closure and reached
        (an item is reached through a verified referrer, the root arrives last); the
        reachability check runs after the last page."""
        self.pass_closure = True
        node_ids = {n: id_hash for id_hash, ms in group_missing.items() for n in ms}
        node_types = {g["node"]: g["dataType"] for nodes in groups.values() for g in nodes}
        com = _Committer(self, items, [], node_ids, node_types, group_missing)
        self._com = com
        self._ready_since = None
        batched = "batch" in self.features
        com.max_batch = COMMIT_BATCH_FAST if batched else COMMIT_BATCH
        chunk = BATCH_MAX * FETCH_CHUNK_BATCHES if batched else FETCH_CHUNK
        texts: list[_Item] = []  # objects and ID objects to fetch, dependencies first
        fetched: list[_Item] = []  # every object and ID object this pass fetched or got inline
        streams: list[_Item] = []
        prefetched: dict[str, str] = {}
        pages: deque[tuple[tuple[int, str, str, str | None], str]] = deque()
        out: deque[tuple[str, Any]] = deque()  # ("objects", part) | ("closure", calls) | ("page", job)
        fed = 0
        offset = 0
        closure_out = False
        objects_out = 0

        def feed() -> None:
            nonlocal fed
            new = order[fed:]
            fed = len(order)
            if not new:
                return
            need = set(self.store.missing(new))
            fetch = []
            for h in new:
                if h in need:
                    fetch.append(items[h])
                else:
                    items[h].ok = items[h].stored = True  # already local
            t = [it for it in fetch if it.kind in ("object", "id")]
            streams.extend(it for it in fetch if it.kind in ("blob", "clob"))
            if fetch:  # listed page by page: the totals add up (progress displays)
                self.emit("listed", {"objects": len(t), "streams": len(fetch) - len(t)})
            fetched.extend(t)
            # inline data of items this pass fetches: verified now, not asked for; other
            # inline data is dropped
            pre = [it for it in t if it.hash in prefetched]
            texts.extend(it for it in t if it.hash not in prefetched)
            for it in pre:
                self._verify(it, Outcome(True, prefetched[it.hash]))
            prefetched.clear()
            if pre:
                com.received(pre)
                # as after a fetch call: the fetch is over when nothing is out or left to come
                self._commit_if_due(com, not objects_out and offset >= len(texts) and not closure_out
                                    and not pages, chunk)

        def take(calls: list[tuple[int, str, str, str | None]], answers: list[tuple[Outcome, str | None]]) -> None:
            for job, (res, more) in zip(calls, answers):
                _s, h, kind, expected = job
                children = self._children_result(h, res)
                if children is None:
                    continue
                for ckind, ch in children:
                    covered.add(ch)
                    if ch not in items:
                        items[ch] = _Item(ch, ckind, expects.get(ch))
                        order.append(ch)
                if more is not None:
                    pages.append((job, more))
                    continue
                if h not in items:
                    items[h] = _Item(h, kind, expected)
                    order.append(h)
                elif expected is not None:
                    items[h].expected_type = expected
                covered.add(h)
                com._reach(h)
            feed()

        def inline(calls: list[tuple[int, str, str, str | None]]) -> bool:
            # "notify-closure": a round the NOTIFY's closures answer needs no 106
            answer = self._take_inline(calls)
            if answer is None:
                return False
            take(calls, self._closure_result(calls, Outcome(True, answer), prefetched, True))
            return True

        def top_up() -> list[list[Req]]:
            nonlocal offset, closure_out, objects_out
            calls: list[list[Req]] = []
            if not closure_out:
                if pages:
                    job, token = pages.popleft()
                    calls.append([Req(GET_CLOSURE_PAGE, [token])])
                    out.append(("page", job))
                    closure_out = True
                else:
                    nxt = next_calls()
                    while nxt and inline(nxt):
                        nxt = next_calls()
                    if nxt:
                        calls.append(closure_reqs(nxt, True))
                        out.append(("closure", nxt))
                        closure_out = True
            # while pages are coming, a chunk goes out full, or alone (nothing else to do)
            listing = closure_out or bool(pages)
            while objects_out < FETCH_AHEAD and offset < len(texts) and (
                    len(texts) - offset >= chunk or not listing or not objects_out):
                part = texts[offset:offset + chunk]
                offset += len(part)
                calls.append(self._fetch_call(part, batched))
                out.append(("objects", part))
                objects_out += 1
            return calls

        raw_results: list[Outcome] = []
        if inline(first_calls):
            more = top_up()
            if out:
                raw_results = yield Calls(more)
        else:
            out.append(("closure", first_calls))
            closure_out = True
            raw_results = yield Calls([closure_reqs(first_calls, True)])
        while out:
            what, x = out.popleft()
            if what == "objects":
                objects_out -= 1
                part = x
                self._received_part(part, raw_results, batched, com)
                # the fetch is over only once no page is left to come
                self._commit_if_due(com, not objects_out and offset >= len(texts) and not closure_out
                                    and not pages, chunk)
            elif what == "closure":
                closure_out = False
                answers: list[tuple[Outcome, str | None]] = []
                for k, res in enumerate(raw_results):
                    answers.extend(self._closure_result(x[k * BATCH_MAX:(k + 1) * BATCH_MAX], res, prefetched, True))
                take(x, answers)
            else:
                closure_out = False
                # a 109 answer is one root's entry of a 106 answer
                (res,) = raw_results
                if res.ok and isinstance(res.value, str):
                    res = Outcome(True, f"[{res.value}]")
                take([x], self._closure_result([x], res, prefetched, True))
            more = top_up()
            if out:
                # resumed with the answers of the oldest call still out
                raw_results = yield Calls(more)
        if not items:
            self._com = None
            return
        yield from self._finish(items, fetched, streams, com, groups, group_missing)

    def _finish(self, items: dict[str, _Item], texts: list[_Item], streams: list[_Item], com: _Committer,
                groups: dict[str, list[dict[str, Any]]],
                group_missing: dict[str, list[str]]) -> Generator[Call | Calls | Sleep, Any, None]:
        """After the objects of a pass: the BLOBs/CLOBs that verified objects reference as
        such, the last commit, the reachability check and the ``merge`` events."""
        wanted: set[tuple[str, str]] = {(_REF_KINDS.get(k, k), r) for it in texts if it.ok
                                        for _p, k, r in it.refs}
        streams_ok = []
        for it in streams:
            if (it.kind, it.hash) in wanted:
                streams_ok.append(it)
            else:
                self._err("LAMA-CHUM-NOTREACHABLE", f"{it.hash} was listed as a {it.kind} that no "
                          "received object references as one; not fetched", False)
        reqs = [Req(GET_BLOB, [it.hash, rpc.UNDEF], "blob") if it.kind == "blob"
                else Req(GET_BLOB, [it.hash, "utf8"], "clob") for it in streams_ok]
        results = yield Call(reqs) if reqs else Call([])
        new_blobs: list[str] = []
        new_clobs: list[str] = []
        for it, res in zip(streams_ok, results):
            if res.ok:
                it.ok = it.stored = it.fetched = True
                com.stored_elsewhere(it.hash)
                self.pending.pop(it.hash, None)
                (new_clobs if it.kind == "clob" else new_blobs).append(it.hash)
                self.log["BtoAClob" if it.kind == "clob" else "BtoABlob"].append(it.hash)
                self.stats["clobs_received" if it.kind == "clob" else "blobs_received"] += 1
            else:
                reason = f"{res.code}: {res.message}" if res.code else res.message
                self.pending[it.hash] = reason
                self.emit("pending", {"hash": it.hash, "kind": it.kind, "reason": reason})

        com.flush(new_blobs, new_clobs, final=True, forward=True, mark=self._mark_in_commit())
        self._com = None
        com.report_unreachable()
        stored = com.stored
        for id_hash, ms in group_missing.items():
            best: tuple[float, str] | None = None
            for n in ms:
                node = items.get(n)
                if node is None or not node.stored or node.depth is None:
                    continue
                depth = node.depth
                if best is None or depth > best[0]:
                    best = (depth, n)
            if best is not None and best[1] in stored:
                data_type = next(g["dataType"] for g in groups[id_hash] if g["node"] == best[1])
                self.emit("merge", {"id_hash": id_hash, "node": best[1], "data_type": data_type})

    # -- parsing answers ------------------------------------------------------------------------

    def _children_batch_result(self, n: int, res: Outcome) -> list[Outcome]:
        """Split a GET_CHILDREN_BATCH answer into per-hash outcomes shaped like service 4's."""
        if not res.ok:
            if res.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(res.code, res.message)
            return [res] * n
        try:
            lists = json.loads(res.value) if isinstance(res.value, str) else None
        except ValueError:
            lists = None
        if not isinstance(lists, list) or len(lists) != n:
            return [Outcome(False, code="LAMA-CHUM-BATCH", message="malformed children batch answer")] * n
        return [Outcome(True, json.dumps(c)) if c is not None else
                Outcome(False, code="CES-GOC1", message="children not served by the exporter")
                for c in lists]

    def _closure_result(self, calls: list[tuple[int, str, str, str | None]], res: Outcome,
                        prefetched: dict[str, str], paged: bool = False) -> list[tuple[Outcome, str | None]]:
        """Split a 106 answer into per-root outcomes shaped like service 4's (the children
        list as a JSON string); keep the inline microdata of the root and of listed hashes
        (verified by hash later, like any fetched object, chum.md §6.4).  ``paged``: the
        request asked for pages ("closure-pages"): the lists come dependencies first and a
        root's entry may carry ``"more": t`` (returned beside its outcome)."""
        n = len(calls)
        if not res.ok:
            if res.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(res.code, res.message)
            return [(res, None)] * n
        try:
            lists = json.loads(res.value) if isinstance(res.value, str) else None
        except ValueError:
            lists = None
        if not isinstance(lists, list) or len(lists) != n:
            return [(Outcome(False, code="LAMA-CHUM-BATCH", message="malformed batch answer"), None)] * n
        out: list[tuple[Outcome, str | None]] = []
        for (_s, h, _k, _e), c in zip(calls, lists):
            if c is None:
                out.append((Outcome(False, code="CES-GOC1", message="not served by the exporter"), None))
                continue
            children = c.get("children") if isinstance(c, dict) else None
            if not isinstance(children, list):
                out.append((Outcome(False, code="LAMA-CHUM-BATCH", message="malformed closure answer"), None))
                continue
            more = c.get("more") if paged else None
            if more is not None and not isinstance(more, str):
                out.append((Outcome(False, code="LAMA-CHUM-BATCH",
                                    message="malformed closure answer: a page token is not a string"), None))
                continue
            if isinstance(c.get("root"), str):
                prefetched[h] = c["root"]
            listed = []
            for e in children:
                if isinstance(e, dict) and "data" in e:
                    e = dict(e)
                    data = e.pop("data")
                    if isinstance(data, str) and isinstance(e.get("hash"), str):
                        prefetched[e["hash"]] = data
                listed.append(e)
            if paged:
                listed.reverse()  # dependencies first already: the 4/5 order is parents first
            out.append((Outcome(True, json.dumps(listed)), more))
        return out

    def _fetch_call(self, part: list[_Item], batched: bool) -> list[Req]:
        """The requests of one fetch call: batched (docs/chum-fastpath.md: up to BATCH_MAX
        microdata per request, as one binary message with "batch-binary"), or one request per
        object / ID object (v8)."""
        if batched:
            binary = "batch-binary" in self.features
            return [Req(GET_OBJECTS_BINARY if binary else GET_OBJECTS_BATCH,
                        [[it.hash for it in part[o:o + BATCH_MAX]]], binary=binary)
                    for o in range(0, len(part), BATCH_MAX)]
        return [Req(GET_OBJECT if it.kind == "object" else GET_ID_OBJECT, [it.hash]) for it in part]

    def _received_part(self, part: list[_Item], raw_results: list[Outcome], batched: bool,
                       com: _Committer) -> None:
        """Verify the answers to one fetch call (one batch answer per BATCH_MAX items, or one
        answer per item) and hand the part to the committer. A request that timed out for good
        (Fatal): what was verified before it is kept (the session commits it before it ends)."""
        results: list[Outcome] = []
        if batched:
            for k, res in enumerate(raw_results):
                results.extend(self._batch_result(part[k * BATCH_MAX:(k + 1) * BATCH_MAX], res))
        else:
            results.extend(raw_results)
        for k, (it, res) in enumerate(zip(part, results)):
            try:
                self._verify(it, res)
            except Fatal:
                com.received(part[:k])
                raise
        com.received(part)

    def _batch_result(self, chunk: list[_Item], res: Outcome) -> list[Outcome]:
        if not res.ok:
            if res.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(res.code, res.message)
            return [res] * len(chunk)
        texts: Any
        if isinstance(res.value, bytes):  # a GET_OBJECTS_BINARY answer
            texts = parse_batch_binary(res.value, len(chunk))
        else:
            try:
                texts = json.loads(res.value) if isinstance(res.value, str) else None
            except ValueError:
                texts = None
        if not isinstance(texts, list) or len(texts) != len(chunk):
            bad = Outcome(False, code="LAMA-CHUM-BATCH", message="malformed batch answer")
            return [bad] * len(chunk)
        return [Outcome(True, t) if t is not None else
                Outcome(False, code="CES-GO1", message="not served by the exporter") for t in texts]

    def _parse_roots(self, data: Any) -> list[dict[str, Any]] | None:
        if not isinstance(data, str):
            self._err("DAH-PAO1", "roots answer is not a string", False)
            return None
        try:
            raw = json.loads(data)
        except ValueError:
            self._err("DAH-PAO1", "roots answer is not JSON", False)
            return None
        if not isinstance(raw, list):
            self._err("DAH-PAO1", "roots answer is not a list", False)
            return None
        need = {"unversioned": ("hash", "oneType"), "versioned": ("hash", "idHash", "oneType"),
                "id": ("idHash", "oneType"), "version_node": ("node", "dataIdHash", "dataType")}
        out = []
        for r in raw:
            if not isinstance(r, dict) or r.get("type") not in need:
                self._err("DAH-PAO3", f"unknown accessible object {r!r}"[:300], False)
                continue
            fields = need[r["type"]]
            if not all(isinstance(r.get(f), str) for f in fields) or not all(
                    _HASH.match(r[f]) for f in fields if f in ("hash", "idHash", "node", "dataIdHash")):
                self._err("DAH-PAO3", f"malformed accessible object {r!r}"[:300], False)
                continue
            out.append(r)
        return out

    def _children_result(self, h: str, res: Outcome) -> list[tuple[str, str]] | None:
        if not res.ok:
            if res.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(res.code, res.message)
            self._err(res.code or "CIEC-CH", f"children of {h}: {res.message}", False)
            return None
        if not isinstance(res.value, str):
            self._err("DC-PC1", f"children of {h}: answer is not a string", False)
            return None
        try:
            raw = json.loads(res.value)
        except ValueError:
            self._err("DC-PC1", f"children of {h}: answer is not JSON", False)
            return None
        if not isinstance(raw, list):
            self._err("DC-PC1", f"children of {h}: answer is not a list", False)
            return None
        out = []
        for c in raw:
            if not isinstance(c, dict) or c.get("type") not in ("object", "id", "blob", "clob"):
                self._err("DC-PC3", f"children of {h}: bad entry {c!r}"[:300], False)
                return None
            if not isinstance(c.get("hash"), str) or not _HASH.match(c["hash"]):
                self._err("DC-PC4", f"children of {h}: bad hash in {c!r}"[:300], False)
                return None
            out.append((c["type"], c["hash"]))
        out.reverse()  # chum.md §5.3: the wire is parents first; dependencies first now
        return out

    def _verify(self, it: _Item, res: Outcome) -> None:
        """chum.md §6.4 for one GET_OBJECT / GET_ID_OBJECT answer."""
        is_id = it.kind == "id"
        pre = "CIEC-FIDO" if is_id else "CIEC-FO"
        if not res.ok:
            if res.code == "LAMA-CHUM-TIMEOUT":
                raise Fatal(res.code, res.message)
            self._err(res.code or pre + "1", f"fetching {it.hash}: {res.message}", False)
            return
        text = res.value
        if not isinstance(text, str):
            self._err(pre + "1", f"{it.hash}: the answer is not a microdata string", False)
            return
        if sha256_hex(text) != it.hash:
            self._err(pre + "2", f"{it.hash}: the received microdata hashes to {sha256_hex(text)}",
                       False)
            return
        try:
            type_name, got_id = type_of(text)
            refs = references(text)  # parses the whole text
            if not is_id:
                id_microdata_of(text)  # a versioned object's ID object must derive too
        except LamaError as e:
            self._err(e.code, f"{it.hash}: {e}", False)
            return
        if got_id != is_id:
            self._err(pre + "2", f"{it.hash}: expected {'an ID object' if is_id else 'an object'}",
                       False)
            return
        if type_name in REFUSED_TYPES:
            self._err(pre + "3", f"{it.hash}: refusing a remote {type_name} object", False)
            return
        if it.expected_type is not None and type_name != it.expected_type:
            self._err(("CIEC-FIDOWT1" if is_id else "CIEC-FOWT1"),
                       f"{it.hash}: expected a {it.expected_type}, got a {type_name}", False)
            return
        it.text, it.type_name, it.refs, it.ok = text, type_name, refs, True

    def _check_node(self, items: dict[str, _Item], n: str, id_hash: str, data_type: str) -> bool:
        """chum.md §6.2: a fetched listed node's data must have ID hash ``dataIdHash``
        (CI-CCI1) and type ``dataType`` (CI-CCI2)."""
        it = items[n]
        if it.type_name not in VERSION_NODE_TYPES:
            self._err("CI-CCI1", f"{n} is a {it.type_name}, not a version node", False)
            return False
        data = next((h for p, k, h in it.refs if p == "data"), None)
        text = None
        if data is not None:
            d = items.get(data)
            if d is not None and d.ok and d.text is not None:
                text = d.text
            elif d is None or d.stored:
                try:
                    text = self.store.get(data)
                except LamaError:
                    text = None
        if text is None:
            self._err("CI-CCI1", f"version node {n}: its data is not available", False)
            return False
        id_md = id_microdata_of(text)
        if id_md is None or sha256_hex(id_md) != id_hash:
            self._err("CI-CCI1", f"version node {n}: data {data} does not have ID hash "
                      f"{id_hash}", False)
            return False
        if type_of(text)[0] != data_type:
            self._err("CI-CCI2", f"version node {n}: data {data} is a "
                      f"{type_of(text)[0]}, not a {data_type}", False)
            return False
        return True

    def _put(self, items: dict[str, _Item], batch: list[str],
             forward: list[tuple[str, str]] | None = None,
             mark: tuple[str, int] | None = None) -> list[str]:
        if not batch:
            return []
        try:
            texts = [(items[h].text, h) for h in batch]
            put_forward = getattr(self.store, "_put_microdata_forward", None) if forward or mark else None
            if put_forward is not None:
                # the pass's last commit also fast-forwards the heads of the IDs it imported
                # nodes of, when that is all the merge would do (one durable commit less), and
                # may carry the pass's peer mark (_mark_in_commit)
                put_forward(texts, forward or [], mark)
                if mark is not None:
                    self.mark_committed = mark[1]
            else:
                self.store.put_microdata(texts)
            done = batch
        except LamaError:
            # pre-verified, so this is rare: isolate the item the store refuses
            done = []
            for h in batch:
                if any(r in items and not items[r].stored for _p, _k, r in items[h].refs):
                    continue
                try:
                    self.store.put_microdata([(items[h].text, h)])
                    done.append(h)
                except LamaError as e:
                    self._err(e.code, f"storing {h}: {e}", False)
                    continue
                items[h].stored = True
        for h in done:
            it = items[h]
            it.stored = True
            if it.kind == "id":
                self.log["BtoAIdObjects"].append(h)
                self.stats["id_objects_received"] += 1
            else:
                self.log["BtoAObjects"].append(h)
                self.stats["objects_received"] += 1
        return done


class _Committer:
    """Stores a pass's verified items as soon as they may be stored (issue 8), one store
    transaction per batch: an item is stored once it is verified, it is a root whose children
    were asked or a verified item of the pass references it (a listed version node only after
    its §6.2 check, and its references count only then), and every reference it has that this
    pass lists is stored or earlier in the same transaction, while every other reference is
    already local -- dependencies first, never a hole (chum.md §5.3).  Kahn's algorithm, incremental: each item and reference is handled
    a bounded number of times however often it is called."""

    def __init__(self, imp: Importer, items: dict[str, _Item], start: list[str],
                 node_ids: dict[str, str], node_types: dict[str, str],
                 group_missing: dict[str, list[str]] | None = None):
        self.imp = imp
        self.group_missing = group_missing or {}  # ID hash -> its listed nodes missing here
        self.items = items
        self.node_ids = node_ids  # listed version node -> its dataIdHash
        self.node_types = node_types
        self.checked: set[str] = set()  # listed version nodes whose §6.2 check passed
        self.wait_data: dict[str, list[str]] = {}  # data hash -> nodes whose check waits for it
        self.reached: set[str] = set()
        self.blockers: dict[str, int] = {}  # verified item -> its listed references not stored
        self.waiters: dict[str, list[str]] = {}  # listed hash -> verified items referencing it
        self.queued: set[str] = set()
        self.ready: deque[str] = deque()
        self.stored: set[str] = set()
        self.max_batch = COMMIT_BATCH
        for h in start:
            self._reach(h)

    def _expandable(self, h: str) -> bool:
        it = self.items[h]
        return it.ok and not it.stored and (h not in self.node_ids or h in self.checked)

    def _reach(self, h: str) -> None:
        if h in self.items and h not in self.reached:
            self.reached.add(h)
            self._consider(h)

    def _expand(self, h: str) -> None:
        """``h`` was verified (a listed version node: its check passed): what it references is
        reached.  Not transitively from the roots: a chain (a channel's entries) is received
        oldest first, so its top is the last to arrive, and the commit must not wait for it."""
        if self._expandable(h):
            for _p, _k, r in self.items[h].refs:
                self._reach(r)

    def _consider(self, h: str) -> None:
        it = self.items[h]
        if (h in self.queued or not it.ok or it.stored or it.bad or h not in self.reached
                or self.blockers.get(h, 1) != 0 or (h in self.node_ids and h not in self.checked)):
            return
        self.queued.add(h)
        self.ready.append(h)

    def received(self, part: list[_Item]) -> None:
        """The answers for ``part`` were verified."""
        items = self.items
        outside = sorted({r for it in part if it.ok for _p, _k, r in it.refs if r not in items})
        absent = set(self.imp.store.missing(outside)) if outside else set()
        for it in part:
            it.fetched = True
        for it in part:
            if not it.ok:
                continue
            h = it.hash
            block: set[str] = set()
            for _p, k, r in it.refs:
                t = items.get(r)
                if t is None:
                    if r in absent and not it.bad:
                        it.bad = True
                        self.imp._err("CI-ACO", f"{h} references {r}, which is neither stored "
                                      "nor listed among the children", False)
                elif t.kind != _REF_KINDS.get(k, k) and not t.stored:
                    # listed as another kind than it is referenced as (e.g. an object fetched
                    # as a BLOB): the reference would point at the wrong thing
                    if not it.bad:
                        it.bad = True
                        self.imp._err("CI-ACO", f"{h} references {r} as {k}, but it was listed "
                                      f"as {t.kind}", False)
                elif not t.stored and r not in block:
                    block.add(r)
                    self.waiters.setdefault(r, []).append(h)
            self.blockers[h] = len(block)
        for it in part:
            h = it.hash
            if it.ok and h in self.node_ids:
                data = next((r for p, _k, r in it.refs if p == "data"), None)
                d = items.get(data) if data is not None else None
                if d is not None and not d.fetched and not d.stored:
                    self.wait_data.setdefault(data, []).append(h)  # type: ignore[arg-type]
                else:
                    self._check(h)
            for n in self.wait_data.pop(h, []):
                self._check(n)
            if it.ok:
                self._expand(h)
                self._consider(h)

    def _check(self, n: str) -> None:
        if not self.items[n].ok:
            return
        if self.imp._check_node(self.items, n, self.node_ids[n], self.node_types.get(n, "")):
            self.checked.add(n)
            self._expand(n)
            self._consider(n)
        else:
            self.items[n].ok = False

    def stored_elsewhere(self, h: str) -> None:
        """``h`` (a BLOB/CLOB) was stored when its stream ended."""
        self._release(h)

    def _release(self, h: str) -> None:
        for w in self.waiters.pop(h, []):
            self.blockers[w] -= 1
            self._consider(w)

    def flush(self, blobs: list[str], clobs: list[str], final: bool = False,
              forward: bool = False, mark: tuple[str, int] | None = None) -> None:
        """Commit everything ready, COMMIT_BATCH items per transaction, with one ``imported``
        event each (the final flush reports the pass's BLOBs/CLOBs in its first).  ``forward``
        (the fetch is over): the last commit also fast-forwards the head of each ID with listed
        nodes to the node its ``merge`` event will name, where that is a fast-forward.
        ``mark`` (the pass's last commit, Importer._mark_in_commit): written in the last
        commit's transaction if every item of the pass is stored or in that batch."""
        items = self.items
        first = final
        while self.ready or (first and (blobs or clobs)):
            batch: list[str] = []
            in_batch: set[str] = set()
            while self.ready and len(batch) < self.max_batch:
                h = self.ready.popleft()
                # a reference refused by the store in an earlier batch: never a hole
                if any(r in items and not items[r].stored and r not in in_batch
                       for _p, _k, r in items[h].refs):
                    continue
                batch.append(h)
                in_batch.add(h)
                self._release(h)
            fwd = self._forward(in_batch) if forward and batch and not self.ready else None
            last_mark = None
            if mark is not None and batch and not self.ready and all(
                    it.stored or h in in_batch for h, it in items.items()):
                last_mark = mark
            done = self.imp._put(items, batch, fwd, last_mark)
            for h in batch:
                if not items[h].stored:
                    items[h].bad = True
            for h in done:
                # a committed item's text is read from the store from now on: the pass holds
                # only what is not committed yet (issue 8)
                it = items[h]
                if h in self.node_ids and it.text is not None and it.depth is None:
                    it.depth = _node_depth(it.text)
                it.text = None
            self.stored.update(done)
            if done or first:
                self.imp.emit("imported", {
                    "objects": [h for h in done if items[h].kind == "object"],
                    "id_objects": [h for h in done if items[h].kind == "id"],
                    "blobs": blobs if first else [], "clobs": clobs if first else []})
            first = False

    def _forward(self, in_batch: set[str]) -> list[tuple[str, str]]:
        """Per ID, the deepest listed node committed or in the last batch (the node its
        ``merge`` event names) as ``(ID hash, node)``; sets the depth of the batch's nodes."""
        items = self.items
        out = []
        for id_hash, ms in self.group_missing.items():
            best: tuple[float, str] | None = None
            for n in ms:
                it = items.get(n)
                if it is None:
                    continue
                if n in self.stored:
                    d = it.depth
                elif n in in_batch and it.ok and it.text is not None:
                    d = it.depth = _node_depth(it.text)
                else:
                    d = None
                if d is not None and (best is None or d > best[0]):
                    best = (d, n)
            if best is not None:
                out.append((id_hash, best[1]))
        return out

    def report_unreachable(self) -> None:
        for h, it in self.items.items():
            if it.ok and not it.stored and not it.bad and h not in self.reached:
                it.ok = False
                self.imp._err("LAMA-CHUM-NOTREACHABLE",
                              f"{h} was listed but is not reachable from the root it was listed for",
                              False)


def _notify_closure(v: Any) -> dict[str, Any] | None:
    """"notify-closure": a NOTIFY's ``closure`` as the Rust core reads it: an object of at most
    BATCH_MAX hashes, each an object with a ``children`` list (no page token), at most
    CLOSURE_INLINE_MAX children in all and CLOSURE_INLINE_CHARS (UTF-8 bytes) of microdata;
    anything else is dropped whole (the pass then asks 106 as before)."""
    if not isinstance(v, dict) or len(v) > BATCH_MAX:
        return None
    entries = chars = 0
    for k, e in v.items():
        if not _HASH.match(k) or not isinstance(e, dict) or "more" in e \
                or not isinstance(e.get("children"), list):
            return None
        entries += len(e["children"])
        root = e.get("root")
        chars += len(root.encode("utf-8", "surrogatepass")) if isinstance(root, str) else 0
        for c in e["children"]:
            d = c.get("data") if isinstance(c, dict) else None
            chars += len(d.encode("utf-8", "surrogatepass")) if isinstance(d, str) else 0
        if entries > CLOSURE_INLINE_MAX or chars > CLOSURE_INLINE_CHARS:
            return None
    return v


def _node_depth(text: str) -> float:
    try:
        d = parse(text).get("depth", 0)
    except LamaError:
        return 0.0
    return float(d) if isinstance(d, (int, float)) else 0.0
