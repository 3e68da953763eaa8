"""Sending through the Gmail API: ``users.messages.send`` with the raw message.

Up to ``upload_above`` bytes (3.5 MB, where the mail peers switch) the
message goes as JSON, ``POST {base}/gmail/v1/users/me/messages/send`` with
``{"raw": base64url(message)}``; bigger ones as a media upload, ``POST
{base}/upload/gmail/v1/users/me/messages/send?uploadType=media`` with the
bytes themselves (``message/rfc822``), up to Gmail's 35 MB. The answer's
``id`` (Gmail's message id) is recorded in the outcome.
"""

from __future__ import annotations

import base64
import json

from oauthmail.config import AccountConfig
from oauthmail.http.exchange import Answer
from oauthmail.secret import Secret
from oauthmail.text import cleanText
from oauthmail.transports.session import APIRequest, APISender

__all__ = ["GMAIL_MAX_MESSAGE", "GMAIL_UPLOAD_ABOVE", "GmailAPISender"]

#: Above this many bytes a message goes through the upload endpoint.
GMAIL_UPLOAD_ABOVE = 3_500_000
#: Gmail's limit on a message (uploads included).
GMAIL_MAX_MESSAGE = 35 * 1024 * 1024


class GmailAPISender(APISender):
    """The Gmail API's ``messages.send``, as the queue's sender for ``transport: gmail_api``."""

    api = "the Gmail API"
    upload_above = GMAIL_UPLOAD_ABOVE

    def tooLarge(self, data: bytes) -> str | None:
        if len(data) <= GMAIL_MAX_MESSAGE:
            return None
        return (
            f"the message is {len(data) / 1e6:.1f} MB and the Gmail API takes messages of at"
            f" most {GMAIL_MAX_MESSAGE / 1e6:.1f} MB"
        )

    def request(self, account: AccountConfig, token: Secret, data: bytes) -> APIRequest:
        base = account.smtp.base_url if account.smtp is not None else None
        auth = f"Bearer {token.reveal()}"
        if len(data) > self.upload_above:
            return APIRequest(
                b"POST",
                f"{base}/upload/gmail/v1/users/me/messages/send?uploadType=media",
                {"Authorization": auth, "Content-Type": "message/rfc822"},
                data,
            )
        raw = base64.urlsafe_b64encode(data).decode("ascii")
        return APIRequest(
            b"POST",
            f"{base}/gmail/v1/users/me/messages/send",
            {"Authorization": auth, "Content-Type": "application/json"},
            json.dumps({"raw": raw}).encode("ascii"),
        )

    def accepted(self, answer: Answer) -> str:
        try:
            found = json.loads(answer.body).get("id")
        except (ValueError, AttributeError, RecursionError):  # nested beyond reason
            found = None
        if not isinstance(found, str) or not found:
            return f"2.0.0 sent through the Gmail API (HTTP {answer.status}; no id in the answer)"
        return f"2.0.0 sent through the Gmail API (id {cleanText(found, 64)})"
