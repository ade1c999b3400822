"""What the alternated A/B scripts (chat_ab.py, chat_cpu.py, push_ab.py) share: their command
line ``ROUNDS NAME=TREE [NAME=TREE ...] [--option VALUE ...]`` and, for the chat ones, pairing
two ``chat_side.py`` instances through the comm server."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parse_ab_args(argv: list[str], defaults: dict[str, Any]) -> tuple[int, dict[str, Any], list[tuple[str, Path]]]:
    """``(rounds, options, [(name, tree)...])`` from ``argv``; an option ``--key VALUE`` takes
    the type of its default in ``defaults`` (``None``: a path, made absolute)."""
    args = list(argv)
    rounds = int(args.pop(0))
    opts = dict(defaults)
    trees: list[tuple[str, Path]] = []
    while args:
        a = args.pop(0)
        if a.startswith("--"):
            key = a[2:]
            if key not in opts:
                raise SystemExit(f"unknown option {a} (known: {', '.join('--' + k for k in opts)})")
            value = args.pop(0)
            d = opts[key]
            opts[key] = Path(value).resolve() if d is None else type(d)(value)
        else:
            name, tree = a.split("=", 1)
            trees.append((name, Path(tree).resolve()))
    return rounds, opts, trees


def pair_sides(alice: Any, bob: Any) -> None:
    """Alice invites, Bob accepts; returns once both are connected and through a first sync."""
    link = alice.ask(cmd="invite")["link"]
    bob.ask(cmd="accept", link=link)
    alice.ask(cmd="wait_contact")
    alice.ask(cmd="synced")
    bob.ask(cmd="synced")
