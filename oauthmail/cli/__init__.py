"""The ``oauthmail`` command: one small function per subcommand.

Each subcommand lives in a module of this package and registers itself with
:func:`subcommand`, so adding one means writing one function (and, if it takes
arguments, one ``arguments`` function) in a module imported here, without
touching :func:`main`. A subcommand returns the process exit status:
0 for success, 1 when the operation failed, 2 for bad input (a configuration
error, a bad argument). Bad input is reported as one line on stderr, never as
a traceback, because the reader is an operator at a terminal.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# Importing a command module registers its subcommands (--help orders them by HELP_ORDER).
from oauthmail.cli import accounts as _accounts  # noqa: F401
from oauthmail.cli import authorize as _authorize  # noqa: F401
from oauthmail.cli import configuration as _configuration  # noqa: F401
from oauthmail.cli import passwords as _passwords  # noqa: F401
from oauthmail.cli import queue as _queue  # noqa: F401
from oauthmail.cli import remove as _remove  # noqa: F401
from oauthmail.cli import send as _send  # noqa: F401
from oauthmail.cli import test as _test  # noqa: F401
from oauthmail.cli.base import (
    DEFAULT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    HELP_ORDER,
    SUBCOMMANDS,
    Subcommand,
    pickAccount,
    readConfig,
    runInReactor,
    subcommand,
)
from oauthmail.cli.passwords import readAndHashPassword
from oauthmail.cli.session import Session
from oauthmail.config import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SUBCOMMANDS",
    "Session",
    "Subcommand",
    "buildParser",
    "main",
    "pickAccount",
    "readAndHashPassword",
    "readConfig",
    "runInReactor",
    "subcommand",
]


def _helpPosition(entry: Subcommand) -> tuple[int, str]:
    known = entry.name in HELP_ORDER
    return (HELP_ORDER.index(entry.name) if known else len(HELP_ORDER), entry.name)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error told in one line like every other bad input.

    argparse prints its usage and then the error on a second line; an operator
    reading a log or a cron mail wants the one line that says what was wrong,
    and ``--help`` for the rest. Sub-parsers are made of the same class.
    """

    def error(self, message: str, prog: str | None = None) -> NoReturn:
        prog = prog or self.prog
        self.exit(EXIT_USAGE, f"{prog}: {message} ({prog} --help shows the usage)\n")


def buildParser() -> OneLineParser:
    """The argument parser with one sub-parser per registered subcommand."""
    parser = OneLineParser(
        prog="oauthmail",
        description="IMAP and SMTP through OAuth 2.0 mail providers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for entry in sorted(SUBCOMMANDS.values(), key=_helpPosition):
        sub = commands.add_parser(entry.name, help=entry.help, description=entry.help)
        if entry.arguments is not None:
            entry.arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oauthmail ARGS``; return the exit status.

    Output piped into a reader that stops early (``| head``, ``| true``) ends
    the command quietly with status 141, as ``SIGPIPE`` ends other tools,
    instead of a traceback about a broken pipe.
    """
    try:
        status = _run(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        status = EXIT_PIPE
    if status == EXIT_PIPE:
        # Python flushes stdout once more at exit, and would complain of the pipe then.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return status


def _run(argv: Sequence[str] | None) -> int:
    parser = buildParser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:  # named with the subcommand whose --help lists what it takes
            unknown = " ".join(extras)
            parser.error(f"unrecognized arguments: {unknown}", f"{parser.prog} {args.command}")
    except SystemExit as e:  # argparse reports usage errors itself (exit 2) and --help (0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
