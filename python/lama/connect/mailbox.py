"""Store-and-forward through the comm server's mailbox: the client side (docs/mailbox.md).

Runs on both cores (``core.ws_connect`` and the core's NaCl primitives only).

- Wire client (§2): :func:`mailbox_info` (the advertisement), :func:`deposit` (no session with
  the recipient; the depositor proves its own instance key), :func:`fetch` (the recipient proves its key with the comm server's
  register challenge, conn §3.2, then confirms what it took).
- Envelope (§3): :func:`seal` / :func:`open_envelope`, NaCl box from the sender's instance key to
  the recipient's instance key (the key the recipient proves at its comm server) around an
  Ed25519 signature of the sender's instance sign key; the server stores bytes it cannot read,
  the recipient refuses anything altered.
- Content (§3.3): :func:`collect` (the objects a post added, reachable from the channel head) and
  :func:`import_body` (verified like a CHUM import, chum.md §6.4: hashes, no Access/IdAccess/
  Group, reachability; stored in one transaction, then merged like CHUM's ``merge`` event).
- :class:`MailboxService` (§6): the App's glue (chat events → deposits for a contact without a
  live connection; coming online → fetch, import, confirm).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from .._core import core
from ..errors import (DecryptionError, InvalidArgumentError, LamaError, MailboxError,
                      MailboxFullError, SignatureError, TransportError)

log = logging.getLogger("lama.mailbox")

__all__ = ["MAGIC", "MailboxService", "collect", "deposit", "fetch", "import_body", "mailbox_info",
           "open_envelope", "seal"]

MAGIC = b"LMB1"
_SIG_CONTEXT = b"lama-mailbox-v1\x00"
REFUSED_TYPES = frozenset({"Access", "IdAccess", "Group"})  # chum.md §6.4
VERSION_NODE_TYPES = frozenset({"VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge"})
_TIMEOUT = 10.0


def _text(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _cmd(m: str | bytes | None) -> dict[str, Any] | None:
    if not isinstance(m, str):
        return None
    try:
        v = json.loads(m)
    except ValueError:
        return None
    return v if isinstance(v, dict) and isinstance(v.get("command"), str) else None


def _unsupported(url: str, t: Any) -> MailboxError:
    return MailboxError(f"the comm server {url} offers no mailbox ({t.close_reason or 'no answer'})",
                        "LAMA-MAILBOX-UNSUPPORTED")


# ---------------------------------------------------------------------------- wire (§2)

async def mailbox_info(url: str, timeout: float = _TIMEOUT) -> dict[str, Any] | None:
    """The server's advertisement ``{"version", "maxItems", "maxBytes", "ttl"}``, or None if the
    server offers no mailbox (a ONE comm server closes with its "malformed message" reason)."""
    t = await core.ws_connect(url)
    try:
        async with asyncio.timeout(timeout):
            await t.send(_text({"command": "mailbox_info"}))
            obj = _cmd(await t.recv())
    finally:
        await t.close("Close called.")
    if obj is None or obj.get("command") != "mailbox_info":
        return None
    return obj


def _answer_challenge(url: str, obj: dict[str, Any] | None, t: Any, secret: bytes) -> str:
    """The response to the comm server's register challenge (conn §3.2): box(NOT challenge)."""
    if obj is None or obj["command"] != "authentication_request":
        raise _unsupported(url, t)
    try:
        server_pk = bytes.fromhex(obj["publicKey"])
        plain = core.box_open_embedded(bytes.fromhex(obj["challenge"]), secret, server_pk)
    except (KeyError, TypeError, ValueError, LamaError) as e:
        raise MailboxError(f"bad challenge from {url}: {e}", "LAMA-MAILBOX-PROTO") from None
    response = core.box_seal_embedded(bytes(b ^ 0xFF for b in plain), secret, server_pk)
    return _text({"command": "authentication_response", "response": response.hex()})


_FULL_CODES = ("LAMA-MAILBOX-FULL", "LAMA-MAILBOX-TOOBIG", "LAMA-MAILBOX-SERVER-FULL")


async def deposit(url: str, target_key: bytes, envelopes: Iterable[bytes], public: bytes,
                  secret: bytes, timeout: float = _TIMEOUT) -> list[str]:
    """Deposit envelopes for ``target_key`` over one socket, as the instance ``public`` (proved
    with ``secret`` by the register challenge; every envelope must be sealed by that key); their
    ids (SHA-256 hex). Raises ``MailboxFullError LAMA-MAILBOX-FULL`` / ``-TOOBIG`` /
    ``-SERVER-FULL`` (``.deposited``: the ids stored before), ``MailboxError
    LAMA-MAILBOX-AUTH`` (the proof or an envelope's sender refused) / ``-UNSUPPORTED`` / ``-IO``,
    ``TransportError``."""
    ids: list[str] = []
    t = await core.ws_connect(url)
    first = True
    try:
        async with asyncio.timeout(timeout):
            for env in envelopes:
                try:
                    msg: dict[str, Any] = {"command": "mailbox_deposit", "targetPublicKey": target_key.hex()}
                    if first:
                        msg["publicKey"] = public.hex()
                        await t.send(_text(msg))
                        m = await t.recv()
                        obj = _cmd(m)
                        if obj is not None and obj["command"] == "mailbox_error":
                            raise MailboxError(str(obj.get("message") or obj.get("code")),
                                               str(obj.get("code") or "LAMA-MAILBOX-AUTH"))
                        await t.send(_answer_challenge(url, obj, t, secret))
                        first = False
                    else:
                        await t.send(_text(msg))
                    await t.send(bytes(env))
                except TransportError:
                    if t.close_reason is None or ids:
                        raise
                    raise _unsupported(url, t) from None  # closed at once: no mailbox there
                m = await t.recv()
                obj = _cmd(m)
                if obj is None:
                    if m is None:
                        if t.close_reason and "authentication failed" in t.close_reason:
                            raise MailboxError(f"the mailbox at {url} refused the key proof "
                                               f"({t.close_reason})", "LAMA-MAILBOX-AUTH")
                        raise _unsupported(url, t)
                    raise MailboxError(f"unexpected answer from {url}", "LAMA-MAILBOX-PROTO")
                if obj["command"] == "mailbox_stored":
                    ids.append(str(obj.get("id")))
                    continue
                if obj["command"] == "mailbox_error":
                    code = str(obj.get("code") or "LAMA-MAILBOX-IO")
                    cls = MailboxFullError if code in _FULL_CODES else MailboxError
                    err = cls(str(obj.get("message") or code), code)
                    err.deposited = ids  # type: ignore[attr-defined]
                    raise err
                raise MailboxError(f"unexpected answer {obj['command']!r} from {url}", "LAMA-MAILBOX-PROTO")
    except TimeoutError:
        raise TransportError(f"the mailbox at {url} did not answer within {timeout}s",
                             "LAMA-NET-TIMEOUT") from None
    finally:
        await t.close("Close called.")
    return ids


Handler = Callable[[list[tuple[str, bytes]]], Awaitable[list[str]]]


async def fetch(url: str, public: bytes, secret: bytes, handle: Handler,
                timeout: float = 60.0) -> tuple[int, int]:
    """Prove ``public`` (conn §3.2's challenge), take every stored ``(id, envelope)``, give them to
    ``handle`` (returns the ids to delete), confirm those. Returns (fetched, deleted)."""
    t = await core.ws_connect(url)
    try:
        async with asyncio.timeout(timeout):
            await t.send(_text({"command": "mailbox_fetch", "publicKey": public.hex()}))
            await t.send(_answer_challenge(url, _cmd(await t.recv()), t, secret))
            obj = _cmd(await t.recv())
            if obj is None or obj["command"] != "mailbox_items" or not isinstance(obj.get("ids"), list):
                raise MailboxError(f"the mailbox at {url} refused the fetch ({t.close_reason})",
                                   "LAMA-MAILBOX-PROTO")
            items: list[tuple[str, bytes]] = []
            for id in obj["ids"]:
                data = await t.recv()
                if not isinstance(data, bytes):
                    raise MailboxError(f"the mailbox at {url} ended the item list early ({t.close_reason})",
                                       "LAMA-MAILBOX-PROTO")
                items.append((str(id), data))
            done = await handle(items)
            deleted = 0
            if items:
                await t.send(_text({"command": "mailbox_confirm", "ids": list(done)}))
                obj = _cmd(await t.recv())
                if obj is None or obj["command"] != "mailbox_confirmed":
                    raise MailboxError(f"the mailbox at {url} did not confirm ({t.close_reason})",
                                       "LAMA-MAILBOX-PROTO")
                deleted = int(obj.get("count", 0))
            return len(items), deleted
    except TimeoutError:
        raise TransportError(f"the mailbox at {url} did not answer within {timeout}s",
                             "LAMA-NET-TIMEOUT") from None
    finally:
        await t.close("Close called.")


# ---------------------------------------------------------------------------- envelope (§3)

def seal(body: bytes, sender_public: bytes, sender_secret: bytes, sender_sign_secret: bytes,
         recipient_public: bytes) -> bytes:
    """``LMB1 || sender instance key (32) || box_seal_embedded(sig(64) || body)`` (docs/mailbox.md
    §3.1). The signature covers the context, both keys and the body."""
    sig = core.sign_detached(_SIG_CONTEXT + recipient_public + sender_public + body, sender_sign_secret)
    return MAGIC + sender_public + core.box_seal_embedded(sig + body, sender_secret, recipient_public)


def open_envelope(env: bytes, recipient_public: bytes, recipient_secret: bytes,
                  sign_key_of: Callable[[bytes], bytes | None]) -> tuple[bytes, bytes]:
    """(sender instance key, body). ``DecryptionError LAMA-MAILBOX-TAMPERED`` if the box does not
    open (altered, truncated or not for this key), ``SignatureError LAMA-MAILBOX-SENDER`` for an
    unknown sender or a signature that does not verify, ``MailboxError LAMA-MAILBOX-FORMAT``."""
    if len(env) < 4 + 32 + 24 + 16 + 64 or env[:4] != MAGIC:
        raise MailboxError("not a lama mailbox envelope", "LAMA-MAILBOX-FORMAT")
    sender = bytes(env[4:36])
    try:
        inner = core.box_open_embedded(bytes(env[36:]), recipient_secret, sender)
    except (DecryptionError, LamaError) as e:
        raise DecryptionError(f"the mailbox item does not decrypt (altered, or not for this key): {e}",
                              "LAMA-MAILBOX-TAMPERED") from None
    if len(inner) < 64:
        raise MailboxError("the mailbox item has no signature", "LAMA-MAILBOX-FORMAT")
    sign_key = sign_key_of(sender)
    if sign_key is None:
        raise SignatureError(f"the mailbox item is from an unknown instance key {sender.hex()}",
                             "LAMA-MAILBOX-SENDER")
    sig, body = inner[:64], inner[64:]
    try:
        core.sign_verify_detached(_SIG_CONTEXT + recipient_public + sender + body, sig, sign_key)
    except LamaError:
        raise SignatureError(f"the mailbox item's signature does not verify for sender {sender.hex()}",
                             "LAMA-MAILBOX-SENDER") from None
    return sender, body


# ---------------------------------------------------------------------------- content (§3.3)

def new_hashes(store: Any, since: int) -> tuple[set[str], int]:
    """Every object / ID object / BLOB / CLOB committed after event ``since``, and the mark."""
    upto = store.last_seq()
    out: set[str] = set()
    pos = since
    while pos < upto:
        batch = store.changes(pos, 10000)
        if not batch:
            break
        for seq, h, kind in batch:
            if seq > upto:
                return out, upto
            if kind != "head":
                out.add(h)
        pos = batch[-1][0]
    return out, upto


def collect(store: Any, head: str, new: set[str], sender: str) -> dict[str, Any] | None:
    """The body of a deposit: what is reachable from the version node ``head`` and in ``new``
    (content addressing: an object outside ``new`` is older, and so is all it references).
    None if ``head`` itself is not new (nothing to send)."""
    if head not in new:
        return None
    objects: list[list[str]] = []
    blobs: list[list[str]] = []
    clobs: list[list[str]] = []
    seen: set[str] = set()
    stack = [head]
    while stack:
        h = stack.pop()
        if h in seen or h not in new:
            continue
        seen.add(h)
        kind = store.kind(h)
        if kind in ("object", "id"):
            text = store.get(h)
            objects.append([h, text])
            stack.extend(r for _p, _k, r in core.references(text))
        elif kind == "blob":
            blobs.append([h, base64.b64encode(store.read_blob(h)).decode()])
        elif kind == "clob":
            clobs.append([h, store.read_blob(h).decode("utf-8")])
    return {"v": 1, "from": sender, "created": int(time.time() * 1000), "heads": [head],
            "objects": objects, "blobs": blobs, "clobs": clobs}


def _bad(msg: str) -> MailboxError:
    return MailboxError(f"refused mailbox content: {msg}", "LAMA-MAILBOX-CONTENT")


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        d = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad("not UTF-8 JSON") from None
    if not isinstance(d, dict) or d.get("v") != 1:
        raise _bad("unknown body version")
    for k in ("heads", "objects", "blobs", "clobs"):
        if not isinstance(d.get(k), list):
            raise _bad(f"{k} is not a list")
    for k in ("objects", "blobs", "clobs"):
        for e in d[k]:
            if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str)):
                raise _bad(f"an entry of {k} is not [hash, str]")
    if not all(isinstance(h, str) for h in d["heads"]) or not d["heads"]:
        raise _bad("no heads")
    return d


def import_body(store: Any, d: dict[str, Any]) -> list[Any]:
    """Verify (every check before anything is written) and store a parsed body; merge its heads
    (CHUM's ``merge`` event). Returns the VersionResults. ``MailboxError LAMA-MAILBOX-CONTENT``
    for bad content, ``LAMA-MAILBOX-INCOMPLETE`` if an object references something neither in
    the body nor stored (an earlier item not delivered yet): nothing is written then."""
    from ..objects import versions

    texts: dict[str, str] = {}
    refs: dict[str, list[str]] = {}
    types: dict[str, str] = {}
    for h, text in d["objects"]:
        if core.sha256_hex(text) != h:
            raise _bad(f"{h}: the microdata hashes to {core.sha256_hex(text)}")
        try:
            type_name, _is_id = core.type_of(text)
            rs = core.references(text)
        except LamaError as e:
            raise _bad(f"{h}: {e}") from None
        if type_name in REFUSED_TYPES:  # chum.md §6.4: a remote never alters local access rights
            raise _bad(f"{h}: refusing a remote {type_name} object")
        texts[h], types[h], refs[h] = text, type_name, [r for _p, _k, r in rs]
    blobs: dict[str, bytes] = {}
    for h, b64 in d["blobs"]:
        try:
            data = base64.b64decode(b64, validate=True)
        except ValueError:
            raise _bad(f"BLOB {h} is not base64") from None
        if hashlib.sha256(data).hexdigest() != h:
            raise _bad(f"BLOB {h} does not hash to its name")
        blobs[h] = data
    clobs: dict[str, str] = {}
    for h, text in d["clobs"]:
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != h:
            raise _bad(f"CLOB {h} does not hash to its name")
        clobs[h] = text
    for h in d["heads"]:
        if types.get(h) not in VERSION_NODE_TYPES:
            raise _bad(f"head {h} is not a version node of the body")
    # reachability (chum.md §6.4): every item hangs off a head; every reference resolves
    reached: set[str] = set()
    outside: set[str] = set()
    stack = list(d["heads"])
    while stack:
        h = stack.pop()
        if h in reached:
            continue
        if h in texts:
            reached.add(h)
            stack.extend(refs[h])
        elif h in blobs or h in clobs:
            reached.add(h)
        else:
            outside.add(h)
    extra = (set(texts) | set(blobs) | set(clobs)) - reached
    if extra:
        raise _bad(f"{len(extra)} item(s) not reachable from the heads, e.g. {sorted(extra)[0]}")
    missing = store.missing(sorted(outside)) if outside else []
    if missing:
        raise MailboxError(f"the item references {len(missing)} object(s) not received yet, e.g. "
                           f"{missing[0]}", "LAMA-MAILBOX-INCOMPLETE")
    for h, data in blobs.items():
        store.put_blob(data)
    for h, text in clobs.items():
        store.put_clob(text)
    if texts:
        store.put_microdata([(t, h) for h, t in texts.items()])
    return [versions.merge_node(store, h) for h in d["heads"]]


# ---------------------------------------------------------------------------- service (§6)

@dataclass
class _Target:
    key: bytes          # the peer instance's encryption key
    person: str
    url: str


class MailboxService:
    """Deposits for contacts without a live connection, fetches when online (docs/mailbox.md §6).

    ``log`` holds the last 200 outcomes as dicts ``{"op": "deposit"|"fetch"|"import", "ok": bool,
    "code"?, "message"?, ...}``; ``subscribe`` callbacks get each one as it happens."""

    def __init__(self, instance: Any, chat: Any, manager: Any, *, poll_interval: float = 30.0) -> None:
        self.instance = instance
        self.chat = chat
        self.manager = manager
        self.store = instance.store
        keys = instance.secret_keys("instance")
        self._public = bytes(instance.instance_public_key)
        self._secret = bytes(keys.encryption_secret)
        self._sign_secret = bytes(keys.sign_secret)
        self._me = str(instance.person_id)
        self.poll_interval = poll_interval
        self.log: list[dict[str, Any]] = []
        self._subs: list[Callable[[dict[str, Any]], Any]] = []
        self._marks: dict[tuple[bytes, str], int] = {}
        self._start_mark = 0
        self._pending: dict[bytes, set[str]] = {}      # peer key -> channels to deposit
        self._workers: dict[bytes, asyncio.Task[Any]] = {}
        self._info: dict[str, dict[str, Any] | None] = {}
        self._info_retry: dict[str, float] = {}  # url -> when to ask a mailbox-less server again
        self._unsupported_noted: dict[str, float] = {}  # url -> the _info_retry its note was for
        self._info_probes: dict[str, asyncio.Future[None]] = {}  # url -> the probe in flight
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fetch_lock: asyncio.Lock | None = None
        self._poll_task: asyncio.Task[Any] | None = None
        self._unsub: list[Callable[[], Any]] = []
        self._closed = False

    # lifecycle
    async def start(self) -> None:
        self._fetch_lock = asyncio.Lock()
        self._start_mark = self.store.last_seq()
        self._unsub.append(self.chat.subscribe(self._on_chat))
        self._unsub.append(self.manager.subscribe(self._on_manager))
        self._poll_task = self._spawn(self._poll_loop())

    async def close(self) -> None:
        self._closed = True
        for u in self._unsub:
            with contextlib.suppress(Exception):
                u()
        # the poll loop is cancelled at once (it sleeps a poll interval, 30 s by default);
        # deposits and fetches under way finish (a few seconds at most)
        if self._poll_task is not None:
            self._poll_task.cancel()
        tasks = list(self._tasks) + list(self._workers.values())
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def subscribe(self, cb: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        self._subs.append(cb)
        return lambda: self._subs.remove(cb) if cb in self._subs else None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _note(self, **entry: Any) -> dict[str, Any]:
        entry.setdefault("time", time.time())
        self.log.append(entry)
        del self.log[:-200]
        (log.info if entry.get("ok") else log.warning)("mailbox %s", entry)
        for cb in list(self._subs):
            try:
                cb(entry)
            except Exception:
                log.exception("mailbox subscriber failed")
        return entry

    def status(self) -> dict[str, Any]:
        return {"servers": dict(self._info), "pending": {k.hex(): sorted(v) for k, v in self._pending.items()},
                "log": list(self.log[-20:])}

    # sending side
    def _targets(self, person: str) -> list[_Target]:
        out = []
        for ep in self.manager.known_endpoints():
            if ep.person_id == person and ep.url and str(ep.url).lower().startswith("ws://"):
                out.append(_Target(ep.remote_key, person, str(ep.url)))
        return out

    def _on_chat(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "message" or self._closed:
            return
        m, topic = data.get("message"), data.get("topic")
        if m is None or topic is None or not getattr(m, "outgoing", False) or not topic.peer:
            return
        for tg in self._targets(topic.peer):
            if self.manager.connected(tg.key):
                continue  # CHUM delivers it (chum.md)
            self._pending.setdefault(tg.key, set()).add(topic.channel)
            if tg.key not in self._workers:
                task = asyncio.ensure_future(self._deposit_worker(tg))
                self._workers[tg.key] = task
                task.add_done_callback(functools.partial(self._worker_done, tg.key))

    def _worker_done(self, key: bytes, _task: asyncio.Task[Any]) -> None:
        self._workers.pop(key, None)

    def _on_manager(self, kind: str, data: dict[str, Any]) -> None:
        if self._closed:
            return
        if kind == "online_state" and data.get("online"):
            self._spawn(self.fetch_now())
        elif kind == "connection_up" and data.get("group") == "chum":
            # CHUM now carries everything: later deposits start from here
            with contextlib.suppress(ValueError, LamaError):
                key = bytes.fromhex(str(data.get("peer")))
                mark = self.store.last_seq()
                for k in list(self._marks):
                    if k[0] == key:
                        self._marks[k] = mark

    async def _server_info(self, url: str) -> dict[str, Any] | None:
        """The server's advertisement; a server without a mailbox is remembered for a poll
        interval (§6.1), one that could not be reached is asked again next time."""
        probe = self._info_probes.get(url)
        if probe is not None:  # a deposit worker and the poller asking at once share one probe
            await asyncio.shield(probe)
            return self._info.get(url)
        now = time.monotonic()
        if self._info.get(url) is None and now >= self._info_retry.get(url, 0.0):
            self._info_probes[url] = probe = asyncio.get_running_loop().create_future()
            try:
                self._info[url] = await mailbox_info(url)
            except (LamaError, OSError) as e:
                self._note(op="info", ok=False, url=url, code=getattr(e, "code", "LAMA-NET"), message=str(e))
                return None
            finally:
                del self._info_probes[url]
                probe.set_result(None)
            if self._info[url] is None:
                self._info_retry[url] = now + self.poll_interval
        return self._info.get(url)

    async def _deposit_worker(self, tg: _Target) -> None:
        while self._pending.get(tg.key) and not self.manager.connected(tg.key):
            channels = self._pending.pop(tg.key)
            if await self._server_info(tg.url) is None:
                # said once per server and poll interval, not at every commit while the peer is away
                retry = self._info_retry.get(tg.url)
                if retry is not None and self._unsupported_noted.get(tg.url) != retry:
                    self._unsupported_noted[tg.url] = retry
                    self._note(op="deposit", ok=False, peer=tg.key.hex(), code="LAMA-MAILBOX-UNSUPPORTED",
                               message=f"{tg.url} offers no mailbox: the messages go by CHUM when both are online")
                return
            for cid in sorted(channels):
                await self.deposit_channel(tg, cid)

    async def deposit_channel(self, tg: _Target, cid: str) -> dict[str, Any] | None:
        since = self._marks.get((tg.key, cid), self._start_mark)

        def build() -> tuple[bytes | None, int, int]:
            new, upto = new_hashes(self.store, since)
            head = self.store.get_head(cid)
            body = None if head is None else collect(self.store, head, new, self._me)
            if body is None:
                return None, upto, 0
            raw = json.dumps(body, separators=(",", ":")).encode("utf-8")
            return seal(raw, self._public, self._secret, self._sign_secret, tg.key), upto, len(body["objects"])

        env, upto, n = await asyncio.to_thread(build)
        if env is None:
            self._marks[(tg.key, cid)] = upto
            return None
        try:
            ids = await deposit(tg.url, tg.key, [env], self._public, self._secret)
        except (LamaError, OSError) as e:
            # nothing is lost: the objects stay in the store, the mark stays, so the next deposit
            # carries them too, and CHUM delivers them once both are online
            return self._note(op="deposit", ok=False, peer=tg.key.hex(), person=tg.person,
                              url=tg.url, channel=cid, code=getattr(e, "code", "LAMA-NET"), message=str(e))
        self._marks[(tg.key, cid)] = upto
        return self._note(op="deposit", ok=True, peer=tg.key.hex(), person=tg.person, url=tg.url,
                          channel=cid, id=ids[0], objects=n, bytes=len(env), since=since, upto=upto)

    # receiving side
    async def _poll_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll_interval)
            if self.manager.online:
                await self.fetch_now()

    def _sign_key_of(self, sender: bytes) -> bytes | None:
        for ep in self.manager.known_endpoints():
            if ep.remote_key == sender:
                with contextlib.suppress(LamaError, KeyError, ValueError):
                    keys = self.store.get_object(self.store.get_object(ep.endpoint_hash)["instanceKeys"])
                    return bytes.fromhex(keys["publicSignKey"])
        return None

    async def fetch_now(self) -> dict[str, Any]:
        """Fetch, verify, import and confirm what waits at my comm server (docs/mailbox.md §6.2)."""
        # the home node's mailbox when comm_server_url lists a cluster (docs/cluster.md §5)
        url = next(iter(self.manager.comm_server_urls), None)
        summary: dict[str, Any] = {"fetched": 0, "imported": 0, "deleted": 0, "errors": []}
        if not url or self._fetch_lock is None:
            return summary
        async with self._fetch_lock:
            if await self._server_info(url) is None:
                return summary

            confirmed: list[str] = []

            async def handle(items: list[tuple[str, bytes]]) -> list[str]:
                done = confirmed
                for id, env in items:
                    try:
                        if hashlib.sha256(env).hexdigest() != id:
                            raise DecryptionError(f"mailbox item {id} was altered on the server "
                                                  "(its bytes do not hash to its id)", "LAMA-MAILBOX-TAMPERED")
                        sender, body = open_envelope(env, self._public, self._secret, self._sign_key_of)
                        d = parse_body(body)
                        merged = await asyncio.to_thread(import_body, self.store, d)
                    except LamaError as e:
                        summary["errors"].append(e)
                        self._note(op="import", ok=False, id=id, code=e.code, message=str(e))
                        if e.code in ("LAMA-MAILBOX-INCOMPLETE", "LAMA-MAILBOX-SENDER"):
                            continue  # may become importable (earlier item, pairing data): kept
                        done.append(id)  # can never be read: deleted, CHUM delivers the content
                        continue
                    summary["imported"] += 1
                    done.append(id)
                    self._note(op="import", ok=True, id=id, sender=sender.hex(), person=d.get("from"),
                               url=url, objects=len(d["objects"]), heads=[r.head for r in merged],
                               hashes=[h for h, _ in d["objects"]])
                return done

            try:
                n, deleted = await fetch(url, self._public, self._secret, handle)
            except (LamaError, OSError) as e:
                self._note(op="fetch", ok=False, url=url, code=getattr(e, "code", "LAMA-NET"), message=str(e))
                summary["errors"].append(e)
                return summary
            summary["fetched"], summary["deleted"] = n, deleted
            if n:
                # confirmed: the ids the server was asked to delete and answered for
                self._note(op="fetch", ok=True, url=url, fetched=n, imported=summary["imported"],
                           deleted=deleted, confirmed=confirmed)
            return summary


def _check_key(k: Any, what: str) -> bytes:
    if not isinstance(k, bytes) or len(k) != 32:
        raise InvalidArgumentError(f"{what} is 32 bytes", "LAMA-ARG")
    return k
