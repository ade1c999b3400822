"""Selects the core once: the native Rust module, or the pure-Python one.

``LAMA_CORE=pure`` selects the pure core, ``LAMA_CORE=rust`` insists on the native one (and
fails loudly if it is missing); unset, the native core is used when it is importable.
Everything in lama imports the core from here, never from ``_lama`` or ``_pure`` directly.

To a type checker ``core`` *is* the native module as its stub (``_lama.pyi``) describes it, so
``core.Store`` is a real class and not ``Any`` (as pydantic-core re-exports its native module).
The pure core implements the same stub; tests/test_core_interface.py holds it to that.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING


def _select() -> ModuleType:
    wanted = os.environ.get("LAMA_CORE", "").strip().lower()
    if wanted not in ("", "rust", "pure"):
        raise ImportError(f"LAMA_CORE must be 'rust' or 'pure', not {wanted!r}")
    if wanted == "pure":
        from lama import _pure

        return _pure
    try:
        from lama import _lama
    except ImportError:
        if wanted == "rust":
            raise
        from lama import _pure

        return _pure
    return _lama


if TYPE_CHECKING:
    from lama import _lama as core
else:
    core = _select()

CORE_NAME: str = core.CORE_NAME

# The core's classes under their stub types, for annotations everywhere above the core.
Store = core.Store
BlobWriter = core.BlobWriter

# Comm server and its listener client (docs/connections.md §2).
comm_server = core.comm_server
comm_listen = core.comm_listen
CommServer = core.CommServer
CommListener = core.CommListener

# Encrypted connections (docs/connections.md §1).
encrypted_connect = core.encrypted_connect
encrypted_accept = core.encrypted_accept
EncryptedConnection = core.EncryptedConnection

__all__ = ["CORE_NAME", "BlobWriter", "CommListener", "CommServer", "EncryptedConnection", "Store", "comm_listen",
           "comm_server", "core", "encrypted_accept", "encrypted_connect"]
