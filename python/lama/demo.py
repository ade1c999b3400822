"""The lama demo (issue 2 stage): store a small 1-to-1 chat as ONE objects and print them.

It creates a store in a fresh directory (or ``--dir``), stores Alice and Bob, a chat message with
its CreationTime and LinkedListEntry, versions the ownerless 1-to-1 ChannelInfo twice, grants
Bob access, then prints every object with its hash, the channel's history and the result of the
store's integrity check.  Run it with ``./dev demo`` (``LAMA_CORE=pure ./dev demo`` for the
pure-Python core).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from lama import microdata, versions
from lama._core import CORE_NAME
from lama.store import Store


def _show(store: Store, label: str, h: str) -> None:
    print(f"  {label:<16} {h}")
    print(f"  {'':<16} {store.get(h)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lama.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="store directory (default: a new temporary directory)")
    args = ap.parse_args(argv)
    path = args.dir or tempfile.mkdtemp(prefix="lama-demo-")
    print(f"lama demo — core: {CORE_NAME}, store: {path}\n")

    with Store(path) as store:
        alice = versions.store_versioned(store, {"$type$": "Person", "email": "alice@example.com", "name": "Alice"})
        bob = versions.store_versioned(store, {"$type$": "Person", "email": "bob@example.com", "name": "Bob"})
        a, b = alice.id_hash, bob.id_hash
        topic_id = "<->".join(sorted([a, b]))  # app-layer: the 1-to-1 topic id

        head = None
        for n, text in enumerate(["Hi Bob <3", "Are you there? 👋"]):
            now = int(time.time() * 1000)
            (msg, _, _), = store.put_objects([{"$type$": "ChatMessage", "text": text, "sender": a}])
            (ct, _, _), = store.put_objects([{"$type$": "CreationTime", "timestamp": now, "data": msg}])
            entry = {"$type$": "LinkedListEntry", "data": ct}
            if head:
                entry["previous"] = head
            (head, _, _), = store.put_objects([entry])
            channel = versions.store_versioned(store, {"$type$": "ChannelInfo", "id": topic_id, "head": head})
            print(f"message {n + 1}:")
            _show(store, "ChatMessage", msg)
            _show(store, "CreationTime", ct)
            _show(store, "LinkedListEntry", head)
            _show(store, "ChannelInfo", channel.hash)
            print()

        topic = {"$type$": "Topic", "id": topic_id, "channel": channel.id_hash}
        (topic_hash, _, _), = store.put_objects([topic])
        (access, _, _), = store.put_objects([{"$type$": "Access", "object": topic_hash, "person": [a, b], "group": []}])
        print("people, topic and access:")
        _show(store, "Person Alice", alice.hash)
        _show(store, "Person ID Alice", a)
        _show(store, "Person Bob", bob.hash)
        _show(store, "Topic", topic_hash)
        _show(store, "Access", access)
        print(f"  objects granted to Bob by Access: {store.referencing(b, 'Access')}\n")

        print(f"ChannelInfo {channel.id_hash} history (oldest first):")
        for v in versions.history(store, channel.id_hash):
            print(f"  {v.timestamp}  {v.hash}")
        current = versions.current(store, channel.id_hash)
        assert microdata.object_hash(current) == channel.hash
        problems = store.verify()
        print(f"\nstore: {store.count()} entries, verify(): {'clean' if not problems else problems}")
        return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
