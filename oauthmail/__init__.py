"""oauthmail: IMAP and SMTP through OAuth 2.0 mail providers, on Twisted.

Public names importable from here: :class:`AuthorizedAgent` (HTTP API calls
with an account's token, :mod:`oauthmail.http.authorized`). It is loaded on
first use, so that ``import oauthmail.sasl`` and friends stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["AuthorizedAgent", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "AuthorizedAgent":
        from oauthmail.http.authorized import AuthorizedAgent

        return AuthorizedAgent
    raise AttributeError(f"module 'oauthmail' has no attribute {name!r}")
