//! Encrypted-connection frame plaintext (connections.md §2.4): the nonce of a frame counter
//! and the random-length padding with its length header.
//!
//! Padded layout: `byte0 = (flags << 4) | n`, then `n` bytes big-endian `p`, then `p` filler
//! bytes, then the data. The writer uses `r` (one random byte): `r == 0` gives just the header
//! byte; otherwise `n = 1`, `p = r - 1`. The caller supplies `r` and the filler (random bytes
//! in the protocol, fixed ones in tests), so this module has no randomness of its own.

use super::NONCE_LEN;
use crate::error::{Error, Result};

/// The 24-byte nonce of frame number `counter`: 16 zero bytes, then `counter` as an unsigned
/// 64-bit big-endian number in bytes 16..23.
pub fn session_nonce(counter: u64) -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    n[16..].copy_from_slice(&counter.to_be_bytes());
    n
}

/// The padded plaintext of `data`: `flags` (0 = binary, 1 = UTF-8 string; 0..=15), `r` the
/// random padding byte, `filler` exactly `max(r - 1, 0)` bytes. Length `data.len() + 1 + r`.
pub fn frame_pad(data: &[u8], flags: u8, r: u8, filler: &[u8]) -> Result<Vec<u8>> {
    if flags > 0x0f {
        return Err(Error::crypto("LAMA-PADDING", "frame flags must be in 0..=15"));
    }
    let want = usize::from(r.saturating_sub(1));
    if filler.len() != want {
        return Err(Error::crypto(
            "LAMA-PADDING",
            format!("frame filler must be {want} bytes for r = {r}, got {}", filler.len()),
        ));
    }
    let mut out = Vec::with_capacity(data.len() + 1 + usize::from(r));
    if r == 0 {
        out.push(flags << 4);
    } else {
        out.push((flags << 4) | 1);
        out.push(r - 1);
        out.extend_from_slice(filler);
    }
    out.extend_from_slice(data);
    Ok(out)
}

/// Splits a padded plaintext into `(flags, data)`. Accepts any length-header size `n` in
/// 0..=8 and any filler length `p`; a truncated header or filler is `CryptoError LAMA-PADDING`.
pub fn frame_unpad(padded: &[u8]) -> Result<(u8, Vec<u8>)> {
    let bad = |what: &str| Error::crypto("LAMA-PADDING", format!("malformed frame padding: {what}"));
    let &byte0 = padded.first().ok_or_else(|| bad("empty plaintext"))?;
    let n = usize::from(byte0 & 0x0f);
    if n > 8 {
        return Err(bad("length header longer than 8 bytes"));
    }
    let header = padded.get(1..1 + n).ok_or_else(|| bad("truncated length header"))?;
    let p = header.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    let start = u64::try_from(1 + n).unwrap_or(u64::MAX).saturating_add(p);
    if start > padded.len() as u64 {
        return Err(bad("filler longer than the plaintext"));
    }
    Ok((byte0 >> 4, padded[start as usize..].to_vec()))
}
