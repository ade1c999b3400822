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
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lama._core import Store, core
from lama.errors import InvalidArgumentError, LamaError, NotFoundError, StoreError

__all__ = [
    "INFO_FILE",
    "InstanceInfo",
    "calculate_instance_id_hash",
    "calculate_person_id_hash",
    "check_base_dir",
    "check_email",
    "check_name",
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


EMAIL_MAX_LEN = 254
"""Longest accepted email (RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its angle
brackets)."""
NAME_MAX_LEN = 1024

# RFC 5322 §3.2.3 atext (plus non-ASCII, RFC 6531): what a dot-atom local part may hold
_ATEXT_SPECIALS = frozenset("!#$%&'*+-/=?^_`{|}~")


def _bad_char(c: str) -> bool:
    """Whitespace, control, format (bidi overrides, zero-width), surrogate or line/paragraph
    separator characters: anything that breaks a one-line display or hides text."""
    return c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp", "Zs")


def check_email(email: Any) -> str:
    """The email rule for a new local identity (``Instance.create``, ``lama init``).

    ``local@domain`` in one line, at most :data:`EMAIL_MAX_LEN` characters, no whitespace,
    control or format characters:

    * ``local``: 1-64 characters; letters, digits, non-ASCII characters and
      ``!#$%&'*+-/=?^_`{|}~``; dots only between other characters (RFC 5322 dot-atom, no
      quoted local parts);
    * ``domain``: one or more labels separated by single dots (``alice@localhost`` is
      accepted), each 1-63 letters, digits, non-ASCII letters or hyphens, not starting or
      ending with a hyphen.

    The address is not checked for deliverability: the email only names the person (its
    Person ID is the ID hash of ``{Person, email}``, objects.md §7.3). Emails of *other*
    persons received from peers are not subject to this rule.
    ``InvalidArgumentError LAMA-EMAIL`` (a ``ValueError``) names the broken rule; the message
    shows the email with control characters escaped.
    """
    if not isinstance(email, str):
        raise InvalidArgumentError(
            f"the email must be a str, not {type(email).__name__}", code="LAMA-EMAIL"
        )

    def bad(why: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"invalid email {email!r}: {why}", code="LAMA-EMAIL")

    if not email:
        raise bad("it is empty")
    if len(email) > EMAIL_MAX_LEN:
        raise bad(f"longer than {EMAIL_MAX_LEN} characters")
    if any(_bad_char(c) for c in email):
        raise bad("it must be one line without whitespace, control or format characters")
    local, at, domain = email.rpartition("@")
    if not at:
        raise bad("it must have the form local@domain")
    if "@" in local:
        raise bad("more than one '@'")
    if not local or not domain:
        raise bad("the part before and the part after '@' must not be empty")
    if len(local) > 64:
        raise bad("the part before '@' is longer than 64 characters")
    atoms = local.split(".")
    if any(not a for a in atoms):
        raise bad("dots in the part before '@' must stand between other characters")
    if any(not (c.isalnum() or c in _ATEXT_SPECIALS or ord(c) > 127) for a in atoms for c in a):
        raise bad("the part before '@' may hold letters, digits and !#$%&'*+-/=?^_`{|}~ only")
    for label in domain.split("."):
        if not label:
            raise bad("the domain must be labels separated by single dots")
        if len(label) > 63:
            raise bad("a domain label is longer than 63 characters")
        if not all(c.isalnum() or c == "-" for c in label) or label[0] == "-" or label[-1] == "-":
            raise bad("domain labels may hold letters, digits and inner hyphens only")
    return email


def check_name(value: Any, what: str, *, optional: bool = False) -> str | None:
    """A person or instance name: a non-blank str of at most :data:`NAME_MAX_LEN` characters in
    one line (no control characters or line/paragraph separators; spaces and other printable
    characters are fine). ``InvalidArgumentError LAMA-ARG`` otherwise."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InvalidArgumentError(
            f"{what} must be a str, not {type(value).__name__}", code="LAMA-ARG"
        )
    if not value.strip():
        raise InvalidArgumentError(f"{what} must not be empty or blank", code="LAMA-ARG")
    if len(value) > NAME_MAX_LEN:
        raise InvalidArgumentError(
            f"{what} is longer than {NAME_MAX_LEN} characters", code="LAMA-ARG"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in value):
        raise InvalidArgumentError(
            f"{what} {value!r} must be one line without control characters", code="LAMA-ARG"
        )
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


def check_base_dir(directory: str | os.PathLike[str]) -> Path:
    """``StoreError LAMA-NOTDIR`` if ``directory`` or its nearest existing ancestor is not a
    directory (so no instance could be created in it); nothing is created."""
    base = Path(directory)
    probe = base
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "exists and is not a directory" if probe == base else f"is below the file {probe}"
        raise StoreError(f"LAMA-NOTDIR: {base} {where}")
    return base


def _make_base_dir(base: Path) -> None:
    """Create the base directory (and its parents) for a new instance; a lama error, not a raw
    OSError, if that is impossible (a path component is a file, no permission, ...)."""
    check_base_dir(base)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"LAMA-NOTDIR: a component of {base} is not a directory") from None
    except OSError as e:
        raise StoreError(f"LAMA-DIR: cannot create {base}: {e.strerror}") from None


def _write_info(path: Path, data: dict[str, Any]) -> None:
    tmp = path / (INFO_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / INFO_FILE)
