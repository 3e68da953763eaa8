"""The real daemon on a real PostgreSQL store, receiving from and sending through the real Dovecot.

``twistd -n oauthmail`` runs with ``store: {backend: postgresql, dsn:
${OAUTHMAIL_DSN}}`` against the session's private cluster (a schema of its
own), as an operator would run it. The test restarts PostgreSQL while the
daemon works: the daemon must carry on by itself, and every message must
still arrive exactly once, in the Maildir and at the final hop.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import pytest_twisted
from twisted.internet import threads

from .daemon import Daemon, freePort, profile, sleep, waitFor
from .test_daemon_receive import account, maildirIDs, seed, serverCount
from .test_daemon_send import CHEAP, PASSWORD, message, relayedIDs, sendAll

pytestmark = pytest.mark.integration


def daemonConfig(provider: Any, dovecot: Any, receiver: str, maildir: Any) -> dict[str, Any]:
    from oauthmail.passwords import hashPassword

    return {
        "profiles": {"test": profile(provider, dovecot)},
        "accounts": [
            account("receiver", receiver, maildir),
            {"name": "sender", "address": "pg-sender@example.com", "profile": "test", "smtp": {}},
        ],
        "submission": {
            "bind": "127.0.0.1",
            "port": freePort(),
            "users": [
                {
                    "name": "app",
                    "password_hash": hashPassword(PASSWORD, CHEAP),
                    "allowed_senders": ["sender"],
                }
            ],
        },
        "queue": {"retry_min": "1s", "retry_max": "2s"},
    }


@pytest_twisted.ensureDeferred
async def test_daemon_on_postgresql_receives_and_sends_across_a_restart(
    dovecot, oauth_provider, final_hop, postgres, postgres_dsn, tmp_path
):
    """Mail in and out on a PostgreSQL store; a PostgreSQL restart loses and doubles nothing."""
    receiver = "pg-receiver@example.com"
    sender = "pg-sender@example.com"
    await threads.deferToThread(seed, dovecot, receiver, 20, "pgin")
    md = tmp_path / "md"
    daemon = Daemon(
        tmp_path / "daemon", daemonConfig(oauth_provider, dovecot, receiver, md), postgres_dsn
    )
    daemon.secrets.update((PASSWORD, postgres.password))
    await daemon.authorise(oauth_provider, {"receiver": receiver, "sender": sender})
    daemon.start()
    try:
        await daemon.waitReady()
        assert await waitFor(lambda: sum(maildirIDs(md).values()) >= 20, 30.0)
        first = [message(sender, "pgout", i) for i in range(5)]
        await threads.deferToThread(sendAll, daemon, sender, first)
        assert await waitFor(lambda: len(relayedIDs(final_hop, "pgout")) >= 5, 30.0)

        # PostgreSQL goes away for a while (mail arrives meanwhile) and comes back,
        # while the daemon keeps running.
        await threads.deferToThread(postgres.halt)
        try:
            await threads.deferToThread(seed, dovecot, receiver, 10, "pgafter")
            await sleep(1.0)
        finally:
            await threads.deferToThread(postgres.resume)
        later = [message(sender, "pgout", i) for i in range(5, 10)]
        await threads.deferToThread(sendAll, daemon, sender, later)

        def received() -> int:
            return sum(maildirIDs(md).values())

        assert await waitFor(lambda: received() >= 30, 60.0), daemon.log()[-3000:]
        assert await waitFor(lambda: len(relayedIDs(final_hop, "pgout")) >= 10, 60.0)
        assert await waitFor(lambda: serverCount(dovecot, receiver) == 0, 30.0)
        ids = maildirIDs(md)
        assert len(ids) == 30 and set(ids.values()) == {1}
        relayed = relayedIDs(final_hop, "pgout")
        assert len(relayed) == 10 and set(relayed.values()) == {1}
        with psycopg.connect(postgres_dsn) as conn:
            (rows,) = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()
            (sent,) = conn.execute("SELECT COUNT(*) FROM outbound WHERE state = 'sent'").fetchone()
        assert (rows, sent) == (30, 10)
    finally:
        await daemon.stop()
        await daemon.collectStoredSecrets(["receiver", "sender"])
    log = daemon.log()
    assert "oauthmail ready" in log
    assert daemon.leakedSecrets() == []
    assert "Traceback" not in log
