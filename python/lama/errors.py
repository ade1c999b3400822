"""The exception hierarchy of lama.

Every error lama raises derives from :class:`LamaError` and from the natural built-in
(``ValueError`` for malformed input, ``LookupError`` for a missing object, ...), so callers can
catch either.  ``code`` is a stable string: the reference's code where one exists
(``O2M-RTYC1``, ``M2O-PD1``, ``SB-READ2``, ...), a ``LAMA-*`` code otherwise.  ``str(err)`` is
``"CODE: message"``.

Both cores raise these same classes: the native module imports this module and constructs them
(see ``rust/lama-py/src/errors.rs``), the pure core raises them directly.
"""

from __future__ import annotations

import re

_CODE_RE = re.compile(r"^([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)+): ")


class LamaError(Exception):
    """Base class of all lama errors."""

    code: str

    def __init__(self, message: str = "", code: str | None = None) -> None:
        if code is None:
            m = _CODE_RE.match(message)
            code = m.group(1) if m else "LAMA-ERROR"
        elif not message.startswith(code + ":"):
            message = f"{code}: {message}"
        super().__init__(message)
        self.code = code


class MicrodataError(LamaError, ValueError):
    """An object cannot be serialized, or a microdata text cannot be parsed (O2M-*, M2O-*)."""


class RecipeError(LamaError, ValueError):
    """A recipe is invalid, unknown, or conflicts with a registered one (OR-*, URC-*)."""


class HashMismatchError(LamaError, ValueError):
    """Content does not hash to the hash it was announced or stored under."""


class NotFoundError(LamaError, LookupError):
    """An object, ID object, BLOB/CLOB or version head is not in the store (SB-READ2)."""


class ConflictError(LamaError, RuntimeError):
    """A compare-and-set of a version head lost against a concurrent writer."""


class StoreError(LamaError, OSError):
    """The store could not be opened or written, or is corrupt."""


class CryptoError(LamaError, ValueError):
    """Malformed key, nonce or ciphertext."""


class DecryptionError(CryptoError):
    """A box/secretbox failed to authenticate (wrong key or tampered data)."""


class SignatureError(CryptoError):
    """A signature does not verify."""


class KeychainError(LamaError, PermissionError):
    """The keychain is locked, the secret is wrong, or keys are missing (KEYCH-*, CYENC-*)."""


class AccessDeniedError(LamaError, PermissionError):
    """The peer or caller may not access an object."""


class TransportError(LamaError, ConnectionError):
    """A connection failed or was closed."""


class InvalidArgumentError(LamaError, ValueError):
    """An argument of a lama call is malformed (``LAMA-ARG``, ``LAMA-EMAIL``, ...)."""


# --- lama.connect (issue 9, docs/connections.md §3) ---------------------------------------


class ProtocolError(TransportError):
    """A peer broke the connection protocols of connections.md §5/§6: an unexpected or
    malformed message (``LAMA-PROTO``), no answer in time (``LAMA-PROTO-TIMEOUT``), the
    connection closed mid-protocol (``LAMA-PROTO-CLOSED``) or refused by the acceptor
    (``LAMA-REFUSED``, e.g. ``I do not want to communicate with you. Go Away!``)."""


class AuthenticationError(LamaError, PermissionError):
    """A peer failed an identity check (connections.md §5.3/§5.4): the person-key proof
    (``LAMA-AUTH``), the Keys owner (``LAMA-AUTH-KEYS``), an expected person or instance
    (``LAMA-AUTH-PERSON``, ``LAMA-AUTH-INSTANCE``), the key on record (``EP-KEYMISSMATCH``)."""


class PairingError(AuthenticationError):
    """A pairing was refused (connections.md §6): unknown, expired or used token
    (``LAMA-PAIR-TOKEN``), an ``identity`` that contradicts what was proven
    (``LAMA-PAIR-IDENTITY``)."""


# --- lama.chat (issue 10, docs/chat.md) ----------------------------------------------------


class MissingFileError(NotFoundError, FileNotFoundError):
    """A file to attach to a chat message is missing or unreadable (``LAMA-CHAT-FILE``);
    nothing was posted."""


__all__ = [
    "LamaError",
    "MicrodataError",
    "RecipeError",
    "HashMismatchError",
    "NotFoundError",
    "ConflictError",
    "StoreError",
    "CryptoError",
    "DecryptionError",
    "SignatureError",
    "KeychainError",
    "AccessDeniedError",
    "TransportError",
    "InvalidArgumentError",
    "ProtocolError",
    "AuthenticationError",
    "PairingError",
    "MissingFileError",
]


# --- mailbox (issue 11, docs/mailbox.md) ---------------------------------------------------


class MailboxError(TransportError):
    """The comm server's store-and-forward mailbox (docs/mailbox.md §7): no mailbox at that server
    (``LAMA-MAILBOX-UNSUPPORTED``), a broken answer (``LAMA-MAILBOX-PROTO``), a server that cannot
    store (``LAMA-MAILBOX-IO``), a refused deposit proof or an envelope not in the prover's name
    (``LAMA-MAILBOX-AUTH``), refused content (``LAMA-MAILBOX-CONTENT``, ``-FORMAT``), content
    whose references are not here yet (``LAMA-MAILBOX-INCOMPLETE``). An altered item is a
    ``DecryptionError LAMA-MAILBOX-TAMPERED``, an unknown sender or bad signature a
    ``SignatureError LAMA-MAILBOX-SENDER``."""


class MailboxFullError(MailboxError):
    """The recipient's mailbox is full (``LAMA-MAILBOX-FULL``: its item count or byte limit) or
    the item alone exceeds the byte limit (``LAMA-MAILBOX-TOOBIG``), or the whole mailbox is full
    (``LAMA-MAILBOX-SERVER-FULL``: items or bytes across all recipients); nothing was stored."""


__all__ += ["MailboxError", "MailboxFullError"]
