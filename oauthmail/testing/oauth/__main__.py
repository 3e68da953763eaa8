"""``python -m oauthmail.testing.oauth``: the same as ``python -m oauthmail.testing.provider``."""

import sys

from oauthmail.testing.oauth.main import main

sys.exit(main())
