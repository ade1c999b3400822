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

/// Run A and B until B's first receipt (107) request, or until both finish when `crash` is
/// false. Returns B's peer mark on disk at the moment the receipt left B (`None` if none
/// left), and B's events.
fn run_to_receipt(sa: &mut Session, sb: &mut Session, b: &Store, key: &str, crash: bool) -> (Option<u64>, Vec<Event>) {
    let t0 = Instant::now();
    sa.start(t0);
    sb.start(t0);
    drive_to_receipt(sa, sb, b, key, crash, t0)
}

/// [`run_to_receipt`] of sessions already running, from `t0`.
fn drive_to_receipt(sa: &mut Session, sb: &mut Session, b: &Store, key: &str, crash: bool, t0: Instant) -> (Option<u64>, Vec<Event>) {
    let mut now = t0;
    let mut events = Vec::new();
    let mut at_receipt = None;
    for _ in 0..100_000 {
        while let Some(e) = sb.poll_event() {
            events.push(e);
        }
        while sa.poll_event().is_some() {}
        if sb.is_finished() && sa.is_finished() {
            break;
        }
        let mut moved = false;
        while let Some(m) = sb.poll_transmit() {
            moved = true;
            if let lama_chum::Message::Text(t) = &m {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                if v["type"] == "request" && v["serviceId"] == 107 && at_receipt.is_none() {
                    at_receipt = Some(b.peer_mark(key).unwrap());
                    if crash {
                        // B dies here: the receipt is on the wire, nothing after it happens
                        while let Some(e) = sb.poll_event() {
                            events.push(e);
                        }
                        return (at_receipt, events);
                    }
                }
            }
            sa.handle_message(m, now);
        }
        while let Some(m) = sa.poll_transmit() {
            moved = true;
            sb.handle_message(m, now);
        }
        if sa.is_finished() && !sb.is_finished() {
            sb.connection_closed(sa.close_reason().unwrap_or(""), now);
        }
        if sb.is_finished() && !sa.is_finished() {
            sa.connection_closed(sb.close_reason().unwrap_or(""), now);
        }
        if moved {
            continue;
        }
        match [sa.poll_timeout(), sb.poll_timeout()].into_iter().flatten().min() {
            Some(t) if t <= t0 + Duration::from_secs(60) => {
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
    (at_receipt, events)
}

/// docs/chum-fastpath.md "Receipt before the mark": B's receipt leaves before B writes its peer
/// mark; a B that dies right after sending it keeps the older mark, and its next session
/// re-lists, fetches nothing, and then writes the mark.
#[test]
fn the_receipt_goes_out_before_the_peer_mark_and_a_crash_between_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let h = shared_message(&a);
    let key = format!("{PA}/{}", a.store_id().unwrap());
    for keep_running in [false, true] {
        // a fresh B for each mode
        let b = if keep_running { new_store(dir.path(), "b2") } else { b.clone() };
        let mut cb = config(PB, PA, true, false);
        cb.keep_running = keep_running;
        let mut sa = Session::new(a.clone(), config(PA, PB, true, false));
        let mut sb = Session::new(b.clone(), cb);
        let (at_receipt, events) = run_to_receipt(&mut sa, &mut sb, &b, &key, true);
        // the objects the receipt vouches for are stored; the mark is not written yet
        assert_eq!(at_receipt, Some(0), "keep_running {keep_running}");
        assert!(b.has(&h).unwrap());
        assert!(events.iter().any(|e| matches!(e, Event::Imported { objects, .. } if objects.contains(&h))));
        assert_eq!(b.peer_mark(&key).unwrap(), 0);
        drop(sb);
        // the next session (one-shot) lists again, fetches nothing, and writes the mark
        let mut sa = Session::new(a.clone(), config(PA, PB, true, false));
        let mut sb = Session::new(b.clone(), config(PB, PA, true, false));
        let (at_receipt, events) = run_to_receipt(&mut sa, &mut sb, &b, &key, false);
        assert_eq!(at_receipt, Some(0));
        assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })), "{events:?}");
        assert!(!events.iter().any(|e| matches!(e, Event::Imported { objects, id_objects, .. } if !objects.is_empty() || !id_objects.is_empty())), "{events:?}");
        let sent: Vec<_> = events.iter().filter_map(|e| match e { Event::ReceiptSent { mark, .. } => Some(*mark), _ => None }).collect();
        assert_eq!(sent.len(), 1);
        let m = sent[0].unwrap();
        assert!(m >= 1);
        assert_eq!(b.peer_mark(&key).unwrap(), m, "the mark is written once the receipt is answered");
        assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    }
}

/// docs/chum-fastpath.md "Peer mark after a push": in a keep-running session that has
/// subscribed, a push pass whose last commit ends it cleanly writes the peer mark in that
/// commit's transaction: when its receipt leaves B the new mark is on disk already (no second
/// commit follows), while the session's first pass still writes it after the receipt. The
/// next session lists nothing new.
#[test]
fn a_push_pass_writes_the_peer_mark_with_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let first = shared_message(&a);
    let key = format!("{PA}/{}", a.store_id().unwrap());
    let mut ca = config(PA, PB, true, false);
    ca.keep_running = true;
    let mut cb = config(PB, PA, true, false);
    cb.keep_running = true;
    cb.poll_interval = Duration::from_secs(5);
    let mut sa = Session::new(a.clone(), ca);
    let mut sb = Session::new(b.clone(), cb);
    let (_ra, rb, now) = pump_pair(&mut sa, &mut sb, Instant::now(), Duration::from_secs(3));
    assert!(b.has(&first).unwrap() && !sb.is_finished());
    let marks = |events: &[Event]| -> Vec<Option<u64>> { events.iter().filter_map(|e| match e { Event::ReceiptSent { mark, .. } => Some(*mark), _ => None }).collect() };
    let m1 = marks(&rb.events)[0].expect("a clean first pass");
    assert_eq!(b.peer_mark(&key).unwrap(), m1, "written after the first pass's receipt");

    // a push: A shares a second message and its driver reports the write
    let m = obj(vec![("$type$", s("ChatMessage")), ("text", s("pushed")), ("sender", s(PA))]);
    let second = a.put_objects(&[m]).unwrap()[0].hash.clone();
    store_versioned(&a, obj(vec![("$type$", s("Access")), ("object", s(&second)), ("person", V::List(vec![s(PB)])), ("group", V::List(vec![]))]), 2);
    sa.store_changed(now);
    let (at_receipt, events) = drive_to_receipt(&mut sa, &mut sb, &b, &key, false, now);
    assert!(events.iter().any(|e| matches!(e, Event::Imported { objects, .. } if objects.contains(&second))), "{events:?}");
    let sent = marks(&events);
    let m2 = sent.last().copied().flatten().expect("the push's receipt names its mark");
    assert!(m2 > m1, "{m2} > {m1}");
    assert_eq!(at_receipt, Some(m2), "the push's mark is on disk when its receipt leaves");
    assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })), "{events:?}");
    sb.connection_closed("test over", now);
    sa.connection_closed("test over", now);

    // the next session lists nothing new and fetches nothing
    let mut sa = Session::new(a.clone(), config(PA, PB, true, false));
    let mut sb = Session::new(b.clone(), config(PB, PA, true, false));
    let (_, events) = run_to_receipt(&mut sa, &mut sb, &b, &key, false);
    assert!(!events.iter().any(|e| matches!(e, Event::Imported { objects, id_objects, .. } if !objects.is_empty() || !id_objects.is_empty())), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Error { .. })), "{events:?}");
    assert!(b.peer_mark(&key).unwrap() >= m2);
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
}
