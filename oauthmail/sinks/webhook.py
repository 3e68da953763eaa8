"""Deliver received mail by POSTing it to an HTTP(S) endpoint.

The body is the message exactly as received, ``Content-Type: message/rfc822``;
``X-OAuthMail-Account`` and ``X-OAuthMail-Folder`` say where it came from.
The answer decides:

* 2xx: taken;
* 5xx, 408, 429, no answer, connection failure, timeout: try again later;
* anything else (other 4xx, a redirect, 1xx): this message will never be
  taken as it is.

HTTPS endpoints are verified like a browser would (system trust roots, host
name). Plain HTTP is allowed because operators often post to a service on
the same host. URLs are shown without their query string, which often holds
a token; extra headers (an ``Authorization`` header, say) may be given as
:class:`oauthmail.secret.Secret` and are only revealed on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers
from zope.interface import implementer

from oauthmail.http.agent import RoutingEndpointFactory
from oauthmail.http.body import IncompleteAnswer, ResponseTooLarge, readBounded
from oauthmail.http.proxy import DIRECT
from oauthmail.interfaces import IClosable, ISink
from oauthmail.secret import Secret
from oauthmail.sinks.commit import BeforeCommit
from oauthmail.sinks.errors import (
    PermanentSinkError,
    SinkConfigurationError,
    TemporarySinkError,
    redactURL,
    shorten,
)
from oauthmail.text import cleanText
from oauthmail.tokens.http import BytesProducer

RETRYABLE_STATUSES = frozenset({408, 425, 429})
BODY_KEPT = 512  # bytes of the answer's body kept for the error message
#: An answer's body is read up to this much (then the connection is closed):
#: a receiver that streams without end must not keep a delivery reading for ever.
BODY_READ = 64 * 1024


def _headerValue(value: str | Secret) -> bytes:
    if isinstance(value, Secret):
        value = value.reveal()
    # A folder name from the server must not be able to split a header.
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8")


@implementer(ISink, IClosable)
class WebhookSink:
    """POSTs each message to ``url``.

    :param url: ``http://`` or ``https://``.
    :param reactor: for connections and the timeout.
    :param timeout: seconds for the whole exchange before it is a temporary failure.
    :param headers: extra request headers; values may be ``Secret``.
    :param agent: an ``IAgent`` to use instead of the verifying default.
    """

    def __init__(
        self,
        url: str,
        reactor,
        timeout: float = 60.0,
        headers: Mapping[str, str | Secret] | None = None,
        *,
        agent=None,
    ) -> None:
        shown = redactURL(url)
        try:
            parts = urlsplit(url)
        except ValueError:
            raise SinkConfigurationError(f"webhook sink: bad URL {shown}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SinkConfigurationError(f"webhook sink: {shown} is not an http(s) URL")
        if not url.isascii():
            raise SinkConfigurationError(f"webhook sink: {shown} must be ASCII (percent-encode it)")
        self.url = url
        self.name = f"webhook:{shown}"
        self._reactor = reactor
        self._timeout = timeout
        self._headers = dict(headers or {})
        self._pool = None
        if agent is None:
            self._pool = HTTPConnectionPool(reactor, persistent=True)
            routes = RoutingEndpointFactory(reactor, BrowserLikePolicyForHTTPS(), DIRECT, timeout)
            agent = Agent.usingEndpointFactory(reactor, routes, pool=self._pool)
        self._agent = agent

    def close(self) -> defer.Deferred:
        """Close the kept-alive connections (when the service stops)."""
        if self._pool is None:
            return defer.succeed(None)
        return self._pool.closeCachedConnections()

    def deliver(
        self, message: bytes, account: str, folder: str, beforeCommit: BeforeCommit = None
    ) -> defer.Deferred:
        """POST the message; fire with the status code once a 2xx comes back.

        ``beforeCommit`` (see ``ISink``) is called before the request leaves.
        """
        if not isinstance(message, bytes):
            return defer.fail(PermanentSinkError(f"{self.name}: a message must be bytes"))
        if beforeCommit is not None:
            try:
                beforeCommit()
            except Exception:
                return defer.fail()
        timedOut: list[bool] = []

        def onTimeout(result, timeout):
            timedOut.append(True)
            return result

        d = defer.ensureDeferred(self._post(message, account, folder))
        d.addTimeout(self._timeout, self._reactor, onTimeoutCancel=onTimeout)
        d.addErrback(self._explain, timedOut)
        return d

    async def _post(self, message: bytes, account: str, folder: str) -> int:
        headers = Headers(
            {
                b"Content-Type": [b"message/rfc822"],
                b"X-OAuthMail-Account": [_headerValue(account)],
                b"X-OAuthMail-Folder": [_headerValue(folder)],
                b"User-Agent": [b"oauthmail"],
            }
        )
        for key, value in self._headers.items():
            headers.setRawHeaders(key.encode("ascii"), [_headerValue(value)])
        response = await self._agent.request(
            b"POST", self.url.encode("ascii"), headers, BytesProducer(message)
        )
        status = response.code
        try:
            # readBounded closes the connection past the limit, and when the
            # delivery's timeout cancels it.
            said = (await readBounded(response, BODY_READ))[:BODY_KEPT]
        except (ResponseTooLarge, IncompleteAnswer):
            said = b""  # the status is the answer; its text only explains a refusal

        if 200 <= status < 300:
            return status
        detail = f"{self.name}: HTTP {status}"
        text = shorten(said.decode("utf-8", "replace"), 120)
        if text:
            detail = f"{detail}: {text}"
        if status >= 500 or status in RETRYABLE_STATUSES:
            raise TemporarySinkError(detail)
        raise PermanentSinkError(detail)

    def _explain(self, failure, timedOut: list[bool]):
        """Turn anything that is not already a sink error into a temporary one."""
        if timedOut or failure.check(defer.TimeoutError, defer.CancelledError):
            raise TemporarySinkError(f"{self.name}: no answer after {self._timeout:g}s")
        if failure.check(TemporarySinkError, PermanentSinkError):
            return failure
        reason = type(failure.value).__name__
        inner = getattr(failure.value, "reasons", None)  # ResponseFailed and friends
        if inner:
            cause = inner[0].value
            text = cleanText(cause, 120)
            reason = f"{reason} ({type(cause).__name__}{': ' + text if text else ''})"
        raise TemporarySinkError(f"{self.name}: {reason}")
