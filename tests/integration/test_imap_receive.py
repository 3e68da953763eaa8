"""The IMAP watcher against a real Dovecot: TLS, OAuth, IDLE, dispositions, exactly once.

Blocking helpers (imaplib seeding and inspection) run in threads, because
Dovecot asks the test provider (on this reactor) to introspect every token.
Each test uses its own mail user so tests never see each other's mail.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from oauthmail.config import (
    AccountConfig,
    AccountImapConfig,
    FolderConfig,
    ServerConfig,
    SinkConfig,
)
from oauthmail.imap.connect import connectIMAP
from oauthmail.imap.watcher import FolderWatcher
from oauthmail.secret import Secret
from oauthmail.sinks.maildir import MaildirSink
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger
from oauthmail.tls import TLSCertificateError

from .conftest import CLIENT_ID, makeProfile

pytestmark = pytest.mark.integration

#: The requirement: IDLE delivers a new message into the Maildir within this bound.
IDLE_BOUND = 2.0


def _reactor():
    from twisted.internet import reactor

    return reactor


class ProviderTokens:
    """An ITokenSource over the test provider: refreshes mint a new token for the user."""

    def __init__(self, provider, user: str):
        self.provider = provider
        self.user = user
        self.current = provider.issueTokens(user, CLIENT_ID)["access_token"]
        self.refreshes = 0

    def accessToken(self, account):
        return defer.succeed(Secret(self.current))

    def forceRefresh(self, account):
        self.refreshes += 1
        self.current = self.provider.issueTokens(self.user, CLIENT_ID)["access_token"]
        return defer.succeed(Secret(self.current))


def server(dovecot, security="implicit", ca=None) -> ServerConfig:
    port = dovecot.ports.imaps if security == "implicit" else dovecot.ports.imap
    return ServerConfig(
        dovecot.host, port, security, ca_file=str(ca or dovecot.caFile), server_name="mail.test"
    )


def account(user, srv, mechanism="xoauth2", disposition="seen", move_to=None) -> AccountConfig:
    profile = makeProfile(imap=srv)
    imap = AccountImapConfig(
        folders=(FolderConfig("INBOX", disposition, move_to),),
        sink=SinkConfig("maildir", path="unused"),
        mechanism=mechanism,
        idle=True,
        poll_interval=1.0,
        batch_size=50,
    )
    return AccountConfig(name=user.split("@")[0], address=user, profile=profile, imap=imap)


def message(i: int, tag: str) -> bytes:
    return (
        f"From: sender@example.com\r\nTo: x@example.com\r\nSubject: {tag} {i}\r\n"
        f"Message-ID: <{tag}-{i}@test>\r\n\r\nbody {i} ) {{12}}\r\n.\r\n"
    ).encode()


def maildirMessages(path: Path) -> list[bytes]:
    new = path / "new"
    if not new.is_dir():
        return []
    return [p.read_bytes() for p in sorted(new.iterdir())]


async def waitFor(predicate, bound: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` on the reactor until true or ``bound`` seconds passed."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if predicate():
            return True
        await task.deferLater(_reactor(), step, lambda: None)
    return predicate()


def makeWatcher(acct, tokens, maildir, ledger=None):
    reactor = _reactor()
    watcher = FolderWatcher(
        acct,
        acct.imap.folders[0],
        tokens,
        ledger or MemoryDeliveryLedger(),
        MaildirSink(str(maildir), reactor),
        reactor,
        retryPolicy=lambda attempt: 0.2,
        connectTimeout=10.0,
    )
    return watcher


def serverState(dovecot, user, mailbox="INBOX"):
    """(number of messages, their flags) in the user's mailbox, via a master login."""
    imap = dovecot.imapClient()
    try:
        imap.login(f"{user}*{dovecot.masterUser}", dovecot.masterPassword)
        typ, data = imap.select(mailbox, readonly=True)
        if typ != "OK" or int(data[0]) == 0:
            return 0, []
        _, data = imap.fetch("1:*", "(FLAGS)")
        flags = [d.decode() for d in data if d]
        return len(flags), flags
    finally:
        imap.logout()


@pytest.mark.parametrize(
    "mechanism,security", [("xoauth2", "implicit"), ("oauthbearer", "starttls")]
)
@pytest_twisted.ensureDeferred
async def test_receive_then_idle(dovecot, oauth_provider, tmp_path, mechanism, security):
    """Existing mail is delivered and flagged; a new message arrives via IDLE within 2 s."""
    user = f"recv-{mechanism}-{security}@example.com"
    await threads.deferToThread(dovecot.appendMessage, user, message(0, "pre"))
    tokens = ProviderTokens(oauth_provider, user)
    acct = account(user, server(dovecot, security), mechanism)
    watcher = makeWatcher(acct, tokens, tmp_path / "md")
    watcher.start()
    try:
        assert await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 1, 10.0)
        assert await waitFor(lambda: watcher.state == "waiting", 5.0)
        await threads.deferToThread(dovecot.appendMessage, user, message(1, "idle"))
        arrived = await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 2, IDLE_BOUND)
        assert arrived, f"not delivered within {IDLE_BOUND}s (state {watcher.state})"
        # File names sort by second, not by microsecond (M99999 > M100000): no order here.
        assert message(0, "pre") in maildirMessages(tmp_path / "md")
        count, flags = await threads.deferToThread(serverState, dovecot, user)
        assert count == 2
    finally:
        await watcher.stop()
    _, flags = await threads.deferToThread(serverState, dovecot, user)
    assert all("\\Seen" in f for f in flags)


@pytest.mark.parametrize(
    "certSet,words",
    [("wrongHost", "not valid for mail.test"), ("unknownCA", "not trusted: unknown CA")],
)
@pytest.mark.parametrize("security", ["implicit", "starttls"])
@pytest_twisted.ensureDeferred
async def test_bad_certificates_refused(dovecot_factory, certSet, words, security):
    """A wrong-host or unknown-CA certificate fails with one clear line."""
    bad = dovecot_factory(certSet)
    with pytest.raises(TLSCertificateError) as info:
        await connectIMAP(_reactor(), server(bad, security), timeout=10.0)
    text = str(info.value)
    assert f"TLS certificate of 127.0.0.1:{server(bad, security).port}" in text
    assert words in text
    assert "\n" not in text


@pytest_twisted.ensureDeferred
async def test_expired_token_is_refreshed(dovecot, oauth_provider, tmp_path):
    """An expired token is rejected, refreshed once, and the session goes on."""
    user = "expired@example.com"
    await threads.deferToThread(dovecot.appendMessage, user, message(0, "exp"))
    tokens = ProviderTokens(oauth_provider, user)
    oauth_provider.expireAll()
    watcher = makeWatcher(account(user, server(dovecot)), tokens, tmp_path / "md")
    watcher.start()
    try:
        assert await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 1, 15.0)
        assert tokens.refreshes == 1
    finally:
        await watcher.stop()


@pytest.mark.parametrize("disposition", ["move", "delete"])
@pytest_twisted.ensureDeferred
async def test_dispositions(dovecot, oauth_provider, tmp_path, disposition):
    """move puts the delivered message in the target folder; delete expunges it."""
    user = f"disp-{disposition}@example.com"
    for i in range(3):
        await threads.deferToThread(dovecot.appendMessage, user, message(i, disposition))
    tokens = ProviderTokens(oauth_provider, user)
    move_to = "Done" if disposition == "move" else None
    acct = account(user, server(dovecot), disposition=disposition, move_to=move_to)
    watcher = makeWatcher(acct, tokens, tmp_path / "md")
    watcher.start()
    try:
        assert await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 3, 10.0)
        assert await waitFor(lambda: watcher.state == "waiting", 5.0)
    finally:
        await watcher.stop()
    count, _ = await threads.deferToThread(serverState, dovecot, user)
    assert count == 0
    if disposition == "move":
        moved, _ = await threads.deferToThread(serverState, dovecot, user, "Done")
        assert moved == 3


def seedMany(dovecot, user, n, tag):
    imap = dovecot.imapClient()
    try:
        imap.login(f"{user}*{dovecot.masterUser}", dovecot.masterPassword)
        for i in range(n):
            imap.append("INBOX", None, None, message(i, tag))
    finally:
        imap.logout()


def _cut(transport) -> bool:
    """Drop the TCP connection under any TLS layer, as a network failure would."""
    if transport is None or getattr(transport, "disconnecting", False):
        return False
    # Under implicit TLS the client's transport is a TLSMemoryBIOProtocol over TCP;
    # aborting that layer while it is already closing trips a Twisted bug.
    tcp = getattr(transport, "transport", None) or transport
    if getattr(tcp, "disconnecting", False):
        return False
    tcp.abortConnection()
    return True


@pytest_twisted.ensureDeferred
async def test_exactly_once_with_connection_cuts(dovecot, oauth_provider, tmp_path):
    """200 messages, connection cut several times: each Message-ID exactly once, none left."""
    user = "bulk@example.com"
    await threads.deferToThread(seedMany, dovecot, user, 200, "bulk")
    tokens = ProviderTokens(oauth_provider, user)
    acct = account(user, server(dovecot), disposition="delete")
    md = tmp_path / "md"
    watcher = makeWatcher(acct, tokens, md)
    watcher.start()
    cuts = 0
    try:
        seen = 0
        while cuts < 4 and seen < 200:
            # Cut as soon as some progress was made since the last cut.
            await waitFor(lambda n=seen: len(maildirMessages(md)) > n, 5.0, step=0.01)
            seen = len(maildirMessages(md))
            client = watcher.client
            if client is not None and _cut(client.transport):
                cuts += 1
        assert await waitFor(lambda: len(maildirMessages(md)) >= 200, 30.0)
        assert await waitFor(lambda: watcher.state == "waiting", 10.0)
    finally:
        await watcher.stop()
    ids = [
        line
        for m in maildirMessages(md)
        for line in m.split(b"\r\n")
        if line.startswith(b"Message-ID")
    ]
    assert len(ids) == 200
    assert len(set(ids)) == 200
    assert cuts >= 1
    count, _ = await threads.deferToThread(serverState, dovecot, user)
    assert count == 0


@pytest_twisted.ensureDeferred
async def test_real_token_source_refreshes_an_expired_token_first(
    dovecot, oauth_provider, tmp_path
):
    """With the real TokenSource, a stored token past its expiry is refreshed before login."""
    from dataclasses import replace

    from oauthmail.testing.memory_store import MemoryTokenStore
    from oauthmail.tokens.http import AgentTransport
    from oauthmail.tokens.records import TokenSet
    from oauthmail.tokens.source import TokenSource

    from .conftest import CLIENT_SECRET

    reactor = _reactor()
    user = "source@example.com"
    await threads.deferToThread(dovecot.appendMessage, user, message(0, "src"))
    acct = account(user, server(dovecot))
    acct = replace(
        acct,
        profile=replace(
            acct.profile,
            token_endpoint=oauth_provider.token_endpoint,
            client_secret=Secret(CLIENT_SECRET),
            # replace() keeps the client type derived when the profile had no
            # secret (public): say that this one is confidential now.
            client_auth="secret",
        ),
    )
    issued = oauth_provider.issueTokens(user, CLIENT_ID)
    store = MemoryTokenStore(reactor)
    await store.ensureAccount(acct.name, "generic")
    expired = TokenSet(
        Secret(issued["access_token"]),
        reactor.seconds() - 60,
        Secret(issued["refresh_token"]),
        "mail",
    )
    await store.putTokens(acct.name, expired, 0)
    await store.setAccountState(acct.name, "ok")
    transport = AgentTransport(reactor)
    source = TokenSource(store, {acct.name: acct}, transport, reactor)
    before = oauth_provider.requests["token:refresh_token"]
    watcher = makeWatcher(acct, source, tmp_path / "md")
    watcher.start()
    try:
        assert await waitFor(lambda: len(maildirMessages(tmp_path / "md")) == 1, 15.0)
        assert oauth_provider.requests["token:refresh_token"] == before + 1
        record = await store.getTokens(acct.name)
        assert record.expires_at > reactor.seconds()
        assert record.refresh_token != Secret(issued["refresh_token"])  # rotated and stored
    finally:
        await watcher.stop()
        await transport.close()
