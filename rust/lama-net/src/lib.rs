//! lama-net: the message transports and the tokio driver of lama's sans-I/O sessions
//! (docs/chum-session.md §3; project issue 8 "Where it runs").
//!
//! Layers (shared ARCHITECTURE.md): a session (`lama-chum`) is a state machine that takes
//! bytes and time and gives bytes and events; this crate only moves those bytes.
//! - [`Transport`]: ordered text and binary messages, closed with a reason that reaches the
//!   peer. Two kinds: an in-memory pair ([`memory_pair`]) and plain WebSocket
//!   ([`ws_connect`], [`ws_listen`] → [`Listener`], tokio-tungstenite). Both have bounded
//!   buffers (a sender waits while the receiver is behind) and a maximum message size.
//! - [`run`]: the driver moving messages between a [`Transport`] and a [`Protocol`] (the
//!   sans-I/O session), waking it at its deadlines and when its store's event feed moves.
//!
//! No pyo3 here: the Python bindings (`rust/lama-py/src/net.rs`) own the tokio runtime and
//! hand these futures to asyncio.

mod commlisten;
mod cluster;
mod commserver;
mod driver;
mod encrypted;
mod mailbox;
mod pipe;
mod transport;
mod ws;

pub use commlisten::{comm_listen, CommListener, ListenState};
pub use cluster::{LookupLimits, HOP_FIELD, LOOKUP_TIMEOUT, SUBJECT_PREFIX};
pub use commserver::{comm_server, CommServer, CommServerOptions};
pub use mailbox::MailboxOptions;
pub use driver::{run, run_until_cancelled, Protocol, StoreWatch, Watched};
pub use encrypted::{
    close_text, encrypted_accept, encrypted_connect, terminate_text, EncryptedInfo, EncryptedOptions, EncryptedStats,
    REASON_DECRYPTION, REASON_KEEPALIVE, REASON_NOT_ACCEPTED, REASON_STRING,
};
pub use transport::{memory_pair, Message, Transport};
pub use ws::{ws_connect, ws_listen, Listener};

/// Default maximum size of one message in bytes (the session's `max_message` default,
/// docs/chum-session.md §2).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// A close reason is at most 123 bytes of UTF-8: the room a WebSocket close frame leaves after
/// its 2-byte code (RFC 6455 §5.5: control frame payloads are at most 125 bytes). Longer
/// reasons are cut at a character boundary, by every transport alike.
pub const MAX_REASON: usize = 123;

/// The close reason seen when a connection ended without a close message (peer vanished,
/// TCP reset, transport dropped without `close`).
pub const REASON_LOST: &str = "connection lost";

/// The close reason of a transport closed because a message exceeded `max_message`.
pub fn size_reason(max_message: usize) -> String {
    format!("LAMA-NET-SIZE: message exceeds the limit of {max_message} bytes")
}

/// Cut a close reason to [`MAX_REASON`] bytes at a character boundary.
pub fn truncate_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

pub(crate) fn net_error(code: &str, message: impl Into<String>) -> lama_core::Error {
    lama_core::Error::new(lama_core::ErrorKind::Transport, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes
        let cut = truncate_reason(&long);
        assert_eq!(cut.len(), 122);
        assert!(long.starts_with(&cut));
        assert_eq!(truncate_reason(&"a".repeat(200)).len(), 123);
    }
}
