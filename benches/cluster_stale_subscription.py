"""Reproduces the refusal left after session 9 (benches/RESULTS.md, issue 12): a lookup that
NATS routes to a key subscription its node has already dropped is never answered, so the
initiator is refused after LOOKUP_TIMEOUT (3 s) — not "no responders", so the lookup is not
asked again. Node 1 reaches NATS through tests/test_cluster.py's SlowLink (1.3 s): a listener
registers and leaves (node 1 unsubscribes; the UNSUB is 1.3 s on its way), the same key
registers again at once, and a request through node 2 finds the server still holding only
the old subscription. Both node kinds: prints REFUSED after ~3 s on the build of session 9.
Not a pytest file (the fix is not built yet; a test would fail):

    .venv/bin/python benches/cluster_stale_subscription.py rust|pure
"""
import asyncio, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_cluster as T  # noqa: E402
from cluster_util import Nats, nodes  # noqa: E402
from lama import _lama, _pure  # type: ignore[attr-defined]  # noqa: E402
from lama._core import comm_listen, core  # noqa: E402

node_core = {"pure": _pure, "rust": _lama}[sys.argv[1]]


async def main(nats: Nats) -> None:
    link = T.SlowLink(nats.port, 1.3)
    slow = await link.start()
    (n1,) = await nodes(slow, 1, node_core)
    (n2,) = await nodes(nats.url, 1, node_core)
    try:
        pk, sk = core.box_keypair()
        first = await comm_listen(n1.url, pk, sk, spares=1, reconnect_delay=0.2)
        await asyncio.sleep(2.0)  # its SUB has reached the server
        await first.close()
        await T.until(lambda: n1.counters()["spares"] == 0, 10)  # UNSUB sent, 1.3 s on its way
        again = await comm_listen(n1.url, pk, sk, spares=1, reconnect_delay=0.2)
        try:
            ini = await core.ws_connect(n2.url)
            t0 = time.monotonic()
            await ini.send(T.request(core.box_keypair()[0], pk))
            got = asyncio.ensure_future(again.accept())
            gone = asyncio.ensure_future(ini.recv())
            await asyncio.wait({got, gone}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            got.cancel(); gone.cancel()
            print("handed over" if got.done() and not got.cancelled() else
                  f"REFUSED after {time.monotonic() - t0:.2f} s ({ini.close_reason!r})",
                  "node 1 answers:", n1.counters()["cluster_answers"])
        finally:
            await again.close()
    finally:
        await n1.close(); await n2.close(); await link.close()


n = Nats()
try:
    asyncio.run(asyncio.wait_for(main(n), 60))
finally:
    n.stop()
