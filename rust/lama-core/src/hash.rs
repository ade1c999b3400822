//! SHA-256 hashes as lowercase hex (objects.md §2).
use sha2::{Digest, Sha256};

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hash_hex(&sha256(data))
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The 64 lowercase hex digits of a hash, on the stack (no allocation; the hot paths turn
/// them straight into a Python `str` or a `String`).
#[inline]
pub fn hash_hex_bytes(h: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, b) in h.iter().enumerate() {
        out[2 * i] = HEX_DIGITS[(b >> 4) as usize];
        out[2 * i + 1] = HEX_DIGITS[(b & 15) as usize];
    }
    out
}

/// Lowercase hex of a hash as a `str` in `buf` (filled by [`hash_hex_bytes`]).
#[inline]
pub fn hex_str(buf: &[u8; 64]) -> &str {
    // Only ASCII hex digits are ever written into the buffer.
    std::str::from_utf8(buf).expect("hex digits are ASCII")
}

/// Lowercase hex of a hash (a table lookup per byte; `hex::encode` goes through `char`s).
pub fn hash_hex(h: &[u8; 32]) -> String {
    hex_str(&hash_hex_bytes(h)).to_owned()
}

/// Raw SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// True for exactly 64 lowercase hex characters (`^[0-9a-f]{64}$`).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decode a hash string into 32 raw bytes; `None` unless [`is_hash`].
pub fn hash_bytes(s: &str) -> Option<[u8; 32]> {
    if !is_hash(s) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn known_hashes() {
        assert_eq!(
            sha256_hex(b"hello world"),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert!(is_hash("b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"));
        assert!(!is_hash("B94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"));
        assert!(!is_hash("abc"));
        let h = sha256(b"hello world");
        assert_eq!(hash_hex(&h), hex::encode(h));
        assert_eq!(hash_hex(&[0xff; 32]), "f".repeat(64));
        assert_eq!(hash_hex(&[0x0a; 32]), "0a".repeat(32));
    }
}
