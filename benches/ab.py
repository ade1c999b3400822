"""A/B timing of two builds of lama on the same host, alternating, for issue 6's "nothing gets
slower" (benches/RESULTS.md).

    python benches/ab.py BEFORE_WORKTREE AFTER_WORKTREE [--rounds 7] [--only ser,ingest,open]

Each worktree must have been set up (``./dev setup``: ``.venv`` with its release build). Every
round runs one child process per build, before then after (the host is shared, so the two
builds see the same load); a child times each benchmark once (serialize_many after one warm-up
call; stores opened three times, best taken). The figure of a build is its best round; the
ratio after/before of those is printed (> 1: after is faster). Each figure is given twice:
wall-clock time, and the CPU time of the child process (``time.process_time``, all its
threads), which a busy host disturbs far less (it leaves out waiting for a CPU, and the
nosync ingest's final flush).

Benchmarks, on the 100,000 chat objects of benches/test_bench_ingest.py:
* ``serialize_many`` (Rust core; the pure core's serializer is not part of issues 6-7's change);
* ingest with ``durable=False`` in batches of 1,000, both cores (``put_objects`` + ``close``);
* opening a store of those objects (each build's own, written by its Rust core), both cores:
  after a clean close (a build with check marks skips the page walk, docs/store-format.md
  "Check mark") and with the mark removed before each open, as after a crash (the full check).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json, os, shutil, sys, tempfile, time
root, store_dir, only = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
sys.path.insert(0, os.path.join(root, "python"))
sys.path.insert(0, os.path.join(root, "benches"))
from test_bench_ingest import OBJECTS, N
from lama import _lama, _pure
cores = {"rust": _lama, "pure": _pure}
out = {}
def timed(f):
    w, c = time.perf_counter(), time.process_time(); f()
    return [time.perf_counter() - w, time.process_time() - c]
def best(f, n):  # [wall, cpu], each the least of n runs
    return [min(x) for x in zip(*(timed(f) for _ in range(n)))]
if "ser" in only:
    _lama.serialize_many(OBJECTS[:3000])
    out["serialize_many rust"] = best(lambda: _lama.serialize_many(OBJECTS), 2)
if "ingest" in only:
    for name, core in cores.items():
        d = tempfile.mkdtemp(prefix="lama-ab-")
        try:
            s = core.Store(d, durable=False)
            def ingest():
                for i in range(0, N, 1000):
                    s.put_objects(OBJECTS[i:i + 1000])
                s.close()
            out[f"ingest nosync-1000 {name}"] = timed(ingest)
        finally:
            shutil.rmtree(d, ignore_errors=True)
if "open" in only:
    if not os.path.exists(os.path.join(store_dir, "data.mdb")):
        s = _lama.Store(store_dir, durable=False)
        for i in range(0, N, 10_000):
            s.put_objects(OBJECTS[i:i + 10_000])
        s.close()
    mark = os.path.join(store_dir, "check-mark")
    def unmarked_open(core):
        # the first open after a crash: no mark matches, so the full check runs (a build
        # without check marks ignores the file)
        if os.path.exists(mark):
            os.unlink(mark)
        return timed(lambda: core.Store(store_dir).close())
    for name, core in cores.items():
        core.Store(store_dir).close()  # warm-up (page cache); leaves a mark where supported
        out[f"open 100k store {name}, after a clean close"] = best(
            lambda: core.Store(store_dir).close(), 3)
        out[f"open 100k store {name}, no valid mark (after a crash)"] = [
            min(x) for x in zip(*(unmarked_open(core) for _ in range(3)))]
print(json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--only", default="ser,ingest,open")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="lama-ab-stores-")
    builds = {"before": a.before, "after": a.after}
    best: dict[str, dict[str, float]] = {b: {} for b in builds}
    for r in range(a.rounds):
        for b, root in builds.items():
            store_dir = os.path.join(tmp, b)
            os.makedirs(store_dir, exist_ok=True)
            env = dict(os.environ, PYTHONHASHSEED="0")
            env.pop("LAMA_CORE", None)
            res = subprocess.run([os.path.join(root, ".venv/bin/python"), "-c", CHILD, root,
                                  store_dir, a.only], env=env, capture_output=True, text=True,
                                 cwd=root)
            if res.returncode != 0:
                sys.exit(f"{b} failed:\n{res.stderr}")
            for k, (wall, cpu) in json.loads(res.stdout).items():
                best[b][k + " (cpu)"] = min(cpu, best[b].get(k + " (cpu)", float("inf")))
                best[b][k + " (wall)"] = min(wall, best[b].get(k + " (wall)", float("inf")))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    print(f"| benchmark (best of {a.rounds}) | before | after | after/before speed |")
    print("|---|---:|---:|---:|")
    for k in sorted(best["before"]):
        t0, t1 = best["before"][k], best["after"][k]
        if k.startswith("open"):
            f0, f1 = f"{t0 * 1000:.1f} ms", f"{t1 * 1000:.1f} ms"
        else:
            f0, f1 = f"{100_000 / t0 / 1000:,.0f}k/s", f"{100_000 / t1 / 1000:,.0f}k/s"
        print(f"| {k} | {f0} | {f1} | {t0 / t1:.3f} |")
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
