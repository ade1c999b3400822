//! Tests of the LMDB store (docs/store-format.md, objects.md §2.3-§2.4, §4.1, §5).

use heed::types::Bytes;
use heed::{Database, EnvOpenOptions};
use lama_core::hash::sha256_hex;
use lama_core::store::{EntryKind, Status, Store, Verified, CHUNK};
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
        assert_eq!(db.get(&txn, b"format").unwrap(), Some(&b"lama-store-2"[..]));
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
    assert!(s.verify().unwrap().is_empty());
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
    assert!(s.verify().unwrap().is_empty());
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
fn blob_ranges_stop_at_stored_chunk_ends() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let big = bytes(2 * CHUNK + 12345, 2);
    let (hb, _) = s.put_blob(&big).unwrap();
    // what a streaming reader asks for: pieces of `max` bytes, none across a chunk's end
    let max = 65_528;
    let (mut off, mut got, mut pieces) = (0u64, Vec::new(), Vec::new());
    loop {
        let p = s.read_blob_range(&hb, off, max).unwrap();
        if p.is_empty() {
            break;
        }
        assert!(p.len() <= max);
        assert_eq!(off / CHUNK as u64, (off + p.len() as u64 - 1) / CHUNK as u64, "across a chunk end at {off}");
        off += p.len() as u64;
        pieces.push(p.len());
        got.extend_from_slice(&p);
    }
    assert_eq!(got, big);
    // each stored chunk cut in pieces of `max` bytes: 17 per full chunk, 1 for the 12,345
    assert_eq!(pieces.len(), 17 + 17 + 1);
    let small = bytes(1000, 3);
    let (hs, _) = s.put_blob(&small).unwrap();
    assert_eq!(s.read_blob_range(&hs, 10, 20).unwrap(), &small[10..30]);
    assert!(s.read_blob_range(&hs, 1000, 20).unwrap().is_empty());
    assert!(s.read_blob_range(&hs, 5000, 20).unwrap().is_empty());
    let e = s.read_blob_range(&sha256_hex(b"none"), 0, 10).unwrap_err();
    assert_eq!(e.code, "SB-READ2");
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
    assert!(s.verify().unwrap().is_empty());
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

#[test]
fn verify_detects_corrupted_blob_and_missing_chunk() {
    let d = tmp();
    let s = Store::open(d.path(), None).unwrap();
    let (h, _) = s.put_blob(b"original").unwrap();
    let big = bytes(CHUNK + 10, 8);
    let (hb, _) = s.put_blob(&big).unwrap();
    assert!(s.verify().unwrap().is_empty());
    drop(s);
    with_raw_db(d.path(), "objects", |env, db| {
        let mut w = env.write_txn().unwrap();
        db.put(&mut w, &hex::decode(&h).unwrap(), b"Btampered").unwrap();
        w.commit().unwrap();
    });
    with_raw_db(d.path(), "chunks", |env, db| {
        let mut w = env.write_txn().unwrap();
        let mut k = hex::decode(&hb).unwrap();
        k.extend_from_slice(&1u32.to_be_bytes());
        assert!(db.delete(&mut w, &k).unwrap());
        w.commit().unwrap();
    });
    let s = Store::open(d.path(), None).unwrap();
    let problems = s.verify().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains(&h) && p.contains("hashes to")));
    assert!(problems.iter().any(|p| p.contains(&hb) && p.contains("missing")));
}

// ---------------------------------------------------------------- objects, heads, rmaps

use lama_core::microdata::{self, Value};

fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

fn obj(ty: &str, props: Vec<(&str, Value)>) -> Value {
    let mut entries = vec![(s("$type$"), s(ty))];
    entries.extend(props.into_iter().map(|(k, v)| (s(k), v)));
    Value::Dict(entries)
}

fn person(email: &str, name: &str) -> Value {
    obj("Person", vec![("email", s(email)), ("name", s(name))])
}

fn edge(data: &str, time: i64) -> Value {
    obj("VersionNodeEdge", vec![("data", s(data)), ("depth", Value::Int(0)), ("creationTime", Value::Int(time))])
}

fn hash_of(v: &Value) -> String {
    sha256_hex(microdata::serialize(v).unwrap().as_bytes())
}

#[test]
fn objects_round_trip_and_status() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let alice = person("alice@example.com", "Alice");
    let r = st.put_objects(&[alice.clone()]).unwrap();
    assert_eq!(r.len(), 1);
    let text = microdata::serialize(&alice).unwrap();
    let id_text = microdata::id_microdata(&alice).unwrap();
    assert_eq!(r[0].hash, sha256_hex(text.as_bytes()));
    assert_eq!(r[0].status, Status::New);
    assert_eq!(r[0].id_hash.as_deref(), Some(sha256_hex(id_text.as_bytes()).as_str()));
    let id = r[0].id_hash.clone().unwrap();
    assert_eq!(st.put_objects(&[alice.clone()]).unwrap()[0].status, Status::Exists);
    assert_eq!(st.get(&r[0].hash).unwrap(), text);
    assert_eq!(st.get(&id).unwrap(), id_text);
    assert_eq!(st.kind(&r[0].hash).unwrap(), Some(EntryKind::Object));
    assert_eq!(st.kind(&id).unwrap(), Some(EntryKind::Id));
    assert_eq!(st.get_object(&r[0].hash).unwrap(), microdata::parse(&text).unwrap());
    assert_eq!(st.count().unwrap(), 2);

    // unversioned: no ID hash
    let e = edge(&r[0].hash, 5);
    let r2 = st.put_objects(&[e.clone()]).unwrap();
    assert_eq!((r2[0].status, r2[0].id_hash.clone()), (Status::New, None));

    // duplicates inside one batch: the second one exists
    let bob = person("bob@example.com", "Bob");
    let r3 = st.put_objects(&[bob.clone(), bob.clone()]).unwrap();
    assert_eq!((r3[0].status, r3[1].status), (Status::New, Status::Exists));

    let missing = sha256_hex(b"missing");
    let err = st.get(&missing).unwrap_err();
    assert_eq!((err.kind, err.code.as_str()), (ErrorKind::NotFound, "SB-READ2"));
    assert!(st.verify().unwrap().is_empty());
}

#[test]
fn bad_object_aborts_the_whole_batch() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let good = person("carol@example.com", "Carol");
    let bad = obj("Person", vec![("email", Value::Int(3))]);
    assert!(st.put_objects(&[good.clone(), bad]).is_err());
    assert_eq!(st.count().unwrap(), 0);
    assert!(!st.has(&hash_of(&good)).unwrap());
}

#[test]
fn put_microdata_verifies_and_stores_verbatim() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let dave = person("dave@example.com", "Dave");
    let text = microdata::serialize(&dave).unwrap();
    let h = sha256_hex(text.as_bytes());
    let id_text = microdata::id_microdata(&dave).unwrap();
    let idh = sha256_hex(id_text.as_bytes());

    // wrong expected hash: nothing written, not even the good first item
    let eve = microdata::serialize(&person("eve@example.com", "Eve")).unwrap();
    let err = st.put_microdata(&[(eve.clone(), None), (text.clone(), Some(sha256_hex(b"x")))]).unwrap_err();
    assert_eq!((err.kind, err.code.as_str()), (ErrorKind::HashMismatch, "LAMA-HASH"));
    assert_eq!(st.count().unwrap(), 0);

    // malformed microdata is refused before anything is written
    let broken = text.replace("</div>", "");
    assert!(st.put_microdata(&[(eve.clone(), None), (broken, None)]).is_err());
    assert_eq!(st.count().unwrap(), 0);

    let r = st.put_microdata(&[(text.clone(), Some(h.clone()))]).unwrap();
    assert_eq!((r[0].hash.as_str(), r[0].status, r[0].id_hash.as_deref()), (h.as_str(), Status::New, Some(idh.as_str())));
    assert_eq!(st.get(&idh).unwrap(), id_text, "the ID object is derived and stored");
    // an ID object text is stored as an ID object
    let frank = person("frank@example.com", "Frank");
    let fid = microdata::id_microdata(&frank).unwrap();
    let r = st.put_microdata(&[(fid.clone(), None)]).unwrap();
    assert_eq!(r[0].status, Status::New);
    assert_eq!(st.kind(&r[0].hash).unwrap(), Some(EntryKind::Id));
    // the same object via put_objects now exists
    assert_eq!(st.put_objects(&[dave]).unwrap()[0].status, Status::Exists);
    assert!(st.verify().unwrap().is_empty());
}

/// `microdata::inspect` + `Store::put_verified` (the CHUM importer's one-parse path) store
/// exactly what `put_microdata` stores: the same entries, the versioned object's ID object, the
/// same feed order; inspect finds the references `references` finds.
#[test]
fn put_verified_stores_what_put_microdata_stores() {
    let (d1, d2) = (tmp(), tmp());
    let (s1, s2) = (Store::open(d1.path(), None).unwrap(), Store::open(d2.path(), None).unwrap());
    let dave = microdata::serialize(&person("dave@example.com", "Dave")).unwrap();
    let frank_id = microdata::id_microdata(&person("frank@example.com", "Frank")).unwrap();
    let dh = sha256_hex(dave.as_bytes());
    let cert = format!(
        r#"<div itemscope itemtype="//refin.io/CreationTime"><span itemprop="timestamp">1</span><a itemprop="data" data-type="obj">{dh}</a></div>"#
    );
    let texts = [dave.clone(), frank_id.clone(), cert.clone()];
    let found: Vec<_> = texts.iter().map(|t| microdata::inspect(t).unwrap()).collect();
    assert_eq!((found[0].type_name.as_str(), found[0].is_id), ("Person", false));
    assert_eq!(found[0].id_microdata.as_deref(), Some(microdata::id_microdata(&person("dave@example.com", "Dave")).unwrap().as_str()));
    assert_eq!((found[1].is_id, found[1].id_microdata.as_deref()), (true, None));
    assert_eq!(found[2].id_microdata, None);
    let r0 = &microdata::references(&cert).unwrap()[0];
    assert_eq!(found[2].refs.len(), 1);
    assert_eq!((found[2].refs[0].path.as_str(), found[2].refs[0].kind), (r0.path.as_str(), r0.kind));
    assert_eq!(lama_core::hash::hash_hex(&found[2].refs[0].hash), dh);
    // reverse maps from the references put_verified is given (no second parse), as
    // put_microdata writes them from its own parse
    for s in [&s1, &s2] {
        s.enable_reverse_maps("CreationTime", Some(&["data".to_string()]), false).unwrap();
    }
    let items: Vec<Verified> = texts
        .iter()
        .zip(&found)
        .map(|(t, f)| Verified { text: t, hash: lama_core::hash::sha256(t.as_bytes()), type_name: &f.type_name, is_id: f.is_id, id_microdata: f.id_microdata.as_deref(), refs: Some(&f.refs) })
        .collect();
    let r1 = s1.put_microdata(&texts.iter().map(|t| (t.clone(), None)).collect::<Vec<_>>()).unwrap();
    let r2 = s2.put_verified(&items).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(s1.hashes().unwrap(), s2.hashes().unwrap());
    assert_eq!(s1.count().unwrap(), 4, "three texts and Dave's ID object");
    let feed = |s: &Store| s.changes(0, 100).unwrap().into_iter().map(|e| (e.seq, e.hash)).collect::<Vec<_>>();
    assert_eq!(feed(&s1), feed(&s2));
    assert!(s2.verify().unwrap().is_empty());
    let ch = sha256_hex(cert.as_bytes());
    assert_eq!(s1.referencing(&dh, "CreationTime", false).unwrap(), vec![ch.clone()]);
    assert_eq!(s2.referencing(&dh, "CreationTime", false).unwrap(), vec![ch]);
    // a malformed text is refused by inspect (the importer records it; nothing is stored)
    assert!(microdata::inspect(&dave.replace("</div>", "")).is_err());
}

#[test]
fn write_batch_compare_and_set() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let v1 = person("gina@example.com", "Gina");
    let h1 = hash_of(&v1);
    let n1 = edge(&h1, 1);
    let n1h = hash_of(&n1);
    let id = sha256_hex(microdata::id_microdata(&v1).unwrap().as_bytes());
    assert_eq!(st.get_head(&id).unwrap(), None);
    let r = st.write_batch(&[v1, n1], &[(id.clone(), None, n1h.clone())]).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(st.get_head(&id).unwrap(), Some(n1h.clone()));

    // a writer that still expects "no head" loses; nothing of its batch is written
    let v2 = person("gina@example.com", "Gina B.");
    let h2 = hash_of(&v2);
    let n2 = edge(&h2, 2);
    let n2h = hash_of(&n2);
    let before = st.count().unwrap();
    let err = st.write_batch(&[v2.clone(), n2.clone()], &[(id.clone(), None, n2h.clone())]).unwrap_err();
    assert_eq!((err.kind, err.code.as_str()), (ErrorKind::Conflict, "LAMA-CONFLICT"));
    assert_eq!(st.count().unwrap(), before);
    assert!(!st.has(&h2).unwrap());
    assert_eq!(st.get_head(&id).unwrap(), Some(n1h.clone()));

    // a head pointing at nothing stored is refused
    let err = st.write_batch(&[v2.clone()], &[(id.clone(), Some(n1h.clone()), n2h.clone())]).unwrap_err();
    assert_eq!((err.kind, err.code.as_str()), (ErrorKind::Store, "LAMA-HEAD"));
    assert!(!st.has(&h2).unwrap());

    // with the right expectation it succeeds
    st.write_batch(&[v2, n2], &[(id.clone(), Some(n1h), n2h.clone())]).unwrap();
    assert_eq!(st.get_head(&id).unwrap(), Some(n2h));
    assert!(st.verify().unwrap().is_empty());
}

#[test]
fn write_batch_serialized_is_write_batch() {
    use lama_core::store::Serialized;
    // objects serialised by the caller (the chat sender's post objects), then values, then a
    // head move: the same results, rows, feed and hashes as write_batch of the values
    let msg = obj("ChatMessage", vec![("text", s("hi \u{2028} <b>")), ("sender", s(&"b".repeat(64)))]);
    let ct = obj("CreationTime", vec![("timestamp", Value::Int(1_700_000_000_000)), ("data", s(&hash_of(&msg)))]);
    let v1 = person("ida@example.com", "Ida");
    let n1 = edge(&hash_of(&v1), 1);
    let n1h = hash_of(&n1);
    let id = sha256_hex(microdata::id_microdata(&v1).unwrap().as_bytes());
    let heads = [(id.clone(), None, n1h.clone())];
    let (d1, d2) = (tmp(), tmp());
    let (s1, s2) = (Store::open(d1.path(), None).unwrap(), Store::open(d2.path(), None).unwrap());
    let r1 = s1.write_batch(&[msg.clone(), ct.clone(), v1.clone(), n1.clone()], &heads).unwrap();
    let pre = [Serialized::of(&msg).unwrap(), Serialized::of(&ct).unwrap()];
    assert_eq!(hex::encode(pre[0].hash()), hash_of(&msg));
    let r2 = s2.write_batch_serialized(&[&pre[0], &pre[1]], &[v1.clone(), n1], &heads).unwrap();
    assert_eq!(r1, r2);
    assert_eq!(s1.get(&hash_of(&msg)).unwrap(), s2.get(&hash_of(&msg)).unwrap());
    assert_eq!(s2.get(&hash_of(&ct)).unwrap(), microdata::serialize(&ct).unwrap());
    let feed = |s: &Store| s.changes(0, 100).unwrap().into_iter().map(|e| (e.seq, e.hash, e.kind)).collect::<Vec<_>>();
    assert_eq!(feed(&s1), feed(&s2));
    assert_eq!(s2.get_head(&id).unwrap(), Some(n1h));
    assert!(s2.verify().unwrap().is_empty());
    // a versioned object is not an item of this path
    assert!(Serialized::of(&v1).is_err());
}

#[test]
fn builtin_reverse_maps_for_access_and_keys() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let p = person("hank@example.com", "Hank");
    let pr = st.put_objects(&[p]).unwrap().remove(0);
    let pid = pr.id_hash.unwrap();
    let (clob, _) = st.put_clob("shared text").unwrap();

    let keys = obj("Keys", vec![("owner", s(&pid)), ("publicKey", s(&"a".repeat(64))), ("publicSignKey", s(&"b".repeat(64)))]);
    let access = obj(
        "Access",
        vec![("object", s(&clob)), ("person", Value::List(vec![s(&pid)])), ("group", Value::List(vec![]))],
    );
    let r = st.put_objects(&[keys, access]).unwrap();
    let (kh, ah, aid) = (r[0].hash.clone(), r[1].hash.clone(), r[1].id_hash.clone().unwrap());
    assert_eq!(st.referencing(&pid, "Keys", false).unwrap(), vec![kh]);
    assert_eq!(st.referencing(&pid, "Access", false).unwrap(), vec![ah.clone()]);
    assert_eq!(st.referencing(&clob, "Access", false).unwrap(), vec![ah]);
    // ID map: only the ID property (object) of Access
    assert_eq!(st.referencing(&clob, "Access", true).unwrap(), vec![aid]);
    assert!(st.referencing(&pid, "Access", true).unwrap().is_empty());
    // Person is not an rmap type; unrelated target/type give nothing
    assert!(st.referencing(&pr.hash, "Person", false).unwrap().is_empty());
    assert!(st.referencing(&pid, "Group", false).unwrap().is_empty());
    assert!(st.verify().unwrap().is_empty());
}

#[test]
fn enabled_reverse_maps_persist_across_reopen() {
    let d = tmp();
    let p = person("ida@example.com", "Ida");
    let ph = hash_of(&p);
    let old = edge(&ph, 1);
    {
        let st = Store::open(d.path(), None).unwrap();
        st.put_objects(&[p.clone(), old.clone()]).unwrap();
        st.enable_reverse_maps("VersionNodeEdge", None, false).unwrap();
        st.enable_reverse_maps("VersionNodeChange", Some(&["prev".to_string()]), false).unwrap();
    }
    let st = Store::open(d.path(), None).unwrap();
    let e2 = edge(&ph, 2);
    let change = obj(
        "VersionNodeChange",
        vec![("prev", s(&hash_of(&e2))), ("data", s(&ph)), ("depth", Value::Int(1)), ("creationTime", Value::Int(3))],
    );
    // `old` was stored before the map was enabled: indexed when it was enabled; writing it
    // again is write-once (exists)
    let r = st.put_objects(&[old.clone(), e2.clone(), change.clone()]).unwrap();
    assert_eq!(r[0].status, Status::Exists);
    let mut both = vec![hash_of(&old), hash_of(&e2)];
    both.sort();
    let mut got = st.referencing(&ph, "VersionNodeEdge", false).unwrap();
    got.sort();
    assert_eq!(got, both);
    // only the enabled itemprop `prev` of VersionNodeChange is mapped
    assert_eq!(st.referencing(&hash_of(&e2), "VersionNodeChange", false).unwrap(), vec![hash_of(&change)]);
    assert!(st.referencing(&ph, "VersionNodeChange", false).unwrap().is_empty());
    // enabling more props merges, and indexes the stored change for `data` at once
    st.enable_reverse_maps("VersionNodeChange", Some(&["data".to_string()]), false).unwrap();
    assert_eq!(st.referencing(&ph, "VersionNodeChange", false).unwrap(), vec![hash_of(&change)]);
    assert!(st.verify().unwrap().is_empty());
    drop(st);
    with_raw_db(d.path(), "meta", |env, db| {
        let txn = env.read_txn().unwrap();
        let v = db.get(&txn, b"rmap.O.VersionNodeChange").unwrap().unwrap();
        let props: Vec<String> = serde_json::from_slice(v).unwrap();
        assert_eq!(props, vec!["prev", "data"]);
        let v = db.get(&txn, b"rmap.O.VersionNodeEdge").unwrap().unwrap();
        assert_eq!(serde_json::from_slice::<Vec<String>>(v).unwrap(), vec!["*"]);
        assert!(db.get(&txn, b"rmap.O.Keys").unwrap().is_none(), "built-ins are not stored");
    });
}

#[test]
fn rmaps_key_layout() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let pid = sha256_hex(microdata::id_microdata(&person("jo@example.com", "Jo")).unwrap().as_bytes());
    let keys = obj("Keys", vec![("owner", s(&pid)), ("publicKey", s(&"c".repeat(64))), ("publicSignKey", s(&"d".repeat(64)))]);
    let kh = st.put_objects(&[keys]).unwrap().remove(0).hash;
    drop(st);
    with_raw_db(d.path(), "rmaps", |env, db| {
        let txn = env.read_txn().unwrap();
        let mut want = hex::decode(&pid).unwrap();
        want.push(b'O');
        want.extend_from_slice(b"Keys\0");
        want.extend_from_slice(&hex::decode(&kh).unwrap());
        let all: Vec<(Vec<u8>, Vec<u8>)> =
            db.iter(&txn).unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        assert_eq!(all, vec![(want, vec![])]);
    });
}

#[test]
fn verify_detects_corrupted_objects() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let k = person("kim@example.com", "Kim");
    let r = st.put_objects(&[k]).unwrap().remove(0);
    let other = microdata::serialize(&person("lee@example.com", "Lee")).unwrap();
    assert!(st.verify().unwrap().is_empty());
    drop(st);
    let bogus = sha256_hex(b"not microdata");
    with_raw_db(d.path(), "objects", |env, db| {
        let mut w = env.write_txn().unwrap();
        // valid microdata under the wrong key
        let mut v = vec![b'O'];
        v.extend_from_slice(other.as_bytes());
        db.put(&mut w, &hex::decode(&r.hash).unwrap(), &v).unwrap();
        // correct hash but not ONE microdata
        db.put(&mut w, &hex::decode(&bogus).unwrap(), b"Onot microdata").unwrap();
        w.commit().unwrap();
    });
    let st = Store::open(d.path(), None).unwrap();
    let problems = st.verify().unwrap();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains(&r.hash) && p.contains("hashes to")));
    assert!(problems.iter().any(|p| p.contains(&bogus) && p.contains("microdata")));
}

#[test]
fn non_durable_store_commits_syncs_and_refuses_mixed_durability() {
    let d = tmp();
    let alice = person("alice@example.com", "Alice");
    {
        let st = Store::open_with(d.path(), None, false).unwrap();
        assert!(!st.durable());
        assert_eq!(st.put_objects(&[alice.clone()]).unwrap()[0].status, Status::New);
        st.sync().unwrap();
        let err = Store::open(d.path(), None).err().unwrap();
        assert_eq!((err.kind, err.code.as_str()), (ErrorKind::Store, "LAMA-DURABLE"));
        let second = Store::open_with(d.path(), None, false).unwrap();
        assert!(second.has(&hash_of(&alice)).unwrap());
    }
    let st = Store::open(d.path(), None).unwrap();
    assert!(st.durable());
    assert_eq!(st.get(&hash_of(&alice)).unwrap(), microdata::serialize(&alice).unwrap());
    st.sync().unwrap();
}

/// A store with some content, closed; returns the bytes of its `data.mdb`.
fn filled_store(dir: &std::path::Path) -> Vec<u8> {
    let st = Store::open(dir, None).unwrap();
    for i in 0..300 {
        st.put_objects(&[person(&format!("p{i}@example.com"), "P")]).unwrap();
    }
    st.put_blob(&bytes(CHUNK + 10, 3)).unwrap();
    drop(st);
    std::fs::read(dir.join("data.mdb")).unwrap()
}

fn open_err(dir: &std::path::Path) -> lama_core::Error {
    match Store::open(dir, None) {
        Ok(_) => panic!("opened a damaged store"),
        Err(e) => e,
    }
}

#[test]
fn truncated_data_file_is_refused_not_mapped() {
    let d = tmp();
    let data = filled_store(d.path());
    for frac in [0.01, 0.3, 0.5, 0.9, 0.999] {
        let cut = tmp();
        std::fs::write(cut.path().join("data.mdb"), &data[..(data.len() as f64 * frac) as usize]).unwrap();
        let e = open_err(cut.path());
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Store, "LAMA-CORRUPT"), "{e}");
        assert!(e.message.contains("truncated"), "{e}");
    }
}

#[test]
fn damaged_page_is_refused_and_reported_by_verify() {
    let d = tmp();
    let data = filled_store(d.path());
    let psize = u32::from_le_bytes(data[40..44].try_into().unwrap()) as usize;
    // the last leaf page: give it a wrong page number in its header
    let leaf = (2..data.len() / psize)
        .rev()
        .find(|&p| u16::from_le_bytes([data[p * psize + 10], data[p * psize + 11]]) == 0x02)
        .unwrap();
    let mut bad = data.clone();
    bad[leaf * psize] ^= 0x40;
    std::fs::write(d.path().join("data.mdb"), &bad).unwrap();
    let e = open_err(d.path());
    assert_eq!(e.code, "LAMA-CORRUPT");
    assert!(e.message.contains(&format!("page {leaf}: header says page")), "{e}");
    // damage done while a store is open is found by verify(), as its only problem
    std::fs::write(d.path().join("data.mdb"), &data).unwrap();
    let st = Store::open(d.path(), None).unwrap();
    assert!(st.verify().unwrap().is_empty());
    let f = std::fs::OpenOptions::new().write(true).open(d.path().join("data.mdb")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &bad[leaf * psize..leaf * psize + 8], (leaf * psize) as u64).unwrap();
    let problems = st.verify().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("lmdb: ") && problems[0].contains("header says page"), "{problems:?}");
}

#[test]
fn empty_data_file_and_lost_format_are_refused() {
    let d = tmp();
    filled_store(d.path());
    std::fs::write(d.path().join("data.mdb"), b"").unwrap();
    let e = open_err(d.path());
    assert_eq!(e.code, "LAMA-FORMAT", "{e}");
    assert_eq!(std::fs::metadata(d.path().join("data.mdb")).unwrap().len(), 0);

    let d = tmp();
    filled_store(d.path());
    with_raw_db(d.path(), "meta", |env, db| {
        let mut w = env.write_txn().unwrap();
        assert!(db.delete(&mut w, b"format").unwrap());
        w.commit().unwrap();
    });
    let e = open_err(d.path());
    assert_eq!(e.code, "LAMA-FORMAT", "{e}");
    assert!(e.message.contains("no format record"), "{e}");
}

#[test]
fn check_mark_lets_a_clean_reopen_skip_the_walk() {
    use lama_core::store::{CheckMode, OpenCheck};
    let dir = tmp();
    let s = Store::open(dir.path(), None).unwrap();
    assert_eq!(s.open_check(), OpenCheck::Full);
    s.put_blob(b"abc").unwrap();
    drop(s);
    let mark = std::fs::read(dir.path().join("check-mark")).unwrap();
    assert_eq!(mark.len(), 136);
    assert_eq!(&mark[..8], b"LAMAMARK");
    let s = Store::open(dir.path(), None).unwrap();
    assert_eq!(s.open_check(), OpenCheck::Mark);
    assert_eq!(Store::open(dir.path(), None).unwrap().open_check(), OpenCheck::Shared);
    let always = Store::open_checked(dir.path(), None, true, CheckMode::Always).unwrap();
    assert_eq!(always.open_check(), OpenCheck::Full);
    drop((s, always));
    assert_eq!(Store::open_checked(dir.path(), None, true, CheckMode::Always).unwrap().open_check(), OpenCheck::Full);
    // a garbled mark is no mark: the full check runs and the close writes a valid one again
    std::fs::write(dir.path().join("check-mark"), b"garbage").unwrap();
    assert_eq!(Store::open(dir.path(), None).unwrap().open_check(), OpenCheck::Full);
    assert_eq!(mark_of(&dir).len(), 136);
    assert_eq!(Store::open(dir.path(), None).unwrap().open_check(), OpenCheck::Mark);
    assert!(CheckMode::parse("sometimes").is_err());
}

fn mark_of(dir: &tempfile::TempDir) -> Vec<u8> {
    std::fs::read(dir.path().join("check-mark")).unwrap()
}

#[test]
fn check_mark_does_not_vouch_for_a_file_changed_after_close() {
    let dir = tmp();
    let s = Store::open(dir.path(), None).unwrap();
    s.put_blob(&bytes(50_000, 3)).unwrap();
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(50));
    // flip a bit of the page number of the main database's root (newest meta, record at 88)
    let path = dir.path().join("data.mdb");
    let mut data = std::fs::read(&path).unwrap();
    let psize = u32::from_le_bytes(data[40..44].try_into().unwrap()) as usize;
    let txn = |off: usize| u64::from_le_bytes(data[off + 144..off + 152].try_into().unwrap());
    let meta = if txn(psize) > txn(0) { psize } else { 0 };
    let root = u64::from_le_bytes(data[meta + 128..meta + 136].try_into().unwrap()) as usize;
    data[root * psize] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
    let e = Store::open(dir.path(), None).err().expect("refused");
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Store, "LAMA-CORRUPT"));
    assert!(e.to_string().contains("header says page"), "{e}");
    assert!(!dir.path().join("check-mark").exists());
}

#[test]
fn texts_reads_objects_and_id_objects_in_one_call() {
    // Store::texts (the CHUM batch answer, docs/chum-fastpath.md service 101): kind and
    // microdata per hash, `None` for a missing hash, a BLOB or a malformed hash, input order
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let alice = person("alice@example.com", "Alice");
    let r = st.put_objects(&[alice.clone()]).unwrap();
    let (h, id) = (r[0].hash.clone(), r[0].id_hash.clone().unwrap());
    let (blob, _) = st.put_blob(b"bytes").unwrap();
    let missing = sha256_hex(b"nothing stored");
    let got = st.texts(&[id.as_str(), "not a hash", h.as_str(), blob.as_str(), missing.as_str(), h.as_str()]).unwrap();
    let want = |k: EntryKind, hash: &str| Some((k, st.get(hash).unwrap()));
    assert_eq!(got, vec![want(EntryKind::Id, &id), None, want(EntryKind::Object, &h), None, None, want(EntryKind::Object, &h)]);
    assert_eq!(got[2].as_ref().unwrap().1, microdata::serialize(&alice).unwrap());
}

fn change(data: &str, prev: &str, time: i64) -> Value {
    obj("VersionNodeChange", vec![("prev", s(prev)), ("data", s(data)), ("depth", Value::Int(1)), ("creationTime", Value::Int(time))])
}

/// `put_verified_forward` (the importer's last commit of a pass, issue 10): the head of an
/// ID moves to an imported node in the same transaction exactly when that is a fast-forward
/// (no head yet, or the head is the node's parent) and the node is a version node of that
/// ID; anything else is left to the caller's merge, and the objects are stored either way.
#[test]
fn put_verified_forward_moves_a_head_only_on_a_fast_forward() {
    let d = tmp();
    let st = Store::open(d.path(), None).unwrap();
    let put = |values: &[Value], forward: &[(String, String)]| -> Vec<[u8; 32]> {
        let texts: Vec<String> = values.iter().map(|v| microdata::serialize(v).unwrap()).collect();
        let found: Vec<_> = texts.iter().map(|t| microdata::inspect(t).unwrap()).collect();
        let items: Vec<Verified> = texts
            .iter()
            .zip(&found)
            .map(|(t, f)| Verified { text: t, hash: lama_core::hash::sha256(t.as_bytes()), type_name: &f.type_name, is_id: f.is_id, id_microdata: f.id_microdata.as_deref(), refs: Some(&f.refs) })
            .collect();
        let raw = |h: &str| lama_core::hash::Hash::parse(h).unwrap().0;
        let fw: Vec<([u8; 32], [u8; 32])> = forward.iter().map(|(i, n)| (raw(i), raw(n))).collect();
        let (results, moved) = st.put_verified_forward(&items, &fw).unwrap();
        assert!(results.len() >= items.len());
        moved
    };
    let raw = |h: &str| lama_core::hash::Hash::parse(h).unwrap().0;
    let v1 = person("hana@example.com", "Hana");
    let id = sha256_hex(microdata::id_microdata(&v1).unwrap().as_bytes());
    let n1 = edge(&hash_of(&v1), 1);
    let n1h = hash_of(&n1);
    // no head yet: the first node becomes it, in the same commit
    assert_eq!(put(&[v1.clone(), n1], &[(id.clone(), n1h.clone())]), vec![raw(&id)]);
    assert_eq!(st.get_head(&id).unwrap(), Some(n1h.clone()));
    // a change whose parent is the head: fast-forward
    let v2 = person("hana@example.com", "Hana B.");
    let n2 = change(&hash_of(&v2), &n1h, 2);
    let n2h = hash_of(&n2);
    assert_eq!(put(&[v2, n2], &[(id.clone(), n2h.clone())]), vec![raw(&id)]);
    assert_eq!(st.get_head(&id).unwrap(), Some(n2h.clone()));
    // a concurrent change (its parent is n1, the head is n2): stored, the head left alone
    let v3 = person("hana@example.com", "Hana C.");
    let n3 = change(&hash_of(&v3), &n1h, 3);
    let n3h = hash_of(&n3);
    assert_eq!(put(&[v3, n3], &[(id.clone(), n3h.clone())]), Vec::<[u8; 32]>::new());
    assert!(st.has(&n3h).unwrap());
    assert_eq!(st.get_head(&id).unwrap(), Some(n2h.clone()));
    // a node claimed for another ID (a lying roots list): not moved there
    let other = person("ivan@example.com", "Ivan");
    let other_id = sha256_hex(microdata::id_microdata(&other).unwrap().as_bytes());
    let v4 = person("hana@example.com", "Hana D.");
    let n4 = change(&hash_of(&v4), &n2h, 4);
    let n4h = hash_of(&n4);
    assert_eq!(put(&[v4, n4], &[(other_id.clone(), n4h.clone())]), Vec::<[u8; 32]>::new());
    assert_eq!(st.get_head(&other_id).unwrap(), None);
    assert_eq!(st.get_head(&id).unwrap(), Some(n2h));
    // not a version node at all: no head
    let plain = person("jo@example.com", "Jo");
    let jo_id = sha256_hex(microdata::id_microdata(&plain).unwrap().as_bytes());
    assert_eq!(put(&[plain.clone()], &[(jo_id.clone(), hash_of(&plain))]), Vec::<[u8; 32]>::new());
    assert_eq!(st.get_head(&jo_id).unwrap(), None);
    assert!(st.verify().unwrap().is_empty());
}

/// `put_verified_batch` (the CHUM importer's commits, issue 8) is `put_verified_forward`
/// without the put results: the same entries, the same event feed (input order, each object
/// before its new ID object, a duplicate within the batch once, then the head change) and the
/// same moved heads, whatever order its sorted puts use.
#[test]
fn put_verified_batch_writes_what_put_verified_forward_writes() {
    let v1 = person("kim@example.com", "Kim");
    let id = sha256_hex(microdata::id_microdata(&v1).unwrap().as_bytes());
    let n1 = edge(&hash_of(&v1), 1);
    let others: Vec<Value> = (0..40).map(|i| person(&format!("p{i}@example.com"), &format!("P {i}"))).collect();
    // dependencies first, the hashes in no particular order, one object twice
    let mut values = others.clone();
    values.insert(7, v1.clone());
    values.push(n1.clone());
    values.push(others[3].clone());
    let texts: Vec<String> = values.iter().map(|v| microdata::serialize(v).unwrap()).collect();
    let found: Vec<_> = texts.iter().map(|t| microdata::inspect(t).unwrap()).collect();
    let items: Vec<Verified> = texts
        .iter()
        .zip(&found)
        .map(|(t, f)| Verified { text: t, hash: lama_core::hash::sha256(t.as_bytes()), type_name: &f.type_name, is_id: f.is_id, id_microdata: f.id_microdata.as_deref(), refs: Some(&f.refs) })
        .collect();
    let raw = |h: &str| lama_core::hash::Hash::parse(h).unwrap().0;
    let fw = vec![(raw(&id), raw(&hash_of(&n1)))];
    let (d1, d2) = (tmp(), tmp());
    let (s1, s2) = (Store::open(d1.path(), None).unwrap(), Store::open(d2.path(), None).unwrap());
    let (results, moved1) = s1.put_verified_forward(&items, &fw).unwrap();
    let moved2 = s2.put_verified_batch(&items, &fw, None).unwrap();
    assert_eq!(moved1, vec![raw(&id)]);
    assert_eq!(moved2, moved1);
    // the duplicate's second copy exists, everything else is new
    let statuses: Vec<&str> = results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "exists").count(), 1);
    assert_eq!(statuses.last(), Some(&"exists"));
    let e1 = s1.changes(0, 1000).unwrap();
    let e2 = s2.changes(0, 1000).unwrap();
    assert_eq!(e1, e2);
    // input order, each Person directly followed by its ID object: v1 (the 8th object) at 14
    // and 15; the edge, no second event for the duplicate, the head last
    let kinds: Vec<&str> = e2.iter().map(|e| e.kind).collect();
    assert_eq!(kinds.len(), 2 * 41 + 1 + 1);
    assert_eq!((kinds[14], kinds[15]), ("object", "id"));
    assert_eq!(e2[14].hash.to_string(), hash_of(&v1));
    assert_eq!(e2[15].hash.to_string(), id);
    assert_eq!(kinds.last(), Some(&"head"));
    assert_eq!(s2.get_head(&id).unwrap(), Some(hash_of(&n1)));
    for h in values.iter().map(hash_of) {
        assert_eq!(s2.get(&h).unwrap(), s1.get(&h).unwrap());
    }
    assert!(s2.verify().unwrap().is_empty());
}
