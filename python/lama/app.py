"""The asyncio facade: an app or a bot in a few lines (issue 10).

::

    from lama import App

    async with await App.open("/tmp/alice", secret) as app:     # or App.create(...)
        link = await app.invite()                               # give it to the peer ...
        bob = await app.wait_contact()                          # ... who calls accept(link)
        await app.send(bob, "hi", attachments=["photo.jpg"])
        async for message in app.messages(bob, follow=True):    # history, then live
            print(message.sender_name, message.text)

A second device of my person: ``link = await app.invite_device()`` on a running device,
``phone = await App.join_device(directory, link, secret=...)`` on the new one
(:mod:`lama.connect.device`: the person's keys and my contacts inside the encrypted
connection; docs/connections.md §3.4); after ``phone.start()`` both sync and converge.

``App`` joins the three layers an application needs: the instance (identity, keys, store), the
connection manager (:mod:`lama.connect.manager`: comm-server listener, one CHUM connection per
contact, reconnects) and the chat layer (:mod:`lama.chat`: contacts, 1-to-1 topics, messages,
attachments). It makes sure that

* both sides create the contact and its 1-to-1 topic (with its grants, app-layer.md §5.2 and
  §5.6 B1/B9) after a pairing, whichever side invited: the pairing-success event of the manager
  calls the chat layer's on-paired hook, and at start the hook runs again for every known
  endpoint (idempotent), so a pairing that finished while the app was stopping is not lost;
* removing a contact also stops its connections (the manager disables the person);
* ``messages(contact, follow=True)`` yields the stored history oldest first and then every new
  message exactly once (keyed by the CreationTime hash, app-layer.md §5.6 B10), whether it was
  posted here or arrived by CHUM.

Everything that touches LMDB or scrypt runs in a worker thread or is short; the event loop is
never blocked for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncGenerator, Callable, Sequence

from lama.errors import InvalidArgumentError, NotFoundError

log = logging.getLogger("lama.app")

__all__ = ["App", "AppConfig"]

DEFAULT_COMM_SERVER = "ws://localhost:8000"


# App.send_many's commits (issue 10): the first is small so the peer starts receiving at once,
# each next one twice as large up to MAX_PUSH_BATCH (few commits and pushes for a long list)
FIRST_BATCH = 500
MAX_PUSH_BATCH = 4000


@dataclass
class AppConfig:
    """What :class:`App` passes to the connection manager, plus the app's own knobs. Times in
    seconds."""

    comm_server_url: str | None = DEFAULT_COMM_SERVER
    direct_host: str | None = None     # optional direct WebSocket listener
    direct_port: int | None = None
    pairing_token_lifetime: float = 15 * 60.0
    # lama's defaults reconnect faster than the manager's general-purpose ones: a chat app
    # wants its contact back within a second of the network coming back
    retry_delay: float = 0.2
    retry_max_delay: float = 5.0
    reconnect_delay: float = 0.1
    refused_retry_delay: float = 0.1
    listener_reconnect_delay: float = 0.5
    discovery_interval: float = 0.5
    sync_interval: float = 1.0
    manager_options: dict[str, Any] = field(default_factory=dict)  # any other ManagerConfig field
    # store-and-forward through the comm server's mailbox (docs/mailbox.md §6)
    mailbox: bool = True
    mailbox_poll_interval: float = 30.0
    # message transfer tracing (docs/tracing.md): None = on unless $LAMA_TRACE is "0"
    trace: bool | None = None
    trace_limit: int = 10_000
    trace_stall_after: float = 10.0

    def tracing(self) -> bool:
        return self.trace if self.trace is not None else os.environ.get("LAMA_TRACE") != "0"

    def manager_config(self) -> Any:
        from lama.connect.manager import ManagerConfig

        return ManagerConfig(
            comm_server_url=self.comm_server_url, direct_host=self.direct_host,
            direct_port=self.direct_port, pairing_token_lifetime=self.pairing_token_lifetime,
            retry_delay=self.retry_delay, retry_max_delay=self.retry_max_delay,
            reconnect_delay=self.reconnect_delay, refused_retry_delay=self.refused_retry_delay,
            listener_reconnect_delay=self.listener_reconnect_delay,
            discovery_interval=self.discovery_interval, sync_interval=self.sync_interval,
            **{"trace": self.tracing(), **self.manager_options})


class App:
    """One running lama instance for an application (see the module doc). Create it with
    :meth:`open` or :meth:`create`; ``async with`` starts and closes it."""

    def __init__(self, instance: Any, config: AppConfig | None = None) -> None:
        from lama.chat import Chat
        from lama.connect.manager import ConnectionManager

        self.instance = instance
        self.config = config or AppConfig()
        self.chat = Chat(instance)
        self.manager = ConnectionManager(instance, self.config.manager_config())
        # a device of my person that joins gets my contacts (lama.connect.device)
        self.manager.device_contacts = lambda: [str(c.person_id) for c in self.contacts()]
        self._callbacks: list[Callable[[Any], Any]] = []
        self._followers: list[asyncio.Queue[Any]] = []
        self._batches: dict[str, list[tuple[str, asyncio.Future[Any]]]] = {}
        self._flushing: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pairing_log: list[dict[str, Any]] = []
        self._pairing_changed = asyncio.Event()
        self._unsubscribe: list[Callable[[], Any]] = []
        self._started = False
        self._closed = False
        self.started_at: float | None = None
        self.mailbox: Any = None  # lama.connect.mailbox.MailboxService (docs/mailbox.md §6)
        if self.config.mailbox:
            from lama.connect.mailbox import MailboxService

            self.mailbox = MailboxService(instance, self.chat, self.manager,
                                          poll_interval=self.config.mailbox_poll_interval)
        self.tracer: Any = None  # lama.trace.Tracer (docs/tracing.md), None with trace off
        if self.config.tracing():
            from lama.trace import Tracer, manager_live

            self.tracer = Tracer(
                instance.store, str(instance.person_id), Path(instance.path) / "traces.sqlite3",
                limit=self.config.trace_limit, stall_after=self.config.trace_stall_after,
                names=lambda: {str(c.person_id): c.name for c in self.contacts()},
                live=manager_live(self.manager, lambda: self._started and not self._closed),
                own_version=self.chat.own_channel_of)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(cls, directory: str | os.PathLike[str], secret: str, *,
                   email: str | None = None, instance_name: str | None = None,
                   config: AppConfig | None = None,
                   comm_server: str | None = None) -> App:
        """Open an existing instance (``directory``: the instance or its base directory)."""
        from lama.identity.instance import Instance

        inst = await Instance.open_async(directory, secret, email=email,
                                         instance_name=instance_name)
        return cls._wrap(inst, config, comm_server)

    @classmethod
    async def create(cls, directory: str | os.PathLike[str], *, email: str, secret: str,
                     name: str | None = None, instance_name: str = "lama",
                     config: AppConfig | None = None, comm_server: str | None = None) -> App:
        """Create a new instance in ``directory/<instanceIdHash>/`` and open it."""
        from lama.identity.instance import Instance

        inst = await Instance.create_async(directory, email=email, person_name=name,
                                           instance_name=instance_name, secret=secret)
        return cls._wrap(inst, config, comm_server)

    @classmethod
    async def join_device(cls, directory: str | os.PathLike[str], link: str, *, secret: str,
                          instance_name: str | None = None, config: AppConfig | None = None,
                          comm_server: str | None = None) -> App:
        """Create a new device of the person whose device invitation ``link`` is (made by
        :meth:`invite_device` on one of its running devices), in ``directory``: the first
        device hands over the person's keys inside the end-to-end encrypted connection (the
        token checked: valid, unexpired, unused), the new keychain keeps them encrypted with
        ``secret``, and both devices record each other and the contacts
        (:mod:`lama.connect.device`, docs/connections.md §3.4). ``instance_name``: this
        device's (default ``<host>-<random>``; it must differ from the other devices');
        ``comm_server``: this device's (default: ``config``'s if a config is given, else the
        invitation's). Returns the App,
        not started; after :meth:`start` the devices connect and CHUM brings the
        conversations. A refused or failed join raises (``PairingError LAMA-DEVICE``,
        ``InvalidArgumentError LAMA-PAIR-INVITE``, ...) and leaves nothing in
        ``directory``."""
        from lama.connect import device, pairing

        inv = pairing.parse_invitation(link) if "/invitePartner/" not in str(link) else None
        url = comm_server or (config.comm_server_url if config is not None else None) \
            or (inv.url if inv is not None else None)
        joined = await device.join_device(directory, link, secret=secret,
                                          instance_name=instance_name, url=url)
        app = cls._wrap(joined.instance, config, url)
        try:
            for person in joined.contacts:  # their contacts and 1-to-1 topics, as on device 1
                await asyncio.to_thread(app._paired, person)
        except BaseException:
            await app.close()
            raise
        return app

    @classmethod
    def _wrap(cls, inst: Any, config: AppConfig | None, comm_server: str | None) -> App:
        config = config or AppConfig()
        if comm_server is not None:
            config.comm_server_url = comm_server
        try:
            return cls(inst, config)
        except BaseException:
            inst.close()
            raise

    async def start(self, *, online_timeout: float = 10.0) -> None:
        """Start the chat layer's events and the connection manager (listener, one CHUM
        connection per contact); waits up to ``online_timeout`` s for the comm-server
        registration (it goes on in the background if that is not enough)."""
        if self._started:
            return
        self._started = True
        self.started_at = time.time()
        self._unsubscribe.append(self.chat.subscribe(self._on_chat_event))
        # the chat events are read on this loop, woken right after each commit (issue 10)
        self.chat.attach_loop()
        self._unsubscribe.append(self.manager.subscribe(self._on_manager_event))
        if self.mailbox is not None:
            await self.mailbox.start()  # before the manager: it fetches on the first online_state
        if self.tracer is not None:
            self._unsubscribe.append(self.chat.subscribe(self.tracer.on_chat_event))
            self._unsubscribe.append(self.manager.subscribe(self.tracer.on_manager_event))
            if self.mailbox is not None:  # mailbox steps (docs/tracing.md §2)
                self._unsubscribe.append(self.mailbox.subscribe(self.tracer.on_mailbox_event))
        await self.manager.start()
        # contacts for pairings recorded before (idempotent: nothing is written twice): one
        # that finished while the previous run was stopping, or made by `lama invite/accept`
        # without the chat layer. A removed contact stays removed, and its connections stay
        # stopped (docs/chat.md §2).
        known = {str(c.person_id) for c in self.contacts()}
        for person in {ep.person_id for ep in self.manager.known_endpoints()} - known:
            if person == self.person_id:
                continue
            if self._was_removed(person):
                await self.manager.disable_person(person)
            else:
                self._paired(person)
        if online_timeout > 0:
            await self.manager.wait_online(online_timeout)

    async def close(self) -> None:
        """Close the connections (with a reason), then the instance. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:  # posts queued for a group commit are committed first
            await asyncio.wait(list(self._tasks), timeout=60)
        if self.mailbox is not None:
            with contextlib.suppress(Exception):
                await self.mailbox.close()
        with contextlib.suppress(Exception):
            await self.manager.close()
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(Exception):
                unsubscribe()
        for q in self._followers:
            q.put_nowait(None)
        with contextlib.suppress(Exception):
            self.chat.detach_loop()  # on this loop's thread (close below is not)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.chat.close)  # joins the chat event thread
        if self.tracer is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.tracer.close)
        await self.instance.close_async()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ identity

    @property
    def person_id(self) -> str:
        return str(self.instance.person_id)

    @property
    def instance_dir(self) -> Path:
        return Path(self.instance.path)

    # ------------------------------------------------------------------ pairing

    async def invite(self, lifetime: float | None = None) -> str:
        """A new invitation link (one-time token; valid ``lifetime`` s, default the config's)
        for the peer's :meth:`accept`. :meth:`wait_contact` returns the contact it creates."""
        await self.manager.wait_online(10.0)
        inv = self.manager.create_invitation(lifetime)
        return str(inv.to_link())

    def invitation(self, lifetime: float | None = None) -> Any:
        """The :class:`lama.connect.pairing.Invitation` itself (``to_link()``, ``qr_text()``,
        ``qr_png()``)."""
        return self.manager.create_invitation(lifetime)

    async def invite_device(self, lifetime: float | None = None) -> str:
        """A device invitation link (``.../invites/inviteDevice/?invited=true#...``, one-time
        token valid ``lifetime`` s) for a new device of my person: give it to
        :meth:`join_device` (``lama init --join``) on the new device, while this app runs.
        :meth:`wait_device` returns when the device joined."""
        await self.manager.wait_online(10.0)
        return str(self.device_invitation(lifetime).to_link(device=True))

    def device_invitation(self, lifetime: float | None = None) -> Any:
        """The device :class:`lama.connect.pairing.Invitation` itself (for
        ``to_link(device=True)``, ``qr_text(device=True)``, ``qr_png(device=True)``)."""
        return self.manager.create_invitation(lifetime, device=True)

    async def wait_device(self, timeout: float | None = None, *,
                          invitation: Any = None) -> dict[str, Any]:
        """The device that joined with ``invitation`` (link, Invitation or token), else the
        first device that joined and no earlier call returned: ``{"person_id",
        "instance_id", "token"}``. ``asyncio.TimeoutError`` after ``timeout`` s."""
        token = self._token_of(invitation)

        def find() -> dict[str, Any] | None:
            for p in self._pairing_log:
                if not p.get("device"):
                    continue
                if (token is not None and p["token"] == token) or \
                        (token is None and not p["returned"]):
                    return p
            return None

        p = await asyncio.wait_for(self._wait_log(find), timeout)
        p["returned"] = True
        return {"person_id": p["remote_person"], "instance_id": p["remote_instance"],
                "token": p["token"]}

    @staticmethod
    def _token_of(invitation: Any) -> str | None:
        if invitation is None:
            return None
        if isinstance(invitation, str) and "#" not in invitation \
                and not invitation.lstrip().startswith("{"):
            return invitation
        from lama.connect import pairing

        return pairing.parse_invitation(invitation).token

    async def _wait_log(self, find: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        while True:
            p = find()
            if p is not None:
                return p
            self._pairing_changed.clear()
            await self._pairing_changed.wait()

    async def accept(self, link: str) -> Any:
        """Pair using an invitation link of the peer; returns the new contact (created on both
        sides)."""
        outcome = await self.manager.accept_invitation(link)
        return self._paired(outcome.remote_person)

    async def wait_contact(self, timeout: float | None = None, *,
                           invitation: Any = None) -> Any:
        """The contact of a pairing: the one that used ``invitation`` (a link, an
        :class:`~lama.connect.pairing.Invitation` or its token) if given, else the first
        pairing initiated by a peer that no earlier ``wait_contact`` returned. A pairing that
        finished before this call counts (no race between ``invite`` and this).
        ``asyncio.TimeoutError`` after ``timeout`` s."""
        token = self._token_of(invitation)

        def find() -> dict[str, Any] | None:
            for p in self._pairing_log:
                if token is not None and p["token"] == token:
                    return p
                if token is None and not p["initiated_locally"] and not p["returned"] \
                        and not p.get("device"):
                    return p
            return None

        p = await asyncio.wait_for(self._wait_log(find), timeout)
        p["returned"] = True
        return self._paired(p["remote_person"])

    def _paired(self, person_id: str) -> Any:
        # the chat layer's on-paired hook: contact (Someone, Profile, trust) and the 1-to-1
        # topic with its grants, exactly once however often it runs (app-layer.md §5.2, B9);
        # None for a second device of my own person (no contact of its own, docs/chat.md §2)
        try:
            return self.chat.on_paired(person_id)
        except NotFoundError as e:
            if e.code != "LAMA-CHAT-UNPAIRED":
                raise
            log.warning("no contact for %s: %s", person_id, e)
            return None

    def _was_removed(self, person_id: str) -> bool:
        """Whether ``person_id`` was a contact once and was removed: its Someone (id a pure
        function of the person id, docs/chat.md §2) exists but is not in Leute.other."""
        from lama._core import core

        someone = core.id_hash({"$type$": "Someone", "someoneId": f"someone-for-{person_id}"})
        return self.instance.store.get_head(someone) is not None

    def _on_manager_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "pairing_success":
            self._paired(str(data["remote_person"]))
            self._pairing_log.append({"token": data.get("token"), "returned": False,
                                      "device": bool(data.get("device")),
                                      "remote_instance": str(data.get("remote_instance")),
                                      "remote_person": str(data["remote_person"]),
                                      "initiated_locally": bool(data.get("initiated_locally"))})
            self._pairing_changed.set()

    # ------------------------------------------------------------------ contacts

    def contacts(self) -> list[Any]:
        """The contacts (one per remote person), sorted by name."""
        return list(self.chat.contacts())

    def contact(self, who: Any) -> Any:
        """A contact by person id (or a unique prefix of at least 8 hex digits), email or
        name; a contact object is returned as is. ``NotFoundError`` (``LAMA-CONTACT``) if none
        or several match."""
        if not isinstance(who, str):
            return who
        found = []
        for c in self.contacts():
            pid = str(c.person_id)
            if who == pid or (len(who) >= 8 and pid.startswith(who.lower())):
                found.append(c)
            elif who in (c.email, c.name):
                found.append(c)
        if len(found) != 1:
            raise NotFoundError(
                f"{'no' if not found else str(len(found))} contacts match {who!r}",
                code="LAMA-CONTACT")
        return found[0]

    async def remove_contact(self, who: Any) -> None:
        """Remove a contact: the chat layer drops it (and its grants), and its connections
        stop now and stay stopped (the manager disables the person)."""
        c = self.contact(who)
        await self.manager.disable_person(str(c.person_id))
        await asyncio.to_thread(self.chat.remove_contact, str(c.person_id))

    # ------------------------------------------------------------------ my devices

    def devices(self) -> list[dict[str, Any]]:
        """The devices of my person as my profile lists them (docs/connections.md §3.5):
        ``{"instance_id", "name", "url", "this", "endpoint"}``, sorted by name."""
        from lama.connect import profile

        return profile.own_devices(self.instance)

    async def remove_device(self, which: str) -> Any:
        """Remove a device of mine (a lost phone; docs/connections.md §3.5 "Removing a
        device"): ``which`` is its instance id, an 8+ hex digit prefix or its instance name.
        My person revokes the device's instance Keys (a signed certificate my contacts and my
        other devices receive), my profile lists it no more, and the connection managers -
        this one at once, the others when the revocation arrives - stop dialling it, close its
        connections and refuse it. Its earlier messages stay. Returns the
        :class:`lama.connect.profile.RevokedDevice`. ``NotFoundError`` (a LookupError) for an
        unknown or already removed device, ``InvalidArgumentError`` (a ValueError) for this
        device; both change nothing."""
        from lama.connect import profile

        revoked = await asyncio.to_thread(profile.revoke_own_device, self.instance, which)
        self.manager.check_revoked()
        return revoked

    # ------------------------------------------------------------------ messages

    async def send(self, who: Any, text: str, *,
                   attachments: Sequence[str | os.PathLike[str]] = ()) -> Any:
        """Post ``text`` (and the files ``attachments``, streamed into BLOBs with their
        descriptors) to the 1-to-1 topic with ``who`` (a contact) or to a topic; returns the
        stored message. The peer gets it over the live CHUM connection at once, or when it is
        next connected.

        Group commit: a durable commit costs an fsync, so texts sent to one topic while the
        previous commit is still running are posted together, in call order, in one
        transaction (``Chat.send_many``: one ChannelInfo version for the batch). A lone send
        waits for nothing; many concurrent sends (a bot, ``asyncio.gather``) cost one fsync
        per batch instead of one per message. If a batch fails, its messages are posted one
        by one, so only a bad one fails."""
        target = self._topic_id(who)
        if not isinstance(text, str):
            raise InvalidArgumentError("LAMA-CHAT-TEXT: text must be a str")
        if attachments:
            paths = [os.fspath(p) for p in attachments]
            m = await asyncio.to_thread(self.chat.send, target, text, paths)
            if self.tracer is not None:
                self.tracer.posted([m])
            return m
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batches.setdefault(target, []).append((text, fut))
        if target not in self._flushing:
            self._flushing.add(target)
            task = asyncio.ensure_future(self._flush(target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await fut

    async def send_many(self, who: Any, texts: Sequence[str]) -> list[Any]:
        """Post several texts in order (batched like concurrent :meth:`send` calls).

        With no send to that topic waiting for its commit, the texts go to ``Chat.send_many``
        without a future and a task per text (for 10,000 texts those were a third of the
        sender's CPU), in commits of growing size: ``FIRST_BATCH`` texts, then twice as many
        each time up to ``MAX_PUSH_BATCH``. The first commit is small so the peer receives
        and shows the first messages while the rest are still being posted (delivery
        overlaps posting, issue 10); the sizes grow so a long conversation costs only a few
        commits (each one's fsync and B-tree page writes) and a few pushes. The next commit
        runs in the worker thread while this loop records the previous one (tracer). Every
        text is checked before anything is written; a bad one sends each text on its own,
        so only the bad one fails."""
        target = self._topic_id(who)
        texts = list(texts)
        if texts and not self._batches.get(target) and all(isinstance(t, str) for t in texts):
            from lama.chat.chat import _check_text

            try:
                for t in texts:
                    _check_text(t, False)
            except InvalidArgumentError:
                pass  # checked before any write: per text below
            else:
                chunks: list[list[str]] = []
                size, i = FIRST_BATCH, 0
                while i < len(texts):
                    chunks.append(texts[i:i + size])
                    i += size
                    size = min(2 * size, MAX_PUSH_BATCH)

                def post(chunk: list[str]) -> asyncio.Future[list[Any]]:
                    return asyncio.ensure_future(asyncio.to_thread(self.chat.send_many, target, chunk))

                out: list[Any] = []
                pending = post(chunks[0])
                for nxt in [*chunks[1:], None]:
                    msgs = await pending
                    if nxt is not None:
                        pending = post(nxt)  # the next commit runs while this one is recorded
                    if self.tracer is not None:
                        self.tracer.posted(msgs)
                    out.extend(msgs)
                return out
        return list(await asyncio.gather(*(self.send(who, t) for t in texts)))

    async def _flush(self, target: str) -> None:
        try:
            while self._batches.get(target):
                batch = self._batches.pop(target)
                try:
                    msgs = await asyncio.to_thread(self.chat.send_many, target,
                                                   [t for t, _ in batch])
                except Exception:
                    for text, f in batch:
                        try:
                            m = await asyncio.to_thread(self.chat.send, target, text)
                        except Exception as e:
                            if not f.done():
                                f.set_exception(e)
                        else:
                            if self.tracer is not None:
                                self.tracer.posted([m])
                            if not f.done():
                                f.set_result(m)
                    continue
                if self.tracer is not None:
                    self.tracer.posted(msgs)
                for (_, f), m in zip(batch, msgs):
                    if not f.done():
                        f.set_result(m)
        finally:
            self._flushing.discard(target)

    def _topic_id(self, who: Any) -> str:
        """The topic id of a contact (its 1-to-1 topic) or of a topic (a Topic or its id):
        a second device of mine has no contact for a conversation it received from my first
        device, only the topic (docs/chat.md §2, §3)."""
        if hasattr(who, "topic_id") and hasattr(who, "person_id"):
            return str(who.topic_id)
        if hasattr(who, "channel") and hasattr(who, "id"):
            return str(who.id)
        try:
            return str(self.contact(who).topic_id)
        except NotFoundError:
            if isinstance(who, str):
                with contextlib.suppress(NotFoundError):
                    return str(self.chat.topic(who).id)
            raise

    async def create_group(self, name: str, members: Sequence[Any],
                           topic_id: str | None = None) -> Any:
        """A group topic with ``members`` (contacts, or person ids of people who need not be
        contacts) and me, shared with every one of them; its participants travel with it
        (docs/chat.md §3.1). Idempotent for an existing ``topic_id``."""
        persons = []
        for m in members:
            if isinstance(m, str) and len(m) == 64:
                persons.append(m)
            else:
                persons.append(str(self.contact(m).person_id))
        return await asyncio.to_thread(self.chat.create_group, name, persons, topic_id)

    def history(self, who: Any) -> list[Any]:
        """The conversation with a contact (or in a topic), oldest first, every author and
        device merged."""
        return list(self.chat.history(self._topic_id(who)))

    async def messages(self, who: Any, *, follow: bool = False,
                       last: int | None = None) -> AsyncGenerator[Any, None]:
        """The messages with a contact (or in a topic) oldest first (only the ``last`` newest
        if given); with ``follow`` then every new one as it becomes visible, each exactly once,
        until the app closes or the iteration is stopped."""
        topic = self._topic_id(who)
        q: asyncio.Queue[Any] = asyncio.Queue()
        if follow:
            self._followers.append(q)  # before reading the history: nothing falls in between
        try:
            seen: set[str] = set()
            if last is None:
                past = list(self.chat.history(topic))
            else:  # the newest `last`, read lazily from the head (not the whole history)
                past = list(reversed(list(self.chat.messages(topic, limit=last)))) \
                    if last > 0 else []
            for m in past:
                seen.add(str(m.id))
                yield m
            if not follow:
                return
            while True:
                item = await q.get()
                if item is None:
                    return
                if str(item.topic_id) != topic or str(item.id) in seen:
                    continue
                seen.add(str(item.id))
                yield item
        finally:
            if q in self._followers:
                self._followers.remove(q)

    def on_message(self, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """Call ``callback(message)`` (a function or a coroutine function) for every new
        message, posted here or received; returns an unsubscribe function."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def _on_chat_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind != "message":
            return
        m = data["message"]
        for q in list(self._followers):
            q.put_nowait(m)
        for cb in list(self._callbacks):
            try:
                r = cb(m)
                if asyncio.iscoroutine(r):
                    asyncio.ensure_future(r)
            except Exception:  # an app's callback bug must not stop the others
                log.exception("on_message callback failed")

    async def save_attachment(self, message_id: str, index: int, path: str) -> dict[str, Any]:
        """Write attachment ``index`` of the message ``message_id`` to ``path`` (streamed from
        the store); returns ``{"path", "size", "sha256", "name"}``."""
        return dict(await asyncio.to_thread(self.chat.save_attachment, message_id, index, path))

    # ------------------------------------------------------------------ traces

    def trace(self, message_id: str) -> Any:
        """The :class:`lama.trace.Trace` of a message (its id or a unique prefix of at least 8
        hex digits), report computed now; ``NotFoundError`` ``LAMA-TRACE-NONE`` if none."""
        if self.tracer is None:
            raise NotFoundError("tracing is off", code="LAMA-TRACE-NONE")
        return self.tracer.trace(message_id)

    def traces(self, limit: int = 50, *, stalled: bool = False,
               peer: str | None = None) -> list[Any]:
        """Recent traces, newest first (docs/tracing.md §1)."""
        return [] if self.tracer is None else self.tracer.traces(limit, stalled=stalled, peer=peer)

    def on_trace(self, callback: Callable[[Any], Any]) -> Callable[[], None]:
        """``callback(trace)`` after every change of any trace; returns the unsubscribe."""
        if self.tracer is None:
            return lambda: None
        return self.tracer.subscribe(callback)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """Identity, online state, connections and health (per contact: connected, since,
        latency, last sync, reconnect attempts, last error) - what ``lama status`` prints."""
        health = self.manager.connection_health()
        names = {str(c.person_id): getattr(c, "name", None) for c in self.contacts()}
        peers = []
        for key, p in health["peers"].items():
            peers.append({"person_id": p["person_id"], "name": names.get(p["person_id"]),
                          "instance_id": p["instance_id"], "key": key,
                          "connected": p["connected"], "since": p["since"],
                          "latency": p["latency"], "last_sync": p["last_sync"],
                          "last_message": p["last_message"],
                          "reconnect_attempts": p["reconnect_attempts"],
                          "last_error": p["last_error"], "enabled": p["enabled"]})
        return {"person_id": self.person_id, "instance_id": str(self.instance.instance_id),
                "email": self.instance.email, "name": self.instance.person_name,
                "instance_name": self.instance.instance_name,
                "comm_server": self.config.comm_server_url, "online": health["online"],
                "status": health["status"], "total": health["total"], "active": health["active"],
                "average_latency": health["average_latency"], "last_sync": health["last_sync"],
                "started_at": self.started_at, "contacts": len(names), "peers": peers}

    # ------------------------------------------------------------------ plain data

    @staticmethod
    def contact_dict(c: Any) -> dict[str, Any] | None:
        """A contact as JSON-able data (the control channel, ``--json``); None for None (a
        pairing with a device of my own person)."""
        if c is None:
            return None
        return {"person_id": str(c.person_id), "name": c.name, "email": c.email,
                "topic_id": c.topic_id, "instances": list(c.instances)}

    @staticmethod
    def message_dict(m: Any) -> dict[str, Any]:
        """A message as JSON-able data."""
        return {"id": m.id, "topic_id": m.topic_id, "peer": m.peer, "sender": m.sender,
                "sender_name": m.sender_name, "outgoing": m.outgoing, "text": m.text,
                "timestamp": m.timestamp,
                "attachments": [{"name": a.name, "size": a.size, "hash": a.hash,
                                 "mime": a.mime, "available": a.available}
                                for a in m.attachments]}
