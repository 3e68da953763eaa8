"""HTTP plumbing of the test provider: the site, form parsing and JSON/HTML answers.

Rules: no access log (a query string may carry a token); a request's
parameters may not repeat (RFC 6749 section 3.2); every JSON answer is
``no-store``; pages escape everything they show.
"""

from __future__ import annotations

import html
import json as _json
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from oauthmail.testing.oauth.errors import OAuthError

__all__ = [
    "Router",
    "answerJSON",
    "Site",
    "finishJSON",
    "gone",
    "page",
    "params",
    "redirect",
    "requireForm",
    "retryAfter",
    "track",
]

Handler = Callable[[server.Request], "bytes | int"]


class Site(server.Site):
    """A Site that can close every connection it accepted and keeps no access log.

    The access log is off because a query string may carry a token; closing the
    connections lets ``stop()`` leave nothing behind, hung requests included.
    """

    noisy = False

    def __init__(self, resource: Resource, reactor: IReactorTime) -> None:
        super().__init__(resource, reactor=reactor)
        self._open: dict[Any, defer.Deferred[None]] = {}
        self._transports: dict[Any, Any] = {}

    def buildProtocol(self, addr):  # noqa: ANN001, ANN201 - Twisted signature
        proto = super().buildProtocol(addr)
        closed: defer.Deferred[None] = defer.Deferred()
        self._open[proto] = closed
        makeConnection, connectionLost = proto.makeConnection, proto.connectionLost

        # Both are IProtocol's public methods: the transport is learnt as it is
        # handed over, so that closeAll() needs nothing private of the channel.
        def madeConnection(transport):  # noqa: ANN001, ANN202
            self._transports[proto] = transport
            return makeConnection(transport)

        def lostConnection(reason):  # noqa: ANN001, ANN202
            try:
                return connectionLost(reason)
            finally:
                self._open.pop(proto, None)
                self._transports.pop(proto, None)
                closed.callback(None)

        proto.makeConnection = madeConnection
        proto.connectionLost = lostConnection
        return proto

    def log(self, request: IRequest) -> None:
        """No access log: URLs may carry secrets."""

    def closeAll(self) -> defer.Deferred[Any]:
        """Close every connection now; fires when all of them are gone."""
        waits = list(self._open.values())
        for transport in list(self._transports.values()):
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()
        return defer.gatherResults(waits, consumeErrors=True)


class Router(Resource):
    """Dispatches each path to its handler by method; one leaf keeps routing explicit."""

    isLeaf = True

    def __init__(self, routes: dict[str, dict[str, Handler]]) -> None:
        super().__init__()
        self.routes = routes

    def render(self, request: server.Request) -> bytes | int:
        path = request.path.decode("utf-8", "replace").rstrip("/") or "/"
        method = request.method.decode("ascii", "replace")
        methods = self.routes.get(path)
        if methods is None:
            return page(request, 404, "Not found", "There is nothing here.")
        handler = methods.get(method)
        if handler is None:
            request.setHeader(b"Allow", ", ".join(methods).encode())
            return page(request, 405, "Method not allowed", f"Use {', '.join(methods)}.")
        return handler(request)


def retryAfter(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def gone(request: server.Request) -> bool:
    """The request was answered already, or its client went away (see :func:`track`)."""
    return bool(request.finished) or request in _lost


def track(request: server.Request) -> None:
    """Remember when the client of a request that may wait goes away (``notifyFinish``)."""

    def lost(_: object) -> None:
        _lost.add(request)

    request.notifyFinish().addErrback(lost)


#: Requests whose client went away before they were answered.
_lost: weakref.WeakSet[server.Request] = weakref.WeakSet()


def requireForm(request: server.Request) -> None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "expected application/x-www-form-urlencoded")


def params(request: server.Request, allow_raw_body: bool = False) -> dict[str, str]:
    """The request's parameters; RFC 6749 section 3.2 forbids repeating one."""
    args = dict(request.args or {})
    if allow_raw_body and request.method == b"POST" and not args and request.content:
        # Tolerate a form body sent without the form Content-Type.
        request.content.seek(0)
        raw = request.content.read()
        pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        for key, value in pairs:
            args.setdefault(key.encode(), []).append(value.encode())
    out: dict[str, str] = {}
    for key, values in args.items():
        name = key.decode("utf-8", "replace")
        if len(values) != 1:
            raise OAuthError("invalid_request", f"parameter {name} is repeated")
        try:
            out[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", f"parameter {name} is not UTF-8") from None
    return out


def answerJSON(
    request: server.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> bytes:
    """Set the status and JSON headers, and return the body to send."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Pragma", b"no-cache")
    for name, value in (headers or {}).items():
        request.setHeader(name.encode("ascii"), value.encode("latin-1"))
    return _json.dumps(body).encode("utf-8")


def finishJSON(
    request: server.Request,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> None:
    """Answer a request that was left waiting (``NOT_DONE_YET``), unless it is gone."""
    if gone(request):
        return
    payload = answerJSON(request, status, body, headers)
    request.write(payload)
    request.finish()


def redirect(request: server.Request, uri: str, answer: dict[str, str | None]) -> bytes:
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in answer.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    location = urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))
    request.setResponseCode(302)
    request.setHeader(b"Location", location.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Redirecting.\n"


def page(request: server.Request, status: int, title: str, text: str, form: str = "") -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    doc = (
        f"<!doctype html><title>{html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}"
    )
    return doc.encode("utf-8")
