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
    "endpoint_proven",
    "endpoints_of_instance",
    "endpoints_of_person",
    "load_keys",
    "signed_by",
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


# --------------------------------------------------------------------------------------------
# Which endpoints are proven (docs/connections.md §3.5)


def signed_by(store: Store, data_hash: str, issuer: str, sign_key: bytes,
              bad: set[str] | None = None) -> str | None:
    """The hash of a stored Signature by ``issuer`` over ``data_hash`` that verifies with
    ``sign_key`` (app-layer.md §1.7 signing rule), or None. ``bad``: Signature hashes known
    not to verify (skipped; those that fail here are added), so a forged one is verified
    once, however often the question is asked again."""
    from lama.errors import LamaError
    from lama.identity import certificates

    for s in certificates.signatures_for(store, data_hash):
        if bad is not None and s in bad:
            continue
        try:
            obj = store.get_object(s)
            if obj.get("issuer") != issuer:
                continue
            certificates.verify_signature_object(store, obj, [sign_key], s)
            return s
        except LamaError:
            if bad is not None:
                bad.add(s)
    return None


def endpoint_proven(store: Store, me: str, my_sign_key: bytes, endpoint: dict[str, Any],
                    bad: set[str] | None = None) -> bool:
    """Whether the keys of a OneInstanceEndpoint are proven to belong to its person, so that
    it may be dialled (docs/connections.md §3.5). An endpoint is an unsigned claim that
    anyone can write and ship by CHUM; it counts only if

    * its ``personKeys`` (owned by ``personId``) are keys I vouched for: a Signature by me
      (``me``, verified with ``my_sign_key``) over that Keys object - pairing writes it
      (connections.md §6.4 step 5); for my own person, they are my own person Keys;
    * and its ``instanceKeys`` (owned by ``instanceId``) carry a verified Signature either
      by me (pairing, a device of mine that joined, my own endpoint) or by the endpoint's
      person with the sign key of those person Keys: the person itself declares the instance
      one of its devices (a contact's new device, published in the contact's profile).
    """
    from lama.errors import LamaError

    person, inst = endpoint.get("personId"), endpoint.get("instanceId")
    pk_hash, ik_hash = endpoint.get("personKeys"), endpoint.get("instanceKeys")
    if not (isinstance(person, str) and isinstance(inst, str) and isinstance(pk_hash, str)
            and isinstance(ik_hash, str)):
        return False
    try:
        pk, ik = load_keys(store, pk_hash), load_keys(store, ik_hash)
        if pk.get("owner") != person or ik.get("owner") != inst:
            return False
        person_sign_key = bytes.fromhex(str(pk["publicSignKey"]))
        if person == me:
            if person_sign_key != my_sign_key:
                return False
        elif signed_by(store, pk_hash, me, my_sign_key, bad) is None:
            return False
        if signed_by(store, ik_hash, me, my_sign_key, bad) is not None:
            return True
        return person != me and signed_by(store, ik_hash, person, person_sign_key, bad) is not None
    except (LamaError, KeyError, ValueError, TypeError):
        return False
