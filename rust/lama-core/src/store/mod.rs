//! LMDB object store (objects.md §5, docs/store-format.md).
