"""The SQL dialects and the rules the stores share, on their own (no database)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from oauthmail.db.dialect import Dialect
from oauthmail.db.errors import StoreError, VersionConflict
from oauthmail.db.outbox_rows import judgeOutcome
from oauthmail.db.postgresql.driver import POSTGRESQL
from oauthmail.db.sqlite.connection import SQLITE
from oauthmail.db.tokenstore import refusal
from oauthmail.smtp import outcomes

LOCKED = "SELECT id FROM outbound WHERE account = ? ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED"


def test_postgresql_takes_percent_marks_and_keeps_row_locks():
    """PostgreSQL's spelling of a shared statement: %s marks, the row locks as written."""
    assert POSTGRESQL.sql(LOCKED) == (
        "SELECT id FROM outbound WHERE account = %s ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED"
    )


@pytest.mark.parametrize("lock", [" FOR UPDATE", " FOR NO KEY UPDATE", " FOR UPDATE SKIP LOCKED"])
def test_sqlite_keeps_question_marks_and_drops_row_locks(lock):
    """SQLite's spelling: ? marks, and no row lock (its one writer holds the whole file)."""
    assert SQLITE.sql(f"SELECT 1 FROM accounts WHERE id = ?{lock}") == (  # noqa: S608
        "SELECT 1 FROM accounts WHERE id = ?"
    )


def test_a_statement_without_locks_or_marks_is_the_same_in_both():
    """Nothing but marks and row locks is rewritten."""
    text = "SELECT account, SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) FROM outbound"
    assert SQLITE.sql(text) == POSTGRESQL.sql(text) == text


def test_the_writing_context_is_each_backends_transaction_rule():
    """SQLite's write is its own transaction; PostgreSQL's runs in the database's one."""
    assert isinstance(SQLITE, Dialect) and SQLITE.writing.__name__ == "transaction"
    with POSTGRESQL.writing(object()):
        pass  # no BEGIN, no COMMIT: the database owns the transaction


def test_a_stale_version_is_a_conflict_before_a_missing_account():
    """Compare-and-swap refusals: a stale version first, then a missing account."""
    assert isinstance(refusal("a", False, 0, 3), VersionConflict)
    missing = refusal("a", False, 0, 0)
    assert isinstance(missing, StoreError) and not isinstance(missing, VersionConflict)
    assert "changed meanwhile" in str(refusal("a", True, 2, 2))


def test_an_attempt_in_doubt_defers_all_but_the_recipients_marked_in_doubt():
    """In doubt: only a recipient marked in doubt stays pending; refused or unmarked: deferred."""

    def reply(address, status, code, text, in_doubt=False):
        return SimpleNamespace(
            address=address, status=status, code=code, text=text, in_doubt=in_doubt
        )

    outcome = SimpleNamespace(
        message_id="m1",
        recipients=(
            reply("a@x", outcomes.OK, 250, "ok"),
            reply("b@x", outcomes.TEMPORARY, 450, "busy"),
            reply("c@x", outcomes.TEMPORARY, 0, "no answer", in_doubt=True),
            reply("d@x", outcomes.PERMANENT, 550, "no such user"),
            reply("e@x", outcomes.TEMPORARY, 0, "no answer, unmarked"),
        ),
        accepted=False,
        in_doubt=True,
    )
    judged = judgeOutcome(outcome, doubtful=True)
    assert [state for _, state in judged.answers] == [
        "sent",
        "deferred",
        "pending",
        "failed",
        "deferred",
    ]
    assert judged.failed is not None and "d@x" in judged.failed
    assert "b@x" in judged.temporary and "c@x" in judged.temporary
