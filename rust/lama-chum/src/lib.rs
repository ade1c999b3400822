//! lama-chum: the CHUM v8 session of lama as a sans-I/O state machine (docs/chum-session.md §2,
//! the wire protocol is chum.md). Bytes and time go in, bytes and events come out; it never
//! touches a socket or a clock (like quinn-proto or h11). A driver (rust/lama-net, or the
//! Python binding) feeds it messages and the current [`Instant`], sends what
//! [`Session::poll_transmit`] returns and wakes it at [`Session::poll_timeout`].
//!
//! One [`Session`] per connection runs the local exporter (services 1, 2, 4, 5, 6, 7, 8, 10,
//! chum.md §4-§5) and the local importer (§6) over it.

pub mod rpc;
mod commit;
mod exporter;
mod importer;
mod session;

use std::time::Duration;

pub use session::Session;
/// When the importer commits what it fetched (docs/chum-session.md §2.1).
pub use importer::{COMMIT_BATCH, COMMIT_INTERVAL, MERGE_MIN};

/// One message of the connection (chum.md §1: ordered text and binary messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// Options of a session (docs/chum-session.md §2, same names and defaults as `ChumSession`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Person ID hash of this side.
    pub local_person: String,
    /// Person ID hash of the peer: the exporter serves what is accessible to this person.
    pub remote_person: String,
    /// false: one importer pass, then FIN (chum.md §4.7); true: poll roots forever.
    pub keep_running: bool,
    pub poll_interval: Duration,
    /// Probe lama extensions (none yet: the session runs plain v8 either way).
    pub fast_path: bool,
    pub exporter: bool,
    pub importer: bool,
    /// Per request; an unanswered request is retried with a fresh id.
    pub request_timeout: Duration,
    pub max_retries: u32,
    /// Requests in flight (pipelining, chum.md §10.2).
    pub window: usize,
    /// Largest message accepted (characters of a text message, bytes of a binary one).
    pub max_message: usize,
    /// docs/tracing.md §4: raise `exported` events (roots announced, objects served).
    pub trace: bool,
    /// docs/chum-session.md §2 "Ping": time a GET_PROTOCOL_VERSION round trip this often
    /// (`ping` events; zero = never). At most one ping is in flight.
    pub ping_interval: Duration,
    /// A ping unanswered this long raises a `ping` event with `rtt: None` (once per ping).
    pub ping_timeout: Duration,
    /// docs/chum-fastpath.md "Paged closure", *Early first page*: after a roots answer with a
    /// long history, walk the first page of its newest node on a thread of its own at once
    /// (true, the default) or only as idle work once the answer is sent (false).
    pub early_walk_thread: bool,
}

impl Config {
    pub fn new(local_person: impl Into<String>, remote_person: impl Into<String>) -> Config {
        Config {
            local_person: local_person.into(),
            remote_person: remote_person.into(),
            keep_running: false,
            poll_interval: Duration::from_secs(5),
            fast_path: true,
            exporter: true,
            importer: true,
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            window: 64,
            max_message: 64 * 1024 * 1024,
            trace: false,
            ping_interval: Duration::ZERO,
            ping_timeout: Duration::from_secs(10),
            early_walk_thread: true,
        }
    }
}

/// The Chum log fields of chum.md §7 that the session fills (the Python layer writes the
/// `Chum` object from them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChumLog {
    pub a_to_b_objects: Vec<String>,
    pub a_to_b_id_objects: Vec<String>,
    pub a_to_b_blob: Vec<String>,
    pub a_to_b_clob: Vec<String>,
    pub b_to_a_objects: Vec<String>,
    pub b_to_a_id_objects: Vec<String>,
    pub b_to_a_blob: Vec<String>,
    pub b_to_a_clob: Vec<String>,
    pub errors: Vec<String>,
    /// `{requestsSentTotal, requestsReceivedTotal, requestsReceivedInvalid}`.
    pub statistics: (u64, u64, u64),
}

impl ChumLog {
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        json!({
            "AtoBObjects": self.a_to_b_objects,
            "AtoBIdObjects": self.a_to_b_id_objects,
            "AtoBBlob": self.a_to_b_blob,
            "AtoBClob": self.a_to_b_clob,
            "BtoAObjects": self.b_to_a_objects,
            "BtoAIdObjects": self.b_to_a_id_objects,
            "BtoABlob": self.b_to_a_blob,
            "BtoAClob": self.b_to_a_clob,
            "errors": self.errors,
            "statistics": {
                "requestsSentTotal": self.statistics.0,
                "requestsReceivedTotal": self.statistics.1,
                "requestsReceivedInvalid": self.statistics.2,
            },
        })
    }
}

/// What the session reports (docs/chum-session.md §2 "Events").
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Version { remote: i64, mode: String },
    Imported { objects: Vec<String>, id_objects: Vec<String>, blobs: Vec<String>, clobs: Vec<String> },
    /// A pass knows what it will fetch (objects and ID objects, BLOBs and CLOBs not stored
    /// here): the total behind the pass's `imported` events, for progress displays.
    Listed { objects: usize, streams: usize },
    Merge { id_hash: String, node: String, data_type: String },
    Pending { hash: String, kind: String, reason: String },
    FullSync,
    Error { code: String, message: String, fatal: bool },
    Finished { reason: String, log: ChumLog },
    /// docs/tracing.md §4 (with `Config::trace`): what the exporter announced and served.
    /// `probed`: the peer's importer called LAMA_PROBE in this session (a lama peer; a ONE
    /// importer never does, docs/tracing.md §1 `kind`).
    Exported { roots: Vec<String>, objects: Vec<String>, probed: bool },
    /// docs/tracing.md §4: the peer's importer confirmed a pass (exporter side) ...
    Receipt { mark: Option<u64>, errors: Vec<String> },
    /// ... and ours sent one (importer side).
    ReceiptSent { mark: Option<u64>, errors: Vec<String> },
    /// docs/chum-session.md §2 "Ping": a ping's round trip in seconds (`rtt`), or `None` with
    /// `waiting` = how long the unanswered ping has been out.
    Ping { rtt: Option<f64>, waiting: f64 },
}

impl Event {
    /// The event's kind as in the contract (`"version"`, `"imported"`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Version { .. } => "version",
            Event::Imported { .. } => "imported",
            Event::Listed { .. } => "listed",
            Event::Merge { .. } => "merge",
            Event::Pending { .. } => "pending",
            Event::FullSync => "full_sync",
            Event::Error { .. } => "error",
            Event::Finished { .. } => "finished",
            Event::Exported { .. } => "exported",
            Event::Receipt { .. } => "receipt",
            Event::ReceiptSent { .. } => "receipt_sent",
            Event::Ping { .. } => "ping",
        }
    }

    /// The event's data dict as in the contract.
    pub fn data(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Event::Version { remote, mode } => json!({"remote": remote, "mode": mode}),
            Event::Imported { objects, id_objects, blobs, clobs } => {
                json!({"objects": objects, "id_objects": id_objects, "blobs": blobs, "clobs": clobs})
            }
            Event::Listed { objects, streams } => json!({"objects": objects, "streams": streams}),
            Event::Merge { id_hash, node, data_type } => json!({"id_hash": id_hash, "node": node, "data_type": data_type}),
            Event::Pending { hash, kind, reason } => json!({"hash": hash, "kind": kind, "reason": reason}),
            Event::FullSync => json!({}),
            Event::Error { code, message, fatal } => json!({"code": code, "message": message, "fatal": fatal}),
            Event::Finished { reason, log } => json!({"reason": reason, "log": log.to_json()}),
            Event::Exported { roots, objects, probed } => json!({"roots": roots, "objects": objects, "probed": probed}),
            Event::Receipt { mark, errors } | Event::ReceiptSent { mark, errors } => json!({"mark": mark, "errors": errors}),
            Event::Ping { rtt, waiting } => json!({"rtt": rtt, "waiting": waiting}),
        }
    }
}

/// Counters of a session (`ChumSession.stats()`), same names in both cores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub requests_sent: u64,
    pub requests_received: u64,
    pub requests_invalid: u64,
    pub responses_received: u64,
    pub objects_sent: u64,
    pub id_objects_sent: u64,
    pub blobs_sent: u64,
    pub clobs_sent: u64,
    pub objects_received: u64,
    pub id_objects_received: u64,
    pub blobs_received: u64,
    pub clobs_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retries: u64,
    pub errors: u64,
}

impl Stats {
    /// `(name, value)` pairs in a fixed order (the Python dict).
    pub fn fields(&self) -> [(&'static str, u64); 16] {
        [
            ("requests_sent", self.requests_sent),
            ("requests_received", self.requests_received),
            ("requests_invalid", self.requests_invalid),
            ("responses_received", self.responses_received),
            ("objects_sent", self.objects_sent),
            ("id_objects_sent", self.id_objects_sent),
            ("blobs_sent", self.blobs_sent),
            ("clobs_sent", self.clobs_sent),
            ("objects_received", self.objects_received),
            ("id_objects_received", self.id_objects_received),
            ("blobs_received", self.blobs_received),
            ("clobs_received", self.clobs_received),
            ("bytes_sent", self.bytes_sent),
            ("bytes_received", self.bytes_received),
            ("retries", self.retries),
            ("errors", self.errors),
        ]
    }
}
