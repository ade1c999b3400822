"""Transports and the session driver of the pure core (docs/chum-session.md §3), on asyncio.

The same names and behaviour as the Rust core's ``lama-net`` (rust/lama-net): a
:class:`Transport` carries ordered text and binary messages and closes with a reason that
reaches the peer; :func:`memory_pair` connects two in memory through bounded buffers,
:func:`ws_connect` / :func:`ws_listen` speak plain WebSocket (the ``websockets`` package).
:func:`spawn_session` drives a sans-I/O session (anything with the ``ChumSession`` methods)
over a transport in an asyncio task.

Shared semantics (both cores):

- ``send`` waits while the peer is behind; it raises ``TransportError`` ``LAMA-NET-CLOSED``
  once the transport is closed by either side.
- A message longer than ``max_message`` bytes is refused where it is found: that side closes
  with the reason :func:`size_reason` (WebSocket close code 1009), seen by both sides; a sender
  also gets ``TransportError`` ``LAMA-NET-SIZE``.
- ``close(reason)`` is idempotent; the reason, cut to 123 bytes of UTF-8 (the room in a
  WebSocket close frame, RFC 6455 §5.5), becomes ``close_reason`` on both sides. After a local
  close ``recv`` returns ``None`` at once; after the peer's close it still returns what arrived
  before, then ``None``. A connection that ends without a close reads as ``"connection lost"``.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time
from typing import Any, Callable

from ..errors import InvalidArgumentError, LamaError, TransportError

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
MAX_REASON = 123
REASON_LOST = "connection lost"
REASON_CANCELLED = "cancelled"
REASON_FAILED = "session failed"
# Byte credits of one direction of a memory pair, and the fixed cost of a message (so many
# tiny messages are bounded too); the Rust core's pipe.rs uses the same numbers.
_BUDGET = 1 << 20
_OVERHEAD = 64
_CLOSE_TIMEOUT = 2.0
_CONNECT_TIMEOUT = 10.0
_FLUSH_TIMEOUT = 5.0
_CODE_NORMAL = 1000
_CODE_GOING_AWAY = 1001
_CODE_TOO_BIG = 1009
_ACCEPT_BACKLOG = 64


def size_reason(max_message: int) -> str:
    return f"LAMA-NET-SIZE: message exceeds the limit of {max_message} bytes"


def _arg(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, "LAMA-ARG")


def _reason_arg(reason: object) -> str:
    """A close reason cut to MAX_REASON bytes of UTF-8 at a character boundary."""
    if not isinstance(reason, str):
        raise _arg(f"a close reason is a str, got {type(reason).__name__}")
    try:
        data = reason.encode("utf-8")
    except UnicodeEncodeError:
        raise _arg("a close reason must be valid Unicode (no lone surrogates)") from None
    if len(data) <= MAX_REASON:
        return reason
    return data[:MAX_REASON].decode("utf-8", "ignore")


def _max_arg(max_message: object) -> int:
    if isinstance(max_message, bool) or not isinstance(max_message, int) or max_message < 1:
        raise _arg(f"max_message must be a positive int, got {max_message!r}")
    return max_message


def _message_arg(msg: object) -> tuple[str | bytes, int]:
    """The message as sent (str = text frame) and its length in bytes."""
    if isinstance(msg, str):
        try:
            return msg, len(msg.encode("utf-8"))
        except UnicodeEncodeError:
            raise _arg("a text message must be valid Unicode (no lone surrogates)") from None
    if isinstance(msg, bytes):
        return msg, len(msg)
    if isinstance(msg, (bytearray, memoryview)):
        data = bytes(msg)
        return data, len(data)
    raise _arg(f"a message is str or bytes, got {type(msg).__name__}")


def _closed_error(reason: str | None) -> TransportError:
    if reason is None:
        reason = REASON_LOST
    text = f"transport closed: {reason}" if reason else "transport closed"
    return TransportError(text, "LAMA-NET-CLOSED")


def _size_error(n: int, max_message: int) -> TransportError:
    return TransportError(f"message of {n} bytes exceeds the limit of {max_message} bytes", "LAMA-NET-SIZE")


class Transport:
    """Ordered text (``str``) and binary (``bytes``) messages; closes with a reason.

    Made by :func:`memory_pair`, :func:`ws_connect` and :meth:`Listener.accept` only."""

    async def send(self, msg: str | bytes) -> None:
        """Send one message, waiting while the peer's buffer is full."""
        raise NotImplementedError

    async def recv(self) -> str | bytes | None:
        """The next message, or ``None`` once closed."""
        raise NotImplementedError

    async def close(self, reason: str = "") -> None:
        """Close with ``reason`` (idempotent)."""
        raise NotImplementedError

    @property
    def close_reason(self) -> str | None:
        """The close reason once closed (by either side), else ``None``."""
        raise NotImplementedError


# -- in-memory pair --------------------------------------------------------------------------

class _Refused(Exception):
    pass


class _Pipe:
    """One direction of a memory pair: a queue bounded by byte credits (see pipe.rs)."""

    __slots__ = ("_q", "_credits", "_refused", "_ended", "_getters", "_putters")

    def __init__(self) -> None:
        self._q: collections.deque[tuple[str | bytes | None, Any]] = collections.deque()
        self._credits = _BUDGET
        self._refused = False
        self._ended = False
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        for f in waiters:
            if not f.done():
                f.set_result(None)
        waiters.clear()

    def try_put(self, msg: str | bytes, cost: int) -> bool:
        if self._refused:
            raise _Refused
        if self._credits < cost:
            return False
        self._credits -= cost
        self._q.append((msg, cost))
        self._wake(self._getters)
        return True

    async def put(self, msg: str | bytes, cost: int) -> None:
        while not self.try_put(msg, cost):
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            await fut

    def put_close(self, code: int, reason: str) -> None:
        if not self._ended:
            self._q.append((None, (code, reason)))
            self._wake(self._getters)

    def refuse(self) -> None:
        """Refuse further messages; waiting senders fail."""
        self._refused = True
        self._wake(self._putters)

    def end(self) -> None:
        """The sender is gone: after what is queued, the reader sees the end."""
        self._ended = True
        self._wake(self._getters)

    def interrupt(self) -> None:
        self._wake(self._getters)

    def take(self) -> tuple[str | bytes | None, Any] | None:
        if not self._q:
            return None
        item = self._q.popleft()
        if item[0] is not None:
            self._credits += item[1]
            self._wake(self._putters)
        return item

    async def wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._getters.append(fut)
        await fut

    @property
    def ended(self) -> bool:
        return self._ended and not self._q


class _State:
    """Close state shared with whoever learns about the closing (the memory peer)."""

    __slots__ = ("reason",)

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> bool:
        if self.reason is not None:
            return False
        self.reason = reason
        return True


class _MemoryTransport(Transport):
    def __init__(self, state: _State, peer: _State, out: _Pipe, inc: _Pipe, max_message: int) -> None:
        self._state = state
        self._peer = peer
        self._out = out
        self._inc = inc
        self._max = max_message
        self._local_closed = False
        self._eof = False

    async def send(self, msg: str | bytes) -> None:
        msg, n = _message_arg(msg)
        if self._state.reason is not None:
            raise _closed_error(self._state.reason)
        if n > self._max:
            self._close_now(_CODE_TOO_BIG, size_reason(self._max))
            raise _size_error(n, self._max)
        cost = min(n + _OVERHEAD, _BUDGET)
        try:
            if not self._out.try_put(msg, cost):
                await self._out.put(msg, cost)
        except _Refused:
            raise _closed_error(self._state.reason) from None

    async def recv(self) -> str | bytes | None:
        while True:
            if self._local_closed or self._eof:
                return None
            item = self._inc.take()
            if item is None:
                if self._inc.ended:
                    self._state.set(REASON_LOST)
                    self._eof = True
                    return None
                await self._inc.wait()
                continue
            msg, extra = item
            if msg is not None:
                return msg
            self._state.set(extra[1])
            self._eof = True
            return None

    async def close(self, reason: str = "") -> None:
        self._close_now(_CODE_NORMAL, _reason_arg(reason))

    def _close_now(self, code: int, reason: str) -> None:
        if self._local_closed:
            return
        self._local_closed = True
        initiated = self._state.set(reason)
        self._inc.refuse()
        self._inc.interrupt()
        if initiated:
            self._peer.set(reason)
            self._out.put_close(code, reason)
        self._out.refuse()

    @property
    def close_reason(self) -> str | None:
        return self._state.reason

    def __del__(self) -> None:
        # dropped without close: the peer sees "connection lost" (as the Rust core's Drop)
        try:
            if not self._local_closed:
                self._local_closed = True
                if self._state.set(REASON_LOST):
                    self._peer.set(REASON_LOST)
                self._out.end()
                self._inc.refuse()
        except Exception:
            pass


def memory_pair(*, max_message: int = DEFAULT_MAX_MESSAGE) -> tuple[Transport, Transport]:
    """Two connected in-memory transports with bounded buffers."""
    max_message = _max_arg(max_message)
    a_out, b_out = _Pipe(), _Pipe()
    a_state, b_state = _State(), _State()
    a = _MemoryTransport(a_state, b_state, a_out, b_out, max_message)
    b = _MemoryTransport(b_state, a_state, b_out, a_out, max_message)
    return a, b


# -- WebSocket ---------------------------------------------------------------------------------

def _ws_options(max_message: int) -> dict[str, Any]:
    # no compression (the Rust core has none; CHUM payloads are mostly hashes), no keepalive
    # pings (sessions time their requests themselves), the size limit on every message
    return dict(max_size=max_message, compression=None, ping_interval=None,
                close_timeout=_CLOSE_TIMEOUT, max_queue=64)


class _WsTransport(Transport):
    def __init__(self, conn: Any, max_message: int) -> None:
        from websockets.frames import CloseCode

        self._conn = conn
        self._max = max_message
        self._reason: str | None = None
        self._local_closed = False
        # the library refuses a message above max_size with its own close reason: give it
        # lama's, so both cores close with the same words
        proto = conn.protocol
        library_fail = proto.fail

        def fail(code: int, reason: str = "") -> None:
            if code == CloseCode.MESSAGE_TOO_BIG:
                reason = size_reason(max_message)
            library_fail(code, reason)

        proto.fail = fail

    async def send(self, msg: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        msg, n = _message_arg(msg)
        reason = self.close_reason
        if reason is not None:
            raise _closed_error(reason)
        if n > self._max:
            await self._close(_CODE_TOO_BIG, size_reason(self._max))
            raise _size_error(n, self._max)
        try:
            await self._conn.send(msg)
        except ConnectionClosed:
            raise _closed_error(self.close_reason) from None

    async def recv(self) -> str | bytes | None:
        from websockets.exceptions import ConnectionClosed

        if self._local_closed:
            return None
        try:
            return await self._conn.recv()
        except ConnectionClosed:
            return None

    async def close(self, reason: str = "") -> None:
        await self._close(_CODE_NORMAL, _reason_arg(reason))

    async def _close(self, code: int, reason: str) -> None:
        if self._local_closed:
            return
        self._local_closed = True
        if self.close_reason is None:
            self._reason = reason
            close = self._conn.close(code, reason)
        else:
            close = self._conn.close()
        # websockets writes the close frame after what is queued and waits for the socket to
        # drain without a time limit: a peer that does not read would hold close() forever.
        # As the Rust core (transport.rs close_with), give up after the close handshake's time.
        try:
            await asyncio.wait_for(close, _CLOSE_TIMEOUT + 1.0)
        except asyncio.TimeoutError:
            self._conn.transport.abort()

    @property
    def close_reason(self) -> str | None:
        if self._reason is not None:
            return self._reason
        proto = self._conn.protocol
        if proto.close_rcvd is not None:
            return _reason_arg(proto.close_rcvd.reason)
        if proto.close_sent is not None:
            return _reason_arg(proto.close_sent.reason)
        from websockets.protocol import State

        if proto.state is State.CLOSED:
            return REASON_LOST
        return None


async def ws_connect(url: str, *, max_message: int = DEFAULT_MAX_MESSAGE) -> Transport:
    """Connect to a ``ws://`` URL."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidURI, WebSocketException

    max_message = _max_arg(max_message)
    if not isinstance(url, str):
        raise _arg(f"a URL is a str, got {type(url).__name__}")
    if url[:5].lower() != "ws://":
        raise _arg(f"only ws:// URLs are supported, got {url!r}")
    try:
        conn = await connect(url, open_timeout=_CONNECT_TIMEOUT, **_ws_options(max_message))
    except InvalidURI as e:
        raise _arg(f"invalid URL {url!r}: {e}") from None
    except (OSError, asyncio.TimeoutError, WebSocketException) as e:
        raise TransportError(f"cannot connect to {url}", "LAMA-NET-CONNECT") from e
    return _WsTransport(conn, max_message)


class Listener:
    """A WebSocket listener bound to one address. Made by :func:`ws_listen` only."""

    _max: int

    def _init(self, server: Any, port: int) -> None:
        self._server = server
        self._port = port
        self._queue: asyncio.Queue[Transport | None] = asyncio.Queue(_ACCEPT_BACKLOG)
        self._closed = False

    @property
    def port(self) -> int:
        return self._port

    async def accept(self) -> Transport:
        """The next connection (its WebSocket handshake done)."""
        if self._closed:
            raise TransportError("the listener is closed", "LAMA-NET-CLOSED")
        t = await self._queue.get()
        if t is None:
            self._queue.put_nowait(None)  # wake the next waiter too
            raise TransportError("the listener is closed", "LAMA-NET-CLOSED")
        return t

    async def close(self) -> None:
        """Stop listening. Accepted connections stay open; handshaken ones not yet accepted are
        closed."""
        if self._closed:
            return
        self._closed = True
        self._server.close(close_connections=False)
        waiting = []
        while not self._queue.empty():
            t = self._queue.get_nowait()
            if t is not None:
                waiting.append(t)
        for t in waiting:
            await t.close(REASON_LOST)
        self._queue.put_nowait(None)

    async def _handle(self, conn: Any) -> None:
        t = _WsTransport(conn, self._max)
        if self._closed:
            await t.close(REASON_LOST)
            return
        await self._queue.put(t)
        # returning would close the connection: it lives until either side closes it
        await conn.wait_closed()


async def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to the first address ``host`` resolves to (ws_listen, comm_server): the
    caller listens on it. ``LAMA-ARG`` for a host that does not resolve, ``LAMA-NET-LISTEN``
    for an address that cannot be bound."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as e:
        raise _arg(f"cannot resolve host {host!r}: {e}") from None
    if not infos:
        raise _arg(f"host {host!r} has no address")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise TransportError(f"cannot listen on {addr}: {e}", "LAMA-NET-LISTEN") from None
    return sock


async def ws_listen(host: str, port: int, *, max_message: int = DEFAULT_MAX_MESSAGE) -> Listener:
    """Listen on exactly ``host`` (the first address it resolves to) and ``port`` (0: any free
    port)."""
    from websockets.asyncio.server import serve

    max_message = _max_arg(max_message)
    if not isinstance(host, str):
        raise _arg(f"a host is a str, got {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise _arg(f"a port is an int in 0..65535, got {port!r}")
    sock = await _bind(host, port)
    listener = Listener.__new__(Listener)
    listener._max = max_message

    async def handler(conn: Any) -> None:
        await listener._handle(conn)

    server = await serve(handler, sock=sock, **_ws_options(max_message))
    listener._init(server, sock.getsockname()[1])
    return listener


# -- the driver --------------------------------------------------------------------------------

class _StoreWatch:
    """Sets an asyncio event when a store's event feed moved. A commit of this process sets it
    from the committing thread itself (``Store._on_commit``: no hop through a watcher thread,
    so a NOTIFY of a new root leaves right after the commit, issue 10); a thread following a
    subscription (``Subscription.wait`` blocks) sees the commits of other processes within its
    wait slice."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.moved = asyncio.Event()
        self._stop = False
        self._seen = 0  # the newest sequence number reported (a commit wakes the loop once)
        self._lock = threading.Lock()
        sub = store.subscribe()
        self._seen = sub.position
        hook = getattr(store, "_on_commit", None)  # the pure Store's; a stand-in may lack it
        self._unhook: Callable[[], None] = (hook(lambda seq: self._bump(seq, loop)) if hook
                                            else (lambda: None))
        self._thread = threading.Thread(target=self._follow, args=(sub, loop), daemon=True,
                                        name="lama-store-watch")
        self._thread.start()

    def _bump(self, seq: int, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if seq <= self._seen or self._stop:
                return
            self._seen = seq
        try:
            loop.call_soon_threadsafe(self.moved.set)
        except RuntimeError:  # the loop is closed
            pass

    def _follow(self, sub: Any, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._stop:
                try:
                    events = sub.wait(0.2, 4096)
                except LamaError:
                    return  # the store is gone or broken: nothing more to watch
                if events and not self._stop:
                    self._bump(events[-1][0], loop)
        finally:
            sub.close()

    def stop(self) -> None:
        self._stop = True
        self._unhook()


class SessionTask:
    """A session running over a transport. Made by :func:`spawn_session` only."""

    def _start(self, session: Any, transport: Transport, store: Any) -> None:
        self._session = session
        self._transport = transport
        self._events: collections.deque[Any] = collections.deque()
        self._events_ready = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self._stats: dict[str, int] | None = None
        self._cancel = asyncio.Event()
        self._watch = _StoreWatch(store, asyncio.get_running_loop()) if store is not None else None
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def events(self) -> list[tuple[str, dict[str, Any]]] | None:
        """The events since the last call (waits for one); ``None`` once the session ended and
        every event was returned."""
        while not self._events:
            if self._done:
                return None
            self._events_ready.clear()
            await self._events_ready.wait()
        out = list(self._events)
        self._events.clear()
        return out

    async def wait(self) -> dict[str, int]:
        """Wait for the end of the session; its statistics."""
        await asyncio.shield(self._task)
        if self._error is not None:
            raise self._error
        return dict(self._stats or {})

    def cancel(self) -> None:
        """End the session: the transport closes with ``"cancelled"``."""
        self._cancel.set()

    def _push_events(self) -> None:
        evs = self._session.poll_events()
        if evs:
            self._events.extend(evs)
            self._events_ready.set()

    async def _run(self) -> None:
        t = self._transport
        reason = REASON_FAILED
        try:
            await self._drive()
            reason = self._session.close_reason or ""
            self._stats = _stats_of(self._session)
        except Exception as e:  # a broken session object: end it, report it from wait()
            self._error = e
        finally:
            if self._watch is not None:
                self._watch.stop()
            await t.close(reason)
            self._done = True
            self._events_ready.set()

    async def _drive(self) -> None:
        s, t = self._session, self._transport
        now = time.monotonic
        lost = lambda: t.close_reason if t.close_reason is not None else REASON_LOST  # noqa: E731
        s.start(now())
        out: collections.deque[str | bytes] = collections.deque()
        sender: asyncio.Task[None] | None = None
        receiver: asyncio.Task[str | bytes | None] | None = None
        moved: asyncio.Task[Any] | None = None
        cancel: asyncio.Task[Any] | None = asyncio.ensure_future(self._cancel.wait())
        is_open = True

        async def send_all() -> None:
            while out:
                await t.send(out.popleft())

        try:
            while True:
                out.extend(s.poll_transmit())
                if not is_open:
                    out.clear()
                elif out and sender is None:
                    sender = asyncio.ensure_future(send_all())
                self._push_events()
                if s.finished:
                    break
                deadline = s.poll_timeout()
                if not is_open and sender is None and deadline is None:
                    break  # closed and no deadline: nothing can wake the session again
                waits: set[asyncio.Future[Any]] = set()
                if sender is not None:
                    waits.add(sender)
                if is_open:
                    if receiver is None:
                        receiver = asyncio.ensure_future(t.recv())
                    waits.add(receiver)
                if self._watch is not None:
                    if moved is None:
                        moved = asyncio.ensure_future(self._watch.moved.wait())
                    waits.add(moved)
                if cancel is not None:
                    waits.add(cancel)
                timeout = None if deadline is None else max(0.0, deadline - now())
                done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if sender is not None and sender in done:
                    exc = sender.exception()
                    sender = None
                    if exc is not None and is_open:
                        if not isinstance(exc, TransportError):
                            raise exc
                        is_open = False
                        s.connection_closed(lost(), now())
                if receiver is not None and receiver in done:
                    msg = receiver.result()
                    receiver = None
                    if msg is None:
                        is_open = False
                        s.connection_closed(lost(), now())
                    elif isinstance(msg, str):
                        s.receive_text(msg, now())
                    else:
                        s.receive_binary(msg, now())
                if moved is not None and moved in done:
                    moved = None
                    assert self._watch is not None
                    self._watch.moved.clear()
                    s.store_changed(now())
                if cancel is not None and cancel in done:
                    cancel = None
                    await t.close(REASON_CANCELLED)
                    if is_open:
                        is_open = False
                        s.connection_closed(REASON_CANCELLED, now())
                if deadline is not None and now() >= deadline:
                    s.handle_timeout(now())
            # the last messages (a FIN answer, an error), then the close
            out.extend(s.poll_transmit())
            if is_open and (sender is not None or out):
                try:
                    if sender is None:
                        sender = asyncio.ensure_future(send_all())
                    await asyncio.wait_for(asyncio.shield(sender), _FLUSH_TIMEOUT)
                except (TransportError, asyncio.TimeoutError):
                    pass
            self._push_events()
        finally:
            for task in (sender, receiver, moved, cancel):
                if task is not None and not task.done():
                    task.cancel()


def _stats_of(session: Any) -> dict[str, int]:
    stats = getattr(session, "stats", None)
    return dict(stats()) if callable(stats) else {}


def spawn_session(session: Any, transport: Transport, *, store: Any = None) -> SessionTask:
    """Drive ``session`` (the ``ChumSession`` methods) over ``transport`` in an asyncio task.

    The store whose event feed wakes the session (``store_changed``) is ``store``, or else the
    session's ``store`` attribute when it has one."""
    if not isinstance(transport, Transport):
        raise _arg(f"spawn_session needs a Transport, got {type(transport).__name__}")
    if store is None:
        store = getattr(session, "store", None)
    if store is not None and not hasattr(store, "subscribe"):
        raise _arg(f"store must be a Store, got {type(store).__name__}")
    task = SessionTask.__new__(SessionTask)
    task._start(session, transport, store)
    return task


__all__ = [
    "Listener",
    "SessionTask",
    "Transport",
    "memory_pair",
    "spawn_session",
    "ws_connect",
    "ws_listen",
]
