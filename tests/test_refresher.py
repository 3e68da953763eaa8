"""Unit tests of the token refresher: schedule, concurrency cap, jitter, resilience."""

from __future__ import annotations

import json
import random
from urllib.parse import parse_qsl

import pytest
from twisted.internet import defer, task
from twisted.logger import LogLevel, capturedLogs, formatEvent
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.refresher import PASS_SHARE, TokenRefresher
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


def test_stopAbandonsAHangingRefreshAfterItsWait():
    """A token endpoint that never answers holds a shutdown for SHUTDOWN_WAIT, not forever."""
    from oauthmail.tokens.refresher import SHUTDOWN_WAIT

    refresher, transport, store, clock = setup(1, 0, jitter=0)
    refresher.startService()
    d = refresher.stopService()
    assert d is not None and not d.called
    clock.advance(SHUTDOWN_WAIT - 0.1)
    assert not d.called
    clock.advance(0.2)
    assert d.called
    transport.answerAll()  # an answer that still comes is stored, not lost, and no error
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


HANGING = ProfileConfig(
    name="hanging",
    kind="generic",
    authorization_endpoint=None,
    token_endpoint="https://hang.example.net/token",
    device_endpoint=None,
    revocation_endpoint=None,
    introspection_endpoint=None,
    client_id="client-2",
    client_secret=Secret("s3cret-2"),
    scopes=("mail",),
)


@implementer(IHTTPTransport)
class RoutedTransport:
    """Never answers the hanging endpoint; answers every other request at once."""

    def __init__(self) -> None:
        self.hanging: list[str] = []
        self.answered: list[str] = []

    def request(self, method, url, headers, body):
        form = dict(parse_qsl(body.decode()))
        if "hang.example.net" in url:
            self.hanging.append(form["refresh_token"])
            return defer.Deferred()
        self.answered.append(form["refresh_token"])
        n = form["refresh_token"].split("-")[-1]
        answer = {"access_token": f"a-{n}x", "refresh_token": f"r-{n}x", "expires_in": 3600}
        return defer.succeed(HTTPResponse(200, {}, json.dumps(answer).encode()))


def mixedSetup(hanging: int, healthy: int, **kw):
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    accts = [AccountConfig(f"h{i}", f"h{i}@example.net", HANGING) for i in range(hanging)]
    accts += [AccountConfig(f"ok{i}", f"ok{i}@example.com", PROFILE) for i in range(healthy)]
    for a in accts:
        store.ensureAccount(a.name, "generic")
        store.putTokens(a.name, TokenSet(Secret(f"a-{a.name}"), 0, Secret(f"r-{a.name}")), 0)
        store.setAccountState(a.name, "ok")
    transport = RoutedTransport()
    source = TokenSource(store, {a.name: a for a in accts}, transport, clock, margin=900)
    kw.setdefault("random", random.Random(3))
    refresher = TokenRefresher(source, store, accts, clock, interval=60, margin=900, **kw)
    return refresher, transport, store, clock


def test_hangingEndpointHoldsOnlyItsOwnSlots():
    """A token endpoint that never answers holds its own request slots, not the others'."""
    refresher, transport, store, clock = mixedSetup(30, 3, concurrency=2, jitter=0)
    refresher.startService()
    assert len(transport.hanging) == 2  # its own cap
    assert sorted(transport.answered) == ["r-ok0", "r-ok1", "r-ok2"]
    assert [store.getTokens(f"ok{i}").result.version for i in range(3)] == [2, 2, 2]
    refresher.stopService()


def test_passDoesNotWaitForStragglers():
    """The next pass starts on time beside a hanging one, and leaves its accounts alone."""
    refresher, transport, store, clock = mixedSetup(3, 1, concurrency=1, jitter=0)
    with capturedLogs() as events:
        refresher.startService()
        assert transport.hanging == ["r-h0"] and transport.answered == ["r-ok0"]
        store.putTokens("ok0", TokenSet(Secret("a"), clock.seconds() + 60, Secret("r-ok0y")), 2)
        clock.advance(60 * PASS_SHARE)  # the first pass gives up waiting ...
        assert refresher.passes == 1
        clock.advance(60 * (1 - PASS_SHARE))  # ... and the second starts on time
        assert refresher.passes == 2
        assert transport.answered == ["r-ok0", "r-ok0y"]  # refreshed on time
        assert transport.hanging == ["r-h0"]  # no second request for a claimed account
    summaries = [formatEvent(e) for e in events if "refresher pass" in e["log_format"]]
    assert summaries[0].startswith("token refresher pass: 1 of 4 due token(s) refreshed")
    assert "3 still refreshing" in summaries[0]
    assert "1 of 4 due token(s) refreshed, 0 failed, 0 skipped, 3 still refreshing" in summaries[1]
    d = refresher.stopService()
    assert d is not None and not d.called  # the hanging request is still in flight


@implementer(IHTTPTransport)
class FailingFor:
    """Answers 503 for the refresh tokens named, tokens for the others."""

    def __init__(self, *failing: str, status: int = 503, error: str = "server_error") -> None:
        self.failing = set(failing)
        self.status, self.error = status, error

    def request(self, method, url, headers, body):
        token = dict(parse_qsl(body.decode()))["refresh_token"]
        if token in self.failing:
            body = json.dumps({"error": self.error}).encode()
            return defer.succeed(HTTPResponse(self.status, {}, body))
        answer = {"access_token": "a-new", "refresh_token": token + "x", "expires_in": 3600}
        return defer.succeed(HTTPResponse(200, {}, json.dumps(answer).encode()))


@pytest.mark.parametrize(
    ("transport", "valid_for"),
    [
        (FailingFor("r-acct1"), 600.0),  # still valid: callers keep the old token
        (FailingFor("r-acct1"), -5.0),  # expired
        (FailingFor("r-acct1", status=400, error="invalid_grant"), 600.0),
        (FailingFor("r-acct1", status=401, error="invalid_client"), 600.0),
    ],
)
def test_passCountsFailuresHonestly(transport, valid_for):
    """The pass summary counts a failed refresh as failed, whatever the old token's state."""
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    accts = accounts(2)
    for a in accts:
        store.ensureAccount(a.name, "generic")
        store.putTokens(a.name, TokenSet(Secret("a"), valid_for, Secret(f"r-{a.name}")), 0)
        store.setAccountState(a.name, "ok")
    source = TokenSource(store, {a.name: a for a in accts}, transport, clock, max_attempts=1)
    refresher = TokenRefresher(source, store, accts, clock, interval=60, margin=900, jitter=0)
    with capturedLogs() as events:
        refresher.startService()
        refresher.stopService()
    [summary] = [e for e in events if "refresher pass" in e["log_format"]]
    assert formatEvent(summary).startswith(
        "token refresher pass: 1 of 2 due token(s) refreshed, 1 failed, 0 skipped"
    )
    assert summary["log_level"] == LogLevel.warn
    assert (refresher.refreshed, refresher.failures) == (1, 1)


def test_passCountsSkippedAccounts():
    """An account that lost its tokens after the listing is skipped, not failed nor refreshed."""
    refresher, transport, store, clock = setup(2, 0, jitter=5)
    with capturedLogs() as events:
        refresher.startService()
        store.deleteTokens("acct1")
        clock.advance(5)
        transport.answerAll()
    [summary] = [e for e in events if "refresher pass" in e["log_format"]]
    assert "1 of 2 due token(s) refreshed, 0 failed, 1 skipped" in formatEvent(summary)
    assert summary["log_level"] == LogLevel.info
    refresher.stopService()


@implementer(IHTTPTransport)
class CountingFailures:
    """Refuses ``acct0`` (``invalid_client``), asks ``acct1`` to wait 999999 s; counts requests."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    def request(self, method, url, headers, body):
        token = dict(parse_qsl(body.decode()))["refresh_token"]
        self.requests[token] = self.requests.get(token, 0) + 1
        if token == "r-acct0":
            answer = HTTPResponse(401, {}, json.dumps({"error": "invalid_client"}).encode())
        else:
            body = json.dumps({"error": "temporarily_unavailable"}).encode()
            answer = HTTPResponse(503, {"retry-after": "999999"}, body)
        return defer.succeed(answer)


@pytest.mark.parametrize("valid_for", [3000.0, 200.0])
def test_failingAccountsCostOneLineNotOnePerPass(valid_for):
    """A refused account and one told to wait for days: one log line each over 20 passes."""
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    accts = accounts(2)
    for a in accts:
        store.ensureAccount(a.name, "generic")
        store.putTokens(
            a.name, TokenSet(Secret(f"access-{a.name}"), valid_for, Secret(f"r-{a.name}")), 0
        )
        store.setAccountState(a.name, "ok")
    transport = CountingFailures()
    source = TokenSource(store, {a.name: a for a in accts}, transport, clock)
    refresher = TokenRefresher(source, store, accts, clock, interval=60, margin=3000, jitter=0)
    with capturedLogs() as events:
        refresher.startService()
        clock.pump([60] * 20)  # the token valid for 200 s runs out meanwhile
        refresher.stopService()
    # A refused account is left out of growing numbers of passes (0, 1-2, 2-4,
    # 4-8, ...), not asked on each of the 21; the provider's wait is kept.
    assert 4 <= transport.requests["r-acct0"] <= 7, transport.requests
    assert transport.requests["r-acct1"] == 1
    assert refresher.failures < 2 * 7
    lines = [formatEvent(e) for e in events if "refresher pass" not in e["log_format"]]
    assert len([line for line in lines if "acct0" in line]) == 1, lines
    # The provider's answer is one line; the old token running out later is news: one more.
    expected = 1 if valid_for > 20 * 60 else 2
    assert len([line for line in lines if "acct1" in line]) == expected, lines
    assert store.getAccount("acct1").result.state == ("ok" if expected == 1 else "error")


def test_aFailingAccountWaitsGrowingPassesAndASuccessEndsIt():
    """Failures in a row leave the account out of 0, 1-2, 2-4 ... passes; a success resets.

    Every pass asked the provider again for every failing account: a
    provider down for an hour got 60 refreshes per account.
    """

    class Counting(FailingFor):
        asked = 0

        def request(self, *args):
            self.asked += 1
            return super().request(*args)

    transport = Counting("r-acct0")  # 503 for acct0's refresh token
    clock = task.Clock()
    store = MemoryTokenStore(clock)
    [acct] = accounts(1)
    store.ensureAccount("acct0", "generic")
    store.putTokens("acct0", TokenSet(Secret("a"), 600.0, Secret("r-acct0")), 0)
    store.setAccountState("acct0", "ok")
    source = TokenSource(store, {"acct0": acct}, transport, clock, max_attempts=1)
    refresher = TokenRefresher(
        source, store, [acct], clock, interval=60, margin=900, jitter=0, random=random.Random(5)
    )
    with capturedLogs() as events:
        refresher.startService()
        clock.pump([60] * 9)  # ten passes
    assert 3 <= transport.asked <= 5, transport.asked  # 1, 2, then after 1-2 and 2-4 passes
    said = " ".join(formatEvent(e) for e in events if "refresher pass" in e["log_format"])
    assert "1 waiting after failures" in said
    transport.failing = set()  # the provider is back
    clock.pump([60] * 16)
    assert refresher.refreshed == 1
    # Due again and failing again: after a success the first failure waits no pass.
    transport.failing = {"r-acct0x"}
    version = store.getAccountWithTokens("acct0").result[1].version
    store.putTokens("acct0", TokenSet(Secret("b"), 600.0, Secret("r-acct0x")), version)
    asked = transport.asked
    clock.pump([60, 60])
    assert transport.asked == asked + 2
    refresher.stopService()


class HeldListingStore(MemoryTokenStore):
    """Takes the expiry listing when asked and hands it over when the test says (a slow read)."""

    def __init__(self, clock) -> None:
        super().__init__(clock)
        self.holding = False
        self.held: list[tuple[list, defer.Deferred]] = []

    def listExpiries(self):
        d = super().listExpiries()
        if not self.holding:
            return d
        waiter: defer.Deferred = defer.Deferred()
        d.addCallback(lambda rows: self.held.append((rows, waiter)))
        return waiter

    def release(self) -> None:
        held, self.held = self.held, []
        for rows, waiter in held:
            waiter.callback(rows)


def test_aRefreshThatEndsWhileTheNextPassListsIsNotCountedTwice():
    """A pass whose listing predates a refresh that just ended finds the token fresh: not a refresh.

    Under load a pass can outlast the interval: the next pass's listing is
    taken while an account is still refreshing, and by the time the listing
    arrives the refresh has ended and let go of the account. The second pass
    re-reads the store and asks nothing; it must not count that as a refresh
    either (the pass summary, the metrics and bench.refresh read the count).
    """
    clock = task.Clock()
    store = HeldListingStore(clock)
    transport = HeldTransport()
    (account,) = accounts(1)
    store.ensureAccount(account.name, "generic")
    store.putTokens(account.name, TokenSet(Secret("a-0"), 0, Secret("r-acct0")), 0)
    store.setAccountState(account.name, "ok")
    source = TokenSource(store, {account.name: account}, transport, clock, margin=900)
    seen: list[tuple[str, bool]] = []
    refresher = TokenRefresher(
        source,
        store,
        [account],
        clock,
        interval=60,
        margin=900,
        jitter=0,
        observer=lambda name, ok, seconds: seen.append((name, ok)),
    )
    with capturedLogs() as events:
        refresher.startService()
        assert transport.count == 1  # the first pass asks, and the answer is held
        store.holding = True
        clock.advance(60 * PASS_SHARE)  # the first pass stops waiting
        clock.advance(60 * (1 - PASS_SHARE))  # the second lists while acct0 still refreshes
        assert refresher.passes == 2 and store.held
        transport.answerAll()  # the first refresh ends before that listing arrives
        store.release()
        clock.advance(60 * PASS_SHARE)
    assert transport.count == 1
    assert refresher.refreshed == 1 and refresher.failures == 0
    assert seen == [("acct0", True)]
    summaries = [formatEvent(e) for e in events if "refresher pass" in formatEvent(e)]
    second = "0 of 1 due token(s) refreshed, 0 failed, 0 skipped, 1 found fresh already, 0 still"
    assert any(second in s for s in summaries), summaries
    refresher.stopService()


class _Refresher:
    """What a pass's request slots look at on their refresher."""

    def __init__(self) -> None:
        self.running = True
        self._active = 0
        self.peak_concurrency = 0


def test_requestSlotsHandOutFreeSlotsAtOnceAndNoneOnceStopping():
    """A free slot is taken at once; a stopping service gives none, free or awaited."""
    from oauthmail.tokens.refresher import _RequestSlots

    refresher = _Refresher()
    slots = _RequestSlots(refresher, 2)
    first, second = slots.acquire(), slots.acquire()
    assert first.called and second.called
    assert (refresher._active, refresher.peak_concurrency) == (2, 2)
    waiting = slots.acquire()  # no slot free: it waits for one
    assert not waiting.called
    refresher.running = False
    slots.release()  # the waiter gets the slot back and gives it up: the service stops
    assert refresher._active == 1
    failures = []
    waiting.addErrback(failures.append)
    assert failures and failures[0].check(defer.CancelledError)
    stopped = slots.acquire()  # a free slot, but nothing more is sent
    stopped.addErrback(failures.append)
    assert len(failures) == 2 and failures[1].check(defer.CancelledError)
    slots.release()
    assert refresher._active == 0
    refresher.running = True
    again = [slots.acquire(), slots.acquire()]  # both slots were given back
    assert all(d.called for d in again)
