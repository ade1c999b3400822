"""A comm-server cluster on 127.0.0.1 for tests and benchmarks (docs/cluster.md): a
nats-server process (installed by ``./dev setup``) and comm-server nodes, in-process or as
``lama comm-server --nats`` processes (those can be killed with SIGKILL)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def nats_server_path() -> str | None:
    """nats-server on PATH, or the one ``./dev setup`` built into .venv/bin."""
    local = Path(sys.executable).parent / "nats-server"
    return shutil.which("nats-server") or (str(local) if local.exists() else None)


def needs_nats() -> pytest.MarkDecorator:
    """Tests that start nats-server: skipped where it is missing, except under CI=true, where
    ``./dev setup`` installed it and its absence must fail (Nats() says why)."""
    return pytest.mark.skipif(nats_server_path() is None and not os.environ.get("CI"),
                              reason="nats-server missing (./dev setup installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > end:
                raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
            time.sleep(0.02)


class Nats:
    """A nats-server on 127.0.0.1:port; ``restart()`` keeps the port."""

    def __init__(self) -> None:
        path = nats_server_path()
        assert path, "nats-server is missing: run ./dev setup"
        self.path = path
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.path, "-a", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class NodeProcess:
    """``lama comm-server --port 0 --nats URL`` in its own process on ``core`` (default: the
    core under test); ``url`` from its first line. ``kill()`` is SIGKILL (nothing is closed
    cleanly)."""

    def __init__(self, nats_url: str, core: str | None = None, args: tuple[str, ...] = ()) -> None:
        from lama._core import CORE_NAME

        env = dict(os.environ, PYTHONPATH=str(ROOT / "python"), LAMA_CORE=core or CORE_NAME)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lama.cli", "comm-server", "--host", "127.0.0.1", "--port", "0",
             "--nats", nats_url, "--ping-interval", "1", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("ws://"):
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            self.kill()
            raise AssertionError(f"comm-server node did not start: {self.url!r} {err}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        """SIGTERM; its printed counters."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return out


def counters_of(text: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in text.splitlines() if len(line.split()) == 2)}


async def nodes(nats_url: str, n: int, core: Any = None, **opts: Any) -> list[Any]:
    """``n`` in-process cluster nodes of ``core`` (a core module; default: the one under test)."""
    if core is None:
        from lama._core import core
    return [await core.comm_server("127.0.0.1", 0, nats=nats_url, **opts) for _ in range(n)]
