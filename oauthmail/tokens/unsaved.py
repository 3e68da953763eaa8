"""Tokens the provider gave us that the store refused, kept until the store takes them.

A provider that rotates refresh tokens has forgotten the old one by the time its answer
arrives. If the store then fails (disk full, locked), the new refresh token lives only
here: the next refresh of that account first writes these tokens (compare-and-swap on
the version they were meant to replace) and, while the store still refuses, presents
their refresh token rather than the stored, dead one. Tokens somebody else stored
meanwhile (a re-authorisation, another node) win, and the held ones are dropped.
"""

from __future__ import annotations

from twisted.logger import Logger

from oauthmail.interfaces import ITokenStore
from oauthmail.text import cleanText
from oauthmail.tokens.records import TokenRecord, TokenSet

log = Logger()

__all__ = ["UnsavedTokens"]


class UnsavedTokens(dict[str, tuple[int, TokenSet]]):
    """Per account, the tokens the store refused and the version they were to replace.

    A ``dict`` by account name: every refresh asks whether its account has any
    (``name in unsaved``), and a dict answers that without a Python call.
    """

    def __init__(self, store: ITokenStore) -> None:
        super().__init__()
        self._store = store

    def keep(self, name: str, expected_version: int, tokens: TokenSet) -> None:
        self[name] = (expected_version, tokens)

    def forget(self, name: str) -> None:
        self.pop(name, None)

    async def save(
        self, name: str, record: TokenRecord | None
    ) -> tuple[TokenRecord | None, TokenSet | None]:
        """Write the held tokens of ``name`` now that ``record`` is what the store has.

        Returns the record to use and, if the store still refuses, the held tokens
        (whose refresh token is the one the provider now expects).
        """
        expected, tokens = self[name]
        if (record.version if record is not None else 0) != expected:
            self.forget(name)  # somebody stored newer tokens meanwhile
            return record, None
        try:
            stored = await self._store.putTokens(name, tokens, expected)
        except Exception as e:
            log.warn(
                "{account}: the store still refuses the refreshed tokens: {why}",
                account=name,
                why=cleanText(e),
            )
            return record, tokens
        self.forget(name)
        log.info("{account}: refreshed tokens saved on a second attempt", account=name)
        return stored, None
