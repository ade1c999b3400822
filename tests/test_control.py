"""lama.control: the local control channel of ``lama serve`` (token, stale file, errors)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from lama import control
from lama.errors import InvalidArgumentError, NotFoundError, TransportError


async def _echo(req: dict[str, Any], send: Any) -> None:
    if req["op"] == "echo":
        for i in range(int(req.get("n", 1))):
            await send({"item": {"i": i}})
        await send({"ok": True, "args": req.get("x")})
    elif req["op"] == "missing":
        raise NotFoundError("no such contact", code="LAMA-CONTACT")
    else:
        raise InvalidArgumentError("LAMA-ARG: unknown")


def test_request_stream_and_errors(tmp_path: Path) -> None:
    async def main() -> None:
        server = control.ControlServer(tmp_path, _echo)
        await server.start()
        try:
            f = tmp_path / control.CONTROL_FILE
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600  # only the owner may drive it
            assert control.server_running(tmp_path)
            items = [m async for m in control.stream(tmp_path, "echo", n=3, x="ü")]
            assert items == [{"item": {"i": 0}}, {"item": {"i": 1}}, {"item": {"i": 2}},
                             {"ok": True, "args": "ü"}]
            assert (await control.request(tmp_path, "echo", x=[1]))["args"] == [1]
            # the server's lama error comes back as the same class and code
            with pytest.raises(NotFoundError) as e:
                await control.request(tmp_path, "missing")
            assert e.value.code == "LAMA-CONTACT" and "no such contact" in str(e.value)
            with pytest.raises(InvalidArgumentError):
                await control.request(tmp_path, "other")
            # a client without the token is refused
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(json.dumps({"token": "0" * 32, "op": "echo"}).encode() + b"\n")
            answer = json.loads(await reader.readline())
            assert answer["error"]["code"] == "LAMA-CONTROL-AUTH"
            assert await reader.readline() == b""
            writer.close()
        finally:
            await server.close()
        assert not (tmp_path / control.CONTROL_FILE).exists()
        assert not control.server_running(tmp_path)
        with pytest.raises(TransportError) as e2:
            await control.request(tmp_path, "echo")
        assert e2.value.code == "LAMA-CONTROL-NOSERVER"

    asyncio.run(main())


def test_stale_control_file_is_no_server(tmp_path: Path) -> None:
    """After a SIGKILL the file stays; a refused connection means "no server"."""
    async def main() -> None:
        server = control.ControlServer(tmp_path, _echo)
        await server.start()
        port = server.port
        server._server.close()  # type: ignore[union-attr]  # the process "dies": file left
        await server._server.wait_closed()  # type: ignore[union-attr]
        assert control.control_address(tmp_path) == (port, server.token)
        assert not control.server_running(tmp_path)
        with pytest.raises(TransportError):
            await control.request(tmp_path, "echo")
        # a new server replaces the stale file; the old one's close leaves the new file alone
        new = control.ControlServer(tmp_path, _echo)
        await new.start()
        await server.close()
        assert (await control.request(tmp_path, "echo", x=2))["args"] == 2
        await new.close()

    asyncio.run(main())
