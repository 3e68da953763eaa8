"""The real daemon receiving from the real Dovecot: exactly once, IDLE, a revoked account.

``twistd -n oauthmail`` runs as a subprocess with tokens from the test
provider pre-stored in its encrypted store. The test cuts its IMAP
connections with ``doveadm kick`` (Dovecot closes the TCP connection, as a
server restart or network failure would) and SIGKILLs the whole daemon once,
then checks the Maildir and the server with imaplib.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from .daemon import Daemon, profile, waitFor

pytestmark = pytest.mark.integration

TOTAL = 500
#: The requirement: IDLE delivers a new message into the Maildir within this bound.
IDLE_BOUND = 2.0
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


class DuplicateDeliveryError(AssertionError):
    """A message reached the Maildir more than once."""


def message(i: int, tag: str) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: x@example.com\r\nSubject: {tag} {i}\r\n"
        f"Message-ID: <{tag}-{i}@test>\r\n\r\nbody {i}\r\n"
    ).encode()


def seed(dovecot: Any, user: str, count: int, tag: str) -> None:
    """APPEND ``count`` messages as the master user over one connection (blocking)."""
    imap = dovecot.imapClient()
    try:
        imap.login(f"{user}*{dovecot.masterUser}", dovecot.masterPassword)
        for i in range(count):
            imap.append("INBOX", None, None, message(i, tag))
    finally:
        imap.logout()


def serverCount(dovecot: Any, user: str) -> int:
    """Messages left in the user's INBOX, via a master login (blocking)."""
    imap = dovecot.imapClient()
    try:
        imap.login(f"{user}*{dovecot.masterUser}", dovecot.masterPassword)
        typ, data = imap.select("INBOX", readonly=True)
        assert typ == "OK"
        return int(data[0])
    finally:
        imap.logout()


def maildirIDs(path: Path) -> Counter[bytes]:
    """How often each Message-ID is in the Maildir (``new/`` and ``cur/``)."""
    ids: Counter[bytes] = Counter()
    for sub in ("new", "cur"):
        folder = path / sub
        if folder.is_dir():
            for f in folder.iterdir():
                ids.update(_MESSAGE_ID.findall(f.read_bytes()))
    return ids


def delivered(path: Path) -> int:
    """Files in the Maildir: cheap enough to poll every few milliseconds."""
    return sum(len(os.listdir(path / sub)) for sub in ("new", "cur") if (path / sub).is_dir())


def account(name: str, user: str, maildir: Path) -> dict[str, Any]:
    return {
        "name": name,
        "address": user,
        "profile": "test",
        "imap": {
            "folders": [{"name": "INBOX", "disposition": "delete"}],
            "sink": {"maildir": str(maildir)},
            "poll_interval": "30s",
        },
    }


async def kick(dovecot: Any, user: str) -> bool:
    """Make Dovecot drop every connection of ``user`` (the TCP connection really closes).

    ``doveadm kick`` exits 68 (EX_NOUSER) when the user has no connection at the
    moment (the daemon is between sessions): try again until it had one to cut.
    """
    for _ in range(100):
        result = await threads.deferToThread(dovecot.doveadm, "kick", user, check=False)
        if result.returncode == 0:
            return True
        await waitFor(lambda: False, 0.05)
    return False


@pytest_twisted.ensureDeferred
async def test_exactly_once_through_cuts_and_sigkill(dovecot, oauth_provider, tmp_path):
    """500 messages, 3 connection cuts and a SIGKILL: each exactly once, none left; IDLE < 2 s."""
    user = "daemon-bulk@example.com"
    await threads.deferToThread(seed, dovecot, user, TOTAL, "bulk")
    md = tmp_path / "md"
    daemon = Daemon(
        tmp_path / "daemon",
        {
            "profiles": {"test": profile(oauth_provider, dovecot)},
            "accounts": [account("bulk", user, md)],
        },
    )
    await daemon.authorise(oauth_provider, {"bulk": user})
    daemon.start()
    kicks = 0
    try:
        await daemon.waitReady()
        for threshold in (60, 150):
            assert await waitFor(lambda t=threshold: delivered(md) >= t, 20.0, 0.01)
            assert await kick(dovecot, user)
            kicks += 1
        # Mid-batch (batches are 100 messages): some of this batch's files are in
        # the Maildir, the ledger has not recorded them yet.
        assert await waitFor(lambda: delivered(md) >= 250, 20.0, 0.002)
        daemon.kill()
        killedAt = delivered(md)
        assert killedAt < TOTAL, "the daemon finished before it could be killed"
        daemon.start()
        await daemon.waitReady()
        assert await waitFor(lambda: delivered(md) >= max(killedAt + 50, 350), 20.0, 0.01)
        assert await kick(dovecot, user)
        kicks += 1
        assert await waitFor(lambda: delivered(md) >= TOTAL, 30.0), daemon.log()[-3000:]
        await waitFor(lambda: False, 0.5)  # let a duplicate that is on its way arrive
        ids = maildirIDs(md)
        twice = sorted(i for i, n in ids.items() if n > 1)
        assert set(ids) == {f"<bulk-{i}@test>".encode() for i in range(TOTAL)}
        # The last batch is deleted on the server right after its files are
        # recorded: give that a moment on a loaded machine.
        left = await threads.deferToThread(serverCount, dovecot, user)
        for _ in range(50):
            if left == 0:
                break
            await waitFor(lambda: False, 0.2)
            left = await threads.deferToThread(serverCount, dovecot, user)
        assert left == 0

        # Now idle: a new message must arrive through IDLE, not the 30 s poll.
        await waitFor(lambda: False, 1.0)  # the watcher enters IDLE after its last round
        await threads.deferToThread(dovecot.appendMessage, user, message(0, "idle"))
        arrived = await waitFor(lambda: b"<idle-0@test>" in maildirIDs(md), IDLE_BOUND, 0.01)
        assert arrived, f"not delivered within {IDLE_BOUND}s"
    finally:
        await daemon.stop()
    assert kicks == 3
    await daemon.collectStoredSecrets(["bulk"])
    assert "oauthmail ready" in daemon.log()
    assert daemon.leakedSecrets() == []
    assert "Traceback" not in daemon.log()
    if twice:
        raise DuplicateDeliveryError(f"{len(twice)} delivered more than once, e.g. {twice[:3]}")


@pytest_twisted.ensureDeferred
async def test_revoked_account_needs_reauth_other_keeps_receiving(
    dovecot, oauth_provider, tmp_path
):
    """A revoked refresh token puts one account in needs_reauth; the other still receives."""
    good, bad = "daemon-good@example.com", "daemon-revoked@example.com"
    for user in (good, bad):
        await threads.deferToThread(seed, dovecot, user, 1, "first")
    mdGood, mdBad = tmp_path / "good", tmp_path / "bad"
    daemon = Daemon(
        tmp_path / "daemon",
        {
            "profiles": {"test": profile(oauth_provider, dovecot)},
            "accounts": [account("good", good, mdGood), account("bad", bad, mdBad)],
        },
    )
    await daemon.authorise(oauth_provider, {"good": good, "bad": bad})
    daemon.start()
    try:
        await daemon.waitReady()
        assert await waitFor(lambda: delivered(mdGood) == 1 and delivered(mdBad) == 1, 15.0)
        oauth_provider.revokeUser(bad)
        assert await kick(dovecot, bad)  # the next login presents the revoked token
        state = None
        for _ in range(100):
            state = await daemon.accountState("bad")
            if state == "needs_reauth":
                break
            await waitFor(lambda: False, 0.1)
        assert state == "needs_reauth", daemon.log()[-3000:]
        health = await daemon.health()
        assert health["status"] == "degraded"
        assert await daemon.accountState("good") == "ok"
        await threads.deferToThread(dovecot.appendMessage, good, message(1, "later"))
        assert await waitFor(lambda: b"<later-1@test>" in maildirIDs(mdGood), 10.0)
        assert delivered(mdBad) == 1
    finally:
        await daemon.stop()
    await daemon.collectStoredSecrets(["good", "bad"])
    assert "oauthmail ready" in daemon.log()
    assert daemon.leakedSecrets() == []
    assert "Traceback" not in daemon.log()
    assert await daemon.unloggedMessages() == []  # every delivered message is logged
