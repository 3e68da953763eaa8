"""What ``oauthmail test`` proved about an account's Sent folder, in PostgreSQL (owner ``tokens``).

The same three ``accounts`` columns as SQLite's (tokens migration 2); each
function runs in one of the database's transactions, given its connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from oauthmail.db.errors import StoreError
from oauthmail.tokens.records import SentProof

if TYPE_CHECKING:
    from oauthmail.db.postgresql.driver import Connection

__all__ = ["getSentProof", "recordSentProof"]


def recordSentProof(
    conn: Connection, account_id: str, kept: bool, folder: str, now: float
) -> SentProof:
    row = conn.execute(
        "UPDATE accounts SET sent_proof_kept = %s, sent_proof_folder = %s, sent_proof_at = %s"
        " WHERE id = %s RETURNING id",
        (kept, folder, now, account_id),
    ).fetchone()
    if row is None:
        raise StoreError(f"no account {account_id!r}")
    return SentProof(account_id, kept, folder, now)


def getSentProof(conn: Connection, account_id: str) -> SentProof | None:
    row = conn.execute(
        "SELECT sent_proof_kept, sent_proof_folder, sent_proof_at FROM accounts"
        " WHERE id = %s AND sent_proof_at IS NOT NULL",
        (account_id,),
    ).fetchone()
    if row is None:
        return None
    kept, folder, at = row
    return SentProof(account_id, bool(kept), folder or "", at)
