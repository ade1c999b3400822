"""Crypto throughput (issue 3): Ed25519 sign and verify, box (one.core encryptAndEmbedNonce:
X25519 key agreement + XSalsa20-Poly1305 with an embedded nonce) and secretbox (seal with a
given key and nonce), of 1 KiB and of 64 MiB messages, for both cores in the same run.

1 KiB groups are recorded in operations/s, 64 MiB groups in MiB/s (few rounds: each round
moves 64 MiB). Keys are fixed so both cores do identical work (and produce identical bytes,
which is asserted)."""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import Any, Callable

import pytest

from conftest import cores, record

KIB = 1024
MIB = 1024 * 1024
SIZES = {"1 KiB": KIB, "64 MiB": 64 * MIB}
SEED_A = hashlib.sha256(b"lama-bench/sign").digest()
BOX_A = hashlib.sha256(b"lama-bench/box-a").digest()
BOX_B = hashlib.sha256(b"lama-bench/box-b").digest()
KEY = hashlib.sha256(b"lama-bench/secretbox").digest()
NONCE = bytes(range(24))

_MESSAGES: dict[str, bytes] = {}


def message(label: str) -> bytes:
    if label not in _MESSAGES:
        block = hashlib.sha256(label.encode()).digest() * (KIB // 32)
        _MESSAGES[label] = block * (SIZES[label] // KIB)
    return _MESSAGES[label]


def rounds_for(label: str) -> dict[str, int]:
    return {"rounds": 3, "iterations": 1} if SIZES[label] >= MIB else {"rounds": 50, "iterations": 20}


def _run(benchmark: Any, core: ModuleType, group: str, label: str, fn: Callable[[], Any]) -> Any:
    result = benchmark.pedantic(fn, **rounds_for(label))
    seconds = float(benchmark.stats.stats.median)
    if SIZES[label] >= MIB:
        record(f"{group} {label} (MiB)", core.CORE_NAME, SIZES[label] // MIB, seconds)
    else:
        iterations = rounds_for(label)["iterations"]
        record(f"{group} {label} (ops)", core.CORE_NAME, iterations, seconds * iterations)
    return result


def _reference(name: str, *args: Any) -> Any:
    """The pure core's result, to check the core under test gives identical bytes."""
    return getattr(cores()["pure"], name)(*args)


@pytest.mark.parametrize("label", list(SIZES))
def test_sign(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    _, secret = core.sign_keypair_from_seed(SEED_A)
    sig = _run(benchmark, core, "sign", label, lambda: core.sign_detached(msg, secret))
    assert sig == _reference("sign_detached", msg, secret)


@pytest.mark.parametrize("label", list(SIZES))
def test_verify(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    public, secret = core.sign_keypair_from_seed(SEED_A)
    sig = core.sign_detached(msg, secret)
    _run(benchmark, core, "verify", label, lambda: core.sign_verify_detached(msg, sig, public))


@pytest.mark.parametrize("label", list(SIZES))
def test_box(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    pub_b = core.box_public_from_secret(BOX_B)
    boxed = _run(benchmark, core, "box seal (embedded nonce)", label,
                 lambda: core.box_seal_embedded(msg, BOX_A, pub_b, NONCE))
    assert len(boxed) == 24 + 16 + len(msg)
    assert boxed == _reference("box_seal_embedded", msg, BOX_A, pub_b, NONCE)
    assert core.box_open_embedded(boxed, BOX_B, core.box_public_from_secret(BOX_A)) == msg


@pytest.mark.parametrize("label", list(SIZES))
def test_box_open(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    boxed = core.box_seal_embedded(msg, BOX_A, core.box_public_from_secret(BOX_B), NONCE)
    pub_a = core.box_public_from_secret(BOX_A)
    opened = _run(benchmark, core, "box open (embedded nonce)", label,
                  lambda: core.box_open_embedded(boxed, BOX_B, pub_a))
    assert opened == msg


@pytest.mark.parametrize("label", list(SIZES))
def test_secretbox(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    sealed = _run(benchmark, core, "secretbox seal", label,
                  lambda: core.secretbox_seal(msg, NONCE, KEY))
    assert sealed == _reference("secretbox_seal", msg, NONCE, KEY)


@pytest.mark.parametrize("label", list(SIZES))
def test_secretbox_open(benchmark: Any, core: ModuleType, label: str) -> None:
    msg = message(label)
    sealed = core.secretbox_seal(msg, NONCE, KEY)
    opened = _run(benchmark, core, "secretbox open", label,
                  lambda: core.secretbox_open(sealed, NONCE, KEY))
    assert opened == msg
