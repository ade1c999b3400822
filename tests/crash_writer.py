"""Helper process for test_crash.py: writes large batches forever until killed.

Usage: python crash_writer.py STORE_DIR CORE  (CORE = rust | pure).  Prints "ready" after the
first committed batch so the test knows a kill lands in the middle of later writes.
"""

import os
import sys

os.environ["LAMA_CORE"] = sys.argv[2]

from lama._core import core  # noqa: E402

store = core.Store(sys.argv[1])
sender = "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
batch = 0
while True:
    objs = [
        {"$type$": "ChatMessage", "text": f"message {os.getpid()}/{batch}/{i} " + "x" * 180, "sender": sender}
        for i in range(5000)
    ]
    store.put_objects(objs)
    w = store.blob_writer()
    for _ in range(3):
        w.write(os.urandom(700_000))
    w.finish()
    batch += 1
    if batch == 1:
        print("ready", flush=True)
