"""Message transfer tracing (issue 11, docs/tracing.md).

The :class:`Tracer` only observes: the facade's send path (``posted``), the chat layer's
``message`` events, the connection manager's connection events and the CHUM session events it
forwards with ``ManagerConfig.trace`` (``exported``, ``receipt``, ``receipt_sent``,
``imported``). It never writes to the store. Traces are persisted in
``<instance dir>/traces.sqlite3`` by a background thread; the event loop only hands it the rows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, cast

from lama.errors import LamaError, NotFoundError

log = logging.getLogger("lama.trace")

__all__ = ["Failure", "PeerReport", "Step", "Trace", "Tracer", "STEPS", "FAILURE_POINTS",
           "format_trace"]

STEPS = ("created", "posted", "granted", "offered", "deposited", "fetched", "stored",
         "received", "mailbox_fetched", "visible", "confirmed", "mailbox_confirmed")
_ORDER = {s: i for i, s in enumerate(STEPS)}
# the causal rank of a step (docs/tracing.md §1 `steps`): a trace's steps are listed by rank,
# then by time; a step of a higher rank can only have happened after every step of a lower
# one (`created` before all; `posted`, or the import that brought an incoming message, before
# what follows from it), whatever order their events were seen in
_RANK = {"created": 0, "posted": 1, "received": 1, "mailbox_fetched": 1}
FAILURE_POINTS = ("not_granted", "in_mailbox", "never_connected", "connection_refused",
                  "peer_offline", "import_error", "in_flight")
_IMPORTS_MAX = 50_000     # object hashes remembered from imports (for the `received` step)
_FLUSH_DELAY = 0.5        # seconds between a change and its row being handed to the writer
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode
_COMPACT_AFTER = 20_000  # log records; then the log is rewritten as one record per batch
_RECENT = 64            # session events kept to apply to a post registered after them
_ONE_TO_ONE = re.compile(r"([0-9a-f]{64})<->([0-9a-f]{64})")
_ROOT_LOOKUPS = 64        # unknown announced roots read from the store per `exported` event


def _watch_key(h: str) -> bytes | str:
    """The key of an object hash in ``Tracer._watch``: its 32 bytes (or the text itself)."""
    try:
        return bytes.fromhex(h)
    except (ValueError, TypeError):
        return h


def _now() -> float:
    return time.time() * 1000.0


class Step(NamedTuple):
    """One step (immutable; a named tuple: the send path makes two per message)."""

    step: str
    at: float
    peer: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Failure:
    peer: str
    point: str
    detail: str | None = None


@dataclass(frozen=True)
class PeerReport:
    person_id: str
    name: str | None
    kind: str
    last_step: str | None
    failure: str | None
    detail: str | None


@dataclass(frozen=True)
class Trace:
    message_id: str
    topic_id: str
    channel: str
    direction: str
    sender: str
    preview: str
    created: float
    steps: tuple[Step, ...]
    peers: tuple[PeerReport, ...]
    status: str
    failure: Failure | None
    updated: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id, "topic_id": self.topic_id, "channel": self.channel,
            "direction": self.direction, "sender": self.sender, "preview": self.preview,
            "created": self.created, "updated": self.updated, "status": self.status,
            "steps": [{"step": s.step, "at": s.at, "peer": s.peer, "detail": s.detail}
                      for s in self.steps],
            "peers": [{"person_id": p.person_id, "name": p.name, "kind": p.kind,
                       "last_step": p.last_step, "failure": p.failure, "detail": p.detail}
                      for p in self.peers],
            "failure": None if self.failure is None else {
                "peer": self.failure.peer, "point": self.failure.point,
                "detail": self.failure.detail},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trace:
        f = d.get("failure")
        return cls(
            d["message_id"], d["topic_id"], d["channel"], d["direction"], d["sender"],
            d["preview"], d["created"],
            tuple(Step(s["step"], s["at"], s.get("peer"), s.get("detail")) for s in d["steps"]),
            tuple(PeerReport(p["person_id"], p.get("name"), p["kind"], p.get("last_step"),
                             p.get("failure"), p.get("detail")) for p in d["peers"]),
            d["status"], None if f is None else Failure(f["peer"], f["point"], f.get("detail")),
            d["updated"])


_NONE: dict[Any, Any] = {}  # the shared empty `granted`/`errors` (replaced, never changed)
# an import: (person, time, event number, step, detail, the step)
_Import = tuple[str, float, int, str, "str | None", Step]
_IMPORT_EVENTS = 1024  # imports remembered (besides _IMPORTS_MAX hashes)
_INDEXED = 4096        # an import of at most so many objects is indexed by hash (see _imports)
# incoming traces waiting for their import event: as many as an import window's messages
# (a large import's chat events can all come before its event; with 1,000 here, 4,732 of
# 10,000 messages of one run lost their `received` and `confirmed` steps)
_EARLY_MAX = _IMPORTS_MAX


class _Rec:
    """A trace while it is collected (mutable; persisted as the JSON list ``row()``)."""

    # (issue 10: 10,000 kept traces are ~700 B each; ``steps`` is a tuple and ``hashes`` of a
    # chat post keeps only its ChatMessage hash, ~100 B less per trace than a list and a pair)
    __slots__ = ("message_id", "topic_id", "channel", "direction", "sender", "preview",
                 "created", "_hashes", "seq", "recipients", "granted", "errors", "steps",
                 "updated", "saved")

    def __init__(self, message_id: str, topic_id: str, channel: str, direction: str,
                 sender: str, preview: str, created: float, hashes: tuple[str, ...] = (),
                 seq: int = 0) -> None:
        self.message_id = message_id
        self.topic_id = topic_id
        self.channel = channel
        self.direction = direction
        self.sender = sender
        self.preview = preview
        self.created = created
        self.hashes = hashes                    # objects whose serving counts as `fetched`
        self.seq = seq                          # our store's write sequence after the post
        self.recipients: tuple[str, ...] = ()
        self.granted: dict[str, bool] = _NONE   # shared by the traces of one grant check
        self.errors: dict[str, str] = _NONE     # person -> import error text (copy on write)
        self.steps: tuple[Step, ...] = ()     # steps[0] is always `created`
        self.updated = created
        self.saved = -1                         # steps persisted (-1: not persisted yet)

    @property
    def hashes(self) -> tuple[str, ...]:
        """The objects whose serving counts as `fetched`: a post's (message id, ChatMessage
        hash)."""
        h = self._hashes
        return (self.message_id, h.hex()) if isinstance(h, bytes) else h

    @hashes.setter
    def hashes(self, hashes: tuple[str, ...]) -> None:
        hashes = tuple(hashes)
        self._hashes: tuple[str, ...] | bytes = hashes
        if len(hashes) == 2 and hashes[0] == self.message_id and len(hashes[1]) == 64:
            # a post's: its ChatMessage hash as 32 bytes (72 B instead of a 113 B string)
            try:
                self._hashes = bytes.fromhex(hashes[1])
            except (ValueError, TypeError):
                pass

    def has(self, step: str, peer: str | None = None) -> bool:
        for s in self.steps:  # (a loop: no generator per call)
            if s.step == step and s.peer == peer:
                return True
        return False

    def add(self, step: str | Step, at: float = 0.0, peer: str | None = None,
            detail: str | None = None) -> bool:
        """Add a step unless the trace has it (``step`` may be a prebuilt Step: one object
        for every trace an event touches, so they persist in one record)."""
        s = step if isinstance(step, Step) else Step(step, at, peer, detail)
        if self.has(s.step, s.peer):
            return False
        self.steps = (*self.steps, s)
        if s.at > self.updated:
            self.updated = s.at
        return True

    def add_shared(self, s: Step, memo: dict[int, tuple[Any, ...]]) -> bool:
        """:meth:`add` for the many traces of one event (``memo``, one per event and step):
        traces that shared their steps tuple share the longer one too, and the search for
        the step is made once per tuple, not per trace (issue 10: a `fetched` built a tuple
        per post, so the receipt and the flush then handled every post on its own)."""
        old = self.steps
        got = memo.get(id(old))
        if got is None:
            lacks = True
            for x in old:
                if x.step == s.step and x.peer == s.peer:
                    lacks = False
                    break
            got = memo[id(old)] = (old, (*old, s) if lacks else None)  # (old kept: its id)
        if got[1] is None:
            return False
        self.steps = got[1]
        if s.at > self.updated:
            self.updated = s.at
        return True

    def push(self, s: Step, memo: dict[int, tuple[Any, ...]] | None = None) -> None:
        """Add a step the caller knows the trace lacks (no search of the steps). ``memo``
        (one per event): traces that shared their steps tuple share the longer one too."""
        old = self.steps
        if memo is None:
            self.steps = (*old, s)
        else:
            got = memo.get(id(old))
            if got is None:
                got = memo[id(old)] = (old, (*old, s))  # (old kept: its id stays unique)
            self.steps = got[1]
        if s.at > self.updated:
            self.updated = s.at



def _order_key(s: Step) -> tuple[int, float, int]:
    """How a trace's steps are listed: by causal rank (``_RANK``), then time, then §2."""
    return (_RANK.get(s.step, 2), s.at, _ORDER.get(s.step, 99))


def _placed(steps: tuple[Step, ...], s: Step) -> tuple[Step, ...]:
    """``steps`` with ``s`` at its causal place: after every step of its rank or a lower one
    (an import step seen after the message's ``visible`` goes before it)."""
    rank = _RANK.get(s.step, 2)
    for i, x in enumerate(steps):
        if _RANK.get(x.step, 2) > rank:
            return (*steps[:i], s, *steps[i:])
    return (*steps, s)


def _appended(steps: tuple[Step, ...], more: tuple[Step, ...]) -> tuple[Step, ...]:
    """``steps`` and then ``more`` (an ``upd`` record's), each at its causal place: a log
    written before session 12 may hold an import step recorded after `visible`."""
    top = max([_RANK.get(s.step, 2) for s in steps], default=0)
    for i, s in enumerate(more):
        rank = _RANK.get(s.step, 2)
        if rank < top:
            out = steps + more[:i]
            for x in more[i:]:
                out = _placed(out, x)
            return out
        top = rank
    return steps + more


def _loose(r: _Rec) -> tuple[Any, ...]:
    """What a trace shares with the others of its ``newc`` record: everything but its id,
    hashes, preview and the times of its steps."""
    return (r.direction, r.topic_id, r.channel, r.sender, r.seq, r.recipients, id(r.granted),
            id(r.errors), *[(s.step, s.peer, s.detail) for s in r.steps[1:]])


def _same_shape(a: tuple[Step, ...], b: tuple[Step, ...]) -> bool:
    """The steps after `created` have the same names, peers and details (times may differ)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a[1:], b[1:]):
        if x is not y and (x.step != y.step or x.peer != y.peer or x.detail != y.detail):
            return False
    return True


def _shape_of(a: tuple[Step, ...], b: tuple[Step, ...],
              memo: dict[int, tuple[tuple[Step, ...], bool]]) -> bool:
    """:func:`_same_shape` of ``a`` and the fixed ``b``, once per tuple ``a`` (``memo``)."""
    got = memo.get(id(a))
    if got is None:
        got = memo[id(a)] = (a, _same_shape(a, b))  # (a kept: its id stays unique)
    return got[1]


def _encode_records(recs: Iterable[_Rec], full: bool = False) -> list[str]:
    """The log records (docs/tracing.md §5) that persist ``recs``' changes since they were
    last persisted (``full``: all of them, for a compaction). Traces that share what a batch
    shares (topic, recipients, grants, the names, peers and details of their steps) share one
    record, so a batch of posts costs one record, and one receipt covering many posts one
    more; a step whose time differs between them (e.g. the `visible` of received messages)
    is a column of times in the record. A run of traces equal to the one before (a batch:
    they share the step and grant objects, compared by identity first) joins its group
    without building a key; the ids and hashes of a ``newc`` record are concatenated into
    one string each (64 hex digits per message), so the JSON encoder copies one string
    instead of encoding a list per message."""
    news: dict[tuple[Any, ...], list[_Rec]] = {}
    odd: list[_Rec] = []  # not in the compact form (an id or hash that is not 64 digits)
    upds: dict[tuple[Any, ...], tuple[_Rec, int, list[str]]] = {}
    seen: dict[tuple[int, int], tuple[Any, tuple[int, ...]]] = {}  # (the tuple kept: its id)
    last: _Rec | None = None
    group: list[_Rec] | None = None
    # id of a steps tuple -> (it, whether it has the shape of the group's first one's): the
    # traces fetched by one event share a tuple, compared once
    shapes: dict[int, tuple[tuple[Step, ...], bool]] = {}
    # the trace before and where it went (a run of a batch's traces shares its steps,
    # grants and strings: it joins the same list on identity checks alone)
    p: _Rec | None = None
    p_saved, p_list, p_empty = 0, cast(list[Any], []), False
    for r in recs:
        if (p is not None and r.steps is p.steps and r.saved == p_saved
                and r.granted is p.granted and r.errors is p.errors
                and r.recipients is p.recipients and r.seq == p.seq
                and r.channel is p.channel and r.topic_id is p.topic_id
                and r.sender is p.sender and r.direction is p.direction):
            if not (full or p_saved < 0):
                p_list.append(r.message_id)
                r.saved = len(r.steps)
                continue
            h = r._hashes
            if len(r.message_id) == 64 and (h == () if p_empty else isinstance(h, bytes)):
                p_list.append(r)
                r.saved = len(r.steps)
                continue
        p = None
        if full or r.saved < 0:
            h = r._hashes
            if len(r.message_id) != 64 or not (h == () or isinstance(h, bytes)):
                odd.append(r)
            elif (last is not None and group is not None and r.granted is last.granted
                    and r.errors is last.errors and r.seq == last.seq
                    and r.recipients == last.recipients
                    and (r.steps is last.steps or _shape_of(r.steps, last.steps, shapes))
                    and r.channel == last.channel and r.topic_id == last.topic_id
                    and r.direction == last.direction and r.sender == last.sender
                    and (h == ()) == (last._hashes == ())):
                group.append(r)
            else:
                group = news.setdefault((h == (), *_loose(r)), [])
                group.append(r)
                last = r
                shapes = {}
            if group is not None and group[-1] is r:
                p, p_saved, p_list, p_empty = r, r.saved, group, h == ()
        else:
            # traces that share their steps (a batch) share the key too: built once
            sk = (id(r.steps), r.saved)
            steps_key = seen.get(sk)
            if steps_key is None:
                steps_key = seen[sk] = (r.steps, tuple(map(id, r.steps[r.saved:])))
            key = (id(r.granted), id(r.errors), steps_key[1])
            u = upds.get(key)
            if u is None:
                u = upds[key] = (r, r.saved, [])
            u[2].append(r.message_id)
            p, p_saved, p_list = r, r.saved, u[2]
        r.saved = len(r.steps)
    out = []
    for members in news.values():
        r = members[0]
        steps: list[Any] = list(r.steps[1:])
        cols = []
        own = r.steps
        odd_steps = [m.steps for m in members if m.steps is not own]  # (a batch: mostly none)
        if odd_steps:
            for k, s in enumerate(steps, 1):
                at = s.at
                for ms in odd_steps:
                    if ms[k].at != at:
                        cols.append([k - 1, [m.steps[k].at for m in members]])
                        break
        created: Any = r.created
        for m in members:
            if m.created != created:
                created = [m.created for m in members]
                break
        rec = ["newc", r.direction, r.topic_id, r.channel, r.sender, r.seq, r.recipients,
               r.granted, r.errors, steps, "".join([m.message_id for m in members]),
               "" if r._hashes == () else b"".join([m._hashes for m in members]).hex(),  # type: ignore[misc]
               created,
               [m.preview for m in members]]
        if cols:
            rec.append(cols)
        out.append(_ENCODE(rec))
    if odd:
        out.extend(_ENCODE(["new", r.direction, r.topic_id, r.channel, r.sender, r.seq,
                            r.recipients, r.granted, r.errors, r.steps[1:],
                            [[r.message_id, r.hashes, r.created, r.preview]]]) for r in odd)
    out.extend(_ENCODE(["upd", r.steps[saved:], r.errors, r.granted, mids])
               for r, saved, mids in upds.values())
    return out


def _keep_newest(recs: dict[str, _Rec], limit: int) -> int:
    """Drop all but the ``limit`` newest traces (by creation time) from ``recs``; how many
    were dropped."""
    old = sorted(recs.values(), key=lambda r: r.created)[:-limit]
    for r in old:
        del recs[r.message_id]
    return len(old)


def _replay(rows: Iterable[str], recs: dict[str, _Rec],
            kinds: dict[str, str] | None = None, *, finish: bool = True) -> int:
    """Rebuild the traces (and the peers' kinds, into ``kinds``) from their log records (in
    order); how many traces the records created. ``finish=False``: more records follow
    (then :func:`_finish` once at the end)."""
    made = 0
    for data in rows:
        try:
            d = json.loads(data)
            if d[0] == "kind":  # ["kind", {person: "lama" | "one"}]
                if kinds is not None:
                    kinds.update({str(p): k for p, k in d[1].items() if k in ("lama", "one")})
                continue
            if d[0] == "newc":  # the compact form: ids and hashes concatenated
                _, direction, topic, channel, sender, seq, recipients, granted, errors, steps, \
                    mids, hashes, created, previews, *more = d
                n = len(previews)
                if len(mids) != 64 * n or len(hashes) not in (0, 64 * n) or len(more) > 1:
                    raise ValueError("a newc record's ids do not match its previews")
                times = created if isinstance(created, list) else [created] * n
                cols = {int(k): v for k, v in more[0]} if more else {}
                if len(times) != n or any(len(v) != n for v in cols.values()):
                    raise ValueError("a newc record's times do not match its previews")
                made += _rebuild(recs, direction, topic, channel, sender, seq, recipients,
                                 granted, errors, steps, cols,
                                 [(m, (m, hashes[i * 64:(i + 1) * 64]) if hashes else (),
                                   times[i], previews[i])
                                  for i, m in enumerate(mids[j:j + 64]
                                                        for j in range(0, 64 * n, 64))])
            elif d[0] == "new":
                _, direction, topic, channel, sender, seq, recipients, granted, errors, steps, \
                    msgs = d
                made += _rebuild(recs, direction, topic, channel, sender, seq, recipients,
                                 granted, errors, steps, {}, msgs)
            elif d[0] == "upd":
                _, steps, errors, granted, mids = d
                more = tuple(Step(x[0], float(x[1]), x[2], x[3]) for x in steps)
                granted, errors = dict(granted) or _NONE, dict(errors) or _NONE  # shared
                longer: dict[int, tuple[Any, ...]] = {}  # traces sharing steps share these
                for mid in mids:
                    known = recs.get(mid)
                    if known is not None:
                        old = known.steps
                        got = longer.get(id(old))
                        if got is None:
                            got = longer[id(old)] = (old, _appended(old, more))
                        known.steps = got[1]
                        known.errors, known.granted = errors, granted
            elif d[0] == "drop":
                for mid in d[1]:
                    recs.pop(mid, None)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("skipping a damaged trace record: %s", e)
    if finish:
        _finish(recs)
    return made


def _rebuild(recs: dict[str, _Rec], direction: str, topic: str, channel: str, sender: str,
             seq: Any, recipients: Any, granted: Any, errors: Any, steps: list[Any],
             cols: dict[int, list[Any]], msgs: Iterable[Any]) -> int:
    """The traces of one ``new``/``newc`` record; ``cols``: step index -> the time of that
    step per message (a step whose time differs between them)."""
    tail = tuple(Step(x[0], float(x[1]), x[2], x[3]) for x in steps)
    granted, errors = dict(granted) or _NONE, dict(errors) or _NONE  # shared
    # what the record's messages have in common is one object for all of them (a batch's
    # are mostly one `created` too), as when they were posted
    seq, recipients, first = int(seq), tuple(recipients), Step("created", -1.0)
    shared: tuple[Step, ...] = (first, *tail)
    made = 0
    for i, (mid, hashes, created, preview) in enumerate(msgs):
        r = _Rec(mid, topic, channel, direction, sender, preview, float(created), hashes, seq)
        r.recipients = recipients
        r.granted, r.errors = granted, errors
        if first.at != r.created:
            first = Step("created", r.created)
            shared = (first, *tail)
        if cols:
            r.steps = (first, *(Step(s.step, float(cols[k][i]), s.peer, s.detail)
                                if k in cols else s for k, s in enumerate(tail)))
        else:  # one tuple for the traces of the record that share `created` (issue 10)
            r.steps = shared
        recs[mid] = r
        made += 1
    return made


def _finish(recs: dict[str, _Rec]) -> None:
    """The replayed traces are persisted as they are; their last change."""
    for r in recs.values():
        r.saved = len(r.steps)
        r.updated = max([r.created] + [s.at for s in r.steps])


class _Writer:
    """The persisted traces (docs/tracing.md §5): one SQLite connection owned by one thread;
    the event loop only puts rows on its queue."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._q: collections.deque[tuple[str, Any]] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        self.cpu = 0.0  # CPU seconds this thread spent writing (the benchmark reports it)
        self._thread = threading.Thread(target=self._run, name="lama-trace-writer", daemon=True)
        self._thread.start()

    @staticmethod
    def connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=10.0, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # 256 KiB of page cache instead of SQLite's default 2 MiB: the writer appends (the
        # rightmost leaf) and the opening replay streams the log once (issue 10)
        db.execute("PRAGMA cache_size=-256")
        db.execute("CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        return db

    def put(self, records: list[str], compact: bool = False) -> None:
        """Append ``records`` (``compact``: replace the whole log with them)."""
        with self._cv:
            self._q.append(("compact" if compact else "append", records))
            self._cv.notify()

    def flush(self, timeout: float = 10.0) -> None:
        done = threading.Event()
        with self._cv:
            self._q.append(("sync", done))
            self._cv.notify()
        done.wait(timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            db = self.connect(self.path)
        except sqlite3.Error as e:
            log.error("cannot open %s: %s", self.path, e)
            return
        try:
            while True:
                with self._cv:
                    while not self._q and not self._closed:
                        self._cv.wait()
                    items = list(self._q)
                    self._q.clear()
                    closed = self._closed
                waiters = []
                t0 = time.thread_time()
                try:
                    with db:
                        for kind, v in items:
                            if kind == "sync":
                                waiters.append(v)
                                continue
                            if kind == "compact":
                                db.execute("DELETE FROM log")
                            db.executemany("INSERT INTO log (data) VALUES (?)",
                                           [(r,) for r in v])
                except sqlite3.Error as e:
                    log.error("cannot write traces: %s", e)
                self.cpu += time.thread_time() - t0
                for w in waiters:
                    w.set()
                if closed:
                    return
        finally:
            db.close()


class Tracer:
    """Collects the traces of one app (docs/tracing.md). Created by :class:`lama.App` with
    ``AppConfig.trace``; everything runs on the app's event loop except the writer thread."""

    def __init__(self, store: Any, me: str, path: Path | None, *, limit: int = 10_000,
                 stall_after: float = 10.0, names: Callable[[], dict[str, str]] | None = None,
                 live: Callable[[str], dict[str, Any] | None] | None = None,
                 own_version: Callable[[str], str | None] | None = None) -> None:
        self.store = store
        # a channel version my own post wrote -> its channel (the chat layer knows it without
        # reading the store: Chat.own_channel_of); None: not one of those
        self._own_version = own_version
        self.me = me
        self.limit = limit
        self.stall_after = stall_after
        self._names = names
        self._live = live                 # person -> live connection state (None: not running)
        self._recs: dict[str, _Rec] = {}
        # person -> outgoing message ids not stored, in the order of their `seq` (a receipt
        # covers a prefix: its walk stops at the first post it does not cover)
        self._pending: dict[str, dict[str, None]] = {}
        self._pend_seq: dict[str, int] = {}       # person -> the highest seq in _pending
        # person -> channel -> outgoing traces not offered yet (registration order; the
        # announcement of a channel version offers them all at once)
        self._unoffered: dict[str, dict[str, list[_Rec]]] = {}
        # object hash -> outgoing message id, for the objects of a post other than its
        # CreationTime (whose hash is the message id: a pending id is looked up directly)
        # (keyed by the hash's 32 bytes: a post's hash is kept so, see _Rec.hashes)
        self._watch: dict[bytes | str, str] = {}
        # incoming traces whose chat event came before their import (rare): id -> trace
        self._early: dict[str, _Rec] = {}
        self._versions: dict[str, str] = {}       # channel version hash -> channel id hash
        # the recent imports, oldest first: (its serial number, (person, time, event number,
        # step, detail, the step), the object hashes it brought) (step: "received" by CHUM,
        # "mailbox_fetched" from the mailbox). A small import (at most _INDEXED objects: a live
        # push, a chat message) enters each of its hashes in _import_index; a large one (an
        # initial sync of thousands of objects) is kept as one frozenset in _large instead and
        # scanned there: one dict entry per object costs ~0.5 µs to add and to remove, a
        # frozenset a tenth of it, and at most _IMPORTS_MAX / _INDEXED large ones are kept.
        self._imports: collections.deque[
            tuple[int, _Import, tuple[str, ...] | frozenset[str]]] = collections.deque()
        self._imports_n = 0  # hashes in _imports (at most _IMPORTS_MAX, newest kept)
        self._import_serial = 0
        # hash -> (serial, import): the newest small import that brought it
        self._import_index: dict[str, tuple[int, _Import]] = {}
        # the large imports among _imports, oldest first
        self._large: collections.deque[tuple[int, _Import, frozenset[str]]] = \
            collections.deque()
        # mailbox item id -> the object hashes it brought (until the server confirms deleting)
        self._mb_items: collections.OrderedDict[str, list[str]] = collections.OrderedDict()
        # object hash -> the mailbox_confirmed step, when it came before the chat event
        self._mb_confirmed: collections.OrderedDict[str, tuple[float, str]] = \
            collections.OrderedDict()
        self._mb_error: dict[str, str] = {}       # person -> the last refused deposit
        self._events = 0  # chum_imported / chum_receipt_sent events seen, in order
        self._await_confirm: dict[str, set[str]] = {}  # person -> incoming ids not confirmed
        # person -> the last receipt we sent it (event number, mark): it covers every import
        # from that person before it, also one whose chat event comes after the receipt
        self._receipt_out: dict[str, tuple[int, int]] = {}
        # person -> "lama" (a receipt came, or its importer probed the fast path) or "one"
        # (its importer fetched from us without probing: a ONE instance)
        self._kind: dict[str, str] = {}
        self._kind_dirty: set[str] = set()  # kinds changed since they were last persisted
        self._conn: dict[str, dict[str, Any]] = {}  # person -> {"up", "down", "reason"}
        self._callbacks: list[Callable[[Trace], Any]] = []
        self._dirty: dict[str, None] = {}  # changed traces, in the order they changed
        self._new: list[list[_Rec]] = []   # batches of posts not persisted yet (not in _dirty)
        self._dropped: list[str] = []
        self._flush_handle: asyncio.Handle | None = None
        self._grant_queue: list[_Rec] = []
        self._unposted: list[Any] = []  # my messages seen as chat events before posted()
        self._created_step = Step("created", -1.0)  # the last incoming one (shared)
        # (the store's write sequence when it was seen, kind, person, data)
        self._recent: collections.deque[tuple[int, str, str, dict[str, Any]]] = \
            collections.deque(maxlen=_RECENT)
        self._writer: _Writer | None = None
        self._written = 0              # log records since the last compaction
        # traces the log creates since it was last rewritten (most of them dropped since, in
        # an instance that posts more than `limit`): when it holds more than twice the traces
        # kept, it is rewritten, while running as at a start (issue 10: an instance that
        # posted 100,000 messages left a 20 MB log that its next start read whole and
        # rewrote, 2.4 MiB more RSS for good)
        self._logged = 0
        self._compact_due = False
        self.path = path
        if path is not None:
            self._load(path)
            self._writer = _Writer(path)
            if self._compact_due:
                self._schedule()  # the rewrite now, not at the next change: a short next start

    # ------------------------------------------------------------------ persistence

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        # The log is streamed and the traces are cut to the newest `limit` as they are rebuilt
        # (issue 10): the log of an instance that posted 100,000 messages is ~20 MB of JSON
        # holding all of them, and reading it whole, then every trace, then keeping 10,000
        # left ~37 MiB of anonymous memory in the process at every start.
        recs: dict[str, _Rec] = {}
        kinds: dict[str, str] = {}
        rows = made = 0
        bound = self.limit + max(self.limit // 4, 1000)
        try:
            db = _Writer.connect(path)
            try:
                # one record at a time: a batch's record is ~150 KB of JSON, and a window
                # of them (fetchmany(64): ~10 MB) left the heap that much larger for good
                for (data,) in db.execute("SELECT data FROM log ORDER BY id"):
                    rows += 1
                    made += _replay((data,), recs, kinds, finish=False)
                    if self.limit > 0 and len(recs) > bound:
                        _keep_newest(recs, self.limit)
            finally:
                db.close()
        except sqlite3.Error as e:
            log.error("cannot read %s: %s", path, e)
            return
        self._kind.update(kinds)
        if self.limit > 0:
            _keep_newest(recs, self.limit)
        _finish(recs)
        for rec in sorted(recs.values(), key=lambda r: r.created):
            self._index(rec)
        for mid in list(itertools.islice(self._early, max(len(self._early) - _EARLY_MAX, 0))):
            del self._early[mid]  # (the newest wait for their import event, as when running)
        for p, pend in self._pending.items():  # in the order of their seq (see _pending)
            self._pending[p] = dict.fromkeys(sorted(pend, key=lambda m: self._recs[m].seq))
            self._pend_seq[p] = max([self._recs[m].seq for m in pend], default=0)
        # rewritten (right after the open) when it grew, or when it holds more than twice the
        # traces it keeps (each start would read them all again)
        self._logged = made
        self._compact_due = rows > _COMPACT_AFTER // 10 or self._too_many_logged()

    def _too_many_logged(self) -> bool:
        """The log creates more than twice the traces kept (they are rewritten)."""
        return self._logged > 2 * max(len(self._recs), self.limit, 1000)

    def _index(self, rec: _Rec) -> None:
        mid = rec.message_id
        self._recs[mid] = rec
        if rec.direction == "out":
            for p in rec.recipients:
                if not rec.has("stored", p):
                    self._pending.setdefault(p, {})[mid] = None
                    if not rec.has("offered", p):
                        self._unoffered.setdefault(p, {}).setdefault(rec.channel, []).append(rec)
            if any(not rec.has("fetched", p) for p in rec.recipients):
                if isinstance(rec._hashes, bytes):  # the trace's own bytes object is the key
                    self._watch[rec._hashes] = mid
                else:
                    for h in rec.hashes:
                        if h != mid:
                            self._watch[_watch_key(h)] = mid
        else:
            src = next((s.peer for s in rec.steps if s.step == "received"), None)
            if src and not rec.has("confirmed", src):
                self._await_confirm.setdefault(src, set()).add(mid)
            if not rec.recipients:
                self._early[mid] = rec

    def _add_pending(self, person: str, batch: list[_Rec]) -> None:
        """``batch`` waits for ``person``'s receipt (kept in the order of seq)."""
        pend = self._pending.setdefault(person, {})
        pend.update(dict.fromkeys([r.message_id for r in batch]))
        last = self._pend_seq.get(person, -1)
        top = max([r.seq for r in batch], default=last)
        if any(r.seq < last for r in batch):  # registered late (a group's grant check)
            recs = self._recs
            self._pending[person] = dict.fromkeys(
                sorted(pend, key=lambda m: recs[m].seq if m in recs else 0))
        self._pend_seq[person] = max(last, top)

    def _changed(self, rec: _Rec) -> None:
        self._dirty[rec.message_id] = None
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._flush()
                return
            self._flush_handle = loop.call_later(_FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """Hand the changes to the writer (log records) and tell the subscribers."""
        self._flush_handle = None
        if self._grant_queue:
            self._check_grants()
        dirty, self._dirty = self._dirty, {}
        new, self._new = self._new, []
        recs = self._recs
        excess = len(recs) - self.limit
        if excess > 0:  # insertion order is creation order, near enough; one scan for all
            self._forget_many([recs[m] for m in itertools.islice(recs, excess)])
        if self._writer is not None:
            if self._compact_due or self._written > _COMPACT_AFTER or self._too_many_logged():
                out = _encode_records(recs.values(), full=True)
                if self._kind:
                    out.append(_ENCODE(["kind", self._kind]))
                self._kind_dirty.clear()
                self._writer.put(out, compact=True)
                self._compact_due, self._written, self._dropped = False, 0, []
                self._logged = len(recs)
            else:
                # traces persisted before and changed since, then the new batches' (a trace
                # in both is new: it is persisted whole once)
                todo = [r for b in new for r in b if r.saved < 0]
                older = [recs[m] for m in dirty if m in recs]
                if any(r.saved < 0 for r in older):  # e.g. incoming ones, or a post's event
                    seen = {id(r) for r in todo}
                    older = [r for r in older if r.saved >= 0 or id(r) not in seen]
                out = _encode_records(older + todo)
                self._logged += len(todo) + sum(1 for r in older if r.saved < 0)
                if self._dropped:
                    out.append(_ENCODE(["drop", self._dropped]))
                    self._dropped = []
                if self._kind_dirty:
                    out.append(_ENCODE(["kind", {p: self._kind[p] for p in self._kind_dirty}]))
                    self._kind_dirty.clear()
                if out:
                    self._writer.put(out)
                    self._written += len(out)
        if self._callbacks:
            for b in new:
                dirty.update(dict.fromkeys(r.message_id for r in b))
            for m in dirty:
                if m in self._recs:
                    t = self.report(self._recs[m])
                    for cb in list(self._callbacks):
                        try:
                            r = cb(t)
                            if asyncio.iscoroutine(r):
                                asyncio.ensure_future(r)
                        except Exception:  # one callback's bug must not stop the others
                            log.exception("on_trace callback failed")

    def _forget_many(self, old: list[_Rec]) -> None:
        ids = [r.message_id for r in old]
        recs, watch = self._recs, self._watch
        for r in old:
            del recs[r.message_id]
            r.saved = max(r.saved, 0)  # a new one is not persisted any more
            for h in r.hashes:
                k = _watch_key(h)
                if watch.get(k) == r.message_id:
                    del watch[k]
        self._dropped.extend(ids)
        for pend in self._pending.values():
            for mid in ids:
                pend.pop(mid, None)
        for s in self._await_confirm.values():
            s.difference_update(ids)
        for mid in ids:
            self._early.pop(mid, None)
        for per in self._unoffered.values():
            for cid, lst in list(per.items()):
                keep = [r for r in lst if recs.get(r.message_id) is r]
                if keep:
                    per[cid] = keep
                else:
                    del per[cid]

    def flush(self) -> None:
        """Write every change now (tests, close)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ observed events

    def posted(self, messages: Iterable[Any]) -> None:
        """The send path: ``messages`` (lama.chat.Message) were committed just now. Per
        message a few dict operations; per batch one ``last_seq``. The grant check runs a
        moment later, off the send path; announced channel versions are recognised when they
        are announced (``_channel_of``)."""
        at = _now()
        seq = self.store.last_seq()
        recs = self._recs
        watch = self._watch
        topic = ""
        batch: list[_Rec] = []
        posted_step = Step("posted", at)   # immutable: one object for the batch
        created_step = Step("created", 0.0)
        steps = (created_step, posted_step)  # one tuple per `created` too
        new, fromhex = _Rec.__new__, bytes.fromhex
        for m in messages:
            mid = m.id
            if mid in recs:
                continue
            if m.topic_id != topic:
                if batch:
                    self._posted_batch(batch, topic)
                    batch = []
                topic = m.topic_id
            # (what _Rec(...) does, without its call and the hashes setter's checks: the
            # send path's per-message part, issue 10)
            rec = new(_Rec)
            rec.message_id, rec.topic_id, rec.channel, rec.direction = mid, topic, m.channel, "out"
            rec.sender, rec.preview = m.sender, m.text[:80]
            rec.created = created = float(m.timestamp)
            h = m.hash
            try:  # a post's ChatMessage hash as 32 bytes (see _Rec.hashes)
                rec._hashes = key = fromhex(h) if len(h) == 64 else (mid, h)
            except (ValueError, TypeError):
                rec._hashes = key = (mid, h)
            rec.seq, rec.recipients, rec.granted, rec.errors = seq, (), _NONE, _NONE
            rec.saved = -1
            if created_step.at != created:  # one batch: mostly one timestamp
                created_step = Step("created", created)
                steps = (created_step, posted_step)
            rec.steps = steps
            rec.updated = at
            recs[mid] = rec
            # (the message id itself is found among the pending ids)
            watch[key if isinstance(key, bytes) else _watch_key(h)] = mid
            batch.append(rec)
        if batch:
            self._posted_batch(batch, topic)
        if log.isEnabledFor(logging.INFO):
            # one record per batch (docs/tracing.md §7): a lone post names its message, a
            # batch lists its ids
            ms = list(messages)
            if len(ms) == 1:
                log.info("message posted", extra={"fields": {
                    "event": "message_posted", "message_id": ms[0].id, "topic": ms[0].topic_id}})
            elif ms:
                log.info("messages posted", extra={"fields": {
                    "event": "message_posted", "message_ids": [m.id for m in ms],
                    "count": len(ms), "topic": ms[0].topic_id}})

    def _post_unposted(self) -> None:
        batch, self._unposted = self._unposted, []
        self.posted(batch)

    def _posted_batch(self, batch: list[_Rec], topic: Any) -> None:
        pm = _ONE_TO_ONE.fullmatch(topic)
        if pm:
            self._recipients(batch, [p for p in pm.groups() if p != self.me])
        self._grant_queue.extend(batch)
        self._new.append(batch)  # persisted whole at the flush (no per-message mark)
        self._schedule()

    def _recipients(self, batch: list[_Rec], persons: list[str]) -> None:
        """Set the recipients; session events seen before the posts were registered (the
        session may serve them before the send path gets back here) are applied again: those
        seen after the posts' commit (the store's write sequence at the event is at least
        the posts' ``seq``; an event seen before it cannot have served or covered them)."""
        recipients = tuple(sorted(persons))
        for rec in batch:
            rec.recipients = recipients
        lo = min([r.seq for r in batch], default=0)
        for p in recipients:
            self._add_pending(p, batch)
            offered: set[str] = set()
            for seq, kind, person, data in list(self._recent):
                if person == p and seq >= lo:
                    if kind == "exported":
                        offered |= self._exported(person, data, only=batch)
                    else:
                        self._receipt(person, data, only=batch)
            un = self._unoffered.setdefault(p, {})
            for rec in batch:
                if rec.channel not in offered:
                    lst = un.get(rec.channel)
                    if lst is None:
                        lst = un[rec.channel] = []
                    lst.append(rec)

    def _check_grants(self) -> None:
        """``granted`` per recipient (checked at posting, run a moment later off the send
        path): the topic's participants but me; granted when the channel's IdAccess lists
        them (directly or through a group). One check per channel and run."""
        from lama import access

        queue, self._grant_queue = self._grant_queue, []
        by_channel: dict[str, list[_Rec]] = {}
        for rec in queue:
            if rec.message_id in self._recs:
                by_channel.setdefault(rec.channel, []).append(rec)
        for cid, recs in by_channel.items():
            try:
                persons, groups = access.grants(self.store, id=cid)
                members: set[str] = set(persons)
                for group in groups:
                    with contextlib.suppress(LamaError):
                        members.update(_group_members(self.store, group))
            except LamaError as e:
                log.warning("grants of %s: %s", cid, e)
                members = set()
            todo = [r for r in recs if not r.recipients]
            if todo:
                self._recipients(todo, self._participants(todo[0]))
            shared: dict[tuple[Any, ...], tuple[dict[str, bool], tuple[Step, ...]]] = {}
            longer: dict[tuple[int, int], tuple[Any, ...]] = {}  # shared steps: shared again
            last_old: tuple[Step, ...] | None = None
            last_to: tuple[Any, ...] = ()
            g: tuple[dict[str, bool], tuple[Step, ...]] = (_NONE, ())
            new_steps: tuple[Step, ...] = ()
            for r in recs:
                old = r.steps
                if old is last_old and r.recipients is last_to:  # a batch: as the one before
                    r.granted, r.steps = g[0], new_steps
                    continue
                key = (r.recipients, old[1])  # one batch: one posted step
                g = shared.get(key)  # type: ignore[assignment]
                if g is None:
                    ok = {p: p in members for p in r.recipients}
                    g = shared[key] = (ok, tuple(Step("granted", old[1].at, p)
                                                 for p, yes in ok.items() if yes))
                r.granted = g[0]  # shared: never changed afterwards
                got = longer.get((id(old), id(g[1])))
                if got is None:
                    got = longer[(id(old), id(g[1]))] = (old, old + g[1])
                r.steps = new_steps = got[1]
                last_old, last_to = old, r.recipients
            # new traces are persisted whole at the flush; only older ones need a mark
            self._dirty.update(dict.fromkeys(r.message_id for r in recs if r.saved >= 0))

    def _participants(self, rec: _Rec) -> list[str]:
        m = _ONE_TO_ONE.fullmatch(rec.topic_id)
        if m:
            return [p for p in m.groups() if p != self.me]
        try:  # a group topic: the persons its channel is shared with
            from lama import access

            persons, _ = access.grants(self.store, id=rec.channel)
            return [p for p in persons if p != self.me]
        except LamaError:
            return []

    def on_chat_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "message":
            if log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {"event": kind}
                if kind == "contact":
                    c = data["contact"]
                    fields.update(person=c.person_id, change=data.get("change"))
                elif kind == "contact_removed":
                    fields.update(person=data["removed"].person_id)
                elif kind == "topic":
                    fields.update(topic=data["topic"].id)
                log.info(kind.replace("_", " "), extra={"fields": fields})
            return
        m = data["message"]
        if m.outgoing:
            if m.id not in self._recs and m.sender == self.me:
                # posted by a path other than App.send (Chat.send called directly), or its
                # event came before App.send's own call: registered as one batch once this
                # callback round is over (per message, each registration replays the recent
                # export events: quadratic in a large batch)
                self._unposted.append(m)
                if len(self._unposted) == 1:
                    try:
                        asyncio.get_running_loop().call_soon(self._post_unposted)
                    except RuntimeError:  # no loop: at once
                        self._post_unposted()
            return
        if m.id in self._recs:
            return
        at = _now()
        ts = float(m.timestamp)
        rec = _Rec(m.id, m.topic_id, m.channel, "in", m.sender, m.text[:80], ts)
        first = self._created_step
        if first.at != ts:  # messages of one batch mostly share their timestamp
            first = self._created_step = Step("created", ts)
        got = self._import_of(m.id) or self._import_of(m.hash)
        confirm: Step | None = None
        visible = Step("visible", at)
        if got is not None:
            src, t, n, via, detail, got_step = got
            rec.recipients = (src,)
            mbc = self._mb_confirmed.pop(m.id, None) if self._mb_confirmed else None
            sent = self._receipt_out.get(src)
            if via == "mailbox_fetched":
                if mbc is not None:  # the server deleted the item before the chat event came
                    confirm = Step("mailbox_confirmed", mbc[0], src, mbc[1])
            elif sent is not None and sent[0] > n:  # confirmed before the chat event came
                confirm = Step("confirmed", at, src, f"mark {sent[1]}")
            else:
                waiting = self._await_confirm.get(src)
                if waiting is None:
                    waiting = self._await_confirm[src] = set()
                waiting.add(m.id)
            steps: tuple[Step, ...] = (first, got_step, visible)
            updated = max(ts, at, got_step.at)  # (the import's time can be the later one, §2)
            if confirm is not None:
                steps += (confirm,)
                updated = max(updated, confirm.at)
        else:
            steps = (first, visible)
            updated = max(ts, at)
            self._early[m.id] = rec
            if len(self._early) > _EARLY_MAX:  # (their import event never came)
                del self._early[next(iter(self._early))]
        rec.steps = steps
        rec.updated = updated
        self._recs[m.id] = rec
        if log.isEnabledFor(logging.INFO):
            log.info("message received", extra={"fields": {
                "event": "message_received", "message_id": m.id, "topic": m.topic_id,
                "sender": m.sender, "peer": rec.recipients[0] if rec.recipients else None}})
        self._changed(rec)

    def on_manager_event(self, kind: str, data: dict[str, Any]) -> None:
        person = data.get("person")
        if kind == "connection_up" and data.get("group") == "chum" and person:
            self._conn.setdefault(person, {})["up"] = _now()
        elif kind == "connection_down" and data.get("group") == "chum" and person:
            c = self._conn.setdefault(person, {})
            c["down"], c["reason"] = _now(), data.get("reason")
        elif kind == "chum_exported" and person:
            self._exported(person, data["data"])
        elif kind == "chum_receipt" and person:
            self._receipt(person, data["data"])
        elif kind == "chum_receipt_sent" and person:
            self._receipt_sent(person, data["data"])
        elif kind == "chum_imported" and person:
            self._imported(person, data["data"].get("objects", ()), "received")
        elif kind == "chum_error" and person and data["data"].get("fatal"):
            # our session with the peer ended with an error (docs/tracing.md §3 import_error)
            d = data["data"]
            msg, code = str(d.get("message") or ""), d.get("code")
            text = f"{code}: {msg}" if code and not msg.startswith(f"{code}:") else msg
            for mid in self._pending.get(person, ()):
                rec = self._recs[mid]
                rec.errors = {**rec.errors, person: text}
                self._changed(rec)

    def _imported(self, person: str, hashes: Iterable[str], step: str,
                  detail: str | None = None) -> None:
        """Objects imported from ``person`` (by CHUM: ``received``; from the mailbox:
        ``mailbox_fetched``), remembered for the chat event that follows."""
        at = _now()
        # one entry (and one step object) for every object of the import
        entry: _Import = (person, at, self._events, step, detail, Step(step, at, person, detail))
        got = tuple(hashes)
        self._import_serial = n = self._import_serial + 1
        imports, index = self._imports, self._import_index
        if len(got) <= _INDEXED:
            ne = (n, entry)
            imports.append((n, entry, got))
            for h in got:
                index[h] = ne
        else:
            fs = frozenset(got)
            imports.append((n, entry, fs))
            self._large.append((n, entry, fs))
        self._imports_n += len(got)
        while len(imports) > 1 and (self._imports_n > _IMPORTS_MAX
                                    or len(imports) > _IMPORT_EVENTS):
            old_n, _, gone = imports.popleft()
            self._imports_n -= len(gone)
            if type(gone) is frozenset:
                self._large.popleft()  # the oldest large import is the oldest import here
            else:
                for h in gone:
                    hit = index.get(h)
                    if hit is not None and hit[0] == old_n:  # not brought by a newer import
                        del index[h]
        early = self._early
        if early:  # a chat event that came first
            # the smaller side is walked: thousands of messages can wait here when a large
            # import's chat events come before its event (issue 10's 10,000-message run)
            if len(early) <= len(got):
                mine = [h for h in early if self._import_of(h) is entry]
            else:
                mine = [h for h in dict.fromkeys(got) if h in early]
            for h in mine:
                rec = early.pop(h)
                if not rec.recipients:
                    # the import step at its causal place, before `visible` (with the time its
                    # event was seen, later than visible's: docs/tracing.md §2)
                    rec.steps = _placed(rec.steps, entry[5])
                    if at > rec.updated:
                        rec.updated = at
                    if rec.saved >= 0:
                        # persisted without it (a flush came between the two events): the
                        # trace is persisted whole again, its new record replaces the old
                        # one at the replay (an `upd` record only appends)
                        rec.saved = -1
                    rec.recipients = (person,)
                    if step == "received":
                        self._await_confirm.setdefault(person, set()).add(h)
                    self._changed(rec)

    def _import_of(self, h: str) -> _Import | None:
        """The newest import that brought the object ``h``."""
        hit = self._import_index.get(h)
        for n, entry, fs in reversed(self._large):  # newest first, only those newer than hit
            if hit is not None and n < hit[0]:
                break
            if h in fs:
                return entry
        return None if hit is None else hit[1]

    def on_mailbox_event(self, entry: dict[str, Any]) -> None:
        """The mailbox service's outcomes (docs/mailbox.md §6): a deposit for a peer
        (``deposited`` in the sender's traces), an item fetched and imported
        (``mailbox_fetched``) and its deletion confirmed by the server (``mailbox_confirmed``)
        in the receiver's."""
        op, ok = entry.get("op"), entry.get("ok")
        person = entry.get("person")
        if op == "deposit" and person:
            if not ok:
                self._mb_error[person] = f"{entry.get('code')}: {entry.get('message')}"
                return
            self._mb_error.pop(person, None)
            item = str(entry.get("id") or "")
            step = Step("deposited", _now(), person,
                        f"item {item[:12]} at {entry.get('url')}")
            cid, upto = entry.get("channel"), entry.get("upto") or 0
            memo: dict[int, tuple[Any, ...]] = {}
            for mid in list(self._pending.get(person, ())):
                rec = self._recs[mid]
                if rec.channel == cid and rec.seq <= upto and rec.add_shared(step, memo):
                    self._changed(rec)
        elif op == "import" and ok and person:
            item = str(entry.get("id") or "")
            hashes = list(entry.get("hashes") or ())
            self._imported(person, hashes, "mailbox_fetched",
                           f"item {item[:12]} from {entry.get('url')}")
            self._mb_items[item] = hashes
            while len(self._mb_items) > 1000:
                self._mb_items.popitem(last=False)
        elif op == "fetch" and ok:
            at = _now()
            for item in entry.get("confirmed") or ():
                detail = f"item {str(item)[:12]} deleted at the server"
                for h in self._mb_items.pop(item, ()):
                    got = self._recs.get(h)
                    if got is None:
                        if self._import_of(h) is not None:  # no chat event yet
                            self._mb_confirmed[h] = (at, detail)
                        continue
                    if got.direction == "in" and got.add(
                            "mailbox_confirmed", at, got.recipients[0] if got.recipients else None,
                            detail):
                        self._changed(got)
            while len(self._mb_confirmed) > _IMPORTS_MAX:
                self._mb_confirmed.popitem(last=False)

    def _seq_now(self) -> int:
        """The store's write sequence now (no store: every recent event is replayed)."""
        if self.store is None:
            return 1 << 62
        try:
            return int(self.store.last_seq())
        except LamaError:
            return 1 << 62

    def _exported(self, person: str, data: dict[str, Any],
                  only: list[_Rec] | None = None) -> set[str]:
        """The steps of an ``exported`` event (``only``: replayed on those traces); the
        channels it announced."""
        if only is None:
            self._recent.append((self._seq_now(), "exported", person, data))
            probed = data.get("probed")
            if probed is not None and self._kind.get(person) != "lama":
                # a lama importer probes right after the version check, before any roots
                # answer; a ONE importer never does (docs/tracing.md §1 kind)
                self._set_kind(person, "lama" if probed else "one")
        ids = self._pending.get(person)
        if not ids:
            return set()
        at = _now()
        roots = data.get("roots") or ()
        objects = data.get("objects") or ()
        channels: set[str] = set()
        lookups = 0
        for h in roots:
            cid = self._versions.get(h)
            if cid is None and lookups < _ROOT_LOOKUPS:
                lookups += 1
                cid = self._channel_of(h)
            if cid:
                channels.add(cid)
        watch = self._watch
        # a served CreationTime is a pending message id itself; other objects via _watch
        served: set[str] = set()
        add, get = served.add, watch.get
        for h in objects:  # (a plain loop: the cheapest per served object)
            if h in ids:
                add(h)
                continue
            try:
                mid = get(bytes.fromhex(h))
            except (ValueError, TypeError):  # (not a hash: looked up as it is)
                mid = get(h)
            if mid is not None:
                add(mid)
        offered, fetched = Step("offered", at, person), Step("fetched", at, person)
        recs = self._recs
        if only is not None:
            m_off: dict[int, tuple[Any, ...]] = {}
            m_fetch: dict[int, tuple[Any, ...]] = {}
            changed: list[str] = []
            for rec in only:
                c = rec.channel in channels and rec.add_shared(offered, m_off)
                if rec.message_id in served and rec.add_shared(fetched, m_fetch):
                    c = True
                if c:
                    changed.append(rec.message_id)
            if changed:
                self._dirty.update(dict.fromkeys(changed))
                self._schedule()
            return channels
        touched: dict[str, _Rec] = {}
        memo: dict[int, tuple[Any, ...]] = {}
        un = self._unoffered.get(person) if channels else None
        if un:  # the traces of these channels not offered yet: all of them at once
            for cid in channels:
                for rec in un.pop(cid, ()):
                    mid = rec.message_id
                    if mid in ids and recs.get(mid) is rec:
                        rec.push(offered, memo)
                        touched[mid] = rec
        m_fetch = {}
        for mid in served:
            got = recs.get(mid)
            if got is not None and mid in ids and got.add_shared(fetched, m_fetch):
                touched[mid] = got
        if touched:
            self._dirty.update(dict.fromkeys(touched))
            self._schedule()
        return channels

    def _set_kind(self, person: str, kind: str) -> None:
        """A peer's kind changed: persisted (a ``kind`` record at the next flush), so a
        restarted app still counts a ONE peer's ``fetched`` as delivered."""
        if self._kind.get(person) != kind:
            self._kind[person] = kind
            self._kind_dirty.add(person)
            self._schedule()

    def _channel_of(self, h: str) -> str:
        """The channel id hash if ``h`` is a ChannelInfo version or its version node, else
        "" (both remembered)."""
        from lama._core import core
        from lama.objects import versions

        own = self._own_version
        cid = own(h) if own is not None else None
        if cid is not None:  # (issue 10: 4-5 store reads per announcement of my own post)
            self._versions[h] = cid
            return cid
        cid = ""
        try:
            if self.store.kind(h) == "object":
                data = h
                head = self.store.get(h)[:100]
                if "VersionNode" in head:
                    data = str(versions.load_node(self.store, h).data)
                    head = self.store.get(data)[:100]
                if 'itemtype="//refin.io/ChannelInfo"' in head:
                    cid = str(core.id_hash(self.store.get_object(data)))
        except (LamaError, KeyError, ValueError):
            pass
        if len(self._versions) > _IMPORTS_MAX:
            self._versions.clear()
        self._versions[h] = cid
        return cid

    def _receipt(self, person: str, data: dict[str, Any],
                 only: list[_Rec] | None = None) -> None:
        if only is None:
            self._set_kind(person, "lama")
            self._recent.append((self._seq_now(), "receipt", person, data))
        mark = data.get("mark")
        errors = data.get("errors") or []
        at = _now()
        stored = Step("stored", at, person, f"mark {mark}")
        pend = self._pending.get(person)
        if pend is None:
            return
        recs = self._recs
        if only is None:
            # live: the pending ids are in the order of seq, a receipt covers a prefix
            done: list[str] = []
            memo: dict[int, tuple[Any, ...]] = {}
            if mark is not None:
                for mid in pend:
                    rec = recs[mid]
                    if rec.seq > mark:
                        break
                    rec.push(stored, memo)
                    if person in rec.errors:
                        rec.errors = {k: v for k, v in rec.errors.items() if k != person}
                    done.append(mid)
                for mid in done:
                    del pend[mid]
            if errors:
                text = "; ".join(errors)
                for mid in pend:
                    rec = recs[mid]
                    rec.errors = {**rec.errors, person: text}
                    done.append(mid)
            if done:
                self._dirty.update(dict.fromkeys(done))
                self._schedule()
            return
        m_stored: dict[int, tuple[Any, ...]] = {}
        for rec in only:
            mid = rec.message_id
            changed = False
            if mark is not None and rec.seq <= mark:
                changed |= rec.add_shared(stored, m_stored)
                if person in rec.errors:
                    rec.errors = {k: v for k, v in rec.errors.items() if k != person}
                pend.pop(mid, None)
            elif errors:
                rec.errors = {**rec.errors, person: "; ".join(errors)}
                changed = True
            if changed:
                self._changed(rec)

    def _receipt_sent(self, person: str, data: dict[str, Any]) -> None:
        if data.get("mark") is None:
            return
        confirmed = Step("confirmed", _now(), person, f"mark {data['mark']}")
        self._events += 1
        self._receipt_out[person] = (self._events, data["mark"])
        waiting = self._await_confirm.pop(person, None)
        if not waiting:
            return
        recs = self._recs
        done = []
        memo: dict[int, tuple[Any, ...]] = {}
        for mid in waiting:
            rec = recs.get(mid)
            if rec is not None and rec.add_shared(confirmed, memo):
                done.append(mid)
        if done:
            self._dirty.update(dict.fromkeys(done))
            self._schedule()

    # ------------------------------------------------------------------ reports

    def subscribe(self, callback: Callable[[Trace], Any]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def find(self, message_id: str) -> _Rec:
        if self._grant_queue:
            self._check_grants()
        key = message_id.lower() if isinstance(message_id, str) else ""
        rec = self._recs.get(key)
        if rec is None and len(key) >= 8:
            found = [r for m, r in self._recs.items() if m.startswith(key)]
            if len(found) == 1:
                rec = found[0]
        if rec is None:
            raise NotFoundError(f"no trace of message {message_id!r}", code="LAMA-TRACE-NONE")
        return rec

    def trace(self, message_id: str) -> Trace:
        return self.report(self.find(message_id))

    def traces(self, limit: int = 50, *, stalled: bool = False,
               peer: str | None = None) -> list[Trace]:
        if self._grant_queue:
            self._check_grants()
        out: list[Trace] = []
        # newest first; ties (one batch: the same ms) newest registered first
        for rec in sorted(reversed(self._recs.values()), key=lambda r: -r.created):
            if peer is not None and peer not in rec.recipients and rec.sender != peer:
                continue
            t = self.report(rec)
            if stalled and t.status != "stalled":
                continue
            out.append(t)
            if len(out) >= limit:
                break
        return out

    def report(self, rec: _Rec) -> Trace:
        now = _now()
        names = self._names() if self._names is not None else {}
        steps = tuple(sorted(rec.steps, key=_order_key))
        peers: list[PeerReport] = []
        failure: Failure | None = None
        if rec.direction == "in":
            status = "received"
            for p in rec.recipients:
                last = _last_step(rec, p)
                peers.append(PeerReport(p, names.get(p), self._kind.get(p, "unknown"), last,
                                        None, None))
        else:
            posted = next((s.at for s in rec.steps if s.step == "posted"), rec.created)
            delivered = True
            for p in rec.recipients:
                kind = self._kind.get(p, "unknown")
                done = rec.has("stored", p) or (kind == "one" and rec.has("fetched", p))
                point = detail = None
                if done and kind == "one" and not rec.has("stored", p):
                    detail = ("a ONE peer: fetched is the last observable step (ONE sends no "
                              "receipt)")
                if not done:
                    delivered = False
                    point, detail = self._failure(rec, p, posted)
                    if failure is None:
                        failure = Failure(p, point, detail)
                peers.append(PeerReport(p, names.get(p), kind, _last_step(rec, p), point, detail))
            if delivered and rec.recipients:
                status = "delivered"
            else:
                status = "in_flight" if now - posted < self.stall_after * 1000 else "stalled"
        return Trace(rec.message_id, rec.topic_id, rec.channel, rec.direction, rec.sender,
                     rec.preview, rec.created, steps, tuple(peers), status, failure,
                     rec.updated)

    def _failure(self, rec: _Rec, person: str, posted: float) -> tuple[str, str | None]:
        """docs/tracing.md §3, first match wins."""
        if not rec.granted.get(person, False):
            return "not_granted", "the channel's IdAccess does not list this person"
        st = self._live(person) if self._live is not None else None
        dep = next((s for s in reversed(rec.steps) if s.step == "deposited" and s.peer == person),
                   None)
        if dep is not None and (st is None or not st["connected"]):
            return "in_mailbox", f"deposited ({dep.detail}); the peer has not confirmed it yet"
        if st is None:
            return "peer_offline", "instance not running"
        c = self._conn.get(person, {})
        if not st["connected"]:
            connected_since_post = (c.get("up") or 0) >= posted or (c.get("down") or 0) >= posted
            if not connected_since_post and not st.get("last_error"):
                return "never_connected", ("no endpoint URL known" if not st.get("url")
                                           else "no connection yet")
            if st.get("refused") and st.get("last_error"):
                return "connection_refused", st["last_error"]
            mb = self._mb_error.get(person)
            why = st.get("last_error") or f"disconnected: {c.get('reason') or 'unknown reason'}"
            return "peer_offline", why if mb is None else f"{why}; mailbox deposit refused: {mb}"
        if person in rec.errors:
            return "import_error", rec.errors[person]
        if self._kind.get(person) == "one":
            return "in_flight", (f"a ONE peer (no receipts): the last observable step is "
                                 f"{_last_step(rec, person) or 'posted'}")
        return "in_flight", None


def manager_live(manager: Any, started: Callable[[], bool]) -> Callable[[str], dict[str, Any] | None]:
    """The live connection state of a person for the failure points: ``connected``,
    ``last_error``, ``refused``, ``url`` over its instances; None when the app is not running.
    One health sample serves the reports of 0.5 s."""
    cache: list[Any] = [0.0, None]

    def live(person: str) -> dict[str, Any] | None:
        if not started():
            return None
        now = time.monotonic()
        if cache[1] is None or now - cache[0] > 0.5:
            cache[0], cache[1] = now, manager.connection_health()["peers"]
        peers = [p for p in cache[1].values() if p["person_id"] == person]
        if not peers:
            return {"connected": False, "last_error": None, "refused": False, "url": None}
        up = [p for p in peers if p["connected"]]
        p = up[0] if up else max(peers, key=lambda p: p["reconnect_attempts"])
        return {"connected": bool(up), "last_error": p["last_error"],
                "refused": bool(p.get("refused")), "url": p.get("url")}

    return live


def _last_step(rec: _Rec, person: str) -> str | None:
    mine = [s for s in rec.steps if s.peer == person]
    if not mine:
        return None
    return max(mine, key=lambda s: (_ORDER.get(s.step, 0), s.at)).step


def _group_members(store: Any, group_hash: str) -> list[str]:
    from lama.objects import versions

    h = versions.current_hash(store, group_hash)
    if h is None:
        return []
    return [str(p) for p in store.get_object(h).get("person", [])]


def format_trace(d: dict[str, Any], names: dict[str, str] | None = None) -> list[str]:
    """A trace (``Trace.to_dict()``) as the lines ``lama trace`` prints (docs/tracing.md §6):
    one line per step ``HH:MM:SS.mmm  step  peer-name  detail``, then status and failure."""
    names = dict(names or {})
    for p in d.get("peers", ()):
        if p.get("name"):
            names[p["person_id"]] = p["name"]

    def who(pid: str | None) -> str:
        if pid is None:
            return "-"
        return names.get(pid) or pid[:16]

    lines = [f"message {d['message_id']} ({d['direction']}) {d['preview']!r}"]
    for s in d["steps"]:
        t = s["at"] / 1000.0
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(s['at']) % 1000:03d}"
        lines.append(f"{stamp}  {s['step']:<9}  {who(s['peer']):<16}  {s.get('detail') or ''}".rstrip())
    lines.append(f"status: {d['status']}")
    f = d.get("failure")
    if f:
        lines.append(f"failure: {f['point']} at {who(f['peer'])}"
                     + (f" ({f['detail']})" if f.get("detail") else ""))
    return lines
