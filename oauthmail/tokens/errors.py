"""What can go wrong while obtaining or refreshing a token, sorted by what to do next.

The classes answer one question for the caller: *retry later* (``TransientTokenError``),
*ask a person* (``InvalidGrant``, ``AccountNotAuthorised``, ``AuthorizationFailed``) or
*fix the configuration* (``TokenEndpointError``). Messages carry the provider's ``error``
and ``error_description`` so that an operator can act on them, and never a token, code,
verifier or client secret: the code that raises them only ever sees those as
:class:`oauthmail.secret.Secret` and does not format them.
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
    """A permanent answer from the token endpoint (``invalid_client``, ...): fix the config."""

    def __init__(self, error: str, description: str | None = None, status: int | None = None):
        self.error = cleanText(error, 80)
        self.description = cleanText(description) if description else None
        self.status = status
        message = f"token endpoint refused the request: {self.error}"
        if self.description:
            message += f": {self.description}"
        if status is not None:
            message += f" (HTTP {status})"
        super().__init__(message)


class InvalidGrant(TokenError):  # noqa: N818 - the names the design uses
    """The refresh token is dead (revoked, expired, rotated away): a person must re-authorise."""

    def __init__(self, description: str | None = None) -> None:
        self.description = cleanText(description) if description else "invalid_grant"
        super().__init__(f"invalid_grant: {self.description}")


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
