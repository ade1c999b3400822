//! `ChumSession`: the sans-I/O CHUM session of `lama-chum` (docs/chum-session.md §2).
//!
//! `now` arguments are float seconds (`time.monotonic()`); they are mapped onto `Instant`s
//! relative to the first `now` seen. Store work (commits, BLOB streaming, roots and children
//! walks) runs with the GIL released.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lama_chum::{Config, Message, Session};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::store::PyStore;

pyo3::import_exception!(lama.errors, InvalidArgumentError);

fn bad_arg(msg: String) -> PyErr {
    InvalidArgumentError::new_err((msg, "LAMA-ARG"))
}

pub(crate) struct Inner {
    pub(crate) session: Session,
    base: Instant,
    base_f: Option<f64>,
}

impl Inner {
    fn instant(&mut self, now: f64) -> Instant {
        let b = *self.base_f.get_or_insert(now);
        let d = now - b;
        if d >= 0.0 {
            self.base + Duration::from_secs_f64(d.min(1e12))
        } else {
            self.base.checked_sub(Duration::from_secs_f64((-d).min(1e12))).unwrap_or(self.base)
        }
    }

    fn seconds(&self, t: Instant) -> f64 {
        let b = self.base_f.unwrap_or(0.0);
        match t.checked_duration_since(self.base) {
            Some(d) => b + d.as_secs_f64(),
            None => b - self.base.duration_since(t).as_secs_f64(),
        }
    }
}

#[pyclass(frozen, name = "ChumSession", module = "lama._lama")]
pub struct PyChumSession {
    inner: Mutex<Inner>,
}

fn number(name: &str, v: &Bound<'_, PyAny>, minimum: f64) -> PyResult<f64> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad_arg(format!("{name} must be a number, not {}", v.repr()?)));
    }
    match v.extract::<f64>() {
        Ok(f) if f.is_finite() && f >= minimum => Ok(f),
        Ok(_) => Err(bad_arg(format!("{name} must be at least {minimum}, not {}", v.repr()?))),
        Err(_) => Err(bad_arg(format!("{name} must be a number, not {}", v.repr()?))),
    }
}

fn integer(name: &str, v: &Bound<'_, PyAny>, minimum: i64) -> PyResult<i64> {
    if v.is_instance_of::<pyo3::types::PyBool>() || !v.is_instance_of::<pyo3::types::PyInt>() {
        return Err(bad_arg(format!("{name} must be an integer, not {}", v.repr()?)));
    }
    match v.extract::<i64>() {
        Ok(i) if i >= minimum => Ok(i),
        _ => Err(bad_arg(format!("{name} must be at least {minimum}, not {}", v.repr()?))),
    }
}

fn now_arg(v: &Bound<'_, PyAny>) -> PyResult<f64> {
    if v.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad_arg("now must be a number of seconds, not a bool".into()));
    }
    match v.extract::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(bad_arg(format!("now must be a finite number of seconds, not {}", v.repr()?))),
    }
}

/// An event's data as Python, as `json_to_py(&e.data())` gives it; the hash lists of an
/// `imported` event (every object of a pass, 70,005 strings in the initial-sync bench, issue 8)
/// go straight from the event's strings to Python, without a serde_json copy of each.
pub(crate) fn event_data_py<'py>(py: Python<'py>, e: &lama_chum::Event) -> PyResult<Bound<'py, PyAny>> {
    match e {
        lama_chum::Event::Imported { objects, id_objects, blobs, clobs } => {
            let d = PyDict::new(py);
            for (k, v) in [("objects", objects), ("id_objects", id_objects), ("blobs", blobs), ("clobs", clobs)] {
                d.set_item(k, PyList::new(py, v.iter().map(|s| PyString::new(py, s)))?)?;
            }
            Ok(d.into_any())
        }
        // the same dict as `json_to_py(&e.data())` (keys in the same order), the log's hash
        // lists straight from its strings: A's log of an initial sync lists every object it
        // sent (70,005), and the serde_json copy of it was ~6 % of A's CPU (issue 8, session 14)
        lama_chum::Event::Finished { reason, log } => {
            let l = PyDict::new(py);
            for (k, v) in [
                ("AtoBObjects", &log.a_to_b_objects),
                ("AtoBIdObjects", &log.a_to_b_id_objects),
                ("AtoBBlob", &log.a_to_b_blob),
                ("AtoBClob", &log.a_to_b_clob),
                ("BtoAObjects", &log.b_to_a_objects),
                ("BtoAIdObjects", &log.b_to_a_id_objects),
                ("BtoABlob", &log.b_to_a_blob),
                ("BtoAClob", &log.b_to_a_clob),
                ("errors", &log.errors),
            ] {
                l.set_item(k, PyList::new(py, v.iter().map(|s| PyString::new(py, s)))?)?;
            }
            let st = PyDict::new(py);
            st.set_item("requestsSentTotal", log.statistics.0)?;
            st.set_item("requestsReceivedTotal", log.statistics.1)?;
            st.set_item("requestsReceivedInvalid", log.statistics.2)?;
            l.set_item("statistics", st)?;
            let d = PyDict::new(py);
            d.set_item("reason", reason)?;
            d.set_item("log", l)?;
            Ok(d.into_any())
        }
        _ => json_to_py(py, &e.data()),
    }
}

pub(crate) fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => n.as_f64().unwrap_or(0.0).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(json_to_py(py, x)?)?;
            }
            l.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, json_to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

impl PyChumSession {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyChumSession {
    #[new]
    #[pyo3(signature = (store, local_person, remote_person, *, keep_running=false, poll_interval=None,
        fast_path=true, exporter=true, importer=true, request_timeout=None, max_retries=None,
        window=None, max_message=None, trace=false, ping_interval=None, ping_timeout=None),
        text_signature = "(store, local_person, remote_person, *, keep_running=False, poll_interval=5.0, fast_path=True, exporter=True, importer=True, request_timeout=30.0, max_retries=3, window=64, max_message=67108864, trace=False, ping_interval=0.0, ping_timeout=10.0)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: &Bound<'_, PyAny>,
        local_person: &Bound<'_, PyAny>,
        remote_person: &Bound<'_, PyAny>,
        keep_running: bool,
        poll_interval: Option<&Bound<'_, PyAny>>,
        fast_path: bool,
        exporter: bool,
        importer: bool,
        request_timeout: Option<&Bound<'_, PyAny>>,
        max_retries: Option<&Bound<'_, PyAny>>,
        window: Option<&Bound<'_, PyAny>>,
        max_message: Option<&Bound<'_, PyAny>>,
        trace: bool,
        ping_interval: Option<&Bound<'_, PyAny>>,
        ping_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let store = match store.cast::<PyStore>() {
            Ok(s) => s.get().store()?,
            Err(_) => return Err(bad_arg(format!("store must be a lama Store, not {}", store.get_type().name()?))),
        };
        let mut persons = Vec::new();
        for (name, v) in [("local_person", local_person), ("remote_person", remote_person)] {
            match v.extract::<String>() {
                Ok(s) if lama_core::hash::is_hash(&s) => persons.push(s),
                _ => return Err(bad_arg(format!("{name} must be a person ID hash, not {}", v.repr()?))),
            }
        }
        let mut c = Config::new(persons[0].clone(), persons[1].clone());
        c.keep_running = keep_running;
        c.fast_path = fast_path;
        c.exporter = exporter;
        c.importer = importer;
        c.trace = trace;
        if let Some(v) = poll_interval {
            c.poll_interval = Duration::from_secs_f64(number("poll_interval", v, 0.0)?.min(1e12));
        }
        if let Some(v) = request_timeout {
            c.request_timeout = Duration::from_secs_f64(number("request_timeout", v, 0.0)?.min(1e12));
        }
        if let Some(v) = max_retries {
            c.max_retries = integer("max_retries", v, 0)?.min(u32::MAX as i64) as u32;
        }
        if let Some(v) = window {
            c.window = integer("window", v, 1)?.min(1 << 20) as usize;
        }
        if let Some(v) = max_message {
            c.max_message = integer("max_message", v, 1024)?.min(isize::MAX as i64) as usize;
        }
        if let Some(v) = ping_interval {
            c.ping_interval = Duration::from_secs_f64(number("ping_interval", v, 0.0)?.min(1e12));
        }
        if let Some(v) = ping_timeout {
            c.ping_timeout = Duration::from_secs_f64(number("ping_timeout", v, 0.0)?.min(1e12));
        }
        Ok(PyChumSession { inner: Mutex::new(Inner { session: Session::new(store, c), base: Instant::now(), base_f: None }) })
    }

    fn start(&self, py: Python<'_>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        py.detach(|| sess.start(t));
        Ok(())
    }

    fn receive_text(&self, py: Python<'_>, text: &Bound<'_, PyAny>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        match text.cast::<PyString>() {
            Ok(s) => {
                // lone surrogates cannot be valid JSON text of a peer; shown as U+FFFD
                let s = s.to_string_lossy().into_owned();
                py.detach(|| sess.handle_message(Message::Text(s), t));
            }
            Err(_) => {
                let what = text.get_type().name()?.to_string();
                sess.record_error("LAMA-CHUM-FRAME", &format!("a text frame must be a str, got {what}"));
            }
        }
        Ok(())
    }

    fn receive_binary(&self, py: Python<'_>, data: &Bound<'_, PyAny>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let bytes: Option<Vec<u8>> = if let Ok(b) = data.cast::<PyBytes>() {
            Some(b.as_bytes().to_vec())
        } else if let Ok(b) = data.cast::<PyByteArray>() {
            Some(b.to_vec())
        } else if data.get_type().name()? == "memoryview" {
            data.call_method0("tobytes")?.cast::<PyBytes>().ok().map(|b| b.as_bytes().to_vec())
        } else {
            None
        };
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        match bytes {
            Some(b) => py.detach(|| sess.handle_message(Message::Binary(b), t)),
            None => sess.record_error("LAMA-CHUM-FRAME", "a binary frame must be bytes"),
        }
        Ok(())
    }

    fn handle_timeout(&self, py: Python<'_>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        py.detach(|| sess.handle_timeout(t));
        Ok(())
    }

    fn store_changed(&self, py: Python<'_>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        py.detach(|| sess.store_changed(t));
        Ok(())
    }

    fn connection_closed(&self, py: Python<'_>, reason: &Bound<'_, PyAny>, now: &Bound<'_, PyAny>) -> PyResult<()> {
        let now = now_arg(now)?;
        let reason = match reason.cast::<PyString>() {
            Ok(s) => s.to_string_lossy().into_owned(),
            Err(_) => reason.str()?.to_string_lossy().into_owned(),
        };
        let mut g = self.lock();
        let t = g.instant(now);
        let sess: &mut Session = &mut g.session;
        py.detach(|| sess.connection_closed(&reason, t));
        Ok(())
    }

    fn poll_timeout(&self) -> Option<f64> {
        let g = self.lock();
        g.session.poll_timeout().map(|t| g.seconds(t))
    }

    fn poll_transmit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut g = self.lock();
        let out = PyList::empty(py);
        while let Some(m) = g.session.poll_transmit() {
            match m {
                Message::Text(s) => out.append(PyString::new(py, &s))?,
                Message::Binary(b) => out.append(PyBytes::new(py, &b))?,
            }
        }
        Ok(out)
    }

    fn poll_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut g = self.lock();
        let out = PyList::empty(py);
        while let Some(e) = g.session.poll_event() {
            let data = event_data_py(py, &e)?;
            out.append(PyTuple::new(py, [PyString::new(py, e.kind()).into_any(), data])?)?;
        }
        Ok(out)
    }

    #[getter]
    fn finished(&self) -> bool {
        self.lock().session.is_finished()
    }

    #[getter]
    fn close_reason(&self) -> Option<String> {
        self.lock().session.close_reason().map(str::to_string)
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.lock().session.stats();
        let d = PyDict::new(py);
        for (k, v) in s.fields() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyChumSession>()
}
