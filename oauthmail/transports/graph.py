"""Sending through Microsoft Graph: ``POST {base}/users/{address}/sendMail`` with MIME.

For Microsoft 365 tenants where SMTP AUTH is off (``535 5.7.139``). The
request body is the whole message, base64-encoded, as ``text/plain``
(learn.microsoft.com: user-sendmail, "Send Outlook messages in MIME format");
Graph answers ``202`` with no body: **Graph returns no id for the message it
sent**, so the outcome records only that it was accepted.

Graph takes at most 4 MB per request. A message whose base64 form is bigger
fails for good with that reason: oauthmail does not rebuild it as a draft
with an upload session (that route takes JSON messages and attachments, not
the bytes that were submitted).
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from oauthmail.config import AccountConfig
from oauthmail.http.exchange import Answer
from oauthmail.secret import Secret
from oauthmail.transports.session import APIRequest, APISender

__all__ = ["GRAPH_MAX_REQUEST", "GraphSender"]

#: Graph's limit on one request's body, which here is the base64 of the message.
GRAPH_MAX_REQUEST = 4 * 1024 * 1024


def encodedSize(size: int) -> int:
    """The length of the base64 of ``size`` bytes (no line breaks)."""
    return 4 * ((size + 2) // 3)


class GraphSender(APISender):
    """Microsoft Graph ``sendMail`` (MIME), as the queue's sender for ``transport: graph``."""

    api = "Microsoft Graph"

    def tooLarge(self, data: bytes) -> str | None:
        encoded = encodedSize(len(data))
        if encoded <= GRAPH_MAX_REQUEST:
            return None
        return (
            f"the message is {len(data) / 1e6:.1f} MB ({encoded / 1e6:.1f} MB in base64) and"
            f" Microsoft Graph takes at most {GRAPH_MAX_REQUEST / 1e6:.1f} MB per request;"
            " oauthmail does not resend it as a draft with an upload session: send it over"
            " SMTP or make it smaller"
        )

    def request(self, account: AccountConfig, token: Secret, data: bytes) -> APIRequest:
        base = account.smtp.base_url if account.smtp is not None else None
        mailbox = quote(account.address, safe="@")
        return APIRequest(
            b"POST",
            f"{base}/users/{mailbox}/sendMail",
            {"Authorization": f"Bearer {token.reveal()}", "Content-Type": "text/plain"},
            base64.b64encode(data),
        )

    def accepted(self, answer: Answer) -> str:
        return (
            f"2.0.0 accepted by Microsoft Graph (HTTP {answer.status}; Graph gives no message id)"
        )
