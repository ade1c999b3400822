"""Removing a device by the CLI, every instance its own process (issue 10; docs/connections.md
§3.5 "Removing a device"): Alice's laptop and phone and Bob each run ``lama serve``; the phone
talks to Bob directly; ``lama device remove alice-phone`` on the laptop (through its running
serve) revokes the phone: ``lama device list`` lists the laptop only, Bob's serve drops the
phone (no route, no connection; his contact lists the laptop only), the phone's serve is
refused as a removed device, the phone's earlier message stays everywhere, and the laptop and
Bob still chat. Removing an unknown device or the laptop itself fails with exit status 1 and
changes nothing. CI=true, no stdin, secrets only in LAMA_SECRET."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from test_device_cli import lama_phone, phone_serve  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _until(pred: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_cli_remove_a_device(tmp_path: Path) -> None:
    from lama.chat import one_to_one_id
    from lama.connect.manager import DEVICE_REMOVED
    from test_chat_e2e import instance_dir, lama, pair, req, serve, wait_history
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Any] = []
    try:
        procs.append(comm_server(port))
        laptop, bob = init(tmp_path, "alice"), init(tmp_path, "bob")
        d1, db = instance_dir(tmp_path, "alice"), instance_dir(tmp_path, "bob")
        procs += [serve(tmp_path, "alice", url), serve(tmp_path, "bob", url)]
        A, B = laptop["person_id"], bob["person_id"]
        pair(d1, db)
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--device", "--dir",
                        str(tmp_path / "alice"), "--lifetime", "120", "--json"])
        procs.append(inviter)
        link = next(line for line in iter(lambda: inviter.readline(60), None)
                    if line.startswith("https://"))
        r = lama_phone("init", "--join", link, "--dir", str(tmp_path / "phone"),
                       "--instance-name", "alice-phone", "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        phone = json.loads(r.stdout)
        assert inviter.p.wait(60) == 0, inviter.stderr()
        procs.append(phone_serve(tmp_path, url))
        d2 = instance_dir(tmp_path, "phone")
        req(d2, "send", contact=B, text="from phone")
        wait_history(db, A, ["from phone"])
        # Bob routes the phone (Alice's profile) and is connected to it
        _until(lambda: any(p["instance_id"] == phone["instance_id"] and p["connected"]
                           for p in req(db, "status")["status"]["peers"]),
               "bob connected to the phone")

        r = lama("device", "list", "--dir", str(tmp_path / "alice"), "--json")
        assert r.returncode == 0, r.stderr
        devs = json.loads(r.stdout)
        assert {d["instance_id"] for d in devs} == {laptop["instance_id"], phone["instance_id"]}
        assert [d["name"] for d in devs if d["this"]] == [laptop["instance_name"]]

        # errors: exit status 1, one line, nothing changed
        for bad, code in (("no-such-device", "LAMA-DEVICE-UNKNOWN"),
                          (laptop["instance_name"], "LAMA-DEVICE-SELF")):
            r = lama("device", "remove", bad, "--dir", str(tmp_path / "alice"))
            assert r.returncode == 1 and code in r.stderr, (r.stdout, r.stderr)
        r = lama("device", "list", "--dir", str(tmp_path / "alice"), "--json")
        assert json.loads(r.stdout) == devs

        # the laptop removes the phone
        r = lama("device", "remove", "alice-phone", "--dir", str(tmp_path / "alice"), "--json")
        assert r.returncode == 0, (r.stdout, r.stderr)
        removed = json.loads(r.stdout)
        assert removed["instance_id"] == phone["instance_id"]
        assert removed["instance_keys"] == [phone["instance_keys"]]
        r = lama("device", "list", "--dir", str(tmp_path / "alice"), "--json")
        assert [d["instance_id"] for d in json.loads(r.stdout)] == [laptop["instance_id"]]

        # Bob's serve drops the phone: no route (so no dialling), no connection
        _until(lambda: all(p["instance_id"] != phone["instance_id"]
                           for p in req(db, "status")["status"]["peers"]),
               "bob's manager dropped the phone")
        [alice_at_bob] = req(db, "contacts")["contacts"]
        assert alice_at_bob["instances"] == [laptop["instance_id"]]
        assert all(p["instance_id"] != phone["instance_id"]
                   for p in req(d1, "status")["status"]["peers"])
        # the phone's serve, still running, is refused as a removed device
        _until(lambda: any(DEVICE_REMOVED in str(p.get("last_error") or "")
                           for p in req(d2, "status")["status"]["peers"]),
               "the phone was refused", timeout=90)

        # the laptop and Bob still chat; the phone's message stays with both
        req(d1, "send", contact=B, text="laptop after")
        req(db, "send", contact=A, text="bob after")
        want = ["from phone", "laptop after", "bob after"]
        h1 = wait_history(d1, B, want)
        hb = wait_history(db, A, want)
        assert [m["id"] for m in h1] == [m["id"] for m in hb]
        assert "bob after" not in [m["text"] for m in
                                   wait_history(d2, one_to_one_id(A, B), ["from phone"])]
    finally:
        for p in procs:
            p.stop()
