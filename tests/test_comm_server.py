"""The comm server and its listener client (docs/connections.md §2; spec connections.md §2.8, §3),
on the core under test, and between the cores (a Rust server with a pure listener and the
reverse).

Everything listens on 127.0.0.1 only; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, Awaitable, Callable

import pytest

from conftest import ROOT, load_vectors
from lama._core import comm_listen, comm_server, core
from lama.errors import InvalidArgumentError, TransportError

NO_LISTENER = "Close called: No listening connection for the specified publicKey."
AUTH_FAILED = "Close called: Client authentication failed."
MALFORMED = "Close called: Received unexpected or malformed message from client."
NOT_JSON = "Close called: Received message that does not conform to JSON: "
KEY_LENGTH = "Close called: Error: A public key must be 32 bytes."
PING_TIMEOUT = "Terminate called: Ping: Connection timed out"
PONG_TIMEOUT = "Terminate called: Pong: Connection timed out"
AUTH_TIMEOUT = "Close called: Authentication timed out."
KEY_LIMIT = "Close called: Too many spare connections for this publicKey."
ADDRESS_LIMIT = "Close called: Too many spare connections from this address."
SHUTDOWN = "Close called: Comm server shut down."


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def request(source: bytes, target: bytes) -> str:
    return compact({"command": "communication_request", "sourcePublicKey": source.hex(),
                    "targetPublicKey": target.hex()})


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def raw_register(c: ModuleType, url: str, pk: bytes, sk: bytes, *, key_text: str | None = None,
                       answer: bool = True) -> tuple[Any, dict[str, Any]]:
    """Register a spare by hand (conn §3.2); the transport and the authentication_request."""
    t = await c.ws_connect(url)
    await t.send(compact({"command": "register", "publicKey": key_text or pk.hex()}))
    m = await t.recv()
    assert isinstance(m, str), (m, t.close_reason)
    req = json.loads(m)
    if answer:
        plain = c.box_open_embedded(bytes.fromhex(req["challenge"]), sk, bytes.fromhex(req["publicKey"]))
        inverted = bytes(b ^ 0xFF for b in plain)
        resp = c.box_seal_embedded(inverted, sk, bytes.fromhex(req["publicKey"]))
        await t.send(compact({"command": "authentication_response", "response": resp.hex()}))
    return t, req


async def accept_request(listener: Any) -> tuple[Any, dict[str, Any]]:
    t = await asyncio.wait_for(listener.accept(), 10)
    first = await asyncio.wait_for(t.recv(), 10)
    assert isinstance(first, str)
    return t, json.loads(first)


# -- registration ---------------------------------------------------------------------------------

def test_registration_vector_recomputed() -> None:
    """commserver-auth of crypto-and-frames.json: the recorded challenge decrypts with the
    recorded keys, its complement re-encrypted with the recorded nonce is the recorded response,
    and the server side of it (decrypt, compare with NOT(challenge)) accepts it."""
    v = load_vectors("crypto-and-frames.json")["commserver-auth"]
    lpk = bytes.fromhex(v["listener"]["instance_public_key"])
    lsk = bytes.fromhex(v["listener"]["instance_secret_key"])
    spk = bytes.fromhex(v["server"]["publicKey"])
    ssk = bytes.fromhex(v["server"]["secretKey"])
    wire = [json.loads(w["text"]) for w in v["wire"]]
    assert [w["command"] for w in wire] == ["register", "authentication_request", "authentication_response",
                                           "authentication_success"]
    # the texts as they crossed the wire are the compact JSON in this key order
    assert [compact(w) for w in wire] == [w["text"] for w in v["wire"]]
    assert core.box_before(spk, lsk) == core.box_before(lpk, ssk) == bytes.fromhex(v["shared_key"])
    challenge = bytes.fromhex(wire[1]["challenge"])
    assert len(challenge) == 104 and wire[1]["publicKey"] == spk.hex() and wire[0]["publicKey"] == lpk.hex()
    plain = core.box_open_embedded(challenge, lsk, spk)
    assert plain.hex() == v["challenge_plaintext"]
    inverted = bytes(b ^ 0xFF for b in plain)
    assert inverted.hex() == v["inverted_challenge"]
    resp = core.box_seal_embedded(inverted, lsk, spk, bytes.fromhex(v["response_nonce"]))
    assert resp.hex() == wire[2]["response"] == v["response_ciphertext_embedded"]
    # the server's check
    assert core.box_open_embedded(resp, ssk, lpk) == bytes(b ^ 0xFF for b in bytes.fromhex(v["challenge_plaintext"]))
    # the fork form of authentication_success (conn §3.1)
    assert list(wire[3]) == ["command", "pingInterval", "clientIp", "clientPort"]


def test_live_registration_with_recorded_key_has_the_recorded_form() -> None:
    """A hand-made registration with the recorded listener key: the server's frames have the
    recorded shape (key order, hex lengths, the fork's success form with this client's address)."""
    v = load_vectors("crypto-and-frames.json")["commserver-auth"]
    lpk = bytes.fromhex(v["listener"]["instance_public_key"])
    lsk = bytes.fromhex(v["listener"]["instance_secret_key"])
    recorded = [json.loads(w["text"]) for w in v["wire"]]

    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, ping_interval=12.5)
        try:
            t, req = await raw_register(core, server.url, lpk, lsk)
            assert list(req) == list(recorded[1])
            assert len(req["publicKey"]) == 64 and req["publicKey"] == req["publicKey"].lower()
            assert len(req["challenge"]) == 208 and req["publicKey"] != recorded[1]["publicKey"]
            ok = json.loads(await t.recv())
            assert list(ok) == list(recorded[3])
            assert ok["command"] == "authentication_success" and ok["pingInterval"] == 12500
            assert ok["clientIp"] == "127.0.0.1" and isinstance(ok["clientPort"], int) and ok["clientPort"] > 0
            await wait_until(lambda: server.counters()["spares"] == 1)
            c = server.counters()
            assert c["registrations"] == 1 and c["auth_failures"] == 0
            await t.close()
        finally:
            await server.close()

    run(main)


def test_server_key_is_fresh_per_server() -> None:
    async def main() -> None:
        pk, sk = core.box_keypair()
        keys = []
        for _ in range(2):
            server = await comm_server("127.0.0.1", 0)
            try:
                t, req = await raw_register(core, server.url, pk, sk)
                keys.append(req["publicKey"])
                await t.close()
            finally:
                await server.close()
        assert keys[0] != keys[1]

    run(main)


def test_wrong_authentication_response_is_refused() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            pk, sk = core.box_keypair()
            # 1. the challenge echoed back (not inverted, conn §1.3)
            t, req = await raw_register(core, server.url, pk, sk, answer=False)
            await t.send(compact({"command": "authentication_response", "response": req["challenge"]}))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == AUTH_FAILED
            # 2. the right answer from a different key (no proof of pk's secret)
            other_pk, other_sk = core.box_keypair()
            t, req = await raw_register(core, server.url, pk, sk, answer=False)
            plain = core.box_open_embedded(bytes.fromhex(req["challenge"]), sk, bytes.fromhex(req["publicKey"]))
            forged = core.box_seal_embedded(bytes(b ^ 0xFF for b in plain), other_sk, bytes.fromhex(req["publicKey"]))
            await t.send(compact({"command": "authentication_response", "response": forged.hex()}))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == AUTH_FAILED
            # 3. not hex
            t, req = await raw_register(core, server.url, pk, sk, answer=False)
            await t.send(compact({"command": "authentication_response", "response": "zz"}))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == AUTH_FAILED
            c = server.counters()
            assert c["auth_failures"] == 3 and c["spares"] == 0 and c["registrations"] == 0
            # nothing was registered: a request for pk is refused
            i = await core.ws_connect(server.url)
            await i.send(request(other_pk, pk))
            assert await asyncio.wait_for(i.recv(), 10) is None
            assert i.close_reason == NO_LISTENER
        finally:
            await server.close()

    run(main)


@pytest.mark.parametrize("first,reason", [
    ("not json", NOT_JSON),
    (compact({"command": "hello"}), MALFORMED),
    (compact({"publicKey": "00" * 32}), MALFORMED),
    (compact([1, 2]), MALFORMED),
    (compact({"command": "register"}), MALFORMED),
    (compact({"command": "register", "publicKey": "xyz"}), MALFORMED),
    (compact({"command": "register", "publicKey": 5}), MALFORMED),
    (compact({"command": "register", "publicKey": "00" * 31}), KEY_LENGTH),
    (compact({"command": "communication_request", "sourcePublicKey": "00" * 32}), MALFORMED),
    (compact({"command": "communication_request", "sourcePublicKey": "00" * 32,
              "targetPublicKey": "ab" * 33}), KEY_LENGTH),
    (compact({"command": "authentication_response", "response": "00"}), MALFORMED),
    (b"\x00binary", MALFORMED),
])
def test_malformed_first_message_is_refused(first: str | bytes, reason: str) -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            t = await core.ws_connect(server.url)
            await t.send(first)
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason is not None and t.close_reason.startswith(reason), t.close_reason
            await wait_until(lambda: server.counters()["open"] == 0)
            assert server.counters()["malformed"] == 1
        finally:
            await server.close()

    run(main)


def test_unauthenticated_sockets_time_out() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, auth_timeout=0.3)
        try:
            pk, sk = core.box_keypair()
            silent = await core.ws_connect(server.url)
            t0 = time.monotonic()
            # 2. registered but never answering the challenge
            half, _ = await raw_register(core, server.url, pk, sk, answer=False)
            assert await asyncio.wait_for(silent.recv(), 5) is None
            assert silent.close_reason == AUTH_TIMEOUT
            assert await asyncio.wait_for(half.recv(), 5) is None
            assert half.close_reason == AUTH_TIMEOUT
            assert time.monotonic() - t0 < 3
            # 3. a raw TCP socket that never completes the WebSocket handshake is dropped too
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await wait_until(lambda: server.counters()["auth_timeouts"] == 2)
            assert server.counters()["open"] == 0
        finally:
            await server.close()

    run(main)


# -- relay ------------------------------------------------------------------------------------------

def test_relay_text_and_binary_both_ways() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=2, reconnect_delay=0.2)
        try:
            assert listener.state == "listening"
            await wait_until(lambda: server.counters()["spares"] == 2)
            ipk, _ = core.box_keypair()
            ini = await core.ws_connect(server.url)
            # the target in upper case: the server's index is case-insensitive
            await ini.send(compact({"command": "communication_request", "sourcePublicKey": ipk.hex().upper(),
                                    "targetPublicKey": pk.hex().upper(), "extra": True}))
            acc, first = await accept_request(listener)
            # re-serialised in lowercase hex, without the extra field (conn §3.3)
            assert compact(first) == request(ipk, pk)
            await acc.send(compact({"command": "communication_ready"}))
            assert await ini.recv() == '{"command":"communication_ready"}'
            big = os.urandom(5 * 1024 * 1024)
            text = "é" * (700 * 1024)
            await ini.send(b"\x01\x02")
            await ini.send("text from the initiator")
            await ini.send(big)
            await acc.send(text)
            await acc.send(b"")
            await acc.send("")
            assert await acc.recv() == b"\x01\x02"
            assert await acc.recv() == "text from the initiator"
            assert await acc.recv() == big
            assert await ini.recv() == text
            assert await ini.recv() == b""
            assert await ini.recv() == ""
            # the listener replaced the spare at once
            await wait_until(lambda: server.counters()["spares"] == 2)
            c = server.counters()
            assert c["handovers"] == 1 and c["relays"] == 1 and c["requests"] == 1
            assert c["relayed_frames"] == 7
            assert c["relayed_bytes"] == (len('{"command":"communication_ready"}') + 2 + 23 + len(big)
                                          + len(text.encode()))
            await ini.close("done")
            assert await acc.recv() is None
            assert acc.close_reason == "done"
            await wait_until(lambda: server.counters()["relays"] == 0)
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_spares_are_used_newest_first() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            pk, sk = core.box_keypair()
            spares = []
            for i in range(3):
                # the key's hex in either case names the same spare list
                t, _ = await raw_register(core, server.url, pk, sk, key_text=pk.hex().upper() if i == 1 else None)
                assert json.loads(await t.recv())["command"] == "authentication_success"
                spares.append(t)
            await wait_until(lambda: server.counters()["spares"] == 3)
            for expected in reversed(spares):
                ini = await core.ws_connect(server.url)
                await ini.send(request(pk, pk))
                assert await asyncio.wait_for(expected.recv(), 10) == '{"command":"connection_handover"}'
                assert await asyncio.wait_for(expected.recv(), 10) == request(pk, pk)
                await expected.send("hi")
                assert await ini.recv() == "hi"
                await ini.close()
            assert server.counters()["spares"] == 0
        finally:
            await server.close()

    run(main)


def test_no_listener_is_refused() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            a, _ = core.box_keypair()
            b, _ = core.box_keypair()
            t = await core.ws_connect(server.url)
            await t.send(request(a, b))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == NO_LISTENER
            c = server.counters()
            assert c["refused"] == 1 and c["requests"] == 1 and c["handovers"] == 0
        finally:
            await server.close()

    run(main)


@pytest.mark.parametrize("closer", ["initiator", "acceptor"])
def test_close_propagates_with_the_same_reason(closer: str) -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=1)
        try:
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, _ = await accept_request(listener)
            first, other = (ini, acc) if closer == "initiator" else (acc, ini)
            await first.send("last words")
            await first.close("Close called: Error: something ünusual")
            if closer == "acceptor":
                assert await other.recv() == "last words"
            else:
                assert await other.recv() == "last words"
            assert await asyncio.wait_for(other.recv(), 10) is None
            assert other.close_reason == "Close called: Error: something ünusual"
            await wait_until(lambda: server.counters()["relays"] == 0)
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_oversized_frames_close_the_connection() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, max_message=4096)
        size_reason = "LAMA-NET-SIZE: message exceeds the limit of 4096 bytes"
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=1)
        try:
            # before any protocol
            t = await core.ws_connect(server.url)
            await t.send("x" * 5000)
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == size_reason
            # relayed: the pair closes with the size reason on both sides
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, _ = await accept_request(listener)
            await ini.send(b"y" * 4096)  # at the limit: relayed
            assert await acc.recv() == b"y" * 4096
            await ini.send(b"z" * 4097)
            assert await asyncio.wait_for(acc.recv(), 10) is None
            assert acc.close_reason == size_reason
            assert await asyncio.wait_for(ini.recv(), 10) is None
            assert ini.close_reason == size_reason
            await wait_until(lambda: server.counters()["oversized"] == 2)
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_spare_limits_per_key_and_per_address() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, max_spares_per_key=2, max_spares_per_address=3)
        try:
            pk, sk = core.box_keypair()
            keep = []
            for _ in range(2):
                t, _ = await raw_register(core, server.url, pk, sk)
                assert json.loads(await t.recv())["command"] == "authentication_success"
                keep.append(t)
            t = await core.ws_connect(server.url)
            await t.send(compact({"command": "register", "publicKey": pk.hex()}))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == KEY_LIMIT
            pk2, sk2 = core.box_keypair()
            t, _ = await raw_register(core, server.url, pk2, sk2)
            assert json.loads(await t.recv())["command"] == "authentication_success"
            keep.append(t)
            pk3, _ = core.box_keypair()
            t = await core.ws_connect(server.url)
            await t.send(compact({"command": "register", "publicKey": pk3.hex()}))
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == ADDRESS_LIMIT
            c = server.counters()
            assert c["refused"] == 2 and c["spares"] == 3
            # a closed spare frees its place
            await keep.pop(0).close()
            await wait_until(lambda: server.counters()["spares"] == 2)
            t, _ = await raw_register(core, server.url, pk, sk)
            assert json.loads(await t.recv())["command"] == "authentication_success"
            keep.append(t)
            for t in keep:
                await t.close()
        finally:
            await server.close()

    run(main)


# -- ping / pong ----------------------------------------------------------------------------------

def test_ping_pong_keeps_answering_spares_and_drops_silent_ones() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, ping_interval=0.2, pong_timeout=0.3)
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=2)
        try:
            silent_pk, silent_sk = core.box_keypair()
            silent, _ = await raw_register(core, server.url, silent_pk, silent_sk)
            ok = json.loads(await silent.recv())
            assert ok["pingInterval"] == 200
            t0 = time.monotonic()
            assert await asyncio.wait_for(silent.recv(), 5) == '{"command":"ping"}'
            assert await asyncio.wait_for(silent.recv(), 5) is None
            assert silent.close_reason == PING_TIMEOUT
            assert 0.2 < time.monotonic() - t0 < 3
            # the listener's spares answered every ping meanwhile and are still there
            await asyncio.sleep(1.0)
            c = server.counters()
            assert c["ping_timeouts"] == 1 and c["spares"] == 2 and c["pings"] >= 8
            assert listener.state == "listening"
            # a spare with a ping outstanding is handed over after its pong
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, first = await accept_request(listener)
            assert first["targetPublicKey"] == pk.hex()
            await ini.close()
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_listener_answers_comm_ping_and_drops_a_server_that_stops_pinging() -> None:
    """conn §2.8, client side, against a scripted server: comm_ping → comm_pong, ping → pong,
    and no ping within pingInterval + 4 s closes the spare; the listener then re-registers."""

    async def main() -> None:
        spk, ssk = core.box_keypair()
        lst = await core.ws_listen("127.0.0.1", 0)
        pk, sk = core.box_keypair()
        url = f"ws://127.0.0.1:{lst.port}"

        async def serve_one(ping_interval_ms: int) -> Any:
            t = await lst.accept()
            reg = json.loads(await t.recv())
            assert reg == {"command": "register", "publicKey": pk.hex()}
            challenge = os.urandom(64)
            await t.send(compact({"command": "authentication_request", "publicKey": spk.hex(),
                                  "challenge": core.box_seal_embedded(challenge, ssk, pk).hex()}))
            resp = json.loads(await t.recv())
            assert core.box_open_embedded(bytes.fromhex(resp["response"]), ssk, pk) == bytes(b ^ 0xFF for b in challenge)
            await t.send(compact({"command": "authentication_success", "pingInterval": ping_interval_ms}))
            return t

        task = asyncio.ensure_future(comm_listen(url, pk, sk, spares=1, reconnect_delay=0.1))
        t = await serve_one(100)
        listener = await task
        try:
            assert listener.state == "listening"
            await t.send('{"command":"comm_ping"}')
            assert await asyncio.wait_for(t.recv(), 5) == '{"command":"comm_pong"}'
            await t.send('{"command":"ping"}')
            assert await asyncio.wait_for(t.recv(), 5) == '{"command":"pong"}'
            t0 = time.monotonic()
            assert await asyncio.wait_for(t.recv(), 10) is None
            assert t.close_reason == PONG_TIMEOUT
            assert 3.5 < time.monotonic() - t0 < 8
            # a replacement registers after the delay
            t2 = await asyncio.wait_for(serve_one(25000), 10)
            await wait_until(lambda: listener.state == "listening")
            await t2.close()
        finally:
            await listener.close()
            await lst.close()

    run(main, 30)


def test_listener_comes_back_after_a_server_restart() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        port = server.port
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=2, reconnect_delay=0.2)
        try:
            await wait_until(lambda: server.counters()["spares"] == 2)
            await server.close()
            await wait_until(lambda: listener.state == "connecting")
            server = await comm_server("127.0.0.1", port)
            await wait_until(lambda: server.counters()["spares"] == 2)
            assert listener.state == "listening"
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, first = await accept_request(listener)
            await acc.send("back")
            assert await ini.recv() == "back"
            await ini.close()
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_listener_unreachable_server_keeps_trying() -> None:
    async def main() -> None:
        # a port nobody listens on (bound, then closed)
        lst = await core.ws_listen("127.0.0.1", 0)
        port = lst.port
        await lst.close()
        pk, sk = core.box_keypair()
        listener = await comm_listen(f"ws://127.0.0.1:{port}", pk, sk, reconnect_delay=0.1)
        try:
            assert listener.state == "connecting"
            server = await comm_server("127.0.0.1", port)
            try:
                await wait_until(lambda: listener.state == "listening")
                await wait_until(lambda: server.counters()["spares"] == 2)
            finally:
                await server.close()
        finally:
            await listener.close()
        assert listener.state == "not_listening"
        with pytest.raises(TransportError) as e:
            await listener.accept()
        assert e.value.code == "LAMA-NET-CLOSED"

    run(main)


# -- back-pressure and shutdown -------------------------------------------------------------------

def test_slow_reader_holds_the_sender_back() -> None:
    """The acceptor reads nothing: the initiator's sends stop completing after a bounded amount
    (the relay holds at most its bounded buffers), and everything arrives once it reads."""

    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=1)
        try:
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, _ = await accept_request(listener)
            chunk = 256 * 1024
            sent = 0

            async def flood() -> None:
                nonlocal sent
                for i in range(1024):  # up to 256 MiB
                    await ini.send(i.to_bytes(4, "big") * (chunk // 4))
                    sent += 1

            task = asyncio.ensure_future(flood())
            # wait until the sender is stuck: no progress for 0.5 s
            last = -1
            while sent != last:
                last = sent
                await asyncio.sleep(0.5)
            assert not task.done()
            assert sent * chunk < 64 * 1024 * 1024, f"{sent * chunk} bytes buffered"
            assert server.counters()["relayed_frames"] < sent
            # the reader catches up: every frame, in order
            for i in range(40):
                assert await asyncio.wait_for(acc.recv(), 10) == i.to_bytes(4, "big") * (chunk // 4)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ini.close()
        finally:
            await listener.close()
            await server.close()

    run(main)


def test_close_shuts_down_spares_and_relays() -> None:
    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        pk, sk = core.box_keypair()
        listener = await comm_listen(server.url, pk, sk, spares=2, reconnect_delay=30)
        raw_pk, raw_sk = core.box_keypair()
        spare, _ = await raw_register(core, server.url, raw_pk, raw_sk)
        assert json.loads(await spare.recv())["command"] == "authentication_success"
        ini = await core.ws_connect(server.url)
        await ini.send(request(pk, pk))
        acc, _ = await accept_request(listener)
        pending = await core.ws_connect(server.url)  # not yet authenticated
        await wait_until(lambda: server.counters()["spares"] == 3)
        t0 = time.monotonic()
        await server.close()
        assert time.monotonic() - t0 < 5
        for t in (spare, ini, acc, pending):
            assert await asyncio.wait_for(t.recv(), 5) is None
            assert t.close_reason == SHUTDOWN
        c = server.counters()
        assert c["open"] == 0 and c["spares"] == 0 and c["relays"] == 0
        await wait_until(lambda: listener.state == "connecting")
        with pytest.raises(TransportError):
            await core.ws_connect(server.url)
        await server.close()  # idempotent
        await listener.close()
        assert listener.state == "not_listening"

    run(main)


def test_arguments_are_checked() -> None:
    async def main() -> None:
        pk, sk = core.box_keypair()
        other_pk, _ = core.box_keypair()
        bad: list[Callable[[], Awaitable[Any]]] = [
            lambda: comm_server("127.0.0.1", -1),
            lambda: comm_server("127.0.0.1", "80"),  # type: ignore[arg-type]
            lambda: comm_server(5, 0),  # type: ignore[arg-type]
            lambda: comm_server("127.0.0.1", 0, ping_interval=-1),
            lambda: comm_server("127.0.0.1", 0, auth_timeout=float("nan")),
            lambda: comm_server("127.0.0.1", 0, max_spares_per_key=0),
            lambda: comm_server("127.0.0.1", 0, max_message=True),
            lambda: comm_listen("http://x", pk, sk),
            lambda: comm_listen("ws://127.0.0.1:1", pk[:31], sk),
            lambda: comm_listen("ws://127.0.0.1:1", pk, "sk"),  # type: ignore[arg-type]
            lambda: comm_listen("ws://127.0.0.1:1", other_pk, sk),
            lambda: comm_listen("ws://127.0.0.1:1", pk, sk, spares=0),
            lambda: comm_listen("ws://127.0.0.1:1", pk, sk, reconnect_delay=-2),
        ]
        for f in bad:
            with pytest.raises(InvalidArgumentError) as e:
                await f()
            assert e.value.code == "LAMA-ARG"

    run(main)


# -- between the cores ----------------------------------------------------------------------------

@pytest.mark.cross_core
@pytest.mark.parametrize("server_side", ["rust", "pure"])
def test_cross_core_server_and_listener(server_side: str, rust_core: ModuleType, pure_core: ModuleType) -> None:
    srv_core, cli_core = (rust_core, pure_core) if server_side == "rust" else (pure_core, rust_core)

    async def main() -> None:
        server = await srv_core.comm_server("127.0.0.1", 0)
        pk, sk = cli_core.box_keypair()
        listener = await cli_core.comm_listen(server.url, pk, sk, spares=2)
        try:
            assert listener.state == "listening"
            await wait_until(lambda: server.counters()["spares"] == 2)
            ini = await cli_core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            acc, first = await accept_request(listener)
            assert compact(first) == request(pk, pk)
            big = os.urandom(300_000)
            await ini.send(big)
            await acc.send("ß" * 70_000)
            assert await acc.recv() == big
            assert await ini.recv() == "ß" * 70_000
            await acc.close("Close called.")
            assert await ini.recv() is None and ini.close_reason == "Close called."
            # refusal reads the same from either server
            x = await cli_core.ws_connect(server.url)
            await x.send(request(sk, sk))
            assert await x.recv() is None and x.close_reason == NO_LISTENER
        finally:
            await listener.close()
            await server.close()

    run(main)


# -- the CLI --------------------------------------------------------------------------------------

def test_cli_comm_server_runs_until_sigterm() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    proc = subprocess.Popen([sys.executable, "-m", "lama.cli", "comm-server", "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:"), (url, proc.stderr.read() if proc.poll() is not None else "")

        async def main() -> None:
            pk, sk = core.box_keypair()
            listener = await comm_listen(url, pk, sk, spares=1)
            try:
                assert listener.state == "listening"
                ini = await core.ws_connect(url)
                await ini.send(request(pk, pk))
                acc, _ = await accept_request(listener)
                await ini.send("via the CLI server")
                assert await acc.recv() == "via the CLI server"
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(acc.recv(), 10) is None
                assert acc.close_reason == SHUTDOWN
            finally:
                await listener.close()

        run(main, 30)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        counters = dict(line.split(" ") for line in out.strip().splitlines())
        assert counters["handovers"] == "1" and counters["relayed_frames"] == "1"
        assert counters["open"] == "0" and int(counters["registrations"]) >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- the recorded pairing connection, replayed through lama's relay -------------------------------

def test_recorded_pairing_connection_relays_byte_for_byte() -> None:
    """Two scripted peers replay their sides of the recorded `pairing` connection
    (crypto-and-frames.json, encrypted-connection): the acceptor registers with its recorded
    instance key, the initiator sends the recorded communication_request; the acceptor's spare
    gets exactly the recorded handover and request, and every recorded frame (handshake and
    encrypted, keepalives included) arrives byte for byte, as a binary frame, in order."""
    conn = load_vectors("crypto-and-frames.json")["encrypted-connection"]["connections"][0]
    assert conn["name"] == "pairing"
    a_keys = conn["acceptor"]["instance_keypair"]
    apk, ask = bytes.fromhex(a_keys["publicKey"]), bytes.fromhex(a_keys["secretKey"])
    b_prelude = [m["text"] for m in conn["plaintext_prelude"]["B"]]
    a_prelude = [m["text"] for m in conn["plaintext_prelude"]["A"]]
    hs = conn["handshake"]
    frame1 = bytes.fromhex(hs["frame1_initiator_to_acceptor"]["hex"])
    frame2 = bytes.fromhex(hs["frame2_acceptor_to_initiator"]["hex"])
    b_frames = [bytes.fromhex(f["frame_hex"]) for f in conn["frames"]["B->A"]]
    a_frames = [bytes.fromhex(f["frame_hex"]) for f in conn["frames"]["A->B"]]
    assert len(b_frames) == len(a_frames) == 10

    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            a, _ = await raw_register(core, server.url, apk, ask)
            assert json.loads(await a.recv())["command"] == "authentication_success"
            b = await core.ws_connect(server.url)
            await b.send(b_prelude[0])
            assert await asyncio.wait_for(a.recv(), 10) == a_prelude[4] == '{"command":"connection_handover"}'
            assert await asyncio.wait_for(a.recv(), 10) == a_prelude[5] == b_prelude[0]
            await a.send(a_prelude[6])
            assert await asyncio.wait_for(b.recv(), 10) == b_prelude[1]
            await b.send(frame1)
            assert await asyncio.wait_for(a.recv(), 10) == frame1
            await a.send(frame2)
            assert await asyncio.wait_for(b.recv(), 10) == frame2

            async def side(me: Any, mine: list[bytes], theirs: list[bytes]) -> None:
                for f in mine:
                    await me.send(f)
                for f in theirs:
                    got = await asyncio.wait_for(me.recv(), 10)
                    assert isinstance(got, bytes) and got == f

            await asyncio.gather(side(a, a_frames, b_frames), side(b, b_frames, a_frames))
            await b.close("Close called.")
            assert await asyncio.wait_for(a.recv(), 10) is None
            assert a.close_reason == "Close called."
            c = server.counters()
            assert c["relayed_frames"] == 1 + 2 + 20  # ready, the two handshake frames, 20 frames
            assert c["relayed_bytes"] == (len(a_prelude[6]) + 144 + sum(map(len, a_frames + b_frames)))
        finally:
            await server.close()

    run(main)


def test_transcript_comm_server_messages_have_the_recorded_shape() -> None:
    """Every comm-server message the reference server sent in the pairing transcript has the
    same fields, in the same order, as lama's server sends for that command."""
    events = load_vectors("transcript-pairing-and-chat.json")
    recorded: dict[str, list[str]] = {}
    for e in events:
        if e["layer"] in ("commserver", "commserver-relay-setup") and e["direction"] == "commserver→peer":
            recorded.setdefault(e["message"]["command"], list(e["message"]))
            assert list(e["message"]) == recorded[e["message"]["command"]]
    assert set(recorded) == {"authentication_request", "authentication_success", "connection_handover",
                             "communication_request"}

    async def main() -> None:
        server = await comm_server("127.0.0.1", 0)
        try:
            pk, sk = core.box_keypair()
            t, req = await raw_register(core, server.url, pk, sk)
            ok = json.loads(await t.recv())
            ini = await core.ws_connect(server.url)
            await ini.send(request(pk, pk))
            handover = json.loads(await asyncio.wait_for(t.recv(), 10))
            forwarded = json.loads(await asyncio.wait_for(t.recv(), 10))
            ours = {m["command"]: list(m) for m in (req, ok, handover, forwarded)}
            assert ours == recorded
            await ini.close()
        finally:
            await server.close()

    run(main)


_RELAY_CLIENT = """
import asyncio, json, sys, time
from lama._core import core, comm_listen

async def main(url):
    pk, sk = core.box_keypair()
    listener = await comm_listen(url, pk, sk, spares=1)
    ini = await core.ws_connect(url)
    await ini.send(json.dumps({"command": "communication_request", "sourcePublicKey": pk.hex(),
                               "targetPublicKey": pk.hex()}))
    acc = await listener.accept()
    await acc.recv()
    t0 = time.monotonic()
    for i in range(200):
        await ini.send(i.to_bytes(4, "big") * 256)
        assert await acc.recv() == i.to_bytes(4, "big") * 256
        await acc.send(str(i))
        assert await ini.recv() == str(i)
    print(time.monotonic() - t0, flush=True)
    await ini.close()
    await listener.close()

asyncio.run(main(sys.argv[1]))
"""


def test_rust_relay_runs_without_the_gil(rust_core: ModuleType) -> None:
    """The Rust server relays while this process's main thread holds the GIL: 400 relayed frames
    between two peers in another process complete while a Python loop here keeps the GIL (the
    switch interval raised to 1000 s; the GIL is let go only around the child's status check
    every half second, so a relay that needed it would take minutes)."""

    async def start() -> Any:
        return await rust_core.comm_server("127.0.0.1", 0)

    server = asyncio.run(start())  # keeps running on the extension's tokio runtime
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), LAMA_CORE="rust")
    proc = subprocess.Popen([sys.executable, "-c", _RELAY_CLIENT, server.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    try:
        end = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < end:
            spin_until = time.monotonic() + 0.5
            while time.monotonic() < spin_until:
                pass
        finished_while_held = proc.poll() is not None
    finally:
        sys.setswitchinterval(old)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=30)
    assert finished_while_held, err
    assert proc.returncode == 0, err
    assert float(out.strip()) < 20
    assert server.counters()["relayed_frames"] == 400

    async def stop() -> None:
        await server.close()

    asyncio.run(stop())


# -- end to end: encrypted connections through the relay ------------------------------------------

async def _encrypted_through_relay(srv: ModuleType, ini_core: ModuleType, acc_core: ModuleType) -> None:
    server = await srv.comm_server("127.0.0.1", 0)
    apk, ask = acc_core.box_keypair()
    bpk, bsk = ini_core.box_keypair()
    listener = await acc_core.comm_listen(server.url, apk, ask, spares=2)
    try:
        async def accept() -> Any:
            t = await listener.accept()
            return await acc_core.encrypted_accept(t, [(apk, ask)])

        acc_task = asyncio.ensure_future(accept())
        ini = await ini_core.encrypted_connect(server.url, bpk, bsk, apk)
        acc = await asyncio.wait_for(acc_task, 10)
        assert ini.remote_key == apk and acc.remote_key == bpk
        big = os.urandom(3 * 1024 * 1024)
        await ini.send("hello through the relay")
        await ini.send(big)
        await acc.send("ü" * 100_000)
        assert await acc.recv() == "hello through the relay"
        assert await acc.recv() == big
        assert await ini.recv() == "ü" * 100_000
        # the relay saw only ciphertext: more bytes than the payloads, in binary frames
        c = server.counters()
        assert c["handovers"] == 1 and c["relayed_bytes"] > len(big) + 200_000
        await ini.close("bye")
        assert await asyncio.wait_for(acc.recv(), 10) is None
        assert acc.close_reason == "Close called: bye"
        # no listener for a key: refused
        other_pk, _ = ini_core.box_keypair()
        with pytest.raises(TransportError) as e:
            await ini_core.encrypted_connect(server.url, bpk, bsk, other_pk)
        assert e.value.code == "LAMA-NET-REFUSED"
    finally:
        await listener.close()
        await server.close()


def test_encrypted_connection_through_the_relay() -> None:
    run(lambda: _encrypted_through_relay(core, core, core))


@pytest.mark.cross_core
@pytest.mark.parametrize("combo", ["rust-pure-rust", "pure-rust-pure", "rust-rust-pure", "pure-pure-rust"])
def test_encrypted_connection_through_the_relay_cross_core(combo: str, rust_core: ModuleType,
                                                           pure_core: ModuleType) -> None:
    cores = {"rust": rust_core, "pure": pure_core}
    srv, ini, acc = (cores[n] for n in combo.split("-"))
    run(lambda: _encrypted_through_relay(srv, ini, acc))


# -- the pairing transcript's comm-server side, replayed through lama's relay ---------------------

def test_transcript_replayed_through_the_relay() -> None:
    """Two scripted peers replay their side of transcript-pairing-and-chat.json through lama's
    comm server, event by event, on the transcript's own sockets (A#1..A#4, B#1..B#5): the
    registrations (with keys of ours in place of the run's, whose secrets are not recorded, and
    the real answer to our server's fresh challenge), the communication_request of each
    connection, the handover and the forwarded request to the newest spare (compared with the
    recorded text), communication_ready, the 72-byte key frames, then every message of the
    pairing and CHUM connections as an encrypted binary frame. Every message a peer received in
    the transcript arrives on the same socket, in the same order, byte for byte."""
    events = load_vectors("transcript-pairing-and-chat.json")
    keys = {p: core.box_keypair() for p in "AB"}
    recorded_key: dict[str, str] = {}
    for e in events:
        if e["layer"] == "commserver" and e["message"].get("command") == "register":
            recorded_key[e["direction"][0]] = e["message"]["publicKey"]
    swap = {recorded_key[p]: keys[p][0].hex() for p in "AB"}

    def subst(obj: Any) -> Any:
        if isinstance(obj, str):
            return swap.get(obj, obj)
        if isinstance(obj, dict):
            return {k: subst(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [subst(v) for v in obj]
        return obj

    session_key = hashlib.sha256(b"transcript relay").digest()

    def payload(m: Any) -> tuple[int, bytes]:
        if isinstance(m, dict) and "binaryBytes" in m:
            raw = bytes.fromhex(m["hexPrefix"])
            return 0, raw + bytes(m["binaryBytes"] - len(raw))
        return 1, (m if isinstance(m, str) else compact(subst(m))).encode()

    def peer_order(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The transcript logs each peer-to-peer message on both sides; where the receiving
        side's entry came first (same millisecond), it is moved after the sending one."""
        out: list[dict[str, Any]] = []
        sent: dict[str, int] = {}
        held: list[tuple[str, dict[str, Any]]] = []
        for e in evs:
            d = e["direction"]
            if e["layer"] not in ("peer-handshake", "encrypted/connection-setup", "encrypted/pairing",
                                  "encrypted/chum") or "commserver" in d:
                out.append(e)
                continue
            if "→" in d:
                k = json.dumps([e["layer"], d[0], e["message"]])
                sent[k] = sent.get(k, 0) + 1
                out.append(e)
                for item in list(held):
                    if sent.get(item[0], 0) > 0:
                        sent[item[0]] -= 1
                        out.append(item[1])
                        held.remove(item)
            else:
                k = json.dumps([e["layer"], d[2], e["message"]])
                if sent.get(k, 0) > 0:
                    sent[k] -= 1
                    out.append(e)
                else:
                    held.append((k, e))
        assert not held
        return out

    events = peer_order(events)

    async def main() -> None:
        server = await comm_server("127.0.0.1", 0, ping_interval=60.0)
        socks: dict[str, Any] = {}
        counters: dict[str, int] = {}  # per sending socket
        peer_of: dict[str, str] = {}   # a relayed socket -> the socket at the other end
        challenges: dict[str, dict[str, Any]] = {}
        received = 0
        try:
            for e in events:
                layer, d, m, conn = e["layer"], e["direction"], e.get("message"), e.get("conn")
                if conn is None or conn.startswith("commserver") or layer == "commserver-relay-setup":
                    continue
                me = conn[0]
                if conn not in socks:
                    socks[conn] = await core.ws_connect(server.url)
                t = socks[conn]
                sending = "→" in d
                if layer == "commserver" and sending:
                    if m["command"] == "authentication_response":
                        req = challenges.pop(conn)
                        plain = core.box_open_embedded(bytes.fromhex(req["challenge"]), keys[me][1],
                                                       bytes.fromhex(req["publicKey"]))
                        resp = core.box_seal_embedded(bytes(b ^ 0xFF for b in plain), keys[me][1],
                                                      bytes.fromhex(req["publicKey"]))
                        await t.send(compact({"command": "authentication_response", "response": resp.hex()}))
                    else:
                        await t.send(compact(subst(m)))
                    continue
                if layer == "commserver":
                    got = json.loads(await asyncio.wait_for(t.recv(), 10))
                    assert list(got) == list(m), (e, got)
                    if m["command"] == "authentication_request":
                        challenges[conn] = got
                    elif m["command"] == "authentication_success":
                        assert got["pingInterval"] == 60000 and got["clientIp"] == "127.0.0.1"
                    else:
                        assert got == subst(m), e
                    received += 1
                    continue
                if d == "B→commserver (relayed to peer)":
                    await t.send(compact(subst(m)))
                    counters[conn] = 1  # the initiator's frame counters (conn §2.4)
                    continue
                if d.startswith("A←B (via"):
                    got = await asyncio.wait_for(t.recv(), 10)
                    assert got == compact(subst(m)), e
                    # the request names the source; the newest B socket that sent it is the peer
                    src = max((c for c in counters if c.startswith("B") and c not in peer_of),
                              key=lambda c: int(c[2:]))
                    peer_of[conn], peer_of[src] = src, conn
                    counters[conn] = 0
                    received += 1
                    continue
                # peer-handshake and encrypted layers between the two peers
                flags, data = payload(m)
                plain_frame = layer == "peer-handshake"
                if sending:
                    if plain_frame:
                        await t.send(data.decode() if flags else data)
                    else:
                        n = counters[conn]
                        counters[conn] = n + 2
                        await t.send(core.secretbox_seal(core.frame_pad(data, flags, 0, b""),
                                                         core.session_nonce(n), session_key))
                    continue
                try:
                    got = await asyncio.wait_for(t.recv(), 10)
                except TimeoutError:
                    raise AssertionError(f"nothing arrived for {e}") from None
                assert got is not None, (e, t.close_reason)
                if plain_frame:
                    assert got == (data.decode() if flags else data), e
                else:
                    sender = peer_of[conn]
                    n = counters.setdefault(f"rx {conn}", 0 if sender.startswith("A") else 1)
                    counters[f"rx {conn}"] = n + 2
                    assert isinstance(got, bytes)
                    plain = core.secretbox_open(got, core.session_nonce(n), session_key)
                    assert core.frame_unpad(plain) == (flags, data), e
                received += 1
            assert received == sum(1 for e in events if e.get("conn", "").startswith(("A#", "B#"))
                                   and "←" in e["direction"]) == 131
            c = server.counters()
            assert c["handovers"] == 3 and c["registrations"] == 7, c
            for t in socks.values():
                await t.close()
        finally:
            await server.close()

    run(main, timeout=120)
