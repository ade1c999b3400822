//! The session's ping (docs/chum-session.md §2 "Ping"): a GET_PROTOCOL_VERSION round trip every
//! `ping_interval`, one in flight at most; its answer gives `Event::Ping { rtt: Some }`, a ping
//! unanswered for `ping_timeout` gives `Event::Ping { rtt: None }` once, and its late answer
//! still gives the whole round trip.
mod common;

use std::time::{Duration, Instant};

use common::*;
use lama_chum::{Config, Event, Message, Session};

fn config(local: &str, remote: &str, ping: Duration) -> Config {
    let mut c = Config::new(local, remote);
    c.keep_running = true;
    c.ping_interval = ping;
    c.ping_timeout = Duration::from_millis(500);
    c
}

fn drain(s: &mut Session) -> Vec<Message> {
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

fn pings(s: &mut Session) -> Vec<(Option<f64>, f64)> {
    std::iter::from_fn(|| s.poll_event())
        .filter_map(|e| match e {
            Event::Ping { rtt, waiting } => Some((rtt, waiting)),
            _ => None,
        })
        .collect()
}

/// Deliver everything each side has queued to the other at `now`, until both are quiet.
fn exchange(a: &mut Session, b: &mut Session, now: Instant) {
    for _ in 0..1000 {
        let (ma, mb) = (drain(a), drain(b));
        if ma.is_empty() && mb.is_empty() {
            return;
        }
        for m in ma {
            b.handle_message(m, now);
        }
        for m in mb {
            a.handle_message(m, now);
        }
    }
    panic!("the sessions never went quiet");
}

#[test]
fn ping_measures_round_trips_and_reports_a_silent_peer() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let t0 = Instant::now();
    let mut sa = Session::new(a, config(PA, PB, Duration::from_secs(1)));
    let mut sb = Session::new(b, config(PB, PA, Duration::ZERO));
    sa.start(t0);
    sb.start(t0);
    // the first ping goes out at start; B answers after 30 ms
    let out = drain(&mut sa);
    let ping_requests = out.iter().filter(|m| matches!(m, Message::Text(t) if t.contains("\"serviceId\":1,"))).count();
    assert_eq!(ping_requests, 2, "the importer's version request and the ping");
    for m in out {
        sb.handle_message(m, t0 + Duration::from_millis(30));
    }
    exchange(&mut sa, &mut sb, t0 + Duration::from_millis(30));
    let p = pings(&mut sa);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!((p[0].0.unwrap() - 0.030).abs() < 1e-6, "{p:?}");
    assert!(pings(&mut sb).is_empty(), "B does not ping");
    // the next one is due after ping_interval
    let due = sa.poll_timeout().unwrap();
    assert!(due <= t0 + Duration::from_secs(1), "{:?}", due - t0);
    let t1 = t0 + Duration::from_secs(1);
    sa.handle_timeout(t1);
    exchange(&mut sa, &mut sb, t1 + Duration::from_millis(5));
    let p = pings(&mut sa);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!((p[0].0.unwrap() - 0.005).abs() < 1e-6, "{p:?}");
    // B goes silent: what A sends is held back
    let t2 = t0 + Duration::from_secs(2);
    sa.handle_timeout(t2);
    let held = drain(&mut sa);
    assert!(!held.is_empty());
    sa.handle_timeout(t2 + Duration::from_millis(499));
    assert!(pings(&mut sa).is_empty());
    sa.handle_timeout(t2 + Duration::from_millis(500));
    let p = pings(&mut sa);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].0.is_none() && (p[0].1 - 0.5).abs() < 1e-6, "{p:?}");
    // reported once; no second ping while the first is out, however long
    for s in 1..5 {
        sa.handle_timeout(t2 + Duration::from_secs(s));
    }
    assert!(pings(&mut sa).is_empty());
    assert!(drain(&mut sa).iter().all(|m| !matches!(m, Message::Text(t) if t.contains("\"serviceId\":1,"))));
    // B comes back: the late answer is the whole round trip, and the next ping follows
    let t3 = t2 + Duration::from_secs(5);
    for m in held {
        sb.handle_message(m, t3);
    }
    exchange(&mut sa, &mut sb, t3);
    let p = pings(&mut sa);
    assert!((p[0].0.unwrap() - 5.0).abs() < 1e-6, "{p:?}");
    assert!(p.len() == 2 && p[1].0.unwrap() == 0.0, "the overdue next ping went out at once: {p:?}");
}

#[test]
fn no_ping_without_an_interval() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let t0 = Instant::now();
    let mut sa = Session::new(a, config(PA, PB, Duration::ZERO));
    sa.start(t0);
    let out = drain(&mut sa);
    assert_eq!(out.len(), 1, "only the version request: {out:?}");
    sa.handle_timeout(t0 + Duration::from_secs(100));
    assert!(pings(&mut sa).is_empty());
}
