"""The comm server and its listener client in the pure core (docs/connections.md §2), on asyncio.

The same names, behaviour, close reasons and error codes as the Rust core's
``rust/lama-net/src/commserver.rs`` and ``commlisten.rs`` (see those files for the design):

- :func:`comm_server` speaks spec connections.md §3 exactly (register → challenge →
  ``authentication_success`` in the fork form; spares indexed by key, LIFO; ping/pong;
  ``communication_request`` → ``connection_handover`` + the re-serialised request; frames relayed
  verbatim; a close on one side closes the other with code 1000 and the same reason), with the
  limits of issue 9 (auth timeout, frame size, spares per key and per address, bounded buffers,
  clean shutdown) and counters.
- :func:`comm_listen` keeps ``spares`` registered spare sockets (conn §3.2, §3.4) and hands each
  spare that received ``connection_handover`` to :meth:`CommListener.accept` as a raw
  :class:`~lama._pure.net.Transport` whose next message is the relayed
  ``communication_request``.

Back-pressure: the relay awaits each ``send`` (websockets waits while its write buffer is above
its high-water mark) before it reads the next frame, and a connection reads from its socket only
while its incoming queue (``max_queue`` frames) has room, so a slow reader holds its sender back.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import socket
from typing import Any

from ..errors import InvalidArgumentError, TransportError
from . import cluster as _cluster
from . import crypto
from . import mailbox as _mailbox
from .net import (
    DEFAULT_MAX_MESSAGE,
    REASON_LOST,
    Transport,
    _WsTransport,
    _bind,
    _max_arg,
    _ws_options,
    size_reason,
    ws_connect,
)

# Close reasons (conn §2.3: "Close called: " + message, "Terminate called: " + message).
REASON_NO_LISTENER = "Close called: No listening connection for the specified publicKey."
REASON_AUTH_FAILED = "Close called: Client authentication failed."
REASON_MALFORMED = "Close called: Received unexpected or malformed message from client."
REASON_KEY_LENGTH = "Close called: Error: A public key must be 32 bytes."
REASON_PING_TIMEOUT = "Terminate called: Ping: Connection timed out"
REASON_PONG_TIMEOUT = "Terminate called: Pong: Connection timed out"
REASON_CLOSED = "Close called."
# lama's limits (not in the reference)
REASON_AUTH_TIMEOUT = "Close called: Authentication timed out."
REASON_KEY_LIMIT = "Close called: Too many spare connections for this publicKey."
REASON_ADDRESS_LIMIT = "Close called: Too many spare connections from this address."
REASON_SHUTDOWN = "Close called: Comm server shut down."

_PING = '{"command":"ping"}'
_PONG = '{"command":"pong"}'
_COMM_PONG = '{"command":"comm_pong"}'
_HANDOVER = '{"command":"connection_handover"}'
# the listener client (conn §2.8, §3.4)
_REGISTER_TIMEOUT = 10.0
_PONG_GRACE = 4.0
_ACCEPT_BACKLOG = 16

_COUNTERS = (
    "connections", "open", "registrations", "spares", "requests", "handovers", "relays",
    "relayed_frames", "relayed_bytes", "refused", "auth_failures", "auth_timeouts", "malformed",
    "oversized", "pings", "ping_timeouts",
    # a cluster node's (docs/cluster.md; always 0 on a single node)
    "forwarded", "cluster_lookups", "cluster_answers", "cluster_throttled",
)


def _arg(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, "LAMA-ARG")


def _seconds_arg(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v <= 1e9):
        raise _arg(f"{name} must be a non-negative number of seconds, got {v!r}")
    return float(v)


def _count_arg(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise _arg(f"{name} must be a positive int, got {v!r}")
    return v


def _truncate(reason: str) -> str:
    data = reason.encode("utf-8")
    return reason if len(data) <= 123 else data[:123].decode("utf-8", "ignore")


def _parse_command(m: str | bytes) -> tuple[str, dict[str, Any]]:
    """A text message as (command, object); raises ``_Refuse`` with the close reason."""
    if not isinstance(m, str):
        raise _Refuse(REASON_MALFORMED)
    try:
        v = json.loads(m)
    except ValueError as e:
        raise _Refuse(_truncate(f"Close called: Received message that does not conform to JSON: {e}")) from None
    if not isinstance(v, dict) or not isinstance(v.get("command"), str):
        raise _Refuse(REASON_MALFORMED)
    return v["command"], v


def _key_field(obj: dict[str, Any], name: str) -> bytes:
    s = obj.get(name)
    if not isinstance(s, str) or not all(c in "0123456789abcdefABCDEF" for c in s) or len(s) % 2:
        raise _Refuse(REASON_MALFORMED)
    key = bytes.fromhex(s)
    if len(key) != 32:  # one.core ensurePublicKey (conn §3.2)
        raise _Refuse(REASON_KEY_LENGTH)
    return key


class _Refuse(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Spare:
    """A registered spare: its handler waits for ``handover`` (the request to forward and the
    future to answer once it is sent), then, relayed, for ``done`` (the relay ended)."""

    __slots__ = ("id", "ip", "t", "handover", "done")

    def __init__(self, id: int, ip: str, t: Transport) -> None:
        self.id = id
        self.ip = ip
        self.t = t
        self.handover: asyncio.Future[tuple[str, asyncio.Future[bool]]] = \
            asyncio.get_running_loop().create_future()
        self.done = asyncio.Event()


class CommServer:
    """A running comm server. Made by :func:`comm_server` only."""

    _port: int
    _url: str

    def _init(self, opts: dict[str, Any]) -> None:
        self._opts = opts
        self._public, self._secret = crypto.box_keypair()  # fresh at every start (conn §3.2)
        self._by_key: dict[str, list[_Spare]] = {}
        self._per_ip: dict[str, int] = {}
        self._next_id = 0
        self._c = dict.fromkeys(_COUNTERS, 0)
        self._live: set[Transport] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self._server: Any = None
        self._mailbox: Any = None  # lama's mailbox extension (docs/mailbox.md), if configured
        self._cluster: Any = None  # a cluster node's NATS side (docs/cluster.md), if configured

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return self._url

    def counters(self) -> dict[str, int]:
        """connections, open, registrations, spares, requests, handovers, relays,
        relayed_frames, relayed_bytes, refused, auth_failures, auth_timeouts, malformed,
        oversized, pings, ping_timeouts, forwarded, cluster_lookups, cluster_answers,
        cluster_throttled; with a mailbox also its counters (docs/mailbox.md §5)."""
        if self._mailbox is not None:
            return {**self._c, **self._mailbox.counters}
        return dict(self._c)

    async def close(self) -> None:
        """Stop accepting, close every spare and relayed pair, wait for them (idempotent)."""
        self._closing.set()
        if self._server is not None:
            self._server.close(close_connections=False)
        if self._cluster is not None:
            await self._cluster.close()  # a lookup under way fails at once
        await asyncio.gather(*(t.close(REASON_SHUTDOWN) for t in list(self._live)), return_exceptions=True)
        while self._handlers:
            await asyncio.gather(*list(self._handlers), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- spares --

    def _limit(self, key: str, ip: str) -> str | None:
        if len(self._by_key.get(key, ())) >= self._opts["max_spares_per_key"]:
            return REASON_KEY_LIMIT
        if self._per_ip.get(ip, 0) >= self._opts["max_spares_per_address"]:
            return REASON_ADDRESS_LIMIT
        return None

    def _count_ip(self, ip: str, delta: int) -> None:
        n = self._per_ip.get(ip, 0) + delta
        if n > 0:
            self._per_ip[ip] = n
        else:
            self._per_ip.pop(ip, None)

    def _pop(self, key: str) -> _Spare | None:
        lst = self._by_key.get(key)
        if not lst:
            return None
        sp = lst.pop()  # LIFO (conn §3.3)
        if not lst:
            self._gone(key)
        self._count_ip(sp.ip, -1)
        self._c["spares"] -= 1
        return sp

    def _remove(self, key: str, id: int) -> None:
        lst = self._by_key.get(key)
        if not lst:
            return
        for i, sp in enumerate(lst):
            if sp.id == id:
                del lst[i]
                if not lst:
                    self._gone(key)
                self._count_ip(sp.ip, -1)
                self._c["spares"] -= 1
                return

    def _gone(self, key: str) -> None:
        del self._by_key[key]
        if self._cluster is not None:
            self._cluster.spares(key, False)

    def _has_spare(self, key: str) -> bool:
        return bool(self._by_key.get(key))

    def _count_answer(self) -> None:
        self._c["cluster_answers"] += 1

    # -- connections --

    def _note_close(self, t: Transport) -> None:
        if t.close_reason == size_reason(self._opts["max_message"]):
            self._c["oversized"] += 1

    async def _recv_until(self, t: Transport, deadline: float) -> str | bytes | None:
        """The next message before ``deadline`` (loop time); ``TimeoutError`` after it."""
        async with asyncio.timeout_at(deadline):
            return await t.recv()

    async def _handle(self, conn: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        c = self._c
        c["connections"] += 1
        c["open"] += 1
        t = _WsTransport(conn, self._opts["max_message"])
        self._live.add(t)
        try:
            if self._closing.is_set():
                await t.close(REASON_SHUTDOWN)
                return
            deadline = asyncio.get_running_loop().time() + self._opts["auth_timeout"]
            try:
                first = await self._recv_until(t, deadline)
            except TimeoutError:
                c["auth_timeouts"] += 1
                await t.close(REASON_AUTH_TIMEOUT)
                return
            if first is None:
                self._note_close(t)
                return
            try:
                cmd, obj = _parse_command(first)
                if cmd == "register":
                    key = _key_field(obj, "publicKey")
                    await self._register(t, key, conn.remote_address, deadline)
                elif cmd == "communication_request":
                    source = _key_field(obj, "sourcePublicKey")
                    target = _key_field(obj, "targetPublicKey")
                    await self._request(t, source, target, _cluster.HOP_FIELD in obj,
                                        str(conn.remote_address[0]))
                elif self._mailbox is not None and cmd.startswith("mailbox_"):
                    await self._mailbox_request(t, cmd, obj, deadline)
                else:
                    raise _Refuse(REASON_MALFORMED)
            except (_Refuse, _mailbox.Refuse) as e:
                c["malformed"] += 1
                await t.close(e.reason)
        finally:
            self._live.discard(t)
            c["open"] -= 1
            self._handlers.discard(task)

    async def _mailbox_request(self, t: Transport, cmd: str, obj: dict[str, Any], deadline: float) -> None:
        """lama's mailbox extension (docs/mailbox.md §2): only a client that asks for it sees it."""
        try:
            await self._mailbox_serve(t, cmd, obj, deadline)
        except TransportError:
            pass  # the client went away: nothing to answer

    async def _mailbox_serve(self, t: Transport, cmd: str, obj: dict[str, Any], deadline: float) -> None:
        mb = self._mailbox
        idle = self._opts["auth_timeout"]
        if cmd == "mailbox_info":
            await t.send(_mailbox.info_message(mb))
            await t.close(REASON_CLOSED)
        elif cmd == "mailbox_deposit":
            if not await _mailbox.serve_deposit(mb, self._public, self._secret, t, obj, _key_field,
                                                self._recv_until, deadline, idle, REASON_MALFORMED):
                self._c["auth_failures"] += 1
                await t.close(REASON_AUTH_FAILED)
        elif cmd == "mailbox_fetch":
            key = _key_field(obj, "publicKey")
            if not await _mailbox.serve_fetch(mb, self._public, self._secret, t, key, self._recv_until,
                                              deadline, idle, REASON_MALFORMED):
                self._c["auth_failures"] += 1
                await t.close(REASON_AUTH_FAILED)
        else:
            raise _Refuse(REASON_MALFORMED)

    async def _register(self, t: Transport, key: bytes, peer: Any, deadline: float) -> None:
        c = self._c
        key_hex = key.hex()
        ip, port = str(peer[0]), int(peer[1])
        reason = self._limit(key_hex, ip)
        if reason is not None:
            c["refused"] += 1
            await t.close(reason)
            return
        challenge = crypto.random_bytes(64)
        try:
            sealed = crypto.box_seal_embedded(challenge, self._secret, key)
        except Exception as e:  # a key of small order: no shared secret
            await t.close(_truncate(f"Close called: Error: {e}"))
            return
        req = json.dumps({"command": "authentication_request", "publicKey": self._public.hex(),
                          "challenge": sealed.hex()}, separators=(",", ":"))
        try:
            await t.send(req)
        except TransportError:
            return
        try:
            answer = await self._recv_until(t, deadline)
        except TimeoutError:
            c["auth_timeouts"] += 1
            await t.close(REASON_AUTH_TIMEOUT)
            return
        if answer is None:
            self._note_close(t)
            return
        cmd, obj = _parse_command(answer)
        if cmd != "authentication_response" or not isinstance(obj.get("response"), str):
            raise _Refuse(REASON_MALFORMED)
        expected = bytes(b ^ 0xFF for b in challenge)  # NOT(challenge), conn §1.3
        try:
            plain = crypto.box_open_embedded(bytes.fromhex(obj["response"]), self._secret, key)
            ok = hmac.compare_digest(plain, expected)
        except Exception:
            ok = False
        if not ok:
            c["auth_failures"] += 1
            await t.close(REASON_AUTH_FAILED)
            return
        reason = self._limit(key_hex, ip)
        if reason is not None:
            c["refused"] += 1
            await t.close(reason)
            return
        self._next_id += 1
        sp = _Spare(self._next_id, ip, t)
        subscribed = None
        if key_hex not in self._by_key and self._cluster is not None:
            subscribed = self._cluster.spares(key_hex, True)
        self._by_key.setdefault(key_hex, []).append(sp)
        self._count_ip(ip, 1)
        c["spares"] += 1
        c["registrations"] += 1
        if subscribed is not None:
            # docs/cluster.md §2: a registered listener is reachable from every node at once
            await asyncio.wait({subscribed}, timeout=_cluster.SUBSCRIBE_WAIT)
        try:
            addr = ipaddress.ip_address(ip)
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
                ip = str(addr.ipv4_mapped)
        except ValueError:
            pass
        ms = int(self._opts["ping_interval"] * 1000)
        # the fork's form (conn §3.1)
        success = json.dumps({"command": "authentication_success", "pingInterval": ms, "clientIp": ip,
                              "clientPort": port}, separators=(",", ":"))
        try:
            await t.send(success)
        except TransportError:
            self._remove(key_hex, sp.id)
            return
        await self._spare(t, key_hex, sp)

    async def _spare(self, t: Transport, key_hex: str, sp: _Spare) -> None:
        """A registered spare: ping every P, dropped when a pong is R late (conn §2.8), until a
        communication_request takes it."""
        c, opts = self._c, self._opts
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + opts["ping_interval"]
        pong_due: float | None = None
        recv: asyncio.Task[str | bytes | None] | None = None
        try:
            while True:
                if recv is None:
                    recv = asyncio.ensure_future(t.recv())
                due = next_ping if pong_due is None else pong_due
                waits: set[asyncio.Future[Any]] = {recv, sp.handover}
                done, _ = await asyncio.wait(waits, timeout=max(0.0, due - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if sp.handover in done:
                    break
                if recv in done:
                    m = recv.result()
                    recv = None
                    if m is None:
                        self._remove(key_hex, sp.id)
                        self._note_close(t)
                        return
                    if _is_pong(m):
                        pong_due = None
                        next_ping = loop.time() + opts["ping_interval"]
                    continue  # anything else on a spare is ignored
                now = loop.time()
                if pong_due is None and now >= next_ping:
                    c["pings"] += 1
                    try:
                        await t.send(_PING)
                    except TransportError:
                        self._remove(key_hex, sp.id)
                        return
                    pong_due = loop.time() + opts["pong_timeout"]
                elif pong_due is not None and now >= pong_due:
                    self._remove(key_hex, sp.id)
                    c["ping_timeouts"] += 1
                    await t.close(REASON_PING_TIMEOUT)
                    return
        finally:
            if recv is not None and not recv.done():
                recv.cancel()  # websockets' recv is cancellation-safe: nothing is lost
                await asyncio.gather(recv, return_exceptions=True)
                recv = None
            if not sp.handover.done():
                sp.handover.cancel()
        request, reply = sp.handover.result()
        # a ping still outstanding waits for its pong (or the timeout)
        if pong_due is not None:
            while True:
                try:
                    m = await self._recv_until(t, pong_due)
                except TimeoutError:
                    c["ping_timeouts"] += 1
                    reply.set_result(False)
                    await t.close(REASON_PING_TIMEOUT)
                    return
                if m is None:
                    reply.set_result(False)
                    return
                if _is_pong(m):
                    break
        try:
            await t.send(_HANDOVER)
            await t.send(request)
        except TransportError:
            reply.set_result(False)
            return
        reply.set_result(True)
        # this handler (and so the socket) lives until the initiator's handler ends the relay
        await sp.done.wait()

    async def _request(self, t: Transport, source: bytes, target: bytes, hop: bool, ip: str) -> None:
        c = self._c
        c["requests"] += 1
        # re-serialised from the bytes: lowercase hex (conn §3.3)
        request = json.dumps({"command": "communication_request", "sourcePublicKey": source.hex(),
                              "targetPublicKey": target.hex()}, separators=(",", ":"))
        loop = asyncio.get_running_loop()
        while True:
            sp = self._pop(target.hex())
            if sp is None:
                # docs/cluster.md §3: another node may hold the key's spares
                if not hop and self._cluster is not None and await self._forward(t, request, target.hex(), ip):
                    return
                c["refused"] += 1
                await t.close(REASON_NO_LISTENER)
                return
            if sp.handover.done():
                continue  # that spare ended meanwhile
            reply: asyncio.Future[bool] = loop.create_future()
            sp.handover.set_result((request, reply))
            if await reply:
                try:
                    await self._relay(t, sp.t)
                finally:
                    sp.done.set()
                return

    async def _forward(self, t: Transport, request: str, key: str, ip: str) -> bool:
        """docs/cluster.md §3: relay initiator ``t`` through the node that holds ``key``'s
        spare; ``False`` (the caller refuses) when the lookup is over the rate limit (§4), no
        node has the key or its node cannot be reached."""
        c, cl = self._c, self._cluster
        if not cl.limiter.take(ip):
            c["cluster_throttled"] += 1
            return False
        try:
            c["cluster_lookups"] += 1
            url = await cl.lookup(key)
        finally:
            cl.limiter.done()
        if url is None or url == cl.advertise:  # our own stale answer: no spare here any more
            return False
        try:
            async with asyncio.timeout(self._opts["auth_timeout"]):
                remote = await ws_connect(url, max_message=self._opts["max_message"])
        except (TransportError, TimeoutError, ValueError, OSError):
            return False
        # mark the hop: the remote node answers from its own spares only
        try:
            await remote.send(request[:-1] + f',"{_cluster.HOP_FIELD}":1}}')
        except TransportError:
            return False
        self._live.add(remote)
        c["forwarded"] += 1
        try:
            await self._relay(t, remote)
        finally:
            self._live.discard(remote)
        return True

    async def _relay(self, a: Transport, b: Transport) -> None:
        """Forward frames both ways until one side closes; close the other with its reason."""
        c = self._c
        c["handovers"] += 1
        c["relays"] += 1
        pumps = [asyncio.ensure_future(self._pump(a, b)), asyncio.ensure_future(self._pump(b, a))]
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            reason = next(iter(done)).result()
        finally:
            for p in pumps:
                if not p.done():
                    p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        if reason == size_reason(self._opts["max_message"]):
            c["oversized"] += 1
        await asyncio.gather(a.close(reason), b.close(reason), return_exceptions=True)
        c["relays"] -= 1

    async def _pump(self, src: Transport, dst: Transport) -> str:
        c = self._c
        while True:
            m = await src.recv()
            if m is None:
                return src.close_reason if src.close_reason is not None else REASON_LOST
            try:
                # waits while dst is behind: src is then not read (back-pressure)
                await dst.send(m)
            except TransportError:
                return dst.close_reason if dst.close_reason is not None else REASON_LOST
            c["relayed_frames"] += 1
            c["relayed_bytes"] += len(m.encode("utf-8")) if isinstance(m, str) else len(m)


def _is_pong(m: str | bytes) -> bool:
    try:
        return _parse_command(m)[0] == "pong"
    except _Refuse:
        return False


async def comm_server(host: str, port: int, *, ping_interval: float = 25.0, pong_timeout: float = 1.0,
                      auth_timeout: float = 10.0, max_message: int = DEFAULT_MAX_MESSAGE,
                      max_spares_per_key: int = 16, max_spares_per_address: int = 256,
                      mailbox_dir: str | None = None, mailbox_max_items: int = _mailbox.DEFAULT_MAX_ITEMS,
                      mailbox_max_bytes: int = _mailbox.DEFAULT_MAX_BYTES,
                      mailbox_ttl: float = _mailbox.DEFAULT_TTL,
                      mailbox_total_items: int = _mailbox.DEFAULT_TOTAL_ITEMS,
                      mailbox_total_bytes: int = _mailbox.DEFAULT_TOTAL_BYTES,
                      nats: str | None = None, advertise: str | None = None,
                      lookup_rate: float | None = None, lookup_burst: int | None = None,
                      lookups_in_flight: int | None = None) -> CommServer:
    """Serve the comm-server protocol (conn §3) on ``host``:``port`` (0: any free port); with
    ``mailbox_dir`` also lama's store-and-forward mailbox (docs/mailbox.md). ``nats``: the NATS
    URL of a cluster (docs/cluster.md); ``advertise``: the URL other nodes reach this one at
    (default: its own ``url``); ``lookup_rate``/``lookup_burst``/``lookups_in_flight``: the
    cluster lookup rate limit (docs/cluster.md §4; ``None``: the default)."""
    from websockets.asyncio.server import serve

    limiter = _cluster.LookupLimiter(
        _cluster.LOOKUP_RATE if lookup_rate is None else lookup_rate,
        _cluster.LOOKUP_BURST if lookup_burst is None else lookup_burst,
        _cluster.MAX_LOOKUPS_IN_FLIGHT if lookups_in_flight is None else lookups_in_flight)

    if nats is not None and not isinstance(nats, str):
        raise _arg(f"nats (a NATS URL) is a str, got {type(nats).__name__}")
    if advertise is not None and not isinstance(advertise, str):
        raise _arg(f"advertise (a ws:// URL) is a str, got {type(advertise).__name__}")

    if not isinstance(host, str):
        raise _arg(f"a host is a str, got {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _arg(f"a port is an int in 0..65535, got {port!r}")
    opts = dict(
        ping_interval=_seconds_arg("ping_interval", ping_interval),
        pong_timeout=_seconds_arg("pong_timeout", pong_timeout),
        auth_timeout=_seconds_arg("auth_timeout", auth_timeout),
        max_message=_max_arg(max_message),
        max_spares_per_key=_count_arg("max_spares_per_key", max_spares_per_key),
        max_spares_per_address=_count_arg("max_spares_per_address", max_spares_per_address),
    )
    mailbox = None
    if mailbox_dir is not None:
        if not isinstance(mailbox_dir, str):
            raise _arg(f"mailbox_dir is a str, got {type(mailbox_dir).__name__}")
        ttl = _seconds_arg("mailbox_ttl", mailbox_ttl)
        if ttl <= 0:
            raise _arg(f"mailbox_ttl must be positive, got {mailbox_ttl!r}")
        mailbox = await asyncio.to_thread(
            _mailbox.MailboxStore, mailbox_dir, _count_arg("mailbox_max_items", mailbox_max_items),
            _count_arg("mailbox_max_bytes", mailbox_max_bytes), ttl,
            _count_arg("mailbox_total_items", mailbox_total_items),
            _count_arg("mailbox_total_bytes", mailbox_total_bytes))
    sock = await _bind(host, port)
    try:
        cluster = None if nats is None else await _cluster.Cluster.connect(nats, limiter)
    except BaseException:
        sock.close()
        raise
    server = CommServer.__new__(CommServer)
    server._init(opts)
    server._mailbox = mailbox
    server._cluster = cluster
    ws_opts = _ws_options(int(opts["max_message"]))
    ws_opts["open_timeout"] = max(opts["auth_timeout"], 0.001)
    # a relayed socket holds at most a few unread frames (websockets counts frames, not bytes)
    ws_opts["max_queue"] = 4
    server._server = await serve(server._handle, sock=sock, **ws_opts)
    bound = sock.getsockname()
    server._port = bound[1]
    server._url = f"ws://[{bound[0]}]:{bound[1]}" if sock.family == socket.AF_INET6 else f"ws://{bound[0]}:{bound[1]}"
    if cluster is not None:
        cluster.start(advertise or server._url, server._has_spare, server._count_answer)
    return server


# -- the listener client ---------------------------------------------------------------------


class CommListener:
    """Keeps spare sockets registered at a comm server. Made by :func:`comm_listen` only."""

    def _init(self, url: str, public: bytes, secret: bytes, spares: int, delay: float) -> None:
        self._url = url
        self._public = public
        self._secret = secret
        self._target = spares
        self._delay = delay
        self._state = "connecting"
        self._accepted: asyncio.Queue[Transport] = asyncio.Queue(_ACCEPT_BACKLOG)
        self._closed = asyncio.Event()
        self._events: asyncio.Queue[str] = asyncio.Queue()
        self._first = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._manager = asyncio.get_running_loop().create_task(self._manage())

    @property
    def state(self) -> str:
        """``"not_listening"`` | ``"connecting"`` | ``"listening"`` (conn §3.4)."""
        return self._state

    async def accept(self) -> Transport:
        """The next spare after its ``connection_handover``; its next message is the relayed
        ``communication_request``. ``TransportError LAMA-NET-CLOSED`` once closed."""
        if self._closed.is_set():
            raise TransportError("the comm listener is closed", "LAMA-NET-CLOSED")
        get = asyncio.ensure_future(self._accepted.get())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({get, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            t = get.result()
            if not self._closed.is_set():
                return t
            await t.close(REASON_CLOSED)
        raise TransportError("the comm listener is closed", "LAMA-NET-CLOSED")

    async def close(self) -> None:
        """Close every spare (and handed-over spares nobody accepted); wait for the tasks."""
        self._closed.set()
        await asyncio.gather(self._manager, *list(self._tasks), return_exceptions=True)
        while not self._accepted.empty():
            await self._accepted.get_nowait().close(REASON_CLOSED)
        self._state = "not_listening"

    async def _manage(self) -> None:
        loop = asyncio.get_running_loop()
        registered = 0
        connecting = False
        retry_at: float | None = None
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while True:
                if retry_at is not None and loop.time() >= retry_at:
                    retry_at = None
                if not connecting and retry_at is None and registered < self._target:
                    connecting = True
                    task = loop.create_task(self._spare())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                self._state = "listening" if registered > 0 else "connecting"
                ev = asyncio.ensure_future(self._events.get())
                timeout = None if retry_at is None else max(0.0, retry_at - loop.time())
                done, _ = await asyncio.wait({ev, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not ev.done():
                    ev.cancel()
                    await asyncio.gather(ev, return_exceptions=True)
                if closed in done:
                    break
                if ev not in done or ev.cancelled():
                    continue
                kind = ev.result()
                if kind == "registered":
                    connecting = False
                    registered += 1
                    self._state = "listening"  # before comm_listen's caller reads it
                    self._first.set()
                elif kind == "failed":
                    connecting = False
                    retry_at = loop.time() + self._delay
                    self._first.set()
                elif kind == "lost":
                    registered -= 1
                    if retry_at is None:
                        retry_at = loop.time() + self._delay
                elif kind == "handed_over":
                    registered -= 1
        finally:
            closed.cancel()
            self._state = "not_listening"
            self._first.set()

    async def _register(self) -> tuple[Transport, float]:
        def fail(m: str) -> TransportError:
            return TransportError(f"comm server registration failed: {m}", "LAMA-NET-REFUSED")

        t = await ws_connect(self._url)
        try:
            await t.send(json.dumps({"command": "register", "publicKey": self._public.hex()}, separators=(",", ":")))
            m = await t.recv()
            if m is None:
                raise fail(t.close_reason or "")
            cmd, obj = _client_command(m)
            try:
                server_pk = bytes.fromhex(obj["publicKey"])
                challenge = bytes.fromhex(obj["challenge"])
            except (KeyError, TypeError, ValueError):
                cmd = ""
            if cmd != "authentication_request":
                await t.close("Close called: Error: unexpected message")
                raise fail("expected authentication_request")
            # decrypt, complement every byte, re-encrypt with a fresh nonce (conn §1.3)
            try:
                plain = crypto.box_open_embedded(challenge, self._secret, server_pk)
            except Exception as e:
                await t.close(_truncate(f"Close called: Error: {e}"))
                raise fail("the challenge does not decrypt") from None
            response = crypto.box_seal_embedded(bytes(b ^ 0xFF for b in plain), self._secret, server_pk)
            await t.send(json.dumps({"command": "authentication_response", "response": response.hex()},
                                    separators=(",", ":")))
            m = await t.recv()
            if m is None:
                raise fail(t.close_reason or "")
            cmd, obj = _client_command(m)
            ms = obj.get("pingInterval")
            if cmd != "authentication_success" or isinstance(ms, bool) or not isinstance(ms, (int, float)) \
                    or not 0 <= ms < 1e12:
                await t.close("Close called: Error: unexpected message")
                raise fail("expected authentication_success with pingInterval")
            return t, ms / 1000.0
        except BaseException:
            if t.close_reason is None:
                await t.close(REASON_CLOSED)
            raise

    async def _spare(self) -> None:
        ev = self._events.put_nowait
        try:
            async with asyncio.timeout(_REGISTER_TIMEOUT):
                t, ping_interval = await self._register()
        except asyncio.CancelledError:
            raise
        except Exception:
            ev("failed")
            return
        if self._closed.is_set():
            await t.close(REASON_CLOSED)
            return
        ev("registered")
        grace = ping_interval + _PONG_GRACE
        loop = asyncio.get_running_loop()
        dead_at = loop.time() + grace
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while True:
                recv = asyncio.ensure_future(t.recv())
                done, _ = await asyncio.wait({recv, closed}, timeout=max(0.0, dead_at - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    await asyncio.gather(recv, return_exceptions=True)
                    if closed in done:
                        await t.close(REASON_CLOSED)
                        return
                    await t.close(REASON_PONG_TIMEOUT)
                    ev("lost")
                    return
                m = recv.result()
                if m is None:
                    ev("lost")
                    return
                try:
                    cmd = _client_command(m)[0]
                except ValueError:
                    continue  # anything else before a handover is ignored
                if cmd == "ping":
                    dead_at = loop.time() + grace
                    reply = _PONG
                elif cmd == "comm_ping":
                    reply = _COMM_PONG
                elif cmd == "connection_handover":
                    ev("handed_over")
                    # the next message (the relayed communication_request) stays unread; a full
                    # backlog holds this task until `accept`
                    put = asyncio.ensure_future(self._accepted.put(t))
                    await asyncio.wait({put, closed}, return_when=asyncio.FIRST_COMPLETED)
                    if not put.done():
                        put.cancel()
                        await t.close(REASON_CLOSED)
                    return
                else:
                    continue
                try:
                    await t.send(reply)
                except TransportError:
                    ev("lost")
                    return
        finally:
            closed.cancel()


def _client_command(m: str | bytes) -> tuple[str, dict[str, Any]]:
    if not isinstance(m, str):
        raise ValueError("binary")
    v = json.loads(m)
    if not isinstance(v, dict) or not isinstance(v.get("command"), str):
        raise ValueError("no command")
    return v["command"], v


async def comm_listen(url: str, public_key: bytes, secret_key: bytes, *, spares: int = 2,
                      reconnect_delay: float = 10.0) -> CommListener:
    """Keep ``spares`` spare sockets registered at the comm server ``url`` for the X25519 key
    pair; returns once the first registration attempt ended (listening, or still trying)."""
    if not isinstance(url, str):
        raise _arg(f"a URL is a str, got {type(url).__name__}")
    if url[:5].lower() != "ws://":
        raise _arg(f"only ws:// URLs are supported, got {url!r}")
    for name, k in (("public_key", public_key), ("secret_key", secret_key)):
        if not isinstance(k, bytes):
            raise _arg(f"{name} is bytes, got {type(k).__name__}")
        if len(k) != 32:
            raise _arg(f"{name} is 32 bytes, got {len(k)}")
    if crypto.box_public_from_secret(secret_key) != public_key:
        raise _arg("the secret key does not belong to the public key")
    spares = _count_arg("spares", spares)
    delay = _seconds_arg("reconnect_delay", reconnect_delay)
    listener = CommListener.__new__(CommListener)
    listener._init(url, public_key, secret_key, spares, delay)
    await listener._first.wait()
    return listener


__all__ = ["CommListener", "CommServer", "comm_listen", "comm_server"]
