"""A local fake of Microsoft Graph's mail sending, for tests: ``sendMail`` with MIME.

It follows the documented shapes (learn.microsoft.com: user-sendmail,
outlook-send-mime-message):

- ``POST /v1.0/users/{id | userPrincipalName}/sendMail`` (and ``/v1.0/me/sendMail``)
  with ``Content-Type: text/plain`` and the MIME message base64-encoded: ``202``
  and no body. Graph returns no id for the message it sent.
- bad base64: ``400 ErrorMimeContentInvalidBase64String``; a request over
  4 MB: ``413 RequestEntityTooLarge``; no or a bad token: ``401
  InvalidAuthenticationToken`` with Graph's ``WWW-Authenticate`` (a Bearer
  challenge without ``error=``); another user's mailbox: ``403
  ErrorAccessDenied`` (unless that user is in ``delegates``: ``Mail.Send.Shared``).
- ``GET /v1.0/me``: ``{"mail", "userPrincipalName", "id"}``, the identity check.

Errors are ``{"error": {"code", "message", "innerError": {...}}}``. Faults
(:meth:`failNext` and friends) come from :class:`~oauthmail.testing.mailapi.MailAPIFake`.

Usage::

    graph = GraphFake(provider)          # or GraphFake(lambda token: "alice@example.com")
    base = graph.listen(reactor)         # smtp: {transport: graph, base_url: <base>}
    ...
    await graph.stop()
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.web import server

from oauthmail.testing.mailapi import MailAPIFake, SentMessage, notFound
from oauthmail.testing.oauth.http import answerJSON

__all__ = ["GRAPH_MAX_REQUEST", "GraphFake"]

#: Graph's limit on a request body (the base64 MIME): 4 MB.
GRAPH_MAX_REQUEST = 4 * 1024 * 1024

_CHALLENGE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", client_id="00000003-0000-0000-c000-000000000000"'
)

#: The error code and message Graph gives for each status.
_ERRORS = {
    400: ("ErrorInvalidRequest", "The request is invalid."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    413: ("RequestEntityTooLarge", "The request is larger than the maximum of 4194304 bytes."),
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "An internal server error occurred."),
    503: ("ServiceUnavailable", "The service is temporarily unavailable."),
    504: ("GatewayTimeout", "The gateway did not receive a timely response."),
}


class GraphFake(MailAPIFake):
    """Microsoft Graph's ``sendMail`` (MIME) and ``/me``, on loopback.

    :param delegates: ``{mailbox: {users who may send as it}}`` (``Mail.Send.Shared``).
    :param max_request: the request size limit (Graph's 4 MB by default).
    """

    prefix = "/v1.0"

    def __init__(
        self,
        tokens: Any,
        *,
        delegates: dict[str, Iterable[str]] | None = None,
        max_request: int = GRAPH_MAX_REQUEST,
        onAccept: Callable[[SentMessage], Any] | None = None,
    ) -> None:
        super().__init__(tokens, onAccept=onAccept)
        self.delegates = {k.lower(): {u.lower() for u in v} for k, v in (delegates or {}).items()}
        self.max_request = max_request

    def render(self, request: server.Request) -> Any:
        parts = request.path.decode("utf-8", "replace").strip("/").split("/")
        if parts[:1] != ["v1.0"]:
            return notFound(request)
        if request.method == b"GET" and parts[1:] == ["me"]:
            return self._me(request)
        if request.method == b"POST" and parts[1:] == ["me", "sendMail"]:
            return self._sendMail(request, None)
        if request.method == b"POST" and len(parts) == 4 and parts[1] == "users":
            if parts[3] == "sendMail":
                return self._sendMail(request, parts[2])
        return notFound(request)

    # -- answers -------------------------------------------------------------------------

    def error(
        self,
        request: server.Request,
        status: int,
        code: str | None = None,
        message: str | None = None,
        retry_after: str | None = None,
    ) -> bytes:
        default = _ERRORS.get(status, ("UnknownError", "An error occurred."))
        body = {
            "error": {
                "code": code or default[0],
                "message": message or default[1],
                "innerError": {"request-id": str(uuid.uuid4()), "date": "2026-01-01T00:00:00"},
            }
        }
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if status == 401:
            headers["WWW-Authenticate"] = _CHALLENGE
        return answerJSON(request, status, body, headers)

    def _me(self, request: server.Request) -> bytes:
        user = self.user(request)
        if user is None:
            return self.error(request, 401)
        return answerJSON(
            request,
            200,
            {
                "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, user)),
                "mail": user,
                "userPrincipalName": user,
            },
        )

    def _sendMail(self, request: server.Request, mailbox: str | None) -> Any:
        fault = self.nextFault()
        body = request.content.read()
        if fault is not None:
            if self.applyFault(fault, request, lambda: self._decoded(request, mailbox, body)):
                return server.NOT_DONE_YET
            return self.error(
                request, fault.status or 500, fault.code, fault.message, fault.retry_after
            )
        user = self.user(request)
        if user is None:
            return self.error(request, 401)
        target = (mailbox or user).lower()
        if target != user.lower() and user.lower() not in self.delegates.get(target, set()):
            return self.error(request, 403, "ErrorAccessDenied")
        if len(body) > self.max_request:
            return self.error(request, 413)
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"text/plain":
            return self.error(
                request, 400, "ErrorInvalidRequest", "MIME content must be sent as text/plain."
            )
        raw = _base64(body)
        if raw is None or not raw.strip():
            return self.error(
                request,
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            )
        message, filed = self.accept(target, raw, "sendMail")

        def answer(_: object) -> None:
            if request.finished or request.channel is None:
                return
            request.setResponseCode(202)
            request.setHeader(b"request-id", message.id.encode())
            request.finish()

        filed.addBoth(answer)
        return server.NOT_DONE_YET

    def _decoded(
        self, request: server.Request, mailbox: str | None, body: bytes
    ) -> tuple[str, bytes] | None:
        user = self.user(request)
        raw = _base64(body)
        if user is None or raw is None:
            return None
        return (mailbox or user).lower(), raw


def _base64(body: bytes) -> bytes | None:
    try:
        return base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
