"""Pairing by invitation (connections.md §6): invitations, their link and QR code, the token
registry, the exchange of §6.3 on both sides and what each side stores (§6.4).

Invitation (§6.1): exactly ``{"token", "publicKey", "url"}`` - a 64-character token from
``0-9a-zA-Z_-``, the inviter's *instance* encryption key (hex) and its comm-server URL. The link
(§6.2) is ``https://<host>/invites/invitePartner/?invited=true#`` (``inviteDevice`` for one's
own devices) followed by ``encodeURIComponent(JSON.stringify(invitation))``;
:func:`parse_invitation` takes everything after the first ``#`` (so uvc's ``?invited=true/#``
parses too), a JSON text or a dict.

Tokens (:class:`TokenRegistry`): random, **one-time** and **expiring** (default 15 minutes,
the Lama app's value; ``clock`` injectable). Unlike the reference (§6.1, §9.3 item 5), a token
is claimed when a pairing presents it: a second pairing with the same token is refused while
the first runs (``LAMA-PAIR-TOKEN``); the first one's success uses it up, its failure gives it
back (unless it expired meanwhile), so a dropped connection does not burn the invitation.

The exchange (§6.3) after ``protocol.initiate/accept`` with group ``pairing``:

* invitee (connection initiator, :func:`connect_pairing`): send ``authentication_token``; wait
  for the inviter's ``identity``; check it; send its own ``identity``; store the inviter once
  it did not refuse (its ``synchronisation``, or silence from an upstream inviter).
* inviter (connection acceptor, :func:`accept_pairing`): wait for ``authentication_token``;
  claim the token (it must belong to this instance's person); send ``identity``; wait for the
  invitee's; check and store it; use the token up; send ``synchronisation`` like the Lama fork
  (never waiting for an answer, §5.5) unless told not to.

Unlike the reference (§9.3 item 4), the received ``identity`` is checked against what was
proven before storing anything: its person email must give the proven person id, its person
keys must be the Keys object whose secret the peer proved in §5.3, its instance name must give
the instance id of §5.4, and its instance key must be the key of the encrypted connection (the
handshake's remote key, given by the caller; the invitation's key on the invitee's side). An
upstream invitee dials with its *person* key (§10.1); then the handshake key equals the
identity's person key and the instance key cannot be bound - accepted, as the spec requires.
A lying peer is refused with ``PairingError LAMA-PAIR-IDENTITY`` and nothing is written.

What each side stores (§6.4, :func:`store_identity`): the Person ID object, both Keys objects,
the Instance ID object, a Signature (issuer: my person) over each Keys object, the
OneInstanceEndpoint, a SignKey, a version of the ``default`` Profile of the remote person
(``owner`` = the remote person) and a TrustKeysCertificate for that Profile version. All of it
is deterministic (Ed25519 signatures are), so pairing again writes nothing new. A stray
``synchronisation`` while a side waits for ``identity`` is skipped and never answered (§5.5).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from lama._core import core
from lama.connect import contacts, protocol
from lama.connect.protocol import PeerIdentity, TransportLike
from lama.errors import InvalidArgumentError, LamaError, PairingError, ProtocolError
from lama.identity import certificates
from lama.objects import versions

__all__ = [
    "DEFAULT_LIFETIME",
    "DEVICE_PATH",
    "Invitation",
    "PARTNER_PATH",
    "PairingResult",
    "StoredContact",
    "TOKEN_ALPHABET",
    "TOKEN_KINDS",
    "TokenRegistry",
    "accept_pairing",
    "check_identity",
    "connect_pairing",
    "create_invitation",
    "encode_uri_component",
    "identity_of",
    "make_token",
    "parse_invitation",
    "store_identity",
]

DEFAULT_LIFETIME = 15 * 60.0
"""Token lifetime in seconds (one.leute / the Lama app: 15 min; ConnectionsModel: 60 s)."""

TOKEN_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-"
TOKEN_LEN = 64
DEFAULT_HOST = "edda.dev.refinio.one"  # the Lama app's hard-coded domain (app-layer.md §5.3)
PARTNER_PATH = "/invites/invitePartner/?invited=true#"
DEVICE_PATH = "/invites/inviteDevice/?invited=true#"
TOKEN_KINDS = ("partner", "device")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


# --------------------------------------------------------------------------------------------
# Invitations (§6.1, §6.2)


def make_token() -> str:
    """64 characters, each from one secure random byte mod 64 (§6.1): 384 bits."""
    return "".join(TOKEN_ALPHABET[b % 64] for b in secrets.token_bytes(TOKEN_LEN))


# encodeURIComponent keeps A-Z a-z 0-9 - _ . ! ~ * ' ( ) and percent-encodes every other
# UTF-8 byte with upper-case hex (ECMA-262 §19.2.6.5).
_URI_SAFE = "-_.!~*'()"


def encode_uri_component(text: str) -> str:
    """JavaScript's ``encodeURIComponent`` (a lone surrogate is its URIError:
    ``InvalidArgumentError LAMA-PAIR-INVITE``)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError("a lone surrogate cannot be URI-encoded",
                                   code="LAMA-PAIR-INVITE") from None
    return urllib.parse.quote_from_bytes(data, safe=_URI_SAFE)


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode_uri_component(text: str) -> str:
    """JavaScript's ``decodeURIComponent``: a malformed escape or invalid UTF-8 is an error."""
    if _BAD_PERCENT.search(text):
        raise InvalidArgumentError("the invitation link has a malformed %-escape",
                                   code="LAMA-PAIR-INVITE")
    try:
        return urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgumentError("the invitation link is not UTF-8 after %-decoding",
                                   code="LAMA-PAIR-INVITE") from None


@dataclass(frozen=True)
class Invitation:
    """``{token, publicKey, url}`` (§6.1). ``public_key`` is the hex of the inviter's instance
    encryption key (lower-case when lama makes it; either case is accepted)."""

    token: str
    public_key: str
    url: str

    def __post_init__(self) -> None:
        for name in ("token", "public_key", "url"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"Invitation.{name} must be a str",
                                           code="LAMA-PAIR-INVITE")
        if not self.token:
            raise InvalidArgumentError("the invitation token is empty", code="LAMA-PAIR-INVITE")
        if not _HEX64.match(self.public_key):
            raise InvalidArgumentError("the invitation's publicKey is not 64 hex digits",
                                       code="LAMA-PAIR-INVITE")

    @property
    def public_key_bytes(self) -> bytes:
        return bytes.fromhex(self.public_key)

    def to_json(self) -> dict[str, str]:
        """The reference's object, keys in its order."""
        return {"token": self.token, "publicKey": self.public_key, "url": self.url}

    def to_text(self) -> str:
        """``JSON.stringify(invitation)``."""
        return protocol.dumps(self.to_json())

    def to_link(self, host: str = DEFAULT_HOST, *, device: bool = False) -> str:
        """``https://<host>/invites/invitePartner/?invited=true#<encoded>`` (``inviteDevice``
        with ``device=True``, an invitation to one's own device, §6.2)."""
        path = DEVICE_PATH if device else PARTNER_PATH
        return f"https://{host}{path}{encode_uri_component(self.to_text())}"

    def qr(self, host: str = DEFAULT_HOST, *, device: bool = False) -> Any:
        """The link as a ``segno`` QR code (``pip install segno``; error correction M)."""
        try:
            import segno
        except ImportError:
            raise LamaError("QR codes need the package segno (pip install 'lama[qr]')",
                            code="LAMA-PAIR-QR") from None
        return segno.make_qr(self.to_link(host, device=device), error="m")

    def qr_text(self, host: str = DEFAULT_HOST, *, device: bool = False) -> str:
        """The QR code for a terminal: two modules per character (``█ ▀ ▄``), dark on light,
        with the 4-module quiet zone."""
        matrix = [list(row) for row in self.qr(host, device=device).matrix_iter(border=4)]
        if len(matrix) % 2:
            matrix.append([0] * len(matrix[0]))
        chars = {(0, 0): " ", (1, 0): "▀", (0, 1): "▄", (1, 1): "█"}
        lines = []
        for top, bottom in zip(matrix[0::2], matrix[1::2]):
            lines.append("".join(chars[(1 if t else 0, 1 if b else 0)]
                                 for t, b in zip(top, bottom)))
        return "\n".join(lines) + "\n"

    def qr_png(self, host: str = DEFAULT_HOST, *, device: bool = False, scale: int = 8) -> bytes:
        """The QR code as PNG bytes."""
        import io

        buf = io.BytesIO()
        self.qr(host, device=device).save(buf, kind="png", scale=scale, border=4)
        return buf.getvalue()


def parse_invitation(value: Any) -> Invitation:
    """An :class:`Invitation` from a link (anything with a ``#``: the part after the first
    ``#`` is ``decodeURIComponent``-ed), a JSON text, a dict or an Invitation. The object must
    have exactly the three keys (the reference's validator); ``InvalidArgumentError
    LAMA-PAIR-INVITE`` otherwise."""
    if isinstance(value, Invitation):
        return value
    if isinstance(value, str):
        text = value.strip()
        if "#" in text:
            text = decode_uri_component(text.split("#", 1)[1])
        try:
            value = json.loads(text)
        except ValueError:
            raise InvalidArgumentError("the invitation is neither a link nor JSON",
                                       code="LAMA-PAIR-INVITE") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(f"an invitation must be an object, not {type(value).__name__}",
                                   code="LAMA-PAIR-INVITE")
    if set(value) != {"token", "publicKey", "url"}:
        raise InvalidArgumentError(
            f"an invitation has exactly the keys token, publicKey, url; got {sorted(value)}",
            code="LAMA-PAIR-INVITE")
    return Invitation(value["token"], value["publicKey"], value["url"])


# --------------------------------------------------------------------------------------------
# Token registry


@dataclass
class _Entry:
    token: str
    person_id: str
    expires: float
    busy: bool = False
    kind: str = "partner"


class TokenRegistry:
    """The inviter's tokens (§6.1, in memory like the reference's): one-time, expiring.

    ``lifetime``: seconds (default :data:`DEFAULT_LIFETIME`); ``clock``: a monotonic clock in
    seconds (tests inject their own). Thread-safe."""

    def __init__(self, lifetime: float = DEFAULT_LIFETIME,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not isinstance(lifetime, (int, float)) or not lifetime > 0:
            raise InvalidArgumentError("the token lifetime must be > 0 seconds", code="LAMA-ARG")
        self.lifetime = float(lifetime)
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._used: dict[str, float] = {}  # used tokens until their expiry: a clearer error
        self._lock = threading.Lock()

    def _purge(self, now: float) -> None:
        for t in [t for t, e in self._entries.items() if e.expires <= now and not e.busy]:
            del self._entries[t]
        for t in [t for t, exp in self._used.items() if exp <= now]:
            del self._used[t]

    def create(self, person_id: str, token: str | None = None,
               lifetime: float | None = None, *, kind: str = "partner") -> str:
        """Register a token (a fresh random one unless given) for ``person_id``. ``kind``:
        ``"partner"`` (pairing with another person, §6.3) or ``"device"`` (a device of my own
        person, :mod:`lama.connect.device`); a token is only good for its own kind."""
        core.check_hash(person_id, "person id")
        if kind not in TOKEN_KINDS:
            raise InvalidArgumentError(f"a token kind is one of {TOKEN_KINDS}, not {kind!r}",
                                       code="LAMA-ARG")
        life = self.lifetime if lifetime is None else lifetime
        if not isinstance(life, (int, float)) or not life > 0:
            raise InvalidArgumentError("the token lifetime must be > 0 seconds", code="LAMA-ARG")
        if token is None:
            token = make_token()
        elif not isinstance(token, str) or not token:
            raise InvalidArgumentError("a token must be a non-empty str", code="LAMA-ARG")
        with self._lock:
            now = self.clock()
            self._purge(now)
            if token in self._entries or token in self._used:
                raise InvalidArgumentError("this token is registered already", code="LAMA-ARG")
            self._entries[token] = _Entry(token, person_id, now + float(life), kind=kind)
        return token

    def valid(self, token: str) -> bool:
        """Is ``token`` registered, unexpired and not in use?"""
        with self._lock:
            self._purge(self.clock())
            e = self._entries.get(token)
            return e is not None and not e.busy

    def __len__(self) -> int:
        with self._lock:
            self._purge(self.clock())
            return len(self._entries)

    def claim(self, token: Any, person_id: str, kind: str = "partner") -> str:
        """Take ``token`` for one pairing of ``person_id`` (§6.3: the token must exist and
        belong to the person that owns the invited instance key). ``PairingError
        LAMA-PAIR-TOKEN`` if it is unknown, expired, used, in use, someone else's or of
        another ``kind`` (a partner invitation never links a device, a device invitation never
        makes a contact). Follow with :meth:`consume` (success) or :meth:`release`
        (failure)."""
        if not isinstance(token, str) or not token:
            raise PairingError("the pairing token is missing", code="LAMA-PAIR-TOKEN")
        with self._lock:
            now = self.clock()
            e = self._entries.get(token)
            if e is not None and e.expires <= now and not e.busy:
                del self._entries[token]
                raise PairingError("the pairing token has expired", code="LAMA-PAIR-TOKEN")
            self._purge(now)
            if e is None:
                if token in self._used:
                    raise PairingError("the pairing token was used already",
                                       code="LAMA-PAIR-TOKEN")
                raise PairingError("the pairing token is unknown (never issued, invalidated or "
                                   "expired)", code="LAMA-PAIR-TOKEN")
            if e.busy:
                raise PairingError("the pairing token is being used by another pairing",
                                   code="LAMA-PAIR-TOKEN")
            if not hmac.compare_digest(e.person_id, person_id):
                raise PairingError("the pairing token belongs to another person",
                                   code="LAMA-PAIR-TOKEN")
            if e.kind != kind:
                raise PairingError(
                    "the token is of a device invitation (use it with `lama init --join`)"
                    if e.kind == "device" else
                    "the token is of an invitation to pair with a person, not of a device "
                    "invitation (`lama invite --device` makes one)", code="LAMA-PAIR-TOKEN")
            e.busy = True
            return token

    def consume(self, token: str) -> None:
        """The claimed pairing succeeded: the token is used up."""
        with self._lock:
            e = self._entries.pop(token, None)
            self._used[token] = e.expires if e is not None else self.clock() + self.lifetime

    def release(self, token: str) -> None:
        """The claimed pairing failed: the token is usable again (until it expires)."""
        with self._lock:
            e = self._entries.get(token)
            if e is not None:
                e.busy = False
                if e.expires <= self.clock():
                    del self._entries[token]

    def invalidate(self, token: str) -> bool:
        """Forget ``token`` (``invalidateInvitation``); True if it was registered."""
        with self._lock:
            return self._entries.pop(token, None) is not None

    def invalidate_all(self) -> None:
        """Forget every token (``invalidateAllInvitations``; shutdown)."""
        with self._lock:
            self._entries.clear()


def create_invitation(registry: TokenRegistry, instance: Any, url: str, *,
                      token: str | None = None, lifetime: float | None = None,
                      device: bool = False) -> Invitation:
    """A new invitation of ``instance`` (its person owns the token; ``publicKey`` = its
    instance encryption key, §1.1) to be reached at ``url`` (its comm server). ``device``:
    an invitation for a new device of my own person (token kind ``device``; give it out as
    ``to_link(device=True)``)."""
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError("an invitation needs the url of a comm server",
                                   code="LAMA-ARG")
    tok = registry.create(instance.person_id, token, lifetime,
                          kind="device" if device else "partner")
    return Invitation(tok, instance.instance_public_key.hex(), url)


# --------------------------------------------------------------------------------------------
# Identity (§6.3) and what is stored (§6.4)


def identity_of(instance: Any, url: str | None) -> dict[str, str]:
    """The public Identity of ``instance`` in the transcript's key order."""
    ident = {
        "type": "public",
        "personEmail": instance.email,
        "instanceName": instance.instance_name,
        "personKeyPublic": instance.person_public_key.hex(),
        "personSignKeyPublic": instance.person_public_sign_key.hex(),
        "instanceKeyPublic": instance.instance_public_key.hex(),
        "instanceSignKeyPublic": instance.instance_public_sign_key.hex(),
    }
    if url is not None:
        ident["url"] = url
    return ident


_IDENTITY_KEYS = ("personKeyPublic", "personSignKeyPublic", "instanceKeyPublic",
                  "instanceSignKeyPublic")


def _lie(msg: str) -> PairingError:
    return PairingError(f"the peer's identity does not match what it proved: {msg}",
                        code="LAMA-PAIR-IDENTITY")


def check_identity(ident: Any, peer: PeerIdentity, *, instance_key: bytes | None = None,
                   handshake_key: bytes | None = None) -> dict[str, Any]:
    """Check a received Identity against what §5.3/§5.4 proved (``peer``) and the keys of the
    connection; returns it normalised (hex lower-case). ``PairingError LAMA-PAIR-IDENTITY``:

    * the form (``type`` ``public``, strings, 32-byte hex keys, optional str ``url``);
    * ``personEmail`` gives ``peer.person_id``; ``instanceName`` (owner: that person) gives
      ``peer.instance_id``;
    * ``personKeyPublic`` is the proven person key, ``personSignKeyPublic`` the sign key of
      the Keys object the peer sent;
    * ``instanceKeyPublic`` equals ``instance_key`` (the invitation's key) if given, and
      ``handshake_key`` (the encrypted connection's remote key) if given - or, for an upstream
      invitee that dials with its person key (§10.1), ``handshake_key`` is its person key."""
    if not isinstance(ident, dict) or ident.get("type") != "public":
        raise _lie("not a public Identity object")
    for k in ("personEmail", "instanceName"):
        if not isinstance(ident.get(k), str) or not ident[k]:
            raise _lie(f"{k} is missing")
    keys: dict[str, bytes] = {}
    for k in _IDENTITY_KEYS:
        v = ident.get(k)
        if not isinstance(v, str) or not _HEX64.match(v):
            raise _lie(f"{k} is not 64 hex digits")
        keys[k] = bytes.fromhex(v)
    url = ident.get("url")
    if url is not None and not isinstance(url, str):
        raise _lie("url is not a string")
    try:
        person_id = core.id_hash({"$type$": "Person", "email": ident["personEmail"]})
        instance_id = core.id_hash(
            {"$type$": "Instance", "name": ident["instanceName"], "owner": person_id})
    except LamaError as e:
        raise _lie(f"its ids cannot be computed: {e}") from None
    if not hmac.compare_digest(person_id, peer.person_id):
        raise _lie(f"personEmail gives the person {person_id}, the peer proved {peer.person_id}")
    if not hmac.compare_digest(instance_id, peer.instance_id):
        raise _lie(f"instanceName gives the instance {instance_id}, the peer sent "
                   f"{peer.instance_id}")
    if not hmac.compare_digest(keys["personKeyPublic"], peer.person_public_key):
        raise _lie("personKeyPublic is not the person key the peer proved")
    if not hmac.compare_digest(keys["personSignKeyPublic"], peer.person_public_sign_key):
        raise _lie("personSignKeyPublic is not the sign key of the peer's Keys object")
    ik = keys["instanceKeyPublic"]
    if instance_key is not None and not hmac.compare_digest(ik, instance_key):
        raise _lie("instanceKeyPublic is not the key of the invitation")
    if handshake_key is not None and not (
            hmac.compare_digest(ik, handshake_key)
            or hmac.compare_digest(keys["personKeyPublic"], handshake_key)):
        raise _lie("instanceKeyPublic is not the key of the encrypted connection")
    out: dict[str, Any] = {"type": "public", "personEmail": ident["personEmail"],
                           "instanceName": ident["instanceName"]}
    for k in _IDENTITY_KEYS:
        out[k] = keys[k].hex()
    if url is not None:
        out["url"] = url
    return out


@dataclass(frozen=True)
class StoredContact:
    """The hashes :func:`store_identity` wrote or found (§6.4 steps 1-8)."""

    person_id: str
    person_keys: str
    instance_id: str
    instance_keys: str
    person_keys_signature: str
    instance_keys_signature: str
    endpoint: str
    sign_key: str
    profile: str
    profile_id: str
    trust_certificate: str
    trust_signature: str
    url: str | None
    written: tuple[str, ...] = field(default=())


def store_identity(instance: Any, ident: dict[str, Any]) -> StoredContact:
    """§6.4 (convertIdentityToProfile + trust certify) for a *checked* Identity (see
    :func:`check_identity`). Idempotent: what exists already is not written again, so
    ``written`` is empty for a repeated pairing."""
    store = instance.store
    contacts.enable_reverse_maps(store)
    certificates.enable_reverse_maps(store)
    me, my_keys = instance.person_id, instance.secret_keys("person")
    person_obj = {"$type$": "Person", "email": ident["personEmail"]}
    person_id = core.id_hash(person_obj)
    inst_obj = {"$type$": "Instance", "name": ident["instanceName"], "owner": person_id}
    instance_id = core.id_hash(inst_obj)
    written: list[str] = []

    def note(results: list[tuple[str, str, str | None]]) -> list[str]:
        written.extend(h for h, status, _ in results if status == "new")
        return [h for h, _, _ in results]

    # 1, 3: the ID objects
    note(store.put_microdata([(core.id_microdata(person_obj), person_id),
                              (core.id_microdata(inst_obj), instance_id)]))
    # 2, 4: the Keys objects
    pkeys = {"$type$": "Keys", "owner": person_id, "publicKey": ident["personKeyPublic"],
             "publicSignKey": ident["personSignKeyPublic"]}
    ikeys = {"$type$": "Keys", "owner": instance_id, "publicKey": ident["instanceKeyPublic"],
             "publicSignKey": ident["instanceSignKeyPublic"]}
    pk_hash, ik_hash = note(store.put_objects([pkeys, ikeys]))
    # 5: my signatures over both; 6: the endpoint; the SignKey of the profile
    sig_p = {"$type$": "Signature", "issuer": me, "data": pk_hash,
             "signature": certificates.sign_hash(pk_hash, my_keys)}
    sig_i = {"$type$": "Signature", "issuer": me, "data": ik_hash,
             "signature": certificates.sign_hash(ik_hash, my_keys)}
    endpoint: dict[str, Any] = {"$type$": "OneInstanceEndpoint", "personId": person_id,
                                "instanceId": instance_id, "personKeys": pk_hash,
                                "instanceKeys": ik_hash}
    if ident.get("url") is not None:
        endpoint["url"] = ident["url"]
    sign_key = {"$type$": "SignKey", "key": ident["personSignKeyPublic"]}
    sp_hash, si_hash, ep_hash, sk_hash = note(store.put_objects([sig_p, sig_i, endpoint,
                                                                 sign_key]))
    # 7: a version of the remote person's default Profile (owner: the remote person)
    profile = {"$type$": "Profile", "profileId": "default", "personId": person_id,
               "owner": person_id, "communicationEndpoint": [ep_hash],
               "personDescription": [sk_hash]}
    if person_id == me:
        # a device of my own person (lama.connect.device): my profile gains its endpoint
        # next to the others, proven and shared with my contacts (docs/connections.md §3.5)
        from . import profile as _own

        before = versions.current_hash(store, core.id_hash(profile))
        profile_hash = _own.add_own_endpoints(instance, [ep_hash])
        profile_id = core.id_hash(profile)
        if profile_hash != before:
            written.append(profile_hash)
    elif versions.current_hash(store, core.id_hash(profile)) == core.object_hash(profile):
        profile_hash, profile_id = core.object_hash(profile), core.id_hash(profile)
    else:
        v = versions.store_versioned(store, profile)
        profile_hash, profile_id = v.hash, v.id_hash
        written.append(v.node_hash)
        if v.status == "new":
            written.append(v.hash)
    # 8: trust the keys of that Profile version
    lic_hash = core.object_hash(certificates.license_object("TrustKeysCertificate"))
    cert_hash = core.object_hash({"$type$": "TrustKeysCertificate", "profile": profile_hash,
                                  "license": lic_hash})
    sig_hash = core.object_hash({"$type$": "Signature", "issuer": me, "data": cert_hash,
                                 "signature": certificates.sign_hash(cert_hash, my_keys)})
    missing = store.missing([lic_hash, cert_hash, sig_hash])
    cert = certificates.trust_keys(store, profile_hash, me, my_keys)
    written.extend(missing)
    return StoredContact(
        person_id=person_id, person_keys=pk_hash, instance_id=instance_id,
        instance_keys=ik_hash, person_keys_signature=sp_hash, instance_keys_signature=si_hash,
        endpoint=ep_hash, sign_key=sk_hash, profile=profile_hash, profile_id=profile_id,
        trust_certificate=cert.certificate, trust_signature=cert.signature,
        url=ident.get("url"), written=tuple(written))


# --------------------------------------------------------------------------------------------
# The exchange (§6.3)


@dataclass(frozen=True)
class PairingResult:
    """A finished pairing (the arguments of the reference's ``onPairingSuccess`` and what was
    stored)."""

    initiated_locally: bool
    token: str
    local_person: str
    local_instance: str
    remote_person: str
    remote_instance: str
    identity: dict[str, Any]
    contact: StoredContact


async def _recv_identity(conn: TransportLike, timeout: float) -> Any:
    """The peer's ``identity``; a stray ``synchronisation`` is skipped, never answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        msg = await protocol._recv(conn, max(left, 0.0), "'identity'")
        if msg == protocol.SYNCHRONISATION:
            continue
        if not isinstance(msg, str):
            raise await protocol._fail(conn, ProtocolError(
                "expected the message 'identity', got a binary message", code="LAMA-PROTO"))
        try:
            obj = json.loads(msg)
        except ValueError:
            obj = None
        if not isinstance(obj, dict) or obj.get("command") != "identity":
            got = obj.get("command") if isinstance(obj, dict) else msg[:40]
            raise await protocol._fail(conn, ProtocolError(
                f"expected the message 'identity', got {got!r}", code="LAMA-PROTO"))
        return obj.get("obj")


def _check_peer(peer: Any) -> PeerIdentity:
    if not isinstance(peer, PeerIdentity):
        raise InvalidArgumentError("peer must be the PeerIdentity of protocol.initiate/accept",
                                   code="LAMA-ARG")
    if peer.group != "pairing":
        raise InvalidArgumentError(f"pairing runs on a 'pairing' connection, not {peer.group!r}",
                                   code="LAMA-ARG")
    return peer


async def connect_pairing(conn: TransportLike, instance: Any, invitation: Invitation | Any,
                          peer: PeerIdentity, *, url: str | None = None,
                          handshake_key: bytes | None = None, confirm_timeout: float = 2.0,
                          timeout: float = protocol.DEFAULT_TIMEOUT) -> PairingResult:
    """The invitee's side of §6.3, after ``protocol.initiate(conn, instance, "pairing")``
    returned ``peer``. ``url``: my comm server, put into my identity (where the inviter will
    dial me). ``handshake_key``: the encrypted connection's remote key (default: the
    invitation's key, which the connection was opened to). The inviter's contact is stored
    only after the inviter confirmed (its ``synchronisation``, or ``confirm_timeout`` seconds
    of silence from an upstream inviter; a close with an error reason is a refusal). Refusals
    close the connection:
    ``PairingError LAMA-PAIR-IDENTITY``, ``ProtocolError`` (the inviter closed with its
    reason, e.g. a refused token: ``LAMA-PROTO-CLOSED``). Leaves the connection open."""
    inv = parse_invitation(invitation)
    peer = _check_peer(peer)
    return await protocol.closing_on_error(conn, _connect_pairing(
        conn, instance, inv, peer, url, handshake_key, confirm_timeout, timeout))


async def _connect_pairing(conn: TransportLike, instance: Any, inv: Invitation,
                           peer: PeerIdentity, url: str | None, handshake_key: bytes | None,
                           confirm_timeout: float, timeout: float) -> PairingResult:
    await protocol.send_json(conn, {"command": "authentication_token", "token": inv.token})
    ident = await _recv_identity(conn, timeout)
    try:
        checked = check_identity(ident, peer, instance_key=inv.public_key_bytes,
                                 handshake_key=handshake_key)
    except PairingError as e:
        raise await protocol._fail(conn, e) from None
    await protocol.send_json(conn, {"command": "identity", "obj": identity_of(instance, url)})
    # The reference stores the inviter before sending its own identity; lama waits for the
    # inviter's verdict first, so an inviter that refuses our identity leaves nothing here.
    # A lama or Lama-fork inviter confirms with `synchronisation` (§5.5, never answered); an
    # upstream inviter sends nothing, so silence for `confirm_timeout` counts as success.
    try:
        msg = await asyncio.wait_for(conn.recv(), confirm_timeout)
    except asyncio.TimeoutError:
        msg = ""
    if msg is None:
        reason = protocol._reason(conn)
        if "Error" in reason or not reason:
            raise ProtocolError(
                "the inviter closed the connection instead of accepting our identity"
                + (f" (reason: {reason})" if reason else ""), code="LAMA-PROTO-CLOSED")
    contact = store_identity(instance, checked)
    return PairingResult(True, inv.token, instance.person_id, instance.instance_id,
                         peer.person_id, peer.instance_id, checked, contact)


async def accept_pairing(conn: TransportLike, instance: Any, registry: TokenRegistry,
                         peer: PeerIdentity, *, url: str | None = None,
                         handshake_key: bytes | None = None, send_synchronisation: bool = True,
                         timeout: float = protocol.DEFAULT_TIMEOUT) -> PairingResult:
    """The inviter's side of §6.3, after ``protocol.accept`` returned ``peer`` for group
    ``pairing``. ``url``: my comm server (into my identity); ``handshake_key``: the encrypted
    connection's remote key (the invitee's source key; checked against its identity).
    ``send_synchronisation``: send the fork's ``synchronisation`` afterwards (not waiting).
    Refusals close the connection with ``Error: <message>`` and write nothing:
    ``PairingError LAMA-PAIR-TOKEN`` / ``LAMA-PAIR-IDENTITY``, ``ProtocolError``."""
    peer = _check_peer(peer)
    return await protocol.closing_on_error(conn, _accept_pairing(
        conn, instance, registry, peer, url, handshake_key, send_synchronisation, timeout))


async def _accept_pairing(conn: TransportLike, instance: Any, registry: TokenRegistry,
                          peer: PeerIdentity, url: str | None, handshake_key: bytes | None,
                          send_synchronisation: bool, timeout: float) -> PairingResult:
    msg = await protocol.recv_command(conn, "authentication_token", timeout)
    try:
        token = registry.claim(msg.get("token"), instance.person_id)
    except PairingError as e:
        raise await protocol._fail(conn, e) from None
    try:
        await protocol.send_json(conn, {"command": "identity",
                                        "obj": identity_of(instance, url)})
        ident = await _recv_identity(conn, timeout)
        try:
            checked = check_identity(ident, peer, handshake_key=handshake_key)
        except PairingError as e:
            raise await protocol._fail(conn, e) from None
        contact = store_identity(instance, checked)
    except BaseException:
        registry.release(token)
        raise
    registry.consume(token)
    if send_synchronisation:
        try:
            await protocol.send(conn, protocol.SYNCHRONISATION)
        except ProtocolError:
            pass  # an upstream invitee closes right after its identity (§6.3)
    return PairingResult(False, token, instance.person_id, instance.instance_id,
                         peer.person_id, peer.instance_id, checked, contact)
