"""NaCl-compatible crypto primitives of the pure-Python core (objects.md §7.1, connections.md §1.2).

The same functions, arguments, results and errors as ``lama._lama`` (``rust/lama-py/src/crypto.rs``
over ``lama_core::crypto``), built on PyNaCl (libsodium) and :func:`hashlib.scrypt`:

* ``box_before(pk, sk)`` = HSalsa20(X25519(sk, pk)) (libsodium ``crypto_box_beforenm``);
* ``secretbox_seal`` = XSalsa20-Poly1305, output ``tag(16) || ciphertext`` (tweetnacl layout;
  also tweetnacl ``box.after`` with a shared key);
* the "embedded nonce" format ``nonce(24) || secretbox`` (one.core ``encryptAndEmbedNonce``);
* Ed25519 in the tweetnacl layout (secret key = seed || public, 64 bytes), detached signatures;
* scrypt with the parameter range documented in docs/core-interface.md;
* the encryption plugin's frame nonce and padding (connections.md §2.4).

Errors: ``CryptoError`` for malformed input (``LAMA-KEYLEN``, ``LAMA-NONCELEN``, ``LAMA-SIGLEN``,
``LAMA-SCRYPT``, ``LAMA-WEAKKEY``, ``LAMA-SIGNKEY``, ``LAMA-PADDING``, ...), ``DecryptionError
CYENC-SYMDEC`` for a box that does not authenticate, ``SignatureError LAMA-SIGNATURE`` for a bad
signature.  No message ever contains key material.
"""

from __future__ import annotations

import hashlib
import hmac
import operator
import os

import nacl.bindings as _nb
import nacl.exceptions as _nx

from lama.errors import CryptoError, DecryptionError, SignatureError

__all__ = [
    "box_keypair",
    "box_public_from_secret",
    "box_before",
    "secretbox_seal",
    "secretbox_open",
    "secretbox_seal_embedded",
    "secretbox_open_embedded",
    "box_seal_embedded",
    "box_open_embedded",
    "sign_keypair",
    "sign_keypair_from_seed",
    "sign_detached",
    "sign_verify_detached",
    "random_bytes",
    "scrypt",
    "session_nonce",
    "frame_pad",
    "frame_unpad",
]

KEY_LEN = 32
NONCE_LEN = 24
TAG_LEN = 16
SIGN_PUBLIC_LEN = 32
SIGN_SECRET_LEN = 64
SIGNATURE_LEN = 64

SCRYPT_MAX_N = 1 << 20
SCRYPT_MAX_RP = 64
SCRYPT_MAX_MEM = 1 << 30
SCRYPT_MAX_DKLEN = 1024
RANDOM_MAX = 1 << 30


def _bytes(value: object, name: str) -> bytes:
    """The argument as ``bytes``; other types are a ``TypeError`` (as in the native core)."""
    if not isinstance(value, bytes):
        raise TypeError(f"argument '{name}': expected bytes, got {type(value).__name__}")
    return value


def _len(value: object, name: str, what: str, n: int, code: str) -> bytes:
    data = _bytes(value, name)
    if len(data) != n:
        raise CryptoError(f"{code}: {what} must be {n} bytes, got {len(data)}")
    return data


def _key(value: object, name: str, what: str = "secretbox key") -> bytes:
    return _len(value, name, what, KEY_LEN, "LAMA-KEYLEN")


def _nonce(value: object, name: str = "nonce") -> bytes:
    return _len(value, name, "nonce", NONCE_LEN, "LAMA-NONCELEN")


def _int(value: object, name: str) -> int:
    if isinstance(value, float):
        raise TypeError(f"argument '{name}': 'float' object cannot be interpreted as an integer")
    return operator.index(value)  # type: ignore[arg-type]


def _decryption_failed() -> DecryptionError:
    return DecryptionError("CYENC-SYMDEC: Decryption with symmetric key failed")


# --- X25519 / box ---------------------------------------------------------------------------


def box_keypair() -> tuple[bytes, bytes]:
    """A fresh random X25519 key pair ``(public, secret)``."""
    secret = os.urandom(KEY_LEN)
    return _nb.crypto_scalarmult_base(secret), secret


def box_public_from_secret(secret: bytes) -> bytes:
    """The X25519 public key of a 32-byte secret key (tweetnacl ``box.keyPair.fromSecretKey``)."""
    return _nb.crypto_scalarmult_base(_key(secret, "secret", "box secret key"))


def box_before(their_public: bytes, my_secret: bytes) -> bytes:
    """The shared key ``box.before(their_public, my_secret)``; symmetric in the two pairs."""
    pk = _key(their_public, "their_public", "box public key")
    sk = _key(my_secret, "my_secret", "box secret key")
    try:
        return _nb.crypto_box_beforenm(pk, sk)
    except _nx.CryptoError:
        # libsodium refuses a small-order public key (all-zero X25519 result)
        raise CryptoError("LAMA-WEAKKEY: public key of small order (no shared secret)") from None


# --- secretbox --------------------------------------------------------------------------------


def secretbox_seal(msg: bytes, nonce: bytes, key: bytes) -> bytes:
    """``tag(16) || ciphertext`` of ``msg`` (no nonce in the output)."""
    k = _key(key, "key")
    n = _nonce(nonce)
    return _nb.crypto_secretbox(_bytes(msg, "msg"), n, k)


def secretbox_open(boxed: bytes, nonce: bytes, key: bytes) -> bytes:
    """Opens a :func:`secretbox_seal` output; ``DecryptionError CYENC-SYMDEC`` if not authentic."""
    k = _key(key, "key")
    n = _nonce(nonce)
    data = _bytes(boxed, "boxed")
    if len(data) < TAG_LEN:
        raise _decryption_failed()
    try:
        return _nb.crypto_secretbox_open(data, n, k)
    except _nx.CryptoError:
        raise _decryption_failed() from None


def _fresh_or_given(nonce: bytes | None) -> bytes:
    return os.urandom(NONCE_LEN) if nonce is None else _nonce(nonce)


def secretbox_seal_embedded(msg: bytes, key: bytes, nonce: bytes | None = None) -> bytes:
    """``nonce(24) || secretbox(msg, nonce, key)``; a random nonce unless one is given."""
    k = _key(key, "key")
    n = _fresh_or_given(nonce)
    return n + secretbox_seal(msg, n, k)


def secretbox_open_embedded(data: bytes, key: bytes) -> bytes:
    """Opens ``nonce(24) || secretbox``; shorter than 40 bytes or not authentic: CYENC-SYMDEC."""
    k = _key(key, "key")
    d = _bytes(data, "data")
    if len(d) < NONCE_LEN + TAG_LEN:
        raise _decryption_failed()
    return secretbox_open(d[NONCE_LEN:], d[:NONCE_LEN], k)


def box_seal_embedded(
    msg: bytes, my_secret: bytes, their_public: bytes, nonce: bytes | None = None
) -> bytes:
    """one.core ``encryptAndEmbedNonce``: embedded-nonce secretbox with ``box_before``."""
    n = _fresh_or_given(nonce)
    shared = box_before(their_public, my_secret)
    return secretbox_seal_embedded(msg, shared, n)


def box_open_embedded(data: bytes, my_secret: bytes, their_public: bytes) -> bytes:
    """one.core ``decryptWithEmbeddedNonce``."""
    return secretbox_open_embedded(data, box_before(their_public, my_secret))


# --- Ed25519 ----------------------------------------------------------------------------------


def sign_keypair() -> tuple[bytes, bytes]:
    """A fresh random Ed25519 key pair ``(public 32, secret 64 = seed || public)``."""
    return _nb.crypto_sign_seed_keypair(os.urandom(32))


def sign_keypair_from_seed(seed: bytes) -> tuple[bytes, bytes]:
    """The Ed25519 key pair of a 32-byte seed (tweetnacl ``sign.keyPair.fromSeed``)."""
    return _nb.crypto_sign_seed_keypair(_len(seed, "seed", "sign seed", 32, "LAMA-KEYLEN"))


def sign_detached(msg: bytes, secret: bytes) -> bytes:
    """The 64-byte detached signature of ``msg`` (deterministic)."""
    global _last_sign_key
    sk = _len(secret, "secret", "sign secret key", SIGN_SECRET_LEN, "LAMA-KEYLEN")
    m = _bytes(msg, "msg")
    # the public-half check derives the public key from the seed (a scalar multiplication):
    # an instance signs with one key, so the last key that passed is not checked again
    # (issue 10, as the Rust core)
    if _last_sign_key is None or not hmac.compare_digest(_last_sign_key, sk):
        public, _ = _nb.crypto_sign_seed_keypair(sk[:32])
        if not hmac.compare_digest(public, sk[32:]):
            raise CryptoError("LAMA-SIGNKEY: sign secret key: public half does not match the seed")
        _last_sign_key = bytes(sk)
    return _nb.crypto_sign(m, sk)[:SIGNATURE_LEN]


_last_sign_key: bytes | None = None


def sign_verify_detached(msg: bytes, signature: bytes, public: bytes) -> None:
    """``None`` if the signature verifies, else ``SignatureError LAMA-SIGNATURE``."""
    m = _bytes(msg, "msg")
    sig = _len(signature, "signature", "signature", SIGNATURE_LEN, "LAMA-SIGLEN")
    pk = _len(public, "public", "sign public key", SIGN_PUBLIC_LEN, "LAMA-KEYLEN")
    try:
        _nb.crypto_sign_open(sig + m, pk)
    except _nx.CryptoError:
        raise SignatureError("LAMA-SIGNATURE: signature verification failed") from None


# --- scrypt, random ---------------------------------------------------------------------------


def random_bytes(n: int) -> bytes:
    """``n`` random bytes from the OS."""
    n = _int(n, "n")
    if n < 0:
        raise CryptoError(f"LAMA-RANDLEN: random_bytes length out of range: {n}")
    if n > RANDOM_MAX:
        raise CryptoError(f"LAMA-RANDLEN: random_bytes: at most {RANDOM_MAX} bytes")
    return os.urandom(n)


def scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    """scrypt (RFC 7914). The keychain uses N=1024, r=8, p=1, dkLen=32 (objects.md §7.4)."""
    pw = _bytes(password, "password")
    s = _bytes(salt, "salt")
    n, r, p, dklen = (_int(v, k) for v, k in ((n, "n"), (r, "r"), (p, "p"), (dklen, "dklen")))

    def bad(what: str) -> CryptoError:
        return CryptoError(f"LAMA-SCRYPT: invalid scrypt parameters: {what}")

    if not (2 <= n <= SCRYPT_MAX_N) or n & (n - 1):
        raise bad("n must be a power of two in 2..=1048576")
    if not (1 <= r <= SCRYPT_MAX_RP) or not (1 <= p <= SCRYPT_MAX_RP):
        raise bad("r and p must be in 1..=64")
    if n.bit_length() - 1 >= 16 * r:
        raise bad("n must be below 2^(16 r)")
    if 128 * r * n > SCRYPT_MAX_MEM:
        raise bad("128 * r * n must be at most 1 GiB")
    if not (1 <= dklen <= SCRYPT_MAX_DKLEN):
        raise bad("dklen must be in 1..=1024")
    maxmem = 128 * r * (n + p + 2) + (1 << 20)
    return hashlib.scrypt(pw, salt=s, n=n, r=r, p=p, dklen=dklen, maxmem=maxmem)


# --- encrypted-connection frames (connections.md §2.4) ----------------------------------------


def session_nonce(counter: int) -> bytes:
    """The nonce of frame ``counter``: 16 zero bytes, then the counter as u64 big-endian."""
    c = _int(counter, "counter")
    if not 0 <= c < 1 << 64:
        raise CryptoError(f"LAMA-COUNTER: frame counter out of range: {c}")
    return bytes(16) + c.to_bytes(8, "big")


def frame_pad(data: bytes, flags: int, r: int, filler: bytes) -> bytes:
    """Padded frame plaintext: flags 0..15, ``r`` 0..255, ``filler`` of ``max(r - 1, 0)`` bytes."""
    d = _bytes(data, "data")
    f = _bytes(filler, "filler")
    flags = _int(flags, "flags")
    r = _int(r, "r")
    if not 0 <= flags <= 255:
        raise CryptoError(f"LAMA-PADDING: frame flags out of range: {flags}")
    if not 0 <= r <= 255:
        raise CryptoError(f"LAMA-PADDING: frame padding r out of range: {r}")
    if flags > 0x0F:
        raise CryptoError("LAMA-PADDING: frame flags must be in 0..=15")
    want = max(r - 1, 0)
    if len(f) != want:
        raise CryptoError(f"LAMA-PADDING: frame filler must be {want} bytes for r = {r}, got {len(f)}")
    if r == 0:
        return bytes([flags << 4]) + d
    return bytes([(flags << 4) | 1, r - 1]) + f + d


def frame_unpad(padded: bytes) -> tuple[int, bytes]:
    """``(flags, data)`` of a padded frame plaintext (any length-header size 0..8)."""
    b = _bytes(padded, "padded")

    def bad(what: str) -> CryptoError:
        return CryptoError(f"LAMA-PADDING: malformed frame padding: {what}")

    if not b:
        raise bad("empty plaintext")
    n = b[0] & 0x0F
    if n > 8:
        raise bad("length header longer than 8 bytes")
    if len(b) < 1 + n:
        raise bad("truncated length header")
    start = 1 + n + int.from_bytes(b[1 : 1 + n], "big")
    if start > len(b):
        raise bad("filler longer than the plaintext")
    return b[0] >> 4, b[start:]

