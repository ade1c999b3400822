"""What the diagnostics page and ``/metrics`` of ``lama serve --http`` show about one running
:class:`lama.App`, gathered by observing it: the connection manager's events and health, the
chat layer's messages, the tracer's traces (docs/tracing.md, when the app has one).

The observer only reads: it subscribes to events, asks ``connection_health()`` /
``connections_info()`` and the connections' own statistics, and never writes to the store.
Its metrics live in a :class:`lama.metrics.Registry` of its own (one per app; names in
docs/metrics.md); :meth:`AppObserver.state` is the JSON the page renders.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
from typing import Any, Callable

from lama import metrics
from lama.metrics import Family, Registry

log = logging.getLogger("lama.web")

__all__ = ["AppObserver"]

RECENT_EVENTS = 100
RECENT_MESSAGES = 30
SEEN_IDS = 10_000
RATE_WINDOW = 10.0  # s: the sync rate is the objects received in the last RATE_WINDOW s


class _Sync:
    """CHUM progress with one peer (from the manager's ``sync`` events)."""

    __slots__ = ("state", "session_objects", "total_objects", "started", "updated",
                 "recent", "passes")

    def __init__(self) -> None:
        self.state = "idle"
        self.session_objects = 0
        self.total_objects = 0
        self.started: float | None = None
        self.updated: float | None = None
        self.recent: collections.deque[tuple[float, int]] = collections.deque()
        self.passes = 0

    def rate(self, now: float) -> float:
        while self.recent and self.recent[0][0] < now - RATE_WINDOW:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / RATE_WINDOW


class AppObserver:
    """Observes ``app`` from :meth:`start` to :meth:`close` (see the module doc).
    ``on_change`` callbacks run (on the loop) after anything the page shows changed."""

    def __init__(self, app: Any, registry: Registry | None = None) -> None:
        self.app = app
        self.registry = registry or Registry()
        self.version = 0
        self.started = time.time()
        self._changed = asyncio.Event()
        self._unsub: list[Callable[[], Any]] = []
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_EVENTS)
        self._messages: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_MESSAGES)
        self._sync: dict[str, _Sync] = {}          # person id (or instance key) -> progress
        self._counts: dict[str, dict[str, int]] = {}   # topic id -> sent/received this run
        self._history_len: dict[str, int] = {}     # topic id -> messages stored (cached)
        # ids already counted (a message is reported once; bounded: the newest SEEN_IDS)
        self._seen_messages: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._names: dict[str, str] = {}
        self._names_read = -math.inf
        # bytes of connections: live ones read at scrape time, closed ones added up once
        self._conn_last: dict[Any, tuple[int, int]] = {}
        self._bytes_closed = [0, 0]
        self._delivered: collections.OrderedDict[str, None] = collections.OrderedDict()
        r = self.registry
        self.m_events = r.counter("lama_events_total", "Events of the connection manager and "
                                  "the chat layer, by kind.", ["kind"])
        self.m_conn_opened = r.counter(
            "lama_connections_opened_total", "Connections established (identity exchange "
            "done), by group and by who dialled.", ["group", "direction"])
        self.m_conn_closed = r.counter("lama_connections_closed_total",
                                       "Connections that ended, by group.", ["group"])
        self.m_sync_objects = r.counter(
            "lama_sync_objects_received_total", "Objects imported by CHUM from peers.")
        self.m_sync_passes = r.counter(
            "lama_sync_passes_total", "Completed CHUM synchronisation passes (full_sync).")
        self.m_messages = r.counter("lama_messages_total", "Chat messages posted here (out) "
                                    "or received from peers (in).", ["direction"])
        self.m_latency = r.histogram(
            "lama_message_delivery_seconds",
            "Delivery latency of chat messages: in = creation at the sender to visible here "
            "(the two clocks), out = creation here to the peer's confirmation (tracing).",
            ["direction"])
        r.gauge("lama_connections", "Live connections now, by group.", ["group"],
                fn=self._live_by_group)
        r.gauge("lama_peers", "Known peers (enabled endpoints).",
                fn=lambda: self._health()["total"])
        r.gauge("lama_peers_connected", "Peers with a live CHUM connection.",
                fn=lambda: self._health()["active"])
        r.gauge("lama_online", "1 while registered at the comm server.",
                fn=lambda: 1 if self.app.manager.online else 0)
        r.gauge("lama_sync_objects_per_second",
                f"Objects imported per second over the last {RATE_WINDOW:g} s.",
                fn=self._rate)
        r.gauge("lama_contacts", "Contacts.", fn=lambda: len(self._contacts()))
        r.gauge("lama_uptime_seconds", "Seconds since the app started.",
                fn=lambda: time.time() - (self.app.started_at or self.started))
        r.collector(self._bytes_families)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        app = self.app
        self._unsub.append(app.manager.subscribe(self._on_manager_event))
        self._unsub.append(app.on_message(self._on_message))
        on_trace = getattr(app, "on_trace", None)
        if callable(on_trace) and getattr(app, "tracer", None) is not None:
            self._unsub.append(on_trace(self._on_trace))

    def close(self) -> None:
        for u in self._unsub:
            with contextlib.suppress(Exception):
                u()
        self._unsub.clear()
        self._touch()

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()

    async def wait_change(self, version: int, timeout: float) -> int:
        """Wait until the version is past ``version`` (or ``timeout`` s); the new version."""
        if self.version == version:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    # ------------------------------------------------------------------ events

    def _person_of(self, data: dict[str, Any]) -> str | None:
        person = data.get("person") or data.get("remote_person")
        if not person and data.get("peer"):
            with contextlib.suppress(Exception):
                for ep in self.app.manager.known_endpoints():
                    if ep.remote_key.hex() == data["peer"]:
                        return str(ep.person_id)
        return str(person) if person else None

    def _on_manager_event(self, kind: str, data: dict[str, Any]) -> None:
        self.m_events.inc(kind=kind)
        if kind.startswith("chum_"):
            # a CHUM session's own events (receipts, exports: docs/tracing.md §4), one per
            # pass: counted only; the page shows their effect through the traces
            return
        now = time.time()
        if kind in ("connection_up", "connection_down"):
            self._sample_bytes()  # a connection that closes before the next scrape counts too
        person = self._person_of(data)
        if kind == "connection_up":
            self.m_conn_opened.inc(group=data.get("group") or "?",
                                   direction="out" if data.get("initiator") else "in")
        elif kind == "connection_down":
            self.m_conn_closed.inc(group=data.get("group") or "?")
        elif kind == "sync" and person:
            s = self._sync.setdefault(person, _Sync())
            state = data.get("state")
            s.updated = now
            if state == "started":
                s.state, s.session_objects, s.started = "syncing", 0, now
            elif state == "imported":
                n = int(data.get("objects") or 0)
                s.session_objects += n
                s.total_objects += n
                s.recent.append((now, n))
                s.state = "importing" if s.state != "synced" else s.state
                self.m_sync_objects.inc(n)
            elif state == "full_sync":
                s.state = "synced"
                s.passes += 1
                self.m_sync_passes.inc()
        if kind != "connections_changed":
            self._events.append({"time": now, "kind": kind, "person": person,
                                 "name": self._name(person),
                                 "detail": _event_detail(kind, data)})
        self._touch()

    def _on_message(self, m: Any) -> None:
        mid = str(m.id)
        if mid in self._seen_messages:
            return
        _remember(self._seen_messages, mid)
        direction = "out" if m.outgoing else "in"
        self.m_events.inc(kind="message")
        self.m_messages.inc(direction=direction)
        if not m.outgoing and isinstance(m.timestamp, (int, float)):
            self.m_latency.observe(max(0.0, time.time() - m.timestamp / 1000.0), direction="in")
        topic = str(m.topic_id)
        c = self._counts.setdefault(topic, {"sent": 0, "received": 0})
        c["sent" if m.outgoing else "received"] += 1
        if topic in self._history_len:
            self._history_len[topic] += 1
        self._messages.append({"id": mid, "topic_id": topic, "outgoing": bool(m.outgoing),
                               "sender_name": m.sender_name, "text": m.text[:200],
                               "timestamp": m.timestamp, "seen": time.time(),
                               "attachments": len(m.attachments)})
        self._events.append({"time": time.time(), "kind": "message", "person": m.sender,
                             "name": m.sender_name,
                             "detail": ("sent: " if m.outgoing else "received: ") + m.text[:80]})
        self._touch()

    def _on_trace(self, t: Any) -> None:
        with contextlib.suppress(Exception):
            d = t.to_dict() if hasattr(t, "to_dict") else dict(t)
            if d.get("direction") == "out" and d.get("status") == "delivered" \
                    and d["message_id"] not in self._delivered:
                _remember(self._delivered, d["message_id"])
                stored = [s["at"] for s in d.get("steps", []) if s.get("step") == "stored"]
                if stored:
                    self.m_latency.observe(max(0.0, (max(stored) - d["created"]) / 1000.0),
                                           direction="out")
        self._touch()

    # ------------------------------------------------------------------ sampling

    def _health(self) -> dict[str, Any]:
        return dict(self.app.manager.connection_health())

    def _contacts(self) -> list[Any]:
        try:
            return list(self.app.contacts())
        except Exception:
            return []

    def _name(self, person: str | None) -> str | None:
        """The contact name of ``person``, from a cache refreshed at most once a second on a
        miss (the contact list is read from the store; events come at sync speed)."""
        if not person:
            return None
        if person not in self._names and time.monotonic() - self._names_read > 1.0:
            self._names = {str(c.person_id): str(c.name) for c in self._contacts()}
            self._names_read = time.monotonic()
        return self._names.get(person)

    def _live_conns(self) -> list[Any]:
        # the manager's set of the connections it holds (read only; conn §2.7 statistics)
        return list(getattr(self.app.manager, "_conns", ()))

    def _live_by_group(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {(g,): 0 for g in ("chum", "pairing", "debug")}
        for c in self._live_conns():
            if not getattr(c, "closed", False):
                g = str(getattr(c, "group", "?"))
                out[(g,)] = out.get((g,), 0) + 1
        return out

    def _sample_bytes(self) -> tuple[int, int]:
        """Wire bytes sent and received by every connection of this run: closed connections
        are added once (their last statistics), live ones as they are now."""
        live = self._live_conns()
        for c in live:
            self._conn_last.setdefault(c, (0, 0))
        sent = recv = 0
        for c in list(self._conn_last):
            with contextlib.suppress(Exception):
                st = c.conn.stats()
                self._conn_last[c] = (int(st.get("bytes_sent") or 0),
                                      int(st.get("bytes_received") or 0))
            if c not in live or getattr(c, "closed", False):
                s, r = self._conn_last.pop(c)
                self._bytes_closed[0] += s
                self._bytes_closed[1] += r
            else:
                s, r = self._conn_last[c]
                sent += s
                recv += r
        return self._bytes_closed[0] + sent, self._bytes_closed[1] + recv

    def _bytes_families(self) -> list[Family]:
        sent, recv = self._sample_bytes()
        return [Family("lama_connection_bytes_total", "counter",
                       "Wire bytes of the encrypted connections (handshake included).",
                       [("", {"direction": "sent"}, sent),
                        ("", {"direction": "received"}, recv)])]

    def _rate(self) -> float:
        now = time.time()
        return sum(s.rate(now) for s in self._sync.values())

    # ------------------------------------------------------------------ the page's data

    def _message_total(self, topic: str) -> int | None:
        return self._history_len.get(topic)

    def _count_histories(self, topics: list[str]) -> dict[str, int]:
        out = {}
        for topic in topics:
            with contextlib.suppress(Exception):
                out[topic] = len(self.app.history(topic))
        return out

    def traces(self, limit: int = 30) -> list[dict[str, Any]] | None:
        """Recent traces as dicts (docs/tracing.md §1), None when the app has no tracer."""
        traces = getattr(self.app, "traces", None)
        if not callable(traces) or getattr(self.app, "tracer", None) is None:
            return None
        try:
            return [t.to_dict() for t in traces(limit=limit)]
        except Exception as e:  # the page shows what failed rather than nothing
            log.warning("traces unavailable: %s", e)
            return None

    async def state(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-able data (times in epoch seconds unless named
        ``*_ms``). Runs on the loop (the manager's state is the loop's); only the first count
        of a conversation's messages reads the store in a worker thread."""
        missing = [str(c.topic_id) for c in self._contacts()
                   if str(c.topic_id) not in self._history_len]
        if missing:
            for topic, n in (await asyncio.to_thread(self._count_histories, missing)).items():
                # a message that arrived while counting is in the count and was added by
                # _on_message only if the topic had a count already: it had not
                self._history_len.setdefault(topic, n)
        return self._state()

    def _state(self) -> dict[str, Any]:
        from lama._core import CORE_NAME

        app = self.app
        now = time.time()
        st = app.status()
        contacts = self._contacts()
        peers_by_person: dict[str, list[dict[str, Any]]] = {}
        for p in st["peers"]:
            peers_by_person.setdefault(p["person_id"], []).append(p)
        out_contacts = []
        for c in contacts:
            pid = str(c.person_id)
            ps = peers_by_person.get(pid, [])
            counts = self._counts.get(str(c.topic_id), {"sent": 0, "received": 0})
            out_contacts.append({
                "person_id": pid, "name": c.name, "email": c.email, "topic_id": c.topic_id,
                "instances": list(c.instances),
                "connected": any(p["connected"] for p in ps),
                "messages": self._message_total(str(c.topic_id)),
                "sent": counts["sent"], "received": counts["received"]})
        names = {str(c.person_id): c.name for c in contacts}
        conns = []
        for info in app.manager.connections_info():
            log_ = info.get("connectionStatisticsLog") or []
            cur = log_[-1] if info.get("isConnected") and log_ else {}
            key = info.get("remotePublicKey")
            health: dict[str, Any] = next((p for p in st["peers"] if p["key"] == key), {})
            conns.append({
                "person_id": info.get("remotePersonId"),
                "name": names.get(str(info.get("remotePersonId"))),
                "instance_id": info.get("remoteInstanceId"),
                "group": info.get("protocolName"), "connected": info.get("isConnected"),
                "enabled": info.get("enabled"), "catch_all": info.get("isCatchAll"),
                "routes": [r.get("name") for r in info.get("routes") or [] if r.get("active")],
                "since": health.get("since"), "latency": health.get("latency"),
                "last_sync": health.get("last_sync"),
                "last_message": health.get("last_message"),
                "reconnect_attempts": health.get("reconnect_attempts"),
                "last_error": health.get("last_error"),
                "bytes_sent": cur.get("bytes_sent"), "bytes_received": cur.get("bytes_received"),
                "initiator": cur.get("initiator"),
                "closed_connections": max(0, len(log_) - (1 if cur else 0)),
                "last_close_reason": next((e.get("close_reason") for e in reversed(log_)
                                           if e is not cur and e.get("close_reason")), None),
            })
        sync = []
        for person, s in self._sync.items():
            sync.append({"person_id": person, "name": names.get(person), "state": s.state,
                         "session_objects": s.session_objects,
                         "total_objects": s.total_objects, "passes": s.passes,
                         "rate": round(s.rate(now), 2), "started": s.started,
                         "updated": s.updated})
        sent, recv = self._sample_bytes()
        traces = self.traces()
        return {
            "now": now, "version": self.version, "core": CORE_NAME, "pid": os.getpid(),
            "identity": {k: st[k] for k in ("person_id", "instance_id", "email", "name",
                                            "instance_name", "comm_server", "online",
                                            "started_at")},
            "health": {k: st[k] for k in ("status", "total", "active", "average_latency",
                                          "last_sync")},
            "contacts": out_contacts, "connections": conns, "sync": sync,
            "messages": list(self._messages)[::-1],
            "traces": traces, "tracing": traces is not None,
            "events": list(self._events)[::-1][:50],
            "totals": {"messages_out": self.m_messages.value(direction="out"),
                       "messages_in": self.m_messages.value(direction="in"),
                       "sync_objects": self.m_sync_objects.value(),
                       "bytes_sent": sent, "bytes_received": recv,
                       "sync_rate": round(self._rate(), 2)},
        }

    def metrics_text(self) -> str:
        """This app's families, then the process-wide ones (lama.metrics.REGISTRY)."""
        return metrics.render(self.registry, metrics.REGISTRY)


def _remember(seen: collections.OrderedDict[str, None], key: str) -> None:
    seen[key] = None
    if len(seen) > SEEN_IDS:
        seen.popitem(last=False)


def _event_detail(kind: str, data: dict[str, Any]) -> str:
    if kind == "connection_up":
        return f"{data.get('group')} connection up ({'dialled' if data.get('initiator') else 'accepted'})"
    if kind == "connection_down":
        return f"{data.get('group')} connection closed: {data.get('reason') or ''}"
    if kind == "sync":
        if data.get("state") == "imported":
            return f"imported {data.get('objects')} objects"
        return f"sync {data.get('state')}"
    if kind == "online_state":
        return "online at the comm server" if data.get("online") else "offline"
    if kind == "pairing_success":
        return "paired"
    if kind == "error":
        return str(data.get("message") or "")
    return ", ".join(f"{k}={v}" for k, v in data.items() if isinstance(v, (str, int, float)))[:200]
