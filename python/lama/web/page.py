"""The diagnostics page: one HTML document with its style and script inline (a nonce in the
Content-Security-Policy allows exactly them). The script reads the token from its own URL,
subscribes to ``/api/events`` (server-sent events, one ``state`` event per change) and falls
back to polling ``/api/state`` if the stream fails. Every value from the instance (names,
message texts, error texts) is put into the document with ``textContent``, never as HTML.
"""

from __future__ import annotations

__all__ = ["render_page", "csp"]


def csp(nonce: str) -> str:
    return ("default-src 'none'; "
            f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")


def render_page(nonce: str) -> str:
    return _PAGE.replace("{{NONCE}}", nonce)


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>lama diagnostics</title>
<style nonce="{{NONCE}}">
  body { font: 14px/1.4 "Liberation Sans", Arial, sans-serif; margin: 0; background: #f4f5f7;
         color: #1d2330; }
  header { background: #23304a; color: #fff; padding: 10px 18px; display: flex;
           align-items: baseline; gap: 18px; }
  header h1 { font-size: 18px; margin: 0; }
  header .live { margin-left: auto; font-size: 12px; }
  .dot { display: inline-block; width: 9px; height: 9px; border-radius: 50%;
         background: #999; margin-right: 5px; }
  .dot.on { background: #2bb673; } .dot.off { background: #d9534f; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr));
         gap: 14px; padding: 14px; }
  section { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002;
            padding: 10px 14px; overflow: auto; }
  section.wide { grid-column: 1 / -1; }
  h2 { font-size: 15px; margin: 2px 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid #e4e6ea;
           vertical-align: top; }
  th { font-weight: 600; color: #555; font-size: 12px; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .mono { font-family: "Liberation Mono", monospace; font-size: 12px; word-break: break-all; }
  .muted { color: #777; }
  .state-up { color: #1d8a55; font-weight: 600; } .state-down { color: #c0392b; font-weight: 600; }
  .status-delivered, .status-received { color: #1d8a55; }
  .status-stalled { color: #c0392b; font-weight: 600; } .status-in_flight { color: #b7791f; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
  dt { color: #555; } dd { margin: 0; }
  .steps { font-size: 12px; color: #444; }
</style>
</head>
<body>
<header>
  <h1>lama diagnostics</h1>
  <span id="who"></span>
  <span class="live"><span id="live-dot" class="dot"></span><span id="live">connecting…</span></span>
</header>
<main>
  <section id="identity-section">
    <h2>Identity</h2>
    <dl id="identity"></dl>
  </section>
  <section id="health-section">
    <h2>Health</h2>
    <dl id="health"></dl>
  </section>
  <section id="contacts-section" class="wide">
    <h2>Contacts</h2>
    <table><thead><tr><th>name</th><th>email</th><th>person</th><th>connection</th>
      <th class="num">messages</th><th class="num">sent</th><th class="num">received</th></tr></thead>
      <tbody id="contacts"></tbody></table>
  </section>
  <section id="connections-section" class="wide">
    <h2>Connections</h2>
    <table><thead><tr><th>peer</th><th>group</th><th>state</th><th>since</th><th>latency</th>
      <th class="num">bytes out</th><th class="num">bytes in</th><th>reconnects</th><th>route</th>
      <th>last error</th></tr></thead>
      <tbody id="connections"></tbody></table>
  </section>
  <section id="sync-section">
    <h2>Sync progress</h2>
    <table><thead><tr><th>peer</th><th>state</th><th class="num">objects (session)</th>
      <th class="num">objects (total)</th><th class="num">objects/s</th><th>passes</th>
      <th>updated</th></tr></thead>
      <tbody id="sync"></tbody></table>
  </section>
  <section id="messages-section">
    <h2>Recent messages</h2>
    <table><thead><tr><th>time</th><th>from</th><th>text</th></tr></thead>
      <tbody id="messages"></tbody></table>
  </section>
  <section id="traces-section" class="wide">
    <h2>Message traces</h2>
    <p id="traces-note" class="muted"></p>
    <table><thead><tr><th>created</th><th>dir</th><th>message</th><th>status</th>
      <th>failure point</th><th>steps</th></tr></thead>
      <tbody id="traces"></tbody></table>
  </section>
  <section id="events-section" class="wide">
    <h2>Events</h2>
    <table><thead><tr><th>time</th><th>event</th><th>peer</th><th>detail</th></tr></thead>
      <tbody id="events"></tbody></table>
  </section>
</main>
<script nonce="{{NONCE}}">
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const q = "?token=" + encodeURIComponent(token);
let lastVersion = -1, pollTimer = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else if (c && typeof c === "object") { tr.appendChild(el("td", c.text, c.cls)); }
    else tr.appendChild(el("td", c));
  }
  return tr;
}
function fill(id, rows, empty, cols) {
  const tb = document.getElementById(id);
  tb.replaceChildren(...rows);
  if (!rows.length) { const tr = row([{text: empty, cls: "muted"}]);
    tr.firstChild.colSpan = cols; tb.appendChild(tr); }
}
function dl(id, pairs) {
  const d = document.getElementById(id); d.replaceChildren();
  for (const [k, v, cls] of pairs) { d.appendChild(el("dt", k)); d.appendChild(el("dd", v, cls)); }
}
const short = h => h ? String(h).slice(0, 12) + "…" : "–";
function ago(t, now) {
  if (t === null || t === undefined) return "never";
  const s = Math.max(0, now - t);
  return s < 60 ? s.toFixed(1) + " s ago" : s < 3600 ? (s / 60).toFixed(1) + " min ago"
    : (s / 3600).toFixed(1) + " h ago";
}
const clock = t => new Date(t * 1000).toLocaleTimeString();
const ms = v => (v === null || v === undefined) ? "–" : (v * 1000).toFixed(1) + " ms";
const num = v => (v === null || v === undefined) ? "–" : Number(v).toLocaleString("en");

function render(s) {
  lastVersion = s.version;
  const id = s.identity, now = s.now;
  document.getElementById("who").textContent =
    (id.name || "") + " <" + (id.email || "") + "> · " + (id.instance_name || "");
  dl("identity", [["name", id.name], ["email", id.email], ["person", id.person_id, "mono"],
    ["instance", (id.instance_name || "") + " " + id.instance_id, "mono"],
    ["comm server", id.comm_server + (id.online ? " (online)" : " (offline)")],
    ["core", s.core + " · pid " + s.pid], ["running since", ago(id.started_at, now)]]);
  const h = s.health, t = s.totals;
  dl("health", [["status", h.status, h.status === "healthy" ? "state-up" :
      (h.status === "idle" ? "" : "state-down")],
    ["connected", h.active + " of " + h.total + " peers"],
    ["average latency", ms(h.average_latency)], ["last sync", ago(h.last_sync, now)],
    ["messages", t.messages_out + " sent, " + t.messages_in + " received (this run)"],
    ["sync", num(t.sync_objects) + " objects received, " + t.sync_rate + " objects/s"],
    ["traffic", num(t.bytes_sent) + " bytes out, " + num(t.bytes_received) + " bytes in"]]);
  fill("contacts", s.contacts.map(c => {
    const tr = row([c.name, c.email || "–", {text: short(c.person_id), cls: "mono"},
      {text: c.connected ? "connected" : "not connected", cls: c.connected ? "state-up" : "state-down"},
      {text: c.messages === null ? "?" : c.messages, cls: "num"},
      {text: c.sent, cls: "num"}, {text: c.received, cls: "num"}]);
    tr.dataset.person = c.person_id; return tr; }), "no contacts yet", 7);
  fill("connections", s.connections.map(c => {
    const tr = row([c.name || short(c.person_id), c.group,
      {text: c.connected ? "up" : (c.enabled ? "down" : "disabled"),
       cls: c.connected ? "state-up" : "state-down"},
      c.connected ? ago(c.since, now) : "–", ms(c.latency),
      {text: num(c.bytes_sent), cls: "num"}, {text: num(c.bytes_received), cls: "num"},
      c.reconnect_attempts ?? "–", {text: (c.routes || []).join(", ") || "–", cls: "mono"},
      c.last_error || c.last_close_reason || "–"]);
    tr.dataset.person = c.person_id || ""; tr.dataset.state = c.connected ? "up" : "down";
    return tr; }), "no connections", 10);
  fill("sync", s.sync.map(x => row([x.name || short(x.person_id), x.state,
      {text: num(x.session_objects), cls: "num"}, {text: num(x.total_objects), cls: "num"},
      {text: x.rate, cls: "num"}, x.passes, ago(x.updated, now)])), "no sync yet", 7);
  fill("messages", s.messages.map(m => row([clock(m.timestamp / 1000),
      m.outgoing ? "me" : m.sender_name, m.text + (m.attachments ? " 📎" + m.attachments : "")])),
    "no messages in this run", 3);
  const note = document.getElementById("traces-note");
  if (!s.tracing) {
    note.textContent = "Message tracing is not available in this instance (tracing off or not built in).";
    fill("traces", [], "no traces", 6);
  } else {
    note.textContent = "";
    fill("traces", s.traces.map(tr => {
      const f = tr.failure;
      const r = row([clock(tr.created / 1000), tr.direction, tr.preview,
        {text: tr.status, cls: "status-" + tr.status},
        f ? f.point + (f.detail ? " (" + f.detail + ")" : "") : "–",
        {text: tr.steps.map(x => x.step).join(" → "), cls: "steps"}]);
      r.dataset.message = tr.message_id; r.dataset.status = tr.status; return r; }),
      "no traces yet", 6);
  }
  fill("events", s.events.map(e => row([clock(e.time), e.kind, e.name || short(e.person),
      e.detail])), "no events yet", 4);
  document.body.dataset.version = s.version;
}

function live(on, text) {
  document.getElementById("live-dot").className = "dot " + (on ? "on" : "off");
  document.getElementById("live").textContent = text;
}
async function poll() {
  try {
    const r = await fetch("api/state" + q, {cache: "no-store"});
    if (r.ok) { render(await r.json()); live(true, "live (polling)"); }
    else live(false, "error " + r.status);
  } catch (e) { live(false, "instance not reachable"); }
  pollTimer = setTimeout(poll, 2000);
}
function stream() {
  const es = new EventSource("api/events" + q);
  es.addEventListener("state", ev => { render(JSON.parse(ev.data)); live(true, "live"); });
  es.onerror = () => { es.close(); live(false, "stream lost, polling"); if (!pollTimer) poll(); };
}
if (window.EventSource) stream(); else poll();
</script>
</body>
</html>
"""
