"""The ``IMessageLog`` contract: every message log (memory, SQLite, PostgreSQL) keeps these.

The ``messages`` fixture (``tests/contracts/conftest.py``) runs each test once per
implementation.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.messagelog.records import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FAILED,
    IN,
    OUT,
    QUEUED,
    REFUSED,
    SENT,
    LastMail,
    LogEntry,
)

NOW = 1_000_000.0


def received(uid, at=NOW, account="alice", outcome=DELIVERED, folder="INBOX"):
    return LogEntry(at, account, IN, outcome, f"<m{uid}@x.test>", 100 + uid, folder, uid)


def sent(queue_id, outcome, at=NOW, account="alice", **more):
    return LogEntry(at, account, OUT, outcome, queue_id=queue_id, **more)


def test_provides_interface(messages):
    """Every message log provides IMessageLog."""
    assert verifyObject(IMessageLog, messages)


def test_entries_name_only_known_outcomes():
    """A LogEntry refuses a direction or outcome the log does not know."""
    with pytest.raises(ValueError):
        LogEntry(NOW, "a", "sideways", SENT)
    with pytest.raises(ValueError):
        LogEntry(NOW, "a", IN, SENT)
    assert received(3).where == "INBOX/3" and sent("q1", QUEUED).where == "q1"


@pytest_twisted.ensureDeferred
async def test_one_batch_keeps_its_order_whole_number_times_and_empty_columns(messages):
    """A batch is written in its order; a time given as an int and a column of Nones are fine."""
    batch = [sent(f"q{i}", QUEUED, at=int(NOW) + i) for i in range(3)] + [received(7, at=NOW + 3)]
    await messages.record(batch)
    newest = await messages.recent("alice")
    assert [e.where for e in newest] == ["INBOX/7", "q2", "q1", "q0"]
    assert [e.at for e in newest] == [NOW + 3, NOW + 2, NOW + 1, NOW]
    assert [e.message_id for e in newest[1:]] == [None, None, None]


@pytest_twisted.ensureDeferred
async def test_recent_newest_first_per_account_and_direction(messages):
    """recent lists the account's entries newest first, by direction, in pages."""
    await messages.record([received(1), received(2, at=NOW + 1)])
    await messages.record([sent("q1", QUEUED, message_id="<q1@x>", size=10, at=NOW + 2)])
    await messages.record([received(9, account="bob")])
    every = await messages.recent("alice")
    assert [(e.direction, e.where) for e in every] == [
        (OUT, "q1"),
        (IN, "INBOX/2"),
        (IN, "INBOX/1"),
    ]
    assert all(e.id is not None for e in every)
    assert [e.where for e in await messages.recent("alice", IN)] == ["INBOX/2", "INBOX/1"]
    assert [e.where for e in await messages.recent("alice", OUT)] == ["q1"]
    assert [e.where for e in await messages.recent("alice", limit=1)] == ["q1"]
    page = await messages.recent("alice", before=every[0].id)
    assert [e.where for e in page] == ["INBOX/2", "INBOX/1"]
    first = every[2]
    assert (first.message_id, first.size, first.folder, first.uid) == (
        "<m1@x.test>",
        101,
        "INBOX",
        1,
    )
    assert await messages.entry(first.id) == first
    assert await messages.entry(10**9) is None
    assert await messages.recent("nobody") == []


@pytest_twisted.ensureDeferred
async def test_outbound_entries_take_message_id_and_size_from_the_queued_one(messages):
    """Later entries of one queue id carry the Message-ID and size of its first entry."""
    await messages.record([sent("q1", QUEUED, message_id="<a@x>", size=512)])
    await messages.record(
        [
            sent("q1", DEFERRED, at=NOW + 1, reply="451 4.3.0 try later"),
            sent("q2", QUEUED, message_id="<b@x>", size=7, at=NOW + 1),
            sent("q2", SENT, at=NOW + 1, reply="250 2.0.0 OK"),
        ]
    )
    await messages.record([sent("q1", FAILED, at=NOW + 2, reply="550 no"), sent("q1", BOUNCED)])
    history = await messages.history("alice", "q1")
    assert [e.outcome for e in history] == [QUEUED, DEFERRED, FAILED, BOUNCED]
    assert {(e.message_id, e.size) for e in history} == {("<a@x>", 512)}
    assert history[1].reply == "451 4.3.0 try later"
    (q2queued, q2sent) = await messages.history("alice", "q2")
    assert (q2sent.message_id, q2sent.size, q2sent.reply) == ("<b@x>", 7, "250 2.0.0 OK")
    assert await messages.history("bob", "q1") == []
    # Without an earlier entry, the facts stay unknown.
    await messages.record([sent("q9", SENT)])
    (alone,) = await messages.history("alice", "q9")
    assert (alone.message_id, alone.size) == (None, None)


@pytest_twisted.ensureDeferred
async def test_last_mail_per_account(messages):
    """lastMail: the newest delivery into a sink and the newest sending, per account asked."""
    await messages.record(
        [
            received(1, at=NOW),
            received(2, at=NOW + 5),
            received(3, at=NOW + 9, outcome=REFUSED),
            sent("q1", QUEUED, at=NOW + 20),
            sent("q1", SENT, at=NOW + 21),
            sent("q2", FAILED, at=NOW + 30),
            received(4, at=NOW + 40, account="bob"),
        ]
    )
    assert await messages.lastMail(["alice", "bob", "carol"]) == [
        LastMail("alice", NOW + 5, NOW + 21),
        LastMail("bob", NOW + 40, None),
        LastMail("carol", None, None),
    ]


@pytest_twisted.ensureDeferred
async def test_expire_oldest_first_bounded(messages):
    """expire deletes at most ``limit`` entries older than the cut, oldest first."""
    await messages.record([received(i, at=NOW + i) for i in range(5)])
    assert await messages.expire(NOW + 3, 2) == 2
    assert [e.uid for e in await messages.recent("alice")] == [4, 3, 2]
    assert await messages.expire(NOW + 3, 2) == 1
    assert await messages.expire(NOW + 3, 2) == 0
    assert [e.uid for e in await messages.recent("alice")] == [4, 3]


@pytest_twisted.ensureDeferred
async def test_record_nothing_is_fine(messages):
    """Recording an empty batch writes nothing and succeeds."""
    await messages.record([])
    assert await messages.recent("alice") == []
