"""Packaging: the abi3 wheel installs into a fresh virtual environment and works without the
source tree; the native module matches its stub (mypy.stubtest)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.cross_core

ROOT = Path(__file__).resolve().parent.parent


def _maturin() -> str:
    exe = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    assert exe, "maturin is installed by ./dev setup (requirements-dev.txt)"
    return exe


def test_wheel_installs_into_fresh_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([_maturin(), "build", "--release", "-q", "-o", str(dist)], cwd=ROOT, check=True,
                   timeout=1800)
    wheels = list(dist.glob("lama-*.whl"))
    assert len(wheels) == 1, wheels
    assert "-cp311-abi3-" in wheels[0].name, wheels[0].name
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheels[0])],
                   check=True, timeout=600)
    code = (
        "import lama, lama.microdata as m, lama._core as c, sys;"
        "assert c.CORE_NAME == 'rust', c.CORE_NAME;"
        "assert 'site-packages' in lama.__file__, lama.__file__;"
        "print(m.object_hash({'$type$': 'Person', 'email': 'alice@example.com', 'name': 'Alice'}))"
    )
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LAMA_CORE", "VIRTUAL_ENV")}
    out = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=clean_env, check=True,
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "04cf557ffbf2f128a7f61cbb28ba7a42cc22bb59f2f6793f81feff0a64b8ff41"


def test_native_module_matches_stub() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    out = subprocess.run([sys.executable, "-m", "mypy.stubtest", "lama._lama", "--mypy-config-file",
                          str(ROOT / "pyproject.toml")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_type_checks() -> None:
    """The public package type-checks with mypy (configuration in pyproject.toml)."""
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
