"""The console tells the operator the state of each account and never a token."""

from __future__ import annotations

import json
import re

import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.config import AccountConfig, Config, ProfileConfig
from oauthmail.passwords import ScryptParameters, hashPassword
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.text import describeWhen
from oauthmail.tokens.records import TokenSet
from oauthmail.web.console import ConsoleResource, renderStatusPage
from oauthmail.web.guard import ConsoleAccess
from oauthmail.web.login import IAdminPassword, ScryptAdminPassword
from oauthmail.web.status import accountStatus

TINY = ScryptParameters(n=16, r=1, p=1)


def _profile(name: str, client_id: str = "cid") -> ProfileConfig:
    return ProfileConfig(
        name=name,
        kind="generic",
        authorization_endpoint="https://auth.example/authorize",
        token_endpoint="https://auth.example/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=client_id,
        client_secret=Secret("client-secret-xyz"),
        scopes=("mail",),
    )


def _config() -> Config:
    ready = _profile("ready")
    later = _profile("later", client_id="")
    return Config(
        source="test.yaml",
        profiles={"ready": ready, "later": later},
        accounts=(
            AccountConfig(name="helpdesk", address="helpdesk@example.com", profile=ready),
            AccountConfig(name="alerts", address="alerts@example.com", profile=ready),
            AccountConfig(name="gmail", address="<b>x</b>@example.com", profile=later),
        ),
    )


class _Request(DummyRequest):
    """A DummyRequest that asks for the console by its name, as a browser on loopback does."""

    def __init__(self, postpath: list[bytes], host: bytes = b"127.0.0.1:80") -> None:
        super().__init__(postpath)
        self.requestHeaders.addRawHeader(b"host", host)

    def isSecure(self) -> bool:
        return False


async def _render(
    resource: ConsoleResource, path: bytes, host: bytes = b"127.0.0.1:80"
) -> tuple[int, bytes]:
    request = _Request([path] if path else [b""], host)
    child = resource.getChildWithDefault(path, request)
    finished = request.notifyFinish()
    body = child.render(request)
    if isinstance(body, bytes):
        return request.responseCode or 200, body
    await finished
    return request.responseCode or 200, b"".join(request.written)


@pytest_twisted.ensureDeferred
async def test_status_page_shows_states_and_expiry_never_tokens() -> None:
    """Each account shows its state and token expiry; the token values never appear."""
    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
    await store.putTokens(
        "helpdesk",
        TokenSet(Secret("ACCESS-abc"), clock.seconds() + 3000, Secret("REFRESH-def"), "mail"),
        0,
    )
    await store.setAccountState("helpdesk", "ok")
    await store.setAccountState("alerts", "needs_reauth", "invalid_grant: token revoked")
    status, body = await _render(ConsoleResource(config, store, clock), b"")
    page = body.decode()
    assert status == 200
    assert "in 50 min" in page
    assert "needs re-authorisation" in page
    assert "invalid_grant: token revoked" in page
    assert "not configured" in page
    assert "&lt;b&gt;x&lt;/b&gt;@example.com" in page
    for secret in ("ACCESS-abc", "REFRESH-def", "client-secret-xyz"):
        assert secret not in page


@pytest_twisted.ensureDeferred
async def test_health_is_503_while_an_account_needs_a_person() -> None:
    """/health answers 503 with per-account states when any account needs attention."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
    status, body = await _render(ConsoleResource(config, store, clock), b"health")
    health = json.loads(body)
    assert status == 503
    assert health["status"] == "degraded"
    assert [a["state"] for a in health["accounts"]] == [
        "unauthorised",
        "unauthorised",
        "not_configured",
    ]


@pytest_twisted.ensureDeferred
async def test_health_is_200_when_every_account_is_ok() -> None:
    """/health answers 200 when every configured account is ok."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    status, body = await _render(ConsoleResource(config, store, clock), b"health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_not_configured_account_says_what_to_do() -> None:
    """An account without a client id is 'not configured' and names the profile to fill in."""
    config = _config()
    status = accountStatus(config.account("gmail"), None, None)
    assert status.state == "not_configured"
    assert "client_id" in status.next_step and "later" in status.next_step


def test_empty_config_page_says_so() -> None:
    """A configuration with no accounts renders a page that says so."""
    assert "No accounts are configured yet." in renderStatusPage([], 0.0)


def test_describe_when_reads_naturally() -> None:
    """Relative times read as a person says them."""
    assert describeWhen(None, 0) == "—"
    assert describeWhen(30, 0) == "in 30 s"
    assert describeWhen(0, 600) == "10 min ago"
    assert describeWhen(7200, 0) == "in 2.0 h"
    assert describeWhen(0, 3 * 86400) == "3.0 days ago"


class _FakeQueue:
    """Just the stats() the console reads from an OutboundQueue."""

    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        from twisted.internet import defer

        return defer.succeed(self._stats)


@pytest_twisted.ensureDeferred
async def test_outbox_shows_depth_age_and_send_errors() -> None:
    """The outbox column shows queue depth, oldest age and the last send error."""
    from oauthmail.smtp.queue.records import QueueStats
    from oauthmail.web.console import LiveParts

    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    queue = _FakeQueue(
        {
            "helpdesk": QueueStats("helpdesk", 3, 1200.0, 1, "451 4.3.0 try again later"),
            "alerts": QueueStats("alerts", 0, None, 0, None),
        }
    )
    resource = ConsoleResource(config, store, clock, live=LiveParts(queue=queue))
    status, body = await _render(resource, b"")
    page = body.decode()
    assert "3 queued, oldest 20 min ago; 1 failed for good" in page
    assert "451 4.3.0 try again later" in page
    assert "empty" in page
    status, body = await _render(resource, b"health")
    helpdesk = json.loads(body)["accounts"][0]
    assert (helpdesk["queued"], helpdesk["oldest_queued_age"]) == (3, 1200.0)


# --- the guard: Host, headers, login ---------------------------------------------------


def _guarded(host: bytes | None, local: tuple[str, int] = ("127.0.0.1", 80)) -> _Request:
    request = _Request([b""])
    request.requestHeaders.removeHeader(b"host")
    if host is not None:
        request.requestHeaders.addRawHeader(b"host", host)
    request.getHost = lambda: IPv4Address("TCP", *local)
    return request


@pytest_twisted.ensureDeferred
async def test_foreign_host_is_refused_before_any_page_runs() -> None:
    """A request whose Host is not the console's (DNS rebinding) gets 421 and reads no state."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    config = _config()
    resource = ConsoleResource(config, store, clock)
    for host in (b"evil.example", b"evil.example:80", None, b"127.0.0.1:8025"):
        request = _guarded(host)
        child = resource.getChildWithDefault(b"health", request)
        body = child.render(request)
        assert request.responseCode == 421
        assert body == b"Misdirected request: this server does not answer to that name.\n"
        assert request.responseHeaders.getRawHeaders(b"x-frame-options") == [b"DENY"]
    for host in (b"127.0.0.1", b"localhost:80", b"LOCALHOST"):
        status, _ = await _render(resource, b"health", host)
        assert status == 503


@pytest_twisted.ensureDeferred
async def test_every_response_carries_the_security_headers() -> None:
    """Pages, JSON and refusals carry CSP without script, no framing, no sniffing, no-store."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    resource = ConsoleResource(_config(), store, clock)
    for path in (b"", b"health", b"nothing-here"):
        request = _Request([path])
        child = resource.getChildWithDefault(path, request)
        finished = request.notifyFinish()
        if not isinstance(child.render(request), bytes):
            await finished
        headers = dict(request.responseHeaders.getAllRawHeaders())
        csp = headers[b"Content-Security-Policy"][0].decode()
        assert "default-src 'none'" in csp and "script-src" not in csp
        assert "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "form-action 'self' https://auth.example" in csp and "base-uri 'none'" in csp
        assert headers[b"X-Frame-Options"] == [b"DENY"]
        assert headers[b"X-Content-Type-Options"] == [b"nosniff"]
        assert headers[b"Referrer-Policy"] == [b"no-referrer"]
        assert headers[b"Cache-Control"] == [b"no-store"]
    page = (await _render(resource, b""))[1].decode()
    assert "<style" not in page and "style=" not in page and "<script" not in page
    assert '<link rel="stylesheet" href="/style.css">' in page
    status, css = await _render(resource, b"style.css")
    assert status == 200 and b".ok {" in css


class _Browserish:
    """A console on loopback and an HTTP client that keeps the session cookie."""

    def __init__(self, reactor, resource: ConsoleResource) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool

        from oauthmail.web.site import ConsoleSite

        self.port = reactor.listenTCP(0, ConsoleSite(resource), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        self.cookie: bytes | None = None

    async def request(self, method: str, path: str, form=None, headers=None, body=None):
        from io import BytesIO
        from urllib.parse import urlencode

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        sent = Headers()
        for name, value in (headers or {}).items():
            sent.addRawHeader(name.encode(), value.encode())
        if self.cookie is not None:
            sent.addRawHeader(b"cookie", self.cookie)
        if form is not None:
            sent.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = urlencode(form).encode()
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = await self.agent.request(
            method.encode(), (self.base + path).encode(), sent, producer
        )
        text = (await _readAll(response)).decode("utf-8", "replace")
        found = {k.decode().lower(): v for k, v in response.headers.getAllRawHeaders()}
        return response.code, found, text

    async def login(self, password: str) -> tuple[int, dict, str]:
        status, _, page = await self.request("GET", "/login")
        assert status == 200
        csrf = re.search(r"name='csrf' value='([^']+)'", page).group(1)
        status, headers, text = await self.request(
            "POST", "/login", {"csrf": csrf, "password": password}
        )
        if "set-cookie" in headers:
            self.cookie = headers["set-cookie"][0].split(b";")[0]
        return status, headers, text


def _readAll(response):
    from twisted.internet import defer, protocol

    done = defer.Deferred()

    class Collect(protocol.Protocol):
        def __init__(self):
            self.chunks = []

        def dataReceived(self, data):
            self.chunks.append(data)

        def connectionLost(self, reason=None):
            done.callback(b"".join(self.chunks))

    response.deliverBody(Collect())
    return done


@implementer(IAdminPassword)
class _Password:
    """The admin password "right horse", checked at once."""

    def check(self, password: str):
        from twisted.internet import defer

        return defer.succeed(password == "right horse")


def _offLoopback(clock, lifetime: float = 3600.0) -> ConsoleResource:
    access = ConsoleAccess(
        bind="0.0.0.0",  # noqa: S104 - the point: bound off loopback
        admin_password_hash=hashPassword("right horse", TINY),
        session_lifetime=lifetime,
    )
    store = MemoryTokenStore(clock=clock)
    return ConsoleResource(_config(), store, clock, access=access, admin_password=_Password())


@pytest_twisted.ensureDeferred
async def test_off_loopback_every_page_but_health_needs_a_login() -> None:
    """Bound off loopback: the console redirects to /login; /health and the stylesheet stay open."""
    from twisted.internet import reactor

    c = _Browserish(reactor, _offLoopback(Clock()))
    try:
        status, headers, _ = await c.request("GET", "/")
        assert (status, headers["location"]) == (303, [b"/login"])
        for path in ("/authorize/helpdesk", "/device/helpdesk", "/nothing"):
            assert (await c.request("GET", path))[0] == 303
        assert (await c.request("GET", "/health"))[0] == 503
        assert (await c.request("GET", "/style.css"))[0] == 200
        status, headers, page = await c.request("GET", "/login")
        assert status == 200 and "type='password'" in page
        assert headers["referrer-policy"] == [b"same-origin"]
        status, _, _ = await c.request("POST", "/logout", {"csrf": "x"})
        assert status == 403
    finally:
        await c.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_login_session_cookie_expiry_and_logout() -> None:
    """The right password starts an HttpOnly SameSite=Strict session until expiry or logout."""
    from twisted.internet import reactor

    clock = Clock()
    c = _Browserish(reactor, _offLoopback(clock, lifetime=600))
    try:
        status, headers, _ = await c.login("right horse")
        assert (status, headers["location"]) == (303, [b"/"])
        (cookie,) = headers["set-cookie"]
        attributes = {a.strip().lower() for a in cookie.split(b";")[1:]}
        assert {b"httponly", b"samesite=strict", b"path=/"} <= attributes
        assert b"secure" not in attributes  # plain HTTP here; Secure over TLS
        status, headers, page = await c.request("GET", "/")
        assert status == 200 and "id='logout'" in page
        assert headers["referrer-policy"] == [b"same-origin"]
        assert (await c.request("GET", "/login"))[0] == 303
        session_csrf = re.search(r"name='csrf' value='([^']+)'", page).group(1)
        assert len(session_csrf) >= 43
        status, _, _ = await c.request("POST", "/logout", {"csrf": "stale"})
        assert status == 403
        clock.advance(601)
        assert (await c.request("GET", "/"))[0] == 303  # expired on the server
        await c.login("right horse")
        _, _, page = await c.request("GET", "/")
        csrf = re.search(r"name='csrf' value='([^']+)'", page).group(1)
        old = c.cookie
        status, headers, _ = await c.request("POST", "/logout", {"csrf": csrf})
        assert (status, headers["location"]) == (303, [b"/login"])
        assert b"max-age=0" in headers["set-cookie"][0].lower()
        c.cookie = old
        assert (await c.request("GET", "/"))[0] == 303  # the old cookie is worth nothing
    finally:
        await c.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_wrong_passwords_make_the_address_wait_longer() -> None:
    """A wrong password is refused; the next try from that address waits, then may try again."""
    from twisted.internet import reactor

    clock = Clock()
    c = _Browserish(reactor, _offLoopback(clock))
    try:
        status, headers, text = await c.login("wrong")
        assert status == 403 and "Wrong password" in text and "set-cookie" not in headers
        status, headers, text = await c.login("right horse")
        assert status == 429 and "Too many failed logins" in text
        assert int(headers["retry-after"][0]) >= 1
        assert c.cookie is None
        clock.advance(1)
        assert (await c.login("wrong"))[0] == 403
        status, _, text = await c.login("right horse")
        assert status == 429
        wait = int(re.search(r"try again in (\d+) s", text).group(1))
        assert 1 <= wait <= 2
        clock.advance(2)
        assert (await c.login("right horse"))[0] == 303
        c.cookie = None
        status, _, text = await c.login("x" * 5000)  # refused without hashing 5 kB
        assert status == 403 and "Wrong password" in text
    finally:
        await c.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_scrypt_admin_password_is_checked_in_a_thread() -> None:
    """The real check verifies the scrypt hash off the reactor thread."""
    import threading

    from twisted.internet import reactor

    from oauthmail.web import login

    seen = []
    real = login.verifyPassword

    def spy(password, encoded):
        seen.append(threading.current_thread() is threading.main_thread())
        return real(password, encoded)

    login.verifyPassword = spy
    try:
        checker = ScryptAdminPassword(hashPassword("right horse", TINY), reactor)
        assert verifyObject(IAdminPassword, checker)
        assert await checker.check("right horse") is True
        assert await checker.check("wrong") is False
    finally:
        login.verifyPassword = real
    assert seen == [False, False]
    assert "scrypt" not in repr(checker)


@pytest_twisted.ensureDeferred
async def test_oversized_body_is_refused_unread() -> None:
    """A POST body over the bound is answered 413 and reaches no page."""
    from twisted.internet import reactor

    c = _Browserish(reactor, ConsoleResource(_config(), MemoryTokenStore(clock=Clock()), Clock()))
    try:
        status, _, text = await c.request("POST", "/", body=b"csrf=" + b"x" * 70_000)
        assert status == 413 and "too large" in text
        assert (await c.request("GET", "/health"))[0] == 503
    finally:
        await c.port.stopListening()


# -- several nodes on one store -------------------------------------------------------------


async def _clusterConsole(clock):
    """A console over a store whose folders two nodes share (node a's keeper is this node)."""
    from twisted.internet import defer

    from oauthmail.cluster.keeper import LeaseKeeper
    from oauthmail.testing.memory_leases import MemoryLeaseStore
    from oauthmail.web.console import LiveParts

    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    leases = MemoryLeaseStore(clock)
    folders = [("helpdesk", "INBOX"), ("alerts", "<b>INBOX</b>")]

    class Watching:
        def watch(self, lease):
            pass

        def unwatch(self, key):
            return defer.succeed(None)

    keeper = LeaseKeeper(leases, "node-a", folders, Watching(), clock, renew=1.0, expiry=3.0)
    keeper.startService()
    await leases.heartbeat("node-b", "ib", folders, 3.0, take=False)
    clock.advance(1.0)
    await leases.heartbeat("node-b", "ib", folders, 3.0)
    live = LiveParts(cluster=keeper, leases=leases)
    return ConsoleResource(config, store, clock, live=live), keeper, leases


@pytest_twisted.ensureDeferred
async def test_console_shows_the_nodes_and_who_holds_which_folder() -> None:
    """The page lists each node and each folder's holder and lease; /health names this node."""
    clock = Clock()
    clock.advance(1_800_000_000)
    resource, keeper, leases = await _clusterConsole(clock)
    status, body = await _render(resource, b"")
    page = body.decode()
    assert status == 200
    assert "<h2>Nodes</h2>" in page and "<h2>Folders</h2>" in page
    assert "node-a (this node)" in page and "node-b" in page
    assert "helpdesk/INBOX" in page and "alerts/&lt;b&gt;INBOX&lt;/b&gt;" in page
    assert "in 3 s" in page  # a lease's time left
    assert "Token refreshes" not in page  # no refresh claimed
    status, body = await _render(resource, b"health")
    health = json.loads(body)
    assert status == 200 and health["node"]["node"] == "node-a"
    assert health["node"]["leases"] == 1 and health["node"]["live_nodes"] == 2
    keeper.stopService()


@pytest_twisted.ensureDeferred
async def test_console_and_accounts_show_refreshes_claimed_and_not_stored() -> None:
    """A claim minutes old says the other nodes wait for it; one seconds old is a refresh."""
    import io

    from twisted.internet.defer import succeed

    from oauthmail.cli.cluster import printCluster
    from oauthmail.cluster.records import RefreshClaimView
    from oauthmail.cluster.view import collectCluster

    clock = Clock()
    clock.advance(1_800_000_000)
    resource, keeper, leases = await _clusterConsole(clock)
    claimed = [
        RefreshClaimView("alerts", "node-b", 3.0),
        RefreshClaimView("helpdesk", "node-b", 300),
        RefreshClaimView("outbox", "node-c", 900),
    ]
    leases.listRefreshClaims = lambda: succeed(claimed)
    _, body = await _render(resource, b"")
    page = body.decode()
    assert "<h2>Token refreshes</h2>" in page
    assert "refreshing" in page and "5 min ago" in page
    assert "the other nodes wait for it up to 10 min" in page
    assert "left behind: the next refresh on another node takes it over" in page
    out = io.StringIO()
    printCluster(await collectCluster(leases), out)
    text = out.getvalue()
    assert "TOKEN REFRESH OF" in text and re.search(r"helpdesk +node-b +5 min ago", text)
    assert "in 0 s" not in text  # a heartbeat this second was "just now", not in the future
    assert "not stored (its answer held in memory, or its node stopped)" in text
    keeper.stopService()


@pytest_twisted.ensureDeferred
async def test_health_of_a_node_that_lost_its_database_is_503() -> None:
    """A node whose heartbeat fails answers /health 503 'store_unreachable' at once."""
    from oauthmail.db.errors import StoreUnwritable

    clock = Clock()
    resource, keeper, leases = await _clusterConsole(clock)
    leases.failure = StoreUnwritable("PostgreSQL 127.0.0.1:5432/oauthmail: connection refused")
    clock.advance(1.0)
    status, body = await _render(resource, b"health")
    health = json.loads(body)
    assert status == 503 and health["status"] == "store_unreachable"
    assert "connection refused" in health["error"] and health["node"]["ok"] is False
    leases.failure = None
    clock.advance(1.0)
    status, body = await _render(resource, b"health")
    assert status == 200
    keeper.stopService()
