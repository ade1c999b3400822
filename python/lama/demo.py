"""The lama demo (single-device stage): Alice's instance stores a small 1-to-1 chat.

It creates Alice's instance in a fresh directory (or ``--dir``): her Person, Instance and Keys,
with the secret keys in an encrypted keychain.  She then posts two signed messages to the
ownerless 1-to-1 channel with Bob the way a ONE app does (app-layer.md §2.4, objects.md §8):
ChatMessage, CreationTime, an AffirmationCertificate with her Signature listed in the
LinkedListEntry's metadata, and a new version of the ChannelInfo; finally she grants Bob access
to the Topic.  Every object is printed with its microdata and hash, then the channel's history,
the signature check and the store's integrity check.  Run it with ``./dev demo``
(``LAMA_CORE=pure ./dev demo`` for the pure-Python core).
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time

from lama.identity import certificates
from lama.objects import microdata, versions
from lama._core import CORE_NAME
from lama.identity.instance import Instance
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

    # a throwaway secret: this instance only lives for the demo
    with Instance.create(path, email="alice@example.com", person_name="Alice",
                              instance_name="alice-laptop", secret=secrets.token_hex(16)) as alice:
        store: Store = alice.store
        print(f"Alice's instance {alice.instance_id}")
        print(f"  person ID {alice.person_id}, person Keys {alice.person_keys}")
        print(f"  public sign key {alice.person_public_sign_key.hex()}\n")
        bob = versions.store_versioned(store, {"$type$": "Person", "email": "bob@example.com", "name": "Bob"})
        a, b = alice.person_id, bob.id_hash
        topic_id = "<->".join(sorted([a, b]))  # app-layer: the 1-to-1 topic id

        head = None
        signatures = []
        for n, text in enumerate(["Hi Bob <3", "Are you there? 👋"]):
            now = int(time.time() * 1000)
            (msg, _, _), = store.put_objects([{"$type$": "ChatMessage", "text": text, "sender": a}])
            (ct, _, _), = store.put_objects([{"$type$": "CreationTime", "timestamp": now, "data": msg}])
            signed = alice.affirm(ct)  # License + AffirmationCertificate + Signature
            signatures.append(signed.signature)
            entry = {"$type$": "LinkedListEntry", "data": ct, "metadata": [signed.signature]}
            if head:
                entry["previous"] = head
            (head, _, _), = store.put_objects([entry])
            channel = versions.store_versioned(store, {"$type$": "ChannelInfo", "id": topic_id, "head": head})
            print(f"message {n + 1}:")
            _show(store, "ChatMessage", msg)
            _show(store, "CreationTime", ct)
            _show(store, "Affirmation", signed.certificate)
            _show(store, "Signature", signed.signature)
            _show(store, "LinkedListEntry", head)
            _show(store, "ChannelInfo", channel.hash)
            print()

        topic = {"$type$": "Topic", "id": topic_id, "channel": channel.id_hash}
        (topic_hash, _, _), = store.put_objects([topic])
        (access, _, _), = store.put_objects([{"$type$": "Access", "object": topic_hash, "person": [a, b], "group": []}])
        print("people, topic and access:")
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
        for sig in signatures:
            checked = certificates.verify_signature(store, sig)
            print(f"signature {sig[:16]}… verifies with {checked.issuer[:16]}…'s sign key")
        problems = store.verify()
        print(f"\nstore: {store.count()} entries, verify(): {'clean' if not problems else problems}")
        return 0 if not problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
