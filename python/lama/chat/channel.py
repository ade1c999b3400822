"""Channels: create, post, read newest first, diff two heads (app-layer.md §2).

A channel is a versioned ``ChannelInfo{id, owner?, head?}``; its ``head`` is the newest
``LinkedListEntry`` of a list ordered by the entries' CreationTimes (§2.5, implemented in
:mod:`lama.objects.linkedlist`, which also merges concurrent versions through the CRDT engine).

A post (§2.4) stores ChatMessage, CreationTime, the Affirmation License, an
AffirmationCertificate over the CreationTime, the author's Signature over the certificate, the
entries the list insert creates, the next ChannelInfo version and its version node - all in ONE
store transaction (:func:`lama.objects.versions.update_versioned`), which is what makes
thousands of posts per second possible.  :func:`post` takes several payloads for a bulk post:
the same objects per message, the list insert repeated in memory, one ChannelInfo version.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from lama._core import Store, core
from lama.errors import InvalidArgumentError
from lama.identity import certificates
from lama.objects import linkedlist, versions
from lama.objects.linkedlist import Element

__all__ = [
    "channel_id",
    "ensure_channel",
    "head_of",
    "iter_elements",
    "new_elements",
    "post",
]

_AFFIRMATION_LICENSE = certificates.license_object("AffirmationCertificate")
_AFFIRMATION_LICENSE_HASH: str | None = None


def _license_hash() -> str:
    global _AFFIRMATION_LICENSE_HASH
    if _AFFIRMATION_LICENSE_HASH is None:
        _AFFIRMATION_LICENSE_HASH = str(core.object_hash(_AFFIRMATION_LICENSE))
    return _AFFIRMATION_LICENSE_HASH


def channel_object(topic_id: str, owner: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"$type$": "ChannelInfo", "id": topic_id}
    if owner is not None:
        obj["owner"] = owner
    return obj


def channel_id(topic_id: str, owner: str | None = None) -> str:
    """The channel identity: the ID hash of ``{ChannelInfo, id, owner?}`` (§2.1)."""
    return str(core.id_hash(channel_object(topic_id, owner)))


def ensure_channel(store: Store, topic_id: str, owner: str | None = None) -> str:
    """§2.3 createChannel: the first version ``{id, owner?}`` unless one exists; the ID hash."""
    cid = channel_id(topic_id, owner)
    if store.get_head(cid) is None:
        versions.store_versioned(store, channel_object(topic_id, owner))
    return cid


def head_of(store: Store, cid: str) -> str | None:
    """The head entry of the channel's current version (``None``: empty or unknown)."""
    h = versions.current_hash(store, cid)
    if h is None:
        return None
    head = store.get_object(h).get("head")
    return None if head is None else str(head)


def iter_elements(store: Store, head: str | None) -> Iterator[Element]:
    """The channel's list from ``head``, newest first, loading one entry at a time."""
    return linkedlist.entries(store.get_object, head)


def new_elements(store: Store, old: str | None, new: str | None) -> list[Element]:
    """The elements of the list at ``new`` that the list at ``old`` does not hold, newest
    first (§2.7 "changed", only the new ones).  Walks both lists together and stops where they
    reach the same entry (the rest is shared), so the cost is the size of the change, not of
    the channel.  Entries rewritten by a merge keep their (timestamp, CreationTime) key and are
    not reported again."""
    if new is None or old == new:
        return []
    load = store.get_object
    a = linkedlist.entries(load, old)
    b = linkedlist.entries(load, new)
    ca = next(a, None)
    cb = next(b, None)
    out: list[Element] = []
    while cb is not None:
        if ca is not None and ca.entry == cb.entry:
            break
        if ca is None or cb.key > ca.key:
            out.append(cb)
            cb = next(b, None)
        elif cb.key == ca.key:
            cb = next(b, None)
            ca = next(a, None)
        else:  # in the old list only (cannot happen for a merged list; skip it)
            ca = next(a, None)
    return out


class PostCache:
    """What one sender's last post to a channel wrote, kept by the sender for the next post
    (issue 10): the channel's version node and ChannelInfo (``versions.update_versioned``'s
    ``known``) and the list's head element. Everything in it is content-addressed (a node,
    an object, an entry and its CreationTime by their hashes), so it is used only while the
    channel's head is still that node and the list's head still that entry, and then it is
    what the store holds; any other writer moves the head, and then the store is read."""

    __slots__ = ("head", "versions")

    def __init__(self) -> None:
        self.versions: dict[str, tuple[versions.VersionNode, dict[str, Any]]] = {}
        self.head: Element | None = None


class PostSpec:
    """One message to post: its ChatMessage (without ``sender``) and an optional timestamp."""

    __slots__ = ("message", "timestamp")

    def __init__(self, message: dict[str, Any], timestamp: int | None = None) -> None:
        self.message = message
        self.timestamp = timestamp


def post(
    store: Store,
    cid: str,
    specs: list[PostSpec],
    *,
    author: str,
    sign_secret: bytes,
    now: Callable[[], int] = versions.now_ms,
    on_build: Callable[[str | None, str, list[str]], None] | None = None,
    cache: PostCache | None = None,
) -> tuple[list[tuple[str, str, int, str, str]], str, str | None]:
    """Post ``specs`` to the channel ``cid`` as ``author`` in one transaction (§2.4).

    Returns ``([(creationTimeHash, chatMessageHash, timestamp, signatureHash, entryHash)...],
    new head entry, head entry it replaced)``; ``entryHash`` is the entry the post created
    (entries above it may be rewritten by later inserts, §2.5). ``on_build(old head entry,
    new head entry, CreationTime hashes)`` is called before the transaction is written (again
    after a lost race), so a reader that sees the commit finds it recorded. ``cache`` (the
    caller's, one per channel) spares the next post to ``cid`` the reads of what this one
    wrote (:class:`PostCache`)."""
    lic_hash = _license_hash()
    # §2.4 step 5: the given timestamp or now, read per message before the transaction (the
    # build below must be a pure function of the current version).  Posts within one
    # millisecond order by CreationTime hash (§2.5), as in the reference.
    stamps = [spec.timestamp if spec.timestamp is not None else now() for spec in specs]
    results: list[tuple[str, str, int, str, str]] = []
    before: list[str | None] = [None]  # the head entry the committed build started from
    built: list[Element | None] = [None]  # the new head element of the last build
    # ChatMessage, CreationTime, AffirmationCertificate and Signature of every post built,
    # serialised, hashed and signed in one core call (issue 10; the GIL is released in the
    # native core); core.chat_commit writes them with the entries and the version below
    sender, messages = _plain_messages(specs)
    batch = core.chat_posts(messages, stamps, sender, author, sign_secret, lic_hash)
    posted = [(ch, mh, ts, sh) for (mh, ch, _cert, sh), ts in zip(batch.hashes, stamps)]

    def build(cur: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        # a pure function of ``cur`` (update_versioned re-runs it after a lost race)
        if cur is None:
            raise AssertionError("post to a channel without a version")  # ensure_channel first
        results.clear()
        head = cur.get("head")
        before[0] = None if head is None else str(head)
        # §2.4 step 7, the list insert of every post at once (linkedlist.insert_many: the
        # same list as inserting them one by one); the entries are built in the core
        keys: set[tuple[float, str]] = {(ts, ct) for ct, _m, ts, _s in posted}
        known = None if cache is None else cache.head
        above: list[Element]
        if not keys:
            base, above = before[0], []
        elif known is not None and known.entry == before[0] and known.key < min(keys):
            # the walk's first step (stored_above) with the head element this sender wrote
            base, above = before[0], []
        else:
            base, above = linkedlist.stored_above(store.get_object, before[0], min(keys), keys)
        chain = batch.chain(base, [(el.creation_time, el.timestamp,
                                    None if el.metadata is None else list(el.metadata))
                                   for el in above])
        created = dict(chain)  # CreationTime -> the entry this insert made for it
        built[0] = None
        if chain:
            head = chain[-1][1]
            if cache is not None:
                built[0] = _head_element(chain, base, above, posted)
        extra: list[dict[str, Any]] = [_AFFIRMATION_LICENSE]
        for ct_hash, msg_hash, ts, sig_hash in posted:
            results.append((ct_hash, msg_hash, ts, sig_hash, created.get(ct_hash) or str(head)))
        new = {k: v for k, v in cur.items() if k != "$versionHash$"}
        new["head"] = head
        if on_build is not None:
            on_build(before[0], str(head), [c for c, _m, _t, _s in posted])
        return new, extra

    v = versions.update_versioned(store, cid, build, posts=batch,
                                  known=None if cache is None else cache.versions)
    if cache is not None:
        cache.head = built[0]
        if built[0] is not None:  # the version just written holds it (v.merged is the build's)
            return list(results), str(built[0].entry), before[0]
    return list(results), str(store.get_object(v.merged)["head"]), before[0]


def _head_element(chain: list[tuple[str, str]], base: str | None, above: list[Element],
                  posted: list[tuple[str, str, int, str]]) -> Element:
    """The element of ``chain``'s last entry (the new head), as ``linkedlist.element`` reads
    it from the store: its CreationTime, timestamp, metadata, previous entry and data."""
    ct, entry = chain[-1]
    previous = chain[-2][1] if len(chain) > 1 else base
    for c, mh, ts, sig in posted:
        if c == ct:
            return Element(entry, ct, ts, (sig,), previous, mh)
    el = next(el for el in above if el.creation_time == ct)
    return Element(entry, ct, el.timestamp, el.metadata, previous, el.data)


_MESSAGE_KEYS = frozenset(("$type$", "text", "attachments", "sender", "thumbnails"))


def _plain_messages(specs: list[PostSpec]) -> tuple[str, list[tuple[str, list[str], list[str]]]]:
    """The sender and ``(text, attachments, thumbnails)`` of ChatMessage posts of one sender
    (what ``core.chat_posts`` builds the ChatMessage objects from)."""
    sender: str | None = None
    out: list[tuple[str, list[str], list[str]]] = []
    for spec in specs:
        m = spec.message
        if m.get("$type$") != "ChatMessage" or not m.keys() <= _MESSAGE_KEYS or "sender" not in m:
            raise InvalidArgumentError(f"a post must be a ChatMessage with a sender, got {m!r}",
                                       code="LAMA-ARG")
        if sender is None:
            sender = str(m["sender"])
        elif m["sender"] != sender:
            raise InvalidArgumentError("the posts of one batch have one sender", code="LAMA-ARG")
        out.append((m["text"], list(m.get("attachments") or ()), list(m.get("thumbnails") or ())))
    return sender or "", out


def payload_hash(store: Store, ct_hash: str) -> str:
    return str(store.get_object(ct_hash)["data"])


def iter_many(store: Store, heads: Iterable[str | None]) -> Iterator[Element]:
    """Several channels' lists merged newest first (§2.9 multi-channel reading)."""
    lists = [iter_elements(store, h) for h in heads if h is not None]
    if len(lists) == 1:
        yield from lists[0]
        return
    for el, _i, _n in linkedlist.merge_iterator(lists):
        yield el
