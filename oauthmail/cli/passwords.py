"""``hash-password``: an scrypt hash for a submission user."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TextIO

from oauthmail.cli.base import (
    EXIT_OK,
    EXIT_USAGE,
    subcommand,
)


def hashPasswordArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of standard input, even from a terminal"
        " (standard input that is not a terminal is read so anyway)",
    )


@subcommand(
    "hash-password",
    help="hash a submission password (scrypt) for the configuration",
    arguments=hashPasswordArguments,
)
def hashPasswordCommand(args: argparse.Namespace) -> int:
    """Read the password (asked twice on a terminal, else one line of stdin); print its hash."""
    import getpass

    return readAndHashPassword(
        fromStdin=args.stdin or not sys.stdin.isatty(),
        stdin=sys.stdin,
        readPassword=getpass.getpass,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )


#: Longer than any password a person types or a client sends in one AUTH line.
MAX_PASSWORD = 1024


def readAndHashPassword(
    *,
    fromStdin: bool,
    stdin: TextIO,
    readPassword: Callable[[str], str],
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """The password never comes as an argument (shell history, ``ps``); print only its hash."""
    from oauthmail.passwords import hashPassword

    if fromStdin:
        # Bounded: /dev/zero or a runaway pipe must not be read for ever.
        password = stdin.readline(MAX_PASSWORD + 2).rstrip("\r\n")
    else:
        password = readPassword("Password: ")
        if readPassword("Password again: ") != password:
            print("the passwords do not match: nothing was hashed", file=stderr)
            return EXIT_USAGE
    if not password:
        print("refusing to hash an empty password", file=stderr)
        return EXIT_USAGE
    if len(password) > MAX_PASSWORD or "\x00" in password:
        print(
            f"refusing to hash a password longer than {MAX_PASSWORD} characters or with a NUL"
            " (SASL PLAIN cannot send it)",
            file=stderr,
        )
        return EXIT_USAGE
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        print("refusing to hash a password that is not valid UTF-8 text", file=stderr)
        return EXIT_USAGE
    print(hashPassword(password), file=stdout)
    return EXIT_OK
