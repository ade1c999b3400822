//! The post-commit event feed (docs/store-format.md "events"; project issue 6).
//!
//! Every committed write of a new `objects` entry (object, ID object, BLOB, CLOB) and every
//! head change gets the next per-store sequence number, appended to the `events` table in the
//! SAME write transaction as the write itself: the feed can never show an uncommitted write or
//! miss a committed one, even after a crash. Keys are `u64` big-endian sequence numbers (1, 2,
//! ...), so LMDB keeps them in commit order and the append goes to the right-most page
//! (`MDB_APPEND`, no B-tree search). Values: `hash (32) ‖ kind byte` with the kind bytes of
//! `objects` (`O`, `I`, `C`, `B`; chunked entries are reported as `C`/`B`) plus `H` for a
//! version-head change (hash = the ID hash).
//!
//! In-process notification: after a commit that appended events the writer bumps the
//! environment's [`Notifier`] and wakes every [`Subscription`] of that directory, whichever
//! `Store` handle wrote. Writes by other processes land in the table too (a waiting
//! subscription sees them at its next wake-up or call), but do not wake it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use heed::{PutFlags, RoTxn, RwTxn};

use super::{Dbs, Store, K_BLOB, K_BLOB_CHUNKED, K_CLOB, K_CLOB_CHUNKED, K_ID, K_OBJECT};
use crate::error::{Error, Result};
use crate::hash::Hash;

/// Kind byte of a version-head change in `events`.
pub(crate) const K_HEAD: u8 = b'H';
/// `meta` key marking a store whose `events` table is maintained (value `1`).
pub(crate) const META_EVENTS: &[u8] = b"events";

/// One feed entry: `(seq, hash, kind)` with kind `object|id|clob|blob|head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub hash: Hash,
    pub kind: &'static str,
}

fn kind_name(b: u8) -> Option<&'static str> {
    match b {
        K_OBJECT => Some("object"),
        K_ID => Some("id"),
        K_CLOB | K_CLOB_CHUNKED => Some("clob"),
        K_BLOB | K_BLOB_CHUNKED => Some("blob"),
        K_HEAD => Some("head"),
        _ => None,
    }
}

/// The kind byte an `objects` value is recorded under (chunked entries as `C`/`B`).
fn feed_kind(objects_kind: u8) -> u8 {
    match objects_kind {
        K_CLOB_CHUNKED => K_CLOB,
        K_BLOB_CHUNKED => K_BLOB,
        k => k,
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<Event> {
    let corrupt = || Error::store("LAMA-CORRUPT", format!("malformed events entry {}", hex::encode(k)));
    let seq = u64::from_be_bytes(k.try_into().map_err(|_| corrupt())?);
    if v.len() != 33 {
        return Err(corrupt());
    }
    let hash = Hash::from_slice(&v[..32]).ok_or_else(corrupt)?;
    let kind = kind_name(v[32]).ok_or_else(corrupt)?;
    Ok(Event { seq, hash, kind })
}

/// Highest sequence number in `events` (0 for none).
pub(crate) fn last_seq_in(dbs: &Dbs, txn: &RoTxn) -> Result<u64> {
    match dbs.events.last(txn)? {
        None => Ok(0),
        Some((k, _)) => Ok(u64::from_be_bytes(k.try_into().map_err(|_| {
            Error::store("LAMA-CORRUPT", format!("malformed events key {}", hex::encode(k)))
        })?)),
    }
}

/// Events with `seq > since`, at most `limit`, in sequence order.
pub(crate) fn changes_in(dbs: &Dbs, txn: &RoTxn, since: u64, limit: usize) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    let start = since.saturating_add(1).to_be_bytes();
    let range = (std::ops::Bound::Included(&start[..]), std::ops::Bound::Unbounded);
    for item in dbs.events.range(txn, &range)? {
        let (k, v) = item?;
        out.push(decode(k, v)?);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The type filter of [`changes_of_in`]: the object's type for `object` and `id` events, the
/// ID object's type for `head` events (the ID hash's), never for `blob`/`clob`.
fn event_type_in<'t>(dbs: &Dbs, txn: &'t RoTxn, e: &Event) -> Result<Option<&'t str>> {
    if !matches!(e.kind, "object" | "id" | "head") {
        return Ok(None);
    }
    Ok(match dbs.objects.get(txn, &e.hash.0[..])? {
        Some([k, md @ ..]) if *k == K_OBJECT || *k == K_ID => std::str::from_utf8(md).ok().and_then(header_type),
        _ => None,
    })
}

/// The type name of microdata's `itemtype="//refin.io/<T>"` header (no parse of the body):
/// an object's `<div itemscope itemtype=...>`, an ID object's
/// `<div data-id-object="true" itemscope itemtype=...>`.
fn header_type(md: &str) -> Option<&str> {
    const P: &str = "<div itemscope itemtype=\"//refin.io/";
    const ID: &str = "<div data-id-object=\"true\" itemscope itemtype=\"//refin.io/";
    let rest = md.strip_prefix(P).or_else(|| md.strip_prefix(ID))?;
    rest.find('"').map(|i| &rest[..i])
}

/// [`changes_in`] with a type filter (issue 10, the typed change feed): of the (at most
/// `limit`) events with `seq > since`, those whose type ([`event_type_in`]) is in `types`,
/// and the sequence number of the last event scanned (`since` if none), where the next call
/// starts. One read transaction; the type comes from the stored header, so a consumer that
/// wants a few types no longer reads every committed object itself. The `object`/`id` events
/// this process committed recently take their type from `memo` ([`TypeMemo`]) instead: no
/// read of the object at all (the connection manager's endpoint scan and the chat feed on a
/// receiver, issue 10).
pub(crate) fn changes_of_in(
    dbs: &Dbs,
    txn: &RoTxn,
    since: u64,
    limit: usize,
    types: &[&str],
    memo: Option<&Mutex<TypeMemo>>,
) -> Result<(u64, Vec<Event>)> {
    let mut out = Vec::new();
    let mut pos = since;
    if limit == 0 {
        return Ok((pos, out));
    }
    // the memo's part of (since, since + limit], copied (the committing thread records into
    // it right after its commit: never held while reading the store)
    let (wanted, known_from, known) = match memo {
        Some(m) => {
            let wanted = type_ids(types);
            let m = m.lock().unwrap_or_else(|e| e.into_inner());
            let (from, ids) = m.slice(since.saturating_add(1), limit);
            (wanted, from, ids)
        }
        None => (Vec::new(), 0, Vec::new()),
    };
    let start = since.saturating_add(1).to_be_bytes();
    let range = (std::ops::Bound::Included(&start[..]), std::ops::Bound::Unbounded);
    let mut n = 0usize;
    for item in dbs.events.range(txn, &range)? {
        let (k, v) = item?;
        let e = decode(k, v)?;
        pos = e.seq;
        n += 1;
        let memo_id = match e.seq.checked_sub(known_from).and_then(|i| known.get(i as usize)) {
            Some(&id) if id != 0 && matches!(e.kind, "object" | "id") => Some(id),
            _ => None,
        };
        let matched = match memo_id {
            Some(id) => wanted.contains(&id),
            None => event_type_in(dbs, txn, &e)?.is_some_and(|t| types.contains(&t)),
        };
        if matched {
            out.push(e);
        }
        if n >= limit {
            break;
        }
    }
    Ok((pos, out))
}

/// Type names as small numbers, for [`TypeMemo`] (0: unknown). Names come from stored,
/// parsed objects, so they are the registered types (a bounded set); past [`MAX_TYPE_NAMES`]
/// a name gets 0, and its events are typed by a read as before.
struct TypeNames {
    names: Vec<&'static str>,
    ids: HashMap<&'static str, u16>,
}

const MAX_TYPE_NAMES: usize = 4096;

static TYPE_NAMES: Mutex<Option<TypeNames>> = Mutex::new(None);

/// The ids of `names` known so far (a name never seen has no id, and no event of it is in a
/// memo).
fn type_ids(names: &[&str]) -> Vec<u16> {
    let g = TYPE_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    match g.as_ref() {
        Some(t) => names.iter().filter_map(|n| t.ids.get(n).copied()).collect(),
        None => Vec::new(),
    }
}

/// The id of each name (0 for `None`), registering new names.
fn intern_all<'a>(names: impl Iterator<Item = Option<&'a str>>) -> Vec<u16> {
    let mut g = TYPE_NAMES.lock().unwrap_or_else(|e| e.into_inner());
    let t = g.get_or_insert_with(|| TypeNames { names: vec![""], ids: HashMap::new() });
    names
        .map(|n| match n {
            None => 0,
            Some(n) => match t.ids.get(n) {
                Some(&id) => id,
                None if t.names.len() < MAX_TYPE_NAMES => {
                    let name: &'static str = Box::leak(n.to_owned().into_boxed_str());
                    let id = t.names.len() as u16;
                    t.names.push(name);
                    t.ids.insert(name, id);
                    id
                }
                None => 0,
            },
        })
        .collect()
}

/// How many of the newest events a [`TypeMemo`] keeps (2 bytes each).
pub(crate) const TYPE_MEMO_EVENTS: usize = 1 << 16;

/// The types of the newest events this process committed (per environment, in memory only):
/// `ids[i]` is the type id of event `base + i` (0: unknown - a head, a BLOB, or an event
/// typed by no writer). Recorded after the commit, so every entry is a committed event's; an
/// event committed by another process (or a commit recorded out of order) is simply not in
/// it, and [`changes_of_in`] reads its type from the store. Nothing on disk changes.
#[derive(Default)]
pub(crate) struct TypeMemo {
    base: u64,
    ids: VecDeque<u16>,
}

impl TypeMemo {
    /// Record the type ids of events `first, first + 1, ...`.
    fn record(&mut self, first: u64, ids: &[u16]) {
        if ids.is_empty() {
            return;
        }
        let end = self.base + self.ids.len() as u64;
        if first != end || self.ids.is_empty() {
            if first < end && !self.ids.is_empty() {
                return; // an older commit recorded after a newer one: left to the reads
            }
            // the first record, or a gap (another process's or thread's commit in between)
            self.ids.clear();
            self.base = first;
        }
        self.ids.extend(ids.iter().copied());
        if self.ids.len() > TYPE_MEMO_EVENTS {
            let drop = self.ids.len() - TYPE_MEMO_EVENTS;
            self.ids.drain(..drop);
            self.base += drop as u64;
        }
    }

    /// `(first seq, ids)`: the memo's entries for at most `limit` events from `from`.
    fn slice(&self, from: u64, limit: usize) -> (u64, Vec<u16>) {
        let end = self.base + self.ids.len() as u64;
        let start = from.max(self.base);
        if start >= end {
            return (start, Vec::new());
        }
        let i = (start - self.base) as usize;
        let n = ((end - start) as usize).min(limit);
        (start, self.ids.range(i..i + n).copied().collect())
    }
}

/// The events appended by one write transaction. The next sequence number is read lazily at
/// the first append (one lookup of the right-most key), so a transaction that writes nothing
/// new costs nothing.
#[derive(Default)]
pub(crate) struct FeedTxn {
    next: Option<u64>,
    appended: u64,
    /// The type id of each appended event ([`TypeMemo`]), recorded after the commit.
    types: Vec<u16>,
}

impl FeedTxn {
    pub(crate) fn new() -> FeedTxn {
        FeedTxn::default()
    }

    /// Append `(hash, kind)` inside `txn` (`kind` = the `objects` kind byte or [`K_HEAD`]).
    pub(crate) fn push(&mut self, dbs: &Dbs, txn: &mut RwTxn, hash: &[u8; 32], kind: u8) -> Result<()> {
        let seq = match self.next {
            Some(s) => s,
            None => last_seq_in(dbs, txn)? + 1,
        };
        let mut value = [0u8; 33];
        value[..32].copy_from_slice(hash);
        value[32] = feed_kind(kind);
        dbs.events.put_with_flags(txn, PutFlags::APPEND, &seq.to_be_bytes(), &value)?;
        self.next = Some(seq + 1);
        self.appended += 1;
        self.types.push(0);
        Ok(())
    }

    /// Append `events` (`(hash, kind)` as for [`push`](Self::push)) in order, through one
    /// cursor: the batch path (`store_prepared`), one event per new object. Same rows and
    /// numbers as calling `push` for each; one lookup of the next number, one cursor and one
    /// key/value buffer for the whole batch instead of a `mdb_put` (cursor set-up) per event.
    /// The third item is the entry's type name (object or ID object), for this process's
    /// [`TypeMemo`].
    pub(crate) fn push_all(&mut self, dbs: &Dbs, txn: &mut RwTxn, events: &[(&[u8; 32], u8, Option<&str>)]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut seq = match self.next {
            Some(s) => s,
            None => last_seq_in(dbs, txn)? + 1,
        };
        let mut cursor = dbs.events.iter_mut(txn)?;
        let mut value = [0u8; 33];
        for &(hash, kind, _) in events {
            value[..32].copy_from_slice(hash);
            value[32] = feed_kind(kind);
            // SAFETY: nothing borrowed from the database is alive while the cursor writes (key
            // and value are local buffers). With APPEND (not CURRENT) this is a plain cursor
            // put: LMDB goes to the last key itself and refuses a key that does not sort after
            // it (MDB_KEYEXIST, an error here), so the cursor's position does not matter.
            unsafe { cursor.put_current_with_options::<heed::types::Bytes>(PutFlags::APPEND, &seq.to_be_bytes(), &value)? };
            seq += 1;
        }
        self.appended += events.len() as u64;
        self.next = Some(seq);
        self.types.extend(intern_all(events.iter().map(|e| e.2)));
        Ok(())
    }

    /// The last sequence number appended, if any (the access index records a head move
    /// under the sequence number of its event).
    pub(crate) fn last(&self) -> Option<u64> {
        self.next.filter(|_| self.appended > 0).map(|n| n - 1)
    }

    /// The first sequence number appended, if any.
    fn first(&self) -> Option<u64> {
        self.next.filter(|_| self.appended > 0).map(|n| n - self.appended)
    }
}

/// Highest sequence number committed in this process (per environment), with a condition
/// variable that subscriptions wait on.
pub(crate) struct Notifier {
    committed: Mutex<u64>,
    cond: Condvar,
    /// Commit hooks ([`Store::on_commit`]), called by the committing thread.
    hooks: Mutex<Vec<(u64, Hook)>>,
    next_hook: AtomicU64,
    /// The types of this process's newest events ([`TypeMemo`]).
    pub(crate) types: Mutex<TypeMemo>,
    /// Pre-commit hooks (pending.rs).
    pub(crate) pre: super::pending::PreHooks,
}

type Hook = Arc<dyn Fn(u64) + Send + Sync>;

impl Notifier {
    pub(crate) fn new(last: u64) -> Notifier {
        Notifier {
            committed: Mutex::new(last),
            cond: Condvar::new(),
            hooks: Mutex::new(Vec::new()),
            next_hook: AtomicU64::new(1),
            types: Mutex::new(TypeMemo::default()),
            pre: Default::default(),
        }
    }
}

/// A registered commit hook ([`Store::on_commit`]); dropping it unregisters the hook.
pub struct CommitHook {
    store: Store,
    id: u64,
}

impl Drop for CommitHook {
    fn drop(&mut self) {
        let mut hooks = self.store.shared.feed.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.retain(|(id, _)| *id != self.id);
    }
}

/// Assign sequence numbers to everything already stored in a store created before the feed
/// existed (docs/store-format.md "events"): every `objects` entry in key order, then every
/// version head in key order, then mark the store. Runs in the open transaction, once.
pub(crate) fn upgrade(dbs: &Dbs, txn: &mut RwTxn) -> Result<()> {
    if dbs.meta.get(txn, META_EVENTS)?.is_some() {
        return Ok(());
    }
    let mut found: Vec<([u8; 32], u8)> = Vec::new();
    for item in dbs.objects.iter(txn)? {
        let (k, v) = item?;
        if let (Ok(h), Some(&kind)) = (<[u8; 32]>::try_from(k), v.first()) {
            found.push((h, kind));
        }
    }
    for item in dbs.vheads.iter(txn)? {
        let (k, _) = item?;
        if let Ok(h) = <[u8; 32]>::try_from(k) {
            found.push((h, K_HEAD));
        }
    }
    let mut feed = FeedTxn::new();
    for (h, kind) in found {
        feed.push(dbs, txn, &h, kind)?;
    }
    dbs.meta.put(txn, META_EVENTS, b"1")?;
    Ok(())
}

impl Store {
    /// Tell this process's subscriptions about the events of a committed transaction.
    pub(crate) fn published(&self, feed: &FeedTxn) {
        if let Some(last) = feed.last() {
            let n = &self.shared.feed;
            if let Some(first) = feed.first() {
                n.types.lock().unwrap_or_else(|e| e.into_inner()).record(first, &feed.types);
            }
            let mut c = n.committed.lock().unwrap_or_else(|e| e.into_inner());
            if last > *c {
                *c = last;
            }
            n.cond.notify_all();
            drop(c);
            // the hooks run in the committing thread, right after the commit (no thread hop:
            // a CHUM session's NOTIFY of a new root leaves without waiting for a watcher
            // thread to be scheduled, issue 10)
            let hooks: Vec<Hook> = {
                let h = n.hooks.lock().unwrap_or_else(|e| e.into_inner());
                h.iter().map(|(_, f)| f.clone()).collect()
            };
            for f in hooks {
                f(last);
            }
        }
    }

    /// Call `hook(seq)` in the committing thread after every commit of this process that
    /// appended events (`seq`: its last event's sequence number), until the returned
    /// [`CommitHook`] is dropped. The hook must not block and must not write to the store
    /// (a waker: e.g. a tokio watch). Commits of other processes call no hook (a
    /// [`Subscription`] sees them within its wait slice).
    pub fn on_commit(&self, hook: impl Fn(u64) + Send + Sync + 'static) -> CommitHook {
        let n = &self.shared.feed;
        let id = n.next_hook.fetch_add(1, Ordering::Relaxed);
        n.hooks.lock().unwrap_or_else(|e| e.into_inner()).push((id, Arc::new(hook)));
        CommitHook { store: self.clone(), id }
    }

    /// [`on_commit`](Self::on_commit), but called before the hooks registered with
    /// `on_commit` (those registered with `on_commit_first` run newest first). For the waker
    /// of work another process waits for: a CHUM session's driver, whose NOTIFY of a new root
    /// is on the peer's path, is woken before an event loop of this process is made readable
    /// (`Store.commit_signal`), which would compete with it for a CPU (issue 10).
    pub fn on_commit_first(&self, hook: impl Fn(u64) + Send + Sync + 'static) -> CommitHook {
        let n = &self.shared.feed;
        let id = n.next_hook.fetch_add(1, Ordering::Relaxed);
        n.hooks.lock().unwrap_or_else(|e| e.into_inner()).insert(0, (id, Arc::new(hook)));
        CommitHook { store: self.clone(), id }
    }

    /// The sequence number of the last committed event (0 if none).
    pub fn last_seq(&self) -> Result<u64> {
        let txn = self.read_txn()?;
        last_seq_in(&self.shared.dbs, &txn)
    }

    /// Up to `limit` events with a sequence number above `since`, in commit order.
    pub fn changes(&self, since: u64, limit: usize) -> Result<Vec<Event>> {
        let txn = self.read_txn()?;
        changes_in(&self.shared.dbs, &txn, since, limit)
    }

    /// [`changes`](Self::changes) with a type filter: `(position, events)` (see
    /// [`changes_of_in`]).
    pub fn changes_of(&self, since: u64, limit: usize, types: &[&str]) -> Result<(u64, Vec<Event>)> {
        let txn = self.read_txn()?;
        changes_of_in(&self.shared.dbs, &txn, since, limit, types, Some(&self.shared.feed.types))
    }

    /// A subscription to the events committed from now on.
    pub fn subscribe(&self) -> Result<Subscription> {
        Ok(Subscription { store: self.clone(), pos: self.last_seq()? })
    }
}

/// Events committed after the subscription was made (see [`Store::subscribe`]). Holds its store
/// open. `Send`; one thread waits on it at a time (`&mut self`).
pub struct Subscription {
    store: Store,
    pos: u64,
}

impl Subscription {
    /// The sequence number of the last event returned (or of the feed's end when subscribed).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Events after [`position`](Self::position), at most `limit`; waits up to `timeout` for
    /// one if there is none yet. Empty after a timeout.
    pub fn wait(&mut self, timeout: Duration, limit: usize) -> Result<Vec<Event>> {
        self.wait_with(timeout, limit, |store, pos| {
            let events = store.changes(pos, limit)?;
            Ok((events.last().map_or(pos, |e| e.seq), events))
        })
    }

    /// [`wait`](Self::wait) with a type filter ([`Store::changes_of`]): of the next (at most
    /// `limit`) events, those of the `types`; returns as soon as any event was committed, so
    /// the result may be empty while [`position`](Self::position) moved past events of other
    /// types.
    pub fn wait_of(&mut self, timeout: Duration, limit: usize, types: &[&str]) -> Result<Vec<Event>> {
        self.wait_with(timeout, limit, |store, pos| store.changes_of(pos, limit, types))
    }

    fn wait_with(
        &mut self,
        timeout: Duration,
        limit: usize,
        mut read: impl FnMut(&Store, u64) -> Result<(u64, Vec<Event>)>,
    ) -> Result<Vec<Event>> {
        let deadline = Instant::now() + timeout;
        let n = &self.store.shared.feed;
        loop {
            let (pos, events) = read(&self.store, self.pos)?;
            if pos > self.pos {
                self.pos = pos;
                return Ok(events);
            }
            if limit == 0 {
                return Ok(events);
            }
            // Writers bump `committed` after their commit, under the lock: either the bump
            // happened before we look (then we read again), or it happens after we are waiting
            // (then we are woken). No event is missed between the read and the wait.
            let guard = n.committed.lock().unwrap_or_else(|e| e.into_inner());
            if *guard > self.pos {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let (_guard, _) = n.cond.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner());
            if Instant::now() >= deadline {
                // one last look: a commit of another process does not notify
                let (pos, events) = read(&self.store, self.pos)?;
                self.pos = self.pos.max(pos);
                return Ok(events);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::microdata::Value;

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn person(email: &str) -> Value {
        Value::Dict(vec![(s("$type$"), s("Person")), (s("email"), s(email))])
    }

    fn edge(data: &str, time: i64) -> Value {
        Value::Dict(vec![
            (s("$type$"), s("VersionNodeEdge")),
            (s("data"), s(data)),
            (s("depth"), Value::Int(0)),
            (s("creationTime"), Value::Int(time)),
        ])
    }

    #[test]
    fn type_memo_records_in_order_and_keeps_the_newest() {
        let mut m = TypeMemo::default();
        m.record(5, &[1, 2]);
        m.record(7, &[3]);
        assert_eq!(m.slice(1, 100), (5, vec![1, 2, 3]));
        assert_eq!(m.slice(6, 1), (6, vec![2]));
        assert_eq!(m.slice(8, 10), (8, vec![]));
        // an older commit recorded late is left out; a gap starts over
        m.record(3, &[9, 9]);
        assert_eq!(m.slice(0, 100), (5, vec![1, 2, 3]));
        m.record(10, &[4]);
        assert_eq!(m.slice(0, 100), (10, vec![4]));
        // bounded: the oldest entries go
        let many = vec![7u16; TYPE_MEMO_EVENTS];
        m.record(11, &many);
        let (from, ids) = m.slice(0, usize::MAX);
        assert_eq!((from, ids.len()), (11, TYPE_MEMO_EVENTS));
        assert!(ids.iter().all(|&i| i == 7));
    }

    /// This process's commits are typed from the memo, and give exactly what the stored
    /// headers give (a process without a memo: another one, or this one after a restart);
    /// an event past the memo (another process's commit) is typed by a read.
    #[test]
    fn changes_of_from_the_memo_equals_the_headers() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path(), None).unwrap();
        let p = st.put_objects(&[person("a@example.com"), person("b@example.com")]).unwrap();
        st.put_objects(&[edge(&p[0].hash, 1), edge(&p[1].hash, 2)]).unwrap();
        st.put_blob(b"bytes").unwrap();
        // a head event: typed by its ID object, read from the store
        let node = st.put_objects(&[edge(&p[0].hash, 3)]).unwrap()[0].hash.clone();
        st.write_batch(&[], &[(p[0].id_hash.clone().unwrap(), None, node)]).unwrap();
        let dbs = st.dbs();
        let txn = st.read_txn().unwrap();
        let memo = &st.shared.feed.types;
        assert!(!memo.lock().unwrap().ids.is_empty(), "the commits above were recorded");
        for types in [&["Person"][..], &["VersionNodeEdge"], &["Person", "VersionNodeEdge"], &[], &["Nope"]] {
            for limit in [1, 3, 100] {
                let mut since = 0;
                loop {
                    let a = changes_of_in(&dbs, &txn, since, limit, types, Some(memo)).unwrap();
                    let b = changes_of_in(&dbs, &txn, since, limit, types, None).unwrap();
                    assert_eq!(a, b, "{types:?} since {since} limit {limit}");
                    if a.0 == since {
                        break;
                    }
                    since = a.0;
                }
            }
        }
        let persons = changes_of_in(&dbs, &txn, 0, 100, &["Person"], Some(memo)).unwrap().1;
        assert_eq!(persons.len(), 5, "two objects, their ID objects, a head: {persons:?}");
        // the memo decides for the events it holds: a memo that (falsely) calls every event a
        // Person shows that no object was read for them
        let last = last_seq_in(&dbs, &txn).unwrap();
        let id = intern_all([Some("Person")].into_iter())[0];
        let fake = Mutex::new(TypeMemo { base: 1, ids: vec![id; last as usize].into() });
        let all = changes_of_in(&dbs, &txn, 0, 100, &["Person"], Some(&fake)).unwrap().1;
        let objects_and_ids = changes_in(&dbs, &txn, 0, 100).unwrap().into_iter().filter(|e| matches!(e.kind, "object" | "id")).count();
        assert_eq!(all.iter().filter(|e| e.kind != "head").count(), objects_and_ids);
        // a head event is typed by its ID object, whatever the memo holds for its number
        assert_eq!(all.iter().filter(|e| e.kind == "head").count(), 1);
    }
}
