"""The real daemon sending through the real Dovecot: local submission in, final hop out.

A program speaks plain SMTP (``smtplib``, in a thread) to the daemon's local
submission server; the daemon queues the message, relays it to Dovecot's
submission service with the account's OAuth token, and Dovecot relays it to
the final hop on the test reactor. The tests check the bytes that arrive,
what survives a SIGKILL, a provider that is away for a while, and the SMTP
codes bad input gets.
"""

from __future__ import annotations

import re
import smtplib
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from oauthmail.passwords import ScryptParameters, hashPassword
from oauthmail.testing.dovecot import DovecotServer
from oauthmail.testing.finalhop import SentFiler

from .conftest import TEMPLATES
from .daemon import Daemon, freePort, profile, waitFor

pytestmark = pytest.mark.integration

PASSWORD = "submission-password-for-tests"
#: Cheap scrypt: the cost is not what these tests are about.
CHEAP = ScryptParameters(n=2**4, r=8, p=1)
MAX_SIZE = 20000
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def message(sender: str, tag: str, i: int = 0) -> bytes:
    return (
        f"From: {sender}\r\nTo: friend@example.net\r\nSubject: {tag} {i}\r\n"
        f"Message-ID: <{tag}-{i}@client.test>\r\nX-Test: \t odd  spacing\r\n\r\n"
        "line one\r\n.a line starting with a dot\r\n..two dots\r\n\r\nbye\r\n"
    ).encode()


def relayedIDs(final_hop: Any, tag: str) -> Counter[bytes]:
    """How often each Message-ID with ``tag`` reached the final hop."""
    found: Counter[bytes] = Counter()
    for m in final_hop.messages:
        for mid in _MESSAGE_ID.findall(m.data):
            if mid.startswith(f"<{tag}-".encode()):
                found[mid] += 1
    return found


def makeDaemon(
    tmp_path: Any,
    provider: Any,
    dovecot: Any,
    sender: str,
    sentFolder: str = "none",
    smtpPort: int | None = None,
) -> Daemon:
    """A daemon with a sending account, a second account, and one submission user.

    ``sentFolder`` is the sending account's ``smtp.sent_folder`` (``auto`` makes it
    look in Sent, as it would at Gmail, before resending a message in doubt).
    ``smtpPort`` sends through another port (a proxy) to Dovecot's submissions.
    """
    testProfile = profile(provider, dovecot)
    if smtpPort is not None:
        testProfile["smtp"]["port"] = smtpPort
    return Daemon(
        tmp_path / "daemon",
        {
            "profiles": {"test": testProfile},
            "accounts": [
                {
                    "name": "sender",
                    "address": sender,
                    "profile": "test",
                    "smtp": {"sent_folder": sentFolder},
                },
                {"name": "other", "address": "other-" + sender, "profile": "test", "smtp": {}},
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
            "queue": {"retry_min": "1s", "retry_max": "2s", "sent_check_delay": "0s"},
        },
    )


async def started(daemon: Daemon, provider: Any, sender: str) -> Daemon:
    daemon.secrets.add(PASSWORD)
    await daemon.authorise(provider, {"sender": sender, "other": "other-" + sender})
    daemon.start()
    await daemon.waitReady()
    return daemon


async def finished(daemon: Daemon) -> None:
    await daemon.stop()
    await daemon.collectStoredSecrets(["sender", "other"])
    assert "oauthmail ready" in daemon.log()
    assert daemon.leakedSecrets() == []
    assert "Traceback" not in daemon.log()
    if not daemon.killed:  # every message the provider took is in the message log
        assert await daemon.unloggedMessages() == []


def connect(daemon: Daemon, login: bool = True) -> smtplib.SMTP:
    port = daemon.config["submission"]["port"]
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo("client.test")
    if login:
        client.login("app", PASSWORD)
    return client


def sendAll(daemon: Daemon, sender: str, messages: list[bytes]) -> list[str]:
    """Send each message on one connection (blocking); the ids the daemon answered 250 for."""
    client = connect(daemon)
    try:
        for m in messages:
            client.sendmail(sender, ["friend@example.net"], m)
    finally:
        client.quit()
    return [m.decode() for m in messages]


@pytest_twisted.ensureDeferred
async def test_message_arrives_byte_for_byte(dovecot, oauth_provider, final_hop, tmp_path):
    """smtplib → daemon → Dovecot → final hop: the message arrives with only trace headers added."""
    sender = "daemon-bytes@example.com"
    daemon = await started(
        makeDaemon(tmp_path, oauth_provider, dovecot, sender), oauth_provider, sender
    )
    try:
        sent = message(sender, "bytes")
        await threads.deferToThread(sendAll, daemon, sender, [sent])
        assert await waitFor(
            lambda: b"<bytes-0@client.test>" in relayedIDs(final_hop, "bytes"), 15.0
        )
        (relayed,) = [m for m in final_hop.messages if b"<bytes-0@client.test>" in m.data]
        assert relayed.mailFrom == sender
        assert relayed.rcptTos == ("friend@example.net",)
        assert relayed.data.endswith(sent)
        added = relayed.data[: -len(sent)]
        assert all(line[:1] in b" \t" or b":" in line for line in added.split(b"\r\n") if line)
    finally:
        await finished(daemon)


@pytest_twisted.ensureDeferred
async def test_sigkill_during_burst_loses_and_duplicates_nothing(
    dovecot, oauth_provider, final_hop, tmp_path
):
    """SIGKILL after ~100 of 300 acknowledged, restart: every 250 arrives, none twice.

    The provider files what it accepts in Sent (as Gmail and Microsoft 365 do), and
    the account looks there before it sends again a message that was in flight.
    """
    sender = "daemon-burst@example.com"
    filer = SentFiler(dovecot)
    final_hop.fileSent = filer
    daemon = await started(
        makeDaemon(tmp_path, oauth_provider, dovecot, sender, sentFolder="auto"),
        oauth_provider,
        sender,
    )
    acked: list[bytes] = []

    def burst() -> None:
        client = connect(daemon)
        try:
            for i in range(300):
                client.sendmail(sender, ["friend@example.net"], message(sender, "burst", i))
                acked.append(f"<burst-{i}@client.test>".encode())
        except (smtplib.SMTPException, OSError):
            pass  # the daemon was killed under us
        finally:
            client.close()

    try:
        sending = threads.deferToThread(burst)
        assert await waitFor(lambda: len(acked) >= 100, 30.0, 0.005)
        daemon.kill()
        relayedBeforeKill = len(relayedIDs(final_hop, "burst"))
        await sending
        assert len(acked) < 300, "the burst finished before the daemon was killed"
        assert relayedBeforeKill < len(acked), "nothing was left in the queue to survive"
        daemon.start()
        await daemon.waitReady()
        assert await waitFor(lambda: set(acked) <= set(relayedIDs(final_hop, "burst")), 30.0), (
            daemon.log()[-3000:]
        )
        await waitFor(lambda: False, 1.0)  # let a duplicate that is on its way arrive
        relayed = relayedIDs(final_hop, "burst")
        twice = sorted(mid for mid, n in relayed.items() if n > 1)
        assert twice == [], f"{len(twice)} relayed more than once, e.g. {twice[:3]}"
        assert "looked in Sent for" in daemon.log()
    finally:
        final_hop.fileSent = None
        await threads.deferToThread(filer.close)
        await finished(daemon)


class HeldAnswer:
    """A final-hop hook: file in Sent, keep the message, but hold the 250 for one of them.

    ``taken`` fires once that message is in Sent; the 250 goes out when the test
    fires ``answer`` (after it killed the daemon or cut its connection).
    """

    def __init__(self, filer: SentFiler, marker: bytes) -> None:
        self.filer = filer
        self.marker = marker
        self.taken: defer.Deferred[None] = defer.Deferred()
        self.answer: defer.Deferred[None] = defer.Deferred()

    def __call__(self, m: Any) -> Any:
        d = self.filer(m)
        if self.marker in m.data and not self.taken.called:
            d.addCallback(lambda _: self.taken.callback(None))
            d.addCallback(lambda _: self.answer)
        return d


@pytest_twisted.ensureDeferred
async def test_killed_after_the_provider_took_it_sends_it_once(
    dovecot, oauth_provider, final_hop, tmp_path
):
    """Killed between the provider's acceptance and its 250: found in Sent, never resent.

    The one window no SMTP client can close by itself (RFC 1047), made certain: the
    final hop files the message in Sent and keeps it, then holds its answer while
    the daemon is killed.
    """
    sender = "daemon-window@example.com"
    filer = SentFiler(dovecot)
    held = HeldAnswer(filer, b"<window-0@client.test>")
    final_hop.fileSent = held
    daemon = await started(
        makeDaemon(tmp_path, oauth_provider, dovecot, sender, sentFolder="auto"),
        oauth_provider,
        sender,
    )
    try:
        await threads.deferToThread(sendAll, daemon, sender, [message(sender, "window", 0)])
        # In Sent now; the 250 is held back.
        assert await waitFor(lambda: held.taken.called, 15.0), daemon.log()[-3000:]
        daemon.kill()
        held.answer.callback(None)  # the final hop keeps it; nobody hears the 250
        assert await waitFor(lambda: relayedIDs(final_hop, "window"), 15.0)
        daemon.start()
        await daemon.waitReady()
        assert await waitFor(lambda: "1 already accepted" in daemon.log(), 30.0), daemon.log()[
            -3000:
        ]
        # The account still sends: a new message goes out, and the first one never again.
        await threads.deferToThread(sendAll, daemon, sender, [message(sender, "window", 1)])
        assert await waitFor(lambda: len(relayedIDs(final_hop, "window")) == 2, 15.0)
        await waitFor(lambda: False, 1.0)  # let a duplicate that is on its way arrive
        assert set(relayedIDs(final_hop, "window").values()) == {1}
    finally:
        final_hop.fileSent = None
        if not held.answer.called:
            held.answer.callback(None)
        await threads.deferToThread(filer.close)
        await finished(daemon)


@pytest_twisted.ensureDeferred
async def test_provider_down_then_back(certs, dovecot, oauth_provider, final_hop, tmp_path):
    """Connections refused, then 451s for a while: every queued message goes out once it is back."""
    sender = "daemon-down@example.com"

    def newDovecot(ports=None) -> DovecotServer:
        return DovecotServer(
            TEMPLATES,
            oauth_provider.introspection_endpoint,
            certs,
            relayHost=final_hop.host,
            relayPort=final_hop.port,
            ports=ports,
        )

    own = newDovecot()
    await threads.deferToThread(own.start)
    again: DovecotServer | None = None
    daemon = makeDaemon(tmp_path, oauth_provider, own, sender)
    try:
        await started(daemon, oauth_provider, sender)
        await threads.deferToThread(own.stop)  # connections to its ports are now refused
        messages = [message(sender, "down", i) for i in range(5)]
        await threads.deferToThread(sendAll, daemon, sender, messages)
        # Tried and failed (a refused connection is temporary: the account shows
        # 'retrying', not 'error'; the messages stay queued). The same failure
        # again is not logged again, so the log says it once.
        assert await waitFor(lambda: daemon.log().count("sending failed") >= 1, 15.0)
        assert await daemon.accountState("sender") == "retrying"
        await waitFor(lambda: False, 3.0)  # more attempts, the same failure
        assert daemon.log().count("sending failed") == 1
        assert not relayedIDs(final_hop, "down")

        # The provider answers again, but with temporary failures (451) for a while.
        final_hop.refusal = (451, "4.3.0 try again later")
        again = newDovecot(ports=own.ports)
        await threads.deferToThread(again.start)
        # Every message is refused for now (451, temporary) and stays queued.
        assert await waitFor(
            lambda: len(set(re.findall(r"(\w{32}) to friend@example.net: 451", daemon.log()))) == 5,
            15.0,
        ), daemon.log()[-3000:]
        assert not relayedIDs(final_hop, "down")
        final_hop.refusal = None
        assert await waitFor(lambda: len(relayedIDs(final_hop, "down")) == 5, 15.0), daemon.log()[
            -3000:
        ]
        await waitFor(lambda: False, 0.5)  # let a duplicate that is on its way arrive
        assert set(relayedIDs(final_hop, "down").values()) == {1}
        assert await daemon.accountState("sender") == "ok"
    finally:
        await finished(daemon)
        await threads.deferToThread(own.stop)
        if again is not None:
            await threads.deferToThread(again.stop)


def badInput(daemon: Daemon, sender: str) -> dict[str, int]:
    """The reply codes for each kind of bad input (blocking)."""
    codes: dict[str, int] = {}
    client = connect(daemon, login=False)
    try:
        codes["no auth"] = client.mail(sender)[0]
        codes["garbage"] = client.docmd("FROBNICATE", "now")[0]
        try:
            client.login("app", "wrong password")
            codes["wrong password"] = 235
        except smtplib.SMTPAuthenticationError as e:
            codes["wrong password"] = e.smtp_code
    finally:
        client.close()
    client = connect(daemon)
    try:
        codes["not allowed"] = client.mail("other-" + sender)[0]
        client.rset()
        assert client.mail(sender)[0] == 250
        assert client.rcpt("friend@example.net")[0] == 250
        big = message(sender, "big") + b"x" * 70 + b"\r\n"
        big = big * (MAX_SIZE // len(big) + 2)
        codes["too big"] = client.data(big)[0]
    finally:
        client.close()
    return codes


@pytest_twisted.ensureDeferred
async def test_bad_input_gets_the_right_codes(dovecot, oauth_provider, tmp_path):
    """No AUTH 530, wrong password 535, foreign sender 550, too big 552, garbage 500."""
    sender = "daemon-bad@example.com"
    daemon = await started(
        makeDaemon(tmp_path, oauth_provider, dovecot, sender), oauth_provider, sender
    )
    try:
        codes = await threads.deferToThread(badInput, daemon, sender)
    finally:
        await finished(daemon)
    assert codes == {
        "no auth": 530,
        "garbage": 500,
        "wrong password": 535,
        "not allowed": 550,
        "too big": 552,
    }


class CuttableProxy:
    """A TCP relay to Dovecot (Twisted's portforward) whose connections a test can cut."""

    def __init__(self, host: str, port: int) -> None:
        from twisted.internet import reactor
        from twisted.protocols import portforward

        proxy = self

        class Server(portforward.ProxyServer):
            def connectionMade(self) -> None:
                proxy.connections.add(self)
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                proxy.connections.discard(self)
                super().connectionLost(reason)

        factory = portforward.ProxyFactory(host, port)
        factory.protocol = Server
        self.connections: set[Any] = set()
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port

    def cut(self) -> None:
        for connection in list(self.connections):
            connection.transport.abortConnection()

    def stop(self) -> Any:
        self.cut()
        return self.listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_answer_lost_after_the_provider_took_it_is_not_sent_again(
    dovecot, oauth_provider, final_hop, tmp_path
):
    """Connection cut between the provider's acceptance and its 250: found in Sent, once.

    The same window as a kill, without one: the daemon sees the connection drop
    after its final dot, and looks in Sent before trying again.
    """
    sender = "daemon-cut@example.com"
    proxy = CuttableProxy(dovecot.host, dovecot.ports.submissions)
    filer = SentFiler(dovecot)
    held = HeldAnswer(filer, b"<cut-0@client.test>")
    final_hop.fileSent = held
    daemon = await started(
        makeDaemon(
            tmp_path, oauth_provider, dovecot, sender, sentFolder="auto", smtpPort=proxy.port
        ),
        oauth_provider,
        sender,
    )
    try:
        await threads.deferToThread(sendAll, daemon, sender, [message(sender, "cut", 0)])
        assert await waitFor(lambda: held.taken.called, 15.0), daemon.log()[-3000:]
        proxy.cut()  # the 250 can no longer reach the daemon
        held.answer.callback(None)
        assert await waitFor(lambda: "it may have arrived" in daemon.log(), 15.0), daemon.log()[
            -4000:
        ]
        assert await waitFor(lambda: "1 already accepted" in daemon.log(), 30.0), daemon.log()[
            -3000:
        ]
        await threads.deferToThread(sendAll, daemon, sender, [message(sender, "cut", 1)])
        assert await waitFor(lambda: len(relayedIDs(final_hop, "cut")) == 2, 15.0)
        await waitFor(lambda: False, 1.0)  # let a duplicate that is on its way arrive
        assert set(relayedIDs(final_hop, "cut").values()) == {1}
    finally:
        final_hop.fileSent = None
        if not held.answer.called:
            held.answer.callback(None)
        await proxy.stop()
        await threads.deferToThread(filer.close)
        await finished(daemon)
