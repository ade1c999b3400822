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

from typing import Any, Iterable

from lama import access
from lama._core import core
from lama.errors import InvalidArgumentError, LamaError
from lama.objects import versions

from . import contacts

__all__ = [
    "add_own_endpoints",
    "own_endpoint",
    "own_profile_id",
    "publish_own_endpoint",
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
    if not url:
        return None
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
