"""Shared mailboxes through a delegate: who consents, who is logged in to, who sends.

``delegate:`` names the person who consents and whose token oauthmail holds; IMAP
and SMTP log in as the mailbox (``sasl_user``), mail leaves from the mailbox's
address, and Graph sends as ``/users/{shared}/sendMail``. The Dovecot test is in
``tests/integration/test_shared_mailbox.py``; the refusals of a bad ``delegate`` are
in the broken-file table.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from test_authorize_revocation import REDIRECT, World
from test_cli_authorize import browse
from test_identity import ACCESS, claims, jwt, profile
from test_transports import CLIENT, ProviderTokens, account, message
from twisted.internet import reactor

from oauthmail.config import parseConfig
from oauthmail.secret import Secret
from oauthmail.smtp.api import sendFromCLI
from oauthmail.smtp.queue.service import OutboundQueue
from oauthmail.testing.graph import GraphFake
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.authorize import AccountAuthorizationFailed
from oauthmail.tokens.identity import IdentityMismatch, accountIdentity, verifyConsent
from oauthmail.tokens.records import TokenSet
from oauthmail.transports.dispatch import buildSender

SHARED = "support@contoso.example"
DELEGATE = "alice@contoso.example"


def test_the_configuration_names_both_identities():
    """delegate: consents; the mailbox is the SASL user and the sender."""
    config = parseConfig(
        "profiles: {m: {provider: microsoft, client_id: abc}}\n"
        f"accounts: [{{name: support, address: {SHARED}, profile: m, delegate: {DELEGATE},"
        " imap: {}, smtp: {}}]\n",
        "test.yaml",
        {},
    )
    shared = config.account("support")
    assert shared.delegate == DELEGATE
    assert shared.sasl_user == SHARED
    assert accountIdentity(shared) == DELEGATE


def test_without_a_delegate_the_login_name_consents():
    """No delegate: the identity is user when set, else the address (as before)."""
    config = parseConfig(
        "profiles: {m: {provider: microsoft, client_id: abc}}\n"
        "accounts: [{name: a, address: a@contoso.example, profile: m},"
        " {name: b, address: b@contoso.example, profile: m, user: b.login@contoso.example}]\n",
        "test.yaml",
        {},
    )
    assert accountIdentity(config.account("a")) == "a@contoso.example"
    assert accountIdentity(config.account("b")) == "b.login@contoso.example"
    assert config.account("b").sasl_user == "b.login@contoso.example"


def _shared(**changes):
    from oauthmail.config import AccountConfig

    return AccountConfig("support", SHARED, profile(), delegate=DELEGATE, **changes)


@pytest_twisted.ensureDeferred
async def test_identity_check_compares_the_delegate():
    """Consent by the delegate passes; consent by the mailbox itself names the delegate."""
    tokens = TokenSet(Secret(ACCESS), None, None, id_token=Secret(jwt(claims(email=DELEGATE))))
    identity = await verifyConsent(_shared(), tokens, None, 1_700_000_000.0)
    assert identity.shown == DELEGATE
    other = TokenSet(Secret(ACCESS), None, None, id_token=Secret(jwt(claims(email=SHARED))))
    with pytest.raises(IdentityMismatch) as e:
        await verifyConsent(_shared(), other, None, 1_700_000_000.0)
    assert e.value.expected == DELEGATE and e.value.consented == SHARED
    assert str(e.value) == (
        f"you consented as {SHARED}, the mailbox {SHARED} is reached through its delegate"
        f" {DELEGATE}: sign in as {DELEGATE} and try again"
    )


@pytest_twisted.ensureDeferred
async def test_authorisation_hints_and_checks_the_delegate():
    """The provider is asked with login_hint = the delegate; her consent is stored."""
    world = World(delegate=DELEGATE, address=SHARED, scopes=("mail", "openid", "email"))
    try:
        url, _ = world.authorizer.begin("box", REDIRECT)
        result = await world.authorizer.complete(await browse(reactor, url))
        assert world.provider.login_hints == [DELEGATE]
        assert result.identity == DELEGATE
        world.provider.consent_as = SHARED  # the mailbox itself has no sign-in of its own
        url, _ = world.authorizer.begin("box", REDIRECT)
        reached = f"the mailbox {SHARED} is reached through its delegate {DELEGATE}"
        with pytest.raises(AccountAuthorizationFailed, match=reached):
            await world.authorizer.complete(await browse(reactor, url))
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_graph_sends_as_the_shared_mailbox_with_the_delegates_token():
    """Graph: POST /users/{shared}/sendMail with the delegate's token (Mail.Send.Shared)."""
    from dataclasses import replace

    provider = TestOAuthProvider()
    provider.registerClient(CLIENT, "secret")
    provider.listen(reactor)
    graph = GraphFake(provider, delegates={SHARED: [DELEGATE]})
    base = graph.listen(reactor)
    shared = replace(account("graph", base, address=SHARED), name="support", delegate=DELEGATE)
    tokens = ProviderTokens(provider, user=DELEGATE)
    sender = buildSender(reactor, [shared], environ={}, timeout=10.0)
    queue = OutboundQueue(
        MemoryOutbox(), tokens, {"support": shared}, reactor, sender=sender, linger=0
    )
    queue.startService()
    try:
        data = message(1).replace(b"From: alice@example.com", f"From: {SHARED}".encode())
        message_id, _ = await sendFromCLI(queue, shared, data, to=["bob@example.net"])
        status = await queue.whenDelivered(message_id).addTimeout(20, reactor)
        assert status.state == "sent" and status.mail_from == SHARED
        [sent] = graph.messages
        assert sent.user == SHARED.lower()
        assert sent.raw.endswith(data)
    finally:
        await queue.stopService()
        await sender.close()
        await graph.stop()
        await provider.stop()
