"""Helper process for test_crash.py: writes batches forever until killed.

Usage: python crash_writer.py STORE_DIR CORE RUN  (CORE = rust | pure; RUN = round number).

Batch ``b`` of round ``RUN`` is :func:`batch` (objects, a version head move and a chunked
BLOB). After both of its commits have returned, the writer prints ``b`` (flushed): a batch
printed is a batch the store reported committed, which must survive a SIGKILL.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

N_OBJECTS = 100
BLOB_SIZE = (1 << 20) + 200_000  # chunked: staged in tmp, then published with its header
SENDER = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"


def person(run: int, b: int) -> dict[str, Any]:
    return {"$type$": "Person", "email": f"crash-{run}@example.com", "name": f"batch {b}"}


def batch(core: Any, run: int, b: int) -> tuple[list[dict[str, Any]], dict[str, Any], bytes]:
    """(objects, version node of the head, BLOB) of batch ``b``: deterministic, so the test
    can recompute the hashes."""
    objs = [{"$type$": "ChatMessage", "text": f"run {run} batch {b} message {i} " + "x" * 150,
             "sender": SENDER} for i in range(N_OBJECTS)]
    p = person(run, b)
    edge = {"$type$": "VersionNodeEdge", "data": core.object_hash(p), "depth": b,
            "creationTime": 1_700_000_000_000 + b}
    blob = random.Random(run * 100_000 + b).randbytes(BLOB_SIZE)
    return objs + [p], edge, blob


def main() -> None:
    os.environ["LAMA_CORE"] = sys.argv[2]
    from lama._core import core

    run = int(sys.argv[3])
    store = core.Store(sys.argv[1])
    id_hash = core.id_hash(person(run, 0))
    head = None
    b = 0
    while True:
        objs, edge, blob = batch(core, run, b)
        store.write_batch(objs + [edge], [(id_hash, head, core.object_hash(edge))])
        head = core.object_hash(edge)
        w = store.blob_writer()
        for off in range(0, len(blob), 300_000):
            w.write(blob[off:off + 300_000])
        w.finish()
        print(b, flush=True)
        b += 1


if __name__ == "__main__":
    main()
