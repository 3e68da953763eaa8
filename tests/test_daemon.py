"""The daemon as an operator runs it: ``twistd -n oauthmail --config FILE``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
TWISTD = [str(Path(sys.executable).parent / "twistd")]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _writeConfig(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "app.yaml"
    config.write_text(
        f"""
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: oauthmail-test
    scopes: [mail]
  later:
    provider: google
    client_id: ""
accounts:
  - name: helpdesk
    address: helpdesk@example.com
    profile: local
  - name: gmail
    address: gmail@example.com
    profile: later
store:
  path: {tmp_path}/var/oauthmail.sqlite
  key_file: {tmp_path}/var/oauthmail.key
web:
  port: {port}
"""
    )
    return config


def _get(url: str, deadline: float) -> tuple[int, bytes]:
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextlib.contextmanager
def _serving(config: Path, cwd: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``twistd oauthmail --config CONFIG`` answering on ``port``, stopped with SIGTERM after."""
    proc = subprocess.Popen(
        [*TWISTD, "--nodaemon", "--pidfile=", "oauthmail", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        cwd=cwd,
    )
    try:
        _get(f"http://127.0.0.1:{port}/health", time.monotonic() + 30)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _startRefused(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``twistd oauthmail --config CONFIG`` that is expected to stop before it runs."""
    return subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", "oauthmail", "--config", str(config)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=60,
    )


def test_twistd_lists_the_plugin() -> None:
    """``twistd --help`` names the oauthmail plugin and its ``--config`` option."""
    out = subprocess.run(
        [*TWISTD, "--help"], capture_output=True, text=True, env=_env(), check=True
    ).stdout
    assert "oauthmail" in out
    out = subprocess.run(
        [*TWISTD, "oauthmail", "--help"], capture_output=True, text=True, env=_env(), check=True
    ).stdout
    assert "--config" in out


#: twistd's text lines: ``2026-12-05T12:00:00+0000 [namespace#level] text``.
CLASSIC_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")


@pytest.mark.parametrize(
    "logger",
    [[], ["--logger", "oauthmail.logs.textLogger"]],
    ids=["twistd-observer", "as-scripts-run"],
)
def test_daemon_serves_console_and_stops_on_sigterm(tmp_path: Path, logger: list[str]) -> None:
    """The daemon serves the console with every account and shuts down cleanly on SIGTERM.

    Started as ``scripts/run`` starts it (our text observer) or plainly: the same
    lines either way, each in twistd's format, none lost at the stop.
    """
    port = _freePort()
    config = _writeConfig(tmp_path, port)
    log = tmp_path / "twistd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*TWISTD, "--nodaemon", "--pidfile=", *logger, "oauthmail", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=tmp_path,
        )
    try:
        status, body = _get(f"http://127.0.0.1:{port}/", time.monotonic() + 30)
        assert status == 200
        page = body.decode()
        assert "helpdesk@example.com" in page
        assert "unauthorised" in page
        assert "not configured" in page
        status, body = _get(f"http://127.0.0.1:{port}/health", time.monotonic() + 5)
        health = json.loads(body)
        assert [a["state"] for a in health["accounts"]] == ["unauthorised", "not_configured"]
        assert status == 503
        proc.send_signal(signal.SIGTERM)
        # twistd shuts down cleanly, then re-raises the signal so its parent
        # sees how it ended (what systemd and shells expect).
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = tmp_path / "var" / "oauthmail.sqlite"
    assert db.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "var" / "oauthmail.key").stat().st_mode & 0o777 == 0o600
    output = log.read_text()
    assert "Server Shut Down." in output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line and not line.startswith("\t")]
    assert lines and all(CLASSIC_LINE.match(line) for line in lines), output
    assert any("[oauthmail." in line for line in lines), output


def test_daemon_refuses_a_broken_config_in_one_line(tmp_path: Path) -> None:
    """A broken config stops twistd with exit status 2 and one line naming file, line and key."""
    config = tmp_path / "app.yaml"
    config.write_text("web:\n  port: imaps\n")
    result = _startRefused(config, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{config}:2: web.port: ")
    assert "Traceback" not in result.stderr + result.stdout


def test_a_second_daemon_on_the_same_sqlite_store_exits_75_in_one_line(tmp_path: Path) -> None:
    """Two daemons on one SQLite file would both send the queue: the second stops before it runs."""
    port = _freePort()
    config = _writeConfig(tmp_path, port)
    with _serving(config, tmp_path, port) as first:
        result = _startRefused(config, tmp_path)
        assert (result.returncode, result.stdout) == (75, "")
        assert result.stderr.splitlines() == [
            f"{tmp_path}/var/oauthmail.sqlite is in use by another oauthmail daemon"
            f" (pid {first.pid}): one daemon per SQLite store (several nodes share a"
            " PostgreSQL store, see docs/scale-out.md)"
        ]
    # The first one gone, a daemon starts on the store again (the lock went with it).
    with _serving(config, tmp_path, port) as again:
        assert again.poll() is None


def test_daemon_refuses_a_mistyped_option_in_one_line(tmp_path: Path) -> None:
    """A mistyped option: status 2 and one line naming it, not twistd's whole usage."""
    result = subprocess.run(
        [*TWISTD, "--nodaemon", "--pidfile=", "oauthmail", "--confg", "app.yaml"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        "oauthmail: option --confg not recognized (--help lists the options)"
    ]


def test_daemon_out_of_reach_store_exits_75_so_a_supervisor_retries(tmp_path: Path) -> None:
    """A database server that refuses connections (not up yet) is exit 75, not 2.

    conf/oauthmail.service restarts on 75 and never on 2 (a configuration or
    key error); the unreachable server used to exit 2, so a daemon started
    before its database stayed down.
    """
    from cryptography.fernet import Fernet

    (tmp_path / "oauthmail.key").write_bytes(Fernet.generate_key())
    (tmp_path / "oauthmail.key").chmod(0o600)
    config = tmp_path / "app.yaml"
    config.write_text(
        "store:\n"
        "  backend: postgresql\n"
        f"  dsn: postgresql://oauthmail@127.0.0.1:{_freePort()}/oauthmail\n"
        "  key_file: oauthmail.key\n"
        "web:\n  port: 0\n"
    )
    result = _startRefused(config, tmp_path)
    assert result.returncode == 75, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_daemon_refuses_a_wrong_store_key(tmp_path: Path) -> None:
    """A database written with another key stops the daemon with one clear line; nothing changes."""
    port = _freePort()
    config = _writeConfig(tmp_path, port)
    with _serving(config, tmp_path, port):
        pass
    db = tmp_path / "var" / "oauthmail.sqlite"
    key = tmp_path / "var" / "oauthmail.key"
    before = db.read_bytes()
    key.write_text(Fernet.generate_key().decode() + "\n")
    result = _startRefused(config, tmp_path)
    assert result.returncode == 2
    assert "different key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert db.read_bytes() == before
    # No key file at all: refused as well, and no new key is left next to the store.
    key.unlink()
    result = _startRefused(config, tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"key file {key} does not exist, but the store {db} does and its tokens need"
        " that key: fix store.key_file or restore the key"
    ]
    assert not key.exists()
    assert db.read_bytes() == before


@pytest.mark.slow
def test_wheel_adds_only_our_plugin_module(tmp_path: Path) -> None:
    """The wheel ships twisted/plugins/oauthmail_plugin.py and no twisted/__init__.py."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("oauthmail-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    twisted_files = [n for n in names if n.startswith("twisted/")]
    assert twisted_files == ["twisted/plugins/oauthmail_plugin.py"]


@pytest.mark.parametrize("taken", ["web.port", "submission.port"])
def test_daemon_with_a_taken_port_exits_at_once_and_starts_nothing(
    tmp_path: Path, taken: str
) -> None:
    """A port already in use stops twistd non-zero, within 5 s, naming the key; no watcher runs."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    web = busy if taken == "web.port" else _freePort()
    config = _writeConfig(tmp_path, web)
    submission = busy if taken == "submission.port" else _freePort()
    config.write_text(
        config.read_text()
        + f"submission:\n  port: {submission}\n  allow_unauthenticated_loopback: true\n"
    )
    started = time.monotonic()
    try:
        result = _startRefused(config, tmp_path)
    finally:
        blocker.close()
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert elapsed < 5, elapsed
    assert f"{taken}: cannot listen on 127.0.0.1:{busy}" in output
    assert "Traceback" not in output
    assert "IMAP" not in output and "oauthmail ready" not in output
    assert not (tmp_path / "var" / "oauthmail.sqlite").exists()
