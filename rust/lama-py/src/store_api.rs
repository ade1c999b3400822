//! Bindings of the store API for the sync layer (project issue 6; docs/core-interface.md
//! "Store: reads for sync", "Event feed"): `check_hash`, `Snapshot`, `Subscription` and the
//! helpers behind `Store.missing/children/version_nodes/last_seq/changes/subscribe`.
//!
//! Hashes are hex `str` only at this boundary; inside the core they are `lama_core::hash::Hash`.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lama_core::hash::{bad_hash, check_hash as core_check_hash, Hash};
use lama_core::store::{Event, Root, Snapshot, Store, Subscription};
use lama_core::Error;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::errors::{to_py, IntoPyResult};

/// `MicrodataError LAMA-BADHASH` unless `value` is a `str` of exactly 64 lowercase hex
/// characters (objects.md §2.1). A non-`str` is the same error, not a `TypeError`, so callers
/// validating untrusted input (received JSON) need one `except`.
pub fn hash_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Hash> {
    match value.cast::<PyString>() {
        Ok(s) => match s.to_cow() {
            Ok(text) => core_check_hash(&text, what).py(),
            // a str with lone surrogates is not UTF-8, so certainly not a hash
            Err(_) => Err(to_py(bad_hash(what, "a str that is not valid Unicode"))),
        },
        Err(_) => {
            let shown = value.repr().map(|r| r.to_string()).unwrap_or_else(|_| "?".into());
            Err(to_py(bad_hash(what, &format!("{shown} (a {})", value.get_type().name()?))))
        }
    }
}

/// A list of hash arguments (a `list` or `tuple`; anything else is `StoreError LAMA-ARG`).
fn hash_list(values: &Bound<'_, PyAny>) -> PyResult<Vec<Hash>> {
    if !(values.is_instance_of::<PyList>() || values.is_instance_of::<pyo3::types::PyTuple>()) {
        return Err(arg_error(format!(
            "expected a list of hashes, got {}",
            values.get_type().name()?
        )));
    }
    values.try_iter()?.map(|v| hash_arg(&v?, "hash")).collect()
}

fn arg_error(msg: String) -> PyErr {
    to_py(Error::store("LAMA-ARG", msg))
}

/// A non-negative `int` (not `bool`), else `StoreError LAMA-ARG` (both cores).
fn count_arg(value: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if value.is_instance_of::<pyo3::types::PyBool>() || !value.is_instance_of::<pyo3::types::PyInt>() {
        return Err(arg_error(format!("{what} must be an int >= 0, got {}", value.get_type().name()?)));
    }
    value.extract::<u64>().map_err(|_| arg_error(format!("{what} must be an int >= 0, got {value}")))
}

/// `timeout` in seconds: an `int` or `float` >= 0 (not `bool`, not NaN), else `LAMA-ARG`.
fn timeout_arg(value: &Bound<'_, PyAny>) -> PyResult<Duration> {
    let bad = || arg_error(format!("timeout must be a number of seconds >= 0, got {value}"));
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad());
    }
    let secs: f64 = value.extract().map_err(|_| bad())?;
    if !(secs >= 0.0) {
        return Err(bad());
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

fn hex_list(hashes: Vec<Hash>) -> Vec<String> {
    hashes.into_iter().map(|h| h.to_hex()).collect()
}

fn event_rows(events: Vec<Event>) -> Vec<(u64, String, &'static str)> {
    events.into_iter().map(|e| (e.seq, e.hash.to_hex(), e.kind)).collect()
}

/// A type filter: a list, tuple, set or frozenset of type names (str).
fn types_arg(value: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let ok = value.is_instance_of::<PyList>()
        || value.is_instance_of::<pyo3::types::PyTuple>()
        || value.is_instance_of::<pyo3::types::PySet>()
        || value.is_instance_of::<pyo3::types::PyFrozenSet>();
    if !ok {
        return Err(arg_error(format!("types must be a list, tuple or set of str, got {}", value.get_type().name()?)));
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        match item.cast::<PyString>() {
            Ok(s) => out.push(s.to_str()?.to_owned()),
            Err(_) => return Err(arg_error(format!("a type name must be a str, got {}", item.get_type().name()?))),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- Store methods (store.rs)

pub fn missing(py: Python<'_>, store: Store, hashes: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let hs = hash_list(hashes)?;
    py.detach(|| store.missing(&hs)).py().map(hex_list)
}

pub fn children(py: Python<'_>, store: Store, hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let h = hash_arg(hash, "hash")?.to_hex();
    py.detach(|| store.children(&h)).py().map(hex_list)
}

pub fn version_nodes(py: Python<'_>, store: Store, id_hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    let h = hash_arg(id_hash, "ID hash")?.to_hex();
    py.detach(|| store.version_nodes(&h)).py().map(hex_list)
}

pub fn changes_of(
    py: Python<'_>,
    store: Store,
    types: &Bound<'_, PyAny>,
    since: &Bound<'_, PyAny>,
    limit: &Bound<'_, PyAny>,
) -> PyResult<(u64, Vec<(u64, String, &'static str)>)> {
    let types = types_arg(types)?;
    let since = count_arg(since, "since")?;
    let limit = usize::try_from(count_arg(limit, "limit")?).unwrap_or(usize::MAX);
    let refs: Vec<&str> = types.iter().map(String::as_str).collect();
    let (pos, events) = py.detach(|| store.changes_of(since, limit, &refs)).py()?;
    Ok((pos, event_rows(events)))
}

pub fn changes(
    py: Python<'_>,
    store: Store,
    since: &Bound<'_, PyAny>,
    limit: &Bound<'_, PyAny>,
) -> PyResult<Vec<(u64, String, &'static str)>> {
    let since = count_arg(since, "since")?;
    let limit = usize::try_from(count_arg(limit, "limit")?).unwrap_or(usize::MAX);
    py.detach(|| store.changes(since, limit)).py().map(event_rows)
}

/// `Store.read_blob_range`: offset and max are ints >= 0 (`LAMA-ARG` otherwise).
pub fn blob_range(py: Python<'_>, store: Store, hash: &str, offset: &Bound<'_, PyAny>, max: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let offset = count_arg(offset, "offset")?;
    let max = usize::try_from(count_arg(max, "max")?).unwrap_or(usize::MAX);
    py.detach(|| store.read_blob_range(hash, offset, max)).py()
}

/// A root as the Python API shows it: `(kind, hash, id_hash, type_name)`, hex hashes.
pub type RootRow = (&'static str, String, Option<String>, String);

fn root_rows((mark, roots): (u64, Vec<Root>)) -> (u64, Vec<RootRow>) {
    (mark, roots.into_iter().map(|r| (r.kind.as_str(), r.hash.to_hex(), r.id_hash.map(|h| h.to_hex()), r.type_name)).collect())
}

/// A peer key: a `str` (valid Unicode), else `StoreError LAMA-ARG` (the core checks its length).
pub fn peer_arg(value: &Bound<'_, PyAny>) -> PyResult<String> {
    match value.cast::<PyString>() {
        Ok(s) => s.to_cow().map(|c| c.into_owned()).map_err(|_| arg_error("a peer key must be valid Unicode".into())),
        Err(_) => Err(arg_error(format!("a peer key must be a str, got {}", value.get_type().name()?))),
    }
}

pub fn accessible_roots(
    py: Python<'_>,
    store: Store,
    person: &Bound<'_, PyAny>,
    since: &Bound<'_, PyAny>,
) -> PyResult<(u64, Vec<RootRow>)> {
    let p = hash_arg(person, "person")?;
    let since = count_arg(since, "since")?;
    py.detach(|| store.accessible_roots(&p, since)).py().map(root_rows)
}

pub fn peer_mark(py: Python<'_>, store: Store, peer: &Bound<'_, PyAny>) -> PyResult<u64> {
    let peer = peer_arg(peer)?;
    py.detach(|| store.peer_mark(&peer)).py()
}

pub fn set_peer_mark(py: Python<'_>, store: Store, peer: &Bound<'_, PyAny>, mark: &Bound<'_, PyAny>) -> PyResult<()> {
    let peer = peer_arg(peer)?;
    let mark = count_arg(mark, "mark")?;
    py.detach(|| store.set_peer_mark(&peer, mark)).py()
}

pub fn snapshot(py: Python<'_>, store: Store) -> PyResult<PySnapshot> {
    let snap = py.detach(|| store.snapshot()).py()?;
    Ok(PySnapshot { inner: Mutex::new(Some(snap)) })
}

pub fn subscribe(py: Python<'_>, store: Store) -> PyResult<PySubscription> {
    let sub = py.detach(|| store.subscribe()).py()?;
    Ok(PySubscription { inner: Mutex::new(Some(sub)) })
}

/// Without Linux's eventfd there is no commit signal: `Chat.attach_loop` then keeps its event
/// thread (it treats this LamaError as "not available").
#[cfg(not(target_os = "linux"))]
pub fn commit_signal(_store: &Store) -> PyResult<PyCommitSignal> {
    Err(to_py(Error::store("LAMA-IO", "the commit signal needs Linux (eventfd)")))
}

#[cfg(target_os = "linux")]
pub fn commit_signal(store: &Store) -> PyResult<PyCommitSignal> {
    // SAFETY: eventfd has no memory arguments; a valid fd is owned below
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(to_py(Error::store("LAMA-IO", format!("cannot make the commit signal: {e}"))));
    }
    // SAFETY: `raw` is a new fd nobody else owns
    let fd = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
    let hook_fd = fd.clone(); // a hook call in flight keeps the fd open (no write to a reused number)
    let hook = store.on_commit(move |_seq| {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an fd this closure keeps open; an eventfd
        // write does not block (EFD_NONBLOCK: at worst EAGAIN at the counter's maximum, which
        // leaves it readable anyway)
        unsafe { libc::write(hook_fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    });
    Ok(PyCommitSignal { inner: Mutex::new(Some((hook, fd, OpenSignal::new()))) })
}

/// How many commit signals of this process are open (made and not closed or dropped).
static OPEN_SIGNALS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one open commit signal while it lives.
struct OpenSignal;

impl OpenSignal {
    fn new() -> OpenSignal {
        OPEN_SIGNALS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenSignal
    }
}

impl Drop for OpenSignal {
    fn drop(&mut self) {
        OPEN_SIGNALS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Whether a commit signal is open in this process: something (the chat on an event loop,
/// `Chat.attach_loop`) reads the event feed when a commit wakes its loop. A session's event
/// batch is then delivered a loop round later, after what that reader queued (net.rs).
pub fn commit_signals_open() -> bool {
    OPEN_SIGNALS.load(std::sync::atomic::Ordering::Acquire) > 0
}

// ---------------------------------------------------------------- Snapshot

/// A consistent read view of a store (docs/core-interface.md "Snapshot"). The LMDB read
/// transaction lives in a mutex: LMDB lets a `MDB_NOTLS` read transaction move between threads
/// but not be used by two at once (see `lama_core::store::Snapshot`).
#[pyclass(frozen, name = "Snapshot", module = "lama._lama")]
pub struct PySnapshot {
    inner: Mutex<Option<Snapshot>>,
}

impl PySnapshot {
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Snapshot) -> lama_core::Result<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| {
            let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_ref() {
                Some(s) => f(s),
                None => Err(Error::store("LAMA-CLOSED", "the snapshot is closed")),
            }
        })
        .py()
    }
}

#[pymethods]
impl PySnapshot {
    /// True once `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// End the read transaction (frees its LMDB reader slot); closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        let snap = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(snap));
    }

    fn __enter__(slf: Py<Self>) -> PyResult<Py<Self>> {
        if slf.get().closed() {
            return Err(to_py(Error::store("LAMA-CLOSED", "the snapshot is closed")));
        }
        Ok(slf)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn get(&self, py: Python<'_>, hash: &Bound<'_, PyAny>) -> PyResult<String> {
        let h = hash_arg(hash, "hash")?.to_hex();
        self.with(py, |s| s.get(&h))
    }

    fn get_object<'py>(&self, py: Python<'py>, hash: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let h = hash_arg(hash, "hash")?.to_hex();
        let value = self.with(py, |s| s.get_object(&h))?;
        crate::microdata::value_to_py(py, &value)
    }

    fn has(&self, py: Python<'_>, hash: &Bound<'_, PyAny>) -> PyResult<bool> {
        let h = hash_arg(hash, "hash")?.to_hex();
        self.with(py, |s| s.has(&h))
    }

    fn kind(&self, py: Python<'_>, hash: &Bound<'_, PyAny>) -> PyResult<Option<&'static str>> {
        let h = hash_arg(hash, "hash")?.to_hex();
        self.with(py, |s| s.kind(&h)).map(|k| k.map(|k| k.as_str()))
    }

    fn get_head(&self, py: Python<'_>, id_hash: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let h = hash_arg(id_hash, "ID hash")?.to_hex();
        self.with(py, |s| s.get_head(&h)).map(|o| o.map(|h| h.to_hex()))
    }

    fn read_blob<'py>(&self, py: Python<'py>, hash: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        let h = hash_arg(hash, "hash")?.to_hex();
        let data = self.with(py, |s| s.read_blob(&h))?;
        Ok(PyBytes::new(py, &data))
    }

    fn missing(&self, py: Python<'_>, hashes: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let hs = hash_list(hashes)?;
        self.with(py, |s| s.missing(&hs)).map(hex_list)
    }

    fn children(&self, py: Python<'_>, hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let h = hash_arg(hash, "hash")?.to_hex();
        self.with(py, |s| s.children(&h)).map(hex_list)
    }

    fn version_nodes(&self, py: Python<'_>, id_hash: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let h = hash_arg(id_hash, "ID hash")?.to_hex();
        self.with(py, |s| s.version_nodes(&h)).map(hex_list)
    }

    fn last_seq(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |s| s.last_seq())
    }

    /// `Store.accessible_roots` as of this snapshot.
    #[pyo3(signature = (person, since = None), text_signature = "($self, person, since=0)")]
    fn accessible_roots(
        &self,
        py: Python<'_>,
        person: &Bound<'_, PyAny>,
        since: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<(u64, Vec<RootRow>)> {
        let p = hash_arg(person, "person")?;
        let since = match since {
            Some(s) => count_arg(s, "since")?,
            None => 0,
        };
        self.with(py, |s| s.accessible_roots(&p, since)).map(root_rows)
    }

    fn changes(
        &self,
        py: Python<'_>,
        since: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<(u64, String, &'static str)>> {
        let since = count_arg(since, "since")?;
        let limit = usize::try_from(count_arg(limit, "limit")?).unwrap_or(usize::MAX);
        self.with(py, |s| s.changes(since, limit)).map(event_rows)
    }
}

// ---------------------------------------------------------------- Subscription

/// Longest stretch `wait` spends without the GIL before it looks at Python signals, so Ctrl-C
/// interrupts a long wait.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// Default most events one `wait` returns (the rest come with the next call, at once).
const WAIT_LIMIT: usize = 1000;

/// Events committed after `Store.subscribe()` (docs/core-interface.md "Event feed").
#[pyclass(frozen, name = "Subscription", module = "lama._lama")]
pub struct PySubscription {
    inner: Mutex<Option<Subscription>>,
}

#[pymethods]
impl PySubscription {
    /// Sequence number of the last event returned (the feed's end when subscribed).
    #[getter]
    fn position(&self) -> PyResult<u64> {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(s) => Ok(s.position()),
            None => Err(to_py(Error::store("LAMA-CLOSED", "the subscription is closed"))),
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// The next events (at most `limit`), waiting up to `timeout` seconds for one; `[]` after
    /// the timeout. The GIL is released while waiting.
    ///
    /// `types` (issue 10): only the events of objects, ID objects and heads of these types
    /// (`Store.changes_of`); returns as soon as any event was committed, so `[]` may come
    /// back before the timeout while `position` moved past events of other types.
    #[pyo3(signature = (timeout, limit = None, types = None))]
    fn wait(
        &self,
        py: Python<'_>,
        timeout: &Bound<'_, PyAny>,
        limit: Option<&Bound<'_, PyAny>>,
        types: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(u64, String, &'static str)>> {
        let timeout = timeout_arg(timeout)?;
        let limit = match limit {
            Some(l) if !l.is_none() => usize::try_from(count_arg(l, "limit")?).unwrap_or(usize::MAX),
            _ => WAIT_LIMIT,
        };
        let types = match types {
            Some(t) if !t.is_none() => Some(types_arg(t)?),
            _ => None,
        };
        let refs: Option<Vec<&str>> = types.as_ref().map(|t| t.iter().map(String::as_str).collect());
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            let events = py
                .detach(|| {
                    let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                    match guard.as_mut() {
                        Some(s) => {
                            let before = s.position();
                            let events = match &refs {
                                Some(t) => s.wait_of(slice, limit, t),
                                None => s.wait(slice, limit),
                            };
                            events.map(|e| (s.position() != before, e))
                        }
                        None => Err(Error::store("LAMA-CLOSED", "the subscription is closed")),
                    }
                })
                .py()?;
            let (moved, events) = events;
            if moved || !events.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) || limit == 0 {
                return Ok(event_rows(events));
            }
            py.check_signals()?;
        }
    }

    /// Stop the subscription (it no longer keeps its store open); closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        let sub = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(sub));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }
}

// ---------------------------------------------------------------- CommitSignal

/// A file descriptor (Linux eventfd) made readable by the committing thread right after every
/// commit of this process that appended events (`Store::on_commit`), until `clear()`: an event
/// loop waits on it with `add_reader` instead of a thread waiting on a `Subscription` and
/// handing over (issue 10). Commits of other processes do not signal it.
#[pyclass(frozen, name = "CommitSignal", module = "lama._lama")]
pub struct PyCommitSignal {
    inner: Mutex<Option<(lama_core::store::CommitHook, Arc<OwnedFd>, OpenSignal)>>,
}

#[pymethods]
impl PyCommitSignal {
    /// The file descriptor to wait on for reading (`LAMA-CLOSED` once closed).
    fn fileno(&self) -> PyResult<i32> {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some((_, fd, _)) => Ok(fd.as_raw_fd()),
            None => Err(to_py(Error::store("LAMA-CLOSED", "the commit signal is closed"))),
        }
    }

    /// Make it unreadable until the next commit; `True` if a commit had signalled it.
    fn clear(&self) -> bool {
        match self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some((_, fd, _)) => {
                let mut n: u64 = 0;
                // SAFETY: reads 8 bytes into a valid u64 from an fd we own; never blocks
                let r = unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
                r == 8 && n > 0
            }
            None => false,
        }
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Stop signalling and close the descriptor (once no commit is calling the hook);
    /// closing twice is harmless.
    fn close(&self, py: Python<'_>) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(inner));
    }
}

// ---------------------------------------------------------------- check_hash

/// `value` if it is exactly 64 lowercase hex characters, else `MicrodataError LAMA-BADHASH`
/// naming `what` (docs/core-interface.md `check_hash`).
#[pyfunction]
#[pyo3(signature = (value, what = "hash"))]
fn check_hash<'py>(value: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyAny>> {
    hash_arg(value, what)?;
    Ok(value.clone())
}

/// Add `check_hash`, `Snapshot` and `Subscription` to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(check_hash, m)?)?;
    m.add_class::<PySnapshot>()?;
    m.add_class::<PySubscription>()?;
    m.add_class::<PyCommitSignal>()?;
    Ok(())
}
