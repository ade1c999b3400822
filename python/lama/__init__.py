"""lama: pair devices, stay connected and replicate ONE objects with CHUM.

A fast re-implementation of the connection and sync layer of REFINIO's ONE platform, with a
Rust core (``lama._lama``) and a pure-Python core (``lama._pure``, ``LAMA_CORE=pure``) behind
one interface.  Public modules:

- :mod:`lama.microdata` - ONE microdata serialization, parsing, object and ID hashes
- :mod:`lama.recipes` - built-in and user recipes
- :mod:`lama.store` - the LMDB object store
- :mod:`lama.versions` - versioned objects: version nodes, history, CRDT merges
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

__version__ = "0.1.0"


def core_name() -> str:
    """Which core is active: ``"rust"`` or ``"pure"``."""
    from lama._core import CORE_NAME

    return CORE_NAME


__all__ = [
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
]
