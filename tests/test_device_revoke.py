"""Removing a device of mine (issue 10; docs/connections.md §3.5 "Removing a device") and
which keys ``Chat.verify`` trusts (docs/chat.md §4).

Alice has a laptop and a phone, Bob is her contact. The laptop removes the phone (a lost
phone): Alice's person revokes the phone's instance Keys (a RelationCertificate signed by her,
shared like her profile), her profile lists the phone no more, and the managers - the
laptop's at once, Bob's when the revocation arrives - stop dialling the phone, close its
connections and refuse it; the phone's earlier messages stay; the laptop and Bob still chat.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_device import SECRET, SECRET2, alice_and_bob, texts, until  # noqa: E402

from lama import App, AppConfig  # noqa: E402
from lama._core import core  # noqa: E402
from lama.chat import channel as _ch  # noqa: E402
from lama.chat import one_to_one_id  # noqa: E402
from lama.connect import contacts, profile  # noqa: E402
from lama.connect.manager import DEVICE_REMOVED  # noqa: E402
from lama.errors import InvalidArgumentError, LamaError, NotFoundError  # noqa: E402
from lama.identity.keychain import SecretKeys  # noqa: E402
from lama.objects import versions  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def _listed(app: App) -> set[str]:
    """The instance ids my current profile lists."""
    store = app.instance.store
    cur = versions.current(store, profile.own_profile_id(app.instance))
    return {str(store.get_object(e)["instanceId"]) for e in cur["communicationEndpoint"]}


def test_removing_a_device(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await alice_and_bob(tmp_path, server)
        phone: App | None = None
        tablet: App | None = None
        try:
            A, B = alice.person_id, bob.person_id
            topic = one_to_one_id(A, B)
            laptop_inst = str(alice.instance.instance_id)
            link = await alice.invite_device()
            phone = await App.join_device(tmp_path / "phone", link, secret=SECRET2,
                                          instance_name="alice-phone")
            await alice.wait_device(30, invitation=link)
            link = await alice.invite_device()
            tablet = await App.join_device(tmp_path / "tablet", link, secret=SECRET2,
                                           instance_name="alice-tablet")
            await alice.wait_device(30, invitation=link)
            phone_key = bytes(phone.instance.instance_public_key)
            phone_inst = str(phone.instance.instance_id)
            tablet_inst = str(tablet.instance.instance_id)
            await phone.start()
            await tablet.start()
            await until(lambda: bob.manager.connected(phone_key), "bob connected to the phone")
            await until(lambda: alice.manager.connected(phone_key), "the laptop has the phone")
            # my third device learnt of the phone from my profile and connects to it
            await until(lambda: tablet.manager.connected(phone_key), "the tablet has the phone")
            sent = await phone.send(B, "from the phone")
            await until(lambda: "from the phone" in texts(bob, A), "bob got the phone's message")
            await until(lambda: "from the phone" in texts(alice, B), "the laptop has it")
            assert {d["instance_id"] for d in alice.devices()} \
                == {laptop_inst, phone_inst, tablet_inst}
            assert [d["this"] for d in alice.devices() if d["instance_id"] == laptop_inst] \
                == [True]

            # errors change nothing: an unknown device, this device
            astore = alice.instance.store
            before = versions.current_hash(astore, profile.own_profile_id(alice.instance))
            for bad, cls, builtin in (("no-such-device", NotFoundError, LookupError),
                                      ("0" * 64, NotFoundError, LookupError),
                                      ("laptop", InvalidArgumentError, ValueError),
                                      (laptop_inst, InvalidArgumentError, ValueError)):
                with pytest.raises(cls) as ei:
                    await alice.remove_device(bad)
                assert isinstance(ei.value, LamaError) and isinstance(ei.value, builtin)
            assert versions.current_hash(astore, profile.own_profile_id(alice.instance)) \
                == before
            assert alice.manager.connected(phone_key)

            # the laptop removes the phone (by a prefix of its instance id)
            r = await alice.remove_device(phone_inst[:12])
            assert r.instance_id == phone_inst and r.instance_name == "alice-phone"
            assert r.instance_keys == (str(phone.instance.instance_keys),)
            assert r.profile != before and r.endpoints
            assert _listed(alice) == {laptop_inst, tablet_inst}
            assert {d["instance_id"] for d in alice.devices()} == {laptop_inst, tablet_inst}
            # the revocation is verifiable by anyone who vouches for Alice's person key
            for e in r.endpoints:
                ep = astore.get_object(e)
                assert contacts.endpoint_revoked(astore, A, bytes(
                    alice.instance.person_public_sign_key), ep)
                assert not contacts.endpoint_proven(astore, A, bytes(
                    alice.instance.person_public_sign_key), ep)
            # the laptop's manager dropped the phone at once
            assert phone_key not in {e.remote_key for e in alice.manager.known_endpoints()}
            await until(lambda: not alice.manager.connected(phone_key),
                        "the laptop closed the phone's connection")
            # a second removal: the device is not listed any more
            with pytest.raises(NotFoundError):
                await alice.remove_device(phone_inst)

            # Bob receives the revocation and drops the phone: no dialling, connection closed
            await until(lambda: phone_key not in {e.remote_key for e in
                                                   bob.manager.known_endpoints()},
                        "bob dropped the phone's endpoint")
            await until(lambda: not bob.manager.connected(phone_key),
                        "bob closed the phone's connection")
            assert bob.contact(A).instances == tuple(sorted([laptop_inst, tablet_inst]))
            assert str(bytes(phone_key).hex()) not in bob.manager.connection_health()["peers"]
            # my other device receives the revocation too: it drops the phone, and its
            # profile (merged with the laptop's version) lists the phone no more
            await until(lambda: phone_key not in {e.remote_key for e in
                                                   tablet.manager.known_endpoints()},
                        "the tablet dropped the phone's endpoint")
            await until(lambda: not tablet.manager.connected(phone_key),
                        "the tablet closed the phone's connection")
            await until(lambda: phone_inst not in _listed(tablet), "the tablet's profile")
            assert {d["instance_id"] for d in tablet.devices()} == {laptop_inst, tablet_inst}
            # the phone, still running, is refused when it calls Bob or the laptop
            await until(lambda: any(DEVICE_REMOVED in str(p.get("last_error") or "")
                                    for p in phone.manager.connection_health()["peers"]
                                    .values()),
                        "the phone was refused as a removed device", timeout=90)

            # the laptop and Bob still chat; the phone's earlier message stays, verified
            await alice.send(B, "laptop after the removal")
            await until(lambda: "laptop after the removal" in texts(bob, A), "bob got it")
            await bob.send(A, "bob after the removal")
            await until(lambda: "bob after the removal" in texts(alice, B), "the laptop got it")
            for app, who in ((bob, A), (alice, B)):
                old = [m for m in app.history(who) if m.id == sent.id]
                assert len(old) == 1 and app.chat.verify(old[0])
            assert "bob after the removal" not in texts(phone, topic)

            # a new phone may take the removed one's name: it joins with new keys
            link = await alice.invite_device()
            phone2 = await App.join_device(tmp_path / "phone2", link, secret=SECRET2,
                                           instance_name="alice-phone")
            try:
                await alice.wait_device(30, invitation=link)
                assert str(phone2.instance.instance_id) == phone_inst
                assert bytes(phone2.instance.instance_public_key) != phone_key
                assert {d["instance_id"] for d in alice.devices()} \
                    == {laptop_inst, tablet_inst, phone_inst}
                new_key = bytes(phone2.instance.instance_public_key)
                assert new_key in {e.remote_key for e in alice.manager.known_endpoints()}
                assert phone_key not in {e.remote_key for e in alice.manager.known_endpoints()}
            finally:
                await phone2.close()

            # a restarted Bob never routes the phone again
            await bob.close()
            bob = await App.open(tmp_path / "bob", SECRET,
                                 config=AppConfig(comm_server_url=server.url))
            await bob.start()
            await until(lambda: bob.manager.connected(bytes(alice.instance
                                                            .instance_public_key)),
                        "the restarted bob reconnected to the laptop")
            assert phone_key not in {e.remote_key for e in bob.manager.known_endpoints()}
            # ... and learns of the new phone (the same instance id, new keys) as of any device
            await until(lambda: new_key in {e.remote_key for e in
                                             bob.manager.known_endpoints()},
                        "bob learnt the new phone")
            assert phone_key not in {e.remote_key for e in bob.manager.known_endpoints()}
            assert bob.contact(A).instances == tuple(sorted([laptop_inst, tablet_inst,
                                                             phone_inst]))
        finally:
            for app in (tablet, phone, bob, alice):
                if app is not None:
                    await app.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 220))


def _forged_post(app: App, topic_id: str, author: str, text: str) -> str:
    """Into ``app``'s store: a message in the topic's channel "by ``author``", signed with a
    fresh key under a Keys object that names ``author`` as owner (anyone can write one and
    ship it by CHUM). Returns its id."""
    store = app.instance.store
    mallory = SecretKeys.generate()
    store.put_objects([mallory.keys_object(author)])
    cid = app.chat.topic(topic_id).channel
    [(ct, _mh, _ts, _sig, _entry)], _h, _b = _ch.post(
        store, cid, [_ch.PostSpec({"$type$": "ChatMessage", "text": text, "sender": author})],
        author=author, sign_secret=bytes(mallory.sign_secret))
    return str(ct)


def test_verify_trusts_only_vouched_keys(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await alice_and_bob(tmp_path, server)
        bob2: App | None = None
        try:
            A, B = alice.person_id, bob.person_id
            topic = one_to_one_id(A, B)
            await bob.send(A, "from bob")
            link = await bob.invite_device()
            bob2 = await App.join_device(tmp_path / "bob2", link, secret=SECRET2,
                                         instance_name="bob-tablet")
            await bob.wait_device(30, invitation=link)
            await bob2.start()
            await until(lambda: topic in {t.id for t in bob2.chat.topics()},
                        "bob's second device has the conversation")
            await bob2.send(topic, "from bob's tablet")
            await alice.send(B, "from alice")
            want = {"from bob", "from bob's tablet", "from alice"}
            await until(lambda: want <= set(texts(alice, B)), "alice has all messages")

            forged = _forged_post(alice, topic, B, "forged as bob")
            msgs = {m.text: m for m in alice.history(B)}
            assert msgs["forged as bob"].id == forged
            assert msgs["forged as bob"].author == B == msgs["forged as bob"].sender
            assert not alice.chat.verify(msgs["forged as bob"])
            for t in want:
                assert alice.chat.verify(msgs[t]), t
            # the same on Bob's devices: my own messages, my contact's, a forgery by Alice
            await until(lambda: want <= set(texts(bob2, topic)), "bob's tablet has all")
            forged_a = _forged_post(bob2, topic, A, "forged as alice")
            for app in (bob, bob2):
                for m in app.history(topic if app is bob2 else A):
                    if m.text in want:
                        assert app.chat.verify(m), (app.instance.instance_name, m.text)
            [fa] = [m for m in bob2.history(topic) if m.id == forged_a]
            assert not bob2.chat.verify(fa)
        finally:
            for app in (bob2, bob, alice):
                if app is not None:
                    await app.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 220))
