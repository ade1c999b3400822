"""Helper process for test_store_damage.py: opens damaged stores with one core.

Usage: python store_probe.py CORE DIR...  (CORE = rust | pure).

For each DIR (in order) it prints ``start I``, then opens the store, verifies it, reads
everything it lists and writes one object, and prints one line ``done I OUTCOME``:

* ``refused CODE``: opening raised StoreError (any other exception is a failure);
* ``clean`` / ``problems N``: it opened and verify() returned no / N problems, and every
  read and the write succeeded, or raised StoreError (or, once verify() reported problems,
  another lama error: a damaged store may miss what it lists).

Any other exception prints ``fail I ...`` and exits 1; a crash (signal) shows up as a negative
return code after a ``start I`` without its ``done I``, which the test reports.
"""

import os
import sys
import traceback

os.environ["LAMA_CORE"] = sys.argv[1]

from lama._core import core  # noqa: E402
from lama.errors import LamaError, StoreError  # noqa: E402


def read_everything(s, damaged: bool) -> None:
    allowed = LamaError if damaged else StoreError

    def attempt(fn, *args):
        try:
            return fn(*args)
        except allowed:
            return None

    hashes = attempt(s.hashes) or []
    attempt(s.count)
    for h in hashes:
        kind = attempt(s.kind, h)
        if kind in ("object", "id"):
            attempt(s.get, h)
        elif kind in ("blob", "clob"):
            attempt(s.read_blob, h)
            attempt(s.read_blob_chunks, h)
            attempt(s.blob_size, h)
        attempt(s.get_head, h)
        attempt(s.referencing, h, "Access")
        attempt(s.referencing, h, "Keys")
    attempt(s.put_objects, [{"$type$": "Person", "email": f"probe-{os.getpid()}@example.com"}])
    attempt(s.put_blob, b"probe")


def main() -> int:
    for i, d in enumerate(sys.argv[2:]):
        print(f"start {i}", flush=True)
        try:
            try:
                s = core.Store(d)
            except StoreError as e:
                print(f"done {i} refused {e.code}", flush=True)
                continue
            try:
                try:
                    problems = s.verify()
                except StoreError as e:
                    print(f"done {i} refused-verify {e.code}", flush=True)
                    continue
                read_everything(s, bool(problems))
            finally:
                try:
                    s.close()
                except StoreError:
                    pass
            print(f"done {i} {'problems ' + str(len(problems)) if problems else 'clean'}", flush=True)
        except BaseException:
            print(f"fail {i} " + traceback.format_exc().replace("\n", " | "), flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
