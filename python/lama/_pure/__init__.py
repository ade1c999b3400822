"""The pure-Python core of lama: the same interface as the native module ``lama._lama``.

See docs/core-interface.md.  Microdata, recipes and hashes: objects.md §1-§3
(:mod:`.recipes`, :mod:`.microdata`, :mod:`.jsnum`, :mod:`.jsonstar`).
Everything above the core imports it through ``lama._core``, never directly.
"""

from __future__ import annotations

from .microdata import (
    id_hash,
    id_microdata,
    id_microdata_of,
    object_hash,
    parse,
    references,
    serialize,
    serialize_many,
    sha256_hex,
    type_of,
)
from .recipes import is_versioned, recipe_json, recipe_names, register_recipe, resolved_recipe
from .store import BlobWriter, CommitSignal, Snapshot, Store, Subscription, check_hash
from .net import Listener, SessionTask, Transport, memory_pair, spawn_session, ws_connect, ws_listen
from .crypto import *  # noqa: F401,F403  (crypto primitives, listed in crypto.__all__)
from . import crypto as _crypto
from .chum import ChumSession
from .encrypted import EncryptedConnection, encrypted_accept, encrypted_connect
from .commserver import CommListener, CommServer, comm_listen, comm_server
from .chatpost import ChatPosts, chat_commit, chat_elements, chat_posts

CORE_NAME = "pure"

__all__ = [
    "CORE_NAME",
    "register_recipe",
    "recipe_names",
    "recipe_json",
    "resolved_recipe",
    "is_versioned",
    "serialize",
    "parse",
    "object_hash",
    "id_microdata",
    "id_hash",
    "id_microdata_of",
    "type_of",
    "serialize_many",
    "references",
    "sha256_hex",
    "check_hash",
    "Store",
    "BlobWriter",
    "Snapshot",
    "Subscription",
    "CommitSignal",
    "Transport",
    "memory_pair",
    "ws_connect",
    "ws_listen",
    "Listener",
    "spawn_session",
    "SessionTask",
    "ChumSession",
    # issue 9: encrypted connections (docs/connections.md §1)
    "EncryptedConnection",
    "encrypted_accept",
    "encrypted_connect",
    "CommServer",
    "CommListener",
    "comm_server",
    "comm_listen",
    # issue 10: the chat sender's post path in the core
    "ChatPosts",
    "chat_posts",
    "chat_commit",
    "chat_elements",
    *_crypto.__all__,
]
