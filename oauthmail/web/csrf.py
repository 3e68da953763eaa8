"""The console's CSRF tokens: one secret per process, one token per login session.

Every POST form carries a token; the guard (:mod:`oauthmail.web.guard`) refuses a POST
whose token is missing or wrong before any resource runs, so that a page on another
site cannot press the console's buttons. Without a login (a loopback console) everyone
who can read the console page gets the process token; with a login each session gets its
own, derived from its id with HMAC, so that a token seen on the login page is worth
nothing on the console's forms.

Rules a reader must not break: compare with ``hmac.compare_digest`` only; never log a
token or put it anywhere but a hidden form field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import secrets

__all__ = ["CSRFToken"]


class CSRFToken:
    """The process secret; :meth:`forSession` derives the token of a session."""

    def __init__(self, value: str | None = None) -> None:
        self.value = value or secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        return "<CSRFToken>"

    def forSession(self, session: str = "") -> str:
        """The token for the forms shown to ``session`` (``""``: no session, the process token)."""
        if not session:
            return self.value
        mac = hmac.new(self.value.encode("ascii"), session.encode("ascii"), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).decode("ascii").rstrip("=")

    def check(self, given: bytes | str | None, session: str = "") -> bool:
        """Whether ``given`` is the token of ``session`` (constant-time comparison)."""
        if given is None:
            return False
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.forSession(session).encode("ascii"))

    def field(self, session: str = "") -> str:
        """The hidden form field."""
        return f"<input type='hidden' name='csrf' value='{html.escape(self.forSession(session))}'>"
