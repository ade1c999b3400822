//! Encrypted connections (connections.md §1 of the docs; spec conn §2.2–2.7, §4): the
//! reference's handshake with ephemeral keys, then every message sealed with counter nonces
//! and random padding, keepalive, fragmentation and the reference's close reasons.
//!
//! The result is a [`Transport`] (kind `Encrypted`), so everything above — the driver, a CHUM
//! session — runs over it unchanged. Two tasks sit between it and the raw transport below
//! (a WebSocket, a comm-server spare, a memory pair):
//! - the writer takes plaintext messages from the transport's bounded outgoing pipe, escapes
//!   and fragments them (conn §2.5, §2.6), seals each piece and sends it on the raw transport
//!   (waiting there is the back-pressure); `keepalive` seconds without output send the string
//!   `keepalive`;
//! - the reader opens each frame with the next peer counter (conn §2.4), swallows keepalives,
//!   unescapes, reassembles fragments (at most `max_message` bytes) and hands messages to the
//!   bounded incoming pipe (a full pipe stops the reading: back-pressure to the peer);
//!   `dead_after` seconds without a frame terminate the connection (conn §2.5).
//!
//! Close reasons (conn §2.3): a close with reason `r` travels as `Close called: r` (`Close
//! called.` for an empty one), a terminate (keepalive) as `Terminate called: r`; both sides'
//! `close_reason` is that text. Failures of the peer's frames close with the spec's texts:
//! `Decryption of message failed.`, `Incoming encrypted message is a string, it needs to be
//! binary`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lama_core::crypto;
use lama_core::Result;
use rand::RngCore;
use tokio::sync::watch;

use crate::pipe::{pipe, Frame, PipeRx, PipeTx};
use crate::transport::{Kind, Message, State, Transport, CODE_NORMAL};
use crate::{net_error, size_reason, truncate_reason, ws_connect, DEFAULT_MAX_MESSAGE, REASON_LOST};

/// conn §2.6: payloads above this are sent in slices of this size.
pub const FRAGMENT_SIZE: usize = 65536;
const MARK_BINARY: &str = "fragmentation_start_binary";
const MARK_STRING: &str = "fragmentation_start_string";
const MARK_END: &str = "fragmentation_end";
/// conn §2.5: the keepalive message (and the prefix that is escaped).
const KEEPALIVE: &str = "keepalive";
/// conn §2.4: the reference refuses counters from 2^53 - 2 on (JavaScript's safe integers).
const COUNTER_LIMIT: u64 = (1 << 53) - 2;
/// Room for the tag and the padding (1 + 255 bytes as lama and the reference send it) on top
/// of a message, for the size limit of the raw transport below.
pub const FRAME_OVERHEAD: usize = 16 + 1 + 1 + 255;

/// conn §2.3, §2.4: the reasons of the encryption plugin.
pub const REASON_DECRYPTION: &str = "Decryption of message failed.";
pub const REASON_STRING: &str = "Incoming encrypted message is a string, it needs to be binary";
/// conn §2.5 (a terminate).
pub const REASON_KEEPALIVE: &str = "Keepalive: No lifesign of the other side";
/// conn §4.1: the acceptor's refusal of a target key it does not own.
pub const REASON_NOT_ACCEPTED: &str = "Error: We do not accept connections for this target public key";
/// conn §3.3: the comm server's refusal when the target has no spare connection.
const REASON_NO_LISTENER: &str = "No listening connection for the specified publicKey.";

/// `Close called: <reason>` / `Close called.` (conn §2.3), cut to 123 bytes.
pub fn close_text(reason: &str) -> String {
    if reason.is_empty() {
        "Close called.".to_string()
    } else {
        truncate_reason(&format!("Close called: {reason}"))
    }
}

/// `Terminate called: <reason>` / `Terminate called.` (conn §2.3), cut to 123 bytes.
pub fn terminate_text(reason: &str) -> String {
    if reason.is_empty() {
        "Terminate called.".to_string()
    } else {
        truncate_reason(&format!("Terminate called: {reason}"))
    }
}

/// Options of [`encrypted_connect`] and [`encrypted_accept`].
#[derive(Clone)]
pub struct EncryptedOptions {
    /// connect: the WebSocket must be open within this time (conn §2.8: 5 s).
    pub open_timeout: Duration,
    /// The handshake (after the socket is open) must be done within this time.
    pub timeout: Duration,
    /// Send `keepalive` after this long without output (conn §2.5: 20 s).
    pub keepalive: Duration,
    /// Terminate after this long without input (conn §2.5: 25 s).
    pub dead_after: Duration,
    /// The largest message sent or accepted (after reassembly).
    pub max_message: usize,
    /// Tests only: the ephemeral key pair `(public, secret)` instead of a fresh one.
    pub ephemeral: Option<([u8; 32], [u8; 32])>,
    /// Tests only: the padding `(r, filler)` of the next frames sent (then random ones).
    pub padding: Vec<(u8, Vec<u8>)>,
}

impl Default for EncryptedOptions {
    fn default() -> Self {
        EncryptedOptions {
            open_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(20),
            dead_after: Duration::from_secs(25),
            max_message: DEFAULT_MAX_MESSAGE,
            ephemeral: None,
            padding: Vec::new(),
        }
    }
}

/// What an encrypted connection knows beyond a transport: keys, role, statistics.
pub struct EncryptedInfo {
    pub local_key: [u8; 32],
    pub remote_key: [u8; 32],
    pub initiator: bool,
    inner: Arc<Transport>,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    open_time: u64,
    close_time: Mutex<Option<u64>>,
}

/// Statistics of an encrypted connection (conn §2.7): wire bytes both ways (handshake
/// included; text frames as UTF-8), application messages both ways, open and close time in
/// epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedStats {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub open_time: u64,
    pub close_time: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl EncryptedInfo {
    pub fn stats(&self) -> EncryptedStats {
        EncryptedStats {
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_received: self.messages_received.load(Ordering::Relaxed),
            open_time: self.open_time,
            close_time: *self.close_time.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    pub(crate) fn mark_closed(&self) {
        let mut c = self.close_time.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_none() {
            *c = Some(now_ms());
        }
    }

    /// The raw transport below (to close it when the tasks are stuck).
    pub(crate) fn inner(&self) -> &Arc<Transport> {
        &self.inner
    }
}

fn handshake_error(message: impl Into<String>) -> lama_core::Error {
    net_error("LAMA-NET-HANDSHAKE", message)
}

fn refused_error(message: impl Into<String>) -> lama_core::Error {
    net_error("LAMA-NET-REFUSED", message)
}

/// Counts what the handshake puts on and takes from the raw transport.
#[derive(Default)]
struct Wire {
    sent: u64,
    received: u64,
}

impl Wire {
    async fn send(&mut self, t: &Transport, m: Message) -> Result<()> {
        self.sent += m.len() as u64;
        t.send(m).await
    }

    async fn recv(&mut self, t: &Transport) -> Option<Message> {
        let m = t.recv().await;
        if let Some(m) = &m {
            self.received += m.len() as u64;
        }
        m
    }
}

/// The error of a handshake whose raw transport was closed by the other side (or the comm
/// server): refused for the two refusals of the spec, else a failed handshake.
fn closed_during_handshake(t: &Transport, waiting_for: &str) -> lama_core::Error {
    let reason = t.close_reason().unwrap_or_else(|| REASON_LOST.to_string());
    if reason.contains(REASON_NOT_ACCEPTED.trim_start_matches("Error: ")) || reason.contains(REASON_NO_LISTENER) {
        refused_error(format!("the connection was refused: {reason}"))
    } else {
        handshake_error(format!("the connection closed while waiting for {waiting_for}: {reason}"))
    }
}

/// Close the raw transport with `reason` (in the reference's form) and fail the handshake.
async fn fail(t: &Transport, reason: &str, err: lama_core::Error) -> lama_core::Error {
    t.close(&close_text(reason)).await;
    err
}

fn hex_key(v: &serde_json::Value, field: &str) -> Option<[u8; 32]> {
    let s = v.get(field)?.as_str()?;
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}

/// Constant-time equality of two keys (conn §1.2: tweetnacl `verify`).
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut d = 0u8;
    for i in 0..32 {
        d |= a[i] ^ b[i];
    }
    d == 0
}

fn ephemeral_pair(opts: &EncryptedOptions) -> ([u8; 32], zeroize::Zeroizing<[u8; 32]>) {
    let (p, s) = opts.ephemeral.unwrap_or_else(crypto::box_keypair);
    (p, zeroize::Zeroizing::new(s))
}

/// conn §4.1 as initiator: open a WebSocket to `url` (a comm server or a direct listener),
/// send `communication_request`, wait for `communication_ready`, exchange ephemeral keys.
pub async fn encrypted_connect(
    url: &str,
    public_key: &[u8; 32],
    secret_key: &[u8; 32],
    target_key: &[u8; 32],
    opts: EncryptedOptions,
) -> Result<Transport> {
    let raw_max = opts.max_message.saturating_add(FRAME_OVERHEAD);
    let raw = match tokio::time::timeout(opts.open_timeout, ws_connect(url, Some(raw_max))).await {
        Err(_) => {
            return Err(net_error(
                "LAMA-NET-CONNECT",
                format!("connecting to {url} timed out after {:?}", opts.open_timeout),
            ))
        }
        Ok(r) => Arc::new(r?),
    };
    let open_time = now_ms();
    let mut wire = Wire::default();
    let hs = async {
        let request = format!(
            "{{\"command\":\"communication_request\",\"sourcePublicKey\":\"{}\",\"targetPublicKey\":\"{}\"}}",
            hex::encode(public_key),
            hex::encode(target_key)
        );
        wire.send(&raw, Message::Text(request)).await.map_err(|_| closed_during_handshake(&raw, "communication_ready"))?;
        match wire.recv(&raw).await {
            None => return Err(closed_during_handshake(&raw, "communication_ready")),
            Some(Message::Text(t))
                if serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .is_some_and(|v| v.get("command").and_then(|c| c.as_str()) == Some("communication_ready")) => {}
            Some(_) => {
                return Err(fail(&raw, "Error: expected communication_ready", handshake_error("the peer did not answer with communication_ready")).await)
            }
        }
        let hs_key = zeroize::Zeroizing::new(crypto::box_before(target_key, secret_key).map_err(|e| handshake_error(e.message))?);
        let (epk, esk) = ephemeral_pair(&opts);
        let frame1 = crypto::secretbox_seal_embedded(&epk, &hs_key[..], None)?;
        wire.send(&raw, Message::Binary(frame1)).await.map_err(|_| closed_during_handshake(&raw, "the peer's key frame"))?;
        let peer_epk = match wire.recv(&raw).await {
            None => return Err(closed_during_handshake(&raw, "the peer's key frame")),
            Some(Message::Binary(b)) if b.len() == 72 => match crypto::secretbox_open_embedded(&b, &hs_key[..]) {
                Ok(k) => k,
                Err(_) => return Err(fail(&raw, REASON_DECRYPTION, handshake_error("the peer's key frame does not open with the target key")).await),
            },
            Some(_) => return Err(fail(&raw, "Error: expected the 72-byte key frame", handshake_error("the peer did not send its 72-byte key frame")).await),
        };
        let k = match crypto::box_before(&peer_epk, &esk[..]) {
            Ok(k) => k,
            Err(e) => return Err(fail(&raw, "Error: unusable ephemeral key", handshake_error(e.message)).await),
        };
        Ok(k)
    };
    let key = match tokio::time::timeout(opts.timeout, hs).await {
        Ok(Ok(k)) => zeroize::Zeroizing::new(k),
        Ok(Err(e)) => {
            raw.close(&close_text(&format!("Error: {}", e.message))).await;
            return Err(e);
        }
        Err(_) => {
            let e = handshake_error(format!("the handshake with {url} timed out after {:?}", opts.timeout));
            raw.close(&close_text("Error: handshake timed out")).await;
            return Err(e);
        }
    };
    Ok(start(raw, *public_key, *target_key, true, &key, wire, open_time, opts))
}

/// conn §4.1/§4.2 as acceptor: the next message on `raw` must be the `communication_request`
/// (a direct listener's fresh transport, or a comm-server spare after its handover). Answers
/// `communication_ready` before deciding (as the reference), then refuses a target key that is
/// not among `keys` (`(public, secret)` pairs, compared in constant time over all of them).
pub async fn encrypted_accept(raw: Arc<Transport>, keys: &[([u8; 32], [u8; 32])], opts: EncryptedOptions) -> Result<Transport> {
    let open_time = now_ms();
    let mut wire = Wire::default();
    let hs = async {
        let request = match wire.recv(&raw).await {
            None => return Err(closed_during_handshake(&raw, "communication_request")),
            Some(Message::Text(t)) => serde_json::from_str::<serde_json::Value>(&t).ok().and_then(|v| {
                if v.get("command").and_then(|c| c.as_str()) != Some("communication_request") {
                    return None;
                }
                Some((hex_key(&v, "sourcePublicKey")?, hex_key(&v, "targetPublicKey")?))
            }),
            Some(Message::Binary(_)) => None,
        };
        let Some((source, target)) = request else {
            return Err(fail(&raw, "Error: expected communication_request", handshake_error("the first message is not a well-formed communication_request")).await);
        };
        wire.send(&raw, Message::Text("{\"command\":\"communication_ready\"}".into()))
            .await
            .map_err(|_| closed_during_handshake(&raw, "the peer's key frame"))?;
        let frame1 = match wire.recv(&raw).await {
            None => return Err(closed_during_handshake(&raw, "the peer's key frame")),
            Some(Message::Binary(b)) if b.len() == 72 => b,
            Some(_) => return Err(fail(&raw, "Error: expected the 72-byte key frame", handshake_error("the peer did not send its 72-byte key frame")).await),
        };
        // every candidate is compared, so the time does not tell which one matched
        let mut found: Option<&([u8; 32], [u8; 32])> = None;
        for k in keys {
            if ct_eq(&k.0, &target) && found.is_none() {
                found = Some(k);
            }
        }
        let Some((public, secret)) = found else {
            return Err(fail(&raw, REASON_NOT_ACCEPTED, refused_error(format!("the target key {} is not one of ours", hex::encode(target)))).await);
        };
        let hs_key = match crypto::box_before(&source, secret) {
            Ok(k) => zeroize::Zeroizing::new(k),
            Err(e) => return Err(fail(&raw, "Error: unusable source key", handshake_error(e.message)).await),
        };
        let peer_epk = match crypto::secretbox_open_embedded(&frame1, &hs_key[..]) {
            Ok(k) => k,
            Err(_) => return Err(fail(&raw, REASON_DECRYPTION, handshake_error("the peer's key frame does not open with its source key")).await),
        };
        let (epk, esk) = ephemeral_pair(&opts);
        let k = match crypto::box_before(&peer_epk, &esk[..]) {
            Ok(k) => zeroize::Zeroizing::new(k),
            Err(e) => return Err(fail(&raw, "Error: unusable ephemeral key", handshake_error(e.message)).await),
        };
        let frame2 = crypto::secretbox_seal_embedded(&epk, &hs_key[..], None)?;
        wire.send(&raw, Message::Binary(frame2)).await.map_err(|_| closed_during_handshake(&raw, "sending the key frame"))?;
        Ok((*public, source, k))
    };
    let (public, source, key) = match tokio::time::timeout(opts.timeout, hs).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            raw.close(&close_text(&format!("Error: {}", e.message))).await;
            return Err(e);
        }
        Err(_) => {
            raw.close(&close_text("Error: handshake timed out")).await;
            return Err(handshake_error(format!("the handshake timed out after {:?}", opts.timeout)));
        }
    };
    Ok(start(raw, public, source, false, &key, wire, open_time, opts))
}

/// The padding of the next frame: given ones first (tests), then a random `r` and filler.
struct Padding {
    given: std::collections::VecDeque<(u8, Vec<u8>)>,
    filler: Vec<u8>,
}

impl Padding {
    fn next(&mut self) -> (u8, &[u8]) {
        if let Some((r, f)) = self.given.pop_front() {
            self.filler = f;
            return (r, &self.filler);
        }
        let mut rng = rand::thread_rng();
        let r = (rng.next_u32() & 0xff) as u8;
        self.filler.resize(usize::from(r.saturating_sub(1)), 0);
        rng.fill_bytes(&mut self.filler);
        (r, &self.filler)
    }
}

#[allow(clippy::too_many_arguments)]
fn start(
    raw: Arc<Transport>,
    local_key: [u8; 32],
    remote_key: [u8; 32],
    initiator: bool,
    key: &[u8; 32],
    wire: Wire,
    open_time: u64,
    opts: EncryptedOptions,
) -> Transport {
    let info = Arc::new(EncryptedInfo {
        local_key,
        remote_key,
        initiator,
        inner: raw.clone(),
        bytes_sent: AtomicU64::new(wire.sent),
        bytes_received: AtomicU64::new(wire.received),
        messages_sent: AtomicU64::new(0),
        messages_received: AtomicU64::new(0),
        open_time,
        close_time: Mutex::new(None),
    });
    let (out_tx, out_rx) = pipe();
    let (inc_tx, inc_rx) = pipe();
    let state = Arc::new(State::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    // conn §2.4: the initiator sends with odd counters from 1, the acceptor with even from 0
    let (local, remote) = if initiator { (1, 0) } else { (0, 1) };
    let writer = Writer {
        raw: raw.clone(),
        key: zeroize::Zeroizing::new(*key),
        counter: local,
        info: info.clone(),
        padding: Padding { given: opts.padding.into(), filler: Vec::new() },
        state: state.clone(),
    };
    let reader = Reader {
        raw,
        key: zeroize::Zeroizing::new(*key),
        counter: remote,
        info: info.clone(),
        state: state.clone(),
        max_message: opts.max_message,
        collecting: None,
    };
    let w = tokio::spawn(writer.run(out_rx, stop_rx, opts.keepalive, done_tx));
    let r = tokio::spawn(reader.run(inc_tx, opts.dead_after, stop_tx));
    let tasks = vec![w.abort_handle(), r.abort_handle()];
    Transport::new(state, out_tx, inc_rx, opts.max_message, Kind::Encrypted { info, done: done_rx, tasks })
}

struct Writer {
    raw: Arc<Transport>,
    key: zeroize::Zeroizing<[u8; 32]>,
    counter: u64,
    info: Arc<EncryptedInfo>,
    padding: Padding,
    state: Arc<State>,
}

impl Writer {
    /// Seal one piece with the next counter and send it on the raw transport.
    async fn send_piece(&mut self, data: &[u8], text: bool) -> Result<()> {
        if self.counter >= COUNTER_LIMIT {
            return Err(net_error("LAMA-NET-CLOSED", "the frame counter is exhausted"));
        }
        let (r, filler) = self.padding.next();
        let frame = crypto::frame_seal(&self.key[..], self.counter, data, u8::from(text), r, filler)?;
        self.counter += 2;
        self.info.bytes_sent.fetch_add(frame.len() as u64, Ordering::Relaxed);
        self.raw.send(Message::Binary(frame)).await
    }

    /// One application message: escaped (conn §2.6 then §2.5) or fragmented.
    async fn send_message(&mut self, m: Message) -> Result<()> {
        match m {
            Message::Text(s) => {
                // conn §2.6: strings of fewer than 16384 UTF-16 code units go whole
                let whole = s.len() < FRAGMENT_SIZE / 4 || s.encode_utf16().count() < FRAGMENT_SIZE / 4;
                if whole {
                    let mut s = s;
                    if s.starts_with(MARK_BINARY) || s.starts_with(MARK_STRING) || s.starts_with(MARK_END) {
                        s.push('x');
                    }
                    if s.starts_with(KEEPALIVE) {
                        s.push('x');
                    }
                    self.send_piece(s.as_bytes(), true).await
                } else {
                    self.send_fragments(s.as_bytes(), MARK_STRING).await
                }
            }
            Message::Binary(b) => {
                if b.len() <= FRAGMENT_SIZE {
                    self.send_piece(&b, false).await
                } else {
                    self.send_fragments(&b, MARK_BINARY).await
                }
            }
        }
    }

    async fn send_fragments(&mut self, data: &[u8], mark: &str) -> Result<()> {
        self.send_piece(mark.as_bytes(), true).await?;
        for chunk in data.chunks(FRAGMENT_SIZE) {
            self.send_piece(chunk, false).await?;
        }
        self.send_piece(MARK_END.as_bytes(), true).await
    }

    async fn run(mut self, mut out: PipeRx, mut stop: watch::Receiver<bool>, keepalive: Duration, done: watch::Sender<bool>) {
        loop {
            let frame = tokio::select! {
                biased;
                f = out.recv() => f,
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(keepalive) => {
                    // conn §2.5: something at least every `keepalive` seconds
                    if self.send_piece(KEEPALIVE.as_bytes(), true).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match frame {
                Some(Frame::Msg(m, _)) => {
                    let sent = tokio::select! {
                        biased;
                        _ = stopped(&mut stop) => break,
                        r = self.send_message(m) => r,
                    };
                    if sent.is_err() {
                        break;
                    }
                    self.info.messages_sent.fetch_add(1, Ordering::Relaxed);
                }
                Some(Frame::Close(_, reason)) => {
                    // the reason is already in the reference's form (Transport::close_now)
                    self.info.mark_closed();
                    self.raw.close(&reason).await;
                    break;
                }
                None => break,
            }
        }
        drop(out);
        // the raw transport ends with this connection (after a failure of ours or the peer's
        // close it is closed already: close is idempotent)
        let reason = self.state.get().unwrap_or_else(|| close_text(REASON_LOST));
        self.state.set(&reason);
        self.info.mark_closed();
        self.raw.close(&reason).await;
        done.send_replace(true);
    }
}

/// Resolves once the reader asked the writer to stop (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct Reader {
    raw: Arc<Transport>,
    key: zeroize::Zeroizing<[u8; 32]>,
    counter: u64,
    info: Arc<EncryptedInfo>,
    state: Arc<State>,
    max_message: usize,
    /// conn §2.6: the fragments of a message being collected (true: a string) and their size.
    collecting: Option<(bool, Vec<u8>)>,
}

/// What the reader does with a frame.
enum Step {
    Deliver(Message),
    Nothing,
    /// Close with this reason (already in the reference's form).
    Fail(String),
}

impl Reader {
    fn handle(&mut self, m: Message) -> Step {
        let mut wire = match m {
            Message::Text(_) => return Step::Fail(close_text(REASON_STRING)),
            Message::Binary(b) => b,
        };
        let (flags, start) = match crypto::frame_open_in_place(&self.key[..], self.counter, &mut wire) {
            Ok(v) => v,
            Err(_) => return Step::Fail(close_text(REASON_DECRYPTION)),
        };
        self.counter += 2;
        // conn §2.6: a binary fragment is copied once, from the opened frame to the message
        // being collected (not first moved to the front of its frame)
        if flags & 1 == 0 {
            if let Some((_, buf)) = self.collecting.as_mut() {
                let piece = &wire[start..];
                if buf.len() + piece.len() > self.max_message {
                    self.collecting = None;
                    return Step::Fail(close_text(&size_reason(self.max_message)));
                }
                buf.extend_from_slice(piece);
                return Step::Nothing;
            }
        }
        wire.drain(..start);
        let data = wire;
        let msg = if flags & 1 == 1 {
            match String::from_utf8(data) {
                Ok(s) => Message::Text(s),
                Err(_) => return Step::Fail(close_text(REASON_DECRYPTION)),
            }
        } else {
            Message::Binary(data)
        };
        // conn §2.5: keepalive swallowed, escaped strings unescaped
        let msg = match msg {
            Message::Text(s) if s == KEEPALIVE => return Step::Nothing,
            Message::Text(mut s) if s.starts_with(KEEPALIVE) => {
                s.pop();
                Message::Text(s)
            }
            m => m,
        };
        // conn §2.6: markers switch state; fragments collect
        match (msg, self.collecting.as_mut()) {
            (Message::Text(s), None) if s == MARK_BINARY || s == MARK_STRING => {
                self.collecting = Some((s == MARK_STRING, Vec::new()));
                Step::Nothing
            }
            (Message::Text(s), None) if s == MARK_END => {
                Step::Fail(close_text("Error: fragmentation_end without fragmentation_start"))
            }
            (Message::Text(mut s), None) => {
                if s.starts_with(MARK_BINARY) || s.starts_with(MARK_STRING) || s.starts_with(MARK_END) {
                    s.pop();
                }
                Step::Deliver(Message::Text(s))
            }
            (Message::Binary(b), None) => Step::Deliver(Message::Binary(b)),
            (Message::Binary(b), Some((_, buf))) => {
                if buf.len() + b.len() > self.max_message {
                    self.collecting = None;
                    return Step::Fail(close_text(&size_reason(self.max_message)));
                }
                buf.extend_from_slice(&b);
                Step::Nothing
            }
            (Message::Text(s), Some(_)) if s == MARK_END => {
                let (text, buf) = self.collecting.take().expect("collecting");
                if text {
                    match String::from_utf8(buf) {
                        Ok(s) => Step::Deliver(Message::Text(s)),
                        Err(_) => Step::Fail(close_text("Error: a fragmented string is not valid UTF-8")),
                    }
                } else {
                    Step::Deliver(Message::Binary(buf))
                }
            }
            (Message::Text(_), Some(_)) => Step::Fail(close_text("Error: a string arrived between fragments")),
        }
    }

    /// Close the connection from here (a bad frame, no lifesign): the reason travels to the
    /// peer in the raw transport's close and ends our `recv`.
    async fn close(&self, inc: &PipeTx, reason: String) {
        if self.state.set(&reason) {
            self.info.mark_closed();
            self.raw.close(&reason).await;
        }
        inc.send_close(CODE_NORMAL, self.state.get().unwrap_or(reason));
    }

    async fn run(mut self, inc: PipeTx, dead_after: Duration, stop: watch::Sender<bool>) {
        loop {
            let m = match tokio::time::timeout(dead_after, self.raw.recv()).await {
                Err(_) => {
                    self.close(&inc, terminate_text(REASON_KEEPALIVE)).await;
                    break;
                }
                Ok(None) => {
                    // the peer closed (its reason), the raw transport was lost, or we closed
                    let reason = self.raw.close_reason().unwrap_or_else(|| REASON_LOST.to_string());
                    self.state.set(&reason);
                    self.info.mark_closed();
                    inc.send_close(CODE_NORMAL, self.state.get().unwrap_or(reason));
                    break;
                }
                Ok(Some(m)) => m,
            };
            self.info.bytes_received.fetch_add(m.len() as u64, Ordering::Relaxed);
            match self.handle(m) {
                Step::Nothing => {}
                Step::Deliver(m) => {
                    self.info.messages_received.fetch_add(1, Ordering::Relaxed);
                    // an error means the connection was closed here: discard
                    let _ = inc.send(m).await;
                }
                Step::Fail(reason) => {
                    self.close(&inc, reason).await;
                    break;
                }
            }
        }
        stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws_listen;

    fn pair(seed: u8) -> ([u8; 32], [u8; 32]) {
        let sk = [seed; 32];
        (crypto::box_public_from_secret(&sk).unwrap(), sk)
    }

    /// Handshake over a direct WebSocket, messages both ways (one fragmented), the reference's
    /// close reason on both sides; a wrong target key is refused on both sides.
    #[test]
    fn handshake_messages_close_and_refusal() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let (a, b) = (pair(1), pair(2));
            let l = ws_listen("127.0.0.1", 0, None).await.unwrap();
            let url = format!("ws://127.0.0.1:{}", l.port());
            let (c, s) = tokio::join!(encrypted_connect(&url, &a.0, &a.1, &b.0, EncryptedOptions::default()), async {
                let raw = Arc::new(l.accept().await.unwrap());
                encrypted_accept(raw, &[b], EncryptedOptions::default()).await
            });
            let (c, s) = (c.unwrap(), s.unwrap());
            assert_eq!(c.encrypted().unwrap().remote_key, b.0);
            assert_eq!(s.encrypted().unwrap().remote_key, a.0);
            let big = vec![7u8; 200_000];
            for m in [Message::Text("keepalive".into()), Message::Binary(big), Message::Text("fragmentation_end".into())] {
                c.send(m.clone()).await.unwrap();
                assert_eq!(s.recv().await, Some(m));
            }
            s.close("bye").await;
            assert_eq!(c.recv().await, None);
            assert_eq!(c.close_reason().as_deref(), Some("Close called: bye"));
            assert_eq!(s.close_reason().as_deref(), Some("Close called: bye"));

            let other = pair(3).0;
            let (c, s) = tokio::join!(encrypted_connect(&url, &a.0, &a.1, &other, EncryptedOptions::default()), async {
                let raw = Arc::new(l.accept().await.unwrap());
                encrypted_accept(raw, &[b], EncryptedOptions::default()).await
            });
            assert_eq!(c.unwrap_err().code, "LAMA-NET-REFUSED");
            assert_eq!(s.unwrap_err().code, "LAMA-NET-REFUSED");
        });
    }
}
