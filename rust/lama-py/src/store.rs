//! Python bindings of the LMDB store (docs/core-interface.md "Store", docs/store-format.md).
//!
//! `Store` and `BlobWriter` are frozen pyclasses with interior locks, usable from several
//! threads. Python values are converted while holding the GIL; all LMDB work, serialization
//! and hashing run with the GIL released (`py.detach`). After `close()` every method raises
//! `StoreError LAMA-CLOSED`.
use std::sync::{Mutex, RwLock};

use lama_core::microdata::Value;
use lama_core::store::{BlobWriter, PutResult, Store};
use lama_core::Error;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::IntoPyResult;
use crate::microdata::py_to_value;

/// The Python list `[(hash, status, id_hash or None)]` of a batch write, built with a short
/// GIL release every CONVERT_CHUNK rows so a large batch does not block other threads.
pub(crate) fn rows<'py>(py: Python<'py>, results: Vec<PutResult>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for (i, r) in results.into_iter().enumerate() {
        out.append((r.hash, r.status.as_str(), r.id_hash))?;
        if (i + 1) % CONVERT_CHUNK == 0 {
            py.detach(std::thread::yield_now);
        }
    }
    Ok(out)
}

fn bad_arg(msg: String) -> PyErr {
    crate::errors::to_py(Error::store("LAMA-ARG", msg))
}

/// A type or property name argument: a `str` that is text (a lone surrogate in a name is a bad
/// argument, StoreError LAMA-ARG as in the pure core, not a UnicodeEncodeError).
fn name_arg(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    match obj.cast::<pyo3::types::PyString>().ok().and_then(|s| s.to_str().ok()) {
        Some(t) => Ok(t.to_owned()),
        None => Err(bad_arg(format!("invalid type name {}", obj.repr().map(|r| r.to_string()).unwrap_or_default()))),
    }
}

/// The `[(text, expected hash or None)]` of `put_microdata`, texts in the core's encoding.
fn microdata_items(items: &Bound<'_, PyAny>) -> PyResult<Vec<(String, Option<String>)>> {
    if items.cast::<PyList>().is_err() && items.cast::<pyo3::types::PyTuple>().is_err() {
        return Err(bad_arg(format!("expected a list of (text, hash), got {}", items.get_type().name()?)));
    }
    let mut out = Vec::new();
    for item in items.try_iter()? {
        let item = item?;
        let pair: (Bound<'_, PyAny>, Bound<'_, PyAny>) =
            item.extract().map_err(|_| bad_arg(format!("expected a (text, hash) pair, got {item}")))?;
        let text = pair.0.cast::<pyo3::types::PyString>().map_err(|_| {
            bad_arg(format!("microdata must be a str, got {}", pair.0.get_type().name().map(|n| n.to_string()).unwrap_or_default()))
        })?;
        let expected = if pair.1.is_none() {
            None
        } else {
            Some(pair.1.extract::<String>().map_err(|_| bad_arg(format!("an expected hash must be a str or None, got {}", pair.1)))?)
        };
        out.push((crate::microdata::py_str(text)?, expected));
    }
    Ok(out)
}

fn closed() -> PyErr {
    crate::errors::to_py(Error::store("LAMA-CLOSED", "the store is closed"))
}

/// Rows converted between two GIL hand-overs. Converting needs the GIL; after each chunk
/// `py.detach(yield_now)` releases and re-takes it. That only lets another thread run if one
/// is waiting: a waiting thread asks for the GIL after CPython's switch interval (5 ms), and
/// the release then hands it over (forced switching). So another thread waits at most about
/// one chunk's conversion time, not the whole batch.
const CONVERT_CHUNK: usize = 1024;

/// Convert a Python sequence of dicts into core values (GIL held, handed over every
/// [`CONVERT_CHUNK`] objects).
pub(crate) fn values(objs: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    let py = objs.py();
    let mut out = Vec::with_capacity(objs.len().unwrap_or(0));
    for item in objs.try_iter()? {
        out.push(py_to_value(&item?)?);
        if out.len() % CONVERT_CHUNK == 0 {
            py.detach(std::thread::yield_now);
        }
    }
    Ok(out)
}

/// Run `f` on the bytes of a `bytes`, `bytearray` or buffer object with the GIL released.
fn with_bytes<R: Send>(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8]) -> R + Send,
) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        let slice = b.as_bytes();
        return Ok(py.detach(|| f(slice)));
    }
    let buf: PyBuffer<u8> = PyBuffer::get(data)?;
    let owned = buf.to_vec(py)?;
    Ok(py.detach(|| f(&owned)))
}

/// The lama LMDB store of one directory.
#[pyclass(frozen, name = "Store", module = "lama._lama")]
pub struct PyStore {
    inner: RwLock<Option<Store>>,
    path: String,
    durable: bool,
    open_check: &'static str,
}

impl PyStore {
    pub(crate) fn store(&self) -> PyResult<Store> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or_else(closed)
    }
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, map_size = 1usize << 36, durable = true, check = "auto"))]
    fn new(py: Python<'_>, path: std::path::PathBuf, map_size: usize, durable: bool, check: &str) -> PyResult<Self> {
        let mode = lama_core::store::CheckMode::parse(check).py()?;
        let store = py.detach(|| Store::open_checked(&path, Some(map_size), durable, mode)).py()?;
        let open_check = store.open_check().as_str();
        Ok(PyStore {
            inner: RwLock::new(Some(store)),
            path: path.to_string_lossy().into_owned(),
            durable,
            open_check,
        })
    }

    /// Which structural check the open of this handle ran: "full" (the page walk), "mark" (a
    /// valid check mark matched the file: meta checks only) or "shared" (the environment was
    /// already open in this process). docs/store-format.md "Check mark".
    #[getter]
    fn open_check(&self) -> &'static str {
        self.open_check
    }

    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// False if opened with `durable=False` (LMDB NO_SYNC; docs/store-format.md "Durability").
    #[getter]
    fn durable(&self) -> bool {
        self.durable
    }

    /// Flush every committed transaction to disk (fsync).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store()?;
        py.detach(|| store.sync()).py()
    }

    /// Release this handle (flushing the store first: a non-durable store's commits, a durable
    /// one's last meta page, docs/store-format.md "Durability"); the environment closes when no
    /// handle or writer uses it. Closing twice is harmless.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(|| match store {
            Some(s) => s.sync(),
            None => Ok(()),
        })
        .py()
    }

    fn __enter__(slf: Py<Self>) -> PyResult<Py<Self>> {
        slf.get().store()?;
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<lama._lama.Store {:?}{}>", self.path, if self.closed() { " (closed)" } else { "" })
    }

    fn put_objects<'py>(&self, py: Python<'py>, objs: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let store = self.store()?;
        let vals = values(objs)?;
        // the values are dropped without the GIL too: freeing a large batch takes a while
        rows(py, py.detach(move || store.put_objects(&vals)).py()?)
    }

    fn put_microdata<'py>(&self, py: Python<'py>, items: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        let store = self.store()?;
        // texts in the core's string encoding (lone surrogates kept; stored as Node writes them);
        // malformed arguments are StoreError LAMA-ARG, as in the pure core
        let items = microdata_items(items)?;
        rows(py, py.detach(|| store.put_microdata(&items)).py()?)
    }

    fn get(&self, py: Python<'_>, hash: &str) -> PyResult<String> {
        let store = self.store()?;
        py.detach(|| store.get(hash)).py()
    }

    fn get_object<'py>(&self, py: Python<'py>, hash: &str) -> PyResult<Bound<'py, PyAny>> {
        let store = self.store()?;
        let value = py.detach(|| store.get_object(hash)).py()?;
        crate::microdata::value_to_py(py, &value)
    }

    fn has(&self, py: Python<'_>, hash: &str) -> PyResult<bool> {
        let store = self.store()?;
        py.detach(|| store.has(hash)).py()
    }

    fn kind(&self, py: Python<'_>, hash: &str) -> PyResult<Option<&'static str>> {
        let store = self.store()?;
        py.detach(|| store.kind(hash)).py().map(|k| k.map(|k| k.as_str()))
    }

    fn put_blob(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<(String, &'static str)> {
        let store = self.store()?;
        with_bytes(py, data, |b| store.put_blob(b))?.py().map(|(h, s)| (h, s.as_str()))
    }

    fn put_clob(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<(String, &'static str)> {
        let store = self.store()?;
        let text = text.cast::<pyo3::types::PyString>().map_err(|_| {
            bad_arg(format!("a CLOB must be a str, got {}", text.get_type().name().map(|n| n.to_string()).unwrap_or_default()))
        })?;
        // a JavaScript string: a lone surrogate is stored as Node writes it (U+FFFD)
        let text = crate::microdata::py_str(text)?;
        let text = lama_core::microdata::js_utf8(&text);
        py.detach(|| store.put_clob(&text)).py().map(|(h, s)| (h, s.as_str()))
    }

    #[pyo3(signature = (clob = false))]
    fn blob_writer(slf: Py<Self>, clob: bool) -> PyResult<PyBlobWriter> {
        let writer = slf.get().store()?.blob_writer(clob);
        Ok(PyBlobWriter { store: slf, inner: Mutex::new(Some(writer)) })
    }

    fn read_blob<'py>(&self, py: Python<'py>, hash: &str) -> PyResult<Bound<'py, PyBytes>> {
        let store = self.store()?;
        let data = py.detach(|| store.read_blob(hash)).py()?;
        Ok(PyBytes::new(py, &data))
    }

    fn blob_size(&self, py: Python<'_>, hash: &str) -> PyResult<u64> {
        let store = self.store()?;
        py.detach(|| store.blob_size(hash)).py()
    }

    /// Up to `max` bytes of a BLOB/CLOB from `offset`, never across a stored chunk's end.
    fn read_blob_range<'py>(
        &self,
        py: Python<'py>,
        hash: &str,
        offset: &Bound<'py, PyAny>,
        max: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let store = self.store()?;
        let data = crate::store_api::blob_range(py, store, hash, offset, max)?;
        Ok(PyBytes::new(py, &data))
    }

    fn read_blob_chunks<'py>(&self, py: Python<'py>, hash: &str) -> PyResult<Bound<'py, PyList>> {
        let store = self.store()?;
        let chunks = py.detach(|| store.read_blob_chunks(hash)).py()?;
        PyList::new(py, chunks.iter().map(|c| PyBytes::new(py, c)))
    }

    fn get_head(&self, py: Python<'_>, id_hash: &str) -> PyResult<Option<String>> {
        let store = self.store()?;
        py.detach(|| store.get_head(id_hash)).py()
    }

    fn write_batch<'py>(
        &self,
        py: Python<'py>,
        objs: &Bound<'py, PyAny>,
        heads: Vec<(String, Option<String>, String)>,
    ) -> PyResult<Bound<'py, PyList>> {
        let store = self.store()?;
        let vals = values(objs)?;
        rows(py, py.detach(move || store.write_batch(&vals, &heads)).py()?)
    }

    #[pyo3(signature = (type_name, props = None, id_objects = false))]
    fn enable_reverse_maps(
        &self,
        py: Python<'_>,
        type_name: &Bound<'_, PyAny>,
        props: Option<&Bound<'_, PyAny>>,
        id_objects: bool,
    ) -> PyResult<()> {
        let store = self.store()?;
        let type_name = name_arg(type_name)?;
        let props = match props {
            None => None,
            Some(p) if p.cast::<pyo3::types::PyString>().is_ok() => return Err(bad_arg(format!("props must be a list of str or None, got {p}"))),
            Some(p) => Some(p.try_iter().map_err(|_| bad_arg(format!("props must be a list of str or None, got {p}")))?.map(|x| name_arg(&x?)).collect::<PyResult<Vec<String>>>()?),
        };
        py.detach(|| store.enable_reverse_maps(&type_name, props.as_deref(), id_objects)).py()
    }

    #[pyo3(signature = (target, type_name, id_objects = false))]
    fn referencing(&self, py: Python<'_>, target: &str, type_name: &Bound<'_, PyAny>, id_objects: bool) -> PyResult<Vec<String>> {
        let store = self.store()?;
        let type_name = name_arg(type_name)?;
        py.detach(|| store.referencing(target, &type_name, id_objects)).py()
    }

    fn count(&self, py: Python<'_>) -> PyResult<u64> {
        let store = self.store()?;
        py.detach(|| store.count()).py()
    }

    fn hashes(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let store = self.store()?;
        py.detach(|| store.hashes()).py()
    }

    fn verify(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let store = self.store()?;
        py.detach(|| store.verify()).py()
    }

    // ---- reads for the sync layer and the event feed (store_api.rs; project issue 6)

    /// A consistent read view as of now (docs/core-interface.md "Snapshot").
    fn snapshot(&self, py: Python<'_>) -> PyResult<crate::store_api::PySnapshot> {
        crate::store_api::snapshot(py, self.store()?)
    }

    /// The hashes of `hashes` that are not stored, in input order (one read transaction).
    fn missing(&self, py: Python<'_>, hashes: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        crate::store_api::missing(py, self.store()?, hashes)
    }

    /// chum.md §5.3 children of an object or ID object, dependencies first.
    fn children(&self, py: Python<'_>, hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        crate::store_api::children(py, self.store()?, hash)
    }

    /// The version nodes of an ID hash, newest first (objects.md §4.1).
    fn version_nodes(&self, py: Python<'_>, id_hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        crate::store_api::version_nodes(py, self.store()?, id_hash)
    }

    /// Sequence number of the last committed event (0 if none).
    fn last_seq(&self, py: Python<'_>) -> PyResult<u64> {
        let store = self.store()?;
        py.detach(|| store.last_seq()).py()
    }

    /// Up to `limit` events `(seq, hash, kind)` with `seq > since`, in commit order.
    fn changes(
        &self,
        py: Python<'_>,
        since: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<(u64, String, &'static str)>> {
        crate::store_api::changes(py, self.store()?, since, limit)
    }

    /// `(position, events)`: of the (at most `limit`) events with `seq > since`, those of
    /// objects, ID objects and heads (the ID object's type) whose type is in `types`;
    /// `position` = the last event scanned (`since` if none), where the next call starts.
    fn changes_of(
        &self,
        py: Python<'_>,
        types: &Bound<'_, PyAny>,
        since: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
    ) -> PyResult<(u64, Vec<(u64, String, &'static str)>)> {
        crate::store_api::changes_of(py, self.store()?, types, since, limit)
    }

    /// Events committed from now on, by any handle of this directory in this process.
    fn subscribe(&self, py: Python<'_>) -> PyResult<crate::store_api::PySubscription> {
        crate::store_api::subscribe(py, self.store()?)
    }

    /// A `CommitSignal`: a file descriptor made readable right after every commit of this
    /// process (issue 10: an event loop reads the feed without a thread hop).
    fn commit_signal(&self) -> PyResult<crate::store_api::PyCommitSignal> {
        crate::store_api::commit_signal(&self.store()?)
    }

    // ---- access index (docs/chum-session.md §1; store_api.rs)

    /// `(mark, roots)`: the roots accessible to `person` that became accessible after `since`.
    #[pyo3(signature = (person, since = None), text_signature = "($self, person, since=0)")]
    fn accessible_roots(
        &self,
        py: Python<'_>,
        person: &Bound<'_, PyAny>,
        since: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(u64, Vec<crate::store_api::RootRow>)> {
        let zero = 0u64.into_pyobject(py)?.into_any();
        crate::store_api::accessible_roots(py, self.store()?, person, since.unwrap_or(&zero))
    }

    /// This store's identity: 32 hex digits, random, fixed at its first open.
    #[getter]
    fn store_id(&self, py: Python<'_>) -> PyResult<String> {
        let store = self.store()?;
        py.detach(|| store.store_id()).py()
    }

    /// The high-water mark stored for `peer` (0 if never set).
    fn peer_mark(&self, py: Python<'_>, peer: &Bound<'_, PyAny>) -> PyResult<u64> {
        crate::store_api::peer_mark(py, self.store()?, peer)
    }

    /// Store the high-water mark of `peer`.
    fn set_peer_mark(&self, py: Python<'_>, peer: &Bound<'_, PyAny>, mark: &Bound<'_, PyAny>) -> PyResult<()> {
        crate::store_api::set_peer_mark(py, self.store()?, peer, mark)
    }
}

/// Streams a BLOB/CLOB into a store (docs/store-format.md "Write rules").
#[pyclass(frozen, name = "BlobWriter", module = "lama._lama")]
pub struct PyBlobWriter {
    store: Py<PyStore>,
    inner: Mutex<Option<BlobWriter>>,
}

impl PyBlobWriter {
    /// Run `f` on the writer with the GIL released; `StoreError` if the store was closed.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut BlobWriter) -> lama_core::Result<R> + Send,
    ) -> PyResult<R> {
        if self.store.get().closed() {
            return Err(closed());
        }
        py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                Some(w) => f(w),
                None => Err(Error::store("LAMA-WRITER", "the BLOB writer is already finished or aborted")),
            }
        })
        .py()
    }
}

#[pymethods]
impl PyBlobWriter {
    fn write(&self, py: Python<'_>, chunk: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(b) = chunk.cast::<PyBytes>() {
            let slice = b.as_bytes();
            return self.with(py, |w| w.write(slice));
        }
        let owned = PyBuffer::<u8>::get(chunk)?.to_vec(py)?;
        self.with(py, |w| w.write(&owned))
    }

    #[pyo3(signature = (expected_hash = None))]
    fn finish(&self, py: Python<'_>, expected_hash: Option<String>) -> PyResult<(String, &'static str)> {
        self.with(py, |w| w.finish(expected_hash.as_deref())).map(|(h, s)| (h, s.as_str()))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving the `with` block without `finish` discards what was written.
    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.abort(py)?;
        Ok(false)
    }

    /// Discard everything written; a no-op after `finish` or `abort`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let writer = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(|| match writer {
            Some(mut w) => w.abort(),
            None => Ok(()),
        })
        .py()
    }
}

/// Add `Store` and `BlobWriter` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStore>()?;
    m.add_class::<PyBlobWriter>()?;
    Ok(())
}
