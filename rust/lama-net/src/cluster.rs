//! The comm server as a cluster node (docs/cluster.md): the directory of which node holds
//! which key's spares is the set of NATS subscriptions `lama.commserver.key.<hex>`; a node
//! without a spare of the requested key asks that subject and relays the initiator over a
//! direct WebSocket to the node that answered (the node-to-node route). Frames never go
//! through NATS.
//!
//! commserver.rs calls in three places only: [`Cluster::spares`] when a key gets its first
//! spare or loses its last one, [`forward`] instead of refusing a request, and
//! [`Cluster::start`] at the start.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use lama_core::Result;
use tokio::sync::mpsc;

use crate::commserver::Inner;
use crate::{net_error, Message, Transport};

/// Extra field of a forwarded `communication_request` (extra fields are ignored by the
/// reference, conn §3.1): the receiving node never forwards it again (no loops; a key that
/// moved meanwhile is refused and the initiator retries).
pub const HOP_FIELD: &str = "lamaClusterHop";

/// NATS subject prefix of the key directory (docs/cluster.md §2).
pub const SUBJECT_PREFIX: &str = "lama.commserver.key.";

/// How long a node waits for another node to answer a lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// How long the first connection to NATS may take (later ones retry forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Cluster {
    client: async_nats::Client,
    /// The URL other nodes reach this node at (set once the listener is bound).
    advertise: OnceLock<String>,
    /// `(key, has spares)` in the order they happened; the directory task (un)subscribes.
    changes: mpsc::UnboundedSender<(String, bool)>,
    changes_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(String, bool)>>>,
}

fn subject(key: &str) -> String {
    format!("{SUBJECT_PREFIX}{key}")
}

impl Cluster {
    /// Connect to NATS at `url` (an error if it is unreachable now; afterwards the client
    /// reconnects forever and re-subscribes, docs/cluster.md §4).
    pub(crate) async fn connect(url: &str) -> Result<Cluster> {
        let opts = async_nats::ConnectOptions::new()
            .name("lama comm-server")
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).clamp(100, 1000)));
        let client = opts
            .connect(url)
            .await
            .map_err(|e| net_error("LAMA-NET-CLUSTER", format!("cannot reach NATS at {url}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Cluster {
            client,
            advertise: OnceLock::new(),
            changes: tx,
            changes_rx: std::sync::Mutex::new(Some(rx)),
        })
    }

    /// Start the directory task once the server is bound and shared.
    pub(crate) fn start(inner: &Arc<Inner>, advertise: String) {
        let Some(c) = &inner.cluster else { return };
        let _ = c.advertise.set(advertise);
        let Some(rx) = c.changes_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(directory(Arc::downgrade(inner), rx));
    }

    /// A key got its first spare here (`true`) or lost its last one (`false`).
    pub(crate) fn spares(&self, key: &str, present: bool) {
        let _ = self.changes.send((key.to_string(), present));
    }

    /// The advertised URL of a node holding a spare of `key`, if any answers in time.
    async fn lookup(&self, key: &str) -> Option<String> {
        let req = self.client.request(subject(key), "".into());
        let msg = tokio::time::timeout(LOOKUP_TIMEOUT, req).await.ok()?.ok()?;
        String::from_utf8(msg.payload.to_vec()).ok().filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
    }
}

/// Keeps one subscription (and its answering task) per key with spares here. Ends with the
/// server (its `Inner` dropped or shut down).
async fn directory(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<(String, bool)>) {
    let mut subs: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let shutdown = match inner.upgrade() {
        Some(i) => i.shutdown.clone(),
        None => return,
    };
    loop {
        let change = tokio::select! {
            _ = crate::commserver::shut(shutdown.clone()) => break,
            c = rx.recv() => c,
        };
        let Some((key, present)) = change else { break };
        if !present {
            if let Some(task) = subs.remove(&key) {
                task.abort(); // drops the Subscriber: UNSUB
            }
            continue;
        }
        if subs.contains_key(&key) {
            continue;
        }
        let Some(i) = inner.upgrade() else { break };
        let Some(c) = &i.cluster else { break };
        // an error: the client is closed, the server is going away
        if let Ok(sub) = c.client.subscribe(subject(&key)).await {
            subs.insert(key.clone(), tokio::spawn(answer(Arc::downgrade(&i), key, sub)));
        }
    }
    for (_, task) in subs {
        task.abort();
    }
}

/// Answer lookups for `key` with this node's URL while it still has a spare of it.
async fn answer(inner: Weak<Inner>, key: String, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let Some(i) = inner.upgrade() else { return };
        let (Some(c), Some(reply)) = (&i.cluster, msg.reply) else { continue };
        if !i.has_spare(&key) {
            continue; // the last spare left meanwhile: stay silent (docs/cluster.md §3 step 2)
        }
        let url = c.advertise.get().cloned().unwrap_or_default();
        if c.client.publish(reply, url.into()).await.is_ok() {
            i.count_cluster_answer();
        }
    }
}

/// docs/cluster.md §3: relay initiator `t` through the node that holds `key`'s spare.
/// `request` is the re-serialised `communication_request`. `Err(t)` (the initiator back) when
/// no node has the key or its node cannot be reached: the caller refuses as a single node
/// would (conn §3.3).
pub(crate) async fn forward(inner: &Arc<Inner>, t: Transport, request: &str, key: &str) -> std::result::Result<(), Transport> {
    let Some(c) = &inner.cluster else { return Err(t) };
    let url = tokio::select! {
        _ = crate::commserver::shut(inner.shutdown.clone()) => None,
        u = c.lookup(key) => u,
    };
    let Some(url) = url else { return Err(t) };
    if c.advertise.get() == Some(&url) {
        return Err(t); // our own stale answer: no spare here any more
    }
    let connect = crate::ws_connect(&url, Some(inner.opts.max_message));
    let Ok(Ok(remote)) = tokio::time::timeout(inner.opts.auth_timeout, connect).await else { return Err(t) };
    // mark the hop: the remote node answers from its own spares only
    let marked = format!("{},\"{HOP_FIELD}\":1}}", &request[..request.len() - 1]);
    if remote.send(Message::Text(marked)).await.is_err() {
        return Err(t);
    }
    inner.count_forwarded();
    crate::commserver::relay(inner, t, remote).await;
    Ok(())
}
