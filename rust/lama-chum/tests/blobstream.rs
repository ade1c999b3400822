//! The exporter streams a BLOB (issue 8): its frames are read from the store one at a time as
//! the driver pulls them, so a large BLOB never sits in the session's memory whole, and the
//! importer checks its hash before it becomes visible.
mod common;

use std::time::Instant;

use common::*;
use lama_chum::{Config, Message, Session};
use lama_core::microdata::Value as V;

const BLOB_PAYLOAD: usize = 65_528;

#[test]
fn a_large_blob_is_sent_one_frame_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    let size = 6 * 1024 * 1024 + 777;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 1000) as u8).collect();
    let (blob, _) = a.put_blob(&data).unwrap();
    let desc = obj(vec![
        ("$type$", s("BlobDescriptor")),
        ("data", s(&blob)),
        ("lastModified", V::Int(1_767_225_600_000)),
        ("name", s("big.bin")),
        ("size", V::Int(size as i64)),
        ("type", s("application/octet-stream")),
    ]);
    let desc_h = a.put_objects(&[desc]).unwrap()[0].hash.clone();
    store_versioned(&a, obj(vec![("$type$", s("Access")), ("object", s(&desc_h)), ("person", V::List(vec![s(PB)])), ("group", V::List(vec![]))]), 1);
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut cb = Config::new(PB, PA);
    cb.exporter = false;
    cb.fast_path = false;
    let (mut sa, mut sb) = (Session::new(a.clone(), ca), Session::new(b.clone(), cb));
    let now = Instant::now();
    sa.start(now);
    sb.start(now);
    // bytes the exporter made and the driver did not pull yet, at most
    let (mut pulled, mut most_ahead, mut frames) = (0u64, 0u64, 0usize);
    loop {
        let mut moved = false;
        while let Some(m) = sb.poll_transmit() {
            moved = true;
            sa.handle_message(m, now);
        }
        most_ahead = most_ahead.max(sa.stats().bytes_sent - pulled);
        // one frame of A per step, as a transport that takes one frame at a time
        if let Some(m) = sa.poll_transmit() {
            moved = true;
            pulled += match &m {
                Message::Text(t) => t.chars().count(),
                Message::Binary(x) => {
                    frames += 1;
                    assert!(x.len() <= 8 + BLOB_PAYLOAD);
                    x.len()
                }
            } as u64;
            sb.handle_message(m, now);
        }
        while sa.poll_event().is_some() {}
        while sb.poll_event().is_some() {}
        if sb.is_finished() || !moved {
            break;
        }
    }
    assert_eq!(sb.close_reason(), Some("chum finished"));
    assert_eq!(b.read_blob(&blob).unwrap(), data);
    assert_eq!(sb.stats().blobs_received, 1);
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    // each stored chunk (1 MiB) cut in pieces of BLOB_PAYLOAD: as before, no frame fragmented
    assert_eq!(frames, 6 * 17 + 1);
    // never more than a frame or two ahead of what was pulled (a whole-BLOB read: 6 MiB)
    assert!(most_ahead < 4 * 65_536, "the exporter made {most_ahead} bytes ahead of the transport");
}

/// A CLOB (`utf8`) is streamed like a BLOB (issue 8): text chunks of 4,096 code points (the
/// encoding on the first only), the same chunks as cutting the whole text, read from the
/// store as the driver pulls them, never the whole CLOB ahead of the transport.
#[test]
fn a_large_clob_is_sent_one_chunk_at_a_time() {
    lama_core::microdata::register_recipe_json(
        r#"{"$type$":"Recipe","name":"LamaChumTestNote","rule":[{"itemprop":"title"},{"itemprop":"body","itemtype":{"type":"referenceToClob"}}]}"#,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let a = new_store(dir.path(), "a");
    let b = new_store(dir.path(), "b");
    // multi-byte characters across every read and chunk boundary: 1, 2, 3 and 4 bytes each
    let text: String = (0..700_000).map(|i| ['a', 'ü', '✓', '𝄞', ' '][(i * 7 + i / 13) % 5]).collect();
    let (clob, _) = a.put_clob(&text).unwrap();
    let note = obj(vec![("$type$", s("LamaChumTestNote")), ("title", s("note")), ("body", s(&clob))]);
    let note_h = a.put_objects(&[note]).unwrap()[0].hash.clone();
    store_versioned(&a, obj(vec![("$type$", s("Access")), ("object", s(&note_h)), ("person", V::List(vec![s(PB)])), ("group", V::List(vec![]))]), 1);
    let mut ca = Config::new(PA, PB);
    ca.importer = false;
    let mut cb = Config::new(PB, PA);
    cb.exporter = false;
    cb.fast_path = false;
    let (mut sa, mut sb) = (Session::new(a.clone(), ca), Session::new(b.clone(), cb));
    let now = Instant::now();
    sa.start(now);
    sb.start(now);
    let (mut pulled, mut most_ahead) = (0u64, 0u64);
    let mut chunks: Vec<(String, Option<String>)> = Vec::new();
    loop {
        let mut moved = false;
        while let Some(m) = sb.poll_transmit() {
            moved = true;
            sa.handle_message(m, now);
        }
        most_ahead = most_ahead.max(sa.stats().bytes_sent - pulled);
        if let Some(m) = sa.poll_transmit() {
            moved = true;
            if let Message::Text(t) = &m {
                pulled += t.chars().count() as u64;
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                if v["type"] == "stream" {
                    chunks.push((v["chunk"].as_str().unwrap().to_string(), v["encoding"].as_str().filter(|e| *e != lama_chum::rpc::UNDEFINED).map(str::to_string)));
                }
            }
            sb.handle_message(m, now);
        }
        while sa.poll_event().is_some() {}
        while sb.poll_event().is_some() {}
        if sb.is_finished() || !moved {
            break;
        }
    }
    assert_eq!(sb.close_reason(), Some("chum finished"));
    assert_eq!(String::from_utf8(b.read_blob(&clob).unwrap()).unwrap(), text);
    assert_eq!(sb.stats().clobs_received, 1);
    assert_eq!(b.verify().unwrap(), Vec::<String>::new());
    // the chunks of cutting the whole text every 4,096 code points
    let want: Vec<String> = text.chars().collect::<Vec<_>>().chunks(4096).map(|c| c.iter().collect()).collect();
    assert_eq!(chunks.iter().map(|c| c.0.clone()).collect::<Vec<_>>(), want);
    assert_eq!(chunks[0].1.as_deref(), Some("utf8"));
    assert!(chunks[1..].iter().all(|c| c.1.is_none()));
    // a chunk or two ahead of the transport, not the whole CLOB (about 1.7 M characters)
    assert!(most_ahead < 4 * 4 * 4096, "the exporter made {most_ahead} characters ahead of the transport");
}
