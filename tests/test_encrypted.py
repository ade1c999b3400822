"""Encrypted connections (docs/connections.md §1; spec conn §2.2–2.7, §4) on the core under
test, and between the cores (a Rust peer and a pure peer over WebSocket).

- The recorded connections of tests/vectors/crypto-and-frames.json (section
  ``encrypted-connection``) are replayed: a scripted peer feeds the recorded frames to a
  connection holding the recorded keys (the ephemeral pair fixed through ``_ephemeral``), which
  must deliver the recorded messages, swallow the keepalives and reassemble the fragmented
  message; with the recorded padding (``_padding``) what it sends must be the recorded bytes.
- Handshake, refusal, tampering (a relay in the middle), keepalive with short timers, large
  messages, and a CHUM session over an encrypted connection.

Everything listens on 127.0.0.1 only; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from types import ModuleType
from typing import Any, Awaitable, Callable

import pytest

from conftest import load_vectors
from lama._core import core
from lama.errors import InvalidArgumentError, TransportError

VECTORS = load_vectors("crypto-and-frames.json")
FULL = load_vectors("crypto-and-frames.full-frames.json")["full"]
CONNS = {c["name"]: c for c in VECTORS["encrypted-connection"]["connections"]}


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


def keypair(label: str, c: ModuleType = core) -> tuple[bytes, bytes]:
    sk = hashlib.sha256(label.encode()).digest()
    return c.box_public_from_secret(sk), sk


A = keypair("enc test A")
B = keypair("enc test B")


async def pair(client_core: ModuleType = core, server_core: ModuleType = core,
               server_keys: list[tuple[bytes, bytes]] | None = None, target: bytes | None = None,
               client_kw: dict[str, Any] | None = None, server_kw: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """An encrypted connection A -> B over a direct WebSocket listener (conn §4.2)."""
    listener = await server_core.ws_listen("127.0.0.1", 0)
    try:
        async def server() -> Any:
            raw = await listener.accept()
            return await server_core.encrypted_accept(raw, server_keys or [B], **(server_kw or {}))

        client, srv = await asyncio.gather(
            client_core.encrypted_connect(f"ws://127.0.0.1:{listener.port}", A[0], A[1], target or B[0],
                                          **(client_kw or {})),
            server(), return_exceptions=True)
    finally:
        await listener.close()
    for x in (client, srv):
        if isinstance(x, BaseException):
            for y in (client, srv):
                if not isinstance(y, BaseException):
                    await y.close()
            raise x
    return client, srv


# -- handshake and messages ------------------------------------------------------------------------

def test_handshake_and_messages_both_ways() -> None:
    async def main() -> None:
        a, b = await pair()
        assert isinstance(a, core.EncryptedConnection) and isinstance(a, core.Transport)
        assert (a.initiator, b.initiator) == (True, False)
        assert (a.local_key, a.remote_key) == (A[0], B[0])
        assert (b.local_key, b.remote_key) == (B[0], A[0])
        msgs = ["hello", b"\x00\x01", "", b"", "grüße \U0001f600", "keepalive", "keepalivex",
                "fragmentation_end", "fragmentation_start_binary", "fragmentation_start_stringy", b"keepalive"]
        for m in msgs:
            await a.send(m)
            await b.send(m)
        assert [await b.recv() for _ in msgs] == msgs
        assert [await a.recv() for _ in msgs] == msgs
        await a.close("bye")
        assert await b.recv() is None
        assert a.close_reason == b.close_reason == "Close called: bye"
        sa, sb = a.stats(), b.stats()
        assert sa["messages_sent"] == sb["messages_received"] == len(msgs)
        assert sa["bytes_sent"] == sb["bytes_received"] > 0
        assert sa["close_reason"] == "Close called: bye"
        assert sa["close_time"] >= sa["open_time"] > 0
        with pytest.raises(TransportError) as e:
            await a.send("more")
        assert e.value.code == "LAMA-NET-CLOSED"

    run(main)


def test_empty_close_reason_is_close_called_dot() -> None:
    async def main() -> None:
        a, b = await pair()
        await b.close()
        assert await a.recv() is None
        assert a.close_reason == b.close_reason == "Close called."

    run(main)


def test_wrong_target_key_is_refused() -> None:
    async def main() -> None:
        other = keypair("nobody")
        listener = await core.ws_listen("127.0.0.1", 0)
        try:
            async def server() -> Any:
                raw = await listener.accept()
                try:
                    return await core.encrypted_accept(raw, [B])
                finally:
                    assert raw.close_reason == ("Close called: Error: We do not accept connections "
                                                "for this target public key")

            client, srv = await asyncio.gather(
                core.encrypted_connect(f"ws://127.0.0.1:{listener.port}", A[0], A[1], other[0]),
                server(), return_exceptions=True)
        finally:
            await listener.close()
        assert isinstance(client, TransportError) and client.code == "LAMA-NET-REFUSED", client
        assert "We do not accept connections for this target public key" in str(client)
        assert isinstance(srv, TransportError) and srv.code == "LAMA-NET-REFUSED", srv

    run(main)


def test_the_acceptor_picks_the_target_among_its_keys() -> None:
    async def main() -> None:
        keys = [keypair(f"k{i}") for i in range(5)]
        listener = await core.ws_listen("127.0.0.1", 0)
        try:
            raw_task = asyncio.ensure_future(listener.accept())
            client_task = asyncio.ensure_future(
                core.encrypted_connect(f"ws://127.0.0.1:{listener.port}", A[0], A[1], keys[3][0]))
            b = await core.encrypted_accept(await raw_task, keys)
            a = await client_task
        finally:
            await listener.close()
        assert b.local_key == keys[3][0] and a.remote_key == keys[3][0]
        await a.send("x")
        assert await b.recv() == "x"
        await a.close()

    run(main)


def test_bad_arguments() -> None:
    async def main() -> None:
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_connect("ws://127.0.0.1:1", A[0][:31], A[1], B[0])
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_connect("ws://127.0.0.1:1", A[0], A[1], "ab" * 32)
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_connect("ws://127.0.0.1:1", A[0], A[1], B[0], keepalive=0)
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_connect("ws://127.0.0.1:1", A[0], A[1], B[0], dead_after=float("nan"))
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_connect("http://127.0.0.1:1", A[0], A[1], B[0])
        a, b = core.memory_pair()
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_accept(a, [(B[0], b"short")])
        with pytest.raises(InvalidArgumentError):
            await core.encrypted_accept("not a transport", [B])
        with pytest.raises(TransportError) as e:
            await core.encrypted_connect("ws://127.0.0.1:1", A[0], A[1], B[0])
        assert e.value.code == "LAMA-NET-CONNECT"

    run(main)


@pytest.mark.cross_core
@pytest.mark.parametrize("rust_client", [True, False])
def test_rust_and_pure_peers(rust_core: ModuleType, pure_core: ModuleType, rust_client: bool) -> None:
    """A Rust initiator with a pure acceptor and the reverse: handshake, messages both ways
    (a fragmented one too), close reason on both sides."""
    cc, sc = (rust_core, pure_core) if rust_client else (pure_core, rust_core)
    big = bytes(range(256)) * 1024  # 256 KiB: fragmented
    text = "ü" * 40_000  # 80 KB of UTF-8, 40,000 UTF-16 units: fragmented as a string

    async def main() -> None:
        a, b = await pair(cc, sc)
        assert isinstance(a, cc.EncryptedConnection) and isinstance(b, sc.EncryptedConnection)
        for m in ["x", b"y", big, text, "keepalive!", "fragmentation_end"]:
            await a.send(m)
            assert await b.recv() == m
            await b.send(m)
            assert await a.recv() == m
        await b.close("done")
        assert await a.recv() is None
        assert a.close_reason == b.close_reason == "Close called: done"

    run(main)
