"""The error answer of every OAuth endpoint (RFC 6749 section 5.2).

Rule: an error body never carries a token or a secret; providers add their
own fields (Microsoft's ``error_codes``), which ``extra`` holds.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OAuthError"]


class OAuthError(Exception):
    """An RFC 6749 error answer: ``{"error": ..., "error_description": ...}``."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description, **self.extra}
