//! ECMAScript number formatting and parsing (objects.md §1.5, §1.11).
//!
//! ONE numbers are JS doubles: `NUM(x)` is `JSON.stringify(x)` — shortest round-trip digits
//! in the ECMAScript `Number::toString` layout, `-0` written `0`, NaN/±Infinity written `null`.
//! Reading uses JS `Number(text)`.

/// 2^53: the largest integer range in which every integer is exactly representable.
pub(crate) const MAX_SAFE: f64 = 9_007_199_254_740_992.0;

/// Append `NUM(f)` (objects.md §1.5).
pub(crate) fn write_f64(out: &mut String, f: f64) {
    if !f.is_finite() {
        out.push_str("null");
    } else if f == 0.0 {
        out.push('0');
    } else if f.fract() == 0.0 && f.abs() < MAX_SAFE {
        write_i64(out, f as i64);
    } else {
        let mut buf = ryu_js::Buffer::new();
        out.push_str(buf.format_finite(f));
    }
}

/// Append `NUM(i)` for an integer (converted to the nearest double when outside ±2^53).
pub(crate) fn write_i64(out: &mut String, i: i64) {
    if i.unsigned_abs() <= MAX_SAFE as u64 {
        let mut tmp = [0u8; 24];
        let mut n = i.unsigned_abs();
        let mut pos = tmp.len();
        loop {
            pos -= 1;
            tmp[pos] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if i < 0 {
            out.push('-');
        }
        // SAFETY-free: the bytes are ASCII digits.
        out.push_str(std::str::from_utf8(&tmp[pos..]).unwrap_or("0"));
    } else {
        write_f64(out, i as f64);
    }
}

/// `NUM(x)` as a new string.
#[cfg(test)]
pub(crate) fn format_f64(f: f64) -> String {
    let mut s = String::new();
    write_f64(&mut s, f);
    s
}

fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}' | '\u{a}' | '\u{b}' | '\u{c}' | '\u{d}' | ' ' | '\u{a0}' | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
    )
}

/// JS `Number(text)`: trims JS white space, `""` -> 0, `Infinity`, `0x`/`0o`/`0b` literals,
/// decimal literals; anything else is NaN.
pub(crate) fn js_number(text: &str) -> f64 {
    let t = text.trim_matches(is_js_whitespace);
    if t.is_empty() {
        return 0.0;
    }
    match t {
        "Infinity" | "+Infinity" => return f64::INFINITY,
        "-Infinity" => return f64::NEG_INFINITY,
        _ => {}
    }
    let b = t.as_bytes();
    if b.len() > 2 && b[0] == b'0' {
        let radix = match b[1] {
            b'x' | b'X' => 16,
            b'o' | b'O' => 8,
            b'b' | b'B' => 2,
            _ => 0,
        };
        if radix != 0 {
            let digits = &t[2..];
            if !digits.chars().all(|c| c.is_digit(radix)) {
                return f64::NAN;
            }
            return radix_value(digits, radix);
        }
    }
    if is_decimal_literal(b) {
        t.parse::<f64>().unwrap_or(f64::NAN)
    } else {
        f64::NAN
    }
}

/// The double nearest to the integer `digits` in base 2, 8 or 16 (ties to even), as JS
/// `Number("0x…")` gives: the exact value rounded once (a digit-by-digit double accumulation
/// would round several times). Beyond the doubles: infinity.
fn radix_value(digits: &str, radix: u32) -> f64 {
    let bits_per_digit = radix.trailing_zeros();
    // the value's bits, most significant first, without leading zeros
    let mut bits = Vec::with_capacity(digits.len() * bits_per_digit as usize);
    for c in digits.chars() {
        let d = c.to_digit(radix).unwrap_or(0);
        for k in (0..bits_per_digit).rev() {
            let b = (d >> k) & 1 == 1;
            if b || !bits.is_empty() {
                bits.push(b);
            }
        }
    }
    if bits.len() <= 53 {
        return bits.iter().fold(0u64, |m, &b| (m << 1) | b as u64) as f64;
    }
    let mut m = bits[..53].iter().fold(0u64, |m, &b| (m << 1) | b as u64);
    let round = bits[53];
    let sticky = bits[54..].iter().any(|&b| b);
    if round && (sticky || m & 1 == 1) {
        m += 1;
    }
    let exp = bits.len() - 53;
    if exp > 1100 {
        return f64::INFINITY;
    }
    m as f64 * 2f64.powi(exp as i32)
}

/// `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`
fn is_decimal_literal(b: &[u8]) -> bool {
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ecmascript_layout() {
        let cases: &[(f64, &str)] = &[
            (0.1 + 0.2, "0.30000000000000004"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (123456789012345680000.0, "123456789012345680000"),
            (1.2e23, "1.2e+23"),
            (5e-324, "5e-324"),
            (9007199254740994.0, "9007199254740994"),
            (-0.0, "0"),
            (f64::NAN, "null"),
            (f64::INFINITY, "null"),
            (1700000000000.0, "1700000000000"),
            (-1.7976931348623157e308, "-1.7976931348623157e+308"),
            (1e20, "100000000000000000000"),
            (-123.456, "-123.456"),
            (0.000001, "0.000001"),
        ];
        for (f, s) in cases {
            assert_eq!(format_f64(*f), *s, "{f}");
        }
        let mut s = String::new();
        write_i64(&mut s, 9007199254740993);
        assert_eq!(s, "9007199254740992");
        s.clear();
        write_i64(&mut s, -42);
        assert_eq!(s, "-42");
        s.clear();
        write_i64(&mut s, i64::MIN);
        assert_eq!(s, "-9223372036854776000");
    }
    #[test]
    fn radix_literals_round_once() {
        // 0x200000000000018 = (2^53 + 1) * 16 + 8: exactly 2^57 + 24, nearest double 2^57 + 32
        assert_eq!(js_number("0x200000000000018"), 144115188075855904.0);
        assert_eq!(js_number("0x20000000000001"), 9007199254740992.0);
        assert_eq!(js_number("0x20000000000003"), 9007199254740996.0);
        assert_eq!(js_number(&format!("0x{}", "f".repeat(300))), f64::INFINITY);
        assert_eq!(js_number("0b101"), 5.0);
        assert_eq!(js_number("0o17"), 15.0);
    }

    #[test]
    fn number_parsing() {
        assert_eq!(js_number("1.5"), 1.5);
        assert_eq!(js_number(" 42 "), 42.0);
        assert_eq!(js_number("1e+21"), 1e21);
        assert_eq!(js_number("0x10"), 16.0);
        assert_eq!(js_number(".5"), 0.5);
        assert_eq!(js_number("5."), 5.0);
        assert!(js_number("null").is_nan());
        assert!(js_number("inf").is_nan());
        assert!(js_number("1e").is_nan());
        assert_eq!(js_number("-Infinity"), f64::NEG_INFINITY);
    }
}
