"""End to end in separate processes on 127.0.0.1 (issue 9 "Tests that must exist"): a comm
server process, ``lama invite`` and ``lama accept`` processes that pair and see their CHUM
connection come up, then two instance processes (tests/manager_peer.py) that sync a granted
object both ways; kill -9 of the comm server and of one instance, restart: the connections come
back by themselves, sync resumes, no duplicate contacts."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lama._core import core

ROOT = Path(__file__).resolve().parent.parent
SECRET = "e2e-secret"

COMM_SERVER = """
import asyncio, sys
from lama._core import core
async def main():
    server = await core.comm_server("127.0.0.1", int(sys.argv[1]))
    print(server.url, flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("LAMA_SECRET", "LAMA_COMM_SERVER")}
    e["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + e.get("PYTHONPATH", "")
    e["LAMA_SECRET"] = SECRET
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def lama(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lama.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env(), timeout=timeout)


class Proc:
    """A child process whose stdout lines are read (by a thread) with a deadline."""

    def __init__(self, args: list[str], environ: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env=env() if environ is None else environ)
        self.q: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        # stderr is read all the time too: a pipe nobody reads fills (64 KiB of logs) and then
        # blocks the child at its next log line, which looks like a peer that stopped answering
        self._err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def _pump_err(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self._err.append(line)
            if len(self._err) > 400:
                del self._err[:200]

    def readline(self, timeout: float) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output within {timeout}s; stderr: {self.stderr()}") from None
        if line is None:
            self.q.put(None)
            raise AssertionError(f"exited {self.p.wait()}: {self.stderr()}")
        self.lines.append(line)
        return line

    def rest(self, timeout: float) -> str:
        """Everything it prints until it exits."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"still running after {timeout}s") from None
            if line is None:
                self.q.put(None)
                return "\n".join(out)
            out.append(line)

    def event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.01, deadline - time.monotonic()))
            with_json = line.startswith("{")
            if with_json and json.loads(line).get("event") == name:
                return json.loads(line)  # type: ignore[no-any-return]

    def stderr(self) -> str:
        """The end of what it wrote to stderr ("(running)" while it runs)."""
        if self.p.poll() is None:
            return "(running)"
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.05)  # the pump thread reads what was left in the pipe
        return "".join(self._err)[-2000:]

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def comm_server(port: int) -> Proc:
    p = Proc([sys.executable, "-c", COMM_SERVER, str(port)])
    try:
        assert p.readline(30).startswith("ws://127.0.0.1:")
    except BaseException:
        p.stop()  # never leave a server process behind
        raise
    return p


def init(base: Path, name: str) -> dict[str, Any]:
    r = lama("init", "--dir", str(base / name), "--name", name, "--email",
             f"{name}@example.org", "--instance-name", f"inst-{name}", "--json")
    assert r.returncode == 0, r.stderr
    info: dict[str, Any] = json.loads(r.stdout)
    return info


def note_hash(text: str, sender: str) -> str:
    h: str = core.object_hash({"$type$": "ChatMessage", "text": text, "sender": sender})
    return h


def peer(base: Path, name: str, url: str, *extra: str) -> Proc:
    return Proc([sys.executable, str(ROOT / "tests" / "manager_peer.py"), "--dir",
                 str(base / name), "--url", url, *extra])


def test_invite_accept_then_sync_kill_and_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        server = comm_server(port)
        procs.append(server)
        a, b = init(tmp_path, "a"), init(tmp_path, "b")
        # lama invite / lama accept in two processes
        t0 = time.monotonic()
        inviter = Proc([sys.executable, "-m", "lama.cli", "invite", "--dir", str(tmp_path / "a"),
                        "--comm-server", url, "--lifetime", "60", "--json",
                        "--png", str(tmp_path / "invite.png")])
        procs.append(inviter)
        link = inviter.readline(30)
        assert "#" in link, link
        assert (tmp_path / "invite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        r = lama("accept", link, "--dir", str(tmp_path / "b"), "--comm-server", url, "--json")
        assert r.returncode == 0, r.stderr
        got_b = json.loads(r.stdout)
        rest = inviter.rest(30)
        assert inviter.p.wait(30) == 0, inviter.stderr()
        got_a = json.loads(rest[rest.index("{"):])
        print(f"invite -> both CLIs done: {(time.monotonic() - t0) * 1000:.0f} ms; "
              f"CHUM up after pairing: accept side {got_b['chum_connected_after']}, "
              f"invite side {got_a['chum_connected_after']} s")
        assert "█" in rest  # the terminal QR code between the link and the report
        assert got_b["person_id"] == a["person_id"] and got_a["person_id"] == b["person_id"]
        assert got_a["chum_connected_after"] is not None
        assert got_b["chum_connected_after"] is not None
        # a used token is refused: a third instance cannot reuse the link
        c = init(tmp_path, "c")
        r = lama("accept", link, "--dir", str(tmp_path / "c"), "--comm-server", url,
                 "--chum-wait", "0")
        assert r.returncode == 1 and r.stderr.startswith("error: "), (r.returncode, r.stderr)
        assert c["person_id"] not in r.stdout

        # two instance processes: a granted note each way
        ha1, hb1, hb2 = (note_hash("a1", a["person_id"]), note_hash("b1", b["person_id"]),
                         note_hash("b2", b["person_id"]))
        pa = peer(tmp_path, "a", url, "--write", "a1", "--to", b["person_id"],
                  "--expect", hb1, "--expect", hb2, "--max-time", "120")
        pb = peer(tmp_path, "b", url, "--write", "b1", "--to", a["person_id"], "--expect", ha1)
        procs += [pa, pb]
        t1 = time.monotonic()
        pb.event("got", 30)
        pa.event("got", 30)
        first_b = pb.event("done", 10)
        assert first_b["endpoint_objects"] == 1 and first_b["profiles"] >= 1, first_b
        print(f"two processes: notes both ways after {(time.monotonic() - t1) * 1000:.0f} ms")

        # kill -9 the comm server and B; restart the server, then B with a new note
        server.kill()
        pb.kill()
        time.sleep(0.5)
        server = comm_server(port)
        procs.append(server)
        t2 = time.monotonic()
        pb2 = peer(tmp_path, "b", url, "--write", "b2", "--to", a["person_id"], "--expect", ha1)
        procs.append(pb2)
        done_b = pb2.event("done", 30)
        assert done_b["endpoints"] == 1  # A's note was there already
        # no duplicate contact objects after the restarts
        assert (done_b["endpoint_objects"], done_b["profiles"]) == (1, first_b["profiles"])
        pb2.event("connected", 30)
        got = pa.event("got", 30)
        assert got["hash"] == hb2
        done = pa.event("done", 10)
        print(f"comm server and B killed and restarted: sync resumed after "
              f"{(time.monotonic() - t2) * 1000:.0f} ms")
        assert done["endpoints"] == 1 and done["connections"] == 1  # no duplicate contact
        assert done["endpoint_objects"] == 1, done
        pb2.p.terminate()
        assert pb2.p.wait(20) == 0, pb2.stderr()
        pa.p.terminate()
        assert pa.p.wait(20) == 0, pa.stderr()
    finally:
        for p in procs:
            p.stop()


def test_invite_expires_with_status_1(tmp_path: Path) -> None:
    port = free_port()
    server = comm_server(port)
    try:
        init(tmp_path, "a")
        t0 = time.monotonic()
        r = lama("invite", "--dir", str(tmp_path / "a"), "--comm-server",
                 f"ws://127.0.0.1:{port}", "--lifetime", "1", timeout=30)
        assert r.returncode == 1, (r.returncode, r.stderr)
        assert "LAMA-PAIR-TIMEOUT" in r.stderr
        assert time.monotonic() - t0 < 20
        assert "#" in r.stdout.splitlines()[0]
        r = lama("accept", "not a link", "--dir", str(tmp_path / "a"))
        assert r.returncode == 1 and r.stderr.startswith("error: "), (r.returncode, r.stderr)
    finally:
        server.stop()
