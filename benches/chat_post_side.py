"""One core's lama.chat posting benchmark, in its own process (the core is chosen by
LAMA_CORE at import, and RSS is per process).  Prints one JSON line per measurement.

    python chat_post_side.py post DIR N_SINGLE N_BULK [N_CONCURRENT]  # single, bulk, threads
    python chat_post_side.py fill DIR TOTAL                # fill to TOTAL messages (send_many)
    python chat_post_side.py read DIR                      # open, iterate all, report RSS
    python chat_post_side.py app DIR                       # App.open + start, newest 50, RSS
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from lama.chat import Chat  # noqa: E402
from lama.identity.instance import Instance  # noqa: E402


def out(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def rss_mib() -> dict[str, float]:
    """VmRSS, VmHWM (peak) and the anonymous / file-backed parts of the RSS, in MiB.  The
    file-backed part is the store's LMDB map: pages of the file read so far, shared with the
    page cache and dropped by the kernel under memory pressure."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(line.split()[1]) / 1024
    return out


def setup(d: Path) -> tuple[Chat, Chat]:
    # imported here, not at the top: chat_util imports pytest (~10 MiB of anonymous memory),
    # which the "read" and "app" measurements of an instance's RSS must not count
    from chat_util import make, pair

    a, b = make(d, "alice"), make(d, "bob")
    ca, cb = Chat(a), Chat(b, events=False)
    pair(ca, cb)
    return ca, cb


def main() -> None:
    cmd, d = sys.argv[1], Path(sys.argv[2])
    if cmd == "post":
        n_single, n_bulk = int(sys.argv[3]), int(sys.argv[4])
        n_conc = int(sys.argv[5]) if len(sys.argv) > 5 else 0
        ca, cb = setup(d)
        t = time.perf_counter()
        for i in range(n_single):
            ca.send(cb.me, f"single {i}")
        dt = time.perf_counter() - t
        out(what="single", n=n_single, seconds=dt, rate=n_single / dt)
        if n_conc:
            from concurrent.futures import ThreadPoolExecutor

            t = time.perf_counter()
            with ThreadPoolExecutor(16) as ex:
                list(ex.map(lambda i: ca.send(cb.me, f"concurrent {i}"), range(n_conc)))
            dt = time.perf_counter() - t
            out(what="concurrent", n=n_conc, seconds=dt, rate=n_conc / dt)
        t = time.perf_counter()
        ca.send_many(cb.me, [f"bulk message number {i}" for i in range(n_bulk)])
        dt = time.perf_counter() - t
        out(what="bulk", n=n_bulk, seconds=dt, rate=n_bulk / dt)
        ca.close()
    elif cmd == "fill":
        total = int(sys.argv[3])
        ca, cb = setup(d)
        t = time.perf_counter()
        for i in range(0, total, 10_000):
            ca.send_many(cb.me, [f"message {j} of the big conversation" for j in range(i, min(total, i + 10_000))])
        dt = time.perf_counter() - t
        out(what="fill", n=total, seconds=dt, rate=total / dt, bob=cb.me)
        for c in (ca, cb):  # a clean close leaves the store's check mark (fast next open)
            c.close()
            c.instance.close()
    elif cmd == "read":
        inst = Instance.open(str(d / "alice"), "chat-test-secret-alice")
        chat = Chat(inst)
        [contact] = chat.contacts()
        t = time.perf_counter()
        newest = list(chat.messages(contact.person_id, limit=50))
        t_page = time.perf_counter() - t
        m = rss_mib()  # an open instance showing its newest page (what `lama serve` holds)
        out(what="open", n=len(newest), first_page_s=t_page, rss_mib=m["VmRSS"],
            anon_mib=m["RssAnon"], file_mib=m["RssFile"])
        t = time.perf_counter()
        n = 0
        peak_anon = m["RssAnon"]
        for _ in chat.messages(contact.person_id):
            n += 1
            if n % 5_000 == 0:  # the kernel keeps no peak of the anonymous part: sample it
                peak_anon = max(peak_anon, rss_mib()["RssAnon"])
        dt = time.perf_counter() - t
        m = rss_mib()
        peak_anon = max(peak_anon, m["RssAnon"])
        out(what="read", n=n, first_page_s=t_page, seconds=dt, rate=n / dt, rss_mib=m["VmRSS"],
            peak_rss_mib=m["VmHWM"], anon_mib=m["RssAnon"], peak_anon_mib=peak_anon,
            file_mib=m["RssFile"], newest=newest[0].text)
        chat.close()
        inst.close()
    elif cmd == "app":
        # the facade on the same instance: open and start it (connection manager, chat
        # events; the comm server is unreachable, so it retries in the background), then read
        # the 50 newest messages
        import asyncio

        from lama.app import App, AppConfig

        async def run() -> None:
            t = time.perf_counter()
            app = await App.open(str(d / "alice"), "chat-test-secret-alice",
                                 config=AppConfig(comm_server_url="ws://127.0.0.1:9"))
            await app.start(online_timeout=0)
            await asyncio.sleep(1.0)  # a discovery round and the chat event thread's catch-up
            t_start = time.perf_counter() - t
            [contact] = app.contacts()
            newest = [m async for m in app.messages(contact, last=50)]
            m = rss_mib()
            out(what="app", n=len(newest), start_s=t_start, rss_mib=m["VmRSS"],
                peak_rss_mib=m["VmHWM"], anon_mib=m["RssAnon"], file_mib=m["RssFile"])
            await app.close()

        asyncio.run(run())


if __name__ == "__main__":
    main()
