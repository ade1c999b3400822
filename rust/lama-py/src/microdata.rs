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

/// Deepest nesting accepted from Python (guards the native stack).
/// Python nesting accepted on conversion (stack safety; microdata itself allows 200 containers).
const MAX_DEPTH: usize = 512;

fn conv_err(msg: String) -> PyErr {
    to_py(Error::microdata("O2M-RTYC1", msg))
}

/// Convert a Python value to a core [`Value`] (`MicrodataError` O2M-RTYC1 for other types).
pub(crate) fn py_to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    to_value(obj, 0)
}

fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(conv_err(format!("Value nested deeper than {MAX_DEPTH} levels")));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::Str(s.to_str()?.to_owned()));
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        return Ok(match i.extract::<i64>() {
            Ok(v) => Value::Int(v),
            Err(_) => {
                let f: f64 = i.extract().map_err(|e| conv_err(format!("Integer too large for a JS number: {e}")))?;
                Value::Float(f)
            }
        });
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut entries = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            entries.push((to_value(&k, depth + 1)?, to_value(&v, depth + 1)?));
        }
        return Ok(Value::Dict(entries));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        let mut items = Vec::with_capacity(l.len());
        for x in l.iter() {
            items.push(to_value(&x, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut items = Vec::with_capacity(t.len());
        for x in t.iter() {
            items.push(to_value(&x, depth + 1)?);
        }
        return Ok(Value::List(items));
    }
    if let Ok(s) = obj.cast::<PySet>() {
        let mut items = Vec::with_capacity(s.len());
        for x in s.iter() {
            items.push(to_value(&x, depth + 1)?);
        }
        return Ok(Value::Set(items));
    }
    if let Ok(s) = obj.cast::<PyFrozenSet>() {
        let mut items = Vec::with_capacity(s.len());
        for x in s.iter() {
            items.push(to_value(&x, depth + 1)?);
        }
        return Ok(Value::Set(items));
    }
    let tname = obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    let repr = obj.repr().map(|r| r.to_string()).unwrap_or_default();
    Err(conv_err(format!("Unsupported Python value of type \"{tname}\": {repr}")))
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
        Value::BigInt(s) => py.get_type::<PyInt>().call1((s.as_str(),))?,
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) => PyString::new(py, s).into_any(),
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
fn register_recipe(recipe_json: &str) -> PyResult<()> {
    microdata::register_recipe_json(recipe_json).py()
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
fn serialize(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    microdata::serialize(&py_to_value(obj)?).py()
}

/// Parse microdata (object or ID object) into a dict.
#[pyfunction]
fn parse<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    let v = microdata::parse(text).py()?;
    value_to_py(py, &v)
}

/// SHA-256 hex of the object's microdata.
#[pyfunction]
fn object_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let md = microdata::serialize(&py_to_value(obj)?).py()?;
    Ok(core_sha256_hex(md.as_bytes()))
}

/// The ID microdata of an object of a versioned type (MicrodataError O2M-COBJ1 otherwise).
#[pyfunction]
fn id_microdata(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    microdata::id_microdata(&py_to_value(obj)?).py()
}

/// SHA-256 hex of the object's ID microdata.
#[pyfunction]
fn id_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let md = microdata::id_microdata(&py_to_value(obj)?).py()?;
    Ok(core_sha256_hex(md.as_bytes()))
}

/// ID microdata derived from concrete microdata; None for unversioned types.
#[pyfunction]
fn id_microdata_of(microdata: &str) -> PyResult<Option<String>> {
    microdata::id_microdata_of(microdata).py()
}

/// (type name, is ID object) of a microdata text (MicrodataError M2O-PH1 if not microdata).
#[pyfunction]
fn type_of(text: &str) -> PyResult<(String, bool)> {
    microdata::type_of(text).py()
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
    let mut values: Vec<Value> = Vec::with_capacity(CHUNK);
    let mut done: Vec<(String, [u8; 32])> = Vec::with_capacity(CHUNK);
    let mut iter = objs.try_iter()?;
    loop {
        values.clear();
        for o in iter.by_ref() {
            values.push(py_to_value(&o?)?);
            if values.len() == CHUNK {
                break;
            }
        }
        if values.is_empty() {
            return Ok(out);
        }
        done.clear();
        py.detach(|| {
            for v in &values {
                let md = microdata::serialize(v)?;
                let h = sha256(md.as_bytes());
                done.push((md, h));
            }
            Ok::<_, Error>(())
        })
        .py()?;
        for (md, h) in &done {
            let hex = hash_hex_bytes(h);
            let row = PyTuple::new(py, [PyString::new(py, md), PyString::new(py, hex_str(&hex))])?;
            out.append(row)?;
        }
    }
}

/// Every reference of an object: [(path, kind, hash)], kind in "obj", "id", "clob", "blob".
#[pyfunction]
fn references(microdata: &str) -> PyResult<Vec<(String, &'static str, String)>> {
    Ok(microdata::references(microdata)
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
        return Ok(core_sha256_hex(s.to_str()?.as_bytes()));
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
