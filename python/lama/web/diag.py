"""``lama serve --http``: the diagnostics page, its JSON API and ``/metrics`` of one App.

Routes (every one needs the token, docs/metrics.md "HTTP endpoints"):

* ``/`` the page (HTML; script and style inline under a CSP nonce);
* ``/api/state`` the page's data (JSON, :meth:`AppObserver.state`);
* ``/api/events`` server-sent events: one ``state`` event at once and after every change
  (at most every ``min_interval`` s), a comment line every ``keepalive`` s;
* ``/api/traces`` recent traces (``?limit=N&stalled=1``; 404 when the app has no tracer);
* ``/metrics`` the Prometheus text exposition (this app's families and the process's).

The token is random (``secrets.token_urlsafe``) unless given, and is written with the URL to
``<instance dir>/http.json`` (mode 0600, next to ``control.json``), so a local tool can find
the page the way the CLI finds the control channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lama import metrics
from lama.web.http import HttpServer, Request, Response, head_bytes
from lama.web.observer import AppObserver
from lama.web.page import csp, render_page

__all__ = ["DiagnosticsServer", "HTTP_FILE"]

HTTP_FILE = "http.json"


class DiagnosticsServer:
    """The page of ``app`` on ``host:port`` (see the module doc). :meth:`start` after the app
    started, :meth:`close` before it closes."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None, min_interval: float = 0.25,
                 keepalive: float = 15.0, write_file: bool = True) -> None:
        self.app = app
        self.token = token or secrets.token_urlsafe(24)
        self.observer = AppObserver(app)
        self.http = HttpServer(host, port, self._handle, token=self.token)
        self.min_interval = min_interval
        self.keepalive = keepalive
        self.write_file = write_file
        self.path = Path(app.instance_dir) / HTTP_FILE
        self.scrape = metrics.REGISTRY.histogram(
            "lama_metrics_scrape_seconds", "Time to render /metrics.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1))
        self._closing = asyncio.Event()

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def link(self) -> str:
        """The page's URL with its token (what ``lama serve`` prints)."""
        return self.http.link()

    async def start(self) -> None:
        self.observer.start()
        await self.http.start()
        if self.write_file:
            tmp = self.path.with_name(f".{HTTP_FILE}.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"url": self.url, "link": self.link, "token": self.token,
                           "pid": os.getpid()}, f)
            os.replace(tmp, self.path)

    async def close(self) -> None:
        self._closing.set()
        self.observer.close()
        with contextlib.suppress(OSError, ValueError):
            if self.write_file and json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        await self.http.close()

    async def _handle(self, req: Request) -> Response | None:
        if req.path == "/":
            nonce = secrets.token_urlsafe(16)
            return Response(200, render_page(nonce).encode(), "text/html; charset=utf-8",
                            headers={"Content-Security-Policy": csp(nonce)})
        if req.path == "/api/state":
            return Response.json(await self.observer.state())
        if req.path == "/api/events":
            await self._events(req)
            return None
        if req.path == "/api/traces":
            limit = req.query.get("limit", "50")
            stalled = req.query.get("stalled", "") in ("1", "true", "yes")
            traces = getattr(self.app, "traces", None)
            if not callable(traces) or getattr(self.app, "tracer", None) is None:
                return Response.json({"error": "tracing is off in this instance"}, 404)
            lim = int(limit) if limit.isdigit() else 50
            return Response.json({"traces": [t.to_dict() for t in
                                              traces(limit=lim, stalled=stalled)]})
        if req.path == "/metrics":
            t = time.perf_counter()
            text = self.observer.metrics_text()
            self.scrape.observe(time.perf_counter() - t)
            return Response(200, text.encode(), metrics.CONTENT_TYPE)
        if req.path == "/favicon.ico":
            return Response(204)
        return Response.text("not found\n", 404)

    async def _events(self, req: Request) -> None:
        w = req.writer
        w.write(head_bytes(200, {"Content-Type": "text/event-stream; charset=utf-8",
                                 "Connection": "close", "X-Accel-Buffering": "no"}))
        version = -1
        first = True
        last_beat = time.monotonic()
        while not self._closing.is_set():
            if self.observer.version != version:
                if not first:
                    # wait before building: a burst of events makes one update, and the work
                    # that caused the change (a message being exported, say) goes first
                    await asyncio.sleep(self.min_interval)
                first = False
                version = self.observer.version
                data = json.dumps(await self.observer.state(), separators=(",", ":"))
                w.write(f"event: state\nid: {version}\ndata: {data}\n\n".encode())
                await w.drain()
                last_beat = time.monotonic()
                continue
            if time.monotonic() - last_beat >= self.keepalive:
                w.write(b": keepalive\n\n")
                await w.drain()
                last_beat = time.monotonic()
            # times shown as "x s ago" move on even when nothing happens
            new = await self.observer.wait_change(version, min(self.keepalive, 5.0))
            if new == version:
                version = -1
