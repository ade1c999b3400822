//! Test plumbing: fake clocks, pumps and scripted peers for sans-I/O sessions.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lama_chum::{Event, Message, Session};
use serde_json::Value;

pub const PA: &str = "496da8476fd83adee9fc87c44c51128de71b8074ab3133cd11bb01a9e36c9ca8";
pub const PB: &str = "f2834d7e717944a95011038735244928de8c721cd357da676097932c45d6e652";

pub fn person_id(email: &str) -> String {
    format!(r#"<div data-id-object="true" itemscope itemtype="//refin.io/Person"><span itemprop="email">{email}</span></div>"#)
}

pub fn new_store(dir: &std::path::Path, name: &str) -> lama_core::store::Store {
    let s = lama_core::store::Store::open(dir.join(name), Some(1 << 30)).unwrap();
    // the Person ID objects exist before CHUM starts (exchanged at connection setup, chum.md §9)
    s.put_microdata(&[(person_id("alice@peer-a.example"), Some(PA.into())), (person_id("bob@peer-b.example"), Some(PB.into()))]).unwrap();
    s
}

pub fn vectors(name: &str) -> Vec<Value> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A scripted peer: gets every message the session sends, returns what it answers.
pub trait Peer {
    fn receive(&mut self, msg: Message) -> Vec<Message>;
}

/// Events of a run, collected.
#[derive(Default, Debug)]
pub struct Run {
    pub events: Vec<Event>,
    pub rounds: usize,
    /// Most requests sent in one round (in flight at once).
    pub max_batch: usize,
}

impl Run {
    pub fn errors(&self) -> Vec<(String, bool)> {
        self.events.iter().filter_map(|e| match e { Event::Error { code, fatal, .. } => Some((code.clone(), *fatal)), _ => None }).collect()
    }
    pub fn codes(&self) -> Vec<String> {
        self.errors().into_iter().map(|e| e.0).collect()
    }
    pub fn merges(&self) -> Vec<(String, String)> {
        self.events.iter().filter_map(|e| match e { Event::Merge { id_hash, node, .. } => Some((id_hash.clone(), node.clone())), _ => None }).collect()
    }
    pub fn pending(&self) -> Vec<String> {
        self.events.iter().filter_map(|e| match e { Event::Pending { hash, .. } => Some(hash.clone()), _ => None }).collect()
    }
    pub fn log(&self) -> Option<&lama_chum::ChumLog> {
        self.events.iter().find_map(|e| match e { Event::Finished { log, .. } => Some(log), _ => None })
    }
}

/// Run `s` against `peer` with a fake clock until it finishes or `max_time` passes; every
/// exchange of messages is a round trip, time moves only to the session's next deadline.
pub fn pump(s: &mut Session, peer: &mut dyn Peer, t0: Instant, max_time: Duration) -> (Run, Instant) {
    let mut run = Run::default();
    let mut now = t0;
    s.start(now);
    loop {
        while let Some(e) = s.poll_event() {
            run.events.push(e);
        }
        if s.is_finished() {
            break;
        }
        let mut out = Vec::new();
        while let Some(m) = s.poll_transmit() {
            out.push(m);
        }
        if !out.is_empty() {
            run.rounds += 1;
            run.max_batch = run.max_batch.max(out.len());
            let mut answers = Vec::new();
            for m in out {
                answers.extend(peer.receive(m));
            }
            for a in answers {
                s.handle_message(a, now);
            }
            continue;
        }
        match s.poll_timeout() {
            Some(t) if t <= t0 + max_time => {
                now = now.max(t);
                s.handle_timeout(now);
            }
            _ => break,
        }
    }
    while let Some(e) = s.poll_event() {
        run.events.push(e);
    }
    (run, now)
}

/// Two sessions on one connection, with a fake clock.
pub fn pump_pair(a: &mut Session, b: &mut Session, t0: Instant, max_time: Duration) -> (Run, Run, Instant) {
    let (mut ra, mut rb) = (Run::default(), Run::default());
    let mut now = t0;
    a.start(now);
    b.start(now);
    loop {
        while let Some(e) = a.poll_event() {
            ra.events.push(e);
        }
        while let Some(e) = b.poll_event() {
            rb.events.push(e);
        }
        if a.is_finished() && b.is_finished() {
            break;
        }
        let mut moved = false;
        while let Some(m) = a.poll_transmit() {
            moved = true;
            b.handle_message(m, now);
        }
        while let Some(m) = b.poll_transmit() {
            moved = true;
            a.handle_message(m, now);
        }
        if a.is_finished() && !b.is_finished() {
            b.connection_closed(a.close_reason().unwrap_or(""), now);
        }
        if b.is_finished() && !a.is_finished() {
            a.connection_closed(b.close_reason().unwrap_or(""), now);
        }
        if moved {
            continue;
        }
        let t = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min();
        match t {
            Some(t) if t <= t0 + max_time => {
                now = now.max(t);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            _ => break,
        }
    }
    (ra, rb, now)
}

/// The recorded exporter of one side of a transcript connection: answers a request by the
/// recorded answer to the same service and arguments (ids rewritten), in recorded order.
pub struct Recorded {
    pub answers: HashMap<(u64, String), Vec<Vec<Value>>>,
    pub requests: Vec<Value>,
    pub unrecorded: Vec<Value>,
}

impl Recorded {
    /// `side` is "B" for B's importer (requests `B→A`, answers `B←A`).
    pub fn new(events: &[Value], side: &str) -> Recorded {
        let out = format!("{side}→");
        let inn = format!("{side}←");
        let mut answers: HashMap<(u64, String), Vec<Vec<Value>>> = HashMap::new();
        // ids restart on every connection: keyed by (connection, id)
        let mut by_id: HashMap<(String, u64), Vec<Value>> = HashMap::new();
        let mut order: Vec<((String, u64), (u64, String))> = Vec::new();
        for e in events {
            let conn = e["conn"].as_str().unwrap_or("").to_string();
            if e["layer"] != "encrypted/chum" {
                continue;
            }
            let dir = e["direction"].as_str().unwrap_or("");
            let m = &e["message"];
            if dir.starts_with(&out) && m["type"] == "request" {
                let id = m["requestId"].as_u64().unwrap();
                let key = (m["serviceId"].as_u64().unwrap(), m["args"].to_string());
                // a reused id (failed send, chum.md §2.6) replaces the earlier request
                order.retain(|(k, _)| *k != (conn.clone(), id));
                order.push(((conn.clone(), id), key));
                by_id.insert((conn, id), Vec::new());
            } else if dir.starts_with(&inn) && m.get("responseId").is_some() {
                let id = m["responseId"].as_u64().unwrap();
                by_id.entry((conn, id)).or_default().push(m.clone());
            } else if dir.starts_with(&inn) && m.get("binary").is_some() {
                // recorded binary messages cannot be routed by content; kept with the last BLOB request
                if let Some((id, _)) = order.iter().rev().find(|(c, k)| k.0 == 8 && c.0 == conn) {
                    by_id.entry(id.clone()).or_default().push(m.clone());
                }
            }
        }
        for (id, key) in order {
            let ans = by_id.remove(&id).unwrap_or_default();
            if !ans.is_empty() {
                answers.entry(key).or_default().push(ans);
            }
        }
        Recorded { answers, requests: Vec::new(), unrecorded: Vec::new() }
    }
}

impl Peer for Recorded {
    fn receive(&mut self, msg: Message) -> Vec<Message> {
        let Message::Text(t) = msg else { return vec![] };
        let m: Value = serde_json::from_str(&t).unwrap();
        if m["type"] != "request" {
            return vec![];
        }
        self.requests.push(m.clone());
        let id = m["requestId"].as_u64().unwrap();
        let key = (m["serviceId"].as_u64().unwrap(), m["args"].to_string());
        let list = self.answers.get_mut(&key);
        let ans = match list {
            Some(l) if !l.is_empty() => {
                if l.len() > 1 { l.remove(0) } else { l[0].clone() }
            }
            _ => {
                self.unrecorded.push(m.clone());
                let e = serde_json::json!({"responseId": id, "type": "error", "error": {"name": "Error", "message": "not recorded", "code": "TEST-UNRECORDED"}});
                return vec![Message::Text(e.to_string())];
            }
        };
        ans.into_iter()
            .map(|mut a| {
                if a.get("binary").is_some() {
                    let hex = a["hex"].as_str().unwrap_or("");
                    let bytes: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
                    Message::Binary(bytes)
                } else {
                    a["responseId"] = id.into();
                    Message::Text(a.to_string())
                }
            })
            .collect()
    }
}

// --- building objects ---

use lama_core::hash::sha256_hex;
use lama_core::microdata::{self, Value as V};
use lama_core::store::Store;

pub fn s(x: &str) -> V {
    V::Str(x.to_string())
}

pub fn obj(pairs: Vec<(&str, V)>) -> V {
    V::Dict(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
}

pub fn hash_of(o: &V) -> String {
    sha256_hex(microdata::serialize(o).unwrap().as_bytes())
}

/// Store `o` as the next version of its ID (objects.md §4.1): a VersionNodeEdge for the
/// first version, a VersionNodeChange after the current head otherwise. Returns the node.
pub fn store_versioned(st: &Store, o: V, t: i64) -> (String, String) {
    let h = hash_of(&o);
    let id = sha256_hex(microdata::id_microdata(&o).unwrap().as_bytes());
    let head = st.get_head(&id).unwrap();
    let node = match &head {
        None => obj(vec![("$type$", s("VersionNodeEdge")), ("data", s(&h)), ("depth", V::Int(0)), ("creationTime", V::Int(t))]),
        Some(prev) => {
            let depth = match st.get_object(prev).unwrap().get("depth") {
                Some(V::Int(d)) => *d,
                _ => 0,
            };
            obj(vec![("$type$", s("VersionNodeChange")), ("prev", s(prev)), ("data", s(&h)), ("depth", V::Int(depth + 1)), ("creationTime", V::Int(t))])
        }
    };
    let n = hash_of(&node);
    st.write_batch(&[o, node], &[(id.clone(), head, n.clone())]).unwrap();
    (n, id)
}

