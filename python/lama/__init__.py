"""lama: pair devices, stay connected and replicate ONE objects with CHUM.

A fast re-implementation of the connection and sync layer of REFINIO's ONE platform, with a
Rust core (``lama._lama``) and a pure-Python core (``lama._pure``, ``LAMA_CORE=pure``) behind
one interface.  The package has one subpackage per layer (../shared/ARCHITECTURE.md), each
using only the layers below it:

- :mod:`lama.objects` - ``microdata`` (serialization, parsing, object and ID hashes),
  ``recipes`` (built-in and user recipes), ``versions`` and ``crdt`` (versioned objects, merges)
- :mod:`lama.store` - the LMDB object store (``Store``, ``BlobWriter``)
- :mod:`lama.identity` - ``keychain``, ``instance`` (``Instance``), ``certificates``
- :mod:`lama.access` - grants (Access, IdAccess, Group) and the roots a person may see
- :mod:`lama.app` - ``App``, the asyncio facade for apps and bots (instance, connections,
  contacts, messages); :mod:`lama.serve` / :mod:`lama.control` - ``lama serve`` and how the
  other commands reach it
- :mod:`lama.cli` - the ``lama`` command

The modules and the main classes are re-exported here: ``from lama import microdata, Store,
Instance``.

Naming rule for blocking and asynchronous variants: an operation offered both ways has the
blocking form under the plain name and the coroutine under the same name with ``_async``
(``Instance.create`` / ``Instance.create_async``, ``sign`` / ``sign_async``,
``close`` / ``close_async``); an operation that only exists as a coroutine (network I/O) has
the plain name.
"""

from __future__ import annotations

from lama.errors import (
    AccessDeniedError,
    ConflictError,
    CryptoError,
    DecryptionError,
    HashMismatchError,
    InvalidArgumentError,
    KeychainError,
    LamaError,
    MicrodataError,
    NotFoundError,
    RecipeError,
    SignatureError,
    StoreError,
    TransportError,
)

from lama.identity import certificates, instance, keychain
from lama.identity.instance import Instance
from lama.objects import crdt, microdata, recipes, versions
from lama.store import BlobWriter, Store
from lama import access

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loaded lazily by __getattr__ below
    from lama.app import App, AppConfig

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # the asyncio facade (issue 10) loads the chat and connection layers: only on first use,
    # so that ``import lama`` stays light
    if name in ("App", "AppConfig"):
        from lama import app

        return getattr(app, name)
    raise AttributeError(f"module 'lama' has no attribute {name!r}")


def core_name() -> str:
    """Which core is active: ``"rust"`` or ``"pure"``."""
    from lama._core import CORE_NAME

    return CORE_NAME


__all__ = [
    "BlobWriter",
    "Instance",
    "Store",
    "access",
    "certificates",
    "crdt",
    "instance",
    "keychain",
    "microdata",
    "recipes",
    "versions",
    "AccessDeniedError",
    "ConflictError",
    "CryptoError",
    "DecryptionError",
    "HashMismatchError",
    "InvalidArgumentError",
    "KeychainError",
    "LamaError",
    "MicrodataError",
    "NotFoundError",
    "RecipeError",
    "SignatureError",
    "StoreError",
    "TransportError",
    "core_name",
    "__version__",
    "App",
    "AppConfig",
]
