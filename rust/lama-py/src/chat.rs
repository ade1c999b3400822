//! The chat sender's post path in the core (issue 10): the objects of a batch of chat posts
//! built, serialised, hashed and signed in one call with the GIL released, and written with
//! the channel's list entries and version in one transaction.
//!
//! Per message (app-layer.md §2.4): `ChatMessage{text, attachments?, sender, thumbnails?}`,
//! `CreationTime{timestamp, data: message}`, `AffirmationCertificate{data: creationTime,
//! license}` and the author's `Signature{issuer, data: certificate, signature}`, the Ed25519
//! signature over the UTF-8 hex string of the certificate hash (§1.7). The objects are the ones
//! `lama.chat.channel.post` built as dicts before, byte for byte (the pure core builds those
//! dicts still, tests/test_chat_post_core.py compares both).
use std::sync::{Arc, Mutex};

use lama_core::crypto as c;
use lama_core::hash::hash_hex;
use lama_core::microdata::Value;
use lama_core::store::{Serialized, Snapshot};
use lama_core::Error;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use crate::errors::IntoPyResult;
use crate::microdata::{py_str_flagged, str_to_py, value_to_py};
use crate::store::{rows, values, PyStore};

/// The objects of a batch of posts (see the module doc) and their hashes; written by
/// [`chat_commit`] (again after a lost compare-and-set race, so they are kept).
#[pyclass(frozen, name = "ChatPosts", module = "lama._lama")]
pub struct ChatPosts {
    /// the objects, serialised and hashed (written as they are, not serialised again)
    values: Arc<Vec<Serialized>>,
    hashes: Vec<(String, String, String, String)>,
    timestamps: Vec<i64>,
    /// the LinkedListEntry objects of the last [`ChatPosts::chain`], written by [`chat_commit`]
    entries: Mutex<Arc<Vec<Serialized>>>,
}

#[pymethods]
impl ChatPosts {
    /// `[(message, creationTime, certificate, signature)]` hashes, one row per message.
    #[getter]
    fn hashes(&self) -> Vec<(String, String, String, String)> {
        self.hashes.clone()
    }

    fn __len__(&self) -> usize {
        self.hashes.len()
    }

    /// The list insert of the posts (app-layer.md §2.5, `lama.objects.linkedlist.insert_many`):
    /// the stored elements `above` (`(creationTime, timestamp, metadata or None)`, newer than
    /// the oldest post) and the posts (metadata: their Signature), sorted oldest first by
    /// `(timestamp, creationTime)`, each a new LinkedListEntry on top of the previous one,
    /// the first on `base`. Returns `[(creationTime, entry)]` in that order (the last entry is
    /// the new head); [`chat_commit`] writes the entries of the last call.
    #[pyo3(signature = (base, above))]
    fn chain(
        &self,
        py: Python<'_>,
        base: Option<String>,
        above: Vec<(String, f64, Option<Vec<String>>)>,
    ) -> PyResult<Vec<(String, String)>> {
        let (out, vals) = py
            .detach(|| {
                let mut els: Vec<(f64, &str, Option<Vec<String>>)> = above
                    .iter()
                    .map(|(c, ts, md)| (*ts, c.as_str(), md.clone()))
                    .collect();
                for ((_m, c, _cert, sig), ts) in self.hashes.iter().zip(&self.timestamps) {
                    els.push((*ts as f64, c.as_str(), Some(vec![sig.clone()])));
                }
                // stable, as Python's sorted: equal keys keep their order
                els.sort_by(|a, b| {
                    a.0.partial_cmp(&b.0)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(a.1.cmp(b.1))
                });
                let mut prev = base;
                let mut out = Vec::with_capacity(els.len());
                let mut vals = Vec::with_capacity(els.len());
                for (_ts, ct, md) in els {
                    let mut props = vec![("data", s(ct))];
                    if let Some(md) = md {
                        props.push((
                            "metadata",
                            Value::List(md.into_iter().map(Value::Str).collect()),
                        ));
                    }
                    if let Some(p) = prev.take() {
                        props.push(("previous", Value::Str(p)));
                    }
                    let v = Serialized::of(&obj("LinkedListEntry", props))?;
                    let h = hash_hex(v.hash());
                    out.push((ct.to_owned(), h.clone()));
                    vals.push(v);
                    prev = Some(h);
                }
                Ok::<_, Error>((out, vals))
            })
            .py()?;
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(vals);
        Ok(out)
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn obj(type_name: &str, props: Vec<(&str, Value)>) -> Value {
    let mut d = Vec::with_capacity(props.len() + 1);
    d.push((s("$type$"), s(type_name)));
    for (k, v) in props {
        d.push((s(k), v));
    }
    Value::Dict(d)
}

/// Serialise `v` as it is stored (Node.js's UTF-8, so encoded text is hashed as JS UTF-8), and
/// its hash.
fn serialized(v: &Value) -> Result<(Serialized, String), Error> {
    let ser = Serialized::of(v)?;
    let h = hash_hex(ser.hash());
    Ok((ser, h))
}

fn str_list(items: &Bound<'_, PyAny>, encoded: &mut bool) -> PyResult<Option<Value>> {
    let mut out = Vec::new();
    for x in items.try_iter()? {
        let x = x?;
        let t = x.cast::<PyString>().map_err(|_| {
            crate::errors::to_py(Error::microdata(
                "O2M-RTYC1",
                "an attachment hash must be a str",
            ))
        })?;
        out.push(Value::Str(py_str_flagged(t, encoded)?));
    }
    Ok(if out.is_empty() {
        None
    } else {
        Some(Value::List(out))
    })
}

/// Build, serialise, hash and sign the objects of a batch of chat posts (see the module doc).
/// `messages` are `(text, attachment hashes, thumbnail hashes)` (an empty list: no such
/// property), `timestamps` the CreationTimes' ms, one per message.
#[pyfunction]
fn chat_posts(
    py: Python<'_>,
    messages: &Bound<'_, PyAny>,
    timestamps: Vec<i64>,
    sender: &str,
    author: &str,
    sign_secret: &[u8],
    license: &str,
) -> PyResult<ChatPosts> {
    let mut msgs: Vec<(Value, bool)> = Vec::with_capacity(timestamps.len());
    for m in messages.try_iter()? {
        let m = m?;
        let (text, atts, thumbs): (Bound<'_, PyAny>, Bound<'_, PyAny>, Bound<'_, PyAny>) =
            m.extract()?;
        let mut encoded = false;
        let text = text.cast::<PyString>().map_err(|_| {
            crate::errors::to_py(Error::microdata(
                "O2M-RTYC1",
                "a message text must be a str",
            ))
        })?;
        let mut props = vec![("text", Value::Str(py_str_flagged(text, &mut encoded)?))];
        if let Some(a) = str_list(&atts, &mut encoded)? {
            props.push(("attachments", a));
        }
        props.push(("sender", s(sender)));
        if let Some(t) = str_list(&thumbs, &mut encoded)? {
            props.push(("thumbnails", t));
        }
        msgs.push((obj("ChatMessage", props), encoded));
    }
    if msgs.len() != timestamps.len() {
        return Err(crate::errors::to_py(Error::microdata(
            "O2M-RTYC1",
            format!(
                "{} messages but {} timestamps",
                msgs.len(),
                timestamps.len()
            ),
        )));
    }
    py.detach(move || {
        let n = msgs.len();
        let mut vals: Vec<Serialized> = Vec::with_capacity(4 * n);
        let mut cts = Vec::with_capacity(n);
        let mut certs = Vec::with_capacity(n);
        let mut sigs = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let stamps = timestamps.clone();
        for ((msg, _encoded), ts) in msgs.into_iter().zip(timestamps) {
            let (msg, mh) = serialized(&msg)?;
            let (ct, ch) = serialized(&obj(
                "CreationTime",
                vec![("timestamp", Value::Int(ts)), ("data", s(&mh))],
            ))?;
            let (cert, cert_h) = serialized(&obj(
                "AffirmationCertificate",
                vec![("data", s(&ch)), ("license", s(license))],
            ))?;
            let sig = c::sign_detached(cert_h.as_bytes(), sign_secret)?;
            let (sig, sh) = serialized(&obj(
                "Signature",
                vec![
                    ("issuer", s(author)),
                    ("data", s(&cert_h)),
                    ("signature", Value::Str(hex(&sig))),
                ],
            ))?;
            vals.push(msg);
            cts.push(ct);
            certs.push(cert);
            sigs.push(sig);
            hashes.push((mh, ch, cert_h, sh));
        }
        // the order the dict path wrote them in: messages, CreationTimes, certificates, signatures
        vals.extend(cts);
        vals.extend(certs);
        vals.extend(sigs);
        Ok::<_, Error>(ChatPosts {
            values: Arc::new(vals),
            hashes,
            timestamps: stamps,
            entries: Mutex::new(Arc::new(Vec::new())),
        })
    })
    .py()
}

/// One transaction (like `Store.write_batch`): the objects of `posts` and the entries of its
/// last [`ChatPosts::chain`], then `objs`, then the
/// compare-and-set of each head in `heads`. Durable when it returns (a durable store).
#[pyfunction]
fn chat_commit<'py>(
    py: Python<'py>,
    store: &Bound<'py, PyStore>,
    posts: &Bound<'py, ChatPosts>,
    objs: &Bound<'py, PyAny>,
    heads: Vec<(String, Option<String>, String)>,
) -> PyResult<Bound<'py, PyList>> {
    let store = store.get().store()?;
    let extra = values(objs)?;
    let pv = Arc::clone(&posts.get().values);
    let ev = Arc::clone(
        &posts
            .get()
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    rows(
        py,
        py.detach(move || {
            // the posts' objects and entries as chat_posts and chain serialised them
            let mut pre = Vec::with_capacity(pv.len() + ev.len());
            pre.extend(pv.iter());
            pre.extend(ev.iter());
            store.write_batch_serialized(&pre, &extra, &heads)
        })
        .py()?,
    )
}

// -- the receiver's read of new list elements (issue 10) -------------------------------------

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Dict(d) => d
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn str_of(v: Option<&Value>) -> Option<&str> {
    match v {
        Some(Value::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// A list of str (`Ok(None)`: not a list of str).
fn str_items(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Str(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// One element of a channel list: entry, CreationTime, timestamp (as stored), metadata,
/// previous, the CreationTime's data; `key` = (timestamp, CreationTime) for the order.
struct ReadEl {
    entry: String,
    ct: String,
    ts: Value,
    key: f64,
    metadata: Option<Vec<String>>,
    previous: Option<String>,
    data: Option<String>,
}

/// The post of an element: text, sender, attachments, thumbnails, Signature, its issuer.
type ReadPost = (
    String,
    String,
    Vec<String>,
    Vec<String>,
    Option<String>,
    Option<String>,
);

fn malformed(what: &str, h: &str) -> Error {
    Error::microdata(
        "O2M-RTYC1",
        format!("{what} {h} of a channel list is malformed"),
    )
}

fn read_element(snap: &Snapshot, h: &str) -> Result<ReadEl, Error> {
    let e = snap.get_object(h)?;
    let ct = str_of(field(&e, "data")).ok_or_else(|| malformed("LinkedListEntry", h))?;
    let metadata = match field(&e, "metadata") {
        None => None,
        Some(v) => Some(str_items(v).ok_or_else(|| malformed("LinkedListEntry", h))?),
    };
    let previous = match field(&e, "previous") {
        None => None,
        Some(Value::Str(p)) => Some(p.clone()),
        Some(_) => return Err(malformed("LinkedListEntry", h)),
    };
    let c = snap.get_object(ct)?;
    let (ts, key) = match field(&c, "timestamp") {
        Some(Value::Int(i)) => (Value::Int(*i), *i as f64),
        Some(Value::Float(f)) => (Value::Float(*f), *f),
        _ => return Err(malformed("CreationTime", ct)),
    };
    let data = match field(&c, "data") {
        None => None,
        Some(Value::Str(d)) => Some(d.clone()),
        Some(_) => return Err(malformed("CreationTime", ct)),
    };
    Ok(ReadEl {
        entry: h.to_owned(),
        ct: ct.to_owned(),
        ts,
        key,
        metadata,
        previous,
        data,
    })
}

/// The list from `head`, newest first (stops at a repeated entry, as `linkedlist.entries`).
struct Walk<'a> {
    snap: &'a Snapshot,
    next: Option<String>,
    seen: std::collections::HashSet<String>,
}

impl Walk<'_> {
    fn step(&mut self) -> Result<Option<ReadEl>, Error> {
        let Some(h) = self.next.take() else {
            return Ok(None);
        };
        if !self.seen.insert(h.clone()) {
            return Ok(None);
        }
        let el = read_element(self.snap, &h)?;
        self.next = el.previous.clone();
        Ok(Some(el))
    }
}

fn key_cmp(a: &ReadEl, b: &ReadEl) -> std::cmp::Ordering {
    a.key
        .partial_cmp(&b.key)
        .unwrap_or(std::cmp::Ordering::Equal)
        .then_with(|| a.ct.cmp(&b.ct))
}

fn read_post(snap: &Snapshot, el: &ReadEl) -> Option<ReadPost> {
    let msg = snap.get_object(el.data.as_deref()?).ok()?;
    if str_of(field(&msg, "$type$")) != Some("ChatMessage") {
        return None;
    }
    let sender = str_of(field(&msg, "sender"))?.to_owned();
    let text = match field(&msg, "text") {
        None => String::new(),
        Some(Value::Str(t)) => t.clone(),
        Some(_) => return None,
    };
    let list = |k: &str| match field(&msg, k) {
        None => Some(Vec::new()),
        Some(v) => str_items(v),
    };
    let (atts, thumbs) = (list("attachments")?, list("thumbnails")?);
    let mut sig = (None, None);
    for s in el.metadata.iter().flatten() {
        let Ok(so) = snap.get_object(s) else { continue };
        if str_of(field(&so, "$type$")) == Some("Signature") {
            if let Some(issuer) = str_of(field(&so, "issuer")) {
                sig = (Some(s.clone()), Some(issuer.to_owned()));
                break;
            }
        }
    }
    Some((text, sender, atts, thumbs, sig.0, sig.1))
}

/// `new_elements` of lama.chat.channel with each element's post read (see the stub).
fn read_new(
    snap: &Snapshot,
    old: Option<String>,
    new: Option<String>,
) -> Result<Vec<(ReadEl, Option<ReadPost>)>, Error> {
    let mut out = Vec::new();
    if new.is_none() || old == new {
        return Ok(out);
    }
    let mut a = Walk {
        snap,
        next: old,
        seen: Default::default(),
    };
    let mut b = Walk {
        snap,
        next: new,
        seen: Default::default(),
    };
    let mut ca = a.step()?;
    let mut cb = b.step()?;
    let mut els = Vec::new();
    while let Some(eb) = cb.take() {
        match &ca {
            Some(ea) if ea.entry == eb.entry => break,
            None => {
                els.push(eb);
                cb = b.step()?;
            }
            Some(ea) => match key_cmp(&eb, ea) {
                std::cmp::Ordering::Greater => {
                    els.push(eb);
                    cb = b.step()?;
                }
                std::cmp::Ordering::Equal => {
                    cb = b.step()?;
                    ca = a.step()?;
                }
                std::cmp::Ordering::Less => {
                    cb = Some(eb);
                    ca = a.step()?;
                }
            },
        }
    }
    for el in els {
        let post = read_post(snap, &el);
        out.push((el, post));
    }
    Ok(out)
}

fn opt_str<'py>(py: Python<'py>, s: &Option<String>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match s {
        None => py.None().into_bound(py),
        Some(s) => str_to_py(py, s)?.into_any(),
    })
}

fn str_list_py<'py>(py: Python<'py>, items: &[String]) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for x in items {
        out.append(str_to_py(py, x)?)?;
    }
    Ok(out)
}

/// The elements of the channel list at entry `new` that the list at `old` does not hold,
/// newest first, each with its post read, in one read transaction with the GIL released (the
/// receiver's chat event thread; see `_lama.pyi`).
#[pyfunction]
#[pyo3(signature = (store, old, new))]
fn chat_elements<'py>(
    py: Python<'py>,
    store: &Bound<'py, PyStore>,
    old: Option<String>,
    new: Option<String>,
) -> PyResult<Bound<'py, PyList>> {
    let store = store.get().store()?;
    let rows = py
        .detach(move || {
            let snap = store.snapshot()?;
            read_new(&snap, old, new)
        })
        .py()?;
    let out = PyList::empty(py);
    for (el, post) in rows {
        let md = match &el.metadata {
            None => py.None().into_bound(py),
            Some(m) => str_list_py(py, m)?.into_any(),
        };
        let post = match post {
            None => py.None().into_bound(py),
            Some((text, sender, atts, thumbs, sig, issuer)) => PyTuple::new(
                py,
                [
                    str_to_py(py, &text)?.into_any(),
                    str_to_py(py, &sender)?.into_any(),
                    str_list_py(py, &atts)?.into_any(),
                    str_list_py(py, &thumbs)?.into_any(),
                    opt_str(py, &sig)?,
                    opt_str(py, &issuer)?,
                ],
            )?
            .into_any(),
        };
        out.append(PyTuple::new(
            py,
            [
                str_to_py(py, &el.entry)?.into_any(),
                str_to_py(py, &el.ct)?.into_any(),
                value_to_py(py, &el.ts)?,
                md,
                opt_str(py, &el.previous)?,
                opt_str(py, &el.data)?,
                post,
            ],
        )?)?;
    }
    Ok(out)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ChatPosts>()?;
    m.add_function(wrap_pyfunction!(chat_posts, m)?)?;
    m.add_function(wrap_pyfunction!(chat_commit, m)?)?;
    m.add_function(wrap_pyfunction!(chat_elements, m)?)?;
    Ok(())
}
