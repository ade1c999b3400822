"""``lama serve``: one instance running - connections, sync, events - driven through its
control channel (:mod:`lama.control`) by ``lama contacts/send/messages/status/invite/accept``
and by ``lama demo``.

Requests (``op`` and arguments, see lama.control for the framing):

* ``status`` -> ``{"ok", "status": App.status()}``
* ``contacts`` -> ``{"ok", "contacts": [contact, ...]}``
* ``send`` ``{contact, text, attach: [path, ...]}`` -> ``{"ok", "message": message}``
* ``messages`` ``{contact, follow, limit}`` -> one ``{"item": message}`` per message, oldest
  first; with ``follow`` then every new one until the client disconnects or the server stops
* ``invite`` ``{lifetime}`` -> ``{"info": {"link", "qr"}}`` at once, then ``{"ok", "contact"}``
  when the invitation was accepted (or an error ``LAMA-PAIR-TIMEOUT``)
* ``accept`` ``{link}`` -> ``{"ok", "contact"}``
* ``remove`` ``{contact}`` -> ``{"ok"}``
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
from typing import Any, Awaitable, Callable

from lama.app import App
from lama.control import ControlServer
from lama.errors import InvalidArgumentError, PairingError

__all__ = ["run_server", "handle"]

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
        m = await app.send(_arg(req, "contact", str), _arg(req, "text", str), attachments=attach)
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
        try:
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    break
                try:
                    m = nxt.result()
                except StopAsyncIteration:
                    break
                await send({"item": app.message_dict(m)})
        finally:
            stopper.cancel()
            await it.aclose()
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


async def run_server(app: App, *, on_ready: Callable[[ControlServer], Any] | None = None,
                     on_event: Callable[[str, dict[str, Any]], Any] | None = None,
                     diagnostics: Any = None) -> None:
    """Start ``app``, serve its control channel until SIGINT/SIGTERM (or a ``stop`` request),
    then close everything cleanly (connections with a reason, control file removed).
    ``diagnostics`` (a :class:`lama.web.diag.DiagnosticsServer`, docs/metrics.md) is started
    after the app and closed before it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if diagnostics is not None:
            await diagnostics.close()
        await server.close()
        await app.close()
        sys.stdout.flush()
