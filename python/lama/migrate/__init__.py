"""Migration between a ONE instance's file store and a lama instance (issue 12, docs/migration.md).

::

    from lama.migrate import import_one, export_one

    report = import_one("OneDB/<instanceIdHash>", "/tmp/lama", secret)   # ONE -> lama
    print(report.path, report.counts, report.problems)
    export_one("/tmp/lama", "/tmp/OneDB", secret)                         # lama -> ONE

``import_one`` reads ``objects/``, ``vheads/`` and ``private/`` of a ONE instance (objects.md
§5, §7.4) into a new lama instance ``<lama_dir>/<instanceIdHash>/``:

* every file of ``objects/`` is re-hashed; a file whose content does not hash to its name is
  reported and not imported. Microdata (objects, ID objects, version nodes) is stored verbatim
  (objects.md §9.23) after the store's own hash and parse checks; other files are BLOBs or
  CLOBs - what references them (``data-type="blob"``/``"clob"``) decides, an unreferenced file
  is a CLOB if it is UTF-8 text and a BLOB otherwise;
* the app's recipes (``Recipe`` objects: those ``Instance.recipe`` names before the objects,
  the others after them, with a retry of what was refused for its unknown type) are
  registered, listed in ``instance.json`` and registered again by ``Instance.open``; an
  invalid or conflicting recipe is reported, its Recipe object imported all the same;
* ``vheads/`` become version heads once the head node, its data and its ID check out;
* ``rmaps/`` are not copied: lama's store builds its reverse maps itself (the built-in ones,
  the ones in the Instance's ``enabledReverseMapTypes*`` and lama's own);
* the keychain is unlocked with the instance's secret and every secret key pair is checked
  against its Keys object and re-encrypted into a new lama keychain (same secret, new salt and
  master key).

The identity of the new lama instance is the ONE instance's: the Instance whose Keys have
secrets in ``private/`` (connections.md §1.1 "local instance"), its owner Person and both key
sets. Everything that is not taken is listed in :attr:`ImportReport.problems` with its reason.
Fatal (nothing is left behind in ``lama_dir``): the ONE directory is missing or not a ONE
instance (``NotFoundError LAMA-MIGRATE-NODIR``, ``StoreError LAMA-MIGRATE-NOTONE``), there is
no keychain (``KeychainError LAMA-MIGRATE-NOKEYCHAIN``), the secret is wrong (``KeychainError
CYENC-SYMDEC``, checked before anything is written), no local identity can be found
(``KeychainError LAMA-MIGRATE-NOIDENTITY``), the lama instance exists already
(``StoreError LAMA-INSTANCE-EXISTS``).

``export_one`` writes a lama instance in that layout (``<one_dir>/<instanceIdHash>/``): every
object, ID object, BLOB and CLOB under its hash, every version head, the reverse maps the
reference would have written (objects.md §5.3), and the keychain encrypted as ONE does (§7.4)
with the instance's secret. The target instance directory must not exist (or be empty).

Both take ``progress=callable(phase, done, total)``; the CLI draws a rich progress bar with it.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lama._core import Store, core
from lama.errors import (
    ConflictError,
    HashMismatchError,
    KeychainError,
    LamaError,
    NotFoundError,
    StoreError,
)
from lama.identity.keychain import Keychain
from lama.identity.layout import (
    INFO_FILE,
    INFO_FORMAT,
    PRIVATE_DIR,
    STORE_DIR,
    _info_from,
    _write_info,
    calculate_instance_id_hash,
    check_base_dir,
)
from lama.migrate import onefs
from lama.objects import recipes as _recipes

__all__ = [
    "Problem",
    "ImportReport",
    "ExportReport",
    "Progress",
    "import_one",
    "export_one",
]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: phases ``"objects"``, ``"app_objects"`` (objects of
recipes found in the store, stored after the objects pass), ``"blobs"``, ``"heads"``, ``"keys"``
(import) and ``"objects"``, ``"heads"``, ``"rmaps"``, ``"keys"`` (export)."""

_BATCH = 1000  # objects per store transaction
_READERS = 8  # threads reading object files
_PER_READ = 50  # files per reading task
_CHUNK = 1 << 20
_MICRODATA_MAX = 64 << 20  # a microdata file above this is taken as a BLOB/CLOB candidate
_VERSION_NODES = ("VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge")
_GRANT_ORDER = {"Group": 1, "Access": 2, "IdAccess": 3}  # store-format.md "access index"


@dataclass(frozen=True)
class Problem:
    """Something not taken: ``what`` (a path or hash), ``reason``."""

    what: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what}: {self.reason}"


@dataclass
class ImportReport:
    """What :func:`import_one` did. ``path`` is the new lama instance directory."""

    source: str
    path: str
    person_id: str
    instance_id: str
    email: str
    instance_name: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # problems as {"what", "reason"} dicts


@dataclass
class ExportReport:
    """What :func:`export_one` did. ``path`` is the ONE instance directory written."""

    source: str
    path: str
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _noop(phase: str, done: int, total: int) -> None:
    pass


def _check_secret(secret: Any) -> str:
    if not isinstance(secret, str):
        raise TypeError("the instance secret must be a str")
    if not secret:
        raise KeychainError("LAMA-SECRET: the instance secret must not be empty")
    return secret


# --------------------------------------------------------------------------------------------
# reading the ONE store


def _read_text(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _object_path(inst: Path, h: str) -> Path | None:
    """Where ``objects/<h>`` is, flat or in a shard directory of 1-4 hex digits."""
    objects = inst / onefs.OBJECTS
    flat = objects / h
    if flat.is_file():
        return flat
    for n in range(1, 5):
        p = objects / h[:n] / h
        if p.is_file():
            return p
    return None


def _read_checked_microdata(inst: Path, h: str) -> str | None:
    """``objects/<h>`` if it exists, hashes to ``h`` and is UTF-8 text (identity scan only)."""
    p = _object_path(inst, h)
    if p is None:
        return None
    text = _read_text(p)
    if text is None or core.sha256_hex(text) != h:
        return None
    return text


def _current_data(inst: Path, id_hash: str) -> tuple[str, dict[str, Any]] | None:
    """The current version of ``id_hash`` straight from the ONE files: vhead -> node -> data."""
    head = _read_text(inst / onefs.VHEADS / id_hash)
    if head is None or not onefs.is_hash(head.strip()):
        return None
    node_md = _read_checked_microdata(inst, head.strip())
    if node_md is None:
        return None
    try:
        node = core.parse(node_md)
        data_md = _read_checked_microdata(inst, node["data"])
        if data_md is None:
            return None
        obj = core.parse(data_md)
        if core.sha256_hex(core.id_microdata_of(data_md) or "") != id_hash:
            return None
    except (LamaError, KeyError, TypeError):
        return None
    return node["data"], obj


@dataclass
class _Identity:
    person_id: str
    instance_id: str
    email: str
    person_name: str | None
    instance_name: str
    person_keys: str
    instance_keys: str
    enabled: dict[str, Any]
    enabled_ids: dict[str, Any]
    recipes: list[str]


def _find_identity(inst: Path, keychain: Keychain) -> _Identity:
    """The local identity (connections.md §1.1): the Instance whose Keys have secrets in
    ``private/``, owned by a Person whose Keys have secrets too. Prefers the Instance whose
    ID hash names the directory (objects.md §5.1)."""
    complete: dict[str, list[str]] = {}  # owner -> complete Keys hashes
    for entry in sorted((inst / onefs.PRIVATE).iterdir()):
        stem, dot, ext = entry.name.partition(".")
        if ext != "encrypt" or not onefs.is_hash(stem) or not keychain.has_keys(stem):
            continue
        md = _read_checked_microdata(inst, stem)
        if md is None:
            continue
        try:
            obj = core.parse(md)
        except LamaError:
            continue
        if obj.get("$type$") == "Keys":
            complete.setdefault(obj["owner"], []).append(stem)
    candidates = []
    for owner in complete:
        md = _read_checked_microdata(inst, owner)
        if md is None:
            continue
        try:
            type_name, is_id = core.type_of(md)
        except LamaError:
            continue
        if type_name != "Instance" or not is_id:
            continue
        cur = _current_data(inst, owner)
        if cur is None:
            continue
        obj = cur[1]
        person = obj.get("owner")
        if person not in complete:
            continue
        pcur = _current_data(inst, person)
        if pcur is None or pcur[1].get("$type$") != "Person":
            continue
        candidates.append((owner, obj, person, pcur[1]))
    if len(candidates) > 1:
        named = [c for c in candidates if c[0] == inst.name
                 or calculate_instance_id_hash(c[1]["name"], c[3]["email"]) == inst.name]
        if len(named) == 1:
            candidates = named
    if len(candidates) != 1:
        why = "none" if not candidates else f"{len(candidates)} candidates"
        raise KeychainError(
            f"LAMA-MIGRATE-NOIDENTITY: no local identity in {inst} ({why}): an Instance and its "
            "owner Person whose Keys have secret keys in private/ are needed"
        )
    instance_id, iobj, person_id, pobj = candidates[0]
    return _Identity(
        person_id=person_id,
        instance_id=instance_id,
        email=pobj["email"],
        person_name=pobj.get("name"),
        instance_name=iobj["name"],
        person_keys=sorted(complete[person_id])[0],
        instance_keys=sorted(complete[instance_id])[0],
        enabled=dict(iobj.get("enabledReverseMapTypes") or {}),
        enabled_ids=dict(iobj.get("enabledReverseMapTypesForIdObjects") or {}),
        recipes=sorted(iobj.get("recipe") or ()),
    )


def _read_small(path: str | None) -> bytes | OSError | None:
    """The bytes of a file up to ``_MICRODATA_MAX`` (None: larger, or no path), or the error."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size > _MICRODATA_MAX:
                return None
            raw = os.pread(fd, size, 0)
            while len(raw) < size:
                more = os.pread(fd, size - len(raw), len(raw))
                if not more:
                    break
                raw += more
            return raw
        finally:
            os.close(fd)
    except OSError as e:
        return e


def _read_many(paths: list[str | None]) -> list[bytes | OSError | None]:
    return [_read_small(p) for p in paths]


def _is_utf8_file(path: str) -> bool:
    dec = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                dec.decode(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


class _Importer:
    def __init__(self, inst: Path, store: Store, report: ImportReport, progress: Progress) -> None:
        self.inst = inst
        self.store = store
        self.report = report
        self.progress = progress
        self.counts = report.counts
        for k in ("objects", "id_objects", "version_nodes", "blobs", "clobs", "heads", "keys",
                  "recipes", "rmaps_rebuilt"):
            self.counts[k] = 0
        self.blob_refs: set[str] = set()
        self.clob_refs: set[str] = set()
        self.data_files: dict[str, str] = {}  # hash -> path of non-microdata files
        self.failed_md: dict[str, tuple[str, str]] = {}  # hash -> (path, parse error)
        self.types: dict[str, str] = {}  # hash -> type of stored microdata
        self.batch: list[tuple[str, str, str]] = []  # microdata read, not stored yet
        self.recipe_objs: dict[str, str] = {}  # hash -> microdata of the Recipe objects seen
        self.recipe_first: dict[str, str] = {}  # name -> the Recipe object tried first for it
        self.recipes_loaded: list[str] = []  # Recipe objects registered (or known already)
        self.known_types = set(core.recipe_names())
        self.unknown: dict[str, str] = {}  # hash -> path: microdata of a type without a recipe

    def problem(self, what: Any, reason: str) -> None:
        self.report.problems.append(Problem(str(what), reason))

    def rel(self, p: str | Path) -> str:
        """``p`` relative to the ONE instance directory (``objects/...``) for the report."""
        rel = os.path.relpath(p, self.inst)
        return str(p) if rel.startswith("..") else rel

    # --- objects ------------------------------------------------------------------------

    def objects(self) -> None:
        files = list(onefs.iter_object_files(self.inst / onefs.OBJECTS))
        total = len(files)
        # the files are read by a few threads, one slice at a time (pread releases the GIL: a
        # cold store is bound by the disk's latency per small file, not by the CPU)
        with ThreadPoolExecutor(_READERS) as pool:
            for start in range(0, total, _BATCH):
                part = files[start:start + _BATCH]
                wanted = [path if bad is None else None for path, bad in part]
                slices = [wanted[i:i + _PER_READ] for i in range(0, len(wanted), _PER_READ)]
                got_all = [g for got in pool.map(_read_many, slices) for g in got]
                for (path, bad), got in zip(part, got_all):
                    if bad is not None:
                        self.problem(self.rel(path), bad)
                    else:
                        self._classify(path, got)
                self._flush()
                self.progress("objects", start + len(part), total)
        self.progress("objects", total, total)

    def _classify(self, path: str, got: bytes | OSError | None) -> None:
        h = os.path.basename(path)
        if isinstance(got, OSError):
            self.problem(self.rel(path), f"unreadable: {got.strerror or got}")
            return
        if got is None or not got.startswith(b"<div "):
            self.data_files[h] = path  # not microdata: a BLOB or a CLOB (blobs())
            return
        raw = got
        try:
            text = raw.decode("utf-8")
            type_name, _ = core.type_of(text)
        except (UnicodeDecodeError, LamaError):
            self.data_files[h] = path
            return
        if core.sha256_hex(raw) != h:
            self.problem(self.rel(path), "its content does not hash to its name (not imported)")
            return
        if text.startswith('<div itemscope itemtype="//refin.io/Recipe">'):
            self.recipe_objs[h] = text  # loaded as a recipe after the objects (store_recipes())
        if type_name not in self.known_types:
            # no recipe yet: tried once the store's Recipe objects are loaded (store_recipes()),
            # not put now (a refused item fails its whole batch)
            self.unknown[h] = path
            return
        # BLOB/CLOB references decide how the files that are not microdata are stored
        if 'data-type="blob"' in text or 'data-type="clob"' in text:
            try:
                for _, kind, ref in core.references(text):
                    if kind == "blob":
                        self.blob_refs.add(ref)
                    elif kind == "clob":
                        self.clob_refs.add(ref)
            except LamaError:
                pass  # the store's parse reports it
        self.batch.append((text, h, path))

    def _flush(self) -> None:
        if self.batch:
            self._put(self.batch)
        self.batch = []

    def _put(self, items: list[tuple[str, str, str]]) -> None:
        """One transaction for ``items``; one bad item fails it all (nothing written), so a
        failed batch is halved until the bad items stand alone (log2(batch) transactions per
        bad item, not one per item)."""
        try:
            results = self.store.put_microdata([(t, h) for t, h, _ in items])
        except LamaError as e:
            if len(items) == 1:
                _, h, path = items[0]
                self.failed_md[h] = (path, str(e))
                return
            mid = len(items) // 2
            self._put(items[:mid])
            self._put(items[mid:])
            return
        for (text, _, _), res in zip(items, results):
            self._count(text, res)

    def _count(self, text: str, res: tuple[str, str, str | None]) -> None:
        h = res[0]
        type_name, is_id = core.type_of(text)
        self.types[h] = type_name
        if is_id:
            self.counts["id_objects"] += 1
        elif type_name in _VERSION_NODES:
            self.counts["version_nodes"] += 1
        else:
            self.counts["objects"] += 1

    # --- the instance's recipes (objects.md §3, §7.3) -------------------------------------

    def _load_recipe(self, h: str, text: str, why: str) -> bool:
        """Register the Recipe object ``h``; a problem entry if it is invalid or another recipe
        has its name (the object itself is imported all the same). True if it is usable."""
        try:
            obj = core.parse(text)
            name = obj["name"]
        except (LamaError, KeyError, TypeError) as e:
            self.problem(f"objects/{h}", f"a Recipe object that does not parse ({e}): not loaded")
            return False
        first = self.recipe_first.setdefault(name, h)
        if first != h:  # the first one decides; the rest are other versions of it
            self.problem(f"objects/{h}", f"another version of the recipe {name!r} than {first} "
                         f"({why}): not loaded")
            return False
        try:
            new = _recipes.load(obj)
        except LamaError as e:
            what = ("conflicts with lama's recipe of that name" if e.code == "OR-ADDR1"
                    else "is not a valid recipe")
            self.problem(f"objects/{h}", f"the recipe {name!r} {what} ({e}): not loaded; "
                         f"objects of type {name!r} are read with lama's recipe, if any")
            return False
        self.recipes_loaded.append(h)
        return new

    def instance_recipes(self, ident: _Identity) -> None:
        """The recipes the ONE instance loads at start (``Instance.recipe``, objects.md §7.3 step
        4), before any object: objects of these types and maps over them need them."""
        for h in ident.recipes:
            text = _read_checked_microdata(self.inst, h)
            if text is None:
                self.problem(f"objects/{h}", "a recipe of Instance.recipe is missing or damaged "
                             "(not loaded)")
                continue
            self._load_recipe(h, text, "Instance.recipe")
        self.known_types = set(core.recipe_names())

    def store_recipes(self) -> None:
        """Recipe objects in the store that ``Instance.recipe`` does not name (registered later
        by the app): the version a version head names first, then the others by hash. Then the
        microdata of types that had no recipe in the objects pass is stored; what still has none
        is refused by the store (``OR-ET1``), one by one."""
        heads = {}
        for h, text in self.recipe_objs.items():
            if h in self.recipe_first.values():
                continue
            id_md = core.id_microdata_of(text)
            cur = _current_data(self.inst, core.sha256_hex(id_md)) if id_md else None
            heads[h] = cur is not None and cur[0] == h
        for h in sorted(heads, key=lambda x: (not heads[x], x)):
            self._load_recipe(h, self.recipe_objs[h], "a version head" if heads[h]
                              else "no version head")
        self.counts["recipes"] = len(self.recipes_loaded)
        self.known_types = set(core.recipe_names())
        retry = sorted(self.unknown.items())
        self.unknown = {}
        for start in range(0, len(retry), _BATCH):
            part = retry[start:start + _BATCH]
            for (h, path), got in zip(part, _read_many([p for _, p in part])):
                self._classify(path, got)
            self._flush()
            self.progress("app_objects", start + len(part), len(retry))
        for h, path in sorted(self.unknown.items()):  # still no recipe: the store says why
            got = _read_small(path)
            text = got.decode("utf-8") if isinstance(got, bytes) else ""
            self._put([(text, h, path)])

    # --- BLOBs and CLOBs ----------------------------------------------------------------

    def blobs(self) -> None:
        # microdata-looking files that did not parse may be CLOBs/BLOBs a message refers to
        for h, (path, err) in sorted(self.failed_md.items()):
            if h in self.blob_refs or h in self.clob_refs:
                self.data_files[h] = path
            else:
                self.problem(self.rel(path), f"not imported: {err}")
        items = sorted(self.data_files.items())
        for i, (h, path) in enumerate(items):
            if h in self.blob_refs:
                clob = False
            elif h in self.clob_refs:
                clob = True
            else:
                # nothing says what it is (objects.md §2.3: one namespace); text -> CLOB
                clob = _is_utf8_file(path) and os.path.getsize(path) > 0
            self._store_data(h, path, clob)
            if i % 64 == 0:
                self.progress("blobs", i, len(items))
        self.progress("blobs", len(items), len(items))

    def _store_data(self, h: str, path: str, clob: bool) -> None:
        writer = self.store.blob_writer(clob=clob)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    writer.write(chunk)
            writer.finish(h)
        except HashMismatchError:
            self.problem(self.rel(path), "its content does not hash to its name (not imported)")
            return
        except OSError as e:
            writer.abort()
            self.problem(self.rel(path), f"unreadable: {getattr(e, 'strerror', None) or e}")
            return
        except LamaError as e:
            writer.abort()
            what = "CLOB" if clob else "BLOB"
            self.problem(self.rel(path), f"not imported as a {what}: {e}")
            return
        self.counts["clobs" if clob else "blobs"] += 1

    # --- version heads ------------------------------------------------------------------

    def heads(self) -> None:
        vdir = self.inst / onefs.VHEADS
        entries = sorted(vdir.iterdir()) if vdir.is_dir() else []
        good: list[tuple[int, str, str]] = []
        for path in entries:
            name = path.name
            if not onefs.is_hash(name) or not path.is_file():
                self.problem(self.rel(path), "not a version head file (name is not a hash)")
                continue
            text = _read_text(path)
            head = text.strip() if text is not None else ""
            if not onefs.is_hash(head):
                self.problem(self.rel(path), "its content is not the hash of a version node")
                continue
            why = self._check_head(name, head)
            if why is not None:
                self.problem(self.rel(path), why)
                continue
            type_name = self.types.get(name, "")
            good.append((_GRANT_ORDER.get(type_name, 0), name, head))
        # groups before the grants that name them, Access before IdAccess (store-format.md
        # "access index"); grants last so that every granted ID has its head already
        good.sort()
        for start in range(0, len(good), _BATCH):
            chunk = good[start:start + _BATCH]
            self._write_heads(chunk)
            self.progress("heads", start + len(chunk), len(good))

    def _check_head(self, id_hash: str, head: str) -> str | None:
        s = self.store
        if s.kind(id_hash) != "id":
            return "its ID object was not imported"
        if s.kind(head) != "object":
            return f"its head node {head} was not imported"
        try:
            node = s.get_object(head)
            if node.get("$type$") not in _VERSION_NODES:
                return f"its head {head} is not a version node"
            data = node["data"]
            md = s.get(data)
        except NotFoundError:
            return f"the data of its head node {head} was not imported"
        except (LamaError, KeyError) as e:
            return f"its head node {head} is unusable: {e}"
        if core.sha256_hex(core.id_microdata_of(md) or "") != id_hash:
            return f"the data of its head node {head} is not a version of this ID"
        return None

    def _write_heads(self, chunk: list[tuple[int, str, str]]) -> None:
        try:
            self.store.write_batch([], [(i, self.store.get_head(i), h) for _, i, h in chunk])
            self.counts["heads"] += len(chunk)
            return
        except (StoreError, ConflictError):
            pass
        for _, i, h in chunk:  # a refused grant (LAMA-GRANT) fails its batch: one by one
            try:
                self.store.write_batch([], [(i, self.store.get_head(i), h)])
                self.counts["heads"] += 1
            except (StoreError, ConflictError) as e:
                self.problem(f"vheads/{i}", f"not imported: {e}")

    # --- reverse maps -------------------------------------------------------------------

    def rmaps(self, ident: _Identity) -> None:
        for enabled, id_objects in ((ident.enabled, False), (ident.enabled_ids, True)):
            for type_name, props in enabled.items():
                plist = None if (not props or "*" in props) else sorted(props)
                try:
                    self.store.enable_reverse_maps(type_name, plist, id_objects)
                except LamaError as e:
                    self.problem(f"Instance.enabledReverseMapTypes[{type_name}]", str(e))
        rdir = self.inst / onefs.RMAPS
        if rdir.is_dir():
            self.counts["rmaps_rebuilt"] = sum(1 for _ in rdir.iterdir())

    # --- keys ---------------------------------------------------------------------------

    def keys(self, one_kc: Keychain, lama_kc: Keychain) -> None:
        pdir = self.inst / onefs.PRIVATE
        names = sorted(p.name for p in pdir.iterdir())
        stems = sorted({n.partition(".")[0] for n in names
                        if n.endswith((".encrypt", ".sign")) and onefs.is_hash(n.partition(".")[0])})
        for n in names:
            stem, _, ext = n.partition(".")
            if n in ("keychain_salt", "keychain_masterkey"):
                continue
            if not (onefs.is_hash(stem) and ext in ("encrypt", "sign")):
                self.problem(f"private/{n}", "not a keychain file (not taken)")
        for i, h in enumerate(stems):
            if not one_kc.has_keys(h):
                self.problem(f"private/{h}", "only one of .encrypt/.sign exists (not taken)")
                continue
            try:
                keys_obj = self.store.get_object(h)
            except NotFoundError:
                self.problem(f"private/{h}", "secret keys of a Keys object that was not imported")
                continue
            if keys_obj.get("$type$") != "Keys":
                self.problem(f"private/{h}", "secret keys of an object that is not a Keys object")
                continue
            try:
                secret = one_kc.load_keys(
                    h, bytes.fromhex(keys_obj["publicKey"]), bytes.fromhex(keys_obj["publicSignKey"])
                )
            except (LamaError, ValueError, KeyError) as e:
                self.problem(f"private/{h}", f"not taken: {e}")
                continue
            lama_kc.store_keys(h, secret)
            self.counts["keys"] += 1
            self.progress("keys", i + 1, len(stems))


def import_one(
    one_dir: str | os.PathLike[str],
    lama_dir: str | os.PathLike[str],
    secret: str,
    *,
    progress: Progress | None = None,
) -> ImportReport:
    """Import the ONE instance ``one_dir`` (the instance directory or its base directory) into
    a new lama instance below ``lama_dir``; returns the :class:`ImportReport`. See the module
    docs for what is taken, what is reported and the fatal errors."""
    secret = _check_secret(secret)
    progress = progress or _noop
    inst = onefs.find_one_instance(one_dir)
    if not (inst / onefs.PRIVATE).is_dir():
        raise KeychainError(f"LAMA-MIGRATE-NOKEYCHAIN: {inst} has no private/ keychain directory")
    one_kc = Keychain(inst / onefs.PRIVATE)
    if not one_kc.exists():
        raise KeychainError(
            f"LAMA-MIGRATE-NOKEYCHAIN: no keychain (keychain_salt, keychain_masterkey) in "
            f"{inst / onefs.PRIVATE}"
        )
    one_kc.unlock(secret)  # a wrong secret: CYENC-SYMDEC, before anything is written
    try:
        ident = _find_identity(inst, one_kc)
        base = check_base_dir(lama_dir)
        path = base / calculate_instance_id_hash(ident.instance_name, ident.email)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(
                f"LAMA-INSTANCE-EXISTS: the instance {ident.instance_name!r} of {ident.email!r} "
                f"exists already in {path} (nothing was imported)"
            )
        report = ImportReport(
            source=str(inst), path=str(path), person_id=ident.person_id,
            instance_id=ident.instance_id, email=ident.email, instance_name=ident.instance_name,
        )
        created = _first_missing(path)  # removed again if the import fails
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"LAMA-DIR: cannot create {path}: {e.strerror}") from None
        store = None
        lama_kc = Keychain(path / PRIVATE_DIR)
        try:
            lama_kc.create(secret)
            # not durable while it is filled (no fsync per batch): synced once at the end,
            # before instance.json makes it an instance; a crash before leaves no instance
            store = core.Store(str(path / STORE_DIR), durable=False)
            imp = _Importer(inst, store, report, progress)
            # maps first: the store writes their entries as objects arrive (enabling a map
            # later costs a pass over every stored object per type)
            imp.instance_recipes(ident)
            imp.rmaps(ident)
            _enable_lama_maps(store)
            imp.objects()
            imp.store_recipes()
            imp.blobs()
            imp.heads()
            imp.keys(one_kc, lama_kc)
            data = {
                "format": INFO_FORMAT,
                "email": ident.email,
                "person_name": ident.person_name,
                "instance_name": ident.instance_name,
                "person_id": ident.person_id,
                "instance_id": ident.instance_id,
                "person_keys": ident.person_keys,
                "instance_keys": ident.instance_keys,
                # loaded again by Instance.open (lama.objects.recipes.load_stored)
                "recipes": sorted(imp.recipes_loaded),
            }
            _check_usable(store, lama_kc, ident)
            store.sync()
            _info_from(path, data, store)  # the Keys objects are there and fit
            _write_info(path, data)
        except BaseException:
            if store is not None:
                store.close()
                store = None
            _remove_new(path, created)
            raise
        finally:
            if store is not None:
                store.close()
            lama_kc.lock()
    finally:
        one_kc.lock()
    return report


def _first_missing(path: Path) -> Path | None:
    """The topmost directory of ``path`` that does not exist yet (None if it exists)."""
    top = None
    p = path
    while not p.exists():
        top = p
        if p.parent == p:
            break
        p = p.parent
    return top


def _remove_new(path: Path, created: Path | None) -> None:
    """Undo a failed import or export: the directories it created, or (if ``path`` existed
    empty) what it wrote into ``path``."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
    elif path.is_dir():
        for p in path.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _check_usable(store: Store, kc: Keychain, ident: _Identity) -> None:
    """The imported identity must open as a lama instance: both heads and both key sets."""
    for what, id_hash, keys in (("Person", ident.person_id, ident.person_keys),
                                ("Instance", ident.instance_id, ident.instance_keys)):
        if store.get_head(id_hash) is None:
            raise KeychainError(
                f"LAMA-MIGRATE-NOIDENTITY: the {what} {id_hash} has no version head after the "
                "import (nothing usable was imported)"
            )
        if not kc.has_keys(keys):
            raise KeychainError(
                f"LAMA-MIGRATE-NOIDENTITY: the secret keys of the {what} (Keys {keys}) could not "
                "be imported"
            )


def _enable_lama_maps(store: Store) -> None:
    from lama.identity.instance import _enable_certificate_maps

    _enable_certificate_maps(store)


# --------------------------------------------------------------------------------------------
# export


def _enabled_maps(store: Store, instance_id: str) -> tuple[dict[str, set[str] | None], dict[str, set[str] | None]]:
    """Reverse maps ONE keeps for this instance (objects.md §5.3): the built-in ones plus the
    Instance's ``enabledReverseMapTypes`` / ``...ForIdObjects``. ``None`` = all itemprops."""
    objs: dict[str, set[str] | None] = {t: None for t in onefs.BUILTIN_OBJECT_MAPS}
    ids: dict[str, set[str] | None] = {t: None for t in onefs.BUILTIN_ID_MAPS}
    from lama.objects import versions

    inst_obj = versions.current(store, instance_id)
    for src, dst in ((inst_obj.get("enabledReverseMapTypes"), objs),
                     (inst_obj.get("enabledReverseMapTypesForIdObjects"), ids)):
        for t, props in (src or {}).items():
            if t in dst and dst[t] is None:
                continue
            p = set(props or ())
            dst[t] = None if "*" in p else (dst.get(t) or set()) | p
    return objs, ids


def _map_entries(md: str, props: set[str] | None) -> list[str]:
    """Targets of the references in ``md`` whose path has an enabled itemprop (§5.3)."""
    out = []
    for path, _, ref in core.references(md):
        if props is None or any(seg in props for seg in path.split(".")):
            out.append(ref)
    return out


def export_one(
    lama_dir: str | os.PathLike[str],
    one_dir: str | os.PathLike[str],
    secret: str,
    *,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the lama instance ``lama_dir`` as a ONE instance ``<one_dir>/<instanceIdHash>/``
    (objects.md §5, keychain §7.4, encrypted with ``secret``). ``StoreError
    LAMA-MIGRATE-EXISTS`` if that directory exists and is not empty; on any error the
    directory is removed again."""
    from lama.identity.instance import Instance

    secret = _check_secret(secret)
    progress = progress or _noop
    inst = Instance.open(lama_dir, secret)
    try:
        base = Path(one_dir)
        check_base_dir(base)
        target = base / calculate_instance_id_hash(inst.instance_name, inst.email)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise StoreError(f"LAMA-MIGRATE-EXISTS: {target} exists and is not empty")
        report = ExportReport(source=inst.path, path=str(target))
        created = _first_missing(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"LAMA-DIR: cannot create {target}: {e.strerror}") from None
        try:
            _export(inst, target, secret, report, progress)
        except BaseException:
            _remove_new(target, created)
            raise
        return report
    finally:
        inst.close()


def _export(inst: Any, target: Path, secret: str, report: ExportReport, progress: Progress) -> None:
    store: Store = inst.store
    for d in onefs.SUBDIRS:
        (target / d).mkdir(mode=0o700 if d == onefs.PRIVATE else 0o755, exist_ok=True)
    objects = target / onefs.OBJECTS
    counts = report.counts
    for k in ("objects", "id_objects", "version_nodes", "blobs", "clobs", "heads", "rmaps", "keys"):
        counts[k] = 0
    obj_maps, id_maps = _enabled_maps(store, inst.instance_id)
    rmaps: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()

    def add(name: str, entry: str) -> None:
        # objects.md §5.3: an entry is appended only once per map file
        if (name, entry) not in seen:
            seen.add((name, entry))
            rmaps.setdefault(name, []).append(entry)

    hashes = store.hashes()
    ids: list[str] = []
    for i, h in enumerate(hashes):
        kind = store.kind(h)
        if kind in ("object", "id"):
            md = store.get(h)
            onefs.write_exclusive(objects / h, md.encode("utf-8"))
            type_name, _ = core.type_of(md)
            if kind == "id":
                ids.append(h)
                counts["id_objects"] += 1
                if type_name in id_maps:
                    for ref in _map_entries(md, id_maps[type_name]):
                        add(f"{ref}.IdObject.{type_name}", h)
            else:
                counts["version_nodes" if type_name in _VERSION_NODES else "objects"] += 1
                if type_name in obj_maps:
                    for ref in _map_entries(md, obj_maps[type_name]):
                        add(f"{ref}.Object.{type_name}", h)
        elif kind in ("blob", "clob"):
            fd = os.open(objects / h, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for chunk in store.read_blob_chunks(h):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            counts["blobs" if kind == "blob" else "clobs"] += 1
        else:
            report.problems.append(Problem(h, f"unknown kind {kind!r} in the store (not exported)"))
        if i % 256 == 0:
            progress("objects", i, len(hashes))
    progress("objects", len(hashes), len(hashes))
    vheads = target / onefs.VHEADS
    for i, id_hash in enumerate(ids):
        head = store.get_head(id_hash)
        if head is not None:
            # objects.md §9.13: 64 hex digits, no trailing newline
            onefs.write_exclusive(vheads / id_hash, head.encode("ascii"))
            counts["heads"] += 1
        if i % 256 == 0:
            progress("heads", i, len(ids))
    progress("heads", len(ids), len(ids))
    rdir = target / onefs.RMAPS
    for i, (name, entries) in enumerate(sorted(rmaps.items())):
        onefs.write_exclusive(rdir / name, "".join(e + "\n" for e in entries).encode("ascii"))
        counts["rmaps"] += 1
        if i % 256 == 0:
            progress("rmaps", i, len(rmaps))
    progress("rmaps", len(rmaps), len(rmaps))
    # the keychain as ONE writes it (§7.4): new salt and master key, the same secret
    one_kc = Keychain(target / onefs.PRIVATE)
    one_kc.create(secret)
    try:
        lama_private = Path(inst.path) / PRIVATE_DIR
        stems = sorted(p.name[: -len(".encrypt")] for p in lama_private.glob("*.encrypt")
                       if onefs.is_hash(p.name[: -len(".encrypt")]))
        for i, h in enumerate(stems):
            if not inst.keychain.has_keys(h):
                report.problems.append(Problem(f"private/{h}", "incomplete key files (not exported)"))
                continue
            try:
                keys = inst.keychain.load_keys(h)
            except LamaError as e:
                report.problems.append(Problem(f"private/{h}", f"not exported: {e}"))
                continue
            one_kc.store_keys(h, keys)
            counts["keys"] += 1
            progress("keys", i + 1, len(stems))
    finally:
        one_kc.lock()
