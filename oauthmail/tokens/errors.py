"""What can go wrong while obtaining or refreshing a token, sorted by what to do next.

The classes answer one question for the caller: *retry later* (``TransientTokenError``),
*ask a person* (``NeedsReauthorisation`` and its ``InvalidGrant``, ``AccountNotAuthorised``,
``AuthorizationFailed``) or *fix the configuration* (``TokenEndpointError``, with
``advice`` when we know what to fix). Which provider ``error`` leads to which class is one
table, ``oauthmail.tokens.answers.ERROR_CLASSES``. Messages carry the provider's ``error``
and ``error_description`` so that an operator can act on them (Microsoft's AADSTS number
included), and never a token, code, verifier or client secret: the code that raises them
only ever sees those as :class:`oauthmail.secret.Secret`, and every provider text is
scrubbed of them first (``oauthmail.tokens.answers.providerText``).
"""

from __future__ import annotations

from oauthmail.text import cleanText


class TokenError(Exception):
    """The base of every token lifecycle error."""


class TransientTokenError(TokenError):
    """Network error, timeout, 5xx or 429: keep every token and try again later.

    ``retry_after`` is the number of seconds the provider asked us to wait, if it said so.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        self.reason = cleanText(reason)
        self.retry_after = retry_after
        message = self.reason
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        super().__init__(message)


class TokenEndpointError(TokenError):
    """A permanent answer from the token endpoint (``invalid_client``, ...): fix the config.

    ``advice`` says what to change when we know it (the provider's own words are in
    ``description``); it ends the message, so the log, the console and the CLI show it.
    """

    def __init__(
        self,
        error: str,
        description: str | None = None,
        status: int | None = None,
        advice: str | None = None,
    ) -> None:
        self.error = cleanText(error, 80)
        self.description = cleanText(description) if description else None
        self.status = status
        self.advice = cleanText(advice) if advice else None
        message = f"token endpoint refused the request: {self.error}"
        if self.description:
            message += f": {self.description}"
        if status is not None and self.error != f"HTTP {status}":
            message += f" (HTTP {status})"
        if self.advice:
            message += f"; {self.advice}"
        super().__init__(message)


class MalformedAnswer(TokenEndpointError):  # noqa: N818 - like its base
    """A 200 answer that is no usable token answer (no token, an absurd ``expires_in``, ...).

    Kept apart from refusals because nobody refused anything: the endpoint (or
    something in front of it) answers nonsense, and the message says what was wrong.
    """

    def __init__(self, what: str, status: int | None = 200) -> None:
        super().__init__("malformed_response", what, status)
        message = f"the token endpoint's answer is malformed: {self.description}"
        if status is not None:
            message += f" (HTTP {status})"
        self.args = (message,)


class NeedsReauthorisation(TokenError):  # noqa: N818 - the names the design uses
    """The grant behind a refresh token needs a person: revoked, expired, or held back
    by the provider until somebody signs in again (MFA, consent, an admin's policy).

    ``reason`` is what the account shows and the notification says.
    """

    def __init__(self, description: str | None = None, error: str = "invalid_grant") -> None:
        self.error = cleanText(error, 80)
        self.description = cleanText(description) if description else self.error
        if self.error == "invalid_grant" or self.description.startswith(self.error):
            self.reason = self.description
        else:
            self.reason = f"{self.error}: {self.description}"
        super().__init__(f"{self.error}: {self.description}")


class InvalidGrant(NeedsReauthorisation):
    """The refresh token is dead (revoked, expired, rotated away): a person must re-authorise."""

    def __init__(self, description: str | None = None) -> None:
        super().__init__(description, "invalid_grant")


class AuthorizationFailed(TokenError):  # noqa: N818 - the names the design uses
    """An interactive authorisation (browser redirect or device flow) did not produce tokens."""

    def __init__(self, reason: str) -> None:
        self.reason = cleanText(reason)
        super().__init__(self.reason)


class AccountNotAuthorised(TokenError):  # noqa: N818 - the names the design uses
    """No access token can be had for this account until a person does something.

    ``needs_reauth`` is true when the account had tokens and lost them at the provider.
    """

    def __init__(self, account: str, reason: str, needs_reauth: bool = False) -> None:
        self.account = account
        self.reason = cleanText(reason)
        self.needs_reauth = needs_reauth
        super().__init__(f"account {account!r}: {self.reason}")
