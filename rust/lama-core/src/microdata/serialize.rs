//! Object -> microdata (objects.md §1.1-§1.8, §2.2, Appendix A).
//!
//! Serialization is driven by the resolved recipe: rules in recipe order, each value written
//! straight into one output `String`. Bag/set items are written in place and then reordered by
//! the UTF-16 order of their complete `<li>…</li>` text (§1.7).
use super::json::{render, render_value, write_json_star};
use super::number::{write_f64, write_i64};
use super::recipe::{Recipe, Registry, Rule, Ty, TyId};
use super::text::{utf16_cmp, write_escaped};
use super::{Value, MAX_DEPTH};
use crate::hash::is_hash;
use crate::{Error, Result};

pub(crate) const MICRODATA_START: &str = "<div itemscope itemtype=\"//refin.io/";
pub(crate) const ID_MICRODATA_START: &str = "<div data-id-object=\"true\" itemscope itemtype=\"//refin.io/";

/// Which output(s) to produce.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The object's microdata only.
    Object,
    /// The ID microdata only (§2.2): ID rules only, unknown properties ignored.
    IdOnly,
    /// Both, in one pass over the rules.
    Both,
}

/// The `$type$` of a top-level object (`O2M-CONV` if it is not a dict with a string `$type$`).
pub(crate) fn type_name(obj: &Value) -> Result<&str> {
    match obj {
        Value::Dict(_) => match obj.get("$type$") {
            Some(Value::Str(t)) => Ok(t),
            Some(other) => Err(Error::microdata("O2M-CONV", format!("$type$ must be a string, got {}", render(other)))),
            None => Err(Error::microdata("O2M-CONV", format!("Object has no $type$: {}", render(obj)))),
        },
        other => Err(Error::microdata("O2M-CONV", format!("Not a ONE object (dict with $type$): {}", render(other)))),
    }
}

/// Serialize `obj` (a top-level dict with `$type$`). Returns (microdata, ID microdata); which
/// of them is filled depends on `mode` (the ID part is `None` for unversioned types).
pub(crate) fn serialize(reg: &Registry, obj: &Value, mode: Mode) -> Result<(String, Option<String>)> {
    let tname = type_name(obj)?;
    let recipe = reg.recipe(tname)?;
    let entries = match obj {
        Value::Dict(e) => e,
        _ => unreachable!("type_name checked the dict"),
    };
    let versioned = recipe.versioned();
    if mode == Mode::IdOnly && !versioned {
        return Err(Error::microdata(
            "O2M-COBJ1",
            format!("Cannot create an ID object for unversioned type \"{tname}\""),
        ));
    }
    let want_obj = mode != Mode::IdOnly;
    let want_id = versioned && mode != Mode::Object;

    let mut out = String::with_capacity(if want_obj { capacity_hint(tname, entries) } else { 0 });
    let mut id = String::with_capacity(if want_id { 128 } else { 0 });
    if want_obj {
        out.push_str(MICRODATA_START);
        out.push_str(tname);
        out.push_str("\">");
    }
    if want_id {
        id.push_str(ID_MICRODATA_START);
        id.push_str(tname);
        id.push_str("\">");
    }
    let mut matched = 0usize;
    let mut w = Writer { reg, depth: 0 };
    for rule in &recipe.rules {
        let v = lookup(entries, &rule.itemprop);
        if v.is_some() {
            matched += 1;
        }
        if !want_obj && !rule.is_id {
            continue;
        }
        let v = match v {
            None | Some(Value::Null) => {
                if rule.optional {
                    continue;
                }
                return Err(missing(rule));
            }
            Some(v) => v,
        };
        if want_obj {
            let start = out.len();
            w.top(&mut out, rule, v)?;
            if want_id && rule.is_id {
                id.push_str(&out[start..]);
            }
        } else {
            w.top(&mut id, rule, v)?;
        }
    }
    if want_obj {
        check_unknown(entries, recipe, matched, obj)?;
        out.push_str("</div>");
    }
    if want_id {
        id.push_str("</div>");
        Ok((out, Some(id)))
    } else {
        Ok((out, None))
    }
}

/// Expected length of an object's microdata: the header plus, per property, its tags and the
/// text of a string value, so that the common object is written without reallocating.
fn capacity_hint(tname: &str, entries: &[(Value, Value)]) -> usize {
    let props: usize = entries
        .iter()
        .map(|(k, v)| {
            let k = match k {
                Value::Str(s) => s.len(),
                _ => 8,
            };
            let v = match v {
                Value::Str(s) => s.len() + s.len() / 16,
                Value::List(items) | Value::Set(items) => 24 * items.len(),
                Value::Dict(items) => 48 * items.len(),
                _ => 24,
            };
            // `<span itemprop="` + k + `">` + v + `</span>` and the like
            32 + 2 * k + v
        })
        .sum();
    ID_MICRODATA_START.len() + tname.len() + 8 + props
}

#[inline]
fn lookup<'v>(entries: &'v [(Value, Value)], key: &str) -> Option<&'v Value> {
    entries.iter().find_map(|(k, v)| match k {
        Value::Str(s) if s == key => Some(v),
        _ => None,
    })
}

fn missing(rule: &Rule) -> Error {
    Error::microdata(
        "O2M-RTYC2",
        format!("Mandatory property \"{}\" missing; Rule: {}", rule.itemprop, rule.rule_json),
    )
}

fn check_unknown(entries: &[(Value, Value)], recipe: &Recipe, matched: usize, obj: &Value) -> Result<()> {
    let special = entries
        .iter()
        .filter(|(k, _)| matches!(k, Value::Str(s) if s == "$type$" || s == "$versionHash$"))
        .count();
    if entries.len() == matched + special {
        return Ok(());
    }
    let unknown: Vec<String> = entries
        .iter()
        .filter(|(k, _)| match k {
            Value::Str(s) => {
                s != "$type$" && s != "$versionHash$" && !recipe.rules.iter().any(|r| &r.itemprop == s)
            }
            _ => true,
        })
        .map(|(k, _)| render(&Value::Str(render_value(k))))
        .collect();
    Err(Error::microdata(
        "O2M-COBJ2",
        format!("Unknown properties [{}] in {}", unknown.join(","), render(obj)),
    ))
}

fn not_an_array(prop: &str, v: &Value) -> Error {
    Error::microdata(
        "O2M-CVAL4",
        format!("Value for array/bag itemprop \"{prop}\" is not an array, Value: {}", render_value(v)),
    )
}

fn rtyc1(prop: &str, tyname: &str, v: &Value) -> Error {
    Error::microdata(
        "O2M-RTYC1",
        format!("Value for itemprop \"{prop}\" should be of type \"{tyname}\", Value: {}", render_value(v)),
    )
}

struct Writer<'r> {
    reg: &'r Registry,
    /// Container nesting, limited like the parser's (never write what cannot be read back).
    depth: usize,
}

impl Writer<'_> {
    /// Top-level form of a rule's value (with `itemprop`).
    fn top(&mut self, out: &mut String, rule: &Rule, v: &Value) -> Result<()> {
        let p = rule.itemprop.as_str();
        let ty = self.reg.ty(rule.ty);
        match ty {
            Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Stringifiable => {
                out.push_str("<span itemprop=\"");
                out.push_str(p);
                out.push_str("\">");
                self.prim(out, ty, v, p)?;
                out.push_str("</span>");
            }
            Ty::Ref(k) => {
                let h = check_hash(v, p)?;
                out.push_str("<a itemprop=\"");
                out.push_str(p);
                out.push_str("\" data-type=\"");
                out.push_str(k.as_str());
                out.push_str("\">");
                out.push_str(h);
                out.push_str("</a>");
            }
            _ => {
                let (tag, _) = container_tags(ty);
                out.push('<');
                out.push_str(tag);
                out.push_str(" itemprop=\"");
                out.push_str(p);
                out.push_str("\">");
                self.container_body(out, rule.ty, v, p)?;
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
            }
        }
        Ok(())
    }

    /// Nested form (list item, map key or value): no `itemprop`.
    fn nested(&mut self, out: &mut String, t: TyId, v: &Value, p: &str) -> Result<()> {
        let ty = self.reg.ty(t);
        match ty {
            Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Stringifiable => self.prim(out, ty, v, p),
            Ty::Ref(k) => {
                let h = check_hash(v, p)?;
                out.push_str("<a data-type=\"");
                out.push_str(k.as_str());
                out.push_str("\">");
                out.push_str(h);
                out.push_str("</a>");
                Ok(())
            }
            _ => {
                let (_, open) = container_tags(ty);
                out.push_str(open);
                self.container_body(out, t, v, p)?;
                let (tag, _) = container_tags(ty);
                out.push_str("</");
                out.push_str(tag);
                out.push('>');
                Ok(())
            }
        }
    }

    fn prim(&mut self, out: &mut String, ty: &Ty, v: &Value, p: &str) -> Result<()> {
        match ty {
            Ty::Str(re) => {
                let s = match v {
                    Value::Str(s) => s,
                    _ => return Err(rtyc1(p, "string", v)),
                };
                if let Some(pat) = re {
                    let (re, src) = &**pat;
                    if !re.is_match(s)? {
                        return Err(Error::microdata(
                            "O2M-RTYC3",
                            format!("Property \"{p}\" value \"{s}\" does not match RegExp \"{src}\""),
                        ));
                    }
                }
                write_escaped(out, s);
            }
            Ty::Integer => match v {
                Value::Int(i) => write_i64(out, *i),
                Value::Float(f) if f.is_finite() && f.fract() == 0.0 => write_f64(out, *f),
                Value::BigInt(s) => match s.parse::<f64>() {
                    Ok(f) if f.is_finite() => write_f64(out, f),
                    _ => return Err(rtyc1(p, "integer", v)),
                },
                _ => return Err(rtyc1(p, "integer", v)),
            },
            Ty::Number => match v {
                Value::Int(i) => write_i64(out, *i),
                Value::Float(f) => write_f64(out, *f),
                Value::BigInt(s) => match s.parse::<f64>() {
                    Ok(f) if f.is_finite() => write_f64(out, f),
                    _ => return Err(rtyc1(p, "number", v)),
                },
                _ => return Err(rtyc1(p, "number", v)),
            },
            Ty::Boolean => match v {
                Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                _ => return Err(rtyc1(p, "boolean", v)),
            },
            Ty::Stringifiable => {
                let mut json = String::new();
                write_json_star(&mut json, v, p)?;
                write_escaped(out, &json);
            }
            _ => unreachable!("prim called for a non-primitive type"),
        }
        Ok(())
    }

    /// The inside of `<ol>`, `<ul>`, `<dl>` or `<div>` for a collection/map/object value.
    fn container_body(&mut self, out: &mut String, t: TyId, v: &Value, p: &str) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::microdata("O2M-RTYC1", format!("Value nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let r = self.container_body_inner(out, t, v, p);
        self.depth -= 1;
        r
    }

    fn container_body_inner(&mut self, out: &mut String, t: TyId, v: &Value, p: &str) -> Result<()> {
        let reg = self.reg;
        match reg.ty(t) {
            Ty::Array(item) => {
                let items = match v {
                    Value::List(items) => items,
                    _ => return Err(not_an_array(p, v)),
                };
                for x in items {
                    out.push_str("<li>");
                    self.nested(out, *item, x, p)?;
                    out.push_str("</li>");
                }
            }
            Ty::Bag(item) | Ty::Set(item) => {
                let is_set = matches!(reg.ty(t), Ty::Set(_));
                let items = match v {
                    Value::List(items) if !is_set || list_for_set(reg.ty(*item)) => items,
                    Value::Set(items) if is_set => items,
                    _ if !is_set => return Err(not_an_array(p, v)),
                    _ => return Err(rtyc1(p, "set", v)),
                };
                self.sorted_items(out, *item, items, p, is_set)?;
            }
            Ty::Map(k, val) => {
                let entries = match v {
                    Value::Dict(e) => e,
                    _ => return Err(rtyc1(p, "map", v)),
                };
                for (key, value) in entries {
                    out.push_str("<dt>");
                    self.nested(out, *k, key, p)?;
                    out.push_str("</dt><dd>");
                    self.nested(out, *val, value, p)?;
                    out.push_str("</dd>");
                }
            }
            Ty::Object(rules) => {
                let entries = match v {
                    Value::Dict(e) => e,
                    // the reference accepts any JS object, and an array or Set has none of the
                    // nested properties (objects.md §1.3 "object must be a non-null object")
                    Value::List(_) | Value::Set(_) => {
                        return Err(Error::microdata(
                            "O2M-RTYC2",
                            format!("Value for nested object itemprop \"{p}\" is an array or set, Value: {}", render_value(v)),
                        ))
                    }
                    _ => return Err(rtyc1(p, "object", v)),
                };
                for rule in rules {
                    match lookup(entries, &rule.itemprop) {
                        None => {
                            if !rule.optional {
                                return Err(missing(rule));
                            }
                        }
                        // inside a nested object null is a value, not "absent" (objects.md
                        // §9.2): the rule's type check rejects it with its own code; JSON*
                        // would write it as `null`
                        Some(Value::Null) if matches!(self.reg.ty(rule.ty), Ty::Stringifiable) => {
                            return Err(rtyc1(&rule.itemprop, "stringifiable", &Value::Null))
                        }
                        Some(x) => self.top(out, rule, x)?,
                    }
                }
            }
            other => unreachable!("container_body for {}", other.name()),
        }
        Ok(())
    }

    /// `<li>…</li>` items sorted by the UTF-16 order of their full text (§1.7). With `unique`
    /// (sets) equal items are written once: a Set holds no duplicates (§9.24) and parsing gives
    /// one item for them, so parse(serialize(x)) hashes like x.
    fn sorted_items(&mut self, out: &mut String, item: TyId, items: &[Value], p: &str, unique: bool) -> Result<()> {
        if items.len() <= 1 {
            for x in items {
                out.push_str("<li>");
                self.nested(out, item, x, p)?;
                out.push_str("</li>");
            }
            return Ok(());
        }
        let base = out.len();
        let mut ranges = Vec::with_capacity(items.len());
        for x in items {
            let s = out.len();
            out.push_str("<li>");
            self.nested(out, item, x, p)?;
            out.push_str("</li>");
            ranges.push((s - base, out.len() - base));
        }
        let region = out.split_off(base);
        ranges.sort_by(|a, b| utf16_cmp(&region[a.0..a.1], &region[b.0..b.1]));
        let mut last: Option<&str> = None;
        for (s, e) in ranges {
            let li = &region[s..e];
            if unique && last == Some(li) {
                continue;
            }
            out.push_str(li);
            last = Some(li);
        }
        Ok(())
    }
}

/// Set item types for which a Python list/tuple is accepted as the set (docs/core-interface.md):
/// those whose values may be unhashable in Python (a stringifiable may be a dict or list).
fn list_for_set(t: &Ty) -> bool {
    unhashable(t) || matches!(t, Ty::Stringifiable)
}

/// Item types whose Python values are unhashable: a set of them arrives as a list.
pub(crate) fn unhashable(t: &Ty) -> bool {
    matches!(t, Ty::Object(_) | Ty::Map(..) | Ty::Array(_) | Ty::Bag(_) | Ty::Set(_))
}

/// (tag name, nested opening tag) of a container type.
pub(crate) fn container_tags(t: &Ty) -> (&'static str, &'static str) {
    match t {
        Ty::Array(_) => ("ol", "<ol>"),
        Ty::Bag(_) | Ty::Set(_) => ("ul", "<ul>"),
        Ty::Map(..) => ("dl", "<dl>"),
        _ => ("div", "<div>"),
    }
}

fn check_hash<'v>(v: &'v Value, p: &str) -> Result<&'v str> {
    match v {
        Value::Str(h) if is_hash(h) => Ok(h),
        _ => Err(Error::microdata(
            "O2M-RTYC4",
            format!(
                "Value for hash-link itemprop \"{p}\" should be SHA-256 hash (lower case hex 64 characters), Value: {}",
                render_value(v)
            ),
        )),
    }
}
