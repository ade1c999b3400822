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

/// The wire frame of one message of an encrypted connection (connections.md §2.4):
/// `secretbox(pad(data), session_nonce(counter), key)` = 16-byte tag || ciphertext, no nonce.
/// Built in one buffer (tag room, padding, data, then encryption in place): a 64 KiB fragment
/// is copied once, not once per step. `r` and `filler` as in [`frame_pad`].
pub fn frame_seal(key: &[u8], counter: u64, data: &[u8], flags: u8, r: u8, filler: &[u8]) -> Result<Vec<u8>> {
    let key = super::check_len::<{ super::KEY_LEN }>(key, "secretbox key", "LAMA-KEYLEN")?;
    let padded = frame_pad(b"", flags, r, filler)?;
    let mut out = Vec::with_capacity(super::TAG_LEN + padded.len() + data.len());
    out.extend_from_slice(&[0u8; super::TAG_LEN]);
    out.extend_from_slice(&padded);
    out.extend_from_slice(data);
    let tag = super::xsalsa::seal_in_place(key, &session_nonce(counter), &mut out[super::TAG_LEN..]);
    out[..super::TAG_LEN].copy_from_slice(&tag);
    Ok(out)
}

/// Opens a [`frame_seal`] output in place: `(flags, start)`, the data being `wire[start..]`
/// (no bytes moved: a reassembling reader copies the data once, from there). A frame that does
/// not authenticate (wrong key or counter, tampered, truncated) is `DecryptionError
/// CYENC-SYMDEC`; malformed padding is `CryptoError LAMA-PADDING`.
pub fn frame_open_in_place(key: &[u8], counter: u64, wire: &mut [u8]) -> Result<(u8, usize)> {
    let key = super::check_len::<{ super::KEY_LEN }>(key, "secretbox key", "LAMA-KEYLEN")?;
    if wire.len() < super::TAG_LEN {
        return Err(super::decryption_failed());
    }
    let (tag, body) = wire.split_at_mut(super::TAG_LEN);
    let tag: &[u8; super::TAG_LEN] = (&*tag).try_into().expect("split at TAG_LEN");
    if !super::xsalsa::open_in_place(key, &session_nonce(counter), body, tag) {
        return Err(super::decryption_failed());
    }
    // the padding header, as frame_unpad reads it
    let padded = &wire[super::TAG_LEN..];
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
    Ok((byte0 >> 4, super::TAG_LEN + start as usize))
}

/// Opens a [`frame_seal`] output: `(flags, data)`, errors as [`frame_open_in_place`].
pub fn frame_open(key: &[u8], counter: u64, mut wire: Vec<u8>) -> Result<(u8, Vec<u8>)> {
    let (flags, start) = frame_open_in_place(key, counter, &mut wire)?;
    wire.drain(..start);
    Ok((flags, wire))
}
