"""A chat-like object graph for CHUM tests (app-layer.md §2.4 shapes): Person ID objects, a
Topic, a versioned ChannelInfo with a history and concurrent versions, unversioned entries
with signatures, a BLOB attachment and a CLOB note; shared with Access / IdAccess grants."""

from __future__ import annotations

import hashlib
from typing import Any

from lama._core import core
from lama.objects import recipes, versions


def person(email: str) -> dict[str, Any]:
    return {"$type$": "Person", "email": email}


def person_id(store: Any, email: str) -> str:
    md = core.id_microdata(person(email))
    h = core.sha256_hex(md)
    store.put_microdata([(md, h)])
    return h


NOTE_RECIPE = {"$type$": "Recipe", "name": "LamaChumTestNote",
               "rule": [{"itemprop": "title"}, {"itemprop": "body", "itemtype": {"type": "referenceToClob"}}]}


DOC_RECIPE = {"$type$": "Recipe", "name": "LamaChumTestDoc",
              "rule": [{"itemprop": "name", "isId": True}, {"itemprop": "title"},
                       {"itemprop": "tags", "itemtype": {"type": "set", "item": {"type": "string"}}}]}
"""A versioned type whose concurrent versions merge with the built-in CRDTs (Register, Set)."""


def register_recipes() -> None:
    """The test recipes in both cores (``recipes.register`` registers with the active core
    only, and the cross-core tests run a peer on each)."""
    import json

    from lama import _lama, _pure  # type: ignore[attr-defined]

    for c in {id(m): m for m in (core, _lama, _pure)}.values():
        names = c.recipe_names()
        for r in (NOTE_RECIPE, DOC_RECIPE):
            if r["name"] not in names:
                c.register_recipe(json.dumps(recipes.normalize(r), ensure_ascii=False))


def grant_object(store: Any, target: str, persons: list[str]) -> str:
    """An Access grant (objects.md §6.1), stored as the current version of its ID."""
    return versions.store_versioned(store, {"$type$": "Access", "object": target, "person": persons,
                                            "group": []}).hash


def grant_id(store: Any, target: str, persons: list[str]) -> str:
    return versions.store_versioned(store, {"$type$": "IdAccess", "id": target, "person": persons,
                                            "group": []}).hash


def deterministic_bytes(n: int, seed: bytes = b"lama") -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


class Chat:
    """A 1:1 channel owned by nobody (objects like the reference's, chum.md §9)."""

    def __init__(self, store: Any, me: str, other: str, topic: str = "t"):
        self.store = store
        self.me = me
        self.other = other
        self.topic_id = f"{topic}:{min(me, other)}<->{max(me, other)}"
        self.ci = core.id_hash({"$type$": "ChannelInfo", "id": self.topic_id})
        self.head: str | None = None
        self.t = 1_700_000_000_000
        first = versions.store_versioned(store, {"$type$": "ChannelInfo", "id": self.topic_id},
                                         timestamp_ms=self.t)
        assert first.id_hash == self.ci
        (self.topic,) = [h for h, _s, _i in store.put_objects([
            {"$type$": "Topic", "name": self.topic_id, "id": self.topic_id, "channel": self.ci}])]

    @classmethod
    def joined(cls, store: Any, me: str, other: Chat) -> Chat:
        """The same channel seen from another store that synced it (head = its current one)."""
        self = cls.__new__(cls)
        self.store, self.me, self.other = store, me, other.me
        self.topic_id, self.ci, self.topic, self.t = other.topic_id, other.ci, other.topic, other.t
        cur = versions.current_hash(store, self.ci)
        self.head = None if cur is None else store.get_object(cur).get("head")
        return self

    def post(self, text: str, attachments: list[str] | None = None) -> str:
        self.t += 1000
        msg: dict[str, Any] = {"$type$": "ChatMessage", "text": text, "sender": self.me}
        if attachments:
            msg["attachments"] = attachments
        m = core.object_hash(msg)
        ct = {"$type$": "CreationTime", "timestamp": self.t, "data": m}
        c = core.object_hash(ct)
        sig = {"$type$": "Signature", "issuer": self.me, "data": c, "signature": "ab" * 32}
        s = core.object_hash(sig)
        lle: dict[str, Any] = {"$type$": "LinkedListEntry", "data": c, "metadata": [s]}
        if self.head:
            lle["previous"] = self.head
        self.store.put_objects([msg, ct, sig, lle])
        self.head = core.object_hash(lle)
        versions.store_versioned(self.store, {"$type$": "ChannelInfo", "id": self.topic_id,
                                              "head": self.head}, timestamp_ms=self.t)
        return self.head

    def attach_blob(self, data: bytes, name: str = "file.bin") -> str:
        b, _ = self.store.put_blob(data)
        desc = {"$type$": "BlobDescriptor", "data": b, "lastModified": 1767225600000,
                "name": name, "size": len(data), "type": "application/octet-stream"}
        (d,) = [h for h, _s, _i in self.store.put_objects([desc])]
        return d

    def attach_clob(self, text: str) -> str:
        c, _ = self.store.put_clob(text)
        (n,) = [h for h, _s, _i in self.store.put_objects(
            [{"$type$": "LamaChumTestNote", "title": "note", "body": c}])]
        return n

    def share(self, persons: list[str]) -> None:
        grant_object(self.store, self.topic, persons)
        grant_id(self.store, self.ci, persons)


def texts(store: Any, ci: str) -> list[str]:
    """Message texts reachable from the channel's current version, newest first."""
    out = []
    head = versions.current_hash(store, ci)
    entry = None if head is None else store.get_object(head).get("head")
    while entry:
        lle = store.get_object(entry)
        ct = store.get_object(lle["data"])
        out.append(store.get_object(ct["data"])["text"])
        entry = lle.get("previous")
    return out


def assert_no_holes(store: Any) -> None:
    """chum.md §5.3 "no holes": everything an object or ID object references is stored
    (Store.children fails on a reference to something absent)."""
    for h in store.hashes():
        if store.kind(h) in ("object", "id"):
            store.children(h)


def chat_pair(base: Any) -> tuple[Any, Any, str, str, Chat]:
    """Stores ``base/a`` and ``base/b``, both knowing Alice and Bob, and Alice's chat with Bob
    in ``a`` shared with both: ``(a, b, alice, bob, chat)``."""
    a, b = core.Store(str(base / "a")), core.Store(str(base / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    person_id(b, "alice@a.example")
    person_id(b, "bob@b.example")
    chat = Chat(a, pa, pb)
    chat.share([pa, pb])
    return a, b, pa, pb, chat
