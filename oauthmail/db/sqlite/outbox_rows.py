"""The outbox's shared row work (``ROWS``) and doubts (``DOUBT``), spelled for SQLite."""

from __future__ import annotations

from oauthmail.db.outbox_doubt import OutboxDoubt
from oauthmail.db.outbox_rows import OutboxRows
from oauthmail.db.sqlite.connection import SQLITE

__all__ = ["DOUBT", "ROWS"]

ROWS = OutboxRows(SQLITE)
DOUBT = OutboxDoubt(SQLITE, ROWS, arrival="rowid")
