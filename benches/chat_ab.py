"""Alternated before/after pairs for issue 10 (benches/RESULTS.md): each round starts a comm
server and two ``lama.App`` processes (benches/chat_side.py) from one source tree, measures the
latency of ``n_lat`` messages 20 ms apart (send -> visible, the tracer's per-step medians
relative to ``posted``, and each process's CPU ms per message over them) and a ``n_thr``-message ``App.send_many`` conversation (wall rates and
the CPU seconds of each process over it, /proc/<pid>/stat utime + stime).

    python benches/chat_ab.py ROUNDS NAME=TREE [NAME=TREE ...] [--core rust|pure]
        [--lat N] [--thr N]

TREE is a source checkout whose ``python/`` holds an importable ``lama`` with its native
module built; the trees are run alternately, one pair each per round. Prints one JSON line
per pair."""

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
from test_bench_chat import COMM, SideProcess, pct

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def Side(tree: Path, env: dict[str, str], *args: str) -> SideProcess:
    """``tree``'s benches/chat_side.py (the build under test) with ``args``."""
    return SideProcess([sys.executable, str(tree / "benches" / "chat_side.py"), *args], env)


def one_pair(name: str, tree: Path, core_name: str, n_lat: int, n_thr: int, base: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("LAMA_SECRET", "LAMA_COMM_SERVER")}
    env["LAMA_CORE"] = core_name
    env["PYTHONPATH"] = str(tree / "python")
    comm = subprocess.Popen([sys.executable, "-c", COMM], stdout=subprocess.PIPE, text=True, env=env)
    assert comm.stdout is not None
    url = comm.stdout.readline().strip()
    alice = Side(tree, env, str(base / "alice"), url, "create", "alice@example.com", "Alice")
    bob = Side(tree, env, str(base / "bob"), url, "create", "bob@example.com", "Bob")
    out: dict[str, Any] = {"name": name, "core": core_name, "load": os.getloadavg()[0]}
    try:
        pair_sides(alice, bob)
        ca, cb = cpu_s(alice.p.pid), cpu_s(bob.p.pid)
        sent = alice.ask(cmd="send", n=n_lat, gap=0.02, tag="lat")["sent"]
        seen = bob.ask(cmd="expect", tag="lat", n=n_lat)["seen"]
        # CPU ms per latency message (one post at a time; includes the 20 ms gaps' idle work)
        out.update(cpu_lat_sender_ms=round((cpu_s(alice.p.pid) - ca) * 1000 / n_lat, 2),
                   cpu_lat_receiver_ms=round((cpu_s(bob.p.pid) - cb) * 1000 / n_lat, 2))
        lat = [(b - a) * 1000 for a, b in zip(sent, seen)]
        out.update(lat_p50=pct(lat, 0.5), lat_p90=pct(lat, 0.9), lat_p99=pct(lat, 0.99))
        # per-step medians relative to `posted`, matched by preview
        steps: dict[str, dict[str, float]] = {}
        for side, who in ((alice, "a."), (bob, "b.")):
            for t in side.ask(cmd="traces", n=n_lat)["traces"]:
                if t["preview"].startswith("lat "):
                    d = steps.setdefault(t["preview"], {})
                    for step, at in t["steps"]:
                        d.setdefault(who + step, at)
        for d in steps.values():  # relative to Alice's `posted`
            if "a.posted" in d:
                d["posted"] = d["a.posted"]
        rel: dict[str, list[float]] = {}
        for d in steps.values():
            if "posted" in d:
                for k, v in d.items():
                    rel.setdefault(k, []).append(v - d["posted"])
        out["steps"] = {k: round(statistics.median(v), 2) for k, v in rel.items()}
        ca, cb = cpu_s(alice.p.pid), cpu_s(bob.p.pid)
        r = alice.ask(cmd="send", n=n_thr, gap=0, tag="thr")
        seen = bob.ask(cmd="expect", tag="thr", n=n_thr)["seen"]
        t0 = r["sent"][0]
        out.update(cpu_sender=round(cpu_s(alice.p.pid) - ca, 2), cpu_receiver=round(cpu_s(bob.p.pid) - cb, 2),
                   posted=round(n_thr / (r["done"] - t0)), delivered=round(n_thr / (max(seen) - t0)),
                   first_visible=round(min(seen) - t0, 3))
    finally:
        for s in (alice, bob):
            s.stop()
        comm.kill()
        comm.wait()
    return out


def main() -> None:
    rounds, opts, trees = parse_ab_args(sys.argv[1:], {"core": "rust", "lat": 100, "thr": 10_000})
    core_name, n_lat, n_thr = opts["core"], opts["lat"], opts["thr"]
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):
            for name, tree in trees:
                base = Path(d) / f"{name}{i}"
                print(json.dumps(one_pair(name, tree, core_name, n_lat, n_thr, base)), flush=True)
                time.sleep(1)


if __name__ == "__main__":
    main()
