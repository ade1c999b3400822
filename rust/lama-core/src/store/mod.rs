//! LMDB object store (objects.md §5, docs/store-format.md).
//!
//! One [`Store`] per instance directory: an LMDB environment with the named databases
//! `meta`, `objects`, `chunks`, `vheads`, `rmaps` and `tmp`, laid out byte for byte as
//! docs/store-format.md describes (the pure-Python core writes the very same bytes).
//!
//! Semantics (objects.md §5): objects, ID objects, BLOBs and CLOBs are content-addressed and
//! write-once (§2.4 statuses `new`/`exists`); version heads (§4.1) are changed only by
//! [`Store::write_batch`] with compare-and-set; reverse maps (§5.3) are written in the same
//! transaction as a *new* object. Every batch call is one write transaction: an error anywhere
//! aborts it, so a store is never half-written.
//!
//! The environment of a directory is opened once per process and shared by every `Store`
//! handle on it (LMDB forbids opening one environment twice in a process); it is closed when
//! the last handle is dropped.

mod access;
mod blob;
mod check;
mod feed;
mod keys;
mod mark;
mod objects;
mod pending;
mod read;
mod rmaps;
mod verify;

pub use access::{Root, RootKind};
pub use blob::BlobWriter;
pub use feed::{CommitHook, Event, Subscription};
pub use objects::{PutResult, Serialized, Verified, VerifiedTxn};
pub use pending::{PendingCommit, PendingState, PreCommitHook};
pub use read::{ClosureWalk, Snapshot};
pub use rmaps::Props;

/// The types of version nodes (objects.md §4): what a head points at.
pub const VERSION_NODE_TYPES: [&str; 3] = ["VersionNodeEdge", "VersionNodeChange", "VersionNodeMerge"];

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use crate::error::{Error, Result};
use crate::hash::Hash;

/// The value of `meta["format"]`.
pub const FORMAT: &str = "lama-store-2";
/// The previous format, upgraded on open (docs/store-format.md "Upgrade from lama-store-1").
pub const FORMAT_1: &str = "lama-store-1";
/// Largest BLOB/CLOB stored inline; larger ones are cut into chunks of exactly this size.
pub const CHUNK: usize = 1_048_576;
/// Default LMDB map size (64 GiB, sparse).
pub const DEFAULT_MAP_SIZE: usize = 1 << 36;
/// `max_dbs` of the environment.
pub const MAX_DBS: u32 = 16;
/// Staged BLOB/CLOB chunks older than this are deleted when a store is opened.
pub const TMP_MAX_AGE_MS: u64 = 3_600_000;

/// Kind bytes of `objects` values (docs/store-format.md "objects values").
pub(crate) const K_OBJECT: u8 = b'O';
pub(crate) const K_ID: u8 = b'I';
pub(crate) const K_CLOB: u8 = b'C';
pub(crate) const K_BLOB: u8 = b'B';
pub(crate) const K_CLOB_CHUNKED: u8 = b'c';
pub(crate) const K_BLOB_CHUNKED: u8 = b'b';

type Db = Database<Bytes, Bytes>;

/// Write status of a content-addressed entry (objects.md §2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    New,
    Exists,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Exists => "exists",
        }
    }
}

/// What an `objects` entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Object,
    Id,
    Clob,
    Blob,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Object => "object",
            EntryKind::Id => "id",
            EntryKind::Clob => "clob",
            EntryKind::Blob => "blob",
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<EntryKind> {
        match b {
            K_OBJECT => Some(EntryKind::Object),
            K_ID => Some(EntryKind::Id),
            K_CLOB | K_CLOB_CHUNKED => Some(EntryKind::Clob),
            K_BLOB | K_BLOB_CHUNKED => Some(EntryKind::Blob),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    pub meta: Db,
    pub objects: Db,
    pub chunks: Db,
    pub vheads: Db,
    pub rmaps: Db,
    pub tmp: Db,
    /// The post-commit event feed (feed.rs).
    pub events: Db,
    /// The access index (access.rs; docs/store-format.md "access index").
    pub agrants: Db,
    pub amembers: Db,
    pub anodes: Db,
    pub aroots: Db,
    pub arefs: Db,
    pub aids: Db,
    pub aseq: Db,
    /// Per-peer high-water marks (`Store::peer_mark`).
    pub peers: Db,
}

struct Shared {
    env: Env<WithoutTls>,
    /// The canonical directory (for the structural check, which reads `data.mdb` itself).
    dir: PathBuf,
    dbs: Dbs,
    /// False if the environment was opened with `NO_SYNC` (see [`Store::open_with`]).
    durable: bool,
    /// Wakes subscriptions after commits that appended events (feed.rs).
    feed: feed::Notifier,
    /// The state of `data.mdb` this process checked at open (full check or matching mark),
    /// if it could be described (check mark, docs/store-format.md "Check mark").
    opened: Option<check::FileState>,
    /// The newest transaction this process committed (0: none), see [`WriteTxn::commit`].
    own_txnid: AtomicU64,
    /// A structural check in this process found damage: never vouch for this file.
    damaged: AtomicBool,
    /// Zero-filled space past LMDB's last page, for a durable store (None: not kept).
    reserve: Option<Reserve>,
    /// The last commit grew the file past its reserve target (a bulk write): the next one
    /// does not refill it (docs/store-format.md "Reserve").
    past_reserve: AtomicBool,
}

/// The reserve (docs/store-format.md "Reserve"): `data.mdb` is kept zero-filled for a while
/// past the pages LMDB uses, so a commit writes into blocks the file already has. An fdatasync
/// of a file that grew must also commit the file system's journal (the new size, the new
/// blocks): on ext4 that is the difference between a fraction of a millisecond and several
/// (issue 10: the two durable commits on a chat message's way). LMDB reads only pages up to
/// its meta's last page, and both cores' checks only require the file to be long enough, so a
/// longer file is the same store.
struct Reserve {
    file: std::fs::File,
    psize: u64,
}

/// At least this much reserve, and never more (a store keeps about an eighth of its size).
const RESERVE_MIN: u64 = 256 << 10;
const RESERVE_MAX: u64 = 4 << 20;

impl Shared {
    /// Grow the reserve if it fell below half its target. Called in a write transaction
    /// before its commit: LMDB's writer lock (across processes) is held, so no other writer
    /// can be writing past the old end of the file while the zeros go there, and this
    /// transaction's own pages are written after them. A failure (a full disk) only leaves a
    /// smaller reserve: LMDB's own writes then grow the file as before.
    #[cfg(unix)]
    fn grow_reserve(&self) {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let Some(r) = &self.reserve else { return };
        let used = (self.env.info().last_page_number as u64 + 1) * r.psize;
        let Ok(meta) = r.file.metadata() else { return };
        let size = meta.len();
        let target = reserve_target(used);
        if size >= used + target / 2 {
            return;
        }
        let end = (used + target).div_ceil(r.psize) * r.psize;
        let mut off = size;
        while off < end {
            let n = (end - off).min(ZEROS.len() as u64) as usize;
            if r.file.write_all_at(&ZEROS[..n], off).is_err() {
                return;
            }
            off += n as u64;
        }
    }

    #[cfg(not(unix))]
    fn grow_reserve(&self) {}

    /// After a commit that moved LMDB's last page from `before` to `after`: did it grow the
    /// file by more than the reserve's target? Then the zeros written before it were
    /// overwritten by its own pages, and its fsync committed the journal for the new size
    /// anyway (an initial sync's 70,000 objects wrote ~36 MB of zeros in 9 commits, ~40 % on
    /// top of the store's own growth), so the next commit skips the refill; one that fits
    /// brings it back.
    fn note_growth(&self, before: usize, after: usize) {
        let Some(r) = &self.reserve else { return };
        let used = (after as u64 + 1) * r.psize;
        let grown = after.saturating_sub(before) as u64 * r.psize;
        self.past_reserve.store(grown > reserve_target(used), Ordering::Relaxed);
    }
}

/// The reserve kept past `used` bytes (docs/store-format.md "Reserve").
fn reserve_target(used: u64) -> u64 {
    (used / 8).clamp(RESERVE_MIN, RESERVE_MAX)
}

impl Drop for Shared {
    /// The last handle is gone: flush the environment before LMDB closes it (closing does not
    /// sync by itself): a non-durable one's commits, a durable one's last meta page
    /// (MDB_NOMETASYNC, docs/store-format.md "Durability").
    ///
    /// Then write the check mark if this process can vouch for the file as it is now
    /// (docs/store-format.md "Check mark"): it is the state checked at open, or its newest
    /// transaction is one this process committed, and no check here found damage.
    fn drop(&mut self) {
        if self.env.force_sync().is_err() {
            return;
        }
        if self.damaged.load(Ordering::Acquire) {
            let _ = mark::remove(&self.dir, false);
            return;
        }
        let Ok(Some(now)) = check::meta_state(&self.dir, None) else { return };
        let own = self.own_txnid.load(Ordering::Acquire);
        if self.opened == Some(now) || (own != 0 && now.newest() == own) {
            let _ = mark::write(&self.dir, &now);
        }
    }
}

/// Open environments of this process, by canonical directory.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Shared>>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Weak<Shared>>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

/// A handle on the store of one directory. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    path: PathBuf,
    open_check: OpenCheck,
}

/// When the structural check of `data.mdb` runs at open (docs/store-format.md "Check mark").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// The full check, unless a valid check mark says the file is exactly as lama left it.
    Auto,
    /// Always the full check.
    Always,
}

impl CheckMode {
    /// `"auto"` or `"always"`; anything else is `StoreError LAMA-OPEN`.
    pub fn parse(s: &str) -> Result<CheckMode> {
        match s {
            "auto" => Ok(CheckMode::Auto),
            "always" => Ok(CheckMode::Always),
            _ => Err(Error::store("LAMA-OPEN", format!("check must be \"auto\" or \"always\", got {s:?}"))),
        }
    }
}

/// Which check the open of a [`Store`] handle ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenCheck {
    /// The full structural check (page walk).
    Full,
    /// The meta checks only: a valid check mark matched the file.
    Mark,
    /// None: the environment was already open (and checked) in this process.
    Shared,
}

impl OpenCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenCheck::Full => "full",
            OpenCheck::Mark => "mark",
            OpenCheck::Shared => "shared",
        }
    }
}

/// A write transaction that records its id in the environment when its commit advanced the
/// file (the check mark vouches only for transactions this process committed).
pub(crate) struct WriteTxn<'e> {
    txn: RwTxn<'e>,
    shared: &'e Shared,
}

impl<'e> std::ops::Deref for WriteTxn<'e> {
    type Target = RwTxn<'e>;
    fn deref(&self) -> &RwTxn<'e> {
        &self.txn
    }
}

impl<'e> std::ops::DerefMut for WriteTxn<'e> {
    fn deref_mut(&mut self) -> &mut RwTxn<'e> {
        &mut self.txn
    }
}

impl WriteTxn<'_> {
    pub(crate) fn commit(self) -> heed::Result<()> {
        let id = self.txn.id() as u64;
        let before = self.shared.reserve.as_ref().map(|_| self.shared.env.info().last_page_number);
        if !self.shared.past_reserve.load(Ordering::Relaxed) {
            self.shared.grow_reserve();
        }
        self.txn.commit()?;
        let info = self.shared.env.info();
        if let Some(b) = before {
            self.shared.note_growth(b, info.last_page_number);
        }
        // LMDB does not advance the transaction id for a commit that wrote nothing; then the
        // id is not ours (another process may commit it next).
        if info.last_txn_id as u64 == id {
            self.shared.own_txnid.fetch_max(id, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// Parse a hash argument (`MicrodataError LAMA-BADHASH` unless 64 lowercase hex characters).
pub(crate) fn parse_hash(what: &str, s: &str) -> Result<Hash> {
    crate::hash::check_hash(s, what)
}

pub(crate) fn not_found(hash: &str, what: &str) -> Error {
    Error::not_found("SB-READ2", format!("{what} {hash} not found in the store"))
}

/// The kind of an `objects` value; `StoreError LAMA-CORRUPT` for a damaged one (its kind byte
/// is not one of docs/store-format.md "objects values").
pub(crate) fn entry_kind(hash: &str, v: &[u8]) -> Result<EntryKind> {
    v.first()
        .and_then(|b| EntryKind::from_byte(*b))
        .ok_or_else(|| Error::store("LAMA-CORRUPT", format!("entry {hash} has an unknown kind byte")))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Store {
    /// Open (creating the directory and the LMDB environment if missing) the store at `path`.
    /// `map_size` defaults to [`DEFAULT_MAP_SIZE`]; it is rounded up to a page multiple. If the
    /// environment is already open in this process the existing one is shared.
    pub fn open(path: impl AsRef<Path>, map_size: Option<usize>) -> Result<Store> {
        Store::open_with(path, map_size, true)
    }

    /// [`open`](Self::open) with an explicit durability (docs/store-format.md "Durability").
    ///
    /// `durable = true` (the default of [`open`](Self::open)): LMDB syncs on every commit, so a
    /// committed batch is on disk. `durable = false`: the environment is opened with `NO_SYNC`;
    /// commits stay atomic and consistent and survive a killed process (the OS has the pages),
    /// but the last commits may be lost on a power failure or OS crash until [`sync`](Self::sync)
    /// runs (the last handle's drop syncs too). The environment of a directory is shared within
    /// the process, so opening it again with the other durability is `StoreError LAMA-DURABLE`.
    pub fn open_with(path: impl AsRef<Path>, map_size: Option<usize>, durable: bool) -> Result<Store> {
        Store::open_checked(path, map_size, durable, CheckMode::Auto)
    }

    /// [`open_with`](Self::open_with) choosing when the structural check of the file runs
    /// (docs/store-format.md "Check mark"). With [`CheckMode::Always`] the full check runs even
    /// if the environment is already open in this process (on its current snapshot).
    pub fn open_checked(
        path: impl AsRef<Path>,
        map_size: Option<usize>,
        durable: bool,
        mode: CheckMode,
    ) -> Result<Store> {
        let path = path.as_ref();
        std::fs::create_dir_all(path)?;
        let canon = std::fs::canonicalize(path)?;
        let mut tries = 0u32;
        loop {
            {
                let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
                if let Some(shared) = reg.get(&canon).and_then(Weak::upgrade) {
                    if shared.durable != durable {
                        return Err(Error::store(
                            "LAMA-DURABLE",
                            format!(
                                "{} is already open in this process with durable={}",
                                canon.display(),
                                if shared.durable { "True" } else { "False" }
                            ),
                        ));
                    }
                    let mut open_check = OpenCheck::Shared;
                    if mode == CheckMode::Always {
                        if let Err(problem) = checked_snapshot(&shared.env, &shared.dir)? {
                            shared.damaged.store(true, Ordering::Release);
                            return Err(damaged(&canon, &problem));
                        }
                        open_check = OpenCheck::Full;
                    }
                    return Ok(Store { shared, path: path.to_path_buf(), open_check });
                }
                match open_env(&canon, map_size.unwrap_or(DEFAULT_MAP_SIZE), durable, mode) {
                    Ok((shared, open_check)) => {
                        let shared = Arc::new(shared);
                        reg.retain(|_, w| w.strong_count() > 0);
                        reg.insert(canon.clone(), Arc::downgrade(&shared));
                        return Ok(Store { shared, path: path.to_path_buf(), open_check });
                    }
                    // The last handle of this directory is being closed by another thread.
                    Err(OpenError::Busy) if tries < 5000 => {}
                    Err(OpenError::Busy) => {
                        return Err(Error::store(
                            "LAMA-LMDB",
                            format!("environment {} is still being closed", canon.display()),
                        ))
                    }
                    Err(OpenError::Other(e)) => return Err(e),
                }
            }
            tries += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The directory this store was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which structural check the open of this handle ran.
    pub fn open_check(&self) -> OpenCheck {
        self.open_check
    }

    /// True unless the store was opened with `durable = false`.
    pub fn durable(&self) -> bool {
        self.shared.durable
    }

    /// Flush everything committed so far to disk (`mdb_env_sync` with force). Needed only for
    /// a non-durable store; harmless (one fsync) for a durable one.
    pub fn sync(&self) -> Result<()> {
        Ok(self.shared.env.force_sync()?)
    }

    /// The id of the newest committed LMDB write transaction (any process): how many commits a
    /// piece of work took, for tests and diagnostics.
    pub fn last_txn_id(&self) -> u64 {
        self.shared.env.info().last_txn_id as u64
    }

    /// This store's identity: 32 hex digits, random, fixed at its first open (meta `store_id`).
    pub fn store_id(&self) -> Result<String> {
        let txn = self.read_txn()?;
        Ok(self.dbs().meta.get(&txn, b"store_id")?.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
    }

    pub(crate) fn dbs(&self) -> Dbs {
        self.shared.dbs
    }

    pub(crate) fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        Ok(self.shared.env.read_txn()?)
    }

    /// A read transaction whose snapshot passed the structural check of the file, or the
    /// first structural problem found (docs/store-format.md "Damaged files").
    pub(crate) fn checked_read_txn(&self) -> Result<std::result::Result<RoTxn<'_, WithoutTls>, String>> {
        let r = checked_snapshot(&self.shared.env, &self.shared.dir)?;
        if r.is_err() {
            self.shared.damaged.store(true, Ordering::Release);
        }
        Ok(r)
    }

    pub(crate) fn write_txn(&self) -> Result<WriteTxn<'_>> {
        Ok(WriteTxn { txn: self.shared.env.write_txn()?, shared: &self.shared })
    }

    /// The raw `objects` value stored under `h`, if any.
    pub(crate) fn entry<'t>(&self, txn: &'t RoTxn, h: &[u8; 32]) -> Result<Option<&'t [u8]>> {
        Ok(self.shared.dbs.objects.get(txn, h)?)
    }

    /// Microdata of an object or ID object (`SB-READ2` if missing or a BLOB/CLOB).
    pub fn get(&self, hash: &str) -> Result<String> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        match self.entry(&txn, &h)? {
            Some([k, rest @ ..]) if *k == K_OBJECT || *k == K_ID => String::from_utf8(rest.to_vec())
                .map_err(|_| Error::store("LAMA-CORRUPT", format!("object {hash} is not UTF-8"))),
            Some(v) => Err(Error::not_found(
                "SB-READ2",
                format!("{hash} is a {}, not an object", entry_kind(hash, v)?.as_str()),
            )),
            None => Err(not_found(hash, "object")),
        }
    }

    /// True if anything (object, ID object, BLOB, CLOB) is stored under `hash`.
    pub fn has(&self, hash: &str) -> Result<bool> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        Ok(self.entry(&txn, &h)?.is_some())
    }

    /// What is stored under `hash`, if anything.
    pub fn kind(&self, hash: &str) -> Result<Option<EntryKind>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        match self.entry(&txn, &h)? {
            None => Ok(None),
            Some(v) => Ok(Some(entry_kind(hash, v)?)),
        }
    }

    /// Number of entries in `objects` (objects, ID objects, BLOBs, CLOBs).
    pub fn count(&self) -> Result<u64> {
        let txn = self.read_txn()?;
        Ok(self.shared.dbs.objects.len(&txn)?)
    }

    /// All hashes in `objects`, in key order.
    pub fn hashes(&self) -> Result<Vec<String>> {
        let txn = self.read_txn()?;
        let mut out = Vec::new();
        for item in self.shared.dbs.objects.iter(&txn)? {
            let (k, _) = item?;
            out.push(hex::encode(k));
        }
        Ok(out)
    }

    /// Current head version node of `id_hash` (objects.md §4.1), if any.
    pub fn get_head(&self, id_hash: &str) -> Result<Option<String>> {
        let h = parse_hash("ID hash", id_hash)?;
        let txn = self.read_txn()?;
        match self.shared.dbs.vheads.get(&txn, &h[..])? {
            None => Ok(None),
            Some(v) if v.len() == 32 => Ok(Some(hex::encode(v))),
            Some(_) => Err(Error::store("LAMA-CORRUPT", format!("the head of {id_hash} is malformed"))),
        }
    }
}

/// `StoreError LAMA-CORRUPT` for a store whose file failed the structural check.
fn damaged(dir: &Path, problem: &str) -> Error {
    Error::store("LAMA-CORRUPT", format!("the store at {} is damaged: {problem}", dir.display()))
}

/// Begin a read transaction and check its snapshot with plain reads of `data.mdb` before
/// LMDB follows any page of it; retried when commits of other processes overwrote the meta
/// page of the snapshot meanwhile (its pages stay protected by the read transaction).
fn checked_snapshot<'e>(
    env: &'e Env<WithoutTls>,
    dir: &Path,
) -> Result<std::result::Result<RoTxn<'e, WithoutTls>, String>> {
    let mut tries = 0;
    loop {
        let txn = env.read_txn()?;
        match check::check_snapshot(dir, txn.id() as u64) {
            Ok(true) => return Ok(Ok(txn)),
            Ok(false) if tries < 1000 => tries += 1,
            Ok(false) => {
                return Err(Error::store("LAMA-LMDB", "the store changes too fast to check a snapshot"))
            }
            Err(problem) => return Ok(Err(problem)),
        }
    }
}

/// [`checked_snapshot`] at the open of the environment: with [`CheckMode::Auto`] and a check
/// mark that matches the file exactly (stat and both meta pages, the snapshot being the newest
/// transaction), only the meta checks run. Returns the state checked (for the mark written at
/// close) and which check ran; the read transaction is released (the open continues with its
/// write transaction).
fn checked_open_snapshot(
    env: &Env<WithoutTls>,
    dir: &Path,
    mode: CheckMode,
) -> Result<std::result::Result<(Option<check::FileState>, OpenCheck), String>> {
    if mode == CheckMode::Auto {
        if let Some(marked) = mark::read(dir) {
            let mut tries = 0;
            loop {
                let txn = env.read_txn()?;
                match check::meta_state(dir, Some(txn.id() as u64)) {
                    Ok(Some(now)) if now == marked && now.newest() == txn.id() as u64 => {
                        return Ok(Ok((Some(now), OpenCheck::Mark)))
                    }
                    Ok(Some(_)) => break,
                    Ok(None) if tries < 1000 => tries += 1,
                    Ok(None) => break,
                    Err(problem) => return Ok(Err(problem)),
                }
            }
        }
    }
    let mut tries = 0;
    loop {
        let txn = match checked_snapshot(env, dir)? {
            Ok(txn) => txn,
            Err(problem) => return Ok(Err(problem)),
        };
        // The state vouched for at close must be the one checked: taken while the snapshot is
        // held and only if no commit came after it.
        match check::meta_state(dir, Some(txn.id() as u64)) {
            Ok(Some(now)) if now.newest() == txn.id() as u64 => return Ok(Ok((Some(now), OpenCheck::Full))),
            Ok(_) if tries < 1000 => tries += 1,
            Ok(_) => return Ok(Ok((None, OpenCheck::Full))),
            Err(problem) => return Ok(Err(problem)),
        }
    }
}

/// Look at `data.mdb` before LMDB maps it (docs/store-format.md "Damaged files"). Returns
/// true if the store may be created: there is no `data.mdb` yet or nothing was ever committed
/// to it (transaction 0), so a missing format record means a store being born, not one that
/// lost it.
fn preflight(dir: &Path) -> Result<bool> {
    let mut tries = 0;
    loop {
        match check::inspect(dir) {
            Ok(check::Header::Missing) => return Ok(true),
            Ok(check::Header::Meta(m)) => return Ok(m.txnid == 0),
            // LMDB creates the file and writes its meta pages right after, under its lock:
            // give a process creating the store that moment before calling the file empty.
            Ok(check::Header::Empty) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(check::Header::Empty) => {
                return Err(Error::store(
                    "LAMA-FORMAT",
                    format!(
                        "the store at {} has an empty data.mdb: it has lost its format record \
                         (and everything else); refusing to start a new store over it",
                        dir.display()
                    ),
                ))
            }
            Err(problem) => return Err(damaged(dir, &problem)),
        }
    }
}

enum OpenError {
    Busy,
    Other(Error),
}

impl From<heed::Error> for OpenError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::EnvAlreadyOpened => OpenError::Busy,
            e => OpenError::Other(e.into()),
        }
    }
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Other(e)
    }
}

/// Open the environment, create the named databases, check/write `meta.format` and delete
/// stale staged chunks (docs/store-format.md "Write rules").
fn open_env(
    dir: &Path,
    map_size: usize,
    durable: bool,
    mode: CheckMode,
) -> std::result::Result<(Shared, OpenCheck), OpenError> {
    // LMDB wants a multiple of the OS page size; 64 KiB covers every page size in use
    // (4, 16 and 64 KiB) and costs nothing for a sparse map.
    const PAGE: usize = 65536;
    let map_size = map_size.max(PAGE).div_ceil(PAGE) * PAGE;
    let mut opts = EnvOpenOptions::new().read_txn_without_tls();
    opts.map_size(map_size).max_dbs(MAX_DBS);
    if !durable {
        // SAFETY (of the flag; heed marks it unsafe): NO_SYNC only skips the fsync at commit.
        // LMDB still writes every commit in copy-on-write order with the meta page last, so
        // a committed transaction is atomic and visible to every reader, and the OS keeps the
        // dirty pages if this process dies; only an OS crash or power failure can lose the
        // last commits (or, on file systems that reorder writes, damage the last one). That is
        // exactly the documented contract of `durable = false`; `sync()` and the last handle's
        // drop flush explicitly.
        unsafe {
            opts.flags(EnvFlags::NO_SYNC);
        }
    } else {
        // SAFETY (of the flag; heed marks it unsafe): NO_META_SYNC (MDB_NOMETASYNC) keeps the
        // fsync of the data pages at commit and writes the meta page without its own
        // synchronous write; the next commit's fsync (or `sync()`, or the close) flushes it.
        // Pages are synced before the meta page that points at them is written, so the file
        // is always consistent: a killed process loses nothing (the OS has the write), an OS
        // crash may undo the last commit, never damage the file. It halves the fsyncs per
        // commit (issue 8: a live push was two fsyncs at B; docs/store-format.md "Durability").
        unsafe {
            opts.flags(EnvFlags::NO_META_SYNC);
        }
    }
    let creatable = preflight(dir)?;
    // SAFETY: the environment of a directory is opened once per process (the registry above).
    let env = match unsafe { opts.open(dir) } {
        Ok(env) => env,
        // The data file's version was checked by `preflight`, so this is the lock file: it is
        // in use by the LMDB build of the other core (docs/store-format.md "Both cores").
        Err(heed::Error::Mdb(MdbError::VersionMismatch)) => {
            return Err(OpenError::Other(Error::store(
                "LAMA-OTHERCORE",
                format!(
                    "the store at {} is open in another process that uses the other lama core \
                     (the Rust and the pure core bundle LMDB builds whose lock files differ); \
                     close it there or use the same core",
                    dir.display()
                ),
            )))
        }
        Err(e) => return Err(e.into()),
    };
    // Nothing of the snapshot is read through the map before it passed the structural check
    // (or a check mark vouched for it).
    let (opened, open_check) = match checked_open_snapshot(&env, dir, mode)? {
        Ok(r) => r,
        Err(problem) => {
            let _ = mark::remove(dir, false);
            return Err(OpenError::Other(damaged(dir, &problem)));
        }
    };
    if !durable {
        // Commits without fsync may reach the disk in any order, pages before the meta page
        // and the new mtime (docs/store-format.md "Check mark"): the mark must be gone for
        // good before the first of them.
        mark::remove(dir, true).map_err(Error::from)?;
    }
    let mut txn = env.write_txn()?;
    let dbs = Dbs {
        meta: env.create_database(&mut txn, Some("meta"))?,
        objects: env.create_database(&mut txn, Some("objects"))?,
        chunks: env.create_database(&mut txn, Some("chunks"))?,
        vheads: env.create_database(&mut txn, Some("vheads"))?,
        rmaps: env.create_database(&mut txn, Some("rmaps"))?,
        tmp: env.create_database(&mut txn, Some("tmp"))?,
        events: env.create_database(&mut txn, Some("events"))?,
        agrants: env.create_database(&mut txn, Some("agrants"))?,
        amembers: env.create_database(&mut txn, Some("amembers"))?,
        anodes: env.create_database(&mut txn, Some("anodes"))?,
        aroots: env.create_database(&mut txn, Some("aroots"))?,
        arefs: env.create_database(&mut txn, Some("arefs"))?,
        aids: env.create_database(&mut txn, Some("aids"))?,
        aseq: env.create_database(&mut txn, Some("aseq"))?,
        peers: env.create_database(&mut txn, Some("peers"))?,
    };
    let mut upgrade_1 = false;
    match dbs.meta.get(&txn, b"format")? {
        None if creatable => dbs.meta.put(&mut txn, b"format", FORMAT.as_bytes())?,
        None => {
            return Err(OpenError::Other(Error::store(
                "LAMA-FORMAT",
                format!(
                    "the store at {} has data but no format record (meta \"format\"): it is \
                     not a lama store or it lost its format record",
                    dir.display()
                ),
            )))
        }
        Some(v) if v == FORMAT.as_bytes() => {}
        Some(v) if v == FORMAT_1.as_bytes() => upgrade_1 = true,
        Some(v) => {
            return Err(OpenError::Other(Error::store(
                "LAMA-FORMAT",
                format!(
                    "{} is a store of format {:?}, expected {FORMAT:?}",
                    dir.display(),
                    String::from_utf8_lossy(v)
                ),
            )))
        }
    }
    // The store's identity (docs/store-format.md "meta"): 16 random bytes as 32 hex digits,
    // created at the first open, also for a store created before it existed.
    if dbs.meta.get(&txn, b"store_id")?.is_none() {
        let mut id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        dbs.meta.put(&mut txn, b"store_id", hex.as_bytes())?;
    }
    // A damaged reverse-map setting is found now, not at some later write (as the pure core).
    rmaps::read_rmap_config(&dbs, &txn)?;
    // Staged chunks are keyed by their creation time first, so the stale ones come first.
    let cutoff = now_ms().saturating_sub(TMP_MAX_AGE_MS);
    let mut stale = Vec::new();
    for item in dbs.tmp.iter(&txn)? {
        let (k, _) = item?;
        let created = k.get(..8).map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
        if created >= cutoff {
            break;
        }
        stale.push(k.to_vec());
    }
    for k in stale {
        dbs.tmp.delete(&mut txn, &k)?;
    }
    // A store created before the event feed gets sequence numbers for what it holds.
    feed::upgrade(&dbs, &mut txn)?;
    // A store of format 1 gets its access index rebuilt in the layout of format 2.
    if upgrade_1 {
        access::clear(&dbs, &mut txn)?;
        dbs.meta.put(&mut txn, b"format", FORMAT.as_bytes())?;
    }
    // A store created before the access index gets it built from its current grants.
    access::upgrade(&dbs, &mut txn)?;
    let last = feed::last_seq_in(&dbs, &txn)?;
    let id = txn.id() as u64;
    txn.commit()?;
    // as WriteTxn::commit: the id is ours only if the commit wrote something
    let own_txnid = if env.info().last_txn_id as u64 == id { id } else { 0 };
    let reserve = if durable { open_reserve(dir) } else { None };
    let shared = Shared {
        env,
        dir: dir.to_path_buf(),
        dbs,
        durable,
        feed: feed::Notifier::new(last),
        opened,
        own_txnid: AtomicU64::new(own_txnid),
        damaged: AtomicBool::new(false),
        reserve,
        past_reserve: AtomicBool::new(false),
    };
    Ok((shared, open_check))
}

/// The reserve's handle on `data.mdb` and LMDB's page size (from the meta page, checked at
/// open); None where the platform has no positioned writes or the file cannot be opened for
/// writing (then commits simply grow the file, as without a reserve).
#[cfg(unix)]
fn open_reserve(dir: &Path) -> Option<Reserve> {
    let check::Header::Meta(m) = check::inspect(dir).ok()? else { return None };
    let file = std::fs::OpenOptions::new().write(true).open(dir.join("data.mdb")).ok()?;
    Some(Reserve { file, psize: m.psize })
}

#[cfg(not(unix))]
fn open_reserve(_dir: &Path) -> Option<Reserve> {
    None
}

#[cfg(test)]
mod durability_tests {
    use super::Store;

    /// docs/store-format.md "Durability": a durable store is MDB_NOMETASYNC (one fsync per
    /// commit), a non-durable one MDB_NOSYNC.
    #[test]
    fn durable_stores_defer_the_meta_sync_only() {
        const MDB_NOSYNC: u32 = 0x10000;
        const MDB_NOMETASYNC: u32 = 0x40000;
        let d = tempfile::tempdir().unwrap();
        let s = Store::open_with(d.path().join("a"), None, true).unwrap();
        let f = s.shared.env.get_flags().unwrap();
        assert_eq!((f & MDB_NOMETASYNC, f & MDB_NOSYNC), (MDB_NOMETASYNC, 0));
        let n = Store::open_with(d.path().join("b"), None, false).unwrap();
        assert_eq!(n.shared.env.get_flags().unwrap() & MDB_NOSYNC, MDB_NOSYNC);
    }
}
