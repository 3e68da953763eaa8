"""What ``oauthmail test`` proved about an account's Sent folder, in SQLite (owner ``tokens``).

Three columns of ``accounts`` (tokens migration 2): whether the provider's
Sent copy kept oauthmail's trace line, the mailbox looked in, and when. The
functions run in the database's threads, given its connection.
"""

from __future__ import annotations

import sqlite3

from oauthmail.db.errors import StoreError
from oauthmail.db.sqlite.connection import transaction
from oauthmail.tokens.records import SentProof

__all__ = ["getSentProof", "recordSentProof"]


def recordSentProof(
    conn: sqlite3.Connection, account_id: str, kept: bool, folder: str, now: float
) -> SentProof:
    with transaction(conn):
        cursor = conn.execute(
            "UPDATE accounts SET sent_proof_kept = ?, sent_proof_folder = ?, sent_proof_at = ?"
            " WHERE id = ?",
            (1 if kept else 0, folder, now, account_id),
        )
        if cursor.rowcount != 1:
            raise StoreError(f"no account {account_id!r}")
    return SentProof(account_id, kept, folder, now)


def getSentProof(conn: sqlite3.Connection, account_id: str) -> SentProof | None:
    row = conn.execute(
        "SELECT sent_proof_kept, sent_proof_folder, sent_proof_at FROM accounts"
        " WHERE id = ? AND sent_proof_at IS NOT NULL",
        (account_id,),
    ).fetchone()
    if row is None:
        return None
    kept, folder, at = row
    return SentProof(account_id, bool(kept), folder or "", at)
