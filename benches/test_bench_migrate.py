"""Migration from and to ONE's file store (issue 12, docs/migration.md), both cores in one run,
each in its own process (``benches/migrate_side.py``: the core is chosen at import).

* a chat instance of ``LAMA_BENCH_MIGRATE_MESSAGES`` messages (default 20,000: about 100,000
  objects - ChatMessage, CreationTime, entries, certificates, signatures) written by the Rust
  core (``chat_post_side.py fill``), exported to ONE's layout by each core (files/s), then the
  Rust core's export imported by each core (objects/s: every file re-hashed, stored verbatim,
  heads, keychain re-encrypted);
* BLOBs: the reference's storage dump plus 16 random BLOBs of 4 MiB, imported by each core
  (MiB/s: each BLOB read, classified, hashed and stored in chunks);
* an app's own recipes: ``LAMA_BENCH_MIGRATE_APP`` (default 20,000) objects of a type whose
  Recipe object is only in the store (loaded after the objects pass, its objects stored then),
  imported by each core (objects/s).

Run: ``.venv/bin/python -m pytest benches/test_bench_migrate.py --benchmark-enable -s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import record, report_line

HERE = Path(__file__).resolve().parent
MESSAGES = int(os.environ.get("LAMA_BENCH_MIGRATE_MESSAGES", "20000"))
APP_OBJECTS = int(os.environ.get("LAMA_BENCH_MIGRATE_APP", "20000"))


def side(script: str, core: str, *args: str, timeout: float = 1800.0) -> dict[str, Any]:
    env = dict(os.environ, LAMA_CORE=core)
    os.sync()  # the previous step's writeback is not charged to this one
    p = subprocess.run([sys.executable, str(HERE / script), *args], env=env, capture_output=True,
                       text=True, timeout=timeout, cwd=str(HERE))
    assert p.returncode == 0, p.stderr[-3000:]
    [line] = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    return line  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lama-bench-migrate-") as d:
        w = Path(d)
        fill = side("chat_post_side.py", "rust", "fill", str(w / "src"), str(MESSAGES))
        report_line(f"migrate: source instance with {fill['n']:,} messages")
        yield w


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_export(work: Path, core: str) -> None:
    r = side("migrate_side.py", core, "export", str(work / "src" / "alice"), str(work / f"one-{core}"))
    assert r["problems"] == 0
    record("migrate: export_one lama -> ONE layout (files/s)", core, r["n"], r["seconds"])
    report_line(f"{core}: export {r['n']:,} files ({r['bytes'] / 2**20:.1f} MiB) in "
                f"{r['seconds']:.2f} s = {r['rate']:,.0f} files/s")


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_import(work: Path, core: str) -> None:
    src = work / "one-rust"
    if not src.exists():
        side("migrate_side.py", "rust", "export", str(work / "src" / "alice"), str(src))
    r = side("migrate_side.py", core, "import", str(src), str(work / f"back-{core}"))
    assert r["problems"] == 0 and r["counts"]["keys"] == 2
    record("migrate: import_one ONE layout -> lama (objects/s)", core, r["n"], r["seconds"])
    report_line(f"{core}: import {r['n']:,} objects ({r['bytes'] / 2**20:.1f} MiB) in "
                f"{r['seconds']:.2f} s = {r['rate']:,.0f} objects/s")


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_import_blobs(work: Path, core: str) -> None:
    src = work / "one-blobs"
    if not src.exists():
        side("migrate_side.py", "rust", "blobs", str(src), "16", "4")
    r = side("migrate_side.py", core, "import", str(src), str(work / f"blobs-{core}"))
    assert r["counts"]["blobs"] == 16
    mib = r["bytes"] / 2**20
    record("migrate: import_one with 16 BLOBs of 4 MiB (MiB/s)", core, mib, r["seconds"])
    report_line(f"{core}: import {r['n']:,} objects and BLOBs ({mib:.1f} MiB) in "
                f"{r['seconds']:.2f} s = {mib / r['seconds']:,.1f} MiB/s")


@pytest.mark.parametrize("core", ["rust", "pure"])
def test_import_app_recipes(core: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lama-bench-migrate-app-") as d:
        src = Path(d) / "one"
        side("migrate_side.py", "rust", "app", str(src), str(APP_OBJECTS))
        r = side("migrate_side.py", core, "import", str(src), str(Path(d) / "back"))
    assert r["counts"]["recipes"] == 2 and r["counts"]["objects"] >= APP_OBJECTS
    record("migrate: import_one, objects of an app recipe found in the store (objects/s)", core,
           r["n"], r["seconds"])
    report_line(f"{core}: import {r['n']:,} objects (app recipes) in {r['seconds']:.2f} s = "
                f"{r['rate']:,.0f} objects/s")
