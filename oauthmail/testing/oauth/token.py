"""``POST /token``: counts the request, applies the faults, then answers the grant.

Rules: a request is counted when it arrives, faults or not (tests assert how
many requests a client made); the grant handlers are given as callables so
that the provider (and a test wrapping one) decides which code answers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from twisted.web import server

from oauthmail.testing.oauth.errors import OAuthError
from oauthmail.testing.oauth.http import (
    finishJSON,
    gone,
    params,
    requireForm,
    retryAfter,
)
from oauthmail.testing.oauth.records import DEVICE_GRANT, Client, digest
from oauthmail.testing.oauth.state import Authority
from oauthmail.testing.oauth.waiting import WaitingRoom

__all__ = ["TokenEndpoint", "clientIdOf"]

GrantHandler = Callable[[Client, dict[str, str]], dict[str, Any]]


def clientIdOf(request: server.Request) -> str | None:
    """The client id a request names (body field or Basic), for the wording of errors."""
    values = (request.args or {}).get(b"client_id")
    if values:
        return values[0].decode("utf-8", "replace")
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    if header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return unquote_plus(decoded.partition(":")[0])
    return None


class TokenEndpoint:
    """``POST /token``, with the hang, latency and error-rate faults."""

    def __init__(
        self, authority: Authority, handlers: dict[str, GrantHandler], room: WaitingRoom
    ) -> None:
        self.authority = authority
        self.handlers = handlers
        self.room = room

    def render(self, request: server.Request) -> int:
        authority = self.authority
        authority.requests["token"] += 1
        args = request.args or {}
        grant_values = args.get(b"grant_type") or [b""]
        grant_type = grant_values[0].decode("utf-8", "replace")
        short = "device_code" if grant_type == DEVICE_GRANT else grant_type or "none"
        authority.requests[f"token:{short}"] += 1
        if grant_type == "refresh_token":
            for value in args.get(b"refresh_token", []):
                authority.refresh_presentations[digest(value)] += 1
        faults = authority.faults
        return self.room.admit(request, self.answer, faults.hang, authority.reactor, faults.latency)

    def answer(self, request: server.Request) -> None:
        """Answer one request now: an injected error, or the grant's answer."""
        if gone(request):
            return
        faults = self.authority.faults
        if faults.error_rate > 0 and faults.rng.random() < faults.error_rate:
            status = faults.status
            error = "temporarily_unavailable" if status in (429, 503) else "server_error"
            headers = {}
            if faults.retry_after is not None and status in (429, 503):
                headers["Retry-After"] = retryAfter(faults.retry_after)
            body = {"error": error, "error_description": f"injected fault ({status})"}
            finishJSON(request, status, body, headers)
            return
        try:
            body = self.grant(request)
        except OAuthError as e:
            e = self.authority.shape(e, clientIdOf(request))
            finishJSON(request, e.status, e.body(), e.headers)
        else:
            finishJSON(request, 200, body)

    def grant(self, request: server.Request) -> dict[str, Any]:
        requireForm(request)
        form = params(request)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise OAuthError("invalid_request", "grant_type is missing")
        handler = self.handlers.get(grant_type)
        if handler is None:
            raise OAuthError("unsupported_grant_type", "this grant type is not supported")
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        client = self.authority.authenticateClient(header, form)
        return handler(client, form)
