"""Tests for ``oauthmail check-config``: exit 2 and one line for a bad file, a summary otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oauthmail import cli

CONFIGS = Path(__file__).parent / "configs"
BROKEN = sorted((CONFIGS / "broken").glob("*.yaml"))
ROOT = Path(__file__).parent.parent

#: Broken files run through a real subprocess (the rest go through main()).
SUBPROCESS_CASES = [
    "yaml-syntax",
    "unknown-imap-key",
    "pop3-key",
    "oauth1-version",
    "account-imap-port-name",
    "missing-env-var",
]


def expected(path: Path, shownAs: str) -> str:
    """The ``# expect:`` line of a broken file, for the file name ``shownAs``."""
    first = path.read_text().splitlines()[0]
    return first[len("# expect: ") :].replace("{file}", shownAs)


@pytest.fixture
def tableEnv(monkeypatch):
    """The environment the broken table expects, in this process."""
    monkeypatch.setenv("OAUTHMAIL_TEST_SET", "value")
    monkeypatch.delenv("OAUTHMAIL_TEST_UNSET", raising=False)


def childEnv(**extra: str) -> dict[str, str]:
    """A minimal environment for ``python -m oauthmail.cli`` (no client ids, no secrets)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_main_broken_config(path, capsys, tableEnv):
    """main() exits 2 with exactly the one-line message on stderr and nothing on stdout."""
    status = cli.main(["check-config", str(path)])
    out, err = capsys.readouterr()
    assert status == 2
    assert err == expected(path, str(path)) + "\n"
    assert "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_subprocess_broken_config(name):
    """python -m oauthmail.cli check-config exits 2 with one line and no traceback."""
    path = CONFIGS / "broken" / f"{name}.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        env=childEnv(OAUTHMAIL_TEST_SET="value"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [expected(path, str(path))]
    assert result.stdout == ""


def test_subprocess_shipped_example_with_empty_environment():
    """The shipped conf/app.yaml checks out with no environment: accounts not configured."""
    result = subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "check-config"],
        capture_output=True,
        text=True,
        env=childEnv(),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("conf/app.yaml: OK, ")
    assert "helpdesk" in result.stdout
    assert "not configured: set client_id in profiles.gmail" in result.stdout


def test_subprocess_missing_file():
    """A missing file is one line on stderr and exit status 2."""
    result = subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "check-config", "no/such/app.yaml"],
        capture_output=True,
        text=True,
        env=childEnv(),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "no/such/app.yaml: cannot read the configuration file: No such file or directory\n"
    )


def test_main_summary_lists_accounts(tmp_path, capsys):
    """A good file prints one line per account: name, address, profile and status."""
    path = tmp_path / "app.yaml"
    path.write_text(
        "profiles:\n"
        "  g: {provider: google, client_id: abc, client_secret: s}\n"
        "  m: {provider: microsoft, client_id: ''}\n"
        "accounts:\n"
        "  - {name: helpdesk, address: helpdesk@example.com, profile: g, imap: {}}\n"
        "  - {name: reports, address: reports@example.com, profile: m, smtp: {}}\n"
    )
    status = cli.main(["check-config", str(path)])
    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""
    assert out.splitlines() == [
        f"{path}: OK, 2 accounts, 2 profiles",
        "  helpdesk  helpdesk@example.com  profile g (google, authorization_code, imap)"
        "  configured",
        "  reports   reports@example.com  profile m (microsoft, authorization_code, smtp)"
        "  not configured: set client_id in profiles.m",
    ]


def test_main_no_accounts(tmp_path, capsys):
    """A file without accounts is valid and says so."""
    path = tmp_path / "app.yaml"
    path.write_text("web: {port: 8026}\n")
    assert cli.main(["check-config", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "0 accounts" in out
    assert "no accounts" in out


def test_main_usage_error_exits_2(capsys):
    """An unknown subcommand is a usage error (exit 2), not a traceback."""
    assert cli.main(["no-such-command"]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err


def test_subcommand_registry():
    """check-config is in the dispatch table and a name cannot be registered twice."""
    assert "check-config" in cli.SUBCOMMANDS
    with pytest.raises(ValueError):
        cli.subcommand("check-config", help="again")(lambda args: 0)


def test_subprocess_shipped_example_with_the_secrets_set():
    """conf/app.yaml checks out with MS_CLIENT_SECRET and GOOGLE_CLIENT_ID set (issue 16)."""
    result = subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "check-config"],
        capture_output=True,
        text=True,
        env=childEnv(MS_CLIENT_SECRET="ms-secret", GOOGLE_CLIENT_ID="1234.apps.example"),
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "ms-secret" not in result.stdout
    assert "profile microsoft-device (microsoft, device_code" in result.stdout


def test_main_prints_the_notes_and_the_missing_secret(tmp_path, capsys):
    """Notes follow the account list, one line each; a missing secret is named as such."""
    path = tmp_path / "app.yaml"
    path.write_text(
        "profiles:\n"
        "  o: {provider: microsoft, tenant: consumers, client_id: x}\n"
        "  s: {provider: microsoft, client_id: x, client_auth: secret, client_secret: ''}\n"
        "accounts:\n"
        "  - {name: a, address: a@outlook.com, profile: o, imap: {}}\n"
        "  - {name: b, address: b@example.com, profile: s}\n"
    )
    assert cli.main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("  not configured: set client_secret in profiles.s")
    assert lines[3:] == [
        f"note: {path}:5: accounts[0].imap: Outlook.com turns IMAP off until the mailbox owner"
        " turns on 'Let devices and apps use IMAP' (Outlook.com Settings, Mail, Forwarding"
        " and IMAP)"
    ]


def test_main_refuses_sinks_the_daemon_would_refuse(tmp_path, capsys):
    """A maildir that is a file, a missing program, an unimportable object: one line each."""
    afile = tmp_path / "not-a-dir"
    afile.write_text("x")
    broken = tmp_path / "broken_sink_module.py"
    broken.write_text("raise RuntimeError('half-written module')\n")
    path = tmp_path / "app.yaml"
    path.write_text(
        "profiles:\n"
        "  g: {provider: google, client_id: abc, client_secret: s}\n"
        "accounts:\n"
        "  - {name: a, address: a@example.com, profile: g,"
        f" imap: {{sink: {{maildir: {afile}}}}}}}\n"
        "  - {name: b, address: b@example.com, profile: g,"
        " imap: {sink: {command: [/nonexistent/deliver]}}}\n"
        "  - {name: c, address: c@example.com, profile: g,"
        " imap: {sink: {python: 'no_such_module_xyz:Sink'}}}\n"
        "  - {name: d, address: d@example.com, profile: g,"
        " imap: {sink: {python: 'broken_sink_module:Sink'}}}\n"
        "  - {name: f, address: f@example.com, profile: g,"
        " imap: {sink: {python: 'os:sep'}}}\n"
        "  - {name: e, address: e@example.com, profile: g,"
        f" imap: {{sink: {{maildir: {tmp_path / 'fresh'}}}}}}}\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        status = cli.main(["check-config", str(path)])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_sink_module", None)
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.splitlines() == [
        f"{path}: account a: cannot receive mail: maildir sink: {afile} exists and is not a"
        " directory",
        f"{path}: account b: cannot receive mail: command sink: '/nonexistent/deliver' is not"
        " an executable",
        f"{path}: account c: cannot receive mail: python sink: cannot load"
        " 'no_such_module_xyz:Sink': ModuleNotFoundError: No module named 'no_such_module_xyz'",
        f"{path}: account d: cannot receive mail: python sink: importing"
        " 'broken_sink_module:Sink' failed: RuntimeError: half-written module",
        f"{path}: account f: cannot receive mail: python sink: 'os:sep' is neither an ISink"
        " provider nor callable",
    ]
    assert not (tmp_path / "fresh").exists()  # checked, not made


STORE_CONFIG = """\
profiles:
  local: {{provider: generic, authorization_endpoint: http://127.0.0.1:9/a,
          token_endpoint: http://127.0.0.1:9/t, client_id: x, scopes: [mail]}}
accounts:
  - {{name: alerts, address: alerts@example.com, profile: local}}
store: {{path: {path}, key_file: {key}}}
"""


def _storeConfig(tmp_path: Path, path: Path, key: Path) -> Path:
    config = tmp_path / "app.yaml"
    config.write_text(STORE_CONFIG.format(path=path, key=key))
    return config


def test_a_new_installation_passes_and_nothing_is_created(tmp_path, capsys):
    """No store and no key yet: the daemon creates both; check-config says OK, writes nothing."""
    config = _storeConfig(tmp_path, tmp_path / "var" / "s.sqlite", tmp_path / "var" / "s.key")
    assert cli.main(["check-config", str(config)]) == 0
    assert capsys.readouterr().out.startswith(f"{config}: OK, 1 account, 1 profile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.yaml"]


def test_store_problems_the_daemon_would_refuse(tmp_path, capsys):
    """A bad key, a directory for a store, a key file gone from a store: one line, exit 2."""
    from cryptography.fernet import Fernet

    store, key = tmp_path / "s.sqlite", tmp_path / "s.key"
    key.write_text("notakey\n")
    config = _storeConfig(tmp_path, store, key)
    assert cli.main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: store: the key in key file {key} is not a Fernet key")
    assert len(err.splitlines()) == 1

    config = _storeConfig(tmp_path, tmp_path, key)
    assert cli.main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"{config}: store: {tmp_path} is a directory, not an oauthmail store: fix store.path\n"
    )

    key.write_text(Fernet.generate_key().decode() + "\n")
    config = _storeConfig(tmp_path, store, key)
    subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "init-store", "--config", str(config)],
        env=childEnv(),
        capture_output=True,
        check=True,
        timeout=60,
    )
    key.write_text(Fernet.generate_key().decode() + "\n")  # another key: the store will not open
    assert cli.main(["check-config", str(config)]) == 2
    assert "different key" in capsys.readouterr().err
    key.unlink()
    assert cli.main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err == (
        f"{config}: store: key file {key} does not exist, but the store {store} does and its"
        " tokens need that key: fix store.key_file or restore the key\n"
    )
    assert not key.exists()
