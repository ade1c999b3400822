"""Write a ONE instance's file store the way the reference does (objects.md §5, §7.4), for the
migration tests - independently of lama: objects from the reference's storage dump
(tests/vectors/microdata-storage-dump.json, every file name = SHA-256 of its content), version
heads derived from the dump's version nodes, Keys objects and the keychain built with hashlib
(scrypt) and PyNaCl (secretbox) straight from the spec's formats."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.public
import nacl.secret
import nacl.signing
import nacl.utils

VECTORS = Path(__file__).resolve().parent / "vectors"
DUMP = json.loads((VECTORS / "microdata-storage-dump.json").read_text(encoding="utf-8"))
RECIPES = json.loads((VECTORS / "recipes.json").read_text(encoding="utf-8"))
HARNESS = [e["recipe"] for e in RECIPES if e["recipe"]["name"].startswith("Harness")]

_NODE_RE = re.compile(r'itemtype="//refin\.io/(VersionNode\w+)"')
_DATA_RE = re.compile(r'<a itemprop="data" data-type="obj">([0-9a-f]{64})</a>')
_DEPTH_RE = re.compile(r'<span itemprop="depth">(\d+)</span>')
_PARENT_RE = re.compile(r'<a (?:itemprop="prev" )?data-type="obj">([0-9a-f]{64})</a>')


def sha(data: str | bytes) -> str:
    return hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()


def dump_heads(entries: list[dict[str, Any]]) -> dict[str, str]:
    """ID hash -> head version node: per ID, the deepest node no other node of it points to
    (objects.md §4.1). Nodes whose data object is not in the dump are left out."""
    id_of = {e["file"]: e["idHash"] for e in entries if "idHash" in e}
    nodes: dict[str, list[tuple[int, str]]] = {}
    parents: set[str] = set()
    for e in entries:
        md = e["microdata"]
        if not _NODE_RE.search(md):
            continue
        data = _DATA_RE.search(md).group(1)  # type: ignore[union-attr]
        for p in _PARENT_RE.findall(md):
            if p != data:
                parents.add(p)
        if data not in id_of:
            continue  # a node stored for the microdata vectors whose data is not in the dump
        nodes.setdefault(id_of[data], []).append((int(_DEPTH_RE.search(md).group(1)), e["file"]))  # type: ignore[union-attr]
    return {i: max(n for n in ns if n[1] not in parents)[1] for i, ns in nodes.items()}


def keys_microdata(owner: str, public_key: bytes, public_sign_key: bytes) -> str:
    """objects.md §7.2, the reference's Keys object text."""
    return (
        '<div itemscope itemtype="//refin.io/Keys">'
        f'<a itemprop="owner" data-type="id">{owner}</a>'
        f'<span itemprop="publicKey">{public_key.hex()}</span>'
        f'<span itemprop="publicSignKey">{public_sign_key.hex()}</span></div>'
    )


@dataclass
class KeyPair:
    box_secret: bytes  # 32
    sign_secret: bytes  # 64 = seed || public (tweetnacl layout)
    public_key: bytes
    public_sign_key: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        box = nacl.public.PrivateKey.generate()
        sign = nacl.signing.SigningKey.generate()
        vk = bytes(sign.verify_key)
        return cls(bytes(box), bytes(sign) + vk, bytes(box.public_key), vk)


def _seal(plain: bytes, key: bytes) -> bytes:
    # nonce(24) || secretbox(plain) (objects.md §7.1 "embedded nonce"); PyNaCl returns exactly that
    return bytes(nacl.secret.SecretBox(key).encrypt(plain, nacl.utils.random(24)))


def write_keychain(private: Path, secret: str, keys: dict[str, KeyPair]) -> None:
    """objects.md §7.4: salt, scrypt-derived key, sealed master key, sealed secret keys."""
    private.mkdir(mode=0o700, parents=True, exist_ok=True)
    salt = nacl.utils.random(16)
    k = hashlib.scrypt(unicodedata.normalize("NFKC", secret).encode("utf-8"), salt=salt,
                       n=1024, r=8, p=1, dklen=32)
    master = nacl.utils.random(32)
    (private / "keychain_salt").write_bytes(salt)
    (private / "keychain_masterkey").write_bytes(_seal(master, k))
    for keys_hash, kp in keys.items():
        (private / f"{keys_hash}.encrypt").write_bytes(_seal(kp.box_secret, master))
        (private / f"{keys_hash}.sign").write_bytes(_seal(kp.sign_secret, master))


def open_keychain(private: Path, secret: str) -> dict[str, tuple[bytes, bytes]]:
    """Read a keychain with the spec's formats only: Keys hash -> (box secret, sign secret)."""
    salt = (private / "keychain_salt").read_bytes()
    k = hashlib.scrypt(unicodedata.normalize("NFKC", secret).encode("utf-8"), salt=salt,
                       n=1024, r=8, p=1, dklen=32)
    sealed = (private / "keychain_masterkey").read_bytes()
    assert len(sealed) == 72
    master = nacl.secret.SecretBox(k).decrypt(sealed)
    out = {}
    for p in sorted(private.glob("*.encrypt")):
        h = p.name.split(".")[0]
        enc, sig = p.read_bytes(), (private / f"{h}.sign").read_bytes()
        assert (len(enc), len(sig)) == (72, 104)
        out[h] = (nacl.secret.SecretBox(master).decrypt(enc), nacl.secret.SecretBox(master).decrypt(sig))
    return out


@dataclass
class OneStore:
    path: Path  # <base>/<instanceIdHash>
    secret: str
    person_id: str
    instance_id: str
    person_keys: str
    instance_keys: str
    person: KeyPair
    instance: KeyPair
    files: dict[str, bytes]  # objects/ content by hash
    heads: dict[str, str]


def object_path(inst: Path, h: str, shard: int = 0) -> Path:
    return inst / "objects" / (h[:shard] if shard else "") / h


def write_dump_store(base: Path, secret: str, *, shard: int = 0,
                     extra_files: dict[str, bytes] | None = None) -> OneStore:
    """The reference's storage dump as a ONE instance directory ``base/<instanceIdHash>/``,
    with fresh default keys (complete in the keychain) for its Person and Instance."""
    entries = DUMP["entries"]
    person_id, instance_id = DUMP["ownerIdHash"], DUMP["instanceIdHash"]
    inst = base / instance_id
    for d in ("objects", "vheads", "rmaps", "tmp", "acache"):
        (inst / d).mkdir(parents=True, exist_ok=True)
    files = {e["file"]: e["microdata"].encode("utf-8") for e in entries}
    pk, ik = KeyPair.generate(), KeyPair.generate()
    pk_md = keys_microdata(person_id, pk.public_key, pk.public_sign_key)
    ik_md = keys_microdata(instance_id, ik.public_key, ik.public_sign_key)
    files[sha(pk_md)] = pk_md.encode()
    files[sha(ik_md)] = ik_md.encode()
    files.update(extra_files or {})
    for h, content in files.items():
        p = object_path(inst, h, shard)
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(content)
    heads = dump_heads(entries)
    for id_hash, node in heads.items():
        (inst / "vheads" / id_hash).write_text(node)  # no trailing newline (§9.13)
    for owner, kmd in ((person_id, pk_md), (instance_id, ik_md)):
        with open(inst / "rmaps" / f"{owner}.Object.Keys", "a") as f:
            f.write(sha(kmd) + "\n")
    write_keychain(inst / "private", secret, {sha(pk_md): pk, sha(ik_md): ik})
    return OneStore(inst, secret, person_id, instance_id, sha(pk_md), sha(ik_md), pk, ik,
                    files, heads)


def write_reference_keychain_store(base: Path) -> dict[str, Any]:
    """Peer A of the reference run in crypto-and-frames.json as a ONE instance directory: its
    keychain files byte for byte as one.core wrote them (salt, master key, both key sets), its
    two Keys objects, and its Person and Instance (email and instance name from the pairing
    transcript's identity message; microdata written by hand in the reference's format, the
    ID hashes they give checked against the vector's). Returns the vector's keychain section."""
    kc = json.loads((VECTORS / "crypto-and-frames.json").read_text(encoding="utf-8"))["keychain"]
    person_id, instance_id = kc["person_id_hash"], kc["instance_id_hash"]
    person = ('<div itemscope itemtype="//refin.io/Person"><span itemprop="email">'
              'alice@peer-a.example</span><span itemprop="name">Alice</span></div>')
    person_idmd = ('<div data-id-object="true" itemscope itemtype="//refin.io/Person">'
                   '<span itemprop="email">alice@peer-a.example</span></div>')
    inst_md = ('<div itemscope itemtype="//refin.io/Instance"><span itemprop="name">peer-A</span>'
               f'<a itemprop="owner" data-type="id">{person_id}</a><ul itemprop="recipe"></ul>'
               '<dl itemprop="enabledReverseMapTypes"></dl>'
               '<dl itemprop="enabledReverseMapTypesForIdObjects"></dl></div>')
    inst_idmd = ('<div data-id-object="true" itemscope itemtype="//refin.io/Instance"><span '
                 f'itemprop="name">peer-A</span><a itemprop="owner" data-type="id">{person_id}'
                 '</a></div>')
    assert (sha(person_idmd), sha(inst_idmd)) == (person_id, instance_id)

    def edge(data: str, t: int) -> str:  # objects.md §4.2
        return ('<div itemscope itemtype="//refin.io/VersionNodeEdge"><a itemprop="data" '
                f'data-type="obj">{data}</a><span itemprop="depth">0</span>'
                f'<span itemprop="creationTime">{t}</span></div>')

    p_edge, i_edge = edge(sha(person), 1764149904000), edge(sha(inst_md), 1764149904001)
    texts = [person, person_idmd, inst_md, inst_idmd, p_edge, i_edge,
             kc["person_keys"]["keys_object_microdata"], kc["instance_keys"]["keys_object_microdata"]]
    inst = base / instance_id
    for d in ("objects", "vheads", "rmaps", "tmp", "acache"):
        (inst / d).mkdir(parents=True, exist_ok=True)
    for t in texts:
        (inst / "objects" / sha(t)).write_text(t, encoding="utf-8")
    (inst / "vheads" / person_id).write_text(sha(p_edge))
    (inst / "vheads" / instance_id).write_text(sha(i_edge))
    private = inst / "private"
    private.mkdir(mode=0o700)
    (private / "keychain_salt").write_bytes(bytes.fromhex(kc["file_keychain_salt"]["bytes_hex"]))
    (private / "keychain_masterkey").write_bytes(
        bytes.fromhex(kc["file_keychain_masterkey"]["bytes_hex"]))
    for who in ("person_keys", "instance_keys"):
        for f in ("file_encrypt", "file_sign"):
            (private / kc[who][f]["name"]).write_bytes(bytes.fromhex(kc[who][f]["bytes_hex"]))
    return kc  # type: ignore[no-any-return]


def recipe_microdata(name: str, rules: list[dict[str, Any]]) -> str:
    """objects.md §3: a Recipe object as the reference stores an app recipe (nested rules in
    the order itemprop, optional, isId, itemtype; itemtype as JSON with sorted keys)."""
    lis = []
    for r in rules:
        inner = f'<span itemprop="itemprop">{r["itemprop"]}</span>'
        if r.get("optional"):
            inner += '<span itemprop="optional">true</span>'
        if r.get("isId"):
            inner += '<span itemprop="isId">true</span>'
        if "itemtype" in r:
            t = json.dumps(r["itemtype"], sort_keys=True, separators=(",", ":"))
            inner += f'<span itemprop="itemtype">{t}</span>'
        lis.append(f"<li><div>{inner}</div></li>")
    return (f'<div itemscope itemtype="//refin.io/Recipe"><span itemprop="name">{name}</span>'
            f'<ol itemprop="rule">{"".join(lis)}</ol></div>')


def id_microdata(md: str, id_props: list[str]) -> str:
    """The ID object of a versioned object (objects.md §2.2): its ID properties only (they come
    first and are single spans/anchors in the objects written here)."""
    m = re.match(r'<div itemscope itemtype="//refin\.io/(\w+)">', md)
    assert m is not None
    inner = "".join(x.group(0) for x in re.finditer(r'<(span|a) itemprop="(\w+)"[^>]*>[^<]*</\1>', md)
                    if x.group(2) in id_props)
    return f'<div data-id-object="true" itemscope itemtype="//refin.io/{m.group(1)}">{inner}</div>'


def edge_microdata(data: str, t: int) -> str:
    return ('<div itemscope itemtype="//refin.io/VersionNodeEdge"><a itemprop="data" '
            f'data-type="obj">{data}</a><span itemprop="depth">0</span>'
            f'<span itemprop="creationTime">{t}</span></div>')


def change_microdata(prev: str, data: str, depth: int, t: int) -> str:
    return ('<div itemscope itemtype="//refin.io/VersionNodeChange"><a itemprop="prev" '
            f'data-type="obj">{prev}</a><a itemprop="data" data-type="obj">{data}</a>'
            f'<span itemprop="depth">{depth}</span><span itemprop="creationTime">{t}</span></div>')


# an app's own recipes (names no lama core knows): MigNote is versioned and named by
# Instance.recipe, MigTag is in the store only (registered later by the app, objects.md §3)
NOTE_RULES = [
    {"itemprop": "id", "isId": True, "itemtype": {"type": "string"}},
    {"itemprop": "text", "itemtype": {"type": "string"}},
    {"itemprop": "tags", "itemtype": {"type": "set", "item": {"type": "string"}}},
    {"itemprop": "tag", "optional": True,
     "itemtype": {"type": "referenceToObj", "allowedTypes": ["MigTag"]}},
    {"itemprop": "file", "optional": True, "itemtype": {"type": "referenceToBlob"}},
]
TAG_RULES = [
    {"itemprop": "label", "itemtype": {"type": "string", "regexp": "^[a-z]+$"}},
    {"itemprop": "weight", "optional": True, "itemtype": {"type": "integer"}},
]


@dataclass
class AppStore(OneStore):
    recipes: dict[str, str]  # name -> Recipe object hash
    app_objects: dict[str, str]  # hash -> type of the objects of app types (ID objects too)
    bad: dict[str, str]  # what -> Recipe object hash of the bad/conflicting recipes


def write_app_store(base: Path, secret: str) -> AppStore:
    """A ONE instance (alice@app.example / app-laptop) of an app with its own recipes, written
    as the reference lays it out: Recipe objects (one named by ``Instance.recipe``, one only in
    the store), objects of these types (versioned with two versions, unversioned, a BLOB one
    refers to), a reverse map the Instance enables for an app type, a conflicting recipe (a
    different ``Person``) and a recipe a rule of which is invalid (an itemprop with a dot)."""
    files: dict[str, str | bytes] = {}

    def put(md: str | bytes) -> str:
        h = sha(md)
        files[h] = md
        return h

    heads: dict[str, str] = {}

    def versioned(md: str, id_props: list[str], t: int) -> str:
        h = put(md)
        idh = put(id_microdata(md, id_props))
        prev = heads.get(idh)
        node = edge_microdata(h, t) if prev is None else change_microdata(prev, h, 1, t)
        heads[idh] = put(node)
        return idh

    note_r = recipe_microdata("MigNote", NOTE_RULES)
    tag_r = recipe_microdata("MigTag", TAG_RULES)
    conflict_r = recipe_microdata("Person", [{"itemprop": "email", "isId": True},
                                             {"itemprop": "age", "itemtype": {"type": "integer"}}])
    invalid_r = recipe_microdata("MigBroken", [{"itemprop": "a.b"}])
    rec = {}
    for name, md in (("MigNote", note_r), ("MigTag", tag_r)):
        rec[name] = put(md)
        versioned(md, ["name"], 1764149900000)
    bad = {"conflict": put(conflict_r), "invalid": put(invalid_r)}
    for md in (conflict_r, invalid_r):  # stored without a head; ONE writes the ID object too
        put(id_microdata(md, ["name"]))
    person = ('<div itemscope itemtype="//refin.io/Person"><span itemprop="email">'
              'alice@app.example</span><span itemprop="name">Alice</span></div>')
    person_id = versioned(person, ["email"], 1764149901000)
    inst_md = ('<div itemscope itemtype="//refin.io/Instance"><span itemprop="name">app-laptop'
               f'</span><a itemprop="owner" data-type="id">{person_id}</a><ul itemprop="recipe">'
               f'<li><a data-type="obj">{rec["MigNote"]}</a></li></ul>'
               '<dl itemprop="enabledReverseMapTypes"><dt>MigNote</dt><dd><ul><li>tag</li></ul>'
               '</dd></dl><dl itemprop="enabledReverseMapTypesForIdObjects"></dl></div>')
    instance_id = versioned(inst_md, ["name", "owner"], 1764149902000)
    app: dict[str, str] = {}
    blob = bytes(range(256)) * 3 + b"\x00\xff"
    blob_h = put(blob)
    tag_hashes = []
    for label, w in (("work", 3), ("home", None)):
        md = ('<div itemscope itemtype="//refin.io/MigTag">'
              f'<span itemprop="label">{label}</span>'
              + (f'<span itemprop="weight">{w}</span>' if w is not None else "") + "</div>")
        tag_hashes.append(put(md))
        app[tag_hashes[-1]] = "MigTag"
    for i, (text, tags) in enumerate((("first &amp; draft", ["a", "b"]),
                                      ("final text", ["a", "b", "z"]))):
        lis = "".join(f"<li>{t}</li>" for t in sorted(tags))
        md = ('<div itemscope itemtype="//refin.io/MigNote"><span itemprop="id">note-1</span>'
              f'<span itemprop="text">{text}</span><ul itemprop="tags">{lis}</ul>'
              f'<a itemprop="tag" data-type="obj">{tag_hashes[0]}</a>'
              f'<a itemprop="file" data-type="blob">{blob_h}</a></div>')
        idh = versioned(md, ["id"], 1764149910000 + i)
        app[sha(md)] = app[idh] = "MigNote"
    inst = base / instance_id  # the directory is named by the Instance ID hash (§5.1)
    for d in ("objects", "vheads", "rmaps", "tmp", "acache"):
        (inst / d).mkdir(parents=True, exist_ok=True)
    pk, ik = KeyPair.generate(), KeyPair.generate()
    pk_h = put(keys_microdata(person_id, pk.public_key, pk.public_sign_key))
    ik_h = put(keys_microdata(instance_id, ik.public_key, ik.public_sign_key))
    raw = {h: (c.encode("utf-8") if isinstance(c, str) else c) for h, c in files.items()}
    for h, c in raw.items():
        (inst / "objects" / h).write_bytes(c)
    for idh, node in heads.items():
        (inst / "vheads" / idh).write_text(node)
    for owner, kh in ((person_id, pk_h), (instance_id, ik_h)):
        (inst / "rmaps" / f"{owner}.Object.Keys").write_text(kh + "\n")
    write_keychain(inst / "private", secret, {pk_h: pk, ik_h: ik})
    return AppStore(inst, secret, person_id, instance_id, pk_h, ik_h, pk, ik, raw, heads,
                    rec, app, bad)


def tree_snapshot(path: Path) -> dict[str, bytes]:
    """Every file below ``path`` with its content (to show that nothing changed)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


__all__ = ["AppStore", "write_app_store", "recipe_microdata", "DUMP", "HARNESS", "KeyPair", "OneStore", "dump_heads", "keys_microdata",
           "object_path", "open_keychain", "sha", "tree_snapshot", "write_dump_store",
           "write_keychain", "write_reference_keychain_store"]
