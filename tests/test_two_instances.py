"""A sync server hosts many instances in one process: per-store state must not leak between
them, and nothing per-ID may grow without bound."""

from __future__ import annotations

import threading
from pathlib import Path

from lama._core import core
from lama.identity.instance import Instance
from lama.objects import versions

SECRET = "two instances, one process"


def _note(i: int, owner: str, nickname: str = "") -> dict[str, object]:
    # Profile: a versioned one.models type with an ID made of (profileId, personId, owner).
    return {"$type$": "Profile", "profileId": f"p{i}", "personId": owner, "owner": owner,
            "nickname": nickname, "communicationEndpoint": [], "personDescription": []}


def test_two_instances_in_one_process_work_side_by_side(tmp_path: Path) -> None:
    a = Instance.create(tmp_path / "a", email="a@example.com", instance_name="a", secret=SECRET)
    b = Instance.create(tmp_path / "b", email="b@example.com", instance_name="b", secret=SECRET)
    try:
        errors: list[BaseException] = []

        def work(inst: Instance) -> None:
            try:
                for i in range(30):
                    obj = _note(i % 5, inst.person_id, f"v{i}")
                    versions.store_versioned(inst.store, obj)
                    inst.affirm(core.object_hash(obj))
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(x,)) for x in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        for inst, other in ((a, b), (b, a)):
            for i in range(5):
                id_hash = core.id_hash(_note(i, inst.person_id))
                assert versions.current(inst.store, id_hash)["owner"] == inst.person_id
                assert inst.store.get_head(core.id_hash(_note(i, other.person_id))) is None
            assert inst.store.verify() == []
        # Signatures made by one instance verify with its key and not with the other's.
        sig = a.sign(b"hello")
        Instance.verify(b"hello", sig, a.person_public_sign_key)
    finally:
        a.close()
        b.close()


def test_per_id_locks_are_released(tmp_path: Path) -> None:
    with core.Store(str(tmp_path / "s")) as store:
        for i in range(200):
            versions.store_versioned(store, _note(i, "0" * 64))
        assert len(versions._ID_LOCKS) == 0
