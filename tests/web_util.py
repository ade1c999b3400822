"""Helpers of the diagnostics page's tests (tests/test_web.py, tests/test_web_browser.py): a raw
HTTP/1.1 GET on 127.0.0.1 and two paired apps chatting through a comm server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from lama import App
from test_app import two_apps


async def get(port: int, path: str, headers: dict[str, str] | None = None, *,
              method: str = "GET", host: str | None = None,
              timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request to 127.0.0.1:port -> (status, headers with lower-case names, body)."""
    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        w.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await w.drain()
        raw = await asyncio.wait_for(r.read(), timeout)
    finally:
        w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    first, *rest = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in rest:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(first.split(" ")[1]), hdrs, body


async def until(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


async def paired_apps(tmp_path: Path) -> tuple[Any, App, App]:
    """test_app's comm server on 127.0.0.1 and two started apps (Alice, Bob), paired through it
    and with their CHUM connection up."""
    server, alice, bob = await two_apps(tmp_path)
    link = await alice.invite()
    await bob.accept(link)
    await alice.wait_contact(30)
    await until(lambda: alice.manager.connected(bob.person_id)
                and bob.manager.connected(alice.person_id), what="CHUM connection")
    return server, alice, bob
