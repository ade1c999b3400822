//! The importer half (chum.md §6), as a resumable state machine: every step returns the
//! requests to send ([`Step::Call`], answered all together through [`Importer::resume`]), a
//! sleep, or the end. The session runs the calls with pipelining (chum.md §10.2).
//!
//! One pass: roots (§4.2) → children calls in rounds → every missing item fetched (in
//! parallel, within the window) → verification (§6.4) → version-node checks (§6.2) →
//! reachability → one store transaction per batch, dependencies first → `merge` events.

use std::collections::VecDeque;

// Keys are hashes by the ten thousand per pass: SipHash was 8 % of the importer's CPU
// (issue 8 profile). foldhash is seeded at random per process. The pass keys its maps with
// the 32 bytes of a hash ([`H`]), not its 64-character hex `String` (hashing, comparing and
// allocating those was about a quarter of the importer's CPU, issue 8 session 6): hex exists
// only at the edges (requests, events, the Chum log, error messages).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::time::Duration;

use lama_core::hash::{hash_hex, is_hash, sha256, Hash as H};
use lama_core::microdata::{self, RefKind, Value as MdValue};
use lama_core::store::Store;
use serde_json::Value;

use crate::exporter::{CLOSURE_INLINE_CHARS, CLOSURE_INLINE_MAX, CLOSURE_HINTS_MAX, GET_CLOSURE, GET_CLOSURE_PAGE, GET_OBJECTS_BINARY, BATCH_MAX, FASTPATH_VERSION, GET_CHILDREN_BATCH, GET_OBJECTS_BATCH, GET_ROOTS_SINCE, LAMA_PROBE, SUBSCRIBE, FIN, GET_ACCESSIBLE_ROOTS, GET_BLOB, GET_ID_OBJECT, GET_ID_OBJECT_CHILDREN, GET_OBJECT, GET_OBJECT_CHILDREN, GET_PROTOCOL_VERSION};
use crate::commit::{Committer, Fate, Owned, Text};
use crate::rpc::Data;
use crate::session::Cx;
use crate::Event;

/// chum.md §3.3: UNKNOWN-SERVICE on service 1 means "exporter not ready": retry.
pub const VERSION_RETRY_DELAY: Duration = Duration::from_millis(300);
/// An error answer to the roots request is retried this often, after this delay times the
/// attempt (connections.md §5.5), before the pass ends with the error.
pub const ROOTS_RETRIES: u32 = 3;
pub const ROOTS_RETRY_DELAY: Duration = Duration::from_millis(200);
pub const VERSION_RETRIES: u32 = 15;
/// chum.md §10.3: 8, and 9 should a v9-note peer ever appear.
const ACCEPTED_VERSIONS: [i64; 2] = [8, 9];
/// chum.md §6.4: remote peers must not alter local access rights.
const REFUSED_TYPES: [&str; 3] = ["Access", "IdAccess", "Group"];
use lama_core::store::VERSION_NODE_TYPES;
/// Objects per store transaction. The fetch commits what is ready once this many are (or would
/// be after the next call), not after every call: every commit of a durable store costs an
/// fsync, and v8's 256-request calls made a 70,000-object sync 273 commits, 40 % of its wall
/// time (issue 8, benches/RESULTS.md session 4).
pub const COMMIT_BATCH: usize = 4096;
/// ... and at the latest this long after the oldest uncommitted item became ready (the
/// session's timer drives it: [`Importer::commit_deadline`]), at the end of the fetch, and when
/// the session ends (connection closed, fatal error): a slow or interrupted pass keeps what it
/// verified, and `imported` events keep coming.
pub const COMMIT_INTERVAL: Duration = Duration::from_millis(500);
/// With "batch" (docs/chum-fastpath.md) a fetched chunk was committed only once this many
/// items were ready (the first chunk of a pass at once, at the end, and within
/// `COMMIT_INTERVAL`), up to `COMMIT_BATCH_FAST` per transaction:
/// each LMDB commit rewrites every B-tree page its random keys touched, so 35 commits of
/// 2,048 objects wrote the objects table several times over (issue 8 profile: the commits
/// were 10 % of the importer's CPU, plus their fsyncs). A crash loses at most what is not
/// committed yet; the next session fetches it again. The first chunk of a pass is committed
/// at once, so the first objects are visible as early as before. Items become ready in bursts
/// (a chain's entries once its oldest is stored), so with 16,384 per transaction the 70,000
/// objects of the initial-sync benchmark took 7 commits, a full batch and its 6,144-item rest
/// back to back three times; with 32,768 they take 5 (issue 8, session 13).
/// Session 16 handed a batch over only while none was out. Since session 18 ready items go
/// over as soon as [`MERGE_MIN`] are, into the commit thread's open group (commit.rs), which
/// puts each batch as it comes and commits several in one transaction: the pages are
/// written once per group, and the puts are done when the wire goes idle. (The pure core,
/// with no commit thread, keeps batches of 8,192; the tests below use that size.)
#[cfg(test)]
const COMMIT_MIN_FAST: usize = 8192;
/// With "batch", ready items are handed to the commit thread's open group once this many
/// are ready (or the fetch is over, or they waited `COMMIT_INTERVAL`): commit.rs `GROUP_AGE`
/// decides when its transaction commits (issue 8, session 18).
pub const MERGE_MIN: usize = 512;
const COMMIT_BATCH_FAST: usize = 32768;
/// Object requests per call (v8; with "batch", `FETCH_CHUNK_BATCHES` requests of `BATCH_MAX`):
/// the unit the session hands back whole (its answers are verified together).
const FETCH_CHUNK: usize = 256;
const FETCH_CHUNK_BATCHES: usize = 8;
/// Calls of a pass's fetch kept out at once: while the importer verifies and commits one
/// chunk, the exporter serves the next ones (issue 8). Bounds what is held: at most this
/// many chunks of answers (about `FETCH_AHEAD` × 2,048 objects with "batch").
pub const FETCH_AHEAD: usize = 3;
/// docs/chum-fastpath.md "closure-pages": entries per closure page the importer asks for.
pub const CLOSURE_PAGE: usize = 4096;


pub const TIMEOUT: &str = "LAMA-CHUM-TIMEOUT";

/// A request of the importer; `stream` is `Some(clob)` for GET_BLOB.
#[derive(Debug, Clone)]
pub struct Req {
    pub service: u32,
    pub args: Vec<Data>,
    pub stream: Option<bool>,
    /// GET_OBJECTS_BINARY: the answer is one binary message ([`Outcome::Bytes`]).
    pub binary: bool,
}

/// The answer to a [`Req`].
#[derive(Debug, Clone)]
pub enum Outcome {
    Ok(Data),
    /// A stream stored under this hash (already checked against the requested one).
    #[allow(dead_code)]
    Stored(String),
    /// A binary answer (docs/chum-fastpath.md "batch-binary"): the whole message, its 8-byte
    /// request id first (taken off where it is read, not by moving the payload).
    Bytes(Vec<u8>),
    /// One microdata text of a binary batch answer.
    Text(Text),
    Err { code: String, message: String },
}

pub enum Step {
    Call(Vec<Req>),
    /// Several calls, each answered (resumed) separately, in order; none at all means: wait
    /// for the calls already out. Only the fetch of a pass keeps more than one call out.
    Calls(Vec<Vec<Req>>),
    Sleep(Duration),
    Done,
}

/// A fatal importer error `(code, message)`: it ends the session.
pub type Fatal = (String, String);

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Object,
    Id,
    Blob,
    Clob,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "object" => Kind::Object,
            "id" => Kind::Id,
            "blob" => Kind::Blob,
            "clob" => Kind::Clob,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Id => "id",
            Kind::Blob => "blob",
            Kind::Clob => "clob",
        }
    }
}

struct Item {
    kind: Kind,
    expected_type: Option<String>,
    text: Option<Text>,
    type_name: String,
    /// (is the `data` reference, kind, target)
    refs: Vec<(bool, RefKind, H)>,
    /// Of a verified object or ID object: its SHA-256, and a versioned object's ID microdata.
    hash: [u8; 32],
    id_microdata: Option<String>,
    /// ... and its references with their paths, for the store's reverse maps (until committed).
    found_refs: Vec<microdata::HashRef>,
    /// A listed version node's depth, kept when it is committed (its text is dropped then).
    depth: Option<f64>,
    ok: bool,
    stored: bool,
    /// Its answer was processed (verified or refused).
    fetched: bool,
    /// Verified, but refused for a reference (CI-ACO) or by the store.
    bad: bool,
    // The commit bookkeeping of a pass (see [`Importer::received`]), here rather than in a
    // set or map each: one lookup per step instead of six (issue 8, session 7 profile).
    /// A listed version node (a key of `Com::nodes`), and its §6.2 check passed.
    node: bool,
    checked: bool,
    /// A root whose children were asked, or a verified item of the pass references it.
    reached: bool,
    /// In `Com::ready` (or committed since).
    queued: bool,
    /// Once received: its listed references not stored yet.
    blockers: Option<usize>,
    /// Committed by this pass.
    committed: bool,
    /// Handed to the commit thread, its fate not known yet (it counts as stored meanwhile;
    /// its type and ID microdata stay here for the §6.2 checks of listed nodes).
    inflight: bool,
    /// Listed as a child, or a root whose children list came (the children rounds).
    covered: bool,
    /// Once received: the items of the pass it references (until handed over).
    links: Vec<Ix>,
    /// Verified items of the pass that wait for this one to be stored.
    waiters: Vec<Ix>,
    /// Listed nodes whose §6.2 check waits for this item (their data) to be received.
    wait_data: Vec<Ix>,
}

/// An item's index in its pass (issue 8: the pass was a map keyed by hash, the largest item
/// of the importer's profile; a hash is now looked up once, when it is listed or referenced).
type Ix = u32;

/// The items of a pass: each listed hash gets an index once; everything after works on
/// indices.
///
/// The items live in chunks of [`ITEMS_CHUNK`] that never move: one `Vec` of 70,000 items
/// (about 300 bytes each) was copied at every growth, and those copies with the page faults
/// of each new buffer were 5-6 % of the importer's CPU in the initial sync (issue 8, session
/// 13 profile).
#[derive(Default)]
struct Items {
    ix: HashMap<H, Ix>,
    keys: Vec<H>,
    v: Vec<Vec<Item>>,
    len: usize,
}

/// Items per chunk of [`Items`] (a power of two).
const ITEMS_CHUNK_BITS: u32 = 12;
const ITEMS_CHUNK: usize = 1 << ITEMS_CHUNK_BITS;

impl Items {
    fn find(&self, h: &H) -> Option<Ix> {
        self.ix.get(h).copied()
    }
    fn get(&self, h: &H) -> Option<&Item> {
        self.ix.get(h).map(|&i| &self[i])
    }
    fn get_mut(&mut self, h: &H) -> Option<&mut Item> {
        match self.ix.get(h) {
            Some(&i) => Some(&mut self[i]),
            None => None,
        }
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// `h`'s index, adding it (made by `make`) if it is new; and whether it was.
    fn add(&mut self, h: H, make: impl FnOnce() -> Item) -> (Ix, bool) {
        match self.ix.entry(h) {
            std::collections::hash_map::Entry::Occupied(e) => (*e.get(), false),
            std::collections::hash_map::Entry::Vacant(e) => {
                let i = self.len as Ix;
                e.insert(i);
                self.keys.push(h);
                if self.len % ITEMS_CHUNK == 0 {
                    self.v.push(Vec::with_capacity(ITEMS_CHUNK));
                }
                self.v.last_mut().expect("a chunk with room").push(make());
                self.len += 1;
                (i, true)
            }
        }
    }
    fn key(&self, i: Ix) -> H {
        self.keys[i as usize]
    }
}

impl std::ops::Index<Ix> for Items {
    type Output = Item;
    fn index(&self, i: Ix) -> &Item {
        &self.v[(i >> ITEMS_CHUNK_BITS) as usize][i as usize & (ITEMS_CHUNK - 1)]
    }
}

impl std::ops::IndexMut<Ix> for Items {
    fn index_mut(&mut self, i: Ix) -> &mut Item {
        &mut self.v[(i >> ITEMS_CHUNK_BITS) as usize][i as usize & (ITEMS_CHUNK - 1)]
    }
}

impl std::ops::Index<&H> for Items {
    type Output = Item;
    fn index(&self, h: &H) -> &Item {
        &self[self.ix[h]]
    }
}

impl Item {
    fn new(kind: Kind, expected_type: Option<String>) -> Item {
        Item { kind, expected_type, text: None, type_name: String::new(), refs: Vec::new(), hash: [0; 32], id_microdata: None, found_refs: Vec::new(), depth: None, ok: false, stored: false, fetched: false, bad: false, node: false, checked: false, reached: false, queued: false, blockers: None, committed: false, inflight: false, covered: false, links: Vec::new(), waiters: Vec::new(), wait_data: Vec::new() }
    }
}

#[derive(Clone)]
struct Job {
    service: u32,
    hash: H,
    kind: Kind,
    expected: Option<String>,
}

/// A call of the fetch stage (see `Pass::out`).
enum Out {
    Objects,
    Closure(Vec<Job>),
    Page(Job),
}

#[derive(Default)]
struct Pass {
    /// dataIdHash -> [(node, dataType)], in first-seen order.
    groups: Vec<(H, Vec<(H, String)>)>,
    group_missing: Vec<(H, Vec<H>)>,
    /// Per entry of `group_missing`: how many of its newest nodes `next_calls` found covered
    /// or asked (they stay so).
    group_scan: Vec<usize>,
    queue: Vec<Job>,
    seen_jobs: HashSet<(u32, H)>,
    batch: usize,
    items: Items,
    /// Dependencies first, over all children lists.
    order: Vec<Ix>,
    /// Hashes whose children were asked for (reachability starts).
    start: Vec<H>,
    calls: Vec<Job>,
    fetch: Vec<Ix>,
    /// BLOBs/CLOBs that verified objects reference as such (chum.md §6.4): only these are
    /// fetched as streams.
    streams_wanted: HashSet<(Kind, H)>,
    /// The fetch calls out, oldest first: the hashes each asked for.
    inflight: VecDeque<Vec<Ix>>,
    /// Every call of the fetch stage out, oldest first (object fetches, and with
    /// "closure-pages" the one closure or page request beside them).
    out: VecDeque<Out>,
    /// "closure-pages" (docs/chum-fastpath.md): this pass asks 106 in pages and fetches from
    /// the first page on; the roots whose walk has more pages and their tokens; a 106 or 109
    /// call is out; how much of `order` went to the fetch; the expected type of each root.
    paged: bool,
    pages: VecDeque<(Job, String)>,
    closure_out: bool,
    fed: usize,
    expects: HashMap<H, String>,
    /// Every object / ID object to fetch, dependencies first, and how many were asked.
    texts: Vec<Ix>,
    next: usize,
    com: Com,
    /// docs/chum-fastpath.md "closure": microdata that came inline with a GET_CLOSURE answer,
    /// verified like a 101 answer when the fetch starts.
    prefetched: HashMap<H, String>,
    /// Since when items have been ready but not committed (see [`COMMIT_INTERVAL`]).
    ready_since: Option<std::time::Instant>,
    /// The importer's number of this pass (the commit thread's refusals count per pass).
    no: u64,
}

/// The incremental commit state of a pass (see [`Importer::received`]).
#[derive(Default)]
struct Com {
    /// Listed version node -> (dataIdHash, dataType).
    nodes: HashMap<H, (H, String)>,
    ready: VecDeque<Ix>,
    /// Items committed by this pass.
    committed: usize,
    /// Items handed to the commit thread by this pass.
    handed: usize,
    /// The batches handed to the commit thread whose fates are not known yet, oldest first.
    sent: VecDeque<Sent>,
    /// When the session should look for finished commits again (their `imported` events).
    poll_at: Option<std::time::Instant>,
    /// Some item of the pass is `bad` (refused for a reference or by the store): only then
    /// can a ready item reference one, and `flush` looks.
    any_bad: bool,
    /// The worklist of [`release`] (kept for its buffer).
    cascade: Vec<Ix>,
}

/// A batch handed to the commit thread: its items in order, and whether its `imported` event
/// is the flush's first (it then reports the pass's BLOBs/CLOBs).
struct Sent {
    hashes: Vec<Ix>,
    first: Option<(Vec<String>, Vec<String>)>,
}

/// How often the session looks for finished commits while some are out.
const COMMIT_POLL: Duration = Duration::from_millis(20);
/// Smaller batches are committed on the session thread (when no batch is out).
const COMMIT_HERE_MAX: usize = 1024;

enum Stage {
    Start,
    Version(u32),
    VersionSleep(u32),
    /// The lama extension probe (docs/chum-fastpath.md, service 100) is out; the remote's
    /// protocol version is kept for the `version` event.
    Probe(i64),
    Roots,
    /// A pause before the roots request is sent again: the last one was answered with an
    /// error (connections.md §5.5: the reference answers SB-READ2 under write load).
    RootsSleep,
    Children(Box<Pass>),
    /// Objects and ID objects are out.
    Fetch(Box<Pass>),
    /// Then the BLOBs/CLOBs that verified objects reference as such.
    Streams(Box<Pass>),
    Fin,
    PollSleep,
    /// A zero sleep before the peer mark of the pass just ended is written (keep-running
    /// sessions): the driver hands the pass's `imported` events out first, so a push's
    /// latency does not include that second commit (docs/chum-fastpath.md "Push").
    PersistMark(u64),
    /// The same zero sleep before the receipt goes out, when the mark is written after it.
    ReceiptFirst,
    /// SUBSCRIBE (103) is out (docs/chum-fastpath.md "Push").
    Subscribe,
    /// LAMA_RECEIPT (107) is out (docs/tracing.md §4), with what it says.
    Receipt(Option<u64>, Vec<String>),
    Done,
}

pub struct Importer {
    store: Store,
    fast_path: bool,
    remote_person: String,
    /// Features of a lama exporter that answered the probe (docs/chum-fastpath.md).
    features: HashSet<String>,
    /// `"<remote person>/<epoch>"` when the exporter serves roots since a mark.
    peer_key: Option<String>,
    since: u64,
    /// The mark was sent with a 106 in this session.
    mark_told: bool,
    /// The mark of the current roots-since answer, and what the pass started with.
    pass_mark: Option<u64>,
    errors_before: u64,
    pending_before: usize,
    subscribed: bool,
    keep_running: bool,
    poll_interval: Duration,
    /// Error answers to the current roots request so far (reset by an answer).
    roots_attempts: u32,
    stage: Stage,
    full_sync: bool,
    /// BLOB/CLOB hash -> reason (chum.md §2.6: retried at the next pass).
    pub pending: HashMap<String, String>,
    /// "notify-roots": `(since, mark, roots)` carried by NOTIFYs not yet used; `notes_bad`
    /// when one could not be read (the next pass then asks 102).
    notes: Vec<(u64, u64, Vec<Value>)>,
    notes_bad: bool,
    /// "notify-closure": the closures those NOTIFYs carried (hash -> a paged 106 entry), and
    /// those of the notes the current pass took: a children round whose every root is here
    /// uses them instead of asking 106.
    note_closure: HashMap<H, Value>,
    inline: HashMap<H, Value>,
    /// "closure" hints: roots of earlier passes of this session that are stored here (so is
    /// their closure), not yet told to the exporter; the hashes told or queued.
    hints: Vec<String>,
    hinted: HashSet<String>,
    /// The current pass's roots worth a hint (per version-node ID only the newest).
    pass_hints: Vec<String>,
    /// The current pass asked 106.
    pass_closure: bool,
    /// docs/tracing.md §4: roots the current pass listed, the Chum log's error count at its
    /// start, and the receipt to send when it ended.
    pass_roots: usize,
    log_errors_before: usize,
    receipt: Option<(Option<u64>, Vec<String>)>,
    /// The pass's mark, to be written once its receipt is out (see `end_pass`).
    mark_due: Option<u64>,
    /// The mark the pass's last commit wrote with its objects (see [`Importer::commit_mark`]).
    mark_committed: std::cell::Cell<Option<u64>>,
    /// The store transactions of the passes, on a thread of their own (commit.rs).
    committer: Committer,
    passes: u64,
}

fn fatal(code: &str, message: String) -> Fatal {
    let m = if message.starts_with(code) { message } else { format!("{code}: {message}") };
    (code.to_string(), m)
}

fn req(service: u32, args: Vec<Data>) -> Req {
    Req { service, args, stream: None, binary: false }
}

impl Importer {
    pub fn new(store: Store, keep_running: bool, poll_interval: Duration, fast_path: bool, remote_person: String) -> Importer {
        let store_clone = store.clone();
        Importer {
            store,
            fast_path,
            remote_person,
            features: HashSet::default(),
            peer_key: None,
            since: 0,
            pass_mark: None,
            mark_told: false,
            errors_before: 0,
            pending_before: 0,
            subscribed: false,
            keep_running, poll_interval, roots_attempts: 0, stage: Stage::Start, full_sync: false, pending: HashMap::default(),
            notes: Vec::new(),
            notes_bad: false,
            note_closure: HashMap::default(),
            inline: HashMap::default(),
            hints: Vec::new(),
            hinted: HashSet::default(),
            pass_hints: Vec::new(),
            pass_closure: false,
            pass_roots: 0,
            log_errors_before: 0,
            receipt: None,
            committer: Committer::new(store_clone, node_depth),
            passes: 0,
            mark_due: None,
            mark_committed: std::cell::Cell::new(None),
        }
    }

    /// A NOTIFY came (docs/chum-fastpath.md "Push"); with "notify-roots" its argument is
    /// `{"since", "mark", "roots"}`, kept for the next pass.
    pub fn notified(&mut self, payload: Option<Value>) {
        if self.peer_key.is_none() || !self.features.contains("notify-roots") {
            return;
        }
        let parsed = payload.as_ref().and_then(|p| {
            let since = p.get("since")?.as_u64()?;
            let mark = p.get("mark")?.as_u64()?;
            let roots = p.get("roots")?.as_array()?.clone();
            Some((since, mark, roots))
        });
        match parsed {
            Some(n) => self.notes.push(n),
            None => self.notes_bad = true,
        }
        if self.features.contains("notify-closure") {
            if let Some(c) = payload.as_ref().and_then(|p| p.get("closure")).and_then(notify_closure) {
                self.note_closure.extend(c);
            }
        }
    }

    /// "notify-closure": the entries of the closures a NOTIFY carried for a children round
    /// whose every root has one, as a paged 106 answer text (in `jobs`' order); `None` (ask
    /// 106) otherwise. What is taken is verified exactly like a 106 answer.
    fn take_inline(&mut self, jobs: &[Job]) -> Option<Vec<Value>> {
        if self.inline.is_empty() || jobs.is_empty() || !jobs.iter().all(|j| self.inline.contains_key(&j.hash)) {
            return None;
        }
        Some(jobs.iter().map(|j| self.inline.remove(&j.hash).expect("checked")).collect())
    }

    /// The next pass: from the roots the NOTIFYs carried when they chain onto our mark (every
    /// root that became accessible after it is among them), else with a roots request.
    fn poll(&mut self, cx: &mut Cx) -> Result<Step, Fatal> {
        let notes = std::mem::take(&mut self.notes);
        let closures = std::mem::take(&mut self.note_closure);
        if !std::mem::take(&mut self.notes_bad) && !notes.is_empty() && self.peer_key.is_some() {
            let mut upto = self.since;
            let mut roots = Vec::new();
            let mut chained = true;
            for (since, mark, list) in notes {
                if since > upto {
                    chained = false;
                    break;
                }
                upto = upto.max(mark);
                roots.extend(list);
            }
            if chained {
                self.stage = Stage::Roots;
                self.pass_mark = Some(upto);
                self.inline = closures;
                return self.roots_received(Outcome::Ok(Some(Value::String(Value::Array(roots).to_string()))), cx);
            }
        }
        self.roots()
    }

    /// Continue with the answers of the last call (empty after a sleep or at the start).
    pub fn resume(&mut self, results: Vec<Outcome>, cx: &mut Cx) -> Result<Step, Fatal> {
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        match stage {
            Stage::Start => {
                self.stage = Stage::Version(0);
                Ok(Step::Call(vec![req(GET_PROTOCOL_VERSION, vec![])]))
            }
            Stage::VersionSleep(attempt) => {
                self.stage = Stage::Version(attempt);
                Ok(Step::Call(vec![req(GET_PROTOCOL_VERSION, vec![])]))
            }
            Stage::Version(attempt) => {
                let r = results.into_iter().next().unwrap_or(Outcome::Err { code: TIMEOUT.into(), message: "no answer".into() });
                let v = match r {
                    Outcome::Ok(v) => v,
                    Outcome::Err { code, .. } if code == "UNKNOWN-SERVICE" && attempt < VERSION_RETRIES => {
                        self.stage = Stage::VersionSleep(attempt + 1);
                        return Ok(Step::Sleep(VERSION_RETRY_DELAY));
                    }
                    Outcome::Err { code, message } => {
                        let c = if code.is_empty() { "CS-MISMATCH".to_string() } else { code };
                        return Err(fatal(&c, format!("version check failed: {message}")));
                    }
                    Outcome::Stored(_) | Outcome::Bytes(_) | Outcome::Text(_) => None,
                };
                let n = match &v {
                    Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
                    _ => None,
                };
                match n {
                    Some(n) if ACCEPTED_VERSIONS.contains(&n) => {
                        if self.fast_path {
                            // chum.md §10.3: probed only after the version check succeeded
                            self.stage = Stage::Probe(n);
                            return Ok(Step::Call(vec![req(LAMA_PROBE, vec![])]));
                        }
                        cx.events.push_back(Event::Version { remote: n, mode: "v8".into() });
                        self.roots()
                    }
                    _ => {
                        let shown = v.map_or("undefined".to_string(), |v| v.to_string());
                        Err(fatal("CS-MISMATCH", format!("remote protocol version {shown}, expected 8")))
                    }
                }
            }
            Stage::Probe(n) => {
                // A ONE peer answers UNKNOWN-SERVICE: plain v8 (chum.md §10.3)
                let mut mode = "v8";
                if let Some(Outcome::Ok(Some(Value::Object(m)))) = results.first() {
                    if m.get("lama").and_then(Value::as_i64) == Some(FASTPATH_VERSION) {
                        mode = "fast";
                        if let Some(Value::Array(f)) = m.get("features") {
                            self.features = f.iter().filter_map(|x| x.as_str().map(str::to_string)).collect();
                        }
                        if let (true, Some(epoch)) = (self.features.contains("roots-since"), m.get("epoch").and_then(Value::as_str)) {
                            let key = format!("{}/{epoch}", self.remote_person);
                            self.since = self.store.peer_mark(&key).unwrap_or(0);
                            self.peer_key = Some(key);
                        }
                    }
                }
                cx.events.push_back(Event::Version { remote: n, mode: mode.into() });
                self.roots()
            }
            Stage::Subscribe => {
                self.notes.clear();
                self.note_closure.clear();
                self.subscribed = matches!(results.first(), Some(Outcome::Ok(_)));
                self.stage = Stage::PollSleep;
                Ok(Step::Sleep(self.poll_interval * if self.subscribed { 10 } else { 1 }))
            }
            Stage::PollSleep => self.poll(cx),
            Stage::RootsSleep => self.roots(),
            Stage::Receipt(mark, errors) => {
                // the pass's mark, held back so the receipt went out before this commit (its
                // answer, or a timeout: the objects are stored either way)
                if let Some(m) = self.mark_due.take() {
                    self.persist_mark(m, cx);
                }
                if let Some(Outcome::Err { code, message }) = results.into_iter().next() {
                    if code == TIMEOUT {
                        return Err(fatal(&code, message));
                    }
                }
                cx.events.push_back(Event::ReceiptSent { mark, errors });
                self.after_receipt()
            }
            Stage::PersistMark(m) => {
                self.persist_mark(m, cx);
                self.after_pass()
            }
            Stage::ReceiptFirst => self.after_pass(),
            Stage::Roots => {
                let r = results.into_iter().next().unwrap_or(Outcome::Err { code: TIMEOUT.into(), message: "no answer".into() });
                if matches!(r, Outcome::Ok(_)) {
                    self.roots_attempts = 0;
                }
                if self.peer_key.is_some() {
                    // docs/chum-fastpath.md 102: a JSON string of {"mark", "roots"}; the list
                    // is taken as parsed (it was written back to a string and parsed again:
                    // 10,000 roots, issue 8)
                    if let Outcome::Ok(v) = &r {
                        // typed first (no `Value` map per root: 10,000 of them were most of B's
                        // ~40 ms between the roots answer and its first 106, issue 8); anything
                        // unusual goes the general way, with its errors
                        if let Some((m, roots)) = v.as_ref().and_then(Value::as_str).and_then(typed_roots_since) {
                            self.errors_before = cx.stats.errors;
                            self.pending_before = self.pending.len();
                            self.log_errors_before = cx.log.errors.len();
                            self.pass_roots = 0;
                            self.pass_mark = Some(m);
                            return self.start_pass(roots, cx);
                        }
                        let parsed = v.as_ref().and_then(Value::as_str).and_then(|s| serde_json::from_str::<Value>(s).ok());
                        let (mark, roots) = match parsed {
                            Some(Value::Object(mut d)) => (d.get("mark").and_then(Value::as_u64), d.remove("roots")),
                            _ => (None, None),
                        };
                        self.errors_before = cx.stats.errors;
                        self.pending_before = self.pending.len();
                        self.log_errors_before = cx.log.errors.len();
                        self.pass_roots = 0;
                        return match (mark, roots) {
                            (Some(m), Some(Value::Array(list))) => {
                                self.pass_mark = Some(m);
                                let roots = self.root_list(list, cx);
                                self.start_pass(roots, cx)
                            }
                            _ => {
                                cx.error("DAH-PAO1", "roots answer is not a string", false);
                                self.end_pass(cx)
                            }
                        };
                    }
                }
                self.roots_received(r, cx)
            }
            Stage::Children(mut pass) => {
                let calls = std::mem::take(&mut pass.calls);
                let results: Vec<Children> = if self.pass_closure {
                    self.split_closure(&mut pass, &calls, results, false)?.into_iter().map(|c| c.0).collect()
                } else if self.features.contains("children-batch") {
                    split_children_batch(&calls.chunks(BATCH_MAX).map(|c| c.len()).collect::<Vec<_>>(), results)?
                } else {
                    results.into_iter().map(Children::Raw).collect()
                };
                for (job, res) in calls.into_iter().zip(results) {
                    let Some(children) = self.children_result(&job.hash, res, cx)? else { continue };
                    pass.start.push(job.hash);
                    for (ckind, ch) in children {
                        let (i, new) = pass.items.add(ch, || Item::new(ckind, None));
                        pass.items[i].covered = true;
                        if new {
                            pass.order.push(i);
                        }
                    }
                    let (i, new) = pass.items.add(job.hash, || Item::new(job.kind, job.expected.clone()));
                    if new {
                        pass.order.push(i);
                    } else if job.expected.is_some() {
                        pass.items[i].expected_type = job.expected.clone();
                    }
                    pass.items[i].covered = true;
                }
                self.children_round(pass, cx)
            }
            Stage::Fetch(mut pass) => {
                match pass.out.pop_front() {
                    Some(Out::Closure(jobs)) => {
                        pass.closure_out = false;
                        let r = self.split_closure(&mut pass, &jobs, results, true);
                        if let Err(f) = r.and_then(|res| self.paged_children(&mut pass, jobs, res, cx)) {
                            self.flush(&mut pass, Vec::new(), Vec::new(), false, false, cx);
                            self.settle(&mut pass, cx);
                            return Err(f);
                        }
                        return self.fetch_next(pass, cx);
                    }
                    Some(Out::Page(job)) => {
                        pass.closure_out = false;
                        // a 109 answer is one root's entry of a 106 answer
                        let results: Vec<Outcome> = results
                            .into_iter()
                            .map(|r| match r {
                                Outcome::Ok(Some(Value::String(s))) => Outcome::Ok(Some(Value::String(format!("[{s}]")))),
                                other => other,
                            })
                            .collect();
                        let jobs = vec![job];
                        let r = self.split_closure(&mut pass, &jobs, results, true);
                        if let Err(f) = r.and_then(|res| self.paged_children(&mut pass, jobs, res, cx)) {
                            self.flush(&mut pass, Vec::new(), Vec::new(), false, false, cx);
                            self.settle(&mut pass, cx);
                            return Err(f);
                        }
                        return self.fetch_next(pass, cx);
                    }
                    Some(Out::Objects) | None => {}
                }
                if let Err(f) = self.fetch_received(&mut pass, results, cx) {
                    // a fatal answer (a request that timed out for good): what was verified
                    // before it is kept
                    self.flush(&mut pass, Vec::new(), Vec::new(), false, false, cx);
                    self.settle(&mut pass, cx);
                    return Err(f);
                }
                self.commit_if_due(&mut pass, cx);
                self.fetch_next(pass, cx)
            }
            Stage::Streams(mut pass) => {
                let fetch = std::mem::take(&mut pass.fetch);
                let mut new_blobs = Vec::new();
                let mut new_clobs = Vec::new();
                for (i, res) in fetch.into_iter().zip(results) {
                    let h = pass.items.key(i);
                    let kind = pass.items[i].kind;
                    let clob = kind == Kind::Clob;
                    match res {
                        Outcome::Stored(_) => {
                            let it = &mut pass.items[i];
                            it.ok = true;
                            it.stored = true;
                            it.fetched = true;
                            release(&mut pass, i);
                            let h = h.to_string();
                            self.pending.remove(&h);
                            if clob {
                                cx.log.b_to_a_clob.push(h.clone());
                                cx.stats.clobs_received += 1;
                                new_clobs.push(h);
                            } else {
                                cx.log.b_to_a_blob.push(h.clone());
                                cx.stats.blobs_received += 1;
                                new_blobs.push(h);
                            }
                        }
                        Outcome::Err { code, message } => {
                            let reason = if code.is_empty() || message.starts_with(&code) { message } else { format!("{code}: {message}") };
                            self.pending.insert(h.to_string(), reason.clone());
                            cx.events.push_back(Event::Pending { hash: h.to_string(), kind: kind.as_str().into(), reason });
                        }
                        Outcome::Ok(_) | Outcome::Bytes(_) | Outcome::Text(_) => {
                            let reason = "CIEC-FBL1: the answer is not a stream".to_string();
                            self.pending.insert(h.to_string(), reason.clone());
                            cx.events.push_back(Event::Pending { hash: h.to_string(), kind: kind.as_str().into(), reason });
                        }
                    }
                }
                self.flush(&mut pass, new_blobs, new_clobs, true, true, cx);
                report_unreachable(&mut pass, cx);
                for (id_hash, ms) in &pass.group_missing {
                    let mut best: Option<(f64, &H)> = None;
                    for n in ms {
                        let Some(it) = pass.items.get(n) else { continue };
                        let Some(d) = it.depth else { continue };
                        if !it.stored {
                            continue;
                        }
                        if best.is_none_or(|b| d > b.0) {
                            best = Some((d, n));
                        }
                    }
                    if let Some((_, n)) = best {
                        if pass.items.get(n).is_some_and(|it| it.committed) {
                            let data_type = pass
                                .groups
                                .iter()
                                .find(|g| &g.0 == id_hash)
                                .and_then(|g| g.1.iter().find(|x| &x.0 == n))
                                .map(|x| x.1.clone())
                                .unwrap_or_default();
                            cx.events.push_back(Event::Merge { id_hash: id_hash.to_string(), node: n.to_string(), data_type });
                        }
                    }
                }
                self.end_pass(cx)
            }
            Stage::Fin => {
                if let Some(Outcome::Err { code, message }) = results.into_iter().next() {
                    if code == TIMEOUT {
                        return Err(fatal(&code, message));
                    }
                }
                Ok(Step::Done)
            }
            Stage::Done => Ok(Step::Done),
        }
    }

    /// The roots of a pass: a roots answer, or the roots NOTIFYs carried ("notify-roots").
    fn roots_received(&mut self, r: Outcome, cx: &mut Cx) -> Result<Step, Fatal> {
        self.errors_before = cx.stats.errors;
        self.pending_before = self.pending.len();
        self.log_errors_before = cx.log.errors.len();
        self.pass_roots = 0;
        match r {
        Outcome::Ok(v) => match self.parse_roots(v, cx) {
            Some(roots) => self.start_pass(roots, cx),
            None => self.end_pass(cx),
        },
        Outcome::Err { code, message } if code == TIMEOUT => Err(fatal(&code, message)),
        Outcome::Err { .. } if self.roots_attempts < ROOTS_RETRIES => {
            // connections.md §5.5: an error answer is a failed request to retry (the pass
            // has not started: nothing to undo)
            self.roots_attempts += 1;
            cx.stats.retries += 1;
            self.stage = Stage::RootsSleep;
            Ok(Step::Sleep(ROOTS_RETRY_DELAY * self.roots_attempts))
        }
        Outcome::Err { code, message } => {
            self.roots_attempts = 0;
            cx.error(&code, &format!("roots request failed: {message}"), false);
            self.end_pass(cx)
        }
        Outcome::Stored(_) | Outcome::Bytes(_) | Outcome::Text(_) => {
            cx.error("DAH-PAO1", "roots answer is a stream", false);
            self.end_pass(cx)
        }
        }
    }

    /// "closure" (docs/chum-fastpath.md): one 106 request per BATCH_MAX roots; the first
    /// carries the hints not told yet.
    fn closure_requests(&mut self, calls: &[Job], paged: bool) -> Vec<Req> {
        let mut reqs = Vec::new();
        for c in calls.chunks(BATCH_MAX) {
            let n = self.hints.len().min(CLOSURE_HINTS_MAX);
            let hints: Vec<Value> = self.hints.drain(..n).map(Value::String).collect();
            let roots = Value::Array(c.iter().map(|j| Value::String(j.hash.to_string())).collect());
            let mut args = vec![Some(roots), Some(Value::Array(hints))];
            // the first 106 of the session tells the exporter our mark, so it can seed what it
            // knows we hold (docs/chum-fastpath.md "Mark")
            if !self.mark_told && self.peer_key.is_some() && self.since > 0 {
                self.mark_told = true;
                args.push(Some(Value::from(self.since)));
            }
            if paged {
                // "closure-pages": each root's closure in pages, dependencies first
                if args.len() == 2 {
                    args.push(Some(Value::Null));
                }
                args.push(Some(serde_json::json!({"page": CLOSURE_PAGE})));
            }
            reqs.push(req(GET_CLOSURE, args));
        }
        reqs
    }

    /// Split 106 answers into one outcome per root shaped like a service 4/5 answer (the
    /// children list as a JSON string); keep the inline microdata (only for a listed hash or
    /// the root: anything else an exporter slips in is dropped here, and what is kept is
    /// verified by hash like any fetched object, chum.md §6.4).
    ///
    /// `paged`: the request asked for pages ("closure-pages"): the lists come dependencies
    /// first and a root's entry may carry `"more": t` (returned beside its list).
    fn split_closure(&self, pass: &mut Pass, calls: &[Job], results: Vec<Outcome>, paged: bool) -> Result<Vec<(Children, Option<String>)>, Fatal> {
        let sizes: Vec<usize> = calls.chunks(BATCH_MAX).map(|c| c.len()).collect();
        let mut out = Vec::with_capacity(calls.len());
        let mut jobs = calls.iter();
        for (&n, res) in sizes.iter().zip(results) {
            let chunk: Vec<&Job> = jobs.by_ref().take(n).collect();
            // an answer of good entries only is parsed straight into keys (issue 8: a first
            // sync's 70,000 entries went through a `Value` each); anything else goes the
            // general way below, which reports it
            if let Outcome::Ok(Some(Value::String(s))) = &res {
                if let Some(parsed) = typed_closure(s, n, paged) {
                    take_closures(pass, chunk.into_iter(), parsed, &mut out);
                    continue;
                }
            }
            let per_root = split_batch(&[n], vec![res], "CES-GOC1", |c| c)?;
            for (job, res) in chunk.iter().zip(per_root) {
                let Outcome::Ok(Some(Value::Object(mut m))) = res else {
                    out.push((Children::Raw(match res {
                        Outcome::Ok(_) => Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed closure answer".into() },
                        other => other,
                    }), None));
                    continue;
                };
                let more = match m.remove("more") {
                    Some(Value::String(t)) if paged => Some(t),
                    None => None,
                    Some(_) if !paged => None,
                    Some(_) => {
                        out.push((Children::Raw(Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed closure answer: a page token is not a string".into() }), None));
                        continue;
                    }
                };
                let Some(Value::Array(mut children)) = m.remove("children") else {
                    out.push((Children::Raw(Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed closure answer".into() }), None));
                    continue;
                };
                if paged {
                    // dependencies first already: the checks below read the 4/5 order
                    children.reverse();
                }
                if let Some(Value::String(t)) = m.remove("root") {
                    pass.prefetched.insert(job.hash, t);
                }
                let mut listed = Vec::with_capacity(children.len());
                for mut c in children {
                    if let Value::Object(e) = &mut c {
                        // a bad hash is reported with the list (checked_values fails on it)
                        if let (Some(h), Some(Value::String(t))) = (e.get("hash").and_then(Value::as_str).and_then(H::parse), e.remove("data")) {
                            pass.prefetched.insert(h, t);
                        }
                    }
                    listed.push(c);
                }
                // a list of good entries is taken as it is (issue 8: a first sync's 70,000-entry
                // list was written back to a string and parsed again); anything else goes the
                // general way of a service 4/5 answer, which reports it
                match checked_values(&listed) {
                    Some(list) => out.push((Children::Parsed(list), more)),
                    None => out.push((Children::Raw(Outcome::Ok(Some(Value::String(Value::Array(listed).to_string())))), more)),
                }
            }
        }
        Ok(out)
    }

    /// Verify what came inline (as if a 101 answer had brought it) before anything is
    /// fetched: those items go first in the fetch order and are not requested. Only items
    /// the pass decided to fetch count; other inline data is dropped.
    fn take_prefetched(&self, pass: &mut Pass, cx: &mut Cx) -> Result<(), Fatal> {
        if pass.prefetched.is_empty() {
            return Ok(());
        }
        let mut pre: Vec<Ix> = Vec::new();
        let mut rest: Vec<Ix> = Vec::new();
        for i in std::mem::take(&mut pass.texts) {
            if pass.prefetched.contains_key(&pass.items.key(i)) { pre.push(i) } else { rest.push(i) }
        }
        for &i in &pre {
            let text = pass.prefetched.remove(&pass.items.key(i)).unwrap_or_default();
            self.verify(pass, i, Outcome::Ok(Some(Value::String(text))), cx)?;
        }
        pass.prefetched.clear();
        self.received(pass, &pre, cx);
        // nothing left to fetch (every object came inline): this may be the pass's last commit
        self.flush(pass, Vec::new(), Vec::new(), false, rest.is_empty(), cx);
        pass.next = pre.len();
        pre.extend(rest);
        pass.texts = pre;
        Ok(())
    }

    /// Remember the roots of this pass worth a hint: per version-node ID the newest listed
    /// node (its closure holds the older ones), every other root itself.
    fn note_hint_candidates(&mut self, roots: &[Root]) {
        self.pass_hints.clear();
        if !self.features.contains("closure") {
            return;
        }
        let mut newest: HashMap<H, H> = HashMap::default();
        let mut order: Vec<H> = Vec::new();
        for r in roots {
            match r.kind {
                RootKind::Node => {
                    if let (Some(id), Some(n)) = (r.data_id_hash, r.node) {
                        if newest.insert(id, n).is_none() {
                            order.push(id);
                        }
                    }
                }
                _ => {
                    for h in [r.hash, r.id_hash].into_iter().flatten() {
                        self.pass_hints.push(h.to_hex());
                    }
                }
            }
        }
        for id in order {
            self.pass_hints.push(newest[&id].to_hex());
        }
    }

    /// At the end of every pass: the pass's hint candidates that are stored here become
    /// hints; a 106 pass that recorded an error stops using 106 for this session (the
    /// exporter may have pruned wrongly, or our store lost something: the whole-closure walk
    /// of 105 fetches whatever is missing).
    fn closure_pass_ended(&mut self, cx: &mut Cx) {
        self.inline.clear();
        for h in std::mem::take(&mut self.pass_hints) {
            if !self.hinted.contains(&h) && self.store.has(&h).unwrap_or(false) {
                // told once: `hinted` also marks the queued ones
                self.hinted.insert(h.clone());
                self.hints.push(h);
            }
        }
        if std::mem::take(&mut self.pass_closure) && cx.stats.errors > self.errors_before {
            self.features.remove("closure");
        }
    }

    /// The answers of the oldest fetch call: verified, then what they allow is made ready.
    fn fetch_received(&self, pass: &mut Pass, results: Vec<Outcome>, cx: &mut Cx) -> Result<(), Fatal> {
        let fetch = pass.inflight.pop_front().unwrap_or_default();
        let results = if self.features.contains("batch") {
            split_objects_batch(&fetch.chunks(BATCH_MAX).map(|c| c.len()).collect::<Vec<_>>(), results)?
        } else {
            results
        };
        for (done, (&i, res)) in fetch.iter().zip(results).enumerate() {
            if let Err(f) = self.verify(pass, i, res, cx) {
                self.received(pass, &fetch[..done], cx);
                return Err(f);
            }
        }
        self.received(pass, &fetch, cx);
        Ok(())
    }

    /// Objects asked for per fetch call.
    fn fetch_chunk(&self) -> usize {
        if self.features.contains("batch") { BATCH_MAX * FETCH_CHUNK_BATCHES } else { FETCH_CHUNK }
    }

    /// After a fetch call was verified: commit what is ready if [`COMMIT_BATCH`] items are
    /// (or would be after the next call), the fetch is over, or the oldest waited
    /// [`COMMIT_INTERVAL`]; else remember since when they wait.
    fn commit_if_due(&self, pass: &mut Pass, cx: &mut Cx) {
        self.reap(pass, false, cx);
        if pass.com.ready.is_empty() {
            pass.ready_since = None;
            return;
        }
        // (with "closure-pages" the fetch is over only once no page is left to come)
        let end = pass.next >= pass.texts.len() && pass.inflight.is_empty() && !pass.closure_out && pass.pages.is_empty();
        let late = matches!((pass.ready_since, cx.now), (Some(t), Some(n)) if n.saturating_duration_since(t) >= COMMIT_INTERVAL);
        // v8: a full COMMIT_BATCH; fast path: the pass's first chunk at once (the first objects
        // are visible early), then MERGE_MIN at a time, into the commit thread's open group
        // (commit.rs)
        let full = if self.features.contains("batch") {
            pass.com.handed == 0 || pass.com.ready.len() >= MERGE_MIN
        } else {
            pass.com.ready.len() + self.fetch_chunk() > COMMIT_BATCH
        };
        if end || late || full {
            // while the fetch goes on, whole transactions only: what is left over (less than
            // one, the newest ready items) waits for the next commit instead of making a small
            // one of its own (`ready` stays in dependency order)
            let max = if self.features.contains("batch") { COMMIT_BATCH_FAST } else { COMMIT_BATCH };
            let n = pass.com.ready.len();
            let rest = if !end && n > max { pass.com.ready.split_off(n - n % max) } else { VecDeque::new() };
            // the fetch is over: this commit may be the pass's last one (no BLOB/CLOB after)
            self.flush(pass, Vec::new(), Vec::new(), false, end, cx);
            pass.com.ready.extend(rest);
            pass.ready_since = if pass.com.ready.is_empty() { None } else { cx.now };
        } else if pass.ready_since.is_none() {
            pass.ready_since = cx.now;
        }
    }

    /// When the session should call [`commit_ready`](Self::commit_ready): verified items wait
    /// for their commit (at most [`COMMIT_INTERVAL`]).
    /// Also while batches are out on the commit thread: their `imported` events are handed out
    /// within [`COMMIT_POLL`] of their commit.
    pub fn commit_deadline(&self) -> Option<std::time::Instant> {
        match &self.stage {
            Stage::Fetch(p) => {
                let ready = if p.com.ready.is_empty() { None } else { p.ready_since.map(|t| t + COMMIT_INTERVAL) };
                let sent = if p.com.sent.is_empty() { None } else { p.com.poll_at };
                match (ready, sent) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            _ => None,
        }
    }

    /// Commit every verified item that may be stored now: the commit interval passed, or the
    /// session ends (connection closed, a fatal error), so an interrupted pass keeps what it
    /// verified and the next one fetches only the rest.
    pub fn commit_ready(&mut self, cx: &mut Cx) {
        let mut stage = std::mem::replace(&mut self.stage, Stage::Done);
        let fetch = matches!(stage, Stage::Fetch(_));
        if let Stage::Fetch(pass) | Stage::Streams(pass) = &mut stage {
            self.reap(pass, false, cx);
            let late = matches!((pass.ready_since, cx.now), (Some(t), Some(n)) if n.saturating_duration_since(t) >= COMMIT_INTERVAL);
            if fetch && self.features.contains("batch") && pass.com.ready.len() >= MERGE_MIN {
                // a batch's worth is ready (as commit_if_due hands it over after an answer)
                self.commit_if_due(pass, cx);
            } else if !pass.com.ready.is_empty() && (late || pass.ready_since.is_none() || cx.now.is_none()) {
                self.flush(pass, Vec::new(), Vec::new(), false, false, cx);
                pass.ready_since = None;
            }
            pass.com.poll_at = cx.now.map(|n| n + COMMIT_POLL);
        }
        self.stage = stage;
    }

    /// The session ends (connection closed, a fatal error): every verified item that may be
    /// stored is committed and its `imported` event handed out.
    pub fn commit_all(&mut self, cx: &mut Cx) {
        let mut stage = std::mem::replace(&mut self.stage, Stage::Done);
        if let Stage::Fetch(pass) | Stage::Streams(pass) = &mut stage {
            if !pass.com.ready.is_empty() {
                self.flush(pass, Vec::new(), Vec::new(), false, false, cx);
            }
            self.settle(pass, cx);
            pass.ready_since = None;
        }
        self.stage = stage;
    }

    /// Keep up to [`FETCH_AHEAD`] chunks of objects asked for; when all were asked and
    /// answered, ask for the BLOBs/CLOBs.
    fn fetch_next(&mut self, mut pass: Box<Pass>, cx: &mut Cx) -> Result<Step, Fatal> {
        let batched = self.features.contains("batch");
        let chunk = self.fetch_chunk();
        let mut calls = Vec::new();
        if pass.paged && !pass.closure_out {
            // "closure-pages": one closure request out beside the fetch: the next page of a
            // walk, else the next round of roots once every walk of this one is complete
            if let Some((job, token)) = pass.pages.pop_front() {
                calls.push(vec![req(GET_CLOSURE_PAGE, vec![Some(Value::String(token))])]);
                pass.out.push_back(Out::Page(job));
                pass.closure_out = true;
            } else {
                let jobs = self.next_calls(&mut pass);
                if let Some(answer) = self.take_inline(&jobs) {
                    return self.inline_round(pass, jobs, answer, cx);
                }
                if !jobs.is_empty() {
                    calls.push(self.closure_requests(&jobs, true));
                    pass.out.push_back(Out::Closure(jobs));
                    pass.closure_out = true;
                }
            }
        }
        // while pages are coming, a chunk goes out full, or alone (nothing else to do)
        let listing = pass.closure_out || !pass.pages.is_empty();
        while pass.inflight.len() < FETCH_AHEAD && pass.next < pass.texts.len() && (pass.texts.len() - pass.next >= chunk || !listing || pass.inflight.is_empty()) {
            let end = (pass.next + chunk).min(pass.texts.len());
            let fetch: Vec<Ix> = pass.texts[pass.next..end].to_vec();
            pass.next = end;
            let reqs: Vec<Req> = if batched {
                // docs/chum-fastpath.md: up to BATCH_MAX microdata per request, as one binary
                // message with "batch-binary"
                let binary = self.features.contains("batch-binary");
                let service = if binary { GET_OBJECTS_BINARY } else { GET_OBJECTS_BATCH };
                fetch
                    .chunks(BATCH_MAX)
                    .map(|c| Req { binary, ..req(service, vec![Some(Value::Array(c.iter().map(|&i| Value::String(pass.items.key(i).to_string())).collect()))]) })
                    .collect()
            } else {
                fetch
                    .iter()
                    .map(|&i| {
                        let a = Some(Value::String(pass.items.key(i).to_string()));
                        if pass.items[i].kind == Kind::Id { req(GET_ID_OBJECT, vec![a]) } else { req(GET_OBJECT, vec![a]) }
                    })
                    .collect()
            };
            pass.inflight.push_back(fetch);
            pass.out.push_back(Out::Objects);
            calls.push(reqs);
        }
        if !pass.out.is_empty() {
            // the answers of the oldest call resume Stage::Fetch; an empty list: just wait
            self.stage = Stage::Fetch(pass);
            return Ok(Step::Calls(calls));
        }
        if pass.paged && pass.items.is_empty() {
            return self.end_pass(cx);
        }
        let wanted = std::mem::take(&mut pass.streams_wanted);
        let mut streams = Vec::new();
        let mut refused = Vec::new();
        for &i in &pass.order {
            let it = &pass.items[i];
            if !matches!(it.kind, Kind::Blob | Kind::Clob) || it.stored {
                continue;
            }
            if wanted.contains(&(it.kind, pass.items.key(i))) {
                streams.push(i);
            } else {
                refused.push((pass.items.key(i), it.kind));
            }
        }
        for (h, k) in refused {
            cx.error("LAMA-CHUM-NOTREACHABLE", &format!("{h} was listed as a {} that no received object references as one; not fetched", k.as_str()), false);
        }
        let reqs: Vec<Req> = streams
            .iter()
            .map(|&i| {
                let a = Some(Value::String(pass.items.key(i).to_string()));
                if pass.items[i].kind == Kind::Blob {
                    Req { service: GET_BLOB, args: vec![a, None], stream: Some(false), binary: false }
                } else {
                    Req { service: GET_BLOB, args: vec![a, Some("utf8".into())], stream: Some(true), binary: false }
                }
            })
            .collect();
        pass.fetch = streams;
        self.stage = Stage::Streams(pass);
        Ok(Step::Call(reqs))
            
    }

    fn roots(&mut self) -> Result<Step, Fatal> {
        self.stage = Stage::Roots;
        self.pass_mark = None;
        if self.peer_key.is_some() {
            return Ok(Step::Call(vec![req(GET_ROOTS_SINCE, vec![Some(self.since.into())])]));
        }
        Ok(Step::Call(vec![req(GET_ACCESSIBLE_ROOTS, vec![])]))
    }

    fn end_pass(&mut self, cx: &mut Cx) -> Result<Step, Fatal> {
        self.closure_pass_ended(cx);
        self.note_receipt(cx);
        // the high-water mark moves only after a pass that imported everything it listed
        let committed = self.mark_committed.take();
        if let (Some(m), Some(key)) = (self.pass_mark.take(), &self.peer_key) {
            let clean = cx.stats.errors == self.errors_before && self.pending.is_empty() && self.pending_before == 0;
            if clean && committed == Some(m) {
                // written with the pass's last commit (`commit_mark`): the receipt still goes
                // out after the zero sleep, with no mark commit after it
                self.since = m;
                if self.receipt.is_some() {
                    if !self.full_sync {
                        self.full_sync = true;
                        cx.events.push_back(Event::FullSync);
                    }
                    self.stage = Stage::ReceiptFirst;
                    return Ok(Step::Sleep(Duration::ZERO));
                }
            } else if committed.is_some() {
                // not reached (`commit_mark` lets nothing follow that commit); should it be,
                // the mark on disk goes back to where this pass started
                self.persist_mark(self.since, cx);
            } else if clean {
                self.since = m;
                if self.pass_roots == 0 && self.receipt.is_none() {
                    // the pass listed nothing: the mark on disk is lower, and the roots between
                    // it and `m` are none (what becomes accessible later gets a newer sequence
                    // number), so it re-lists no more than `m` would. No durable commit then:
                    // it held the session thread, and with it the answers to the peer's own
                    // pass (its 2.19 MB roots answer waited ~8 ms, ~50 ms on a busy disk)
                } else if self.receipt.is_some() {
                    // docs/chum-fastpath.md "Receipt before the mark": the receipt goes out
                    // first (the objects it vouches for are committed durably already); the
                    // mark is written when its answer comes. A crash in between leaves the
                    // older mark on disk: the next session re-lists roots B holds, nothing lost.
                    self.mark_due = Some(m);
                    if self.keep_running && self.subscribed {
                        // the zero sleep as below: the driver hands the pass's `imported`
                        // events out before the receipt's answer can bring the mark's fsync
                        if !self.full_sync {
                            self.full_sync = true;
                            cx.events.push_back(Event::FullSync);
                        }
                        self.stage = Stage::ReceiptFirst;
                        return Ok(Step::Sleep(Duration::ZERO));
                    }
                } else if self.keep_running && self.subscribed {
                    // a stale mark on disk is safe (a reconnect re-lists roots it has); it is
                    // written right after the driver handed out this pass's events
                    if !self.full_sync {
                        self.full_sync = true;
                        cx.events.push_back(Event::FullSync);
                    }
                    self.stage = Stage::PersistMark(m);
                    return Ok(Step::Sleep(Duration::ZERO));
                } else {
                    let _ = key;
                    self.persist_mark(m, cx);
                }
            }
        }
        if !self.full_sync {
            self.full_sync = true;
            cx.events.push_back(Event::FullSync);
        }
        self.after_pass()
    }

    /// docs/tracing.md §4: after a pass that listed something or failed, a lama exporter with
    /// "receipt" learns its mark (everything accessible up to it is stored here) or why not.
    fn note_receipt(&mut self, cx: &mut Cx) {
        self.receipt = None;
        if self.peer_key.is_none() || !self.features.contains("receipt") {
            return;
        }
        let clean = cx.stats.errors == self.errors_before && self.pending.is_empty() && self.pending_before == 0;
        let mark = if clean { self.pass_mark } else { None };
        let cut = |e: &String| e.chars().take(crate::exporter::RECEIPT_ERROR_CHARS).collect::<String>();
        let mut errors: Vec<String> = cx.log.errors.get(self.log_errors_before..).unwrap_or_default().iter().take(crate::exporter::RECEIPT_ERRORS_MAX).map(cut).collect();
        if self.pass_roots == 0 && errors.is_empty() {
            return;
        }
        if mark.is_none() {
            // what is still missing (BLOBs retried later)
            let mut pending: Vec<(&String, &String)> = self.pending.iter().collect();
            pending.sort();
            errors.extend(pending.into_iter().map(|(_, r)| cut(r)));
        }
        errors.truncate(crate::exporter::RECEIPT_ERRORS_MAX);
        self.receipt = Some((mark, errors));
    }

    fn persist_mark(&mut self, m: u64, cx: &mut Cx) {
        if let Some(key) = &self.peer_key {
            if let Err(e) = self.store.set_peer_mark(key, m) {
                cx.error(&e.code, &format!("storing the peer mark: {e}"), false);
            }
        }
    }

    /// A zero sleep is pending before the peer mark is written: a NOTIFY that arrives now
    /// must not wake the importer out of it (it would skip the pass the NOTIFY asks for).
    pub fn persisting(&self) -> bool {
        matches!(self.stage, Stage::PersistMark(_) | Stage::ReceiptFirst)
    }

    /// After a pass: the receipt, then subscribe, sleep until the next poll, or FIN.
    fn after_pass(&mut self) -> Result<Step, Fatal> {
        if let Some((mark, errors)) = self.receipt.take() {
            let arg = serde_json::json!({"mark": mark, "errors": errors});
            self.stage = Stage::Receipt(mark, errors);
            return Ok(Step::Call(vec![req(crate::exporter::LAMA_RECEIPT, vec![Some(arg)])]));
        }
        self.after_receipt()
    }

    fn after_receipt(&mut self) -> Result<Step, Fatal> {
        if self.keep_running {
            if self.features.contains("push") && !self.subscribed {
                // docs/chum-fastpath.md: the exporter calls our NOTIFY when roots appear
                self.stage = Stage::Subscribe;
                // "notify-roots": the NOTIFYs carry the new roots (an older lama ignores this)
                // "notify-closure": and the new roots' closures, when the pass can use them
                let closure = ["notify-closure", "closure", "closure-pages"].iter().all(|f| self.features.contains(*f));
                let args = if !self.features.contains("notify-roots") {
                    vec![]
                } else if closure {
                    // with our mark: the exporter seeds what we hold from it ("Mark")
                    vec![Some(serde_json::json!({"roots": true, "closure": true, "mark": self.since}))]
                } else {
                    vec![Some(serde_json::json!({"roots": true}))]
                };
                return Ok(Step::Call(vec![req(SUBSCRIBE, args)]));
            }
            self.stage = Stage::PollSleep;
            // with pushes, polling is only the fallback (the uvc note: 10 x pollInterval)
            Ok(Step::Sleep(self.poll_interval * if self.subscribed { 10 } else { 1 }))
        } else {
            self.stage = Stage::Fin;
            Ok(Step::Call(vec![req(FIN, vec![])]))
        }
    }

    /// chum.md §4.2: a string holding a JSON array of AccessibleObject.
    fn parse_roots(&self, data: Data, cx: &mut Cx) -> Option<Vec<Root>> {
        let Some(Value::String(s)) = data else {
            cx.error("DAH-PAO1", "roots answer is not a string", false);
            return None;
        };
        if let Some(roots) = typed_roots(&s) {
            return Some(roots);
        }
        let Ok(v) = serde_json::from_str::<Value>(&s) else {
            cx.error("DAH-PAO1", "roots answer is not JSON", false);
            return None;
        };
        let Value::Array(list) = v else {
            cx.error("DAH-PAO1", "roots answer is not a list", false);
            return None;
        };
        Some(self.root_list(list, cx))
    }

    /// The well-formed entries of a roots list (chum.md §4.2); each bad one is an error.
    fn root_list(&self, list: Vec<Value>, cx: &mut Cx) -> Vec<Root> {
        let mut out = Vec::with_capacity(list.len());
        for r in list {
            // only for an error message: written out when needed (issue 8 profile: writing
            // every entry back to JSON was 8 % of the importer's CPU)
            let shown = |r: &Value| -> String { r.to_string().chars().take(300).collect() };
            let Value::Object(m) = r else {
                let shown = shown(&r);
                cx.error("DAH-PAO3", &format!("malformed accessible object {shown}"), false);
                continue;
            };
            let need: &[&str] = match m.get("type").and_then(Value::as_str) {
                Some("unversioned") => &["hash", "oneType"],
                Some("versioned") => &["hash", "idHash", "oneType"],
                Some("id") => &["idHash", "oneType"],
                Some("version_node") => &["node", "dataIdHash", "dataType"],
                _ => {
                    let shown = shown(&Value::Object(m));
                    cx.error("DAH-PAO3", &format!("unknown accessible object {shown}"), false);
                    continue;
                }
            };
            // hashes must be hashes here: they become store keys
            let good = need.iter().all(|k| match m.get(*k).and_then(Value::as_str) {
                Some(v) => *k == "oneType" || *k == "dataType" || is_hash(v),
                None => false,
            });
            if !good {
                let shown = shown(&Value::Object(m));
                cx.error("DAH-PAO3", &format!("malformed accessible object {shown}"), false);
                continue;
            }
            out.push(Root::of_map(&m));
        }
        out
    }

    /// The hashes of `hashes` not stored here, in one read transaction; `on_error` says
    /// what a hash counts as when the store cannot be read (as `has(..).unwrap_or(!on_error)`
    /// did per hash).
    fn missing_of(&self, hashes: &[H], on_error: bool) -> HashSet<H> {
        match self.store.missing(hashes) {
            Ok(gone) => gone.into_iter().collect(),
            Err(_) => if on_error { hashes.iter().copied().collect() } else { HashSet::default() },
        }
    }

    fn start_pass(&mut self, roots: Vec<Root>, cx: &mut Cx) -> Result<Step, Fatal> {
        self.pass_roots = roots.len();
        // chum.md §6.2: what is missing decides what is asked for
        let mut asked: Vec<H> = Vec::with_capacity(roots.len());
        for r in &roots {
            asked.extend([r.hash, r.id_hash, r.node].into_iter().flatten());
        }
        // one read transaction for all (a `has` each was 30,000 transactions, issue 8)
        let missing: HashSet<H> = self.missing_of(&asked, false);
        let lacks = |h: Option<H>| h.filter(|h| missing.contains(h));
        self.note_hint_candidates(&roots);
        self.passes += 1;
        let mut pass = Pass { batch: 1, no: self.passes, ..Default::default() };
        let mut jobs = Vec::new();
        for r in roots {
            let one = Some(r.one_type);
            match r.kind {
                RootKind::Unversioned => {
                    if let Some(hash) = lacks(r.hash) {
                        jobs.push(Job { service: GET_OBJECT_CHILDREN, hash, kind: Kind::Object, expected: one });
                    }
                }
                RootKind::Versioned => {
                    if let Some(hash) = lacks(r.id_hash) {
                        jobs.push(Job { service: GET_ID_OBJECT_CHILDREN, hash, kind: Kind::Id, expected: one.clone() });
                    }
                    if let Some(hash) = lacks(r.hash) {
                        jobs.push(Job { service: GET_OBJECT_CHILDREN, hash, kind: Kind::Object, expected: one });
                    }
                }
                RootKind::Id => {
                    if let Some(hash) = lacks(r.id_hash) {
                        jobs.push(Job { service: GET_ID_OBJECT_CHILDREN, hash, kind: Kind::Id, expected: one });
                    }
                }
                RootKind::Node => {
                    let (Some(id), Some(node)) = (r.data_id_hash, r.node) else { continue };
                    let entry = (node, r.data_type);
                    // the last group first: a channel's nodes come one after the other
                    match pass.groups.iter_mut().rev().find(|g| g.0 == id) {
                        Some(g) => g.1.push(entry),
                        None => pass.groups.push((id, vec![entry])),
                    }
                }
            }
        }
        for (id, nodes) in &pass.groups {
            // a set beside the list: a channel with n posts lists n nodes, and a linear
            // `contains` made this n²/2 comparisons (benches/RESULTS.md, CHUM sync)
            let mut ms: Vec<H> = Vec::new();
            let mut seen: HashSet<H> = HashSet::default();
            for (n, _) in nodes {
                if missing.contains(n) && seen.insert(*n) {
                    ms.push(*n);
                }
            }
            if !ms.is_empty() {
                pass.group_missing.push((*id, ms));
            }
        }
        for j in &jobs {
            if let Some(e) = &j.expected {
                pass.expects.insert(j.hash, e.clone());
            }
        }
        // Object roots first: a Topic's closure holds its channel's ID object.
        pass.queue = jobs.iter().filter(|j| j.service == GET_OBJECT_CHILDREN).cloned().collect();
        pass.queue.extend(jobs.iter().filter(|j| j.service == GET_ID_OBJECT_CHILDREN).cloned());
        self.children_round(Box::new(pass), cx)
    }

    /// Children calls go out in rounds that start with one call and double: a root that an
    /// earlier answer listed as a child needs no call of its own (it is fetched as a child),
    /// so one call suffices when one root's closure covers the rest, and independent roots
    /// take log2(n) rounds. Of the version nodes of an ID only the newest missing one is
    /// asked first: its closure holds the older ones (chum.md §10.2).
    fn children_round(&mut self, mut pass: Box<Pass>, cx: &mut Cx) -> Result<Step, Fatal> {
        let calls = self.next_calls(&mut pass);
        if !calls.is_empty() && self.features.contains("closure") && self.features.contains("closure-pages") {
            // "closure-pages" (docs/chum-fastpath.md): the fetch starts with the first page;
            // the next pages and rounds go out beside it (fetch_next)
            pass.paged = true;
            self.pass_closure = true;
            self.setup_nodes(&mut pass);
            if let Some(answer) = self.take_inline(&calls) {
                return self.inline_round(pass, calls, answer, cx);
            }
            let reqs = self.closure_requests(&calls, true);
            pass.out.push_back(Out::Closure(calls));
            pass.closure_out = true;
            self.stage = Stage::Fetch(pass);
            return Ok(Step::Calls(vec![reqs]));
        }
        if !calls.is_empty() {
            self.pass_closure = self.features.contains("closure");
            let reqs = if self.pass_closure {
                self.closure_requests(&calls, false)
            } else if self.features.contains("children-batch") {
                // docs/chum-fastpath.md: one request per BATCH_MAX children lists
                calls.chunks(BATCH_MAX).map(|c| req(GET_CHILDREN_BATCH, vec![Some(Value::Array(c.iter().map(|j| Value::String(j.hash.to_string())).collect()))])).collect()
            } else {
                calls.iter().map(|j| req(j.service, vec![Some(Value::String(j.hash.to_string()))])).collect()
            };
            pass.calls = calls;
            self.stage = Stage::Children(pass);
            return Ok(Step::Call(reqs));
        }
        if pass.items.is_empty() {
            return self.end_pass(cx);
        }
        // fetch everything that is missing, in dependency order
        self.feed(&mut pass, cx);
        self.setup_nodes(&mut pass);
        for h in std::mem::take(&mut pass.start) {
            if let Some(i) = pass.items.find(&h) {
                reach(&mut pass, i);
            }
        }
        self.take_prefetched(&mut pass, cx)?;
        // Fetched in calls of a bounded size, dependencies first; after each call everything
        // that may be stored is committed, so an interrupted pass keeps what it stored and the
        // next session asks only for the rest (issue 8).
        self.fetch_next(pass, cx)
    }

    /// "notify-closure": a children round answered by the closures the NOTIFY carried, taken
    /// as the answer of a paged 106 (no request goes out), then the fetch goes on.
    fn inline_round(&mut self, mut pass: Box<Pass>, jobs: Vec<Job>, answer: Vec<Value>, cx: &mut Cx) -> Result<Step, Fatal> {
        // the NOTIFY's entries are read as the parsed values they are (issue 8: a push wrote
        // them back to a string and parsed that again); anything unusual goes the general way
        let typed = answer
            .iter()
            .map(<Option<ClosureRoot> as serde::Deserialize>::deserialize)
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .and_then(|roots| closures_of(roots, jobs.len(), true));
        let r = match typed {
            Some(parsed) => {
                let mut out = Vec::with_capacity(jobs.len());
                take_closures(&mut pass, jobs.iter(), parsed, &mut out);
                Ok(out)
            }
            None => self.split_closure(&mut pass, &jobs, vec![Outcome::Ok(Some(Value::String(Value::Array(answer).to_string())))], true),
        };
        if let Err(f) = r.and_then(|res| self.paged_children(&mut pass, jobs, res, cx)) {
            self.flush(&mut pass, Vec::new(), Vec::new(), false, false, cx);
            return Err(f);
        }
        self.fetch_next(pass, cx)
    }

    /// The roots of the next children round (the doubling of [`children_round`]); empty when
    /// every root is covered or asked.
    fn next_calls(&mut self, pass: &mut Pass) -> Vec<Job> {
        let mut calls: Vec<Job> = Vec::new();
        let mut rest = Vec::new();
        for j in std::mem::take(&mut pass.queue) {
            if pass.seen_jobs.contains(&(j.service, j.hash)) {
                continue;
            }
            if let Some(it) = pass.items.get_mut(&j.hash).filter(|it| it.covered) {
                if let Some(e) = &j.expected {
                    it.expected_type = Some(e.clone());
                }
                continue;
            }
            if calls.len() < pass.batch {
                pass.seen_jobs.insert((j.service, j.hash));
                calls.push(j);
            } else {
                rest.push(j);
            }
        }
        pass.queue = rest;
        // per ID the newest node neither covered nor asked: a node that is either stays so, so
        // each round goes on where the last one stopped (every round rescanned a channel's
        // 10,000 nodes, and with "closure-pages" a round is looked for after every fetched
        // chunk: issue 8, session 17)
        pass.group_scan.resize(pass.group_missing.len(), 0);
        for ((_, ms), done) in pass.group_missing.iter().zip(pass.group_scan.iter_mut()) {
            for n in ms.iter().rev().skip(*done) {
                *done += 1;
                if !pass.items.get(n).is_some_and(|it| it.covered) && pass.seen_jobs.insert((GET_OBJECT_CHILDREN, *n)) {
                    calls.push(Job { service: GET_OBJECT_CHILDREN, hash: *n, kind: Kind::Object, expected: None });
                    break;
                }
            }
        }
        if !calls.is_empty() {
            pass.batch *= 2;
        }
        calls
    }

    /// The items of `order` not fed yet go to the fetch: those stored here are marked so,
    /// the missing objects and ID objects are appended to the fetch list (BLOBs/CLOBs are
    /// fetched at the end, from `order`), and a `listed` event says how many.
    fn feed(&self, pass: &mut Pass, cx: &mut Cx) {
        let new = &pass.order[pass.fed..];
        if new.is_empty() {
            return;
        }
        let hashes: Vec<H> = new.iter().map(|&i| pass.items.key(i)).collect();
        // `Store::missing` answers in input order: a walk beside it, no set (an error: all absent)
        let gone = self.store.missing(&hashes).ok();
        let mut g = 0;
        let mut fetch = Vec::new();
        for (&i, h) in new.iter().zip(&hashes) {
            let absent = match &gone {
                None => true,
                Some(gone) => {
                    let a = gone.get(g) == Some(h);
                    g += a as usize;
                    a
                }
            };
            if absent {
                fetch.push(i);
            } else {
                let it = &mut pass.items[i];
                it.ok = true;
                it.stored = true;
            }
        }
        pass.fed = pass.order.len();
        // Objects first, then only the BLOBs/CLOBs that a verified object references as such:
        // a stream is stored as soon as it ends (before the objects are committed), so a hash
        // listed as "blob" that is really an object must never be fetched as one.
        let listed = fetch.len();
        let texts: Vec<Ix> = fetch.into_iter().filter(|&i| matches!(pass.items[i].kind, Kind::Object | Kind::Id)).collect();
        if listed > 0 {
            cx.events.push_back(Event::Listed { objects: texts.len(), streams: listed - texts.len() });
        }
        pass.texts.extend(texts);
    }

    /// The listed version nodes of the pass and their (dataIdHash, dataType): their §6.2
    /// checks run as they are verified.
    fn setup_nodes(&self, pass: &mut Pass) {
        // a map, not a search per node: a 10,000-post channel lists 10,000 nodes of one ID, and
        // a linear search made this 50 M comparisons (7 % of the importer's CPU, issue 8)
        let mut types: HashMap<(H, H), &str> = HashMap::default();
        for (id_hash, nodes) in &pass.groups {
            for (n, t) in nodes {
                types.entry((*id_hash, *n)).or_insert(t.as_str());
            }
        }
        let mut nodes = HashMap::default();
        for (id_hash, ms) in &pass.group_missing {
            for n in ms {
                let t = types.get(&(*id_hash, *n)).copied().unwrap_or_default();
                nodes.insert(*n, (*id_hash, t.to_string()));
            }
        }
        drop(types);
        for n in nodes.keys() {
            if let Some(it) = pass.items.get_mut(n) {
                it.node = true;
            }
        }
        pass.com.nodes = nodes;
    }

    /// "closure-pages": the answers of a 106 or 109 call. Each list (dependencies first)
    /// joins the pass and goes to the fetch at once; a root whose walk has more pages waits
    /// for them, a complete one is added after its closure and reached (an item is reached
    /// through a verified referrer, the root arrives last). Inline data is verified as it
    /// comes, as if a 101 answer had brought it.
    fn paged_children(&self, pass: &mut Pass, jobs: Vec<Job>, results: Vec<(Children, Option<String>)>, cx: &mut Cx) -> Result<(), Fatal> {
        for (job, (res, more)) in jobs.into_iter().zip(results) {
            let Some(children) = self.children_result(&job.hash, res, cx)? else { continue };
            let (expects, nodes) = (&pass.expects, &pass.com.nodes);
            for (ckind, ch) in children {
                let (i, new) = pass.items.add(ch, || {
                    let mut it = Item::new(ckind, if expects.is_empty() { None } else { expects.get(&ch).cloned() });
                    it.node = !nodes.is_empty() && nodes.contains_key(&ch);
                    it
                });
                pass.items[i].covered = true;
                if new {
                    pass.order.push(i);
                }
            }
            if let Some(t) = more {
                pass.pages.push_back((job, t));
                continue;
            }
            let (i, new) = pass.items.add(job.hash, || {
                let mut it = Item::new(job.kind, job.expected.clone());
                it.node = nodes.contains_key(&job.hash);
                it
            });
            if new {
                pass.order.push(i);
            } else if job.expected.is_some() {
                pass.items[i].expected_type = job.expected.clone();
            }
            pass.items[i].covered = true;
            reach(pass, i);
        }
        let from = pass.texts.len();
        self.feed(pass, cx);
        if pass.prefetched.is_empty() {
            return Ok(());
        }
        // inline data of items this pass fetches: verified now, not asked for; other inline
        // data is dropped
        let new: Vec<Ix> = pass.texts.split_off(from);
        let mut pre: Vec<Ix> = Vec::new();
        for i in new {
            if pass.prefetched.contains_key(&pass.items.key(i)) {
                pre.push(i);
            } else {
                pass.texts.push(i);
            }
        }
        for &i in &pre {
            let text = pass.prefetched.remove(&pass.items.key(i)).unwrap_or_default();
            if let Err(f) = self.verify(pass, i, Outcome::Ok(Some(Value::String(text))), cx) {
                pass.prefetched.clear();
                return Err(f);
            }
        }
        pass.prefetched.clear();
        self.received(pass, &pre, cx);
        self.commit_if_due(pass, cx);
        Ok(())
    }

    /// chum.md §4.3: a string holding a JSON array of `{type, hash}`; returned reversed
    /// (dependencies first). `None` after a recorded error.
    fn children_result(&self, h: &H, res: Children, cx: &mut Cx) -> Result<Option<Vec<(Kind, H)>>, Fatal> {
        let res = match res {
            Children::Parsed(list) => return Ok(Some(list)),
            Children::Raw(r) => r,
        };
        let data = match res {
            Outcome::Ok(d) => d,
            Outcome::Err { code, message } if code == TIMEOUT => return Err(fatal(&code, message)),
            Outcome::Err { code, message } => {
                let c = if code.is_empty() { "CIEC-CH".to_string() } else { code };
                cx.error(&c, &format!("children of {h}: {message}"), false);
                return Ok(None);
            }
            Outcome::Stored(_) | Outcome::Bytes(_) | Outcome::Text(_) => None,
        };
        let Some(Value::String(s)) = data else {
            cx.error("DC-PC1", &format!("children of {h}: answer is not a string"), false);
            return Ok(None);
        };
        if let Some(list) = typed_children(&s) {
            return Ok(Some(list));
        }
        let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&s) else {
            cx.error("DC-PC1", &format!("children of {h}: answer is not a JSON list"), false);
            return Ok(None);
        };
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let shown = || -> String { c.to_string().chars().take(300).collect() };
            let Some(kind) = c.get("type").and_then(Value::as_str).and_then(Kind::parse) else {
                let shown = shown();
                cx.error("DC-PC3", &format!("children of {h}: bad entry {shown}"), false);
                return Ok(None);
            };
            let Some(ch) = c.get("hash").and_then(Value::as_str).and_then(H::parse) else {
                let shown = shown();
                cx.error("DC-PC4", &format!("children of {h}: bad hash in {shown}"), false);
                return Ok(None);
            };
            out.push((kind, ch));
        }
        out.reverse();
        Ok(Some(out))
    }

    /// chum.md §6.4 for one GET_OBJECT / GET_ID_OBJECT answer.
    fn verify(&self, pass: &mut Pass, i: Ix, res: Outcome, cx: &mut Cx) -> Result<(), Fatal> {
        let h = &pass.items.key(i);
        let it = &pass.items[i];
        let is_id = it.kind == Kind::Id;
        let pre = if is_id { "CIEC-FIDO" } else { "CIEC-FO" };
        let text = match res {
            Outcome::Err { code, message } if code == TIMEOUT => return Err(fatal(&code, message)),
            Outcome::Err { code, message } => {
                let c = if code.is_empty() { format!("{pre}1") } else { code };
                cx.error(&c, &format!("fetching {h}: {message}"), false);
                return Ok(());
            }
            Outcome::Ok(Some(Value::String(s))) => Text::Own(s),
            Outcome::Text(t) => t,
            _ => {
                cx.error(&format!("{pre}1"), &format!("{h}: the answer is not a microdata string"), false);
                return Ok(());
            }
        };
        // objects.md §2.1: hashed as Node.js writes it (lone surrogates cannot occur in Rust)
        let got = sha256(text.as_bytes());
        if *h != got {
            cx.error(&format!("{pre}2"), &format!("{h}: the received microdata hashes to {}", hash_hex(&got)), false);
            return Ok(());
        }
        // one strict parse gives the type, the references and a versioned object's ID
        // microdata, which the store then takes as they are (Store::put_verified)
        let microdata::Inspected { type_name, is_id: got_id, refs, id_microdata } = match microdata::inspect(&text) {
            Ok(x) => x,
            Err(e) => {
                cx.error(&e.code, &format!("{h}: {e}"), false);
                return Ok(());
            }
        };
        if got_id != is_id {
            cx.error(&format!("{pre}2"), &format!("{h}: expected {}", if is_id { "an ID object" } else { "an object" }), false);
            return Ok(());
        }
        if REFUSED_TYPES.contains(&type_name.as_str()) {
            cx.error(&format!("{pre}3"), &format!("{h}: refusing a remote {type_name} object"), false);
            return Ok(());
        }
        if let Some(e) = &it.expected_type {
            if *e != type_name {
                let c = if is_id { "CIEC-FIDOWT1" } else { "CIEC-FOWT1" };
                cx.error(c, &format!("{h}: expected a {e}, got a {type_name}"), false);
                return Ok(());
            }
        }
        // the strict parse checked every reference and gives its 32 bytes
        let keyed: Vec<(bool, RefKind, H)> = refs.iter().map(|r| (r.path == "data", r.kind, H(r.hash))).collect();
        for &(_, k, r) in &keyed {
            if matches!(k, RefKind::Blob | RefKind::Clob) {
                pass.streams_wanted.insert((ref_kind(k), r));
            }
        }
        let it = &mut pass.items[i];
        it.refs = keyed;
        it.type_name = type_name;
        it.text = Some(text);
        it.id_microdata = id_microdata;
        it.found_refs = refs;
        it.hash = got;
        it.ok = true;
        Ok(())
    }

    /// The answers for `part` were verified: record what each verified item waits for, run
    /// the §6.2 checks of listed version nodes whose data is here, extend reachability.
    ///
    /// An item is stored once it is verified, it is a root whose children were asked or a
    /// verified item of the pass references it (a listed version node only after its check,
    /// and its references count only then), and every reference it has that this pass lists is stored or earlier in the same
    /// transaction, while every other reference is already local: dependencies first, never a
    /// hole (chum.md §5.3). Kahn's algorithm, incremental, so a pass costs linear time however
    /// many chunks it takes (issue 8).
    fn received(&self, pass: &mut Pass, part: &[Ix], cx: &mut Cx) {
        // each reference looked up once: its index in the pass (or none), in the order the
        // loop below takes them (it was looked up twice: 4 % of the importer's thread, issue 8
        // session 14)
        let mut found: Vec<Option<Ix>> = Vec::new();
        let mut outside: Vec<H> = Vec::new();
        for &i in part {
            if !pass.items[i].ok {
                continue;
            }
            for r in &pass.items[i].refs {
                let f = pass.items.find(&r.2);
                if f.is_none() {
                    outside.push(r.2);
                }
                found.push(f);
            }
        }
        let mut found = found.into_iter();
        outside.sort_unstable();
        outside.dedup();
        let absent = self.missing_of(&outside, true);
        for &i in part {
            pass.items[i].fetched = true;
        }
        // an item's listed references not stored yet, each once (a few per item: sorted, not
        // hashed, one buffer for the whole part)
        let mut block: Vec<Ix> = Vec::new();
        let mut links: Vec<Ix> = Vec::new();
        for &i in part {
            if !pass.items[i].ok {
                continue;
            }
            block.clear();
            links.clear();
            let mut bad = false;
            let refs = std::mem::take(&mut pass.items[i].refs);
            for (_, k, r) in &refs {
                match found.next().flatten() {
                    None => {
                        if absent.contains(r) && !bad {
                            bad = true;
                            let h = pass.items.key(i);
                            cx.error("CI-ACO", &format!("{h} references {r}, which is neither stored nor listed among the children"), false);
                        }
                    }
                    Some(ri) => {
                        links.push(ri);
                        let t = &pass.items[ri];
                        if t.kind != ref_kind(*k) && !t.stored {
                            // listed as another kind than it is referenced as: the reference
                            // would point at the wrong thing
                            if !bad {
                                bad = true;
                                let h = pass.items.key(i);
                                cx.error("CI-ACO", &format!("{h} references {r} as {}, but it was listed as {}", k.as_str(), t.kind.as_str()), false);
                            }
                        } else if !t.stored && !t.queued {
                            // (a queued item is as good as stored for its referrers: it goes
                            // into this transaction or an earlier one, before them)
                            block.push(ri);
                        }
                    }
                }
            }
            block.sort_unstable();
            block.dedup();
            for &r in &block {
                pass.items[r].waiters.push(i);
            }
            let it = &mut pass.items[i];
            it.refs = refs;
            it.links = links.clone();
            it.bad = bad;
            pass.com.any_bad |= bad;
            it.blockers = Some(block.len());
        }
        for &i in part {
            let ok = pass.items[i].ok;
            if ok && pass.items[i].node {
                let data = pass.items[i].refs.iter().find(|r| r.0).map(|r| r.2);
                match data.as_ref().and_then(|d| pass.items.find(d)) {
                    Some(d) if !pass.items[d].fetched && !pass.items[d].stored => {
                        pass.items[d].wait_data.push(i);
                    }
                    _ => self.check(pass, i, cx),
                }
            }
            for n in std::mem::take(&mut pass.items[i].wait_data) {
                self.check(pass, n, cx);
            }
            if ok {
                expand(pass, i);
                consider(pass, i);
            }
        }
    }

    fn check(&self, pass: &mut Pass, n: Ix, cx: &mut Cx) {
        if !pass.items[n].ok {
            return;
        }
        if self.check_node(pass, n, cx) {
            pass.items[n].checked = true;
            expand(pass, n);
            consider(pass, n);
        } else {
            pass.items[n].ok = false;
        }
    }

    /// chum.md §6.2: a fetched listed node's data must have ID hash `dataIdHash` (CI-CCI1)
    /// and type `dataType` (CI-CCI2).
    fn check_node(&self, pass: &Pass, ni: Ix, cx: &mut Cx) -> bool {
        let n = &pass.items.key(ni);
        let it = &pass.items[ni];
        let (id_hash, want) = pass.com.nodes[n].clone();
        let problem: Option<(&str, String)> = if !VERSION_NODE_TYPES.contains(&it.type_name.as_str()) {
            Some(("CI-CCI1", format!("{n} is a {}, not a version node", it.type_name)))
        } else {
            let data = it.refs.iter().find(|r| r.0).map(|r| r.2);
            // (ID microdata, type) of the data: what its verification found when it is in this
            // pass and not committed yet (no second parse, issue 8), else read from the store
            // (the ID hash of the data's ID microdata, its type), read where they are, not
            // copied (issue 8: two strings per node)
            let of = |m: Option<&str>| m.map(|m| sha256(m.as_bytes()));
            let found: Option<(Option<[u8; 32]>, std::borrow::Cow<'_, str>)> = data.as_ref().and_then(|d| match pass.items.get(d) {
                // an ID object is its own ID microdata (as `id_microdata_of` gives it)
                Some(x) if x.ok && x.text.is_some() => Some((of(if x.kind == Kind::Id { x.text.as_deref() } else { x.id_microdata.as_deref() }), x.type_name.as_str().into())),
                // handed to the commit thread, not known committed yet (hand_over kept these)
                Some(x) if x.inflight => Some((of(x.id_microdata.as_deref()), x.type_name.as_str().into())),
                Some(x) if !x.stored => None,
                _ => self.store.get(&d.to_string()).ok().map(|t| {
                    (of(microdata::id_microdata_of(&t).ok().flatten().as_deref()), microdata::type_of(&t).map(|x| x.0).unwrap_or_default().into())
                }),
            });
            match found {
                None => Some(("CI-CCI1", format!("version node {n}: its data is not available"))),
                Some((id_of_data, ty)) => {
                    let shown = data.map(|d| d.to_string()).unwrap_or_default();
                    if id_of_data != Some(id_hash.0) {
                        Some(("CI-CCI1", format!("version node {n}: data {shown} does not have ID hash {id_hash}")))
                    } else if ty != want {
                        Some(("CI-CCI2", format!("version node {n}: data {shown} is a {ty}, not a {want}")))
                    } else {
                        None
                    }
                }
            }
        };
        match problem {
            Some((code, msg)) => {
                cx.error(code, &msg, false);
                false
            }
            None => true,
        }
    }

    /// Commit everything ready, `COMMIT_BATCH` items per transaction, one `imported` event
    /// each (the final flush reports the pass's BLOBs/CLOBs in its first).
    /// With `forward` (the fetch is over), the flush's last commit also fast-forwards heads
    /// (see [`forward_candidates`]).
    ///
    /// The batches go to the commit thread (commit.rs); with `last` or `forward` (the pass's
    /// fetch is over) the flush waits for every batch out, so what follows (BLOBs, `merge`
    /// events, the high-water mark) sees them committed.
    fn flush(&self, pass: &mut Pass, new_blobs: Vec<String>, new_clobs: Vec<String>, last: bool, forward: bool, cx: &mut Cx) {
        let mut first = last;
        let max = if self.features.contains("batch") { COMMIT_BATCH_FAST } else { COMMIT_BATCH };
        if forward {
            // the last commit names the deepest committed nodes: every earlier batch's fate first
            self.settle(pass, cx);
        }
        while !pass.com.ready.is_empty() || (first && (!new_blobs.is_empty() || !new_clobs.is_empty())) {
            let mut batch: Vec<Ix> = Vec::with_capacity(max.min(pass.com.ready.len()));
            while batch.len() < max {
                let Some(h) = pass.com.ready.pop_front() else { break };
                // a reference refused by the store in an earlier batch: never a hole. A ready
                // item's listed references were queued before it (`ready` is in dependency
                // order), so they were put in this batch or an earlier one, or skipped here;
                // what is not stored of them was refused or skipped (`bad`), and so is this
                // item then, for its own referrers further down `ready`. (What the commit
                // thread refuses later, it skips the referrers of itself.)
                if pass.com.any_bad && pass.items[h].links.iter().any(|&r| !pass.items[r].stored && pass.items[r].bad) {
                    pass.items[h].bad = true;
                    continue;
                }
                batch.push(h);
            }
            // the pass's last commit also fast-forwards the heads of the IDs it imported
            // nodes of, when that is all the merge would do (Store::put_verified_forward)
            let ff = if forward && pass.com.ready.is_empty() { forward_candidates(pass, &batch) } else { Vec::new() };
            let blobs = if first { Some((new_blobs.clone(), new_clobs.clone())) } else { None };
            first = false;
            if batch.is_empty() {
                if let Some((blobs, clobs)) = blobs {
                    // nothing to commit: the BLOBs/CLOBs alone, after what is out
                    self.settle(pass, cx);
                    cx.events.push_back(Event::Imported { objects: Vec::new(), id_objects: Vec::new(), blobs, clobs });
                }
                continue;
            }
            let owned: Vec<Owned> = batch.iter().map(|&i| hand_over(pass, i)).collect();
            // fast path, while the fetch goes on: into the commit thread's group, after the
            // pass's first batch (committed alone, so its objects are visible at once)
            let merge = self.features.contains("batch") && pass.com.handed > 0 && !last && !forward;
            // on this thread while nothing is out: the pass's last batch, and small ones (a
            // push: a thread hop would cost more than the commit); else on the commit thread,
            // the pass's first batch too: committed here, its fsync held the session thread
            // (69 ms when the disk was busy writing back) while the next answers waited
            let here = pass.com.sent.is_empty() && !merge && (last || forward || batch.len() < COMMIT_HERE_MAX);
            pass.com.handed += batch.len();
            if here {
                let mark = if forward && pass.com.ready.is_empty() { self.commit_mark(pass, cx) } else { None };
                let m = mark.as_ref().map(|(_, m)| *m);
                let (fates, marked) = self.committer.commit_here_marked(pass.no, owned, ff, mark);
                if marked {
                    self.mark_committed.set(m);
                }
                self.settled(pass, Sent { hashes: batch, first: blobs }, Some(fates), cx);
                continue;
            }
            if merge {
                // (never with heads to fast-forward: those come with the pass's last batch)
                self.committer.submit_merged(pass.no, owned);
            } else {
                self.committer.submit(pass.no, owned, ff);
            }
            pass.com.sent.push_back(Sent { hashes: batch, first: blobs });
            if pass.com.poll_at.is_none() {
                pass.com.poll_at = Some(cx.now.unwrap_or_else(std::time::Instant::now) + COMMIT_POLL);
            }
        }
        if last || forward {
            self.settle(pass, cx);
        }
    }

    /// docs/chum-fastpath.md "Peer mark after a push": the peer mark for the commit being made
    /// when it is the last thing of a pass that will end clean, so the mark is written in the
    /// objects' transaction (one fsync per push, not two). Only in a keep-running session that
    /// has subscribed (its pushes; the first pass keeps "receipt before the mark"), and only when
    /// nothing can follow the commit: the fetch is over, no closure request is out or would go
    /// out, no BLOB/CLOB is left to fetch, every item of the pass is stored or in this batch
    /// (`hand_over` marks them), and the pass has no error or pending BLOB so far. Anything
    /// else keeps the separate mark commit of `end_pass`.
    fn commit_mark(&self, pass: &Pass, cx: &Cx) -> Option<(String, u64)> {
        let key = self.peer_key.as_ref()?;
        let m = self.pass_mark?;
        let clean = cx.stats.errors == self.errors_before && self.pending.is_empty() && self.pending_before == 0;
        if !(self.keep_running && self.subscribed && clean) || pass.com.any_bad || !pass.com.sent.is_empty() || !pass.com.ready.is_empty() {
            return None;
        }
        if !pass.inflight.is_empty() || pass.closure_out || !pass.pages.is_empty() || pass.next < pass.texts.len() {
            return None;
        }
        // no further children round (as `next_calls` would ask one)
        let asked = |service: u32, h: &H| pass.seen_jobs.contains(&(service, *h));
        let covered = |h: &H| pass.items.get(h).is_some_and(|it| it.covered);
        if pass.queue.iter().any(|j| !asked(j.service, &j.hash) && !covered(&j.hash)) {
            return None;
        }
        if pass.group_missing.iter().any(|(_, ms)| ms.iter().any(|n| !covered(n) && !asked(GET_OBJECT_CHILDREN, n))) {
            return None;
        }
        if !pass.items.v.iter().flatten().all(|it| it.stored) {
            return None;
        }
        Some((key.clone(), m))
    }

    /// Wait for every batch out on the commit thread and take in their fates.
    fn settle(&self, pass: &mut Pass, cx: &mut Cx) {
        self.reap(pass, true, cx);
    }

    /// Take in the fates of the batches the commit thread finished (`wait`: of every batch out,
    /// waiting for them): what was stored is committed (`imported` event, log, stats), what the
    /// store refused is `bad`.
    fn reap(&self, pass: &mut Pass, wait: bool, cx: &mut Cx) {
        while !pass.com.sent.is_empty() {
            let fates = if wait {
                self.committer.wait()
            } else {
                match self.committer.try_done() {
                    Some(f) => Some(f),
                    None => break,
                }
            };
            let sent = pass.com.sent.pop_front().expect("a batch is out");
            self.settled(pass, sent, fates, cx);
        }
        if pass.com.sent.is_empty() {
            pass.com.poll_at = None;
        }
    }

    /// The fates of a batch (`None`: the commit thread is gone).
    fn settled(&self, pass: &mut Pass, sent: Sent, fates: Option<Vec<Fate>>, cx: &mut Cx) {
        {
            let fates = fates.unwrap_or_else(|| {
                sent.hashes.iter().map(|_| Fate::Refused("LAMA-BUG".into(), "the CHUM commit thread ended".into())).collect()
            });
            let (mut objects, mut id_objects) = (Vec::new(), Vec::new());
            let mut done = 0;
            for (&i, fate) in sent.hashes.iter().zip(fates) {
                let h = pass.items.key(i);
                let it = &mut pass.items[i];
                it.inflight = false;
                it.id_microdata = None;
                let depth = match fate {
                    Fate::Stored(d) => d,
                    Fate::Refused(code, message) => {
                        it.stored = false;
                        it.bad = true;
                        pass.com.any_bad = true;
                        cx.error(&code, &message, false);
                        continue;
                    }
                    Fate::Skipped => {
                        it.stored = false;
                        it.bad = true;
                        pass.com.any_bad = true;
                        continue;
                    }
                };
                done += 1;
                it.committed = true;
                if it.node && it.depth.is_none() {
                    it.depth = Some(depth.unwrap_or(0.0));
                }
                let hex = h.to_hex();
                if it.kind == Kind::Id {
                    cx.log.b_to_a_id_objects.push(hex.clone());
                    id_objects.push(hex);
                    cx.stats.id_objects_received += 1;
                } else {
                    cx.log.b_to_a_objects.push(hex.clone());
                    objects.push(hex);
                    cx.stats.objects_received += 1;
                }
            }
            if done > 0 || sent.first.is_some() {
                let (blobs, clobs) = sent.first.unwrap_or_default();
                cx.events.push_back(Event::Imported { objects, id_objects, blobs, clobs });
            }
            pass.com.committed += done;
        }
    }
}

/// Hand a ready item to the commit thread: its text and references move into the batch
/// (the pass holds only what is not committed yet: issue 8, B held the whole pass, 270 MiB for
/// 35 MB); it counts as stored from now on. Its type and ID microdata stay until its fate is
/// known (a listed node's §6.2 check may still read them).
fn hand_over(pass: &mut Pass, i: Ix) -> Owned {
    let it = &mut pass.items[i];
    it.stored = true;
    it.inflight = true;
    let text = it.text.take().unwrap_or_default();
    let id_microdata = if it.kind == Kind::Id { Some(text.to_string()) } else { it.id_microdata.clone() };
    it.refs = Vec::new();
    it.links = Vec::new();
    Owned {
        id_microdata: std::mem::replace(&mut it.id_microdata, id_microdata),
        text,
        hash: it.hash,
        type_name: it.type_name.clone(),
        is_id: it.kind == Kind::Id,
        refs: std::mem::take(&mut it.found_refs),
        want_depth: it.node && it.depth.is_none(),
    }
}

/// For the pass's last commit (`batch`): per ID with listed nodes, the deepest node that is
/// committed or in `batch` - the node its `merge` event will name - as `(ID hash, node)` for
/// `Store::put_verified_forward`, which moves the head only if that is a fast-forward. Sets the
/// depth of the batch's nodes (read at commit otherwise).
fn forward_candidates(pass: &mut Pass, batch: &[Ix]) -> Vec<([u8; 32], [u8; 32])> {
    if pass.group_missing.is_empty() {
        return Vec::new();
    }
    let in_batch: HashSet<H> = batch.iter().map(|&i| pass.items.key(i)).collect();
    let mut out = Vec::new();
    for (id, ms) in &pass.group_missing {
        let mut best: Option<(f64, H)> = None;
        for n in ms {
            let Some(it) = pass.items.get_mut(n) else { continue };
            let d = if it.committed {
                it.depth
            } else if in_batch.contains(n) && it.ok && it.node {
                let d = it.text.as_deref().map_or(0.0, node_depth);
                it.depth = Some(d);
                Some(d)
            } else {
                None
            };
            if let Some(d) = d {
                if best.is_none_or(|b| d > b.0) {
                    best = Some((d, *n));
                }
            }
        }
        if let Some((_, n)) = best {
            out.push((id.0, n.0));
        }
    }
    out
}

fn expandable(pass: &Pass, i: Ix) -> bool {
    let it = &pass.items[i];
    it.ok && !it.stored && (!it.node || it.checked)
}

/// `i` is a root whose children were asked, or a verified item of the pass references it.
fn reach(pass: &mut Pass, i: Ix) {
    let it = &mut pass.items[i];
    if !it.reached {
        it.reached = true;
        consider(pass, i);
    }
}

/// `i` was verified (a listed version node: its check passed): what it references is reached.
/// Not transitively from the roots: a chain (a channel's entries) is received oldest first, so
/// its top is the last to arrive, and the commit must not wait for it.
fn expand(pass: &mut Pass, i: Ix) {
    if expandable(pass, i) {
        let links = std::mem::take(&mut pass.items[i].links);
        for &r in &links {
            reach(pass, r);
        }
        pass.items[i].links = links;
    }
}

/// `i` may be committed once what it waits for is: queued in `ready`, and what waited for it
/// (its referrers of the pass) no longer waits for it.
///
/// An item is released when it is queued, not when its batch is made (issue 8, session 15:
/// the items became ready only as fast as batches were made, and since a batch waited for
/// `COMMIT_MIN_FAST` ready items, only the frontier of the dependency graph was ever ready,
/// ~15 % of what was received: nothing was committed between the pass's first chunk and
/// the end of its fetch, where the whole pass then went in three transactions, after the
/// wire was idle). `ready` stays in dependency order: an item is queued only after every
/// listed reference of it.
fn consider(pass: &mut Pass, i: Ix) {
    if !queue(pass, i) {
        return;
    }
    release(pass, i);
}

fn queue(pass: &mut Pass, i: Ix) -> bool {
    let it = &mut pass.items[i];
    if it.queued || !it.ok || it.stored || it.bad || !it.reached || it.blockers.unwrap_or(1) != 0 || (it.node && !it.checked) {
        return false;
    }
    it.queued = true;
    pass.com.ready.push_back(i);
    true
}

/// `i` is queued or stored: what waited for it may be ready (a worklist, not recursion: a
/// chain of 10,000 entries can become ready at once).
fn release(pass: &mut Pass, i: Ix) {
    let mut work = std::mem::take(&mut pass.com.cascade);
    work.push(i);
    while let Some(j) = work.pop() {
        for w in std::mem::take(&mut pass.items[j].waiters) {
            if let Some(b) = pass.items[w].blockers.as_mut() {
                *b -= 1;
            }
            if queue(pass, w) {
                work.push(w);
            }
        }
    }
    pass.com.cascade = work;
}

/// Every listed child must be reachable from the root it was listed for over the references
/// of what was received: an exporter must not slip unrelated objects in.
fn report_unreachable(pass: &mut Pass, cx: &mut Cx) {
    let mut bad: Vec<Ix> = pass
        .order
        .iter()
        .filter(|&&i| {
            let it = &pass.items[i];
            it.ok && !it.stored && !it.bad && !it.reached
        })
        .copied()
        .collect();
    bad.dedup();
    for i in bad {
        pass.items[i].ok = false;
        let h = pass.items.key(i);
        cx.error("LAMA-CHUM-NOTREACHABLE", &format!("{h} was listed but is not reachable from the root it was listed for"), false);
    }
}

/// Split batch answers (JSON strings of lists, docs/chum-fastpath.md 101/105) into one outcome
/// per hash, shaped like the single-hash service's answer; `null` entries fail with `refused`.
fn split_batch(sizes: &[usize], results: Vec<Outcome>, refused: &str, wrap: impl Fn(Value) -> Value) -> Result<Vec<Outcome>, Fatal> {
    let mut out = Vec::new();
    for (&n, res) in sizes.iter().zip(results) {
        match res {
            Outcome::Err { code, message } if code == TIMEOUT => return Err(fatal(&code, message)),
            Outcome::Ok(Some(Value::String(s))) => match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(list)) if list.len() == n => {
                    for v in list {
                        out.push(if v.is_null() {
                            Outcome::Err { code: refused.into(), message: "not served by the exporter".into() }
                        } else {
                            Outcome::Ok(Some(wrap(v)))
                        });
                    }
                }
                _ => out.extend((0..n).map(|_| Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed batch answer".into() })),
            },
            Outcome::Err { code, message } => out.extend((0..n).map(|_| Outcome::Err { code: code.clone(), message: message.clone() })),
            _ => out.extend((0..n).map(|_| Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed batch answer".into() })),
        }
    }
    Ok(out)
}

/// A children answer: checked and parsed already, or as it came.
enum Children {
    Parsed(Vec<(Kind, H)>),
    Raw(Outcome),
}

/// One entry of a children list (chum.md §4.3), parsed without a `serde_json::Value`.
#[derive(serde::Deserialize)]
struct Child {
    #[serde(rename = "type")]
    kind: String,
    hash: String,
}

/// A children list of good entries, reversed (dependencies first); `None` if an entry is bad
/// (the general path then reports it as before).
fn checked_children(list: Vec<Child>) -> Option<Vec<(Kind, H)>> {
    let mut out = Vec::with_capacity(list.len());
    for c in list.into_iter().rev() {
        let kind = Kind::parse(&c.kind)?;
        out.push((kind, H::parse(&c.hash)?));
    }
    Some(out)
}

/// [`checked_children`] of parsed entries: each exactly `{"type", "hash"}` (the `data` of a
/// closure entry already taken out).
fn checked_values(list: &[Value]) -> Option<Vec<(Kind, H)>> {
    let mut out = Vec::with_capacity(list.len());
    for c in list.iter().rev() {
        let Value::Object(e) = c else { return None };
        if e.len() != 2 {
            return None;
        }
        let kind = Kind::parse(e.get("type")?.as_str()?)?;
        out.push((kind, H::parse(e.get("hash")?.as_str()?)?));
    }
    Some(out)
}

/// The kinds of accessible root (chum.md §4.2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RootKind {
    Unversioned,
    Versioned,
    Id,
    Node,
}

/// A well-formed accessible root as the importer uses it: its hashes (those that are hashes),
/// `oneType` and `dataType` ("" when absent).
#[derive(Debug, PartialEq)]
struct Root {
    kind: RootKind,
    hash: Option<H>,
    id_hash: Option<H>,
    node: Option<H>,
    data_id_hash: Option<H>,
    one_type: String,
    data_type: String,
}

impl Root {
    fn kind_of(t: Option<&str>) -> Option<RootKind> {
        match t? {
            "unversioned" => Some(RootKind::Unversioned),
            "versioned" => Some(RootKind::Versioned),
            "id" => Some(RootKind::Id),
            "version_node" => Some(RootKind::Node),
            _ => None,
        }
    }

    /// The fields each kind needs (`Importer::root_list`): hashes must be hashes.
    fn needs(kind: RootKind) -> &'static [&'static str] {
        match kind {
            RootKind::Unversioned => &["hash", "oneType"],
            RootKind::Versioned => &["hash", "idHash", "oneType"],
            RootKind::Id => &["idHash", "oneType"],
            RootKind::Node => &["node", "dataIdHash", "dataType"],
        }
    }

    /// An entry `root_list` found well-formed.
    fn of_map(m: &serde_json::Map<String, Value>) -> Root {
        let st = |k: &str| m.get(k).and_then(Value::as_str);
        let h = |k: &str| st(k).and_then(H::parse);
        Root {
            kind: Root::kind_of(st("type")).unwrap_or(RootKind::Unversioned),
            hash: h("hash"),
            id_hash: h("idHash"),
            node: h("node"),
            data_id_hash: h("dataIdHash"),
            one_type: st("oneType").unwrap_or_default().to_string(),
            data_type: st("dataType").unwrap_or_default().to_string(),
        }
    }
}

/// One entry of a roots list as serde reads it straight from the text: the fields the importer
/// uses, each a string or absent/null (anything else fails the typed parse, and the list
/// goes through `Importer::root_list`).
#[derive(serde::Deserialize)]
struct WireRoot<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "idHash", borrow)]
    id_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    node: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "dataIdHash", borrow)]
    data_id_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "oneType", borrow)]
    one_type: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "dataType", borrow)]
    data_type: Option<std::borrow::Cow<'a, str>>,
}

impl WireRoot<'_> {
    /// As `Importer::root_list` takes a well-formed entry; `None` for one it reports.
    fn root(self) -> Option<Root> {
        let kind = Root::kind_of(self.kind.as_deref())?;
        let field = |k: &str| match k {
            "hash" => self.hash.as_deref(),
            "idHash" => self.id_hash.as_deref(),
            "node" => self.node.as_deref(),
            "dataIdHash" => self.data_id_hash.as_deref(),
            "oneType" => self.one_type.as_deref(),
            _ => self.data_type.as_deref(),
        };
        let good = Root::needs(kind).iter().all(|k| match field(k) {
            Some(v) => *k == "oneType" || *k == "dataType" || is_hash(v),
            None => false,
        });
        if !good {
            return None;
        }
        let h = |v: &Option<std::borrow::Cow<'_, str>>| v.as_deref().and_then(H::parse);
        Some(Root {
            kind,
            hash: h(&self.hash),
            id_hash: h(&self.id_hash),
            node: h(&self.node),
            data_id_hash: h(&self.data_id_hash),
            one_type: self.one_type.as_deref().unwrap_or_default().to_string(),
            data_type: self.data_type.as_deref().unwrap_or_default().to_string(),
        })
    }
}

/// A roots list (chum.md §4.2) read straight into [`Root`]s when every entry is well formed;
/// `None` otherwise (the general way then reports each bad entry).
fn typed_roots(s: &str) -> Option<Vec<Root>> {
    let list: Vec<WireRoot<'_>> = serde_json::from_str(s).ok()?;
    list.into_iter().map(WireRoot::root).collect()
}

/// A 102 answer `{"mark": m, "roots": [...]}` read as [`typed_roots`] does.
fn typed_roots_since(s: &str) -> Option<(u64, Vec<Root>)> {
    #[derive(serde::Deserialize)]
    struct Since<'a> {
        mark: u64,
        #[serde(borrow)]
        roots: Vec<WireRoot<'a>>,
    }
    let d: Since<'_> = serde_json::from_str(s).ok()?;
    Some((d.mark, d.roots.into_iter().map(WireRoot::root).collect::<Option<Vec<_>>>()?))
}

/// chum.md §4.3 answer text into a checked list, when every entry is good.
fn typed_children(s: &str) -> Option<Vec<(Kind, H)>> {
    checked_children(serde_json::from_str::<Vec<Child>>(s).ok()?)
}

/// "notify-closure": a NOTIFY's `closure` read as the pure core reads it: an object of at most
/// [`BATCH_MAX`] hashes, each an object with a `children` list (no page token), at most
/// [`CLOSURE_INLINE_MAX`] children in all and [`CLOSURE_INLINE_CHARS`] characters of
/// microdata; anything else is dropped whole (the pass then asks 106 as before).
fn notify_closure(v: &Value) -> Option<HashMap<H, Value>> {
    let m = v.as_object()?;
    if m.len() > BATCH_MAX {
        return None;
    }
    let (mut entries, mut chars) = (0usize, 0usize);
    let mut out = HashMap::default();
    for (k, e) in m {
        let h = H::parse(k)?;
        let e_obj = e.as_object()?;
        if e_obj.contains_key("more") {
            return None;
        }
        let children = e_obj.get("children")?.as_array()?;
        entries += children.len();
        chars += e_obj.get("root").and_then(Value::as_str).map_or(0, str::len);
        for c in children {
            chars += c.get("data").and_then(Value::as_str).map_or(0, str::len);
        }
        if entries > CLOSURE_INLINE_MAX || chars > CLOSURE_INLINE_CHARS {
            return None;
        }
        out.insert(h, e.clone());
    }
    Some(out)
}

/// One root of a GET_CLOSURE answer (docs/chum-fastpath.md 106), exactly as a lama exporter
/// writes it; anything else fails the typed parse and takes the general path.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosureRoot {
    root: Option<String>,
    children: Vec<ClosureChild>,
    /// "closure-pages": the token of the walk's next page.
    #[serde(default)]
    more: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosureChild {
    #[serde(rename = "type")]
    kind: String,
    hash: String,
    data: Option<String>,
}

/// A checked closure answer for one root: its inline microdata, the children list reversed
/// (dependencies first) and the inline microdata of listed hashes.
struct Closure {
    root: Option<String>,
    more: Option<String>,
    list: Vec<(Kind, H)>,
    data: Vec<(H, String)>,
}

/// A 106 answer of `n` roots, every entry good (`None` per root the exporter refused); `None`
/// if anything is unusual.
///
/// `paged`: the lists come dependencies first (not reversed), and `more` counts.
fn typed_closure(s: &str, n: usize, paged: bool) -> Option<Vec<Option<Closure>>> {
    closures_of(serde_json::from_str::<Vec<Option<ClosureRoot>>>(s).ok()?, n, paged)
}

/// The children of each job from a typed closure answer (`parsed`, in the jobs' order): the
/// inline microdata goes to `prefetched`, each list to `out`.
fn take_closures<'a>(pass: &mut Pass, jobs: impl Iterator<Item = &'a Job>, parsed: Vec<Option<Closure>>, out: &mut Vec<(Children, Option<String>)>) {
    for (job, r) in jobs.zip(parsed) {
        match r {
            None => out.push((Children::Raw(Outcome::Err { code: "CES-GOC1".into(), message: "not served by the exporter".into() }), None)),
            Some(c) => {
                if let Some(t) = c.root {
                    pass.prefetched.insert(job.hash, t);
                }
                pass.prefetched.extend(c.data);
                out.push((Children::Parsed(c.list), c.more));
            }
        }
    }
}

/// [`typed_closure`] of the parsed roots.
fn closures_of(roots: Vec<Option<ClosureRoot>>, n: usize, paged: bool) -> Option<Vec<Option<Closure>>> {
    if roots.len() != n {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for r in roots {
        let Some(r) = r else {
            out.push(None);
            continue;
        };
        let mut list = Vec::with_capacity(r.children.len());
        let mut data = Vec::new();
        let mut add = |c: ClosureChild| -> Option<()> {
            let h = H::parse(&c.hash)?;
            list.push((Kind::parse(&c.kind)?, h));
            if let Some(t) = c.data {
                data.push((h, t));
            }
            Some(())
        };
        if paged {
            for c in r.children {
                add(c)?;
            }
        } else {
            for c in r.children.into_iter().rev() {
                add(c)?;
            }
        }
        out.push(Some(Closure { root: r.root, more: if paged { r.more } else { None }, list, data }));
    }
    Some(out)
}

/// [`split_batch`] for GET_CHILDREN_BATCH answers: parsed straight into checked lists (issue
/// 8: a 70,000-entry list went through a `Value`, back to a string and through a `Value`
/// again); an answer with anything unusual takes the general path.
fn split_children_batch(sizes: &[usize], results: Vec<Outcome>) -> Result<Vec<Children>, Fatal> {
    let mut out = Vec::with_capacity(sizes.iter().sum());
    for (&n, res) in sizes.iter().zip(results) {
        if let Outcome::Ok(Some(Value::String(s))) = &res {
            if let Ok(lists) = serde_json::from_str::<Vec<Option<Vec<Child>>>>(s) {
                if lists.len() == n && lists.iter().all(Option::is_some) {
                    let checked: Option<Vec<_>> = lists.into_iter().map(|l| checked_children(l.unwrap_or_default())).collect();
                    if let Some(all) = checked {
                        out.extend(all.into_iter().map(Children::Parsed));
                        continue;
                    }
                }
            }
        }
        let general = split_batch(&[n], vec![res], "CES-GOC1", |c| Value::String(c.to_string()))?;
        out.extend(general.into_iter().map(Children::Raw));
    }
    Ok(out)
}

/// [`split_batch`] for GET_OBJECTS_BATCH answers (lists of microdata strings or `null`):
/// parsed straight into strings, without a `serde_json::Value` per entry and its copy (issue
/// 8: 9 % of the importer's CPU). An answer with other entries takes the general path, so each
/// such entry fails on its own as before.
fn split_objects_batch(sizes: &[usize], results: Vec<Outcome>) -> Result<Vec<Outcome>, Fatal> {
    let mut out = Vec::with_capacity(sizes.iter().sum());
    for (&n, res) in sizes.iter().zip(results) {
        if let Outcome::Bytes(b) = res {
            // the entries stay in the message (its id first), shared by their texts
            let list = b.get(8..).and_then(|p| crate::rpc::batch_binary_ranges(p, n));
            let b = std::sync::Arc::new(b);
            let texts = list.and_then(|list| {
                list.into_iter().map(|r| r.map(|r| Text::shared(&b, r.start + 8..r.end + 8)).map_or(Some(None), |t| t.map(Some))).collect::<Option<Vec<_>>>()
            });
            match texts {
                Some(list) => out.extend(list.into_iter().map(|v| match v {
                    None => Outcome::Err { code: "CES-GO1".into(), message: "not served by the exporter".into() },
                    Some(t) => Outcome::Text(t),
                })),
                None => out.extend((0..n).map(|_| Outcome::Err { code: "LAMA-CHUM-BATCH".into(), message: "malformed batch answer".into() })),
            }
            continue;
        }
        if let Outcome::Ok(Some(Value::String(s))) = &res {
            if let Ok(list) = serde_json::from_str::<Vec<Option<String>>>(s) {
                if list.len() == n {
                    out.extend(list.into_iter().map(|v| match v {
                        None => Outcome::Err { code: "CES-GO1".into(), message: "not served by the exporter".into() },
                        Some(t) => Outcome::Ok(Some(Value::String(t))),
                    }));
                    continue;
                }
            }
        }
        out.extend(split_batch(&[n], vec![res], "CES-GO1", |c| c)?);
    }
    Ok(out)
}

fn ref_kind(k: RefKind) -> Kind {
    match k {
        RefKind::Obj => Kind::Object,
        RefKind::Id => Kind::Id,
        RefKind::Blob => Kind::Blob,
        RefKind::Clob => Kind::Clob,
    }
}

/// A version node's `depth` (0 if it has none). A node of the pass was verified and checked
/// (§6.2: one of the three version node types, whose recipes hold only references and
/// numbers): its depth is read off the text, the one `<span itemprop="depth">` of such a node,
/// when it is a plain integer; anything else goes through the full parse. The pass's last
/// commit read every node of its batch with the full parse on the session thread, after the
/// wire was idle (issue 8, session 17: ~7 ms of the initial sync's tail), and the commit thread
/// each node it committed.
fn node_depth(text: &str) -> f64 {
    if let Some(d) = plain_depth(text) {
        return d;
    }
    match microdata::parse(text) {
        Ok(v) => match v.get("depth") {
            Some(MdValue::Int(i)) => *i as f64,
            Some(MdValue::Float(f)) => *f,
            _ => 0.0,
        },
        Err(_) => 0.0,
    }
}

/// [`node_depth`] read off the text of a version node: `None` unless the text is one of the
/// version node types and its depth a plain integer of at most 15 digits (exact as an f64).
fn plain_depth(text: &str) -> Option<f64> {
    const HEAD: &str = "<div itemscope itemtype=\"//refin.io/VersionNode";
    const DEPTH: &str = "<span itemprop=\"depth\">";
    let rest = text.strip_prefix(HEAD)?;
    if !["Edge\">", "Change\">", "Merge\">"].iter().any(|t| rest.starts_with(t)) {
        return None;
    }
    let at = rest.find(DEPTH)? + DEPTH.len();
    let digits = &rest[at..at + rest[at..].find("</span>")?];
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().map(|d| d as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The depth read off a node's text is what the full parse reads, for every version node
    /// type; a depth that is not a plain integer, or a text of another type, is parsed.
    #[test]
    fn plain_depths_are_the_parsed_depths() {
        use lama_core::microdata::{serialize, Value as V};
        let s = |v: &str| V::Str(v.to_string());
        let h = "ab".repeat(32);
        let node = |ty: &str, depth: V| {
            let mut e = vec![(s("$type$"), s(ty))];
            match ty {
                "VersionNodeChange" => e.push((s("prev"), s(&h))),
                "VersionNodeMerge" => e.push((s("nodes"), V::Set(vec![s(&h), s(&"cd".repeat(32))]))),
                _ => {}
            }
            e.extend([(s("data"), s(&h)), (s("depth"), depth), (s("creationTime"), V::Int(1_700_000_000_000))]);
            serialize(&V::Dict(e)).unwrap()
        };
        for ty in VERSION_NODE_TYPES {
            for d in [0i64, 7, 2081, 999_999_999_999_999] {
                let t = node(ty, V::Int(d));
                assert_eq!(plain_depth(&t), Some(d as f64), "{t}");
                assert_eq!(node_depth(&t), d as f64);
            }
            // a large or fractional depth: the full parse
            for d in [1e300, 2.5] {
                let t = node(ty, V::Float(d));
                assert_eq!(plain_depth(&t), None, "{t}");
                assert_eq!(node_depth(&t), d);
            }
        }
        let person = serialize(&V::Dict(vec![(s("$type$"), s("Person")), (s("email"), s("<span itemprop=\"depth\">5</span>"))])).unwrap();
        assert_eq!(plain_depth(&person), None);
        assert_eq!(node_depth(&person), 0.0);
    }

    /// A fast-path importer (its store in `dir`) whose pass has committed its first chunk and
    /// has `n` verified ID objects ready, the fetch still going on (a call out).
    fn fetching(dir: &std::path::Path, n: usize) -> (Importer, Box<Pass>) {
        let store = Store::open(dir.join("b"), Some(1 << 28)).unwrap();
        let mut imp = Importer::new(store, false, Duration::from_secs(1), true, "p".into());
        imp.features.insert("batch".into());
        let mut pass = Box::new(Pass { batch: 1, no: 1, ..Default::default() });
        for k in 0..n {
            let text = format!(r#"<div data-id-object="true" itemscope itemtype="//refin.io/Person"><span itemprop="email">p{k}@x.example</span></div>"#);
            let hash = sha256(text.as_bytes());
            let (i, _) = pass.items.add(H(hash), || Item::new(Kind::Id, None));
            let it = &mut pass.items[i];
            (it.text, it.hash, it.type_name, it.ok, it.queued) = (Some(text.into()), hash, "Person".into(), true, true);
            pass.com.ready.push_back(i);
        }
        pass.com.handed = 2048;
        pass.inflight.push_back(Vec::new());
        (imp, pass)
    }

    fn cx(now: std::time::Instant) -> Cx {
        Cx { events: VecDeque::new(), log: Default::default(), stats: Default::default(), now: Some(now) }
    }

    /// docs/chum-fastpath.md "Commits": with "batch", ready items go to the commit thread as
    /// soon as `MERGE_MIN` are, even while batches are out: they join its open group (one
    /// transaction for several batches, commit.rs), instead of waiting for a large batch and
    /// being committed after the wire has gone idle; fewer wait for the next answer.
    #[test]
    fn ready_items_join_the_commit_threads_group_while_batches_are_out() {
        let dir = tempfile::tempdir().unwrap();
        let (mut imp, mut pass) = fetching(dir.path(), MERGE_MIN + 100);
        // (a group that ends only by the flush of `settle`: not by the threads' timing)
        imp.committer.set_group_timing(Duration::from_secs(60), Duration::from_secs(60));
        let now = std::time::Instant::now();
        let mut cx = cx(now);
        let txn0 = imp.store.last_txn_id();
        let texts: Vec<(String, [u8; 32])> = (0..MERGE_MIN)
            .map(|k| format!(r#"<div data-id-object="true" itemscope itemtype="//refin.io/Person"><span itemprop="email">q{k}@x.example</span></div>"#))
            .map(|t| {
                let h = sha256(t.as_bytes());
                (t, h)
            })
            .collect();
        let more = |pass: &mut Pass, from: usize, n: usize| {
            for (text, hash) in &texts[from..from + n] {
                let (i, _) = pass.items.add(H(*hash), || Item::new(Kind::Id, None));
                let it = &mut pass.items[i];
                (it.text, it.hash, it.type_name, it.ok, it.queued) = (Some(text.clone().into()), *hash, "Person".into(), true, true);
                pass.com.ready.push_back(i);
            }
        };
        imp.commit_if_due(&mut pass, &mut cx);
        assert!(pass.com.ready.is_empty());
        assert_eq!(pass.com.sent.len(), 1);
        // more ready items while that batch is out: fewer than MERGE_MIN wait ...
        more(&mut pass, 0, MERGE_MIN - 1);
        imp.commit_if_due(&mut pass, &mut cx);
        assert_eq!(pass.com.ready.len(), MERGE_MIN - 1);
        assert_eq!(pass.com.sent.len(), 1);
        assert_eq!(pass.ready_since, Some(now));
        // ... MERGE_MIN go, while the first is still out
        more(&mut pass, MERGE_MIN - 1, 1);
        imp.commit_if_due(&mut pass, &mut cx);
        assert!(pass.com.ready.is_empty());
        assert_eq!(pass.com.sent.len(), 2);
        imp.settle(&mut pass, &mut cx);
        let stored: Vec<usize> = cx.events.iter().filter_map(|e| match e { Event::Imported { id_objects, .. } => Some(id_objects.len()), _ => None }).collect();
        assert_eq!(stored, vec![MERGE_MIN + 100, MERGE_MIN]);
        // the two batches took one transaction
        assert_eq!(imp.store.last_txn_id(), txn0 + 1);
    }

    /// ... and the session's commit poll hands a batch's worth of ready items over too (before
    /// the commit interval is up).
    #[test]
    fn the_commit_poll_hands_over_what_waited_for_the_commit_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (mut imp, pass) = fetching(dir.path(), COMMIT_MIN_FAST);
        let now = std::time::Instant::now();
        let mut cx = cx(now + Duration::from_millis(20));
        let mut pass = pass;
        pass.ready_since = Some(now);
        imp.stage = Stage::Fetch(pass);
        imp.commit_ready(&mut cx);
        let Stage::Fetch(pass) = &mut imp.stage else { panic!("still fetching") };
        assert!(pass.com.ready.is_empty());
        assert_eq!(pass.com.sent.iter().map(|s| s.hashes.len()).sum::<usize>(), COMMIT_MIN_FAST);
        // fewer than a batch's worth keep waiting for the next answer or the interval
        let dir2 = tempfile::tempdir().unwrap();
        let (mut imp, mut pass) = fetching(dir2.path(), 10);
        pass.ready_since = Some(now);
        imp.stage = Stage::Fetch(pass);
        imp.commit_ready(&mut cx);
        let Stage::Fetch(pass) = &imp.stage else { panic!("still fetching") };
        assert_eq!(pass.com.ready.len(), 10);
    }

    /// The typed read of a roots list (B's start of a sync, issue 8) gives exactly what the
    /// general way (`root_list` over parsed `Value`s) gives, and leaves to it every list with
    /// an entry it would report or a field that is not a string.
    #[test]
    fn roots_read_typed_are_what_the_general_way_reads() {
        let h = |c: char| c.to_string().repeat(64);
        let (a, b, c, d) = (h('a'), h('b'), h('c'), h('d'));
        let good = format!(
            r#"[{{"type":"unversioned","hash":"{a}","oneType":"Topic"}},{{"type":"versioned","hash":"{b}","idHash":"{c}","oneType":"Chan\"n\u00e9l"}},{{"oneType":"Person","type":"id","idHash":"{c}","extra":[1,{{"x":2}}]}},{{"type":"version_node","node":"{d}","dataIdHash":"{c}","dataType":"ChannelInfo"}},{{"type":"unversioned","hash":"{a}","idHash":null,"node":"nothash","oneType":"X"}}]"#
        );
        let dir = tempfile::tempdir().unwrap();
        let (imp, _) = fetching(dir.path(), 0);
        let mut cx = cx(std::time::Instant::now());
        let typed = typed_roots(&good).expect("read typed");
        let Value::Array(list) = serde_json::from_str::<Value>(&good).unwrap() else { panic!("a list") };
        let general = imp.root_list(list, &mut cx);
        assert_eq!(typed, general);
        assert_eq!(general.len(), 5);
        assert_eq!(general[1].one_type, "Chan\"n\u{e9}l");
        assert_eq!((general[3].kind, general[3].node, general[3].data_id_hash), (RootKind::Node, H::parse(&d), H::parse(&c)));
        assert!(cx.events.is_empty());
        assert_eq!(typed_roots_since(&format!(r#"{{"mark":7,"roots":{good}}}"#)), Some((7, general)));
        assert_eq!(typed_roots("[]"), Some(Vec::new()));
        for bad in [
            "[1]".to_string(),
            format!(r#"[{{"type":"other","hash":"{a}","oneType":"T"}}]"#),
            format!(r#"[{{"type":"unversioned","hash":"{}","oneType":"T"}}]"#, a.to_uppercase()),
            format!(r#"[{{"type":"versioned","hash":"{a}","oneType":"T"}}]"#),
            format!(r#"[{{"type":"unversioned","hash":"{a}","oneType":5}}]"#),
            format!(r#"[{{"type":"unversioned","hash":"{a}","hash":"{b}","oneType":"T"}}]"#),
            "{}".to_string(),
        ] {
            assert!(typed_roots(&bad).is_none(), "{bad}");
        }
        for bad in [r#"{"mark":-1,"roots":[]}"#, r#"{"roots":[]}"#, r#"{"mark":1,"roots":{}}"#, r#"[]"#] {
            assert!(typed_roots_since(bad).is_none(), "{bad}");
        }
    }
}
