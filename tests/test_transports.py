"""The Graph and Gmail API transports through the real queue, against the local fakes.

The queue (``OutboundQueue`` on the memory outbox) sends through a
:class:`~oauthmail.transports.dispatch.TransportSender` over real HTTP on
loopback to :class:`~oauthmail.testing.graph.GraphFake` or
:class:`~oauthmail.testing.gmail_api.GmailAPIFake`, which check every token
against the test OAuth provider. Both transports run every test.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.config import AccountConfig, AccountSmtpConfig, ProfileConfig
from oauthmail.interfaces import IMessageSender
from oauthmail.secret import Secret
from oauthmail.smtp.api import send
from oauthmail.smtp.queue.service import OutboundQueue
from oauthmail.testing.gmail_api import GmailAPIFake
from oauthmail.testing.graph import GraphFake
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.transports.dispatch import TransportSender, buildSender
from oauthmail.transports.gmail_api import GmailAPISender
from oauthmail.transports.graph import GraphSender

CLIENT = "transport-tests"
ADDRESS = "alice@example.com"
TRACE = re.compile(rb"\A(Received: [^\r\n]*\r\n(?:\t[^\r\n]*\r\n)*)")


class ProviderTokens:
    """An ITokenSource over the test provider: a forced refresh mints a new token."""

    def __init__(self, provider: TestOAuthProvider, user: str = ADDRESS) -> None:
        self.provider = provider
        self.user = user
        self.refreshes = 0
        self.token = self._mint()

    def _mint(self) -> str:
        return self.provider.issueTokens(self.user, CLIENT)["access_token"]

    def accessToken(self, account):
        return defer.succeed(Secret(self.token))

    def forceRefresh(self, account):
        self.refreshes += 1
        self.token = self._mint()
        return defer.succeed(Secret(self.token))


def account(transport: str, base_url: str, address: str = ADDRESS) -> AccountConfig:
    profile = ProfileConfig(
        name="api",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="http://127.0.0.1:9/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=CLIENT,
        client_secret=None,
        scopes=("mail",),
    )
    smtp = AccountSmtpConfig(transport=transport, base_url=base_url)
    return AccountConfig("alice", address, profile, smtp=smtp)


def message(i: int, to: str = "bob@example.net", size: int = 0) -> bytes:
    body = (b"line with a dot\r\n.leading dot\r\n" + b"x" * 70 + b"\r\n") * max(1, size // 100)
    return (
        f"From: {ADDRESS}\r\nTo: {to}\r\nSubject: message {i}\r\n"
        f"Message-ID: <m{i}@client.test>\r\n\r\n"
    ).encode() + body


@implementer(IMessageSender)
class Watching:
    """Passes sessions on to the real sender and keeps every outcome it reports."""

    def __init__(self, sender: IMessageSender) -> None:
        self.sender = sender
        self.outcomes: list = []

    def send(self, account, token, messages, hooks):
        def seen(outcome):
            self.outcomes.append(outcome)
            hooks.onOutcome(outcome)

        return self.sender.send(account, token, messages, replace(hooks, onOutcome=seen))


class Rig:
    """A provider, one fake, a queue and its sender; ``clock`` times the sender's waits."""

    def __init__(self, transport: str, clock=None, **settings) -> None:
        self.transport = transport
        self.provider = TestOAuthProvider(clock=reactor)
        self.provider.registerClient(CLIENT, "secret")
        fake = GraphFake if transport == "graph" else GmailAPIFake
        self.fake = fake(self.provider)
        self.base = self.fake.listen(reactor)
        self.tokens = ProviderTokens(self.provider)
        self.account = account(transport, self.base)
        settings.setdefault("timeout", 10.0)
        self.sender = buildSender(reactor, [self.account], environ={}, clock=clock, **settings)
        self.watching = Watching(self.sender)
        self.outbox = MemoryOutbox()
        self.queue = OutboundQueue(
            self.outbox,
            self.tokens,
            {"alice": self.account},
            reactor,
            sender=self.watching,
            linger=0,
            backoff_base=0.05,
            backoff_max=0.1,
            poll_interval=0.2,
        )
        self.queue.startService()

    async def send(self, data: bytes, recipients=("bob@example.net",)) -> str:
        return await send(self.queue, "alice", ADDRESS, list(recipients), data)

    async def delivered(self, message_id: str, bound: float = 20.0):
        return await self.queue.whenDelivered(message_id).addTimeout(bound, reactor)

    async def stop(self) -> None:
        await self.queue.stopService()
        await self.sender.close()
        await self.fake.stop()


@pytest.fixture(params=["graph", "gmail_api"])
def transport(request):
    return request.param


@pytest.fixture
def rig(transport):
    rig = Rig(transport)
    yield rig
    pytest_twisted.blockon(defer.ensureDeferred(rig.stop()))


@pytest.fixture
def clocked(transport):
    """A rig whose sender waits on a ``Clock``: its throttle waits are advanced by hand."""
    clock = task.Clock()
    rig = Rig(transport, clock=clock)
    yield rig, clock
    pytest_twisted.blockon(defer.ensureDeferred(rig.stop()))


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


def test_senders_provide_imessagesender():
    """The API senders and the dispatching sender are IMessageSenders."""
    sender = buildSender(reactor, [account("graph", "http://127.0.0.1:1")], environ={})
    verifyObject(IMessageSender, sender)
    verifyObject(IMessageSender, GraphSender(lambda a: None, reactor))
    verifyObject(IMessageSender, GmailAPISender(lambda a: None, reactor))
    assert isinstance(sender, TransportSender)


@pytest_twisted.ensureDeferred
async def test_thousand_messages_arrive_byte_for_byte(rig):
    """1,000 messages through oauthmail.smtp.api.send reach the fake exactly as submitted."""
    originals = {f"<m{i}@client.test>".encode(): message(i, size=i % 7 * 300) for i in range(1000)}
    ids = [await rig.send(data) for data in originals.values()]
    statuses = await defer.gatherResults(
        [defer.ensureDeferred(rig.delivered(i, 60.0)) for i in ids]
    )
    assert {s.state for s in statuses} == {"sent"}
    assert len(rig.fake.messages) == 1000
    for raw in rig.fake.raws():
        mid = re.search(rb"^Message-ID: (<[^>]+>)", raw, re.M).group(1)
        original = originals.pop(mid)
        trace = TRACE.match(raw)
        assert trace is not None and raw[len(trace.group(1)) :] == original
    assert originals == {}
    assert rig.tokens.refreshes == 0


@pytest_twisted.ensureDeferred
async def test_refused_token_is_refreshed_once_then_sent(rig):
    """401 from the API: one forced refresh, the message sent once with the new token."""
    rig.fake.failNext(401)
    status = await rig.delivered(await rig.send(message(1)))
    assert status.state == "sent"
    assert rig.tokens.refreshes == 1
    assert len(rig.fake.messages) == 1 and rig.fake.attempts == 2


@pytest_twisted.ensureDeferred
async def test_too_large_answer_is_a_permanent_failure_with_the_reason(rig):
    """413 from the API: the message fails for good and says it was too large."""
    rig.fake.failNext(413)
    status = await rig.delivered(await rig.send(message(1)))
    assert status.state == "failed"
    assert "too large" in status.recipients[0].text and "413" in status.recipients[0].text
    assert rig.fake.messages == []


async def heldUntil(rig: Rig, clock: task.Clock, attempts: int, early: float, late: float):
    """The sender makes no further attempt after ``early`` s on the clock, and one by ``late``."""
    assert await waitFor(lambda: rig.fake.attempts == attempts)
    await sleep(0.3)
    clock.advance(early)
    await sleep(0.3)
    assert rig.fake.attempts == attempts
    clock.advance(late - early)


@pytest.mark.parametrize(
    ("retry_after", "early", "late"),
    [
        # Retry-After: 2: nothing is sent again before 2 s have passed on the clock.
        (2, 1.9, 2.1),
        # Retry-After: 0 is not asked again at once: the backoff (0.5-1 s) is a floor.
        (0, 0.49, 1.01),
    ],
    ids=["waits-for-retry-after", "zero-still-waits-the-backoff"],
)
@pytest_twisted.ensureDeferred
async def test_throttled_request_waits(clocked, retry_after, early, late):
    """429 with Retry-After: the next attempt comes at the later of it and the backoff."""
    rig, clock = clocked
    rig.fake.failNext(429, retry_after=retry_after)
    message_id = await rig.send(message(1))
    await heldUntil(rig, clock, 1, early, late)
    status = await rig.delivered(message_id)
    assert status.state == "sent" and rig.fake.attempts == 2


@pytest_twisted.ensureDeferred
async def test_a_refusal_between_throttles_does_not_reset_the_wait(clocked):
    """429, then a 400 for that message, then 429 for the next: the wait grows on (1-2 s).

    Any answer that was not a throttle reset the backoff, so an API
    alternating 429 with refusals kept the wait at its floor.
    """
    rig, clock = clocked
    rig.fake.failNext(429)
    rig.fake.failNext(400)
    rig.fake.failNext(429)
    first = await rig.send(message(1))
    assert await waitFor(lambda: rig.fake.attempts == 1)
    await sleep(0.3)
    clock.advance(1.0)
    assert (await rig.delivered(first)).state == "failed"
    second = await rig.send(message(2))
    await heldUntil(rig, clock, 3, 0.99, 2.01)
    assert (await rig.delivered(second)).state == "sent"


@pytest_twisted.ensureDeferred
async def test_retry_after_is_capped(transport):
    """A Retry-After of a day is waited out only up to max_wait."""
    clock = task.Clock()
    rig = Rig(transport, clock=clock, max_wait=30.0)
    try:
        rig.fake.failNext(503, retry_after=86400)
        message_id = await rig.send(message(1))
        assert await waitFor(lambda: rig.fake.attempts == 1)
        clock.advance(30.0)
        assert (await rig.delivered(message_id)).state == "sent"
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_throttled_too_often_keeps_the_message_queued(transport):
    """Throttled max_throttles times in a row: the session gives up, the message waits."""
    rig = Rig(transport, max_throttles=2, max_wait=0.01)
    try:
        rig.fake.failNext(429, times=2, retry_after=0)
        message_id = await rig.send(message(1))
        assert (await rig.delivered(message_id)).state == "sent"
        assert rig.fake.attempts == 3
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_server_error_is_temporary(rig):
    """500: the message is tried again later and then sent."""
    rig.fake.failNext(500)
    status = await rig.delivered(await rig.send(message(1)))
    assert status.state == "sent" and status.attempts == 2


@pytest_twisted.ensureDeferred
async def test_forbidden_message_fails_with_the_reason(rig):
    """A 403 about the message (not the token's permission) fails it, with the API's words."""
    rig.fake.failNext(403, code="ErrorSendAsDenied", message="not allowed to send as x")
    status = await rig.delivered(await rig.send(message(1)))
    assert status.state == "failed"
    assert "403" in status.recipients[0].text and "send as x" in status.recipients[0].text


@pytest_twisted.ensureDeferred
async def test_missing_permission_keeps_the_mail_and_reports_the_account(transport):
    """403 for the token's permission: the account's error, the message stays queued."""
    rig = Rig(transport)
    code = "ErrorAccessDenied" if transport == "graph" else "insufficientPermissions"
    try:
        rig.fake.failNext(403, times=None, code=code)
        message_id = await rig.send(message(1))
        assert await waitFor(lambda: rig.fake.attempts >= 2)
        status = await rig.queue.status(message_id)
        assert status.state in ("queued", "sending")
        stats = await rig.queue.stats()
        assert code in (stats["alice"].last_error or "")
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_lost_answer_after_the_message_went_out_is_in_doubt(rig):
    """The connection drops after the fake took the message: reported in doubt, not 'not sent'."""
    rig.fake.dropNext(accept=True)
    status = await rig.delivered(await rig.send(message(1)))
    first = rig.watching.outcomes[0]
    assert first.in_doubt is True and first.accepted is False
    assert all(r.in_doubt for r in first.recipients)
    # Without a Sent search the message is sent again: at least once.
    assert status.state == "sent" and len(rig.fake.messages) == 2


@pytest_twisted.ensureDeferred
async def test_hang_after_the_message_went_out_is_in_doubt(transport):
    """No answer within the timeout after the body went out: in doubt, then sent again."""
    rig = Rig(transport, timeout=0.5)
    try:
        rig.fake.hangNext()
        status = await rig.delivered(await rig.send(message(1)))
        assert status.state == "sent" and rig.fake.attempts == 2
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_api_is_temporary(transport):
    """Connection refused: nothing went out; the message waits and is not in doubt."""
    rig = Rig(transport)
    try:
        await rig.fake.stop()
        message_id = await rig.send(message(1))
        await sleep(0.5)
        status = await rig.queue.status(message_id)
        assert status.state in ("queued", "sending") and status.attempts >= 1
        assert "cannot connect" in (status.last_error or "")
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_blind_copies_are_added_as_bcc(rig):
    """An envelope recipient missing from To/Cc/Bcc goes in a Bcc field on top."""
    status = await rig.delivered(
        await rig.send(message(1), ["bob@example.net", "hidden@example.org"])
    )
    assert status.state == "sent"
    (raw,) = rig.fake.raws()
    assert raw.startswith(b"Bcc: hidden@example.org\r\nReceived: ")


@pytest_twisted.ensureDeferred
async def test_header_recipient_outside_the_envelope_is_refused(rig):
    """To names someone the envelope does not: failed for good, nothing reaches the API."""
    status = await rig.delivered(await rig.send(message(1, to="bob@example.net, eve@x.example")))
    assert status.state == "failed"
    assert "eve@x.example" in status.recipients[0].text
    assert rig.fake.attempts == 0


@pytest_twisted.ensureDeferred
async def test_the_api_message_id_is_recorded(rig):
    """Gmail's id is in the recipient's record; for Graph the record says it gives none."""
    status = await rig.delivered(await rig.send(message(1)))
    text = status.recipients[0].text
    if rig.transport == "gmail_api":
        assert f"id {rig.fake.messages[0].id}" in text
    else:
        assert "no message id" in text


@pytest_twisted.ensureDeferred
async def test_too_large_for_the_api_is_refused_before_sending(transport):
    """Over the API's limit (Graph 4 MB of base64, Gmail 35 MB): failed, no request made."""
    rig = Rig(transport)
    size = 3_200_000 if transport == "graph" else 36 * 1024 * 1024
    try:
        status = await rig.delivered(await rig.send(message(1, size=size)))
        assert status.state == "failed"
        assert "MB" in status.recipients[0].text and rig.fake.attempts == 0
    finally:
        await rig.stop()


@pytest_twisted.ensureDeferred
async def test_gmail_large_message_goes_through_the_upload_endpoint():
    """Over 3.5 MB the Gmail transport uses the media upload, byte for byte."""
    rig = Rig("gmail_api")
    try:
        data = message(1, size=4_000_000)
        status = await rig.delivered(await rig.send(data))
        assert status.state == "sent"
        (sent,) = rig.fake.messages
        assert sent.route == "upload" and sent.raw.endswith(data)
    finally:
        await rig.stop()


async def waitFor(predicate, bound: float = 10.0) -> bool:
    for _ in range(int(bound / 0.02)):
        if predicate():
            return True
        await sleep(0.02)
    return predicate()


@pytest_twisted.ensureDeferred
async def test_stopping_the_queue_cancels_a_hung_request(transport):
    """A request the API never answers does not hold up stopping the queue."""
    rig = Rig(transport, timeout=60.0)
    try:
        rig.fake.hangNext(times=None)
        message_id = await rig.send(message(1))
        assert await waitFor(lambda: rig.fake.attempts == 1)
        started = reactor.seconds()
        await rig.queue.stopService()
        assert reactor.seconds() - started < 5.0
        assert (await rig.queue.status(message_id)).state in ("queued", "sending")  # kept
    finally:
        await rig.stop()


def test_each_account_goes_to_its_transport():
    """The dispatching sender picks SMTP, Graph or the Gmail API by smtp.transport."""
    from oauthmail.smtp.queue.sender import SMTPSender

    graph, gmail = (
        account("graph", "http://127.0.0.1:1"),
        account("gmail_api", "http://127.0.0.1:1"),
    )
    smtp = account("smtp", None)
    sender = buildSender(reactor, [graph, gmail, smtp], environ={})
    assert isinstance(sender.senderFor(graph), GraphSender)
    assert isinstance(sender.senderFor(gmail), GmailAPISender)
    assert isinstance(sender.senderFor(smtp), SMTPSender)
    assert "graph" not in repr(buildSender(reactor, [smtp], environ={}))
