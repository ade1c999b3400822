"""A lama instance running its connection manager in its own process (for
tests/test_pairing_e2e.py).

    python manager_peer.py --dir D --url WS [--write TEXT --to PERSON]... [--expect HASH]...
                           [--exit-when-done] [--max-time S]

Secret from $LAMA_SECRET; SIGTERM closes the manager and exits with status 0. Prints one JSON object per line: ``{"event": "ready"}``,
``{"event": "connected", "person": ..., "ms": ...}`` when a CHUM connection comes up,
``{"event": "got", "hash": ..., "ms": ...}`` when an expected object is in the store, and
``{"event": "done"}`` when everything expected arrived. ``--write`` stores a ChatMessage
``{text, sender: own person}`` granted to ``--to`` (hash printed as ``wrote``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time

from lama import access
from lama.connect import contacts
from lama.connect.manager import ConnectionManager, ManagerConfig
from lama.identity.instance import Instance


def _profile_versions(inst: Instance, person: str) -> int:
    """How many Profile objects (versions) name one of ``person``'s endpoints."""
    return len({p for h, _ in contacts.endpoints_of_person(inst.store, person)
                for p in inst.store.referencing(h, "Profile")})


def out(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--write", action="append", default=[])
    ap.add_argument("--to")
    ap.add_argument("--expect", action="append", default=[])
    ap.add_argument("--exit-when-done", action="store_true")
    ap.add_argument("--max-time", type=float, default=60.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    inst = Instance.open(args.dir, os.environ["LAMA_SECRET"])
    for text in args.write:
        [(h, _, _)] = inst.store.put_objects(
            [{"$type$": "ChatMessage", "text": text, "sender": inst.person_id}])
        access.grant(inst.store, object=h, persons=[args.to])
        out(event="wrote", hash=h)
    cfg = ManagerConfig(comm_server_url=args.url, retry_delay=0.2, retry_max_delay=1.0,
                        reconnect_delay=0.1, refused_retry_delay=0.1, listener_reconnect_delay=0.5,
                        discovery_interval=0.2, sync_interval=1.0)
    manager = ConnectionManager(inst, cfg)

    def on_event(kind: str, data: dict[str, object]) -> None:
        if kind == "connection_up":
            out(event="connected", person=data.get("person"),
                ms=round((time.monotonic() - t0) * 1000))

    manager.subscribe(on_event)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await manager.start()
    out(event="ready")
    pending = list(args.expect)
    deadline = t0 + args.max_time
    try:
        while time.monotonic() < deadline and not stop.is_set():
            for h in list(pending):
                if inst.store.has(h):
                    pending.remove(h)
                    out(event="got", hash=h, ms=round((time.monotonic() - t0) * 1000))
            if not pending and args.expect:
                out(event="done", endpoints=len(manager.known_endpoints()),
                    connections=len([i for i in manager.connections_info() if i["isConnected"]]),
                    # the contact's stored OneInstanceEndpoint objects and Profile versions:
                    # reconnecting must not add any
                    endpoint_objects=len(contacts.endpoints_of_person(inst.store, args.to))
                    if args.to else None,
                    profiles=_profile_versions(inst, args.to) if args.to else None)
                args.expect = []
                if args.exit_when_done:
                    return
            await asyncio.sleep(0.02)
    finally:
        await manager.close()
        inst.close()


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
