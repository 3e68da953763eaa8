"""twistd glue: ``twistd -n oauthmail --config conf/app.yaml``.

The configuration is read and validated, and the store's key checked, while
options are parsed, before the reactor runs: a broken file or a wrong key stops
twistd at once with the one-line error (exit status 2) instead of a
half-started daemon. A store that cannot be reached or written right now (a
database server still starting, a full disk) stops it with exit status 75
(``EX_TEMPFAIL``): a supervisor may start it again, which for status 2 would be
pointless (``conf/oauthmail.service`` restarts on 75, never on 2). So does an
SQLite store another daemon runs on (one daemon per SQLite store): once that
one stops, starting again works.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from twisted.python import usage

from oauthmail.config import ConfigError, loadConfig
from oauthmail.db.errors import StoreError, StoreInUse, StoreUnwritable
from oauthmail.db.open import daemonLock, preflightStores
from oauthmail.service import OAuthMailService, StartupError

#: A configuration or key error: starting again cannot help.
EXIT_CONFIG = 2
#: The store is out of reach for now (``EX_TEMPFAIL``): starting again later can.
EXIT_TEMPORARY = 75


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run oauthmail: keep OAuth 2.0 tokens fresh, receive mail over IMAP and "
        "send it over SMTP for the accounts in the configuration file."
    )
    optParameters = [
        ["config", "c", "conf/app.yaml", "The YAML configuration file."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """An unknown option or a missing value gets one line and status 2.

        twistd itself would print its whole usage and then a line that names
        ``twistd``, not what the operator typed wrong. ``--help`` still prints
        the usage (it leaves through ``SystemExit`` before any error).
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"oauthmail: {e} (--help lists the options)\n")
            raise SystemExit(EXIT_CONFIG) from None

    def parseArgs(self, *args: str) -> None:
        if args:
            stray = args[0]
            raise usage.UsageError(f"unexpected argument {stray!r}: the daemon takes --config FILE")

    def postOptions(self) -> None:
        try:
            self["loaded"] = config = loadConfig(self["config"])
            preflightStores(config.store)
            lock = daemonLock(config.store)
            if lock is not None:
                lock.probe()  # the service takes it for good once it starts
        except (StoreInUse, StoreUnwritable) as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(EXIT_TEMPORARY) from None
        except (ConfigError, StoreError) as e:
            sys.stderr.write(f"{e}\n")
            raise SystemExit(EXIT_CONFIG) from None


class DaemonService(OAuthMailService):
    """The service as twistd runs it: a start-up failure ends the process, non-zero.

    A port that cannot be bound stops twistd before the reactor runs, with the
    one line naming the key (exit status 1). A failure after that (the store
    refused at open) stops the reactor and exits 1 once it has stopped, so a
    supervisor sees the daemon did not start.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except StartupError as e:
            raise SystemExit(f"oauthmail: {e}") from None

    def stopService(self) -> Any:
        quietSecondSignals(self.reactor)
        return super().stopService()

    def _startFailed(self, failure: Any) -> None:
        self.reactor.addSystemEventTrigger("after", "shutdown", _exitFailed)
        super()._startFailed(failure)


_log = Logger()


def quietSecondSignals(reactor: IReactorThreads) -> None:
    """While stopping, a second Ctrl-C or SIGTERM gets one line, not Twisted's traceback.

    Twisted's handlers call ``reactor.stop()`` again, which logs
    ``ReactorNotRunning`` with a traceback. Stopping already writes what is in
    flight and closes the store; nothing acknowledged is lost by waiting, and
    SIGKILL still ends the process at once (as a crash would: safely).
    Only the reactor's own handlers are replaced (an embedding's or a
    debugger's stay), and only from the main thread.
    """

    def again(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        reactor.callFromThread(
            _log.info,
            "{signal} again: oauthmail is already stopping (finishing what is in flight;"
            " SIGKILL ends it at once)",
            signal=name,
        )

    for signum in (signal.SIGINT, signal.SIGTERM):
        if getattr(signal.getsignal(signum), "__self__", None) is not reactor:
            continue  # not Twisted's handler: whoever installed it keeps it
        try:
            signal.signal(signum, again)
        except ValueError:
            return


def _exitFailed() -> None:
    """After the reactor stopped: leave with status 1 (twistd would exit 0)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def makeService(options: Options | dict) -> IService:
    """Build the service tree; also what a ``.tac`` file calls."""
    from twisted.internet import reactor  # the composition root: the one global reactor

    config = options.get("loaded") or loadConfig(options["config"])
    return DaemonService(config, reactor)
