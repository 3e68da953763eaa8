"""The message log's writers: the buffered writer, the sweep, what the queue and watcher tell it."""

from __future__ import annotations

import pytest
import test_outbound_queue as queue_rig  # the queue's own test rig
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.records import (
    BOUNCED,
    DEFERRED,
    DELIVERED,
    FAILED,
    IN,
    OUT,
    QUEUED,
    SENT,
    LogEntry,
    messageFacts,
)
from oauthmail.messagelog.sweep import MessageLogSweeper
from oauthmail.messagelog.writer import MessageLogWriter
from oauthmail.testing.memory_messages import MemoryMessageLog
from oauthmail.testing.memory_outbox import MemoryOutbox

NOW = 1_000_000.0
Rig, accept, REFUSE_OTHERS = queue_rig.Rig, queue_rig.accept, queue_rig.refuseOthers


@pytest.fixture(params=["memory", "sqlite"])
def storage(request, tmp_path):
    return queue_rig.Storage(request.param, tmp_path)


def entry(uid: int, at: float = NOW) -> LogEntry:
    return LogEntry(at, "alice", IN, DELIVERED, f"<{uid}@x>", 10, "INBOX", uid)


class SlowLog(MemoryMessageLog):
    """A log whose writes wait until the test lets them through (or fail)."""

    def __init__(self):
        super().__init__()
        self.calls: list[defer.Deferred] = []

    def record(self, entries):
        d = defer.Deferred()
        self.calls.append(d)
        d.addCallback(lambda _: super(SlowLog, self).record(entries))
        return d


def test_writer_provides_the_recorder_interface():
    """MessageLogWriter is an IMessageRecorder."""
    assert verifyObject(IMessageRecorder, MessageLogWriter(MemoryMessageLog(), Clock()))


def test_writer_batches_entries_until_its_delay():
    """Entries wait for the delay and then go in ONE write; nothing is written before."""
    clock, log = Clock(), MemoryMessageLog()
    writer = MessageLogWriter(log, clock, delay=0.5)
    for uid in range(5):
        writer.add(entry(uid))
    assert log.entries == [] and log.writes == 0
    clock.advance(0.5)
    assert [e.uid for e in log.entries] == [0, 1, 2, 3, 4] and log.writes == 1


def test_writer_writes_a_full_batch_at_once_and_one_write_at_a_time():
    """A full batch goes at once; entries added during a write go in the next one."""
    clock, log = Clock(), SlowLog()
    writer = MessageLogWriter(log, clock, delay=0.5, max_batch=3)
    for uid in range(3):
        writer.add(entry(uid))
    assert len(log.calls) == 1  # at once, no timer
    writer.add(entry(3))
    writer.add(entry(4))
    writer.add(entry(5))
    assert len(log.calls) == 1  # one write at a time
    log.calls[0].callback(None)
    clock.advance(0.5)
    assert len(log.calls) == 2
    log.calls[1].callback(None)
    assert [e.uid for e in log.entries] == [0, 1, 2, 3, 4, 5]


def test_writer_is_bounded_and_survives_a_failing_store():
    """Past max_pending entries are dropped (counted); a failed write is logged, not raised."""
    clock, log = Clock(), SlowLog()
    writer = MessageLogWriter(log, clock, delay=0.5, max_batch=100, max_pending=3)
    for uid in range(5):
        writer.add(entry(uid))
    assert writer.dropped == 2
    clock.advance(0.5)
    log.calls[0].errback(RuntimeError("disk full"))
    writer.add(entry(9))
    done = writer.flush()
    log.calls[1].callback(None)
    assert done.called
    assert [e.uid for e in log.entries] == [9]


def test_flush_waits_for_the_write_in_progress_and_writes_the_rest():
    """flush fires once everything added before it is written."""
    clock, log = Clock(), SlowLog()
    writer = MessageLogWriter(log, clock, delay=10.0, max_batch=2)
    writer.add(entry(1))
    writer.add(entry(2))  # a write in progress
    writer.add(entry(3))  # waits for it
    done: list = []
    writer.flush().addCallback(done.append)
    assert not done
    log.calls[0].callback(None)
    assert not done and len(log.calls) == 2
    log.calls[1].callback(None)
    assert done and [e.uid for e in log.entries] == [1, 2, 3]


def test_sweep_expires_old_entries_and_finished_messages_bounded_per_run():
    """A run removes at most ``limit`` of each; one that hit the limit comes back soon."""
    clock = Clock()
    clock.advance(NOW)
    log, outbox = MemoryMessageLog(), MemoryOutbox()
    log.record([entry(i, at=NOW - 40 * 86400 + i) for i in range(5)] + [entry(99, at=NOW)])
    sweeper = MessageLogSweeper(log, clock, outbox=outbox, limit=2, interval=3600, catch_up=5)
    sweeper.startService()
    assert [e.uid for e in log.entries] == [2, 3, 4, 99]
    clock.advance(5)
    assert [e.uid for e in log.entries] == [4, 99]
    clock.advance(5)
    assert [e.uid for e in log.entries] == [99]
    clock.advance(5)
    assert [e.uid for e in log.entries] == [99]  # nothing more until the next interval
    sweeper.stopService()
    assert not clock.getDelayedCalls()


def test_sweep_survives_a_failing_store():
    """A store that refuses costs a warning, never the timer."""

    class Broken(MemoryMessageLog):
        def expire(self, before, limit):
            return defer.fail(RuntimeError("store unreachable"))

    clock = Clock()
    sweeper = MessageLogSweeper(Broken(), clock, interval=60)
    sweeper.startService()
    clock.advance(60)
    assert sweeper.runOnce().result == 0
    sweeper.stopService()


def test_message_facts_read_the_header_only():
    """messageFacts: the Message-ID of the header (not one quoted in the body) and the size."""
    data = b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nMessage-ID: <not@this>\r\n"
    assert messageFacts(data) == ("<a@b>", len(data))
    assert messageFacts(b"Subject: none\r\n\r\nbody") == (None, 21)


def outbound(log: MemoryMessageLog, queue_id: str) -> list[tuple[str, str | None]]:
    return [(e.outcome, e.reply) for e in log.entries if e.queue_id == queue_id]


@pytest.fixture
def recorded():
    log = MemoryMessageLog()
    return log, MessageLogWriter(log, Clock(), delay=0.0, max_batch=1)


def test_queue_logs_queued_deferred_then_sent(storage, recorded):
    """A message queued, deferred by a 451 and then sent leaves those three entries."""
    log, writer = recorded

    def later(message, token):
        return tuple((r, 451, "4.3.0 try again later") for r in message.recipients)

    rig = Rig(storage, later, accept, recorder=writer)
    queue_id = rig.enqueue("bob@example.net")
    rig.clock.advance(rig.status(queue_id).next_attempt_at - rig.clock.seconds())
    assert rig.status(queue_id).state == "sent"
    history = [e for e in log.entries if e.queue_id == queue_id]
    assert [e.outcome for e in history] == [QUEUED, DEFERRED, SENT]
    assert all(e.direction == OUT and e.account == "alice" for e in history)
    queued = history[0]
    assert queued.size > 0 and queued.message_id.endswith(".oauthmail@example.com>")
    assert "451" in history[1].reply and "4.3.0" in history[1].reply
    assert history[2].reply == "bob@example.net: 250 2.0.0 ok"


def test_queue_logs_a_failure_for_good_and_its_bounce(storage, recorded):
    """A 5xx with bounce on: failed (with the reply), then bounced; the bounce is logged too."""
    log, writer = recorded
    rig = Rig(storage, REFUSE_OTHERS, bounce=True, recorder=writer)
    queue_id = rig.enqueue("bob@example.net")
    assert [o for o, _ in outbound(log, queue_id)] == [QUEUED, FAILED, BOUNCED]
    assert "550 5.1.1" in outbound(log, queue_id)[1][1]
    assert "alice@example.com" in outbound(log, queue_id)[2][1]
    bounce_ids = {e.queue_id for e in log.entries} - {queue_id}
    (bounce_id,) = bounce_ids
    assert [o for o, _ in outbound(log, bounce_id)] == [SENT]  # not queued through enqueue


def test_queue_retry_and_delete_by_id(storage, recorded):
    """retryMessage sends a deferred message at once; deleteMessage tells its waiters."""
    log, writer = recorded

    def later(message, token):
        return tuple((r, 451, "4.3.0 later") for r in message.recipients)

    rig = Rig(storage, later, accept, recorder=writer)
    first = rig.enqueue()
    waiting = rig.queue.whenDelivered(first)
    status = rig.result(rig.queue.retryMessage(first))
    assert status is not None and rig.status(first).state == "sent"
    assert rig.result(waiting).state == "sent"
    rig2 = Rig(storage, later, recorder=writer)
    second = rig2.enqueue()
    waiter = rig2.queue.whenDelivered(second)
    assert rig2.result(rig2.queue.deleteMessage(second)).id == second
    with pytest.raises(KeyError):
        rig2.result(waiter)
    assert rig2.result(rig2.queue.retryMessage(second)) is None


def test_watcher_logs_each_message_the_sink_took_or_refused():
    """After the ledger's record: an entry per delivered message, per refusal, none per retry."""
    import test_imap_watcher as watcher_rig

    from oauthmail.messagelog.records import REFUSED
    from oauthmail.sinks.errors import PermanentSinkError, TemporarySinkError

    log = MemoryMessageLog()
    clock = Clock()
    writer = MessageLogWriter(log, clock, delay=0.0, max_batch=1)
    watcher, server, _tokens, _ledger, sink, _ = watcher_rig.setup(recorder=writer)
    server.add(b"Message-ID: <one@x>\r\n\r\none")
    server.add(b"Message-ID: <two@x>\r\n\r\ntwo")
    server.add(b"Message-ID: <three@x>\r\n\r\nthree")
    sink.verdicts[b"Message-ID: <two@x>\r\n\r\ntwo"] = PermanentSinkError("mailbox full")
    sink.verdicts[b"Message-ID: <three@x>\r\n\r\nthree"] = TemporarySinkError("busy")
    watcher.start()
    got = [(e.uid, e.outcome, e.message_id, e.reply) for e in log.entries]
    assert got[:2] == [(1, DELIVERED, "<one@x>", None), (2, REFUSED, "<two@x>", "mailbox full")]
    assert all(e.folder == "INBOX" and e.account == "alice" for e in log.entries)
    assert log.entries[0].size == len(b"Message-ID: <one@x>\r\n\r\none")
    assert [e.uid for e in log.entries].count(3) <= 1  # told once, when it finally lands
    watcher.stop()


_FIELD = st.sampled_from(
    [
        b"Subject: hi",
        b"message-id: <a@b>",
        b"Message-ID: <c@d>",
        b"MESSAGE-ID:  <e@f> (x)",
        b"Message-ID: broken",
        b"Message-ID:\r\n <folded@x>",
        b"X-Message-ID: <no@x>",
        b"Received: by x",
        b"To: <t@x>",
    ]
)


@given(fields=st.lists(_FIELD, max_size=6), body=st.binary(max_size=200), crlf=st.booleans())
def test_message_facts_agree_with_the_trace_parser(fields, body, crlf):
    """The fast path finds the same Message-ID as oauthmail.mail.trace.messageIdOf."""
    from oauthmail.mail.trace import messageIdOf
    from oauthmail.text import cleanText

    nl = b"\r\n" if crlf else b"\n"
    message = nl.join(f.replace(b"\r\n", nl) for f in fields) + nl + nl + body
    expected = messageIdOf(message)
    assert messageFacts(message) == (cleanText(expected, 250) if expected else None, len(message))
