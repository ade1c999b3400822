"""Instance creation and the Instance API (objects.md §7.3, §5.2, §5.3, §2.2 quirk).

Peer A of tests/vectors/crypto-and-frames.json (email alice@peer-a.example, instance name
peer-A, its four recorded key pairs) must give exactly the reference's Person ID, Instance ID
and Keys objects; the spec's alice-laptop example must give the spec's Instance hashes.
Runs against the core selected by LAMA_CORE.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import peer_keys

from lama.identity import instance as instance_mod
from lama.objects import versions
from lama._core import core
from lama.errors import (
    DecryptionError,
    InvalidArgumentError,
    KeychainError,
    LamaError,
    NotFoundError,
    SignatureError,
    StoreError,
)
from lama.identity.instance import Instance, calculate_instance_id_hash, check_email, check_name, read_info
from lama.identity.keychain import Keychain

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "crypto-and-frames.json").read_text(encoding="utf-8")
)
PEER_A = VECTORS["peers"]["A"]
PEER_B = VECTORS["peers"]["B"]
KC = VECTORS["keychain"]
EMAIL_A = "alice@peer-a.example"
NAME_A = "peer-A"
EMAIL_B = "bob@peer-b.example"
SECRET = "correct horse battery staple"


keys = peer_keys


def create_a(base: Path, secret: str = SECRET) -> Instance:
    return Instance.create(
        base,
        email=EMAIL_A,
        instance_name=NAME_A,
        person_name="Alice",
        secret=secret,
        person_keys=keys(PEER_A, "person"),
        instance_keys=keys(PEER_A, "instance"),
    )


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("lock.mdb")
    }


# --- the reference vectors --------------------------------------------------------------------


def test_peer_a_ids_and_keys_match_the_reference(tmp_path: Path) -> None:
    with create_a(tmp_path) as inst:
        assert inst.person_id == PEER_A["person_id_hash"] == KC["person_id_hash"]
        assert inst.instance_id == PEER_A["instance_id_hash"] == KC["instance_id_hash"]
        assert inst.person_keys == KC["person_keys"]["keys_object_hash"]
        assert inst.instance_keys == KC["instance_keys"]["keys_object_hash"]
        assert inst.store.get(inst.person_keys) == KC["person_keys"]["keys_object_microdata"]
        assert inst.store.get(inst.instance_keys) == KC["instance_keys"]["keys_object_microdata"]
        assert inst.person_public_key.hex() == KC["person_keys"]["public_encryption_key"]
        assert inst.person_public_sign_key.hex() == KC["person_keys"]["public_sign_key"]
        assert inst.instance_public_key.hex() == KC["instance_keys"]["public_encryption_key"]
        assert inst.instance_public_sign_key.hex() == KC["instance_keys"]["public_sign_key"]
        # the directory is named by calculateInstanceIdHash
        assert Path(inst.path) == tmp_path / PEER_A["instance_id_hash"]
        assert calculate_instance_id_hash(NAME_A, EMAIL_A) == PEER_A["instance_id_hash"]


def test_fresh_instance_contents(tmp_path: Path) -> None:
    """objects.md §5.2: Person + ID, Instance + ID, two VersionNodeEdges, two Keys; reverse
    maps owner -> Keys and person -> Instance (ID object); two complete key sets."""
    with create_a(tmp_path) as inst:
        store = inst.store
        person = versions.current(store, inst.person_id)
        assert person == {"$type$": "Person", "email": EMAIL_A, "name": "Alice"}
        inst_obj = versions.current(store, inst.instance_id)
        assert inst_obj["$type$"] == "Instance"
        assert inst_obj["name"] == NAME_A and inst_obj["owner"] == inst.person_id
        assert not inst_obj.get("recipe") and not inst_obj.get("enabledReverseMapTypes")
        for id_hash in (inst.person_id, inst.instance_id):
            [v] = versions.history(store, id_hash)
            assert v.kind == "edge"
            assert store.kind(id_hash) == "id"
        assert store.count() == 8
        kinds = sorted(core.type_of(store.get(h))[0] for h in store.hashes())
        assert kinds == sorted(
            ["Person", "Person", "Instance", "Instance", "Keys", "Keys",
             "VersionNodeEdge", "VersionNodeEdge"]
        )
        assert store.referencing(inst.person_id, "Keys") == [inst.person_keys]
        assert store.referencing(inst.instance_id, "Keys") == [inst.instance_keys]
        assert store.referencing(inst.person_id, "Instance", id_objects=True) == [inst.instance_id]
        private = Path(inst.path) / "private"
        assert sorted(p.name for p in private.iterdir()) == sorted(
            ["keychain_salt", "keychain_masterkey"]
            + [f"{h}.{s}" for h in (inst.person_keys, inst.instance_keys) for s in ("encrypt", "sign")]
        )
    # the keychain opens on its own with the secret and holds exactly the given secrets
    kc = Keychain(private)
    kc.unlock(SECRET)
    assert kc.load_keys(KC["person_keys"]["keys_object_hash"]) == keys(PEER_A, "person")
    assert kc.load_keys(KC["instance_keys"]["keys_object_hash"]) == keys(PEER_A, "instance")


def test_spec_example_alice_laptop(tmp_path: Path) -> None:
    """objects.md §1.10: Person alice (04cf557f…), Instance alice-laptop (755568aa…, ID 53480c06…)."""
    with Instance.create(
        tmp_path, email="alice@example.com", person_name="Alice",
        instance_name="alice-laptop", secret=SECRET,
    ) as inst:
        assert inst.person_id == "0f69db43a925bc5509c37143ffe18e9c11895ad6ec7c50386bcd4c87100b7152"
        assert versions.current_hash(inst.store, inst.person_id) == (
            "04cf557ffbf2f128a7f61cbb28ba7a42cc22bb59f2f6793f81feff0a64b8ff41"
        )
        assert inst.instance_id == "53480c069225f99825498ca3a76c3701ba5d1cb4318f4035ca3775d7e203c1ec"
        assert versions.current_hash(inst.store, inst.instance_id) == (
            "755568aa17e441be30a60b96c3e11931f0393fe56546d3fc3fd65338b6b341cf"
        )
        assert Path(inst.path).name == inst.instance_id
        # random keys: each pair is a valid, distinct key pair
        assert len({inst.person_public_key, inst.instance_public_key}) == 2
        assert len({inst.person_public_sign_key, inst.instance_public_sign_key}) == 2


def test_instance_dir_quirk_without_html_escaping(tmp_path: Path) -> None:
    """objects.md §2.2: the directory name is built without escaping; for '&' it differs from
    the true Instance ID hash, and the instance still opens."""
    email, name = "a&b@example.com", "laptop <1>"
    with Instance.create(tmp_path, email=email, instance_name=name, secret=SECRET) as inst:
        true_id = core.id_hash({"$type$": "Instance", "name": name, "owner": inst.person_id})
        assert inst.instance_id == true_id
        assert inst.person_id == core.id_hash({"$type$": "Person", "email": email})
        dir_name = calculate_instance_id_hash(name, email)
        assert dir_name != true_id
        assert Path(inst.path) == tmp_path / dir_name
        pid = inst.person_id
    with Instance.open(tmp_path, SECRET, email=email, instance_name=name) as again:
        assert again.instance_id == true_id and again.person_id == pid


# --- open / wrong secret / existing ------------------------------------------------------------


def test_open_gives_the_same_identity_and_keys(tmp_path: Path) -> None:
    create_a(tmp_path).close()
    for where in (tmp_path, tmp_path / PEER_A["instance_id_hash"]):
        with Instance.open(where, SECRET) as inst:
            assert inst.person_id == PEER_A["person_id_hash"]
            assert inst.instance_keys == KC["instance_keys"]["keys_object_hash"]
            assert inst.person_name == "Alice" and inst.email == EMAIL_A
            # signatures are deterministic: the opened key is the recorded key
            msg = b"lama"
            expected = core.sign_detached(msg, keys(PEER_A, "person").sign_secret)
            assert inst.sign(msg) == expected
            assert inst.sign(msg, key="instance") == core.sign_detached(
                msg, keys(PEER_A, "instance").sign_secret
            )


def test_wrong_secret_raises_and_changes_nothing(tmp_path: Path) -> None:
    create_a(tmp_path).close()
    before = snapshot(tmp_path)
    wrong = "not-the-secret-42"
    with pytest.raises(KeychainError) as e:
        Instance.open(tmp_path, wrong)
    assert e.value.code == "CYENC-SYMDEC"
    assert wrong not in str(e.value) and SECRET not in str(e.value)
    assert snapshot(tmp_path) == before
    with Instance.open(tmp_path, SECRET) as inst:  # still opens with the right one
        assert inst.person_id == PEER_A["person_id_hash"]


def test_create_into_existing_instance_fails_and_changes_nothing(tmp_path: Path) -> None:
    create_a(tmp_path).close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError) as e:
        create_a(tmp_path, secret="other secret")
    assert e.value.code == "LAMA-INSTANCE-EXISTS"
    assert "other secret" not in str(e.value)
    assert snapshot(tmp_path) == before
    # an existing but empty instance directory is fine
    empty = tmp_path / "b" / calculate_instance_id_hash("peer-B", EMAIL_B)
    empty.mkdir(parents=True)
    Instance.create(tmp_path / "b", email=EMAIL_B, instance_name="peer-B", secret=SECRET).close()
    assert (empty / "instance.json").is_file()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(KeychainError) as e:
        Instance.create(tmp_path, email=EMAIL_A, instance_name=NAME_A, secret="")
    assert e.value.code == "LAMA-SECRET"
    with pytest.raises(InvalidArgumentError) as e2:
        Instance.create(tmp_path, email="", instance_name=NAME_A, secret=SECRET)
    assert e2.value.code == "LAMA-EMAIL" and isinstance(e2.value, ValueError)
    with pytest.raises(TypeError):
        Instance.create(tmp_path, email=EMAIL_A, instance_name=NAME_A, secret=SECRET,
                             person_keys=b"x" * 32)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(NotFoundError) as e3:
        Instance.open(tmp_path, SECRET)
    assert e3.value.code == "LAMA-NOINSTANCE"


@pytest.mark.parametrize(
    "email",
    ["not an email", "   ", "a@b\nc", "a b@c", "a@b@c", "@c", "a@", ".a@c", "a.@c", "a..b@c",
     "a@c..d", "a@.c", "a@c.", "a@-c", "a@c-", "a@c_d", "a<b@c", "a\\b@c", 'a"b@c', "a,b@c",
     "a@\u202ec", "a\u200b@c", "x" * 65 + "@c", "a@" + "d" * 64, "a@" + ".".join(["d" * 63] * 4),
     "x" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 62, b"a@c", None],
)
def test_email_rule_rejects(tmp_path: Path, email: Any) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        check_email(email)
    assert e.value.code == "LAMA-EMAIL" and isinstance(e.value, ValueError)
    assert "\n" not in str(e.value)  # shown escaped, on one line
    with pytest.raises(InvalidArgumentError) as e2:
        Instance.create(tmp_path / "base", email=email, instance_name=NAME_A, secret=SECRET)
    assert e2.value.code == "LAMA-EMAIL"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "email",
    ["alice@localhost", "a&b@example.com", "jürgen.ß@exämple.de", "x+tag@a-b.c-d.example",
     "!#$%&'*+-/=?^_`{|}~@x", "a.b.c@d", "x" * 64 + "@" + "d" * 63 + "." + "d" * 63 + "." + "d" * 61],
)
def test_email_rule_accepts(email: str) -> None:
    assert check_email(email) == email


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "a\rb", "a\x00b", "a\u2028b", "x" * 1025, 5])
def test_name_rule_rejects(tmp_path: Path, name: Any) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        check_name(name, "instance_name")
    assert e.value.code == "LAMA-ARG"
    for kwargs in ({"instance_name": name}, {"instance_name": NAME_A, "person_name": name}):
        with pytest.raises(InvalidArgumentError):
            Instance.create(tmp_path / "base", email=EMAIL_A, secret=SECRET, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_name_rule_accepts() -> None:
    for name in ("laptop <1>", " spaced ", "emoji \U0001f469\u200d\U0001f4bb", "x" * 1024):
        assert check_name(name, "n") == name
    assert check_name(None, "n", optional=True) is None


def test_base_directory_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"keep")
    for base in (f, f / "below", f / "below" / "deeper"):
        with pytest.raises(StoreError) as e:
            Instance.create(base, email=EMAIL_A, instance_name=NAME_A, secret=SECRET)
        assert e.value.code == "LAMA-NOTDIR" and str(f) in str(e.value)
    assert [p.name for p in tmp_path.rglob("*")] == ["file"] and f.read_bytes() == b"keep"


def test_instance_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / calculate_instance_id_hash(NAME_A, EMAIL_A)).write_bytes(b"")
    with pytest.raises(StoreError) as e:
        create_a(tmp_path)
    assert e.value.code == "LAMA-INSTANCE-EXISTS"


def test_several_instances_in_one_base_directory(tmp_path: Path) -> None:
    create_a(tmp_path).close()
    Instance.create(tmp_path, email=EMAIL_A, instance_name="peer-A2", secret="s2").close()
    with pytest.raises(LamaError) as e:
        Instance.open(tmp_path, SECRET)
    assert e.value.code == "LAMA-AMBIGUOUS"
    with Instance.open(tmp_path, "s2", email=EMAIL_A, instance_name="peer-A2") as inst:
        assert inst.person_id == PEER_A["person_id_hash"]  # same person, another instance
        assert inst.instance_id != PEER_A["instance_id_hash"]
        assert inst.person_keys != KC["person_keys"]["keys_object_hash"]  # its own random keys


def test_read_info_needs_no_secret(tmp_path: Path) -> None:
    create_a(tmp_path).close()
    info = read_info(tmp_path)
    assert info.person_id == PEER_A["person_id_hash"]
    assert info.instance_id == PEER_A["instance_id_hash"]
    assert info.person_public_sign_key.hex() == KC["person_keys"]["public_sign_key"]
    assert info.as_dict()["instance_public_key"] == KC["instance_keys"]["public_encryption_key"]
    marker = (Path(info.path) / "instance.json").read_text()
    for who in ("person", "instance"):
        for kind in ("Encryption", "Sign"):
            assert PEER_A["keypairs"][f"{who}{kind}KeyPair"]["secretKey"] not in marker


# --- secrets never shown -----------------------------------------------------------------------


def test_secrets_not_in_reprs_or_errors(tmp_path: Path) -> None:
    with create_a(tmp_path) as inst:
        texts = [repr(inst), str(inst), repr(inst.secret_keys()), repr(inst.secret_keys("instance")),
                 repr(inst.keychain), repr(inst.info)]
        with pytest.raises(LamaError) as e:
            inst.secret_keys("nobody")  # type: ignore[arg-type]
        texts.append(str(e.value))
        blob = "\n".join(texts)
        assert SECRET not in blob
        for who in ("person", "instance"):
            for kind in ("Encryption", "Sign"):
                secret_hex = PEER_A["keypairs"][f"{who}{kind}KeyPair"]["secretKey"]
                assert secret_hex[:64] not in blob


# --- sign / verify / encrypt / decrypt -------------------------------------------------------


def test_sign_and_verify(tmp_path: Path) -> None:
    with create_a(tmp_path) as inst:
        sig = inst.sign("héllo")
        assert len(sig) == 64
        Instance.verify("héllo".encode(), sig, inst.person_public_sign_key)
        Instance.verify("héllo", sig.hex(), inst.person_public_sign_key.hex())
        with pytest.raises(SignatureError):
            inst.verify("hello", sig, inst.person_public_sign_key)
        with pytest.raises(SignatureError):
            inst.verify("héllo", sig, inst.instance_public_sign_key)
        bad = bytes([sig[0] ^ 1]) + sig[1:]
        with pytest.raises(SignatureError):
            inst.verify("héllo", bad, inst.person_public_sign_key)


def test_encrypt_decrypt_between_peers(tmp_path: Path) -> None:
    a = create_a(tmp_path / "a")
    b = Instance.create(
        tmp_path / "b", email=EMAIL_B, instance_name="peer-B", secret=SECRET,
        person_keys=keys(PEER_B, "person"), instance_keys=keys(PEER_B, "instance"),
    )
    with a, b:
        assert b.person_id == PEER_B["person_id_hash"] and b.instance_id == PEER_B["instance_id_hash"]
        # the recorded person key of the ExchangePersonIds proof (connections.md §5.3)
        person_key = bytes.fromhex(VECTORS["person-proof"]["connections"][0]["person_key"])
        nonce = bytes(range(24))
        boxed = a.encrypt(b"challenge", b.person_public_key, nonce=nonce)
        assert boxed == nonce + core.secretbox_seal(b"challenge", nonce, person_key)
        assert b.decrypt(boxed, a.person_public_key) == b"challenge"
        # random nonces, instance keys, hex public keys
        c1 = a.encrypt(b"x" * 100, b.instance_public_key.hex(), key="instance")
        c2 = a.encrypt(b"x" * 100, b.instance_public_key.hex(), key="instance")
        assert c1 != c2 and len(c1) == 24 + 16 + 100
        assert b.decrypt(c1, a.instance_public_key, key="instance") == b"x" * 100
        with pytest.raises(DecryptionError) as e:
            b.decrypt(c1, a.person_public_key)  # wrong key pair
        assert e.value.code == "CYENC-SYMDEC"
        tampered = boxed[:-1] + bytes([boxed[-1] ^ 0x80])
        with pytest.raises(DecryptionError):
            b.decrypt(tampered, a.person_public_key)


def test_async_api(tmp_path: Path) -> None:
    loop_threads: list[int] = []
    unlock_threads: list[int] = []
    original = Keychain.unlock

    def spy(self: Keychain, secret: str) -> None:
        unlock_threads.append(threading.get_ident())
        original(self, secret)

    async def main() -> None:
        loop_threads.append(threading.get_ident())
        async with await Instance.create_async(
            tmp_path, email=EMAIL_A, instance_name=NAME_A, secret=SECRET,
            person_keys=keys(PEER_A, "person"), instance_keys=keys(PEER_A, "instance"),
        ) as inst:
            assert inst.person_id == PEER_A["person_id_hash"]
        assert inst.closed
        async with await Instance.open_async(tmp_path, SECRET) as inst:
            big = bytes(range(256)) * 1024  # 256 KiB: processed in a worker thread
            sig = await inst.sign_async(big)
            assert sig == inst.sign(big)
            await inst.verify_async(big, sig, inst.person_public_sign_key)
            with pytest.raises(SignatureError):
                await inst.verify_async(big + b"!", sig, inst.person_public_sign_key)
            boxed = await inst.encrypt_async(big, inst.instance_public_key)
            assert await inst.decrypt_async(boxed, inst.instance_public_key) == big
            small = await inst.encrypt_async(b"hi", inst.instance_public_key)
            assert await inst.decrypt_async(small, inst.instance_public_key) == b"hi"
            await inst.change_secret_async(SECRET, "new secret")
        with pytest.raises(KeychainError):
            await Instance.open_async(tmp_path, SECRET)
        (await Instance.open_async(tmp_path, "new secret")).close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(instance_mod.Keychain, "unlock", spy)
        asyncio.run(main())
    assert len(unlock_threads) == 3
    assert loop_threads[0] not in unlock_threads  # scrypt never ran on the event loop thread


def test_close(tmp_path: Path) -> None:
    inst = create_a(tmp_path)
    inst.close()
    inst.close()  # idempotent
    assert inst.closed and not inst.keychain.unlocked
    with pytest.raises(LamaError) as e:
        inst.sign(b"x")
    assert e.value.code == "LAMA-CLOSED"
    with pytest.raises(LamaError):
        inst.encrypt(b"x", inst.person_public_key)
