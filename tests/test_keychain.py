"""The keychain (objects.md §7.4) against the recorded reference keychain of
tests/vectors/crypto-and-frames.json (section ``keychain``), and its own rules: layout and sizes,
write-once key files, wrong secret changes nothing, secret change re-encrypts only the master
key, recovery of an interrupted change, async variants.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

import lama._lama as rust_core
import lama._pure.crypto as pure_core
from lama.identity import keychain as kc
from lama._core import core
from lama.errors import CryptoError, KeychainError, MicrodataError, StoreError
from lama.identity.keychain import Keychain, SecretKeys

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "crypto-and-frames.json").read_text(encoding="utf-8")
)
K = VECTORS["keychain"]
OWNERS = ("person_keys", "instance_keys")


def h(s: str) -> bytes:
    return bytes.fromhex(s)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


@pytest.fixture
def reference_dir(tmp_path: Path) -> Path:
    """The reference keychain of peer A, written file by file as the vectors record it."""
    private = tmp_path / "private"
    private.mkdir()
    (private / kc.SALT_FILE).write_bytes(h(K["file_keychain_salt"]["bytes_hex"]))
    (private / kc.MASTERKEY_FILE).write_bytes(h(K["file_keychain_masterkey"]["bytes_hex"]))
    for who in OWNERS:
        for f in ("file_encrypt", "file_sign"):
            (private / K[who][f]["name"]).write_bytes(h(K[who][f]["bytes_hex"]))
    return private


# --- the reference keychain ------------------------------------------------------------------


def test_reference_files_and_derivation():
    salt = h(K["file_keychain_salt"]["bytes_hex"])
    assert len(salt) == K["file_keychain_salt"]["len"] == 16
    assert (K["scrypt"]["N"], K["scrypt"]["r"], K["scrypt"]["p"], K["scrypt"]["dkLen"]) == (
        kc.SCRYPT_N,
        kc.SCRYPT_R,
        kc.SCRYPT_P,
        kc.SCRYPT_DKLEN,
    )
    derived = kc.derive_key(K["secret"], salt)
    assert derived == h(K["derived_key"])
    mk = K["file_keychain_masterkey"]
    sealed = h(mk["bytes_hex"])
    assert len(sealed) == mk["len"] == 72 and sealed[:24] == h(mk["nonce"])
    master = core.secretbox_open_embedded(sealed, derived)
    assert master == h(mk["plaintext_master_key"])
    # re-sealing with the recorded nonce gives the recorded file
    assert core.secretbox_seal_embedded(master, derived, h(mk["nonce"])) == sealed
    for who in OWNERS:
        w = K[who]
        assert hashlib.sha256(w["keys_object_microdata"].encode()).hexdigest() == w["keys_object_hash"]
        for f, plain, size in (
            ("file_encrypt", "plaintext_secret_encryption_key", 72),
            ("file_sign", "plaintext_secret_sign_key", 104),
        ):
            data = h(w[f]["bytes_hex"])
            assert len(data) == w[f]["len"] == size
            assert w[f]["name"] == w["keys_object_hash"] + (".encrypt" if f == "file_encrypt" else ".sign")
            assert core.secretbox_open_embedded(data, master) == h(w[f][plain])
            assert core.secretbox_seal_embedded(h(w[f][plain]), master, h(w[f]["nonce"])) == data


def test_secret_is_nfkc_utf8():
    assert K["secret"].encode() == h(K["secret_utf8_nfkc_hex"])
    salt = bytes(16)
    # composed and decomposed forms, and a compatibility ligature, give the same key
    assert kc.derive_key("caf\u00e9", salt) == kc.derive_key("cafe\u0301", salt)
    assert kc.derive_key("\ufb01le", salt) == kc.derive_key("file", salt)
    assert kc.derive_key("caf\u00e9", salt) == core.scrypt("café".encode(), salt, 1024, 8, 1, 32)
    with pytest.raises(TypeError):
        kc.derive_key(b"bytes", salt)  # type: ignore[arg-type]


def test_open_reference_keychain(reference_dir: Path):
    chain = Keychain(reference_dir)
    assert chain.exists() and not chain.unlocked
    chain.unlock(K["secret"])
    assert chain.unlocked
    for who in OWNERS:
        w = K[who]
        microdata = w["keys_object_microdata"]
        pub = re.search(r'itemprop="publicKey">([0-9a-f]{64})<', microdata).group(1)
        pub_sign = re.search(r'itemprop="publicSignKey">([0-9a-f]{64})<', microdata).group(1)
        assert (pub, pub_sign) == (w["public_encryption_key"], w["public_sign_key"])
        assert chain.has_keys(w["keys_object_hash"])
        keys = chain.load_keys(w["keys_object_hash"], h(pub), h(pub_sign))
        assert keys.encryption_secret == h(w["file_encrypt"]["plaintext_secret_encryption_key"])
        assert keys.sign_secret == h(w["file_sign"]["plaintext_secret_sign_key"])
        assert keys.public_key.hex() == pub and keys.public_sign_key.hex() == pub_sign
        assert keys.keys_object(w["owner"]) == {
            "$type$": "Keys",
            "owner": w["owner"],
            "publicKey": pub,
            "publicSignKey": pub_sign,
        }
        # the keys work: sign and verify with the public key of the Keys object
        sig = core.sign_detached(b"proof", keys.sign_secret)
        core.sign_verify_detached(b"proof", sig, h(pub_sign))
    # a mismatching public key is refused
    person, instance = K["person_keys"], K["instance_keys"]
    with pytest.raises(KeychainError) as e:
        chain.load_keys(person["keys_object_hash"], h(instance["public_encryption_key"]))
    assert e.value.code == "LAMA-KEYMISMATCH"
    with pytest.raises(KeychainError) as e:
        chain.load_keys(person["keys_object_hash"], None, h(instance["public_sign_key"]))
    assert e.value.code == "LAMA-KEYMISMATCH"


def test_wrong_secret_changes_nothing(reference_dir: Path):
    before = snapshot(reference_dir)
    chain = Keychain(reference_dir)
    for wrong in ("", "vectors-secret-B", K["secret"] + " "):
        with pytest.raises(KeychainError) as e:
            chain.unlock(wrong)
        assert e.value.code == "CYENC-SYMDEC"
        assert K["secret"] not in str(e.value)
        assert not wrong or wrong not in str(e.value)
        with pytest.raises(KeychainError) as e:
            chain.change_secret(wrong, "new secret")
        assert e.value.code == "CYENC-SYMDEC"
        with pytest.raises(KeychainError):
            chain.open(wrong)
    assert not chain.unlocked
    assert snapshot(reference_dir) == before


def test_locked_keychain_refuses_keys(reference_dir: Path):
    chain = Keychain(reference_dir)
    h1 = K["person_keys"]["keys_object_hash"]
    with pytest.raises(KeychainError) as e:
        chain.load_keys(h1)
    assert e.value.code == "KEYMKM-NOKEY"
    chain.unlock(K["secret"])
    chain.load_keys(h1)
    chain.lock()
    assert not chain.unlocked
    with pytest.raises(KeychainError) as e:
        chain.store_keys("ab" * 32, SecretKeys.generate())
    assert e.value.code == "KEYMKM-NOKEY"


def test_missing_keychain(tmp_path: Path):
    chain = Keychain(tmp_path / "nothing")
    assert not chain.exists()
    with pytest.raises(KeychainError) as e:
        chain.unlock("x")
    assert e.value.code == "LAMA-NOKEYCHAIN"
    assert not (tmp_path / "nothing").exists()


# --- writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", [rust_core, pure_core], ids=["rust-reads", "pure-reads"])
def test_create_store_and_reopen(tmp_path: Path, reader):
    private = tmp_path / "inst" / "private"
    chain = Keychain(private)
    chain.open("s3cret \u00e9")  # creates
    assert chain.unlocked and chain.exists()
    keys = SecretKeys.generate()
    keys_hash = hashlib.sha256(b"some Keys microdata").hexdigest()
    assert not chain.has_keys(keys_hash)
    chain.store_keys(keys_hash, keys)
    assert chain.has_keys(keys_hash)
    sizes = {p.name: p.stat().st_size for p in private.iterdir()}
    assert sizes == {
        kc.SALT_FILE: 16,
        kc.MASTERKEY_FILE: 72,
        f"{keys_hash}.encrypt": 72,
        f"{keys_hash}.sign": 104,
    }
    assert all(p.stat().st_mode & 0o077 == 0 for p in private.iterdir())

    # the layout is readable with bare primitives, by either core
    salt = (private / kc.SALT_FILE).read_bytes()
    derived = reader.scrypt("s3cret \u00e9".encode(), salt, 1024, 8, 1, 32)
    master = reader.secretbox_open_embedded((private / kc.MASTERKEY_FILE).read_bytes(), derived)
    assert reader.secretbox_open_embedded((private / f"{keys_hash}.encrypt").read_bytes(), master) == keys.encryption_secret
    assert reader.secretbox_open_embedded((private / f"{keys_hash}.sign").read_bytes(), master) == keys.sign_secret

    again = Keychain(private)
    again.open("s3cret e\u0301")  # NFKC: the same secret
    loaded = again.load_keys(keys_hash, keys.public_key, keys.public_sign_key)
    assert loaded == keys
    with pytest.raises(KeychainError) as e:
        again.load_keys("cd" * 32)
    assert e.value.code == "KEYCH-NODEFKEYS"


def test_reference_layout_written_by_hand_is_read(tmp_path: Path):
    """A keychain in the layout written with bare primitives of the *other* core opens here."""
    other = pure_core if core.CORE_NAME == "rust" else rust_core
    private = tmp_path / "private"
    private.mkdir()
    salt, master = other.random_bytes(16), other.random_bytes(32)
    (private / kc.SALT_FILE).write_bytes(salt)
    derived = other.scrypt(b"pw", salt, 1024, 8, 1, 32)
    (private / kc.MASTERKEY_FILE).write_bytes(other.secretbox_seal_embedded(master, derived))
    box_pk, box_sk = other.box_keypair()
    sign_pk, sign_sk = other.sign_keypair()
    (private / ("ef" * 32 + ".encrypt")).write_bytes(other.secretbox_seal_embedded(box_sk, master))
    (private / ("ef" * 32 + ".sign")).write_bytes(other.secretbox_seal_embedded(sign_sk, master))
    chain = Keychain(private)
    chain.unlock("pw")
    keys = chain.load_keys("ef" * 32, box_pk, sign_pk)
    assert (keys.encryption_secret, keys.sign_secret) == (box_sk, sign_sk)


def test_key_files_are_write_once(reference_dir: Path):
    chain = Keychain(reference_dir)
    chain.unlock(K["secret"])
    before = snapshot(reference_dir)
    existing = K["person_keys"]["keys_object_hash"]
    with pytest.raises(StoreError) as e:
        chain.store_keys(existing, SecretKeys.generate())
    assert e.value.code == "SB-WPBR3"
    # one of the two files existing is enough to refuse, and nothing is written
    lone = "12" * 32
    (reference_dir / f"{lone}.sign").write_bytes(b"x")
    before = snapshot(reference_dir)
    with pytest.raises(StoreError):
        chain.store_keys(lone, SecretKeys.generate())
    assert snapshot(reference_dir) == before
    assert not chain.has_keys(lone)
    # no temporary files are left behind
    assert not [p for p in reference_dir.iterdir() if p.name.endswith(".tmp")]


def test_create_refuses_existing_keychain(reference_dir: Path):
    before = snapshot(reference_dir)
    with pytest.raises(KeychainError) as e:
        Keychain(reference_dir).create("other")
    assert e.value.code == "LAMA-KEYCHAIN-EXISTS"
    assert snapshot(reference_dir) == before


def test_bad_arguments(tmp_path: Path):
    chain = Keychain(tmp_path / "p")
    chain.create("x")
    for bad in ("AB" * 32, "ab" * 31, "../" + "a" * 61, 5):
        with pytest.raises(MicrodataError) as e2:  # the core's one hash rule (check_hash)
            chain.store_keys(bad, SecretKeys.generate())  # type: ignore[arg-type]
        assert e2.value.code == "LAMA-BADHASH"
    with pytest.raises(CryptoError) as e:
        SecretKeys(bytes(31), bytes(64))
    assert e.value.code == "LAMA-KEYLEN"
    _, sign_sk = core.sign_keypair()
    with pytest.raises(CryptoError) as e:
        SecretKeys(bytes(32), sign_sk[:32] + bytes(32))
    assert e.value.code == "LAMA-SIGNKEY"


def test_reprs_hide_secrets(reference_dir: Path):
    chain = Keychain(reference_dir)
    chain.unlock(K["secret"])
    keys = chain.load_keys(K["person_keys"]["keys_object_hash"])
    text = repr(keys) + str(keys) + repr(chain)
    assert keys.encryption_secret.hex() not in text
    assert keys.sign_secret[:32].hex() not in text
    assert K["file_keychain_masterkey"]["plaintext_master_key"] not in text
    assert K["person_keys"]["public_sign_key"] in repr(keys)
    assert "unlocked" in repr(chain)


# --- changing the secret ---------------------------------------------------------------------


def test_change_secret(reference_dir: Path):
    before = snapshot(reference_dir)
    chain = Keychain(reference_dir)
    chain.change_secret(K["secret"], "brand new secret")
    assert chain.unlocked
    after = snapshot(reference_dir)
    assert set(after) == set(before)
    changed = {name for name in after if after[name][0] != before[name][0]}
    assert changed == {kc.SALT_FILE, kc.MASTERKEY_FILE}
    # the master key itself is unchanged
    salt = (reference_dir / kc.SALT_FILE).read_bytes()
    master = core.secretbox_open_embedded(
        (reference_dir / kc.MASTERKEY_FILE).read_bytes(), kc.derive_key("brand new secret", salt)
    )
    assert master == h(K["file_keychain_masterkey"]["plaintext_master_key"])
    fresh = Keychain(reference_dir)
    with pytest.raises(KeychainError):
        fresh.unlock(K["secret"])
    fresh.unlock("brand new secret")
    assert fresh.load_keys(K["instance_keys"]["keys_object_hash"]).sign_secret == h(
        K["instance_keys"]["file_sign"]["plaintext_secret_sign_key"]
    )
    assert not [p for p in reference_dir.iterdir() if p.name.endswith(".new")]


@pytest.mark.parametrize("crash_after", ["staged", "salt_replaced"])
def test_interrupted_secret_change_is_finished_by_unlock(reference_dir: Path, crash_after: str):
    """Simulate a crash of change_secret: both new files staged, and optionally the salt
    already moved into place. Unlocking with the new secret finishes the change."""
    salt = core.random_bytes(16)
    master = h(K["file_keychain_masterkey"]["plaintext_master_key"])
    sealed = core.secretbox_seal_embedded(master, kc.derive_key("new", salt))
    (reference_dir / (kc.SALT_FILE + ".new")).write_bytes(salt)
    (reference_dir / (kc.MASTERKEY_FILE + ".new")).write_bytes(sealed)
    if crash_after == "salt_replaced":
        os.replace(reference_dir / (kc.SALT_FILE + ".new"), reference_dir / kc.SALT_FILE)
    before = snapshot(reference_dir)
    with pytest.raises(KeychainError):
        Keychain(reference_dir).unlock("neither")
    assert snapshot(reference_dir) == before
    chain = Keychain(reference_dir)
    chain.unlock("new")
    assert (reference_dir / kc.SALT_FILE).read_bytes() == salt
    assert (reference_dir / kc.MASTERKEY_FILE).read_bytes() == sealed
    assert not [p for p in reference_dir.iterdir() if p.name.endswith(".new")]
    assert chain.has_keys(K["person_keys"]["keys_object_hash"])


def test_interrupted_change_with_old_secret_is_discarded(reference_dir: Path):
    (reference_dir / (kc.SALT_FILE + ".new")).write_bytes(bytes(16))
    (reference_dir / (kc.MASTERKEY_FILE + ".new")).write_bytes(bytes(72))
    Keychain(reference_dir).unlock(K["secret"])
    assert not [p for p in reference_dir.iterdir() if p.name.endswith(".new")]
    Keychain(reference_dir).unlock(K["secret"])


# --- damaged keychain files ------------------------------------------------------------------


def _replace_with_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_bytes(b"x")


def snapshot_tree(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("name", [kc.SALT_FILE, kc.MASTERKEY_FILE])
def test_keychain_file_that_is_a_directory(reference_dir: Path, name: str):
    """A keychain file replaced by a directory is a KeychainError, not IsADirectoryError."""
    _replace_with_dir(reference_dir / name)
    before = snapshot_tree(reference_dir)
    chain = Keychain(reference_dir)
    for call in (chain.unlock, chain.open):
        with pytest.raises(KeychainError) as e:
            call(K["secret"])
        assert e.value.code == "LAMA-KEYCHAIN-CORRUPT"
        assert "is a directory" in str(e.value) and name in str(e.value)
    with pytest.raises(KeychainError) as e:
        chain.change_secret(K["secret"], "new")
    assert e.value.code == "LAMA-KEYCHAIN-CORRUPT"
    assert not chain.unlocked and snapshot_tree(reference_dir) == before


@pytest.mark.parametrize("suffix", [".encrypt", ".sign"])
def test_key_file_that_is_a_directory(reference_dir: Path, suffix: str):
    keys_hash = K["person_keys"]["keys_object_hash"]
    _replace_with_dir(reference_dir / f"{keys_hash}{suffix}")
    chain = Keychain(reference_dir)
    chain.unlock(K["secret"])
    assert not chain.has_keys(keys_hash)
    with pytest.raises(KeychainError) as e:
        chain.load_keys(keys_hash)
    assert e.value.code == "LAMA-KEYCHAIN-CORRUPT" and "is a directory" in str(e.value)
    # the other key set is unaffected
    chain.load_keys(K["instance_keys"]["keys_object_hash"])


@pytest.mark.parametrize(
    "name,size",
    [(kc.SALT_FILE, 16), (kc.MASTERKEY_FILE, 72), ("person.encrypt", 72), ("person.sign", 104)],
)
@pytest.mark.parametrize("delta", [-1, +1, "empty"])
def test_keychain_file_of_wrong_size(reference_dir: Path, name: str, size: int, delta):
    """A truncated, empty or extended file is reported as corrupt (with its size) instead of
    as a wrong secret or a bare CryptoError."""
    if name.startswith("person"):
        name = K["person_keys"]["keys_object_hash"] + name[len("person"):]
    path = reference_dir / name
    data = path.read_bytes()
    assert len(data) == size
    path.write_bytes(b"" if delta == "empty" else (data[:-1] if delta == -1 else data + b"\0"))
    before = snapshot(reference_dir)
    chain = Keychain(reference_dir)
    with pytest.raises(KeychainError) as e:
        chain.unlock(K["secret"])
        chain.load_keys(K["person_keys"]["keys_object_hash"])
    assert e.value.code == "LAMA-KEYCHAIN-CORRUPT"
    assert f"expected {size}" in str(e.value) and K["secret"] not in str(e.value)
    assert snapshot(reference_dir) == before


def test_unreadable_keychain_file(reference_dir: Path):
    """Any other I/O error (here a symlink loop, which even root cannot read) is a
    KeychainError naming the file."""
    (reference_dir / kc.MASTERKEY_FILE).unlink()
    os.symlink(kc.MASTERKEY_FILE, reference_dir / kc.MASTERKEY_FILE)
    with pytest.raises(KeychainError) as e:
        Keychain(reference_dir).unlock(K["secret"])
    assert e.value.code == "LAMA-KEYCHAIN-UNREADABLE" and kc.MASTERKEY_FILE in str(e.value)
    # the keychain directory itself is a file
    private = reference_dir.parent / "file"
    private.write_bytes(b"")
    with pytest.raises(KeychainError) as e:
        Keychain(private).unlock(K["secret"])
    assert e.value.code == "LAMA-KEYCHAIN-UNREADABLE"


def test_truncated_staged_change_is_not_a_corrupt_keychain(reference_dir: Path):
    """A crash while change_secret wrote its staged master key leaves a short ``.new`` file;
    the change never took effect: a wrong secret is still CYENC-SYMDEC, the old one opens."""
    (reference_dir / (kc.SALT_FILE + ".new")).write_bytes(bytes(16))
    (reference_dir / (kc.MASTERKEY_FILE + ".new")).write_bytes(bytes(30))
    with pytest.raises(KeychainError) as e:
        Keychain(reference_dir).unlock("not the secret")
    assert e.value.code == "CYENC-SYMDEC"
    Keychain(reference_dir).unlock(K["secret"])
    assert not [p for p in reference_dir.iterdir() if p.name.endswith(".new")]


# --- async -----------------------------------------------------------------------------------


def test_async_variants(tmp_path: Path):
    private = tmp_path / "private"

    async def scenario() -> None:
        chain = Keychain(private)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await chain.open_async("one")
        await chain.change_secret_async("one", "two")
        other = Keychain(private)
        await other.unlock_async("two")
        with pytest.raises(KeychainError):
            await Keychain(private).unlock_async("one")
        task.cancel()
        assert ticks > 0  # the event loop kept running while scrypt ran in a thread
        with pytest.raises(KeychainError):
            await Keychain(tmp_path / "fresh").unlock_async("x")
        await Keychain(tmp_path / "fresh").create_async("x")

    asyncio.run(scenario())
