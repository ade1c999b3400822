//! A one-way queue of frames bounded in bytes: the buffer between two ends of a memory pair,
//! and between a WebSocket transport and its socket tasks.
//!
//! The bound is a semaphore of byte credits: a message costs its length plus a small fixed
//! overhead (so many tiny messages are bounded too), capped at the whole budget (so a message
//! larger than the budget still passes, alone). The sender waits for credits (back-pressure);
//! the receiver gives them back when it takes the message out. Close frames cost nothing and
//! are never refused while the receiver exists: closing never waits for a slow reader.

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore, TryAcquireError};

use crate::transport::Message;

/// Byte credits of one pipe: what a sender may have queued and unread.
pub(crate) const BUDGET: usize = 1 << 20;
/// Fixed cost of a message on top of its length.
const OVERHEAD: usize = 64;

pub(crate) enum Frame {
    /// A message and the credits it holds.
    Msg(Message, u32),
    /// The peer's close: code (WebSocket close code) and reason.
    Close(u16, String),
}

fn cost(len: usize) -> u32 {
    (len.saturating_add(OVERHEAD)).min(BUDGET) as u32
}

pub(crate) struct PipeTx {
    tx: mpsc::UnboundedSender<Frame>,
    credits: Arc<Semaphore>,
}

pub(crate) struct PipeRx {
    rx: mpsc::UnboundedReceiver<Frame>,
    credits: Arc<Semaphore>,
}

pub(crate) fn pipe() -> (PipeTx, PipeRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let credits = Arc::new(Semaphore::new(BUDGET));
    (PipeTx { tx, credits: credits.clone() }, PipeRx { rx, credits })
}

/// Why a message was not queued.
pub(crate) enum TrySendError {
    /// No credits now: the receiver is behind.
    Full(Message),
    /// The receiving side is gone or refuses messages.
    Closed,
}

impl PipeTx {
    /// Queue a message, waiting for credits. `Err` when the receiving side is closed.
    pub(crate) async fn send(&self, msg: Message) -> Result<(), ()> {
        let n = cost(msg.len());
        match self.credits.acquire_many(n).await {
            Ok(p) => p.forget(),
            Err(_) => return Err(()),
        }
        self.tx.send(Frame::Msg(msg, n)).map_err(|_| ())
    }

    /// Queue a message if credits are available now.
    pub(crate) fn try_send(&self, msg: Message) -> Result<(), TrySendError> {
        let n = cost(msg.len());
        match self.credits.try_acquire_many(n) {
            Ok(p) => p.forget(),
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(msg)),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed),
        }
        self.tx.send(Frame::Msg(msg, n)).map_err(|_| TrySendError::Closed)
    }

    /// Queue a close frame (no credits needed). `false` when the receiver is gone.
    pub(crate) fn send_close(&self, code: u16, reason: String) -> bool {
        self.tx.send(Frame::Close(code, reason)).is_ok()
    }

    /// Refuse further messages from this sender: waiting and later sends fail. Messages
    /// already queued and close frames still arrive.
    pub(crate) fn refuse(&self) {
        self.credits.close();
    }

    pub(crate) fn clone_close_sender(&self) -> CloseSender {
        CloseSender { tx: self.tx.clone() }
    }
}

/// Sends only close frames into a pipe (held by a WebSocket reader to close via the writer).
pub(crate) struct CloseSender {
    tx: mpsc::UnboundedSender<Frame>,
}

impl CloseSender {
    pub(crate) fn send_close(&self, code: u16, reason: String) -> bool {
        self.tx.send(Frame::Close(code, reason)).is_ok()
    }
}

impl PipeRx {
    /// The next frame; `None` once every sender is gone. Gives a message's credits back.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        let f = self.rx.recv().await;
        if let Some(Frame::Msg(_, n)) = &f {
            self.credits.add_permits(*n as usize);
        }
        f
    }

    /// The next frame if one is queued now.
    pub(crate) fn try_recv(&mut self) -> Option<Frame> {
        let f = self.rx.try_recv().ok();
        if let Some(Frame::Msg(_, n)) = &f {
            self.credits.add_permits(*n as usize);
        }
        f
    }

    /// The credits of this pipe (to refuse senders without holding the receiver).
    pub(crate) fn credits(&self) -> Arc<Semaphore> {
        self.credits.clone()
    }
}

impl Drop for PipeRx {
    fn drop(&mut self) {
        // nobody will read: wake and fail the senders waiting for credits
        self.credits.close();
    }
}
