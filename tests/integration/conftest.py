"""Fixtures for the integration tests: a real Dovecot, the test OAuth provider, a final hop.

Everything here is session-scoped: one provider, one final-hop SMTP server and
one Dovecot serve the whole run, and each test uses its own mail user so that
tests do not see each other's mail or revocations.

The provider and the final hop run on pytest-twisted's reactor. Dovecot calls
the provider's ``/introspect`` while a client logs in, so a test that drives a
*blocking* client (imaplib, smtplib) must run it with
``twisted.internet.threads.deferToThread`` from an async test: blocking the
reactor thread would leave Dovecot's introspection request unanswered.

Dovecot missing: the tests are skipped, except when ``CI=true``, where that is
a broken test machine and the tests fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted

from oauthmail.config import ProfileConfig, ServerConfig
from oauthmail.secret import Secret
from oauthmail.testing.certs import TestCertificates, generateTestCertificates
from oauthmail.testing.dovecot import (
    DovecotServer,
    DovecotUnavailable,
    findDoveadm,
    findDovecot,
)
from oauthmail.testing.finalhop import FinalHop
from oauthmail.testing.provider import TestOAuthProvider

TEMPLATES = Path(__file__).resolve().parent.parent / "dovecot"
CLIENT_ID = "oauthmail-integration"
CLIENT_SECRET = "integration-client-secret"


def makeProfile(
    *,
    imap: ServerConfig | None = None,
    smtp: ServerConfig | None = None,
    provider: TestOAuthProvider | None = None,
) -> ProfileConfig:
    """A ``generic`` profile for :data:`CLIENT_ID` with the given servers.

    With ``provider``, its endpoints and the client secret are filled in (for
    tests whose tokens are refreshed for real); without, placeholders.
    """
    return ProfileConfig(
        name="test",
        kind="generic",
        authorization_endpoint=provider.authorization_endpoint if provider else None,
        token_endpoint=provider.token_endpoint if provider else "https://t",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET) if provider else None,
        scopes=("mail",),
        imap=imap,
        smtp=smtp,
    )


def requireDovecot() -> None:
    """Skip (or, with ``CI=true``, fail) the calling test when Dovecot is not installed."""
    try:
        findDovecot()
        findDoveadm()
    except DovecotUnavailable as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but Dovecot is unavailable: {e}", pytrace=False)
        pytest.skip(f"Dovecot is not installed: {e}")


def _reactor():
    from twisted.internet import reactor

    return reactor


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> TestCertificates:
    """A test CA and the good, wrong-host and unknown-CA server certificates."""
    return generateTestCertificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def oauth_provider() -> Iterator[TestOAuthProvider]:
    """The test OAuth provider, listening on loopback, with :data:`CLIENT_ID` registered."""
    provider = TestOAuthProvider()
    provider.registerClient(CLIENT_ID, CLIENT_SECRET)
    provider.listen(_reactor())
    yield provider
    pytest_twisted.blockon(provider.stop())


@pytest.fixture(scope="session")
def final_hop() -> Iterator[FinalHop]:
    """The SMTP server Dovecot's submission service relays to."""
    hop = FinalHop()
    hop.listen(_reactor())
    yield hop
    pytest_twisted.blockon(hop.stop())


@pytest.fixture(scope="session")
def dovecot(
    certs: TestCertificates, oauth_provider: TestOAuthProvider, final_hop: FinalHop
) -> Iterator[DovecotServer]:
    """A running Dovecot that checks tokens with ``oauth_provider`` and relays to ``final_hop``."""
    requireDovecot()
    server = DovecotServer(
        TEMPLATES,
        oauth_provider.introspection_endpoint,
        certs,
        relayHost=final_hop.host,
        relayPort=final_hop.port,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dovecot_factory(
    certs: TestCertificates, oauth_provider: TestOAuthProvider, final_hop: FinalHop
) -> Iterator[Callable[..., DovecotServer]]:
    """Start extra Dovecots (another certificate set, other settings); all stop at the end."""
    requireDovecot()
    started: list[DovecotServer] = []

    def start(certSet: str = "good", **kwargs) -> DovecotServer:
        kwargs.setdefault("relayHost", final_hop.host)
        kwargs.setdefault("relayPort", final_hop.port)
        server = DovecotServer(
            kwargs.pop("templateDir", TEMPLATES),
            oauth_provider.introspection_endpoint,
            certs,
            certSet=certSet,
            **kwargs,
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def issue_token(oauth_provider: TestOAuthProvider) -> Callable[[str], str]:
    """Mint an access token for a user, as if they had just consented."""

    def issue(user: str) -> str:
        return oauth_provider.issueTokens(user, CLIENT_ID)["access_token"]

    return issue
