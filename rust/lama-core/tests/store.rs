//! Tests of the LMDB store (docs/store-format.md, objects.md §2.3-§2.4, §4.1, §5).

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use lama_core::hash::sha256_hex;
use lama_core::store::{EntryKind, Status, Store, CHUNK};
use lama_core::ErrorKind;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Open the raw LMDB environment of a (closed) store to inspect or corrupt it.
fn with_raw_db<R>(dir: &std::path::Path, name: &str, f: impl FnOnce(&heed::Env, Database<Bytes, Bytes>) -> R) -> R {
    let env = unsafe { EnvOpenOptions::new().map_size(1 << 30).max_dbs(16).open(dir).unwrap() };
    let txn = env.read_txn().unwrap();
    let db: Database<Bytes, Bytes> = env.open_database(&txn, Some(name)).unwrap().unwrap();
    txn.commit().unwrap(); // keeps the database handle open
    f(&env, db)
}

#[test]
fn format_is_written_and_checked() {
    let d = tmp();
    drop(Store::open(d.path(), None).unwrap());
    with_raw_db(d.path(), "meta", |env, db| {
        let txn = env.read_txn().unwrap();
        assert_eq!(db.get(&txn, b"format").unwrap(), Some(&b"lama-store-1"[..]));
        drop(txn);
        let mut w = env.write_txn().unwrap();
        db.put(&mut w, b"format", b"lama-store-0").unwrap();
        w.commit().unwrap();
    });
    let err = Store::open(d.path(), None).err().unwrap();
    assert_eq!(err.kind, ErrorKind::Store);
    assert_eq!(err.code, "LAMA-FORMAT");
}

#[test]
fn blob_and_clob_round_trip() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let (h, st) = s.put_blob(&[1, 2, 3]).unwrap();
    assert_eq!(h, "039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81");
    assert_eq!(st, Status::New);
    assert_eq!(s.put_blob(&[1, 2, 3]).unwrap().1, Status::Exists);
    let (hc, st) = s.put_clob("hello world").unwrap();
    assert_eq!(hc, "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9");
    assert_eq!(st, Status::New);
    assert_eq!(s.read_blob(&h).unwrap(), vec![1, 2, 3]);
    assert_eq!(s.read_blob(&hc).unwrap(), b"hello world");
    assert_eq!(s.blob_size(&hc).unwrap(), 11);
    assert_eq!(s.kind(&h).unwrap(), Some(EntryKind::Blob));
    assert_eq!(s.kind(&hc).unwrap(), Some(EntryKind::Clob));
    assert!(s.has(&h).unwrap());
    assert_eq!(s.count().unwrap(), 2);
    let mut all = vec![h.clone(), hc.clone()];
    all.sort();
    assert_eq!(s.hashes().unwrap(), all);
    // a BLOB is not an object
    assert_eq!(s.get(&h).unwrap_err().code, "SB-READ2");
    let missing = sha256_hex(b"nothing");
    assert!(!s.has(&missing).unwrap());
    assert_eq!(s.kind(&missing).unwrap(), None);
    let e = s.read_blob(&missing).unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::NotFound, "SB-READ2"));
    let e = s.put_clob("").unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Store, "SB-STORE"));
    assert_eq!(s.has("ABC").unwrap_err().kind, ErrorKind::Microdata);
    
}

#[test]
fn inline_blob_layout_is_kind_byte_plus_bytes() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let (h, _) = s.put_blob(&[9, 8, 7]).unwrap();
    let (hc, _) = s.put_clob("text").unwrap();
    drop(s);
    with_raw_db(d.path(), "objects", |env, db| {
        let txn = env.read_txn().unwrap();
        let k = hex::decode(&h).unwrap();
        assert_eq!(db.get(&txn, &k).unwrap(), Some(&[b'B', 9, 8, 7][..]));
        let k = hex::decode(&hc).unwrap();
        assert_eq!(db.get(&txn, &k).unwrap(), Some(&b"Ctext"[..]));
    });
}

#[test]
fn chunked_blobs() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let exact = bytes(CHUNK, 1);
    let big = bytes(2 * CHUNK + 12345, 2);
    let (he, _) = s.put_blob(&exact).unwrap();
    assert_eq!(s.read_blob_chunks(&he).unwrap().len(), 1, "exactly CHUNK bytes stay inline");
    let (hb, st) = s.put_blob(&big).unwrap();
    assert_eq!(st, Status::New);
    assert_eq!(hb, sha256_hex(&big));
    assert_eq!(s.read_blob(&hb).unwrap(), big);
    assert_eq!(s.blob_size(&hb).unwrap(), big.len() as u64);
    let chunks = s.read_blob_chunks(&hb).unwrap();
    assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), vec![CHUNK, CHUNK, 12345]);
    assert_eq!(s.put_blob(&big).unwrap().1, Status::Exists);
    
    drop(s);
    with_raw_db(d.path(), "objects", |env, db| {
        let txn = env.read_txn().unwrap();
        let v = db.get(&txn, &hex::decode(&hb).unwrap()).unwrap().unwrap();
        let mut want = vec![b'b'];
        want.extend_from_slice(&(big.len() as u64).to_be_bytes());
        want.extend_from_slice(&3u32.to_be_bytes());
        assert_eq!(v, &want[..]);
    });
    with_raw_db(d.path(), "chunks", |env, db| {
        let txn = env.read_txn().unwrap();
        let mut k = hex::decode(&hb).unwrap();
        k.extend_from_slice(&2u32.to_be_bytes());
        assert_eq!(db.get(&txn, &k).unwrap().unwrap(), &big[2 * CHUNK..]);
    });
}

#[test]
fn staged_writer() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let big = bytes(3 * CHUNK + 7, 3);
    let mut w = s.blob_writer(false);
    for part in big.chunks(300_001) {
        w.write(part).unwrap();
    }
    let (h, st) = w.finish(Some(&sha256_hex(&big))).unwrap();
    assert_eq!((h.as_str(), st), (sha256_hex(&big).as_str(), Status::New));
    assert_eq!(s.read_blob(&h).unwrap(), big);
    assert_eq!(s.read_blob_chunks(&h).unwrap().len(), 4);
    assert!(w.write(b"more").is_err(), "a finished writer refuses writes");

    // same content again: exists, staged chunks removed
    let mut w = s.blob_writer(false);
    w.write(&big).unwrap();
    assert_eq!(w.finish(None).unwrap().1, Status::Exists);

    // small CLOB through the writer is inline and equals put_clob
    let mut w = s.blob_writer(true);
    w.write("héllo ".as_bytes()).unwrap();
    let e = "é".as_bytes();
    w.write(&e[..1]).unwrap(); // split inside a character
    w.write(&e[1..]).unwrap();
    let (hc, _) = w.finish(None).unwrap();
    assert_eq!(s.put_clob("héllo é").unwrap(), (hc.clone(), Status::Exists));
    assert_eq!(s.kind(&hc).unwrap(), Some(EntryKind::Clob));

    // empty CLOB and invalid UTF-8 are refused
    assert_eq!(s.blob_writer(true).finish(None).unwrap_err().code, "SB-STORE");
    let mut w = s.blob_writer(true);
    assert_eq!(w.write(&[0xff, 0xfe]).unwrap_err().kind, ErrorKind::Store);

    // abort after staging: nothing visible, tmp empty
    let before = s.count().unwrap();
    let mut w = s.blob_writer(false);
    w.write(&bytes(2 * CHUNK + 1, 4)).unwrap();
    w.abort().unwrap();
    assert_eq!(s.count().unwrap(), before);

    // expected-hash mismatch: error, nothing stored
    let mut w = s.blob_writer(false);
    let other = bytes(CHUNK + 5, 5);
    w.write(&other).unwrap();
    let e = w.finish(Some(&sha256_hex(b"something else"))).unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::HashMismatch, "LAMA-HASH"));
    assert!(!s.has(&sha256_hex(&other)).unwrap());
    assert_eq!(s.count().unwrap(), before);

    // a writer dropped mid-stream leaves nothing staged
    let mut w = s.blob_writer(false);
    w.write(&bytes(CHUNK + 5, 6)).unwrap();
    drop(w);
    
    drop(s);
    with_raw_db(d.path(), "tmp", |env, db| {
        let txn = env.read_txn().unwrap();
        assert_eq!(db.len(&txn).unwrap(), 0);
    });
}

#[test]
fn stale_staged_chunks_are_removed_on_open() {
    let d = tmp();
    drop(Store::open(d.path(), None).unwrap());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    with_raw_db(d.path(), "tmp", |env, db| {
        let mut w = env.write_txn().unwrap();
        for (ts, i) in [(now - 2 * 3_600_000, 0u32), (now - 2 * 3_600_000, 1), (now, 0)] {
            let mut k = ts.to_be_bytes().to_vec();
            k.extend_from_slice(&[7; 8]);
            k.extend_from_slice(&i.to_be_bytes());
            db.put(&mut w, &k, b"x").unwrap();
        }
        w.commit().unwrap();
    });
    drop(Store::open(d.path(), None).unwrap());
    with_raw_db(d.path(), "tmp", |env, db| {
        let txn = env.read_txn().unwrap();
        assert_eq!(db.len(&txn).unwrap(), 1, "only the fresh staged chunk survives");
    });
}

#[test]
fn same_directory_shares_one_environment() {
    let d = tmp();
    let a = Store::open(d.path(), None).unwrap();
    let b = Store::open(d.path(), None).unwrap();
    let (h, _) = a.put_blob(b"shared").unwrap();
    assert!(b.has(&h).unwrap());
    drop(a);
    drop(b);
    let c = Store::open(d.path(), None).unwrap();
    assert!(c.has(&h).unwrap());
}

