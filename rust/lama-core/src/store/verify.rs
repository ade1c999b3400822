//! `verify()`: re-read and check the whole store (docs/store-format.md "verify()").
//!
//! Each `objects` entry must hash (SHA-256, chunks concatenated) to its key; `O`/`I` entries
//! must parse with a registered recipe and be an object resp. ID object; each chunked entry
//! must have all its chunks (full-size except the last, sizes adding up); each `vheads` value
//! must be a stored version node; each `rmaps` entry's referencing hash must be stored.

use sha2::{Digest, Sha256};

use super::blob::Utf8Check;
use super::keys::{chunk_key, parse_chunked};
use super::{Store, CHUNK, K_BLOB, K_BLOB_CHUNKED, K_CLOB, K_CLOB_CHUNKED, K_ID, K_OBJECT};
use crate::error::Result;
use crate::microdata;

impl Store {
    /// The problems found (empty = clean). Every message names the hash concerned.
    pub fn verify(&self) -> Result<Vec<String>> {
        let dbs = self.dbs();
        let txn = self.read_txn()?;
        let mut problems = Vec::new();

        for item in dbs.objects.iter(&txn)? {
            let (key, value) = item?;
            let Ok(h) = <[u8; 32]>::try_from(key) else {
                problems.push(format!("objects: key {} is not a 32-byte hash", hex::encode(key)));
                continue;
            };
            let hx = hex::encode(h);
            let Some((&kind, payload)) = value.split_first() else {
                problems.push(format!("objects {hx}: empty value"));
                continue;
            };
            match kind {
                K_OBJECT | K_ID | K_CLOB | K_BLOB => {
                    let actual: [u8; 32] = Sha256::digest(payload).into();
                    if actual != h {
                        problems.push(format!("objects {hx}: content hashes to {}", hex::encode(actual)));
                        continue;
                    }
                    if kind == K_BLOB {
                        continue;
                    }
                    let Ok(text) = std::str::from_utf8(payload) else {
                        problems.push(format!("objects {hx}: text is not UTF-8"));
                        continue;
                    };
                    if kind == K_CLOB {
                        if text.is_empty() {
                            problems.push(format!("objects {hx}: empty CLOB"));
                        }
                        continue;
                    }
                    match microdata::type_of(text) {
                        Err(e) => problems.push(format!("objects {hx}: not ONE microdata: {e}")),
                        Ok((_, is_id)) if is_id != (kind == K_ID) => problems.push(format!(
                            "objects {hx}: stored as {} but the microdata is {}",
                            if kind == K_ID { "an ID object" } else { "an object" },
                            if is_id { "an ID object" } else { "an object" },
                        )),
                        Ok(_) => {
                            if let Err(e) = microdata::parse(text) {
                                problems.push(format!("objects {hx}: does not parse: {e}"));
                            }
                        }
                    }
                }
                K_CLOB_CHUNKED | K_BLOB_CHUNKED => {
                    let Some((size, count)) = parse_chunked(payload) else {
                        problems.push(format!("objects {hx}: bad chunked header"));
                        continue;
                    };
                    let mut hasher = Sha256::new();
                    let mut utf8 = Utf8Check::default();
                    let mut utf8_ok = true;
                    let mut total = 0u64;
                    let mut ok = true;
                    for i in 0..count {
                        match dbs.chunks.get(&txn, &chunk_key(&h, i))? {
                            None => {
                                problems.push(format!("objects {hx}: chunk {i} of {count} is missing"));
                                ok = false;
                                break;
                            }
                            Some(c) => {
                                if (i + 1 < count && c.len() != CHUNK) || c.is_empty() || c.len() > CHUNK {
                                    problems.push(format!("objects {hx}: chunk {i} has size {}", c.len()));
                                    ok = false;
                                }
                                hasher.update(c);
                                total += c.len() as u64;
                                if kind == K_CLOB_CHUNKED {
                                    utf8_ok &= utf8.feed(c);
                                }
                            }
                        }
                    }
                    if !ok {
                        continue;
                    }
                    if total != size {
                        problems.push(format!("objects {hx}: chunks hold {total} bytes, header says {size}"));
                    }
                    let actual: [u8; 32] = hasher.finalize().into();
                    if actual != h {
                        problems.push(format!("objects {hx}: content hashes to {}", hex::encode(actual)));
                    } else if kind == K_CLOB_CHUNKED && !(utf8_ok && utf8.complete()) {
                        problems.push(format!("objects {hx}: CLOB is not UTF-8"));
                    }
                }
                other => problems.push(format!("objects {hx}: unknown kind byte 0x{other:02x}")),
            }
        }

        for item in dbs.vheads.iter(&txn)? {
            let (key, value) = item?;
            let id = hex::encode(key);
            if key.len() != 32 || value.len() != 32 {
                problems.push(format!("vheads {id}: bad key or value length"));
                continue;
            }
            let head = hex::encode(value);
            match dbs.objects.get(&txn, value)? {
                Some([K_OBJECT, rest @ ..]) => {
                    let is_node = std::str::from_utf8(rest)
                        .ok()
                        .and_then(|t| microdata::type_of(t).ok())
                        .is_some_and(|(t, is_id)| !is_id && t.starts_with("VersionNode"));
                    if !is_node {
                        problems.push(format!("vheads {id}: head {head} is not a version node"));
                    }
                }
                _ => problems.push(format!("vheads {id}: head {head} is not stored")),
            }
        }

        for item in dbs.rmaps.iter(&txn)? {
            let (key, _) = item?;
            let well_formed = key.len() >= 32 + 1 + 1 + 1 + 32
                && matches!(key[32], b'O' | b'I')
                && key[key.len() - 33] == 0;
            if !well_formed {
                problems.push(format!("rmaps: malformed key {}", hex::encode(key)));
                continue;
            }
            let referrer = &key[key.len() - 32..];
            if dbs.objects.get(&txn, referrer)?.is_none() {
                problems.push(format!(
                    "rmaps {}: referencing {} is not stored",
                    hex::encode(&key[..32]),
                    hex::encode(referrer)
                ));
            }
        }
        Ok(problems)
    }
}
