"""Every recorded value of sections ``commserver-auth``, ``encrypted-connection`` and
``person-proof`` of tests/vectors/crypto-and-frames.json (and its full-frames file) recomputed
with the core's primitives (issue 9, "Frames match the reference"; the README of the vectors,
§3-§5, says what a test should do with each).

The connections themselves replay the recorded frames in tests/test_encrypted.py (both peers of
both connections: what a connection receives and what it sends); here each value is checked on
its own, so a wrong field names itself: key pairs, box.before keys, the handshake frames re-made
with their recorded nonces, each frame's nonce, lengths, padding header, payload and decoded
message, the reassembled fragmented message, and the person-key proof against the frames of
section 4 that carried it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from conftest import load_vectors
from lama._core import core

VECTORS = load_vectors("crypto-and-frames.json")
FULL = load_vectors("crypto-and-frames.full-frames.json")["full"]
CONNS = {c["name"]: c for c in VECTORS["encrypted-connection"]["connections"]}
MARKERS = {"fragmentation_start_string", "fragmentation_start_binary", "fragmentation_end"}


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def whole(d: dict[str, Any], name: str) -> bytes:
    """A recorded value in full: inline hex, or (over 4 KiB) its full-frames entry, whose
    recorded length, SHA-256 and prefix must agree with what the main file keeps."""
    ref = d.get(f"{name}_full_ref")
    if ref is None:
        return h(d[f"{name}_hex"])
    data = h(FULL[ref])
    assert d[f"{name}_truncated"] is True
    assert len(data) == d[f"{name}_len"]
    assert hashlib.sha256(data).hexdigest() == d[f"{name}_sha256"]
    assert data.hex().startswith(d[f"{name}_hex_prefix"])
    return data


def matches(d: dict[str, Any], name: str, data: bytes) -> bool:
    """`data` is the recorded value `name`: its hex, or for a shortened value without a
    full-frames entry its length, SHA-256 and prefix."""
    if f"{name}_hex" in d:
        return h(d[f"{name}_hex"]) == data
    return (len(data) == d[f"{name}_len"] and hashlib.sha256(data).hexdigest() == d[f"{name}_sha256"]
            and data.hex().startswith(d[f"{name}_hex_prefix"]))


def invert(b: bytes) -> bytes:
    return bytes(x ^ 0xFF for x in b)


def check_pair(kp: dict[str, str]) -> tuple[bytes, bytes]:
    pk, sk = h(kp["publicKey"]), h(kp["secretKey"])
    assert core.box_public_from_secret(sk) == pk
    return pk, sk


# -- 3. commserver-auth ---------------------------------------------------------------------------

def test_commserver_auth_every_value() -> None:
    v = VECTORS["commserver-auth"]
    lpk, lsk = h(v["listener"]["instance_public_key"]), h(v["listener"]["instance_secret_key"])
    assert core.box_public_from_secret(lsk) == lpk
    spk, ssk = check_pair(v["server"])
    shared = h(v["shared_key"])
    assert core.box_before(spk, lsk) == core.box_before(lpk, ssk) == shared
    wire = [json.loads(w["text"]) for w in v["wire"]]
    assert [w["dir"] for w in v["wire"]] == ["A->server", "server->A", "A->server", "server->A"]
    assert wire[0] == {"command": "register", "publicKey": lpk.hex()}
    assert wire[1]["publicKey"] == spk.hex()
    challenge_box = h(wire[1]["challenge"])
    assert challenge_box == h(v["challenge_ciphertext_embedded"])
    assert len(challenge_box) == 104 and challenge_box[:24] == h(v["challenge_nonce"])
    challenge = h(v["challenge_plaintext"])
    assert len(challenge) == 64
    # the server's side: encryptAndEmbedNonce(challenge, server.sk, listener.pk), its nonce
    assert core.box_seal_embedded(challenge, ssk, lpk, h(v["challenge_nonce"])) == challenge_box
    # the listener's side: decrypt, invert, re-encrypt with the recorded response nonce
    assert core.box_open_embedded(challenge_box, lsk, spk) == h(v["decrypted_challenge_by_listener"]) == challenge
    assert invert(challenge) == h(v["inverted_challenge"])
    response_box = h(wire[2]["response"])
    assert response_box == h(v["response_ciphertext_embedded"])
    assert response_box[:24] == h(v["response_nonce"])
    assert core.box_seal_embedded(invert(challenge), lsk, spk, h(v["response_nonce"])) == response_box
    # and the server's check of it
    assert core.box_open_embedded(response_box, ssk, lpk) == h(v["decrypted_response_by_server"]) == \
        invert(challenge)
    # the same with the precomputed shared key (box.after = secretbox)
    assert core.secretbox_open_embedded(response_box, shared) == invert(challenge)
    assert wire[3]["command"] == "authentication_success" and wire[3]["pingInterval"] == 25000
    # this spare later carried the pairing connection: the same listener key there
    assert CONNS["pairing"]["acceptor"]["instance_keypair"]["publicKey"] == lpk.hex()


# -- 4. encrypted-connection: handshake -----------------------------------------------------------

@pytest.mark.parametrize("name", ["pairing", "chum"])
def test_handshake_every_value(name: str) -> None:
    c = CONNS[name]
    ipk, isk = check_pair(c["initiator"]["instance_keypair"])
    apk, ask = check_pair(c["acceptor"]["instance_keypair"])
    iepk, iesk = check_pair(c["initiator"]["ephemeral_keypair"])
    aepk, aesk = check_pair(c["acceptor"]["ephemeral_keypair"])
    hs = c["handshake"]
    hs_key = h(hs["handshake_key"])
    assert core.box_before(apk, isk) == core.box_before(ipk, ask) == hs_key
    for frame, epk in ((hs["frame1_initiator_to_acceptor"], iepk), (hs["frame2_acceptor_to_initiator"], aepk)):
        data = h(frame["hex"])
        assert len(data) == frame["len"] == 72 and data[:24] == h(frame["nonce"])
        assert core.secretbox_open_embedded(data, hs_key) == h(frame["decrypted_ephemeral_public_key"]) == epk
        assert core.secretbox_seal_embedded(epk, hs_key, h(frame["nonce"])) == data
    assert core.box_before(aepk, iesk) == core.box_before(iepk, aesk) == h(hs["session_key"])
    # the plaintext prelude: the initiator's request in the exact form lama sends (conn §4.1)
    ini, acc = c["initiator"]["peer"], c["acceptor"]["peer"]
    request = ('{"command":"communication_request","sourcePublicKey":"%s","targetPublicKey":"%s"}'
               % (ipk.hex(), apk.hex()))
    assert c["plaintext_prelude"][ini][0]["text"] == request
    assert c["plaintext_prelude"][ini][1]["text"] == '{"command":"communication_ready"}'
    acc_texts = [m["text"] for m in c["plaintext_prelude"][acc]]
    assert acc_texts[0] == json.dumps({"command": "register", "publicKey": apk.hex()}, separators=(",", ":"))
    assert request in acc_texts and '{"command":"communication_ready"}' in acc_texts


# -- 4. encrypted-connection: frames --------------------------------------------------------------

def frames(name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(d, f) for d, fs in CONNS[name]["frames"].items() for f in fs]


@pytest.mark.parametrize("name", ["pairing", "chum"])
def test_frames_every_value(name: str) -> None:
    """Each frame: counter parity (acceptor even from 0, initiator odd from 1), nonce, wire
    and plaintext lengths, opens with the session key and its counter (not the next one), the
    padding header and filler, payload, kind, decoded message, and seals back to the wire
    bytes with its recorded padding (conn §2.4)."""
    c = CONNS[name]
    key = h(c["handshake"]["session_key"])
    ini = c["initiator"]["peer"]
    summary = c["frame_summary"]
    for direction, fs in c["frames"].items():
        parity = 1 if direction.startswith(ini) else 0
        counters = [f["counter"] for f in fs]
        assert all(x % 2 == parity for x in counters) and counters == sorted(counters)
        assert [f["index_in_direction"] for f in fs] == [(x - parity) // 2 for x in counters]
        total = summary[direction]["total_frames"]
        assert summary[direction]["recorded"] == len(fs) and fs[-1]["index_in_direction"] < total
        assert sum(summary[direction]["kinds"].values()) == total
        kinds: dict[str, int] = {}
        for f in fs:
            kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
        for k, n in kinds.items():
            # the summary counts every frame of the direction, recorded or not
            assert n <= summary[direction]["kinds"][k], (direction, k)
            assert n == summary[direction]["kinds"][k] or len(fs) < total, (direction, k)
    for direction, f in frames(name):
        nonce = core.session_nonce(f["counter"])
        assert nonce == h(f["nonce"])
        wire = whole(f, "frame")
        assert len(wire) == f["frame_len"] == f["plaintext_len"] + 16
        plain = core.secretbox_open(wire, nonce, key)
        assert plain == whole(f, "plaintext") and len(plain) == f["plaintext_len"]
        with pytest.raises(Exception):
            core.secretbox_open(wire, core.session_nonce(f["counter"] + 2), key)
        pad = f["padding"]
        n = pad["length_bytes"]
        assert plain[:1 + n] == h(pad["header_hex"])
        assert plain[0] >> 4 == pad["flags"] and plain[0] & 0x0F == n
        filler = h(pad["random_filler_hex"])
        assert len(filler) == pad["random_filler_len"] == int.from_bytes(plain[1:1 + n], "big")
        assert pad["random_byte_r"] == (0 if n == 0 else len(filler) + 1)
        assert pad["padding_total_len"] == 1 + n + len(filler)
        assert plain[1 + n:pad["padding_total_len"]] == filler
        data = plain[pad["padding_total_len"]:]
        assert matches(f, "payload", data) and len(data) == f["payload_len"]
        assert core.frame_unpad(plain) == (pad["flags"], data)
        assert f["payload_is_string"] == (pad["flags"] == 1)
        # what the plugins above encryption make of it (conn §2.5, §2.6)
        kind = f["kind"]
        if kind == "keepalive":
            assert data == b"keepalive" and f["payload_is_string"]
        elif kind in MARKERS:
            assert data.decode() == kind and f["payload_is_string"]
        elif kind == "fragment":
            assert not f["payload_is_string"] and len(data) <= 65536
        elif kind == "message-string":
            text = data.decode("utf-8")
            assert text != "keepalive" and text not in MARKERS
            if "json" in f["app_message"]:
                assert f["app_message"]["json"] == json.loads(text)
            else:  # the plain string "synchronisation" (conn §5.5)
                assert f["app_message"] == {"text": text}
        else:
            assert kind == "message-binary" and not f["payload_is_string"]
            assert h(f["app_message"]["binary_hex"]) == data and f["app_message"]["binary_len"] == len(data)
        r, fill = pad["random_byte_r"], filler
        assert core.secretbox_seal(core.frame_pad(data, pad["flags"], r, fill), nonce, key) == wire


def test_the_fragmented_message_reassembles() -> None:
    """chum A->B: fragmentation_start_string, 65536 + 8429 binary bytes, fragmentation_end give
    the recorded 73,965-byte string (UTF-8, JSON of a CHUM response)."""
    c = CONNS["chum"]
    key = h(c["handshake"]["session_key"])
    fs = c["frames"]["A->B"]
    kinds = [f["kind"] for f in fs]
    start = kinds.index("fragmentation_start_string")
    assert kinds[start:start + 4] == ["fragmentation_start_string", "fragment", "fragment", "fragmentation_end"]
    parts = []
    for f in fs[start + 1:start + 3]:
        flags, data = core.frame_unpad(core.secretbox_open(whole(f, "frame"), core.session_nonce(f["counter"]), key))
        assert flags == 0
        parts.append(data)
    assert [len(p) for p in parts] == [65536, 8429]
    message = b"".join(parts)
    end = fs[start + 3]["app_message"]
    assert len(message) == end["reassembled_len"] == 73965
    assert hashlib.sha256(message).hexdigest() == end["reassembled_sha256"]
    text = message.decode("utf-8")
    assert json.loads(text)["type"] == "data"


# -- 5. person-proof ------------------------------------------------------------------------------

def section4_payload(conn: str, direction: str, counter: int) -> tuple[int, bytes]:
    c = CONNS[conn]
    key = h(c["handshake"]["session_key"])
    (f,) = [f for f in c["frames"][direction] if f["counter"] == counter]
    return core.frame_unpad(core.secretbox_open(whole(f, "frame"), core.session_nonce(counter), key))


@pytest.mark.parametrize("index", [0, 1])
def test_person_proof_every_value(index: int) -> None:
    p = VECTORS["person-proof"]["connections"][index]
    conn = p["connection"]
    c = CONNS[conn]
    keys = {who: check_pair(kp) for who, kp in p["person_keys"].items()}
    person_key = h(p["person_key"])
    assert core.box_before(keys["B"][0], keys["A"][1]) == core.box_before(keys["A"][0], keys["B"][1]) == person_key
    peers = VECTORS["peers"]
    for who in ("A", "B"):
        assert keys[who][0].hex() == peers[who]["keypairs"]["personEncryptionKeyPair"]["publicKey"]
    # person_id_object and keys_object: the JSON of the section-4 frame with that counter
    for m in p["id_and_keys_messages"]:
        flags, data = section4_payload(conn, m["dir"], m["counter"])
        assert flags == 1 and json.loads(data.decode()) == m["json"]
        sender = m["dir"][0]
        if m["json"]["command"] == "keys_object":
            assert m["json"]["obj"]["publicKey"] == keys[sender][0].hex()
            assert m["json"]["obj"]["owner"] == peers[sender]["person_id_hash"]
        else:
            assert m["json"]["command"] == "person_id_object"
    # the acceptor challenges first, the initiator answers first (conn §5.3)
    acc = c["acceptor"]["peer"]
    order = sorted((x[f]["counter"], x["challenger"], f) for x in p["exchanges"]
                   for f in ("challenge_frame", "response_frame"))
    assert [(who, f) for _, who, f in order][0] == (acc, "challenge_frame")
    for ex in p["exchanges"]:
        challenge = h(ex["challenge"])
        assert len(challenge) == 64
        assert invert(challenge) == h(ex["expected_response_plaintext"])
        for role, plain in (("challenge_frame", challenge), ("response_frame", invert(challenge))):
            fr = ex[role]
            box = h(fr["frame_payload_hex"])
            assert len(box) == 104 and box[:24] == h(fr["nonce"]) and h(fr["key"]) == person_key
            assert fr["dir"][0] == (ex["challenger"] if role == "challenge_frame" else ex["responder"])
            assert core.secretbox_open_embedded(box, person_key) == plain
            assert h(fr["plaintext_sent"]) == h(fr["plaintext_decrypted_by_receiver"]) == plain
            assert core.secretbox_seal_embedded(plain, person_key, h(fr["nonce"])) == box
            # the same bytes, as a binary application message, in the frame with that counter
            assert section4_payload(conn, fr["dir"], fr["counter"]) == (0, box)
