"""The ``lama`` CLI (``lama.cli:main``): ``init`` and ``whoami``, run in a subprocess with
CI-safe stdin (``/dev/null``: nothing ever waits for a prompt)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lama._core import core
from lama.identity.instance import Instance, calculate_instance_id_hash

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-secret-7f3a"
EMAIL = "carol@example.com"


def run(*args: str, secret: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LAMA_SECRET"}
    env["PYTHONPATH"] = str(ROOT / "python") + os.pathsep + env.get("PYTHONPATH", "")
    if secret is not None:
        env["LAMA_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "lama.cli", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        start_new_session=True,  # no controlling terminal: getpass could not open /dev/tty
    )


def fields(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def init(base: Path, instance_name: str = "carol-laptop") -> subprocess.CompletedProcess[str]:
    return run("init", "--dir", str(base), "--name", "Carol", "--email", EMAIL,
               "--instance-name", instance_name, secret=SECRET)


def test_init_and_whoami(tmp_path: Path) -> None:
    r = init(tmp_path)
    assert r.returncode == 0, r.stderr
    person_id = core.id_hash({"$type$": "Person", "email": EMAIL})
    instance_id = core.id_hash({"$type$": "Instance", "name": "carol-laptop", "owner": person_id})
    f = fields(r.stdout)
    assert f["person id"] == person_id and f["instance id"] == instance_id
    assert f["email"] == EMAIL and f["person name"] == "Carol" and f["instance name"] == "carol-laptop"
    assert (tmp_path / calculate_instance_id_hash("carol-laptop", EMAIL) / "instance.json").is_file()

    # whoami reads public data only: no secret needed
    w = run("whoami", "--dir", str(tmp_path))
    assert w.returncode == 0, w.stderr
    assert fields(w.stdout) == f
    j = run("whoami", "--dir", str(tmp_path), "--json")
    data = json.loads(j.stdout)
    assert data["person_id"] == person_id and data["instance_id"] == instance_id
    # the printed keys are the instance's keys
    with Instance.open(tmp_path, SECRET) as inst:
        assert data["person_public_sign_key"] == inst.person_public_sign_key.hex()
        assert data["instance_public_key"] == inst.instance_public_key.hex()
        assert data["person_keys"] == inst.person_keys
        assert inst.person_name == "Carol"
    # --check-secret unlocks the keychain
    c = run("whoami", "--dir", str(tmp_path), "--check-secret", secret=SECRET)
    assert c.returncode == 0, c.stderr
    assert fields(c.stdout) == f
    # the secret is never printed, nor stored in clear anywhere
    for proc in (r, w, j, c):
        assert SECRET not in proc.stdout + proc.stderr
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes()


def test_missing_secret_without_tty_fails_fast(tmp_path: Path) -> None:
    r = run("init", "--dir", str(tmp_path), "--name", "Carol", "--email", EMAIL, timeout=30)
    assert r.returncode == 2
    assert "LAMA_SECRET" in r.stderr
    assert list(tmp_path.iterdir()) == []
    init(tmp_path)
    c = run("whoami", "--dir", str(tmp_path), "--check-secret", timeout=30)
    assert c.returncode == 2 and "LAMA_SECRET" in c.stderr
    e = run("init", "--dir", str(tmp_path / "x"), "--name", "C", "--email", EMAIL, secret="")
    assert e.returncode == 2 and "empty" in e.stderr


def test_wrong_secret(tmp_path: Path) -> None:
    init(tmp_path)
    r = run("whoami", "--dir", str(tmp_path), "--check-secret", secret="wrong-secret-99")
    assert r.returncode == 1
    assert "CYENC-SYMDEC" in r.stderr
    assert "wrong-secret-99" not in r.stderr + r.stdout and SECRET not in r.stderr
    assert "Traceback" not in r.stderr


def test_errors(tmp_path: Path) -> None:
    assert init(tmp_path).returncode == 0
    again = init(tmp_path)
    assert again.returncode == 1 and "LAMA-INSTANCE-EXISTS" in again.stderr
    none = run("whoami", "--dir", str(tmp_path / "empty"))
    assert none.returncode == 1 and "LAMA-NOINSTANCE" in none.stderr
    assert init(tmp_path, "second").returncode == 0
    amb = run("whoami", "--dir", str(tmp_path))
    assert amb.returncode == 1 and "LAMA-AMBIGUOUS" in amb.stderr
    pick = run("whoami", "--dir", str(tmp_path), "--email", EMAIL, "--instance-name", "second")
    assert pick.returncode == 0 and fields(pick.stdout)["instance name"] == "second"
    # the secret is never an argument
    arg = run("init", "--dir", str(tmp_path / "y"), "--name", "C", "--email", EMAIL,
              "--secret", SECRET)
    assert arg.returncode == 2
    assert not (tmp_path / "y").exists()
    missing = run("init", "--dir", str(tmp_path / "z"), "--email", EMAIL, secret=SECRET)
    assert missing.returncode == 2 and "--name" in missing.stderr


def test_main_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The console-script entry point ``lama.cli:main`` (declared in pyproject.toml)."""
    from lama import cli

    monkeypatch.setenv("LAMA_SECRET", SECRET)
    with pytest.raises(SystemExit) as e:
        cli.main(["init", "--dir", str(tmp_path), "--name", "Carol", "--email", EMAIL,
                  "--instance-name", "inproc", "--json"])
    assert e.value.code in (0, None)
    data = json.loads(capsys.readouterr().out)
    assert data["instance_name"] == "inproc"
    monkeypatch.delenv("LAMA_SECRET")
    with pytest.raises(SystemExit) as e2:
        cli.main(["whoami", "--dir", str(tmp_path), "--json"])
    assert e2.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["person_id"] == data["person_id"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'lama = "lama.cli:main"' in pyproject


# --- bad input: one-line errors, nothing created ----------------------------------------------


# Most cases run lama.cli.main in-process (a subprocess per case costs a Python start-up);
# the subprocess cases above and a few below show the same through the real entry point.


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``main(*args, secret=...)``: lama.cli.main in-process; an exception other than
    SystemExit (a traceback for a user) fails the test."""
    from lama import cli

    def call(*args: str, secret: str | None = SECRET) -> Result:
        if secret is None:
            monkeypatch.delenv("LAMA_SECRET", raising=False)
        else:
            monkeypatch.setenv("LAMA_SECRET", secret)
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: never prompt
        capsys.readouterr()
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else int(e.code)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return call


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line_error(r: Result | subprocess.CompletedProcess[str], code: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert r.stderr.startswith(f"error: {code}: ") and r.stderr.count("\n") == 1, r.stderr


def test_init_dir_is_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("keep me")
    for target in (f, f / "below"):
        r = run("init", "--dir", str(target), "--name", "Carol", "--email", EMAIL,
                "--instance-name", "x", secret=SECRET)
        assert_one_line_error(r, "LAMA-NOTDIR")
        assert str(f) in r.stderr
    assert tree(tmp_path) == ["file"] and f.read_text() == "keep me"


BAD_EMAILS = [
    "not an email",
    "   ",
    "",
    "carol@example.com\nperson id:                forged",
    "carol@example.com\r",
    "carol\t@example.com",
    "carol@exam\u202eple.com",  # a bidi override would disguise the address
    "carol@exam\u200bple.com",  # zero-width space
    "no-at-sign.example.com",
    "two@at@example.com",
    "@example.com",
    "carol@",
    ".carol@example.com",
    "carol.@example.com",
    "ca..rol@example.com",
    "carol@example..com",
    "carol@.example.com",
    "carol@example.com.",
    "carol@-example.com",
    "carol@example-.com",
    "carol@exa_mple.com",
    "ca<rol>@example.com",
    "ca(rol)@example.com",
    'ca"rol@example.com',
    "ca\\rol@example.com",
    "c" * 65 + "@example.com",
    "carol@" + "d" * 64 + ".com",
    "c@" + ".".join(["d" * 60] * 5),  # 306 characters
]


@pytest.mark.parametrize("email", BAD_EMAILS, ids=range(len(BAD_EMAILS)))
def test_init_rejects_bad_email(tmp_path: Path, email: str, main) -> None:
    r = main("init", "--dir", str(tmp_path / "new"), "--name", "Carol", "--email", email,
             "--instance-name", "x")
    assert_one_line_error(r, "LAMA-EMAIL")
    assert tree(tmp_path) == []


def test_init_rejects_bad_email_subprocess(tmp_path: Path) -> None:
    """Through the real entry point: the newline email cannot forge a line of output."""
    r = run("init", "--dir", str(tmp_path / "new"), "--name", "Carol", "--email", BAD_EMAILS[3],
            "--instance-name", "x", secret=SECRET)
    assert_one_line_error(r, "LAMA-EMAIL")
    assert "\\n" in r.stderr
    assert tree(tmp_path) == []


GOOD_EMAILS = ["alice@localhost", "jürgen.ß@exämple.de", "a&b+tag!#$%'*/=?^_`{|}~-x@x-1.example",
               "c" * 64 + "@" + "d" * 63 + ".example"]


@pytest.mark.parametrize("email", GOOD_EMAILS, ids=range(len(GOOD_EMAILS)))
def test_init_accepts_unusual_valid_email(tmp_path: Path, email: str, main) -> None:
    r = main("init", "--dir", str(tmp_path), "--name", "C", "--email", email,
             "--instance-name", "x")
    assert r.returncode == 0, r.stderr
    assert fields(r.stdout)["email"] == email


@pytest.mark.parametrize(
    "option,value",
    [("--instance-name", ""), ("--instance-name", "   "), ("--instance-name", "a\nb"),
     ("--instance-name", "a\x1b[2Jb"), ("--name", ""), ("--name", " \t "), ("--name", "Eve\nperson id: x")],
)
def test_init_rejects_bad_names(tmp_path: Path, option: str, value: str, main) -> None:
    args = {"--name": "Carol", "--instance-name": "x"}
    args[option] = value
    r = main("init", "--dir", str(tmp_path / "new"), "--email", EMAIL,
             *[a for kv in args.items() for a in kv])
    assert_one_line_error(r, "LAMA-ARG")
    assert option in r.stderr
    assert tree(tmp_path) == []


def test_missing_instance_name_defaults_to_host_name(tmp_path: Path, main) -> None:
    import socket

    r = main("init", "--dir", str(tmp_path), "--name", "Carol", "--email", EMAIL)
    assert r.returncode == 0, r.stderr
    assert fields(r.stdout)["instance name"] == (socket.gethostname() or "lama")


def test_bad_input_is_rejected_before_the_secret_is_asked(tmp_path: Path, main) -> None:
    """No secret available (no $LAMA_SECRET, no terminal): the input error is still the one
    reported, so a user at a prompt is not asked for a secret that cannot be used."""
    r = main("init", "--dir", str(tmp_path), "--name", "C", "--email", "not an email",
             secret=None)
    assert_one_line_error(r, "LAMA-EMAIL")
    f = tmp_path / "f"
    f.write_text("")
    r = main("init", "--dir", str(f), "--name", "C", "--email", EMAIL, "--instance-name", "x",
             secret=None)
    assert_one_line_error(r, "LAMA-NOTDIR")
    assert tree(tmp_path) == ["f"]


def test_whoami_escapes_stored_values(tmp_path: Path) -> None:
    """instance.json may have been written by anything: no stored value can add a line,
    send a terminal escape sequence or hide text behind a bidi override."""
    assert init(tmp_path).returncode == 0
    [info_file] = tmp_path.glob("*/instance.json")
    data = json.loads(info_file.read_text())
    data["person_name"] = "Eve\nperson id:                forged"
    data["instance_name"] = "lap\x1b[2Jtop\u2028\\n"
    data["email"] = "eve@exam\u202eple.com\x00"
    info_file.write_text(json.dumps(data))
    w = run("whoami", "--dir", str(tmp_path))
    assert w.returncode == 0, w.stderr
    lines = w.stdout.splitlines()
    assert len(lines) == 12 and len(w.stdout.split("\n")) == 13
    f = fields(w.stdout)
    assert f["person name"] == "Eve\\nperson id:                forged"
    assert f["instance name"] == "lap\\x1b[2Jtop\\u2028\\\\n"
    assert f["email"] == "eve@exam\\u202eple.com\\x00"
    assert "\x1b" not in w.stdout and "\u202e" not in w.stdout and "\x00" not in w.stdout
    assert [line.split(":")[0] for line in lines].count("person id") == 1
    # --json stays exact (JSON escapes everything itself)
    j = json.loads(run("whoami", "--dir", str(tmp_path), "--json").stdout)
    assert (j["person_name"], j["instance_name"], j["email"]) == (
        data["person_name"], data["instance_name"], data["email"])


def test_error_messages_are_one_line(tmp_path: Path, main) -> None:
    r = main("whoami", "--dir", str(tmp_path / "no\nsuch\x1b[2J"))
    assert_one_line_error(r, "LAMA-NOINSTANCE")
    assert "no\\nsuch\\x1b[2J" in r.stderr
