"""``python -m oauthmail.testing.dovecot``: a private Dovecot from the command line."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from oauthmail.testing.dovecot import PACKAGED_TEMPLATES

from .conftest import TEMPLATES, requireDovecot

pytestmark = pytest.mark.integration


def test_packagedTemplatesAreTheTestsOwn() -> None:
    """The templates shipped for users are the ones the project's tests run with."""
    shipped = {p.name: p.read_text() for p in PACKAGED_TEMPLATES.glob("*.in")}
    ours = {p.name: p.read_text() for p in Path(TEMPLATES).glob("*.in")}
    assert shipped == ours


def test_commandLineStartsPrintsPortsAndStopsOnSigint() -> None:
    """It prints its ports, serves IMAP on them, and stops cleanly on Ctrl-C."""
    requireDovecot()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oauthmail.testing.dovecot",
            "--introspection-url",
            "http://127.0.0.1:9/introspect",
            "--user",
            "carol@example.test",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()
        m = re.match(r"dovecot ready: imap=127\.0\.0\.1:(\d+) .*imaps=127\.0\.0\.1:(\d+)", ready)
        assert m, ready + process.stdout.read(2000)
        with socket.create_connection(("127.0.0.1", int(m.group(1))), timeout=5) as s:
            assert s.recv(200).startswith(b"* OK")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
