//! Microdata -> object (objects.md §1.11), ID microdata from concrete microdata (§2.2
//! "alternative computation"), type detection (§1.1) and reference extraction (§6.4).
//!
//! The parser is recipe-driven and strict: at each position it expects exactly the tag the
//! next rule would have produced; anything else is an error. Primitive text runs to the next
//! `<`. An empty primitive text is `Str("")` for every primitive type (reference behaviour).
use super::json::parse_json;
use super::number::{js_number, MAX_SAFE};
use super::recipe::{Registry, Rule, Ty, TyId};
use super::serialize::{container_tags, unhashable, ID_MICRODATA_START, MICRODATA_START};
use super::text::unescape;
use super::{HashRef, RefKind, Reference, Value};
use crate::hash::{hash_bytes_of_hex, is_hash};
use crate::{Error, Result};

/// (type name, is ID object) from the header (§1.1); `M2O-PH1` if it is not ONE microdata.
pub(crate) fn header(text: &str) -> Result<(&str, bool, usize)> {
    let (is_id, rest_at) = if text.starts_with(ID_MICRODATA_START) {
        (true, ID_MICRODATA_START.len())
    } else if text.starts_with(MICRODATA_START) {
        (false, MICRODATA_START.len())
    } else {
        return Err(Error::microdata("M2O-PH1", format!("Not ONE microdata (bad header): {}", preview(text))));
    };
    let rest = &text[rest_at..];
    let end = rest
        .find("\">")
        .ok_or_else(|| Error::microdata("M2O-PH1", format!("Unterminated microdata header: {}", preview(text))))?;
    let t = &rest[..end];
    if t.is_empty() || t.contains(['<', '>', '"']) {
        return Err(Error::microdata("M2O-PH1", format!("Invalid type name in header: {}", preview(text))));
    }
    Ok((t, is_id, rest_at + end + 2))
}

fn preview(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Result of a full parse.
pub(crate) struct Parsed {
    pub value: Value,
    pub type_name: String,
    pub is_id: bool,
    /// Per top-level rule of the recipe: byte span of its complete tag in the text, if present.
    pub spans: Vec<Option<(usize, usize)>>,
    pub refs: Vec<Reference>,
    /// Of a [`check`]: every reference with its hash as 32 bytes (`refs` stays empty).
    pub keyed: Vec<HashRef>,
}

/// Parse `text` (an object or an ID object). With `collect_refs`, also gather every reference.
pub(crate) fn parse(reg: &Registry, text: &str, collect_refs: bool) -> Result<Parsed> {
    run(reg, text, collect_refs, true)
}

/// The strict parse of [`parse`] (the same checks, the same errors) without building the
/// value: what a receiver checks (chum.md §6.4). Every reference is collected with its hash
/// decoded to 32 bytes (`Parsed::keyed`); `value` is `Null`. The CHUM importer checks every
/// received object this way (issue 8: building the dict and its strings was half the parse).
pub(crate) fn check(reg: &Registry, text: &str) -> Result<Parsed> {
    run(reg, text, true, false)
}

fn run(reg: &Registry, text: &str, collect_refs: bool, build: bool) -> Result<Parsed> {
    let (tname, is_id, start) = header(text)?;
    let recipe = reg
        .get(tname)
        .ok_or_else(|| Error::recipe("OR-ET1", format!("Type \"{tname}\" not found in recipes")))?;
    if is_id && !recipe.versioned() {
        return Err(Error::microdata("M2O-PH1", format!("ID object of unversioned type \"{tname}\"")));
    }
    let mut p = Parser { s: text, pos: start, reg, collect: collect_refs, build, refs: Vec::new(), keyed: Vec::new(), path: String::new(), depth: 0 };
    let mut entries = Vec::with_capacity(if build { recipe.rules.len() + 1 } else { 0 });
    if build {
        entries.push((Value::Str("$type$".into()), Value::Str(tname.to_owned())));
    }
    let mut spans = vec![None; recipe.rules.len()];
    for (i, rule) in recipe.rules.iter().enumerate() {
        if is_id && !rule.is_id {
            continue;
        }
        let s = p.pos;
        if collect_refs {
            p.path.clear();
            p.path.push_str(&rule.itemprop);
        }
        match p.top(rule)? {
            Some(v) => {
                spans[i] = Some((s, p.pos));
                if build {
                    entries.push((Value::Str(rule.itemprop.clone()), v));
                }
            }
            None if rule.optional => {}
            None => {
                return Err(Error::microdata(
                    "M2O-PD1",
                    format!("Mandatory property \"{}\" of type \"{tname}\" not found at position {}: {}", rule.itemprop, p.pos, p.here()),
                ))
            }
        }
    }
    if !p.eat("</div>") {
        return Err(Error::microdata(
            "M2O-PCONV1",
            format!("Unexpected content in \"{tname}\" microdata at position {}: {}", p.pos, p.here()),
        ));
    }
    if p.pos != text.len() {
        return Err(Error::microdata(
            "M2O-PCONV2",
            format!("Trailing characters after the end of \"{tname}\" microdata at position {}", p.pos),
        ));
    }
    let value = if build { Value::Dict(entries) } else { Value::Null };
    Ok(Parsed { value, type_name: tname.to_owned(), is_id, spans, refs: p.refs, keyed: p.keyed })
}

/// ID microdata of a concrete object's microdata by copying the ID properties' tags (§2.2).
/// Unversioned types give `None` from the header alone (docs/core-interface.md; the pure core
/// does the same), so this is no validator for them: `Store::put_microdata` parses those;
/// versioned ones are parsed fully.
pub(crate) fn id_microdata_of(reg: &Registry, text: &str) -> Result<Option<String>> {
    let (tname, _, _) = header(text)?;
    let recipe = reg
        .get(tname)
        .ok_or_else(|| Error::recipe("OR-ET1", format!("Type \"{tname}\" not found in recipes")))?;
    if !recipe.versioned() {
        return Ok(None);
    }
    let parsed = parse(reg, text, false)?;
    id_from_spans(recipe, &parsed, text).map(Some)
}

/// One strict parse of received microdata that yields what a receiver checks and stores
/// (chum.md §6.4, objects.md §9.23): type, ID-ness, references, and for a versioned object its
/// ID microdata (§2.2). Unversioned types are parsed fully too (the body is validated).
pub(crate) fn inspect(reg: &Registry, text: &str) -> Result<super::Inspected> {
    let parsed = check(reg, text)?;
    let recipe = reg.get(&parsed.type_name).expect("parse found the recipe");
    let id_microdata = if recipe.versioned() && !parsed.is_id { Some(id_from_spans(recipe, &parsed, text)?) } else { None };
    Ok(super::Inspected { id_microdata, type_name: parsed.type_name, is_id: parsed.is_id, refs: parsed.keyed })
}

/// The ID microdata of a parsed versioned object's text: its ID properties' tags copied.
fn id_from_spans(recipe: &super::recipe::Recipe, parsed: &Parsed, text: &str) -> Result<String> {
    if parsed.is_id {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(128);
    out.push_str(ID_MICRODATA_START);
    out.push_str(&parsed.type_name);
    out.push_str("\">");
    for &i in &recipe.id_rules {
        let rule = &recipe.rules[i];
        match parsed.spans[i] {
            Some((s, e)) => out.push_str(&text[s..e]),
            None if rule.optional => {}
            None => {
                return Err(Error::microdata(
                    "M2IH-XID1",
                    format!("ID property \"{}\" not found in \"{}\" microdata", rule.itemprop, parsed.type_name),
                ))
            }
        }
    }
    out.push_str("</div>");
    Ok(out)
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
    reg: &'a Registry,
    collect: bool,
    /// Build the parsed value (else only check: every value is `Null`, see [`check`]).
    build: bool,
    refs: Vec<Reference>,
    keyed: Vec<HashRef>,
    path: String,
    /// Current container nesting (bounded: recursive recipes could otherwise exhaust the stack).
    depth: usize,
}

use super::MAX_DEPTH;

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn here(&self) -> String {
        preview(self.rest())
    }

    #[inline]
    fn eat(&mut self, lit: &str) -> bool {
        if self.rest().starts_with(lit) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    /// Consume the concatenation of `parts` if it follows; otherwise consume nothing.
    fn eat_seq(&mut self, parts: &[&str]) -> bool {
        let r = self.rest().as_bytes();
        let mut at = 0;
        for part in parts {
            let b = part.as_bytes();
            if r.len() < at + b.len() || &r[at..at + b.len()] != b {
                return false;
            }
            at += b.len();
        }
        self.pos += at;
        true
    }

    fn expect(&mut self, lit: &str) -> Result<()> {
        if self.eat(lit) {
            Ok(())
        } else {
            Err(Error::microdata(
                "M2O-PCONV1",
                format!("Expected \"{lit}\" at position {} (property \"{}\"), found: {}", self.pos, self.path, self.here()),
            ))
        }
    }

    /// Text up to the next `<`.
    fn text(&mut self) -> &'a str {
        let r = self.rest();
        let n = r.find('<').unwrap_or(r.len());
        self.pos += n;
        &r[..n]
    }

    /// A rule's value in top-level form, or `None` if its opening tag is not at the position.
    fn top(&mut self, rule: &Rule) -> Result<Option<Value>> {
        let p = rule.itemprop.as_str();
        let ty = self.reg.ty(rule.ty);
        match ty {
            Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Stringifiable => {
                if !self.eat_seq(&["<span itemprop=\"", p, "\">"]) {
                    return Ok(None);
                }
                let v = self.prim(ty, p)?;
                self.expect("</span>")?;
                Ok(Some(v))
            }
            Ty::Ref(k) => {
                // the whole opening tag is the rule's tag: with another data-type it is not
                // this rule's (an optional rule is skipped), as in the pure core
                if !self.eat_seq(&["<a itemprop=\"", p, "\" data-type=\"", k.as_str(), "\">"]) {
                    return Ok(None);
                }
                let v = self.hash(*k)?;
                self.expect("</a>")?;
                Ok(Some(v))
            }
            _ => {
                let (tag, _) = container_tags(ty);
                if !self.eat_seq(&["<", tag, " itemprop=\"", p, "\">"]) {
                    return Ok(None);
                }
                let v = self.container_body(rule.ty, p)?;
                self.expect_close(tag)?;
                Ok(Some(v))
            }
        }
    }

    fn expect_close(&mut self, tag: &str) -> Result<()> {
        if self.eat_seq(&["</", tag, ">"]) {
            Ok(())
        } else {
            Err(Error::microdata(
                "M2O-PCONV1",
                format!("Expected \"</{tag}>\" at position {} (property \"{}\"), found: {}", self.pos, self.path, self.here()),
            ))
        }
    }

    fn hash(&mut self, k: RefKind) -> Result<Value> {
        let h = self.text();
        if !is_hash(h) {
            return Err(Error::microdata(
                "M2O-PV1",
                format!("Invalid hash in reference \"{}\": {}", self.path, preview(h)),
            ));
        }
        if !self.build {
            if self.collect {
                let hash = hash_bytes_of_hex(h.as_bytes().try_into().expect("is_hash: 64 bytes"));
                self.keyed.push(HashRef { path: self.path.clone(), kind: k, hash });
            }
            return Ok(Value::Null);
        }
        if self.collect {
            self.refs.push(Reference { path: self.path.clone(), kind: k, hash: h.to_owned() });
        }
        Ok(Value::Str(h.to_owned()))
    }

    fn prim(&mut self, ty: &Ty, p: &str) -> Result<Value> {
        let raw = self.text();
        if raw.is_empty() {
            return Ok(if self.build { Value::Str(String::new()) } else { Value::Null });
        }
        if !self.build {
            // only what can fail: a string's RegExp and a stringifiable's JSON (numbers and
            // booleans read any text, like the reference)
            match ty {
                Ty::Str(Some(_)) | Ty::Stringifiable => {}
                _ => return Ok(Value::Null),
            }
        }
        let text = unescape(raw);
        Ok(match ty {
            Ty::Str(re) => {
                if let Some(pat) = re {
                    let (re, src) = &**pat;
                    if !re.is_match(&text)? {
                        return Err(Error::microdata(
                            "M2O-PV3",
                            format!("Property \"{p}\" value \"{text}\" does not match RegExp \"{src}\""),
                        ));
                    }
                }
                if !self.build {
                    return Ok(Value::Null);
                }
                Value::Str(text)
            }
            Ty::Integer | Ty::Number => number_value(js_number(&text)),
            Ty::Boolean => Value::Bool(text == "true"),
            Ty::Stringifiable => {
                let v = parse_json(&text)?;
                if self.build { v } else { Value::Null }
            }
            _ => unreachable!("prim for non-primitive"),
        })
    }

    /// A value in nested form (list item, map key/value).
    fn nested(&mut self, t: TyId, p: &str) -> Result<Value> {
        let ty = self.reg.ty(t);
        match ty {
            Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Stringifiable => self.prim(ty, p),
            Ty::Ref(k) => {
                if !self.eat_seq(&["<a data-type=\"", k.as_str(), "\">"]) {
                    return Err(Error::microdata(
                        "M2O-PCONV1",
                        format!("Expected a reference of data-type \"{}\" at \"{}\": {}", k.as_str(), self.path, self.here()),
                    ));
                }
                let v = self.hash(*k)?;
                self.expect("</a>")?;
                Ok(v)
            }
            _ => {
                let (tag, open) = container_tags(ty);
                self.expect(open)?;
                let v = self.container_body(t, p)?;
                self.expect_close(tag)?;
                Ok(v)
            }
        }
    }

    fn push_idx(&mut self, n: usize) -> usize {
        let len = self.path.len();
        if self.collect {
            use std::fmt::Write;
            let _ = write!(self.path, ".{n}");
        }
        len
    }

    fn push_seg(&mut self, seg: &str) -> usize {
        let len = self.path.len();
        if self.collect {
            self.path.push('.');
            self.path.push_str(seg);
        }
        len
    }

    fn container_body(&mut self, t: TyId, p: &str) -> Result<Value> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::microdata("M2O-PD1", format!("Microdata nested deeper than {MAX_DEPTH} levels")));
        }
        self.depth += 1;
        let r = self.container_body_inner(t, p);
        self.depth -= 1;
        r
    }

    fn container_body_inner(&mut self, t: TyId, p: &str) -> Result<Value> {
        let reg = self.reg;
        match reg.ty(t) {
            Ty::Array(item) | Ty::Bag(item) | Ty::Set(item) => {
                let mut items = Vec::new();
                let mut n = 0;
                while self.eat("<li>") {
                    let mark = self.push_idx(n);
                    n += 1;
                    let v = self.nested(*item, p)?;
                    if self.build {
                        items.push(v);
                    }
                    self.path.truncate(mark);
                    self.expect("</li>")?;
                }
                if !self.build {
                    return Ok(Value::Null);
                }
                Ok(match reg.ty(t) {
                    // sets of sets parse as sets of frozensets; items Python cannot hash
                    // (objects, maps, arrays, bags) as a list (docs/core-interface.md)
                    Ty::Set(item) if matches!(reg.ty(*item), Ty::Set(_)) || !unhashable(reg.ty(*item)) => {
                        Value::Set(items)
                    }
                    _ => Value::List(items),
                })
            }
            Ty::Map(k, v) => {
                let mut entries = Vec::new();
                let mut n = 0;
                while self.eat("<dt>") {
                    let mark = self.push_idx(n);
                    n += 1;
                    let m2 = self.push_seg("key");
                    let key = self.nested(*k, p)?;
                    self.path.truncate(m2);
                    self.expect("</dt>")?;
                    self.expect("<dd>")?;
                    let m2 = self.push_seg("value");
                    let val = self.nested(*v, p)?;
                    self.path.truncate(m2);
                    self.path.truncate(mark);
                    self.expect("</dd>")?;
                    if self.build {
                        entries.push((key, val));
                    }
                }
                Ok(if self.build { Value::Dict(entries) } else { Value::Null })
            }
            Ty::Object(rules) => {
                let mut entries = Vec::with_capacity(if self.build { rules.len() } else { 0 });
                for rule in rules {
                    let mark = self.push_seg(&rule.itemprop);
                    match self.top(rule)? {
                        Some(v) if self.build => entries.push((Value::Str(rule.itemprop.clone()), v)),
                        Some(_) => {}
                        None if rule.optional => {}
                        None => {
                            return Err(Error::microdata(
                                "M2O-EOTFM1",
                                format!("Mandatory property \"{}\" of a nested object not found at position {}: {}", rule.itemprop, self.pos, self.here()),
                            ))
                        }
                    }
                    self.path.truncate(mark);
                }
                Ok(if self.build { Value::Dict(entries) } else { Value::Null })
            }
            other => unreachable!("container_body for {}", other.name()),
        }
    }
}

/// Python typing of a parsed number: `Int` if integral and |v| <= 2^53, else `Float`.
pub(crate) fn number_value(f: f64) -> Value {
    if f.is_finite() && f.fract() == 0.0 && f.abs() <= MAX_SAFE {
        Value::Int(f as i64)
    } else {
        Value::Float(f)
    }
}
