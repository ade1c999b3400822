"""The diagnostics page's HTTP endpoints and the Prometheus metrics (docs/metrics.md): loopback
only unless forced, the token on every route (401 without it or with a wrong one, compared in
constant time), the Host check, the page's headers, ``/api/state`` and ``/api/events`` of a live
two-instance conversation, ``/metrics`` of ``lama serve`` and of a comm server parsed with
Prometheus' own parser and checked against what happened, and the CLI options."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lama import metrics
from lama._core import core
from lama.errors import InvalidArgumentError
from lama.web.commmetrics import CommServerMetrics
from lama.web.diag import HTTP_FILE, DiagnosticsServer
from lama.web.http import parse_address
from web_util import get, paired_apps, until

pytestmark = pytest.mark.timeout(180)


def parse(text: str) -> dict[str, Any]:
    """name -> prometheus_client Metric (the parser raises on malformed text)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams: dict[str, Any], family: str, name: str | None = None, **labels: str) -> float:
    hits = [s.value for s in fams[family].samples
            if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(hits) == 1, (family, name, labels, fams[family].samples)
    return float(hits[0])


# --------------------------------------------------------------------------- addresses


def test_parse_address_loopback_only_unless_forced() -> None:
    assert parse_address("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_address("localhost:0") == ("127.0.0.1", 0)
    assert parse_address("9100") == ("127.0.0.1", 9100)
    assert parse_address("[::1]:81") == ("::1", 81)
    assert parse_address("127.5.6.7:1") == ("127.5.6.7", 1)
    for remote in ("0.0.0.0:8080", "192.168.1.2:80", "[::]:80", "example.com:80"):
        with pytest.raises(InvalidArgumentError) as e:
            parse_address(remote)
        assert e.value.code == "LAMA-HTTP-ADDRESS" and "loopback" in str(e.value)
    assert parse_address("0.0.0.0:8080", allow_remote=True) == ("0.0.0.0", 8080)
    for bad in ("", ":80", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "[::1]80"):
        with pytest.raises(InvalidArgumentError):
            parse_address(bad)


# --------------------------------------------------------------------------- exposition format


def test_exposition_format_exact_and_parseable() -> None:
    reg = metrics.Registry()
    c = reg.counter("t_requests_total", "Requests.\nSecond line \\ backslash.", ["path"])
    c.inc(path='/a"b\\c\nd')
    c.inc(3, path="/x")
    g = reg.gauge("t_queue", "Queue length.")
    g.set(2.5)
    reg.gauge("t_computed", "Computed.", ["k"], fn=lambda: {("a",): 1, ("b",): 2})
    h = reg.histogram("t_seconds", "Durations.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 7.0):
        h.observe(v)
    text = metrics.render(reg)
    assert text == (
        '# HELP t_requests_total Requests.\\nSecond line \\\\ backslash.\n'
        '# TYPE t_requests_total counter\n'
        't_requests_total{path="/a\\"b\\\\c\\nd"} 1\n'
        't_requests_total{path="/x"} 3\n'
        '# HELP t_queue Queue length.\n# TYPE t_queue gauge\nt_queue 2.5\n'
        '# HELP t_computed Computed.\n# TYPE t_computed gauge\n'
        't_computed{k="a"} 1\nt_computed{k="b"} 2\n'
        '# HELP t_seconds Durations.\n# TYPE t_seconds histogram\n'
        't_seconds_bucket{le="0.1"} 2\nt_seconds_bucket{le="1"} 3\n'
        't_seconds_bucket{le="+Inf"} 4\nt_seconds_sum 7.65\nt_seconds_count 4\n')
    fams = parse(text)
    assert sample(fams, "t_requests", "t_requests_total", path='/a"b\\c\nd') == 1
    assert sample(fams, "t_seconds", "t_seconds_bucket", le="+Inf") == 4
    assert sample(fams, "t_seconds", "t_seconds_sum") == pytest.approx(7.65)
    # a name registered again: the same metric, or an error if its kind differs
    assert reg.counter("t_requests_total", "x", ["path"]) is c
    with pytest.raises(InvalidArgumentError):
        reg.gauge("t_requests_total", "x", ["path"])
    with pytest.raises(InvalidArgumentError):
        reg.counter("bad name", "x")
    with pytest.raises(InvalidArgumentError):
        c.inc(-1, path="/x")
    with pytest.raises(InvalidArgumentError):
        c.inc(wrong="label")
    with pytest.raises(InvalidArgumentError):
        reg.histogram("t_h2", "x", ["le"])


# --------------------------------------------------------------------------- the HTTP server


def test_http_server_bad_requests_leave_it_serving() -> None:
    from lama.web.http import MAX_HEAD, HttpServer, Response

    async def handler(req: Any) -> Response:
        return Response.text(f"{req.method} {req.path} {sorted(req.query.items())}\n")

    async def raw(port: int, data: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(data)
        await w.drain()
        out = await asyncio.wait_for(r.read(), 15)
        w.close()
        return out

    async def main() -> None:
        srv = HttpServer("127.0.0.1", 0, handler, token="t0k")
        await srv.start()
        try:
            port = srv.port
            assert (await raw(port, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
            assert (await raw(port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n")) \
                .startswith(b"HTTP/1.1 400 ")
            # a head above the limit: the connection is closed, nothing answered
            assert await raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n") \
                == b""
            status, h, body = await get(port, "/x?a=1&token=t0k", method="HEAD")
            assert status == 200 and body == b"" and int(h["content-length"]) > 0
            status, _, body = await get(port, "/x?a=1", {"Authorization": "Bearer t0k"})
            assert status == 200 and body == b"GET /x [('a', '1')]\n"
            # HTTP/1.0 without Host is allowed (probes); with the token
            out = await raw(port, b"GET /y?token=t0k HTTP/1.0\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"GET /y [('token', 't0k')]\n")
            assert srv.refused == 0 and srv.requests == 3
        finally:
            await srv.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- lama serve --http


def test_diagnostics_endpoints_of_a_live_conversation(tmp_path: Path) -> None:
    async def main() -> None:
        server, alice, bob = await paired_apps(tmp_path)
        diag = DiagnosticsServer(alice, "127.0.0.1", 0)
        try:
            await diag.start()
            port, token = diag.http.port, diag.token
            assert diag.link == f"http://127.0.0.1:{port}/?token={token}"
            # the token file: mode 0600, holds the link
            f = Path(alice.instance_dir) / HTTP_FILE
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
            assert json.loads(f.read_text())["link"] == diag.link

            auth = {"Authorization": f"Bearer {token}"}
            # no token, a wrong token, a token of the right length but wrong: 401, no data
            for path, hdrs in (("/", {}), ("/metrics", {}), ("/api/state", {}),
                               ("/api/state?token=nope", {}),
                               ("/metrics", {"Authorization": "Bearer " + "x" * len(token)}),
                               (f"/metrics?token={token[:-1]}", {})):
                status, h, body = await get(port, path, hdrs)
                assert status == 401, (path, hdrs)
                assert h["www-authenticate"].startswith("Bearer")
                assert b"lama" not in body.lower().replace(b"token required", b"")
                assert alice.person_id.encode() not in body
            # a foreign Host (DNS rebinding) is refused even with the token
            status, _, _ = await get(port, "/api/state", auth, host=f"evil.example:{port}")
            assert status == 421
            status, _, _ = await get(port, "/api/state", auth, method="POST")
            assert status == 405

            # the page: its CSP nonce is on its script and style, the security headers
            status, h, body = await get(port, f"/?token={token}")
            assert status == 200 and h["content-type"].startswith("text/html")
            nonce = re.search(r"'nonce-([^']+)'", h["content-security-policy"]).group(1)
            assert f'<script nonce="{nonce}">'.encode() in body
            assert "default-src 'none'" in h["content-security-policy"]
            assert h["referrer-policy"] == "no-referrer" and h["cache-control"] == "no-store"
            assert h["x-frame-options"] == "DENY"
            _, h2, _ = await get(port, f"/?token={token}")
            assert h2["content-security-policy"] != h["content-security-policy"]  # fresh nonce

            # a conversation: 2 messages out, 1 in
            got: list[str] = []
            alice.on_message(lambda m: None if m.outgoing else got.append(m.text))
            await alice.send(bob.person_id, "hello <b>Bob</b>")
            await alice.send(bob.person_id, "second")
            await until(lambda: len(bob.history(alice.person_id)) == 2, what="bob got 2")
            await bob.send(alice.person_id, "hi Alice")
            await until(lambda: "hi Alice" in got, what="alice got the answer")

            status, h, body = await get(port, "/api/state", auth)
            assert status == 200 and h["content-type"].startswith("application/json")
            st = json.loads(body)
            assert st["identity"]["person_id"] == alice.person_id
            assert st["identity"]["email"] == "alice@example.com"
            [c] = st["contacts"]
            assert c["person_id"] == bob.person_id and c["connected"]
            assert c["name"] == alice.contact(bob.person_id).name  # (the email: no profile yet)
            assert (c["sent"], c["received"], c["messages"]) == (2, 1, 3)
            chum = [x for x in st["connections"] if x["group"] == "chum" and x["connected"]]
            assert chum and chum[0]["person_id"] == bob.person_id
            assert chum[0]["bytes_sent"] > 0 and chum[0]["bytes_received"] > 0
            assert [m["text"] for m in st["messages"]] == ["hi Alice", "second",
                                                           "hello <b>Bob</b>"]
            assert st["health"]["active"] == 1 and st["identity"]["online"]
            assert st["totals"]["messages_out"] == 2 and st["totals"]["messages_in"] == 1
            [s] = [s for s in st["sync"] if s["person_id"] == bob.person_id]
            assert s["total_objects"] > 0
            assert st["tracing"] == (getattr(alice, "tracer", None) is not None)
            if st["tracing"]:  # docs/tracing.md: one trace per message, both directions
                ids = {t["message_id"] for t in st["traces"]}
                assert {m.id for m in alice.history(bob.person_id)} <= ids

            # /metrics: parsed by Prometheus' parser, values are what happened
            status, h, body = await get(port, "/metrics", auth)
            assert status == 200 and h["content-type"] == metrics.CONTENT_TYPE
            fams = parse(body.decode())
            assert sample(fams, "lama_messages", "lama_messages_total", direction="out") == 2
            assert sample(fams, "lama_messages", "lama_messages_total", direction="in") == 1
            assert sample(fams, "lama_connections", group="chum") == 1
            assert sample(fams, "lama_peers_connected") == 1
            assert sample(fams, "lama_online") == 1
            assert sample(fams, "lama_contacts") == 1
            assert sample(fams, "lama_connection_bytes", "lama_connection_bytes_total",
                          direction="sent") > 0
            assert sample(fams, "lama_sync_objects_received",
                          "lama_sync_objects_received_total") >= 1
            assert sample(fams, "lama_message_delivery_seconds",
                          "lama_message_delivery_seconds_count", direction="in") == 1
            inf = sample(fams, "lama_message_delivery_seconds",
                         "lama_message_delivery_seconds_bucket", direction="in", le="+Inf")
            assert inf == 1
            assert "lama_sync_objects_per_second" in fams and "lama_uptime_seconds" in fams
            assert math.isfinite(sample(fams, "lama_uptime_seconds"))
            if st["tracing"]:
                # out: creation here to the peer's confirmation (the trace's `stored`), one
                # observation per delivered message
                mine = [m.id for m in alice.history(bob.person_id) if m.outgoing]
                assert len(mine) == 2
                await until(lambda: all(alice.trace(i).status == "delivered" for i in mine),
                            what="alice's messages delivered")

                async def out_count() -> float:
                    fams = parse((await get(port, "/metrics", auth))[2].decode())
                    hits = [x.value for x in fams["lama_message_delivery_seconds"].samples
                            if x.name == "lama_message_delivery_seconds_count"
                            and x.labels.get("direction") == "out"]
                    return float(hits[0]) if hits else 0.0

                for _ in range(150):  # the tracer tells its subscribers at its flush (0.5 s)
                    if await out_count() == 2:
                        break
                    await asyncio.sleep(0.1)
                assert await out_count() == 2
            # the token in the query works as well (a browser link)
            assert (await get(port, f"/metrics?token={token}"))[0] == 200

            # server-sent events: a state event at once, another after a new message
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(f"GET /api/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                    .encode())
            await w.drain()

            async def next_state() -> dict[str, Any]:
                while True:
                    line = await asyncio.wait_for(r.readline(), 15)
                    assert line, "the event stream ended"
                    if line.startswith(b"data: "):
                        return json.loads(line[6:])  # type: ignore[no-any-return]

            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            assert b"text/event-stream" in head
            first = await next_state()
            assert first["totals"]["messages_in"] == 1
            await bob.send(alice.person_id, "live update")
            for _ in range(20):
                ev = await next_state()
                if ev["totals"]["messages_in"] == 2:
                    break
            assert ev["messages"][0]["text"] == "live update"
            w.close()

            if st["tracing"]:
                # a stalled delivery: Bob is gone; the page's trace names the failure point
                await bob.close()
                await until(lambda: not alice.manager.connected(bob.person_id), what="down")
                m = await alice.send(bob.person_id, "while you were out")

                async def trace_of(mid: str) -> dict[str, Any] | None:
                    st = json.loads((await get(port, "/api/state", auth))[2])
                    return next((t for t in st["traces"] if t["message_id"] == mid), None)

                t = None
                # never_connected until Alice's first redial has failed (docs/tracing.md §3)
                for _ in range(100):
                    t = await trace_of(m.id)
                    if t and t["failure"] and t["failure"]["point"] != "never_connected":
                        break
                    await asyncio.sleep(0.1)
                assert t and t["status"] != "delivered", t
                assert t["failure"]["point"] == "peer_offline", t
                assert t["failure"]["peer"] == bob.person_id
                status, _, body = await get(port, "/api/traces?stalled=0&limit=5", auth)
                assert status == 200 and m.id in {x["message_id"]
                                                  for x in json.loads(body)["traces"]}
            else:
                assert (await get(port, "/api/traces", auth))[0] == 404
        finally:
            await diag.close()
            await alice.close()
            await bob.close()
            await server.close()
        assert not (Path(alice.instance_dir) / HTTP_FILE).exists()  # removed on close

    asyncio.run(main())


# --------------------------------------------------------------------------- comm server


def test_comm_server_metrics_count_connections_and_handovers(tmp_path: Path) -> None:
    async def main() -> None:
        server, alice, bob = await paired_apps(tmp_path)
        exporter = CommServerMetrics(server, "127.0.0.1", 0, token="s3cret-token")
        try:
            await exporter.start()
            port = exporter.http.port
            assert exporter.url == f"http://127.0.0.1:{port}/metrics"
            assert (await get(port, "/metrics"))[0] == 401
            assert (await get(port, "/metrics", {"Authorization": "Bearer s3cret-tokeN"}))[0] \
                == 401
            await alice.send(bob.person_id, "via the relay")
            await until(lambda: len(bob.history(alice.person_id)) == 1, what="relayed message")
            status, h, body = await get(port, "/metrics",
                                        {"Authorization": "Bearer s3cret-token"})
            assert status == 200 and h["content-type"] == metrics.CONTENT_TYPE
            fams = parse(body.decode())
            counters = server.counters()
            # every counter of the server is exported under its documented name
            assert sample(fams, "lama_commserver_handovers",
                          "lama_commserver_handovers_total") >= 2  # pairing + chum
            assert sample(fams, "lama_commserver_connections",
                          "lama_commserver_connections_total") >= counters["handovers"]
            assert sample(fams, "lama_commserver_relayed_bytes",
                          "lama_commserver_relayed_bytes_total") > 0
            assert sample(fams, "lama_commserver_relays_open") == counters["relays"] >= 1
            assert sample(fams, "lama_commserver_spares") == counters["spares"]
            assert sample(fams, "lama_commserver_up") == 1
            assert fams["lama_commserver_relays_open"].type == "gauge"
            assert fams["lama_commserver_handovers"].type == "counter"
            # an unknown counter (a newer server's) is still exported
            from lama.web.commmetrics import commserver_families

            extra = {f.name: f.type for f in commserver_families(
                {"mailbox_items": 3, "mailbox_recipients": 1, "mailbox_deposits": 5})}
            assert extra["lama_commserver_mailbox_items"] == "gauge"
            assert extra["lama_commserver_mailbox_recipients"] == "gauge"
            assert extra["lama_commserver_mailbox_deposits_total"] == "counter"
        finally:
            await exporter.close()
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- CLI


def _lama(*args: str, env: dict[str, str] | None = None, **kw: Any) -> Any:
    return subprocess.Popen([sys.executable, "-m", "lama.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, **kw)


def test_cli_refuses_remote_addresses(tmp_path: Path) -> None:
    p = _lama("comm-server", "--port", "0", "--metrics", "0.0.0.0:0")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "LAMA-HTTP-ADDRESS" in err and "loopback" in err
    # forced, but no token: still refused
    p = _lama("comm-server", "--port", "0", "--metrics", "0.0.0.0:0", "--metrics-allow-remote",
              env={"LAMA_METRICS_TOKEN": ""})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "LAMA_METRICS_TOKEN" in err
    # lama serve: refused before the secret is asked or the instance opened
    p = _lama("serve", "--dir", str(tmp_path), "--http", "10.1.2.3:8080",
              env={"LAMA_SECRET": ""})
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "LAMA-HTTP-ADDRESS" in err


def test_cli_comm_server_metrics(tmp_path: Path) -> None:
    """``lama comm-server --mailbox DIR --metrics``: the relay's counters and the mailbox's
    sizes after two deposits (docs/mailbox.md §5)."""
    from lama.connect import mailbox

    p = _lama("comm-server", "--port", "0", "--metrics", "127.0.0.1:0",
              "--mailbox", str(tmp_path / "mailbox"), env={"LAMA_METRICS_TOKEN": "tok-123"})
    try:
        assert p.stdout is not None
        url = p.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:")
        line = p.stdout.readline().strip()
        m = re.fullmatch(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
        assert m, line
        port = int(m.group(1))

        async def scrape() -> None:
            assert (await get(port, "/metrics"))[0] == 401
            status, _, body = await get(port, "/metrics", {"Authorization": "Bearer tok-123"})
            assert status == 200
            fams = parse(body.decode())
            assert sample(fams, "lama_commserver_up") == 1
            assert sample(fams, "lama_commserver_handovers",
                          "lama_commserver_handovers_total") == 0
            assert sample(fams, "lama_commserver_mailbox_items") == 0
            # two envelopes for one recipient (the server holds ciphertext it cannot read)
            from lama._core import core

            pk, sk = core.box_keypair()  # the depositor proves its key (docs/mailbox.md §2.2)
            envs = [mailbox.MAGIC + pk + os.urandom(n) for n in (100, 250)]
            await mailbox.deposit(url, os.urandom(32), envs, pk, sk)
            status, _, body = await get(port, "/metrics", {"Authorization": "Bearer tok-123"})
            fams = parse(body.decode())
            assert fams["lama_commserver_mailbox_items"].type == "gauge"
            assert sample(fams, "lama_commserver_mailbox_items") == 2
            assert sample(fams, "lama_commserver_mailbox_bytes") == sum(map(len, envs))
            assert sample(fams, "lama_commserver_mailbox_deposits",
                          "lama_commserver_mailbox_deposits_total") == 2
        asyncio.run(scrape())
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "handovers 0" in out and "mailbox_items 2" in out


def test_cli_serve_http(tmp_path: Path) -> None:
    """``lama serve --http 127.0.0.1:0``: the link (with its token) in the ``http`` event and
    in http.json; the page's data and /metrics through it; SIGTERM removes http.json."""
    from test_pairing_e2e import Proc, comm_server, free_port, init

    relay = comm_server(free_port())
    info = init(tmp_path, "carol")
    p = Proc([sys.executable, "-m", "lama.cli", "serve", "--dir", str(tmp_path / "carol"),
              "--comm-server", relay_url(relay), "--json", "--http", "127.0.0.1:0"])
    try:
        ev = p.event("http", 60)
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{32})", ev["http_link"])
        assert m, ev
        port, token = int(m.group(1)), m.group(2)
        [d] = [x for x in (tmp_path / "carol").iterdir() if (x / "instance.json").is_file()]
        assert json.loads((d / HTTP_FILE).read_text())["token"] == token

        async def check() -> None:
            assert (await get(port, "/api/state"))[0] == 401
            status, _, body = await get(port, f"/api/state?token={token}")
            assert status == 200
            st = json.loads(body)
            assert st["identity"]["person_id"] == info["person_id"]
            assert st["contacts"] == [] and st["pid"] == p.p.pid
            status, _, body = await get(port, "/metrics", {"Authorization": f"Bearer {token}"})
            assert status == 200 and sample(parse(body.decode()), "lama_contacts") == 0
        asyncio.run(check())
        p.p.terminate()
        assert p.p.wait(30) == 0
        assert not (d / HTTP_FILE).exists()
    finally:
        p.stop()
        relay.stop()


def relay_url(relay: Any) -> str:
    return relay.lines[0]
