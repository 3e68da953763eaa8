"""One HTTP request with a deadline and a size cap, and what its failure means.

:func:`exchange` sends a request and reads the whole answer into a bounded
buffer within ``timeout`` seconds. It fails only with :class:`ExchangeFailed`,
which says whether the request may have reached the server:

- ``sent`` is true when the body was handed to the connection in full and the
  answer then did not come (lost connection, timeout): the server may have
  acted on it. A mail API caller records such a message *in doubt*.
- ``sent`` is false when the request cannot have been acted on: no
  connection, a refused certificate (TLS fails before any byte of the
  request is decrypted by the server), a tunnel the proxy would not open, or a
  body that did not go out in full.

Failure texts are one line; they never hold a header value or a body.
"""

from __future__ import annotations

from collections.abc import Mapping

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

from oauthmail.http.body import Answer, BytesBody, HeaderMap, IncompleteAnswer, readBounded
from oauthmail.http.tunnel import TunnelError
from oauthmail.text import cleanText

__all__ = ["Answer", "ExchangeFailed", "exchange"]

#: Mail API answers are small JSON documents; anything far bigger is a broken peer.
DEFAULT_MAX_ANSWER = 1024 * 1024


class ExchangeFailed(Exception):  # noqa: N818 - reads better at the call site
    """No complete answer came. ``sent``: the server may have the request; ``tls``: a
    certificate (or the lack of TLS) was refused."""

    def __init__(self, reason: str, *, sent: bool, tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        self.tls = tls


def _reasons(failure: Failure) -> list[BaseException]:
    """The exceptions inside Twisted's wrappers (``ResponseFailed`` holds a list)."""
    value = failure.value
    found: list[BaseException] = [value]
    inner = getattr(value, "reasons", None)
    if isinstance(inner, list):
        found.extend(f.value for f in inner if isinstance(f, Failure))
    return found


def _describe(value: BaseException) -> str:
    text = cleanText(value, 200)
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


def classify(failure: Failure, body: BytesBody | None, where: str) -> ExchangeFailed:
    """What a failed request means (see the module's rules)."""
    reasons = _reasons(failure)
    inner = next((r for r in reasons if not isinstance(r, ResponseFailed)), reasons[0])
    written = body.written if body is not None else True
    if any(isinstance(r, (SSL.Error, VerificationError)) for r in reasons):
        return ExchangeFailed(f"{where}: TLS failed: {_describe(inner)}", sent=False, tls=True)
    if any(isinstance(r, TunnelError) for r in reasons):
        return ExchangeFailed(cleanText(inner, 300), sent=False)
    if isinstance(failure.value, (ResponseFailed, IncompleteAnswer)) and written:
        return ExchangeFailed(f"{where}: answer lost: {_describe(inner)}", sent=True)
    if isinstance(inner, (error.ConnectError, error.DNSLookupError, error.TimeoutError)):
        return ExchangeFailed(f"{where}: cannot connect: {_describe(inner)}", sent=False)
    return ExchangeFailed(f"{where}: {_describe(inner)}", sent=False)


async def exchange(
    agent: IAgent,
    method: bytes,
    url: str,
    *,
    clock: IReactorTime,
    headers: Mapping[str, str] | None = None,
    body: BytesBody | None = None,
    timeout: float = 60.0,
    max_answer: int = DEFAULT_MAX_ANSWER,
) -> Answer:
    """Send one request; the complete :class:`Answer`, or :class:`ExchangeFailed`."""
    raw = Headers()
    for name, value in (headers or {}).items():
        raw.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
    where = f"{method.decode('ascii')} {url.split('?', 1)[0]}"
    timedOut = []

    async def run() -> Answer:
        response: IResponse = await agent.request(method, url.encode("ascii"), raw, body)
        data = await readBounded(response, max_answer)
        return Answer(response.code, HeaderMap(response.headers), data)

    def onTimeout(result: object, seconds: float) -> object:
        timedOut.append(seconds)
        return result

    d = defer.ensureDeferred(run())
    d.addTimeout(timeout, clock, onTimeoutCancel=onTimeout)
    try:
        return await d
    except ExchangeFailed:
        raise
    except Exception:
        failure = Failure()
        written = body.written if body is not None else True
        if timedOut or failure.check(defer.CancelledError, defer.TimeoutError):
            if timedOut:
                reason = f"{where}: no complete answer within {timeout:g} s"
                raise ExchangeFailed(reason, sent=written) from None
            raise
        raise classify(failure, body, where) from None
