"""The test OAuth 2.0 provider: a real authorization server on loopback, for tests.

One job per module: ``records`` (what is remembered), ``state`` (the server
without HTTP), ``authorize``, ``token`` + ``grants``, ``device``,
``tokeninfo`` (introspection, userinfo, revocation), ``identity`` (ID tokens
and the key that signs them), ``styles`` (answering like Microsoft or Google),
``faults`` and ``waiting`` (the failures it can be told to produce), ``http``
(site and answers),
``provider`` (:class:`TestOAuthProvider`: the HTTP side and the test API) and
``main`` (the command line). ``oauthmail.testing.provider`` is the historical
entry point and re-exports the same names.
"""

from __future__ import annotations

from oauthmail.testing.oauth.authorize import verifierMatches
from oauthmail.testing.oauth.errors import OAuthError
from oauthmail.testing.oauth.main import main
from oauthmail.testing.oauth.provider import TestOAuthProvider
from oauthmail.testing.oauth.records import (
    DEFAULT_USER,
    DEVICE_GRANT,
    TokenCounter,
    normaliseUserCode,
)

__all__ = [
    "DEFAULT_USER",
    "DEVICE_GRANT",
    "OAuthError",
    "TestOAuthProvider",
    "TokenCounter",
    "main",
    "normaliseUserCode",
    "verifierMatches",
]
