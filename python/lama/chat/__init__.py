"""lama.chat: contacts, topics, channels, messages and attachments (issue 10, docs/chat.md).

Pure Python over the core interface (both cores), from app-layer.md §1-§5 and objects.md §8.
"""

from lama.chat.chat import MAX_ATTACHMENTS, MAX_BATCH, MAX_TEXT, Chat, one_to_one_id
from lama.chat.model import Attachment, Contact, Message, RemovedContact, Topic

__all__ = [
    "MAX_ATTACHMENTS",
    "MAX_BATCH",
    "MAX_TEXT",
    "Attachment",
    "Chat",
    "Contact",
    "Message",
    "RemovedContact",
    "Topic",
    "one_to_one_id",
]
