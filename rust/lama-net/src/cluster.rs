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
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lama_core::Result;
use tokio::sync::{mpsc, oneshot};

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

/// How long a first registration of a key waits for the node's subscription to reach NATS
/// (NATS down: not longer; the subscription is sent on reconnect).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// How long the first connection to NATS may take (later ones retry forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// docs/cluster.md §4: lookups one client address may cause (a token bucket: `LOOKUP_RATE`
/// per second, bursts of `LOOKUP_BURST`), and lookups of the whole node in flight at once;
/// over either, the request is refused without a lookup (counter `cluster_throttled`).
pub const LOOKUP_RATE: f64 = 20.0;
pub const LOOKUP_BURST: f64 = 40.0;
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 64;
/// Above this many addresses, full (idle) buckets are dropped: the limiter's memory is bounded.
const MAX_BUCKETS: usize = 4096;

/// Per-address token buckets plus a node-wide cap of lookups in flight.
#[derive(Default)]
pub(crate) struct LookupLimiter {
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
    in_flight: AtomicUsize,
}

/// A lookup allowed by the limiter; dropping it ends it (the in-flight count).
pub(crate) struct LookupPermit<'a>(&'a LookupLimiter);

impl Drop for LookupPermit<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LookupLimiter {
    pub(crate) fn take(&self, ip: IpAddr) -> Option<LookupPermit<'_>> {
        let now = Instant::now();
        let refill = |tokens: f64, at: Instant| (tokens + now.duration_since(at).as_secs_f64() * LOOKUP_RATE).min(LOOKUP_BURST);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if self.in_flight.load(Ordering::Relaxed) >= MAX_LOOKUPS_IN_FLIGHT {
            return None;
        }
        if b.len() >= MAX_BUCKETS {
            b.retain(|_, (tokens, at)| refill(*tokens, *at) < LOOKUP_BURST);
        }
        let (tokens, at) = b.get(&ip).copied().unwrap_or((LOOKUP_BURST, now));
        let tokens = refill(tokens, at);
        if tokens < 1.0 {
            b.insert(ip, (tokens, now));
            return None;
        }
        b.insert(ip, (tokens - 1.0, now));
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(LookupPermit(self))
    }
}

pub(crate) struct Cluster {
    client: async_nats::Client,
    /// The URL other nodes reach this node at (set once the listener is bound).
    advertise: OnceLock<String>,
    /// `(key, has spares, told once subscribed)` in the order they happened; the directory
    /// task (un)subscribes.
    changes: mpsc::UnboundedSender<Change>,
    changes_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Change>>>,
    limiter: LookupLimiter,
}

type Change = (String, bool, oneshot::Sender<()>);

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
            limiter: LookupLimiter::default(),
        })
    }

    /// Start the directory task once the server is bound and shared.
    pub(crate) fn start(inner: &Arc<Inner>, advertise: String) {
        let Some(c) = &inner.cluster else { return };
        let _ = c.advertise.set(advertise);
        let Some(rx) = c.changes_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(directory(Arc::downgrade(inner), rx));
    }

    /// A key got its first spare here (`true`) or lost its last one (`false`); the receiver
    /// is told once the change has reached the NATS server (a flush: its PING answered).
    pub(crate) fn spares(&self, key: &str, present: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.changes.send((key.to_string(), present, tx));
        rx
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
async fn directory(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Change>) {
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
        let Some((key, present, done)) = change else { break };
        if !present {
            if let Some(task) = subs.remove(&key) {
                task.abort(); // drops the Subscriber: UNSUB
            }
            continue;
        }
        if subs.contains_key(&key) {
            let _ = done.send(());
            continue;
        }
        let Some(i) = inner.upgrade() else { break };
        let Some(c) = &i.cluster else { break };
        // an error: the client is closed, the server is going away
        if let Ok(sub) = c.client.subscribe(subject(&key)).await {
            subs.insert(key.clone(), tokio::spawn(answer(Arc::downgrade(&i), key, sub)));
            // the registration waits for this (bounded there): not the directory
            let client = c.client.clone();
            tokio::spawn(async move {
                if client.flush().await.is_ok() {
                    let _ = done.send(());
                }
            });
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
/// would (conn §3.3), also when the client at `ip` is over the lookup rate limit (§4).
pub(crate) async fn forward(inner: &Arc<Inner>, t: Transport, request: &str, key: &str, ip: IpAddr) -> std::result::Result<(), Transport> {
    let Some(c) = &inner.cluster else { return Err(t) };
    let Some(permit) = c.limiter.take(ip) else {
        inner.count_cluster_lookup(false);
        return Err(t);
    };
    inner.count_cluster_lookup(true);
    let url = tokio::select! {
        _ = crate::commserver::shut(inner.shutdown.clone()) => None,
        u = c.lookup(key) => u,
    };
    drop(permit);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lookup_limiter_allows_a_burst_per_address_then_the_rate() {
        let l = LookupLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let mut allowed = 0;
        for _ in 0..(LOOKUP_BURST as usize * 3) {
            if l.take(a).is_some() {
                allowed += 1;
            }
        }
        let refilled = (t0.elapsed().as_secs_f64() * LOOKUP_RATE).ceil() as usize;
        assert!(allowed >= LOOKUP_BURST as usize && allowed <= LOOKUP_BURST as usize + refilled, "{allowed}");
        // another address has its own bucket
        assert!(l.take(b).is_some());
        // the node-wide cap of lookups in flight: permits held, no more for anyone
        let held: Vec<_> = (0..MAX_LOOKUPS_IN_FLIGHT)
            .map_while(|i| l.take(IpAddr::from([198, 51, (i / 256) as u8, (i % 256) as u8])))
            .collect();
        assert_eq!(held.len(), MAX_LOOKUPS_IN_FLIGHT);
        assert!(l.take("203.0.113.9".parse().unwrap()).is_none());
        drop(held);
        assert!(l.take("203.0.113.9".parse().unwrap()).is_some());
    }
}
