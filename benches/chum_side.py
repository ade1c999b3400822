"""One side of the CHUM benchmarks (benches/test_bench_chum.py), run as its own process so each
side's peak RSS is its own.  The core comes from ``LAMA_CORE``.  Commands (JSON on the last
stdout line):

* ``build DIR N``: stores ``DIR/a`` (N chat posts as an app makes them, shared with B) and
  ``DIR/b`` (only the two Person ID objects, as after the connection setup, chum.md §9).
* ``sync listen|connect STORE PORT v8|fast [nosync]``: one CHUM pass (``keep_running=False``)
  over WebSocket on 127.0.0.1; ``listen`` prints ``PORT <n>`` first; ``nosync``: the store
  with ``durable=False`` (to tell the disk's fsyncs apart from the rest, benches/RESULTS.md).
* ``live-a STORE PORT POSTS INTERVAL_MS DIR`` / ``live-b STORE PORT DIR durable|nosync``
  (B's store with or without LMDB's fsync per commit): keep-running fast
  path sessions; after B's first full pass A posts POSTS messages, INTERVAL_MS apart, and
  records each post's commit time; B records when each object arrives in an ``imported`` event.
  Times are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, one clock for every process of the host).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))

from lama import access  # noqa: E402
from lama._core import core  # noqa: E402
from lama.chum import SyncResult, handle_event  # noqa: E402
from lama.errors import RecipeError  # noqa: E402
from lama.identity import certificates  # noqa: E402
from lama.objects import versions  # noqa: E402

A_EMAIL, B_EMAIL = "alice@a.example", "bob@b.example"
SEED = bytes(range(32))  # Alice's Ed25519 seed: reproducible signatures
TEXT = "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor " * 2


def person_id(store: Any, email: str) -> str:
    md = core.id_microdata({"$type$": "Person", "email": email})
    h: str = core.sha256_hex(md)
    store.put_microdata([(md, h)])
    return h


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (the host is shared, so wall time
    alone mixes in other processes' load)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ChatApp:
    """A 1:1 chat channel as the app layer writes it (app-layer.md §2.4, chum.md §9): per post
    ChatMessage, CreationTime, License (deduplicated), AffirmationCertificate, Signature (real
    Ed25519 through the core's sign functions), LinkedListEntry, and a new ChannelInfo version
    (with its version node) through lama.objects.versions."""

    def __init__(self, store: Any, me: str, other: str, *, create: bool) -> None:
        self.store, self.me = store, me
        self.secret = core.sign_keypair_from_seed(SEED)[1]
        self.topic_id = f"{min(me, other)}<->{max(me, other)}"
        self.ci = core.id_hash({"$type$": "ChannelInfo", "id": self.topic_id})
        self.t = 1_700_000_000_000
        self.count = 0
        if create:
            versions.store_versioned(store, {"$type$": "ChannelInfo", "id": self.topic_id}, timestamp_ms=self.t)
            ((topic, _s, _i),) = store.put_objects([{"$type$": "Topic", "name": self.topic_id,
                                                     "id": self.topic_id, "channel": self.ci}])
            access.grant(store, object=topic, persons=[me, other])
            access.grant(store, id=self.ci, persons=[me, other])
            self.head: str | None = None
        else:
            cur = versions.current(store, self.ci)
            self.head = cur.get("head")
            self.t = int(time.time() * 1000)

    def post(self, text: str) -> str:
        """One post; returns the hash of the new ChannelInfo version."""
        self.t += 1
        self.count += 1
        msg = {"$type$": "ChatMessage", "text": text, "sender": self.me}
        ct = {"$type$": "CreationTime", "timestamp": self.t, "data": core.object_hash(msg)}
        ct_hash = core.object_hash(ct)
        self.store.put_objects([msg, ct])
        cert = certificates.affirm(self.store, ct_hash, self.me, self.secret)
        lle: dict[str, Any] = {"$type$": "LinkedListEntry", "data": ct_hash, "metadata": [cert.signature]}
        if self.head:
            lle["previous"] = self.head
        ((self.head, _s, _i),) = self.store.put_objects([lle])
        return versions.store_versioned(self.store, {"$type$": "ChannelInfo", "id": self.topic_id,
                                                     "head": self.head}, timestamp_ms=self.t).hash


def build(directory: str, n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    a = core.Store(os.path.join(directory, "a"), durable=False)
    pa, pb = person_id(a, A_EMAIL), person_id(a, B_EMAIL)
    app = ChatApp(a, pa, pb, create=True)
    for i in range(n):
        app.post(f"message {i}: {TEXT}"[:200])
    seq = a.last_seq()
    a.close()
    b = core.Store(os.path.join(directory, "b"))
    person_id(b, A_EMAIL)
    person_id(b, B_EMAIL)
    b.close()
    return {"pa": pa, "pb": pb, "ci": app.ci, "seconds": time.perf_counter() - t0, "last_seq": seq}


async def _transport(role: str, port: int) -> Any:
    if role == "listen":
        listener = await core.ws_listen("127.0.0.1", port)
        print(f"PORT {listener.port}", flush=True)
        try:
            return await listener.accept()
        finally:
            await listener.close()
    for _ in range(100):  # the listener may not be up yet
        try:
            return await core.ws_connect(f"ws://127.0.0.1:{port}/")
        except Exception:  # noqa: BLE001 - connection refused: retry
            await asyncio.sleep(0.05)
    return await core.ws_connect(f"ws://127.0.0.1:{port}/")


def _me(store: Any, role: str) -> tuple[str, str]:
    pa = core.id_hash({"$type$": "Person", "email": A_EMAIL})
    pb = core.id_hash({"$type$": "Person", "email": B_EMAIL})
    return (pa, pb) if role in ("listen", "live-a") else (pb, pa)


async def sync(role: str, path: str, port: int, fast: bool, durable: bool = True) -> dict[str, Any]:
    store = core.Store(path, durable=durable)
    me, peer = _me(store, role)
    t0 = time.perf_counter()
    cpu0 = cpu_seconds()
    transport = await _transport(role, port)
    session = core.ChumSession(store, me, peer, fast_path=fast)
    task = core.spawn_session(session, transport, store=store)
    result = SyncResult()
    mode = None
    # when the phases ended, seconds from t0 (docs/chum-session.md §2: the version check, the
    # imported batches, finished): where a pass spends its time
    phases: dict[str, float] = {}
    while True:
        events = await task.events()
        if events is None:
            break
        t = time.perf_counter() - t0
        for kind, data in events:
            if kind == "version":
                mode = data["mode"]
                phases["version"] = t
            elif kind == "imported":
                phases.setdefault("first_imported", t)
                phases["last_imported"] = t
            handle_event(store, kind, data, result)
    stats = await task.wait()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    errors = [e["message"] for e in result.errors]
    ok = not store.verify() if role == "connect" else True
    store.close()
    return {"seconds": seconds, "stats": stats, "mode": mode, "reason": result.reason,
            "errors": errors, "merged": len(result.merged), "verified": ok, "phases": phases, "cpu_seconds": cpu, "max_rss_kib": max_rss_kib()}


async def live(role: str, path: str, port: int, posts: int, interval_ms: float, directory: str,
               durable: bool = True) -> dict[str, Any]:
    store = core.Store(path, durable=durable)
    me, peer = _me(store, role)
    ready = Path(directory, "ready")
    stop = Path(directory, "stop")
    transport = await _transport("listen" if role == "live-a" else "connect", port)
    session = core.ChumSession(store, me, peer, fast_path=True, keep_running=True)
    task = core.spawn_session(session, transport, store=store)
    arrived: dict[str, int] = {}
    modes: list[str] = []
    errors: list[str] = []
    merge_failures: list[str] = []

    async def consume() -> None:
        while True:
            events = await task.events()
            if events is None:
                return
            now = time.monotonic_ns()
            for kind, data in events:
                if kind == "imported":
                    for h in data["objects"]:
                        arrived.setdefault(h, now)
                elif kind == "full_sync" and role == "live-b":
                    ready.touch()
                elif kind == "version":
                    modes.append(data["mode"])
                elif kind == "error":
                    errors.append(data["message"])
                try:
                    handle_event(store, kind, data)
                except RecipeError as e:
                    # B's own edge and A's new node are concurrent versions of the ChannelInfo;
                    # merging them needs the LinkedList CRDT of app-layer.md §2.5, which lama
                    # does not register yet (LAMA-CRDT2).  The objects are stored all the same.
                    merge_failures.append(str(e)[:80])

    consumer = asyncio.ensure_future(consume())
    posted: list[tuple[str, int, int]] = []
    if role == "live-a":
        while not ready.exists():
            await asyncio.sleep(0.01)
        app = ChatApp(store, me, peer, create=False)
        await asyncio.sleep(0.2)
        for i in range(posts):
            t_start = time.monotonic_ns()
            h = app.post(f"live {i}")
            posted.append((h, t_start, time.monotonic_ns()))
            await asyncio.sleep(interval_ms / 1000)
        await asyncio.sleep(1.0)
        stop.touch()
    else:
        while not stop.exists():
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
    task.cancel()
    try:
        await asyncio.wait_for(consumer, 5)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        consumer.cancel()
    store.close()
    return {"posted": posted, "arrived": arrived if role == "live-b" else {}, "modes": modes,
            "errors": errors, "merge_failures": merge_failures, "max_rss_kib": max_rss_kib()}


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "build":
        out = build(argv[1], int(argv[2]))
    elif cmd == "sync":
        out = asyncio.run(sync(argv[1], argv[2], int(argv[3]), argv[4] == "fast", argv[5:] != ["nosync"]))
    elif cmd in ("live-a", "live-b"):
        if cmd == "live-a":
            out = asyncio.run(live(cmd, argv[1], int(argv[2]), int(argv[3]), float(argv[4]), argv[5]))
        else:
            out = asyncio.run(live(cmd, argv[1], int(argv[2]), 0, 0.0, argv[3], argv[4] == "durable"))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    out["core"] = core.CORE_NAME
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
