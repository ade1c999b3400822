//! The driver runs sans-I/O protocols over both transports: messages, deadlines, store
//! changes, close reasons, cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lama_net::{memory_pair, run, run_until_cancelled, ws_connect, ws_listen, Message, Protocol, StoreWatch, Transport};
use tokio::sync::{mpsc, watch};

/// Sends `n` pings, one per `gap` (a deadline), and finishes when every pong came back.
struct Pinger {
    n: usize,
    gap: Duration,
    sent: usize,
    got: usize,
    next: Option<Instant>,
    out: Vec<Message>,
    events: Vec<String>,
    closed: Option<String>,
}

impl Pinger {
    fn new(n: usize, gap: Duration) -> Pinger {
        Pinger { n, gap, sent: 0, got: 0, next: None, out: vec![], events: vec![], closed: None }
    }
    fn ping(&mut self, now: Instant) {
        self.out.push(Message::Text(format!("ping {}", self.sent)));
        self.sent += 1;
        self.next = if self.sent < self.n { Some(now + self.gap) } else { None };
    }
}

impl Protocol for Pinger {
    type Event = String;
    fn start(&mut self, now: Instant) {
        self.ping(now);
    }
    fn handle_message(&mut self, msg: Message, _now: Instant) {
        assert_eq!(msg, Message::Binary(format!("pong {}", self.got).into_bytes()));
        self.got += 1;
        if self.got == self.n {
            self.events.push("finished".into());
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        assert!(now >= self.next.unwrap());
        self.ping(now);
    }
    fn store_changed(&mut self, _now: Instant) {}
    fn connection_closed(&mut self, reason: &str, _now: Instant) {
        self.closed = Some(reason.to_string());
        self.events.push(format!("closed {reason}"));
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }
    fn poll_event(&mut self) -> Option<String> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }
    fn is_finished(&self) -> bool {
        self.got == self.n || self.closed.is_some()
    }
    fn close_reason(&self) -> Option<&str> {
        Some("all pongs received")
    }
}

/// Answers every ping with a binary pong until the connection closes; counts store changes.
#[derive(Default)]
struct Echo {
    out: Vec<Message>,
    closed: Option<String>,
    store_changes: usize,
    events: Vec<String>,
}

impl Protocol for Echo {
    type Event = String;
    fn start(&mut self, _now: Instant) {}
    fn handle_message(&mut self, msg: Message, _now: Instant) {
        match msg {
            Message::Text(t) => self.out.push(Message::Binary(t.replace("ping", "pong").into_bytes())),
            Message::Binary(_) => panic!("unexpected"),
        }
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn store_changed(&mut self, _now: Instant) {
        self.store_changes += 1;
        self.events.push("store".into());
    }
    fn connection_closed(&mut self, reason: &str, _now: Instant) {
        self.closed = Some(reason.to_string());
        self.events.push(format!("closed {reason}"));
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }
    fn poll_event(&mut self) -> Option<String> {
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }
    fn is_finished(&self) -> bool {
        self.closed.is_some()
    }
    fn close_reason(&self) -> Option<&str> {
        None
    }
}

async fn ws_pair() -> (Transport, Transport) {
    let l = ws_listen("127.0.0.1", 0, None).await.unwrap();
    let c = ws_connect(&format!("ws://127.0.0.1:{}/", l.port()), None).await.unwrap();
    let s = l.accept().await.unwrap();
    (c, s)
}

async fn ping_echo(a: Transport, b: Transport, n: usize, gap: Duration) {
    let (etx, mut erx) = mpsc::unbounded_channel();
    let (ftx, mut frx) = mpsc::unbounded_channel();
    let pinger = tokio::spawn(run(Pinger::new(n, gap), Arc::new(a), etx, None));
    let echo = tokio::spawn(run(Echo::default(), Arc::new(b), ftx, None));
    let p = tokio::time::timeout(Duration::from_secs(20), pinger).await.unwrap().unwrap();
    let e = tokio::time::timeout(Duration::from_secs(20), echo).await.unwrap().unwrap();
    assert_eq!(p.got, n);
    assert_eq!(e.closed.as_deref(), Some("all pongs received"));
    assert_eq!(erx.recv().await.as_deref(), Some("finished"));
    assert_eq!(erx.recv().await, None);
    assert_eq!(frx.recv().await.as_deref(), Some("closed all pongs received"));
    assert_eq!(frx.recv().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_echo_over_memory_and_ws() {
    // each ping waits for a deadline that is already due: handled without a timer tick
    let t0 = Instant::now();
    let (a, b) = memory_pair(None);
    ping_echo(a, b, 2000, Duration::ZERO).await;
    let (a, b) = ws_pair().await;
    ping_echo(a, b, 2000, Duration::ZERO).await;
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_pace_the_protocol() {
    let (a, b) = memory_pair(None);
    let t0 = Instant::now();
    ping_echo(a, b, 11, Duration::from_millis(20)).await;
    assert!(t0.elapsed() >= Duration::from_millis(200), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_close_reaches_the_protocol() {
    let (a, b) = memory_pair(None);
    let (ftx, mut frx) = mpsc::unbounded_channel();
    let echo = tokio::spawn(run(Echo::default(), Arc::new(b), ftx, None));
    a.close("going home").await;
    let e = tokio::time::timeout(Duration::from_secs(5), echo).await.unwrap().unwrap();
    assert_eq!(e.closed.as_deref(), Some("going home"));
    assert_eq!(frx.recv().await.as_deref(), Some("closed going home"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_closes_the_transport() {
    let (a, b) = ws_pair().await;
    let (ftx, mut frx) = mpsc::unbounded_channel();
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let echo = tokio::spawn(run_until_cancelled(Echo::default(), Arc::new(b), ftx, None, cancel_rx));
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel_tx.send_replace(true);
    let e = tokio::time::timeout(Duration::from_secs(5), echo).await.unwrap().unwrap();
    assert_eq!(e.closed.as_deref(), Some("cancelled"));
    assert_eq!(frx.recv().await.as_deref(), Some("closed cancelled"));
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), a.recv()).await.unwrap(), None);
    assert_eq!(a.close_reason().as_deref(), Some("cancelled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_writes_wake_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let store = lama_core::store::Store::open(dir.path(), None).unwrap();
    let (a, b) = memory_pair(None);
    let (ftx, mut frx) = mpsc::unbounded_channel();
    let watch = StoreWatch::new(&store).unwrap();
    let echo = tokio::spawn(run(Echo::default(), Arc::new(b), ftx, Some(watch)));
    for i in 0..3 {
        store.put_clob(&format!("text {i}")).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), frx.recv()).await.unwrap();
        assert_eq!(ev.as_deref(), Some("store"));
    }
    // each commit is reported once: by the commit hook (in the committing thread) or by the
    // watcher thread, whichever sees it first, never by both (past the thread's wait slice)
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(frx.try_recv().is_err());
    a.close("bye").await;
    let e = tokio::time::timeout(Duration::from_secs(5), echo).await.unwrap().unwrap();
    assert_eq!(e.store_changes, 3);
}

/// On a message: hands out an event and makes a deadline due at once (as the CHUM importer's
/// zero sleep before it writes the peer mark); the due work records whether the event's
/// receiver had it already, then finishes.
struct EventThenDueWork {
    received: Arc<std::sync::atomic::AtomicBool>,
    seen_before_work: Option<bool>,
    due: Option<Instant>,
    events: Vec<&'static str>,
}

impl Protocol for EventThenDueWork {
    type Event = &'static str;
    fn start(&mut self, _now: Instant) {}
    fn handle_message(&mut self, _msg: Message, now: Instant) {
        self.events.push("imported");
        self.due = Some(now);
    }
    fn handle_timeout(&mut self, _now: Instant) {
        self.seen_before_work = Some(self.received.load(std::sync::atomic::Ordering::SeqCst));
        self.due = None;
    }
    fn store_changed(&mut self, _now: Instant) {}
    fn connection_closed(&mut self, _reason: &str, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        None
    }
    fn poll_event(&mut self) -> Option<&'static str> {
        self.events.pop()
    }
    fn is_finished(&self) -> bool {
        self.seen_before_work.is_some()
    }
    fn close_reason(&self) -> Option<&str> {
        Some("done")
    }
}

/// Issue 8: the task an event wakes (the application's receiver: Python's `events()`) runs
/// before a deadline that is already due is handled, so blocking due work (the importer's
/// peer-mark fsync) does not keep the `imported` event behind it. One worker thread: without
/// the driver yielding, the receiver cannot run before the due work.
#[test]
fn handed_out_events_reach_their_receiver_before_due_work() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let (a, b) = memory_pair(None);
        let (a, b) = (Arc::new(a), Arc::new(b));
        let received = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = mpsc::unbounded_channel();
        let flag = received.clone();
        let receiver = tokio::spawn(async move {
            let ev = rx.recv().await;
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            ev
        });
        let p = EventThenDueWork { received: received.clone(), seen_before_work: None, due: None, events: vec![] };
        let driver = tokio::spawn(run(p, a, tx, None));
        b.send(Message::Text("go".into())).await.unwrap();
        let p = tokio::time::timeout(Duration::from_secs(30), driver).await.expect("the driver finished").unwrap();
        assert_eq!(receiver.await.unwrap(), Some("imported"));
        assert_eq!(p.seen_before_work, Some(true), "the event's receiver ran only after the due work");
    });
}

/// Queues messages larger than the transport takes at once and has idle work; records
/// whether the peer had read all of them when the idle work ran.
struct SendThenIdle {
    out: Vec<Message>,
    read: Arc<std::sync::atomic::AtomicBool>,
    idle_ran: Arc<std::sync::atomic::AtomicBool>,
    read_before_idle: Option<bool>,
}

impl Protocol for SendThenIdle {
    type Event = ();
    fn start(&mut self, _now: Instant) {
        // 3 MiB: more than the memory pipe's 1 MiB of credits, so a send waits for the peer
        self.out = (0..6).map(|i| Message::Text(format!("{i}").repeat(512 << 10))).collect();
    }
    fn handle_message(&mut self, _msg: Message, _now: Instant) {}
    fn handle_timeout(&mut self, _now: Instant) {}
    fn store_changed(&mut self, _now: Instant) {}
    fn connection_closed(&mut self, _reason: &str, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn poll_transmit(&mut self) -> Option<Message> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.remove(0))
        }
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn is_finished(&self) -> bool {
        self.read_before_idle.is_some()
    }
    fn close_reason(&self) -> Option<&str> {
        Some("done")
    }
    fn idle_due(&self) -> bool {
        self.read_before_idle.is_none()
    }
    fn idle(&mut self, _now: Instant) {
        self.idle_ran.store(true, std::sync::atomic::Ordering::SeqCst);
        self.read_before_idle = Some(self.read.load(std::sync::atomic::Ordering::SeqCst));
    }
}

/// docs/chum-fastpath.md *Early first page*: the protocol's idle work waits until every queued
/// message is sent (a large answer waiting for the peer's buffer is not held up behind it).
#[test]
fn idle_work_runs_once_everything_is_sent() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (a, b) = memory_pair(None);
        let (a, b) = (Arc::new(a), Arc::new(b));
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let idle_ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = SendThenIdle { out: vec![], read: read.clone(), idle_ran: idle_ran.clone(), read_before_idle: None };
        let (tx, _rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(run(p, a, tx, None));
        // the peer reads nothing for a while: the sends wait, and so does the idle work
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!idle_ran.load(std::sync::atomic::Ordering::SeqCst), "idle work ran while a send waited");
        // one 512 KiB message fits the pipe's credits at a time: the last is queued only
        // after the one before it was read
        for _ in 0..4 {
            b.recv().await.expect("a message");
        }
        read.store(true, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..2 {
            b.recv().await.expect("a message");
        }
        let p = tokio::time::timeout(Duration::from_secs(30), driver).await.expect("the driver finished").unwrap();
        assert_eq!(p.read_before_idle, Some(true));
    });
}
