//! The importer's store transactions on a thread of their own (issue 8): while one batch is
//! committed (LMDB puts, page writes, the fsync of a durable store), the session thread
//! verifies the next chunk of answers.
//!
//! Order and safety are those of committing in place: batches are committed one after the
//! other, in the order the importer hands them over, each in one transaction (dependencies
//! first inside it, as the importer made it); an item whose reference was refused by the store
//! (or skipped for the same reason) in this pass is never committed, so nothing becomes
//! visible before its dependencies. The importer counts an item as stored once it is handed
//! over (what references it may go into a later batch) and learns each item's fate, in order,
//! from [`Committer::wait`] / [`Committer::try_done`]; it waits for every batch before its pass
//! ends (the high-water mark moves only then) and when the session ends. Dropping the
//! committer finishes the batches handed over (the thread is joined).

use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lama_core::microdata::HashRef;
use lama_core::store::{Store, Verified};

type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// Received microdata: a string of its own, or its range of a binary batch answer, which the
/// items of that answer share (issue 8, session 17: each entry was copied out of the answer
/// into a string of its own, and freed on the commit thread; a quarter of the session
/// thread's memmove, and most of the commit thread's frees).
#[derive(Clone, Debug)]
pub(crate) enum Text {
    Own(String),
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
}

impl Text {
    /// `buf[range]`, if that is in `buf` and UTF-8.
    pub(crate) fn shared(buf: &Arc<Vec<u8>>, range: std::ops::Range<usize>) -> Option<Text> {
        std::str::from_utf8(buf.get(range.clone())?).ok()?;
        Some(Text::Shared(buf.clone(), range))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Own(s) => s,
            // SAFETY: `shared` checked that the range is in the buffer and UTF-8, and the buffer
            // is never changed (it is only reachable through shared `Arc`s)
            Text::Shared(b, r) => unsafe { std::str::from_utf8_unchecked(b.get_unchecked(r.clone())) },
        }
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Default for Text {
    fn default() -> Text {
        Text::Own(String::new())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text::Own(s)
    }
}

/// A verified item as the store takes it, owned by the batch.
pub(crate) struct Owned {
    pub text: Text,
    pub hash: [u8; 32],
    pub type_name: String,
    pub is_id: bool,
    pub id_microdata: Option<String>,
    pub refs: Vec<HashRef>,
    /// A listed version node: its `depth` is read (after the commit, off the session thread).
    pub want_depth: bool,
}

impl Owned {
    fn verified(&self) -> Verified<'_> {
        Verified { text: &self.text, hash: self.hash, type_name: &self.type_name, is_id: self.is_id, id_microdata: self.id_microdata.as_deref(), refs: Some(&self.refs) }
    }
}

/// What became of one item of a batch.
pub(crate) enum Fate {
    /// Committed; a listed node's depth.
    Stored(Option<f64>),
    /// Refused by the store: `(code, message)`.
    Refused(String, String),
    /// Not committed: one of its references was refused (or skipped) in this pass.
    Skipped,
}

struct Job {
    pass: u64,
    items: Vec<Owned>,
    forward: Vec<([u8; 32], [u8; 32])>,
    /// The peer mark to write in the batch's transaction (only a pass's last commit, in place).
    mark: Option<(String, u64)>,
    /// May share its transaction with the batches of its pass handed over right before and
    /// after it (a group, [`Committer::submit_merged`]).
    merge: bool,
}

enum Msg {
    Job(Job),
    /// Commit the open group now (someone waits for its fates).
    Flush,
}

/// A group's transaction is committed once it is this old, holds this many items, or no batch
/// came for `GROUP_IDLE` (issue 8, session 18: each LMDB commit copies and writes every
/// B-tree page its random keys touched, nearly all of the objects table's leaves for a few
/// thousand objects, so batches of 2,048 committed one by one would write it once per batch;
/// put as they come and committed together, the pages are copied and written once per group,
/// and the puts are done by the time the wire goes idle: what is left after it is the last
/// group's page writes and fsync).
const GROUP_AGE: Duration = Duration::from_millis(100);
const GROUP_IDLE: Duration = Duration::from_millis(20);
const GROUP_MAX: usize = 32768;

struct Running {
    tx: Option<mpsc::Sender<Msg>>,
    rx: mpsc::Receiver<Vec<Fate>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// The commit thread of one importer, started at its first batch.
pub(crate) struct Committer {
    store: Store,
    running: std::cell::OnceCell<Running>,
    depth: fn(&str) -> f64,
    /// The refusals of the current pass (its number, the hashes refused or skipped): shared by
    /// the thread and [`Committer::commit_here`], which runs only while no batch is out.
    refused: Arc<Mutex<(u64, HashSet<[u8; 32]>)>>,
    /// Merged batches were handed over since the last flush (a group may be open).
    merged_out: std::cell::Cell<bool>,
    /// [`GROUP_AGE`] and [`GROUP_IDLE`] (tests set them long, so that what they merge does not
    /// depend on the threads' timing).
    group_timing: (Duration, Duration),
}

impl Committer {
    pub(crate) fn new(store: Store, depth: fn(&str) -> f64) -> Committer {
        Committer { store, running: std::cell::OnceCell::new(), depth, refused: Arc::new(Mutex::new((u64::MAX, HashSet::default()))), merged_out: std::cell::Cell::new(false), group_timing: (GROUP_AGE, GROUP_IDLE) }
    }

    /// Tests: a group commits only at this age, after this idle time, or on a flush (before
    /// the first batch is handed over).
    #[cfg(test)]
    pub(crate) fn set_group_timing(&mut self, age: Duration, idle: Duration) {
        self.group_timing = (age, idle);
    }

    fn running(&self) -> &Running {
        self.running.get_or_init(|| {
            let (tx, jobs) = mpsc::channel::<Msg>();
            let (done, rx) = mpsc::channel::<Vec<Fate>>();
            let store = self.store.clone();
            let depth = self.depth;
            let refused = self.refused.clone();
            let timing = self.group_timing;
            let thread = thread::Builder::new()
                .name("lama-chum-commit".into())
                .spawn(move || run(store, jobs, done, depth, refused, timing))
                .expect("spawning the CHUM commit thread");
            Running { tx: Some(tx), rx, thread: Some(thread) }
        })
    }

    /// Hand a batch over (`forward`: heads to fast-forward in its transaction,
    /// `Store::put_verified_batch`). `pass` numbers the importer's passes: a refusal counts
    /// within its pass only.
    pub(crate) fn submit(&self, pass: u64, items: Vec<Owned>, forward: Vec<([u8; 32], [u8; 32])>) {
        // if the thread is gone (it panicked), `wait` says so: nothing of the batch is stored
        if let Some(tx) = self.running().tx.as_ref() {
            let _ = tx.send(Msg::Job(Job { pass, items, forward, mark: None, merge: false }));
        }
    }

    /// [`submit`](Self::submit) a batch that may be committed in one transaction with the
    /// batches of the same pass handed over right before and after it (a group, see
    /// [`GROUP_AGE`]). Its fates come as for any batch, one message per batch, in order.
    pub(crate) fn submit_merged(&self, pass: u64, items: Vec<Owned>) {
        if let Some(tx) = self.running().tx.as_ref() {
            let _ = tx.send(Msg::Job(Job { pass, items, forward: Vec::new(), mark: None, merge: true }));
            self.merged_out.set(true);
        }
    }

    /// Commit a batch on this thread, now (only while no batch is out: small batches, where a
    /// thread hop would cost more than the commit, and a pass's first and last ones).
    /// With `mark = (peer, m)` the peer mark goes into the same transaction
    /// (`Store::put_verified_forward_mark`), written only if every item of the batch is
    /// committed in it; the second value says whether it was.
    pub(crate) fn commit_here_marked(&self, pass: u64, items: Vec<Owned>, forward: Vec<([u8; 32], [u8; 32])>, mark: Option<(String, u64)>) -> (Vec<Fate>, bool) {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.0 != pass {
            *r = (pass, HashSet::default());
        }
        commit(&self.store, &mut r.1, &Job { pass, items, forward, mark, merge: false }, self.depth)
    }

    /// The fates of the oldest batch not reported yet, waiting for its commit (an open group
    /// is committed now); `None` if the thread is gone.
    pub(crate) fn wait(&self) -> Option<Vec<Fate>> {
        let r = self.running();
        // (once per run of merged batches: a flush left over would cut the next group short)
        if self.merged_out.replace(false) {
            if let Some(tx) = r.tx.as_ref() {
                let _ = tx.send(Msg::Flush);
            }
        }
        r.rx.recv().ok()
    }

    /// ... without waiting: `Some` once its commit is done.
    pub(crate) fn try_done(&self) -> Option<Vec<Fate>> {
        self.running.get()?.rx.try_recv().ok()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        if let Some(mut r) = self.running.take() {
            // the batches handed over are committed before the thread ends
            drop(r.tx.take());
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

type Refused = Arc<Mutex<(u64, HashSet<[u8; 32]>)>>;

/// The refusals of `pass` (a new pass starts with none).
fn refusals(refused: &Refused, pass: u64) -> std::sync::MutexGuard<'_, (u64, HashSet<[u8; 32]>)> {
    let mut r = refused.lock().unwrap_or_else(|e| e.into_inner());
    if r.0 != pass {
        *r = (pass, HashSet::default());
    }
    r
}

fn run(store: Store, jobs: mpsc::Receiver<Msg>, done: mpsc::Sender<Vec<Fate>>, depth: fn(&str) -> f64, refused: Refused, timing: (Duration, Duration)) {
    let mut carry: Option<Job> = None;
    loop {
        let job = match carry.take() {
            Some(j) => j,
            None => match jobs.recv() {
                Ok(Msg::Job(j)) => j,
                Ok(Msg::Flush) => continue,
                Err(_) => return,
            },
        };
        // the importer may be gone (the session was dropped): the commit is done all the same
        if !job.merge {
            let fates = commit(&store, &mut refusals(&refused, job.pass).1, &job, depth).0;
            let _ = done.send(fates);
            continue;
        }
        let (group, stop) = group(&store, &jobs, job, depth, &refused, timing);
        carry = stop;
        for fates in group {
            let _ = done.send(fates);
        }
    }
}

/// A group: `first` and the merge batches of its pass that follow it while the transaction is
/// young (see [`GROUP_AGE`]), put as they come and committed together. The fates of each batch,
/// in order, and the batch that ended the group, if one did (another pass's, or one that may
/// not be merged). If the store refuses anything (pre-verified, so this is rare), the group's
/// transaction is dropped and each batch committed as [`commit`] does, one by one.
fn group(store: &Store, jobs: &mpsc::Receiver<Msg>, first: Job, depth: fn(&str) -> f64, refused: &Refused, (max_age, idle): (Duration, Duration)) -> (Vec<Vec<Fate>>, Option<Job>) {
    let opened = Instant::now();
    let pass = first.pass;
    let mut batches: Vec<(Job, Vec<usize>)> = Vec::new();
    let mut items = 0usize;
    let mut txn = store.begin_verified().ok();
    let mut ok = txn.is_some();
    let mut next = Some(first);
    let mut stop = None;
    loop {
        if let Some(job) = next.take() {
            // as `commit`: an item whose reference was refused (or skipped) in this pass is
            // skipped, and so are its own referrers
            let keep = kept(&mut refusals(refused, pass).1, &job.items);
            if let (true, Some(t)) = (ok, txn.as_mut()) {
                let all: Vec<Verified> = keep.iter().map(|&i| job.items[i].verified()).collect();
                ok = t.put(&all, &job.forward, None).is_ok();
            }
            items += job.items.len();
            batches.push((job, keep));
        }
        let age = opened.elapsed();
        if !ok || items >= GROUP_MAX || age >= max_age {
            break;
        }
        match jobs.recv_timeout(idle.min(max_age - age)) {
            Ok(Msg::Job(j)) if j.merge && j.pass == pass => next = Some(j),
            Ok(Msg::Job(j)) => {
                stop = Some(j);
                break;
            }
            // a flush, no batch for a while, or the importer is gone: commit now
            Ok(Msg::Flush) | Err(_) => break,
        }
    }
    if ok {
        ok = txn.take().is_some_and(|t| t.commit().is_ok());
    }
    drop(txn);
    let out = if ok {
        batches
            .iter()
            .map(|(job, keep)| {
                let mut fates: Vec<Fate> = (0..job.items.len()).map(|_| Fate::Skipped).collect();
                for &i in keep {
                    fates[i] = stored(&job.items[i], depth);
                }
                fates
            })
            .collect()
    } else {
        // nothing of the group was committed: each batch on its own (the skips above are in
        // `refused` already, and are found again)
        batches.iter().map(|(job, _)| commit(store, &mut refusals(refused, pass).1, job, depth).0).collect()
    };
    (out, stop)
}

/// The indexes of the items of a batch that may be committed: not those that reference an
/// item refused (or skipped) in this pass, which join `refused` themselves, so their own
/// referrers are skipped too.
fn kept(refused: &mut HashSet<[u8; 32]>, items: &[Owned]) -> Vec<usize> {
    let mut keep = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        if !refused.is_empty() && it.refs.iter().any(|r| refused.contains(&r.hash)) {
            refused.insert(it.hash);
        } else {
            keep.push(i);
        }
    }
    keep
}

/// The fate of a committed item (a listed node's depth read now, off the session thread).
fn stored(it: &Owned, depth: fn(&str) -> f64) -> Fate {
    Fate::Stored(if it.want_depth { Some(depth(&it.text)) } else { None })
}

/// One batch: one transaction for every item whose references were not refused; if the store
/// refuses it (pre-verified, so this is rare), item by item, dependencies first. The job's peer
/// mark goes into that one transaction only when it holds every item (nothing skipped); the
/// second value says whether it was written.
fn commit(store: &Store, refused: &mut HashSet<[u8; 32]>, job: &Job, depth: fn(&str) -> f64) -> (Vec<Fate>, bool) {
    let keep = kept(refused, &job.items);
    // (what `kept` left out is skipped: the fates not set below)
    let mut fates: Vec<Option<Fate>> = (0..job.items.len()).map(|_| None).collect();
    let mark = job.mark.as_ref().filter(|_| keep.len() == job.items.len()).map(|(p, m)| (p.as_str(), *m));
    let result = {
        let all: Vec<Verified> = keep.iter().map(|&i| job.items[i].verified()).collect();
        // no put results: the fates below need none (issue 8); the peer mark, if any, in
        // the same transaction
        store.put_verified_batch(&all, &job.forward, mark).map(|_| ())
    };
    let marked = mark.is_some() && result.is_ok();
    match result {
        Ok(()) => {
            for i in keep {
                fates[i] = Some(stored(&job.items[i], depth));
            }
        }
        Err(_) => {
            for i in keep {
                let it = &job.items[i];
                if it.refs.iter().any(|r| refused.contains(&r.hash)) {
                    refused.insert(it.hash);
                    fates[i] = Some(Fate::Skipped);
                    continue;
                }
                fates[i] = Some(match store.put_verified(&[it.verified()]) {
                    Ok(_) => stored(it, depth),
                    Err(e) => {
                        refused.insert(it.hash);
                        let h = lama_core::hash::hash_hex(&it.hash);
                        Fate::Refused(e.code.clone(), format!("storing {h}: {e}"))
                    }
                });
            }
        }
    }
    (fates.into_iter().map(|f| f.unwrap_or(Fate::Skipped)).collect(), marked)
}

#[cfg(test)]
mod tests {
    //! The commit thread's refusal path (issue 8): the store refuses an already-verified item
    //! in the middle of a pass; whatever references it, directly or through a skipped item, in
    //! the same batch or a later one, is skipped; nothing else is lost.

    use lama_core::hash::sha256;
    use lama_core::microdata::{self, Value};

    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    /// A verified item as the importer hands it over (as `Importer::verify` checks it: the
    /// SHA-256 of the received text, one strict parse).
    fn item(ty: &str, props: Vec<(&str, Value)>) -> (Owned, String) {
        let mut entries = vec![(s("$type$"), s(ty))];
        entries.extend(props.into_iter().map(|(k, v)| (s(k), v)));
        let text = microdata::serialize(&Value::Dict(entries)).unwrap();
        let x = microdata::inspect(&text).unwrap();
        let hash = sha256(text.as_bytes());
        let owned = Owned { text: text.into(), hash, type_name: x.type_name, is_id: x.is_id, id_microdata: x.id_microdata, refs: x.refs, want_depth: false };
        (owned, lama_core::hash::hash_hex(&hash))
    }

    fn node(prev: Option<&str>, data: &str, depth: i64) -> (Owned, String) {
        let mut p = vec![("data", s(data)), ("depth", Value::Int(depth)), ("creationTime", Value::Int(depth + 1))];
        match prev {
            Some(prev) => {
                p.insert(0, ("prev", s(prev)));
                item("VersionNodeChange", p)
            }
            None => item("VersionNodeEdge", p),
        }
    }

    fn no_depth(_: &str) -> f64 {
        0.0
    }

    fn stored(f: &Fate) -> bool {
        matches!(f, Fate::Stored(_))
    }

    #[test]
    fn a_refused_item_skips_its_referrers_on_the_thread_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), None).unwrap();
        let c = Committer::new(store.clone(), no_depth);
        let (good, good_h) = item("Person", vec![("email", s("good@x")), ("name", s("Good"))]);
        // U+10F800 is the core's encoding of a lone surrogate (microdata/text.rs): the importer
        // hashes the text as received and accepts it, the store hashes it as Node.js writes it
        // (U+FFFD) and refuses it with LAMA-HASH
        let (bad, bad_h) = item("Person", vec![("email", s("bad@x")), ("name", s("\u{10F800}"))]);
        let (r1, r1_h) = node(None, &bad_h, 0); // references the refused item
        let (r2, r2_h) = node(Some(&r1_h), &good_h, 1); // through a skipped item
        let (u1, u1_h) = node(None, &good_h, 0); // unrelated, after them in the same batch
        let (r3, r3_h) = node(Some(&r2_h), &good_h, 2); // a later batch
        let (u2, u2_h) = node(Some(&u1_h), &good_h, 1);

        // the pass's first batch, in place; the next ones on the thread
        let (f, _) = c.commit_here_marked(1, vec![good], Vec::new(), None);
        assert!(stored(&f[0]));
        c.submit(1, vec![bad, r1, r2, u1], Vec::new());
        c.submit(1, vec![r3, u2], Vec::new());
        let f2 = c.wait().expect("the thread runs");
        match &f2[0] {
            Fate::Refused(code, message) => {
                assert_eq!(code, "LAMA-HASH");
                assert!(message.contains(&bad_h), "{message}");
            }
            _ => panic!("the store took an item it must refuse"),
        }
        assert!(matches!(f2[1], Fate::Skipped), "r1 references the refused item");
        assert!(matches!(f2[2], Fate::Skipped), "r2 references a skipped item");
        assert!(stored(&f2[3]), "an unrelated item is not lost");
        let f3 = c.wait().expect("the thread runs");
        assert!(matches!(f3[0], Fate::Skipped), "r3 references a skipped item of an earlier batch");
        assert!(stored(&f3[1]));
        for h in [&good_h, &u1_h, &u2_h] {
            assert!(store.has(h).unwrap(), "{h} is stored");
        }
        for h in [&bad_h, &r1_h, &r2_h, &r3_h] {
            assert!(!store.has(h).unwrap(), "{h} is not stored");
        }
        // a refusal counts within its pass only: in the next one, r1 (whose reference the
        // importer now found stored, say) is committed
        let (fixed, _) = item("Person", vec![("email", s("bad@x")), ("name", s("\u{FFFD}"))]);
        let (r1b, r1b_h) = node(None, &lama_core::hash::hash_hex(&fixed.hash), 0);
        c.submit(2, vec![fixed, r1b], Vec::new());
        let f4 = c.wait().expect("the thread runs");
        assert!(f4.iter().all(stored));
        assert!(store.has(&r1b_h).unwrap());
        // a batch handed over and never waited for is committed when the committer ends
        let (last, last_h) = node(Some(&u2_h), &good_h, 2);
        let big: Vec<Owned> = vec![last];
        c.submit(2, big, Vec::new());
        drop(c);
        assert!(store.has(&last_h).unwrap());
        assert!(store.verify().unwrap().is_empty(), "{:?}", store.verify().unwrap());
    }

    /// Merged batches (issue 8, session 18): handed over back to back, they share one
    /// transaction, and each gets its own fates in order; a batch that may not be merged, or
    /// one of another pass, ends the group; a refusal inside a group drops its transaction and
    /// commits its batches one by one, with the same fates as unmerged batches would get.
    #[test]
    fn merged_batches_share_a_transaction_and_a_refusal_falls_back_to_one_by_one() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), None).unwrap();
        let mut c = Committer::new(store.clone(), no_depth);
        // (long: a group here ends only by a flush or another kind of batch)
        c.set_group_timing(Duration::from_secs(60), Duration::from_secs(60));
        let people: Vec<(Owned, String)> = (0..6).map(|k| item("Person", vec![("email", s(&format!("p{k}@x"))), ("name", s("P"))])).collect();
        let (owned, hashes): (Vec<Owned>, Vec<String>) = people.into_iter().unzip();
        let mut owned = owned.into_iter();
        let txn0 = store.last_txn_id();
        // three batches back to back (the thread takes them as they come), then the fates
        c.submit_merged(1, vec![owned.next().unwrap(), owned.next().unwrap()]);
        c.submit_merged(1, vec![owned.next().unwrap()]);
        c.submit_merged(1, vec![owned.next().unwrap(), owned.next().unwrap()]);
        let sizes: Vec<usize> = (0..3).map(|_| c.wait().expect("the thread runs")).map(|f| { assert!(f.iter().all(stored)); f.len() }).collect();
        assert_eq!(sizes, vec![2, 1, 2]);
        assert_eq!(store.last_txn_id() - txn0, 1, "one transaction for the three");
        assert!(hashes[..5].iter().all(|h| store.has(h).unwrap()));
        // an unmerged batch ends a group: committed on its own, after it
        let txn1 = store.last_txn_id();
        c.submit_merged(2, vec![owned.next().unwrap()]);
        let (solo, solo_h) = item("Person", vec![("email", s("solo@x")), ("name", s("S"))]);
        c.submit(2, vec![solo], Vec::new());
        assert!(c.wait().unwrap().iter().all(stored) && c.wait().unwrap().iter().all(stored));
        assert_eq!(store.last_txn_id() - txn1, 2);
        assert!(store.has(&hashes[5]).unwrap() && store.has(&solo_h).unwrap());
        // a refusal in a group: the other batches are committed all the same, and what
        // references the refused item (in its batch or a later one) is skipped
        let (good, good_h) = item("Person", vec![("email", s("good@x")), ("name", s("Good"))]);
        let (bad, bad_h) = item("Person", vec![("email", s("bad@x")), ("name", s("\u{10F800}"))]);
        let (r1, r1_h) = node(None, &bad_h, 0);
        let (u1, u1_h) = node(None, &good_h, 0);
        let (r2, r2_h) = node(Some(&r1_h), &good_h, 1);
        c.submit_merged(3, vec![good]);
        c.submit_merged(3, vec![bad, r1, u1]);
        c.submit_merged(3, vec![r2]);
        let f1 = c.wait().unwrap();
        let f2 = c.wait().unwrap();
        let f3 = c.wait().unwrap();
        assert!(stored(&f1[0]));
        assert!(matches!(&f2[0], Fate::Refused(code, _) if code == "LAMA-HASH"));
        assert!(matches!(f2[1], Fate::Skipped) && stored(&f2[2]));
        assert!(matches!(f3[0], Fate::Skipped));
        for h in [&good_h, &u1_h] {
            assert!(store.has(h).unwrap(), "{h} is stored");
        }
        for h in [&bad_h, &r1_h, &r2_h] {
            assert!(!store.has(h).unwrap(), "{h} is not stored");
        }
        assert!(store.verify().unwrap().is_empty(), "{:?}", store.verify().unwrap());
    }

    /// A pass's last commit with the peer mark (issue 8, docs/chum-fastpath.md "Peer mark after
    /// a push"): written with the objects when the one transaction holds every item, and not
    /// at all when an item is refused or skipped (that pass is not clean).
    #[test]
    fn the_peer_mark_is_written_with_the_batch_only_when_every_item_is() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), None).unwrap();
        let c = Committer::new(store.clone(), no_depth);
        let key = "peer/epoch";
        let (good, good_h) = item("Person", vec![("email", s("good@x")), ("name", s("Good"))]);
        let (n1, n1_h) = node(None, &good_h, 0);
        let (f, marked) = c.commit_here_marked(1, vec![good, n1], Vec::new(), Some((key.to_string(), 7)));
        assert!(f.iter().all(stored) && marked);
        assert!(store.has(&n1_h).unwrap());
        assert_eq!(store.peer_mark(key).unwrap(), 7);
        // a refused item: the rest is stored item by item, the mark stays
        let (bad, bad_h) = item("Person", vec![("email", s("bad@x")), ("name", s("\u{10F800}"))]);
        let (n2, n2_h) = node(Some(&n1_h), &bad_h, 1);
        let (other, other_h) = item("Person", vec![("email", s("other@x")), ("name", s("Other"))]);
        let (f, marked) = c.commit_here_marked(2, vec![bad, n2, other], Vec::new(), Some((key.to_string(), 9)));
        assert!(!marked);
        assert!(matches!(f[0], Fate::Refused(..)) && matches!(f[1], Fate::Skipped) && stored(&f[2]));
        assert!(!store.has(&n2_h).unwrap() && store.has(&other_h).unwrap());
        assert_eq!(store.peer_mark(key).unwrap(), 7);
        // an item skipped before the transaction (its reference was refused earlier in the
        // pass): the others are committed, the mark is not
        let (n3, _) = node(Some(&n2_h), &good_h, 2);
        let (more, more_h) = item("Person", vec![("email", s("more@x")), ("name", s("More"))]);
        let (f, marked) = c.commit_here_marked(2, vec![n3, more], Vec::new(), Some((key.to_string(), 9)));
        assert!(!marked && matches!(f[0], Fate::Skipped) && stored(&f[1]));
        assert!(store.has(&more_h).unwrap());
        assert_eq!(store.peer_mark(key).unwrap(), 7);
        assert!(store.verify().unwrap().is_empty(), "{:?}", store.verify().unwrap());
    }
}
