//! Text helpers: HTML escaping (objects.md §1.4), UTF-16 code-unit ordering (§1.7) and the
//! core's encoding of JavaScript strings that are not valid Unicode.
//!
//! ## Lone surrogates
//!
//! ONE strings are JavaScript strings: sequences of UTF-16 code units, which may contain lone
//! (unpaired) surrogates; Python `str` can hold them too, Rust `String` cannot. The core
//! therefore carries a surrogate code unit `0xD800 + k` as the private-use character
//! `U+10F800 + k` ([`SURROGATE_BASE`]), and a genuine character of the range
//! `U+10F7FF..=U+10FFFF` as [`ESC`] followed by that character, so the encoding is lossless
//! and every other string is unchanged. The bindings encode on the way in and decode on the way
//! out (serialize returns the surrogate, as JS does); the places where the code units matter
//! decode: [`utf16_cmp`] (sorting), `json::write_json_string` (JSON.stringify writes a lone
//! surrogate as `\udxxx`), and [`js_utf8`], the UTF-8 that is hashed and stored: Node.js writes
//! a lone surrogate as U+FFFD (objects.md §2.1).
use std::borrow::Cow;
use std::cmp::Ordering;

/// Escape character of the encoding (see the module documentation).
pub const ESC: char = '\u{10F7FF}';
/// `U+10F800 + k` stands for the surrogate code unit `0xD800 + k`.
pub const SURROGATE_BASE: u32 = 0x10F800;

/// True if `s` may contain encoded characters (all start with the bytes F4 8F).
#[inline]
pub fn has_encoded(s: &str) -> bool {
    // On every string crossing the boundary and every hashed text, so it must cost next to
    // nothing: almost no text has a byte as high as F4, and the maximum of the bytes is a
    // branch-free loop the compiler vectorizes (a memchr call costs more on the short strings
    // that dominate: dict keys, type names). Only then is the pair searched for.
    let b = s.as_bytes();
    if b.iter().fold(0u8, |m, &x| m.max(x)) < 0xF4 {
        return false;
    }
    memchr::memchr_iter(0xF4, b).any(|i| b.get(i + 1) == Some(&0x8F))
}

/// A unit of an encoded string: a character, or a surrogate code unit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unit {
    Char(char),
    Surrogate(u16),
}

/// The logical content of an encoded string.
pub fn units(s: &str) -> impl Iterator<Item = Unit> + '_ {
    let mut it = s.chars();
    std::iter::from_fn(move || {
        let c = it.next()?;
        Some(if c == ESC {
            Unit::Char(it.next().unwrap_or(ESC))
        } else if (c as u32) >= SURROGATE_BASE {
            Unit::Surrogate((c as u32 - SURROGATE_BASE + 0xD800) as u16)
        } else {
            Unit::Char(c)
        })
    })
}

/// Append the encoding of one surrogate code unit (`0xD800..=0xDFFF`).
pub fn push_surrogate(out: &mut String, unit: u16) {
    let c = char::from_u32(SURROGATE_BASE + (unit as u32 - 0xD800)).unwrap_or('\u{FFFD}');
    out.push(c);
}

/// Append the encoding of one character.
#[inline]
pub fn push_char(out: &mut String, c: char) {
    if c >= ESC {
        out.push(ESC);
    }
    out.push(c);
}

/// Encode "generalized UTF-8" (UTF-8 in which surrogate code points may appear as 3-byte
/// sequences `ED A0..BF xx`, Python's `surrogatepass`) into the core's string encoding.
/// Invalid sequences become U+FFFD.
pub fn from_generalized_utf8(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0xED && i + 2 < b.len() && (0xA0..=0xBF).contains(&b[i + 1]) && (0x80..=0xBF).contains(&b[i + 2]) {
            let unit = 0xD000u16 | (((b[i + 1] & 0x3F) as u16) << 6) | (b[i + 2] & 0x3F) as u16;
            push_surrogate(&mut out, unit);
            i += 3;
            continue;
        }
        let len = match b[i] {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        let end = (i + len).min(b.len());
        match std::str::from_utf8(&b[i..end]) {
            Ok(s) => {
                for c in s.chars() {
                    push_char(&mut out, c);
                }
                i = end;
            }
            Err(_) => {
                out.push('\u{FFFD}');
                i += 1;
            }
        }
    }
    out
}

/// Encode a Rust string (genuine characters only) into the core's string encoding.
pub fn encode_str(s: &str) -> Cow<'_, str> {
    if !has_encoded(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// Generalized UTF-8 of an encoded string (surrogates as 3-byte sequences), for the bindings
/// to decode with `surrogatepass`; `None` if `s` has no encoded characters (it is its own
/// UTF-8).
pub fn to_generalized_utf8(s: &str) -> Option<Vec<u8>> {
    if !has_encoded(s) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len());
    let mut buf = [0u8; 4];
    for u in units(s) {
        match u {
            Unit::Char(c) => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            Unit::Surrogate(x) => {
                out.push(0xED);
                out.push(0x80 | ((x >> 6) & 0x3F) as u8);
                out.push(0x80 | (x & 0x3F) as u8);
            }
        }
    }
    Some(out)
}

/// The UTF-8 text Node.js writes for an encoded string (objects.md §2.1): a high surrogate
/// followed by a low one is their character, any other surrogate U+FFFD. This is what is
/// hashed and stored.
pub fn js_utf8(s: &str) -> Cow<'_, str> {
    if !has_encoded(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut it = units(s).peekable();
    while let Some(u) = it.next() {
        match u {
            Unit::Char(c) => out.push(c),
            Unit::Surrogate(hi @ 0xD800..=0xDBFF) => match it.peek() {
                Some(&Unit::Surrogate(lo @ 0xDC00..=0xDFFF)) => {
                    it.next();
                    let c = 0x10000 + (((hi as u32) - 0xD800) << 10) + ((lo as u32) - 0xDC00);
                    out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                }
                _ => out.push('\u{FFFD}'),
            },
            Unit::Surrogate(_) => out.push('\u{FFFD}'),
        }
    }
    Cow::Owned(out)
}

/// Append `s` with `&`, `<`, `>` escaped (the only characters ONE escapes, §1.4).
#[inline]
pub(crate) fn write_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep = match b {
            b'&' => "&amp;",
            b'<' => "&lt;",
            b'>' => "&gt;",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(rep);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Reverse of [`write_escaped`]: `&gt;`, `&lt;`, `&amp;` (in that order, §1.4).
pub(crate) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    s.replace("&gt;", ">").replace("&lt;", "<").replace("&amp;", "&")
}

#[inline]
fn first_unit(c: char) -> u32 {
    let c = c as u32;
    if c < 0x10000 {
        c
    } else {
        0xD800 + ((c - 0x10000) >> 10)
    }
}

/// Compare two encoded strings by their UTF-16 code units (JS default string order).
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if has_encoded(a) || has_encoded(b) {
        return utf16_cmp_encoded(a, b);
    }
    // Same prefix bytes are the same code units; compare from the first differing char.
    let ab = a.as_bytes();
    let bb = b.as_bytes();
    let mut i = 0;
    let n = ab.len().min(bb.len());
    while i < n && ab[i] == bb[i] {
        i += 1;
    }
    // Back up to the char boundary.
    while i > 0 && !a.is_char_boundary(i) {
        i -= 1;
    }
    let mut ca = a[i..].chars();
    let mut cb = b[i..].chars();
    loop {
        match (ca.next(), cb.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                if x != y {
                    let (ux, uy) = (first_unit(x), first_unit(y));
                    return if ux != uy { ux.cmp(&uy) } else { (x as u32).cmp(&(y as u32)) };
                }
            }
        }
    }
}

/// [`utf16_cmp`] for strings with encoded surrogates or escapes: by their code units.
fn utf16_cmp_encoded(a: &str, b: &str) -> Ordering {
    fn code_units(s: &str) -> impl Iterator<Item = u16> + '_ {
        units(s).flat_map(|u| {
            let mut buf = [0u16; 2];
            let n = match u {
                Unit::Char(c) => c.encode_utf16(&mut buf).len(),
                Unit::Surrogate(x) => {
                    buf[0] = x;
                    1
                }
            };
            buf.into_iter().take(n)
        })
    }
    code_units(a).cmp(code_units(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn utf16_order() {
        let mut v = vec!["<li>a</li>", "<li>a b</li>", "<li>B</li>", "<li>ä</li>", "<li>\u{ffff}</li>", "<li>😀</li>"];
        v.sort_by(|a, b| utf16_cmp(a, b));
        assert_eq!(v, vec!["<li>B</li>", "<li>a b</li>", "<li>a</li>", "<li>ä</li>", "<li>😀</li>", "<li>\u{ffff}</li>"]);
    }
    #[test]
    fn surrogate_encoding() {
        // "x" + lone high surrogate + "y", and a genuine U+10FFFF
        let s = from_generalized_utf8(b"x\xed\xa0\x80y\xf4\x8f\xbf\xbf");
        assert_eq!(s.chars().count(), 5);
        assert_eq!(to_generalized_utf8(&s).unwrap(), b"x\xed\xa0\x80y\xf4\x8f\xbf\xbf");
        assert_eq!(js_utf8(&s), "x\u{FFFD}y\u{10FFFF}");
        // a high and a low surrogate given separately are one character in JS
        let pair = from_generalized_utf8(b"\xed\xa0\xbd\xed\xb8\x80");
        assert_eq!(js_utf8(&pair), "\u{1F600}");
        assert_eq!(utf16_cmp(&pair, "\u{1F600}"), Ordering::Equal);
        // a lone D800 sorts before U+E000 and before the astral U+1F600 (D83D DE00)
        let lone = from_generalized_utf8(b"\xed\xa0\x80");
        assert_eq!(utf16_cmp(&lone, "\u{E000}"), Ordering::Less);
        assert_eq!(utf16_cmp(&lone, "\u{1F600}"), Ordering::Less);
        assert_eq!(utf16_cmp(&lone, "\u{FFFD}"), Ordering::Less);
        assert_eq!(encode_str("a\u{10FFFF}"), format!("a{ESC}\u{10FFFF}"));
        assert_eq!(js_utf8(&encode_str("a\u{10FFFF}")), "a\u{10FFFF}");
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        write_escaped(&mut s, "a<b>&c\"'");
        assert_eq!(s, "a&lt;b&gt;&amp;c\"'");
        assert_eq!(unescape(&s), "a<b>&c\"'");
        assert_eq!(unescape("&amp;lt;"), "&lt;");
    }
}
