"""lama.connect.protocol: connections.md §5.1-5.5 over memory_pair() with two real instances,
the recorded person-key proof (crypto-and-frames.json `person-proof`), the recorded message
shapes (transcript-pairing-and-chat.json) and every refusal. Runs on the core of LAMA_CORE."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from connect_util import (CF, PEER_A, PEER_B, SECRET, TRANSCRIPT, make, make_a, make_b, pair, run,
                          store_dump)

from lama._core import core
from lama.connect import contacts, protocol
from lama.connect.protocol import Accept
from lama.errors import AuthenticationError, CryptoError, LamaError, ProtocolError
from lama.identity.instance import Instance

PROOF = CF["person-proof"]


def _both(a: Instance, b: Instance, group: str = "chum", decide: Any = None,
          i_kw: dict[str, Any] | None = None, a_kw: dict[str, Any] | None = None,
          ) -> tuple[Any, Any, Any, Any]:
    """b initiates to a (a accepts); returns (a's result or error, b's, a's transport, b's)."""
    ta, tb = pair()

    async def main() -> tuple[Any, Any]:
        res = await asyncio.gather(
            protocol.accept(ta, a, decide, **(a_kw or {})),
            protocol.initiate(tb, b, group, **(i_kw or {})),
            return_exceptions=True,
        )
        return res[0], res[1]

    ra, rb = run(main)
    return ra, rb, ta, tb


# --------------------------------------------------------------------------------------------
# Both sides


def test_both_sides_identify_each_other(tmp_path: Path) -> None:
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: Accept())
        assert isinstance(ra, protocol.PeerIdentity), ra
        assert isinstance(rb, protocol.PeerIdentity), rb
        assert (ra.group, rb.group) == ("chum", "chum")
        assert (ra.initiated_locally, rb.initiated_locally) == (False, True)
        assert ra.person_id == b.person_id == PEER_B["person_id_hash"]
        assert rb.person_id == a.person_id == PEER_A["person_id_hash"]
        assert ra.instance_id == b.instance_id == PEER_B["instance_id_hash"]
        assert rb.instance_id == a.instance_id == PEER_A["instance_id_hash"]
        assert ra.person_public_key == b.person_public_key
        assert rb.person_public_key == a.person_public_key
        assert ra.person_public_sign_key == b.person_public_sign_key
        assert ra.person_keys_hash == b.person_keys  # the same Keys object as B's own
        assert rb.person_keys_hash == a.person_keys
        assert ra.known is False and rb.known is False
        # §5.3 step 3 / §5.4: the new Person and Instance ID objects are stored on both sides
        for me, peer, r in ((a, b, ra), (b, a, rb)):
            assert me.store.kind(peer.person_id) == "id"
            assert me.store.kind(peer.instance_id) == "id"
            assert set(r.stored) == {peer.person_id, peer.instance_id}
            assert me.store.get_head(peer.person_id) is None  # an ID object, no version
        assert ta.close_reason is None and tb.close_reason is None


def test_second_run_stores_nothing_new(tmp_path: Path) -> None:
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        _both(a, b, "chum", lambda g: True)
        before = store_dump(a), store_dump(b)
        ra, rb, _, _ = _both(a, b, "chum", lambda g: True)
        assert ra.stored == () and rb.stored == ()
        assert (store_dump(a), store_dump(b)) == before


def test_async_decide_and_default_groups(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    seen: list[str] = []

    async def decide(group: str) -> Accept:
        seen.append(group)
        await asyncio.sleep(0)
        return Accept()

    with a, b:
        ra, rb, _, _ = _both(a, b, "debug", decide)
        assert seen == ["debug"] and ra.group == rb.group == "debug"
        ra, rb, _, _ = _both(a, b, "pairing", None)  # decide=None: the groups in use
        assert ra.group == "pairing"
        ra, rb, ta, tb = _both(a, b, "legacy_group", None)
        assert isinstance(ra, ProtocolError) and ra.code == "LAMA-REFUSED"


def test_pairing_group_stores_nothing(tmp_path: Path) -> None:
    """Pairing stores its objects itself on success (§6.4), so §5.3/§5.4 store nothing."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        before = store_dump(a), store_dump(b)
        ra, rb, _, _ = _both(a, b, "pairing", lambda g: True)
        assert ra.person_id == b.person_id and rb.instance_id == a.instance_id
        assert ra.stored == rb.stored == ()
        assert (store_dump(a), store_dump(b)) == before


def test_synchronise_both_ways(tmp_path: Path) -> None:
    ta, tb = pair()

    async def main() -> None:
        await asyncio.gather(protocol.synchronise(ta), protocol.synchronise(tb))
        assert ta.sent == ["synchronisation"] and tb.sent == ["synchronisation"]
        assert ta.received == ["synchronisation"] and tb.received == ["synchronisation"]

    run(main)


def test_synchronise_times_out(tmp_path: Path) -> None:
    ta, tb = pair()

    async def main() -> None:
        with pytest.raises(ProtocolError) as e:
            await protocol.synchronise(ta, timeout=0.1)
        assert e.value.code == "LAMA-PROTO-TIMEOUT"
        assert await tb.recv() == "synchronisation"
        assert await tb.recv() is None  # the waiting side closed the connection

    run(main)


# --------------------------------------------------------------------------------------------
# Recorded values


def test_person_proof_vector() -> None:
    """Answer the recorded challenge with the recorded keys: the answer and the recorded answer
    both decrypt to the complement; the person key is box.before of the person keys."""
    with_keys = PROOF["connections"]
    assert with_keys, "no person-proof connections recorded"
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        a, b = make_a(Path(d)), make_b(Path(d))
        with a, b:
            for conn in with_keys:
                pk = conn["person_keys"]
                assert bytes.fromhex(pk["A"]["publicKey"]) == a.person_public_key
                assert bytes.fromhex(pk["B"]["publicKey"]) == b.person_public_key
                assert core.box_before(b.person_public_key, bytes.fromhex(pk["A"]["secretKey"])
                                       ) == bytes.fromhex(conn["person_key"])
                peers = {"A": a, "B": b}
                for ex in conn["exchanges"]:
                    challenger, responder = peers[ex["challenger"]], peers[ex["responder"]]
                    box = bytes.fromhex(ex["challenge_frame"]["frame_payload_hex"])
                    challenge = bytes.fromhex(ex["challenge"])
                    assert len(box) == protocol.PROOF_LEN
                    assert protocol.invert(challenge).hex() == ex["expected_response_plaintext"]
                    # lama's answer to the recorded challenge
                    mine = protocol.answer_challenge(
                        responder, challenger.person_public_key, box)
                    assert len(mine) == protocol.PROOF_LEN
                    assert mine != bytes.fromhex(ex["response_frame"]["frame_payload_hex"])
                    protocol.check_answer(challenger, responder.person_public_key, challenge, mine)
                    # the recorded answer passes lama's check
                    recorded = bytes.fromhex(ex["response_frame"]["frame_payload_hex"])
                    protocol.check_answer(
                        challenger, responder.person_public_key, challenge, recorded)
                    # and the recorded challenge is what lama would seal with that nonce
                    nonce = bytes.fromhex(ex["challenge_frame"]["nonce"])
                    assert challenger.encrypt(challenge, responder.person_public_key,
                                              nonce=nonce) == box
                    # a wrong answer (the challenge echoed back) is refused
                    echo = challenger.encrypt(challenge, responder.person_public_key)
                    with pytest.raises(AuthenticationError) as e:
                        protocol.check_answer(
                            challenger, responder.person_public_key, challenge, echo)
                    assert e.value.code == "LAMA-AUTH"


def _setup_messages(entries: list[dict[str, Any]], conn: str, sender: str) -> list[Any]:
    out = []
    for e in entries:
        if e.get("conn") != conn or e.get("layer") not in (
                "encrypted/connection-setup", "encrypted/chum"):
            continue
        if not e["direction"].startswith(sender + "\u2192"):
            continue
        if isinstance(e["message"], dict) and "binaryBytes" in e["message"]:
            continue  # the challenge messages: compared by length
        out.append(e["message"])
    return out


def test_messages_match_the_transcript(tmp_path: Path) -> None:
    """The JSON lama sends equals the transcript's decrypted messages of the chum connection
    B#5 -> A#4 (same emails and instance names; key values from crypto-and-frames.json, so the
    keys_object is compared with person-proof's recorded one, byte for byte)."""
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: True)
        assert isinstance(ra, protocol.PeerIdentity)

        async def sync() -> None:
            await asyncio.gather(protocol.synchronise(ta), protocol.synchronise(tb))

        run(sync)
    rec_b = _setup_messages(TRANSCRIPT, "B#5", "B")[:6]
    rec_a = _setup_messages(TRANSCRIPT, "A#4", "A")[:6]
    proof_json = {(m["dir"], m["json"]["command"]): m["json"]
                  for m in PROOF["connections"][0]["id_and_keys_messages"]}

    def compare(sent: list[str | bytes], recorded: list[Any], who: str) -> None:
        texts = [m for m in sent if isinstance(m, str)]
        binaries = [m for m in sent if isinstance(m, bytes)]
        assert [len(x) for x in binaries] == [104, 104]
        assert len(texts) == len(recorded), (texts, recorded)
        other = "B" if who == "A" else "A"
        for text, rec in zip(texts, recorded):
            if isinstance(rec, str):
                assert text == rec
                continue
            if rec["command"] == "keys_object":
                rec = proof_json[(f"{who}->{other}", "keys_object")]
            assert text == protocol.dumps(rec)
            assert list(json.loads(text)) == list(rec)

    # the transcript: B: connection_group, person_id, keys, instance_id, synchronisation
    assert [m if isinstance(m, str) else m["command"] for m in rec_b[:5]] == [
        "connection_group", "person_id_object", "keys_object", "instance_id_object",
        "synchronisation"]
    compare(tb.sent, rec_b[:5], "B")
    assert [m if isinstance(m, str) else m["command"] for m in rec_a[:5]] == [
        "sync", "person_id_object", "keys_object", "instance_id_object", "synchronisation"]
    compare(ta.sent, rec_a[:5], "A")


def test_dumps_is_json_stringify() -> None:
    assert protocol.dumps({"b": 1, "a": "é😀<&>"}) == '{"b":1,"a":"é😀<&>"}'
    # JSON.stringify: control characters escaped, U+2028 not, a lone surrogate as \udXXX,
    # a surrogate pair given as two code points is the one character
    assert protocol.dumps(["\n\x01\u2028\"\\/"]) == '["\\n\\u0001\u2028\\"\\\\/"]'
    assert protocol.dumps(["a\ud800b", "\udfff"]) == '["a\\ud800b","\\udfff"]'
    assert protocol.dumps(["\ud83d\ude00"]) == '["😀"]'
    protocol.dumps(["x\ud800"]).encode("utf-8")  # sendable


# --------------------------------------------------------------------------------------------
# Refusals


def test_refused_group_goes_away(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        before = store_dump(a), store_dump(b)
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: False)
        assert isinstance(ra, ProtocolError) and ra.code == "LAMA-REFUSED"
        assert isinstance(rb, ProtocolError) and rb.code == "LAMA-REFUSED"
        assert isinstance(rb, ConnectionError)
        assert "Go Away!" in str(rb)
        assert tb.close_reason == protocol.GO_AWAY
        assert (store_dump(a), store_dump(b)) == before


def test_expected_person_mismatch(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        before = store_dump(a), store_dump(b)
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: Accept(expected_person=c.person_id))
        assert isinstance(ra, AuthenticationError) and ra.code == "LAMA-AUTH-PERSON"
        assert isinstance(ra, PermissionError)
        assert ta.close_reason == protocol.PERSON_MISMATCH
        assert isinstance(rb, ProtocolError) and rb.code == "LAMA-PROTO-CLOSED"
        assert store_dump(a) == before[0]
        # and on the initiator's side
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: True,
                               i_kw={"expected_person": c.person_id})
        assert isinstance(rb, AuthenticationError) and rb.code == "LAMA-AUTH-PERSON"


def test_expected_instance_mismatch(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: Accept(
            expected_person=b.person_id, expected_instance=c.instance_id))
        assert isinstance(ra, AuthenticationError) and ra.code == "LAMA-AUTH-INSTANCE"
        assert not a.store.has(b.instance_id)
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: Accept(
            expected_person=b.person_id, expected_instance=b.instance_id))
        assert isinstance(ra, protocol.PeerIdentity)


def _record_endpoint(me: Instance, peer: Instance, person_public_key: bytes) -> None:
    """Store an endpoint for ``peer`` whose person Keys hold ``person_public_key``."""
    contacts.enable_reverse_maps(me.store)
    pkeys = {"$type$": "Keys", "owner": peer.person_id, "publicKey": person_public_key.hex(),
             "publicSignKey": peer.person_public_sign_key.hex()}
    ikeys = {"$type$": "Keys", "owner": peer.instance_id,
             "publicKey": peer.instance_public_key.hex(),
             "publicSignKey": peer.instance_public_sign_key.hex()}
    me.store.put_microdata([(core.id_microdata({"$type$": "Person", "email": peer.email}), None)])
    me.store.put_microdata([(core.id_microdata(
        {"$type$": "Instance", "name": peer.instance_name, "owner": peer.person_id}), None)])
    [(ph, _, _), (ih, _, _)] = me.store.put_objects([pkeys, ikeys])
    me.store.put_objects([{"$type$": "OneInstanceEndpoint", "personId": peer.person_id,
                           "instanceId": peer.instance_id, "personKeys": ph,
                           "instanceKeys": ih, "url": "ws://127.0.0.1:1"}])


def test_known_person_with_other_key_is_refused(tmp_path: Path) -> None:
    """§5.3 post-check 2: Key does not match your previous visit (EP-KEYMISSMATCH)."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        other_pk, _ = core.box_keypair()
        _record_endpoint(a, b, other_pk)
        before = store_dump(a)
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: True)
        assert isinstance(ra, AuthenticationError) and ra.code == "EP-KEYMISSMATCH"
        assert ta.close_reason == protocol.KEY_MISMATCH
        assert "Key does not match your previous visit" in str(ra)
        assert store_dump(a) == before


def test_known_person_with_its_key_is_known(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        _record_endpoint(a, b, b.person_public_key)
        ra, rb, _, _ = _both(a, b, "chum", lambda g: True)
        assert isinstance(ra, protocol.PeerIdentity) and ra.known is True
        assert rb.known is False
        # the check can be switched off (the reference's flag)
        other_pk, _ = core.box_keypair()
        _record_endpoint(b, a, other_pk)
        ra, rb, _, _ = _both(a, b, "chum", lambda g: True)
        assert isinstance(rb, AuthenticationError) and rb.code == "EP-KEYMISSMATCH"
        ra, rb, _, _ = _both(a, b, "chum", lambda g: True, i_kw={"check_known_keys": False})
        assert isinstance(rb, protocol.PeerIdentity) and rb.known is False


def test_known_key_check_finds_an_endpoint_stored_before_the_maps_existed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint stored in an instance whose store never had lama.connect's reverse maps (an
    instance made by a lama that enabled them on first use only, the endpoint imported by CHUM
    before lama.connect ever ran there) is found by the known-key check after the instance is
    opened again: Instance.open enables the maps, and enabling indexes what is stored."""
    with monkeypatch.context() as m:
        # the older lama: Instance.create did not enable the OneInstanceEndpoint maps
        m.setattr(contacts, "enable_reverse_maps", lambda store: None)
        a = make(tmp_path, "a")
        b = make(tmp_path, "b")
        other_pk, _ = core.box_keypair()
        _record_endpoint(a, b, other_pk)
        assert a.store.referencing(b.person_id, "OneInstanceEndpoint") == []
        a_path = a.path
        a.close()
    with b, Instance.open(a_path, SECRET) as a:
        assert len(contacts.endpoints_of_person(a.store, b.person_id)) == 1
        before = store_dump(a)
        ra, rb, ta, tb = _both(a, b, "chum", lambda g: True)
        assert isinstance(ra, AuthenticationError) and ra.code == "EP-KEYMISSMATCH", ra
        assert ta.close_reason == protocol.KEY_MISMATCH
        assert store_dump(a) == before


def test_a_shipped_endpoint_adds_no_person_key_to_a_vouched_record(tmp_path: Path) -> None:
    """docs/connections.md §3.5: with person Keys I signed for a person (pairing), an endpoint
    with other person Keys for that person - which anyone could ship by CHUM - does not make
    those keys "on record": someone proving them as that person is refused (EP-KEYMISSMATCH),
    the person with its real keys is known."""
    from lama.connect import pairing

    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    mallory = Instance.create(tmp_path / "m", email=b.email, instance_name="inst-m",
                              secret=SECRET)
    with a, b, mallory:
        assert mallory.person_id == b.person_id and mallory.person_public_key != b.person_public_key
        pairing.store_identity(a, pairing.identity_of(b, "ws://127.0.0.1:1"))
        _record_endpoint(a, mallory, mallory.person_public_key)  # shipped, nobody signed it
        ra, rb, ta, tb = _both(a, mallory, "chum", lambda g: True)
        assert isinstance(ra, AuthenticationError) and ra.code == "EP-KEYMISSMATCH", ra
        ra, rb, _, _ = _both(a, b, "chum", lambda g: True)
        assert isinstance(ra, protocol.PeerIdentity) and ra.known is True


class Liar:
    """A scripted initiator: runs §5.1-5.3 by hand with chosen objects and answers."""

    def __init__(self, me: Instance, person_obj: dict[str, Any], keys_obj: dict[str, Any],
                 answer: str = "real", instance_obj: dict[str, Any] | None = None) -> None:
        self.me, self.person_obj, self.keys_obj = me, person_obj, keys_obj
        self.answer, self.instance_obj = answer, instance_obj

    async def __call__(self, t: Any) -> None:
        await protocol.send_json(t, {"command": "connection_group", "connectionGroupName": "chum"})
        await protocol.recv_command(t, "sync")
        await protocol.send_json(t, {"command": "person_id_object", "obj": self.person_obj})
        their = await protocol.recv_command(t, "person_id_object")
        await protocol.send_json(t, {"command": "keys_object", "obj": self.keys_obj})
        keys = await protocol.recv_command(t, "keys_object")
        their_pk = bytes.fromhex(keys["obj"]["publicKey"])
        del their
        box = await t.recv()
        if self.answer == "real":
            try:
                await t.send(protocol.answer_challenge(self.me, their_pk, box))
            except CryptoError:  # not the claimed person: its best guess
                await t.send(core.random_bytes(protocol.PROOF_LEN))
                await t.recv()
                return
        elif self.answer == "echo":
            await t.send(box)
        elif self.answer == "short":
            await t.send(box[:50])
        elif self.answer == "text":
            await t.send("not a binary answer")
        if self.answer != "real":
            await t.recv()
            return
        challenge = protocol.make_challenge()
        await t.send(self.me.encrypt(challenge, their_pk))
        await t.recv()
        await protocol.send_json(t, {"command": "instance_id_object", "obj": self.instance_obj})
        await t.recv()


def _against(a: Instance, liar: Liar, decide: Any = None) -> tuple[Any, Any]:
    ta, tb = pair()

    async def main() -> tuple[Any, Any]:
        res = await asyncio.gather(protocol.accept(ta, a, decide or (lambda g: True), timeout=2),
                                   liar(tb), return_exceptions=True)
        return res[0], ta

    return run(main)


def _person(i: Instance) -> dict[str, Any]:
    return {"$type$": "Person", "email": i.email}


def _keys(owner: str, pk: bytes, spk: bytes) -> dict[str, Any]:
    return {"$type$": "Keys", "owner": owner, "publicKey": pk.hex(), "publicSignKey": spk.hex()}


@pytest.mark.parametrize("answer", ["real", "echo", "short", "text"])
def test_a_peer_claiming_another_persons_key_fails_the_proof(tmp_path: Path, answer: str) -> None:
    """C claims to be B with B's keys but holds only its own secret: LAMA-AUTH, nothing stored."""
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        before = store_dump(a)
        liar = Liar(c, _person(b), _keys(b.person_id, b.person_public_key,
                                          b.person_public_sign_key), answer)
        ra, ta = _against(a, liar)
        if answer == "text":
            assert isinstance(ra, ProtocolError) and ra.code == "LAMA-PROTO", ra
        else:
            assert isinstance(ra, AuthenticationError) and ra.code == "LAMA-AUTH", ra
            assert ta.close_reason == protocol.AUTH_FAILED
        assert store_dump(a) == before


def test_keys_of_another_owner_are_refused(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        before = store_dump(a)
        liar = Liar(c, _person(c), _keys(b.person_id, c.person_public_key,
                                          c.person_public_sign_key))
        ra, _ = _against(a, liar)
        assert isinstance(ra, AuthenticationError) and ra.code == "LAMA-AUTH-KEYS"
        assert store_dump(a) == before


def test_instance_of_another_person_is_refused(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        liar = Liar(c, _person(c), _keys(c.person_id, c.person_public_key,
                                          c.person_public_sign_key),
                    instance_obj={"$type$": "Instance", "name": "x", "owner": b.person_id})
        ra, _ = _against(a, liar)
        assert isinstance(ra, AuthenticationError) and ra.code == "LAMA-AUTH-INSTANCE"
        assert not a.store.has(core.id_hash(
            {"$type$": "Instance", "name": "x", "owner": b.person_id}))


@pytest.mark.parametrize("bad", [
    "not json", "[1,2]", '{"command":"hello"}', b"\x00binary",
    '{"command":"connection_group"}', '{"command":"connection_group","connectionGroupName":7}',
])
def test_malformed_first_message(tmp_path: Path, bad: str | bytes) -> None:
    a = make(tmp_path, "a")
    with a:
        ta, tb = pair()

        async def main() -> Any:
            await tb.send(bad)
            try:
                await protocol.accept(ta, a, lambda g: True, timeout=2)
            except LamaError as e:
                return e
            return None

        err = run(main)
        assert isinstance(err, ProtocolError) and err.code == "LAMA-PROTO", err
        assert ta.close_reason is not None


@pytest.mark.parametrize("obj", [
    None, 5, {"$type$": "Keys"}, {"$type$": "Person"}, {"$type$": "Person", "email": 3},
])
def test_malformed_person_id_object(tmp_path: Path, obj: Any) -> None:
    a, c = make(tmp_path, "a"), make(tmp_path, "c")
    with a, c:
        liar = Liar(c, obj, _keys(c.person_id, c.person_public_key, c.person_public_sign_key))
        ra, _ = _against(a, liar)
        assert isinstance(ra, ProtocolError) and ra.code == "LAMA-PROTO", ra


def test_malformed_keys_object(tmp_path: Path) -> None:
    a, c = make(tmp_path, "a"), make(tmp_path, "c")
    with a, c:
        bad = {"$type$": "Keys", "owner": c.person_id, "publicKey": "zz" * 32,
               "publicSignKey": c.person_public_sign_key.hex()}
        ra, _ = _against(a, Liar(c, _person(c), bad))
        assert isinstance(ra, ProtocolError) and ra.code == "LAMA-PROTO", ra


def test_every_wait_times_out(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        ta, tb = pair()

        async def silent_acceptor() -> Any:
            try:
                await protocol.initiate(tb, b, "chum", timeout=0.2)
            except LamaError as e:
                return e

        err = run(silent_acceptor)
        assert isinstance(err, ProtocolError) and err.code == "LAMA-PROTO-TIMEOUT"
        assert tb.close_reason is not None

        ta, tb = pair()

        async def silent_initiator() -> Any:
            try:
                await protocol.accept(ta, a, timeout=0.2)
            except LamaError as e:
                return e

        err = run(silent_initiator)
        assert isinstance(err, ProtocolError) and err.code == "LAMA-PROTO-TIMEOUT"

        # a peer that stops after sync (in the middle of §5.3)
        ta, tb = pair()

        async def stalls() -> Any:
            await protocol.send_json(tb, {"command": "connection_group",
                                          "connectionGroupName": "chum"})
            try:
                await protocol.accept(ta, a, timeout=0.2)
            except LamaError as e:
                return e

        err = run(stalls)
        assert isinstance(err, ProtocolError) and err.code == "LAMA-PROTO-TIMEOUT"


def test_peer_closing_mid_protocol(tmp_path: Path) -> None:
    a = make(tmp_path, "a")
    with a:
        ta, tb = pair()

        async def main() -> Any:
            await protocol.send_json(tb, {"command": "connection_group",
                                          "connectionGroupName": "chum"})
            await tb.close("bye")
            try:
                await protocol.accept(ta, a, timeout=2)
            except LamaError as e:
                return e

        err = run(main)
        assert isinstance(err, ProtocolError) and err.code == "LAMA-PROTO-CLOSED"
        assert "bye" in str(err)


def test_a_failing_decide_or_cancellation_closes_the_connection(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        def boom(group: str) -> Accept:
            raise RuntimeError("decide failed")

        ra, rb, ta, tb = _both(a, b, "chum", boom)
        assert isinstance(ra, RuntimeError)
        assert ta.close_reason == "Error: decide failed"
        assert isinstance(rb, ProtocolError) and "decide failed" in str(rb)

        ta, tb = pair()

        async def main() -> None:
            task = asyncio.ensure_future(protocol.accept(ta, a, timeout=5))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await tb.recv() is None  # closed by the cancelled side

        run(main)
        assert ta.close_reason is not None
