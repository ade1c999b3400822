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

use regex::Regex;
use serde_json::Value as J;

use super::RefKind;
use crate::{Error, Result};

/// Index of a value type in [`Registry::types`].
pub(crate) type TyId = u32;

/// A resolved value type (objects.md §1.3).
#[derive(Clone, Debug)]
pub(crate) enum Ty {
    /// `string`, with an optional regexp (compiled, plus its source for messages).
    Str(Option<(Regex, String)>),
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
    /// Only during compilation (target of a recursive inheritance being compiled).
    Pending,
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
            Ty::Pending => "pending",
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
    pub raw: J,
}

impl Recipe {
    pub(crate) fn versioned(&self) -> bool {
        !self.id_rules.is_empty()
    }
}

/// All registered recipes plus the type arena.
#[derive(Clone, Debug, Default)]
pub(crate) struct Registry {
    pub types: Vec<Ty>,
    pub recipes: Vec<Arc<Recipe>>,
    pub by_name: HashMap<String, usize>,
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
            .ok_or_else(|| Error::recipe("OR-ADDR2", "A recipe must be a JSON object"))?;
        if let Some(t) = obj.get("$type$") {
            if t.as_str() != Some("Recipe") {
                return Err(Error::recipe("OR-ADDR2", format!("Recipe $type$ must be \"Recipe\", got {t}")));
            }
        }
        let name = obj
            .get("name")
            .and_then(J::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| Error::recipe("OR-ADDR2", "A recipe needs a non-empty string \"name\""))?
            .to_owned();
        if name.contains("\">") || name.contains('<') || name.chars().any(char::is_whitespace) {
            return Err(Error::recipe("OR-ADDR2", format!("Invalid recipe name {name:?}")));
        }
        if let Some(existing) = self.get(&name) {
            if existing.raw == raw {
                return Ok(());
            }
            return Err(Error::recipe(
                "OR-ADDR1",
                format!("A different recipe for type \"{name}\" is already registered"),
            ));
        }
        for k in obj.keys() {
            if !matches!(k.as_str(), "$type$" | "name" | "rule" | "crdtConfig") {
                return Err(Error::recipe("OR-ADDR2", format!("Unknown recipe key \"{k}\" in recipe \"{name}\"")));
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
                    "OR-ADDR2",
                    format!("crdtConfig of recipe \"{name}\" must be {{\"$map\": [[string, string], ...]}}"),
                ));
            }
        }
        let raw_rules = obj
            .get("rule")
            .and_then(J::as_array)
            .ok_or_else(|| Error::recipe("OR-ADDR2", format!("Recipe \"{name}\" needs a \"rule\" array")))?
            .clone();
        let mut c = Compiler { reg: self, name: &name, raw_rules: &raw_rules, memo: HashMap::new() };
        check_rule_list(&raw_rules, &name)?;
        if let Some(r) = raw_rules.iter().find(|r| matches!(r["itemprop"].as_str(), Some("$type$" | "$versionHash$"))) {
            return Err(bad(&name, format!("reserved itemprop {}", r["itemprop"])));
        }
        let mut rules = Vec::with_capacity(raw_rules.len());
        for r in &raw_rules {
            let prop = r.get("itemprop").and_then(J::as_str).unwrap_or_default();
            let (ty, inherited_optional) = c.top_rule(prop)?;
            rules.push(c.finish_rule(r, ty, inherited_optional, true)?);
        }
        let id_rules = rules.iter().enumerate().filter(|(_, r)| r.is_id).map(|(i, _)| i).collect();
        let json = serde_json::to_string(&raw).unwrap_or_default();
        let recipe = Recipe { name: name.clone(), rules, id_rules, json, raw };
        self.recipes.push(Arc::new(recipe));
        self.by_name.insert(name, self.recipes.len() - 1);
        Ok(())
    }
}

fn bad(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::recipe("URC-ERECI1", format!("Invalid recipe \"{name}\": {msg}"))
}

/// Validity checks of one rule list (§3): objects with a string itemprop, unique, no `<`, `>`,
/// `.` or white space.
fn check_rule_list(rules: &[J], name: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        let o = r.as_object().ok_or_else(|| bad(name, format!("rule {r} is not an object")))?;
        let p = o
            .get("itemprop")
            .and_then(J::as_str)
            .ok_or_else(|| bad(name, format!("rule {r} has no string itemprop")))?;
        if p.is_empty() || p.chars().any(|c| c == '<' || c == '>' || c == '.' || c == '"' || c.is_whitespace()) {
            return Err(bad(name, format!("invalid itemprop {p:?}")));
        }
        if !seen.insert(p) {
            return Err(bad(name, format!("duplicate itemprop \"{p}\"")));
        }
        for (k, v) in o {
            match k.as_str() {
                "itemprop" | "itemtype" | "inheritFrom" => {}
                "optional" | "isId" => {
                    if !v.is_boolean() {
                        return Err(bad(name, format!("\"{k}\" of rule \"{p}\" must be a boolean")));
                    }
                }
                _ => return Err(bad(name, format!("unknown key \"{k}\" in rule \"{p}\""))),
            }
        }
    }
    Ok(())
}

struct Compiler<'a> {
    reg: &'a mut Registry,
    name: &'a str,
    raw_rules: &'a [J],
    /// Top-level rules of the recipe being compiled: itemprop -> (type, optional).
    memo: HashMap<String, (TyId, bool)>,
}

impl Compiler<'_> {
    /// Resolved type and optional flag of a top-level rule of the recipe being compiled.
    fn top_rule(&mut self, prop: &str) -> Result<(TyId, bool)> {
        if let Some(&r) = self.memo.get(prop) {
            return Ok(r);
        }
        let raw = self
            .raw_rules
            .iter()
            .find(|r| r.get("itemprop").and_then(J::as_str) == Some(prop))
            .ok_or_else(|| bad(self.name, format!("inheritFrom target \"{}.{prop}\" not found", self.name)))?
            .clone();
        let slot = self.reg.push(Ty::Pending);
        let own_optional = raw.get("optional").and_then(J::as_bool);
        self.memo.insert(prop.to_owned(), (slot, own_optional.unwrap_or(false)));
        let (ty, optional) = self.rule_type(&raw)?;
        let resolved = self.reg.types[ty as usize].clone();
        if matches!(resolved, Ty::Pending) {
            return Err(bad(self.name, format!("rule \"{prop}\" inherits from itself")));
        }
        self.reg.types[slot as usize] = resolved;
        self.memo.insert(prop.to_owned(), (slot, optional));
        Ok((slot, optional))
    }

    /// Effective (type, optional) of a raw rule, inheritance applied (§1.9).
    fn rule_type(&mut self, raw: &J) -> Result<(TyId, bool)> {
        let own_optional = raw.get("optional").and_then(J::as_bool);
        let inherited = match raw.get("inheritFrom") {
            None => None,
            Some(inh) => Some(self.inherit(inh)?),
        };
        let ty = match raw.get("itemtype") {
            Some(t) => self.compile_type(t)?,
            None => match inherited {
                Some((t, _)) => t,
                None => self.reg.push(Ty::Str(None)),
            },
        };
        let optional = own_optional.unwrap_or(inherited.map(|(_, o)| o).unwrap_or(false));
        Ok((ty, optional))
    }

    /// Resolve an `inheritFrom` value to (type, optional).
    fn inherit(&mut self, inh: &J) -> Result<(TyId, bool)> {
        let (target, extract) = match inh {
            J::String(s) => (s.as_str(), None),
            J::Object(o) => (
                o.get("rule").and_then(J::as_str).ok_or_else(|| bad(self.name, format!("bad inheritFrom {inh}")))?,
                match o.get("extract") {
                    None => None,
                    Some(J::String(e)) => Some(e.as_str()),
                    Some(other) => return Err(bad(self.name, format!("bad extract {other}"))),
                },
            ),
            _ => return Err(bad(self.name, format!("bad inheritFrom {inh}"))),
        };
        let (tname, prop) = target
            .rsplit_once('.')
            .ok_or_else(|| bad(self.name, format!("inheritFrom \"{target}\" is not \"Type.itemprop\"")))?;
        let (ty, optional) = if tname == self.name {
            self.top_rule(prop)?
        } else {
            let r = self.reg.get(tname).ok_or_else(|| {
                Error::recipe("OR-ET1", format!("inheritFrom of recipe \"{}\": type \"{tname}\" not found", self.name))
            })?;
            let rule = r.rules.iter().find(|r| r.itemprop == prop).ok_or_else(|| {
                bad(self.name, format!("inheritFrom target \"{target}\" not found"))
            })?;
            (rule.ty, rule.optional)
        };
        let ty = match extract {
            None => ty,
            Some("CollectionItemType") => match self.reg.ty(ty) {
                Ty::Array(i) | Ty::Bag(i) | Ty::Set(i) => *i,
                _ => return Err(bad(self.name, format!("CollectionItemType of non-collection \"{target}\""))),
            },
            Some("MapItemType") => match self.reg.ty(ty) {
                Ty::Map(k, v) => {
                    let (k, v) = (*k, *v);
                    let rules = vec![
                        Rule { itemprop: "key".into(), ty: k, optional: false, is_id: false, rule_json: "{\"itemprop\":\"key\"}".into() },
                        Rule { itemprop: "value".into(), ty: v, optional: false, is_id: false, rule_json: "{\"itemprop\":\"value\"}".into() },
                    ];
                    self.reg.push(Ty::Object(rules))
                }
                _ => return Err(bad(self.name, format!("MapItemType of non-map \"{target}\""))),
            },
            Some(other) => return Err(bad(self.name, format!("unknown extract \"{other}\""))),
        };
        Ok((ty, optional))
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
            return Err(bad(self.name, format!("rule \"{itemprop}\" with nested rules cannot be isId")));
        }
        let rule_json = super::json_star_of_json(raw);
        Ok(Rule { itemprop, ty, optional, is_id, rule_json })
    }

    fn compile_type(&mut self, t: &J) -> Result<TyId> {
        let o = t.as_object().ok_or_else(|| bad(self.name, format!("itemtype {t} is not an object")))?;
        let tname = o
            .get("type")
            .and_then(J::as_str)
            .ok_or_else(|| bad(self.name, format!("itemtype {t} has no type")))?;
        let allowed: &[&str] = match tname {
            "string" => &["type", "regexp"],
            "integer" | "number" => &["type", "min", "max"],
            "boolean" | "stringifiable" | "referenceToClob" | "referenceToBlob" => &["type"],
            "referenceToObj" | "referenceToId" => &["type", "allowedTypes"],
            "array" | "bag" | "set" => &["type", "item"],
            "map" => &["type", "key", "value"],
            "object" => &["type", "rules"],
            other => return Err(bad(self.name, format!("unknown value type \"{other}\""))),
        };
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(self.name, format!("unexpected key \"{k}\" in itemtype {t}")));
        }
        let ty = match tname {
            "string" => match o.get("regexp") {
                None => Ty::Str(None),
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
                        return Err(bad(self.name, format!("allowedTypes must be {{\"$set\": [string, ...]}}, got {a}")));
                    }
                }
                Ty::Ref(if tname == "referenceToObj" { RefKind::Obj } else { RefKind::Id })
            }
            "referenceToClob" => Ty::Ref(RefKind::Clob),
            "referenceToBlob" => Ty::Ref(RefKind::Blob),
            "array" | "bag" | "set" => {
                let item = o.get("item").ok_or_else(|| bad(self.name, format!("{tname} without item")))?;
                let i = self.compile_type(item)?;
                match tname {
                    "array" => Ty::Array(i),
                    "bag" => Ty::Bag(i),
                    _ => Ty::Set(i),
                }
            }
            "map" => {
                let k = o.get("key").ok_or_else(|| bad(self.name, "map without key"))?;
                let v = o.get("value").ok_or_else(|| bad(self.name, "map without value"))?;
                let k = self.compile_type(k)?;
                match self.reg.ty(k) {
                    Ty::Str(_) | Ty::Integer | Ty::Number | Ty::Boolean | Ty::Ref(_) => {}
                    other => {
                        return Err(bad(self.name, format!("map keys must be primitive or reference types, not {}", other.name())))
                    }
                }
                let v = self.compile_type(v)?;
                Ty::Map(k, v)
            }
            _ => {
                let raw = o
                    .get("rules")
                    .and_then(J::as_array)
                    .ok_or_else(|| bad(self.name, "object itemtype without rules"))?;
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

    fn regexp(&self, re: &J) -> Result<(Regex, String)> {
        let src = re
            .get("$regexp")
            .and_then(J::as_str)
            .ok_or_else(|| bad(self.name, format!("regexp must be {{\"$regexp\": src, \"flags\": f}}, got {re}")))?;
        let flags = re.get("flags").and_then(J::as_str).unwrap_or("");
        let mut prefix = String::new();
        for f in flags.chars() {
            match f {
                'i' | 'm' | 's' => prefix.push(f),
                'g' | 'y' | 'u' | 'd' | 'v' => {}
                other => return Err(bad(self.name, format!("unknown regexp flag '{other}'"))),
            }
        }
        let pattern = if prefix.is_empty() { src.to_owned() } else { format!("(?{prefix}){src}") };
        let compiled = Regex::new(&pattern)
            .map_err(|e| bad(self.name, format!("regexp /{src}/ does not compile: {e}")))?;
        Ok((compiled, src.to_owned()))
    }
}

/// The built-in recipes (one.core + one.models), embedded at build time.
const BUILTIN: &str = include_str!("../../../../python/lama/data/builtin_recipes.json");

fn global() -> &'static RwLock<Arc<Registry>> {
    static REG: OnceLock<RwLock<Arc<Registry>>> = OnceLock::new();
    REG.get_or_init(|| {
        let mut reg = Registry::default();
        let list: Vec<J> = serde_json::from_str(BUILTIN).expect("builtin_recipes.json is valid JSON");
        for entry in list {
            let recipe = entry.get("recipe").cloned().expect("builtin entry has a recipe");
            if let Err(e) = reg.add(recipe) {
                panic!("built-in recipe does not compile: {e}");
            }
        }
        RwLock::new(Arc::new(reg))
    })
}

/// A snapshot of the registry (cheap: one `Arc` clone).
pub(crate) fn snapshot() -> Arc<Registry> {
    let lock = global().read().unwrap_or_else(|p| p.into_inner());
    Arc::clone(&lock)
}

/// Register a recipe given as JSON text.
pub(crate) fn register_json(json: &str) -> Result<()> {
    let raw: J = serde_json::from_str(json)
        .map_err(|e| Error::recipe("OR-ADDR2", format!("Recipe is not valid JSON: {e}")))?;
    let mut lock = global().write().unwrap_or_else(|p| p.into_inner());
    if let Some(name) = raw.get("name").and_then(J::as_str) {
        if let Some(existing) = lock.get(name) {
            if existing.raw == raw {
                return Ok(());
            }
        }
    }
    let mut next = (**lock).clone();
    next.add(raw)?;
    *lock = Arc::new(next);
    Ok(())
}
