"""The LMDB object store (objects.md §5, docs/store-format.md).

``Store(path, durable=True)`` opens (or creates) the store of one instance directory.  Both cores read and
write the same on-disk format.  See docs/core-interface.md for every method; in short:
``put_objects`` (serialize, hash and store many objects in one transaction), ``put_microdata``
(store received microdata verbatim after verifying its hash), ``get``/``get_object``/``has``,
BLOBs and CLOBs (``put_blob``, ``put_clob``, ``blob_writer``, ``read_blob``), version heads
(``get_head``, ``write_batch`` with compare-and-set), reverse maps (``referencing``,
``enable_reverse_maps``) and ``verify()``.

``Store`` and ``BlobWriter`` are the selected core's classes; to a type checker they are the
classes of the native module's stub.
"""

from __future__ import annotations

from lama._core import BlobWriter, Store

__all__ = ["Store", "BlobWriter"]
