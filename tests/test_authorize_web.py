"""The console's Authorise flows, step by step over real loopback HTTP against the test provider."""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.server import Site

from oauthmail.config import AccountConfig, Config, ProfileConfig, WebConfig
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.authorize import Authorizer
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.source import TokenSource
from oauthmail.web.console import ConsoleResource

CLIENT_ID = "console-client"
CLIENT_SECRET = "console-client-secret-123"


class _Collect(protocol.Protocol):
    def __init__(self, done: defer.Deferred[bytes]) -> None:
        self.done, self.chunks = done, []

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason=None) -> None:
        self.done.callback(b"".join(self.chunks))


def _readBody(response) -> defer.Deferred[bytes]:
    """The whole body (``readBody`` warns about the non-persistent pool's transport)."""
    done: defer.Deferred[bytes] = defer.Deferred()
    response.deliverBody(_Collect(done))
    return done


class RecordingQueue:
    """Stands in for ``OutboundQueue``: remembers which accounts were woken."""

    def __init__(self) -> None:
        self.woken: list[str] = []

    def retryNow(self, account: str) -> defer.Deferred[int]:
        self.woken.append(account)
        return defer.succeed(0)


class Console:
    """A provider, a token source and the console site, all on loopback."""

    def __init__(self, reactor, scopes: tuple[str, ...] = ("mail",)) -> None:
        self.reactor = reactor
        self.provider = TestOAuthProvider(device_interval=1)
        self.provider.registerClient(CLIENT_ID, CLIENT_SECRET)
        self.provider.listen(reactor)
        p = self.provider
        ready = ProfileConfig(
            name="local",
            kind="generic",
            authorization_endpoint=p.authorization_endpoint,
            token_endpoint=p.token_endpoint,
            device_endpoint=p.device_endpoint,
            revocation_endpoint=None,
            introspection_endpoint=None,
            client_id=CLIENT_ID,
            client_secret=Secret(CLIENT_SECRET),
            scopes=scopes,
        )
        later = replace(ready, name="later", client_id="")
        self.config = Config(
            source="test.yaml",
            profiles={"local": ready, "later": later},
            accounts=(
                AccountConfig("helpdesk", "helpdesk@example.com", ready),
                AccountConfig("dev", "dev@example.com", ready, grant="device_code"),
                AccountConfig("app", "app@example.com", ready, grant="client_credentials"),
                AccountConfig("gmail", "gmail@example.com", later),
            ),
            web=WebConfig("127.0.0.1", 0),
        )
        self.store = MemoryTokenStore(clock=reactor)
        self.transport = AgentTransport(reactor, persistent=False)
        configured = {a.name: a for a in self.config.accounts if a.configured}
        self.tokens = TokenSource(self.store, configured, self.transport, reactor)
        self.queue = RecordingQueue()
        self.authorizer = Authorizer(self.tokens, reactor, queue=self.queue)
        resource = ConsoleResource(self.config, self.store, reactor, authorizer=self.authorizer)
        site = Site(resource)
        site.displayTracebacks = False
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))

    async def stop(self) -> None:
        self.authorizer.stop()
        await self.port.stopListening()
        await self.provider.stop()
        await self.transport.close()

    async def request(
        self,
        method: str,
        url: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], str]:
        sent = headers or {}
        headers = Headers()
        for name, value in sent.items():
            headers.addRawHeader(name.encode(), value.encode())
        body = None
        if form is not None:
            from io import BytesIO

            from twisted.web.client import FileBodyProducer

            headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(BytesIO(urlencode(form).encode()))
        if url.startswith("/"):
            url = self.base + url
        response = await self.agent.request(method.encode(), url.encode(), headers, body)
        text = (await _readBody(response)).decode("utf-8")
        found = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, text

    async def csrf(self) -> str:
        status, _, text = await self.request("GET", "/")
        assert status == 200
        return re.search(r"name='csrf' value='([^']+)'", text).group(1)

    async def toProvider(self, account: str) -> str:
        """Press the button: fire with the provider URL the console redirects to."""
        status, headers, _ = await self.request(
            "POST", f"/authorize/{account}", {"csrf": await self.csrf()}
        )
        assert status == 303
        return headers["location"]

    async def toCallback(self, provider_url: str) -> str:
        """What the (auto-approving) provider redirects the browser to."""
        status, headers, _ = await self.request("GET", provider_url)
        assert status in (302, 303)
        return headers["location"]


def _row(page: str, account: str) -> str:
    # The account's name cell links to its message page.
    return next(r for r in page.split("<tr>") if f"href='/messages/{account}'>{account}<" in r)


@pytest_twisted.ensureDeferred
async def test_authorise_redirect_callback_stores_tokens_and_says_so() -> None:
    """Authorise → provider → /callback stores tokens, sets ok, wakes the queue, shows no secret."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        _, _, page = await c.request("GET", "/")
        assert ">Authorise</button>" in _row(page, "helpdesk")
        provider_url = await c.toProvider("helpdesk")
        assert provider_url.startswith(c.provider.authorization_endpoint + "?")
        query = dict(parse_qsl(urlsplit(provider_url).query))
        assert query["redirect_uri"] == c.base + "/callback"
        assert query["code_challenge_method"] == "S256"
        callback = await c.toCallback(provider_url)
        assert callback.startswith(c.base + "/callback?")
        code = dict(parse_qsl(urlsplit(callback).query))["code"]
        status, headers, text = await c.request("GET", callback)
        assert status == 200
        assert "helpdesk is authorised; its token expires in 59 min" in text
        assert headers["referrer-policy"] == "no-referrer"
        record = await c.store.getTokens("helpdesk")
        assert record is not None and record.refresh_token is not None
        assert (await c.store.getAccount("helpdesk")).state == "ok"
        assert c.queue.woken == ["helpdesk"]
        for secret in (code, record.access_token.reveal(), record.refresh_token.reveal()):
            assert secret not in text
        _, _, page = await c.request("GET", "/")
        assert ">Re-authorise</button>" in _row(page, "helpdesk")
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_bad_state_shows_an_error_and_stores_nothing() -> None:
    """A callback whose state we never issued is refused before the code is sent anywhere."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        callback = await c.toCallback(await c.toProvider("helpdesk"))
        parts = urlsplit(callback)
        query = dict(parse_qsl(parts.query))
        query["state"] = "forged-" + query["state"][:10]
        forged = urlunsplit(parts._replace(query=urlencode(query)))
        status, _, text = await c.request("GET", forged)
        assert status == 400
        assert "unknown, already used or expired" in text
        assert query["code"] not in text
        assert c.provider.requests["token"] == 0
        assert await c.store.getTokens("helpdesk") is None
        status, _, text = await c.request("GET", "/callback")
        assert status == 400
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_csrf_token_is_forbidden() -> None:
    """POST /authorize without the console's CSRF token answers 403 and starts nothing."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        for form in ({}, {"csrf": "not-the-token"}):
            status, headers, _ = await c.request("POST", "/authorize/helpdesk", form)
            assert status == 403
            assert "location" not in headers
        assert c.authorizer._pending == {}
        status, _, _ = await c.request("GET", "/authorize/helpdesk")
        assert status == 405
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_pkce_mismatch_shows_the_providers_answer() -> None:
    """A verifier that does not match the challenge fails with the provider's words, no tokens."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        provider_url = await c.toProvider("helpdesk")
        state = dict(parse_qsl(urlsplit(provider_url).query))["state"]
        pending = c.authorizer._pending[state]
        tampered = replace(pending.request, code_verifier=Secret("x" * 64))
        c.authorizer._pending[state] = replace(pending, request=tampered)
        status, _, text = await c.request("GET", await c.toCallback(provider_url))
        assert status == 400
        assert "Authorisation of helpdesk failed" in text
        assert "The provider said: invalid_grant (code_verifier does not match" in text
        assert "x" * 64 not in text
        assert await c.store.getTokens("helpdesk") is None
        assert c.queue.woken == []
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_reauthorise_an_account_that_needs_it() -> None:
    """A needs_reauth account shows Re-authorise and is ok again after the flow."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        await c.store.ensureAccount("helpdesk", "generic")
        await c.store.setAccountState("helpdesk", "needs_reauth", "invalid_grant: revoked")
        _, _, page = await c.request("GET", "/")
        assert ">Re-authorise</button>" in _row(page, "helpdesk")
        status, _, text = await c.request("GET", await c.toCallback(await c.toProvider("helpdesk")))
        assert status == 200
        assert "helpdesk is authorised" in text
        account = await c.store.getAccount("helpdesk")
        assert (account.state, account.last_error) == ("ok", None)
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_not_configured_account_has_no_button() -> None:
    """An account without client_id shows what to configure and offers no Authorise button."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        _, _, page = await c.request("GET", "/")
        row = _row(page, "gmail")
        assert "<form" not in row
        assert "client_id" in row
        status, _, _ = await c.request("POST", "/authorize/gmail", {"csrf": await c.csrf()})
        assert status == 409
        status, _, _ = await c.request("POST", "/authorize/nobody", {"csrf": await c.csrf()})
        assert status == 404
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_device_flow_from_the_console() -> None:
    """A device_code account's button shows the user code, polls, and the page shows the result."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        status, headers, _ = await c.request("POST", "/authorize/dev", {"csrf": await c.csrf()})
        assert (status, headers["location"]) == (303, "/device/dev")
        status, _, text = await c.request("GET", "/device/dev")
        assert status == 200
        assert c.provider.verification_uri in text
        assert "http-equiv='refresh'" in text
        user_code = re.search(r"<code>([A-Z-]+)</code>", text).group(1)
        c.provider.approveDevice(user_code)
        await c.authorizer.devices["dev"].finished
        _, _, text = await c.request("GET", "/device/dev")
        assert "dev is authorised; its token expires in 59 min" in text
        assert (await c.store.getAccount("dev")).state == "ok"
        assert c.queue.woken == ["dev"]
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_client_credentials_account_is_authorised_on_the_spot() -> None:
    """A client_credentials account's button just fetches a token and says until when."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        status, _, text = await c.request("POST", "/authorize/app", {"csrf": await c.csrf()})
        assert status == 200
        assert "app is authorised; its token expires in 59 min" in text
        record = await c.store.getTokens("app")
        assert record.access_token.reveal() not in text
        assert CLIENT_SECRET not in text
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_consent_given_as_another_person_stores_nothing() -> None:
    """The provider consents as carol for helpdesk: the page says so (escaped), nothing stored."""
    from twisted.internet import reactor

    c = Console(reactor, scopes=("mail", "openid", "email"))
    c.provider.consent_as = "carol<b>@example.com"
    try:
        status, _, text = await c.request("GET", await c.toCallback(await c.toProvider("helpdesk")))
        assert status == 400
        assert (
            "You consented as carol&lt;b&gt;@example.com, this account is helpdesk@example.com:"
            " sign in as helpdesk@example.com and try again." in text
        )
        assert "Nothing was stored" in text and "<b>" not in text
        assert c.provider.login_hints == ["helpdesk@example.com"]
        assert await c.store.getTokens("helpdesk") is None
        assert c.queue.woken == []
        c.provider.consent_as = None  # the account's own person, as login_hint asked
        status, _, text = await c.request("GET", await c.toCallback(await c.toProvider("helpdesk")))
        assert status == 200
        assert "consent given as helpdesk@example.com" in text
        assert (await c.store.getAccount("helpdesk")).state == "ok"
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_device_code_approved_by_another_person_stores_nothing() -> None:
    """dev's code approved as carol: the device page says so; approved as dev it is stored."""
    from twisted.internet import reactor

    c = Console(reactor, scopes=("mail", "openid", "email"))
    try:
        for user, ok in (("carol@example.com", False), ("dev@example.com", True)):
            status, _, _ = await c.request("POST", "/authorize/dev", {"csrf": await c.csrf()})
            assert status == 303
            _, _, text = await c.request("GET", "/device/dev")
            c.provider.approveDevice(re.search(r"<code>([A-Z-]+)</code>", text).group(1), user)
            await c.authorizer.devices["dev"].finished
            _, _, text = await c.request("GET", "/device/dev")
            if ok:
                assert "dev is authorised" in text and "consent given as dev@example.com" in text
            else:
                assert "You consented as carol@example.com, this account is dev@example.com" in text
                assert await c.store.getTokens("dev") is None
        assert (await c.store.getAccount("dev")).state == "ok"
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_client_secret_is_kept_and_not_retried_blindly() -> None:
    """invalid_client at the callback: the fix, no "press Authorise again", kept as last error."""
    from twisted.internet import reactor

    c = Console(reactor)
    c.provider.registerClient(CLIENT_ID, "a-rotated-secret")
    try:
        await c.store.ensureAccount("helpdesk", "generic")  # as the daemon does at start-up
        status, _, text = await c.request("GET", await c.toCallback(await c.toProvider("helpdesk")))
        assert status == 400
        assert "invalid_client" in text and "fix client_id and client_secret" in text
        assert "configuration error" in text and "press Authorise" not in text
        account = await c.store.getAccount("helpdesk")
        assert account.state == "error" and "invalid_client" in account.last_error
        assert await c.store.getTokens("helpdesk") is None
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_device_start_refuses_a_profile_without_the_device_grant() -> None:
    """A device_code account whose profile cannot use it is refused before any request."""
    from twisted.internet import reactor

    from oauthmail.tokens.authorize import FIX_CONFIGURATION, AccountAuthorizationFailed

    c = Console(reactor)
    try:
        google = replace(
            c.config.profiles["local"], kind="google", scopes=("https://mail.google.com/",)
        )
        account = AccountConfig("g", "g@example.com", google, grant="device_code")
        tokens = TokenSource(c.store, {"g": account}, c.transport, reactor)
        with pytest.raises(AccountAuthorizationFailed) as info:
            await Authorizer(tokens, reactor).startDevice("g")
        assert info.value.remedy == FIX_CONFIGURATION
        assert "Google's device flow does not grant the Gmail scope" in info.value.reason
        assert c.provider.requests["device_authorization"] == 0
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_pending_authorisations_expire_are_capped_and_work_once() -> None:
    """A state is refused after 10 minutes, after being used, or once the cap pushed it out."""
    from twisted.internet import reactor
    from twisted.internet.task import Clock

    from oauthmail.tokens.errors import AuthorizationFailed

    c = Console(reactor)
    try:
        clock = Clock()
        authorizer = Authorizer(c.tokens, clock, max_pending=2)
        url, _ = authorizer.begin("helpdesk", c.base + "/callback")
        redirect = await c.toCallback(url)
        clock.advance(601)
        with pytest.raises(AuthorizationFailed, match="unknown, already used or expired"):
            await authorizer.complete(redirect)
        first, _ = authorizer.begin("helpdesk", c.base + "/callback")
        authorizer.begin("helpdesk", c.base + "/callback")
        authorizer.begin("helpdesk", c.base + "/callback")
        assert len(authorizer._pending) == 2
        with pytest.raises(AuthorizationFailed, match="unknown, already used or expired"):
            await authorizer.complete(await c.toCallback(first))
        assert c.provider.requests["token"] == 0
        url, _ = authorizer.begin("helpdesk", c.base + "/callback")
        redirect = await c.toCallback(url)
        result = await authorizer.complete(redirect)
        assert result.account == "helpdesk"
        with pytest.raises(AuthorizationFailed, match="unknown, already used or expired"):
            await authorizer.complete(redirect)
        assert c.provider.requests["token"] == 1
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_foreign_origin_or_referer_starts_nothing() -> None:
    """A POST with the right token but another site's Origin (or Referer) is refused, no flow."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        csrf = await c.csrf()
        for headers in (
            {"origin": "http://evil.example"},
            {"origin": "null"},
            {"origin": c.base.replace("127.0.0.1", "evil.example")},
            {"referer": "http://evil.example/page"},
            {"origin": c.base, "host": "evil.example"},
        ):
            status, found, text = await c.request(
                "POST", "/authorize/helpdesk", {"csrf": csrf}, headers
            )
            assert status in (403, 421), headers
            assert "location" not in found
        assert c.authorizer._pending == {}
        assert c.authorizer.devices == {}
        assert c.provider.requests["authorize"] == 0
        status, _, _ = await c.request("POST", "/authorize/app", {"csrf": csrf}, {"origin": "null"})
        assert status == 403
        assert await c.store.getTokens("app") is None
        for origin in (c.base, c.base.replace("127.0.0.1", "localhost")):
            status, _, _ = await c.request(
                "POST", "/authorize/helpdesk", {"csrf": csrf}, {"origin": origin}
            )
            assert status == 303
        status, _, _ = await c.request(
            "POST", "/authorize/helpdesk", {"csrf": csrf}, {"referer": c.base + "/"}
        )
        assert status == 303
        assert len(c.authorizer._pending) == 3
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_providers_error_description_is_shown_escaped() -> None:
    """An IdP error_description holding markup appears on the callback page as text."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        provider_url = await c.toProvider("helpdesk")
        state = dict(parse_qsl(urlsplit(provider_url).query))["state"]
        query = urlencode(
            {
                "error": "access_denied<b>",
                "error_description": "<script>alert('x')</script> & <img src=x>",
                "state": state,
            }
        )
        status, headers, text = await c.request("GET", f"/callback?{query}")
        assert status == 400
        assert "<script" not in text and "<img" not in text and "<b>" not in text
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;img src=x&gt;" in text
        assert "default-src 'none'" in headers["content-security-policy"]
        assert await c.store.getTokens("helpdesk") is None
    finally:
        await c.stop()


@pytest_twisted.ensureDeferred
async def test_console_and_callback_answer_on_localhost() -> None:
    """The console answers as localhost too: the redirect URI Microsoft accepts over http."""
    from twisted.internet import reactor

    c = Console(reactor)
    try:
        local = c.base.replace("127.0.0.1", "localhost")
        status, _, page = await c.request("GET", local + "/", headers={"host": local[7:]})
        assert status == 200 and ">Authorise</button>" in _row(page, "helpdesk")
        callback = await c.toCallback(await c.toProvider("helpdesk"))
        on_localhost = callback.replace(c.base, local)
        status, _, text = await c.request("GET", on_localhost, headers={"host": local[7:]})
        assert status == 200
        assert "helpdesk is authorised" in text
        status, _, _ = await c.request("GET", "/", headers={"host": "localhost.evil.example"})
        assert status == 421
    finally:
        await c.stop()
