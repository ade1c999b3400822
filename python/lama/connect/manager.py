"""The connection manager (conn §7, docs/connections.md §3 "Connection manager").

One :class:`ConnectionManager` per open :class:`lama.identity.instance.Instance`.  It

* listens for incoming encrypted connections for the local instance key: through the comm
  server (a core ``CommListener`` keeping spare connections, conn §3.2/§3.4) and optionally on
  a direct WebSocket listener (conn §4.2);
* dispatches each established connection by its connection group (conn §5.1, §7.3): ``chum``
  for known peers (unknown ones only with ``accept_unknown_persons``), ``pairing`` when
  ``allow_pairing`` (the token decides, conn §6.3), ``debug`` when ``allow_debug_requests``;
  anything else is closed with the reference's ``I do not want to communicate with you. Go
  Away!``;
* keeps one persistent outgoing ``chum`` connection to every known endpoint (the
  OneInstanceEndpoint objects stored by pairing, conn §6.4/§7.2), reconnecting with a
  jittered, bounded exponential backoff (conn §7.4, but faster than the reference's 5-120 s);
* keeps **exactly one** live connection per (peer, group).  The reference drops the newer of
  two connections that arrive within 2 s and otherwise replaces the old one, on each side
  independently, which can close both and flap (conn §7.4, §9.3 item 10), and its replacing
  crashes under bursts.  lama decides deterministically: of two connections that overlap
  (the second is verified less than ``duplicate_window`` after the first), the one *initiated
  by the side with the smaller instance public key* stays; both sides apply the same rule and
  end on the same connection.  A connection arriving after the window replaces the old one
  (the peer only dials when it has no live connection, so the old one is dead on its side).
  Every close of a losing connection is an ordinary close with a reason; nothing raises;
* runs CHUM (:func:`lama.chum.sync`, keep-running, fast path negotiated) on every established
  ``chum`` connection.  The ``synchronisation`` exchange of conn §5.5 comes first; the local
  session is created (its services exist) before the peer's first request is read, and the
  first local request goes out only after the peer's ``synchronisation`` arrived plus a short
  gap (``sync_start_gap``), never in the same burst (the reference drops such a request);
* avoids the refused first CHUM connection after pairing (conn §6.3 "Race after pairing"):
  as acceptor it looks the peer up *after* the identity exchange and, if a pairing with that
  peer is still being recorded, waits for it to finish; as pairing initiator it dials only
  after the pairing exchange completed.  A refused attempt is retried after a short delay
  (``refused_retry_delay``), not after the full backoff (conn §5.5 "observed").

Events (:meth:`ConnectionManager.subscribe`): ``("connections_changed", {...})``,
``("connection_up", {...})``, ``("connection_down", {...})``, ``("pairing_success",
{...})``, ``("online_state", {"online": bool})``, ``("sync", {...})`` (CHUM progress),
``("health", {"peer", "person", "responding", ...})`` (a peer stopped or started answering
pings) and ``("error", {...})``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from .._core import core
from ..errors import (AccessDeniedError, InvalidArgumentError, LamaError, NotFoundError, StoreError,
                      TransportError)
from . import contacts

__all__ = [
    "ConnectionManager",
    "ManagerConfig",
    "Endpoint",
    "PairingOutcome",
    "ZERO_HASH",
    "GO_AWAY",
    "DUPLICATE_DROPPED",
    "REPLACED",
]

# what the later scans take from the typed feed: endpoints, and the Person ID objects that the
# scan cache (SCAN_CACHE_FILE) keeps for the next first scan
_ENDPOINT_TYPES = ("OneInstanceEndpoint", "Person")
log = logging.getLogger("lama.connect.manager")

ZERO_HASH = "0" * 64
# close reasons in the reference's words (conn §7.3, §7.5)
GO_AWAY = "I do not want to communicate with you. Go Away!"
_TRACED = frozenset({"exported", "receipt", "receipt_sent", "imported", "error"})
DUPLICATE_DROPPED = "Duplicate connection - dropped new connection"
REPLACED = "New connection replaced old one"
ROUTE_DISABLED = "Route is disabled"
ROUTE_STOPPED = "Corresponding route was stopped"
UNKNOWN_PEER = "Error: Unable to start chum because you are unknown"
SHUTDOWN = "Connection manager shut down"
# lama: the peer is a device its person removed (docs/connections.md §3.5 "Removing a device")
DEVICE_REMOVED = "Error: this device was removed by its person"
# lama's close of a connection whose peer stopped answering: a CHUM ping unanswered and no
# message received for close_unresponsive_after seconds (docs/connections.md §3.3 "Health")
UNRESPONSIVE = "Ping: the peer did not answer for {:g} s"

GROUPS = ("chum", "pairing", "debug")
_DEVICE_GROUP = "lama-device"  # lama.connect.device.DEVICE_GROUP (lama to lama only)
QUICK_RETRIES = 3  # refusals retried after refused_retry_delay before the backoff applies
SHORT_LIVED = 5.0  # s: a connection ending sooner counts towards the backoff
# the manager's persisted settings, in the instance directory (docs/connections.md §3.3)
SETTINGS_FILE = "connections.json"
# the first scan's cache, in the instance directory: the Person ID objects of the change feed
# up to a position (docs/connections.md §3.3 "Endpoint scan cache")
SCAN_CACHE_FILE = "endpoint-scan.json"
SCAN_CACHE_EVERY = 20_000  # feed entries: the cache is rewritten at least this often
# s: right after a pairing both sides know the other is about to dial; the side with the larger
# instance key waits this long for the other's connection before dialling itself, so that
# normally one connection is made, not two that the duplicate rule has to sort out
PAIRING_YIELD = 1.0
# endpoints without a proof (docs/connections.md §3.5) the manager looks at again when more
# objects arrive; beyond this many the oldest are forgotten (a peer shipping forged endpoints
# must not make every scan longer)
MAX_UNPROVEN = 64


@dataclass
class ManagerConfig:
    """Options of the connection manager: those of ConnectionsModel (conn §7.1) with the Lama
    app's values where it differs (token lifetime 15 min), plus lama's own timing knobs.

    Times are seconds (the reference's milliseconds / 1000)."""

    comm_server_url: str | None = "ws://localhost:8000"  # listen here; put into invitations
                                          # (several, comma-separated: nodes of one cluster,
                                          # docs/cluster.md §5; the first is put into them)
    failover_after: float = 2.0           # a comm-server listener not listening this long moves
                                          # to the next URL of comm_server_url
    accept_incoming: bool = True          # False: no listener at all (conn §7.1)
    accept_unknown_instances: bool = False  # only widens the catch-all, as in the reference
    accept_unknown_persons: bool = False  # allow `chum` with peers that are not contacts
    allow_pairing: bool = True
    allow_debug_requests: bool = False    # reference: true; lama only answers what is granted
    pairing_token_lifetime: float = 15 * 60.0  # one.leute / Lama app (ConnectionsModel: 60 s)
    establish_outgoing: bool = True       # outgoing `chum` routes to every known endpoint
    retry_attempts: int = 0               # failed dials per peer before giving up; 0 = forever
    retry_delay: float = 1.0              # first backoff delay; doubled per failure, jittered
    retry_max_delay: float = 120.0        # backoff bound (the reference's last step)
    reconnect_delay: float = 0.5          # after a live connection closed (reference 5-10 s)
    refused_retry_delay: float = 0.3      # after "unknown"/duplicate refusals (conn §5.5)
    duplicate_window: float = 2.0         # overlapping connections: deterministic choice
    health_checks: bool = True            # sample statistics, ping every CHUM connection
    health_check_interval: float = 5.0    # ... this often (the ping: ChumSession.ping_interval)
    ping_timeout: float = 10.0            # a ping unanswered this long: peer not responding
    close_unresponsive_after: float = 60.0  # a ping unanswered this long while no message
                                          # (keepalives aside) arrived for as long closes the
                                          # connection (UNRESPONSIVE) and the peer is redialled
                                          # with the backoff: a peer that keeps its socket
                                          # alive but whose CHUM is deaf; 0 = only report it.
                                          # Longer than dead_after: a silent socket is the
                                          # keepalive's (docs/connections.md §3.3 "Health")
    sync_interval: float = 5.0            # CHUM keep-running roots poll (ChumSession.poll_interval)
    sync_start_gap: float = 0.05          # gap between the peer's `synchronisation` and our
                                          # first CHUM request (conn §5.5 observed)
    fast_path: bool = True                # negotiate lama's CHUM extensions (docs/chum-fastpath.md)
    no_import: bool = False               # chum: disable the importer (conn §7.1 noImport)
    no_export: bool = False               # chum: disable the exporter (noExport)
    open_timeout: float = 5.0             # opening the WebSocket of an outgoing connection
    handshake_timeout: float = 10.0       # encrypted handshake of an incoming connection
    protocol_timeout: float = 15.0        # group/sync/identity exchange (conn §5.1-5.4)
    keepalive: float = 20.0               # conn §2.5
    dead_after: float = 25.0
    spares: int = 2                       # comm-server spare connections (conn §3.4)
    listener_reconnect_delay: float = 10.0
    discovery_interval: float = 2.0       # how often the store is scanned for new endpoints
    pairing_wait: float = 5.0             # acceptor: wait this long for a pairing in progress
    direct_host: str | None = None        # optional direct WebSocket listener (conn §4.2)
    direct_port: int | None = None
    diagnostics: bool = False             # log every connection step at INFO
    event_logging: bool = False           # log every emitted event at INFO
    trace: bool = False                   # docs/tracing.md: CHUM `trace` option, chum_* events

    def __post_init__(self) -> None:
        for name in ("pairing_token_lifetime", "retry_delay", "retry_max_delay",
                     "reconnect_delay", "refused_retry_delay", "duplicate_window",
                     "health_check_interval", "ping_timeout", "close_unresponsive_after",
                     "sync_interval", "sync_start_gap",
                     "open_timeout", "handshake_timeout", "protocol_timeout", "keepalive",
                     "dead_after", "listener_reconnect_delay", "discovery_interval",
                     "pairing_wait", "failover_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
                raise InvalidArgumentError(f"LAMA-ARG: {name} must be a number >= 0, not {v!r}")
        if self.pairing_token_lifetime <= 0:
            raise InvalidArgumentError("LAMA-ARG: pairing_token_lifetime must be > 0")
        for name in ("retry_attempts", "spares"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgumentError(f"LAMA-ARG: {name} must be an int >= 0, not {v!r}")
        if (self.direct_host is None) != (self.direct_port is None):
            raise InvalidArgumentError(
                "LAMA-ARG: direct_host and direct_port go together (both or neither)")
        if self.comm_server_url is not None and not isinstance(self.comm_server_url, str):
            raise InvalidArgumentError("LAMA-ARG: comm_server_url must be a str or None")


@dataclass
class Endpoint:
    """A remote instance we know (a OneInstanceEndpoint and its Keys, conn §6.4 item 6)."""

    remote_key: bytes          # the remote instance's public encryption key (route key R)
    person_id: str
    instance_id: str
    person_public_key: bytes | None
    url: str | None
    endpoint_hash: str
    seq: int = 0               # store sequence of the endpoint object (newest url wins)


@dataclass
class PairingOutcome:
    """What a finished pairing reports (the arguments of the reference's onPairingSuccess)."""

    initiated_locally: bool
    local_person: str
    local_instance: str
    remote_person: str
    remote_instance: str
    remote_key: bytes
    token: str
    details: Any = None


@dataclass(eq=False)
class _Conn:
    """One established encrypted connection the manager holds."""

    conn: Any
    group: str
    initiator: bool
    remote_key: bytes
    opened: float = field(default_factory=time.time)
    claimed_at: float = 0.0                 # monotonic time it got its slot
    remote_person: str | None = None
    remote_instance: str | None = None
    remote_instance_name: str | None = None
    latency: float | None = None            # seconds, the last measured round trip
    latency_at: float | None = None         # epoch seconds of that measurement
    pings: int = 0                          # answered pings (docs/chum-session.md "Ping")
    ping_waiting: float | None = None       # monotonic send time of a ping overdue now
    last_message: float | None = None       # epoch seconds of the last input seen
    active_at: float | None = None          # monotonic time a message last arrived
    sampled_at: float | None = None         # monotonic time the counters were last read
    bytes_received: int = 0
    messages_received: int = 0
    silence_task: asyncio.Task[Any] | None = None  # watches an overdue ping (UNRESPONSIVE)
    unresponsive: bool = False              # closed by the manager as not responding
    task: asyncio.Task[Any] | None = None
    closed: bool = False
    close_reason: str | None = None

    @property
    def preferred_initiator_key(self) -> bytes:
        return self.conn.local_key if self.initiator else self.remote_key


@dataclass(eq=False)
class _Peer:
    """Manager state for one remote instance key (one route group per group name)."""

    endpoint: Endpoint
    enabled: bool = True                    # the person is not disabled
    disabled_groups: set[str] = field(default_factory=set)  # route groups switched off (§7.5)
    active: dict[str, _Conn] = field(default_factory=dict)
    dial_task: asyncio.Task[Any] | None = None
    attempts: int = 0                       # failed dials since the last success
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)  # the last 20 failed dials' reasons
    short_lived: int = 0                    # connections in a row that ended within SHORT_LIVED
    unresponsive: int = 0                   # connections in a row closed as not responding
    connected_since: float | None = None
    refused: bool = False                   # the last failed dial was a refusal
    last_sync: float | None = None
    stats_log: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def allows(self, group: str) -> bool:
        """Whether the (peer, group) route group is enabled: person and group both on."""
        return self.enabled and group not in self.disabled_groups


class _RttProbe:
    """Wraps a connection for the identity steps only: the time from our first message to the
    first message received after it is one round trip (initiator: ``connection_group`` ->
    ``sync``; acceptor: ``sync`` -> the initiator's ``person_id_object``, which it sends as
    soon as it read ``sync``): the latency ``connection_health`` reports until the first CHUM
    ping of the connection is answered (``_on_ping``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.sent_at: float | None = None
        self.rtt: float | None = None

    async def send(self, msg: str | bytes) -> None:
        if self.sent_at is None:
            self.sent_at = time.monotonic()
        await self.conn.send(msg)

    async def recv(self) -> str | bytes | None:
        msg = await self.conn.recv()
        if self.rtt is None and self.sent_at is not None:
            self.rtt = time.monotonic() - self.sent_at
        return msg

    async def close(self, reason: str = "") -> None:
        await self.conn.close(reason)

    @property
    def close_reason(self) -> str | None:
        reason: str | None = self.conn.close_reason
        return reason


class _Refused(Exception):
    """A connection attempt the peer refused in a way worth a quick retry."""


class ConnectionManager:
    """Connections of one local instance (see the module doc)."""

    def __init__(self, instance: Any, config: ManagerConfig | None = None) -> None:
        self.instance = instance
        self.config = config or ManagerConfig()
        self.store = instance.store
        keys = instance.secret_keys("instance")
        self._public = bytes(instance.instance_public_key)
        self._secret = bytes(keys.encryption_secret)
        self._peers: dict[bytes, _Peer] = {}
        self._unknown: dict[tuple[bytes, str], _Conn] = {}  # catch-all connections (chum/debug)
        self._pairing_conns: set[_Conn] = set()
        # every connection the manager holds and has not closed yet, whatever its state: close()
        # closes them all, so none outlives the manager (a chum session of the Rust core does
        # not end on task cancellation, only when its connection closes)
        self._conns: set[_Conn] = set()
        self._timers: set[asyncio.Task[Any]] = set()  # loops that only sleep: cancelled at once
        self._pairing_in_progress: dict[Any, asyncio.Future[None]] = {}
        settings = self._load_settings()
        self._disabled_persons: set[str] = set(settings.get("disabledPersons", []))
        # route groups switched off with enable_connection_group, by remote instance key (hex)
        self._disabled_groups: dict[str, set[str]] = {
            k: set(v) for k, v in settings.get("disabledGroups", {}).items() if v}
        self._listeners: list[Any] = []
        self._listen_index = 0  # comm_server_urls[i] the comm-server listener registers at
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribers: list[Callable[[str, dict[str, Any]], Any]] = []
        self._started = False
        self._closing = False
        self._scan_seq = 0
        self._persons: dict[str, None] = {}  # Person ID objects of the feed up to _scan_seq
        # endpoint hash -> its feed position, for the order of an instance's several endpoints
        self._endpoint_seqs: dict[str, int] = {}
        self._cache_saved: tuple[int, int] = (0, 0)  # (position, persons) the cache file holds
        self._online = False
        self._registry: Any = None
        self._pairing_waiters: list[asyncio.Future[PairingOutcome]] = []
        self._just_paired: set[bytes] = set()  # keys of peers paired in this scan
        self.pairings: list[PairingOutcome] = []
        # the contacts (person ids) passed on to a device of my person that joins
        # (lama.connect.device); the App sets it to its chat layer's contact list
        self.device_contacts: Callable[[], Any] | None = None
        # endpoints not proven (yet) -> feed position, and Signatures known not to verify
        # (docs/connections.md §3.5)
        self._unproven: dict[str, tuple[int, tuple[Any, Any], tuple[Any, ...]]] = {}
        self._bad_signatures: set[str] = set()
        # removed devices (docs/connections.md §3.5): instance keys never dialled nor accepted,
        # and each peer's revocation certificate hash (its arrival is one store lookup)
        self._revoked_keys: set[bytes] = set()
        self._revocation_of: dict[bytes, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening (comm server and/or direct), discover known endpoints and dial them."""
        if self._started:
            return
        self._started = True
        cfg = self.config
        if cfg.accept_incoming and cfg.comm_server_url:
            try:
                await self._comm_listen()
            except (LamaError, OSError) as e:
                # the comm server may be down now and come back: keep trying in the background
                log.warning("comm server %s: %s", cfg.comm_server_url, e)
                self._timers.add(self._spawn(self._listen_retry()))
        if cfg.accept_incoming and cfg.direct_host is not None:
            listener = await core.ws_listen(cfg.direct_host, int(cfg.direct_port or 0))
            self._listeners.append(listener)
            self._spawn(self._accept_loop(listener, "direct"))
        self._publish_own_endpoint()
        self._scan_endpoints()
        self._timers.add(self._spawn(self._discovery_loop()))
        if cfg.health_checks:
            self._timers.add(self._spawn(self._health_loop()))
        if not (cfg.accept_incoming and cfg.comm_server_url):
            self._set_online(True)  # no comm server listener: always online (conn §7.1)
        else:
            self._sample()

    @property
    def comm_server_urls(self) -> list[str]:
        """The comm-server URLs of ``comm_server_url`` (several: one cluster, docs/cluster.md)."""
        return [u.strip() for u in (self.config.comm_server_url or "").split(",") if u.strip()]

    async def _comm_listen(self) -> None:
        """Register at the first comm-server URL that accepts, starting at the current one
        (docs/cluster.md §5); the last error when none does."""
        cfg = self.config
        urls = self.comm_server_urls
        assert urls
        for n in range(len(urls)):
            url = urls[(self._listen_index + n) % len(urls)]
            try:
                listener = await core.comm_listen(
                    url, self._public, self._secret, spares=cfg.spares,
                    reconnect_delay=cfg.listener_reconnect_delay)
            except (LamaError, OSError) as e:
                if n + 1 == len(urls):
                    raise
                self._diag("comm server %s: %s; trying the next", url, e)
                continue
            self._listen_index = (self._listen_index + n) % len(urls)
            break
        if self._closing:
            await listener.close()
            return
        self._listeners.append(listener)
        self._spawn(self._accept_loop(listener, "commserver"))
        if len(urls) > 1:
            self._timers.add(self._spawn(self._failover_watch(listener)))

    async def _failover_watch(self, listener: Any) -> None:
        """Move the listener to the next cluster node when it stays not-listening for
        ``failover_after`` seconds (its node died or is unreachable; docs/cluster.md §5)."""
        step = min(0.25, max(self.config.failover_after / 4, 0.01))
        down_since: float | None = None
        while not self._closing and listener in self._listeners:
            await asyncio.sleep(step)
            if listener.state == "listening":
                down_since = None
                continue
            now = time.monotonic()
            down_since = down_since if down_since is not None else now
            if now - down_since < self.config.failover_after:
                continue
            self._listeners.remove(listener)
            self._set_online(False)
            await listener.close()
            self._listen_index += 1
            self._diag("comm-server listener failing over to %s",
                       self.comm_server_urls[self._listen_index % len(self.comm_server_urls)])
            try:
                await self._comm_listen()
            except (LamaError, OSError) as e:
                self._diag("no comm server of the cluster reachable: %s", e)
                self._timers.add(self._spawn(self._listen_retry()))
            return

    def _dial_urls(self, url: str) -> list[str]:
        """``url`` first, then — when it is a node of our cluster — the other nodes."""
        urls = self.comm_server_urls
        return [url] + [u for u in urls if u != url] if url in urls else [url]

    async def _connect(self, url: str, target: bytes) -> Any:
        """``encrypted_connect`` to ``url``, failing over to the other cluster nodes on an
        error (a dead node, or a node that cannot see the listener while NATS is down)."""
        cfg = self.config
        urls = self._dial_urls(url)
        for i, u in enumerate(urls):
            try:
                return await core.encrypted_connect(
                    u, self._public, self._secret, target, open_timeout=cfg.open_timeout,
                    keepalive=cfg.keepalive, dead_after=cfg.dead_after)
            except (LamaError, OSError) as e:
                if i + 1 == len(urls):
                    raise
                self._diag("connect via %s failed (%s), trying %s", u, e, urls[i + 1])
        raise AssertionError("unreachable")

    async def _listen_retry(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.config.listener_reconnect_delay or 1.0)
            try:
                await self._comm_listen()
                return
            except (LamaError, OSError) as e:
                self._diag("comm server still unreachable: %s", e)

    async def __aenter__(self) -> ConnectionManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def direct_port(self) -> int | None:
        """The bound port of the direct listener (``direct_port=0`` picks one)."""
        for listener in self._listeners:
            port = getattr(listener, "port", None)
            if isinstance(port, int) and not hasattr(listener, "state"):
                return port
        return None

    def _publish_own_endpoint(self) -> None:
        """This instance's endpoint into my profile (where peers reach it), shared with my
        contacts (``device_contacts``) and my devices (docs/connections.md §3.5)."""
        from . import profile

        try:
            profile.publish_own_endpoint(self.instance, self.url)
            persons = list(self.device_contacts()) if self.device_contacts is not None else []
            profile.share_own_profile(self.instance, persons)
        except LamaError as e:
            log.warning("cannot publish this instance's endpoint: %s", e)

    @property
    def url(self) -> str | None:
        """Where peers reach this instance (put into invitations and into our pairing
        identity): the comm server, else the direct listener's ``ws://host:port``."""
        if self.comm_server_urls:
            return self.comm_server_urls[0]
        port = self.direct_port
        if port is not None and self.config.direct_host is not None:
            return f"ws://{self.config.direct_host}:{port}"
        return None

    async def close(self) -> None:
        """Clean shutdown: stop dialling and listening, close every connection with a reason,
        invalidate all invitations (conn §6.1), wait for the tasks to end."""
        if self._closing:
            return
        self._closing = True
        if self._registry is not None:
            with contextlib.suppress(Exception):
                self._registry.invalidate_all()
        # Order matters: a connection that completes its handshake while we close must not be
        # left open (the peer would keep it as live for good). The listeners go first (no new
        # incoming), every dial is cancelled, then every connection we hold is closed, then the
        # tasks are cancelled; connections registered meanwhile (a dial or accept that was
        # already past its last await) are closed in the loop below.
        for t in self._timers:
            t.cancel()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.close()
        tasks = set(self._tasks)
        for peer in self._peers.values():
            peer.wake.set()  # a dial loop waiting for its next attempt ends now
            if peer.dial_task is not None:
                tasks.add(peer.dial_task)
        await self._close_all()
        # First let the tasks end by themselves (accept loops see their listener closed, dial
        # loops see _closing, sessions see their connection closed): a task cancelled while it
        # awaits a core operation leaves that operation running, and its result would arrive
        # after the caller's event loop is gone. What is still running after a grace period is
        # cancelled.
        for grace, cancel in ((1.0, False), (5.0, True)):
            if cancel:
                for t in tasks | self._tasks:
                    t.cancel()
            deadline = time.monotonic() + grace
            while True:
                tasks = {t for t in tasks | self._tasks if not t.done()}
                if not tasks or time.monotonic() >= deadline:
                    break
                await asyncio.wait(tasks, timeout=0.05)
                await self._close_all()
        await self._close_all()
        for w in self._pairing_waiters:
            if not w.done():
                w.cancel()
        if self._scan_seq > self._cache_saved[0]:
            self._save_scan_cache()  # the next start reads the feed from here
        self._set_online(False)

    async def _close_all(self) -> None:
        for c in list(self._conns):
            await self._close_conn(c, SHUTDOWN)

    def _track(self, conn: Any, group: str, initiator: bool, remote_key: bytes) -> _Conn:
        """A new :class:`_Conn` for an established connection, registered for :meth:`close`."""
        c = _Conn(conn=conn, group=group, initiator=initiator, remote_key=remote_key)
        self._conns.add(c)
        return c

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # a bug in a handler must not pass silently (every expected failure is caught)
            log.error("connection manager task failed", exc_info=task.exception())

    # ------------------------------------------------------------------ events

    def subscribe(self, callback: Callable[[str, dict[str, Any]], Any]) -> Callable[[], None]:
        """Call ``callback(kind, data)`` for every event; returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _emit(self, kind: str, **data: Any) -> None:
        if self.config.event_logging or log.isEnabledFor(logging.DEBUG):
            # docs/tracing.md §7: the event and its data as fields of a structured record
            log.log(logging.INFO if self.config.event_logging else logging.DEBUG,
                    "event %s", kind, extra={"fields": {"event": kind, **{
                        k: v for k, v in data.items() if k not in ("token", "details")}}})
        for cb in list(self._subscribers):
            try:
                cb(kind, data)
            except Exception:  # a subscriber's bug must not break a connection
                log.exception("event subscriber failed")

    def _diag(self, msg: str, *args: Any) -> None:
        if self.config.diagnostics:
            log.info(msg, *args)
        else:
            log.debug(msg, *args)

    def _set_online(self, online: bool) -> None:
        if online != self._online:
            self._online = online
            self._emit("online_state", online=online)

    @property
    def online(self) -> bool:
        return self._online

    async def wait_online(self, timeout: float) -> bool:
        """Wait until the comm-server listener is registered (at most ``timeout`` s); True if
        it is (or there is none: only a direct listener or no listener at all)."""
        deadline = time.monotonic() + timeout
        while True:
            comm = [x for x in self._listeners if hasattr(x, "state")]
            if self.config.accept_incoming and self.config.comm_server_url:
                if comm and comm[0].state == "listening":
                    self._set_online(True)
                    return True
            else:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ endpoints

    def _scan_endpoints(self) -> None:
        """Find OneInstanceEndpoint objects committed since the last scan (conn §7.2).

        The first scan of a manager does not read the objects of the change feed (on an
        instance holding 100,000 messages that read every page of the store, ~500 MiB of
        mapped file, and took seconds): it takes the Person ID objects from the feed's ``id``
        entries (the feed itself, no object read) and each person's endpoints from the store's
        OneInstanceEndpoint reverse map on ``personId`` (lama.connect.contacts, enabled when
        the instance opens). It reads the feed only after the position of the scan cache
        (:data:`SCAN_CACHE_FILE`, the persons found up to there by the previous run), so a
        start no longer walks the whole feed (700,000 entries for 100,000 messages, ~45 MiB
        of mapped file). Later scans read only the objects committed since the previous scan
        (fresh pages), in commit order, so the newest endpoint of an instance wins."""
        if self._scan_seq == 0:
            self._initial_scan()
            return
        new = False
        persons, endpoints = len(self._persons), len(self._endpoint_seqs)
        seq0 = self._scan_seq
        while True:
            # the typed feed (issue 10): only OneInstanceEndpoint and Person objects come
            # back, no read of every committed object (a fifth of a chat sender's CPU with the
            # chat thread)
            pos, changes = self.store.changes_of(_ENDPOINT_TYPES, self._scan_seq, 5000)
            if pos <= self._scan_seq:
                break
            for seq, h, kind in changes:
                if kind == "id":
                    self._persons[h] = None  # a Person ID object (endpoints are unversioned)
                elif kind == "object":
                    # a Person object is no endpoint: _load_endpoint finds no instanceKeys
                    new = self._route_endpoint(h, seq) or new
            self._scan_seq = pos
        if (len(self._persons) != persons or len(self._endpoint_seqs) != endpoints
                or self._scan_seq - self._cache_saved[0] >= SCAN_CACHE_EVERY):
            self._save_scan_cache()
        if self._unproven and self._scan_seq != seq0:
            new = self._recheck_unproven() or new
        if self._peers and self._scan_seq != seq0:
            self.check_revoked()
        if new:
            self._emit("connections_changed")

    def _route_endpoint(self, h: str, seq: int) -> bool:
        """Load, check and add the endpoint ``h``; True if it is a new peer."""
        try:
            ep = self._load_endpoint(h, seq)
            if ep is not None and seq > 0:
                self._endpoint_seqs[h] = seq
            return ep is not None and self._trusted(ep) and self._add_endpoint(ep)
        except LamaError as e:
            log.warning("unusable OneInstanceEndpoint %s: %s", h, e)
            return False

    def _initial_scan(self) -> None:
        """The first scan: persons from the scan cache and the feed's ID entries after it,
        endpoints from the reverse map (see :meth:`_scan_endpoints`); the feed position is
        then the last event read."""
        contacts.enable_reverse_maps(self.store)
        cached = self._load_scan_cache()
        last, persons, known_seqs = cached if cached is not None else (0, {}, {})
        while True:
            # the untyped feed, and a read of the ID objects only: the typed feed
            # (Store.changes_of) reads the stored header of every event's object, which from
            # the start of the feed maps the whole store into memory (an instance holding
            # 100,000 messages: ~370 MiB of file pages at start, benches/RESULTS.md session 8)
            changes = self.store.changes(last, 10_000)
            if not changes:
                break
            last = changes[-1][0]
            for _seq, h, kind in changes:
                if kind != "id":
                    continue
                try:
                    if core.type_of(self.store.get(h))[0] == "Person":
                        persons[h] = None
                except LamaError as e:
                    log.warning("unusable ID object %s: %s", h, e)
        if last == 0:
            return  # an empty store: the next scan starts at the beginning of the feed
        self._persons = persons
        # this instance's own endpoints are never dialled (_load_endpoint skips them), so they
        # need no order: the endpoint it publishes at start with another url (lama.connect.profile)
        # would otherwise cost a pass over the whole feed (an instance holding 100,000 messages:
        # 60 -> 120 MiB at start)
        own = str(self.instance.instance_id)
        found = [(h, o) for p in persons for h, o in contacts.endpoints_of_person(self.store, p)
                 if str(o.get("instanceId")) != own]
        # an instance with several endpoints (another url): the newest wins, so their order
        # in the feed is needed; read it only for them (rare: a feed pass without object reads)
        per_instance: dict[str, list[str]] = {}
        for h, o in found:
            per_instance.setdefault(str(o.get("instanceId")), []).append(h)
        wanted = {h for hs in per_instance.values() if len(hs) > 1 for h in hs}
        # their positions as the scan cache has them; a feed pass only for those it lacks
        order = {h: known_seqs[h] for h in wanted if h in known_seqs}
        if len(order) < len(wanted):
            seq = 0
            while len(order) < len(wanted):
                changes = self.store.changes(seq, 10_000)
                if not changes:
                    break
                seq = changes[-1][0]
                order.update((h, q) for q, h, _k in changes if h in wanted)
        self._scan_seq = last
        self._endpoint_seqs = {h: q for h, q in order.items() if q > 0}
        if cached is None or cached[0] != last or set(known_seqs) != set(self._endpoint_seqs):
            self._save_scan_cache()
        else:
            self._cache_saved = (last, len(persons))
        new = False
        for h, _o in sorted(found, key=lambda ho: order.get(ho[0], 0)):
            new = self._route_endpoint(h, order.get(h, 0)) or new
        if new:
            self._emit("connections_changed")

    def _scan_cache_path(self) -> Path | None:
        path = getattr(self.instance, "path", None)
        return Path(path) / SCAN_CACHE_FILE if path else None

    def _load_scan_cache(self) -> tuple[int, dict[str, None], dict[str, int]] | None:
        """``(position, persons, endpoint positions)`` of the scan cache, or None (no file, or one that does not
        fit this store: written for another store, damaged, or at a position whose feed entry
        is not the one recorded — a store copied back, or a commit an OS crash undid; then the
        first scan reads the whole feed, as without a cache).

        The file: ``{"storeId": Store.store_id, "seq": position, "hash": the feed entry's hash
        at that position, "persons": [every Person ID object in the feed up to it],
        "endpoints": {endpoint hash: its feed position, for those whose position is known}}``
        (an instance with several endpoints: the newest wins, without a pass over the feed to
        order them). It is
        only ever behind the store (written after the feed was read up to ``seq``); whatever
        was committed after ``seq``, by this build or any other, is read from the feed."""
        path = self._scan_cache_path()
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            seq, persons, eps = data["seq"], data["persons"], data.get("endpoints", {})
            if (data["storeId"] != self.store.store_id or not isinstance(seq, int) or seq < 1
                    or not isinstance(persons, list) or not all(_is_hex64(p) for p in persons)
                    or not isinstance(eps, dict)
                    or not all(_is_hex64(h) and isinstance(q, int) and 0 < q <= seq
                               for h, q in eps.items())):
                raise ValueError("does not fit")
            at = self.store.changes(seq - 1, 1)
            if not at or at[0][0] != seq or at[0][1] != data["hash"]:
                raise ValueError(f"position {seq} is not the recorded feed entry")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, LamaError) as e:
            log.info("%s not used (the first scan reads the whole feed): %s", path, e)
            return None
        return seq, dict.fromkeys(persons), dict(eps)

    def _save_scan_cache(self) -> None:
        """Write the scan cache (temporary file, rename: the old or the new one, never a torn
        one). A cache, not settings: a failure is logged, the next start reads more feed."""
        path = self._scan_cache_path()
        seq = self._scan_seq
        if path is None or seq < 1:
            return
        try:
            at = self.store.changes(seq - 1, 1)
            if not at or at[0][0] != seq:
                return
            data = {"storeId": self.store.store_id, "seq": seq, "hash": at[0][1],
                    "persons": list(self._persons),
                    "endpoints": {h: q for h, q in self._endpoint_seqs.items() if q <= seq}}
            # a temporary file of this process: two processes running a manager on one
            # instance (lama serve and a CLI command) each rename a whole file of their own
            tmp = path.with_name(f"{SCAN_CACHE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data) + "\n", encoding="utf-8")
            os.replace(tmp, path)
            self._cache_saved = (seq, len(self._persons))
        except (OSError, LamaError) as e:
            log.warning("cannot write %s: %s", path, e)

    def _load_endpoint(self, h: str, seq: int) -> Endpoint | None:
        obj = self.store.get_object(h)
        keys_hash = obj.get("instanceKeys")
        if not keys_hash:
            return None
        inst_keys = self.store.get_object(keys_hash)
        remote_key = bytes.fromhex(inst_keys["publicKey"])
        if remote_key == self._public:
            return None  # our own endpoint (conn §7.2: local keys are skipped)
        person_pk = None
        if obj.get("personKeys"):
            with contextlib.suppress(LamaError):
                person_pk = bytes.fromhex(self.store.get_object(obj["personKeys"])["publicKey"])
        return Endpoint(remote_key=remote_key, person_id=obj["personId"],
                        instance_id=obj["instanceId"], person_public_key=person_pk,
                        url=obj.get("url"), endpoint_hash=h, seq=seq)

    def _trusted(self, ep: Endpoint) -> bool:
        """Only proven endpoints of contacts and of my own person are dialled
        (docs/connections.md §3.5, :func:`lama.connect.contacts.endpoint_proven`): person
        Keys I signed when pairing (conn §6.4 item 5) - or my own - and instance Keys signed
        by me or by that person (a contact's new device, from the contact's profile).
        Endpoints that merely arrived through CHUM (someone else's contacts, a forged device)
        are not routed (conn §7.2 routes only "others" and IoM); one that is not proven yet
        is looked at again when more objects arrive (its proof may come in a later batch)."""
        obj = self.store.get_object(ep.endpoint_hash)
        ok = contacts.endpoint_proven(self.store, str(self.instance.person_id),
                                      bytes(self.instance.person_public_sign_key), obj,
                                      self._bad_signatures)
        if ok:
            self._unproven.pop(ep.endpoint_hash, None)
            # what check_revoked looks up for this peer (no object read at each scan)
            self._revocation_of.setdefault(ep.remote_key, contacts.revocation_hash(
                ep.person_id, str(obj.get("instanceKeys"))))
        elif contacts.endpoint_revoked(self.store, str(self.instance.person_id),
                                       bytes(self.instance.person_public_sign_key), obj,
                                       self._bad_signatures):
            self._revoked_keys.add(ep.remote_key)  # a removed device: refused when it calls
            self._unproven.pop(ep.endpoint_hash, None)
        else:
            keys = (obj.get("personKeys"), obj.get("instanceKeys"))
            self._unproven[ep.endpoint_hash] = (ep.seq, keys, self._proof_state(keys))
            while len(self._unproven) > MAX_UNPROVEN:
                del self._unproven[next(iter(self._unproven))]
        return ok

    def _proof_state(self, keys: tuple[Any, Any]) -> tuple[Any, ...]:
        """What an endpoint's proof depends on: its Keys objects (person, instance) and the
        Signatures over them (reverse-map reads only). The verdict can change only when this
        does."""
        from ..identity import certificates

        out: list[Any] = []
        for k in keys:
            if not isinstance(k, str):
                out.append(None)
                continue
            try:
                out += [self.store.has(k), tuple(certificates.signatures_for(self.store, k))]
            except LamaError:
                out.append(None)
        return tuple(out)

    def _recheck_unproven(self) -> bool:
        """Route the endpoints whose proof was missing if something it depends on arrived
        since (a Keys object, a Signature over one); True if a new peer."""
        new = False
        for h, (seq, keys, state) in list(self._unproven.items()):
            if self._proof_state(keys) != state:
                new = self._route_endpoint(h, seq) or new
        return new

    def _add_endpoint(self, ep: Endpoint) -> bool:
        peer = self._peers.get(ep.remote_key)
        if peer is None:
            peer = _Peer(endpoint=ep, enabled=ep.person_id not in self._disabled_persons,
                         disabled_groups=set(self._disabled_groups.get(ep.remote_key.hex(), ())))
            self._peers[ep.remote_key] = peer
            self._diag("new endpoint %s person %s url %s", ep.remote_key.hex(), ep.person_id, ep.url)
            just_paired = ep.remote_key in self._just_paired
            self._ensure_dialling(
                peer, PAIRING_YIELD if just_paired and self._public > ep.remote_key else 0.0)
            return True
        if ep.seq >= peer.endpoint.seq and ep.endpoint_hash != peer.endpoint.endpoint_hash:
            had_url = peer.endpoint.url
            peer.endpoint = ep  # a newer endpoint (e.g. another url) for the same instance
            if ep.url and not had_url:
                # a contact passed on without url (a device that joined) whose own profile
                # now says where it listens: dial it too (docs/connections.md §3.5)
                self._ensure_dialling(peer)
        return False

    def check_revoked(self) -> list[bytes]:
        """Drop the peers that are devices their person removed (docs/connections.md §3.5
        "Removing a device"): no more dialling, their connections closed
        (:data:`DEVICE_REMOVED`), incoming connections from their keys refused. The scan calls
        it whenever objects arrived; per peer one store lookup (its revocation certificate)
        unless one is there. Returns the dropped instance keys."""
        me, my_key = str(self.instance.person_id), bytes(self.instance.person_public_sign_key)
        dropped = []
        for key, peer in list(self._peers.items()):
            cert = self._revocation_of.get(key)
            if cert is None:
                try:
                    ik = self.store.get_object(peer.endpoint.endpoint_hash).get("instanceKeys")
                    cert = contacts.revocation_hash(peer.endpoint.person_id, str(ik))
                except LamaError:
                    continue
                self._revocation_of[key] = cert
            if not self.store.has(cert):
                continue
            try:
                obj = self.store.get_object(peer.endpoint.endpoint_hash)
            except LamaError:
                continue
            if contacts.endpoint_revoked(self.store, me, my_key, obj, self._bad_signatures):
                self._drop_peer(key, peer)
                dropped.append(key)
        if dropped:
            self._emit("connections_changed")
        return dropped

    def _drop_peer(self, key: bytes, peer: _Peer) -> None:
        self._diag("removed device %s of person %s dropped", key.hex()[:16],
                   peer.endpoint.person_id)
        self._revoked_keys.add(key)
        peer.enabled = False  # its connections' ends must not redial it (_release)
        if peer.dial_task is not None:
            peer.dial_task.cancel()
            peer.dial_task = None
        for c in list(peer.active.values()):
            self._spawn(self._close_conn(c, DEVICE_REMOVED))
        for (k, _g), c in list(self._unknown.items()):
            if k == key:
                self._spawn(self._close_conn(c, DEVICE_REMOVED))
        del self._peers[key]
        self._revocation_of.pop(key, None)

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.discovery_interval or 0.5)
            try:
                self._scan_endpoints()
            except LamaError as e:
                log.warning("endpoint scan failed: %s", e)

    def known_endpoints(self) -> list[Endpoint]:
        """Every remote endpoint the manager knows (after :meth:`start`)."""
        self._scan_endpoints()
        return [p.endpoint for p in self._peers.values()]

    def _peer_by_person(self, person_id: str) -> list[_Peer]:
        return [p for p in self._peers.values() if p.endpoint.person_id == person_id]

    # ------------------------------------------------------------------ enable / disable

    async def disable_person(self, person_id: str) -> None:
        """Stop dialling the person's instances and close their connections (conn §7.5);
        incoming connections from them are refused with ``Route is disabled``. Persisted in
        the instance directory (``connections.json``): a restarted manager keeps it."""
        core.check_hash(person_id, "person id")
        if person_id not in self._disabled_persons:
            self._disabled_persons.add(person_id)
            self._save_settings()
        for peer in self._peer_by_person(person_id):
            peer.enabled = False
            if peer.dial_task is not None:
                peer.dial_task.cancel()
                peer.dial_task = None
            for c in list(peer.active.values()):
                await self._close_conn(c, ROUTE_STOPPED)
        self._emit("connections_changed")

    async def enable_person(self, person_id: str) -> None:
        """Undo :meth:`disable_person` (persisted too): dial the person's instances again at
        once."""
        core.check_hash(person_id, "person id")
        if person_id in self._disabled_persons:
            self._disabled_persons.discard(person_id)
            self._save_settings()
        for peer in self._peer_by_person(person_id):
            peer.enabled = True
            peer.attempts = 0
            self._ensure_dialling(peer)
        self._emit("connections_changed")

    async def enable_connection_group(self, entry_id: str, enabled: bool = True) -> None:
        """The reference's ``connectionsInfo()[i].enable(bool)`` (conn §7.5-7.6): switch the
        route group named by a :meth:`connections_info` entry's ``id`` on or off. Off: its
        outgoing routes stop, its live connection closes (``Corresponding route was
        stopped``) and incoming connections of the group are refused (``Route is disabled``);
        on: dialled again at once. Persisted with the disabled persons (``connections.json``
        ``disabledGroups``, docs/connections.md §3.3): a restarted manager keeps the group off
        (the reference keeps route state in memory only). ``NotFoundError`` for an id that
        names no route group."""
        local = self._public.hex()
        for key, peer in self._peers.items():
            for g in self._groups():
                if entry_id == f"localKey: {local}, remoteKey: {key.hex()}, groupId: {g}":
                    groups = set(self._disabled_groups.get(key.hex(), ()))
                    if enabled:
                        groups.discard(g)
                    else:
                        groups.add(g)
                    if groups != self._disabled_groups.get(key.hex(), set()):
                        new = dict(self._disabled_groups)
                        if groups:
                            new[key.hex()] = groups
                        else:
                            new.pop(key.hex(), None)
                        self._save_settings(disabled_groups=new)  # first: a failure changes nothing
                        self._disabled_groups = new
                    if enabled:
                        peer.disabled_groups.discard(g)
                        if g == "chum":
                            peer.attempts = 0
                            self._ensure_dialling(peer)
                    else:
                        peer.disabled_groups.add(g)
                        if g == "chum" and peer.dial_task is not None:
                            peer.dial_task.cancel()
                            peer.dial_task = None
                        c = peer.active.get(g)
                        if c is not None:
                            await self._close_conn(c, ROUTE_STOPPED)
                    self._emit("connections_changed")
                    return
        raise NotFoundError(f"LAMA-NOTFOUND: no route group {entry_id!r}")

    def _groups(self) -> list[str]:
        """The route groups of a known peer (conn §7.2): ``chum``, and ``debug`` if allowed."""
        return ["chum"] + (["debug"] if self.config.allow_debug_requests else [])

    def is_enabled(self, person_id: str) -> bool:
        return person_id not in self._disabled_persons

    @property
    def disabled_persons(self) -> list[str]:
        """The persons disabled with :meth:`disable_person` (persisted), sorted."""
        return sorted(self._disabled_persons)

    @property
    def disabled_groups(self) -> dict[str, list[str]]:
        """The route groups switched off with :meth:`enable_connection_group` (persisted):
        remote instance key (hex) -> sorted group names."""
        return {k: sorted(v) for k, v in sorted(self._disabled_groups.items())}

    # ------------------------------------------------------------------ persisted settings

    def _settings_path(self) -> Path | None:
        path = getattr(self.instance, "path", None)
        return Path(path) / SETTINGS_FILE if path else None

    def _load_settings(self) -> dict[str, Any]:
        """``connections.json`` of the instance directory: ``{"disabledPersons": [person id
        hashes], "disabledGroups": {remote instance key hex: [group names]}}`` (absent file or
        key: nothing disabled). A damaged file is ``StoreError LAMA-CORRUPT`` rather than
        silently re-enabling everybody."""
        path = self._settings_path()
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise StoreError(f"LAMA-CORRUPT: {path} is unreadable: {e}") from None
        persons = data.get("disabledPersons") if isinstance(data, dict) else None
        if not isinstance(persons, list) or not all(
                _is_hex64(p) for p in persons):
            raise StoreError(f"LAMA-CORRUPT: {path}: disabledPersons must be a list of "
                             "lowercase 64-digit hashes")
        groups = data.get("disabledGroups", {})
        if not isinstance(groups, dict) or not all(
                _is_hex64(k) and isinstance(v, list)
                and all(isinstance(g, str) and g for g in v) for k, v in groups.items()):
            raise StoreError(f"LAMA-CORRUPT: {path}: disabledGroups must map lowercase 64-digit "
                             "instance keys to lists of group names")
        return data

    def _save_settings(self, *, disabled_groups: dict[str, set[str]] | None = None) -> None:
        """Write ``connections.json`` atomically (temporary file, fsync, rename), so a crash
        leaves the old or the new settings, never a torn file (``disabled_groups``: to be
        written instead of the current ones)."""
        path = self._settings_path()
        if path is None:
            return
        groups = self._disabled_groups if disabled_groups is None else disabled_groups
        data = {"disabledPersons": sorted(self._disabled_persons),
                "disabledGroups": {k: sorted(v) for k, v in sorted(groups.items()) if v}}
        tmp = path.with_name(SETTINGS_FILE + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            raise StoreError(f"LAMA-IO: cannot write {path}: {e.strerror or e}") from None

    # ------------------------------------------------------------------ outgoing

    def _ensure_dialling(self, peer: _Peer, delay: float = 0.0) -> None:
        cfg = self.config
        if (self._closing or not self._started or not cfg.establish_outgoing
                or not peer.allows("chum") or not peer.endpoint.url or "chum" in peer.active):
            return
        if peer.dial_task is not None and not peer.dial_task.done():
            if delay == 0.0:
                peer.wake.set()  # cut a pending backoff short
            return
        peer.wake.clear()  # a wake meant for an earlier loop must not cut this one's delay
        peer.dial_task = asyncio.ensure_future(self._dial_loop(peer, delay))

    def _backoff(self, attempts: int) -> float:
        """Jittered exponential backoff: ``retry_delay * 2^(n-1)`` bounded by
        ``retry_max_delay``, times a random factor in [0.5, 1.0) so that peers do not retry in
        lock step (conn §7.4 uses a random factor for the same reason)."""
        cfg = self.config
        base = min(cfg.retry_max_delay, cfg.retry_delay * (2 ** min(attempts - 1, 30)))
        return base * (0.5 + random.random() / 2)

    async def _dial_loop(self, peer: _Peer, delay: float) -> None:
        cfg = self.config
        try:
            if delay > 0:
                await self._sleep_or_wake(peer, delay)
            while (not self._closing and peer.allows("chum") and "chum" not in peer.active
                   and cfg.establish_outgoing):
                try:
                    await self._dial_once(peer)
                    peer.attempts = 0
                    return
                except asyncio.CancelledError:
                    raise
                except _Refused as e:
                    if "chum" in peer.active:
                        return  # lost to the connection we keep (duplicate rule): no failure
                    peer.last_error = str(e)
                    peer.errors.append(peer.last_error)
                    peer.attempts += 1
                    # quick retries for a transient refusal, then the normal backoff (a peer
                    # that keeps refusing us must not be dialled several times a second)
                    wait = (cfg.refused_retry_delay * (1 + random.random())
                            if peer.attempts <= QUICK_RETRIES else self._backoff(peer.attempts))
                except (LamaError, OSError, asyncio.TimeoutError, EOFError) as e:
                    peer.last_error = _reason(e)
                    peer.errors.append(peer.last_error)
                    peer.attempts += 1
                    wait = self._backoff(peer.attempts)
                del peer.errors[:-20]
                self._diag("dial %s failed (%s), attempt %d, retry in %.2fs",
                           peer.endpoint.remote_key.hex()[:16], peer.last_error, peer.attempts, wait)
                if cfg.retry_attempts and peer.attempts >= cfg.retry_attempts:
                    self._emit("error", peer=peer.endpoint.remote_key.hex(),
                               message=f"giving up after {peer.attempts} attempts: {peer.last_error}")
                    return
                if "chum" in peer.active:
                    return
                await self._sleep_or_wake(peer, wait)
        finally:
            if peer.dial_task is asyncio.current_task():
                peer.dial_task = None

    async def _sleep_or_wake(self, peer: _Peer, seconds: float) -> None:
        # the event is cleared after a wake, not before the sleep: a wake that came while the
        # loop was dialling (an incoming connection took the slot) is not lost
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(peer.wake.wait(), seconds)
        peer.wake.clear()

    async def _dial_once(self, peer: _Peer) -> None:
        cfg = self.config
        ep = peer.endpoint
        assert ep.url is not None
        self._diag("dial %s at %s", ep.remote_key.hex()[:16], ep.url)
        peer.refused = False
        conn = await self._connect(ep.url, ep.remote_key)
        c = self._track(conn, "chum", True, ep.remote_key)
        if self._closing:
            await self._close_conn(c, SHUTDOWN)
            return
        try:
            probe = _RttProbe(conn)
            ident = await asyncio.wait_for(self._initiate(probe, "chum", ep),
                                           cfg.protocol_timeout * 4)
            c.latency = probe.rtt
            c.remote_person, c.remote_instance = ident.person_id, ident.instance_id
            c.remote_instance_name = ident.instance_id_object.get("name")
        except BaseException as e:
            await self._close_conn(c, _close_text(e))
            peer.refused = _refused_by_peer(conn, e)
            if isinstance(e, (LamaError, OSError, EOFError)) and _is_refusal(conn, e):
                raise _Refused(_reason(e)) from e
            raise
        if not peer.allows(c.group):
            await self._close_conn(c, ROUTE_DISABLED)
            return
        if not self._claim(peer, c):
            raise _Refused(DUPLICATE_DROPPED)
        c.task = self._spawn(self._run_chum(peer, c))

    async def _initiate(self, conn: Any, group: str, expected: Endpoint | None) -> Any:
        """conn §5.1-5.4 as initiator (lama.connect.protocol), expecting the endpoint's ids."""
        from . import protocol

        return await protocol.initiate(
            conn, self.instance, group,
            expected_person=expected.person_id if expected else None,
            expected_instance=expected.instance_id if expected else None,
            timeout=self.config.protocol_timeout)

    # ------------------------------------------------------------------ slots

    def _claim(self, peer: _Peer, c: _Conn) -> bool:
        """Give ``c`` the (peer, group) slot or refuse it, deterministically (module doc)."""
        if self._closing:
            # close() may already have closed what it found: nothing takes a slot after that
            self._spawn(self._close_conn(c, SHUTDOWN))
            return False
        now = time.monotonic()
        old = peer.active.get(c.group)
        if old is not None and not old.closed and old.conn.close_reason is None:
            overlap = now - old.claimed_at < self.config.duplicate_window
            c_pref = c.preferred_initiator_key == min(self._public, c.remote_key)
            old_pref = old.preferred_initiator_key == min(self._public, c.remote_key)
            if overlap and (old_pref or not c_pref):
                # the one in place is the preferred one (or neither is): the new one goes
                self._diag("duplicate %s connection to %s dropped", c.group, c.remote_key.hex()[:16])
                self._spawn(self._close_conn(c, DUPLICATE_DROPPED))
                return False
            self._diag("%s connection to %s replaced", c.group, c.remote_key.hex()[:16])
            old.closed = True  # before the close: its end must not free the new slot
            peer.stats_log.append(self._conn_stats(old))
            del peer.stats_log[:-20]
            self._spawn(self._close_conn(old, REPLACED, force=True))
        c.claimed_at = now
        peer.active[c.group] = c
        peer.connected_since = time.time()
        peer.last_error = None
        peer.attempts = 0
        # A dial in flight is not cancelled: cancelling it could close the very connection the
        # peer already kept by the same rule; it finishes and the rule above decides, and a
        # dial loop that is only waiting exits when it sees the filled slot.
        if peer.dial_task is not None and c.group == "chum" and not c.initiator:
            peer.wake.set()
        self._emit("connection_up", peer=c.remote_key.hex(), group=c.group,
                   person=c.remote_person, instance=c.remote_instance, initiator=c.initiator)
        self._emit("connections_changed")
        return True

    def _release(self, peer: _Peer | None, c: _Conn, reason: str) -> None:
        if peer is not None and peer.active.get(c.group) is c:
            del peer.active[c.group]
            peer.connected_since = None
            peer.stats_log.append(self._conn_stats(c))
            del peer.stats_log[:-20]
            self._emit("connection_down", peer=c.remote_key.hex(), group=c.group, reason=reason,
                       person=c.remote_person)
            self._emit("connections_changed")
            if c.group == "chum" and not self._closing and peer.enabled:
                # a connection that ends soon after it started (a peer that accepts and drops
                # us) must not make us redial at the short reconnect delay forever
                if time.monotonic() - c.claimed_at < SHORT_LIVED:
                    peer.short_lived += 1
                else:
                    peer.short_lived = 0
                if c.unresponsive:
                    # a silent peer: redial with the backoff (one more step per connection in
                    # a row that went silent; an answered ping resets it)
                    peer.unresponsive += 1
                    delay = self._backoff(peer.unresponsive)
                elif peer.short_lived > QUICK_RETRIES:
                    delay = self._backoff(peer.short_lived)
                else:
                    delay = self.config.reconnect_delay * (1 + random.random())
                self._ensure_dialling(peer, delay)

    async def _close_conn(self, c: _Conn, reason: str, force: bool = False) -> None:
        if c.close_reason is None:
            c.close_reason = reason
        c.closed = True
        self._conns.discard(c)
        if c.silence_task is not None and c.silence_task is not asyncio.current_task():
            c.silence_task.cancel()
        with contextlib.suppress(Exception):
            await c.conn.close(reason)

    # ------------------------------------------------------------------ incoming

    async def _accept_loop(self, listener: Any, kind: str) -> None:
        while not self._closing:
            try:
                transport = await listener.accept()
            except asyncio.CancelledError:
                raise
            except (LamaError, OSError) as e:
                if self._closing or listener not in self._listeners:
                    return  # closed, or replaced by a failover (docs/cluster.md §5)
                log.warning("%s listener: %s", kind, e)
                await asyncio.sleep(1.0)
                continue
            self._spawn(self._handle_incoming(transport))

    async def _handle_incoming(self, transport: Any) -> None:
        cfg = self.config
        try:
            conn = await core.encrypted_accept(
                transport, [(self._public, self._secret)], timeout=cfg.handshake_timeout,
                keepalive=cfg.keepalive, dead_after=cfg.dead_after)
        except (LamaError, OSError, asyncio.TimeoutError) as e:
            self._diag("incoming handshake failed: %s", e)
            with contextlib.suppress(Exception):
                await transport.close(_close_text(e))
            return
        remote_key = bytes(conn.remote_key)
        c = self._track(conn, "", False, remote_key)
        if self._closing:
            await self._close_conn(c, SHUTDOWN)
            return
        try:
            await self._dispatch(c)
        except asyncio.CancelledError:
            await self._close_conn(c, SHUTDOWN)
            raise
        except Exception as e:  # every failure of a peer's connection ends here, never above
            self._diag("incoming %s connection from %s failed: %s", c.group or "?",
                       remote_key.hex()[:16], e)
            await self._close_conn(c, _close_text(e))

    async def _dispatch(self, c: _Conn) -> None:
        """conn §7.3 for an incoming connection: group, decision, sync, identity, protocol."""
        from . import protocol

        cfg = self.config
        pairing_fut: asyncio.Future[None] | None = None

        async def decide(group: str) -> Any:
            nonlocal pairing_fut
            c.group = group
            if group == "pairing":
                if not cfg.allow_pairing:
                    return False
                # a chum connection from this key waits for this pairing (conn §6.3 race)
                pairing_fut = asyncio.get_running_loop().create_future()
                self._pairing_in_progress.setdefault(c.remote_key, pairing_fut)
                return protocol.Accept(store_peer=False)  # pairing stores §6.4 on success only
            if group == _DEVICE_GROUP:  # linking a device of my person (lama.connect.device)
                return protocol.Accept(store_peer=False) if cfg.allow_pairing else False
            if group not in ("chum", "debug") or (group == "debug" and not cfg.allow_debug_requests):
                return False
            if c.remote_key in self._revoked_keys:  # a removed device (§3.5)
                await self._close_conn(c, DEVICE_REMOVED)
                return False
            peer = self._peers.get(c.remote_key)
            if peer is None and group == "chum":
                await self._wait_pairing(c.remote_key)
                self._scan_endpoints()
                peer = self._peers.get(c.remote_key)
            if peer is not None:
                if not peer.allows(group):
                    await self._close_conn(c, ROUTE_DISABLED)
                    return False
                return protocol.Accept(expected_person=peer.endpoint.person_id,
                                       expected_instance=peer.endpoint.instance_id,
                                       store_peer=False)
            if group == "chum" and cfg.accept_unknown_persons:
                return protocol.Accept()  # catch-all chum: the peer's ids are stored (§5.3)
            if cfg.allow_pairing or cfg.accept_unknown_instances or group == "debug":
                # the catch-all (conn §7.3 item 2): identify first, decide after; an upstream
                # peer pairs with its person key, so its pairing is found by person id only
                return protocol.Accept(store_peer=False)
            return False

        try:
            probe = _RttProbe(c.conn)
            ident = await asyncio.wait_for(
                protocol.accept(probe, self.instance, decide, timeout=cfg.protocol_timeout),
                cfg.protocol_timeout * 4)
            c.latency = probe.rtt
            c.remote_person, c.remote_instance = ident.person_id, ident.instance_id
            c.remote_instance_name = ident.instance_id_object.get("name")
            if c.group == "pairing":
                if pairing_fut is not None:
                    self._pairing_in_progress.setdefault(ident.person_id, pairing_fut)
                await self._serve_pairing(c, ident)
                return
            if c.group == _DEVICE_GROUP:
                await self._serve_device(c, ident)
                return
        finally:
            if pairing_fut is not None:
                for k in [k for k, f in self._pairing_in_progress.items() if f is pairing_fut]:
                    del self._pairing_in_progress[k]
                if not pairing_fut.done():
                    pairing_fut.set_result(None)
        if c.group == "debug":
            await self._serve_debug(c)
            return
        peer = self._peers.get(c.remote_key)
        if peer is None:
            # catch-all chum: a pairing with this person may still be recording it
            await self._wait_pairing(c.remote_key, ident.person_id)
            self._scan_endpoints()
            peer = self._peers.get(c.remote_key)
            if peer is not None and (peer.endpoint.person_id != ident.person_id
                                     or peer.endpoint.instance_id != ident.instance_id):
                await self._close_conn(c, protocol.PERSON_MISMATCH)
                return
        if peer is None:
            if not cfg.accept_unknown_persons:
                await self._close_conn(c, UNKNOWN_PEER)
                return
            await self._run_unknown_chum(c)
            return
        if not peer.allows(c.group):
            await self._close_conn(c, ROUTE_DISABLED)
            return
        if not self._claim(peer, c):
            return
        await self._run_chum(peer, c)

    async def _wait_pairing(self, key: bytes, person: str | None = None) -> None:
        futs = [f for k, f in self._pairing_in_progress.items() if k in (key, person)]
        if futs:
            await asyncio.wait(futs, timeout=self.config.pairing_wait)

    # ------------------------------------------------------------------ CHUM

    async def _start_synchronisation(self, c: _Conn) -> None:
        """conn §5.5: both send ``synchronisation``, both wait for one message; then a short
        gap so that our first CHUM request is not in the peer's read burst."""
        from . import protocol

        await protocol.synchronise(c.conn, timeout=self.config.protocol_timeout)
        if self.config.sync_start_gap:
            await asyncio.sleep(self.config.sync_start_gap)

    async def _run_chum(self, peer: _Peer, c: _Conn) -> None:
        from .. import chum

        cfg = self.config
        reason = "chum ended"
        try:
            await self._start_synchronisation(c)
            if c.closed or peer.active.get(c.group) is not c:
                return  # replaced meanwhile (a burst of reconnects): no session for it at all
            self._emit("sync", peer=c.remote_key.hex(), state="started", person=c.remote_person)

            def on_event(kind: str, data: dict[str, Any]) -> None:
                if kind in ("imported", "full_sync"):
                    peer.last_sync = time.time()
                    # items: everything the batch stored (objects, ID objects, BLOBs, CLOBs),
                    # counted against the pass's `listed` total (progress displays)
                    items = sum(len(data.get(k, ())) for k in ("objects", "id_objects", "blobs",
                                                               "clobs"))
                    self._emit("sync", peer=c.remote_key.hex(), state=kind,
                               person=c.remote_person,
                               objects=len(data.get("objects", ())) if kind == "imported" else 0,
                               items=items)
                elif kind == "listed":
                    self._emit("sync", peer=c.remote_key.hex(), state="listed",
                               person=c.remote_person,
                               total=int(data.get("objects", 0)) + int(data.get("streams", 0)))
                elif kind == "ping":
                    self._on_ping(peer, c, data)
                elif kind == "error":
                    self._emit("error", peer=c.remote_key.hex(), message=data.get("message"))
                if cfg.trace and kind in _TRACED:  # docs/tracing.md: for the tracer
                    self._emit("chum_" + kind, peer=c.remote_key.hex(), person=c.remote_person,
                               data=data)

            result = await chum.sync(
                self.store, c.conn, self.instance.person_id, c.remote_person or ZERO_HASH,
                on_event=on_event, keep_running=True, fast_path=cfg.fast_path,
                poll_interval=cfg.sync_interval or 5.0, exporter=not cfg.no_export,
                importer=not cfg.no_import, write_log=False,
                ping_interval=(cfg.health_check_interval or 5.0) if cfg.health_checks else 0.0,
                ping_timeout=cfg.ping_timeout,
                **({"trace": True} if cfg.trace else {}))  # type: ignore[arg-type]
            reason = result.reason or reason
            # A keep-running session only ends when its connection closes, which the
            # reference's importer counts as a failure; chum.md §3.2 item 5 then writes the Chum
            # log only if something was transferred. So a connection that was replaced or
            # dropped before it moved anything adds no version (each version is a merge over
            # the log's whole history: a reconnect storm would otherwise slow to a crawl).
            if result.log and any(result.log.get(k) for k in chum.LOG_BAGS):
                chum.write_chum_log(
                    self.store, result.log, local_person=self.instance.person_id,
                    remote_person=c.remote_person or ZERO_HASH,
                    # the Chum log names the two instances by their `name` (chum.md §7)
                    local_instance=self.instance.instance_name,
                    remote_instance=c.remote_instance_name or c.remote_instance or ZERO_HASH)
        except asyncio.CancelledError:
            reason = SHUTDOWN
            raise
        except Exception as e:
            reason = _reason(e)
            self._diag("chum with %s ended: %s", c.remote_key.hex()[:16], reason)
        finally:
            await self._close_conn(c, reason if not c.close_reason else c.close_reason)
            self._release(peer, c, c.close_reason or reason)

    async def _run_unknown_chum(self, c: _Conn) -> None:
        """CHUM with a peer that is no contact (``accept_unknown_persons``, a catch-all group;
        deleted when the connection closes, conn §7.3)."""
        key = (c.remote_key, "chum")
        old = self._unknown.get(key)
        if old is not None:
            await self._close_conn(old, REPLACED)
        self._unknown[key] = c
        fake = _Peer(endpoint=Endpoint(c.remote_key, c.remote_person or ZERO_HASH,
                                       c.remote_instance or ZERO_HASH, None, None, ""))
        fake.active["chum"] = c
        try:
            await self._run_chum(fake, c)
        finally:
            if self._unknown.get(key) is c:
                del self._unknown[key]

    # ------------------------------------------------------------------ pairing

    def _token_registry(self) -> Any:
        if self._registry is None:
            from . import pairing

            self._registry = pairing.TokenRegistry(lifetime=self.config.pairing_token_lifetime)
        return self._registry

    def create_invitation(self, lifetime: float | None = None, *, device: bool = False) -> Any:
        """A fresh invitation ``{token, publicKey, url}`` (conn §6.1) for this instance;
        ``device``: for a new device of my own person (:mod:`lama.connect.device`; give it
        out as ``to_link(device=True)``)."""
        from . import pairing

        if not self.url:
            raise InvalidArgumentError(
                "LAMA-ARG: an invitation needs comm_server_url or a direct listener")
        return pairing.create_invitation(
            self._token_registry(), self.instance, url=self.url,
            lifetime=lifetime, device=device)

    async def _serve_device(self, c: _Conn, ident: Any) -> None:
        """The first device's side of device linking (:mod:`lama.connect.device`) on an
        incoming ``lama-device`` connection; on success the new device is a peer like a
        paired one (``pairing_success`` with ``device=True``) and is dialled at once."""
        from . import device

        persons: list[str] = []
        if self.device_contacts is not None:
            persons = list(self.device_contacts())
        self._pairing_conns.add(c)
        try:
            result = await device.serve_device(
                c.conn, self.instance, self._token_registry(), ident, url=self.url,
                handshake_key=c.remote_key, contact_persons=persons,
                timeout=self.config.protocol_timeout)
            self._after_pairing(result, initiated_locally=False, conn=c, device=True)
            # my profile lists the new device now (pairing.store_identity): its proof goes to
            # every contact my profile is shared with (docs/connections.md §3.5)
            with contextlib.suppress(LamaError):
                from . import profile

                profile.share_own_profile(self.instance, persons)
        finally:
            self._pairing_conns.discard(c)
        await self._drain_and_close(c, self.config.protocol_timeout)

    async def _serve_pairing(self, c: _Conn, ident: Any) -> None:
        """Inviter side of conn §6.3 on an incoming ``pairing`` connection, after
        ``protocol.accept`` (the caller keeps it registered as a pairing in progress)."""
        from . import pairing

        cfg = self.config
        self._pairing_conns.add(c)
        try:
            result = await pairing.accept_pairing(
                c.conn, self.instance, self._token_registry(), ident,
                url=self.url, handshake_key=c.remote_key,
                send_synchronisation=True, timeout=cfg.protocol_timeout)
            self._after_pairing(result, initiated_locally=False, conn=c)
        finally:
            self._pairing_conns.discard(c)
        # FORK (conn §5.5/§6.3): accept_pairing sent the fork's `synchronisation` without
        # waiting for an answer; the pairing connection carries nothing more: close it.
        await self._close_conn(c, "Close called.")

    async def accept_invitation(self, invitation: Any, *, connect_attempts: int = 3) -> PairingOutcome:
        """Pair using an invitation (a link, its JSON, a dict or a
        :class:`lama.connect.pairing.Invitation`): conn §6.3 as initiator, source key = the
        instance key (FORK, as recorded); then the new contact's ``chum`` connection is dialled
        at once. Refusals raise (``PairingError``, ``ProtocolError``, ``TransportError``) and
        store nothing; only opening the connection is retried (``connect_attempts``)."""
        from . import pairing, protocol

        cfg = self.config
        inv = pairing.parse_invitation(invitation)
        target = inv.public_key_bytes
        for attempt in range(connect_attempts):
            try:
                conn = await self._connect(inv.url, target)
                break
            except (TransportError, OSError) as e:
                # the inviter may not be registered at its comm server yet (or a moment away)
                if attempt + 1 >= connect_attempts:
                    raise
                self._diag("pairing connection to %s failed (%s), retrying", inv.url, e)
                await asyncio.sleep(cfg.retry_delay * (1 + random.random()))
        c = self._track(conn, "pairing", True, target)
        # the inviter dials our chum connection as soon as it stored us, which can be before
        # we stored it: such a connection waits for this pairing (conn §6.3 race, mirrored)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pairing_in_progress.setdefault(target, fut)
        try:
            ident = await protocol.initiate(conn, self.instance, "pairing",
                                            timeout=cfg.protocol_timeout)
            c.remote_person, c.remote_instance = ident.person_id, ident.instance_id
            self._pairing_in_progress.setdefault(ident.person_id, fut)
            result = await pairing.connect_pairing(
                conn, self.instance, inv, ident, url=self.url, handshake_key=target,
                timeout=cfg.protocol_timeout)
            outcome = self._after_pairing(result, initiated_locally=True, conn=c)
        except BaseException as e:
            await self._close_conn(c, _close_text(e))
            raise
        finally:
            for k in [k for k, f in self._pairing_in_progress.items() if f is fut]:
                del self._pairing_in_progress[k]
            fut.set_result(None)
        # The inviter closes the pairing connection after storing us (or idles, the fork);
        # upstream invitees close at once. Closing only after the inviter's close (bounded)
        # makes sure our identity is read before a close can overtake it.
        self._spawn(self._drain_and_close(c, cfg.protocol_timeout))
        return outcome

    async def _drain_and_close(self, c: _Conn, timeout: float) -> None:
        with contextlib.suppress(Exception):
            async def drain() -> None:
                while await c.conn.recv() is not None:
                    pass  # the fork's `synchronisation`: ignored, never answered (conn §5.5)

            await asyncio.wait_for(drain(), timeout)
        await self._close_conn(c, "Close called.")

    def _after_pairing(self, result: Any, *, initiated_locally: bool, conn: _Conn,
                       device: bool = False) -> PairingOutcome:
        # result: lama.connect.pairing.PairingResult (remote ids as proven in conn §5.3-5.4)
        outcome = PairingOutcome(
            initiated_locally=initiated_locally, local_person=self.instance.person_id,
            local_instance=self.instance.instance_id,
            remote_person=str(result.remote_person), remote_instance=str(result.remote_instance),
            remote_key=_identity_key(result, conn.remote_key), token=getattr(result, "token", ""),
            details=result)
        self.pairings.append(outcome)
        # the new OneInstanceEndpoint is in the store now: route it and dial (the side with the
        # smaller instance key at once, the other after PAIRING_YIELD unless connected by then)
        self._just_paired.add(outcome.remote_key)
        try:
            self._scan_endpoints()
        finally:
            self._just_paired.discard(outcome.remote_key)
        self._emit("pairing_success", initiated_locally=initiated_locally,
                   local_person=outcome.local_person, local_instance=outcome.local_instance,
                   remote_person=outcome.remote_person, remote_instance=outcome.remote_instance,
                   token=outcome.token, **({"device": True} if device else {}))
        for w in self._pairing_waiters:
            if not w.done():
                w.set_result(outcome)
        self._pairing_waiters = [w for w in self._pairing_waiters if not w.done()]
        return outcome

    async def wait_pairing(self, timeout: float | None = None) -> PairingOutcome:
        """The next successful pairing (either side); ``asyncio.TimeoutError`` after ``timeout``."""
        fut: asyncio.Future[PairingOutcome] = asyncio.get_running_loop().create_future()
        self._pairing_waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if fut in self._pairing_waiters:
                self._pairing_waiters.remove(fut)

    # ------------------------------------------------------------------ debug

    async def _serve_debug(self, c: _Conn) -> None:
        """conn §5.6, answered only with what is granted to the remote person (the reference
        leaks, §9.3 item 6): ``getAccessibleObjects`` lists the accessible roots, ``getData``
        returns an object's text only if it is a root or reachable from one."""
        conn = c.conn
        person = c.remote_person or ZERO_HASH
        import json

        msg = await asyncio.wait_for(conn.recv(), self.config.protocol_timeout)
        req = json.loads(msg) if isinstance(msg, str) else {}
        if req.get("type") != "start_protocol":
            raise TransportError("LAMA-CONN-PROTOCOL: expected start_protocol")
        if req.get("version") != "1.0":
            await self._close_conn(c, "Protocol version not supported. Only 1.0 is supported")
            return
        _, roots = self.store.accessible_roots(person)
        allowed = {r[1] for r in roots} | {r[2] for r in roots if r[2]}
        if req.get("protocol") == "getAccessibleObjects":
            objs = [{"type": r[0], "hash": r[1], "idHash": r[2], "oneType": r[3]} for r in roots]
            await conn.send(json.dumps({"type": "accessible_objects", "objects": objs},
                                       separators=(",", ":")))
            await self._close_conn(c, "Debug protocol getAccessibleObjects finished")
            return
        if req.get("protocol") == "getData":
            msg = await asyncio.wait_for(conn.recv(), self.config.protocol_timeout)
            rd = json.loads(msg) if isinstance(msg, str) else {}
            h = rd.get("hash")
            reachable = set(allowed)
            if h not in reachable:
                for root in allowed:
                    with contextlib.suppress(LamaError):
                        if h in self.store.children(root):
                            reachable.add(h)
                            break
            if rd.get("type") != "request_data" or h not in reachable:
                await self._close_conn(c, "Error: access denied")
                return
            kind = self.store.kind(h)
            data = (f"File size: {self.store.blob_size(h)}" if kind == "blob"
                    else self.store.get(h) if kind in ("object", "id")
                    else self.store.read_blob(h).decode("utf-8"))
            await conn.send(json.dumps({"type": "data", "data": data}, separators=(",", ":")))
            await self._close_conn(c, "Debug protocol getData finished")
            return
        await self._close_conn(c, "Error: unknown debug protocol")

    # ------------------------------------------------------------------ health and info

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_check_interval or 5.0)
            self._sample()

    def _on_ping(self, peer: _Peer, c: _Conn, data: dict[str, Any]) -> None:
        """A CHUM ping's result (docs/chum-session.md "Ping"): the connection's latency, or
        the start of a silence; health events when the peer stops or starts answering."""
        rtt = data.get("rtt")
        if rtt is None:
            was = c.ping_waiting is not None
            c.ping_waiting = time.monotonic() - float(data.get("waiting") or 0.0)
            if not was:
                self._emit("health", peer=c.remote_key.hex(), person=c.remote_person,
                           responding=False, waiting=data.get("waiting"))
                if self.config.close_unresponsive_after and not c.closed and (
                        c.silence_task is None or c.silence_task.done()):
                    c.silence_task = self._spawn(self._watch_silence(peer, c))
            return
        c.latency = float(rtt)
        c.latency_at = time.time()
        c.pings += 1
        peer.unresponsive = 0
        if c.ping_waiting is not None:
            c.ping_waiting = None
            self._emit("health", peer=c.remote_key.hex(), person=c.remote_person,
                       responding=True, latency=c.latency)

    def _traffic_seen(self, c: _Conn) -> bool:
        """Sample ``c``'s counters: ``last_message`` when wire bytes arrived (a keepalive too);
        True (and ``active_at``) if an application message arrived since the last look - a
        CHUM request, answer or BLOB chunk; keepalives are no messages."""
        with contextlib.suppress(Exception):
            st = c.conn.stats()
            c.sampled_at = time.monotonic()
            n_bytes, n_msgs = st.get("bytes_received", 0), st.get("messages_received", 0)
            if n_bytes != c.bytes_received:
                c.bytes_received = n_bytes
                c.last_message = time.time()
            if n_msgs != c.messages_received:
                c.messages_received = n_msgs
                c.active_at = c.sampled_at
                return True
        return False

    async def _watch_silence(self, peer: _Peer, c: _Conn) -> None:
        """A ping of ``c`` is overdue: close the connection once the ping has been out
        ``close_unresponsive_after`` s *and* no message arrived for as long, then the peer is
        redialled with the backoff (``_release``). A message is a lifesign, so a peer busy
        sending us a large BLOB, its answer queued behind it, is kept; keepalives are not:
        this is for the peer whose socket and keepalive live on while its CHUM answers
        nothing, which the keepalive never closes (a socket silent for ``dead_after`` is the
        keepalive's, conn §2.5). What it cannot see: our own ping waiting behind what we
        queued (socket buffers of megabytes on a slow link) - hence a default well above the
        time a link needs to drain them (docs/connections.md §3.3 "Health")."""
        limit = self.config.close_unresponsive_after
        step = min(max(limit / 8, 0.02), 1.0)
        last_sample = c.sampled_at
        if self._traffic_seen(c) and last_sample is not None:
            # it moved after the last sample (a health interval ago at most): a silence that
            # began before the ping went out is not counted again from now
            c.active_at = last_sample
        while not c.closed and c.ping_waiting is not None:
            now = time.monotonic()
            quiet_since = max(c.ping_waiting, c.active_at or 0.0)
            if now - quiet_since >= limit:
                break
            await asyncio.sleep(min(step, quiet_since + limit - now))
            self._traffic_seen(c)
        else:
            return  # answered, or closed meanwhile
        if peer.active.get(c.group) is not c:
            return
        reason = UNRESPONSIVE.format(limit)
        self._diag("%s connection to %s: %s", c.group, c.remote_key.hex()[:16], reason)
        c.unresponsive = True
        peer.last_error = reason
        peer.errors.append(reason)
        del peer.errors[:-20]
        await self._close_conn(c, reason)

    @staticmethod
    def _latency(c: _Conn) -> float | None:
        """The connection's current round-trip estimate: the last measured one, or while a ping
        is overdue how long it has been out (a lower bound of the round trip now)."""
        if c.ping_waiting is not None:
            return max(c.latency or 0.0, time.monotonic() - c.ping_waiting)
        return c.latency

    def _sample(self) -> None:
        # online = the comm-server listener is registered (the reference's onlineState; without
        # a comm-server listener it is always true, conn §7.1)
        comm = [listener for listener in self._listeners if hasattr(listener, "state")]
        if comm and not self._closing:
            with contextlib.suppress(Exception):
                self._set_online(comm[0].state == "listening")
        for peer in self._peers.values():
            for c in peer.active.values():
                self._traffic_seen(c)

    def _conn_stats(self, c: _Conn) -> dict[str, Any]:
        st: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            st = dict(c.conn.stats())
        st.setdefault("open_time", int(c.opened * 1000))
        st["close_reason"] = c.close_reason or st.get("close_reason")
        st["initiator"] = c.initiator
        return st

    def connections_info(self) -> list[dict[str, Any]]:
        """One entry per route group (conn §7.6): ``id``, ``protocolName``, ``isConnected``,
        ``isInternetOfMe``, ``isCatchAll``, keys and ids (64 zeros when unknown), ``enabled``,
        ``routes`` and ``connectionStatisticsLog``."""
        out = []
        local = self._public.hex()
        url = self.url or ""
        for peer in self._peers.values():
            ep = peer.endpoint
            remote = ep.remote_key.hex()
            peer_id = f"localKey: {local}, remoteKey: {remote}"
            for g in self._groups():
                c = peer.active.get(g)
                if c is not None and c.closed:
                    c = None  # closed, its task not done yet
                on = peer.allows(g)
                routes = []
                if g == "chum" and ep.url and self.config.establish_outgoing:
                    routes.append({"name": f"OutgoingWebsocketRoute:{ep.url}",
                                   "active": bool(c and c.initiator), "enabled": on})
                if self.config.accept_incoming and url:
                    routes.append({"name": f"IncomingWebsocketRouteCommServer:{url}:{local}",
                                   "active": bool(c and not c.initiator), "enabled": on})
                log_ = list(peer.stats_log) if g == "chum" else []
                if c is not None:
                    log_.append(self._conn_stats(c))
                out.append({
                    "id": f"{peer_id}, groupId: {g}",
                    "protocolName": g,
                    "isConnected": c is not None,
                    "isInternetOfMe": ep.person_id == self.instance.person_id,
                    "isCatchAll": False,
                    "localPublicKey": local,
                    "remotePublicKey": remote,
                    "localInstanceId": self.instance.instance_id,
                    "localPersonId": self.instance.person_id,
                    "remoteInstanceId": ep.instance_id,
                    "remotePersonId": ep.person_id,
                    "enabled": on,
                    "routes": routes,
                    "connectionStatisticsLog": log_,
                    # lama: the live connection's round trip (s) and whether it answers pings
                    "latency": self._latency(c) if c else None,
                    "responding": c.ping_waiting is None if c else None,
                })
        for (key, g), c in list(self._unknown.items()):
            remote = key.hex()
            out.append({
                "id": f"localKey: {local}, remoteKey: {remote}, groupId: {g}",
                "protocolName": g, "isConnected": not c.closed, "isInternetOfMe": False,
                "isCatchAll": True, "localPublicKey": local, "remotePublicKey": remote,
                "localInstanceId": self.instance.instance_id,
                "localPersonId": self.instance.person_id,
                "remoteInstanceId": ZERO_HASH, "remotePersonId": ZERO_HASH, "enabled": True,
                "routes": [], "connectionStatisticsLog": [self._conn_stats(c)],
                "latency": self._latency(c), "responding": c.ping_waiting is None,
            })
        return out

    def connection_health(self) -> dict[str, Any]:
        """Health of the known peers: ``total``, ``active``, ``ratio``, ``average_latency``
        (seconds, mean of the round trips of the live connections, pinged every
        ``health_check_interval``; None if none), ``last_sync`` (epoch seconds), ``status``
        (``"healthy"`` all connected and answering, ``"degraded"`` some, ``"offline"`` none,
        ``"idle"`` no peers) and ``peers``: per remote instance key ``connected``,
        ``responding``, ``since``, ``last_message``, ``reconnect_attempts``, ``last_error``,
        ``latency``, ``latency_at``, ``bytes_sent`` (the live connection's), ``pings``,
        ``unanswered_for``, ``last_sync``, ``enabled``,
        ``person_id``, ``instance_id``. A connection whose ping is overdue (``ping_timeout``)
        is not ``responding`` and not ``active``; its ``latency`` is then how long the ping
        has been out."""
        self._sample()
        peers = {}
        lat = []
        last_sync = None
        now = time.monotonic()
        active = 0
        for key, peer in self._peers.items():
            c = peer.active.get("chum")
            latency = self._latency(c) if c is not None else None
            if latency is not None:
                lat.append(latency)
            responding = c is not None and c.ping_waiting is None
            if responding and peer.enabled:
                active += 1
            if peer.last_sync and (last_sync is None or peer.last_sync > last_sync):
                last_sync = peer.last_sync
            peers[key.hex()] = {
                "connected": c is not None,
                "since": peer.connected_since,
                "last_message": c.last_message if c else None,
                "reconnect_attempts": peer.attempts,
                "last_error": peer.last_error,
                "recent_errors": list(peer.errors),
                "responding": responding,
                "latency": latency,
                "latency_at": c.latency_at if c else None,
                "pings": c.pings if c else 0,
                "unanswered_for": (now - c.ping_waiting) if c and c.ping_waiting else None,
                "bytes_sent": self._conn_stats(c).get("bytes_sent") if c else None,
                "last_sync": peer.last_sync,
                "enabled": peer.enabled,
                "refused": peer.refused,
                "url": peer.endpoint.url,
                "person_id": peer.endpoint.person_id,
                "instance_id": peer.endpoint.instance_id,
            }
        # a peer without url that is not connected is not missing: it cannot be dialled (the
        # contacts a joined device got from my other device, lama.connect.device)
        total = sum(1 for p in self._peers.values()
                    if p.enabled and (p.endpoint.url or "chum" in p.active))
        connected = sum(1 for p in self._peers.values() if p.enabled and "chum" in p.active)
        # offline: nothing connected; degraded: some peers unconnected or not answering pings
        status = ("idle" if total == 0 else "healthy" if active == total
                  else "offline" if connected == 0 else "degraded")
        return {"total": total, "active": active, "ratio": (active / total) if total else 1.0,
                "average_latency": (sum(lat) / len(lat)) if lat else None,
                "last_sync": last_sync, "status": status, "online": self._online,
                "peers": peers}

    def connected(self, person_or_key: str | bytes, group: str = "chum") -> bool:
        """Whether a live ``group`` connection exists to the instance key / person id."""
        if isinstance(person_or_key, bytes):
            peer = self._peers.get(person_or_key)
            return peer is not None and group in peer.active
        return any(group in p.active for p in self._peer_by_person(person_or_key))

    async def wait_connected(self, person_or_key: str | bytes, timeout: float,
                             group: str = "chum") -> None:
        """Wait until :meth:`connected`; ``asyncio.TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.connected(person_or_key, group):
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError(f"no {group} connection after {timeout}s")
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------- helpers

def _is_hex64(s: Any) -> bool:
    return isinstance(s, str) and len(s) == 64 and all(ch in "0123456789abcdef" for ch in s)


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _close_text(e: BaseException) -> str:
    """The close reason for a failed protocol step: ``Error: <message>`` (conn §6.3, §7.3)."""
    if isinstance(e, asyncio.CancelledError):
        return SHUTDOWN
    if isinstance(e, asyncio.TimeoutError):
        return "Error: timeout"
    return f"Error: {_reason(e)}"


def _is_refusal(conn: Any, e: BaseException) -> bool:
    """A close by the peer that a retry soon can fix (conn §5.5: the first connection after a
    pairing is refused as unknown; a duplicate is dropped)."""
    reason = getattr(conn, "close_reason", None) or ""
    text = f"{reason} {e}"
    return "unknown" in text or "Duplicate connection" in text or "replaced" in text


def _refused_by_peer(conn: Any, e: BaseException) -> bool:
    """The peer (or its side of the relay) closed our attempt on purpose (docs/tracing.md §3
    connection_refused): route disabled or stopped, we are unknown, wrong person, duplicate."""
    text = f"{getattr(conn, 'close_reason', None) or ''} {e}"
    return any(m in text for m in (ROUTE_DISABLED, ROUTE_STOPPED, "unknown", "does not match",
                                   "Duplicate connection", "replaced"))


def _identity_key(result: Any, default: bytes) -> bytes:
    """The paired instance's key from its (checked) identity, else the handshake key."""
    ident = getattr(result, "identity", None)
    if isinstance(ident, dict) and isinstance(ident.get("instanceKeyPublic"), str):
        with contextlib.suppress(ValueError):
            return bytes.fromhex(ident["instanceKeyPublic"])
    return default

