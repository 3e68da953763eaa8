"""The operator's side of the real daemon: message log, ``oauthmail queue``, /metrics, webhook.

One daemon sends through Dovecot to the final hop and receives from Dovecot
into a Maildir. A message the provider defers (451) shows in ``oauthmail
queue``, and ``oauthmail queue retry`` sends it; one refused for good (550)
fails, and the webhook hears about it, signed; a received message lands.
Every one of them is in the message log with the right outcomes, and
``/metrics`` parses with ``prometheus_client.parser`` and carries the
per-account series.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
import urllib.request
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import threads
from twisted.web import resource, server

from oauthmail.db.open import openStores
from oauthmail.passwords import hashPassword

from .daemon import ROOT, Daemon, freePort, profile, waitFor
from .test_daemon_receive import account as receiving_account
from .test_daemon_receive import delivered, seed
from .test_daemon_send import CHEAP, MAX_SIZE, PASSWORD, connect, message, relayedIDs

pytestmark = pytest.mark.integration

HOOK_SECRET = "webhook-secret-for-tests"


class Hook(resource.Resource):
    """A webhook receiver: keeps every request, answers 500 to the first one."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[bytes, bytes | None]] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.requests.append((body, request.getHeader(b"x-oauthmail-signature")))
        if len(self.requests) == 1:
            request.setResponseCode(500)
        return b"ok"


def cli(daemon: Daemon, *args: str) -> str:
    """``oauthmail ARGS -c app.yaml`` in the daemon's directory (blocking); its output."""
    done = subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", *args, "-c", str(daemon.configPath)],
        cwd=daemon.workDir,
        capture_output=True,
        text=True,
        timeout=60,
        env={**daemon._env(), "PYTHONPATH": str(ROOT)},
    )
    return done.stdout + done.stderr


def get(daemon: Daemon, path: str) -> str:
    url = f"http://127.0.0.1:{daemon.webPort}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return response.read().decode()


def sendOne(daemon: Daemon, sender: str, data: bytes) -> None:
    client = connect(daemon)
    try:
        client.sendmail(sender, ["friend@example.net"], data)
    finally:
        client.quit()


@pytest_twisted.ensureDeferred
async def test_message_log_queue_tools_metrics_and_webhook(
    dovecot, oauth_provider, final_hop, tmp_path
):
    """Deferred → listed → retried → sent; refused → failed → webhook; received; all logged."""
    from twisted.internet import reactor

    sender = "daemon-ops@example.com"
    reader = "daemon-ops-in@example.com"
    hook = Hook()
    hookPort = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    maildir = tmp_path / "maildir"
    daemon = Daemon(
        tmp_path / "daemon",
        {
            "profiles": {"test": profile(oauth_provider, dovecot)},
            "accounts": [
                {"name": "sender", "address": sender, "profile": "test", "smtp": {}},
                receiving_account("inbox", reader, maildir),
            ],
            "submission": {
                "bind": "127.0.0.1",
                "port": freePort(),
                "max_message_size": MAX_SIZE,
                "users": [
                    {
                        "name": "app",
                        "password_hash": hashPassword(PASSWORD, CHEAP),
                        "allowed_senders": ["sender"],
                    }
                ],
            },
            # Long retries: a deferred message waits for the operator's retry.
            "queue": {"retry_min": "1h", "retry_max": "2h"},
            "notify": {
                "webhook": f"http://127.0.0.1:{hookPort.getHost().port}/hook",
                "webhook_secret": HOOK_SECRET,
            },
        },
    )
    daemon.secrets.update({PASSWORD, HOOK_SECRET})
    await daemon.authorise(oauth_provider, {"sender": sender, "inbox": reader})
    # Waiting in INBOX before the start: the first sync takes it, whatever IDLE's latency
    # (Dovecot falls back to a 30 s check when a loaded machine has no inotify to spare).
    await threads.deferToThread(seed, dovecot, reader, 1, "opsin")
    daemon.start()
    try:
        await daemon.waitReady()
        # 1. Deferred by the provider: listed by `oauthmail queue`, sent by `retry`.
        final_hop.refusal = (451, "4.3.0 try again later")
        await threads.deferToThread(sendOne, daemon, sender, message(sender, "opsdefer"))
        assert await waitFor(lambda: "to friend@example.net: 451" in daemon.log(), 15.0)
        listing = await threads.deferToThread(cli, daemon, "queue")
        (line,) = [x for x in listing.splitlines() if x.endswith("  friend@example.net")]
        queue_id = line.split()[0]
        assert " deferred " in line and "sender" in line, listing
        assert "4.3.0 try again later" in listing
        final_hop.refusal = None
        said = await threads.deferToThread(cli, daemon, "queue", "retry", queue_id)
        assert "due now" in said and "daemon is sending now" in said, said
        assert await waitFor(lambda: relayedIDs(final_hop, "opsdefer"), 10.0)
        shown = await threads.deferToThread(cli, daemon, "queue", "show", queue_id)
        assert "state:      sent" in shown and "Message-ID: <opsdefer-0@client.test>" in shown
        assert "line one" not in shown  # never the body
        # 2. Refused for good: failed, and the webhook hears about it (after one 500).
        final_hop.refusal = (550, "5.1.1 no such user")
        await threads.deferToThread(sendOne, daemon, sender, message(sender, "opsfail"))
        assert await waitFor(lambda: len(hook.requests) >= 2, 20.0), daemon.log()[-2000:]
        final_hop.refusal = None
        # 3. Received into the Maildir.
        assert await waitFor(lambda: delivered(maildir) == 1, 15.0)

        # The message log has every one of them, with the right outcomes.
        async def entries() -> dict[str, list[Any]]:
            stores = await openStores(daemon.storeConfig, reactor, reactor, environ={})
            try:
                return {
                    "out": await stores.messages.recent("sender", "out", 50),
                    "in": await stores.messages.recent("inbox", "in", 50),
                }
            finally:
                await stores.close()

        found: dict[str, list[Any]] = {}

        async def logged() -> bool:
            found.update(await entries())
            return len(found["out"]) >= 5 and len(found["in"]) >= 1

        for _ in range(40):
            if await logged():
                break
            await waitFor(lambda: False, 0.25)
        byQueue: dict[str, list[str]] = {}
        for e in reversed(found["out"]):
            byQueue.setdefault(e.queue_id, []).append(e.outcome)
        assert byQueue.pop(queue_id) == ["queued", "deferred", "sent"]
        (failedOutcomes,) = byQueue.values()
        assert failedOutcomes == ["queued", "failed"]
        assert all(e.message_id and e.size for e in found["out"])
        (received,) = found["in"]
        assert (received.outcome, received.message_id, received.folder) == (
            "delivered",
            "<opsin-0@test>",
            "INBOX",
        )

        # The webhook: the failure, signed, sent again after the 500.
        first, second = hook.requests[0], hook.requests[1]
        assert first == second
        body, signature = second
        expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert signature == expected.encode()
        notice = json.loads(body)
        assert notice["event"] == "message_failed" and notice["account"] == "sender"
        assert "550" in notice["reply"]

        # /metrics: Prometheus text with the per-account series.
        text = await threads.deferToThread(get, daemon, "/metrics")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("oauthmail_messages_sent_total", (("account", "sender"),))] == 1
        assert samples[("oauthmail_messages_deferred_total", (("account", "sender"),))] >= 1
        failed = ("oauthmail_messages_failed_total", (("account", "sender"), ("direction", "out")))
        assert samples[failed] == 1
        assert samples[("oauthmail_messages_received_total", (("account", "inbox"),))] == 1
        assert samples[("oauthmail_queue_depth", (("account", "sender"),))] == 0
        assert samples[("oauthmail_token_expires_at_seconds", (("account", "sender"),))] > 0
        connected = ("oauthmail_imap_connected", (("account", "inbox"), ("folder", "INBOX")))
        assert samples[connected] == 1
        assert any(name == "oauthmail_provider_seconds_count" for name, _ in samples)

        # The console's message pages.
        page = await threads.deferToThread(get, daemon, "/messages/sender")
        assert queue_id in page and "opsdefer-0@client.test" in page
        page = await threads.deferToThread(get, daemon, f"/outbox/{queue_id}")
        assert "Header section" in page and "line one" not in page
    finally:
        final_hop.refusal = None
        await daemon.stop()
        await hookPort.stopListening()
        await daemon.collectStoredSecrets(["sender", "inbox"])
        assert daemon.leakedSecrets() == []
        assert "Traceback" not in daemon.log()
        assert await daemon.unloggedMessages() == []
