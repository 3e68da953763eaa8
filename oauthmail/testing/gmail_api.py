"""A local fake of the Gmail API's sending, for tests: ``users.messages.send``.

It follows the documented shapes (developers.google.com/gmail/api: sending,
uploads, handle-errors):

- ``POST /gmail/v1/users/{me | address}/messages/send`` with JSON
  ``{"raw": base64url(MIME)}``: ``200 {"id", "threadId", "labelIds": ["SENT"]}``.
- ``POST /upload/gmail/v1/users/{me | address}/messages/send?uploadType=media``
  with the message itself (``Content-Type: message/rfc822``): the same answer.
- a JSON request over 5 MB or an upload over 35 MB: ``413``; no or a bad token:
  ``401`` with ``WWW-Authenticate: Bearer ... error="invalid_token"``; another
  user's mailbox: ``403``; no ``raw``: ``400 invalidArgument``.
- ``GET /gmail/v1/users/me/profile``: ``{"emailAddress", ...}``, the identity check.

Errors are ``{"error": {"code", "message", "errors": [{"reason", ...}],
"status"}}``. Faults (:meth:`failNext` and friends) come from
:class:`~oauthmail.testing.mailapi.MailAPIFake`; ``code`` there is the
``errors[0].reason`` (``rateLimitExceeded``, ``insufficientPermissions``, ...).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from twisted.web import server

from oauthmail.testing.mailapi import MailAPIFake, SentMessage, notFound
from oauthmail.testing.oauth.http import answerJSON

__all__ = ["GMAIL_MAX_JSON", "GMAIL_MAX_UPLOAD", "GmailAPIFake"]

#: What the fake takes in one JSON request, and in one media upload (Gmail's 35 MB).
GMAIL_MAX_JSON = 5 * 1024 * 1024
GMAIL_MAX_UPLOAD = 35 * 1024 * 1024

#: ``status -> (reason, message, status word)`` as Google words them.
_ERRORS = {
    400: ("invalidArgument", "Invalid request.", "INVALID_ARGUMENT"),
    401: (
        "authError",
        "Request had invalid authentication credentials. Expected OAuth 2 access token,"
        " login cookie or other valid authentication credential.",
        "UNAUTHENTICATED",
    ),
    403: ("forbidden", "Delegation denied.", "PERMISSION_DENIED"),
    413: ("uploadTooLarge", "Request payload size exceeds the limit.", "OUT_OF_RANGE"),
    429: ("rateLimitExceeded", "User-rate limit exceeded.", "RESOURCE_EXHAUSTED"),
    500: ("backendError", "Backend Error", "INTERNAL"),
    503: ("backendError", "The service is currently unavailable.", "UNAVAILABLE"),
}


class GmailAPIFake(MailAPIFake):
    """The Gmail API's ``messages.send`` (JSON ``raw`` and media upload) and ``profile``.

    :param max_json: the JSON request limit; :param max_upload: the upload limit.
    """

    def __init__(
        self,
        tokens: Any,
        *,
        max_json: int = GMAIL_MAX_JSON,
        max_upload: int = GMAIL_MAX_UPLOAD,
        onAccept: Callable[[SentMessage], Any] | None = None,
    ) -> None:
        super().__init__(tokens, onAccept=onAccept)
        self.max_json = max_json
        self.max_upload = max_upload

    def render(self, request: server.Request) -> Any:
        parts = request.path.decode("utf-8", "replace").strip("/").split("/")
        upload = parts[:1] == ["upload"]
        if upload:
            parts = parts[1:]
        if parts[:3] != ["gmail", "v1", "users"] or len(parts) < 5:
            return notFound(request)
        mailbox, rest = parts[3], parts[4:]
        if request.method == b"GET" and rest == ["profile"] and not upload:
            return self._profile(request, mailbox)
        if request.method == b"POST" and rest == ["messages", "send"]:
            return self._send(request, mailbox, upload)
        return notFound(request)

    def error(
        self,
        request: server.Request,
        status: int,
        reason: str | None = None,
        message: str | None = None,
        retry_after: str | None = None,
    ) -> bytes:
        default = _ERRORS.get(status, ("unknown", "Unknown error.", "UNKNOWN"))
        text = message or default[1]
        body = {
            "error": {
                "code": status,
                "message": text,
                "errors": [{"message": text, "domain": "global", "reason": reason or default[0]}],
                "status": default[2],
            }
        }
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        if status == 401:
            headers["WWW-Authenticate"] = (
                'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            )
        return answerJSON(request, status, body, headers)

    def _profile(self, request: server.Request, mailbox: str) -> bytes:
        user = self.user(request)
        if user is None:
            return self.error(request, 401)
        if mailbox not in ("me", user):
            return self.error(request, 403)
        total = sum(1 for m in self.messages if m.user == user)
        return answerJSON(
            request,
            200,
            {"emailAddress": user, "messagesTotal": total, "threadsTotal": total},
        )

    def _send(self, request: server.Request, mailbox: str, upload: bool) -> Any:
        fault = self.nextFault()
        body = request.content.read()
        if fault is not None:
            if self.applyFault(fault, request, lambda: self._decoded(request, body, upload)):
                return server.NOT_DONE_YET
            status = fault.status or 500
            return self.error(request, status, fault.code, fault.message, fault.retry_after)
        user = self.user(request)
        if user is None:
            return self.error(request, 401)
        if mailbox not in ("me", user):
            return self.error(request, 403, "forbidden", "Delegation denied for " + user)
        if len(body) > (self.max_upload if upload else self.max_json):
            return self.error(
                request,
                413,
                message=f"Request payload size exceeds the limit: "
                f"{self.max_upload if upload else self.max_json} bytes.",
            )
        if upload:
            uploadType = request.args.get(b"uploadType", [b""])[0]
            if uploadType != b"media":
                return self.error(request, 400, message="the fake takes uploadType=media only")
            raw: bytes | None = body
        else:
            raw = _raw(body)
            if raw is None:
                return self.error(
                    request,
                    400,
                    message="'raw' RFC822 payload message string or uploading message via"
                    " /upload/* URL required",
                )
        if not raw.strip():
            return self.error(request, 400, "failedPrecondition", "Recipient address required")
        message, filed = self.accept(user, raw, "upload" if upload else "send")

        def answer(_: object) -> None:
            if request.finished or request.channel is None:
                return
            request.write(
                answerJSON(
                    request,
                    200,
                    {"id": message.id, "threadId": message.id, "labelIds": ["SENT"]},
                )
            )
            request.finish()

        filed.addBoth(answer)
        return server.NOT_DONE_YET

    def _decoded(
        self, request: server.Request, body: bytes, upload: bool
    ) -> tuple[str, bytes] | None:
        user = self.user(request)
        raw = body if upload else _raw(body)
        if user is None or raw is None:
            return None
        return user, raw


def _raw(body: bytes) -> bytes | None:
    """The message in a ``{"raw": base64url}`` request (padding optional), or ``None``."""
    try:
        value = json.loads(body).get("raw")
    except (ValueError, AttributeError):
        return None
    if not isinstance(value, str):
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None
