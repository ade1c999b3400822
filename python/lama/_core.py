"""Selects the core once: the native Rust module, or the pure-Python one.

``LAMA_CORE=pure`` selects the pure core, ``LAMA_CORE=rust`` insists on the native one (and
fails loudly if it is missing); unset, the native core is used when it is importable.
Everything in lama imports the core from here, never from ``_lama`` or ``_pure`` directly.
"""

from __future__ import annotations

import os
from types import ModuleType


def _select() -> ModuleType:
    wanted = os.environ.get("LAMA_CORE", "").strip().lower()
    if wanted not in ("", "rust", "pure"):
        raise ImportError(f"LAMA_CORE must be 'rust' or 'pure', not {wanted!r}")
    if wanted == "pure":
        from lama import _pure

        return _pure
    try:
        from lama import _lama  # type: ignore[attr-defined]
    except ImportError:
        if wanted == "rust":
            raise
        from lama import _pure

        return _pure
    return _lama


core: ModuleType = _select()
CORE_NAME: str = core.CORE_NAME
