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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lama_core::Result;
use tokio::sync::{mpsc, oneshot, watch};

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

/// After "no responders", a lookup is asked once more after this pause (docs/cluster.md §2):
/// a subscription the NATS server has not processed yet (its node's registration waited
/// `SUBSCRIBE_WAIT` in vain on a starved host, or interest still propagating inside a NATS
/// cluster) is not taken for an absent listener.
pub const LOOKUP_RETRY_DELAY: Duration = Duration::from_millis(500);

/// How long a first registration of a key waits for the node's subscription to reach NATS
/// (NATS down: not longer; the subscription is sent on reconnect).
pub const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);

/// How long the first connection to NATS may take (later ones retry forever).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// docs/cluster.md §4: the defaults of [`LookupLimits`].
pub const LOOKUP_RATE: f64 = 20.0;
pub const LOOKUP_BURST: u32 = 40;
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 64;
/// Above this many addresses, full (idle) buckets are dropped: the limiter's memory is bounded.
const MAX_BUCKETS: usize = 4096;

/// docs/cluster.md §4: lookups one client address may cause (a token bucket: `rate` per
/// second, bursts of `burst`), and lookups of the whole node in flight at once (`in_flight`);
/// over either, the request is refused without a lookup (counter `cluster_throttled`).
/// `lama comm-server --lookup-rate/--lookup-burst/--lookups-in-flight`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LookupLimits {
    pub rate: f64,
    pub burst: u32,
    pub in_flight: usize,
}

impl Default for LookupLimits {
    fn default() -> Self {
        LookupLimits { rate: LOOKUP_RATE, burst: LOOKUP_BURST, in_flight: MAX_LOOKUPS_IN_FLIGHT }
    }
}

impl LookupLimits {
    /// `Err` (LAMA-ARG) unless the rate is a positive finite number and burst and in-flight
    /// are at least 1 (a limit of 0 would refuse every cross-node request).
    pub fn check(&self) -> Result<()> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(net_error("LAMA-ARG", format!("lookup_rate must be a positive number, got {}", self.rate)));
        }
        if self.burst < 1 {
            return Err(net_error("LAMA-ARG", "lookup_burst must be at least 1, got 0"));
        }
        if self.in_flight < 1 {
            return Err(net_error("LAMA-ARG", "lookups_in_flight must be at least 1, got 0"));
        }
        Ok(())
    }
}

/// Per-address token buckets plus a node-wide cap of lookups in flight.
#[derive(Default)]
pub(crate) struct LookupLimiter {
    limits: LookupLimits,
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
    pub(crate) fn new(limits: LookupLimits) -> LookupLimiter {
        LookupLimiter { limits, ..Default::default() }
    }

    pub(crate) fn take(&self, ip: IpAddr) -> Option<LookupPermit<'_>> {
        let LookupLimits { rate, burst, in_flight } = self.limits;
        let burst = f64::from(burst);
        let now = Instant::now();
        let refill = |tokens: f64, at: Instant| (tokens + now.duration_since(at).as_secs_f64() * rate).min(burst);
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if self.in_flight.load(Ordering::Relaxed) >= in_flight {
            return None;
        }
        if b.len() >= MAX_BUCKETS {
            b.retain(|_, (tokens, at)| refill(*tokens, *at) < burst);
        }
        let (tokens, at) = b.get(&ip).copied().unwrap_or((burst, now));
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
    /// docs/cluster.md §2: a private subject (an inbox) this node subscribes to; a message
    /// published to it after a SUB comes back only once the NATS server has processed that
    /// SUB (it handles one connection's operations in order). `Client::flush` of async-nats
    /// only writes the client's buffer to the socket, which does not tell that.
    sync_subject: String,
    sync_sub: std::sync::Mutex<Option<async_nats::Subscriber>>,
    /// The number of the last sync message published / come back.
    sync_sent: AtomicU64,
    sync_seen: watch::Sender<u64>,
}

type Change = (String, bool, oneshot::Sender<()>);

fn subject(key: &str) -> String {
    format!("{SUBJECT_PREFIX}{key}")
}

impl Cluster {
    /// Connect to NATS at `url` (an error if it is unreachable now; afterwards the client
    /// reconnects forever and re-subscribes, docs/cluster.md §4).
    pub(crate) async fn connect(url: &str, limits: LookupLimits) -> Result<Cluster> {
        limits.check()?;
        let opts = async_nats::ConnectOptions::new()
            .name("lama comm-server")
            .connection_timeout(CONNECT_TIMEOUT)
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).clamp(100, 1000)));
        let client = opts
            .connect(url)
            .await
            .map_err(|e| net_error("LAMA-NET-CLUSTER", format!("cannot reach NATS at {url}: {e}")))?;
        let sync_subject = client.new_inbox();
        let sync_sub = client
            .subscribe(sync_subject.clone())
            .await
            .map_err(|e| net_error("LAMA-NET-CLUSTER", format!("cannot subscribe at NATS at {url}: {e}")))?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Cluster {
            client,
            advertise: OnceLock::new(),
            changes: tx,
            changes_rx: std::sync::Mutex::new(Some(rx)),
            limiter: LookupLimiter::new(limits),
            sync_subject,
            sync_sub: std::sync::Mutex::new(Some(sync_sub)),
            sync_sent: AtomicU64::new(0),
            sync_seen: watch::Sender::new(0),
        })
    }

    /// A round trip through the NATS server: `done` is told once every operation this node
    /// sent before the call (a SUB) has been processed by the server (at most
    /// `SUBSCRIBE_WAIT`; NATS down: never).
    fn synced(&self, done: oneshot::Sender<()>) {
        let n = self.sync_sent.fetch_add(1, Ordering::Relaxed) + 1;
        let mut seen = self.sync_seen.subscribe();
        let client = self.client.clone();
        let subject = self.sync_subject.clone();
        tokio::spawn(async move {
            let trip = async {
                client.publish(subject, n.to_string().into()).await.is_ok() && seen.wait_for(|s| *s >= n).await.is_ok()
            };
            if let Ok(true) = tokio::time::timeout(SUBSCRIBE_WAIT, trip).await {
                let _ = done.send(());
            }
        });
    }

    /// Start the directory task once the server is bound and shared.
    pub(crate) fn start(inner: &Arc<Inner>, advertise: String) {
        let Some(c) = &inner.cluster else { return };
        let _ = c.advertise.set(advertise);
        let Some(rx) = c.changes_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let Some(sync) = c.sync_sub.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(directory(Arc::downgrade(inner), rx, sync));
    }

    /// A key got its first spare here (`true`) or lost its last one (`false`); the receiver
    /// is told once the change has been processed by the NATS server (`Cluster::synced`).
    pub(crate) fn spares(&self, key: &str, present: bool) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.changes.send((key.to_string(), present, tx));
        rx
    }

    /// The advertised URL of a node holding a spare of `key`, if any answers in time.
    /// Asked once more (docs/cluster.md §3 step 2) after "no responders" (after
    /// `LOOKUP_RETRY_DELAY`) or no answer within `LOOKUP_TIMEOUT` (at once: the server may
    /// have routed the request to a subscription its node had already dropped, §4).
    async fn lookup(&self, key: &str) -> Option<String> {
        let mut retried = false;
        let msg = loop {
            let req = self.client.request(subject(key), "".into());
            match tokio::time::timeout(LOOKUP_TIMEOUT, req).await {
                Ok(Ok(msg)) => break msg,
                Ok(Err(e)) if !retried && e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                    retried = true;
                    tokio::time::sleep(LOOKUP_RETRY_DELAY).await;
                }
                Ok(Err(e)) if !retried && e.kind() == async_nats::client::RequestErrorKind::TimedOut => retried = true,
                Err(_) if !retried => retried = true,
                _ => return None,
            }
        };
        String::from_utf8(msg.payload.to_vec()).ok().filter(|u| u.starts_with("ws://") || u.starts_with("wss://"))
    }
}

/// Keeps one subscription (and its answering task) per key with spares here. Ends with the
/// server (its `Inner` dropped or shut down).
async fn directory(inner: Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Change>, mut sync: async_nats::Subscriber) {
    let mut subs: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let (shutdown, seen) = match inner.upgrade() {
        Some(i) => match &i.cluster {
            Some(c) => (i.shutdown.clone(), c.sync_seen.clone()),
            None => return,
        },
        None => return,
    };
    loop {
        let change = tokio::select! {
            _ = crate::commserver::shut(shutdown.clone()) => break,
            // a sync message came back (Cluster::synced); one publisher: in order
            Some(m) = sync.next() => {
                if let Some(n) = std::str::from_utf8(&m.payload).ok().and_then(|t| t.parse::<u64>().ok()) {
                    seen.send_modify(|s| *s = (*s).max(n));
                }
                continue;
            }
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
            // the registration waits for this (bounded there): not the directory. Not
            // `client.flush()`: that only writes the SUB to the socket, and a lookup by another
            // node could reach the NATS server before it has read it (the issue-12 hang)
            c.synced(done);
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
        assert_eq!(l.limits, LookupLimits { rate: 20.0, burst: 40, in_flight: 64 });
        const LOOKUP_BURST: f64 = super::LOOKUP_BURST as f64;
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

    #[test]
    fn the_lookup_limits_are_configurable_and_checked() {
        let l = LookupLimiter::new(LookupLimits { rate: 0.001, burst: 3, in_flight: 2 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // a burst of 3 (the refill of 0.001/s adds nothing within the test) ...
        let p1 = l.take(a).expect("1 of the burst");
        drop(p1);
        let p2 = l.take(a).expect("2 of the burst");
        let p3 = l.take(a).expect("3 of the burst");
        assert!(l.take(a).is_none(), "over the burst");
        // ... and two in flight for the whole node: p2 and p3 are still held
        assert!(l.take("192.0.2.2".parse().unwrap()).is_none(), "over lookups_in_flight");
        drop(p2);
        assert!(l.take("192.0.2.2".parse().unwrap()).is_some());
        drop(p3);
        for bad in [
            LookupLimits { rate: 0.0, ..Default::default() },
            LookupLimits { rate: f64::NAN, ..Default::default() },
            LookupLimits { rate: f64::INFINITY, ..Default::default() },
            LookupLimits { burst: 0, ..Default::default() },
            LookupLimits { in_flight: 0, ..Default::default() },
        ] {
            let e = bad.check().unwrap_err().to_string();
            assert!(e.contains("LAMA-ARG") && e.contains("must be"), "{e}");
        }
        assert!(LookupLimits::default().check().is_ok());
    }
}
