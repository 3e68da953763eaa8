"""The test OAuth 2.0 provider, under its documented name.

The provider lives in :mod:`oauthmail.testing.oauth` (one module per job);
this module keeps ``from oauthmail.testing.provider import TestOAuthProvider``
and ``python -m oauthmail.testing.provider`` working, as
``docs/testing-provider.md`` promises.
"""

from __future__ import annotations

import sys

from oauthmail.testing.oauth import (
    DEFAULT_USER,
    DEVICE_GRANT,
    OAuthError,
    TestOAuthProvider,
    TokenCounter,
    main,
    normaliseUserCode,
    verifierMatches,
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

if __name__ == "__main__":
    sys.exit(main())
