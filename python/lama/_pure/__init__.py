"""The pure-Python core of lama: the same interface as the native module ``lama._lama``
(docs/core-interface.md). Each layer lives in its own module and is re-exported here."""

from __future__ import annotations

CORE_NAME = "pure"

from .crypto import *  # noqa: E402,F401,F403
