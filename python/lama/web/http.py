"""A small HTTP/1.1 server on asyncio streams for lama's diagnostics page and ``/metrics``.

Only what those need: ``GET``/``HEAD``, no request bodies, one request per connection
(``Connection: close``), streamed responses for server-sent events. Standard library only.

Safety rules (docs/metrics.md "HTTP endpoints"):

* bound to a loopback address unless the caller forces otherwise (:func:`parse_address`
  refuses any other address without ``allow_remote``): the page shows identities, contacts
  and message texts;
* with a token, every request must carry it (``Authorization: Bearer T``, or ``?token=T``
  for a browser link and ``EventSource``), compared in constant time; anything else gets
  401 and nothing else;
* the ``Host`` header must name the bound address (or ``localhost``) when bound to loopback,
  so a web page that rebinds its DNS name to 127.0.0.1 cannot read answers even if it had
  the token;
* responses say ``Cache-Control: no-store``, ``Referrer-Policy: no-referrer`` (the page's URL
  holds the token), ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from lama.errors import InvalidArgumentError

log = logging.getLogger("lama.web")

__all__ = ["HttpServer", "Request", "Response", "parse_address", "is_loopback"]

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0

_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            421: "Misdirected Request", 500: "Internal Server Error"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address or ``localhost``) is a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_address(spec: str, *, allow_remote: bool = False,
                  option: str = "--http") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT`` (on 127.0.0.1) -> ``(host, port)``.
    ``InvalidArgumentError`` (``LAMA-HTTP-ADDRESS``) for a malformed one, or for a
    non-loopback host unless ``allow_remote``."""
    s = spec.strip()
    host, port_s = "127.0.0.1", s
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise InvalidArgumentError(f"{option}: expected [IPv6]:PORT, got {spec!r}",
                                       code="LAMA-HTTP-ADDRESS")
        host, port_s = s[1:end], s[end + 2:]
    elif ":" in s:
        host, port_s = s.rsplit(":", 1)
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535 or not host:
        raise InvalidArgumentError(f"{option}: expected HOST:PORT, got {spec!r}",
                                   code="LAMA-HTTP-ADDRESS")
    if host.lower() == "localhost":
        host = "127.0.0.1"
    if not is_loopback(host) and not allow_remote:
        raise InvalidArgumentError(
            f"{option}: {host} is not a loopback address; the diagnostics endpoints show "
            "private data and are meant for this machine only (force it with "
            f"{option}-allow-remote)", code="LAMA-HTTP-ADDRESS")
    return host, int(port_s)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]   # lower-case names
    writer: asyncio.StreamWriter


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data, separators=(",", ":")).encode(),
                   "application/json; charset=utf-8")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8")


# A handler answers with a Response, or None when it wrote a streamed answer itself (SSE)
Handler = Callable[[Request], Awaitable["Response | None"]]

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def head_bytes(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in {**SECURITY_HEADERS, **headers}.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpServer:
    """Serves ``handler(request)`` on ``host:port`` (port 0: any free one), requiring
    ``token`` on every request when it is not None."""

    def __init__(self, host: str, port: int, handler: Handler, *,
                 token: str | None = None) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.token = token
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.requests = 0
        self.refused = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def link(self, path: str = "") -> str:
        """The URL of ``path`` with the token in its query (what a browser opens)."""
        return self.url + path + (f"?token={self.token}" if self.token else "")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._clients):
            t.cancel()
        for t in list(self._clients):
            with contextlib.suppress(BaseException):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    def _authorized(self, query: dict[str, str], headers: dict[str, str]) -> bool:
        if self.token is None:
            return True
        given = query.get("token")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _host_ok(self, headers: dict[str, str]) -> bool:
        if not is_loopback(self.host):
            return True
        host = headers.get("host")
        if host is None:
            return True  # HTTP/1.0 clients (curl -0, probes) send none
        names = {f"{h}:{self.port}" for h in ("127.0.0.1", "localhost", "[::1]", self.host)}
        return host.lower() in names

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a handler's bug: logged, the connection closed, the server lives
            log.exception("diagnostics request failed")
            with contextlib.suppress(Exception):
                writer.write(head_bytes(500, {"Content-Length": "0", "Connection": "close"}))
        finally:
            if task is not None:
                self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        text = raw.decode("latin-1")
        first, *rest = text.split("\r\n")
        parts = first.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._send(writer, Response.text("bad request\n", 400))
            return
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in rest:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                await self._send(writer, Response.text("bad request\n", 400))
                return
            headers[name.strip().lower()] = value.strip()
        u = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(u.query, keep_blank_values=True).items()}
        self.requests += 1
        if not self._host_ok(headers):
            self.refused += 1
            await self._send(writer, Response.text("unexpected Host header\n", 421))
            return
        if not self._authorized(query, headers):
            self.refused += 1
            await self._send(writer, Response(401, b"token required\n", headers={
                "WWW-Authenticate": 'Bearer realm="lama"'}))
            return
        if method not in ("GET", "HEAD"):
            await self._send(writer, Response(405, b"GET only\n", headers={"Allow": "GET, HEAD"}))
            return
        resp = await self.handler(Request(method, u.path or "/", query, headers, writer))
        if resp is not None:
            await self._send(writer, resp, head_only=method == "HEAD")

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, resp: Response, head_only: bool = False) -> None:
        headers = {"Content-Type": resp.content_type, "Content-Length": str(len(resp.body)),
                   "Connection": "close", **resp.headers}
        writer.write(head_bytes(resp.status, headers) + (b"" if head_only else resp.body))
        await writer.drain()
