"""Ninety simulated days of token life against the test provider over real loopback HTTP.

A ``task.Clock`` drives the refresher, the token source's backoff and the provider's
expiry decisions; HTTP runs on the real reactor. The test jumps from one timer event to
the next and, after each, lets all HTTP in flight finish before time moves on. With
rotation on and half of all token requests failing, every account must end with a valid
token, and no refresh token may ever have been presented after it was rotated away.
"""

from __future__ import annotations

import random

import pytest_twisted
from twisted.internet import defer, reactor, task
from zope.interface import implementer

from oauthmail.config import AccountConfig, ProfileConfig
from oauthmail.interfaces import IHTTPTransport
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.provider import TestOAuthProvider
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.records import TokenSet
from oauthmail.tokens.refresher import TokenRefresher
from oauthmail.tokens.source import TokenSource

DAY = 86400.0
LIFETIME = 12 * 3600.0  # access tokens live twelve hours ...
INTERVAL = 3600.0  # ... the refresher looks every hour ...
MARGIN = 3 * 3600.0  # ... and refreshes what expires within 4 h: ~3 refreshes a day.
ACCOUNTS = 3


@implementer(IHTTPTransport)
class CountingTransport:
    """Counts requests in flight so the test knows when the reactor has nothing to do."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.inflight = 0
        self.total = 0

    def request(self, method, url, headers, body):
        self.inflight += 1
        self.total += 1

        def done(result):
            self.inflight -= 1
            return result

        return self.inner.request(method, url, headers, body).addBoth(done)

    async def quiet(self) -> None:
        while self.inflight:
            await task.deferLater(reactor, 0.0005, lambda: None)


async def advanceTo(clock: task.Clock, end: float, transport: CountingTransport) -> int:
    """Jump from timer event to timer event until ``end``; settle HTTP after each."""
    steps = 0
    while clock.seconds() < end:
        pending = [c.getTime() for c in clock.getDelayedCalls()]
        target = min([end, *pending])
        clock.advance(max(0.0, target - clock.seconds()))
        steps += 1
        await transport.quiet()
    return steps


@pytest_twisted.ensureDeferred
async def test_ninetyDaysOfRotationUnderFaults():
    """90 days, rotation on, 50% transient faults: every account keeps a valid token."""
    clock = task.Clock()
    clock.advance(1_000_000)
    provider = TestOAuthProvider(clock=clock, access_token_lifetime=LIFETIME)
    provider.registerClient("client-90", "secret-90")
    provider.listen(reactor)
    http = AgentTransport(reactor, timeout=10.0)
    transport = CountingTransport(http)
    refresher = None
    try:
        profile = ProfileConfig(
            name="test",
            kind="generic",
            authorization_endpoint=provider.authorization_endpoint,
            token_endpoint=provider.token_endpoint,
            device_endpoint=provider.device_endpoint,
            revocation_endpoint=None,
            introspection_endpoint=provider.introspection_endpoint,
            client_id="client-90",
            client_secret=Secret("secret-90"),
            scopes=("mail",),
        )
        accounts = [
            AccountConfig(f"user{i}", f"user{i}@example.com", profile) for i in range(ACCOUNTS)
        ]
        store = MemoryTokenStore(clock)
        source = TokenSource(
            store,
            {a.name: a for a in accounts},
            transport,
            clock,
            margin=MARGIN,
            random=random.Random(1),
        )
        for a in accounts:
            answer = provider.issueTokens(a.address, "client-90")
            tokens = TokenSet(
                Secret(answer["access_token"]),
                clock.seconds() + answer["expires_in"],
                Secret(answer["refresh_token"]),
            )
            await source.storeAuthorized(a.name, tokens)
        provider.setErrorRate(0.5, status=503, seed=90)
        refresher = TokenRefresher(
            source,
            store,
            accounts,
            clock,
            interval=INTERVAL,
            margin=MARGIN,
            concurrency=2,
            jitter=120.0,
            random=random.Random(2),
        )
        refresher.startService()
        start = clock.seconds()
        steps = await advanceTo(clock, start + 90 * DAY, transport)

        assert 2000 <= steps <= 8000, steps
        # Half the requests failed, so many refresh tokens were presented several times,
        # but only ever before their one successful use: a presentation after rotation
        # is what the provider counts as reuse.
        assert provider.reused_refresh_tokens == 0
        assert max(provider.refresh_presentations.values()) > 1
        rotated = len(provider.refresh_presentations)
        assert rotated >= ACCOUNTS * 90 * DAY / LIFETIME, rotated
        for a in accounts:
            state = await store.getAccount(a.name)
            assert state.state in ("ok", "error"), state
            record = await store.getTokens(a.name)
            assert provider.introspect(record.access_token)["active"], a.name
            assert record.expires_at - clock.seconds() > 0
            # And the token source hands out a token the provider accepts.
            token = await source.accessToken(a.name)
            assert provider.introspect(token)["active"]
        provider.setErrorRate(0.0)
    finally:
        if refresher is not None and refresher.running:
            stopping = defer.maybeDeferred(refresher.stopService)
            while not stopping.called:  # a refresh may sleep in backoff on the clock
                await advanceTo(clock, clock.seconds() + 60, transport)
            await stopping
        await http.close()
        await provider.stop()
