"""What one due refresh costs, by counts (bench/refresh measures the time; issue 10).

A refresher pass over many accounts is bounded by the reactor thread's work per
refresh and by the store's statements and thread round trips per refresh. These
tests pin both by counting, never by the clock: SQL statements, hops into the
database's threads, encryptions, state writes, and the Python calls the token
side makes for one refresh. A change that adds work to every refresh of every
account shows up here as a count, with the breakdown in the failure message.
"""

from __future__ import annotations

import collections
import json
import re
import sys

import pytest_twisted
from twisted.internet import defer, reactor, task

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.db.sqlite.tokens import SQLiteTokenStore
from oauthmail.http.body import Answer
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.crypto import generateKey
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.refresher import TokenRefresher
from oauthmail.tokens.source import TokenSource

PROFILE = ProfileConfig(
    name="cost",
    kind="generic",
    authorization_endpoint=None,
    token_endpoint="http://127.0.0.1:9/token",
    device_endpoint=None,
    revocation_endpoint=None,
    introspection_endpoint=None,
    client_id="client",
    client_secret=Secret("client-secret"),
    scopes=("mail",),
)


def _answer(n: int) -> Answer:
    body = {
        "access_token": f"access-{n:040d}",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": "mail",
        "refresh_token": f"refresh-{n:056d}",
    }
    return Answer(200, {"content-type": "application/json"}, json.dumps(body).encode())


class _Provider:
    """An ``IHTTPTransport`` answering every refresh with fresh, rotated tokens."""

    def __init__(self, later: bool) -> None:
        self.requests = 0
        self._later = later

    def request(self, method, url, headers, body):  # noqa: ANN001, ANN201 - IHTTPTransport
        self.requests += 1
        if not self._later:
            return defer.succeed(_answer(self.requests))
        d: defer.Deferred[Answer] = defer.Deferred()
        reactor.callLater(0, d.callback, _answer(self.requests))
        return d


def _normalised(sql: str) -> str:
    """A traced statement without its bound values (sqlite3 traces them expanded)."""
    sql = re.sub(r"X'[0-9A-Fa-f]*'|'[^']*'|\b\d+(?:\.\d+)?\b", "?", sql)
    return re.sub(r"\?(?:, \?)+", "?...", sql)


@pytest_twisted.ensureDeferred
async def test_a_pass_costs_one_write_and_no_state_per_refresh(tmp_path):
    """A pass over N SQLite accounts: per refresh one token write and one stamp, batched reads,
    at most two hops into the database threads, two encryptions, at most one decryption,
    and no account state written."""
    count = 60
    store = SQLiteTokenStore(str(tmp_path / "tokens.sqlite"), generateKey(), reactor, reactor)
    await store.open()
    accounts = [AccountConfig(f"acct{i:03d}", f"u{i}@example.com", PROFILE) for i in range(count)]
    expires = reactor.seconds() + 300
    for i, account in enumerate(accounts):
        await store.ensureAccount(account.name, "generic")
        stale = TokenSet(Secret(f"stale-{i}"), expires, Secret(f"refresh-{i}"), "mail")
        await store.putTokens(account.name, stale, 0)
        await store.setAccountState(account.name, "ok", None)

    statements: collections.Counter[str] = collections.Counter()

    def trace(conn: object) -> None:
        conn.set_trace_callback(lambda sql: statements.update([_normalised(sql)]))

    await store.database.runWrite(trace)
    await store.database.runRead(trace)
    hops = collections.Counter()
    database = store.database
    for name in ("runRead", "runWrite"):
        original = getattr(database, name)

        def counted(func, *args, _original=original, _name=name):  # noqa: ANN001, ANN202
            hops[_name] += 1
            return _original(func, *args)

        setattr(database, name, counted)
    cipher = store._cipher  # noqa: SLF001 - counting the store's own crypto calls
    crypto = collections.Counter()
    for name in ("encrypt", "decrypt"):
        original = getattr(cipher, name)

        def countedCrypto(*args, _original=original, _name=name):  # noqa: ANN002, ANN202
            crypto[_name] += 1
            return _original(*args)

        setattr(cipher, name, countedCrypto)

    provider = _Provider(later=True)
    source = TokenSource(store, {a.name: a for a in accounts}, provider, reactor, margin=900.0)
    refresher = TokenRefresher(
        source, store, accounts, reactor, interval=60.0, margin=900.0, concurrency=5, jitter=0.0
    )
    try:
        refresher.startService()
        for _ in range(2000):
            if refresher.refreshed + refresher.failures >= count:
                break
            await task.deferLater(reactor, 0.005, lambda: None)
        assert (refresher.refreshed, refresher.failures) == (count, 0)
        assert provider.requests == count
    finally:
        await defer.maybeDeferred(refresher.stopService)
        for name in ("runRead", "runWrite"):
            delattr(database, name)
        await store.close()

    def matching(prefix: str) -> int:
        return sum(n for sql, n in statements.items() if sql.startswith(prefix))

    shown = "\n".join(f"{n:5d} {sql[:100]}" for sql, n in statements.most_common())
    assert matching("UPDATE tokens SET") == count, shown
    assert matching("UPDATE accounts SET updated_at = ?, last_refresh_at = ?") == count, shown
    assert matching("UPDATE accounts SET state") == 0, shown  # health writes only on change
    assert matching("INSERT") == 0, shown
    assert matching("SELECT a.id, a.provider") <= count, shown  # coalesced reads
    assert matching("SELECT access_token") + matching("SELECT version") == 0, shown
    assert matching("COMMIT") <= count, shown
    assert hops["runRead"] + hops["runWrite"] <= 2 * count + 2, hops  # + the pass's listing
    assert crypto["encrypt"] == 2 * count, crypto
    # The refresh token is decrypted; the access token it replaces stays sealed.
    assert crypto["decrypt"] <= count, crypto


#: Python calls in oauthmail's own modules (token source, grants, answers, refresh-once,
#: records) for one due refresh, the store's twin aside. The refactor behind issue 10 had
#: grown it from 27 to 60; 44 after the fix. A ceiling, with a little room, not a target.
CALLS_PER_REFRESH = 48


def test_a_due_refresh_makes_few_calls_on_the_reactor_thread():
    """One due refresh (answered at once, memory store) makes at most CALLS_PER_REFRESH calls."""
    clock = task.Clock()
    clock.advance(1_000_000)
    store = MemoryTokenStore(clock)
    account = AccountConfig("acct", "u@example.com", PROFILE)
    store.ensureAccount("acct", "generic")
    store.setAccountState("acct", "ok", None)
    store.putTokens("acct", TokenSet(Secret("old"), clock.seconds() + 10, Secret("r"), "mail"), 0)
    source = TokenSource(store, {"acct": account}, _Provider(later=False), clock, margin=900.0)

    class Slots:
        def acquire(self) -> defer.Deferred[object]:
            return defer.succeed(None)

        def release(self) -> None:
            pass

    slots = Slots()
    results: list[object] = []

    def refreshOnce() -> None:
        source.refreshDue("acct", 900.0, limiter=slots).addBoth(results.append)
        clock.advance(3600)  # due again

    for _ in range(3):  # warm up: the grant client and its form are built once
        refreshOnce()
    calls: collections.Counter[str] = collections.Counter()

    def profile(frame, event, arg):  # noqa: ANN001, ANN202
        if event == "call":
            path = frame.f_code.co_filename
            if "/oauthmail/" in path and "/oauthmail/testing/" not in path:
                calls[f"{path.rsplit('/oauthmail/', 1)[1]}:{frame.f_code.co_name}"] += 1

    rounds = 20
    sys.setprofile(profile)
    try:
        for _ in range(rounds):
            refreshOnce()
    finally:
        sys.setprofile(None)
    assert all(isinstance(r, Secret) for r in results), results[-1]
    perRefresh = sum(calls.values()) / rounds
    shown = ", ".join(f"{name} {n / rounds:g}" for name, n in calls.most_common())
    assert perRefresh <= CALLS_PER_REFRESH, f"{perRefresh:g} calls per refresh: {shown}"
