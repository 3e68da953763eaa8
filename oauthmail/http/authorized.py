"""``AuthorizedAgent``: a Twisted ``IAgent`` that calls HTTP APIs with one account's token.

The same OAuth grant that reads and sends mail can authorise REST calls
(Microsoft Graph, Google People, ...): ask for their scopes with the account's
``api_scopes`` and wrap any ``IAgent`` in an :class:`AuthorizedAgent`::

    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    response = await agent.request(b"GET", b"https://graph.microsoft.com/v1.0/me")

Rules a reader must not break:

- The token goes only over verified TLS (plain ``http`` only to a loopback
  address) and only to the origin (scheme, host, port) of the URL it was
  asked for. Redirects are not followed unless ``followRedirects=True``; then
  a hop to another origin goes without the token, and so does every hop after it.
- A ``401`` whose ``WWW-Authenticate`` says the bearer token is bad
  (``error="invalid_token"``, or a ``Bearer`` challenge without an error, as
  Microsoft Graph answers) makes the agent refresh the token once
  (``ITokenSource.forceRefresh``) and send the request once more — only if
  its body can be sent again: no body, or an
  :class:`~oauthmail.http.body.IReplayableBody` such as
  :class:`~oauthmail.http.body.BytesBody`. Otherwise the ``401`` is returned.
  A token that came from such a refresh is not refreshed again when it is
  refused in turn (its ``401`` is returned): the API refuses fresh tokens, so
  asking the provider for one more with every request would only hammer its
  token endpoint. The next token the account gets (the refresher's, before
  expiry) earns one forced refresh again.
- The caller's ``Headers`` are never changed (the token goes into a copy) and
  no header value is ever logged.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from oauthmail.http.body import IReplayableBody, discardBody
from oauthmail.interfaces import ITokenSource
from oauthmail.loopback import isLoopbackHost
from oauthmail.secret import Secret
from oauthmail.text import cleanText

__all__ = ["AuthorizedAgent", "InsecureURLError", "bearerError", "checkURL", "sameOrigin"]

log = Logger()

#: The redirect codes, and those that keep the method and the body.
REDIRECTS = (301, 302, 303, 307, 308)
KEEPS_METHOD = (307, 308)

_BEARER = re.compile(r"(?:^|,)\s*bearer\b(?P<params>[^\n]*)", re.IGNORECASE)
_ERROR = re.compile(r'(?:^|[\s,])error\s*=\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s,]+))', re.I)


class InsecureURLError(ValueError):
    """A URL a token must not be sent to (not https, and not a loopback http)."""


def checkURL(url: str) -> tuple[str, str, int]:
    """The origin ``(scheme, host, port)`` of ``url``, or :class:`InsecureURLError`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise InsecureURLError(f"not a valid URL: {scheme}://{parts.netloc}") from None
    if not host:
        # Shown as given, without a user:password or a query that may hold a secret.
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2], query="", fragment="")
        raise InsecureURLError(f"not a URL with a host: {cleanText(bare.geturl(), 200)!r}")
    if scheme == "http" and not isLoopbackHost(host):
        raise InsecureURLError(f"a token goes over https only (http to loopback): http://{host}")
    if scheme not in ("https", "http"):
        raise InsecureURLError(f"URL must use https: {scheme}://{host}")
    return scheme, host, port if port is not None else (443 if scheme == "https" else 80)


def sameOrigin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port (RFC 6454)."""
    try:
        return checkURL(a) == checkURL(b)
    except InsecureURLError:
        return False


def bearerError(challenges: Sequence[str]) -> str | None:
    """The ``error`` of the first ``Bearer`` challenge (``""`` if it has none); ``None``
    if no value of ``WWW-Authenticate`` is a Bearer challenge (RFC 6750 §3)."""
    for value in challenges:
        match = _BEARER.search(value)
        if match is None:
            continue
        error = _ERROR.search(match.group("params"))
        if error is None:
            return ""
        return error.group("quoted") if error.group("quoted") is not None else error.group("bare")
    return None


def tokenRefused(response: IResponse) -> bool:
    """A ``401`` that says the bearer token itself is bad (expired, revoked, malformed)."""
    if response.code != 401:
        return False
    values = [v.decode("latin-1") for v in response.headers.getRawHeaders(b"www-authenticate", [])]
    return bearerError(values) in ("invalid_token", "")


def _replay(body: IBodyProducer | None) -> tuple[bool, IBodyProducer | None]:
    """Whether ``body`` can go again, and the producer for the next attempt."""
    if body is None:
        return True, None
    if IReplayableBody.providedBy(body):
        return True, body.replay()
    return False, None


@implementer(IAgent)
class AuthorizedAgent:
    """An ``IAgent`` adding ``Authorization: Bearer`` for ``account`` (see the module's rules).

    :param agent: the agent that sends (e.g. ``oauthmail.http.agent.AgentFactory().agent()``).
    :param tokens: the ``ITokenSource`` the account's token comes from.
    :param followRedirects: follow ``3xx`` answers (at most ``maxRedirects`` hops).
    """

    def __init__(
        self,
        agent: IAgent,
        tokens: ITokenSource,
        account: str,
        *,
        followRedirects: bool = False,
        maxRedirects: int = 5,
    ) -> None:
        self._agent = agent
        self._tokens = tokens
        self.account = account
        self._follow = followRedirects
        self._maxRedirects = maxRedirects
        #: A digest of the token the last forced refresh gave (never the token itself).
        self._refreshed: bytes | None = None

    def __repr__(self) -> str:
        return f"<AuthorizedAgent {self.account}>"

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> defer.Deferred[IResponse]:
        """Send the request with the account's token; fire with the ``IResponse``."""
        return defer.ensureDeferred(self._request(method, uri, headers, bodyProducer))

    async def _request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None,
        body: IBodyProducer | None,
    ) -> IResponse:
        url = uri.decode("ascii")
        checkURL(url)
        response = await self._withToken(method, url, headers, body)
        origin = url
        trusted = True  # every hop so far stayed on the first URL's origin
        for _ in range(self._maxRedirects if self._follow else 0):
            location = response.headers.getRawHeaders(b"location", [None])[0]
            if response.code not in REDIRECTS or location is None:
                break
            if response.code in KEEPS_METHOD:
                again, body = _replay(body)
                if not again:
                    break  # the caller gets the redirect: its body cannot go twice
            elif method not in (b"GET", b"HEAD"):
                method, body = b"GET", None
            target = urljoin(url, location.decode("latin-1"))
            await discardBody(response)
            url = target
            trusted = trusted and sameOrigin(origin, url)
            if trusted:
                response = await self._withToken(method, url, headers, body)
            else:
                checkURL(url)  # no token, but never a downgrade to remote plain http
                response = await self._agent.request(
                    method, url.encode("ascii"), _copy(headers), body
                )
        return response

    async def _withToken(
        self, method: bytes, url: str, headers: Headers | None, body: IBodyProducer | None
    ) -> IResponse:
        token = await self._tokens.accessToken(self.account)
        response = await self._agent.request(
            method, url.encode("ascii"), _copy(headers, token.reveal()), body
        )
        if not tokenRefused(response) or _digest(token) == self._refreshed:
            return response
        again, body = _replay(body)
        if not again:
            return response
        log.info(
            "{account}: {host} refused the access token (401); refreshing it once",
            account=self.account,
            host=urlsplit(url).hostname,
        )
        await discardBody(response)
        token = await self._tokens.forceRefresh(self.account)
        self._refreshed = _digest(token)
        return await self._agent.request(
            method, url.encode("ascii"), _copy(headers, token.reveal()), body
        )


def _digest(token: Secret) -> bytes:
    return hashlib.sha256(token.reveal().encode("utf-8")).digest()


def _copy(headers: Headers | None, token: str | None = None) -> Headers:
    """A copy of the caller's headers with (or without) our ``Authorization``."""
    copy = headers.copy() if headers is not None else Headers()
    copy.removeHeader(b"authorization")
    if token is not None:
        copy.setRawHeaders(b"authorization", [b"Bearer " + token.encode("ascii")])
    return copy
