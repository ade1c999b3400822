"""The loop round in which the native module hands a session's events to Python (issues 8/10,
rust/lama-py/src/net.rs ``_EventsReady``): the driver makes an event fd readable, the loop's
reader callback takes the batch. With a commit signal open in the process (``Chat.attach_loop``
reads the chat's feed in that signal's callback and queues its callbacks with ``call_soon``),
the batch is delivered one round later, after those callbacks; with none open the round would
only delay the consumer (B of the live push), so the callback delivers at once.

Counted in loop rounds: a ticker callback that queues itself again runs once per round; the
``events()`` awaiter resumes one round after the batch is set (the task's wake-up is queued),
so a batch delivered in the reader callback is seen 1 round after it, a deferred one 2. Only
the Rust core hands events over through an fd (the pure core's session runs on the loop)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from chum_graph import chat_pair, register_recipes
from lama._core import CORE_NAME, core

pytestmark = pytest.mark.skipif(CORE_NAME == "pure", reason="the native module's event-fd hand-over")


@pytest.fixture(autouse=True)
def _recipes() -> None:
    register_recipes()


class RoundLoop(asyncio.SelectorEventLoop):
    """Counts its rounds and records the round of every reader callback."""

    def __init__(self) -> None:
        super().__init__()
        self.round = 0
        self.reader_rounds: list[int] = []

    def tick(self) -> None:
        self.round += 1
        self.call_soon(self.tick)

    def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
        def wrapped(*a: Any) -> None:
            self.reader_rounds.append(self.round)
            callback(*a)

        super().add_reader(fd, wrapped, *args)


def gaps(tmp_path: Path, signal_open: bool) -> list[int]:
    """B's rounds from each reader callback to its batch's ``events()`` resuming, over a full
    sync from A (A's session runs on another thread's loop, so every reader callback on B's
    loop is B's event fd)."""
    a, b, pa, pb, chat = chat_pair(tmp_path)
    for i in range(20):
        chat.post(f"message {i}")
    ta, tb = core.memory_pair()
    done_a: list[Any] = []

    def run_a() -> None:
        async def side_a() -> None:
            task = core.spawn_session(core.ChumSession(a, pa, pb), ta, store=a)
            while await task.events() is not None:
                pass
            done_a.append(await task.wait())

        asyncio.run(side_a())

    thread = threading.Thread(target=run_a)
    signal = b.commit_signal() if signal_open else None
    loop = RoundLoop()
    out: list[int] = []

    async def side_b() -> None:
        task = core.spawn_session(core.ChumSession(b, pb, pa), tb, store=b)
        loop.tick()
        while True:
            seen = len(loop.reader_rounds)
            events = await task.events()
            # it waited for the fd (not already there), woken by one callback (with two, an
            # earlier callback's deferred delivery may have resolved it)
            if len(loop.reader_rounds) == seen + 1:
                out.append(loop.round - loop.reader_rounds[-1])
            if events is None:
                break
        await task.wait()

    thread.start()
    try:
        loop.run_until_complete(asyncio.wait_for(side_b(), 60))
    finally:
        loop.close()
        thread.join(60)
        if signal is not None:
            signal.close()
    assert done_a, "A's session did not end"
    assert out, "no batch came through the event fd"
    return out


def test_events_are_delivered_in_the_reader_callback_without_a_commit_signal(tmp_path: Path) -> None:
    assert set(gaps(tmp_path, signal_open=False)) == {1}


def test_events_wait_a_round_for_the_chat_while_a_commit_signal_is_open(tmp_path: Path) -> None:
    assert set(gaps(tmp_path, signal_open=True)) == {2}
