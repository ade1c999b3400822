//! XSalsa20-Poly1305 (NaCl `crypto_secretbox`, connections.md §1.2) in place, with a
//! SIMD Salsa20 keystream.
//!
//! Why not `crypto_secretbox` alone: the `salsa20` crate (0.10) computes one 64-byte block at a
//! time in scalar code; it was half of the profile of an encrypted connection (issue 9,
//! benches/RESULTS.md). Salsa20 blocks are independent (the block counter is part of the
//! input), so here 4 (SSE2, every x86-64), 8 (AVX2) or 16 (AVX-512F, one-instruction
//! rotations; both detected at run time, so the abi3 wheel stays portable) blocks are computed
//! side by side, one 32-bit state word of every block per vector register, and XORed into the
//! data directly. Other targets use the `salsa20` crate. HSalsa20 (the XSalsa20 subkey) and
//! Poly1305 (its AVX2 backend is detected by the `poly1305` crate) come from the RustCrypto
//! crates. Seal and open work in chunks that stay in the L1 cache: encrypt a chunk then MAC
//! it (seal), MAC a chunk then decrypt it (open).
//!
//! Layout (NaCl): subkey = HSalsa20(key, nonce[0..16]); Salsa20(subkey, nonce[16..24]) keystream
//! block 0: bytes 0..32 are the Poly1305 key, bytes 32..64 encrypt message bytes 0..32; block
//! `i >= 1` encrypts message bytes `64 i - 32 ..`. The tag is Poly1305 of the ciphertext.
//! Checked against `crypto_secretbox` (tests below) and the recorded vectors.

use poly1305::universal_hash::{KeyInit, UniversalHash};
use poly1305::Poly1305;
use salsa20::cipher::consts::U10;
use salsa20::cipher::generic_array::GenericArray;
use zeroize::Zeroize;

use super::{KEY_LEN, NONCE_LEN, TAG_LEN};

/// "expand 32-byte k" as the four Salsa20 constant words.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Bytes encrypted and authenticated together before moving on (stays in L1; a multiple of
/// 64 so Poly1305 sees whole 4-block groups and keystream blocks stay aligned).
const CHUNK: usize = 4096;

/// The Salsa20 input words of `key` and the 8-byte `nonce`, block counter 0 (words 8, 9).
fn salsa_state(key: &[u8; 32], nonce: &[u8; 8]) -> [u32; 16] {
    let k = |i: usize| u32::from_le_bytes([key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]]);
    let n = |i: usize| u32::from_le_bytes([nonce[4 * i], nonce[4 * i + 1], nonce[4 * i + 2], nonce[4 * i + 3]]);
    [
        SIGMA[0], k(0), k(1), k(2), k(3), SIGMA[1], n(0), n(1), 0, 0, SIGMA[2], k(4), k(5), k(6), k(7), SIGMA[3],
    ]
}

/// One Salsa20/20 block of `state` with block counter `counter` (scalar).
fn salsa_block(state: &[u32; 16], counter: u64) -> [u8; 64] {
    let mut input = *state;
    input[8] = counter as u32;
    input[9] = (counter >> 32) as u32;
    let mut x = input;
    macro_rules! qr {
        ($a:expr, $b:expr, $c:expr, $d:expr) => {
            x[$b] ^= x[$a].wrapping_add(x[$d]).rotate_left(7);
            x[$c] ^= x[$b].wrapping_add(x[$a]).rotate_left(9);
            x[$d] ^= x[$c].wrapping_add(x[$b]).rotate_left(13);
            x[$a] ^= x[$d].wrapping_add(x[$c]).rotate_left(18);
        };
    }
    for _ in 0..10 {
        qr!(0, 4, 8, 12);
        qr!(5, 9, 13, 1);
        qr!(10, 14, 2, 6);
        qr!(15, 3, 7, 11);
        qr!(0, 1, 2, 3);
        qr!(5, 6, 7, 4);
        qr!(10, 11, 8, 9);
        qr!(15, 12, 13, 14);
    }
    let mut out = [0u8; 64];
    for i in 0..16 {
        out[4 * i..4 * i + 4].copy_from_slice(&x[i].wrapping_add(input[i]).to_le_bytes());
    }
    x.zeroize();
    input.zeroize();
    out
}

/// XOR the keystream of `state` from block `counter` on into `data` (whole blocks first, a
/// partial last block allowed). The block implementation: AVX2 or SSE2 on x86-64, else scalar.
fn xor_keystream(state: &[u32; 16], mut counter: u64, mut data: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            let whole = data.len() / 1024 * 1024;
            // SAFETY: AVX-512F is present (checked above); the function reads and writes only
            // `data[..whole]`, a multiple of 1024 bytes.
            unsafe { simd::xor_avx512(state, counter, &mut data[..whole]) };
            counter += (whole / 64) as u64;
            data = &mut data[whole..];
        }
        if std::is_x86_feature_detected!("avx2") {
            let whole = data.len() / 512 * 512;
            // SAFETY: AVX2 is present (checked above); the function reads and writes only
            // `data[..whole]`, a multiple of 512 bytes.
            unsafe { simd::xor_avx2(state, counter, &mut data[..whole]) };
            counter += (whole / 64) as u64;
            data = &mut data[whole..];
        }
        let whole = data.len() / 256 * 256;
        // SAFETY: SSE2 is part of x86-64; `data[..whole]` is a multiple of 256 bytes.
        unsafe { simd::xor_sse2(state, counter, &mut data[..whole]) };
        counter += (whole / 64) as u64;
        data = &mut data[whole..];
    }
    for block in data.chunks_mut(64) {
        let mut ks = salsa_block(state, counter);
        for (d, k) in block.iter_mut().zip(ks.iter()) {
            *d ^= k;
        }
        ks.zeroize();
        counter += 1;
    }
}

/// The Salsa20 state of the XSalsa20 stream of (`key`, `nonce`) and the Poly1305 key, with
/// block 0's second half (it encrypts the first 32 message bytes).
fn xsalsa_init(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN]) -> (zeroize::Zeroizing<[u32; 16]>, Poly1305, zeroize::Zeroizing<[u8; 32]>) {
    let mut subkey = salsa20::hsalsa::<U10>(GenericArray::from_slice(key), GenericArray::from_slice(&nonce[..16]));
    let mut sk = [0u8; 32];
    sk.copy_from_slice(&subkey);
    subkey.zeroize();
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&nonce[16..]);
    let state = zeroize::Zeroizing::new(salsa_state(&sk, &n8));
    sk.zeroize();
    let mut block0 = salsa_block(&state, 0);
    let mac = Poly1305::new(GenericArray::from_slice(&block0[..32]));
    let mut rest = zeroize::Zeroizing::new([0u8; 32]);
    rest.copy_from_slice(&block0[32..]);
    block0.zeroize();
    (state, mac, rest)
}

/// XSalsa20 over `data` in place (message byte `m` uses keystream byte `32 + m`) and Poly1305
/// over the ciphertext: when sealing the cipher runs ahead of the MAC, when opening the MAC
/// runs ahead of the cipher, one `CHUNK` at a time so the data is read from L1 the second time.
/// Returns the tag of the ciphertext.
fn xsalsa_apply(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], data: &mut [u8], seal: bool) -> [u8; TAG_LEN] {
    let (state, mut mac, rest) = xsalsa_init(key, nonce);
    let len = data.len();
    let full16 = len / 16 * 16;
    // Cipher progress: message bytes [0, cdone) are done. `upto` is `len`, at most 32, or of
    // the form 32 + 64 j, so the block part always starts on a keystream block.
    let mut cdone = 0usize;
    let mut cipher_to = |data: &mut [u8], upto: usize| {
        if cdone < 32 {
            let e = upto.min(32);
            for (d, k) in data[cdone..e].iter_mut().zip(rest[cdone..].iter()) {
                *d ^= k;
            }
            cdone = e;
        }
        if upto > cdone {
            xor_keystream(&state, ((cdone + 32) / 64) as u64, &mut data[cdone..upto]);
            cdone = upto;
        }
    };
    // MAC progress: [0, mdone) hashed; every `upto` but the last is a multiple of 64 (whole
    // 4-block groups for the AVX2 Poly1305).
    let mut mdone = 0usize;
    let tag = if seal {
        let mut end = 32usize;
        loop {
            let e = end.min(len);
            cipher_to(data, e);
            if e == len {
                break;
            }
            let m = e / 64 * 64;
            mac.update_padded(&data[mdone..m]);
            mdone = m;
            end += CHUNK;
        }
        mac.update_padded(&data[mdone..full16]);
        mac.compute_unpadded(&data[full16..])
    } else {
        let mut end = CHUNK;
        while end < full16 {
            mac.update_padded(&data[mdone..end]);
            mdone = end;
            cipher_to(data, end - 32);
            end += CHUNK;
        }
        mac.update_padded(&data[mdone..full16]);
        let tag = mac.compute_unpadded(&data[full16..]);
        cipher_to(data, len);
        tag
    };
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&tag);
    out
}

/// `secretbox` in place: encrypts `data` and returns the 16-byte tag (NaCl's output is
/// `tag || data`).
pub fn seal_in_place(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], data: &mut [u8]) -> [u8; TAG_LEN] {
    xsalsa_apply(key, nonce, data, true)
}

/// `secretbox_open` in place: checks `tag` over the ciphertext `data` (constant time) and
/// decrypts it. On failure `false`, and `data` is zeroed (nothing unauthenticated is left).
#[must_use]
pub fn open_in_place(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], data: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
    let mut expected = xsalsa_apply(key, nonce, data, false);
    let mut diff = 0u8;
    for i in 0..TAG_LEN {
        diff |= expected[i] ^ tag[i];
    }
    expected.zeroize();
    // black_box: keep the comparison from being turned into an early exit
    if std::hint::black_box(diff) != 0 {
        data.zeroize();
        return false;
    }
    true
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// 32-bit lane rotations: two shifts and an OR (SSE2, AVX2), one `vprold` (AVX-512F).
    macro_rules! rotl_sse2 {
        ($v:expr, $n:literal) => {
            _mm_or_si128(_mm_slli_epi32::<$n>($v), _mm_srli_epi32::<{ 32 - $n }>($v))
        };
    }
    macro_rules! rotl_avx2 {
        ($v:expr, $n:literal) => {
            _mm256_or_si256(_mm256_slli_epi32::<$n>($v), _mm256_srli_epi32::<{ 32 - $n }>($v))
        };
    }
    macro_rules! rotl_avx512 {
        ($v:expr, $n:literal) => {
            _mm512_rol_epi32::<$n>($v)
        };
    }

    /// The Salsa20 double rounds on 16 vectors (one state word each, one block per lane);
    /// `$rotl` is one of the rotation macros above.
    macro_rules! double_rounds {
        ($x:ident, $add:ident, $xor:ident, $rotl:ident) => {
            macro_rules! qr {
                ($a:literal, $b:literal, $c:literal, $d:literal) => {
                    $x[$b] = $xor($x[$b], $rotl!($add($x[$a], $x[$d]), 7));
                    $x[$c] = $xor($x[$c], $rotl!($add($x[$b], $x[$a]), 9));
                    $x[$d] = $xor($x[$d], $rotl!($add($x[$c], $x[$b]), 13));
                    $x[$a] = $xor($x[$a], $rotl!($add($x[$d], $x[$c]), 18));
                };
            }
            for _ in 0..10 {
                qr!(0, 4, 8, 12);
                qr!(5, 9, 13, 1);
                qr!(10, 14, 2, 6);
                qr!(15, 3, 7, 11);
                qr!(0, 1, 2, 3);
                qr!(5, 6, 7, 4);
                qr!(10, 11, 8, 9);
                qr!(15, 12, 13, 14);
            }
        };
    }

    /// The low and high counter words of `n` consecutive blocks from `counter`.
    #[inline(always)]
    fn counters<const N: usize>(counter: u64) -> ([u32; N], [u32; N]) {
        let mut lo = [0u32; N];
        let mut hi = [0u32; N];
        for j in 0..N {
            let c = counter.wrapping_add(j as u64);
            lo[j] = c as u32;
            hi[j] = (c >> 32) as u32;
        }
        (lo, hi)
    }

    /// XOR 8 blocks of keystream at a time into `data` (a multiple of 512 bytes).
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn xor_avx2(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 512, 0);
        for group in data.chunks_exact_mut(512) {
            let (lo, hi) = counters::<8>(counter);
            let mut input = [_mm256_setzero_si256(); 16];
            for i in 0..16 {
                input[i] = _mm256_set1_epi32(state[i] as i32);
            }
            // lanes 0..3 (low halves) are blocks 0..3, lanes 4..7 blocks 4..7
            input[8] = _mm256_loadu_si256(lo.as_ptr().cast());
            input[9] = _mm256_loadu_si256(hi.as_ptr().cast());
            let mut x = input;
            double_rounds!(x, _mm256_add_epi32, _mm256_xor_si256, rotl_avx2);
            for i in 0..16 {
                x[i] = _mm256_add_epi32(x[i], input[i]);
            }
            let p = group.as_mut_ptr();
            for g in 0..4 {
                // 4x4 transpose of words 4g..4g+3 within each 128-bit half
                let t0 = _mm256_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
                let t1 = _mm256_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
                let t2 = _mm256_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
                let t3 = _mm256_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
                let rows = [
                    _mm256_unpacklo_epi64(t0, t2),
                    _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3),
                    _mm256_unpackhi_epi64(t1, t3),
                ];
                for (b, r) in rows.iter().enumerate() {
                    for (half, v) in [(0usize, _mm256_castsi256_si128(*r)), (4, _mm256_extracti128_si256::<1>(*r))] {
                        let q = p.add(64 * (b + half) + 16 * g).cast::<__m128i>();
                        _mm_storeu_si128(q, _mm_xor_si128(_mm_loadu_si128(q), v));
                    }
                }
            }
            counter = counter.wrapping_add(8);
        }
    }

    /// XOR 16 blocks of keystream at a time into `data` (a multiple of 1024 bytes).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn xor_avx512(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 1024, 0);
        for group in data.chunks_exact_mut(1024) {
            let (lo, hi) = counters::<16>(counter);
            let mut input = [_mm512_setzero_si512(); 16];
            for i in 0..16 {
                input[i] = _mm512_set1_epi32(state[i] as i32);
            }
            // lane j is block j
            input[8] = _mm512_loadu_epi32(lo.as_ptr().cast());
            input[9] = _mm512_loadu_epi32(hi.as_ptr().cast());
            let mut x = input;
            double_rounds!(x, _mm512_add_epi32, _mm512_xor_si512, rotl_avx512);
            for i in 0..16 {
                x[i] = _mm512_add_epi32(x[i], input[i]);
            }
            let p = group.as_mut_ptr();
            for g in 0..4 {
                // 4x4 transpose of words 4g..4g+3 within each 128-bit quarter: row b of
                // quarter q is block b + 4q
                let t0 = _mm512_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
                let t1 = _mm512_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
                let t2 = _mm512_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
                let t3 = _mm512_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
                let rows = [
                    _mm512_unpacklo_epi64(t0, t2),
                    _mm512_unpackhi_epi64(t0, t2),
                    _mm512_unpacklo_epi64(t1, t3),
                    _mm512_unpackhi_epi64(t1, t3),
                ];
                for (b, r) in rows.iter().enumerate() {
                    let quarters = [
                        _mm512_castsi512_si128(*r),
                        _mm512_extracti32x4_epi32::<1>(*r),
                        _mm512_extracti32x4_epi32::<2>(*r),
                        _mm512_extracti32x4_epi32::<3>(*r),
                    ];
                    for (q, v) in quarters.into_iter().enumerate() {
                        let dst = p.add(64 * (b + 4 * q) + 16 * g).cast::<__m128i>();
                        _mm_storeu_si128(dst, _mm_xor_si128(_mm_loadu_si128(dst), v));
                    }
                }
            }
            counter = counter.wrapping_add(16);
        }
    }

    /// XOR 4 blocks of keystream at a time into `data` (a multiple of 256 bytes).
    ///
    /// # Safety
    /// SSE2 (always present on x86-64).
    #[target_feature(enable = "sse2")]
    pub(super) unsafe fn xor_sse2(state: &[u32; 16], mut counter: u64, data: &mut [u8]) {
        debug_assert_eq!(data.len() % 256, 0);
        for group in data.chunks_exact_mut(256) {
            let (lo, hi) = counters::<4>(counter);
            let mut input = [_mm_setzero_si128(); 16];
            for i in 0..16 {
                input[i] = _mm_set1_epi32(state[i] as i32);
            }
            input[8] = _mm_loadu_si128(lo.as_ptr().cast());
            input[9] = _mm_loadu_si128(hi.as_ptr().cast());
            let mut x = input;
            double_rounds!(x, _mm_add_epi32, _mm_xor_si128, rotl_sse2);
            for i in 0..16 {
                x[i] = _mm_add_epi32(x[i], input[i]);
            }
            let p = group.as_mut_ptr();
            for g in 0..4 {
                let t0 = _mm_unpacklo_epi32(x[4 * g], x[4 * g + 1]);
                let t1 = _mm_unpackhi_epi32(x[4 * g], x[4 * g + 1]);
                let t2 = _mm_unpacklo_epi32(x[4 * g + 2], x[4 * g + 3]);
                let t3 = _mm_unpackhi_epi32(x[4 * g + 2], x[4 * g + 3]);
                let rows = [
                    _mm_unpacklo_epi64(t0, t2),
                    _mm_unpackhi_epi64(t0, t2),
                    _mm_unpacklo_epi64(t1, t3),
                    _mm_unpackhi_epi64(t1, t3),
                ];
                for (b, r) in rows.iter().enumerate() {
                    let q = p.add(64 * b + 16 * g).cast::<__m128i>();
                    _mm_storeu_si128(q, _mm_xor_si128(_mm_loadu_si128(q), *r));
                }
            }
            counter = counter.wrapping_add(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_secretbox::aead::AeadInPlace;
    use rand::{Rng, RngCore, SeedableRng};
    use salsa20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

    fn reference_seal(key: &[u8; 32], nonce: &[u8; 24], msg: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let c = crypto_secretbox::XSalsa20Poly1305::new(GenericArray::from_slice(key));
        let mut buf = msg.to_vec();
        let tag = c.encrypt_in_place_detached(GenericArray::from_slice(nonce), b"", &mut buf).unwrap();
        (buf, tag.into())
    }

    /// Every length up to a few chunks (head only, head + partial block, chunk edges) and
    /// random large ones: the same ciphertext and tag as `crypto_secretbox`, and back.
    #[test]
    fn seal_and_open_match_crypto_secretbox() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut lens: Vec<usize> = (0..1200).collect();
        for k in 1..5 {
            for d in [-65i64, -64, -33, -32, -31, -17, -16, -1, 0, 1, 15, 16, 31, 32, 33, 63, 64, 65] {
                lens.push((k * CHUNK as i64 + d) as usize);
            }
        }
        for _ in 0..20 {
            lens.push(rng.gen_range(0..300_000));
        }
        lens.push(1 << 20);
        for len in lens {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 24];
            rng.fill_bytes(&mut key);
            rng.fill_bytes(&mut nonce);
            let mut msg = vec![0u8; len];
            rng.fill_bytes(&mut msg);
            let (want_ct, want_tag) = reference_seal(&key, &nonce, &msg);
            let mut buf = msg.clone();
            let tag = seal_in_place(&key, &nonce, &mut buf);
            assert_eq!(buf, want_ct, "ciphertext, length {len}");
            assert_eq!(tag, want_tag, "tag, length {len}");
            assert!(open_in_place(&key, &nonce, &mut buf, &tag), "open, length {len}");
            assert_eq!(buf, msg, "plaintext, length {len}");
        }
    }

    /// A flipped bit anywhere (ciphertext or tag) fails, and leaves the buffer zeroed.
    #[test]
    fn tampered_boxes_do_not_open() {
        let key = [7u8; 32];
        let nonce = [3u8; 24];
        for len in [0usize, 1, 31, 32, 33, 100, CHUNK + 77, 70_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut ct = msg.clone();
            let tag = seal_in_place(&key, &nonce, &mut ct);
            for pos in [0, len / 2, len.saturating_sub(1)] {
                if len == 0 {
                    break;
                }
                let mut bad = ct.clone();
                bad[pos] ^= 0x10;
                assert!(!open_in_place(&key, &nonce, &mut bad, &tag), "len {len} pos {pos}");
                assert!(bad.iter().all(|&b| b == 0));
            }
            let mut bad_tag = tag;
            bad_tag[15] ^= 1;
            let mut c2 = ct.clone();
            assert!(!open_in_place(&key, &nonce, &mut c2, &bad_tag));
            let mut other_nonce = nonce;
            other_nonce[23] ^= 1;
            let mut c3 = ct.clone();
            assert!(!open_in_place(&key, &other_nonce, &mut c3, &tag));
        }
    }

    /// Each keystream implementation (scalar, SSE2, AVX2 when present) equals the `salsa20`
    /// crate's, also across the 2^32 block boundary (the carry into counter word 9).
    #[test]
    fn keystream_implementations_agree() {
        let key = [0x42u8; 32];
        let nonce = [0x24u8; 8];
        let state = salsa_state(&key, &nonce);
        for start in [0u64, 1, 5, (1 << 32) - 3, (1 << 32) - 8] {
            let mut want = vec![0u8; 1024];
            let mut c = salsa20::Salsa20::new(GenericArray::from_slice(&key), GenericArray::from_slice(&nonce));
            c.seek(start * 64);
            c.apply_keystream(&mut want);
            let mut scalar = vec![0u8; 1024];
            for (i, b) in scalar.chunks_mut(64).enumerate() {
                b.copy_from_slice(&salsa_block(&state, start + i as u64));
            }
            assert_eq!(scalar, want, "scalar from block {start}");
            #[cfg(target_arch = "x86_64")]
            {
                let mut v = vec![0u8; 1024];
                unsafe { simd::xor_sse2(&state, start, &mut v) };
                assert_eq!(v, want, "sse2 from block {start}");
                if std::is_x86_feature_detected!("avx2") {
                    let mut v = vec![0u8; 1024];
                    unsafe { simd::xor_avx2(&state, start, &mut v) };
                    assert_eq!(v, want, "avx2 from block {start}");
                }
                if std::is_x86_feature_detected!("avx512f") {
                    let mut v = vec![0u8; 1024];
                    unsafe { simd::xor_avx512(&state, start, &mut v) };
                    assert_eq!(v, want, "avx512 from block {start}");
                }
            }
            let mut mixed = vec![0u8; 1000];
            xor_keystream(&state, start, &mut mixed);
            assert_eq!(mixed, want[..1000], "dispatch from block {start}");
        }
    }

    /// Thread CPU seconds (the host is shared: wall time is not the cost).
    fn cpu_now() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid timespec for the call to fill
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    /// Not a test: MiB per CPU-second of each keystream backend and of the whole secretbox
    /// (`cargo test --release -p lama-core keystream_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn keystream_speed() {
        let state = salsa_state(&[7u8; 32], &[9u8; 8]);
        let mut buf = vec![0u8; 1 << 20];
        let rounds = 256;
        let mut time = |name: &str, f: &mut dyn FnMut(&mut [u8])| {
            f(&mut buf);
            let t = cpu_now();
            for _ in 0..rounds {
                f(&mut buf);
            }
            let dt = cpu_now() - t;
            println!("{name}: {:.0} MiB per CPU-second", rounds as f64 / dt);
        };
        time("salsa20 crate keystream", &mut |b| {
            let mut c = salsa20::Salsa20::new(GenericArray::from_slice(&[7u8; 32]), GenericArray::from_slice(&[9u8; 8]));
            c.apply_keystream(b)
        });
        #[cfg(target_arch = "x86_64")]
        {
            time("sse2 keystream", &mut |b| unsafe { simd::xor_sse2(&state, 0, b) });
            if std::is_x86_feature_detected!("avx2") {
                time("avx2 keystream", &mut |b| unsafe { simd::xor_avx2(&state, 0, b) });
            }
            if std::is_x86_feature_detected!("avx512f") {
                time("avx512 keystream", &mut |b| unsafe { simd::xor_avx512(&state, 0, b) });
            }
        }
        time("secretbox seal (lama)", &mut |b| {
            seal_in_place(&[1u8; 32], &[2u8; 24], b);
        });
        time("secretbox seal (crypto_secretbox)", &mut |b| {
            let c = crypto_secretbox::XSalsa20Poly1305::new(GenericArray::from_slice(&[1u8; 32]));
            c.encrypt_in_place_detached(GenericArray::from_slice(&[2u8; 24]), b"", b).unwrap();
        });
    }
}
