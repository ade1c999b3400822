"""``lama import-one`` / ``lama export-one`` output: a rich progress bar on a terminal (none
otherwise), then the report (one line per count and per problem, or JSON)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from lama.migrate import Progress, export_one, import_one

_LABELS = {
    "objects": "objects",
    "app_objects": "app objects",
    "blobs": "BLOBs/CLOBs",
    "heads": "version heads",
    "rmaps": "reverse maps",
    "keys": "keys",
}


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal; ``None`` (no output) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    try:  # rich comes with typer (the cli extra); without it: no bar
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn
        from rich.progress import TimeRemainingColumn
    except ImportError:
        yield None
        return

    tasks: dict[str, Any] = {}
    with Bar(TextColumn("{task.description:>14}"), BarColumn(), MofNCompleteColumn(),
             TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(_LABELS.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield update


def _escape(value: Any) -> str:
    from lama.cli import escape

    return escape(str(value))


def _print(report: Any, as_json: bool, head: list[str]) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
        return
    for line in head:
        print(line)
    for k, v in report.counts.items():
        print(f"  {k}: {v}")
    if report.problems:
        print(f"not taken ({len(report.problems)}):")
        for p in report.problems:
            print(f"  {_escape(p.what)}: {_escape(p.reason)}")
    else:
        print("not taken: nothing")


def run_import(one_dir: str, lama_dir: str, secret: str, as_json: bool) -> None:
    with progress_bar() as progress:
        report = import_one(one_dir, lama_dir, secret, progress=progress)
    _print(report, as_json, [
        f"imported {_escape(report.source)}",
        f"into: {_escape(report.path)}",
        f"person id: {report.person_id}",
        f"instance id: {report.instance_id}",
        f"email: {_escape(report.email)}",
        f"instance name: {_escape(report.instance_name)}",
    ])


def run_export(lama_dir: str, one_dir: str, secret: str, as_json: bool) -> None:
    with progress_bar() as progress:
        report = export_one(lama_dir, one_dir, secret, progress=progress)
    _print(report, as_json, [f"exported {_escape(report.source)}", f"into: {_escape(report.path)}"])
