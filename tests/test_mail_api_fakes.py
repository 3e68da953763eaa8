"""The local fakes of Microsoft Graph and the Gmail API answer in the documented shapes."""

from __future__ import annotations

import base64
import json

import pytest
import pytest_twisted
from twisted.internet import reactor

from oauthmail.http.agent import AgentFactory
from oauthmail.http.body import BytesBody
from oauthmail.http.exchange import ExchangeFailed, exchange
from oauthmail.testing.gmail_api import GmailAPIFake
from oauthmail.testing.graph import GraphFake
from oauthmail.testing.provider import TestOAuthProvider

MIME = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
TOKENS = {"good": "alice@example.com", "bobs": "bob@example.com"}


@pytest.fixture
def agents():
    factory = AgentFactory(reactor)
    yield factory.agent()
    pytest_twisted.blockon(factory.close())


@pytest.fixture
def graph():
    fake = GraphFake(TOKENS.get, delegates={"shared@example.com": ["alice@example.com"]})
    fake.listen(reactor)
    yield fake
    pytest_twisted.blockon(fake.stop())


@pytest.fixture
def gmail():
    fake = GmailAPIFake(TOKENS.get, max_json=10_000)
    fake.listen(reactor)
    yield fake
    pytest_twisted.blockon(fake.stop())


async def call(agent, url, token="good", body=None, ctype="text/plain", method=b"POST"):  # noqa: S107
    headers = {"Content-Type": ctype}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await exchange(
        agent,
        method,
        url,
        clock=reactor,
        headers=headers,
        body=None if body is None else BytesBody(body),
        timeout=5,
    )


@pytest_twisted.ensureDeferred
async def test_graph_send_mail_takes_base64_mime(graph, agents):
    """sendMail: 202, no body, the decoded MIME kept for the mailbox."""
    answer = await call(
        agents, f"{graph.base_url}/users/alice@example.com/sendMail", body=base64.b64encode(MIME)
    )
    assert (answer.status, answer.body) == (202, b"")
    assert [(m.user, m.raw) for m in graph.messages] == [("alice@example.com", MIME)]


@pytest_twisted.ensureDeferred
async def test_graph_errors_have_graph_shapes(graph, agents):
    """401 with Graph's challenge, 403 for another mailbox, 400 for bad base64, 413."""
    url = f"{graph.base_url}/users/alice@example.com/sendMail"
    unauthorised = await call(agents, url, token="nope", body=base64.b64encode(MIME))
    assert unauthorised.status == 401
    assert unauthorised.header("www-authenticate").startswith('Bearer realm=""')
    assert json.loads(unauthorised.body)["error"]["code"] == "InvalidAuthenticationToken"
    other = await call(agents, url, token="bobs", body=base64.b64encode(MIME))
    assert (other.status, json.loads(other.body)["error"]["code"]) == (403, "ErrorAccessDenied")
    bad = await call(agents, url, body=b"not base64!")
    assert json.loads(bad.body)["error"]["code"] == "ErrorMimeContentInvalidBase64String"
    graph.max_request = 100
    big = await call(agents, url, body=base64.b64encode(MIME * 10))
    assert big.status == 413
    assert graph.messages == []


@pytest_twisted.ensureDeferred
async def test_graph_delegate_may_send_for_a_shared_mailbox(graph, agents):
    """A delegate's token may send as the mailbox it was given (Mail.Send.Shared)."""
    url = f"{graph.base_url}/users/shared@example.com/sendMail"
    assert (await call(agents, url, body=base64.b64encode(MIME))).status == 202
    assert graph.messages[0].user == "shared@example.com"


@pytest_twisted.ensureDeferred
async def test_graph_me_is_the_identity(graph, agents):
    """GET /me names the token's user."""
    answer = await call(agents, f"{graph.base_url}/me", method=b"GET")
    assert json.loads(answer.body)["mail"] == "alice@example.com"


@pytest_twisted.ensureDeferred
async def test_gmail_send_and_upload(gmail, agents):
    """JSON raw (base64url) and the media upload both keep the bytes and answer an id."""
    raw = base64.urlsafe_b64encode(MIME).decode().rstrip("=")
    answer = await call(
        agents,
        f"{gmail.base_url}/gmail/v1/users/me/messages/send",
        body=json.dumps({"raw": raw}).encode(),
        ctype="application/json",
    )
    assert answer.status == 200
    assert json.loads(answer.body) == {
        "id": gmail.messages[0].id,
        "threadId": gmail.messages[0].id,
        "labelIds": ["SENT"],
    }
    upload = await call(
        agents,
        f"{gmail.base_url}/upload/gmail/v1/users/me/messages/send?uploadType=media",
        body=MIME,
        ctype="message/rfc822",
    )
    assert upload.status == 200
    assert [(m.raw, m.route) for m in gmail.messages] == [(MIME, "send"), (MIME, "upload")]


@pytest_twisted.ensureDeferred
async def test_gmail_errors_have_google_shapes(gmail, agents):
    """401 with error="invalid_token", 400 without raw, 413 over the limit."""
    url = f"{gmail.base_url}/gmail/v1/users/me/messages/send"
    unauthorised = await call(agents, url, token=None, body=b"{}", ctype="application/json")
    assert unauthorised.status == 401
    assert 'error="invalid_token"' in unauthorised.header("www-authenticate")
    assert json.loads(unauthorised.body)["error"]["status"] == "UNAUTHENTICATED"
    missing = await call(agents, url, body=b"{}", ctype="application/json")
    assert json.loads(missing.body)["error"]["errors"][0]["reason"] == "invalidArgument"
    big = await call(agents, url, body=b"x" * 20_000, ctype="application/json")
    assert big.status == 413
    profile = await call(agents, f"{gmail.base_url}/gmail/v1/users/me/profile", method=b"GET")
    assert json.loads(profile.body)["emailAddress"] == "alice@example.com"


@pytest_twisted.ensureDeferred
async def test_faults_come_in_order(gmail, agents):
    """failNext with Retry-After, then drop after reading: in that order, then normal."""
    url = f"{gmail.base_url}/upload/gmail/v1/users/me/messages/send?uploadType=media"
    gmail.failNext(429, retry_after=7)
    gmail.dropNext(accept=True)
    throttled = await call(agents, url, body=MIME, ctype="message/rfc822")
    assert (throttled.status, throttled.header("retry-after")) == (429, "7")
    assert json.loads(throttled.body)["error"]["errors"][0]["reason"] == "rateLimitExceeded"
    with pytest.raises(ExchangeFailed) as dropped:
        await call(agents, url, body=MIME, ctype="message/rfc822")
    assert dropped.value.sent is True
    assert len(gmail.messages) == 1  # taken before the drop
    assert (await call(agents, url, body=MIME, ctype="message/rfc822")).status == 200
    assert gmail.attempts == 3


@pytest_twisted.ensureDeferred
async def test_fakes_check_tokens_with_the_provider(agents):
    """Given the test provider, a fake accepts exactly the live tokens it minted."""
    provider = TestOAuthProvider(clock=reactor)
    provider.registerClient("c", "s")
    fake = GraphFake(provider)
    fake.listen(reactor)
    try:
        token = provider.issueTokens("alice@example.com", "c")["access_token"]
        url = f"{fake.base_url}/me"
        assert (await call(agents, url, token=token, method=b"GET")).status == 200
        provider.revokeUser("alice@example.com")
        assert (await call(agents, url, token=token, method=b"GET")).status == 401
    finally:
        await fake.stop()
