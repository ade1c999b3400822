//! Transports: memory pair and WebSocket on 127.0.0.1 behave the same (docs/chum-session.md §3).

use std::sync::Arc;
use std::time::Duration;

use lama_net::{memory_pair, size_reason, ws_connect, ws_listen, Message, Transport, REASON_LOST};

async fn ws_pair(max: Option<usize>) -> (Transport, Transport) {
    let l = ws_listen("127.0.0.1", 0, max).await.unwrap();
    let c = ws_connect(&format!("ws://127.0.0.1:{}/", l.port()), max).await.unwrap();
    let s = l.accept().await.unwrap();
    l.close().await;
    (c, s)
}

async fn pairs(max: Option<usize>) -> Vec<(&'static str, Transport, Transport)> {
    let (a, b) = memory_pair(max);
    let (c, d) = ws_pair(max).await;
    vec![("memory", a, b), ("ws", c, d)]
}

fn text(s: &str) -> Message {
    Message::Text(s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_in_order() {
    for (kind, a, b) in pairs(None).await {
        for i in 0..200u32 {
            a.send(text(&format!("a{i}"))).await.unwrap();
            b.send(Message::Binary(i.to_be_bytes().to_vec())).await.unwrap();
        }
        for i in 0..200u32 {
            assert_eq!(b.recv().await, Some(text(&format!("a{i}"))), "{kind}");
            assert_eq!(a.recv().await, Some(Message::Binary(i.to_be_bytes().to_vec())), "{kind}");
        }
        // empty messages are messages
        a.send(text("")).await.unwrap();
        a.send(Message::Binary(vec![])).await.unwrap();
        assert_eq!(b.recv().await, Some(text("")), "{kind}");
        assert_eq!(b.recv().await, Some(Message::Binary(vec![])), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_arrive_whole() {
    for (kind, a, b) in pairs(None).await {
        let a = Arc::new(a);
        let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        let sender = {
            let (a, big) = (a.clone(), big.clone());
            tokio::spawn(async move {
                for _ in 0..3 {
                    a.send(Message::Binary(big.clone())).await.unwrap();
                }
            })
        };
        for _ in 0..3 {
            assert_eq!(b.recv().await, Some(Message::Binary(big.clone())), "{kind}");
        }
        sender.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_reason_reaches_the_peer() {
    for (kind, a, b) in pairs(None).await {
        a.send(text("before")).await.unwrap();
        a.close("done here").await;
        assert_eq!(a.close_reason().as_deref(), Some("done here"), "{kind}");
        assert_eq!(a.recv().await, None, "{kind}");
        // what was sent before the close still arrives, then None
        assert_eq!(b.recv().await, Some(text("before")), "{kind}");
        assert_eq!(b.recv().await, None, "{kind}");
        assert_eq!(b.recv().await, None, "{kind}");
        assert_eq!(b.close_reason().as_deref(), Some("done here"), "{kind}");
        let e = b.send(text("after")).await.unwrap_err();
        assert_eq!(e.code, "LAMA-NET-CLOSED", "{kind}");
        let e = a.send(text("after")).await.unwrap_err();
        assert_eq!(e.code, "LAMA-NET-CLOSED", "{kind}");
        // closing again changes nothing
        b.close("other").await;
        assert_eq!(b.close_reason().as_deref(), Some("done here"), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_reasons_are_cut_the_same_everywhere() {
    for (kind, a, b) in pairs(None).await {
        let long = "ü".repeat(100);
        a.close(&long).await;
        assert_eq!(b.recv().await, None);
        let r = b.close_reason().unwrap();
        assert_eq!(r.len(), 122, "{kind}");
        assert_eq!(a.close_reason().unwrap(), r, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_recv_returns_none_on_local_close() {
    for (kind, a, _b) in pairs(None).await {
        let a = Arc::new(a);
        let r = tokio::spawn({
            let a = a.clone();
            async move { a.recv().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.close("bye").await;
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), r).await.unwrap().unwrap(), None, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_transport_reads_as_connection_lost() {
    for (kind, a, b) in pairs(None).await {
        a.send(text("last")).await.unwrap();
        drop(a);
        assert_eq!(b.recv().await, Some(text("last")), "{kind}");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), b.recv()).await.unwrap(), None, "{kind}");
        assert_eq!(b.close_reason().as_deref(), Some(REASON_LOST), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_send_is_refused_and_closes() {
    for (kind, a, b) in pairs(Some(1000)).await {
        a.send(Message::Binary(vec![1; 1000])).await.unwrap();
        let e = a.send(Message::Binary(vec![1; 1001])).await.unwrap_err();
        assert_eq!(e.code, "LAMA-NET-SIZE", "{kind}");
        assert_eq!(b.recv().await, Some(Message::Binary(vec![1; 1000])), "{kind}");
        assert_eq!(b.recv().await, None, "{kind}");
        assert_eq!(b.close_reason(), Some(size_reason(1000)), "{kind}");
        assert_eq!(a.close_reason(), Some(size_reason(1000)), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_ws_message_is_refused_by_the_receiver() {
    // the listener accepts 1000 bytes, the client would send more
    let l = ws_listen("127.0.0.1", 0, Some(1000)).await.unwrap();
    let c = ws_connect(&format!("ws://127.0.0.1:{}/", l.port()), None).await.unwrap();
    let s = l.accept().await.unwrap();
    c.send(text("small")).await.unwrap();
    c.send(Message::Text("x".repeat(5000))).await.unwrap();
    assert_eq!(s.recv().await, Some(text("small")));
    assert_eq!(s.recv().await, None);
    assert_eq!(s.close_reason(), Some(size_reason(1000)));
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), c.recv()).await.unwrap(), None);
    assert_eq!(c.close_reason(), Some(size_reason(1000)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_holds_the_sender_back() {
    for (kind, a, b) in pairs(None).await {
        let a = Arc::new(a);
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = tokio::spawn({
            let (a, sent) = (a.clone(), sent.clone());
            async move {
                for _ in 0..2000 {
                    if a.send(Message::Binary(vec![0; 64 * 1024])).await.is_err() {
                        return;
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        // nobody reads: the sender is stuck after the buffers (pipe budget + socket buffers)
        let stuck_at = sent.load(std::sync::atomic::Ordering::SeqCst);
        assert!(stuck_at < 200, "{kind}: {stuck_at} x 64 KiB queued");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), stuck_at, "{kind}");
        // reading lets it go on
        for _ in 0..50 {
            b.recv().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(sent.load(std::sync::atomic::Ordering::SeqCst) > stuck_at, "{kind}");
        b.close("enough").await;
        tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_accepts_several_clients() {
    let l = ws_listen("127.0.0.1", 0, None).await.unwrap();
    let url = format!("ws://127.0.0.1:{}/", l.port());
    let mut clients = Vec::new();
    for i in 0..5 {
        let c = ws_connect(&url, None).await.unwrap();
        c.send(text(&format!("hello {i}"))).await.unwrap();
        clients.push(c);
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let s = l.accept().await.unwrap();
        match s.recv().await {
            Some(Message::Text(t)) => {
                s.send(Message::Text(format!("re: {t}"))).await.unwrap();
                seen.push(t);
            }
            other => panic!("{other:?}"),
        }
        s.close("served").await;
    }
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| format!("hello {i}")).collect::<Vec<_>>());
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(c.recv().await, Some(text(&format!("re: hello {i}"))));
        assert_eq!(c.recv().await, None);
        assert_eq!(c.close_reason().as_deref(), Some("served"));
    }
    l.close().await;
    assert_eq!(l.accept().await.unwrap_err().code, "LAMA-NET-CLOSED");
    let e = ws_connect(&url, None).await.err().expect("nothing listens any more");
    assert_eq!(e.code, "LAMA-NET-CONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_argument_errors() {
    for url in ["http://127.0.0.1:1/", "wss://127.0.0.1:1/", "ws://", "ws://exa mple/"] {
        let e = ws_connect(url, None).await.err().unwrap();
        assert_eq!(e.code, "LAMA-ARG", "{url}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_now_and_recv_now_never_wait() {
    let (a, b) = memory_pair(Some(4 << 20));
    assert_eq!(b.recv_now(), None); // nothing yet: the caller must wait
    // the buffer takes about 1 MiB: then send_now gives the message back
    let mut sent = 0;
    loop {
        match a.send_now(Message::Binary(vec![7; 64 * 1024])).unwrap() {
            None => sent += 1,
            Some(m) => {
                assert_eq!(m, Message::Binary(vec![7; 64 * 1024]));
                break;
            }
        }
        assert!(sent < 100, "send_now never filled the buffer");
    }
    assert!((10..=16).contains(&sent), "{sent}");
    // over the size limit: left to `send`, which refuses it and closes
    assert!(a.send_now(Message::Binary(vec![0; (4 << 20) + 1])).unwrap().is_some());
    for _ in 0..sent {
        assert_eq!(b.recv_now(), Some(Some(Message::Binary(vec![7; 64 * 1024]))));
    }
    assert_eq!(b.recv_now(), None);
    a.close("bye").await;
    assert_eq!(b.recv_now(), Some(None));
    assert_eq!(b.close_reason().as_deref(), Some("bye"));
    assert_eq!(a.send_now(text("x")).unwrap_err().code, "LAMA-NET-CLOSED");
}
