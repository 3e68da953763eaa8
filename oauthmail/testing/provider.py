"""The test OAuth 2.0 provider, under its documented name.

The provider lives in :mod:`oauthmail.testing.oauth` (one module per job);
this module keeps ``from oauthmail.testing.provider import TestOAuthProvider``
and ``python -m oauthmail.testing.provider`` working, as
``docs/testing-provider.md`` promises.
"""

from __future__ import annotations

import sys

from oauthmail.testing import oauth
from oauthmail.testing.oauth import *  # noqa: F403 - this module is the package, by its old name
from oauthmail.testing.oauth import main

__all__ = oauth.__all__

if __name__ == "__main__":
    sys.exit(main())
