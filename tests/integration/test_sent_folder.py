"""The Sent-folder check against a real Dovecot: only the provider's (stamped) copy counts.

The test Dovecot has a ``Sent`` mailbox marked ``\\Sent`` (RFC 6154) in its
inbox namespace, as Gmail and Exchange do. Mail is seeded as Dovecot's master
user in a thread (a blocking imaplib), the check itself runs on the reactor.
Each test uses its own mail user.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from oauthmail.config import AccountConfig, AccountSmtpConfig, ServerConfig
from oauthmail.imap.sentfolder import IMAPSentFolder
from oauthmail.mail.trace import SentCheckError, SentProbe, stamp
from oauthmail.secret import Secret

from .conftest import CLIENT_ID, makeProfile

pytestmark = pytest.mark.integration


def _reactor():
    from twisted.internet import reactor

    return reactor


class Tokens:
    """An ITokenSource over the test provider; ``refreshMints=False`` hands out the same token."""

    def __init__(self, provider, user: str, refreshMints: bool = True):
        self.provider = provider
        self.user = user
        self.refreshMints = refreshMints
        self.current = provider.issueTokens(user, CLIENT_ID)["access_token"]
        self.refreshes = 0

    def accessToken(self, account):
        return defer.succeed(Secret(self.current))

    def forceRefresh(self, account):
        self.refreshes += 1
        if self.refreshMints:
            self.current = self.provider.issueTokens(self.user, CLIENT_ID)["access_token"]
        return defer.succeed(Secret(self.current))


def account(dovecot, user: str, sent_folder: str, security: str = "implicit", mech="xoauth2"):
    """An SMTP-only account (no imap section) whose profile points at the test Dovecot."""
    port = dovecot.ports.imaps if security == "implicit" else dovecot.ports.imap
    server = ServerConfig(
        dovecot.host, port, security, ca_file=str(dovecot.caFile), server_name="mail.test"
    )
    profile = makeProfile(imap=server)
    return AccountConfig(
        name=user.split("@")[0],
        address=user,
        profile=profile,
        smtp=AccountSmtpConfig(mechanism=mech, sent_folder=sent_folder),
    )


def message(tag: str, user: str) -> bytes:
    return (
        f"From: {user}\r\nTo: bob@example.net\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@example.com>\r\n\r\nbody of {tag}\r\n"
    ).encode()


def sentFolder(acct: AccountConfig, tokens) -> IMAPSentFolder:
    return IMAPSentFolder(_reactor(), {acct.name: acct}, tokens, timeout=10.0)


async def seed(dovecot, user: str, *messages: bytes) -> None:
    for raw in messages:
        await threads.deferToThread(dovecot.appendMessage, user, raw, mailbox="Sent")


@pytest_twisted.ensureDeferred
async def test_finds_only_the_stamped_copy(dovecot, oauth_provider):
    """The stamped copy is found; an unstamped copy with another probe's Message-ID is not."""
    user = "sent-found@example.com"
    stamped = stamp(message("m1", user), "q-one", 1_700_000_000.0, user)
    await seed(
        dovecot,
        user,
        message("m1", user),  # the mail program's own copy of the same message
        stamped,
        message("m2", user),  # only the mail program's copy: not proof that q-two went out
    )
    acct = account(dovecot, user, "Sent")
    probes = [
        SentProbe("q-one", "<m1@example.com>"),
        SentProbe("q-two", "<m2@example.com>"),
        SentProbe("q-three", "<m3@example.com>"),
    ]
    found = await sentFolder(acct, Tokens(oauth_provider, user)).findSent(acct.name, probes)
    assert found == {"q-one"}


@pytest_twisted.ensureDeferred
async def test_auto_discovery_finds_dovecots_sent(dovecot, oauth_provider):
    """``auto`` finds the mailbox marked \\Sent (OAUTHBEARER over STARTTLS this time)."""
    user = "sent-auto@example.com"
    await seed(dovecot, user, stamp(message("a1", user), "q-auto", 1_700_000_000.0, user))
    acct = account(dovecot, user, "auto", security="starttls", mech="oauthbearer")
    folder = sentFolder(acct, Tokens(oauth_provider, user))
    found = await folder.findSent(acct.name, [SentProbe("q-auto", "<a1@example.com>")])
    assert found == {"q-auto"}


@pytest_twisted.ensureDeferred
async def test_auto_discovery_on_a_fresh_mailbox(dovecot, oauth_provider):
    """A user who never sent anything still has Sent (auto = subscribe): nothing is found."""
    user = "sent-fresh@example.com"
    acct = account(dovecot, user, "auto")
    folder = sentFolder(acct, Tokens(oauth_provider, user))
    assert await folder.findSent(acct.name, [SentProbe("q", "<nothing@example.com>")]) == set()


@pytest_twisted.ensureDeferred
async def test_wrong_folder_name(dovecot, oauth_provider):
    """An explicit folder that does not exist: one SentCheckError line naming it."""
    user = "sent-wrong@example.com"
    acct = account(dovecot, user, "Sent Items")
    folder = sentFolder(acct, Tokens(oauth_provider, user))
    with pytest.raises(SentCheckError) as info:
        await folder.findSent(acct.name, [SentProbe("q", "<x@example.com>")])
    text = str(info.value)
    assert "\n" not in text
    assert f"account sent-wrong on {dovecot.host}:{dovecot.ports.imaps}" in text
    assert "opening mailbox 'Sent Items'" in text
    assert "doesn't exist" in text


@pytest_twisted.ensureDeferred
async def test_revoked_token(dovecot_factory, oauth_provider):
    """A revoked token is refused, refreshed once (still refused): SentCheckError, no token."""
    fast = dovecot_factory(authFailureDelay=0)
    user = "sent-revoked@example.com"
    tokens = Tokens(oauth_provider, user, refreshMints=False)
    oauth_provider.revokeUser(user)
    acct = account(fast, user, "auto")
    with pytest.raises(SentCheckError) as info:
        await sentFolder(acct, tokens).findSent(acct.name, [SentProbe("q", "<x@example.com>")])
    text = str(info.value)
    assert "\n" not in text
    assert tokens.current not in text
    assert "authenticating with a refreshed token" in text
    assert "authentication failed" in text
    assert tokens.refreshes == 1
