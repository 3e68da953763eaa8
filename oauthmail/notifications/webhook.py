"""POST each notice as JSON to a webhook, signed, retried until it is taken.

One POST at a time, in order. A ``2xx`` answer takes the notice; anything else
(another status, no answer in ``timeout``, a connection failure) is tried again
after a growing, capped, jittered delay (:class:`oauthmail.retry.Backoff`),
up to ``max_attempts`` times, then dropped with a warning. At most
``max_pending`` notices wait; past that the oldest is dropped (a receiver
that is down for a day must not make the daemon grow).

With a secret, every request carries ``X-OAuthMail-Signature: sha256=<hex>``,
the HMAC-SHA256 of the exact body under the secret (as GitHub's webhooks do);
the body carries its time (``at``), so a receiver can refuse replays. The
answer's body is read into a small bounded buffer and thrown away.
"""

from __future__ import annotations

import hashlib
import hmac
import random as _random
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from oauthmail.http.agent import RoutingEndpointFactory
from oauthmail.http.body import BytesBody, discardBody
from oauthmail.http.proxy import DIRECT
from oauthmail.notifications.events import Notice
from oauthmail.retry import Backoff
from oauthmail.secret import Secret, plain
from oauthmail.text import describeFailure

__all__ = ["SIGNATURE_HEADER", "WebhookNotifier", "sign"]

log = Logger()

SIGNATURE_HEADER = b"X-OAuthMail-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _shown(url: str) -> str:
    """The URL without user info, query or fragment (they often hold a token)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookNotifier:
    """Delivers :class:`Notice` values to ``url``; see the module docstring.

    :param agent: an ``IAgent`` (tests); by default one over ``reactor``.
    """

    def __init__(
        self,
        url: str,
        reactor: Any,
        secret: Secret | None = None,
        *,
        clock: IReactorTime | None = None,
        agent: IAgent | None = None,
        timeout: float = 10.0,
        max_attempts: int = 12,
        max_pending: int = 1000,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
        random: _random.Random | None = None,
    ) -> None:
        self.url = url
        self.shown = _shown(url)
        self._secret = secret
        self._clock = clock if clock is not None else reactor
        self._pool: HTTPConnectionPool | None = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent.usingEndpointFactory(
                reactor,
                RoutingEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), DIRECT, timeout),
                pool=self._pool,
            )
        self._agent = agent
        self._timeout = timeout
        self._maxAttempts = max(1, max_attempts)
        self._maxPending = max(1, max_pending)
        self._backoff = Backoff(backoff_base, backoff_max, random)
        #: No notice is posted before this time (set when one was given up on).
        self._resumeAt = 0.0
        self._pending: deque[Notice] = deque()
        self._running: defer.Deferred[None] | None = None
        self._sleep: Any = None
        self._stopped = False
        self.delivered = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<WebhookNotifier {self.shown}>"

    def notify(self, notice: Notice) -> None:
        """Queue ``notice`` (never blocks, never fails)."""
        if self._stopped:
            return
        if len(self._pending) >= self._maxPending:
            self._pending.popleft()
            self.dropped += 1
            log.warn(
                "notify webhook {url}: {n} notices wait; the oldest was dropped",
                url=self.shown,
                n=len(self._pending) + 1,
            )
        self._pending.append(notice)
        if self._running is None:
            self._running = defer.ensureDeferred(self._drain())
            self._running.addBoth(self._drained)

    def _drained(self, result: object) -> None:
        self._running = None

    def whenIdle(self) -> defer.Deferred[None]:
        """Fire once nothing is queued or being sent (tests, shutdown)."""
        if self._running is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._running.addBoth(lambda r: d.callback(None) or r)
        return d

    def close(self) -> defer.Deferred[None]:
        """Stop: what is still queued is dropped (logged), connections are closed."""
        self._stopped = True
        if self._pending:
            log.warn(
                "notify webhook {url}: {n} notice(s) not delivered at shutdown",
                url=self.shown,
                n=len(self._pending),
            )
        self._pending.clear()
        if self._sleep is not None and self._sleep.active():
            self._sleep.cancel()
        running = self._running
        if running is not None and not running.called:
            running.cancel()
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    async def _drain(self) -> None:
        while self._pending and not self._stopped:
            notice = self._pending[0]
            # After a notice was given up on, the receiver is still failing:
            # the next waits its turn in the same growing backoff, not at once.
            wait = self._resumeAt - self._clock.seconds()
            if wait > 0:
                await self._pause(wait)
                if self._stopped:
                    break
            attempt = 0
            while True:
                attempt += 1
                why = await self._post(notice)
                if why is None:
                    self.delivered += 1
                    self._backoff.reset()
                    break
                if attempt >= self._maxAttempts or self._stopped:
                    self.dropped += 1
                    log.warn(
                        "notify webhook {url}: gave up on a {event} notice for {account}"
                        " after {n} attempts: {why}",
                        url=self.shown,
                        event=notice.event,
                        account=notice.account,
                        n=attempt,
                        why=why,
                    )
                    self._resumeAt = self._clock.seconds() + self._backoff.next()
                    break
                delay = self._backoff.next()
                log.info(
                    "notify webhook {url}: {why}; trying again in {delay:.0f} s",
                    url=self.shown,
                    why=why,
                    delay=delay,
                )
                await self._pause(delay)
            if self._pending and self._pending[0] is notice:
                self._pending.popleft()

    async def _pause(self, delay: float) -> None:
        waited: defer.Deferred[None] = defer.Deferred()
        self._sleep = self._clock.callLater(delay, waited.callback, None)
        await waited
        self._sleep = None

    async def _post(self, notice: Notice) -> str | None:
        """One attempt: ``None`` when the receiver took it, else why not (one line)."""
        body = notice.asJSON()
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"User-Agent": [b"oauthmail"],
                b"X-OAuthMail-Event": [notice.event.encode("ascii")],
            }
        )
        if self._secret is not None:
            headers.setRawHeaders(SIGNATURE_HEADER, [sign(plain(self._secret), body).encode()])

        async def exchange() -> int:
            response = await self._agent.request(
                b"POST", self.url.encode("ascii"), headers, BytesBody(body)
            )
            await discardBody(response)
            return int(response.code)

        d = defer.ensureDeferred(exchange())
        d.addTimeout(self._timeout, self._clock)
        try:
            code = await d
        except defer.TimeoutError:
            return f"no answer within {self._timeout:g} s"
        except Exception as e:
            return describeFailure(e, 120)
        if 200 <= code < 300:
            return None
        return f"HTTP {code}"
