//! Malicious or broken peers (chum.md §6.4, docs/chum-session.md §2): the session never
//! panics, never stores what it cannot verify, and reports what happened.
mod common;

use std::time::{Duration, Instant};

use common::*;
use lama_chum::{Config, Message, Session};
use lama_core::store::Store;
use serde_json::{json, Value};

const TOPIC: &str = "e4e1d04d7b420ce075e2b964c2a59e99444a1a5c133b98b8b78e520d31724462";
const LICENSE: &str = "9a8405ef0c0fb9877c9a6bd25af5e3861549c5ec2a2bde041edeb9ad3559467a";

/// A's store with every object of the recorded chat (transcript-pairing-and-chat.json).
fn store_a(dir: &std::path::Path) -> (Store, String) {
    let s = new_store(dir, "a");
    let mut roots = String::new();
    let mut items = Vec::new();
    for e in vectors("transcript-pairing-and-chat.json") {
        if e["conn"] != "B#5" || e["direction"] != "B←A" {
            continue;
        }
        if let Some(d) = e["message"]["data"].as_str() {
            if d.starts_with("<div") {
                items.push((d.to_string(), None));
            } else if d.contains("version_node") && roots.is_empty() {
                roots = d.to_string();
            }
        }
    }
    s.put_microdata(&items).unwrap();
    (s, roots)
}

type Tamper<'a> = Box<dyn FnMut(u64, &Value, Value) -> Option<Value> + 'a>;

/// An exporter built on a store with a fixed roots answer, and a hook to tamper with answers.
struct StorePeer<'a> {
    store: Store,
    roots: String,
    tamper: Tamper<'a>,
    requests: Vec<Value>,
}

impl Peer for StorePeer<'_> {
    fn receive(&mut self, msg: Message) -> Vec<Message> {
        let Message::Text(t) = msg else { return vec![] };
        let m: Value = serde_json::from_str(&t).unwrap();
        if m["type"] != "request" {
            return vec![];
        }
        self.requests.push(m.clone());
        let id = m["requestId"].as_u64().unwrap();
        let service = m["serviceId"].as_u64().unwrap();
        let arg = m["args"][0].as_str().unwrap_or("").to_string();
        let data: Value = match service {
            1 => json!(8),
            2 => json!(self.roots),
            4 | 5 => {
                let list: Vec<Value> = self
                    .store
                    .children_tagged(&arg)
                    .unwrap()
                    .into_iter()
                    .rev()
                    .map(|(k, h)| json!({"type": match k { lama_core::microdata::RefKind::Obj => "object", lama_core::microdata::RefKind::Id => "id", lama_core::microdata::RefKind::Blob => "blob", lama_core::microdata::RefKind::Clob => "clob" }, "hash": h.to_hex()}))
                    .collect();
                json!(Value::Array(list).to_string())
            }
            6 | 7 => json!(self.store.get(&arg).unwrap_or_default()),
            10 => json!("$__undefined$"),
            _ => {
                return vec![Message::Text(json!({"responseId": id, "type": "error", "error": {"name": "TypeError", "message": "x", "code": "UNKNOWN-SERVICE"}}).to_string())]
            }
        };
        match (self.tamper)(service, &m, data) {
            Some(d) => vec![Message::Text(json!({"responseId": id, "type": "data", "data": d}).to_string())],
            None => vec![],
        }
    }
}

fn importer(store: &Store, f: impl FnOnce(&mut Config)) -> Session {
    let mut c = Config::new(PB, PA);
    c.exporter = false;
    c.fast_path = false;
    f(&mut c);
    Session::new(store.clone(), c)
}

fn run_with(tamper: impl FnMut(u64, &Value, Value) -> Option<Value>, f: impl FnOnce(&mut Config)) -> (Run, Session, Store, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (a, roots) = store_a(dir.path());
    let b = new_store(dir.path(), "b");
    let mut peer = StorePeer { store: a.clone(), roots, tamper: Box::new(tamper), requests: Vec::new() };
    let mut s = importer(&b, f);
    let (run, _) = pump(&mut s, &mut peer, Instant::now(), Duration::from_secs(600));
    (run, s, a, b, dir)
}

#[test]
fn honest_peer_syncs_everything() {
    let (run, s, a, b, _d) = run_with(|_, _, d| Some(d), |_| {});
    assert_eq!(s.close_reason(), Some("chum finished"));
    assert_eq!(run.codes(), Vec::<String>::new());
    assert_eq!(run.merges().len(), 1);
    assert!(b.has(TOPIC).unwrap() && b.has(LICENSE).unwrap());
    assert_eq!(b.count().unwrap(), a.count().unwrap());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn wrong_bytes_for_a_hash_are_refused() {
    let forged = r#"<div itemscope itemtype="//refin.io/Topic"><span itemprop="name">evil</span><span itemprop="id">evil</span></div>"#;
    let (run, s, _a, b, _d) = run_with(
        |svc, m, d| Some(if svc == 6 && m["args"][0] == TOPIC { json!(forged) } else { d }),
        |_| {},
    );
    assert_eq!(s.close_reason(), Some("chum finished"));
    assert!(run.codes().contains(&"CIEC-FO2".to_string()));
    assert!(!b.has(TOPIC).unwrap());
    assert!(!b.has(&lama_core::hash::sha256_hex(forged.as_bytes())).unwrap());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn object_not_reachable_from_its_root_is_refused() {
    // a valid object the Topic does not reference is slipped into its children list
    let stray = r#"<div itemscope itemtype="//refin.io/License"><span itemprop="name">Stray</span><span itemprop="description">not referenced</span></div>"#;
    let sh = lama_core::hash::sha256_hex(stray.as_bytes());
    let sh2 = sh.clone();
    let (run, _s, _a, b, _d) = run_with(
        move |svc, m, d| {
            if svc == 4 && m["args"][0] == TOPIC {
                let mut l: Vec<Value> = serde_json::from_str(d.as_str().unwrap()).unwrap();
                l.insert(0, json!({"type": "object", "hash": sh2}));
                Some(json!(Value::Array(l).to_string()))
            } else if svc == 6 && m["args"][0] == sh2.as_str() {
                Some(json!(stray))
            } else {
                Some(d)
            }
        },
        |_| {},
    );
    assert!(run.codes().contains(&"LAMA-CHUM-NOTREACHABLE".to_string()), "{:?}", run.codes());
    assert!(!b.has(&sh).unwrap());
    assert!(b.has(TOPIC).unwrap());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn access_object_as_a_child_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    use lama_core::microdata::Value as V;
    let st = |x: &str| V::Str(x.to_string());
    let access = V::Dict(vec![
        (st("$type$"), st("Access")),
        (st("object"), st(TOPIC)),
        (st("person"), V::List(vec![st(PB)])),
        (st("group"), V::List(vec![])),
    ]);
    let scratch = new_store(dir.path(), "scratch");
    let ah = scratch.put_objects(&[access]).unwrap()[0].hash.clone();
    let atext = scratch.get(&ah).unwrap();
    let ah2 = ah.clone();
    let (run, _s, _a, b, _d) = run_with(
        move |svc, m, d| {
            if svc == 4 && m["args"][0] == TOPIC {
                let mut l: Vec<Value> = serde_json::from_str(d.as_str().unwrap()).unwrap();
                l.insert(0, json!({"type": "object", "hash": ah2}));
                Some(json!(Value::Array(l).to_string()))
            } else if svc == 6 && m["args"][0] == ah2.as_str() {
                Some(json!(atext))
            } else {
                Some(d)
            }
        },
        |_| {},
    );
    assert!(run.codes().contains(&"CIEC-FO3".to_string()), "{:?}", run.codes());
    assert!(!b.has(&ah).unwrap());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn malformed_frames_are_ignored_and_counted() {
    let mut once = true;
    let (run, s, _a, b, _d) = run_with(
        move |svc, _m, d| {
            if svc == 2 && once {
                once = false;
                return None; // lost: the request is retried after its timeout
            }
            Some(d)
        },
        |c| c.request_timeout = Duration::from_secs(10),
    );
    assert_eq!(s.stats().retries, 1);
    assert!(b.has(TOPIC).unwrap());
    drop(run);
    // garbage text and a short binary message: dropped, counted, never fatal
    let dir = tempfile::tempdir().unwrap();
    let st = new_store(dir.path(), "x");
    let mut s = importer(&st, |_| {});
    let t = Instant::now();
    s.start(t);
    s.handle_message(Message::Text("nope{".into()), t);
    s.handle_message(Message::Binary(vec![1, 2, 3]), t);
    s.handle_message(Message::Binary(lama_chum::rpc::binary_frame(77, b"x")), t);
    let mut codes = Vec::new();
    while let Some(e) = s.poll_event() {
        if let lama_chum::Event::Error { code, fatal, .. } = e {
            assert!(!fatal);
            codes.push(code);
        }
    }
    assert_eq!(codes, vec!["LAMA-CHUM-FRAME"; 3]);
    assert_eq!(s.stats().requests_invalid, 1);
    assert!(!s.is_finished());
}

#[test]
fn oversized_frame_ends_the_session() {
    let (run, s, _a, b, _d) = run_with(|_, _, d| Some(d), |c| c.max_message = 1024);
    assert!(s.is_finished());
    assert!(s.close_reason().unwrap().starts_with("LAMA-CHUM-FRAME"), "{:?}", s.close_reason());
    assert_eq!(run.errors().iter().find(|e| e.1).unwrap().0, "LAMA-CHUM-FRAME");
    assert!(!b.has(TOPIC).unwrap());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn peer_that_stops_answering_times_out() {
    let (run, s, _a, b, _d) = run_with(|svc, _, d| if svc == 6 { None } else { Some(d) }, |c| {
        c.request_timeout = Duration::from_secs(10);
        c.max_retries = 2;
    });
    assert!(s.close_reason().unwrap().starts_with("LAMA-CHUM-TIMEOUT"));
    let errs = run.errors();
    assert_eq!(errs.last().unwrap(), &("LAMA-CHUM-TIMEOUT".to_string(), true));
    assert!(s.stats().retries >= 2);
    assert!(run.log().unwrap().b_to_a_objects.is_empty());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn unknown_service_gets_the_reference_error() {
    let dir = tempfile::tempdir().unwrap();
    let st = new_store(dir.path(), "x");
    let mut c = Config::new(PA, PB);
    c.importer = false;
    let mut s = Session::new(st, c);
    let t = Instant::now();
    s.start(t);
    s.handle_message(Message::Text(r#"{"requestId":5,"type":"request","serviceId":9,"args":[]}"#.into()), t);
    assert_eq!(
        s.poll_transmit(),
        Some(Message::Text(r#"{"responseId":5,"type":"error","error":{"name":"TypeError","message":"Not a function: Servcie ID 9 [number]","code":"UNKNOWN-SERVICE"}}"#.into()))
    );
    assert!(!s.is_finished());
}

#[test]
fn object_never_unlocked_is_refused_ces_go1() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = store_a(dir.path());
    let mut c = Config::new(PA, PB);
    c.importer = false;
    let mut s = Session::new(a.clone(), c);
    let t = Instant::now();
    s.start(t);
    assert!(a.has(TOPIC).unwrap());
    s.handle_message(Message::Text(json!({"requestId":0,"type":"request","serviceId":6,"args":[TOPIC]}).to_string()), t);
    let Some(Message::Text(ans)) = s.poll_transmit() else { panic!() };
    let ans: Value = serde_json::from_str(&ans).unwrap();
    assert_eq!(ans["error"]["code"], "CES-GO1");
    assert_eq!(ans["error"]["message"], format!("CES-GO1: Unauthorized, obj {TOPIC}"));
    // recorded, not fatal (docs/chum-session.md §2.1); nothing was sent
    assert!(!s.is_finished());
    let mut codes = Vec::new();
    while let Some(e) = s.poll_event() {
        if let lama_chum::Event::Error { code, fatal, .. } = e {
            assert!(!fatal);
            codes.push(code);
        }
    }
    assert_eq!(codes, vec!["CES-GO1"]);
    assert_eq!(s.stats().objects_sent, 0);
    s.connection_closed("test over", t);
    let mut log = None;
    while let Some(e) = s.poll_event() {
        if let lama_chum::Event::Finished { log: l, .. } = e {
            log = Some(l);
        }
    }
    let log = log.unwrap();
    assert!(log.a_to_b_objects.is_empty());
    assert_eq!(log.errors, vec![format!("CES-GO1: Unauthorized, obj {TOPIC}")]);
}
