//! Pre-commit notification (issue 10, docs/chum-fastpath.md "Speculative push").
//!
//! A write transaction of [`Store::write_batch`] (and `write_batch_serialized`, the chat
//! sender's post) that moves the head of an ID granted by an IdAccess, and changes no grant,
//! publishes a [`PendingCommit`] right before its LMDB commit: the objects and ID objects it
//! writes (hash, microdata) and the version nodes it adds to granted IDs (the new roots of
//! every principal the ID is granted to: with no grant change these are exactly the roots
//! that become accessible to anyone). The committing thread then calls the pre-commit hooks
//! ([`Store::on_pre_commit`]), commits, and records in the record whether the commit
//! succeeded. A CHUM session may push the new roots to its peer while the commit writes and
//! syncs (the NOTIFY of a chat post no longer waits for the sender's fsync).
//!
//! Nothing is built unless a hook is registered; a transaction that writes an Access,
//! IdAccess or Group object, or moves the head of a grant ID, publishes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use super::Store;
use crate::hash::Hash;

/// The types whose objects change grants (access.rs): a transaction writing one of them
/// publishes nothing.
pub(crate) const GRANT_TYPES: [&str; 3] = ["Access", "IdAccess", "Group"];

const PENDING: u8 = 0;
const COMMITTED: u8 = 1;
const FAILED: u8 = 2;

/// The state of a [`PendingCommit`]'s transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingState {
    /// Not committed yet.
    Pending,
    /// Committed; the sequence number of its last event.
    Committed(u64),
    /// The commit failed: nothing of it is in the store.
    Failed,
}

/// What a write transaction is about to commit (see the module doc). Shared (`Arc`) between
/// the committing thread and the hooks' consumers.
pub struct PendingCommit {
    objects: HashMap<Hash, (bool, String)>,
    nodes: Vec<(Hash, Hash)>,
    state: AtomicU8,
    seq: AtomicU64,
}

impl PendingCommit {
    pub(crate) fn new(objects: HashMap<Hash, (bool, String)>, nodes: Vec<(Hash, Hash)>) -> PendingCommit {
        PendingCommit { objects, nodes, state: AtomicU8::new(PENDING), seq: AtomicU64::new(0) }
    }

    /// The microdata of an object (`false`) or ID object (`true`) this transaction writes new.
    pub fn text(&self, h: &Hash) -> Option<(bool, &str)> {
        self.objects.get(h).map(|(id, t)| (*id, t.as_str()))
    }

    /// The version nodes it adds to IDs granted by an IdAccess: `(ID hash, node)`, oldest
    /// first per ID (merge nodes are not roots and are left out).
    pub fn nodes(&self) -> &[(Hash, Hash)] {
        &self.nodes
    }

    pub fn state(&self) -> PendingState {
        match self.state.load(Ordering::Acquire) {
            PENDING => PendingState::Pending,
            COMMITTED => PendingState::Committed(self.seq.load(Ordering::Acquire)),
            _ => PendingState::Failed,
        }
    }

    pub(crate) fn committed(&self, seq: u64) {
        self.seq.store(seq, Ordering::Release);
        self.state.store(COMMITTED, Ordering::Release);
    }

    pub(crate) fn failed(&self) {
        self.state.store(FAILED, Ordering::Release);
    }

    /// For tests of the consumers: a record of `objects` and `nodes` in the given state.
    pub fn for_test(objects: Vec<(Hash, bool, String)>, nodes: Vec<(Hash, Hash)>) -> PendingCommit {
        PendingCommit::new(objects.into_iter().map(|(h, id, t)| (h, (id, t))).collect(), nodes)
    }

    /// For tests of the consumers: mark the record committed at `seq` or failed.
    pub fn set_state_for_test(&self, state: PendingState) {
        match state {
            PendingState::Pending => self.state.store(PENDING, Ordering::Release),
            PendingState::Committed(s) => self.committed(s),
            PendingState::Failed => self.failed(),
        }
    }
}

type PreHook = Arc<dyn Fn(&Arc<PendingCommit>) + Send + Sync>;

/// The pre-commit hooks of an environment.
#[derive(Default)]
pub(crate) struct PreHooks {
    hooks: Mutex<Vec<(u64, PreHook)>>,
    any: AtomicBool,
    next: AtomicU64,
}

/// A registered pre-commit hook ([`Store::on_pre_commit`]); dropping it unregisters it.
pub struct PreCommitHook {
    store: Store,
    id: u64,
}

impl Drop for PreCommitHook {
    fn drop(&mut self) {
        let p = &self.store.shared.feed.pre;
        let mut hooks = p.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks.retain(|(id, _)| *id != self.id);
        p.any.store(!hooks.is_empty(), Ordering::Release);
    }
}

impl Store {
    /// Call `hook(record)` in the committing thread right before the commit of every write
    /// transaction of this process that publishes a [`PendingCommit`] (see the module doc),
    /// until the returned [`PreCommitHook`] is dropped. The hook must not block and must not
    /// write to the store (it hands the record to another thread: e.g. a channel).
    pub fn on_pre_commit(&self, hook: impl Fn(&Arc<PendingCommit>) + Send + Sync + 'static) -> PreCommitHook {
        let p = &self.shared.feed.pre;
        let id = p.next.fetch_add(1, Ordering::Relaxed);
        p.hooks.lock().unwrap_or_else(|e| e.into_inner()).push((id, Arc::new(hook)));
        p.any.store(true, Ordering::Release);
        PreCommitHook { store: self.clone(), id }
    }

    /// Some pre-commit hook is registered (else no record is built).
    pub(crate) fn wants_pending(&self) -> bool {
        self.shared.feed.pre.any.load(Ordering::Acquire)
    }

    /// Publish `record` to the pre-commit hooks.
    pub(crate) fn publish_pending(&self, record: PendingCommit) -> Arc<PendingCommit> {
        let record = Arc::new(record);
        let hooks: Vec<PreHook> = {
            let h = self.shared.feed.pre.hooks.lock().unwrap_or_else(|e| e.into_inner());
            h.iter().map(|(_, f)| f.clone()).collect()
        };
        for f in hooks {
            f(&record);
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::sha256_hex;
    use crate::microdata::{self, Value};

    fn s(v: &str) -> Value {
        Value::Str(v.to_string())
    }

    fn obj(pairs: Vec<(&str, Value)>) -> Value {
        Value::Dict(pairs.into_iter().map(|(k, v)| (s(k), v)).collect())
    }

    fn h(o: &Value) -> String {
        sha256_hex(microdata::serialize(o).unwrap().as_bytes())
    }

    /// Write `o` as the next version of its ID; returns (node, ID hash).
    fn version(st: &Store, o: Value, extra: Vec<Value>) -> (String, String) {
        let id = sha256_hex(microdata::id_microdata(&o).unwrap().as_bytes());
        let head = st.get_head(&id).unwrap();
        let mut node = vec![("$type$", s(if head.is_some() { "VersionNodeChange" } else { "VersionNodeEdge" })), ("data", s(&h(&o))), ("depth", Value::Int(0)), ("creationTime", Value::Int(1))];
        if let Some(p) = &head {
            node.insert(1, ("prev", s(p)));
        }
        let node = obj(node);
        let n = h(&node);
        let mut objs = extra;
        objs.extend([o, node]);
        st.write_batch(&objs, &[(id.clone(), head, n.clone())]).unwrap();
        (n, id)
    }

    const PB: &str = "f2834d7e717944a95011038735244928de8c721cd357da676097932c45d6e652";

    #[test]
    fn a_write_to_a_granted_id_publishes_its_record_before_the_commit() {
        let d = tempfile::tempdir().unwrap();
        let st = Store::open(d.path(), None).unwrap();
        let ci = |head: &str| obj(vec![("$type$", s("ChannelInfo")), ("id", s("topic")), ("head", s(head))]);
        let m0 = obj(vec![("$type$", s("ChatMessage")), ("text", s("zero")), ("sender", s(PB))]);
        st.put_objects(&[m0.clone()]).unwrap();
        let (_, id) = version(&st, ci(&h(&m0)), vec![]);
        let seen: Arc<Mutex<Vec<(Arc<PendingCommit>, PendingState, bool)>>> = Arc::default();
        let (s2, st2) = (seen.clone(), st.clone());
        let hook = st.on_pre_commit(move |p| {
            // in the committing thread, before the commit: none of it is visible yet
            let visible = p.nodes().iter().any(|(_, n)| st2.has(&n.to_hex()).unwrap());
            s2.lock().unwrap().push((p.clone(), p.state(), visible));
        });
        // not granted yet: nothing is published
        let m1 = obj(vec![("$type$", s("ChatMessage")), ("text", s("one")), ("sender", s(PB))]);
        version(&st, ci(&h(&m1)), vec![m1]);
        assert!(seen.lock().unwrap().is_empty());
        // a grant change publishes nothing either
        version(&st, obj(vec![("$type$", s("IdAccess")), ("id", s(&id)), ("person", Value::List(vec![s(PB)])), ("group", Value::List(vec![]))]), vec![]);
        assert!(seen.lock().unwrap().is_empty());
        // a post to the granted ID: its record, before the commit
        let m2 = obj(vec![("$type$", s("ChatMessage")), ("text", s("two")), ("sender", s(PB))]);
        let (n2, _) = version(&st, ci(&h(&m2)), vec![m2.clone()]);
        {
            let got = seen.lock().unwrap();
            assert_eq!(got.len(), 1);
            let (p, state, visible) = &got[0];
            assert_eq!((*state, *visible), (PendingState::Pending, false));
            assert_eq!(p.nodes(), &[(Hash::parse(&id).unwrap(), Hash::parse(&n2).unwrap())]);
            let t = p.text(&Hash::parse(&h(&m2)).unwrap()).unwrap();
            assert_eq!(t, (false, microdata::serialize(&m2).unwrap().as_str()));
            assert!(p.text(&Hash::parse(&n2).unwrap()).is_some());
            assert_eq!(p.state(), PendingState::Committed(st.last_seq().unwrap()));
        }
        // a batch that also writes a grant object publishes nothing
        let m3 = obj(vec![("$type$", s("ChatMessage")), ("text", s("three")), ("sender", s(PB))]);
        let acc = obj(vec![("$type$", s("Access")), ("object", s(&h(&m3))), ("person", Value::List(vec![s(PB)])), ("group", Value::List(vec![]))]);
        version(&st, ci(&h(&m3)), vec![m3, acc]);
        assert_eq!(seen.lock().unwrap().len(), 1);
        // no hook, no record
        drop(hook);
        assert!(!st.wants_pending());
    }
}
