//! Bindings of `lama-net` (docs/chum-session.md §3): `Transport`, `memory_pair`, `ws_connect`,
//! `ws_listen` / `Listener`, `spawn_session` / `SessionTask`.
//!
//! The extension owns one tokio multi-thread runtime (created at first use, two workers);
//! Python awaits its futures through pyo3-async-runtimes. The GIL is held only to convert a
//! message between Python and Rust at the boundary; moving bytes, waiting and the session
//! driver run on tokio without it.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lama_core::store::Store;
use lama_net::{Message, Protocol, StoreWatch, Transport, DEFAULT_MAX_MESSAGE};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString};
use pyo3_async_runtimes::tokio::future_into_py;
use tokio::sync::{mpsc, watch};

use crate::chum::PyChumSession;
use crate::errors::{to_py, LamaError};
use crate::store::PyStore;

pyo3::import_exception!(lama.errors, InvalidArgumentError);

/// The close reason of a session whose object raised (the error is re-raised by `wait`).
const REASON_FAILED: &str = "session failed";
/// The close reason of a Python session object stopped because the interpreter exits.
const REASON_CANCELLED_AT_EXIT: &str = "interpreter exiting";

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The extension's tokio runtime, created at first use and handed to pyo3-async-runtimes.
fn runtime() -> &'static tokio::runtime::Runtime {
    let rt = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lama-net")
            .enable_io()
            .enable_time()
            .build()
            .expect("cannot start the tokio runtime")
    });
    // the first caller registers it; later calls find it registered
    let _ = pyo3_async_runtimes::tokio::init_with_runtime(rt);
    rt
}

/// Set by the `atexit` hook: the interpreter is about to finalize.
static EXITING: AtomicBool = AtomicBool::new(false);

/// `future_into_py` for every awaitable of this module, guarded against interpreter exit.
///
/// pyo3-async-runtimes hands a finished future's result to asyncio from a tokio thread
/// (`call_soon_threadsafe`). Once the interpreter finalizes, that call touches freed objects:
/// a process that exited while a transport or a session task was still open died with SIGSEGV
/// in a tokio thread (benches/chum_side.py, about one exit in four). After the `atexit` hook
/// ran, a future that completes never resolves: nobody can await it any more.
fn py_future<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    runtime();
    future_into_py(py, async move {
        let r = fut.await;
        if EXITING.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
        r
    })
}

/// The `atexit` hook (registered by [`register`]): from now on no tokio thread hands a result
/// to Python or calls into a Python session object. The GIL is released for a moment so
/// that a hand-over already past the check (waiting for the GIL) completes while the
/// interpreter is still whole.
#[pyfunction]
fn at_exit(py: Python<'_>) {
    EXITING.store(true, Ordering::Release);
    if RUNTIME.get().is_some() {
        py.detach(|| std::thread::sleep(Duration::from_millis(50)));
    }
}

fn arg_error(message: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(format!("LAMA-ARG: {}", message.into()))
}

/// Core errors of the net layer; `LAMA-ARG` (a bad URL or host) is an argument error.
fn net_err(e: lama_core::Error) -> PyErr {
    if e.code == "LAMA-ARG" {
        arg_error(e.message)
    } else {
        to_py(e)
    }
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// A Python message (`str` = text, bytes-like = binary) as a [`Message`].
fn message_arg(py: Python<'_>, msg: &Bound<'_, PyAny>) -> PyResult<Message> {
    if let Ok(s) = msg.cast::<PyString>() {
        let text = s.to_str().map_err(|_| arg_error("a text message must be valid Unicode (no lone surrogates)"))?;
        return Ok(Message::Text(py.detach(|| text.to_owned())));
    }
    if let Ok(b) = msg.cast::<PyBytes>() {
        let data = b.as_bytes();
        return Ok(Message::Binary(py.detach(|| data.to_vec())));
    }
    if let Ok(b) = msg.cast::<PyByteArray>() {
        return Ok(Message::Binary(b.to_vec()));
    }
    if msg.cast::<PyMemoryView>().is_ok() {
        let b = py.import("builtins")?.getattr("bytes")?.call1((msg,))?;
        return Ok(Message::Binary(b.cast::<PyBytes>()?.as_bytes().to_vec()));
    }
    Err(arg_error(format!("a message is str or bytes, got {}", type_name(msg))))
}

/// A close reason argument (default `""`), cut to `MAX_REASON` bytes; anything but a valid
/// `str` is `LAMA-ARG` (extraction errors that are not TypeErrors reach Python unchanged).
struct Reason(String);

impl<'a, 'py> FromPyObject<'a, 'py> for Reason {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Reason> {
        let s = obj
            .cast::<PyString>()
            .map_err(|_| arg_error(format!("a close reason is a str, got {}", type_name(&obj))))?;
        let s = s.to_str().map_err(|_| arg_error("a close reason must be valid Unicode (no lone surrogates)"))?;
        Ok(Reason(lama_net::truncate_reason(s)))
    }
}

/// The `max_message` argument: a positive int (default 64 MiB), else `LAMA-ARG`.
struct MaxMessage(usize);

impl Default for MaxMessage {
    fn default() -> Self {
        MaxMessage(DEFAULT_MAX_MESSAGE)
    }
}

impl<'a, 'py> FromPyObject<'a, 'py> for MaxMessage {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<MaxMessage> {
        let bad = || arg_error(format!("max_message must be a positive int, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default()));
        if v.cast::<PyBool>().is_ok() || v.cast::<PyInt>().is_err() {
            return Err(bad());
        }
        match v.extract::<i128>() {
            Ok(n) if n >= 1 => Ok(MaxMessage(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(bad()),
        }
    }
}

/// A received message for Python: `str` or `bytes`.
struct PyMessage(Message);

impl<'py> IntoPyObject<'py> for PyMessage {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.0 {
            Message::Text(t) => PyString::new(py, &t).into_any(),
            Message::Binary(b) => PyBytes::new(py, &b).into_any(),
        })
    }
}

/// An awaitable whose result is already known (`await` returns it, or raises the error at
/// once): what a transport call that did not have to wait returns.
#[pyclass(module = "lama._lama", name = "_Ready")]
struct Ready {
    result: Option<PyResult<Py<PyAny>>>,
}

impl Ready {
    fn new(py: Python<'_>, result: PyResult<Py<PyAny>>) -> PyResult<Bound<'_, PyAny>> {
        Ok(Bound::new(py, Ready { result: Some(result) })?.into_any())
    }
}

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self) -> PyResult<()> {
        match self.result.take() {
            Some(Ok(v)) => Err(pyo3::exceptions::PyStopIteration::new_err((v,))),
            Some(Err(e)) => Err(e),
            None => Err(pyo3::exceptions::PyStopIteration::new_err(())),
        }
    }
}

/// A message transport (docs/chum-session.md §3). Made by `memory_pair`, `ws_connect` and
/// `Listener.accept`.
#[pyclass(frozen, subclass, name = "Transport", module = "lama._lama")]
pub struct PyTransport {
    inner: Arc<Transport>,
}

#[pymethods]
impl PyTransport {
    /// Send one message (`str`: text, `bytes`: binary), waiting while the peer is behind.
    fn send<'py>(&self, py: Python<'py>, msg: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let m = message_arg(py, msg)?;
        // room in the buffer: done without a trip through tokio (a thread hand-off each way)
        let m = match self.inner.send_now(m) {
            Ok(None) => return Ready::new(py, Ok(py.None())),
            Err(e) => return Ready::new(py, Err(net_err(e))),
            Ok(Some(m)) => m,
        };
        let t = self.inner.clone();
        py_future(py, async move { t.send(m).await.map_err(net_err) })
    }

    /// The next message, or `None` once closed.
    fn recv<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(m) = self.inner.recv_now() {
            let v = m.map(PyMessage).into_pyobject(py)?.unbind();
            return Ready::new(py, Ok(v));
        }
        let t = self.inner.clone();
        py_future(py, async move { Ok(t.recv().await.map(PyMessage)) })
    }

    /// Close with a reason (idempotent); the peer sees the reason.
    #[pyo3(signature = (reason = Reason(String::new())))]
    fn close<'py>(&self, py: Python<'py>, reason: Reason) -> PyResult<Bound<'py, PyAny>> {
        let reason = reason.0;
        let t = self.inner.clone();
        py_future(py, async move {
            t.close(&reason).await;
            Ok(())
        })
    }

    /// The close reason once closed (by either side), else `None`.
    #[getter]
    fn close_reason(&self) -> Option<String> {
        self.inner.close_reason()
    }
}

/// Two connected in-memory transports with bounded buffers.
#[pyfunction]
#[pyo3(signature = (*, max_message = MaxMessage::default()))]
fn memory_pair(max_message: MaxMessage) -> PyResult<(PyTransport, PyTransport)> {
    let (a, b) = lama_net::memory_pair(Some(max_message.0));
    Ok((PyTransport { inner: Arc::new(a) }, PyTransport { inner: Arc::new(b) }))
}

/// Connect to a `ws://` URL.
#[pyfunction]
#[pyo3(signature = (url, *, max_message = MaxMessage::default()))]
fn ws_connect<'py>(py: Python<'py>, url: &Bound<'py, PyAny>, max_message: MaxMessage) -> PyResult<Bound<'py, PyAny>> {
    let max = max_message.0;
    let url = url
        .cast::<PyString>()
        .map_err(|_| arg_error(format!("a URL is a str, got {}", type_name(url))))?
        .to_str()
        .map_err(|_| arg_error("a URL must be valid Unicode"))?
        .to_owned();
    py_future(py, async move {
        let t = lama_net::ws_connect(&url, Some(max)).await.map_err(net_err)?;
        Ok(PyTransport { inner: Arc::new(t) })
    })
}

/// A WebSocket listener (made by `ws_listen`).
#[pyclass(frozen, name = "Listener", module = "lama._lama")]
pub struct PyListener {
    inner: Arc<lama_net::Listener>,
}

#[pymethods]
impl PyListener {
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    /// The next connection (its WebSocket handshake done).
    fn accept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.inner.clone();
        py_future(py, async move {
            let t = l.accept().await.map_err(net_err)?;
            Ok(PyTransport { inner: Arc::new(t) })
        })
    }

    /// Stop listening; accepted connections stay open.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.inner.clone();
        py_future(py, async move {
            l.close().await;
            Ok(())
        })
    }
}

/// Listen on exactly `host` and `port` (0: any free port).
#[pyfunction]
#[pyo3(signature = (host, port, *, max_message = MaxMessage::default()))]
fn ws_listen<'py>(
    py: Python<'py>,
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
    max_message: MaxMessage,
) -> PyResult<Bound<'py, PyAny>> {
    let max = max_message.0;
    let host = host
        .cast::<PyString>()
        .map_err(|_| arg_error(format!("a host is a str, got {}", type_name(host))))?
        .to_str()
        .map_err(|_| arg_error("a host must be valid Unicode"))?
        .to_owned();
    let bad_port = || arg_error(format!("a port is an int in 0..65535, got {}", port.repr().map(|r| r.to_string()).unwrap_or_default()));
    if port.cast::<PyBool>().is_ok() || port.cast::<PyInt>().is_err() {
        return Err(bad_port());
    }
    let port: u16 = port.extract().map_err(|_| bad_port())?;
    py_future(py, async move {
        let l = lama_net::ws_listen(&host, port, Some(max)).await.map_err(net_err)?;
        Ok(PyListener { inner: Arc::new(l) })
    })
}

// -- sessions ----------------------------------------------------------------------------------

/// One session event on its way to Python: already a Python object (a Python session), or a
/// native event converted when Python takes it.
pub(crate) enum SessionEvent {
    Py(Py<PyAny>),
    Native(Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>),
}

struct EventBatch(Vec<SessionEvent>);

impl<'py> IntoPyObject<'py> for EventBatch {
    type Target = PyList;
    type Output = Bound<'py, PyList>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for ev in self.0 {
            match ev {
                SessionEvent::Py(o) => list.append(o)?,
                SessionEvent::Native(f) => list.append(f(py)?)?,
            }
        }
        Ok(list)
    }
}

/// The statistics of a finished session.
enum Stats {
    Py(Py<PyAny>),
    Native(Vec<(String, i64)>),
}

impl<'py> IntoPyObject<'py> for Stats {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Stats::Py(o) => Ok(o.into_bound(py)),
            Stats::Native(v) => {
                let d = PyDict::new(py);
                for (k, n) in v {
                    d.set_item(k, n)?;
                }
                Ok(d.into_any())
            }
        }
    }
}

enum Outcome {
    Stats(Stats),
    Failed(PyErr),
}

/// What the binding needs from a protocol beyond [`Protocol`].
trait Session: Protocol<Event = SessionEvent> {
    /// At the end: the statistics, or the error that ended it.
    fn outcome(self) -> Outcome;
}

/// The events of a running session on their way to Python (issue 8/10: the hand-over).
///
/// The driver sends each event into `rx`'s channel and, once a batch is sent, bumps `signal`
/// (an eventfd, from the driver's thread, without the GIL). The event loop that awaits
/// `events()` watches that fd (`loop.add_reader`): its callback takes the batch and resolves
/// the waiting future on the loop's own thread. Before, each `events()` went through
/// pyo3-async-runtimes: two tokio tasks, a blocking-pool thread that took the GIL and a
/// `call_soon_threadsafe` (three thread wake-ups between the import and the application,
/// 1-1.4 ms at load 5-8 in the live push's per-step timestamps); now the loop's wake-up is
/// the only one. A loop without `add_reader` (or a system without eventfd) waits on `notify`
/// through pyo3-async-runtimes, as before.
struct EventPipe {
    rx: std::sync::Mutex<mpsc::UnboundedReceiver<SessionEvent>>,
    /// Bumped with `signal` (the fallback's wake-up).
    notify: tokio::sync::Notify,
    #[cfg(target_os = "linux")]
    fd: Option<std::os::fd::OwnedFd>,
    /// Touched with the GIL only: the futures of pending `events()` calls (oldest first) and
    /// the loop `fd` is registered with.
    waiters: std::sync::Mutex<VecDeque<Py<PyAny>>>,
    reader: std::sync::Mutex<Option<Py<PyAny>>>,
}

impl EventPipe {
    fn new(rx: mpsc::UnboundedReceiver<SessionEvent>) -> EventPipe {
        #[cfg(target_os = "linux")]
        let fd = {
            use std::os::fd::FromRawFd;
            // SAFETY: eventfd has no memory arguments; a valid fd is owned below
            let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
            // SAFETY: `raw` is a new fd nobody else owns
            (raw >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
        };
        EventPipe {
            rx: std::sync::Mutex::new(rx),
            notify: tokio::sync::Notify::new(),
            #[cfg(target_os = "linux")]
            fd,
            waiters: std::sync::Mutex::new(VecDeque::new()),
            reader: std::sync::Mutex::new(None),
        }
    }

    /// Events were sent (or the channel closed): wake whoever waits. Any thread, no GIL.
    fn signal(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to an fd this pipe owns; EFD_NONBLOCK (at
            // worst EAGAIN at the counter's maximum, which leaves it readable anyway)
            unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
        self.notify.notify_one();
    }

    #[cfg(target_os = "linux")]
    fn raw_fd(&self) -> Option<i32> {
        use std::os::fd::AsRawFd;
        self.fd.as_ref().map(|f| f.as_raw_fd())
    }

    #[cfg(not(target_os = "linux"))]
    fn raw_fd(&self) -> Option<i32> {
        None
    }

    fn clear(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a valid u64 from an fd this pipe owns (non-blocking)
            unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }

    /// What has come: `Some(batch)`, `Some(None)` once the session ended and everything was
    /// taken, `None` when nothing is there yet.
    fn take(&self) -> Option<Option<EventBatch>> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Some(if batch.is_empty() { None } else { Some(EventBatch(batch)) });
                }
            }
        }
        if batch.is_empty() { None } else { Some(Some(EventBatch(batch))) }
    }

    fn ended(&self) -> bool {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        rx.is_closed() && rx.is_empty()
    }

    /// With the GIL, on the loop's thread: hand what came to the oldest waiting futures; stop
    /// watching the fd once the session ended and that was said.
    fn deliver(&self, py: Python<'_>) -> PyResult<()> {
        self.clear();
        loop {
            let fut = {
                let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                // a cancelled `events()` took nothing: its events go to the next call
                while let Some(f) = w.front() {
                    if f.bind(py).call_method0("done")?.is_truthy()? {
                        w.pop_front();
                    } else {
                        break;
                    }
                }
                match w.front() {
                    Some(f) => f.clone_ref(py),
                    None => break,
                }
            };
            let Some(got) = self.take() else { break };
            self.waiters.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
            fut.bind(py).call_method1("set_result", (got.into_pyobject(py)?,))?;
        }
        if self.ended() && self.waiters.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            self.unwatch(py);
        }
        Ok(())
    }

    fn unwatch(&self, py: Python<'_>) {
        let old = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let (Some(old), Some(fd)) = (old, self.raw_fd()) {
            let old = old.bind(py);
            if !old.call_method0("is_closed").and_then(|c| c.is_truthy()).unwrap_or(true) {
                let _ = old.call_method1("remove_reader", (fd,));
            }
        }
    }

    /// Watch the fd on `lp` (the running loop); `false` if this loop cannot (no `add_reader`,
    /// no eventfd).
    fn watch(self: &Arc<Self>, py: Python<'_>, lp: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Some(fd) = self.raw_fd() else { return Ok(false) };
        if self.reader.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|r| r.bind(py).is(lp)) {
            return Ok(true);
        }
        self.unwatch(py);
        let ready = Py::new(py, PyEventsReady { pipe: self.clone() })?;
        match lp.call_method1("add_reader", (fd, ready)) {
            Ok(_) => {
                *self.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(lp.clone().unbind());
                Ok(true)
            }
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The callback the event loop runs when a session's event fd is readable.
#[pyclass(frozen, name = "_EventsReady", module = "lama._lama")]
struct PyEventsReady {
    pipe: Arc<EventPipe>,
}

#[pymethods]
impl PyEventsReady {
    /// The fd is readable: clear it, and deliver on the loop's next round when a commit
    /// signal is open in this process, else at once. A commit's events and its commit signal
    /// (`Store.commit_signal`, the chat's feed) wake the loop together; the chat reads its
    /// feed in the signal's callback and queues its callbacks with `call_soon`, so delivering
    /// the batch after them lets the application see the message before the session's
    /// consumer (merge, manager, tracer) runs. With no commit signal nothing is queued that
    /// way, and the round would only delay the consumer (B of the live push, issue 8).
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let pipe = &slf.get().pipe;
        pipe.clear();
        let lp = if crate::store_api::commit_signals_open() {
            pipe.reader.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|l| l.clone_ref(py))
        } else {
            None
        };
        match lp {
            Some(lp) => {
                lp.bind(py).call_method1("call_soon", (slf.getattr("deliver")?,))?;
                Ok(())
            }
            None => pipe.deliver(py),
        }
    }

    fn deliver(&self, py: Python<'_>) -> PyResult<()> {
        self.pipe.deliver(py)
    }
}

/// Forwards a protocol's events and signals the [`EventPipe`] once per batch: the driver
/// hands out events by calling `poll_event` until it returns `None`, so that `None` comes
/// right after the batch's last send.
struct Signalled<P> {
    inner: P,
    pipe: Arc<EventPipe>,
    handed: bool,
}

impl<P: Session> Protocol for Signalled<P> {
    type Event = SessionEvent;
    fn start(&mut self, now: Instant) {
        self.inner.start(now)
    }
    fn handle_message(&mut self, msg: Message, now: Instant) {
        self.inner.handle_message(msg, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now)
    }
    fn store_pending(&mut self, pending: &std::sync::Arc<lama_core::store::PendingCommit>, now: Instant) {
        self.inner.store_pending(pending, now)
    }
    fn store_changed(&mut self, now: Instant) {
        self.inner.store_changed(now)
    }
    fn connection_closed(&mut self, reason: &str, now: Instant) {
        self.inner.connection_closed(reason, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        self.inner.poll_transmit()
    }
    fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.inner.poll_event();
        if ev.is_some() {
            self.handed = true;
        } else if std::mem::take(&mut self.handed) {
            self.pipe.signal();
        }
        ev
    }
    fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
    fn close_reason(&self) -> Option<&str> {
        self.inner.close_reason()
    }
    fn idle_due(&self) -> bool {
        self.inner.idle_due()
    }
    fn idle(&mut self, now: Instant) {
        self.inner.idle(now)
    }
}

/// A running session (made by `spawn_session`).
#[pyclass(frozen, name = "SessionTask", module = "lama._lama")]
pub struct PySessionTask {
    pipe: Arc<EventPipe>,
    outcome: watch::Receiver<Option<Arc<Outcome>>>,
    cancel: watch::Sender<bool>,
}

#[pymethods]
impl PySessionTask {
    /// The events since the last call (waits for one); `None` once the session ended and every
    /// event was returned.
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let lp = py.import("asyncio")?.call_method0("get_running_loop")?;
        let pipe = self.pipe.clone();
        if pipe.watch(py, &lp)? {
            let fut = lp.call_method0("create_future")?;
            let none_waiting = pipe.waiters.lock().unwrap_or_else(|e| e.into_inner()).is_empty();
            if none_waiting {
                if let Some(got) = pipe.take() {
                    // already there: a done future (awaiting it does not go through the loop)
                    fut.call_method1("set_result", (got.into_pyobject(py)?,))?;
                    if pipe.ended() {
                        pipe.unwatch(py);
                    }
                    return Ok(fut);
                }
            }
            pipe.waiters.lock().unwrap_or_else(|e| e.into_inner()).push_back(fut.clone().unbind());
            return Ok(fut);
        }
        // this loop cannot watch a fd: a tokio task waits for the signal (the former way)
        py_future(py, async move {
            loop {
                let notified = pipe.notify.notified();
                if let Some(got) = pipe.take() {
                    return Ok(got);
                }
                notified.await;
            }
        })
    }

    /// Wait for the end of the session; its statistics.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut outcome = self.outcome.clone();
        py_future(py, async move {
            let done = match outcome.wait_for(|o| o.is_some()).await {
                Ok(o) => o.clone().expect("waited for it"),
                Err(_) => return Err(LamaError::new_err("LAMA-INTERNAL: the session task ended abnormally")),
            };
            if EXITING.load(Ordering::Acquire) {
                std::future::pending::<()>().await // see `py_future`: no GIL any more
            }
            match &*done {
                Outcome::Stats(Stats::Py(o)) => Python::attach(|py| Ok(Stats::Py(o.clone_ref(py)))),
                Outcome::Stats(Stats::Native(v)) => Ok(Stats::Native(v.clone())),
                Outcome::Failed(e) => Python::attach(|py| Err(e.clone_ref(py))),
            }
        })
    }

    /// End the session: the transport closes with "cancelled".
    fn cancel(&self) {
        self.cancel.send_replace(true);
    }
}

fn spawn<P: Session>(protocol: P, transport: Arc<Transport>, store: Option<Store>) -> PyResult<PySessionTask> {
    let rt = runtime();
    let _ctx = rt.enter();
    let store_watch = store.map(|s| StoreWatch::new(&s)).transpose().map_err(to_py)?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (outcome_tx, outcome_rx) = watch::channel(None);
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let pipe = Arc::new(EventPipe::new(events_rx));
    let protocol = Signalled { inner: protocol, pipe: pipe.clone(), handed: false };
    let end = pipe.clone();
    rt.spawn(async move {
        let p = lama_net::run_until_cancelled(protocol, transport, events_tx, store_watch, cancel_rx).await;
        outcome_tx.send_replace(Some(Arc::new(p.inner.outcome())));
        // the events channel closed with the driver: `events()` returns None once it is empty
        end.signal();
    });
    Ok(PySessionTask { pipe, outcome: outcome_rx, cancel: cancel_tx })
}

/// Drive `session` over `transport` in a tokio task.
///
/// The Rust core's `ChumSession` runs natively, without the GIL ([`ChumNative`]); any other
/// object with the `ChumSession` methods (docs/chum-session.md §2) is called with the GIL
/// taken briefly from the driver ([`PyProtocol`]).
#[pyfunction]
#[pyo3(signature = (session, transport, *, store = None))]
fn spawn_session(
    py: Python<'_>,
    session: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
    store: Option<&Bound<'_, PyAny>>,
) -> PyResult<PySessionTask> {
    let transport = transport
        .cast::<PyTransport>()
        .map_err(|_| arg_error(format!("spawn_session needs a Transport, got {}", type_name(transport))))?
        .get()
        .inner
        .clone();
    let store = match store {
        Some(s) if !s.is_none() => Some(s.clone()),
        _ => session.getattr_opt("store")?.filter(|s| !s.is_none()),
    };
    let store = match store {
        None => None,
        Some(s) => Some(
            s.cast::<PyStore>()
                .map_err(|_| arg_error(format!("store must be a Store, got {}", type_name(&s))))?
                .get()
                .store()?,
        ),
    };
    // the Rust core's own ChumSession runs natively: its calls never take the GIL
    if let Ok(chum) = session.cast::<PyChumSession>() {
        return spawn(Native(ChumNative::new(chum.clone().unbind())), transport, store);
    }
    let protocol = PyProtocol::new(py, session)?;
    spawn(protocol, transport, store)
}

// -- the Rust core's ChumSession ----------------------------------------------------------------

/// Drives the `lama_chum::Session` inside a `ChumSession` pyclass without the GIL: the pyclass
/// is frozen and keeps the session behind its own mutex, so `Py::get` reaches it from any
/// thread. The driver's `Instant`s go to the session as they are (no float seconds).
struct ChumNative {
    obj: Py<PyChumSession>,
    finished: bool,
    reason: Option<String>,
}

impl ChumNative {
    fn new(obj: Py<PyChumSession>) -> ChumNative {
        let mut n = ChumNative { obj, finished: false, reason: None };
        n.with(|_| {});
        n
    }

    /// Run `f` on the session, then refresh what the driver reads through `&self`.
    fn with<T>(&mut self, f: impl FnOnce(&mut lama_chum::Session) -> T) -> T {
        let mut g = self.obj.get().lock();
        let out = f(&mut g.session);
        self.finished = g.session.is_finished();
        self.reason = g.session.close_reason().map(str::to_string);
        out
    }
}

fn chum_message(m: Message) -> lama_chum::Message {
    match m {
        Message::Text(t) => lama_chum::Message::Text(t),
        Message::Binary(b) => lama_chum::Message::Binary(b),
    }
}

impl Protocol for ChumNative {
    type Event = lama_chum::Event;
    fn start(&mut self, now: Instant) {
        self.with(|s| s.start(now))
    }
    fn handle_message(&mut self, msg: Message, now: Instant) {
        self.with(|s| s.handle_message(chum_message(msg), now))
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.with(|s| s.handle_timeout(now))
    }
    fn store_pending(&mut self, pending: &std::sync::Arc<lama_core::store::PendingCommit>, now: Instant) {
        self.with(|s| s.store_pending(pending, now))
    }
    fn store_changed(&mut self, now: Instant) {
        self.with(|s| s.store_changed(now))
    }
    fn connection_closed(&mut self, reason: &str, now: Instant) {
        self.with(|s| s.connection_closed(reason, now))
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.obj.get().lock().session.poll_timeout()
    }
    fn idle_due(&self) -> bool {
        self.obj.get().lock().session.idle_due()
    }
    fn idle(&mut self, now: Instant) {
        self.with(|s| s.idle(now))
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        self.with(|s| s.poll_transmit()).map(|m| match m {
            lama_chum::Message::Text(t) => Message::Text(t),
            lama_chum::Message::Binary(b) => Message::Binary(b),
        })
    }
    fn poll_event(&mut self) -> Option<lama_chum::Event> {
        self.with(|s| s.poll_event())
    }
    fn is_finished(&self) -> bool {
        self.finished
    }
    fn close_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl NativeSession for ChumNative {
    fn event_to_py(ev: lama_chum::Event, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let data = crate::chum::event_data_py(py, &ev)?;
        Ok(pyo3::types::PyTuple::new(py, [PyString::new(py, ev.kind()).into_any(), data])?.into_any().unbind())
    }
    fn stats(&self) -> Vec<(String, i64)> {
        let s = self.obj.get().lock().session.stats();
        s.fields().iter().map(|(k, v)| (k.to_string(), i64::try_from(*v).unwrap_or(i64::MAX))).collect()
    }
}

// -- a session written in Python -----------------------------------------------------------------

/// Runs an object with the `ChumSession` methods: every call takes the GIL, and refreshes the
/// driver's view (transmits, events, deadline, finished, close reason) in the same visit.
struct PyProtocol {
    obj: Py<PyAny>,
    /// `time.monotonic()` at `t0`: both are CLOCK_MONOTONIC, the session sees float seconds.
    t0: Instant,
    m0: f64,
    out: VecDeque<Message>,
    events: VecDeque<SessionEvent>,
    deadline: Option<Instant>,
    finished: bool,
    reason: Option<String>,
    error: Option<PyErr>,
}

impl PyProtocol {
    fn new(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<PyProtocol> {
        let m0: f64 = py.import("time")?.call_method0("monotonic")?.extract()?;
        Ok(PyProtocol {
            obj: obj.clone().unbind(),
            t0: Instant::now(),
            m0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            deadline: None,
            finished: false,
            reason: None,
            error: None,
        })
    }

    fn secs(&self, now: Instant) -> f64 {
        self.m0 + now.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn instant(&self, t: f64) -> Option<Instant> {
        if t.is_nan() || t == f64::INFINITY {
            return None;
        }
        // rounded up (plus a microsecond): at the Instant given back, `secs(now) >= t` holds,
        // so a session comparing `now >= deadline` sees its deadline as due
        let after = ((t - self.m0).max(0.0) * 1e9).ceil() + 1e3;
        if after >= u64::MAX as f64 {
            return None;
        }
        self.t0.checked_add(Duration::from_nanos(after as u64))
    }

    /// Call into the session, then refresh the driver's view of it.
    fn call(&mut self, f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<()>) {
        if self.error.is_some() {
            return;
        }
        if EXITING.load(Ordering::Acquire) {
            // the interpreter is finalizing (see `py_future`): stop calling into it
            self.finished = true;
            self.reason = Some(REASON_CANCELLED_AT_EXIT.to_string());
            self.out.clear();
            self.deadline = None;
            return;
        }
        Python::attach(|py| {
            let obj = self.obj.clone_ref(py).into_bound(py);
            if let Err(e) = f(py, &obj).and_then(|_| self.refresh(py, &obj)) {
                self.error = Some(e);
                self.finished = true;
                self.reason = Some(REASON_FAILED.to_string());
                self.out.clear();
                self.deadline = None;
            }
        })
    }

    fn refresh(&mut self, py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        for m in obj.call_method0("poll_transmit")?.try_iter()? {
            self.out.push_back(message_arg(py, &m?)?);
        }
        for e in obj.call_method0("poll_events")?.try_iter()? {
            self.events.push_back(SessionEvent::Py(e?.unbind()));
        }
        let t = obj.call_method0("poll_timeout")?;
        self.deadline = if t.is_none() { None } else { self.instant(t.extract::<f64>()?) };
        self.finished = obj.getattr("finished")?.is_truthy()?;
        self.reason = obj.getattr("close_reason")?.extract::<Option<String>>()?;
        Ok(())
    }
}

impl Protocol for PyProtocol {
    type Event = SessionEvent;

    fn start(&mut self, now: Instant) {
        let t = self.secs(now);
        self.call(|_, o| o.call_method1("start", (t,)).map(drop));
    }

    fn handle_message(&mut self, msg: Message, now: Instant) {
        let t = self.secs(now);
        self.call(|py, o| match msg {
            Message::Text(s) => o.call_method1("receive_text", (s, t)).map(drop),
            Message::Binary(b) => o.call_method1("receive_binary", (PyBytes::new(py, &b), t)).map(drop),
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        let t = self.secs(now);
        self.call(|_, o| o.call_method1("handle_timeout", (t,)).map(drop));
    }

    fn store_changed(&mut self, now: Instant) {
        let t = self.secs(now);
        self.call(|_, o| o.call_method1("store_changed", (t,)).map(drop));
    }

    fn connection_closed(&mut self, reason: &str, now: Instant) {
        let t = self.secs(now);
        self.call(|_, o| o.call_method1("connection_closed", (reason, t)).map(drop));
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    fn poll_transmit(&mut self) -> Option<Message> {
        self.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn close_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl Session for PyProtocol {
    fn outcome(self) -> Outcome {
        if let Some(e) = self.error {
            return Outcome::Failed(e);
        }
        if EXITING.load(Ordering::Acquire) {
            // the interpreter is finalizing (see `py_future`): no stats from the object
            return Outcome::Stats(Stats::Native(Vec::new()));
        }
        Python::attach(|py| {
            // dict(session.stats()) if it has stats(), else {} (as the pure core)
            let stats = || -> PyResult<Py<PyAny>> {
                let obj = self.obj.bind(py);
                let dict = py.import("builtins")?.getattr("dict")?;
                match obj.getattr_opt("stats")? {
                    Some(f) if f.is_callable() => Ok(dict.call1((f.call0()?,))?.unbind()),
                    _ => Ok(dict.call0()?.unbind()),
                }
            };
            match stats() {
                Ok(d) => Outcome::Stats(Stats::Py(d)),
                Err(e) => Outcome::Failed(e),
            }
        })
    }
}

// -- a session written in Rust -------------------------------------------------------------------

/// A Rust session (the Rust core's `ChumSession`, `lama_chum::Session`) as the binding runs it:
/// its events become Python objects only when Python takes them; it never takes the GIL.
pub(crate) trait NativeSession: Protocol {
    fn event_to_py(ev: Self::Event, py: Python<'_>) -> PyResult<Py<PyAny>>;
    fn stats(&self) -> Vec<(String, i64)>;
}

struct Native<S>(S);

impl<S: NativeSession> Protocol for Native<S> {
    type Event = SessionEvent;
    fn start(&mut self, now: Instant) {
        self.0.start(now)
    }
    fn handle_message(&mut self, msg: Message, now: Instant) {
        self.0.handle_message(msg, now)
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now)
    }
    fn store_pending(&mut self, pending: &std::sync::Arc<lama_core::store::PendingCommit>, now: Instant) {
        self.0.store_pending(pending, now)
    }
    fn store_changed(&mut self, now: Instant) {
        self.0.store_changed(now)
    }
    fn connection_closed(&mut self, reason: &str, now: Instant) {
        self.0.connection_closed(reason, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        self.0.poll_transmit()
    }
    fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.0.poll_event()?;
        Some(SessionEvent::Native(Box::new(move |py| S::event_to_py(ev, py))))
    }
    fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
    fn close_reason(&self) -> Option<&str> {
        self.0.close_reason()
    }
    fn idle_due(&self) -> bool {
        self.0.idle_due()
    }
    fn idle(&mut self, now: Instant) {
        self.0.idle(now)
    }
}

impl<S: NativeSession> Session for Native<S> {
    fn outcome(self) -> Outcome {
        Outcome::Stats(Stats::Native(self.0.stats()))
    }
}

// -- encrypted connections (docs/connections.md §1) --------------------------------------------

/// An encrypted connection (conn §2.4–2.7, §4): a `Transport` (so `spawn_session` runs a
/// session over it) with its keys, role and statistics.
#[pyclass(frozen, extends = PyTransport, name = "EncryptedConnection", module = "lama._lama")]
pub struct PyEncryptedConnection {}

fn enc_info(slf: &Bound<'_, PyEncryptedConnection>) -> Arc<Transport> {
    slf.as_super().get().inner.clone()
}

#[pymethods]
impl PyEncryptedConnection {
    /// Our static public key on this connection (for the acceptor: the target key it owns).
    #[getter]
    fn local_key<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyBytes> {
        let t = enc_info(slf);
        PyBytes::new(slf.py(), &t.encrypted().expect("an encrypted transport").local_key)
    }

    /// The peer's static public key (proven by the handshake, conn §4.1).
    #[getter]
    fn remote_key<'py>(slf: &Bound<'py, Self>) -> Bound<'py, PyBytes> {
        let t = enc_info(slf);
        PyBytes::new(slf.py(), &t.encrypted().expect("an encrypted transport").remote_key)
    }

    /// True on the side that opened the connection (sent `communication_request`).
    #[getter]
    fn initiator(slf: &Bound<'_, Self>) -> bool {
        enc_info(slf).encrypted().expect("an encrypted transport").initiator
    }

    /// conn §2.7: bytes_sent, bytes_received (wire), messages_sent, messages_received,
    /// open_time, close_time (epoch ms or None), close_reason (or None).
    fn stats<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let t = enc_info(slf);
        let s = t.encrypted().expect("an encrypted transport").stats();
        let d = PyDict::new(slf.py());
        d.set_item("bytes_sent", s.bytes_sent)?;
        d.set_item("bytes_received", s.bytes_received)?;
        d.set_item("messages_sent", s.messages_sent)?;
        d.set_item("messages_received", s.messages_received)?;
        d.set_item("open_time", s.open_time)?;
        d.set_item("close_time", s.close_time)?;
        d.set_item("close_reason", t.close_reason())?;
        Ok(d)
    }
}

/// A new encrypted connection on its way to Python (made when Python takes it).
struct NewEncrypted(Transport);

impl<'py> IntoPyObject<'py> for NewEncrypted {
    type Target = PyEncryptedConnection;
    type Output = Bound<'py, PyEncryptedConnection>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Bound<'py, PyEncryptedConnection>> {
        let init = PyClassInitializer::from(PyTransport { inner: Arc::new(self.0) }).add_subclass(PyEncryptedConnection {});
        Bound::new(py, init)
    }
}

/// A 32-byte key argument (`bytes`), else `LAMA-ARG`.
fn key32_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<[u8; 32]> {
    let b = v.cast::<PyBytes>().map_err(|_| arg_error(format!("{what} is 32 bytes, got {}", type_name(v))))?;
    b.as_bytes().try_into().map_err(|_| arg_error(format!("{what} is 32 bytes, got {} bytes", b.as_bytes().len())))
}

/// A duration argument in seconds: a positive finite number, else `LAMA-ARG`.
fn secs_arg(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let bad = || arg_error(format!("{what} must be a positive number of seconds, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default()));
    if v.cast::<PyBool>().is_ok() {
        return Err(bad());
    }
    let x: f64 = v.extract().map_err(|_| bad())?;
    if x.is_nan() || x <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(x).map_err(|_| bad())
}

/// The options shared by connect and accept (tests may fix the ephemeral key and padding).
#[allow(clippy::too_many_arguments)]
fn enc_options(
    open_timeout: Option<&Bound<'_, PyAny>>,
    timeout: &Bound<'_, PyAny>,
    keepalive: &Bound<'_, PyAny>,
    dead_after: &Bound<'_, PyAny>,
    max_message: MaxMessage,
    ephemeral: Option<&Bound<'_, PyAny>>,
    padding: Option<&Bound<'_, PyAny>>,
) -> PyResult<lama_net::EncryptedOptions> {
    let mut o = lama_net::EncryptedOptions::default();
    if let Some(v) = open_timeout {
        o.open_timeout = secs_arg(v, "open_timeout")?;
    }
    o.timeout = secs_arg(timeout, "timeout")?;
    o.keepalive = secs_arg(keepalive, "keepalive")?;
    o.dead_after = secs_arg(dead_after, "dead_after")?;
    o.max_message = max_message.0;
    if let Some(e) = ephemeral.filter(|e| !e.is_none()) {
        let (p, s): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
            e.extract().map_err(|_| arg_error("_ephemeral is a (public, secret) pair of 32-byte keys"))?;
        o.ephemeral = Some((key32_arg(&p, "an ephemeral public key")?, key32_arg(&s, "an ephemeral secret key")?));
    }
    if let Some(list) = padding.filter(|p| !p.is_none()) {
        for item in list.try_iter().map_err(|_| arg_error("_padding is a list of (r, filler) pairs"))? {
            let (r, filler): (u8, Vec<u8>) =
                item?.extract().map_err(|_| arg_error("_padding is a list of (r, filler) pairs"))?;
            if filler.len() != usize::from(r.saturating_sub(1)) {
                return Err(arg_error(format!("_padding: the filler for r = {r} is {} bytes", r.saturating_sub(1))));
            }
            o.padding.push((r, filler));
        }
    }
    Ok(o)
}

/// conn §4.1 as initiator over a new WebSocket to `url` (a comm server or a direct listener).
#[pyfunction]
#[pyo3(signature = (url, public_key, secret_key, target_key, *, open_timeout = None, timeout = None,
                    keepalive = None, dead_after = None, max_message = MaxMessage::default(),
                    _ephemeral = None, _padding = None))]
#[allow(clippy::too_many_arguments)]
fn encrypted_connect<'py>(
    py: Python<'py>,
    url: &Bound<'py, PyAny>,
    public_key: &Bound<'py, PyAny>,
    secret_key: &Bound<'py, PyAny>,
    target_key: &Bound<'py, PyAny>,
    open_timeout: Option<&Bound<'py, PyAny>>,
    timeout: Option<&Bound<'py, PyAny>>,
    keepalive: Option<&Bound<'py, PyAny>>,
    dead_after: Option<&Bound<'py, PyAny>>,
    max_message: MaxMessage,
    _ephemeral: Option<&Bound<'py, PyAny>>,
    _padding: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let url = url
        .cast::<PyString>()
        .map_err(|_| arg_error(format!("a URL is a str, got {}", type_name(url))))?
        .to_str()
        .map_err(|_| arg_error("a URL must be valid Unicode"))?
        .to_owned();
    let public = key32_arg(public_key, "public_key")?;
    let secret = key32_arg(secret_key, "secret_key")?;
    let target = key32_arg(target_key, "target_key")?;
    let f = |v: Option<&Bound<'py, PyAny>>, d: f64| -> PyResult<Bound<'py, PyAny>> {
        match v {
            Some(v) if !v.is_none() => Ok(v.clone()),
            _ => Ok(d.into_pyobject(py)?.into_any()),
        }
    };
    let open_timeout = f(open_timeout, 5.0)?;
    let opts = enc_options(
        Some(&open_timeout),
        &f(timeout, 10.0)?,
        &f(keepalive, 20.0)?,
        &f(dead_after, 25.0)?,
        max_message,
        _ephemeral,
        _padding,
    )?;
    py_future(py, async move {
        let t = lama_net::encrypted_connect(&url, &public, &secret, &target, opts).await.map_err(net_err)?;
        Ok(NewEncrypted(t))
    })
}

/// conn §4.1/§4.2 as acceptor on `transport`, whose next message is the communication_request;
/// `keys` are the candidate `(public, secret)` pairs.
#[pyfunction]
#[pyo3(signature = (transport, keys, *, timeout = None, keepalive = None, dead_after = None,
                    max_message = MaxMessage::default(), _ephemeral = None, _padding = None))]
#[allow(clippy::too_many_arguments)]
fn encrypted_accept<'py>(
    py: Python<'py>,
    transport: &Bound<'py, PyAny>,
    keys: &Bound<'py, PyAny>,
    timeout: Option<&Bound<'py, PyAny>>,
    keepalive: Option<&Bound<'py, PyAny>>,
    dead_after: Option<&Bound<'py, PyAny>>,
    max_message: MaxMessage,
    _ephemeral: Option<&Bound<'py, PyAny>>,
    _padding: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let raw = transport
        .cast::<PyTransport>()
        .map_err(|_| arg_error(format!("encrypted_accept needs a Transport, got {}", type_name(transport))))?
        .get()
        .inner
        .clone();
    let bad_keys = || arg_error("keys is a list of (public, secret) pairs of 32-byte keys");
    let mut pairs = Vec::new();
    for item in keys.try_iter().map_err(|_| bad_keys())? {
        let (p, s): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract().map_err(|_| bad_keys())?;
        pairs.push((key32_arg(&p, "a public key")?, key32_arg(&s, "a secret key")?));
    }
    let f = |v: Option<&Bound<'py, PyAny>>, d: f64| -> PyResult<Bound<'py, PyAny>> {
        match v {
            Some(v) if !v.is_none() => Ok(v.clone()),
            _ => Ok(d.into_pyobject(py)?.into_any()),
        }
    };
    let opts = enc_options(None, &f(timeout, 10.0)?, &f(keepalive, 20.0)?, &f(dead_after, 25.0)?, max_message, _ephemeral, _padding)?;
    py_future(py, async move {
        let t = lama_net::encrypted_accept(raw, &pairs, opts).await.map_err(net_err)?;
        Ok(NewEncrypted(t))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTransport>()?;
    m.add_class::<PyEncryptedConnection>()?;
    m.add_function(wrap_pyfunction!(encrypted_connect, m)?)?;
    m.add_function(wrap_pyfunction!(encrypted_accept, m)?)?;
    m.add_class::<PyListener>()?;
    m.add_class::<PySessionTask>()?;
    m.add_function(wrap_pyfunction!(memory_pair, m)?)?;
    m.add_function(wrap_pyfunction!(ws_connect, m)?)?;
    m.add_function(wrap_pyfunction!(ws_listen, m)?)?;
    m.add_function(wrap_pyfunction!(spawn_session, m)?)?;
    register_comm(m)?;
    // not a module attribute: only `atexit` holds it
    let hook = wrap_pyfunction!(at_exit, m)?;
    m.py().import("atexit")?.call_method1("register", (hook,))?;
    Ok(())
}

// -- comm server and its listener client (docs/connections.md §2) ---------------------------------

/// A non-negative, finite number of seconds (int or float, not bool), else `LAMA-ARG`.
struct Secs(Duration);

impl<'a, 'py> FromPyObject<'a, 'py> for Secs {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Secs> {
        let bad = || arg_error(format!("a time must be a non-negative number of seconds, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default()));
        if v.cast::<PyBool>().is_ok() {
            return Err(bad());
        }
        let f: f64 = v.extract().map_err(|_| bad())?;
        if !f.is_finite() || !(0.0..=1e9).contains(&f) {
            return Err(bad());
        }
        Ok(Secs(Duration::from_secs_f64(f)))
    }
}

/// A positive int (not bool), else `LAMA-ARG`.
struct Count(usize);

impl<'a, 'py> FromPyObject<'a, 'py> for Count {
    type Error = PyErr;

    fn extract(v: Borrowed<'a, 'py, PyAny>) -> PyResult<Count> {
        let bad = || arg_error(format!("a count must be a positive int, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default()));
        if v.cast::<PyBool>().is_ok() || v.cast::<PyInt>().is_err() {
            return Err(bad());
        }
        match v.extract::<i128>() {
            Ok(n) if n >= 1 => Ok(Count(usize::try_from(n).unwrap_or(usize::MAX))),
            _ => Err(bad()),
        }
    }
}

fn str_arg(name: &str, v: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(v.cast::<PyString>()
        .map_err(|_| arg_error(format!("{name} is a str, got {}", type_name(v))))?
        .to_str()
        .map_err(|_| arg_error(format!("{name} must be valid Unicode")))?
        .to_owned())
}

fn key_arg(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let b = v.cast::<PyBytes>().map_err(|_| arg_error(format!("{name} is bytes, got {}", type_name(v))))?;
    if b.as_bytes().len() != 32 {
        return Err(arg_error(format!("{name} is 32 bytes, got {}", b.as_bytes().len())));
    }
    Ok(b.as_bytes().to_vec())
}

/// A running comm server (made by `comm_server`).
#[pyclass(frozen, name = "CommServer", module = "lama._lama")]
pub struct PyCommServer {
    inner: Arc<lama_net::CommServer>,
}

#[pymethods]
impl PyCommServer {
    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    #[getter]
    fn url(&self) -> String {
        self.inner.url().to_string()
    }

    /// The counters: connections, open, registrations, spares, requests, handovers, relays,
    /// relayed_frames, relayed_bytes, refused, auth_failures, auth_timeouts, malformed,
    /// oversized, pings, ping_timeouts, forwarded, cluster_lookups, cluster_answers.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.counters() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Stop accepting; close every spare and relayed pair; wait for them.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = self.inner.clone();
        py_future(py, async move {
            s.close().await;
            Ok(())
        })
    }
}

/// Serve the comm-server protocol (conn §3) on `host`:`port` (0: any free port).
#[pyfunction]
#[pyo3(signature = (host, port, *, ping_interval = Secs(Duration::from_secs(25)),
                    pong_timeout = Secs(Duration::from_secs(1)), auth_timeout = Secs(Duration::from_secs(10)),
                    max_message = MaxMessage::default(), max_spares_per_key = Count(16),
                    max_spares_per_address = Count(256), mailbox_dir = None,
                    mailbox_max_items = Count(1000), mailbox_max_bytes = Count(64 * 1024 * 1024),
                    mailbox_ttl = Secs(Duration::from_secs(7 * 24 * 3600)),
                    mailbox_total_items = Count(100_000),
                    mailbox_total_bytes = Count(1 << 30),
                    nats = None, advertise = None, lookup_rate = None, lookup_burst = None,
                    lookups_in_flight = None))]
#[allow(clippy::too_many_arguments)]
fn comm_server<'py>(
    py: Python<'py>,
    host: &Bound<'py, PyAny>,
    port: &Bound<'py, PyAny>,
    ping_interval: Secs,
    pong_timeout: Secs,
    auth_timeout: Secs,
    max_message: MaxMessage,
    max_spares_per_key: Count,
    max_spares_per_address: Count,
    mailbox_dir: Option<&Bound<'py, PyAny>>,
    mailbox_max_items: Count,
    mailbox_max_bytes: Count,
    mailbox_ttl: Secs,
    mailbox_total_items: Count,
    mailbox_total_bytes: Count,
    nats: Option<Bound<'py, PyAny>>,
    advertise: Option<Bound<'py, PyAny>>,
    lookup_rate: Option<Bound<'py, PyAny>>,
    lookup_burst: Option<Bound<'py, PyAny>>,
    lookups_in_flight: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let host = str_arg("a host", host)?;
    // docs/cluster.md: a cluster node (NATS URL) and the URL other nodes reach it at
    let nats = nats.map(|v| str_arg("nats (a NATS URL)", &v)).transpose()?;
    let advertise = advertise.map(|v| str_arg("advertise (a ws:// URL)", &v)).transpose()?;
    // docs/cluster.md §4: the lookup rate limit (checked here, also without `nats`)
    // (named in the errors, as the pure core's LookupLimiter.check)
    let repr = |v: &Bound<'py, PyAny>| v.repr().map(|r| r.to_string()).unwrap_or_default();
    let limit = |name: &str, v: Option<Bound<'py, PyAny>>, default: usize, max: usize| -> PyResult<usize> {
        let Some(v) = v else { return Ok(default) };
        let n = if v.cast::<PyBool>().is_ok() || v.cast::<PyInt>().is_err() { None } else { v.extract::<i128>().ok() };
        match n {
            Some(n) if n >= 1 && n <= max as i128 => Ok(n as usize),
            _ => Err(arg_error(format!("{name} must be at least 1, got {}", repr(&v)))),
        }
    };
    let defaults = lama_net::LookupLimits::default();
    let rate = match lookup_rate {
        None => defaults.rate,
        Some(v) if v.cast::<PyBool>().is_ok() || !(v.cast::<PyInt>().is_ok() || v.cast::<PyFloat>().is_ok()) => {
            return Err(arg_error(format!("lookup_rate must be a positive number, got {}", repr(&v))));
        }
        Some(v) => v.extract::<f64>().map_err(|_| arg_error(format!("lookup_rate must be a positive number, got {}", repr(&v))))?,
    };
    let lookup_limits = lama_net::LookupLimits {
        rate,
        burst: limit("lookup_burst", lookup_burst, defaults.burst as usize, u32::MAX as usize)? as u32,
        in_flight: limit("lookups_in_flight", lookups_in_flight, defaults.in_flight, usize::MAX)?,
    };
    lookup_limits.check().map_err(net_err)?;
    // lama's mailbox extension (docs/mailbox.md §5)
    let mailbox = match mailbox_dir {
        None => None,
        Some(d) if d.is_none() => None,
        Some(d) => {
            let Ok(dir) = d.cast::<PyString>() else {
                return Err(arg_error(format!("mailbox_dir is a str, got {}", type_name(d))));
            };
            if mailbox_ttl.0.is_zero() {
                return Err(arg_error("mailbox_ttl must be positive, got 0"));
            }
            Some(lama_net::MailboxOptions {
                dir: std::path::PathBuf::from(dir.to_str()?),
                max_items: mailbox_max_items.0,
                max_bytes: mailbox_max_bytes.0 as u64,
                ttl: mailbox_ttl.0,
                total_items: mailbox_total_items.0,
                total_bytes: mailbox_total_bytes.0 as u64,
            })
        }
    };
    let bad_port = || arg_error(format!("a port is an int in 0..65535, got {}", port.repr().map(|r| r.to_string()).unwrap_or_default()));
    if port.cast::<PyBool>().is_ok() || port.cast::<PyInt>().is_err() {
        return Err(bad_port());
    }
    let port: u16 = port.extract().map_err(|_| bad_port())?;
    let opts = lama_net::CommServerOptions {
        ping_interval: ping_interval.0,
        pong_timeout: pong_timeout.0,
        auth_timeout: auth_timeout.0,
        max_message: max_message.0,
        max_spares_per_key: max_spares_per_key.0,
        max_spares_per_address: max_spares_per_address.0,
        mailbox,
        nats,
        advertise,
        lookup_limits,
    };
    py_future(py, async move {
        let s = lama_net::comm_server(&host, port, opts).await.map_err(net_err)?;
        Ok(PyCommServer { inner: Arc::new(s) })
    })
}

/// A comm-server listener client (made by `comm_listen`).
#[pyclass(frozen, name = "CommListener", module = "lama._lama")]
pub struct PyCommListener {
    inner: Arc<lama_net::CommListener>,
}

#[pymethods]
impl PyCommListener {
    /// The next spare after its `connection_handover`: a Transport whose next message is the
    /// relayed `communication_request`.
    fn accept<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.inner.clone();
        py_future(py, async move {
            let t = l.accept().await.map_err(net_err)?;
            Ok(PyTransport { inner: Arc::new(t) })
        })
    }

    /// "not_listening" | "connecting" | "listening".
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    /// Close every spare; `accept` raises `LAMA-NET-CLOSED` from now on.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.inner.clone();
        py_future(py, async move {
            l.close().await;
            Ok(())
        })
    }
}

/// Keep `spares` spare sockets registered at the comm server `url` (conn §3.2, §3.4).
#[pyfunction]
#[pyo3(signature = (url, public_key, secret_key, *, spares = Count(2),
                    reconnect_delay = Secs(Duration::from_secs(10))))]
fn comm_listen<'py>(
    py: Python<'py>,
    url: &Bound<'py, PyAny>,
    public_key: &Bound<'py, PyAny>,
    secret_key: &Bound<'py, PyAny>,
    spares: Count,
    reconnect_delay: Secs,
) -> PyResult<Bound<'py, PyAny>> {
    let url = str_arg("a URL", url)?;
    let public = key_arg("public_key", public_key)?;
    let secret = key_arg("secret_key", secret_key)?;
    let (spares, delay) = (spares.0, reconnect_delay.0);
    py_future(py, async move {
        let l = lama_net::comm_listen(&url, &public, &secret, spares, delay).await.map_err(net_err)?;
        Ok(PyCommListener { inner: Arc::new(l) })
    })
}

fn register_comm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCommServer>()?;
    m.add_class::<PyCommListener>()?;
    m.add_function(wrap_pyfunction!(comm_server, m)?)?;
    m.add_function(wrap_pyfunction!(comm_listen, m)?)?;
    Ok(())
}
