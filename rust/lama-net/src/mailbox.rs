//! lama's store-and-forward mailbox in the comm server (docs/mailbox.md): the same wire
//! protocol, on-disk format, limits, error codes and counters as the pure core's
//! `python/lama/_pure/mailbox.py`; a mailbox directory written by one core is read by the other.
//!
//! The server only holds opaque envelopes (docs/mailbox.md §3: sealed and signed by the sender's
//! client for the recipient's key) and never parses them; it learns what the relay already
//! learns (spec connections.md §9.3 item 1): the recipient key, sizes and times.
//!
//! On disk (docs/mailbox.md §4): `<dir>/<recipient key hex>/<id>.item`, `id` = SHA-256 hex of the
//! envelope, the file = `LAMAMBX1` || deposited ms (u64 BE) || expires ms (u64 BE) || envelope.
//! Written to `<id>.tmp`, fsynced, renamed, directory fsynced: a killed server leaves the whole
//! item or a `.tmp` that the next start deletes.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lama_core::crypto::{box_open_embedded, box_seal_embedded, random_bytes};
use lama_core::hash::sha256_hex;
use lama_core::Result;
use serde_json::{json, Map, Value};
use tokio::time::{timeout_at, Instant};

use crate::net_error;
use crate::transport::{Message, Transport};

const MAGIC: &[u8; 8] = b"LAMAMBX1";
const HEADER: usize = 24;
const SUFFIX: &str = ".item";

pub const FULL: &str = "LAMA-MAILBOX-FULL";
pub const TOOBIG: &str = "LAMA-MAILBOX-TOOBIG";
pub const IOERR: &str = "LAMA-MAILBOX-IO";
pub const SERVER_FULL: &str = "LAMA-MAILBOX-SERVER-FULL";
pub const AUTH: &str = "LAMA-MAILBOX-AUTH";
/// The envelope's clear prefix: magic || the sender's instance key (docs/mailbox.md §3.1).
const ENVELOPE_MAGIC: &[u8; 4] = b"LMB1";
#[cfg(test)]
const DEFAULT_TOTAL_ITEMS: usize = 100_000;
#[cfg(test)]
const DEFAULT_TOTAL_BYTES: u64 = 1 << 30;
const REASON_DONE: &str = "Close called.";

/// The mailbox options of a comm server (docs/mailbox.md §5).
#[derive(Debug, Clone)]
pub struct MailboxOptions {
    pub dir: PathBuf,
    pub max_items: usize,
    pub max_bytes: u64,
    pub ttl: Duration,
    /// The server-wide bound: items and bytes across every recipient.
    pub total_items: usize,
    pub total_bytes: u64,
}

#[derive(Default)]
struct State {
    /// recipient hex -> id -> (deposited ms, expires ms, size)
    items: HashMap<String, HashMap<String, (u64, u64, u64)>>,
    deposits: u64,
    refused: u64,
    fetches: u64,
    delivered: u64,
    confirmed: u64,
    expired: u64,
    n_items: u64,
    n_bytes: u64,
}

pub(crate) struct Mailbox {
    dir: PathBuf,
    max_items: usize,
    max_bytes: u64,
    total_items: usize,
    total_bytes: u64,
    ttl_ms: u64,
    state: Mutex<State>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn fsync_dir(path: &Path) {
    if let Ok(f) = fs::File::open(path) {
        let _ = f.sync_all();
    }
}

impl Mailbox {
    /// Open (create) the directory and load what it holds: `.tmp` leftovers are deleted, expired
    /// items too, files that are not ours are left alone.
    pub(crate) fn open(opts: &MailboxOptions) -> Result<Mailbox> {
        fs::create_dir_all(&opts.dir)
            .map_err(|e| net_error("LAMA-ARG", format!("mailbox directory {:?}: {e}", opts.dir.display().to_string())))?;
        let mb = Mailbox {
            dir: opts.dir.clone(),
            max_items: opts.max_items,
            max_bytes: opts.max_bytes,
            total_items: opts.total_items,
            total_bytes: opts.total_bytes,
            ttl_ms: opts.ttl.as_millis() as u64,
            state: Mutex::new(State::default()),
        };
        mb.load()?;
        Ok(mb)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load(&self) -> Result<()> {
        let now = now_ms();
        let mut st = self.lock();
        let rd = fs::read_dir(&self.dir).map_err(|e| net_error("LAMA-ARG", format!("mailbox directory: {e}")))?;
        let mut keys: Vec<String> = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        keys.sort();
        for key in keys {
            let sub = self.dir.join(&key);
            if !is_hex64(&key) || !sub.is_dir() {
                continue;
            }
            let Ok(rd) = fs::read_dir(&sub) else { continue };
            let mut items = HashMap::new();
            for e in rd.filter_map(|e| e.ok()) {
                let Ok(name) = e.file_name().into_string() else { continue };
                let path = sub.join(&name);
                if name.ends_with(".tmp") {
                    let _ = fs::remove_file(&path); // a write a kill interrupted
                    continue;
                }
                if !name.ends_with(SUFFIX) || name.len() != 64 + SUFFIX.len() {
                    continue;
                }
                let Ok(mut f) = fs::File::open(&path) else { continue };
                let mut head = [0u8; HEADER];
                if f.read_exact(&mut head).is_err() {
                    continue;
                }
                let size = f.metadata().map(|m| m.len()).unwrap_or(0).saturating_sub(HEADER as u64);
                if &head[..8] != MAGIC || size == 0 {
                    continue;
                }
                let dep = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
                let exp = u64::from_be_bytes(head[16..24].try_into().unwrap_or_default());
                if exp <= now {
                    let _ = fs::remove_file(&path);
                    st.expired += 1;
                    continue;
                }
                items.insert(name[..64].to_string(), (dep, exp, size));
            }
            if !items.is_empty() {
                st.n_items += items.len() as u64;
                st.n_bytes += items.values().map(|v| v.2).sum::<u64>();
                st.items.insert(key, items);
            }
        }
        Ok(())
    }

    fn path(&self, key: &str, id: &str, suffix: &str) -> PathBuf {
        self.dir.join(key).join(format!("{id}{suffix}"))
    }

    fn expire(&self, st: &mut State, key: &str, now: u64) {
        let Some(items) = st.items.get_mut(key) else { return };
        let gone: Vec<(String, u64)> = items.iter().filter(|(_, v)| v.1 <= now).map(|(k, v)| (k.clone(), v.2)).collect();
        for (id, _) in &gone {
            let _ = fs::remove_file(self.path(key, id, SUFFIX));
            items.remove(id);
        }
        let empty = items.is_empty();
        st.expired += gone.len() as u64;
        st.n_items -= gone.len() as u64;
        st.n_bytes -= gone.iter().map(|g| g.1).sum::<u64>();
        if empty {
            st.items.remove(key);
        }
    }

    /// (id, error code or None, message). Idempotent for an envelope already held. `sender`: the
    /// instance key the depositor proved; the envelope's clear prefix must name it.
    pub(crate) fn deposit(&self, key: &str, env: &[u8], sender: Option<&[u8; 32]>) -> (String, Option<&'static str>, String) {
        let id = sha256_hex(env);
        let mut st = self.lock();
        if let Some(sender) = sender {
            if env.len() < 36 || &env[..4] != ENVELOPE_MAGIC || &env[4..36] != sender {
                st.refused += 1;
                return (
                    id,
                    Some(AUTH),
                    "the envelope's sender key is not the key the depositor proved (a deposit in another instance's name)".into(),
                );
            }
        }
        let now = now_ms();
        self.expire(&mut st, key, now);
        let (count, used, held) = match st.items.get(key) {
            Some(items) => (items.len(), items.values().map(|v| v.2).sum::<u64>(), items.contains_key(&id)),
            None => (0, 0, false),
        };
        if held {
            return (id, None, "already held".into());
        }
        let size = env.len() as u64;
        if size > self.max_bytes {
            st.refused += 1;
            return (id, Some(TOOBIG), format!("an item of {size} bytes exceeds the mailbox limit of {} bytes", self.max_bytes));
        }
        if count >= self.max_items || used + size > self.max_bytes {
            st.refused += 1;
            return (
                id,
                Some(FULL),
                format!(
                    "the recipient's mailbox is full ({count} of {} items, {used} of {} bytes; this item: {size} bytes)",
                    self.max_items, self.max_bytes
                ),
            );
        }
        if st.n_items >= self.total_items as u64 || st.n_bytes + size > self.total_bytes {
            st.refused += 1;
            return (
                id,
                Some(SERVER_FULL),
                format!(
                    "the comm server's mailbox is full ({} of {} items, {} of {} bytes across all recipients; this item: {size} bytes)",
                    st.n_items, self.total_items, st.n_bytes, self.total_bytes
                ),
            );
        }
        let exp = now + self.ttl_ms;
        let write = || -> std::io::Result<()> {
            let sub = self.dir.join(key);
            fs::create_dir_all(&sub)?;
            let tmp = self.path(key, &id, ".tmp");
            let mut f = fs::File::create(&tmp)?;
            let mut head = Vec::with_capacity(HEADER);
            head.extend_from_slice(MAGIC);
            head.extend_from_slice(&now.to_be_bytes());
            head.extend_from_slice(&exp.to_be_bytes());
            f.write_all(&head)?;
            f.write_all(env)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path(key, &id, SUFFIX))?;
            fsync_dir(&sub);
            Ok(())
        };
        if let Err(e) = write() {
            st.refused += 1;
            return (id, Some(IOERR), format!("the mailbox cannot store the item: {e}"));
        }
        st.items.entry(key.to_string()).or_default().insert(id.clone(), (now, exp, size));
        st.deposits += 1;
        st.n_items += 1;
        st.n_bytes += size;
        (id, None, "stored".into())
    }

    /// The recipient's live (id, envelope)s, oldest first (deposit time, then id).
    pub(crate) fn fetch(&self, key: &str) -> Vec<(String, Vec<u8>)> {
        let mut st = self.lock();
        self.expire(&mut st, key, now_ms());
        let mut order: Vec<(u64, String)> = match st.items.get(key) {
            Some(items) => items.iter().map(|(id, v)| (v.0, id.clone())).collect(),
            None => Vec::new(),
        };
        order.sort();
        let mut out = Vec::new();
        for (_, id) in order {
            if let Ok(data) = fs::read(self.path(key, &id, SUFFIX)) {
                if data.len() > HEADER {
                    out.push((id, data[HEADER..].to_vec()));
                }
            }
        }
        st.fetches += 1;
        st.delivered += out.len() as u64;
        out
    }

    pub(crate) fn confirm(&self, key: &str, ids: &[String]) -> u64 {
        let mut st = self.lock();
        let mut n = 0u64;
        let mut bytes = 0u64;
        if let Some(items) = st.items.get_mut(key) {
            for id in ids {
                if let Some(v) = items.remove(id) {
                    let _ = fs::remove_file(self.path(key, id, SUFFIX));
                    n += 1;
                    bytes += v.2;
                }
            }
            if items.is_empty() {
                st.items.remove(key);
            }
        }
        if n > 0 {
            fsync_dir(&self.dir.join(key));
        }
        st.n_items -= n;
        st.n_bytes -= bytes;
        st.confirmed += n;
        n
    }

    pub(crate) fn info_message(&self) -> String {
        json!({"command": "mailbox_info", "version": 1, "maxItems": self.max_items,
               "maxBytes": self.max_bytes, "maxTotalItems": self.total_items,
               "maxTotalBytes": self.total_bytes, "ttl": self.ttl_ms / 1000, "depositProof": true})
        .to_string()
    }

    pub(crate) fn counters(&self) -> Vec<(&'static str, u64)> {
        let st = self.lock();
        vec![
            ("mailbox_deposits", st.deposits),
            ("mailbox_refused", st.refused),
            ("mailbox_fetches", st.fetches),
            ("mailbox_delivered", st.delivered),
            ("mailbox_confirmed", st.confirmed),
            ("mailbox_expired", st.expired),
            ("mailbox_items", st.n_items),
            ("mailbox_bytes", st.n_bytes),
        ]
    }
}

/// How a mailbox request ended (the comm server counts these).
pub(crate) enum Outcome {
    Done,
    /// Close with this reason (a malformed request): counted as malformed.
    Refuse(String),
    /// The fetch's key proof failed: counted as an auth failure, then closed (conn §3.2's reason).
    AuthFailed,
}

fn parse(m: &Message) -> Option<Map<String, Value>> {
    let Message::Text(t) = m else { return None };
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

async fn recv_until(t: &Transport, deadline: Instant) -> std::result::Result<Option<Message>, ()> {
    timeout_at(deadline, t.recv()).await.map_err(|_| ())
}

type KeyField = fn(&Map<String, Value>, &str) -> std::result::Result<[u8; 32], String>;

/// The register challenge (conn §3.2) for `key`: `Ok(true)` proved, `Ok(false)` not, `Err`: how
/// the request ends instead (the client went away, timed out or sent something malformed).
async fn prove(
    server_public: &[u8; 32],
    server_secret: &[u8; 32],
    t: &Transport,
    key: &[u8; 32],
    deadline: Instant,
    malformed: &str,
) -> std::result::Result<bool, Outcome> {
    let Ok(challenge) = random_bytes(64) else { return Err(Outcome::Refuse("Close called: Error: no randomness".into())) };
    let sealed = match box_seal_embedded(&challenge, server_secret, key, None) {
        Ok(b) => b,
        Err(e) => return Err(Outcome::Refuse(crate::truncate_reason(&format!("Close called: Error: {e}")))),
    };
    let req = json!({"command": "authentication_request", "publicKey": hex::encode(server_public),
                     "challenge": hex::encode(&sealed)});
    if t.send(Message::Text(req.to_string())).await.is_err() {
        return Err(Outcome::Done);
    }
    let answer = match recv_until(t, deadline).await {
        Err(()) => return Err(Outcome::Refuse("Close called: Authentication timed out.".into())),
        Ok(None) => return Err(Outcome::Done),
        Ok(Some(m)) => m,
    };
    let response = match parse(&answer) {
        Some(o) if o.get("command").and_then(Value::as_str) == Some("authentication_response") => {
            match o.get("response").and_then(Value::as_str) {
                Some(s) => hex::decode(s).ok(),
                None => return Err(Outcome::Refuse(malformed.to_string())),
            }
        }
        _ => return Err(Outcome::Refuse(malformed.to_string())),
    };
    // NOT(challenge), conn §1.3
    let expected: Vec<u8> = challenge.iter().map(|b| !b).collect();
    Ok(response
        .and_then(|r| box_open_embedded(&r, server_secret, key).ok())
        .is_some_and(|p| p.len() == expected.len() && p.iter().zip(&expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0))
}

/// docs/mailbox.md §2.2: the depositor proves its instance key (the register challenge), then
/// `mailbox_deposit` text + one binary frame, answered; repeated until the client closes or is
/// idle for `idle`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_deposit(
    mb: &Arc<Mailbox>,
    server_public: &[u8; 32],
    server_secret: &[u8; 32],
    t: &Transport,
    first: Map<String, Value>,
    key_field: KeyField,
    deadline: Instant,
    idle: Duration,
    malformed: &str,
) -> Outcome {
    if !first.contains_key("publicKey") {
        // a depositor that does not prove its key (an older client): a clear error, nothing stored
        mb.lock().refused += 1;
        let err = json!({"command": "mailbox_error", "id": "", "code": AUTH,
                         "message": "a deposit needs the depositor's key proof: send publicKey and answer the challenge (docs/mailbox.md §2.2)"});
        if t.send(Message::Text(err.to_string())).await.is_ok() {
            t.close(REASON_DONE).await;
        }
        return Outcome::Done;
    }
    let sender = match key_field(&first, "publicKey") {
        Ok(k) => k,
        Err(reason) => return Outcome::Refuse(reason),
    };
    match prove(server_public, server_secret, t, &sender, deadline, malformed).await {
        Ok(true) => {}
        Ok(false) => return Outcome::AuthFailed,
        Err(o) => return o,
    }
    let mut obj = first;
    loop {
        let key = match key_field(&obj, "targetPublicKey") {
            Ok(k) => hex::encode(k),
            Err(reason) => return Outcome::Refuse(reason),
        };
        let blob = match recv_until(t, Instant::now() + idle).await {
            Err(()) => {
                t.close(REASON_DONE).await;
                return Outcome::Done;
            }
            Ok(None) => return Outcome::Done,
            Ok(Some(Message::Binary(b))) if !b.is_empty() => b,
            Ok(Some(_)) => return Outcome::Refuse(malformed.to_string()),
        };
        let m2 = mb.clone();
        let res = tokio::task::spawn_blocking(move || m2.deposit(&key, &blob, Some(&sender))).await;
        let (id, code, msg) = match res {
            Ok(r) => r,
            Err(_) => (String::new(), Some(IOERR), "the mailbox failed to store the item".to_string()),
        };
        let reply = match code {
            None => json!({"command": "mailbox_stored", "id": id}),
            Some(code) => json!({"command": "mailbox_error", "id": id, "code": code, "message": msg}),
        };
        if t.send(Message::Text(reply.to_string())).await.is_err() {
            return Outcome::Done;
        }
        match recv_until(t, Instant::now() + idle).await {
            Err(()) => {
                t.close(REASON_DONE).await;
                return Outcome::Done;
            }
            Ok(None) => return Outcome::Done,
            Ok(Some(m)) => match parse(&m) {
                Some(o) if o.get("command").and_then(Value::as_str) == Some("mailbox_deposit") => obj = o,
                _ => return Outcome::Refuse(malformed.to_string()),
            },
        }
    }
}

/// docs/mailbox.md §2.3: the register challenge (conn §3.2), the items, the confirmation.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_fetch(
    mb: &Arc<Mailbox>,
    server_public: &[u8; 32],
    server_secret: &[u8; 32],
    t: &Transport,
    key: [u8; 32],
    deadline: Instant,
    idle: Duration,
    malformed: &str,
) -> Outcome {
    match prove(server_public, server_secret, t, &key, deadline, malformed).await {
        Ok(true) => {}
        Ok(false) => return Outcome::AuthFailed, // the caller counts it, then closes
        Err(o) => return o,
    }
    let key_hex = hex::encode(key);
    let m2 = mb.clone();
    let k2 = key_hex.clone();
    let items = tokio::task::spawn_blocking(move || m2.fetch(&k2)).await.unwrap_or_default();
    let ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
    if t.send(Message::Text(json!({"command": "mailbox_items", "ids": ids}).to_string())).await.is_err() {
        return Outcome::Done;
    }
    for (_, data) in items {
        if t.send(Message::Binary(data)).await.is_err() {
            return Outcome::Done;
        }
    }
    let m = match recv_until(t, Instant::now() + idle).await {
        Err(()) => {
            t.close(REASON_DONE).await;
            return Outcome::Done;
        }
        Ok(None) => return Outcome::Done,
        Ok(Some(m)) => m,
    };
    let ids: Option<Vec<String>> = parse(&m).and_then(|o| {
        if o.get("command").and_then(Value::as_str) != Some("mailbox_confirm") {
            return None;
        }
        let list = o.get("ids")?.as_array()?;
        list.iter().map(|v| v.as_str().filter(|s| s.len() == 64).map(str::to_ascii_lowercase)).collect()
    });
    let Some(ids) = ids else { return Outcome::Refuse(malformed.to_string()) };
    let m2 = mb.clone();
    let n = tokio::task::spawn_blocking(move || m2.confirm(&key_hex, &ids)).await.unwrap_or(0);
    if t.send(Message::Text(json!({"command": "mailbox_confirmed", "count": n}).to_string())).await.is_err() {
        return Outcome::Done;
    }
    // the client closes; wait briefly for it so the close reason is its own
    let _ = recv_until(t, Instant::now() + idle).await;
    t.close(REASON_DONE).await;
    Outcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lama-mailbox-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn opts(d: &Path, max_items: usize, max_bytes: u64, ttl: Duration) -> MailboxOptions {
        MailboxOptions { dir: d.to_path_buf(), max_items, max_bytes, ttl, total_items: DEFAULT_TOTAL_ITEMS, total_bytes: DEFAULT_TOTAL_BYTES }
    }

    fn counter(mb: &Mailbox, name: &str) -> u64 {
        mb.counters().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap_or(u64::MAX)
    }

    const BOB: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

    #[test]
    fn deposit_limits_restart_confirm() {
        let d = dir("limits");
        let o = opts(&d, 2, 100, Duration::from_secs(3600));
        let mb = Mailbox::open(&o).unwrap();
        let (id1, code, _) = mb.deposit(BOB, b"first", None);
        assert!(code.is_none());
        assert_eq!(id1, sha256_hex(b"first"));
        assert!(mb.deposit(BOB, b"first", None).1.is_none()); // idempotent
        assert_eq!(mb.deposit(BOB, &[7u8; 101], None).1, Some(TOOBIG));
        assert_eq!(mb.deposit(BOB, &[7u8; 96], None).1, Some(FULL)); // 5 + 96 > 100 bytes
        // fetch orders by deposit millisecond, then by id: the second item gets its own
        // millisecond (sha256("second") sorts before sha256("first"))
        std::thread::sleep(Duration::from_millis(2));
        assert!(mb.deposit(BOB, b"second", None).1.is_none());
        let (_, code, msg) = mb.deposit(BOB, b"third", None);
        assert_eq!(code, Some(FULL));
        assert!(msg.contains("2 of 2 items"), "{msg}");
        assert_eq!((counter(&mb, "mailbox_items"), counter(&mb, "mailbox_refused")), (2, 3));
        drop(mb);
        // a write a kill interrupted
        fs::write(d.join(BOB).join(format!("{}.tmp", "0".repeat(64))), b"half").unwrap();
        let mb = Mailbox::open(&o).unwrap();
        assert!(!d.join(BOB).join(format!("{}.tmp", "0".repeat(64))).exists());
        let items = mb.fetch(BOB);
        assert_eq!(items.iter().map(|i| i.1.as_slice()).collect::<Vec<_>>(), vec![&b"first"[..], &b"second"[..]]);
        assert_eq!(mb.confirm(BOB, &[id1.clone(), "f".repeat(64)]), 1);
        assert_eq!(mb.fetch(BOB).len(), 1);
        assert_eq!((counter(&mb, "mailbox_items"), counter(&mb, "mailbox_bytes")), (1, 6));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn items_expire() {
        let d = dir("expire");
        let o = opts(&d, 10, 1000, Duration::from_millis(50));
        let mb = Mailbox::open(&o).unwrap();
        assert!(mb.deposit(BOB, b"soon gone", None).1.is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(mb.fetch(BOB).is_empty());
        assert_eq!((counter(&mb, "mailbox_expired"), counter(&mb, "mailbox_items")), (1, 0));
        assert!(mb.deposit(BOB, b"gone at restart", None).1.is_none());
        drop(mb);
        std::thread::sleep(Duration::from_millis(80));
        let mb = Mailbox::open(&o).unwrap();
        assert_eq!((counter(&mb, "mailbox_expired"), counter(&mb, "mailbox_items")), (1, 0));
        assert_eq!(fs::read_dir(d.join(BOB)).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn server_wide_bound_and_the_proved_sender() {
        const CAROL: &str = "ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0ca0c";
        let d = dir("total");
        let mut o = opts(&d, 10, 1000, Duration::from_secs(3600));
        o.total_items = 3;
        o.total_bytes = 120;
        let mb = Mailbox::open(&o).unwrap();
        let alice = [0xa1u8; 32];
        let env = |tag: u8, n: usize| -> Vec<u8> {
            let mut e = ENVELOPE_MAGIC.to_vec();
            e.extend_from_slice(&alice);
            e.extend(std::iter::repeat_n(tag, n));
            e
        };
        // an envelope naming another sender than the proved key is refused
        assert_eq!(mb.deposit(BOB, &env(1, 4), Some(&[0xeeu8; 32])).1, Some(AUTH));
        assert_eq!(mb.deposit(BOB, b"LMB1short", Some(&alice)).1, Some(AUTH));
        assert!(mb.deposit(BOB, &env(1, 4), Some(&alice)).1.is_none());
        assert!(mb.deposit(CAROL, &env(2, 4), Some(&alice)).1.is_none());
        // bytes across recipients: 40 + 40 held, 41 more would pass 120
        let (_, code, msg) = mb.deposit(CAROL, &env(3, 5), Some(&alice));
        assert_eq!(code, Some(SERVER_FULL), "{msg}");
        assert!(msg.contains("across all recipients"), "{msg}");
        assert!(mb.deposit(BOB, &env(4, 0), Some(&alice)).1.is_none()); // 36 bytes: 116
        // items across recipients: 3 of 3
        assert_eq!(mb.deposit(CAROL, b"x", None).1, Some(SERVER_FULL));
        assert_eq!((counter(&mb, "mailbox_items"), counter(&mb, "mailbox_refused")), (3, 4));
        // a confirmation makes room again
        let id = mb.fetch(BOB)[0].0.clone();
        assert_eq!(mb.confirm(BOB, &[id]), 1);
        assert!(mb.deposit(CAROL, b"x", None).1.is_none());
        let _ = fs::remove_dir_all(&d);
    }
}
