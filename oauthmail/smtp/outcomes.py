"""What an SMTP reply means for a queued message, in words an operator can act on.

The outbound queue has to make one decision per reply: done (``2xx``), try again
later (``4xx``, a dropped connection, a timeout) or give up (``5xx``). That
decision is taken here, by pure functions, so that it can be tested without a
server. Authentication failures get a decision of their own, because a refused
token is usually fixed by one forced refresh while a tenant that has SMTP AUTH
switched off is not fixed by anything the daemon can do.

Replies that providers are known to send are explained in plain words
(:func:`explain`): an operator reading ``535 5.7.139`` on the console should
learn that an administrator must enable SMTP AUTH, not go looking for a bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oauthmail.text import cleanText

__all__ = [
    "OK",
    "PERMANENT",
    "TEMPORARY",
    "REFRESH",
    "AuthVerdict",
    "Reply",
    "classify",
    "classifyAuthFailure",
    "describe",
    "enhancedCode",
    "explain",
]

#: The reply says the command (or the message) was accepted.
OK = "ok"
#: Try again later: 4xx replies, a lost connection, a timeout.
TEMPORARY = "temporary"
#: Give up on this recipient or message: 5xx replies.
PERMANENT = "permanent"
#: (Authentication only) the token was refused: refresh it once and try again.
REFRESH = "refresh"

#: Microsoft 365 with SMTP AUTH switched off for the tenant or the mailbox.
SMTP_AUTH_DISABLED = (
    "SMTP AUTH is disabled for this Microsoft 365 tenant (SmtpClientAuthentication); "
    "an administrator must enable it for the mailbox"
)
#: Exchange (HVE) refuses tokens that expire within a few minutes.
TOKEN_EXPIRES_SOON = "the provider refused a token about to expire; raise refresher.margin"
#: A refused bearer token (Dovecot 5.7.8, Microsoft 5.7.3, Google 5.7.8/5.7.9).
TOKEN_REFUSED = "the provider refused the access token"
#: Dovecot (and others) when the token could not be checked right now.
AUTH_TEMPORARY = "the provider could not check the access token right now; will retry"

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


def enhancedCode(text: str | bytes) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply text (``"5.7.139"``)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    match = _ENHANCED.match(text)
    if match is None:
        return None
    return ".".join(match.groups())


def classify(code: int) -> str:
    """``OK``, ``TEMPORARY`` or ``PERMANENT`` for a reply code.

    ``code <= 0`` stands for "no reply" (network error, timeout, local
    failure): temporary, like a ``4xx``. Intermediate ``3xx`` replies count as
    success of the command they answer.
    """
    if 200 <= code < 400:
        return OK
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


def explain(code: int, text: str | bytes) -> str | None:
    """Plain words for a reply a provider is known to send, or ``None``."""
    enhanced = enhancedCode(text)
    lowered = (text.decode("utf-8", "replace") if isinstance(text, bytes) else text).lower()
    if enhanced == "5.7.139" or "smtpclientauthentication is disabled" in lowered:
        return SMTP_AUTH_DISABLED
    if enhanced == "5.5.127" or (code == 501 and "expire soon" in lowered):
        return TOKEN_EXPIRES_SOON
    return None


def describe(code: int, text: str | bytes) -> str:
    """One printable line: ``"535 5.7.139 ... (explanation)"``; never longer than 300."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = cleanText(f"{code} {text}" if code > 0 else text, 240)
    words = explain(code, text)
    if words:
        line = f"{line} ({words})"
    return line


@dataclass(frozen=True)
class Reply:
    """A server reply (or a local stand-in for one: ``code`` 0 means "no reply")."""

    code: int
    text: str

    @property
    def status(self) -> str:
        return classify(self.code)

    @property
    def explanation(self) -> str | None:
        return explain(self.code, self.text)

    def __str__(self) -> str:
        return describe(self.code, self.text)


@dataclass(frozen=True)
class AuthVerdict:
    """What to do after a failed AUTH: ``REFRESH``, ``TEMPORARY`` or ``PERMANENT``."""

    action: str
    reason: str


def classifyAuthFailure(code: int, text: str | bytes, tokenRejected: bool) -> AuthVerdict:
    """Decide what a failed authentication means.

    ``tokenRejected`` is the SASL adapter's verdict on the server's error
    challenge (``{"status": "401"}`` or ``invalid_token``). The order matters:

    - ``4xx`` (Dovecot's ``454 4.7.0`` when its token check is down, ``421``):
      temporary, the token is probably fine — never a reason to refresh;
    - ``5.7.139``: SMTP AUTH disabled for the tenant, a refresh cannot help;
    - ``5.5.127``: the token was about to expire — a fresh token fixes it;
    - a challenge that said the token is bad, or a bare ``535``: refresh once;
    - anything else ``5xx`` (e.g. ``504`` mechanism not supported): permanent.
    """
    reason = describe(code, text)
    status = classify(code)
    if status == TEMPORARY:
        return AuthVerdict(TEMPORARY, f"{reason} ({AUTH_TEMPORARY})")
    if explain(code, text) == SMTP_AUTH_DISABLED:
        return AuthVerdict(PERMANENT, reason)
    if explain(code, text) == TOKEN_EXPIRES_SOON:
        return AuthVerdict(REFRESH, reason)
    if tokenRejected or code == 535:
        return AuthVerdict(REFRESH, f"{reason} ({TOKEN_REFUSED})")
    return AuthVerdict(PERMANENT, reason)
