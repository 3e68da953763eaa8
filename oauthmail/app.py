"""One builder of the token side for both the daemon and the command line.

The daemon (:mod:`oauthmail.service`) and every ``oauthmail`` subcommand that
talks to a provider need the same parts put together the same way: the
stores, the HTTP transport to token endpoints, the token source with the
configured accounts and margin, and the account health it reports to. They
are built here, so a rule about how tokens are obtained (a proxy, a margin,
who owns account state) is written once.
"""

from __future__ import annotations

from typing import Any

from oauthmail.config import Config
from oauthmail.db.open import Stores, openStores
from oauthmail.health import AccountHealth
from oauthmail.tokens.http import AgentTransport
from oauthmail.tokens.notify import CommandNotifier
from oauthmail.tokens.source import TokenSource

__all__ = ["TokenParts", "buildTokenParts", "openConfiguredStores"]


def openConfiguredStores(config: Config, reactor: Any) -> Any:
    """Open (creating or migrating) the stores the configuration names; fires with ``Stores``."""
    return openStores(config.store, clock=reactor, reactor=reactor)


class TokenParts:
    """The transport, health and token source built for one configuration."""

    def __init__(self, transport: AgentTransport, health: AccountHealth, tokens: TokenSource):
        self.transport = transport
        self.health = health
        self.tokens = tokens

    async def close(self) -> None:
        await self.transport.close()
        await self.health.whenWritten()


def buildTokenParts(
    config: Config,
    stores: Stores,
    reactor: Any,
    *,
    health: AccountHealth | None = None,
    notify: bool = False,
) -> TokenParts:
    """The token source for every configured account, on a transport sized for refreshes.

    ``notify`` runs ``refresher.notify_command`` when an account needs a
    person (the daemon does; a one-off command does not page anyone).
    """
    refresher = config.refresher
    configured = {a.name: a for a in config.accounts if a.configured}
    # Keep as many connections to the token endpoint as refreshes may run at once.
    transport = AgentTransport(reactor, maxPersistentPerHost=max(16, refresher.concurrency))
    health = health if health is not None else AccountHealth(stores.tokens, reactor)
    notifier = (
        CommandNotifier(reactor, refresher.notify_command)
        if notify and refresher.notify_command
        else None
    )
    tokens = TokenSource(
        stores.tokens,
        configured,
        transport,
        reactor,
        margin=refresher.margin,
        notifier=notifier,
        health=health,
    )
    return TokenParts(transport, health, tokens)
