"""The plain data of lama.chat (docs/chat.md §2-§4): contacts, topics, messages, attachments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Attachment", "Contact", "Message", "RemovedContact", "Topic"]


@dataclass(frozen=True)
class Contact:
    """One remote person (app-layer.md §1.3: a Someone listed in ``Leute.other``)."""

    person_id: str
    email: str | None
    name: str
    someone_id: str
    instances: tuple[str, ...]
    topic_id: str


@dataclass(frozen=True)
class RemovedContact:
    """What :meth:`lama.chat.Chat.remove_contact` did: the peer's instance ids (the facade
    stops their connections) and the grant ID hashes it rewrote without the person."""

    person_id: str
    instances: tuple[str, ...]
    revoked: tuple[str, ...]


@dataclass(frozen=True)
class Topic:
    """A chat topic (app-layer.md §3.1): its ``Topic`` object and its channel."""

    id: str
    name: str | None
    hash: str
    channel: str
    kind: Literal["one_to_one", "group"]
    participants: tuple[str, ...]
    peer: str | None


@dataclass(frozen=True)
class Attachment:
    """A ``BlobDescriptor`` (app-layer.md §3.1) and the BLOB it describes."""

    descriptor: str
    hash: str
    name: str
    size: int
    mime: str
    last_modified: int
    available: bool


@dataclass(frozen=True)
class Message:
    """One chat message: a ChatMessage reached through a channel entry (app-layer.md §2.9).
    ``id`` is the CreationTime hash, the key that stays stable across merges (§5.6 B10)."""

    id: str
    topic_id: str
    peer: str | None
    channel: str
    entry: str
    hash: str
    timestamp: int
    sender: str
    author: str | None
    signature: str | None
    sender_name: str
    text: str
    attachments: tuple[Attachment, ...]
    thumbnails: tuple[Attachment, ...]
    outgoing: bool
