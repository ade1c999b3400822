//! The session: the RPC layer's request bookkeeping (ids, pipelining window, per-request
//! timeout and retries, streams) around one [`Exporter`] and one [`Importer`].

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use lama_core::store::{BlobWriter, Store};
use serde_json::Value;

use crate::exporter::{Exporter, OutStream, NEW_ACCESSIBLE_ROOT_EVENT, NOTIFY, SERVICES, SUBSCRIBE};
use crate::importer::{Importer, Outcome, Req, Step, TIMEOUT};
use crate::rpc::{self, Incoming};
use crate::{ChumLog, Config, Event, Message, Stats};

/// What the importer and the exporter report into.
pub struct Cx {
    pub events: VecDeque<Event>,
    pub log: ChumLog,
    pub stats: Stats,
    /// The driver's time of the call being handled (the importer's commit interval).
    pub now: Option<Instant>,
}

impl Cx {
    /// Record an error: an `error` event, and the Chum log's `errors` unless it is a
    /// connection-close code (chum.md §6.5).
    pub fn error(&mut self, code: &str, message: &str, fatal: bool) {
        let text = if message.starts_with(&format!("{code}:")) { message.to_string() } else { format!("{code}: {message}") };
        self.stats.errors += 1;
        if !code.starts_with("WSP-ONCL") {
            self.log.errors.push(text.clone());
        }
        self.events.push_back(Event::Error { code: code.into(), message: text, fatal });
    }
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum StreamMode {
    Binary,
    Text,
    Base64,
}

/// Where an answer goes: the importer call (by sequence number) and the request's place in it.
type Slot = (u64, usize);

/// One importer call: its answers by slot, and how many are still missing.
struct Call {
    seq: u64,
    results: Vec<Option<Outcome>>,
    outstanding: usize,
}

struct Pending {
    req: Req,
    slot: Slot,
    deadline: Instant,
    attempts: u32,
    writer: Option<BlobWriter>,
    mode: Option<StreamMode>,
}

/// The roots accessible to `person` now, as `(kind, hash, id_hash, type_name)`, from the
/// store's access index (docs/chum-session.md §1, chum.md §5.1).
pub(crate) type RootRow = (String, String, Option<String>, String);

pub(crate) fn accessible_roots(store: &Store, person: &str, since: u64) -> lama_core::Result<(u64, Vec<RootRow>)> {
    let p = lama_core::hash::check_hash(person, "person")?;
    let (mark, roots) = store.accessible_roots(&p, since)?;
    Ok((mark, roots.into_iter().map(|r| (r.kind.as_str().to_string(), r.hash.to_hex(), r.id_hash.map(|h| h.to_hex()), r.type_name)).collect()))
}

/// One CHUM session over one connection (docs/chum-session.md §2). See the crate docs.
pub struct Session {
    store: Store,
    config: Config,
    cx: Cx,
    exporter: Option<Exporter>,
    importer: Option<Importer>,
    exporter_done: bool,
    importer_done: bool,
    started: bool,
    finished: bool,
    close_reason: Option<String>,
    out: VecDeque<Message>,
    next_id: u64,
    pending: HashMap<u64, Pending>,
    /// Requests waiting for a place in the window.
    queue: VecDeque<(Slot, Req, u32)>,
    /// The importer's calls in flight, oldest first. Each is handed back whole and in the
    /// order they were made (a later call's answers wait for the earlier calls'), so the
    /// importer can keep the next chunks' requests out while it verifies and commits one
    /// (issue 8: the exporter serves while the importer works).
    calls: VecDeque<Call>,
    next_call: u64,
    sleep_until: Option<Instant>,
    /// Ids of our NOTIFY requests (their answers are ignored).
    notify_ids: std::collections::HashSet<u64>,
    /// A NOTIFY asked the sleeping importer to run its next pass now.
    wake: bool,
    /// A NOTIFY came while a pass ran: that pass may have read the roots before the write
    /// it announces, so the next pass starts when this one ends instead of at the next poll.
    notified: bool,
    /// BLOB streams being sent, oldest first: a frame is read from the store only when
    /// `poll_transmit` has nothing else queued (issue 8: bounded memory for a large BLOB).
    streams: VecDeque<OutStream>,
    /// docs/tracing.md §4: how much of the `AtoB*Objects` logs the `exported` events covered.
    traced_objects: usize,
    /// How far the Chum log's received objects / ID objects were told to the exporter as
    /// held by the peer ("notify-closure").
    held_objects: usize,
    held_id_objects: usize,
    traced_id_objects: usize,
    /// docs/chum-session.md §2 "Ping": the ping in flight (request id, sent at, reported
    /// late already) and when the next one goes out.
    ping: Option<(u64, Instant, bool)>,
    next_ping: Option<Instant>,
    /// docs/chum-fastpath.md "Speculative push": when the NOTIFY that lets the peer's mark
    /// catch up with speculated roots goes out (none while NOTIFYs keep coming).
    catch_up_at: Option<Instant>,
}

/// How long after the last NOTIFY the catch-up NOTIFY of speculated roots goes out
/// (docs/chum-fastpath.md "Speculative push": a burst of posts needs none, each NOTIFY carries
/// the previous post's mark; it costs the peer a pass and a durable write of its mark).
pub const MARK_CATCHUP: std::time::Duration = std::time::Duration::from_millis(250);

impl Session {
    pub fn new(store: Store, config: Config) -> Session {
        let mut config = config;
        config.window = config.window.max(1);
        Session {
            store,
            config,
            cx: Cx { events: VecDeque::new(), log: ChumLog::default(), stats: Stats::default(), now: None },
            exporter: None,
            importer: None,
            exporter_done: false,
            importer_done: false,
            started: false,
            finished: false,
            close_reason: None,
            out: VecDeque::new(),
            next_id: 0,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            calls: VecDeque::new(),
            next_call: 0,
            sleep_until: None,
            notify_ids: Default::default(),
            wake: false,
            notified: false,
            streams: VecDeque::new(),
            traced_objects: 0,
            held_objects: 0,
            held_id_objects: 0,
            traced_id_objects: 0,
            ping: None,
            next_ping: None,
            catch_up_at: None,
        }
    }

    /// Register the services (chum.md §3.2, before any request goes out) and send the
    /// version request.
    pub fn start(&mut self, now: Instant) {
        if self.started || self.finished {
            return;
        }
        self.started = true;
        if self.config.exporter {
            let mut ex = Exporter::new(self.store.clone(), self.config.remote_person.clone());
            ex.early_walk_thread = self.config.early_walk_thread;
            if self.config.trace {
                ex.announced = Some(Vec::new());
            }
            self.exporter = Some(ex);
        } else {
            self.exporter_done = true;
        }
        if self.config.importer {
            self.importer = Some(Importer::new(self.store.clone(), self.config.keep_running, self.config.poll_interval, self.config.fast_path, self.config.remote_person.clone()));
            self.advance(Vec::new(), now);
        } else {
            self.importer_done = true;
        }
        if !self.config.ping_interval.is_zero() {
            // the first ping goes out at once: a latency right after the session started
            self.next_ping = Some(now);
            self.ping_tick(now);
        }
        self.check_done();
    }

    /// docs/chum-session.md §2 "Ping": send the next ping when it is due (none while one is
    /// out: at most one in flight, so a silent peer costs nothing more), report one that is
    /// late. A ping is GET_PROTOCOL_VERSION: stateless, answered by every v8 exporter (a
    /// ONE peer too) and by lama whatever it serves; any answer, an error included, is a round
    /// trip.
    fn ping_tick(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if let Some((_, sent, reported)) = self.ping.as_mut() {
            if !*reported && now >= *sent + self.config.ping_timeout {
                *reported = true;
                let waiting = now.duration_since(*sent).as_secs_f64();
                self.cx.events.push_back(Event::Ping { rtt: None, waiting });
            }
            return;
        }
        if self.next_ping.is_some_and(|t| now >= t) {
            let id = self.next_id;
            self.next_id += 1;
            self.cx.stats.requests_sent += 1;
            self.send(Message::Text(rpc::request(id, crate::exporter::GET_PROTOCOL_VERSION, &[])));
            self.ping = Some((id, now, false));
            self.next_ping = Some(now + self.config.ping_interval);
        }
    }

    pub fn handle_message(&mut self, msg: Message, now: Instant) {
        if self.finished {
            return;
        }
        match msg {
            Message::Text(t) => self.receive_text(t, now),
            Message::Binary(b) => self.receive_binary(b, now),
        }
        self.check_done();
    }

    fn receive_text(&mut self, text: String, now: Instant) {
        // characters for text frames (docs/chum-session.md §2.1 stats)
        let chars = text.chars().count();
        self.cx.stats.bytes_received += chars as u64;
        if text.len() > self.config.max_message && chars > self.config.max_message {
            self.fatal("LAMA-CHUM-FRAME", format!("a text message of {chars} characters exceeds the limit of {}", self.config.max_message));
            return;
        }
        if text == "synchronisation" {
            return; // one.models' start handshake (chum.md §1), harmless if it reaches us
        }
        let Some(m) = rpc::classify(&text) else {
            // chum.md §2.1: ignored and counted, no answer
            self.cx.stats.requests_invalid += 1;
            let shown: String = text.chars().take(200).collect();
            self.cx.error("LAMA-CHUM-FRAME", &format!("ignored a malformed message: {shown:?}"), false);
            return;
        };
        match m {
            Incoming::Request { id, service, args } => {
                self.cx.stats.requests_received += 1;
                self.serve(id, service, args, now);
                if std::mem::take(&mut self.wake) {
                    self.sleep_until = None;
                    self.advance(Vec::new(), now);
                }
            }
            Incoming::WriteStreamError { id } => {
                // our stream was sent whole already; the peer drops the rest of it
                self.cx.error("LAMA-CHUM-STREAM", &format!("the peer failed to store our stream for request {id}"), false);
            }
            other => {
                self.cx.stats.responses_received += 1;
                self.response(other, now);
            }
        }
    }

    fn receive_binary(&mut self, data: Vec<u8>, now: Instant) {
        self.cx.stats.bytes_received += data.len() as u64;
        if data.len() > self.config.max_message {
            self.fatal("LAMA-CHUM-FRAME", format!("a binary message of {} bytes exceeds the limit of {}", data.len(), self.config.max_message));
            return;
        }
        let id = rpc::binary_id(&data);
        if let Some(i) = id.filter(|i| self.pending.get(i).is_some_and(|p| p.req.binary)) {
            // docs/chum-fastpath.md "batch-binary": the whole answer in one binary message
            // (with its id: taking the 8 bytes off moved the whole payload, issue 8)
            let p = self.pending.remove(&i).unwrap();
            self.deliver(p.slot, Outcome::Bytes(data), now);
            return;
        }
        let ok = id.and_then(|i| self.pending.get(&i)).is_some_and(|p| p.req.stream.is_some());
        if !ok {
            // chum.md §2.6: a short frame or one for no stream of ours is dropped, never fatal
            let which = id.map_or("no request".to_string(), |i| format!("request {i}"));
            self.cx.error("LAMA-CHUM-FRAME", &format!("dropped a binary message of {} bytes for {which}", data.len()), false);
            return;
        }
        let id = id.unwrap();
        let p = self.pending.get_mut(&id).unwrap();
        if matches!(p.mode, Some(StreamMode::Text | StreamMode::Base64)) {
            self.stream_write_failed(id, "a binary chunk in a text stream".into(), now);
            return;
        }
        p.mode = Some(StreamMode::Binary);
        self.write_chunk(id, &data[8..], now);
    }

    fn write_chunk(&mut self, id: u64, bytes: &[u8], now: Instant) {
        let timeout = self.config.request_timeout;
        let store = &self.store;
        let p = self.pending.get_mut(&id).unwrap();
        // a stream that is moving is not timed out
        p.deadline = now + timeout;
        let clob = p.req.stream == Some(true);
        let w = p.writer.get_or_insert_with(|| store.blob_writer(clob));
        if let Err(e) = w.write(bytes) {
            self.stream_write_failed(id, e.to_string(), now);
        }
    }

    /// chum.md §2.6 receiver-side failure: tell the sender, fail the request.
    fn stream_write_failed(&mut self, id: u64, why: String, now: Instant) {
        self.send(Message::Text(rpc::write_stream_error(id)));
        let hash = self.pending.get(&id).and_then(|p| p.req.args.first().cloned().flatten()).map(|v| v.as_str().unwrap_or("").to_string()).unwrap_or_default();
        self.fail(id, "LAMA-CHUM-STREAM", format!("stream of {hash} refused: {why}"), now);
    }

    fn fail(&mut self, id: u64, code: &str, message: String, now: Instant) {
        if let Some(mut p) = self.pending.remove(&id) {
            if let Some(mut w) = p.writer.take() {
                let _ = w.abort();
            }
            self.deliver(p.slot, Outcome::Err { code: code.into(), message }, now);
        }
    }

    fn response(&mut self, m: Incoming, now: Instant) {
        let id = match &m {
            Incoming::Data { id, .. } | Incoming::Error { id, .. } | Incoming::Stream { id, .. } | Incoming::StreamEnd { id } | Incoming::StreamError { id, .. } => *id,
            _ => return,
        };
        if !self.pending.contains_key(&id) && self.notify_ids.remove(&id) {
            return; // the answer to our NOTIFY carries nothing
        }
        if let Some((pid, sent, _)) = self.ping {
            if pid == id {
                // any answer (8, or an error) is the round trip
                self.ping = None;
                let rtt = now.saturating_duration_since(sent).as_secs_f64();
                self.cx.events.push_back(Event::Ping { rtt: Some(rtt), waiting: 0.0 });
                if self.next_ping.is_some_and(|t| now >= t) {
                    self.ping_tick(now);
                }
                return;
            }
        }
        let Some(p) = self.pending.get_mut(&id) else {
            // chum.md §2.1: logged and dropped, before any stream data is written
            self.cx.error("LAMA-CHUM-FRAME", &format!("dropped a response for unknown request {id}"), false);
            return;
        };
        let is_stream = p.req.stream.is_some();
        match m {
            Incoming::Data { data, .. } => {
                if is_stream {
                    self.fail(id, "CIEC-FBL1", "a data answer to a GET_BLOB request".into(), now);
                } else {
                    let p = self.pending.remove(&id).unwrap();
                    self.deliver(p.slot, Outcome::Ok(data), now);
                }
            }
            Incoming::Error { name, message, code, .. } => {
                let code = code.unwrap_or_else(|| "WSRQ-JRMH1".into());
                let msg = if message.is_empty() { name } else { message };
                self.fail(id, &code, msg, now);
            }
            Incoming::Stream { chunk, encoding, .. } => {
                if !is_stream {
                    self.fail(id, "LAMA-CHUM-FRAME", "a stream answer to a request for data".into(), now);
                    return;
                }
                let mode = match p.mode {
                    Some(StreamMode::Binary) => {
                        self.stream_write_failed(id, "a text chunk in a binary stream".into(), now);
                        return;
                    }
                    Some(m) => m,
                    // the first chunk's encoding decides (chum.md §2.6)
                    None => match encoding.as_deref() {
                        Some("base64") => StreamMode::Base64,
                        Some("utf8") | None => StreamMode::Text,
                        Some(e) => {
                            self.stream_write_failed(id, format!("unknown encoding {e:?}"), now);
                            return;
                        }
                    },
                };
                p.mode = Some(mode);
                let bytes = match mode {
                    StreamMode::Base64 => match rpc::base64_decode(&chunk) {
                        Some(b) => b,
                        None => {
                            self.stream_write_failed(id, "a chunk that is not base64".into(), now);
                            return;
                        }
                    },
                    _ => chunk.into_bytes(),
                };
                self.write_chunk(id, &bytes, now);
            }
            Incoming::StreamEnd { .. } => {
                if !is_stream {
                    self.fail(id, "LAMA-CHUM-FRAME", "a stream end for a request for data".into(), now);
                    return;
                }
                let mut p = self.pending.remove(&id).unwrap();
                let clob = p.req.stream == Some(true);
                let expected = p.req.args.first().cloned().flatten().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
                // zero-length content has no chunk at all (chum.md §2.6)
                let mut w = p.writer.take().unwrap_or_else(|| self.store.blob_writer(clob));
                let outcome = match w.finish(Some(&expected)) {
                    Ok((h, _)) => Outcome::Stored(h),
                    Err(e) if e.code == "LAMA-HASH" => Outcome::Err { code: "CIEC-FBL2".into(), message: format!("CIEC-FBL2: {}", e.message) },
                    Err(e) => Outcome::Err { code: e.code.clone(), message: e.to_string() },
                };
                self.deliver(p.slot, outcome, now);
            }
            Incoming::StreamError { error, .. } => {
                self.fail(id, "WSRQ-SEH1", format!("the sender failed: {error}"), now);
            }
            _ => {}
        }
    }

    fn serve(&mut self, id: u64, service: Value, args: Vec<rpc::Data>, now: Instant) {
        let sid = service.as_u64().filter(|s| *s <= u32::MAX as u64).map(|s| s as u32);
        if let Some(s) = sid {
            if SERVICES.contains(&s) && !self.exporter_done {
                if let Some(ex) = self.exporter.as_mut() {
                    let (frames, err) = ex.handle(id, s, &args, &mut self.cx.log, &mut self.cx.stats);
                    let done = ex.done;
                    for (mark, errors) in std::mem::take(&mut ex.receipts) {
                        self.cx.events.push_back(crate::Event::Receipt { mark, errors });
                    }
                    for (code, msg) in std::mem::take(&mut ex.refused) {
                        self.cx.error(&code, &msg, false);
                    }
                    self.streams.extend(std::mem::take(&mut ex.streams));
                    for f in frames {
                        self.send(f);
                    }
                    if self.config.trace {
                        self.trace_exported();
                    }
                    if done {
                        self.exporter_done = true;
                    }
                    if let Some(e) = err {
                        // a refused fetch of a hash never unlocked is recorded (docs/chum-session.md §2.1)
                        if e.fatal {
                            self.cx.error(&e.code, &e.message, false);
                        }
                    } else if s == SUBSCRIBE {
                        // roots that became accessible between the roots answer and the
                        // subscription raised their store event while nobody had subscribed:
                        // check once now, or they would wait for the importer's next poll
                        self.store_changed(now);
                    }
                    return;
                }
            }
            if s == NEW_ACCESSIBLE_ROOT_EVENT && self.importer.is_some() && !self.importer_done {
                // chum.md §4.8: only logged
                self.send(Message::Text(rpc::data_response(id, &None)));
                return;
            }
            if s == NOTIFY && self.importer.is_some() && !self.importer_done {
                // docs/chum-fastpath.md: run the next pass now instead of at the next poll
                self.send(Message::Text(rpc::data_response(id, &None)));
                if let Some(imp) = self.importer.as_mut() {
                    // "notify-roots": the new roots ride on the NOTIFY
                    imp.notified(args.first().cloned().flatten());
                }
                let persisting = self.importer.as_ref().is_some_and(|i| i.persisting());
                if self.sleep_until.is_some() && !persisting {
                    self.wake = true;
                } else {
                    self.notified = true;
                }
                return;
            }
        }
        self.send(Message::Text(rpc::unknown_service(id, &service)));
    }

    fn send(&mut self, m: Message) {
        self.cx.stats.bytes_sent += match &m {
            Message::Text(t) => t.chars().count(),
            Message::Binary(b) => b.len(),
        } as u64;
        self.out.push_back(m);
    }

    /// Give the importer the answers of its last call (or nothing) and act on its next step.
    fn advance(&mut self, results: Vec<Outcome>, now: Instant) {
        let Some(imp) = self.importer.as_mut() else { return };
        self.cx.now = Some(now);
        match imp.resume(results, &mut self.cx) {
            Err((code, message)) => self.fatal(&code, message),
            Ok(Step::Done) => self.importer_done = true,
            Ok(Step::Sleep(d)) if d.is_zero() => {
                // a yield to the driver (events out first): woken at once by handle_timeout,
                // keeping `notified` for the sleep after it
                self.sleep_until = Some(now);
            }
            Ok(Step::Sleep(d)) => {
                if std::mem::take(&mut self.notified) {
                    return self.advance(Vec::new(), now);
                }
                self.sleep_until = Some(now + d)
            }
            Ok(Step::Call(reqs)) => {
                if reqs.is_empty() && self.calls.is_empty() {
                    return self.advance(Vec::new(), now);
                }
                self.push_call(reqs);
                self.dispatch(now);
                self.deliver_complete(now);
            }
            Ok(Step::Calls(calls)) => {
                for reqs in calls {
                    self.push_call(reqs);
                }
                self.dispatch(now);
                self.deliver_complete(now);
            }
        }
    }

    fn push_call(&mut self, reqs: Vec<Req>) {
        let seq = self.next_call;
        self.next_call += 1;
        self.calls.push_back(Call { seq, results: vec![None; reqs.len()], outstanding: reqs.len() });
        for (i, r) in reqs.into_iter().enumerate() {
            self.queue.push_back(((seq, i), r, 0));
        }
    }

    /// Hand the oldest call back to the importer once all its answers are in.
    fn deliver_complete(&mut self, now: Instant) {
        if self.calls.front().is_some_and(|c| c.outstanding == 0) {
            let c = self.calls.pop_front().expect("checked");
            let results: Vec<Outcome> = c.results.into_iter().map(Option::unwrap).collect();
            // advance delivers the next complete call itself (through its own Step handling)
            self.advance(results, now);
        }
    }

    /// Send queued requests while the window has room (chum.md §10.2).
    fn dispatch(&mut self, now: Instant) {
        while self.pending.len() < self.config.window {
            let Some((slot, req, attempts)) = self.queue.pop_front() else { break };
            let id = self.next_id;
            self.next_id += 1;
            self.cx.stats.requests_sent += 1;
            self.send(Message::Text(rpc::request(id, req.service, &req.args)));
            self.pending.insert(id, Pending { req, slot, deadline: now + self.config.request_timeout, attempts, writer: None, mode: None });
        }
    }

    fn deliver(&mut self, (seq, i): Slot, outcome: Outcome, now: Instant) {
        if let Some(c) = self.calls.iter_mut().find(|c| c.seq == seq) {
            if i < c.results.len() && c.results[i].is_none() {
                c.results[i] = Some(outcome);
                c.outstanding -= 1;
            }
        }
        if self.calls.front().is_some_and(|c| c.outstanding == 0) {
            self.deliver_complete(now);
        } else {
            self.dispatch(now);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        self.ping_tick(now);
        let mut expired: Vec<u64> = self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(i, _)| *i).collect();
        expired.sort();
        for id in expired {
            let Some(mut p) = self.pending.remove(&id) else { continue };
            if let Some(mut w) = p.writer.take() {
                let _ = w.abort();
            }
            if p.attempts < self.config.max_retries {
                // a fresh id: a late answer to the old one is dropped
                self.cx.stats.retries += 1;
                self.queue.push_front((p.slot, p.req, p.attempts + 1));
                self.dispatch(now);
            } else {
                let arg = p.req.args.first().cloned().flatten().map(|v| v.to_string()).unwrap_or_default();
                let msg = format!("no answer to service {} [{arg}] after {} attempts", p.req.service, p.attempts + 1);
                self.deliver(p.slot, Outcome::Err { code: TIMEOUT.into(), message: msg }, now);
            }
            if self.finished {
                return;
            }
        }
        if let Some(imp) = self.importer.as_mut() {
            if imp.commit_deadline().is_some_and(|t| t <= now) {
                // verified objects waited COMMIT_INTERVAL for their commit
                self.cx.now = Some(now);
                imp.commit_ready(&mut self.cx);
            }
        }
        if let Some(t) = self.sleep_until {
            if now >= t {
                self.sleep_until = None;
                self.advance(Vec::new(), now);
            }
        }
        if self.catch_up_at.is_some_and(|t| now >= t) {
            self.catch_up_at = None;
            self.notify_with(now, true, |ex, cx| ex.catch_up(&mut cx.log, &mut cx.stats));
        }
        self.check_done();
    }

    /// Record an error found outside the session (a binding given a frame of the wrong type):
    /// a non-fatal `error` event.
    pub fn record_error(&mut self, code: &str, message: &str) {
        self.cx.error(code, message, false);
    }

    /// The driver saw new store events. v8 has no push (chum.md §8): a ONE importer polls. A
    /// lama importer that subscribed (service 103, docs/chum-fastpath.md) gets a NOTIFY request
    /// when roots became accessible to it.
    pub fn store_changed(&mut self, now: Instant) {
        self.notify_with(now, false, |ex, cx| ex.changed_roots(&mut cx.log, &mut cx.stats));
    }

    /// docs/chum-fastpath.md "Speculative push": a write of this process is about to commit
    /// (its pre-commit record `pending`): a lama importer subscribed with "notify-closure"
    /// gets its new roots now, if the exporter can send them whole (else the NOTIFY after the
    /// commit carries them, as before).
    pub fn store_pending(&mut self, pending: &std::sync::Arc<lama_core::store::PendingCommit>, now: Instant) {
        self.notify_with(now, false, |ex, cx| ex.speculate(pending, &mut cx.log, &mut cx.stats));
    }

    /// Send the NOTIFY `make` builds, if any; keep the catch-up deadline.
    fn notify_with(&mut self, now: Instant, catch_up: bool, make: impl FnOnce(&mut Exporter, &mut Cx) -> lama_core::Result<Option<String>>) {
        if self.finished || self.exporter_done {
            return;
        }
        let Some(ex) = self.exporter.as_mut() else { return };
        if ex.wants_held() {
            // what our importer received from the peer, the peer holds (with its closure): a
            // NOTIFY for those roots (our import made them accessible) needs no closure
            let log = &self.cx.log;
            ex.peer_holds(log.b_to_a_objects[self.held_objects..].iter().chain(&log.b_to_a_id_objects[self.held_id_objects..]));
            self.held_objects = log.b_to_a_objects.len();
            self.held_id_objects = log.b_to_a_id_objects.len();
        }
        let sent = match make(ex, &mut self.cx) {
            Ok(Some(args)) => {
                let id = self.next_id;
                self.next_id += 1;
                self.cx.stats.requests_sent += 1;
                self.notify_ids.insert(id);
                self.send(Message::Text(rpc::request_text(id, NOTIFY, &args)));
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.cx.error(&e.code, &format!("computing new roots: {e}"), false);
                false
            }
        };
        // the catch-up is armed by a NOTIFY (or a commit after one), never by the catch-up
        // itself: a peer that does not confirm gets the roots again with the next NOTIFY, not
        // every MARK_CATCHUP
        let due = self.exporter.as_ref().is_some_and(Exporter::catch_up_due);
        if !due || catch_up {
            self.catch_up_at = None;
        } else if sent || self.catch_up_at.is_none() {
            self.catch_up_at = Some(now + MARK_CATCHUP);
        }
        if self.config.trace {
            self.trace_exported();
        }
    }

    /// docs/tracing.md §4: one `exported` event for what the exporter announced (roots
    /// answers, NOTIFY roots) and served (objects, ID objects) since the last one.
    fn trace_exported(&mut self) {
        let Some(ex) = self.exporter.as_mut() else { return };
        if ex.spec_unsettled() {
            // a speculative NOTIFY's roots and objects are reported once their commit is done
            // (docs/tracing.md counts from the commit; the NOTIFY after it reports them)
            return;
        }
        let roots = ex.announced.as_mut().map(std::mem::take).unwrap_or_default();
        let objs = &self.cx.log.a_to_b_objects;
        let ids = &self.cx.log.a_to_b_id_objects;
        if roots.is_empty() && objs.len() == self.traced_objects && ids.len() == self.traced_id_objects {
            return;
        }
        let mut objects: Vec<String> = objs[self.traced_objects..].to_vec();
        objects.extend_from_slice(&ids[self.traced_id_objects..]);
        self.traced_objects = objs.len();
        self.traced_id_objects = ids.len();
        let probed = ex.probed;
        self.cx.events.push_back(crate::Event::Exported { roots, objects, probed });
    }

    /// chum.md §2.7: pending requests are rejected (`WSP-ONCL0`, not logged) and the session ends.
    pub fn connection_closed(&mut self, reason: &str, _now: Instant) {
        if self.finished {
            return;
        }
        self.abort_all();
        self.finish(if reason.is_empty() { "connection closed".into() } else { reason.to_string() });
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let commit = self.importer.as_ref().and_then(Importer::commit_deadline);
        let ping = match self.ping {
            Some((_, sent, false)) => Some(sent + self.config.ping_timeout),
            Some(_) => None,
            None => self.next_ping,
        };
        self.pending.values().map(|p| p.deadline).chain(self.sleep_until).chain(commit).chain(ping).chain(self.catch_up_at).min()
    }

    /// The early first page of the last roots answer is being walked on a thread of its own
    /// (docs/chum-fastpath.md "Paged closure", *Early first page*).
    pub fn prewalk_on_thread(&self) -> bool {
        self.exporter.as_ref().is_some_and(Exporter::prewalk_on_thread)
    }

    /// Work that may wait until the driver has sent everything and has nothing else to do
    /// (docs/chum-fastpath.md "Paged closure", *Early first page*).
    pub fn idle_due(&self) -> bool {
        !self.finished && !self.exporter_done && self.exporter.as_ref().is_some_and(Exporter::idle_due)
    }

    /// Do the work of [`idle_due`](Self::idle_due).
    pub fn idle(&mut self, _now: Instant) {
        if let Some(ex) = self.exporter.as_mut() {
            ex.idle();
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.out.pop_front() {
            return Some(m);
        }
        // the next frame of the oldest BLOB stream, read now: the driver pulls a frame only
        // when the transport takes it, so a stream holds one frame, not the BLOB
        let s = self.streams.front_mut()?;
        let (m, done) = s.next_frame(&self.store);
        if done {
            self.streams.pop_front();
        }
        self.cx.stats.bytes_sent += match &m {
            Message::Text(t) => t.chars().count(),
            Message::Binary(b) => b.len(),
        } as u64;
        Some(m)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.cx.events.pop_front()
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    pub fn close_reason(&self) -> Option<&str> {
        self.close_reason.as_deref()
    }

    pub fn stats(&self) -> Stats {
        self.cx.stats
    }

    fn abort_all(&mut self) {
        if let Some(imp) = self.importer.as_mut() {
            // what the pass verified and may store is kept (the next pass asks for the rest)
            imp.commit_all(&mut self.cx);
        }
        for (_, mut p) in self.pending.drain() {
            if let Some(mut w) = p.writer.take() {
                let _ = w.abort();
            }
        }
        self.queue.clear();
        self.calls.clear();
        self.streams.clear();
        self.importer = None;
        self.sleep_until = None;
    }

    fn fatal(&mut self, code: &str, message: String) {
        let text = if message.starts_with(&format!("{code}:")) { message } else { format!("{code}: {message}") };
        self.cx.error(code, &text, true);
        self.abort_all();
        self.finish(text);
    }

    fn check_done(&mut self) {
        if !self.finished && self.started && self.importer_done && self.exporter_done {
            self.finish("chum finished".into());
        }
    }

    fn finish(&mut self, reason: String) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.close_reason = Some(reason.clone());
        self.sleep_until = None;
        self.ping = None;
        self.next_ping = None;
        let mut log = self.cx.log.clone();
        log.statistics = (self.cx.stats.requests_sent, self.cx.stats.requests_received, self.cx.stats.requests_invalid);
        self.cx.events.push_back(Event::Finished { reason, log });
    }
}
