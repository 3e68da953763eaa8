"""The ``oauthmail`` command: one small function per subcommand.

Subcommands register themselves with :func:`subcommand`, so adding
``accounts``, ``authorize``, ``refresh``, ``send`` or ``test`` means writing
one function (and, if it takes arguments, one ``arguments`` function) without
touching :func:`main`. A subcommand returns the process exit status:
0 for success, 1 when the operation failed, 2 for bad input (a configuration
error, a bad argument). Bad input is reported as one line on stderr, never as
a traceback, because the reader is an operator at a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from oauthmail.config import Config, ConfigError, loadConfig

#: Where ``--config``/``FILE`` points when the user gives nothing.
DEFAULT_CONFIG = "conf/app.yaml"

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Subcommand:
    """One entry of the dispatch table."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


#: The dispatch table, in the order ``--help`` lists it.
SUBCOMMANDS: dict[str, Subcommand] = {}


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
    account = config.account(name)
    if account.configured:
        return "configured"
    return f"not configured: set client_id in profiles.{account.profile.name}"


@subcommand(
    "check-config",
    help="validate the configuration file and list its accounts",
    arguments=configArgument,
)
def checkConfig(args: argparse.Namespace) -> int:
    """Exit 2 with one line on stderr if the file is wrong; else list the accounts."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    out = sys.stdout
    accounts = config.accounts
    print(
        f"{config.source}: OK, {len(accounts)} account{'s' if len(accounts) != 1 else ''},"
        f" {len(config.profiles)} profile{'s' if len(config.profiles) != 1 else ''}",
        file=out,
    )
    if not accounts:
        print("  no accounts: add one under accounts:", file=out)
    width = max((len(a.name) for a in accounts), default=0)
    for account in accounts:
        services = [s for s in ("imap", "smtp") if getattr(account, s) is not None]
        print(
            f"  {account.name:<{width}}  {account.address}  profile {account.profile.name}"
            f" ({account.profile.kind}, {account.grant}"
            f"{', ' + '+'.join(services) if services else ''})"
            f"  {accountStatus(config, account.name)}",
            file=out,
        )
    return EXIT_OK


def buildParser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="oauthmail",
        description="IMAP and SMTP through OAuth 2.0 mail providers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for entry in SUBCOMMANDS.values():
        sub = commands.add_parser(entry.name, help=entry.help, description=entry.help)
        if entry.arguments is not None:
            entry.arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oauthmail ARGS``; return the exit status."""
    parser = buildParser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors itself (exit 2) and --help (0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
