"""The outbox's shared row work (``ROWS``) and doubts (``DOUBT``), spelled for PostgreSQL."""

from __future__ import annotations

from oauthmail.db.outbox_doubt import OutboxDoubt
from oauthmail.db.outbox_rows import OutboxRows
from oauthmail.db.postgresql.driver import POSTGRESQL

__all__ = ["DOUBT", "ROWS"]

ROWS = OutboxRows(POSTGRESQL)
DOUBT = OutboxDoubt(POSTGRESQL, ROWS, arrival="seq")
