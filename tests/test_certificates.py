"""Signatures, Licenses and certificates (app-layer.md §1.7, connections.md §6.4 step 5).

The reference vector: peer A's signed chat post from the recorded session
(/work/shared/vectors/transcript-pairing-and-chat.json, run 20261126T091824Z; that run's
long-term keys differ from crypto-and-frames.json, so its Keys object is quoted here too):
the Affirmation License, the AffirmationCertificate over the post's CreationTime and peer A's
Signature, which must verify against A's Keys object found through the reverse map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import peer_keys

from lama.identity import certificates as certs
from lama._core import core
from lama.errors import LamaError, MicrodataError, NotFoundError, SignatureError
from lama.identity.instance import Instance

VECTORS = json.loads(
    (Path(__file__).parent / "vectors" / "crypto-and-frames.json").read_text(encoding="utf-8")
)
MICRODATA = {
    v["name"]: v
    for v in json.loads(
        (Path(__file__).parent / "vectors" / "microdata.json").read_text(encoding="utf-8")
    )
}
PEER_A = VECTORS["peers"]["A"]
PEER_B = VECTORS["peers"]["B"]

# --- recorded session (transcript-pairing-and-chat.json) --------------------------------------
REC_ISSUER = "496da8476fd83adee9fc87c44c51128de71b8074ab3133cd11bb01a9e36c9ca8"
REC_KEYS = {
    "$type$": "Keys",
    "owner": REC_ISSUER,
    "publicKey": "d80d0badddc310bff446bfe2039a49dd528ca4afb8f2d16ff2ad44ac0b767d29",
    "publicSignKey": "cb9b522fcecc2a7251e1fe2b626403650251edeb1b8d93e6cbbb1fc64c22de02",
}
REC_LICENSE = (
    '<div itemscope itemtype="//refin.io/License"><span itemprop="name">Affirmation</span>'
    '<span itemprop="description">[signature.issuer] affirms that content of [data] is correct.'
    "</span></div>"
)
REC_LICENSE_HASH = "9a8405ef0c0fb9877c9a6bd25af5e3861549c5ec2a2bde041edeb9ad3559467a"
REC_CREATION_TIME = "84372ce5504a791dfc9b82b4a487d2795d051721beaeae57b38256099ece494f"
REC_CERT = (
    '<div itemscope itemtype="//refin.io/AffirmationCertificate">'
    f'<a itemprop="data" data-type="obj">{REC_CREATION_TIME}</a>'
    f'<a itemprop="license" data-type="obj">{REC_LICENSE_HASH}</a></div>'
)
REC_CERT_HASH = "90f46b697a731ff6082fc1f74c1c6820759a044adf80beeebee79761c81061b6"
REC_SIGNATURE_HEX = (
    "e22a19b661528c5be4edc920436a806b66485013070662098a86d24c10d8efa3"
    "ba50d7c946ef743b0486ff90679772c7ee1bd3b24e5f5909dcdf0fe1fe912809"
)
REC_SIGNATURE = (
    '<div itemscope itemtype="//refin.io/Signature">'
    f'<a itemprop="issuer" data-type="id">{REC_ISSUER}</a>'
    f'<a itemprop="data" data-type="obj">{REC_CERT_HASH}</a>'
    f'<span itemprop="signature">{REC_SIGNATURE_HEX}</span></div>'
)
REC_SIGNATURE_HASH = "f846aafab7ed485a5d3741ea7c05411402c2ce39a0ef928d3a31d0c57e9b49de"
SECRET = "s3cret"


keys = peer_keys


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = core.Store(str(tmp_path / "store"))
    certs.enable_reverse_maps(s)
    yield s
    s.close()


@pytest.fixture
def alice(tmp_path: Path) -> Any:
    inst = Instance.create(
        tmp_path / "a", email="alice@peer-a.example", instance_name="peer-A", secret=SECRET,
        person_keys=keys(PEER_A, "person"), instance_keys=keys(PEER_A, "instance"),
    )
    yield inst
    inst.close()


@pytest.fixture
def bob(tmp_path: Path) -> Any:
    inst = Instance.create(
        tmp_path / "b", email="bob@peer-b.example", instance_name="peer-B", secret=SECRET,
        person_keys=keys(PEER_B, "person"), instance_keys=keys(PEER_B, "instance"),
    )
    yield inst
    inst.close()


# --- the recorded reference signature -----------------------------------------------------------


def test_reference_affirmation_license() -> None:
    lic = certs.license_object("AffirmationCertificate")
    assert core.serialize(lic) == REC_LICENSE
    assert core.object_hash(lic) == REC_LICENSE_HASH


def test_reference_signature_verifies(store: Any) -> None:
    store.put_objects([REC_KEYS])
    store.put_microdata([(REC_LICENSE, REC_LICENSE_HASH), (REC_CERT, REC_CERT_HASH),
                         (REC_SIGNATURE, REC_SIGNATURE_HASH)])
    assert certs.issuer_sign_keys(store, REC_ISSUER) == [bytes.fromhex(REC_KEYS["publicSignKey"])]
    v = certs.verify_signature(store, REC_SIGNATURE_HASH)
    assert (v.issuer, v.data, v.key.hex()) == (REC_ISSUER, REC_CERT_HASH, REC_KEYS["publicSignKey"])
    c = certs.verify_certificate(store, REC_SIGNATURE_HASH, "AffirmationCertificate")
    assert c.type == "AffirmationCertificate" and c.issuer == REC_ISSUER
    assert c.certificate["data"] == REC_CREATION_TIME and c.license_hash == REC_LICENSE_HASH
    # found through the reverse maps
    assert certs.signatures_for(store, REC_CERT_HASH) == [REC_SIGNATURE_HASH]
    assert certs.certificates_for(store, REC_CREATION_TIME, "AffirmationCertificate") == [REC_CERT_HASH]


def test_reference_signature_needs_the_right_key(store: Any) -> None:
    store.put_microdata([(REC_CERT, REC_CERT_HASH), (REC_SIGNATURE, REC_SIGNATURE_HASH)])
    with pytest.raises(SignatureError) as e:  # no Keys of the issuer known
        certs.verify_signature(store, REC_SIGNATURE_HASH)
    assert e.value.code == "LAMA-SIGNATURE"
    # a Keys object of the same person with another sign key (crypto-and-frames run): no match
    other = keys(PEER_A, "person").keys_object(REC_ISSUER)
    store.put_objects([other])
    with pytest.raises(SignatureError):
        certs.verify_signature(store, REC_SIGNATURE_HASH)
    store.put_objects([REC_KEYS])  # with the right one among several it verifies
    assert certs.verify_signature(store, REC_SIGNATURE_HASH).key.hex() == REC_KEYS["publicSignKey"]


def test_reference_signature_tampered(store: Any) -> None:
    store.put_objects([REC_KEYS])
    flipped = REC_SIGNATURE_HEX[:-1] + ("0" if REC_SIGNATURE_HEX[-1] != "0" else "1")
    bad = {"$type$": "Signature", "issuer": REC_ISSUER, "data": REC_CERT_HASH, "signature": flipped}
    [(h, _, _)] = store.put_objects([bad])
    with pytest.raises(SignatureError):
        certs.verify_signature(store, h)
    other_data = {"$type$": "Signature", "issuer": REC_ISSUER, "data": REC_CREATION_TIME,
                  "signature": REC_SIGNATURE_HEX}
    with pytest.raises(SignatureError):
        certs.verify_signature_object(store, other_data)
    short = dict(other_data, signature="ab" * 10)
    with pytest.raises(SignatureError):
        certs.verify_signature_object(store, short)


# --- shapes ------------------------------------------------------------------------------------


def test_object_shapes_match_the_vectors() -> None:
    sig_v = MICRODATA["Signature/basic"]
    cert_v = MICRODATA["AffirmationCertificate/basic"]
    sk = keys(PEER_A, "person")
    obj = certs._signature_object(sig_v["object"]["issuer"], sig_v["object"]["data"], sk)
    assert list(obj) == list(sig_v["object"])  # $type$, issuer, data, signature
    same_shape = dict(obj, signature=sig_v["object"]["signature"])
    assert core.serialize(same_shape) == sig_v["microdata"]
    assert core.object_hash(same_shape) == sig_v["hash"]
    cert = {"$type$": "AffirmationCertificate", "data": cert_v["object"]["data"],
            "license": cert_v["object"]["license"]}
    assert core.serialize(cert) == cert_v["microdata"]


def test_signing_rule_is_utf8_of_the_hex_hash() -> None:
    sk = keys(PEER_A, "person")
    sig = certs.sign_hash(REC_CERT_HASH, sk)
    assert sig == core.sign_detached(REC_CERT_HASH.encode("ascii"), sk.sign_secret).hex()
    assert len(sig) == 128 and sig == sig.lower()
    core.sign_verify_detached(REC_CERT_HASH.encode(), bytes.fromhex(sig), sk.public_sign_key)
    with pytest.raises(SignatureError):  # not over the raw 32 bytes
        core.sign_verify_detached(bytes.fromhex(REC_CERT_HASH), bytes.fromhex(sig), sk.public_sign_key)
    with pytest.raises(MicrodataError):
        certs.sign_hash(REC_CERT_HASH.upper(), sk)


# --- creating and verifying with instances -----------------------------------------------------


def test_affirm_and_verify(alice: Any) -> None:
    r = alice.affirm(REC_CREATION_TIME)
    # same inputs as the recorded post -> the same License and certificate as the reference
    assert r.license == REC_LICENSE_HASH and r.certificate == REC_CERT_HASH
    assert r.signature_object["signature"] == certs.sign_hash(REC_CERT_HASH, keys(PEER_A, "person"))
    assert r.signature_object["issuer"] == alice.person_id
    c = certs.verify_certificate(alice.store, r.signature, "AffirmationCertificate")
    assert c.signature.key == alice.person_public_sign_key
    assert certs.signatures_for(alice.store, r.certificate) == [r.signature]
    # idempotent: storing again gives the same hashes (deterministic signatures)
    again = alice.affirm(REC_CREATION_TIME)
    assert (again.license, again.certificate, again.signature) == (r.license, r.certificate, r.signature)


def test_trust_keys_certificate_verified_by_the_peer(alice: Any, bob: Any) -> None:
    # Alice certifies a profile of Bob (connections.md §6.4 steps 7-8)
    sign_key = alice.store.put_objects([{"$type$": "SignKey", "key": bob.person_public_sign_key.hex()}])[0][0]
    profile = {"$type$": "Profile", "profileId": "default", "personId": bob.person_id,
               "owner": bob.person_id, "communicationEndpoint": [], "personDescription": [sign_key]}
    [(profile_hash, _, _)] = alice.store.put_objects([profile])
    r = alice.trust_keys(profile_hash)
    c = certs.verify_certificate(alice.store, r.signature, "TrustKeysCertificate")
    assert c.certificate["profile"] == profile_hash and c.license["name"] == "TrustKeys"
    assert certs.certificates_for(alice.store, profile_hash, "TrustKeysCertificate") == [r.certificate]
    with pytest.raises(LamaError) as e:
        certs.verify_certificate(alice.store, r.signature, "AffirmationCertificate")
    assert e.value.code == "LAMA-NOTCERTIFICATE"

    # Bob receives Alice's Keys and the certificate chain (verbatim microdata) and verifies it
    bob.store.put_microdata([(alice.store.get(h), h) for h in
                             (alice.person_keys, r.license, r.certificate, r.signature)])
    c2 = certs.verify_certificate(bob.store, r.signature, "TrustKeysCertificate")
    assert c2.issuer == alice.person_id and c2.signature.key == alice.person_public_sign_key
    # Bob's own signature claiming to be Alice's does not verify
    forged = certs.create_signature(bob.store, alice.person_id, r.certificate, bob.secret_keys())
    with pytest.raises(SignatureError):
        certs.verify_signature(bob.store, forged.hash)


def test_signature_over_keys_object_pairing_step_5(alice: Any, bob: Any) -> None:
    """connections.md §6.4 step 5: a Signature{issuer: me, data: <their Keys hash>}."""
    bob_keys = bob.store.get_object(bob.person_keys)
    [(keys_hash, _, _)] = alice.store.put_objects([bob_keys])
    s = alice.sign_hash(keys_hash)
    assert s.object["signature"] == alice.sign(keys_hash).hex()
    v = certs.verify_signature(alice.store, s.hash)
    assert v.data == keys_hash and v.issuer == alice.person_id
    with pytest.raises(LamaError) as e:
        certs.verify_certificate(alice.store, s.hash)
    assert e.value.code == "LAMA-NOTCERTIFICATE"
    # only the issuer's keys count: verifying with Bob's keys fails
    with pytest.raises(SignatureError):
        certs.verify_signature(alice.store, s.hash, keys=[bob.person_public_sign_key])


def test_certificate_with_a_foreign_license_is_rejected(alice: Any) -> None:
    lic = {"$type$": "License", "name": "Other", "description": "something else"}
    [(lic_hash, _, _)] = alice.store.put_objects([lic])
    cert = {"$type$": "AffirmationCertificate", "data": REC_CREATION_TIME, "license": lic_hash}
    [(cert_hash, _, _)] = alice.store.put_objects([cert])
    s = alice.sign_hash(cert_hash)
    with pytest.raises(LamaError) as e:
        certs.verify_certificate(alice.store, s.hash)
    assert e.value.code == "LAMA-LICENSE"


def test_other_certificate_types_and_errors(alice: Any, bob: Any) -> None:
    r = alice.certify("RightToDeclareTrustedKeysForEverybodyCertificate", beneficiary=alice.person_id)
    c = certs.verify_certificate(alice.store, r.signature)
    assert c.type == "RightToDeclareTrustedKeysForEverybodyCertificate"
    assert c.license["name"] == "RightToDeclareTrustedKeysForEverybodyLicense"
    r2 = alice.certify("RelationCertificate", app="lama", relation="friend",
                       person1=alice.person_id, person2=bob.person_id)
    assert certs.verify_certificate(alice.store, r2.signature).certificate["relation"] == "friend"
    with pytest.raises(LamaError) as e:
        alice.certify("NoSuchCertificate", data=REC_CREATION_TIME)
    assert e.value.code == "LAMA-CERTTYPE"
    with pytest.raises(LamaError):
        alice.certify("AffirmationCertificate", data=REC_CREATION_TIME, license=REC_LICENSE_HASH)
    with pytest.raises(MicrodataError):  # a required field missing
        alice.certify("AffirmationCertificate")
    with pytest.raises(NotFoundError):
        certs.verify_signature(alice.store, "0" * 64)
    with pytest.raises(MicrodataError):
        certs.verify_signature(alice.store, "not a hash")
    with pytest.raises(MicrodataError):  # a stored object that is no Signature
        certs.verify_signature(alice.store, alice.person_keys)
