"""The pure comm server as a cluster node (docs/cluster.md), the twin of the Rust core's
``rust/lama-net/src/cluster.rs``, on nats-py: the directory of which node holds which key's
spares is the set of NATS subscriptions ``lama.commserver.key.<hex>``; a node without a spare
of the requested key asks that subject and relays the initiator over a direct WebSocket to the
node that answered. Frames never go through NATS. Rust and pure nodes form one cluster (the
same subjects, payloads and hop field).

commserver.py calls :meth:`Cluster.spares` when a key gets its first spare or loses its last
one, :meth:`Cluster.allow` and :meth:`Cluster.lookup` instead of refusing a request, and
:meth:`Cluster.start` / :meth:`Cluster.close` with the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

from ..errors import InvalidArgumentError, TransportError

# Extra field of a forwarded communication_request: the receiving node never forwards it.
HOP_FIELD = "lamaClusterHop"
SUBJECT_PREFIX = "lama.commserver.key."
LOOKUP_TIMEOUT = 3.0
LOOKUP_RETRY_DELAY = 0.5  # after "no responders", one more lookup (as the Rust node)
_CONNECT_TIMEOUT = 5.0
_RECONNECT_WAIT = 0.25
# how long a first registration of a key waits for the node's subscription to reach NATS
SUBSCRIBE_WAIT = 1.0
# docs/cluster.md §4: lookups one client address may cause (a token bucket), and lookups of
# the whole node in flight at once; over either, the request is refused without a lookup.
# The defaults of `lama comm-server --lookup-rate/--lookup-burst/--lookups-in-flight`.
LOOKUP_RATE = 20.0
LOOKUP_BURST = 40
MAX_LOOKUPS_IN_FLIGHT = 64
_MAX_BUCKETS = 4096


def subject(key: str) -> str:
    return SUBJECT_PREFIX + key


class LookupLimiter:
    """Per-address token buckets (``LOOKUP_RATE``/s, ``LOOKUP_BURST``) plus a node-wide cap of
    lookups in flight. Memory is bounded: full (idle) buckets are dropped when there are many."""

    def __init__(self, rate: float = LOOKUP_RATE, burst: int = LOOKUP_BURST,
                 in_flight: int = MAX_LOOKUPS_IN_FLIGHT) -> None:
        self.check(rate, burst, in_flight)
        self.rate, self.burst, self.max_in_flight = float(rate), float(burst), in_flight
        self._buckets: dict[str, tuple[float, float]] = {}  # ip -> (tokens, at)
        self.in_flight = 0

    @staticmethod
    def check(rate: object, burst: object, in_flight: object) -> None:
        """InvalidArgumentError (LAMA-ARG) unless the rate is a positive finite number and
        burst and in-flight are ints of at least 1 (the Rust core's LookupLimits::check)."""
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise InvalidArgumentError(f"lookup_rate must be a positive number, got {rate!r}", "LAMA-ARG")
        for name, v in (("lookup_burst", burst), ("lookups_in_flight", in_flight)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"{name} must be at least 1, got {v!r}", "LAMA-ARG")

    def take(self, ip: str) -> bool:
        """One lookup for ``ip`` now, if allowed (the caller then calls :meth:`done`)."""
        if self.in_flight >= self.max_in_flight:
            return False
        now = time.monotonic()
        if len(self._buckets) >= _MAX_BUCKETS:
            self._buckets = {k: (tok, at) for k, (tok, at) in self._buckets.items()
                             if tok + (now - at) * self.rate < self.burst}
        tokens, at = self._buckets.get(ip, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[ip] = (tokens, now)
            return False
        self._buckets[ip] = (tokens - 1.0, now)
        self.in_flight += 1
        return True

    def done(self) -> None:
        self.in_flight -= 1


class Cluster:
    """A node's NATS side. Made by :meth:`connect` only."""

    def __init__(self, nc: Any, limiter: LookupLimiter | None = None) -> None:
        self._nc = nc
        self.advertise = ""
        self.limiter = limiter or LookupLimiter()
        self._changes: asyncio.Queue[tuple[str, bool, asyncio.Future[None]]] = asyncio.Queue()
        self._syncs: set[asyncio.Task[None]] = set()
        self._subs: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        # docs/cluster.md §2: a private subject this node subscribes to at the start; a
        # numbered message published there after a SUB comes back only once the NATS server
        # has processed that SUB (it handles one connection's operations in order). Not
        # nats-py's ``flush(timeout=)``: when its PONG comes after the timeout, nats-py sets
        # the result of the future it has cancelled, the InvalidStateError ends its read loop,
        # and the node hears nothing from NATS any more (no lookups answered) until the
        # stale-connection check reconnects, minutes later (nats-py 2.16).
        self._sync_subject = ""
        self._sync_sent = 0
        self._sync_waiting: dict[int, asyncio.Future[None]] = {}

    @classmethod
    async def connect(cls, url: str, limiter: LookupLimiter | None = None) -> Cluster:
        """Connect to NATS at ``url``: an error now if it is unreachable; afterwards the client
        reconnects forever and re-subscribes (docs/cluster.md §4). ``limiter``: the lookup
        rate limit (default: ``LookupLimiter()``, the documented defaults)."""
        import nats

        async def quiet(*_: Any) -> None:
            pass  # reconnects are expected (docs/cluster.md §4); lookups meanwhile fail

        try:
            # the first connect fails fast (two attempts); only then reconnect forever
            nc = await nats.connect(url, name="lama comm-server", connect_timeout=_CONNECT_TIMEOUT,
                                    allow_reconnect=False, max_reconnect_attempts=1,
                                    reconnect_time_wait=0.1, error_cb=quiet, disconnected_cb=quiet,
                                    reconnected_cb=quiet, closed_cb=quiet)
        except Exception as e:
            raise TransportError(f"cannot reach NATS at {url}: {e or type(e).__name__}",
                                 "LAMA-NET-CLUSTER") from None
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        nc.options["reconnect_time_wait"] = _RECONNECT_WAIT
        cluster = cls(nc, limiter)
        cluster._sync_subject = nc.new_inbox()
        try:
            await nc.subscribe(cluster._sync_subject, cb=cluster._came_back)
        except Exception as e:
            await cluster.close()
            raise TransportError(f"cannot subscribe at NATS at {url}: {e or type(e).__name__}",
                                 "LAMA-NET-CLUSTER") from None
        return cluster

    def start(self, advertise: str, has_spare: Callable[[str], bool], answered: Callable[[], None]) -> None:
        self.advertise = advertise
        self._task = asyncio.get_running_loop().create_task(self._directory(has_spare, answered))

    def spares(self, key: str, present: bool) -> asyncio.Future[None]:
        """A key got its first spare here (``True``) or lost its last one (``False``); the
        future is done once the change has been processed by the NATS server (a round trip of
        a message through it, :meth:`_synced`)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changes.put_nowait((key, present, done))
        return done

    async def _came_back(self, msg: Any) -> None:
        """A sync message of :meth:`_synced` came back (one publisher: in order)."""
        try:
            n = int(msg.data)
        except ValueError:
            return
        for k in [k for k in self._sync_waiting if k <= n]:
            back = self._sync_waiting.pop(k)
            if not back.done():
                back.set_result(None)

    async def _synced(self, done: asyncio.Future[None]) -> None:
        """``done`` is set once every operation this node sent before the call (a SUB) has
        been processed by the NATS server; waits at most ``SUBSCRIBE_WAIT`` (NATS slow or
        down: ``done`` stays open, the registration does not wait longer)."""
        self._sync_sent += 1
        n = self._sync_sent
        back: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sync_waiting[n] = back
        try:
            await self._nc.publish(self._sync_subject, str(n).encode())
            # our own future: nothing inside nats-py is cancelled when this gives up
            await asyncio.wait({back}, timeout=SUBSCRIBE_WAIT)
        except Exception:
            return
        finally:
            self._sync_waiting.pop(n, None)
        if back.done() and not done.done():
            done.set_result(None)

    async def _directory(self, has_spare: Callable[[str], bool], answered: Callable[[], None]) -> None:
        """One subscription per key with spares here, in the order the changes happened."""
        nc = self._nc
        while True:
            key, present, done = await self._changes.get()
            try:
                if not present:
                    sub = self._subs.pop(key, None)
                    if sub is not None:
                        await sub.unsubscribe()
                elif key in self._subs:
                    done.set_result(None)
                else:
                    self._subs[key] = await nc.subscribe(subject(key), cb=self._answerer(key, has_spare, answered))
                    # the registration waits for this (bounded there), not the directory
                    task = asyncio.get_running_loop().create_task(self._synced(done))
                    self._syncs.add(task)
                    task.add_done_callback(self._syncs.discard)
            except Exception:
                pass  # the connection is closed: the server is going away

    def _answerer(self, key: str, has_spare: Callable[[str], bool], answered: Callable[[], None]) -> Any:
        async def answer(msg: Any) -> None:
            # the last spare left meanwhile: stay silent (docs/cluster.md §3 step 2)
            if not msg.reply or not has_spare(key):
                return
            try:
                await self._nc.publish(msg.reply, self.advertise.encode())
            except Exception:
                return
            answered()

        return answer

    async def lookup(self, key: str) -> str | None:
        """The advertised URL of a node holding a spare of ``key``, if any answers in time."""
        from nats.errors import NoRespondersError  # nats-py: imported with the connection
        from nats.errors import TimeoutError as NatsTimeout

        try:
            try:
                msg = await self._nc.request(subject(key), b"", timeout=LOOKUP_TIMEOUT)
            except NoRespondersError:
                # asked once more (docs/cluster.md §3 step 2): a subscription not yet
                # processed by the NATS server is not an absent listener
                await asyncio.sleep(LOOKUP_RETRY_DELAY)
                msg = await self._nc.request(subject(key), b"", timeout=LOOKUP_TIMEOUT)
            except (NatsTimeout, asyncio.TimeoutError):
                # and at once after no answer in time: the server may have routed the request
                # to a subscription its node had already dropped (docs/cluster.md §4)
                msg = await self._nc.request(subject(key), b"", timeout=LOOKUP_TIMEOUT)
            url = msg.data.decode("utf-8")
        except Exception:  # no responders, timeout, NATS down or closed
            return None
        return url if url.startswith(("ws://", "wss://")) else None

    async def close(self) -> None:
        for task in (self._task, *self._syncs):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await self._nc.close()
        except Exception:
            pass
