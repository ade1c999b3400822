//! The exporter half (chum.md §4, §5): serves services 1, 2, 4, 5, 6, 7, 8 and 10 to one
//! remote person, authorised by the session's accessible set (§5.2).

// foldhash, not SipHash: the accessible set is asked once per object served (issue 8)
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A map/set state for keys that are hashes of this store's own entries (SHA-256 outputs, not
/// chosen by the peer): the first 8 bytes with a random per-map seed, one multiply. foldhash
/// hashed all 32 bytes, and the exporter's two sets of a closure's hashes (unlocked, walk
/// texts) were ~9 % of its samples in the initial sync (issue 8, session 13 profile). Never for hashes a peer lists: a hostile peer could pick keys that collide.
#[derive(Clone)]
struct OwnHashes(u64);

impl Default for OwnHashes {
    fn default() -> OwnHashes {
        use std::hash::BuildHasher;
        OwnHashes(foldhash::fast::RandomState::default().hash_one(0x6c61_6d61_u64) | 1)
    }
}

impl std::hash::BuildHasher for OwnHashes {
    type Hasher = OwnHasher;
    fn build_hasher(&self) -> OwnHasher {
        OwnHasher(self.0)
    }
}

struct OwnHasher(u64);

impl std::hash::Hasher for OwnHasher {
    fn write(&mut self, bytes: &[u8]) {
        // a `Hash` writes its 32 bytes once (after its length, ignored below); any other
        // input is folded in 8 bytes at a time, so equal keys always hash equal
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            let full = u128::from(self.0 ^ u64::from_le_bytes(b)) * 0x9E37_79B9_7F4A_7C15_u128;
            self.0 = (full as u64) ^ ((full >> 64) as u64);
            if bytes.len() == 32 {
                break;
            }
        }
    }
    fn write_usize(&mut self, _: usize) {}
    fn finish(&self) -> u64 {
        self.0
    }
}

use lama_core::hash::Hash;
use lama_core::microdata::RefKind;
use lama_core::store::{EntryKind, Store};
use serde_json::{json, Value};

use crate::rpc::{self, Data};
use crate::{ChumLog, Message, Stats};

/// docs/chum-fastpath.md "Speculative push" (the exporter's part, in a file of its own).
#[path = "speculate.rs"]
mod speculate;

pub const GET_PROTOCOL_VERSION: u32 = 1;
pub const GET_ACCESSIBLE_ROOTS: u32 = 2;
pub const NEW_ACCESSIBLE_ROOT_EVENT: u32 = 3;
pub const GET_OBJECT_CHILDREN: u32 = 4;
pub const GET_ID_OBJECT_CHILDREN: u32 = 5;
pub const GET_OBJECT: u32 = 6;
pub const GET_ID_OBJECT: u32 = 7;
pub const GET_BLOB: u32 = 8;
pub const FIN: u32 = 10;

// lama extensions (docs/chum-fastpath.md); served whatever the local `fast_path` says
pub const LAMA_PROBE: u32 = 100;
pub const GET_OBJECTS_BATCH: u32 = 101;
pub const GET_ROOTS_SINCE: u32 = 102;
pub const SUBSCRIBE: u32 = 103;
pub const NOTIFY: u32 = 104;
pub const GET_CHILDREN_BATCH: u32 = 105;
/// docs/chum-fastpath.md "closure": children pruned at what the importer holds, with the
/// microdata inline.
pub const GET_CLOSURE: u32 = 106;
/// docs/tracing.md §4: the importer confirms a pass (mark, errors); called on the exporter.
pub const LAMA_RECEIPT: u32 = 107;
/// A receipt carries at most this many error texts, each cut to this many characters.
pub const RECEIPT_ERRORS_MAX: usize = 10;
pub const RECEIPT_ERROR_CHARS: usize = 300;
/// docs/chum-fastpath.md "batch-binary": 101's answer as one binary message.
pub const GET_OBJECTS_BINARY: u32 = 108;
/// docs/chum-fastpath.md "closure-pages": the next page of a paged closure walk.
pub const GET_CLOSURE_PAGE: u32 = 109;
/// Entries per page at most (a larger `{"page": L}` is cut to this).
pub const CLOSURE_PAGE_MAX: usize = 65_536;
/// Paged walks a session keeps open at once; a root beyond them is answered whole.
pub const CLOSURE_WALKS_MAX: usize = 8;
/// Hints (hashes the importer holds with their closure) per GET_CLOSURE request.
pub const CLOSURE_HINTS_MAX: usize = 4096;
/// Inline microdata per GET_CLOSURE answer: at most this many objects and characters; the rest
/// is listed without `data` and fetched with 101.
pub const CLOSURE_INLINE_MAX: usize = 1024;
pub const CLOSURE_INLINE_CHARS: usize = 4 * 1024 * 1024;
/// docs/chum-fastpath.md "notify-closure": a NOTIFY carries the roots' pruned closures inline
/// only if they list at most this many entries and this many characters of microdata, with
/// no BLOB/CLOB (else the importer asks 106 as before).
pub const NOTIFY_INLINE_ENTRIES: usize = 64;
pub const NOTIFY_INLINE_CHARS: usize = 256 * 1024;
/// Inline NOTIFYs remembered until a receipt confirms them (the oldest is dropped beyond).
const NOTIFIED_MAX: usize = 256;
/// Hashes remembered in sent closures (to extend the known set without a walk) before the
/// memory is dropped.
const SENT_MAX: usize = 4_000_000;
/// docs/chum-fastpath.md: hashes per batch request.
pub const BATCH_MAX: usize = 256;
pub const FASTPATH_VERSION: i64 = 1;

/// chum.md §3.1 plus the lama extensions (docs/chum-fastpath.md).
pub const SERVICES: &[u32] = &[1, 2, 4, 5, 6, 7, 8, 10, 100, 101, 102, 103, 105, 106, 107, 108, 109];

/// chum.md §4.1: always 8, whatever extensions exist (§10.3).
pub const PROTOCOL_VERSION: i64 = 8;

/// chum.md §2.6/§10.2: 8-byte id + payload ≤ 65,536, so no fragmentation is ever needed.
pub const BLOB_PAYLOAD: usize = 65_528;

/// Characters per CLOB text chunk: below the 16,384-UTF-16-unit fragmentation threshold of
/// one.models (chum.md §1) even when every character is a surrogate pair, escaped twice.
pub const CLOB_CHUNK: usize = 4_096;

/// An error answer `{name, message, code}` (chum.md §2.4); `fatal` (a misnomer kept short:
/// "recorded") marks a refused fetch of a hash never unlocked, which the session also reports
/// as an `error` event (a reference importer never sends one, §5.2).
pub struct ServiceError {
    pub code: String,
    pub message: String,
    pub fatal: bool,
}

fn err(code: &str, text: String) -> ServiceError {
    ServiceError { code: code.into(), message: format!("{code}: {text}"), fatal: false }
}

fn refused(code: &str, text: String) -> ServiceError {
    ServiceError { code: code.into(), message: format!("{code}: {text}"), fatal: true }
}

/// A storage error (e.g. `SB-READ2` during a children walk, chum.md §4.3): answered with its
/// own code and recorded.
fn store_err(e: lama_core::Error) -> ServiceError {
    ServiceError { code: e.code.clone(), message: e.to_string(), fatal: true }
}

pub struct Exporter {
    store: Store,
    remote_person: String,
    /// chum.md §5.2: filled by roots and children answers, never shrinks. Keyed by the 32
    /// bytes (a hash string is lowercase hex, so this is the same set as of strings): a closure
    /// unlocks every entry, 70,000 in the initial-sync benchmark, without a string each.
    accessible: std::collections::HashSet<Hash, OwnHashes>,
    pub done: bool,
    /// Highest write sequence of a roots answer (docs/chum-fastpath.md).
    roots_mark: u64,
    /// The peer asked for NOTIFY pushes (service 103), and the mark up to which it was told.
    subscribed: bool,
    notify_mark: u64,
    /// The peer subscribed with `{"roots": true}`: NOTIFY carries the new roots, relative to
    /// `notify_base` (the mark up to which the peer was told every root).
    notify_roots: bool,
    notify_base: u64,
    /// The peer subscribed with `{"closure": true}` too ("notify-closure"): a NOTIFY also
    /// carries the roots' pruned closures with their microdata; `notified` holds, per
    /// NOTIFY, its mark and roots until a receipt with a mark at least as high confirms the
    /// importer holds them (they then join `known`).
    notify_closure: bool,
    notified: std::collections::VecDeque<(u64, Vec<String>)>,
    /// The highest mark of a receipt without errors (the importer holds every root accessible
    /// up to it).
    receipt_mark: u64,
    /// docs/chum-fastpath.md "closure": hashes the importer holds with their whole closure
    /// (downward closed: the closure of every member is in it), from its hints this session.
    known: std::collections::HashSet<Hash>,
    /// Root -> the pruned closure sent for it by 106: when the importer later says it holds
    /// the root, known grows by that list without a walk.
    sent: HashMap<Hash, Vec<Hash>>,
    sent_total: usize,
    /// `known` was seeded from the importer's mark (the third argument of its first 106).
    seeded: bool,
    /// `CES-GO1` refusals inside a batch answer (recorded by the session).
    pub refused: Vec<(String, String)>,
    /// BLOB streams answered and not sent yet: the session takes them and makes their frames
    /// one at a time as the driver pulls them (issue 8: a large BLOB in bounded memory).
    pub streams: Vec<OutStream>,
    /// docs/tracing.md §4: receipts the importer sent, `(mark, errors)` (the session turns
    /// them into `receipt` events), and with the session's `trace` option the roots announced
    /// (None otherwise: nothing is collected).
    pub receipts: Vec<(Option<u64>, Vec<String>)>,
    pub announced: Option<Vec<String>>,
    /// The importer called LAMA_PROBE (a lama peer).
    pub probed: bool,
    /// docs/chum-fastpath.md "closure-pages": the open paged walks by id (at most
    /// [`CLOSURE_WALKS_MAX`]), and the next id.
    walks: HashMap<u64, PageWalk>,
    next_walk: u64,
    /// The microdata the paged walks read, for the batch fetches that follow them.
    walk_texts: WalkTexts,
    /// docs/chum-fastpath.md "Paged closure", *Early first page*: the walk begun before its 106.
    prewalk: Option<Prewalk>,
    /// Begin the early first page on a thread of its own at the roots answer (else as idle
    /// work after it is sent): `Config::early_walk_thread`.
    pub early_walk_thread: bool,
    /// docs/chum-fastpath.md "Speculative push": roots pushed before their commit, until
    /// confirmed (speculate.rs).
    spec: speculate::Spec,
}

/// A roots answer that lists at least this many version nodes of one ID: the closure of its
/// newest node is worth beginning before the importer asks for it.
const PREWALK_MIN_NODES: usize = 256;

/// The first page of the walk that a lama importer's first 106 after a roots answer asks
/// for (docs/chum-fastpath.md "Paged closure", *Early first page*).
enum Prewalk {
    /// To walk when the session is idle: the newest node of the longest history answered.
    Due(Hash),
    /// Walked: its first page of `crate::importer::CLOSURE_PAGE` entries, pruned at `known`
    /// as it was with `known_len` entries (it only grows).
    Walked { root: Hash, known_len: usize, walk: lama_core::store::ClosureWalk, first: Vec<(RefKind, Hash)>, read: Vec<(Hash, bool, String)> },
    /// Being walked on a thread of its own, begun when the roots answer was built (before it
    /// is sent; the importer's first 106 came while an idle walk of a 10,000-node history was
    /// still running, issue 8, session 17).
    Ahead { root: Hash, ahead: WalkAhead },
}

/// Characters of microdata [`WalkTexts`] keeps at most.
const WALK_TEXTS_CHARS: usize = 16 << 20;

/// The microdata of the objects and ID objects a paged closure walk read to find their
/// references (issue 8: the exporter read every object twice, once in the walk and once for
/// the 101/108 that fetches it): a batch answer takes them from here, each once, instead of
/// the store. Bounded by [`WALK_TEXTS_CHARS`], the oldest dropped first; objects are immutable,
/// so what is kept is what the store holds under the hash.
#[derive(Default)]
struct WalkTexts {
    map: std::collections::HashMap<Hash, (bool, String), OwnHashes>,
    order: std::collections::VecDeque<Hash>,
    chars: usize,
}

impl WalkTexts {
    fn add(&mut self, texts: Vec<(Hash, bool, String)>) {
        for (h, is_id, text) in texts {
            if text.len() > WALK_TEXTS_CHARS / 4 {
                continue;
            }
            while self.chars + text.len() > WALK_TEXTS_CHARS {
                let Some(old) = self.order.pop_front() else { break };
                if let Some((_, t)) = self.map.remove(&old) {
                    self.chars -= t.len();
                }
            }
            // one lookup (a walk reads each object once, so the entry is nearly always new)
            if let std::collections::hash_map::Entry::Vacant(e) = self.map.entry(h) {
                self.chars += text.len();
                e.insert((is_id, text));
                self.order.push_back(h);
            }
        }
        // hashes taken out stay in `order` until they reach its front: drop them when they
        // outnumber the kept ones
        if self.order.len() > 2 * self.map.len() + 4096 {
            let map = &self.map;
            self.order.retain(|h| map.contains_key(h));
        }
    }

    fn take_hash(&mut self, h: &Hash) -> Option<(EntryKind, String)> {
        if self.map.is_empty() {
            return None;
        }
        let (is_id, text) = self.map.remove(h)?;
        self.chars -= text.len();
        Some((if is_id { EntryKind::Id } else { EntryKind::Object }, text))
    }
}

/// A paged closure walk (docs/chum-fastpath.md "closure-pages"): its root, the walk's stack
/// and `seen` set, the page size, what it listed so far (for `sent` once it is done), the
/// page number its token asks next, and the last page answered (a repeated request for it,
/// a retry, gets the same text).
struct PageWalk {
    root: Hash,
    kind: EntryKind,
    /// The walk's state; `None` while [`ahead`](Self::ahead) walks it.
    walk: Option<lama_core::store::ClosureWalk>,
    /// The next page, walked ahead on a thread of its own (see [`WalkAhead`]).
    ahead: Option<WalkAhead>,
    page: usize,
    listed: Vec<Hash>,
    seq: u64,
    last: Option<(u64, String)>,
}

/// Fill `entries` up to `l` with the next entries of `walk` that are not in `known` (their
/// microdata read appended to `read`). The walk prunes at `known` only where it first meets
/// a hash; an entry it had entered before `known` grew (a frame on its stack: an older node
/// of a version chain) would still be listed when its frame is done, so such entries are
/// dropped here: a page lists nothing in `known` as it is when the page is cut. `known` is
/// downward closed, so the entries outside it come in the same order as in a walk pruned at
/// it from the start, and the page stays a complete prefix (what it leaves out is held).
fn walk_page(store: &Store, walk: &mut lama_core::store::ClosureWalk, known: &std::collections::HashSet<Hash>, l: usize, entries: &mut Vec<(RefKind, Hash)>, read: &mut Vec<(Hash, bool, String)>) -> lama_core::Result<()> {
    while entries.len() < l && !walk.done() {
        let more = store.closure_walk_next_texts(walk, known, l - entries.len(), Some(&mut *read))?;
        entries.extend(more.into_iter().filter(|(_, h)| !known.contains(h)));
    }
    Ok(())
}

/// What a walk-ahead thread hands back: the walk, and its next page with the microdata it
/// read (or the store error that stopped it).
type AheadResult = (lama_core::store::ClosureWalk, lama_core::Result<(Vec<(RefKind, Hash)>, Vec<(Hash, bool, String)>)>);

/// The next page of an open paged walk, walked on a thread of its own as soon as the page
/// before it is answered (docs/chum-fastpath.md "Paged closure", *Walk ahead*): a lama
/// importer asks for it next, and meanwhile its 108 fetches keep coming. Walked on the
/// session's thread, each page (~10-30 ms for 4,096 entries of the benchmark's chat) held back
/// every fetch answer queued behind its 109 (issue 8). Pruned at a copy of `known` as it
/// was when the thread began; `known_len` is its size then (it only grows: entries that
/// joined it since are dropped from the page when it is answered).
struct WalkAhead {
    thread: std::thread::JoinHandle<AheadResult>,
    known_len: usize,
}

/// `known` is copied for a walk-ahead thread only up to this size (a larger one: the page is
/// walked when asked, as before).
const AHEAD_KNOWN_MAX: usize = 65_536;

impl WalkAhead {
    /// Begin walking the next `l` entries of `walk` pruned at `known`; `Err(walk)` (the walk
    /// back) when no thread can be started or `known` is too large to copy.
    fn start(store: &Store, walk: lama_core::store::ClosureWalk, known: &std::collections::HashSet<Hash>, l: usize) -> Result<WalkAhead, lama_core::store::ClosureWalk> {
        if known.len() > AHEAD_KNOWN_MAX {
            return Err(walk);
        }
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(walk)));
        let (store, theirs, known_copy) = (store.clone(), slot.clone(), known.clone());
        let spawned = std::thread::Builder::new().name("lama-walk-ahead".into()).spawn(move || {
            let mut walk = theirs.lock().expect("not poisoned").take().expect("the walk is handed over");
            let (mut entries, mut read) = (Vec::new(), Vec::new());
            let r = walk_page(&store, &mut walk, &known_copy, l, &mut entries, &mut read);
            (walk, r.map(|()| (entries, read)))
        });
        match spawned {
            Ok(thread) => Ok(WalkAhead { thread, known_len: known.len() }),
            // the closure was dropped unrun: the walk is still in the slot
            Err(_) => Err(slot.lock().expect("not poisoned").take().expect("not taken")),
        }
    }
}

/// A LAMA_RECEIPT argument read as the pure core reads it: `mark` an integer >= 0 or none,
/// `errors` the strings of the list (at most 10, each cut to 300 characters).
fn parse_receipt(arg: Option<&Value>) -> (Option<u64>, Vec<String>) {
    let Some(Value::Object(m)) = arg else { return (None, Vec::new()) };
    let mark = m.get("mark").and_then(Value::as_u64);
    let errors = match m.get("errors") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .take(RECEIPT_ERRORS_MAX)
            .map(|e| e.chars().take(RECEIPT_ERROR_CHARS).collect())
            .collect(),
        _ => Vec::new(),
    };
    (mark, errors)
}

/// A BLOB/CLOB stream being sent (chum.md §2.6), read from the store as the session pulls
/// it: a BLOB as binary frames of at most [`BLOB_PAYLOAD`] bytes, a CLOB (`utf8`) as text
/// chunks of [`CLOB_CHUNK`] code points (`encoding` on the first); then the end marker.
pub struct OutStream {
    pub id: u64,
    pub hash: String,
    pub offset: u64,
    /// A CLOB's read-ahead: bytes read from the store, not sent yet (at most one chunk's worth
    /// plus one read); `None` for a BLOB.
    pub text: Option<Vec<u8>>,
    /// A CLOB chunk was sent (the first one carries the encoding).
    pub started: bool,
}

/// Bytes read from the store per CLOB read: a chunk of [`CLOB_CHUNK`] code points is at most
/// four times that many bytes.
const CLOB_READ: usize = 4 * CLOB_CHUNK;

impl OutStream {
    /// The next frame, and whether the stream is done. A store error mid-stream becomes a
    /// `stream-error` (chum.md §2.6 sender failure); the receiver drops what it got.
    pub fn next_frame(&mut self, store: &Store) -> (Message, bool) {
        if self.text.is_some() {
            return self.next_text(store);
        }
        match store.read_blob_range(&self.hash, self.offset, BLOB_PAYLOAD) {
            Ok(p) if p.is_empty() => (Message::Text(rpc::stream_end(self.id)), true),
            Ok(p) => {
                self.offset += p.len() as u64;
                (Message::Binary(rpc::binary_frame(self.id, &p)), false)
            }
            Err(_) => (Message::Text(rpc::stream_error(self.id)), true),
        }
    }

    /// A CLOB's next text chunk: the same chunks as cutting the whole text every
    /// [`CLOB_CHUNK`] code points, with one chunk's bytes in memory, not the CLOB's.
    fn next_text(&mut self, store: &Store) -> (Message, bool) {
        let buf = self.text.as_mut().expect("a CLOB stream");
        let mut eof = false;
        // read until the buffer holds a whole chunk (more than CLOB_CHUNK code points begin in
        // it, so the first CLOB_CHUNK are complete) or the end
        while !eof && char_starts(buf) <= CLOB_CHUNK {
            match store.read_blob_range(&self.hash, self.offset, CLOB_READ) {
                Ok(p) if p.is_empty() => eof = true,
                Ok(p) => {
                    self.offset += p.len() as u64;
                    buf.extend_from_slice(&p);
                }
                Err(_) => return (Message::Text(rpc::stream_error(self.id)), true),
            }
        }
        let valid = match std::str::from_utf8(buf) {
            Ok(s) => s.len(),
            // a character cut by the read ends the buffer; anything else is no UTF-8 text
            Err(e) if e.error_len().is_none() && !eof => e.valid_up_to(),
            Err(_) => return (Message::Text(rpc::stream_error(self.id)), true),
        };
        if valid == 0 {
            return (Message::Text(rpc::stream_end(self.id)), true);
        }
        let text = std::str::from_utf8(&buf[..valid]).expect("checked above");
        let cut = text.char_indices().nth(CLOB_CHUNK).map_or(text.len(), |(i, _)| i);
        let m = rpc::stream_chunk(self.id, &text[..cut], (!self.started).then_some("utf8"));
        self.started = true;
        buf.drain(..cut);
        (Message::Text(m), false)
    }
}

/// Code points that begin in `b` (every byte but UTF-8 continuation bytes).
fn char_starts(b: &[u8]) -> usize {
    b.iter().filter(|&&x| (x as i8) >= -0x40).count()
}

/// `s` as a JSON string literal, escaped as serde_json (and JSON.stringify) escape it.
///
/// Appended, never rewritten: it took the whole `out` apart and checked it again as UTF-8
/// at every call, which made a text of n entries cost n² (a roots answer of 10,001 version
/// nodes: a second; issue 8, session 15). serde_json escapes only `"`, `\` and the control
/// characters below U+0020, so a string without them (a hash, most type names) is copied as
/// it is.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(s).expect("writing JSON into memory cannot fail"));
    } else {
        out.reserve(s.len() + 2);
        out.push('"');
        out.push_str(s);
        out.push('"');
    }
}

/// A 101 answer's JSON list, written straight (no `Value` per entry): the same text as
/// `Value::Array(..).to_string()`.
fn batch_json(texts: &[Option<String>]) -> String {
    let mut out = String::with_capacity(texts.iter().map(|t| t.as_ref().map_or(4, |t| t.len() + t.len() / 4 + 3)).sum::<usize>() + 2);
    out.push('[');
    for (i, t) in texts.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match t {
            Some(t) => push_json_str(&mut out, t),
            None => out.push_str("null"),
        }
    }
    out.push(']');
    out
}

/// A roots list as `Value::Array(rows.map(wire_root)).to_string()` writes it.
fn write_roots(out: &mut String, rows: &[crate::session::RootRow]) {
    out.push('[');
    for (i, (kind, h, id_hash, type_name)) in rows.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_root(out, kind, h, id_hash.as_deref(), type_name);
    }
    out.push(']');
}

/// One root as `wire_root(..).to_string()` writes it.
fn write_root(out: &mut String, kind: &str, h: &str, id_hash: Option<&str>, type_name: &str) {
    let field = |out: &mut String, first: bool, k: &str, v: Option<&str>| {
        out.push_str(if first { "{\"" } else { ",\"" });
        out.push_str(k);
        out.push_str("\":");
        match v {
            Some(v) => push_json_str(out, v),
            None => out.push_str("null"),
        }
    };
    match kind {
        "unversioned" => {
            field(out, true, "type", Some("unversioned"));
            field(out, false, "hash", Some(h));
            field(out, false, "oneType", Some(type_name));
        }
        "versioned" => {
            field(out, true, "type", Some("versioned"));
            field(out, false, "hash", Some(h));
            field(out, false, "idHash", id_hash);
            field(out, false, "oneType", Some(type_name));
        }
        "id" => {
            field(out, true, "type", Some("id"));
            field(out, false, "idHash", Some(h));
            field(out, false, "oneType", Some(type_name));
        }
        _ => {
            field(out, true, "type", Some("version_node"));
            field(out, false, "node", Some(h));
            field(out, false, "dataIdHash", id_hash);
            field(out, false, "dataType", Some(type_name));
        }
    }
    out.push('}');
}

/// The newest version node of the ID with the most version nodes among `rows`, if it has at
/// least [`PREWALK_MIN_NODES`]: what a lama importer's first 106 asks for (the last listed
/// node of each ID it lacks; its closure holds the older ones).
fn prewalk_root(rows: &[crate::session::RootRow]) -> Option<Hash> {
    let mut per_id: HashMap<&str, (usize, &str)> = HashMap::default();
    for (kind, h, id_hash, _) in rows {
        if kind == "version_node" {
            if let Some(id) = id_hash.as_deref() {
                let e = per_id.entry(id).or_insert((0, h));
                *e = (e.0 + 1, h);
            }
        }
    }
    let (n, node) = per_id.into_values().max_by_key(|(n, _)| *n)?;
    if n < PREWALK_MIN_NODES {
        return None;
    }
    Hash::parse(node)
}

/// An object (`id` false) or ID object sent to the peer: logged (chum.md §7) and counted.
fn note_sent(log: &mut ChumLog, stats: &mut Stats, id: bool, hex: String) {
    if id {
        log.a_to_b_id_objects.push(hex);
        stats.id_objects_sent += 1;
    } else {
        log.a_to_b_objects.push(hex);
        stats.objects_sent += 1;
    }
}

/// The wire form of one accessible root (chum.md §4.2, fields in the reference's order).
fn wire_root(kind: &str, h: &str, id_hash: Option<&str>, type_name: &str) -> Value {
    match kind {
        "unversioned" => json!({"type": "unversioned", "hash": h, "oneType": type_name}),
        "versioned" => json!({"type": "versioned", "hash": h, "idHash": id_hash, "oneType": type_name}),
        "id" => json!({"type": "id", "idHash": h, "oneType": type_name}),
        _ => json!({"type": "version_node", "node": h, "dataIdHash": id_hash, "dataType": type_name}),
    }
}

/// One root's entry of a 106 answer (also a 109 answer): `{"root": …, "children": [{"type",
/// "hash", "data"?}, …], "more"?: t}`, the children `reversed` (parents first, the 4/5 order)
/// or in the walk's dependency order; `data[j]` is the inline microdata of `walk[j]`.
fn write_closure_root(out: &mut String, root_text: Option<&str>, walk: &[(RefKind, Hash)], data: &[Option<String>], reversed: bool, more: Option<&str>) {
    out.reserve(walk.len() * 96 + 32);
    out.push_str("{\"root\":");
    match root_text {
        Some(t) => push_json_str(out, t),
        None => out.push_str("null"),
    }
    out.push_str(",\"children\":[");
    let n = walk.len();
    for i in 0..n {
        let j = if reversed { n - 1 - i } else { i };
        let (k, c) = &walk[j];
        let tag = match k {
            RefKind::Obj => "object",
            RefKind::Id => "id",
            RefKind::Blob => "blob",
            RefKind::Clob => "clob",
        };
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"type\":\"");
        out.push_str(tag);
        out.push_str("\",\"hash\":\"");
        out.push_str(lama_core::hash::hex_str(&lama_core::hash::hash_hex_bytes(c)));
        out.push('"');
        if let Some(Some(t)) = data.get(j) {
            out.push_str(",\"data\":");
            push_json_str(out, t);
        }
        out.push('}');
    }
    out.push(']');
    if let Some(t) = more {
        out.push_str(",\"more\":");
        push_json_str(out, t);
    }
    out.push('}');
}

fn arg_hash<'a>(args: &'a [Data], code: &str, what: &str) -> Result<&'a str, ServiceError> {
    match args.first() {
        Some(Some(Value::String(s))) if lama_core::hash::is_hash(s) => Ok(s),
        a => {
            let shown = a.as_ref().and_then(|x| x.as_ref()).map_or("undefined".into(), |v| v.to_string());
            let shown: String = shown.chars().take(100).collect();
            Err(err(code, format!("Not a valid {what}: {shown}")))
        }
    }
}

impl Exporter {
    pub fn new(store: Store, remote_person: String) -> Exporter {
        Exporter {
            store,
            remote_person,
            accessible: Default::default(),
            done: false,
            roots_mark: 0,
            subscribed: false,
            notify_mark: 0,
            notify_roots: false,
            notify_base: 0,
            notify_closure: false,
            notified: std::collections::VecDeque::new(),
            receipt_mark: 0,
            known: std::collections::HashSet::new(),
            sent: HashMap::default(),
            sent_total: 0,
            seeded: false,
            refused: Vec::new(),
            streams: Vec::new(),
            receipts: Vec::new(),
            announced: None,
            probed: false,
            walks: HashMap::default(),
            next_walk: 1,
            walk_texts: WalkTexts::default(),
            prewalk: None,
            early_walk_thread: true,
            spec: Default::default(),
        }
    }

    /// Answer one request: the frames to send, and an error if the request was refused.
    pub fn handle(&mut self, id: u64, service: u32, args: &[Data], log: &mut ChumLog, stats: &mut Stats) -> (Vec<Message>, Option<ServiceError>) {
        let r = match service {
            GET_PROTOCOL_VERSION => Ok(vec![Message::Text(rpc::data_response(id, &Some(PROTOCOL_VERSION.into())))]),
            GET_ACCESSIBLE_ROOTS => self.roots().map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_OBJECT_CHILDREN | GET_ID_OBJECT_CHILDREN => self
                .children(args, service == GET_ID_OBJECT_CHILDREN)
                .map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_OBJECT | GET_ID_OBJECT => self
                .object(args, service == GET_ID_OBJECT, log, stats)
                .map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_BLOB => self.blob(id, args, log, stats),
            FIN => {
                self.done = true;
                Ok(vec![Message::Text(rpc::data_response(id, &None))])
            }
            LAMA_PROBE => {
                self.probed = true;
                Ok(vec![Message::Text(rpc::data_response(id, &Some(self.probe())))])
            }
            GET_OBJECTS_BATCH => self.batch(args, log, stats).map(|t| vec![Message::Text(rpc::data_response(id, &Some(batch_json(&t).into())))]),
            GET_OBJECTS_BINARY => self.batch(args, log, stats).map(|t| vec![Message::Binary(rpc::batch_binary_frame(id, &t))]),
            GET_CHILDREN_BATCH => self.children_batch(args).map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_CLOSURE => self.closure(args, log, stats).map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_CLOSURE_PAGE => self.closure_page(args, log, stats).map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            GET_ROOTS_SINCE => self.roots_since(args).map(|s| vec![Message::Text(rpc::data_response(id, &Some(s.into())))]),
            SUBSCRIBE => {
                self.subscribed = true;
                self.notify_mark = self.notify_mark.max(self.roots_mark);
                self.notify_base = self.notify_mark;
                // docs/chum-fastpath.md "notify-roots": `[{"roots": true}]` asks for the roots in
                // the NOTIFY itself (an older lama sends `[]`)
                self.notify_roots = matches!(args.first(), Some(Some(Value::Object(m))) if m.get("roots") == Some(&Value::Bool(true)));
                // "notify-closure": `{"roots": true, "closure": true}` also asks for the closures
                self.notify_closure = self.notify_roots && matches!(args.first(), Some(Some(Value::Object(m))) if m.get("closure") == Some(&Value::Bool(true)));
                // with it the importer's mark, if it has one: it holds every root accessible
                // up to it (as a receipt says)
                if let (true, Some(Some(Value::Object(m)))) = (self.notify_closure, args.first()) {
                    self.receipt_mark = self.receipt_mark.max(m.get("mark").and_then(Value::as_u64).unwrap_or(0));
                }
                Ok(vec![Message::Text(rpc::data_response(id, &None))])
            }
            LAMA_RECEIPT => {
                let (mark, errors) = parse_receipt(args.first().and_then(|a| a.as_ref()));
                if let (Some(m), true) = (mark, errors.is_empty()) {
                    self.receipt_mark(m);
                }
                self.receipts.push((mark, errors));
                Ok(vec![Message::Text(rpc::data_response(id, &None))])
            }
            s => Ok(vec![Message::Text(rpc::unknown_service(id, &Value::from(s)))]),
        };
        match r {
            Ok(frames) => (frames, None),
            Err(e) => (vec![Message::Text(rpc::error_response(id, "Error", &e.message, Some(&e.code)))], Some(e)),
        }
    }

    fn roots(&mut self) -> Result<String, ServiceError> {
        // chum.md §2.5: double-encoded
        let rows = self.unlocked_roots(0)?;
        let mut out = String::new();
        write_roots(&mut out, &rows);
        Ok(out)
    }

    /// The roots accessible to the remote person that became so after `since` (0: all),
    /// unlocked (chum.md §4.2 "unlocks").
    fn unlocked_roots(&mut self, since: u64) -> Result<Vec<crate::session::RootRow>, ServiceError> {
        let (mark, roots) = crate::session::accessible_roots(&self.store, &self.remote_person, since).map_err(store_err)?;
        self.roots_mark = self.roots_mark.max(mark);
        self.unlock_row_hashes(&roots);
        Ok(roots)
    }

    fn unlock_row_hashes(&mut self, roots: &[crate::session::RootRow]) {
        for (kind, h, id_hash, _) in roots {
            if let Some(a) = self.announced.as_mut() {
                a.push(h.clone());
            }
            if kind == "versioned" {
                if let Some(i) = id_hash {
                    self.unlock(i);
                }
            }
            self.unlock(h);
        }
    }

    fn unlock_rows(&mut self, roots: Vec<crate::session::RootRow>) -> Vec<Value> {
        self.unlock_row_hashes(&roots);
        roots.iter().map(|(kind, h, id_hash, type_name)| wire_root(kind, h, id_hash.as_deref(), type_name)).collect()
    }

    /// Names this store's write-sequence space, so a peer keeps one mark per exporter store
    /// (docs/chum-fastpath.md): the store's random identity (docs/store-format.md "meta"
    /// `store_id`), so two stores whose first write is the same object still differ.
    /// `h` is unlocked in this session (chum.md §5.2); a string that is not a hash never is.
    fn unlocked(&self, h: &str) -> bool {
        Hash::parse(h).is_some_and(|x| self.accessible.contains(&x))
    }

    fn unlock(&mut self, h: &str) {
        if let Some(x) = Hash::parse(h) {
            self.accessible.insert(x);
        }
    }

    fn epoch(&self) -> String {
        self.store.store_id().unwrap_or_default()
    }

    fn probe(&self) -> Value {
        json!({"lama": FASTPATH_VERSION, "features": ["batch", "children-batch", "push", "roots-since", "closure", "notify-roots", "receipt", "batch-binary", "closure-pages", "notify-closure"], "epoch": self.epoch()})
    }

    fn batch_arg(args: &[Data]) -> Result<&Vec<Value>, ServiceError> {
        match args.first() {
            Some(Some(Value::Array(l))) if l.len() <= BATCH_MAX => Ok(l),
            _ => Err(err("LAMA-CHUM-BATCH", format!("expected a list of at most {BATCH_MAX} hashes"))),
        }
    }

    /// The microdata of a batch request's hashes, in request order (`None`: not unlocked,
    /// malformed, missing or a BLOB/CLOB), for services 101 and 108.
    fn batch(&mut self, args: &[Data], log: &mut ChumLog, stats: &mut Stats) -> Result<Vec<Option<String>>, ServiceError> {
        let hashes = Self::batch_arg(args)?;
        // the unlocked hashes, read in one transaction with one lookup each (issue 8)
        let mut wanted: Vec<&str> = Vec::with_capacity(hashes.len());
        let mut parsed: Vec<Hash> = Vec::with_capacity(hashes.len());
        for h in hashes {
            let Some(h) = h.as_str() else { continue };
            let Some(x) = Hash::parse(h) else { continue };
            if !self.accessible.contains(&x) {
                self.refused.push(("CES-GO1".into(), format!("CES-GO1: Unauthorized, obj {h}")));
                continue;
            }
            wanted.push(h);
            parsed.push(x);
        }
        // what a page walk read is taken from there (each once), the rest read from the store
        let cached: Vec<Option<(EntryKind, String)>> = parsed.iter().map(|h| self.walk_texts.take_hash(h)).collect();
        let rest: Vec<&str> = wanted.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(h, _)| *h).collect();
        let mut read = if rest.is_empty() { Vec::new() } else { self.store.texts(&rest).map_err(store_err)? }.into_iter();
        let mut texts = cached.into_iter().map(|c| c.or_else(|| read.next().flatten()));
        let mut wanted = wanted.into_iter().peekable();
        let mut out = Vec::with_capacity(hashes.len());
        for h in hashes {
            let h = h.as_str().unwrap_or_default();
            if wanted.peek() != Some(&h) {
                out.push(None);
                continue;
            }
            wanted.next();
            out.push(match texts.next().flatten() {
                Some((kind, text)) => {
                    note_sent(log, stats, kind == EntryKind::Id, h.to_string());
                    Some(text)
                }
                None => None,
            });
        }
        Ok(out)
    }

    fn children_batch(&mut self, args: &[Data]) -> Result<String, ServiceError> {
        let hashes = Self::batch_arg(args)?.clone();
        let mut out = Vec::with_capacity(hashes.len());
        for h in &hashes {
            let Some(h) = h.as_str().filter(|h| lama_core::hash::is_hash(h)) else {
                out.push(Value::Null);
                continue;
            };
            if !self.unlocked(h) || !matches!(self.store.kind(h).map_err(store_err)?, Some(EntryKind::Object | EntryKind::Id)) {
                out.push(Value::Null);
                continue;
            }
            out.push(Value::Array(self.children_list(h)?));
        }
        Ok(Value::Array(out).to_string())
    }

    fn roots_since(&mut self, args: &[Data]) -> Result<String, ServiceError> {
        let since = match args.first() {
            None | Some(None) => Some(0),
            Some(Some(Value::Number(n))) => n.as_u64(),
            _ => None,
        };
        let Some(since) = since else {
            let shown = args.first().cloned().flatten().map_or("undefined".into(), |v| v.to_string());
            return Err(err("LAMA-CHUM-BATCH", format!("expected a write sequence, got {shown}")));
        };
        // written straight, the same text as `json!({"mark": m, "roots": [wire_root…]})`: a
        // first sync's answer lists every version node of a channel (10,001 roots in the
        // benchmark), and a `Value` map per root was most of the answer's time, on the path
        // before the first closure request (issue 8, session 15)
        let rows = self.unlocked_roots(since)?;
        self.prewalk = prewalk_root(&rows).map(|root| self.begin_prewalk(root));
        let mut out = String::with_capacity(rows.len() * 200 + 32);
        out.push_str("{\"mark\":");
        out.push_str(&self.roots_mark.to_string());
        out.push_str(",\"roots\":");
        write_roots(&mut out, &rows);
        out.push('}');
        Ok(out)
    }

    /// After a local write: `Some(NOTIFY args)` if roots became accessible to the peer since
    /// the last notification (only when it subscribed). With "notify-roots" the args carry
    /// `{"since", "mark", "roots"}`: the roots that became accessible after `since` up to
    /// `mark`, unlocked as by a roots answer; `since` is the mark of the previous NOTIFY (or
    /// of the subscription): a write that made nothing accessible moves no base, so the
    /// importer can chain them (docs/chum-fastpath.md "Push").
    ///
    /// With "notify-closure" the payload also has `"closure": {hash: entry}`: for every hash a
    /// 106 would be asked for (each root's object, ID object or node), its paged 106 entry
    /// (pruned at `known`, dependencies first, the microdata inline), if `known` is not empty
    /// and all of them fit [`NOTIFY_INLINE_ENTRIES`] / [`NOTIFY_INLINE_CHARS`] without a
    /// BLOB/CLOB. The importer then needs no 106 round trip.
    ///
    /// The args are returned as their JSON text (`[payload]`, `[]` without "notify-roots"),
    /// for [`rpc::request_text`](crate::rpc::request_text): the closures' entries are written
    /// once, as a 106 answer writes them, not parsed back into values and written again.
    pub fn changed_roots(&mut self, log: &mut ChumLog, stats: &mut Stats) -> lama_core::Result<Option<String>> {
        if !self.subscribed || self.done {
            return Ok(None);
        }
        let (mark, roots) = crate::session::accessible_roots(&self.store, &self.remote_person, self.notify_mark)?;
        self.notify_mark = self.notify_mark.max(mark);
        if roots.is_empty() {
            return Ok(None);
        }
        if !self.notify_roots {
            return Ok(Some("[]".to_string()));
        }
        let hashes: Vec<String> = roots.iter().flat_map(|(kind, h, id_hash, _)| {
            let mut v = vec![h.clone()];
            if kind == "versioned" {
                v.extend(id_hash.clone());
            }
            v
        }).collect();
        if self.notify_closure && self.known.is_empty() && self.receipt_mark > 0 {
            // the importer said what it holds only by its receipts (its first pass sent no
            // hint or mark): seed `known` from the receipt's mark as from a 106 mark ("Mark")
            let _ = self.seed_known(self.receipt_mark);
        }
        // the importer lacks at most the roots not in `known`: only theirs are needed
        let lacking: Vec<String> = hashes.iter().filter(|h| Hash::parse(h).is_none_or(|k| !self.known.contains(&k))).cloned().collect();
        if self.notify_closure && lacking.is_empty() {
            // "No echo" (docs/chum-fastpath.md): the importer holds every new root (our import
            // of its own post made them accessible to it again). A NOTIFY would only make it
            // run an empty pass, write its mark and send a receipt: four frames and a commit
            // per chat message on the sender. The base stays, so the next NOTIFY's `since`
            // still chains onto the importer's mark, and its `mark` covers these roots.
            return Ok(None);
        }
        // "Speculative push": roots pushed before their commit and not confirmed yet, which
        // this NOTIFY's mark covers, are listed again (speculate.rs)
        let mut roots = roots;
        for r in self.spec_relisted()? {
            if !roots.iter().any(|x| x.1 == r.1) {
                roots.push(r);
            }
        }
        let wire = self.unlock_rows(roots);
        // `{"since","mark","roots"[,"closure"]}` in this order, as a `Value` object writes it
        let mut args = String::from("[");
        args.push_str(&json!({"since": self.notify_base, "mark": self.notify_mark, "roots": wire}).to_string());
        if self.notify_closure && !self.known.is_empty() && !lacking.is_empty() {
            // a store error here only leaves the closures out (the importer asks 106)
            if let Ok(Some(c)) = self.notify_closure_entries(&lacking, log, stats) {
                args.pop(); // the payload's closing brace
                args.push_str(",\"closure\":{");
                for (i, (h, entry)) in c.iter().enumerate() {
                    if i > 0 {
                        args.push(',');
                    }
                    push_json_str(&mut args, h);
                    args.push(':');
                    args.push_str(entry);
                }
                args.push_str("}}");
            }
        }
        args.push(']');
        if self.notify_closure {
            // with or without closures: a receipt up to this mark says the importer holds them
            self.notified.push_back((self.notify_mark, hashes));
            if self.notified.len() > NOTIFIED_MAX {
                self.notified.pop_front();
            }
        }
        self.notify_base = self.notify_mark;
        Ok(Some(args))
    }

    /// "notify-closure": the paged 106 entry of each of `hashes` (pruned at `known`,
    /// dependencies first, microdata inline), or `None` when they do not fit the NOTIFY
    /// bounds or list a BLOB/CLOB. Inline objects are logged and counted like 101's, only
    /// when they are sent. Each entry comes as its JSON text, with its hash, in `hashes`'
    /// order.
    fn notify_closure_entries(&mut self, hashes: &[String], log: &mut ChumLog, stats: &mut Stats) -> Result<Option<Vec<(String, String)>>, ServiceError> {
        let mut walks = Vec::with_capacity(hashes.len());
        let mut entries = 0usize;
        for h in hashes {
            let Some(kind) = self.store.kind(h).map_err(store_err)?.filter(|k| matches!(k, EntryKind::Object | EntryKind::Id)) else {
                return Ok(None);
            };
            // bounded: stops as soon as the closure is known to be more than a NOTIFY carries
            // (a big commit's closure is then walked once, by the importer's 106, not twice)
            let Some(walk) = self.store.children_tagged_except_within(h, &self.known, NOTIFY_INLINE_ENTRIES.saturating_sub(entries)).map_err(store_err)? else {
                return Ok(None);
            };
            entries += walk.len() + 1;
            if entries > NOTIFY_INLINE_ENTRIES || walk.iter().any(|(k, _)| matches!(k, RefKind::Blob | RefKind::Clob)) {
                return Ok(None);
            }
            walks.push((h, kind, walk));
        }
        let mut budget = (NOTIFY_INLINE_ENTRIES, NOTIFY_INLINE_CHARS);
        let mut tmp_log = ChumLog::default();
        let mut tmp_stats = Stats::default();
        let mut out: Vec<(String, String)> = Vec::with_capacity(walks.len());
        let mut sent = Vec::with_capacity(walks.len());
        for (h, kind, walk) in walks {
            let root_text = self.closure_root_text(h, kind, true, &mut budget, &mut tmp_log, &mut tmp_stats)?;
            let data = self.closure_data(&walk, true, &mut budget, &mut tmp_log, &mut tmp_stats)?;
            if budget.1 == 0 || data.iter().any(Option::is_none) {
                // over the character bound: nothing inline (the listed hashes stay unlocked,
                // as a 106 answer would have unlocked them)
                return Ok(None);
            }
            let mut text = String::new();
            write_closure_root(&mut text, root_text.as_deref(), &walk, &data, false, None);
            // a hash listed twice (a versioned root's ID hash that is another root's too)
            // keeps one entry, in its first place, as a JSON object built from them would
            match out.iter_mut().find(|(k, _)| k == h) {
                Some(e) => e.1 = text,
                None => out.push((h.clone(), text)),
            }
            sent.push((Hash::parse(h).expect("a root hash"), walk.into_iter().map(|(_, c)| c).collect::<Vec<_>>()));
        }
        for (h, list) in sent {
            self.remember_sent(h, list);
        }
        log.a_to_b_objects.extend(tmp_log.a_to_b_objects);
        log.a_to_b_id_objects.extend(tmp_log.a_to_b_id_objects);
        stats.objects_sent += tmp_stats.objects_sent;
        stats.id_objects_sent += tmp_stats.id_objects_sent;
        Ok(Some(out))
    }

    /// "notify-closure" is on: the session tells [`peer_holds`](Self::peer_holds) what the
    /// importer received from the peer.
    pub fn wants_held(&self) -> bool {
        self.notify_closure
    }

    /// Objects and ID objects the peer sent us (verified by hash): it holds them and, by its
    /// "no holes" invariant, their closures, so they join `known`; a lying peer only shortens
    /// its own lists. A NOTIFY whose roots all came from the peer (our import made them
    /// accessible to it again) then carries no closure, and the peer asks for nothing.
    pub fn peer_holds<'a>(&mut self, hashes: impl Iterator<Item = &'a String>) {
        self.known.extend(hashes.filter_map(|h| Hash::parse(h)));
    }

    /// A receipt with mark `m` and no error: the importer holds everything accessible up to
    /// `m`, so the roots of every NOTIFY up to `m` join `known` (without a walk when their
    /// closure was sent, inline or by 106), and the next NOTIFY's closures list only what is
    /// new.
    fn receipt_mark(&mut self, m: u64) {
        self.receipt_mark = self.receipt_mark.max(m);
        self.spec_confirm(m);
        while self.notified.front().is_some_and(|(nm, _)| *nm <= m) {
            let (_, hashes) = self.notified.pop_front().expect("present");
            // newest first: the newest node's closure (often a sent list) holds the older ones
            for h in hashes.into_iter().rev() {
                // an error here only leaves `known` smaller (a longer list next time)
                let _ = self.hold(&h);
            }
        }
    }

    /// The importer holds `k` (a hint, or a root a receipt confirmed): `k` and its closure join
    /// `known`, from the list sent for it if there is one, else by one walk stopped at `known`.
    /// Only a hash unlocked in this session counts.
    fn hold(&mut self, k: &str) -> Result<(), ServiceError> {
        let Some(kh) = Hash::parse(k) else { return Ok(()) };
        if self.known.contains(&kh) || !self.unlocked(k) {
            return Ok(());
        }
        if let Some(list) = self.sent.remove(&kh) {
            // known was downward closed when the list was cut from the closure, so the
            // list plus known is the whole closure of the hint
            self.sent_total -= list.len();
            self.known.extend(list);
            self.known.insert(kh);
            return Ok(());
        }
        if !matches!(self.store.kind(k).map_err(store_err)?, Some(EntryKind::Object | EntryKind::Id)) {
            return Ok(());
        }
        let walk = self.store.children_tagged_except(k, &self.known).map_err(store_err)?;
        self.known.extend(walk.into_iter().map(|(_, h)| h));
        self.known.insert(kh);
        Ok(())
    }

    /// docs/chum-fastpath.md "Mark": once per session, `known` gets the closure of the newest
    /// version node of each ID among the roots that were accessible to the peer at its mark
    /// `m` (it imported all of them, and holds their closures by its "no holes" invariant), so
    /// the first push after a reconnect lists only what is new instead of the whole history.
    /// Only roots accessible to the peer are used: the pruning tells it nothing it may not see.
    fn seed_known(&mut self, m: u64) -> Result<(), ServiceError> {
        if self.seeded || m == 0 {
            return Ok(());
        }
        self.seeded = true;
        let (_, all) = crate::session::accessible_roots(&self.store, &self.remote_person, 0).map_err(store_err)?;
        let (_, after) = crate::session::accessible_roots(&self.store, &self.remote_person, m).map_err(store_err)?;
        let after: HashSet<String> = after.into_iter().map(|(_, h, _, _)| h).collect();
        // newest node per data ID: the roots come in the order they became accessible
        let mut newest: HashMap<String, String> = HashMap::default();
        for (kind, h, id_hash, _) in all {
            if kind == "version_node" && !after.contains(&h) {
                if let Some(id) = id_hash {
                    newest.insert(id, h);
                }
            }
        }
        for h in newest.into_values() {
            let Some(kh) = Hash::parse(&h) else { continue };
            if self.known.contains(&kh) {
                continue;
            }
            let walk = self.store.children_tagged_except(&h, &self.known).map_err(store_err)?;
            self.known.extend(walk.into_iter().map(|(_, c)| c));
            self.known.insert(kh);
        }
        Ok(())
    }

    /// 106 GET_CLOSURE `[[root…], [hint…], mark?]` (docs/chum-fastpath.md "closure"). Hints are
    /// hashes the importer holds; by its "no holes" invariant it then holds their whole
    /// closure, so they and their closures join `known` (only hints unlocked in this session
    /// count: a hint must not tell the peer whether we hold something it may not see). Each
    /// root's answer is its children list (as 105) without anything in `known`, with the
    /// microdata of objects and ID objects inline (`data`) within the inline budget, plus the
    /// root's own microdata. Everything listed is unlocked; inline objects are logged like 101.
    fn closure(&mut self, args: &[Data], log: &mut ChumLog, stats: &mut Stats) -> Result<String, ServiceError> {
        let roots = Self::batch_arg(args)?.clone();
        let hints: Vec<Value> = match args.get(1) {
            None | Some(None) => Vec::new(),
            Some(Some(Value::Array(l))) if l.len() <= CLOSURE_HINTS_MAX => l.clone(),
            _ => return Err(err("LAMA-CHUM-BATCH", format!("expected a list of at most {CLOSURE_HINTS_MAX} hints"))),
        };
        // the importer's mark (a write sequence of this store up to which it imported every
        // root accessible to it), sent with its first 106 of the session
        if let Some(Some(m)) = args.get(2).map(|v| v.as_ref().and_then(Value::as_u64)) {
            self.seed_known(m)?;
        }
        for k in &hints {
            let Some(k) = k.as_str().filter(|k| lama_core::hash::is_hash(k)) else { continue };
            self.hold(k)?;
        }
        // "closure-pages": `{"page": L}` asks for each root's closure in pages of L entries,
        // listed dependencies first (an importer that does not ask gets whole closures in the
        // 4/5 order)
        let page = match args.get(3) {
            Some(Some(Value::Object(m))) => match m.get("page").and_then(Value::as_u64) {
                Some(l) if l >= 1 => Some((l as usize).min(CLOSURE_PAGE_MAX)),
                _ => return Err(err("LAMA-CHUM-BATCH", "expected {\"page\": L} with an integer L >= 1".into())),
            },
            _ => None,
        };
        // inline only once the importer said what it holds: the list is then what it lacks
        // (a push). Without hints (a first or resumed sync) the list is the whole closure, of
        // which it may hold most: it fetches only what it lacks with 101.
        let inline = !self.known.is_empty();
        let mut budget = (if inline { CLOSURE_INLINE_MAX } else { 0 }, CLOSURE_INLINE_CHARS);
        // the answer's JSON text, written straight (no `Value` per entry: a first sync lists
        // the whole 70,000-object closure here, issue 8); the same text as serde_json writes
        let mut out = String::from("[");
        for (i, r) in roots.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let Some(r) = r.as_str().filter(|h| lama_core::hash::is_hash(h)) else {
                out.push_str("null");
                continue;
            };
            let kind = self.store.kind(r).map_err(store_err)?;
            let Some(kind) = kind.filter(|k| matches!(k, EntryKind::Object | EntryKind::Id)) else {
                out.push_str("null");
                continue;
            };
            if !self.unlocked(r) {
                out.push_str("null");
                continue;
            }
            let rh = Hash::parse(r).expect("checked");
            if let (Some(l), true) = (page, self.walks.len() < CLOSURE_WALKS_MAX) {
                // the first page walked while the importer read the roots answer, if it is
                // exactly the one asked: same root, page size and `known`
                let early = match &self.prewalk {
                    Some(Prewalk::Walked { root, known_len, .. }) if *root == rh && *known_len == self.known.len() && l == crate::importer::CLOSURE_PAGE => self.prewalk.take(),
                    Some(Prewalk::Ahead { root, ahead }) if *root == rh && ahead.known_len == self.known.len() && l == crate::importer::CLOSURE_PAGE => self.prewalk.take(),
                    _ => None,
                };
                let early = match early {
                    Some(Prewalk::Walked { walk, first, read, .. }) => Some((walk, first, read)),
                    // a thread that panicked or met a store error: walked here, as when asked
                    Some(Prewalk::Ahead { ahead, .. }) => match ahead.thread.join() {
                        Ok((walk, Ok((first, read)))) => Some((walk, first, read)),
                        _ => None,
                    },
                    _ => None,
                };
                let (walk, first, read) = match early {
                    Some(w) => w,
                    None => {
                        let mut walk = self.store.closure_walk(r).map_err(store_err)?;
                        let mut read = Vec::new();
                        let first = self.store.closure_walk_next_texts(&mut walk, &self.known, l, Some(&mut read)).map_err(store_err)?;
                        (walk, first, read)
                    }
                };
                self.walk_texts.add(read);
                if !walk.done() {
                    let data = self.closure_data(&first, inline, &mut budget, log, stats)?;
                    let id = self.next_walk;
                    self.next_walk += 1;
                    let token = format!("{id}.1");
                    write_closure_root(&mut out, None, &first, &data, false, Some(&token));
                    let listed = first.into_iter().map(|(_, h)| h).collect();
                    let (walk, ahead) = match WalkAhead::start(&self.store, walk, &self.known, l) {
                        Ok(a) => (None, Some(a)),
                        Err(walk) => (Some(walk), None),
                    };
                    self.walks.insert(id, PageWalk { root: rh, kind, walk, ahead, page: l, listed, seq: 1, last: None });
                    continue;
                }
                // the whole closure fit in one page
                let root_text = self.closure_root_text(r, kind, inline, &mut budget, log, stats)?;
                let data = self.closure_data(&first, inline, &mut budget, log, stats)?;
                write_closure_root(&mut out, root_text.as_deref(), &first, &data, false, None);
                self.remember_sent(rh, first.into_iter().map(|(_, h)| h).collect());
                continue;
            }
            let walk = self.store.children_tagged_except(r, &self.known).map_err(store_err)?;
            let root_text = self.closure_root_text(r, kind, inline, &mut budget, log, stats)?;
            let data = self.closure_data(&walk, inline, &mut budget, log, stats)?;
            // unpaged: parents first (the 4/5 order); asked for pages: dependencies first
            write_closure_root(&mut out, root_text.as_deref(), &walk, &data, page.is_none(), None);
            self.remember_sent(rh, walk.into_iter().map(|(_, h)| h).collect());
        }
        out.push(']');
        // the first closure request after the roots answer came: a walk begun early that it
        // did not take is of no more use
        self.prewalk = None;
        Ok(out)
    }

    /// The early first page of a roots answer: on a thread of its own (see [`Prewalk::Ahead`])
    /// unless `early_walk_thread` is off or no thread can be started; then as idle work.
    fn begin_prewalk(&self, root: Hash) -> Prewalk {
        if !self.early_walk_thread {
            return Prewalk::Due(root);
        }
        let Ok(walk) = self.store.closure_walk(&root.to_hex()) else { return Prewalk::Due(root) };
        match WalkAhead::start(&self.store, walk, &self.known, crate::importer::CLOSURE_PAGE) {
            Ok(ahead) => Prewalk::Ahead { root, ahead },
            Err(_) => Prewalk::Due(root),
        }
    }

    /// The early first page of the last roots answer is being walked on a thread of its own.
    pub fn prewalk_on_thread(&self) -> bool {
        matches!(self.prewalk, Some(Prewalk::Ahead { .. }))
    }

    /// Work worth doing while the session has nothing else to do: the early first page.
    pub fn idle_due(&self) -> bool {
        matches!(self.prewalk, Some(Prewalk::Due(_)))
    }

    /// Walk the first page of the closure a lama importer asks for first after a roots answer
    /// (docs/chum-fastpath.md "Paged closure", *Early first page*), while it reads that answer.
    /// A store error only leaves it to be walked when asked.
    pub fn idle(&mut self) {
        let Some(Prewalk::Due(root)) = self.prewalk.take() else { return };
        let Ok(mut walk) = self.store.closure_walk(&root.to_hex()) else { return };
        let mut read = Vec::new();
        let Ok(first) = self.store.closure_walk_next_texts(&mut walk, &self.known, crate::importer::CLOSURE_PAGE, Some(&mut read)) else { return };
        self.prewalk = Some(Prewalk::Walked { root, known_len: self.known.len(), walk, first, read });
    }

    /// The root's own microdata for a closure answer when data goes inline (logged and
    /// counted like 101).
    fn closure_root_text(&mut self, r: &str, kind: EntryKind, inline: bool, budget: &mut (usize, usize), log: &mut ChumLog, stats: &mut Stats) -> Result<Option<String>, ServiceError> {
        if !inline {
            return Ok(None);
        }
        let t = self.store.get(r).map_err(store_err)?;
        note_sent(log, stats, kind == EntryKind::Id, r.to_string());
        budget.1 = budget.1.saturating_sub(t.len());
        Ok(Some(t))
    }

    /// Unlock every listed hash, and the inline microdata of the entries (in the walk's
    /// order, dependencies first) within `budget` (objects, characters); `None` where there
    /// is none. Empty when nothing goes inline.
    fn closure_data(&mut self, walk: &[(RefKind, Hash)], inline: bool, budget: &mut (usize, usize), log: &mut ChumLog, stats: &mut Stats) -> Result<Vec<Option<String>>, ServiceError> {
        let mut data: Vec<Option<String>> = Vec::new();
        for (k, c) in walk {
            if matches!(k, RefKind::Obj | RefKind::Id) && inline && budget.0 > 0 && budget.1 > 0 {
                let hex = c.to_hex();
                let text = match self.walk_texts.take_hash(c) {
                    Some((_, t)) => t,
                    None => self.store.get(&hex).map_err(store_err)?,
                };
                budget.0 -= 1;
                budget.1 = budget.1.saturating_sub(text.len());
                note_sent(log, stats, *k == RefKind::Id, hex.clone());
                data.push(Some(text));
            } else if inline {
                data.push(None);
            }
            self.accessible.insert(*c);
        }
        Ok(data)
    }

    /// The pruned closure sent for `root`: when the importer later says it holds the root,
    /// `known` grows by it without a walk.
    fn remember_sent(&mut self, root: Hash, list: Vec<Hash>) {
        if self.sent_total + list.len() > SENT_MAX {
            self.sent.clear();
            self.sent_total = 0;
        }
        self.sent_total += list.len();
        if let Some(old) = self.sent.insert(root, list) {
            self.sent_total -= old.len();
        }
    }

    /// 109 GET_CLOSURE_PAGE `[t]` (docs/chum-fastpath.md "closure-pages"): the next page of
    /// the walk the token names, as a JSON string of one root's 106 entry, dependencies
    /// first, with `"more": t'` unless it is the last (which carries the root's microdata
    /// when data goes inline). The previous page's token gets that page again (a retry);
    /// any other token: `LAMA-CHUM-PAGE`.
    fn closure_page(&mut self, args: &[Data], log: &mut ChumLog, stats: &mut Stats) -> Result<String, ServiceError> {
        let token = match args.first() {
            Some(Some(Value::String(t))) => t.clone(),
            a => {
                let shown = a.as_ref().and_then(|x| x.as_ref()).map_or("undefined".into(), |v| v.to_string());
                let shown: String = shown.chars().take(100).collect();
                return Err(err("LAMA-CHUM-PAGE", format!("not a page token: {shown}")));
            }
        };
        let parsed = token.split_once('.').and_then(|(w, k)| Some((w.parse::<u64>().ok()?, k.parse::<u64>().ok()?)));
        let expired = || {
            let shown: String = token.chars().take(100).collect();
            err("LAMA-CHUM-PAGE", format!("unknown or expired page token {shown}"))
        };
        let Some((id, k)) = parsed else { return Err(expired()) };
        let Some(w) = self.walks.get_mut(&id) else { return Err(expired()) };
        if let Some((seq, text)) = &w.last {
            if *seq == k {
                return Ok(text.clone());
            }
        }
        if w.seq != k {
            return Err(expired());
        }
        let (root, kind, l) = (w.root, w.kind, w.page);
        let (entries, read) = match w.ahead.take() {
            Some(a) => {
                let Ok((walk, r)) = a.thread.join() else {
                    // the thread panicked: the walk is lost
                    self.walks.remove(&id);
                    return Err(err("LAMA-CHUM-PAGE", format!("the walk of page token {token} failed")));
                };
                // the walk first: after a store error a retried 109 walks on from here, as
                // after an error of a page walked when asked
                let walk = w.walk.insert(walk);
                let (mut entries, mut read) = r.map_err(store_err)?;
                if self.known.len() != a.known_len {
                    // `known` grew while the thread walked: the page is pruned at it as it is
                    // now, and filled up to `l` from there
                    entries.retain(|(_, h)| !self.known.contains(h));
                    walk_page(&self.store, walk, &self.known, l, &mut entries, &mut read).map_err(store_err)?;
                }
                (entries, read)
            }
            None => {
                let walk = w.walk.as_mut().expect("a walk not walked ahead is here");
                let (mut entries, mut read) = (Vec::new(), Vec::new());
                walk_page(&self.store, walk, &self.known, l, &mut entries, &mut read).map_err(store_err)?;
                (entries, read)
            }
        };
        self.walk_texts.add(read);
        let done = w.walk.as_ref().expect("here").done();
        w.listed.extend(entries.iter().map(|(_, h)| *h));
        let inline = !self.known.is_empty();
        let mut budget = (if inline { CLOSURE_INLINE_MAX } else { 0 }, CLOSURE_INLINE_CHARS);
        let mut out = String::new();
        if done {
            let w = self.walks.remove(&id).expect("present");
            let hex = root.to_hex();
            let root_text = self.closure_root_text(&hex, kind, inline, &mut budget, log, stats)?;
            let data = self.closure_data(&entries, inline, &mut budget, log, stats)?;
            write_closure_root(&mut out, root_text.as_deref(), &entries, &data, false, None);
            self.remember_sent(root, w.listed);
        } else {
            let data = self.closure_data(&entries, inline, &mut budget, log, stats)?;
            let next = format!("{id}.{}", k + 1);
            write_closure_root(&mut out, None, &entries, &data, false, Some(&next));
            let w = self.walks.get_mut(&id).expect("present");
            w.seq = k + 1;
            w.last = Some((k, out.clone()));
            // the importer asks for the next page next: walk it now, beside the fetches
            if let Some(walk) = w.walk.take() {
                match WalkAhead::start(&self.store, walk, &self.known, l) {
                    Ok(a) => w.ahead = Some(a),
                    Err(walk) => w.walk = Some(walk),
                }
            }
        }
        Ok(out)
    }

    fn children(&mut self, args: &[Data], id_object: bool) -> Result<String, ServiceError> {
        let h = if id_object {
            let h = arg_hash(args, "UTC-EIDHASH", "ID hash")?;
            if !self.unlocked(h) {
                return Err(err("CES-GIDOC1", format!("Unauthorized, id obj children for {h}")));
            }
            h
        } else {
            let h = arg_hash(args, "UTC-EHASH", "hash")?;
            if !self.unlocked(h) {
                return Err(err("CES-GOC1", format!("Unauthorized, obj children for {h}")));
            }
            h
        };
        Ok(Value::Array(self.children_list(h)?).to_string())
    }

    /// chum.md §5.3: the post-order walk reversed on the wire (parents first); unlocks every
    /// listed hash.
    fn children_list(&mut self, h: &str) -> Result<Vec<Value>, ServiceError> {
        let walk = self.store.children_tagged(h).map_err(store_err)?;
        let mut out = Vec::with_capacity(walk.len());
        for (kind, c) in walk.into_iter().rev() {
            let tag = match kind {
                RefKind::Obj => "object",
                RefKind::Id => "id",
                RefKind::Blob => "blob",
                RefKind::Clob => "clob",
            };
            self.accessible.insert(c);
            out.push(json!({"type": tag, "hash": c.to_hex()}));
        }
        Ok(out)
    }

    fn object(&mut self, args: &[Data], id_object: bool, log: &mut ChumLog, stats: &mut Stats) -> Result<String, ServiceError> {
        let h = arg_hash(args, if id_object { "UTC-EIDHASH" } else { "UTC-EHASH" }, if id_object { "ID hash" } else { "hash" })?;
        if !self.unlocked(h) {
            return Err(if id_object {
                refused("CES-GIDO1", format!("Unauthorized, id obj {h}"))
            } else {
                refused("CES-GO1", format!("Unauthorized, obj {h}"))
            });
        }
        let kind = self.store.kind(h).map_err(store_err)?;
        if id_object && kind != Some(EntryKind::Id) {
            return Err(err("CES-GIDO2", format!("Not an ID object: {h}")));
        }
        if !id_object && kind != Some(EntryKind::Object) {
            return Err(err("CES-GO2", format!("Not an object: {h}")));
        }
        let text = self.store.get(h).map_err(store_err)?;
        note_sent(log, stats, id_object, h.to_string());
        Ok(text)
    }

    fn blob(&mut self, id: u64, args: &[Data], log: &mut ChumLog, stats: &mut Stats) -> Result<Vec<Message>, ServiceError> {
        let h = arg_hash(args, "UTC-EHASH", "hash")?;
        let encoding = match args.get(1) {
            None | Some(None) => None,
            Some(Some(Value::String(s))) if s == "utf8" => Some("utf8"),
            Some(Some(v)) => return Err(err("CES-GBL2", format!("Unsupported encoding {v}"))),
        };
        if !self.unlocked(h) {
            return Err(refused("CES-GBL1", format!("Unauthorized, BLOB {h}")));
        }
        let kind = self.store.kind(h).map_err(store_err)?;
        if !matches!(kind, Some(EntryKind::Blob) | Some(EntryKind::Clob)) {
            // the reference fails while reading the file: a stream error, not an error answer
            return Ok(vec![Message::Text(rpc::stream_error(id))]);
        }
        // streamed: the session pulls one frame at a time from the store (the same frames as
        // reading the whole BLOB/CLOB and cutting it)
        if self.store.blob_size(h).is_err() {
            return Ok(vec![Message::Text(rpc::stream_error(id))]);
        }
        let text = encoding.map(|_| Vec::new());
        self.streams.push(OutStream { id, hash: h.to_string(), offset: 0, text, started: false });
        if kind == Some(EntryKind::Clob) {
            log.a_to_b_clob.push(h.to_string());
            stats.clobs_sent += 1;
        } else {
            log.a_to_b_blob.push(h.to_string());
            stats.blobs_sent += 1;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `push_json_str` appends exactly what serde_json writes for the string, escapes or not.
    #[test]
    fn json_strings_are_appended_as_serde_json_writes_them() {
        for t in ["", "abc", "ab\"c", "a\\b", "tab\there", "nl\n", "\u{1f}\u{7f}", "é ü 😀", "</script>", "\u{2028}"] {
            let mut out = String::from("[1,");
            push_json_str(&mut out, t);
            assert_eq!(out, format!("[1,{}", serde_json::to_string(t).unwrap()), "{t:?}");
        }
    }

    /// The roots lists written straight are the text `serde_json` writes for the same
    /// `Value`s, for every kind of root, a missing ID hash and a type name that needs escaping.
    #[test]
    fn roots_written_straight_are_what_serde_json_writes() {
        let h = "ab".repeat(32);
        let i = "cd".repeat(32);
        let rows: Vec<crate::session::RootRow> = vec![
            ("unversioned".into(), h.clone(), None, "Topic".into()),
            ("versioned".into(), h.clone(), Some(i.clone()), "Chat\"Info\\ é\u{1}".into()),
            ("versioned".into(), h.clone(), None, "X".into()),
            ("id".into(), i.clone(), None, "ChannelInfo".into()),
            ("version_node".into(), h.clone(), Some(i.clone()), "ChannelInfo".into()),
            ("version_node".into(), h.clone(), None, "".into()),
        ];
        let want = Value::Array(rows.iter().map(|(k, h, id, t)| wire_root(k, h, id.as_deref(), t)).collect()).to_string();
        let mut got = String::new();
        write_roots(&mut got, &rows);
        assert_eq!(got, want);
        let mut empty = String::new();
        write_roots(&mut empty, &[]);
        assert_eq!(empty, "[]");
        let v: Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v[1]["oneType"], "Chat\"Info\\ é\u{1}");
    }

    /// The sets keyed by `OwnHashes` behave as sets of hashes: every inserted hash is found,
    /// equal hashes hash equal (also in two maps with different seeds), hashes that share
    /// their first 8 bytes stay distinct, and absent ones are not found.
    #[test]
    fn own_hash_sets_are_sets_of_hashes() {
        let mut a: std::collections::HashSet<Hash, OwnHashes> = Default::default();
        let mut b: std::collections::HashMap<Hash, usize, OwnHashes> = Default::default();
        let hs: Vec<Hash> = (0u32..20_000).map(|i| Hash::of(&i.to_le_bytes())).collect();
        for (i, h) in hs.iter().enumerate() {
            assert!(a.insert(*h));
            b.insert(*h, i);
        }
        assert!(!a.insert(hs[7]), "a hash inserted twice is one entry");
        for (i, h) in hs.iter().enumerate() {
            assert!(a.contains(h));
            assert_eq!(b.get(h), Some(&i));
        }
        let mut same_prefix = hs[3];
        same_prefix.0[31] ^= 1;
        assert!(!a.contains(&same_prefix), "only the first 8 bytes are hashed; the whole key is compared");
        assert!(a.insert(same_prefix));
        assert!(a.contains(&hs[3]) && a.contains(&same_prefix));
        for i in 20_000u32..21_000 {
            assert!(!a.contains(&Hash::of(&i.to_le_bytes())));
        }
    }
}
