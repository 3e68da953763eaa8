"""What a mail API's HTTP answer means for a queued message, in the queue's words.

One pure function, :func:`judge`, turns an answer into a :class:`Judgement`:
the queue's kind (:data:`~oauthmail.smtp.outcomes.OK`, ``TEMPORARY``,
``PERMANENT``, ``QUOTA``, ``REFRESH``), an SMTP-like code and one line of text
for the records and bounces (``5.7.1 Microsoft Graph answered 403
ErrorAccessDenied: ...``), and what the session does next. The table:

====================================  ==================================================
answer                                meaning
====================================  ==================================================
``2xx``                               sent (250), for every recipient
``401``                               token refused: the session ends, the queue
                                      refreshes once and sends the rest again
``429``, ``503``, ``504``,            throttled: wait ``Retry-After`` (capped) or a
Gmail's rate-limit ``403``            growing backoff, then the same request again
``403`` that says the token lacks     an account problem (permission, scope): the
permission, ``404`` (no mailbox)      session ends, the mail stays queued, the
                                      account shows the error
other ``403``                         permanent for the message, with the reason
``413``                               permanent: too large for the API, with the limit
other ``4xx``                         permanent for the message (bad MIME, ...)
other ``5xx``, ``3xx``                temporary: the message waits, the session ends
====================================  ==================================================

Texts come from servers: they are cleaned to one bounded line here; the
session scrubs the token from them as well.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from oauthmail.http.retryafter import parseRetryAfter
from oauthmail.smtp import outcomes
from oauthmail.text import cleanText

__all__ = ["Judgement", "apiError", "judge"]

#: Gmail's ``403``/``429`` reasons that mean "slow down", not "forbidden".
RATE_REASONS = frozenset(
    {"ratelimitexceeded", "userratelimitexceeded", "dailylimitexceeded", "quotaexceeded"}
)
#: ``403`` codes and reasons that say the token (not the message) is not allowed to send.
ACCOUNT_REASONS = frozenset(
    {
        "erroraccessdenied",
        "authorization_requestdenied",
        "insufficientpermissions",
        "access_token_scope_insufficient",
        "accessdenied",
    }
)
THROTTLED = (429, 503, 504)


@dataclass(frozen=True)
class Judgement:
    """What to do with one answer (see the module's table).

    ``ends``: the session stops after this message (the rest waits); ``account``:
    the problem is the account's (its state shows it; mail stays queued);
    ``throttled``: wait (``pause`` if the API said how long) and send again.
    """

    kind: str
    code: int
    text: str
    ends: bool = False
    account: bool = False
    throttled: bool = False
    pause: float | None = None


def apiError(body: bytes) -> tuple[str, str]:
    """The API's error code (Graph's ``code``, Gmail's ``errors[0].reason``) and message."""
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError, RecursionError):  # nested beyond reason
        return "", cleanText(body.decode("utf-8", "replace"), 200)
    if not isinstance(error, dict):
        return "", cleanText(error, 200)
    code = error.get("code")
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        code = errors[0].get("reason") or error.get("status") or code
    elif not isinstance(code, str):
        code = error.get("status") or code
    return cleanText(code if code is not None else "", 80), cleanText(error.get("message"), 200)


def judge(api: str, status: int, body: bytes, retry_after: str | None, now: float) -> Judgement:
    """What ``status`` (with its ``body`` and ``Retry-After``) from ``api`` means."""
    if 200 <= status < 300:
        return Judgement(outcomes.OK, 250, f"2.0.0 accepted by {api} (HTTP {status})")
    code, message = apiError(body)
    said = cleanText(f"{api} answered HTTP {status} {code}: {message}".replace(" :", ":"), 280)
    pause = parseRetryAfter(retry_after, now)
    lowered = code.lower()
    if status == 401:
        return Judgement(outcomes.REFRESH, 535, f"5.7.8 {said}", ends=True, account=True)
    if status in THROTTLED or (status == 403 and lowered in RATE_REASONS):
        kind = outcomes.QUOTA if status != 503 or lowered in RATE_REASONS else outcomes.TEMPORARY
        return Judgement(kind, 451, f"4.7.0 {said}", throttled=True, pause=pause)
    if status == 403 and lowered in ACCOUNT_REASONS:
        return Judgement(outcomes.PERMANENT, 550, f"5.7.1 {said}", ends=True, account=True)
    if status == 404:
        return Judgement(outcomes.PERMANENT, 550, f"5.1.1 {said}", ends=True, account=True)
    if status == 413:
        return Judgement(outcomes.PERMANENT, 552, f"5.3.4 message too large: {said}")
    if status == 403:
        return Judgement(outcomes.PERMANENT, 550, f"5.7.1 {said}")
    if 400 <= status < 500:
        return Judgement(outcomes.PERMANENT, 554, f"5.6.0 {said}")
    if 500 <= status < 600:
        return Judgement(outcomes.TEMPORARY, 451, f"4.3.0 {said}", ends=True, pause=pause)
    return Judgement(
        outcomes.TEMPORARY, 451, f"4.5.0 unexpected answer: {said}", ends=True, pause=pause
    )
