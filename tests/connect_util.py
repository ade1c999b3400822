"""Helpers shared by the lama.connect tests: instances with the recorded keys, a transport that
records what each side sends, a runner with a deadline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from conftest import peer_keys

from lama._core import core
from lama.identity.instance import Instance

VECTORS_DIR = Path(__file__).parent / "vectors"
CF = json.loads((VECTORS_DIR / "crypto-and-frames.json").read_text(encoding="utf-8"))
TRANSCRIPT = json.loads(
    (VECTORS_DIR / "transcript-pairing-and-chat.json").read_text(encoding="utf-8")
)
PEER_A = CF["peers"]["A"]
PEER_B = CF["peers"]["B"]
SECRET = "connect-test-secret"

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


def make_a(base: Path) -> Instance:
    """Peer A of crypto-and-frames.json (alice@peer-a.example / peer-A, recorded keys)."""
    return Instance.create(base / "a", email="alice@peer-a.example", instance_name="peer-A",
                           secret=SECRET, person_keys=peer_keys(PEER_A, "person"),
                           instance_keys=peer_keys(PEER_A, "instance"))


def make_b(base: Path) -> Instance:
    return Instance.create(base / "b", email="bob@peer-b.example", instance_name="peer-B",
                           secret=SECRET, person_keys=peer_keys(PEER_B, "person"),
                           instance_keys=peer_keys(PEER_B, "instance"))


def make(base: Path, name: str, email: str | None = None, **kw: Any) -> Instance:
    return Instance.create(base / name, email=email or f"{name}@example.org",
                           instance_name=f"inst-{name}", secret=SECRET, **kw)


class Recorder:
    """Wraps a transport; ``sent`` lists what went out through it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[str | bytes] = []
        self.received: list[str | bytes] = []

    async def send(self, msg: str | bytes) -> None:
        self.sent.append(msg)
        await self.inner.send(msg)

    async def recv(self) -> str | bytes | None:
        msg = await self.inner.recv()
        if msg is not None:
            self.received.append(msg)
        return msg

    async def close(self, reason: str = "") -> None:
        await self.inner.close(reason)

    @property
    def close_reason(self) -> str | None:
        r: str | None = self.inner.close_reason
        return r

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def pair() -> tuple[Recorder, Recorder]:
    a, b = core.memory_pair()
    return Recorder(a), Recorder(b)


def store_dump(inst: Instance) -> tuple[int, list[str], dict[str, str | None]]:
    """What a refused exchange must leave unchanged: the entries and the version heads."""
    hashes = sorted(inst.store.hashes())
    heads = {h: inst.store.get_head(h) for h in hashes if inst.store.kind(h) == "id"}
    return inst.store.count(), hashes, heads
