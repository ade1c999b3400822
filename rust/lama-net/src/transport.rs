//! The message transport (docs/chum-session.md §3): ordered text and binary messages, a close
//! with a reason that reaches the peer, bounded buffers, a maximum message size.
//!
//! Semantics shared by every kind (and by the pure core's `lama._pure.net`):
//! - `send` waits while the peer is behind (its buffer is full); it fails with
//!   `LAMA-NET-CLOSED` once the transport is closed (by either side).
//! - A message longer than `max_message` bytes is refused where it is found: the side that
//!   finds it closes the transport with [`size_reason`] (WebSocket close code 1009), so both
//!   sides see that reason; a sender also gets `LAMA-NET-SIZE`.
//! - `close(reason)` is idempotent; the reason (cut to [`MAX_REASON`] bytes) becomes
//!   `close_reason` on both sides. After a local close `recv` returns `None` at once; after the
//!   peer's close `recv` still returns what arrived before it, then `None`.
//! - A transport dropped without `close` closes with [`REASON_LOST`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lama_core::Result;
use tokio::sync::{watch, Semaphore};
use tokio::task::AbortHandle;

use crate::encrypted::{close_text, EncryptedInfo};
use crate::pipe::{pipe, Frame, PipeRx, PipeTx, TrySendError};
use crate::{net_error, size_reason, truncate_reason, DEFAULT_MAX_MESSAGE, REASON_LOST};

/// One message: a WebSocket text or binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

impl Message {
    /// Length in bytes (UTF-8 for text).
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// WebSocket close codes (RFC 6455 §7.4.1) used by every transport.
pub(crate) const CODE_NORMAL: u16 = 1000;
pub(crate) const CODE_GOING_AWAY: u16 = 1001;
pub(crate) const CODE_TOO_BIG: u16 = 1009;

/// How long a WebSocket close waits for the peer's answering close frame.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The close state shared by a transport and whoever else learns about its closing (the
/// memory peer, the WebSocket reader).
#[derive(Default)]
pub(crate) struct State {
    reason: Mutex<Option<String>>,
}

impl State {
    /// Record the close reason; the first one wins. `true` if this call closed it.
    pub(crate) fn set(&self, reason: &str) -> bool {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_some() {
            return false;
        }
        *r = Some(truncate_reason(reason));
        true
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub(crate) enum Kind {
    Memory { peer: Arc<State> },
    Ws { done: watch::Receiver<bool>, tasks: Vec<AbortHandle> },
    /// An encrypted connection over a raw transport (encrypted.rs): its writer task sets
    /// `done` once the raw transport is closed.
    Encrypted { info: Arc<EncryptedInfo>, done: watch::Receiver<bool>, tasks: Vec<AbortHandle> },
}

/// A message transport. All methods take `&self`: one task may wait in `recv` while another
/// sends (full duplex); concurrent `recv` calls take turns.
pub struct Transport {
    state: Arc<State>,
    out: PipeTx,
    inc: tokio::sync::Mutex<PipeRx>,
    /// The incoming pipe's credits, to refuse the peer without holding `inc`.
    inc_credits: Arc<Semaphore>,
    /// Set by a local close: wakes a waiting `recv`.
    local_closed: watch::Sender<bool>,
    /// The incoming pipe delivered its close (or ended): nothing more will come.
    eof: AtomicBool,
    max_message: usize,
    kind: Kind,
}

/// An in-memory pair of connected transports with bounded buffers. `max_message` applies to
/// both directions (`None`: [`DEFAULT_MAX_MESSAGE`]).
pub fn memory_pair(max_message: Option<usize>) -> (Transport, Transport) {
    let max = max_message.unwrap_or(DEFAULT_MAX_MESSAGE);
    let (a_tx, b_rx) = pipe();
    let (b_tx, a_rx) = pipe();
    let a_state = Arc::new(State::default());
    let b_state = Arc::new(State::default());
    let a = Transport::new(a_state.clone(), a_tx, a_rx, max, Kind::Memory { peer: b_state.clone() });
    let b = Transport::new(b_state, b_tx, b_rx, max, Kind::Memory { peer: a_state });
    (a, b)
}

impl Transport {
    pub(crate) fn new(state: Arc<State>, out: PipeTx, inc: PipeRx, max_message: usize, kind: Kind) -> Transport {
        let inc_credits = inc.credits();
        Transport {
            state,
            out,
            inc: tokio::sync::Mutex::new(inc),
            inc_credits,
            local_closed: watch::channel(false).0,
            eof: AtomicBool::new(false),
            max_message,
            kind,
        }
    }

    /// The largest message this transport sends or accepts, in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// The keys, role and statistics of an encrypted connection; `None` for other kinds.
    pub fn encrypted(&self) -> Option<&EncryptedInfo> {
        match &self.kind {
            Kind::Encrypted { info, .. } => Some(info),
            _ => None,
        }
    }

    /// The close reason once closed (by either side), else `None`.
    pub fn close_reason(&self) -> Option<String> {
        self.state.get()
    }

    fn closed_error(&self) -> lama_core::Error {
        match self.state.get() {
            Some(r) if !r.is_empty() => net_error("LAMA-NET-CLOSED", format!("transport closed: {r}")),
            Some(_) => net_error("LAMA-NET-CLOSED", "transport closed"),
            None => net_error("LAMA-NET-CLOSED", format!("transport closed: {REASON_LOST}")),
        }
    }

    /// Refuse a message that is too long: close with [`size_reason`], then `LAMA-NET-SIZE`.
    async fn check(&self, msg: &Message) -> Result<()> {
        if self.state.get().is_some() {
            return Err(self.closed_error());
        }
        if msg.len() > self.max_message {
            self.close_with(CODE_TOO_BIG, &size_reason(self.max_message)).await;
            return Err(net_error(
                "LAMA-NET-SIZE",
                format!("message of {} bytes exceeds the limit of {} bytes", msg.len(), self.max_message),
            ));
        }
        Ok(())
    }

    /// Send one message, waiting while the peer's buffer is full.
    pub async fn send(&self, msg: Message) -> Result<()> {
        self.check(&msg).await?;
        match self.out.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => self.out.send(m).await.map_err(|_| self.closed_error()),
            Err(TrySendError::Closed) => Err(self.closed_error()),
        }
    }

    /// Send without waiting: `Ok(Some(msg))` gives the message back when the peer's buffer is
    /// full (the driver then waits in [`send`](Self::send)).
    pub(crate) async fn try_send(&self, msg: Message) -> Result<Option<Message>> {
        self.check(&msg).await?;
        match self.out.try_send(msg) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(m)) => Ok(Some(m)),
            Err(TrySendError::Closed) => Err(self.closed_error()),
        }
    }

    /// Send without waiting if the peer's buffer has room now: `Ok(None)` when sent,
    /// `Ok(Some(msg))` when the caller must `send(msg).await` instead (buffer full, or a
    /// message over the size limit, whose refusal closes the transport).
    pub fn send_now(&self, msg: Message) -> Result<Option<Message>> {
        if self.state.get().is_some() {
            return Err(self.closed_error());
        }
        if msg.len() > self.max_message {
            return Ok(Some(msg));
        }
        match self.out.try_send(msg) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(m)) => Ok(Some(m)),
            Err(TrySendError::Closed) => Err(self.closed_error()),
        }
    }

    /// A message if one is waiting now: `Some(Some(m))`; `Some(None)` once closed; `None` when
    /// the caller must `recv().await`.
    pub fn recv_now(&self) -> Option<Option<Message>> {
        if *self.local_closed.borrow() || self.eof.load(Ordering::Acquire) {
            return Some(None);
        }
        let mut inc = self.inc.try_lock().ok()?;
        match inc.try_recv()? {
            Frame::Msg(m, _) => Some(Some(m)),
            Frame::Close(_, reason) => {
                self.state.set(&reason);
                self.eof.store(true, Ordering::Release);
                Some(None)
            }
        }
    }

    /// The next message, or `None` once closed.
    pub async fn recv(&self) -> Option<Message> {
        let mut closed = self.local_closed.subscribe();
        if *closed.borrow_and_update() || self.eof.load(Ordering::Acquire) {
            return None;
        }
        let mut inc = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => return None,
            g = self.inc.lock() => g,
        };
        if self.eof.load(Ordering::Acquire) {
            return None;
        }
        let frame = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => return None,
            f = inc.recv() => f,
        };
        match frame {
            Some(Frame::Msg(m, _)) => Some(m),
            Some(Frame::Close(_, reason)) => {
                self.state.set(&reason);
                self.eof.store(true, Ordering::Release);
                None
            }
            None => {
                self.state.set(REASON_LOST);
                self.eof.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Close with a reason (normal closure). Idempotent; a WebSocket close waits (up to a
    /// few seconds) for the peer's answering close frame.
    pub async fn close(&self, reason: &str) {
        self.close_with(CODE_NORMAL, reason).await
    }

    pub(crate) async fn close_with(&self, code: u16, reason: &str) {
        self.close_now(code, reason);
        match &self.kind {
            Kind::Ws { done, tasks } => {
                let mut done = done.clone();
                if tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), done.wait_for(|d| *d)).await.is_err() {
                    for t in tasks {
                        t.abort();
                    }
                }
            }
            Kind::Encrypted { info, done, tasks } => {
                // the writer sends what is queued, then closes the raw transport; a writer
                // stuck behind a peer that reads nothing is stopped, and the raw transport
                // closed from here
                let mut done = done.clone();
                if tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(2), done.wait_for(|d| *d)).await.is_err() {
                    for t in tasks {
                        t.abort();
                    }
                    let reason = self.state.get().unwrap_or_default();
                    // the raw transport's own tasks finish its close (not awaited here: an
                    // async close awaiting a close would be a recursive future)
                    info.inner().close_now(CODE_NORMAL, &reason);
                }
            }
            Kind::Memory { .. } => {}
        }
    }

    /// The synchronous part of a close: record the reason, tell the peer, refuse more traffic.
    fn close_now(&self, code: u16, reason: &str) {
        if self.local_closed.send_replace(true) {
            return; // already closed here
        }
        // an encrypted connection closes in the reference's words (conn §2.3)
        let reason = match &self.kind {
            Kind::Encrypted { info, .. } => {
                info.mark_closed();
                close_text(reason)
            }
            _ => truncate_reason(reason),
        };
        let initiated = self.state.set(&reason);
        // the peer's sends (memory) or our reader's deliveries (WebSocket) are refused from now
        self.inc_credits.close();
        if initiated {
            if let Kind::Memory { peer } = &self.kind {
                peer.set(&reason);
            }
            // queued messages go first, then the close (it needs no credits)
            self.out.send_close(code, reason);
        }
        // our own senders still waiting fail
        self.out.refuse();
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Memory { .. } => "memory",
            Kind::Ws { .. } => "ws",
            Kind::Encrypted { .. } => "encrypted",
        };
        f.debug_struct("Transport").field("kind", &kind).field("close_reason", &self.state.get()).finish()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // a transport dropped without close: the peer sees "connection lost"
        self.close_now(CODE_GOING_AWAY, REASON_LOST);
    }
}
