"""The comm server's store-and-forward mailbox in the pure core (docs/mailbox.md).

The same wire protocol, on-disk format, limits, error codes and counters as the Rust core's
``rust/lama-net/src/mailbox.rs``; a mailbox directory written by one core is read by the other.

The server only ever holds opaque envelopes (docs/mailbox.md §3: sealed and signed by the
sender's client for the recipient's key); it never parses them. What it knows is what the relay
already knows (spec connections.md §9.3 item 1): the recipient key, sizes and times.

On disk (docs/mailbox.md §4): ``<dir>/<recipient key hex>/<id>.item`` with ``id`` = SHA-256 hex of
the envelope, the file = ``LAMAMBX1`` (8 bytes) || deposited ms (u64 BE) || expires ms (u64 BE)
|| envelope. A file is written to ``<id>.tmp``, fsynced and renamed, so a killed server leaves
either the whole item or a ``.tmp`` that the next start deletes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import struct
import threading
import time
from typing import Any

from ..errors import InvalidArgumentError, TransportError
from . import crypto

MAGIC = b"LAMAMBX1"
HEADER = struct.Struct(">8sQQ")  # magic, deposited ms, expires ms
SUFFIX = ".item"

# defaults (docs/mailbox.md §5)
DEFAULT_MAX_ITEMS = 1000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL = 7 * 24 * 3600.0
DEFAULT_TOTAL_ITEMS = 100_000          # across every recipient (the server-wide bound)
DEFAULT_TOTAL_BYTES = 1024 * 1024 * 1024

# error codes sent to the depositor (docs/mailbox.md §2.2)
FULL = "LAMA-MAILBOX-FULL"
TOOBIG = "LAMA-MAILBOX-TOOBIG"
IOERR = "LAMA-MAILBOX-IO"
SERVER_FULL = "LAMA-MAILBOX-SERVER-FULL"
AUTH = "LAMA-MAILBOX-AUTH"
ENVELOPE_MAGIC = b"LMB1"  # the envelope's clear prefix: magic || sender instance key (§3.1)

COUNTERS = ("mailbox_deposits", "mailbox_refused", "mailbox_fetches", "mailbox_delivered",
            "mailbox_confirmed", "mailbox_expired", "mailbox_items", "mailbox_bytes")

REASON_DONE = "Close called."


def _now_ms() -> int:
    return int(time.time() * 1000)


class MailboxStore:
    """The items of every recipient, persisted under ``directory`` (thread-safe)."""

    def __init__(self, directory: str, max_items: int, max_bytes: int, ttl: float,
                 total_items: int = DEFAULT_TOTAL_ITEMS, total_bytes: int = DEFAULT_TOTAL_BYTES) -> None:
        self.dir = directory
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.total_items = total_items
        self.total_bytes = total_bytes
        self.ttl_ms = int(ttl * 1000)
        self._lock = threading.Lock()
        # recipient hex -> {id: (deposited, expires, size)}
        self._items: dict[str, dict[str, tuple[int, int, int]]] = {}
        self.counters = dict.fromkeys(COUNTERS, 0)
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise InvalidArgumentError(f"mailbox directory {directory!r}: {e}", "LAMA-ARG") from None
        self._load()

    def _load(self) -> None:
        now = _now_ms()
        for key in sorted(os.listdir(self.dir)):
            sub = os.path.join(self.dir, key)
            if len(key) != 64 or not os.path.isdir(sub) or any(c not in "0123456789abcdef" for c in key):
                continue
            items: dict[str, tuple[int, int, int]] = {}
            for name in os.listdir(sub):
                path = os.path.join(sub, name)
                if name.endswith(".tmp"):  # a write a kill interrupted (never renamed)
                    _unlink(path)
                    continue
                if not name.endswith(SUFFIX) or len(name) != 64 + len(SUFFIX):
                    continue
                try:
                    with open(path, "rb") as f:
                        head = f.read(HEADER.size)
                        size = os.fstat(f.fileno()).st_size - HEADER.size
                except OSError:
                    continue
                if len(head) != HEADER.size:
                    continue
                magic, dep, exp = HEADER.unpack(head)
                if magic != MAGIC or size <= 0:
                    continue  # not ours: left alone, not counted
                if exp <= now:
                    _unlink(path)
                    self.counters["mailbox_expired"] += 1
                    continue
                items[name[:64]] = (dep, exp, size)
            if items:
                self._items[key] = items
                self.counters["mailbox_items"] += len(items)
                self.counters["mailbox_bytes"] += sum(v[2] for v in items.values())

    def _path(self, key: str, id: str, suffix: str = SUFFIX) -> str:
        return os.path.join(self.dir, key, id + suffix)

    def _expire(self, key: str, now: int) -> None:
        items = self._items.get(key)
        if not items:
            return
        for id, (_d, exp, size) in list(items.items()):
            if exp <= now:
                _unlink(self._path(key, id))
                del items[id]
                self.counters["mailbox_expired"] += 1
                self.counters["mailbox_items"] -= 1
                self.counters["mailbox_bytes"] -= size
        if not items:
            del self._items[key]

    def usage(self, key: str) -> tuple[int, int]:
        with self._lock:
            self._expire(key, _now_ms())
            items = self._items.get(key, {})
            return len(items), sum(v[2] for v in items.values())

    def deposit(self, key: str, envelope: bytes, sender: bytes | None = None) -> tuple[str, str | None, str]:
        """(id, error code or None, message). Idempotent for an envelope already held.
        ``sender``: the instance key the depositor proved; the envelope's clear prefix must
        name it (docs/mailbox.md §2.2), so nobody deposits in another instance's name."""
        id = hashlib.sha256(envelope).hexdigest()
        if sender is not None and envelope[:36] != ENVELOPE_MAGIC + sender:
            with self._lock:
                self.counters["mailbox_refused"] += 1
            return id, AUTH, ("the envelope's sender key is not the key the depositor proved "
                              "(a deposit in another instance's name)")
        with self._lock:
            now = _now_ms()
            self._expire(key, now)
            items = self._items.get(key, {})
            if id in items:
                return id, None, "already held"
            size = len(envelope)
            if size > self.max_bytes:
                self.counters["mailbox_refused"] += 1
                return id, TOOBIG, f"an item of {size} bytes exceeds the mailbox limit of {self.max_bytes} bytes"
            used = sum(v[2] for v in items.values())
            if len(items) >= self.max_items or used + size > self.max_bytes:
                self.counters["mailbox_refused"] += 1
                return id, FULL, (f"the recipient's mailbox is full ({len(items)} of {self.max_items} items, "
                                  f"{used} of {self.max_bytes} bytes; this item: {size} bytes)")
            n_all, b_all = self.counters["mailbox_items"], self.counters["mailbox_bytes"]
            if n_all >= self.total_items or b_all + size > self.total_bytes:
                self.counters["mailbox_refused"] += 1
                return id, SERVER_FULL, (
                    f"the comm server's mailbox is full ({n_all} of {self.total_items} items, "
                    f"{b_all} of {self.total_bytes} bytes across all recipients; this item: "
                    f"{size} bytes)")
            exp = now + self.ttl_ms
            try:
                os.makedirs(os.path.join(self.dir, key), exist_ok=True)
                tmp = self._path(key, id, ".tmp")
                with open(tmp, "wb") as f:
                    f.write(HEADER.pack(MAGIC, now, exp))
                    f.write(envelope)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path(key, id))
                _fsync_dir(os.path.join(self.dir, key))
            except OSError as e:
                self.counters["mailbox_refused"] += 1
                return id, IOERR, f"the mailbox cannot store the item: {e.strerror or e}"
            self._items.setdefault(key, {})[id] = (now, exp, size)
            self.counters["mailbox_deposits"] += 1
            self.counters["mailbox_items"] += 1
            self.counters["mailbox_bytes"] += size
            return id, None, "stored"

    def fetch(self, key: str) -> list[tuple[str, bytes]]:
        """The recipient's live (id, envelope)s, oldest first (deposit time, then id)."""
        with self._lock:
            self._expire(key, _now_ms())
            items = self._items.get(key, {})
            order = sorted(items.items(), key=lambda kv: (kv[1][0], kv[0]))
            out = []
            for id, (_d, _e, _s) in order:
                try:
                    with open(self._path(key, id), "rb") as f:
                        data = f.read()
                except OSError:
                    continue
                out.append((id, data[HEADER.size:]))
            self.counters["mailbox_fetches"] += 1
            self.counters["mailbox_delivered"] += len(out)
            return out

    def confirm(self, key: str, ids: list[str]) -> int:
        with self._lock:
            items = self._items.get(key, {})
            n = 0
            for id in ids:
                v = items.pop(id, None)
                if v is None:
                    continue
                _unlink(self._path(key, id))
                n += 1
                self.counters["mailbox_items"] -= 1
                self.counters["mailbox_bytes"] -= v[2]
            if not items:
                self._items.pop(key, None)
            if n:
                _fsync_dir(os.path.join(self.dir, key))
            self.counters["mailbox_confirmed"] += n
            return n


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


class Refuse(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def info_message(store: MailboxStore) -> str:
    return _text({"command": "mailbox_info", "version": 1, "maxItems": store.max_items,
                  "maxBytes": store.max_bytes, "maxTotalItems": store.total_items,
                  "maxTotalBytes": store.total_bytes, "ttl": store.ttl_ms // 1000,
                  "depositProof": True})


async def prove(server_public: bytes, server_secret: bytes, t: Any, key: bytes, recv_until: Any,
                deadline: float, malformed: str) -> bool | None:
    """The register challenge (conn §3.2) for ``key``: True if the client proved it holds the
    key's secret, False if not, None if it went away."""
    challenge = crypto.random_bytes(64)
    try:
        sealed = crypto.box_seal_embedded(challenge, server_secret, key)
    except Exception as e:  # a key of small order: no shared secret (as register, conn §3.2)
        raise Refuse(f"Close called: Error: {e}"[:123]) from None
    await t.send(_text({"command": "authentication_request", "publicKey": server_public.hex(),
                        "challenge": sealed.hex()}))
    try:
        answer = await recv_until(t, deadline)
    except TimeoutError:
        raise Refuse("Close called: Authentication timed out.") from None
    if answer is None:
        return None
    try:
        obj = json.loads(answer) if isinstance(answer, str) else None
    except ValueError:
        obj = None
    if not isinstance(obj, dict) or obj.get("command") != "authentication_response" \
            or not isinstance(obj.get("response"), str):
        raise Refuse(malformed)
    expected = bytes(b ^ 0xFF for b in challenge)  # NOT(challenge), conn §1.3
    try:
        return hmac.compare_digest(
            crypto.box_open_embedded(bytes.fromhex(obj["response"]), server_secret, key), expected)
    except Exception:
        return False


async def serve_deposit(store: MailboxStore, server_public: bytes, server_secret: bytes, t: Any,
                        first: dict[str, Any], key_field: Any, recv_until: Any, deadline: float,
                        idle: float, malformed: str) -> bool:
    """docs/mailbox.md §2.2: the depositor proves its instance key (the register challenge), then
    ``mailbox_deposit`` text + one binary frame, answered; repeated until the client closes or is
    idle for ``idle`` seconds. False if the proof failed (the caller counts it, then closes)."""
    loop = asyncio.get_running_loop()
    if "publicKey" not in first:
        # a depositor that does not prove its key (an older client): a clear error, nothing stored
        await t.send(_text({"command": "mailbox_error", "id": "", "code": AUTH,
                            "message": "a deposit needs the depositor's key proof: send publicKey "
                                       "and answer the challenge (docs/mailbox.md §2.2)"}))
        with store._lock:
            store.counters["mailbox_refused"] += 1
        await t.close(REASON_DONE)
        return True
    sender = key_field(first, "publicKey")
    ok = await prove(server_public, server_secret, t, sender, recv_until, deadline, malformed)
    if ok is None:
        return True
    if not ok:
        return False
    obj: Any = first
    while True:
        key = key_field(obj, "targetPublicKey").hex()
        try:
            blob = await recv_until(t, loop.time() + idle)
        except TimeoutError:
            await t.close(REASON_DONE)
            return True
        if blob is None:
            return True
        if not isinstance(blob, bytes) or not blob:
            raise Refuse(malformed)
        id, code, msg = await asyncio.to_thread(store.deposit, key, blob, sender)
        reply = ({"command": "mailbox_stored", "id": id} if code is None else
                 {"command": "mailbox_error", "id": id, "code": code, "message": msg})
        try:
            await t.send(_text(reply))
        except TransportError:
            return True
        try:
            m = await recv_until(t, loop.time() + idle)
        except TimeoutError:
            await t.close(REASON_DONE)
            return True
        if m is None:
            return True
        try:
            obj = json.loads(m) if isinstance(m, str) else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or obj.get("command") != "mailbox_deposit":
            raise Refuse(malformed)


async def serve_fetch(store: MailboxStore, server_public: bytes, server_secret: bytes, t: Any,
                      key: bytes, recv_until: Any, deadline: float, idle: float,
                      malformed: str) -> bool:
    """docs/mailbox.md §2.3: the register challenge (conn §3.2), then the items, then the
    confirmation. False if the proof failed (the caller counts it, then closes)."""
    ok = await prove(server_public, server_secret, t, key, recv_until, deadline, malformed)
    if ok is None:
        return True
    if not ok:
        return False
    items = await asyncio.to_thread(store.fetch, key.hex())
    await t.send(_text({"command": "mailbox_items", "ids": [id for id, _ in items]}))
    for _id, data in items:
        await t.send(data)
    loop = asyncio.get_running_loop()
    try:
        m = await recv_until(t, loop.time() + idle)
    except TimeoutError:
        await t.close(REASON_DONE)
        return True
    if m is None:
        return True
    try:
        obj = json.loads(m) if isinstance(m, str) else None
    except ValueError:
        obj = None
    ids = obj.get("ids") if isinstance(obj, dict) and obj.get("command") == "mailbox_confirm" else None
    if not isinstance(ids, list) or not all(isinstance(i, str) and len(i) == 64 for i in ids):
        raise Refuse(malformed)
    n = await asyncio.to_thread(store.confirm, key.hex(), [i.lower() for i in ids])
    try:
        await t.send(_text({"command": "mailbox_confirmed", "count": n}))
    except TransportError:
        return True
    # the client closes; wait briefly for it so its close reason is its own
    try:
        await recv_until(t, loop.time() + idle)
    except TimeoutError:
        pass
    await t.close(REASON_DONE)
    return True
