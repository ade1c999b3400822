//! Python bindings of the microdata layer (docs/core-interface.md "Functions"; objects.md §1-§3).
//!
//! Python values <-> [`Value`] conversion follows the mapping table of
//! docs/core-interface.md: `bool` is never an `int`, a Python `int` beyond i64 becomes the
//! nearest double, sets come back as `set` (nested ones as `frozenset`). The conversion
//! helpers are `pub(crate)` so the store bindings reuse them.
use lama_core::hash::{hash_hex_bytes, hex_str, sha256, sha256_hex as core_sha256_hex};
use lama_core::microdata::{self, Value};
use lama_core::Error;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple,
};

use crate::errors::{to_py, IntoPyResult};

/// Python nesting converted (a stack guard). The serializer's limits (microdata::MAX_DEPTH
/// containers, MAX_JSON_DEPTH JSON levels, the same in the pure core) are what reject deep
/// values, at the point where they are read; anything deeper than this converts to
/// [`Value::Unsupported`], which is only seen where nothing reads it.
const CONVERT_DEPTH: usize = microdata::MAX_DEPTH + microdata::MAX_JSON_DEPTH + 16;

/// After this many cut-off values the conversion gives up (a self-referencing or widely shared
/// deep structure would otherwise be walked along every path).
const MAX_CUTOFFS: usize = 64;

fn conv_err(msg: String) -> PyErr {
    to_py(Error::microdata("O2M-RTYC1", msg))
}

/// A Python `str` in the core's string encoding (lone surrogates kept, lama_core
/// microdata/text.rs).
pub(crate) fn py_str(s: &Bound<'_, PyString>) -> PyResult<String> {
    py_str_flagged(s, &mut false)
}

/// [`py_str`], setting `encoded` if the result holds encoded characters (only then can text
/// built from it need decoding on the way out).
pub(crate) fn py_str_flagged(s: &Bound<'_, PyString>, encoded: &mut bool) -> PyResult<String> {
    match s.to_str() {
        // (a test and a plain copy: matching on encode_str's Cow made the compiler move the
        // String through misaligned stack slots, a store-forwarding stall on every string)
        Ok(t) if !microdata::has_encoded(t) => Ok(t.to_owned()),
        Ok(t) => {
            *encoded = true;
            Ok(microdata::encode_str(t).into_owned())
        }
        Err(_) => {
            *encoded = true;
            let b = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(microdata::from_generalized_utf8(b.cast::<PyBytes>()?.as_bytes()))
        }
    }
}

/// A core string back to a Python `str` (lone surrogates restored).
pub(crate) fn str_to_py<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyString>> {
    match microdata::to_generalized_utf8(s) {
        None => Ok(PyString::new(py, s)),
        Some(b) => PyString::from_encoded_object(&PyBytes::new(py, &b), Some(c"utf-8"), Some(c"surrogatepass")),
    }
}

/// A microdata text argument: `MicrodataError M2O-PH1` if it is not a `str` (as the pure core).
fn text_arg(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => py_str(s),
        Err(_) => {
            let tname = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
            Err(to_py(Error::microdata("M2O-PH1", format!("Microdata must be a str, got {tname}"))))
        }
    }
}

/// Convert a Python value to a core [`Value`]. A value with no ONE form becomes
/// [`Value::Unsupported`], rejected by the serializer where a rule reads it (as the pure core
/// does), so errors come in the same order in both cores.
pub(crate) fn py_to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    Ok(py_to_value_flagged(obj)?.0)
}

/// [`py_to_value`], and whether any string of the value holds encoded characters (a lone
/// surrogate, or a character the encoding escapes). When none does, nothing serialized from
/// the value does either: its microdata is its own UTF-8 for hashing and for Python, and the
/// two decoding scans can be skipped (the batch hot path).
fn py_to_value_flagged(obj: &Bound<'_, PyAny>) -> PyResult<(Value, bool)> {
    let mut conv = Conv { cutoffs: 0, encoded: false };
    let v = to_value(obj, 0, &mut conv)?;
    Ok((v, conv.encoded))
}

/// The string case of [`to_value`]: the common string (valid Unicode, nothing the encoding
/// changes) is its UTF-8 copied straight into the `Value` being returned. Inlined, with the
/// rest out of line, because a `String` returned from a called function and then wrapped
/// twice (`Value::Str`, `Ok`) was copied through misaligned stack slots, a store-forwarding
/// stall on every string that cost `serialize_many` several percent (perf, 2026-11-30).
#[inline(always)]
fn str_value(s: &Bound<'_, PyString>, conv: &mut Conv) -> PyResult<Value> {
    if let Ok(t) = s.to_str() {
        if !microdata::has_encoded(t) {
            return Ok(Value::Str(t.to_owned()));
        }
    }
    encoded_str_value(s, conv)
}

/// [`str_value`] for a string with a lone surrogate or a character the encoding escapes.
#[inline(never)]
fn encoded_str_value(s: &Bound<'_, PyString>, conv: &mut Conv) -> PyResult<Value> {
    Ok(Value::Str(py_str_flagged(s, &mut conv.encoded)?))
}

/// State of one conversion.
struct Conv {
    /// Values cut off at [`CONVERT_DEPTH`] so far.
    cutoffs: usize,
    /// A string with encoded characters was converted.
    encoded: bool,
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let tname = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
    let mut repr: String = repr.chars().take(80).collect();
    if repr.is_empty() {
        repr.push('?');
    }
    format!("unsupported Python value of type \"{tname}\": {repr}")
}

fn to_value(obj: &Bound<'_, PyAny>, depth: usize, conv: &mut Conv) -> PyResult<Value> {
    if depth > CONVERT_DEPTH {
        conv.cutoffs += 1;
        if conv.cutoffs > MAX_CUTOFFS {
            return Err(conv_err(format!("Value nested deeper than {} levels", microdata::MAX_DEPTH)));
        }
        return Ok(Value::Unsupported(format!("a value nested deeper than {CONVERT_DEPTH} levels")));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return str_value(s, conv);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        return Ok(match i.extract::<i64>() {
            Ok(v) => Value::Int(v),
            Err(_) => match i.extract::<f64>() {
                Ok(f) => Value::Float(f),
                // beyond the doubles: rejected where a rule reads it, like the pure core
                Err(_) => Value::Unsupported("an integer too large for a JavaScript number".into()),
            },
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            entries.push((to_value(&k, depth + 1, conv)?, to_value(&v, depth + 1, conv)?));
        }
        return Ok(Value::Dict(entries));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        let mut items = Vec::with_capacity(l.len());
        for x in l.iter() {
            items.push(to_value(&x, depth + 1, conv)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut items = Vec::with_capacity(t.len());
        for x in t.iter() {
            items.push(to_value(&x, depth + 1, conv)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(s) = obj.cast::<PySet>() {
        let mut items = Vec::with_capacity(s.len());
        for x in s.iter() {
            items.push(to_value(&x, depth + 1, conv)?);
        }
        return Ok(Value::Set(items));
    }
    if let Ok(s) = obj.cast::<PyFrozenSet>() {
        let mut items = Vec::with_capacity(s.len());
        for x in s.iter() {
            items.push(to_value(&x, depth + 1, conv)?);
        }
        return Ok(Value::Set(items));
    }
    Ok(Value::Unsupported(describe(obj)))
}

/// Convert a core [`Value`] to a Python value (sets inside sets/dict keys become frozensets).
pub(crate) fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    to_py_value(py, v, false)
}

fn to_py_value<'py>(py: Python<'py>, v: &Value, hashable: bool) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        // an integer literal with more digits than Python converts (int_max_str_digits): the
        // double JavaScript reads, as the pure core does
        Value::BigInt(s) => match py.get_type::<PyInt>().call1((s.as_str(),)) {
            Ok(i) => i,
            Err(_) => PyFloat::new(py, s.parse::<f64>().unwrap_or(f64::NAN)).into_any(),
        },
        Value::Unsupported(d) => return Err(conv_err(format!("Cannot convert {d}"))),
        // every NaN is `math.nan`, one object, as in the pure core: a JS Set holds one NaN
        // (SameValueZero), and Python sets compare NaNs by identity
        Value::Float(f) if f.is_nan() => py.import("math")?.getattr("nan")?,
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) => str_to_py(py, s)?.into_any(),
        Value::List(items) => {
            let out = PyList::empty(py);
            for x in items {
                out.append(to_py_value(py, x, false)?)?;
            }
            out.into_any()
        }
        Value::Set(items) => {
            let mut conv = Vec::with_capacity(items.len());
            for x in items {
                conv.push(to_py_value(py, x, true)?);
            }
            let set = if hashable {
                PyFrozenSet::new(py, &conv).map(Bound::into_any)
            } else {
                PySet::new(py, &conv).map(Bound::into_any)
            };
            match set {
                Ok(s) => s,
                // items Python cannot hash (e.g. dicts of a set<stringifiable>): a list
                Err(_) => PyList::new(py, conv)?.into_any(),
            }
        }
        Value::Dict(entries) => {
            let out = PyDict::new(py);
            for (k, x) in entries {
                out.set_item(to_py_value(py, k, true)?, to_py_value(py, x, false)?)?;
            }
            out.into_any()
        }
    })
}

/// Register a recipe given as JSON (RecipeError OR-ADDR1 if a different one of that name exists).
#[pyfunction]
fn register_recipe(recipe_json: &Bound<'_, PyAny>) -> PyResult<()> {
    let bad = |msg: &str| to_py(Error::recipe("URC-ERECIPE1", msg.to_string()));
    let Ok(s) = recipe_json.cast::<PyString>() else {
        return Err(bad("recipe_json must be a JSON string"));
    };
    // names, itemprops and regexps are written into microdata and compared as text: a recipe
    // with a lone surrogate is refused whole (as in the pure core)
    let text = s.to_str().map_err(|_| bad("recipe_json contains a lone surrogate"))?;
    microdata::register_recipe_json(text).py()
}

/// Names of the registered recipes (built-in first, then registration order).
#[pyfunction]
fn recipe_names() -> Vec<String> {
    microdata::recipe_names()
}

/// The JSON of a registered recipe (RecipeError OR-GR1 if unknown).
#[pyfunction]
fn recipe_json(name: &str) -> PyResult<String> {
    microdata::recipe_json(name).py()
}

/// The recipe with inheritance applied, normalized, as JSON (RecipeError OR-GR1 if unknown).
#[pyfunction]
fn resolved_recipe(name: &str) -> PyResult<String> {
    microdata::resolved_recipe(name).py()
}

/// True if the type has a top-level isId rule.
#[pyfunction]
fn is_versioned(name: &str) -> PyResult<bool> {
    microdata::is_versioned(name).py()
}

/// The microdata of a ONE object (a dict with "$type$").
#[pyfunction]
fn serialize<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    str_to_py(py, &microdata::serialize(&py_to_value(obj)?).py()?)
}

/// Parse microdata (object or ID object) into a dict.
#[pyfunction]
fn parse<'py>(py: Python<'py>, text: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let v = microdata::parse(&text_arg(text)?).py()?;
    value_to_py(py, &v)
}

/// SHA-256 hex of the object's microdata (its UTF-8 as Node.js writes it: lone surrogates as
/// U+FFFD, objects.md §2.1).
#[pyfunction]
fn object_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let md = microdata::serialize(&py_to_value(obj)?).py()?;
    Ok(core_sha256_hex(microdata::js_utf8(&md).as_bytes()))
}

/// The ID microdata of an object of a versioned type (MicrodataError O2M-COBJ1 otherwise).
#[pyfunction]
fn id_microdata<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    str_to_py(py, &microdata::id_microdata(&py_to_value(obj)?).py()?)
}

/// SHA-256 hex of the object's ID microdata.
#[pyfunction]
fn id_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let md = microdata::id_microdata(&py_to_value(obj)?).py()?;
    Ok(core_sha256_hex(microdata::js_utf8(&md).as_bytes()))
}

/// ID microdata derived from concrete microdata; None for unversioned types.
#[pyfunction]
fn id_microdata_of<'py>(py: Python<'py>, microdata: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyString>>> {
    match microdata::id_microdata_of(&text_arg(microdata)?).py()? {
        Some(t) => Ok(Some(str_to_py(py, &t)?)),
        None => Ok(None),
    }
}

/// (type name, is ID object) of a microdata text (MicrodataError M2O-PH1 if not microdata).
#[pyfunction]
fn type_of<'py>(py: Python<'py>, text: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyString>, bool)> {
    let (t, is_id) = microdata::type_of(&text_arg(text)?).py()?;
    Ok((str_to_py(py, &t)?, is_id))
}

/// Objects converted per GIL release in [`serialize_many`]: large enough that releasing and
/// re-taking the GIL is noise, small enough that the converted values, their microdata and
/// the result strings of one chunk stay in the CPU caches.
const CHUNK: usize = 256;

/// [(microdata, hash)] for many objects. Works in chunks: convert (GIL held), serialize and
/// hash (GIL released), build the result tuples (GIL held) straight from the stack hex.
#[pyfunction]
fn serialize_many<'py>(py: Python<'py>, objs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    let mut values: Vec<(Value, bool)> = Vec::with_capacity(CHUNK);
    let mut done: Vec<(String, [u8; 32], bool)> = Vec::with_capacity(CHUNK);
    let mut iter = objs.try_iter()?;
    loop {
        values.clear();
        for o in iter.by_ref() {
            values.push(py_to_value_flagged(&o?)?);
            if values.len() == CHUNK {
                break;
            }
        }
        if values.is_empty() {
            return Ok(out);
        }
        done.clear();
        py.detach(|| {
            for (v, encoded) in &values {
                let md = microdata::serialize(v)?;
                let h = if *encoded { sha256(microdata::js_utf8(&md).as_bytes()) } else { sha256(md.as_bytes()) };
                done.push((md, h, *encoded));
            }
            Ok::<_, Error>(())
        })
        .py()?;
        for (md, h, encoded) in &done {
            let hex = hash_hex_bytes(h);
            let md = if *encoded { str_to_py(py, md)? } else { PyString::new(py, md) };
            let row = PyTuple::new(py, [md, PyString::new(py, hex_str(&hex))])?;
            out.append(row)?;
        }
    }
}

/// Every reference of an object: [(path, kind, hash)], kind in "obj", "id", "clob", "blob".
#[pyfunction]
fn references(microdata: &Bound<'_, PyAny>) -> PyResult<Vec<(String, &'static str, String)>> {
    Ok(microdata::references(&text_arg(microdata)?)
        .py()?
        .into_iter()
        .map(|r| (r.path, r.kind.as_str(), r.hash))
        .collect())
}

/// SHA-256 hex of bytes (or of a str's UTF-8 encoding).
#[pyfunction]
fn sha256_hex(data: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(core_sha256_hex(b.as_bytes()));
    }
    if let Ok(s) = data.cast::<PyString>() {
        // Node.js hashes a JS string's UTF-8 with lone surrogates as U+FFFD (objects.md §2.1)
        if let Ok(t) = s.to_str() {
            return Ok(core_sha256_hex(t.as_bytes()));
        }
        return Ok(core_sha256_hex(microdata::js_utf8(&py_str(s)?).as_bytes()));
    }
    if let Ok(b) = data.cast::<PyByteArray>() {
        return Ok(core_sha256_hex(&b.to_vec()));
    }
    Err(pyo3::exceptions::PyTypeError::new_err(format!(
        "sha256_hex() takes bytes or str, not {}",
        data.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    )))
}

/// Add the microdata functions to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(register_recipe, m)?)?;
    m.add_function(wrap_pyfunction!(recipe_names, m)?)?;
    m.add_function(wrap_pyfunction!(recipe_json, m)?)?;
    m.add_function(wrap_pyfunction!(resolved_recipe, m)?)?;
    m.add_function(wrap_pyfunction!(is_versioned, m)?)?;
    m.add_function(wrap_pyfunction!(serialize, m)?)?;
    m.add_function(wrap_pyfunction!(parse, m)?)?;
    m.add_function(wrap_pyfunction!(object_hash, m)?)?;
    m.add_function(wrap_pyfunction!(id_microdata, m)?)?;
    m.add_function(wrap_pyfunction!(id_hash, m)?)?;
    m.add_function(wrap_pyfunction!(id_microdata_of, m)?)?;
    m.add_function(wrap_pyfunction!(type_of, m)?)?;
    m.add_function(wrap_pyfunction!(serialize_many, m)?)?;
    m.add_function(wrap_pyfunction!(references, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_hex, m)?)?;
    Ok(())
}
