"""One hash rule, checked in one place (the core's ``check_hash``) by every layer that takes a
hash from a caller: exactly 64 lowercase hex characters, nothing else — a ``^…$`` regexp lets
a trailing newline through, which once wrote key files whose names ended in a newline."""

from __future__ import annotations

from pathlib import Path

import pytest

from lama._core import core
from lama.errors import MicrodataError
from lama.identity import certificates
from lama.identity.keychain import Keychain, SecretKeys
from lama.objects import versions

GOOD = "a" * 64
BAD = [GOOD + "\n", "\n" + GOOD, GOOD.upper(), "a" * 63, "a" * 65, " " + GOOD[1:], GOOD[:-1] + "g",
       "a" * 63 + "\u0661", b"a" * 64, None, 64]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_core_check_hash_refuses(bad: object) -> None:
    with pytest.raises(MicrodataError) as e:
        core.check_hash(bad, "the thing")
    assert e.value.code == "LAMA-BADHASH"
    assert "the thing" in str(e.value)
    assert isinstance(e.value, ValueError)


def test_core_check_hash_accepts() -> None:
    assert core.check_hash(GOOD) == GOOD
    assert core.check_hash("0123456789abcdef" * 4, "x") == "0123456789abcdef" * 4


def test_keychain_refuses_a_hash_with_a_newline(tmp_path: Path) -> None:
    kc = Keychain(tmp_path / "private")
    kc.create("secret")
    with pytest.raises(MicrodataError) as e:
        kc.store_keys(GOOD + "\n", SecretKeys.generate())
    assert e.value.code == "LAMA-BADHASH"
    assert sorted(p.name for p in (tmp_path / "private").iterdir()) == ["keychain_masterkey", "keychain_salt"]
    for call in (kc.has_keys, kc.load_keys):
        with pytest.raises(MicrodataError) as e:
            call(GOOD + "\n")
        assert e.value.code == "LAMA-BADHASH"


def test_versions_and_certificates_use_the_same_rule(tmp_path: Path) -> None:
    with core.Store(str(tmp_path / "store")) as store:
        for call in (lambda: versions.current(store, GOOD + "\n"),
                     lambda: versions.load_node(store, GOOD.upper()),
                     lambda: versions.history(store, GOOD + "\n"),
                     lambda: certificates.affirm(store, GOOD + "\n", GOOD, SecretKeys.generate()),
                     lambda: certificates.affirm(store, GOOD, GOOD + "\n", SecretKeys.generate())):
            with pytest.raises(MicrodataError) as e:
                call()
            assert e.value.code == "LAMA-BADHASH"
        assert store.count() == 0
