"""The lama demo: two devices pair and chat through a comm server, each in its own process.

``lama demo`` (or ``./dev demo``, ``python -m lama.demo``) runs on 127.0.0.1:

1. a comm server (``lama comm-server --port 0``, its own process);
2. Alice's and Bob's instances, created in a fresh directory, each run by ``lama serve`` in its
   own process (connections, CHUM sync, events);
3. Alice invites, Bob accepts the link: both sides store the other's identity, trust its keys,
   create the contact and the 1-to-1 topic with its grants, and the CHUM connection comes up;
4. messages both ways, then a file from Alice to Bob (a BLOB with its descriptor), checked
   byte for byte on Bob's side;
5. both histories are compared (the same merged conversation on both devices), the status of
   each instance is shown, both servers stop on SIGTERM and must exit 0.

Each step is printed as it happens with its measured time. This process drives the two
instances only through their control channels (lama.control), as ``lama send``/``messages``
would. Exit status 0 only if every step succeeded. ``LAMA_CORE=pure`` runs every process on
the pure-Python core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

STEP_TIMEOUT = 60.0


class DemoError(Exception):
    pass


class Child:
    """A child process whose output lines are shown (prefixed) as they come; JSON event lines
    are kept for waiting on them."""

    def __init__(self, label: str, proc: asyncio.subprocess.Process, show: Any) -> None:
        self.label = label
        self.proc = proc
        self.show = show
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.changed = asyncio.Event()
        self.stderr: list[str] = []
        self._tasks = [asyncio.ensure_future(self._pump_out()),
                       asyncio.ensure_future(self._pump_err())]

    async def _pump_out(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    self.events.append(ev)
                    self.show(self.label, ev)
            self.changed.set()
        self.changed.set()

    async def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip("\n"))

    async def wait_for(self, pred: Any, timeout: float = STEP_TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            for j in range(i, len(self.lines)):
                r = pred(self.lines[j])
                if r:
                    return r
            i = len(self.lines)
            if self.proc.returncode is not None:
                raise DemoError(f"{self.label} exited with status {self.proc.returncode}: "
                                + " | ".join(self.stderr[-5:]))
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"{self.label}: nothing after {timeout:g} s")
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))

    async def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
        try:
            rc = await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            rc = await self.proc.wait()
        for t in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 2.0)
        return rc


def _child_env(secret: str) -> dict[str, str]:
    env = dict(os.environ)
    env["LAMA_SECRET"] = secret
    env.pop("LAMA_COMM_SERVER", None)
    # the children import the same lama as this process (a checkout or an installed wheel)
    import lama

    pkg_parent = str(Path(lama.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _spawn(label: str, args: list[str], env: dict[str, str], show: Any) -> Child:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lama.cli", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    return Child(label, proc, show)


class Demo:
    def __init__(self, base: Path, attachment_size: int, quiet: bool) -> None:
        self.base = base
        self.attachment_size = attachment_size
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.timings: list[tuple[str, float]] = []
        self.children: list[Child] = []

    def say(self, text: str) -> None:
        print(f"[{(time.monotonic() - self.t0) * 1000:8.0f} ms] {text}", flush=True)

    def show_event(self, label: str, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind in ("connection_up", "connection_down", "paired", "message", "sync", "online"):
            text = {
                "connection_up": "CHUM connection up",
                "connection_down": f"connection closed ({ev.get('reason')})",
                "paired": "paired",
                "message": "new message: " + (ev.get("message") or {}).get("text", "")[:60],
                "sync": f"received {ev.get('objects')} objects",
                "online": "registered at the comm server" if ev.get("online") else "offline",
            }[kind]
            self.say(f"    {label:<6} | {text}")

    def timed(self, label: str, started: float) -> float:
        ms = (time.monotonic() - started) * 1000
        self.timings.append((label, ms))
        return ms

    async def run(self) -> int:
        from lama import control
        from lama._core import CORE_NAME
        from lama.identity.instance import Instance

        print(f"lama demo - core: {CORE_NAME}, directory: {self.base}", flush=True)
        secret = secrets.token_hex(16)  # a throwaway secret: these instances live for the demo
        env = _child_env(secret)
        env_core = os.environ.get("LAMA_CORE", "rust")

        # 1. comm server
        t = time.monotonic()
        server = await _spawn("relay", ["comm-server", "--host", "127.0.0.1", "--port", "0"],
                              env, self.show_event)
        self.children.append(server)
        url = await server.wait_for(lambda ln: ln if ln.startswith("ws://") else None)
        self.say(f"1. comm server running at {url} (pid {server.proc.pid}, "
                 f"{self.timed('comm server up', t):.0f} ms)")

        # 2. two instances, each served by its own process
        t = time.monotonic()

        def create(email: str, name: str, device: str) -> str:
            with Instance.create(self.base / name.lower(), email=email, person_name=name,
                                 instance_name=device, secret=secret) as inst:
                return str(inst.path)

        alice_dir, bob_dir = await asyncio.gather(
            asyncio.to_thread(create, "alice@example.com", "Alice", "alice-laptop"),
            asyncio.to_thread(create, "bob@example.com", "Bob", "bob-phone"))
        self.say(f"2. created Alice's and Bob's instances (keys, encrypted keychains; "
                 f"{self.timed('two instances created', t):.0f} ms)")
        t = time.monotonic()
        alice = await _spawn("alice", ["serve", "--dir", alice_dir, "--comm-server", url,
                                       "--json"], env, self.show_event)
        bob = await _spawn("bob", ["serve", "--dir", bob_dir, "--comm-server", url, "--json"],
                           env, self.show_event)
        self.children += [alice, bob]
        for child in (alice, bob):
            await child.wait_for(lambda ln: '"event": "ready"' in ln)
        self.say(f"   lama serve running for Alice (pid {alice.proc.pid}) and Bob "
                 f"(pid {bob.proc.pid}), core {env_core} "
                 f"({self.timed('two lama serve processes ready', t):.0f} ms)")

        # 3. pairing
        t = time.monotonic()
        invite = control.stream(alice_dir, "invite", lifetime=120)
        first = await asyncio.wait_for(invite.__anext__(), STEP_TIMEOUT)
        link = first["info"]["link"]
        self.say(f"3. Alice invites: {link[:72]}...")
        accepted = await asyncio.wait_for(control.request(bob_dir, "accept", link=link),
                                          STEP_TIMEOUT)
        alice_side = await asyncio.wait_for(invite.__anext__(), STEP_TIMEOUT)
        with contextlib.suppress(StopAsyncIteration):
            await invite.__anext__()
        ms = self.timed("pairing (invite -> both contacts created)", t)
        bob_contact, alice_contact = accepted["contact"], alice_side["contact"]
        self.say(f"   paired in {ms:.0f} ms: Bob has the contact {bob_contact.get('name')} "
                 f"<{bob_contact.get('email')}>, Alice has {alice_contact.get('name')} "
                 f"<{alice_contact.get('email')}>")
        t = time.monotonic()
        for d, other in ((alice_dir, alice_contact), (bob_dir, bob_contact)):
            await self._wait_connected(d, other["person_id"])
        self.say(f"   CHUM connection up and first sync done on both sides "
                 f"({self.timed('CHUM connected and synced after pairing', t):.0f} ms)")

        # 4. messages both ways, then a file
        follow_bob = _Follower(bob_dir, bob_contact["person_id"])
        follow_alice = _Follower(alice_dir, alice_contact["person_id"])
        await asyncio.gather(follow_bob.start(), follow_alice.start())
        try:
            exchange = [
                (alice_dir, alice_contact, follow_bob, "Alice", "Bob", "Hi Bob! 👋", None),
                (bob_dir, bob_contact, follow_alice, "Bob", "Alice", "Hi Alice, got it.", None),
                (alice_dir, alice_contact, follow_bob, "Alice", "Bob",
                 "Here is the file.", "alice-notes.bin"),
                (bob_dir, bob_contact, follow_alice, "Bob", "Alice", "Thanks, file received.",
                 None),
            ]
            n = 4
            for i, (d, to, follower, frm, peer, text, fname) in enumerate(exchange):
                attach = []
                if fname:
                    path = self.base / fname
                    data = os.urandom(self.attachment_size)
                    path.write_bytes(data)
                    digest = hashlib.sha256(data).hexdigest()
                    attach = [str(path)]
                    self.say(f"{n}. {frm} sends {text!r} with {fname} "
                             f"({len(data):,} bytes, sha256 {digest[:16]}...)")
                else:
                    self.say(f"{n}. {frm} sends {text!r}")
                t = time.monotonic()
                sent = await asyncio.wait_for(
                    control.request(d, "send", contact=to["person_id"], text=text,
                                    attach=attach), STEP_TIMEOUT)
                mid = sent["message"]["id"]
                posted = self.timed(f"post ({frm})", t)
                got = await follower.wait(mid, STEP_TIMEOUT)
                seen = self.timed(f"{frm} -> {peer}: send -> visible at the peer"
                                  + (" (with file)" if fname else ""), t)
                self.say(f"   stored and posted in {posted:.1f} ms; visible at {peer}'s "
                         f"device {seen:.1f} ms after the send")
                if got["text"] != text:
                    raise DemoError(f"{peer} got {got['text']!r}, not {text!r}")
                if fname:
                    t = time.monotonic()
                    out = self.base / f"received-{fname}"
                    saved = await asyncio.wait_for(
                        control.request(bob_dir, "attachment", message=mid, index=0,
                                        path=str(out)), STEP_TIMEOUT)
                    ok = out.read_bytes() == data
                    self.say(f"   Bob saved {saved.get('name')} ({saved.get('size'):,} bytes) "
                             f"to {out.name}: {'identical' if ok else 'DIFFERENT'} "
                             f"(sha256 {saved.get('sha256', '')[:16]}..., "
                             f"{self.timed('attachment read back at the peer', t):.0f} ms)")
                    if not ok:
                        raise DemoError("the received attachment differs from the sent file")
                n += 1
        finally:
            await asyncio.gather(follow_bob.close(), follow_alice.close())

        # 5. the same history on both devices, status, clean stop
        hist = {}
        for who, d, c in (("Alice", alice_dir, alice_contact), ("Bob", bob_dir, bob_contact)):
            items: list[dict[str, Any]] = []
            async for msg in control.stream(d, "messages", contact=c["person_id"]):
                if "item" in msg:
                    items.append(msg["item"])
            hist[who] = items
        same = ([m["id"] for m in hist["Alice"]] == [m["id"] for m in hist["Bob"]]
                and len(hist["Alice"]) == len(exchange))
        self.say(f"{n}. the conversation on both devices ({len(hist['Alice'])} messages, "
                 f"{'identical' if same else 'DIFFERENT'}):")
        for m in hist["Alice"]:
            files = "".join(f"  [{a['name']}, {a['size']:,} bytes]" for a in m["attachments"])
            print(f"      {m.get('sender_name') or m['sender'][:8]:<6} {m['text']}{files}")
        if not same:
            raise DemoError("the two devices show different conversations")
        for who, d in (("Alice", alice_dir), ("Bob", bob_dir)):
            st = (await control.request(d, "status"))["status"]
            p = st["peers"][0] if st["peers"] else {}
            lat = p.get("latency")
            self.say(f"   status {who}: {st['status']}, {st['active']}/{st['total']} contacts "
                     f"connected, online {st['online']}, round trip "
                     f"{lat * 1000:.1f} ms" if lat else f"   status {who}: {st['status']}")
        t = time.monotonic()
        for child in (alice, bob):
            rc = await child.terminate()
            if rc != 0:
                raise DemoError(f"lama serve ({child.label}) exited with status {rc} on SIGTERM: "
                                + " | ".join(child.stderr[-5:]))
        self.say(f"{n + 1}. both lama serve processes stopped cleanly on SIGTERM "
                 f"({self.timed('clean stop of both instances', t):.0f} ms)")
        await server.terminate()

        print("\ntimings:")
        for label, ms in self.timings:
            print(f"  {label:<52} {ms:9.1f} ms")
        print(f"  {'total':<52} {(time.monotonic() - self.t0) * 1000:9.1f} ms")
        print("\ndemo ok")
        return 0

    async def _wait_connected(self, d: str, person: str) -> None:
        from lama import control

        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            st = (await control.request(d, "status"))["status"]
            # connected and through the first full CHUM pass: only then has the peer's importer
            # subscribed to our pushes (docs/chum-fastpath.md "Push")
            if any(p["person_id"] == person and p["connected"] and p["last_sync"]
                   for p in st["peers"]):
                return
            await asyncio.sleep(0.02)
        raise DemoError(f"no CHUM connection to {person[:16]} after {STEP_TIMEOUT:g} s")

    async def cleanup(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                await child.terminate(5.0)


class _Follower:
    """``messages --follow`` on one instance through its control channel; remembers every
    message it sees by id."""

    def __init__(self, d: str, person: str) -> None:
        self.d, self.person = d, person
        self.seen: dict[str, dict[str, Any]] = {}
        self.arrived = asyncio.Event()
        self.task: asyncio.Task[Any] | None = None
        self.started = asyncio.Event()

    async def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())
        await asyncio.wait_for(self.started.wait(), STEP_TIMEOUT)

    async def _run(self) -> None:
        from lama import control

        self.started.set()
        async for msg in control.stream(self.d, "messages", contact=self.person, follow=True):
            if "item" in msg:
                self.seen[msg["item"]["id"]] = msg["item"]
                self.arrived.set()

    async def wait(self, mid: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while mid not in self.seen:
            if self.task is not None and self.task.done():
                self.task.result()
                raise DemoError("the message stream ended")
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"message {mid[:16]} not visible after {timeout:g} s")
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)
        return self.seen[mid]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def _main(base: Path, attachment_size: int, quiet: bool) -> int:
    demo = Demo(base, attachment_size, quiet)
    try:
        return await demo.run()
    except (DemoError, asyncio.TimeoutError, OSError) as e:
        print(f"\ndemo FAILED: {e or type(e).__name__}", file=sys.stderr, flush=True)
        return 1
    finally:
        await demo.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lama demo", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="directory for the two instances (default: a new temporary "
                                  "directory, removed afterwards)")
    ap.add_argument("--attachment-size", type=int, default=1 << 20,
                    help="size of the file Alice sends (bytes, default 1 MiB)")
    args = ap.parse_args(argv)
    if args.attachment_size < 0:
        ap.error("--attachment-size must be >= 0")
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="lama-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(_main(base, args.attachment_size, False))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
