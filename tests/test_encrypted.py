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


# -- the recorded connections of the reference (crypto-and-frames.json) --------------------------

def whole(f: dict[str, Any], name: str) -> bytes:
    ref = f.get(f"{name}_full_ref")
    return bytes.fromhex(FULL[ref] if ref else f[f"{name}_hex"])


def payload(f: dict[str, Any]) -> bytes:
    """A frame's payload: its recorded plaintext without the padding."""
    p = whole(f, "plaintext")[f["padding"]["padding_total_len"]:]
    assert len(p) == f["payload_len"]
    return p


def padding(f: dict[str, Any]) -> tuple[int, bytes]:
    return f["padding"]["random_byte_r"], bytes.fromhex(f["padding"]["random_filler_hex"])


def app_messages(frames: list[dict[str, Any]]) -> list[str | bytes]:
    """What the application above the recorded frames received: keepalives swallowed,
    fragments reassembled (conn §2.5, §2.6)."""
    out: list[str | bytes] = []
    collecting: bytearray | None = None
    for f in frames:
        p = payload(f)
        kind = f["kind"]
        if kind == "keepalive":
            assert p == b"keepalive"
        elif kind == "fragmentation_start_string":
            collecting = bytearray()
        elif kind == "fragment":
            assert collecting is not None
            collecting += p
        elif kind == "fragmentation_end":
            assert collecting is not None
            app = f["app_message"]
            assert len(collecting) == app["reassembled_len"]
            assert hashlib.sha256(collecting).hexdigest() == app["reassembled_sha256"]
            out.append(collecting.decode("utf-8"))
            collecting = None
        else:
            out.append(p.decode("utf-8") if f["payload_is_string"] else p)
    return out


def test_recorded_frames_open_with_the_core_primitives() -> None:
    """Each recorded frame opens with the session key and its counter (not with the next one)
    and seals again, with its recorded padding, to the recorded bytes (conn §2.4)."""
    n = 0
    for conn in CONNS.values():
        key = bytes.fromhex(conn["handshake"]["session_key"])
        for frames in conn["frames"].values():
            for f in frames:
                wire = whole(f, "frame")
                nonce = core.session_nonce(f["counter"])
                plain = core.secretbox_open(wire, nonce, key)
                assert plain == whole(f, "plaintext")
                assert core.frame_unpad(plain) == (f["padding"]["flags"], payload(f))
                r, filler = padding(f)
                assert core.secretbox_seal(core.frame_pad(payload(f), f["padding"]["flags"], r, filler),
                                           nonce, key) == wire
                with pytest.raises(Exception):
                    core.secretbox_open(wire, core.session_nonce(f["counter"] + 2), key)
                n += 1
    assert n == 66


def kp(d: dict[str, str]) -> tuple[bytes, bytes]:
    return bytes.fromhex(d["publicKey"]), bytes.fromhex(d["secretKey"])


async def feed_and_check(conn: Any, peer: Any, rec: dict[str, Any], inbound: str, outbound: str,
                         outbound_values: list[str | bytes]) -> None:
    """Feed the recorded inbound frames through `peer`; the connection must deliver the
    recorded messages. Send `outbound_values` on the connection; `peer` must receive the
    recorded outbound frames, byte for byte."""
    frames_in = rec["frames"][inbound]
    for f in frames_in:
        await peer.send(whole(f, "frame"))
    expected_in = app_messages(frames_in)
    for m in expected_in:
        got = await asyncio.wait_for(conn.recv(), 10)
        assert got == m
    for m in outbound_values:
        await conn.send(m)
    for f in rec["frames"][outbound]:
        got = await asyncio.wait_for(peer.recv(), 10)
        assert got == whole(f, "frame"), f"frame with counter {f['counter']} differs"


def test_replay_of_the_recorded_pairing_connection_as_acceptor() -> None:
    """Peer A (inviter, acceptor) of the recorded `pairing` connection, with its recorded
    instance and ephemeral keys: the recorded frames of B open to B's messages (keepalives
    swallowed); A's messages with the recorded padding are the recorded frames, and so are
    its two keepalives (sent by the timer after `keepalive` seconds without output)."""
    rec = CONNS["pairing"]
    assert rec["acceptor"]["peer"] == "A"
    out_frames = rec["frames"]["A->B"]
    out_values = [m for m in app_messages(out_frames)]
    assert [f["kind"] for f in out_frames[-2:]] == ["keepalive", "keepalive"]

    async def main() -> None:
        peer, mine = core.memory_pair()
        accept = asyncio.ensure_future(core.encrypted_accept(
            mine, [kp(rec["acceptor"]["instance_keypair"])], keepalive=1.0,
            _ephemeral=kp(rec["acceptor"]["ephemeral_keypair"]),
            _padding=[padding(f) for f in out_frames]))
        await peer.send(rec["plaintext_prelude"]["B"][0]["text"])
        assert await peer.recv() == rec["plaintext_prelude"]["B"][1]["text"] == '{"command":"communication_ready"}'
        await peer.send(bytes.fromhex(rec["handshake"]["frame1_initiator_to_acceptor"]["hex"]))
        frame2 = await peer.recv()
        assert isinstance(frame2, bytes) and len(frame2) == 72
        hs_key = bytes.fromhex(rec["handshake"]["handshake_key"])
        assert core.secretbox_open_embedded(frame2, hs_key).hex() == \
            rec["handshake"]["frame2_acceptor_to_initiator"]["decrypted_ephemeral_public_key"]
        conn = await accept
        assert conn.remote_key.hex() == rec["initiator"]["instance_keypair"]["publicKey"]
        t0 = asyncio.get_running_loop().time()
        await feed_and_check(conn, peer, rec, "B->A", "A->B", out_values)
        # two keepalives, each after a second without output
        assert asyncio.get_running_loop().time() - t0 >= 1.9
        await peer.close("done")
        assert await conn.recv() is None
        assert conn.close_reason == "done"
        s = conn.stats()
        assert s["messages_received"] == len(app_messages(rec["frames"]["B->A"]))
        assert s["messages_sent"] == len(out_values)

    run(main)


def test_replay_of_the_recorded_chum_connection_as_initiator() -> None:
    """Peer A (initiator) of the recorded `chum` connection, over a WebSocket to a scripted
    acceptor that answers with the recorded frames: the communication_request is the recorded
    JSON, B's frames open to B's messages; A's first 20 messages, then (after 26 unrecorded
    ones) the recorded message, the 72 KiB message fragmented into the recorded four frames
    and the next message are the recorded bytes."""
    rec = CONNS["chum"]
    assert rec["initiator"]["peer"] == "A"
    out_frames = rec["frames"]["A->B"]
    counters = [f["counter"] for f in out_frames]
    assert counters[:20] == list(range(1, 41, 2)) and counters[20:] == list(range(93, 105, 2))
    gap = (93 - 41) // 2  # the frames 41, 43, ..., 91 were not recorded
    values = app_messages(out_frames)
    assert isinstance(values[21], str) and len(values[21].encode()) == 73965
    out_values = values[:20] + [f"unrecorded {i}" for i in range(gap)] + values[20:]
    pads = [padding(f) for f in out_frames[:20]] + [(0, b"")] * gap + [padding(f) for f in out_frames[20:]]

    async def main() -> None:
        listener = await core.ws_listen("127.0.0.1", 0)
        try:
            connect = asyncio.ensure_future(core.encrypted_connect(
                f"ws://127.0.0.1:{listener.port}", *kp(rec["initiator"]["instance_keypair"]),
                bytes.fromhex(rec["acceptor"]["instance_keypair"]["publicKey"]),
                _ephemeral=kp(rec["initiator"]["ephemeral_keypair"]), _padding=pads))
            peer = await listener.accept()
        finally:
            await listener.close()
        assert await peer.recv() == rec["plaintext_prelude"]["A"][0]["text"]
        await peer.send('{"command":"communication_ready"}')
        frame1 = await peer.recv()
        hs_key = bytes.fromhex(rec["handshake"]["handshake_key"])
        assert core.secretbox_open_embedded(frame1, hs_key).hex() == \
            rec["handshake"]["frame1_initiator_to_acceptor"]["decrypted_ephemeral_public_key"]
        await peer.send(bytes.fromhex(rec["handshake"]["frame2_acceptor_to_initiator"]["hex"]))
        conn = await connect
        await feed_and_check(conn, peer, {"frames": {"B->A": rec["frames"]["B->A"], "A->B": out_frames[:20]}},
                             "B->A", "A->B", out_values[:20])
        for m in out_values[20:]:
            await conn.send(m)
        for _ in range(gap):
            assert isinstance(await peer.recv(), bytes)
        for f in out_frames[20:]:
            assert await asyncio.wait_for(peer.recv(), 10) == whole(f, "frame"), f["counter"]
        await conn.close()
        assert await peer.recv() is None
        assert peer.close_reason == "Close called."

    run(main)


def test_replay_of_the_recorded_pairing_connection_as_initiator() -> None:
    """Peer B (invitee, initiator) of the recorded `pairing` connection, over a WebSocket to a
    scripted acceptor A: B's request is the recorded JSON, its key frame opens to its recorded
    ephemeral key, A's recorded frames (keepalives included) open to A's messages, and B's
    messages with the recorded padding, then its two keepalives from the timer, are the
    recorded B->A frames byte for byte."""
    rec = CONNS["pairing"]
    assert rec["initiator"]["peer"] == "B"
    out_frames = rec["frames"]["B->A"]
    assert [f["kind"] for f in out_frames[-2:]] == ["keepalive", "keepalive"]

    async def main() -> None:
        listener = await core.ws_listen("127.0.0.1", 0)
        try:
            connect = asyncio.ensure_future(core.encrypted_connect(
                f"ws://127.0.0.1:{listener.port}", *kp(rec["initiator"]["instance_keypair"]),
                bytes.fromhex(rec["acceptor"]["instance_keypair"]["publicKey"]), keepalive=1.0,
                _ephemeral=kp(rec["initiator"]["ephemeral_keypair"]),
                _padding=[padding(f) for f in out_frames]))
            peer = await listener.accept()
        finally:
            await listener.close()
        assert await peer.recv() == rec["plaintext_prelude"]["B"][0]["text"]
        await peer.send(rec["plaintext_prelude"]["B"][1]["text"])
        frame1 = await peer.recv()
        assert isinstance(frame1, bytes) and len(frame1) == 72
        hs_key = bytes.fromhex(rec["handshake"]["handshake_key"])
        assert core.secretbox_open_embedded(frame1, hs_key).hex() == \
            rec["handshake"]["frame1_initiator_to_acceptor"]["decrypted_ephemeral_public_key"]
        await peer.send(bytes.fromhex(rec["handshake"]["frame2_acceptor_to_initiator"]["hex"]))
        conn = await connect
        assert conn.initiator and conn.remote_key.hex() == rec["acceptor"]["instance_keypair"]["publicKey"]
        await feed_and_check(conn, peer, rec, "A->B", "B->A", app_messages(out_frames))
        await peer.close("done")
        assert await conn.recv() is None
        assert conn.close_reason == "done"
        s = conn.stats()
        assert s["messages_received"] == len(app_messages(rec["frames"]["A->B"]))
        assert s["messages_sent"] == len(app_messages(out_frames))

    run(main)


def test_replay_of_the_recorded_chum_connection_as_acceptor() -> None:
    """Peer B (acceptor) of the recorded `chum` connection: A's recorded frames open to A's
    messages and the recorded fragmented message (fragmentation_start_string, 65536 + 8429
    bytes, fragmentation_end) is reassembled to the recorded 73,965-byte string; the 26 frames
    A sent between them were not recorded, so the scripted A sends keepalives sealed with the
    session key at those counters. B's 20 messages with the recorded padding are the recorded
    B->A frames byte for byte."""
    rec = CONNS["chum"]
    assert rec["acceptor"]["peer"] == "B"
    in_frames = rec["frames"]["A->B"]
    out_frames = rec["frames"]["B->A"]
    key = bytes.fromhex(rec["handshake"]["session_key"])
    counters = [f["counter"] for f in in_frames]
    assert counters[:20] == list(range(1, 41, 2)) and counters[20] == 93
    end = next(f for f in in_frames if f["kind"] == "fragmentation_end")["app_message"]

    async def main() -> None:
        peer, mine = core.memory_pair()
        accept = asyncio.ensure_future(core.encrypted_accept(
            mine, [kp(rec["acceptor"]["instance_keypair"])],
            _ephemeral=kp(rec["acceptor"]["ephemeral_keypair"]),
            _padding=[padding(f) for f in out_frames]))
        await peer.send(rec["plaintext_prelude"]["A"][0]["text"])
        assert await peer.recv() == '{"command":"communication_ready"}'
        await peer.send(bytes.fromhex(rec["handshake"]["frame1_initiator_to_acceptor"]["hex"]))
        frame2 = await peer.recv()
        assert isinstance(frame2, bytes) and len(frame2) == 72
        assert core.secretbox_open_embedded(frame2, bytes.fromhex(rec["handshake"]["handshake_key"])).hex() == \
            rec["handshake"]["frame2_acceptor_to_initiator"]["decrypted_ephemeral_public_key"]
        conn = await accept
        assert not conn.initiator
        filler = [core.secretbox_seal(core.frame_pad(b"keepalive", 1, 0, b""), core.session_nonce(c), key)
                  for c in range(41, 93, 2)]
        wires = [whole(f, "frame") for f in in_frames]
        for w in wires[:20] + filler + wires[20:]:
            await peer.send(w)
        expected = app_messages(in_frames)
        assert len(expected) == 23
        for m in expected:
            got = await asyncio.wait_for(conn.recv(), 10)
            assert got == m
        big = expected[21]
        assert isinstance(big, str) and len(big.encode()) == end["reassembled_len"] == 73965
        assert hashlib.sha256(big.encode()).hexdigest() == end["reassembled_sha256"]
        for m in app_messages(out_frames):
            await conn.send(m)
        for f in out_frames:
            assert await asyncio.wait_for(peer.recv(), 10) == whole(f, "frame"), f["counter"]
        await conn.close()
        assert await peer.recv() is None
        assert peer.close_reason == "Close called."

    run(main)


# -- a relay in the middle: tampered, replayed, reordered, truncated, dropped frames -----------

async def relay(src: Any, dst: Any, mutate: Callable[[str | bytes], list[str | bytes]]) -> None:
    """Forward src -> dst through `mutate` until src closes, then close dst with src's reason
    (as the comm server's relay does, conn §3.3)."""
    while True:
        m = await src.recv()
        if m is None:
            await dst.close(src.close_reason or "")
            return
        try:
            for out in mutate(m):
                await dst.send(out)
        except TransportError:
            await src.close(dst.close_reason or "")
            return


def after_handshake(at: int, action: str) -> Callable[[str | bytes], list[str | bytes]]:
    """A mutation of the initiator's frames: binary frame 0 is its key frame, 1.. the
    encrypted messages; `action` applies to encrypted frame `at`."""
    state: dict[str, Any] = {"n": -1, "held": None}

    def mutate(m: str | bytes) -> list[str | bytes]:
        if isinstance(m, str):
            return [m]
        state["n"] += 1
        n = state["n"]
        if n == at:
            if action == "tamper":
                return [m[:20] + bytes([m[20] ^ 1]) + m[21:]]
            if action == "truncate":
                return [m[:-1]]
            if action == "drop":
                return []
            if action == "replay":
                return [m, m]
            if action == "reorder":
                state["held"] = m
                return []
            if action == "text":
                return ["hello"]
            if action == "short":
                return [m[:10]]
        if action == "reorder" and n == at + 1:
            return [m, state["held"]]
        return [m]

    return mutate


async def relayed_pair(mutate: Callable[[str | bytes], list[str | bytes]], client_kw: dict[str, Any] | None = None,
                       server_kw: dict[str, Any] | None = None, c: ModuleType = core) -> tuple[Any, Any, list[Any]]:
    listener = await c.ws_listen("127.0.0.1", 0)
    try:
        connect = asyncio.ensure_future(c.encrypted_connect(f"ws://127.0.0.1:{listener.port}", A[0], A[1], B[0],
                                                            **(client_kw or {})))
        outer = await listener.accept()
    finally:
        await listener.close()
    m1, m2 = c.memory_pair()
    tasks = [asyncio.ensure_future(relay(outer, m1, mutate)),
             asyncio.ensure_future(relay(m1, outer, lambda m: [m]))]
    b = await c.encrypted_accept(m2, [B], **(server_kw or {}))
    a = await connect
    return a, b, tasks


@pytest.mark.parametrize("action", ["tamper", "truncate", "drop", "replay", "reorder", "short"])
def test_a_bad_frame_closes_the_connection(action: str) -> None:
    async def main() -> None:
        a, b, tasks = await relayed_pair(after_handshake(3, action))
        msgs = [f"m{i}" for i in range(6)]
        for m in msgs:
            await a.send(m)
        got = []
        for _ in range(10):
            m = await asyncio.wait_for(b.recv(), 10)
            if m is None:
                break
            got.append(m)
        # the frames before the bad one arrived (a replayed frame arrived once)
        assert got == msgs[:len(got)] and len(got) in (2, 3)
        assert b.close_reason == "Close called: Decryption of message failed."
        assert await asyncio.wait_for(a.recv(), 10) is None
        assert a.close_reason == "Close called: Decryption of message failed."
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    run(main)


def test_a_text_frame_after_the_handshake_closes_the_connection() -> None:
    async def main() -> None:
        a, b, tasks = await relayed_pair(after_handshake(2, "text"))
        for m in ["one", "two", "three"]:
            await a.send(m)
        assert await b.recv() == "one"
        assert await asyncio.wait_for(b.recv(), 10) is None
        reason = "Close called: Incoming encrypted message is a string, it needs to be binary"
        assert b.close_reason == reason
        assert await asyncio.wait_for(a.recv(), 10) is None
        assert a.close_reason == reason
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    run(main)


@pytest.mark.parametrize("what", ["key frame", "request", "binary request", "ready"])
def test_a_broken_handshake_fails_with_handshake_error(what: str) -> None:
    async def main() -> None:
        if what == "key frame":
            # the initiator's key frame altered: the acceptor cannot open it
            a_task = asyncio.ensure_future(relayed_pair(after_handshake(0, "tamper")))
            with pytest.raises(TransportError) as e:
                await asyncio.wait_for(a_task, 20)
            assert e.value.code == "LAMA-NET-HANDSHAKE"
            return
        peer, mine = core.memory_pair()
        if what == "ready":
            listener = await core.ws_listen("127.0.0.1", 0)
            try:
                connect = asyncio.ensure_future(core.encrypted_connect(
                    f"ws://127.0.0.1:{listener.port}", A[0], A[1], B[0]))
                raw = await listener.accept()
            finally:
                await listener.close()
            assert json.loads(await raw.recv())["command"] == "communication_request"
            await raw.send('{"command":"something_else"}')
            with pytest.raises(TransportError) as e:
                await asyncio.wait_for(connect, 10)
            assert e.value.code == "LAMA-NET-HANDSHAKE"
            assert await raw.recv() is None
            assert raw.close_reason.startswith("Close called: Error: ")
            return
        accept = asyncio.ensure_future(core.encrypted_accept(mine, [B]))
        if what == "request":
            await peer.send('{"command":"communication_request","sourcePublicKey":"00","targetPublicKey":"11"}')
        else:
            await peer.send(b"\x00" * 72)
        with pytest.raises(TransportError) as e:
            await asyncio.wait_for(accept, 10)
        assert e.value.code == "LAMA-NET-HANDSHAKE"
        assert await peer.recv() is None
        assert peer.close_reason.startswith("Close called: Error: ")

    run(main)


def test_the_handshake_times_out() -> None:
    async def main() -> None:
        peer, mine = core.memory_pair()
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(TransportError) as e:
            await core.encrypted_accept(mine, [B], timeout=0.3)
        assert e.value.code == "LAMA-NET-HANDSHAKE"
        assert 0.25 <= asyncio.get_running_loop().time() - t0 < 5
        assert await peer.recv() is None
        assert peer.close_reason == "Close called: Error: handshake timed out"

    run(main)


# -- keepalive (conn §2.5) ---------------------------------------------------------------------

def test_a_silent_peer_is_dropped() -> None:
    """Everything the initiator sends after its key frame is swallowed by the relay: the
    acceptor hears nothing, terminates after dead_after, and the reason reaches both sides."""
    swallow: dict[str, int] = {"n": -1}

    def mutate(m: str | bytes) -> list[str | bytes]:
        if isinstance(m, bytes):
            swallow["n"] += 1
            if swallow["n"] >= 1:
                return []
        return [m]

    async def main() -> None:
        a, b, tasks = await relayed_pair(mutate, client_kw={"keepalive": 0.1},
                                         server_kw={"keepalive": 0.1, "dead_after": 0.5})
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(b.recv(), 10) is None
        assert 0.4 <= asyncio.get_running_loop().time() - t0 < 5
        reason = "Terminate called: Keepalive: No lifesign of the other side"
        assert b.close_reason == reason
        assert await asyncio.wait_for(a.recv(), 10) is None
        assert a.close_reason == reason
        await asyncio.wait_for(asyncio.gather(*tasks), 10)

    run(main)


def test_an_idle_connection_with_keepalives_stays_up() -> None:
    async def main() -> None:
        kw = {"keepalive": 0.2, "dead_after": 0.5}
        a, b = await pair(client_kw=kw, server_kw=kw)
        before = a.stats(), b.stats()
        await asyncio.sleep(2.0)
        assert a.close_reason is None and b.close_reason is None
        after = a.stats(), b.stats()
        # keepalives went both ways (about ten each, a frame of at least 16 + 1 + 9 bytes),
        # none reached the application
        for x, y in zip(before, after):
            assert x["messages_sent"] == y["messages_sent"] == 0
            assert x["messages_received"] == y["messages_received"] == 0
            assert y["bytes_sent"] - x["bytes_sent"] >= 5 * 26
            assert y["bytes_received"] - x["bytes_received"] >= 5 * 26
        await a.send("still here")
        assert await b.recv() == "still here"
        await b.send("me too")
        assert await a.recv() == "me too"
        await a.close()
        assert await b.recv() is None

    run(main)


def test_a_peer_whose_keepalives_stop_is_dropped_while_we_keep_sending() -> None:
    """Our own output does not keep the connection alive: only input does (conn §2.5)."""
    async def main() -> None:
        a, b = await pair(client_kw={"keepalive": 60.0}, server_kw={"keepalive": 0.1, "dead_after": 0.6})
        # a sends nothing (its keepalive is a minute): b drops it although b keeps sending
        t0 = asyncio.get_running_loop().time()
        for _ in range(100):
            if b.close_reason is not None:
                break
            try:
                await b.send("ping")
            except TransportError:
                break
            await asyncio.sleep(0.05)
        assert b.close_reason == "Terminate called: Keepalive: No lifesign of the other side"
        assert asyncio.get_running_loop().time() - t0 < 5
        for _ in range(200):
            if await asyncio.wait_for(a.recv(), 10) is None:
                break
        assert a.close_reason == b.close_reason

    run(main)


# -- size ---------------------------------------------------------------------------------------

def test_five_mib_both_ways() -> None:
    big_a = bytes(range(256)) * (5 * 4096)
    big_b = "€" * (5 * 1024 * 1024 // 3)

    async def main() -> None:
        a, b = await pair()

        async def side(t: Any, out: str | bytes, expect: str | bytes) -> None:
            send = asyncio.ensure_future(t.send(out))
            assert await t.recv() == expect
            await send

        await asyncio.gather(side(a, big_a, big_b), side(b, big_b, big_a))
        sa = a.stats()
        # 81 frames of at most 64 KiB + padding and tag (the fragmentation, conn §2.6)
        assert len(big_a) < sa["bytes_sent"] < len(big_a) + 83 * (16 + 256) + 1000
        await a.close()

    run(main, timeout=120)


def test_reassembly_beyond_max_message_closes() -> None:
    async def main() -> None:
        a, b = await pair(server_kw={"max_message": 100_000})
        await a.send(b"\x01" * 50_000)
        assert await b.recv() == b"\x01" * 50_000
        await a.send(b"\x02" * 200_000)
        assert await asyncio.wait_for(b.recv(), 10) is None
        reason = "Close called: LAMA-NET-SIZE: message exceeds the limit of 100000 bytes"
        assert b.close_reason == reason
        assert await asyncio.wait_for(a.recv(), 10) is None
        assert a.close_reason == reason
        # a message above our own limit is refused on send
        c, d = await pair(client_kw={"max_message": 1000})
        with pytest.raises(TransportError) as e:
            await c.send(b"x" * 1001)
        assert e.value.code == "LAMA-NET-SIZE"
        assert await asyncio.wait_for(d.recv(), 10) is None
        assert d.close_reason == "Close called: LAMA-NET-SIZE: message exceeds the limit of 1000 bytes"

    run(main)


# -- a CHUM session over an encrypted connection ----------------------------------------------

def chum_over_encrypted(tmp_path: Any, cores: tuple[ModuleType, ModuleType]) -> None:
    """Two stores sync with CHUM sessions (issue 8) running in `spawn_session` over an encrypted
    connection, unchanged: each side its own core's store, session, connection and driver."""
    from chum_graph import Chat, deterministic_bytes, person_id, register_recipes, texts
    from lama import _pure
    from lama.chum import SyncResult, handle_event

    register_recipes()
    if cores[0] is not cores[1] or cores[0] is _pure:
        from chum_graph import DOC_RECIPE, NOTE_RECIPE
        from lama.objects.recipes import normalize

        for r in (NOTE_RECIPE, DOC_RECIPE):
            if r["name"] not in _pure.recipe_names():
                _pure.register_recipe(json.dumps(normalize(r), ensure_ascii=False))

    a = cores[0].Store(str(tmp_path / "a"))
    b = cores[1].Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    chat.post("one")
    data = deterministic_bytes(300_000)
    chat.post("file", attachments=[chat.attach_blob(data)])

    async def side(c: ModuleType, store: Any, t: Any, me: str, peer: str) -> SyncResult:
        task = c.spawn_session(c.ChumSession(store, me, peer, fast_path=True), t, store=store)
        result = SyncResult()
        for _ in range(1_000_000):
            events = await task.events()
            if events is None:
                break
            for kind, ev in events:
                handle_event(store, kind, ev, result)
        result.stats = await task.wait()
        return result

    async def main() -> tuple[Any, Any, Any, Any]:
        ta, tb = await pair(cores[0], cores[1])
        ra, rb = await asyncio.gather(side(cores[0], a, ta, pa, pb), side(cores[1], b, tb, pb, pa))
        return ra, rb, ta, tb

    ra, rb, ta, tb = run(main, timeout=120)
    assert ta.close_reason == tb.close_reason == "Close called: chum finished"
    for r in (ra, rb):
        assert r.reason == "chum finished", r.reason
        assert [e for e in r.errors if e["fatal"]] == []
    assert texts(b, chat.ci) == ["file", "one"]
    assert b.read_blob(_pure.sha256_hex(data)) == data
    assert sorted(ra.log["AtoBObjects"]) == sorted(rb.log["BtoAObjects"])
    assert ta.stats()["messages_sent"] == tb.stats()["messages_received"] > 0
    assert a.verify() == [] and b.verify() == []
    a.close()
    b.close()


def test_chum_session_over_an_encrypted_connection(tmp_path: Any) -> None:
    chum_over_encrypted(tmp_path, (core, core))


@pytest.mark.cross_core
@pytest.mark.parametrize("rust_side", [0, 1])
def test_chum_session_over_an_encrypted_connection_rust_and_pure(tmp_path: Any, rust_core: ModuleType,
                                                                 pure_core: ModuleType, rust_side: int) -> None:
    chum_over_encrypted(tmp_path, (rust_core, pure_core) if rust_side == 0 else (pure_core, rust_core))


# -- through a comm server (conn §3.3, §4.2) ----------------------------------------------------

async def through_comm_server(server_core: ModuleType, client_core: ModuleType, listen_core: ModuleType) -> None:
    server = await server_core.comm_server("127.0.0.1", 0)
    try:
        listener = await listen_core.comm_listen(server.url, B[0], B[1], spares=2)
        try:
            assert listener.state == "listening"

            async def accept() -> Any:
                return await listen_core.encrypted_accept(await listener.accept(), [B])

            a, b = await asyncio.gather(client_core.encrypted_connect(server.url, A[0], A[1], B[0]), accept())
            assert (a.remote_key, b.remote_key) == (B[0], A[0])
            big = bytes(range(256)) * 1024
            for m in ["hello", b"bin", big, "keepalive"]:
                await a.send(m)
                assert await b.recv() == m
                await b.send(m)
                assert await a.recv() == m
            assert server.counters()["handovers"] == 1
            await a.close("over")
            assert await b.recv() is None
            assert a.close_reason == b.close_reason == "Close called: over"
            # no spare for a key nobody listens with: the server refuses
            with pytest.raises(TransportError) as e:
                await client_core.encrypted_connect(server.url, A[0], A[1], keypair("nobody")[0])
            assert e.value.code == "LAMA-NET-REFUSED"
            assert "No listening connection for the specified publicKey." in str(e.value)
            # a spare whose owner does not have the target key refuses after communication_ready
            other = keypair("other listener")
            wrong = await listen_core.comm_listen(server.url, other[0], other[1], spares=1)
            try:
                async def accept_wrong() -> Any:
                    return await listen_core.encrypted_accept(await wrong.accept(), [B])

                res = await asyncio.gather(client_core.encrypted_connect(server.url, A[0], A[1], other[0]),
                                           accept_wrong(), return_exceptions=True)
                assert [getattr(r, "code", r) for r in res] == ["LAMA-NET-REFUSED", "LAMA-NET-REFUSED"]
            finally:
                await wrong.close()
        finally:
            await listener.close()
    finally:
        await server.close()


def test_through_a_comm_server() -> None:
    run(lambda: through_comm_server(core, core, core))


@pytest.mark.cross_core
@pytest.mark.parametrize("rust_server", [True, False])
def test_through_a_comm_server_rust_and_pure(rust_core: ModuleType, pure_core: ModuleType, rust_server: bool) -> None:
    """Server of one core; initiator and listening acceptor of the other, then the reverse."""
    s, o = (rust_core, pure_core) if rust_server else (pure_core, rust_core)
    run(lambda: through_comm_server(s, o, s))
    run(lambda: through_comm_server(s, s, o))
