"""The demo ``scripts/run`` starts without arguments, run headless as a new user would."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import requireDovecot

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _processGroupMembers(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp
            members.append(int(entry.name))
    return members


def test_demoShowsMailFlowingAndStopsEverything(tmp_path: Path) -> None:
    """The demo authorises both accounts, mail lands in both Maildirs, Ctrl-C leaves nothing."""
    requireDovecot()
    var = tmp_path / "var"
    web, submission = _freePort(), _freePort()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oauthmail.testing.demo",
            "--var",
            str(var),
            "--web-port",
            str(web),
            "--submission-port",
            str(submission),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 170
        assert demo.stdout is not None
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip())
            if line.strip() == "demo ready":
                break
        output = "\n".join(lines)
        assert lines and lines[-1] == "demo ready", output

        with urllib.request.urlopen(f"http://127.0.0.1:{web}/health", timeout=10) as answer:
            assert answer.status == 200
            health = json.load(answer)
        assert {a["account"]: a["state"] for a in health["accounts"]} == {
            "alice": "ok",
            "bob": "ok",
        }

        alice = list((var / "mail" / "alice" / "new").iterdir())
        bob = list((var / "mail" / "bob" / "new").iterdir())
        assert any(b"Subject: Welcome to oauthmail" in p.read_bytes() for p in alice)
        assert any(b"Subject: Hello from alice" in p.read_bytes() for p in bob)

        daemon = int(re.search(r"daemon started: .*\(pid (\d+)", output).group(1))
        dovecot = int(re.search(r"private Dovecot: .*\(pid (\d+)\)", output).group(1))
        assert _alive(daemon) and _alive(dovecot)

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group, daemon too
        rest, _ = demo.communicate(timeout=60)
        assert demo.returncode == 0, rest
        assert "stopped: daemon, Dovecot, provider" in rest
        log = (var / "daemon.log").read_text(errors="replace")
        assert "Traceback" not in log, log[-2000:]
        time.sleep(0.5)
        assert not _alive(daemon)
        assert not _alive(dovecot)
        assert _processGroupMembers(dovecot) == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
