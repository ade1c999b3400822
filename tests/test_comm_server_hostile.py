"""Bad input against a comm server in its own process (issue 9, "Bad input": garbage, oversized
frames, never-authenticating sockets, slow readers and slow senders, wrong challenge answers,
replayed frames — refused, memory bounded, server stays up; docs/connections.md §2a).

All of it at once, from many sockets, while a well-behaved listener and initiator use the same
server: every bad socket is closed by the server within its limits, the good relay keeps
working during and after the attack, the server's RSS stays bounded and nothing is left open.
Everything listens on 127.0.0.1 only; every wait is bounded in time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import load_vectors
from lama._core import comm_listen, core

SERVER = textwrap.dedent("""
    import asyncio, json, sys
    from lama._core import core

    async def main():
        srv = await core.comm_server("127.0.0.1", 0, auth_timeout=2.0, max_message=65536,
                                     max_spares_per_address=1000)
        print(srv.url, flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "counters":
            print(json.dumps(srv.counters()), flush=True)
        await srv.close()

    asyncio.run(main())
""")

ROOT = Path(__file__).resolve().parent.parent
AUTH_TIMEOUT = 2.0
MAX_MESSAGE = 65536
N = 40  # sockets of each kind


class Server:
    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
        self.p = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        assert self.p.stdout is not None
        self.url = self.p.stdout.readline().strip()
        assert self.url.startswith("ws://"), self.url
        self.port = int(self.url.rsplit(":", 1)[1])

    def counters(self) -> dict[str, int]:
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("counters\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        assert self.p.stdin is not None
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(30)
        except Exception:
            self.p.kill()
            self.p.wait()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read until the server closes the TCP connection; what it sent. A reset counts as the
    server closing: a socket closed with the client's bytes still unread (a slow sender still
    trickling) ends with an RST instead of a FIN."""
    out = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                out += chunk
        except ConnectionResetError:
            pass
    return out


async def ws_handshake(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A WebSocket opened by hand (RFC 6455 §4.1), so the frames after it can be malformed.
    `None` if the server closed the socket before answering (its handshake counts towards
    auth_timeout: on a loaded host a few of many simultaneous handshakes end that way)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    except asyncio.IncompleteReadError:
        writer.close()
        return None
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def frame_header(opcode: int, length: int, mask: bytes = b"\x01\x02\x03\x04") -> bytes:
    """A client frame header (masked) announcing `length` payload bytes."""
    if length < 126:
        return bytes([0x80 | opcode, 0x80 | length]) + mask
    if length < 1 << 16:
        return bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big") + mask
    return bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big") + mask


async def tcp_garbage(port: int, i: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(os.urandom(512) if i % 2 else b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await closed_by_server(reader, 15)
    writer.close()


async def ws_garbage_frames(port: int, i: int) -> None:
    """After a valid WebSocket handshake: an unmasked frame, a reserved opcode, or random bytes."""
    opened = await ws_handshake(port)
    if opened is None:
        return
    reader, writer = opened
    bad = [b"\x81\x05hello", bytes([0x83, 0x80]) + b"\0\0\0\0", os.urandom(300)][i % 3]
    writer.write(bad)
    await closed_by_server(reader, 15)
    writer.close()


async def ws_garbage_message(url: str, i: int) -> None:
    t = await core.ws_connect(url)
    await t.send(os.urandom(100) if i % 2 else "{\"command\":" + "x" * 50)
    assert await asyncio.wait_for(t.recv(), 15) is None
    assert t.close_reason is not None and t.close_reason.startswith("Close called: Received"), t.close_reason


async def oversized(url: str) -> None:
    t = await core.ws_connect(url)
    await t.send(b"o" * (MAX_MESSAGE + 1))
    assert await asyncio.wait_for(t.recv(), 15) is None
    assert t.close_reason == f"LAMA-NET-SIZE: message exceeds the limit of {MAX_MESSAGE} bytes"


async def never_authenticates(url: str) -> None:
    t = await core.ws_connect(url)
    t0 = time.monotonic()
    assert await asyncio.wait_for(t.recv(), 15) is None
    assert t.close_reason == "Close called: Authentication timed out."
    assert time.monotonic() - t0 < AUTH_TIMEOUT + 5


async def slow_sender(port: int) -> None:
    """Announces a 60,000-byte frame and sends a byte every 50 ms: closed at auth_timeout,
    not after the frame (which would take 50 minutes)."""
    opened = await ws_handshake(port)
    if opened is None:
        return
    reader, writer = opened
    writer.write(frame_header(0x1, 60000))
    t0 = time.monotonic()

    async def trickle() -> None:
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(trickle())
    try:
        await closed_by_server(reader, 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        writer.close()
    assert time.monotonic() - t0 < AUTH_TIMEOUT + 5


async def wrong_answer(url: str, i: int, recorded_response: str) -> None:
    """Registers and answers with the challenge itself, random bytes, or the recorded
    (replayed) authentication_response of the reference run."""
    pk, _ = core.box_keypair()
    t = await core.ws_connect(url)
    await t.send(json.dumps({"command": "register", "publicKey": pk.hex()}))
    req = json.loads(await asyncio.wait_for(t.recv(), 15))
    answer = [req["challenge"], os.urandom(104).hex(), recorded_response][i % 3]
    await t.send(json.dumps({"command": "authentication_response", "response": answer}))
    assert await asyncio.wait_for(t.recv(), 15) is None
    assert t.close_reason == "Close called: Client authentication failed."


async def replayed_registration(url: str) -> None:
    """The reference run's registration of its listener key, replayed word for word: the
    server's challenge is fresh, so the recorded answer does not authenticate."""
    v = load_vectors("crypto-and-frames.json")["commserver-auth"]
    t = await core.ws_connect(url)
    await t.send(v["wire"][0]["text"])
    req = json.loads(await asyncio.wait_for(t.recv(), 15))
    assert req["challenge"] != json.loads(v["wire"][1]["text"])["challenge"]
    await t.send(v["wire"][2]["text"])
    assert await asyncio.wait_for(t.recv(), 15) is None
    assert t.close_reason == "Close called: Client authentication failed."


def test_hostile_clients_are_refused_and_the_server_stays_up() -> None:
    server = Server()
    recorded_response = json.loads(load_vectors("crypto-and-frames.json")["commserver-auth"]["wire"][2]["text"])[
        "response"]
    try:
        base_kb = server.rss_kb()

        async def main() -> int:
            pk, sk = core.box_keypair()
            listener = await comm_listen(server.url, pk, sk, spares=2, reconnect_delay=0.2)
            try:
                for _ in range(500):
                    if listener.state == "listening":
                        break
                    await asyncio.sleep(0.02)
                assert listener.state == "listening"

                async def good_relay(rounds: int) -> None:
                    """A well-behaved pair: request, handover, messages both ways."""
                    for r in range(rounds):
                        ini = await core.ws_connect(server.url)
                        await ini.send(json.dumps({"command": "communication_request",
                                                   "sourcePublicKey": pk.hex(), "targetPublicKey": pk.hex()}))
                        acc = await asyncio.wait_for(listener.accept(), 15)
                        assert json.loads(await asyncio.wait_for(acc.recv(), 15))["command"] == "communication_request"
                        for k in range(20):
                            await ini.send(f"{r}/{k}".encode() * 100)
                            assert await asyncio.wait_for(acc.recv(), 15) == f"{r}/{k}".encode() * 100
                            await acc.send(f"back {r}/{k}")
                            assert await asyncio.wait_for(ini.recv(), 15) == f"back {r}/{k}"
                        await ini.close("done")
                        assert await asyncio.wait_for(acc.recv(), 15) is None
                        await asyncio.sleep(0.05)

                # a relayed pair whose acceptor never reads while the initiator floods: the
                # initiator's sends stop completing once the bounded buffers are full
                ini = await core.ws_connect(server.url, max_message=MAX_MESSAGE)
                await ini.send(json.dumps({"command": "communication_request", "sourcePublicKey": pk.hex(),
                                           "targetPublicKey": pk.hex()}))
                stuck_acc = await asyncio.wait_for(listener.accept(), 15)
                flooded = 0

                async def flood() -> None:
                    nonlocal flooded
                    for _ in range(10_000):  # 640 MiB if nothing held it back
                        await ini.send(b"f" * MAX_MESSAGE)
                        flooded += 1

                flooder = asyncio.ensure_future(flood())
                attack = [tcp_garbage(server.port, i) for i in range(N)]
                attack += [ws_garbage_frames(server.port, i) for i in range(N)]
                attack += [ws_garbage_message(server.url, i) for i in range(N)]
                attack += [oversized(server.url) for _ in range(N // 2)]
                attack += [never_authenticates(server.url) for _ in range(N)]
                attack += [slow_sender(server.port) for _ in range(N // 2)]
                attack += [wrong_answer(server.url, i, recorded_response) for i in range(N // 2)]
                attack += [replayed_registration(server.url) for _ in range(3)]
                peak = 0

                async def sample() -> None:
                    nonlocal peak
                    while True:
                        peak = max(peak, server.rss_kb())
                        await asyncio.sleep(0.1)

                sampler = asyncio.ensure_future(sample())
                # the good pair works while the attack runs, and after it
                await asyncio.gather(good_relay(3), *attack)
                await good_relay(2)
                last = -1
                while flooded != last:
                    last = flooded
                    await asyncio.sleep(0.5)
                assert not flooder.done(), "the flood was not held back"
                assert flooded * MAX_MESSAGE < 64 * 2**20, f"{flooded} frames of 64 KiB accepted"
                first = json.loads(await asyncio.wait_for(stuck_acc.recv(), 15))
                assert first["command"] == "communication_request"
                assert await asyncio.wait_for(stuck_acc.recv(), 15) == b"f" * MAX_MESSAGE
                flooder.cancel()
                await asyncio.gather(flooder, return_exceptions=True)
                await ini.close()
                await stuck_acc.close()
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                return peak
            finally:
                await listener.close()

        peak = asyncio.run(asyncio.wait_for(main(), 120))
        assert server.p.poll() is None, "the server process died"
        # every bad socket is gone; what is left is at most the listener's replacement spares
        # being closed
        t0 = time.monotonic()
        while (c := server.counters())["open"] > 0 and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert c["open"] == 0, c
        assert c["malformed"] >= N and c["oversized"] >= N // 2, c
        assert c["auth_timeouts"] >= N, c
        assert c["auth_failures"] >= N // 2 + 3, c
        assert c["handovers"] >= 6, c
        # bounded: the flood and about 260 bad sockets at once cost the server little
        assert peak - base_kb < 96 * 1024, f"server RSS grew by {(peak - base_kb) / 1024:.0f} MiB"
    finally:
        server.stop()
