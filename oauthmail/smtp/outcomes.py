"""What an SMTP reply means for a queued message, in words an operator can act on.

The outbound queue has to make one decision per reply: done (``2xx``), try again
later (``4xx``, a dropped connection, a timeout), give up (``5xx``), or — for a
provider's sending quota or rate limit — pause the whole account and keep the
messages (:data:`QUOTA`). That decision is taken here, by pure functions over
**one table**, :data:`RULES`, so it can be tested row by row without a server.
Authentication failures get a decision of their own (:func:`classifyAuthFailure`),
because a refused token is usually fixed by one forced refresh while a tenant
that has SMTP AUTH switched off is not fixed by anything the daemon can do.

Rules a reader must not break:

- A rule may only make a reply *softer* than its class says when the provider
  documents that sending resumes by itself (quota, rate and connection limits):
  a ``5xx`` classified :data:`QUOTA` keeps the message queued instead of
  bouncing it. Every row names its source.
- Which reply a *step* expects (only ``354`` lets a message's content go out,
  only a ``2xx`` to the final dot means "sent") is decided by :func:`forStep`;
  any other reply is :data:`TEMPORARY` at best, never :data:`OK`.
- Replies providers are known to send are explained in plain words: an operator
  reading ``535 5.7.139`` on the console learns what an administrator must
  switch on, not to go looking for a bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from oauthmail.text import cleanText

__all__ = [
    "OK",
    "PERMANENT",
    "QUOTA",
    "REFRESH",
    "RULES",
    "TEMPORARY",
    "AuthVerdict",
    "Reply",
    "Rule",
    "Step",
    "Verdict",
    "classify",
    "classifyAuthFailure",
    "describe",
    "enhancedCode",
    "explain",
    "forStep",
    "verdict",
]

#: The reply says the command (or the message) was accepted.
OK = "ok"
#: Try again later: 4xx replies, a lost connection, a timeout, an unexpected reply.
TEMPORARY = "temporary"
#: Give up on this recipient or message: 5xx replies.
PERMANENT = "permanent"
#: (Authentication only) the token was refused: refresh it once and try again.
REFRESH = "refresh"
#: A provider's quota or rate limit: pause the account's sending (see
#: :attr:`Verdict.pause`), keep the messages queued, never bounce them.
QUOTA = "quota"

#: Microsoft 365 refusing SMTP AUTH for the mailbox (535 5.7.139).
SMTP_AUTH_DISABLED = (
    "Microsoft 365 refused SMTP AUTH for this mailbox: SMTP AUTH is off for the tenant or "
    "for the mailbox (SmtpClientAuthenticationDisabled), or Security defaults or a "
    "Conditional Access policy block it; switch the account to the Graph API transport "
    "(smtp: {transport: graph}, see docs/configuration.md), or have an administrator "
    "enable SMTP AUTH for the mailbox and exempt it from those policies"
)
#: Exchange (HVE) refuses tokens that expire within a few minutes.
TOKEN_EXPIRES_SOON = "the provider refused a token about to expire; raise refresher.margin"
#: A refused bearer token (Dovecot 5.7.8, Microsoft 5.7.3, Google 5.7.8/5.7.9).
TOKEN_REFUSED = "the provider refused the access token"
#: Dovecot (and others) when the token could not be checked right now.
AUTH_TEMPORARY = "the provider could not check the access token right now; will retry"

#: Suggested first pauses; the queue grows them (up to 24 h) while the limit holds.
MINUTE = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class Verdict:
    """What one reply means: a kind, a suggested pause (for :data:`QUOTA`) and plain words."""

    kind: str
    pause: float | None = None
    words: str | None = None


@dataclass(frozen=True)
class Rule:
    """One row of :data:`RULES`: a reply pattern and what it means.

    ``code`` is an exact reply code or ``None`` for any; ``enhanced`` an RFC 3463
    code (or its prefix ending in ``.``) at the start of the text, or ``None``;
    ``text`` a case-insensitive regular expression searched in the text, or
    ``None``. All given parts must match.
    """

    code: int | None
    enhanced: str | None
    text: str | None
    verdict: Verdict
    source: str

    def matches(self, code: int, enhanced: str | None, text: str) -> bool:
        if self.code is not None and code != self.code:
            return False
        if self.enhanced is not None:
            if enhanced is None:
                return False
            if self.enhanced.endswith("."):
                if not enhanced.startswith(self.enhanced):
                    return False
            elif enhanced != self.enhanced:
                return False
        return self.text is None or re.search(self.text, text, re.IGNORECASE) is not None


_EXCHANGE_SUBMISSION = (
    "https://learn.microsoft.com/exchange/troubleshoot/send-emails/smtp-submission-improvements"
)
_EXCHANGE_SMTP_AUTH = (
    "https://learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/"
    "authenticated-client-smtp-submission"
)
_GMAIL_ERRORS = "https://support.google.com/a/answer/3726730 (Gmail SMTP errors and codes)"

#: The reply classification table: the first matching row decides; a reply that
#: matches none is classified by its first digit (2/3 ok, 4 temporary, 5 permanent).
RULES: tuple[Rule, ...] = (
    # -- quotas and rate limits: pause the account, keep the messages ----------------------
    # Exchange Online, 10,000 recipients a day per mailbox: "554 5.2.0
    # STOREDRV.Submission.Exception:SubmissionQuotaExceededException".
    Rule(
        None,
        None,
        r"SubmissionQuotaExceeded",
        Verdict(QUOTA, HOUR, "Exchange Online daily recipient limit reached; sending resumes"),
        _EXCHANGE_SUBMISSION,
    ),
    # Exchange Online, sending mailbox full (Sent Items count): "554 5.2.2 mailbox full;
    # STOREDRV.Submission.Exception:QuotaExceededException...". Sending resumes once an
    # administrator frees space; until then the messages wait.
    Rule(
        None,
        None,
        r"Submission\.Exception:QuotaExceededException",
        Verdict(QUOTA, HOUR, "the sending mailbox is full (Sent Items count); free space in it"),
        _EXCHANGE_SUBMISSION,
    ),
    # Exchange Online, more than three concurrent submission connections per mailbox:
    # "432 4.3.2 Concurrent connections limit exceeded." (Exchange Server says "421 4.3.2
    # The maximum number of concurrent server connections has exceeded a limit".)
    Rule(
        None,
        "4.3.2",
        r"concurrent",
        Verdict(QUOTA, MINUTE, "too many connections to the provider at once for this mailbox"),
        _EXCHANGE_SUBMISSION,
    ),
    # Gmail: "550 5.4.5 Daily user sending limit exceeded." / "Daily sending quota
    # exceeded." / "Daily SMTP relay limit exceeded for user." (rolling 24 h window).
    Rule(
        None,
        "5.4.5",
        None,
        Verdict(QUOTA, HOUR, "Gmail daily sending limit reached; sending resumes within 24 h"),
        _GMAIL_ERRORS,
    ),
    # Gmail: "550 5.7.1 Daily SMTP relay limit exceeded for customer."
    Rule(
        None,
        "5.7.1",
        r"daily .*limit exceeded",
        Verdict(QUOTA, HOUR, "Gmail daily relay limit reached; sending resumes within 24 h"),
        _GMAIL_ERRORS,
    ),
    # Gmail: "450 4.2.1 Peak SMTP relay limit exceeded for customer."
    Rule(
        None,
        "4.2.1",
        r"relay limit",
        Verdict(QUOTA, 5 * MINUTE, "Gmail peak relay rate reached"),
        _GMAIL_ERRORS,
    ),
    # Gmail "452 4.5.3 Your message has too many recipients." and Exchange's recipient
    # rate limit answer 452 4.5.3: the rest of the recipients wait for a later session.
    Rule(
        452,
        "4.5.3",
        None,
        Verdict(QUOTA, MINUTE, "too many recipients for the provider right now"),
        _GMAIL_ERRORS + "; RFC 5321 4.5.3.1.10",
    ),
    # Gmail "421 4.7.0 Try again later, closing connection." and Exchange Online's
    # "421 4.7.0 Temporary server error. Please try again later": the provider throttles
    # this client; the connection is closed, so back off the account, not the message.
    Rule(
        421,
        "4.7.0",
        None,
        Verdict(QUOTA, 5 * MINUTE, "the provider is throttling this account; sending resumes"),
        _GMAIL_ERRORS,
    ),
    # Gmail: "454 4.7.0 Too many login attempts, please try again later."
    Rule(
        454,
        "4.7.0",
        r"too many login",
        Verdict(QUOTA, 5 * MINUTE, "too many logins to the provider; sending resumes"),
        _GMAIL_ERRORS,
    ),
    # -- explanations that do not change the class ------------------------------------------
    # Microsoft 365: "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is
    # disabled for the Tenant" / "..., user is locked by your organization's security
    # defaults policy" / "..., the request did not meet the criteria to be authenticated
    # successfully" (Conditional Access). No refresh fixes it.
    Rule(None, "5.7.139", None, Verdict(PERMANENT, None, SMTP_AUTH_DISABLED), _EXCHANGE_SMTP_AUTH),
    Rule(
        None,
        None,
        r"SmtpClientAuthentication is disabled",
        Verdict(PERMANENT, None, SMTP_AUTH_DISABLED),
        _EXCHANGE_SMTP_AUTH,
    ),
    # Exchange (High Volume Email): "501 5.5.127 Authentication unsuccessful, Token will
    # expire soon": a fresh token fixes it.
    Rule(None, "5.5.127", None, Verdict(REFRESH, None, TOKEN_EXPIRES_SOON), _EXCHANGE_SMTP_AUTH),
    Rule(
        501, None, r"expire soon", Verdict(REFRESH, None, TOKEN_EXPIRES_SOON), _EXCHANGE_SMTP_AUTH
    ),
)

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
    """``OK``, ``TEMPORARY`` or ``PERMANENT`` for a reply code alone (no table).

    ``code <= 0`` stands for "no reply" (network error, timeout, local
    failure): temporary, like a ``4xx``. Intermediate ``3xx`` replies count as
    success of the command they answer; :func:`forStep` is stricter.
    """
    if 200 <= code < 400:
        return OK
    if 500 <= code < 600:
        return PERMANENT
    return TEMPORARY


def _rule(code: int, text: str | bytes) -> Rule | None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    enhanced = enhancedCode(text)
    for rule in RULES:
        if rule.matches(code, enhanced, text):
            return rule
    return None


def verdict(code: int, text: str | bytes) -> Verdict:
    """What a reply means, from :data:`RULES` or else from its first digit.

    A ``REFRESH`` row (a token about to expire) counts as ``TEMPORARY`` outside
    authentication; :func:`classifyAuthFailure` reads it as a refresh.
    """
    if 400 <= code < 600:
        rule = _rule(code, text)
        if rule is not None:
            found = rule.verdict
            if found.kind == REFRESH:
                return Verdict(TEMPORARY, None, found.words)
            return found
    return Verdict(classify(code))


def explain(code: int, text: str | bytes) -> str | None:
    """Plain words for a reply a provider is known to send, or ``None``."""
    rule = _rule(code, text)
    return rule.verdict.words if rule is not None else None


def describe(code: int, text: str | bytes) -> str:
    """One printable line: ``"535 5.7.139 ... (explanation)"``; never longer than 600."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = cleanText(f"{code} {text}" if code > 0 else text, 240)
    words = explain(code, text)
    if words:
        line = f"{line} ({words})"
    return line


class Step:
    """The command a reply answers, and the reply that means it worked (RFC 5321 4.3.2)."""

    GREETING = "greeting"
    EHLO = "EHLO"
    STARTTLS = "STARTTLS"
    AUTH = "AUTH"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"
    DOT = "end of data"
    RSET = "RSET"
    QUIT = "QUIT"

    #: The success replies of each step; anything else outside 4xx/5xx is unexpected.
    SUCCESS: dict[str, range | tuple[int, ...]] = {
        GREETING: (220,),
        EHLO: range(200, 300),
        STARTTLS: (220,),
        AUTH: (235,),
        MAIL: range(200, 300),
        RCPT: range(200, 300),
        DATA: (354,),
        DOT: range(200, 300),
        RSET: range(200, 300),
        QUIT: range(200, 300),
    }


def forStep(step: str, code: int, text: str | bytes) -> Verdict:
    """What a reply to ``step`` means: only the step's success reply is :data:`OK`.

    ``354`` is the only answer to ``DATA`` that lets the content go out and a
    ``2xx`` the only answer to the final dot that means "sent"; any other reply
    that is not a ``4xx``/``5xx`` (a ``250`` to ``DATA``, a ``354`` to the dot, a
    ``1xx``) is unexpected and counts as :data:`TEMPORARY`.
    """
    if code in Step.SUCCESS[step]:
        return Verdict(OK)
    if 400 <= code < 600:
        return verdict(code, text)
    expected = "354" if step == Step.DATA else "220" if step == Step.STARTTLS else "2xx"
    return Verdict(TEMPORARY, None, f"unexpected reply to {step}, expected {expected}")


@dataclass(frozen=True)
class Reply:
    """A server reply (or a local stand-in for one: ``code`` 0 means "no reply")."""

    code: int
    text: str

    @property
    def status(self) -> str:
        return verdict(self.code, self.text).kind

    @property
    def explanation(self) -> str | None:
        return explain(self.code, self.text)

    def __str__(self) -> str:
        return describe(self.code, self.text)


@dataclass(frozen=True)
class AuthVerdict:
    """What to do after a failed AUTH: ``REFRESH``, ``TEMPORARY``, ``QUOTA`` or ``PERMANENT``."""

    action: str
    reason: str
    pause: float | None = None


def classifyAuthFailure(code: int, text: str | bytes, tokenRejected: bool) -> AuthVerdict:
    """Decide what a failed authentication means.

    ``tokenRejected`` is the verdict on the server's error challenge
    (``{"status": "401"}`` or ``invalid_token``). The order matters:

    - a quota row (Gmail's ``454 4.7.0 Too many login attempts``): pause;
    - other ``4xx`` (Dovecot's ``454 4.7.0`` when its token check is down,
      ``421``): temporary, the token is probably fine — never a reason to refresh;
    - ``5.7.139``: SMTP AUTH disabled for the mailbox, a refresh cannot help;
    - ``5.5.127``: the token was about to expire — a fresh token fixes it;
    - a challenge that said the token is bad, or a bare ``535``: refresh once;
    - anything else ``5xx`` (e.g. ``504`` mechanism not supported): permanent.
    """
    reason = describe(code, text)
    rule = _rule(code, text) if 400 <= code < 600 else None
    if rule is not None and rule.verdict.kind == QUOTA:
        return AuthVerdict(QUOTA, reason, rule.verdict.pause)
    if classify(code) == TEMPORARY:
        return AuthVerdict(TEMPORARY, f"{reason} ({AUTH_TEMPORARY})")
    if rule is not None and rule.verdict.kind == PERMANENT:
        return AuthVerdict(PERMANENT, reason)
    if rule is not None and rule.verdict.kind == REFRESH:
        return AuthVerdict(REFRESH, reason)
    if tokenRejected or code == 535:
        return AuthVerdict(REFRESH, f"{reason} ({TOKEN_REFUSED})")
    return AuthVerdict(PERMANENT, reason)
