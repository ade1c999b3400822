//! The plain WebSocket transport (tokio-tungstenite): a client ([`ws_connect`]) and a
//! listener ([`ws_listen`]). Plain `ws://` only: the encrypted connection of the next issue
//! (connections.md) runs inside the messages.
//!
//! Each connection runs two tasks: a reader (socket → bounded pipe → `Transport::recv`) and a
//! writer (`Transport::send` → bounded pipe → socket, batching what is queued into one flush).
//! Reading and writing are independent, so two peers sending to each other with full buffers
//! cannot deadlock, and a reader that is behind stops reading the socket (TCP back-pressure).
//! The reader keeps reading after a local close, discarding, until the peer's answering close
//! frame: the close handshake completes and no unread data makes the kernel reset the
//! connection under the close frame.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use lama_core::Result;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::error::{Error as WsError, UrlError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::pipe::{pipe, CloseSender, Frame, PipeRx, PipeTx};
use crate::transport::{Kind, Message, State, Transport, CLOSE_TIMEOUT, CODE_TOO_BIG};
use crate::{net_error, size_reason, DEFAULT_MAX_MESSAGE, REASON_LOST};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for `Listener::accept`.
const ACCEPT_BACKLOG: usize = 64;

pub(crate) fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(max_message)).max_frame_size(Some(max_message))
}

fn arg_error(message: impl Into<String>) -> lama_core::Error {
    net_error("LAMA-ARG", message)
}

/// Connect to a `ws://` URL. `max_message`: `None` for [`DEFAULT_MAX_MESSAGE`].
pub async fn ws_connect(url: &str, max_message: Option<usize>) -> Result<Transport> {
    let max = max_message.unwrap_or(DEFAULT_MAX_MESSAGE);
    if !url.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("ws://")) {
        return Err(arg_error(format!("only ws:// URLs are supported, got {url:?}")));
    }
    let connect = tokio_tungstenite::connect_async_with_config(url, Some(config(max)), true);
    let ws = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Err(_) => return Err(net_error("LAMA-NET-CONNECT", format!("connecting to {url} timed out"))),
        Ok(Err(WsError::Url(UrlError::UnableToConnect(_)) | WsError::Io(_))) | Ok(Err(WsError::Http(_))) => {
            return Err(net_error("LAMA-NET-CONNECT", format!("cannot connect to {url}")))
        }
        Ok(Err(WsError::Url(e))) => return Err(arg_error(format!("invalid URL {url:?}: {e}"))),
        Ok(Err(WsError::HttpFormat(e))) => return Err(arg_error(format!("invalid URL {url:?}: {e}"))),
        Ok(Err(e)) => return Err(net_error("LAMA-NET-CONNECT", format!("cannot connect to {url}: {e}"))),
        Ok(Ok((ws, _response))) => ws,
    };
    Ok(spawn_ws(ws, max))
}

/// A WebSocket listener bound to one address.
pub struct Listener {
    port: u16,
    incoming: Mutex<mpsc::Receiver<Transport>>,
    closed: watch::Sender<bool>,
    accept_task: AbortHandle,
}

/// Listen on exactly `host` (the first address it resolves to) and `port` (0: any free port).
pub async fn ws_listen(host: &str, port: u16, max_message: Option<usize>) -> Result<Listener> {
    let max = max_message.unwrap_or(DEFAULT_MAX_MESSAGE);
    let addr: SocketAddr = match tokio::net::lookup_host((host, port)).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| arg_error(format!("host {host:?} has no address")))?,
        Err(e) => return Err(arg_error(format!("cannot resolve host {host:?}: {e}"))),
    };
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| net_error("LAMA-NET-LISTEN", format!("cannot listen on {addr}: {e}")))?;
    let port = tcp.local_addr().map_err(|e| net_error("LAMA-NET-LISTEN", e.to_string()))?.port();
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let accept_task = tokio::spawn(accept_loop(tcp, tx, max)).abort_handle();
    Ok(Listener { port, incoming: Mutex::new(rx), closed: watch::channel(false).0, accept_task })
}

async fn accept_loop(tcp: TcpListener, tx: mpsc::Sender<Transport>, max: usize) {
    loop {
        let stream = match tcp.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // out of file descriptors and the like: try again shortly
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let tx = tx.clone();
        tokio::spawn(async move {
            let hs = tokio_tungstenite::accept_async_with_config(stream, Some(config(max)));
            if let Ok(Ok(ws)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
                let _ = tx.send(spawn_ws::<TcpStream>(ws, max)).await;
            }
        });
    }
}

impl Listener {
    /// The port listened on (the one chosen when 0 was asked for).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next connection (its WebSocket handshake done).
    pub async fn accept(&self) -> Result<Transport> {
        let closed_err = || net_error("LAMA-NET-CLOSED", "the listener is closed");
        let mut closed = self.closed.subscribe();
        if *closed.borrow_and_update() {
            return Err(closed_err());
        }
        let mut rx = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => return Err(closed_err()),
            g = self.incoming.lock() => g,
        };
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => Err(closed_err()),
            t = rx.recv() => t.ok_or_else(closed_err),
        }
    }

    /// Stop listening. Connections already accepted stay open; handshaken ones not yet
    /// accepted are closed.
    pub async fn close(&self) {
        if self.closed.send_replace(true) {
            return;
        }
        self.accept_task.abort();
        let mut rx = self.incoming.lock().await;
        rx.close();
        while let Ok(t) = rx.try_recv() {
            t.close(REASON_LOST).await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Wrap an open WebSocket in a [`Transport`], spawning its reader and writer tasks.
pub(crate) fn spawn_ws<S>(ws: WebSocketStream<S>, max_message: usize) -> Transport
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    let (out_tx, out_rx) = pipe();
    let (inc_tx, inc_rx) = pipe();
    let state = Arc::new(State::default());
    let (reader_done_tx, reader_done_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let closer = out_tx.clone_close_sender();
    let reader = tokio::spawn(read_loop(stream, inc_tx, closer, state.clone(), max_message, reader_done_tx));
    let reader_abort = reader.abort_handle();
    let writer = tokio::spawn(write_loop(sink, out_rx, reader_done_rx, reader_abort.clone(), state.clone(), done_tx));
    let tasks = vec![reader_abort, writer.abort_handle()];
    Transport::new(state, out_tx, inc_rx, max_message, Kind::Ws { done: done_rx, tasks })
}

async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    inc: PipeTx,
    closer: CloseSender,
    state: Arc<State>,
    max_message: usize,
    done: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // after the peer's close frame: read on (tungstenite sends its answer while reading) until
    // the connection ends, at most CLOSE_TIMEOUT
    let mut closing = false;
    loop {
        let item = if closing {
            match tokio::time::timeout(CLOSE_TIMEOUT, stream.next()).await {
                Ok(i) => i,
                Err(_) => break,
            }
        } else {
            stream.next().await
        };
        let Some(item) = item else { break };
        match item {
            Ok(WsMessage::Text(t)) => {
                // a send error means the transport was closed here: discard
                let _ = inc.send(Message::Text(t.as_str().to_owned())).await;
            }
            Ok(WsMessage::Binary(b)) => {
                let _ = inc.send(Message::Binary(Vec::from(b))).await;
            }
            Ok(WsMessage::Close(frame)) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                };
                state.set(&reason);
                inc.send_close(code, reason);
                closing = true;
            }
            Ok(_) => {} // ping, pong (tungstenite answers pings itself)
            Err(WsError::Capacity(_)) => {
                // a message above max_message: refuse it, close with the size reason
                let reason = size_reason(max_message);
                if state.set(&reason) {
                    closer.send_close(CODE_TOO_BIG, reason.clone());
                }
                inc.send_close(CODE_TOO_BIG, reason);
                break;
            }
            Err(_) => break,
        }
    }
    state.set(REASON_LOST);
    drop(inc);
    done.send_replace(true);
}

fn ws_message(m: Message) -> WsMessage {
    match m {
        Message::Text(t) => WsMessage::Text(t.into()),
        Message::Binary(b) => WsMessage::Binary(b.into()),
    }
}

async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, WsMessage>,
    mut out: PipeRx,
    mut reader_done: watch::Receiver<bool>,
    reader: AbortHandle,
    state: Arc<State>,
    done: watch::Sender<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    'outer: loop {
        let first = tokio::select! {
            // a close frame queued by the reader (size limit) goes out before we stop
            biased;
            f = out.recv() => f,
            _ = reader_done.wait_for(|d| *d) => break,
        };
        let Some(mut frame) = first else { break };
        // write this frame and everything queued behind it, then flush once
        loop {
            match frame {
                Frame::Msg(m, _) => {
                    if sink.feed(ws_message(m)).await.is_err() {
                        break 'outer;
                    }
                }
                Frame::Close(code, reason) => {
                    let close = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
                    let _ = sink.send(WsMessage::Close(Some(close))).await;
                    break 'outer;
                }
            }
            match out.try_recv() {
                Some(f) => frame = f,
                None => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
    }
    // nothing more will be written: refuse senders, then give the reader the time of a close
    // handshake to see the peer's answer (or the end of the connection)
    drop(out);
    if tokio::time::timeout(CLOSE_TIMEOUT, reader_done.wait_for(|d| *d)).await.is_err() {
        reader.abort();
        state.set(REASON_LOST);
    }
    drop(sink);
    done.send_replace(true);
}
