"""The daemon tells the truth about an account, and wakes up for new mail at once.

Real ``twistd oauthmail`` processes against the real Dovecot and the test
provider: a token the server keeps refusing, a certificate the daemon refuses,
and ``oauthmail send`` reaching a running daemon through its control socket.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from .daemon import ROOT, Daemon, profile, sleep, waitFor

pytestmark = pytest.mark.integration


def _account(name: str, address: str, tmp_path: Any, imap: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "address": address, "profile": "test", "smtp": {}}
    if imap:
        entry["imap"] = {"folders": ["INBOX"], "sink": {"maildir": str(tmp_path / "md" / name)}}
    return entry


@pytest_twisted.ensureDeferred
async def test_a_token_the_server_keeps_refusing_is_an_error_all_along(
    dovecot, oauth_provider, tmp_path
):
    """Tokens of the wrong person: 'error' throughout, /health 503, one refresh per backoff step."""
    # The provider refreshes carol's tokens happily; Dovecot refuses them for bob.
    config = {
        "profiles": {"test": profile(oauth_provider, dovecot)},
        "accounts": [_account("bob", "bob-refused@example.com", tmp_path)],
    }
    daemon = Daemon(tmp_path / "daemon", config)
    await daemon.authorise(oauth_provider, {"bob": "carol-not-bob@example.com"})
    before = oauth_provider.requests["token"]
    daemon.start()
    try:
        await daemon.waitReady()
        states: list[str] = []
        codes: list[str] = []
        started = time.monotonic()
        while time.monotonic() - started < 20.0:
            health = await daemon.health()
            codes.append(health["status"])
            states.append(next(a for a in health["accounts"] if a["account"] == "bob")["state"])
            await sleep(0.25)
        refreshes = oauth_provider.requests["token"] - before
        assert "ok" not in states, states
        assert set(codes) == {"degraded"}, codes
        assert states[-1] == "error"
        first = states.index("error")
        assert set(states[first:]) == {"error"}, states  # never back to ok in between
        entry = next(a for a in (await daemon.health())["accounts"] if a["account"] == "bob")
        assert "refused a freshly refreshed token" in entry["last_error"]
        assert "carol" not in entry["last_error"]  # what the server said, not a guess
        assert "IMAP INBOX" in entry["last_error"]
        assert "belong to bob-refused@example.com" in entry["next_step"]
        # Backoff 1, 2, 4, 8 s (jittered, half to whole): at most ~6 sessions in 20 s,
        # each allowed one forced refresh. Without the backoff it would be dozens.
        assert 1 <= refreshes <= 8, refreshes
        # The same refusal on every session is one line in the log, not one per session.
        assert daemon.log().count("refused a freshly refreshed token") == 1, daemon.log()[-3000:]
    finally:
        await daemon.stop()
    assert daemon.leakedSecrets() == []


@pytest_twisted.ensureDeferred
async def test_a_refused_certificate_shows_in_the_state_and_health(
    dovecot, dovecot_factory, oauth_provider, tmp_path
):
    """IMAP over a certificate for the wrong host: the account is 'error' and says why."""
    wrong = dovecot_factory("wrongHost")
    test = profile(oauth_provider, dovecot)
    test["imap"] = dict(test["imap"], port=wrong.ports.imaps)
    config = {
        "profiles": {"test": test},
        "accounts": [_account("tlsbad", "tlsbad@example.com", tmp_path)],
    }
    daemon = Daemon(tmp_path / "daemon", config)
    await daemon.authorise(oauth_provider, {"tlsbad": "tlsbad@example.com"})
    daemon.start()
    try:
        await daemon.waitReady()

        async def errorShown() -> bool:
            return await daemon.accountState("tlsbad") == "error"

        deadline = time.monotonic() + 20
        while not await errorShown():
            assert time.monotonic() < deadline, daemon.log()[-2000:]
            await sleep(0.2)
        health = await daemon.health()
        assert health["status"] == "degraded"
        entry = next(a for a in health["accounts"] if a["account"] == "tlsbad")
        assert "not valid for mail.test" in entry["last_error"]
        assert "IMAP INBOX" in entry["last_error"]
        assert any(p["part"] == "IMAP INBOX" and p["state"] == "error" for p in entry["parts"])
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_oauthmail_send_wakes_the_running_daemon(
    dovecot, oauth_provider, final_hop, tmp_path
):
    """`oauthmail send` queues, wakes the daemon, and the message is at the final hop in 2 s."""
    config = {
        "profiles": {"test": profile(oauth_provider, dovecot)},
        "accounts": [_account("quick", "quick@example.com", tmp_path, imap=False)],
    }
    daemon = Daemon(tmp_path / "daemon", config)
    await daemon.authorise(oauth_provider, {"quick": "quick@example.com"})
    daemon.start()
    try:
        await daemon.waitReady()
        message = (
            b"From: quick@example.com\r\nTo: friend@example.net\r\n"
            b"Subject: woken\r\nMessage-ID: <woken-1@client.test>\r\n\r\nhello\r\n"
        )

        def send() -> subprocess.CompletedProcess[bytes]:
            return subprocess.run(
                [sys.executable, "-m", "oauthmail.cli", "send", "quick", "-c", "app.yaml"],
                input=message,
                capture_output=True,
                cwd=daemon.workDir,
                env={**daemon._env(), "PYTHONPATH": str(ROOT)},
                timeout=60,
            )

        result = await threads.deferToThread(send)
        queuedAt = time.monotonic()
        out = result.stdout.decode()
        assert result.returncode == 0, result.stderr.decode()
        assert "the oauthmail daemon is sending it now" in out, out

        def arrived() -> bool:
            return any(b"<woken-1@client.test>" in m.data for m in final_hop.messages)

        # The queue's own poll comes every 60 s: within 2 s it can only be the wake-up.
        assert await waitFor(arrived, 2.0), daemon.log()[-2000:]
        assert time.monotonic() - queuedAt <= 2.0
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_oauthmail_send_without_a_daemon_says_so(dovecot, oauth_provider, tmp_path):
    """No daemon: the message is queued and the command says plainly that nothing runs."""
    config = {
        "profiles": {"test": profile(oauth_provider, dovecot)},
        "accounts": [_account("idle", "idle@example.com", tmp_path, imap=False)],
    }
    daemon = Daemon(tmp_path / "daemon", config)
    await daemon.authorise(oauth_provider, {"idle": "idle@example.com"})

    def send() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "oauthmail.cli", "send", "idle", "-c", "app.yaml"],
            input=b"From: idle@example.com\r\nTo: x@example.net\r\nSubject: s\r\n\r\nhi\r\n",
            capture_output=True,
            cwd=daemon.workDir,
            env={**daemon._env(), "PYTHONPATH": str(ROOT)},
            timeout=60,
        )

    result = await threads.deferToThread(send)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "no oauthmail daemon is running here" in out and "queued as" in out, out
