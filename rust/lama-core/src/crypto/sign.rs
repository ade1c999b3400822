//! Ed25519 detached signatures in the tweetnacl layout (objects.md §7.1).
//!
//! A secret key is 64 bytes: seed(32) || public(32). Signing checks that the public half
//! belongs to the seed (`CryptoError LAMA-SIGNKEY` otherwise), so both cores always produce
//! the same signature. Verification is strict (RFC 8032 with the libsodium checks: canonical
//! `S`, no small-order public key or `R`).

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use super::{check_len, SIGNATURE_LEN, SIGN_PUBLIC_LEN, SIGN_SECRET_LEN};
use crate::error::{Error, ErrorKind, Result};

/// A fresh random Ed25519 key pair `(public 32, secret 64 = seed || public)`.
pub fn sign_keypair() -> ([u8; SIGN_PUBLIC_LEN], [u8; SIGN_SECRET_LEN]) {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed[..]);
    keypair_of(&seed)
}

fn keypair_of(seed: &[u8; 32]) -> ([u8; SIGN_PUBLIC_LEN], [u8; SIGN_SECRET_LEN]) {
    let key = SigningKey::from_bytes(seed);
    (key.verifying_key().to_bytes(), key.to_keypair_bytes())
}

/// The Ed25519 key pair of a 32-byte seed (tweetnacl `sign.keyPair.fromSeed`).
pub fn sign_keypair_from_seed(seed: &[u8]) -> Result<([u8; SIGN_PUBLIC_LEN], [u8; SIGN_SECRET_LEN])> {
    let seed = check_len::<32>(seed, "sign seed", "LAMA-KEYLEN")?;
    Ok(keypair_of(seed))
}

/// The 64-byte detached signature of `msg` (tweetnacl `sign.detached`, deterministic).
pub fn sign_detached(msg: &[u8], secret: &[u8]) -> Result<[u8; SIGNATURE_LEN]> {
    let sk = check_len::<SIGN_SECRET_LEN>(secret, "sign secret key", "LAMA-KEYLEN")?;
    // Checking the public half derives it from the seed (a scalar multiplication, about as
    // costly as the signature itself: half of a chat `send_many`, issue 10). An instance signs
    // with one key, so the last checked key of this thread is kept and reused while the same
    // 64 bytes come again; any other key is checked as before.
    LAST_KEY.with(|cell| {
        let mut last = cell.borrow_mut();
        if let Some((bytes, key)) = last.as_ref() {
            if bytes.as_slice() == sk.as_slice() {
                return Ok(ed25519_dalek::Signer::sign(key, msg).to_bytes());
            }
        }
        let key = SigningKey::from_keypair_bytes(sk)
            .map_err(|_| Error::crypto("LAMA-SIGNKEY", "sign secret key: public half does not match the seed"))?;
        let sig = ed25519_dalek::Signer::sign(&key, msg).to_bytes();
        *last = Some((zeroize::Zeroizing::new(*sk), key));
        Ok(sig)
    })
}

thread_local! {
    /// The last signing key that passed the public-half check on this thread, with its 64
    /// secret bytes (both wiped when replaced: `Zeroizing`, and `SigningKey` zeroizes on drop).
    static LAST_KEY: std::cell::RefCell<Option<(zeroize::Zeroizing<[u8; SIGN_SECRET_LEN]>, SigningKey)>> =
        const { std::cell::RefCell::new(None) };
}

/// Verifies a detached signature; `SignatureError LAMA-SIGNATURE` if it does not verify.
pub fn sign_verify_detached(msg: &[u8], signature: &[u8], public: &[u8]) -> Result<()> {
    let sig = check_len::<SIGNATURE_LEN>(signature, "signature", "LAMA-SIGLEN")?;
    let pk = check_len::<SIGN_PUBLIC_LEN>(public, "sign public key", "LAMA-KEYLEN")?;
    let bad = || Error::new(ErrorKind::Signature, "LAMA-SIGNATURE", "signature verification failed");
    let key = VerifyingKey::from_bytes(pk).map_err(|_| bad())?;
    key.verify_strict(msg, &Signature::from_bytes(sig)).map_err(|_| bad())
}
