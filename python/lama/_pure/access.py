"""The access index of the pure core (docs/chum-session.md §1, docs/store-format.md "access
index"; objects.md §6, chum.md §4.2, §5.1) — the same bytes and results as the Rust core's
``store/access.rs``.

Grants are the versioned ``Access``, ``IdAccess`` and ``Group`` objects; only the data of each
one's head counts.  The index is updated in the write transaction that moves a head
(``Store.write_batch``):

* ``agrants``: grant ID → kind byte ‖ target (Access/IdAccess) ‖ sorted principals;
* ``amembers``: person ‖ group → sequence number of joining;
* ``anodes``: granted ID → IdAccess grant ID (marker); granted ID ‖ node → seq ‖ pos ‖ flag;
* ``aseq``: granted ID ‖ seq ‖ pos → node (non-merge nodes, one range scan per ID for "since S");
* ``aroots``: principal ‖ seq ‖ idx → ``u``/``v``/``i`` root (one range scan per principal);
* ``arefs``: principal ‖ root hash → seq ‖ idx ‖ count (a root granted twice stays until both
  grants are revoked);
* ``aids``: principal ‖ granted ID → seq ‖ idx of its ``i`` root: the version-node roots of a
  granted ID are its ``aseq`` entries, from the later of the grant's and the node's seq;
* ``peers``: per-peer high-water marks.

Group grants are honoured (objects.md §6.2 item 4 describes the reference ignoring them).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, cast

import lmdb

from ..errors import LamaError, StoreError
from .microdata import id_microdata_of, js_utf8, references, type_of

META_ACCESS = b"access"

G_ACCESS = ord("A")
G_IDACCESS = ord("I")
G_GROUP = ord("G")
_GRANT_TYPES = {"Access": G_ACCESS, "IdAccess": G_IDACCESS, "Group": G_GROUP}
_TYPE_OF_GRANT = {G_ACCESS: "Access", G_IDACCESS: "IdAccess", G_GROUP: "Group"}
N_NODE = ord("N")
N_MERGE = ord("M")
K_OBJECT = 0x4F
K_ID = 0x49
VERSION_NODE_TYPES = frozenset({"VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge"})

# root kinds: stored byte <-> name (chum.md §4.2)
_KIND_BYTE = {"unversioned": ord("u"), "versioned": ord("v"), "id": ord("i"), "version_node": ord("n")}
_KIND_NAME = {v: k for k, v in _KIND_BYTE.items()}

# A root: (kind, hash raw, id raw | None, type name)
Root = tuple[str, bytes, "bytes | None", str]
# A grant: (kind byte, target raw | None, sorted principals)
Grant = tuple[int, "bytes | None", tuple[bytes, ...]]


def _corrupt(msg: str) -> StoreError:
    return StoreError(msg, "LAMA-CORRUPT")


def _bad_grant(msg: str) -> StoreError:
    return StoreError(msg, "LAMA-GRANT")


def encode_root(r: Root) -> bytes:
    kind, h, idh, t = r
    return h + bytes((_KIND_BYTE[kind],)) + (idh or b"") + t.encode("utf-8")


def decode_root(v: bytes) -> Root | None:
    if len(v) < 33 or v[32] not in _KIND_NAME:
        return None
    kind = _KIND_NAME[v[32]]
    if kind in ("versioned", "version_node"):
        if len(v) < 65:
            return None
        idh: bytes | None = bytes(v[33:65])
        rest = v[65:]
    else:
        idh, rest = None, v[33:]
    try:
        t = bytes(rest).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not t:
        return None
    return (kind, bytes(v[:32]), idh, t)


def encode_grant(g: Grant) -> bytes:
    kind, target, principals = g
    return bytes((kind,)) + (target or b"") + b"".join(principals)


def decode_grant(v: bytes) -> Grant | None:
    if not v:
        return None
    kind = v[0]
    if kind in (G_ACCESS, G_IDACCESS):
        if len(v) < 33:
            return None
        target: bytes | None = bytes(v[1:33])
        rest = v[33:]
    elif kind == G_GROUP:
        target, rest = None, v[1:]
    else:
        return None
    if len(rest) % 32:
        return None
    ps = tuple(bytes(rest[i:i + 32]) for i in range(0, len(rest), 32))
    if not ps or any(ps[i] >= ps[i + 1] for i in range(len(ps) - 1)):
        return None
    return (kind, target, ps)


def _text_of(shared: Any, txn: lmdb.Transaction, h: bytes, want: int) -> str | None:
    v = txn.get(h, db=shared.objects)
    if v is None or not v or v[0] != want:
        return None
    try:
        return bytes(v[1:]).decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(f"entry {h.hex()} is not UTF-8") from None


# The start of every ID object's entry (kind byte + microdata, objects.md §1.1, §2.2) up to the
# type name, and the grant types after it.  A byte comparison, since it runs for every head
# move: an ID hash is the hash of the canonical ID microdata, so a real grant's starts so.
_ID_HEADS = tuple(
    (b'I<div data-id-object="true" itemscope itemtype="//refin.io/' + t.encode() + b'">', k)
    for t, k in _GRANT_TYPES.items())
_ID_HEAD = b'I<div data-id-object="true" itemscope itemtype="//refin.io/'


def _grant_kind_of(shared: Any, txn: lmdb.Transaction, id_raw: bytes) -> int | None:
    v = cast("bytes | None", txn.get(id_raw, db=shared.objects))
    if v is None or not v.startswith(_ID_HEAD):
        return None
    for head, kind in _ID_HEADS:
        if v.startswith(head):
            return kind
    return None


def _id_hash_of(text: str) -> bytes | None:
    id_text = id_microdata_of(text)
    return None if id_text is None else hashlib.sha256(js_utf8(id_text)).digest()


def _node_data(shared: Any, txn: lmdb.Transaction, node: bytes) -> bytes | None:
    text = _text_of(shared, txn, node, K_OBJECT)
    if text is None:
        return None
    for path, kind, h in references(text):
        if kind == "obj" and path == "data":
            return bytes.fromhex(h)
    return None


def parse_grant(shared: Any, txn: lmdb.Transaction, kind: int, id_raw: bytes,
                head: bytes) -> Grant | None:
    """The grant of version ``head`` of the grant ID ``id_raw`` (see access.rs parse_grant)."""
    want = _TYPE_OF_GRANT[kind]
    idx = id_raw.hex()
    data = _node_data(shared, txn, head)
    if data is None:
        raise _bad_grant(f"the head {head.hex()} of the {want} {idx} is not a stored version node")
    text = _text_of(shared, txn, data, K_OBJECT)
    if text is None:
        raise _bad_grant(f"the version {data.hex()} of the {want} {idx} is not a stored object")
    t = type_of(text)[0]
    if t != want or _id_hash_of(text) != id_raw:
        raise _bad_grant(f"the version {data.hex()} of the {want} {idx} is a {t} of another ID")
    target: bytes | None = None
    principals: set[bytes] = set()
    for path, _k, h in references(text):
        top = path.split(".", 1)[0]
        if (kind, top) in ((G_ACCESS, "object"), (G_IDACCESS, "id")):
            target = bytes.fromhex(h)
        elif top == "person" or (top == "group" and kind != G_GROUP):
            principals.add(bytes.fromhex(h))
    if not principals:
        return None
    if target is not None:
        wk = K_OBJECT if kind == G_ACCESS else K_ID
        if _text_of(shared, txn, target, wk) is None:
            what = "ONE object" if kind == G_ACCESS else "ID object"
            raise _bad_grant(f"the {want} {idx} grants {target.hex()}, which is not a stored {what}")
        if kind == G_ACCESS:
            # the root needs the target's recipe (see access.rs)
            _object_root(shared, txn, target)
    return (kind, target, tuple(sorted(principals)))


def _object_root(shared: Any, txn: lmdb.Transaction, h: bytes) -> Root:
    text = _text_of(shared, txn, h, K_OBJECT)
    if text is None:
        raise _corrupt(f"object {h.hex()} is gone")
    t = type_of(text)[0]
    idh = _id_hash_of(text)
    return ("versioned" if idh is not None else "unversioned", h, idh, t)


def _id_type(shared: Any, txn: lmdb.Transaction, x: bytes) -> str:
    text = _text_of(shared, txn, x, K_ID)
    if text is None:
        raise _corrupt(f"ID object {x.hex()} is gone")
    return type_of(text)[0]


_PREV_TAG = '<a itemprop="prev" data-type="obj">'


def walk_nodes(shared: Any, txn: lmdb.Transaction, head: bytes,
               known: Callable[[bytes], bool]) -> list[tuple[bytes, bool]]:
    """objects.md §4.1 walk from ``head``, pre-order, each node once, not entering known or
    unstored nodes; ``(node, is_merge)`` oldest first (see access.rs walk_nodes)."""
    out: list[tuple[bytes, bool]] = []
    seen: set[bytes] = set()
    stack = [head]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if known(n):
            continue
        text = _text_of(shared, txn, n, K_OBJECT)
        if text is None:
            continue
        t = type_of(text)[0]
        if t not in VERSION_NODE_TYPES:
            raise _corrupt(f"entry {n.hex()} is a {t}, not a version node")
        out.append((n, t == "VersionNodeMerge"))
        if t == "VersionNodeMerge":
            parents = [bytes.fromhex(h) for path, kind, h in references(text)
                       if kind == "obj" and path.startswith("nodes.")]
        else:
            # Edge/Change: the parser accepts only the canonical tag, so a plain search finds
            # the optional `prev` (the full parse of every new node dominated a head move)
            i = text.find(_PREV_TAG)
            parents = [] if i < 0 else [bytes.fromhex(text[i + len(_PREV_TAG):i + len(_PREV_TAG) + 64])]
        stack.extend(reversed(parents))
    out.reverse()
    return out


class Idx:
    """Positions handed out in ``aroots`` for one sequence number, per principal."""

    def __init__(self) -> None:
        self.n: dict[bytes, int] = {}

    def next(self, p: bytes) -> int:
        i = self.n.get(p, 0)
        self.n[p] = i + 1
        return i


def _add_ref(shared: Any, txn: lmdb.Transaction, p: bytes, root: Root, seq: int, idx: Idx) -> None:
    rk = p + root[1]
    v = txn.get(rk, db=shared.arefs)
    if v is not None:
        if len(v) != 16:
            raise _corrupt(f"malformed arefs entry {rk.hex()}")
        count = int.from_bytes(v[12:16], "big")
        value = bytes(v[:12]) + min(count + 1, 0xFFFFFFFF).to_bytes(4, "big")
    else:
        pos = seq.to_bytes(8, "big") + idx.next(p).to_bytes(4, "big")
        txn.put(p + pos, encode_root(root), db=shared.aroots)
        if root[0] == "id":
            txn.put(rk, pos, db=shared.aids)
        value = pos + (1).to_bytes(4, "big")
    txn.put(rk, value, db=shared.arefs)


def _drop_ref(shared: Any, txn: lmdb.Transaction, p: bytes, h: bytes) -> None:
    rk = p + h
    v = txn.get(rk, db=shared.arefs)
    if v is None:
        raise _corrupt(f"the access index lacks arefs entry {rk.hex()}")
    if len(v) != 16:
        raise _corrupt(f"malformed arefs entry {rk.hex()}")
    v = bytes(v)
    count = int.from_bytes(v[12:16], "big")
    if count > 1:
        txn.put(rk, v[:12] + (count - 1).to_bytes(4, "big"), db=shared.arefs)
    else:
        txn.delete(rk, db=shared.arefs)
        txn.delete(p + v[:12], db=shared.aroots)
        txn.delete(rk, db=shared.aids)


def _prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return out
    for k, v in cur:
        k = bytes(k)
        if not k.startswith(prefix):
            break
        out.append((k, bytes(v)))
    return out


def _index_new_nodes(shared: Any, txn: lmdb.Transaction, x: bytes, seq: int) -> list[tuple[bytes, bool]]:
    head = txn.get(x, db=shared.vheads)
    if head is None or len(head) != 32:
        return []
    anodes = shared.anodes
    fresh = walk_nodes(shared, txn, bytes(head), lambda n: txn.get(x + n, db=anodes) is not None)
    aseq = shared.aseq
    for i, (n, merge) in enumerate(fresh):
        pos = seq.to_bytes(8, "big") + i.to_bytes(4, "big")
        txn.put(x + n, pos + bytes((N_MERGE if merge else N_NODE,)), db=anodes)
        if not merge:
            txn.put(x + pos, n, db=aseq)
    return fresh


def _delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> None:
    for k, _v in _prefix(txn, db, prefix):
        txn.delete(k, db=db)


def _apply_grant(shared: Any, txn: lmdb.Transaction, gid: bytes, kind: int, old: Grant | None,
                 new: Grant | None, seq: int, idx: Idx) -> None:
    old_p = set(old[2]) if old else set()
    new_p = set(new[2]) if new else set()
    removed = sorted(old_p - new_p)
    added = sorted(new_p - old_p)
    target = (new or old or (0, None, ()))[1]
    if kind == G_GROUP:
        for p in removed:
            txn.delete(p + gid, db=shared.amembers)
        for p in added:
            txn.put(p + gid, seq.to_bytes(8, "big"), db=shared.amembers)
    elif kind == G_ACCESS:
        assert target is not None
        for p in removed:
            _drop_ref(shared, txn, p, target)
        if added:
            root = _object_root(shared, txn, target)
            for p in added:
                _add_ref(shared, txn, p, root, seq, idx)
    else:
        assert target is not None
        x = target
        for p in removed:
            _drop_ref(shared, txn, p, x)
        if new is None:
            # nobody is granted the ID any more: forget its nodes
            _delete_prefix(txn, shared.anodes, x)
            _delete_prefix(txn, shared.aseq, x)
        else:
            txn.put(x, gid, db=shared.anodes)
            if added:
                _index_new_nodes(shared, txn, x, seq)
                t = _id_type(shared, txn, x)
                for p in added:
                    _add_ref(shared, txn, p, ("id", x, None, t), seq, idx)
    if new is not None:
        txn.put(gid, encode_grant(new), db=shared.agrants)
    else:
        txn.delete(gid, db=shared.agrants)


def _stored_grant(shared: Any, txn: lmdb.Transaction, gid: bytes) -> Grant | None:
    v = txn.get(gid, db=shared.agrants)
    if v is None:
        return None
    g = decode_grant(bytes(v))
    if g is None:
        raise _corrupt(f"malformed agrants entry {gid.hex()}")
    return g


def head_moved(shared: Any, txn: lmdb.Transaction, id_raw: bytes, head: bytes, seq: int) -> None:
    """The write_batch hook: the head of ``id_raw`` moved to ``head`` at sequence ``seq``."""
    idx = Idx()
    kind = _grant_kind_of(shared, txn, id_raw)
    if kind is not None:
        new = parse_grant(shared, txn, kind, id_raw, head)
        old = _stored_grant(shared, txn, id_raw)
        if old != new:
            _apply_grant(shared, txn, id_raw, kind, old, new, seq, idx)
    if txn.get(id_raw, db=shared.anodes) is not None:
        # a granted ID: its new nodes become roots of every principal it is granted to
        _index_new_nodes(shared, txn, id_raw, seq)


def current_grants(shared: Any, txn: lmdb.Transaction) -> list[tuple[bytes, int, Grant]]:
    heads = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=shared.vheads)
             if len(k) == 32 and len(v) == 32]
    out: list[tuple[bytes, int, Grant]] = []
    for id_raw, head in heads:
        try:
            kind = _grant_kind_of(shared, txn, id_raw)
        except LamaError:
            continue
        if kind is None:
            continue
        try:
            g = parse_grant(shared, txn, kind, id_raw, head)
        except LamaError:
            continue
        if g is not None:
            out.append((id_raw, kind, g))
    return out


INDEX_DBS = ("agrants", "amembers", "anodes", "aroots", "arefs", "aids", "aseq")


def clear(shared: Any, txn: lmdb.Transaction) -> None:
    """Drop the access index of a format-1 store (another layout): ``upgrade`` builds it again."""
    txn.delete(META_ACCESS, db=shared.meta)


def upgrade(shared: Any, txn: lmdb.Transaction, last_seq: int) -> None:
    """Build the index of a store created before it, once (see access.rs upgrade)."""
    if txn.get(META_ACCESS, db=shared.meta) is not None:
        return
    # whatever an older layout left in the tables goes first
    for name in INDEX_DBS:
        txn.drop(getattr(shared, name), delete=False)
    grants = current_grants(shared, txn)
    idx = Idx()
    for pass_kind in (G_GROUP, G_ACCESS, G_IDACCESS):
        for gid, kind, g in grants:
            if kind == pass_kind:
                _apply_grant(shared, txn, gid, kind, None, g, last_seq, idx)
    txn.put(META_ACCESS, b"1", db=shared.meta)


def _scan_seq(txn: lmdb.Transaction, db: Any, owner: bytes, frm: int, name: str,
              dec: Callable[[bytes], Any]) -> list[tuple[int, int, Any]]:
    """The entries ``owner ‖ u64 seq ‖ u32 n`` of ``db`` (aroots, aseq) with seq >= ``frm``:
    ``(seq, n, dec(value))`` in key order (see access.rs scan_seq)."""
    out: list[tuple[int, int, Any]] = []
    if frm >= 1 << 64:
        return out
    cur = txn.cursor(db=db)
    if not cur.set_range(owner + frm.to_bytes(8, "big")):
        return out
    for k, v in cur:
        if k[:32] != owner:
            break
        r = dec(bytes(v)) if len(k) == 44 else None
        if r is None:
            raise _corrupt(f"malformed {name} entry {bytes(k).hex()}")
        out.append((int.from_bytes(k[32:40], "big"), int.from_bytes(k[40:44], "big"), r))
    return out


def _scan_roots(shared: Any, txn: lmdb.Transaction, p: bytes, frm: int) -> list[tuple[int, int, Root]]:
    return _scan_seq(txn, shared.aroots, p, frm, "aroots", decode_root)


def _granted_ids(shared: Any, txn: lmdb.Transaction, p: bytes) -> list[tuple[bytes, int, int]]:
    out: list[tuple[bytes, int, int]] = []
    for k, v in _prefix(txn, shared.aids, p):
        if len(k) != 64 or len(v) != 12:
            raise _corrupt(f"malformed aids entry {k.hex()}")
        out.append((k[32:], int.from_bytes(v[:8], "big"), int.from_bytes(v[8:], "big")))
    return out


def _scan_nodes(shared: Any, txn: lmdb.Transaction, x: bytes, frm: int) -> list[tuple[int, int, bytes]]:
    return _scan_seq(txn, shared.aseq, x, frm, "aseq", lambda v: v if len(v) == 32 else None)


def _source_roots(shared: Any, txn: lmdb.Transaction, p: bytes, frm: int) -> list[tuple[int, Root]]:
    """The roots principal ``p`` got at a seq >= ``frm``, in order (see access.rs source_roots)."""
    rows: list[tuple[tuple[int, int, int, int, int, int], Root]] = [
        ((s, 0, i, 0, 0, 0), r) for s, i, r in _scan_roots(shared, txn, p, frm)]
    for x, g, i in _granted_ids(shared, txn, p):
        nodes = _scan_nodes(shared, txn, x, 0 if g >= frm else frm)
        if not nodes:
            continue
        t = _id_type(shared, txn, x)
        for s, pos, n in nodes:
            key = (g, 0, i, 1, s, pos) if s <= g else (s, 1, 0, 0, s, pos)
            rows.append((key, ("version_node", n, x, t)))
    rows.sort(key=lambda e: e[0])
    return [(k[0], r) for k, r in rows]


def _ref_seq(shared: Any, txn: lmdb.Transaction, p: bytes, h: bytes) -> int | None:
    v = txn.get(p + h, db=shared.arefs)
    return None if v is None or len(v) < 8 else int.from_bytes(v[:8], "big")


def _node_seq(shared: Any, txn: lmdb.Transaction, x: bytes, n: bytes) -> int | None:
    v = txn.get(x + n, db=shared.anodes)
    return None if v is None or len(v) != 13 or v[12] != N_NODE else int.from_bytes(v[:8], "big")


def _groups_of(shared: Any, txn: lmdb.Transaction, person: bytes) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    for k, v in _prefix(txn, shared.amembers, person):
        if len(k) != 64 or len(v) != 8:
            raise _corrupt(f"malformed amembers entry {k.hex()}")
        out.append((k[32:], int.from_bytes(v, "big")))
    return out


def accessible_roots(shared: Any, txn: lmdb.Transaction, person: bytes, since: int,
                     mark: int) -> tuple[int, list[tuple[str, str, str | None, str]]]:
    """docs/chum-session.md §1 inside one read transaction (see access.rs)."""
    frm = since + 1
    sources = [(person, 0)] + _groups_of(shared, txn, person)
    cands: list[tuple[int, Root]] = []
    for n, (src, joined) in enumerate(sources):
        rows = _source_roots(shared, txn, src, 0 if n > 0 and joined > since else frm)
        cands.extend((max(s, joined), r) for s, r in rows)
    best: dict[bytes, int] = {}
    keep: list[tuple[int, Root]] = []
    for s, r in cands:
        i = best.get(r[1])
        if i is None:
            best[r[1]] = len(keep)
            keep.append((s, r))
        elif s < keep[i][0]:
            keep[i] = (s, r)
    old_ids: list[list[tuple[bytes, int]]] = []
    if since > 0:
        for src, joined in sources:
            ids = [(x, max(g, joined)) for x, g, _i in _granted_ids(shared, txn, src)]
            old_ids.append([(x, g) for x, g in ids if g <= since])
    out: list[tuple[int, Root]] = []
    for s, r in keep:
        if since > 0:
            old = False
            for (src, joined), ids in zip(sources, old_ids):
                x = _ref_seq(shared, txn, src, r[1])
                if x is not None and max(x, joined) <= since:
                    old = True
                elif r[0] in ("version_node", "unversioned"):
                    # a node of an ID granted at or before `since`: an `n` root under its own
                    # ID only, a `u` root under every one (see access.rs)
                    own = r[2] if r[0] == "version_node" else None
                    for xid, g in ids:
                        if own is not None and xid != own:
                            continue
                        ns = _node_seq(shared, txn, xid, r[1])
                        if ns is not None and max(ns, g) <= since:
                            old = True
                            break
                if old:
                    break
            if old:
                continue
        out.append((s, r))
    out.sort(key=lambda e: e[0])
    return mark, [(k, h.hex(), None if i is None else i.hex(), t) for _, (k, h, i, t) in out]


def check_peer(peer: object) -> bytes:
    if not isinstance(peer, str):
        raise StoreError(f"a peer key must be a str, got {type(peer).__name__}", "LAMA-ARG")
    try:
        raw = peer.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError("a peer key must be valid Unicode", "LAMA-ARG") from None
    if not raw or len(raw) > 400:
        raise StoreError(f"a peer key must be 1 to 400 bytes, got {len(raw)} bytes", "LAMA-ARG")
    return raw


def peer_mark(shared: Any, txn: lmdb.Transaction, raw: bytes) -> int:
    v = txn.get(raw, db=shared.peers)
    if v is None:
        return 0
    if len(v) != 8:
        raise _corrupt(f"malformed peers entry {raw.decode('utf-8', 'replace')!r}")
    return int.from_bytes(v, "big")


# -- verify() -----------------------------------------------------------------------------


def _check_derived(txn: lmdb.Transaction, db: Any, name: str, expected: dict[bytes, bytes],
                   sizes: tuple[int, int], mismatch: str, problems: list[str]) -> None:
    """Check a table derived from others (aseq, aids) against ``expected`` (key -> value): each
    entry of ``sizes`` (key, value) must be expected with that value (``mismatch`` otherwise),
    and each expected key present (see access.rs check_derived)."""
    seen: set[bytes] = set()
    for k, v in txn.cursor(db=db):
        k = bytes(k)
        seen.add(k)
        if (len(k), len(v)) != sizes:
            problems.append(f"{name}/{k.hex()}: malformed entry")
        elif expected.get(k) != bytes(v):
            problems.append(f"{name}/{k.hex()}: {mismatch}")
    for k in sorted(set(expected) - seen):
        problems.append(f"{name}/{k.hex()}: missing")


def check_index(shared: Any, txn: lmdb.Transaction, last: int, problems: list[str]) -> None:
    """verify() items 7-14 (see access.rs check_index; the same messages)."""
    grants = current_grants(shared, txn)
    # agrants
    expected = {gid: encode_grant(g) for gid, _k, g in grants}
    seen: set[bytes] = set()
    for k, v in txn.cursor(db=shared.agrants):
        k = bytes(k)
        seen.add(k)
        e = expected.get(k)
        if e is None:
            problems.append(f"agrants/{k.hex()}: not a current grant")
        elif e != bytes(v):
            problems.append(f"agrants/{k.hex()}: does not match the current grant")
    for k in sorted(set(expected) - seen):
        problems.append(f"agrants/{k.hex()}: missing for the current grant")
    # amembers
    exp_m = {p + gid for gid, kind, g in grants if kind == G_GROUP for p in g[2]}
    seen = set()
    for k, v in txn.cursor(db=shared.amembers):
        k = bytes(k)
        seen.add(k)
        if len(k) != 64 or len(v) != 8 or int.from_bytes(v, "big") > last:
            problems.append(f"amembers/{k.hex()}: malformed entry")
        elif k not in exp_m:
            problems.append(f"amembers/{k.hex()}: not a member of the current group")
    for k in sorted(exp_m - seen):
        problems.append(f"amembers/{k.hex()}: missing")
    # anodes
    markers = {cast_target(g): gid for gid, kind, g in grants if kind == G_IDACCESS}
    exp_n: set[bytes] = set(markers)
    for x in sorted(markers):
        head = txn.get(x, db=shared.vheads)
        if head is not None and len(head) == 32:
            try:
                nodes = walk_nodes(shared, txn, bytes(head), lambda _n: False)
            except LamaError:
                nodes = []
            exp_n.update(x + n for n, _m in nodes)
    seen = set()
    for k, v in txn.cursor(db=shared.anodes):
        k, v = bytes(k), bytes(v)
        seen.add(k)
        granted = markers.get(k[:32]) if len(k) >= 32 else None
        if len(k) == 32:
            if granted is None:
                problems.append(f"anodes/{k.hex()}: not a granted ID")
            elif granted != v:
                problems.append(f"anodes/{k.hex()}: does not match the current grant")
        elif len(k) != 64 or len(v) != 13 or v[12] not in (N_NODE, N_MERGE):
            problems.append(f"anodes/{k.hex()}: malformed entry")
        elif granted is None:
            problems.append(f"anodes/{k.hex()}: node of an ID that is not granted")
        else:
            text = _text_of(shared, txn, k[32:], K_OBJECT)
            node_type: str | None = None
            if text is not None:
                try:
                    node_type = type_of(text)[0]
                except LamaError:
                    node_type = None
            if node_type not in VERSION_NODE_TYPES:
                problems.append(f"anodes/{k.hex()}: not a stored version node")
            elif (node_type == "VersionNodeMerge") != (v[12] == N_MERGE):
                problems.append(f"anodes/{k.hex()}: merge flag does not match the node")
    for k in sorted(exp_n - seen):
        problems.append(f"anodes/{k.hex()}: missing")
    # aseq
    exp_s: dict[bytes, bytes] = {}
    for k, v in txn.cursor(db=shared.anodes):
        if len(k) == 64 and len(v) == 13 and v[12] == N_NODE:
            exp_s[bytes(k[:32]) + bytes(v[:12])] = bytes(k[32:])
    _check_derived(txn, shared.aseq, "aseq", exp_s, (44, 32), "no anodes entry of this node here", problems)
    # arefs
    want: dict[bytes, list[Any]] = {}
    for _gid, kind, g in grants:
        roots: list[Root | None] = []
        if kind == G_ACCESS:
            try:
                roots.append(_object_root(shared, txn, cast_target(g)))
            except LamaError:
                roots.append(None)
        elif kind == G_IDACCESS:
            x = cast_target(g)
            try:
                t: str | None = _id_type(shared, txn, x)
            except LamaError:
                t = None
            roots.append(None if t is None else ("id", x, None, t))
        for p in g[2]:
            for r in roots:
                if r is None:
                    continue
                w = want.setdefault(p + r[1], [0, None])
                w[0] += 1
                if w[1] is None:
                    w[1] = r
    seen = set()
    for k, v in txn.cursor(db=shared.arefs):
        k, v = bytes(k), bytes(v)
        seen.add(k)
        if len(k) != 64 or len(v) != 16:
            problems.append(f"arefs/{k.hex()}: malformed entry")
            continue
        count = int.from_bytes(v[12:16], "big")
        exp = want[k][0] if k in want else 0
        if count != exp:
            problems.append(f"arefs/{k.hex()}: count {count}, expected {exp}")
        else:
            stored = txn.get(k[:32] + v[:12], db=shared.aroots)
            if stored is None or bytes(stored[:32]) != k[32:]:
                problems.append(f"arefs/{k.hex()}: no aroots entry")
    for k in sorted(set(want) - seen):
        problems.append(f"arefs/{k.hex()}: missing (expected count {want[k][0]})")
    # aroots; and what aids must hold: one entry per `i` root, pointing at it
    exp_i: dict[bytes, bytes] = {}
    for k, v in txn.cursor(db=shared.aroots):
        k = bytes(k)
        root = decode_root(bytes(v)) if len(k) == 44 else None
        if root is None:
            problems.append(f"aroots/{k.hex()}: malformed entry")
            continue
        rk = k[:32] + root[1]
        if root[0] == "id":
            exp_i[rk] = k[32:44]
        pos = txn.get(rk, db=shared.arefs)
        if pos is None or bytes(pos[:12]) != k[32:44]:
            problems.append(f"aroots/{k.hex()}: no arefs entry points here")
        elif rk in want and want[rk][1] is not None and want[rk][1] != root:
            problems.append(f"aroots/{k.hex()}: root does not match the grant")
    _check_derived(txn, shared.aids, "aids", exp_i, (64, 12), "no id root in aroots there", problems)
    # peers
    for k, v in txn.cursor(db=shared.peers):
        ok = len(v) == 8
        try:
            bytes(k).decode("utf-8")
        except UnicodeDecodeError:
            ok = False
        if not ok:
            problems.append(f"peers/{bytes(k).hex()}: malformed entry")


def cast_target(g: Grant) -> bytes:
    t = g[1]
    assert t is not None
    return t
