"""CHUM sync, the public layer (docs/chum-session.md §2-§3, chum.md §3.2, §7).

The core's sans-I/O :class:`ChumSession` does the protocol; a driver (``core.spawn_session``)
moves its frames over a transport.  This layer starts a session, reacts to its events (it
merges remote version nodes through :func:`lama.objects.versions.merge_node`, because
version merges are CRDT logic in Python) and writes the ``Chum`` log object when the session
ends.  It never sits in the data path of a running sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .._core import Store, core
from ..errors import LamaError
from ..objects import versions

__all__ = ["SyncResult", "chum_log_object", "handle_event", "sync", "write_chum_log"]

LOG_BAGS = ("AtoBObjects", "AtoBIdObjects", "AtoBBlob", "AtoBClob",
            "BtoAObjects", "BtoAIdObjects", "BtoABlob", "BtoAClob")


@dataclass
class SyncResult:
    """What a finished session did: ``reason`` (close reason), ``stats`` (``ChumSession.stats``),
    ``log`` (the Chum log fields of the ``finished`` event), ``errors`` (the ``error`` events),
    ``pending`` (BLOB/CLOB hashes that could not be fetched), ``merged`` (version results of
    the ``merge`` events) and ``chum`` (hash of the stored Chum log object, or None)."""

    reason: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)
    merged: list[versions.VersionResult] = field(default_factory=list)
    full_sync: bool = False
    chum: str | None = None


def handle_event(store: Store, kind: str, data: dict[str, Any], result: SyncResult | None = None) -> Any:
    """React to one session event.  ``merge`` (chum.md §6.2): the fetched remote node's data is
    merged into the local version tree as a remote edge with the node's ``creationTime``.
    Returns the :class:`VersionResult` of a merge, else None; fills ``result`` if given."""
    out = None
    if kind == "merge":
        # The fetched node is stored with its whole ancestry (the importer stores the
        # dependencies of an object before the object, chum.md §6.3), so lama merges the
        # remote node itself into its version graph.  The reference instead writes a detached
        # local VersionNodeEdge for the node's data (objects.md §9 quirk 17): the remote
        # history is lost, a Register field the remote never touched then counts as changed
        # (against the empty node), and two peers merging the same concurrent edits can keep
        # different values.  With the shared graph both peers find the same common history and
        # compute the same merge.  The wire is unchanged: a ONE peer still fetches lama's
        # nodes and merges their data as edges on its side.
        out = versions.merge_node(store, data["node"], data.get("id_hash") or None)
        if result is not None:
            result.merged.append(out)
    elif result is None:
        return None
    elif kind == "error":
        result.errors.append(data)
    elif kind == "pending":
        result.pending[data["hash"]] = data["reason"]
    elif kind == "imported":
        for key in ("blobs", "clobs"):
            for h in data.get(key, ()):
                result.pending.pop(h, None)
    elif kind == "full_sync":
        result.full_sync = True
    elif kind == "finished":
        result.reason = data["reason"]
        result.log = data["log"]
    return out


def chum_log_object(log: dict[str, Any], *, local_person: str, remote_person: str,
                    local_instance: str, remote_instance: str, name: str = "chum") -> dict[str, Any]:
    """The ``Chum`` object of chum.md §7 / objects.md §3: ``instance`` sorted ascending in JS
    string order (UTF-16 code units) so both sides share one ID, ``person`` in the same order;
    "A" is always this side; ``highestRemoteTimestamp`` and ``BtoAExists`` are 0 as in the
    reference."""
    pairs = sorted([(local_instance, local_person), (remote_instance, remote_person)],
                   key=lambda p: p[0].encode("utf-16-be"))
    obj: dict[str, Any] = {
        "$type$": "Chum",
        "name": name,
        "instance": [p[0] for p in pairs],
        "person": [p[1] for p in pairs],
        "highestRemoteTimestamp": 0,
    }
    for k in LOG_BAGS:
        obj[k] = list(log.get(k, []))
    obj["BtoAExists"] = 0
    if log.get("statistics") is not None:
        obj["statistics"] = log["statistics"]
    obj["errors"] = list(log.get("errors", []))
    return obj


def write_chum_log(store: Store, log: dict[str, Any], *, local_person: str, remote_person: str,
                   local_instance: str, remote_instance: str, name: str = "chum") -> str | None:
    """Store the Chum log of a finished session as a new version of its ID (chum.md §7).
    chum.md §3.2 item 5: nothing is written when the session failed and transferred nothing.
    Returns the object hash, or None.

    The reference stores each log with "merge" semantics, so the current version is the union
    of every session's bags: each write costs a CRDT merge over the whole log history and an
    object listing every hash ever transferred (82 ms per write after 100 sessions here, and
    growing).  The log is local bookkeeping that is never sent (§7), so lama appends each
    session's log as a ``VersionNodeChange``: one write per session, independent of how many
    came before; the history (``versions.history``) still holds every session."""
    moved = any(log.get(k) for k in LOG_BAGS)
    if log.get("errors") and not moved:
        return None
    obj = chum_log_object(log, local_person=local_person, remote_person=remote_person,
                          local_instance=local_instance, remote_instance=remote_instance, name=name)
    return versions.store_versioned(store, obj, mode="change").hash


async def sync(store: Store, transport: Any, local_person: str, remote_person: str, *,
               chum_name: str = "chum", local_instance: str | None = None,
               remote_instance: str | None = None, write_log: bool = True,
               on_event: Callable[[str, dict[str, Any]], Any] | None = None,
               **options: Any) -> SyncResult:
    """Run one CHUM session over ``transport`` and return what it did.

    ``options`` are the :class:`ChumSession` keyword arguments (``keep_running``,
    ``poll_interval``, ``fast_path``, ``exporter``, ``importer``, ``request_timeout``,
    ``max_retries``, ``window``, ``max_message``).  ``local_instance``/``remote_instance`` are
    the instances' ``name`` fields for the Chum log (default: the person ID hashes);
    ``on_event`` sees every event after this layer handled it.
    """
    session = core.ChumSession(store, local_person, remote_person, **options)
    # the driver watches the store's event feed: new grants reach a keep-running peer at once
    task = core.spawn_session(session, transport, store=store)
    result = SyncResult()
    try:
        while True:
            events = await task.events()
            if events is None:
                break
            for kind, data in events:
                try:
                    handle_event(store, kind, data, result)
                except LamaError as e:
                    # a merge that fails leaves the fetched objects stored; report it
                    result.errors.append({"code": e.code, "message": str(e), "fatal": False})
                if on_event is not None:
                    on_event(kind, data)
        result.stats = await task.wait()
    except BaseException:
        task.cancel()
        raise
    if write_log and result.log:
        result.chum = write_chum_log(
            store, result.log, local_person=local_person, remote_person=remote_person,
            local_instance=local_instance or local_person,
            remote_instance=remote_instance or remote_person, name=chum_name)
    return result
