"""Attachments: files streamed into BLOBs, referenced through BlobDescriptors (app-layer.md §3.1,
§3.4 ``…AsFile``, §4.4: never a raw BLOB hash in ``ChatMessage.attachments``)."""

from __future__ import annotations

import hashlib
import mimetypes
import os
from pathlib import Path
from typing import Any, Iterator

from lama._core import Store, core
from lama.errors import HashMismatchError, LamaError, MissingFileError, NotFoundError
from lama.chat.model import Attachment

__all__ = ["CHUNK", "descriptor_of", "iter_blob", "save_blob", "store_file"]

CHUNK = 1 << 20
"""Bytes read from a file per BLOB write (a file is never held in memory whole)."""


def _missing(path: Any, why: str) -> MissingFileError:
    return MissingFileError(f"cannot attach {os.fspath(path)!r}: {why}", code="LAMA-CHAT-FILE")


def check_file(path: str | os.PathLike[str]) -> Path:
    """The path of a readable regular file, else ``MissingFileError LAMA-CHAT-FILE``."""
    p = Path(os.fspath(path))
    try:
        st = p.stat()
    except OSError as e:
        raise _missing(path, e.strerror or "not found") from None
    if not p.is_file():
        raise _missing(path, "not a regular file")
    if not os.access(p, os.R_OK):
        raise _missing(path, "not readable")
    del st
    return p


def store_file(store: Store, path: str | os.PathLike[str]) -> str:
    """Stream the file into a BLOB (the store hashes while writing) and store its
    ``BlobDescriptor{data, lastModified, name, size, type}``; the descriptor's hash."""
    p = check_file(path)
    try:
        st = p.stat()
        size = 0
        with open(p, "rb") as f, store.blob_writer() as w:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                w.write(chunk)
            blob, _status = w.finish()
    except LamaError:
        raise
    except OSError as e:
        raise _missing(path, e.strerror or str(e)) from None
    mime = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
    desc = {"$type$": "BlobDescriptor", "data": blob, "lastModified": int(st.st_mtime * 1000),
            "name": p.name, "size": size, "type": mime}
    [(h, _s, _)] = store.put_objects([desc])
    return str(h)


def descriptor_of(store: Store, h: str) -> Attachment:
    """The attachment ``h`` refers to (a BlobDescriptor; anything else, e.g. a raw hash a
    Lama peer wrote, is shown as an unnamed attachment of unknown size)."""
    try:
        obj = store.get_object(h)
    except LamaError:
        obj = None
    if obj is None or obj.get("$type$") != "BlobDescriptor":
        return Attachment(h, h, "", 0, "application/octet-stream", 0, store.has(h))
    blob = str(obj["data"])
    return Attachment(h, blob, str(obj.get("name", "")), int(obj.get("size", 0)),
                      str(obj.get("type", "")), int(obj.get("lastModified", 0)),
                      store.has(blob))


_PIECE = 1 << 20  # the store's chunk size: each read is one stored chunk


def iter_blob(store: Store, att: Attachment) -> Iterator[bytes]:
    """The BLOB's chunks; ``NotFoundError LAMA-CHAT-NOATTACH`` if it is not (yet) here."""
    if not store.has(att.hash):
        raise NotFoundError(f"the data of attachment {att.name!r} ({att.hash}) is not in the store",
                            code="LAMA-CHAT-NOATTACH")
    # one stored chunk (1 MiB) per read transaction: a large attachment is saved or
    # streamed in bounded memory (issue 10), not read whole first
    offset = 0
    while True:
        piece = store.read_blob_range(att.hash, offset, _PIECE)
        if not piece:
            return
        offset += len(piece)
        yield piece


def save_blob(store: Store, att: Attachment, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Stream the BLOB into ``path`` (via ``path.part``, checked against its hash, renamed)."""
    dest = Path(os.fspath(path))
    part = dest.with_name(dest.name + ".part")
    sha = hashlib.sha256()
    size = 0
    try:
        with open(part, "wb") as f:
            for chunk in iter_blob(store, att):
                sha.update(chunk)
                size += len(chunk)
                f.write(chunk)
        digest = sha.hexdigest()
        if digest != att.hash:
            raise HashMismatchError(f"attachment data hashes to {digest}, not {att.hash}",
                                    code="LAMA-CHAT-HASH")
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return {"path": str(dest), "size": size, "sha256": digest, "name": att.name, "mime": att.mime}


def read_blob(store: Store, att: Attachment) -> bytes:
    data = b"".join(iter_blob(store, att))
    if core.sha256_hex(data) != att.hash:
        raise HashMismatchError(f"attachment data does not hash to {att.hash}", code="LAMA-CHAT-HASH")
    return data
