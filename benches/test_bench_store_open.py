"""Opening a store of 100,000 objects, and reading its event feed, for both cores in one run.

Opening a directory that no ``Store`` of the process has open maps the LMDB file and first
runs the structural check of docs/store-format.md "Damaged files" (every branch and leaf page
read through bounds-checked slices of a map of the file, so a damaged file is refused instead
of crashing the process), unless the check mark left by a clean close says the file is
exactly as lama left it (docs/store-format.md "Check mark"): then only the meta pages are
checked. Both are measured: each round closes the store, so the next open checks again
(``check="always"`` forces the full check, as after a crash). The event feed (``changes``) is
what an upper layer reads to learn what was written."""

from __future__ import annotations

import shutil
import tempfile
from types import ModuleType
from typing import Any, Iterator

import pytest

from conftest import record
from test_bench_ingest import N, OBJECTS


@pytest.fixture(scope="module")
def store_dir() -> Iterator[str]:
    from conftest import cores

    d = tempfile.mkdtemp(prefix="lama-bench-open-")
    s = cores()["rust"].Store(d, durable=False)
    for i in range(0, N, 10_000):
        s.put_objects(OBJECTS[i:i + 10_000])
    s.close()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("check", ["auto", "always"])
def test_open_store(benchmark: Any, core: ModuleType, store_dir: str, check: str) -> None:
    def open_close() -> None:
        s = core.Store(store_dir, check=check)
        assert s.open_check == ("mark" if check == "auto" else "full")
        s.close()

    core.Store(store_dir).close()  # a clean close: leaves a check mark
    benchmark.pedantic(open_close, rounds=5, iterations=1, warmup_rounds=1)
    what = "after a clean close" if check == "auto" else "full check (check=\"always\")"
    record(f"open a store of 100,000 objects, {what} (opens/s)", core.CORE_NAME, 1,
           float(benchmark.stats.stats.median))


def test_read_event_feed(benchmark: Any, core: ModuleType, store_dir: str) -> None:
    s = core.Store(store_dir)
    try:
        def read_all() -> int:
            n, since = 0, 0
            while True:
                batch = s.changes(since, 10_000)
                if not batch:
                    return n
                n += len(batch)
                since = batch[-1][0]

        n = benchmark.pedantic(read_all, rounds=3, iterations=1)
        assert n >= N
        record("read the event feed (events/s)", core.CORE_NAME, n, float(benchmark.stats.stats.median))
    finally:
        s.close()
