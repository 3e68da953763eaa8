"""``python -m oauthmail.cli``: the ``oauthmail`` command."""

from oauthmail.cli import main

raise SystemExit(main())
