//! JSON for `stringifiable` values (objects.md §1.6) and for error messages.
//!
//! `JSON*` (one.core's deterministic JSON): object keys sorted by UTF-16 code units and written
//! raw (not JSON-escaped), set elements sorted by their JSON text, arrays in order, primitives
//! exactly as `JSON.stringify` (numbers per §1.5).
use super::number::{write_f64, write_i64};
use super::text::{has_encoded, push_char, push_surrogate, units, utf16_cmp, Unit};
use super::{Value, MAX_JSON_DEPTH};
use crate::{Error, Result};

/// Append a JSON string literal with `JSON.stringify` escaping.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
    if has_encoded(s) {
        return write_json_string_encoded(out, s);
    }
    write_json_string_ascii_escapes(out, s)
}

fn write_json_string_ascii_escapes(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if rep.is_empty() {
            out.push_str(&format!("\\u{:04x}", b));
        } else {
            out.push_str(rep);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// [`write_json_string`] for a string with encoded surrogates (text.rs): a lone surrogate is
/// written `\udxxx` like `JSON.stringify` does; a high+low pair stays (it is one character).
fn write_json_string_encoded(out: &mut String, s: &str) {
    let mut plain = String::new();
    let u: Vec<Unit> = units(s).collect();
    let mut i = 0;
    let flush = |out: &mut String, plain: &mut String| {
        if !plain.is_empty() {
            write_json_string_plain(out, plain);
            plain.clear();
        }
    };
    out.push('"');
    while i < u.len() {
        match u[i] {
            Unit::Char(c) => push_char(&mut plain, c),
            Unit::Surrogate(hi @ 0xD800..=0xDBFF) if matches!(u.get(i + 1), Some(Unit::Surrogate(0xDC00..=0xDFFF))) => {
                push_surrogate(&mut plain, hi);
                if let Some(Unit::Surrogate(lo)) = u.get(i + 1) {
                    push_surrogate(&mut plain, *lo);
                }
                i += 1;
            }
            Unit::Surrogate(x) => {
                flush(out, &mut plain);
                out.push_str(&format!("\\u{:04x}", x));
            }
        }
        i += 1;
    }
    flush(out, &mut plain);
    out.push('"');
}

/// The inside of a JSON string literal (no quotes) with `JSON.stringify` escaping.
fn write_json_string_plain(out: &mut String, s: &str) {
    let mut t = String::with_capacity(s.len() + 2);
    write_json_string_ascii_escapes(&mut t, s);
    out.push_str(&t[1..t.len() - 1]);
}

/// A JSON number for a `BigInt` (an integer literal beyond i64): its double, `None` if it is
/// beyond the doubles (the pure core's `float(int)` overflows there).
fn bigint_f64(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn too_deep() -> Error {
    // the reference's code for a circular structure; a deeper one could not be read back
    Error::microdata("USS-STR1", format!("Structure nested deeper than {MAX_JSON_DEPTH} levels or circular"))
}

/// Append `JSON*(v)` (§1.6). Errors: a `Dict` key that is not a string or a value with no JSON
/// form (`O2M-RTYC1`), more than MAX_JSON_DEPTH nested arrays/objects (`USS-STR1`).
pub(crate) fn write_json_star(out: &mut String, v: &Value, itemprop: &str) -> Result<()> {
    write_json_star_at(out, v, itemprop, 0)
}

fn write_json_star_at(out: &mut String, v: &Value, itemprop: &str, depth: usize) -> Result<()> {
    if depth >= MAX_JSON_DEPTH && matches!(v, Value::List(_) | Value::Set(_) | Value::Dict(_)) {
        return Err(too_deep());
    }
    let write_json_star = |out: &mut String, v: &Value, itemprop: &str| write_json_star_at(out, v, itemprop, depth + 1);
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write_i64(out, *i),
        Value::BigInt(s) => match bigint_f64(s) {
            Some(f) => write_f64(out, f),
            None => {
                return Err(Error::microdata(
                    "O2M-RTYC1",
                    format!("Integer {s} is too large for a JavaScript number"),
                ))
            }
        },
        Value::Unsupported(d) => {
            return Err(Error::microdata("O2M-RTYC1", format!("Value of type stringifiable is not JSON-stringifiable: {d}")))
        }
        Value::Float(f) => write_f64(out, *f),
        Value::Str(s) => write_json_string(out, s),
        Value::List(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_json_star(out, item, itemprop)?;
            }
            out.push(']');
        }
        Value::Set(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                let mut s = String::new();
                write_json_star(&mut s, item, itemprop)?;
                parts.push(s);
            }
            parts.sort_by(|a, b| utf16_cmp(a, b));
            out.push('[');
            out.push_str(&parts.join(","));
            out.push(']');
        }
        Value::Dict(entries) => {
            let mut keyed: Vec<(&str, &Value)> = Vec::with_capacity(entries.len());
            for (k, val) in entries {
                match k {
                    Value::Str(s) => keyed.push((s, val)),
                    other => {
                        return Err(Error::microdata(
                            "O2M-RTYC1",
                            format!(
                                "Value for itemprop \"{itemprop}\" should be of type \"stringifiable\" (object keys must be strings), key: {}",
                                render(other)
                            ),
                        ))
                    }
                }
            }
            keyed.sort_by(|a, b| utf16_cmp(a.0, b.0));
            out.push('{');
            for (n, (k, val)) in keyed.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(k);
                out.push_str("\":");
                write_json_star(out, val, itemprop)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// `JSON.stringify`-like rendering of a value in its own order, for error messages.
/// Strings at the top level are rendered raw (like JS template interpolation).
pub(crate) fn render_value(v: &Value) -> String {
    match v {
        Value::Str(s) => s.clone(),
        other => render(other),
    }
}

/// JSON rendering in insertion order (error messages only).
pub(crate) fn render(v: &Value) -> String {
    let mut out = String::new();
    render_into(&mut out, v);
    out
}

fn render_into(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write_i64(out, *i),
        Value::BigInt(s) => out.push_str(s),
        Value::Unsupported(d) => out.push_str(d),
        Value::Float(f) => write_f64(out, *f),
        Value::Str(s) => write_json_string(out, s),
        Value::List(items) | Value::Set(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                render_into(out, item);
            }
            out.push(']');
        }
        Value::Dict(entries) => {
            out.push('{');
            for (n, (k, val)) in entries.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                match k {
                    Value::Str(s) => write_json_string(out, s),
                    other => {
                        let mut t = String::new();
                        render_into(&mut t, other);
                        write_json_string(out, &t);
                    }
                }
                out.push(':');
                render_into(out, val);
            }
            out.push('}');
        }
    }
}

/// `JSON.parse` of a stringifiable text, with Python `json.loads` typing: integer literals
/// become `Int` (or `BigInt` beyond i64), other numbers `Float`.
/// More than MAX_JSON_DEPTH nested arrays/objects is `M2O-PV2` (the limit the writer keeps).
pub(crate) fn parse_json(text: &str) -> Result<Value> {
    if !json_depth_ok(text) {
        return Err(Error::microdata(
            "M2O-PV2",
            format!("Stringifiable value nested deeper than {MAX_JSON_DEPTH} levels"),
        ));
    }
    let text = surrogate_escapes(text);
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::microdata("M2O-PV2", format!("Invalid JSON in stringifiable value: {e}; text: {text}"))
    })?;
    Ok(from_serde(v))
}

/// True if `text` nests at most MAX_JSON_DEPTH arrays/objects (brackets in strings skipped).
fn json_depth_ok(text: &str) -> bool {
    let b = text.as_bytes();
    if b.iter().filter(|&&c| c == b'[' || c == b'{').count() <= MAX_JSON_DEPTH {
        return true;
    }
    let (mut depth, mut in_str, mut i) = (0usize, false, 0);
    while i < b.len() {
        match (in_str, b[i]) {
            (true, b'\\') => i += 1,
            (true, b'"') | (false, b'"') => in_str = !in_str,
            (false, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return false;
                }
            }
            (false, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// Rewrite the `\uXXXX` escapes of surrogates into the core's string encoding (text.rs) so that
/// serde_json, which rejects lone surrogates, reads them as `JSON.parse` does: a lone surrogate
/// escape becomes its encoded raw character, a pair whose character the encoding escapes
/// becomes that escape; other text is unchanged.
fn surrogate_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    let lower = text.contains("\\ud") || text.contains("\\uD");
    if !lower {
        return std::borrow::Cow::Borrowed(text);
    }
    fn hex4(b: &[u8]) -> Option<u16> {
        if b.len() < 4 {
            return None;
        }
        let s = std::str::from_utf8(&b[..4]).ok()?;
        u16::from_str_radix(s, 16).ok()
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut in_str, mut i, mut copied) = (false, 0usize, 0usize);
    while i < b.len() {
        let c = b[i];
        if !in_str {
            if c == b'"' {
                in_str = true;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = false;
                i += 1;
            }
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = hex4(&b[i + 2..]);
                match unit {
                    Some(hi @ 0xD800..=0xDFFF) => {
                        out.push_str(&text[copied..i]);
                        let lo = if (0xD800..=0xDBFF).contains(&hi) && b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                            hex4(&b[i + 8..]).filter(|lo| (0xDC00..=0xDFFF).contains(lo))
                        } else {
                            None
                        };
                        match lo {
                            Some(lo) => {
                                let cp = 0x10000 + (((hi as u32) - 0xD800) << 10) + ((lo as u32) - 0xDC00);
                                let ch = char::from_u32(cp).unwrap_or('\u{FFFD}');
                                if ch >= super::text::ESC {
                                    push_char(&mut out, ch);
                                } else {
                                    out.push_str(&text[i..i + 12]);
                                }
                                i += 12;
                            }
                            None => {
                                push_surrogate(&mut out, hi);
                                i += 6;
                            }
                        }
                        copied = i;
                    }
                    _ => i += 2,
                }
            }
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    out.push_str(&text[copied.min(text.len())..]);
    std::borrow::Cow::Owned(out)
}

/// Convert a serde_json value (arbitrary precision numbers) to a [`Value`].
pub(crate) fn from_serde(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => number_literal(&n.to_string()),
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_serde).collect()),
        serde_json::Value::Object(m) => {
            Value::Dict(m.into_iter().map(|(k, v)| (Value::Str(k), from_serde(v))).collect())
        }
    }
}

/// Classify a JSON number literal like Python's `json.loads`.
pub(crate) fn number_literal(lit: &str) -> Value {
    if lit.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        Value::Float(lit.parse::<f64>().unwrap_or(f64::NAN))
    } else {
        match lit.parse::<i64>() {
            Ok(i) => Value::Int(i),
            Err(_) => Value::BigInt(lit.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn json_star() {
        let v = Value::Dict(vec![
            (Value::Str("z".into()), Value::Int(1)),
            (Value::Str("a".into()), Value::List(vec![Value::Int(3), Value::Int(1)])),
            (Value::Str("st".into()), Value::Set(vec![Value::Str("b".into()), Value::Str("a".into())])),
            (Value::Str("str".into()), Value::Str("é\n\"<&>\u{1}".into())),
        ]);
        let mut s = String::new();
        write_json_star(&mut s, &v, "s").unwrap();
        assert_eq!(s, "{\"a\":[3,1],\"st\":[\"a\",\"b\"],\"str\":\"é\\n\\\"<&>\\u0001\",\"z\":1}");
    }
    #[test]
    fn json_lone_surrogates_and_depth() {
        use crate::microdata::text::{from_generalized_utf8, to_generalized_utf8};
        // JSON.parse keeps a lone surrogate escape; a pair is its character
        let v = parse_json(r#"["x\ud800", "\ud83d\ude00", "\\ud800", "\udbff\udfff"]"#).unwrap();
        let items = match v {
            Value::List(items) => items,
            other => panic!("{other:?}"),
        };
        let s = |v: &Value| match v {
            Value::Str(s) => to_generalized_utf8(s).unwrap_or_else(|| s.as_bytes().to_vec()),
            other => panic!("{other:?}"),
        };
        assert_eq!(s(&items[0]), b"x\xed\xa0\x80");
        assert_eq!(s(&items[1]), "\u{1F600}".as_bytes());
        assert_eq!(s(&items[2]), b"\\ud800");
        assert_eq!(s(&items[3]), "\u{10FFFF}".as_bytes());
        // and JSON* writes the lone one back as an escape
        let mut out = String::new();
        write_json_star(&mut out, &Value::Str(from_generalized_utf8(b"x\xed\xa0\x80")), "p").unwrap();
        assert_eq!(out, r#""x\ud800""#);
        // MAX_JSON_DEPTH on read and write
        let deep = |n: usize| "[".repeat(n) + &"]".repeat(n);
        assert!(parse_json(&deep(MAX_JSON_DEPTH)).is_ok());
        assert_eq!(parse_json(&deep(MAX_JSON_DEPTH + 1)).unwrap_err().code, "M2O-PV2");
        let mut v = Value::Int(1);
        for _ in 0..=MAX_JSON_DEPTH {
            v = Value::List(vec![v]);
        }
        assert_eq!(write_json_star(&mut String::new(), &v, "p").unwrap_err().code, "USS-STR1");
    }

    #[test]
    fn json_parse_types() {
        let v = parse_json("[1, 1.0, 1e2, -0, 123456789012345678901234]").unwrap();
        assert_eq!(
            v,
            Value::List(vec![
                Value::Int(1),
                Value::Float(1.0),
                Value::Float(100.0),
                Value::Int(0),
                Value::BigInt("123456789012345678901234".into())
            ])
        );
    }
}
