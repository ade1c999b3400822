"""Check a ONE instance directory against the reference's layout rules (objects.md §5, §4.1,
§7.4, quirks §9.13/14) without lama and without running the reference: regular expressions over
the files, hashlib and PyNaCl only. ``violations(inst, secret)`` lists every rule broken (empty:
the directory is laid out as one.core 0.6.1 writes it, as far as the spec tells)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import nacl.public
import nacl.signing

import one_fixture as F

HASH = re.compile(r"[0-9a-f]{64}")
_TYPE = re.compile(r'<div (data-id-object="true" )?itemscope itemtype="//refin\.io/(\w+)">')
_REF = re.compile(r'data-type="(obj|id|blob|clob)">([0-9a-f]{64})</a>')
_TOP_REF = re.compile(r'<a itemprop="(\w+)" data-type="(?:obj|id|blob|clob)">([0-9a-f]{64})</a>')
_NODE_DATA = re.compile(r'<a itemprop="data" data-type="obj">([0-9a-f]{64})</a>')
_MAP = re.compile(r"([0-9a-f]{64})\.(Object|IdObject)\.(\w+)")
# objects.md §5.3: the maps one.core always keeps
BUILTIN = {"Object": {"Access", "Group", "IdAccess", "Keys"},
           "IdObject": {"Access", "IdAccess", "Instance"}}
SUBDIRS = {"objects", "vheads", "rmaps", "tmp", "acache", "private"}


def _enabled(instance_md: str, prop: str) -> dict[str, set[str]]:
    m = re.search(f'<dl itemprop="{prop}">(.*?)</dl>', instance_md)
    out: dict[str, set[str]] = {}
    for t, items in re.findall(r"<dt>(\w+)</dt><dd><ul>(.*?)</ul></dd>", m.group(1) if m else ""):
        out[t] = set(re.findall(r"<li>([^<]*)</li>", items))
    return out


def violations(inst: Path, secret: str) -> list[str]:
    bad: list[str] = []
    names = {p.name for p in inst.iterdir()}
    if names != SUBDIRS:
        bad.append(f"instance directory holds {sorted(names)}, not {sorted(SUBDIRS)}")
    for d in ("tmp", "acache"):
        if (inst / d).is_dir() and any((inst / d).iterdir()):
            bad.append(f"{d}/ is not empty")
    # objects/: flat (N = 0), file name = SHA-256 of the content (§5.1, §5.2)
    files: dict[str, bytes] = {}
    for p in (inst / "objects").iterdir():
        if not p.is_file() or not HASH.fullmatch(p.name):
            bad.append(f"objects/{p.name}: not a file named by a lowercase hash")
            continue
        files[p.name] = p.read_bytes()
        if hashlib.sha256(files[p.name]).hexdigest() != p.name:
            bad.append(f"objects/{p.name}: content does not hash to the name")
    types: dict[str, tuple[str, bool]] = {}  # hash -> (type, is ID object)
    for h, c in files.items():
        m = _TYPE.match(c.decode("utf-8", "replace"))
        if m:
            types[h] = (m.group(2), m.group(1) is not None)
    text = {h: files[h].decode("utf-8") for h in types}
    # vheads/: one per ID hash, the head node's 64 hex digits, no newline (§4.1, §9.13)
    heads: dict[str, str] = {}
    for p in (inst / "vheads").iterdir():
        c = p.read_bytes()
        if not HASH.fullmatch(p.name) or not HASH.fullmatch(c.decode("ascii", "replace")):
            bad.append(f"vheads/{p.name}: not <idHash> holding 64 hex digits without newline")
            continue
        heads[p.name] = node = c.decode()
        if types.get(p.name, ("", False))[1] is not True:
            bad.append(f"vheads/{p.name}: no ID object of that hash in objects/")
        if not types.get(node, ("",))[0].startswith("VersionNode"):
            bad.append(f"vheads/{p.name}: {node} is not a version node in objects/")
            continue
        data = _NODE_DATA.search(text[node])
        if data is None or types.get(data.group(1), ("", True)) != (types[p.name][0], False):
            bad.append(f"vheads/{p.name}: the head's data is not an object of the ID's type")
    # the instance: the directory's name is the ID hash of an Instance with a head (§5.1)
    if types.get(inst.name) != ("Instance", True) or inst.name not in heads:
        bad.append("the directory is not named by an Instance ID hash with a version head")
        enabled: dict[str, dict[str, set[str]]] = {"Object": {}, "IdObject": {}}
    else:
        cur = text[_NODE_DATA.search(text[heads[inst.name]]).group(1)]  # type: ignore[union-attr]
        enabled = {"Object": _enabled(cur, "enabledReverseMapTypes"),
                   "IdObject": _enabled(cur, "enabledReverseMapTypesForIdObjects")}
    # rmaps/: <target>.Object|IdObject.<Type>, "<hash>\n" per entry, each once (§5.3, §9.13)
    maps: dict[str, list[str]] = {}
    for p in (inst / "rmaps").iterdir():
        m = _MAP.fullmatch(p.name)
        c = p.read_text(encoding="ascii", errors="replace")
        lines = c.split("\n")
        if m is None or lines[-1] != "" or not all(HASH.fullmatch(x) for x in lines[:-1]) \
                or len(lines) < 2:
            bad.append(f"rmaps/{p.name}: not <hash>.(Object|IdObject).<Type> of <hash>\\n lines")
            continue
        if len(set(lines[:-1])) != len(lines) - 1:
            bad.append(f"rmaps/{p.name}: an entry twice")
        target, kind, t = m.groups()
        if t not in BUILTIN[kind] and t not in enabled[kind]:
            bad.append(f"rmaps/{p.name}: a map of a type neither built in nor enabled")
        maps[p.name] = lines[:-1]
        for e in lines[:-1]:
            if types.get(e) != (t, kind == "IdObject"):
                bad.append(f"rmaps/{p.name}: entry {e} is not a{'n ID' if kind == 'IdObject' else 'n'} "
                           f"object of type {t} in objects/")
            elif target not in {r for _, r in _REF.findall(text[e])}:
                bad.append(f"rmaps/{p.name}: entry {e} does not reference {target}")
    # ... and complete: every reference of a mapped type has its entry
    for h, (t, is_id) in types.items():
        kind = "IdObject" if is_id else "Object"
        if t in BUILTIN[kind] or "*" in enabled[kind].get(t, ()):
            refs = {r for _, r in _REF.findall(text[h])}
        elif t in enabled[kind]:
            refs = {r for p, r in _TOP_REF.findall(text[h]) if p in enabled[kind][t]}
        else:
            continue
        for r in refs:
            if h not in maps.get(f"{r}.{kind}.{t}", ()):
                bad.append(f"rmaps/{r}.{kind}.{t}: {h} is missing")
    # private/: the keychain (§7.4): salt 16 B, master key 72 B, per Keys object .encrypt 72 B
    # and .sign 104 B; mode 0700; opens with the secret; the keys fit their Keys object
    priv = inst / "private"
    if priv.stat().st_mode & 0o777 != 0o700:
        bad.append("private/ is not mode 0700")
    sizes = {"keychain_salt": 16, "keychain_masterkey": 72}
    for p in priv.iterdir():
        stem, _, ext = p.name.partition(".")
        want = sizes.get(p.name) or {"encrypt": 72, "sign": 104}.get(ext) if (
            p.name in sizes or HASH.fullmatch(stem)) else None
        if want is None or p.stat().st_size != want:
            bad.append(f"private/{p.name}: not a keychain file of the right size")
        elif ext and types.get(stem) != ("Keys", False):
            bad.append(f"private/{p.name}: not the keys of a Keys object in objects/")
        elif ext and not (priv / f"{stem}.{'sign' if ext == 'encrypt' else 'encrypt'}").is_file():
            bad.append(f"private/{p.name}: only one of .encrypt/.sign")
    try:
        keys = F.open_keychain(priv, secret)
    except Exception as e:  # noqa: BLE001 - any failure is a violation to report
        return bad + [f"private/: the keychain does not open with the secret: {e!r}"]
    for h, (box, sign) in keys.items():
        pub = re.search(r'itemprop="publicKey">([0-9a-f]{64})<', text.get(h, ""))
        spub = re.search(r'itemprop="publicSignKey">([0-9a-f]{64})<', text.get(h, ""))
        if pub is None or spub is None \
                or bytes(nacl.public.PrivateKey(box).public_key).hex() != pub.group(1) \
                or bytes(nacl.signing.SigningKey(sign[:32]).verify_key).hex() != spub.group(1) \
                or sign[32:].hex() != spub.group(1):
            bad.append(f"private/{h}: the secret keys do not fit the Keys object")
    return bad


__all__ = ["violations"]
