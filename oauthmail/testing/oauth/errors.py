"""The error answer of every OAuth endpoint (RFC 6749 section 5.2).

Rule: an error body never carries a token or a secret; providers add their
own fields (Microsoft's ``error_codes``), which ``extra`` holds, and the
``reason`` names the situation so that a style can reword it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["USER_FAULTS", "OAuthError", "userFault"]


class OAuthError(Exception):
    """An RFC 6749 error answer: ``{"error": ..., "error_description": ...}``."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
        self.extra = extra or {}
        #: which situation it is (``code_reused``, ``refresh_expired``, ...), so
        #: that a provider style (``styles.py``) can answer it in its own words
        self.reason = reason

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description, **self.extra}


#: Why a refresh may be refused for a person (``failUsers(..., reason=...)``):
#: each is "needs a person again" for a different cause.
USER_FAULTS = {
    "reauth": ("invalid_grant", "the user must sign in again"),
    "interaction_required": ("interaction_required", "multi-factor authentication is required"),
    "consent_required": ("consent_required", "the user or an administrator must consent again"),
    "admin_policy_enforced": (
        "admin_policy_enforced",
        "an administrator's policy does not allow these scopes for this user",
    ),
}


def userFault(reason: str) -> OAuthError:
    """The refusal :func:`grantRefresh` gives a user failed with ``reason``."""
    error, description = USER_FAULTS[reason]
    return OAuthError(error, description, reason=reason)
