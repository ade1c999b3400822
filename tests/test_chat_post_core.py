"""The chat sender's post path in the core (issue 10): ``core.chat_posts`` builds, serialises,
hashes and signs ChatMessage, CreationTime, AffirmationCertificate and Signature of a batch of
posts, ``core.chat_commit`` writes them with the caller's objects and head moves in one
transaction. The objects must be byte for byte the dicts ``lama.chat.channel.post`` built
before (their hashes are what ONE peers compute), on both cores, and the two cores must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lama import _pure
from lama._core import core
from lama.chat import channel as ch
from lama.errors import LamaError, MicrodataError
from lama.identity import certificates
from lama.objects import versions

SEED = bytes(range(32))
AUTHOR = "a" * 64
SENDER = "b" * 64
ATT = "c" * 64
THUMB = "d" * 64
LICENSE = str(core.object_hash(certificates.license_object("AffirmationCertificate")))

MESSAGES: list[tuple[str, list[str], list[str]]] = [
    ("hello", [], []),
    ("with a file", [ATT], []),
    ("", [ATT, THUMB], [THUMB]),
    ("<b>&amp; \"quoted\" 'x' </b>", [], []),
    ("Grüße 日本 😀 \u2028 \t\n  spaced  ", [], [THUMB]),
    ("same text", [], []),
    ("same text", [], []),
]
STAMPS = [1_700_000_000_000 + i // 2 for i in range(len(MESSAGES))]


def chat_message(text: str, atts: list[str], thumbs: list[str]) -> dict[str, Any]:
    """A ChatMessage dict in the key order the old dict path wrote it."""
    msg: dict[str, Any] = {"$type$": "ChatMessage", "text": text}
    if atts:
        msg["attachments"] = atts
    msg["sender"] = SENDER
    if thumbs:
        msg["thumbnails"] = thumbs
    return msg


def dict_objects(messages: list[tuple[str, list[str], list[str]]], stamps: list[int], secret: bytes,
                 ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str, str]]]:
    """The objects as the dict path of lama.chat.channel.post (before issue 10) built them."""
    objs: list[dict[str, Any]] = []
    rows = []
    for (text, atts, thumbs), ts in zip(messages, stamps):
        msg = chat_message(text, atts, thumbs)
        mh = core.object_hash(msg)
        ct = {"$type$": "CreationTime", "timestamp": ts, "data": mh}
        cth = core.object_hash(ct)
        cert = {"$type$": "AffirmationCertificate", "data": cth, "license": LICENSE}
        certh = core.object_hash(cert)
        sig = {"$type$": "Signature", "issuer": AUTHOR, "data": certh,
               "signature": core.sign_detached(certh.encode(), secret).hex()}
        objs += [msg, ct, cert, sig]
        rows.append((mh, cth, certh, core.object_hash(sig)))
    return objs, rows


def test_the_objects_are_the_dict_path_objects_byte_for_byte(tmp_path: Path) -> None:
    _pub, secret = core.sign_keypair_from_seed(SEED)
    objs, rows = dict_objects(MESSAGES, STAMPS, secret)
    posts = core.chat_posts(MESSAGES, STAMPS, SENDER, AUTHOR, secret, LICENSE)
    assert len(posts) == len(MESSAGES)
    assert posts.hashes == rows
    store = core.Store(tmp_path / "s", durable=False)
    try:
        written = core.chat_commit(store, posts, [], [])
        assert {h for h, _s, _i in written} == {h for row in rows for h in row}
        for obj, h in zip(objs, [h for row in rows for h in row]):
            assert store.get(h) == core.serialize(obj)
        # written again (after a lost race): nothing new
        assert {s for _h, s, _i in core.chat_commit(store, posts, [], [])} == {"exists"}
    finally:
        store.close()


def test_the_cores_build_the_same_objects() -> None:
    from lama import _lama  # the native module, whichever core the run selected

    _pub, secret = core.sign_keypair_from_seed(SEED)
    rust = _lama.chat_posts(MESSAGES, STAMPS, SENDER, AUTHOR, secret, LICENSE)
    pure = _pure.chat_posts(MESSAGES, STAMPS, SENDER, AUTHOR, secret, LICENSE)
    assert rust.hashes == pure.hashes
    assert len(set(rust.hashes)) == len(MESSAGES)  # equal texts differ by timestamp
    assert rust.hashes[5][0] == rust.hashes[6][0]  # ... but share their ChatMessage


def test_bad_input_is_refused() -> None:
    _pub, secret = core.sign_keypair_from_seed(SEED)
    with pytest.raises(MicrodataError):
        core.chat_posts(MESSAGES, STAMPS[:-1], SENDER, AUTHOR, secret, LICENSE)
    with pytest.raises(LamaError):
        core.chat_posts([("x", [], [])], [1], SENDER, AUTHOR, secret[:10], LICENSE)
    with pytest.raises((LamaError, TypeError)):
        core.chat_posts([(7, [], [])], [1], SENDER, AUTHOR, secret, LICENSE)  # type: ignore[list-item]


def test_channel_post_stores_the_dict_path_objects_and_the_list(tmp_path: Path) -> None:
    """lama.chat.channel.post through the core call: the stored objects are the dict path's,
    the list holds the posts newest first, and the commit moved the channel's head."""
    pub, secret = core.sign_keypair_from_seed(SEED)
    store = core.Store(tmp_path / "s", durable=False)
    try:
        cid = ch.ensure_channel(store, "topic")
        specs = []
        for (text, atts, thumbs), ts in zip(MESSAGES, STAMPS):
            specs.append(ch.PostSpec(chat_message(text, atts, thumbs), ts))
        head0 = store.get_head(cid)
        results, head, before = ch.post(store, cid, specs, author=AUTHOR, sign_secret=secret)
        assert before is None and store.get_head(cid) != head0
        objs, rows = dict_objects(MESSAGES, STAMPS, secret)
        assert [(m, c, ts, s) for c, m, ts, s, _e in results] == \
            [(r[0], r[1], ts, r[3]) for r, ts in zip(rows, STAMPS)]
        for obj, h in zip(objs, [h for row in rows for h in row]):
            assert store.get(h) == core.serialize(obj)
        for _m, _c, certh, sigh in rows:
            sig = store.get_object(sigh)
            core.sign_verify_detached(certh.encode(), bytes.fromhex(sig["signature"]), pub)
        listed = [el.creation_time for el in ch.iter_elements(store, head)]
        assert sorted(listed) == sorted(r[1] for r in rows)
        assert ch.head_of(store, cid) == head
        assert versions.current(store, cid)["head"] == head
        # a second batch on top keeps the first
        more = [ch.PostSpec({"$type$": "ChatMessage", "text": "later", "sender": SENDER}, STAMPS[-1] + 5)]
        (r2,), head2, before2 = ch.post(store, cid, more, author=AUTHOR, sign_secret=secret)
        assert before2 == head and head2 == r2[4]
        assert len(list(ch.iter_elements(store, head2))) == len(MESSAGES) + 1
    finally:
        store.close()


def test_channel_post_refuses_other_objects(tmp_path: Path) -> None:
    _pub, secret = core.sign_keypair_from_seed(SEED)
    store = core.Store(tmp_path / "s", durable=False)
    try:
        cid = ch.ensure_channel(store, "topic")
        head = store.get_head(cid)
        for bad in ({"$type$": "Note", "text": "x", "sender": SENDER},
                    {"$type$": "ChatMessage", "text": "x", "sender": SENDER, "extra": 1}):
            with pytest.raises(LamaError):
                ch.post(store, cid, [ch.PostSpec(bad, 1)], author=AUTHOR, sign_secret=secret)
        mixed = [ch.PostSpec({"$type$": "ChatMessage", "text": "x", "sender": s}, 1) for s in (SENDER, AUTHOR)]
        with pytest.raises(LamaError):
            ch.post(store, cid, mixed, author=AUTHOR, sign_secret=secret)
        assert store.get_head(cid) == head  # nothing was written
    finally:
        store.close()


def test_the_list_insert_is_insert_many_s(tmp_path: Path) -> None:
    """A batch that lands between stored posts (older timestamps than the newest stored one,
    one timestamp equal to a stored one) and a batch with two identical posts: the entries
    chat_posts/chain build are the ones linkedlist.insert_many builds from dict entries."""
    from lama.objects import linkedlist

    _pub, secret = core.sign_keypair_from_seed(SEED)
    store = core.Store(tmp_path / "s", durable=False)
    try:
        cid = ch.ensure_channel(store, "topic")

        def spec(text: str, ts: int) -> ch.PostSpec:
            return ch.PostSpec({"$type$": "ChatMessage", "text": text, "sender": SENDER}, ts)

        ch.post(store, cid, [spec(f"first {i}", 1000 + 10 * i) for i in range(6)],
                author=AUTHOR, sign_secret=secret)
        for batch in ([spec("between a", 1015), spec("between b", 1030), spec("oldest", 5),
                       spec("newest", 2000)],
                      [spec("twice", 3000), spec("twice", 3000), spec("single", 1)]):
            head = ch.head_of(store, cid)
            posts = core.chat_posts([(s.message["text"], [], []) for s in batch],
                                    [int(s.timestamp or 0) for s in batch], SENDER, AUTHOR, secret, LICENSE)
            elements = [(c, float(s.timestamp or 0), [sig]) for (_m, c, _ce, sig), s in zip(posts.hashes, batch)]
            made: dict[str, dict[str, Any]] = {}

            def put(obj: dict[str, Any]) -> str:
                h = str(core.object_hash(obj))
                made[h] = obj
                return h

            expected = linkedlist.insert_many(store.get_object, put, head, elements)
            results, new_head, _before = ch.post(store, cid, batch, author=AUTHOR, sign_secret=secret)
            assert new_head == expected
            for h, obj in made.items():  # every entry stored, byte for byte
                assert store.get(h) == core.serialize(obj)
            listed = [el.key for el in ch.iter_elements(store, new_head)]
            assert listed == sorted(listed, reverse=True)
            assert {r[4] for r in results} <= set(made)
    finally:
        store.close()


def test_the_cores_chain_the_same_entries() -> None:
    from lama import _lama

    _pub, secret = core.sign_keypair_from_seed(SEED)
    above = [("e" * 64, 1_700_000_000_001.0, ["f" * 64]), ("9" * 64, 1_700_000_000_003.0, None)]
    chains = []
    for mod in (_lama, _pure):
        posts = mod.chat_posts(MESSAGES, STAMPS, SENDER, AUTHOR, secret, LICENSE)
        chains.append((posts.chain("1" * 64, above), posts.chain(None, [])))
    assert chains[0] == chains[1]
    with_above, alone = chains[0]
    assert len(with_above) == len(MESSAGES) + 2 and len(alone) == len(MESSAGES)
