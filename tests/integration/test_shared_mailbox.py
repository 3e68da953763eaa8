"""A shared mailbox through a delegate, against a real Dovecot: read it and send from it.

The account is ``support@example.com`` (a shared mailbox) with ``delegate:
delegate@example.com``: oauthmail holds the delegate's token and logs in to IMAP
and submission as the mailbox, as Microsoft 365 wants it (SASL ``user=`` the
shared address, bearer token of a delegate with FullAccess). Dovecot plays
Exchange's permission check with the passdb in ``tests/dovecot-delegation/``
(see its comments): the delegate's token opens the shared mailbox, nobody
else's does, and the shared mailbox has no sign-in of its own.
"""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from oauthmail.config import (
    AccountConfig,
    AccountImapConfig,
    AccountSmtpConfig,
    FolderConfig,
    ServerConfig,
    SinkConfig,
)
from oauthmail.smtp.api import send
from oauthmail.smtp.queue.service import OutboundQueue
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.tokens.identity import accountIdentity

from .conftest import CLIENT_ID, TEMPLATES, makeProfile
from .test_imap_receive import ProviderTokens, maildirMessages, makeWatcher, message, waitFor
from .test_smtp_send import relayedWith

pytestmark = pytest.mark.integration

SHARED = "support@example.com"
DELEGATE = "delegate@example.com"
DELEGATION = Path(__file__).resolve().parent.parent / "dovecot-delegation"


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def delegation_templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' Dovecot templates with the delegation passdb of tests/dovecot-delegation."""
    folder = tmp_path_factory.mktemp("dovecot-delegation")
    config = (TEMPLATES / "dovecot.conf.in").read_text()
    marker = "passdb {\n  driver = oauth2\n"
    assert marker in config
    passdb = (DELEGATION / "passdb.conf").read_text()
    (folder / "dovecot.conf.in").write_text(config.replace(marker, passdb + marker, 1))
    oauth2 = (TEMPLATES / "dovecot-oauth2.conf.in").read_text()
    (folder / "dovecot-oauth2.conf.in").write_text(
        oauth2 + (DELEGATION / "oauth2.conf").read_text()
    )
    return folder


@pytest.fixture(scope="module")
def shared_dovecot(dovecot_factory, delegation_templates):
    return dovecot_factory(templateDir=delegation_templates, authFailureDelay=0)


def _account(server) -> AccountConfig:
    imap = ServerConfig(
        server.host,
        server.ports.imaps,
        "implicit",
        ca_file=str(server.caFile),
        server_name="mail.test",
    )
    smtp = ServerConfig(
        server.host,
        server.ports.submission,
        "starttls",
        ca_file=str(server.caFile),
        server_name="mail.test",
    )
    return AccountConfig(
        name="support",
        address=SHARED,
        profile=makeProfile(imap=imap, smtp=smtp),
        delegate=DELEGATE,
        imap=AccountImapConfig(
            folders=(FolderConfig("INBOX", "seen"),),
            sink=SinkConfig("maildir", path="unused"),
            idle=True,
            poll_interval=1.0,
        ),
        smtp=AccountSmtpConfig("xoauth2"),
    )


def _xoauth2Login(server, user: str, token: str) -> str:
    """A blocking IMAP XOAUTH2 login (run it in a thread); fire with OK or the refusal."""
    client = imaplib.IMAP4_SSL(server.host, server.ports.imaps, ssl_context=server.tlsContext())
    try:
        raw = f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
        try:
            typ, _ = client.authenticate("XOAUTH2", lambda _: raw)
        except imaplib.IMAP4.error as e:
            return f"refused: {e}"
        client.logout()
        return typ
    finally:
        try:
            client.shutdown()
        except OSError:
            pass


@pytest_twisted.ensureDeferred
async def test_delegate_reads_the_shared_mailbox(shared_dovecot, oauth_provider, tmp_path):
    """The watcher logs in as the shared mailbox with the delegate's token and fetches its mail."""
    acct = _account(shared_dovecot)
    assert (acct.sasl_user, accountIdentity(acct)) == (SHARED, DELEGATE)
    for i in range(2):
        await threads.deferToThread(shared_dovecot.appendMessage, SHARED, message(i, "shared"))
    await threads.deferToThread(shared_dovecot.appendMessage, DELEGATE, message(9, "own"))
    tokens = ProviderTokens(oauth_provider, DELEGATE)
    watcher = makeWatcher(acct, tokens, tmp_path / "md")
    watcher.start()
    try:
        assert await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 2, 15.0)
    finally:
        await watcher.stop()
    got = maildirMessages(tmp_path / "md")
    assert all(b"Subject: shared" in m for m in got)  # the mailbox's mail, not the delegate's
    log = shared_dovecot.logPath.read_text()
    assert f"Login: user=<{SHARED}>, method=XOAUTH2" in log


@pytest_twisted.ensureDeferred
async def test_delegate_sends_from_the_shared_address(shared_dovecot, oauth_provider, final_hop):
    """Submission as the shared mailbox with the delegate's token; MAIL FROM the shared address."""
    reactor = _reactor()
    acct = _account(shared_dovecot)
    queue = OutboundQueue(
        MemoryOutbox(),
        ProviderTokens(oauth_provider, DELEGATE),
        {acct.name: acct},
        reactor,
        backoff_base=0.3,
        backoff_max=1.0,
    )
    await queue.startService()
    try:
        data = (
            f"From: Support <{SHARED}>\r\nTo: customer@example.net\r\n"
            "Subject: shared-send\r\nMessage-ID: <shared-send@client.test>\r\n\r\nhello\r\n"
        ).encode()
        message_id = await send(queue, acct.name, acct.address, ["customer@example.net"], data)
        status = await queue.whenDelivered(message_id).addTimeout(20, reactor)
        assert status.state == "sent", status
        relayed = await waitFor(lambda: relayedWith(final_hop, "shared-send") is not None, 15.0)
        assert relayed
        assert relayedWith(final_hop, "shared-send").mailFrom == SHARED
    finally:
        await queue.stopService()


@pytest_twisted.ensureDeferred
async def test_only_the_delegates_token_opens_the_shared_mailbox(shared_dovecot, oauth_provider):
    """Another person's token, or a token of the mailbox itself, is refused for it."""
    delegate = oauth_provider.issueTokens(DELEGATE, CLIENT_ID)["access_token"]
    mallory = oauth_provider.issueTokens("mallory@example.com", CLIENT_ID)["access_token"]
    itself = oauth_provider.issueTokens(SHARED, CLIENT_ID)["access_token"]
    login = lambda user, token: threads.deferToThread(  # noqa: E731
        _xoauth2Login, shared_dovecot, user, token
    )
    assert await login(SHARED, delegate) == "OK"
    assert await login(DELEGATE, delegate) == "OK"  # the delegate's own mailbox still opens
    assert (await login(SHARED, mallory)).startswith("refused")
    assert (await login(SHARED, itself)).startswith("refused")
