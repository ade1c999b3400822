//! Recipes (objects.md §3) compiled into a resolved form, and the process-global registry.
//!
//! A recipe is registered in its JSON form (tests/vectors/recipes.json "recipe": `allowedTypes`
//! as `{"$set": [...]}`, `regexp` as `{"$regexp": src, "flags": f}`, `crdtConfig` as
//! `{"$map": [[k, v], ...]}`). Registration resolves rule inheritance (§1.9) once, compiles
//! regular expressions once and checks validity (§3 "Recipe validity checks"). Resolved value
//! types live in one arena ([`Registry::types`]) so recursive inheritance (a Questionnaire
//! `item` containing `item`s) is a cycle of indexes, not an infinite tree.
//!
//! The registry is copy-on-write: readers take an `Arc` snapshot (no lock held while
//! serializing); registration clones, extends and swaps it.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use super::jsregex::JsRegex;
use serde_json::Value as J;

use super::RefKind;
use crate::{Error, Result};

/// Index of a value type in [`Registry::types`].
pub(crate) type TyId = u32;

/// A resolved value type (objects.md §1.3).
#[derive(Clone, Debug)]
pub(crate) enum Ty {
    /// `string`, with an optional JavaScript regexp (compiled, plus its source for messages;
    /// one per distinct pattern in a registry: the builtin recipes repeat 29 patterns in 340
    /// places, and a compiled one is ~2 KB).
    Str(Option<Arc<(JsRegex, String)>>),
    Integer,
    Number,
    Boolean,
    Stringifiable,
    Ref(RefKind),
    Array(TyId),
    Bag(TyId),
    Set(TyId),
    Map(TyId, TyId),
    Object(Vec<Rule>),
}

impl Ty {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Ty::Str(_) => "string",
            Ty::Integer => "integer",
            Ty::Number => "number",
            Ty::Boolean => "boolean",
            Ty::Stringifiable => "stringifiable",
            Ty::Ref(RefKind::Obj) => "referenceToObj",
            Ty::Ref(RefKind::Id) => "referenceToId",
            Ty::Ref(RefKind::Clob) => "referenceToClob",
            Ty::Ref(RefKind::Blob) => "referenceToBlob",
            Ty::Array(_) => "array",
            Ty::Bag(_) => "bag",
            Ty::Set(_) => "set",
            Ty::Map(..) => "map",
            Ty::Object(_) => "object",
        }
    }
}

/// A resolved rule: inheritance applied, type compiled.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub itemprop: String,
    pub ty: TyId,
    pub optional: bool,
    pub is_id: bool,
    /// JSON* of the rule as written in the recipe (for `O2M-RTYC2` messages).
    pub rule_json: String,
}

/// A registered recipe.
#[derive(Debug)]
pub(crate) struct Recipe {
    pub name: String,
    pub rules: Vec<Rule>,
    /// Indexes into `rules` of the top-level `isId` rules.
    pub id_rules: Vec<usize>,
    /// The recipe JSON as registered (canonical text).
    pub json: String,
    /// The recipe with inheritance applied, normalized (`resolved_recipe`).
    pub resolved: String,
}

impl Recipe {
    /// The recipe as registered, parsed again from `json` (issue 10: keeping the parsed value
    /// of every recipe cost more than its text; it is only needed to register another recipe).
    pub(crate) fn raw(&self) -> J {
        serde_json::from_str(&self.json).expect("a registered recipe's JSON parses")
    }

    pub(crate) fn versioned(&self) -> bool {
        !self.id_rules.is_empty()
    }
}

/// All registered recipes plus the type arena.
#[derive(Clone, Debug, Default)]
pub(crate) struct Registry {
    pub types: Vec<Ty>,
    pub recipes: Vec<Arc<Recipe>>,
    /// (foldhash: looked up twice per received object, by `inspect` and the strict parse; the
    /// default SipHash was ~1 % of a CHUM importer's session thread, issue 8)
    pub by_name: HashMap<String, usize, foldhash::fast::RandomState>,
    /// The compiled regexps by (source, flags), shared by every type that uses one.
    patterns: HashMap<(String, String), Arc<(JsRegex, String)>>,
    /// The one plain `string` type (a rule without itemtype), shared by all such rules.
    plain_str: Option<TyId>,
}

impl Registry {
    #[inline]
    pub(crate) fn ty(&self, id: TyId) -> &Ty {
        &self.types[id as usize]
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Recipe>> {
        self.by_name.get(name).map(|&i| &self.recipes[i])
    }

    /// The recipe of `name` or `OR-GR1`.
    pub(crate) fn recipe(&self, name: &str) -> Result<&Arc<Recipe>> {
        self.get(name)
            .ok_or_else(|| Error::recipe("OR-GR1", format!("Type \"{name}\" not found in recipes")))
    }

    fn push(&mut self, t: Ty) -> TyId {
        self.types.push(t);
        (self.types.len() - 1) as TyId
    }

    /// Compile and add a recipe given as parsed JSON. Identical re-registration is a no-op.
    fn add(&mut self, raw: J) -> Result<()> {
        let obj = raw
            .as_object()
            .ok_or_else(|| Error::recipe("URC-ERECIPE1", "A recipe must be a JSON object"))?;
        let name = obj.get("name").and_then(J::as_str).unwrap_or_default().to_owned();
        check_name(&name)?;
        if let Some(t) = obj.get("$type$") {
            if t.as_str() != Some("Recipe") {
                return Err(Error::recipe(
                    "URC-ERECIPE1",
                    format!("Recipe \"{name}\": $type$ must be \"Recipe\", got {t}"),
                ));
            }
        }
        if let Some(existing) = self.get(&name) {
            if existing.raw() == raw {
                return Ok(());
            }
            return Err(Error::recipe(
                "OR-ADDR1",
                format!("A different recipe for type \"{name}\" is already registered"),
            ));
        }
        for k in obj.keys() {
            if !matches!(k.as_str(), "$type$" | "name" | "rule" | "crdtConfig") {
                return Err(Error::recipe("URC-ERECIPE1", format!("Unknown recipe key \"{k}\" in recipe \"{name}\"")));
            }
        }
        if let Some(c) = obj.get("crdtConfig") {
            let ok = c
                .get("$map")
                .and_then(J::as_array)
                .map(|pairs| {
                    pairs.iter().all(|p| {
                        p.as_array().is_some_and(|a| a.len() == 2 && a[0].is_string() && a[1].is_string())
                    })
                })
                .unwrap_or(false);
            if !ok {
                return Err(Error::recipe(
                    "URC-ECRDT1",
                    format!("crdtConfig of recipe \"{name}\" must be {{\"$map\": [[string, string], ...]}}"),
                ));
            }
        }
        let raw_rules = obj
            .get("rule")
            .and_then(J::as_array)
            .ok_or_else(|| Error::recipe("URC-ERULES1", format!("Recipe \"{name}\" needs a \"rule\" array")))?
            .clone();
        let raw_rules = Inheritance { reg: self, name: &name, top: &raw_rules }.rules(&raw_rules)?;
        let resolved = normalized_rules(&raw_rules);
        let mut c = Compiler { reg: self, name: &name };
        check_rule_list(&raw_rules, &name)?;
        if let Some(r) = raw_rules.iter().find(|r| matches!(r["itemprop"].as_str(), Some("$type$" | "$versionHash$"))) {
            return Err(bad("URC-EITP1", &name, format!("reserved itemprop {}", r["itemprop"])));
        }
        let mut rules = Vec::with_capacity(raw_rules.len());
        for r in &raw_rules {
            let (ty, optional) = c.rule_type(r)?;
            rules.push(c.finish_rule(r, ty, optional, true)?);
        }
        let id_rules = rules.iter().enumerate().filter(|(_, r)| r.is_id).map(|(i, _)| i).collect();
        let json = serde_json::to_string(&raw).unwrap_or_default();
        let mut resolved_json = serde_json::json!({"name": name, "rule": resolved});
        if let Some(c) = obj.get("crdtConfig") {
            resolved_json["crdtConfig"] = c.clone();
        }
        let resolved = serde_json::to_string(&resolved_json).unwrap_or_default();
        let recipe = Recipe { name: name.clone(), rules, id_rules, json, resolved };
        self.recipes.push(Arc::new(recipe));
        self.by_name.insert(name, self.recipes.len() - 1);
        Ok(())
    }
}

/// A recipe error with one of the codes of docs/core-interface.md "Recipe errors" (the same
/// codes as the pure core: the situation decides the code, not the core).
fn bad(code: &str, name: &str, msg: impl std::fmt::Display) -> Error {
    Error::recipe(code, format!("Invalid recipe \"{name}\": {msg}"))
}

/// JavaScript `\s` (WhiteSpace and LineTerminator): the white space the recipe checks forbid.
pub(crate) fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}'
            | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
    )
}

/// Recipe names (objects.md §1.1): the type name is written raw into
/// `itemtype="//refin.io/NAME"` and read back up to the first `">`, so it must be non-empty and
/// free of `"`, `<`, `>` and white space (the same rule as the pure core; URC-ENAME1).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| matches!(c, '"' | '<' | '>') || is_js_space(c)) {
        return Err(Error::recipe(
            "URC-ENAME1",
            format!("Invalid recipe name {name:?} (non-empty, no '\"', '<', '>' or white space)"),
        ));
    }
    Ok(())
}

/// Validity checks of one rule list (§3): objects with a string itemprop, unique, no `<`, `>`,
/// `.` or white space.
fn check_rule_list(rules: &[J], name: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        let o = r.as_object().ok_or_else(|| bad("URC-ERULES1", name, format!("rule {r} is not an object")))?;
        let p = o
            .get("itemprop")
            .and_then(J::as_str)
            .ok_or_else(|| bad("URC-EITP1", name, format!("rule {r} has no string itemprop")))?;
        // objects.md §3: no `<`, `>`, `.` or white space; `"` would end the itemprop attribute
        if p.is_empty() || p.chars().any(|c| matches!(c, '<' | '>' | '.' | '"') || is_js_space(c)) {
            return Err(bad("URC-EITP1", name, format!("invalid itemprop {p:?}")));
        }
        if !seen.insert(p) {
            return Err(bad("URC-EITP2", name, format!("duplicate itemprop \"{p}\"")));
        }
        for (k, v) in o {
            match k.as_str() {
                "itemprop" | "itemtype" | "inheritFrom" => {}
                "optional" | "isId" => {
                    if !v.is_boolean() {
                        return Err(bad("URC-ERULES1", name, format!("\"{k}\" of rule \"{p}\" must be a boolean")));
                    }
                }
                _ => return Err(bad("URC-ERULES1", name, format!("unknown key \"{k}\" in rule \"{p}\""))),
            }
        }
    }
    Ok(())
}

/// Inheritance (objects.md §1.9 with its "Correction": the reference resolves one level and
/// never applies `MapItemType`). Every rule of the recipe's own tree with `inheritFrom` becomes
/// the *unresolved* target rule (as written in its recipe) overlaid with the rule's own fields;
/// the target's `inheritFrom` and `isId` are dropped and rules below the copied target lose
/// `inheritFrom` (plain strings unless they have an itemtype: the Questionnaire `item` below
/// the second level). `CollectionItemType` takes the target's `item`; `MapItemType` is checked
/// but not applied. The result has no `inheritFrom` left: compiled types form a finite tree.
/// Same algorithm as the pure core's `_Inheritance`.
struct Inheritance<'a> {
    reg: &'a Registry,
    name: &'a str,
    top: &'a [J],
}

impl Inheritance<'_> {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        bad("URC-EINH1", self.name, msg)
    }

    fn rules(&self, rules: &[J]) -> Result<Vec<J>> {
        rules.iter().map(|r| if r.is_object() { self.rule(r) } else { Ok(r.clone()) }).collect()
    }

    fn itemtype(&self, t: &J) -> Result<J> {
        let Some(o) = t.as_object() else { return Ok(t.clone()) };
        let mut out = o.clone();
        if let Some(J::Array(rules)) = o.get("rules") {
            out.insert("rules".into(), J::Array(self.rules(rules)?));
        }
        for k in ["item", "key", "value"] {
            if let Some(v) = o.get(k) {
                out.insert(k.into(), self.itemtype(v)?);
            }
        }
        Ok(J::Object(out))
    }

    fn rule(&self, raw: &J) -> Result<J> {
        let o = raw.as_object().expect("rule objects only");
        let mut own = o.clone();
        own.remove("inheritFrom");
        if let Some(t) = o.get("itemtype") {
            own.insert("itemtype".into(), self.itemtype(t)?);
        }
        let Some(inh) = o.get("inheritFrom") else { return Ok(J::Object(own)) };
        let (path, extract) = match inh {
            J::String(s) => (s.as_str(), None),
            J::Object(io) if io.get("rule").is_some_and(J::is_string) => {
                (io["rule"].as_str().unwrap_or_default(), io.get("extract"))
            }
            _ => return Err(self.fail(format!("invalid inheritFrom {inh}"))),
        };
        let (tname, tprop) =
            path.rsplit_once('.').ok_or_else(|| self.fail(format!("inheritFrom \"{path}\" is not \"Type.itemprop\"")))?;
        let parent: J;
        let candidates: &[J] = if tname == self.name {
            self.top
        } else {
            let r = self.reg.get(tname).ok_or_else(|| self.fail(format!("inheritFrom type \"{tname}\" not found")))?;
            parent = r.raw();
            parent.get("rule").and_then(J::as_array).map(Vec::as_slice).unwrap_or_default()
        };
        let target = candidates
            .iter()
            .filter_map(J::as_object)
            .find(|r| r.get("itemprop").and_then(J::as_str) == Some(tprop))
            .ok_or_else(|| self.fail(format!("inheritFrom target \"{path}\" not found")))?;
        let mut eff: serde_json::Map<String, J> =
            target.iter().filter(|(k, _)| *k != "inheritFrom" && *k != "isId").map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(t) = eff.get("itemtype") {
            let stripped = strip_inherit(t);
            eff.insert("itemtype".into(), stripped);
        }
        let kind = eff.get("itemtype").map_or(Some("string"), |t| t.get("type").and_then(J::as_str));
        match extract {
            None => {}
            Some(J::String(e)) if e == "CollectionItemType" => {
                let item = eff.get("itemtype").and_then(|t| t.get("item")).cloned();
                match (kind, item) {
                    (Some("array" | "bag" | "set"), Some(item)) => {
                        eff.insert("itemtype".into(), item);
                    }
                    _ => return Err(self.fail(format!("CollectionItemType of non-collection \"{path}\""))),
                }
            }
            // checked, never applied (objects.md §1.9 correction)
            Some(J::String(e)) if e == "MapItemType" && kind == Some("map") => {}
            Some(J::String(e)) if e == "MapItemType" => {
                return Err(self.fail(format!("MapItemType of non-map \"{path}\"")));
            }
            Some(other) => return Err(self.fail(format!("unknown extract {other}"))),
        }
        for (k, v) in own {
            eff.insert(k, v);
        }
        Ok(J::Object(eff))
    }
}

/// A copied target itemtype: rules below it keep their fields but lose `inheritFrom`.
fn strip_inherit(t: &J) -> J {
    let Some(o) = t.as_object() else { return t.clone() };
    let mut out = o.clone();
    if let Some(J::Array(rules)) = o.get("rules") {
        let rules = rules
            .iter()
            .map(|r| match r.as_object() {
                Some(ro) => {
                    let mut ro = ro.clone();
                    ro.remove("inheritFrom");
                    if let Some(it) = ro.get("itemtype").map(strip_inherit) {
                        ro.insert("itemtype".into(), it);
                    }
                    J::Object(ro)
                }
                None => r.clone(),
            })
            .collect();
        out.insert("rules".into(), J::Array(rules));
    }
    for k in ["item", "key", "value"] {
        if let Some(v) = o.get(k) {
            out.insert(k.into(), strip_inherit(v));
        }
    }
    J::Object(out)
}

/// The normalized form of resolved rules for `resolved_recipe` (docs/core-interface.md): every
/// rule has itemprop, itemtype (default string), optional and isId.
fn normalized_rules(rules: &[J]) -> J {
    J::Array(
        rules
            .iter()
            .map(|r| {
                let t = r.get("itemtype").cloned().unwrap_or_else(|| serde_json::json!({"type": "string"}));
                serde_json::json!({
                    "itemprop": r.get("itemprop").cloned().unwrap_or(J::Null),
                    "itemtype": normalized_type(&t),
                    "optional": r.get("optional").and_then(J::as_bool).unwrap_or(false),
                    "isId": r.get("isId").and_then(J::as_bool).unwrap_or(false),
                })
            })
            .collect(),
    )
}

fn normalized_type(t: &J) -> J {
    if t.get("type").and_then(J::as_str) == Some("object") {
        let rules = t.get("rules").and_then(J::as_array).map(Vec::as_slice).unwrap_or_default();
        return serde_json::json!({"type": "object", "rules": normalized_rules(rules)});
    }
    let mut out = t.as_object().cloned().unwrap_or_default();
    for k in ["item", "key", "value"] {
        if let Some(v) = t.get(k) {
            out.insert(k.into(), normalized_type(v));
        }
    }
    J::Object(out)
}

struct Compiler<'a> {
    reg: &'a mut Registry,
    name: &'a str,
}

impl Compiler<'_> {
    /// (type, optional) of a rule whose inheritance is already resolved.
    fn rule_type(&mut self, raw: &J) -> Result<(TyId, bool)> {
        let ty = match raw.get("itemtype") {
            Some(t) => self.compile_type(t)?,
            None => self.plain_str(),
        };
        Ok((ty, raw.get("optional").and_then(J::as_bool).unwrap_or(false)))
    }

    /// The registry's one plain `string` type.
    fn plain_str(&mut self) -> TyId {
        match self.reg.plain_str {
            Some(id) => id,
            None => {
                let id = self.reg.push(Ty::Str(None));
                self.reg.plain_str = Some(id);
                id
            }
        }
    }

    fn finish_rule(&mut self, raw: &J, ty: TyId, optional: bool, top: bool) -> Result<Rule> {
        let itemprop = raw.get("itemprop").and_then(J::as_str).unwrap_or_default().to_owned();
        let is_id = raw.get("isId").and_then(J::as_bool).unwrap_or(false);
        if is_id && !top {
            return Err(Error::recipe(
                "URC-ERECI2",
                format!("Invalid recipe \"{}\": isId is only allowed on top-level rules (\"{itemprop}\")", self.name),
            ));
        }
        if is_id && matches!(self.reg.ty(ty), Ty::Object(_)) {
            return Err(bad("URC-ERECI1", self.name, format!("rule \"{itemprop}\" with nested rules cannot be isId")));
        }
        let rule_json = super::json_star_of_json(raw);
        Ok(Rule { itemprop, ty, optional, is_id, rule_json })
    }

    fn compile_type(&mut self, t: &J) -> Result<TyId> {
        let o = t.as_object().ok_or_else(|| bad("URC-ETYPE1", self.name, format!("itemtype {t} is not an object")))?;
        let tname = o
            .get("type")
            .and_then(J::as_str)
            .ok_or_else(|| bad("URC-ETYPE1", self.name, format!("itemtype {t} has no type")))?;
        let allowed: &[&str] = match tname {
            "string" => &["type", "regexp"],
            "integer" | "number" => &["type", "min", "max"],
            "boolean" | "stringifiable" | "referenceToClob" | "referenceToBlob" => &["type"],
            "referenceToObj" | "referenceToId" => &["type", "allowedTypes"],
            "array" | "bag" | "set" => &["type", "item"],
            "map" => &["type", "key", "value"],
            "object" => &["type", "rules"],
            other => return Err(bad("URC-ETYPE1", self.name, format!("unknown value type \"{other}\""))),
        };
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad("URC-ETYPE1", self.name, format!("unexpected key \"{k}\" in itemtype {t}")));
        }
        let ty = match tname {
            "string" => match o.get("regexp") {
                None => return Ok(self.plain_str()),
                Some(re) => Ty::Str(Some(self.regexp(re)?)),
            },
            "integer" => Ty::Integer,
            "number" => Ty::Number,
            "boolean" => Ty::Boolean,
            "stringifiable" => Ty::Stringifiable,
            "referenceToObj" | "referenceToId" => {
                if let Some(a) = o.get("allowedTypes") {
                    let ok = a
                        .get("$set")
                        .and_then(J::as_array)
                        .is_some_and(|v| v.iter().all(J::is_string));
                    if !ok {
                        return Err(bad("URC-ETYPE1", self.name, format!("allowedTypes must be {{\"$set\": [string, ...]}}, got {a}")));
                    }
                }
                Ty::Ref(if tname == "referenceToObj" { RefKind::Obj } else { RefKind::Id })
            }
            "referenceToClob" => Ty::Ref(RefKind::Clob),
            "referenceToBlob" => Ty::Ref(RefKind::Blob),
            "array" | "bag" | "set" => {
                let item = o.get("item").ok_or_else(|| bad("URC-ETYPE1", self.name, format!("{tname} without item")))?;
                let i = self.compile_type(item)?;
                match tname {
                    "array" => Ty::Array(i),
                    "bag" => Ty::Bag(i),
                    _ => Ty::Set(i),
                }
            }
            "map" => {
                let k = o.get("key").ok_or_else(|| bad("URC-ETYPE1", self.name, "map without key"))?;
                let v = o.get("value").ok_or_else(|| bad("URC-ETYPE1", self.name, "map without value"))?;
                let k = self.compile_type(k)?;
                match self.reg.ty(k) {
                    Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Ref(_) => {}
                    other => {
                        return Err(bad("URC-EMAPK1", self.name, format!("map keys must be primitive or reference types, not {}", other.name())))
                    }
                }
                let v = self.compile_type(v)?;
                Ty::Map(k, v)
            }
            _ => {
                let raw = o
                    .get("rules")
                    .and_then(J::as_array)
                    .ok_or_else(|| bad("URC-ERULES1", self.name, "object itemtype without rules"))?;
                check_rule_list(raw, self.name)?;
                let mut rules = Vec::with_capacity(raw.len());
                for r in raw {
                    let (ty, optional) = self.rule_type(r)?;
                    rules.push(self.finish_rule(r, ty, optional, false)?);
                }
                Ty::Object(rules)
            }
        };
        Ok(self.reg.push(ty))
    }

    fn regexp(&mut self, re: &J) -> Result<Arc<(JsRegex, String)>> {
        // the JSON form is {"$regexp": src, "flags": f}; a bare string is a flag-less source
        let src = re
            .as_str()
            .or_else(|| re.get("$regexp").and_then(J::as_str))
            .ok_or_else(|| Error::recipe("URC-EREGEX1", format!("Invalid recipe \"{}\": regexp must be {{\"$regexp\": src, \"flags\": f}}, got {re}", self.name)))?;
        let flags = match re.get("flags").filter(|_| re.is_object()) {
            None | Some(J::Null) => "",
            Some(J::String(f)) => f.as_str(),
            Some(other) => {
                return Err(Error::recipe("URC-EREGEX1", format!("Invalid recipe \"{}\": invalid regexp flags {other}", self.name)))
            }
        };
        let key = (src.to_owned(), flags.to_owned());
        if let Some(p) = self.reg.patterns.get(&key) {
            return Ok(Arc::clone(p));
        }
        // objects.md §1.3: a JavaScript RegExp, compiled with ECMAScript semantics (jsregex)
        let compiled = JsRegex::new(src, flags).map_err(|e| {
            Error::recipe("URC-EREGEX1", format!("Invalid recipe \"{}\": invalid regexp /{src}/{flags}: {e}", self.name))
        })?;
        let p = Arc::new((compiled, src.to_owned()));
        self.reg.patterns.insert(key, Arc::clone(&p));
        Ok(p)
    }
}

/// The built-in recipes (one.core + one.models), embedded at build time.
const BUILTIN: &str = include_str!("../../../../python/lama/data/builtin_recipes.json");

fn global() -> &'static RwLock<Arc<Registry>> {
    static REG: OnceLock<RwLock<Arc<Registry>>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut reg = Registry::default();
        // one entry parsed at a time (issue 10, RSS at start: the whole list parsed first,
        // then each recipe cloned out of it, left ~1 MiB of freed pages resident)
        let mut de = serde_json::Deserializer::from_str(BUILTIN);
        serde::Deserializer::deserialize_seq(&mut de, EachEntry(|entry: J| {
            let recipe = match entry {
                J::Object(mut m) => m.remove("recipe"),
                _ => None,
            };
            if let Err(e) = reg.add(recipe.expect("builtin entry has a recipe")) {
                panic!("built-in recipe does not compile: {e}");
            }
        }))
        .expect("builtin_recipes.json is a valid JSON list");
        RwLock::new(Arc::new(reg))
    })
}

/// Calls the closure with each element of a JSON list as it is parsed.
struct EachEntry<F>(F);

impl<'de, F: FnMut(J)> serde::de::Visitor<'de> for EachEntry<F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(entry) = seq.next_element::<J>()? {
            (self.0)(entry);
        }
        Ok(())
    }
}

/// A snapshot of the registry (cheap: one `Arc` clone).
pub(crate) fn snapshot() -> Arc<Registry> {
    let lock = global().read().unwrap_or_else(|p| p.into_inner());
    Arc::clone(&lock)
}

/// Register a recipe given as JSON text.
pub(crate) fn register_json(json: &str) -> Result<()> {
    let raw: J = serde_json::from_str(json)
        .map_err(|e| Error::recipe("URC-ERECIPE1", format!("Recipe is not valid JSON: {e}")))?;
    let mut lock = global().write().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = raw.get("name").and_then(J::as_str) {
        if let Some(existing) = lock.get(name) {
            if existing.raw() == raw {
                return Ok(());
            }
        }
    }
    let mut next = (**lock).clone();
    next.add(raw)?;
    *lock = Arc::new(next);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(reg: &Registry) -> Vec<&Arc<(JsRegex, String)>> {
        reg.types.iter().filter_map(|t| if let Ty::Str(Some(p)) = t { Some(p) } else { None }).collect()
    }

    /// Issue 10 (RSS at start): a pattern is compiled once per registry and shared by every
    /// type that uses it (the builtin recipes: 29 distinct patterns in 340 places), rules
    /// without itemtype share one plain string type, and both still check what they did.
    #[test]
    fn patterns_and_plain_strings_are_shared() {
        let reg = snapshot();
        let all = patterns(&reg);
        let mut distinct: Vec<*const (JsRegex, String)> = all.iter().map(|p| Arc::as_ptr(p)).collect();
        distinct.sort();
        distinct.dedup();
        assert!(all.len() > 100 && distinct.len() < 40, "{} patterns, {} distinct", all.len(), distinct.len());
        assert_eq!(distinct.len(), reg.patterns.len());
        assert_eq!(reg.types.iter().filter(|t| matches!(t, Ty::Str(None))).count(), 1);

        let mut mine = (*reg).clone();
        let raw = |name: &str| {
            serde_json::json!({"$type$": "Recipe", "name": name, "rule": [
                {"itemprop": "a", "itemtype": {"type": "string", "regexp": {"$regexp": "^x+$"}}},
                {"itemprop": "b", "itemtype": {"type": "string", "regexp": {"$regexp": "^x+$", "flags": "i"}}},
                {"itemprop": "c"}]})
        };
        mine.add(raw("LamaTestShared1")).unwrap();
        mine.add(raw("LamaTestShared2")).unwrap();
        let rules = |n: &str| mine.get(n).unwrap().rules.clone();
        let (r1, r2) = (rules("LamaTestShared1"), rules("LamaTestShared2"));
        let pat = |ty: TyId| match mine.ty(ty) {
            Ty::Str(Some(p)) => Arc::clone(p),
            other => panic!("{}", other.name()),
        };
        assert!(Arc::ptr_eq(&pat(r1[0].ty), &pat(r2[0].ty)));
        assert!(!Arc::ptr_eq(&pat(r1[0].ty), &pat(r1[1].ty)), "other flags, another regexp");
        assert_eq!(r1[2].ty, r2[2].ty);
        assert!(pat(r1[0].ty).0.is_match("xx").unwrap() && !pat(r1[0].ty).0.is_match("X").unwrap());
        assert!(pat(r1[1].ty).0.is_match("X").unwrap());
        // a bad pattern is still refused, and leaves no entry behind in a failed registry
        let bad = serde_json::json!({"$type$": "Recipe", "name": "LamaTestBad", "rule": [
            {"itemprop": "a", "itemtype": {"type": "string", "regexp": {"$regexp": "("}}}]});
        let e = mine.clone().add(bad).unwrap_err();
        assert!(e.to_string().contains("URC-EREGEX1"), "{e}");
    }
}
