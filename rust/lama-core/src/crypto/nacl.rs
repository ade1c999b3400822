//! X25519 + XSalsa20-Poly1305: tweetnacl `box` / `secretbox` (connections.md §1.2).
//!
//! `box.before(pk, sk)` = HSalsa20(X25519(sk, pk), 16 zero bytes); `box.after(m, n, k)` is
//! exactly `secretbox(m, n, k)`, so a box with a precomputed shared key is sealed and opened
//! with [`secretbox_seal`] / [`secretbox_open`] (XSalsa20-Poly1305 of `xsalsa.rs`). Secret X25519 keys are kept unclamped, as
//! tweetnacl stores them; clamping happens inside the scalar multiplication.

use salsa20::cipher::consts::U10;
use salsa20::cipher::generic_array::GenericArray;
use zeroize::Zeroizing;

use super::{check_len, decryption_failed, KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::error::{Error, Result};

/// A fresh random X25519 key pair `(public, secret)` from the OS random generator.
pub fn box_keypair() -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut secret = [0u8; KEY_LEN];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    let public = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
    (public, secret)
}

/// The X25519 public key of a 32-byte secret key (tweetnacl `box.keyPair.fromSecretKey`).
pub fn box_public_from_secret(secret: &[u8]) -> Result<[u8; KEY_LEN]> {
    let sk = check_len::<KEY_LEN>(secret, "box secret key", "LAMA-KEYLEN")?;
    Ok(x25519_dalek::x25519(*sk, x25519_dalek::X25519_BASEPOINT_BYTES))
}

/// The shared key `box.before(their_public, my_secret)` (NaCl `crypto_box_beforenm`).
///
/// Symmetric: `box_before(pk_b, sk_a) == box_before(pk_a, sk_b)`. A public key of small order
/// (the X25519 result is all zero) is rejected with `CryptoError LAMA-WEAKKEY`, as libsodium
/// does.
pub fn box_before(their_public: &[u8], my_secret: &[u8]) -> Result<[u8; KEY_LEN]> {
    let pk = check_len::<KEY_LEN>(their_public, "box public key", "LAMA-KEYLEN")?;
    let sk = check_len::<KEY_LEN>(my_secret, "box secret key", "LAMA-KEYLEN")?;
    let point = Zeroizing::new(x25519_dalek::x25519(*sk, *pk));
    if point.iter().all(|&b| b == 0) {
        return Err(Error::crypto("LAMA-WEAKKEY", "public key of small order (no shared secret)"));
    }
    let shared = salsa20::hsalsa::<U10>(GenericArray::from_slice(&point[..]), &GenericArray::default());
    let mut out = [0u8; KEY_LEN];
    out.copy_from_slice(&shared);
    Ok(out)
}

fn key_of(key: &[u8]) -> Result<&[u8; KEY_LEN]> {
    check_len::<KEY_LEN>(key, "secretbox key", "LAMA-KEYLEN")
}

fn nonce_of(nonce: &[u8]) -> Result<&[u8; NONCE_LEN]> {
    check_len::<NONCE_LEN>(nonce, "nonce", "LAMA-NONCELEN")
}

/// `secretbox(msg, nonce, key)`: 16-byte Poly1305 tag followed by the ciphertext
/// (length `msg.len() + 16`, no nonce). Also tweetnacl `box.after` with a shared key.
pub fn secretbox_seal(msg: &[u8], nonce: &[u8], key: &[u8]) -> Result<Vec<u8>> {
    let key = key_of(key)?;
    let nonce = nonce_of(nonce)?;
    let mut out = Vec::with_capacity(TAG_LEN + msg.len());
    out.extend_from_slice(&[0u8; TAG_LEN]);
    out.extend_from_slice(msg);
    let tag = super::xsalsa::seal_in_place(key, nonce, &mut out[TAG_LEN..]);
    out[..TAG_LEN].copy_from_slice(&tag);
    Ok(out)
}

/// Opens a [`secretbox_seal`] output; `DecryptionError CYENC-SYMDEC` if it does not
/// authenticate (wrong key or nonce, tampered or truncated data).
pub fn secretbox_open(boxed: &[u8], nonce: &[u8], key: &[u8]) -> Result<Vec<u8>> {
    let key = key_of(key)?;
    let nonce = nonce_of(nonce)?;
    if boxed.len() < TAG_LEN {
        return Err(decryption_failed());
    }
    let (tag, ct) = boxed.split_at(TAG_LEN);
    let mut out = ct.to_vec();
    let tag: &[u8; TAG_LEN] = tag.try_into().expect("split at TAG_LEN");
    if !super::xsalsa::open_in_place(key, nonce, &mut out, tag) {
        return Err(decryption_failed());
    }
    Ok(out)
}

fn fresh_or_given_nonce(nonce: Option<&[u8]>) -> Result<[u8; NONCE_LEN]> {
    match nonce {
        Some(n) => Ok(*nonce_of(n)?),
        None => {
            let mut n = [0u8; NONCE_LEN];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut n);
            Ok(n)
        }
    }
}

/// Embedded-nonce format (one.core `symmetricEncryptAndEmbedNonce`):
/// `nonce(24) || secretbox(msg, nonce, key)`. `nonce = None` draws a fresh random nonce
/// (what the reference always does); a fixed nonce is for tests and vectors.
pub fn secretbox_seal_embedded(msg: &[u8], key: &[u8], nonce: Option<&[u8]>) -> Result<Vec<u8>> {
    let n = fresh_or_given_nonce(nonce)?;
    let sealed = secretbox_seal(msg, &n, key)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&n);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens `nonce(24) || secretbox`; anything shorter than 40 bytes or not authentic is
/// `DecryptionError CYENC-SYMDEC`.
pub fn secretbox_open_embedded(data: &[u8], key: &[u8]) -> Result<Vec<u8>> {
    key_of(key)?;
    if data.len() < NONCE_LEN + TAG_LEN {
        return Err(decryption_failed());
    }
    let (n, boxed) = data.split_at(NONCE_LEN);
    secretbox_open(boxed, n, key)
}

/// one.core `encryptAndEmbedNonce(msg, my_secret, their_public)`:
/// `nonce || secretbox(msg, nonce, box_before(their_public, my_secret))`.
pub fn box_seal_embedded(msg: &[u8], my_secret: &[u8], their_public: &[u8], nonce: Option<&[u8]>) -> Result<Vec<u8>> {
    let n = fresh_or_given_nonce(nonce)?;
    let shared = Zeroizing::new(box_before(their_public, my_secret)?);
    secretbox_seal_embedded(msg, &shared[..], Some(&n))
}

/// one.core `decryptWithEmbeddedNonce(data, my_secret, their_public)`.
pub fn box_open_embedded(data: &[u8], my_secret: &[u8], their_public: &[u8]) -> Result<Vec<u8>> {
    let shared = Zeroizing::new(box_before(their_public, my_secret)?);
    secretbox_open_embedded(data, &shared[..])
}
