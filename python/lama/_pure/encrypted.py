"""Encrypted connections of the pure core (docs/connections.md §1; spec conn §2.2–2.7, §4),
on asyncio: the same names, behaviour, close reasons and error codes as the Rust core's
``rust/lama-net/src/encrypted.rs``.

:func:`encrypted_connect` opens a WebSocket and runs the handshake as initiator,
:func:`encrypted_accept` runs it as acceptor on a raw :class:`~lama._pure.net.Transport` whose
next message is the ``communication_request``. The result, :class:`EncryptedConnection`, is a
``Transport``: ``spawn_session`` runs a CHUM session over it unchanged.

Two tasks sit between the connection and the raw transport below it:

- the writer takes the messages ``send`` queued (a pipe bounded by byte credits, as the memory
  transport's), escapes and fragments them (conn §2.5, §2.6), seals each piece with the next
  counter nonce and random padding (conn §2.4) and sends it; ``keepalive`` seconds without
  output send the string ``keepalive``;
- the reader opens each frame with the peer's next counter, swallows keepalives, unescapes,
  reassembles fragments (at most ``max_message`` bytes) and queues messages for ``recv`` (a
  full queue stops the reading: back-pressure to the peer); ``dead_after`` seconds without a
  frame terminate the connection.

Close reasons (conn §2.3): ``close(r)`` travels as ``Close called: r`` (``Close called.`` when
empty), the keepalive's terminate as ``Terminate called: Keepalive: No lifesign of the other
side``; ``close_reason`` is that text on both sides.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from typing import Any, Iterable

from ..errors import TransportError
from . import crypto
from .net import (
    _BUDGET,
    _CLOSE_TIMEOUT,
    _CODE_NORMAL,
    _CODE_TOO_BIG,
    _OVERHEAD,
    DEFAULT_MAX_MESSAGE,
    REASON_LOST,
    Transport,
    _arg,
    _closed_error,
    _max_arg,
    _message_arg,
    _Pipe,
    _reason_arg,
    _Refused,
    _size_error,
    size_reason,
    ws_connect,
)

FRAGMENT_SIZE = 65536
_MARK_BINARY = "fragmentation_start_binary"
_MARK_STRING = "fragmentation_start_string"
_MARK_END = "fragmentation_end"
_MARKS = (_MARK_BINARY, _MARK_STRING, _MARK_END)
_KEEPALIVE = "keepalive"
_COUNTER_LIMIT = (1 << 53) - 2
FRAME_OVERHEAD = 16 + 1 + 1 + 255

REASON_DECRYPTION = "Decryption of message failed."
REASON_STRING = "Incoming encrypted message is a string, it needs to be binary"
REASON_KEEPALIVE = "Keepalive: No lifesign of the other side"
REASON_NOT_ACCEPTED = "Error: We do not accept connections for this target public key"
_REASON_NO_LISTENER = "No listening connection for the specified publicKey."


def close_text(reason: str) -> str:
    """``Close called: <reason>`` / ``Close called.`` (conn §2.3), cut to 123 bytes."""
    return "Close called." if not reason else _reason_arg(f"Close called: {reason}")


def terminate_text(reason: str) -> str:
    """``Terminate called: <reason>`` / ``Terminate called.`` (conn §2.3), cut to 123 bytes."""
    return "Terminate called." if not reason else _reason_arg(f"Terminate called: {reason}")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _handshake_error(message: str) -> TransportError:
    return TransportError(message, "LAMA-NET-HANDSHAKE")


def _refused_error(message: str) -> TransportError:
    return TransportError(message, "LAMA-NET-REFUSED")


def _key_arg(v: object, what: str) -> bytes:
    if not isinstance(v, bytes):
        raise _arg(f"{what} is 32 bytes, got {type(v).__name__}")
    if len(v) != 32:
        raise _arg(f"{what} is 32 bytes, got {len(v)} bytes")
    return v


def _secs_arg(v: object, what: str, default: float) -> float:
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
        raise _arg(f"{what} must be a positive number of seconds, got {v!r}")
    return float(v)


class _Options:
    def __init__(self, open_timeout: object, timeout: object, keepalive: object, dead_after: object,
                 max_message: object, ephemeral: object, padding: object) -> None:
        self.open_timeout = _secs_arg(open_timeout, "open_timeout", 5.0)
        self.timeout = _secs_arg(timeout, "timeout", 10.0)
        self.keepalive = _secs_arg(keepalive, "keepalive", 20.0)
        self.dead_after = _secs_arg(dead_after, "dead_after", 25.0)
        self.max_message = _max_arg(max_message)
        self.ephemeral: tuple[bytes, bytes] | None = None
        if ephemeral is not None:
            try:
                p, s = ephemeral  # type: ignore[misc]
            except (TypeError, ValueError):
                raise _arg("_ephemeral is a (public, secret) pair of 32-byte keys") from None
            self.ephemeral = (_key_arg(p, "an ephemeral public key"), _key_arg(s, "an ephemeral secret key"))
        self.padding: list[tuple[int, bytes]] = []
        if padding is not None:
            try:
                items = [(r, f) for r, f in padding]  # type: ignore[attr-defined]
            except (TypeError, ValueError):
                raise _arg("_padding is a list of (r, filler) pairs") from None
            for r, f in items:
                if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= 255 or not isinstance(f, (bytes, bytearray)):
                    raise _arg("_padding is a list of (r, filler) pairs")
                if len(f) != max(r - 1, 0):
                    raise _arg(f"_padding: the filler for r = {r} is {max(r - 1, 0)} bytes")
                self.padding.append((r, bytes(f)))
        self.padding.reverse()  # popped from the end

    def ephemeral_pair(self) -> tuple[bytes, bytes]:
        return self.ephemeral if self.ephemeral is not None else crypto.box_keypair()


class _Wire:
    """Counts what the handshake puts on and takes from the raw transport."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    async def send(self, t: Transport, m: str | bytes) -> None:
        self.sent += len(m.encode("utf-8")) if isinstance(m, str) else len(m)
        await t.send(m)

    async def recv(self, t: Transport) -> str | bytes | None:
        m = await t.recv()
        if m is not None:
            self.received += len(m.encode("utf-8")) if isinstance(m, str) else len(m)
        return m


def _closed_during_handshake(t: Transport, waiting_for: str) -> TransportError:
    reason = t.close_reason if t.close_reason is not None else REASON_LOST
    if REASON_NOT_ACCEPTED[len("Error: "):] in reason or _REASON_NO_LISTENER in reason:
        return _refused_error(f"the connection was refused: {reason}")
    return _handshake_error(f"the connection closed while waiting for {waiting_for}: {reason}")


async def _fail(t: Transport, reason: str, err: TransportError) -> TransportError:
    await t.close(close_text(reason))
    return err


def _json_command(m: object) -> dict[str, Any] | None:
    if not isinstance(m, str):
        return None
    try:
        v = json.loads(m)
    except ValueError:
        return None
    return v if isinstance(v, dict) else None


def _hex_key(v: dict[str, Any], field: str) -> bytes | None:
    s = v.get(field)
    if not isinstance(s, str) or len(s) != 64:
        return None
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def _ct_eq(a: bytes, b: bytes) -> bool:
    """Constant-time key equality (conn §1.2: tweetnacl ``verify``)."""
    d = 0
    for x, y in zip(a, b):
        d |= x ^ y
    return d == 0 and len(a) == len(b)


async def _send_or_closed(wire: _Wire, t: Transport, m: str | bytes, waiting_for: str) -> None:
    try:
        await wire.send(t, m)
    except TransportError:
        raise _closed_during_handshake(t, waiting_for) from None


async def encrypted_connect(url: str, public_key: bytes, secret_key: bytes, target_key: bytes, *,
                            open_timeout: float | None = None, timeout: float | None = None,
                            keepalive: float | None = None, dead_after: float | None = None,
                            max_message: int = DEFAULT_MAX_MESSAGE, _ephemeral: Any = None,
                            _padding: Any = None) -> EncryptedConnection:
    """conn §4.1 as initiator over a new WebSocket to ``url`` (a comm server or a direct
    listener)."""
    if not isinstance(url, str):
        raise _arg(f"a URL is a str, got {type(url).__name__}")
    public = _key_arg(public_key, "public_key")
    secret = _key_arg(secret_key, "secret_key")
    target = _key_arg(target_key, "target_key")
    opts = _Options(open_timeout, timeout, keepalive, dead_after, max_message, _ephemeral, _padding)
    try:
        async with asyncio.timeout(opts.open_timeout):
            raw = await ws_connect(url, max_message=opts.max_message + FRAME_OVERHEAD)
    except TimeoutError:
        raise TransportError(f"connecting to {url} timed out after {opts.open_timeout}s",
                             "LAMA-NET-CONNECT") from None
    open_time = _now_ms()
    wire = _Wire()

    async def handshake() -> bytes:
        request = json.dumps({"command": "communication_request", "sourcePublicKey": public.hex(),
                              "targetPublicKey": target.hex()}, separators=(",", ":"))
        await _send_or_closed(wire, raw, request, "communication_ready")
        m = await wire.recv(raw)
        if m is None:
            raise _closed_during_handshake(raw, "communication_ready")
        v = _json_command(m)
        if v is None or v.get("command") != "communication_ready":
            raise await _fail(raw, "Error: expected communication_ready",
                              _handshake_error("the peer did not answer with communication_ready"))
        try:
            hs_key = crypto.box_before(target, secret)
        except Exception as e:
            raise _handshake_error(str(e)) from None
        epk, esk = opts.ephemeral_pair()
        await _send_or_closed(wire, raw, crypto.secretbox_seal_embedded(epk, hs_key), "the peer's key frame")
        m = await wire.recv(raw)
        if m is None:
            raise _closed_during_handshake(raw, "the peer's key frame")
        if not isinstance(m, bytes) or len(m) != 72:
            raise await _fail(raw, "Error: expected the 72-byte key frame",
                              _handshake_error("the peer did not send its 72-byte key frame"))
        try:
            peer_epk = crypto.secretbox_open_embedded(m, hs_key)
        except Exception:
            raise await _fail(raw, REASON_DECRYPTION,
                              _handshake_error("the peer's key frame does not open with the target key")) from None
        try:
            return crypto.box_before(peer_epk, esk)
        except Exception as e:
            raise await _fail(raw, "Error: unusable ephemeral key", _handshake_error(str(e))) from None

    key = await _run_handshake(raw, handshake(), opts.timeout, f"the handshake with {url}")
    return EncryptedConnection._start(raw, public, target, True, key, wire, open_time, opts)


async def _run_handshake(raw: Transport, hs: Any, timeout: float, what: str) -> Any:
    try:
        async with asyncio.timeout(timeout):
            return await hs
    except TimeoutError:
        await raw.close(close_text("Error: handshake timed out"))
        raise _handshake_error(f"{what} timed out after {timeout}s") from None
    except TransportError as e:
        message = str(e)
        if message.startswith(e.code + ": "):
            message = message[len(e.code) + 2:]
        await raw.close(close_text(f"Error: {message}"))
        raise
    except BaseException:
        await raw.close(close_text("Error: handshake interrupted"))
        raise


async def encrypted_accept(transport: Transport, keys: Iterable[tuple[bytes, bytes]], *,
                           timeout: float | None = None, keepalive: float | None = None,
                           dead_after: float | None = None, max_message: int = DEFAULT_MAX_MESSAGE,
                           _ephemeral: Any = None, _padding: Any = None) -> EncryptedConnection:
    """conn §4.1/§4.2 as acceptor on ``transport``, whose next message is the
    ``communication_request``; ``keys`` are the candidate ``(public, secret)`` pairs.
    ``communication_ready`` goes out before the decision (as in the reference)."""
    if not isinstance(transport, Transport):
        raise _arg(f"encrypted_accept needs a Transport, got {type(transport).__name__}")
    pairs: list[tuple[bytes, bytes]] = []
    try:
        items = list(keys)
    except TypeError:
        raise _arg("keys is a list of (public, secret) pairs of 32-byte keys") from None
    for item in items:
        try:
            p, s = item
        except (TypeError, ValueError):
            raise _arg("keys is a list of (public, secret) pairs of 32-byte keys") from None
        pairs.append((_key_arg(p, "a public key"), _key_arg(s, "a secret key")))
    opts = _Options(None, timeout, keepalive, dead_after, max_message, _ephemeral, _padding)
    raw = transport
    open_time = _now_ms()
    wire = _Wire()

    async def handshake() -> tuple[bytes, bytes, bytes]:
        m = await wire.recv(raw)
        if m is None:
            raise _closed_during_handshake(raw, "communication_request")
        v = _json_command(m)
        source = target = None
        if v is not None and v.get("command") == "communication_request":
            source, target = _hex_key(v, "sourcePublicKey"), _hex_key(v, "targetPublicKey")
        if source is None or target is None:
            raise await _fail(raw, "Error: expected communication_request",
                              _handshake_error("the first message is not a well-formed communication_request"))
        await _send_or_closed(wire, raw, '{"command":"communication_ready"}', "the peer's key frame")
        frame1 = await wire.recv(raw)
        if frame1 is None:
            raise _closed_during_handshake(raw, "the peer's key frame")
        if not isinstance(frame1, bytes) or len(frame1) != 72:
            raise await _fail(raw, "Error: expected the 72-byte key frame",
                              _handshake_error("the peer did not send its 72-byte key frame"))
        # every candidate is compared, so the time does not tell which one matched
        found = None
        for pair in pairs:
            if _ct_eq(pair[0], target) and found is None:
                found = pair
        if found is None:
            raise await _fail(raw, REASON_NOT_ACCEPTED,
                              _refused_error(f"the target key {target.hex()} is not one of ours"))
        try:
            hs_key = crypto.box_before(source, found[1])
        except Exception as e:
            raise await _fail(raw, "Error: unusable source key", _handshake_error(str(e))) from None
        try:
            peer_epk = crypto.secretbox_open_embedded(frame1, hs_key)
        except Exception:
            raise await _fail(raw, REASON_DECRYPTION,
                              _handshake_error("the peer's key frame does not open with its source key")) from None
        epk, esk = opts.ephemeral_pair()
        try:
            k = crypto.box_before(peer_epk, esk)
        except Exception as e:
            raise await _fail(raw, "Error: unusable ephemeral key", _handshake_error(str(e))) from None
        await _send_or_closed(wire, raw, crypto.secretbox_seal_embedded(epk, hs_key), "sending the key frame")
        return found[0], source, k

    public, source, key = await _run_handshake(raw, handshake(), opts.timeout, "the handshake")
    return EncryptedConnection._start(raw, public, source, False, key, wire, open_time, opts)


class EncryptedConnection(Transport):
    """An encrypted connection (conn §2.4–2.7): a Transport with keys, role and statistics.
    Made by :func:`encrypted_connect` and :func:`encrypted_accept` only."""

    local_key: bytes
    remote_key: bytes
    initiator: bool

    @classmethod
    def _start(cls, raw: Transport, local_key: bytes, remote_key: bytes, initiator: bool, key: bytes,
               wire: _Wire, open_time: int, opts: _Options) -> EncryptedConnection:
        self = cls.__new__(cls)
        self.local_key = local_key
        self.remote_key = remote_key
        self.initiator = initiator
        self._raw = raw
        self._key = key
        # conn §2.4: the initiator sends with odd counters from 1, the acceptor with even from 0
        self._tx, self._rx = (1, 0) if initiator else (0, 1)
        self._max = opts.max_message
        self._padding = opts.padding
        self._out = _Pipe()
        self._inc = _Pipe()
        self._reason: str | None = None
        self._local_closed = False
        self._eof = False
        self._stopping = False
        self._collecting: tuple[bool, bytearray] | None = None
        self._bytes_sent = wire.sent
        self._bytes_received = wire.received
        self._messages_sent = 0
        self._messages_received = 0
        self._open_time = open_time
        self._close_time: int | None = None
        self._done = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write_loop(opts.keepalive))
        self._reader = loop.create_task(self._read_loop(opts.dead_after))
        return self

    # -- the Transport interface --------------------------------------------------------------

    async def send(self, msg: str | bytes) -> None:
        msg, n = _message_arg(msg)
        if self._reason is not None:
            raise _closed_error(self._reason)
        if n > self._max:
            await self._close(_CODE_TOO_BIG, size_reason(self._max))
            raise _size_error(n, self._max)
        cost = min(n + _OVERHEAD, _BUDGET)
        try:
            if not self._out.try_put(msg, cost):
                await self._out.put(msg, cost)
        except _Refused:
            raise _closed_error(self._reason) from None

    async def recv(self) -> str | bytes | None:
        while True:
            if self._local_closed or self._eof:
                return None
            item = self._inc.take()
            if item is None:
                await self._inc.wait()
                continue
            msg, extra = item
            if msg is not None:
                return msg
            self._set_reason(extra[1])
            self._eof = True
            return None

    async def close(self, reason: str = "") -> None:
        await self._close(_CODE_NORMAL, _reason_arg(reason))

    @property
    def close_reason(self) -> str | None:
        return self._reason

    def stats(self) -> dict[str, Any]:
        """conn §2.7: wire bytes (handshake included), application messages, open and close
        time (epoch ms), close reason."""
        return {
            "bytes_sent": self._bytes_sent,
            "bytes_received": self._bytes_received,
            "messages_sent": self._messages_sent,
            "messages_received": self._messages_received,
            "open_time": self._open_time,
            "close_time": self._close_time,
            "close_reason": self._reason,
        }

    # -- closing ------------------------------------------------------------------------------

    def _set_reason(self, reason: str) -> bool:
        if self._reason is not None:
            return False
        self._reason = reason
        if self._close_time is None:
            self._close_time = _now_ms()
        return True

    async def _close(self, code: int, reason: str) -> None:
        if not self._local_closed:
            self._local_closed = True
            initiated = self._set_reason(close_text(reason))
            self._inc.refuse()
            self._inc.interrupt()
            if initiated:
                # queued messages go first, then the close (the writer closes the raw transport)
                self._out.put_close(code, self._reason or "")
            self._out.refuse()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT + 2):
                await self._done.wait()
        except TimeoutError:
            # a writer stuck behind a peer that reads nothing: stop it, close from here
            self._writer.cancel()
            await self._raw.close(self._reason or "")

    def _stop_writer(self) -> None:
        self._stopping = True
        self._out.interrupt()

    # -- the writer ---------------------------------------------------------------------------

    async def _send_piece(self, data: bytes, text: bool) -> None:
        if self._tx >= _COUNTER_LIMIT:
            raise TransportError("the frame counter is exhausted", "LAMA-NET-CLOSED")
        if self._padding:
            r, filler = self._padding.pop()
        else:
            rnd = os.urandom(256)
            r = rnd[0]
            filler = rnd[1:r]
        if r == 0:
            padded = bytes([0x10 if text else 0x00]) + data
        else:
            padded = bytes([0x11 if text else 0x01, r - 1]) + filler + data
        frame = crypto.secretbox_seal(padded, crypto.session_nonce(self._tx), self._key)
        self._tx += 2
        self._bytes_sent += len(frame)
        await self._raw.send(frame)

    async def _send_message(self, msg: str | bytes) -> None:
        if isinstance(msg, str):
            # conn §2.6: strings of fewer than 16384 UTF-16 code units go whole
            if len(msg) < FRAGMENT_SIZE // 4 and len(msg.encode("utf-16-le")) // 2 < FRAGMENT_SIZE // 4:
                if msg.startswith(_MARKS):
                    msg += "x"
                if msg.startswith(_KEEPALIVE):
                    msg += "x"
                await self._send_piece(msg.encode("utf-8"), True)
            else:
                await self._send_fragments(msg.encode("utf-8"), _MARK_STRING)
        elif len(msg) <= FRAGMENT_SIZE:
            await self._send_piece(msg, False)
        else:
            await self._send_fragments(msg, _MARK_BINARY)

    async def _send_fragments(self, data: bytes, mark: str) -> None:
        await self._send_piece(mark.encode(), True)
        view = memoryview(data)
        for i in range(0, len(data), FRAGMENT_SIZE):
            await self._send_piece(bytes(view[i:i + FRAGMENT_SIZE]), False)
        await self._send_piece(_MARK_END.encode(), True)

    async def _write_loop(self, keepalive: float) -> None:
        loop = asyncio.get_running_loop()
        last_out = loop.time()
        try:
            while not self._stopping:
                item = self._out.take()
                if item is None:
                    wait = last_out + keepalive - loop.time()
                    if wait <= 0:
                        # conn §2.5: something at least every `keepalive` seconds
                        await self._send_piece(_KEEPALIVE.encode(), True)
                        last_out = loop.time()
                        continue
                    try:
                        async with asyncio.timeout(wait):
                            await self._out.wait()
                    except TimeoutError:
                        pass
                    continue
                msg, extra = item
                if msg is None:
                    # the close of `close()`, already in the reference's words
                    await self._raw.close(extra[1])
                    break
                await self._send_message(msg)
                self._messages_sent += 1
                last_out = loop.time()
        except TransportError:
            pass
        finally:
            self._out.refuse()
            self._set_reason(close_text(REASON_LOST))
            try:
                await self._raw.close(self._reason or "")
            finally:
                self._done.set()

    # -- the reader ---------------------------------------------------------------------------

    def _handle(self, m: str | bytes) -> tuple[str, Any]:
        """("deliver", msg) | ("nothing", None) | ("fail", reason)."""
        if isinstance(m, str):
            return "fail", close_text(REASON_STRING)
        try:
            padded = crypto.secretbox_open(m, crypto.session_nonce(self._rx), self._key)
            flags, data = crypto.frame_unpad(padded)
        except Exception:
            return "fail", close_text(REASON_DECRYPTION)
        self._rx += 2
        msg: str | bytes
        if flags & 1:
            try:
                msg = data.decode("utf-8")
            except UnicodeDecodeError:
                return "fail", close_text(REASON_DECRYPTION)
            # conn §2.5: keepalive swallowed, escaped strings unescaped
            if msg == _KEEPALIVE:
                return "nothing", None
            if msg.startswith(_KEEPALIVE):
                msg = msg[:-1]
        else:
            msg = data
        # conn §2.6: markers switch state; fragments collect
        if self._collecting is None:
            if isinstance(msg, bytes):
                return "deliver", msg
            if msg in (_MARK_BINARY, _MARK_STRING):
                self._collecting = (msg == _MARK_STRING, bytearray())
                return "nothing", None
            if msg == _MARK_END:
                return "fail", close_text("Error: fragmentation_end without fragmentation_start")
            if msg.startswith(_MARKS):
                msg = msg[:-1]
            return "deliver", msg
        if isinstance(msg, bytes):
            buf = self._collecting[1]
            if len(buf) + len(msg) > self._max:
                self._collecting = None
                return "fail", close_text(size_reason(self._max))
            buf += msg
            return "nothing", None
        if msg == _MARK_END:
            text, buf = self._collecting
            self._collecting = None
            if text:
                try:
                    return "deliver", buf.decode("utf-8")
                except UnicodeDecodeError:
                    return "fail", close_text("Error: a fragmented string is not valid UTF-8")
            return "deliver", bytes(buf)
        return "fail", close_text("Error: a string arrived between fragments")

    async def _fail_from_reader(self, reason: str) -> None:
        if self._set_reason(reason):
            await self._raw.close(reason)
        self._inc.put_close(_CODE_NORMAL, self._reason or reason)

    async def _read_loop(self, dead_after: float) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(dead_after):
                        m = await self._raw.recv()
                except TimeoutError:
                    await self._fail_from_reader(terminate_text(REASON_KEEPALIVE))
                    return
                if m is None:
                    # the peer closed (its reason), the raw transport was lost, or we closed
                    reason = self._raw.close_reason
                    self._set_reason(reason if reason is not None else REASON_LOST)
                    self._inc.put_close(_CODE_NORMAL, self._reason or "")
                    return
                self._bytes_received += len(m.encode("utf-8")) if isinstance(m, str) else len(m)
                what, value = self._handle(m)
                if what == "deliver":
                    self._messages_received += 1
                    n = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
                    try:
                        await self._inc.put(value, min(n + _OVERHEAD, _BUDGET))
                    except _Refused:
                        pass  # closed here: discard
                elif what == "fail":
                    await self._fail_from_reader(value)
                    return
        finally:
            self._stop_writer()


__all__ = ["EncryptedConnection", "encrypted_accept", "encrypted_connect"]
