"""What child processes (sink and notification commands) may see of our environment.

The daemon's environment holds secrets: ``OAUTHMAIL_KEY`` and whatever
``${VAR}`` the configuration reads client secrets from. A child gets only a
short allow-list, never the rest; a command that needs more can be wrapped in
a script that sets it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

#: Variables passed on to child processes; everything else is withheld.
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "USER")


def childEnvironment(
    extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The allow-listed part of ``base`` (default ``os.environ``) plus ``extra``."""
    source = os.environ if base is None else base
    env = {key: source[key] for key in PASSED_ENVIRONMENT if key in source}
    env.update(extra or {})
    return env
