"""Refresh claims on PostgreSQL: a refresh whose answer was not committed holds the others off.

The provider forgets a refresh token once it has answered with a new one. When
the node that asked cannot commit that answer (PostgreSQL restarted, its
session was ended), it alone holds the live refresh token; another node that
refreshed with the stored one would present a dead token and the account would
need a person. The claim committed before each request makes the others wait
for the first node to save what it holds.

Each test ends the asking node's session from inside the provider's answer:
``pg_terminate_backend`` of the one session idle in a transaction (the refresh's).
"""

from __future__ import annotations

from collections import Counter

import psycopg
import pytest
import pytest_twisted
from contracts.conftest import REFRESH, openPostgreSQL, tokens
from test_refresh_across_nodes import twoNodes
from test_token_source import account
from twisted.internet import defer, reactor, task
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from oauthmail.db.errors import RefreshBusy, StoreUnwritable
from oauthmail.tokens.crypto import generateKey
from oauthmail.tokens.refresher import TokenRefresher


def endRefreshingSession(dsn: str) -> None:
    """End the session waiting for the provider's answer, as a PostgreSQL restart would."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        ended = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE state = 'idle in transaction' AND datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    assert ended == [(True,)]


def claims(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT account, node FROM refresh_claims").fetchall()


def ageClaims(dsn: str, seconds: float) -> None:
    with psycopg.connect(dsn) as conn:
        older = "UPDATE refresh_claims SET since = now() - make_interval(secs => %s)"
        conn.execute(older, [seconds])


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


def never(record):
    raise AssertionError("this node must not ask the provider")


async def nodeWithAlice(dsn: str, node: str = "a", expires: float = 3600.0, **options):
    """One node's stores, the account alice in them with tokens valid ``expires`` seconds."""
    opened = await openPostgreSQL(dsn, Clock(), node=node, **options)
    await opened.tokens.ensureAccount("alice", "google")
    await opened.tokens.putTokens("alice", tokens(expires=expires), 0)
    return opened


async def nodesWithALostCommit(dsn: str, names: str = "ab") -> list:
    """Nodes ``names`` on one store: the first refreshes alice, and loses the commit.

    Its claim stays; its answer ("held", refresh token "rotated") is what a real
    provider now expects, and nobody but that node knows it.
    """
    key = generateKey()
    nodes = [await openPostgreSQL(dsn, Clock(), node=n, key=key) for n in names]
    first = nodes[0].tokens
    await first.ensureAccount("alice", "google")
    await first.putTokens("alice", tokens(expires=10.0), 0)
    presented = []

    def answer(record):
        presented.append(record.refresh_token.reveal())
        endRefreshingSession(dsn)
        return sleep(0.1).addCallback(lambda _: tokens("held", "rotated", 5000.0))

    with pytest.raises(StoreUnwritable):
        await first.refreshLocked("alice", lambda r: False, answer)
    assert presented == [REFRESH] and claims(dsn) == [("alice", names[0])]
    return nodes


@pytest_twisted.ensureDeferred
async def test_an_unsaved_answer_holds_other_nodes_off_until_it_is_saved(postgres_dsn):
    """Node a's answer is lost with its session: b asks nothing; a saves it; b then uses it."""
    a, b = await nodesWithALostCommit(postgres_dsn)
    try:
        with pytest.raises(RefreshBusy, match="node 'a' claimed the refresh.*not stored"):
            await b.tokens.refreshLocked("alice", lambda r: False, never)
        (shown,) = await b.leases.listRefreshClaims()  # what operators see, from any node
        assert (shown.account, shown.node) == ("alice", "a") and 0 <= shown.age < 60
        stored = await a.tokens.putTokens("alice", tokens("held", "rotated", 5000.0), 1)
        assert stored.version == 2 and claims(postgres_dsn) == []
        assert await b.leases.listRefreshClaims() == []
        done = await b.tokens.refreshLocked("alice", lambda r: r.version > 1, never)
        assert not done.refreshed and done.record.refresh_token.reveal() == "rotated"
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_node_goes_on_from_its_own_claim(postgres_dsn):
    """The node that holds the live refresh token may refresh again while the store failed."""
    (a,) = await nodesWithALostCommit(postgres_dsn, "a")
    try:
        done = await a.tokens.refreshLocked(
            "alice", lambda r: False, lambda r: tokens("fresh", "rotated-2", 5000.0)
        )
        assert done.refreshed and done.record.version == 2
        assert claims(postgres_dsn) == []
    finally:
        await a.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_refresh_with_held_tokens_keeps_the_claim(postgres_dsn):
    """The node that holds the live refresh token keeps its claim when presenting it fails."""
    a, b = await nodesWithALostCommit(postgres_dsn)
    try:

        def unreachable(record):
            raise ConnectionRefusedError("the provider is down")

        ageClaims(postgres_dsn, 500)
        with pytest.raises(ConnectionRefusedError):
            await a.tokens.refreshLocked("alice", lambda r: False, unreachable)
        assert claims(postgres_dsn) == [("alice", "a")]
        (claim,) = await b.leases.listRefreshClaims()
        assert claim.age < 60  # made anew: it lasts claim_ttl from the last attempt
        with pytest.raises(RefreshBusy):
            await b.tokens.refreshLocked("alice", lambda r: False, never)
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_a_claim_left_with_nothing_held_is_removed_by_the_next_failed_refresh(postgres_dsn):
    """This node's claim with no tokens held behind it (a removal that failed) blocks nobody."""
    opened = await nodeWithAlice(postgres_dsn, "a")
    try:
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute(
                "INSERT INTO refresh_claims (account, node, instance) VALUES ('alice', 'a', %s)",
                (opened.tokens._instance,),
            )

        def unreachable(record):
            raise ConnectionRefusedError("the provider is down")

        with pytest.raises(ConnectionRefusedError):
            await opened.tokens.refreshLocked("alice", lambda r: False, unreachable)
        assert claims(postgres_dsn) == []
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_claim_whose_request_never_went_out_is_removed(postgres_dsn):
    """Claimed, then the row lock not had again in time: nothing asked, no claim left."""
    opened = await openPostgreSQL(postgres_dsn, Clock(), node="a")
    store = opened.tokens
    locks = []
    lockTokens = store._lockTokens

    def secondLockTimesOut(conn, account_id):
        locks.append(account_id)
        if len(locks) == 2:
            raise RefreshBusy("waited too long")
        return lockTokens(conn, account_id)

    store._lockTokens = secondLockTimesOut
    try:
        await store.ensureAccount("alice", "google")
        await store.putTokens("alice", tokens(), 0)
        with pytest.raises(RefreshBusy):
            await store.refreshLocked("alice", lambda r: False, never)
        assert len(locks) == 2 and claims(postgres_dsn) == []
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_an_old_claim_is_taken_over_and_said(postgres_dsn):
    """A claim older than claim_ttl (its node died holding tokens) no longer holds; a warning."""
    opened = await nodeWithAlice(postgres_dsn, "b", expires=10.0, claim_ttl=60.0)
    try:
        with psycopg.connect(postgres_dsn) as conn:
            conn.execute(
                "INSERT INTO refresh_claims (account, node, instance, since)"
                " VALUES ('alice', 'gone', 'x', now() - interval '61 seconds')"
            )
        with capturedLogs() as logged:
            done = await opened.tokens.refreshLocked(
                "alice", lambda r: False, lambda r: tokens("fresh", "rotated", 5000.0)
            )
        assert done.refreshed and claims(postgres_dsn) == []
        said = [e for e in logged if e.get("log_level").name == "warn"]
        assert len(said) == 1 and said[0]["node"] == "gone"
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_a_failed_request_leaves_no_claim(postgres_dsn):
    """The provider failed (nothing to save): the claim goes, the next node may ask."""
    opened = await nodeWithAlice(postgres_dsn, "a")
    try:
        with pytest.raises(ZeroDivisionError):
            await opened.tokens.refreshLocked("alice", lambda r: False, lambda r: 1 / 0)
        assert claims(postgres_dsn) == []
    finally:
        await opened.close()


@pytest_twisted.ensureDeferred
async def test_token_sources_present_a_refresh_token_once_across_a_lost_commit(postgres_dsn):
    """Two nodes' token sources: a's refresh is answered but not committed; b waits, a saves."""
    nodes, (a, b), provider = await twoNodes(postgres_dsn, expires_in=60.0, backoff_base=0.05)
    provider.before = lambda: endRefreshingSession(postgres_dsn)
    try:
        with pytest.raises(StoreUnwritable):
            await a.accessToken("alice")
        provider.before = None
        # b finds the token due too, but a's claim holds: b keeps the valid access-0.
        assert (await b.accessToken("alice")).reveal() == "access-0"
        assert provider.presented == Counter({"refresh-0": 1})
        # a's next call saves what it holds; b then uses it.
        assert (await a.accessToken("alice")).reveal() == "access-1"
        assert (await b.accessToken("alice")).reveal() == "access-1"
        assert provider.presented == Counter({"refresh-0": 1})
        assert (await nodes[0].tokens.getAccount("alice")).state == "ok"
    finally:
        for n in nodes:
            await n.close()


@pytest_twisted.ensureDeferred
async def test_the_next_refresher_pass_stores_held_tokens_of_a_forced_refresh(postgres_dsn):
    """A forced refresh's lost commit: the token is far from expiry, the next pass stores it."""
    nodes, (a, b), provider = await twoNodes(postgres_dsn, expires_in=3000.0)
    provider.before = lambda: endRefreshingSession(postgres_dsn)
    try:
        with pytest.raises(StoreUnwritable):
            await a.forceRefresh("alice")
        provider.before = None
        assert a.holdsUnsaved("alice") and claims(postgres_dsn) == [("alice", "a")]
        refresher = TokenRefresher(a, nodes[0].tokens, [account()], reactor, jitter=0)
        refresher.running = True  # a pass as the started service makes it (no loop here)
        await refresher.runOnce()
        assert not a.holdsUnsaved("alice") and claims(postgres_dsn) == []
        assert (await nodes[1].tokens.getTokens("alice")).version == 2
        assert (await b.accessToken("alice")).reveal() == "access-1"
        assert provider.presented == Counter({"refresh-0": 1})
    finally:
        for n in nodes:
            await n.close()
