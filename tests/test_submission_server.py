"""The local submission server takes mail from plain-SMTP programs into the queue, safely.

Most tests run a real listening server on a loopback port and a real
``smtplib`` client in a thread, so what is tested is what a local program sees.
A few protocol edge cases use ``StringTransport``.

What "byte for byte" means here: the queue receives exactly the message bytes
the client meant, after SMTP's transparency rules (the client's dot-stuffing is
undone) and with the final CRLF that smtplib appends when the message lacks it.
"""

from __future__ import annotations

import base64
import smtplib
import ssl as stdlib_ssl
import threading

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.cred import credentials, error
from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.mail import smtp
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.config import SubmissionConfig, SubmissionUser
from oauthmail.interfaces import ISubmissionQueue
from oauthmail.passwords import ScryptParameters, hashPassword, parseHash
from oauthmail.smtp.submission import (
    ISubmitter,
    SenderDirectory,
    SubmissionFactory,
    SubmissionLimits,
    SubmissionRealm,
    Submitter,
    buildSubmissionPortal,
    listenSubmission,
)
from oauthmail.smtp.users import SubmissionUserChecker
from oauthmail.testing.certs import generateTestCertificates

FAST = ScryptParameters(n=16, r=1, p=1)  # production uses n=2**14, r=8
APP_PASSWORD = "app-password-1"
INTL_PASSWORD = "pässwörd-3"  # smtplib sends ASCII only: tested with raw AUTH PLAIN
CRON_PASSWORD = "cron-password-2"
SENDERS = SenderDirectory(
    {
        "helpdesk@example.com": "helpdesk",
        "alerts@example.com": "alerts",
        "boss@example.org": "boss",
    }
)
USERS = (
    SubmissionUser("app", hashPassword(APP_PASSWORD, FAST), ("helpdesk", "alerts")),
    SubmissionUser("cron", hashPassword(CRON_PASSWORD, FAST), ("alerts",)),
    SubmissionUser("intl", hashPassword(INTL_PASSWORD, FAST), ()),
)


@implementer(ISubmissionQueue)
class MemoryQueue:
    """An in-memory queue: stores at once, holds Deferreds for later, or fails."""

    def __init__(self, *, hold: bool = False, fail: Exception | None = None) -> None:
        self.hold = hold
        self.fail = fail
        self.stored: list[tuple[str, str, list[str], bytes]] = []
        self.pending: list[tuple[tuple[str, str, list[str], bytes], defer.Deferred]] = []

    def enqueue(self, account_name, mail_from, recipients, message):
        entry = (account_name, mail_from, list(recipients), message)
        if self.fail is not None:
            return defer.fail(self.fail)
        if self.hold:
            d: defer.Deferred = defer.Deferred()
            self.pending.append((entry, d))
            return d
        self.stored.append(entry)
        return defer.succeed(f"id-{len(self.stored)}")


#: Real-socket tests answer failed logins after milliseconds, not Dovecot-like seconds.
FAST_LIMITS = SubmissionLimits(auth_penalty_base=0.01, auth_penalty_max=0.02)


def _config(**kw) -> SubmissionConfig:
    kw.setdefault("users", USERS)
    return SubmissionConfig(port=0, **kw)


class Running:
    """A listening submission server for one test; stops listening on exit."""

    def __init__(
        self,
        config: SubmissionConfig,
        queue: MemoryQueue | None = None,
        limits: SubmissionLimits = FAST_LIMITS,
    ) -> None:
        self.config = config
        self.queue = queue if queue is not None else MemoryQueue()
        self.limits = limits

    async def __aenter__(self) -> Running:
        self.port = await listenSubmission(
            reactor, self.config, SENDERS, self.queue, limits=self.limits
        )
        self.number = self.port.getHost().port
        return self

    async def __aexit__(self, *exc) -> None:
        await self.port.stopListening()

    def client(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.number, local_hostname="client.test", timeout=10)
        s.ehlo()
        return s


def inThread(function):
    """Run a blocking smtplib conversation off the reactor thread."""
    return deferToThread(function)


async def until(predicate, limit: float = 10.0) -> None:
    """Let the reactor run until ``predicate()`` holds (fails after ``limit`` seconds)."""
    for _ in range(int(limit / 0.01)):
        if predicate():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached")


def _send(s: smtplib.SMTP, sender: str, recipients: list[str], message: bytes):
    code, reply = s.mail(sender)
    assert code == 250, (code, reply)
    for rcpt in recipients:
        code, reply = s.rcpt(rcpt)
        assert code == 250, (code, reply)
    return s.data(message)


MESSAGE = (
    b"From: Help Desk <helpdesk@example.com>\r\n"
    b"To: a@example.net\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
    b"\r\n"
    b".a line that starts with a dot\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b"8-bit: caf\xc3\xa9, a bare LF\nin the middle, trailing space \r\n"
    b"\r\n"
    b"last line without end of line"
)


def _expected(message: bytes) -> bytes:
    """What smtplib actually submits for bytes, after unstuffing: a final CRLF added."""
    return message if message.endswith(b"\r\n") else message + b"\r\n"


# -- the happy path -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accepted_message_reaches_queue_byte_for_byte() -> None:
    """An authenticated message lands in the queue unchanged, for the sender's account."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            result = _send(s, "helpdesk@example.com", ["a@example.net", "b@example.org"], MESSAGE)
            s.quit()
            return result

        code, reply = await inThread(talk)
    assert code == 250 and b"queued as id-1" in reply
    [(account, sender, recipients, message)] = server.queue.stored
    assert account == "helpdesk"
    assert sender == "helpdesk@example.com"
    assert recipients == ["a@example.net", "b@example.org"]
    assert message == _expected(MESSAGE)


@pytest_twisted.ensureDeferred
async def test_250_is_sent_only_after_the_queue_fires() -> None:
    """The client is still waiting for its 250 until the queue's Deferred fires."""
    queue = MemoryQueue(hold=True)
    async with Running(_config(), queue) as server:
        done = threading.Event()

        def talk():
            s = server.client()
            s.login("cron", CRON_PASSWORD)
            result = _send(
                s, "alerts@example.com", ["ops@example.net"], b"Subject: x\r\n\r\nhi\r\n"
            )
            done.set()
            s.quit()
            return result

        client = inThread(talk)
        await until(lambda: queue.pending)
        # The message has arrived; let the reactor and the client run a while longer.
        await task.deferLater(reactor, 0.2, lambda: None)
        assert not client.called and not done.is_set()
        entry, d = queue.pending[0]
        assert entry[0] == "alerts"
        d.callback("later-1")
        code, reply = await client
    assert code == 250 and b"later-1" in reply


@pytest_twisted.ensureDeferred
async def test_many_messages_on_one_connection() -> None:
    """One connection can submit several messages, each queued separately and in order."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            codes = []
            for i in range(5):
                sender = "helpdesk@example.com" if i % 2 else "ALERTS@example.com"
                body = f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode()
                codes.append(_send(s, sender, [f"r{i}@example.net"], body)[0])
            s.quit()
            return codes

        codes = await inThread(talk)
    assert codes == [250] * 5
    assert [m[3] for m in server.queue.stored] == [
        f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode() for i in range(5)
    ]
    assert [m[0] for m in server.queue.stored] == ["alerts", "helpdesk"] * 2 + ["alerts"]


@pytest_twisted.ensureDeferred
async def test_login_mechanism_and_size_are_advertised_and_work() -> None:
    """EHLO lists AUTH PLAIN LOGIN and SIZE; AUTH LOGIN authenticates too."""
    async with Running(_config(max_message_size=4096)) as server:

        def talk():
            s = server.client()
            features = (s.esmtp_features["auth"].split(), s.esmtp_features["size"])
            s.user, s.password = "app", APP_PASSWORD
            code, _ = s.auth("LOGIN", s.auth_login)
            noop = s.noop()[0]
            s.quit()
            return features, code, noop

        (auth, size), code, noop = await inThread(talk)
    assert auth == ["PLAIN", "LOGIN"] and size == "4096"
    assert code == 235 and noop == 250


# -- refusals ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unauthenticated_client_gets_530() -> None:
    """Without AUTH, MAIL is refused with 530 5.7.0 and nothing is queued."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            reply = s.mail("helpdesk@example.com")
            s.quit()
            return reply

        code, reply = await inThread(talk)
    assert code == 530 and reply.startswith(b"5.7.0 Authentication required")
    assert server.queue.stored == []


async def _authCode(server: Running, mechanism: str, user: str, password: str) -> int:
    def talk():
        s = server.client()
        s.user, s.password = user, password
        method = s.auth_plain if mechanism == "PLAIN" else s.auth_login
        try:
            return s.auth(mechanism, method)[0]
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code
        finally:
            s.close()

    return await inThread(talk)


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_both_get_535() -> None:
    """A wrong password and an unknown user get the same 535, with PLAIN and LOGIN."""
    async with Running(_config()) as server:
        codes = [
            await _authCode(server, "PLAIN", "app", "wrong"),
            await _authCode(server, "PLAIN", "nobody", APP_PASSWORD),
            await _authCode(server, "LOGIN", "app", "wrong"),
            await _authCode(server, "LOGIN", "nobody", "x"),
            await _authCode(server, "PLAIN", "app", APP_PASSWORD),
        ]

        def utf8():
            s = server.client()
            blob = base64.b64encode(b"\0intl\0" + INTL_PASSWORD.encode()).decode()
            reply = s.docmd("AUTH", "PLAIN " + blob)
            s.close()
            return reply[0]

        codes.append(await inThread(utf8))
    assert codes == [535, 535, 535, 535, 235, 235]


@pytest_twisted.ensureDeferred
async def test_plain_for_another_identity_is_refused() -> None:
    """AUTH PLAIN asking to act as another user (authzid) fails with 535."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            blob = base64.b64encode(b"app\0cron\0" + CRON_PASSWORD.encode()).decode()
            reply = s.docmd("AUTH", "PLAIN " + blob)
            s.close()
            return reply

        code, _ = await inThread(talk)
    assert code == 535


@pytest_twisted.ensureDeferred
async def test_repeated_auth_failures_close_the_connection() -> None:
    """The third failed AUTH on one connection is answered 421 and the connection closes."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            bad = base64.b64encode(b"\0app\0wrong").decode()
            codes = [s.docmd("AUTH", "PLAIN " + bad)[0] for _ in range(3)]
            with pytest.raises(smtplib.SMTPServerDisconnected):
                s.noop()
            return codes

        codes = await inThread(talk)
    assert codes == [535, 535, 421]


@pytest_twisted.ensureDeferred
async def test_sender_not_allowed_gets_550() -> None:
    """A user may not send as an account outside its list, nor as an unknown address."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            s.login("cron", CRON_PASSWORD)
            replies = [s.mail("helpdesk@example.com"), s.mail("stranger@example.com")]
            replies.append(s.mail("<>"))
            s.quit()
            return replies

        replies = await inThread(talk)
    assert [code for code, _ in replies] == [550, 550, 550]
    assert all(b"5.7.1" in reply for _, reply in replies)


@pytest_twisted.ensureDeferred
async def test_bad_recipient_syntax_gets_501_5_1_3() -> None:
    """A recipient without a domain or with a broken domain is refused at RCPT; good ones pass."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            s.mail("alerts@example.com")
            replies = [s.rcpt(r) for r in ("bob", "bob@", "bob@-x-.com", "bob@example.net")]
            s.quit()
            return replies

        replies = await inThread(talk)
    assert [code for code, _ in replies] == [501, 501, 501, 250]
    assert replies[0][1] == b"5.1.3 Bad recipient address syntax: no domain"
    assert replies[2][1] == b"5.1.3 Bad recipient address syntax: bad domain"


@pytest_twisted.ensureDeferred
async def test_bad_sender_syntax_gets_501_5_1_7() -> None:
    """A sender that is not an RFC 5321 mailbox is refused at MAIL with 501 5.1.7."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            senders = ("alerts", "alerts@exa mple.com", "a..b@example.com", "alerts@example.com.")
            replies = [s.docmd("MAIL", f"FROM:<{sender}>") for sender in senders]
            s.quit()
            return replies

        replies = await inThread(talk)
    assert [code for code, _ in replies] == [501, 501, 501, 501]
    assert all(reply.startswith(b"5.1.7 Bad sender address syntax: ") for _, reply in replies)


@pytest_twisted.ensureDeferred
async def test_message_over_the_limit_gets_552() -> None:
    """A declared SIZE over the limit is refused at MAIL; a big DATA is refused at the end."""
    async with Running(_config(max_message_size=2048)) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            declared = s.mail("alerts@example.com", ["SIZE=4096"])
            s.rset()
            data = _send(s, "alerts@example.com", ["x@example.net"], b"x" * 1000 + b"\r\n" * 600)
            after = _send(s, "alerts@example.com", ["x@example.net"], b"small\r\n")
            s.quit()
            return declared, data, after

        declared, data, after = await inThread(talk)
    assert declared[0] == 552 and data[0] == 552 and b"5.3.4" in data[1]
    assert after[0] == 250
    assert [m[3] for m in server.queue.stored] == [b"small\r\n"]


@pytest_twisted.ensureDeferred
async def test_garbage_commands_get_500() -> None:
    """Unknown, non-ASCII and empty commands get 500; malformed AUTH gets 501/504."""
    async with Running(_config()) as server:

        def talk():
            s = server.client()
            codes = [s.docmd("XYZZY")[0], s.docmd("FOO", "bar")[0]]
            s.send(b"\xff\xfe\x00garbage\r\n")
            codes.append(s.getreply()[0])
            s.send(b"\r\n")
            codes.append(s.getreply()[0])
            codes += [s.docmd("AUTH")[0], s.docmd("AUTH", "CRAM-MD5")[0]]
            codes.append(s.docmd("AUTH", "PLAIN !!!notbase64")[0])
            codes.append(s.docmd("AUTH", "PLAIN " + base64.b64encode(b"no-nuls").decode())[0])
            codes.append(s.noop()[0])
            s.quit()
            return codes

        codes = await inThread(talk)
    assert codes == [500, 500, 500, 500, 501, 504, 501, 501, 250]


@pytest_twisted.ensureDeferred
async def test_queue_failure_gets_451_and_the_connection_goes_on() -> None:
    """A queue that fails gives 451 4.3.0 (the client retries); the session stays usable."""
    queue = MemoryQueue(fail=RuntimeError("disk full"))
    async with Running(_config(), queue) as server:

        def talk():
            s = server.client()
            s.login("app", APP_PASSWORD)
            first = _send(s, "alerts@example.com", ["x@example.net"], b"one\r\n")
            queue.fail = None
            second = _send(s, "alerts@example.com", ["x@example.net"], b"two\r\n")
            s.quit()
            return first, second

        first, second = await inThread(talk)
    assert first[0] == 451 and first[1].startswith(b"4.3.0")
    assert second[0] == 250
    assert [m[3] for m in queue.stored] == [b"two\r\n"]


# -- loopback trust and TLS ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unauthenticated_loopback_when_configured() -> None:
    """With allow_unauthenticated_loopback, a loopback client sends as any configured account."""
    async with Running(_config(allow_unauthenticated_loopback=True)) as server:

        def talk():
            s = server.client()
            ok = _send(s, "boss@example.org", ["x@example.net"], b"hello\r\n")
            refused = s.mail("stranger@example.com")
            s.quit()
            return ok, refused

        ok, refused = await inThread(talk)
    assert ok[0] == 250 and refused[0] == 550
    assert server.queue.stored[0][:2] == ("boss", "boss@example.org")


@pytest_twisted.ensureDeferred
async def test_starttls_and_require_tls(tmp_path) -> None:
    """With require_tls, no AUTH (offered or accepted) before STARTTLS; after it, mail flows."""
    certs = generateTestCertificates(tmp_path)
    config = _config(tls_cert=str(certs.good.cert), tls_key=str(certs.good.key), require_tls=True)
    async with Running(config) as server:

        def talk():
            s = server.client()
            before = ("auth" in s.esmtp_features, "starttls" in s.esmtp_features)
            blob = base64.b64encode(b"\0app\0" + APP_PASSWORD.encode()).decode()
            refusedAuth = s.docmd("AUTH", "PLAIN " + blob)
            refusedMail = s.mail("alerts@example.com")
            context = stdlib_ssl.create_default_context(cafile=str(certs.caFile))
            context.check_hostname = False  # the certificate names mail.test, we dial 127.0.0.1
            s.starttls(context=context)
            s.ehlo()
            after = ("auth" in s.esmtp_features, "starttls" in s.esmtp_features)
            s.login("app", APP_PASSWORD)
            sent = _send(s, "alerts@example.com", ["x@example.net"], b"secret plans\r\n")
            s.quit()
            return before, refusedAuth, refusedMail, after, sent

        before, refusedAuth, refusedMail, after, sent = await inThread(talk)
    assert before == (False, True)
    assert refusedAuth[0] == 530 and refusedMail[0] == 530
    assert after == (True, False)
    assert sent[0] == 250
    assert server.queue.stored[0][3] == b"secret plans\r\n"


# -- logging ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_logs_never_contain_passwords_or_auth_payloads() -> None:
    """Nothing logged during good and bad logins contains a password or its base64."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with Running(_config()) as server:
            await _authCode(server, "PLAIN", "app", "typo-" + APP_PASSWORD)
            await _authCode(server, "LOGIN", "cron", CRON_PASSWORD)

            def talk():
                s = server.client()
                s.login("app", APP_PASSWORD)
                _send(s, "alerts@example.com", ["x@example.net"], b"hi\r\n")
                s.quit()

            await inThread(talk)
    finally:
        globalLogPublisher.removeObserver(events.append)
    from twisted.logger import formatEvent

    text = "\n".join(formatEvent(e) + repr(e.get("log_failure", "")) for e in events)
    assert "authenticated" in text  # the observer did see the server's lines
    for secret in (APP_PASSWORD, CRON_PASSWORD):
        assert secret not in text
        assert base64.b64encode(secret.encode()).decode()[:12] not in text
    assert base64.b64encode(b"\0app\0").decode()[:6] not in text


# -- protocol edge cases with StringTransport -------------------------------------------


@implementer(ITLSTransport)
class FakeTLSTransport(StringTransport):
    """A StringTransport that records STARTTLS instead of doing it."""

    tlsStarted = False

    def startTLS(self, contextFactory, normal=True) -> None:
        self.tlsStarted = True

    def setTcpNoDelay(self, enabled) -> None:
        pass


def _protocol(
    config: SubmissionConfig, queue: MemoryQueue, peer: str, transport=None, limits=FAST_LIMITS
):
    portal = buildSubmissionPortal(config, SENDERS, queue, reactor=reactor)
    factory = SubmissionFactory(
        portal, config, reactor=task.Clock(), contextFactory=object(), limits=limits
    )
    proto = factory.buildProtocol(None)
    transport = transport or StringTransport()
    transport.peerAddr = IPv4Address("TCP", peer, 40000)
    proto.makeConnection(transport)
    transport.clear()
    return proto, transport


def test_loopback_trust_does_not_extend_to_other_peers() -> None:
    """allow_unauthenticated_loopback still answers 530 to a client that is not on loopback."""
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, MemoryQueue(), "192.0.2.7")
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<alerts@example.com>\r\n")
    assert transport.value().splitlines()[-1].startswith(b"530 5.7.0")


def test_plaintext_after_starttls_is_discarded() -> None:
    """Commands sent in cleartext right behind STARTTLS are dropped, not executed."""
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, MemoryQueue(), "127.0.0.1", FakeTLSTransport())
    proto.dataReceived(b"EHLO x\r\n")
    transport.clear()
    proto.dataReceived(b"STARTTLS\r\nMAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@b.c")
    assert transport.tlsStarted
    assert transport.value() == b"220 2.0.0 Ready to start TLS\r\n"
    transport.clear()
    proto.dataReceived(b"NOOP\r\n")  # the first bytes through TLS
    assert transport.value() == b"250 2.0.0 OK\r\n"


def test_pipelined_commands_wait_for_the_queue_answer() -> None:
    """Commands arriving while the queue works are answered after the 250, in order."""
    queue = MemoryQueue(hold=True)
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, queue, "127.0.0.1")
    proto.dataReceived(
        b"EHLO x\r\nMAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"
    )
    transport.clear()
    proto.dataReceived(b"hello\r\n.\r\nNOOP\r\n")
    assert transport.value() == b""
    queue.pending[0][1].callback("q1")
    assert transport.value() == b"250 2.0.0 Ok: queued as q1\r\n250 2.0.0 OK\r\n"
    assert queue.pending[0][0][3] == b"hello\r\n"


def test_overlong_line_closes_the_connection_without_queueing() -> None:
    """A line beyond the limit aborts the message with 500 and closes the connection."""
    queue = MemoryQueue()
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, queue, "127.0.0.1")
    proto.dataReceived(
        b"EHLO x\r\nMAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"
    )
    transport.clear()
    proto.dataReceived(b"x" * (FAST_LIMITS.max_line + 10) + b"\r\n.\r\n")
    assert transport.value().startswith(b"500 5.5.6")
    assert transport.disconnecting and queue.stored == []


# -- the parts on their own -------------------------------------------------------------


def test_implementations_provide_their_interfaces() -> None:
    """Queue fake, checker, realm and the submitter avatar keep their interface promises."""
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.cred.portal import IRealm

    queue = MemoryQueue()
    verifyObject(ISubmissionQueue, queue)
    verifyObject(ICredentialsChecker, SubmissionUserChecker(USERS, reactor=reactor))
    verifyObject(IRealm, SubmissionRealm(USERS, SENDERS, queue))
    verifyObject(ISubmitter, Submitter("x", None, SENDERS, queue))


@pytest_twisted.ensureDeferred
async def test_checker_hashes_a_dummy_for_unknown_users_off_the_reactor_thread() -> None:
    """Unknown users cost one scrypt check too (same parameters), run in a worker thread."""
    calls: list[tuple[str, bool]] = []

    def spy(password: bytes, encoded: str) -> bool:
        calls.append((encoded, threading.current_thread() is threading.main_thread()))
        from oauthmail.passwords import verifyPassword

        return verifyPassword(password, encoded)

    checker = SubmissionUserChecker(USERS, reactor=reactor, verify=spy)
    with pytest.raises(error.UnauthorizedLogin):
        await checker.requestAvatarId(credentials.UsernamePassword(b"ghost", b"pw"))
    with pytest.raises(error.UnauthorizedLogin):
        await checker.requestAvatarId(credentials.UsernamePassword(b"app", b"wrong"))
    assert (
        await checker.requestAvatarId(credentials.UsernamePassword(b"app", APP_PASSWORD.encode()))
        == "app"
    )
    assert len(calls) == 3 and not any(onMain for _, onMain in calls)
    dummy, real = calls[0][0], calls[1][0]
    assert dummy != real and parseHash(dummy).parameters == parseHash(real).parameters == FAST


def test_realm_refuses_users_naming_unknown_accounts() -> None:
    """A user allowed to send as an account that does not exist is a configuration error."""
    user = SubmissionUser("x", hashPassword("pw", FAST), ("nonexistent",))
    with pytest.raises(ValueError, match="nonexistent"):
        SubmissionRealm((user,), SENDERS, MemoryQueue())


def test_configuration_is_checked() -> None:
    """Half a TLS setup, require_tls without TLS, duplicate users and bad hashes are refused."""
    with pytest.raises(ValueError, match="go together"):
        SubmissionConfig(tls_cert="a.pem")
    with pytest.raises(ValueError, match="require_tls"):
        SubmissionConfig(require_tls=True)
    with pytest.raises(ValueError, match="twice"):
        SubmissionConfig(users=(USERS[0], USERS[0]))
    with pytest.raises(ValueError, match="malformed") as info:
        SubmissionUser("x", "scrypt$oops-secretish", ())
    assert "oops-secretish" not in str(info.value)
    assert USERS[0].password_hash not in repr(USERS[0])
    defaults = SubmissionConfig()
    assert (defaults.bind, defaults.port, defaults.allow_unauthenticated_loopback) == (
        "127.0.0.1",
        1587,
        False,
    )


def test_address_parsing_agrees_with_twisted() -> None:
    """The sender directory matches envelope addresses case-insensitively."""
    assert SENDERS.accountFor(str(smtp.Address(b"<Alerts@Example.COM>"))) == "alerts"
    assert SENDERS.accountFor("nobody@example.com") is None


def test_replies_are_not_delayed_by_nagle() -> None:
    """The server switches Nagle off on each accepted connection."""

    @implementer(ITCPTransport)
    class NoDelayTransport(StringTransport):
        noDelay = False

        def setTcpNoDelay(self, enabled) -> None:
            self.noDelay = enabled

    proto, transport = _protocol(_config(), MemoryQueue(), "127.0.0.1", NoDelayTransport())
    assert transport.noDelay is True


# -- the DATA phase in chunks -----------------------------------------------------------

_ENVELOPE = b"EHLO x\r\nMAIL FROM:<alerts@example.com>\r\nRCPT TO:<a@example.net>\r\nDATA\r\n"


def _stuff(message: bytes) -> bytes:
    """What a client sends for ``message`` (whole CRLF lines): dots doubled, then ``.``."""
    lines = message.split(b"\r\n")[:-1]
    return b"".join((b"." + line if line[:1] == b"." else line) + b"\r\n" for line in lines) + (
        b".\r\n"
    )


def _feedInChunks(chunks: list[bytes], maxSize: int = 10_000_000):
    """Send one transaction with the DATA bytes split as given, then NOOP; return the parts."""
    queue = MemoryQueue()
    config = _config(allow_unauthenticated_loopback=True, max_message_size=maxSize)
    proto, transport = _protocol(config, queue, "127.0.0.1")
    proto.dataReceived(_ENVELOPE)
    transport.clear()
    for chunk in chunks:
        proto.dataReceived(chunk)
    proto.dataReceived(b"NOOP\r\n")
    return queue, transport.value()


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


_PIECES = st.sampled_from(
    [b".", b"..", b"a", b" ", b"\r", b"\n", b"\r\n", b"\r\n.", b"\n.\n", b"\n.\r\n", b"x" * 1500]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(_PIECES, max_size=40).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=80_000), max_size=8),
)
def test_chunked_data_is_unstuffed_exactly(body: bytes, cuts: list[int]) -> None:
    """However DATA is split into reads, the queue gets the unstuffed original, once."""
    message = body if body.endswith(b"\r\n") or not body else body + b"\r\n"
    wire = _stuff(message)
    queue, replies = _feedInChunks(_split(wire, [c % (len(wire) + 1) for c in cuts]))
    assert [entry[3] for entry in queue.stored] == [message]
    assert replies == b"250 2.0.0 Ok: queued as id-1\r\n250 2.0.0 OK\r\n"


def test_every_split_point_of_a_tricky_message() -> None:
    """Splitting DATA at any single byte (and into single bytes) changes nothing."""
    message = b".lead\r\n..two\r\n.\r\nbare\n.\nlf\r\nx\r.\r\n\r\n.\r\r\nend\r\n"
    wire = _stuff(message)
    for cut in range(len(wire) + 1):
        queue, replies = _feedInChunks(_split(wire, [cut]))
        assert [entry[3] for entry in queue.stored] == [message], cut
        assert replies.endswith(b"250 2.0.0 OK\r\n"), cut
    queue, _ = _feedInChunks([wire[i : i + 1] for i in range(len(wire))])
    assert [entry[3] for entry in queue.stored] == [message]


def test_only_crlf_dot_crlf_ends_the_data() -> None:
    """A bare-LF dot line is message content, not the end (no SMTP smuggling)."""
    queue, replies = _feedInChunks([b"a\n.\nMAIL FROM:<x@y.z>\r\n", b"b\r\n..\n\r\n.\r\n"])
    assert [entry[3] for entry in queue.stored] == [b"a\n.\nMAIL FROM:<x@y.z>\r\nb\r\n.\n\r\n"]
    assert replies.count(b"250 ") == 2


@pytest.mark.parametrize("extra, accepted", [(0, True), (1, False)])
def test_size_limit_is_exact_in_chunks(extra: int, accepted: bool) -> None:
    """A message of exactly max_message_size bytes is queued; one byte more gets 552."""
    line = b"y" * 98 + b"\r\n"
    message = line * 40 + b"z" * extra + b"\r\n"
    limit = len(message) - extra
    queue, replies = _feedInChunks(_split(_stuff(message), [1000, 2500]), maxSize=limit)
    assert (len(queue.stored) == 1) is accepted
    assert replies.startswith(b"250 " if accepted else b"552 5.3.4")


def test_overlong_line_in_a_later_chunk_closes_the_connection() -> None:
    """The line length limit holds across reads in the DATA phase too."""
    queue = MemoryQueue()
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, queue, "127.0.0.1")
    proto.dataReceived(_ENVELOPE)
    proto.dataReceived(b"fine\r\n" + b"x" * 40000)
    proto.dataReceived(b"x" * 40000)
    assert transport.disconnecting and queue.stored == []
    assert transport.value().splitlines()[-1].startswith(b"500 5.5.6")


def test_reading_pauses_only_when_a_client_piles_up_lines_during_a_hold() -> None:
    """One pending answer does not pause reading; many lines queued behind it do, until it."""
    queue = MemoryQueue(hold=True)
    config = _config(allow_unauthenticated_loopback=True)
    proto, transport = _protocol(config, queue, "127.0.0.1")
    proto.dataReceived(_ENVELOPE + b"hello\r\n.\r\n")
    assert transport.producerState == "producing"
    proto.dataReceived(b"NOOP\r\n" * 100)
    assert transport.producerState == "paused"
    queue.pending[0][1].callback("q1")
    assert transport.producerState == "producing"
    assert transport.value().count(b"250 2.0.0 OK\r\n") == 100
