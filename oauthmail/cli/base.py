"""What every subcommand shares: the registry, the common arguments, exit statuses.

Subcommands register themselves with :func:`subcommand`; a subcommand returns
the process exit status: 0 for success, 1 when the operation failed, 2 for
bad input (a configuration error, a bad argument). Bad input is reported as
one line on stderr, never as a traceback, because the reader is an operator
at a terminal.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

from oauthmail.config import AccountConfig, Config, ConfigError, loadConfig
from oauthmail.text import describeWhen

#: Where ``--config``/``FILE`` points when the user gives nothing.
DEFAULT_CONFIG = "conf/app.yaml"

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Stopped by Ctrl-C or SIGTERM before the work finished (128 + SIGINT, as shells say).
EXIT_INTERRUPTED = 130
#: Standard output was closed by its reader (128 + SIGPIPE, as a shell reports ``| head``).
EXIT_PIPE = 141


@dataclass(frozen=True)
class Subcommand:
    """One entry of the dispatch table."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


#: The dispatch table.
SUBCOMMANDS: dict[str, Subcommand] = {}

#: The order ``--help`` lists the subcommands in (others follow, by name): the
#: first hour's commands first.
HELP_ORDER = (
    "check-config",
    "init-store",
    "authorize",
    "accounts",
    "test",
    "refresh",
    "send",
    "queue",
    "api",
    "remove",
    "hash-password",
    "migrate-store",
)


def subcommand(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated ``run(args) -> int`` as ``oauthmail NAME``."""

    def register(
        run: Callable[[argparse.Namespace], int],
    ) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name=name, help=help, run=run, arguments=arguments)
        return run

    return register


def configArgument(parser: argparse.ArgumentParser) -> None:
    """The ``FILE`` positional shared by every subcommand that reads the configuration."""
    parser.add_argument(
        "config",
        metavar="FILE",
        nargs="?",
        default=DEFAULT_CONFIG,
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )


def readConfig(path: str, stderr: TextIO | None = None) -> Config | None:
    """Load ``path``; on error print the one-line message and return ``None``.

    Subcommands call this and return :data:`EXIT_USAGE` on ``None``.
    """
    try:
        return loadConfig(path)
    except ConfigError as e:
        print(str(e), file=stderr or sys.stderr)
        return None


def accountStatus(config: Config, name: str) -> str:
    """``configured``, or what to do so that the account is."""
    profile = config.account(name).profile
    if profile.configured:
        return "configured"
    return f"not configured: set {profile.missingSetting} in profiles.{profile.name}"


def configOption(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, with the same default as ``check-config``'s ``FILE``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )


def accountArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("account", metavar="ACCOUNT", help="the account name (see: accounts)")
    configOption(parser)


def pickAccount(config: Config, name: str) -> AccountConfig | None:
    """The configured account ``name``, or ``None`` after one line on stderr."""
    try:
        account = config.account(name)
    except KeyError:
        known = ", ".join(a.name for a in config.accounts) or "none"
        print(f"{config.source}: no account named {name!r} (accounts: {known})", file=sys.stderr)
        return None
    if not account.configured:
        print(f"account {name} is {accountStatus(config, name)}", file=sys.stderr)
        return None
    return account


def withAccount(
    run: Callable[[argparse.Namespace, Config, AccountConfig], int],
) -> Callable[[argparse.Namespace], int]:
    """A subcommand that takes ``ACCOUNT``: ``run(args, config, account)``.

    The configuration ``args.config`` and its account ``args.account`` are read
    first; when either cannot be, one line on stderr (:func:`readConfig`,
    :func:`pickAccount`) and :data:`EXIT_USAGE`, and ``run`` is not called.
    """

    @functools.wraps(run)
    def withConfigAndAccount(args: argparse.Namespace) -> int:
        config = readConfig(args.config)
        account = None if config is None else pickAccount(config, args.account)
        if config is None or account is None:
            return EXIT_USAGE
        return run(args, config, account)

    return withConfigAndAccount


def accountSubcommand(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[
    [Callable[[argparse.Namespace, Config, AccountConfig], int]],
    Callable[[argparse.Namespace], int],
]:
    """Register the decorated ``run(args, config, account)`` as ``oauthmail NAME ACCOUNT``.

    ``ACCOUNT`` and ``--config`` come from here (:func:`accountArguments`, then
    ``arguments`` adds the command's own); ``run`` gets what :func:`withAccount` reads.
    """

    def allArguments(parser: argparse.ArgumentParser) -> None:
        accountArguments(parser)
        if arguments is not None:
            arguments(parser)

    def register(
        run: Callable[[argparse.Namespace, Config, AccountConfig], int],
    ) -> Callable[[argparse.Namespace], int]:
        return subcommand(name, help, allArguments)(withAccount(run))

    return register


def runInReactor(work: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``work(reactor)`` under ``task.react`` and return its exit status.

    An unexpected exception becomes one line on stderr (its class and the cleaned
    message of a token or store error, which never carry a secret) and status 1.
    A store that cannot be used as configured (no store there, a wrong or
    missing key, a file that is no store) is bad configuration, status 2, as
    the daemon says at start; one that failed while working (unreachable,
    unwritable, busy) is status 1.
    """
    from twisted.internet import defer, task

    status = [EXIT_FAILED]
    done, interrupted = [False], [False]

    def stopping() -> None:
        # The reactor stops before the work finished: Ctrl-C or SIGTERM (Twisted's handlers).
        if not done[0]:
            interrupted[0] = True
            status[0] = EXIT_INTERRUPTED
            print("oauthmail: interrupted before it finished", file=sys.stderr)

    async def run(reactor: Any) -> None:
        reactor.addSystemEventTrigger("before", "shutdown", stopping)
        try:
            result = await work(reactor)
            if not interrupted[0]:
                status[0] = result
        except BrokenPipeError:
            status[0] = EXIT_PIPE  # the reader went away (`| head`): main() leaves quietly
        except Exception as e:
            if interrupted[0]:
                return  # what the parts said while being stopped is not news
            print(f"oauthmail: {_said(e)}", file=sys.stderr)
            status[0] = _statusOf(e)
        finally:
            done[0] = True

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return status[0]


def _said(error: Exception) -> str:
    """A store error's own line (it names the file or database); else the token side's words."""
    from oauthmail.db.errors import StoreError
    from oauthmail.tokens.authorize import explain

    return str(error) if isinstance(error, StoreError) else explain(error)


def _statusOf(error: Exception) -> int:
    """1 for a failed operation; 2 for a store that cannot be used as configured."""
    from oauthmail.db.errors import STORE_FAILURES, StoreError

    if isinstance(error, StoreError) and not isinstance(error, STORE_FAILURES):
        return EXIT_USAGE
    return EXIT_FAILED


def formatWhen(when: float | None, now: float) -> str:

    if when is None:
        return "—"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    return f"{describeWhen(when, now)} ({stamp})"
