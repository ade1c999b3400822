"""Where the CPU of a chat latency message goes, per process and per thread (issue 10).

Starts a comm server (a lama process, the Rust core's relay) and two ``lama.App`` processes
(benches/chat_side.py) from each given source tree, alternately, and sends ``n`` latency
messages 20 ms apart from Alice to Bob. For each process it reports the CPU ms per message of
each thread group (by the thread's name: ``lama-net`` = the tokio runtime of the native
module, the rest Python's threads), /proc/<pid>/task/*/stat utime + stime, and the comm
server's relayed frames and bytes per message (its counters). ``--perf DIR`` also records
``perf record --call-graph dwarf`` of each process during the messages (one file per process
and round).

    python benches/chat_cpu.py ROUNDS NAME=TREE [NAME=TREE ...] [--core rust|pure] [--lat N]
        [--perf DIR]

Prints one JSON line per round and tree."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ab_util import pair_sides, parse_ab_args  # benches/ is this script's directory
from test_bench_chat import SideProcess, pct

TICK = os.sysconf("SC_CLK_TCK")

COMM = """
import asyncio, json, sys
from lama._core import core
async def main():
    s = await core.comm_server("127.0.0.1", 0)
    print(s.url, flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        print(json.dumps(dict(s.counters())), flush=True)
asyncio.run(main())
"""


def threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread name of process ``pid``."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except OSError:
            continue
        name = head.split("(", 1)[1]
        fields = tail.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def delta(a: dict[str, float], b: dict[str, float], n: int) -> dict[str, float]:
    d = {k: round((v - a.get(k, 0.0)) * 1000 / n, 3) for k, v in b.items()}
    d = {k: v for k, v in d.items() if v}
    d["total"] = round(sum(d.values()), 3)
    return d


def one(name: str, tree: Path, core_name: str, n: int, base: Path, perf: Path | None, rnd: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAMA_SECRET", "LAMA_COMM_SERVER")}
    env["LAMA_CORE"] = core_name
    env["PYTHONPATH"] = str(tree / "python")
    comm = subprocess.Popen([sys.executable, "-c", COMM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    assert comm.stdout is not None and comm.stdin is not None

    def counters() -> dict[str, int]:
        comm.stdin.write("\n")  # type: ignore[union-attr]
        comm.stdin.flush()  # type: ignore[union-attr]
        return json.loads(comm.stdout.readline())  # type: ignore[union-attr]

    url = comm.stdout.readline().strip()
    side = [sys.executable, str(tree / "benches" / "chat_side.py")]
    alice = SideProcess([*side, str(base / "alice"), url, "create", "alice@example.com", "Alice"], env)
    bob = SideProcess([*side, str(base / "bob"), url, "create", "bob@example.com", "Bob"], env)
    out: dict[str, Any] = {"name": name, "core": core_name, "load": round(os.getloadavg()[0], 2)}
    try:
        pair_sides(alice, bob)
        alice.ask(cmd="send", n=20, gap=0.02, tag="warm")
        bob.ask(cmd="expect", tag="warm", n=20)
        time.sleep(0.2)
        pids = {"alice": alice.p.pid, "bob": bob.p.pid, "comm": comm.pid}
        recs = []
        if perf is not None:
            for who, pid in pids.items():
                recs.append(subprocess.Popen(
                    ["perf", "record", "-F", "1999", "--call-graph", "dwarf,32768", "-p", str(pid), "-o",
                     str(perf / f"{who}_{name}_{rnd}.data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)
        c0 = counters()
        t0 = {k: threads(p) for k, p in pids.items()}
        w0 = time.monotonic()
        sent = alice.ask(cmd="send", n=n, gap=0.02, tag="lat")["sent"]
        seen = bob.ask(cmd="expect", tag="lat", n=n)["seen"]
        t1 = {k: threads(p) for k, p in pids.items()}
        wall = time.monotonic() - w0
        c1 = counters()
        for rec in recs:
            rec.send_signal(2)
            rec.wait()
        lat = [(b - a) * 1000 for a, b in zip(sent, seen)]
        out.update(lat_p50=pct(lat, 0.5), lat_p90=pct(lat, 0.9), wall_ms_per_msg=round(wall * 1000 / n, 2))
        out["cpu_ms_per_msg"] = {k: delta(t0[k], t1[k], n) for k in pids}
        out["relayed_per_msg"] = {k: round((c1[k] - c0[k]) / n, 2) for k in ("relayed_frames", "relayed_bytes")}
    finally:
        for s in (alice, bob):
            s.stop()
        comm.kill()
        comm.wait()
    return out


def main() -> None:
    rounds, opts, trees = parse_ab_args(sys.argv[1:], {"core": "rust", "lat": 200, "perf": None})
    core_name, n, perf = opts["core"], opts["lat"], opts["perf"]
    if perf is not None:
        perf.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):
            for tname, tree in trees:
                print(json.dumps(one(tname, tree, core_name, n, Path(d) / f"{tname}{i}", perf, i)), flush=True)
                time.sleep(1)


if __name__ == "__main__":
    main()
