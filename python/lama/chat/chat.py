"""The chat layer: contacts, topics, messages, events (docs/chat.md).

Design decisions, each against a failure of the reference app (app-layer.md §5.6):

* a contact is a pure function of the person id (Someone ``someone-for-<personId>``), written
  by one upsert path (:meth:`Chat.on_paired`), so repeated pairing or sync never duplicates it
  (B9);
* the channel of a 1-to-1 message is the topic's ownerless channel, whoever posts from
  whichever device - a pure function of the topic, never of local state (B6, §3.5);
* a topic's grants (IdAccess on the channel, Access on the Topic, every participant) are
  written when it is created, and re-checked idempotently at start (B1, B7, §4.3), never per
  message;
* attachments are BlobDescriptors (B2, §4.4);
* events come from the store's post-commit feed (B8), so imported and local posts raise the
  same ``message`` event, keyed by the CreationTime hash (B10); sends are never dropped.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import secrets as _secrets
import threading
import time
import weakref
from collections import OrderedDict
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Sequence

from lama import access
from lama._core import core
from lama.chat import attachments as _att
from lama.chat import channel as _ch
from lama.chat import groups as _groups
from lama.chat.model import Attachment, Contact, Message, RemovedContact, Topic
from lama.connect import contacts as _contacts
from lama.connect import profile as _profile
from lama.errors import (
    InvalidArgumentError,
    LamaError,
    MicrodataError,
    NotFoundError,
    SignatureError,
)
from lama.identity import certificates
from lama.objects import linkedlist, versions

__all__ = ["Chat", "MAX_ATTACHMENTS", "MAX_TEXT", "one_to_one_id"]

log = logging.getLogger("lama.chat")

MAX_TEXT = 64 * 1024
"""The largest message text, in UTF-8 bytes."""
MAX_ATTACHMENTS = 64
MAX_BATCH = 10_000
"""The most messages :meth:`Chat.send_many` writes in one transaction (larger inputs are cut
into batches of this size)."""
# how long the event thread waits for _post to hand over the messages of my own commit
_HANDOVER_WAIT = 2.0

_MARK_KEY = "lama.chat"
# What the event thread's _scan reads of the feed: Topic objects, group membership
# certificates (lama.chat.groups) and ChannelInfo head moves (Store.changes_of's types)
_FEED_TYPES = ("Topic", "AccessVersionedObjectCertificate", "ChannelInfo")
_ONE_TO_ONE = re.compile(r"^([0-9a-f]{64})<->([0-9a-f]{64})$")  # app-layer.md §3.3
_MSG_CACHE = 1024
# on an event loop (Chat.attach_loop): how often the loop looks for commits of other
# processes (this process's commits wake it at once), as the event thread's wait slice
_LOOP_POLL = 0.2

Callback = Callable[[str, dict[str, Any]], Any]


def one_to_one_id(a: str, b: str) -> str:
    """The reference's 1-to-1 topic id: both person ids sorted, joined by ``<->`` (§3.3)."""
    a = core.check_hash(a, "person id")
    b = core.check_hash(b, "person id")
    lo, hi = sorted([a, b])
    return f"{lo}<->{hi}"


def _person(value: Any, what: str = "person id") -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str of 64 hex digits, not {type(value).__name__}",
                                   code="LAMA-ARG")
    try:
        return str(core.check_hash(value, what))
    except MicrodataError:
        raise InvalidArgumentError(f"{what} {value!r} is not 64 lower-case hex digits",
                                   code="LAMA-ARG") from None


def _check_text(text: Any, has_files: bool) -> str:
    if not isinstance(text, str):
        raise InvalidArgumentError(f"the text must be a str, not {type(text).__name__}",
                                   code="LAMA-CHAT-TEXT")
    try:
        n = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidArgumentError("the text is not valid Unicode (lone surrogate)",
                                   code="LAMA-CHAT-TEXT") from None
    if n > MAX_TEXT:
        raise InvalidArgumentError(f"the text has {n} bytes of UTF-8, more than {MAX_TEXT}",
                                   code="LAMA-CHAT-TEXT")
    if not text.strip() and not has_files:
        raise InvalidArgumentError("the text is empty (and there is no attachment)",
                                   code="LAMA-CHAT-TEXT")
    return text


class _Deferred(Exception):
    """On the loop: a head move of my own posts whose Messages _post has not handed over yet
    (Chat._own_posts); the move is taken again when they are."""


class _PostRequest:
    __slots__ = ("specs", "done", "results", "error")

    def __init__(self, specs: list[Any]) -> None:
        self.specs = specs
        # set only for a sender that waits for another thread's commit (the leader of a
        # batch, most often the only sender, never waits)
        self.done: threading.Event | None = None
        self.results: list[Any] = []
        self.error: BaseException | None = None


class _Subscriber:
    __slots__ = ("callback", "loop")

    def __init__(self, callback: Callback, loop: asyncio.AbstractEventLoop | None) -> None:
        self.callback = callback
        self.loop = loop



# Chats whose event thread runs: closed at interpreter exit (before daemon threads are
# stopped). A daemon thread that Python stops at finalization while it waits in the native
# core's feed (the GIL released) aborts the process ("FATAL: exception not rethrown",
# exit code 134): its unwind meets the Rust frames of the call. Closing also persists the mark.
_OPEN: weakref.WeakSet[Chat] = weakref.WeakSet()


@atexit.register
def _close_open_chats() -> None:
    for chat in list(_OPEN):
        try:
            chat.close()
        except Exception:  # noqa: BLE001 - at exit, each chat gets its chance
            log.debug("closing a chat at exit", exc_info=True)

class Chat:
    """The chat layer on one open :class:`lama.identity.instance.Instance` (docs/chat.md)."""

    def __init__(self, instance: Any, *, events: bool = True) -> None:
        self.instance = instance
        self.store = instance.store
        self.me: str = str(instance.person_id)
        self._lock = threading.RLock()
        self._gc_lock = threading.Lock()
        self._gc_queue: dict[str, list[_PostRequest]] = {}
        self._gc_busy: set[str] = set()
        # per channel: what my last post wrote, read again by the next one only if another
        # writer moved the channel (channel.PostCache; used by the batch leader only)
        self._post_caches: dict[str, _ch.PostCache] = {}
        self._subs: list[_Subscriber] = []
        self._closed = False
        self._names: dict[str, str] = {}
        self._msg_cache: OrderedDict[str, Message] = OrderedDict()
        # CreationTime hash -> my message posted here, until the event thread emits it
        self._posted: dict[str, Message] = {}
        # my messages the event thread built itself because it was faster than _post
        self._built_own: dict[str, None] = {}
        self._posted_lock = threading.Lock()
        self._posted_cond = threading.Condition(self._posted_lock)  # _post handed over
        # channel id hash -> {head entry before: (head entry after, [CreationTime hashes])}
        # of my commits, so the event thread emits my own posts without walking the list
        self._own_moves: dict[str, dict[str | None, tuple[str, list[str]]]] = {}
        # channel id hash -> (topic id, last head seen by the event feed)
        self._channels: dict[str, list[Any]] = {}
        self._topics: dict[str, Topic] = {}      # topic id -> Topic
        self._topic_channels: dict[str, set[str]] = {}  # topic id -> channel id hashes
        self._members_pending: set[str] = set()  # channels: membership without its Signature yet
        self._proven: set[str] = set()  # endpoints proven (docs/connections.md §3.5)
        self._bad_signatures: set[str] = set()  # Signatures over Keys that did not verify
        self._good_signatures: set[tuple[str, str, bytes]] = set()  # ... that did (verify)
        # verify: person -> (Store.last_seq when computed, the sign keys trusted for it)
        self._trusted_keys: dict[str, tuple[int, list[bytes]]] = {}
        store = self.store
        _contacts.enable_reverse_maps(store)
        certificates.enable_reverse_maps(store)
        store.enable_reverse_maps("Keys", ["owner"])
        # the catch-up at open finds Topic objects from their channels (_find_topics)
        store.enable_reverse_maps("Topic", ["channel"])
        self._sign_secret = instance.secret_keys("person").sign_secret
        self._sub = store.subscribe() if events else None
        self._events_enabled = events
        self._mark: int = 0  # the feed position read up to (_catch_up sets it)
        # on the loop (attach_loop): channel -> when its move of my posts was first deferred
        # because _post had not handed their Messages over yet
        self._deferred: dict[str, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._init_leute()
        self._load_registries()
        self._catch_up()
        for t in list(self._topics.values()):
            self._share(t)
        # my profile (the endpoints of my devices) with my contacts (docs/chat.md §2)
        _profile.share_own_profile(instance, self._contact_persons())
        self._thread: threading.Thread | None = None
        # the feed is read by the event thread, or on an event loop once attach_loop() ran;
        # _scan_lock: one reader at a time, each from self._mark (no event twice)
        self._scan_lock = threading.Lock()
        self._signal: Any = None  # the store's CommitSignal while on the loop
        self._poll: asyncio.TimerHandle | None = None
        self._saved_mark = -1  # the mark the loop's poll persisted last
        self._signalled = False  # a commit signalled the loop since its last poll
        if self._sub is not None:
            self._thread = threading.Thread(target=self._run_events, name="lama.chat events",
                                            daemon=True)
            _OPEN.add(self)
            self._thread.start()

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ on an event loop

    def attach_loop(self) -> bool:
        """Read the event feed on the running event loop from now on, instead of the event
        thread (issue 10): the store's :class:`CommitSignal` makes the loop readable right
        after a commit of this process (an import by a CHUM session, my own post), and the
        loop reads the feed and queues the events for its subscribers there: one wake-up
        between the commit and ``on_message`` instead of two (the event thread's, then the
        loop's through ``call_soon_threadsafe``). Commits of other processes are found by a
        look every 0.2 s, as the thread's wait slice did. The event thread ends.

        Call it on the loop's thread; ``False`` (and the thread goes on) without an event
        feed (``events=False``), when already attached, or when the core cannot make a commit
        signal."""
        if self._sub is None or self._closed or self._loop is not None:
            return False
        loop = asyncio.get_running_loop()
        try:
            signal = self.store.commit_signal()
        except (LamaError, AttributeError) as e:
            log.debug("no commit signal, the event thread stays: %s", e)
            return False
        # the thread ends at its next wake-up without scanning (it looks under _scan_lock)
        self._loop_thread, self._signal, self._loop = threading.get_ident(), signal, loop
        loop.add_reader(signal.fileno(), self._on_signal)
        self._poll = loop.call_later(_LOOP_POLL, self._on_poll)
        loop.call_soon(self._pump)  # what committed before the signal existed
        return True

    def detach_loop(self) -> None:
        """Stop reading the feed on the event loop (on any thread; idempotent). The events
        of later commits are no longer dispatched (:meth:`close` calls it)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._detach_here()
            return
        done = threading.Event()

        def detach() -> None:
            self._detach_here()
            done.set()

        try:
            loop.call_soon_threadsafe(detach)
        except RuntimeError:  # the loop is closed: its selector is gone with it
            pass
        else:
            if done.wait(5.0):
                return
        with self._scan_lock:
            signal, self._signal = self._signal, None
        if signal is not None:
            signal.close()

    def _detach_here(self) -> None:
        loop = self._loop
        with self._scan_lock:
            signal, self._signal = self._signal, None
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        if signal is not None:
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(Exception):
                    loop.remove_reader(signal.fileno())
            signal.close()

    def _on_signal(self) -> None:
        signal = self._signal
        if signal is None:
            return
        signal.clear()
        self._signalled = True
        self._pump()

    def _on_poll(self) -> None:
        self._poll = None
        if self._signal is None or self._closed:
            return
        loop = self._loop
        quiet = not self._signalled  # no commit of this process since the last poll
        self._signalled = False
        if not self._pump() and quiet and self._mark != self._saved_mark and loop is not None:
            # idle for a whole poll: persist the mark (a store write, off the loop). Not
            # while commits come: its write transaction and fsync would queue the next
            # post's commit behind them (the store has one writer at a time)
            mark = self._mark
            self._saved_mark = mark
            loop.run_in_executor(None, self._save_mark, mark)
        if loop is not None and self._signal is not None:
            self._poll = loop.call_later(_LOOP_POLL, self._on_poll)

    def _save_mark(self, mark: int) -> None:
        try:
            self.store.set_peer_mark(_MARK_KEY, mark)
        except LamaError:
            pass

    def _pump(self) -> bool:
        """Read the feed after ``self._mark`` and dispatch its events (on the loop); ``True``
        if there were any."""
        any_ = False
        with self._scan_lock:
            for cid in list(self._deferred):  # moves of my posts now handed over
                try:
                    self._channel_moved(cid, True)
                except Exception:  # noqa: BLE001 - the feed must go on
                    self._deferred.pop(cid, None)
                    log.exception("chat event processing failed")
            while self._signal is not None:
                try:
                    pos, batch = self.store.changes_of(_FEED_TYPES, self._mark, 5000)
                except LamaError as e:  # the store closed or broke: nothing more to read
                    log.warning("chat event feed: %s", e)
                    return any_
                if pos <= self._mark:
                    return any_
                any_ = True
                if batch:
                    try:
                        self._scan(batch, emit=True)
                    except Exception:  # noqa: BLE001 - the feed must go on
                        log.exception("chat event processing failed")
                self._mark = pos
        return any_

    def close(self) -> None:
        """Stop the event thread (or the reading on the event loop); idempotent (the instance
        stays open)."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        self.detach_loop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self._sub is not None:
            try:
                self._sub.close()
            except LamaError:
                pass
        with self._scan_lock:
            mark = self._mark
        try:
            self.store.set_peer_mark(_MARK_KEY, mark)
        except LamaError:
            pass

    def __enter__(self) -> Chat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ Leute (§1.3, §1.4)

    def _profile(self, person: str, owner: str, descriptions: list[str] | None = None,
                 endpoints: list[str] | None = None) -> dict[str, Any]:
        return {"$type$": "Profile", "profileId": "default", "personId": person, "owner": owner,
                "communicationEndpoint": endpoints or [], "personDescription": descriptions or []}

    def _profile_id(self, person: str, owner: str) -> str:
        return str(core.id_hash(self._profile(person, owner)))

    def _init_leute(self) -> None:
        store = self.store
        self._leute_id = str(core.id_hash({"$type$": "Leute", "appId": "one.leute", "me": "0" * 64,
                                           "other": [], "group": []}))
        if versions.current_hash(store, self._leute_id) is not None:
            return
        # my default profile (§1.4 step 2): my SignKey
        my_pid = self._profile_id(self.me, self.me)
        if versions.current_hash(store, my_pid) is None:
            key = self.instance.person_public_sign_key.hex()
            [(sk, _s, _)] = store.put_objects([{"$type$": "SignKey", "key": key}])
            versions.store_versioned(store, self._profile(self.me, self.me, [sk]))
        me_someone = versions.store_versioned(store, {
            "$type$": "Someone", "someoneId": "me", "mainProfile": my_pid,
            "identities": {self.me: {my_pid}}})
        versions.store_versioned(store, {"$type$": "Leute", "appId": "one.leute",
                                         "me": me_someone.id_hash, "other": [], "group": []})

    def _leute(self) -> dict[str, Any]:
        return versions.current(self.store, self._leute_id)

    @staticmethod
    def _someone_id_of(person: str) -> str:
        return f"someone-for-{person}"

    def _someone_hash(self, person: str) -> str:
        return str(core.id_hash({"$type$": "Someone", "someoneId": self._someone_id_of(person),
                                 "mainProfile": "0" * 64, "identities": {}}))

    # ------------------------------------------------------------------ contacts

    def on_paired(self, person_id: str, *, readd: bool = True) -> Contact | None:
        """The hook after a pairing success, both sides (docs/chat.md §2): the contact, trust in
        its proven keys, its 1-to-1 topic with channel and grants; idempotent. ``None`` for my
        own person (a second device). With ``readd=False`` a removed contact stays removed
        (``None``) - for re-running the hook at start over every stored endpoint."""
        p = _person(person_id)
        if p == self.me:
            return None
        store = self.store
        with self._lock:
            keys = [h for h in store.referencing(p, "Keys")
                    if store.get_object(h).get("owner") == p]
            if not keys and not _contacts.endpoints_of_person(store, p):
                raise NotFoundError(f"no pairing stored the keys of person {p}",
                                    code="LAMA-CHAT-UNPAIRED")
            sid = self._someone_hash(p)
            leute = self._leute()
            listed = sid in leute.get("other", [])
            if not listed and not readd and store.get_head(sid) is not None:
                return None
            their_pid = self._profile_id(p, p)
            # trust the proven keys (§1.6 step 2) - pairing normally certified them already
            prof_hash = versions.current_hash(store, their_pid)
            if prof_hash is not None:
                certs = [c for c in certificates.certificates_for(store, prof_hash, "TrustKeysCertificate")
                         if any(store.get_object(s).get("issuer") == self.me
                                for s in certificates.signatures_for(store, c))]
                if not certs:
                    self.instance.trust_keys(prof_hash)
            idents = [their_pid]
            mine = self._profile_id(p, self.me)
            if versions.current_hash(store, mine) is not None:
                idents.append(mine)
            if store.get_head(sid) is None or not listed:
                versions.store_versioned(store, {
                    "$type$": "Someone", "someoneId": self._someone_id_of(p),
                    "mainProfile": their_pid, "identities": {p: set(idents)}})
            if not listed:
                new = dict(leute)
                new.pop("$versionHash$", None)
                new["other"] = sorted({*leute.get("other", []), sid})
                versions.store_versioned(store, new)
            self._names.pop(p, None)
            topic = self._ensure_one_to_one(p)
            # my profile, so the contact learns of every device of mine (docs/chat.md §2)
            _profile.share_own_profile(self.instance, [p])
            contact = self._contact(p, topic.id)
        if not listed:
            self._emit("contact", {"contact": contact, "change": "added"})
        return contact

    def _contact_persons(self) -> list[str]:
        out = []
        for sid in self._leute().get("other", []):
            h = versions.current_hash(self.store, sid)
            if h is None:
                continue
            someone = self.store.get_object(h)
            for p in someone.get("identities", {}):
                if p != self.me and p not in out:
                    out.append(str(p))
        return out

    def _is_contact(self, p: str) -> bool:
        return self._someone_hash(p) in self._leute().get("other", [])

    def _email(self, p: str) -> str | None:
        try:
            obj = self.store.get_object(p)
        except LamaError:
            return None
        e = obj.get("email")
        return str(e) if e is not None else None

    def _person_name(self, p: str) -> str:
        name = self._names.get(p)
        if name is not None:
            return name
        if p == self.me:
            name = self.instance.person_name or self.instance.email
        else:
            name = None
            for owner in (self.me, p):
                h = versions.current_hash(self.store, self._profile_id(p, owner))
                if h is None:
                    continue
                for d in self.store.get_object(h).get("personDescription", []):
                    obj = self.store.get_object(d)
                    if obj.get("$type$") == "PersonName" and obj.get("name"):
                        name = str(obj["name"])
                        break
                if name:
                    break
            if not name:
                name = self._email(p) or p[:12]
        self._names[p] = name
        return name

    def _contact(self, p: str, topic_id: str | None = None) -> Contact:
        insts = self._instances_of(p)
        return Contact(person_id=p, email=self._email(p), name=self._person_name(p),
                       someone_id=self._someone_id_of(p), instances=insts,
                       topic_id=topic_id or one_to_one_id(self.me, p))

    def _instances_of(self, p: str) -> tuple[str, ...]:
        """The contact's instances: those of its endpoints that are proven (docs/connections.md
        §3.5) - a forged endpoint names no instance of it."""
        me_key = bytes(self.instance.person_public_sign_key)
        out = set()
        for h, o in _contacts.endpoints_of_person(self.store, p):
            # a proven endpoint stays proven (its objects are immutable): verified once, not at
            # every contact lookup (App.send by person id looks the contact up)
            # ... unless its person removed the device since (a revocation, §3.5)
            if h in self._proven and self.store.has(
                    _contacts.revocation_hash(p, str(o.get("instanceKeys")))):
                self._proven.discard(h)
            if h in self._proven or _contacts.endpoint_proven(self.store, self.me, me_key, o,
                                                              self._bad_signatures):
                self._proven.add(h)
                out.add(str(o["instanceId"]))
        return tuple(sorted(out))

    def contacts(self) -> list[Contact]:
        """The contacts, sorted by name then person id."""
        out = [self._contact(p) for p in self._contact_persons()]
        return sorted(out, key=lambda c: (c.name.casefold(), c.person_id))

    def contact(self, person_id: str) -> Contact:
        p = _person(person_id)
        if not self._is_contact(p):
            raise NotFoundError(f"person {p} is not a contact", code="LAMA-CHAT-NOCONTACT")
        return self._contact(p)

    def rename(self, person_id: str, name: str) -> Contact:
        """Name a contact: a PersonName in my own profile about them (local, never shared)."""
        p = _person(person_id)
        if not isinstance(name, str) or not name.strip() or len(name) > 256:
            raise InvalidArgumentError("a contact name must be a non-empty str of at most 256 characters",
                                       code="LAMA-ARG")
        with self._lock:
            if not self._is_contact(p):
                raise NotFoundError(f"person {p} is not a contact", code="LAMA-CHAT-NOCONTACT")
            store = self.store
            mine = self._profile_id(p, self.me)
            desc: list[str] = []
            h = versions.current_hash(store, mine)
            if h is not None:
                desc = [d for d in store.get_object(h).get("personDescription", [])
                        if store.get_object(d).get("$type$") != "PersonName"]
            [(nh, _s, _)] = store.put_objects([{"$type$": "PersonName", "name": name.strip()}])
            versions.store_versioned(store, self._profile(p, self.me, sorted({*desc, nh})))
            sid = self._someone_hash(p)
            someone = versions.current(store, sid)
            ids = {k: {*v, mine} for k, v in someone.get("identities", {}).items()}
            versions.store_versioned(store, {"$type$": "Someone", "someoneId": self._someone_id_of(p),
                                             "mainProfile": someone["mainProfile"], "identities": ids})
            self._names.pop(p, None)
            contact = self._contact(p)
        self._emit("contact", {"contact": contact, "change": "renamed"})
        return contact

    def remove_contact(self, person_id: str) -> RemovedContact:
        """Drop the contact and revoke it from the grants of every topic it takes part in;
        the facade stops its connections (``RemovedContact.instances``)."""
        p = _person(person_id)
        with self._lock:
            if not self._is_contact(p):
                raise NotFoundError(f"person {p} is not a contact", code="LAMA-CHAT-NOCONTACT")
            store = self.store
            leute = self._leute()
            new = {k: v for k, v in leute.items() if k != "$versionHash$"}
            sid = self._someone_hash(p)
            new["other"] = sorted(x for x in leute.get("other", []) if x != sid)
            versions.store_versioned(store, new)
            revoked: list[str] = []
            for t in list(self._topics.values()):
                if p not in t.participants:
                    continue
                for kw in ({"id": t.channel}, {"object": t.hash}):
                    ps, _gs = access.grants(store, **kw)
                    if p in ps:
                        access.revoke(store, persons=[p], **kw)
                        revoked.append(access.grant_id(**kw))
            _profile.unshare_own_profile(self.instance, [p])
            insts = self._instances_of(p)
            self._names.pop(p, None)
        removed = RemovedContact(p, insts, tuple(revoked))
        self._emit("contact_removed", {"removed": removed})
        return removed

    # ------------------------------------------------------------------ topics (§3)

    one_to_one_id = staticmethod(one_to_one_id)

    def _topic_from(self, obj: dict[str, Any], h: str) -> Topic:
        tid = str(obj["id"])
        m = _ONE_TO_ONE.match(tid)
        if m:
            parts = (m.group(1), m.group(2))
            peer = parts[1] if parts[0] == self.me else parts[0] if parts[1] == self.me else None
            return Topic(tid, obj.get("name"), h, str(obj["channel"]), "one_to_one", parts, peer)
        # group: the persons of my grants and of the membership certificates (groups.py)
        ps, _gs = access.grants(self.store, object=h)
        ms = _groups.members(self.store, str(obj["channel"]))
        return Topic(tid, obj.get("name"), h, str(obj["channel"]), "group",
                     tuple(sorted({*ps, *ms})), None)

    def _register_topic(self, obj: dict[str, Any], h: str, *, write: bool = True) -> tuple[Topic, bool]:
        """Add a Topic object to the registry (§3.2, last write wins); ``(topic, new)``."""
        with self._lock:
            t = self._topic_from(obj, h)
            old = self._topics.get(t.id)
            self._topics[t.id] = t
            self._add_channel(t.channel, t.id)
            if write and (old is None or old.hash != h):
                reg = self._registry_obj("TopicAppRegistry")
                topics = dict(reg.get("topics", {}))
                if topics.get(t.id) != h:
                    topics[t.id] = h
                    versions.store_versioned(self.store, {"$type$": "TopicAppRegistry",
                                                          "id": "TopicAppRegistry", "topics": topics})
            return t, old is None

    def _add_channel(self, cid: str, topic_id: str, *, write: bool = True) -> None:
        if cid in self._channels:
            return
        self._channels[cid] = [topic_id, _ch.head_of(self.store, cid)]
        self._topic_channels.setdefault(topic_id, set()).add(cid)
        if write:
            reg = self._registry_obj("ChannelRegistry")
            chans = set(reg.get("channels", []))
            if cid not in chans:
                chans.add(cid)
                versions.store_versioned(self.store, {"$type$": "ChannelRegistry",
                                                      "id": "ChannelRegistry", "channels": chans})

    def _registry_obj(self, name: str) -> dict[str, Any]:
        if name == "TopicAppRegistry":
            rid = core.id_hash({"$type$": name, "id": name, "topics": {}})
        else:
            rid = core.id_hash({"$type$": name, "id": name, "channels": set()})
        h = versions.current_hash(self.store, rid)
        return {} if h is None else self.store.get_object(h)

    def _load_registries(self) -> None:
        store = self.store
        for tid, h in self._registry_obj("TopicAppRegistry").get("topics", {}).items():
            try:
                self._register_topic(store.get_object(h), h, write=False)
            except LamaError as e:
                log.warning("topic %s in the registry cannot be read: %s", tid, e)
        for cid in self._registry_obj("ChannelRegistry").get("channels", []):
            if cid not in self._channels:
                try:
                    info = store.get_object(cid)
                    self._add_channel(cid, str(info["id"]), write=False)
                except LamaError as e:
                    log.warning("channel %s in the registry cannot be read: %s", cid, e)

    def _share(self, t: Topic) -> None:
        """§4.3: IdAccess on the channel + Access on the Topic for every participant (mode
        add: writes nothing when complete)."""
        ps = [p for p in t.participants]
        if self.me not in ps:
            ps.append(self.me)
        if t.kind == "one_to_one" and self.me not in t.participants:
            return  # a 1-to-1 topic of others that reached me: not mine to share
        store = self.store
        targets: list[dict[str, str]] = [{"id": t.channel}, {"object": t.hash}]
        if t.kind == "group":
            targets += self._share_membership(t)
        for kw in targets:
            have, _gs = access.grants(store, **kw)
            want = [p for p in ps if p not in have]
            if t.kind == "one_to_one":
                # a removed participant is not re-granted until paired again
                want = [p for p in want if p == self.me or self._is_contact(p)]
            else:
                want = [p for p in want if p == self.me or not self._was_removed(p)]
            if want:
                _grant(store, kw, want)

    def _was_removed(self, p: str) -> bool:
        """A contact that remove_contact dropped (its Someone exists, not in Leute.other)."""
        return self.store.get_head(self._someone_hash(p)) is not None and not self._is_contact(p)

    def _share_membership(self, t: Topic) -> list[dict[str, str]]:
        """Group topics (groups.py): certify the persons of my own grants that nobody
        certified yet (I added them); the membership Signatures to grant."""
        store = self.store
        have = _groups.members(store, t.channel)
        granted, _gs = access.grants(store, object=t.hash)
        if any(p not in have for p in granted):
            have = _groups.certify(store, t.channel, [p for p in granted if p not in have],
                                   self.me, self._sign_secret, have)
        return [{"object": s} for sigs in have.values() for s in sorted(sigs)]

    def _members_changed(self, cids: set[str], emit: bool) -> int:
        """Membership certificates of these channels arrived: the group topics' participants
        are read again and the topics shared with them (my posts reach every participant)."""
        n = 0
        for cid in cids:
            info = self._channels.get(cid)
            t = self._topics.get(info[0]) if info is not None else None
            if t is None or t.kind != "group":
                continue
            if not any(certificates.signatures_for(self.store, c) for c in
                       certificates.certificates_for(self.store, cid, _groups.MEMBERSHIP)):
                self._members_pending.add(cid)  # the Signature comes in a later commit
                continue
            self._members_pending.discard(cid)
            with self._lock:
                t2, _new = self._register_topic(self.store.get_object(t.hash), t.hash)
                if self.me in t2.participants:
                    self._share(t2)
            if emit and t2.participants != t.participants:
                self._emit("topic", {"topic": t2, "change": "participants"})
                n += 1
        return n

    def _create_topic(self, topic_id: str, name: str | None) -> Topic:
        store = self.store
        cid = _ch.ensure_channel(store, topic_id)
        obj: dict[str, Any] = {"$type$": "Topic", "id": topic_id, "channel": cid}
        if name is not None:
            obj = {"$type$": "Topic", "name": name, "id": topic_id, "channel": cid}
        [(h, _s, _)] = store.put_objects([obj])
        t, new = self._register_topic(obj, str(h))
        if new:
            self._emit("topic", {"topic": t})
        return t

    def _ensure_one_to_one(self, p: str) -> Topic:
        tid = one_to_one_id(self.me, p)
        with self._lock:
            t = self._topics.get(tid)
            if t is None or store_missing_channel(self.store, t):
                # §3.3: name = id, ownerless channel (objects.md §8)
                t = self._create_topic(tid, tid)
            self._share(t)
        return t

    def one_to_one(self, person_id: str) -> Topic:
        """The 1-to-1 topic with a contact (created with channel and grants if missing)."""
        p = _person(person_id)
        if p == self.me:
            raise InvalidArgumentError("a 1-to-1 topic needs another person", code="LAMA-CHAT-SELF")
        if not self._is_contact(p):
            raise NotFoundError(f"person {p} is not a contact", code="LAMA-CHAT-NOCONTACT")
        return self._ensure_one_to_one(p)

    def create_group(self, name: str, participants: Iterable[str], topic_id: str | None = None) -> Topic:
        """A group topic (§3.3) with an ownerless channel, shared with every participant."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("a group topic needs a non-empty name", code="LAMA-ARG")
        if isinstance(participants, str):
            raise InvalidArgumentError("participants must be a list of person ids", code="LAMA-ARG")
        ps = sorted({_person(p) for p in participants} | {self.me})
        tid = topic_id if topic_id is not None else _secrets.token_hex(16)
        if not isinstance(tid, str) or not tid or _ONE_TO_ONE.match(tid):
            raise InvalidArgumentError(f"{tid!r} cannot be a group topic id", code="LAMA-ARG")
        with self._lock:
            t = self._topics.get(tid)
            if t is None:
                t = self._create_topic(tid, name)
            for kw in ({"id": t.channel}, {"object": t.hash}):
                _grant(self.store, kw, ps)
            self._share_membership(t)  # certify the new participants
            t, _new = self._register_topic(self.store.get_object(t.hash), t.hash)
            self._share(t)  # and grant the membership to every participant
        return t

    def add_participants(self, topic: Topic | str, persons: Iterable[str]) -> Topic:
        t = self.topic(topic)
        if t.kind != "group":
            raise InvalidArgumentError("only group topics take participants", code="LAMA-ARG")
        return self.create_group(t.name or t.id, [*t.participants, *persons], t.id)

    def topics(self) -> list[Topic]:
        with self._lock:
            return sorted(self._topics.values(), key=lambda t: t.id)

    def topic(self, target: Topic | str) -> Topic:
        """A person id (its 1-to-1 topic), a Topic or a topic id → the Topic."""
        if isinstance(target, Topic):
            return self._topics.get(target.id, target)
        if not isinstance(target, str):
            raise InvalidArgumentError(f"a topic target must be a person id, topic id or Topic, not "
                                       f"{type(target).__name__}", code="LAMA-ARG")
        t = self._topics.get(target)
        if t is not None:
            return t
        if re.fullmatch(r"[0-9a-f]{64}", target):
            return self.one_to_one(target)
        raise NotFoundError(f"no topic {target!r}", code="LAMA-CHAT-NOTOPIC")

    # ------------------------------------------------------------------ messages (§2.4, §3.4)

    def _message_object(self, text: str, files: Sequence[Any], thumbs: Sequence[Any]) -> dict[str, Any]:
        def desc(x: Any) -> str:
            if isinstance(x, Attachment):
                if not self.store.has(x.descriptor):
                    raise NotFoundError(f"attachment {x.descriptor} is not stored", code="LAMA-CHAT-NOATTACH")
                return x.descriptor
            return _att.store_file(self.store, x)

        for x in [*files, *thumbs]:  # nothing is written if any file is missing
            if not isinstance(x, Attachment):
                if not isinstance(x, (str, os.PathLike)):
                    raise InvalidArgumentError(f"an attachment must be a path or an Attachment, not "
                                               f"{type(x).__name__}", code="LAMA-ARG")
                _att.check_file(x)
        obj: dict[str, Any] = {"$type$": "ChatMessage", "text": text}
        if files:
            obj["attachments"] = [desc(x) for x in files]
        obj["sender"] = self.me
        if thumbs:
            obj["thumbnails"] = [desc(x) for x in thumbs]
        return obj

    def send(self, target: Topic | str, text: str, attachments: Sequence[Any] = (), *,
             thumbnails: Sequence[Any] = (), timestamp: int | None = None) -> Message:
        """Post one message (one transaction; files streamed in first). See docs/chat.md §4."""
        if isinstance(attachments, (str, os.PathLike)):
            attachments = [attachments]
        attachments = list(attachments)
        thumbnails = list(thumbnails)
        if len(attachments) > MAX_ATTACHMENTS or len(thumbnails) > MAX_ATTACHMENTS:
            raise InvalidArgumentError(f"at most {MAX_ATTACHMENTS} attachments per message", code="LAMA-ARG")
        text = _check_text(text, bool(attachments))
        if timestamp is not None and (isinstance(timestamp, bool) or not isinstance(timestamp, int)
                                      or timestamp < 0):
            raise InvalidArgumentError("timestamp must be an int of ms since the epoch", code="LAMA-ARG")
        t = self.topic(target)
        msg = self._message_object(text, attachments, thumbnails)
        [m] = self._post(t, [_ch.PostSpec(msg, timestamp)])
        return m

    def send_many(self, target: Topic | str, texts: Iterable[str], *,
                  timestamp: int | None = None, batch: int = 0) -> list[Message]:
        """Bulk post (docs/chat.md §4): the objects of every message, one ChannelInfo version
        and one transaction per batch of up to ``batch`` (default and at most MAX_BATCH)
        messages; every text is checked before anything is written."""
        size = MAX_BATCH if batch <= 0 else min(batch, MAX_BATCH)
        t = self.topic(target)
        specs: list[_ch.PostSpec] = []
        for text in texts:
            _check_text(text, False)
            specs.append(_ch.PostSpec({"$type$": "ChatMessage", "text": text, "sender": self.me},
                                      timestamp))
        out: list[Message] = []
        for i in range(0, len(specs), size):
            out.extend(self._post(t, specs[i:i + size]))
        return out

    def _post(self, t: Topic, specs: list[_ch.PostSpec]) -> list[Message]:
        if not specs:
            return []
        if t.kind == "one_to_one" and self.me not in t.participants:
            raise InvalidArgumentError(f"I am not a participant of topic {t.id}", code="LAMA-ARG")
        store = self.store
        cid = t.channel
        if cid not in self._post_caches and store.get_head(cid) is None:
            _ch.ensure_channel(store, t.id)  # (a channel I posted to has a version)
        results = self._commit(cid, specs)
        out = []
        name = self._person_name(self.me)
        for spec, (ct, mh, ts, sig, entry) in zip(specs, results):
            msg = spec.message
            atts = tuple(_att.descriptor_of(store, h) for h in msg.get("attachments", []))
            ths = tuple(_att.descriptor_of(store, h) for h in msg.get("thumbnails", []))
            m = Message(ct, t.id, t.peer, cid, entry, mh, int(ts), self.me, self.me, sig, name,
                        msg["text"], atts, ths, True)
            out.append(m)
        for m in out[-_MSG_CACHE:]:
            self._cache(m)
        if self._sub is not None:
            # the event thread emits these when it sees the head move (_channel_moved); a
            # backlog it never consumes (a post racing close) is bounded
            posted, built = self._posted, self._built_own
            with self._posted_lock:
                if len(posted) > 2 * MAX_BATCH:
                    posted.clear()
                for m in out:
                    if built.pop(m.id, 0) is None:
                        continue  # the event thread was first and built it from the store
                    posted[m.id] = m
                self._posted_cond.notify_all()
                # the loop deferred a move of these posts (_own_posts): wake it (the check is
                # under the lock the loop defers under, so no wake is missed)
                loop = self._loop if self._deferred else None
            if loop is not None and threading.get_ident() != self._loop_thread:
                try:
                    loop.call_soon_threadsafe(self._pump)
                except RuntimeError:  # the loop is closed
                    pass
        return out

    def _commit(self, cid: str, specs: list[_ch.PostSpec]) -> list[tuple[str, str, int, str, str]]:
        """Group commit: posts to one channel that arrive while another thread's commit is
        running are written together in the next transaction (a durable commit waits for the
        disk, so concurrent senders share that wait instead of queueing behind one another).
        The first waiting thread commits for all; each gets its own results or error."""
        req = _PostRequest(specs)
        with self._gc_lock:
            queue = self._gc_queue.setdefault(cid, [])
            queue.append(req)
            leader = cid not in self._gc_busy
            if leader:
                self._gc_busy.add(cid)
            else:  # before the lock is let go: the leader takes the request after that
                req.done = threading.Event()
        if not leader:
            assert req.done is not None
            req.done.wait()
            if req.error is not None:
                raise req.error
            return req.results
        while True:
            with self._gc_lock:
                batch = self._gc_queue.pop(cid, [])
                if not batch:
                    self._gc_busy.discard(cid)
                    break
            all_specs = [sp for r in batch for sp in r.specs]
            cache = self._post_caches.get(cid)
            if cache is None:
                cache = self._post_caches[cid] = _ch.PostCache()
            try:
                results, _head, _before = _ch.post(
                    self.store, cid, all_specs, author=self.me, sign_secret=self._sign_secret,
                    on_build=None if self._sub is None else partial(self._own_move, cid),
                    cache=cache)
            except BaseException as e:  # noqa: BLE001 - handed to every sender of the batch
                for r in batch:
                    r.error = e
                    if r.done is not None:
                        r.done.set()
                continue  # the leader goes on with what was queued meanwhile
            i = 0
            for r in batch:
                r.results = results[i:i + len(r.specs)]
                i += len(r.specs)
                if r.done is not None:
                    r.done.set()
        if req.error is not None:
            raise req.error
        return req.results

    def own_channel_of(self, h: str) -> str | None:
        """The channel whose version ``h`` is (its version node or ChannelInfo), if my last post
        to that channel wrote it; else None (the tracer recognises the announcement of my own
        post without reading the store)."""
        for cid, cache in list(self._post_caches.items()):
            for node_hash, (node, _obj) in list(cache.versions.items()):
                if h == node_hash or h == node.data:
                    return cid
        return None

    def _cache(self, m: Message) -> None:
        c = self._msg_cache
        c[m.id] = m
        c.move_to_end(m.id)
        while len(c) > _MSG_CACHE:
            c.popitem(last=False)

    def _message(self, t: Topic, cid: str, row: Any) -> Message | None:
        """The Message of a ``core.chat_elements`` row (``None``: not a ChatMessage); the
        same Message as :meth:`_build` makes of that element."""
        entry, ct, ts, _md, _prev, mh, post = row
        if post is None:
            return None
        text, sender, atts, thumbs, sig, author = post
        store = self.store
        return Message(ct, t.id, t.peer, cid, entry, mh,
                       int(ts) if float(ts).is_integer() else ts,
                       sender, author, sig, self._person_name(sender), text,
                       tuple(_att.descriptor_of(store, h) for h in atts),
                       tuple(_att.descriptor_of(store, h) for h in thumbs),
                       sender == self.me)

    def _build(self, t: Topic, cid: str, el: linkedlist.Element) -> Message | None:
        store = self.store
        # the element carries its CreationTime's data when it was read from the store
        mh = el.data if el.data is not None else str(store.get_object(el.creation_time)["data"])
        try:
            msg = store.get_object(mh)
        except LamaError:
            return None
        if msg.get("$type$") != "ChatMessage":
            return None
        author = sig = None
        for s in el.metadata or ():
            try:
                so = store.get_object(s)
            except LamaError:
                continue
            if so.get("$type$") == "Signature":
                author, sig = str(so["issuer"]), s
                break
        sender = str(msg["sender"])
        ts = el.timestamp
        m = Message(el.creation_time, t.id, t.peer, cid, str(el.entry), mh,
                    int(ts) if float(ts).is_integer() else ts,  # type: ignore[arg-type]
                    sender, author, sig, self._person_name(sender), str(msg.get("text", "")),
                    tuple(_att.descriptor_of(store, h) for h in msg.get("attachments", [])),
                    tuple(_att.descriptor_of(store, h) for h in msg.get("thumbnails", [])),
                    sender == self.me)
        return m

    def _elements(self, t: Topic) -> Iterator[tuple[str, linkedlist.Element]]:
        chans = sorted(self._topic_channels.get(t.id, set()) | {t.channel})
        heads: list[tuple[str, str]] = []
        for c in chans:
            h = _ch.head_of(self.store, c)
            if h is not None:
                heads.append((c, h))
        if len(heads) == 1:
            c = heads[0][0]
            for el in _ch.iter_elements(self.store, heads[0][1]):
                yield c, el
            return
        # several channels with this topic id (a peer writing per-owner channels, §3.5):
        # one newest-first stream (§2.9)
        entry_chan: dict[str, str] = {}

        def tagged(c: str, h: str) -> Iterator[linkedlist.Element]:
            for el in _ch.iter_elements(self.store, h):
                entry_chan[str(el.entry)] = c
                yield el

        for el, _i, _n in linkedlist.merge_iterator([tagged(c, h) for c, h in heads]):
            yield entry_chan.get(str(el.entry), t.channel), el

    def messages(self, target: Topic | str, *, limit: int | None = None,
                 before: str | None = None) -> Iterator[Message]:
        """Newest first, lazily (docs/chat.md §4)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise InvalidArgumentError("limit must be an int >= 0", code="LAMA-ARG")
        if before is not None:
            before = _person(before, "message id")
        t = self.topic(target)
        return self._iter_messages(t, limit, before)

    def _iter_messages(self, t: Topic, limit: int | None, before: str | None) -> Iterator[Message]:
        if limit == 0:
            return
        n = 0
        key = None
        if before is not None:
            ct = self.store.get_object(before)
            key = (ct["timestamp"], before)
        for cid, el in self._elements(t):
            if key is not None and el.key >= key:
                continue
            m = self._build(t, cid, el)
            if m is None:
                continue
            yield m
            n += 1
            if limit is not None and n >= limit:
                return

    def history(self, target: Topic | str) -> list[Message]:
        """Every message, oldest first."""
        return list(reversed(list(self.messages(target))))

    def message(self, message_id: str) -> Message:
        """A message by id (its CreationTime hash)."""
        mid = _person(message_id, "message id")
        m = self._msg_cache.get(mid)
        if m is not None:
            return m
        for t in self.topics():
            for cid, el in self._elements(t):
                if el.creation_time == mid:
                    m = self._build(t, cid, el)
                    if m is not None:
                        self._cache(m)
                        return m
        raise NotFoundError(f"no message {mid}", code="LAMA-CHAT-NOMSG")

    def _attachment(self, message_id: str, index: int) -> Attachment:
        m = self.message(message_id)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(m.attachments):
            raise NotFoundError(f"message {message_id} has no attachment {index!r} "
                                f"({len(m.attachments)} attachments)", code="LAMA-CHAT-NOATTACH")
        return _att.descriptor_of(self.store, m.attachments[index].descriptor)

    def read_attachment(self, att: Attachment) -> bytes:
        return _att.read_blob(self.store, att)

    def iter_attachment(self, att: Attachment) -> Iterator[bytes]:
        return _att.iter_blob(self.store, att)

    def save_attachment(self, message_id: str, index: int, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Stream attachment ``index`` of a message into ``path``, verified (docs/chat.md §4)."""
        return _att.save_blob(self.store, self._attachment(message_id, index), path)

    def verify(self, message: Message) -> bool:
        """The entry's signature verifies with a key *trusted* for its issuer, and the issuer
        is the ChatMessage's sender (app-layer.md §1.7, docs/chat.md §4): my own person key,
        a person's Keys that I signed (pairing), or instance Keys of a proven, unrevoked
        device of that person (:func:`lama.connect.contacts.trusted_sign_keys`). A Keys
        object that merely names the issuer as its owner (anyone can write one) counts for
        nothing."""
        if message.signature is None or message.author != message.sender:
            return False
        try:
            # the trusted keys follow from the stored objects: reused while nothing was
            # committed since (a history verified message by message computes them once)
            author = str(message.author)
            seq = self.store.last_seq()
            hit = self._trusted_keys.get(author)
            if hit is not None and hit[0] == seq:
                keys = hit[1]
            else:
                keys = _contacts.trusted_sign_keys(
                    self.store, self.me, bytes(self.instance.person_public_sign_key),
                    author, self._bad_signatures, self._good_signatures)
                if len(self._trusted_keys) > 256:
                    self._trusted_keys.clear()
                self._trusted_keys[author] = (seq, keys)
            if not keys:
                return False
            v = certificates.verify_certificate(self.store, message.signature,
                                                "AffirmationCertificate", keys)
        except (SignatureError, LamaError):
            return False
        return str(v.certificate.get("data")) == message.id

    # ------------------------------------------------------------------ events (§2.7, §2.8)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """``callback(kind, data)`` for every event (docs/chat.md §5); returns unsubscribe."""
        if not callable(callback):
            raise InvalidArgumentError("the callback must be callable", code="LAMA-ARG")
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        sub = _Subscriber(callback, loop)
        with self._lock:
            self._subs.append(sub)

        def unsubscribe() -> None:
            with self._lock:
                if sub in self._subs:
                    self._subs.remove(sub)

        return unsubscribe

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self._emit_many([(kind, data)])

    def _emit_many(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Dispatch events in order: one ``call_soon_threadsafe`` per subscribing loop for the
        whole list (each wakes the loop through its self-pipe: one write per batch, not per
        message)."""
        if not events:
            return
        with self._lock:
            subs = list(self._subs)
        here = self._loop if threading.get_ident() == self._loop_thread else None
        for s in subs:
            if s.loop is not None and s.loop is here:  # read on this loop: no wake-up
                s.loop.call_soon(_call_all, s.callback, events)
            elif s.loop is not None:
                try:
                    s.loop.call_soon_threadsafe(_call_all, s.callback, events)
                except RuntimeError:  # the loop is closed
                    pass
            else:
                _call_all(s.callback, events)

    def _catch_up(self) -> None:
        """Register the topics and channels the store received since the last run (the
        persisted mark), without message events (nobody subscribed yet).

        Bounded by what the chat needs, not by what arrived: the feed's ``head``/``id`` entries
        name the versioned IDs that moved (a handful of IDs for any number of messages), the
        channels among them are registered, and the Topic objects of every known channel are
        found through the ``Topic.channel`` reverse map. No message object is read (reading each
        ``object`` entry, as the live feed does, mapped most of the store after a bulk fill)."""
        store = self.store
        mark = store.peer_mark(_MARK_KEY)
        end = store.last_seq()
        moved: dict[str, None] = {}
        ids: dict[str, None] = {}
        while mark < end:
            batch = store.changes(mark, 10_000)
            if not batch:
                break
            for _seq, h, kind in batch:
                if kind == "head":
                    moved[h] = None
                elif kind == "id":
                    ids[h] = None
            mark = batch[-1][0]
        for h in moved:
            self._channel_moved(h, emit=False)
        self._find_topics(list(ids))
        self._mark = max(mark, end) if self._sub is None else mark
        if self._sub is not None:
            self._mark = end
        try:
            store.set_peer_mark(_MARK_KEY, self._mark)
        except LamaError:
            pass

    def _find_topics(self, ids: list[str]) -> None:
        """Register the Topic objects of every known channel and of the new ID objects ``ids``
        (a channel whose head has not arrived) not registered yet: the ``Topic.channel``
        reverse map, one lookup per ID, no object read but the Topics found."""
        store = self.store
        with self._lock:
            chans = list(dict.fromkeys([*self._channels, *ids]))
            known = {t.hash for t in self._topics.values()}
        for cid in chans:
            for h in sorted(store.referencing(cid, "Topic")):
                if h in known:
                    continue
                try:
                    self._topic_arrived(store.get_object(h), h, emit=False)
                except LamaError as e:
                    log.warning("cannot register topic %s: %s", h, e)

    def _topic_arrived(self, obj: dict[str, Any], h: str, *, emit: bool) -> int:
        t, new = self._register_topic(obj, h)
        if self.me in t.participants:
            try:
                self._share(t)
            except LamaError as e:
                log.warning("cannot share topic %s: %s", t.id, e)
        if new and emit:
            self._emit("topic", {"topic": t})
            return 1
        return 0

    def _scan(self, batch: list[tuple[int, str, str]], *, emit: bool) -> int:
        """Process committed events: new Topic objects, moved ChannelInfo heads."""
        store = self.store
        n = 0
        heads: list[str] = []
        members = set(self._members_pending)
        for _seq, h, kind in batch:
            if kind == "object":
                try:
                    md = store.get(h)
                except LamaError:
                    continue
                if md.startswith(_groups.MEMBERSHIP_PREFIX):
                    try:
                        members.add(str(store.get_object(h)["data"]))
                    except (LamaError, KeyError):
                        pass
                    continue
                if not md.startswith('<div itemscope itemtype="//refin.io/Topic"'):
                    continue
                try:
                    n += self._topic_arrived(store.get_object(h), h, emit=emit)
                except LamaError as e:
                    log.warning("cannot register topic %s: %s", h, e)
            elif kind == "head":
                if h not in heads:
                    heads.append(h)
        if members:
            n += self._members_changed(members, emit)
        for cid in heads:
            n += self._channel_moved(cid, emit)
        return n

    def _channel_moved(self, cid: str, emit: bool) -> int:
        store = self.store
        with self._lock:
            info = self._channels.get(cid)
            if info is None:
                try:
                    md = store.get(cid)
                except LamaError:
                    return 0
                if 'itemtype="//refin.io/ChannelInfo"' not in md[:80]:
                    return 0
                idobj = store.get_object(cid)
                self._add_channel(cid, str(idobj["id"]))
                self._channels[cid][1] = None
                info = self._channels[cid]
            old = info[1]
            new, node = self._cached_head(cid)
            info[1] = new
            topic_id = info[0]
            if node is not None and node.kind == "merge":  # (never my own post's node)
                self._republish_merge(cid, node)
        if not emit or new == old:
            self._deferred.pop(cid, None)
            return 0
        try:
            # a move made by my own commits only: their messages, no list walk (issue 10);
            # else the new elements with their posts, read by the core in one call
            own = self._own_posts(cid, old, new)
            els = [] if own is not None else core.chat_elements(store, old, new)
            self._deferred.pop(cid, None)
        except _Deferred:  # my posts' Messages not handed over yet: again when they are
            with self._lock:
                info[1] = old
            return 0
        except NotFoundError as e:  # an entry not imported yet: the next head move catches up
            log.debug("channel %s: %s", cid, e)
            with self._lock:
                info[1] = old
            return 0
        except LamaError as e:  # a malformed entry or CreationTime: this move is passed
            log.warning("channel %s: %s", cid, e)
            return 0
        t = self._topics.get(topic_id)
        if t is None:
            m = _ONE_TO_ONE.match(topic_id)
            if not m:
                return 0
            parts = (m.group(1), m.group(2))
            peer = parts[1] if parts[0] == self.me else parts[0] if parts[1] == self.me else None
            t = Topic(topic_id, topic_id, "", cid, "one_to_one", parts, peer)
        events: list[tuple[str, dict[str, Any]]] = [
            ("message", {"message": msg, "topic": t}) for msg in own or ()]
        posted, built = self._posted, self._built_own
        with self._posted_lock:  # one side or the other for each of my posts, never both
            for row in reversed(els):  # oldest first
                # my own posts of this process were built by _post already
                msg = posted.pop(row[1], None) if posted else None
                if msg is None:
                    try:
                        msg = self._message(t, cid, row)
                    except LamaError:
                        continue
                    if msg is None:
                        continue
                    if msg.outgoing:
                        # seen before _post got to remember it: _post must not keep it
                        if len(built) > 2 * MAX_BATCH:
                            built.clear()
                        built[msg.id] = None
                events.append(("message", {"message": msg, "topic": t}))
        for _kind, data in events[-_MSG_CACHE:]:
            self._cache(data["message"])
        self._emit_many(events)
        return len(events)

    def _cached_head(self, cid: str) -> tuple[str | None, versions.VersionNode | None]:
        """The head entry of ``cid``'s current version and its head version node, which is
        ``None`` if that version is the one my last post wrote (its node and ChannelInfo are
        in the channel's PostCache: no store read but the head; content-addressed, so they
        are what the store holds) or if the channel has no version."""
        store = self.store
        node_hash = store.get_head(cid)
        if node_hash is None:
            return None, None
        cache = self._post_caches.get(cid)
        hit = None if cache is None else cache.versions.get(node_hash)
        node: versions.VersionNode | None
        if hit is not None and hit[0].kind != "merge":
            info, node = hit[1], None
        else:
            node = versions.load_node(store, node_hash)
            info = store.get_object(node.data)
        head = info.get("head")
        return (None if head is None else str(head)), node

    def _own_move(self, cid: str, before: str | None, head: str, ids: list[str]) -> None:
        """Record that my commit about to be written moves the head entry of ``cid`` from
        ``before`` to ``head`` with the posts ``ids`` (before the write, so the event thread
        finds it when it sees the commit)."""
        with self._posted_lock:
            moves = self._own_moves.setdefault(cid, {})
            if len(moves) > 64:  # moves never consumed (a lost race, a failed write): bounded
                moves.clear()
            moves[before] = (head, ids)

    def _own_posts(self, cid: str, old: str | None, new: str | None) -> list[Message] | None:
        """My posted messages of the commits from ``old`` to ``new``, oldest first in list
        order (timestamp, CreationTime hash; §2.5), taken out of ``_posted``; ``None`` unless
        the whole move is my own commits' (then the caller walks the list). The event thread
        may see a commit before ``_post`` has handed its messages over: it waits for them
        (``_post`` notifies right after the commit; bounded, then the list is walked)."""
        moves = self._own_moves.get(cid)
        if not moves:
            return None
        chain: list[tuple[str | None, list[str]]] = []
        h = old
        while h != new and len(chain) <= len(moves):
            step = moves.get(h)
            if step is None:
                return None
            chain.append((h, step[1]))
            h = step[0]
        if h != new or not chain:
            return None
        posted = self._posted
        with self._posted_cond:
            ready = lambda: all(c in posted for _b, ids in chain for c in ids)  # noqa: E731
            if threading.get_ident() == self._loop_thread and self._loop is not None:
                # on the loop: never block it on the posting thread; _post wakes the loop
                # when it hands over (_pump retries the deferred channel), and after
                # _HANDOVER_WAIT the list is walked as the thread would
                if not ready():
                    since = self._deferred.setdefault(cid, time.monotonic())
                    if time.monotonic() - since < _HANDOVER_WAIT:
                        raise _Deferred
                    return None
            elif not self._posted_cond.wait_for(ready, _HANDOVER_WAIT):
                return None
            out: list[Message] = []
            for before, ids in chain:
                moves.pop(before, None)
                out.extend(posted.pop(c) for c in ids)
        out.sort(key=lambda m: (m.timestamp, m.id))
        return out

    def _republish_merge(self, cid: str, node: versions.VersionNode | None = None) -> None:
        """A channel whose head is a local merge (of an imported version with ours) gets a
        change node with the same data on top: merge nodes are not exported (objects.md §6.2
        item 3, docs/chum-session.md §1), so without it a third replica - my other device -
        would only ever receive one of the merged branches.

        The change node is a function of the merge node alone (its data, depth + 1, and its
        creationTime): every peer that merged the same two branches computes the same merge
        (lama.objects.versions: the merge does not depend on which head is local) and so the
        same change node, and nothing moves between them afterwards.  A local timestamp here
        gave each peer its own node, which the other then imported and merged again.

        A merge whose data is the data of every branch it joins is not republished: each of
        those branches' nodes is exported already and carries that data, so a third replica
        loses nothing.  Republishing it anyway never ends with three replicas or more (two
        devices and a contact): the middle one merges the others' branches in its own order,
        each republished node is a new branch for the other two, and they keep merging and
        republishing the same data for ever (issue 10: a running ``lama serve`` was so busy
        with that exchange that a new connection's identity steps timed out)."""
        if node is None:
            node = versions.head_node(self.store, cid)
        if node is None or node.kind != "merge":
            return
        try:
            if all(versions.load_node(self.store, p).data == node.data for p in node.parents):
                return  # nothing new to carry: every merged branch has this data already
        except LamaError:
            pass
        try:
            versions.update_versioned(
                self.store, cid,
                lambda cur: ({k: v for k, v in (cur or {}).items() if k != "$versionHash$"}, []),
                force=True, timestamp_ms=node.creation_time)
        except LamaError as e:
            log.warning("channel %s: cannot republish the merged version: %s", cid, e)

    def process_changes(self, timeout: float = 0.0) -> int:
        """Pump the store's feed by hand (``Chat(..., events=False)``); events dispatched."""
        if self._sub is None:
            store = self.store
            batch = store.changes(self._mark, 10_000)
            if not batch:
                return 0
            self._mark = batch[-1][0]
            return self._scan(batch, emit=True)
        raise InvalidArgumentError("the event thread pumps the feed (Chat(events=True))", code="LAMA-ARG")

    def _run_events(self) -> None:
        sub = self._sub
        assert sub is not None
        saved = self._mark
        while not self._closed and self._loop is None:
            try:
                # the typed feed (issue 10): only the events _scan looks at, so this thread
                # no longer reads every committed object (five per chat message) to find them
                batch = sub.wait(0.2, 5000, _FEED_TYPES)
                pos = sub.position
            except LamaError as e:
                if self._closed:
                    return
                log.warning("chat event feed: %s", e)
                return
            with self._scan_lock:
                if self._loop is not None:
                    return  # the loop reads the feed from self._mark on (attach_loop)
                batch = [b for b in batch if b[0] > self._mark]
                if not batch:
                    if pos > self._mark:
                        self._mark = pos
                    elif self._mark != saved:
                        try:
                            self.store.set_peer_mark(_MARK_KEY, self._mark)
                            saved = self._mark
                        except LamaError:
                            pass
                    continue
                try:
                    self._scan(batch, emit=True)
                except Exception:  # noqa: BLE001 - the feed must go on
                    log.exception("chat event processing failed")
                self._mark = max(pos, batch[-1][0])


def _grant(store: Any, target: dict[str, str], persons: list[str]) -> None:
    """One grant, mode add: IdAccess (``{"id": …}``) or Access (``{"object": …}``)."""
    if "id" in target:
        access.grant(store, id=target["id"], persons=persons)
    else:
        access.grant(store, object=target["object"], persons=persons)


def store_missing_channel(store: Any, t: Topic) -> bool:
    return store.get_head(t.channel) is None


def _call_all(cb: Callback, events: list[tuple[str, dict[str, Any]]]) -> None:
    for kind, data in events:
        try:
            r = cb(kind, data)
            if asyncio.iscoroutine(r):
                asyncio.ensure_future(r)
        except Exception:  # noqa: BLE001 - one subscriber's bug must not stop the others
            log.exception("chat event callback failed")
