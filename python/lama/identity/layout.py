"""Where an instance lives and what it shows without its secret (objects.md §2.2, §7.3).

The instance directory ``<base>/<instanceIdHash>/`` holds ``store/`` (LMDB), ``private/`` (the
keychain) and ``instance.json`` (public data, written last). This module names the directory
(the reference's unescaped ID-hash quirk), finds it and reads the public data; it needs no
secret and opens no keychain (``lama whoami``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lama._core import Store, core
from lama.errors import LamaError, NotFoundError, StoreError

__all__ = [
    "INFO_FILE",
    "InstanceInfo",
    "calculate_instance_id_hash",
    "calculate_person_id_hash",
    "find_instance_dir",
    "read_info",
]

INFO_FILE = "instance.json"
STORE_DIR = "store"
PRIVATE_DIR = "private"
INFO_FORMAT = "lama-instance/1"



# --------------------------------------------------------------------------------------------
# Instance ID hash as the reference computes the directory name (objects.md §2.2 quirk)


def calculate_person_id_hash(email: str) -> str:
    """The Person ID hash built by plain string interpolation (no HTML escaping).

    Equal to the true Person ID hash unless ``email`` contains ``& < >``."""
    md = (
        '<div data-id-object="true" itemscope itemtype="//refin.io/Person">'
        f'<span itemprop="email">{email}</span></div>'
    )
    return hashlib.sha256(md.encode("utf-8")).hexdigest()


def calculate_instance_id_hash(instance_name: str, email: str) -> str:
    """``calculateInstanceIdHash(name, email)`` (objects.md §2.2): the Instance ID hash built by
    plain string interpolation, without HTML escaping, from the (equally unescaped) Person ID
    hash. It names the instance directory. For names/emails containing ``& < >`` it differs
    from the true Instance ID hash (:attr:`Instance.instance_id`); kept for compatibility."""
    md = (
        '<div data-id-object="true" itemscope itemtype="//refin.io/Instance">'
        f'<span itemprop="name">{instance_name}</span>'
        f'<a itemprop="owner" data-type="id">{calculate_person_id_hash(email)}</a></div>'
    )
    return hashlib.sha256(md.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# Public data (instance.json)


@dataclass(frozen=True)
class InstanceInfo:
    """The public data of an instance, as recorded in ``instance.json`` and the store."""

    path: str
    email: str
    person_name: str | None
    instance_name: str
    person_id: str
    instance_id: str
    person_keys: str
    instance_keys: str
    person_public_key: bytes
    person_public_sign_key: bytes
    instance_public_key: bytes
    instance_public_sign_key: bytes

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (keys as lowercase hex)."""
        return {
            "path": self.path,
            "email": self.email,
            "person_name": self.person_name,
            "instance_name": self.instance_name,
            "person_id": self.person_id,
            "instance_id": self.instance_id,
            "person_keys": self.person_keys,
            "instance_keys": self.instance_keys,
            "person_public_key": self.person_public_key.hex(),
            "person_public_sign_key": self.person_public_sign_key.hex(),
            "instance_public_key": self.instance_public_key.hex(),
            "instance_public_sign_key": self.instance_public_sign_key.hex(),
        }


def _check_str(value: Any, what: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise LamaError(f"{what} must be a non-empty str", code="LAMA-ARG")
    return value



def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFoundError(f"LAMA-NOINSTANCE: no lama instance at {path.parent}") from None
    except (OSError, ValueError) as e:
        raise StoreError(f"LAMA-INSTANCE-CORRUPT: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != INFO_FORMAT:
        raise StoreError(f"LAMA-INSTANCE-CORRUPT: {path} is not a lama instance file")
    return data


def find_instance_dir(
    directory: str | os.PathLike[str],
    *,
    email: str | None = None,
    instance_name: str | None = None,
) -> Path:
    """The instance directory for ``directory``.

    ``directory`` is either an instance directory (it holds ``instance.json``) or a base
    directory holding instance directories ``<instanceIdHash>/``. With ``email`` and
    ``instance_name`` the instance is chosen by its ID hash; otherwise the base directory must
    hold exactly one instance. ``NotFoundError LAMA-NOINSTANCE`` if there is none,
    ``LamaError LAMA-AMBIGUOUS`` if several match.
    """
    base = Path(directory)
    if (base / INFO_FILE).is_file():
        return base
    if email is not None and instance_name is not None:
        candidate = base / calculate_instance_id_hash(instance_name, email)
        if (candidate / INFO_FILE).is_file():
            return candidate
        raise NotFoundError(
            f"LAMA-NOINSTANCE: no lama instance {instance_name!r} of {email!r} in {base}"
        )
    found = sorted(p.parent for p in base.glob(f"*/{INFO_FILE}")) if base.is_dir() else []
    if not found:
        raise NotFoundError(f"LAMA-NOINSTANCE: no lama instance in {base}")
    if len(found) > 1:
        raise LamaError(
            f"LAMA-AMBIGUOUS: {len(found)} instances in {base}; give the email and instance name"
        )
    return found[0]


def _keys_of(store: Store, owner: str, keys_hash: str) -> tuple[bytes, bytes]:
    obj = store.get_object(keys_hash)
    if obj.get("$type$") != "Keys" or obj.get("owner") != owner:
        raise StoreError(f"LAMA-INSTANCE-CORRUPT: {keys_hash} is not a Keys object of {owner}")
    return bytes.fromhex(obj["publicKey"]), bytes.fromhex(obj["publicSignKey"])


def _info_from(path: Path, data: dict[str, Any], store: Store) -> InstanceInfo:
    try:
        pk, psk = _keys_of(store, data["person_id"], data["person_keys"])
        ik, isk = _keys_of(store, data["instance_id"], data["instance_keys"])
        return InstanceInfo(
            path=str(path),
            email=data["email"],
            person_name=data.get("person_name"),
            instance_name=data["instance_name"],
            person_id=data["person_id"],
            instance_id=data["instance_id"],
            person_keys=data["person_keys"],
            instance_keys=data["instance_keys"],
            person_public_key=pk,
            person_public_sign_key=psk,
            instance_public_key=ik,
            instance_public_sign_key=isk,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise StoreError(f"LAMA-INSTANCE-CORRUPT: {path / INFO_FILE}: {e!r}") from None


def read_info(
    directory: str | os.PathLike[str],
    *,
    email: str | None = None,
    instance_name: str | None = None,
) -> InstanceInfo:
    """The public data of an instance without its secret (``lama whoami``): ``instance.json``
    plus the public Keys objects from the store. Nothing secret is read or needed."""
    path = find_instance_dir(directory, email=email, instance_name=instance_name)
    data = _read_json(path / INFO_FILE)
    store = core.Store(str(path / STORE_DIR))
    try:
        return _info_from(path, data, store)
    finally:
        store.close()


def _write_info(path: Path, data: dict[str, Any]) -> None:
    tmp = path / (INFO_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / INFO_FILE)
