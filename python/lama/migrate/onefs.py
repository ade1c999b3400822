"""The file store of a ONE instance (objects.md §5): where things are, how they are named.

``<baseDir>/<instanceIdHash>/`` holds ``objects/`` (objects, ID objects, BLOBs, CLOBs - file
name = SHA-256 of the content, optionally sharded into ``objects/<hash[:N]>/``, N in 1..4),
``vheads/`` (one file per ID hash: the 64 hex digits of the head version node, no newline),
``rmaps/`` (append-only reverse maps ``<target>.Object.<Type>`` / ``<target>.IdObject.<Type>``,
one ``<hash>\\n`` per entry), ``tmp/``, ``acache/`` and ``private/`` (the keychain, §7.4).

This module only knows the layout; :mod:`lama.migrate` moves data in and out of a lama store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from lama.errors import NotFoundError, StoreError

__all__ = [
    "OBJECTS",
    "VHEADS",
    "RMAPS",
    "PRIVATE",
    "SUBDIRS",
    "BUILTIN_OBJECT_MAPS",
    "BUILTIN_ID_MAPS",
    "is_hash",
    "find_one_instance",
    "iter_object_files",
    "write_exclusive",
]

OBJECTS = "objects"
VHEADS = "vheads"
RMAPS = "rmaps"
PRIVATE = "private"
SUBDIRS = ("objects", "vheads", "rmaps", "tmp", "acache", "private")

# objects.md §5.3: reverse maps that are always on (all itemprops)
BUILTIN_OBJECT_MAPS = ("Access", "Group", "IdAccess", "Keys")
BUILTIN_ID_MAPS = ("Access", "IdAccess", "Instance")

_HASH_RE = re.compile(r"[0-9a-f]{64}")
_SHARD_RE = re.compile(r"[0-9a-f]{1,4}")


def is_hash(name: str) -> bool:
    """64 lowercase hex digits and nothing else (objects.md §2.1: uppercase is rejected)."""
    return _HASH_RE.fullmatch(name) is not None


def find_one_instance(directory: str | os.PathLike[str]) -> Path:
    """The ONE instance directory for ``directory``: the instance directory itself (it has
    ``objects/``) or a base directory holding exactly one ``<instanceIdHash>/objects/``.

    ``NotFoundError LAMA-MIGRATE-NODIR`` if ``directory`` does not exist,
    ``StoreError LAMA-MIGRATE-NOTONE`` if it holds no (or more than one) ONE instance."""
    base = Path(directory)
    if not base.exists():
        raise NotFoundError(f"LAMA-MIGRATE-NODIR: {base} does not exist")
    if not base.is_dir():
        raise StoreError(f"LAMA-MIGRATE-NOTONE: {base} is not a directory")
    if (base / OBJECTS).is_dir():
        return base
    found = sorted(
        p for p in base.iterdir() if is_hash(p.name) and (p / OBJECTS).is_dir()
    )
    if not found:
        raise StoreError(
            f"LAMA-MIGRATE-NOTONE: {base} is not a ONE instance directory (no objects/ in it "
            "or in an <instanceIdHash>/ below it)"
        )
    if len(found) > 1:
        raise StoreError(
            f"LAMA-MIGRATE-NOTONE: {base} holds {len(found)} ONE instances; give the "
            "instance directory (<base>/<instanceIdHash>)"
        )
    return found[0]


def iter_object_files(objects_dir: str | os.PathLike[str]) -> Iterator[tuple[str, str | None]]:
    """Every file below ``objects/`` as ``(path, problem)``: ``problem`` is None for a file whose
    name is a hash in the right place (flat, or in the shard directory named by its first N hex
    digits), else why it cannot be an object file. Paths are plain strings (a store holds
    millions of files: no pathlib per file)."""
    with os.scandir(objects_dir) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if not _SHARD_RE.fullmatch(e.name):
                yield e.path, "a directory that is not a shard directory (1-4 hex digits)"
                continue
            with os.scandir(e.path) as sub:
                inner = sorted(sub, key=lambda s: s.name)
            for s in inner:
                if not s.is_file(follow_symlinks=False):
                    yield s.path, "not a regular file"
                elif not is_hash(s.name):
                    yield s.path, "the file name is not a hash (64 lowercase hex digits)"
                elif not s.name.startswith(e.name):
                    yield s.path, f"in the shard directory {e.name}/ but its name does not start so"
                else:
                    yield s.path, None
        elif not e.is_file(follow_symlinks=False):
            yield e.path, "not a regular file"
        elif not is_hash(e.name):
            yield e.path, "the file name is not a hash (64 lowercase hex digits)"
        else:
            yield e.path, None


def write_exclusive(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data``; it must not exist (objects are write-once, objects.md
    §5.1: exclusive create)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)
