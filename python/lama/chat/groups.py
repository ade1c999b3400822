"""Group-topic membership that reaches the other participants (docs/chat.md §3.1).

What a peer receives of a group topic under the spec's rules (app-layer.md §3.1, §3.3, §4;
chum.md §6.4): the ``Topic{name, id, channel}`` (through an ``Access`` on it) and the channel
``ChannelInfo`` with its entries (through an ``IdAccess``). Neither object lists participants,
and the objects that do - ``Group``, ``Access``, ``IdAccess`` - are refused on import by every
CHUM importer, so the grants written on the creator's side never travel. A participant that
receives the topic therefore cannot know the others, and cannot grant its own posts to them.

lama carries the membership in a certificate type the spec already has (app-layer.md §1.7):
``AccessVersionedObjectCertificate{person: P, data: <channel id hash>, license}`` - "the issuer
permits sharing all versions of the channel with P" - signed by the participant that added P,
one per participant. Each participant that shares the topic also grants ``Access`` on every
membership Signature to every participant (the Signature is the root; certificate, License,
the Person and channel ID objects are its children), so the certificates travel like the
topic itself. A receiver reads the membership back through the certificate's reverse map on
``data`` (lama.identity.certificates) and grants the channel, the Topic and the certificates
to every participant in turn: its own posts reach everybody, directly or through any
participant it is connected to.

A membership certificate counts when it has a Signature whose issuer's keys verify it; when
the issuer's keys are not known here (a participant this instance never paired with) it counts
unverified - the same standing as the ``sender`` of a message from such a person (docs/chat.md
§4, ``Chat.verify``). A Signature that fails against known keys never counts.
"""

from __future__ import annotations

from typing import Any, Iterable

from lama.errors import LamaError, SignatureError
from lama.identity import certificates

__all__ = ["MEMBERSHIP", "MEMBERSHIP_PREFIX", "certify", "members"]

MEMBERSHIP = "AccessVersionedObjectCertificate"
MEMBERSHIP_PREFIX = '<div itemscope itemtype="//refin.io/AccessVersionedObjectCertificate"'


def members(store: Any, channel: str) -> dict[str, list[str]]:
    """person id -> the membership Signature hashes that count for it (see the module doc),
    for the channel ``channel`` (a ChannelInfo id hash)."""
    out: dict[str, list[str]] = {}
    for c in certificates.certificates_for(store, channel, MEMBERSHIP):
        try:
            cert = store.get_object(c)
        except LamaError:
            continue
        person = cert.get("person")
        if cert.get("data") != channel or not isinstance(person, str):
            continue
        for s in certificates.signatures_for(store, c):
            try:
                sig = store.get_object(s)
                if sig.get("data") != c:
                    continue
                if certificates.issuer_sign_keys(store, str(sig["issuer"])):
                    certificates.verify_signature_object(store, sig, sig_hash=s)
            except (SignatureError, LamaError, KeyError):
                continue
            out.setdefault(person, []).append(s)
    return out


def certify(store: Any, channel: str, persons: Iterable[str], issuer: str,
            sign_secret: bytes, have: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Certify every person in ``persons`` that ``issuer`` has not certified yet as a member
    of ``channel``; returns the membership (``members`` after the writes)."""
    have = members(store, channel) if have is None else have
    mine: set[str] = set()
    for p, sigs in have.items():
        for s in sigs:
            try:
                if store.get_object(s).get("issuer") == issuer:
                    mine.add(p)
            except LamaError:
                continue
    wrote = False
    for p in sorted(set(persons) - mine):
        certificates.certify(store, MEMBERSHIP, {"person": p, "data": channel}, issuer,
                             sign_secret)
        wrote = True
    return members(store, channel) if wrote else have
