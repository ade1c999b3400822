"""My own profile: the endpoints of all my devices, shared with my contacts (docs/connections.md
§3.5; app-layer.md §1.2, §1.4, §1.5, §5.6 B5).

My ``default`` Profile (``profileId`` ``default``, ``personId`` = ``owner`` = my person) lists
in ``communicationEndpoint`` one OneInstanceEndpoint per instance of my person: this one
(:func:`publish_own_endpoint`, with the url where it listens) and every device that joined
(:func:`add_own_endpoints`, from the device linking of lama.connect.device). Each endpoint's
instance Keys carry a Signature by my person (the form of connections.md §6.4 step 5: issuer my
person, data the Keys hash, signed with my person's sign key): the proof that the instance is
mine, which a contact checks before it dials (:func:`lama.connect.contacts.endpoint_proven`).

Sharing (:func:`share_own_profile`): an ``IdAccess`` on my profile (every version, so every
device added later) and an ``Access`` on each endpoint's proof Signature (a root of its own:
nothing in the profile references it; its children, the Keys and ID objects, come with it)
for my contacts and my own person (my devices converge on one profile). Whoever reads my
profile gets the proofs of its endpoints: :func:`add_own_endpoints` grants a new proof to the
persons of the profile's ``IdAccess``, so a device that joins reaches every contact through
the grants that already share my profile with them. The objects are the reference's recipes
(Profile, OneInstanceEndpoint, Keys, Signature): a ONE contact imports them and, like the
reference's LeuteConnectionsModule (connections.md §7.2), routes to every endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from lama import access
from lama._core import core
from lama.errors import InvalidArgumentError, LamaError, NotFoundError
from lama.objects import versions

from . import contacts

__all__ = [
    "RevokedDevice",
    "add_own_endpoints",
    "own_devices",
    "own_endpoint",
    "own_profile_id",
    "publish_own_endpoint",
    "revoke_own_device",
    "share_own_profile",
    "unshare_own_profile",
]


def _profile(me: str, endpoints: list[str], descriptions: list[str]) -> dict[str, Any]:
    return {"$type$": "Profile", "profileId": "default", "personId": me, "owner": me,
            "communicationEndpoint": endpoints, "personDescription": descriptions}


def own_profile_id(instance: Any) -> str:
    """The ID hash of my default profile."""
    me = str(instance.person_id)
    return str(core.id_hash(_profile(me, [], [])))


def own_endpoint(instance: Any, url: str | None) -> dict[str, Any]:
    """This instance's OneInstanceEndpoint (app-layer.md §1.2, §1.4 step 2)."""
    ep: dict[str, Any] = {"$type$": "OneInstanceEndpoint", "personId": str(instance.person_id),
                          "instanceId": str(instance.instance_id),
                          "personKeys": str(instance.person_keys),
                          "instanceKeys": str(instance.instance_keys)}
    if url is not None:
        ep["url"] = url
    return ep


def _proof(instance: Any, keys_hash: str, *, create: bool) -> str | None:
    """My person's Signature over the instance Keys ``keys_hash`` (found, or made if
    ``create``)."""
    from lama.identity import certificates

    store = instance.store
    me = str(instance.person_id)
    found = contacts.signed_by(store, keys_hash, me, bytes(instance.person_public_sign_key))
    if found is not None or not create:
        return found
    return str(certificates.create_signature(store, me, keys_hash,
                                             instance.secret_keys("person")).hash)


def _readers(store: Any, profile_id: str) -> list[str]:
    persons, _groups = access.grants(store, id=profile_id)
    return persons


def add_own_endpoints(instance: Any, endpoint_hashes: Iterable[str], *,
                      replace_instance: bool = False,
                      _unstored: dict[str, dict[str, Any]] | None = None) -> str:
    """Put the stored OneInstanceEndpoints ``endpoint_hashes`` (of my person) into my default
    profile, proven (my Signature over each one's instance Keys, made if missing) and shared
    with whoever my profile is shared with. An endpoint of an instance the profile lists
    already replaces that instance's older one if ``replace_instance`` (my own url changed),
    else is added next to it. Idempotent: returns the current profile version's hash, written
    only if something changed. (``_unstored``: endpoint objects by hash, not stored yet,
    written with the profile version, :func:`publish_own_endpoint`.)"""
    store = instance.store
    me = str(instance.person_id)
    contacts.enable_reverse_maps(store)
    unstored = _unstored or {}
    new: dict[str, dict[str, Any]] = {}
    for h in endpoint_hashes:
        obj = unstored[h] if h in unstored else store.get_object(h)
        if obj.get("$type$") != "OneInstanceEndpoint" or obj.get("personId") != me:
            raise InvalidArgumentError(f"{h} is not a OneInstanceEndpoint of my person",
                                       code="LAMA-ARG")
        if _revoked(instance, str(obj.get("instanceKeys"))):
            continue  # a removed device never comes back into my profile
        new[h] = obj
    pid = own_profile_id(instance)
    cur_hash = versions.current_hash(store, pid)
    cur = store.get_object(cur_hash) if cur_hash is not None else {}
    eps = [str(e) for e in cur.get("communicationEndpoint", [])]
    if replace_instance:
        insts = {o["instanceId"] for o in new.values()}
        kept = []
        for e in eps:
            try:
                inst = store.get_object(e).get("instanceId")
            except LamaError:  # a missing object is kept as it is
                inst = None
            if e in new or inst not in insts:
                kept.append(e)
        eps = kept
    want = sorted({*eps, *new})
    descs = [str(d) for d in cur.get("personDescription", [])]
    if not any(_is_my_sign_key(store, d, instance) for d in descs):
        [(sk, _s, _)] = store.put_objects(
            [{"$type$": "SignKey", "key": instance.person_public_sign_key.hex()}])
        descs.append(str(sk))
    readers = _readers(store, pid)
    proofs = [_proof(instance, str(o["instanceKeys"]), create=True) for o in new.values()]
    for s in proofs:
        if s is not None and readers:
            access.grant(store, object=s, persons=readers)
    extra = [unstored[h] for h in new if h in unstored]
    if cur_hash is not None and set(want) == set(cur.get("communicationEndpoint", [])) \
            and set(descs) == set(cur.get("personDescription", [])):
        if extra:
            store.put_objects(extra)  # listed already: stored already (nothing is written)
        return cur_hash
    version = _profile(me, want, sorted(descs))
    v = versions.update_versioned(store, pid, lambda _cur: (version, extra))
    return str(v.hash)


def _is_my_sign_key(store: Any, h: str, instance: Any) -> bool:
    try:
        obj = store.get_object(h)
    except LamaError:
        return False
    return obj.get("$type$") == "SignKey" and obj.get("key") == instance.person_public_sign_key.hex()


def publish_own_endpoint(instance: Any, url: str | None) -> str | None:
    """Store this instance's endpoint (with ``url``, where peers reach it) and put it into my
    profile in place of an older one of this instance (:func:`add_own_endpoints`); None
    without a url (nothing to dial)."""
    if not url or _revoked(instance, str(instance.instance_keys)):
        return None  # nothing to dial, or this device was removed (by another of mine)
    ep = own_endpoint(instance, url)
    h = str(core.object_hash(ep))
    # the endpoint is written in the transaction of the profile version that lists it: at
    # the first start after a url change one write transaction instead of two (each commit
    # moves the touched B-trees' upper pages, which the next reads map again: -0.6 MiB of
    # store pages at start for an instance holding 100,000 messages, issue 10)
    add_own_endpoints(instance, [h], replace_instance=True, _unstored={h: ep})
    return h


def share_own_profile(instance: Any, persons: Iterable[str]) -> None:
    """Share my profile (all versions) and the proofs of its endpoints with ``persons`` and my
    own person; idempotent (a grant that lists them already is not written again)."""
    store = instance.store
    me = str(instance.person_id)
    ps = sorted({me, *(str(p) for p in persons)})
    pid = own_profile_id(instance)
    cur_hash = versions.current_hash(store, pid)
    if cur_hash is None:
        return
    have = set(_readers(store, pid))
    if not set(ps) <= have:
        access.grant(store, id=pid, persons=ps)
    for e in store.get_object(cur_hash).get("communicationEndpoint", []):
        try:
            obj = store.get_object(str(e))
        except LamaError:  # not here (yet): nothing to prove
            continue
        if obj.get("personId") != me or not obj.get("instanceKeys"):
            continue
        s = _proof(instance, str(obj["instanceKeys"]), create=False)
        if s is not None and not set(ps) <= set(access.grants(store, object=s)[0]):
            access.grant(store, object=s, persons=ps)
    for s in _revocations(instance):  # removed devices: whoever reads my profile learns it
        if not set(ps) <= set(access.grants(store, object=s)[0]):
            access.grant(store, object=s, persons=ps)


def unshare_own_profile(instance: Any, persons: Iterable[str]) -> None:
    """Stop sharing my profile and its endpoints' proofs with ``persons`` (a removed contact;
    what it has already stays with it)."""
    store = instance.store
    gone = {str(p) for p in persons} - {str(instance.person_id)}
    pid = own_profile_id(instance)
    targets: list[dict[str, str]] = [{"id": pid}]
    cur_hash = versions.current_hash(store, pid)
    if cur_hash is not None:
        for e in store.get_object(cur_hash).get("communicationEndpoint", []):
            try:
                obj = store.get_object(str(e))
            except LamaError:
                continue
            s = _proof(instance, str(obj.get("instanceKeys")), create=False) \
                if obj.get("personId") == str(instance.person_id) else None
            if s is not None:
                targets.append({"object": s})
    for kw in targets:
        have, _g = access.grants(store, **kw)
        if gone & set(have):
            access.revoke(store, persons=sorted(gone & set(have)), **kw)


# --------------------------------------------------------------------------------------------
# Removing a device (docs/connections.md §3.5 "Removing a device")


def _revoked(instance: Any, keys_hash: str) -> bool:
    return contacts.revoked(instance.store, str(instance.person_id), keys_hash,
                            bytes(instance.person_public_sign_key))


def _revocations(instance: Any) -> list[str]:
    """The Signatures of my revocation certificates (found through the RelationCertificate
    reverse map on ``person1``)."""
    store = instance.store
    me = str(instance.person_id)
    out = []
    for c in sorted(store.referencing(me, "RelationCertificate")):
        try:
            cert = store.get_object(c)
        except LamaError:
            continue
        rel = cert.get("relation")
        if (cert.get("app") != contacts.REVOKED_APP or not isinstance(rel, str)
                or not rel.startswith(contacts.REVOKED_RELATION) or cert.get("person2") != me):
            continue
        s = contacts.signed_by(store, c, me, bytes(instance.person_public_sign_key))
        if s is not None:
            out.append(s)
    return out


@dataclass(frozen=True)
class RevokedDevice:
    """What :func:`revoke_own_device` did: the device's ``instance_id`` and name, its
    ``instance_keys`` (the Keys hash the revocation names), the revocation certificate's
    Signature (``revocation``), the endpoints that left my profile and its new version."""

    instance_id: str
    instance_name: str | None
    instance_keys: tuple[str, ...]
    revocation: tuple[str, ...]
    endpoints: tuple[str, ...]
    profile: str


def own_devices(instance: Any) -> list[dict[str, Any]]:
    """The devices of my person as my profile lists them: ``{"instance_id", "name", "url",
    "this", "endpoint"}`` sorted by name (the newest endpoint of an instance)."""
    store = instance.store
    cur_hash = versions.current_hash(store, own_profile_id(instance))
    out: dict[str, dict[str, Any]] = {}
    eps = store.get_object(cur_hash).get("communicationEndpoint", []) if cur_hash else []
    for e in sorted(str(x) for x in eps):
        try:
            obj = store.get_object(e)
        except LamaError:
            continue
        if obj.get("personId") != str(instance.person_id) \
                or _revoked(instance, str(obj.get("instanceKeys"))):
            continue
        inst = str(obj.get("instanceId"))
        name = None
        try:
            name = store.get_object(inst).get("name")
        except LamaError:
            pass
        out[inst] = {"instance_id": inst, "name": name, "url": obj.get("url"),
                     "this": inst == str(instance.instance_id), "endpoint": e}
    return sorted(out.values(), key=lambda d: (str(d["name"] or ""), d["instance_id"]))


def find_own_device(instance: Any, which: str) -> str:
    """The instance id of my device ``which``: an instance id, a prefix of at least 8 hex
    digits or an instance name. ``NotFoundError LAMA-DEVICE-UNKNOWN`` if no device of my
    profile matches (or several do)."""
    if not isinstance(which, str) or not which:
        raise InvalidArgumentError("a device is an instance id, an 8+ hex digit prefix or an "
                                   "instance name", code="LAMA-ARG")
    devs = own_devices(instance)
    w = which.lower()
    hits = [d for d in devs if d["instance_id"] == w]
    if not hits and len(w) >= 8 and all(c in "0123456789abcdef" for c in w):
        hits = [d for d in devs if d["instance_id"].startswith(w)]
    if not hits:
        hits = [d for d in devs if d["name"] == which]
    if len(hits) != 1:
        what = "no" if not hits else f"{len(hits)}"
        raise NotFoundError(f"{what} device of mine matches {which!r} (lama device list "
                            "lists them; a removed device is not listed)",
                            code="LAMA-DEVICE-UNKNOWN")
    return str(hits[0]["instance_id"])


def revoke_own_device(instance: Any, which: str) -> RevokedDevice:
    """Remove my device ``which`` (:func:`find_own_device`; a lost phone): my person
    certifies that the device's instance Keys are revoked (a RelationCertificate, signed,
    shared with whoever reads my profile), and a new version of my profile lists the device
    no more. My contacts' and my other devices' managers stop dialling it and close its
    connections when the revocation arrives (:func:`lama.connect.contacts.endpoint_proven`);
    the device's earlier messages stay. ``NotFoundError`` for a device that my profile does
    not list (unknown, or removed already), ``InvalidArgumentError LAMA-DEVICE-SELF`` for
    this device; both change nothing."""
    from lama.identity import certificates

    store = instance.store
    me = str(instance.person_id)
    inst = find_own_device(instance, which)
    if inst == str(instance.instance_id):
        raise InvalidArgumentError("this is the device you are using; remove it from another "
                                   "device of yours", code="LAMA-DEVICE-SELF")
    contacts.enable_reverse_maps(store)
    certificates.enable_reverse_maps(store)
    eps = [(h, o) for h, o in contacts.endpoints_of_instance(store, inst)
           if o.get("personId") == me and isinstance(o.get("instanceKeys"), str)]
    keys = sorted({str(o["instanceKeys"]) for _h, o in eps})
    if str(instance.instance_keys) in keys:  # the same keys as mine: never revoke myself
        raise InvalidArgumentError("that device has this device's keys", code="LAMA-DEVICE-SELF")
    name = None
    try:
        name = store.get_object(inst).get("name")
    except LamaError:
        pass
    pid = own_profile_id(instance)
    readers = sorted({me, *_readers(store, pid)})
    secret = instance.secret_keys("person")
    sigs = []
    for k in keys:
        r = certificates.certify(store, "RelationCertificate",
                                 contacts.revocation_certificate(me, k), me, secret)
        access.grant(store, object=r.signature, persons=readers)
        sigs.append(str(r.signature))
    cur_hash = versions.current_hash(store, pid)
    cur = store.get_object(cur_hash) if cur_hash is not None else {}
    gone = {h for h, _o in eps}
    listed = [str(e) for e in cur.get("communicationEndpoint", [])]
    removed = sorted(gone & set(listed))
    profile_hash = str(cur_hash)
    if removed:
        v = versions.store_versioned(store, _profile(
            me, sorted(set(listed) - gone), sorted(str(d) for d in cur.get("personDescription", []))))
        profile_hash = str(v.hash)
    return RevokedDevice(inst, name if isinstance(name, str) else None, tuple(keys),
                         tuple(sigs), tuple(removed), profile_hash)
