"""One side of benches/test_bench_trace.py, run in its own process (the core is chosen at
import): App.send with tracing off and on, interleaved rounds, one JSON line per result.

Usage: trace_side.py DIR ROUNDS N_SEQUENTIAL N_CONCURRENT [aa]

``aa``: the control - both instances with tracing off, so the "overhead" printed is the noise
of this machine for the same measurement.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from lama import App, AppConfig

SECRET = "bench-secret"
PEER = "ab" * 32


def settle(app: App) -> None:
    """Wait for the trace writer thread: its CPU counts (process time), its disk waits are
    not on the send path (wall time is taken before)."""
    if app.tracer is not None:
        app.tracer.flush()


async def main(d: Path, rounds: int, n_seq: int, n_conc: int, aa: bool) -> None:
    apps = {}
    topics = {}
    for mode in ("off", "on"):
        cfg = AppConfig(comm_server_url=None, trace=(mode == "on" and not aa))
        app = await App.create(d / mode, email=f"{mode}@example.com", name=mode, secret=SECRET,
                               config=cfg)
        apps[mode] = app
        topics[mode] = app.chat.create_group("bench", [PEER]).id
        await app.send(topics[mode], "warm-up")
    # the tracer's own time, measured inside: the end-to-end ratio on a loaded 2-core machine
    # is noisier than the effect it looks for
    spent = [0.0]
    tr = apps["on"].tracer
    for name in ("posted", "_flush") if tr is not None else ():  # _flush: the grant check
        fn = getattr(tr, name)

        def timed(*a: object, _fn: object = fn, **k: object) -> object:
            t = time.thread_time()  # CPU of this thread: no GIL or scheduler waits
            try:
                return _fn(*a, **k)  # type: ignore[operator]
            finally:
                spent[0] += time.thread_time() - t

        setattr(tr, name, timed)
    res: dict[str, dict[str, list[float]]] = {m: {"sequential": [], "concurrent": []}
                                              for m in apps}
    cpu: dict[str, dict[str, list[float]]] = {m: {"sequential": [], "concurrent": []}
                                              for m in apps}
    for r in range(rounds):
        order = ("off", "on") if r % 2 == 0 else ("on", "off")
        for mode in order:
            app, topic = apps[mode], topics[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(n_seq):
                await app.send(topic, f"seq {r} {i}")
            res[mode]["sequential"].append(time.perf_counter() - t0)
            settle(app)
            cpu[mode]["sequential"].append(time.process_time() - c0)
            t0, c0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(app.send(topic, f"conc {r} {i}") for i in range(n_conc)))
            if app.tracer is not None:
                app.tracer._flush()  # its deferred loop work (grant check, log records)
            res[mode]["concurrent"].append(time.perf_counter() - t0)
            settle(app)
            cpu[mode]["concurrent"].append(time.process_time() - c0)
    traced = len(apps["on"].traces(limit=10**9))
    writer_cpu = tr._writer.cpu if tr is not None else 0.0
    total_on = sum(sum(v) for v in cpu["on"].values())
    for app in apps.values():
        await app.close()
    # the disabled path: the `is None` check the send path runs once per batch
    x = None
    t0 = time.perf_counter()
    for _ in range(1_000_000):
        if x is not None:
            pass
    check_ns = (time.perf_counter() - t0) * 1000
    for what, n in (("sequential", n_seq), ("concurrent", n_conc)):
        off = statistics.median(res["off"][what])
        on = statistics.median(res["on"][what])
        coff = statistics.median(cpu["off"][what])
        con = statistics.median(cpu["on"][what])
        best = min(res["on"][what]) / min(res["off"][what]) - 1.0
        print(json.dumps({"what": what, "n": n, "rounds": rounds, "off_s": off, "on_s": on,
                          "off_rate": n / off, "on_rate": n / on,
                          "overhead": on / off - 1.0, "off_per_msg_us": off / n * 1e6,
                          "cpu_off_us": coff / n * 1e6, "cpu_on_us": con / n * 1e6,
                          "cpu_overhead": con / coff - 1.0, "best_overhead": best}))
    print(json.dumps({"what": "disabled_check", "ns": check_ns, "traced": traced,
                      "tracer_s": spent[0], "writer_s": writer_cpu, "on_total_s": total_on,
                      "tracer_share": (spent[0] + writer_cpu) / total_on}))


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                     sys.argv[5:] == ["aa"]))
