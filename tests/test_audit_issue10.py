"""Issue 10, where the other tests fell short (audit, session 8):

* the README's bot (the "few lines" of the Python API) runs as printed - only its instance
  directory, comm-server URL and file name are pointed at this test's - against a real comm
  server on 127.0.0.1 and a peer that accepts its link: the contact appears on both sides, the
  file arrives byte for byte, the bot answers what the peer says;
* the CLI against running ``lama serve`` processes (tests/test_chat_e2e.py covers contacts,
  send without a file, messages and status; tests/test_progress.py covers ``send --attach``
  and ``messages --follow`` only without a running server): ``lama send --attach`` through a
  running ``lama serve`` and ``lama messages --follow --json`` printing, live, the message and
  its attachment that the peer's ``lama serve`` received;
* a second device of the same person, each instance its own ``lama serve`` process, joins
  through the comm server by the CLI's own pairing and converges on the conversation
  (tests/test_chat_sync.py::test_second_device_converges does it in one process with the
  sans-I/O pump).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chum_graph import deterministic_bytes
from lama import App, AppConfig
from lama._core import core

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


def readme_block(marker: str) -> str:
    """The README's ```python block that contains ``marker``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if marker in b]
    return block


async def until(pred: Any, what: str, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


def test_the_readme_bot_runs_as_printed(tmp_path: Path) -> None:
    code = readme_block("async def bot(")
    # the three things a reader changes: where the instance lives, the relay, the file
    assert code.count('"/tmp/alice"') == 1 and code.count('"ws://127.0.0.1:8000"') == 1
    assert code.count('"photo.jpg"') == 1
    alice_dir = tmp_path / "alice"
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(deterministic_bytes(700_000, b"photo"))

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        src = (code.replace('"/tmp/alice"', repr(str(alice_dir)))
                   .replace('"ws://127.0.0.1:8000"', repr(server.url))
                   .replace('"photo.jpg"', repr(str(photo))))
        printed: list[str] = []
        namespace: dict[str, Any] = {"print": lambda *a, **k: printed.append(" ".join(map(str, a)))}
        exec(compile(src, "README.md", "exec"), namespace)
        # the instance the bot opens (App.create as the README says)
        created = await App.create(alice_dir, email="alice@example.com", name="Alice", secret="s-alice")
        await created.close()
        bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob", secret="s-bob",
                               config=AppConfig(comm_server_url=server.url))
        await bob.start()
        bot = asyncio.ensure_future(namespace["bot"]("s-alice"))
        try:
            await until(lambda: printed or bot.done(), "the bot printed its link")
            assert not bot.done(), bot.exception()
            [link] = printed
            assert link.startswith("https://") and "invite" in link
            alice = await bob.accept(link)
            assert alice.email == "alice@example.com"
            await until(lambda: len(bob.history(alice.person_id)) >= 1, "the bot's first message")
            [hi] = bob.history(alice.person_id)
            assert hi.text == "hi" and [a.name for a in hi.attachments] == ["photo.jpg"]
            await until(lambda: bob.history(alice.person_id)[0].attachments[0].available,
                        "the attachment arrived")
            saved = tmp_path / "saved.jpg"
            info = await bob.save_attachment(hi.id, 0, str(saved))
            assert saved.read_bytes() == photo.read_bytes()
            assert info["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
            await bob.send(alice.person_id, "ping")
            await until(lambda: len(bob.history(alice.person_id)) >= 3, "the bot's answer")
            assert [m.text for m in bob.history(alice.person_id)] == ["hi", "ping", "you said 'ping'"]
            await asyncio.sleep(0.3)  # it answers once, and not to itself
            assert len(bob.history(alice.person_id)) == 3
            assert not bot.done()
        finally:
            bot.cancel()
            await asyncio.gather(bot, return_exceptions=True)
            await bob.close()
            await server.close()

    asyncio.run(asyncio.wait_for(main(), 240))


def _serve(base: Path, name: str, url: str) -> Any:
    from test_chat_e2e import serve

    return serve(base, name, url)


def test_cli_send_attach_and_messages_follow_through_running_serves(tmp_path: Path) -> None:
    """Two ``lama serve`` processes through a comm-server process; everything else by the
    ``lama`` CLI in its own process: ``invite``/``accept`` while the instances are served,
    ``messages --follow --json`` on B, ``send --attach`` on A through A's running serve."""
    from lama import control
    from test_chat_e2e import instance_dir, lama, req
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(comm_server(port))
        a, b = init(tmp_path, "a"), init(tmp_path, "b")
        da, db = instance_dir(tmp_path, "a"), instance_dir(tmp_path, "b")
        sa, sb = _serve(tmp_path, "a", url), _serve(tmp_path, "b", url)
        procs += [sa, sb]
        assert control.server_running(da) and control.server_running(db)

        # pairing by the CLI while both instances are served
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--dir", str(tmp_path / "a"),
                        "--comm-server", url, "--json"])
        procs.append(inviter)
        link = next(line for line in iter(lambda: inviter.readline(60), None) if line.startswith("https://"))
        r = lama("accept", link, "--dir", str(tmp_path / "b"), "--comm-server", url, "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert json.loads(r.stdout)["person_id"] == a["person_id"]
        assert inviter.p.wait(60) == 0, inviter.stderr()
        rest = inviter.rest(10)  # the QR code, then the JSON report
        assert json.loads(rest[rest.index("\n{") + 1:])["person_id"] == b["person_id"]
        for d, other in ((tmp_path / "a", b), (tmp_path / "b", a)):
            r = lama("contacts", "--dir", str(d), "--json")
            assert r.returncode == 0, r.stderr
            assert [c["person_id"] for c in json.loads(r.stdout)] == [other["person_id"]]

        # B follows the conversation through its serve; A sends a file through its serve
        follow = Proc([sys.executable, "-m", "lama.cli", "messages", a["email"], "--follow", "--json",
                       "--dir", str(tmp_path / "b")])
        procs.append(follow)
        f = tmp_path / "notes.pdf"
        f.write_bytes(deterministic_bytes(1_500_000, b"notes"))
        r = lama("send", b["email"], "hello with notes", "--attach", str(f), "--dir", str(tmp_path / "a"),
                 "--json", timeout=120)
        assert r.returncode == 0, (r.stdout, r.stderr)
        sent = json.loads(r.stdout)
        [att] = sent["attachments"]
        assert att["name"] == "notes.pdf" and att["size"] == 1_500_000
        assert att["hash"] == hashlib.sha256(f.read_bytes()).hexdigest()
        line = json.loads(follow.readline(60))
        assert line["id"] == sent["id"] and line["text"] == "hello with notes" and not line["outgoing"]
        assert [x["hash"] for x in line["attachments"]] == [att["hash"]]
        # the file at B, byte for byte (B's serve saves it)
        out = tmp_path / "received.pdf"
        deadline = time.monotonic() + 60
        while True:
            try:
                info = req(db, "attachment", message=sent["id"], index=0, path=str(out))
                break
            except Exception:
                assert time.monotonic() < deadline, "the attachment never became available at B"
                time.sleep(0.1)
        assert out.read_bytes() == f.read_bytes() and info["sha256"] == att["hash"]
        # B answers by the CLI; the follow prints it too, then stops on SIGINT with status 0
        r = lama("send", a["email"], "got it", "--dir", str(tmp_path / "b"), "--json")
        assert r.returncode == 0, r.stderr
        line = json.loads(follow.readline(60))
        assert line["text"] == "got it" and line["outgoing"]
        follow.p.send_signal(2)
        assert follow.p.wait(30) == 0, follow.stderr()
        r = lama("status", "--dir", str(tmp_path / "a"), "--json")
        st = json.loads(r.stdout)
        assert st["serving"] and st["peers"][0]["connected"] and st["peers"][0]["person_id"] == b["person_id"]
        # lama serve stops cleanly on SIGINT (Ctrl-C) as on SIGTERM: status 0, control file gone
        sa.p.send_signal(2)
        sb.p.terminate()
        for p, d in ((sa, da), (sb, db)):
            assert p.p.wait(30) == 0, p.stderr()
            assert not (d / control.CONTROL_FILE).exists()
    finally:
        for p in procs:
            p.stop()


def test_grants_once_at_topic_creation_none_per_message(tmp_path: Path) -> None:
    """Issue 10: "Access is granted when a topic or channel is created, once and completely
    ... so every later message reaches the peer with no per-message grant": posting messages
    (with an attachment) writes no Access/IdAccess object, and they all reach the peer."""
    from chat_util import make, pair, sync, texts
    from lama.chat import Chat

    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    try:
        pair(ca, cb)

        def grants(store: Any) -> set[str]:
            return {h for h in store.hashes() if store.kind(h) == "object"
                    and store.get_object(h)["$type$"] in ("Access", "IdAccess")}

        before = grants(a.store)
        assert before, "pairing created the topic and its grants"
        f = tmp_path / "f.bin"
        f.write_bytes(deterministic_bytes(100_000, b"grant"))
        ca.send(cb.me, "one")
        time.sleep(0.002)  # each send its own millisecond (one millisecond's posts are
        ca.send(cb.me, "two", [str(f)])  # ordered by CreationTime hash, app-layer.md §2.5)
        time.sleep(0.002)
        ca.send_many(cb.me, ["three", "four"])
        assert grants(a.store) == before
        sync(ca, cb)
        # (send_many posts in one millisecond: ordered by CreationTime hash)
        assert texts(cb, ca.me)[:2] == ["one", "two"]
        assert sorted(texts(cb, ca.me)[2:]) == ["four", "three"]
        assert grants(a.store) == before
        [got] = [m for m in cb.history(ca.me) if m.text == "two"]
        assert cb.read_attachment(got.attachments[0]) == f.read_bytes()
    finally:
        for c in (ca, cb):
            c.close()
            c.instance.close()


def test_cli_pairing_without_serve_creates_the_contact(tmp_path: Path) -> None:
    """The README's pairing (``lama invite`` / ``lama accept``, no ``lama serve``): both
    commands return with the contact created on both sides (issue 10: "after pairing both
    sides create the contact"), so ``lama contacts`` lists it and ``lama send`` stores a
    message for it at once; the next ``lama serve`` delivers it."""
    from test_chat_e2e import instance_dir, lama, wait_history
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(comm_server(port))
        a, b = init(tmp_path, "a"), init(tmp_path, "b")
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--dir", str(tmp_path / "a"),
                        "--comm-server", url, "--json"])
        procs.append(inviter)
        link = next(line for line in iter(lambda: inviter.readline(60), None) if line.startswith("https://"))
        r = lama("accept", link, "--dir", str(tmp_path / "b"), "--comm-server", url, "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert inviter.p.wait(60) == 0, inviter.stderr()
        for d, other in ((tmp_path / "a", b), (tmp_path / "b", a)):
            r = lama("contacts", "--dir", str(d), "--json")
            assert r.returncode == 0, r.stderr
            assert [c["person_id"] for c in json.loads(r.stdout)] == [other["person_id"]]
        r = lama("send", b["email"], "stored before serving", "--dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        procs += [_serve(tmp_path, "a", url), _serve(tmp_path, "b", url)]
        wait_history(instance_dir(tmp_path, "b"), a["person_id"], ["stored before serving"])
    finally:
        for p in procs:
            p.stop()


def test_second_device_joins_in_its_own_process_and_converges(tmp_path: Path) -> None:
    """Issue 10 "a second device of the same person joins and converges", with real processes:
    Alice's laptop and Bob chat through the comm server (each its own ``lama serve``); then
    Alice's phone (the same person: same email, its own instance and keys) is paired with the
    laptop; it receives the conversation, posts into it, and all three end with one history."""
    from lama.chat import one_to_one_id
    from test_chat_e2e import instance_dir, pair, req, wait_history
    from lama.identity.instance import Instance
    from test_pairing_e2e import SECRET, Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(comm_server(port))
        laptop, bob = init(tmp_path, "alice"), init(tmp_path, "bob")
        # the phone: the same person with the same person keys (lama's Internet of Me: a
        # device of my own person proves my person key, lama.connect.protocol post-check 2),
        # its own instance and instance keys; there is no CLI for this, the Python API does it
        with Instance.open(str(tmp_path / "alice"), SECRET) as inst:
            person_keys = inst.secret_keys("person")
        with Instance.create(str(tmp_path / "phone"), email="alice@example.org", person_name="alice",
                             instance_name="alice-phone", secret=SECRET, person_keys=person_keys) as ph:
            phone = {"person_id": str(ph.person_id), "instance_id": str(ph.instance_id)}
        assert phone["person_id"] == laptop["person_id"] and phone["instance_id"] != laptop["instance_id"]
        d1, db, d2 = (instance_dir(tmp_path, n) for n in ("alice", "bob", "phone"))
        for name in ("alice", "bob", "phone"):
            procs.append(_serve(tmp_path, name, url))
        A, B = laptop["person_id"], bob["person_id"]
        topic = one_to_one_id(A, B)

        ca, cb = pair(d1, db)
        assert ca["person_id"] == B and cb["person_id"] == A
        req(d1, "send", contact=B, text="from laptop")
        req(db, "send", contact=A, text="from bob")
        wait_history(d1, B, ["from laptop", "from bob"])
        wait_history(db, A, ["from laptop", "from bob"])

        # the phone joins: paired with the laptop (a device of my own person: no contact)
        c_laptop, c_phone = pair(d1, d2)
        assert c_laptop is None and c_phone is None
        assert req(d1, "contacts")["contacts"][0]["person_id"] == B
        assert req(d2, "contacts")["contacts"] == []
        wait_history(d2, topic, ["from laptop", "from bob"])
        req(d2, "send", contact=topic, text="from phone")
        req(db, "send", contact=A, text="bob again")
        want = ["from laptop", "from bob", "from phone", "bob again"]
        h1 = wait_history(d1, B, want)
        hb = wait_history(db, A, want)
        h2 = wait_history(d2, topic, want)
        assert [m["id"] for m in h1] == [m["id"] for m in hb] == [m["id"] for m in h2]
        assert {m["sender"] for m in h2 if m["text"] in ("from laptop", "from phone")} == {A}
    finally:
        for p in procs:
            p.stop()
