//! The lama receipt (service 107, docs/tracing.md §4) and the `trace` option, in the Rust
//! core alone: a fast-mode importer confirms its pass with the mark it stored up to (exporter:
//! `Receipt`, importer: `ReceiptSent`, the same data); `Exported` names the objects served,
//! only with `Config::trace`; a plain v8 importer (as ONE) sends no receipt.
mod common;

use std::time::{Duration, Instant};

use common::*;
use lama_chum::{Config, Event, Session};
use lama_core::microdata::Value as V;
use lama_core::store::Store;

/// A's ChatMessage, shared with B by an Access.
fn shared_message(a: &Store) -> String {
    let m = obj(vec![("$type$", s("ChatMessage")), ("text", s("traced")), ("sender", s(PA))]);
    let h = a.put_objects(&[m]).unwrap()[0].hash.clone();
    let person = V::List(vec![s(PB)]);
    store_versioned(a, obj(vec![("$type$", s("Access")), ("object", s(&h)), ("person", person), ("group", V::List(vec![]))]), 1);
    h
}

fn config(local: &str, remote: &str, fast: bool, trace: bool) -> Config {
    let mut c = Config::new(local, remote);
    c.fast_path = fast;
    c.trace = trace;
    c
}

#[test]
fn receipt_confirms_the_pass_and_exported_names_what_was_served() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let h = shared_message(&a);
    let mut sa = Session::new(a.clone(), config(PA, PB, true, true));
    let mut sb = Session::new(b.clone(), config(PB, PA, true, false));
    let (ra, rb, _) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(60));
    assert!(b.has(&h).unwrap());
    let got: Vec<_> = ra.events.iter().filter_map(|e| match e {
        Event::Receipt { mark, errors } => Some((*mark, errors.clone())),
        _ => None,
    }).collect();
    let sent: Vec<_> = rb.events.iter().filter_map(|e| match e {
        Event::ReceiptSent { mark, errors } => Some((*mark, errors.clone())),
        _ => None,
    }).collect();
    assert_eq!(got, sent);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0.unwrap() >= 1 && got[0].1.is_empty(), "{got:?}");
    let served: Vec<String> = ra.events.iter().filter_map(|e| match e {
        Event::Exported { objects, .. } => Some(objects.clone()),
        _ => None,
    }).flatten().collect();
    assert!(served.contains(&h), "{served:?}");
    assert!(ra.events.iter().any(|e| matches!(e, Event::Exported { roots, .. } if !roots.is_empty())));
    assert!(!rb.events.iter().any(|e| matches!(e, Event::Exported { .. })), "B's trace option is off");
}

#[test]
fn a_plain_v8_importer_sends_no_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let h = shared_message(&a);
    let mut sa = Session::new(a.clone(), config(PA, PB, true, true));
    let mut sb = Session::new(b.clone(), config(PB, PA, false, false));
    let (ra, rb, _) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(60));
    assert!(b.has(&h).unwrap());
    assert!(!ra.events.iter().any(|e| matches!(e, Event::Receipt { .. })));
    assert!(!rb.events.iter().any(|e| matches!(e, Event::ReceiptSent { .. })));
    assert!(ra.events.iter().any(|e| matches!(e, Event::Exported { objects, .. } if objects.contains(&h))));
}
