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

use lama_core::microdata::HashRef;
use lama_core::store::{Store, Verified};

type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A verified item as the store takes it, owned by the batch.
pub(crate) struct Owned {
    pub text: String,
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
}

struct Running {
    tx: Option<mpsc::Sender<Job>>,
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
}

impl Committer {
    pub(crate) fn new(store: Store, depth: fn(&str) -> f64) -> Committer {
        Committer { store, running: std::cell::OnceCell::new(), depth, refused: Arc::new(Mutex::new((u64::MAX, HashSet::default()))) }
    }

    fn running(&self) -> &Running {
        self.running.get_or_init(|| {
            let (tx, jobs) = mpsc::channel::<Job>();
            let (done, rx) = mpsc::channel::<Vec<Fate>>();
            let store = self.store.clone();
            let depth = self.depth;
            let refused = self.refused.clone();
            let thread = thread::Builder::new()
                .name("lama-chum-commit".into())
                .spawn(move || run(store, jobs, done, depth, refused))
                .expect("spawning the CHUM commit thread");
            Running { tx: Some(tx), rx, thread: Some(thread) }
        })
    }

    /// Hand a batch over (`forward`: heads to fast-forward in its transaction,
    /// `Store::put_verified_forward`). `pass` numbers the importer's passes: a refusal counts
    /// within its pass only.
    pub(crate) fn submit(&self, pass: u64, items: Vec<Owned>, forward: Vec<([u8; 32], [u8; 32])>) {
        // if the thread is gone (it panicked), `wait` says so: nothing of the batch is stored
        if let Some(tx) = self.running().tx.as_ref() {
            let _ = tx.send(Job { pass, items, forward });
        }
    }

    /// Commit a batch on this thread, now (only while no batch is out: small batches, where a
    /// thread hop would cost more than the commit, and a pass's first and last ones).
    pub(crate) fn commit_here(&self, pass: u64, items: Vec<Owned>, forward: Vec<([u8; 32], [u8; 32])>) -> Vec<Fate> {
        let mut r = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        if r.0 != pass {
            *r = (pass, HashSet::default());
        }
        commit(&self.store, &mut r.1, &Job { pass, items, forward }, self.depth)
    }

    /// The fates of the oldest batch not reported yet, waiting for its commit; `None` if the
    /// thread is gone.
    pub(crate) fn wait(&self) -> Option<Vec<Fate>> {
        self.running().rx.recv().ok()
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

fn run(store: Store, jobs: mpsc::Receiver<Job>, done: mpsc::Sender<Vec<Fate>>, depth: fn(&str) -> f64, refused: Arc<Mutex<(u64, HashSet<[u8; 32]>)>>) {
    for job in jobs {
        let fates = {
            let mut r = refused.lock().unwrap_or_else(|e| e.into_inner());
            if r.0 != job.pass {
                *r = (job.pass, HashSet::default());
            }
            commit(&store, &mut r.1, &job, depth)
        };
        // the importer may be gone (the session was dropped): the commit is done all the same
        let _ = done.send(fates);
    }
}

/// One batch: one transaction for every item whose references were not refused; if the store
/// refuses it (pre-verified, so this is rare), item by item, dependencies first.
fn commit(store: &Store, refused: &mut HashSet<[u8; 32]>, job: &Job, depth: fn(&str) -> f64) -> Vec<Fate> {
    let mut fates: Vec<Option<Fate>> = (0..job.items.len()).map(|_| None).collect();
    let mut keep: Vec<usize> = Vec::with_capacity(job.items.len());
    for (i, it) in job.items.iter().enumerate() {
        if !refused.is_empty() && it.refs.iter().any(|r| refused.contains(&r.hash)) {
            refused.insert(it.hash);
            fates[i] = Some(Fate::Skipped);
        } else {
            keep.push(i);
        }
    }
    let result = {
        let all: Vec<Verified> = keep.iter().map(|&i| job.items[i].verified()).collect();
        if job.forward.is_empty() {
            store.put_verified(&all).map(|_| ())
        } else {
            store.put_verified_forward(&all, &job.forward).map(|_| ())
        }
    };
    let stored = |it: &Owned| Fate::Stored(if it.want_depth { Some(depth(&it.text)) } else { None });
    match result {
        Ok(()) => {
            for i in keep {
                fates[i] = Some(stored(&job.items[i]));
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
                    Ok(_) => stored(it),
                    Err(e) => {
                        refused.insert(it.hash);
                        let h = lama_core::hash::hash_hex(&it.hash);
                        Fate::Refused(e.code.clone(), format!("storing {h}: {e}"))
                    }
                });
            }
        }
    }
    fates.into_iter().map(|f| f.unwrap_or(Fate::Skipped)).collect()
}
