"""The local control channel of a running ``lama serve`` (how ``lama contacts``, ``send``,
``messages``, ``status`` and ``lama demo`` reach it).

``lama serve`` listens on a TCP socket bound to 127.0.0.1 and an ephemeral port and writes
``<instance dir>/control.json`` ``{"port", "token", "pid"}`` with mode 0600 (created with
``O_EXCL`` under a temporary name, then renamed). A client reads that file and sends the token
first; a wrong token closes the connection. So exactly the users who may read the instance
directory (where the encrypted keychain lives too) may drive the running instance, the same
rule as ``ssh-agent``'s socket. TCP on 127.0.0.1 rather than a Unix socket because an instance
directory is ``<base>/<64 hex digits>/`` and a socket path longer than 107 bytes cannot be
bound. The file is removed when the server stops; a file whose server is gone (connection
refused, e.g. after SIGKILL) counts as "no server", and the CLI then opens the instance itself.

Protocol: one JSON object per line in each direction (UTF-8). The client sends
``{"token": T, "op": OP, ...arguments}``; the server answers with lines ``{"ok": true, ...}``
(the result), ``{"item": {...}}`` (a streamed item: a message of ``messages``), ``{"info":
{...}}`` (progress, e.g. the invitation link before the pairing completes), and ends the
exchange with ``{"end": true}`` or ``{"error": {"code", "type", "message"}}``. One request per
connection; the server closes after answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

from lama.errors import LamaError, TransportError

__all__ = ["CONTROL_FILE", "ControlServer", "control_address", "request", "stream",
           "ControlError"]

CONTROL_FILE = "control.json"
MAX_LINE = 16 * 1024 * 1024  # a request carries at most a text; attachments go by path


class ControlError(LamaError):
    """An error the server reported (its code and message), raised again in the client."""


Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]],
                   Awaitable[None]]


class ControlServer:
    """Serves requests with ``handler(request, send)``: ``send(line)`` writes one response line
    (a dict); the handler's return ends the exchange with ``{"end": true}``, a LamaError with
    ``{"error": ...}``."""

    def __init__(self, instance_dir: str | os.PathLike[str], handler: Handler) -> None:
        self.path = Path(instance_dir) / CONTROL_FILE
        self.handler = handler
        self.token = secrets.token_hex(16)
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=MAX_LINE)
        self.port = self._server.sockets[0].getsockname()[1]
        tmp = self.path.with_name(f".{CONTROL_FILE}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"port": self.port, "token": self.token, "pid": os.getpid()}, f)
        os.replace(tmp, self.path)

    async def close(self) -> None:
        # only remove the file if it is still ours (a newer server may have replaced it)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        if self._server is not None:
            self._server.close()
        for t in list(self._clients):
            t.cancel()
        if self._clients:
            await asyncio.wait(list(self._clients), timeout=2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)

        async def send(obj: dict[str, Any]) -> None:
            writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
            await writer.drain()

        try:
            line = await asyncio.wait_for(reader.readline(), 10.0)
            try:
                req = json.loads(line)
                ok = isinstance(req, dict) and secrets.compare_digest(
                    str(req.get("token", "")), self.token)
            except ValueError:
                ok = False
            if not ok:
                await send({"error": {"code": "LAMA-CONTROL-AUTH", "type": "AccessDeniedError",
                                      "message": "wrong control token"}})
                return
            try:
                await self.handler(req, send)
                await send({"end": True})
            except LamaError as e:
                await send({"error": {"code": e.code, "type": type(e).__name__,
                                      "message": str(e)}})
            except (OSError, ValueError, LookupError) as e:
                await send({"error": {"code": "LAMA-CONTROL", "type": type(e).__name__,
                                      "message": str(e)}})
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


def control_address(instance_dir: str | os.PathLike[str]) -> tuple[int, str] | None:
    """``(port, token)`` of the server named in ``control.json``, or None without the file."""
    try:
        d = json.loads((Path(instance_dir) / CONTROL_FILE).read_text())
        return int(d["port"]), str(d["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def _open(instance_dir: str | os.PathLike[str]) -> tuple[asyncio.StreamReader,
                                                                asyncio.StreamWriter, str] | None:
    addr = control_address(instance_dir)
    if addr is None:
        return None
    port, token = addr
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=MAX_LINE)
    except OSError:
        return None  # the server is gone (killed): its file is stale
    return reader, writer, token


async def stream(instance_dir: str | os.PathLike[str], op: str,
                 **args: Any) -> AsyncIterator[dict[str, Any]]:
    """Send one request to the running server and yield its response lines (without the final
    ``end``); raises :class:`ControlError` for an error line, ``TransportError`` (code
    ``LAMA-CONTROL-NOSERVER``) when no server runs."""
    opened = await _open(instance_dir)
    if opened is None:
        raise TransportError(f"LAMA-CONTROL-NOSERVER: no lama serve runs for {instance_dir}")
    reader, writer, token = opened
    try:
        writer.write(json.dumps({"token": token, "op": op, **args}).encode() + b"\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise TransportError("LAMA-CONTROL-CLOSED: the server closed the control "
                                     "connection before answering")
            msg = json.loads(line)
            if msg.get("end"):
                return
            if "error" in msg:
                raise _error(msg["error"])
            yield msg
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _error(err: dict[str, Any]) -> LamaError:
    """The server's error as the same lama error class (``ControlError`` if unknown)."""
    from lama import errors

    cls = getattr(errors, str(err.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, LamaError)):
        cls = ControlError
    message = str(err.get("message", ""))
    code = str(err.get("code") or "LAMA-CONTROL")
    if message.startswith(code + ": "):
        message = message[len(code) + 2:]
    return cls(message, code=code)


async def request(instance_dir: str | os.PathLike[str], op: str, **args: Any) -> dict[str, Any]:
    """One request, its ``ok`` result (the other lines are dropped)."""
    result: dict[str, Any] = {}
    async for msg in stream(instance_dir, op, **args):
        if msg.get("ok"):
            result = msg
    return result


def server_running(instance_dir: str | os.PathLike[str]) -> bool:
    """Whether a ``lama serve`` answers on this instance's control port."""
    import socket

    addr = control_address(instance_dir)
    if addr is None:
        return False
    try:
        with socket.create_connection(("127.0.0.1", addr[0]), timeout=1.0):
            return True
    except OSError:
        return False
