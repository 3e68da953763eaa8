"""``accounts`` and ``refresh``: what each account looks like, and a refresh now."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oauthmail.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    accountSubcommand,
    configOption,
    formatWhen,
    readConfig,
    runInReactor,
    subcommand,
)
from oauthmail.cli.session import Session
from oauthmail.config import AccountConfig, Config
from oauthmail.text import cleanText, describeWhen


@subcommand(
    "accounts",
    help="list the accounts with their state and token expiry (never a token)",
    arguments=configOption,
)
def accounts(args: argparse.Namespace) -> int:
    """A table of every account, as the console shows it (and, on a shared store, the nodes)."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.app import openConfiguredStores
        from oauthmail.cli.cluster import printCluster
        from oauthmail.cluster.view import collectCluster
        from oauthmail.web.console import STATE_LABELS, collectStatuses

        stores = await openConfiguredStores(config, reactor, create=False)
        try:
            statuses = await collectStatuses(config, stores.tokens)
            cluster = await collectCluster(stores.leases) if stores.shared else None
        finally:
            await stores.close()
        now = reactor.seconds()
        header = ("ACCOUNT", "ADDRESS", "PROFILE", "STATE", "TOKEN EXPIRES", "LAST REFRESH")
        rows = [
            (
                s.name,
                s.address,
                s.profile,
                STATE_LABELS.get(s.state, s.state),
                describeWhen(s.expires_at, now),
                describeWhen(s.last_refresh_at, now),
                s.last_error or (f"next: {s.next_step}" if s.next_step else ""),
            )
            for s in statuses
        ]
        if not rows:
            print(f"{config.source}: no accounts: add one under accounts:")
            return EXIT_OK
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        titles = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        print(f"{titles}  LAST ERROR / NEXT STEP")
        for row in rows:
            cells = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
            print(f"{cells}  {cleanText(row[-1])}".rstrip())
        if cluster is not None:
            printCluster(cluster, sys.stdout)
        return EXIT_OK

    return runInReactor(work)


@accountSubcommand(
    "refresh",
    help="refresh an account's token now and print the new expiry (never the token)",
)
def refresh(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """Force a refresh: what the daemon would do, now."""

    async def work(reactor: Any) -> int:
        from oauthmail.tokens.authorize import explain
        from oauthmail.tokens.errors import TokenError

        try:
            async with Session(config, reactor) as session:
                await session.tokens.forceRefresh(account.name)
                record = await session.store.getTokens(account.name)
        except TokenError as e:
            print(f"refresh of {account.name} failed: {explain(e)}", file=sys.stderr)
            return EXIT_FAILED
        expires = record.expires_at if record is not None else None
        if expires is None:
            print(f"{account.name}: refreshed; the new token does not expire")
        else:
            when = formatWhen(expires, reactor.seconds())
            print(f"{account.name}: refreshed; the new token expires {when}")
        return EXIT_OK

    return runInReactor(work)
