"""Check, without changing anything, that a key opens an existing SQLite store.

Blocking on purpose: ``twistd oauthmail`` runs it while parsing options, so a
wrong or malformed key stops the daemon with one line and exit status 2
instead of a daemon that starts and then stops itself. The real
(asynchronous) open checks again.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse

from oauthmail.db.errors import StoreError
from oauthmail.db.sqlite.storefile import checkStoreFile
from oauthmail.db.sqlite.tokens import KEY_CHECK
from oauthmail.tokens.crypto import TokenCipher, verifyKeyCheck

__all__ = ["preflight"]


def preflight(path: str, cipher: TokenCipher) -> None:
    """Raise ``WrongKeyError``/``StoreError`` if ``cipher`` cannot open the file at ``path``.

    A missing file passes (the open creates it); an empty or foreign one does not.
    """
    if not checkStoreFile(path):
        return
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the token store: {e}") from None
    try:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_CHECK,)).fetchone()
        except sqlite3.Error as e:
            if "no such table" in str(e):
                return  # created but never migrated: the real open will migrate it
            raise StoreError(f"{path}: cannot read the token store: {e}") from None
    finally:
        conn.close()
    if row is not None:
        verifyKeyCheck(cipher, row[0], path)
