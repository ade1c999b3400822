//! Two stores syncing through an in-test pump with a fake clock: a versioned object with a
//! history, unversioned objects, a multi-MiB BLOB and a CLOB, shared by Access / IdAccess
//! grants (docs/chum-session.md §1-§2, chum.md §5-§6).
mod common;

use std::time::{Duration, Instant};

use common::*;
use lama_chum::{Config, Event, Session};
use lama_core::microdata::{self, Value as V};
use lama_core::store::Store;

fn bytes(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        out.extend_from_slice(&lama_core::hash::sha256(&i.to_be_bytes()));
        i += 1;
    }
    out.truncate(n);
    out
}

struct Graph {
    topic: String,
    ci: String,
    head_node: String,
    blob: String,
    clob: String,
    note: String,
}

/// A's chat: a Topic, a ChannelInfo with three versions (messages with a BLOB attachment and a
/// CLOB note), shared with B by an Access (the Topic and the note) and an IdAccess (the channel).
fn build(a: &Store) -> Graph {
    microdata::register_recipe_json(
        r#"{"$type$":"Recipe","name":"LamaChumTestNote","rule":[{"itemprop":"title"},{"itemprop":"body","itemtype":{"type":"referenceToClob"}}]}"#,
    )
    .unwrap();
    let tid = format!("{PA}<->{PB}");
    let (mut node, ci) = store_versioned(a, obj(vec![("$type$", s("ChannelInfo")), ("id", s(&tid))]), 1_700_000_000_000);
    let topic = obj(vec![("$type$", s("Topic")), ("name", s(&tid)), ("id", s(&tid)), ("channel", s(&ci))]);
    let topic_h = a.put_objects(&[topic]).unwrap()[0].hash.clone();
    let (blob, _) = a.put_blob(&bytes(3 * 1024 * 1024 + 12_345)).unwrap();
    let desc = obj(vec![
        ("$type$", s("BlobDescriptor")),
        ("data", s(&blob)),
        ("lastModified", V::Int(1_767_225_600_000)),
        ("name", s("big.bin")),
        ("size", V::Int(3 * 1024 * 1024 + 12_345)),
        ("type", s("application/octet-stream")),
    ]);
    let desc_h = a.put_objects(&[desc]).unwrap()[0].hash.clone();
    let (clob, _) = a.put_clob(&"a note with ünïcode ✓ ".repeat(2000)).unwrap();
    let note = obj(vec![("$type$", s("LamaChumTestNote")), ("title", s("note")), ("body", s(&clob))]);
    let note_h = a.put_objects(&[note]).unwrap()[0].hash.clone();
    let mut prev: Option<String> = None;
    for (i, text) in ["hello", "with attachment"].iter().enumerate() {
        let mut m = vec![("$type$", s("ChatMessage")), ("text", s(text))];
        if i == 1 {
            m.push(("attachments", V::List(vec![s(&desc_h)])));
        }
        m.push(("sender", s(PA)));
        let m = obj(m);
        let ct = obj(vec![("$type$", s("CreationTime")), ("timestamp", V::Int(1_700_000_001_000 + i as i64)), ("data", s(&hash_of(&m)))]);
        let mut l = vec![("$type$", s("LinkedListEntry")), ("data", s(&hash_of(&ct)))];
        if let Some(p) = &prev {
            l.push(("previous", s(p)));
        }
        let l = obj(l);
        let lh = hash_of(&l);
        a.put_objects(&[m, ct, l]).unwrap();
        prev = Some(lh.clone());
        node = store_versioned(a, obj(vec![("$type$", s("ChannelInfo")), ("id", s(&tid)), ("head", s(&lh))]), 1_700_000_002_000 + i as i64).0;
    }
    let person = V::List(vec![s(PB)]);
    store_versioned(a, obj(vec![("$type$", s("Access")), ("object", s(&topic_h)), ("person", person.clone()), ("group", V::List(vec![]))]), 1);
    store_versioned(a, obj(vec![("$type$", s("Access")), ("object", s(&note_h)), ("person", person.clone()), ("group", V::List(vec![]))]), 1);
    store_versioned(a, obj(vec![("$type$", s("IdAccess")), ("id", s(&ci)), ("person", person), ("group", V::List(vec![]))]), 1);
    Graph { topic: topic_h, ci, head_node: node, blob, clob, note: note_h }
}

fn session(st: &Store, me: &str, other: &str, fast: bool) -> Session {
    let mut c = Config::new(me, other);
    c.window = 8;
    c.fast_path = fast;
    Session::new(st.clone(), c)
}

#[test]
fn two_stores_sync_and_a_second_sync_transfers_nothing_v8() {
    two_stores(false);
}

#[test]
fn two_stores_sync_and_a_second_sync_transfers_nothing_fast() {
    two_stores(true);
}

fn two_stores(fast: bool) {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let g = build(&a);
    let (mut sa, mut sb) = (session(&a, PA, PB, fast), session(&b, PB, PA, fast));
    let (ra, rb, _) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(600));
    assert_eq!(sa.close_reason(), Some("chum finished"));
    assert_eq!(sb.close_reason(), Some("chum finished"));
    assert_eq!(ra.codes(), Vec::<String>::new());
    assert_eq!(rb.codes(), Vec::<String>::new());
    let mode = if fast { "fast" } else { "v8" };
    assert!(rb.events.contains(&Event::Version { remote: 8, mode: mode.into() }));
    for h in [&g.topic, &g.ci, &g.head_node, &g.blob, &g.clob, &g.note] {
        assert!(b.has(h).unwrap(), "{h}");
    }
    assert_eq!(b.read_blob(&g.blob).unwrap(), a.read_blob(&g.blob).unwrap());
    assert_eq!(b.kind(&g.clob).unwrap(), Some(lama_core::store::EntryKind::Clob));
    // the deepest fetched node of the channel is merged (by the Python layer)
    assert_eq!(rb.merges(), vec![(g.ci.clone(), g.head_node.clone())]);
    // grants never travel (chum.md §6.4): B holds no Access/IdAccess object
    for h in b.hashes().unwrap() {
        if let Ok(t) = b.get(&h) {
            assert!(!t.contains("//refin.io/Access") && !t.contains("//refin.io/IdAccess"), "{t}");
        }
    }
    assert_eq!(a.verify().unwrap(), Vec::<String>::new());
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    let la = ra.log().unwrap();
    let lb = rb.log().unwrap();
    assert_eq!(la.a_to_b_blob, vec![g.blob.clone()]);
    assert_eq!(lb.b_to_a_blob, vec![g.blob.clone()]);
    assert_eq!(lb.b_to_a_clob, vec![g.clob.clone()]);
    let mut sent = la.a_to_b_objects.clone();
    sent.sort();
    let mut got = lb.b_to_a_objects.clone();
    got.sort();
    assert_eq!(sent, got);
    // BLOB frames never need fragmentation (chum.md §2.6)
    assert!(sa.stats().blobs_sent == 1 && sb.stats().blobs_received == 1);

    // again: everything exists, nothing is fetched
    let (mut sa, mut sb) = (session(&a, PA, PB, fast), session(&b, PB, PA, fast));
    let (_ra, rb, _) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(600));
    assert_eq!(sb.close_reason(), Some("chum finished"));
    let lb = rb.log().unwrap();
    assert!(lb.b_to_a_objects.is_empty() && lb.b_to_a_blob.is_empty() && lb.b_to_a_clob.is_empty());
    assert!(!rb.events.iter().any(|e| matches!(e, Event::Imported { .. } | Event::Merge { .. })));
    assert_eq!(sb.stats().objects_received, 0);
}

/// keep_running: in v8 a grant made after the first pass arrives at the next roots poll; in
/// the fast path the exporter pushes NOTIFY when its driver reports the write, and the
/// importer (polling only every 10 x poll_interval) runs its pass at once.
#[test]
fn keep_running_a_later_grant_arrives_in_the_same_session() {
    for fast in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let a = new_store(dir.path(), "a");
        let b = new_store(dir.path(), "b");
        let mut ca = Config::new(PA, PB);
        ca.keep_running = true;
        ca.importer = false;
        let mut cb = Config::new(PB, PA);
        cb.keep_running = true;
        cb.exporter = false;
        cb.fast_path = fast;
        cb.poll_interval = Duration::from_secs(5);
        let (mut sa, mut sb) = (Session::new(a.clone(), ca), Session::new(b.clone(), cb));
        let t0 = Instant::now();
        let (_ra, rb, now) = pump_pair(&mut sa, &mut sb, t0, Duration::from_secs(3));
        assert!(!sa.is_finished() && !sb.is_finished());
        let mode = if fast { "fast" } else { "v8" };
        assert!(rb.events.contains(&Event::Version { remote: 8, mode: mode.into() }));
        let g = build(&a);
        assert!(!b.has(&g.topic).unwrap());
        // the driver saw the writes
        sa.store_changed(now);
        // fast: at once (no time passes); v8: at the next poll, 5 s later
        let budget = if fast { Duration::ZERO } else { Duration::from_secs(6) };
        let (_ra, rb, later) = pump_pair(&mut sa, &mut sb, now, budget);
        assert!(b.has(&g.topic).unwrap() && b.has(&g.blob).unwrap(), "fast={fast}");
        assert_eq!(rb.merges(), vec![(g.ci.clone(), g.head_node.clone())]);
        assert_eq!(later, if fast { now } else { now + Duration::from_secs(5) });
        sb.connection_closed("test over", later);
        assert!(sb.is_finished());
        assert_eq!(sb.close_reason(), Some("test over"));
        assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    }
}
