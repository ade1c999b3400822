"""The keychain: secret keys at rest, in the reference layout (objects.md §7.4).

A directory (``<storage>/<instanceIdHash>/private/`` in the reference) holds:

* ``keychain_salt``: 16 random bytes;
* ``keychain_masterkey``: ``nonce(24) || secretbox(M, nonce, K)`` (72 bytes), where ``M`` is
  the 32-byte random master key and ``K = scrypt(UTF-8(NFKC(secret)), salt, N=1024, r=8, p=1,
  dkLen=32)``;
* per Keys object hash ``H``: ``H.encrypt = nonce || secretbox(X25519 secret (32), nonce, M)``
  (72 bytes) and ``H.sign = nonce || secretbox(Ed25519 secret (64, seed || public), nonce, M)``
  (104 bytes), each with a fresh random nonce.

A keychain written here is read by the reference and vice versa (tests/test_keychain.py opens
the recorded reference keychain of tests/vectors/crypto-and-frames.json).

Rules:

* A wrong secret raises ``KeychainError CYENC-SYMDEC`` and changes nothing on disk.
* Key files are write-once: they are written to a temporary file and hard-linked into place,
  which fails if the name exists (``StoreError SB-WPBR3``) and never leaves a half-written file.
* Changing the secret writes a new salt and re-encrypts only the master key. Both new files are
  staged as ``keychain_salt.new`` / ``keychain_masterkey.new`` before they replace the old ones,
  and :meth:`Keychain.unlock` finishes (or discards) a change that a crash interrupted.
* While locked, no key can be stored or loaded (``KeychainError KEYMKM-NOKEY``).

All primitives come from the selected core (``lama._core.core``), so this module is shared by
both cores. scrypt is the only slow step (milliseconds); the ``*_async`` methods run it in a
worker thread (the native core releases the GIL while it runs).

Secrets never appear in error messages or reprs.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lama._core import core
from lama.errors import CryptoError, DecryptionError, KeychainError, StoreError

__all__ = [
    "SALT_FILE",
    "MASTERKEY_FILE",
    "SCRYPT_N",
    "SCRYPT_R",
    "SCRYPT_P",
    "SCRYPT_DKLEN",
    "derive_key",
    "SecretKeys",
    "Keychain",
]

SALT_FILE = "keychain_salt"
MASTERKEY_FILE = "keychain_masterkey"
SALT_LEN = 16
MASTER_KEY_LEN = 32
SCRYPT_N = 1024
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_DKLEN = 32

# sizes of the sealed files: nonce (24) || secretbox (16-byte tag + plaintext), objects.md §7.4
_SEALED_OVERHEAD = 24 + 16
_SEALED_MASTER_LEN = _SEALED_OVERHEAD + MASTER_KEY_LEN  # 72
_SEALED_ENC_LEN = _SEALED_OVERHEAD + 32  # 72
_SEALED_SIGN_LEN = _SEALED_OVERHEAD + 64  # 104

_PENDING = ".new"


def derive_key(secret: str, salt: bytes) -> bytes:
    """``K = scrypt(UTF-8(NFKC(secret)), salt, N=1024, r=8, p=1, dkLen=32)`` (objects.md §7.4)."""
    if not isinstance(secret, str):
        raise TypeError(f"the keychain secret must be a str, not {type(secret).__name__}")
    password = unicodedata.normalize("NFKC", secret).encode("utf-8")
    key: bytes = core.scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN)
    return key


@dataclass(frozen=True, repr=False, eq=False)
class SecretKeys:
    """The secret halves of one Keys object: X25519 (32 bytes) and Ed25519 (64, seed || public).

    The repr shows only the public keys.
    """

    encryption_secret: bytes
    sign_secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.encryption_secret, bytes) or len(self.encryption_secret) != 32:
            raise CryptoError("LAMA-KEYLEN: box secret key must be 32 bytes")
        if not isinstance(self.sign_secret, bytes) or len(self.sign_secret) != 64:
            raise CryptoError("LAMA-KEYLEN: sign secret key must be 64 bytes")
        _, expected = core.sign_keypair_from_seed(self.sign_secret[:32])
        if not hmac.compare_digest(expected, self.sign_secret):
            raise CryptoError(
                "LAMA-SIGNKEY: sign secret key: public half does not match the seed"
            )

    @classmethod
    def generate(cls) -> SecretKeys:
        """A fresh random encryption and sign key pair."""
        _, box_secret = core.box_keypair()
        _, sign_secret = core.sign_keypair()
        return cls(box_secret, sign_secret)

    @property
    def public_key(self) -> bytes:
        """The X25519 public key (``Keys.publicKey``)."""
        public: bytes = core.box_public_from_secret(self.encryption_secret)
        return public

    @property
    def public_sign_key(self) -> bytes:
        """The Ed25519 public key (``Keys.publicSignKey``)."""
        return self.sign_secret[32:]

    def keys_object(self, owner: str) -> dict[str, Any]:
        """The public ``Keys`` object of these keys for ``owner`` (objects.md §7.2)."""
        return {
            "$type$": "Keys",
            "owner": owner,
            "publicKey": self.public_key.hex(),
            "publicSignKey": self.public_sign_key.hex(),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKeys):
            return NotImplemented
        return hmac.compare_digest(
            self.encryption_secret + self.sign_secret, other.encryption_secret + other.sign_secret
        )

    def __hash__(self) -> int:
        return hash(self.public_sign_key)

    def __repr__(self) -> str:
        return (
            f"SecretKeys(public_key={self.public_key.hex()}, "
            f"public_sign_key={self.public_sign_key.hex()})"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (created or truncated), mode 0600, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Keychain:
    """The keychain in the directory ``private_dir`` (created on :meth:`create`).

    One process owns a keychain directory (as it owns the instance's store); the methods are
    safe to call from several threads of that process.
    """

    def __init__(self, private_dir: str | os.PathLike[str]) -> None:
        self._dir = Path(private_dir)
        self._master: bytes | None = None
        self._lock = threading.RLock()

    # --- state ---------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return str(self._dir)

    def exists(self) -> bool:
        """True if a keychain (salt and master key) exists in the directory."""
        return (self._dir / SALT_FILE).is_file() and (self._dir / MASTERKEY_FILE).is_file()

    @property
    def unlocked(self) -> bool:
        return self._master is not None

    def __repr__(self) -> str:
        state = "unlocked" if self.unlocked else "locked"
        return f"Keychain({str(self._dir)!r}, {state})"

    def _require_master(self) -> bytes:
        master = self._master
        if master is None:
            raise KeychainError("KEYMKM-NOKEY: the keychain is locked (no master key loaded)")
        return master

    # --- create / unlock / lock / change secret -------------------------------------------

    def create(self, secret: str) -> None:
        """Create a new keychain with a random master key and leave it unlocked.

        ``KeychainError LAMA-KEYCHAIN-EXISTS`` if one exists already (nothing is changed).
        """
        with self._lock:
            if (self._dir / MASTERKEY_FILE).exists():
                raise KeychainError(f"LAMA-KEYCHAIN-EXISTS: a keychain exists in {self._dir}")
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            master = core.random_bytes(MASTER_KEY_LEN)
            salt = core.random_bytes(SALT_LEN)
            sealed = core.secretbox_seal_embedded(master, derive_key(secret, salt))
            # a salt without a master key is a leftover of a crashed create: replace it
            tmp = self._dir / (SALT_FILE + _PENDING)
            _write_file(tmp, salt)
            os.replace(tmp, self._dir / SALT_FILE)
            self._link_new(MASTERKEY_FILE, sealed)
            self._master = master

    def unlock(self, secret: str) -> None:
        """Load the master key with ``secret``.

        ``KeychainError CYENC-SYMDEC`` if the secret is wrong (nothing on disk changes),
        ``KeychainError LAMA-NOKEYCHAIN`` if there is no keychain.
        """
        with self._lock:
            self._master = self._open_master(secret)

    def open(self, secret: str) -> None:
        """Unlock the keychain, creating it first if the directory has none (as initInstance)."""
        with self._lock:
            # a master key entry of any kind (even a damaged one) means: unlock, never create
            if os.path.lexists(self._dir / MASTERKEY_FILE):
                self.unlock(secret)
            else:
                self.create(secret)

    def lock(self) -> None:
        """Forget the master key."""
        with self._lock:
            self._master = None

    def change_secret(self, old_secret: str, new_secret: str) -> None:
        """Protect the master key with ``new_secret``: new salt, master key re-encrypted; the
        key files stay as they are. A wrong ``old_secret`` (``KeychainError CYENC-SYMDEC``)
        changes nothing. The keychain is unlocked afterwards."""
        with self._lock:
            master = self._open_master(old_secret)
            salt = core.random_bytes(SALT_LEN)
            sealed = core.secretbox_seal_embedded(master, derive_key(new_secret, salt))
            salt_new = self._dir / (SALT_FILE + _PENDING)
            mk_new = self._dir / (MASTERKEY_FILE + _PENDING)
            _write_file(salt_new, salt)
            _write_file(mk_new, sealed)
            _fsync_dir(self._dir)
            self._commit_pending()
            self._master = master

    def _commit_pending(self) -> None:
        for name in (SALT_FILE, MASTERKEY_FILE):
            pending = self._dir / (name + _PENDING)
            if pending.exists():
                os.replace(pending, self._dir / name)
        _fsync_dir(self._dir)

    def _discard_pending(self) -> None:
        for name in (SALT_FILE, MASTERKEY_FILE):
            (self._dir / (name + _PENDING)).unlink(missing_ok=True)

    def _read(self, name: str, size: int, missing: str | None = None) -> bytes:
        """The private file ``name``, which must hold exactly ``size`` bytes.

        ``KeychainError``: ``missing`` (default ``LAMA-NOKEYCHAIN``) if it does not exist,
        ``LAMA-KEYCHAIN-CORRUPT`` if it is a directory or has another size,
        ``LAMA-KEYCHAIN-UNREADABLE`` for any other I/O error (permissions, a symlink loop, a
        file where the keychain directory should be). Never reads more than ``size + 1``
        bytes, so a huge file costs nothing."""
        path = self._dir / name
        try:
            with open(path, "rb") as f:
                data = f.read(size + 1)
        except FileNotFoundError:
            raise KeychainError(
                missing or f"LAMA-NOKEYCHAIN: no keychain in {self._dir}"
            ) from None
        except IsADirectoryError:
            raise KeychainError(
                f"LAMA-KEYCHAIN-CORRUPT: {path} is a directory, not a keychain file"
            ) from None
        except OSError as e:
            raise KeychainError(
                f"LAMA-KEYCHAIN-UNREADABLE: cannot read {path}: {e.strerror or e}"
            ) from None
        if len(data) != size:
            got = f"more than {size}" if len(data) > size else str(len(data))
            raise KeychainError(
                f"LAMA-KEYCHAIN-CORRUPT: {path} has {got} bytes, expected {size}"
            )
        return data

    def _read_staged(self, name: str, size: int) -> bytes | None:
        """A staged ``*.new`` file, or None if it has the wrong size: a crash while it was
        being written leaves it short, and such a change never took effect."""
        path = self._dir / name
        if path.is_file() and path.stat().st_size != size:
            return None
        return self._read(name, size)

    def _try_open(self, secret: str, salt: bytes, sealed: bytes) -> bytes | None:
        try:
            master: bytes = core.secretbox_open_embedded(sealed, derive_key(secret, salt))
        except DecryptionError:
            return None
        if len(master) != MASTER_KEY_LEN:
            raise KeychainError("LAMA-KEYCHAIN-CORRUPT: the master key has the wrong length")
        return master

    def _open_master(self, secret: str) -> bytes:
        """The master key, after finishing or discarding an interrupted secret change."""
        salt = self._read(SALT_FILE, SALT_LEN)
        sealed = self._read(MASTERKEY_FILE, _SEALED_MASTER_LEN)
        pending_mk = self._dir / (MASTERKEY_FILE + _PENDING)
        pending_salt = self._dir / (SALT_FILE + _PENDING)
        master = self._try_open(secret, salt, sealed)
        if master is not None:
            if pending_mk.exists() and pending_salt.exists():
                # a change that crashed before anything was replaced: the old secret still
                # holds, so the change never happened
                self._discard_pending()
            return master
        if pending_mk.exists():
            # a change interrupted between writing and replacing: if the secret opens the
            # staged master key (with the staged or the already replaced salt), finish it
            staged_salt = (
                self._read_staged(pending_salt.name, SALT_LEN) if pending_salt.exists() else salt
            )
            staged_mk = self._read_staged(pending_mk.name, _SEALED_MASTER_LEN)
            master = None
            if staged_salt is not None and staged_mk is not None:
                master = self._try_open(secret, staged_salt, staged_mk)
            if master is not None:
                self._commit_pending()
                return master
        raise KeychainError("CYENC-SYMDEC: Decryption with symmetric key failed (wrong secret)")

    # --- async variants (scrypt in a worker thread) ----------------------------------------

    async def create_async(self, secret: str) -> None:
        await asyncio.to_thread(self.create, secret)

    async def unlock_async(self, secret: str) -> None:
        await asyncio.to_thread(self.unlock, secret)

    async def open_async(self, secret: str) -> None:
        await asyncio.to_thread(self.open, secret)

    async def change_secret_async(self, old_secret: str, new_secret: str) -> None:
        await asyncio.to_thread(self.change_secret, old_secret, new_secret)

    # --- secret keys per Keys object -------------------------------------------------------

    def _link_new(self, name: str, data: bytes) -> None:
        """Write-once: stage ``data`` in a temporary file, then hard-link it to ``name``
        (fails with ``SB-WPBR3`` if ``name`` exists). Never leaves a partial file."""
        tmp = self._dir / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        _write_file(tmp, data)
        try:
            os.link(tmp, self._dir / name)
        except FileExistsError:
            raise StoreError(f"SB-WPBR3: private file {name} exists already") from None
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self._dir)

    def has_keys(self, keys_hash: str) -> bool:
        """True if both secret files of the Keys object exist (a "complete" key set)."""
        h = core.check_hash(keys_hash, "a Keys object hash")
        return (self._dir / f"{h}.encrypt").is_file() and (self._dir / f"{h}.sign").is_file()

    def store_keys(self, keys_hash: str, keys: SecretKeys) -> None:
        """Write ``<keys_hash>.encrypt`` and ``<keys_hash>.sign`` (write-once, fresh nonces).

        ``StoreError SB-WPBR3`` if either exists (then nothing is written)."""
        h = core.check_hash(keys_hash, "a Keys object hash")
        if not isinstance(keys, SecretKeys):
            raise TypeError(f"keys must be SecretKeys, not {type(keys).__name__}")
        with self._lock:
            master = self._require_master()
            enc, sign = f"{h}.encrypt", f"{h}.sign"
            for name in (enc, sign):
                if (self._dir / name).exists():
                    raise StoreError(f"SB-WPBR3: private file {name} exists already")
            self._link_new(enc, core.secretbox_seal_embedded(keys.encryption_secret, master))
            try:
                self._link_new(sign, core.secretbox_seal_embedded(keys.sign_secret, master))
            except BaseException:
                (self._dir / enc).unlink(missing_ok=True)
                raise

    def load_keys(
        self,
        keys_hash: str,
        public_key: bytes | None = None,
        public_sign_key: bytes | None = None,
    ) -> SecretKeys:
        """The secret keys of a Keys object.

        ``KeychainError KEYCH-NODEFKEYS`` if its files do not exist, ``KeychainError
        CYENC-SYMDEC`` if they do not decrypt with the master key. If the public keys are
        given (from the Keys object), the secrets must match them (``KeychainError
        LAMA-KEYMISMATCH``)."""
        h = core.check_hash(keys_hash, "a Keys object hash")
        with self._lock:
            master = self._require_master()
            missing = f"KEYCH-NODEFKEYS: no secret keys for the Keys object {h}"
            enc_file = self._read(f"{h}.encrypt", _SEALED_ENC_LEN, missing)
            sign_file = self._read(f"{h}.sign", _SEALED_SIGN_LEN, missing)
        try:
            enc = core.secretbox_open_embedded(enc_file, master)
            sign = core.secretbox_open_embedded(sign_file, master)
        except DecryptionError:
            raise KeychainError(
                f"CYENC-SYMDEC: Decryption with symmetric key failed (secret keys of {h})"
            ) from None
        try:
            keys = SecretKeys(enc, sign)
        except CryptoError as e:
            raise KeychainError(f"LAMA-KEYCHAIN-CORRUPT: secret keys of {h}: {e.code}") from None
        if public_key is not None and not hmac.compare_digest(keys.public_key, public_key):
            raise KeychainError(
                f"LAMA-KEYMISMATCH: the encryption secret of {h} does not match its public key"
            )
        if public_sign_key is not None and not hmac.compare_digest(
            keys.public_sign_key, public_sign_key
        ):
            raise KeychainError(
                f"LAMA-KEYMISMATCH: the sign secret of {h} does not match its public key"
            )
        return keys
