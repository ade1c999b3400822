"""Reconnect storm (issue 9, "Tests that must exist"): 1,000 duplicate and replacing connections
between two instances while a sync runs - no crash, one connection left, the sync converges.

Two paired instances, each with a ConnectionManager on a direct WebSocket listener on
127.0.0.1 (real sockets, real encrypted connections, conn §4.2). While A and B write granted
notes (CHUM carries them over the managed connection whenever it is up), 1,000 extra ``chum``
connections are opened with the instances' own keys and identities - half A -> B, half B -> A,
as a peer that restarts or misbehaves makes them: each runs the whole connection setup
(encrypted handshake, conn §5.1-5.5) and then stays open for a moment. The acceptor's
duplicate rule (docs/connections.md §3.3) drops those that overlap the connection in place
and lets the others replace it; both kinds must occur. Afterwards: no manager task failed,
each side holds exactly one live connection and it is the same one, every note arrived.

STORM_CONNECTIONS (environment) overrides the 1,000 for measurements."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lama import access
from lama._core import core
from lama.connect import protocol
from lama.connect.manager import DUPLICATE_DROPPED, REPLACED, ConnectionManager, ManagerConfig
from lama.errors import LamaError
from lama.identity.instance import Instance

from test_connect_manager import FAST, live_conns, make, run, wait_until

TOTAL = int(os.environ.get("STORM_CONNECTIONS", "1000"))
PARALLEL = 8          # storm connections in flight at once
NOTES = 120           # notes each side writes while the storm runs


class _Errors(logging.Handler):
    """Collects ERROR records of the manager (a failed task is logged there, never raised)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_reconnect_storm_1000_connections_while_syncing(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    errors = _Errors()
    logging.getLogger("lama.connect").addHandler(errors)

    async def main() -> None:
        # duplicate_window 0.1 s: storm connections arriving in quick succession are dropped as
        # duplicates, those after a pause replace the one in place - the storm has both kinds
        kw: dict[str, Any] = {**FAST, "comm_server_url": None, "direct_host": "127.0.0.1",
                              "direct_port": 0, "duplicate_window": 0.1}
        ma = ConnectionManager(a, ManagerConfig(**kw))
        mb = ConnectionManager(b, ManagerConfig(**kw))
        await ma.start()
        await mb.start()
        try:
            await mb.accept_invitation(ma.create_invitation())
            await wait_until(lambda: ma.connected(b.person_id) and mb.connected(a.person_id),
                             10.0, "the first CHUM connection")
            reasons: Counter[str] = Counter()
            done = 0

            async def storm_connection(i: int) -> None:
                nonlocal done
                me, peer, target = (b, a, ma) if i % 2 else (a, b, mb)
                keys = me.secret_keys("instance")
                try:
                    conn = await core.encrypted_connect(
                        target.url, me.instance_public_key, keys.encryption_secret,
                        peer.instance_public_key, open_timeout=10.0)
                except LamaError as e:
                    reasons[f"connect: {e.code}"] += 1
                    return
                try:
                    await protocol.initiate(conn, me, "chum", expected_person=peer.person_id,
                                            expected_instance=peer.instance_id, timeout=10.0)
                    await protocol.synchronise(conn, timeout=10.0)
                    # stay a moment: the next storm connection overlaps this one or not
                    await asyncio.sleep(random.choice((0.0, 0.01, 0.05, 0.15, 0.3)))
                except LamaError:
                    pass
                finally:
                    await conn.close("storm connection done")
                reason = conn.close_reason or ""
                reasons["dropped" if DUPLICATE_DROPPED in reason else
                        "replaced" if REPLACED in reason else
                        "closed by us" if "storm connection done" in reason else reason] += 1
                done += 1

            async def writer(inst: Instance, to: Instance, tag: str) -> list[str]:
                hashes = []
                for n in range(NOTES):
                    [(h, _, _)] = inst.store.put_objects(
                        [{"$type$": "ChatMessage", "text": f"{tag} {n}", "sender": inst.person_id}])
                    access.grant(inst.store, object=h, persons=[to.person_id])
                    hashes.append(h)
                    await asyncio.sleep(0.02)
                return hashes

            sem = asyncio.Semaphore(PARALLEL)

            async def bounded(i: int) -> None:
                async with sem:
                    await storm_connection(i)

            t0 = time.monotonic()
            writers = asyncio.gather(writer(a, b, "from a"), writer(b, a, "from b"))
            await asyncio.gather(*(bounded(i) for i in range(TOTAL)))
            storm_s = time.monotonic() - t0
            from_a, from_b = await writers
            print(f"storm: {TOTAL} connections in {storm_s:.1f} s "
                  f"({storm_s / TOTAL * 1000:.1f} ms each, {PARALLEL} at once): {dict(reasons)}")
            assert sum(reasons.values()) == TOTAL
            # both kinds happened (their mix depends on the host's speed: seen 29-70 % dropped
            # and 3-8 % replaced while still open), and (nearly) all got through the whole
            # setup: a storm connection may only fail to open if a listener was busy
            assert reasons["dropped"] >= TOTAL // 100, reasons
            assert reasons["replaced"] >= TOTAL // 100, reasons
            assert done >= TOTAL * 0.98, reasons
            # one connection left, the same one on both sides, and it stays
            await wait_until(lambda: len(live_conns(ma)) == 1 and len(live_conns(mb)) == 1
                             and live_conns(ma)[0].initiator != live_conns(mb)[0].initiator,
                             20.0, "one connection on each side")
            t1 = time.monotonic()
            await wait_until(lambda: all(b.store.has(h) for h in from_a)
                             and all(a.store.has(h) for h in from_b), 60.0,
                             "every note on the other side")
            print(f"sync converged {time.monotonic() - t1:.1f} s after the storm")
            [ca], [cb] = live_conns(ma), live_conns(mb)
            await asyncio.sleep(1.0)
            assert live_conns(ma) == [ca] and live_conns(mb) == [cb]
            # per-connection bookkeeping stays bounded (statistics log, error lists)
            for m in (ma, mb):
                for peer in m._peers.values():
                    assert len(peer.stats_log) <= 20 and len(peer.errors) <= 20
                assert len(m._conns) <= 2, m._conns
            h = (await writer_one(a, b))
            await wait_until(lambda: b.store.has(h), 10.0, "a note after the storm")
        finally:
            await ma.close()
            await mb.close()

    async def writer_one(inst: Instance, to: Instance) -> str:
        [(h, _, _)] = inst.store.put_objects(
            [{"$type$": "ChatMessage", "text": "after", "sender": inst.person_id}])
        access.grant(inst.store, object=h, persons=[to.person_id])
        return h

    try:
        run(main, timeout=600.0)
    finally:
        logging.getLogger("lama.connect").removeHandler(errors)
        a.close()
        b.close()
    assert not errors.records, [r.getMessage() for r in errors.records]
