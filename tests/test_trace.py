"""Message transfer tracing (issue 11, docs/tracing.md): two apps through a comm server on
127.0.0.1 - a delivered message's trace has every step in order on both sides (the last ones
confirmed by the receipt, service 107); each stall cause produces a trace naming it
(not_granted, never_connected, connection_refused, peer_offline, import_error); traces survive a
reopen; ``lama trace`` prints them; the JSON-lines logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lama import App, AppConfig
from lama._core import core
from lama.errors import NotFoundError

pytestmark = pytest.mark.timeout(180)
SECRET = "trace-secret"
OUT_STEPS = ["created", "posted", "granted", "offered", "fetched", "stored"]


async def until(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met in time")
        await asyncio.sleep(0.02)


def cfg(server: Any, **kw: Any) -> AppConfig:
    return AppConfig(comm_server_url=server.url, trace=True, trace_stall_after=0.3, **kw)


async def paired(tmp_path: Path, server: Any, acfg: AppConfig | None = None,
                 bcfg: AppConfig | None = None) -> tuple[App, App]:
    alice = await App.create(tmp_path / "alice", email="alice@example.com", name="Alice",
                             secret=SECRET, config=acfg or cfg(server))
    bob = await App.create(tmp_path / "bob", email="bob@example.com", name="Bob",
                           secret=SECRET, config=bcfg or cfg(server))
    await alice.start()
    await bob.start()
    link = await alice.invite()
    await bob.accept(link)
    await alice.wait_contact(30)
    await until(lambda: alice.manager.connected(bob.person_id)
                and bob.manager.connected(alice.person_id), what="connected")
    return alice, bob


def point(app: App, mid: str) -> str | None:
    f = app.trace(mid).failure
    return None if f is None else f.point


def test_delivered_trace_in_order_persisted_and_printed(tmp_path: Path) -> None:
    changes: list[Any] = []

    async def main() -> tuple[str, str, str]:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await paired(tmp_path, server)
        try:
            alice.on_trace(changes.append)
            m = await alice.send(bob.person_id, "hello, traced world")
            await until(lambda: alice.trace(m.id).status == "delivered", what="delivered")
            t = alice.trace(m.id)
            assert t.direction == "out" and t.failure is None
            assert t.preview == "hello, traced world" and t.sender == alice.person_id
            assert [s.step for s in t.steps] == OUT_STEPS
            assert [s.peer for s in t.steps] == [None, None] + [bob.person_id] * 4
            ats = [s.at for s in t.steps]
            assert ats == sorted(ats) and ats[0] <= ats[-1] < ats[0] + 30_000
            (p,) = t.peers
            assert (p.person_id, p.name, p.kind, p.last_step, p.failure) == \
                (bob.person_id, alice.contact(bob.person_id).name, "lama", "stored", None)
            # a prefix works; an unknown id is LAMA-TRACE-NONE
            assert alice.trace(m.id[:10]).message_id == m.id
            with pytest.raises(NotFoundError) as e:
                alice.trace("0" * 64)
            assert e.value.code == "LAMA-TRACE-NONE"
            # the receiving side: received from alice, visible, confirmed by its receipt
            await until(lambda: _has(bob, m.id, "confirmed"), what="confirmed at bob")
            tb = bob.trace(m.id)
            assert tb.direction == "in" and tb.status == "received"
            assert [s.step for s in tb.steps] == ["created", "received", "visible", "confirmed"]
            assert tb.steps[1].peer == alice.person_id and tb.steps[3].peer == alice.person_id
            assert [x.message_id for x in alice.traces()] == [m.id]
            assert alice.traces(stalled=True) == []
            await asyncio.sleep(0.5)  # the subscribers were told (after the flush delay)
            assert changes and changes[-1].status == "delivered"
            assert {c.message_id for c in changes} == {m.id}
            return m.id, str(alice.instance_dir), str(bob.instance_dir)
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    mid, adir, bdir = asyncio.run(main())

    async def reopen() -> None:
        app = await App.open(adir, SECRET, config=AppConfig(comm_server_url=None, trace=True))
        try:
            t = app.trace(mid)  # not started: from traces.sqlite3
            assert t.status == "delivered" and [s.step for s in t.steps] == OUT_STEPS
        finally:
            await app.close()

    asyncio.run(reopen())
    assert (Path(adir) / "traces.sqlite3").is_file()
    env = {**os.environ, "LAMA_SECRET": SECRET, "LAMA_COMM_SERVER": "ws://127.0.0.1:9"}
    run = [sys.executable, "-m", "lama.cli", "trace", mid[:12], "--dir", adir]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"message {mid}")
    assert [ln.split()[1] for ln in lines[1:7]] == OUT_STEPS
    assert "bob" in lines[6].lower() and lines[-1] == "status: delivered"
    out = subprocess.run(run + ["--json"], env=env, capture_output=True, text=True, timeout=60)
    d = json.loads(out.stdout)
    assert d["message_id"] == mid and d["failure"] is None
    assert [s["step"] for s in d["steps"]] == OUT_STEPS
    out = subprocess.run([sys.executable, "-m", "lama.cli", "trace", "--dir", adir], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split()[:3] == [mid[:16], "out", "delivered"]
    out = subprocess.run([sys.executable, "-m", "lama.cli", "trace", "ab" * 8, "--dir", adir],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "LAMA-TRACE-NONE" in out.stderr


def _has(app: App, mid: str, step: str) -> bool:
    try:
        return any(s.step == step for s in app.trace(mid).steps)
    except NotFoundError:
        return False


def test_not_granted(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await paired(tmp_path, server)
        try:
            topic = alice.contact(bob.person_id).topic_id
            await alice.remove_contact(bob.person_id)  # the grants no longer list bob
            m = await alice.send(topic, "nobody may read this")
            await until(lambda: alice.trace(m.id).status == "stalled", what="stalled")
            t = alice.trace(m.id)
            assert t.failure is not None and (t.failure.peer, t.failure.point) == \
                (bob.person_id, "not_granted")
            assert "granted" not in [s.step for s in t.steps]
            assert [x.message_id for x in alice.traces(stalled=True)] == [m.id]
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


def test_never_connected_then_delivered_after_reopen(tmp_path: Path) -> None:
    """The inviter does not dial (establish_outgoing off): with the peer gone, nothing
    connects; the trace says so, survives a restart of the sender and completes when the peer
    comes back."""
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        acfg = cfg(server, manager_options={"establish_outgoing": False})
        alice, bob = await paired(tmp_path, server, acfg=acfg)
        bdir = bob.instance_dir
        await bob.close()
        await until(lambda: not alice.manager.connected(bob.person_id), what="bob gone")
        try:
            m = await alice.send(bob.person_id, "are you there?")
            await until(lambda: alice.trace(m.id).status == "stalled", what="stalled")
            assert point(alice, m.id) == "never_connected"
            adir = alice.instance_dir
            await alice.close()
            alice = await App.open(adir, SECRET, config=acfg)
            await alice.start()
            assert point(alice, m.id) == "never_connected"  # loaded, live state again
            bob = await App.open(bdir, SECRET, config=cfg(server))
            await bob.start()
            await until(lambda: alice.trace(m.id).status == "delivered", what="delivered")
            assert [s.step for s in alice.trace(m.id).steps] == OUT_STEPS
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


def test_peer_offline(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await paired(tmp_path, server)
        try:
            await bob.close()
            await until(lambda: not alice.manager.connected(bob.person_id), what="bob gone")
            m = await alice.send(bob.person_id, "offline?")
            await until(lambda: point(alice, m.id) == "peer_offline"
                        and alice.trace(m.id).status == "stalled", what="peer_offline")
            t = alice.trace(m.id)
            assert t.failure is not None and t.failure.detail
            assert t.peers[0].last_step == "granted"
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


def test_connection_refused(tmp_path: Path) -> None:
    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await paired(tmp_path, server)
        try:
            await bob.remove_contact(alice.person_id)  # bob's route to alice is disabled
            await until(lambda: not alice.manager.connected(bob.person_id), what="dropped")
            m = await alice.send(bob.person_id, "let me in")
            await until(lambda: point(alice, m.id) == "connection_refused", what="refused")
            t = alice.trace(m.id)
            assert t.failure is not None and t.failure.detail
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


def test_import_error(tmp_path: Path) -> None:
    """An attachment's BLOB is damaged in the sender's store after posting: the peer's
    importer cannot get it, its receipt carries the error, the trace names import_error."""
    from test_store_damage import _raw_put

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        alice, bob = await paired(tmp_path, server)
        try:
            f = tmp_path / "a.bin"
            f.write_bytes(os.urandom(3000))
            await alice.manager.disable_person(bob.person_id)  # post while bob is cut off
            m = await alice.send(bob.person_id, "a file", attachments=[f])
            adir = alice.instance_dir
            await alice.close()
            (data,) = Path(adir).rglob("data.mdb")
            _raw_put(data.parent, "objects", bytes.fromhex(m.attachments[0].hash), b"Zxx")
            alice = await App.open(adir, SECRET, config=cfg(server))
            await alice.start()
            await alice.manager.enable_person(bob.person_id)
            await until(lambda: point(alice, m.id) == "import_error", what="import_error")
            t = alice.trace(m.id)
            assert t.failure is not None and t.failure.detail
            assert "stored" not in [s.step for s in t.steps]
            assert t.status == "stalled"
        finally:
            await alice.close()
            await bob.close()
            await server.close()

    asyncio.run(main())


def test_trace_off_and_json_logs(tmp_path: Path) -> None:
    from lama import log as lama_log

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        app = await App.create(tmp_path / "x", email="x@example.com", name="X", secret=SECRET,
                               config=AppConfig(comm_server_url=server.url, trace=False))
        try:
            assert app.tracer is None and app.traces() == []
            assert not app.manager.config.trace
            with pytest.raises(NotFoundError):
                app.trace("0" * 64)
        finally:
            await app.close()
            await server.close()

    asyncio.run(main())
    assert list((tmp_path / "x").rglob("traces.sqlite3")) == []
    buf = io.StringIO()
    h = lama_log.configure("info", "json", stream=buf)
    try:
        logging.getLogger("lama.test").debug("hidden")
        logging.getLogger("lama.test").info("shown", extra={"fields": {"event": "e", "peer": "p"}})
        (line,) = buf.getvalue().splitlines()
        d = json.loads(line)
        assert (d["level"], d["logger"], d["msg"], d["event"], d["peer"]) == \
            ("info", "lama.test", "shown", "e", "p")
        assert d["ts"].endswith("Z") and "T" in d["ts"]
        lama_log.configure("debug", "text", stream=buf)
        logging.getLogger("lama.test").debug("now shown")
        assert "debug" in buf.getvalue().splitlines()[-1]
        with pytest.raises(ValueError):
            lama_log.configure("loud")
    finally:
        lg = logging.getLogger("lama")
        for x in list(lg.handlers):
            lg.removeHandler(x)
        lg.propagate, lg.level = True, logging.NOTSET
        assert h not in lg.handlers


def test_persisted_log_limit_damage_and_rewrite(tmp_path: Path, monkeypatch: Any) -> None:
    """Traces kept across reopen up to ``trace_limit`` (the oldest dropped), a damaged log
    record skipped, the log rewritten as one record per batch when it grew."""
    import sqlite3

    from lama import trace as trace_mod

    conf = AppConfig(comm_server_url=None, trace=True, trace_limit=5)

    async def first() -> tuple[list[str], Path]:
        app = await App.create(tmp_path / "a", email="a@example.com", name="A", secret=SECRET,
                               config=conf)
        try:
            topic = app.chat.create_group("g", ["ab" * 32]).id
            ids = [(await app.send(topic, f"m{i}")).id for i in range(4)]
            ids += [m.id for m in await app.send_many(topic, ["b1", "b2", "b3", "b4"])]
            t = app.trace(ids[-1])
            assert [s.step for s in t.steps] == ["created", "posted", "granted"]
            assert t.status == "in_flight" and t.peers[0].failure == "peer_offline"
            return ids, app.instance_dir
        finally:
            await app.close()

    ids, adir = asyncio.run(first())
    db = sqlite3.connect(str(adir / "traces.sqlite3"))
    rows = db.execute("SELECT data FROM log ORDER BY id").fetchall()
    kinds = [json.loads(d)[0] for (d,) in rows]
    # the batch shares one record (the compact form: ids concatenated, docs/tracing.md §5)
    assert "drop" in kinds and kinds.count("newc") < len(ids) and "new" not in kinds
    with db:
        db.execute("INSERT INTO log (data) VALUES ('[\"new\", \"truncated')")
    db.close()
    monkeypatch.setattr(trace_mod, "_COMPACT_AFTER", 10)

    async def again() -> None:
        app = await App.open(adir, SECRET, config=conf)
        try:
            assert [t.message_id for t in app.traces()] == ids[:-6:-1]
            with pytest.raises(NotFoundError):
                app.trace(ids[0])
            assert [s.step for s in app.trace(ids[4]).steps] == ["created", "posted", "granted"]
            app.tracer.flush()  # the rewrite: the live traces as `new` records
            db = sqlite3.connect(str(adir / "traces.sqlite3"))
            kinds = [json.loads(d)[0] for (d,) in db.execute("SELECT data FROM log")]
            db.close()
            assert kinds and set(kinds) == {"newc"} and len(kinds) <= 2
        finally:
            await app.close()

    asyncio.run(again())


def test_a_long_log_is_read_in_slices_and_rewritten_at_opening(tmp_path: Path) -> None:
    """Issue 10: opening read the whole trace log, rebuilt every trace in it and only then kept
    the newest ``trace_limit`` (an instance that posted 100,000 messages: a 21 MB log, ~37 MiB
    more anonymous memory after every start, 4 s). The traces are now cut to the limit as the
    log is read, and a log holding more than twice the traces it keeps is rewritten right
    after opening, so the next start reads only those."""
    import sqlite3

    n = 2_500

    def log_rows(adir: Path) -> list[str]:
        db = sqlite3.connect(str(adir / "traces.sqlite3"))
        try:
            return [d for (d,) in db.execute("SELECT data FROM log ORDER BY id")]
        finally:
            db.close()

    async def first() -> tuple[list[str], Path]:
        # a limit above n: the log holds every trace (no drop records)
        app = await App.create(tmp_path / "a", email="a@example.com", name="A", secret=SECRET,
                               config=AppConfig(comm_server_url=None, trace=True, trace_limit=n))
        try:
            topic = app.chat.create_group("g", ["ab" * 32]).id
            ids: list[str] = []
            for i in range(0, n, 500):
                ids += [m.id for m in await app.send_many(topic, [f"m{j}" for j in range(i, i + 500)])]
            return ids, app.instance_dir
        finally:
            await app.close()

    ids, adir = asyncio.run(first())
    before = log_rows(adir)
    assert "drop" not in {json.loads(d)[0] for d in before}

    async def again() -> None:
        app = await App.open(adir, SECRET,
                             config=AppConfig(comm_server_url=None, trace=True, trace_limit=5))
        try:
            assert [t.message_id for t in app.traces()] == ids[:-6:-1]
            with pytest.raises(NotFoundError):
                app.trace(ids[-6])
            app.tracer.flush()
            after = log_rows(adir)
            assert {json.loads(d)[0] for d in after} == {"newc"}
            assert sum(map(len, after)) * 100 < sum(map(len, before)), (len(after), len(before))
        finally:
            await app.close()

    asyncio.run(again())


def test_a_reopened_batch_shares_what_its_posts_share(tmp_path: Path) -> None:
    """Issue 10: the traces rebuilt from one batch's log record share its recipients and its
    `created` step (one object per distinct time), as the posted ones do, instead of one
    copy per message (10,000 kept traces cost ~1 MiB more with copies)."""

    async def first() -> Path:
        app = await App.create(tmp_path / "a", email="a@example.com", name="A", secret=SECRET,
                               config=AppConfig(comm_server_url=None, trace=True))
        try:
            topic = app.chat.create_group("g", ["ab" * 32, "cd" * 32]).id
            await app.send_many(topic, [f"m{j}" for j in range(300)])
            return app.instance_dir
        finally:
            await app.close()

    adir = asyncio.run(first())

    async def again() -> None:
        app = await App.open(adir, SECRET, config=AppConfig(comm_server_url=None, trace=True))
        try:
            recs = list(app.tracer._recs.values())
            assert len(recs) == 300
            assert sorted(recs[0].recipients) == ["ab" * 32, "cd" * 32]
            assert len({id(r.recipients) for r in recs}) == 1
            firsts = {id(r.steps[0]) for r in recs}
            assert all(r.steps[0] == ("created", r.created, None, None) for r in recs)
            assert len(firsts) == len({r.created for r in recs}) < 300
        finally:
            await app.close()

    asyncio.run(again())


@pytest.mark.parametrize("how", ["flag", "env"])
def test_comm_server_json_logs_and_level_switch(how: str) -> None:
    import signal

    def run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
        proc = subprocess.Popen([sys.executable, "-m", "lama.cli", "comm-server", "--host",
                                 "127.0.0.1", "--port", "0", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("ws://127.0.0.1:")
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=30)
            return proc.returncode, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    if how == "flag":
        code, err = run(["--log-level", "info", "--log-format", "json"], {})
    else:
        code, err = run([], {"LAMA_LOG_LEVEL": "info", "LAMA_LOG_FORMAT": "json"})
    assert code == 0, err
    recs = [json.loads(line) for line in err.splitlines()]
    assert [r["event"] for r in recs] == ["listening", "stopped"]
    assert recs[0]["logger"] == "lama.commserver" and recs[0]["url"].startswith("ws://")
    assert "registrations" in recs[1] and all(r["level"] == "info" for r in recs)
    code, err = run(["--log-level", "warning"] if how == "flag" else [],
                    {} if how == "flag" else {"LAMA_LOG_LEVEL": "warning"})
    assert code == 0 and err == ""
    code, err = run(["--log-format", "text", "--log-level", "info"], {})
    assert code == 0 and "info    lama.commserver: comm server listening event=listening url=ws://" in err
    bad = subprocess.run([sys.executable, "-m", "lama.cli", "comm-server", "--port", "0",
                          "--log-level", "loud"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "log level must be one of" in bad.stderr


def test_a_receipt_sent_before_the_chat_event_still_confirms() -> None:
    """The session's receipt (after the pass that imported the message) can come before the
    chat layer's message event (its own thread): the message is confirmed all the same."""
    from types import SimpleNamespace

    from lama.trace import Tracer

    peer, mid = "b" * 64, "c" * 64
    tracer = Tracer(None, "a" * 64, None)
    tracer.on_manager_event("chum_imported", {"person": peer, "data": {"objects": [mid]}})
    tracer.on_manager_event("chum_receipt_sent", {"person": peer, "data": {"mark": 7}})
    msg = SimpleNamespace(id=mid, hash=mid, outgoing=False, topic_id="t", channel="d" * 64,
                          sender=peer, text="late event", timestamp=1_000)
    tracer.on_chat_event("message", {"message": msg})
    steps = [(s.step, s.peer) for s in tracer.find(mid).steps]
    assert steps == [("created", None), ("received", peer), ("visible", None),
                     ("confirmed", peer)]
    # an import after the last receipt waits for the next one
    later = SimpleNamespace(**{**vars(msg), "id": "e" * 64, "hash": "e" * 64})
    tracer.on_manager_event("chum_imported", {"person": peer, "data": {"objects": [later.id]}})
    tracer.on_chat_event("message", {"message": later})
    assert [s.step for s in tracer.find(later.id).steps] == ["created", "received", "visible"]
    tracer.on_manager_event("chum_receipt_sent", {"person": peer, "data": {"mark": 9}})
    assert tracer.find(later.id).steps[-1].step == "confirmed"
