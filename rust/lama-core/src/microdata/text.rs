//! Text helpers: HTML escaping (objects.md §1.4) and UTF-16 code-unit ordering (§1.7).
use std::cmp::Ordering;

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

/// Compare two strings by their UTF-16 code units (JS default string order).
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
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
    fn escaping() {
        let mut s = String::new();
        write_escaped(&mut s, "a<b>&c\"'");
        assert_eq!(s, "a&lt;b&gt;&amp;c\"'");
        assert_eq!(unescape(&s), "a<b>&c\"'");
        assert_eq!(unescape("&amp;lt;"), "&lt;");
    }
}
