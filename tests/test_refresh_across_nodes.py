"""Token refreshes across nodes sharing one PostgreSQL store: a refresh token is presented once.

Two token sources (two nodes), each on its own connection pools to one
database, refresh one account at once; the provider stand-in counts every
refresh token presented and rotates them, as Microsoft and Google do.
"""

from __future__ import annotations

import json
from collections import Counter
from urllib.parse import parse_qsl

import pytest_twisted
from contracts.conftest import openPostgreSQL
from test_token_source import account
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.tokens.crypto import generateKey
from oauthmail.tokens.http import HTTPResponse
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.source import TokenSource


@implementer(IHTTPTransport)
class RotatingProvider:
    """Answers each refresh after ``delay`` s with new tokens; counts what was presented."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay
        #: Called as each request arrives (a test ends a node's session there).
        self.before = None
        self.presented: Counter[str] = Counter()
        self.issued = 0

    def request(self, method, url, headers, body):
        if self.before is not None:
            self.before()
        form = dict(parse_qsl(body.decode()))
        self.presented[form["refresh_token"]] += 1
        self.issued += 1
        n = self.issued
        answer = {
            "access_token": f"access-{n}",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": f"refresh-{n}",
        }
        response = HTTPResponse(
            200, {"content-type": "application/json"}, json.dumps(answer).encode()
        )
        return task.deferLater(reactor, self.delay, lambda: response)


async def twoNodes(postgres_dsn, expires_in, **options):
    key = generateKey()
    provider = RotatingProvider()
    nodes = [await openPostgreSQL(postgres_dsn, reactor, node=n, key=key) for n in "ab"]
    store = nodes[0].tokens
    await store.ensureAccount("alice", "generic")
    tokens = TokenSet(Secret("access-0"), reactor.seconds() + expires_in, Secret("refresh-0"))
    await store.putTokens("alice", tokens, 0)
    await store.setAccountState("alice", "ok")
    sources = [
        TokenSource(n.tokens, {"alice": account()}, provider, reactor, margin=900.0, **options)
        for n in nodes
    ]
    return nodes, sources, provider


@pytest_twisted.ensureDeferred
async def test_two_nodes_due_at_once_refresh_once(postgres_dsn):
    """Both nodes find the token due; one asks the provider, the other uses what it stored."""
    nodes, sources, provider = await twoNodes(postgres_dsn, expires_in=60.0)
    try:
        got = await defer.gatherResults([s.accessToken("alice") for s in sources])
        assert [t.reveal() for t in got] == ["access-1", "access-1"]
        assert provider.presented == Counter({"refresh-0": 1})
        assert (await nodes[1].tokens.getTokens("alice")).version == 2
    finally:
        for n in nodes:
            await n.close()


@pytest_twisted.ensureDeferred
async def test_a_forced_refresh_uses_what_another_node_just_stored(postgres_dsn):
    """A node whose token was refused finds a newer one from another node and asks nothing."""
    nodes, sources, provider = await twoNodes(postgres_dsn, expires_in=3000.0)
    try:
        a, b = sources
        assert (await a.accessToken("alice")).reveal() == "access-0"  # a reads version 1
        # Both servers refuse access-0 at once: both nodes force a refresh.
        got = await defer.gatherResults([a.forceRefresh("alice"), b.forceRefresh("alice")])
        assert sorted(t.reveal() for t in got) == ["access-1", "access-1"]
        assert provider.presented == Counter({"refresh-0": 1})
        # Later a forces again (its new token refused too): the refresh token it presents is
        # the live one, refresh-1, never refresh-0 again.
        assert (await a.forceRefresh("alice")).reveal() == "access-2"
        assert provider.presented == Counter({"refresh-0": 1, "refresh-1": 1})
    finally:
        for n in nodes:
            await n.close()
