"""Hostile SMTP servers on real loopback sockets (implicit TLS) against sendBatch.

Each server misbehaves in one way a broken or malicious provider could; each test
proves the outcome the client must reach and that the bound holds:

- ``DATA`` answered ``250``: the body never goes out, the message is not sent;
- a multi-line reply that never ends: cut at 100 lines or 64 KiB, one clear error;
- a 1 MB reply line: cut at 2,048 bytes;
- a reply trickled one line per second: the reply deadline holds.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from hostile import HostileFactory, listenSMTP  # tests/hostile.py, shared with the daemon test
from twisted.internet import defer, ssl

from oauthmail.config import AccountConfig, AccountSmtpConfig, ProfileConfig, ServerConfig
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import OutgoingMessage, sendBatch
from oauthmail.testing.certs import generateTestCertificates

TOKEN = "ya29.hostile-test-token"
BODY = b"Subject: hostile\r\n\r\nsecret body line\r\n"


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="module")
def serverOptions(tmp_path_factory):
    """TLS options for a server named mail.test, and the CA file a client trusts."""
    certs = generateTestCertificates(tmp_path_factory.mktemp("hostile-certs"))
    options = ssl.DefaultOpenSSLContextFactory(str(certs.good.key), str(certs.good.cert))
    return options, str(certs.caFile)


@pytest.fixture
def hostile(serverOptions):
    """Start a hostile server: ``await hostile(behaviour)`` gives (factory, account)."""
    options, caFile = serverOptions
    ports = []

    def start(behaviour: str):
        factory = HostileFactory(behaviour)
        port = listenSMTP(factory, options)
        ports.append(port)
        server = ServerConfig(
            "127.0.0.1", port.getHost().port, "implicit", ca_file=caFile, server_name="mail.test"
        )
        profile = ProfileConfig(
            name="hostile",
            kind="generic",
            authorization_endpoint=None,
            token_endpoint="https://t",
            device_endpoint=None,
            revocation_endpoint=None,
            introspection_endpoint=None,
            client_id="c",
            client_secret=None,
            scopes=("mail",),
            smtp=server,
        )
        account = AccountConfig("a", "alice@example.com", profile, smtp=AccountSmtpConfig())
        return factory, account

    yield start
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


async def _send(account, **kw):
    message = OutgoingMessage("m1", "alice@example.com", ("bob@example.net",), BODY)
    started = time.monotonic()
    result = await sendBatch(_reactor(), account, Secret(TOKEN), [message], **kw)
    return result, time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_data_answered_250_is_not_sent(hostile):
    """A server answering DATA with 250: no body on the wire, the message is not recorded sent."""
    factory, account = hostile("data-250")
    result, _ = await _send(account, replyTimeout=5.0, timeout=10.0)
    await factory.lost
    (server,) = factory.connections
    assert b"secret body line" not in b"\n".join(server.received)
    assert not any(line.startswith(b"Subject:") for line in server.received)
    assert server.received[-2:] == [b"RSET", b"QUIT"]
    (outcome,) = result.outcomes
    assert not outcome.accepted and not outcome.in_doubt
    assert [r.status for r in outcome.recipients] == [outcomes.TEMPORARY]
    assert result.error is None


@pytest.mark.parametrize(
    ("behaviour", "bound"),
    [
        ("endless", "a reply of more than 100 lines"),
        ("endless-long-lines", "a reply longer than 65536 bytes"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_reply_that_never_ends_is_cut_at_its_bound(hostile, behaviour, bound):
    """A multi-line greeting that never ends closes the session at the bound, with one error."""
    factory, account = hostile(behaviour)
    result, elapsed = await _send(account, replyTimeout=30.0, timeout=60.0)
    port = account.profile.smtp.port
    assert result.outcomes == []
    assert result.error.action == outcomes.TEMPORARY
    assert result.error.reason == f"127.0.0.1:{port} sent {bound}; session closed"
    assert elapsed < 10.0  # cut at the bound, not at a deadline
    await factory.lost  # and the server saw the connection go


@pytest_twisted.ensureDeferred
async def test_a_one_megabyte_line_is_cut_at_2048_bytes(hostile):
    """A 1 MB greeting line closes the session as soon as the line passes 2,048 bytes."""
    factory, account = hostile("huge-line")
    result, elapsed = await _send(account, replyTimeout=30.0, timeout=60.0)
    port = account.profile.smtp.port
    assert result.error.reason == (
        f"127.0.0.1:{port} sent a reply line longer than 2048 bytes; session closed"
    )
    assert elapsed < 10.0


@pytest_twisted.ensureDeferred
async def test_a_trickled_reply_meets_the_reply_deadline(hostile):
    """One greeting line a second does not keep the session alive past the reply deadline."""
    factory, account = hostile("trickle")
    result, elapsed = await _send(account, replyTimeout=2.5, timeout=60.0)
    port = account.profile.smtp.port
    assert result.error.reason == f"no reply from 127.0.0.1:{port} within 2.5 s"
    assert 2.0 < elapsed < 6.0
    await factory.lost
