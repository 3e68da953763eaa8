"""The real daemon sending through the API transports: local submission in, API fake out.

The daemon (a ``twistd`` subprocess) takes mail over its submission server
and relays it through ``transport: graph`` or ``transport: gmail_api`` to a
fake of that API served from this test process. The fake checks every token
with the test OAuth provider and, as Gmail and Microsoft 365 do, files each
message it accepts in the sender's Sent folder on the test Dovecot, where the
daemon looks (``sent_folder: auto``) before it sends again a message whose
answer it never heard.
"""

from __future__ import annotations

import re
import smtplib
from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import threads

from oauthmail.testing.finalhop import SentFiler
from oauthmail.testing.gmail_api import GmailAPIFake
from oauthmail.testing.graph import GraphFake

from .daemon import Daemon, freePort, server, waitFor
from .test_daemon_send import CHEAP, PASSWORD, connect, finished, message

pytestmark = pytest.mark.integration

_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def sentIDs(fake, tag: str) -> Counter[bytes]:
    """How often each Message-ID with ``tag`` reached the fake."""
    found: Counter[bytes] = Counter()
    for raw in fake.raws():
        for mid in _MESSAGE_ID.findall(raw):
            if mid.startswith(f"<{tag}-".encode()):
                found[mid] += 1
    return found


def makeDaemon(tmp_path, provider, dovecot, sender: str, transport: str, base: str) -> Daemon:
    from oauthmail.passwords import hashPassword

    from .conftest import CLIENT_ID, CLIENT_SECRET

    return Daemon(
        tmp_path / "daemon",
        {
            "profiles": {
                "api": {
                    "provider": "generic",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "authorization_endpoint": provider.authorization_endpoint,
                    "token_endpoint": provider.token_endpoint,
                    "scopes": ["mail"],
                    "imap": server(dovecot, "imap"),
                }
            },
            "accounts": [
                {
                    "name": "sender",
                    "address": sender,
                    "profile": "api",
                    "smtp": {"transport": transport, "base_url": base, "sent_folder": "auto"},
                }
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
            "queue": {"retry_min": "1s", "retry_max": "2s", "sent_check_delay": "0s"},
        },
    )


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("transport", ["graph", "gmail_api"])
async def test_sigkill_during_a_burst_loses_and_duplicates_nothing(
    dovecot, oauth_provider, tmp_path, transport
):
    """SIGKILL after ~100 of 300 acknowledged, restart: every 250 reaches the API, none twice."""
    sender = f"daemon-api-{transport.replace('_', '-')}@example.com"
    filer = SentFiler(dovecot)
    fake = (GraphFake if transport == "graph" else GmailAPIFake)(oauth_provider, onAccept=filer)
    base = fake.listen(_reactor())
    daemon = makeDaemon(tmp_path, oauth_provider, dovecot, sender, transport, base)
    daemon.secrets.add(PASSWORD)
    await daemon.authorise(oauth_provider, {"sender": sender})
    daemon.start()
    acked: list[bytes] = []

    def burst() -> None:
        client = connect(daemon)
        try:
            for i in range(300):
                client.sendmail(sender, ["friend@example.net"], message(sender, "apiburst", i))
                acked.append(f"<apiburst-{i}@client.test>".encode())
        except (smtplib.SMTPException, OSError):
            pass  # the daemon was killed under us
        finally:
            client.close()

    try:
        await daemon.waitReady()
        sending = threads.deferToThread(burst)
        assert await waitFor(lambda: len(acked) >= 100, 30.0, 0.005)
        daemon.kill()
        before = len(sentIDs(fake, "apiburst"))
        await sending
        assert len(acked) < 300, "the burst finished before the daemon was killed"
        assert before < len(acked), "nothing was left in the queue to survive"
        daemon.start()
        await daemon.waitReady()
        assert await waitFor(lambda: set(acked) <= set(sentIDs(fake, "apiburst")), 60.0), (
            daemon.log()[-3000:]
        )
        await waitFor(lambda: False, 1.0)  # let a duplicate that is on its way arrive
        counts = sentIDs(fake, "apiburst")
        twice = sorted(mid for mid, n in counts.items() if n > 1)
        assert twice == [], f"{len(twice)} sent more than once, e.g. {twice[:3]}"
        assert "looked in Sent for" in daemon.log()
        relayed = [raw for raw in fake.raws() if b"<apiburst-0@client.test>" in raw]
        assert relayed and relayed[0].endswith(message(sender, "apiburst", 0))
    finally:
        await fake.stop()
        await threads.deferToThread(filer.close)
        await finished(daemon)


def _reactor():
    from twisted.internet import reactor

    return reactor
