"""The comm server's store-and-forward mailbox (issue 11, docs/mailbox.md), on the selected core
(``LAMA_CORE``): the wire (deposit, fetch with key proof, confirm), limits (mailbox full by
count and by bytes, an item too big), persistence across a server restart (also a killed
write), expiry, a server without the extension, the envelope (the server cannot read it, an
altered or substituted item is refused, nothing else is lost), and two Apps end to end: offline
delivery with the sender gone before the recipient comes back and the comm server restarted in
between, no duplicates when CHUM delivers the same messages too, ordinary CHUM through a
server without a mailbox."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from lama import App, AppConfig
from lama._core import core
from lama.connect import mailbox as mb
from lama.errors import (DecryptionError, MailboxError, MailboxFullError, SignatureError,
                         TransportError)

pytestmark = pytest.mark.timeout(180)
SECRET = "mailbox-secret"
AUTH_FAILED = "Close called: Client authentication failed."


class Peer:
    """An instance's keys as the mailbox sees them: encryption (box) and sign pair."""

    def __init__(self) -> None:
        self.public, self.secret = core.box_keypair()
        self.sign_public, self.sign_secret = core.sign_keypair()


def sealed(sender: Peer, recipient: Peer, text: str) -> bytes:
    return mb.seal(text.encode(), sender.public, sender.secret, sender.sign_secret, recipient.public)


def dep(sender: Peer, url: str, target: bytes, envs: list[bytes]) -> Any:
    """Deposit as ``sender`` (it proves its instance key, docs/mailbox.md §2.2)."""
    return mb.deposit(url, target, envs, sender.public, sender.secret)


async def fetch_all(url: str, who: Peer, keep: set[str] = frozenset()) -> tuple[list[tuple[str, bytes]], int]:  # type: ignore[assignment]
    got: list[tuple[str, bytes]] = []

    async def handle(items: list[tuple[str, bytes]]) -> list[str]:
        got.extend(items)
        return [i for i, _ in items if i not in keep]

    _n, deleted = await mb.fetch(url, who.public, who.secret, handle)
    return got, deleted


def item_files(d: Path) -> list[Path]:
    return sorted(d.glob("*/*.item"))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------------------ wire

def test_deposit_fetch_confirm_survives_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "mbx"

    async def main() -> None:
        alice, bob, carol = Peer(), Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        try:
            info = await mb.mailbox_info(server.url)
            assert info is not None and info["version"] == 1 and info["maxItems"] == 1000
            envs = [sealed(alice, bob, f"m{i}") for i in range(3)]
            ids = await dep(alice, server.url, bob.public, envs)
            assert ids == [core.sha256_hex(e) for e in envs]
            # depositing the same envelope again stores nothing new
            assert await dep(alice, server.url, bob.public, envs[:1]) == ids[:1]
            await dep(alice, server.url, carol.public, [sealed(alice, carol, "for carol")])
            c = server.counters()
            assert (c["mailbox_items"], c["mailbox_deposits"]) == (4, 4)
            assert c["mailbox_bytes"] == sum(map(len, envs)) + len(sealed(alice, carol, "for carol"))
        finally:
            await server.close()
        assert len(item_files(d)) == 4
        # a write that a kill interrupted (never answered): deleted at the next start
        (d / bob.public.hex() / ("0" * 64 + ".tmp")).write_bytes(b"half")

        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        try:
            assert not list(d.glob("*/*.tmp"))
            assert server.counters()["mailbox_items"] == 4
            got, deleted = await fetch_all(server.url, bob, keep={ids[2]})
            assert [i for i, _ in got] == ids  # oldest first
            assert [e for _, e in got] == envs
            assert deleted == 2
            for (_, e), want in zip(got, ["m0", "m1", "m2"]):
                sender, body = mb.open_envelope(e, bob.public, bob.secret,
                                                lambda k: alice.sign_public if k == alice.public else None)
                assert (sender, body) == (alice.public, want.encode())
            got, deleted = await fetch_all(server.url, bob)
            assert [i for i, _ in got] == [ids[2]] and deleted == 1
            assert await fetch_all(server.url, bob) == ([], 0)
            # carol's item is untouched by bob's fetches
            got, _ = await fetch_all(server.url, carol)
            assert len(got) == 1
            c = server.counters()
            assert (c["mailbox_items"], c["mailbox_bytes"], c["mailbox_confirmed"]) == (0, 0, 4)
        finally:
            await server.close()
        assert item_files(d) == []

    run(main())


def test_mailbox_full_by_count_and_by_bytes(tmp_path: Path) -> None:
    async def main() -> None:
        alice, bob, carol = Peer(), Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(tmp_path / "m"),
                                        mailbox_max_items=2, mailbox_max_bytes=1000)
        try:
            envs = [sealed(alice, bob, f"m{i}") for i in range(3)]
            with pytest.raises(MailboxFullError) as e:
                await dep(alice, server.url, bob.public, envs)
            assert e.value.code == "LAMA-MAILBOX-FULL"
            assert isinstance(e.value, MailboxError) and isinstance(e.value, ConnectionError)
            assert "2 of 2 items" in str(e.value)
            assert e.value.deposited == [core.sha256_hex(x) for x in envs[:2]]  # type: ignore[attr-defined]
            # another recipient has its own bound; bytes: 3 x ~300 fit, the 4th does not
            big = [sealed(alice, carol, "x" * 200) for _ in range(2)]
            await dep(alice, server.url, carol.public, big[:1])
            with pytest.raises(MailboxFullError) as e:
                await dep(alice, server.url, carol.public, [sealed(alice, carol, "y" * 700)])
            assert e.value.code == "LAMA-MAILBOX-FULL" and "bytes" in str(e.value)
            with pytest.raises(MailboxFullError) as e:
                await dep(alice, server.url, Peer().public, [sealed(alice, bob, "z" * 1000)])
            assert e.value.code == "LAMA-MAILBOX-TOOBIG"
            c = server.counters()
            assert (c["mailbox_items"], c["mailbox_refused"]) == (3, 3)
            # nothing was lost: bob's two items are there; once fetched, there is room again
            got, deleted = await fetch_all(server.url, bob)
            assert [x for _, x in got] == envs[:2] and deleted == 2
            assert await dep(alice, server.url, bob.public, envs[2:]) == [core.sha256_hex(envs[2])]
        finally:
            await server.close()

    run(main())


def test_items_expire(tmp_path: Path) -> None:
    d = tmp_path / "m"

    async def main() -> None:
        alice, bob = Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d), mailbox_ttl=0.4)
        try:
            assert (await mb.mailbox_info(server.url) or {})["ttl"] == 0
            await dep(alice, server.url, bob.public, [sealed(alice, bob, "soon gone")])
            await asyncio.sleep(0.6)
            assert await fetch_all(server.url, bob) == ([], 0)
            assert server.counters()["mailbox_expired"] == 1
            await dep(alice, server.url, bob.public, [sealed(alice, bob, "gone at restart")])
        finally:
            await server.close()
        await asyncio.sleep(0.6)
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d), mailbox_ttl=0.4)
        try:
            c = server.counters()
            assert (c["mailbox_expired"], c["mailbox_items"]) == (1, 0)
            assert item_files(d) == []
        finally:
            await server.close()

    run(main())


def test_fetch_needs_the_key(tmp_path: Path) -> None:
    async def main() -> None:
        alice, bob, mallory = Peer(), Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(tmp_path / "m"))
        try:
            await dep(alice, server.url, bob.public, [sealed(alice, bob, "for bob only")])
            # mallory claims bob's key: she cannot open the challenge, so she answers garbage
            t = await core.ws_connect(server.url)
            await t.send(json.dumps({"command": "mailbox_fetch", "publicKey": bob.public.hex()}))
            req = json.loads(await t.recv())
            assert req["command"] == "authentication_request"
            with pytest.raises(Exception):
                core.box_open_embedded(bytes.fromhex(req["challenge"]), mallory.secret,
                                       bytes.fromhex(req["publicKey"]))
            fake = core.box_seal_embedded(b"\0" * 64, mallory.secret, bytes.fromhex(req["publicKey"]))
            await t.send(json.dumps({"command": "authentication_response", "response": fake.hex()}))
            assert await t.recv() is None
            assert t.close_reason == AUTH_FAILED
            assert server.counters()["auth_failures"] == 1
            # her own key opens her own (empty) mailbox, not bob's
            assert await fetch_all(server.url, mallory) == ([], 0)
            got, _ = await fetch_all(server.url, bob)
            assert len(got) == 1
        finally:
            await server.close()

    run(main())


def test_a_deposit_needs_the_depositors_key_and_its_own_name(tmp_path: Path) -> None:
    """docs/mailbox.md §2.2: no proof (an older client) or a wrong proof is refused, and a
    proved depositor cannot deposit an envelope sealed in another instance's name; nothing is
    stored by them, and an honest deposit afterwards goes through."""
    async def main() -> None:
        alice, bob, mallory = Peer(), Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(tmp_path / "m"))
        try:
            info = await mb.mailbox_info(server.url)
            assert info is not None and info["depositProof"] is True
            env = sealed(alice, bob, "from alice")
            # 1. no proof at all: a clear error, then closed
            t = await core.ws_connect(server.url)
            await t.send(json.dumps({"command": "mailbox_deposit", "targetPublicKey": bob.public.hex()}))
            ans = json.loads(await t.recv())
            assert ans["command"] == "mailbox_error" and ans["code"] == "LAMA-MAILBOX-AUTH"
            assert "proof" in ans["message"]
            await t.close("Close called.")
            # 2. mallory claims alice's key: she cannot open the challenge, answers garbage
            t = await core.ws_connect(server.url)
            await t.send(json.dumps({"command": "mailbox_deposit", "publicKey": alice.public.hex(),
                                     "targetPublicKey": bob.public.hex()}))
            req = json.loads(await t.recv())
            assert req["command"] == "authentication_request"
            fake = core.box_seal_embedded(b"\0" * 64, mallory.secret, bytes.fromhex(req["publicKey"]))
            await t.send(json.dumps({"command": "authentication_response", "response": fake.hex()}))
            with contextlib.suppress(TransportError):  # the server may have closed already
                await t.send(env)
            assert await t.recv() is None
            assert t.close_reason == AUTH_FAILED
            assert server.counters()["auth_failures"] == 1
            # 3. mallory proves her own key but deposits an envelope that names alice (a replay
            #    of alice's item, or a forgery in her name): refused by the envelope's prefix
            with pytest.raises(MailboxError) as e:
                await dep(mallory, server.url, bob.public, [env])
            assert e.value.code == "LAMA-MAILBOX-AUTH" and "another instance" in str(e.value)
            assert not isinstance(e.value, MailboxFullError)
            forged = env[:4] + mallory.public + env[36:]  # her key in the prefix: breaks the box
            assert await dep(mallory, server.url, bob.public, [forged]) == [core.sha256_hex(forged)]
            c = server.counters()
            assert (c["mailbox_items"], c["mailbox_refused"]) == (1, 2)
            # the honest deposit works; bob gets both, and only alice's opens as alice's
            assert await dep(alice, server.url, bob.public, [env]) == [core.sha256_hex(env)]
            got, deleted = await fetch_all(server.url, bob)
            assert [x for _, x in got] == [forged, env] and deleted == 2
            keys = {alice.public: alice.sign_public, mallory.public: mallory.sign_public}
            with pytest.raises(DecryptionError):
                mb.open_envelope(forged, bob.public, bob.secret, keys.get)
            assert mb.open_envelope(env, bob.public, bob.secret, keys.get) == (alice.public, b"from alice")
        finally:
            await server.close()

    run(main())


def test_server_wide_bound_across_recipients(tmp_path: Path) -> None:
    """docs/mailbox.md §5: besides each recipient's bound, the whole mailbox holds at most
    ``mailbox_total_items`` items and ``mailbox_total_bytes`` bytes; beyond that a deposit is
    refused with LAMA-MAILBOX-SERVER-FULL and nothing held is lost."""
    async def main() -> None:
        alice = Peer()
        rcpts = [Peer() for _ in range(4)]
        d = str(tmp_path / "m")
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=d, mailbox_max_items=10,
                                        mailbox_total_items=3, mailbox_total_bytes=100_000)
        try:
            info = await mb.mailbox_info(server.url)
            assert info is not None and (info["maxTotalItems"], info["maxTotalBytes"]) == (3, 100_000)
            envs = [sealed(alice, r, f"for {i}") for i, r in enumerate(rcpts)]
            for r, e in zip(rcpts[:3], envs):
                await dep(alice, server.url, r.public, [e])
            with pytest.raises(MailboxFullError) as e:
                await dep(alice, server.url, rcpts[3].public, [envs[3]])
            assert e.value.code == "LAMA-MAILBOX-SERVER-FULL"
            assert "3 of 3 items" in str(e.value) and "across all recipients" in str(e.value)
            assert e.value.deposited == []  # type: ignore[attr-defined]
            c = server.counters()
            assert (c["mailbox_items"], c["mailbox_refused"]) == (3, 1)
        finally:
            await server.close()
        # bytes: a restarted server counts what it holds
        size = sum(len(e) for e in envs[:3])
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=d, mailbox_max_items=10,
                                        mailbox_total_bytes=size + 10)
        try:
            with pytest.raises(MailboxFullError) as e:
                await dep(alice, server.url, rcpts[3].public, [envs[3]])
            assert e.value.code == "LAMA-MAILBOX-SERVER-FULL" and "bytes" in str(e.value)
            # nothing lost: every held item is served; a confirmation makes room
            for r, want in zip(rcpts[:3], envs):
                got, deleted = await fetch_all(server.url, r)
                assert [x for _, x in got] == [want] and deleted == 1
            assert await dep(alice, server.url, rcpts[3].public, [envs[3]]) == [core.sha256_hex(envs[3])]
        finally:
            await server.close()

    run(main())


def test_a_server_without_the_extension(tmp_path: Path) -> None:
    async def main() -> None:
        alice, bob = Peer(), Peer()
        server = await core.comm_server("127.0.0.1", 0)
        try:
            assert await mb.mailbox_info(server.url) is None
            with pytest.raises(MailboxError) as e:
                await dep(alice, server.url, bob.public, [sealed(alice, bob, "x")])
            assert e.value.code == "LAMA-MAILBOX-UNSUPPORTED"
            with pytest.raises(MailboxError) as e:
                await fetch_all(server.url, bob)
            assert e.value.code == "LAMA-MAILBOX-UNSUPPORTED"
            assert not any(k.startswith("mailbox_") for k in server.counters())
        finally:
            await server.close()

    run(main())


def test_bad_mailbox_arguments(tmp_path: Path) -> None:
    from lama.errors import InvalidArgumentError

    async def main() -> None:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        with pytest.raises(InvalidArgumentError):
            await core.comm_server("127.0.0.1", 0, mailbox_dir=str(blocker))
        with pytest.raises(InvalidArgumentError):
            await core.comm_server("127.0.0.1", 0, mailbox_dir=str(tmp_path / "m"), mailbox_ttl=0)
        with pytest.raises(InvalidArgumentError):
            await core.comm_server("127.0.0.1", 0, mailbox_dir=3)  # type: ignore[arg-type]

    run(main())


# ------------------------------------------------------------------------------ envelope

def test_the_server_can_neither_read_nor_alter_an_item(tmp_path: Path) -> None:
    d = tmp_path / "m"
    secret_text = "the secret plan: meet at noon"

    async def main() -> None:
        alice, bob, mallory = Peer(), Peer(), Peer()
        known = {alice.public: alice.sign_public, mallory.public: mallory.sign_public}
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        try:
            envs = [sealed(alice, bob, secret_text), sealed(alice, bob, "second"),
                    sealed(alice, bob, "third")]
            ids = await dep(alice, server.url, bob.public, envs)
        finally:
            await server.close()
        files = {f.name[:64]: f for f in item_files(d)}
        # what the server stores is ciphertext: the text is nowhere on its disk
        for f in files.values():
            assert secret_text.encode() not in f.read_bytes() and b"secret" not in f.read_bytes()
        # the "server" alters the first item's ciphertext (one bit)
        raw = bytearray(files[ids[0]].read_bytes())
        raw[-5] ^= 1
        files[ids[0]].write_bytes(bytes(raw))
        altered = bytes(raw[24:])
        with pytest.raises(DecryptionError) as e:
            mb.open_envelope(altered, bob.public, bob.secret, known.get)
        assert e.value.code == "LAMA-MAILBOX-TAMPERED"
        # ... and replaces the second with an item it made itself, claiming to be alice: the
        # box from its own key does not open under alice's key
        forged = mb.MAGIC + alice.public + core.box_seal_embedded(b"\0" * 64 + b"forged", mallory.secret,
                                                                  bob.public)
        with pytest.raises(DecryptionError):
            mb.open_envelope(forged, bob.public, bob.secret, known.get)
        # ... or sealed honestly from its own key but signed with nobody's key bob knows
        stranger = Peer()
        with pytest.raises(SignatureError) as e:
            mb.open_envelope(sealed(stranger, bob, "hi"), bob.public, bob.secret, known.get)
        assert e.value.code == "LAMA-MAILBOX-SENDER"
        # a known sender's box with a signature by another key
        resigned = mb.seal(b"x", alice.public, alice.secret, mallory.sign_secret, bob.public)
        with pytest.raises(SignatureError):
            mb.open_envelope(resigned, bob.public, bob.secret, known.get)

        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        try:
            got, _ = await fetch_all(server.url, bob, keep=set(ids))
            by_id = dict(got)
            # the altered item no longer hashes to its id, the others are intact
            assert core.sha256_hex(by_id[ids[0]]) != ids[0]
            assert [mb.open_envelope(by_id[i], bob.public, bob.secret, known.get)[1]
                    for i in ids[1:]] == [b"second", b"third"]
        finally:
            await server.close()

    run(main())


# ------------------------------------------------------------------------------ Apps end to end

def cfg(url: str) -> AppConfig:
    return AppConfig(comm_server_url=url, mailbox_poll_interval=1.0)


async def until(pred: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def paired(tmp_path: Path, url: str) -> tuple[App, App]:
    alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                             instance_name="laptop", secret=SECRET, config=cfg(url))
    bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob",
                           instance_name="phone", secret=SECRET, config=cfg(url))
    await alice.start()
    await bob.start()
    link = await alice.invite()
    await bob.accept(link)
    await alice.wait_contact(30)
    # "hello" goes by CHUM: sent before the connection is up it would (rightly) be deposited
    # too, and the tests count the mailbox's items
    await until(lambda: alice.manager.connected(bob.person_id))
    await alice.send(bob.person_id, "hello")
    await until(lambda: [m.text for m in bob.history(alice.person_id)] == ["hello"])
    return alice, bob


async def reopen(tmp_path: Path, name: str, url: str) -> App:
    app = await App.open(next((tmp_path / name).iterdir()), SECRET, config=cfg(url))
    await app.start()
    return app


def texts(app: App, who: str) -> list[str]:
    return [m.text for m in app.history(who)]


def test_offline_delivery_sender_gone_server_restarted_no_duplicates(tmp_path: Path) -> None:
    d = tmp_path / "mbx"

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        port, url = server.port, server.url
        alice, bob = await paired(tmp_path, url)
        alice_id, bob_id = alice.person_id, bob.person_id
        try:
            await bob.close()  # bob goes offline
            await until(lambda: not alice.manager.connected(bob_id))
            deposits: list[dict[str, Any]] = []
            alice.mailbox.subscribe(lambda e: deposits.append(e) if e["op"] == "deposit" else None)
            await alice.send(bob_id, "while you were away 1")
            await alice.send(bob_id, "while you were away 2")
            await until(lambda: sum(e["ok"] for e in deposits) >= 1)
            await until(lambda: server.counters()["mailbox_items"] >= 1 and not alice.mailbox._workers)
            assert all(e["ok"] for e in deposits), deposits
            held = server.counters()["mailbox_items"]
            assert held >= 1
        finally:
            await alice.close()  # the sender is gone before the recipient comes back
        await server.close()
        assert len(item_files(d)) == held
        # the comm server restarts (same address, since that is in the pairing) with the items
        server = await core.comm_server("127.0.0.1", port, mailbox_dir=str(d))
        try:
            assert server.counters()["mailbox_items"] == held
            bob = await reopen(tmp_path, "bob", url)
            try:
                await until(lambda: texts(bob, alice_id) == ["hello", "while you were away 1",
                                                             "while you were away 2"])
                await until(lambda: server.counters()["mailbox_items"] == 0)
                assert item_files(d) == []
                assert any(e["op"] == "import" and e["ok"] for e in bob.mailbox.log)
                # alice comes back: CHUM runs over the same objects, nothing is duplicated
                alice = await reopen(tmp_path, "alice", url)
                try:
                    await until(lambda: alice.manager.connected(bob_id) and bob.manager.connected(alice_id))
                    await bob.send(alice_id, "got them")
                    await until(lambda: texts(alice, bob_id)[-1:] == ["got them"])
                    await asyncio.sleep(0.5)
                    want = ["hello", "while you were away 1", "while you were away 2", "got them"]
                    assert texts(bob, alice_id) == want
                    assert texts(alice, bob_id) == want
                    assert len({str(m.id) for m in bob.history(alice_id)}) == 4
                finally:
                    await alice.close()
            finally:
                await bob.close()
        finally:
            await server.close()

    run(main())


def test_deposit_and_chum_both_deliver_once(tmp_path: Path) -> None:
    """The recipient comes back while the sender is still online: the mailbox item and CHUM
    bring the same objects; each message is there once."""

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(tmp_path / "mbx"))
        alice, bob = await paired(tmp_path, server.url)
        try:
            bob_id, alice_id = bob.person_id, alice.person_id
            await bob.close()
            await until(lambda: not alice.manager.connected(bob_id))
            await alice.send_many(bob_id, ["a", "b", "c"])
            await until(lambda: server.counters()["mailbox_items"] >= 1 and not alice.mailbox._workers)
            bob = await reopen(tmp_path, "bob", server.url)
            seen: list[str] = []
            bob.on_message(lambda m: seen.append(m.text))
            # one batch: the three have the same creation time, so their order is the chat's tie-break
            await until(lambda: sorted(texts(bob, alice_id)) == ["a", "b", "c", "hello"])
            await until(lambda: server.counters()["mailbox_items"] == 0 and alice.manager.connected(bob_id))
            await alice.send(bob_id, "d")
            await until(lambda: texts(bob, alice_id)[-1:] == ["d"])
            await asyncio.sleep(0.5)
            assert sorted(texts(bob, alice_id)) == ["a", "b", "c", "d", "hello"]
            assert texts(bob, alice_id) == texts(alice, bob_id)
            assert len(seen) == len(set(seen))  # no message reported twice
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    run(main())


def test_without_a_mailbox_chum_still_delivers(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)  # as ONE's: no extension
        alice, bob = await paired(tmp_path, server.url)
        loop = asyncio.get_running_loop()
        try:
            bob_id, alice_id = bob.person_id, alice.person_id
            await bob.close()
            await until(lambda: not alice.manager.connected(bob_id))
            first = loop.time()  # before the probe whose answer starts the poll interval
            await alice.send(bob_id, "later")
            await until(lambda: any(e["op"] == "deposit" for e in alice.mailbox.log))
            e = [e for e in alice.mailbox.log if e["op"] == "deposit"][-1]
            assert (e["ok"], e["code"]) == (False, "LAMA-MAILBOX-UNSUPPORTED")
            # more messages while Bob is away: the server's answer is known, so it is said again
            # at most once per poll interval (1 s here), not at every commit (which was 4 notes
            # in a few milliseconds); a loaded host may let one interval pass during the sends
            for i in range(3):
                await alice.send(bob_id, f"later {i}")
            await asyncio.sleep(0.3)
            notes = [e["code"] for e in alice.mailbox.log if e["op"] == "deposit"]
            allowed = 1 + int((loop.time() - first) / alice.mailbox.poll_interval)
            assert set(notes) == {"LAMA-MAILBOX-UNSUPPORTED"} and len(notes) <= min(allowed, 3), (notes, allowed)
            bob = await reopen(tmp_path, "bob", server.url)
            await until(lambda: texts(bob, alice_id) == ["hello", "later", "later 0", "later 1", "later 2"])
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    run(main())


def test_tampered_item_is_refused_the_rest_imported(tmp_path: Path) -> None:
    d = tmp_path / "mbx"

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0, mailbox_dir=str(d))
        port, url = server.port, server.url
        alice, bob = await paired(tmp_path, url)
        alice_id, bob_id = alice.person_id, bob.person_id
        try:
            await bob.close()
            await until(lambda: not alice.manager.connected(bob_id))
            await alice.send(bob_id, "one")
            await until(lambda: server.counters()["mailbox_items"] == 1 and not alice.mailbox._workers)
        finally:
            await alice.close()
        await server.close()
        # the server's operator flips a byte of the stored ciphertext
        (f,) = item_files(d)
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        f.write_bytes(bytes(raw))
        server = await core.comm_server("127.0.0.1", port, mailbox_dir=str(d))
        try:
            bob = await reopen(tmp_path, "bob", url)
            try:
                await until(lambda: any(e["op"] == "import" for e in bob.mailbox.log))
                bad = [e for e in bob.mailbox.log if e["op"] == "import"]
                assert [(e["ok"], e["code"]) for e in bad] == [(False, "LAMA-MAILBOX-TAMPERED")]
                assert texts(bob, alice_id) == ["hello"]  # nothing altered was imported
                await until(lambda: server.counters()["mailbox_items"] == 0)  # can never be read
                # nothing is lost: the message arrives by CHUM when alice is back
                alice = await reopen(tmp_path, "alice", url)
                try:
                    await until(lambda: texts(bob, alice_id) == ["hello", "one"])
                finally:
                    await alice.close()
            finally:
                await bob.close()
        finally:
            await server.close()

    run(main())


# ------------------------------------------------------------------------------ processes

def _cli_server(d: Path, *extra: str) -> Any:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root / "python"))
    proc = subprocess.Popen([sys.executable, "-m", "lama.cli", "comm-server", "--host", "127.0.0.1",
                             "--port", "0", "--mailbox", str(d), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("ws://127.0.0.1:"):
        proc.kill()
        raise AssertionError((url, proc.communicate(timeout=10)))
    return proc, url


def test_cli_comm_server_killed_with_items_loses_nothing(tmp_path: Path) -> None:
    import signal

    d = tmp_path / "mbx"
    alice, bob = Peer(), Peer()
    envs = [sealed(alice, bob, f"m{i}") for i in range(3)]
    proc, url = _cli_server(d, "--mailbox-max-items", "3")
    try:
        ids = run(dep(alice, url, bob.public, envs))
        with pytest.raises(MailboxFullError):
            run(dep(alice, url, bob.public, [sealed(alice, bob, "fourth")]))
    finally:
        proc.kill()  # no clean shutdown: what was answered `stored` is on disk
        proc.communicate(timeout=30)
    # restarted with a server-wide bound of 3: the 3 held items fill it (for any recipient)
    proc, url = _cli_server(d, "--mailbox-total-items", "3")
    try:
        with pytest.raises(MailboxFullError) as e:
            run(dep(alice, url, Peer().public, [sealed(alice, bob, "to someone else")]))
        assert e.value.code == "LAMA-MAILBOX-SERVER-FULL"
        got, deleted = run(fetch_all(url, bob))
        assert [i for i, _ in got] == ids and [e for _, e in got] == envs and deleted == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=30)
    counters = dict(line.split() for line in out.splitlines())
    assert (counters["mailbox_confirmed"], counters["mailbox_items"]) == ("3", "0")
    assert item_files(d) == []


@pytest.mark.cross_core
@pytest.mark.parametrize("writer", ["rust", "pure"])
def test_a_mailbox_directory_moves_between_the_cores(tmp_path: Path, writer: str, rust_core: Any,
                                                      pure_core: Any) -> None:
    """docs/mailbox.md §4: the same on-disk format; one core's server serves what the other's
    stored, and the wire is the same (the client runs on the selected core)."""
    d = tmp_path / "mbx"
    first, second = (rust_core, pure_core) if writer == "rust" else (pure_core, rust_core)

    async def main() -> None:
        alice, bob = Peer(), Peer()
        envs = [sealed(alice, bob, f"m{i}") for i in range(2)]
        server = await first.comm_server("127.0.0.1", 0, mailbox_dir=str(d), mailbox_max_items=5)
        try:
            ids = await dep(alice, server.url, bob.public, envs)
        finally:
            await server.close()
        server = await second.comm_server("127.0.0.1", 0, mailbox_dir=str(d), mailbox_max_items=5)
        try:
            assert server.counters()["mailbox_items"] == 2
            got, deleted = await fetch_all(server.url, bob)
            assert [i for i, _ in got] == ids and [e for _, e in got] == envs and deleted == 2
        finally:
            await server.close()
        assert item_files(d) == []

    run(main())
