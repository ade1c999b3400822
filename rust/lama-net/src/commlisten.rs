//! The comm server's listener client (docs/connections.md §2; spec connections.md §3.2, §3.4):
//! keeps `spares` registered spare sockets at a comm server and hands each one that receives
//! `connection_handover` to [`CommListener::accept`], as a raw [`Transport`] whose next
//! message is the relayed `communication_request` (it belongs to the handshake, conn §10.2).
//!
//! One manager task starts registrations one at a time until `spares` are registered (conn
//! §3.4): a spare handed over is replaced at once; a failed registration, or a registered spare
//! that closed or failed, is retried after `reconnect_delay` (one delayed attempt at a time).
//! Each registered spare answers `{"command":"ping"}` with `{"command":"pong"}` (and the
//! declared but unused `comm_ping` with `comm_pong`, conn §2.8) and closes itself
//! (`Terminate called: Pong: Connection timed out`) when no ping came within
//! `pingInterval + 4 s`.

use std::sync::Arc;
use std::time::Duration;

use lama_core::crypto::{box_open_embedded, box_public_from_secret, box_seal_embedded};
use lama_core::Result;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};

use crate::transport::{Message, Transport};
use crate::{net_error, ws_connect, DEFAULT_MAX_MESSAGE};

/// How long one registration (connect, challenge, success) may take.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// conn §2.8: the client drops a spare after `pingInterval + 2 * 2000` ms without a ping.
const PONG_GRACE: Duration = Duration::from_millis(4000);
/// Handed-over spares waiting for `accept` (a spare waits while this is full).
const ACCEPT_BACKLOG: usize = 16;

pub const REASON_PONG_TIMEOUT: &str = "Terminate called: Pong: Connection timed out";
pub const REASON_CLOSED: &str = "Close called.";

/// The listener's state (conn §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenState {
    NotListening,
    Connecting,
    Listening,
}

impl ListenState {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenState::NotListening => "not_listening",
            ListenState::Connecting => "connecting",
            ListenState::Listening => "listening",
        }
    }
}

enum Event {
    Registered,
    /// The registration failed (connect, refused, wrong answer, timeout).
    Failed,
    /// A registered spare closed or failed.
    Lost,
    /// A registered spare was handed over.
    HandedOver,
}

struct Shared {
    url: String,
    public: [u8; 32],
    secret: [u8; 32],
    accepted_tx: mpsc::Sender<Transport>,
    closed: watch::Receiver<bool>,
}

/// A running listener (made by [`comm_listen`]).
pub struct CommListener {
    state: watch::Receiver<ListenState>,
    accepted: Mutex<mpsc::Receiver<Transport>>,
    closed: watch::Sender<bool>,
    /// Every task holds a sender; `close` waits until all are gone.
    done: Mutex<mpsc::Receiver<()>>,
}

fn arg_error(message: impl Into<String>) -> lama_core::Error {
    net_error("LAMA-ARG", message)
}

/// Start keeping `spares` spare sockets registered at the comm server `url` for the X25519 key
/// pair (`public`, `secret`). Returns once the first registration attempt ended: listening, or
/// (server unreachable or refusing) still trying in the background.
pub async fn comm_listen(
    url: &str,
    public: &[u8],
    secret: &[u8],
    spares: usize,
    reconnect_delay: Duration,
) -> Result<CommListener> {
    if !url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("ws://")) {
        return Err(arg_error(format!("only ws:// URLs are supported, got {url:?}")));
    }
    let public: [u8; 32] =
        public.try_into().map_err(|_| arg_error(format!("a public key is 32 bytes, got {}", public.len())))?;
    let secret: [u8; 32] =
        secret.try_into().map_err(|_| arg_error(format!("a secret key is 32 bytes, got {}", secret.len())))?;
    // a mismatched pair could never answer a challenge: refuse it here
    if box_public_from_secret(&secret)? != public {
        return Err(arg_error("the secret key does not belong to the public key"));
    }
    if spares == 0 {
        return Err(arg_error("spares must be at least 1"));
    }
    let (accepted_tx, accepted_rx) = mpsc::channel(ACCEPT_BACKLOG);
    let (closed_tx, closed_rx) = watch::channel(false);
    let (state_tx, state_rx) = watch::channel(ListenState::Connecting);
    let (done_tx, done_rx) = mpsc::channel(1);
    let shared = Arc::new(Shared { url: url.to_string(), public, secret, accepted_tx, closed: closed_rx });
    let (first_tx, mut first_rx) = watch::channel(false);
    tokio::spawn(manage(shared, spares, reconnect_delay, state_tx, first_tx, done_tx));
    let _ = first_rx.wait_for(|f| *f).await;
    Ok(CommListener {
        state: state_rx,
        accepted: Mutex::new(accepted_rx),
        closed: closed_tx,
        done: Mutex::new(done_rx),
    })
}

impl CommListener {
    pub fn state(&self) -> ListenState {
        *self.state.borrow()
    }

    /// The next spare after its `connection_handover`; its next message is the relayed
    /// `communication_request`. `LAMA-NET-CLOSED` once the listener is closed.
    pub async fn accept(&self) -> Result<Transport> {
        let closed_err = || net_error("LAMA-NET-CLOSED", "the comm listener is closed");
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(closed_err());
        }
        let mut rx = tokio::select! {
            biased;
            _ = is_closed(&mut closed) => return Err(closed_err()),
            g = self.accepted.lock() => g,
        };
        tokio::select! {
            biased;
            _ = is_closed(&mut closed) => Err(closed_err()),
            t = rx.recv() => t.ok_or_else(closed_err),
        }
    }

    /// Close every spare (and handed-over spares nobody accepted); wait for the tasks.
    pub async fn close(&self) {
        self.closed.send_replace(true);
        {
            let mut done = self.done.lock().await;
            while done.recv().await.is_some() {}
        }
        let mut rx = self.accepted.lock().await;
        rx.close();
        while let Ok(t) = rx.try_recv() {
            t.close(REASON_CLOSED).await;
        }
    }
}

impl Drop for CommListener {
    fn drop(&mut self) {
        self.closed.send_replace(true);
    }
}

async fn manage(
    shared: Arc<Shared>,
    target: usize,
    delay: Duration,
    state: watch::Sender<ListenState>,
    first: watch::Sender<bool>,
    done: mpsc::Sender<()>,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut closed = shared.closed.clone();
    let mut registered = 0usize;
    let mut connecting = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            retry_at = None;
        }
        if !connecting && retry_at.is_none() && registered < target {
            connecting = true;
            tokio::spawn(spare(shared.clone(), ev_tx.clone(), done.clone()));
        }
        state.send_replace(if registered > 0 { ListenState::Listening } else { ListenState::Connecting });
        tokio::select! {
            biased;
            _ = is_closed(&mut closed) => break,
            ev = ev_rx.recv() => match ev {
                None => break,
                Some(Event::Registered) => {
                    connecting = false;
                    registered += 1;
                    // the state before `first`: comm_listen returns on `first`, and its caller
                    // reads the state at once (it said "connecting" when this task had not run
                    // its next turn yet)
                    state.send_replace(ListenState::Listening);
                    first.send_replace(true);
                }
                Some(Event::Failed) => {
                    connecting = false;
                    retry_at = Some(Instant::now() + delay);
                    first.send_replace(true);
                }
                Some(Event::Lost) => {
                    registered -= 1;
                    retry_at.get_or_insert(Instant::now() + delay);
                }
                Some(Event::HandedOver) => registered -= 1,
            },
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
    }
    state.send_replace(ListenState::NotListening);
    first.send_replace(true);
}

/// Resolves once the listener is closed (holds no borrow of the watch afterwards).
async fn is_closed(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|c| *c).await;
}

fn command(m: &Message) -> Option<(String, serde_json::Map<String, Value>)> {
    let Message::Text(t) = m else { return None };
    match serde_json::from_str::<Value>(t).ok()? {
        Value::Object(o) => Some((o.get("command")?.as_str()?.to_string(), o)),
        _ => None,
    }
}

/// conn §3.2, the listener side: the registered transport and the server's ping interval.
async fn register(shared: &Shared) -> Result<(Transport, Duration)> {
    let fail = |m: &str| net_error("LAMA-NET-REFUSED", format!("comm server registration failed: {m}"));
    let t = ws_connect(&shared.url, Some(DEFAULT_MAX_MESSAGE)).await?;
    let reg = format!(r#"{{"command":"register","publicKey":"{}"}}"#, hex::encode(shared.public));
    t.send(Message::Text(reg)).await?;
    let m = t.recv().await.ok_or_else(|| fail(&t.close_reason().unwrap_or_default()))?;
    let (cmd, obj) = command(&m).ok_or_else(|| fail("unexpected message"))?;
    let field = |name: &str| obj.get(name).and_then(Value::as_str).and_then(|s| hex::decode(s).ok());
    let (Some(server_pk), Some(challenge), "authentication_request") =
        (field("publicKey"), field("challenge"), cmd.as_str())
    else {
        t.close("Close called: Error: unexpected message").await;
        return Err(fail("expected authentication_request"));
    };
    // decrypt, complement every byte, re-encrypt with a fresh nonce (conn §1.3)
    let plain = match box_open_embedded(&challenge, &shared.secret, &server_pk) {
        Ok(p) => p,
        Err(e) => {
            t.close(&format!("Close called: Error: {e}")).await;
            return Err(fail("the challenge does not decrypt"));
        }
    };
    let inverted: Vec<u8> = plain.iter().map(|b| !b).collect();
    let response = box_seal_embedded(&inverted, &shared.secret, &server_pk, None)?;
    let resp = format!(r#"{{"command":"authentication_response","response":"{}"}}"#, hex::encode(response));
    t.send(Message::Text(resp)).await?;
    let m = t.recv().await.ok_or_else(|| fail(&t.close_reason().unwrap_or_default()))?;
    match command(&m) {
        Some((cmd, obj)) if cmd == "authentication_success" => {
            // clients require only pingInterval (conn §3.1)
            let ms = obj.get("pingInterval").and_then(Value::as_f64).filter(|v| v.is_finite() && *v >= 0.0);
            match ms {
                Some(ms) => Ok((t, Duration::from_secs_f64(ms.min(1e12) / 1000.0))),
                None => {
                    t.close("Close called: Error: no pingInterval").await;
                    Err(fail("authentication_success without pingInterval"))
                }
            }
        }
        _ => {
            t.close("Close called: Error: unexpected message").await;
            Err(fail("expected authentication_success"))
        }
    }
}

async fn spare(shared: Arc<Shared>, ev: mpsc::UnboundedSender<Event>, _done: mpsc::Sender<()>) {
    let mut closed = shared.closed.clone();
    let reg = tokio::select! {
        _ = is_closed(&mut closed) => return,
        r = timeout(REGISTER_TIMEOUT, register(&shared)) => r,
    };
    let (t, ping_interval) = match reg {
        Ok(Ok(x)) => x,
        _ => {
            let _ = ev.send(Event::Failed);
            return;
        }
    };
    let _ = ev.send(Event::Registered);
    let grace = ping_interval + PONG_GRACE;
    let mut dead_at = Instant::now() + grace;
    loop {
        let m = tokio::select! {
            biased;
            _ = is_closed(&mut closed) => { t.close(REASON_CLOSED).await; return }
            r = timeout_at(dead_at, t.recv()) => r,
        };
        let m = match m {
            Err(_) => {
                t.close(REASON_PONG_TIMEOUT).await;
                let _ = ev.send(Event::Lost);
                return;
            }
            Ok(None) => {
                let _ = ev.send(Event::Lost);
                return;
            }
            Ok(Some(m)) => m,
        };
        let reply = match command(&m).as_ref().map(|(c, _)| c.as_str()) {
            Some("ping") => {
                dead_at = Instant::now() + grace;
                r#"{"command":"pong"}"#
            }
            Some("comm_ping") => r#"{"command":"comm_pong"}"#,
            Some("connection_handover") => {
                let _ = ev.send(Event::HandedOver);
                // the next message (the relayed communication_request) stays unread
                // (a full backlog holds this task: the next handover waits for `accept`)
                let permit = tokio::select! {
                    _ = is_closed(&mut closed) => None,
                    p = shared.accepted_tx.reserve() => p.ok(),
                };
                match permit {
                    Some(p) => p.send(t),
                    None => t.close(REASON_CLOSED).await,
                }
                return;
            }
            _ => continue, // anything else before a handover is ignored
        };
        if t.send(Message::Text(reply.into())).await.is_err() {
            let _ = ev.send(Event::Lost);
            return;
        }
    }
}
