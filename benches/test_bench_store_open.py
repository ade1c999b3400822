"""Opening a store of 100,000 objects, and reading its event feed, for both cores in one run.

Opening a directory that no ``Store`` of the process has open maps the LMDB file and first
runs the structural check of docs/store-format.md "Damaged files" (every branch and leaf page
read through bounds-checked slices of a map of the file, so a damaged file is refused instead
of crashing the process). The
check is paid once per process and directory; this measures it: each round closes the store,
so the next open checks again. The event feed (``changes``) is what an upper layer reads to
learn what was written."""

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


def test_open_store(benchmark: Any, core: ModuleType, store_dir: str) -> None:
    def open_close() -> None:
        core.Store(store_dir).close()

    benchmark.pedantic(open_close, rounds=5, iterations=1, warmup_rounds=1)
    record("open a store of 100,000 objects (opens/s)", core.CORE_NAME, 1,
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
