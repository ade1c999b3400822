"""Chat end to end with real processes on 127.0.0.1 (issue 10 tests): a comm server process and
``lama serve`` processes driven through their control channels and the CLI.

* two instances chat both ways through the comm server;
* one side is killed (SIGKILL) mid-conversation and restarted; what the other side posted
  while it was down arrives once it is back, and what it stored while down (``lama send``
  without a server) goes out when it serves again;
* repeated pairing and reconnection make no duplicate contacts or messages;
* both sides end with the identical merged history;
* the CLI (``lama contacts/send/messages/status``) works against a running ``lama serve``;
  SIGTERM stops ``lama serve`` with status 0 and removes its control file.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lama import control
from lama.errors import NotFoundError
from test_pairing_e2e import Proc, comm_server, env, free_port, init

pytestmark = pytest.mark.timeout(240)


def serve(base: Path, name: str, url: str) -> Proc:
    p = Proc([sys.executable, "-m", "lama.cli", "serve", "--dir", str(base / name),
              "--comm-server", url, "--json"])
    p.event("ready", 60)
    return p


def instance_dir(base: Path, name: str) -> Path:
    [d] = [p for p in (base / name).iterdir() if (p / "instance.json").is_file()]
    return d


def req(d: Path, op: str, **args: Any) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(control.request(d, op, **args), 60))


def history(d: Path, person: str) -> list[dict[str, Any]]:
    """The conversation with a contact or in a topic (``person``: a person or topic id)."""
    async def run() -> list[dict[str, Any]]:
        return [m["item"] async for m in control.stream(d, "messages", contact=person)
                if "item" in m]

    return asyncio.run(asyncio.wait_for(run(), 60))


def pair(da: Path, db: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A invites, B accepts; returns (A's contact, B's contact)."""
    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        stream = control.stream(da, "invite", lifetime=60)
        first = await stream.__anext__()
        b_side = await control.request(db, "accept", link=first["info"]["link"])
        a_side = await stream.__anext__()
        await stream.aclose()
        return a_side["contact"], b_side["contact"]

    return asyncio.run(asyncio.wait_for(run(), 90))


def wait_history(d: Path, person: str, texts: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    """Wait until the conversation holds exactly ``texts`` (as a multiset)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            h = history(d, person)
        except NotFoundError:  # the topic has not arrived yet
            h = []
        if sorted(m["text"] for m in h) == sorted(texts):
            return h
        if time.monotonic() > deadline:
            raise AssertionError(f"history {[m['text'] for m in h]} != {texts}")
        time.sleep(0.05)


def lama(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lama.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env(), timeout=timeout)


def test_chat_kill_restart_offline_repair(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(comm_server(port))
        a, b = init(tmp_path, "a"), init(tmp_path, "b")
        da, db = instance_dir(tmp_path, "a"), instance_dir(tmp_path, "b")
        pa, pb = serve(tmp_path, "a", url), serve(tmp_path, "b", url)
        procs += [pa, pb]
        ca, cb = pair(da, db)
        assert ca["person_id"] == b["person_id"] and cb["person_id"] == a["person_id"]
        A, B = b["person_id"], a["person_id"]  # whom A and B talk to

        # both ways
        texts = []
        for d, to, text in ((da, A, "a1"), (db, B, "b1"), (da, A, "a2"), (db, B, "b2")):
            m = req(d, "send", contact=to, text=text)["message"]
            assert m["text"] == text and m["sender"] != to
            texts.append(text)
        wait_history(db, B, texts)
        wait_history(da, A, texts)

        # SIGKILL B mid-conversation; A posts while B is down
        pb.kill()
        assert control.server_running(db) is False  # its control file is stale, not live
        for text in ("a3 while b is down", "a4 while b is down"):
            req(da, "send", contact=A, text=text)
            texts.append(text)
        # B, without a server, stores a message with `lama send` (goes out when it serves)
        r = lama("send", a["email"], "b3 stored offline", "--dir", str(tmp_path / "b"), "--json")
        assert r.returncode == 0, r.stderr
        texts.append("b3 stored offline")
        r = lama("status", "--dir", str(tmp_path / "b"), "--json")  # no server: from the store
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["serving"] is False and st["contacts"] == 1
        r = lama("messages", a["email"], "--dir", str(tmp_path / "b"), "--last", "1")
        assert r.returncode == 0 and "b3 stored offline" in r.stdout, (r.stdout, r.stderr)
        pb = serve(tmp_path, "b", url)
        procs.append(pb)
        hb = wait_history(db, B, texts)
        ha = wait_history(da, A, texts)
        # identical merged history, no duplicates
        assert [m["id"] for m in ha] == [m["id"] for m in hb]
        assert len({m["id"] for m in ha}) == len(texts)

        # repeated pairing and reconnection: still one contact each, no duplicate message
        ca2, cb2 = pair(da, db)
        assert ca2["person_id"] == A and cb2["person_id"] == B
        req(db, "send", contact=B, text="b4 after re-pairing")
        texts.append("b4 after re-pairing")
        for d in (da, db):
            assert len(req(d, "contacts")["contacts"]) == 1
        ha = wait_history(da, A, texts)
        hb = wait_history(db, B, texts)
        assert [m["id"] for m in ha] == [m["id"] for m in hb]

        # the CLI against the running servers; a second serve of a served instance is refused
        r = lama("serve", "--dir", str(tmp_path / "a"), "--comm-server", url)
        assert r.returncode == 1 and "LAMA-SERVE-RUNNING" in r.stderr, (r.returncode, r.stderr)
        r = lama("contacts", "--dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        assert [c["person_id"] for c in json.loads(r.stdout)] == [A]
        r = lama("messages", "b@example.org", "--dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [m["id"] for m in ha]
        r = lama("status", "--dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["serving"] and st["total"] == 1 and st["peers"][0]["person_id"] == A
        r = lama("status", "--dir", str(tmp_path / "a"))
        assert "1 of 1 contacts connected" in r.stdout, r.stdout

        # clean stop on SIGTERM: status 0, control file gone
        for p, d in ((pa, da), (pb, db)):
            p.p.terminate()
            assert p.p.wait(30) == 0, p.stderr()
            assert not (d / control.CONTROL_FILE).exists()
    finally:
        for p in procs:
            p.stop()

