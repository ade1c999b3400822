//! The check mark: a sidecar file `check-mark` in the store directory that lets an open skip
//! the page walk of the structural check when `data.mdb` is exactly as lama left it
//! (docs/store-format.md "Check mark"; the pure core's `_pure/lmdbcheck.py` reads and writes
//! the same bytes).
//!
//! Layout (136 bytes, integers little-endian):
//! `"LAMAMARK"` · u32 version (1) · u32 0 · u64 size · i64 mtime_ns · i64 ctime_ns · u64 inode ·
//! u64 device · u64 txnid of meta page 0 · u64 txnid of meta page 1 · SHA-256 of both meta
//! pages' first 168 bytes · SHA-256 of the 104 bytes before it.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::check::FileState;

pub(crate) const NAME: &str = "check-mark";
const MAGIC: &[u8; 8] = b"LAMAMARK";
const VERSION: u32 = 1;
const BODY: usize = 104;
pub(crate) const SIZE: usize = BODY + 32;

fn path(dir: &Path) -> PathBuf {
    dir.join(NAME)
}

pub(crate) fn encode(s: &FileState) -> [u8; SIZE] {
    let mut b = [0u8; SIZE];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    let fields = [s.size, s.mtime_ns as u64, s.ctime_ns as u64, s.ino, s.dev, s.txnid0, s.txnid1];
    for (i, v) in fields.iter().enumerate() {
        b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    b[72..104].copy_from_slice(&s.meta_hash);
    let sum: [u8; 32] = Sha256::digest(&b[..BODY]).into();
    b[BODY..].copy_from_slice(&sum);
    b
}

/// The state a mark records; None for anything but a well-formed mark of this version.
pub(crate) fn decode(b: &[u8]) -> Option<FileState> {
    if b.len() != SIZE || &b[0..8] != MAGIC || b[8..16] != [1, 0, 0, 0, 0, 0, 0, 0] {
        return None;
    }
    if Sha256::digest(&b[..BODY])[..] != b[BODY..] {
        return None;
    }
    let f = |i: usize| u64::from_le_bytes(b[16 + 8 * i..24 + 8 * i].try_into().unwrap());
    Some(FileState {
        size: f(0),
        mtime_ns: f(1) as i64,
        ctime_ns: f(2) as i64,
        ino: f(3),
        dev: f(4),
        txnid0: f(5),
        txnid1: f(6),
        meta_hash: b[72..104].try_into().unwrap(),
    })
}

/// The raw bytes of the mark, if there is one (at most one byte more than a mark: anything
/// longer is not a mark either).
pub(crate) fn read_raw(dir: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path(dir)).ok()?;
    let mut buf = Vec::with_capacity(SIZE + 1);
    f.take(SIZE as u64 + 1).read_to_end(&mut buf).ok()?;
    Some(buf)
}

/// The state the mark of `dir` vouches for, if it has a valid one.
pub(crate) fn read(dir: &Path) -> Option<FileState> {
    decode(&read_raw(dir)?)
}

/// Replace the mark atomically (a temporary file renamed over it): a reader sees the old mark
/// or the new one. Not fsynced: `data.mdb` was synced before this is called, so after a
/// crash the mark is the new one, the old one or missing/garbled, and each of those either
/// matches what is on disk or makes the next open run the full check.
pub(crate) fn write(dir: &Path, s: &FileState) -> std::io::Result<()> {
    let bytes = encode(s);
    if read_raw(dir).as_deref() == Some(&bytes[..]) {
        return Ok(());
    }
    let tmp = dir.join(format!("{NAME}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        drop(f);
        std::fs::rename(&tmp, path(dir))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Remove the mark; with `sync_dir`, make the removal itself durable (fsync of the directory)
/// before anything else is written.
pub(crate) fn remove(dir: &Path, sync_dir: bool) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if sync_dir {
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
