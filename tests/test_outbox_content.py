"""A queued message's content is written once: its state changes leave it alone.

SQLite rewrites a row, every overflow page of a large value in it included,
whenever the row changes size, and a claim (``queued`` -> ``sending``) and an
outcome (``sent``, ``provider_accepted_at``) both do. Outbox migration 4 keeps
the content in ``outbound_content``; these tests count the pages each step
adds to the write-ahead log (every synced commit flushes them), not times.
"""

from __future__ import annotations

import os

import pytest
from test_outbound_queue import Rig
from test_outbox_group_commit import policy

from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.testing.sqlite import InlineSQLiteDatabase

NOW = 1000.0
fired = Rig.result  # an inline database's Deferreds have fired by the time a call returns
#: 64 KB of content: sixteen overflow pages of 4 KB, were they in the row.
CONTENT = b"Subject: big\r\n\r\n" + b"x" * (64 * 1024) + b"\r\n"


def entry(message_id: str) -> OutboxEntry:
    return OutboxEntry(message_id, "alice", "a@example.com", ("b@example.net",), CONTENT, NOW)


@pytest.fixture
def outbox(tmp_path):
    database = InlineSQLiteDatabase(str(tmp_path / "outbox.sqlite"))
    conn = database.connection
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # the log only grows: its size counts pages
    conn.execute(
        "INSERT INTO accounts (id, provider, state, created_at, updated_at)"
        " VALUES ('alice', 'generic', 'ok', 0, 0)"
    )
    (page,) = conn.execute("PRAGMA page_size").fetchone()
    wal = database.path + "-wal"

    def pages() -> int:
        return os.path.getsize(wal) // (page + 24) if os.path.exists(wal) else 0

    return SQLiteOutbox(database), pages, database


def test_claim_and_outcome_do_not_rewrite_the_content(outbox):
    """Enqueueing writes the 64 KB once; the claim and the outcome write a few pages each."""
    box, pages, _ = outbox
    before = pages()
    fired(box.enqueue(entry("m1")))
    enqueued = pages() - before
    assert enqueued >= len(CONTENT) // 4096  # the content itself, once

    before = pages()
    (claimed,) = fired(box.claimDue("alice", NOW, 10))
    assert claimed.data == CONTENT
    assert pages() - before <= 4

    before = pages()
    outcome = MessageOutcome("m1", 250, "ok", (RecipientOutcome("b@example.net", 250, "ok"),), True)
    (status,) = fired(box.recordOutcomes([outcome], NOW + 1, policy()))
    assert status.state == "sent"
    assert pages() - before <= 6


def test_the_content_goes_with_its_message(outbox):
    """Deleting a message deletes its content (the foreign key cascades)."""
    box, _, database = outbox
    fired(box.enqueue(entry("m1")))
    assert fired(box.messageData("m1")) == CONTENT
    fired(box.deleteMessage("m1"))
    assert fired(box.messageData("m1")) is None
    (left,) = database.connection.execute("SELECT COUNT(*) FROM outbound_content").fetchone()
    assert left == 0
