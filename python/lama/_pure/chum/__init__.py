"""CHUM v8 for the pure core, sans-I/O (docs/chum-session.md §2, chum.md): the RPC layer
(:mod:`.rpc`), the exporter (:mod:`.exporter`), the importer (:mod:`.importer`) and the session
that runs both on one connection (:mod:`.session`)."""

from __future__ import annotations

from .session import ChumSession

__all__ = ["ChumSession"]
