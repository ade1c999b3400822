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
    // Every reference a serializer writes is checked: a fixed 64-byte block tested without a
    // branch per byte (the compiler vectorizes the fold), instead of an early-exit `all`.
    let Ok(b) = <&[u8; 64]>::try_from(s.as_bytes()) else { return false };
    b.iter().fold(true, |ok, &c| ok & ((c.wrapping_sub(b'0') < 10) | (c.wrapping_sub(b'a') < 6)))
}

/// Decode a hash string into 32 raw bytes; `None` unless [`is_hash`].
pub fn hash_bytes(s: &str) -> Option<[u8; 32]> {
    if !is_hash(s) {
        return None;
    }
    Some(hash_bytes_of_hex(s.as_bytes().try_into().ok()?))
}

/// The 32 bytes of 64 hex digits already checked by [`is_hash`] (lowercase `0-9a-f`): a
/// branch-free nibble per digit (`hex::decode_to_slice` checks and branches per character;
/// it was 3 % of the CHUM importer's CPU, issue 8). Other input gives unspecified bytes.
#[inline]
pub fn hash_bytes_of_hex(b: &[u8; 64]) -> [u8; 32] {
    // '0'-'9' = 0x30-0x39 -> low nibble; 'a'-'f' = 0x61-0x66 -> low nibble + 9
    let nib = |c: u8| (c & 0x0f) + 9 * (c >> 6);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nib(b[2 * i]) << 4) | nib(b[2 * i + 1]);
    }
    out
}

/// A 32-byte SHA-256 hash (objects.md §2.1). Inside the core hashes travel as this type; hex
/// strings exist only at the boundaries (Python, microdata text, error messages).
///
/// `Ord` is the byte order, which is also the order of LMDB keys and of the lowercase hex
/// strings, so sorting either gives the same sequence.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Parse exactly 64 lowercase hex characters (`[0-9a-f]{64}`, nothing before or after:
    /// no trailing newline, no uppercase, no whitespace); `None` otherwise.
    pub fn parse(s: &str) -> Option<Hash> {
        hash_bytes(s).map(Hash)
    }

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(sha256(data))
    }

    /// From a raw 32-byte slice (an LMDB key or value); `None` for another length.
    pub fn from_slice(b: &[u8]) -> Option<Hash> {
        b.try_into().ok().map(Hash)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hash_hex(&self.0)
    }
}

impl std::ops::Deref for Hash {
    type Target = [u8; 32];
    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8; 32]> for Hash {
    fn eq(&self, other: &[u8; 32]) -> bool {
        &self.0 == other
    }
}

impl From<[u8; 32]> for Hash {
    fn from(b: [u8; 32]) -> Hash {
        Hash(b)
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(hex_str(&hash_hex_bytes(&self.0)))
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hash({self})")
    }
}

/// The error for a value that is not a hash: `MicrodataError LAMA-BADHASH` (one code for every
/// malformed hash argument, in both cores; docs/core-interface.md `check_hash`).
pub fn bad_hash(what: &str, shown: &str) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::ErrorKind::Microdata,
        "LAMA-BADHASH",
        format!("{what} is not a hash (64 lowercase hex characters): {shown}"),
    )
}

/// Validate a hash string: `Ok(Hash)` for exactly 64 lowercase hex characters, else
/// [`bad_hash`] (`what` names the argument in the message).
pub fn check_hash(s: &str, what: &str) -> crate::error::Result<Hash> {
    Hash::parse(s).ok_or_else(|| bad_hash(what, &format!("{s:?}")))
}

impl std::str::FromStr for Hash {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Hash> {
        check_hash(s, "hash")
    }
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

    #[test]
    fn hash_bytes_every_byte() {
        // every byte value in every position decodes as `hex` does
        for b in 0..=255u8 {
            let mut h = [0u8; 32];
            for (i, x) in h.iter_mut().enumerate() {
                *x = b.wrapping_add((i as u8).wrapping_mul(37));
            }
            let s = hex::encode(h);
            assert_eq!(hash_bytes(&s), Some(h));
            assert_eq!(hash_bytes_of_hex(s.as_bytes().try_into().unwrap()), h);
        }
        assert_eq!(hash_bytes(&"A".repeat(64)), None);
    }

    #[test]
    fn hash_newtype() {
        let hex = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        let h = Hash::parse(hex).unwrap();
        assert_eq!(h, Hash::of(b"hello world"));
        assert_eq!(h.to_string(), hex);
        assert_eq!(format!("{h:?}"), format!("Hash({hex})"));
        assert_eq!(hex.parse::<Hash>().unwrap(), h);
        // exactly 64 lowercase hex digits, nothing else (a `^...$` regexp would let "\n" pass)
        for bad in [
            format!("{hex}\n"),
            format!("\n{hex}"),
            format!(" {hex}"),
            hex.to_uppercase(),
            hex[..63].to_string(),
            format!("{hex}0"),
            String::new(),
            "g".repeat(64),
            "é".repeat(32),
        ] {
            assert!(Hash::parse(&bad).is_none(), "{bad:?}");
            let e = check_hash(&bad, "thing").unwrap_err();
            assert_eq!(e.code, "LAMA-BADHASH");
        }
        let a = Hash([0; 32]);
        let mut b = [0u8; 32];
        b[31] = 1;
        assert!(a < Hash(b));
        assert_eq!(Hash::from_slice(&b), Some(Hash(b)));
        assert_eq!(Hash::from_slice(&b[1..]), None);
        let copy = h;
        assert_eq!(copy, h);
    }
}
