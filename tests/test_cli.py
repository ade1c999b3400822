"""The ``lama`` CLI (``lama.cli:main``): ``init`` and ``whoami``, run in a subprocess with
CI-safe stdin (``/dev/null``: nothing ever waits for a prompt)."""

from __future__ import annotations

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
