//! JSON for `stringifiable` values (objects.md §1.6) and for error messages.
//!
//! `JSON*` (one.core's deterministic JSON): object keys sorted by UTF-16 code units and written
//! raw (not JSON-escaped), set elements sorted by their JSON text, arrays in order, primitives
//! exactly as `JSON.stringify` (numbers per §1.5).
use super::number::{write_f64, write_i64};
use super::text::utf16_cmp;
use super::Value;
use crate::{Error, Result};

/// Append a JSON string literal with `JSON.stringify` escaping.
pub(crate) fn write_json_string(out: &mut String, s: &str) {
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

fn bigint_f64(s: &str) -> f64 {
    s.parse::<f64>().unwrap_or(f64::NAN)
}

/// Append `JSON*(v)` (§1.6). Errors: a `Dict` key that is not a string (`O2M-RTYC1`).
pub(crate) fn write_json_star(out: &mut String, v: &Value, itemprop: &str) -> Result<()> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => write_i64(out, *i),
        Value::BigInt(s) => write_f64(out, bigint_f64(s)),
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
pub(crate) fn parse_json(text: &str) -> Result<Value> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::microdata("M2O-PV2", format!("Invalid JSON in stringifiable value: {e}; text: {text}"))
    })?;
    Ok(from_serde(v))
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
