"""Connection manager health (issue 9, docs/connections.md §3.3 "Health"): the latency of a live
CHUM connection is a ping round trip measured again every ``health_check_interval``; a peer that
stops answering (its network frozen by a proxy on 127.0.0.1) makes the health degrade and it
recovers when the peer answers again; per route group enable/disable (conn §7.5-7.6) shows in
``connections_info()``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from test_connect_manager import config, make, note, pair, wait_until

from lama import access
from lama._core import core
from lama.connect import protocol
from lama.connect.manager import ROUTE_STOPPED, UNRESPONSIVE, ConnectionManager
from lama.errors import NotFoundError
from lama.identity.instance import Instance


class FreezingProxy:
    """A TCP forwarder on 127.0.0.1 in front of the comm server. ``freeze()`` holds every byte
    in both directions (the sockets stay open, nothing is lost): to the managers behind it
    the peer has stopped answering; ``thaw()`` lets the held bytes through."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.rate: float | None = None  # bytes/s per direction of each connection, None = any
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            w.close()
            return
        for a, b in ((r, uw), (ur, w)):
            t = asyncio.ensure_future(self._pump(a, b))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await r.read(65536 if self.rate is None else 4096)
                if not data:
                    break
                await self.flowing.wait()
                w.write(data)
                await w.drain()
                if self.rate is not None:
                    await asyncio.sleep(len(data) / self.rate)  # throttled: a slow link
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        self.thaw()
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@pytest.fixture
def two(tmp_path: Path) -> Any:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    yield a, b
    a.close()
    b.close()


def run(fn: Any, timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


def test_latency_is_pinged_and_a_silent_peer_degrades_health(two: tuple[Instance, Instance]) -> None:
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        proxy = FreezingProxy(int(server.url.rsplit(":", 1)[1]))
        url = await proxy.start()
        cfg = config(url, health_check_interval=0.2, ping_timeout=0.6)
        ma, mb = ConnectionManager(a, cfg), ConnectionManager(b, cfg)
        health_events: list[dict[str, Any]] = []
        ma.subscribe(lambda k, d: health_events.append(d) if k == "health" else None)
        key_b = b.instance_public_key.hex()
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)

            def peer() -> dict[str, Any]:
                p: dict[str, Any] = ma.connection_health()["peers"][key_b]
                return p

            # pings answered, again and again: the latency is a fresh measurement each time
            await wait_until(lambda: peer()["pings"] >= 2, 10.0, "two answered pings")
            first = peer()
            await wait_until(lambda: (peer()["latency_at"] or 0) > first["latency_at"]
                             and peer()["pings"] > first["pings"], 5.0, "a newer ping")
            h = ma.connection_health()
            assert h["status"] == "healthy" and h["active"] == 1, h
            assert peer()["responding"] and 0 < peer()["latency"] < 0.6, peer()
            assert h["average_latency"] == peer()["latency"] or h["average_latency"] is not None
            [info] = [i for i in ma.connections_info() if i["protocolName"] == "chum"]
            assert info["isConnected"] and info["responding"] is True
            assert info["latency"] is not None and info["latency"] < 0.6

            # the peer stops answering: health degrades within ping_timeout and a ping interval
            proxy.freeze()
            t_frozen = time.monotonic()
            await wait_until(lambda: ma.connection_health()["status"] == "degraded", 5.0,
                             "degraded health")
            silent = time.monotonic() - t_frozen
            h = ma.connection_health()
            assert h["active"] == 0 and h["peers"][key_b]["connected"], h
            assert not h["peers"][key_b]["responding"]
            assert h["peers"][key_b]["unanswered_for"] >= 0.6
            assert h["average_latency"] >= 0.6  # the overdue ping bounds the round trip now
            assert [e["responding"] for e in health_events] == [False], health_events
            [info] = [i for i in ma.connections_info() if i["protocolName"] == "chum"]
            assert info["responding"] is False and info["latency"] >= 0.6
            await asyncio.sleep(0.5)
            assert ma.connection_health()["peers"][key_b]["latency"] >= 0.6 + 0.4
            print(f"degraded {silent * 1000:.0f} ms after the freeze")

            # it answers again: the late answer is the whole round trip, then fresh ones
            proxy.thaw()
            await wait_until(lambda: ma.connection_health()["status"] == "healthy", 5.0,
                             "healthy again")
            assert [e["responding"] for e in health_events] == [False, True], health_events
            assert health_events[-1]["latency"] >= 1.0, health_events  # frozen > 1 s
            n = peer()["pings"]
            await wait_until(lambda: peer()["pings"] > n + 1, 5.0, "pings after the thaw")
            assert peer()["latency"] < 0.6 and peer()["responding"], peer()
            assert ma.connected(b.person_id) and mb.connected(a.person_id)
        finally:
            await mb.close()
            await ma.close()
            await proxy.close()
            await server.close()

    run(main)


def test_a_silent_peer_is_closed_and_redialled_with_the_backoff(
        two: tuple[Instance, Instance]) -> None:
    """A peer that answers nothing while its TCP connection stays open (the proxy holds every
    byte) is closed by the manager once its ping has been out ``close_unresponsive_after`` s
    with nothing received - long before the keepalive's 25 s - with the UNRESPONSIVE reason
    and the events (health not responding, connection_down with that reason); the peer is
    then redialled with the backoff (failed dials while it stays silent), and once it answers
    again the connection is back and syncs."""
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        proxy = FreezingProxy(int(server.url.rsplit(":", 1)[1]))
        url = await proxy.start()
        # the keepalive keeps its defaults (20 s / 25 s): only the manager can close in time
        cfg = config(url, health_check_interval=0.2, ping_timeout=0.5,
                     close_unresponsive_after=1.5, open_timeout=1.0, retry_delay=0.3,
                     retry_max_delay=2.0)
        assert (cfg.keepalive, cfg.dead_after) == (20.0, 25.0)
        ma, mb = ConnectionManager(a, cfg), ConnectionManager(b, cfg)
        events: list[tuple[str, dict[str, Any]]] = []
        ma.subscribe(lambda k, d: events.append((k, d)) if k in (
            "health", "connection_down", "connection_up") else None)
        key_b = b.instance_public_key.hex()
        reason = UNRESPONSIVE.format(1.5)
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)
            await wait_until(lambda: ma.connection_health()["peers"][key_b]["pings"] >= 1, 10.0,
                             "an answered ping")
            events.clear()

            proxy.freeze()
            t_frozen = time.monotonic()
            await wait_until(lambda: any(k == "connection_down" for k, _ in events), 10.0,
                             "the silent peer's connection closed")
            closed_after = time.monotonic() - t_frozen
            kinds = [k for k, _ in events]
            assert kinds[:2] == ["health", "connection_down"], events
            assert events[0][1]["responding"] is False and events[0][1]["peer"] == key_b
            down = events[1][1]
            assert down["peer"] == key_b and down["group"] == "chum"
            assert down["person"] == b.person_id
            assert reason in down["reason"], down  # not the keepalive's "No lifesign"
            assert not ma.connected(b.person_id)
            p = ma.connection_health()["peers"][key_b]
            assert not p["connected"] and p["last_error"] is not None
            assert any(reason in e for e in p["recent_errors"]), p
            # B's manager sees the same silence from its side and closes too
            await wait_until(lambda: not mb.connected(a.person_id), 10.0, "B's side closed")
            # redialled with the backoff: the dials through the frozen proxy fail and count
            await wait_until(
                lambda: ma.connection_health()["peers"][key_b]["reconnect_attempts"] >= 2,
                15.0, "failed redials")
            assert not ma.connected(b.person_id)
            print(f"closed {closed_after * 1000:.0f} ms after the freeze")

            proxy.thaw()
            await wait_until(lambda: ma.connected(b.person_id) and mb.connected(a.person_id),
                             20.0, "the connection back after the peer answers again")
            assert "connection_up" in [k for k, _ in events[2:]], events
            h = note(b, "after the silence", a)
            await wait_until(lambda: a.store.has(h), 10.0, "a note after the silence")
        finally:
            await mb.close()
            await ma.close()
            await proxy.close()
            await server.close()

    run(main, timeout=90.0)


def test_a_peer_whose_chum_is_deaf_is_closed_though_its_keepalives_arrive(
        two: tuple[Instance, Instance]) -> None:
    """What the keepalive never closes: B's connection stays alive (its keepalives arrive
    every 0.3 s) but nothing answers A's CHUM requests. A closes it after
    close_unresponsive_after with the UNRESPONSIVE reason, which B sees."""
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        cfg = config(server.url, health_check_interval=0.2, ping_timeout=0.5,
                     close_unresponsive_after=1.5)
        ma, mb = ConnectionManager(a, cfg), ConnectionManager(b, cfg)
        downs: list[dict[str, Any]] = []
        ma.subscribe(lambda k, d: downs.append(d) if k == "connection_down" else None)
        conn = None
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)
            await mb.close()  # B's manager is gone; B dials A by hand and then plays deaf
            await wait_until(lambda: not ma.connected(b.person_id), 10.0, "A sees B leave")
            downs.clear()
            kb = b.secret_keys("instance")
            conn = await core.encrypted_connect(server.url, b.instance_public_key,
                                                kb.encryption_secret, a.instance_public_key,
                                                keepalive=0.3)
            await protocol.initiate(conn, b, "chum", expected_person=a.person_id,
                                    expected_instance=a.instance_id, timeout=5.0)
            await protocol.synchronise(conn, timeout=5.0)
            await wait_until(lambda: ma.connected(b.person_id), 10.0, "A takes the connection")
            sent = conn.stats()["messages_sent"]

            async def deaf() -> None:
                while await conn.recv() is not None:
                    pass  # A's CHUM requests and pings: never answered

            reader = asyncio.ensure_future(deaf())
            await wait_until(lambda: bool(downs), 15.0, "A to close the deaf connection")
            await asyncio.wait_for(reader, 10.0)
            assert UNRESPONSIVE.format(1.5) in downs[0]["reason"], downs
            assert UNRESPONSIVE.format(1.5) in (conn.close_reason or ""), conn.close_reason
            st = conn.stats()
            # B sent no message after the synchronisation, only keepalives (wire bytes)
            assert st["messages_sent"] == sent
            assert st["bytes_sent"] > 0 and "Keepalive" not in (conn.close_reason or "")
        finally:
            if conn is not None:
                await conn.close()
            await mb.close()
            await ma.close()
            await server.close()

    run(main, timeout=60.0)


def test_a_peer_busy_sending_is_not_closed_for_a_late_ping(
        two: tuple[Instance, Instance]) -> None:
    """The other side of close_unresponsive_after: over a slow link (the proxy passes 256 KB/s)
    B sends A a 4 MiB BLOB; B's answers to A's pings queue behind the BLOB's chunks and come
    seconds late (longer than A's close_unresponsive_after), but messages keep arriving - a
    lifesign - so A keeps the connection and the BLOB arrives over it. (B, the sender, only
    reports: its own pings wait behind the BLOB it queued, which no counter shows - why the
    default limit is far above such drain times, docs/connections.md §3.3.)"""
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        proxy = FreezingProxy(int(server.url.rsplit(":", 1)[1]))
        url = await proxy.start()
        cfg = config(url, health_check_interval=0.2, ping_timeout=0.5,
                     close_unresponsive_after=1.5)
        ma = ConnectionManager(a, cfg)
        mb = ConnectionManager(b, config(url, health_check_interval=0.2, ping_timeout=0.5,
                                         close_unresponsive_after=0))
        events: list[tuple[str, dict[str, Any]]] = []
        ma.subscribe(lambda k, d: events.append((k, d)) if k in (
            "health", "connection_down", "connection_up") else None)
        key_b = b.instance_public_key.hex()
        longest = 0.0
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)
            events.clear()
            big = bytes(range(256)) * (4 * 4096)  # 4 MiB
            blob, _ = b.store.put_blob(big)
            [(desc, _, _)] = b.store.put_objects([{
                "$type$": "BlobDescriptor", "data": blob, "lastModified": 1767225600000,
                "name": "big.bin", "size": len(big), "type": "application/octet-stream"}])
            proxy.rate = 256_000
            access.grant(b.store, object=desc, persons=[a.person_id])
            deadline = time.monotonic() + 60
            while not a.store.has(blob):
                assert time.monotonic() < deadline, "the BLOB did not arrive within 60 s"
                longest = max(longest, ma.connection_health()["peers"][key_b][
                    "unanswered_for"] or 0.0)
                await asyncio.sleep(0.05)
            assert a.store.read_blob(blob) == big
            # the pings were late beyond the limit, and the connection stayed all along
            assert longest > 1.5 + 0.5, longest
            assert [d["responding"] for k, d in events if k == "health"][:1] == [False], events
            assert not [d for k, d in events if k == "connection_down"], events
            assert ma.connected(b.person_id)
            print(f"a ping answered after {longest:.1f} s; connection kept")
        finally:
            proxy.rate = None
            await mb.close()
            await ma.close()
            await proxy.close()
            await server.close()

    run(main, timeout=120.0)


def test_pings_off_without_health_checks(two: tuple[Instance, Instance]) -> None:
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        ma = ConnectionManager(a, config(server.url, health_checks=False))
        mb = ConnectionManager(b, config(server.url, health_checks=False))
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)
            await asyncio.sleep(0.5)
            p = ma.connection_health()["peers"][b.instance_public_key.hex()]
            assert p["pings"] == 0 and p["latency_at"] is None
            # the handshake's round trip is the only latency then
            assert p["latency"] is not None and p["responding"]
        finally:
            await mb.close()
            await ma.close()
            await server.close()

    run(main)


def test_route_group_enable_and_disable_in_connections_info(two: tuple[Instance, Instance]) -> None:
    a, b = two

    async def main() -> None:
        server = await core.comm_server("127.0.0.1", 0)
        ma = ConnectionManager(a, config(server.url, allow_debug_requests=True))
        mb = ConnectionManager(b, config(server.url))
        downs: list[str] = []
        mb.subscribe(lambda k, d: downs.append(str(d.get("reason"))) if k == "connection_down"
                     else None)
        try:
            await ma.start()
            await mb.start()
            await pair(ma, mb)
            info = {i["protocolName"]: i for i in ma.connections_info()}
            assert set(info) == {"chum", "debug"}
            chum_id = info["chum"]["id"]
            assert chum_id.endswith(", groupId: chum")
            assert info["chum"]["enabled"] and all(r["enabled"] for r in info["chum"]["routes"])

            await ma.enable_connection_group(chum_id, False)
            info = {i["protocolName"]: i for i in ma.connections_info()}
            assert not info["chum"]["enabled"] and not info["chum"]["isConnected"]
            assert info["chum"]["routes"] and not any(r["enabled"] for r in info["chum"]["routes"])
            assert info["debug"]["enabled"], "only the chum group was switched off"
            assert ma.is_enabled(b.person_id), "the person stays enabled"
            await wait_until(lambda: not mb.connected(a.person_id), 5.0, "B sees the close")
            # B keeps dialling; A refuses the group: no CHUM connection comes up meanwhile
            await asyncio.sleep(1.0)
            assert not ma.connected(b.person_id) and not mb.connected(a.person_id)
            errors = mb.connection_health()["peers"][a.instance_public_key.hex()]["recent_errors"]
            assert any("Route is disabled" in e for e in errors), errors
            assert any(ROUTE_STOPPED in d for d in downs), downs

            await ma.enable_connection_group(chum_id, True)
            await wait_until(lambda: ma.connected(b.person_id) and mb.connected(a.person_id),
                             10.0, "CHUM back after enabling the group")
            info = {i["protocolName"]: i for i in ma.connections_info()}
            assert info["chum"]["enabled"] and info["chum"]["isConnected"]
            with pytest.raises(NotFoundError):
                await ma.enable_connection_group("localKey: 00, remoteKey: 00, groupId: chum")
        finally:
            with contextlib.suppress(Exception):
                await mb.close()
            await ma.close()
            await server.close()

    run(main)
