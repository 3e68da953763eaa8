"""The parts one command needs: the stores, the token source, the authorizer.

Built by :mod:`oauthmail.app`, the same builder the daemon uses.
"""

from __future__ import annotations

from typing import Any

from oauthmail.config import Config


class Session:
    """The store, transport, token source and authorizer one command needs.

    ``async with Session(config, reactor) as session:`` opens the parts and
    closes them however the command ends (what it opened, if opening failed).
    Only a command that may be the first to need a store (``authorize``)
    passes ``create=True``; the others refuse a missing store or key file.
    """

    def __init__(self, config: Config, reactor: Any, *, create: bool = False) -> None:
        self.config = config
        self.reactor = reactor
        self.create = create
        self.stores: Any = None
        self.store: Any = None
        self.transport: Any = None
        self.tokens: Any = None
        self.authorizer: Any = None
        self._parts: Any = None

    async def open(self) -> Session:
        from oauthmail.app import buildTokenParts, openConfiguredStores
        from oauthmail.tokens.authorize import Authorizer

        self.stores = await openConfiguredStores(self.config, self.reactor, create=self.create)
        self.store = self.stores.tokens
        self._parts = buildTokenParts(self.config, self.stores, self.reactor)
        self.transport = self._parts.transport
        self.tokens = self._parts.tokens
        self.authorizer = Authorizer(self.tokens, self.reactor)
        return self

    async def __aenter__(self) -> Session:
        try:
            return await self.open()
        except BaseException:
            await self.close()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.authorizer is not None:
            self.authorizer.stop()
        if self._parts is not None:
            await self._parts.close()
        if self.stores is not None:
            await self.stores.close()
