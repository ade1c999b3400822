"""Migration from and to a ONE instance's file store (issue 12, docs/migration.md).

Import sources are written in the reference layout by tests/one_fixture.py (the reference's
storage dump, version heads from its nodes, keys and keychain built with hashlib/PyNaCl from
objects.md §5 and §7.4); expected hashes come from the vectors, never from lama."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import one_fixture as F
import one_layout as L
from lama._core import core
from lama.errors import KeychainError, LamaError, NotFoundError, StoreError
from lama.identity.instance import Instance, calculate_instance_id_hash
from lama.identity.keychain import Keychain
from lama.migrate import export_one, import_one

SECRET = "one-secret-\u00e9\u212b"  # NFKC matters (objects.md §7.4)
ROOT = Path(__file__).resolve().parent.parent
ENTRIES = F.DUMP["entries"]
BAD_PARSE = [e["file"] for e in ENTRIES if "parseError" in e]


@pytest.fixture(scope="module", autouse=True)
def harness_recipes() -> None:
    # the dump holds objects of the reference's test recipes (as tests/test_microdata.py)
    for r in F.HARNESS:
        core.register_recipe(json.dumps(r))


def _store(path: str) -> Any:
    return core.Store(str(Path(path) / "store"))


# --------------------------------------------------------------------------------------------
# import of a reference-layout store


@pytest.mark.parametrize("shard", [0, 2])
def test_import_reference_dump(tmp_path: Path, shard: int) -> None:
    one = F.write_dump_store(tmp_path / "one", SECRET, shard=shard)
    seen: list[tuple[str, int, int]] = []
    rep = import_one(tmp_path / "one", tmp_path / "lama", SECRET,
                     progress=lambda *a: seen.append(a))
    # the lama instance is named as the reference names it (the dump's instanceIdHash)
    assert Path(rep.path).name == F.DUMP["instanceIdHash"]
    assert (rep.person_id, rep.instance_id) == (F.DUMP["ownerIdHash"], F.DUMP["instanceIdHash"])
    assert {p for p, _, _ in seen} >= {"objects", "heads", "keys"}
    # what was not taken: the file the reference's parser rejects too, grants on objects the
    # dump does not hold - each with its reason
    reported = {p.what.split("/")[-1]: p.reason for p in rep.problems}
    assert set(BAD_PARSE) <= set(reported)
    assert all("LAMA-GRANT" in r or "M2O" in r for r in reported.values()), reported
    with Instance.open(rep.path, SECRET) as inst:
        s = inst.store
        for e in ENTRIES:
            if e["file"] in BAD_PARSE:
                assert not s.has(e["file"])
                continue
            assert s.get(e["file"]) == e["microdata"]  # verbatim (objects.md §9.23)
            if "idHash" in e:
                assert s.kind(e["idHash"]) == "id"
                assert s.get(e["idHash"]) == e["idMicrodata"]
        # version heads: every vhead whose grant check passes, as the reference wrote it
        moved = 0
        for id_hash, node in one.heads.items():
            if id_hash in reported:
                assert s.get_head(id_hash) is None
            else:
                assert s.get_head(id_hash) == node
                moved += 1
        assert rep.counts["heads"] == moved > 90
        # the identity is the ONE instance's, its keys the ones in the reference keychain
        assert inst.person_id == F.DUMP["ownerIdHash"]
        assert inst.instance_id == F.DUMP["instanceIdHash"]
        assert inst.person_keys == one.person_keys and inst.instance_keys == one.instance_keys
        sk = inst.secret_keys("person")
        assert (sk.encryption_secret, sk.sign_secret) == (one.person.box_secret, one.person.sign_secret)
        ik = inst.secret_keys("instance")
        assert (ik.encryption_secret, ik.sign_secret) == (one.instance.box_secret, one.instance.sign_secret)
        # reverse maps rebuilt by lama's store: owner -> Keys (built-in map, objects.md §5.3)
        assert one.person_keys in s.referencing(one.person_id, "Keys")
        assert s.verify() == []
    # re-encrypted: a new keychain (new salt), same secret
    assert (Path(rep.path) / "private" / "keychain_salt").read_bytes() != (
        one.path / "private" / "keychain_salt").read_bytes()


def test_import_the_reference_keychain(tmp_path: Path) -> None:
    """The keychain files one.core wrote for peer A (crypto-and-frames.json) unlock with its
    secret; the lama instance gets A's identity and exactly the secret keys the vector says
    the files decrypt to, and is named by A's instance ID hash."""
    kc = F.write_reference_keychain_store(tmp_path / "one")
    with pytest.raises(KeychainError) as ei:
        import_one(tmp_path / "one", tmp_path / "lama", kc["secret"] + "x")
    assert ei.value.code == "CYENC-SYMDEC" and not (tmp_path / "lama").exists()
    rep = import_one(tmp_path / "one", tmp_path / "lama", kc["secret"])
    assert rep.problems == []
    assert (rep.person_id, rep.instance_id) == (kc["person_id_hash"], kc["instance_id_hash"])
    assert Path(rep.path).name == kc["instance_id_hash"]
    assert (rep.email, rep.instance_name) == ("alice@peer-a.example", "peer-A")
    with Instance.open(rep.path, kc["secret"]) as inst:
        for who, vec in (("person", kc["person_keys"]), ("instance", kc["instance_keys"])):
            assert getattr(inst, f"{who}_keys") == vec["keys_object_hash"]
            sk = inst.secret_keys(who)
            assert sk.encryption_secret.hex() == vec["file_encrypt"]["plaintext_secret_encryption_key"]
            assert sk.sign_secret.hex() == vec["file_sign"]["plaintext_secret_sign_key"]
        assert inst.person_public_sign_key.hex() == kc["person_keys"]["public_sign_key"]
    # ... and written back as ONE keeps it: the spec's formats open it to the same secrets
    ex = export_one(tmp_path / "lama", tmp_path / "OneDB", kc["secret"])
    got = F.open_keychain(Path(ex.path) / "private", kc["secret"])
    assert {h: (e.hex(), s.hex()) for h, (e, s) in got.items()} == {
        vec["keys_object_hash"]: (vec["file_encrypt"]["plaintext_secret_encryption_key"],
                                  vec["file_sign"]["plaintext_secret_sign_key"])
        for vec in (kc["person_keys"], kc["instance_keys"])}


def test_reference_dump_back_to_one_layout(tmp_path: Path) -> None:
    """ONE -> lama -> ONE: every object file taken comes back under the same name with the same
    bytes, every head taken comes back, the keychain opens with the spec's formats alone."""
    one = F.write_dump_store(tmp_path / "one", SECRET, shard=2)
    rep = import_one(one.path, tmp_path / "lama", SECRET)
    refused = {p.what.split("/")[-1] for p in rep.problems if p.what.startswith("objects/")}
    no_head = {p.what.split("/")[-1] for p in rep.problems if p.what.startswith("vheads/")}
    ex = export_one(rep.path, tmp_path / "OneDB", SECRET)
    assert ex.problems == []
    out = Path(ex.path)
    assert out.name == one.path.name
    # the files ONE wrote (and the ID objects the versioned ones imply), minus the refused
    written = {p.name: p.read_bytes() for p in (out / "objects").iterdir()}
    for h, content in one.files.items():
        if h in refused:
            assert h not in written
        else:
            assert written[h] == content and F.sha(content) == h
    assert all(F.sha(c) == h for h, c in written.items())
    assert set(written) - set(one.files) <= {e["idHash"] for e in ENTRIES if "idHash" in e}
    heads = {p.name: p.read_bytes() for p in (out / "vheads").iterdir()}
    assert heads == {i: n.encode() for i, n in one.heads.items() if i not in no_head}
    # the reverse maps ONE keeps (objects.md §5.2 for a fresh instance)
    for owner, mine in ((one.person_id, one.person_keys), (one.instance_id, one.instance_keys)):
        text = (out / "rmaps" / f"{owner}.Object.Keys").read_text()
        lines = text.split("\n")
        assert lines[-1] == "" and len(set(lines[:-1])) == len(lines) - 1  # "<hash>\n" each once
        assert set(lines[:-1]) == {h for h, c in written.items()
                                   if c.startswith(b'<div itemscope itemtype="//refin.io/Keys">'
                                                   b'<a itemprop="owner" data-type="id">' + owner.encode())}
        assert mine in lines
    assert one.instance_id + "\n" in (out / "rmaps" / f"{one.person_id}.IdObject.Instance").read_text()
    assert F.open_keychain(out / "private", SECRET) == {
        one.person_keys: (one.person.box_secret, one.person.sign_secret),
        one.instance_keys: (one.instance.box_secret, one.instance.sign_secret)}
    assert (out / "private").stat().st_mode & 0o777 == 0o700
    assert L.violations(out, SECRET) == []


def test_import_reports_corrupt_and_stray_files(tmp_path: Path) -> None:
    # a Person of the dump (not on the identity path) with changed content, a BLOB, a CLOB
    # referenced by nothing, a file with a bad name, a head pointing nowhere
    victim = next(e for e in ENTRIES if e.get("recipe") == "Person" and not e["isIdObject"]
                  and e["file"] != F.DUMP["ownerIdHash"] and "carol" in e["microdata"])
    one = F.write_dump_store(tmp_path / "one", SECRET, extra_files={
        F.sha(b"\x00\xffblob"): b"\x00\xffblob", F.sha("hello world"): b"hello world",
        # objects.md §2.3 vector: the BLOB 01 02 03 with a flipped byte under its name
        "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81": b"\x01\x02\x04"})
    F.object_path(one.path, victim["file"]).write_text(victim["microdata"].replace("carol", "mallory"))
    (one.path / "objects" / "README").write_text("x")
    (one.path / "vheads" / ("0" * 64)).write_text("1" * 64)
    rep = import_one(one.path, tmp_path / "lama", SECRET)
    reasons = {p.what: p.reason for p in rep.problems}
    assert "does not hash to its name" in reasons[f"objects/{victim['file']}"]
    assert "not a hash" in reasons["objects/README"]
    assert "ID object" in reasons["vheads/" + "0" * 64]
    assert "does not hash to its name" in reasons[
        "objects/039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81"]
    assert rep.counts["blobs"] == 1 and rep.counts["clobs"] == 1
    s = _store(rep.path)
    try:
        assert not s.has(victim["file"])
        assert not s.has("039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81")
        # objects.md §2.3 vectors: CLOB "hello world", unreferenced -> taken as a CLOB
        assert s.kind("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9") == "clob"
        assert s.read_blob(F.sha(b"\x00\xffblob")) == b"\x00\xffblob"
        assert s.kind(F.sha(b"\x00\xffblob")) == "blob"
    finally:
        s.close()


def test_wrong_secret_leaves_target_untouched(tmp_path: Path) -> None:
    F.write_dump_store(tmp_path / "one", SECRET)
    (tmp_path / "lama").mkdir()
    (tmp_path / "lama" / "keep").write_text("mine")
    before = F.tree_snapshot(tmp_path / "lama")
    with pytest.raises(KeychainError) as ei:
        import_one(tmp_path / "one", tmp_path / "lama", "not-the-secret")
    assert ei.value.code == "CYENC-SYMDEC"
    assert F.tree_snapshot(tmp_path / "lama") == before


def test_missing_and_non_one_directories(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as ei:
        import_one(tmp_path / "nope", tmp_path / "lama", SECRET)
    assert ei.value.code == "LAMA-MIGRATE-NODIR" and isinstance(ei.value, LookupError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError) as ei2:
        import_one(tmp_path / "empty", tmp_path / "lama", SECRET)
    assert ei2.value.code == "LAMA-MIGRATE-NOTONE"
    assert not (tmp_path / "lama").exists()


def test_no_keychain_or_identity_is_fatal_and_leaves_nothing(tmp_path: Path) -> None:
    one = F.write_dump_store(tmp_path / "one", SECRET)
    # keychain without the instance's keys: no local identity
    for p in (one.path / "private").iterdir():
        if p.name.startswith(one.instance_keys):
            p.unlink()
    with pytest.raises(KeychainError) as ei:
        import_one(one.path, tmp_path / "lama", SECRET)
    assert ei.value.code == "LAMA-MIGRATE-NOIDENTITY"
    assert not (tmp_path / "lama").exists() or F.tree_snapshot(tmp_path / "lama") == {}
    for p in (one.path / "private").iterdir():
        p.unlink()
    with pytest.raises(KeychainError) as ei2:
        import_one(one.path, tmp_path / "lama", SECRET)
    assert ei2.value.code == "LAMA-MIGRATE-NOKEYCHAIN"


def test_existing_instance_is_not_overwritten(tmp_path: Path) -> None:
    F.write_dump_store(tmp_path / "one", SECRET)
    rep = import_one(tmp_path / "one", tmp_path / "lama", SECRET)
    before = F.tree_snapshot(Path(rep.path))
    with pytest.raises(StoreError) as ei:
        import_one(tmp_path / "one", tmp_path / "lama", SECRET)
    assert ei.value.code == "LAMA-INSTANCE-EXISTS"
    assert F.tree_snapshot(Path(rep.path)) == before


# --------------------------------------------------------------------------------------------
# export, round trip, chat


def _contents(store: Any) -> dict[str, tuple[str | None, bytes]]:
    out = {}
    for h in store.hashes():
        k = store.kind(h)
        out[h] = (k, store.get(h).encode() if k in ("object", "id") else store.read_blob(h))
    return out


def _heads(store: Any) -> dict[str, str | None]:
    return {h: store.get_head(h) for h in store.hashes() if store.kind(h) == "id"}


def _chat_pair(tmp: Path) -> tuple[Any, Any]:
    from chat_util import make, pair
    from lama.chat import Chat

    a, b = make(tmp, "alice"), make(tmp, "bob")
    ca, cb = Chat(a, events=False), Chat(b, events=False)
    pair(ca, cb)
    return ca, cb


def test_round_trip_with_a_conversation(tmp_path: Path) -> None:
    from chat_util import sync
    from lama.chat import Chat

    ca, cb = _chat_pair(tmp_path)
    try:
        blob = os.urandom(3000)
        (tmp_path / "photo.bin").write_bytes(blob)
        ca.send(cb.me, "hello from alice", [str(tmp_path / "photo.bin")])
        sync(ca, cb)
        cb.send(ca.me, "hi alice, bob here")
        sync(ca, cb)
        expected = [(m.sender, m.text) for m in ca.messages(cb.me)]
        assert len(expected) == 2
        bob_id = cb.me
    finally:
        for c in (ca, cb):
            c.close()
            c.instance.close()
    src = tmp_path / "alice"
    alice_dir = next(p for p in src.iterdir() if (p / "instance.json").is_file())
    s = _store(str(alice_dir))
    try:
        objects, heads = _contents(s), _heads(s)
    finally:
        s.close()
    keys = _keys_with(alice_dir, SECRET_OF["alice"])

    ex = export_one(src, tmp_path / "OneDB", SECRET_OF["alice"])
    one_inst = Path(ex.path)
    assert one_inst.name == alice_dir.name  # calculateInstanceIdHash names both
    # the ONE layout (objects.md §5.2): one file per hash, heads without newline, Keys maps,
    # keychain readable with the spec's formats alone
    assert sorted(p.name for p in (one_inst / "objects").iterdir()) == sorted(objects)
    for h, (_, content) in objects.items():
        assert F.sha((one_inst / "objects" / h).read_bytes()) == h
        assert (one_inst / "objects" / h).read_bytes() == content
    for id_hash, head in heads.items():
        if head is not None:
            assert (one_inst / "vheads" / id_hash).read_text() == head
    with Instance.open(src, SECRET_OF["alice"]) as inst:
        pkeys = (one_inst / "rmaps" / f"{inst.person_id}.Object.Keys").read_text()
        assert inst.person_keys + "\n" in pkeys and pkeys.endswith("\n")
        ikeys = (one_inst / "rmaps" / f"{inst.person_id}.IdObject.Instance").read_text()
        assert inst.instance_id + "\n" in ikeys
    ref_keys = F.open_keychain(one_inst / "private", SECRET_OF["alice"])
    assert ref_keys == keys
    assert L.violations(one_inst, SECRET_OF["alice"]) == []

    # ... and back: identical objects, heads and keys in a fresh lama instance
    rep = import_one(tmp_path / "OneDB", tmp_path / "back", SECRET_OF["alice"])
    assert rep.problems == []
    assert Path(rep.path).name == alice_dir.name
    s2 = _store(rep.path)
    try:
        assert _contents(s2) == objects
        assert _heads(s2) == heads
    finally:
        s2.close()
    assert _keys_with(Path(rep.path), SECRET_OF["alice"]) == keys

    # the imported instance shows the conversation and the contact
    with Instance.open(rep.path, SECRET_OF["alice"]) as inst:
        with Chat(inst, events=False) as chat:
            assert [c.person_id for c in chat.contacts()] == [bob_id]
            assert [(m.sender, m.text) for m in chat.messages(bob_id)] == expected
            first = [m for m in chat.messages(bob_id) if m.text == "hello from alice"][0]
            assert len(first.attachments) == 1

    # the CLI shows it too (no lama serve running: it opens the instance with the secret)
    r = _lama("messages", "bob@example.com", "--dir", str(tmp_path / "back"),
              secret=SECRET_OF["alice"])
    assert r.returncode == 0, r.stderr
    assert "hello from alice" in r.stdout and "hi alice, bob here" in r.stdout


# --------------------------------------------------------------------------------------------
# the app's own recipes (objects.md §3: Recipe objects in the store, Instance.recipe)

_REOPEN = """
import json, sys
from pathlib import Path
from lama.identity.instance import Instance
from lama.migrate import export_one, import_one
from lama.objects import recipes
lama_dir, out, back, secret = sys.argv[1:5]
before = set(recipes.names())
with Instance.open(lama_dir, secret) as inst:
    notes = [dict(o, tags=sorted(o["tags"])) for o in map(inst.store.get_object, sys.argv[5:])]
ex = export_one(lama_dir, out, secret)
rep = import_one(out, back, secret)
print(json.dumps({"before": sorted(before), "after": sorted(recipes.names()),
                  "notes": notes, "export": ex.as_dict(), "import": rep.as_dict()}))
"""


def test_app_recipes_round_trip(tmp_path: Path) -> None:
    """A ONE store of an app with its own recipes: its Recipe objects are loaded (the one
    Instance.recipe names before the objects, the one only in the store after them - the
    objects refused for their unknown type are taken then), kept in the lama instance and
    loaded again when it is opened in a new process; a conflicting and an invalid recipe are
    reported, their Recipe objects imported all the same. lama -> ONE layout -> lama: the same
    bytes under the same names, the same heads, and the app's reverse map."""
    one = F.write_app_store(tmp_path / "one", SECRET)
    ghost = '<div itemscope itemtype="//refin.io/MigGhost"><span itemprop="x">1</span></div>'
    (one.path / "objects" / F.sha(ghost)).write_text(ghost)  # a type no recipe defines
    seen: list[tuple[str, int, int]] = []
    rep = import_one(one.path, tmp_path / "lama", SECRET, progress=lambda *a: seen.append(a))
    reasons = {p.what: p.reason for p in rep.problems}
    assert set(reasons) == {f"objects/{h}" for h in [*one.bad.values(), F.sha(ghost)]}, reasons
    # set aside in the objects pass: the objects of the recipe found in the store, the ghost
    # (MigNote's recipe is in Instance.recipe: its objects are stored in the objects pass)
    tags = sum(1 for t in one.app_objects.values() if t == "MigTag")
    assert [a for a in seen if a[0] == "app_objects"][-1] == ("app_objects", tags + 1, tags + 1)
    assert "not found in recipes" in reasons[f"objects/{F.sha(ghost)}"]  # OR-ET1 / OR-GR1
    assert "conflicts with lama's recipe" in reasons[f"objects/{one.bad['conflict']}"]
    assert "OR-ADDR1" in reasons[f"objects/{one.bad['conflict']}"]
    assert "not a valid recipe" in reasons[f"objects/{one.bad['invalid']}"]
    assert rep.counts["recipes"] == 2 and rep.counts["blobs"] == 1
    info = json.loads((Path(rep.path) / "instance.json").read_text())
    assert info["recipes"] == sorted(one.recipes.values())
    s = _store(rep.path)
    try:
        objects, heads = _contents(s), _heads(s)
    finally:
        s.close()
    # every file of the ONE store is in the lama store, byte for byte (nothing lost: the bad
    # Recipe objects too), every head as ONE had it
    assert {h: c for h, (_, c) in objects.items()} == one.files
    assert {i: h for i, h in heads.items() if h is not None} == one.heads
    # ... the app's objects as objects (MigTag's recipe is loaded after the objects pass: its
    # objects were refused by type first, then taken), not as CLOBs
    assert {h: objects[h][0] for h in one.app_objects} == {
        h: "id" if one.files[h].startswith(b"<div data-id-object") else "object"
        for h in one.app_objects}

    # a new process (nothing registered): open, export, import again
    notes = sorted(h for h, t in one.app_objects.items()
                   if t == "MigNote" and objects[h][0] == "object")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _REOPEN, rep.path, str(tmp_path / "OneDB"),
                        str(tmp_path / "back"), SECRET, *notes], capture_output=True, text=True,
                       env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert "MigNote" not in got["before"] and {"MigNote", "MigTag"} <= set(got["after"])
    assert sorted((n["text"], n["tags"]) for n in got["notes"]) == [
        ("final text", ["a", "b", "z"]), ("first & draft", ["a", "b"])]
    assert got["export"]["problems"] == [] and got["export"]["counts"]["blobs"] == 1
    assert got["import"]["problems"] == [p for p in got_problems(rep)
                                         if p["what"] != f"objects/{F.sha(ghost)}"]
    out = Path(got["export"]["path"])
    assert out.name == one.path.name
    written = {p.name: p.read_bytes() for p in (out / "objects").iterdir()}
    assert written == one.files
    assert {p.name: p.read_text() for p in (out / "vheads").iterdir()} == one.heads
    # the map the Instance enables for the app's type (objects.md §5.3: MigNote by "tag")
    tag = next(h for h, t in one.app_objects.items() if t == "MigTag"
               and b"work" in one.files[h])
    lines = (out / "rmaps" / f"{tag}.Object.MigNote").read_text().split("\n")
    assert lines[-1] == "" and sorted(lines[:-1]) == notes
    assert L.violations(out, SECRET) == []
    s2 = _store(got["import"]["path"])
    try:
        assert _contents(s2) == objects and _heads(s2) == heads
    finally:
        s2.close()


_CONFLICT_ON_OPEN = """
import logging, sys
from lama.identity.instance import Instance
from lama.objects import recipes
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(name)s %(message)s")
recipes.register({"name": "MigNote", "rule": [{"itemprop": "other", "isId": True}]})
with Instance.open(sys.argv[1], sys.argv[2]) as inst:
    print("open", sorted(n for n in recipes.names() if n.startswith("Mig")))
"""


def test_app_recipe_that_cannot_be_loaded_on_open_is_logged(tmp_path: Path) -> None:
    """Another recipe of the name registered in the process first: the instance opens, a
    warning names the Recipe object, the other recipes of the instance are loaded."""
    one = F.write_app_store(tmp_path / "one", SECRET)
    rep = import_one(one.path, tmp_path / "lama", SECRET)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _CONFLICT_ON_OPEN, rep.path, SECRET],
                       capture_output=True, text=True, env=env, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert f"lama.instance recipe {one.recipes['MigNote']} of this instance not loaded" in r.stdout
    assert "OR-ADDR1" in r.stdout and "open ['MigNote', 'MigTag']" in r.stdout


def got_problems(rep: Any) -> list[dict[str, str]]:
    return [{"what": p.what, "reason": p.reason} for p in rep.problems]


SECRET_OF = {"alice": "chat-test-secret-alice", "bob": "chat-test-secret-bob"}


def _keys_with(path: Path, secret: str) -> dict[str, tuple[bytes, bytes]]:
    kc = Keychain(path / "private")
    kc.unlock(secret)
    out = {}
    for p in sorted((path / "private").glob("*.encrypt")):
        h = p.name.split(".")[0]
        k = kc.load_keys(h)
        out[h] = (k.encryption_secret, k.sign_secret)
    kc.lock()
    return out


def test_export_of_a_new_instance_is_laid_out_as_one_writes_it(tmp_path: Path) -> None:
    """objects.md §5.2: a freshly initialised instance is exactly these files - and the layout
    checker (tests/one_layout.py) finds nothing wrong with it."""
    inst = Instance.create(tmp_path / "lama", email="alice@example.com",
                           instance_name="alice-laptop", secret=SECRET)
    pid, iid, pk, ik = inst.person_id, inst.instance_id, inst.person_keys, inst.instance_keys
    inst.close()
    out = Path(export_one(tmp_path / "lama", tmp_path / "OneDB", SECRET).path)
    assert L.violations(out, SECRET) == []
    objs = {p.name: p.read_text() for p in (out / "objects").iterdir()}
    kinds = sorted(re.match(r'<div (?:data-id-object="true" )?itemscope itemtype="//refin\.io/'
                            r'(\w+)"', t).group(1) + ("/id" if "data-id-object" in t else "")
                   for t in objs.values())
    assert kinds == ["Instance", "Instance/id", "Keys", "Keys", "Person", "Person/id",
                     "VersionNodeEdge", "VersionNodeEdge"]
    assert {pid, iid, pk, ik} <= set(objs)
    assert sorted(p.name for p in (out / "vheads").iterdir()) == sorted([pid, iid])
    assert sorted(p.name for p in (out / "rmaps").iterdir()) == sorted(
        [f"{pid}.Object.Keys", f"{iid}.Object.Keys", f"{pid}.IdObject.Instance"])
    assert sorted(p.name for p in (out / "private").iterdir()) == sorted(
        ["keychain_salt", "keychain_masterkey", f"{pk}.encrypt", f"{pk}.sign",
         f"{ik}.encrypt", f"{ik}.sign"])


@pytest.mark.parametrize("damage", ["vhead-newline", "rmap-twice", "rmap-missing", "renamed",
                                    "short-sign", "private-mode", "tmp-file", "rmap-stray"])
def test_layout_checker_finds_each_broken_rule(tmp_path: Path, damage: str) -> None:
    """The layout checker is no rubber stamp: each broken rule of an exported store is found."""
    inst = Instance.create(tmp_path / "lama", email="e@example.com", instance_name="e",
                           secret=SECRET)
    pid, pk = inst.person_id, inst.person_keys
    inst.close()
    out = Path(export_one(tmp_path / "lama", tmp_path / "OneDB", SECRET).path)
    rmap = out / "rmaps" / f"{pid}.Object.Keys"
    if damage == "vhead-newline":
        with open(out / "vheads" / pid, "a") as f:
            f.write("\n")
    elif damage == "rmap-twice":
        with open(rmap, "a") as f:
            f.write(pk + "\n")
    elif damage == "rmap-missing":
        rmap.unlink()
    elif damage == "renamed":
        (out / "objects" / pk).rename(out / "objects" / ("0" * 64))
    elif damage == "short-sign":
        p = out / "private" / f"{pk}.sign"
        p.write_bytes(p.read_bytes()[:-1])
    elif damage == "private-mode":
        (out / "private").chmod(0o755)
    elif damage == "tmp-file":
        (out / "tmp" / "x").write_bytes(b"")
    elif damage == "rmap-stray":
        (out / "rmaps" / f"{pid}.Object.Person").write_text(pid + "\n")
    assert L.violations(out, SECRET) != []


def test_export_errors_leave_nothing(tmp_path: Path) -> None:
    inst = Instance.create(tmp_path / "lama", email="dave@example.com", instance_name="d",
                           secret=SECRET)
    inst.close()
    with pytest.raises(KeychainError) as ei:
        export_one(tmp_path / "lama", tmp_path / "OneDB", "wrong")
    assert ei.value.code == "CYENC-SYMDEC"
    assert not (tmp_path / "OneDB").exists()
    target = tmp_path / "OneDB" / calculate_instance_id_hash("d", "dave@example.com")
    target.mkdir(parents=True)
    (target / "x").write_text("keep")
    with pytest.raises(StoreError) as ei2:
        export_one(tmp_path / "lama", tmp_path / "OneDB", SECRET)
    assert ei2.value.code == "LAMA-MIGRATE-EXISTS"
    assert F.tree_snapshot(target) == {"x": b"keep"}
    with pytest.raises(LamaError):
        export_one(tmp_path / "nothing", tmp_path / "OneDB2", SECRET)


# --------------------------------------------------------------------------------------------
# CLI


def _lama(*args: str, secret: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMA_SECRET"}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    if secret is not None:
        env["LAMA_SECRET"] = secret
    return subprocess.run([sys.executable, "-m", "lama.cli", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, env=env, timeout=120,
                          start_new_session=True)


def test_cli_import_and_export(tmp_path: Path) -> None:
    # the dump's Harness objects need recipes the CLI process does not have: reported, the
    # rest imported, exit status 0
    F.write_dump_store(tmp_path / "one", SECRET)
    nosecret = _lama("import-one", str(tmp_path / "one"), "--dir", str(tmp_path / "lama"))
    assert nosecret.returncode == 2 and "LAMA_SECRET" in nosecret.stderr
    assert not (tmp_path / "lama").exists()
    wrong = _lama("import-one", str(tmp_path / "one"), "--dir", str(tmp_path / "lama"),
                  secret="wrong")
    assert wrong.returncode == 1 and "CYENC-SYMDEC" in wrong.stderr
    assert "Traceback" not in wrong.stderr and not (tmp_path / "lama").exists()
    missing = _lama("import-one", str(tmp_path / "nope"), "--dir", str(tmp_path / "lama"),
                    secret=SECRET)
    assert missing.returncode == 1 and "LAMA-MIGRATE-NODIR" in missing.stderr
    r = _lama("import-one", str(tmp_path / "one"), "--dir", str(tmp_path / "lama"), "--json",
              secret=SECRET)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["instance_id"] == F.DUMP["instanceIdHash"]
    reasons = " ".join(p["reason"] for p in rep["problems"])
    assert "OR-GR1" in reasons or "M2O-PHM1" in reasons or "Harness" in reasons
    w = _lama("whoami", "--dir", str(tmp_path / "lama"), "--check-secret", secret=SECRET)
    assert w.returncode == 0 and F.DUMP["ownerIdHash"] in w.stdout
    e = _lama("export-one", str(tmp_path / "OneDB"), "--dir", str(tmp_path / "lama"), secret=SECRET)
    assert e.returncode == 0, e.stderr
    assert "into:" in e.stdout
    assert (tmp_path / "OneDB" / F.DUMP["instanceIdHash"] / "vheads" / F.DUMP["ownerIdHash"]).is_file()


# --------------------------------------------------------------------------------------------
# lama serve after an import: the imported contact syncs


@pytest.mark.timeout(240)
def test_serve_syncs_with_imported_contacts(tmp_path: Path) -> None:
    """A pairs with B (``lama serve`` processes through a comm server process), they chat; A
    stops, is exported to ONE's layout and imported as a new lama instance A'; A' serves and
    chats with B, who never noticed - same identity, same keys, the contact taken from the
    imported objects."""
    from test_chat_e2e import instance_dir, lama, pair, req, serve, wait_history
    from test_pairing_e2e import Proc, comm_server, free_port, init

    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    procs: list[Proc] = []
    try:
        procs.append(comm_server(port))
        a, b = init(tmp_path, "a"), init(tmp_path, "b")
        da, db = instance_dir(tmp_path, "a"), instance_dir(tmp_path, "b")
        pa, pb = serve(tmp_path, "a", url), serve(tmp_path, "b", url)
        procs += [pa, pb]
        pair(da, db)
        A, B = b["person_id"], a["person_id"]  # whom A and B talk to
        req(da, "send", contact=A, text="a1 before")
        req(db, "send", contact=B, text="b1 before")
        texts = ["a1 before", "b1 before"]
        wait_history(da, A, texts)
        wait_history(db, B, texts)
        pa.stop()
        assert pa.p.returncode == 0

        r = lama("export-one", str(tmp_path / "OneDB"), "--dir", str(tmp_path / "a"), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["problems"] == []
        r = lama("import-one", str(tmp_path / "OneDB"), "--dir", str(tmp_path / "a2"), "--json")
        assert r.returncode == 0, r.stderr
        rep = json.loads(r.stdout)
        assert rep["problems"] == [] and rep["person_id"] == B
        da2 = instance_dir(tmp_path, "a2")
        assert da2.name == da.name
        r = lama("messages", b["email"], "--dir", str(tmp_path / "a2"))  # no server running
        assert r.returncode == 0 and "a1 before" in r.stdout and "b1 before" in r.stdout, r

        procs.append(serve(tmp_path, "a2", url))
        assert [c["person_id"] for c in req(da2, "contacts")["contacts"]] == [A]
        req(da2, "send", contact=A, text="a2 after the import")
        req(db, "send", contact=B, text="b2 to the imported")
        texts += ["a2 after the import", "b2 to the imported"]
        h2 = wait_history(da2, A, texts)
        hb = wait_history(db, B, texts)
        assert sorted(m["id"] for m in h2) == sorted(m["id"] for m in hb)
    finally:
        for p in reversed(procs):
            p.stop()


def test_cli_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    """stderr a terminal (a pty): a rich progress bar with the phases; not a terminal: none."""
    import pty
    import select

    F.write_dump_store(tmp_path / "one", SECRET)
    env = {k: v for k, v in os.environ.items() if k != "LAMA_SECRET"}
    env.update(PYTHONPATH=str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", ""),
               LAMA_SECRET=SECRET, COLUMNS="100", TERM="xterm")
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "lama.cli", "import-one",
                              str(tmp_path / "one"), "--dir", str(tmp_path / "lama")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                             env=env, start_new_session=True)
        os.close(slave)
        slave = -1
        err = b""
        while True:  # drain the pty until the child closes it (bounded by the timeout)
            r, _, _ = select.select([master], [], [], 60)
            if not r:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child is gone
                break
            if not chunk:
                break
            err += chunk
        out, _ = p.communicate(timeout=60)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert p.returncode == 0, err
    text = err.decode("utf-8", "replace")
    assert "objects" in text and "version heads" in text and "keys" in text
    assert "━" in text or "%" in text or "/" in text  # the bar and its m/n column
    assert b"imported" in out
    # not a terminal: the same command prints no bar (test_cli_import_and_export: stderr empty)
    r = _lama("export-one", str(tmp_path / "OneDB"), "--dir", str(tmp_path / "lama"), secret=SECRET)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def _at_a_prompt(args: list[str], typed: str) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """``lama *args`` with a terminal (a pty) on stdin, no LAMA_SECRET and no CI: ``typed`` and
    a newline are written to the terminal once the hidden prompt is on stderr. Returns the
    result and what the terminal showed (the echo, if any) after the prompt."""
    import pty
    import select

    env = {k: v for k, v in os.environ.items() if k not in ("LAMA_SECRET", "CI")}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    master, slave = pty.openpty()
    try:
        # a new session without a controlling terminal: getpass turns the echo off on stdin
        p = subprocess.Popen([sys.executable, "-m", "lama.cli", *args], stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
        assert p.stderr is not None
        err = ""
        while "Instance secret: " not in err:  # bounded: 60 s without output ends it
            r, _, _ = select.select([p.stderr], [], [], 60)
            assert r, f"no prompt: {err!r}"
            chunk = os.read(p.stderr.fileno(), 4096).decode()
            assert chunk, f"no prompt: {err!r}"
            err += chunk
        os.write(master, typed.encode() + b"\n")
        out, rest = p.communicate(timeout=120)
        shown = b""
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(slave)
        os.close(master)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err + rest), shown


def test_cli_import_and_export_with_the_secret_at_a_prompt(tmp_path: Path) -> None:
    """Without LAMA_SECRET, on a terminal, ``import-one`` and ``export-one`` ask for the
    secret with a hidden prompt, as ``lama init`` does: a wrong one is refused and writes
    nothing, the right one imports; the typed secret is never echoed."""
    F.write_dump_store(tmp_path / "one", SECRET)
    r, shown = _at_a_prompt(["import-one", str(tmp_path / "one"), "--dir", str(tmp_path / "lama")],
                            "wrong")
    assert r.returncode == 1 and "CYENC-SYMDEC" in r.stderr, r.stderr
    assert not (tmp_path / "lama").exists()
    assert b"wrong" not in shown
    r, shown = _at_a_prompt(["import-one", str(tmp_path / "one"), "--dir", str(tmp_path / "lama"),
                             "--json"], SECRET)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["instance_id"] == F.DUMP["instanceIdHash"]
    assert SECRET.encode() not in shown
    w = _lama("whoami", "--dir", str(tmp_path / "lama"), "--check-secret", secret=SECRET)
    assert w.returncode == 0 and F.DUMP["ownerIdHash"] in w.stdout
    r, _ = _at_a_prompt(["export-one", str(tmp_path / "OneDB"), "--dir", str(tmp_path / "lama")],
                        SECRET)
    assert r.returncode == 0 and "into:" in r.stdout, r.stderr
    assert (tmp_path / "OneDB" / F.DUMP["instanceIdHash"] / "vheads" / F.DUMP["ownerIdHash"]).is_file()


def test_cli_never_prompts_with_ci_true(tmp_path: Path) -> None:
    """A terminal on stdin but CI=true and no LAMA_SECRET: a clear error, no prompt, nothing
    written (without CI=true the same terminal would get the hidden prompt)."""
    import pty

    F.write_dump_store(tmp_path / "one", SECRET)
    env = {k: v for k, v in os.environ.items() if k != "LAMA_SECRET"}
    env.update(PYTHONPATH=str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", ""), CI="true")
    master, slave = pty.openpty()
    try:
        r = subprocess.run([sys.executable, "-m", "lama.cli", "import-one", str(tmp_path / "one"),
                            "--dir", str(tmp_path / "lama")], stdin=slave, capture_output=True,
                           text=True, env=env, timeout=60, start_new_session=True)
    finally:
        os.close(slave)
        os.close(master)
    assert r.returncode == 2 and "LAMA_SECRET" in r.stderr, r.stderr
    assert "secret:" not in r.stdout.lower()
    assert not (tmp_path / "lama").exists()
