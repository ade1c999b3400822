"""Attachments (app-layer.md §3.1, §3.4, §4.4): files streamed into BLOBs behind
BlobDescriptors, arriving at the peer by CHUM and verified; bad input gets clear lama errors
and loses nothing (docs/chat.md §4, §6)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from chum_graph import deterministic_bytes
from chat_util import make, sync, texts, two  # noqa: F401 (two: a fixture)
from lama.chat import MAX_TEXT, Chat
from lama.errors import InvalidArgumentError, LamaError, MissingFileError, NotFoundError


def test_attachment_arrives_and_verifies(two: Any, tmp_path: Path) -> None:
    ca, cb = two
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(deterministic_bytes(3 * 1024 * 1024 + 17, b"x"))  # several 1 MiB chunks and a remainder
    thumb = tmp_path / "photo-thumb.png"
    thumb.write_bytes(deterministic_bytes(2000, b"t"))
    m = ca.send(cb.me, "a photo", [photo], thumbnails=[thumb])
    [att] = m.attachments
    assert att.name == "photo.jpg" and att.mime == "image/jpeg" and att.size == photo.stat().st_size
    assert att.hash == hashlib.sha256(photo.read_bytes()).hexdigest() and att.available
    # the reference's structure: ChatMessage.attachments -> BlobDescriptor -> BLOB (never a
    # raw BLOB hash, §4.4)
    msg = ca.store.get_object(m.hash)
    assert msg["attachments"] == [att.descriptor] and msg["thumbnails"] == [m.thumbnails[0].descriptor]
    desc = ca.store.get_object(att.descriptor)
    assert desc == {"$type$": "BlobDescriptor", "data": att.hash,
                    "lastModified": int(photo.stat().st_mtime * 1000), "name": "photo.jpg",
                    "size": att.size, "type": "image/jpeg"}
    sync(ca, cb)
    [got] = cb.history(ca.me)
    assert got.id == m.id and got.attachments == m.attachments and got.thumbnails == m.thumbnails
    out = tmp_path / "saved.jpg"
    info = cb.save_attachment(got.id, 0, out)
    assert out.read_bytes() == photo.read_bytes()
    assert info == {"path": str(out), "size": att.size, "sha256": att.hash, "name": "photo.jpg",
                    "mime": "image/jpeg"}
    assert not (tmp_path / "saved.jpg.part").exists()
    assert cb.read_attachment(got.thumbnails[0]) == thumb.read_bytes()
    assert b"".join(cb.iter_attachment(got.attachments[0])) == photo.read_bytes()
    with pytest.raises(NotFoundError) as e:
        cb.save_attachment(got.id, 1, tmp_path / "nope")
    assert e.value.code == "LAMA-CHAT-NOATTACH"
    # attachments without text are fine; the same file twice is one BLOB
    m2 = ca.send(cb.me, "", [photo, photo])
    assert len(m2.attachments) == 2 and m2.attachments[0].hash == m2.attachments[1].hash


def test_bad_input_is_a_clear_error_and_posts_nothing(two: Any, tmp_path: Path) -> None:
    ca, cb = two
    ca.send(cb.me, "first")
    before = ca.store.count()

    def fails(exc: type, code: str, fn: Any, *args: Any, **kw: Any) -> None:
        with pytest.raises(exc) as e:
            fn(*args, **kw)
        assert isinstance(e.value, LamaError) and e.value.code == code, (e.value, code)

    stranger = "ab" * 32
    fails(NotFoundError, "LAMA-CHAT-NOCONTACT", ca.send, stranger, "hi")
    fails(NotFoundError, "LAMA-CHAT-NOCONTACT", ca.rename, stranger, "X")
    fails(NotFoundError, "LAMA-CHAT-NOCONTACT", ca.remove_contact, stranger)
    fails(NotFoundError, "LAMA-CHAT-UNPAIRED", ca.on_paired, stranger)
    fails(NotFoundError, "LAMA-CHAT-NOTOPIC", ca.send, "no such topic", "hi")
    fails(InvalidArgumentError, "LAMA-CHAT-SELF", ca.one_to_one, ca.me)
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, "")
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, "  \n\t ")
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, "x" * (MAX_TEXT + 1))
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, "é" * (MAX_TEXT // 2 + 1))
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, b"bytes")
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send, cb.me, "\ud800 lone surrogate")
    fails(InvalidArgumentError, "LAMA-CHAT-TEXT", ca.send_many, cb.me, ["ok", ""])
    fails(InvalidArgumentError, "LAMA-ARG", ca.send, 42, "hi")
    fails(InvalidArgumentError, "LAMA-ARG", ca.send, cb.me, "hi", timestamp=-1)
    fails(InvalidArgumentError, "LAMA-ARG", ca.contact, "not-a-hash")
    fails(InvalidArgumentError, "LAMA-ARG", ca.messages, cb.me, limit=-1)
    fails(InvalidArgumentError, "LAMA-ARG", ca.send, cb.me, "hi", [object()])
    fails(NotFoundError, "LAMA-CHAT-NOMSG", ca.message, "cd" * 32)
    good = tmp_path / "good.txt"
    good.write_bytes(b"good")
    with pytest.raises(MissingFileError) as e:
        ca.send(cb.me, "two files", [good, tmp_path / "missing.txt"])
    assert e.value.code == "LAMA-CHAT-FILE" and isinstance(e.value, FileNotFoundError)
    assert isinstance(e.value, NotFoundError) and "missing.txt" in str(e.value)
    fails(MissingFileError, "LAMA-CHAT-FILE", ca.send, cb.me, "a dir", [tmp_path])
    # nothing of any failed call was written (not even the good file's BLOB)
    assert ca.store.count() == before
    assert ca.store.missing([hashlib.sha256(b"good").hexdigest()]) != []
    assert texts(ca, cb.me) == ["first"]
    ca.send(cb.me, "still works")
    assert texts(ca, cb.me) == ["first", "still works"]
