//! docs/chum-fastpath.md "Speculative push" (issue 10): a write's pre-commit record makes the
//! exporter push the new version nodes granted to the peer before the write is committed,
//! with the mark of what is committed; the NOTIFY after the commit is not sent (no echo), and
//! the peer's mark catches up with a later NOTIFY.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lama_chum::{Config, Event, Message, Session};
use lama_core::hash::Hash;
use lama_core::microdata::{self, Value as V};
use lama_core::store::{PendingCommit, PendingState, Store};
use serde_json::Value;

const PC: &str = "0c6f1e3c58b4f2d9a07e5b4c3d2e1f00112233445566778899aabbccddeeff00";

fn id_of(o: &V) -> String {
    lama_core::hash::sha256_hex(microdata::id_microdata(o).unwrap().as_bytes())
}

/// The objects of one chat post to the channel of topic `tid` (a ChatMessage, a list entry on
/// `prev`, the ChannelInfo version, its version node after the current head), not written:
/// `(objects, heads, node hash, entry hash, ID hash, (hash, is ID, microdata) of each)`.
#[allow(clippy::type_complexity)]
fn post(a: &Store, tid: &str, text: &str, prev: Option<&str>, t: i64) -> (Vec<V>, Vec<(String, Option<String>, String)>, String, String, String, Vec<(Hash, bool, String)>) {
    let m = obj(vec![("$type$", s("ChatMessage")), ("text", s(text)), ("sender", s(PA))]);
    let mh = hash_of(&m);
    let mut l = vec![("$type$", s("LinkedListEntry")), ("data", s(&mh))];
    if let Some(p) = prev {
        l.push(("previous", s(p)));
    }
    let l = obj(l);
    let lh = hash_of(&l);
    let ci = obj(vec![("$type$", s("ChannelInfo")), ("id", s(tid)), ("head", s(&lh))]);
    let id = id_of(&ci);
    let head = a.get_head(&id).unwrap();
    let node = match &head {
        None => obj(vec![("$type$", s("VersionNodeEdge")), ("data", s(&hash_of(&ci))), ("depth", V::Int(0)), ("creationTime", V::Int(t))]),
        Some(p) => obj(vec![("$type$", s("VersionNodeChange")), ("prev", s(p)), ("data", s(&hash_of(&ci))), ("depth", V::Int(1)), ("creationTime", V::Int(t))]),
    };
    let n = hash_of(&node);
    let objs = vec![m, l, ci, node];
    let texts = objs.iter().map(|o| (Hash::parse(&hash_of(o)).unwrap(), false, microdata::serialize(o).unwrap())).collect();
    (objs, vec![(id.clone(), head, n.clone())], n, lh, id, texts)
}

fn grant(a: &Store, id: &str, person: &str) {
    store_versioned(a, obj(vec![("$type$", s("IdAccess")), ("id", s(id)), ("person", V::List(vec![s(person)])), ("group", V::List(vec![]))]), 1);
}

fn live(local: &str, remote: &str) -> Config {
    let mut c = Config::new(local, remote);
    c.keep_running = true;
    c.poll_interval = Duration::from_secs(5);
    c
}

/// Everything `s` sends now.
fn drain(s: &mut Session) -> Vec<Message> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// The payloads of the NOTIFY requests among `msgs`.
fn notifies(msgs: &[Message]) -> Vec<Value> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Text(t) => serde_json::from_str::<Value>(t).ok(),
            _ => None,
        })
        .filter(|v| v["type"] == "request" && v["serviceId"] == 104)
        .map(|v| v["args"][0].clone())
        .collect()
}

fn root_nodes(n: &Value) -> Vec<String> {
    n["roots"].as_array().unwrap().iter().filter_map(|r| r["node"].as_str().map(str::to_string)).collect()
}

/// A and B live, B has A's first post of channel X (granted to B) and has confirmed it; A's
/// channel Y is granted to C only.
struct Setup {
    _dir: tempfile::TempDir,
    a: Store,
    b: Store,
    sa: Session,
    sb: Session,
    now: Instant,
    x: (String, String),
    y: (String, String),
    key: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let tx = format!("{PA}<->{PB}");
    let ty = format!("{PA}<->{PC}");
    let (objs, heads, _, ex, idx, _) = post(&a, &tx, "x one", None, 1);
    a.write_batch(&objs, &heads).unwrap();
    let (objs, heads, _, ey, idy, _) = post(&a, &ty, "y one", None, 1);
    a.write_batch(&objs, &heads).unwrap();
    grant(&a, &idx, PB);
    grant(&a, &idy, PC);
    let mut sa = Session::new(a.clone(), live(PA, PB));
    let mut sb = Session::new(b.clone(), live(PB, PA));
    let (_ra, rb, now) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(3));
    assert!(rb.events.iter().any(|e| matches!(e, Event::ReceiptSent { mark: Some(_), .. })), "{:?}", rb.events);
    let key = format!("{PA}/{}", a.store_id().unwrap());
    Setup { _dir: dir, a, b, sa, sb, now, x: (tx, ex), y: (ty, ey), key }
}

/// B runs what A sent (and A what B answers) until both are quiet; no timer runs.
fn exchange(st: &mut Setup, first: Vec<Message>) {
    for m in first {
        st.sb.handle_message(m, st.now);
    }
    loop {
        let mut moved = false;
        for m in drain(&mut st.sb) {
            moved = true;
            st.sa.handle_message(m, st.now);
        }
        for m in drain(&mut st.sa) {
            moved = true;
            st.sb.handle_message(m, st.now);
        }
        // B's zero sleeps (the yield before its receipt) are due at once
        if !moved {
            match st.sb.poll_timeout() {
                Some(t) if t <= st.now => st.sb.handle_timeout(st.now),
                _ => break,
            }
        }
    }
}

#[test]
fn a_pending_write_is_pushed_before_its_commit_to_a_granted_peer_only() {
    let mut st = setup();
    let a = st.a.clone();
    let (objs, heads, nx, _, idx, mut texts) = post(&a, &st.x.0, "x two", Some(&st.x.1), 2);
    let (objs_y, heads_y, ny, _, idy, texts_y) = post(&a, &st.y.0, "y two", Some(&st.y.1), 2);
    texts.extend(texts_y);
    let nodes = vec![(Hash::parse(&idx).unwrap(), Hash::parse(&nx).unwrap()), (Hash::parse(&idy).unwrap(), Hash::parse(&ny).unwrap())];
    let rec = Arc::new(PendingCommit::for_test(texts, nodes));
    let committed = a.last_seq().unwrap();
    st.sa.store_pending(&rec, st.now);
    let out = drain(&mut st.sa);
    let ns = notifies(&out);
    assert_eq!(ns.len(), 1, "{ns:?}");
    let n = &ns[0];
    // only the node of the ID granted to B, with its closure inline; the mark is committed
    assert_eq!(root_nodes(n), vec![nx.clone()]);
    let closure = n["closure"].as_object().expect("the closure inline");
    assert_eq!(closure.keys().cloned().collect::<Vec<_>>(), vec![nx.clone()]);
    assert!(!n.to_string().contains(&ny), "nothing of channel Y goes to B");
    assert!(n["mark"].as_u64().unwrap() <= committed);
    // B imports it; A has not committed it
    exchange(&mut st, out);
    assert!(st.b.has(&nx).unwrap(), "B imported the pushed post");
    assert!(!a.has(&nx).unwrap());
    assert!(st.b.peer_mark(&st.key).unwrap() <= committed, "B's mark never covers what A has not committed");
    // A commits: the NOTIFY after the commit finds the roots held (no echo)
    let mut all = objs;
    all.extend(objs_y);
    let mut hs = heads;
    hs.extend(heads_y);
    a.write_batch(&all, &hs).unwrap();
    rec.set_state_for_test(PendingState::Committed(a.last_seq().unwrap()));
    st.sa.store_changed(st.now);
    assert!(notifies(&drain(&mut st.sa)).is_empty(), "no NOTIFY after the commit");
    // the catch-up NOTIFY lists the node again with A's mark: B's mark catches up
    let (_ra, rb, _) = pump_pair(&mut st.sa, &mut st.sb, st.now, Duration::from_secs(2));
    assert!(!rb.events.iter().any(|e| matches!(e, Event::Error { .. })), "{:?}", rb.events);
    assert_eq!(st.b.peer_mark(&st.key).unwrap(), a.last_seq().unwrap());
    assert_eq!(st.b.verify().unwrap(), Vec::<String>::new());
    assert_eq!(a.verify().unwrap(), Vec::<String>::new());
}

#[test]
fn no_speculation_when_a_child_is_unknown_or_the_commit_is_done() {
    let mut st = setup();
    let a = st.a.clone();
    let (_, _, nx, _, idx, texts) = post(&a, &st.x.0, "x two", Some(&st.x.1), 2);
    let nodes = vec![(Hash::parse(&idx).unwrap(), Hash::parse(&nx).unwrap())];
    // the ChatMessage is left out of the record (and is not stored): B lacks it, A cannot
    // send it
    let partial: Vec<_> = texts.iter().filter(|(_, _, t)| !t.contains("ChatMessage")).cloned().collect();
    let rec = Arc::new(PendingCommit::for_test(partial, nodes.clone()));
    st.sa.store_pending(&rec, st.now);
    assert!(notifies(&drain(&mut st.sa)).is_empty());
    // a record whose commit is done (or failed) is left to the NOTIFY after the commit
    for state in [PendingState::Committed(a.last_seq().unwrap()), PendingState::Failed] {
        let rec = Arc::new(PendingCommit::for_test(texts.clone(), nodes.clone()));
        rec.set_state_for_test(state);
        st.sa.store_pending(&rec, st.now);
        assert!(notifies(&drain(&mut st.sa)).is_empty(), "{state:?}");
    }
    // the complete record is pushed
    let rec = Arc::new(PendingCommit::for_test(texts, nodes));
    st.sa.store_pending(&rec, st.now);
    assert_eq!(notifies(&drain(&mut st.sa)).len(), 1);
}

/// A speculated post whose import failed at B is listed again by the next NOTIFY whose mark
/// covers it, so B's mark never passes a root B lacks.
#[test]
fn a_speculated_root_is_listed_again_until_confirmed() {
    let mut st = setup();
    let a = st.a.clone();
    let (objs, heads, n2, e2, idx, texts) = post(&a, &st.x.0, "x two", Some(&st.x.1), 2);
    let rec = Arc::new(PendingCommit::for_test(texts, vec![(Hash::parse(&idx).unwrap(), Hash::parse(&n2).unwrap())]));
    st.sa.store_pending(&rec, st.now);
    let lost = drain(&mut st.sa);
    assert_eq!(notifies(&lost).len(), 1);
    // the NOTIFY is lost on its way (B never imports it); A commits
    a.write_batch(&objs, &heads).unwrap();
    rec.set_state_for_test(PendingState::Committed(a.last_seq().unwrap()));
    st.sa.store_changed(st.now);
    assert!(notifies(&drain(&mut st.sa)).is_empty());
    let c2 = a.last_seq().unwrap();
    // the next post's speculative NOTIFY covers the first one's commit: it lists it again
    let (_, _, n3, _, _, texts3) = post(&a, &st.x.0, "x three", Some(&e2), 3);
    let rec3 = Arc::new(PendingCommit::for_test(texts3, vec![(Hash::parse(&idx).unwrap(), Hash::parse(&n3).unwrap())]));
    st.sa.store_pending(&rec3, st.now);
    let out = drain(&mut st.sa);
    let ns = notifies(&out);
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0]["mark"].as_u64().unwrap(), c2);
    assert_eq!(root_nodes(&ns[0]), vec![n2.clone(), n3.clone()]);
    // B's pass fails (the pruned closure lacks the lost post) and keeps its mark; then it
    // recovers with whole closures, and its mark never passed the lost post before it held it
    exchange(&mut st, out);
    assert!(st.b.peer_mark(&st.key).unwrap() < c2 || st.b.has(&n2).unwrap());
    let (_ra, _rb, _) = pump_pair(&mut st.sa, &mut st.sb, st.now, Duration::from_secs(60));
    assert!(st.b.has(&n2).unwrap());
    assert_eq!(st.b.verify().unwrap(), Vec::<String>::new());
}
