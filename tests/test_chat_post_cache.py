"""The sender's post cache (issue 10, lama.chat.channel.PostCache): a post to a channel takes
the version node, the ChannelInfo and the list's head element its sender's previous post
wrote from memory while the channel's head is still that node, instead of reading them again.
It must write exactly what a post without it writes, also when another writer moved the
channel in between (another sender's post, a republished version, a batch that lands below
the newest post, the same posts again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest

from lama._core import core
from lama.chat import channel as ch
from lama.objects import versions

SEED = bytes(range(32))
AUTHOR = "a" * 64
SENDER = "b" * 64
OTHER = "c" * 64


def spec(text: str, ts: int, sender: str = SENDER) -> ch.PostSpec:
    return ch.PostSpec({"$type$": "ChatMessage", "text": text, "sender": sender}, ts)


def steps(secret: bytes) -> list[tuple[str, Any]]:
    """(writer, what): "me" posts with the cache, "other" posts without one, "republish"
    writes a change node with the same data (what Chat._republish_merge does)."""
    return [
        ("me", [spec("one", 1000)]),
        ("me", [spec("two", 1001)]),
        ("me", [spec("three a", 1002), spec("three b", 1002)]),
        ("other", [spec("from the other", 1003, OTHER)]),
        ("me", [spec("after the other", 1004)]),
        ("me", [spec("below the newest", 999)]),  # lands under stored posts
        ("me", [spec("same ms", 1004)]),  # equal timestamp: ordered by CreationTime hash
        ("republish", None),
        ("me", [spec("after a republish", 1010)]),
        ("me", [spec("after a republish", 1010)]),  # the same post again: nothing moves
        ("other", [spec("newest other", 1020, OTHER)]),
        ("other", [spec("one more other", 1021, OTHER)]),
        ("me", [spec("last", 1030), spec("older in the batch", 1005)]),
    ]


def run(tmp: Path, name: str, cached: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    _pub, secret = core.sign_keypair_from_seed(SEED)
    clock = iter(range(1_700_000_000_000, 1_700_000_001_000))
    monkeypatch.setattr(versions, "now_ms", lambda: next(clock))  # the nodes' creationTime
    store = core.Store(tmp / name, durable=False)
    out: list[Any] = []
    try:
        cid = ch.ensure_channel(store, "topic")
        cache = ch.PostCache() if cached else None
        for who, specs in steps(secret):
            if who == "republish":
                versions.update_versioned(
                    store, cid, lambda cur: ({k: v for k, v in (cur or {}).items()}, []), force=True)
                out.append(("republish", store.get_head(cid)))
                continue
            post: Callable[..., Any] = ch.post
            kw: dict[str, Any] = {"cache": cache} if who == "me" else {}
            results, head, before = post(store, cid, specs, author=AUTHOR, sign_secret=secret, **kw)
            assert head == ch.head_of(store, cid)  # what the store holds, cached or not
            listed = [el.key for el in ch.iter_elements(store, head)]
            assert listed == sorted(listed, reverse=True)
            out.append((who, results, head, before, store.get_head(cid), listed))
        # every object and head move, in the order the store recorded them
        out.append(("feed", store.changes(0, 100_000)))
    finally:
        store.close()
    return out


def test_cached_posts_write_what_uncached_posts_write(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with_cache = run(tmp_path, "cached", True, monkeypatch)
    without = run(tmp_path, "plain", False, monkeypatch)
    assert with_cache == without
    # the list holds every distinct post once
    assert len(with_cache[-2][5]) == 13


def test_the_cache_holds_what_the_store_holds(tmp_path: Path) -> None:
    """After a post, the cache's node, ChannelInfo and head element are the stored ones."""
    from lama.objects import linkedlist

    _pub, secret = core.sign_keypair_from_seed(SEED)
    store = core.Store(tmp_path / "s", durable=False)
    try:
        cid = ch.ensure_channel(store, "topic")
        cache = ch.PostCache()
        for batch in ([spec("a", 5)], [spec("b", 7), spec("c", 6)], [spec("d", 1)]):
            _r, head, _b = ch.post(store, cid, batch, author=AUTHOR, sign_secret=secret, cache=cache)
            node_hash = store.get_head(cid)
            [(cached_hash, (node, data))] = cache.versions.items()
            assert cached_hash == node_hash and node == versions.load_node(store, node_hash)
            assert data == store.get_object(node.data)
            assert cache.head == linkedlist.element(store.get_object, head)
            assert cache.head is not None and cache.head.data == linkedlist.element(
                store.get_object, head).data
    finally:
        store.close()


def test_chat_knows_the_channel_of_the_version_its_last_post_wrote(tmp_path: Path) -> None:
    """Chat.own_channel_of (what the tracer asks instead of reading the store): the version
    node and the ChannelInfo my last post to a channel wrote give that channel; an older
    version, another object or an unknown hash give None."""
    from chat_util import make

    from lama.chat import Chat

    a, b = make(tmp_path, "alice"), make(tmp_path, "bob")
    ca = Chat(a, events=False)
    try:
        topic = ca.create_group("g", [str(b.person_id)]).id
        ca.send(topic, "one")
        m = ca.send(topic, "two")
        node = a.store.get_head(m.channel)
        assert node is not None
        info = versions.load_node(a.store, node).data
        assert ca.own_channel_of(node) == m.channel
        assert ca.own_channel_of(info) == m.channel
        older = versions.load_node(a.store, node).parents[0]
        assert ca.own_channel_of(older) is None
        assert ca.own_channel_of(m.hash) is None
        assert ca.own_channel_of("0" * 64) is None
    finally:
        ca.close()
        a.close()
        b.close()
