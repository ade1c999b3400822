"""The LMDB object store (objects.md §5, docs/store-format.md).

``Store(path, durable=True)`` opens (or creates) the store of one instance directory.  Both cores read and
write the same on-disk format.  See docs/core-interface.md for every method; in short:
``put_objects`` (serialize, hash and store many objects in one transaction), ``put_microdata``
(store received microdata verbatim after verifying its hash), ``get``/``get_object``/``has``,
BLOBs and CLOBs (``put_blob``, ``put_clob``, ``blob_writer``, ``read_blob``), version heads
(``get_head``, ``write_batch`` with compare-and-set), reverse maps (``referencing``,
``enable_reverse_maps``) and ``verify()``.
"""

from __future__ import annotations

from lama._core import core

Store = core.Store
BlobWriter = core.BlobWriter


__all__ = ["Store", "BlobWriter"]
