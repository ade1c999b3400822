"""Transports and the session driver (docs/chum-session.md §3), on the core under test, and
between the cores (a Rust WebSocket peer talking to a pure one).

Everything listens on 127.0.0.1 only; every loop is bounded in count, every wait in time.
"""

from __future__ import annotations

import asyncio
import gc
from types import ModuleType
from typing import Any, Awaitable, Callable

import pytest

from lama._core import core
from lama.errors import InvalidArgumentError, LamaError, TransportError

SIZE_REASON_1000 = "LAMA-NET-SIZE: message exceeds the limit of 1000 bytes"
KINDS = ["memory", "ws"]


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(main())


async def make_pair(kind: str, max_message: int | None = None, client_core: ModuleType = core,
                    server_core: ModuleType = core) -> tuple[Any, Any]:
    kw = {} if max_message is None else {"max_message": max_message}
    if kind == "memory":
        return client_core.memory_pair(**kw)
    listener = await server_core.ws_listen("127.0.0.1", 0, **kw)
    try:
        client = await client_core.ws_connect(f"ws://127.0.0.1:{listener.port}/", **kw)
        server = await listener.accept()
    finally:
        await listener.close()
    return client, server


# -- transports ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_messages_both_ways_in_order(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        for i in range(200):
            await a.send(f"a{i}")
            await b.send(i.to_bytes(4, "big"))
        for i in range(200):
            assert await b.recv() == f"a{i}"
            assert await a.recv() == i.to_bytes(4, "big")
        # empty messages are messages; bytes-likes are binary; non-ASCII text survives
        await a.send("")
        await a.send(b"")
        await a.send(bytearray(b"ba"))
        await a.send(memoryview(b"mv"))
        await a.send("grüße \U0001f600")
        assert [await b.recv() for _ in range(5)] == ["", b"", b"ba", b"mv", "grüße \U0001f600"]
        await a.close()
        await b.close()

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_large_messages_arrive_whole(kind: str) -> None:
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB
    text = "€" * (1 << 20)  # 3 MiB of UTF-8

    async def main() -> None:
        a, b = await make_pair(kind)

        async def sender() -> None:
            for _ in range(3):
                await a.send(big)
            await a.send(text)

        s = asyncio.ensure_future(sender())
        for _ in range(3):
            assert await b.recv() == big
        assert await b.recv() == text
        await s
        await a.close()

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_close_reason_reaches_the_peer(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        assert a.close_reason is None and b.close_reason is None
        await a.send("before")
        await a.close("done here")
        assert a.close_reason == "done here"
        assert await a.recv() is None
        # what was sent before the close still arrives, then None, then None again
        assert await b.recv() == "before"
        assert await b.recv() is None
        assert await b.recv() is None
        assert b.close_reason == "done here"
        for t in (a, b):
            with pytest.raises(TransportError) as e:
                await t.send("after")
            assert e.value.code == "LAMA-NET-CLOSED"
        # closing again changes nothing
        await b.close("other")
        await a.close("other")
        assert (a.close_reason, b.close_reason) == ("done here", "done here")

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_long_reasons_are_cut_at_a_character_boundary(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        await a.close("ü" * 100)  # 200 bytes of UTF-8: cut to 122 (61 characters)
        assert await b.recv() is None
        assert b.close_reason == "ü" * 61
        assert a.close_reason == "ü" * 61

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_waiting_recv_returns_none_on_local_close(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        r = asyncio.ensure_future(a.recv())
        await asyncio.sleep(0.05)
        assert not r.done()
        await a.close("bye")
        assert await asyncio.wait_for(r, 5) is None
        assert await b.recv() is None
        assert b.close_reason == "bye"

    run(main)


def test_a_dropped_memory_transport_reads_as_connection_lost() -> None:
    async def main() -> None:
        a, b = core.memory_pair()
        await a.send("last")
        del a
        gc.collect()
        assert await b.recv() == "last"
        assert await asyncio.wait_for(b.recv(), 5) is None
        assert b.close_reason == "connection lost"
        with pytest.raises(TransportError):
            await b.send("anyone?")

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversized_send_is_refused_and_closes(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind, max_message=1000)
        await a.send(b"x" * 1000)
        with pytest.raises(TransportError) as e:
            await a.send("é" * 501)  # 1002 bytes of UTF-8 (501 characters)
        assert e.value.code == "LAMA-NET-SIZE"
        assert "1002 bytes" in str(e.value)
        assert await b.recv() == b"x" * 1000
        assert await b.recv() is None
        assert b.close_reason == SIZE_REASON_1000
        assert a.close_reason == SIZE_REASON_1000

    run(main)


def test_an_oversized_ws_message_is_refused_by_the_receiver() -> None:
    async def main() -> None:
        listener = await core.ws_listen("127.0.0.1", 0, max_message=1000)
        c = await core.ws_connect(f"ws://127.0.0.1:{listener.port}/")
        s = await listener.accept()
        await listener.close()
        await c.send("small")
        await c.send("x" * 5000)  # the client's own limit is the default
        assert await s.recv() == "small"
        assert await s.recv() is None
        assert s.close_reason == SIZE_REASON_1000
        assert await asyncio.wait_for(c.recv(), 5) is None
        assert c.close_reason == SIZE_REASON_1000

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_reader_holds_the_sender_back(kind: str) -> None:
    chunk = bytes(64 * 1024)

    async def main() -> None:
        a, b = await make_pair(kind)
        sent = 0

        async def writer() -> None:
            nonlocal sent
            for _ in range(2000):  # 125 MiB if nothing held it back
                await a.send(chunk)
                sent += 1

        w = asyncio.ensure_future(writer())
        await asyncio.sleep(0.5)
        # nobody reads: the writer waits once the buffers are full (the memory pair's 1 MiB;
        # for WebSocket also the library's queues and the kernel's socket buffers)
        stuck = sent
        assert stuck < (20 if kind == "memory" else 400), stuck
        await asyncio.sleep(0.3)
        assert sent == stuck
        # reading what was sent lets the writer go on
        for _ in range(stuck):
            assert await b.recv() == chunk
        await asyncio.sleep(0.3)
        assert sent > stuck
        await b.close("enough")
        with pytest.raises(TransportError):
            await asyncio.wait_for(w, 10)

    run(main)


def test_a_listener_accepts_several_clients() -> None:
    async def main() -> None:
        listener = await core.ws_listen("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{listener.port}/"
        clients = []
        for i in range(5):
            c = await core.ws_connect(url)
            await c.send(f"hello {i}")
            clients.append(c)
        seen = []
        for _ in range(5):
            s = await listener.accept()
            t = await s.recv()
            await s.send(f"re: {t}")
            seen.append(t)
            await s.close("served")
        assert sorted(seen) == [f"hello {i}" for i in range(5)]
        for i, c in enumerate(clients):
            assert await c.recv() == f"re: hello {i}"
            assert await c.recv() is None
            assert c.close_reason == "served"
        await listener.close()
        await listener.close()
        with pytest.raises(TransportError) as e:
            await listener.accept()
        assert e.value.code == "LAMA-NET-CLOSED"
        with pytest.raises(TransportError) as e:
            await core.ws_connect(url)
        assert e.value.code == "LAMA-NET-CONNECT"

    run(main)


def test_bad_arguments_are_lama_errors() -> None:
    async def main() -> None:
        a, b = core.memory_pair()
        for bad in (123, None, ["x"], "\ud800"):
            with pytest.raises(InvalidArgumentError) as e:
                await a.send(bad)
            assert e.value.code == "LAMA-ARG"
        for bad_reason in (5, "\udc00"):
            with pytest.raises(InvalidArgumentError):
                await a.close(bad_reason)
        assert a.close_reason is None  # nothing was closed by the bad calls
        for bad_max in (0, -1, True, 1.5, "10"):
            with pytest.raises(InvalidArgumentError):
                core.memory_pair(max_message=bad_max)
        for url in ("http://127.0.0.1:1/", "wss://127.0.0.1:1/", "ws://", 42):
            with pytest.raises(InvalidArgumentError) as e:
                await core.ws_connect(url)
            assert e.value.code == "LAMA-ARG", url
        for port in (-1, 70000, True, "80"):
            with pytest.raises(InvalidArgumentError):
                await core.ws_listen("127.0.0.1", port)
        with pytest.raises(InvalidArgumentError):
            core.spawn_session(Echo(), "not a transport")
        with pytest.raises(LamaError):
            core.spawn_session(Echo(), a, store="not a store")

    run(main)


# -- the driver ------------------------------------------------------------------------------------

class Pinger:
    """Sends ``n`` pings, one per ``gap`` seconds (a deadline); finishes when all pongs came."""

    def __init__(self, n: int, gap: float = 0.0) -> None:
        self.n, self.gap = n, gap
        self.sent = self.got = 0
        self.next: float | None = None
        self.out: list[str | bytes] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.closed: str | None = None

    def _ping(self, now: float) -> None:
        self.out.append(f"ping {self.sent}")
        self.sent += 1
        self.next = now + self.gap if self.sent < self.n else None

    def start(self, now: float) -> None:
        self._ping(now)

    def receive_text(self, text: str, now: float) -> None:
        raise AssertionError(f"unexpected text {text!r}")

    def receive_binary(self, data: bytes, now: float) -> None:
        assert data == f"pong {self.got}".encode()
        self.got += 1
        self.events.append(("pong", {"n": self.got}))

    def handle_timeout(self, now: float) -> None:
        assert self.next is not None and now >= self.next
        self._ping(now)

    def store_changed(self, now: float) -> None:
        pass

    def connection_closed(self, reason: str, now: float) -> None:
        self.closed = reason
        self.events.append(("finished", {"reason": reason}))

    def poll_timeout(self) -> float | None:
        return self.next

    def poll_transmit(self) -> list[str | bytes]:
        out, self.out = self.out, []
        return out

    def poll_events(self) -> list[tuple[str, dict[str, Any]]]:
        out, self.events = self.events, []
        return out

    @property
    def finished(self) -> bool:
        return self.got == self.n or self.closed is not None

    @property
    def close_reason(self) -> str | None:
        return "all pongs received" if self.got == self.n else None

    def stats(self) -> dict[str, int]:
        return {"pings": self.sent, "pongs": self.got}


class Echo(Pinger):
    """Answers each ping with a binary pong until the connection closes; reports store changes."""

    def __init__(self, store: Any = None) -> None:
        super().__init__(0)
        if store is not None:
            self.store = store

    def start(self, now: float) -> None:
        pass

    def receive_text(self, text: str, now: float) -> None:
        self.out.append(text.replace("ping", "pong").encode())
        self.got += 1

    def store_changed(self, now: float) -> None:
        self.events.append(("store", {}))

    @property
    def finished(self) -> bool:
        return self.closed is not None

    @property
    def close_reason(self) -> str | None:
        return None

    def stats(self) -> dict[str, int]:
        return {"pongs": self.got}


async def all_events(task: Any) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for _ in range(100_000):
        batch = await task.events()
        if batch is None:
            return out
        assert batch, "events() returns at least one event or None"
        out.extend(batch)
    raise AssertionError("events() never ended")


async def ping_echo(a: Any, b: Any, n: int, gap: float = 0.0, cores: tuple[ModuleType, ModuleType] = (core, core)) -> None:
    pinger, echo = Pinger(n, gap), Echo()
    tp = cores[0].spawn_session(pinger, a)
    te = cores[1].spawn_session(echo, b)
    ep, ee = await asyncio.gather(all_events(tp), all_events(te))
    assert await tp.wait() == {"pings": n, "pongs": n}
    assert await te.wait() == {"pongs": n}
    assert ep == [("pong", {"n": i + 1}) for i in range(n)]
    assert ee == [("finished", {"reason": "all pongs received"})]
    assert a.close_reason == b.close_reason == "all pongs received"
    assert await tp.events() is None  # and stays None


@pytest.mark.parametrize("kind", KINDS)
def test_the_driver_runs_a_ping_echo_session(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        await ping_echo(a, b, 300)

    run(main)


def test_deadlines_pace_the_session() -> None:
    async def main() -> None:
        a, b = core.memory_pair()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ping_echo(a, b, 11, gap=0.02)
        assert loop.time() - t0 >= 0.2

    run(main)


def test_store_writes_wake_the_session(tmp_path: Any) -> None:
    async def main() -> None:
        store = core.Store(tmp_path / "s")
        a, b = core.memory_pair()
        task = core.spawn_session(Echo(store), b)
        for i in range(3):
            store.put_clob(f"text {i}")
            assert await asyncio.wait_for(task.events(), 5) == [("store", {})]
        # an explicit store= is watched too
        other = core.Store(tmp_path / "o")
        a2, b2 = core.memory_pair()
        task2 = core.spawn_session(Echo(), b2, store=other)
        other.put_clob("x")
        assert await asyncio.wait_for(task2.events(), 5) == [("store", {})]
        await a.close("bye")
        await a2.close("bye")
        assert await task.events() == [("finished", {"reason": "bye"})]
        assert await task.events() is None
        assert await task.wait() == {"pongs": 0}
        await task2.wait()
        store.close()
        other.close()

    run(main)


def test_an_events_call_cancelled_while_waiting_loses_nothing(tmp_path: Any) -> None:
    """An ``events()`` awaited and cancelled (a ``wait_for`` timeout) takes nothing: what comes
    after goes to the next call (the Rust core hands events over through the loop's reader of
    an event fd; a cancelled waiter is skipped)."""
    async def main() -> None:
        store = core.Store(tmp_path / "s")
        a, b = core.memory_pair()
        task = core.spawn_session(Echo(store), b)
        for i in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(task.events(), 0.05)
            waiting = asyncio.ensure_future(task.events())
            await asyncio.sleep(0)
            waiting.cancel()
            store.put_clob(f"text {i}")
            await asyncio.sleep(0.05)  # the events are there before the next call
            assert await asyncio.wait_for(task.events(), 5) == [("store", {})]
            assert waiting.cancelled()
        await a.close("bye")
        assert await asyncio.wait_for(all_events(task), 5) == [("finished", {"reason": "bye"})]
        assert await task.wait() == {"pongs": 0}
        store.close()

    run(main)


def test_finished_sessions_leave_no_file_descriptors(tmp_path: Any) -> None:
    """Each session's event hand-over (the Rust core's event fd and the loop's reader of it)
    ends with the session: 40 sessions run to their end leave the process's open files as
    they were."""
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main() -> None:
        async def one() -> None:
            a, b = core.memory_pair()
            await ping_echo(a, b, 3)

        await one()  # the runtime's own descriptors, once
        before = open_fds()
        for _ in range(40):
            await one()
        gc.collect()
        assert open_fds() - before < 10

    run(main)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_closes_the_transport(kind: str) -> None:
    async def main() -> None:
        a, b = await make_pair(kind)
        task = core.spawn_session(Echo(), b)
        await a.send("ping 0")
        assert await a.recv() == b"pong 0"
        task.cancel()
        assert await all_events(task) == [("finished", {"reason": "cancelled"})]
        assert await task.wait() == {"pongs": 1}
        assert await asyncio.wait_for(a.recv(), 5) is None
        assert a.close_reason == "cancelled"

    run(main)


def test_a_raising_session_ends_and_wait_raises() -> None:
    class Broken(Echo):
        def receive_text(self, text: str, now: float) -> None:
            raise KeyError("boom")

    async def main() -> None:
        a, b = core.memory_pair()
        task = core.spawn_session(Broken(), b)
        await a.send("ping 0")
        assert await asyncio.wait_for(a.recv(), 5) is None
        assert a.close_reason == "session failed"
        assert await all_events(task) == []
        with pytest.raises(KeyError):
            await task.wait()
        with pytest.raises(KeyError):  # every wait() sees it
            await task.wait()

    run(main)


def test_a_finished_session_flushes_its_last_messages() -> None:
    class Farewell(Echo):
        def start(self, now: float) -> None:
            self.out.extend(["one", b"two", "three"])
            self.closed = "said goodbye"

        @property
        def close_reason(self) -> str | None:
            return "goodbye"

    async def main() -> None:
        a, b = core.memory_pair()
        task = core.spawn_session(Farewell(), b)
        assert [await a.recv() for _ in range(4)] == ["one", b"two", "three", None]
        assert a.close_reason == "goodbye"
        await task.wait()

    run(main)


# -- Rust <-> pure ------------------------------------------------------------------------------------

@pytest.mark.cross_core
@pytest.mark.parametrize("direction", ["rust-client", "pure-client"])
def test_rust_and_pure_websockets_talk(direction: str, rust_core: ModuleType, pure_core: ModuleType) -> None:
    client_core, server_core = (rust_core, pure_core) if direction == "rust-client" else (pure_core, rust_core)
    big = bytes(range(256)) * 8192  # 2 MiB

    async def main() -> None:
        c, s = await make_pair("ws", client_core=client_core, server_core=server_core)
        for i in range(100):
            await c.send(f"c{i}")
            await s.send(i.to_bytes(2, "big"))
        for i in range(100):
            assert await s.recv() == f"c{i}"
            assert await c.recv() == i.to_bytes(2, "big")
        await c.send(big)
        assert await s.recv() == big
        await s.close("server done " + "ß" * 80)
        assert await c.recv() is None
        assert c.close_reason == s.close_reason == "server done " + "ß" * 55
        # the size limit: the receiving core closes with the same reason
        c, s = await make_pair("ws", client_core=client_core, server_core=server_core)
        big_server = await server_core.ws_listen("127.0.0.1", 0, max_message=1000)
        c2 = await client_core.ws_connect(f"ws://127.0.0.1:{big_server.port}/")
        s2 = await big_server.accept()
        await big_server.close()
        await c2.send(b"y" * 1001)
        assert await s2.recv() is None
        assert await asyncio.wait_for(c2.recv(), 5) is None
        assert c2.close_reason == s2.close_reason == SIZE_REASON_1000
        await c.close()
        await s.close()

    run(main)


@pytest.mark.cross_core
@pytest.mark.parametrize("direction", ["rust-pinger", "pure-pinger"])
def test_rust_and_pure_drivers_run_one_session(direction: str, rust_core: ModuleType,
                                               pure_core: ModuleType) -> None:
    cores = (rust_core, pure_core) if direction == "rust-pinger" else (pure_core, rust_core)

    async def main() -> None:
        a, b = await make_pair("ws", client_core=cores[0], server_core=cores[1])
        await ping_echo(a, b, 200, cores=cores)

    run(main)
