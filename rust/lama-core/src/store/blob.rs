//! BLOBs and CLOBs (objects.md §2.3; docs/store-format.md "objects values", "Write rules").
//!
//! Content of at most [`CHUNK`] bytes is stored inline (`B`/`C` + bytes); larger content is cut
//! into `CHUNK`-sized chunks in `chunks` under `hash ‖ u32 index` with an `objects` entry
//! `b`/`c` + u64 size + u32 count. The hash is SHA-256 of the whole content. Empty CLOBs are
//! rejected (`SB-STORE`). [`BlobWriter`] streams content: full chunks are staged in `tmp`
//! (one transaction per flush) while hashing, and `finish` moves them to `chunks` and writes the
//! `objects` entry in one transaction.

use heed::RwTxn;
use sha2::{Digest, Sha256};

use super::feed::FeedTxn;
use super::keys::{chunk_key, chunked_value, parse_chunked, tmp_key, tmp_prefix};
use super::{
    not_found, parse_hash, Status, Store, CHUNK, K_BLOB, K_BLOB_CHUNKED, K_CLOB, K_CLOB_CHUNKED,
};
use crate::error::{Error, ErrorKind, Result};

fn empty_clob() -> Error {
    Error::store("SB-STORE", "cannot store an empty CLOB")
}

fn not_utf8() -> Error {
    Error::store("LAMA-UTF8", "CLOB content is not valid UTF-8")
}

pub(crate) fn hash_mismatch(expected: &str, actual: &str) -> Error {
    Error::new(
        ErrorKind::HashMismatch,
        "LAMA-HASH",
        format!("content hashes to {actual}, expected {expected}"),
    )
}

/// Location of a BLOB/CLOB's content.
enum Content<'t> {
    Inline(&'t [u8]),
    Chunked { size: u64, count: u32 },
}

impl Store {
    /// Write `data` under `h` inside `txn` unless something is already stored there.
    fn write_content(&self, txn: &mut RwTxn, h: &[u8; 32], clob: bool, data: &[u8]) -> Result<Status> {
        let dbs = self.dbs();
        if dbs.objects.get(txn, h)?.is_some() {
            return Ok(Status::Exists);
        }
        if data.len() <= CHUNK {
            let kind = if clob { K_CLOB } else { K_BLOB };
            dbs.objects.put_reserved(txn, h, data.len() + 1, |out| {
                out.write_all_bytes(&[kind])?;
                out.write_all_bytes(data)
            })?;
        } else {
            let mut count = 0u32;
            for (i, chunk) in data.chunks(CHUNK).enumerate() {
                dbs.chunks.put(txn, &chunk_key(h, i as u32), chunk)?;
                count += 1;
            }
            let kind = if clob { K_CLOB_CHUNKED } else { K_BLOB_CHUNKED };
            dbs.objects.put(txn, h, &chunked_value(kind, data.len() as u64, count))?;
        }
        Ok(Status::New)
    }

    fn put_content(&self, clob: bool, data: &[u8]) -> Result<(String, Status)> {
        let h: [u8; 32] = Sha256::digest(data).into();
        let mut txn = self.write_txn()?;
        let status = self.write_content(&mut txn, &h, clob, data)?;
        let mut feed = FeedTxn::new();
        if status == Status::New {
            feed.push(&self.dbs(), &mut txn, &h, if clob { K_CLOB } else { K_BLOB })?;
        }
        txn.commit()?;
        self.published(&feed);
        Ok((hex::encode(h), status))
    }

    /// Store a BLOB; returns `(hash, status)`.
    pub fn put_blob(&self, data: &[u8]) -> Result<(String, Status)> {
        self.put_content(false, data)
    }

    /// Store a CLOB (UTF-8 text); empty text is `SB-STORE`.
    pub fn put_clob(&self, text: &str) -> Result<(String, Status)> {
        if text.is_empty() {
            return Err(empty_clob());
        }
        self.put_content(true, text.as_bytes())
    }

    /// A streaming writer for a BLOB (or a CLOB when `clob`).
    pub fn blob_writer(&self, clob: bool) -> BlobWriter {
        BlobWriter {
            store: Some(self.clone()),
            clob,
            hasher: Sha256::new(),
            buf: Vec::new(),
            staged: 0,
            total: 0,
            prefix: tmp_prefix(),
            utf8: Utf8Check::default(),
            done: false,
        }
    }

    fn content<'t>(&self, txn: &'t heed::RoTxn, h: &[u8; 32], hash: &str) -> Result<Content<'t>> {
        match self.entry(txn, h)? {
            None => Err(not_found(hash, "BLOB/CLOB")),
            Some([k, rest @ ..]) if *k == K_BLOB || *k == K_CLOB => Ok(Content::Inline(rest)),
            Some([k, rest @ ..]) if *k == K_BLOB_CHUNKED || *k == K_CLOB_CHUNKED => {
                let (size, count) = parse_chunked(rest).ok_or_else(|| {
                    Error::store("LAMA-CORRUPT", format!("chunked entry {hash} has a bad header"))
                })?;
                Ok(Content::Chunked { size, count })
            }
            Some(v) => Err(Error::not_found(
                "SB-READ2",
                format!("{hash} is a {}, not a BLOB or CLOB", super::entry_kind(hash, v)?.as_str()),
            )),
        }
    }

    fn chunk<'t>(&self, txn: &'t heed::RoTxn, h: &[u8; 32], i: u32, hash: &str) -> Result<&'t [u8]> {
        self.dbs().chunks.get(txn, &chunk_key(h, i))?.ok_or_else(|| {
            Error::store("LAMA-CORRUPT", format!("chunk {i} of {hash} is missing"))
        })
    }

    /// The bytes of a BLOB or CLOB (`SB-READ2` if missing).
    pub fn read_blob(&self, hash: &str) -> Result<Vec<u8>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        match self.content(&txn, &h, hash)? {
            Content::Inline(b) => Ok(b.to_vec()),
            Content::Chunked { size, count } => {
                // A damaged header must not make us reserve its size up front.
                let mut out = Vec::with_capacity((size as usize).min(64 * CHUNK));
                for i in 0..count {
                    out.extend_from_slice(self.chunk(&txn, &h, i, hash)?);
                }
                check_total(hash, out.len() as u64, size)?;
                Ok(out)
            }
        }
    }

    /// Size in bytes of a BLOB or CLOB.
    pub fn blob_size(&self, hash: &str) -> Result<u64> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        Ok(match self.content(&txn, &h, hash)? {
            Content::Inline(b) => b.len() as u64,
            Content::Chunked { size, .. } => size,
        })
    }

    /// Up to `max` bytes of a BLOB or CLOB from byte `offset`, never across a stored chunk's end
    /// (so a reader that cuts each stored chunk into pieces of `max` bytes asks exactly for
    /// them); empty at or past the end. One read transaction per call, nothing else held: a
    /// large BLOB is streamed in bounded memory (issue 8). `SB-READ2` if it is missing.
    pub fn read_blob_range(&self, hash: &str, offset: u64, max: usize) -> Result<Vec<u8>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        let (bytes, start) = match self.content(&txn, &h, hash)? {
            Content::Inline(b) => (b, offset),
            Content::Chunked { size, count } => {
                if offset >= size {
                    return Ok(Vec::new());
                }
                let i = offset / CHUNK as u64;
                if i >= count as u64 {
                    return Err(Error::store("LAMA-CORRUPT", format!("chunk {i} of {hash} is missing")));
                }
                let chunk = self.chunk(&txn, &h, i as u32, hash)?;
                // every chunk but the last is full, and the last one ends at `size`: a reader
                // that stops at `size` then never gets an empty piece before the end
                let want = (size - i * CHUNK as u64).min(CHUNK as u64);
                if chunk.len() as u64 != want {
                    return Err(Error::store(
                        "LAMA-CORRUPT",
                        format!("chunk {i} of {hash} holds {} bytes, its header says {want}", chunk.len()),
                    ));
                }
                (chunk, offset - i * CHUNK as u64)
            }
        };
        let start = (start.min(bytes.len() as u64)) as usize;
        let end = start + max.min(bytes.len() - start);
        Ok(bytes[start..end].to_vec())
    }

    /// The stored chunks of a BLOB or CLOB, in order (one chunk for inline content).
    pub fn read_blob_chunks(&self, hash: &str) -> Result<Vec<Vec<u8>>> {
        let h = parse_hash("hash", hash)?;
        let txn = self.read_txn()?;
        match self.content(&txn, &h, hash)? {
            Content::Inline(b) => Ok(vec![b.to_vec()]),
            Content::Chunked { size, count } => {
                let chunks = (0..count)
                    .map(|i| self.chunk(&txn, &h, i, hash).map(<[u8]>::to_vec))
                    .collect::<Result<Vec<_>>>()?;
                check_total(hash, chunks.iter().map(|c| c.len() as u64).sum(), size)?;
                Ok(chunks)
            }
        }
    }
}

/// The chunks of a chunked entry must add up to the size in its header.
fn check_total(hash: &str, total: u64, size: u64) -> Result<()> {
    if total != size {
        return Err(Error::store(
            "LAMA-CORRUPT",
            format!("the chunks of {hash} hold {total} bytes, its header says {size}"),
        ));
    }
    Ok(())
}

/// `io::Write::write_all` under a name that does not need the trait in scope at call sites.
trait WriteAllBytes {
    fn write_all_bytes(&mut self, b: &[u8]) -> std::io::Result<()>;
}

impl<W: std::io::Write> WriteAllBytes for W {
    fn write_all_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.write_all(b)
    }
}

/// Incremental UTF-8 validation across chunk boundaries.
#[derive(Default)]
pub(crate) struct Utf8Check {
    pending: Vec<u8>,
}

impl Utf8Check {
    /// Feed the next bytes; `false` if the content so far cannot be UTF-8.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> bool {
        while !self.pending.is_empty() {
            let Some((&b, rest)) = data.split_first() else { return true };
            data = rest;
            self.pending.push(b);
            match std::str::from_utf8(&self.pending) {
                Ok(_) => self.pending.clear(),
                Err(e) if e.error_len().is_some() => return false,
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                self.pending.extend_from_slice(&data[e.valid_up_to()..]);
                true
            }
        }
    }

    /// True if the content ended on a character boundary.
    pub(crate) fn complete(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Streams a BLOB/CLOB into the store (docs/store-format.md "Write rules").
///
/// Every full chunk is staged in `tmp` in its own transaction; [`finish`](Self::finish) writes
/// the `objects` entry (inline when the content fits one chunk) and moves the staged chunks
/// to `chunks` in one transaction. Dropping an unfinished writer aborts it.
pub struct BlobWriter {
    /// The store; released (`None`) once finished or aborted, so that a lingering writer does
    /// not keep the environment open.
    store: Option<Store>,
    clob: bool,
    hasher: Sha256,
    /// Bytes not yet staged; never more than `CHUNK` after `write` returns.
    buf: Vec<u8>,
    staged: u32,
    total: u64,
    prefix: [u8; 16],
    utf8: Utf8Check,
    done: bool,
}

impl BlobWriter {
    fn check_open(&self) -> Result<Store> {
        match &self.store {
            Some(s) if !self.done => Ok(s.clone()),
            _ => Err(Error::store("LAMA-WRITER", "the BLOB writer is already finished or aborted")),
        }
    }

    /// Append bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let store = self.check_open()?;
        if self.clob && !self.utf8.feed(data) {
            self.abort()?;
            return Err(not_utf8());
        }
        self.hasher.update(data);
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        // Stage a chunk only once more than a chunk is buffered: content of exactly CHUNK
        // bytes stays inline, and the last chunk is never empty.
        if self.buf.len() > CHUNK {
            let dbs = store.dbs();
            let mut txn = store.write_txn()?;
            let mut start = 0;
            while self.buf.len() - start > CHUNK {
                dbs.tmp.put(&mut txn, &tmp_key(&self.prefix, self.staged), &self.buf[start..start + CHUNK])?;
                self.staged += 1;
                start += CHUNK;
            }
            txn.commit()?;
            self.buf.drain(..start);
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.total
    }

    fn delete_staged(&self, store: &Store, txn: &mut RwTxn) -> Result<()> {
        let tmp = store.dbs().tmp;
        for i in 0..self.staged {
            tmp.delete(txn, &tmp_key(&self.prefix, i))?;
        }
        Ok(())
    }

    /// Store the content; returns `(hash, status)`. With `expected_hash`, a different content
    /// hash is `HashMismatchError LAMA-HASH` and nothing is stored.
    pub fn finish(&mut self, expected_hash: Option<&str>) -> Result<(String, Status)> {
        let store = self.check_open()?;
        let expected = match expected_hash {
            Some(e) => Some(parse_hash("expected hash", e).inspect_err(|_| {
                let _ = self.abort();
            })?),
            None => None,
        };
        let h: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let hash = hex::encode(h);
        let problem = if self.clob && self.total == 0 {
            Some(empty_clob())
        } else if self.clob && !self.utf8.complete() {
            Some(not_utf8())
        } else {
            match (expected, expected_hash) {
                (Some(e), Some(es)) if e != h => Some(hash_mismatch(es, &hash)),
                _ => None,
            }
        };
        if let Some(err) = problem {
            self.abort()?;
            return Err(err);
        }
        let dbs = store.dbs();
        let mut txn = store.write_txn()?;
        let status = if dbs.objects.get(&txn, &h)?.is_some() {
            Status::Exists
        } else if self.staged == 0 {
            store.write_content(&mut txn, &h, self.clob, &self.buf)?
        } else {
            for i in 0..self.staged {
                let chunk = dbs
                    .tmp
                    .get(&txn, &tmp_key(&self.prefix, i))?
                    .ok_or_else(|| {
                        Error::store("LAMA-CORRUPT", format!("staged chunk {i} of a BLOB writer vanished"))
                    })?
                    .to_vec();
                dbs.chunks.put(&mut txn, &chunk_key(&h, i), &chunk)?;
            }
            dbs.chunks.put(&mut txn, &chunk_key(&h, self.staged), &self.buf)?;
            let kind = if self.clob { K_CLOB_CHUNKED } else { K_BLOB_CHUNKED };
            dbs.objects.put(&mut txn, &h, &chunked_value(kind, self.total, self.staged + 1))?;
            Status::New
        };
        self.delete_staged(&store, &mut txn)?;
        let mut feed = FeedTxn::new();
        if status == Status::New {
            feed.push(&dbs, &mut txn, &h, if self.clob { K_CLOB } else { K_BLOB })?;
        }
        txn.commit()?;
        store.published(&feed);
        self.done = true;
        self.buf = Vec::new();
        self.store = None;
        Ok((hash, status))
    }

    /// Discard the content and the staged chunks. Aborting twice is a no-op.
    pub fn abort(&mut self) -> Result<()> {
        let Some(store) = self.store.take() else { return Ok(()) };
        self.done = true;
        self.buf = Vec::new();
        if self.staged > 0 {
            let mut txn = store.write_txn()?;
            self.delete_staged(&store, &mut txn)?;
            txn.commit()?;
        }
        Ok(())
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Best effort: staged garbage is also removed when a store is opened an hour later.
        let _ = self.abort();
    }
}
