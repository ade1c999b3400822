"""The receiver's read of new list elements in the core (issue 10): ``core.chat_elements``
walks the channel list from a new head against the old one as
``lama.chat.channel.new_elements`` does and reads each new element's post (ChatMessage and the
Signature among the entry's metadata) in one call. The rows must be what the element walk and
the object reads give, on both cores, and the two cores must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lama import _pure
from lama._core import core
from lama.chat import channel as ch
from lama.errors import NotFoundError

SEED = bytes(range(32))
SENDER = "b" * 64
ATT = "c" * 64


def spec(text: str, ts: int, atts: list[str] | None = None) -> ch.PostSpec:
    msg: dict[str, Any] = {"$type$": "ChatMessage", "text": text}
    if atts:
        msg["attachments"] = atts
    msg["sender"] = SENDER
    return ch.PostSpec(msg, ts)


def expected(store: Any, old: str | None, new: str | None) -> list[tuple[Any, ...]]:
    """The rows from new_elements and one object read at a time (what Chat._build reads)."""
    out = []
    for el in ch.new_elements(store, old, new):
        post = None
        try:
            msg = store.get_object(el.data)
        except NotFoundError:
            msg = {}
        if msg.get("$type$") == "ChatMessage":
            sig = issuer = None
            for s in el.metadata or ():
                so = store.get_object(s)
                if so.get("$type$") == "Signature":
                    sig, issuer = s, so["issuer"]
                    break
            post = (msg.get("text", ""), msg["sender"], msg.get("attachments", []),
                    msg.get("thumbnails", []), sig, issuer)
        out.append((el.entry, el.creation_time, el.timestamp,
                    None if el.metadata is None else list(el.metadata), el.previous, el.data, post))
    return out


def fill(store: Any) -> tuple[str, list[str | None]]:
    """A channel with three batches: the second lands between stored posts (entries above
    it rewritten), the third holds identical posts; the heads after each batch."""
    _pub, secret = core.sign_keypair_from_seed(SEED)
    cid = ch.ensure_channel(store, "topic")
    heads: list[str | None] = [ch.head_of(store, cid)]
    for batch in ([spec(f"first {i}", 1000 + 10 * i) for i in range(6)],
                  [spec("between a", 1015, [ATT]), spec("between b", 1030), spec("oldest", 5),
                   spec("newest", 2000)],
                  [spec("twice", 3000), spec("twice", 3000), spec("single", 1)]):
        ch.post(store, cid, batch, author=SENDER, sign_secret=secret)
        heads.append(ch.head_of(store, cid))
    return cid, heads


def test_the_rows_are_the_element_walk_and_the_reads(tmp_path: Path) -> None:
    store = core.Store(tmp_path / "s", durable=False)
    try:
        _cid, heads = fill(store)
        for i, old in enumerate(heads):
            for new in heads[i:]:
                rows = core.chat_elements(store, old, new)
                assert rows == expected(store, old, new)
                assert [r[1] for r in rows] == [r[1] for r in core.chat_elements(store, None, new)
                                                if r[1] not in {x[1] for x in core.chat_elements(store, None, old)}]
        every = core.chat_elements(store, None, heads[-1])
        assert len(every) == 13
        assert [r[6][0] for r in every][:2] == ["twice", "twice"]
        assert all(r[6] is not None and r[6][1] == SENDER and r[6][4] == r[3][0] and r[6][5] == SENDER
                   for r in every)
        assert [r[6][2] for r in every if r[6][0] == "between a"] == [[ATT]]
        assert core.chat_elements(store, heads[-1], heads[-1]) == []
        assert core.chat_elements(store, heads[-1], None) == []
    finally:
        store.close()


def test_posts_that_are_not_chat_messages_and_bad_lists(tmp_path: Path) -> None:
    """An entry whose CreationTime points at another object, or with metadata but no
    Signature: the row is there, its post None / without signature. A missing entry is
    NotFoundError (the import is not complete yet); the store's recipes refuse a malformed
    entry or CreationTime, so those cannot be read here."""
    store = core.Store(tmp_path / "s", durable=False)
    try:
        [(other, _s, _)] = store.put_objects([{"$type$": "PersonName", "name": "x"}])
        [(ct1, _s, _)] = store.put_objects([{"$type$": "CreationTime", "timestamp": 10, "data": other}])
        [(msg, _s, _)] = store.put_objects([{"$type$": "ChatMessage", "text": "hi", "sender": SENDER}])
        [(ct2, _s, _)] = store.put_objects([{"$type$": "CreationTime", "timestamp": 20, "data": msg}])
        [(e1, _s, _)] = store.put_objects([{"$type$": "LinkedListEntry", "data": ct1}])
        [(e2, _s, _)] = store.put_objects([{"$type$": "LinkedListEntry", "data": ct2,
                                             "metadata": [other], "previous": e1}])
        got = core.chat_elements(store, None, e2)
        assert got == [(e2, ct2, 20, [other], e1, msg, ("hi", SENDER, [], [], None, None)),
                       (e1, ct1, 10, None, None, other, None)]
        assert got == expected(store, None, e2)
        assert core.chat_elements(store, e1, e2) == got[:1]
        with pytest.raises(NotFoundError):
            core.chat_elements(store, None, "e" * 64)
        [(e3, _s, _)] = store.put_objects([{"$type$": "LinkedListEntry", "data": ct2, "previous": "f" * 64}])
        with pytest.raises(NotFoundError):
            core.chat_elements(store, None, e3)
    finally:
        store.close()


def test_the_cores_read_the_same_rows(tmp_path: Path) -> None:
    """One channel (the on-disk format is the same for both cores), read by the native and the
    pure chat_elements: the same rows for every pair of heads."""
    from lama import _lama

    store = core.Store(tmp_path / "s", durable=False)
    try:
        _cid, heads = fill(store)
    finally:
        store.close()
    got = []
    for mod in (_lama, _pure):
        store = mod.Store(tmp_path / "s", durable=False)
        try:
            got.append([mod.chat_elements(store, old, new) for old in heads for new in heads])
        finally:
            store.close()
    assert got[0] == got[1]
    assert sum(len(x) for x in got[0]) > 13
