//! The store API of the sync layer (project issue 6): snapshots, missing, children
//! (chum.md §5.3), version_nodes (objects.md §4.1), the event feed (docs/store-format.md
//! "events").

use std::time::{Duration, Instant};

use lama_core::hash::{sha256_hex, Hash};
use lama_core::microdata::{self, Value};
use lama_core::store::Store;

fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

fn obj(ty: &str, props: Vec<(&str, Value)>) -> Value {
    let mut entries = vec![(s("$type$"), s(ty))];
    entries.extend(props.into_iter().map(|(k, v)| (s(k), v)));
    Value::Dict(entries)
}

fn hash_of(v: &Value) -> String {
    sha256_hex(microdata::serialize(v).unwrap().as_bytes())
}

fn hx(v: &[Hash]) -> Vec<String> {
    v.iter().map(|h| h.to_string()).collect()
}

#[test]
fn children_missing_and_feed() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    assert_eq!(st.last_seq().unwrap(), 0);
    let (blob, _) = st.put_blob(b"picture").unwrap();
    let desc = obj(
        "BlobDescriptor",
        vec![
            ("data", s(&blob)),
            ("lastModified", Value::Int(1)),
            ("name", s("p")),
            ("size", Value::Int(7)),
            ("type", s("t")),
        ],
    );
    let alice = obj("Person", vec![("email", s("a@x")), ("name", s("A"))]);
    let r = st.put_objects(&[desc.clone(), alice]).unwrap();
    let (desc_h, alice_id) = (r[0].hash.clone(), r[1].id_hash.clone().unwrap());
    let msg = obj(
        "ChatMessage",
        vec![("text", s("hi")), ("attachments", Value::List(vec![s(&desc_h), s(&desc_h)])), ("sender", s(&alice_id))],
    );
    let msg_h = st.put_objects(&[msg]).unwrap()[0].hash.clone();
    assert_eq!(hx(&st.children(&msg_h).unwrap()), vec![blob.clone(), desc_h.clone(), alice_id.clone()]);
    assert!(st.children(&blob).unwrap().is_empty());
    assert_eq!(st.children(&"0".repeat(64)).unwrap_err().code, "SB-READ2");

    let absent = Hash::of(b"absent");
    let ask = [absent, Hash::parse(&msg_h).unwrap(), absent];
    assert_eq!(st.missing(&ask).unwrap(), vec![absent, absent]);

    // feed: blob, descriptor, person, person ID, message
    let ev = st.changes(0, 100).unwrap();
    let kinds: Vec<(u64, &str)> = ev.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(kinds, vec![(1, "blob"), (2, "object"), (3, "object"), (4, "id"), (5, "object")]);
    assert_eq!(ev[4].hash.to_string(), msg_h);
    assert_eq!(st.changes(4, 1).unwrap().len(), 1);
}

#[test]
fn snapshot_isolation_and_subscription() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let snap = st.snapshot().unwrap();
    let mut sub = st.subscribe().unwrap();
    let (b, _) = st.put_blob(b"later").unwrap();
    assert!(st.has(&b).unwrap());
    assert!(!snap.has(&b).unwrap());
    assert_eq!(snap.last_seq().unwrap(), 0);
    // a snapshot moves to another thread (MDB_NOTLS read transaction)
    let seen = std::thread::spawn(move || snap.has(&b).unwrap()).join().unwrap();
    assert!(!seen);
    let ev = sub.wait(Duration::from_secs(1), 10).unwrap();
    assert_eq!(ev.len(), 1);
    let t0 = Instant::now();
    assert!(sub.wait(Duration::from_millis(100), 10).unwrap().is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(90));
    // woken by a write from another handle in another thread
    let other = Store::open(d.path(), None).unwrap();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        other.put_blob(b"x").unwrap().0
    });
    let t0 = Instant::now();
    let ev = sub.wait(Duration::from_secs(20), 10).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(ev[0].hash.to_string(), h.join().unwrap());
}

#[test]
fn commit_hooks_run_in_the_committing_thread_until_dropped() {
    use std::sync::{Arc, Mutex};
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let seen: Arc<Mutex<Vec<(u64, std::thread::ThreadId)>>> = Arc::default();
    let s2 = seen.clone();
    let hook = st.on_commit(move |seq| s2.lock().unwrap().push((seq, std::thread::current().id())));
    st.put_blob(b"one").unwrap();
    // a commit from another handle in another thread: called there, with its last sequence
    let other = Store::open(d.path(), None).unwrap();
    let t = std::thread::spawn(move || {
        other.put_blob(b"two").unwrap();
        std::thread::current().id()
    })
    .join()
    .unwrap();
    // a commit that appends no event (the blob is already there) calls no hook
    st.put_blob(b"one").unwrap();
    let last = st.last_seq().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(last - 1, std::thread::current().id()), (last, t)]);
    drop(hook);
    st.put_blob(b"three").unwrap();
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn commit_hooks_first_run_before_the_others() {
    use std::sync::{Arc, Mutex};
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let order: Arc<Mutex<Vec<&str>>> = Arc::default();
    let hook = |name: &'static str| {
        let o = order.clone();
        move |_seq: u64| o.lock().unwrap().push(name)
    };
    let _a = st.on_commit(hook("a"));
    let _first = st.on_commit_first(hook("first"));
    let _b = st.on_commit(hook("b"));
    let _newer_first = st.on_commit_first(hook("newer first"));
    st.put_blob(b"one").unwrap();
    assert_eq!(*order.lock().unwrap(), vec!["newer first", "first", "a", "b"]);
    drop(_first);
    order.lock().unwrap().clear();
    st.put_blob(b"two").unwrap();
    assert_eq!(*order.lock().unwrap(), vec!["newer first", "a", "b"]);
}

#[test]
fn version_nodes_newest_first() {
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let p = obj("Person", vec![("email", s("b@x")), ("name", s("B"))]);
    let r = st.put_objects(&[p]).unwrap().remove(0);
    let id = r.id_hash.unwrap();
    assert!(st.version_nodes(&id).unwrap().is_empty());
    let edge = obj("VersionNodeEdge", vec![("data", s(&r.hash)), ("depth", Value::Int(0)), ("creationTime", Value::Int(1))]);
    let eh = hash_of(&edge);
    let change = obj(
        "VersionNodeChange",
        vec![("prev", s(&eh)), ("data", s(&r.hash)), ("depth", Value::Int(1)), ("creationTime", Value::Int(2))],
    );
    let ch = hash_of(&change);
    st.write_batch(&[edge, change], &[(id.clone(), None, ch.clone())]).unwrap();
    assert_eq!(hx(&st.version_nodes(&id).unwrap()), vec![ch.clone(), eh.clone()]);
    assert_eq!(hx(&st.children(&ch).unwrap()), vec![r.hash.clone(), eh]);
    let last = st.changes(0, 100).unwrap().pop().unwrap();
    assert_eq!((last.kind, last.hash.to_string()), ("head", id));
}

/// `children_tagged_except_within` (the CHUM exporter's NOTIFY walk, issue 8): the same list
/// as `children_tagged_except` when the closure has at most `limit` entries, else `None` as
/// soon as the walk has met more than `limit` hashes, without reading the rest. The chain's
/// deepest reference is not stored, so a walk that reads past the bound fails with SB-READ2.
#[test]
fn closure_walk_within_a_limit_stops_at_the_limit() {
    use std::collections::HashSet;
    let d = tempfile::tempdir().unwrap();
    let st = Store::open(d.path(), None).unwrap();
    let p = obj("Person", vec![("email", s("c@x")), ("name", s("C"))]);
    let data = st.put_objects(&[p]).unwrap().remove(0).hash;
    // never stored: the bottom of the chain
    let edge = obj("VersionNodeEdge", vec![("data", s(&data)), ("depth", Value::Int(0)), ("creationTime", Value::Int(1))]);
    let mut prev = hash_of(&edge);
    let mut chain = Vec::new();
    for i in 1..=100 {
        let c = obj(
            "VersionNodeChange",
            vec![("prev", s(&prev)), ("data", s(&data)), ("depth", Value::Int(i)), ("creationTime", Value::Int(i + 1))],
        );
        prev = st.put_objects(&[c]).unwrap().remove(0).hash;
        chain.push(prev.clone());
    }
    let none = HashSet::new();
    let top = chain.last().unwrap();
    // the whole walk reaches the hole
    assert_eq!(st.children_tagged_except(top, &none).unwrap_err().code, "SB-READ2");
    // bounded: more than 64 entries found long before the hole
    assert!(st.children_tagged_except_within(top, &none, 64).unwrap().is_none());
    assert!(st.children_tagged_except_within(top, &none, 0).unwrap().is_none());
    // pruned at `known` above the hole: the closure is the data and 10 nodes
    let known: HashSet<Hash> = chain[..89].iter().map(|h| Hash::parse(h).unwrap()).collect();
    let all = st.children_tagged_except(top, &known).unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(st.children_tagged_except_within(top, &known, 11).unwrap(), Some(all.clone()));
    assert_eq!(st.children_tagged_except_within(top, &known, 64).unwrap(), Some(all));
    assert!(st.children_tagged_except_within(top, &known, 10).unwrap().is_none());
}
