"""lama.connect.pairing: invitations, links and QR codes, the token registry, the exchange of
connections.md §6.3 on both sides over memory_pair() with real instances, what each side stores
(§6.4), idempotent repeats, and every refusal with both stores unchanged. Runs on the core of
LAMA_CORE."""

from __future__ import annotations

import asyncio
import json
import string
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
from connect_util import TRANSCRIPT, make, make_a, make_b, pair, run, store_dump

from lama._core import core
from lama.connect import contacts, pairing, protocol
from lama.connect.pairing import Invitation, TokenRegistry
from lama.connect.protocol import Accept
from lama.errors import InvalidArgumentError, LamaError, PairingError, ProtocolError
from lama.identity import certificates
from lama.identity.instance import Instance
from lama.objects import versions

URL_A = "ws://127.0.0.1:8765"
URL_B = "ws://127.0.0.1:8766"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pair(a: Instance, b: Instance, registry: TokenRegistry, inv: Invitation, *,
          a_kw: dict[str, Any] | None = None, b_kw: dict[str, Any] | None = None,
          invitee: Callable[..., Awaitable[Any]] | None = None,
          inviter: Callable[..., Awaitable[Any]] | None = None) -> tuple[Any, Any, Any, Any]:
    """b pairs with a over a memory pair (b dials a): (a's result or error, b's, ta, tb)."""
    ta, tb = pair()

    async def side_a() -> Any:
        if inviter is not None:
            return await inviter(ta)
        peer = await protocol.accept(ta, a, lambda g: Accept() if g == "pairing" else None,
                                     timeout=3)
        kw = {"url": URL_A, "handshake_key": b.instance_public_key, "timeout": 3}
        kw.update(a_kw or {})
        return await pairing.accept_pairing(ta, a, registry, peer, **kw)

    async def side_b() -> Any:
        if invitee is not None:
            return await invitee(tb)
        peer = await protocol.initiate(tb, b, "pairing", timeout=3)
        kw = {"url": URL_B, "timeout": 3}
        kw.update(b_kw or {})
        return await pairing.connect_pairing(tb, b, inv, peer, **kw)

    async def main() -> tuple[Any, Any]:
        ra, rb = await asyncio.gather(side_a(), side_b(), return_exceptions=True)
        return ra, rb

    ra, rb = run(main)
    return ra, rb, ta, tb


def _check_contact(me: Instance, peer: Instance, url: str) -> None:
    """Everything §6.4 lists, in ``me``'s store, about ``peer``."""
    s = me.store
    assert s.kind(peer.person_id) == "id" and s.kind(peer.instance_id) == "id"
    eps = contacts.endpoints_of_person(s, peer.person_id)
    assert len(eps) == 1
    ep_hash, ep = eps[0]
    assert ep == {"$type$": "OneInstanceEndpoint", "personId": peer.person_id,
                  "instanceId": peer.instance_id, "personKeys": peer.person_keys,
                  "instanceKeys": peer.instance_keys, "url": url}
    # the Keys objects are the peer's own ones (same hashes as in its store)
    assert s.get_object(peer.person_keys) == peer.store.get_object(peer.person_keys)
    assert s.get_object(peer.instance_keys) == peer.store.get_object(peer.instance_keys)
    for keys_hash in (peer.person_keys, peer.instance_keys):
        [sig] = certificates.signatures_for(s, keys_hash)
        v = certificates.verify_signature(s, sig)
        assert v.issuer == me.person_id and v.key == me.person_public_sign_key
    profile_id = core.id_hash({"$type$": "Profile", "profileId": "default",
                               "personId": peer.person_id, "owner": peer.person_id})
    profile = versions.current(s, profile_id)
    sign_key = {"$type$": "SignKey", "key": peer.person_public_sign_key.hex()}
    assert profile == {"$type$": "Profile", "profileId": "default", "personId": peer.person_id,
                       "owner": peer.person_id, "communicationEndpoint": [ep_hash],
                       "personDescription": [core.object_hash(sign_key)]}
    [cert_sig] = [h for h in certificates.signatures_for(
        s, certificates.certificates_for(s, versions.current_hash(s, profile_id),
                                         "TrustKeysCertificate")[0])]
    vc = certificates.verify_certificate(s, cert_sig, "TrustKeysCertificate")
    assert vc.issuer == me.person_id
    assert vc.certificate["profile"] == versions.current_hash(s, profile_id)


# --------------------------------------------------------------------------------------------
# The exchange


def test_pairing_stores_the_contact_on_both_sides(tmp_path: Path) -> None:
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        assert inv.public_key == a.instance_public_key.hex() and inv.url == URL_A
        ra, rb, ta, tb = _pair(a, b, reg, inv)
        assert isinstance(ra, pairing.PairingResult), ra
        assert isinstance(rb, pairing.PairingResult), rb
        assert (ra.initiated_locally, rb.initiated_locally) == (False, True)
        assert ra.token == rb.token == inv.token
        assert (ra.remote_person, ra.remote_instance) == (b.person_id, b.instance_id)
        assert (rb.remote_person, rb.remote_instance) == (a.person_id, a.instance_id)
        assert (ra.local_person, rb.local_person) == (a.person_id, b.person_id)
        _check_contact(a, b, URL_B)
        _check_contact(b, a, URL_A)
        assert ra.contact.endpoint == contacts.endpoints_of_person(a.store, b.person_id)[0][0]
        # the token is used up
        assert not reg.valid(inv.token) and len(reg) == 0
        # the connection stays open (the fork); the inviter sent `synchronisation` last and
        # the invitee never answered it
        assert ta.sent[-1] == "synchronisation"
        assert "synchronisation" not in tb.sent
        assert ta.close_reason is None


def _cmds(msgs: list[Any]) -> list[str]:
    out = []
    for m in msgs:
        if isinstance(m, bytes):
            continue
        if isinstance(m, str) and not m.startswith("{"):
            out.append(m)
            continue
        out.append(json.loads(m)["command"] if isinstance(m, str) else m["command"])
    return out


def _recorded(conn: str, sender: str) -> list[Any]:
    out = []
    for e in TRANSCRIPT:
        if e.get("conn") != conn or not e["direction"].startswith(sender + "\u2192"):
            continue
        if not str(e.get("layer", "")).startswith("encrypted/"):
            continue
        m = e["message"]
        if isinstance(m, dict) and "binaryBytes" in m:
            continue
        out.append(m)
    return out


def test_pairing_messages_match_the_transcript(tmp_path: Path) -> None:
    """The pairing connection of the transcript (B#3 -> A#2): the same messages in the same
    order per direction, the same field names in the same order; the identity's values equal
    where they do not depend on the run's keys."""
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        ra, rb, ta, tb = _pair(a, b, reg, inv, b_kw={"url": URL_A})
        assert isinstance(rb, pairing.PairingResult), rb
    rec_b, rec_a = _recorded("B#3", "B"), _recorded("A#2", "A")
    assert _cmds(tb.sent) == _cmds(rec_b) == [
        "connection_group", "person_id_object", "keys_object", "instance_id_object",
        "authentication_token", "identity"]
    assert _cmds(ta.sent) == _cmds(rec_a) == [
        "sync", "person_id_object", "keys_object", "instance_id_object", "identity",
        "synchronisation"]
    for sent, rec in ((tb.sent, rec_b), (ta.sent, rec_a)):
        texts = [json.loads(m) for m in sent if isinstance(m, str) and m.startswith("{")]
        recs = [m for m in rec if isinstance(m, dict)]
        for mine, theirs in zip(texts, recs):
            assert list(mine) == list(theirs)
            if isinstance(theirs.get("obj"), dict):
                assert list(mine["obj"]) == list(theirs["obj"])
            if theirs["command"] == "identity":
                for k in ("type", "personEmail", "instanceName", "url"):
                    assert mine["obj"][k] == theirs["obj"][k]
            if theirs["command"] in ("connection_group", "person_id_object",
                                     "instance_id_object"):
                assert mine == theirs
        # JSON.stringify form on the wire
        for m in sent:
            if isinstance(m, str) and m.startswith("{"):
                assert m == protocol.dumps(json.loads(m))
    tok = [json.loads(m) for m in tb.sent if isinstance(m, str) and "authentication_token" in m]
    assert tok == [{"command": "authentication_token", "token": inv.token}]


def test_repeated_pairing_writes_nothing(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        ra, rb, _, _ = _pair(a, b, reg, pairing.create_invitation(reg, a, URL_A))
        assert isinstance(ra, pairing.PairingResult) and ra.contact.written
        assert rb.contact.written
        before = store_dump(a), store_dump(b)
        ra2, rb2, _, _ = _pair(a, b, reg, pairing.create_invitation(reg, a, URL_A))
        assert isinstance(ra2, pairing.PairingResult), ra2
        assert ra2.contact.written == () and rb2.contact.written == ()
        assert ra2.contact == pairing.StoredContact(**{**ra.contact.__dict__, "written": ()})
        assert (store_dump(a), store_dump(b)) == before
        # also the same identity stored directly
        assert pairing.store_identity(a, ra.identity).written == ()
        assert store_dump(a) == before[0]


def test_a_new_url_makes_a_new_profile_version(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        ra, _, _, _ = _pair(a, b, reg, pairing.create_invitation(reg, a, URL_A))
        ra2, _, _, _ = _pair(a, b, reg, pairing.create_invitation(reg, a, URL_A),
                             b_kw={"url": "ws://127.0.0.1:9999"})
        assert ra2.contact.profile != ra.contact.profile
        assert ra2.contact.profile_id == ra.contact.profile_id
        assert len(versions.history(a.store, ra.contact.profile_id)) == 2
        assert versions.current(a.store, ra.contact.profile_id)["communicationEndpoint"] == [
            ra2.contact.endpoint]


# --------------------------------------------------------------------------------------------
# Refusals: both stores unchanged


def _refused(a: Instance, b: Instance, reg: TokenRegistry, inv: Invitation,
             **kw: Any) -> tuple[Any, Any, Any, Any]:
    before = store_dump(a), store_dump(b)
    ra, rb, ta, tb = _pair(a, b, reg, inv, **kw)
    assert (store_dump(a), store_dump(b)) == before, "a refused pairing wrote something"
    return ra, rb, ta, tb


def _token_refused(ra: Any, rb: Any, tb: Any, text: str) -> None:
    assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-TOKEN", ra
    assert isinstance(ra, PermissionError)
    assert text in str(ra)
    assert isinstance(rb, ProtocolError) and rb.code == "LAMA-PROTO-CLOSED", rb
    assert tb.close_reason is not None and tb.close_reason.startswith("Error: ")
    assert text in tb.close_reason


def test_unknown_token(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        pairing.create_invitation(reg, a, URL_A)
        wrong = Invitation(pairing.make_token(), a.instance_public_key.hex(), URL_A)
        ra, rb, ta, tb = _refused(a, b, reg, wrong)
        _token_refused(ra, rb, tb, "unknown")
        assert len(reg) == 1


def test_expired_token(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        clock = Clock()
        reg = TokenRegistry(lifetime=60, clock=clock)
        inv = pairing.create_invitation(reg, a, URL_A)
        clock.now += 59.9
        assert reg.valid(inv.token)
        clock.now += 0.1
        assert not reg.valid(inv.token)
        ra, rb, ta, tb = _refused(a, b, reg, inv)
        _token_refused(ra, rb, tb, "unknown")
        inv2 = pairing.create_invitation(reg, a, URL_A, lifetime=5)
        clock.now += 5
        ra, rb, ta, tb = _refused(a, b, reg, inv2)
        assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-TOKEN"


def test_reused_token(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        ra, _, _, _ = _pair(a, b, reg, inv)
        assert isinstance(ra, pairing.PairingResult)
        ra, rb, ta, tb = _refused(a, c, reg, inv)
        _token_refused(ra, rb, tb, "used already")
        ra, rb, ta, tb = _refused(a, b, reg, inv)
        _token_refused(ra, rb, tb, "used already")


def test_invalidated_tokens(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv1 = pairing.create_invitation(reg, a, URL_A)
        inv2 = pairing.create_invitation(reg, a, URL_A)
        inv3 = pairing.create_invitation(reg, a, URL_A)
        assert reg.invalidate(inv1.token) and not reg.invalidate(inv1.token)
        ra, rb, _, tb = _refused(a, b, reg, inv1)
        _token_refused(ra, rb, tb, "unknown")
        reg.invalidate_all()
        assert len(reg) == 0
        for inv in (inv2, inv3):
            ra, rb, _, tb = _refused(a, b, reg, inv)
            _token_refused(ra, rb, tb, "unknown")


def test_token_of_another_person(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, c, URL_A)  # c's token, presented to a
        inv = Invitation(inv.token, a.instance_public_key.hex(), URL_A)
        ra, rb, _, tb = _refused(a, b, reg, inv)
        _token_refused(ra, rb, tb, "another person")
        assert reg.valid(inv.token)  # still c's


def test_missing_token(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        pairing.create_invitation(reg, a, URL_A)

        async def invitee(tb: Any) -> Any:
            peer = await protocol.initiate(tb, b, "pairing", timeout=3)
            del peer
            await protocol.send_json(tb, {"command": "authentication_token"})
            return await tb.recv()

        ra, rb, _, tb = _refused(a, b, reg, Invitation("x", "00" * 32, URL_A), invitee=invitee)
        assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-TOKEN"
        assert rb is None


def test_invitation_for_another_key(tmp_path: Path) -> None:
    """The inviter's identity names an instance key that is not the invitation's: the invitee
    refuses it (in a real connection the handshake to that key fails first)."""
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        other, _ = core.box_keypair()
        lying_inv = Invitation(inv.token, other.hex(), URL_A)
        ra, rb, ta, tb = _refused(a, b, reg, lying_inv)
        assert isinstance(rb, PairingError) and rb.code == "LAMA-PAIR-IDENTITY", rb
        assert "invitation" in str(rb)
        assert isinstance(ra, ProtocolError), ra
        assert reg.valid(inv.token)  # released: the inviter's pairing failed


def _lying_identity(b: Instance, field: str, value: Any) -> Callable[..., Awaitable[Any]]:
    async def invitee(tb: Any) -> Any:
        peer = await protocol.initiate(tb, b, "pairing", timeout=3)
        await protocol.send_json(tb, {"command": "authentication_token", "token": TOKEN[0]})
        await protocol.recv_command(tb, "identity", 3)
        ident: dict[str, Any] = pairing.identity_of(b, URL_B)
        if value is DELETE:
            del ident[field]
        else:
            ident[field] = value
        await protocol.send_json(tb, {"command": "identity", "obj": ident})
        del peer
        return await tb.recv()

    return invitee


DELETE = object()
TOKEN: list[str] = [""]


@pytest.mark.parametrize("field,value", [
    ("personEmail", "mallory@example.org"),
    ("instanceName", "another-instance"),
    ("personKeyPublic", "11" * 32),
    ("personSignKeyPublic", "22" * 32),
    ("instanceKeyPublic", "33" * 32),
    ("instanceSignKeyPublic", "zz" * 32),
    ("personKeyPublic", "abc"),
    ("type", "private"),
    ("url", 7),
    ("personEmail", DELETE),
])
def test_lying_invitee_is_refused(tmp_path: Path, field: str, value: Any) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        TOKEN[0] = inv.token
        ra, rb, ta, tb = _refused(a, b, reg, inv, invitee=_lying_identity(b, field, value))
        assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-IDENTITY", ra
        assert ta.close_reason is not None and ta.close_reason.startswith("Error: ")
        assert reg.valid(inv.token)  # given back: the honest invitee can still use it
        ra, rb, _, _ = _pair(a, b, reg, inv)
        assert isinstance(ra, pairing.PairingResult), ra


def test_identity_of_another_peer_is_refused(tmp_path: Path) -> None:
    """B proves B but sends C's whole identity (e.g. to plant C's endpoint)."""
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)

        async def invitee(tb: Any) -> Any:
            await protocol.initiate(tb, b, "pairing", timeout=3)
            await protocol.send_json(tb, {"command": "authentication_token", "token": inv.token})
            await protocol.recv_command(tb, "identity", 3)
            await protocol.send_json(tb, {"command": "identity",
                                          "obj": pairing.identity_of(c, URL_B)})
            return await tb.recv()

        ra, _, _, _ = _refused(a, b, reg, inv, invitee=invitee)
        assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-IDENTITY"


def test_instance_key_must_be_the_handshake_key(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        other, _ = core.box_keypair()
        ra, rb, _, _ = _refused(a, b, reg, inv, a_kw={"handshake_key": other})
        assert isinstance(ra, PairingError) and ra.code == "LAMA-PAIR-IDENTITY"
        assert "encrypted connection" in str(ra)
        # an upstream invitee dials with its person key (conn §10.1): accepted
        ra, rb, _, _ = _pair(a, b, reg, inv, a_kw={"handshake_key": b.person_public_key})
        assert isinstance(ra, pairing.PairingResult), ra


def test_lying_inviter_is_refused(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)

        async def inviter(ta: Any) -> Any:
            await protocol.accept(ta, a, timeout=3)
            await protocol.recv_command(ta, "authentication_token", 3)
            ident = pairing.identity_of(a, URL_A)
            ident["personSignKeyPublic"] = "44" * 32
            await protocol.send_json(ta, {"command": "identity", "obj": ident})
            return await ta.recv()

        ra, rb, _, tb = _refused(a, b, reg, inv, inviter=inviter)
        assert isinstance(rb, PairingError) and rb.code == "LAMA-PAIR-IDENTITY", rb
        assert ra is None


def test_stray_synchronisation_is_skipped_and_not_answered(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    with a, b:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)

        async def inviter(ta: Any) -> Any:
            peer = await protocol.accept(ta, a, timeout=3)
            await protocol.recv_command(ta, "authentication_token", 3)
            await ta.send("synchronisation")
            await protocol.send_json(ta, {"command": "identity",
                                          "obj": pairing.identity_of(a, URL_A)})
            await ta.send("synchronisation")
            await protocol.recv_command(ta, "identity", 3)
            del peer
            try:
                return await asyncio.wait_for(ta.recv(), 0.3)
            except asyncio.TimeoutError:
                return "nothing"

        ra, rb, _, tb = _pair(a, b, reg, inv, inviter=inviter)
        assert isinstance(rb, pairing.PairingResult), rb
        assert ra == "nothing"
        assert "synchronisation" not in tb.sent


def test_pairing_needs_a_pairing_peer(tmp_path: Path) -> None:
    a = make(tmp_path, "a")
    with a:
        ta, _ = pair()
        peer = protocol.PeerIdentity("chum", False, a.person_id, {}, {}, a.person_keys,
                                     a.person_public_key, a.person_public_sign_key,
                                     a.instance_id, {}, False)

        async def main() -> None:
            with pytest.raises(InvalidArgumentError):
                await pairing.accept_pairing(ta, a, TokenRegistry(), peer)
            with pytest.raises(InvalidArgumentError):
                await pairing.accept_pairing(ta, a, TokenRegistry(), "not a peer")

        run(main)


# --------------------------------------------------------------------------------------------
# One-time tokens under concurrency


def test_concurrent_double_use_of_one_token(tmp_path: Path) -> None:
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)
        before_a = store_dump(a)

        async def one(peer_inst: Instance) -> tuple[Any, Any]:
            ta, tb = pair()

            async def side_a() -> Any:
                peer = await protocol.accept(ta, a, timeout=3)
                return await pairing.accept_pairing(
                    ta, a, reg, peer, url=URL_A, handshake_key=peer_inst.instance_public_key,
                    timeout=3)

            async def side_b() -> Any:
                peer = await protocol.initiate(tb, peer_inst, "pairing", timeout=3)
                return await pairing.connect_pairing(tb, peer_inst, inv, peer, url=URL_B,
                                                     timeout=3)

            r = await asyncio.gather(side_a(), side_b(), return_exceptions=True)
            return r[0], r[1]

        async def main() -> list[tuple[Any, Any]]:
            return list(await asyncio.gather(one(b), one(c)))

        results = run(main)
        ok = [r for r in results if isinstance(r[0], pairing.PairingResult)]
        refused = [r for r in results if isinstance(r[0], PairingError)]
        assert len(ok) == 1 and len(refused) == 1, results
        assert refused[0][0].code == "LAMA-PAIR-TOKEN"
        winner = ok[0][0].remote_person
        loser = c if winner == b.person_id else b
        assert not a.store.has(loser.person_id)
        assert store_dump(a) != before_a


def test_a_token_in_use_is_refused_and_given_back_on_failure(tmp_path: Path) -> None:
    """An invitee that presents the token and stalls holds it; a second one is refused while
    it runs; when the first fails (timeout), the token is usable again."""
    a, b, c = make(tmp_path, "a"), make(tmp_path, "b"), make(tmp_path, "c")
    with a, b, c:
        reg = TokenRegistry()
        inv = pairing.create_invitation(reg, a, URL_A)

        async def main() -> tuple[Any, Any, Any]:
            t1a, t1b = pair()
            stalled = asyncio.Event()

            async def first_a() -> Any:
                peer = await protocol.accept(t1a, a, timeout=3)
                return await pairing.accept_pairing(t1a, a, reg, peer, timeout=0.5)

            async def first_b() -> None:
                await protocol.initiate(t1b, c, "pairing", timeout=3)
                await protocol.send_json(t1b, {"command": "authentication_token",
                                               "token": inv.token})
                await protocol.recv_command(t1b, "identity", 3)
                stalled.set()
                await t1b.recv()  # never sends its identity

            async def second() -> tuple[Any, Any]:
                await stalled.wait()
                t2a, t2b = pair()

                async def sa() -> Any:
                    peer = await protocol.accept(t2a, a, timeout=3)
                    return await pairing.accept_pairing(t2a, a, reg, peer, timeout=3)

                async def sb() -> Any:
                    peer = await protocol.initiate(t2b, b, "pairing", timeout=3)
                    return await pairing.connect_pairing(t2b, b, inv, peer, timeout=3)

                r = await asyncio.gather(sa(), sb(), return_exceptions=True)
                return r[0], r[1]

            r = await asyncio.gather(first_a(), first_b(), second(), return_exceptions=True)
            return r[0], r[2], reg.valid(inv.token)

        first, second, valid_after = run(main)
        assert isinstance(first, ProtocolError) and first.code == "LAMA-PROTO-TIMEOUT", first
        assert isinstance(second[0], PairingError) and "another pairing" in str(second[0])
        assert valid_after
        ra, rb, _, _ = _pair(a, b, reg, inv)
        assert isinstance(ra, pairing.PairingResult), ra


def test_registry_claims_are_one_time_across_threads(tmp_path: Path) -> None:
    import threading

    reg = TokenRegistry()
    person = "ab" * 32
    tok = reg.create(person)
    wins: list[str] = []
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        try:
            wins.append(reg.claim(tok, person))
        except PairingError as e:
            errors.append(e.code)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins == [tok] and errors == ["LAMA-PAIR-TOKEN"] * 7


# --------------------------------------------------------------------------------------------
# Tokens, invitations, links, QR


def test_tokens() -> None:
    toks = {pairing.make_token() for _ in range(200)}
    assert len(toks) == 200
    alphabet = set(string.digits + string.ascii_letters + "_-")
    for t in toks:
        assert len(t) == 64 and set(t) <= alphabet
    assert set("".join(toks)) == alphabet  # every character shows up in 12,800 draws
    assert pairing.DEFAULT_LIFETIME == 900
    assert TokenRegistry().lifetime == 900
    with pytest.raises(InvalidArgumentError):
        TokenRegistry(lifetime=0)
    reg = TokenRegistry()
    assert reg.create("ab" * 32, "my-own-token") == "my-own-token"
    with pytest.raises(InvalidArgumentError):
        reg.create("ab" * 32, "my-own-token")
    with pytest.raises(LamaError):
        reg.create("not a hash")


RECORDED_INVITATION = json.loads(
    next(e for e in TRANSCRIPT if str(e["message"]).startswith("invitation written: "))[
        "message"].split(": ", 1)[1])


def test_invitation_json_is_the_reference_form() -> None:
    inv = pairing.parse_invitation(RECORDED_INVITATION)
    text = next(e for e in TRANSCRIPT if str(e["message"]).startswith("invitation written: "))[
        "message"].split(": ", 1)[1]
    assert inv.to_text() == text
    assert list(inv.to_json()) == ["token", "publicKey", "url"]
    assert inv.public_key_bytes.hex() == RECORDED_INVITATION["publicKey"]


def test_encode_uri_component_matches_javascript() -> None:
    # values of JavaScript's encodeURIComponent (ECMA-262 §19.2.6.5)
    cases = {
        "": "",
        "abcXYZ019": "abcXYZ019",
        "-_.!~*'()": "-_.!~*'()",
        "a b": "a%20b",
        '{"token":"x"}': "%7B%22token%22%3A%22x%22%7D",
        "/?:@&=+$,#;": "%2F%3F%3A%40%26%3D%2B%24%2C%23%3B",
        "é": "%C3%A9",
        "😀": "%F0%9F%98%80",
        "%": "%25",
        "\x7f\n": "%7F%0A",
        "[]^`{|}\\<>\"": "%5B%5D%5E%60%7B%7C%7D%5C%3C%3E%22",
    }
    for raw, enc in cases.items():
        assert pairing.encode_uri_component(raw) == enc, raw
        assert pairing.decode_uri_component(enc) == raw
    with pytest.raises(InvalidArgumentError):
        pairing.encode_uri_component("\ud800")


def test_link_round_trip_and_spec_form() -> None:
    inv = pairing.parse_invitation(RECORDED_INVITATION)
    link = inv.to_link("edda.example")
    assert link.startswith(
        "https://edda.example/invites/invitePartner/?invited=true#%7B%22token%22%3A")
    assert link == ("https://edda.example/invites/invitePartner/?invited=true#"
                    + pairing.encode_uri_component(inv.to_text()))
    assert "%22publicKey%22%3A%22" + inv.public_key + "%22" in link
    assert "%22url%22%3A%22ws%3A%2F%2F127.0.0.1%3A8765%22%7D" in link
    assert pairing.parse_invitation(link) == inv
    dev = inv.to_link("edda.example", device=True)
    assert "/invites/inviteDevice/?invited=true#" in dev
    assert pairing.parse_invitation(dev) == inv
    # uvc's stray slash, the raw JSON, a dict, an Invitation
    uvc = link.replace("?invited=true#", "?invited=true/#")
    assert pairing.parse_invitation(uvc) == inv
    assert pairing.parse_invitation(inv.to_text()) == inv
    assert pairing.parse_invitation(inv) is inv
    # a token with characters that need encoding survives
    odd = Invitation("a b/ü#%", "AB" * 32, "wss://comm10.dev.refinio.one")
    assert pairing.parse_invitation(odd.to_link()) == odd
    assert pairing.parse_invitation(odd.to_link()).public_key == "AB" * 32


@pytest.mark.parametrize("bad", [
    "https://x/#%7B%22token%22", "https://x/#%ZZ", "https://x/#%C3", "no json here", "[1]",
    '{"token":"t","publicKey":"' + "00" * 32 + '"}',
    '{"token":"t","publicKey":"' + "00" * 32 + '","url":"u","extra":1}',
    '{"token":"t","publicKey":"00","url":"u"}',
    '{"token":"","publicKey":"' + "00" * 32 + '","url":"u"}',
    '{"token":5,"publicKey":"' + "00" * 32 + '","url":"u"}',
    '{"token":"t","publicKey":"' + "zz" * 32 + '","url":"u"}',
    '{"token":"t","publicKey":"' + "00" * 32 + '","url":null}',
])
def test_bad_invitations(bad: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        pairing.parse_invitation(bad)
    assert e.value.code == "LAMA-PAIR-INVITE"
    assert isinstance(e.value, ValueError)


def test_qr_text_and_png() -> None:
    import segno
    inv = pairing.parse_invitation(RECORDED_INVITATION)
    qr = inv.qr()
    assert qr.designator.endswith("-M")
    size = qr.symbol_size(scale=1, border=4)[0]
    text = inv.qr_text()
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == (size + 1) // 2
    assert all(len(line) == size for line in lines)
    assert set(text) <= set(" ▀▄█\n")
    # the text is the matrix: top-left finder pattern after the 4-module quiet zone
    matrix = [list(r) for r in qr.matrix_iter(border=4)]
    for y in range(0, size - 1, 2):
        for x in range(size):
            ch = lines[y // 2][x]
            assert (ch in "▀█") == bool(matrix[y][x]) and (ch in "▄█") == bool(matrix[y + 1][x])
    png = inv.qr_png(scale=2)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # the QR holds the link (segno re-encodes the same data to the same matrix)
    again = segno.make_qr(inv.to_link(), error="m")
    assert list(again.matrix) == list(qr.matrix)


# --------------------------------------------------------------------------------------------
# Over a real encrypted WebSocket connection (docs/connections.md §1)


def test_pairing_then_chum_over_encrypted_websocket(tmp_path: Path) -> None:
    """B dials A's direct listener with encrypted_connect (its instance key as source, the
    invitation's key as target), pairs, and then opens a `chum` connection on which both sides
    know each other (expected person and instance, keys on record)."""
    a, b = make_a(tmp_path), make_b(tmp_path)
    with a, b:
        reg = TokenRegistry()
        a_pair = (a.instance_public_key, a.secret_keys("instance").encryption_secret)
        b_secret = b.secret_keys("instance").encryption_secret

        async def main() -> None:
            listener = await core.ws_listen("127.0.0.1", 0)
            url = f"ws://127.0.0.1:{listener.port}"
            inv = pairing.parse_invitation(pairing.create_invitation(reg, a, url).to_link())
            try:
                async def side_a() -> Any:
                    conn = await core.encrypted_accept(await listener.accept(), [a_pair])
                    assert conn.remote_key == b.instance_public_key and not conn.initiator
                    peer = await protocol.accept(
                        conn, a, lambda g: Accept() if g == "pairing" else None, timeout=5)
                    res = await pairing.accept_pairing(conn, a, reg, peer, url=url,
                                                       handshake_key=conn.remote_key, timeout=5)
                    return res, conn

                async def side_b() -> Any:
                    conn = await core.encrypted_connect(url, b.instance_public_key, b_secret,
                                                        inv.public_key_bytes)
                    assert conn.remote_key == a.instance_public_key and conn.initiator
                    peer = await protocol.initiate(conn, b, "pairing", timeout=5)
                    res = await pairing.connect_pairing(conn, b, inv, peer, url="ws://b.invalid",
                                                        handshake_key=conn.remote_key, timeout=5)
                    return res, conn

                (ra, ca), (rb, cb) = await asyncio.gather(side_a(), side_b())
                assert isinstance(ra, pairing.PairingResult)
                assert isinstance(rb, pairing.PairingResult)
                assert (ra.remote_person, rb.remote_person) == (b.person_id, a.person_id)
                assert ca.stats()["messages_received"] >= 6
                await cb.close("Close called.")
                await ca.close()
                _check_contact(a, b, "ws://b.invalid")
                _check_contact(b, a, url)
                assert not reg.valid(inv.token)

                # the chum connection: each side expects the other's ids on record
                [(_, ep_b)] = contacts.endpoints_of_person(a.store, b.person_id)
                [(_, ep_a)] = contacts.endpoints_of_person(b.store, a.person_id)

                async def chum_a() -> Any:
                    conn = await core.encrypted_accept(await listener.accept(), [a_pair])
                    peer = await protocol.accept(conn, a, lambda g: Accept(
                        expected_person=ep_b["personId"], expected_instance=ep_b["instanceId"]),
                        timeout=5)
                    await protocol.synchronise(conn, timeout=5)
                    return peer, conn

                async def chum_b() -> Any:
                    ikeys = b.store.get_object(ep_a["instanceKeys"])
                    conn = await core.encrypted_connect(ep_a["url"], b.instance_public_key,
                                                        b_secret, bytes.fromhex(ikeys["publicKey"]))
                    peer = await protocol.initiate(conn, b, "chum", timeout=5,
                                                   expected_person=ep_a["personId"],
                                                   expected_instance=ep_a["instanceId"])
                    await protocol.synchronise(conn, timeout=5)
                    return peer, conn

                (pa, ca), (pb, cb) = await asyncio.gather(chum_a(), chum_b())
                assert pa.known and pb.known and pa.stored == pb.stored == ()
                assert (pa.person_id, pb.person_id) == (b.person_id, a.person_id)
                await cb.close()
                await ca.close()
            finally:
                await listener.close()

        run(main, timeout=60)


def test_reverse_maps_find_endpoints_stored_before_they_were_enabled(tmp_path: Path) -> None:
    """An endpoint (and its Profile) stored before lama.connect ever enabled its reverse maps
    in that store - e.g. imported by CHUM, or written by an older lama - is found afterwards:
    enabling a map indexes what is already stored (docs/connections.md §3.1)."""
    store = core.Store(str(tmp_path / "plain-store"))
    try:
        person = core.id_hash({"$type$": "Person", "email": "old@example.org"})
        instance = core.id_hash({"$type$": "Instance", "name": "old", "owner": person})
        pk = {"$type$": "Keys", "owner": person, "publicKey": "11" * 32, "publicSignKey": "22" * 32}
        ik = {"$type$": "Keys", "owner": instance, "publicKey": "33" * 32,
              "publicSignKey": "44" * 32}
        (pkh, _, _), (ikh, _, _) = store.put_objects([pk, ik])
        ep = {"$type$": "OneInstanceEndpoint", "personId": person, "instanceId": instance,
              "personKeys": pkh, "instanceKeys": ikh, "url": "ws://127.0.0.1:1"}
        (eph, _, _), = store.put_objects([ep])
        profile = {"$type$": "Profile", "profileId": "default", "personId": person,
                   "owner": person, "communicationEndpoint": [eph], "personDescription": []}
        (profh, _, profid), = store.put_objects([profile])
        assert store.referencing(person, "OneInstanceEndpoint") == []
        contacts.enable_reverse_maps(store)
        assert contacts.endpoints_of_person(store, person) == [(eph, ep)]
        assert contacts.endpoints_of_instance(store, instance) == [(eph, ep)]
        assert store.referencing(ikh, "OneInstanceEndpoint") == [eph]
        assert store.referencing(eph, "Profile") == [profh]
        assert store.referencing(person, "Profile", id_objects=True) == [profid]
    finally:
        store.close()


def test_instance_enables_the_contact_maps_when_created(tmp_path: Path) -> None:
    """Instance.create/open enable lama.connect's reverse maps (so nothing needs indexing
    later and every endpoint is in them from the start)."""
    inst = Instance.create(tmp_path, email="maps@example.org", instance_name="maps",
                           secret="maps-secret")
    try:
        ep = {"$type$": "OneInstanceEndpoint", "personId": inst.person_id,
              "instanceId": inst.instance_id, "personKeys": inst.person_keys,
              "instanceKeys": inst.instance_keys, "url": "ws://127.0.0.1:1"}
        (eph, _, _), = inst.store.put_objects([ep])
        assert inst.store.referencing(inst.person_id, "OneInstanceEndpoint") == [eph]
    finally:
        inst.close()
