//! The access index (docs/chum-session.md §1, docs/store-format.md "access index"; objects.md
//! §6, chum.md §4.2, §5.1).
//!
//! Grants are the versioned objects `Access{object, person[], group[]}`,
//! `IdAccess{id, person[], group[]}` and `Group{name, person[]}`; only the current version (the
//! data of the head node) of each counts. The index is kept in the write transaction that moves
//! a head (`write_batch`), so "who may see what" is always the committed grants:
//!
//! - `agrants`: grant ID → what its current version grants (kind, target, principals).
//! - `amembers`: person ‖ group → sequence number at which the person joined the group.
//! - `anodes`: granted ID → IdAccess grant ID (a marker), and granted ID ‖ version node →
//!   when it was indexed, so a head move only walks the nodes that are new.
//! - `aseq`: granted ID ‖ seq ‖ pos → version node (non-merge nodes only): the nodes of a
//!   granted ID in the order indexed, so the nodes added after S are one range scan per ID.
//! - `aroots`: principal ‖ seq ‖ idx → root (`u`/`v` of an Access, `i` of an IdAccess; the
//!   version-node roots are not stored per principal, see `aids`). A principal is a person or
//!   a group ID hash; `seq` is the event-feed sequence number of the head move that made the
//!   root accessible, so the roots added after S are one range scan per principal.
//! - `arefs`: principal ‖ root hash → seq ‖ idx ‖ count: where the root sits in `aroots`, and
//!   how many grants give it (a root granted twice stays until both are revoked).
//! - `aids`: principal ‖ granted ID → seq ‖ idx of its `i` root: the IDs an IdAccess grants to
//!   the principal. Its version-node roots are the `aseq` entries of the ID, each accessible
//!   from the later of the grant's and the node's sequence number (a head move of a granted
//!   ID writes `anodes` and `aseq` only, nothing per principal).
//! - `peers`: per-peer high-water marks (`Store::peer_mark`).
//!
//! lama honours group grants (the reference ignores them without an objectFilter, objects.md
//! §6.2 item 4): a person sees the roots of every group whose current version lists them, from
//! the later of the root's sequence and the sequence of joining.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use heed::{RoTxn, RwTxn};

use super::feed::last_seq_in;
use super::{Dbs, Store, K_ID, K_OBJECT};
use crate::error::{Error, Result};
use crate::hash::{sha256, Hash};
use crate::microdata::{self, RefKind};

/// `meta` key marking a store whose access index is maintained (value `1`).
pub(crate) const META_ACCESS: &[u8] = b"access";

/// Grant kinds (first byte of an `agrants` value).
const G_ACCESS: u8 = b'A';
const G_IDACCESS: u8 = b'I';
const G_GROUP: u8 = b'G';

/// `anodes` flags of a version node: a merge node is walked through but never a root
/// (objects.md §4.1).
const N_NODE: u8 = b'N';
const N_MERGE: u8 = b'M';

/// Every table of the access index (cleared when a format-1 store is upgraded).
fn index_dbs(dbs: &Dbs) -> [super::Db; 7] {
    [dbs.agrants, dbs.amembers, dbs.anodes, dbs.aroots, dbs.arefs, dbs.aids, dbs.aseq]
}

use super::VERSION_NODE_TYPES;

/// The kind of an accessible root (chum.md §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootKind {
    /// An unversioned object: `{type, hash, oneType}`.
    Unversioned,
    /// One version of a versioned object: `{type, hash, idHash, oneType}`.
    Versioned,
    /// An ID object (IdAccess): `{type, idHash, oneType}`.
    Id,
    /// A version node of an IdAccess-granted ID: `{type, node, dataIdHash, dataType}`.
    VersionNode,
}

impl RootKind {
    /// `"unversioned"`, `"versioned"`, `"id"` or `"version_node"` (the wire's `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Unversioned => "unversioned",
            RootKind::Versioned => "versioned",
            RootKind::Id => "id",
            RootKind::VersionNode => "version_node",
        }
    }

    fn byte(self) -> u8 {
        match self {
            RootKind::Unversioned => b'u',
            RootKind::Versioned => b'v',
            RootKind::Id => b'i',
            RootKind::VersionNode => b'n',
        }
    }

    fn from_byte(b: u8) -> Option<RootKind> {
        match b {
            b'u' => Some(RootKind::Unversioned),
            b'v' => Some(RootKind::Versioned),
            b'i' => Some(RootKind::Id),
            b'n' => Some(RootKind::VersionNode),
            _ => None,
        }
    }
}

/// One accessible root (docs/chum-session.md §1): `hash` is the object, ID or node hash;
/// `id_hash` the object's ID hash (`Versioned`) or the node's `dataIdHash` (`VersionNode`);
/// `type_name` the object's type, the ID object's type or the node's `dataType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub kind: RootKind,
    pub hash: Hash,
    pub id_hash: Option<Hash>,
    pub type_name: String,
}

impl Root {
    /// `aroots` value: hash (32) ‖ kind byte ‖ id hash (32, `v`/`n` only) ‖ type name (UTF-8).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(65 + self.type_name.len() + 1);
        v.extend_from_slice(&self.hash.0);
        v.push(self.kind.byte());
        if let Some(id) = &self.id_hash {
            v.extend_from_slice(&id.0);
        }
        v.extend_from_slice(self.type_name.as_bytes());
        v
    }

    fn decode(v: &[u8]) -> Option<Root> {
        let hash = Hash::from_slice(v.get(..32)?)?;
        let kind = RootKind::from_byte(*v.get(32)?)?;
        let (id_hash, rest) = match kind {
            RootKind::Versioned | RootKind::VersionNode => (Some(Hash::from_slice(v.get(33..65)?)?), &v[65..]),
            _ => (None, &v[33..]),
        };
        let type_name = std::str::from_utf8(rest).ok()?;
        if type_name.is_empty() {
            return None;
        }
        Some(Root { kind, hash, id_hash, type_name: type_name.to_string() })
    }
}

/// What the current version of a grant ID grants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    kind: u8,
    /// Access: the object; IdAccess: the ID; Group: none.
    target: Option<Hash>,
    /// Access/IdAccess: persons ∪ groups; Group: persons. Sorted, deduplicated.
    principals: Vec<Hash>,
}

impl Grant {
    /// `agrants` value: kind byte ‖ target (32, Access/IdAccess) ‖ principals (32 each, sorted).
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(33 + 32 * self.principals.len());
        v.push(self.kind);
        if let Some(t) = &self.target {
            v.extend_from_slice(&t.0);
        }
        for p in &self.principals {
            v.extend_from_slice(&p.0);
        }
        v
    }

    fn decode(v: &[u8]) -> Option<Grant> {
        let (&kind, rest) = v.split_first()?;
        let (target, rest) = match kind {
            G_ACCESS | G_IDACCESS => (Some(Hash::from_slice(rest.get(..32)?)?), &rest[32..]),
            G_GROUP => (None, rest),
            _ => return None,
        };
        if rest.len() % 32 != 0 {
            return None;
        }
        let principals: Vec<Hash> = rest.chunks(32).map(|c| Hash::from_slice(c).unwrap()).collect();
        if principals.is_empty() || principals.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        Some(Grant { kind, target, principals })
    }
}

fn corrupt(what: String) -> Error {
    Error::store("LAMA-CORRUPT", what)
}

fn bad_grant(msg: String) -> Error {
    Error::store("LAMA-GRANT", msg)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        v.extend_from_slice(p);
    }
    v
}

/// The text of an `O` (or `I`) entry, if that is what is stored under `h`.
fn text_of<'t>(dbs: &Dbs, txn: &'t RoTxn, h: &[u8; 32], want: u8) -> Result<Option<&'t str>> {
    match dbs.objects.get(txn, h)? {
        Some([k, rest @ ..]) if *k == want => {
            Ok(Some(std::str::from_utf8(rest).map_err(|_| corrupt(format!("entry {} is not UTF-8", Hash(*h))))?))
        }
        _ => Ok(None),
    }
}

/// The start of every ID object's microdata (objects.md §1.1, §2.2), up to the type name.
const ID_HEAD: &[u8] = b"<div data-id-object=\"true\" itemscope itemtype=\"//refin.io/";

/// The grant kind of an ID hash: the type of its stored ID object, if that is a grant type.
/// A byte comparison of the header, since it runs for every head move: an ID hash is the hash
/// of the canonical ID microdata, so the ID object of a real grant starts exactly so.
fn grant_kind_of(dbs: &Dbs, txn: &RoTxn, id: &[u8; 32]) -> Result<Option<u8>> {
    let Some([K_ID, rest @ ..]) = dbs.objects.get(txn, id)? else { return Ok(None) };
    let Some(t) = rest.strip_prefix(ID_HEAD) else { return Ok(None) };
    Ok(if t.starts_with(b"Access\">") {
        Some(G_ACCESS)
    } else if t.starts_with(b"IdAccess\">") {
        Some(G_IDACCESS)
    } else if t.starts_with(b"Group\">") {
        Some(G_GROUP)
    } else {
        None
    })
}

/// `data` of a stored version node (objects.md §3 items 9-11).
fn node_data(dbs: &Dbs, txn: &RoTxn, node: &[u8; 32]) -> Result<Option<Hash>> {
    let Some(text) = text_of(dbs, txn, node, K_OBJECT)? else { return Ok(None) };
    Ok(microdata::references(text)?
        .into_iter()
        .find(|r| r.kind == RefKind::Obj && r.path == "data")
        .and_then(|r| Hash::parse(&r.hash)))
}

fn type_name_of(kind: u8) -> &'static str {
    match kind {
        G_ACCESS => "Access",
        G_IDACCESS => "IdAccess",
        _ => "Group",
    }
}

/// The grant made by the version `head` of the grant ID `id` (of kind `kind`), checked
/// (objects.md §6.1, app-layer.md §4.4): the data is a `kind` object whose ID is `id`; a
/// non-empty Access must target a stored ONE object, a non-empty IdAccess a stored ID object.
/// `None` when it grants nothing (empty lists). `StoreError LAMA-GRANT` for a bad grant.
fn parse_grant(dbs: &Dbs, txn: &RoTxn, kind: u8, id: &Hash, head: &[u8; 32]) -> Result<Option<Grant>> {
    let want = type_name_of(kind);
    let data = node_data(dbs, txn, head)?
        .ok_or_else(|| bad_grant(format!("the head {} of the {want} {id} is not a stored version node", Hash(*head))))?;
    let text = text_of(dbs, txn, &data.0, K_OBJECT)?
        .ok_or_else(|| bad_grant(format!("the version {data} of the {want} {id} is not a stored object")))?;
    let (t, _) = microdata::type_of(text)?;
    let id_text = microdata::id_microdata_of(text)?;
    if t != want || id_text.map(|s| sha256(microdata::js_utf8(&s).as_bytes())) != Some(id.0) {
        return Err(bad_grant(format!("the version {data} of the {want} {id} is a {t} of another ID")));
    }
    let mut target = None;
    let mut principals = Vec::new();
    for r in microdata::references(text)? {
        let h = Hash::parse(&r.hash).ok_or_else(|| corrupt(format!("entry {data} has a malformed reference")))?;
        let top = r.path.split('.').next().unwrap_or("");
        match (kind, top) {
            (G_ACCESS, "object") | (G_IDACCESS, "id") => target = Some(h),
            (_, "person") | (G_ACCESS | G_IDACCESS, "group") => principals.push(h),
            _ => {}
        }
    }
    principals.sort();
    principals.dedup();
    if principals.is_empty() {
        return Ok(None);
    }
    if let Some(t) = &target {
        let want_kind = if kind == G_ACCESS { K_OBJECT } else { K_ID };
        if text_of(dbs, txn, &t.0, want_kind)?.is_none() {
            return Err(bad_grant(format!(
                "the {want} {id} grants {t}, which is not a stored {}",
                if kind == G_ACCESS { "ONE object" } else { "ID object" }
            )));
        }
        if kind == G_ACCESS {
            // the root needs the target's recipe (is it versioned?): a grant on an object of a
            // type this process does not know is refused (or, at upgrade, not indexed)
            object_root(dbs, txn, t)?;
        }
    }
    Ok(Some(Grant { kind, target, principals }))
}

/// The root an Access grants for its stored target object (chum.md §5.1 item 1).
fn object_root(dbs: &Dbs, txn: &RoTxn, h: &Hash) -> Result<Root> {
    let text = text_of(dbs, txn, &h.0, K_OBJECT)?.ok_or_else(|| corrupt(format!("object {h} is gone")))?;
    let (t, _) = microdata::type_of(text)?;
    let id_hash = microdata::id_microdata_of(text)?.map(|s| Hash(sha256(microdata::js_utf8(&s).as_bytes())));
    let kind = if id_hash.is_some() { RootKind::Versioned } else { RootKind::Unversioned };
    Ok(Root { kind, hash: *h, id_hash, type_name: t })
}

/// Type of the stored ID object `x`.
fn id_type(dbs: &Dbs, txn: &RoTxn, x: &Hash) -> Result<String> {
    let text = text_of(dbs, txn, &x.0, K_ID)?.ok_or_else(|| corrupt(format!("ID object {x} is gone")))?;
    Ok(microdata::type_of(text)?.0)
}

/// objects.md §4.1 version walk from `head`: pre-order (a node, then its parents: `prev`, or
/// the `nodes` of a merge in stored order), each node once, not entering nodes for which
/// `known` is true nor nodes that are not stored (a partly imported history). Returns
/// `(node, is_merge)` oldest first (the pre-order reversed).
fn walk_nodes(
    dbs: &Dbs,
    txn: &RoTxn,
    head: &Hash,
    known: &mut dyn FnMut(&Hash) -> Result<bool>,
) -> Result<Vec<(Hash, bool)>> {
    let mut out = Vec::new();
    let mut seen: HashSet<Hash> = HashSet::new();
    let mut stack = vec![*head];
    while let Some(n) = stack.pop() {
        if !seen.insert(n) || known(&n)? {
            continue;
        }
        let Some(text) = text_of(dbs, txn, &n.0, K_OBJECT)? else { continue };
        let (t, _) = microdata::type_of(text)?;
        if !VERSION_NODE_TYPES.contains(&t.as_str()) {
            return Err(corrupt(format!("entry {n} is a {t}, not a version node")));
        }
        out.push((n, t == "VersionNodeMerge"));
        let parents: Vec<Hash> = microdata::references(text)?
            .into_iter()
            .filter(|r| r.kind == RefKind::Obj && (r.path == "prev" || r.path.starts_with("nodes.")))
            .map(|r| Hash::parse(&r.hash).ok_or_else(|| corrupt(format!("entry {n} has a malformed reference"))))
            .collect::<Result<_>>()?;
        stack.extend(parents.into_iter().rev());
    }
    out.reverse();
    Ok(out)
}

/// Positions handed out in `aroots` for one sequence number: principal → next idx.
#[derive(Default)]
pub(crate) struct Idx(HashMap<Hash, u32>);

impl Idx {
    fn next(&mut self, p: &Hash) -> u32 {
        let e = self.0.entry(*p).or_insert(0);
        *e += 1;
        *e - 1
    }
}

/// Add one grant of `root` to principal `p` at `seq` (a new root gets an `aroots` entry; a
/// root already there gets its count raised and keeps its sequence number).
fn add_ref(dbs: &Dbs, txn: &mut RwTxn, p: &Hash, root: &Root, seq: u64, idx: &mut Idx) -> Result<()> {
    let rk = cat(&[&p.0, &root.hash.0]);
    let value = match dbs.arefs.get(txn, &rk)? {
        Some(v) if v.len() == 16 => {
            let count = u32::from_be_bytes(v[12..16].try_into().unwrap());
            cat(&[&v[..12], &count.saturating_add(1).to_be_bytes()])
        }
        Some(_) => return Err(corrupt(format!("malformed arefs entry {}", hex::encode(&rk)))),
        None => {
            let i = idx.next(p);
            dbs.aroots.put(txn, &cat(&[&p.0, &seq.to_be_bytes(), &i.to_be_bytes()]), &root.encode())?;
            if root.kind == RootKind::Id {
                dbs.aids.put(txn, &rk, &cat(&[&seq.to_be_bytes(), &i.to_be_bytes()]))?;
            }
            cat(&[&seq.to_be_bytes(), &i.to_be_bytes(), &1u32.to_be_bytes()])
        }
    };
    dbs.arefs.put(txn, &rk, &value)?;
    Ok(())
}

/// Drop one grant of the root `h` from principal `p`; the root goes when no grant is left.
fn drop_ref(dbs: &Dbs, txn: &mut RwTxn, p: &Hash, h: &Hash) -> Result<()> {
    let rk = cat(&[&p.0, &h.0]);
    let Some(v) = dbs.arefs.get(txn, &rk)?.map(<[u8]>::to_vec) else {
        return Err(corrupt(format!("the access index lacks arefs entry {}", hex::encode(&rk))));
    };
    if v.len() != 16 {
        return Err(corrupt(format!("malformed arefs entry {}", hex::encode(&rk))));
    }
    let count = u32::from_be_bytes(v[12..16].try_into().unwrap());
    if count > 1 {
        dbs.arefs.put(txn, &rk, &cat(&[&v[..12], &(count - 1).to_be_bytes()]))?;
    } else {
        dbs.arefs.delete(txn, &rk)?;
        dbs.aroots.delete(txn, &cat(&[&p.0, &v[..12]]))?;
        dbs.aids.delete(txn, &rk)?;
    }
    Ok(())
}

/// Index the version nodes of `x` reachable from its head that are not indexed yet, at `seq`;
/// returns them oldest first.
fn index_new_nodes(dbs: &Dbs, txn: &mut RwTxn, x: &Hash, seq: u64) -> Result<Vec<(Hash, bool)>> {
    let Some(head) = dbs.vheads.get(txn, &x.0)?.and_then(Hash::from_slice) else { return Ok(Vec::new()) };
    let anodes = dbs.anodes;
    let fresh = {
        let ro: &RoTxn = txn;
        walk_nodes(dbs, ro, &head, &mut |n: &Hash| Ok(anodes.get(ro, &cat(&[&x.0, &n.0]))?.is_some()))?
    };
    for (i, (n, merge)) in fresh.iter().enumerate() {
        let pos = cat(&[&seq.to_be_bytes(), &(i as u32).to_be_bytes()]);
        dbs.anodes.put(txn, &cat(&[&x.0, &n.0]), &cat(&[&pos, &[if *merge { N_MERGE } else { N_NODE }]]))?;
        if !merge {
            dbs.aseq.put(txn, &cat(&[&x.0, &pos]), &n.0)?;
        }
    }
    Ok(fresh)
}

/// Delete every key of `db` that starts with `prefix`.
fn delete_prefix(db: super::Db, txn: &mut RwTxn, prefix: &[u8]) -> Result<()> {
    let keys: Vec<Vec<u8>> =
        db.prefix_iter(txn, prefix)?.map(|i| i.map(|(k, _)| k.to_vec())).collect::<heed::Result<_>>()?;
    for k in keys {
        db.delete(txn, &k)?;
    }
    Ok(())
}

/// Apply the change of the grant `id` (of kind `kind`) from `old` to `new` at `seq` (the
/// target is the grant's ID property: it never changes).
#[allow(clippy::too_many_arguments)]
fn apply_grant(
    dbs: &Dbs,
    txn: &mut RwTxn,
    id: &Hash,
    kind: u8,
    old: Option<Grant>,
    new: Option<Grant>,
    seq: u64,
    idx: &mut Idx,
) -> Result<()> {
    let old_p: BTreeSet<Hash> = old.as_ref().map(|g| g.principals.iter().copied().collect()).unwrap_or_default();
    let new_p: BTreeSet<Hash> = new.as_ref().map(|g| g.principals.iter().copied().collect()).unwrap_or_default();
    let removed: Vec<Hash> = old_p.difference(&new_p).copied().collect();
    let added: Vec<Hash> = new_p.difference(&old_p).copied().collect();
    let target = new.as_ref().or(old.as_ref()).and_then(|g| g.target);
    match kind {
        G_GROUP => {
            for p in &removed {
                dbs.amembers.delete(txn, &cat(&[&p.0, &id.0]))?;
            }
            for p in &added {
                dbs.amembers.put(txn, &cat(&[&p.0, &id.0]), &seq.to_be_bytes())?;
            }
        }
        G_ACCESS => {
            let t = target.expect("an Access grant has a target");
            for p in &removed {
                drop_ref(dbs, txn, p, &t)?;
            }
            if !added.is_empty() {
                let root = object_root(dbs, txn, &t)?;
                for p in &added {
                    add_ref(dbs, txn, p, &root, seq, idx)?;
                }
            }
        }
        _ => {
            let x = target.expect("an IdAccess grant has a target");
            for p in &removed {
                drop_ref(dbs, txn, p, &x)?;
            }
            if new.is_none() {
                // nobody is granted the ID any more: forget its nodes
                delete_prefix(dbs.anodes, txn, &x.0)?;
                delete_prefix(dbs.aseq, txn, &x.0)?;
            } else {
                dbs.anodes.put(txn, &x.0, &id.0)?;
                if !added.is_empty() {
                    index_new_nodes(dbs, txn, &x, seq)?;
                    let t = id_type(dbs, txn, &x)?;
                    let id_root = Root { kind: RootKind::Id, hash: x, id_hash: None, type_name: t };
                    for p in &added {
                        add_ref(dbs, txn, p, &id_root, seq, idx)?;
                    }
                }
            }
        }
    }
    match &new {
        Some(g) => dbs.agrants.put(txn, &id.0, &g.encode())?,
        None => {
            dbs.agrants.delete(txn, &id.0)?;
        }
    }
    Ok(())
}

fn stored_grant(dbs: &Dbs, txn: &RoTxn, id: &Hash) -> Result<Option<Grant>> {
    match dbs.agrants.get(txn, &id.0)? {
        None => Ok(None),
        Some(v) => Grant::decode(v).map(Some).ok_or_else(|| corrupt(format!("malformed agrants entry {id}"))),
    }
}

/// What a head move changed in the access index (pending.rs): whether `id` is a grant ID,
/// and the version nodes (not merges) that became roots because `id` is granted.
#[derive(Default)]
pub(crate) struct Moved {
    pub grant: bool,
    pub nodes: Vec<Hash>,
}

/// The hook of `write_batch`: the head of `id` moved to `head`, recorded in the event feed
/// as `seq`. Updates the grant if `id` is a grant ID, and indexes the new version nodes if `id`
/// is granted by an IdAccess. For any other ID this costs two point lookups.
pub(crate) fn head_moved(dbs: &Dbs, txn: &mut RwTxn, id: &[u8; 32], head: &[u8; 32], seq: u64) -> Result<Moved> {
    let id = Hash(*id);
    let mut idx = Idx::default();
    let mut moved = Moved::default();
    if let Some(kind) = grant_kind_of(dbs, txn, &id.0)? {
        moved.grant = true;
        let new = parse_grant(dbs, txn, kind, &id, head)?;
        let old = stored_grant(dbs, txn, &id)?;
        if old != new {
            apply_grant(dbs, txn, &id, kind, old, new, seq, &mut idx)?;
        }
    }
    if dbs.anodes.get(txn, &id.0)?.is_some() {
        // a granted ID: its new nodes become roots of every principal it is granted to
        let fresh = index_new_nodes(dbs, txn, &id, seq)?;
        moved.nodes = fresh.into_iter().filter(|(_, merge)| !merge).map(|(n, _)| n).collect();
    }
    Ok(moved)
}

/// For each of `ids`: the type of its ID object if it is granted to `person` by an IdAccess
/// (to the person or a group it is a member of), else `None` (docs/chum-fastpath.md
/// "Speculative push": a new version node of such an ID is a new root of the person, exactly
/// as [`accessible_roots_in`] decides). One read transaction.
pub(crate) fn granted_id_types_in(dbs: &Dbs, txn: &RoTxn, person: &Hash, ids: &[Hash]) -> Result<Vec<Option<String>>> {
    let mut principals = vec![*person];
    principals.extend(groups_of(dbs, txn, person)?.into_iter().map(|(g, _)| g));
    let mut out = Vec::with_capacity(ids.len());
    for x in ids {
        let mut granted = false;
        for p in &principals {
            if dbs.aids.get(txn, &cat(&[&p.0, &x.0]))?.is_some() {
                granted = true;
                break;
            }
        }
        out.push(if granted { Some(id_type(dbs, txn, x)?) } else { None });
    }
    Ok(out)
}

/// The current grants of a store, from its heads: grant ID → (kind, grant). Bad grants (only a
/// store written before the index or by another program can hold them) grant nothing.
fn current_grants(dbs: &Dbs, txn: &RoTxn) -> Result<Vec<(Hash, u8, Grant)>> {
    let mut heads = Vec::new();
    for item in dbs.vheads.iter(txn)? {
        let (k, v) = item?;
        if let (Some(id), Ok(head)) = (Hash::from_slice(k), <[u8; 32]>::try_from(v)) {
            heads.push((id, head));
        }
    }
    let mut out = Vec::new();
    for (id, head) in heads {
        let Ok(Some(kind)) = grant_kind_of(dbs, txn, &id.0) else { continue };
        if let Ok(Some(g)) = parse_grant(dbs, txn, kind, &id, &head) {
            out.push((id, kind, g));
        }
    }
    Ok(out)
}

/// Build the index of a store created before it (docs/store-format.md "access index"): every
/// current Group, then every current Access and IdAccess, in ID-hash order, all at the current
/// last sequence number; then mark the store. Runs in the open transaction, once.
/// Drop the access index of a format-1 store (another layout): [`upgrade`] builds it again.
pub(crate) fn clear(dbs: &Dbs, txn: &mut RwTxn) -> Result<()> {
    dbs.meta.delete(txn, META_ACCESS)?;
    Ok(())
}

pub(crate) fn upgrade(dbs: &Dbs, txn: &mut RwTxn) -> Result<()> {
    if dbs.meta.get(txn, META_ACCESS)?.is_some() {
        return Ok(());
    }
    // whatever an older layout left in the tables goes first
    for db in index_dbs(dbs) {
        db.clear(txn)?;
    }
    let seq = last_seq_in(dbs, txn)?;
    let grants = current_grants(dbs, txn)?;
    let mut idx = Idx::default();
    for pass in [G_GROUP, G_ACCESS, G_IDACCESS] {
        for (id, kind, g) in grants.iter().filter(|(_, k, _)| *k == pass) {
            apply_grant(dbs, txn, id, *kind, None, Some(g.clone()), seq, &mut idx)?;
        }
    }
    dbs.meta.put(txn, META_ACCESS, b"1")?;
    Ok(())
}

/// The entries `owner ‖ u64 seq ‖ u32 n` of `db` (`aroots`, `aseq`) with seq ≥ `from`:
/// `(seq, n, value decoded by dec)` in key order; `name` for the error on a malformed entry.
fn scan_seq<T>(
    db: super::Db,
    txn: &RoTxn,
    owner: &Hash,
    from: u64,
    name: &str,
    dec: impl Fn(&[u8]) -> Option<T>,
) -> Result<Vec<(u64, u32, T)>> {
    let start = cat(&[&owner.0, &from.to_be_bytes()]);
    let range = (std::ops::Bound::Included(&start[..]), std::ops::Bound::Unbounded);
    let mut out = Vec::new();
    for item in db.range(txn, &range)? {
        let (k, v) = item?;
        if k.len() < 32 || k[..32] != owner.0 {
            break;
        }
        let bad = || corrupt(format!("malformed {name} entry {}", hex::encode(k)));
        if k.len() != 44 {
            return Err(bad());
        }
        let seq = u64::from_be_bytes(k[32..40].try_into().unwrap());
        let n = u32::from_be_bytes(k[40..44].try_into().unwrap());
        out.push((seq, n, dec(v).ok_or_else(bad)?));
    }
    Ok(out)
}

/// `aroots` entries of principal `p` with seq ≥ `from`: `(seq, idx, root)` in key order.
fn scan_roots(dbs: &Dbs, txn: &RoTxn, p: &Hash, from: u64) -> Result<Vec<(u64, u32, Root)>> {
    scan_seq(dbs.aroots, txn, p, from, "aroots", Root::decode)
}

/// The IDs granted to principal `p` by IdAccess grants: `(id, seq, idx)` of its `i` root, in
/// ID order.
fn granted_ids(dbs: &Dbs, txn: &RoTxn, p: &Hash) -> Result<Vec<(Hash, u64, u32)>> {
    let mut out = Vec::new();
    for item in dbs.aids.prefix_iter(txn, &p.0)? {
        let (k, v) = item?;
        let bad = || corrupt(format!("malformed aids entry {}", hex::encode(k)));
        let x = k.get(32..).and_then(Hash::from_slice).ok_or_else(bad)?;
        if v.len() != 12 {
            return Err(bad());
        }
        out.push((x, u64::from_be_bytes(v[..8].try_into().unwrap()), u32::from_be_bytes(v[8..].try_into().unwrap())));
    }
    Ok(out)
}

/// `aseq` entries of the granted ID `x` with seq ≥ `from`: `(seq, pos, node)` in key order.
fn scan_nodes(dbs: &Dbs, txn: &RoTxn, x: &Hash, from: u64) -> Result<Vec<(u64, u32, Hash)>> {
    scan_seq(dbs.aseq, txn, x, from, "aseq", Hash::from_slice)
}

/// Sort key of a principal's roots: (seq, after the `aroots` entries of seq, idx, after the
/// entry idx, node seq, position).
type RootOrder = (u64, u8, u32, u8, u64, u32);

/// The roots principal `p` got at a sequence number ≥ `from`, as `(seq, root)` in the order
/// they became accessible: its `aroots` entries by `(seq, idx)`, and for each ID granted to it
/// (granted at `g`, its `i` root at `(g, i)`) the version nodes of that ID (`aseq`): a node
/// indexed at `s ≤ g` counts from `g`, right after the `i` root (in `aseq` order), a node
/// indexed later counts from `s`, after the `aroots` entries of `s`.
fn source_roots(dbs: &Dbs, txn: &RoTxn, p: &Hash, from: u64) -> Result<Vec<(u64, Root)>> {
    let mut rows: Vec<(RootOrder, Root)> =
        scan_roots(dbs, txn, p, from)?.into_iter().map(|(s, i, r)| ((s, 0, i, 0, 0, 0), r)).collect();
    for (x, g, i) in granted_ids(dbs, txn, p)? {
        let nodes = scan_nodes(dbs, txn, &x, if g >= from { 0 } else { from })?;
        if nodes.is_empty() {
            continue;
        }
        let t = id_type(dbs, txn, &x)?;
        for (s, pos, n) in nodes {
            let key = if s <= g { (g, 0, i, 1, s, pos) } else { (s, 1, 0, 0, s, pos) };
            rows.push((key, Root { kind: RootKind::VersionNode, hash: n, id_hash: Some(x), type_name: t.clone() }));
        }
    }
    rows.sort_by_key(|(k, _)| *k);
    Ok(rows.into_iter().map(|(k, r)| (k.0, r)).collect())
}

/// The sequence number at which principal `p` got the root `h`, if it has it.
fn ref_seq(dbs: &Dbs, txn: &RoTxn, p: &Hash, h: &Hash) -> Result<Option<u64>> {
    Ok(dbs.arefs.get(txn, &cat(&[&p.0, &h.0]))?.and_then(|v| v.get(..8)).map(|b| u64::from_be_bytes(b.try_into().unwrap())))
}

/// The sequence number at which the version node `n` of the ID `x` was indexed, if it is a
/// (non-merge) node of `x`.
fn node_seq(dbs: &Dbs, txn: &RoTxn, x: &Hash, n: &Hash) -> Result<Option<u64>> {
    Ok(dbs
        .anodes
        .get(txn, &cat(&[&x.0, &n.0]))?
        .filter(|v| v.len() == 13 && v[12] == N_NODE)
        .map(|v| u64::from_be_bytes(v[..8].try_into().unwrap())))
}

/// The groups `person` is a member of: `(group, joined at)` in group order.
fn groups_of(dbs: &Dbs, txn: &RoTxn, person: &Hash) -> Result<Vec<(Hash, u64)>> {
    let mut out = Vec::new();
    for item in dbs.amembers.prefix_iter(txn, &person.0)? {
        let (k, v) = item?;
        let bad = || corrupt(format!("malformed amembers entry {}", hex::encode(k)));
        let g = k.get(32..).and_then(Hash::from_slice).ok_or_else(bad)?;
        let j = u64::from_be_bytes(v.try_into().map_err(|_| bad())?);
        out.push((g, j));
    }
    Ok(out)
}

/// docs/chum-session.md §1: `(mark, roots)` for `person` inside one read transaction.
pub(crate) fn accessible_roots_in(dbs: &Dbs, txn: &RoTxn, person: &Hash, since: u64) -> Result<(u64, Vec<Root>)> {
    let mark = last_seq_in(dbs, txn)?;
    let from = since.saturating_add(1);
    // the sources: the person (from 0), then each group, from the joining
    let mut sources: Vec<(Hash, u64)> = vec![(*person, 0)];
    sources.extend(groups_of(dbs, txn, person)?);
    // (effective seq, root) from every source: the person's own roots, then each group's;
    // a group's roots count for the person from the later of their seq and the joining.
    let mut cands: Vec<(u64, Root)> = Vec::new();
    for (i, (s, joined)) in sources.iter().enumerate() {
        let rows = if i > 0 && *joined > since { source_roots(dbs, txn, s, 0)? } else { source_roots(dbs, txn, s, from)? };
        cands.extend(rows.into_iter().map(|(q, r)| (q.max(*joined), r)));
    }
    // Deduplicate by hash, keeping the earliest (first on ties). A root that some other source
    // already gave at or before `since` is not new.
    let mut best: HashMap<Hash, usize> = HashMap::new();
    let mut keep: Vec<Option<(u64, Root)>> = Vec::with_capacity(cands.len());
    for (s, r) in cands {
        match best.get(&r.hash) {
            Some(&i) => {
                if keep[i].as_ref().is_some_and(|(b, _)| s < *b) {
                    keep[i] = Some((s, r));
                }
            }
            None => {
                best.insert(r.hash, keep.len());
                keep.push(Some((s, r)));
            }
        }
    }
    // for that test, the IDs each source was granted at or before `since`
    let mut old_ids: Vec<Vec<(Hash, u64)>> = Vec::new();
    if since > 0 {
        for (s, joined) in &sources {
            let ids = granted_ids(dbs, txn, s)?;
            old_ids.push(ids.into_iter().map(|(x, g, _)| (x, g.max(*joined))).filter(|(_, g)| *g <= since).collect());
        }
    }
    let mut out: Vec<(u64, Root)> = Vec::with_capacity(keep.len());
    for (s, r) in keep.into_iter().flatten() {
        if since > 0 {
            let mut old = false;
            for ((src, joined), ids) in sources.iter().zip(&old_ids) {
                if ref_seq(dbs, txn, src, &r.hash)?.is_some_and(|x| x.max(*joined) <= since) {
                    old = true;
                } else if matches!(r.kind, RootKind::VersionNode | RootKind::Unversioned) {
                    // a version node of an ID granted at or before `since`: an `n` root is
                    // looked up under its own ID only (one lookup, not one per granted ID: a
                    // node reachable from two IDs' heads is a malformed history, and counting
                    // it as new only sends a root once more); a `u` root (an Access on a
                    // node) under every one. `v`/`i` roots are never version nodes.
                    let own = if r.kind == RootKind::VersionNode { r.id_hash } else { None };
                    for (x, g) in ids.iter().filter(|(x, _)| own.is_none_or(|o| o == *x)) {
                        if node_seq(dbs, txn, x, &r.hash)?.is_some_and(|n| n.max(*g) <= since) {
                            old = true;
                            break;
                        }
                    }
                }
                if old {
                    break;
                }
            }
            if old {
                continue;
            }
        }
        out.push((s, r));
    }
    out.sort_by_key(|(s, _)| *s);
    Ok((mark, out.into_iter().map(|(_, r)| r).collect()))
}

pub(crate) fn peer_mark_in(dbs: &Dbs, txn: &RoTxn, peer: &str) -> Result<u64> {
    match dbs.peers.get(txn, peer.as_bytes())? {
        None => Ok(0),
        Some(v) => Ok(u64::from_be_bytes(
            v.try_into().map_err(|_| corrupt(format!("malformed peers entry {peer:?}")))?,
        )),
    }
}

pub(crate) fn check_peer(peer: &str) -> Result<()> {
    if peer.is_empty() || peer.len() > 400 {
        return Err(Error::store("LAMA-ARG", format!("a peer key must be 1 to 400 bytes, got {} bytes", peer.len())));
    }
    Ok(())
}

impl Store {
    /// docs/chum-session.md §1: `(mark, roots)`: `mark` is the write sequence at the read
    /// ([`last_seq`](Self::last_seq)); `roots` the roots accessible to `person` now that became
    /// accessible after sequence `since` (0: all), deduplicated by hash, in the order they
    /// became accessible. One read transaction; one range scan per principal (the person and
    /// each group it is in).
    pub fn accessible_roots(&self, person: &Hash, since: u64) -> Result<(u64, Vec<Root>)> {
        let txn = self.read_txn()?;
        accessible_roots_in(&self.dbs(), &txn, person, since)
    }

    /// [`granted_id_types_in`]: per ID, its type if it is granted to `person` by an IdAccess.
    pub fn granted_id_types(&self, person: &Hash, ids: &[Hash]) -> Result<Vec<Option<String>>> {
        let txn = self.read_txn()?;
        granted_id_types_in(&self.dbs(), &txn, person, ids)
    }

    /// The high-water mark stored for `peer` (0 if never set).
    pub fn peer_mark(&self, peer: &str) -> Result<u64> {
        check_peer(peer)?;
        let txn = self.read_txn()?;
        peer_mark_in(&self.dbs(), &txn, peer)
    }

    /// Store the high-water mark of `peer` (one write transaction).
    pub fn set_peer_mark(&self, peer: &str, mark: u64) -> Result<()> {
        check_peer(peer)?;
        let mut txn = self.write_txn()?;
        self.dbs().peers.put(&mut txn, peer.as_bytes(), &mark.to_be_bytes())?;
        txn.commit()?;
        Ok(())
    }
}

// ------------------------------------------------------------------------------ verify()

fn kx(k: &[u8]) -> String {
    hex::encode(k)
}

/// Check a table that is derived from others (`aseq`, `aids`) against `expected` (key →
/// value): each entry of sizes `sizes` (key, value) must be expected with that value
/// (`mismatch` otherwise), and each expected key present.
fn check_derived(
    db: super::Db,
    txn: &RoTxn,
    name: &str,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    sizes: (usize, usize),
    mismatch: &str,
    problems: &mut Vec<String>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for item in db.iter(txn)? {
        let (k, v) = item?;
        seen.insert(k.to_vec());
        if (k.len(), v.len()) != sizes {
            problems.push(format!("{name}/{}: malformed entry", kx(k)));
        } else if expected.get(k).is_none_or(|e| e.as_slice() != v) {
            problems.push(format!("{name}/{}: {mismatch}", kx(k)));
        }
    }
    for k in expected.keys().filter(|k| !seen.contains(*k)) {
        problems.push(format!("{name}/{}: missing", kx(k)));
    }
    Ok(())
}

/// The index checks of `verify()` (docs/store-format.md "verify()" items 7-12): the index is
/// recomputed from the current grants and compared. Each table: the stored entries in key
/// order, then what is missing, in key order.
pub(crate) fn check_index(dbs: &Dbs, txn: &RoTxn, problems: &mut Vec<String>) -> Result<()> {
    let grants = current_grants(dbs, txn)?;
    let last = last_seq_in(dbs, txn)?;
    // agrants
    let expected: BTreeMap<Vec<u8>, Vec<u8>> = grants.iter().map(|(id, _, g)| (id.0.to_vec(), g.encode())).collect();
    let mut seen = BTreeSet::new();
    for item in dbs.agrants.iter(txn)? {
        let (k, v) = item?;
        seen.insert(k.to_vec());
        match expected.get(k) {
            None => problems.push(format!("agrants/{}: not a current grant", kx(k))),
            Some(e) if e.as_slice() != v => problems.push(format!("agrants/{}: does not match the current grant", kx(k))),
            Some(_) => {}
        }
    }
    for k in expected.keys().filter(|k| !seen.contains(*k)) {
        problems.push(format!("agrants/{}: missing for the current grant", kx(k)));
    }
    // amembers
    let mut expected: BTreeSet<Vec<u8>> = BTreeSet::new();
    for (id, kind, g) in &grants {
        if *kind == G_GROUP {
            for p in &g.principals {
                expected.insert(cat(&[&p.0, &id.0]));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for item in dbs.amembers.iter(txn)? {
        let (k, v) = item?;
        seen.insert(k.to_vec());
        if k.len() != 64 || v.len() != 8 || u64::from_be_bytes(v.try_into().unwrap()) > last {
            problems.push(format!("amembers/{}: malformed entry", kx(k)));
        } else if !expected.contains(k) {
            problems.push(format!("amembers/{}: not a member of the current group", kx(k)));
        }
    }
    for k in expected.iter().filter(|k| !seen.contains(*k)) {
        problems.push(format!("amembers/{}: missing", kx(k)));
    }
    // anodes
    let markers: BTreeMap<Hash, Hash> = grants
        .iter()
        .filter(|(_, k, _)| *k == G_IDACCESS)
        .map(|(id, _, g)| (g.target.unwrap(), *id))
        .collect();
    let mut expected: BTreeSet<Vec<u8>> = markers.keys().map(|x| x.0.to_vec()).collect();
    for x in markers.keys() {
        if let Some(head) = dbs.vheads.get(txn, &x.0)?.and_then(Hash::from_slice) {
            if let Ok(nodes) = walk_nodes(dbs, txn, &head, &mut |_| Ok(false)) {
                for (n, _) in nodes {
                    expected.insert(cat(&[&x.0, &n.0]));
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for item in dbs.anodes.iter(txn)? {
        let (k, v) = item?;
        seen.insert(k.to_vec());
        let x = Hash::from_slice(&k[..k.len().min(32)]);
        let granted = x.and_then(|x| markers.get(&x));
        if k.len() == 32 {
            match granted {
                None => problems.push(format!("anodes/{}: not a granted ID", kx(k))),
                Some(g) if g.0[..] != *v => problems.push(format!("anodes/{}: does not match the current grant", kx(k))),
                Some(_) => {}
            }
        } else if k.len() != 64 || v.len() != 13 || (v[12] != N_NODE && v[12] != N_MERGE) {
            problems.push(format!("anodes/{}: malformed entry", kx(k)));
        } else if granted.is_none() {
            problems.push(format!("anodes/{}: node of an ID that is not granted", kx(k)));
        } else {
            let node_type = text_of(dbs, txn, k[32..].try_into().unwrap(), K_OBJECT)?
                .and_then(|t| microdata::type_of(t).ok())
                .map(|(t, _)| t)
                .filter(|t| VERSION_NODE_TYPES.contains(&t.as_str()));
            match node_type {
                None => problems.push(format!("anodes/{}: not a stored version node", kx(k))),
                Some(t) if (t == "VersionNodeMerge") != (v[12] == N_MERGE) => {
                    problems.push(format!("anodes/{}: merge flag does not match the node", kx(k)))
                }
                Some(_) => {}
            }
        }
    }
    for k in expected.iter().filter(|k| !seen.contains(*k)) {
        problems.push(format!("anodes/{}: missing", kx(k)));
    }
    // aseq: one entry per non-merge anodes node entry, at its seq ‖ pos
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for item in dbs.anodes.iter(txn)? {
        let (k, v) = item?;
        if k.len() == 64 && v.len() == 13 && v[12] == N_NODE {
            expected.insert(cat(&[&k[..32], &v[..12]]), k[32..].to_vec());
        }
    }
    check_derived(dbs.aseq, txn, "aseq", &expected, (44, 32), "no anodes entry of this node here", problems)?;
    // arefs: expected count and root per (principal, hash)
    let mut want: BTreeMap<Vec<u8>, (u32, Option<Root>)> = BTreeMap::new();
    for (_, kind, g) in &grants {
        let roots: Vec<Option<Root>> = match *kind {
            G_ACCESS => vec![object_root(dbs, txn, &g.target.unwrap()).ok()],
            G_IDACCESS => {
                let x = g.target.unwrap();
                let t = id_type(dbs, txn, &x).ok();
                vec![t.map(|t| Root { kind: RootKind::Id, hash: x, id_hash: None, type_name: t })]
            }
            _ => Vec::new(),
        };
        for p in &g.principals {
            for r in roots.iter().flatten() {
                let e = want.entry(cat(&[&p.0, &r.hash.0])).or_insert((0, None));
                e.0 += 1;
                if e.1.is_none() {
                    e.1 = Some(r.clone());
                }
            }
        }
    }
    let mut seen = BTreeSet::new();
    for item in dbs.arefs.iter(txn)? {
        let (k, v) = item?;
        seen.insert(k.to_vec());
        if k.len() != 64 || v.len() != 16 {
            problems.push(format!("arefs/{}: malformed entry", kx(k)));
            continue;
        }
        let count = u32::from_be_bytes(v[12..16].try_into().unwrap());
        let expected = want.get(k).map_or(0, |w| w.0);
        if count != expected {
            problems.push(format!("arefs/{}: count {count}, expected {expected}", kx(k)));
        } else if dbs.aroots.get(txn, &cat(&[&k[..32], &v[..12]]))?.is_none_or(|r| r.get(..32) != Some(&k[32..])) {
            problems.push(format!("arefs/{}: no aroots entry", kx(k)));
        }
    }
    for (k, (n, _)) in want.iter().filter(|(k, _)| !seen.contains(*k)) {
        problems.push(format!("arefs/{}: missing (expected count {n})", kx(k)));
    }
    // aroots; and what aids must hold: one entry per `i` root, pointing at it
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for item in dbs.aroots.iter(txn)? {
        let (k, v) = item?;
        let root = if k.len() == 44 { Root::decode(v) } else { None };
        let Some(root) = root else {
            problems.push(format!("aroots/{}: malformed entry", kx(k)));
            continue;
        };
        let rk = cat(&[&k[..32], &root.hash.0]);
        if root.kind == RootKind::Id {
            expected.insert(rk.clone(), k[32..44].to_vec());
        }
        if dbs.arefs.get(txn, &rk)?.is_none_or(|r| r.get(..12) != Some(&k[32..44])) {
            problems.push(format!("aroots/{}: no arefs entry points here", kx(k)));
        } else if want.get(&rk).and_then(|w| w.1.as_ref()).is_some_and(|w| *w != root) {
            problems.push(format!("aroots/{}: root does not match the grant", kx(k)));
        }
    }
    check_derived(dbs.aids, txn, "aids", &expected, (64, 12), "no id root in aroots there", problems)?;
    // peers
    for item in dbs.peers.iter(txn)? {
        let (k, v) = item?;
        if v.len() != 8 || std::str::from_utf8(k).is_err() {
            problems.push(format!("peers/{}: malformed entry", kx(k)));
        }
    }
    Ok(())
}
