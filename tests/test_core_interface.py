"""Both cores implement one interface: the native module's stub ``python/lama/_lama.pyi``.

``mypy.stubtest`` checks the native module against the stub (tests/test_packaging.py); here it
checks the pure core against the same stub, so the two cores cannot drift in names, parameters
or defaults.  The stub is laid out as ``lama/_pure/__init__.pyi`` in a scratch stub path; the
pure core's private submodules (its implementation) are allow-listed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cross_core

ROOT = Path(__file__).resolve().parent.parent
PURE_SUBMODULES = sorted(p.stem for p in (ROOT / "python/lama/_pure").glob("*.py") if p.stem != "__init__") + sorted(
    p.parent.name for p in (ROOT / "python/lama/_pure").glob("*/__init__.py"))


def test_pure_core_matches_the_stub(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    (stubs / "lama" / "_pure").mkdir(parents=True)
    (stubs / "lama" / "__init__.pyi").write_text("")
    shutil.copy(ROOT / "python/lama/_lama.pyi", stubs / "lama" / "_pure" / "__init__.pyi")
    allow = tmp_path / "allow.txt"
    allow.write_text(
        r"lama\._pure\.(" + "|".join(PURE_SUBMODULES) + r")(\..*)?" + "\n"
        # Finalizers: the native classes free their resources in Rust's Drop instead.
        + r"lama\._pure\.\w+\.__del__" + "\n"
        # The native Transport is a pyo3 class, a disjoint base (@disjoint_base in the stub, as
        # EncryptedConnection derives from it); the pure one is a plain class.
        + r"lama\._pure\.Transport" + "\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), MYPYPATH=str(stubs))
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "lama._pure", "--allowlist", str(allow)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pure_core_exports_what_the_stub_lists() -> None:
    """Same public names (the stub's ``__all__``) in both cores, nothing missing on either side."""
    from lama import _pure

    stub_all = _stub_all()
    assert sorted(_pure.__all__) == stub_all
    for name in stub_all:
        assert hasattr(_pure, name), name
    try:
        from lama import _lama
    except ImportError:  # pure-only installation
        return
    assert sorted(_lama.__all__) == stub_all


def _stub_all() -> list[str]:
    import ast

    tree = ast.parse((ROOT / "python/lama/_lama.pyi").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return sorted(ast.literal_eval(node.value))
    raise AssertionError("the stub has no __all__")
