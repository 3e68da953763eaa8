"""Sending through the real Dovecot submission server: queue, token source, ESMTP client.

Each test queues a message through the Python API (``oauthmail.smtp.api.send``)
and follows it to the final hop that Dovecot relays to. The token source talks
to the test OAuth provider, so refreshes, revocations and introspection faults
are the real thing. Every test uses its own mail user.
"""

from __future__ import annotations

import email
import time
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol

from oauthmail.config import AccountConfig, AccountSmtpConfig, ServerConfig
from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.db.sqlite.tokens import SQLiteTokenStore
from oauthmail.health import AccountHealth
from oauthmail.secret import Secret
from oauthmail.smtp.api import send
from oauthmail.smtp.client import OutgoingMessage
from oauthmail.smtp.esmtp.connect import loginFor
from oauthmail.smtp.esmtp.protocol import ESMTPClientProtocol
from oauthmail.smtp.queue.service import OutboundQueue
from oauthmail.tls import tlsOptions
from oauthmail.tokens.crypto import TokenCipher
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource

from .conftest import CLIENT_ID, makeProfile

pytestmark = pytest.mark.integration

TIMEOUT = 15.0


def _reactor():
    from twisted.internet import reactor

    return reactor


def accountFor(user, oauth_provider, server, security="starttls", mechanism="xoauth2"):
    port = server.ports.submission if security == "starttls" else server.ports.submissions
    profile = makeProfile(
        provider=oauth_provider,
        smtp=ServerConfig(
            server.host, port, security, ca_file=str(server.caFile), server_name="mail.test"
        ),
    )
    name = user.split("@")[0]
    return AccountConfig(name, user, profile, smtp=AccountSmtpConfig(mechanism))


class Sender:
    """A token store, token source and running outbound queue for one account."""

    def __init__(self, tmp_path, account, oauth_provider):
        reactor = _reactor()
        self.account = account
        self.provider = oauth_provider
        self.store = SQLiteTokenStore(
            str(tmp_path / "store.sqlite"),
            TokenCipher.coerce(__import__("cryptography.fernet").fernet.Fernet.generate_key()),
            reactor,
            reactor,
        )
        self.http = AgentTransport(reactor)
        self.health = AccountHealth(self.store, reactor)
        self.tokens = TokenSource(
            self.store, {account.name: account}, self.http, reactor, health=self.health
        )
        self.queue = OutboundQueue(
            SQLiteOutbox(self.store.database),
            self.tokens,
            {account.name: account},
            reactor,
            health=self.health,
            backoff_base=0.3,
            backoff_max=1.0,
            poll_interval=5.0,
        )

    async def start(self):
        await self.store.open()
        await self.authorise()
        await self.queue.startService()

    async def authorise(self):
        answer = self.provider.issueTokens(self.account.address, CLIENT_ID)
        tokens = TokenSet(
            Secret(answer["access_token"]),
            time.time() + answer["expires_in"],
            Secret(answer["refresh_token"]),
        )
        await self.tokens.storeAuthorized(self.account.name, tokens)

    async def stop(self):
        await self.queue.stopService()
        await self.http.close()
        await self.store.close()

    async def send(self, subject: str, to=("friend@example.net",)) -> tuple[str, bytes]:
        message = (
            f"From: {self.account.address}\r\nTo: {', '.join(to)}\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\n"
            "line one\r\n.a line starting with a dot\r\n..two dots\r\n\r\nbye\r\n"
        ).encode()
        message_id = await send(self.queue, self.account.name, self.account.address, to, message)
        return message_id, message

    async def delivered(self, message_id):
        return await self.queue.whenDelivered(message_id).addTimeout(TIMEOUT, _reactor())


async def waitFor(check: Callable[[], object], timeout: float = TIMEOUT):
    """Poll an (async) predicate every 0.1 s until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await task.deferLater(_reactor(), 0.1, lambda: None)


def relayedWith(final_hop, subject):
    for message in final_hop.messages:
        if email.message_from_bytes(message.data)["Subject"] == subject:
            return message
    return None


@pytest.fixture
def sender_for(tmp_path, oauth_provider):
    started = []

    async def make(account):
        sender = Sender(tmp_path / account.name, account, oauth_provider)
        (tmp_path / account.name).mkdir()
        started.append(sender)
        await sender.start()
        return sender

    yield make
    for sender in started:
        pytest_twisted.blockon(defer.ensureDeferred(sender.stop()))


@pytest.mark.parametrize(
    ("security", "mechanism"), [("starttls", "xoauth2"), ("implicit", "oauthbearer")]
)
@pytest_twisted.ensureDeferred
async def test_message_arrives_byte_for_byte(
    dovecot, oauth_provider, final_hop, sender_for, security, mechanism
):
    """A message sent through send() reaches the final hop unchanged (STARTTLS and implicit TLS)."""
    user = f"api-{security}@example.com"
    sender = await sender_for(accountFor(user, oauth_provider, dovecot, security, mechanism))
    subject = f"bytes-{security}"
    message_id, message = await sender.send(subject, to=("a@example.net", "b@example.net"))
    status = await sender.delivered(message_id)
    assert status.state == "sent", status
    assert {r.state for r in status.recipients} == {"sent"}
    relayed = await waitFor(lambda: relayedWith(final_hop, subject))
    assert relayed.mailFrom == user
    assert relayed.rcptTos == ("a@example.net", "b@example.net")
    assert relayed.data.endswith(message)
    added = relayed.data[: -len(message)]
    assert all(line[:1] in b" \t" or b":" in line for line in added.split(b"\r\n") if line)


@pytest.mark.parametrize(
    ("certSet", "words"), [("wrongHost", "not valid for mail.test"), ("unknownCA", "unknown CA")]
)
@pytest_twisted.ensureDeferred
async def test_bad_certificate_is_refused(
    dovecot_factory, oauth_provider, sender_for, certSet, words
):
    """A wrong-host or unknown-CA certificate is refused with a clear error; nothing is sent."""
    server = dovecot_factory(certSet)
    sender = await sender_for(accountFor(f"cert-{certSet}@example.com", oauth_provider, server))
    message_id, _ = await sender.send(f"cert-{certSet}")

    async def failedOnce():
        return (await sender.queue.status(message_id)).attempts >= 1

    await waitFor(failedOnce)
    status = await sender.queue.status(message_id)
    assert status.state == "queued"
    assert words in status.last_error, status.last_error
    record = await sender.store.getAccount(sender.account.name)
    assert record.state == "error" and words in record.last_error


@pytest_twisted.ensureDeferred
async def test_expired_token_is_refreshed_and_retried(dovecot, oauth_provider, sender_for):
    """A token the server refuses (expired at the provider) is refreshed once and the send works."""
    sender = await sender_for(accountFor("expired@example.com", oauth_provider, dovecot))
    await sender.queue.stopService()
    oauth_provider.expireAll()
    before = oauth_provider.requests.get("token:refresh_token", 0)
    await sender.queue.startService()
    message_id, _ = await sender.send("expired")
    status = await sender.delivered(message_id)
    assert status.state == "sent"
    assert status.attempts == 1
    assert oauth_provider.requests.get("token:refresh_token", 0) == before + 1


@pytest_twisted.ensureDeferred
async def test_revoked_token_keeps_messages_until_reauthorised(
    dovecot, oauth_provider, final_hop, sender_for
):
    """Revoked tokens: account needs_reauth, message stays queued, goes out after new tokens."""
    user = "revoked-smtp@example.com"
    sender = await sender_for(accountFor(user, oauth_provider, dovecot))
    oauth_provider.revokeUser(user)
    message_id, _ = await sender.send("revoked")

    async def needsReauth():
        record = await sender.store.getAccount(sender.account.name)
        return record.state == "needs_reauth"

    await waitFor(needsReauth)
    assert (await sender.queue.status(message_id)).state == "queued"
    await sender.authorise()
    await sender.queue.retryNow(sender.account.name)
    status = await sender.delivered(message_id)
    assert status.state == "sent"
    assert await waitFor(lambda: relayedWith(final_hop, "revoked"))


@pytest_twisted.ensureDeferred
async def test_provider_down_is_retried_until_it_is_back(dovecot, oauth_provider, sender_for):
    """Dovecot answers 454 while introspection fails; the message goes out once it is healed.

    The account shows ``retrying`` meanwhile (sending does not work, but nothing
    needs a person: not ``error``, not ``needs_reauth``), and ``ok`` after.
    """
    sender = await sender_for(accountFor("down@example.com", oauth_provider, dovecot))
    oauth_provider.setIntrospectionFault(status=503)
    try:
        message_id, _ = await sender.send("down")

        async def triedTwice():
            return (await sender.queue.status(message_id)).attempts >= 2

        await waitFor(triedTwice)
        status = await sender.queue.status(message_id)
        assert status.state == "queued" and "454" in status.last_error, status.last_error
        record = await sender.store.getAccount(sender.account.name)
        assert record.state == "retrying" and "454" in record.last_error
    finally:
        oauth_provider.setIntrospectionFault()
    status = await sender.delivered(message_id)
    assert status.state == "sent"

    async def backToOk():
        return (await sender.store.getAccount(sender.account.name)).state == "ok"

    await waitFor(backToOk)
    assert await backToOk()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "lock-step"])
@pytest_twisted.ensureDeferred
async def test_a_batch_on_one_session_in_both_modes(
    dovecot, oauth_provider, final_hop, issue_token, pipelining
):
    """Three messages on one Dovecot session arrive byte for byte, pipelined and in lock-step."""
    reactor = _reactor()
    mode = "pipelined" if pipelining else "lock-step"
    user = f"batch-{mode}@example.com"
    account = accountFor(user, oauth_provider, dovecot)
    server = account.profile.smtp
    messages = [
        OutgoingMessage(
            f"{mode}-{i}",
            user,
            ("a@example.net", "b@example.net"),
            f"Subject: batch-{mode}-{i}\r\n\r\n.dot first\r\nline {i}\r\n".encode(),
        )
        for i in range(3)
    ]
    client = ESMTPClientProtocol(
        loginFor(account, Secret(issue_token(user))),
        messages,
        clock=reactor,
        identity="client.test",
        contextFactory=tlsOptions(server),
        server=server,
        pipelining=pipelining,
    )
    endpoint = HostnameEndpoint(reactor, server.host.encode(), server.port, timeout=TIMEOUT)
    await connectProtocol(endpoint, client)
    result = await client.finished.addTimeout(TIMEOUT, reactor)
    assert result.error is None, result.error
    assert client.pipeline.pipelined is pipelining
    assert [o.message_id for o in result.outcomes] == [m.id for m in messages]
    assert all(o.accepted for o in result.outcomes)
    for m in messages:
        subject = m.data.split(b"\r\n")[0][len(b"Subject: ") :].decode()
        relayed = await waitFor(lambda subject=subject: relayedWith(final_hop, subject))
        assert relayed.data.endswith(m.data)
        assert relayed.rcptTos == ("a@example.net", "b@example.net")
