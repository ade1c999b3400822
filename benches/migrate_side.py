"""One core's migration benchmark, in its own process (the core is chosen by LAMA_CORE at
import).  Prints one JSON line per measurement.

    python migrate_side.py export LAMA_DIR ONE_BASE     # lama -> ONE layout (export_one)
    python migrate_side.py import ONE_BASE LAMA_DIR     # ONE layout -> lama (import_one)
    python migrate_side.py blobs ONE_BASE N MIB         # the reference dump + N BLOBs of MIB MiB
    python migrate_side.py app ONE_BASE N               # an app's store + N objects of its type

The source is the instance ``chat_post_side.py fill`` writes (alice, secret
``chat-test-secret-alice``), or for ``blobs`` the reference's storage dump written by
tests/one_fixture.py (same secret) with N random BLOBs added, or for ``app`` the store of an app with its own recipes
(tests/one_fixture.py ``write_app_store``) with N ``MigTag`` objects added - a type whose
recipe is a Recipe object in the store that ``Instance.recipe`` does not name, so it is only
loaded after the objects pass."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))

from lama._core import core  # noqa: E402
from lama.migrate import export_one, import_one  # noqa: E402

SECRET = "chat-test-secret-alice"


def main() -> None:
    cmd, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
    if cmd == "blobs":
        import hashlib

        import one_fixture

        size = int(float(sys.argv[4]) * (1 << 20))
        blobs = {}
        for i in range(int(dst)):
            data = os.urandom(size)
            blobs[hashlib.sha256(data).hexdigest()] = data
        one_fixture.write_dump_store(Path(src), SECRET, extra_files=blobs)
        print(json.dumps({"what": "blobs", "n": len(blobs), "bytes": size * len(blobs)}))
        return
    if cmd == "app":
        import one_fixture

        one = one_fixture.write_app_store(Path(src), SECRET)
        for i in range(int(dst)):
            label, j = "", i + 1
            while j:
                j, r = divmod(j - 1, 26)
                label = chr(97 + r) + label
            md = ('<div itemscope itemtype="//refin.io/MigTag"><span itemprop="label">'
                  f'{label}</span><span itemprop="weight">{i}</span></div>')
            (one.path / "objects" / one_fixture.sha(md)).write_text(md, encoding="utf-8")
        print(json.dumps({"what": "app", "n": int(dst)}))
        return
    t = time.perf_counter()
    if cmd == "export":
        rep = export_one(src, dst, SECRET)
    elif cmd == "import":
        rep = import_one(src, dst, SECRET)
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    dt = time.perf_counter() - t
    c = rep.counts
    n = sum(c.get(k, 0) for k in ("objects", "id_objects", "version_nodes", "blobs", "clobs"))
    nbytes = sum(os.path.getsize(os.path.join(r, f))
                 for r, _, fs in os.walk(os.path.join(rep.path if cmd == "export" else src))
                 for f in fs if "objects" in r)
    print(json.dumps({"what": cmd, "core": core.CORE_NAME, "n": n, "seconds": dt, "rate": n / dt,
                      "bytes": nbytes, "counts": c, "problems": len(rep.problems)}), flush=True)


if __name__ == "__main__":
    main()
