//! Reads for the sync layer (project issue 6): read snapshots, `missing`, `children` (chum.md
//! §5.3, objects.md §6.4) and `version_nodes` (objects.md §4.1).
//!
//! Every function here works inside one read transaction, given as a `&RoTxn`: a [`Store`]
//! method opens a short one per call, a [`Snapshot`] keeps one open across calls, so the
//! snapshot's answers all come from the same committed state.

use std::collections::HashSet;
use std::ops::Bound;

/// The closure walks' sets of the hashes they met: references inside this store's own
/// entries, looked up once per reference. A randomly seeded foldhash (as the CHUM layer's
/// other hash sets) instead of std's SipHash, which was about a sixth of the walk's own
/// work in the initial sync (issue 8, session 14 profile).
type Met = HashSet<Hash, foldhash::fast::RandomState>;

use heed::{RoTxn, WithoutTls};

use super::feed::{changes_in, last_seq_in, Event};
use super::keys::{chunk_key, parse_chunked};
use super::{
    not_found, parse_hash, EntryKind, Store, K_BLOB, K_BLOB_CHUNKED, K_CLOB, K_CLOB_CHUNKED, K_ID, K_OBJECT,
};
use crate::error::{Error, Result};
use crate::hash::Hash;
use crate::microdata::{self, RefKind, Value};

/// The version-node types (objects.md §3 items 9-11).
use super::VERSION_NODE_TYPES;

fn corrupt(h: &Hash, what: &str) -> Error {
    Error::store("LAMA-CORRUPT", format!("entry {h} {what}"))
}

impl Store {
    /// Microdata stored under `h` if it is an object (`K_OBJECT`) or ID object (`K_ID`), as
    /// `want` says; `SB-READ2` if absent or of another kind.
    fn text_in<'t>(&self, txn: &'t RoTxn, h: &Hash, want: u8) -> Result<&'t str> {
        match self.entry(txn, h)? {
            Some([k, rest @ ..]) if *k == want => {
                std::str::from_utf8(rest).map_err(|_| corrupt(h, "is not UTF-8"))
            }
            Some(_) | None => Err(not_found(
                &h.to_string(),
                if want == K_ID { "ID object" } else { "object" },
            )),
        }
    }

    pub(crate) fn get_in(&self, txn: &RoTxn, hash: &str) -> Result<String> {
        let h = parse_hash("hash", hash)?;
        match self.entry(txn, &h)? {
            Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => {
                String::from_utf8(rest.to_vec()).map_err(|_| corrupt(&h, "is not UTF-8"))
            }
            Some(v) => Err(Error::not_found(
                "SB-READ2",
                format!(
                    "{hash} is a {}, not an object",
                    v.first().and_then(|b| EntryKind::from_byte(*b)).map_or("corrupt entry", |k| k.as_str())
                ),
            )),
            None => Err(not_found(hash, "object")),
        }
    }

    pub(crate) fn kind_in(&self, txn: &RoTxn, hash: &str) -> Result<Option<EntryKind>> {
        let h = parse_hash("hash", hash)?;
        match self.entry(txn, &h)? {
            None => Ok(None),
            Some(v) => match v.first().and_then(|b| EntryKind::from_byte(*b)) {
                Some(k) => Ok(Some(k)),
                None => Err(corrupt(&h, "has an unknown kind byte")),
            },
        }
    }

    pub(crate) fn get_head_in(&self, txn: &RoTxn, id_hash: &str) -> Result<Option<Hash>> {
        let h = parse_hash("ID hash", id_hash)?;
        match self.dbs().vheads.get(txn, &h[..])? {
            None => Ok(None),
            Some(v) => Hash::from_slice(v).map(Some).ok_or_else(|| corrupt(&h, "has a malformed head")),
        }
    }

    pub(crate) fn read_blob_in(&self, txn: &RoTxn, hash: &str) -> Result<Vec<u8>> {
        let h = parse_hash("hash", hash)?;
        match self.entry(txn, &h)? {
            None => Err(not_found(hash, "BLOB/CLOB")),
            Some([k, rest @ ..]) if *k == K_BLOB || *k == K_CLOB => Ok(rest.to_vec()),
            Some([k, rest @ ..]) if *k == K_BLOB_CHUNKED || *k == K_CLOB_CHUNKED => {
                let (size, count) = parse_chunked(rest).ok_or_else(|| corrupt(&h, "has a bad chunked header"))?;
                let mut out = Vec::with_capacity(size as usize);
                for i in 0..count {
                    let c = self
                        .dbs()
                        .chunks
                        .get(txn, &chunk_key(&h, i))?
                        .ok_or_else(|| corrupt(&h, &format!("misses chunk {i}")))?;
                    out.extend_from_slice(c);
                }
                Ok(out)
            }
            Some(_) => Err(Error::not_found("SB-READ2", format!("{hash} is not a BLOB or CLOB"))),
        }
    }

    /// The hashes of `hashes` with no `objects` entry, in input order (duplicates kept).
    ///
    /// Many hashes, dense among the store's keys (issue 8: the CHUM importer asks this for
    /// every hash a closure lists, up to 70,000 at a time, while its store grows from nothing):
    /// looked up in key order with one cursor, which steps forward from one hash to the next
    /// while the store's keys between them are few and seeks again when they are not; once it
    /// is past the store's last key, every hash left is missing without a lookup. Few or
    /// sparse hashes: one B-tree lookup each.
    pub(crate) fn missing_in(&self, txn: &RoTxn, hashes: &[Hash]) -> Result<Vec<Hash>> {
        /// Keys stepped over before seeking again.
        const STEPS: usize = 8;
        let objects = self.dbs().objects;
        // point lookups when the hashes are few, or sparse among the store's keys (on
        // average more than STEPS / 2 keys between two of them: the cursor would seek for
        // most, and a seek through a new cursor costs more than a lookup)
        if hashes.len() < 16 || objects.len(txn)? > (hashes.len() * STEPS / 2) as u64 {
            let mut out = Vec::new();
            for h in hashes {
                if objects.get(txn, &h[..])?.is_none() {
                    out.push(*h);
                }
            }
            return Ok(out);
        }
        let mut order: Vec<u32> = (0..hashes.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| hashes[a as usize].0.cmp(&hashes[b as usize].0));
        let mut absent = vec![false; hashes.len()];
        let seek = |from: &[u8]| objects.range(txn, &(Bound::Included(from), Bound::Unbounded));
        let mut iter = seek(&hashes[order[0] as usize][..])?;
        let mut cur: Option<&[u8]> = iter.next().transpose()?.map(|(k, _)| k);
        for &i in &order {
            let want = &hashes[i as usize][..];
            let mut steps = 0;
            loop {
                match cur {
                    None => {
                        absent[i as usize] = true;
                        break;
                    }
                    Some(k) if k >= want => {
                        absent[i as usize] = k != want;
                        break;
                    }
                    Some(_) if steps < STEPS => {
                        cur = iter.next().transpose()?.map(|(k, _)| k);
                        steps += 1;
                    }
                    Some(_) => {
                        iter = seek(want)?;
                        cur = iter.next().transpose()?.map(|(k, _)| k);
                    }
                }
            }
        }
        Ok(hashes.iter().zip(absent).filter(|(_, a)| *a).map(|(h, _)| *h).collect())
    }

    /// chum.md §5.3: the transitive closure of everything `root` references, without `root`,
    /// each hash once, objects and ID objects recorded after their own sub-walk (post-order,
    /// "dependencies first"), BLOBs/CLOBs when first met. References are visited in microdata
    /// order, which is recipe rule order with collections in order (objects.md §1.2, §1.7).
    /// `referenceToObj` descends into the object, `referenceToId` into the ID object (its ID
    /// properties only, never its versions); BLOB/CLOB are leaves and are not loaded. A BLOB or
    /// CLOB root has no children. A referenced object or ID object that is not stored fails the
    /// whole call with `NotFoundError SB-READ2`, as the reference exporter does (chum.md §4.3).
    pub(crate) fn children_in(&self, txn: &RoTxn, root: &Hash) -> Result<Vec<Hash>> {
        Ok(self.children_tagged_in(txn, root)?.into_iter().map(|(_, h)| h).collect())
    }

    /// [`children_in`](Self::children_in) with the kind of reference each child was first met
    /// through: the CHUM exporter needs the `object`/`id`/`blob`/`clob` tag of every entry
    /// (chum.md §4.3), and a BLOB/CLOB child need not be stored to be listed.
    pub(crate) fn children_tagged_in(&self, txn: &RoTxn, root: &Hash) -> Result<Vec<(RefKind, Hash)>> {
        let text = match self.entry(txn, root)? {
            None => return Err(not_found(&root.to_string(), "object")),
            Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => {
                std::str::from_utf8(rest).map_err(|_| corrupt(root, "is not UTF-8"))?
            }
            Some([k, ..]) if EntryKind::from_byte(*k).is_some() => return Ok(Vec::new()),
            Some(_) => return Err(corrupt(root, "has an unknown kind byte")),
        };
        let mut seen: HashSet<Hash> = HashSet::new();
        seen.insert(*root);
        let mut out = Vec::new();
        // Explicit stack instead of recursion: version chains are arbitrarily long.
        // Frame: (hash recorded when the frame is done (None for the root), its references, next index).
        type Frame = (Option<(RefKind, Hash)>, Vec<(RefKind, Hash)>, usize);
        let mut stack: Vec<Frame> = vec![(None, refs_of(root, text)?, 0)];
        while let Some(frame) = stack.last_mut() {
            if frame.2 == frame.1.len() {
                let done = frame.0;
                stack.pop();
                if let Some(h) = done {
                    out.push(h);
                }
                continue;
            }
            let (kind, h) = frame.1[frame.2];
            frame.2 += 1;
            if !seen.insert(h) {
                continue;
            }
            match kind {
                RefKind::Blob | RefKind::Clob => out.push((kind, h)),
                RefKind::Obj | RefKind::Id => {
                    let text = self.text_in(txn, &h, if kind == RefKind::Id { K_ID } else { K_OBJECT })?;
                    stack.push((Some((kind, h)), refs_of(&h, text)?, 0));
                }
            }
        }
        Ok(out)
    }

    /// objects.md §4.1: the version nodes of `id_hash`, walking back from the head along the
    /// parent links (`prev` of a Change, `nodes` of a Merge in their stored order), depth-first,
    /// each node listed once at its first visit: newest first. Merge nodes are included (unlike
    /// the reference's `getVersionsNodeHashes`). Empty if the ID has no head.
    pub(crate) fn version_nodes_in(&self, txn: &RoTxn, id_hash: &str) -> Result<Vec<Hash>> {
        let Some(head) = self.get_head_in(txn, id_hash)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut seen: HashSet<Hash> = HashSet::new();
        let mut stack = vec![head];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            out.push(n);
            let text = self.text_in(txn, &n, K_OBJECT)?;
            let (type_name, _) = microdata::type_of(text)?;
            if !VERSION_NODE_TYPES.contains(&type_name.as_str()) {
                return Err(corrupt(&n, &format!("is a {type_name}, not a version node")));
            }
            let parents: Vec<Hash> = microdata::references(text)?
                .into_iter()
                .filter(|r| r.kind == RefKind::Obj && (r.path == "prev" || r.path.starts_with("nodes.")))
                .map(|r| Hash::parse(&r.hash).ok_or_else(|| corrupt(&n, "has a malformed reference")))
                .collect::<Result<_>>()?;
            // pushed in reverse so the first parent is walked first
            stack.extend(parents.into_iter().rev());
        }
        Ok(out)
    }

    /// A consistent read view of the store as committed now (see [`Snapshot`]).
    pub fn snapshot(&self) -> Result<Snapshot> {
        // `static_read_txn` owns a clone of the environment, so the transaction stays valid
        // however long the snapshot lives; `store` keeps the directory's shared state alive.
        let txn = self.shared.env.clone().static_read_txn()?;
        Ok(Snapshot { txn, store: self.clone() })
    }

    /// The hashes of `hashes` not stored (objects, ID objects, BLOBs, CLOBs), in input order.
    /// One read transaction.
    pub fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>> {
        let txn = self.read_txn()?;
        self.missing_in(&txn, hashes)
    }

    /// For each of `hashes`: its kind and microdata if an object or ID object is stored under
    /// it, else `None` (not a hash, missing, a BLOB or a CLOB). One read transaction and one
    /// lookup per hash: the CHUM fast path's batch answer (docs/chum-fastpath.md, service 101)
    /// asked `kind` and then `get`, two transactions and two B-tree searches per object
    /// (issue 8: a quarter of the exporter's CPU).
    pub fn texts(&self, hashes: &[&str]) -> Result<Vec<Option<(EntryKind, String)>>> {
        let txn = self.read_txn()?;
        let mut out = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let Some(h) = Hash::parse(hash) else {
                out.push(None);
                continue;
            };
            out.push(match self.entry(&txn, &h)? {
                Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => {
                    let text = std::str::from_utf8(rest).map_err(|_| corrupt(&h, "is not UTF-8"))?;
                    Some((if *k == K_ID { EntryKind::Id } else { EntryKind::Object }, text.to_string()))
                }
                Some([k, ..]) if EntryKind::from_byte(*k).is_some() => None,
                Some(_) => return Err(corrupt(&h, "has an unknown kind byte")),
                None => None,
            });
        }
        Ok(out)
    }

    /// The children of an object or ID object (chum.md §5.3; see `children_in`).
    pub fn children(&self, hash: &str) -> Result<Vec<Hash>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        self.children_in(&txn, &h)
    }

    /// The children of an object or ID object with their reference kinds (chum.md §4.3; see
    /// `children_tagged_in`).
    pub fn children_tagged(&self, hash: &str) -> Result<Vec<(RefKind, Hash)>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        self.children_tagged_in(&txn, &h)
    }

    /// [`children_tagged`](Self::children_tagged) pruned at `known`: a hash in `known` is
    /// neither listed nor descended into. The CHUM fast path's closure service
    /// (docs/chum-fastpath.md, service 106) passes the set of hashes the peer is known to hold
    /// with their whole closure (downward closed), so the result is exactly the closure of
    /// `hash` minus `known`, in the same dependencies-first order.
    pub fn children_tagged_except(&self, hash: &str, known: &HashSet<Hash>) -> Result<Vec<(RefKind, Hash)>> {
        Ok(self.children_tagged_except_within(hash, known, usize::MAX)?.unwrap_or_default())
    }

    /// [`children_tagged_except`](Self::children_tagged_except), or `None` as soon as the walk
    /// has met more than `limit` hashes outside `known` (the closure minus `known` is then
    /// longer than `limit`): a CHUM NOTIFY carries at most 64 entries, and a big commit's
    /// closure is not walked to the end only to learn that it does not fit (issue 8; the pure
    /// core's `_walk_except` with a `limit`). At most `limit` objects are read below the root.
    pub fn children_tagged_except_within(&self, hash: &str, known: &HashSet<Hash>, limit: usize) -> Result<Option<Vec<(RefKind, Hash)>>> {
        let root = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        let text = match self.entry(&txn, &root)? {
            None => return Err(not_found(&root.to_string(), "object")),
            Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => {
                std::str::from_utf8(rest).map_err(|_| corrupt(&root, "is not UTF-8"))?
            }
            Some([k, ..]) if EntryKind::from_byte(*k).is_some() => return Ok(Some(Vec::new())),
            Some(_) => return Err(corrupt(&root, "has an unknown kind byte")),
        };
        let mut seen = Met::default();
        seen.insert(root);
        let mut out = Vec::new();
        type Frame = (Option<(RefKind, Hash)>, Vec<(RefKind, Hash)>, usize);
        let mut stack: Vec<Frame> = vec![(None, refs_of(&root, text)?, 0)];
        while let Some(frame) = stack.last_mut() {
            if frame.2 == frame.1.len() {
                let done = frame.0;
                stack.pop();
                if let Some(h) = done {
                    out.push(h);
                }
                continue;
            }
            let (kind, h) = frame.1[frame.2];
            frame.2 += 1;
            if known.contains(&h) || !seen.insert(h) {
                continue;
            }
            // `seen` holds the root too
            if seen.len() > limit.saturating_add(1) {
                return Ok(None);
            }
            match kind {
                RefKind::Blob | RefKind::Clob => out.push((kind, h)),
                RefKind::Obj | RefKind::Id => {
                    let text = self.text_in(&txn, &h, if kind == RefKind::Id { K_ID } else { K_OBJECT })?;
                    stack.push((Some((kind, h)), refs_of(&h, text)?, 0));
                }
            }
        }
        Ok(Some(out))
    }

    /// Start a [`ClosureWalk`] of `hash` (an object or ID object; a BLOB/CLOB has an empty
    /// closure): [`children_tagged_except`](Self::children_tagged_except) in pages.
    pub fn closure_walk(&self, hash: &str) -> Result<ClosureWalk> {
        let root = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        let refs = match self.entry(&txn, &root)? {
            None => return Err(not_found(&root.to_string(), "object")),
            Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => {
                refs_of(&root, std::str::from_utf8(rest).map_err(|_| corrupt(&root, "is not UTF-8"))?)?
            }
            Some([k, ..]) if EntryKind::from_byte(*k).is_some() => Vec::new(),
            Some(_) => return Err(corrupt(&root, "has an unknown kind byte")),
        };
        let mut seen = Met::default();
        seen.insert(root);
        Ok(ClosureWalk { stack: vec![(None, refs, 0)], seen })
    }

    /// The next at most `limit` (≥ 1) entries of `walk`, in the order of
    /// [`children_tagged_except`](Self::children_tagged_except) (dependencies first), pruned
    /// at `known` (which may grow between calls: the walk stops at what it holds by then).
    /// Every page is a complete prefix: whatever a listed entry references is listed in this
    /// or an earlier page, or is in `known`. Objects are immutable, so a walk spanning several
    /// read transactions stays consistent (docs/chum-fastpath.md "closure-pages").
    pub fn closure_walk_next(&self, walk: &mut ClosureWalk, known: &HashSet<Hash>, limit: usize) -> Result<Vec<(RefKind, Hash)>> {
        self.closure_walk_next_texts(walk, known, limit, None)
    }

    /// [`closure_walk_next`](Self::closure_walk_next), and with `texts` the microdata of every
    /// object and ID object the walk read (it reads each to find its references), appended as
    /// `(hash, is an ID object, microdata)`: the CHUM exporter answers the batch fetches that
    /// follow a closure page from them instead of reading every object a second time (issue 8).
    pub fn closure_walk_next_texts(
        &self,
        walk: &mut ClosureWalk,
        known: &HashSet<Hash>,
        limit: usize,
        mut texts: Option<&mut Vec<(Hash, bool, String)>>,
    ) -> Result<Vec<(RefKind, Hash)>> {
        let txn = self.read_txn()?;
        let mut out = Vec::new();
        while let Some(frame) = walk.stack.last_mut() {
            if out.len() >= limit.max(1) {
                break;
            }
            if frame.2 == frame.1.len() {
                let done = frame.0;
                walk.stack.pop();
                if let Some(h) = done {
                    out.push(h);
                }
                continue;
            }
            let (kind, h) = frame.1[frame.2];
            frame.2 += 1;
            if known.contains(&h) || !walk.seen.insert(h) {
                continue;
            }
            match kind {
                RefKind::Blob | RefKind::Clob => out.push((kind, h)),
                RefKind::Obj | RefKind::Id => {
                    let text = self.text_in(&txn, &h, if kind == RefKind::Id { K_ID } else { K_OBJECT })?;
                    walk.stack.push((Some((kind, h)), refs_of(&h, text)?, 0));
                    if let Some(t) = texts.as_deref_mut() {
                        t.push((h, kind == RefKind::Id, text.to_string()));
                    }
                }
            }
        }
        // the root's frame alone, all its references met: nothing is left
        if let [(None, refs, i)] = walk.stack.as_slice() {
            if *i == refs.len() {
                walk.stack.clear();
            }
        }
        Ok(out)
    }

    /// The version nodes of `id_hash`, newest first (objects.md §4.1; see `version_nodes_in`).
    pub fn version_nodes(&self, id_hash: &str) -> Result<Vec<Hash>> {
        let txn = self.read_txn()?;
        self.version_nodes_in(&txn, id_hash)
    }
}

/// A depth-first post-order walk of a closure kept between calls
/// ([`Store::closure_walk_next`]): the stack of frames (the entry listed when the frame is
/// done, its references, the next index) and the hashes met.
pub struct ClosureWalk {
    #[allow(clippy::type_complexity)]
    stack: Vec<(Option<(RefKind, Hash)>, Vec<(RefKind, Hash)>, usize)>,
    seen: Met,
}

impl ClosureWalk {
    /// Nothing is left to list.
    pub fn done(&self) -> bool {
        self.stack.is_empty()
    }
}

/// `(kind, hash)` of every reference of the microdata stored under `h`, in microdata order
/// (the strict parse checked each reference's hash).
fn refs_of(_h: &Hash, text: &str) -> Result<Vec<(RefKind, Hash)>> {
    Ok(microdata::reference_hashes(text)?.into_iter().map(|(k, x)| (k, Hash(x))).collect())
}

/// A read snapshot: one LMDB read transaction held open, so every read through it sees the
/// store as it was committed when the snapshot was taken, whatever is written afterwards.
///
/// Why this is sound: the environment is opened with `MDB_NOTLS` (heed `WithoutTls`), so a
/// read transaction is tied to its `MDB_txn` object, not to the thread that began it, and may
/// be used from any thread, one thread at a time (LMDB's rule); `RoTxn<'static, WithoutTls>` is
/// therefore `Send` but not `Sync`, and callers that share a snapshot between threads must
/// serialise access (the Python binding keeps it in a mutex). Each open snapshot holds one of
/// the environment's reader slots (126 by default, shared by all processes) and pins the pages
/// of its state, so LMDB cannot reuse pages freed by later writes while it lives: snapshots are
/// meant to be short-lived and closed explicitly (dropping it aborts the transaction).
pub struct Snapshot {
    txn: RoTxn<'static, WithoutTls>,
    store: Store,
}

impl Snapshot {
    pub fn get(&self, hash: &str) -> Result<String> {
        self.store.get_in(&self.txn, hash)
    }

    pub fn get_object(&self, hash: &str) -> Result<Value> {
        microdata::parse(&self.get(hash)?)
    }

    pub fn has(&self, hash: &str) -> Result<bool> {
        let h = parse_hash("hash", hash)?;
        Ok(self.store.entry(&self.txn, &h)?.is_some())
    }

    pub fn kind(&self, hash: &str) -> Result<Option<EntryKind>> {
        self.store.kind_in(&self.txn, hash)
    }

    pub fn get_head(&self, id_hash: &str) -> Result<Option<Hash>> {
        self.store.get_head_in(&self.txn, id_hash)
    }

    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>> {
        self.store.read_blob_in(&self.txn, hash)
    }

    pub fn missing(&self, hashes: &[Hash]) -> Result<Vec<Hash>> {
        self.store.missing_in(&self.txn, hashes)
    }

    pub fn children(&self, hash: &str) -> Result<Vec<Hash>> {
        let h = parse_hash("hash", hash)?;
        self.store.children_in(&self.txn, &h)
    }

    pub fn children_tagged(&self, hash: &str) -> Result<Vec<(RefKind, Hash)>> {
        let h = parse_hash("hash", hash)?;
        self.store.children_tagged_in(&self.txn, &h)
    }

    pub fn version_nodes(&self, id_hash: &str) -> Result<Vec<Hash>> {
        self.store.version_nodes_in(&self.txn, id_hash)
    }

    /// The last event sequence number visible in this snapshot.
    pub fn last_seq(&self) -> Result<u64> {
        last_seq_in(&self.store.dbs(), &self.txn)
    }

    /// [`Store::accessible_roots`] as of this snapshot.
    pub fn accessible_roots(&self, person: &Hash, since: u64) -> Result<(u64, Vec<super::Root>)> {
        super::access::accessible_roots_in(&self.store.dbs(), &self.txn, person, since)
    }

    /// [`Store::peer_mark`] as of this snapshot.
    pub fn peer_mark(&self, peer: &str) -> Result<u64> {
        super::access::check_peer(peer)?;
        super::access::peer_mark_in(&self.store.dbs(), &self.txn, peer)
    }

    /// Events of this snapshot with `seq > since`, at most `limit`.
    pub fn changes(&self, since: u64, limit: usize) -> Result<Vec<Event>> {
        changes_in(&self.store.dbs(), &self.txn, since, limit)
    }
}
