"""Alternated before/after pairs of the live push benchmark (benches/test_bench_chum.py
``live_push``, issue 8): per round and tree, A (``chum_side.py live-a``) posts POSTS messages
INTERVAL_MS apart on a keep-running fast-path session over WebSocket on 127.0.0.1, and B
(``live-b``, its store durable or not) records when each post's objects arrive in an
``imported`` event.

    python benches/push_ab.py ROUNDS NAME=TREE [NAME=TREE ...] [--posts 300] [--core rust]
        [--b durable|nosync]

TREE is a source checkout whose ``python/`` holds an importable ``lama`` with its native
module built; the stores are built once (by the first tree) and copied for every run; the trees
run alternately, one run each per round. Prints one JSON line per run: commit at A -> imported
at B p50/p90/p99 (ms), the CPU seconds of A and B over the whole run (their rusage), the load
average."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ab_util import parse_ab_args  # benches/ is this script's directory


def _side(tree: Path, core_name: str, args: list[str], **kw: object) -> subprocess.Popen[str]:
    env = dict(os.environ, LAMA_CORE=core_name, PYTHONPATH=str(tree / "python"))
    return subprocess.Popen([sys.executable, str(tree / "benches" / "chum_side.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one_run(name: str, tree: Path, core_name: str, src: str, posts: int, b_mode: str) -> dict[str, object]:
    d = tempfile.mkdtemp(prefix="lama-push-ab-")
    try:
        shutil.copytree(src, d, dirs_exist_ok=True)
        load = os.getloadavg()[0]
        a = _side(tree, core_name, ["live-a", os.path.join(d, "a"), "0", str(posts), "20", d])
        assert a.stdout is not None
        line = a.stdout.readline()
        assert line.startswith("PORT "), line
        b = _side(tree, core_name, ["live-b", os.path.join(d, "b"), line.split()[1], d, b_mode])
        c0 = _cpu_children()
        out_b, err_b = b.communicate(timeout=600)
        c1 = _cpu_children()
        out_a, err_a = a.communicate(timeout=60)
        c2 = _cpu_children()
        assert b.returncode == 0 and a.returncode == 0, (err_a[-2000:], err_b[-2000:])
        ra, rb = json.loads(out_a.strip().splitlines()[-1]), json.loads(out_b.strip().splitlines()[-1])
        assert ra["errors"] == [] and rb["errors"] == [], (ra["errors"], rb["errors"])
        lat = [(rb["arrived"][h] - t_commit) / 1e6 for h, _t0, t_commit in ra["posted"] if h in rb["arrived"]]
        assert len(lat) == posts, (len(lat), posts)
        return {"name": name, "core": core_name, "b": b_mode, "load": round(load, 2),
                "p50": round(_pct(lat, 50), 3), "p90": round(_pct(lat, 90), 3), "p99": round(_pct(lat, 99), 3),
                "cpu_a": round(c2 - c1, 2), "cpu_b": round(c1 - c0, 2)}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    rounds, opts, trees = parse_ab_args(sys.argv[1:], {"core": "rust", "posts": 300, "b": "durable"})
    core_name, posts, b_mode = opts["core"], opts["posts"], opts["b"]
    with tempfile.TemporaryDirectory() as work:
        src = os.path.join(work, "built")
        p = _side(trees[0][1], core_name, ["build", src, "10"])
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        for i in range(rounds):
            order = trees if i % 2 == 0 else trees[::-1]
            for name, tree in order:
                print(json.dumps(one_run(name, tree, core_name, src, posts, b_mode)), flush=True)
                time.sleep(1)


if __name__ == "__main__":
    main()
