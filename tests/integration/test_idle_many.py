"""Many mailboxes through one daemon: ``bench/idle_many.py --check`` with 50 accounts.

The benchmark's own machinery (a Dovecot sized for many connections, the real
daemon in a process of its own, master-user APPENDs, a Dovecot restart under
the idling daemon) run for counts, never times: every account reaches IDLE,
again after the restart, and every appended message is in its Maildir
exactly once.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import requireDovecot

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent
ACCOUNTS = 50
CHECK = re.compile(
    r"^check: (\d+)/(\d+) accounts idling, (\d+) after the restart; (\d+) messages appended"
    r" to (\d+) accounts, (\d+) accounts hold exactly theirs \((\d+) missing, (\d+) twice\)$"
)


def test_fifty_accounts_idle_and_get_each_message_exactly_once() -> None:
    """50 accounts idle (before and after a restart); 100 APPENDs arrive exactly once each."""
    requireDovecot()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.idle_many", "--check", "--accounts", str(ACCOUNTS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = proc.stdout + proc.stderr[-3000:]
    found = [m for m in map(CHECK.match, proc.stdout.splitlines()) if m]
    assert found, output
    idling, total, again, messages, accounts, exact, missing, twice = map(int, found[-1].groups())
    assert (idling, total, again) == (ACCOUNTS, ACCOUNTS, ACCOUNTS), output
    assert (messages, accounts, exact) == (2 * ACCOUNTS, ACCOUNTS, ACCOUNTS), output
    assert (missing, twice) == (0, 0), output
    assert proc.returncode == 0, output
