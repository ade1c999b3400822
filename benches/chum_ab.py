"""A/B of two builds on the initial-sync benchmark (benches/test_bench_chum.py -k
initial_sync), alternating in the same minutes (benches/RESULTS.md, HELPERS: the host is
shared):

    python benches/chum_ab.py BEFORE_ROOT AFTER_ROOT [--rounds 3] [--n 10000] [--mode fast]

Each root is a tree with ``python/`` (and its built ``_lama`` module) and ``benches/``. The
stores are built once (by AFTER's core; the store format is the same) and copied for every
run; every round runs one A/B pair (``benches/chum_side.py``, its own processes, WebSocket on
127.0.0.1, B durable) per build, the order alternating. Printed per run: wall at B, CPU
seconds of A and B (all threads, during the sync), B's first object imported after, the load
average; one JSON line per run."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile


def side(root: str, args: list[str], **kw: object) -> subprocess.Popen[str]:
    env = dict(os.environ, LAMA_CORE="rust", PYTHONPATH=os.path.join(root, "python"))
    return subprocess.Popen([sys.executable, os.path.join(root, "benches", "chum_side.py"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def pair(root: str, src: str, mode: str) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="lama-chum-ab-")
    try:
        shutil.copytree(src, d, dirs_exist_ok=True)
        a = side(root, ["sync", "listen", os.path.join(d, "a"), "0", mode])
        assert a.stdout is not None
        port = a.stdout.readline().split()[1]
        b = side(root, ["sync", "connect", os.path.join(d, "b"), port, mode])
        out_b, err_b = b.communicate(timeout=1800)
        out_a, err_a = a.communicate(timeout=60)
        assert b.returncode == 0 and a.returncode == 0, (err_a, err_b)
        ra, rb = json.loads(out_a.strip().splitlines()[-1]), json.loads(out_b.strip().splitlines()[-1])
        assert rb["reason"] == "chum finished" and not rb["errors"], rb
        moved = rb["stats"]["objects_received"] + rb["stats"]["id_objects_received"]
        return {"objects": moved, "wall_b": rb["seconds"], "cpu_a": ra["cpu_seconds"], "cpu_b": rb["cpu_seconds"],
                "first_imported": rb["phases"].get("first_imported", -1.0),
                "requests_b": rb["stats"]["requests_sent"], "load": os.getloadavg()[0]}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def writeback(work: str, mb: int) -> subprocess.Popen[bytes] | None:
    """`mb` MiB written to a scratch file and a background `sync` started (which then removes
    it): the disk is busy writing them back while the next pair runs."""
    if mb <= 0:
        return None
    path = os.path.join(work, "writeback")
    block = bytes(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(block)
    # removed after the pair (an unlinked file's dirty pages would be dropped, not written)
    return subprocess.Popen(["sh", "-c", f"sync; rm -f '{path}'"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--mode", default="fast")
    p.add_argument("--writeback", type=int, default=0, metavar="MB",
                   help="before each pair, write MB MiB to a scratch file and start `sync` in the "
                        "background, so the pair runs while the disk writes them back (the state "
                        "the 100,000-message RSS benchmark leaves behind)")
    o = p.parse_args()
    work = tempfile.mkdtemp(prefix="lama-chum-ab-built-")
    try:
        src = os.path.join(work, "built")
        b = side(o.after, ["build", src, str(o.n)])
        b.communicate(timeout=1800)
        assert b.returncode == 0
        builds = [("before", o.before), ("after", o.after)]
        for r in range(o.rounds):
            for name, root in (builds if r % 2 == 0 else builds[::-1]):
                flush = writeback(work, o.writeback)
                x = pair(root, src, o.mode)
                if flush is not None:
                    flush.wait(timeout=600)
                print(json.dumps({"round": r, "build": name, **x}), flush=True)
                print(f"round {r} {name:6}: {x['objects']} objects, wall B {x['wall_b']:.2f} s "
                      f"({x['objects'] / x['wall_b']:,.0f}/s), CPU A {x['cpu_a']:.2f} s B {x['cpu_b']:.2f} s, "
                      f"first object after {x['first_imported']:.2f} s, load {x['load']:.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
