//! The speculative push (docs/chum-fastpath.md "Speculative push", issue 10): a NOTIFY of
//! the new version nodes of a write of this process sent while that write commits, from its
//! pre-commit record (lama-core store/pending.rs). A child module of the exporter.
//!
//! Rules (each is what makes it safe):
//! * only on a "notify-closure" subscription, with `known` not empty, and only when every
//!   root's pruned closure goes inline (the peer then asks nothing about an object that may
//!   not be committed here yet): else nothing is sent and the NOTIFY after the commit
//!   happens as before;
//! * only version nodes of IDs granted to the peer in the committed store (the record is only
//!   published for a write that changes no grant);
//! * the NOTIFY's `mark` is the exporter's `notify_mark`, a committed sequence number read
//!   before: the peer never persists a mark covering a number not committed here;
//! * the roots join `known` (so the NOTIFY after the commit finds them held: "no echo");
//! * until a receipt with a mark at least as high as its commit's sequence number confirms
//!   it, a speculated root whose commit is done is listed again in every NOTIFY whose mark
//!   covers it (it costs the peer one lookup): a peer whose import of the speculative NOTIFY
//!   failed gets it again before its mark passes it. A NOTIFY carrying only such roots goes out
//!   [`crate::session`]'s `MARK_CATCHUP` after the last NOTIFY, so the peer's mark catches up.

use std::sync::Arc;

use lama_core::hash::Hash;
use lama_core::microdata::RefKind;
use lama_core::store::{EntryKind, PendingCommit, PendingState};
use serde_json::json;

use super::{note_sent, push_json_str, write_closure_root, Exporter, NOTIFY_INLINE_CHARS, NOTIFY_INLINE_ENTRIES};
use crate::session::RootRow;
use crate::{ChumLog, Stats};

/// Speculated roots kept until confirmed (the oldest are dropped beyond: a failed commit's
/// roots are never confirmed).
const SPEC_MAX: usize = 256;

/// One speculated root: its row and the record of the write that makes it.
pub(crate) struct SpecRoot {
    row: RootRow,
    pending: Arc<PendingCommit>,
}

#[derive(Default)]
pub(crate) struct Spec {
    roots: Vec<SpecRoot>,
}

/// The closure of `root` minus `known`, dependencies first, as
/// `Store::children_tagged_except_within` walks it, reading each object from `p` first and
/// the committed store second; `None` if more than `limit` entries, a BLOB/CLOB, or an object
/// found in neither. With the texts of the root and of every listed object.
#[allow(clippy::type_complexity)]
fn overlay_walk(
    ex: &Exporter,
    p: &PendingCommit,
    root: &Hash,
    limit: usize,
) -> lama_core::Result<Option<(String, Vec<(RefKind, Hash)>, Vec<String>)>> {
    let text = |h: &Hash, id: bool| -> lama_core::Result<Option<String>> {
        if let Some((is_id, t)) = p.text(h) {
            return Ok((is_id == id).then(|| t.to_string()));
        }
        Ok(match ex.store.texts(&[&h.to_hex()])?.pop().flatten() {
            Some((EntryKind::Id, t)) if id => Some(t),
            Some((EntryKind::Object, t)) if !id => Some(t),
            _ => None,
        })
    };
    let Some(root_text) = text(root, false)? else { return Ok(None) };
    let refs = |t: &str| -> lama_core::Result<Vec<(RefKind, Hash)>> {
        Ok(lama_core::microdata::reference_hashes(t)?.into_iter().map(|(k, x)| (k, Hash(x))).collect())
    };
    let mut seen = std::collections::HashSet::new();
    seen.insert(*root);
    let mut out: Vec<(RefKind, Hash)> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    type Frame = (Option<(RefKind, Hash, String)>, Vec<(RefKind, Hash)>, usize);
    let mut stack: Vec<Frame> = vec![(None, refs(&root_text)?, 0)];
    while let Some(frame) = stack.last_mut() {
        if frame.2 == frame.1.len() {
            let done = stack.pop().expect("present").0;
            if let Some((k, h, t)) = done {
                out.push((k, h));
                texts.push(t);
            }
            continue;
        }
        let (kind, h) = frame.1[frame.2];
        frame.2 += 1;
        if ex.known.contains(&h) || !seen.insert(h) {
            continue;
        }
        if seen.len() > limit.saturating_add(1) {
            return Ok(None);
        }
        match kind {
            RefKind::Blob | RefKind::Clob => return Ok(None),
            RefKind::Obj | RefKind::Id => {
                let Some(t) = text(&h, kind == RefKind::Id)? else { return Ok(None) };
                let r = refs(&t)?;
                stack.push((Some((kind, h, t)), r, 0));
            }
        }
    }
    Ok(Some((root_text, out, texts)))
}

impl Exporter {
    /// A write of this process is about to commit (`p`): the NOTIFY args (as
    /// [`changed_roots`](Self::changed_roots) returns them) that push its new version nodes
    /// granted to the peer now, with their closures inline, or `None` (see the module doc).
    pub fn speculate(&mut self, p: &Arc<PendingCommit>, log: &mut ChumLog, stats: &mut Stats) -> lama_core::Result<Option<String>> {
        if !self.subscribed || self.done || !self.notify_closure || p.state() != PendingState::Pending {
            return Ok(None);
        }
        if self.known.is_empty() && self.receipt_mark > 0 {
            let _ = self.seed_known(self.receipt_mark);
        }
        if self.known.is_empty() {
            return Ok(None);
        }
        let Some(person) = Hash::parse(&self.remote_person) else { return Ok(None) };
        let ids: Vec<Hash> = p.nodes().iter().map(|(id, _)| *id).collect();
        let types = self.store.granted_id_types(&person, &ids)?;
        let mut rows: Vec<RootRow> = Vec::new();
        for ((id, node), t) in p.nodes().iter().zip(types) {
            if let Some(t) = t {
                if !self.known.contains(node) && !rows.iter().any(|r| r.1 == node.to_hex()) {
                    rows.push(("version_node".to_string(), node.to_hex(), Some(id.to_hex()), t));
                }
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        // the closures, within the NOTIFY's bounds, all inline
        let mut entries = 0usize;
        let mut chars = 0usize;
        let mut walks = Vec::with_capacity(rows.len());
        for r in &rows {
            let node = Hash::parse(&r.1).expect("a hash");
            let Some((root_text, walk, texts)) = overlay_walk(self, p, &node, NOTIFY_INLINE_ENTRIES.saturating_sub(entries))? else {
                return Ok(None);
            };
            entries += walk.len() + 1;
            chars += root_text.len() + texts.iter().map(String::len).sum::<usize>();
            if entries > NOTIFY_INLINE_ENTRIES || chars > NOTIFY_INLINE_CHARS {
                return Ok(None);
            }
            walks.push((node, root_text, walk, texts));
        }
        // roots committed before and not confirmed yet, covered by this NOTIFY's mark
        let mut all = self.spec_relisted()?;
        all.retain(|r| !rows.iter().any(|x| x.1 == r.1));
        all.extend(rows.iter().cloned());
        let wire = self.unlock_rows(all);
        let mut args = String::from("[");
        args.push_str(&json!({"since": self.notify_base, "mark": self.notify_mark, "roots": wire}).to_string());
        args.pop();
        args.push_str(",\"closure\":{");
        for (i, (node, root_text, walk, texts)) in walks.into_iter().enumerate() {
            let h = node.to_hex();
            note_sent(log, stats, false, h.clone());
            for (k, c) in &walk {
                note_sent(log, stats, *k == RefKind::Id, c.to_hex());
                self.accessible.insert(*c);
            }
            if i > 0 {
                args.push(',');
            }
            push_json_str(&mut args, &h);
            args.push(':');
            let data: Vec<Option<String>> = texts.into_iter().map(Some).collect();
            write_closure_root(&mut args, Some(&root_text), &walk, &data, false, None);
            // what the peer will hold once it imported this: the root and its pruned closure
            // (with `known`, downward closed)
            self.known.extend(walk.iter().map(|(_, c)| *c));
            self.known.insert(node);
        }
        args.push_str("}}]");
        self.notify_base = self.notify_mark;
        for row in rows {
            self.spec.roots.push(SpecRoot { row, pending: p.clone() });
        }
        if self.spec.roots.len() > SPEC_MAX {
            let n = self.spec.roots.len() - SPEC_MAX;
            self.spec.roots.drain(..n);
        }
        Ok(Some(args))
    }

    /// The speculated roots whose commit is done, whose sequence number this exporter's
    /// `notify_mark` covers, and that are still granted to the peer: every NOTIFY with that
    /// mark lists them again until a receipt confirms them (a failed commit's are dropped).
    pub(super) fn spec_relisted(&mut self) -> lama_core::Result<Vec<RootRow>> {
        self.spec.roots.retain(|s| s.pending.state() != PendingState::Failed);
        let mark = self.notify_mark;
        let due: Vec<&SpecRoot> = self.spec.roots.iter().filter(|s| matches!(s.pending.state(), PendingState::Committed(c) if c <= mark)).collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let Some(person) = Hash::parse(&self.remote_person) else { return Ok(Vec::new()) };
        let ids: Vec<Hash> = due.iter().filter_map(|s| s.row.2.as_deref().and_then(Hash::parse)).collect();
        let types = self.store.granted_id_types(&person, &ids)?;
        Ok(due.into_iter().zip(types).filter(|(_, t)| t.is_some()).map(|(s, _)| s.row.clone()).collect())
    }

    /// A receipt without errors with mark `m`: the speculated roots committed at or before
    /// `m` are confirmed.
    pub(super) fn spec_confirm(&mut self, m: u64) {
        self.spec.roots.retain(|s| !matches!(s.pending.state(), PendingState::Committed(c) if c <= m) && s.pending.state() != PendingState::Failed);
    }

    /// A NOTIFY that lists the speculated roots not confirmed yet is due (see the module
    /// doc): some are committed and covered by `notify_mark`.
    pub fn catch_up_due(&self) -> bool {
        let mark = self.notify_mark;
        self.subscribed && !self.done && self.spec.roots.iter().any(|s| matches!(s.pending.state(), PendingState::Committed(c) if c <= mark))
    }

    /// Some speculated root's commit is still running (the session holds its `exported`
    /// trace event back until it is done: docs/tracing.md counts from the commit).
    pub fn spec_unsettled(&self) -> bool {
        self.spec.roots.iter().any(|s| s.pending.state() == PendingState::Pending)
    }

    /// The catch-up NOTIFY (see the module doc): what [`changed_roots`](Self::changed_roots)
    /// sends, or if that is nothing, a NOTIFY of the speculated roots not confirmed yet up to
    /// `notify_mark` (the peer holds them: it looks them up, writes its mark and confirms).
    pub fn catch_up(&mut self, log: &mut ChumLog, stats: &mut Stats) -> lama_core::Result<Option<String>> {
        if let Some(args) = self.changed_roots(log, stats)? {
            return Ok(Some(args));
        }
        let rows = self.spec_relisted()?;
        if rows.is_empty() || !self.subscribed || self.done {
            return Ok(None);
        }
        let wire = self.unlock_rows(rows);
        let args = format!("[{}]", json!({"since": self.notify_base, "mark": self.notify_mark, "roots": wire}));
        self.notify_base = self.notify_mark;
        Ok(Some(args))
    }
}
