"""The protocols on top of an encrypted connection (connections.md §5.1-5.5).

Both sides over any *Transport-like* object - ``async send(str | bytes)``, ``async recv() ->
str | bytes | None``, ``async close(reason)`` - as ``memory_pair()`` and the core's
``EncryptedConnection`` (docs/connections.md §1) give:

=========================  ====================================  ==============================
step                       initiator (:func:`initiate`)          acceptor (:func:`accept`)
=========================  ====================================  ==============================
§5.1 group name            sends ``connection_group``            waits; asks ``decide(group)``
§5.2 sync                  waits for ``sync``                    sends ``sync`` or closes
                                                                 ``I do not want to communicate
                                                                 with you. Go Away!``
§5.3 person ids, keys      send ``person_id_object``, wait; send ``keys_object``, wait (both)
§5.3 challenge proof       answers first, then challenges        challenges first, then answers
§5.3 post-checks           expected person, key on record, store a new Person ID object
§5.4 instance ids          send ``instance_id_object``, wait (both); expected instance; store
                           a new Instance ID object
§5.5 synchronisation       :func:`synchronise`: send the string, wait for any one message
=========================  ====================================  ==============================

Messages are JSON text in ``JSON.stringify`` form (no whitespace, keys in the spec's order,
non-ASCII as is); the four challenge messages are 104-byte binary messages.

The person-key proof (§5.3, §1.3): ``Kp = box.before(their person pk, my person sk)``; the
challenger sends ``nonce || secretbox(64 random bytes)``; the prover decrypts and returns the
bitwise complement sealed with a fresh nonce; the challenger compares in constant time. The
initiator answers first. The crypto is the core's, through :meth:`lama.identity.Instance.encrypt`
/ :meth:`~lama.identity.Instance.decrypt` with ``key="person"``.

Differences from the reference, on purpose:

* every wait has a timeout (``timeout``, default :data:`DEFAULT_TIMEOUT` s; the reference
  waits forever, §9.3 item 8) - ``ProtocolError LAMA-PROTO-TIMEOUT`` and the connection is
  closed;
* the ``Keys`` owner must equal the person id (the reference checks this too) and the
  ``Instance`` owner must equal it as well (the reference does not check it);
* for the ``pairing`` group nothing is stored by default (``store_peer``): pairing stores the
  whole set of §6.4 on success, so a refused pairing leaves nothing behind.

Close reasons are the reference's texts (§5.2, §5.3, §2.3); the encrypted connection puts
them in its ``Close called: <reason>`` form.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol, TypeVar, Union

from lama._core import core
from lama.connect import contacts
from lama.errors import (
    AuthenticationError,
    CryptoError,
    LamaError,
    ProtocolError,
    TransportError,
)

__all__ = [
    "Accept",
    "CHALLENGE_LEN",
    "DEFAULT_TIMEOUT",
    "GROUPS",
    "GO_AWAY",
    "PeerIdentity",
    "PROOF_LEN",
    "TransportLike",
    "accept",
    "answer_challenge",
    "check_answer",
    "closing_on_error",
    "dumps",
    "initiate",
    "invert",
    "make_challenge",
    "recv_command",
    "send",
    "send_json",
    "synchronise",
]

DEFAULT_TIMEOUT = 10.0
"""Seconds any single wait of the protocols may take."""

CHALLENGE_LEN = 64
PROOF_LEN = 24 + 16 + CHALLENGE_LEN  # 104 (§1.3)

GROUPS = ("chum", "pairing", "debug")
"""The connection group names in use (§5.1)."""

GO_AWAY = "I do not want to communicate with you. Go Away!"
AUTH_FAILED = "Failed to authenticate connection."
PERSON_MISMATCH = "The person id does not match the one we have on record."
KEY_MISMATCH = "Key does not match your previous visit"
INSTANCE_MISMATCH = "The instance id does not match the one we have on record."
SYNCHRONISATION = "synchronisation"

T = TypeVar("T")


class TransportLike(Protocol):
    async def send(self, msg: str | bytes) -> None: ...
    async def recv(self) -> str | bytes | None: ...
    async def close(self, reason: str = "") -> None: ...


@dataclass(frozen=True)
class Accept:
    """The acceptor's decision for a connection (returned by ``decide``).

    ``expected_person`` / ``expected_instance``: the ids on record for the connection's remote
    key (a known endpoint, §7.3 step 6); the peer must prove exactly these.
    ``store_peer``: store a new Person ID / Instance ID object (§5.3 step 3, §5.4); ``None``
    means "unless the group is ``pairing``"."""

    expected_person: str | None = None
    expected_instance: str | None = None
    store_peer: bool | None = None


Decision = Union[Accept, bool, None]
DecideFn = Callable[[str], Union[Decision, Awaitable[Decision]]]


@dataclass(frozen=True)
class PeerIdentity:
    """What §5.1-5.4 established about the peer.

    ``group``: the connection group; ``initiated_locally``: we sent the group name;
    ``person_id`` / ``instance_id``: the peer's ID hashes (from the objects it sent);
    ``person_keys``: its person Keys object as received (owner = ``person_id``) and
    ``person_keys_hash`` its hash; ``person_public_key``: the person encryption key whose
    secret the peer proved it holds; ``person_public_sign_key`` the sign key of that Keys
    object (not proven); ``known``: the person had keys on record and they matched;
    ``stored``: hashes this run wrote (a new Person / Instance ID object)."""

    group: str
    initiated_locally: bool
    person_id: str
    person_id_object: dict[str, Any]
    person_keys: dict[str, Any]
    person_keys_hash: str
    person_public_key: bytes
    person_public_sign_key: bytes
    instance_id: str
    instance_id_object: dict[str, Any]
    known: bool
    stored: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------------
# Messages


_SURROGATES = re.compile("([\ud800-\udbff][\udc00-\udfff])|[\ud800-\udfff]")


def _js_surrogates(m: re.Match[str]) -> str:
    if m.group(1):  # a high and a low surrogate as two code points: one JS character
        hi, lo = ord(m.group(1)[0]), ord(m.group(1)[1])
        return chr(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
    return f"\\u{ord(m.group(0)):04x}"  # a lone surrogate, as JSON.stringify writes it


def dumps(obj: Any) -> str:
    """``JSON.stringify``: no whitespace, keys in insertion order, non-ASCII unescaped, a lone
    surrogate as ``\\udXXX`` (ES2019 well-formed stringify) so the text is valid UTF-8."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return _SURROGATES.sub(_js_surrogates, text)


async def send(conn: TransportLike, msg: str | bytes) -> None:
    """``conn.send``; a connection closed under it is ``ProtocolError LAMA-PROTO-CLOSED``."""
    try:
        await conn.send(msg)
    except TransportError as e:
        if isinstance(e, ProtocolError):
            raise
        reason = _reason(conn)
        raise ProtocolError(
            "the connection closed while sending" + (f" (reason: {reason})" if reason else ""),
            code="LAMA-REFUSED" if GO_AWAY in reason else "LAMA-PROTO-CLOSED",
        ) from e


async def send_json(conn: TransportLike, msg: dict[str, Any]) -> None:
    await send(conn, dumps(msg))


async def _close(conn: TransportLike, reason: str) -> None:
    try:
        await conn.close(reason)
    except Exception:  # closing an already broken connection must not hide the real error
        pass


def _reason(conn: TransportLike) -> str:
    r = getattr(conn, "close_reason", None)
    return r if isinstance(r, str) else ""


async def _recv(conn: TransportLike, timeout: float, what: str) -> str | bytes:
    try:
        msg = await asyncio.wait_for(conn.recv(), timeout)
    except asyncio.TimeoutError:
        await _close(conn, f"Timeout: no {what} within {timeout:g} s")
        raise ProtocolError(
            f"no {what} from the peer within {timeout:g} s", code="LAMA-PROTO-TIMEOUT"
        ) from None
    if msg is None:
        reason = _reason(conn)
        code = "LAMA-REFUSED" if GO_AWAY in reason else "LAMA-PROTO-CLOSED"
        raise ProtocolError(
            f"the connection closed while waiting for {what}"
            + (f" (reason: {reason})" if reason else ""),
            code=code,
        )
    return msg


async def _fail(conn: TransportLike, err: LamaError, reason: str | None = None) -> LamaError:
    """Close the connection (``reason`` or ``Error: <message>``) and return ``err`` to raise."""
    text = str(err)
    if reason is None:
        # the message without its code prefix, as the reference's "Error: <message>"
        reason = "Error: " + (text.split(": ", 1)[1] if text.startswith(err.code + ":") else text)
    await _close(conn, reason)
    return err


async def recv_command(
    conn: TransportLike, command: str, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """Wait for the JSON message with ``command`` (§5: anything else closes the connection
    with ``ProtocolError LAMA-PROTO``)."""
    msg = await _recv(conn, timeout, f"'{command}'")
    if not isinstance(msg, str):
        raise await _fail(conn, ProtocolError(
            f"expected the JSON message '{command}', got a binary message of {len(msg)} bytes",
            code="LAMA-PROTO"))
    try:
        obj = json.loads(msg)
    except ValueError:
        raise await _fail(conn, ProtocolError(
            f"expected the JSON message '{command}', got text that is not JSON: {msg[:60]!r}",
            code="LAMA-PROTO")) from None
    if not isinstance(obj, dict) or obj.get("command") != command:
        got = obj.get("command") if isinstance(obj, dict) else type(obj).__name__
        raise await _fail(conn, ProtocolError(
            f"expected the message '{command}', got {got!r}", code="LAMA-PROTO"))
    return obj


async def _recv_binary(conn: TransportLike, timeout: float, what: str) -> bytes:
    msg = await _recv(conn, timeout, what)
    if not isinstance(msg, (bytes, bytearray, memoryview)):
        raise await _fail(conn, ProtocolError(
            f"expected the binary {what}, got a text message", code="LAMA-PROTO"))
    msg = bytes(msg)
    if len(msg) != PROOF_LEN:
        raise await _fail(conn, AuthenticationError(
            f"the {what} has {len(msg)} bytes, not {PROOF_LEN}", code="LAMA-AUTH"), AUTH_FAILED)
    return msg


# --------------------------------------------------------------------------------------------
# The person-key proof (§5.3, §1.3)


def invert(data: bytes) -> bytes:
    """Every byte complemented (``b ^ 0xFF``, §1.3)."""
    return bytes(b ^ 0xFF for b in data)


def make_challenge() -> bytes:
    """64 random bytes."""
    out: bytes = core.random_bytes(CHALLENGE_LEN)
    return out


def answer_challenge(instance: Any, their_person_key: bytes, challenge_box: bytes) -> bytes:
    """The prover's answer: decrypt ``challenge_box`` with ``box.before(their person pk, my
    person sk)`` and seal the complement with a fresh nonce (104 bytes).
    ``DecryptionError CYENC-SYMDEC`` if it does not decrypt."""
    plain = instance.decrypt(challenge_box, their_person_key, key="person")
    if len(plain) != CHALLENGE_LEN:
        raise AuthenticationError(
            f"the challenge has {len(plain)} bytes, not {CHALLENGE_LEN}", code="LAMA-AUTH"
        )
    out: bytes = instance.encrypt(invert(plain), their_person_key, key="person")
    return out


def check_answer(
    instance: Any, their_person_key: bytes, challenge: bytes, answer_box: bytes
) -> None:
    """The challenger's check: ``answer_box`` must decrypt to the complement of ``challenge``
    (constant-time compare); ``AuthenticationError LAMA-AUTH`` otherwise."""
    try:
        plain = instance.decrypt(answer_box, their_person_key, key="person")
    except CryptoError:
        raise AuthenticationError(
            "the answer to the person-key challenge does not decrypt", code="LAMA-AUTH"
        ) from None
    if not hmac.compare_digest(plain, invert(challenge)):
        raise AuthenticationError(
            "the answer to the person-key challenge is wrong", code="LAMA-AUTH"
        )


async def _challenge(conn: TransportLike, instance: Any, their_pk: bytes, timeout: float) -> None:
    challenge = make_challenge()
    await send(conn, instance.encrypt(challenge, their_pk, key="person"))
    answer = await _recv_binary(conn, timeout, "answer to the person-key challenge")
    try:
        check_answer(instance, their_pk, challenge, answer)
    except AuthenticationError as e:
        raise await _fail(conn, e, AUTH_FAILED) from None


async def _respond(conn: TransportLike, instance: Any, their_pk: bytes, timeout: float) -> None:
    box = await _recv_binary(conn, timeout, "person-key challenge")
    try:
        answer = answer_challenge(instance, their_pk, box)
    except (CryptoError, AuthenticationError):
        raise await _fail(conn, AuthenticationError(
            "the peer's person-key challenge does not decrypt with its person key",
            code="LAMA-AUTH"), AUTH_FAILED) from None
    await send(conn, answer)


# --------------------------------------------------------------------------------------------
# §5.3 / §5.4


def _hex_key(value: Any) -> bytes | None:
    if not isinstance(value, str) or len(value) != 64:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


def _obj(msg: dict[str, Any], type_name: str) -> dict[str, Any] | None:
    obj = msg.get("obj")
    if not isinstance(obj, dict) or obj.get("$type$") != type_name:
        return None
    return obj


async def _exchange_person(
    conn: TransportLike,
    instance: Any,
    initiated_locally: bool,
    expected_person: str | None,
    store_peer: bool,
    check_known_keys: bool,
    timeout: float,
) -> tuple[str, dict[str, Any], dict[str, Any], str, bytes, bytes, bool, list[str]]:
    store = instance.store
    await send_json(conn, {"command": "person_id_object",
                           "obj": {"$type$": "Person", "email": instance.email}})
    msg = await recv_command(conn, "person_id_object", timeout)
    person_obj = _obj(msg, "Person")
    if person_obj is None or not isinstance(person_obj.get("email"), str):
        raise await _fail(conn, ProtocolError(
            "person_id_object does not carry a Person ID object", code="LAMA-PROTO"))
    person_obj = {"$type$": "Person", "email": person_obj["email"]}
    try:
        person_id: str = core.id_hash(person_obj)
    except LamaError as e:
        raise await _fail(conn, ProtocolError(
            f"the peer's Person ID object is malformed: {e}", code="LAMA-PROTO")) from None

    my_keys = store.get_object(instance.person_keys)
    await send_json(conn, {"command": "keys_object", "obj": {
        "$type$": "Keys", "owner": instance.person_id,
        "publicKey": my_keys["publicKey"], "publicSignKey": my_keys["publicSignKey"]}})
    msg = await recv_command(conn, "keys_object", timeout)
    keys_obj = _obj(msg, "Keys")
    if keys_obj is None:
        raise await _fail(conn, ProtocolError(
            "keys_object does not carry a Keys object", code="LAMA-PROTO"))
    if keys_obj.get("owner") != person_id:
        raise await _fail(conn, AuthenticationError(
            f"the peer's Keys object belongs to {keys_obj.get('owner')!r}, not to its person "
            f"{person_id}", code="LAMA-AUTH-KEYS"))
    their_pk = _hex_key(keys_obj.get("publicKey"))
    their_spk = _hex_key(keys_obj.get("publicSignKey"))
    if their_pk is None or their_spk is None:
        raise await _fail(conn, ProtocolError(
            "the peer's Keys object does not hold 32-byte hex keys", code="LAMA-PROTO"))
    keys_obj = {"$type$": "Keys", "owner": person_id, "publicKey": keys_obj["publicKey"],
                "publicSignKey": keys_obj["publicSignKey"]}
    try:
        keys_hash: str = core.object_hash(keys_obj)
    except LamaError as e:
        raise await _fail(conn, ProtocolError(
            f"the peer's Keys object is malformed: {e}", code="LAMA-PROTO")) from None

    # Challenge phase: the initiator answers first, then challenges (§5.3 rule).
    if initiated_locally:
        await _respond(conn, instance, their_pk, timeout)
        await _challenge(conn, instance, their_pk, timeout)
    else:
        await _challenge(conn, instance, their_pk, timeout)
        await _respond(conn, instance, their_pk, timeout)

    # Post-check 1: the person we expected.
    if expected_person is not None and not hmac.compare_digest(person_id, expected_person):
        raise await _fail(conn, AuthenticationError(
            f"{PERSON_MISMATCH} (expected {expected_person}, got {person_id})",
            code="LAMA-AUTH-PERSON"), PERSON_MISMATCH)
    # Post-check 2: a known person must use a key on record.
    known = False
    stored: list[str] = []
    if store.has(person_id):
        if check_known_keys:
            on_record: list[bytes] = []
            # lama: person Keys I signed (pairing, conn §6.4 step 5) are the record when there
            # are any; an endpoint anyone could have shipped by CHUM with other person Keys
            # then adds no key (docs/connections.md §3.5). Without such Keys, every endpoint's
            # (the reference's rule).
            vouched: list[bytes] = []
            seen: set[str] = set()
            me, my_sign = str(instance.person_id), bytes(instance.person_public_sign_key)
            for _, ep in contacts.endpoints_of_person(store, person_id):
                pk_hash = ep.get("personKeys")
                if not pk_hash or pk_hash in seen:
                    continue
                seen.add(pk_hash)
                try:
                    rec = contacts.load_keys(store, pk_hash)
                except LamaError as e:
                    raise await _fail(conn, AuthenticationError(
                        f"the Keys {pk_hash} of an endpoint of {person_id} cannot be loaded: {e}",
                        code="LAMA-AUTH-KEYS")) from None
                k = _hex_key(rec.get("publicKey"))
                on_record.append(k if k is not None else b"")
                if k is not None and contacts.signed_by(store, pk_hash, me, my_sign) is not None:
                    vouched.append(k)
            if vouched:
                on_record = vouched
            if person_id == instance.person_id:
                on_record.append(instance.person_public_key)  # my own person (Internet of Me)
            if on_record:
                if not any(hmac.compare_digest(k, their_pk) for k in on_record):
                    raise await _fail(conn, AuthenticationError(
                        f"{KEY_MISMATCH}: the person {person_id} proved a key that is not the "
                        "one on record", code="EP-KEYMISSMATCH"), KEY_MISMATCH)
                known = True
    elif store_peer:
        # Post-check 3: a new person - store its Person ID object (keys are not stored here).
        [(h, _, _)] = store.put_microdata([(core.id_microdata(person_obj), person_id)])
        stored.append(h)
    return person_id, person_obj, keys_obj, keys_hash, their_pk, their_spk, known, stored


async def _exchange_instance(
    conn: TransportLike,
    instance: Any,
    person_id: str,
    expected_instance: str | None,
    store_peer: bool,
    timeout: float,
) -> tuple[str, dict[str, Any], list[str]]:
    store = instance.store
    await send_json(conn, {"command": "instance_id_object", "obj": {
        "$type$": "Instance", "name": instance.instance_name, "owner": instance.person_id}})
    msg = await recv_command(conn, "instance_id_object", timeout)
    obj = _obj(msg, "Instance")
    if obj is None or not isinstance(obj.get("name"), str):
        raise await _fail(conn, ProtocolError(
            "instance_id_object does not carry an Instance ID object", code="LAMA-PROTO"))
    if obj.get("owner") != person_id:
        raise await _fail(conn, AuthenticationError(
            f"the peer's Instance belongs to {obj.get('owner')!r}, not to its person {person_id}",
            code="LAMA-AUTH-INSTANCE"))
    inst_obj = {"$type$": "Instance", "name": obj["name"], "owner": person_id}
    try:
        text: str = core.id_microdata(inst_obj)
        instance_id: str = core.id_hash(inst_obj)
    except LamaError as e:
        raise await _fail(conn, ProtocolError(
            f"the peer's Instance ID object is malformed: {e}", code="LAMA-PROTO")) from None
    if expected_instance is not None and not hmac.compare_digest(instance_id, expected_instance):
        raise await _fail(conn, AuthenticationError(
            f"{INSTANCE_MISMATCH} (expected {expected_instance}, got {instance_id})",
            code="LAMA-AUTH-INSTANCE"), INSTANCE_MISMATCH)
    stored: list[str] = []
    if store_peer and not store.has(instance_id):
        [(h, _, _)] = store.put_microdata([(text, instance_id)])
        stored.append(h)
    return instance_id, inst_obj, stored


async def _identify(
    conn: TransportLike,
    instance: Any,
    group: str,
    initiated_locally: bool,
    expected_person: str | None,
    expected_instance: str | None,
    store_peer: bool | None,
    check_known_keys: bool,
    timeout: float,
) -> PeerIdentity:
    contacts.enable_reverse_maps(instance.store)
    do_store = (group != "pairing") if store_peer is None else store_peer
    (person_id, person_obj, keys_obj, keys_hash, pk, spk, known, stored1) = await _exchange_person(
        conn, instance, initiated_locally, expected_person, do_store, check_known_keys, timeout)
    instance_id, inst_obj, stored2 = await _exchange_instance(
        conn, instance, person_id, expected_instance, do_store, timeout)
    return PeerIdentity(
        group=group, initiated_locally=initiated_locally, person_id=person_id,
        person_id_object=person_obj, person_keys=keys_obj, person_keys_hash=keys_hash,
        person_public_key=pk, person_public_sign_key=spk, instance_id=instance_id,
        instance_id_object=inst_obj, known=known, stored=tuple(stored1 + stored2))


async def closing_on_error(conn: TransportLike, coro: Awaitable[T]) -> T:
    """Await ``coro``; if it fails in a way that did not close ``conn`` yet (a ``decide``
    callback or the store raising, cancellation), close it - ``Error: <message>`` - and
    re-raise. (Closing twice is harmless: the first reason stays.)"""
    try:
        return await coro
    except BaseException as e:
        if isinstance(e, LamaError):
            text = str(e)
            text = text.split(": ", 1)[1] if text.startswith(e.code + ":") else text
        else:
            text = str(e) or type(e).__name__
        await _close(conn, "" if isinstance(e, asyncio.CancelledError) else f"Error: {text}")
        raise


def _check_group(group: Any) -> str:
    if not isinstance(group, str) or not group:
        raise ProtocolError(f"a connection group must be a non-empty str, not {group!r}",
                            code="LAMA-PROTO")
    return group


# --------------------------------------------------------------------------------------------
# The two sides


async def initiate(
    conn: TransportLike,
    instance: Any,
    group: str,
    *,
    expected_person: str | None = None,
    expected_instance: str | None = None,
    store_peer: bool | None = None,
    check_known_keys: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> PeerIdentity:
    """The initiator's side of §5.1-5.4 on ``conn`` for the local ``instance``
    (:class:`lama.identity.Instance`): send the group name, wait for ``sync``, exchange and
    prove person ids and keys, exchange instance ids.

    ``expected_person`` / ``expected_instance``: the ids of the endpoint we dialled (§5.3
    post-check 1, §5.4). Errors (the connection is closed with the reference's reason):
    ``ProtocolError`` ``LAMA-REFUSED`` (the acceptor closed instead of ``sync``),
    ``LAMA-PROTO``, ``LAMA-PROTO-TIMEOUT``, ``LAMA-PROTO-CLOSED``; ``AuthenticationError``
    ``LAMA-AUTH``, ``LAMA-AUTH-KEYS``, ``LAMA-AUTH-PERSON``, ``LAMA-AUTH-INSTANCE``,
    ``EP-KEYMISSMATCH``."""
    group = _check_group(group)

    async def run() -> PeerIdentity:
        await send_json(conn, {"command": "connection_group", "connectionGroupName": group})
        await recv_command(conn, "sync", timeout)
        return await _identify(conn, instance, group, True, expected_person, expected_instance,
                               store_peer, check_known_keys, timeout)

    return await closing_on_error(conn, run())


async def accept(
    conn: TransportLike,
    instance: Any,
    decide: DecideFn | None = None,
    *,
    check_known_keys: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> PeerIdentity:
    """The acceptor's side of §5.1-5.4: wait for the group name and ask ``decide(group)``
    (sync or async). It returns an :class:`Accept` (or ``True`` = ``Accept()``) to keep the
    connection, ``False``/``None`` to refuse it; a refused connection is closed with
    ``I do not want to communicate with you. Go Away!`` and ``ProtocolError LAMA-REFUSED`` is
    raised. ``decide=None`` accepts the groups of :data:`GROUPS`. Then ``sync`` and the
    identity steps as in :func:`initiate` (same errors)."""
    return await closing_on_error(conn, _accept(conn, instance, decide, check_known_keys,
                                                 timeout))


async def _accept(conn: TransportLike, instance: Any, decide: DecideFn | None,
                  check_known_keys: bool, timeout: float) -> PeerIdentity:
    msg = await recv_command(conn, "connection_group", timeout)
    group = msg.get("connectionGroupName")
    if not isinstance(group, str) or not group:
        raise await _fail(conn, ProtocolError(
            f"connection_group without a group name: {group!r}", code="LAMA-PROTO"))
    if decide is None:
        decision: Decision = group in GROUPS
    else:
        d = decide(group)
        decision = await d if inspect.isawaitable(d) else d
    if decision is True:
        decision = Accept()
    if not isinstance(decision, Accept):
        await _close(conn, GO_AWAY)
        raise ProtocolError(f"refused the connection for the group {group!r}",
                            code="LAMA-REFUSED")
    await send_json(conn, {"command": "sync"})
    return await _identify(conn, instance, group, False, decision.expected_person,
                           decision.expected_instance, decision.store_peer, check_known_keys,
                           timeout)


async def synchronise(conn: TransportLike, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """§5.5: send ``synchronisation`` and wait for any one message (its content is not
    checked, as in the reference). Register the CHUM services before calling this."""
    await send(conn, SYNCHRONISATION)
    await _recv(conn, timeout, "the peer's 'synchronisation'")
