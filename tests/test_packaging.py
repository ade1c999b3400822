"""Packaging: the abi3 wheel is built as ``./dev wheel`` builds it (zig, manylinux2014 = glibc
2.17), needs no newer glibc symbol, installs into a fresh virtual environment without a Rust
toolchain and works without the source tree; the native module matches its stub
(mypy.stubtest)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.cross_core

ROOT = Path(__file__).resolve().parent.parent

# The build command of `./dev wheel` (kept equal by test_dev_wheel_builds_the_same_way).
# zig links against glibc 2.17 symbol versions (lmdb-master-sys and mimalloc are compiled
# with `zig cc -target x86_64-linux-gnu.2.17` too), so the wheel installs on manylinux2014
# distributions (CentOS 7, Debian 8+, Ubuntu 14.04+), not only on glibc >= 2.34.
WHEEL_BUILD_ARGS = ["build", "--release", "--zig", "--compatibility", "manylinux2014"]
MAX_GLIBC = (2, 17)
# PEP 599 (manylinux2014) external libraries, plus the dynamic loader itself
ALLOWED_NEEDED = {
    "libgcc_s.so.1", "libstdc++.so.6", "libm.so.6", "libdl.so.2", "librt.so.1", "libc.so.6",
    "libnsl.so.1", "libutil.so.1", "libpthread.so.0", "libresolv.so.2", "ld-linux-x86-64.so.2",
}


def _maturin() -> str:
    exe = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")
    assert exe, "maturin is installed by ./dev setup (requirements-dev.txt)"
    return exe


def elf_dynamic_info(data: bytes) -> tuple[set[str], set[str]]:
    """(DT_NEEDED libraries, required symbol versions) of a 64-bit little-endian ELF shared
    object, read from its section headers: ``.dynamic`` (DT_NEEDED = 1) and the
    SHT_GNU_verneed section (``.gnu.version_r``: Verneed entries, each with a chain of
    Vernaux entries naming a version such as ``GLIBC_2.17``)."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    e_shoff, = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = []
    for i in range(e_shnum):
        _name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, sh_info, _align, _entsize = (
            struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
        )
        sections.append((sh_type, sh_offset, sh_size, sh_link, sh_info))

    def string(link: int, offset: int) -> str:
        base = sections[link][1] + offset
        return data[base : data.index(b"\0", base)].decode()

    needed: set[str] = set()
    versions: set[str] = set()
    for sh_type, off, size, link, info in sections:
        if sh_type == 6:  # SHT_DYNAMIC: (d_tag, d_val) pairs
            for pos in range(off, off + size, 16):
                tag, val = struct.unpack_from("<qQ", data, pos)
                if tag == 0:
                    break
                if tag == 1:  # DT_NEEDED
                    needed.add(string(link, val))
        elif sh_type == 0x6FFFFFFE:  # SHT_GNU_verneed, sh_info = number of entries
            pos = off
            for _ in range(info):
                _ver, cnt, _file, aux, nxt = struct.unpack_from("<HHIII", data, pos)
                apos = pos + aux
                for _ in range(cnt):
                    _hash, _flags, _other, name, anext = struct.unpack_from("<IHHII", data, apos)
                    versions.add(string(link, name))
                    apos += anext
                pos += nxt
    return needed, versions


def _glibc_versions(versions: set[str]) -> list[tuple[int, ...]]:
    return sorted(
        tuple(int(x) for x in m.group(1).split("."))
        for v in versions
        if (m := re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", v))
    )


def test_elf_reader_against_objdump() -> None:
    """The ELF reader above agrees with binutils on this interpreter's own C extension (so
    the wheel check below does not rest on an unchecked parser)."""
    import _ctypes  # a C extension of the standard library that needs glibc symbols

    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.fail("objdump (binutils) is needed to cross-check the ELF reader")
    so = Path(_ctypes.__file__)
    needed, versions = elf_dynamic_info(so.read_bytes())
    out = subprocess.run([objdump, "-p", str(so)], capture_output=True, text=True, check=True).stdout
    assert needed == set(re.findall(r"^\s+NEEDED\s+(\S+)$", out, re.M))
    assert versions == set(re.findall(r"0x[0-9a-f]+ 0x[0-9a-f]{2} \d+ (\S+)$", out, re.M))
    assert _glibc_versions(versions), "expected GLIBC_* version needs"


def test_dev_wheel_builds_the_same_way() -> None:
    """``./dev wheel`` and the test below build the wheel with the same maturin arguments."""
    assert "maturin\" " + " ".join(WHEEL_BUILD_ARGS) + " " in (ROOT / "dev").read_text()


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv(tmp_path: Path) -> None:
    """Build like ``./dev wheel``; the wheel is tagged manylinux2014 / manylinux_2_17 and its
    native module needs nothing newer than GLIBC_2.17; it installs and runs in a fresh venv
    with no Rust toolchain on PATH.

    Cost: the build reuses ROOT/target (zig builds go to target/x86_64-unknown-linux-gnu/, a
    cache separate from the host build of ``maturin develop``). Measured on the 2-core
    development machine: a cold release build took 9 min 16 s wall clock under a load of ~10
    (178 s CPU user time); with an up-to-date target dir (after ``./dev wheel`` or an earlier
    run) the build takes ~2 s."""
    dist = tmp_path / "dist"
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # the venv's python provides `-m ziglang`
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    started = time.monotonic()
    subprocess.run([_maturin(), *WHEEL_BUILD_ARGS, "-q", "-o", str(dist)], cwd=ROOT, env=env,
                   check=True, timeout=1800)
    print(f"wheel build: {time.monotonic() - started:.1f} s")
    wheels = list(dist.glob("lama-*.whl"))
    assert len(wheels) == 1, wheels
    name = wheels[0].name
    assert name.endswith("-cp311-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"), name
    with zipfile.ZipFile(wheels[0]) as zf:
        [wheel_meta] = [n for n in zf.namelist() if n.endswith(".dist-info/WHEEL")]
        tags = re.findall(r"^Tag: (\S+)$", zf.read(wheel_meta).decode(), re.M)
        assert set(tags) == {"cp311-abi3-manylinux2014_x86_64", "cp311-abi3-manylinux_2_17_x86_64"}
        [so_name] = [n for n in zf.namelist() if n.endswith(".so")]
        needed, versions = elf_dynamic_info(zf.read(so_name))
    glibc = _glibc_versions(versions)
    assert glibc and glibc[-1] <= MAX_GLIBC, f"needs GLIBC_{'.'.join(map(str, glibc[-1]))}"
    assert needed <= ALLOWED_NEEDED, needed - ALLOWED_NEEDED

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    # no Rust toolchain reachable: the wheel must not need one
    no_rust_path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "cargo").exists() and not (Path(d) / "rustc").exists()
    )
    clean_env = {k: v for k, v in os.environ.items()
                 if k not in ("PYTHONPATH", "LAMA_CORE", "VIRTUAL_ENV", "CARGO_HOME", "RUSTUP_HOME")}
    clean_env["PATH"] = no_rust_path
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--only-binary", ":all:", str(wheels[0])],
                   env=clean_env, check=True, timeout=600)
    code = (
        "import lama, lama.objects.microdata as m, lama._core as c, sys;"
        "assert c.CORE_NAME == 'rust', c.CORE_NAME;"
        "assert 'site-packages' in lama.__file__, lama.__file__;"
        "print(m.object_hash({'$type$': 'Person', 'email': 'alice@example.com', 'name': 'Alice'}))"
    )
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
