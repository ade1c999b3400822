"""Signatures, licenses and certificates (app-layer.md §1.7, connections.md §1.1 and §6.4).

Objects (all unversioned, built-in recipes):

* ``License{name, description}`` - one fixed object per certificate type;
* ``Signature{issuer: Person ID, data: any object, signature: hex}``;
* the certificates, each ending with ``license`` -> License: ``AffirmationCertificate{data}``,
  ``TrustKeysCertificate{profile}``, ``RightToDeclareTrustedKeysForEverybodyCertificate
  {beneficiary}``, ``RightToDeclareTrustedKeysForSelfCertificate{beneficiary}``,
  ``RelationCertificate{app, relation, person1, person2}``,
  ``AccessVersionedObjectCertificate{person, data}``,
  ``AccessUnversionedObjectCertificate{person, data}``.

**Signing rule** (app-layer.md §1.7, connections.md §6.4 step 5): the signed message is the
UTF-8 encoding of the 64-character lowercase hex string of the data hash; Ed25519 detached with
the issuer person's sign key; stored as lowercase hex. A Signature carries no public key: the
verifier tries every key of the issuer, found through the reverse map ``issuer -> Keys``
(objects.md §5.3, §7.2).

``certify`` stores the License of the type, the certificate ``{...fields, license}`` and a
Signature over the certificate hash, in one store transaction. ``verify_signature`` /
``verify_certificate`` check a stored Signature against the issuer's Keys objects.

This module checks signatures against *all* Keys of the issuer in the store; deciding which of
those keys are *trusted* (TrustedKeysManager, app-layer.md §1.7 "Trust evaluation") is a layer
above and not done here.

Licenses: the Affirmation License is the reference's byte for byte (recorded session, hash
``9a8405ef…467a``), so affirmations made here deduplicate with the reference's. The
descriptions of the other License types are not recorded in the spec (app-layer.md §0.4 "Open
item"); lama uses its own sentences, so those certificates get lama-specific hashes. Trust
evaluation looks only at the certificate type, never at the License (app-layer.md §0.4).
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from lama._core import Store, core
from lama.errors import CryptoError, InvalidArgumentError, LamaError, MicrodataError, SignatureError
from lama.identity.keychain import SecretKeys

__all__ = [
    "CERTIFICATE_TYPES",
    "LICENSES",
    "CertifyResult",
    "SignatureResult",
    "VerifiedCertificate",
    "VerifiedSignature",
    "affirm",
    "certificates_for",
    "certify",
    "create_signature",
    "enable_reverse_maps",
    "issuer_sign_keys",
    "license_object",
    "sign_hash",
    "signatures_for",
    "trust_keys",
    "verify_certificate",
    "verify_signature",
    "verify_signature_object",
]

_SIG_RE = re.compile(r"^[0-9a-f]{128}$")

# certificate type -> (License name, License description)
LICENSES: dict[str, tuple[str, str]] = {
    # recorded from the reference (app-layer.md §0.4)
    "AffirmationCertificate": (
        "Affirmation",
        "[signature.issuer] affirms that content of [data] is correct.",
    ),
    # names from app-layer.md §0.4; descriptions are lama's own (not recorded in the spec)
    "TrustKeysCertificate": (
        "TrustKeys",
        "lama: [signature.issuer] certifies that the keys in [profile] belong to the person "
        "of that profile.",
    ),
    "RightToDeclareTrustedKeysForEverybodyCertificate": (
        "RightToDeclareTrustedKeysForEverybodyLicense",
        "lama: [signature.issuer] grants [beneficiary] the right to declare the keys of "
        "anybody trusted.",
    ),
    "RightToDeclareTrustedKeysForSelfCertificate": (
        "RightToDeclareTrustedKeysForSelf",
        "lama: [signature.issuer] grants [beneficiary] the right to declare its own keys "
        "trusted.",
    ),
    "RelationCertificate": (
        "Relation",
        "lama: [signature.issuer] certifies that [person1] has the relation [relation] to "
        "[person2] in the context of [app].",
    ),
    "AccessVersionedObjectCertificate": (
        "AccessVersionedObject",
        "lama: [signature.issuer] permits sharing all versions of [data] with [person].",
    ),
    "AccessUnversionedObjectCertificate": (
        "AccessUnversionedObject",
        "lama: [signature.issuer] permits sharing [data] with [person].",
    ),
}

CERTIFICATE_TYPES = frozenset(LICENSES)

# Reverse maps a receiver needs to find signatures and certificates of an object
# (app-layer.md §1.7: "Reverse maps on Signature issuer and data").
_REVERSE_MAPS: dict[str, list[str]] = {
    "Signature": ["issuer", "data"],
    "AffirmationCertificate": ["data"],
    "TrustKeysCertificate": ["profile"],
    "RightToDeclareTrustedKeysForEverybodyCertificate": ["beneficiary"],
    "RightToDeclareTrustedKeysForSelfCertificate": ["beneficiary"],
    "AccessVersionedObjectCertificate": ["data"],
    "AccessUnversionedObjectCertificate": ["data"],
    "RelationCertificate": ["person1", "person2"],
}


@dataclass(frozen=True)
class SignatureResult:
    """A stored Signature: its ``hash``, the object, and the write ``status``."""

    hash: str
    object: dict[str, Any]
    status: str


@dataclass(frozen=True)
class CertifyResult:
    """What :func:`certify` stored: License, certificate and Signature hashes."""

    license: str
    certificate: str
    signature: str
    certificate_object: dict[str, Any]
    signature_object: dict[str, Any]


@dataclass(frozen=True)
class VerifiedSignature:
    """A Signature that verified: its ``issuer``, ``data`` hash and the ``key`` that matched."""

    hash: str | None
    issuer: str
    data: str
    key: bytes


@dataclass(frozen=True)
class VerifiedCertificate:
    """A certificate whose Signature verified."""

    signature: VerifiedSignature
    type: str
    certificate_hash: str
    certificate: dict[str, Any]
    license_hash: str
    license: dict[str, Any] | None

    @property
    def issuer(self) -> str:
        return self.signature.issuer


def enable_reverse_maps(store: Store) -> None:
    """Enable the reverse maps for Signature (issuer, data) and the certificate types in
    ``store`` (persisted; applies to objects written from now on)."""
    for type_name, props in _REVERSE_MAPS.items():
        store.enable_reverse_maps(type_name, props)


def license_object(cert_type: str) -> dict[str, Any]:
    """The License object of a certificate type (``LamaError LAMA-CERTTYPE`` if unknown)."""
    try:
        name, description = LICENSES[cert_type]
    except KeyError:
        raise LamaError(
            f"LAMA-CERTTYPE: {cert_type!r} is not a certificate type "
            f"({', '.join(sorted(CERTIFICATE_TYPES))})"
        ) from None
    return {"$type$": "License", "name": name, "description": description}


def _sign_secret(keys: SecretKeys | bytes) -> bytes:
    if isinstance(keys, SecretKeys):
        return keys.sign_secret
    if isinstance(keys, bytes):
        return keys
    raise TypeError(f"the sign key must be SecretKeys or bytes, not {type(keys).__name__}")


def sign_hash(data_hash: str, keys: SecretKeys | bytes) -> str:
    """The hex signature of a hash: Ed25519 detached over the UTF-8 bytes of the hex string."""
    core.check_hash(data_hash, "the signed hash")
    sig: bytes = core.sign_detached(data_hash.encode("utf-8"), _sign_secret(keys))
    return sig.hex()


def _signature_object(issuer: str, data_hash: str, keys: SecretKeys | bytes) -> dict[str, Any]:
    core.check_hash(issuer, "the issuer")
    return {
        "$type$": "Signature",
        "issuer": issuer,
        "data": data_hash,
        "signature": sign_hash(data_hash, keys),
    }


def create_signature(
    store: Store, issuer: str, data_hash: str, keys: SecretKeys | bytes
) -> SignatureResult:
    """Sign ``data_hash`` as ``issuer`` (a Person ID hash) and store the Signature."""
    obj = _signature_object(issuer, data_hash, keys)
    [(h, status, _)] = store.put_objects([obj])
    return SignatureResult(h, obj, status)


def certify(
    store: Store,
    cert_type: str,
    fields: dict[str, Any],
    issuer: str,
    keys: SecretKeys | bytes,
) -> CertifyResult:
    """app-layer.md §1.7 ``certify``: store the License of ``cert_type``, the certificate
    ``{$type$: cert_type, **fields, license}`` and the issuer's Signature over the certificate
    hash, in one transaction."""
    lic = license_object(cert_type)
    if "license" in fields or "$type$" in fields:
        raise InvalidArgumentError("LAMA-ARG: certificate fields must not contain 'license' or '$type$'")
    lic_hash: str = core.object_hash(lic)
    cert = {"$type$": cert_type, **fields, "license": lic_hash}
    cert_hash: str = core.object_hash(cert)  # validates the fields against the recipe
    sig = _signature_object(issuer, cert_hash, keys)
    results = store.put_objects([lic, cert, sig])
    return CertifyResult(
        license=results[0][0],
        certificate=results[1][0],
        signature=results[2][0],
        certificate_object=cert,
        signature_object=sig,
    )


def affirm(store: Store, data_hash: str, issuer: str, keys: SecretKeys | bytes) -> CertifyResult:
    """``certify(AffirmationCertificate, {data: data_hash})`` (a signed chat post's metadata)."""
    return certify(store, "AffirmationCertificate", {"data": core.check_hash(data_hash, "data")},
                   issuer, keys)


def trust_keys(
    store: Store, profile_hash: str, issuer: str, keys: SecretKeys | bytes
) -> CertifyResult:
    """``certify(TrustKeysCertificate, {profile: profile_hash})`` (pairing, connections.md
    §6.4 step 8)."""
    return certify(store, "TrustKeysCertificate",
                   {"profile": core.check_hash(profile_hash, "profile")}, issuer, keys)


# --------------------------------------------------------------------------------------------
# Verification


def issuer_sign_keys(store: Store, issuer: str) -> list[bytes]:
    """The public sign keys of every Keys object of ``issuer`` in the store (reverse map
    ``issuer -> Keys``), in a stable order; malformed Keys objects are skipped."""
    out: list[bytes] = []
    for h in sorted(store.referencing(core.check_hash(issuer, "the issuer"), "Keys")):
        obj = store.get_object(h)
        if obj.get("$type$") != "Keys" or obj.get("owner") != issuer:
            continue
        try:
            key = bytes.fromhex(obj["publicSignKey"])
        except (KeyError, ValueError):
            continue
        if len(key) == 32 and key not in out:
            out.append(key)
    return out


def verify_signature_object(
    store: Store, sig: dict[str, Any], keys: list[bytes] | None = None, sig_hash: str | None = None
) -> VerifiedSignature:
    """Verify a Signature object against ``keys`` (default: all sign keys of its issuer in the
    store). ``SignatureError LAMA-SIGNATURE`` if no key verifies it or the issuer has no
    keys; ``MicrodataError`` if it is not a well-formed Signature."""
    if not isinstance(sig, dict) or sig.get("$type$") != "Signature":
        raise MicrodataError(f"LAMA-NOTSIGNATURE: {sig_hash or 'the object'} is not a Signature")
    issuer = core.check_hash(sig.get("issuer"), "Signature.issuer")
    data = core.check_hash(sig.get("data"), "Signature.data")
    text = sig.get("signature")
    if not isinstance(text, str) or not _SIG_RE.match(text.lower()):
        raise SignatureError(
            f"LAMA-SIGNATURE: the signature of {sig_hash or 'the Signature'} is not 64 bytes of hex"
        )
    signature = bytes.fromhex(text)
    candidates = issuer_sign_keys(store, issuer) if keys is None else list(keys)
    if not candidates:
        raise SignatureError(
            f"LAMA-SIGNATURE: no Keys object of the issuer {issuer} is known; cannot verify "
            f"{sig_hash or 'the Signature'}"
        )
    message = data.encode("utf-8")
    for key in candidates:
        try:
            core.sign_verify_detached(message, signature, key)
        except CryptoError:
            continue
        return VerifiedSignature(sig_hash, issuer, data, key)
    raise SignatureError(
        f"LAMA-SIGNATURE: {sig_hash or 'the Signature'} over {data} does not verify with any "
        f"of the {len(candidates)} key(s) of {issuer}"
    )


def verify_signature(
    store: Store, sig_hash: str, keys: list[bytes] | None = None
) -> VerifiedSignature:
    """Verify the stored Signature ``sig_hash`` (see :func:`verify_signature_object`)."""
    core.check_hash(sig_hash, "the Signature hash")
    return verify_signature_object(store, store.get_object(sig_hash), keys, sig_hash)


def verify_certificate(
    store: Store,
    sig_hash: str,
    cert_type: str | None = None,
    keys: list[bytes] | None = None,
) -> VerifiedCertificate:
    """Verify the stored Signature ``sig_hash`` and the certificate it signs.

    The signature must verify with a key of its issuer; its ``data`` must be a stored
    certificate (of ``cert_type`` if given) whose ``license`` is the License of that type (by
    name) when the License is in the store. ``LamaError LAMA-NOTCERTIFICATE`` /
    ``LAMA-LICENSE`` otherwise; ``NotFoundError`` if the certificate is missing."""
    verified = verify_signature(store, sig_hash, keys)
    cert = store.get_object(verified.data)
    actual = cert.get("$type$")
    if actual not in CERTIFICATE_TYPES:
        raise LamaError(
            f"LAMA-NOTCERTIFICATE: {sig_hash} signs {verified.data}, a {actual}, not a certificate"
        )
    if cert_type is not None and actual != cert_type:
        raise LamaError(
            f"LAMA-NOTCERTIFICATE: {sig_hash} signs a {actual}, not a {cert_type}"
        )
    lic_hash = core.check_hash(cert.get("license"), "certificate license")
    lic = store.get_object(lic_hash) if store.has(lic_hash) else None
    if lic is not None:
        expected_name = LICENSES[actual][0]
        if lic.get("$type$") != "License" or not hmac.compare_digest(
            str(lic.get("name", "")).encode(), expected_name.encode()
        ):
            raise LamaError(
                f"LAMA-LICENSE: the license {lic_hash} of {verified.data} is not the "
                f"{expected_name} License"
            )
    return VerifiedCertificate(verified, actual, verified.data, cert, lic_hash, lic)


def signatures_for(store: Store, data_hash: str) -> list[str]:
    """Hashes of the stored Signatures over ``data_hash`` (reverse map, needs
    :func:`enable_reverse_maps` before they were written)."""
    return sorted(store.referencing(core.check_hash(data_hash, "data"), "Signature"))


def certificates_for(store: Store, target: str, cert_type: str) -> list[str]:
    """Hashes of the stored ``cert_type`` certificates that reference ``target`` (e.g. the
    AffirmationCertificates of a CreationTime, the TrustKeysCertificates of a Profile)."""
    license_object(cert_type)  # validates the type
    return sorted(store.referencing(core.check_hash(target, "target"), cert_type))
