"""``lama serve``: one instance running - connections, sync, events - driven through its
control channel (:mod:`lama.control`) by ``lama contacts/send/messages/status/invite/accept``
and by ``lama demo``.

Requests (``op`` and arguments, see lama.control for the framing):

* ``status`` -> ``{"ok", "status": App.status()}``
* ``contacts`` -> ``{"ok", "contacts": [contact, ...]}``
* ``send`` ``{contact, text, attach: [path, ...], progress}`` -> ``{"ok", "message": message}``;
  with ``progress`` and attachments, first ``{"info": {"progress": {...}}}`` items until the
  peer has the attachments, the peer is not connected or the transfer stalls
  (:func:`deliver`; lama.progress draws them)
* ``messages`` ``{contact, follow, limit}`` -> one ``{"item": message}`` per message, oldest
  first; with ``follow`` then every new one until the client disconnects or the server stops,
  and (with ``sync_progress``) the connection manager's ``sync`` and ``connection_down`` events
  as ``{"info": {"event": kind, "data": {...}}}`` (for lama.progress.SyncBars)
* ``invite`` ``{lifetime}`` -> ``{"info": {"link", "qr"}}`` at once, then ``{"ok", "contact"}``
  when the invitation was accepted (or an error ``LAMA-PAIR-TIMEOUT``); with ``"device":
  true`` a device invitation and ``{"ok", "device": {"person_id", "instance_id"}}`` when the
  new device joined (lama.connect.device)
* ``accept`` ``{link}`` -> ``{"ok", "contact"}``
* ``remove`` ``{contact}`` -> ``{"ok"}``
* ``devices`` -> ``{"ok", "devices": App.devices()}``; ``remove_device`` ``{device}`` ->
  ``{"ok", "device": {"instance_id", "name", "instance_keys", "revocation", "endpoints",
  "profile"}}`` (App.remove_device; docs/connections.md §3.5)
* ``attachment`` ``{message, index, path}`` -> writes the attachment's bytes to ``path``
  (``{"ok", "path", "size", "sha256"}``)
* ``trace`` ``{message}`` -> ``{"ok", "trace": Trace.to_dict()}`` (docs/tracing.md §6)
* ``traces`` ``{limit, stalled}`` -> ``{"ok", "traces": [Trace.to_dict(), ...]}``
* ``stop`` -> ``{"ok"}`` and the server stops as after SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import Any, Awaitable, Callable

from lama.app import App
from lama.control import ControlServer
from lama.errors import InvalidArgumentError, LamaError, PairingError

__all__ = ["run_server", "handle", "deliver", "stop_on_signals"]

Send = Callable[[dict[str, Any]], Awaitable[None]]


def _arg(req: dict[str, Any], name: str, kind: type, default: Any = ...) -> Any:
    v = req.get(name, default)
    if v is ... or not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
        if v is default and default is not ...:
            return v
        raise InvalidArgumentError(f"LAMA-ARG: control request needs {name} ({kind.__name__})")
    return v


async def handle(app: App, req: dict[str, Any], send: Send, stop: asyncio.Event) -> None:
    """Answer one control request (see the module doc)."""
    op = req.get("op")
    if op == "status":
        await send({"ok": True, "status": app.status()})
    elif op == "contacts":
        await send({"ok": True, "contacts": [app.contact_dict(c) for c in app.contacts()]})
    elif op == "send":
        attach = req.get("attach") or []
        if not isinstance(attach, list) or not all(isinstance(a, str) for a in attach):
            raise InvalidArgumentError("LAMA-ARG: attach must be a list of file paths")
        contact = _arg(req, "contact", str)
        watch = bool(req.get("progress")) and bool(attach)
        base = 0
        if watch:
            with contextlib.suppress(LamaError):
                base = _bytes_sent(app, str(app.contact(contact).person_id))
        m = await app.send(contact, _arg(req, "text", str), attachments=attach)
        if watch:
            await deliver(app, m, send, base)
        await send({"ok": True, "message": app.message_dict(m)})
    elif op == "messages":
        follow = bool(req.get("follow", False))
        limit = req.get("limit")
        contact = _arg(req, "contact", str)
        if not follow:
            async for m in app.messages(contact, last=limit if isinstance(limit, int) else None):
                await send({"item": app.message_dict(m)})
            await send({"ok": True})
            return
        it = app.messages(contact, follow=True, last=limit if isinstance(limit, int) else None)
        stopper = asyncio.ensure_future(stop.wait())
        forwards: set[asyncio.Future[None]] = set()

        def forward(kind: str, data: dict[str, Any]) -> None:
            if kind in ("sync", "connection_down"):
                d = {k: v for k, v in data.items() if isinstance(v, (str, int, float, bool))}
                if isinstance(d.get("person"), str):
                    with contextlib.suppress(LamaError):
                        d["name"] = app.contact(d["person"]).name
                f = asyncio.ensure_future(send({"info": {"event": kind, "data": d}}))
                forwards.add(f)
                f.add_done_callback(forwards.discard)

        unsubscribe = app.manager.subscribe(forward) if req.get("sync_progress") else None
        try:
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    # let the generator finish its step before aclose() below ("asynchronous
                    # generator is already running" otherwise: a traceback and status 1)
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await nxt
                    break
                try:
                    m = nxt.result()
                except StopAsyncIteration:
                    break
                await send({"item": app.message_dict(m)})
        finally:
            if unsubscribe is not None:
                unsubscribe()
            for f in list(forwards):
                f.cancel()
            stopper.cancel()
            await it.aclose()
    elif op == "invite" and req.get("device") is True:  # a new device of my person
        lifetime = req.get("lifetime")
        inv = app.device_invitation(
            float(lifetime) if isinstance(lifetime, (int, float)) else None)
        life = float(lifetime) if isinstance(lifetime, (int, float)) else \
            app.config.pairing_token_lifetime
        await send({"info": {"link": inv.to_link(device=True),
                             "qr": inv.qr_text(device=True)}})
        try:
            joined = await app.wait_device(life, invitation=inv.token)
        except asyncio.TimeoutError:
            raise PairingError(f"the device invitation expired after {life:g} s unused",
                               code="LAMA-PAIR-TIMEOUT") from None
        await send({"ok": True, "device": {"person_id": joined["person_id"],
                                           "instance_id": joined["instance_id"]}})
    elif op == "invite":
        lifetime = req.get("lifetime")
        inv = app.invitation(float(lifetime) if isinstance(lifetime, (int, float)) else None)
        life = float(lifetime) if isinstance(lifetime, (int, float)) else \
            app.config.pairing_token_lifetime
        await send({"info": {"link": inv.to_link(), "qr": inv.qr_text()}})
        try:
            contact = await app.wait_contact(life, invitation=inv.token)
        except asyncio.TimeoutError:
            raise PairingError(f"the invitation expired after {life:g} s without a pairing",
                               code="LAMA-PAIR-TIMEOUT") from None
        await send({"ok": True, "contact": app.contact_dict(contact)})
    elif op == "accept":
        contact = await app.accept(_arg(req, "link", str))
        await send({"ok": True, "contact": app.contact_dict(contact)})
    elif op == "remove":
        await app.remove_contact(_arg(req, "contact", str))
        await send({"ok": True})
    elif op == "devices":  # my devices (docs/connections.md §3.5)
        await send({"ok": True, "devices": app.devices()})
    elif op == "remove_device":
        r = await app.remove_device(_arg(req, "device", str))
        await send({"ok": True, "device": {
            "instance_id": r.instance_id, "name": r.instance_name,
            "instance_keys": list(r.instance_keys), "revocation": list(r.revocation),
            "endpoints": list(r.endpoints), "profile": r.profile}})
    elif op == "attachment":
        info = await app.save_attachment(_arg(req, "message", str), _arg(req, "index", int),
                                         _arg(req, "path", str))
        await send({"ok": True, **info})
    elif op == "trace":
        await send({"ok": True, "trace": app.trace(_arg(req, "message", str)).to_dict()})
    elif op == "traces":
        limit = req.get("limit")
        traces = app.traces(50 if limit is None else _arg(req, "limit", int),
                            stalled=bool(req.get("stalled")))
        await send({"ok": True, "traces": [t.to_dict() for t in traces]})
    elif op == "stop":
        await send({"ok": True})
        stop.set()
    else:
        raise InvalidArgumentError(f"LAMA-ARG: unknown control operation {op!r}")


def stop_on_signals(stop: asyncio.Event) -> Callable[[], None]:
    """SIGINT and SIGTERM set ``stop`` (call from the loop's thread, the main thread); returns
    the function that restores the previous handlers.

    ``loop.add_signal_handler`` alone loses signals under load: it learns of a signal only from
    a byte the C handler writes to the loop's self-pipe, and that write is dropped while the
    pipe is full - which a burst of ``call_soon_threadsafe`` calls (the chat event thread
    during a large sync, one byte each) does after a few hundred pending bytes; a Ctrl-C of
    ``lama messages --follow`` was then ignored. So a Python-level handler is installed on top
    (the interpreter runs it in the main thread from a flag, whatever the pipe holds); the
    loop's handler still wakes an idle loop."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, frame: Any) -> None:
        loop.call_soon_threadsafe(stop.set)

    sigs = (signal.SIGINT, signal.SIGTERM)
    for sig in sigs:
        loop.add_signal_handler(sig, stop.set)
        signal.signal(sig, on_signal)

    def restore() -> None:
        for sig in sigs:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    return restore


def _bytes_sent(app: App, person: str) -> int:
    """Bytes sent so far on the live CHUM connection(s) to ``person`` (0 if none)."""
    return sum(int(p.get("bytes_sent") or 0)
               for p in app.manager.connection_health()["peers"].values()
               if p["person_id"] == person and p["connected"])


async def deliver(app: App, m: Any, send: Send, base: int, *, interval: float = 0.1,
                  stall: float = 15.0) -> str:
    """Report the transfer of message ``m``'s attachments to its peer as ``{"info":
    {"progress": {phase, bytes, total, peer, name}}}`` items: ``stored`` at once; ``offered``
    (and done) if the peer is not connected, or when it disconnects; ``sending`` with the bytes
    sent on the CHUM connection to it since ``base`` (capped at the attachments' size) while
    they grow; ``delivered`` when the message's trace says the peer has it (docs/tracing.md:
    the peer's receipt, or its fetch for a ONE peer); ``in_flight`` if nothing moved for
    ``stall`` seconds. Returns the last phase. Without tracing, ``sending`` ends with
    ``in_flight`` once every byte is out."""
    total = sum(int(a.size) for a in m.attachments)
    peer = m.peer
    name = None
    if peer is not None:
        with contextlib.suppress(LamaError):
            name = app.contact(peer).name

    async def info(phase: str, n: int) -> str:
        await send({"info": {"progress": {"phase": phase, "bytes": min(max(n, 0), total),
                                          "total": total, "peer": peer, "name": name}}})
        return phase

    await info("stored", 0)
    if peer is None or not app.manager.connected(peer):
        return await info("offered", 0)
    last, moved = -1, time.monotonic()
    while True:
        delivered = False
        if app.tracer is not None:
            with contextlib.suppress(LamaError):
                t = app.trace(m.id)
                delivered = t.status == "delivered" or any(
                    r.person_id == peer and r.last_step == "stored" for r in t.peers)
        if delivered:
            return await info("delivered", total)
        if not app.manager.connected(peer):
            return await info("offered", 0)
        n = min(_bytes_sent(app, peer) - base, total)
        now = time.monotonic()
        if n != last:
            last, moved = n, now
            await info("sending", n)
        if now - moved > stall or (app.tracer is None and n >= total):
            return await info("in_flight", n)
        await asyncio.sleep(interval)


async def run_server(app: App, *, on_ready: Callable[[ControlServer], Any] | None = None,
                     on_event: Callable[[str, dict[str, Any]], Any] | None = None,
                     diagnostics: Any = None) -> None:
    """Start ``app``, serve its control channel until SIGINT/SIGTERM (or a ``stop`` request),
    then close everything cleanly (connections with a reason, control file removed).
    ``diagnostics`` (a :class:`lama.web.diag.DiagnosticsServer`, docs/metrics.md) is started
    after the app and closed before it."""
    stop = asyncio.Event()
    restore = stop_on_signals(stop)
    if on_event is not None:
        app.manager.subscribe(on_event)
    server = ControlServer(app.instance_dir, lambda req, send: handle(app, req, send, stop))
    try:
        await app.start()
        await server.start()
        if diagnostics is not None:
            await diagnostics.start()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        restore()
        if diagnostics is not None:
            await diagnostics.close()
        await server.close()
        await app.close()
        sys.stdout.flush()
