"""A contact learns of my new device (issue 10; docs/connections.md §3.5, app-layer.md §1.2,
§1.5, §5.6 B5): when a device of Alice joins, Alice's profile gains the device's
OneInstanceEndpoint with a proof (Alice's Signature over the device's instance Keys), the
profile and the proof reach Bob (her contact) through the grants that share her profile with
him, and Bob's connection manager dials the device - so the device and Bob talk while Alice's
first device is off. An endpoint whose keys are not proven for Alice is never dialled."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_device import SECRET, SECRET2, alice_and_bob, texts, until  # noqa: E402

from lama import App, AppConfig  # noqa: E402
from lama._core import core  # noqa: E402
from lama import access  # noqa: E402
from lama.chat import one_to_one_id  # noqa: E402
from lama.connect import contacts, profile  # noqa: E402
from lama.identity import certificates  # noqa: E402
from lama.identity.keychain import SecretKeys  # noqa: E402
from lama.objects import versions  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def _forge(app: App, url: str, *, own_person_keys: bool) -> tuple[str, bytes]:
    """Objects claiming an instance of ``app``'s person with keys nobody proved for it, the
    kind anyone who ships objects to a contact can write: a OneInstanceEndpoint (Alice's
    person id, a made-up instance) whose instance Keys carry a Signature "by Alice" made with
    another key; with ``own_person_keys`` False also its person Keys are made up (owner Alice,
    another key) and sign the instance Keys. Returns (endpoint hash, instance public key)."""
    store = app.instance.store
    A = app.person_id
    mallory, fake_person = SecretKeys.generate(), SecretKeys.generate()
    inst = {"$type$": "Instance", "name": f"evil-{own_person_keys}", "owner": A}
    inst_id = core.id_hash(inst)
    store.put_microdata([(core.id_microdata(inst), inst_id)])
    [(ik, _s, _)] = store.put_objects([mallory.keys_object(inst_id)])
    if own_person_keys:
        pk = str(app.instance.person_keys)
        signer = mallory  # "issuer Alice", but not Alice's key
    else:
        [(pk, _s, _)] = store.put_objects([fake_person.keys_object(A)])
        signer = fake_person  # verifies with the made-up person Keys
    sig = certificates.create_signature(store, A, ik, signer).hash
    [(ep, _s, _)] = store.put_objects([{
        "$type$": "OneInstanceEndpoint", "personId": A, "instanceId": inst_id,
        "personKeys": pk, "instanceKeys": ik, "url": url}])
    assert sig
    return str(ep), bytes(mallory.public_key)


def test_a_contact_learns_of_my_new_device_and_talks_to_it(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await alice_and_bob(tmp_path, server)
        phone: App | None = None
        try:
            A, B = alice.person_id, bob.person_id
            topic = one_to_one_id(A, B)
            await alice.send(B, "from laptop")
            await until(lambda: texts(bob, A) == ["from laptop"], "bob got the first message")
            laptop_key = bytes(alice.instance.instance_public_key)
            assert {e.remote_key for e in bob.manager.known_endpoints()} == {laptop_key}

            # forged endpoints of Alice reach Bob (the laptop stands in for any peer that
            # ships objects to him): they must never be dialled
            forged = [_forge(alice, server.url, own_person_keys=x) for x in (True, False)]
            for ep, _key in forged:
                astore = alice.instance.store
                for h in (ep, *certificates.signatures_for(
                        astore, astore.get_object(ep)["instanceKeys"])):
                    access.grant(astore, object=h, persons=[B])

            link = await alice.invite_device()
            phone = await App.join_device(tmp_path / "phone", link, secret=SECRET2,
                                          instance_name="alice-phone")
            await alice.wait_device(30, invitation=link)
            phone_key = bytes(phone.instance.instance_public_key)
            phone_inst = str(phone.instance.instance_id)
            # my profile on the laptop lists both devices, each proven by my Signature
            astore = alice.instance.store
            mine = versions.current(astore, profile.own_profile_id(alice.instance))
            insts = {astore.get_object(e)["instanceId"]: e
                     for e in mine["communicationEndpoint"]}
            assert set(insts) == {str(alice.instance.instance_id), phone_inst}
            for e in insts.values():
                assert contacts.endpoint_proven(astore, A, bytes(alice.instance
                                                                 .person_public_sign_key),
                                                astore.get_object(e))

            # Bob learns the phone's endpoint from Alice's profile (before the phone runs)
            await until(lambda: phone_key in {e.remote_key for e in
                                              bob.manager.known_endpoints()},
                        "bob learnt the phone's endpoint")
            bstore = bob.instance.store
            await until(lambda: all(bstore.has(ep) for ep, _k in forged),
                        "the forged endpoints reached bob")
            known = {e.remote_key for e in bob.manager.known_endpoints()}  # a scan after them
            assert known == {laptop_key, phone_key}, "a forged endpoint is routed"
            assert bob.contact(A).instances == tuple(sorted(
                [str(alice.instance.instance_id), phone_inst]))

            await phone.start()
            await until(lambda: bob.manager.connected(phone_key), "bob connected to the phone")
            await until(lambda: texts(phone, topic) == ["from laptop"],
                        "the phone has the conversation")

            # the laptop stops: the phone and Bob talk directly
            await alice.close()
            await phone.send(B, "from phone, laptop off")
            await until(lambda: "from phone, laptop off" in texts(bob, A),
                        "the phone's message reached bob")
            await bob.send(A, "bob to the phone")
            await until(lambda: "bob to the phone" in texts(phone, topic),
                        "bob's reply reached the phone")

            # Bob restarts while the laptop is still off: the stored, proven endpoint of the
            # phone is routed at start (its proof persisted with it)
            await bob.close()
            bob = await App.open(tmp_path / "bob", SECRET,
                                 config=AppConfig(comm_server_url=server.url))
            await bob.start()
            await until(lambda: bob.manager.connected(phone_key), "bob reconnected to the phone")
            await phone.send(B, "phone after bob's restart")
            await until(lambda: "phone after bob's restart" in texts(bob, A),
                        "the phone's message reached the restarted bob")

            # nothing duplicated: one contact each side, each message once, same order
            assert [str(c.person_id) for c in bob.contacts()] == [A]
            assert [str(c.person_id) for c in phone.contacts()] == [B]
            want = ["from laptop", "from phone, laptop off", "bob to the phone",
                    "phone after bob's restart"]
            assert texts(bob, A) == want
            await until(lambda: texts(phone, topic) == want, "the phone converged")
            assert [m.id for m in bob.history(A)] == [m.id for m in phone.history(topic)]
            # no forged key ever got a connection attempt from Bob
            peers = bob.manager.connection_health()["peers"]
            assert {bytes.fromhex(k) for k in peers} == {laptop_key, phone_key}
            # the phone learnt where Bob listens (Bob's profile): it dials him too
            bob_key = bytes(bob.instance.instance_public_key)
            await until(lambda: any(e.remote_key == bob_key and e.url for e in
                                    phone.manager.known_endpoints()),
                        "the phone knows bob's url")
        finally:
            for app in (phone, bob, alice):
                if app is not None:
                    await app.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 220))


def test_endpoint_proofs(tmp_path: Path) -> None:
    """contacts.endpoint_proven, rule by rule (in-process instances, no network)."""
    from chat_util import pair

    from lama.chat import Chat
    from lama.identity.instance import Instance

    mk = lambda n: Instance.create(tmp_path / n, email=f"{n}@example.org",  # noqa: E731
                                   instance_name=f"inst-{n}", secret="s")
    a, b = mk("alice"), mk("bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    try:
        pair(ca, cb)
        bkey = bytes(b.person_public_sign_key)
        store = b.store

        def proven(ep: dict[str, Any]) -> bool:
            return contacts.endpoint_proven(store, str(b.person_id), bkey, ep)

        [(_h, paired)] = contacts.endpoints_of_person(store, str(a.person_id))
        assert proven(paired)  # pairing: both Keys signed by bob
        # a device of alice: its instance Keys signed by alice's person key
        dev = SecretKeys.generate()
        inst = {"$type$": "Instance", "name": "dev", "owner": str(a.person_id)}
        iid = core.id_hash(inst)
        store.put_microdata([(core.id_microdata(inst), iid)])
        [(ik, _s, _)] = store.put_objects([dev.keys_object(iid)])
        ep = {"$type$": "OneInstanceEndpoint", "personId": str(a.person_id), "instanceId": iid,
              "personKeys": str(a.person_keys), "instanceKeys": ik}
        assert not proven(ep)  # no proof yet
        certificates.create_signature(store, str(a.person_id), ik, SecretKeys.generate())
        assert not proven(ep)  # a "signature by alice" that is not alice's
        certificates.create_signature(store, str(a.person_id), ik, a.secret_keys("person"))
        assert proven(ep)
        assert not proven({**ep, "personId": str(b.person_id)})  # keys of another owner
        assert not proven({**ep, "instanceId": "0" * 64})
        # alice's keys signing for carol's person: carol's keys are not vouched for by bob
        carol = SecretKeys.generate()
        [(ck, _s, _)] = store.put_objects([carol.keys_object(str(b.person_id))])
        assert not proven({**ep, "personKeys": ck})
        # my own person: my own person Keys, instance Keys signed by me
        own = profile.own_endpoint(b, "ws://127.0.0.1:1")
        assert not proven({**own, "instanceKeys": ik, "instanceId": iid})  # alice's proof
        assert not proven(own)  # not published yet: no Signature over my instance Keys
        h = profile.publish_own_endpoint(b, "ws://127.0.0.1:1")
        assert proven(own) and store.get_object(h) == own
        mine = versions.current(store, profile.own_profile_id(b))
        assert mine["communicationEndpoint"] == [h]
        # published again (same url): nothing new; another url replaces it
        head = store.get_head(profile.own_profile_id(b))
        profile.publish_own_endpoint(b, "ws://127.0.0.1:1")
        assert store.get_head(profile.own_profile_id(b)) == head
        # the new endpoint is written in the commit of the profile version that lists it
        # (one write transaction at the first start after a url change, issue 10): the
        # commit signal counts the commits that appended events
        signal = store.commit_signal()
        signal.clear()
        h2 = profile.publish_own_endpoint(b, "ws://127.0.0.1:2")
        assert os.eventfd_read(signal.fileno()) == 1
        signal.close()
        mine = versions.current(store, profile.own_profile_id(b))
        assert mine["communicationEndpoint"] == [h2]
        assert store.get_object(h2) == profile.own_endpoint(b, "ws://127.0.0.1:2")
        # shared with the contact (chat's on_paired) and my person, proofs too
        readers, _g = access.grants(store, id=profile.own_profile_id(b))
        assert set(readers) == {str(a.person_id), str(b.person_id)}
        proof = contacts.signed_by(store, str(b.instance_keys), str(b.person_id), bkey)
        assert proof is not None
        assert set(access.grants(store, object=proof)[0]) == set(readers)
        cb.remove_contact(str(a.person_id))
        assert access.grants(store, id=profile.own_profile_id(b))[0] == [str(b.person_id)]
        assert access.grants(store, object=proof)[0] == [str(b.person_id)]
    finally:
        for c in (ca, cb):
            c.close()
            c.instance.close()


def test_an_endpoint_whose_proof_comes_later_is_routed_then(tmp_path: Path) -> None:
    """CHUM may store a device's endpoint before its proof (another root, another batch): the
    manager looks at an unproven endpoint again when what its proof depends on changed, and
    routes it once a valid proof is there - a Signature that does not verify changes nothing."""
    from chat_util import pair

    from lama.chat import Chat
    from lama.connect.manager import ConnectionManager, ManagerConfig
    from lama.identity.instance import Instance

    mk = lambda n: Instance.create(tmp_path / n, email=f"{n}@example.org",  # noqa: E731
                                   instance_name=f"inst-{n}", secret="s")
    a, b = mk("alice"), mk("bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    m = ConnectionManager(b, ManagerConfig(comm_server_url=None, accept_incoming=False))
    try:
        pair(ca, cb)
        store = b.store

        def keys() -> set[bytes]:
            m._scan_endpoints()
            return {e.remote_key for e in m.known_endpoints()}

        assert keys() == {bytes(a.instance_public_key)}
        dev = SecretKeys.generate()
        inst = {"$type$": "Instance", "name": "dev", "owner": str(a.person_id)}
        iid = core.id_hash(inst)
        store.put_microdata([(core.id_microdata(inst), iid)])
        [(ik, _s, _)] = store.put_objects([dev.keys_object(iid)])
        [(ep, _s, _)] = store.put_objects([{
            "$type$": "OneInstanceEndpoint", "personId": str(a.person_id), "instanceId": iid,
            "personKeys": str(a.person_keys), "instanceKeys": ik, "url": "ws://127.0.0.1:1"}])
        assert bytes(dev.public_key) not in keys()
        assert ep in m._unproven
        certificates.create_signature(store, str(a.person_id), ik, dev)  # not alice's key
        assert bytes(dev.public_key) not in keys()
        certificates.create_signature(store, str(a.person_id), ik, a.secret_keys("person"))
        assert bytes(dev.public_key) in keys()
        assert ep not in m._unproven
    finally:
        asyncio.run(m.close())
        for c in (ca, cb):
            c.close()
            c.instance.close()


def test_own_endpoint_and_profile_are_the_reference_objects() -> None:
    """Byte compatibility with the reference (vectors/microdata.json, checked against a ONE
    instance's store): this instance's endpoint as lama.connect.profile builds it is the
    reference's OneInstanceEndpoint of the same ids, Keys and url (same microdata, same hash),
    with and without url; my profile is the reference's default Profile (same ID object, so
    a contact merges their versions; the same microdata without the fork's ``nickname``,
    which lama never emits)."""
    import json
    from types import SimpleNamespace

    vectors = {v["name"]: v for v in json.loads(
        (Path(__file__).parent / "vectors" / "microdata.json").read_text(encoding="utf-8"))}
    ref_prof = vectors["Profile/full"]
    for name, url in (("OneInstanceEndpoint/with-url", "ws://127.0.0.1:8000"),
                      ("OneInstanceEndpoint/no-url", None)):
        ref = vectors[name]
        o = ref["object"]
        me = SimpleNamespace(person_id=o["personId"], instance_id=o["instanceId"],
                             person_keys=o["personKeys"], instance_keys=o["instanceKeys"])
        ep = profile.own_endpoint(me, url)
        assert core.serialize(ep) == ref["microdata"], name
        assert core.object_hash(ep) == ref["hash"], name
        assert profile.own_profile_id(me) == ref_prof["idHash"]
    po = ref_prof["object"]
    p = profile._profile(po["personId"], sorted(po["communicationEndpoint"]),
                         sorted(po["personDescription"]))
    assert core.id_microdata(p) == ref_prof["idMicrodata"]
    without_nickname = ref_prof["microdata"].replace(
        '<span itemprop="nickname">Nicky ✨</span>', "")
    assert without_nickname != ref_prof["microdata"]
    assert core.serialize(p) == without_nickname


def test_a_contact_that_shares_no_profile_still_reaches_the_new_device(tmp_path: Path) -> None:
    """Interop with a contact that lacks the feature's other half (an older lama, or a peer
    that shares no profile): Bob revokes the grants on his profile, so the phone never learns
    where Bob listens (the contacts passed on at the join carry no url) and cannot dial him;
    Bob still learns of the phone from Alice's profile and dials it, so with the laptop off
    they talk over Bob's connection. Alice's side writes nothing Bob would not import (the
    reference's recipes only)."""
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await alice_and_bob(tmp_path, server)
        phone: App | None = None
        try:
            A, B = alice.person_id, bob.person_id
            profile.unshare_own_profile(bob.instance, [A])
            topic = one_to_one_id(A, B)
            link = await alice.invite_device()
            phone = await App.join_device(tmp_path / "phone", link, secret=SECRET2,
                                          instance_name="alice-phone")
            await alice.wait_device(30, invitation=link)
            phone_key = bytes(phone.instance.instance_public_key)
            await phone.start()
            await until(lambda: bob.manager.connected(phone_key), "bob connected to the phone")
            await alice.close()
            await phone.send(B, "phone to bob")
            await until(lambda: texts(bob, A) == ["phone to bob"], "bob got the phone's message")
            await bob.send(A, "bob to phone")
            await until(lambda: texts(phone, topic) == ["phone to bob", "bob to phone"],
                        "the phone got bob's reply")
            # the phone knows Bob only without url: it never dialled him
            bob_key = bytes(bob.instance.instance_public_key)
            assert [e.url for e in phone.manager.known_endpoints()
                    if e.remote_key == bob_key] == [None]
        finally:
            for app in (phone, bob, alice):
                if app is not None:
                    await app.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 200))
