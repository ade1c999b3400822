//! The comm-server cluster (docs/cluster.md): two nodes coordinated by a nats-server on
//! 127.0.0.1 (skipped, with a message, when nats-server is not installed, except under CI=true,
//! where `./dev setup` installed it and its absence fails).
//! A listener at node 1 is reached through node 2; the hop field stops forwarding; a key
//! without spares anywhere is refused.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lama_core::crypto::box_keypair;
use lama_net::{comm_listen, comm_server, ws_connect, CommServerOptions, Message};

const REASON_NO_LISTENER: &str = "Close called: No listening connection for the specified publicKey.";

struct Nats(Child);

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nats() -> Option<(Nats, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let nats = Nats(child);
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((nats, format!("nats://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn request(source: &[u8; 32], target: &[u8; 32]) -> String {
    format!(
        r#"{{"command":"communication_request","sourcePublicKey":"{}","targetPublicKey":"{}"}}"#,
        hex::encode(source),
        hex::encode(target)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_one_node_is_reached_through_another() {
    let Some((_nats, url)) = start_nats() else {
        // ./dev setup installs it: under CI its absence is a failure, elsewhere a skip
        assert!(std::env::var_os("CI").is_none(), "nats-server is not installed: run ./dev setup");
        eprintln!("nats-server is not installed: skipped (./dev setup installs it)");
        return;
    };
    let opts = || CommServerOptions { nats: Some(url.clone()), ..Default::default() };
    let n1 = comm_server("127.0.0.1", 0, opts()).await.unwrap();
    let n2 = comm_server("127.0.0.1", 0, opts()).await.unwrap();
    let (pk, sk) = box_keypair();
    let (ipk, _) = box_keypair();
    let listener = comm_listen(n1.url(), &pk, &sk, 1, Duration::from_millis(200)).await.unwrap();

    let ini = ws_connect(n2.url(), None).await.unwrap();
    ini.send(Message::Text(request(&ipk, &pk))).await.unwrap();
    let acc = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    // the listener sees what a single node sends (no hop field)
    assert_eq!(acc.recv().await, Some(Message::Text(request(&ipk, &pk))));
    acc.send(Message::Binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ini.recv().await, Some(Message::Binary(vec![1, 2, 3])));
    ini.close("done").await;
    assert_eq!(acc.recv().await, None);
    assert_eq!(acc.close_reason().as_deref(), Some("done"));
    let c2: std::collections::HashMap<_, _> = n2.counters().into_iter().collect();
    assert_eq!((c2["forwarded"], c2["cluster_lookups"]), (1, 1));

    // a forwarded request is never forwarded again
    let hop = ws_connect(n2.url(), None).await.unwrap();
    let marked = request(&ipk, &pk).trim_end_matches('}').to_string() + r#","lamaClusterHop":1}"#;
    hop.send(Message::Text(marked)).await.unwrap();
    assert_eq!(hop.recv().await, None);
    assert_eq!(hop.close_reason().as_deref(), Some(REASON_NO_LISTENER));

    // no spare anywhere: refused
    let (other, _) = box_keypair();
    let t = ws_connect(n2.url(), None).await.unwrap();
    t.send(Message::Text(request(&ipk, &other))).await.unwrap();
    assert_eq!(t.recv().await, None);
    assert_eq!(t.close_reason().as_deref(), Some(REASON_NO_LISTENER));

    listener.close().await;
    n1.close().await;
    n2.close().await;
}
