"""The token store as its users see it: the errors, the expiry listing, and opening one.

The stores themselves live in :mod:`oauthmail.db` (the SQLite one in
:mod:`oauthmail.db.sqlite.tokens`), behind :class:`~oauthmail.interfaces.ITokenStore`.
This module keeps the names the token source, the refresher and the tools
import: the errors of :mod:`oauthmail.db.errors`, :class:`TokenExpiry`, and
:func:`openStore`/:func:`preflightStore` for code that needs only the tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet import defer

from oauthmail.db.errors import StoreError, VersionConflict, WrongKeyError
from oauthmail.db.open import openStores, preflightStores
from oauthmail.interfaces import ITokenStore
from oauthmail.tokens.records import TokenExpiry

__all__ = [
    "StoreError",
    "TokenExpiry",
    "VersionConflict",
    "WrongKeyError",
    "openStore",
    "preflightStore",
]


class _Clock(Protocol):
    def seconds(self) -> float: ...


def openStore(
    store_config: Any,
    clock: _Clock,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
) -> defer.Deferred[ITokenStore]:
    """Open the configured store (see :func:`oauthmail.db.open.openStores`); fire with its tokens.

    Closing the token store closes the database.
    """
    return openStores(store_config, clock, reactor, environ).addCallback(lambda s: s.tokens)


def preflightStore(store_config: Any, environ: Mapping[str, str] | None = None) -> None:
    """See :func:`oauthmail.db.open.preflightStores`."""
    preflightStores(store_config, environ)
