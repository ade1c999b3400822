//! ONE objects and ID objects in the store, version heads, atomic batches
//! (objects.md §2.1-§2.2, §2.4, §4.1, §5.2-§5.3, §9.23).
//!
//! Every call works in two phases: first all objects are serialized/parsed and hashed without
//! holding the LMDB write lock, then one write transaction stores them. Any error aborts that
//! transaction, so a batch is written whole or not at all.

use std::borrow::Cow;

use heed::{PutFlags, RwTxn};

use super::blob::hash_mismatch;
use super::feed::{FeedTxn, K_HEAD};
use super::pending::{PendingCommit, GRANT_TYPES};
use super::keys::rmap_key;
use super::rmaps::{RmapConfig, MAP_ID, MAP_OBJECT};
use super::{parse_hash, Status, Store, K_ID, K_OBJECT};
use crate::error::{Error, ErrorKind, Result};
use crate::hash::{hash_bytes, hash_hex, sha256, Hash};
use crate::microdata::{self, HashRef, Value};

/// Result of storing one object: `(hash, status, id hash of a versioned object)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub hash: String,
    pub status: Status,
    pub id_hash: Option<String>,
}

/// One object ready to be written: its microdata, hash, type, and optionally its ID object.
/// Type name and text borrow from the input where they can (no copies on the put path).
struct Prepared<'a> {
    kind: u8,
    type_name: Cow<'a, str>,
    text: Cow<'a, str>,
    hash: [u8; 32],
    id: Option<(String, [u8; 32])>,
    /// The object's references when the caller has them (`put_verified`): the reverse maps
    /// need no second parse.
    refs: Option<&'a [HashRef]>,
}

/// Serialize and hash `objs` (objects.md §2.1, §2.2).
fn prepare_values(objs: &[Value]) -> Result<Vec<Prepared<'_>>> {
    objs.iter()
        .map(|obj| {
            let (text, id_text) = microdata::serialize_with_id(obj)?;
            // lone surrogates are stored and hashed as U+FFFD, like Node.js (objects.md §2.1)
            let text = utf8_owned(text);
            // serialize succeeded, so the value is a dict with a string `$type$`.
            let type_name = Cow::Borrowed(obj.get("$type$").and_then(Value::as_str).unwrap_or_default());
            let hash = sha256(text.as_bytes());
            let id = id_text.map(|t| {
                let t = utf8_owned(t);
                let h = sha256(t.as_bytes());
                (t, h)
            });
            Ok(Prepared { kind: K_OBJECT, type_name, text: Cow::Owned(text), hash, id, refs: None })
        })
        .collect()
}

/// An unversioned object serialised by the caller: `text` its microdata as stored (Node.js's
/// UTF-8: [`microdata::js_utf8`] of [`microdata::serialize`]), `hash` = SHA-256 of `text`,
/// `type_name` its `$type$` (see [`Store::write_batch_serialized`]). Built by [`Serialized::of`].
#[derive(Clone, Debug)]
pub struct Serialized {
    text: String,
    hash: [u8; 32],
    type_name: String,
}

impl Serialized {
    /// Serialise and hash `obj` (an unversioned object: the microdata without an ID part).
    pub fn of(obj: &Value) -> Result<Serialized> {
        let (text, id_text) = microdata::serialize_with_id(obj)?;
        if id_text.is_some() {
            return Err(Error::store("LAMA-ARG", "a serialised batch item must be an unversioned object"));
        }
        let text = utf8_owned(text);
        let type_name = obj.get("$type$").and_then(Value::as_str).unwrap_or_default().to_owned();
        let hash = sha256(text.as_bytes());
        Ok(Serialized { text, hash, type_name })
    }

    /// The SHA-256 of the stored microdata (the object's hash).
    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// The UTF-8 Node.js writes for a core string (lone surrogates as U+FFFD; microdata/text.rs).
fn utf8_owned(s: String) -> String {
    match microdata::js_utf8(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(t) => t,
    }
}

/// One item of [`Store::put_verified`]: received microdata, its SHA-256, and what
/// [`microdata::inspect`] found in it.
#[derive(Clone, Copy, Debug)]
pub struct Verified<'a> {
    pub text: &'a str,
    pub hash: [u8; 32],
    pub type_name: &'a str,
    pub is_id: bool,
    /// A versioned object's ID microdata (stored beside it, objects.md §2.2).
    pub id_microdata: Option<&'a str>,
    /// Its references as `inspect` found them, for the reverse maps (objects.md §5.3); `None`:
    /// the store parses the text for them when its type has reverse maps.
    pub refs: Option<&'a [HashRef]>,
}

/// The types a version head may point at.
use super::VERSION_NODE_TYPES;

impl Store {
    /// Write one object or ID object text under `h` unless present; reverse maps for a new
    /// entry of a type with enabled maps (objects.md §5.3).
    fn store_text(
        &self,
        txn: &mut RwTxn,
        cfg: &RmapConfig,
        kind: u8,
        type_name: &str,
        h: &[u8; 32],
        text: &str,
        refs: Option<&[HashRef]>,
    ) -> Result<Status> {
        let dbs = self.dbs();
        // One B-tree descent: NO_OVERWRITE fails with KEYEXIST for a present entry (write-once,
        // docs/store-format.md "Write rules") instead of a lookup followed by a put.
        // MDB_RESERVE: the entry is written in place (no value buffer to build and copy)
        let existed = dbs
            .objects
            .get_or_put_reserved_with_flags(txn, PutFlags::empty(), h, text.len() + 1, |space| {
                use std::io::Write;
                space.write_all(&[kind])?;
                space.write_all(text.as_bytes())
            })?
            .is_some();
        if existed {
            return Ok(Status::Exists);
        }
        let map_kind = if kind == K_ID { MAP_ID } else { MAP_OBJECT };
        if let Some(props) = cfg.props(map_kind, type_name) {
            if let Some(refs) = refs {
                for r in refs.iter().filter(|r| props.matches(&r.path)) {
                    dbs.rmaps.put(txn, &rmap_key(&r.hash, map_kind, type_name, h), &[])?;
                }
                return Ok(Status::New);
            }
            for r in microdata::references(text)? {
                if !props.matches(&r.path) {
                    continue;
                }
                let target = hash_bytes(&r.hash).ok_or_else(|| {
                    Error::new(ErrorKind::Internal, "LAMA-BUG", format!("reference {:?} is not a hash", r.hash))
                })?;
                dbs.rmaps.put(txn, &rmap_key(&target, map_kind, type_name, h), &[])?;
            }
        }
        Ok(Status::New)
    }

    /// Store prepared objects (and their ID objects) inside `txn`; every new entry is appended
    /// to the event feed in the same transaction (feed.rs).
    fn store_prepared(&self, txn: &mut RwTxn, feed: &mut FeedTxn, items: &[Prepared]) -> Result<Vec<PutResult>> {
        let statuses = self.store_prepared_statuses(txn, feed, items)?;
        Ok(items
            .iter()
            .zip(statuses)
            .map(|(p, status)| PutResult {
                hash: hash_hex(&p.hash),
                status,
                id_hash: p.id.as_ref().map(|(_, h)| hash_hex(h)),
            })
            .collect())
    }

    /// [`store_prepared`](Self::store_prepared) with each item's status only (in input order):
    /// the CHUM importer's batches need no hex strings (issue 8).
    fn store_prepared_statuses(&self, txn: &mut RwTxn, feed: &mut FeedTxn, items: &[Prepared]) -> Result<Vec<Status>> {
        let cfg = self.rmap_config(txn)?;
        // Insert in key order: neighbouring inserts then touch the same B-tree pages, which
        // makes large batches markedly faster. Results keep the input order; of duplicates
        // within a batch the first one (the smaller index) is `new`. The keys are sorted as
        // they are, beside their index (a sort of indices comparing `items[i].hash` read two
        // items per comparison: 5 % of the commit thread, issue 8 session 14).
        let mut order: Vec<([u8; 32], u32)> = items.iter().enumerate().map(|(i, p)| (p.hash, i as u32)).collect();
        order.sort_unstable();
        let mut statuses = vec![Status::Exists; items.len()];
        for &(_, i) in &order {
            let i = i as usize;
            let p = &items[i];
            statuses[i] = self.store_text(txn, &cfg, p.kind, &p.type_name, &p.hash, &p.text, p.refs)?;
        }
        let mut ids: Vec<(usize, &(String, [u8; 32]))> =
            items.iter().enumerate().filter_map(|(i, p)| p.id.as_ref().map(|id| (i, id))).collect();
        // stable: of equal ID hashes the first in input order is the `new` one (feed order)
        ids.sort_by(|a, b| a.1 .1.cmp(&b.1 .1));
        let mut id_new = vec![false; items.len()];
        for (i, (id_text, id_h)) in ids {
            // an ID object's references are the ID properties' (§2.2): parsed when mapped
            id_new[i] = self.store_text(txn, &cfg, K_ID, &items[i].type_name, id_h, id_text, None)? == Status::New;
        }
        // Feed order is input order, each object before its ID object (docs/store-format.md
        // "events"), whatever order the puts above used; the pure core writes the same order.
        let mut events = Vec::with_capacity(items.len());
        for (i, p) in items.iter().enumerate() {
            // with the type (the ID object's is its object's), for this process's type memo
            if statuses[i] == Status::New {
                events.push((&p.hash, p.kind, Some(&*p.type_name)));
            }
            if let (true, Some((_, id_h))) = (id_new[i], &p.id) {
                events.push((id_h, K_ID, Some(&*p.type_name)));
            }
        }
        feed.push_all(&self.dbs(), txn, &events)?;
        Ok(statuses)
    }

    /// Serialize, hash and store `objs`; for a versioned type also its ID object. One
    /// transaction; no version nodes or heads are written.
    pub fn put_objects(&self, objs: &[Value]) -> Result<Vec<PutResult>> {
        let items = prepare_values(objs)?;
        let mut txn = self.write_txn()?;
        let mut feed = FeedTxn::new();
        let out = self.store_prepared(&mut txn, &mut feed, &items)?;
        txn.commit()?;
        self.published(&feed);
        Ok(out)
    }

    /// Store received microdata verbatim (objects.md §9.23): each `(text, expected hash)` is
    /// hash-checked (`LAMA-HASH`) and fully parsed before anything is written. An ID object text
    /// is stored as an ID object; a versioned object also gets its ID object (§2.2 alternative).
    pub fn put_microdata(&self, items: &[(String, Option<String>)]) -> Result<Vec<PutResult>> {
        let mut prepared = Vec::with_capacity(items.len());
        for (text, expected) in items {
            // stored and hashed as Node.js writes it (lone surrogates as U+FFFD, objects.md §2.1)
            let stored = microdata::js_utf8(text);
            let hash = sha256(stored.as_bytes());
            if let Some(e) = expected {
                if parse_hash("expected hash", e)? != hash {
                    return Err(hash_mismatch(e, &hex::encode(hash)));
                }
            }
            let (type_name, is_id) = microdata::type_of(text)?;
            // Both calls parse (validate) the whole text with the registered recipe, whatever
            // its type (received microdata is never stored unchecked, objects.md §9.23).
            let id = if is_id {
                microdata::parse(text)?;
                None
            } else {
                match microdata::id_microdata_of(text)? {
                    Some(t) => {
                        let t = utf8_owned(t);
                        let h = sha256(t.as_bytes());
                        Some((t, h))
                    }
                    // an unversioned type: id_microdata_of read the header only
                    None => {
                        microdata::parse(text)?;
                        None
                    }
                }
            };
            prepared.push(Prepared {
                kind: if is_id { K_ID } else { K_OBJECT },
                type_name: Cow::Owned(type_name),
                text: stored,
                hash,
                id,
                refs: None,
            });
        }
        let mut txn = self.write_txn()?;
        let mut feed = FeedTxn::new();
        let out = self.store_prepared(&mut txn, &mut feed, &prepared)?;
        txn.commit()?;
        self.published(&feed);
        Ok(out)
    }

    /// Store microdata that the caller already hash-checked and parsed with
    /// [`microdata::inspect`] (the CHUM importer's verification, chum.md §6.4): one
    /// transaction, keys in order, no second parse. Each item is a [`Verified`]. The text is still hashed as Node.js writes it when it holds encoded
    /// lone surrogates (objects.md §2.1), and a mismatch is `LAMA-HASH`.
    pub fn put_verified(&self, items: &[Verified<'_>]) -> Result<Vec<PutResult>> {
        self.put_verified_forward(items, &[]).map(|(out, _)| out)
    }

    /// Parse the object or ID object stored under `hash`.
    pub fn get_object(&self, hash: &str) -> Result<Value> {
        microdata::parse(&self.get(hash)?)
    }

    /// One transaction: store `objs` like [`put_objects`](Self::put_objects), then for each
    /// `(id_hash, expected, new_head)` compare-and-set the version head (objects.md §4.1). A
    /// head that is not `expected` is `ConflictError LAMA-CONFLICT` and nothing is written;
    /// `new_head` must be a stored object (written before or in this batch).
    pub fn write_batch(
        &self,
        objs: &[Value],
        heads: &[(String, Option<String>, String)],
    ) -> Result<Vec<PutResult>> {
        self.write_prepared(prepare_values(objs)?, heads)
    }

    /// [`write_batch`](Self::write_batch) of objects the caller serialised and hashed already
    /// (`serialized`, written first), then `objs`: the chat sender's post objects (issue 10),
    /// which `lama-py`'s `chat_posts` serialises to hash them, are not serialised a second time.
    pub fn write_batch_serialized(
        &self,
        serialized: &[&Serialized],
        objs: &[Value],
        heads: &[(String, Option<String>, String)],
    ) -> Result<Vec<PutResult>> {
        let mut items: Vec<Prepared<'_>> = serialized
            .iter()
            .map(|p| Prepared {
                kind: K_OBJECT,
                type_name: Cow::Borrowed(p.type_name.as_str()),
                text: Cow::Borrowed(p.text.as_str()),
                hash: p.hash,
                id: None,
                refs: None,
            })
            .collect();
        items.extend(prepare_values(objs)?);
        self.write_prepared(items, heads)
    }

    fn write_prepared(
        &self,
        items: Vec<Prepared<'_>>,
        heads: &[(String, Option<String>, String)],
    ) -> Result<Vec<PutResult>> {
        let mut parsed = Vec::with_capacity(heads.len());
        for (id, expected, new_head) in heads {
            let exp = match expected {
                Some(e) => Some(parse_hash("expected head", e)?.0),
                None => None,
            };
            parsed.push((parse_hash("ID hash", id)?, exp, parse_hash("new head", new_head)?));
        }
        let dbs = self.dbs();
        let mut txn = self.write_txn()?;
        let mut feed = FeedTxn::new();
        let out = self.store_prepared(&mut txn, &mut feed, &items)?;
        // pending.rs: a record for the pre-commit hooks, only when one waits and the
        // transaction writes no grant object (nor moves a grant's head, below)
        let mut speculate = self.wants_pending() && !items.iter().any(|p| GRANT_TYPES.contains(&&*p.type_name));
        let mut spec_nodes: Vec<(Hash, Hash)> = Vec::new();
        for ((id, exp, new), (id_s, _, new_s)) in parsed.iter().zip(heads) {
            let current: Option<[u8; 32]> =
                dbs.vheads.get(&txn, &id[..])?.and_then(|v| v.try_into().ok());
            if current != *exp {
                let show = |h: Option<[u8; 32]>| h.map_or("none".to_string(), hex::encode);
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "LAMA-CONFLICT",
                    format!("head of {id_s} is {}, expected {}", show(current), show(*exp)),
                ));
            }
            // A head must be a stored version node (objects.md §4.1), or verify() would flag it.
            let is_node = match dbs.objects.get(&txn, &new[..])? {
                Some([k, md @ ..]) if *k == K_OBJECT => std::str::from_utf8(md)
                    .ok()
                    .and_then(|t| crate::microdata::type_of(t).ok())
                    .is_some_and(|(t, is_id)| !is_id && VERSION_NODE_TYPES.contains(&t.as_str())),
                _ => false,
            };
            if !is_node {
                return Err(Error::store(
                    "LAMA-HEAD",
                    format!("new head {new_s} of {id_s} is not a stored version node"),
                ));
            }
            if current != Some(new.0) {
                dbs.vheads.put(&mut txn, &id[..], &new[..])?;
                feed.push(&dbs, &mut txn, id, K_HEAD)?;
                // the access index follows grant heads and granted IDs (access.rs)
                let seq = feed.last().expect("a head event was just appended");
                let moved = super::access::head_moved(&dbs, &mut txn, id, new, seq)?;
                speculate &= !moved.grant;
                spec_nodes.extend(moved.nodes.into_iter().map(|n| (*id, n)));
            }
        }
        let pending = if speculate && !spec_nodes.is_empty() {
            let mut objects = std::collections::HashMap::new();
            for (p, r) in items.iter().zip(&out) {
                if r.status == Status::New {
                    objects.insert(Hash(p.hash), (p.kind == K_ID, p.text.to_string()));
                    if let Some((t, h)) = &p.id {
                        objects.entry(Hash(*h)).or_insert_with(|| (true, t.clone()));
                    }
                }
            }
            Some(self.publish_pending(PendingCommit::new(objects, spec_nodes)))
        } else {
            None
        };
        if let Err(e) = txn.commit() {
            if let Some(p) = &pending {
                p.failed();
            }
            return Err(e.into());
        }
        if let Some(p) = &pending {
            p.committed(feed.last().unwrap_or(0));
        }
        self.published(&feed);
        Ok(out)
    }

    /// [`put_verified`](Self::put_verified), and in the same transaction the *fast-forward*
    /// of imported version nodes: for each `(id_hash, node)` of `forward`, the head of
    /// `id_hash` becomes `node` when `node` is a stored version node of that ID (its `data`'s
    /// ID hash is `id_hash`) and the ID has no head yet or the head is one of the node's
    /// parents (`prev` of a Change, one of the `nodes` of a Merge). That is exactly the case in
    /// which `lama.objects.versions.merge_node` would only move the head (objects.md §4.3), so a
    /// CHUM importer saves the separate durable commit of that move (issue 10: one fsync on
    /// every chat message's path at the receiver). Any other case is left alone (the caller's
    /// merge does it). Returns the put results and the IDs whose head moved.
    pub fn put_verified_forward(
        &self,
        items: &[Verified<'_>],
        forward: &[([u8; 32], [u8; 32])],
    ) -> Result<(Vec<PutResult>, Vec<[u8; 32]>)> {
        self.put_verified_forward_mark(items, forward, None)
    }

    /// [`put_verified_forward`](Self::put_verified_forward), and with `mark = (peer, m)` also
    /// [`set_peer_mark`](Self::set_peer_mark)`(peer, m)` in the same transaction: a CHUM
    /// importer's push pass whose last commit is known to end it cleanly writes its high-water
    /// mark with its objects, one durable commit instead of two (issue 8,
    /// docs/chum-fastpath.md "Peer mark after a push").
    pub fn put_verified_forward_mark(
        &self,
        items: &[Verified<'_>],
        forward: &[([u8; 32], [u8; 32])],
        mark: Option<(&str, u64)>,
    ) -> Result<(Vec<PutResult>, Vec<[u8; 32]>)> {
        if let Some((peer, _)) = mark {
            super::access::check_peer(peer)?;
        }
        let prepared = prepare_verified(items)?;
        let (statuses, moved) = self.commit_verified(&prepared, forward, mark)?;
        let out = prepared
            .iter()
            .zip(statuses)
            .map(|(p, status)| PutResult { hash: hash_hex(&p.hash), status, id_hash: p.id.as_ref().map(|(_, h)| hash_hex(h)) })
            .collect();
        Ok((out, moved))
    }

    /// [`put_verified_forward_mark`](Self::put_verified_forward_mark) for a caller that needs
    /// no put results (the CHUM importer's batches, issue 8: two hex strings per object built
    /// and dropped): the same transaction; returns the IDs whose head moved.
    pub fn put_verified_batch(
        &self,
        items: &[Verified<'_>],
        forward: &[([u8; 32], [u8; 32])],
        mark: Option<(&str, u64)>,
    ) -> Result<Vec<[u8; 32]>> {
        if let Some((peer, _)) = mark {
            super::access::check_peer(peer)?;
        }
        let prepared = prepare_verified(items)?;
        Ok(self.commit_verified(&prepared, forward, mark)?.1)
    }

    fn commit_verified(
        &self,
        prepared: &[Prepared<'_>],
        forward: &[([u8; 32], [u8; 32])],
        mark: Option<(&str, u64)>,
    ) -> Result<(Vec<Status>, Vec<[u8; 32]>)> {
        let mut t = self.begin_verified()?;
        let r = t.put_prepared(prepared, forward, mark)?;
        t.commit()?;
        Ok(r)
    }

    /// A write transaction that takes several [`put_verified_batch`](Self::put_verified_batch)
    /// calls and commits them as one (the CHUM importer's commit thread, issue 8: it puts each
    /// batch as it arrives and commits every ~100 ms, so the B-tree pages that random keys
    /// touch are copied and written once per commit, not once per batch). It holds LMDB's
    /// writer lock until it is committed or dropped (dropping aborts it, nothing is written).
    /// After an error from [`VerifiedTxn::put`] drop it: nothing of it is committed.
    pub fn begin_verified(&self) -> Result<VerifiedTxn<'_>> {
        Ok(VerifiedTxn { store: self, txn: self.write_txn()?, feed: FeedTxn::new() })
    }
}

/// See [`Store::begin_verified`].
pub struct VerifiedTxn<'s> {
    store: &'s Store,
    txn: super::WriteTxn<'s>,
    feed: FeedTxn,
}

impl VerifiedTxn<'_> {
    /// [`Store::put_verified_batch`] into this transaction: returns the IDs whose head moved.
    pub fn put(&mut self, items: &[Verified<'_>], forward: &[([u8; 32], [u8; 32])], mark: Option<(&str, u64)>) -> Result<Vec<[u8; 32]>> {
        if let Some((peer, _)) = mark {
            super::access::check_peer(peer)?;
        }
        let prepared = prepare_verified(items)?;
        Ok(self.put_prepared(&prepared, forward, mark)?.1)
    }

    fn put_prepared(
        &mut self,
        prepared: &[Prepared<'_>],
        forward: &[([u8; 32], [u8; 32])],
        mark: Option<(&str, u64)>,
    ) -> Result<(Vec<Status>, Vec<[u8; 32]>)> {
        let dbs = self.store.dbs();
        let (txn, feed) = (&mut self.txn, &mut self.feed);
        let out = self.store.store_prepared_statuses(txn, feed, prepared)?;
        let mut moved = Vec::new();
        for (id, node) in forward {
            let current: Option<[u8; 32]> =
                dbs.vheads.get(txn, &id[..])?.and_then(|v| v.try_into().ok());
            if current == Some(*node) || !fast_forwards(&dbs, txn, id, node, current)? {
                continue;
            }
            dbs.vheads.put(txn, &id[..], &node[..])?;
            feed.push(&dbs, txn, id, K_HEAD)?;
            let seq = feed.last().expect("a head event was just appended");
            super::access::head_moved(&dbs, txn, id, node, seq)?;
            moved.push(*id);
        }
        if let Some((peer, m)) = mark {
            dbs.peers.put(txn, peer.as_bytes(), &m.to_be_bytes())?;
        }
        Ok((out, moved))
    }

    /// Commit everything put (one fsync on a durable store), then wake the store's
    /// subscribers.
    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        self.store.published(&self.feed);
        Ok(())
    }
}

/// [`Verified`] items as the store writes them: the text as Node.js writes it (objects.md
/// §2.1; a lone surrogate changes the bytes, and then the hash is checked again,
/// `LAMA-HASH`), the ID object's text and hash, the references the caller already has.
fn prepare_verified<'a>(items: &'a [Verified<'a>]) -> Result<Vec<Prepared<'a>>> {
    let mut prepared = Vec::with_capacity(items.len());
    for Verified { text, hash, type_name, is_id, id_microdata, refs } in items {
        let stored = microdata::js_utf8(text);
        if let Cow::Owned(t) = &stored {
            let h = sha256(t.as_bytes());
            if h != *hash {
                return Err(hash_mismatch(&hex::encode(hash), &hex::encode(h)));
            }
        }
        let id = id_microdata.map(|t| {
            let t = microdata::js_utf8(t);
            let h = sha256(t.as_bytes());
            (t.into_owned(), h)
        });
        prepared.push(Prepared {
            kind: if *is_id { K_ID } else { K_OBJECT },
            type_name: Cow::Borrowed(type_name),
            text: stored,
            hash: *hash,
            id,
            refs: *refs,
        });
    }
    Ok(prepared)
}

/// True if `node` is a stored version node of `id` whose parents include `head` (or `head` is
/// `None`): moving the head of `id` to it is a fast-forward. Anything unreadable is `false`.
fn fast_forwards(dbs: &super::Dbs, txn: &RwTxn, id: &[u8; 32], node: &[u8; 32], head: Option<[u8; 32]>) -> Result<bool> {
    let text = |h: &[u8; 32]| -> Result<Option<String>> {
        Ok(match dbs.objects.get(txn, &h[..])? {
            Some([k, md @ ..]) if *k == K_OBJECT => std::str::from_utf8(md).ok().map(str::to_owned),
            _ => None,
        })
    };
    let Some(node_text) = text(node)? else { return Ok(false) };
    match microdata::type_of(&node_text) {
        Ok((t, false)) if VERSION_NODE_TYPES.contains(&t.as_str()) => {}
        _ => return Ok(false),
    }
    let Ok(refs) = microdata::references(&node_text) else { return Ok(false) };
    let mut data = None;
    let mut parent = head.is_none();
    for r in &refs {
        if r.kind != microdata::RefKind::Obj {
            continue;
        }
        if r.path == "data" {
            data = crate::hash::Hash::parse(&r.hash).map(|h| h.0);
        } else if (r.path == "prev" || r.path.starts_with("nodes.")) && head.is_some_and(|h| hex::encode(h) == r.hash) {
            parent = true;
        }
    }
    if !parent {
        return Ok(false);
    }
    // the node must belong to `id`: its data's ID hash (a peer's roots list only claims it)
    let Some(data_text) = data.map(|d| text(&d)).transpose()?.flatten() else { return Ok(false) };
    Ok(matches!(microdata::id_microdata_of(&data_text), Ok(Some(idm)) if sha256(idm.as_bytes()) == *id))
}
