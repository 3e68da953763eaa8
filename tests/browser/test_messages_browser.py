"""The console's message pages in a real (headless) Chromium: see mail in, retry mail out.

The console runs on pytest-twisted's reactor over a real message log and outbox (the
memory twins) and a real :class:`~oauthmail.smtp.queue.service.OutboundQueue` whose
provider (a scripted sender) defers the first attempt with a 451 and takes the next.
The browser is driven from a thread, and every page is saved as a screenshot.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads
from zope.interface import implementer

from oauthmail.config import parseConfig
from oauthmail.interfaces import IMessageSender, ITokenSource
from oauthmail.messagelog.records import DELIVERED, IN, LogEntry
from oauthmail.messagelog.writer import MessageLogWriter
from oauthmail.secret import Secret
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome, SessionResult
from oauthmail.smtp.queue.service import OutboundQueue
from oauthmail.testing.memory_messages import MemoryMessageLog
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.web.console import ConsoleResource, LiveParts
from oauthmail.web.site import ConsoleSite

from .pages import follow, read, reload, until

pytestmark = pytest.mark.browser

MESSAGE = (
    b"From: alerts@example.com\r\nTo: ops@example.net\r\nSubject: disk almost full\r\n"
    b"Message-ID: <disk-1@example.com>\r\n\r\nthe body is never shown\r\n"
)


def _config(tmp_path: Path):
    return parseConfig(
        """
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: browser-client
    scopes: [mail]
    smtp: {host: 127.0.0.1, port: 9, security: implicit}
accounts:
  - name: alerts
    address: alerts@example.com
    profile: local
    smtp: {}
web: {bind: 127.0.0.1, port: 0}
""",
        "browser.yaml",
        {},
    )


@implementer(ITokenSource)
class Tokens:
    def accessToken(self, account_id):
        return defer.succeed(Secret("token-for-the-browser-test"))

    def forceRefresh(self, account_id):
        return self.accessToken(account_id)


@implementer(IMessageSender)
class Provider:
    """Defers the first attempt (451 at RCPT), accepts every later one."""

    def __init__(self) -> None:
        self.attempts = 0

    def send(self, account, token, messages, hooks):
        beforeData, onOutcome = hooks.beforeData, hooks.onOutcome
        result = SessionResult()
        for m in messages:
            self.attempts += 1
            code, text = (
                (451, "4.3.0 mailbox busy, try later")
                if self.attempts == 1
                else (
                    250,
                    "2.0.0 OK queued as P123",
                )
            )
            beforeData(m)
            replies = tuple(RecipientOutcome(r, code, text) for r in m.recipients)
            outcome = MessageOutcome(m.id, code, text, replies, code == 250)
            result.outcomes.append(outcome)
            onOutcome(outcome)
        return defer.succeed(result)

    def close(self):
        return defer.succeed(None)


@pytest_twisted.ensureDeferred
async def test_see_received_mail_and_retry_a_deferred_message(tmp_path, browser_factory) -> None:
    """A received message shows in the account's log; Retry now sends a deferred one."""
    config = _config(tmp_path)
    store = MemoryTokenStore(reactor)
    await store.ensureAccount("alerts", "generic")
    await store.setAccountState("alerts", "ok")
    outbox, messages = MemoryOutbox(), MemoryMessageLog()
    writer = MessageLogWriter(messages, reactor, delay=0.05)
    queue = OutboundQueue(
        outbox,
        Tokens(),
        {"alerts": config.account("alerts")},
        reactor,
        sender=Provider(),
        backoff_base=3600.0,
        backoff_max=7200.0,
        random=random.Random(3),
        recorder=writer,
    )
    queue.startService()
    writer.add(
        LogEntry(
            reactor.seconds(), "alerts", IN, DELIVERED, "<welcome@example.com>", 1234, "INBOX", 42
        )
    )
    queue_id = await queue.enqueue("alerts", "alerts@example.com", ["ops@example.net"], MESSAGE)
    for _ in range(100):  # the first attempt: deferred
        if (await outbox.status(queue_id)).attempts:
            break
        await deferLater(0.05)
    await writer.flush()
    resource = ConsoleResource(
        config, store, reactor, live=LiveParts(queue=queue, messages=messages, outbox=outbox)
    )
    port = reactor.listenTCP(0, ConsoleSite(resource), interface="127.0.0.1")
    console = f"http://127.0.0.1:{port.getHost().port}"
    try:
        driver, shot = browser_factory()

        def person() -> dict:
            from selenium.webdriver.common.by import By

            seen: dict = {}
            driver.get(console + "/")
            shot("console")
            follow(driver, By.LINK_TEXT, "alerts")
            assert "alerts: messages" in driver.title
            seen["received"] = read(driver, By.CSS_SELECTOR, "table.log-in")
            seen["outbox"] = read(driver, By.CSS_SELECTOR, "table.outbox")
            shot("messages-deferred")
            follow(driver, By.XPATH, "//button[text()='Retry now']")
            assert "Nothing waits." in driver.page_source

            def sentShown(d) -> bool:
                reload(d)
                return " sent " in f" {read(d, By.CSS_SELECTOR, 'table.log-out')} "

            until(driver, sentShown)
            seen["sent"] = read(driver, By.CSS_SELECTOR, "table.log-out")
            shot("messages-sent")
            follow(driver, By.XPATH, f"//a[@href='/outbox/{queue_id}']")
            assert "Header section" in driver.page_source
            seen["detail"] = read(driver, By.TAG_NAME, "body")
            shot("message-detail")
            return seen

        seen = await threads.deferToThread(person)
        assert "delivered" in seen["received"] and "<welcome@example.com>" in seen["received"]
        assert "INBOX/42" in seen["received"]
        assert "deferred" in seen["outbox"]
        assert "451 4.3.0 mailbox busy" in seen["outbox"]
        assert "sent" in seen["sent"] and "250 2.0.0 OK queued as P123" in seen["sent"]
        assert "Subject: disk almost full" in seen["detail"]
        assert "the body is never shown" not in seen["detail"]
        assert (await outbox.status(queue_id)).state == "sent"
    finally:
        await port.stopListening()
        await queue.stopService()
        await writer.stop()


def deferLater(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
