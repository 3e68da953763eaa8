"""``test ACCOUNT [--send-to-self]``: prove an account end to end, one line per step.

The steps are :mod:`oauthmail.probe`'s; this module prints each result as it
comes and turns the outcome into the exit status: 0 when no step failed, 1
naming the failed steps on stderr, 2 for a bad account name or configuration.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oauthmail.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    accountSubcommand,
    runInReactor,
)
from oauthmail.cli.session import Session
from oauthmail.config import AccountConfig, Config

#: How long, by default, the test message may take to show in INBOX and in Sent.
DEFAULT_WAIT = 120.0


def testArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--send-to-self",
        action="store_true",
        help="also send one message to the account's own address, wait for it in INBOX and"
        " in Sent, and record whether Sent keeps oauthmail's trace line",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help="with --send-to-self: how long the message may take to show in INBOX and in"
        f" Sent (default: {DEFAULT_WAIT:g})",
    )


@accountSubcommand(
    "test",
    help="prove an account: token, IMAP and SMTP logins, folders (and --send-to-self)",
    arguments=testArguments,
)
def test(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """Run the steps against the real provider; print one line each."""
    if not 0 < args.wait <= 86400:  # also refuses nan and inf
        print("--wait must be a number of seconds above 0, at most a day", file=sys.stderr)
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.probe import AccountProbe, formatResult

        def emit(result: Any) -> None:
            for line in formatResult(result):
                print(line, flush=True)

        async with Session(config, reactor) as session:
            probe = AccountProbe(
                account, session.tokens, session.store, reactor, emit=emit, wait=args.wait
            )
            await probe.run(sendToSelf=args.send_to_self)
        failed = probe.failed
        if failed:
            steps = ", ".join(f"'{step}'" for step in failed)
            print(f"oauthmail test: {account.name} failed at {steps}", file=sys.stderr)
            return EXIT_FAILED
        print(f"{account.name}: every step passed", flush=True)
        return EXIT_OK

    return runInReactor(work)
