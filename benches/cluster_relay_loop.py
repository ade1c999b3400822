"""Loop the cross-node 1 MiB relay of benches/test_bench_cluster.py with step bounds, to catch
the issue-12 refusal ("1 MiB relay hang", benches/RESULTS.md session 8): where a round stops
(no handover / a frame) and why (the initiator's close reason, the registration's and the
refusal's timing, the nodes' counters at the end), and how many cross-node handovers took
longer than the lookup's retry delay (0.5 s after "no responders", docs/cluster.md §3: a
handover that slow most likely needed the second lookup). Not a pytest file; run it by hand, e.g.
under load:

    .venv/bin/python benches/cluster_relay_loop.py rust 100000 8 300   # NODE_CORE ROUNDS FRAMES SECONDS
"""
import asyncio, hashlib, json, os, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cluster_util import Nats, NodeProcess, counters_of
from lama import _lama as core

MIB = bytes(range(256)) * 4096
node_core = sys.argv[1]
rounds = int(sys.argv[2]); count = int(sys.argv[3])
deadline = time.monotonic() + float(sys.argv[4])

def keypair(label):
    sk = hashlib.sha256(label.encode()).digest()
    return core.box_public_from_secret(sk), sk

pk, sk = keypair("relay")

async def one(n1, ask, i):
    t0 = time.monotonic()
    listener = await core.comm_listen(n1, pk, sk, spares=1)
    reg = time.monotonic() - t0
    a = await core.ws_connect(ask, max_message=2 * len(MIB))
    t1 = time.monotonic()
    await a.send(json.dumps({"command": "communication_request", "sourcePublicKey": pk.hex(),
                             "targetPublicKey": pk.hex()}))
    acc = asyncio.ensure_future(listener.accept())
    gone = asyncio.ensure_future(a.recv())
    await asyncio.wait({acc, gone}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if acc.done():
        b = acc.result()
        handover.setdefault(ask != n1, []).append(time.monotonic() - t1)
        gone.cancel()
    else:
        acc.cancel()
        r = gone.result() if gone.done() else "pending"
        print(f"round {i}: NO HANDOVER; registration took {reg:.3f}s, refused after {time.monotonic()-t1:.3f}s; initiator recv={r!r} close_reason={a.close_reason!r}", flush=True)
        await a.close(); await listener.close()
        return False
    await b.recv()
    async def send():
        for _ in range(count):
            await a.send(MIB)
    s = asyncio.ensure_future(send())
    for k in range(count):
        try:
            got = await asyncio.wait_for(b.recv(), 30)
        except asyncio.TimeoutError:
            print(f"round {i}: FRAME {k} STUCK; a={a.close_reason!r} b={b.close_reason!r} sender_done={s.done()}", flush=True)
            s.cancel(); await a.close(); await listener.close()
            return False
        if got is None or len(got) != len(MIB):
            print(f"round {i}: frame {k} got {None if got is None else len(got)}; b={b.close_reason!r}", flush=True)
            s.cancel(); await a.close(); await listener.close()
            return False
    await s
    await a.close()
    await listener.close()
    return True

handover: dict[bool, list[float]] = {}  # cross-node? -> request sent .. accept() returned
nats = Nats()
# the loop is one client address asking faster than the default lookup rate limit (20/s, burst
# 40, docs/cluster.md §1) on a quiet host: raise it, so a refusal is the race this loop is
# for and not the limiter (cluster_throttled counts the limiter's refusals)
LIMITS = ("--lookup-rate", "100000", "--lookup-burst", "100000")
n1, n2 = NodeProcess(nats.url, node_core, LIMITS), NodeProcess(nats.url, node_core, LIMITS)
ok = bad = 0
t0 = time.monotonic()
try:
    for i in range(rounds):
        if time.monotonic() > deadline:
            break
        where = n2.url if i % 2 == 0 else n1.url
        if asyncio.run(one(n1.url, where, i)):
            ok += 1
        else:
            bad += 1
finally:
    c1, c2 = counters_of(n1.stop()), counters_of(n2.stop())
    nats.stop()
keys = ("requests", "handovers", "refused", "forwarded", "cluster_lookups", "cluster_answers", "cluster_throttled")
print(f"{node_core}: {ok} ok, {bad} bad in {time.monotonic()-t0:.0f}s, load {os.getloadavg()}")
print("n1", {k: c1.get(k) for k in keys}); print("n2", {k: c2.get(k) for k in keys})
for cross, times in sorted(handover.items()):
    times.sort()
    print(f"{'cross-node' if cross else 'one node'} handovers: {len(times)}, p50 {times[len(times) // 2] * 1e3:.1f} ms, "
          f"p99 {times[int(len(times) * .99)] * 1e3:.1f} ms, max {times[-1] * 1e3:.0f} ms, "
          f"{sum(t >= 0.5 for t in times)} took >= 0.5 s (the lookup's retry delay)")
