"""lama.chat posting and reading (issue 10), both cores in one run, each in its own process
(``benches/chat_post_side.py``: the core is chosen at import, and RSS is per process).

* single posts: ``Chat.send`` one after the other, each its own durable transaction (the
  store syncs at every commit, so this measures the disk's commit latency more than lama);
* concurrent posts: 16 threads calling ``send`` at once (group commit shares the transactions);
* bulk: one ``Chat.send_many`` of 10,000 messages (every message still gets its ChatMessage,
  CreationTime, AffirmationCertificate, Signature and entry; one ChannelInfo version);
* reading: a fresh process opens an instance holding 100,000 messages and iterates all of them
  newest first; its memory afterwards (issue 10 goal: <= 60 MiB).

What "RSS of an instance" is measured as: the **anonymous** resident memory (``RssAnon`` of
/proc/self/status, sampled every 5,000 messages while reading, its peak asserted <= 60 MiB).
VmRSS also counts the pages of the store's LMDB file that the process has mapped and read:
reading 100,000 messages reads ~480 MiB of a ~490 MiB file, and every page read stays in VmRSS
until the kernel needs the memory. Those pages are the page cache seen through the map: shared,
clean (never written back), dropped by the kernel under memory pressure without any cost to the
process, and the same pages any reader of the file has to read. They measure the file's size,
not what the instance holds; the anonymous part is what the process allocated itself (Python
objects, Rust heap) and cannot give back. Both are reported; VmRSS and its peak (VmHWM) are
recorded in benches/RESULTS.md next to it.

Run: ``.venv/bin/python -m pytest benches/test_bench_chat_post.py --benchmark-enable -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import record, report_line

HERE = Path(__file__).resolve().parent
SIDE = HERE / "chat_post_side.py"
TOTAL = int(os.environ.get("LAMA_BENCH_CHAT_TOTAL", "100000"))


def side(core: str, *args: str, timeout: float = 1800.0) -> list[dict[str, Any]]:
    env = dict(os.environ, LAMA_CORE=core)
    p = subprocess.run([sys.executable, str(SIDE), *args], env=env, capture_output=True,
                       text=True, timeout=timeout, cwd=str(HERE))
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_post_rates(core: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lama-bench-chat-") as d:
        res = {r["what"]: r for r in side(core, "post", d, "200", "10000", "1000")}
    for what in ("single", "concurrent", "bulk"):
        r = res[what]
        record(f"chat: {what} posts ({r['n']:,} messages, msg/s)", core, r["n"], r["seconds"])
        report_line(f"{core}: {what} {r['n']:,} posts in {r['seconds']:.2f} s = {r['rate']:,.0f} msg/s")


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_rss_of_100k_messages(core: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lama-bench-chat-rss-") as d:
        [fill] = side("rust", "fill", d, str(TOTAL))
        got = {r["what"]: r for r in side(core, "read", d)}
    opened, read = got["open"], got["read"]
    assert read["n"] == TOTAL and opened["n"] == 50
    record(f"chat: read all {TOTAL:,} messages newest first (msg/s)", core, read["n"], read["seconds"])
    report_line(f"{core}: instance with {TOTAL:,} messages: anonymous RSS "
                f"{read['anon_mib']:.1f} MiB (peak {read['peak_anon_mib']:.1f} MiB), VmRSS "
                f"{read['rss_mib']:.1f} MiB (peak {read['peak_rss_mib']:.1f} MiB, file pages "
                f"{read['file_mib']:.1f} MiB) after reading all; opened with the newest 50: "
                f"VmRSS {opened['rss_mib']:.1f} MiB (anonymous {opened['anon_mib']:.1f}); newest 50 in "
                f"{read['first_page_s'] * 1000:.1f} ms; filled (rust, send_many) at "
                f"{fill['rate']:,.0f} msg/s")
    assert read["peak_anon_mib"] <= 60, read
