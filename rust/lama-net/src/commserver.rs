//! The comm server (docs/connections.md §2, spec connections.md §3): a rendezvous relay that
//! speaks the reference's protocol exactly, with the limits the reference lacks.
//!
//! Per accepted WebSocket (each its own tokio task):
//! - the first message decides the role (conn §3.1): `register` → challenge authentication
//!   (conn §3.2) → a *spare* indexed by its key, pinged every `ping_interval` (conn §2.8);
//!   `communication_request` → pop the target key's newest spare (LIFO, conn §3.3), send it
//!   `connection_handover` and the request re-serialised in lowercase hex, then relay.
//! - Relay: every frame verbatim both ways (text stays text, binary stays binary); when one side
//!   closes, the other is closed with code 1000 and the same reason.
//!
//! Limits (issue 9; the reference has none, conn §9.3 item 8): a socket that has not
//! authenticated (or sent its `communication_request`) within `auth_timeout` is closed; a frame
//! above `max_message` closes its connection (and, relayed, the pair); at most
//! `max_spares_per_key` spares per key and `max_spares_per_address` per client IP; every
//! socket's buffers are the transport's bounded pipes (pipe.rs), so a slow reader holds the
//! relay back and the relay stops reading its sender (TCP back-pressure) instead of buffering;
//! `close()` closes spares and relayed pairs and waits for every task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lama_core::crypto::{box_keypair, box_open_embedded, box_seal_embedded, random_bytes};
use lama_core::Result;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout_at, Instant};

use crate::mailbox::{self, Mailbox, MailboxOptions};
use crate::transport::{Message, Transport};
use crate::ws::{config, spawn_ws};
use crate::{net_error, size_reason, DEFAULT_MAX_MESSAGE, REASON_LOST};

/// Close reasons (conn §2.3: `"Close called: " + message`, `"Terminate called: " + message`).
pub const REASON_NO_LISTENER: &str = "Close called: No listening connection for the specified publicKey.";
pub const REASON_AUTH_FAILED: &str = "Close called: Client authentication failed.";
pub const REASON_MALFORMED: &str = "Close called: Received unexpected or malformed message from client.";
pub const REASON_PING_TIMEOUT: &str = "Terminate called: Ping: Connection timed out";
/// lama's limits (not in the reference).
pub const REASON_AUTH_TIMEOUT: &str = "Close called: Authentication timed out.";
pub const REASON_KEY_LIMIT: &str = "Close called: Too many spare connections for this publicKey.";
pub const REASON_ADDRESS_LIMIT: &str = "Close called: Too many spare connections from this address.";
pub const REASON_SHUTDOWN: &str = "Close called: Comm server shut down.";

/// The options of [`comm_server`] (defaults: the reference's timers, issue 9's limits).
#[derive(Debug, Clone)]
pub struct CommServerOptions {
    /// P of conn §2.8: a ping after P without a pong (reference: 25 s).
    pub ping_interval: Duration,
    /// R of conn §2.8: the pong must arrive within R of the ping (reference: 1 s).
    pub pong_timeout: Duration,
    /// A socket must authenticate (or send its communication_request) within this time.
    pub auth_timeout: Duration,
    /// The largest frame accepted (and relayed), in bytes.
    pub max_message: usize,
    pub max_spares_per_key: usize,
    pub max_spares_per_address: usize,
    /// docs/cluster.md: the NATS URL of the cluster (`None`: a single node, no NATS) and the
    /// URL other nodes reach this node at (`None`: the bound `ws://host:port`).
    pub nats: Option<String>,
    pub advertise: Option<String>,
    /// docs/cluster.md §4: the cluster lookup rate limit (used with `nats` only).
    pub lookup_limits: crate::cluster::LookupLimits,
    /// lama's store-and-forward mailbox (docs/mailbox.md); `None`: not offered.
    pub mailbox: Option<MailboxOptions>,
}

impl Default for CommServerOptions {
    fn default() -> Self {
        CommServerOptions {
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(1),
            auth_timeout: Duration::from_secs(10),
            max_message: DEFAULT_MAX_MESSAGE,
            max_spares_per_key: 16,
            max_spares_per_address: 256,
            nats: None,
            advertise: None,
            lookup_limits: Default::default(),
            mailbox: None,
        }
    }
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// What the server did since it started (gauges: `open`, `spares`, `relays`).
        #[derive(Default)]
        struct Counters { $($name: AtomicU64),* }
        impl Counters {
            fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed))),*]
            }
        }
    };
}

counters!(
    connections,      // WebSockets accepted (handshake done)
    open,             // WebSockets open now
    registrations,    // successful registrations
    spares,           // registered spares waiting now
    requests,         // communication_requests received
    handovers,        // spares handed over (relays started)
    relays,           // relayed pairs open now
    relayed_frames,   // frames forwarded (both directions)
    relayed_bytes,    // payload bytes forwarded (both directions)
    refused,          // communication_requests without a spare + spares over a limit
    auth_failures,    // wrong authentication_response
    auth_timeouts,    // WebSockets closed by auth_timeout
    malformed,        // first messages that were not register/communication_request etc.
    oversized,        // connections closed for a frame above max_message
    pings,            // pings sent
    ping_timeouts,    // spares dropped for a missing pong
    forwarded,        // requests relayed to another cluster node (docs/cluster.md)
    cluster_lookups,  // NATS lookups of a key without a spare here
    cluster_answers,  // lookups of other nodes answered with this node's URL
    cluster_throttled, // requests refused without a lookup: over the lookup rate limit
);

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn sub(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

/// Asks a spare to hand itself over: the spare answers with its transport (after sending
/// `connection_handover` and the request), or `None` if it died meanwhile.
struct Handover {
    request: String,
    reply: oneshot::Sender<Option<Transport>>,
}

struct Spare {
    id: u64,
    ip: IpAddr,
    tx: oneshot::Sender<Handover>,
}

#[derive(Default)]
struct Spares {
    by_key: HashMap<String, Vec<Spare>>,
    per_ip: HashMap<IpAddr, usize>,
    next_id: u64,
}

impl Spares {
    fn count_ip(&mut self, ip: IpAddr, delta: isize) {
        let n = self.per_ip.entry(ip).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.per_ip.remove(&ip);
        }
    }
}

pub(crate) struct Inner {
    pub(crate) opts: CommServerOptions,
    public: [u8; 32],
    secret: [u8; 32],
    spares: Mutex<Spares>,
    counters: Counters,
    pub(crate) shutdown: watch::Receiver<bool>,
    mailbox: Option<Arc<Mailbox>>,
    pub(crate) cluster: Option<crate::cluster::Cluster>,
}

impl Inner {
    pub(crate) fn count_forwarded(&self) {
        add(&self.counters.forwarded, 1);
    }

    pub(crate) fn count_cluster_answer(&self) {
        add(&self.counters.cluster_answers, 1);
    }

    /// A cluster lookup sent (`true`) or refused by the rate limit (`false`).
    pub(crate) fn count_cluster_lookup(&self, sent: bool) {
        add(if sent { &self.counters.cluster_lookups } else { &self.counters.cluster_throttled }, 1);
    }

    /// docs/cluster.md §2: a key's first spare arrived or its last one left. For an arrival,
    /// what tells when the node's subscription has reached NATS.
    fn note_spares(&self, key: &str, present: bool) -> Option<oneshot::Receiver<()>> {
        self.cluster.as_ref().map(|c| c.spares(key, present))
    }

    pub(crate) fn has_spare(&self, key: &str) -> bool {
        self.lock().by_key.contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Spares> {
        self.spares.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the newest spare of `key` (LIFO, conn §3.3).
    fn pop(&self, key: &str) -> Option<Spare> {
        let mut s = self.lock();
        let list = s.by_key.get_mut(key)?;
        let spare = list.pop()?;
        if list.is_empty() {
            s.by_key.remove(key);
            self.note_spares(key, false);
        }
        s.count_ip(spare.ip, -1);
        sub(&self.counters.spares);
        Some(spare)
    }

    /// Forget spare `id` (it closed). No-op if it was popped for a handover.
    fn remove(&self, key: &str, id: u64) {
        let mut s = self.lock();
        let Some(list) = s.by_key.get_mut(key) else { return };
        let Some(i) = list.iter().position(|sp| sp.id == id) else { return };
        let spare = list.remove(i);
        if list.is_empty() {
            s.by_key.remove(key);
            self.note_spares(key, false);
        }
        s.count_ip(spare.ip, -1);
        sub(&self.counters.spares);
    }

    /// `Err(reason)` when a spare for `key` from `ip` would exceed a limit.
    fn check_limits(&self, s: &Spares, key: &str, ip: IpAddr) -> std::result::Result<(), &'static str> {
        if s.by_key.get(key).map_or(0, Vec::len) >= self.opts.max_spares_per_key {
            return Err(REASON_KEY_LIMIT);
        }
        if s.per_ip.get(&ip).copied().unwrap_or(0) >= self.opts.max_spares_per_address {
            return Err(REASON_ADDRESS_LIMIT);
        }
        Ok(())
    }
}

/// A running comm server (made by [`comm_server`]).
pub struct CommServer {
    port: u16,
    url: String,
    inner: Arc<Inner>,
    shutdown: watch::Sender<bool>,
    /// Every task holds a sender; `close` waits until all are gone.
    done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// Listen on `host` (its first address) and `port` (0: any free port) and serve conn §3.
pub async fn comm_server(host: &str, port: u16, opts: CommServerOptions) -> Result<CommServer> {
    let addr: SocketAddr = match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| net_error("LAMA-ARG", format!("host {host:?} has no address")))?,
        Err(e) => return Err(net_error("LAMA-ARG", format!("cannot resolve host {host:?}: {e}"))),
    };
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| net_error("LAMA-NET-LISTEN", format!("cannot listen on {addr}: {e}")))?;
    let local = tcp.local_addr().map_err(|e| net_error("LAMA-NET-LISTEN", e.to_string()))?;
    let url = match local.ip() {
        IpAddr::V6(ip) => format!("ws://[{ip}]:{}", local.port()),
        IpAddr::V4(ip) => format!("ws://{ip}:{}", local.port()),
    };
    // the server's key pair is fresh at every start (conn §3.2)
    let mailbox = match &opts.mailbox {
        Some(m) => {
            let m = m.clone();
            let mb = tokio::task::spawn_blocking(move || Mailbox::open(&m))
                .await
                .map_err(|e| net_error("LAMA-ARG", format!("mailbox: {e}")))??;
            Some(Arc::new(mb))
        }
        None => None,
    };
    let (public, secret) = box_keypair();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let cluster = match &opts.nats {
        Some(nats) => Some(crate::cluster::Cluster::connect(nats, opts.lookup_limits).await?),
        None => None,
    };
    let advertise = opts.advertise.clone().unwrap_or_else(|| url.clone());
    let inner = Arc::new(Inner {
        public,
        secret,
        spares: Mutex::new(Spares::default()),
        counters: Counters::default(),
        cluster,
        opts,
        shutdown: shutdown_rx,
        mailbox,
    });
    crate::cluster::Cluster::start(&inner, advertise);
    let (done_tx, done_rx) = mpsc::channel(1);
    tokio::spawn(accept_loop(inner.clone(), tcp, done_tx));
    Ok(CommServer { port: local.port(), url, inner, shutdown: shutdown_tx, done: tokio::sync::Mutex::new(done_rx) })
}

impl CommServer {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://host:port` of the bound address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The counters (see `Counters`), in a fixed order.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = self.inner.counters.snapshot();
        if let Some(mb) = &self.inner.mailbox {
            v.extend(mb.counters()); // docs/mailbox.md §5
        }
        v
    }

    /// Stop accepting, close every spare and relayed pair ([`REASON_SHUTDOWN`]) and wait for
    /// every connection task to end. Idempotent.
    pub async fn close(&self) {
        self.shutdown.send_replace(true);
        let mut done = self.done.lock().await;
        while done.recv().await.is_some() {}
    }
}

impl Drop for CommServer {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

pub(crate) async fn shut(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_loop(inner: Arc<Inner>, tcp: TcpListener, done: mpsc::Sender<()>) {
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            _ = shut(inner.shutdown.clone()) => return,
            r = tcp.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // out of file descriptors and the like: try again shortly
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(inner.clone(), stream, peer, done.clone()));
    }
}

/// Decrements `open` when the connection task ends.
struct OpenGuard<'a>(&'a Counters);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        sub(&self.0.open);
    }
}

enum First {
    Register([u8; 32]),
    /// source, target, and whether another cluster node forwarded it (docs/cluster.md)
    Request([u8; 32], [u8; 32], bool),
}

/// The hex of a key field: a string of hex digits (either case) of exactly 32 bytes.
fn key_field(obj: &serde_json::Map<String, Value>, name: &str) -> std::result::Result<[u8; 32], String> {
    let s = obj.get(name).and_then(Value::as_str).ok_or_else(|| REASON_MALFORMED.to_string())?;
    let bytes = hex::decode(s).map_err(|_| REASON_MALFORMED.to_string())?;
    // one.core ensurePublicKey (conn §3.2)
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| "Close called: Error: A public key must be 32 bytes.".to_string())
}

/// A text message as a JSON object with a `command`, or the close reason.
fn parse_command(m: &Message) -> std::result::Result<(String, serde_json::Map<String, Value>), String> {
    let Message::Text(t) = m else { return Err(REASON_MALFORMED.to_string()) };
    let v: Value = serde_json::from_str(t)
        .map_err(|e| crate::truncate_reason(&format!("Close called: Received message that does not conform to JSON: {e}")))?;
    let Value::Object(obj) = v else { return Err(REASON_MALFORMED.to_string()) };
    let Some(cmd) = obj.get("command").and_then(Value::as_str) else { return Err(REASON_MALFORMED.to_string()) };
    Ok((cmd.to_string(), obj))
}

fn parse_first(m: &Message) -> std::result::Result<First, String> {
    let (cmd, obj) = parse_command(m)?;
    match cmd.as_str() {
        "register" => Ok(First::Register(key_field(&obj, "publicKey")?)),
        "communication_request" => {
            let hop = obj.contains_key(crate::cluster::HOP_FIELD);
            Ok(First::Request(key_field(&obj, "sourcePublicKey")?, key_field(&obj, "targetPublicKey")?, hop))
        }
        _ => Err(REASON_MALFORMED.to_string()),
    }
}

/// The initial WebSocket read buffer of each server socket (see `connection`).
const SPARE_READ_BUFFER: usize = 4096;

async fn connection(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr, _done: mpsc::Sender<()>) {
    let c = &inner.counters;
    let deadline = Instant::now() + inner.opts.auth_timeout;
    let max = inner.opts.max_message;
    // A comm server holds thousands of idle spares: tungstenite's default 128 KiB read
    // buffer is allocated and zero-filled per socket (141 KiB RSS per spare measured,
    // benches/RESULTS.md). A frame whose length is known still gets the whole buffer it
    // needs (tungstenite reserves the frame length), so relayed large messages lose nothing.
    let hs = tokio_tungstenite::accept_async_with_config(
        stream,
        Some(config(max).read_buffer_size(SPARE_READ_BUFFER)),
    );
    let ws = tokio::select! {
        _ = shut(inner.shutdown.clone()) => return,
        r = timeout_at(deadline, hs) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(_)) => return,
            Err(_) => return, // a TCP socket that never completed the handshake: dropped
        },
    };
    add(&c.connections, 1);
    add(&c.open, 1);
    let _open = OpenGuard(c);
    let t = spawn_ws(ws, max);
    let first = tokio::select! {
        _ = shut(inner.shutdown.clone()) => { t.close(REASON_SHUTDOWN).await; return }
        r = timeout_at(deadline, t.recv()) => r,
    };
    let first = match first {
        Err(_) => {
            add(&c.auth_timeouts, 1);
            t.close(REASON_AUTH_TIMEOUT).await;
            return;
        }
        Ok(None) => {
            note_close(&inner, &t);
            return;
        }
        Ok(Some(m)) => m,
    };
    if let Some(mb) = &inner.mailbox {
        if let Ok((cmd, obj)) = parse_command(&first) {
            if cmd.starts_with("mailbox_") {
                mailbox_request(&inner, mb, t, &cmd, obj, deadline).await;
                return;
            }
        }
    }
    match parse_first(&first) {
        Err(reason) => {
            add(&c.malformed, 1);
            t.close(&reason).await;
        }
        Ok(First::Register(key)) => register(&inner, t, key, peer, deadline).await,
        Ok(First::Request(source, target, hop)) => request(&inner, t, source, target, hop, peer.ip()).await,
    }
}

/// lama's mailbox extension (docs/mailbox.md §2): only a client that asks for it sees it.
async fn mailbox_request(
    inner: &Arc<Inner>,
    mb: &Arc<Mailbox>,
    t: Transport,
    cmd: &str,
    obj: serde_json::Map<String, Value>,
    deadline: Instant,
) {
    let c = &inner.counters;
    let idle = inner.opts.auth_timeout;
    let serve = async {
        match cmd {
            "mailbox_info" => {
                if t.send(Message::Text(mb.info_message())).await.is_ok() {
                    t.close("Close called.").await;
                }
                mailbox::Outcome::Done
            }
            "mailbox_deposit" => {
                mailbox::serve_deposit(mb, &inner.public, &inner.secret, &t, obj, key_field, deadline, idle, REASON_MALFORMED)
                    .await
            }
            "mailbox_fetch" => match key_field(&obj, "publicKey") {
                Err(reason) => mailbox::Outcome::Refuse(reason),
                Ok(key) => {
                    mailbox::serve_fetch(mb, &inner.public, &inner.secret, &t, key, deadline, idle, REASON_MALFORMED)
                        .await
                }
            },
            _ => mailbox::Outcome::Refuse(REASON_MALFORMED.to_string()),
        }
    };
    let outcome = tokio::select! {
        _ = shut(inner.shutdown.clone()) => { t.close(REASON_SHUTDOWN).await; return }
        o = serve => o,
    };
    match outcome {
        mailbox::Outcome::Done => {}
        mailbox::Outcome::AuthFailed => {
            add(&c.auth_failures, 1);
            t.close(REASON_AUTH_FAILED).await;
        }
        mailbox::Outcome::Refuse(reason) => {
            add(&c.malformed, 1);
            t.close(&reason).await;
        }
    }
}

/// Count a connection closed for an oversized frame.
fn note_close(inner: &Inner, t: &Transport) {
    if t.close_reason().as_deref() == Some(size_reason(inner.opts.max_message).as_str()) {
        add(&inner.counters.oversized, 1);
    }
}

/// conn §3.2, the server side; then the spare's life until its handover or close.
async fn register(inner: &Arc<Inner>, t: Transport, key: [u8; 32], peer: SocketAddr, deadline: Instant) {
    let c = &inner.counters;
    let key_hex = hex::encode(key);
    // refuse early (before spending a challenge) when a limit is already reached
    let early = {
        let s = inner.lock();
        inner.check_limits(&s, &key_hex, peer.ip())
    };
    if let Err(reason) = early {
        add(&c.refused, 1);
        t.close(reason).await;
        return;
    }
    let challenge = match random_bytes(64) {
        Ok(b) => b,
        Err(e) => {
            t.close(&format!("Close called: Error: {e}")).await;
            return;
        }
    };
    let sealed = match box_seal_embedded(&challenge, &inner.secret, &key, None) {
        Ok(b) => b,
        Err(e) => {
            // a key of small order has no shared secret (one.core's crypto error)
            t.close(&format!("Close called: Error: {e}")).await;
            return;
        }
    };
    let req = format!(
        r#"{{"command":"authentication_request","publicKey":"{}","challenge":"{}"}}"#,
        hex::encode(inner.public),
        hex::encode(&sealed)
    );
    if t.send(Message::Text(req)).await.is_err() {
        return;
    }
    let answer = tokio::select! {
        _ = shut(inner.shutdown.clone()) => { t.close(REASON_SHUTDOWN).await; return }
        r = timeout_at(deadline, t.recv()) => r,
    };
    let answer = match answer {
        Err(_) => {
            add(&c.auth_timeouts, 1);
            t.close(REASON_AUTH_TIMEOUT).await;
            return;
        }
        Ok(None) => {
            note_close(inner, &t);
            return;
        }
        Ok(Some(m)) => m,
    };
    let response = match parse_command(&answer) {
        Err(reason) => {
            add(&c.malformed, 1);
            t.close(&reason).await;
            return;
        }
        Ok((cmd, obj)) if cmd == "authentication_response" => match obj.get("response").and_then(Value::as_str) {
            Some(s) => hex::decode(s).ok(),
            None => {
                add(&c.malformed, 1);
                t.close(REASON_MALFORMED).await;
                return;
            }
        },
        Ok(_) => {
            add(&c.malformed, 1);
            t.close(REASON_MALFORMED).await;
            return;
        }
    };
    // the listener proves its secret key: it answers NOT(challenge) (conn §1.3)
    let expected: Vec<u8> = challenge.iter().map(|b| !b).collect();
    let ok = response
        .and_then(|r| box_open_embedded(&r, &inner.secret, &key).ok())
        .is_some_and(|plain| constant_time_eq(&plain, &expected));
    if !ok {
        add(&c.auth_failures, 1);
        t.close(REASON_AUTH_FAILED).await;
        return;
    }
    let (tx, rx) = oneshot::channel();
    let mut subscribed = None;
    let id = {
        let mut s = inner.lock();
        match inner.check_limits(&s, &key_hex, peer.ip()) {
            Err(reason) => Err(reason),
            Ok(()) => {
                s.next_id += 1;
                let id = s.next_id;
                let list = s.by_key.entry(key_hex.clone()).or_default();
                list.push(Spare { id, ip: peer.ip(), tx });
                if list.len() == 1 {
                    subscribed = inner.note_spares(&key_hex, true);
                }
                s.count_ip(peer.ip(), 1);
                Ok(id)
            }
        }
    };
    let id = match id {
        Ok(id) => id,
        Err(reason) => {
            add(&c.refused, 1);
            t.close(reason).await;
            return;
        }
    };
    add(&c.spares, 1);
    add(&c.registrations, 1);
    if let Some(ready) = subscribed {
        // docs/cluster.md §2: a registered listener is reachable from every node at once
        let _ = tokio::time::timeout(crate::cluster::SUBSCRIBE_WAIT, ready).await;
    }
    let ms = inner.opts.ping_interval.as_millis();
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        ip => ip,
    };
    // the fork's form (conn §3.1): pingInterval, clientIp, clientPort
    let success = format!(
        r#"{{"command":"authentication_success","pingInterval":{ms},"clientIp":"{ip}","clientPort":{}}}"#,
        peer.port()
    );
    if t.send(Message::Text(success)).await.is_err() {
        inner.remove(&key_hex, id);
        return;
    }
    spare(inner, t, &key_hex, id, rx).await;
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_pong(m: &Message) -> bool {
    matches!(parse_command(m), Ok((cmd, _)) if cmd == "pong")
}

const PING: &str = r#"{"command":"ping"}"#;

/// A registered spare: ping every P, drop it when a pong is R late (conn §2.8), until a
/// communication_request takes it.
async fn spare(inner: &Arc<Inner>, t: Transport, key_hex: &str, id: u64, mut rx: oneshot::Receiver<Handover>) {
    let c = &inner.counters;
    let opts = &inner.opts;
    let mut next_ping = Instant::now() + opts.ping_interval;
    let mut pong_due: Option<Instant> = None;
    let handover = loop {
        tokio::select! {
            biased;
            _ = shut(inner.shutdown.clone()) => {
                inner.remove(key_hex, id);
                t.close(REASON_SHUTDOWN).await;
                return;
            }
            h = &mut rx => match h {
                Ok(h) => break h,
                Err(_) => { // the entry was dropped without a handover (cannot happen while registered)
                    inner.remove(key_hex, id);
                    t.close(REASON_SHUTDOWN).await;
                    return;
                }
            },
            m = t.recv() => match m {
                None => { inner.remove(key_hex, id); note_close(inner, &t); return; }
                Some(m) => if is_pong(&m) {
                    pong_due = None;
                    next_ping = Instant::now() + opts.ping_interval;
                }, // anything else on a spare is ignored (a client must not send it)
            },
            _ = sleep_until(next_ping), if pong_due.is_none() => {
                add(&c.pings, 1);
                if t.send(Message::Text(PING.into())).await.is_err() {
                    inner.remove(key_hex, id);
                    return;
                }
                pong_due = Some(Instant::now() + opts.pong_timeout);
            }
            _ = sleep_until(pong_due.unwrap_or_else(Instant::now)), if pong_due.is_some() => {
                inner.remove(key_hex, id);
                add(&c.ping_timeouts, 1);
                t.close(REASON_PING_TIMEOUT).await;
                return;
            }
        }
    };
    // popped for a handover: a ping still outstanding waits for its pong (or the timeout)
    if let Some(due) = pong_due {
        loop {
            match timeout_at(due, t.recv()).await {
                Err(_) => {
                    add(&c.ping_timeouts, 1);
                    let _ = handover.reply.send(None);
                    t.close(REASON_PING_TIMEOUT).await;
                    return;
                }
                Ok(None) => {
                    let _ = handover.reply.send(None);
                    return;
                }
                Ok(Some(m)) if is_pong(&m) => break,
                Ok(Some(_)) => {}
            }
        }
    }
    let sent = async {
        t.send(Message::Text(r#"{"command":"connection_handover"}"#.into())).await?;
        t.send(Message::Text(handover.request.clone())).await
    };
    if sent.await.is_err() {
        let _ = handover.reply.send(None);
        return;
    }
    if let Err(Some(t)) = handover.reply.send(Some(t)) {
        // the initiator went away meanwhile
        t.close(REASON_LOST).await;
    }
}

/// conn §3.3: splice the initiator to a spare of the target key, or refuse.
async fn request(inner: &Arc<Inner>, t: Transport, source: [u8; 32], target: [u8; 32], hop: bool, ip: IpAddr) {
    let c = &inner.counters;
    add(&c.requests, 1);
    let target_hex = hex::encode(target);
    // re-serialised from the bytes: lowercase hex
    let request = format!(
        r#"{{"command":"communication_request","sourcePublicKey":"{}","targetPublicKey":"{}"}}"#,
        hex::encode(source),
        target_hex
    );
    loop {
        let Some(spare) = inner.pop(&target_hex) else {
            if !hop && inner.cluster.is_some() {
                // docs/cluster.md §3: another node may hold the key's spares
                let Err(t) = crate::cluster::forward(inner, t, &request, &target_hex, ip).await else { return };
                add(&c.refused, 1);
                t.close(REASON_NO_LISTENER).await;
                return;
            }
            add(&c.refused, 1);
            t.close(REASON_NO_LISTENER).await;
            return;
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if spare.tx.send(Handover { request: request.clone(), reply: reply_tx }).is_err() {
            continue; // that spare's task ended meanwhile: the next one
        }
        let got = tokio::select! {
            _ = shut(inner.shutdown.clone()) => { t.close(REASON_SHUTDOWN).await; return }
            r = reply_rx => r,
        };
        if let Ok(Some(s)) = got {
            relay(inner, t, s).await;
            return;
        }
    }
}

/// Forward frames both ways until one side closes; close the other with the same reason.
pub(crate) async fn relay(inner: &Arc<Inner>, a: Transport, b: Transport) {
    let c = &inner.counters;
    add(&c.handovers, 1);
    add(&c.relays, 1);
    let reason = tokio::select! {
        r = pump(c, &a, &b) => r,
        r = pump(c, &b, &a) => r,
        _ = shut(inner.shutdown.clone()) => REASON_SHUTDOWN.to_string(),
    };
    if reason == size_reason(inner.opts.max_message) {
        add(&c.oversized, 1);
    }
    tokio::join!(a.close(&reason), b.close(&reason));
    sub(&c.relays);
}

/// Move messages `from` → `to`; the close reason of whichever side ended it.
async fn pump(c: &Counters, from: &Transport, to: &Transport) -> String {
    loop {
        let Some(m) = from.recv().await else {
            return from.close_reason().unwrap_or_else(|| REASON_LOST.to_string());
        };
        let n = m.len() as u64;
        // waits while `to` is behind: `from` is then not read, its socket fills (back-pressure)
        if to.send(m).await.is_err() {
            return to.close_reason().unwrap_or_else(|| REASON_LOST.to_string());
        }
        add(&c.relayed_frames, 1);
        add(&c.relayed_bytes, n);
    }
}
