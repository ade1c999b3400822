"""The ``lama`` command line (console script ``lama = lama.cli:main``).

Commands:

* ``lama init --dir D --name N --email E [--instance-name I]`` creates an instance
  (objects.md §7.3) in ``D/<instanceIdHash>/``: Person ``{email: E, name: N}``, Instance
  ``I`` (default: the host name), random person and instance keys, the keychain protected by
  the secret. Prints the identity as ``whoami`` does.
* ``lama whoami --dir D [--email E --instance-name I] [--json] [--check-secret]`` prints the
  person ID, instance ID, email, names, Keys hashes and public keys. It reads only public data
  (``instance.json`` and the Keys objects in the store), so it needs **no secret**; with
  ``--check-secret`` it also unlocks the keychain and checks that the secret keys match the
  public keys (secret needed then).
* ``lama comm-server [--host 127.0.0.1] [--port 8000]`` runs a comm server (docs/connections.md
  §2): prints its URL, serves until SIGINT or SIGTERM, closes every spare and relayed pair and
  prints its counters, one ``name value`` line each.

The secret comes from the environment variable ``LAMA_SECRET`` or, if that is unset and stdin
is a terminal, from a hidden prompt (asked twice for ``init``). It is never a command-line
argument (arguments are visible to other users in the process list). Without either, the
command fails at once with exit status 2 instead of waiting for input.

Input rules (checked by the library, ``lama.identity.layout.check_email`` / ``check_name``, before
anything is written): the email is ``local@domain`` in one line of at most 254 characters
without whitespace or control characters - ``local`` 1-64 letters, digits, non-ASCII characters
or ``!#$%&'*+-/=?^_`{|}~`` with dots only between them, ``domain`` one or more dot-separated
labels of letters, digits and inner hyphens (``alice@localhost`` is fine); names are one
non-blank line without control characters. ``--dir`` must be (or be creatable as) a directory.
A broken rule is a one-line error and nothing is created on disk.

Output: ``whoami`` and ``init`` print stored values with control, format and line-separator
characters (and backslashes) escaped as ``\\n``, ``\\x1b``, ``\\u202e``, ``\\\\``, so a stored
value can never add or disguise a line; ``--json`` output is plain JSON (ASCII-escaped).

Exit status: 0 on success, 1 for a lama error or an I/O error (printed as one line
``error: CODE: message`` on stderr), 2 for a usage error. Typer is imported inside
:func:`main`, so ``import lama`` stays free of dependencies (``pip install lama[cli]``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import unicodedata
from typing import Any, NoReturn

from lama.errors import LamaError

__all__ = ["main", "SECRET_ENV"]

SECRET_ENV = "LAMA_SECRET"


class _SecretUnavailable(Exception):
    pass


def read_secret(confirm: bool = False) -> str:
    """The secret from ``$LAMA_SECRET`` or a hidden prompt on a terminal (never echoed)."""
    secret = os.environ.get(SECRET_ENV)
    if secret is not None:
        if not secret:
            raise _SecretUnavailable(f"{SECRET_ENV} is set but empty")
        return secret
    if not sys.stdin.isatty():
        raise _SecretUnavailable(
            f"no secret: set the environment variable {SECRET_ENV} or run in a terminal to be "
            "prompted"
        )
    import getpass

    secret = getpass.getpass("Instance secret: ")
    if not secret:
        raise _SecretUnavailable("the secret must not be empty")
    if confirm and getpass.getpass("Repeat the secret: ") != secret:
        raise _SecretUnavailable("the secrets do not match")
    return secret


_UNSAFE_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def escape(value: Any, *, backslash: bool = True) -> str:
    """``str(value)`` safe to print as part of one terminal line: control characters (newline,
    escape sequences), format characters (bidi overrides, zero-width), surrogates, private-use
    and unassigned code points and line/paragraph separators become ``\\n``, ``\\t``,
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; with ``backslash`` a backslash is doubled so
    the escaped text is unambiguous. Values in instance.json may have been written by anything,
    so every printed value goes through here."""
    text = str(value)
    out = []
    for c in text:
        if c == "\\" and backslash:
            out.append("\\\\")
        elif c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif unicodedata.category(c) in _UNSAFE_CATEGORIES:
            n = ord(c)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}")
        else:
            out.append(c)
    return "".join(out)


def _identity_lines(info: Any) -> list[str]:
    d = info.as_dict()
    rows = [
        ("person id", d["person_id"]),
        ("instance id", d["instance_id"]),
        ("email", d["email"]),
        ("person name", d["person_name"] or ""),
        ("instance name", d["instance_name"]),
        ("person keys", d["person_keys"]),
        ("person public key", d["person_public_key"]),
        ("person public sign key", d["person_public_sign_key"]),
        ("instance keys", d["instance_keys"]),
        ("instance public key", d["instance_public_key"]),
        ("instance public sign key", d["instance_public_sign_key"]),
        ("directory", d["path"]),
    ]
    return [f"{label + ':':<26}{escape(value)}" for label, value in rows]


def _print_identity(info: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(info.as_dict(), indent=2, sort_keys=True))
    else:
        print("\n".join(_identity_lines(info)))


def _fail(message: str, status: int) -> NoReturn:
    # one line whatever the message holds (paths and values come from the user or the disk)
    print(f"error: {escape(message, backslash=False)}", file=sys.stderr)
    raise SystemExit(status)


async def _run_comm_server(host: str, port: int, ping_interval: float, pong_timeout: float,
                           auth_timeout: float) -> None:
    """``lama comm-server``: print the URL, serve until SIGINT/SIGTERM, close cleanly, print the
    counters (one ``name value`` line each)."""
    import asyncio
    import signal

    from lama._core import comm_server

    server = await comm_server(host, port, ping_interval=ping_interval, pong_timeout=pong_timeout,
                               auth_timeout=auth_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(server.url, flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        for name, value in server.counters().items():
            print(f"{name} {value}")
        sys.stdout.flush()


def _build_app() -> Any:
    import typer

    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="lama: ONE instances - identity, keys and store.",
    )

    @app.command()
    def init(
        dir: str = typer.Option(..., "--dir", help="Base directory of the instance(s)."),
        name: str = typer.Option(..., "--name", help="Person name, one non-blank line."),
        email: str = typer.Option(
            ...,
            "--email",
            help=(
                "Person email (the person's identity): local@domain, one line, at most 254 "
                "characters, no whitespace or control characters; local part (at most 64): "
                "letters, digits, non-ASCII and !#$%&'*+-/=?^_`{|}~ with dots only between "
                "them; domain: "
                "dot-separated labels of letters, digits and inner hyphens (a dot is optional)."
            ),
        ),
        instance_name: str = typer.Option(
            None,
            "--instance-name",
            help="Instance name, one non-blank line (default: the host name).",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Create a new instance. Secret: $LAMA_SECRET or a hidden prompt."""
        from lama.identity.instance import Instance, check_base_dir, check_email, check_name

        if instance_name is None:  # only a missing option defaults; "" is an error
            instance_name = socket.gethostname() or "lama"
        # check the arguments before asking for the secret (Instance.create checks them again)
        check_email(email)
        check_name(name, "person name (--name)")
        check_name(instance_name, "instance name (--instance-name)")
        check_base_dir(dir)
        secret = read_secret(confirm=True)
        inst = Instance.create(
            dir, email=email, person_name=name, instance_name=instance_name, secret=secret
        )
        with inst:
            _print_identity(inst.info, as_json)

    @app.command()
    def whoami(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        email: str = typer.Option(None, "--email", help="Choose the instance by email ..."),
        instance_name: str = typer.Option(None, "--instance-name", help="... and name."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        check_secret: bool = typer.Option(
            False, "--check-secret", help="Also unlock the keychain and check the secret keys."
        ),
    ) -> None:
        """Print the identity of an instance (public data; no secret needed)."""
        from lama.identity.instance import Instance, read_info

        if check_secret:
            with Instance.open(
                dir, read_secret(), email=email, instance_name=instance_name
            ) as inst:
                _print_identity(inst.info, as_json)
        else:
            _print_identity(read_info(dir, email=email, instance_name=instance_name), as_json)

    @app.command("comm-server")
    def comm_server_cmd(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
        port: int = typer.Option(8000, "--port", help="Port to bind (0: any free port)."),
        ping_interval: float = typer.Option(25.0, "--ping-interval", help="Seconds between pings of a spare."),
        pong_timeout: float = typer.Option(1.0, "--pong-timeout", help="Seconds a pong may take."),
        auth_timeout: float = typer.Option(10.0, "--auth-timeout", help="Seconds to authenticate."),
    ) -> None:
        """Run a comm server (the reference's relay protocol) until SIGINT or SIGTERM."""
        import asyncio

        asyncio.run(_run_comm_server(host, port, ping_interval, pong_timeout, auth_timeout))

    return app


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lama`` console script."""
    try:
        import typer  # noqa: F401
    except ImportError:
        _fail("the lama CLI needs Typer: pip install 'lama[cli]'", 1)
    app = _build_app()
    try:
        # standalone mode: Typer/Click print usage errors themselves and exit with status 2
        app(args=argv, prog_name="lama")
    except _SecretUnavailable as e:
        _fail(str(e), 2)
    except LamaError as e:
        _fail(str(e), 1)
    except OSError as e:
        # an I/O failure below lama (disk full, permissions): one line, no traceback
        _fail(f"{e.strerror or e}" + (f": {e.filename}" if e.filename else ""), 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)

if __name__ == "__main__":
    main()
