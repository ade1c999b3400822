//! The fetch of a pass is pipelined (issue 8): the importer keeps the next chunks' requests
//! out while it verifies and commits one, so the exporter serves while the importer works, and
//! never more than `FETCH_AHEAD` chunks are out (what the importer holds is bounded).
mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::*;
use lama_chum::rpc::{self, Incoming};
use lama_chum::{Config, Event, Message, Session};
use lama_core::microdata::Value as V;
use lama_core::store::Store;
use serde_json::Value;

/// The service ids and chunk sizes of crate::importer (v8: 256 GET_OBJECT/GET_ID_OBJECT per
/// chunk; fast path: 8 GET_OBJECTS_BATCH of 256); 3 chunks out at most.
const GET_OBJECT: u64 = 6;
const GET_ID_OBJECT: u64 = 7;
const GET_OBJECTS_BATCH: u64 = 101;
const CHUNK_V8: usize = 256;
const CHUNK_FAST: usize = 2048;
const AHEAD: usize = 3;

/// A chain of `links` posts (ChatMessage, CreationTime, LinkedListEntry each), its newest
/// entry shared with B by an Access: 3 × links objects to fetch.
fn build(a: &Store, links: usize) -> String {
    let mut prev: Option<String> = None;
    let mut objs = Vec::new();
    for i in 0..links {
        let m = obj(vec![("$type$", s("ChatMessage")), ("text", s(&format!("message {i}"))), ("sender", s(PA))]);
        let ct = obj(vec![("$type$", s("CreationTime")), ("timestamp", V::Int(1_700_000_000_000 + i as i64)), ("data", s(&hash_of(&m)))]);
        let mut l = vec![("$type$", s("LinkedListEntry")), ("data", s(&hash_of(&ct)))];
        if let Some(p) = &prev {
            l.push(("previous", s(p)));
        }
        let l = obj(l);
        prev = Some(hash_of(&l));
        objs.extend([m, ct, l]);
    }
    a.put_objects(&objs).unwrap();
    let top = prev.unwrap();
    store_versioned(a, obj(vec![("$type$", s("Access")), ("object", s(&top)), ("person", V::List(vec![s(PB)])), ("group", V::List(vec![]))]), 1);
    top
}

/// Objects a message of B asks for (0 for anything but a fetch).
fn asked(m: &Message) -> Option<(u64, usize)> {
    let Message::Text(t) = m else { return None };
    match rpc::classify(t)? {
        Incoming::Request { id, service, args } => match service.as_u64()? {
            GET_OBJECT | GET_ID_OBJECT => Some((id, 1)),
            GET_OBJECTS_BATCH => match args.first() {
                Some(Some(Value::Array(l))) => Some((id, l.len())),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn answered(m: &Message) -> Option<u64> {
    let Message::Text(t) = m else { return None };
    match rpc::classify(t)? {
        Incoming::Data { id, .. } | Incoming::Error { id, .. } => Some(id),
        _ => None,
    }
}

/// Syncs A → B one message at a time; returns (objects asked before B's first commit, most
/// objects asked and not yet answered at any time, objects B stored).
fn run(fast: bool, links: usize) -> (usize, usize, u64) {
    let (before, most, got, _) = run_commits(fast, links);
    (before, most, got)
}

/// [`run`], and the objects of each `imported` event (one per store transaction).
fn run_commits(fast: bool, links: usize) -> (usize, usize, u64, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    build(&a, links);
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut cb = Config::new(PB, PA);
    cb.exporter = false;
    cb.fast_path = fast;
    // a window that never limits: only the importer's own bound applies
    cb.window = 100_000;
    let (mut sa, mut sb) = (Session::new(a.clone(), ca), Session::new(b.clone(), cb));
    let now = Instant::now();
    sa.start(now);
    sb.start(now);
    let mut out: HashMap<u64, usize> = HashMap::new();
    let (mut outstanding, mut most, mut before_commit) = (0usize, 0usize, None);
    let mut asked_total = 0usize;
    let mut commits = Vec::new();
    loop {
        let mut moved = false;
        while let Some(m) = sb.poll_transmit() {
            moved = true;
            if let Some((id, n)) = asked(&m) {
                out.insert(id, n);
                outstanding += n;
                asked_total += n;
                most = most.max(outstanding);
            }
            sa.handle_message(m, now);
        }
        // A's answers reach B one by one: B commits a chunk when its last answer arrives
        if let Some(m) = sa.poll_transmit() {
            moved = true;
            if let Some(n) = answered(&m).and_then(|id| out.remove(&id)) {
                outstanding -= n;
            }
            sb.handle_message(m, now);
        }
        while let Some(e) = sb.poll_event() {
            if let Event::Imported { objects, id_objects, .. } = &e {
                commits.push(objects.len() + id_objects.len());
                if before_commit.is_none() {
                    before_commit = Some(asked_total);
                }
            }
            assert!(!matches!(e, Event::Error { .. }), "{e:?}");
        }
        while sa.poll_event().is_some() {}
        if sb.is_finished() || !moved {
            break;
        }
    }
    assert_eq!(sb.close_reason(), Some("chum finished"));
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    (before_commit.unwrap(), most, sb.stats().objects_received, commits)
}

#[test]
fn v8_fetch_keeps_the_next_chunks_out_and_at_most_three() {
    let links = 400; // 1,200 objects: 5 chunks of 256
    let (before, most, got) = run(false, links);
    assert_eq!(got as usize, 3 * links);
    // the first chunk's commit came with the second and third chunks already asked for
    assert_eq!(before, AHEAD * CHUNK_V8);
    assert_eq!(most, AHEAD * CHUNK_V8);
}

#[test]
fn fast_path_fetch_keeps_the_next_chunks_out_and_at_most_three() {
    let links = 2800; // 8,400 objects: 5 chunks of 2,048
    let (before, most, got) = run(true, links);
    assert_eq!(got as usize, 3 * links);
    assert_eq!(before, AHEAD * CHUNK_FAST);
    assert_eq!(most, AHEAD * CHUNK_FAST);
}

#[test]
fn fast_path_commits_the_first_chunk_at_once_then_in_large_transactions() {
    // issue 8: each LMDB commit rewrites the B-tree pages its random keys touch, so the fast
    // path commits the first fetched chunk at once (the first objects are visible early) and
    // then only once 8,192 items are ready, not after every chunk of 2,048
    let links = 7000; // 21,000 objects: 11 chunks of 2,048
    let (_, _, got, commits) = run_commits(true, links);
    assert_eq!(got as usize, 3 * links);
    assert_eq!(commits.iter().sum::<usize>(), 3 * links);
    // the first chunk's ready items at once (its newest entries wait for what references them)
    assert!((1..=CHUNK_FAST).contains(&commits[0]), "{commits:?}");
    let (last, middle) = commits[1..].split_last().unwrap();
    assert!(middle.iter().all(|&n| n >= 8192), "{commits:?}");
    assert!(*last >= 1 && commits.len() <= 4, "{commits:?}");
}
