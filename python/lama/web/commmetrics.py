"""``lama comm-server --metrics HOST:PORT``: the comm server's counters (both cores'
``CommServer.counters()``, docs/connections.md §2) as Prometheus metrics on ``/metrics``.

Each counter of the server becomes one family, read at scrape time (the server's counters are
atomics in the Rust core, a dict in the pure one: reading them costs no lock on the relay
path). The names are in docs/metrics.md; a counter this module does not know (a newer server's,
e.g. the mailbox's, docs/mailbox.md §5) is still exported, as ``lama_commserver_<name>_total``,
or as a gauge when its name says it is a current size (``*_items``, ``*_bytes``,
``*_recipients``, ``open``, ``spares``, ``relays``). Families registered in
:data:`lama.metrics.REGISTRY` by anything in the process are served too.
"""

from __future__ import annotations

import time
from typing import Any

from lama import metrics
from lama.metrics import Family, Registry
from lama.web.http import HttpServer, Request, Response

__all__ = ["CommServerMetrics", "commserver_families"]

# name in counters() -> (metric name, type, help)
KNOWN: dict[str, tuple[str, str, str]] = {
    "connections": ("lama_commserver_connections_total", "counter",
                    "WebSockets accepted (handshake done)."),
    "open": ("lama_commserver_connections_open", "gauge", "WebSockets open now."),
    "registrations": ("lama_commserver_registrations_total", "counter",
                      "Successful registrations of listening instances."),
    "spares": ("lama_commserver_spares", "gauge",
               "Registered spare connections waiting for a peer now."),
    "requests": ("lama_commserver_requests_total", "counter",
                 "communication_requests received."),
    "handovers": ("lama_commserver_handovers_total", "counter",
                  "Spares handed over to a requesting peer (relays started)."),
    "relays": ("lama_commserver_relays_open", "gauge", "Relayed connection pairs open now."),
    "relayed_frames": ("lama_commserver_relayed_frames_total", "counter",
                       "Frames forwarded between relayed pairs (both directions)."),
    "relayed_bytes": ("lama_commserver_relayed_bytes_total", "counter",
                      "Payload bytes forwarded between relayed pairs (both directions)."),
    "refused": ("lama_commserver_refused_total", "counter",
                "Requests without a spare and spares over a limit."),
    "auth_failures": ("lama_commserver_auth_failures_total", "counter",
                      "Wrong authentication responses."),
    "auth_timeouts": ("lama_commserver_auth_timeouts_total", "counter",
                      "Connections closed for not authenticating in time."),
    "malformed": ("lama_commserver_malformed_total", "counter",
                  "Connections whose first message was not a known request."),
    "oversized": ("lama_commserver_oversized_total", "counter",
                  "Connections closed for a frame above the size limit."),
    "pings": ("lama_commserver_pings_total", "counter", "Pings sent to spares."),
    "ping_timeouts": ("lama_commserver_ping_timeouts_total", "counter",
                      "Spares dropped for a missing pong."),
    # the store-and-forward mailbox (docs/mailbox.md), when the server has one
    "mailbox_items": ("lama_commserver_mailbox_items", "gauge",
                      "Messages held in the mailbox now (all recipients)."),
    "mailbox_bytes": ("lama_commserver_mailbox_bytes", "gauge",
                      "Bytes of ciphertext held in the mailbox now (all recipients)."),
}
_GAUGE_SUFFIXES = ("_items", "_bytes", "_recipients", "_open", "_size")


def _family_for(name: str) -> tuple[str, str, str]:
    if name in KNOWN:
        return KNOWN[name]
    if name.endswith(_GAUGE_SUFFIXES):
        return (f"lama_commserver_{name}", "gauge", f"The comm server's {name} now.")
    return (f"lama_commserver_{name}_total", "counter", f"The comm server's {name} count.")


def commserver_families(counters: dict[str, int]) -> list[Family]:
    """The families of a ``counters()`` snapshot (see the module doc)."""
    out = []
    for name, value in counters.items():
        mname, mtype, mhelp = _family_for(name)
        if not metrics._NAME.match(mname):  # a counter name unusable in Prometheus: skipped
            continue
        out.append(Family(mname, mtype, mhelp, [("", {}, value)]))
    out.append(Family("lama_commserver_up", "gauge", "1 while the comm server runs.",
                      [("", {}, 1)]))
    return out


class CommServerMetrics:
    """``/metrics`` of a running comm server (``server``: what ``comm_server()`` returned) on
    ``host:port``; ``token``: required as ``Authorization: Bearer`` (or ``?token=``) if
    given."""

    def __init__(self, server: Any, host: str = "127.0.0.1", port: int = 0, *,
                 token: str | None = None) -> None:
        self.server = server
        self.registry = Registry()
        self.registry.collector(lambda: commserver_families(dict(server.counters())))
        self.started = time.time()
        self.registry.gauge("lama_commserver_uptime_seconds", "Seconds since the comm server "
                            "started.", fn=lambda: time.time() - self.started)
        self.http = HttpServer(host, port, self._handle, token=token)

    @property
    def url(self) -> str:
        return self.http.url + "metrics"

    async def start(self) -> None:
        await self.http.start()

    async def close(self) -> None:
        await self.http.close()

    def text(self) -> str:
        return metrics.render(self.registry, metrics.REGISTRY)

    async def _handle(self, req: Request) -> Response:
        if req.path == "/metrics":
            return Response(200, self.text().encode(), metrics.CONTENT_TYPE)
        if req.path == "/":
            return Response.text("lama comm server: metrics at /metrics\n")
        return Response.text("not found\n", 404)
