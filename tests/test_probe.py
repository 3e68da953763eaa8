"""``oauthmail test``'s steps against provider-shaped servers: Gmail-like and Exchange-like.

The test OAuth provider answers in Google's or Microsoft's words
(``style=``); :class:`~oauthmail.testing.providermail.ProviderMail` runs an
IMAP and an SMTP server (implicit TLS, loopback) that answer like Gmail
(``X-GM-EXT-1``, the JSON error challenge, ``550 5.4.5``) or Exchange Online
(``NO AUTHENTICATE failed.``, ``535 5.7.139``, ``554 5.2.0``; its Sent copy
loses the trace line). Each test runs the probe end to end with the daemon's
token source over a memory store and pins one outcome: which step passes,
which fails, what the line says and what the fix names.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import defer

from oauthmail.config import (
    AccountConfig,
    AccountImapConfig,
    AccountSmtpConfig,
    FolderConfig,
    ProfileConfig,
    SinkConfig,
)
from oauthmail.probe import NOTE, OK, SKIPPED, AccountProbe, formatResult
from oauthmail.probe.account import selfMessage
from oauthmail.secret import Secret
from oauthmail.testing.certs import generateTestCertificates
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.testing.providermail import EXCHANGE, GMAIL, ProviderMail, tokenChecker
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource

ADDRESS = "alice@example.com"
CLIENT = "probe-client"
SECRET = "probe-client-secret"
GMAIL_SCOPE = "https://mail.google.com/"
EXCHANGE_SCOPES = "https://outlook.office.com/IMAP.AccessAsUser.All offline_access"


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return generateTestCertificates(tmp_path_factory.mktemp("probe-certs"))


class World:
    """A provider in one style, its mail servers, a store, a token source, an account."""

    def __init__(self, certs, kind: str, **account) -> None:
        reactor = _reactor()
        self.kind = kind
        style = "google" if kind == "google" else "microsoft"
        self.provider = TestOAuthProvider(style=style, rotate_refresh_tokens=kind != "google")
        self.provider.registerClient(CLIENT, SECRET if kind == "google" else None)
        self.provider.listen(reactor)
        mailStyle = GMAIL if kind == "google" else EXCHANGE
        self.mail = ProviderMail(mailStyle, tokenChecker(self.provider)).listen(reactor, certs)
        self.scope = GMAIL_SCOPE if kind == "google" else EXCHANGE_SCOPES
        p = self.provider
        self.profile = ProfileConfig(
            name=kind,
            kind=kind,
            authorization_endpoint=p.authorization_endpoint,
            token_endpoint=p.token_endpoint,
            device_endpoint=None,
            revocation_endpoint=None,
            introspection_endpoint=None,
            client_id=CLIENT,
            client_secret=Secret(SECRET) if kind == "google" else None,
            scopes=tuple(self.scope.split()),
            imap=self.mail.imap,
            smtp=self.mail.smtp,
        )
        sink = SinkConfig("maildir", path="/nonexistent")
        folders = account.pop("folders", (FolderConfig("INBOX"),))
        self.account = AccountConfig(
            "alice",
            ADDRESS,
            self.profile,
            imap=AccountImapConfig(folders=folders, sink=sink),
            smtp=AccountSmtpConfig(sent_folder="auto"),
            **account,
        )
        self.store = MemoryTokenStore(reactor)
        self.http = AgentTransport(reactor, persistent=False)
        self.tokens = TokenSource(self.store, {"alice": self.account}, self.http, reactor)
        self.printed: list[str] = []

    async def authorise(self, expires_in: float | None = None) -> None:
        """Tokens for alice, as if she had just consented (``expires_in``: shorten them)."""
        answer = self.provider.issueTokens(ADDRESS, CLIENT, scope=self.scope)
        reactor = _reactor()
        await self.store.ensureAccount("alice", self.kind)
        lifetime = answer["expires_in"] if expires_in is None else expires_in
        tokens = TokenSet(
            Secret(answer["access_token"]),
            reactor.seconds() + lifetime,
            Secret(answer["refresh_token"]),
            answer["scope"],
        )
        await self.store.putTokens("alice", tokens, 0)

    def probe(self, account: AccountConfig | None = None, wait: float = 5.0) -> AccountProbe:
        def emit(result) -> None:
            self.printed.extend(formatResult(result))

        account = account or self.account
        return AccountProbe(account, self.tokens, self.store, _reactor(), emit=emit, wait=wait)

    async def stop(self) -> None:
        await self.http.close()
        await self.mail.stop()
        await self.provider.stop()


@pytest.fixture
def world(certs, request):
    made: list[World] = []

    def make(kind: str, **account) -> World:
        w = World(certs, kind, **account)
        made.append(w)
        return w

    yield make
    for w in made:
        pytest_twisted.blockon(defer.ensureDeferred(w.stop()))


def statuses(results) -> dict[str, str]:
    return {r.step: r.status for r in results}


def line(results, step: str):
    return next(r for r in results if r.step == step)


# -- Gmail-like ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_gmail_like_account_passes_and_proves_the_sent_search(world) -> None:
    """Every step passes; Gmail's Sent copy keeps the trace line, found with X-GM-RAW; recorded."""
    w = world("google")
    await w.authorise()
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == []
    assert statuses(results) == {
        "config": OK,
        "token": OK,
        "imap login": OK,
        "folders": OK,
        "smtp login": OK,
        "send": OK,
        "inbox": OK,
        "sent copy": OK,
        "sent search": OK,
    }
    assert "offers X-GM-EXT-1" in line(results, "imap login").line
    assert "Sent is '[Gmail]/Sent Mail' (marked \\Sent)" in line(results, "folders").line
    assert "nothing sent (QUIT)" in line(results, "smtp login").line
    assert "searched with X-GM-RAW rfc822msgid" in line(results, "sent copy").line
    assert "keeps the Received: line" in line(results, "sent copy").line
    proof = await w.store.getSentProof("alice")
    assert (proof.kept, proof.folder) == (True, "[Gmail]/Sent Mail")
    assert "searching Sent" in line(results, "sent search").line
    # One message went out, to alice herself, carrying the queue's trace line.
    ((sender, recipients, data),) = w.mail.accepted
    assert (sender, recipients) == (ADDRESS, (ADDRESS,))
    assert data.startswith(b"Received: by localhost (oauthmail) id ")
    for printed in w.printed:
        assert len(printed) < 700


@pytest_twisted.ensureDeferred
async def test_without_send_to_self_nothing_is_sent_and_nothing_recorded(world) -> None:
    """The plain test logs in over IMAP and SMTP and lists folders; it sends nothing."""
    w = world("google")
    await w.authorise()
    results = await w.probe().run()
    assert [r.step for r in results] == ["config", "token", "imap login", "folders", "smtp login"]
    assert {r.status for r in results} == {OK}
    assert w.mail.accepted == []
    assert await w.store.getSentProof("alice") is None


@pytest_twisted.ensureDeferred
async def test_gmail_daily_limit_fails_the_send_step_with_the_quota_advice(world) -> None:
    """550 5.4.5 (Gmail's daily limit) fails 'send' and says sending resumes within 24 h."""
    w = world("google")
    await w.authorise()
    w.mail.quotaExceeded = True
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == ["send"]
    send = line(results, "send")
    assert "550 5.4.5 Daily user sending limit exceeded" in send.line
    assert "resumes within 24 h" in send.fix
    assert statuses(results)["inbox"] == SKIPPED


@pytest_twisted.ensureDeferred
async def test_google_admin_policy_at_refresh_asks_for_a_new_authorisation(world) -> None:
    """admin_policy_enforced at refresh: the token step fails and says authorise again."""
    w = world("google")
    await w.authorise(expires_in=60)  # within the margin: the token source refreshes
    w.provider.failUsers(ADDRESS, reason="admin_policy_enforced")
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == ["token"]
    token = line(results, "token")
    assert "admin_policy_enforced" in token.line
    assert token.fix.startswith("authorise it again: oauthmail authorize alice")
    assert {r.status for r in results[2:]} == {SKIPPED}


@pytest_twisted.ensureDeferred
async def test_an_unauthorised_account_is_told_to_authorise(world) -> None:
    """No tokens yet: the token step fails with the command to run."""
    w = world("google")
    await w.store.ensureAccount("alice", "google")
    probe = w.probe()
    results = await probe.run()
    assert probe.failed == ["token"]
    assert line(results, "token").fix.startswith("authorise it: oauthmail authorize alice")


@pytest_twisted.ensureDeferred
async def test_a_watched_folder_that_does_not_exist_fails_the_folders_step(world) -> None:
    """A watched folder missing on the server: 'folders' fails and lists what the server has."""
    w = world("google", folders=(FolderConfig("INBOX"), FolderConfig("Receipts")))
    await w.authorise()
    probe = w.probe()
    results = await probe.run()
    assert probe.failed == ["folders"]
    folders = line(results, "folders")
    assert "missing: Receipts" in folders.line
    assert "'[Gmail]/All Mail'" in folders.fix
    assert statuses(results)["smtp login"] == OK


@pytest_twisted.ensureDeferred
async def test_gmail_refused_token_after_its_json_challenge_is_explained(world) -> None:
    """Gmail's error challenge (400), then NO [AUTHENTICATIONFAILED]: one refresh, the Gmail fix."""
    w = world("google")
    await w.authorise()
    w.mail.refuseIMAP = True
    probe = w.probe()
    results = await probe.run()
    assert probe.failed == ["imap login"]
    imap = line(results, "imap login")
    assert "[AUTHENTICATIONFAILED] Invalid credentials (Failure)" in imap.line
    assert "(server error: 400)" in imap.line
    assert "https://mail.google.com/" in imap.fix and "docs/providers/google.md" in imap.fix
    assert w.mail.imapLogins == 2


# -- Exchange-like -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_exchange_like_account_passes_but_sent_loses_the_trace(world) -> None:
    """Exchange-like: the logins work; Sent lost the trace line: at least once, recorded."""
    w = world("microsoft")
    await w.authorise()
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == []
    assert statuses(results)["sent copy"] == NOTE
    copy = line(results, "sent copy")
    assert "found in 'Sent Items'" in copy.line and "without the Received: line" in copy.line
    assert "searched with HEADER Message-ID" in copy.line
    search = line(results, "sent search")
    assert search.status == NOTE and "at least once" in search.line
    proof = await w.store.getSentProof("alice")
    assert (proof.kept, proof.folder) == (False, "Sent Items")


@pytest_twisted.ensureDeferred
async def test_exchange_bare_imap_refusal_is_refreshed_once_then_explained(world) -> None:
    """'NO AUTHENTICATE failed.' counts as a refused token: one refresh, then the Microsoft fix."""
    w = world("microsoft")
    await w.authorise()
    w.mail.refuseIMAP = True
    refreshes = w.provider.requests["token:refresh_token"]
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == ["imap login"]
    imap = line(results, "imap login")
    assert "XOAUTH2 authentication failed: AUTHENTICATE failed." in imap.line
    assert "IMAP.AccessAsUser.All" in imap.fix and "Set-CASMailbox" in imap.fix
    assert "docs/providers/microsoft.md" in imap.fix
    assert w.mail.imapLogins == 2  # the first token, then a refreshed one
    assert w.provider.requests["token:refresh_token"] == refreshes + 1
    assert statuses(results)["folders"] == SKIPPED
    assert statuses(results)["smtp login"] == OK
    assert statuses(results)["send"] == SKIPPED  # nothing sent that could not be looked for
    assert w.mail.accepted == []


@pytest_twisted.ensureDeferred
async def test_exchange_smtp_auth_disabled_names_the_switches(world) -> None:
    """535 5.7.139: 'smtp login' fails, naming the per-mailbox switch, the policies and Graph."""
    w = world("microsoft")
    await w.authorise()
    w.mail.smtpAuthDisabled = True
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == ["smtp login"]
    smtp = line(results, "smtp login")
    assert "535 5.7.139" in smtp.line
    assert "SMTP AUTH is off for the tenant or for the mailbox" in smtp.line
    assert (
        "Set-CASMailbox -Identity alice@example.com -SmtpClientAuthenticationDisabled $false"
        in (smtp.fix)
    )
    assert "Security defaults" in smtp.fix and "transport: graph" in smtp.fix
    assert {r.status for r in results if r.step in ("send", "inbox", "sent copy")} == {SKIPPED}


@pytest_twisted.ensureDeferred
async def test_exchange_submission_quota_fails_send_and_keeps_nothing(world) -> None:
    """554 5.2.0 SubmissionQuotaExceeded fails 'send' with the quota advice; nothing delivered."""
    w = world("microsoft")
    await w.authorise()
    w.mail.quotaExceeded = True
    probe = w.probe()
    results = await probe.run(sendToSelf=True)
    assert probe.failed == ["send"]
    send = line(results, "send")
    assert "554 5.2.0" in send.line and "SubmissionQuotaExceeded" in send.line
    assert "resumes within 24 h" in send.fix
    assert w.mail.mailboxes.messages(ADDRESS, "INBOX") == []


@pytest_twisted.ensureDeferred
async def test_exchange_interaction_required_asks_for_a_sign_in(world) -> None:
    """interaction_required at refresh (MFA): the token step says to authorise again."""
    w = world("microsoft")
    await w.authorise(expires_in=60)
    w.provider.failUsers(ADDRESS, reason="interaction_required")
    probe = w.probe()
    results = await probe.run()
    assert probe.failed == ["token"]
    assert "AADSTS50076" in line(results, "token").line
    assert "sign in again" in line(results, "token").fix


@pytest_twisted.ensureDeferred
async def test_an_account_that_names_sent_explicitly_keeps_searching_it(world) -> None:
    """sent_folder named 'Sent Items' with the trace lost: the recorded finding turns it off."""
    w = world("microsoft")
    await w.authorise()
    named = replace(w.account, smtp=AccountSmtpConfig(sent_folder="Sent Items"))
    results = await w.probe(named).run(sendToSelf=True)
    assert "Sent is 'Sent Items' (smtp.sent_folder)" in line(results, "folders").line
    assert "at least once" in line(results, "sent search").line


def test_the_self_message_carries_the_trace_line_and_a_message_id() -> None:
    """The test message is stamped as the queue stamps: the trace line names the queue id."""
    from oauthmail.mail.trace import carriesQueueId, headerBlock, messageIdOf

    profile = ProfileConfig("p", "generic", None, "https://t", None, None, None, "c", None, ())
    data, message_id = selfMessage(AccountConfig("a", ADDRESS, profile), "q123", 0.0)
    assert carriesQueueId(headerBlock(data), "q123")
    assert messageIdOf(data) == message_id == "<oauthmail-test-q123@example.com>"
    assert b"\r\nTo: <alice@example.com>\r\n" in data


@pytest_twisted.ensureDeferred
async def test_a_graph_account_sends_through_graph_and_skips_imap(world) -> None:
    """transport: graph: no IMAP login (a Graph token opens none); the message goes via Graph."""
    from oauthmail.testing.graph import GraphFake

    w = world("microsoft")
    await w.authorise()
    graph = GraphFake(w.provider)
    base = graph.listen(_reactor())
    try:
        smtp = AccountSmtpConfig(transport="graph", base_url=base)
        account = replace(w.account, imap=None, smtp=smtp)
        probe = w.probe(account)
        results = await probe.run(sendToSelf=True)
        assert probe.failed == []
        assert statuses(results) == {
            "config": OK,
            "token": OK,
            "imap login": SKIPPED,
            "folders": SKIPPED,
            "smtp login": SKIPPED,
            "send": OK,
            "inbox": SKIPPED,
            "sent copy": SKIPPED,
            "sent search": SKIPPED,
        }
        assert "Graph token, which IMAP refuses" in line(results, "imap login").line
        assert "sends over HTTPS" in line(results, "smtp login").line
        (raw,) = graph.raws()
        assert b"Received: by localhost (oauthmail) id " in raw
    finally:
        await graph.stop()
