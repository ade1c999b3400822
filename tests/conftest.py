"""Shared fixtures.

The whole suite runs once per core (``./dev test`` runs pytest with ``LAMA_CORE=rust`` and
then with ``LAMA_CORE=pure``); ``lama._core.core`` is the core under test.  Tests marked
``cross_core`` compare the two cores directly and do not depend on ``LAMA_CORE``, so the second
run deselects them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"

# Let a plain `pytest` from a checkout find the package even before `maturin develop`.
if str(ROOT / "python") not in sys.path:
    sys.path.insert(0, str(ROOT / "python"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cross_core: compares the Rust and the pure core directly")


def pytest_report_header(config: pytest.Config) -> str:
    from lama._core import CORE_NAME

    return f"lama core under test: {CORE_NAME} (LAMA_CORE={os.environ.get('LAMA_CORE', '')!r})"


def load_vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


def peer_keys(peer: dict[str, Any], who: str) -> Any:
    """The recorded secret key pairs of a peer of crypto-and-frames.json (``who`` is
    ``"person"`` or ``"instance"``) as :class:`lama.identity.keychain.SecretKeys`."""
    from lama.identity.keychain import SecretKeys

    kp = peer["keypairs"]
    return SecretKeys(
        bytes.fromhex(kp[f"{who}EncryptionKeyPair"]["secretKey"]),
        bytes.fromhex(kp[f"{who}SignKeyPair"]["secretKey"]),
    )


@pytest.fixture(scope="session")
def rust_core() -> ModuleType:
    from lama import _lama  # type: ignore[attr-defined]

    return _lama


@pytest.fixture(scope="session")
def pure_core() -> ModuleType:
    from lama import _pure

    return _pure
