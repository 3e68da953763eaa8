"""Unit tests of the token source: single flight, margin, CAS before hand-out, errors."""

from __future__ import annotations

import json
import random
import sys
from urllib.parse import parse_qsl

import pytest
import pytest_twisted
from twisted.internet import defer, task
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.db.errors import StoreError
from oauthmail.interfaces import IHTTPTransport, ITokenSource
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.errors import (
    AccountNotAuthorised,
    TokenEndpointError,
    TransientTokenError,
)
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.notify import CommandNotifier, RecordingNotifier
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.refreshjob import AlreadyFresh
from oauthmail.tokens.source import TokenSource

TOKEN_URL = "https://login.example.com/token"


def profile(kind: str = "generic", client_id: str = "client-1") -> ProfileConfig:
    return ProfileConfig(
        name=f"p-{kind}",
        kind=kind,
        authorization_endpoint="https://login.example.com/authorize",
        token_endpoint=TOKEN_URL,
        device_endpoint="https://login.example.com/device",
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=client_id,
        client_secret=Secret("client-secret-XYZ"),
        scopes=("mail", "offline_access"),
    )


def account(name: str = "alice", grant: str = "authorization_code", **kw) -> AccountConfig:
    return AccountConfig(
        name=name, address=f"{name}@example.com", profile=profile(**kw), grant=grant
    )


def tokenAnswer(n: int, *, refresh: bool = True, expires_in: int = 3600) -> HTTPResponse:
    body = {"access_token": f"access-{n}", "token_type": "Bearer", "expires_in": expires_in}
    if refresh:
        body["refresh_token"] = f"refresh-{n}"
    return HTTPResponse(200, {"content-type": "application/json"}, json.dumps(body).encode())


def errorAnswer(status: int, error: str, description: str = "", **headers) -> HTTPResponse:
    body = json.dumps({"error": error, "error_description": description}).encode()
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


@implementer(IHTTPTransport)
class ScriptedTransport:
    """Answers token requests from a script; ``hold=True`` leaves them for the test to fire."""

    def __init__(self, *answers, hold: bool = False, before=None) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, str]] = []
        self.held: list[defer.Deferred[HTTPResponse]] = []
        self.hold = hold
        self.before = before  # called with the form just before answering

    def request(self, method, url, headers, body):
        form = dict(parse_qsl(body.decode()))
        self.requests.append(form)
        if self.hold:
            d: defer.Deferred[HTTPResponse] = defer.Deferred()
            self.held.append(d)
            return d
        answer = self.answers.pop(0)
        if self.before is not None:
            self.before(form)
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)


class FailingPutStore(MemoryTokenStore):
    """A store whose ``putTokens`` fails while ``broken`` is set."""

    broken = False

    def putTokens(self, account_id, tokens, expected_version):
        if self.broken:
            return defer.fail(StoreError("disk full"))
        return super().putTokens(account_id, tokens, expected_version)


def makeSource(transport, accounts=None, store=None, clock=None, **kw):
    clock = clock or task.Clock()
    store = store or MemoryTokenStore(clock)
    accounts = accounts or [account()]
    kw.setdefault("random", random.Random(7))
    source = TokenSource(store, {a.name: a for a in accounts}, transport, clock, **kw)
    return source, store, clock


def seed(store, clock, name="alice", n=0, expires_in=3600.0, refresh=True):
    """Give ``name`` stored tokens ``access-n``/``refresh-n`` (synchronous: memory store)."""
    store.ensureAccount(name, "generic")
    tokens = TokenSet(
        Secret(f"access-{n}"),
        clock.seconds() + expires_in,
        Secret(f"refresh-{n}") if refresh else None,
    )
    store.putTokens(name, tokens, 0)
    store.setAccountState(name, "ok")


def result(d):
    """The result of an already-fired Deferred (the fakes are synchronous)."""
    out = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure(d, *types):
    out = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), f"expected a failure, got {out}"
    assert out[0].check(*types), out[0]
    return out[0].value


def test_verifyObject():
    """TokenSource provides ITokenSource."""
    source, _, _ = makeSource(ScriptedTransport())
    assert verifyObject(ITokenSource, source)


def test_validTokenNoRequest():
    """A token valid beyond the margin is handed out without a request."""
    transport = ScriptedTransport()
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=3600)
    assert result(source.accessToken("alice")) == Secret("access-0")
    assert transport.requests == []


def test_marginTriggersRefresh():
    """A token expiring within the margin is refreshed first, with client credentials."""
    transport = ScriptedTransport(tokenAnswer(1))
    source, store, clock = makeSource(transport, margin=900)
    seed(store, clock, expires_in=3600)
    clock.advance(3600 - 900)
    assert result(source.accessToken("alice")) == Secret("access-1")
    [form] = transport.requests
    assert form["grant_type"] == "refresh_token"
    assert form["refresh_token"] == "refresh-0"
    assert form["client_id"] == "client-1"
    assert form["client_secret"] == "client-secret-XYZ"
    assert "scope" not in form  # only Microsoft needs it
    stored = result(store.getTokens("alice"))
    assert stored.refresh_token == Secret("refresh-1")
    assert stored.expires_at == clock.seconds() + 3600
    assert result(store.getAccount("alice")).last_refresh_at == clock.seconds()


def test_microsoftRefreshSendsScope():
    """Microsoft refresh requests carry the scope."""
    transport = ScriptedTransport(tokenAnswer(1))
    source, store, clock = makeSource(transport, accounts=[account(kind="microsoft")])
    seed(store, clock, expires_in=0)
    result(source.accessToken("alice"))
    assert transport.requests[0]["scope"] == "mail offline_access"


def test_singleFlight():
    """Ten concurrent callers share exactly one refresh request."""
    transport = ScriptedTransport(hold=True)
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=10)
    calls = [source.accessToken("alice") for _ in range(10)]
    calls.append(source.forceRefresh("alice"))
    assert len(transport.requests) == 1
    assert source.isRefreshing("alice")
    transport.held[0].callback(tokenAnswer(1))
    assert [result(d) for d in calls] == [Secret("access-1")] * 11
    assert not source.isRefreshing("alice")


def test_singleFlightFailureReachesEveryCaller():
    """When the shared refresh fails, every waiting caller sees the failure."""
    transport = ScriptedTransport(hold=True)
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=-1)
    calls = [source.accessToken("alice") for _ in range(3)]
    transport.held[0].callback(errorAnswer(400, "invalid_client", "bad secret"))
    for d in calls:
        failure(d, TokenEndpointError)
    assert result(store.getAccount("alice")).state == "error"


def test_writtenBeforeHandedOut():
    """The new tokens are in the store before the caller gets the access token."""
    seen = []
    source_holder = {}

    def check(answer_deferred_result):
        stored = result(source_holder["store"].getTokens("alice"))
        seen.append(stored.access_token)
        return answer_deferred_result

    transport = ScriptedTransport(hold=True)
    source, store, clock = makeSource(transport)
    source_holder["store"] = store
    seed(store, clock, expires_in=0)
    d = source.accessToken("alice")
    d.addCallback(check)
    transport.held[0].callback(tokenAnswer(5))
    assert result(d) == Secret("access-5")
    assert seen == [Secret("access-5")]


def test_notRotatedKeepsRefreshToken():
    """When the provider does not rotate, the old refresh token stays stored."""
    transport = ScriptedTransport(tokenAnswer(1, refresh=False))
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=0)
    assert result(source.accessToken("alice")) == Secret("access-1")
    assert result(store.getTokens("alice")).refresh_token == Secret("refresh-0")


def refreshIntoABrokenStore(storeClass, expires_in=0, forced=False):
    """A refresh whose rotated tokens ``storeClass`` refuses; the store is still broken.

    ``forced``: a server refused a token that is ``expires_in`` s from expiry.
    """
    clock = task.Clock()
    transport = ScriptedTransport(tokenAnswer(1))
    source, store, clock = makeSource(transport, store=storeClass(clock), clock=clock)
    seed(store, clock, expires_in=expires_in)
    store.broken = True
    failure((source.forceRefresh if forced else source.accessToken)("alice"), StoreError)
    return source, store, transport


def test_storeFailureKeepsOldTokensAndShowsError():
    """A failing store: error state, old tokens stay, new ones are saved on the next try."""
    source, store, transport = refreshIntoABrokenStore(FailingPutStore)
    stored = result(store.getTokens("alice"))
    assert stored.access_token == Secret("access-0")
    assert stored.refresh_token == Secret("refresh-0")
    state = result(store.getAccount("alice"))
    assert state.state == "error"
    assert "could not save" in state.last_error and "disk full" in state.last_error
    # The store heals: the rotated tokens from the provider are written, no new request,
    # and the account is ok again (it does not wait for the next refresh to say so).
    store.broken = False
    assert result(source.accessToken("alice")) == Secret("access-1")
    assert len(transport.requests) == 1
    assert result(store.getTokens("alice")).refresh_token == Secret("refresh-1")
    state = result(store.getAccount("alice"))
    assert (state.state, state.last_error) == ("ok", None)
    assert source.health.view("alice").state == "ok"


def test_heldTokensAreNotRefreshedAgainWhileTheStoreRefusesThemAndTheOldOneIsValid():
    """A pass meets held tokens the store still refuses: no new request, the failure counted."""
    source, store, transport = refreshIntoABrokenStore(FailingPutStore, 3600, forced=True)
    assert source.holdsUnsaved("alice") and len(transport.requests) == 1
    failure(source.refreshDue("alice", 960.0), TransientTokenError)
    assert len(transport.requests) == 1  # asking again would not help the store
    assert result(source.accessToken("alice")) == Secret("access-0")
    store.broken = False
    # Storing the held tokens completes that refresh: a token, not AlreadyFresh.
    assert isinstance(result(source.refreshDue("alice", 960.0)), Secret)
    assert not source.holdsUnsaved("alice") and len(transport.requests) == 1


class DownStore(FailingPutStore):
    """A store that, while ``broken``, takes neither tokens nor account states (it is down)."""

    def setAccountState(self, account_id, state, last_error=None):
        if self.broken:
            return defer.fail(StoreError("cannot connect"))
        return super().setAccountState(account_id, state, last_error)


def test_aStoreBackAfterAnOutageClearsTheErrorItNeverRecorded():
    """The save failed and so did recording the error: once the store is back and the tokens
    are saved, the account is ok again, in the health view (the console, /health) and stored."""
    source, store, transport = refreshIntoABrokenStore(DownStore)
    assert source.health.view("alice").state == "error"
    assert result(store.getAccount("alice")).state == "ok"  # the error never reached it
    store.broken = False
    assert result(source.accessToken("alice")) == Secret("access-1")
    assert source.health.view("alice").state == "ok"
    assert result(store.getAccount("alice")).state == "ok"
    assert len(transport.requests) == 1


def test_storeStillFailingRefreshesWithPendingToken():
    """If the store keeps failing, the next refresh uses the rotated (unsaved) token."""
    clock = task.Clock()
    store = FailingPutStore(clock)
    transport = ScriptedTransport(tokenAnswer(1), tokenAnswer(2))
    source, store, clock = makeSource(transport, store=store, clock=clock)
    seed(store, clock, expires_in=0)
    store.broken = True
    failure(source.accessToken("alice"), StoreError)
    failure(source.accessToken("alice"), StoreError)
    assert [r["refresh_token"] for r in transport.requests] == ["refresh-0", "refresh-1"]
    store.broken = False
    assert result(source.accessToken("alice")) == Secret("access-2")


def test_invalidGrantNeedsReauthOnce():
    """invalid_grant marks the account needs_reauth, notifies once, stops asking."""
    notifier = RecordingNotifier()
    transport = ScriptedTransport(errorAnswer(400, "invalid_grant", "AADSTS700082: expired"))
    source, store, clock = makeSource(transport, notifier=notifier)
    seed(store, clock, expires_in=0)
    error = failure(source.accessToken("alice"), AccountNotAuthorised)
    assert error.needs_reauth and "AADSTS700082" in str(error)
    state = result(store.getAccount("alice"))
    assert state.state == "needs_reauth"
    assert "AADSTS700082" in state.last_error
    failure(source.accessToken("alice"), AccountNotAuthorised)
    failure(source.forceRefresh("alice"), AccountNotAuthorised)
    assert len(transport.requests) == 1
    assert notifier.calls == [("alice", "AADSTS700082: expired")]
    # Tokens are kept (a person may look at them; only revocation deletes).
    assert result(store.getTokens("alice")) is not None


def test_reauthorisationClearsNeedsReauth():
    """storeAuthorized writes new tokens and puts the account back to ok."""
    transport = ScriptedTransport(errorAnswer(400, "invalid_grant", "gone"))
    source, store, clock = makeSource(transport, notifier=RecordingNotifier())
    seed(store, clock, expires_in=0)
    failure(source.accessToken("alice"), AccountNotAuthorised)
    tokens = TokenSet(Secret("access-9"), clock.seconds() + 3600, Secret("refresh-9"))
    result(defer.ensureDeferred(source.storeAuthorized("alice", tokens)))
    assert result(store.getAccount("alice")).state == "ok"
    assert result(source.accessToken("alice")) == Secret("access-9")


def test_transientRetriesWithBackoffAndRetryAfter():
    """Transient errors are retried after backoff that honours Retry-After."""
    transport = ScriptedTransport(
        errorAnswer(503, "temporarily_unavailable", retry_after="20"),
        errorAnswer(429, "slow", retry_after="1"),
        tokenAnswer(1),
    )
    source, store, clock = makeSource(transport, max_attempts=3, backoff_base=2.0, backoff_max=30.0)
    seed(store, clock, expires_in=-5)
    d = source.accessToken("alice")
    assert len(transport.requests) == 1
    clock.advance(19.9)
    assert len(transport.requests) == 1  # Retry-After: 20 is honoured
    clock.advance(0.1)
    assert len(transport.requests) == 2
    assert not d.called
    clock.advance(4.0)  # second backoff: 2..4 s
    assert len(transport.requests) == 3
    assert result(d) == Secret("access-1")
    assert result(store.getAccount("alice")).state == "ok"


def test_transientExhaustedKeepsTokens():
    """After the bounded attempts, tokens stay and a still-valid token is handed out."""
    transport = ScriptedTransport(*[errorAnswer(503, "server_error")] * 3)
    source, store, clock = makeSource(transport, max_attempts=3)
    seed(store, clock, expires_in=600)  # within the margin, but still valid
    d = source.accessToken("alice")
    clock.advance(60)
    clock.advance(60)
    assert result(d) == Secret("access-0")
    assert len(transport.requests) == 3
    assert result(store.getTokens("alice")).refresh_token == Secret("refresh-0")


def test_transientExhaustedExpiredTokenFails():
    """With an expired token, exhausted retries fail transiently and show error."""
    transport = ScriptedTransport(ConnectionRefusedError("refused"), errorAnswer(502, "x"))
    source, store, clock = makeSource(transport, max_attempts=2)
    seed(store, clock, expires_in=-1)
    d = source.accessToken("alice")
    clock.advance(60)
    failure(d, TransientTokenError)
    state = result(store.getAccount("alice"))
    assert state.state == "error" and "will retry" in state.last_error
    assert result(store.getTokens("alice")).access_token == Secret("access-0")


def test_longRetryAfterIsRespectedAcrossCalls():
    """A Retry-After longer than backoff_max ends the call; no request until it passed."""
    transport = ScriptedTransport(errorAnswer(429, "slow", retry_after="600"), tokenAnswer(1))
    source, store, clock = makeSource(transport, backoff_max=30)
    seed(store, clock, expires_in=-1)
    failure(source.accessToken("alice"), TransientTokenError)
    failure(source.accessToken("alice"), TransientTokenError)
    assert len(transport.requests) == 1
    clock.advance(600)
    assert result(source.accessToken("alice")) == Secret("access-1")


def test_backoffJitterSpreads():
    """Backoff delays grow exponentially and are jittered within [ceiling/2, ceiling]."""
    source, _, _ = makeSource(ScriptedTransport(), backoff_base=2.0, backoff_max=30.0)
    delays = [source.backoff(3) for _ in range(50)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 40
    assert source.backoff(10) <= 30.0
    assert source.backoff(1, retry_after=25) == 25
    assert source.backoff(1, retry_after=31) is None


def test_clientCredentials():
    """Client-credentials accounts just ask for a new access token, no refresh token."""
    transport = ScriptedTransport(tokenAnswer(1, refresh=False), tokenAnswer(2, refresh=False))
    acct = account("app", grant="client_credentials")
    source, store, clock = makeSource(transport, accounts=[acct])
    assert result(source.accessToken("app")) == Secret("access-1")
    form = transport.requests[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_secret"] == "client-secret-XYZ"
    assert form["scope"] == "mail offline_access"
    assert result(store.getTokens("app")).refresh_token is None
    clock.advance(3600)
    assert result(source.accessToken("app")) == Secret("access-2")


def test_unknownAndUnconfiguredAccounts():
    """Unknown, unconfigured and never-authorised accounts fail with AccountNotAuthorised."""
    acct = account("bob", client_id="")
    source, store, clock = makeSource(ScriptedTransport(), accounts=[account(), acct])
    assert "no such account" in str(failure(source.accessToken("nobody"), AccountNotAuthorised))
    assert "not configured" in str(failure(source.accessToken("bob"), AccountNotAuthorised))
    assert "not authorised" in str(failure(source.accessToken("alice"), AccountNotAuthorised))


def test_versionConflictPrefersStoredTokens():
    """If somebody stored newer tokens during the refresh, theirs are used."""
    transport = ScriptedTransport(hold=True)
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=0)
    d = source.accessToken("alice")
    record = result(store.getTokens("alice"))
    other = TokenSet(Secret("access-other"), clock.seconds() + 3600, Secret("refresh-other"))
    store.putTokens("alice", other, record.version)
    transport.held[0].callback(tokenAnswer(1))
    assert result(d) == Secret("access-other")
    assert result(store.getTokens("alice")).refresh_token == Secret("refresh-other")


@pytest.mark.parametrize("status", [500, 503, 429])
def test_noSecretInErrors(status):
    """Error messages and reprs name the provider's error, never a secret."""
    transport = ScriptedTransport(*[errorAnswer(status, "temporarily_unavailable", "busy")] * 3)
    source, store, clock = makeSource(transport, max_attempts=1)
    seed(store, clock, expires_in=-1)
    error = failure(source.accessToken("alice"), TransientTokenError)
    text = str(error) + repr(error) + str(result(store.getAccount("alice")))
    for secret in ("access-0", "refresh-0", "client-secret-XYZ"):
        assert secret not in text
    assert str(status) in text


@pytest_twisted.ensureDeferred
async def test_notifyCommandRunsOnceWithoutSecrets(tmp_path):
    """The notify command runs once with [account, reason] and none of our environment."""
    from twisted.internet import reactor

    out = tmp_path / "argv.json"
    script = (
        "import json, os, sys; "
        f"open({str(out)!r}, 'a').write(json.dumps([sys.argv[1:], dict(os.environ)]) + '\\n')"
    )
    notifier = CommandNotifier(
        reactor,
        [sys.executable, "-c", script],
        environ={"PATH": "/usr/bin:/bin", "OAUTHMAIL_KEY": "fernet-key-secret"},
    )
    transport = ScriptedTransport(errorAnswer(400, "invalid_grant", "token revoked"))
    source, store, clock = makeSource(transport, notifier=notifier)
    seed(store, clock, expires_in=0)
    await source.accessToken("alice").addErrback(lambda f: f.trap(AccountNotAuthorised))
    await source.accessToken("alice").addErrback(lambda f: f.trap(AccountNotAuthorised))
    await defer.gatherResults(list(source.pendingNotifications))
    [line] = out.read_text().splitlines()  # once, although asked twice
    argv, env = json.loads(line)
    assert argv == ["alice", "token revoked"]
    assert "OAUTHMAIL_KEY" not in env


def test_refreshDueHoldsLimiterOnlyForTheRequest():
    """refreshDue takes a limiter slot per request only: not during backoff, not for the write."""
    transport = ScriptedTransport(errorAnswer(503, "server_error"), tokenAnswer(1), tokenAnswer(2))
    accounts = [account("alice"), account("bob")]
    source, store, clock = makeSource(transport, accounts=accounts, backoff_base=2.0)
    seed(store, clock, "alice", expires_in=-5)
    seed(store, clock, "bob", expires_in=-5)
    limiter = defer.DeferredSemaphore(1)
    a = source.refreshDue("alice", 900.0, limiter=limiter)
    # alice's first request failed; during her backoff, bob gets the one slot.
    assert limiter.tokens == 1 and not a.called
    b = source.refreshDue("bob", 900.0, limiter=limiter)
    assert result(b) == Secret("access-1")
    clock.advance(2.0)
    assert result(a) == Secret("access-2")
    assert limiter.tokens == 1
    assert [f["refresh_token"] for f in transport.requests] == ["refresh-0"] * 3


def test_refreshDueWaitsForASlot():
    """With every limiter slot taken, refreshDue sends nothing until one is released."""
    transport = ScriptedTransport(tokenAnswer(1))
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=3600.0)
    limiter = defer.DeferredSemaphore(1)
    result(limiter.acquire())
    d = source.refreshDue("alice", None, limiter=limiter)  # None: forced
    assert transport.requests == [] and source.isRefreshing("alice")
    limiter.release()
    assert result(d) == Secret("access-1")


def test_refreshDueValidTokenNoRequest():
    """refreshDue re-reads the store: a token refreshed meanwhile is handed out as is.

    Marked ``AlreadyFresh``: the refresher does not count it as a refresh.
    """
    transport = ScriptedTransport()
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=3600.0)
    fresh = result(source.refreshDue("alice", 900.0))
    assert isinstance(fresh, AlreadyFresh) and fresh.token == Secret("access-0")
    assert transport.requests == []


@pytest.mark.parametrize(
    "error", ["interaction_required", "consent_required", "admin_policy_enforced"]
)
def test_providerReauthErrorsNeedReauthOnce(error):
    """Microsoft and Google "a person must sign in" errors mark needs_reauth and notify once."""
    notifier = RecordingNotifier()
    transport = ScriptedTransport(errorAnswer(400, error, "AADSTS50076: use MFA"))
    source, store, clock = makeSource(transport, notifier=notifier)
    seed(store, clock, expires_in=0)
    e = failure(source.accessToken("alice"), AccountNotAuthorised)
    assert e.needs_reauth and error in str(e) and "AADSTS50076" in str(e)
    state = result(store.getAccount("alice"))
    assert state.state == "needs_reauth"
    assert state.last_error == f"{error}: AADSTS50076: use MFA"
    failure(source.forceRefresh("alice"), AccountNotAuthorised)
    assert len(transport.requests) == 1
    assert notifier.calls == [("alice", f"{error}: AADSTS50076: use MFA")]


def test_invalidClientKeptWithAdvice():
    """invalid_client is a configuration error naming what to fix, kept as the last error."""
    description = "AADSTS7000215: Invalid client secret provided."
    transport = ScriptedTransport(*[errorAnswer(401, "invalid_client", description)] * 2)
    notifier = RecordingNotifier()
    source, store, clock = makeSource(transport, notifier=notifier)
    seed(store, clock, expires_in=0)
    for _ in range(2):
        error = failure(source.accessToken("alice"), TokenEndpointError)
        state = result(store.getAccount("alice"))
        assert state.state == "error" and state.last_error == str(error)
        assert "AADSTS7000215" in state.last_error
        assert "fix client_id and client_secret" in state.last_error
        assert "Authorise" not in state.last_error
    assert notifier.calls == []


@pytest.mark.parametrize("expires_in", ["1e20", "1e300", "Infinity", "NaN", "-60", '"x"'])
def test_malformedExpiryIsAnErrorNotACrash(expires_in):
    """An absurd expires_in: the account shows a malformed-answer error, its tokens stay."""
    body = b'{"access_token": "new", "refresh_token": "r-new", "expires_in": '
    answer = HTTPResponse(200, {}, body + expires_in.encode() + b"}")
    transport = ScriptedTransport(answer)
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=-1)
    error = failure(source.accessToken("alice"), TokenEndpointError)
    assert "malformed" in str(error) and "expires_in" in str(error)
    state = result(store.getAccount("alice"))
    assert state.state == "error" and "expires_in" in state.last_error
    stored = result(store.getTokens("alice"))
    assert stored.access_token == Secret("access-0") and stored.version == 1


def test_hugeRetryAfterHoldsAnHourOnly():
    """Retry-After: 999999 stops this account's requests for an hour, not eleven days."""
    transport = ScriptedTransport(errorAnswer(429, "slow", retry_after="999999"), tokenAnswer(1))
    source, store, clock = makeSource(transport)
    seed(store, clock, expires_in=-1)
    failure(source.accessToken("alice"), TransientTokenError)
    clock.advance(3599)
    failure(source.accessToken("alice"), TransientTokenError)
    assert len(transport.requests) == 1
    clock.advance(1)
    assert result(source.accessToken("alice")) == Secret("access-1")


def test_rememberRefusalKeepsConfigurationErrors():
    """An authorisation's invalid_client is kept as the last error; other failures are not."""
    source, store, clock = makeSource(ScriptedTransport())
    store.ensureAccount("alice", "generic")
    error = TokenEndpointError("invalid_client", "bad secret", 401, "fix client_id")
    result(source.rememberRefusal("alice", TransientTokenError("timeout")))
    assert result(store.getAccount("alice")).last_error is None
    result(source.rememberRefusal("alice", error))
    state = result(store.getAccount("alice"))
    assert state.state == "error" and state.last_error == str(error)
    assert "fix client_id" in state.last_error
    result(source.rememberRefusal("nobody", error))  # unknown accounts: nothing to keep


def test_refreshDoesNotRevealTheOldAccessToken():
    """A successful refresh never reveals the access token it replaces (stores decrypt lazily)."""

    class Sealed(Secret):
        revealed = 0

        def reveal(self):
            Sealed.revealed += 1
            return super().reveal()

        def __bool__(self):
            Sealed.revealed += 1
            return super().__bool__()

    transport = ScriptedTransport(tokenAnswer(1))
    source, store, clock = makeSource(transport)
    store.ensureAccount("alice", "generic")
    store.putTokens("alice", TokenSet(Sealed("access-0"), 0.0, Secret("refresh-0")), 0)
    assert result(source.refreshDue("alice", 900.0)) == Secret("access-1")
    assert Sealed.revealed == 0
