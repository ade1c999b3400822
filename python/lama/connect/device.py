"""A second device of my own person (Internet of Me): linking a new instance to an existing
one by a device invitation (docs/connections.md §3.4).

The user's view: on the first device ``lama invite --device`` (``App.invite_device()``) shows
an own-device invitation, the spec's IoM link ``https://<host>/invites/inviteDevice/?invited=
true#<encoded {token, publicKey, url}>`` (connections.md §6.2); on the new device ``lama init
--join <link>`` (``App.join_device(...)``) creates an instance that is a device of the same
person: the same Person and person keys, its own Instance and instance keys.

The reference has no protocol for this (its ``connectToPersonalCloudViaPairingInformation``
design is unimplemented, §6.6); lama's runs lama to lama only, on its own connection group
:data:`DEVICE_GROUP` (``lama-device``), which a ONE peer never opens and refuses like any
unknown group. Sequence, after the encrypted handshake to the invitation's key (the comm
server relays only ciphertext, §4) and the identity steps §5.1-5.4:

* the new device (initiator) has no person yet: it runs §5.3-5.4 as a *provisional*
  instance - a throw-away person (random keys, email ``join-<random>@lama.invalid``) with the
  instance keys and instance name the new instance will have - kept in a temporary directory
  that is removed afterwards;
* new → first ``{"command": "device_token", "token"}``; the first device claims the token in
  its registry: it must be unexpired, unused, not in use and of kind ``device`` (a partner
  invitation's token is refused, so an invitation to become a contact never hands out keys);
  a refusal closes the connection with ``Error: <reason>`` and nothing is created anywhere;
* first → new ``{"command": "device_keys", "box"}``: ``box`` is hex of
  ``encryptAndEmbedNonce`` (§1.2) from the first device's person key to the provisional
  person key the new device proved in §5.3 - a second layer inside the encrypted connection -
  of the JSON ``{personEmail, personName, personSecretKey, personSecretSignKey, identity,
  contacts}``: the person's secret keys, the first device's public Identity (§6.3 form, with
  its url) and the public Identities of its contacts (without url);
* the new device checks all of it (the Identity against what §5.3/§5.4 and the handshake
  proved, the secret keys against the Identity's public person keys, the person id against
  the email), creates its instance (person keys = the received ones, instance keys = those of
  the connection; the keychain encrypts them at rest with the new device's own secret) and
  sends its public Identity ``{"command": "identity", "obj"}``;
* the first device checks it (my person's email and keys, the instance key of the
  connection, the instance name of §5.4, not an instance id of mine already), stores it as
  pairing does (§6.4: an endpoint of my own person, which the connection manager dials at
  once), uses the token up and answers ``{"command": "device_done"}``;
* the new device stores the first device's Identity (its endpoint) and the contacts' (no url:
  they are contacts, the chat layer makes their 1-to-1 topics; the contacts' own profiles
  tell later where they listen). If anything fails after its instance was created, the new
  instance directory is removed again.

Then both devices connect by themselves (``chum``) and CHUM brings the conversations. Each
device's endpoint is in my profile (``pairing.store_identity`` for my own person,
:mod:`lama.connect.profile`), proven by my person's Signature over its instance Keys and
shared with my contacts, whose managers then dial the new device (docs/connections.md §3.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from lama._core import core
from lama.connect import contacts as _contacts
from lama.connect import pairing, protocol
from lama.connect.protocol import PeerIdentity, TransportLike
from lama.errors import InvalidArgumentError, LamaError, PairingError, ProtocolError

__all__ = [
    "DEVICE_GROUP",
    "DeviceJoined",
    "JoinResult",
    "contact_identities",
    "join_device",
    "serve_device",
]

DEVICE_GROUP = "lama-device"
"""The connection group of device linking (lama only; ONE peers never open it)."""

_PROVISIONAL_DOMAIN = "lama.invalid"


def _err(msg: str) -> PairingError:
    return PairingError(msg, code="LAMA-DEVICE")


@dataclass(frozen=True)
class DeviceJoined:
    """The first device's record of a linked device (the attributes of
    :class:`~lama.connect.pairing.PairingResult` the connection manager reads)."""

    token: str
    remote_person: str
    remote_instance: str
    instance_name: str
    identity: dict[str, Any]
    contact: pairing.StoredContact


@dataclass
class JoinResult:
    """What :func:`join_device` returns: the new, open instance (close it or hand it on), the
    first device's ids and the contacts it passed on (person ids; the chat layer's
    ``on_paired`` makes their contacts and topics)."""

    instance: Any
    inviter_instance: str
    inviter_instance_name: str
    contacts: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The first device (the inviter)


def contact_identities(instance: Any, persons: Iterable[str]) -> list[dict[str, str]]:
    """The public Identities (§6.3 form, without url) of ``persons`` from their stored
    endpoints: one per endpoint whose Person, Instance and Keys objects are all here."""
    store = instance.store
    _contacts.enable_reverse_maps(store)
    out: list[dict[str, str]] = []
    for person in persons:
        if person == instance.person_id:
            continue
        for _, ep in _contacts.endpoints_of_person(store, person):
            try:
                email = store.get_object(ep["personId"])["email"]
                name = store.get_object(ep["instanceId"])["name"]
                pk = _contacts.load_keys(store, ep["personKeys"])
                ik = _contacts.load_keys(store, ep["instanceKeys"])
            except (LamaError, KeyError):
                continue
            ident = {"type": "public", "personEmail": email, "instanceName": name,
                     "personKeyPublic": pk["publicKey"], "personSignKeyPublic": pk["publicSignKey"],
                     "instanceKeyPublic": ik["publicKey"],
                     "instanceSignKeyPublic": ik["publicSignKey"]}
            if ident not in out:
                out.append(ident)
    return out


async def serve_device(conn: TransportLike, instance: Any, registry: pairing.TokenRegistry,
                       peer: PeerIdentity, *, url: str | None, handshake_key: bytes,
                       contact_persons: Iterable[str] = (),
                       timeout: float = protocol.DEFAULT_TIMEOUT) -> DeviceJoined:
    """The first device's side (module doc), after ``protocol.accept`` returned ``peer`` for
    :data:`DEVICE_GROUP`. ``url``: my comm server (into my Identity); ``handshake_key``: the
    connection's remote key (the new device's instance key); ``contact_persons``: the contacts
    to pass on. Refusals close the connection with ``Error: <message>``, store nothing and
    leave the token usable (``PairingError LAMA-PAIR-TOKEN`` / ``LAMA-DEVICE``,
    ``ProtocolError``)."""
    if not isinstance(peer, PeerIdentity) or peer.group != DEVICE_GROUP:
        raise InvalidArgumentError(f"device linking runs on a {DEVICE_GROUP!r} connection",
                                   code="LAMA-ARG")
    return await protocol.closing_on_error(conn, _serve_device(
        conn, instance, registry, peer, url, bytes(handshake_key), list(contact_persons),
        timeout))


async def _serve_device(conn: TransportLike, instance: Any, registry: pairing.TokenRegistry,
                        peer: PeerIdentity, url: str | None, handshake_key: bytes,
                        contact_persons: list[str], timeout: float) -> DeviceJoined:
    msg = await protocol.recv_command(conn, "device_token", timeout)
    try:
        token = registry.claim(msg.get("token"), instance.person_id, "device")
    except PairingError as e:
        raise await protocol._fail(conn, e) from None
    try:
        keys = instance.secret_keys("person")
        payload = {
            "personEmail": instance.email, "personName": instance.person_name,
            "personSecretKey": keys.encryption_secret.hex(),
            "personSecretSignKey": keys.sign_secret.hex(),
            "identity": pairing.identity_of(instance, url),
            "contacts": contact_identities(instance, contact_persons),
        }
        box = instance.encrypt(json.dumps(payload, separators=(",", ":")),
                               peer.person_public_key, key="person")
        del payload, keys
        await protocol.send_json(conn, {"command": "device_keys", "box": box.hex()})
        msg = await protocol.recv_command(conn, "identity", timeout)
        try:
            ident = _check_device_identity(instance, msg.get("obj"), peer, handshake_key)
        except PairingError as e:
            raise await protocol._fail(conn, e) from None
        contact = pairing.store_identity(instance, ident)
    except BaseException:
        registry.release(token)
        raise
    registry.consume(token)
    with contextlib.suppress(ProtocolError):
        await protocol.send_json(conn, {"command": "device_done"})
    person_id = core.id_hash({"$type$": "Person", "email": ident["personEmail"]})
    return DeviceJoined(token=token, remote_person=person_id,
                        remote_instance=contact.instance_id,
                        instance_name=ident["instanceName"], identity=ident, contact=contact)


def _check_device_identity(instance: Any, ident: Any, peer: PeerIdentity,
                           handshake_key: bytes) -> dict[str, Any]:
    """The new device's Identity: my person (email and both person keys), the instance key of
    the connection, the instance name it gave in §5.4, an instance id that is not mine."""
    if not isinstance(ident, dict) or ident.get("type") != "public":
        raise _err("the new device sent no public Identity")
    out: dict[str, Any] = {"type": "public"}
    for k in ("personEmail", "instanceName"):
        if not isinstance(ident.get(k), str) or not ident[k]:
            raise _err(f"the new device's Identity lacks {k}")
        out[k] = ident[k]
    for k in ("personKeyPublic", "personSignKeyPublic", "instanceKeyPublic",
              "instanceSignKeyPublic"):
        v = ident.get(k)
        if not isinstance(v, str) or len(v) != 64:
            raise _err(f"the new device's {k} is not 64 hex digits")
        try:
            out[k] = bytes.fromhex(v).hex()
        except ValueError:
            raise _err(f"the new device's {k} is not 64 hex digits") from None
    url = ident.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise _err("the new device's url is not a string")
        out["url"] = url
    if out["personEmail"] != instance.email:
        raise _err("the new device's Identity is of another person")
    if not (hmac.compare_digest(out["personKeyPublic"], instance.person_public_key.hex())
            and hmac.compare_digest(out["personSignKeyPublic"],
                                    instance.person_public_sign_key.hex())):
        raise _err("the new device's person keys are not mine")
    if not hmac.compare_digest(out["instanceKeyPublic"], handshake_key.hex()):
        raise _err("the new device's instance key is not the key of the encrypted connection")
    if out["instanceName"] != peer.instance_id_object.get("name"):
        raise _err("the new device's instance name is not the one it gave in the handshake")
    instance_id = core.id_hash({"$type$": "Instance", "name": out["instanceName"],
                                "owner": instance.person_id})
    if instance_id == instance.instance_id:
        raise _err(f"the new device has the instance name of this device "
                   f"({instance.instance_name!r}); choose another instance name")
    for _, ep in _contacts.endpoints_of_instance(instance.store, instance_id):
        if _contacts.endpoint_revoked(instance.store, str(instance.person_id),
                                      bytes(instance.person_public_sign_key), ep):
            continue  # a removed device's name may be used again (docs/connections.md §3.5)
        with contextlib.suppress(LamaError, KeyError):
            if _contacts.load_keys(instance.store, ep["instanceKeys"])["publicKey"] \
                    != out["instanceKeyPublic"]:
                raise _err(f"a device of mine is called {out['instanceName']!r} already; "
                           "choose another instance name")
    return out


# --------------------------------------------------------------------------------------------
# The new device (the joiner)


def default_instance_name() -> str:
    """``<host name>-<6 random hex digits>``: distinct from the first device's on one host."""
    return f"{socket.gethostname() or 'lama'}-{secrets.token_hex(3)}"


async def join_device(directory: str | os.PathLike[str], invitation: Any, *, secret: str,
                      instance_name: str | None = None, url: str | None = None,
                      connect_attempts: int = 3, retry_delay: float = 0.3,
                      open_timeout: float = 10.0,
                      timeout: float = protocol.DEFAULT_TIMEOUT) -> JoinResult:
    """The new device's side (module doc): create an instance in ``directory`` that is a
    device of the person of ``invitation`` (a device link, its JSON, a dict or an
    :class:`~lama.connect.pairing.Invitation`). ``secret`` protects the new keychain;
    ``instance_name`` (default :func:`default_instance_name`); ``url``: this device's comm
    server, told to the first device (default: the invitation's).

    Errors (nothing is left in ``directory``): ``InvalidArgumentError LAMA-PAIR-INVITE`` (a
    malformed link or one to pair with a person), ``PairingError LAMA-DEVICE`` (the first
    device refused - an unknown, expired, used or wrong token - or sent something that does
    not check out), ``ProtocolError``/``TransportError`` (the connection failed),
    ``StoreError LAMA-INSTANCE-EXISTS``."""
    from lama.identity.instance import Instance, check_base_dir, check_name
    from lama.identity.keychain import SecretKeys

    if isinstance(invitation, str) and pairing.PARTNER_PATH.split("?")[0] in invitation:
        raise InvalidArgumentError(
            "this is an invitation to pair with a person (lama accept), not a device "
            "invitation (lama invite --device)", code="LAMA-PAIR-INVITE")
    inv = pairing.parse_invitation(invitation)
    if instance_name is None:
        instance_name = default_instance_name()
    check_name(instance_name, "instance name")
    check_base_dir(str(directory))
    if not isinstance(secret, str) or not secret:
        raise InvalidArgumentError("the instance secret must be a non-empty str",
                                   code="LAMA-SECRET")
    own_url = url or inv.url
    instance_keys = SecretKeys.generate()
    tmp = Path(tempfile.mkdtemp(prefix="lama-join-"))
    try:
        prov = await Instance.create_async(
            tmp, email=f"join-{secrets.token_hex(8)}@{_PROVISIONAL_DOMAIN}",
            instance_name=instance_name, secret=secrets.token_urlsafe(24),
            instance_keys=instance_keys)
        try:
            return await _join(prov, inv, Path(directory), secret, instance_name, own_url,
                               instance_keys, connect_attempts, retry_delay, open_timeout,
                               timeout)
        finally:
            prov.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _open(inv: pairing.Invitation, keys: Any, attempts: int, delay: float,
                open_timeout: float) -> Any:
    from lama.errors import TransportError

    for attempt in range(max(1, attempts)):
        try:
            return await core.encrypted_connect(
                inv.url, keys.public_key, keys.encryption_secret, inv.public_key_bytes,
                open_timeout=open_timeout)
        except (TransportError, OSError):
            if attempt + 1 >= attempts:
                raise
            await asyncio.sleep(delay * (attempt + 1))
    raise AssertionError("unreachable")


async def _join(prov: Any, inv: pairing.Invitation, directory: Path, secret: str,
                instance_name: str, own_url: str, instance_keys: Any, attempts: int,
                delay: float, open_timeout: float, timeout: float) -> JoinResult:
    from lama.identity.instance import Instance
    from lama.identity.keychain import SecretKeys

    conn = await _open(inv, instance_keys, attempts, delay, open_timeout)
    created: Any = None
    try:
        try:
            peer = await protocol.initiate(conn, prov, DEVICE_GROUP, store_peer=False,
                                           timeout=timeout)
        except ProtocolError as e:
            if e.code == "LAMA-REFUSED":  # a ONE peer, an older lama, pairing switched off
                raise _err(f"the device of the link refused to link devices: {e}") from None
            raise
        await protocol.send_json(conn, {"command": "device_token", "token": inv.token})
        try:
            msg = await protocol.recv_command(conn, "device_keys", timeout)
        except ProtocolError as e:
            if e.code in ("LAMA-PROTO-CLOSED", "LAMA-REFUSED"):
                raise _err(f"the first device refused the device invitation: {e}") from None
            raise
        try:
            payload = _open_keys(prov, peer, msg.get("box"))
            ident = pairing.check_identity(payload["identity"], peer,
                                           instance_key=inv.public_key_bytes,
                                           handshake_key=inv.public_key_bytes)
            person_keys = SecretKeys(bytes.fromhex(payload["personSecretKey"]),
                                     bytes.fromhex(payload["personSecretSignKey"]))
            same = (hmac.compare_digest(person_keys.public_key.hex(), ident["personKeyPublic"])
                    and hmac.compare_digest(person_keys.public_sign_key.hex(),
                                            ident["personSignKeyPublic"])
                    and payload["personEmail"] == ident["personEmail"])
        except (LamaError, ValueError, KeyError, TypeError) as e:
            raise await protocol._fail(conn, _err(f"the first device's keys do not check "
                                                  f"out: {e}")) from None
        if not same:
            raise await protocol._fail(conn, _err(
                "the person keys the first device sent are not those it proved"))
        if ident["instanceName"] == instance_name:
            raise await protocol._fail(conn, _err(
                f"the first device has the instance name {instance_name!r}; choose another"))
        name = payload.get("personName")
        created = await Instance.create_async(
            directory, email=ident["personEmail"], instance_name=instance_name, secret=secret,
            person_name=name if isinstance(name, str) and name else None,
            person_keys=person_keys, instance_keys=instance_keys)
        del person_keys
        await protocol.send_json(conn, {"command": "identity",
                                        "obj": pairing.identity_of(created, own_url)})
        try:
            await protocol.recv_command(conn, "device_done", timeout)
        except ProtocolError as e:
            raise _err(f"the first device did not accept this device: {e}") from None
        pairing.store_identity(created, ident)
        persons: list[str] = []
        for c in payload.get("contacts") or []:
            try:
                checked = _check_contact(c, created.person_id)
            except (PairingError, ValueError, LamaError):
                continue  # a malformed entry is skipped; the device works without it
            stored = pairing.store_identity(created, checked)
            if stored.person_id not in persons:
                persons.append(stored.person_id)
        result = JoinResult(created, inviter_instance=peer.instance_id,
                            inviter_instance_name=ident["instanceName"], contacts=persons)
        created = None
        return result
    finally:
        with contextlib.suppress(Exception):
            await conn.close("Close called.")
        if created is not None:  # failed after the instance was made: leave nothing behind
            path = created.path
            created.close()
            shutil.rmtree(path, ignore_errors=True)


def _open_keys(prov: Any, peer: PeerIdentity, box: Any) -> dict[str, Any]:
    if not isinstance(box, str):
        raise _err("device_keys carries no box")
    plain = prov.decrypt(bytes.fromhex(box), peer.person_public_key, key="person")
    payload = json.loads(plain)
    if not isinstance(payload, dict):
        raise _err("device_keys is not an object")
    return payload


def _check_contact(c: Any, me: str) -> dict[str, Any]:
    """A contact's Identity as the first device passed it on: well-formed, not my person,
    no url (this device does not dial contacts)."""
    if not isinstance(c, dict) or c.get("type") != "public":
        raise _err("a contact is not a public Identity")
    out: dict[str, Any] = {"type": "public"}
    for k in ("personEmail", "instanceName"):
        if not isinstance(c.get(k), str) or not c[k]:
            raise _err(f"a contact lacks {k}")
        out[k] = c[k]
    for k in ("personKeyPublic", "personSignKeyPublic", "instanceKeyPublic",
              "instanceSignKeyPublic"):
        v = c.get(k)
        if not isinstance(v, str) or len(v) != 64:
            raise _err(f"a contact's {k} is not 64 hex digits")
        out[k] = bytes.fromhex(v).hex()
    if core.id_hash({"$type$": "Person", "email": out["personEmail"]}) == me:
        raise _err("a contact is my own person")
    return out


def contacts_of(get: Callable[[], Iterable[Any]]) -> Callable[[], list[str]]:
    """A ``contact_persons`` source from a function listing contacts (objects with
    ``person_id``) - what the connection manager asks when a device joins."""
    return lambda: [str(c.person_id) for c in get()]
