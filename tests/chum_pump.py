"""A synchronous in-process driver for sans-I/O CHUM sessions (docs/chum-session.md §2): it
moves frames between two sessions (or a session and a scripted peer) and advances a fake
clock to the next deadline when nothing is in flight.  Tests drive the protocol with it
without sockets, threads or real time."""

from __future__ import annotations

import json
from typing import Any, Callable, Protocol


class Peer(Protocol):
    def receive_text(self, text: str, now: float) -> None: ...
    def receive_binary(self, data: bytes, now: float) -> None: ...
    def handle_timeout(self, now: float) -> None: ...
    def connection_closed(self, reason: str, now: float) -> None: ...
    def poll_timeout(self) -> float | None: ...
    def poll_transmit(self) -> list[str | bytes]: ...
    def poll_events(self) -> list[tuple[str, dict[str, Any]]]: ...
    @property
    def finished(self) -> bool: ...
    @property
    def close_reason(self) -> str | None: ...


class Pump:
    """Runs two peers against each other.  ``on_event(side, kind, data)`` sees every event
    (side 0 or 1); ``filters[side]`` may rewrite or drop (return None) a frame *sent* by that
    side, to play a hostile or broken network."""

    def __init__(self, a: Peer, b: Peer, on_event: Callable[[int, str, dict[str, Any]], None] | None = None,
                 now: float = 1000.0):
        self.peers = (a, b)
        self.now = now
        self.on_event = on_event
        self.events: tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]] = ([], [])
        self.sent: tuple[list[str | bytes], list[str | bytes]] = ([], [])
        self.filters: list[Callable[[str | bytes], str | bytes | None] | None] = [None, None]
        self.closed = [False, False]
        self.rounds: tuple[list[int], list[int]] = ([], [])  # frames sent per step and side

    def _drain_events(self) -> None:
        for side, p in enumerate(self.peers):
            for kind, data in p.poll_events():
                self.events[side].append((kind, data))
                if self.on_event is not None:
                    self.on_event(side, kind, data)

    def step(self) -> bool:
        """Deliver everything in flight once; True if any frame moved."""
        moved = False
        for side, p in enumerate(self.peers):
            other = self.peers[1 - side]
            frames = p.poll_transmit()
            if frames:
                self.rounds[side].append(len(frames))
            for f in frames:
                self.sent[side].append(f)
                flt = self.filters[side]
                if flt is not None:
                    f2 = flt(f)
                    if f2 is None:
                        continue
                    f = f2
                moved = True
                if self.closed[1 - side]:
                    continue
                if isinstance(f, str):
                    other.receive_text(f, self.now)
                else:
                    other.receive_binary(f, self.now)
            self._drain_events()
        # a finished session makes its driver close the transport: the peer sees the close
        for side, p in enumerate(self.peers):
            if p.finished and not self.closed[side]:
                self.closed[side] = True
                other = self.peers[1 - side]
                if not other.finished:
                    other.connection_closed(p.close_reason or "closed", self.now)
                moved = True
        self._drain_events()
        return moved

    def run(self, max_time: float = 3600.0, max_steps: int = 1_000_000) -> None:
        """Until both peers finished, nothing is left to do, or ``max_time`` fake seconds."""
        end = self.now + max_time
        for _ in range(max_steps):
            if all(p.finished for p in self.peers):
                self.step()
                return
            if self.step():
                continue
            deadlines = [t for t in (p.poll_timeout() for p in self.peers if not p.finished) if t is not None]
            if not deadlines:
                return
            t = min(deadlines)
            if t > end:
                return
            self.now = max(self.now, t)
            for p in self.peers:
                if not p.finished:
                    p.handle_timeout(self.now)
            self._drain_events()
        raise AssertionError("pump did not settle")


def without_notify_closure(f: str | bytes) -> str | bytes:
    """A pump filter: the exporter's probe answer as an exporter from before "notify-closure"
    sends it (its NOTIFY then carries no closure and the importer asks 106)."""
    if isinstance(f, str) and '"lama"' in f:
        m = json.loads(f)
        if isinstance(m.get("data"), dict) and "features" in m["data"]:
            m["data"]["features"] = [x for x in m["data"]["features"] if x != "notify-closure"]
            return json.dumps(m)
    return f
