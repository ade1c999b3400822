"""The sans-I/O CHUM session (docs/chum-session.md §2): one object per connection running the
local exporter and importer over one RPC layer (chum.md §2-§7).  Bytes and time go in, frames
and events come out; nothing here touches a socket or reads a clock."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import deque
from typing import Any, Generator

from ...errors import HashMismatchError, InvalidArgumentError, LamaError
from . import rpc
from .exporter import EXPORTER_SERVICES, NEW_ACCESSIBLE_ROOT_EVENT, NOTIFY, SUBSCRIBE, Exporter
from .importer import Call, Calls, Fatal, Importer, Outcome, Req, Sleep

_HASH = re.compile(r"^[0-9a-f]{64}$")

LOG_FIELDS = ("AtoBObjects", "AtoBIdObjects", "AtoBBlob", "AtoBClob",
              "BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob")

STAT_FIELDS = ("requests_sent", "requests_received", "requests_invalid", "responses_received",
               "objects_sent", "id_objects_sent", "blobs_sent", "clobs_sent",
               "objects_received", "id_objects_received", "blobs_received", "clobs_received",
               "bytes_sent", "bytes_received", "retries", "errors")


class _CallState:
    """One importer call: its answers by place, and how many are still missing."""

    __slots__ = ("seq", "results", "left")

    def __init__(self, seq: int, n: int):
        self.seq = seq
        self.results: list[Outcome | None] = [None] * n
        self.left = n


class _Pending:
    __slots__ = ("req", "slot", "rid", "deadline", "attempts", "writer", "mode", "encoding")

    def __init__(self, req: Req, slot: tuple[int, int]):
        self.req = req
        self.slot = slot  # (the importer call's sequence number, the place in it)
        self.rid = -1
        self.deadline = 0.0
        self.attempts = 0
        self.writer: Any = None
        self.mode: str | None = None  # "binary" / "text" once the first chunk arrived
        self.encoding: str | None = None


def _check_number(name: str, v: Any, minimum: float, integer: bool = False) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise InvalidArgumentError(f"{name} must be a{'n integer' if integer else ' number'}, "
                                   f"not {v!r}", "LAMA-ARG")
    if isinstance(v, float) and not math.isfinite(v) or v < minimum:
        raise InvalidArgumentError(f"{name} must be at least {minimum}, not {v!r}", "LAMA-ARG")
    return v


class ChumSession:
    """See docs/chum-session.md §2 for the contract (constructor, methods, events, codes)."""

    _store: Any
    _local: str
    _remote: str
    _keep_running: bool
    _poll_interval: float
    _fast_path: bool
    _request_timeout: float
    _max_retries: int
    _window: int
    _max_message: int
    _out: list[str | bytes]
    _events: list[tuple[str, dict[str, Any]]]
    _log: dict[str, list[str]]
    _errors: list[str]
    _stats: dict[str, int]
    _next_id: int
    _pending: dict[int, _Pending]
    _queue: deque[_Pending]
    # The importer's calls in flight, oldest first. Each is handed back whole and in the order
    # they were made, so the importer can keep the next chunks' requests out while it verifies
    # and commits one (issue 8: the exporter serves while the importer works).
    _calls: deque[_CallState]
    _next_call: int
    _sleep_until: float | None
    _now: float
    _started: bool
    _finished: bool
    _close_reason: str | None
    _exporter: Exporter | None
    _exporter_on: bool
    _importer_on: bool
    _exporter_done: bool
    _importer_done: bool
    _imp: Importer | None
    _task: Generator[Call | Calls | Sleep, Any, None] | None
    _notify_ids: set[int]
    _notified: bool
    _trace: bool
    _traced_objects: int
    _traced_id_objects: int
    _held: tuple[int, int]
    _ping_interval: float
    _ping_timeout: float
    _ping: list[Any] | None
    _next_ping: float | None

    def __new__(cls, store: Any, local_person: str, remote_person: str, *,
                keep_running: bool = False, poll_interval: float = 5.0, fast_path: bool = True,
                exporter: bool = True, importer: bool = True, request_timeout: float = 30.0,
                max_retries: int = 3, window: int = 64,
                max_message: int = 64 * 1024 * 1024, trace: bool = False,
                ping_interval: float = 0.0, ping_timeout: float = 10.0) -> ChumSession:
        self = super().__new__(cls)
        for name, v in (("local_person", local_person), ("remote_person", remote_person)):
            if not isinstance(v, str) or not _HASH.match(v):
                raise InvalidArgumentError(f"{name} must be a person ID hash, not {v!r}", "LAMA-ARG")
        self._store = store
        self._local = local_person
        self._remote = remote_person
        self._keep_running = bool(keep_running)
        self._poll_interval = float(_check_number("poll_interval", poll_interval, 0))
        self._fast_path = bool(fast_path)
        self._request_timeout = float(_check_number("request_timeout", request_timeout, 0))
        self._max_retries = _check_number("max_retries", max_retries, 0, integer=True)
        self._window = _check_number("window", window, 1, integer=True)
        self._max_message = _check_number("max_message", max_message, 1024, integer=True)
        self._ping_interval = float(_check_number("ping_interval", ping_interval, 0))
        self._ping_timeout = float(_check_number("ping_timeout", ping_timeout, 0))
        # docs/chum-session.md §2 "Ping": [request id, sent at, reported late] of the ping in
        # flight, and when the next one goes out
        self._ping = None
        self._next_ping = None
        self._out = []
        self._events = []
        self._log = {k: [] for k in LOG_FIELDS}
        self._errors = []
        self._stats = {k: 0 for k in STAT_FIELDS}
        self._next_id = 0
        self._pending = {}
        self._queue = deque()
        self._calls = deque()
        self._next_call = 0
        self._sleep_until = None
        self._now = 0.0
        self._started = False
        self._finished = False
        self._close_reason = None
        self._exporter = None
        self._exporter_on = bool(exporter)
        self._importer_on = bool(importer)
        self._exporter_done = not exporter
        self._importer_done = not importer
        self._imp = None
        self._task = None
        self._notify_ids = set()
        # a NOTIFY that came while a pass ran: that pass may have read the roots before the
        # write it announces, so the next pass starts when this one ends
        self._notified = False
        # docs/tracing.md §4: `exported` events (what our exporter announced and served);
        # off by default, so an untraced session builds nothing
        self._trace = bool(trace)
        self._traced_objects = 0
        # how far the Chum log's received objects / ID objects were told to the exporter as
        # held by the peer ("notify-closure")
        self._held = (0, 0)
        self._traced_id_objects = 0
        return self

    # -- driver API ------------------------------------------------------------------------

    def start(self, now: float) -> None:
        if self._started or self._finished:
            return
        self._started = True
        self._now = now
        # chum.md §3.2/§11.4: services are registered before the first request goes out
        if self._exporter_on:
            self._exporter = Exporter(self._store, self._remote, self._log, self._stats,
                                      self._exporter_error)
            if self._trace:
                self._exporter.announced = []
        if self._importer_on:
            self._imp = Importer(self._store, self._keep_running, self._poll_interval,
                                 self._emit, self._error, self._log, self._stats,
                                 fast_path=self._fast_path, remote_person=self._remote)
            self._task = self._imp.run()
            self._advance(None)
        if self._ping_interval > 0:
            # the first ping goes out at once: a latency right after the session started
            self._next_ping = now
            self._ping_tick(now)
        self._check_done()

    def _ping_tick(self, now: float) -> None:
        """docs/chum-session.md §2 "Ping": send the next ping when due (none while one is out),
        report one that is late (once).  A ping is GET_PROTOCOL_VERSION: stateless, answered by
        every v8 exporter (ONE too); any answer, an error included, is a round trip."""
        if self._finished:
            return
        if self._ping is not None:
            rid, sent, reported = self._ping
            if not reported and now >= sent + self._ping_timeout:
                self._ping[2] = True
                self._emit("ping", {"rtt": None, "waiting": now - sent})
            return
        if self._next_ping is not None and now >= self._next_ping:
            rid = self._next_id
            self._next_id += 1
            self._stats["requests_sent"] += 1
            self._emit_frame(rpc.request(rid, 1, []))
            self._ping = [rid, now, False]
            self._next_ping = now + self._ping_interval

    def receive_text(self, text: str, now: float) -> None:
        self._now = now
        if self._finished:
            return
        if not isinstance(text, str):
            self._error("LAMA-CHUM-FRAME", f"a text frame must be a str, got {type(text).__name__}",
                        False)
            return
        self._stats["bytes_received"] += len(text)
        if len(text) > self._max_message:
            self._fatal("LAMA-CHUM-FRAME", f"a text message of {len(text)} characters exceeds "
                        f"the limit of {self._max_message}")
            return
        if text == "synchronisation":
            return  # one.models' start handshake (chum.md §1), harmless if it reaches us
        msg = rpc.classify(text)
        if msg is None:
            # chum.md §2.1: ignored and counted, no answer
            self._stats["requests_invalid"] += 1
            self._error("LAMA-CHUM-FRAME", f"ignored a malformed message: {text[:200]!r}", False)
            return
        kind, m = msg
        if kind == "request":
            self._stats["requests_received"] += 1
            self._serve(m["requestId"], m["serviceId"], m.get("args"))
        elif kind == "write-stream-error":
            # our stream was sent whole already; the peer will drop the rest of it
            self._error("LAMA-CHUM-STREAM", f"the peer failed to store our stream for request "
                        f"{m['requestId']}", False)
        else:
            self._stats["responses_received"] += 1
            self._response(m)
        self._check_done()

    def receive_binary(self, data: bytes, now: float) -> None:
        self._now = now
        if self._finished:
            return
        if not isinstance(data, (bytes, bytearray, memoryview)):
            self._error("LAMA-CHUM-FRAME", "a binary frame must be bytes", False)
            return
        self._stats["bytes_received"] += len(data)
        if len(data) > self._max_message:
            self._fatal("LAMA-CHUM-FRAME", f"a binary message of {len(data)} bytes exceeds the "
                        f"limit of {self._max_message}")
            return
        rid = rpc.binary_id(bytes(data[:8]))
        p = None if rid is None else self._pending.get(rid)
        if p is not None and p.req.binary:
            # docs/chum-fastpath.md "batch-binary": the whole answer in one binary message
            self._done(p, Outcome(True, bytes(data[8:])))
            self._check_done()
            return
        if p is None or p.req.stream is None:
            # chum.md §2.6: a short frame or one for no stream of ours is dropped, never fatal
            self._error("LAMA-CHUM-FRAME", f"dropped a binary message of {len(data)} bytes "
                        f"for {'no request' if rid is None else f'request {rid}'}", False)
            return
        if p.mode == "text":
            self._stream_write_failed(p, "binary chunk in a text stream")
            return
        p.mode = "binary"
        self._write(p, bytes(data[8:]))
        self._check_done()

    def handle_timeout(self, now: float) -> None:
        self._now = now
        if self._finished:
            return
        self._ping_tick(now)
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            if p.rid not in self._pending:
                continue
            del self._pending[p.rid]
            self._abort_writer(p)
            if p.attempts < self._max_retries:
                p.attempts += 1
                self._stats["retries"] += 1
                self._send(p)  # a fresh id: a late answer to the old one is dropped
            else:
                self._deliver(p, Outcome(False, code="LAMA-CHUM-TIMEOUT",
                                         message=f"no answer to service {p.req.service} "
                                         f"{p.req.args[:1]} after {p.attempts + 1} attempts"))
                self._dispatch()
        if self._finished:
            return
        if self._imp is not None:
            due = self._imp.commit_deadline()
            if due is not None and due <= now:
                # verified objects waited COMMIT_INTERVAL for their commit
                self._imp.now = now
                self._imp.commit_ready()
        if self._sleep_until is not None and now >= self._sleep_until:
            self._sleep_until = None
            self._advance(None)
        self._check_done()

    def store_changed(self, now: float) -> None:
        # v8 has no push (chum.md §8): a ONE importer polls.  A lama importer that subscribed
        # (docs/chum-fastpath.md) gets a NOTIFY request when roots became accessible to it.
        self._now = now
        if self._finished or self._exporter is None or self._exporter_done:
            return
        if self._exporter.notify_closure:
            # what our importer received from the peer, the peer holds (with its closure): a
            # NOTIFY for those roots (our import made them accessible) needs no closure
            objs, ids = self._log["BtoAObjects"], self._log["BtoAIdObjects"]
            self._exporter.known.update(objs[self._held[0]:])
            self._exporter.known.update(ids[self._held[1]:])
            self._held = (len(objs), len(ids))
        try:
            fresh = self._exporter.changed_roots()
        except LamaError as e:
            self._error(e.code, f"computing new roots: {e}", False)
            return
        if fresh is not None:
            rid = self._next_id
            self._next_id += 1
            self._stats["requests_sent"] += 1
            self._notify_ids.add(rid)
            self._emit_frame(rpc.request(rid, NOTIFY, fresh))
        if self._trace:
            self._trace_exported()

    def connection_closed(self, reason: str, now: float) -> None:
        self._now = now
        if self._finished:
            return
        if self._imp is not None and self._task is not None:
            # what the pass verified and may store is kept (the next pass asks for the rest)
            self._imp.commit_ready()
        # chum.md §2.7: pending requests are rejected (WSP-ONCL0, not logged)
        for p in list(self._pending.values()):
            self._abort_writer(p)
        self._pending.clear()
        self._queue.clear()
        self._calls.clear()
        self._task = None
        self._finish(str(reason) if reason else "connection closed")

    def poll_timeout(self) -> float | None:
        if self._finished:
            return None
        ts = [p.deadline for p in self._pending.values()]
        if self._sleep_until is not None:
            ts.append(self._sleep_until)
        if self._imp is not None and self._task is not None:
            due = self._imp.commit_deadline()
            if due is not None:
                ts.append(due)
        if self._ping is None:
            if self._next_ping is not None:
                ts.append(self._next_ping)
        elif not self._ping[2]:
            ts.append(self._ping[1] + self._ping_timeout)
        return min(ts) if ts else None

    def poll_transmit(self) -> list[str | bytes]:
        out, self._out = self._out, []
        return out

    def poll_events(self) -> list[tuple[str, dict[str, Any]]]:
        ev, self._events = self._events, []
        return ev

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    # -- serving -------------------------------------------------------------------------

    def _serve(self, rid: int, service: int, args: Any) -> None:
        if not isinstance(args, list):
            args = []
        if service in EXPORTER_SERVICES and self._exporter is not None and not self._exporter_done:
            for f in self._exporter.handle(rid, service, args):
                self._emit_frame(f)
            ex = self._exporter
            if ex.receipts:
                for r in ex.receipts:
                    self._emit("receipt", r)
                ex.receipts = []
            if self._trace:
                self._trace_exported()
            if ex.done:
                self._exporter_done = True
            elif service == SUBSCRIBE and self._exporter.subscribed:
                # roots that became accessible between the roots answer and the subscription
                # raised their store event while nobody had subscribed: check once now, or
                # they would wait for the importer's next poll
                self.store_changed(self._now)
        elif service == NEW_ACCESSIBLE_ROOT_EVENT and self._imp is not None and not self._importer_done:
            self._emit_frame(rpc.data_response(rid, rpc.UNDEF))  # chum.md §4.8: only logged
        elif service == NOTIFY and self._imp is not None and not self._importer_done:
            self._emit_frame(rpc.data_response(rid, rpc.UNDEF))
            # "notify-roots": the new roots ride on the NOTIFY
            self._imp.notified(args[0] if args else None)
            if self._sleep_until is not None and not self._imp.persisting:  # poll now, not at the next interval
                self._sleep_until = None
                self._advance(None)
            else:
                self._notified = True
        else:
            self._emit_frame(rpc.unknown_service(rid, service))

    def _trace_exported(self) -> None:
        """docs/tracing.md §4: one ``exported`` event for what the exporter announced (roots
        answers, NOTIFY roots) and served (objects, ID objects) since the last one."""
        ex = self._exporter
        if ex is None:
            return
        roots = ex.announced or []
        objs = self._log["AtoBObjects"]
        ids = self._log["AtoBIdObjects"]
        if not roots and len(objs) == self._traced_objects and len(ids) == self._traced_id_objects:
            return
        served = objs[self._traced_objects:] + ids[self._traced_id_objects:]
        self._traced_objects, self._traced_id_objects = len(objs), len(ids)
        ex.announced = []
        self._emit("exported", {"roots": roots, "objects": served, "probed": ex.probed})

    def _exporter_error(self, code: str, message: str) -> None:
        self._error(code, message, False)

    # -- requests --------------------------------------------------------------------------

    def _emit_frame(self, f: str | bytes) -> None:
        self._stats["bytes_sent"] += len(f)
        self._out.append(f)

    def _send(self, p: _Pending) -> None:
        p.rid = self._next_id
        self._next_id += 1
        p.deadline = self._now + self._request_timeout
        p.mode = None
        p.encoding = None
        self._pending[p.rid] = p
        self._stats["requests_sent"] += 1
        self._emit_frame(rpc.request(p.rid, p.req.service, p.req.args))

    def _dispatch(self) -> None:
        while self._queue and len(self._pending) < self._window:
            self._send(self._queue.popleft())

    def _deliver(self, p: _Pending, outcome: Outcome) -> None:
        seq, i = p.slot
        call = next((c for c in self._calls if c.seq == seq), None)
        if call is None or i >= len(call.results) or call.results[i] is not None:
            return
        call.results[i] = outcome
        call.left -= 1
        if self._calls[0].left == 0:
            self._advance(self._calls.popleft().results)

    def _advance(self, value: Any) -> None:
        """Run the importer until it waits for answers or time."""
        while self._task is not None and not self._finished:
            if self._imp is not None:
                self._imp.now = self._now
            try:
                op = self._task.send(value)
            except StopIteration:
                self._task = None
                self._importer_done = True
                break
            except Fatal as e:
                if self._imp is not None:
                    # what the pass verified before the fatal answer is kept
                    self._imp.commit_ready()
                self._task = None
                self._importer_done = True
                self._fatal(e.code, str(e))
                return
            if isinstance(op, Sleep) and op.seconds == 0:
                # a yield to the driver (events out first): woken at once by handle_timeout,
                # keeping _notified for the sleep after it
                self._sleep_until = self._now
                return
            if isinstance(op, Sleep):
                if self._notified:
                    self._notified = False
                    value = None
                    continue
                self._sleep_until = self._now + op.seconds
                return
            calls = op.calls if isinstance(op, Calls) else [op.reqs]
            for reqs in calls:
                seq = self._next_call
                self._next_call += 1
                self._calls.append(_CallState(seq, len(reqs)))
                for i, req in enumerate(reqs):
                    self._queue.append(_Pending(req, (seq, i)))
            self._dispatch()
            if self._calls and self._calls[0].left == 0:
                # an empty call, with nothing before it: resumed at once
                value = self._calls.popleft().results
                continue
            return
        self._check_done()

    # -- responses ---------------------------------------------------------------------------

    def _response(self, m: dict[str, Any]) -> None:
        rid = m["responseId"]
        p = self._pending.get(rid)
        if p is None and rid in self._notify_ids:
            self._notify_ids.discard(rid)  # the answer to our NOTIFY carries nothing
            return
        if p is None and self._ping is not None and rid == self._ping[0]:
            # any answer (8, or an error) is the round trip
            sent = self._ping[1]
            self._ping = None
            self._emit("ping", {"rtt": max(0.0, self._now - sent), "waiting": 0.0})
            if self._next_ping is not None and self._now >= self._next_ping:
                self._ping_tick(self._now)
            return
        if p is None:
            # chum.md §2.1: logged and dropped (also a late answer to a retried request)
            self._error("LAMA-CHUM-FRAME", f"dropped a {m['type']} response for unknown "
                        f"request {rid}", False)
            return
        t = m["type"]
        if t == "data":
            if p.req.stream is not None:
                self._fail(p, "CIEC-FBL1", "a BLOB request was answered without a stream")
            else:
                self._done(p, Outcome(True, m.get("data")))
        elif t == "error":
            err = m.get("error")
            if not isinstance(err, dict):
                err = {"message": str(err)}
            c, t2 = err.get("code"), err.get("message")
            code = c if isinstance(c, str) else "WSRQ-JRMH1"
            message = t2 if isinstance(t2, str) else repr(err)[:300]
            self._fail(p, code, message)
        elif t == "stream":
            if p.req.stream is None:
                self._fail(p, "LAMA-CHUM-FRAME", "a stream answer to a request for data")
                return
            if p.mode == "binary":
                self._stream_write_failed(p, "text chunk in a binary stream")
                return
            if p.mode is None:
                p.mode = "text"
                p.encoding = m.get("encoding")  # chum.md §2.6: from the first chunk only
            chunk = m.get("chunk")
            if not isinstance(chunk, str):
                self._stream_write_failed(p, "a stream chunk without text")
                return
            if p.encoding == "utf8":
                data = chunk.encode("utf-8", "surrogatepass")
            elif p.encoding == "base64":
                try:
                    data = base64.b64decode(chunk, validate=True)
                except (binascii.Error, ValueError):
                    self._stream_write_failed(p, "a base64 chunk that does not decode")
                    return
            else:
                self._stream_write_failed(p, f"unknown stream encoding {p.encoding!r}")
                return
            self._write(p, data)
        elif t == "stream-end":
            if p.req.stream is None:
                self._fail(p, "LAMA-CHUM-FRAME", "a stream end for a request for data")
                return
            self._finish_stream(p)
        elif t == "stream-error":
            self._fail(p, "WSRQ-SEH1", f"the sender failed while streaming: {m.get('error')}")

    def _writer(self, p: _Pending) -> Any:
        if p.writer is None:
            p.writer = self._store.blob_writer(clob=p.req.stream == "clob")
        return p.writer

    def _write(self, p: _Pending, data: bytes) -> None:
        p.deadline = self._now + self._request_timeout  # a stream that progresses is alive
        try:
            self._writer(p).write(data)
        except LamaError as e:
            self._stream_write_failed(p, str(e))

    def _stream_write_failed(self, p: _Pending, why: str) -> None:
        # chum.md §2.6 receiver-side failure: tell the sender, drop the rest, fail locally
        self._emit_frame(rpc.write_stream_error(p.rid))
        self._fail(p, "LAMA-CHUM-STREAM", f"stream of {p.req.args[0]} refused: {why}")

    def _finish_stream(self, p: _Pending) -> None:
        expected = p.req.args[0]
        try:
            h, status = self._writer(p).finish(expected)
        except HashMismatchError as e:
            p.writer = None
            self._fail(p, "CIEC-FBL2", f"the stream for {expected} does not hash to it ({e})")
            return
        except LamaError as e:
            p.writer = None
            self._fail(p, e.code, f"the stream for {expected} could not be stored: {e}")
            return
        p.writer = None
        self._done(p, Outcome(True, {"hash": h, "status": status}))

    def _abort_writer(self, p: _Pending) -> None:
        if p.writer is not None:
            try:
                p.writer.abort()
            except LamaError:
                pass
            p.writer = None

    def _done(self, p: _Pending, outcome: Outcome) -> None:
        self._pending.pop(p.rid, None)
        self._deliver(p, outcome)
        self._dispatch()

    def _fail(self, p: _Pending, code: str, message: str) -> None:
        self._abort_writer(p)
        self._done(p, Outcome(False, code=code, message=message))

    # -- events, errors, end ---------------------------------------------------------------

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self._events.append((kind, data))

    def _error(self, code: str, message: str, fatal: bool) -> None:
        text = message if message.startswith(code + ":") else f"{code}: {message}"
        self._stats["errors"] += 1
        if not code.startswith("WSP-ONCL"):  # chum.md §6.5: not put into the Chum log
            self._errors.append(text)
        self._emit("error", {"code": code, "message": text, "fatal": fatal})

    def _fatal(self, code: str, message: str) -> None:
        self._error(code, message, True)
        if self._imp is not None and self._task is not None:
            self._imp.commit_ready()  # as connection_closed
        self._task = None
        for p in list(self._pending.values()):
            self._abort_writer(p)
        self._pending.clear()
        self._queue.clear()
        self._calls.clear()
        self._finish(message if message.startswith(code) else f"{code}: {message}")

    def _check_done(self) -> None:
        if not self._finished and self._started and self._importer_done and self._exporter_done:
            self._finish("chum finished")

    def _finish(self, reason: str) -> None:
        if self._finished:
            return
        self._finished = True
        self._close_reason = reason
        self._sleep_until = None
        self._ping = None
        self._next_ping = None
        log: dict[str, Any] = {k: list(v) for k, v in self._log.items()}
        log["errors"] = list(self._errors)
        log["statistics"] = {"requestsSentTotal": self._stats["requests_sent"],
                             "requestsReceivedTotal": self._stats["requests_received"],
                             "requestsReceivedInvalid": self._stats["requests_invalid"]}
        self._emit("finished", {"reason": reason, "log": log})
