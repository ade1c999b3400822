//! The dynamic value that crosses between Python and the core.
//!
//! Strings are in the core's encoding of JavaScript strings (text.rs "Lone surrogates").
//! It mirrors Python values, not ONE types: the recipe decides how a value is written
//! (a `Dict` is a nested object or a map, a `List` an array or a bag). See
//! docs/core-interface.md for the mapping.

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Python `None` / JSON `null`.
    Null,
    Bool(bool),
    /// Python `int` that fits in i64.
    Int(i64),
    /// Python `int` outside i64, as decimal text (only produced by JSON parsing of
    /// stringifiable values; the bindings turn it into a Python `int`).
    BigInt(String),
    Float(f64),
    Str(String),
    /// Python `list` / `tuple`.
    List(Vec<Value>),
    /// Python `set` / `frozenset`.
    Set(Vec<Value>),
    /// Python `dict`, in insertion order. Keys are `Str`, `Int`, `Float` or `Bool`.
    Dict(Vec<(Value, Value)>),
    /// A Python value with no ONE form (e.g. `bytes`, an `int` beyond the doubles, a value
    /// nested deeper than the bindings convert), with a description for messages. Only the
    /// serializer's type checks see it, where a rule or JSON* needs the value, and reject it
    /// like the pure core does at that point (`O2M-RTYC1`, `O2M-RTYC4`, ...); where nothing reads
    /// the value (extra keys of a nested object, non-ID properties for an ID object) it is
    /// ignored, as in the pure core.
    Unsupported(String),
}

impl Value {
    /// Look up a string key in a `Dict`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}
