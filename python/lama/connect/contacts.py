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
    "endpoint_revoked",
    "endpoints_of_instance",
    "endpoints_of_person",
    "load_keys",
    "revocation_certificate",
    "revoked",
    "signed_by",
    "trusted_sign_keys",
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
              bad: set[str] | None = None,
              good: set[tuple[str, str, bytes]] | None = None) -> str | None:
    """The hash of a stored Signature by ``issuer`` over ``data_hash`` that verifies with
    ``sign_key`` (app-layer.md §1.7 signing rule), or None. ``bad``: Signature hashes known
    not to verify (skipped; those that fail here are added), so a forged one is verified
    once, however often the question is asked again; ``good``: ``(Signature, issuer, key)``
    known to verify (a Signature is immutable: checked once; those that verify here are
    added)."""
    from lama.errors import LamaError
    from lama.identity import certificates

    for s in certificates.signatures_for(store, data_hash):
        if bad is not None and s in bad:
            continue
        if good is not None and (s, issuer, sign_key) in good:
            return s
        try:
            obj = store.get_object(s)
            if obj.get("issuer") != issuer:
                continue
            certificates.verify_signature_object(store, obj, [sign_key], s)
            if good is not None:
                if len(good) > 100_000:
                    good.clear()
                good.add((s, issuer, sign_key))
            return s
        except LamaError:
            if bad is not None:
                bad.add(s)
    return None


# A removed (revoked) device (docs/connections.md §3.5 "Removing a device"): the person
# certifies, with the reference's RelationCertificate recipe, that the instance Keys are no
# longer one of its devices. The certificate's fields are a function of (person, Keys hash), so
# its hash is computed, not searched for: a check is one store lookup and, if it is there, the
# Signatures over it (reverse map).
REVOKED_APP = "lama"
REVOKED_RELATION = "revokedInstanceKeys:"


def revocation_certificate(person: str, keys_hash: str) -> dict[str, Any]:
    """The RelationCertificate by which ``person`` revokes its device's instance Keys
    ``keys_hash`` (without ``license``: :func:`lama.identity.certificates.certify` adds it)."""
    return {"app": REVOKED_APP, "relation": REVOKED_RELATION + keys_hash,
            "person1": person, "person2": person}


_REVOCATION_HASHES: dict[tuple[str, str], str] = {}


def revocation_hash(person: str, keys_hash: str) -> str:
    """The hash of :func:`revocation_certificate` with its License (memoised)."""
    key = (person, keys_hash)
    h = _REVOCATION_HASHES.get(key)
    if h is None:
        from lama.identity import certificates

        lic = str(core.object_hash(certificates.license_object("RelationCertificate")))
        h = str(core.object_hash({"$type$": "RelationCertificate",
                                  **revocation_certificate(person, keys_hash), "license": lic}))
        if len(_REVOCATION_HASHES) > 4096:
            _REVOCATION_HASHES.clear()
        _REVOCATION_HASHES[key] = h
    return h


def revoked(store: Store, person: str, keys_hash: str, sign_key: bytes,
            bad: set[str] | None = None, good: set[tuple[str, str, bytes]] | None = None) -> bool:
    """Whether ``person`` revoked the instance Keys ``keys_hash``: its revocation certificate
    is stored with a Signature by ``person`` that verifies with ``sign_key``."""
    cert = revocation_hash(person, keys_hash)
    return store.has(cert) and signed_by(store, cert, person, sign_key, bad, good) is not None


def endpoint_revoked(store: Store, me: str, my_sign_key: bytes, endpoint: dict[str, Any],
                     bad: set[str] | None = None) -> bool:
    """Whether the endpoint's person revoked its instance Keys, verified with the person Keys
    the endpoint names if I vouched for them (my own for my person)."""
    from lama.errors import LamaError

    person, pk_hash, ik_hash = (endpoint.get("personId"), endpoint.get("personKeys"),
                                endpoint.get("instanceKeys"))
    if not (isinstance(person, str) and isinstance(pk_hash, str) and isinstance(ik_hash, str)):
        return False
    try:
        if not store.has(revocation_hash(person, ik_hash)):
            return False
        if person == me:
            return revoked(store, me, ik_hash, my_sign_key, bad)
        pk = load_keys(store, pk_hash)
        if pk.get("owner") != person or signed_by(store, pk_hash, me, my_sign_key, bad) is None:
            return False
        return revoked(store, person, ik_hash, bytes.fromhex(str(pk["publicSignKey"])), bad)
    except (LamaError, KeyError, ValueError, TypeError):
        return False


def trusted_sign_keys(store: Store, me: str, my_sign_key: bytes, person: str,
                      bad: set[str] | None = None,
                      good: set[tuple[str, str, bytes]] | None = None) -> list[bytes]:
    """The sign keys whose signatures count as ``person``'s (``Chat.verify``, docs/chat.md
    §4): for me my own person sign key; for another person the sign keys of its Keys objects
    that I vouched for (a verified Signature by me: pairing, connections.md §6.4 step 5) - the
    rule of the handshake's known-key check; and for both the instance Keys of that person's
    proven, unrevoked endpoints (a Signature by me or by the person, :func:`endpoint_proven`).
    A Keys object that merely names the person as owner counts for nothing."""
    from lama.errors import LamaError

    out: list[bytes] = []
    if person == me:
        out.append(bytes(my_sign_key))
    else:
        for h in sorted(store.referencing(person, "Keys")):
            try:
                k = store.get_object(h)
                if k.get("$type$") != "Keys" or k.get("owner") != person:
                    continue
                if signed_by(store, h, me, my_sign_key, bad, good) is not None:
                    key = bytes.fromhex(str(k["publicSignKey"]))
                    if key not in out:
                        out.append(key)
            except (LamaError, KeyError, ValueError):
                continue
    if not out:
        return out
    for _h, ep in endpoints_of_person(store, person):
        try:
            if endpoint_proven(store, me, my_sign_key, ep, bad, good):
                key = bytes.fromhex(str(load_keys(store, str(ep["instanceKeys"]))["publicSignKey"]))
                if key not in out:
                    out.append(key)
        except (LamaError, KeyError, ValueError):
            continue
    return out


def endpoint_proven(store: Store, me: str, my_sign_key: bytes, endpoint: dict[str, Any],
                    bad: set[str] | None = None,
                    good: set[tuple[str, str, bytes]] | None = None) -> bool:
    """Whether the keys of a OneInstanceEndpoint are proven to belong to its person, so that
    it may be dialled (docs/connections.md §3.5). An endpoint is an unsigned claim that
    anyone can write and ship by CHUM; it counts only if

    * its ``personKeys`` (owned by ``personId``) are keys I vouched for: a Signature by me
      (``me``, verified with ``my_sign_key``) over that Keys object - pairing writes it
      (connections.md §6.4 step 5); for my own person, they are my own person Keys;
    * and its ``instanceKeys`` (owned by ``instanceId``) carry a verified Signature either
      by me (pairing, a device of mine that joined, my own endpoint) or by the endpoint's
      person with the sign key of those person Keys: the person itself declares the instance
      one of its devices (a contact's new device, published in the contact's profile);
    * and the person has not revoked those instance Keys (a removed device,
      :func:`revoked`, verified with the same person sign key).
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
        elif signed_by(store, pk_hash, me, my_sign_key, bad, good) is None:
            return False
        if signed_by(store, ik_hash, me, my_sign_key, bad, good) is None and (
                person == me
                or signed_by(store, ik_hash, person, person_sign_key, bad, good) is None):
            return False
        return not (store.has(revocation_hash(person, ik_hash))
                    and revoked(store, person, ik_hash, person_sign_key, bad, good))
    except (LamaError, KeyError, ValueError, TypeError):
        return False
