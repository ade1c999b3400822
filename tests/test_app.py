"""lama.App, the asyncio facade (issue 10): two apps in one process through a comm server on
127.0.0.1 - pairing creates the contact on both sides, messages both ways, ``messages(...,
follow=True)`` yields each message once, ``on_message`` (function and coroutine), lookup
errors, removal stops the connections, a clean close."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import lama
from lama import App, AppConfig
from lama._core import core
from lama.errors import NotFoundError

pytestmark = pytest.mark.timeout(120)
SECRET = "app-secret"


async def two_apps(tmp_path: Path) -> tuple[Any, App, App]:
    server = await core.comm_server("127.0.0.1", 0)
    cfg = lambda: AppConfig(comm_server_url=server.url)  # noqa: E731
    alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                             instance_name="laptop", secret=SECRET, config=cfg())
    bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob",
                           instance_name="phone", secret=SECRET, config=cfg())
    await alice.start()
    await bob.start()
    return server, alice, bob


async def until(pred: Any, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_app_pair_chat_follow_remove(tmp_path: Path) -> None:
    async def main() -> None:
        assert lama.App is App
        server, alice, bob = await two_apps(tmp_path)
        try:
            link = await alice.invite()
            # the pairing may finish before wait_contact is called: it still returns it
            bob_sees = await bob.accept(link)
            alice_sees = await alice.wait_contact(30)
            assert str(bob_sees.person_id) == alice.person_id
            assert str(alice_sees.person_id) == bob.person_id
            assert [str(c.person_id) for c in alice.contacts()] == [bob.person_id]
            assert [str(c.person_id) for c in bob.contacts()] == [alice.person_id]
            assert str(alice.contact("bob@example.com").person_id) == bob.person_id
            assert str(alice.contact(bob.person_id[:10]).person_id) == bob.person_id
            with pytest.raises(NotFoundError) as e:
                alice.contact("carol@example.com")
            assert e.value.code == "LAMA-CONTACT"

            got_cb: list[str] = []
            got_async: list[str] = []

            async def on_async(m: Any) -> None:
                got_async.append(m.text)

            bob.on_message(lambda m: got_cb.append(m.text))
            bob.on_message(on_async)
            seen: list[Any] = []

            async def follow() -> None:
                async for m in bob.messages(alice.person_id, follow=True):
                    seen.append(m)

            task = asyncio.ensure_future(follow())
            await alice.send(bob.person_id, "one")
            await until(lambda: len(seen) == 1)
            await bob.send("alice@example.com", "two")
            await alice.send(bob.person_id, "three")
            await until(lambda: len(seen) == 3)
            await asyncio.sleep(0.3)  # nothing more comes (no duplicates)
            assert [m.text for m in seen] == ["one", "two", "three"]
            assert len({str(m.id) for m in seen}) == 3
            assert got_cb == got_async == ["one", "two", "three"]
            assert [m.text for m in alice.history(bob.person_id)] == ["one", "two", "three"]
            assert [m.text for m in seen] == ["one", "two", "three"]
            # a fresh iteration yields the same history, oldest first
            again = [m async for m in bob.messages(alice.person_id)]
            assert [str(m.id) for m in again] == [str(m.id) for m in seen]
            assert [m.text async for m in bob.messages(alice.person_id, last=1)] == ["three"]

            # group commit: concurrent sends are posted in call order; a bad text fails alone
            from lama.errors import InvalidArgumentError

            res = await asyncio.gather(*(alice.send(bob.person_id, t)
                                         for t in ("c1", "c2", "", "c3")),
                                       return_exceptions=True)
            assert isinstance(res[2], InvalidArgumentError)
            assert [m.text for m in res if not isinstance(m, Exception)] == ["c1", "c2", "c3"]
            await until(lambda: len(seen) == 6)
            assert [m.text for m in seen][3:] == ["c1", "c2", "c3"]
            assert [m.text for m in await alice.send_many(bob.person_id, ["d1", "d2"])] == \
                ["d1", "d2"]
            await until(lambda: len(seen) == 8)
            # a long list goes in commits of growing size (the first small, so the peer
            # starts receiving while the rest is posted), in order, each message once
            from lama import app as app_mod

            sizes: list[int] = []
            real_send_many = alice.chat.send_many

            def counting(target: Any, texts: Any, **kw: Any) -> Any:
                sizes.append(len(texts))
                return real_send_many(target, texts, **kw)

            alice.chat.send_many = counting  # type: ignore[method-assign]
            texts = [f"bulk {i}" for i in range(app_mod.FIRST_BATCH * 4)]
            bulk = await alice.send_many(bob.person_id, texts)
            alice.chat.send_many = real_send_many  # type: ignore[method-assign]
            assert [m.text for m in bulk] == texts
            assert sizes == [app_mod.FIRST_BATCH, 2 * app_mod.FIRST_BATCH, app_mod.FIRST_BATCH]
            await until(lambda: len(seen) == 8 + len(texts))
            assert sorted(str(m.id) for m in seen[8:]) == sorted(str(m.id) for m in bulk)
            assert [str(m.id) for m in alice.history(bob.person_id)][-len(texts):] == \
                [str(m.id) for m in seen[8:]]

            st = alice.status()
            assert st["total"] == 1 and st["peers"][0]["connected"]
            assert st["peers"][0]["person_id"] == bob.person_id and st["last_sync"]

            # removing the contact stops its connections, on this side at once
            await alice.remove_contact(bob.person_id)
            assert alice.contacts() == []
            await until(lambda: not alice.manager.connected(bob.person_id))
            assert not alice.manager.is_enabled(bob.person_id)
            task.cancel()
        finally:
            await alice.close()
            await bob.close()
            await server.close()
        assert alice.instance.closed and bob.instance.closed

    asyncio.run(main())
