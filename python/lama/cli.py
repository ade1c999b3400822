"""The ``lama`` command line (console script ``lama = lama.cli:main``).

Commands:

* ``lama init --dir D --name N --email E [--instance-name I]`` creates an instance
  (objects.md §7.3) in ``D/<instanceIdHash>/``: Person ``{email: E, name: N}``, Instance
  ``I`` (default: the host name), random person and instance keys, the keychain protected by
  the secret. Prints the identity as ``whoami`` does.
* ``lama init --join LINK --dir D [--instance-name I] [--comm-server URL]`` creates a new
  device of your person from the device invitation ``LINK`` of a running device of yours
  (``lama invite --device`` there): that device hands over the person's keys and the contacts
  inside the encrypted connection (:mod:`lama.connect.device`); the new keychain keeps them
  encrypted with this device's secret. A wrong, expired or used token: exit status 1, nothing
  created.
* ``lama whoami --dir D [--email E --instance-name I] [--json] [--check-secret]`` prints the
  person ID, instance ID, email, names, Keys hashes and public keys. It reads only public data
  (``instance.json`` and the Keys objects in the store), so it needs **no secret**; with
  ``--check-secret`` it also unlocks the keychain and checks that the secret keys match the
  public keys (secret needed then).
* ``lama invite --dir D [--comm-server URL] [--lifetime S] [--png FILE] [--chum-wait S]``
  listens at the comm server (default ``$LAMA_COMM_SERVER`` or ``ws://localhost:8000``),
  prints an invitation link (conn §6.2) and its QR code, waits for one pairing (at most the
  token lifetime, default 15 minutes; then exit status 1, ``LAMA-PAIR-TIMEOUT``), waits up to
  ``--chum-wait`` seconds for the CHUM connection with the new contact (and its first full
  sync pass) and reports the
  contact. ``--device``: an invitation for a new device of your own person instead
  (``.../invites/inviteDevice/...``, for ``lama init --join``); reports the new device.
* ``lama accept LINK --dir D [--comm-server URL] [--chum-wait S]`` pairs using the invitation
  (conn §6.3), waits for the CHUM connection likewise and reports the new contact. A refused
  pairing (expired, used or wrong token) is exit status 1.
* ``lama comm-server [--host 127.0.0.1] [--port 8000] [--mailbox DIR]`` runs a comm server
  (docs/connections.md §2; with ``--mailbox`` also docs/mailbox.md): prints its URL, serves
  until SIGINT or SIGTERM, closes every spare and relayed pair and prints its counters, one
  ``name value`` line each. ``--metrics 127.0.0.1:PORT``: also a Prometheus ``/metrics``
  endpoint (docs/metrics.md).
  With ``--nats URL [--advertise URL]`` it is a node of a comm-server cluster
  (docs/cluster.md); ``--comm-server`` of the other commands takes several comma-separated URLs
  (nodes of one cluster; failover).

Chat (issue 10; the asyncio facade :class:`lama.app.App` underneath):

* ``lama serve --dir D [--comm-server URL] [--json]`` runs the instance: the connection manager
  (one CHUM connection per contact, reconnects), the chat layer's events; prints what happens
  (connections, pairings, syncs - a rich progress bar on a terminal for a large sync, objects
  of the listed total and objects/s (:mod:`lama.progress`) - messages; JSON lines
  with ``--json``) and serves the control channel (:mod:`lama.control`); ``--http
  127.0.0.1:PORT``: also the diagnostics page and ``/metrics`` (loopback, token; docs/metrics.md). SIGINT or SIGTERM:
  every connection is closed with a reason, the control file removed, exit status 0.
* ``lama contacts``, ``lama send CONTACT TEXT [--attach FILE]...``, ``lama messages CONTACT
  [--follow] [--last N]``, ``lama status`` (all ``--dir D [--json]``): through the running
  ``lama serve`` of that instance (``<instance dir>/control.json``: a port on 127.0.0.1 and a
  token, readable only by the owner); without one they open the instance themselves (secret
  needed): ``send`` stores the message, which goes out when the instance next runs;
  ``messages --follow`` starts the connections itself. CONTACT is a person id (or a prefix of
  at least 8 hex digits), an email or a name. ``send --attach`` shows a transfer bar (bytes,
  rate) until the peer has the files, or until they are stored and offered if it is not
  connected; ``messages --follow`` shows sync bars like ``serve``. Bars only on a terminal
  (not with ``CI=true``); otherwise plain lines (``messages``: on stderr).
* ``lama device list --dir D [--json]``, ``lama device remove DEVICE --dir D [--json]``: the
  devices of my person; remove one (a lost phone: its keys revoked, docs/connections.md §3.5).
* ``lama demo [--dir D] [--attachment-size N]``: the two-process demo (:mod:`lama.demo`).

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
    if not sys.stdin.isatty() or os.environ.get("CI") == "true":
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
                           auth_timeout: float, metrics: tuple[str, int] | None = None,
                           **options: Any) -> None:
    """``lama comm-server``: print the URL (and the metrics URL with ``--metrics``), serve until
    SIGINT/SIGTERM, close cleanly, print the counters (one ``name value`` line each)."""
    import asyncio
    import logging
    import signal

    from lama._core import comm_server

    log = logging.getLogger("lama.commserver")
    server = await comm_server(host, port, ping_interval=ping_interval, pong_timeout=pong_timeout,
                               auth_timeout=auth_timeout, **options)
    exporter = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(server.url, flush=True)
        log.info("comm server listening",
                 extra={"fields": {"event": "listening", "url": server.url}})
        if metrics is not None:  # docs/metrics.md
            from lama.web.commmetrics import CommServerMetrics

            exporter = CommServerMetrics(server, *metrics,
                                         token=os.environ.get("LAMA_METRICS_TOKEN") or None)
            await exporter.start()
            print(f"metrics at {exporter.url}", flush=True)
        await stop.wait()
    finally:
        if exporter is not None:
            await exporter.close()
        await server.close()
        log.info("comm server stopped", extra={"fields": {"event": "stopped",
                                                           **server.counters()}})
        for name, value in server.counters().items():
            print(f"{name} {value}")
        sys.stdout.flush()


def _build_app() -> Any:
    import typer

    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        help="lama: ONE instances - identity, keys and store; pairing, chat, and more devices "
             "of your person (lama invite --device, lama init --join).",
    )

    @app.command()
    def init(
        dir: str = typer.Option(..., "--dir", help="Base directory of the instance(s)."),
        name: str = typer.Option(
            None, "--name",
            help="Person name, one non-blank line (required; not with --join: the person "
                 "comes from the first device)."),
        email: str = typer.Option(
            None,
            "--email",
            help=(
                "Person email (the person's identity): local@domain, one line, at most 254 "
                "characters, no whitespace or control characters; local part (at most 64): "
                "letters, digits, non-ASCII and !#$%&'*+-/=?^_`{|}~ with dots only between "
                "them; domain: "
                "dot-separated labels of letters, digits and inner hyphens (a dot is optional)."
                " Required; not with --join."
            ),
        ),
        instance_name: str = typer.Option(
            None,
            "--instance-name",
            help="Instance name, one non-blank line (default: the host name; with --join "
                 "the host name and 6 random hex digits). Each device of a person needs its "
                 "own.",
        ),
        join: str = typer.Option(
            None, "--join",
            help="Make this instance a new device of your person: the device invitation link "
                 "of a running device of yours (`lama invite --device` there). That device "
                 "hands over the person's keys inside the end-to-end encrypted connection "
                 "(one-time, expiring token) together with your contacts; this keychain keeps "
                 "them encrypted with this device's secret. Then run `lama serve` here."),
        comm_server: str = typer.Option(
            None, "--comm-server",
            help=f"With --join: this device's comm server (told to the first device). "
                 f"Default: ${COMM_SERVER_ENV}, else the invitation's."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Create a new instance (--name, --email), or a new device of your person
        (--join LINK from `lama invite --device`). Secret: $LAMA_SECRET or a hidden prompt."""
        from lama.identity.instance import Instance, check_base_dir, check_email, check_name

        if join is not None:
            for value, opt in ((name, "--name"), (email, "--email")):
                if value is not None:
                    raise typer.BadParameter(
                        "not with --join (the person comes from the first device)",
                        param_hint=opt)
            from lama.connect import device, pairing

            if pairing.PARTNER_PATH.split("?")[0] in join:
                raise typer.BadParameter(
                    "this is an invitation to pair with a person (use `lama accept`); "
                    "`lama invite --device` makes a device invitation", param_hint="--join")
            inv = pairing.parse_invitation(join)  # a malformed link fails before the secret
            if instance_name is None:
                instance_name = device.default_instance_name()
            check_name(instance_name, "instance name (--instance-name)")
            check_base_dir(dir)
            url = comm_server or os.environ.get(COMM_SERVER_ENV) or inv.url
            secret = read_secret(confirm=True)
            _run_async(_join(dir, inv, secret, instance_name, url, as_json))
            return
        for value, opt in ((name, "--name"), (email, "--email")):
            if value is None:
                raise typer.BadParameter("is required (unless --join is given)",
                                         param_hint=opt)
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

    @app.command()
    def invite(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        comm_server: str = typer.Option(
            None, "--comm-server",
            help=f"Comm server URL (listened at; put into the invitation). Default: "
                 f"${COMM_SERVER_ENV} or {DEFAULT_COMM_SERVER}."),
        lifetime: float = typer.Option(
            900.0, "--lifetime", help="Token lifetime in seconds (default 15 minutes)."),
        png: str = typer.Option(None, "--png", help="Also write the QR code to this PNG file."),
        chum_wait: float = typer.Option(
            10.0, "--chum-wait",
            help="After pairing, wait up to this many seconds for the CHUM connection (0: no)."),
        email: str = typer.Option(None, "--email", help="Choose the instance by email ..."),
        instance_name: str = typer.Option(None, "--instance-name", help="... and name."),
        device: bool = typer.Option(
            False, "--device",
            help="Invite a new device of your own person instead of a contact: the link "
                 "(.../invites/inviteDevice/...) is for `lama init --join LINK` on the new "
                 "device, which then gets your person's keys and contacts over the encrypted "
                 "connection. Anyone holding the link before it is used or expires can become "
                 "you: show it only to yourself."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Create an invitation, print its link and QR code, wait for one pairing (bounded by
        the token lifetime) and report the new contact (with --device: the new device of
        yours). Secret: $LAMA_SECRET or a prompt."""
        from lama.identity.instance import Instance

        if not lifetime > 0:
            raise typer.BadParameter("must be > 0", param_hint="--lifetime")
        served = _served_dir(dir, email, instance_name)
        if served is not None:  # through the running lama serve (its chat layer, its listener)
            _run_async(_invite_served(served, lifetime, png, as_json, device))
            return
        url = _comm_server(comm_server)
        with Instance.open(dir, read_secret(), email=email, instance_name=instance_name) as inst:
            _run_async(_invite(inst, url, lifetime, png, chum_wait, as_json, device))

    @app.command()
    def accept(
        link: str = typer.Argument(..., help="The invitation link (or its JSON)."),
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        comm_server: str = typer.Option(
            None, "--comm-server",
            help=f"Own comm server URL (listened at; told to the inviter). Default: "
                 f"${COMM_SERVER_ENV}, else the invitation's URL."),
        chum_wait: float = typer.Option(
            10.0, "--chum-wait",
            help="After pairing, wait up to this many seconds for the CHUM connection (0: no)."),
        email: str = typer.Option(None, "--email", help="Choose the instance by email ..."),
        instance_name: str = typer.Option(None, "--instance-name", help="... and name."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Pair with the instance that made the invitation and report the new contact."""
        from lama.connect import pairing
        from lama.identity.instance import Instance

        inv = pairing.parse_invitation(link)  # a malformed link fails before the secret
        served = _served_dir(dir, email, instance_name)
        if served is not None:  # through the running lama serve (its chat layer, its listener)
            _run_async(_accept_served(served, inv, as_json))
            return
        url = comm_server or os.environ.get(COMM_SERVER_ENV) or inv.url
        with Instance.open(dir, read_secret(), email=email, instance_name=instance_name) as inst:
            _run_async(_accept(inst, url, inv, chum_wait, as_json))
    # ---------------------------------------------------------------- issue 10: chat

    @app.command()
    def serve(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        comm_server: str = typer.Option(
            None, "--comm-server",
            help=f"Comm server URL. Default: ${COMM_SERVER_ENV} or {DEFAULT_COMM_SERVER}."),
        email: str = typer.Option(None, "--email", help="Choose the instance by email ..."),
        instance_name: str = typer.Option(None, "--instance-name", help="... and name."),
        as_json: bool = typer.Option(False, "--json", help="Print events as JSON lines."),
        http: str = typer.Option(
            None, "--http", help="Serve the diagnostics page and /metrics on HOST:PORT "
            "(loopback only; token printed and written to http.json; docs/metrics.md)."),
        http_allow_remote: bool = typer.Option(
            False, "--http-allow-remote", help="Allow a non-loopback --http address."),
        log_level: str = typer.Option(
            None, "--log-level", help="Log level: debug|info|warning|error (default: "
                                      "$LAMA_LOG_LEVEL or info); logs go to stderr."),
        log_format: str = typer.Option(
            None, "--log-format", help="Log format: json (JSON lines) or text (default: "
                                       "$LAMA_LOG_FORMAT or json)."),
    ) -> None:
        """Run the instance: connections to every contact, CHUM sync, events; other lama
        commands on the same directory talk to it. Stops cleanly on SIGINT/SIGTERM."""
        from lama import log as lama_log
        from lama.app import App, AppConfig
        from lama.web.http import parse_address

        lama_log.configure(log_level, log_format)  # docs/tracing.md §7

        cfg = AppConfig(comm_server_url=_comm_server(comm_server))
        address = parse_address(http, allow_remote=http_allow_remote) if http else None
        secret = read_secret()
        _run_async(_serve(dir, secret, email, instance_name, cfg, as_json, address))

    @app.command()
    def contacts(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """List the contacts (through the running lama serve, else from the store)."""
        result = _run_async(_client(dir, "contacts"))
        items = result["contacts"]
        if as_json:
            print(json.dumps(items, indent=2, sort_keys=True))
            return
        for c in items:
            print(f"{c['person_id'][:16]}  {escape(c.get('name') or '')}  "
                  f"<{escape(c.get('email') or '')}>")

    device_app = typer.Typer(no_args_is_help=True,
                             help="The devices of your person: list, remove (a lost phone).")
    app.add_typer(device_app, name="device")

    @device_app.command("list")
    def device_list(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """The devices of your person as your profile lists them (through the running lama
        serve, else from the store)."""
        items = _run_async(_client(dir, "devices"))["devices"]
        if as_json:
            print(json.dumps(items, indent=2, sort_keys=True))
            return
        for d in items:
            print(f"{d['instance_id'][:16]}  {escape(d.get('name') or '')}"
                  f"{'  (this device)' if d.get('this') else ''}  {escape(d.get('url') or '')}")

    @device_app.command("remove")
    def device_remove(
        device: str = typer.Argument(..., help="Instance id (or 8+ hex digit prefix) or "
                                               "instance name of the device (lama device list)."),
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Remove a device of yours (a lost phone): your person revokes its keys, your profile
        lists it no more, and your other devices and your contacts stop connecting to it. Its
        earlier messages stay. Run it on another device of yours."""
        d = _run_async(_client(dir, "remove_device", device=device))["device"]
        if as_json:
            print(json.dumps(d, indent=2, sort_keys=True))
            return
        print(f"{'removed device:':<26}{escape(d.get('name') or '')} {d['instance_id']}")
        print(f"{'revoked instance keys:':<26}{', '.join(d['instance_keys'])}")

    @app.command()
    def send(
        contact: str = typer.Argument(..., help="Person id (or 8+ hex digit prefix), email or name."),
        text: str = typer.Argument(..., help="The message text."),
        attach: list[str] = typer.Option(None, "--attach", help="Attach a file (repeatable)."),
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Send a message (and files) to a contact. Without a running lama serve the message is
        stored and goes out when the instance next runs."""
        paths = [os.path.abspath(a) for a in (attach or [])]
        for p in paths:
            if not os.path.isfile(p):
                raise typer.BadParameter(f"not a file: {p}", param_hint="--attach")
        from lama.progress import TransferBar

        # attachments: a transfer bar on a terminal (plain lines otherwise) until the peer has
        # them, or they are stored and offered (lama.serve.deliver)
        bar = TransferBar(stream=sys.stderr if as_json else sys.stdout) if paths else None
        try:
            result = _run_async(_client(dir, "send", contact=contact, text=text, attach=paths,
                                        progress=bool(paths),
                                        on_info=bar.update if bar is not None else None))
        finally:
            if bar is not None:
                bar.close()
        m = result["message"]
        if as_json:
            print(json.dumps(m, indent=2, sort_keys=True))
        else:
            print(f"sent {m['id'][:16]} {_fmt_message(m)}")

    @app.command()
    def messages(
        contact: str = typer.Argument(..., help="Person id (or prefix), email or name."),
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Then wait for new ones."),
        last: int = typer.Option(None, "--last", help="Only the N newest of the history."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    ) -> None:
        """The conversation with a contact, oldest first; --follow keeps printing new ones."""
        from lama.progress import SyncBars, use_bars

        # --follow: sync bars on a terminal; piped, the sync lines go to stderr so stdout
        # holds only messages
        bars = None
        names: dict[str, str] = {}
        if follow:
            tty = use_bars(sys.stdout) and not as_json
            bars = SyncBars(lambda p: escape(names.get(p) or p[:16]), bars=tty,
                            stream=sys.stdout if tty else sys.stderr)

        def show(m: dict[str, Any]) -> None:
            text = json.dumps(m, sort_keys=True) if as_json else _fmt_message(m)
            if bars is not None and bars.progress is not None:
                bars.line(text)
            else:
                print(text, flush=True)

        def info(i: dict[str, Any]) -> None:
            if bars is not None and isinstance(i.get("data"), dict):
                d = i["data"]
                if isinstance(d.get("person"), str) and isinstance(d.get("name"), str):
                    names[d["person"]] = d["name"]
                bars.on_event(str(i.get("event")), d)

        try:
            _run_async(_client(dir, "messages", contact=contact, follow=follow, limit=last,
                               on_item=show, on_info=info, sync_progress=follow))
        finally:
            if bars is not None:
                bars.close()

    @app.command()
    def status(
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Connections, health and last sync of the running lama serve."""
        result = _run_async(_client(dir, "status"))
        st = result["status"]
        if as_json:
            print(json.dumps(st, indent=2, sort_keys=True))
            return
        print("\n".join(_status_lines(st)))

    @app.command()
    def trace(
        message: str = typer.Argument(None, help="Message id (or a unique 8+ hex digit prefix); "
                                                 "none: list recent traces."),
        dir: str = typer.Option(..., "--dir", help="Instance or base directory."),
        last: int = typer.Option(20, "--last", help="List: the N newest traces."),
        stalled: bool = typer.Option(False, "--stalled", help="List: only stalled traces."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """The transfer trace of a message: its steps with times, its status and where it
        stalled (docs/tracing.md). Through the running lama serve, else from the persisted
        traces."""
        from lama.trace import format_trace

        if message is not None:
            t = _run_async(_client(dir, "trace", message=message))["trace"]
            if as_json:
                print(json.dumps(t, indent=2, sort_keys=True))
            else:
                print("\n".join(escape(line) for line in format_trace(t)))
            return
        ts = _run_async(_client(dir, "traces", limit=last, stalled=stalled))["traces"]
        if as_json:
            print(json.dumps(ts, indent=2, sort_keys=True))
            return
        for t in ts:
            f = t.get("failure")
            print(f"{t['message_id'][:16]}  {t['direction']:<3}  {t['status']:<9}  "
                  f"{(f['point'] if f else ''):<18}  {escape(t['preview'][:40])}")

    @app.command()
    def demo(
        dir: str = typer.Option(None, "--dir", help="Directory for the two instances "
                                                    "(default: a temporary one, removed)."),
        attachment_size: int = typer.Option(1 << 20, "--attachment-size",
                                            help="Size of the file Alice sends (bytes)."),
    ) -> None:
        """Two devices pair and chat through a comm server, each in its own process, on
        127.0.0.1: every step with its measured time. Exit status 0 if all went well."""
        from lama import demo as demo_mod

        code = demo_mod.main((["--dir", dir] if dir else [])
                             + ["--attachment-size", str(attachment_size)])
        if code:
            raise SystemExit(code)

    # --- migration from and to ONE (issue 12, docs/migration.md) ---------------------------
    @app.command("import-one")
    def import_one_cmd(
        one_dir: str = typer.Argument(..., help="ONE instance directory (or its base directory)."),
        dir: str = typer.Option(..., "--dir", help="Base directory of the new lama instance."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Import a ONE instance's file store. Secret: $LAMA_SECRET or a hidden prompt."""
        from lama.migrate import cli as mig

        mig.run_import(one_dir, dir, read_secret(), as_json)

    @app.command("export-one")
    def export_one_cmd(
        one_dir: str = typer.Argument(..., help="Base directory for the ONE instance."),
        dir: str = typer.Option(..., "--dir", help="lama instance directory (or its base directory)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Write a lama instance in ONE's file-store layout. Secret: $LAMA_SECRET or a prompt."""
        from lama.migrate import cli as mig

        mig.run_export(dir, one_dir, read_secret(), as_json)

    @app.command("comm-server")
    def comm_server_cmd(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
        port: int = typer.Option(8000, "--port", help="Port to bind (0: any free port)."),
        ping_interval: float = typer.Option(25.0, "--ping-interval", help="Seconds between pings of a spare."),
        pong_timeout: float = typer.Option(1.0, "--pong-timeout", help="Seconds a pong may take."),
        auth_timeout: float = typer.Option(10.0, "--auth-timeout", help="Seconds to authenticate."),
        nats: str = typer.Option(None, "--nats", help="NATS URL: run as a node of a comm-server "
                                 "cluster (docs/cluster.md)."),
        advertise: str = typer.Option(None, "--advertise", help="URL other cluster nodes reach "
                                      "this node at (default: its ws://host:port)."),
        lookup_rate: float = typer.Option(20.0, "--lookup-rate", help="Cluster lookups one client "
                                          "address may cause per second (docs/cluster.md §4)."),
        lookup_burst: int = typer.Option(40, "--lookup-burst", help="Cluster lookups one client "
                                         "address may cause in a burst."),
        lookups_in_flight: int = typer.Option(64, "--lookups-in-flight", help="Cluster lookups "
                                              "of the whole node at once."),
        metrics: str = typer.Option(
            None, "--metrics", help="Serve Prometheus /metrics on HOST:PORT (loopback only; "
            "$LAMA_METRICS_TOKEN, if set, is required as a bearer token; docs/metrics.md)."),
        metrics_allow_remote: bool = typer.Option(
            False, "--metrics-allow-remote",
            help="Allow a non-loopback --metrics address (needs $LAMA_METRICS_TOKEN)."),
        mailbox: str = typer.Option(None, "--mailbox", help="Directory of the store-and-forward "
                                    "mailbox (docs/mailbox.md); none: no mailbox, as ONE."),
        mailbox_max_items: int = typer.Option(1000, "--mailbox-max-items", help="Items per recipient."),
        mailbox_max_bytes: int = typer.Option(64 << 20, "--mailbox-max-bytes", help="Bytes per recipient."),
        mailbox_ttl: float = typer.Option(7 * 86400.0, "--mailbox-ttl", help="Seconds an item is kept."),
        mailbox_total_items: int = typer.Option(100_000, "--mailbox-total-items",
                                                help="Items across all recipients."),
        mailbox_total_bytes: int = typer.Option(1 << 30, "--mailbox-total-bytes",
                                                help="Bytes across all recipients."),
        log_level: str = typer.Option(
            None, "--log-level", help="Log level: debug|info|warning|error (default: "
                                      "$LAMA_LOG_LEVEL or info); logs go to stderr."),
        log_format: str = typer.Option(
            None, "--log-format", help="Log format: json (JSON lines) or text (default: "
                                       "$LAMA_LOG_FORMAT or json)."),
    ) -> None:
        """Run a comm server (the reference's relay protocol) until SIGINT or SIGTERM."""
        import asyncio

        from lama import log as lama_log
        from lama.errors import InvalidArgumentError
        from lama.web.http import is_loopback, parse_address

        lama_log.configure(log_level, log_format)  # docs/tracing.md §7

        address = None
        if metrics:
            address = parse_address(metrics, allow_remote=metrics_allow_remote,
                                    option="--metrics")
            if not is_loopback(address[0]) and not os.environ.get("LAMA_METRICS_TOKEN"):
                raise InvalidArgumentError("--metrics on a non-loopback address needs a token "
                                           "in $LAMA_METRICS_TOKEN", code="LAMA-HTTP-ADDRESS")
        mb = {} if mailbox is None else {
            "mailbox_dir": mailbox, "mailbox_max_items": mailbox_max_items,
            "mailbox_max_bytes": mailbox_max_bytes, "mailbox_ttl": mailbox_ttl,
            "mailbox_total_items": mailbox_total_items, "mailbox_total_bytes": mailbox_total_bytes}
        if advertise and not nats:
            _fail("--advertise needs --nats", 2)
        if not nats and (lookup_rate, lookup_burst, lookups_in_flight) != (20.0, 40, 64):
            _fail("--lookup-rate, --lookup-burst and --lookups-in-flight need --nats", 2)
        if nats:  # docs/cluster.md
            mb.update(nats=nats, advertise=advertise, lookup_rate=lookup_rate,
                      lookup_burst=lookup_burst, lookups_in_flight=lookups_in_flight)
        try:
            asyncio.run(_run_comm_server(host, port, ping_interval, pong_timeout, auth_timeout,
                                         address, **mb))
        except (LamaError, OSError) as e:  # e.g. NATS unreachable at the start
            _fail(str(e), 1)

    return app


COMM_SERVER_ENV = "LAMA_COMM_SERVER"
DEFAULT_COMM_SERVER = "ws://localhost:8000"


def _comm_server(option: str | None) -> str:
    return option or os.environ.get(COMM_SERVER_ENV) or DEFAULT_COMM_SERVER


def _run_async(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _fmt_time(ms: Any) -> str:
    import datetime

    if not isinstance(ms, (int, float)):
        return "?"
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_message(m: dict[str, Any]) -> str:
    """One line per message: time, sender, text (escaped), attachments."""
    who = m.get("sender_name") or m.get("sender", "")[:16]
    line = f"{_fmt_time(m.get('timestamp'))}  {escape(who)}: {escape(m.get('text', ''))}"
    for a in m.get("attachments") or []:
        line += f"  [{escape(a.get('name') or '')}, {a.get('size')} bytes]"
    return line


def _ago(t: Any) -> str:
    import time

    if not isinstance(t, (int, float)):
        return "never"
    return f"{max(0.0, time.time() - t):.1f} s ago"


def _status_lines(st: dict[str, Any]) -> list[str]:
    rows = [("person", f"{st['person_id']} ({escape(st.get('name') or '')} "
                       f"<{escape(st.get('email') or '')}>)"),
            ("instance", f"{st['instance_id']} ({escape(st.get('instance_name') or '')})"),
            ("serving", "yes" if st.get("serving") else "no (lama serve is not running)"),
            ("comm server", f"{st.get('comm_server')} "
                            f"({'online' if st.get('online') else 'offline'})"),
            ("connections", f"{st['active']} of {st['total']} contacts connected "
                            f"({st['status']})"),
            ("last sync", _ago(st.get("last_sync")))]
    lat = st.get("average_latency")
    if lat is not None:
        rows.append(("average latency", f"{lat * 1000:.1f} ms"))
    out = [f"{label + ':':<18}{value}" for label, value in rows]
    for p in st.get("peers") or []:
        state = "connected" if p["connected"] else "disconnected"
        if not p["enabled"]:
            state = "disabled"
        extra = f", latency {p['latency'] * 1000:.1f} ms" if p.get("latency") else ""
        if p.get("last_error") and not p["connected"]:
            extra += f", last error: {escape(p['last_error'])}"
        out.append(f"  {escape(p.get('name') or p['person_id'][:16])}: {state}"
                   f" (since {_ago(p.get('since'))}, last sync {_ago(p.get('last_sync'))}, "
                   f"{p['reconnect_attempts']} reconnect attempts{extra})")
    return out


async def _client(dir: str, op: str, *, on_item: Any = None, on_info: Any = None,
                  **args: Any) -> dict[str, Any]:
    """Run one control request: through the running ``lama serve`` of the instance if there is
    one (lama.control), else in this process on the instance opened with the secret (the same
    handler; ``messages --follow`` then starts the connections itself, ``send`` only stores:
    the message goes out when the instance next runs)."""
    import asyncio

    from lama import control
    from lama.identity.layout import find_instance_dir

    from lama.serve import stop_on_signals

    path = find_instance_dir(dir)
    stop = asyncio.Event()
    stop_on_signals(stop)  # not loop.add_signal_handler alone: it can lose a Ctrl-C under load
    result: dict[str, Any] = {}

    async def take(msg: dict[str, Any]) -> None:
        if "item" in msg and on_item is not None:
            on_item(msg["item"])
        elif "info" in msg and on_info is not None:
            on_info(msg["info"])
        elif msg.get("ok"):
            result.update(msg)

    async def remote() -> None:
        async for msg in control.stream(path, op, **args):
            await take(msg)

    if control.server_running(path):
        task = asyncio.ensure_future(remote())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not task.done():
            task.cancel()
            with __import__("contextlib").suppress(asyncio.CancelledError):
                await task
        else:
            task.result()
        if op == "status":
            result["status"]["serving"] = True
        return result
    from lama.app import App, AppConfig
    from lama.serve import handle

    app = await App.open(path, read_secret(), config=AppConfig(comm_server_url=_comm_server(None)))
    try:
        if op == "messages" and args.get("follow"):
            await app.start()
        await handle(app, {"op": op, **args}, take, stop)
    finally:
        await app.close()
    if op == "status":
        result["status"]["serving"] = False
    return result


async def _serve(dir: str, secret: str, email: str | None, instance_name: str | None,
                 cfg: Any, as_json: bool, http: tuple[str, int] | None = None) -> None:
    """``lama serve``: the instance with its connections until SIGINT/SIGTERM; prints what
    happens (connections, syncs, messages) as lines or JSON lines."""
    import time

    from lama import control
    from lama.app import App
    from lama.errors import StoreError
    from lama.identity.layout import find_instance_dir
    from lama.serve import run_server

    path = find_instance_dir(dir, email=email, instance_name=instance_name)
    if control.server_running(path):
        raise StoreError(f"lama serve runs already for {path}", code="LAMA-SERVE-RUNNING")
    app = await App.open(path, secret, config=cfg)
    diag = None
    if http is not None:  # the diagnostics page and /metrics (docs/metrics.md)
        from lama.web.diag import DiagnosticsServer

        diag = DiagnosticsServer(app, *http, token=os.environ.get("LAMA_HTTP_TOKEN") or None)
    names: dict[str, str] = {}

    # on a terminal a large sync is a rich progress bar per contact (objects of the total the
    # CHUM pass listed, objects/s; lama.progress); its result stays as an ordinary line
    from lama.progress import SyncBars, use_bars

    bars = None if as_json else SyncBars(lambda p: name(p), bars=use_bars(sys.stdout))
    progress = bars.progress if bars is not None else None

    def say(kind: str, text: str, **data: Any) -> None:
        if as_json:
            print(json.dumps({"event": kind, "time": time.time(), **data}), flush=True)
        elif bars is not None:
            bars.line(f"{time.strftime('%H:%M:%S')} {text}")

    def name(person: Any) -> str:
        if person and person not in names:
            with __import__("contextlib").suppress(Exception):
                names[person] = app.contact(person).name or person[:16]
        return escape(names.get(person, str(person)[:16]))

    def on_event(kind: str, data: dict[str, Any]) -> None:
        person = data.get("person") or data.get("remote_person")
        if not person and data.get("peer"):  # connection_down names the instance key only
            for ep in app.manager.known_endpoints():
                if ep.remote_key.hex() == data["peer"]:
                    person = ep.person_id
        if kind == "connection_up":
            say(kind, f"connected to {name(person)}", person=person)
        elif kind == "connection_down":
            say(kind, f"disconnected from {name(person)}: {escape(data.get('reason') or '')}",
                person=person, reason=data.get("reason"))
        elif kind == "pairing_success" and data.get("device"):
            say("device", f"a new device of mine joined: instance "
                          f"{escape(str(data.get('remote_instance'))[:16])}",
                person=person, instance=data.get("remote_instance"))
        elif kind == "pairing_success":
            say("paired", f"paired with {name(person)}", person=person)
        elif kind == "online_state":
            say("online", "online at the comm server" if data.get("online") else "offline",
                online=bool(data.get("online")))
        if bars is not None and kind in ("sync", "connection_down"):
            bars.on_event(kind, {**data, "person": person})
        if kind == "sync" and data.get("state") == "imported" and progress is None:
            say("sync", f"received {data.get('objects')} objects from {name(person)}",
                person=person, objects=data.get("objects"))

    def on_message(m: Any) -> None:
        d = app.message_dict(m)
        say("message", _fmt_message(d), message=d)

    def ready(server: Any) -> None:
        st = app.status()
        say("ready", f"serving {escape(st['name'] or '')} <{escape(st['email'])}> "
                     f"({st['person_id'][:16]}) at {cfg.comm_server_url}; "
                     f"{st['contacts']} contacts; control port {server.port}",
            person_id=st["person_id"], instance_id=st["instance_id"],
            control_port=server.port, pid=os.getpid())
        if diag is not None:
            say("http", f"diagnostics at {diag.link}", http_url=diag.url, http_link=diag.link)

    app.on_message(on_message)
    try:
        await run_server(app, on_ready=ready, on_event=on_event, diagnostics=diag)
    finally:
        if bars is not None:
            bars.close()
    say("stopped", "stopped")


def _contact_lines(outcome: Any, chum_up: float | None, chum_wait: float) -> list[str]:
    rows = [("paired with person", outcome.remote_person),
            ("instance", outcome.remote_instance),
            ("instance public key", outcome.remote_key.hex())]
    details = outcome.details
    for attr, label in (("remote_email", "email"), ("remote_instance_name", "instance name")):
        value = getattr(details, attr, None)
        if value:
            rows.append((label, value))
    if chum_wait > 0:
        rows.append(("chum", "connected %.0f ms after the pairing" % (chum_up * 1000)
                     if chum_up is not None
                     else f"not connected within {chum_wait:g} s"))
    return [f"{label + ':':<26}{escape(value)}" for label, value in rows]


def _report(outcome: Any, chum_up: float | None, chum_wait: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "person_id": outcome.remote_person, "instance_id": outcome.remote_instance,
            "instance_public_key": outcome.remote_key.hex(),
            "initiated_locally": outcome.initiated_locally,
            "chum_connected_after": chum_up,
        }, indent=2, sort_keys=True))
    else:
        print("\n".join(_contact_lines(outcome, chum_up, chum_wait)))
    sys.stdout.flush()


class _ChumWatch:
    """Times the CHUM connection with the new contact from the manager's events: subscribed
    before the pairing starts, so a connection that comes and goes between two polls is not
    missed."""

    def __init__(self, manager: Any) -> None:
        import asyncio
        import time

        self._time = time.monotonic
        self.paired_at: float | None = None
        self.up: dict[str, float] = {}
        self.synced: dict[str, asyncio.Event] = {}
        manager.subscribe(self._on)

    def _event(self, person: str) -> Any:
        import asyncio

        return self.synced.setdefault(person, asyncio.Event())

    def _on(self, kind: str, data: dict[str, Any]) -> None:
        person = data.get("person")
        if kind == "pairing_success" and self.paired_at is None:
            self.paired_at = self._time()
        elif kind == "connection_up" and person and person not in self.up:
            self.up[person] = self._time()
        elif kind == "sync" and person and data.get("state") == "full_sync":
            self._event(person).set()

    async def wait(self, person: str, chum_wait: float) -> float | None:
        """Seconds from the pairing to the CHUM connection with ``person``, or None. Waits
        (at most ``chum_wait`` s) until the first full CHUM pass with it is done, so that
        leaving right after does not cut the peer's first sync short."""
        import asyncio

        if chum_wait <= 0:
            return None
        try:
            await asyncio.wait_for(self._event(person).wait(), chum_wait)
        except asyncio.TimeoutError:
            pass
        if person not in self.up or self.paired_at is None:
            return None
        return max(0.0, self.up[person] - self.paired_at)


async def _invite(inst: Any, url: str, lifetime: float, png: str | None, chum_wait: float,
                  as_json: bool, device: bool = False) -> None:
    import asyncio

    from lama.connect.manager import ConnectionManager, ManagerConfig
    from lama.errors import PairingError

    manager = ConnectionManager(inst, ManagerConfig(comm_server_url=url,
                                                    pairing_token_lifetime=lifetime))
    watch = _ChumWatch(manager)
    chat = None
    if device:  # the new device gets my contacts (lama.connect.device)
        from lama.chat import Chat

        chat = Chat(inst, events=False)
        manager.device_contacts = lambda: [str(c.person_id) for c in chat.contacts()]
    try:
        await manager.start()
        if not await manager.wait_online(10.0):
            print(f"warning: not yet registered at the comm server {url}; the invitation "
                  "works once it is", file=sys.stderr)
        inv = manager.create_invitation(device=device)
        link = inv.to_link(device=device)
        if png:
            with open(png, "wb") as f:
                f.write(inv.qr_png(device=device))
        print(link)
        print(inv.qr_text(device=device))
        if device:
            print("this link makes its holder a device of yours: give it to nobody else",
                  file=sys.stderr)
        print(f"waiting for the invitation to be accepted (token valid {lifetime:g} s) ...",
              file=sys.stderr)
        sys.stdout.flush()
        try:
            outcome = await manager.wait_pairing(timeout=lifetime)
        except asyncio.TimeoutError:
            raise PairingError(f"the invitation expired after {lifetime:g} s without a pairing",
                               code="LAMA-PAIR-TIMEOUT") from None
        if device:  # the new device is not running yet: nothing to wait for
            _report_device(outcome.remote_person, outcome.remote_instance, as_json)
            return
        _ensure_contact(inst, outcome.remote_person)
        chum_up = await watch.wait(outcome.remote_person, chum_wait)
        _report(outcome, chum_up, chum_wait, as_json)
    finally:
        await manager.close()
        if chat is not None:
            chat.close()


def _report_device(person: str, instance: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"device": True, "person_id": person, "instance_id": instance},
                         indent=2, sort_keys=True))
    else:
        print(f"{'new device of person:':<26}{escape(person)}")
        print(f"{'instance:':<26}{escape(instance)}")
    sys.stdout.flush()


async def _join(dir: str, inv: Any, secret: str, instance_name: str, url: str,
                as_json: bool) -> None:
    """``lama init --join``: the new device's side of lama.connect.device, then the chat
    layer's contacts for the contacts that came along."""
    from lama.connect import device

    print(f"joining the device at {inv.url} ...", file=sys.stderr)
    joined = await device.join_device(dir, inv, secret=secret, instance_name=instance_name,
                                      url=url)
    inst = joined.instance
    try:
        for person in joined.contacts:
            _ensure_contact(inst, person)
        if as_json:
            print(json.dumps({**inst.info.as_dict(), "joined": {
                "device": joined.inviter_instance,
                "device_name": joined.inviter_instance_name,
                "contacts": joined.contacts}}, indent=2, sort_keys=True))
        else:
            print("\n".join(_identity_lines(inst.info)))
            print(f"{'joined the device:':<26}{escape(joined.inviter_instance_name)} "
                  f"({escape(joined.inviter_instance[:16])})")
            print(f"{'contacts:':<26}{len(joined.contacts)}")
            print("run `lama serve` on this device: it connects to your other devices and "
                  "receives your conversations", file=sys.stderr)
        sys.stdout.flush()
    finally:
        inst.close()


async def _accept(inst: Any, url: str, inv: Any, chum_wait: float, as_json: bool) -> None:
    from lama.connect.manager import ConnectionManager, ManagerConfig

    manager = ConnectionManager(inst, ManagerConfig(comm_server_url=url))
    watch = _ChumWatch(manager)
    try:
        await manager.start()
        outcome = await manager.accept_invitation(inv)
        _ensure_contact(inst, outcome.remote_person)
        chum_up = await watch.wait(outcome.remote_person, chum_wait)
        _report(outcome, chum_up, chum_wait, as_json)
    finally:
        await manager.close()


def _served_dir(dir: str, email: str | None, instance_name: str | None) -> Any:
    """The instance directory if a ``lama serve`` runs for it, else None. ``invite`` and
    ``accept`` then pair through it: a second connection manager on the same instance key
    beside the server's would pair behind its back (the server's chat layer never created
    the contact, so ``lama send`` found none until the next start)."""
    from lama import control
    from lama.identity.layout import find_instance_dir

    path = find_instance_dir(dir, email=email, instance_name=instance_name)
    return path if control.server_running(path) else None


def _ensure_contact(inst: Any, person: str) -> None:
    """The chat layer's on-paired hook (docs/chat.md §2: contact, 1-to-1 topic, grants) for a
    pairing made without ``lama serve``, so ``lama contacts``/``send`` find the contact at
    once and the first sync already carries the topic (``App.start`` runs the same hook for
    pairings it finds, idempotently)."""
    from lama.chat import Chat

    chat = Chat(inst, events=False)
    try:
        chat.on_paired(person)
    finally:
        chat.close()


def _print_served_contact(contact: dict[str, Any] | None, as_json: bool) -> None:
    if as_json:
        # person_id at the top as without lama serve; the contact as lama contacts --json
        # shows it (None for a device of my own person)
        print(json.dumps({"person_id": contact["person_id"] if contact else None,
                          "contact": contact, "via": "lama serve"}, indent=2, sort_keys=True))
    elif contact is None:
        print("paired with a device of my own person")
    else:
        print(f"{'paired with person:':<26}{escape(contact['person_id'])}")
        for key in ("name", "email"):
            if contact.get(key):
                print(f"{key + ':':<26}{escape(contact[key])}")
    sys.stdout.flush()


async def _invite_served(path: Any, lifetime: float, png: str | None, as_json: bool,
                         device: bool = False) -> None:
    from lama import control
    from lama.connect import pairing

    extra = {"device": True} if device else {}
    async for msg in control.stream(path, "invite", lifetime=lifetime, **extra):
        if "info" in msg:
            link = msg["info"]["link"]
            if png:
                with open(png, "wb") as f:
                    f.write(pairing.parse_invitation(link).qr_png(device=device))
            print(link)
            print(msg["info"]["qr"])
            print(f"waiting for the invitation to be accepted (token valid {lifetime:g} s; "
                  f"through lama serve) ...", file=sys.stderr)
            sys.stdout.flush()
        elif msg.get("ok") and device:
            d = msg.get("device") or {}
            _report_device(str(d.get("person_id")), str(d.get("instance_id")), as_json)
        elif msg.get("ok"):
            _print_served_contact(msg.get("contact"), as_json)


async def _accept_served(path: Any, inv: Any, as_json: bool) -> None:
    from lama import control

    res = await control.request(path, "accept", link=json.dumps(inv.to_json()))
    _print_served_contact(res.get("contact"), as_json)


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
