"""A local ONE instance: identity, keys, keychain and store in one directory (objects.md §7).

``Instance.create`` bootstraps an instance as objects.md §7.3 describes it:

1. ``instanceIdHash = calculate_instance_id_hash(instance_name, email)`` (§2.2: plain string
   interpolation, *no* HTML escaping - a reference quirk kept for directory-name compatibility)
   names the instance directory ``<directory>/<instanceIdHash>/``;
2. the keychain is created with the secret in ``private/`` (§7.4, the reference layout);
3. ``Person{email, name?}`` is stored as a version (CHANGE, a ``VersionNodeEdge``);
4. default keys for the person ID: random box + sign key pairs or the supplied ones, the public
   ``Keys{owner: personId, publicKey, publicSignKey}`` object stored (reverse map
   ``personId -> Keys``, §5.3) and the secrets written to the keychain;
5. ``Instance{name, owner: personId, recipe: {}, enabledReverseMapTypes: {},
   enabledReverseMapTypesForIdObjects: {}}`` is stored as a version (reverse map
   ``personId -> Instance`` for the ID object);
6. default keys for the instance ID, as in 4.

With the same email, instance name and key pairs this gives exactly the reference's Person ID,
Instance ID and Keys hashes (tests/test_instance.py checks peer A of
tests/vectors/crypto-and-frames.json).

Layout of ``<directory>/<instanceIdHash>/``:

* ``store/``: the LMDB object store (docs/store-format.md) - lama's replacement of the
  reference's ``objects/``, ``vheads/`` and ``rmaps/`` directories;
* ``private/``: the keychain, file for file as the reference writes it (objects.md §7.4);
* ``instance.json``: public data only (format marker, email, names, person/instance ID hashes,
  Keys hashes). It is written last, so its presence marks a completely created instance; it is
  how :meth:`Instance.open` and :func:`read_info` (``lama whoami``) find the instance.

Which key is used for what (connections.md §1.1): ``sign``/``verify`` and certificates use the
**person** sign key; ``encrypt``/``decrypt`` default to the **person** encryption key (the
person-key proof); ``key="instance"`` selects the instance key pair (comm server, routing).

Secrets: the instance secret is used to unlock the keychain and then dropped; it never appears
in a repr, a log line or an exception. Secret keys are held as :class:`lama.identity.keychain.SecretKeys`
(whose repr shows only public keys). The ``*_async`` helpers and ``create``/``open`` run scrypt,
LMDB I/O and bulk crypto in a worker thread (``asyncio.to_thread``) so the event loop never
blocks; small payloads (< :data:`INLINE_LIMIT` bytes) are processed inline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Literal

from lama._core import Store, core
from lama.errors import InvalidArgumentError, KeychainError, LamaError, StoreError
from lama.identity import certificates
from lama.identity.keychain import Keychain, SecretKeys
from lama.identity.layout import (
    INFO_FILE,
    INFO_FORMAT,
    PRIVATE_DIR,
    STORE_DIR,
    InstanceInfo,
    _make_base_dir,
    _info_from,
    _read_json,
    _write_info,
    calculate_instance_id_hash,
    calculate_person_id_hash,
    check_base_dir,
    check_email,
    check_name,
    find_instance_dir,
    read_info,
)
from lama.objects import versions

__all__ = [
    "INFO_FILE",
    "INLINE_LIMIT",
    "Instance",
    "InstanceInfo",
    "calculate_instance_id_hash",
    "calculate_person_id_hash",
    "check_base_dir",
    "check_email",
    "check_name",
    "find_instance_dir",
    "read_info",
]

INLINE_LIMIT = 64 * 1024
"""Payloads up to this size are signed/encrypted inline by the async helpers (a thread hop
costs more than the work); larger ones go to a worker thread."""

KeyOwner = Literal["person", "instance"]


def _check_secret(secret: Any) -> str:
    if not isinstance(secret, str):
        raise TypeError("the instance secret must be a str")
    if not secret:
        raise KeychainError("LAMA-SECRET: the instance secret must not be empty")
    return secret

# --------------------------------------------------------------------------------------------
# Helpers


def _as_bytes(data: bytes | bytearray | memoryview | str, what: str = "data") -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, bytes):
        return data
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _as_key(key: bytes | str, what: str) -> bytes:
    """A public key as bytes; a str is taken as hex (as in Keys objects)."""
    if isinstance(key, str):
        try:
            return bytes.fromhex(key)
        except ValueError:
            raise LamaError(f"{what} is not hex", code="LAMA-KEYLEN") from None
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    if not isinstance(key, bytes):
        raise TypeError(f"{what} must be bytes or a hex str, not {type(key).__name__}")
    return key


def _default_keys_hash(store: Store, keychain: Keychain, owner: str) -> str:
    """The owner's default Keys object: the one (found through the reverse map owner -> Keys,
    objects.md §7.2) whose secret files exist in the keychain."""
    complete: list[str] = [h for h in store.referencing(owner, "Keys") if keychain.has_keys(h)]
    if len(complete) != 1:
        raise KeychainError(
            f"KEYCH-NODEFKEYS: {len(complete)} complete Keys objects for {owner} (expected 1)"
        )
    return complete[0]


# --------------------------------------------------------------------------------------------
# Instance


class Instance:
    """An open local instance (use :meth:`create` / :meth:`open`, not the constructor).

    Attributes: ``path`` (the instance directory), ``email``, ``person_name``,
    ``instance_name``, ``person_id`` / ``instance_id`` (ID hashes), ``person_keys`` /
    ``instance_keys`` (Keys object hashes), the public keys ``person_public_key``,
    ``person_public_sign_key``, ``instance_public_key``, ``instance_public_sign_key``
    (bytes), ``store`` and ``keychain``.
    """

    def __init__(
        self,
        path: Path,
        info: InstanceInfo,
        store: Store,
        keychain: Keychain,
        person_secret: SecretKeys,
        instance_secret: SecretKeys,
    ) -> None:
        self.path = str(path)
        self.info = info
        self.store = store
        self.keychain = keychain
        self._secrets: dict[str, SecretKeys] = {"person": person_secret, "instance": instance_secret}
        self._closed = False
        self._lock = threading.Lock()

    # --- public data ---------------------------------------------------------------------

    @property
    def email(self) -> str:
        return self.info.email

    @property
    def person_name(self) -> str | None:
        return self.info.person_name

    @property
    def instance_name(self) -> str:
        return self.info.instance_name

    @property
    def person_id(self) -> str:
        return self.info.person_id

    @property
    def instance_id(self) -> str:
        return self.info.instance_id

    @property
    def person_keys(self) -> str:
        return self.info.person_keys

    @property
    def instance_keys(self) -> str:
        return self.info.instance_keys

    @property
    def person_public_key(self) -> bytes:
        return self.info.person_public_key

    @property
    def person_public_sign_key(self) -> bytes:
        return self.info.person_public_sign_key

    @property
    def instance_public_key(self) -> bytes:
        return self.info.instance_public_key

    @property
    def instance_public_sign_key(self) -> bytes:
        return self.info.instance_public_sign_key

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"Instance({self.instance_name!r} of {self.email!r}, person_id={self.person_id}, "
            f"instance_id={self.instance_id}, {state})"
        )

    # --- create / open -------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        email: str,
        instance_name: str,
        secret: str,
        person_name: str | None = None,
        person_keys: SecretKeys | None = None,
        instance_keys: SecretKeys | None = None,
    ) -> Instance:
        """Create a new instance in ``<directory>/<instanceIdHash>/`` (objects.md §7.3).

        ``person_keys`` / ``instance_keys``: the key pairs to use (default: random).
        ``StoreError LAMA-INSTANCE-EXISTS`` if the instance directory exists and is not empty
        (nothing is changed). If creation fails, the new instance directory is removed.
        """
        check_email(email)
        check_name(instance_name, "instance_name")
        check_name(person_name, "person_name", optional=True)
        secret = _check_secret(secret)
        for k, what in ((person_keys, "person_keys"), (instance_keys, "instance_keys")):
            if k is not None and not isinstance(k, SecretKeys):
                raise TypeError(f"{what} must be SecretKeys or None, not {type(k).__name__}")
        base = Path(directory)
        path = base / calculate_instance_id_hash(instance_name, email)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            incomplete = "" if (path / INFO_FILE).is_file() else (
                f" (without {INFO_FILE}: an interrupted creation; remove the directory to retry)"
            )
            raise StoreError(
                f"LAMA-INSTANCE-EXISTS: the instance {instance_name!r} of {email!r} exists "
                f"already in {path}{incomplete}"
            )
        _make_base_dir(base)
        try:
            path.mkdir(exist_ok=True)
        except FileExistsError:
            raise StoreError(f"LAMA-INSTANCE-EXISTS: {path} exists and is not a directory") from None
        except OSError as e:
            raise StoreError(f"LAMA-DIR: cannot create {path}: {e.strerror}") from None
        store = None
        try:
            keychain = Keychain(path / PRIVATE_DIR)
            keychain.create(secret)
            store = core.Store(str(path / STORE_DIR))
            # a. Person (versioned, CHANGE)
            person: dict[str, Any] = {"$type$": "Person", "email": email}
            if person_name is not None:
                person["name"] = person_name
            person_id = versions.store_versioned(store, person).id_hash
            # b. default keys for the person
            p_secret = person_keys or SecretKeys.generate()
            p_keys_hash = cls._store_default_keys(store, keychain, person_id, p_secret)
            # c./d. Instance (no initial recipes here: app recipes are registered at runtime)
            instance_obj = {
                "$type$": "Instance",
                "name": instance_name,
                "owner": person_id,
                "recipe": set(),
                "enabledReverseMapTypes": {},
                "enabledReverseMapTypesForIdObjects": {},
            }
            instance_id = versions.store_versioned(store, instance_obj).id_hash
            # e. default keys for the instance
            i_secret = instance_keys or SecretKeys.generate()
            i_keys_hash = cls._store_default_keys(store, keychain, instance_id, i_secret)
            _enable_certificate_maps(store)
            data = {
                "format": INFO_FORMAT,
                "email": email,
                "person_name": person_name,
                "instance_name": instance_name,
                "person_id": person_id,
                "instance_id": instance_id,
                "person_keys": p_keys_hash,
                "instance_keys": i_keys_hash,
            }
            _write_info(path, data)
            info = _info_from(path, data, store)
        except BaseException:
            if store is not None:
                store.close()
            shutil.rmtree(path, ignore_errors=True)
            raise
        return cls(path, info, store, keychain, p_secret, i_secret)

    @staticmethod
    def _store_default_keys(store: Store, keychain: Keychain, owner: str, keys: SecretKeys) -> str:
        [(keys_hash, _, _)] = store.put_objects([keys.keys_object(owner)])
        keychain.store_keys(keys_hash, keys)
        return str(keys_hash)

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        secret: str,
        *,
        email: str | None = None,
        instance_name: str | None = None,
    ) -> Instance:
        """Open an existing instance and unlock its keychain with ``secret``.

        ``directory``: the instance directory or a base directory (see
        :func:`find_instance_dir`). A wrong secret raises ``KeychainError CYENC-SYMDEC`` before
        the store is opened; nothing on disk changes.
        """
        secret = _check_secret(secret)
        path = find_instance_dir(directory, email=email, instance_name=instance_name)
        data = _read_json(path / INFO_FILE)
        keychain = Keychain(path / PRIVATE_DIR)
        keychain.unlock(secret)
        store = core.Store(str(path / STORE_DIR))
        try:
            info = _info_from(path, data, store)
            for owner, keys_hash in ((info.person_id, info.person_keys),
                                     (info.instance_id, info.instance_keys)):
                if _default_keys_hash(store, keychain, owner) != keys_hash:
                    raise StoreError(
                        f"LAMA-INSTANCE-CORRUPT: the default keys of {owner} are not {keys_hash}"
                    )
            if store.get_head(info.person_id) is None or store.get_head(info.instance_id) is None:
                raise StoreError(
                    f"LAMA-INSTANCE-CORRUPT: no Person/Instance version in the store of {path}"
                )
            p_secret = keychain.load_keys(
                info.person_keys, info.person_public_key, info.person_public_sign_key
            )
            i_secret = keychain.load_keys(
                info.instance_keys, info.instance_public_key, info.instance_public_sign_key
            )
            _enable_certificate_maps(store)
            _load_recipes(store, data.get("recipes"))
        except BaseException:
            store.close()
            keychain.lock()
            raise
        return cls(path, info, store, keychain, p_secret, i_secret)

    @classmethod
    async def create_async(
        cls,
        directory: str | os.PathLike[str],
        *,
        email: str,
        instance_name: str,
        secret: str,
        person_name: str | None = None,
        person_keys: SecretKeys | None = None,
        instance_keys: SecretKeys | None = None,
    ) -> Instance:
        """Async :meth:`create` (scrypt and I/O in a worker thread)."""
        return await asyncio.to_thread(
            lambda: cls.create(
                directory,
                email=email,
                instance_name=instance_name,
                secret=secret,
                person_name=person_name,
                person_keys=person_keys,
                instance_keys=instance_keys,
            )
        )

    @classmethod
    async def open_async(
        cls,
        directory: str | os.PathLike[str],
        secret: str,
        *,
        email: str | None = None,
        instance_name: str | None = None,
    ) -> Instance:
        """Async :meth:`open` (scrypt and I/O in a worker thread)."""
        return await asyncio.to_thread(
            lambda: cls.open(directory, secret, email=email, instance_name=instance_name)
        )

    # --- close ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store and lock the keychain (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.keychain.lock()
            self._secrets.clear()
            self.store.close()

    async def close_async(self) -> None:
        self.close()

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Instance:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def change_secret(self, old_secret: str, new_secret: str) -> None:
        """Protect the keychain with ``new_secret`` (objects.md §7.4: new salt, master key
        re-encrypted). A wrong ``old_secret`` raises ``KeychainError CYENC-SYMDEC``."""
        self._check_open()
        self.keychain.change_secret(_check_secret(old_secret), _check_secret(new_secret))

    async def change_secret_async(self, old_secret: str, new_secret: str) -> None:
        await asyncio.to_thread(self.change_secret, old_secret, new_secret)

    # --- keys ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LamaError("LAMA-CLOSED: the instance is closed")

    def secret_keys(self, key: KeyOwner = "person") -> SecretKeys:
        """The secret key pairs of the person or the instance (their repr is public only)."""
        self._check_open()
        try:
            return self._secrets[key]
        except KeyError:
            raise InvalidArgumentError(
                f"key must be 'person' or 'instance', not {key!r}", code="LAMA-ARG"
            ) from None

    def public_keys(self, key: KeyOwner = "person") -> tuple[bytes, bytes]:
        """``(publicKey, publicSignKey)`` of the person or the instance."""
        if key == "person":
            return self.person_public_key, self.person_public_sign_key
        if key == "instance":
            return self.instance_public_key, self.instance_public_sign_key
        raise InvalidArgumentError(
            f"key must be 'person' or 'instance', not {key!r}", code="LAMA-ARG"
        )

    # --- sign / verify -------------------------------------------------------------------

    def sign(self, data: bytes | str, *, key: KeyOwner = "person") -> bytes:
        """Ed25519 detached signature (64 bytes) of ``data`` (a str is signed as UTF-8) with
        the person's (default) or the instance's sign key."""
        sig: bytes = core.sign_detached(_as_bytes(data), self.secret_keys(key).sign_secret)
        return sig

    @staticmethod
    def verify(data: bytes | str, signature: bytes | str, public_key: bytes | str) -> None:
        """Check an Ed25519 detached signature; ``SignatureError LAMA-SIGNATURE`` if it does
        not verify. ``signature`` and ``public_key`` may be bytes or hex."""
        core.sign_verify_detached(
            _as_bytes(data), _as_key(signature, "signature"), _as_key(public_key, "public key")
        )

    async def sign_async(self, data: bytes | str, *, key: KeyOwner = "person") -> bytes:
        if len(data) <= INLINE_LIMIT:
            return self.sign(data, key=key)
        return await asyncio.to_thread(self.sign, data, key=key)

    async def verify_async(
        self, data: bytes | str, signature: bytes | str, public_key: bytes | str
    ) -> None:
        if len(data) <= INLINE_LIMIT:
            self.verify(data, signature, public_key)
        else:
            await asyncio.to_thread(self.verify, data, signature, public_key)

    # --- encrypt / decrypt for a peer ----------------------------------------------------

    def encrypt(
        self,
        data: bytes | str,
        their_public_key: bytes | str,
        *,
        key: KeyOwner = "person",
        nonce: bytes | None = None,
    ) -> bytes:
        """one.core ``encryptAndEmbedNonce`` (connections.md §1.2): ``nonce(24) ||
        secretbox(data, nonce, box.before(their_public_key, my secret))``, random nonce unless
        given. ``key`` selects my person (default) or instance encryption key."""
        out: bytes = core.box_seal_embedded(
            _as_bytes(data),
            self.secret_keys(key).encryption_secret,
            _as_key(their_public_key, "their public key"),
            nonce,
        )
        return out

    def decrypt(
        self, data: bytes, their_public_key: bytes | str, *, key: KeyOwner = "person"
    ) -> bytes:
        """one.core ``decryptWithEmbeddedNonce``; ``DecryptionError CYENC-SYMDEC`` if the data
        does not authenticate."""
        out: bytes = core.box_open_embedded(
            _as_bytes(data),
            self.secret_keys(key).encryption_secret,
            _as_key(their_public_key, "their public key"),
        )
        return out

    async def encrypt_async(
        self,
        data: bytes | str,
        their_public_key: bytes | str,
        *,
        key: KeyOwner = "person",
        nonce: bytes | None = None,
    ) -> bytes:
        if len(data) <= INLINE_LIMIT:
            return self.encrypt(data, their_public_key, key=key, nonce=nonce)
        return await asyncio.to_thread(self.encrypt, data, their_public_key, key=key, nonce=nonce)

    async def decrypt_async(
        self, data: bytes, their_public_key: bytes | str, *, key: KeyOwner = "person"
    ) -> bytes:
        if len(data) <= INLINE_LIMIT:
            return self.decrypt(data, their_public_key, key=key)
        return await asyncio.to_thread(self.decrypt, data, their_public_key, key=key)

    # --- certificates (app-layer.md §1.7; see lama.identity.certificates) -------------------------

    def sign_hash(self, data_hash: str) -> certificates.SignatureResult:
        """Store a ``Signature{issuer: my person, data: data_hash, signature}``; returns the
        :class:`lama.identity.certificates.SignatureResult`."""
        return certificates.create_signature(
            self.store, self.person_id, data_hash, self.secret_keys("person")
        )

    def certify(self, cert_type: str, **fields: Any) -> certificates.CertifyResult:
        """Store License, certificate and Signature (issuer = my person); returns the
        :class:`lama.identity.certificates.CertifyResult`."""
        return certificates.certify(
            self.store, cert_type, fields, self.person_id, self.secret_keys("person")
        )

    def affirm(self, data_hash: str) -> certificates.CertifyResult:
        """``certify("AffirmationCertificate", data=data_hash)``."""
        return self.certify("AffirmationCertificate", data=data_hash)

    def trust_keys(self, profile_hash: str) -> certificates.CertifyResult:
        """``certify("TrustKeysCertificate", profile=profile_hash)``."""
        return self.certify("TrustKeysCertificate", profile=profile_hash)


def _enable_certificate_maps(store: Store) -> None:
    certificates.enable_reverse_maps(store)
    # lama.connect's maps (OneInstanceEndpoint, Profile) too, from the start: its lookups of
    # known peers then never depend on when lama.connect first ran (docs/connections.md §3.1)
    from ..connect import contacts

    contacts.enable_reverse_maps(store)


def _load_recipes(store: Store, hashes: Any) -> None:
    """The app recipes an imported ONE instance had (``instance.json`` ``recipes``: Recipe
    objects in the store, docs/migration.md): registered with the core so that objects of
    their types can be read, stored and synced. One that cannot be loaded (another recipe of
    its name is registered in this process) is logged; its objects are refused by type."""
    if not hashes:
        return
    from lama.objects import recipes

    for h, why in recipes.load_stored(store, [str(h) for h in hashes]):
        logging.getLogger("lama.instance").warning(
            "recipe %s of this instance not loaded: %s", h, why)
