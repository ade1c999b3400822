"""A second device of the same person by the CLI, every step its own process (issue 10 "a
second device of the same person joins and converges"; lama.connect.device): Alice's laptop
and Bob chat, each its own ``lama serve``; ``lama invite --device`` (through the laptop's
running serve) prints a device link; ``lama init --join LINK`` creates the phone with its own
secret; the phone's ``lama serve`` receives the conversation, its messages reach Bob, and all
three converge on one history. The used link is refused afterwards and creates nothing. Bob
learns of the phone from Alice's profile (docs/connections.md §3.5): with the laptop's serve
stopped, the phone and Bob still exchange messages.
CI=true, no stdin, secrets only in LAMA_SECRET."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lama.connect import pairing

pytestmark = pytest.mark.timeout(300)
PHONE_SECRET = "phone-only-secret"


def phone_env() -> dict[str, str]:
    from test_pairing_e2e import env

    e = env()
    e["LAMA_SECRET"] = PHONE_SECRET
    e["CI"] = "true"
    return e


def lama_phone(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lama.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=phone_env(), timeout=timeout)


def phone_serve(base: Path, url: str) -> Any:
    from test_pairing_e2e import Proc

    # the shared helper drains the child's stderr (an unread pipe blocks the child at 64 KiB)
    p = Proc([sys.executable, "-m", "lama.cli", "serve", "--dir", str(base / "phone"),
              "--comm-server", url, "--json"], environ=phone_env())
    try:
        p.event("ready", 60)
    except BaseException:
        p.stop()
        raise
    return p


def test_cli_invite_device_init_join_serve_converge(tmp_path: Path) -> None:
    from lama.chat import one_to_one_id
    from test_chat_e2e import instance_dir, lama, pair, req, serve, wait_history
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Any] = []
    try:
        procs.append(comm_server(port))
        laptop, bob = init(tmp_path, "alice"), init(tmp_path, "bob")
        d1, db = instance_dir(tmp_path, "alice"), instance_dir(tmp_path, "bob")
        laptop_serve = serve(tmp_path, "alice", url)
        procs += [laptop_serve, serve(tmp_path, "bob", url)]
        A, B = laptop["person_id"], bob["person_id"]
        pair(d1, db)
        req(d1, "send", contact=B, text="from laptop")
        req(db, "send", contact=A, text="from bob")
        wait_history(d1, B, ["from laptop", "from bob"])

        # device 1: the device invitation, through its running lama serve
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--device", "--dir",
                        str(tmp_path / "alice"), "--lifetime", "120", "--json"])
        procs.append(inviter)
        link = next(line for line in iter(lambda: inviter.readline(60), None)
                    if line.startswith("https://"))
        assert pairing.DEVICE_PATH in link
        # device 2: a new instance of the same person (its own secret)
        r = lama_phone("init", "--join", link, "--dir", str(tmp_path / "phone"),
                       "--instance-name", "alice-phone", "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        phone = json.loads(r.stdout)
        assert phone["person_id"] == A and phone["instance_id"] != laptop["instance_id"]
        assert phone["email"] == laptop["email"] and phone["instance_name"] == "alice-phone"
        assert phone["person_keys"] == laptop["person_keys"]
        assert phone["joined"]["device"] == laptop["instance_id"]
        assert phone["joined"]["contacts"] == [B]
        assert inviter.p.wait(60) == 0, inviter.stderr()
        rest = inviter.rest(10)
        report = json.loads(rest[rest.index("\n{") + 1:])
        assert report == {"device": True, "person_id": A, "instance_id": phone["instance_id"]}
        # the phone's keychain opens with its own secret only
        r = lama_phone("whoami", "--dir", str(tmp_path / "phone"), "--check-secret", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["person_id"] == A, r.stderr
        r = lama("whoami", "--dir", str(tmp_path / "phone"), "--check-secret")
        assert r.returncode == 1, "device 1's secret must not open the phone"
        # the contacts came along
        r = lama_phone("contacts", "--dir", str(tmp_path / "phone"), "--json")
        assert r.returncode == 0, r.stderr
        assert [c["person_id"] for c in json.loads(r.stdout)] == [B]

        # the phone runs: it connects to the laptop and receives the conversation
        procs.append(phone_serve(tmp_path, url))
        d2 = instance_dir(tmp_path, "phone")
        wait_history(d2, B, ["from laptop", "from bob"])
        req(d2, "send", contact=B, text="from phone")
        req(db, "send", contact=A, text="bob again")
        req(d1, "send", contact=B, text="laptop again")
        want = ["from laptop", "from bob", "from phone", "bob again", "laptop again"]
        h1 = wait_history(d1, B, want)
        hb = wait_history(db, A, want)
        h2 = wait_history(d2, one_to_one_id(A, B), want)
        assert [m["id"] for m in h1] == [m["id"] for m in hb] == [m["id"] for m in h2]
        assert {m["sender"] for m in hb if m["text"] in ("from phone", "from laptop")} == {A}

        # the used link: refused, exit status 1, nothing created
        r = lama_phone("init", "--join", link, "--dir", str(tmp_path / "tablet"),
                       "--instance-name", "alice-tablet")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "used already" in r.stderr and "LAMA-DEVICE" in r.stderr
        assert not (tmp_path / "tablet").exists() or not any((tmp_path / "tablet").iterdir())
        # usage errors: --join with --email; a partner link
        r = lama_phone("init", "--join", link, "--dir", str(tmp_path / "t2"), "--email",
                       "x@example.org")
        assert r.returncode == 2 and "--email" in r.stderr
        r = lama_phone("init", "--join", link.replace("inviteDevice", "invitePartner"),
                       "--dir", str(tmp_path / "t3"))
        assert r.returncode == 2 and "lama accept" in r.stderr
        assert not (tmp_path / "t2").exists() and not (tmp_path / "t3").exists()

        # Bob learnt of the phone from Alice's profile (docs/connections.md §3.5): his contact
        # lists both of her instances; with the laptop stopped the phone and Bob still talk
        deadline = time.monotonic() + 60
        while True:
            [alice_at_bob] = req(db, "contacts")["contacts"]
            if len(alice_at_bob["instances"]) == 2:
                break
            assert time.monotonic() < deadline, alice_at_bob
            time.sleep(0.1)
        assert sorted(alice_at_bob["instances"]) == sorted([laptop["instance_id"],
                                                            phone["instance_id"]])
        laptop_serve.stop()
        req(d2, "send", contact=B, text="phone, laptop off")
        wait_history(db, A, [*want, "phone, laptop off"])
        req(db, "send", contact=A, text="bob to the phone")
        want += ["phone, laptop off", "bob to the phone"]
        hb = wait_history(db, A, want)
        h2 = wait_history(d2, one_to_one_id(A, B), want)
        assert [m["id"] for m in hb] == [m["id"] for m in h2]
    finally:
        for p in procs:
            p.stop()


def test_cli_invite_device_without_serve(tmp_path: Path) -> None:
    """``lama invite --device`` opening the instance itself (no ``lama serve``): the join
    works, the report names the new device, the new device has the contact."""
    from test_chat_e2e import instance_dir, pair, serve
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Any] = []
    try:
        procs.append(comm_server(port))
        laptop, bob = init(tmp_path, "alice"), init(tmp_path, "bob")
        sa, sb = serve(tmp_path, "alice", url), serve(tmp_path, "bob", url)
        procs += [sa, sb]
        pair(instance_dir(tmp_path, "alice"), instance_dir(tmp_path, "bob"))
        sa.stop()  # the laptop is not served now
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--device", "--dir",
                        str(tmp_path / "alice"), "--comm-server", url, "--json"])
        procs.append(inviter)
        link = next(line for line in iter(lambda: inviter.readline(60), None)
                    if line.startswith("https://"))
        r = lama_phone("init", "--join", link, "--dir", str(tmp_path / "phone"))
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert "joined the device:" in r.stdout and "inst-alice" in r.stdout
        assert inviter.p.wait(60) == 0, inviter.stderr()
        rest = inviter.rest(10)
        report = json.loads(rest[rest.index("\n{") + 1:])
        assert report["device"] is True and report["person_id"] == laptop["person_id"]
        r = lama_phone("contacts", "--dir", str(tmp_path / "phone"), "--json")
        assert [c["person_id"] for c in json.loads(r.stdout)] == [bob["person_id"]]
    finally:
        for p in procs:
            p.stop()
