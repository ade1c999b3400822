//! `verify()`: re-read and check the whole store (docs/store-format.md "verify()").
//!
//! One check per table, in this order, each reporting in key order: the structural check of
//! the LMDB file (check.rs; if it finds damage nothing else is read, since LMDB could crash
//! on it), then `objects`, `chunks`, `vheads`, `rmaps`. The messages are the pure core's,
//! word for word (lama/_pure/store.py), so both cores report the same list for the same file.

use sha2::{Digest, Sha256};

use super::blob::Utf8Check;
use super::keys::{chunk_key, parse_chunked};
use super::{Dbs, Store, CHUNK, K_BLOB, K_BLOB_CHUNKED, K_CLOB, K_CLOB_CHUNKED, K_ID, K_OBJECT};
use crate::error::Result;
use crate::microdata;

type Txn<'e> = heed::RoTxn<'e, heed::WithoutTls>;

/// Version node types (objects.md §4.1): what a `vheads` value must point to.
use super::VERSION_NODE_TYPES;

impl Store {
    /// The problems found (empty = clean). Every message names the table and key concerned.
    pub fn verify(&self) -> Result<Vec<String>> {
        let txn = match self.checked_read_txn()? {
            Ok(txn) => txn,
            Err(problem) => return Ok(vec![problem]),
        };
        let dbs = self.dbs();
        let mut problems = Vec::new();
        check_objects(&dbs, &txn, &mut problems)?;
        check_chunks(&dbs, &txn, &mut problems)?;
        check_vheads(&dbs, &txn, &mut problems)?;
        check_rmaps(&dbs, &txn, &mut problems)?;
        check_events(&dbs, &txn, &mut problems)?;
        super::access::check_index(&dbs, &txn, &mut problems)?;
        Ok(problems)
    }
}

/// The microdata check of an `O`/`I` entry: None if fine.
fn check_microdata(text: &str, kind: u8) -> Option<String> {
    match microdata::type_of(text) {
        Err(e) => Some(format!("not ONE microdata ({})", e.code)),
        Ok((_, is_id)) if is_id != (kind == K_ID) => Some(format!(
            "stored as {} but the microdata is {}",
            if kind == K_ID { "an ID object" } else { "an object" },
            if is_id { "an ID object" } else { "an object" },
        )),
        Ok(_) => microdata::parse(text).err().map(|e| format!("not ONE microdata ({})", e.code)),
    }
}

/// The problem of one `objects` entry, if any.
fn check_entry(dbs: &Dbs, txn: &Txn, h: &[u8; 32], value: &[u8]) -> Result<Option<String>> {
    let Some((&kind, payload)) = value.split_first() else { return Ok(Some("empty value".into())) };
    match kind {
        K_OBJECT | K_ID | K_CLOB | K_BLOB => {
            let actual: [u8; 32] = Sha256::digest(payload).into();
            if actual != *h {
                return Ok(Some(format!("content hashes to {}", hex::encode(actual))));
            }
            if (kind == K_CLOB || kind == K_BLOB) && payload.len() > CHUNK {
                return Ok(Some(format!("inline content of {} bytes (more than {CHUNK})", payload.len())));
            }
            if kind == K_BLOB {
                return Ok(None);
            }
            let Ok(text) = std::str::from_utf8(payload) else { return Ok(Some("text is not UTF-8".into())) };
            if kind == K_CLOB {
                return Ok(text.is_empty().then(|| "empty CLOB".into()));
            }
            Ok(check_microdata(text, kind))
        }
        K_CLOB_CHUNKED | K_BLOB_CHUNKED => {
            let Some((size, count)) = parse_chunked(payload) else {
                return Ok(Some("bad chunked header".into()));
            };
            if size <= CHUNK as u64 || size.div_ceil(CHUNK as u64) != count as u64 {
                return Ok(Some(format!("chunked header says {size} bytes in {count} chunks")));
            }
            let mut hasher = Sha256::new();
            let mut utf8 = Utf8Check::default();
            let mut utf8_ok = true;
            for i in 0..count {
                let Some(c) = dbs.chunks.get(txn, &chunk_key(h, i))? else {
                    return Ok(Some(format!("chunk {i} of {count} is missing")));
                };
                let expected = if i + 1 < count { CHUNK as u64 } else { size - (count as u64 - 1) * CHUNK as u64 };
                if c.len() as u64 != expected {
                    return Ok(Some(format!("chunk {i} has {} bytes, expected {expected}", c.len())));
                }
                hasher.update(c);
                if kind == K_CLOB_CHUNKED && utf8_ok {
                    utf8_ok = utf8.feed(c);
                }
            }
            let actual: [u8; 32] = hasher.finalize().into();
            if actual != *h {
                return Ok(Some(format!("content hashes to {}", hex::encode(actual))));
            }
            if kind == K_CLOB_CHUNKED && !(utf8_ok && utf8.complete()) {
                return Ok(Some("text is not UTF-8".into()));
            }
            Ok(None)
        }
        other => Ok(Some(format!("unknown kind byte 0x{other:02x}"))),
    }
}

/// `objects`: each value hashes to its key and is well formed for its kind.
fn check_objects(dbs: &Dbs, txn: &Txn, problems: &mut Vec<String>) -> Result<()> {
    for item in dbs.objects.iter(txn)? {
        let (key, value) = item?;
        let Ok(h) = <[u8; 32]>::try_from(key) else {
            problems.push(format!("objects/{}: key is not a 32-byte hash", hex::encode(key)));
            continue;
        };
        if let Some(p) = check_entry(dbs, txn, &h, value)? {
            problems.push(format!("objects/{}: {p}", hex::encode(h)));
        }
    }
    Ok(())
}

/// `chunks`: each chunk belongs to a chunked `objects` entry (index below its count).
fn check_chunks(dbs: &Dbs, txn: &Txn, problems: &mut Vec<String>) -> Result<()> {
    for item in dbs.chunks.iter(txn)? {
        let (key, _) = item?;
        let owned = key.len() == 36
            && match dbs.objects.get(txn, &key[..32])? {
                Some([K_BLOB_CHUNKED | K_CLOB_CHUNKED, rest @ ..]) => parse_chunked(rest)
                    .is_some_and(|(_, count)| u32::from_be_bytes(key[32..].try_into().unwrap()) < count),
                _ => false,
            };
        if !owned {
            problems.push(format!("chunks/{}: chunk of no chunked BLOB/CLOB", hex::encode(key)));
        }
    }
    Ok(())
}

/// `vheads`: each value is a stored version node (objects.md §4.1).
fn check_vheads(dbs: &Dbs, txn: &Txn, problems: &mut Vec<String>) -> Result<()> {
    for item in dbs.vheads.iter(txn)? {
        let (key, value) = item?;
        if key.len() != 32 || value.len() != 32 {
            problems.push(format!("vheads/{}: malformed entry", hex::encode(key)));
            continue;
        }
        let is_node = match dbs.objects.get(txn, value)? {
            Some([K_OBJECT, rest @ ..]) => std::str::from_utf8(rest)
                .ok()
                .and_then(|t| microdata::type_of(t).ok())
                .is_some_and(|(t, is_id)| !is_id && VERSION_NODE_TYPES.contains(&t.as_str())),
            _ => false,
        };
        if !is_node {
            problems.push(format!(
                "vheads/{}: head {} is not a stored version node",
                hex::encode(key),
                hex::encode(value)
            ));
        }
    }
    Ok(())
}

/// `rmaps`: each key is `target ‖ O|I ‖ type ‖ 0 ‖ referrer` and the referrer is stored.
fn check_rmaps(dbs: &Dbs, txn: &Txn, problems: &mut Vec<String>) -> Result<()> {
    for item in dbs.rmaps.iter(txn)? {
        let (key, _) = item?;
        let n = key.len();
        let well_formed = n >= 32 + 1 + 1 + 1 + 32
            && matches!(key[32], b'O' | b'I')
            && key[n - 33] == 0
            && std::str::from_utf8(&key[33..n - 33]).is_ok_and(|t| !t.contains('\0'));
        if !well_formed {
            problems.push(format!("rmaps/{}: malformed key", hex::encode(key)));
            continue;
        }
        let referrer = &key[n - 32..];
        if dbs.objects.get(txn, referrer)?.is_none() {
            problems.push(format!(
                "rmaps/{}: referencing {} is not stored",
                hex::encode(key),
                hex::encode(referrer)
            ));
        }
    }
    Ok(())
}

/// `events` (docs/store-format.md "events"): keys are the sequence numbers 1, 2, 3, ... without
/// a gap (each is written in the transaction of the write it records, so a crash cannot leave
/// one); each value is `hash ‖ kind` with a known kind; an object event names a stored entry and
/// a head event an ID that has a head (nothing is ever deleted).
fn check_events(dbs: &Dbs, txn: &Txn, problems: &mut Vec<String>) -> Result<()> {
    let mut expected: u64 = 1;
    for item in dbs.events.iter(txn)? {
        let (key, value) = item?;
        let k = hex::encode(key);
        let Ok(seq) = <[u8; 8]>::try_from(key).map(u64::from_be_bytes) else {
            problems.push(format!("events/{k}: malformed entry"));
            continue;
        };
        if seq != expected {
            problems.push(format!("events/{k}: sequence number {seq} where {expected} was expected"));
        }
        expected = seq.saturating_add(1);
        if value.len() != 33 {
            problems.push(format!("events/{k}: malformed entry"));
            continue;
        }
        let (h, kind) = (&value[..32], value[32]);
        let present = match kind {
            K_OBJECT | K_ID | K_CLOB | K_BLOB => dbs.objects.get(txn, h)?.is_some(),
            super::feed::K_HEAD => dbs.vheads.get(txn, h)?.is_some(),
            _ => {
                problems.push(format!("events/{k}: malformed entry"));
                continue;
            }
        };
        if !present {
            let what = if kind == super::feed::K_HEAD { "has no head" } else { "is not stored" };
            problems.push(format!("events/{k}: {} {what}", hex::encode(h)));
        }
    }
    Ok(())
}
