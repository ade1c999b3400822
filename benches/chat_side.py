"""One lama instance for benches/test_bench_chat.py, in its own process, on the core named by
``LAMA_CORE`` (the bench sets it per process), driven by JSON lines on stdin:

    python chat_side.py DIR URL create EMAIL NAME     # create the instance, then serve
    python chat_side.py DIR URL open                  # open it, then serve

Commands: ``{"cmd": "invite"}`` -> ``{"link"}``; ``{"cmd": "accept", "link"}`` ->
``{"contact"}``; ``{"cmd": "wait_contact"}`` -> ``{"contact"}``; ``{"cmd": "synced"}`` ->
``{"ok"}`` once the contact's CHUM connection is up and through its first pass;
``{"cmd": "send", "n", "gap", "tag", "seq"}`` posts n messages ``"<tag> <i>"`` (``gap`` s apart;
gap 0 = all at once through the group commit, unless ``seq``: one ``App.send`` after the other) and
answers ``{"sent": [t_i...]}`` (monotonic send times, CLOCK_MONOTONIC is one clock for every
process on the host); ``{"cmd": "expect", "tag", "n"}`` answers ``{"seen": [t_i...]}`` once
all n messages of that tag are visible (monotonic times each became visible through
``on_message``); ``{"cmd": "count"}`` -> ``{"messages"}``; ``{"cmd": "traces", "n"}`` -> ``{"traces"}`` (the
steps of the n newest message traces, wall-clock ms); ``{"cmd": "rss"}`` -> ``{"rss_kib", "peak_kib", "anon_kib"}``;
``{"cmd": "quit"}``.

With ``LAMA_BENCH_DIAG=1`` the instance also serves its diagnostics page (docs/metrics.md) and
a client in this process watches it as an open page does (``/api/events``) and scrapes
``/metrics`` every second (benches/test_bench_diag.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

SECRET = "bench-secret"


def rss_kib(field: str = "VmRSS") -> int:
    """A memory figure of this process from /proc/self/status (KiB): VmRSS (resident, incl.
    mapped file pages), VmHWM (peak resident), RssAnon (anonymous memory only)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


async def main() -> None:
    from lama.app import App, AppConfig

    d, url, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = AppConfig(comm_server_url=url)
    if mode == "create":
        app = await App.create(d, email=sys.argv[4], name=sys.argv[5], secret=SECRET,
                               instance_name=sys.argv[5].lower(), config=cfg)
    else:
        app = await App.open(d, SECRET, config=cfg)
    seen: dict[str, dict[int, float]] = {}
    arrived = asyncio.Event()

    def on_message(m: Any) -> None:
        now = time.monotonic()
        tag, _, i = str(m.text).rpartition(" ")
        if str(m.sender) != app.person_id and i.isdigit():
            seen.setdefault(tag, {}).setdefault(int(i), now)
            arrived.set()

    app.on_message(on_message)
    await app.start()
    diag = None
    if os.environ.get("LAMA_BENCH_DIAG") == "1":
        diag = await watched_page(app)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    contact: Any = None

    def out(**kw: Any) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    out(ready=True, rss_kib=rss_kib())
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "invite":
                out(link=await app.invite())
            elif c == "accept":
                contact = await app.accept(cmd["link"])
                out(contact=str(contact.person_id))
            elif c == "wait_contact":
                contact = await app.wait_contact(120)
                out(contact=str(contact.person_id))
            elif c == "synced":
                if contact is None:
                    contact = app.contacts()[0]
                pid = str(contact.person_id)
                while True:
                    peers = app.status()["peers"]
                    if any(p["person_id"] == pid and p["connected"] and p["last_sync"]
                           for p in peers):
                        break
                    await asyncio.sleep(0.01)
                out(ok=True)
            elif c == "send":
                if contact is None:
                    contact = app.contacts()[0]
                sent = []
                if cmd.get("gap") is not None and (cmd["gap"] or cmd.get("seq")):
                    # one App.send after the other (``seq`` with gap 0: as fast as each returns)
                    for i in range(cmd["n"]):
                        sent.append(time.monotonic())
                        await app.send(contact, f"{cmd['tag']} {i}")
                        if cmd["gap"]:
                            await asyncio.sleep(cmd["gap"])
                else:
                    # as fast as it goes: every send at once (App.send's group commit)
                    t0 = time.monotonic()
                    texts = [f"{cmd['tag']} {i}" for i in range(cmd["n"])]
                    if os.environ.get("LAMA_BENCH_BATCH"):  # Chat.send_many(batch=) directly
                        await asyncio.to_thread(app.chat.send_many, contact.topic_id, texts,
                                                batch=int(os.environ["LAMA_BENCH_BATCH"]))
                    else:
                        await app.send_many(contact, texts)
                    sent = [t0] * cmd["n"]
                out(sent=sent, done=time.monotonic())
            elif c == "expect":
                tag, n = cmd["tag"], cmd["n"]
                while len(seen.get(tag, {})) < n:
                    arrived.clear()
                    await arrived.wait()
                got = seen[tag]
                out(seen=[got[i] for i in range(n)])
            elif c == "fill":
                # n messages from me into the conversation, straight into the store (batches
                # of Chat.send_many, one transaction each): an instance holding many messages
                if contact is None:
                    contact = app.contacts()[0]
                t0 = time.monotonic()
                for start in range(0, cmd["n"], 1000):
                    texts = [f"fill {i}" for i in range(start, min(cmd["n"], start + 1000))]
                    await asyncio.to_thread(app.chat.send_many, contact.topic_id, texts)
                out(seconds=time.monotonic() - t0, rss_kib=rss_kib())
            elif c == "recent":
                if contact is None:
                    contact = app.contacts()[0]
                ms = [m async for m in app.messages(contact, last=cmd.get("n", 50))]
                out(messages=len(ms), rss_kib=rss_kib())
            elif c == "count":
                if contact is None:
                    contact = app.contacts()[0]
                out(messages=len(app.history(contact)))
            elif c == "traces":
                # the message traces of this instance (docs/tracing.md), newest first: the
                # steps of each message with their wall-clock times (ms), for per-step latency
                ts = app.tracer.traces(cmd.get("n", 100)) if app.tracer is not None else []
                out(traces=[{"preview": t.preview, "direction": t.direction,
                             "steps": [[s.step, s.at] for s in t.steps]} for t in ts])
            elif c == "rss":
                out(rss_kib=rss_kib(), peak_kib=rss_kib("VmHWM"), anon_kib=rss_kib("RssAnon"))
            elif c == "quit":
                break
    finally:
        if diag is not None:
            await diag.close()
        await app.close()


async def watched_page(app: Any) -> Any:
    """The app's diagnostics server, with an event-stream reader and a 1 s /metrics scraper
    running on this loop (as a browser tab and Prometheus would)."""
    from lama.web.diag import DiagnosticsServer

    diag = DiagnosticsServer(app, "127.0.0.1", 0, write_file=False)
    await diag.start()
    head = f"Host: 127.0.0.1:{diag.http.port}\r\nAuthorization: Bearer {diag.token}\r\n\r\n"

    async def page() -> None:
        r, w = await asyncio.open_connection("127.0.0.1", diag.http.port)
        w.write(f"GET /api/events HTTP/1.1\r\n{head}".encode())
        while await r.read(1 << 16):
            pass

    async def scrape() -> None:
        while True:
            r, w = await asyncio.open_connection("127.0.0.1", diag.http.port)
            w.write(f"GET /metrics HTTP/1.1\r\n{head}".encode())
            await r.read()
            w.close()
            await asyncio.sleep(1.0)

    tasks = [asyncio.ensure_future(page()), asyncio.ensure_future(scrape())]
    close = diag.close

    async def close_all() -> None:
        for t in tasks:
            t.cancel()
        await close()

    diag.close = close_all
    return diag


if __name__ == "__main__":
    asyncio.run(main())
    os._exit(0)
