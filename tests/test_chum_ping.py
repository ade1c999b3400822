"""The CHUM session's ping (docs/chum-session.md §2 "Ping"), at the core interface (both cores):
a GET_PROTOCOL_VERSION round trip every ``ping_interval``, one in flight at most, a ``ping``
event with the round trip, one with ``rtt: None`` when a ping is overdue, the late answer's
whole round trip; bad options are refused. The clock is the test's (sans-I/O)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chum_graph import person_id

from lama._core import core
from lama.errors import InvalidArgumentError


def pings(s: Any) -> list[dict[str, Any]]:
    return [d for k, d in s.poll_events() if k == "ping"]


def is_ping(frame: str | bytes) -> bool:
    if not isinstance(frame, str):
        return False
    m = json.loads(frame)
    return bool(m.get("type") == "request" and m.get("serviceId") == 1)


def exchange(a: Any, b: Any, now: float) -> None:
    for _ in range(1000):
        fa, fb = a.poll_transmit(), b.poll_transmit()
        if not fa and not fb:
            return
        for dst, frames in ((b, fa), (a, fb)):
            for f in frames:
                (dst.receive_text if isinstance(f, str) else dst.receive_binary)(f, now)
    raise AssertionError("the sessions never went quiet")


def test_ping_round_trips_and_a_silent_peer(tmp_path: Path) -> None:
    a, b = core.Store(str(tmp_path / "a")), core.Store(str(tmp_path / "b"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    try:
        sa = core.ChumSession(a, pa, pb, keep_running=True, ping_interval=1.0, ping_timeout=0.5)
        sb = core.ChumSession(b, pb, pa, keep_running=True)
        t0 = 100.0
        sa.start(t0)
        sb.start(t0)
        out = sa.poll_transmit()
        assert sum(map(is_ping, out)) == 2  # the importer's version request and the ping
        for f in out:
            assert isinstance(f, str)
            sb.receive_text(f, t0 + 0.03)
        exchange(sa, sb, t0 + 0.03)
        p = pings(sa)
        assert len(p) == 1 and p[0]["rtt"] == pytest.approx(0.03, abs=1e-6), p
        assert pings(sb) == []
        due = sa.poll_timeout()
        assert due is not None and due <= t0 + 1.0
        sa.handle_timeout(t0 + 1.0)
        exchange(sa, sb, t0 + 1.005)
        p = pings(sa)
        assert len(p) == 1 and p[0]["rtt"] == pytest.approx(0.005, abs=1e-6), p
        # B goes silent: what A sends is held back
        t2 = t0 + 2.0
        sa.handle_timeout(t2)
        held = sa.poll_transmit()
        assert any(map(is_ping, held))
        sa.handle_timeout(t2 + 0.499)
        assert pings(sa) == []
        sa.handle_timeout(t2 + 0.5)
        p = pings(sa)
        assert len(p) == 1 and p[0]["rtt"] is None and p[0]["waiting"] == pytest.approx(0.5), p
        for s in range(1, 5):
            sa.handle_timeout(t2 + s)
        assert pings(sa) == [] and not any(map(is_ping, sa.poll_transmit()))
        # B answers again: the late answer is the whole round trip, the overdue next ping
        # goes out at once
        t3 = t2 + 5.0
        for f in held:
            assert isinstance(f, str)
            sb.receive_text(f, t3)
        exchange(sa, sb, t3)
        p = pings(sa)
        assert [x["rtt"] for x in p] == [pytest.approx(5.0), 0.0], p
        assert sa.stats()["requests_sent"] >= 4
    finally:
        a.close()
        b.close()


def test_no_ping_by_default_and_bad_options(tmp_path: Path) -> None:
    a = core.Store(str(tmp_path / "a"))
    pa, pb = person_id(a, "alice@a.example"), person_id(a, "bob@b.example")
    try:
        s = core.ChumSession(a, pa, pb, keep_running=True)
        s.start(0.0)
        assert len(s.poll_transmit()) == 1  # only the version request
        s.handle_timeout(100.0)
        assert pings(s) == []
        for bad in ({"ping_interval": -1}, {"ping_timeout": "1"}, {"ping_interval": True}):
            with pytest.raises(InvalidArgumentError):
                core.ChumSession(a, pa, pb, **bad)
    finally:
        a.close()
