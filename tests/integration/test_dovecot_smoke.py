"""Smoke tests of the integration rig: real Dovecot + test OAuth provider + final hop.

These use only the standard library's blocking clients (imaplib, smtplib) so
they prove the rig itself, before any oauthmail client is pointed at it. Each
blocking exchange runs in a thread (``deferToThread``) so that the reactor
stays free to answer Dovecot's introspection requests.
"""

from __future__ import annotations

import base64
import email
import imaplib
import json
import shutil
import smtplib
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from oauthmail.testing.dovecot import DovecotServer, DovecotStartError

pytestmark = pytest.mark.integration

TIMEOUT = 15.0
TEMPLATES = Path(__file__).resolve().parent.parent / "dovecot"


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, port: int) -> bytes:
    return f"n,a={user},\x01host=mail.test\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


class SASLExchange:
    """An imaplib authobject: sends the initial response, then answers errors with ``abort``."""

    def __init__(self, initial: bytes, abort: bytes) -> None:
        self.initial = initial
        self.abort = abort
        self.challenges: list[bytes] = []

    def __call__(self, challenge: bytes) -> bytes:
        self.challenges.append(challenge)
        return self.initial if len(self.challenges) == 1 else self.abort


def imapAuthenticate(dovecot: DovecotServer, mechanism: str, exchange: SASLExchange) -> list:
    """Log in over implicit TLS and list the INBOX; returns [login response, search result]."""
    imap = dovecot.imapClient(timeout=TIMEOUT)
    try:
        typ, data = imap.authenticate(mechanism, exchange)
        imap.select("INBOX")
        _, found = imap.search(None, "ALL")
        return [(typ, data), found]
    finally:
        try:
            imap.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


def decodedErrorChallenge(exchange: SASLExchange) -> dict:
    # imaplib hands the authobject the base64-decoded continuation data.
    return json.loads(exchange.challenges[1])


@pytest_twisted.ensureDeferred
async def test_xoauth2_login_over_implicit_tls(dovecot, issue_token):
    """A provider-issued token logs in with XOAUTH2 over verified implicit TLS."""
    user = "alice@example.com"
    exchange = SASLExchange(xoauth2(user, issue_token(user)), b"")
    (typ, _), _ = await threads.deferToThread(imapAuthenticate, dovecot, "XOAUTH2", exchange)
    assert typ == "OK"
    assert len(exchange.challenges) == 1


@pytest_twisted.ensureDeferred
async def test_xoauth2_login_after_starttls(dovecot, issue_token):
    """On the plain IMAP port, STARTTLS verifies mail.test and XOAUTH2 then works."""
    user = "starttls@example.com"
    token = issue_token(user)

    def login():
        imap = imaplib.IMAP4(dovecot.host, dovecot.ports.imap, timeout=TIMEOUT)
        try:
            assert "STARTTLS" in imap.capabilities
            imap.starttls(ssl_context=dovecot.tlsContext())
            return imap.authenticate("XOAUTH2", SASLExchange(xoauth2(user, token), b""))
        finally:
            imap.logout()

    typ, _ = await threads.deferToThread(login)
    assert typ == "OK"


@pytest_twisted.ensureDeferred
async def test_bad_token_gets_continuation_then_no(dovecot):
    """A bad XOAUTH2 token gets a JSON error continuation, then NO once the client answers."""
    exchange = SASLExchange(xoauth2("mallory@example.com", "not-a-token"), b"")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        await threads.deferToThread(imapAuthenticate, dovecot, "XOAUTH2", exchange)
    assert decodedErrorChallenge(exchange)["status"] == "401"


@pytest_twisted.ensureDeferred
async def test_oauthbearer_login(dovecot, issue_token):
    """A provider-issued token logs in with OAUTHBEARER (RFC 7628)."""
    user = "bearer@example.com"
    initial = oauthbearer(user, issue_token(user), dovecot.ports.imaps)
    exchange = SASLExchange(initial, b"\x01")
    (typ, _), _ = await threads.deferToThread(imapAuthenticate, dovecot, "OAUTHBEARER", exchange)
    assert typ == "OK"


@pytest_twisted.ensureDeferred
async def test_revoked_token_is_refused(dovecot, oauth_provider, issue_token):
    """Once the provider revokes a user's tokens, Dovecot refuses them at the next login."""
    user = "revoked@example.com"
    token = issue_token(user)
    ok = SASLExchange(xoauth2(user, token), b"")
    (typ, _), _ = await threads.deferToThread(imapAuthenticate, dovecot, "XOAUTH2", ok)
    assert typ == "OK"

    oauth_provider.revokeUser(user)
    refused = SASLExchange(xoauth2(user, token), b"")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        await threads.deferToThread(imapAuthenticate, dovecot, "XOAUTH2", refused)


@pytest_twisted.ensureDeferred
async def test_master_user_append_is_seen_by_user(dovecot, issue_token):
    """A message APPENDed by the master user is in the user's INBOX and Maildir."""
    user = "seeded@example.com"
    message = b"From: seed@example.com\r\nSubject: seeded\r\n\r\nhello\r\n"
    await threads.deferToThread(dovecot.appendMessage, user, message)

    exchange = SASLExchange(xoauth2(user, issue_token(user)), b"")
    _, found = await threads.deferToThread(imapAuthenticate, dovecot, "XOAUTH2", exchange)
    assert found == [b"1"]
    assert len(list(dovecot.mailUser(user).glob("cur/*"))) == 1
    status = dovecot.doveadm("mailbox", "status", "-u", user, "messages", "INBOX")
    assert status.stdout.split() == ["INBOX", "messages=1"]


@pytest_twisted.ensureDeferred
async def test_submission_relays_to_final_hop(dovecot, final_hop, issue_token):
    """smtplib with XOAUTH2 after STARTTLS sends a message that reaches the final hop."""
    user = "sender@example.com"
    token = issue_token(user)
    body = b"From: sender@example.com\r\nTo: friend@example.net\r\nSubject: relayed\r\n\r\nhi\r\n"
    before = len(final_hop.messages)

    def send():
        with smtplib.SMTP(dovecot.host, dovecot.ports.submission, timeout=TIMEOUT) as smtp:
            smtp.ehlo("client.test")
            smtp.starttls(context=dovecot.tlsContext())
            smtp.ehlo("client.test")
            smtp.auth("XOAUTH2", lambda challenge=None: xoauth2(user, token).decode())
            return smtp.sendmail(user, ["friend@example.net"], body)

    refused = await threads.deferToThread(send)
    assert refused == {}
    messages = await final_hop.whenReceived(before + 1)
    relayed = messages[before]
    assert relayed.mailFrom == user
    assert relayed.rcptTos == ("friend@example.net",)
    assert email.message_from_bytes(relayed.data)["Subject"] == "relayed"


@pytest_twisted.ensureDeferred
async def test_submission_rejects_bad_token(dovecot):
    """Submission answers a bad XOAUTH2 token with 334 + JSON, then 535."""

    def attempt():
        with smtplib.SMTP_SSL(
            dovecot.host, dovecot.ports.submissions, timeout=TIMEOUT, context=dovecot.tlsContext()
        ) as smtp:
            smtp.ehlo("client.test")
            code, challenge = smtp.docmd(
                "AUTH", "XOAUTH2 " + base64.b64encode(xoauth2("x@example.com", "bad")).decode()
            )
            final = smtp.docmd("")
            return code, base64.b64decode(challenge), final[0]

    code, challenge, final = await threads.deferToThread(attempt)
    assert code == 334
    assert json.loads(challenge)["status"] == "401"
    assert final == 535


@pytest.mark.parametrize("certSet", ["wrongHost", "unknownCA"])
def test_verifying_client_refuses_bad_certificate(dovecot_factory, certSet):
    """A verifying client refuses a certificate for the wrong host or from an unknown CA."""
    server = dovecot_factory(certSet)
    with pytest.raises(ssl.SSLCertVerificationError):
        server.imapClient(timeout=TIMEOUT)
    with smtplib.SMTP(server.host, server.ports.submission, timeout=TIMEOUT) as smtp:
        with pytest.raises(ssl.SSLCertVerificationError):
            smtp.starttls(context=server.tlsContext())


def test_broken_configuration_reports_log(tmp_path, dovecot_factory, certs):
    """A configuration Dovecot rejects fails start() with Dovecot's own complaint."""
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    with (templates / "dovecot.conf.in").open("a") as conf:
        conf.write("\nno_such_setting_here = 1\n")
    with pytest.raises(DovecotStartError, match="no_such_setting_here"):
        dovecot_factory(templateDir=templates)
