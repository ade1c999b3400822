//! Structural check of the LMDB file with bounds-checked reads (docs/store-format.md "Damaged files").
//!
//! LMDB keeps no checksums and follows the page numbers and node offsets it finds in its
//! memory map: a truncated `data.mdb` makes it touch pages past the end of the file (SIGBUS),
//! and a damaged page makes it read or write out of bounds (SIGSEGV). Neither can be caught,
//! so before LMDB reads anything of a snapshot we check, through bounds-checked slices of our
//! own read-only map of the file ([`Map`]), everything it could reach: the meta pages, then
//! every page of the main database, of each named database and of the free list (page header,
//! page number, bounds, node offsets and sizes, key sizes, child and overflow page numbers
//! inside the file, depth, no page reached twice, the counts recorded in the database records,
//! free-list entries).
//!
//! The layout (64-bit LMDB, data version 1) as read here:
//! * page header (16 bytes): u64 page number, u16 pad, u16 flags, u16 lower, u16 upper (an
//!   overflow page has a u32 page count in place of lower/upper); then `(lower-16)/2` u16
//!   node offsets.
//! * node (8 bytes + key + data): u16 lo, u16 hi, u16 flags, u16 key size. A leaf's data
//!   size is `lo | hi<<16`; a branch node's child is `lo | hi<<16 | flags<<32`.
//! * meta page: after the header, u32 magic, u32 version, u64 address, u64 map size, two
//!   database records (free list, main) and u64 last page, u64 transaction id.
//! * database record (48 bytes): u32 pad (the page size in the free list's record of a meta),
//!   u16 flags, u16 depth, u64 branch pages, leaf pages, overflow pages, entries, root.
//!
//! Every problem is one message (`lmdb: ...`), identical to the pure core's
//! (`lama/_pure/lmdbcheck.py`); the check stops at the first one, since what follows a
//! damaged page cannot be trusted.

use std::fs::File;
#[cfg(not(unix))]
use std::io::Read;
use std::path::Path;

const PAGEHDRSZ: usize = 16;
const META_SIZE: usize = PAGEHDRSZ + 152;
const MAGIC: u32 = 0xBEEF_C0DE;
const DATA_VERSION: u32 = 1;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const P_META: u16 = 0x08;
const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;
const INTEGERKEY: u16 = 0x08;
const P_INVALID: u64 = u64::MAX;
const MAX_KEY: usize = 511;
const MAX_DEPTH: u16 = 32;
const DB_REC: usize = 48;

/// One database record (`MDB_db`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct DbRec {
    pad: u32,
    flags: u16,
    depth: u16,
    branch: u64,
    leaf: u64,
    overflow: u64,
    entries: u64,
    root: u64,
}

impl DbRec {
    fn parse(b: &[u8]) -> DbRec {
        DbRec {
            pad: u32le(b, 0),
            flags: u16le(b, 4),
            depth: u16le(b, 6),
            branch: u64le(b, 8),
            leaf: u64le(b, 16),
            overflow: u64le(b, 24),
            entries: u64le(b, 32),
            root: u64le(b, 40),
        }
    }
}

/// The fields of a meta page that matter here.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    pub psize: u64,
    pub last_pg: u64,
    pub txnid: u64,
    free: DbRec,
    main: DbRec,
}

/// What `data.mdb` looks like before LMDB opens it.
pub(crate) enum Header {
    /// No `data.mdb` yet: LMDB will create the environment.
    Missing,
    /// `data.mdb` exists but is empty.
    Empty,
    /// The meta page LMDB will use.
    Meta(Meta),
}

fn u16le(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64le(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// `data.mdb` as one read-only memory map of its length at open, read only through
/// bounds-checked slices ([`Map::at`]). LMDB's danger is following unchecked offsets through
/// its map (docs/store-format.md "Damaged files"); here every access is checked against the
/// length before it is made, so a damaged file is refused without touching a byte outside the
/// file. One map instead of a `pread` per page: the walk reads every reachable page, and on a
/// store of 100,000 objects the system calls were a third of the check's time. (A file that
/// another process shrinks while it is being checked would fault here, as it would in LMDB's
/// own map; the check is for damage at rest, such as a truncated or overwritten file.)
struct Map {
    #[cfg(unix)]
    ptr: *mut libc::c_void,
    #[cfg(not(unix))]
    buf: Vec<u8>,
    len: usize,
}

impl Map {
    /// Map `f` (`len` bytes, as `fstat` gave; `len > 0`).
    fn new(f: &File, len: u64) -> Result<Map, String> {
        let len = usize::try_from(len).map_err(|_| format!("lmdb: data.mdb is {len} bytes, too large to check"))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: a fresh read-only shared mapping of a file we hold open; it is only read
            // through `at`, which never goes past `len`.
            let ptr = unsafe {
                libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, f.as_raw_fd(), 0)
            };
            if ptr == libc::MAP_FAILED {
                return Err(format!("lmdb: cannot map data.mdb: {}", std::io::Error::last_os_error()));
            }
            Ok(Map { ptr, len })
        }
        #[cfg(not(unix))]
        {
            let mut buf = Vec::with_capacity(len);
            let mut f = f;
            f.read_to_end(&mut buf).map_err(|e| format!("lmdb: cannot read data.mdb: {e}"))?;
            Ok(Map { len: buf.len(), buf })
        }
    }

    fn bytes(&self) -> &[u8] {
        #[cfg(unix)]
        // SAFETY: `ptr` maps `len` readable bytes until drop.
        return unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) };
        #[cfg(not(unix))]
        return &self.buf;
    }
}

#[cfg(unix)]
impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// `n` bytes of the file at `off` (the message a short read gave when this was a `pread`).
fn slice_at(file: &[u8], off: u64, n: usize) -> Result<&[u8], String> {
    usize::try_from(off)
        .ok()
        .and_then(|o| Some(o..o.checked_add(n)?))
        .and_then(|r| file.get(r))
        .ok_or_else(|| format!("lmdb: cannot read data.mdb at offset {off}: failed to fill whole buffer"))
}

/// Parse meta page `i` (`buf` = its first `META_SIZE` bytes); the page size comes from meta 0.
fn parse_meta(i: u32, buf: &[u8]) -> Result<Meta, String> {
    if u16le(buf, 10) & P_META == 0 {
        return Err(format!("lmdb: page {i} is not a meta page"));
    }
    if u32le(buf, 16) != MAGIC {
        return Err(format!("lmdb: meta page {i} has a bad magic number"));
    }
    let version = u32le(buf, 20);
    if version != DATA_VERSION {
        return Err(format!("lmdb: meta page {i} has data version {version}, expected {DATA_VERSION}"));
    }
    let free = DbRec::parse(&buf[40..40 + DB_REC]);
    let main = DbRec::parse(&buf[88..88 + DB_REC]);
    Ok(Meta { psize: free.pad as u64, last_pg: u64le(buf, 136), txnid: u64le(buf, 144), free, main })
}

/// Read both meta pages as LMDB does (the page size from meta 0, the second one at that
/// offset) and check them. With `txnid`, return the meta of that transaction (None if it has
/// been overwritten since); without, the newest one, which LMDB opens.
fn read_metas(file: &[u8], txnid: Option<u64>) -> Result<Option<Meta>, String> {
    let len = file.len() as u64;
    if len < META_SIZE as u64 {
        return Err(format!("lmdb: data.mdb is {len} bytes, too short for its meta pages: the file is truncated"));
    }
    let m0 = parse_meta(0, slice_at(file, 0, META_SIZE)?)?;
    let psize = m0.psize;
    if !psize.is_power_of_two() || !(512..=32768).contains(&psize) {
        return Err(format!("lmdb: meta page 0 has page size {psize}"));
    }
    if len < psize + META_SIZE as u64 {
        return Err(format!("lmdb: data.mdb is {len} bytes, too short for its meta pages: the file is truncated"));
    }
    let m1 = parse_meta(1, slice_at(file, psize, META_SIZE)?)?;
    for (i, m) in [(0, &m0), (1, &m1)] {
        if m.psize != psize {
            return Err(format!("lmdb: meta page {i} has page size {}, meta page 0 {psize}", m.psize));
        }
    }
    let m = match txnid {
        None => if m1.txnid > m0.txnid { m1 } else { m0 },
        Some(t) => match [m0, m1].into_iter().find(|m| m.txnid == t) {
            Some(m) => m,
            None => return Ok(None),
        },
    };
    // `last_pg + 1` pages must be in the file; pages past the end would be SIGBUS in the map.
    if m.last_pg < 1 || m.last_pg >= (1u64 << 48) {
        return Err(format!("lmdb: meta of transaction {} has last page {}", m.txnid, m.last_pg));
    }
    let need = (m.last_pg + 1) * psize;
    if len < need {
        return Err(format!(
            "lmdb: data.mdb is {len} bytes but its last page {} ends at byte {need}: the file is truncated",
            m.last_pg
        ));
    }
    if m.free.flags != INTEGERKEY || m.main.flags != 0 {
        return Err(format!(
            "lmdb: meta of transaction {} has database flags 0x{:x}/0x{:x}, expected 0x8/0x0",
            m.txnid, m.free.flags, m.main.flags
        ));
    }
    Ok(Some(m))
}

/// Look at `data.mdb` of `dir` before LMDB opens it (nothing is mapped yet).
pub(crate) fn inspect(dir: &Path) -> Result<Header, String> {
    let path = dir.join("data.mdb");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Header::Missing),
        Err(e) => return Err(format!("lmdb: cannot open {}: {e}", path.display())),
    };
    let len = f.metadata().map_err(|e| format!("lmdb: cannot stat {}: {e}", path.display()))?.len();
    if len == 0 {
        return Ok(Header::Empty);
    }
    let map = Map::new(&f, len)?;
    Ok(Header::Meta(read_metas(map.bytes(), None)?.expect("newest meta")))
}

/// Check everything reachable in the snapshot of transaction `txnid` (the caller holds a read
/// transaction on it, so LMDB does not reuse its pages meanwhile). `Ok(false)`: the meta page
/// of `txnid` has been overwritten by newer commits; begin a new read transaction and retry.
pub(crate) fn check_snapshot(dir: &Path, txnid: u64) -> Result<bool, String> {
    let path = dir.join("data.mdb");
    let f = File::open(&path).map_err(|e| format!("lmdb: cannot open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| format!("lmdb: cannot stat {}: {e}", path.display()))?.len();
    if len == 0 {
        // an empty file cannot be mapped; read_metas words the problem
        return read_metas(&[], Some(txnid)).map(|_| false);
    }
    let map = Map::new(&f, len)?;
    let Some(meta) = read_metas(map.bytes(), Some(txnid))? else { return Ok(false) };
    let mut w = Walker {
        file: map.bytes(),
        psize: meta.psize as usize,
        last_pg: meta.last_pg,
        seen: vec![0u64; (meta.last_pg as usize + 1).div_ceil(64)],
    };
    let mut named = Vec::new();
    w.tree("main", &meta.main, Kind::Main(&mut named))?;
    for (name, rec) in &named {
        let rec = DbRec::parse(rec);
        let label = format!("db {}", String::from_utf8_lossy(name));
        if rec.flags != 0 {
            return Err(format!("lmdb: {label} has flags 0x{:x}, expected 0", rec.flags));
        }
        w.tree(&label, &rec, Kind::Plain)?;
    }
    let mut free = Vec::new();
    w.tree("free list", &meta.free, Kind::Free(&mut free))?;
    // A page listed as free must be unreachable and listed once: LMDB hands it out for new
    // data, so a live page here would be overwritten (silent loss).
    let mut listed = vec![0u64; w.seen.len()];
    for (txn, pages) in free {
        for p in pages {
            if p < 2 || p > w.last_pg {
                return Err(format!("lmdb: free list of transaction {txn}: page {p} is outside the data pages 2..={}", w.last_pg));
            }
            let (i, bit) = (p as usize / 64, 1u64 << (p % 64));
            if w.seen[i] & bit != 0 {
                return Err(format!("lmdb: free list of transaction {txn}: page {p} is in use"));
            }
            if listed[i] & bit != 0 {
                return Err(format!("lmdb: free list of transaction {txn}: page {p} is listed twice"));
            }
            listed[i] |= bit;
        }
    }
    Ok(true)
}

enum Kind<'a> {
    /// The main database: every entry is a named database record.
    Main(&'a mut Vec<(Vec<u8>, Vec<u8>)>),
    /// The free list: u64 transaction id -> page list `n, p1..pn` (u64 each).
    Free(&'a mut Vec<(u64, Vec<u64>)>),
    /// A lama database (flags 0: plain keys, no duplicates).
    Plain,
}

#[derive(Default)]
struct Counts {
    branch: u64,
    leaf: u64,
    overflow: u64,
    entries: u64,
}

struct Walker<'a> {
    /// The whole file (checked slices only).
    file: &'a [u8],
    psize: usize,
    last_pg: u64,
    seen: Vec<u64>,
}

impl<'a> Walker<'a> {
    /// Claim page `p` for `db`: inside the data pages and not reached before.
    fn claim(&mut self, db: &str, p: u64) -> Result<(), String> {
        if p < 2 || p > self.last_pg {
            return Err(format!("lmdb: {db}: page reference {p} is outside the data pages 2..={}", self.last_pg));
        }
        let (i, bit) = (p as usize / 64, 1u64 << (p % 64));
        if self.seen[i] & bit != 0 {
            return Err(format!("lmdb: {db}: page {p} is reached twice"));
        }
        self.seen[i] |= bit;
        Ok(())
    }

    fn tree(&mut self, db: &str, rec: &DbRec, mut kind: Kind) -> Result<(), String> {
        let mut counts = Counts::default();
        if rec.root == P_INVALID {
            if rec.depth != 0 || rec.entries != 0 || rec.branch != 0 || rec.leaf != 0 || rec.overflow != 0 {
                return Err(format!("lmdb: {db}: empty database with non-zero counts"));
            }
            return Ok(());
        }
        if rec.depth == 0 || rec.depth > MAX_DEPTH {
            return Err(format!("lmdb: {db}: depth {} is outside 1..={MAX_DEPTH}", rec.depth));
        }
        self.visit(db, rec.root, 1, rec.depth, &mut kind, &mut counts)?;
        let recorded = (rec.branch, rec.leaf, rec.overflow, rec.entries);
        let found = (counts.branch, counts.leaf, counts.overflow, counts.entries);
        if recorded != found {
            return Err(format!(
                "lmdb: {db}: records {}/{}/{} branch/leaf/overflow pages and {} entries, the tree holds {}/{}/{} and {}",
                recorded.0, recorded.1, recorded.2, recorded.3, found.0, found.1, found.2, found.3
            ));
        }
        Ok(())
    }

    fn visit(&mut self, db: &str, p: u64, depth: u16, max: u16, kind: &mut Kind, counts: &mut Counts) -> Result<(), String> {
        self.claim(db, p)?;
        // `claim` bounded p by last_pg, which read_metas bounded by the file's length
        let page = slice_at(self.file, p * self.psize as u64, self.psize)?;
        self.visit_page(db, p, page, depth, max, kind, counts)
    }

    #[allow(clippy::too_many_arguments)]
    fn visit_page(&mut self, db: &str, p: u64, page: &'a [u8], depth: u16, max: u16, kind: &mut Kind, counts: &mut Counts) -> Result<(), String> {
        let psize = self.psize;
        let at = |what: String| format!("lmdb: {db} page {p}: {what}");
        let pgno = u64le(page, 0);
        if pgno != p {
            return Err(at(format!("header says page {pgno}")));
        }
        let flags = u16le(page, 10);
        let branch = depth < max;
        let want = if branch { P_BRANCH } else { P_LEAF };
        if flags != want {
            return Err(at(format!(
                "flags 0x{flags:x}, expected a {} page (0x{want:x}) at depth {depth} of {max}",
                if branch { "branch" } else { "leaf" }
            )));
        }
        let (lower, upper) = (u16le(page, 12) as usize, u16le(page, 14) as usize);
        if lower < PAGEHDRSZ || lower % 2 != 0 || lower > upper || upper > psize {
            return Err(at(format!("bad bounds lower={lower} upper={upper}")));
        }
        let n = (lower - PAGEHDRSZ) / 2;
        if branch {
            counts.branch += 1;
            if n == 0 {
                return Err(at("branch page without nodes".to_string()));
            }
        } else {
            counts.leaf += 1;
        }
        for i in 0..n {
            let off = u16le(page, PAGEHDRSZ + 2 * i) as usize;
            if off < upper || off + 8 > psize {
                return Err(at(format!("node {i} at offset {off} is outside {upper}..{psize}")));
            }
            let (lo, hi, nflags, ksize) =
                (u16le(page, off) as u64, u16le(page, off + 2) as u64, u16le(page, off + 4), u16le(page, off + 6) as usize);
            if ksize > MAX_KEY || off + 8 + ksize > psize {
                return Err(at(format!("node {i} has a key of {ksize} bytes")));
            }
            let key = &page[off + 8..off + 8 + ksize];
            if branch {
                let child = lo | (hi << 16) | ((nflags as u64) << 32);
                self.visit(db, child, depth + 1, max, kind, counts)?;
                continue;
            }
            counts.entries += 1;
            let dsize = (lo | (hi << 16)) as usize;
            let data_off = off + 8 + ksize;
            let allowed = match kind {
                Kind::Main(_) => nflags == F_SUBDATA,
                _ => nflags == 0 || nflags == F_BIGDATA,
            };
            if !allowed {
                return Err(at(format!("node {i} has flags 0x{nflags:x}")));
            }
            if matches!(kind, Kind::Free(_)) && ksize != 8 {
                return Err(at(format!("node {i} has a key of {ksize} bytes")));
            }
            let data: &[u8] = if nflags == F_BIGDATA {
                if data_off + 8 > psize {
                    return Err(at(format!("node {i}: data outside the page")));
                }
                let ov = u64le(page, data_off);
                let pages = self.overflow(db, p, i, ov, dsize)?;
                counts.overflow += pages;
                if matches!(kind, Kind::Free(_)) {
                    slice_at(self.file, ov * psize as u64 + PAGEHDRSZ as u64, dsize)?
                } else {
                    &[]
                }
            } else {
                if data_off + dsize > psize {
                    return Err(at(format!("node {i}: data of {dsize} bytes outside the page")));
                }
                &page[data_off..data_off + dsize]
            };
            match kind {
                Kind::Main(named) => {
                    if dsize != DB_REC {
                        return Err(at(format!("node {i}: database record of {dsize} bytes")));
                    }
                    named.push((key.to_vec(), data.to_vec()));
                }
                Kind::Free(free) => {
                    let txn = u64le(key, 0);
                    let count = if data.len() >= 8 { u64le(data, 0) } else { u64::MAX };
                    if data.len() % 8 != 0 || count.checked_add(1).and_then(|c| c.checked_mul(8)) != Some(data.len() as u64) {
                        return Err(format!("lmdb: free list of transaction {txn}: a list of {} bytes", data.len()));
                    }
                    free.push((txn, data[8..].chunks_exact(8).map(|c| u64le(c, 0)).collect()));
                }
                Kind::Plain => {}
            }
        }
        Ok(())
    }

    /// Check the overflow run at `ov` holding `dsize` bytes of node `i` of page `p`; returns
    /// its page count.
    fn overflow(&mut self, db: &str, p: u64, i: usize, ov: u64, dsize: usize) -> Result<u64, String> {
        let at = |what: String| format!("lmdb: {db} page {p}: node {i}: {what}");
        if ov < 2 || ov > self.last_pg {
            return Err(at(format!("overflow page {ov} is outside the data pages 2..={}", self.last_pg)));
        }
        let hdr = slice_at(self.file, ov * self.psize as u64, PAGEHDRSZ)?;
        let (pgno, flags, pages) = (u64le(hdr, 0), u16le(hdr, 10), u32le(hdr, 12) as u64);
        if pgno != ov || flags != P_OVERFLOW {
            return Err(at(format!("page {ov} is not an overflow page")));
        }
        let need = (PAGEHDRSZ - 1 + dsize) as u64 / self.psize as u64 + 1;
        if pages < need || ov + pages - 1 > self.last_pg {
            return Err(at(format!("overflow run of {pages} pages at {ov} cannot hold {dsize} bytes")));
        }
        for q in ov..ov + pages {
            self.claim(db, q)?;
        }
        Ok(pages)
    }
}

/// The state of `data.mdb` a check mark records (docs/store-format.md "Check mark"): what
/// `fstat` says of the file and both meta pages as they are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileState {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    pub txnid0: u64,
    pub txnid1: u64,
    /// SHA-256 of the first `META_SIZE` bytes of meta page 0 followed by those of meta page 1.
    pub meta_hash: [u8; 32],
}

impl FileState {
    /// The transaction LMDB opens (the newer meta page).
    pub fn newest(&self) -> u64 {
        self.txnid0.max(self.txnid1)
    }
}

/// What `fstat` gives of `f` as a [`FileState`] (meta fields left zero); None where the
/// platform has no inode numbers or a time does not fit in i64 nanoseconds: no mark then.
#[cfg(unix)]
fn stat_state(f: &File) -> Result<Option<FileState>, String> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata().map_err(|e| format!("lmdb: cannot stat data.mdb: {e}"))?;
    let ns = |s: i64, n: i64| s.checked_mul(1_000_000_000).and_then(|v| v.checked_add(n));
    let (Some(mtime_ns), Some(ctime_ns)) = (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec())) else {
        return Ok(None);
    };
    Ok(Some(FileState {
        size: m.len(),
        mtime_ns,
        ctime_ns,
        ino: m.ino(),
        dev: m.dev(),
        txnid0: 0,
        txnid1: 0,
        meta_hash: [0; 32],
    }))
}

#[cfg(not(unix))]
fn stat_state(_f: &File) -> Result<Option<FileState>, String> {
    Ok(None)
}

/// The cheap part of the check, for an open that a matching check mark vouches for: stat
/// `data.mdb` and check its meta pages as [`read_metas`] does (for the snapshot of `txnid`).
/// `Ok(None)`: the meta page of `txnid` was overwritten meanwhile (retry) or the platform
/// cannot describe the file (no mark); otherwise the state to compare with the mark.
pub(crate) fn meta_state(dir: &Path, txnid: Option<u64>) -> Result<Option<FileState>, String> {
    use sha2::{Digest, Sha256};
    let path = dir.join("data.mdb");
    let f = File::open(&path).map_err(|e| format!("lmdb: cannot open {}: {e}", path.display()))?;
    // stat before reading the meta pages: a commit between the two shows as a newer mtime
    // (or newer meta pages) at the next comparison, never as an old state with new pages.
    let Some(mut st) = stat_state(&f)? else { return Ok(None) };
    if st.size == 0 {
        return read_metas(&[], txnid).map(|_| None);
    }
    let map = Map::new(&f, st.size)?;
    let file = map.bytes();
    let Some(meta) = read_metas(file, txnid)? else { return Ok(None) };
    let psize = meta.psize;
    let (m0, m1) = (slice_at(file, 0, META_SIZE)?, slice_at(file, psize, META_SIZE)?);
    st.txnid0 = u64le(m0, 144);
    st.txnid1 = u64le(m1, 144);
    let mut h = Sha256::new();
    h.update(m0);
    h.update(m1);
    st.meta_hash = h.finalize().into();
    Ok(Some(st))
}
