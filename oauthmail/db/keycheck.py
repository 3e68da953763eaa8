"""The token store's key check: a wrong key is refused before anything is written.

:class:`KeyCheck` is the schema guard (each backend's ``SchemaGuard``) of
:class:`~oauthmail.db.tokenstore.StoredTokenStore`: the database runs
:meth:`KeyCheck.check` first in its opening transaction, and
:meth:`KeyCheck.applied` seeds the check with the tables that hold it. A
database written with an older key that now comes after a new one is
re-encrypted with the first key in that same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping

from oauthmail.db.dialect import Connection, Dialect
from oauthmail.db.errors import StoreError
from oauthmail.tokens import crypto

__all__ = ["KEY_CHECK", "KeyCheck"]

#: The ``meta`` row holding the key check (see :func:`oauthmail.tokens.crypto.verifyKeyCheck`).
KEY_CHECK = "key_check"


class KeyCheck:
    """The key check of a store with a ``path``, a ``_cipher`` and a ``_dialect``."""

    path: str
    _cipher: crypto.TokenCipher
    _dialect: Dialect

    def check(
        self, conn: Connection, versions: Mapping[str, int], notices: list[crypto.Notice]
    ) -> None:
        """Refuse a wrong key before anything is written; rotate to the first key if due."""
        if versions.get("tokens", 0) < 1:
            return
        query = self._dialect.sql("SELECT value FROM meta WHERE key = ?")
        row = conn.execute(query, (KEY_CHECK,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path} has no key check: not an oauthmail token store?")
        if crypto.verifyKeyCheck(self._cipher, bytes(row[0]), self.path):
            notices.append(self._rotate(conn))

    def applied(self, conn: Connection, owner: str, number: int) -> None:
        """Seed the key check with the tables that hold it."""
        if (owner, number) == ("tokens", 1):
            conn.execute(
                self._dialect.sql("INSERT INTO meta (key, value) VALUES (?, ?)"),
                (KEY_CHECK, crypto.sealKeyCheck(self._cipher)),
            )

    def _rotate(self, conn: Connection) -> crypto.Notice:
        """Re-encrypt everything with the first key, inside the opening transaction.

        Runs when the database was written with an older key that now comes
        after a new one: once it is done, the old key may be dropped from the list.
        """
        rotate = self._cipher.rotate
        (sealed,) = conn.execute(
            self._dialect.sql("SELECT value FROM meta WHERE key = ? FOR UPDATE"), (KEY_CHECK,)
        ).fetchone()
        conn.execute(
            self._dialect.sql("UPDATE meta SET value = ? WHERE key = ?"),
            (rotate(bytes(sealed)), KEY_CHECK),
        )
        rows = conn.execute(
            self._dialect.sql("SELECT account, access_token, refresh_token FROM tokens FOR UPDATE")
        ).fetchall()
        conn.cursor().executemany(
            self._dialect.sql(
                "UPDATE tokens SET access_token = ?, refresh_token = ? WHERE account = ?"
            ),
            [
                (rotate(bytes(a)), None if r is None else rotate(bytes(r)), account)
                for account, a, r in rows
            ],
        )
        return (
            "info",
            "{path}: re-encrypted {count} token row(s) with the first key from {source}",
            {"path": self.path, "count": len(rows), "source": self._cipher.source},
        )
