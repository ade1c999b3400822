//! Key encodings of the named databases (docs/store-format.md "Named databases").
//!
//! Hashes are the 32 raw bytes; integers are big-endian.

/// `chunks` key: `hash ‖ u32 index`.
pub(crate) fn chunk_key(hash: &[u8; 32], index: u32) -> [u8; 36] {
    let mut k = [0u8; 36];
    k[..32].copy_from_slice(hash);
    k[32..].copy_from_slice(&index.to_be_bytes());
    k
}

/// `tmp` key: `u64 creation ms ‖ 8 random bytes` (the writer's prefix) `‖ u32 index`.
pub(crate) fn tmp_key(prefix: &[u8; 16], index: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(prefix);
    k[16..].copy_from_slice(&index.to_be_bytes());
    k
}

/// A fresh staging prefix: `u64 now ms ‖ 8 random bytes`.
pub(crate) fn tmp_prefix() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&super::now_ms().to_be_bytes());
    p[8..].copy_from_slice(&rand::random::<[u8; 8]>());
    p
}

/// `rmaps` key prefix: `target ‖ map kind ‖ referencing type ‖ 0x00`.
pub(crate) fn rmap_prefix(target: &[u8; 32], map_kind: u8, type_name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + 1 + type_name.len() + 1 + 32);
    k.extend_from_slice(target);
    k.push(map_kind);
    k.extend_from_slice(type_name.as_bytes());
    k.push(0);
    k
}

/// Full `rmaps` key: the prefix followed by the referencing hash.
pub(crate) fn rmap_key(target: &[u8; 32], map_kind: u8, type_name: &str, referrer: &[u8; 32]) -> Vec<u8> {
    let mut k = rmap_prefix(target, map_kind, type_name);
    k.extend_from_slice(referrer);
    k
}

/// `objects` value of a chunked BLOB/CLOB: `kind ‖ u64 total size ‖ u32 chunk count`.
pub(crate) fn chunked_value(kind: u8, size: u64, count: u32) -> [u8; 13] {
    let mut v = [0u8; 13];
    v[0] = kind;
    v[1..9].copy_from_slice(&size.to_be_bytes());
    v[9..].copy_from_slice(&count.to_be_bytes());
    v
}

/// Decode the payload (after the kind byte) of a chunked entry.
pub(crate) fn parse_chunked(payload: &[u8]) -> Option<(u64, u32)> {
    if payload.len() != 12 {
        return None;
    }
    Some((
        u64::from_be_bytes(payload[..8].try_into().ok()?),
        u32::from_be_bytes(payload[8..].try_into().ok()?),
    ))
}
