//! NaCl-compatible crypto primitives (objects.md §7.1, connections.md §1.2).
//!
//! Byte-compatible with tweetnacl as used by one.core (checked against
//! `tests/vectors/crypto-and-frames.json`, section `primitives`):
//!
//! - [`nacl`]: X25519 key pairs and `box.before` (HSalsa20 of the X25519 point), secretbox
//!   (XSalsa20-Poly1305, output = 16-byte tag || ciphertext), the "embedded nonce" format
//!   `nonce(24) || secretbox`;
//! - [`xsalsa`]: XSalsa20-Poly1305 in place with a SIMD Salsa20 (the secretbox of the two
//!   above and of every encrypted-connection frame);
//! - [`frame`]: what the encryption plugin adds around a frame (connections.md §2.4): the
//!   session nonce of a frame counter and the random-length padding of the plaintext;
//! - [`sign`]: Ed25519 key pairs in the tweetnacl layout (secret = seed || public, 64 bytes)
//!   and detached signatures;
//! - [`kdf`]: scrypt (the keychain's key derivation, objects.md §7.4) and random bytes.
//!
//! The keychain itself (files in `private/`) is written in Python on top of these primitives
//! (`python/lama/keychain.py`), shared by both cores.
//!
//! Errors: malformed input (wrong key/nonce length, bad scrypt parameters, a weak public key)
//! is [`ErrorKind::Crypto`](crate::ErrorKind::Crypto); a box that does not authenticate is
//! [`ErrorKind::Decryption`](crate::ErrorKind::Decryption) with the reference's code
//! `CYENC-SYMDEC`; a signature that does not verify is
//! [`ErrorKind::Signature`](crate::ErrorKind::Signature). Messages never contain key material.

pub mod frame;
pub mod kdf;
pub mod nacl;
pub mod sign;
pub mod xsalsa;

#[cfg(test)]
mod tests;

pub use kdf::{random_bytes, scrypt};
pub use nacl::{
    box_before, box_keypair, box_open_embedded, box_public_from_secret, box_seal_embedded,
    secretbox_open, secretbox_open_embedded, secretbox_seal, secretbox_seal_embedded,
};
pub use frame::{frame_open, frame_open_in_place, frame_pad, frame_seal, frame_unpad, session_nonce};
pub use sign::{sign_detached, sign_keypair, sign_keypair_from_seed, sign_verify_detached};

/// Length of an X25519 public or secret key, a shared key and a secretbox key.
pub const KEY_LEN: usize = 32;
/// Length of a secretbox / box nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag that precedes the ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of an Ed25519 public key and seed.
pub const SIGN_PUBLIC_LEN: usize = 32;
/// Length of an Ed25519 secret key in the tweetnacl layout (seed || public).
pub const SIGN_SECRET_LEN: usize = 64;
/// Length of an Ed25519 detached signature.
pub const SIGNATURE_LEN: usize = 64;

use crate::error::{Error, ErrorKind, Result};

/// `CryptoError` for an input of the wrong length (`what` names it; no bytes are shown).
pub(crate) fn check_len<'a, const N: usize>(data: &'a [u8], what: &str, code: &str) -> Result<&'a [u8; N]> {
    data.try_into().map_err(|_| {
        Error::crypto(code, format!("{what} must be {N} bytes, got {}", data.len()))
    })
}

/// The reference's error for a box that does not open (connections.md §1.2).
pub(crate) fn decryption_failed() -> Error {
    Error::new(ErrorKind::Decryption, "CYENC-SYMDEC", "Decryption with symmetric key failed")
}
