"""The chat sender's post path in the core (issue 10), pure core: the same functions as the
native module's ``chat_posts`` / ``chat_commit`` (rust/lama-py/src/chat.rs).

Per message (app-layer.md §2.4): ``ChatMessage{text, attachments?, sender, thumbnails?}``,
``CreationTime{timestamp, data: message}``, ``AffirmationCertificate{data: creationTime,
license}`` and the author's ``Signature{issuer, data: certificate, signature}`` (Ed25519 over
the UTF-8 hex string of the certificate hash, §1.7).  :func:`chat_commit` writes them with the
caller's objects and head moves in one ``write_batch`` transaction.
"""

from __future__ import annotations

from typing import Any

from .crypto import sign_detached
from .microdata import serialize_many
from .store import Store

__all__ = ["ChatPosts", "chat_commit", "chat_elements", "chat_posts"]


class ChatPosts:
    """The objects of a batch of posts and their hashes (written by :func:`chat_commit`)."""

    __slots__ = ("_entries", "_hashes", "_objects", "_timestamps")

    # (type, microdata) of the objects and of the entries of the last chain: written as they
    # were serialized (Store._prepare_texts), as the native core writes its serialized values
    _objects: list[tuple[str, str]]
    _hashes: list[tuple[str, str, str, str]]
    _timestamps: list[int]
    _entries: list[tuple[str, str]]

    @classmethod
    def _of(cls, objects: list[tuple[str, str]], hashes: list[tuple[str, str, str, str]],
            timestamps: list[int]) -> ChatPosts:
        # not a constructor of the interface: the native ChatPosts comes from chat_posts only
        out = cls.__new__(cls)
        out._objects = objects
        out._hashes = hashes
        out._timestamps = timestamps
        out._entries = []
        return out

    @property
    def hashes(self) -> list[tuple[str, str, str, str]]:
        """``[(message, creationTime, certificate, signature)]`` hashes, one row per message."""
        return list(self._hashes)

    def __len__(self) -> int:
        return len(self._hashes)

    def chain(self, base: str | None,
              above: list[tuple[str, float, list[str] | None]]) -> list[tuple[str, str]]:
        """The list insert of the posts (app-layer.md §2.5, ``linkedlist.insert_many``): the
        stored elements ``above`` (``(creationTime, timestamp, metadata or None)``, newer than
        the oldest post) and the posts (metadata: their Signature), sorted oldest first by
        ``(timestamp, creationTime)``, each a new LinkedListEntry on top of the previous one,
        the first on ``base``.  ``[(creationTime, entry)]`` in that order (the last entry is
        the new head); :func:`chat_commit` writes the entries of the last call."""
        els: list[tuple[float, str, list[str] | None]] = [(ts, ct, md) for ct, ts, md in above]
        els += [(ts, ct, [sig]) for (_m, ct, _c, sig), ts in zip(self._hashes, self._timestamps)]
        els.sort(key=lambda e: (e[0], e[1]))
        prev = base
        out: list[tuple[str, str]] = []
        entries: list[tuple[str, str]] = []
        for _ts, ct, md in els:
            obj: dict[str, Any] = {"$type$": "LinkedListEntry", "data": ct}
            if md is not None:
                obj["metadata"] = list(md)
            if prev is not None:
                obj["previous"] = prev
            [(text, prev)] = serialize_many([obj])
            entries.append(("LinkedListEntry", text))
            out.append((ct, prev))
        self._entries = entries
        return out


def _hashes(objs: list[dict[str, Any]], texts: list[tuple[str, str]]) -> list[str]:
    """The objects' hashes; their (type, microdata) appended to ``texts``."""
    out = []
    for obj, (md, h) in zip(objs, serialize_many(objs)):
        texts.append((obj["$type$"], md))
        out.append(h)
    return out


def chat_posts(
    messages: list[tuple[str, list[str], list[str]]],
    timestamps: list[int],
    sender: str,
    author: str,
    sign_secret: bytes,
    license: str,
) -> ChatPosts:
    """Build, serialise, hash and sign the objects of a batch of chat posts. ``messages`` are
    ``(text, attachment hashes, thumbnail hashes)`` (an empty list: no such property)."""
    from lama.errors import MicrodataError

    messages = list(messages)
    if len(messages) != len(timestamps):
        raise MicrodataError(f"{len(messages)} messages but {len(timestamps)} timestamps",
                             code="O2M-RTYC1")
    msgs: list[dict[str, Any]] = []
    for text, atts, thumbs in messages:
        m: dict[str, Any] = {"$type$": "ChatMessage", "text": text}
        if atts:
            m["attachments"] = list(atts)
        m["sender"] = sender
        if thumbs:
            m["thumbnails"] = list(thumbs)
        msgs.append(m)
    texts: list[tuple[str, str]] = []
    msg_hashes = _hashes(msgs, texts)
    cts = [{"$type$": "CreationTime", "timestamp": ts, "data": mh}
           for ts, mh in zip(timestamps, msg_hashes)]
    ct_hashes = _hashes(cts, texts)
    certs = [{"$type$": "AffirmationCertificate", "data": ch, "license": license} for ch in ct_hashes]
    cert_hashes = _hashes(certs, texts)
    sigs = [{"$type$": "Signature", "issuer": author, "data": ch,
             "signature": sign_detached(ch.encode(), sign_secret).hex()} for ch in cert_hashes]
    sig_hashes = _hashes(sigs, texts)
    return ChatPosts._of(texts, list(zip(msg_hashes, ct_hashes, cert_hashes, sig_hashes)),
                         list(timestamps))


def chat_commit(
    store: Store,
    posts: ChatPosts,
    objs: list[dict[str, Any]],
    heads: list[tuple[str, str | None, str]],
) -> list[tuple[str, str, str | None]]:
    """One transaction (``Store.write_batch``): the objects of ``posts`` and the entries of its
    last :meth:`ChatPosts.chain` (as they were serialized, not serialized again), then
    ``objs``, then the compare-and-set of each head."""
    items = store._prepare_texts([*posts._objects, *posts._entries])
    items += store._prepare_objects(objs)
    return store._write_batch(items, heads)


ElementRow = tuple[str, str, Any, "list[str] | None", "str | None", "str | None",
                   "tuple[str, str, list[str], list[str], str | None, str | None] | None"]


def _element(get: Any, h: str) -> tuple[ElementRow, tuple[float, str]]:
    from lama.errors import MicrodataError

    e = get(h)
    ct_hash = e.get("data")
    md = e.get("metadata")
    prev = e.get("previous")
    if (not isinstance(ct_hash, str) or (prev is not None and not isinstance(prev, str))
            or (md is not None and not (isinstance(md, list)
                                        and all(isinstance(x, str) for x in md)))):
        raise MicrodataError(f"LinkedListEntry {h} of a channel list is malformed", code="O2M-RTYC1")
    ct = get(ct_hash)
    ts = ct.get("timestamp")
    data = ct.get("data")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or (
            data is not None and not isinstance(data, str)):
        raise MicrodataError(f"CreationTime {ct_hash} of a channel list is malformed", code="O2M-RTYC1")
    row: ElementRow = (h, ct_hash, ts, None if md is None else list(md), prev, data, None)
    return row, (float(ts), ct_hash)


def _post_of(get: Any, data: str | None, metadata: list[str] | None
             ) -> tuple[str, str, list[str], list[str], str | None, str | None] | None:
    from lama.errors import LamaError

    if data is None:
        return None
    try:
        msg = get(data)
    except LamaError:
        return None
    text = msg.get("text", "")
    sender = msg.get("sender")
    atts = msg.get("attachments", [])
    thumbs = msg.get("thumbnails", [])
    if (msg.get("$type$") != "ChatMessage" or not isinstance(sender, str) or not isinstance(text, str)
            or not isinstance(atts, list) or not isinstance(thumbs, list)
            or not all(isinstance(x, str) for x in [*atts, *thumbs])):
        return None
    sig = issuer = None
    for s in metadata or ():
        try:
            so = get(s)
        except LamaError:
            continue
        if so.get("$type$") == "Signature" and isinstance(so.get("issuer"), str):
            sig, issuer = s, so["issuer"]
            break
    return (text, sender, list(atts), list(thumbs), sig, issuer)


def chat_elements(store: Store, old: str | None, new: str | None) -> list[ElementRow]:
    """The elements of the channel list at entry ``new`` that the list at ``old`` does not
    hold, newest first (``lama.chat.channel.new_elements``: both lists walked together until
    they reach the same entry; an element whose key is in both is not new), each with its post
    read, in one call: ``(entry, creationTime, timestamp, metadata or None, previous or None,
    the CreationTime's data or None, post)``; ``post`` is ``(text, sender, attachment hashes,
    thumbnail hashes, Signature hash, its issuer)`` (the first Signature among the metadata;
    ``None, None`` without one) for a stored ChatMessage with a sender, else ``None``. A
    missing entry or CreationTime: NotFoundError; a malformed one: MicrodataError."""
    if new is None or old == new:
        return []
    get = store.get_object

    def walk(head: str | None) -> Any:
        seen: set[str] = set()
        h = head
        while h is not None and h not in seen:
            seen.add(h)
            el = _element(get, h)
            yield el
            h = el[0][4]

    a, b = walk(old), walk(new)
    ca, cb = next(a, None), next(b, None)
    out: list[ElementRow] = []
    while cb is not None:
        if ca is not None and ca[0][0] == cb[0][0]:
            break
        if ca is None or cb[1] > ca[1]:
            out.append(cb[0])
            cb = next(b, None)
        elif cb[1] == ca[1]:
            cb, ca = next(b, None), next(a, None)
        else:
            ca = next(a, None)
    return [(*row[:6], _post_of(get, row[5], row[3])) for row in out]
