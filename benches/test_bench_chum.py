"""CHUM sync between two instances (issue 8 "Benchmarks"): both cores and both modes in one run.

1. Initial sync of N chat posts (N = 10,000 with ``--benchmark-enable``, 200 in the plain test
   run) as an app writes them (chum.md §9, app-layer.md §2.4: ChatMessage, CreationTime,
   License shared, AffirmationCertificate, Ed25519 Signature, LinkedListEntry, a ChannelInfo
   version and its version node per post), shared with Access on the Topic and IdAccess on the
   ChannelInfo ID (lama.access). Instance A and instance B each run in their own process
   (benches/chum_side.py) and sync over the WebSocket transport on 127.0.0.1, one pass
   (``keep_running=False``). Measured: objects/s at B (objects + ID objects received / B's
   wall time from connecting to ``finished``), wall time, bytes on the wire each way (the
   session's ``bytes_sent``/``bytes_received``: frame payloads, characters for text frames,
   without the WebSocket headers), peak RSS of each process (``ru_maxrss``).
   Matrix: core ∈ {rust, pure} × mode ∈ {v8 (``fast_path=False``), fast}.
   Goals (Rust): fast ≥ 100,000 objects/s, v8 ≥ 10,000 objects/s, fast ≥ 5× pure.
2. Live push latency: keep-running fast-path sessions between two processes; A posts (one
   post every 20 ms); latency = from the post's last commit at A (its ChannelInfo version) to
   the ``imported`` event at B that carries that version, on ``time.monotonic_ns()`` (one
   system-wide clock), with B's store durable (default) and ``durable=False``.
   Goals (Rust): p50 ≤ 2 ms, p99 ≤ 10 ms.

The numbers of the recorded run and what bounds them are in benches/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, record, report_line

SIDE = str(Path(__file__).resolve().parent / "chum_side.py")
N_BENCH = int(os.environ.get("LAMA_BENCH_CHUM_N", "10000"))
N_TEST = 200
LIVE_POSTS_BENCH, LIVE_POSTS_TEST = 300, 20
LIVE_INTERVAL_MS = 20.0
TIMEOUT = 1800


def _env(core_name: str) -> dict[str, str]:
    env = dict(os.environ, LAMA_CORE=core_name)
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _last_json(out: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _run(core_name: str, *args: str) -> dict[str, Any]:
    p = subprocess.run([sys.executable, SIDE, *args], env=_env(core_name), capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    return _last_json(p.stdout)


def _pair(core_name: str, a_args: list[str], b_args_for_port: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start A (it listens and prints its port), then B with that port; both results."""
    a = subprocess.Popen([sys.executable, SIDE, *a_args], env=_env(core_name), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert a.stdout is not None
        line = a.stdout.readline()
        assert line.startswith("PORT "), (line, a.stderr.read() if a.stderr else "")
        port = line.split()[1]
        b = subprocess.run([sys.executable, SIDE, *b_args_for_port(port)], env=_env(core_name),
                           capture_output=True, text=True, timeout=TIMEOUT)
        out_a, err_a = a.communicate(timeout=60)
    finally:
        if a.poll() is None:
            a.kill()
    assert b.returncode == 0, b.stderr
    assert a.returncode == 0, err_a
    return _last_json(out_a), _last_json(b.stdout)


_BUILT: dict[tuple[str, int], tuple[str, dict[str, Any]]] = {}


@pytest.fixture(scope="module")
def workdir() -> Any:
    d = tempfile.mkdtemp(prefix="lama-bench-chum-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _built(workdir: str, core_name: str, n: int) -> tuple[str, dict[str, Any]]:
    """The stores of A and B for ``n`` posts, built once per core (the app's writing is not
    what is measured) and copied for every run."""
    key = (core_name, n)
    if key not in _BUILT:
        d = os.path.join(workdir, f"built-{core_name}-{n}")
        _BUILT[key] = (d, _run(core_name, "build", d, str(n)))
    return _BUILT[key]


@pytest.mark.parametrize("mode", ["v8", "fast"])
@pytest.mark.parametrize("core_name", ["rust", "pure"])
def test_initial_sync(benchmark: Any, workdir: str, core_name: str, mode: str) -> None:
    n = N_TEST if benchmark.disabled else N_BENCH
    src, info = _built(workdir, core_name, n)
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def once() -> None:
        d = tempfile.mkdtemp(dir=workdir)
        shutil.copytree(src, d, dirs_exist_ok=True)
        a_store, b_store = os.path.join(d, "a"), os.path.join(d, "b")
        runs.append(_pair(core_name, ["sync", "listen", a_store, "0", mode],
                          lambda port: ["sync", "connect", b_store, port, mode]))
        shutil.rmtree(d, ignore_errors=True)

    benchmark.pedantic(once, rounds=1, iterations=1)
    a, b = runs[-1]
    for side in (a, b):
        assert side["reason"] == "chum finished", side
        assert side["errors"] == [], side["errors"]
        assert side["mode"] == mode
    assert b["verified"]
    moved = b["stats"]["objects_received"] + b["stats"]["id_objects_received"]
    # 7 objects per post (ChatMessage, CreationTime, certificate, Signature, LinkedListEntry,
    # ChannelInfo version, version node) plus the License, the Topic, the ChannelInfo ID object,
    # the first version and its node
    assert moved == 7 * n + 5, (moved, b["stats"])
    assert b["merged"] >= 1
    record(f"chum initial sync {mode} (obj)", core_name, moved, b["seconds"])
    report_line(
        f"chum sync {core_name:4} {mode:4} N={n}: {moved} objects in {b['seconds']:.2f} s = "
        f"{moved / b['seconds']:,.0f} obj/s; wire A->B {b['stats']['bytes_received']:,} B->A "
        f"{b['stats']['bytes_sent']:,} (B requests {b['stats']['requests_sent']}); peak RSS "
        f"A {a['max_rss_kib'] / 1024:.0f} MiB, B {b['max_rss_kib'] / 1024:.0f} MiB "
        f"(build {info['seconds']:.1f} s); CPU s during the sync A {a.get('cpu_seconds', 0):.2f}, "
        f"B {b.get('cpu_seconds', 0):.2f}; B's phases (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in b.get("phases", {}).items()))


def _percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


@pytest.mark.parametrize("b_store", ["durable", "nosync"])
@pytest.mark.parametrize("core_name", ["rust", "pure"])
def test_live_push_latency(benchmark: Any, workdir: str, core_name: str, b_store: str) -> None:
    """``b_store``: B's store commits durably (LMDB fsyncs every commit, the default) or with
    ``durable=False``, to separate the disk's fsync latency from the protocol's."""
    posts = LIVE_POSTS_TEST if benchmark.disabled else LIVE_POSTS_BENCH
    src, _info = _built(workdir, core_name, 10)
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def once() -> None:
        d = tempfile.mkdtemp(dir=workdir)
        shutil.copytree(src, d, dirs_exist_ok=True)
        a_store, b_path = os.path.join(d, "a"), os.path.join(d, "b")
        runs.append(_pair(core_name, ["live-a", a_store, "0", str(posts), str(LIVE_INTERVAL_MS), d],
                          lambda port: ["live-b", b_path, port, d, b_store]))
        shutil.rmtree(d, ignore_errors=True)

    benchmark.pedantic(once, rounds=1, iterations=1)
    a, b = runs[-1]
    assert a["errors"] == [] and b["errors"] == [], (a["errors"], b["errors"])
    assert b["modes"] == ["fast"]
    assert len(a["posted"]) == posts
    lat = []
    for h, _t_start, t_commit in a["posted"]:
        assert h in b["arrived"], f"post {h} never arrived at B"
        lat.append((b["arrived"][h] - t_commit) / 1e6)
    p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
    post_ms = sorted((t1 - t0) / 1e6 for _h, t0, t1 in a["posted"])[len(lat) // 2]
    record(f"chum live push, B {b_store}, p50 (1/ms)", core_name, 1, p50 / 1000)
    report_line(f"chum live {core_name:4} B {b_store:7}: {posts} posts every {LIVE_INTERVAL_MS:.0f} ms: commit at A -> "
                f"imported at B p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(lat):.2f} ms "
                f"(the post itself: median {post_ms:.2f} ms)")
