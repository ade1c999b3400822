"""Progress displays of the CLI (issue 10): sync bars for ``lama serve`` and ``lama messages
--follow``, the transfer bar of ``lama send --attach``.

On a terminal (``stream.isatty()`` and not ``CI=true``) they are rich progress bars, drawn on
``stream``; otherwise every change worth a line is one plain line (no control codes), so pipes
and CI logs stay readable.

Sync bars come from the connection manager's ``sync`` events (docs/connections.md §7): a CHUM
pass announces what it is about to fetch (``listed``, its ``total``) and reports every
committed batch (``imported``, its ``items``), so a bar shows objects received of the total,
the rate in objects/s and the time. A bar appears for a pass of at least ``min_total`` objects
(the initial sync of a large history; the few objects of a new message draw none), accumulates
the passes that follow while it is open, and ends at 100 % when everything listed is stored or
the first full sync is done; a lost connection ends it where it stood. Its result stays as one
line.

The transfer bar follows the ``progress`` items of a ``send`` control request (lama.serve):
``{"phase": "stored" | "sending" | "delivered" | "offered" | "in_flight", "bytes", "total",
"peer", "name"}`` - bytes sent on the CHUM connection to the peer since the message was
stored (capped at the attachments' size), 100 % once the peer confirmed it has the message
and its BLOBs (its trace is ``delivered``, docs/tracing.md), or stored locally and offered
when the peer is not connected.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO

__all__ = ["use_bars", "SyncBars", "TransferBar", "MIN_TOTAL"]

MIN_TOTAL = 200
"""The smallest pass (objects) that draws a sync bar."""


# No refresh thread and no redirection of sys.stdout/stderr: the bars are redrawn on every
# update, from the one thread that updates them. rich's refresh thread and its stdout proxy
# deadlocked (Live lock vs Console lock) when a signal handler ran inside a print of the main
# thread - a Ctrl-C of `lama messages --follow` then hung the CLI.
_MANUAL: dict[str, Any] = {"auto_refresh": False, "redirect_stdout": False,
                           "redirect_stderr": False}


def use_bars(stream: TextIO | None = None) -> bool:
    """Rich bars on ``stream`` (default stdout): a terminal, and not in CI."""
    stream = sys.stdout if stream is None else stream
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        return False
    return bool(tty) and os.environ.get("CI") != "true"


def _console(stream: TextIO | None, force_terminal: bool | None) -> Any:
    from rich.console import Console

    return Console(file=stream or sys.stdout, force_terminal=force_terminal, highlight=False)


def _rate_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Any:
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.0f} objects/s", no_wrap=True)

    return Rate()


class SyncBars:
    """Sync progress per contact from the manager's ``sync`` events (see the module doc).

    ``on_event(kind, data)`` takes the manager's events (``sync``, ``connection_down``);
    ``line(text)`` prints an ordinary line (above the bars on a terminal); ``close()`` ends
    every bar. ``name(person)`` gives a contact's display name."""

    def __init__(self, name: Callable[[str], str], *, bars: bool | None = None,
                 stream: TextIO | None = None, min_total: int = MIN_TOTAL,
                 force_terminal: bool | None = None) -> None:
        self.name = name
        self.bars = use_bars(stream) if bars is None else bars
        self.stream = stream or sys.stdout
        self.min_total = min_total
        self._passes: dict[str, list[Any]] = {}   # person -> [task id | None, done, total, t0]
        self.progress: Any = None
        if self.bars:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn
            from rich.progress import TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
                TaskProgressColumn(), _rate_column(), TimeElapsedColumn(),
                console=_console(stream, force_terminal), transient=True, **_MANUAL)
            self.progress.start()

    def line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        person = data.get("person")
        if not person:
            return
        if kind == "connection_down":
            self._end(person, interrupted=True)
            return
        if kind != "sync":
            return
        state = data.get("state")
        p = self._passes.get(person)
        if state == "listed":
            total = int(data.get("total") or 0)
            if p is None:
                if total < self.min_total:
                    return
                p = self._passes[person] = [None, 0, 0, time.monotonic()]
                if self.progress is not None:
                    p[0] = self.progress.add_task(f"syncing with {self.name(person)}",
                                                  total=total)
                else:
                    self.line(f"syncing with {self.name(person)}: {total} objects to fetch")
            p[2] += total
            if self.progress is not None:
                self.progress.update(p[0], total=p[2])
                self.progress.refresh()
        elif state == "imported" and p is not None:
            n = int(data.get("items") or 0)
            p[1] = min(p[2], p[1] + n)
            if self.progress is not None:
                self.progress.update(p[0], completed=p[1])
                self.progress.refresh()
            if p[1] >= p[2]:
                self._end(person)
        elif state == "full_sync" and p is not None:
            self._end(person, complete=True)

    def _end(self, person: str, *, complete: bool = False, interrupted: bool = False) -> None:
        p = self._passes.pop(person, None)
        if p is None:
            return
        task, done, total, t0 = p
        if complete:
            done = total
        secs = max(time.monotonic() - t0, 1e-6)
        if self.progress is not None:
            self.progress.update(task, completed=done)
            self.progress.refresh()
            self.progress.remove_task(task)
            self.progress.refresh()
        who = self.name(person)
        if interrupted and done < total:
            self.line(f"sync with {who} interrupted at {done} of {total} objects")
        else:
            self.line(f"synced {done} objects from {who} in {secs:.1f} s "
                      f"({done / secs:,.0f} objects/s)")

    def close(self) -> None:
        for person in list(self._passes):
            self._end(person, interrupted=True)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # not reached


class TransferBar:
    """The transfer of a message's attachments (``update(info)`` with the ``progress`` items of
    a ``send`` request, see the module doc); ``close()`` ends it with one line."""

    def __init__(self, *, bars: bool | None = None, stream: TextIO | None = None,
                 force_terminal: bool | None = None) -> None:
        self.bars = use_bars(stream) if bars is None else bars
        self.stream = stream or sys.stdout
        self.progress: Any = None
        self.task: Any = None
        self.t0 = time.monotonic()
        self.last: dict[str, Any] = {}
        if self.bars:
            from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn
            from rich.progress import TextColumn, TimeElapsedColumn, TransferSpeedColumn

            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(bar_width=24), DownloadColumn(),
                TaskProgressColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                console=_console(stream, force_terminal), transient=False, **_MANUAL)
            self.progress.start()

    def _line(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def update(self, info: dict[str, Any]) -> None:
        pr = info.get("progress") if isinstance(info, dict) else None
        if not isinstance(pr, dict):
            return
        phase = pr.get("phase")
        total = max(int(pr.get("total") or 0), 1)
        n = min(int(pr.get("bytes") or 0), total)
        who = str(pr.get("name") or (pr.get("peer") or "")[:16] or "the peer")
        if phase in ("delivered", "offered"):
            n = total
        if self.progress is not None:
            desc = {"stored": "stored, sending", "sending": f"sending to {who}",
                    "delivered": f"delivered to {who}", "offered": "stored, offered",
                    "in_flight": f"sent to {who}"}.get(str(phase), str(phase))
            if self.task is None:
                self.task = self.progress.add_task(desc, total=total)
            self.progress.update(self.task, description=desc, completed=n, total=total)
            self.progress.refresh()
        elif phase != "sending":  # plain: one line per phase, not per byte count
            if phase == "stored":
                self._line(f"stored {_size(total)} of attachments")
        self.last = {**pr, "bytes": n, "total": total, "name": who}

    def close(self) -> None:
        pr = self.last
        if self.progress is not None:
            self.progress.refresh()
            self.progress.stop()
            self.progress = None
        if not pr:
            return
        secs = max(time.monotonic() - self.t0, 1e-6)
        phase, who, total = pr.get("phase"), pr["name"], pr["total"]
        if phase == "delivered":
            self._line(f"delivered {_size(total)} to {who} in {secs:.1f} s "
                       f"({_size(total / secs)}/s)")
        elif phase == "offered":
            self._line(f"stored {_size(total)}; {who} is not connected: it gets them when "
                       "connected")
        elif phase == "in_flight":
            self._line(f"sent {_size(pr['bytes'])} of {_size(total)} to {who}; not confirmed "
                       "yet (see lama trace)")
