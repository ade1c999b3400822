"""A second device of the same person through the App API (issue 10 "a second device of the
same person joins and converges"; lama.connect.device, docs/connections.md §6): device 1
makes a device invitation, device 2 joins with it - the person's keys travel inside the
encrypted connection, are kept encrypted at rest - and then both devices and a contact
converge on one history. Refusals (wrong, expired, reused, partner token) create nothing."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest

from lama import App, AppConfig
from lama._core import core
from lama.chat import one_to_one_id
from lama.connect import pairing
from lama.errors import InvalidArgumentError, LamaError, PairingError

pytestmark = pytest.mark.timeout(180)
SECRET = "device-secret"
SECRET2 = "phone-secret"


async def until(pred: Any, what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


async def alice_and_bob(tmp_path: Path, server: Any, **alice_cfg: Any) -> tuple[App, App]:
    cfg = lambda **kw: AppConfig(comm_server_url=server.url, **kw)  # noqa: E731
    alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                             instance_name="laptop", secret=SECRET, config=cfg(**alice_cfg))
    bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob",
                           instance_name="bob-phone", secret=SECRET, config=cfg())
    await alice.start()
    await bob.start()
    link = await alice.invite()
    await bob.accept(link)
    await alice.wait_contact(30)
    return alice, bob


def texts(app: App, who: Any) -> list[str]:
    return [m.text for m in app.history(who)]


def test_second_device_joins_and_converges(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await alice_and_bob(tmp_path, server)
        phone: App | None = None
        try:
            A, B = alice.person_id, bob.person_id
            topic = one_to_one_id(A, B)
            await alice.send(B, "from laptop")
            await bob.send(A, "from bob")
            await until(lambda: len(alice.history(B)) == 2 and len(bob.history(A)) == 2,
                        "the first two messages")

            link = await alice.invite_device()
            assert link.startswith("https://") and pairing.DEVICE_PATH in link
            phone = await App.join_device(tmp_path / "phone", link, secret=SECRET2,
                                          instance_name="alice-phone")
            # a new instance of the same person, its person keys those of device 1
            assert phone.person_id == A
            assert phone.instance.instance_id != alice.instance.instance_id
            assert phone.instance.person_keys == alice.instance.person_keys
            assert phone.instance.secret_keys("person") == alice.instance.secret_keys("person")
            assert phone.instance.secret_keys("instance") != alice.instance.secret_keys("instance")
            assert phone.instance.email == "alice@example.com"
            assert phone.instance.person_name == "Alice"
            # the contacts came along (their 1-to-1 topics too), before any sync
            assert [str(c.person_id) for c in phone.contacts()] == [B]
            joined = await alice.wait_device(30, invitation=link)
            assert joined["instance_id"] == phone.instance.instance_id
            assert joined["person_id"] == A
            # no contact for my own device on device 1
            assert [str(c.person_id) for c in alice.contacts()] == [B]

            await phone.start()
            await until(lambda: texts(phone, topic) == ["from laptop", "from bob"],
                        "the phone received the conversation")
            # messages from all three, both ways
            await phone.send(B, "from phone")
            await until(lambda: "from phone" in texts(bob, A), "the phone's message at bob")
            await bob.send(A, "bob again")
            await alice.send(B, "laptop again")
            want = {"from laptop", "from bob", "from phone", "bob again", "laptop again"}
            for app, who in ((alice, B), (bob, A), (phone, B)):
                await until(lambda app=app, who=who: set(texts(app, who)) == want,
                            f"{app.instance.instance_name} converged")
            ids = [[m.id for m in app.history(who)] for app, who in
                   ((alice, B), (bob, A), (phone, B))]
            assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 5
            # the phone's health counts the laptop and Bob: Bob's endpoint came without url
            # at the join, his own profile told where he listens (docs/connections.md §3.5)
            def healthy() -> bool:
                h = phone.manager.connection_health()
                return h["status"] == "healthy" and h["total"] == 2

            await until(healthy, "the phone is healthy, connected to the laptop and bob")
            senders = {m.text: m.sender for m in bob.history(A)}
            assert senders["from phone"] == senders["from laptop"] == A
            assert senders["from bob"] == B

            # the person's secret keys are at rest only encrypted with the phone's secret
            keys = phone.instance.secret_keys("person")
            secrets_raw = [keys.encryption_secret, keys.sign_secret, keys.sign_secret[:32]]
            forms = []
            for raw in secrets_raw:
                forms += [raw, raw.hex().encode(), raw.hex().upper().encode(),
                          base64.b64encode(raw), base64.b64encode(raw).rstrip(b"=")]
            files = [p for p in (phone.instance_dir).rglob("*") if p.is_file()]
            assert any("private" in p.parts for p in files)
            for p in files:
                data = p.read_bytes()
                for f in forms:
                    assert f not in data, f"a person secret key in the clear in {p}"
        finally:
            for app in (phone, bob, alice):
                if app is not None:
                    await app.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 170))


def test_the_joined_device_reopens_with_its_own_secret(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                                 instance_name="laptop", secret=SECRET,
                                 config=AppConfig(comm_server_url=server.url))
        try:
            await alice.start()
            link = await alice.invite_device()
            phone = await App.join_device(tmp_path / "phone", link, secret=SECRET2)
            name = phone.instance.instance_name
            assert name != "laptop"
            await phone.close()
            with pytest.raises(LamaError):  # device 1's secret does not open it
                await App.open(tmp_path / "phone", SECRET)
            again = await App.open(tmp_path / "phone", SECRET2)
            assert again.person_id == alice.person_id and again.instance.instance_name == name
            assert again.instance.secret_keys("person") == alice.instance.secret_keys("person")
            await again.close()
        finally:
            await alice.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def _empty(d: Path) -> bool:
    return not d.exists() or not any(d.iterdir())


def test_bad_tokens_are_refused_and_create_nothing(tmp_path: Path) -> None:
    """Wrong, expired, reused tokens and a partner invitation's token: a clear error on the
    new device, nothing in its directory, no endpoint stored on device 1."""
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        clock = [0.0]
        alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                                 instance_name="laptop", secret=SECRET,
                                 config=AppConfig(comm_server_url=server.url))
        try:
            await alice.start()
            # device 1's registry on a test clock, so that "expired" needs no waiting
            reg = alice.manager._token_registry()
            reg.clock = lambda: clock[0]
            before = sorted(alice.instance.store.hashes())

            async def refused(link: str, name: str, what: str) -> LamaError:
                d = tmp_path / name
                with pytest.raises(LamaError) as e:
                    await App.join_device(d, link, secret=SECRET2, instance_name=name)
                assert _empty(d), f"{what}: something was created in {d}"
                assert sorted(alice.instance.store.hashes()) == before, what
                return e.value

            # a wrong token (the right key and url)
            good = alice.device_invitation()
            wrong = pairing.Invitation(pairing.make_token(), good.public_key, good.url)
            e = await refused(wrong.to_link(device=True), "wrong", "wrong token")
            assert isinstance(e, PairingError) and "unknown" in str(e)
            # an expired one
            old = alice.device_invitation(lifetime=60)
            clock[0] += 61
            e = await refused(old.to_link(device=True), "expired", "expired token")
            assert isinstance(e, PairingError) and "expired" in str(e)
            # a partner invitation's token presented as a device token: never any keys
            partner = alice.invitation()
            e = await refused(partner.to_link(device=True), "partner", "partner token")
            assert isinstance(e, PairingError) and "not of a device invitation" in str(e)
            # a partner link is recognised before anything is sent
            with pytest.raises(InvalidArgumentError) as e2:
                await App.join_device(tmp_path / "p2", partner.to_link(), secret=SECRET2)
            assert e2.value.code == "LAMA-PAIR-INVITE" and _empty(tmp_path / "p2")
            # a device link given to `accept` (partner pairing) is refused too
            dev = alice.device_invitation()
            with pytest.raises(LamaError):
                bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob",
                                       secret=SECRET, config=AppConfig(comm_server_url=server.url))
                try:
                    await bob.start()
                    await bob.accept(dev.to_link(device=True))
                finally:
                    await bob.close()
            assert [str(c.person_id) for c in alice.contacts()] == []
            # the same device token still works once, then never again
            phone = await App.join_device(tmp_path / "phone", dev.to_link(device=True),
                                          secret=SECRET2, instance_name="phone")
            await phone.close()
            before = sorted(alice.instance.store.hashes())
            e = await refused(dev.to_link(device=True), "reused", "reused token")
            assert isinstance(e, PairingError) and "used already" in str(e)
            # only one device joined
            await until(lambda: len([p for p in alice._pairing_log if p["device"]]) == 1,
                        "device 1 recorded the phone")
            assert len([p for p in alice._pairing_log if p["device"]]) == 1
        finally:
            await alice.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 170))


def test_token_kinds_never_cross() -> None:
    """A partner token never links a device, a device token never makes a contact; a refused
    kind leaves the token usable for its own kind."""
    me = core.id_hash({"$type$": "Person", "email": "alice@example.com"})
    reg = pairing.TokenRegistry()
    partner = reg.create(me)
    device = reg.create(me, kind="device")
    with pytest.raises(PairingError) as e:
        reg.claim(partner, me, "device")
    assert e.value.code == "LAMA-PAIR-TOKEN" and "not of a device invitation" in str(e.value)
    with pytest.raises(PairingError) as e:
        reg.claim(device, me)
    assert "device invitation" in str(e.value)
    assert reg.valid(partner) and reg.valid(device)
    assert reg.claim(device, me, "device") == device
    reg.consume(device)
    with pytest.raises(PairingError) as e:
        reg.claim(device, me, "device")
    assert "used already" in str(e.value)
    assert reg.claim(partner, me) == partner
    with pytest.raises(InvalidArgumentError):
        reg.create(me, kind="admin")


def test_a_peer_that_refuses_the_group_refuses_the_join(tmp_path: Path) -> None:
    """The device group is lama's own: a peer that does not take it (here a lama instance
    with pairing switched off, refusing it like a ONE peer refuses an unknown group with
    "Go Away!") ends the join with a clear error and nothing created on either side."""
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                                 instance_name="laptop", secret=SECRET,
                                 config=AppConfig(comm_server_url=server.url,
                                                  manager_options={"allow_pairing": False}))
        try:
            await alice.start()
            before = sorted(alice.instance.store.hashes())
            link = alice.device_invitation().to_link(device=True)
            with pytest.raises(PairingError) as e:
                await App.join_device(tmp_path / "phone", link, secret=SECRET2)
            assert e.value.code == "LAMA-DEVICE" and "refused" in str(e.value)
            assert _empty(tmp_path / "phone")
            assert sorted(alice.instance.store.hashes()) == before
            assert not [p for p in alice._pairing_log if p["device"]]
        finally:
            await alice.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 120))
