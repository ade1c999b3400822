//! docs/chum-fastpath.md "closure-pages": a first sync asks 106 in pages and fetches from the
//! first page on; interop with a peer without the feature; a hostile exporter's pages; the
//! exporter's page tokens and its bound on open walks.
mod common;

use std::time::{Duration, Instant};

use common::*;
use lama_chum::{rpc, Config, Event, Message, Session};
use lama_core::store::Store;
use serde_json::{json, Value};

/// A's channel: `n` versions of a ChannelInfo, each with a ChatMessage, shared with B by an
/// IdAccess (every version node is a root). Returns the newest node.
fn build(a: &Store, n: usize) -> String {
    let tid = format!("{PA}<->{PB}");
    let mut node = String::new();
    let mut prev: Option<String> = None;
    for i in 0..n {
        let m = obj(vec![("$type$", s("ChatMessage")), ("text", s(&format!("message {i}"))), ("sender", s(PA))]);
        let mh = hash_of(&m);
        let mut l = vec![("$type$", s("LinkedListEntry")), ("data", s(&mh))];
        if let Some(p) = &prev {
            l.push(("previous", s(p)));
        }
        let l = obj(l);
        let lh = hash_of(&l);
        a.put_objects(&[m, l]).unwrap();
        prev = Some(lh.clone());
        node = store_versioned(a, obj(vec![("$type$", s("ChannelInfo")), ("id", s(&tid)), ("head", s(&lh))]), 1_700_000_000_000 + i as i64).0;
    }
    let ci = lama_core::hash::sha256_hex(lama_core::microdata::id_microdata(&obj(vec![("$type$", s("ChannelInfo")), ("id", s(&tid))])).unwrap().as_bytes());
    store_versioned(a, obj(vec![("$type$", s("IdAccess")), ("id", s(&ci)), ("person", lama_core::microdata::Value::List(vec![s(PB)])), ("group", lama_core::microdata::Value::List(vec![]))]), 1);
    node
}

fn sessions(a: &Store, b: &Store) -> (Session, Session) {
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut cb = Config::new(PB, PA);
    cb.exporter = false;
    (Session::new(a.clone(), ca), Session::new(b.clone(), cb))
}

type Filter<'a> = Box<dyn FnMut(&Value) -> Option<Value> + 'a>;

/// What a run saw: B's events, the service ids B asked, and for every 109 answer without
/// `more` (a walk's last page) how many objects B had imported when it arrived.
#[derive(Default)]
struct Seen {
    events: Vec<Event>,
    services: Vec<u64>,
    imported_at_last_page: Vec<usize>,
    /// Hashes B asked for with 101/108, and how many when each last page arrived.
    asked: usize,
    asked_at_last_page: Vec<usize>,
}

fn imported(events: &[Event]) -> usize {
    events.iter().map(|e| match e { Event::Imported { objects, id_objects, .. } => objects.len() + id_objects.len(), _ => 0 }).sum()
}

/// Run A (exporter) and B (importer) with a fake clock; `to_a` and `to_b` may rewrite (or
/// drop) the text messages B sends and A sends.
fn run(a: &mut Session, b: &mut Session, mut to_a: Filter, mut to_b: Filter) -> Seen {
    let mut seen = Seen::default();
    let t0 = Instant::now();
    let mut now = t0;
    let mut pages: std::collections::HashSet<u64> = Default::default();
    a.start(now);
    b.start(now);
    for _ in 0..100_000 {
        while let Some(e) = b.poll_event() {
            seen.events.push(e);
        }
        while a.poll_event().is_some() {}
        if b.is_finished() {
            break;
        }
        let mut moved = false;
        while let Some(m) = b.poll_transmit() {
            moved = true;
            let m = match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "request" {
                        seen.services.push(v["serviceId"].as_u64().unwrap());
                        if v["serviceId"] == 101 || v["serviceId"] == 108 {
                            seen.asked += v["args"][0].as_array().map_or(0, Vec::len);
                        }
                        if v["serviceId"] == 109 {
                            pages.insert(v["requestId"].as_u64().unwrap());
                        }
                    }
                    match to_a(&v) {
                        Some(v) => Message::Text(v.to_string()),
                        None => continue,
                    }
                }
                m => m,
            };
            a.handle_message(m, now);
        }
        while let Some(m) = a.poll_transmit() {
            moved = true;
            let m = match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "data" && pages.contains(&v["responseId"].as_u64().unwrap_or(0)) {
                        let page: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
                        if page.get("more").is_none() {
                            while let Some(e) = b.poll_event() {
                                seen.events.push(e);
                            }
                            seen.imported_at_last_page.push(imported(&seen.events));
                            seen.asked_at_last_page.push(seen.asked);
                        }
                    }
                    match to_b(&v) {
                        Some(v) => Message::Text(v.to_string()),
                        None => continue,
                    }
                }
                m => m,
            };
            b.handle_message(m, now);
        }
        if moved {
            continue;
        }
        let t = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min();
        match t {
            Some(t) if t <= t0 + Duration::from_secs(600) => {
                now = now.max(t);
                a.handle_timeout(now);
                b.handle_timeout(now);
            }
            _ => break,
        }
    }
    while let Some(e) = b.poll_event() {
        seen.events.push(e);
    }
    seen
}

/// B's 106 requests ask for pages of `l` entries (the importer asks 4,096; small pages make a
/// small graph take many).
fn page_size(l: u64) -> Filter<'static> {
    Box::new(move |v: &Value| {
        let mut v = v.clone();
        if v["serviceId"] == 106 {
            if let Some(p) = v["args"].get_mut(3) {
                *p = json!({"page": l});
            }
        }
        Some(v)
    })
}

fn pass() -> Filter<'static> {
    Box::new(|v: &Value| Some(v.clone()))
}

fn codes(seen: &Seen) -> Vec<String> {
    seen.events.iter().filter_map(|e| match e { Event::Error { code, .. } => Some(code.clone()), _ => None }).collect()
}

/// Every reference of every object and ID object in `st` is stored (chum.md §5.3).
fn no_holes(st: &Store) {
    assert!(st.verify().unwrap().is_empty());
}

#[test]
fn a_paged_first_sync_stores_objects_before_the_last_page() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, 40);
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, page_size(10), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(seen.services.contains(&106));
    // 40 versions: ~160 objects in pages of 10
    assert!(seen.services.iter().filter(|s| **s == 109).count() >= 10, "{:?}", seen.services);
    assert!(!seen.services.contains(&105));
    // objects were stored before the last page of the walk arrived
    // (the first fetched chunk of a pass is committed at once, later ones by the thousand)
    assert_eq!(seen.imported_at_last_page.len(), 1);
    assert!(seen.imported_at_last_page[0] > 0, "{:?}", seen.imported_at_last_page);
    assert!(seen.asked_at_last_page[0] >= 100, "{:?} of {}", seen.asked_at_last_page, seen.asked);
    assert!(b.has(&head).unwrap());
    for h in a.children(&head).unwrap() {
        assert!(b.has(&h.to_string()).unwrap(), "{h} missing");
    }
    no_holes(&b);
    // a second sync transfers nothing
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, page_size(10), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert_eq!(imported(&seen.events), 0);
    assert!(!seen.services.contains(&106) && !seen.services.contains(&101) && !seen.services.contains(&108));
}

#[test]
fn an_exporter_without_pages_answers_whole_closures() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, 20);
    let (mut sa, mut sb) = sessions(&a, &b);
    // the probe answer of a lama from before "closure-pages"
    let old = Box::new(|v: &Value| {
        let mut v = v.clone();
        if let Some(f) = v.pointer_mut("/data/features").and_then(Value::as_array_mut) {
            f.retain(|x| x != "closure-pages");
        }
        Some(v)
    });
    let mut args106 = Vec::new();
    let watch = Box::new(|v: &Value| {
        if v["serviceId"] == 106 {
            args106.push(v["args"].as_array().unwrap().len());
        }
        Some(v.clone())
    });
    let seen = run(&mut sa, &mut sb, watch, old);
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(!seen.services.contains(&109));
    assert!(!args106.is_empty() && args106.iter().all(|n| *n <= 3), "{args106:?}");
    assert!(b.has(&head).unwrap());
    no_holes(&b);
}

#[test]
fn an_importer_that_asks_no_pages_gets_whole_closures() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, 20);
    let (mut sa, mut sb) = sessions(&a, &b);
    // B's 106 requests as an importer from before "closure-pages" sends them, and the probe
    // answer without the feature (so B does not ask 109 either)
    let strip = Box::new(|v: &Value| {
        let mut v = v.clone();
        if v["serviceId"] == 106 {
            v["args"].as_array_mut().unwrap().truncate(2);
        }
        Some(v)
    });
    let mut whole = 0;
    let old = Box::new(|v: &Value| {
        let mut v = v.clone();
        if let Some(f) = v.pointer_mut("/data/features").and_then(Value::as_array_mut) {
            f.retain(|x| x != "closure-pages");
        }
        if let Some(d) = v["data"].as_str() {
            if d.starts_with("[{\"root\"") {
                let l: Value = serde_json::from_str(d).unwrap();
                assert!(l.as_array().unwrap().iter().all(|r| r.get("more").is_none()));
                whole += 1;
            }
        }
        Some(v)
    });
    let seen = run(&mut sa, &mut sb, strip, old);
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(whole > 0 && !seen.services.contains(&109));
    assert!(b.has(&head).unwrap());
    no_holes(&b);
}

#[test]
fn a_page_that_lists_an_unlisted_reference_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, 30);
    let (mut sa, mut sb) = sessions(&a, &b);
    // the exporter leaves the first ChatMessage of its third page out: a later entry references
    // it though it was neither listed before nor is it held by B
    let mut n = 0;
    let a2 = a.clone();
    let mut dropped = Vec::new();
    let hostile = Box::new(|v: &Value| {
        let mut v = v.clone();
        if let Some(d) = v["data"].as_str() {
            if d.starts_with("{\"root\"") {
                n += 1;
                if n == 2 {
                    let mut p: Value = serde_json::from_str(d).unwrap();
                    let c = p["children"].as_array_mut().unwrap();
                    let i = c.iter().position(|e| a2.get(e["hash"].as_str().unwrap()).unwrap().contains("/ChatMessage\"")).unwrap();
                    dropped.push(c.remove(i)["hash"].as_str().unwrap().to_string());
                    v["data"] = Value::String(p.to_string());
                }
            }
        }
        Some(v)
    });
    let seen = run(&mut sa, &mut sb, page_size(8), hostile);
    assert_eq!(dropped.len(), 1);
    assert!(codes(&seen).contains(&"CI-ACO".to_string()), "{:?}", codes(&seen));
    assert!(!b.has(&dropped[0]).unwrap() && !b.has(&head).unwrap());
    // nothing that references the gap was stored, and what was stored is whole
    no_holes(&b);
    assert!(sb.close_reason().is_some());
    // the next sync (an honest exporter) completes
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, page_size(8), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(b.has(&head).unwrap() && b.has(&dropped[0]).unwrap());
    no_holes(&b);
}

/// Requests to an exporter-only session, answered one by one.
fn ask(a: &mut Session, id: u64, service: u32, args: Vec<Value>) -> Value {
    let now = Instant::now();
    let args: Vec<Option<Value>> = args.into_iter().map(Some).collect();
    a.handle_message(Message::Text(rpc::request(id, service, &args)), now);
    while let Some(m) = a.poll_transmit() {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["responseId"] == id {
                return v;
            }
        }
    }
    panic!("no answer to {service}");
}

#[test]
fn page_tokens_and_the_bound_on_open_walks() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    build(&a, 12);
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut sa = Session::new(a.clone(), ca);
    sa.start(Instant::now());
    let roots: Value = serde_json::from_str(ask(&mut sa, 1, 2, vec![])["data"].as_str().unwrap()).unwrap();
    let nodes: Vec<Value> = roots.as_array().unwrap().iter().filter(|r| r["type"] == "version_node").map(|r| r["node"].clone()).collect();
    assert_eq!(nodes.len(), 12);
    // 12 roots with pages of one entry: 8 walks open, the rest answered whole
    let ans = ask(&mut sa, 2, 106, vec![Value::Array(nodes.clone()), json!([]), Value::Null, json!({"page": 1})]);
    let list: Value = serde_json::from_str(ans["data"].as_str().unwrap()).unwrap();
    let list = list.as_array().unwrap();
    let tokens: Vec<String> = list.iter().filter_map(|r| r.get("more").and_then(Value::as_str).map(str::to_string)).collect();
    assert_eq!(tokens.len(), 8);
    assert!(list.iter().all(|r| r["children"].as_array().unwrap().len() == 1 || r.get("more").is_none()));
    assert!(list[8..].iter().all(|r| r.get("more").is_none() && r["children"].as_array().unwrap().len() > 1));
    // an unknown token, and a malformed one: a clear error
    for (i, bad) in [json!("99.1"), json!("nonsense"), json!(7)].into_iter().enumerate() {
        let e = ask(&mut sa, 10 + i as u64, 109, vec![bad]);
        assert_eq!(e["type"], "error", "{e}");
        assert_eq!(e["error"]["code"], "LAMA-CHUM-PAGE", "{e}");
    }
    // follow the first walk to its end; a repeated request (a retry) gets the same page
    let mut t = tokens[0].clone();
    let mut id = 100;
    let mut listed = 1;
    loop {
        id += 1;
        let p = ask(&mut sa, id, 109, vec![json!(t)]);
        let again = ask(&mut sa, id + 1000, 109, vec![json!(t)]);
        let page: Value = serde_json::from_str(p["data"].as_str().expect("a page")).unwrap();
        if let Some(more) = page.get("more") {
            assert_eq!(again["data"], p["data"]);
            listed += page["children"].as_array().unwrap().len();
            t = more.as_str().unwrap().to_string();
        } else {
            listed += page["children"].as_array().unwrap().len();
            // the walk is closed: its token expired
            assert_eq!(again["error"]["code"], "LAMA-CHUM-PAGE");
            break;
        }
        assert!(id < 1000);
    }
    // the walk listed the root's whole closure (dependencies first, each once)
    let whole = a.children(nodes[0].as_str().unwrap()).unwrap().len();
    assert_eq!(listed, whole);
    // a walk closed: a new one may open
    let ans = ask(&mut sa, 5000, 106, vec![json!([nodes[11]]), json!([]), Value::Null, json!({"page": 1})]);
    let list: Value = serde_json::from_str(ans["data"].as_str().unwrap()).unwrap();
    assert!(list[0].get("more").is_some());
    let ans = ask(&mut sa, 5001, 106, vec![json!([nodes[10]]), json!([]), Value::Null, json!({"page": 1})]);
    let list: Value = serde_json::from_str(ans["data"].as_str().unwrap()).unwrap();
    assert!(list[0].get("more").is_none());
}

#[test]
fn an_interrupted_paged_sync_resumes_and_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, 40);
    let (mut sa, mut sb) = sessions(&a, &b);
    // the connection goes silent from the fourth page answer on: B's requests time out
    let mut pages = 0;
    let cut = Box::new(|v: &Value| {
        if let Some(d) = v["data"].as_str() {
            if d.starts_with("{\"root\"") {
                pages += 1;
            }
        }
        (pages < 4).then(|| v.clone())
    });
    let seen = run(&mut sa, &mut sb, page_size(10), cut);
    assert!(codes(&seen).contains(&"LAMA-CHUM-TIMEOUT".to_string()), "{:?}", codes(&seen));
    let first = imported(&seen.events);
    assert!(first > 0 && !b.has(&head).unwrap());
    no_holes(&b);
    // the next session fetches only the rest and completes
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, page_size(10), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(b.has(&head).unwrap());
    let total = a.children(&head).unwrap().iter().filter(|h| a.kind(&h.to_string()).unwrap().is_some()).count();
    assert!(imported(&seen.events) + first <= total + 1, "{} + {first} of {total}", imported(&seen.events));
    for h in a.children(&head).unwrap() {
        assert!(b.has(&h.to_string()).unwrap(), "{h} missing");
    }
    no_holes(&b);
}

/// The ChatMessage and LinkedListEntry hashes of `build`'s chain, in order.
fn chain(n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut prev: Option<String> = None;
    for i in 0..n {
        let m = obj(vec![("$type$", s("ChatMessage")), ("text", s(&format!("message {i}"))), ("sender", s(PA))]);
        let mh = hash_of(&m);
        let mut l = vec![("$type$", s("LinkedListEntry")), ("data", s(&mh))];
        if let Some(p) = &prev {
            l.push(("previous", s(p)));
        }
        let lh = hash_of(&obj(l));
        prev = Some(lh.clone());
        out.push((mh, lh));
    }
    out
}

/// A hostile exporter in a pass of 12,000 objects (more than a page of 4,096, and enough
/// ready items for batches on the commit thread, `COMMIT_MIN_FAST`): in its 101 answers it
/// sends wrong bytes for a ChatMessage late in the chain, and it slips an object that no
/// granted root reaches into a page (with its bytes in the 101 answer). B refuses both,
/// stores every good object (the chain up to the forged message, every other message), none
/// that needs the forged one, ends the session with the errors, and its store verifies clean;
/// the next sync from an honest exporter completes.
#[test]
fn a_hostile_exporter_in_a_large_paged_pass_is_refused_and_the_good_objects_kept() {
    const N: usize = 3000;
    const K: usize = 2600;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, N);
    let links = chain(N);
    let target = links[K].0.clone();
    let good = a.get(&target).unwrap();
    let forged = good.replace("message 2600", "message 2600 forged");
    assert_ne!(forged, good);
    let stray = r#"<div itemscope itemtype="//refin.io/License"><span itemprop="name">Stray</span><span itemprop="description">not referenced</span></div>"#;
    let sh = lama_core::hash::sha256_hex(stray.as_bytes());
    let (mut sa, mut sb) = sessions(&a, &b);
    // B's 101 requests: request id -> the hashes asked
    let asked = std::cell::RefCell::new(std::collections::HashMap::<u64, Vec<String>>::new());
    let watch = Box::new(|v: &Value| {
        if v["serviceId"] == 101 {
            let hs = v["args"][0].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect();
            asked.borrow_mut().insert(v["requestId"].as_u64().unwrap(), hs);
        }
        Some(v.clone())
    });
    let (mut forged_sent, mut stray_listed, mut stray_sent) = (0, 0, 0);
    let mut pages = 0;
    let hostile = Box::new(|v: &Value| {
        let mut v = v.clone();
        // a lama exporter from before "batch-binary": B asks 101, whose answers are JSON
        if let Some(f) = v.pointer_mut("/data/features").and_then(Value::as_array_mut) {
            f.retain(|x| x != "batch-binary");
        }
        let Some(d) = v["data"].as_str().map(str::to_string) else { return Some(v) };
        if d.starts_with("{\"root\"") {
            pages += 1;
            if pages == 1 {
                let mut p: Value = serde_json::from_str(&d).unwrap();
                p["children"].as_array_mut().unwrap().insert(0, json!({"type": "object", "hash": sh}));
                v["data"] = Value::String(p.to_string());
                stray_listed += 1;
            }
        } else if let Some(hs) = v["responseId"].as_u64().and_then(|id| asked.borrow().get(&id).cloned()) {
            let mut texts: Vec<Value> = serde_json::from_str(&d).unwrap();
            assert_eq!(texts.len(), hs.len());
            for (t, h) in texts.iter_mut().zip(&hs) {
                if *h == target {
                    *t = json!(forged);
                    forged_sent += 1;
                } else if *h == sh {
                    *t = json!(stray);
                    stray_sent += 1;
                }
            }
            v["data"] = Value::String(Value::Array(texts).to_string());
        }
        Some(v)
    });
    let seen = run(&mut sa, &mut sb, watch, hostile);
    assert_eq!((forged_sent, stray_listed, stray_sent), (1, 1, 1));
    assert!(seen.services.contains(&109) && seen.services.contains(&101) && !seen.services.contains(&108));
    let got = codes(&seen);
    assert!(got.contains(&"CIEC-FO2".to_string()), "{got:?}");
    assert!(got.contains(&"LAMA-CHUM-NOTREACHABLE".to_string()), "{got:?}");
    // the session ended (one-shot), with its errors in the Chum log
    assert_eq!(sb.close_reason(), Some("chum finished"));
    let log = seen.events.iter().find_map(|e| match e { Event::Finished { log, .. } => Some(log.clone()), _ => None }).unwrap();
    assert!(log.errors.iter().any(|e| e.contains("CIEC-FO2")), "{:?}", log.errors);
    // nothing bad kept
    assert!(!b.has(&target).unwrap() && !b.has(&lama_core::hash::sha256_hex(forged.as_bytes())).unwrap());
    assert!(!b.has(&sh).unwrap());
    assert!(!b.has(&head).unwrap());
    // the good ones kept: the chain before the forged message, every other message
    for (i, (m, l)) in links.iter().enumerate() {
        assert_eq!(b.has(m).unwrap(), i != K, "message {i}");
        assert_eq!(b.has(l).unwrap(), i < K, "entry {i}");
    }
    assert!(imported(&seen.events) > 4 * K, "{}", imported(&seen.events));
    no_holes(&b);
    assert!(a.verify().unwrap().is_empty());
    // an honest exporter then completes the sync
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, pass(), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(b.has(&head).unwrap() && !b.has(&sh).unwrap());
    assert!(links.iter().all(|(m, l)| b.has(m).unwrap() && b.has(l).unwrap()));
    no_holes(&b);
}

/// Issue 8 (session 15): in a large paged first sync the objects are committed while the
/// fetch goes on, in batches of about `COMMIT_MIN_FAST` (8,192), not all at the end. An item
/// lets its referrers become ready once it is queued for a commit, not once its batch is
/// made: before, only the frontier of the dependency graph was ever ready (a few hundred
/// items per fetched chunk), the 8,192 were reached only at the end of the fetch, and the
/// whole pass went into transactions of up to 32,768 after the wire was idle (here one
/// `imported` event of ~22,000 objects after the first chunk's).
#[test]
fn a_large_paged_sync_commits_during_the_fetch_in_bounded_batches() {
    const N: usize = 6000; // 4 objects per version: ~24,000 objects, 6 pages of 4,096
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (new_store(dir.path(), "a"), new_store(dir.path(), "b"));
    let head = build(&a, N);
    let (mut sa, mut sb) = sessions(&a, &b);
    let seen = run(&mut sa, &mut sb, pass(), pass());
    assert_eq!(codes(&seen), Vec::<String>::new());
    assert!(seen.services.iter().filter(|s| **s == 109).count() >= 4, "{:?}", seen.services);
    let sizes: Vec<usize> = seen
        .events
        .iter()
        .filter_map(|e| match e { Event::Imported { objects, id_objects, .. } => Some(objects.len() + id_objects.len()), _ => None })
        .collect();
    let total: usize = sizes.iter().sum();
    assert!(total >= 4 * N, "{sizes:?}");
    // the first chunk at once, then batches of 8,192 ready items (plus what one fetched
    // chunk of 2,048 adds), the rest at the end: none near the whole pass
    assert!(sizes.len() >= 4, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 8192 + 2 * 2048), "{sizes:?}");
    assert!(b.has(&head).unwrap());
    no_holes(&b);
}

/// How A walks the early first page in [`first_sync`].
#[derive(Clone, Copy, PartialEq, Debug)]
enum Early {
    /// On a thread of its own begun at the roots answer (the default).
    Thread,
    /// As idle work, run before B's messages reach A (as the driver does once everything is
    /// sent, lama-net driver.rs).
    Idle,
    /// Not at all: walked when asked.
    Off,
}

/// A first sync between `a` and a new store `b`, A walking the early first page as `early`
/// says. Returns B's events, A's answers to B's 106 requests, and whether A had the early
/// walk going (on its thread, or as idle work due) after its roots answer and before the
/// first 106 came.
fn first_sync(a: &Store, b: &Store, early: Early) -> (Vec<Event>, Vec<String>, bool) {
    let (mut sa, mut sb) = sessions(a, b);
    if early != Early::Thread {
        let mut ca = Config::new(PA, PB);
        ca.importer = false;
        ca.early_walk_thread = false;
        sa = Session::new(a.clone(), ca);
    }
    let (mut events, mut answers, mut due_after_roots) = (Vec::new(), Vec::new(), false);
    let (mut roots_id, mut closure_ids, mut roots_answered) = (None, std::collections::HashSet::new(), false);
    let mut now = Instant::now();
    let t0 = now;
    sa.start(now);
    sb.start(now);
    for _ in 0..100_000 {
        while let Some(e) = sb.poll_event() {
            events.push(e);
        }
        while sa.poll_event().is_some() {}
        if sb.is_finished() {
            break;
        }
        if early == Early::Thread && sa.prewalk_on_thread() {
            due_after_roots |= roots_answered && closure_ids.is_empty();
        }
        if early == Early::Idle && sa.idle_due() {
            due_after_roots |= roots_answered && closure_ids.is_empty();
            sa.idle(now);
        }
        let mut moved = false;
        while let Some(m) = sb.poll_transmit() {
            moved = true;
            if let Message::Text(t) = &m {
                let v: Value = serde_json::from_str(t).unwrap();
                match v["serviceId"].as_u64() {
                    Some(102) => roots_id = v["requestId"].as_u64(),
                    Some(106) => {
                        closure_ids.insert(v["requestId"].as_u64().unwrap());
                    }
                    _ => {}
                }
            }
            sa.handle_message(m, now);
        }
        while let Some(m) = sa.poll_transmit() {
            moved = true;
            if let Message::Text(t) = &m {
                let v: Value = serde_json::from_str(t).unwrap();
                let rid = v["responseId"].as_u64();
                roots_answered |= rid.is_some() && rid == roots_id;
                if rid.is_some_and(|r| closure_ids.contains(&r)) {
                    answers.push(v["data"].as_str().unwrap().to_string());
                }
            }
            sb.handle_message(m, now);
        }
        if moved {
            continue;
        }
        match [sa.poll_timeout(), sb.poll_timeout()].into_iter().flatten().min() {
            Some(t) if t <= t0 + Duration::from_secs(600) => {
                now = now.max(t);
                sa.handle_timeout(now);
                sb.handle_timeout(now);
            }
            _ => break,
        }
    }
    while let Some(e) = sb.poll_event() {
        events.push(e);
    }
    (events, answers, due_after_roots)
}

/// docs/chum-fastpath.md "Paged closure", *Early first page*: after a roots answer that lists
/// a long history, A walks the first page of its newest node's closure while B reads the
/// answer (on a thread of its own begun with the answer, or as idle work), and answers B's
/// first 106 with it: the same answer as walked when asked.
#[test]
fn the_first_page_is_walked_while_the_importer_reads_the_roots() {
    const N: usize = 1100; // ~4,400 objects: two pages of 4,096
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let head = build(&a, N);
    let mut answers = Vec::new();
    for (name, early) in [("b1", Early::Thread), ("b2", Early::Idle), ("b3", Early::Off)] {
        let b = new_store(dir.path(), name);
        let (events, got, due) = first_sync(&a, &b, early);
        let errors: Vec<&Event> = events.iter().filter(|e| matches!(e, Event::Error { .. })).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(b.has(&head).unwrap());
        no_holes(&b);
        assert_eq!(due, early != Early::Off, "{early:?}: the early walk going after the roots answer");
        let first = got.first().expect("a 106 answer").clone();
        assert!(first.contains("\"more\""), "paged: {}", &first[..200.min(first.len())]);
        answers.push(first);
    }
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[1], answers[2]);
    // a short history is not walked early
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    build(&a, 20);
    for early in [Early::Thread, Early::Idle] {
        let b = new_store(dir.path(), &format!("b{early:?}"));
        let (_, _, due) = first_sync(&a, &b, early);
        assert!(!due, "{early:?}");
    }
}

/// docs/chum-fastpath.md "Paged closure", *Walk ahead*: A walks a walk's next page on a thread
/// of its own as soon as it answered the page before, pruned at `known` as it was then. When
/// `known` grows before the page is asked (here a hint in a 106 between two 109s), the page
/// answered lists nothing in `known`, not even the older version nodes the walk had entered
/// before (they were listed until session 17), is full to the page size, and holds the next
/// entries of the closure in dependency order.
#[test]
fn a_page_walked_ahead_is_pruned_at_what_the_importer_said_it_holds_meanwhile() {
    const L: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let newest = build(&a, 40);
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut sa = Session::new(a.clone(), ca);
    sa.start(Instant::now());
    let roots: Value = serde_json::from_str(ask(&mut sa, 1, 2, vec![])["data"].as_str().unwrap()).unwrap();
    let nodes: Vec<String> = roots.as_array().unwrap().iter().filter(|r| r["type"] == "version_node").map(|r| r["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(nodes.len(), 40);
    assert_eq!(nodes[39], newest, "the roots come oldest first");
    let entries = |page: &Value| -> Vec<String> { page["children"].as_array().unwrap().iter().map(|c| c["hash"].as_str().unwrap().to_string()).collect() };
    let ans = ask(&mut sa, 2, 106, vec![json!([newest]), json!([]), Value::Null, json!({"page": L})]);
    let first: Value = serde_json::from_str(ans["data"].as_str().unwrap()).unwrap();
    let first = &first[0];
    let page1 = entries(first);
    assert_eq!(page1.len(), L);
    // B says it holds a node from the middle of the history (a hint): its closure joins
    // `known`, most of it not listed yet
    let hint = &nodes[20];
    let ans = ask(&mut sa, 3, 106, vec![json!([]), json!([hint]), Value::Null, json!({"page": L})]);
    assert_eq!(ans["data"], "[]", "{ans}");
    let mut known: std::collections::HashSet<String> = a.children(hint).unwrap().iter().map(|h| h.to_hex()).collect();
    known.insert(hint.clone());
    let p = ask(&mut sa, 4, 109, vec![first["more"].clone()]);
    let page2 = entries(&serde_json::from_str::<Value>(p["data"].as_str().unwrap()).unwrap());
    let whole: Vec<String> = a.children(&newest).unwrap().iter().map(|h| h.to_hex()).collect();
    let want: Vec<String> = whole.iter().filter(|h| !known.contains(*h) && !page1.contains(h)).take(L).cloned().collect();
    let bad: Vec<usize> = page2.iter().enumerate().filter(|(_, h)| known.contains(*h)).map(|(i, _)| i).collect();
    let p1k = page1.iter().filter(|h| known.contains(*h)).count();
    assert!(bad.is_empty(), "a page lists nothing the importer holds: {bad:?} of {}, known {}, page1 in known {p1k}", page2.len(), known.len());
    assert_eq!(page2, want);
}
