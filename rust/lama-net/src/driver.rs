//! The driver: moves messages between a [`Transport`] and a sans-I/O [`Protocol`] (the CHUM
//! session, docs/chum-session.md §2–§3), on tokio.
//!
//! The protocol never sees a socket or a clock: the driver passes `now` into every call,
//! sleeps until `poll_timeout`, sends what `poll_transmit` gives (waiting on the transport is
//! the back-pressure), forwards `poll_event`s, tells it when the store's event feed moved, and
//! closes the transport with `close_reason` once the protocol is finished.
//!
//! While a send waits for the peer, the driver keeps receiving: two sessions sending to each
//! other through full buffers must not deadlock. What the protocol produces meanwhile stays
//! queued in the protocol (bounded there by its request window).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lama_core::store::{PendingCommit, Store};
use tokio::sync::{mpsc, watch};

use crate::transport::{Message, Transport};
use crate::REASON_LOST;

/// A sans-I/O session as the driver sees it (implemented by `lama_chum::Session`).
pub trait Protocol: Send + 'static {
    type Event: Send + 'static;
    /// Begin (register services, send the first requests).
    fn start(&mut self, now: Instant);
    /// A message arrived from the peer.
    fn handle_message(&mut self, msg: Message, now: Instant);
    /// The deadline given by `poll_timeout` passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The store's event feed moved (new objects or heads, by anyone in this process).
    fn store_changed(&mut self, now: Instant);
    /// The transport closed (by the peer, or the connection was lost).
    fn connection_closed(&mut self, reason: &str, now: Instant);
    /// The next time `handle_timeout` is due, if any.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<Message>;
    /// The next event for the application.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// Done: the driver sends what is left and closes the transport.
    fn is_finished(&self) -> bool;
    /// The reason to close the transport with when finished.
    fn close_reason(&self) -> Option<&str>;
    /// Work that may wait until everything is sent (`idle` then does it).
    fn idle_due(&self) -> bool {
        false
    }
    /// Called when `idle_due` and no send is waiting for the peer.
    fn idle(&mut self, _now: Instant) {}
    /// A write transaction of this process is about to commit (lama-core store/pending.rs):
    /// the protocol may push its new roots now (docs/chum-fastpath.md "Speculative push").
    fn store_pending(&mut self, _pending: &Arc<PendingCommit>, _now: Instant) {}
}

/// Watches a store's event feed without blocking a tokio worker and bumps a watch channel that
/// the driver awaits. A commit of this process bumps it from the committing thread itself
/// ([`lama_core::store::Store::on_commit`]), so a CHUM session's NOTIFY of a new root leaves
/// right after the commit (issue 10: it used to wait until a watcher thread was scheduled,
/// about 0.1 ms idle and several ms on a loaded host). One blocking-pool thread looks at the
/// store's last sequence number once per slice for the commits of other processes on the same
/// store (they notify nobody here), so it sees them within its slice. It does not wait on the
/// store's feed: that woke it at every commit of this process too, to read the commit's events
/// while the hook had already reported it (a thread wake and a read per chat message on the
/// sender, right when the driver has the NOTIFY to send; issue 10). The thread ends (within
/// its slice) once the watch is dropped.
///
/// It also takes the store's pre-commit records ([`Store::on_pre_commit`]): a write of this
/// process that is about to commit new roots hands its record to the driver before its commit
/// (and fsync) runs, and the driver gives it to the protocol (`store_pending`).
pub struct StoreWatch {
    rx: watch::Receiver<u64>,
    pending: mpsc::UnboundedReceiver<Arc<PendingCommit>>,
    _hook: lama_core::store::CommitHook,
    _pre: lama_core::store::PreCommitHook,
}

/// What [`StoreWatch::next`] saw.
pub enum Watched {
    /// The feed moved.
    Changed,
    /// A write is about to commit.
    Pending(Arc<PendingCommit>),
    /// The watch ended.
    Ended,
}

/// How often the watching thread looks for other processes' commits (and checks that it is
/// still wanted).
const WATCH_SLICE: Duration = Duration::from_millis(200);

/// Move the watch to `seq` if that is newer (a commit is reported once, whether the hook or
/// the thread sees it first).
fn bump(tx: &watch::Sender<u64>, seq: u64) {
    tx.send_if_modified(|v| {
        if seq > *v {
            *v = seq;
            true
        } else {
            false
        }
    });
}

impl StoreWatch {
    /// Start watching `store` from its current end. Needs a tokio runtime context.
    pub fn new(store: &Store) -> lama_core::Result<StoreWatch> {
        let (tx, rx) = watch::channel(store.last_seq()?);
        let tx = Arc::new(tx);
        let hook_tx = tx.clone();
        // before the hooks that wake this process's event loops: the NOTIFY leaves first
        let hook = store.on_commit_first(move |seq| bump(&hook_tx, seq));
        // the pre-commit record: a channel send from the committing thread (never blocks)
        let (ptx, prx) = mpsc::unbounded_channel();
        let pre = store.on_pre_commit(move |p| {
            let _ = ptx.send(p.clone());
        });
        let store = store.clone();
        tokio::task::spawn_blocking(move || loop {
            std::thread::sleep(WATCH_SLICE);
            if tx.is_closed() {
                return;
            }
            match store.last_seq() {
                Ok(seq) => bump(&tx, seq),
                Err(_) => return, // the store is gone or broken: nothing more to watch
            }
        });
        Ok(StoreWatch { rx, pending: prx, _hook: hook, _pre: pre })
    }

    /// Wait until the feed moved past what was seen. `false` if the watch ended.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }

    /// Wait until the feed moved or a write is about to commit (that first, when both are
    /// there: the record of a commit that is done already is then seen as such).
    pub async fn next(&mut self) -> Watched {
        tokio::select! {
            biased;
            p = self.pending.recv() => match p {
                Some(p) => Watched::Pending(p),
                None => Watched::Ended,
            },
            ok = self.rx.changed() => if ok.is_ok() { Watched::Changed } else { Watched::Ended },
        }
    }
}

/// Run `protocol` over `transport` until it is finished; returns it (for its statistics).
pub async fn run<P: Protocol>(
    protocol: P,
    transport: Arc<Transport>,
    events: mpsc::UnboundedSender<P::Event>,
    store_watch: Option<StoreWatch>,
) -> P {
    let (_never, cancel) = watch::channel(false);
    run_until_cancelled(protocol, transport, events, store_watch, cancel).await
}

/// How long a finished session waits for its last messages to be taken by the transport.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The close reason of a session cancelled by its owner.
pub const REASON_CANCELLED: &str = "cancelled";

type SendFuture = Pin<Box<dyn Future<Output = lama_core::Result<()>> + Send>>;

fn send_owned(t: &Arc<Transport>, m: Message) -> SendFuture {
    let t = t.clone();
    Box::pin(async move { t.send(m).await })
}

/// [`run`], ending early when `cancel` becomes true: the transport is closed with
/// [`REASON_CANCELLED`] and the protocol is told the connection closed.
pub async fn run_until_cancelled<P: Protocol>(
    mut p: P,
    t: Arc<Transport>,
    events: mpsc::UnboundedSender<P::Event>,
    mut store_watch: Option<StoreWatch>,
    mut cancel: watch::Receiver<bool>,
) -> P {
    let lost = |t: &Transport| t.close_reason().unwrap_or_else(|| REASON_LOST.to_string());
    p.start(Instant::now());
    // a send waiting for the peer's buffer (the protocol's next transmits wait behind it)
    let mut pending: Option<SendFuture> = None;
    // the transport can still carry messages
    let mut open = true;
    // the owner can still cancel (false once cancelled or once it dropped its handle)
    let mut cancellable = true;
    let mut due_in_a_row = 0u32;
    loop {
        // hand the protocol's messages to the transport while it takes them without waiting
        while pending.is_none() {
            let Some(m) = p.poll_transmit() else { break };
            if !open {
                continue; // nobody to send to: the protocol was told
            }
            match t.try_send(m).await {
                Ok(None) => {}
                Ok(Some(m)) => pending = Some(send_owned(&t, m)),
                Err(_) => {
                    open = false;
                    p.connection_closed(&lost(&t), Instant::now());
                }
            }
        }
        let mut handed = false;
        while let Some(ev) = p.poll_event() {
            let _ = events.send(ev);
            handed = true;
        }
        if p.is_finished() {
            break;
        }
        if pending.is_none() && open && p.idle_due() {
            // everything is sent (a large answer waiting for the peer's buffer would wait
            // behind the work): do the protocol's idle work, then look again
            p.idle(Instant::now());
            continue;
        }
        let deadline = p.poll_timeout();
        if let Some(d) = deadline {
            // tokio's timer has a 1 ms grain: a deadline already due is handled now (but a
            // protocol that keeps giving past deadlines still lets the transport in)
            if d <= Instant::now() && due_in_a_row < 64 {
                if handed {
                    // the task these events woke (the application's receiver: Python's
                    // `events()`) waits in this worker's queue; let it run before the due
                    // work, which may block the worker (issue 8: the importer's zero sleep
                    // before it writes the peer mark with an fsync, "right after the driver
                    // handed out this pass's events", kept the `imported` event behind it)
                    tokio::task::yield_now().await;
                }
                due_in_a_row += 1;
                p.handle_timeout(Instant::now());
                continue;
            }
        }
        due_in_a_row = 0;
        if !open && pending.is_none() && deadline.is_none() {
            // closed and no deadline: nothing can wake the protocol again
            break;
        }
        tokio::select! {
            r = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                pending = None;
                if r.is_err() && open {
                    open = false;
                    p.connection_closed(&lost(&t), Instant::now());
                }
            }
            m = t.recv(), if open => match m {
                Some(m) => p.handle_message(m, Instant::now()),
                None => {
                    open = false;
                    p.connection_closed(&lost(&t), Instant::now());
                }
            },
            _ = tokio::time::sleep_until(deadline.map(tokio::time::Instant::from_std).unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                p.handle_timeout(Instant::now());
            }
            w = async { store_watch.as_mut().expect("guarded").next().await }, if store_watch.is_some() => match w {
                Watched::Changed => p.store_changed(Instant::now()),
                Watched::Pending(rec) => p.store_pending(&rec, Instant::now()),
                Watched::Ended => store_watch = None,
            },
            asked = async { cancel.wait_for(|c| *c).await.is_ok() }, if cancellable => {
                cancellable = false;
                if asked {
                    t.close(REASON_CANCELLED).await;
                    if open {
                        open = false;
                        p.connection_closed(REASON_CANCELLED, Instant::now());
                    }
                }
            }
        }
    }
    // the last messages (a FIN answer, an error), then the close
    let flush_deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
    if let Some(f) = pending.take() {
        if !matches!(tokio::time::timeout_at(flush_deadline, f).await, Ok(Ok(()))) {
            open = false;
        }
    }
    while let Some(m) = p.poll_transmit() {
        if open && !matches!(tokio::time::timeout_at(flush_deadline, t.send(m)).await, Ok(Ok(()))) {
            open = false;
        }
    }
    while let Some(ev) = p.poll_event() {
        let _ = events.send(ev);
    }
    let reason = p.close_reason().unwrap_or("").to_string();
    t.close(&reason).await;
    p
}
