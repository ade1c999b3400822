//! ONE microdata: recipes, serialization, parsing, hashes (objects.md §1-§3, §6.4).
//!
//! - [`register_recipe_json`], [`recipe_names`], [`recipe_json`], [`is_versioned`]: the
//!   process-global recipe registry (§3), pre-loaded with the built-in recipes.
//! - [`serialize`], [`serialize_with_id`], [`id_microdata`]: object -> microdata (§1, §2.2).
//! - [`parse`], [`id_microdata_of`], [`type_of`], [`references`]: microdata -> object (§1.11),
//!   ID microdata from concrete microdata (§2.2), header type detection (§1.1), the references
//!   of an object (§6.4).
//!
//! Values are Python-shaped [`Value`]s; see docs/core-interface.md for the mapping.

mod json;
mod jsregex;
mod number;
mod parse;
mod recipe;
mod serialize;
mod text;
mod value;

pub use text::{encode_str, from_generalized_utf8, has_encoded, js_utf8, to_generalized_utf8};
pub use value::Value;

/// Deepest container nesting (`<ol>`/`<ul>`/`<dl>`/`<div>` inside one another) of an object.
/// The serializer refuses to write more (`O2M-RTYC1`) and the parser to read more (`M2O-PD1`),
/// so whatever one core writes both cores read; the pure core has the same limits
/// (python/lama/_pure/jsonstar.py). It also bounds the native stack on adversarial input.
pub const MAX_DEPTH: usize = 200;

/// Deepest nesting of JSON arrays/objects in one `stringifiable` value: more is `USS-STR1` on
/// write (the reference's code for a circular structure) and `M2O-PV2` on read.
pub const MAX_JSON_DEPTH: usize = 100;

use crate::Result;
use serialize::Mode;

/// The kind of a reference (`data-type` of an `<a>` tag, §1.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefKind {
    Obj,
    Id,
    Clob,
    Blob,
}

impl RefKind {
    /// `"obj"`, `"id"`, `"clob"` or `"blob"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefKind::Obj => "obj",
            RefKind::Id => "id",
            RefKind::Clob => "clob",
            RefKind::Blob => "blob",
        }
    }
}

/// One reference found in an object (§6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// Itemprops / list indexes / map `key`|`value` markers joined by `.`, e.g. `person.0`,
    /// `head`, `mapset.0.key`.
    pub path: String,
    pub kind: RefKind,
    pub hash: String,
}

/// A reference as [`inspect`] gives it: the hash as its 32 bytes (no hex string to decode
/// again, issue 8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashRef {
    /// As [`Reference::path`].
    pub path: String,
    pub kind: RefKind,
    pub hash: [u8; 32],
}

/// Register a recipe (JSON form of tests/vectors/recipes.json "recipe"). `OR-ADDR1` if a
/// different recipe of that name exists; registering an identical recipe is a no-op.
pub fn register_recipe_json(json: &str) -> Result<()> {
    recipe::register_json(json)
}

/// Names of all registered recipes: built-ins first, then in registration order.
pub fn recipe_names() -> Vec<String> {
    recipe::snapshot().recipes.iter().map(|r| r.name.clone()).collect()
}

/// The JSON of a registered recipe (`OR-GR1` if unknown).
pub fn recipe_json(name: &str) -> Result<String> {
    Ok(recipe::snapshot().recipe(name)?.json.clone())
}

/// The recipe with inheritance applied (§1.9), as JSON text: `{"name", "rule": [{"itemprop",
/// "itemtype", "optional", "isId"}, ...], "crdtConfig"?}`, every rule normalized (nested ones
/// too; itemtype in the recipe JSON form, default `{"type":"string"}`). `OR-GR1` if unknown.
pub fn resolved_recipe(name: &str) -> Result<String> {
    Ok(recipe::snapshot().recipe(name)?.resolved.clone())
}

/// True if the type has a top-level `isId` rule (§2.2); `OR-GR1` if unknown.
pub fn is_versioned(type_name: &str) -> Result<bool> {
    Ok(recipe::snapshot().recipe(type_name)?.versioned())
}

/// The microdata of `obj` (a dict with `$type$`).
pub fn serialize(obj: &Value) -> Result<String> {
    Ok(serialize::serialize(&recipe::snapshot(), obj, Mode::Object)?.0)
}

/// The microdata of `obj` and, for a versioned type, its ID microdata (one pass).
pub fn serialize_with_id(obj: &Value) -> Result<(String, Option<String>)> {
    serialize::serialize(&recipe::snapshot(), obj, Mode::Both)
}

/// The ID microdata of `obj` (§2.2); `O2M-COBJ1` if its type is unversioned.
pub fn id_microdata(obj: &Value) -> Result<String> {
    let (_, id) = serialize::serialize(&recipe::snapshot(), obj, Mode::IdOnly)?;
    Ok(id.unwrap_or_default())
}

/// Parse microdata (an object or an ID object) into a dict (§1.11).
pub fn parse(text: &str) -> Result<Value> {
    Ok(parse::parse(&recipe::snapshot(), text, false)?.value)
}

/// ID microdata computed from a concrete object's microdata (§2.2); `None` for unversioned
/// types (from the header alone: this does not validate their body). A versioned type's text
/// is fully parsed (validated) first.
pub fn id_microdata_of(microdata: &str) -> Result<Option<String>> {
    parse::id_microdata_of(&recipe::snapshot(), microdata)
}

/// (type name, is ID object) from the header; `M2O-PH1` if the text is not ONE microdata.
pub fn type_of(text: &str) -> Result<(String, bool)> {
    let (t, is_id, _) = parse::header(text)?;
    Ok((t.to_owned(), is_id))
}

/// What [`inspect`] finds in received microdata with one parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub type_name: String,
    pub is_id: bool,
    /// Every reference, in microdata order (§6.4).
    pub refs: Vec<HashRef>,
    /// A versioned object's ID microdata (§2.2); `None` for ID objects and unversioned types.
    pub id_microdata: Option<String>,
}

/// Type, ID-ness, references and ID microdata of received microdata from one strict parse
/// (the importer's check, chum.md §6.4, and what `Store::put_verified` needs): the same errors
/// as [`parse`], but no value is built (the check alone), and references come as 32 bytes.
pub fn inspect(microdata: &str) -> Result<Inspected> {
    parse::inspect(&recipe::snapshot(), microdata)
}

/// Every reference of the object in `microdata` (§6.4), in microdata order.
pub fn references(microdata: &str) -> Result<Vec<Reference>> {
    Ok(parse::parse(&recipe::snapshot(), microdata, true)?.refs)
}

/// `(kind, hash)` of every reference of the object in `microdata`, in microdata order: the
/// strict parse of [`references`] (the same checks and errors) without building the value, the
/// hashes as 32 bytes. The store's closure walks take this (issue 8: an exporter serving a
/// first sync parsed every object of the closure into a value only to read its references).
pub fn reference_hashes(microdata: &str) -> Result<Vec<(RefKind, [u8; 32])>> {
    Ok(parse::check(&recipe::snapshot(), microdata)?.keyed.into_iter().map(|r| (r.kind, r.hash)).collect())
}

/// JSON* (§1.6) of a serde_json value, for messages about recipe rules.
pub(crate) fn json_star_of_json(v: &serde_json::Value) -> String {
    let mut s = String::new();
    let _ = json::write_json_star(&mut s, &json::from_serde(v.clone()), "");
    s
}
