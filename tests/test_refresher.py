"""Unit tests of the token refresher: schedule, concurrency cap, jitter, resilience."""

from __future__ import annotations

import json
import random
from urllib.parse import parse_qsl

from twisted.internet import defer, task
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.refresher import TokenRefresher
from oauthmail.tokens.source import TokenSource

PROFILE = ProfileConfig(
    name="generic",
    kind="generic",
    authorization_endpoint="https://login.example.com/authorize",
    token_endpoint="https://login.example.com/token",
    device_endpoint=None,
    revocation_endpoint=None,
    introspection_endpoint=None,
    client_id="client-1",
    client_secret=Secret("s3cret"),
    scopes=("mail",),
)


def accounts(n: int) -> list[AccountConfig]:
    return [AccountConfig(f"acct{i}", f"acct{i}@example.com", PROFILE) for i in range(n)]


@implementer(IHTTPTransport)
class HeldTransport:
    """Keeps every request open until the test answers it."""

    def __init__(self) -> None:
        self.held: list[tuple[dict[str, str], defer.Deferred[HTTPResponse]]] = []
        self.count = 0

    def request(self, method, url, headers, body):
        self.count += 1
        d: defer.Deferred[HTTPResponse] = defer.Deferred()
        self.held.append((dict(parse_qsl(body.decode())), d))
        return d

    def answerAll(self) -> None:
        held, self.held = self.held, []
        for form, d in held:
            n = form["refresh_token"].split("-")[-1]
            body = {"access_token": f"a-{n}x", "refresh_token": f"r-{n}x", "expires_in": 3600}
            d.callback(HTTPResponse(200, {}, json.dumps(body).encode()))


def setup(n: int, expires_in: float, **kw):
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    transport = HeldTransport()
    accts = accounts(n)
    for a in accts:
        store.ensureAccount(a.name, "generic")
        tokens = TokenSet(Secret(f"a-{a.name}"), expires_in, Secret(f"r-{a.name}"))
        store.putTokens(a.name, tokens, 0)
        store.setAccountState(a.name, "ok")
    source = TokenSource(store, {a.name: a for a in accts}, transport, clock, margin=900)
    kw.setdefault("random", random.Random(3))
    refresher = TokenRefresher(source, store, accts, clock, interval=60, margin=900, **kw)
    return refresher, transport, store, clock


def test_refreshesOnlyDueTokens():
    """Tokens expiring within margin + interval are refreshed, later ones are not."""
    refresher, transport, store, clock = setup(2, 0, jitter=0)
    store.putTokens("acct1", TokenSet(Secret("a"), 900 + 60 + 1, Secret("r-acct1")), 1)
    refresher.startService()
    assert [form["refresh_token"] for form, _ in transport.held] == ["r-acct0"]
    transport.answerAll()
    clock.advance(60)  # acct1 now within margin + interval
    assert [form["refresh_token"] for form, _ in transport.held] == ["r-acct1"]
    refresher.stopService()


def test_concurrencyCap():
    """At most ``concurrency`` refreshes run at once; the rest wait their turn."""
    refresher, transport, store, clock = setup(25, 0, concurrency=10, jitter=0)
    refresher.startService()
    assert len(transport.held) == 10
    transport.answerAll()
    assert len(transport.held) == 10
    transport.answerAll()
    assert len(transport.held) == 5
    transport.answerAll()
    assert refresher.peak_concurrency == 10
    assert transport.count == 25
    refresher.stopService()


def test_jitterSpreads():
    """Refreshes of one pass start spread over the jitter window, not all at once."""
    refresher, transport, store, clock = setup(20, 0, jitter=30)
    refresher.startService()
    starts = []
    for second in range(31):
        before = transport.count
        if second:
            clock.advance(1)
        starts += [second] * (transport.count - before)
        transport.answerAll()
    assert len(starts) == 20
    assert len(set(starts)) >= 10
    refresher.stopService()


def test_loopSurvivesExceptions():
    """A store that raises for one account stops neither the pass nor the loop."""
    refresher, transport, store, clock = setup(3, 0, jitter=0)
    original = store.getAccountWithTokens

    def flaky(account_id):
        if account_id == "acct1":
            raise RuntimeError("boom")
        return original(account_id)

    store.getAccountWithTokens = flaky
    refresher.startService()
    assert sorted(f["refresh_token"] for f, _ in transport.held) == ["r-acct0", "r-acct2"]
    transport.answerAll()
    assert refresher.failures == 1
    store.getAccountWithTokens = original
    clock.advance(60)
    assert [f["refresh_token"] for f, _ in transport.held] == ["r-acct1"]
    assert refresher.passes == 2
    refresher.stopService()


def test_loopRestartsAfterPassFailure():
    """Even if a whole pass blows up, the next interval runs again."""
    refresher, transport, store, clock = setup(1, 10_000, jitter=0)
    calls = []

    async def explode():
        calls.append(clock.seconds())
        raise RuntimeError("pass failed")

    refresher.runOnce = explode
    refresher.startService()
    clock.advance(60)
    clock.advance(60)
    assert calls == [0, 60, 120]
    refresher.stopService()


def test_skipsNeedsReauthAndUnauthorised():
    """Accounts waiting for a person, or never authorised, are left alone."""
    refresher, transport, store, clock = setup(2, 0, jitter=0)
    store.setAccountState("acct0", "needs_reauth", "gone")
    store.deleteTokens("acct1")
    refresher.startService()
    assert transport.count == 0
    refresher.stopService()


def test_clientCredentialsObtainedWithoutTokens():
    """App-only accounts get their first token from the refresher."""
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    app = AccountConfig("app", "app@example.com", PROFILE, grant="client_credentials")
    transport = HeldTransport()
    source = TokenSource(store, {"app": app}, transport, clock)
    refresher = TokenRefresher(source, store, [app], clock, jitter=0)
    refresher.startService()
    [(form, d)] = transport.held
    assert form["grant_type"] == "client_credentials"
    d.callback(HTTPResponse(200, {}, b'{"access_token": "x", "expires_in": 3600}'))
    assert source.accessToken("app").result == Secret("x")
    refresher.stopService()


def test_stopWaitsForRefreshInFlight():
    """stopService waits until refreshes in flight have stored their tokens."""
    refresher, transport, store, clock = setup(1, 0, jitter=0)
    refresher.startService()
    d = refresher.stopService()
    assert d is not None and not d.called
    transport.answerAll()
    assert d.called
    assert store.getTokens("acct0").result.refresh_token == Secret("r-acct0x")


def test_tokenWithoutExpiryIsRefreshedWhenOld():
    """A token without expiry still has its refresh token used once it is max_age old."""
    refresher, transport, store, clock = setup(1, 0, jitter=0, max_age=7 * 86400.0)
    store.putTokens("acct0", TokenSet(Secret("a"), None, Secret("r-acct0")), 1)
    refresher.startService()
    assert transport.held == []  # young: nothing to do
    clock.advance(7 * 86400.0)
    assert [form["refresh_token"] for form, _ in transport.held] == ["r-acct0"]
    transport.answerAll()
    refresher.stopService()


def test_passPlannedFromOneListing():
    """A pass reads the schedule with one listExpiries call, not a read per account."""
    refresher, transport, store, clock = setup(5, 0, jitter=0)
    calls = []
    for name in ("listExpiries", "getTokens", "getAccount", "ensureAccount"):
        original = getattr(store, name)

        def counted(*args, _name=name, _original=original):
            calls.append(_name)
            return _original(*args)

        setattr(store, name, counted)
    refresher.startService()
    assert calls == ["listExpiries"]
    assert transport.count == 5
    transport.answerAll()
    refresher.stopService()


def test_listingFailureSkipsOnePass():
    """If the listing fails, the pass does nothing and the next pass tries again."""
    refresher, transport, store, clock = setup(2, 0, jitter=0)
    original = store.listExpiries
    store.listExpiries = lambda: defer.fail(RuntimeError("disk gone"))
    refresher.startService()
    assert transport.count == 0
    store.listExpiries = original
    clock.advance(60)
    assert transport.count == 2
    transport.answerAll()
    refresher.stopService()


def test_stopDropsRefreshesWaitingForARequestSlot():
    """On stop, refreshes waiting for a request slot are dropped, not counted as failures."""
    refresher, transport, store, clock = setup(3, 0, concurrency=1, jitter=0)
    refresher.startService()
    assert transport.count == 1
    d = refresher.stopService()
    transport.answerAll()
    assert d is not None and d.called
    assert transport.count == 1
    assert (refresher.refreshed, refresher.failures) == (1, 0)
    assert [store.getTokens(f"acct{i}").result.version for i in range(3)] == [2, 1, 1]
