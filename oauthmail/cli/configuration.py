"""``check-config``, ``init-store`` and ``migrate-store``: the configuration and its store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from oauthmail.cli.base import (
    EXIT_OK,
    EXIT_USAGE,
    accountStatus,
    configArgument,
    configOption,
    readConfig,
    runInReactor,
    subcommand,
)
from oauthmail.config import StoreConfig


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
    problems = _sinkProblems(config) + _storeProblems(config)
    if problems:
        for problem in problems:
            print(f"{config.source}: {problem}", file=sys.stderr)
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
    for note in config.notes:
        print(f"note: {note}", file=out)
    return EXIT_OK


def _storeProblems(config: Any) -> list[str]:
    """What the daemon would refuse at start about the store, found without creating anything."""
    from oauthmail.db.errors import StoreError
    from oauthmail.db.open import checkStoreSettings

    try:
        checkStoreSettings(config.store)
    except StoreError as e:
        return [f"store: {e}"]
    return []


def _sinkProblems(config: Any) -> list[str]:
    """Each account whose sink the daemon would refuse at start, as the daemon says it."""
    from oauthmail.sinks.errors import SinkConfigurationError
    from oauthmail.sinks.factory import checkSink

    problems = []
    for account in config.accounts:
        if account.imap is None:
            continue
        try:
            checkSink(account.imap.sink)
        except SinkConfigurationError as e:
            problems.append(f"account {account.name}: cannot receive mail: {e}")
    return problems


@subcommand(
    "init-store",
    help="create the store (and its key) where the configuration says, or check it",
    arguments=configOption,
)
def initStoreCommand(args: argparse.Namespace) -> int:
    """Create a missing store or replace an empty file; an existing store is only checked."""

    async def initialise(store: StoreConfig, reactor: Any) -> str:
        from oauthmail.db.open import initStore

        return await initStore(store, clock=reactor, reactor=reactor)

    return _reportOnStore(args, initialise)


def migrateStoreArguments(parser: argparse.ArgumentParser) -> None:
    configOption(parser)
    parser.add_argument(
        "--to",
        metavar="DSN",
        required=True,
        help="the EMPTY PostgreSQL database to copy into (postgresql://USER@HOST:PORT/DB;"
        " give the password in PGPASSWORD or ~/.pgpass, not here)",
    )


@subcommand(
    "migrate-store",
    help="copy the SQLite store (accounts, tokens, ledger, queue, message log) into an empty"
    " PostgreSQL database",
    arguments=migrateStoreArguments,
)
def migrateStoreCommand(args: argparse.Namespace) -> int:
    """Stop the daemon first: what it writes during the copy would not be copied."""
    from oauthmail.db.errors import StoreError
    from oauthmail.db.transfer import checkTarget

    try:
        checkTarget(args.to)
    except StoreError as e:  # the argument, not the configured store, is wrong
        print(f"oauthmail: {e}", file=sys.stderr)
        return EXIT_USAGE

    async def copy(store: StoreConfig, reactor: Any) -> str:
        from oauthmail.db.transfer import copyStore

        return await copyStore(store, args.to, clock=reactor, reactor=reactor)

    return _reportOnStore(args, copy)


def _reportOnStore(
    args: argparse.Namespace, operation: Callable[[StoreConfig, Any], Awaitable[str]]
) -> int:
    """Read the configuration, run ``operation`` on its store, print the report it returns."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        print(await operation(config.store, reactor))
        return EXIT_OK

    return runInReactor(work)
