//! scrypt and random bytes (objects.md §7.4: the keychain key is
//! `scrypt(UTF-8(NFKC(secret)), salt, N=1024, r=8, p=1, dkLen=32)`).
//!
//! Both cores accept the same parameter range, so a parameter set either works in both or
//! fails in both with `CryptoError LAMA-SCRYPT`: `n` a power of two in 2..=2^20, `r` in 1..=64,
//! `p` in 1..=64, `n < 2^(16 r)`, `128 * r * n` at most 1 GiB, `dklen` in 1..=1024.

use crate::error::{Error, Result};

/// Largest `n` accepted by [`scrypt`].
pub const SCRYPT_MAX_N: u64 = 1 << 20;
/// Largest `r` and `p` accepted by [`scrypt`].
pub const SCRYPT_MAX_RP: u32 = 64;
/// Largest memory `128 * r * n` accepted by [`scrypt`], in bytes.
pub const SCRYPT_MAX_MEM: u64 = 1 << 30;
/// Largest derived key accepted by [`scrypt`].
pub const SCRYPT_MAX_DKLEN: usize = 1024;
/// Largest [`random_bytes`] request.
pub const RANDOM_MAX: usize = 1 << 30;

/// scrypt (RFC 7914) of `password` and `salt`; `dklen` bytes.
pub fn scrypt(password: &[u8], salt: &[u8], n: u64, r: u32, p: u32, dklen: usize) -> Result<Vec<u8>> {
    let bad = |what: &str| Error::crypto("LAMA-SCRYPT", format!("invalid scrypt parameters: {what}"));
    if !(2..=SCRYPT_MAX_N).contains(&n) || !n.is_power_of_two() {
        return Err(bad("n must be a power of two in 2..=1048576"));
    }
    if r == 0 || r > SCRYPT_MAX_RP || p == 0 || p > SCRYPT_MAX_RP {
        return Err(bad("r and p must be in 1..=64"));
    }
    if n.trailing_zeros() >= 16 * r {
        return Err(bad("n must be below 2^(16 r)"));
    }
    if 128 * u64::from(r) * n > SCRYPT_MAX_MEM {
        return Err(bad("128 * r * n must be at most 1 GiB"));
    }
    if dklen == 0 || dklen > SCRYPT_MAX_DKLEN {
        return Err(bad("dklen must be in 1..=1024"));
    }
    // `Params.len` only matters for PHC strings; `scrypt()` derives `out.len()` bytes.
    let params = scrypt::Params::new(n.trailing_zeros() as u8, r, p, 32).map_err(|_| bad("rejected"))?;
    let mut out = vec![0u8; dklen];
    scrypt::scrypt(password, salt, &params, &mut out).map_err(|_| bad("rejected"))?;
    Ok(out)
}

/// `n` bytes from the OS random generator (tweetnacl `randomBytes`).
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    if n > RANDOM_MAX {
        return Err(Error::crypto("LAMA-RANDLEN", format!("random_bytes: at most {RANDOM_MAX} bytes")));
    }
    let mut out = vec![0u8; n];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut out);
    Ok(out)
}
