"""What the store says about remote peers (connections.md §5.3 post-check 2, §6.4; app-layer.md
§1.2): OneInstanceEndpoints by person or instance, through reverse maps.

The reverse maps are those of app-layer.md §1.2 (Profile on ``communicationEndpoint`` and
``personDescription``, its ID object on ``owner`` and ``personId``) plus OneInstanceEndpoint on
``personId``, ``instanceId``, ``personKeys`` and ``instanceKeys`` (lama's: the reference finds
endpoints through its Someone/Profile caches, which lama does not keep). Enabling a map indexes
the objects already stored (docs/core-interface.md), so the maps are complete whenever they
were enabled; :class:`lama.identity.Instance` enables them when an instance is created or
opened, and lama.connect calls :func:`enable_reverse_maps` again before it reads them (a
store opened without an Instance).
"""

from __future__ import annotations

from typing import Any

from lama._core import Store, core

__all__ = [
    "enable_reverse_maps",
    "endpoints_of_instance",
    "endpoints_of_person",
    "load_keys",
]

_ENABLED: set[tuple[str, int]] = set()


def enable_reverse_maps(store: Store) -> None:
    """Enable the reverse maps lama.connect reads (persisted; once per open store)."""
    key = (store.path, id(store))
    if key in _ENABLED:
        return
    store.enable_reverse_maps(
        "OneInstanceEndpoint", ["personId", "instanceId", "personKeys", "instanceKeys"]
    )
    store.enable_reverse_maps("Profile", ["communicationEndpoint", "personDescription"])
    store.enable_reverse_maps("Profile", ["owner", "personId"], id_objects=True)
    _ENABLED.add(key)


def _endpoints(store: Store, target: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for h in sorted(store.referencing(target, "OneInstanceEndpoint")):
        obj = store.get_object(h)
        if obj.get("$type$") == "OneInstanceEndpoint":
            out.append((h, obj))
    return out


def endpoints_of_person(store: Store, person_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(hash, object)`` of every stored OneInstanceEndpoint whose ``personId`` is
    ``person_id`` (whenever it was stored)."""
    core.check_hash(person_id, "person id")
    return [(h, o) for h, o in _endpoints(store, person_id) if o.get("personId") == person_id]


def endpoints_of_instance(store: Store, instance_id: str) -> list[tuple[str, dict[str, Any]]]:
    """``(hash, object)`` of every stored OneInstanceEndpoint whose ``instanceId`` is
    ``instance_id``."""
    core.check_hash(instance_id, "instance id")
    return [(h, o) for h, o in _endpoints(store, instance_id) if o.get("instanceId") == instance_id]


def load_keys(store: Store, keys_hash: str) -> dict[str, Any]:
    """The Keys object ``keys_hash`` (NotFoundError if missing, MicrodataError if it is not a
    Keys object)."""
    from lama.errors import MicrodataError

    obj = store.get_object(core.check_hash(keys_hash, "Keys hash"))
    if obj.get("$type$") != "Keys":
        raise MicrodataError(f"LAMA-NOTKEYS: {keys_hash} is a {obj.get('$type$')}, not Keys")
    return obj
