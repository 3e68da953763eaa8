"""twistd glue: ``twistd -n oauthmail --config conf/app.yaml``.

The configuration is read and validated, and the store's key checked, while
options are parsed, before the reactor runs: a broken file or a wrong key stops
twistd at once with the one-line error (exit status 2) instead of a
half-started daemon.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from oauthmail.config import ConfigError, loadConfig
from oauthmail.service import OAuthMailService
from oauthmail.tokens.store import StoreError, preflightStore


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run oauthmail: keep OAuth 2.0 tokens fresh, receive mail over IMAP and "
        "send it over SMTP for the accounts in the configuration file."
    )
    optParameters = [
        ["config", "c", "conf/app.yaml", "The YAML configuration file."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded"] = config = loadConfig(self["config"])
            preflightStore(config.store)
        except (ConfigError, StoreError) as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(2) from None


def makeService(options: Options | dict) -> IService:
    """Build the service tree; also what a ``.tac`` file calls."""
    config = options.get("loaded") or loadConfig(options["config"])
    return OAuthMailService(config)
