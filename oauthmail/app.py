"""One builder of the token side for both the daemon and the command line.

The daemon (:mod:`oauthmail.service`) and every ``oauthmail`` subcommand that
talks to a provider need the same parts put together the same way: the
stores, the HTTP transport to token endpoints, the token source with the
configured accounts and margin, and the account health it reports to. They
are built here, so a rule about how tokens are obtained (a proxy, a margin,
who owns account state) is written once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from oauthmail.config import Config
from oauthmail.db.open import Stores, openStores
from oauthmail.health import AccountHealth
from oauthmail.http.proxy import ProxySettings
from oauthmail.tokens.http import AgentTransport, TokenTransports
from oauthmail.tokens.notify import CommandNotifier
from oauthmail.tokens.source import TokenSource

__all__ = ["TokenParts", "buildTokenParts", "openConfiguredStores", "tokenTransports"]


def openConfiguredStores(config: Config, reactor: Any, *, create: bool = True) -> Any:
    """Open (creating or migrating) the stores the configuration names; fires with ``Stores``.

    ``create=False``: a missing store or key file is refused, not created (see
    :func:`oauthmail.db.open.openStores`).
    """
    return openStores(
        config.store, clock=reactor, reactor=reactor, cluster=config.cluster, create=create
    )


class TokenParts:
    """The transport, health and token source built for one configuration."""

    def __init__(self, transport: TokenTransports, health: AccountHealth, tokens: TokenSource):
        self.transport = transport
        self.health = health
        self.tokens = tokens

    async def close(self) -> None:
        await self.transport.close()
        await self.health.whenWritten()


def tokenTransports(
    config: Config,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
    *,
    ca_file: str | None = None,
) -> TokenTransports:
    """The token side's transports: one pool per distinct proxy setting of the profiles.

    Each profile follows its ``proxy:`` key, else ``https_proxy``/``no_proxy`` of
    ``environ`` (the process environment by default); an unusable environment
    value is logged and ignored (:func:`oauthmail.transports.dispatch.proxyFor`).
    """
    from oauthmail.transports.dispatch import proxyFor

    environ = os.environ if environ is None else environ
    settings: dict[str, ProxySettings] = {}
    for account in config.accounts:
        if account.profile.name not in settings:
            settings[account.profile.name] = proxyFor(account, environ)
    # Keep as many connections to the token endpoint as refreshes may run at once.
    kept = max(16, config.refresher.concurrency)

    def make(proxy: ProxySettings) -> AgentTransport:
        return AgentTransport(reactor, maxPersistentPerHost=kept, ca_file=ca_file, proxy=proxy)

    return TokenTransports(settings, make)


def buildTokenParts(
    config: Config,
    stores: Stores,
    reactor: Any,
    *,
    health: AccountHealth | None = None,
    notify: bool = False,
    environ: Mapping[str, str] | None = None,
) -> TokenParts:
    """The token source for every configured account, on transports sized for refreshes.

    ``notify`` runs ``refresher.notify_command`` when an account needs a
    person (the daemon does; a one-off command does not page anyone).
    Token requests of each profile go through its proxy (:func:`tokenTransports`).
    """
    refresher = config.refresher
    configured = {a.name: a for a in config.accounts if a.configured}
    transport = tokenTransports(config, reactor, environ)
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
        transportFor=transport.forProfile,
    )
    return TokenParts(transport, health, tokens)
