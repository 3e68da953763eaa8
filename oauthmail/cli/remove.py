"""``remove``: revoke an account's refresh token at the provider and delete its tokens.

What it does is :func:`oauthmail.removal.removeAccount`'s: revoke (RFC 7009, where
the provider offers it), delete the tokens whatever the provider answered, then report
the account's queued mail (kept, or failed for good with ``--drop-queue``). It exits 0
when the tokens are gone and nothing is left to do at the provider, 1 when the
revocation was tried and did not happen (the lines say where to revoke by hand).
"""

from __future__ import annotations

import argparse
from typing import Any

from oauthmail.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    accountSubcommand,
    runInReactor,
)
from oauthmail.cli.session import Session
from oauthmail.config import AccountConfig, Config


def removeArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drop-queue",
        action="store_true",
        help="also drop the account's queued mail (it fails for good instead of waiting)",
    )


@accountSubcommand(
    "remove",
    help="revoke ACCOUNT's refresh token at the provider and delete its tokens",
    arguments=removeArguments,
)
def removeCommand(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """Revoke, delete, report: one line per fact, never a token."""

    async def work(reactor: Any) -> int:
        from oauthmail.removal import removeAccount

        async with Session(config, reactor) as session:
            removal = await removeAccount(
                session.tokens,
                session.stores.outbox,
                account.name,
                drop_queue=args.drop_queue,
                now=reactor.seconds(),
            )
        for line in removal.lines():
            print(line)
        return EXIT_FAILED if removal.revocationFailed else EXIT_OK

    return runInReactor(work)
