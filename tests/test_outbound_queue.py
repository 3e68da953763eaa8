"""Unit tests of the durable outbound queue: storing, retrying, giving up, recovering.

Every test runs twice: on the memory outbox and on the SQLite outbox over a
database that runs its SQL at once in the test's thread
(:class:`~oauthmail.testing.sqlite.InlineSQLiteDatabase`), so time is a
``Clock`` and every Deferred has fired by the time a call returns. A few tests
use the real threaded SQLite database to prove the two fit together.
"""

from __future__ import annotations

import email
import random

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.config import AccountConfig, AccountSmtpConfig, ProfileConfig, ServerConfig
from oauthmail.db.sqlite.outbox import SQLiteOutbox
from oauthmail.health import AccountHealth
from oauthmail.interfaces import (
    IDeliveryPolicy,
    IMessageSender,
    ISentFolder,
    ISubmissionQueue,
    ITokenSource,
)
from oauthmail.mail.trace import SentCheckError, SentProbe
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.api import envelopeRecipients, send, sendFromCLI
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome, SessionError, SessionResult
from oauthmail.smtp.queue.records import OutboxEntry
from oauthmail.smtp.queue.sender import SMTPSender
from oauthmail.smtp.queue.service import OutboundQueue, UnknownAccount
from oauthmail.smtp.queue.writer import OutcomeWriter
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.testing.sqlite import InlineSQLiteDatabase
from oauthmail.tokens.errors import AccountNotAuthorised

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def account(name: str = "alice", sent_folder: str = "none") -> AccountConfig:
    profile = ProfileConfig(
        name="p",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="https://login.example.com/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="c",
        client_secret=None,
        scopes=("mail",),
        smtp=ServerConfig("mail.example.com", 587, "starttls"),
    )
    smtp = AccountSmtpConfig(sent_folder=sent_folder)
    return AccountConfig(name, f"{name}@example.com", profile, smtp=smtp)


class Storage:
    """Where a test's outbox lives; :meth:`open` after :meth:`crash` is what a restart sees."""

    def __init__(self, kind, tmp_path):
        self.kind = kind
        self.path = str(tmp_path / "queue.sqlite")
        self.database = None
        self.memory = MemoryOutbox() if kind == "memory" else None

    def open(self):
        if self.kind == "memory":
            return self.memory
        self.database = InlineSQLiteDatabase(self.path)
        return SQLiteOutbox(self.database)

    def crash(self):
        """SIGKILL: nothing more happens in this process (the memory outbox keeps its state)."""
        if self.database is not None:
            self.database.close()
            self.database = None


@pytest.fixture(params=["memory", "sqlite"])
def storage(request, tmp_path):
    return Storage(request.param, tmp_path)


@implementer(ITokenSource)
class FakeTokens:
    def __init__(self):
        self.calls: list[str] = []
        self.error: Exception | None = None
        self.n = 0

    def accessToken(self, account_id):
        self.calls.append("access")
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed(Secret(f"token-{self.n}"))

    def forceRefresh(self, account_id):
        self.calls.append("refresh")
        if self.error is not None:
            return defer.fail(self.error)
        self.n += 1
        return defer.succeed(Secret(f"token-{self.n}"))


def accept(message, token):
    return tuple((r, 250, "2.0.0 ok") for r in message.recipients)


class Lost:
    """The final dot went out and the connection died before the answer.

    ``refused``: ``(rcpt, code, text)`` the server refused at RCPT before that.
    """

    def __init__(self, *refused):
        self.refused = refused


class Hang(Lost):
    """Like ``"hang"`` (a crash mid-message), after ``refused`` were refused at RCPT."""


#: Accept the session's first message, then end it with a 421 (a provider that
#: limits the messages of one session).
ACCEPT_ONE_THEN_421 = "accept one, then 421"


@implementer(IMessageSender)
class FakeSender:
    """Plays the provider: ``script`` is a list of per-session behaviours (last one repeats).

    A behaviour is a function ``(message, token) -> ((rcpt, code, text), ...)``, a
    ``SessionError`` (the session fails before any message), or ``"hang"``.
    """

    def __init__(self, *script):
        self.script = list(script) or [accept]
        self.sessions: list[tuple[str, list]] = []
        self.hanging: list[defer.Deferred] = []
        self.gates: list = []

    def send(self, account, token, messages, hooks):
        beforeData, onOutcome, more = hooks.beforeData, hooks.onOutcome, hooks.more
        behaviour = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        self.sessions.append((token.reveal(), [(m.id, m.recipients) for m in messages]))
        if isinstance(behaviour, SessionError):
            return defer.succeed(SessionResult([], behaviour))
        result = SessionResult()
        pending = list(messages)
        while pending:
            m = pending.pop(0)
            if isinstance(behaviour, (Lost, Hang)):
                refused = tuple(RecipientOutcome(*r) for r in behaviour.refused)
                self.gates.append(beforeData(m, refused))
            else:
                self.gates.append(beforeData(m))
            if behaviour == "hang" or isinstance(behaviour, Hang):
                d = defer.Deferred()
                self.hanging.append(d)
                return d
            if isinstance(behaviour, Lost):
                why = "connection lost before the server confirmed the message"
                known = {r.address: r for r in refused}
                outcome = MessageOutcome(
                    m.id,
                    0,
                    why,
                    tuple(
                        known.get(r, RecipientOutcome(r, 0, why, in_doubt=True))
                        for r in m.recipients
                    ),
                    False,
                    in_doubt=True,
                )
                result.outcomes.append(outcome)
                onOutcome(outcome)
                result.error = SessionError(outcomes.TEMPORARY, why)
                return defer.succeed(result)
            if behaviour == ACCEPT_ONE_THEN_421:
                replies = accept(m, token)
                outcome = MessageOutcome(m.id, 250, "ok", (RecipientOutcome(*replies[0]),), True)
                result.outcomes.append(outcome)
                onOutcome(outcome)
                result.error = SessionError(outcomes.TEMPORARY, "421 4.7.0 too many messages")
                return defer.succeed(result)
            replies = behaviour(m, token)
            recipients = tuple(RecipientOutcome(*r) for r in replies)
            accepted = any(r.status == outcomes.OK for r in recipients)
            outcome = MessageOutcome(m.id, replies[0][1], replies[0][2], recipients, accepted)
            result.outcomes.append(outcome)
            onOutcome(outcome)
            if not pending and more is not None:
                claimed = []
                more().addCallback(claimed.extend)
                self.sessions[-1][1].extend((c.id, c.recipients) for c in claimed)
                pending.extend(claimed)
        return defer.succeed(result)


class Rig:
    def __init__(
        self,
        storage,
        *script,
        max_age=5 * 86400.0,
        start=True,
        bounce=False,
        sent_folder=None,
        sent_check_delay=0.0,
        recorder=None,
        sender=None,
    ):
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.storage = storage
        self.outbox = storage.open()
        self.store = MemoryTokenStore(self.clock)
        self.store.ensureAccount("alice", "generic")
        self.tokens = FakeTokens()
        self.sender = sender if sender is not None else FakeSender(*script)
        self.queue = OutboundQueue(
            self.outbox,
            self.tokens,
            {"alice": account(sent_folder="auto" if sent_folder is not None else "none")},
            reactor=None,
            health=AccountHealth(self.store, self.clock),
            clock=self.clock,
            sender=self.sender,
            max_age=max_age,
            backoff_base=60.0,
            backoff_max=3600.0,
            poll_interval=60.0,
            random=random.Random(7),
            bounce=bounce,
            sent_folder=sent_folder,
            sent_check_delay=sent_check_delay,
            sent_check_give_up=3600.0,
            recorder=recorder,
        )
        if start:
            self.queue.startService()

    def enqueue(self, *recipients: str) -> str:
        d = self.queue.enqueue(
            "alice", "alice@example.com", list(recipients) or ["bob@example.net"], MESSAGE
        )
        return self.result(d)

    @staticmethod
    def result(d):
        box = []
        d.addBoth(box.append)
        assert box, "the Deferred has not fired"
        if hasattr(box[0], "raiseException"):
            box[0].raiseException()
        return box[0]

    def status(self, message_id):
        return self.result(self.queue.status(message_id))

    def statuses(self):
        return self.result(self.outbox.listStatuses("alice"))

    def data(self, message_id):
        return self.result(self.outbox.messageData(message_id))


def test_provides_the_submission_interface(storage):
    """OutboundQueue is what the submission server needs."""
    rig = Rig(storage, start=False)
    assert verifyObject(ISubmissionQueue, rig.queue)


def test_enqueue_stores_then_sends(storage):
    """A queued message is stored with its recipients and sent at once; whenDelivered fires."""
    rig = Rig(storage, start=False)
    message_id = rig.enqueue("bob@example.net", "carol@example.net")
    status = rig.status(message_id)
    assert status.state == "queued"
    assert [r.address for r in status.recipients] == ["bob@example.net", "carol@example.net"]
    stored = rig.data(message_id)
    # The message as given, under oauthmail's trace line (and the Message-ID it lacked).
    assert stored.endswith(MESSAGE)
    if rig.storage.kind == "sqlite":
        row = rig.storage.database.connection.execute(
            "SELECT c.message, o.size, o.message FROM outbound AS o"
            " JOIN outbound_content AS c ON c.id = o.id"
        )
        # The content in its own table (outbox migration 4); the old column stays empty.
        assert tuple(row.fetchone()) == (stored, len(stored), b"")
    assert stored.startswith(f"Received: by localhost (oauthmail) id {message_id};".encode())
    done = rig.queue.whenDelivered(message_id)
    rig.queue.startService()
    status = rig.result(done)
    assert status.state == "sent"
    assert status.provider_accepted_at == rig.clock.seconds()
    assert {r.state for r in status.recipients} == {"sent"}
    assert len(rig.sender.sessions) == 1


def test_many_messages_one_session(storage):
    """Messages queued while the account is idle go out together over one session."""
    rig = Rig(storage, start=False)
    ids = [rig.enqueue() for _ in range(3)]
    rig.queue.startService()
    assert len(rig.sender.sessions) == 1
    assert [m for m, _ in rig.sender.sessions[0][1]] == ids


def test_unknown_account_and_no_recipients_are_refused(storage):
    """enqueue refuses an unconfigured account and an empty recipient list."""
    rig = Rig(storage)
    with pytest.raises(UnknownAccount):
        rig.result(rig.queue.enqueue("mallory", "m@example.com", ["x@y.z"], MESSAGE))
    with pytest.raises(ValueError, match="recipient"):
        rig.result(rig.queue.enqueue("alice", "alice@example.com", [], MESSAGE))


def tempfail(message, token):
    return tuple((r, 451, "4.3.0 try later") for r in message.recipients)


def test_temporary_failure_backs_off_exponentially(storage):
    """4xx replies are retried with exponential backoff (jittered within [d/2, d]), capped."""
    rig = Rig(storage, tempfail)
    message_id = rig.enqueue()
    delays = []
    for _ in range(9):
        status = rig.status(message_id)
        assert status.state == "queued"
        delay = status.next_attempt_at - rig.clock.seconds()
        delays.append(delay)
        rig.clock.advance(delay)
    ceilings = [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert len(rig.sender.sessions) == 10
    assert rig.status(message_id).attempts == 10
    assert "4.3.0" in rig.status(message_id).last_error


def test_gives_up_after_max_age(storage):
    """A message still failing temporarily after max_age fails for good, with the reason."""
    rig = Rig(storage, tempfail, max_age=1000.0)
    message_id = rig.enqueue()
    done = rig.queue.whenDelivered(message_id)
    for _ in range(50):
        if done.called:
            break
        rig.clock.advance(rig.status(message_id).next_attempt_at - rig.clock.seconds())
    status = rig.result(done)
    assert status.state == "failed"
    assert "gave up" in status.last_error and "4.3.0" in status.last_error
    assert status.created_at + 1000.0 == pytest.approx(rig.clock.seconds())


def test_permanent_failure_is_not_retried(storage):
    """A 5xx fails the message at once; it is never sent again."""
    rig = Rig(storage, lambda m, t: tuple((r, 550, "5.1.1 no such user") for r in m.recipients))
    message_id = rig.enqueue()
    status = rig.result(rig.queue.whenDelivered(message_id))
    assert status.state == "failed"
    assert status.recipients[0].code == 550
    rig.clock.advance(86400)
    assert len(rig.sender.sessions) == 1


def test_only_pending_recipients_are_retried(storage):
    """After a partial success only the recipients that got a 4xx are sent to again."""

    def partial(message, token):
        return tuple((r, 451 if r.startswith("later") else 250, "x") for r in message.recipients)

    rig = Rig(storage, partial, accept)
    message_id = rig.enqueue("now@example.net", "later@example.net")
    status = rig.status(message_id)
    assert status.state == "queued" and status.provider_accepted_at is not None
    rig.clock.advance(status.next_attempt_at - rig.clock.seconds())
    assert rig.sender.sessions[1][1] == [(message_id, ("later@example.net",))]
    assert rig.status(message_id).state == "sent"


def test_crash_while_sending_sends_again_but_never_a_sent_one(storage):
    """After a crash a 'sending' message is sent again; a 'sent' one is not."""
    rig = Rig(storage, accept, "hang")
    sent_id = rig.enqueue()
    assert rig.status(sent_id).state == "sent"
    message_id = rig.enqueue()
    assert rig.status(message_id).state == "sending"
    # SIGKILL: nothing more happens in this process; a new one opens the same file.
    rig.storage.crash()
    again = Rig(storage, start=False)
    assert again.status(message_id).state == "sending"
    again.queue.startService()
    assert again.status(message_id).state == "sent"
    assert again.status(sent_id).state == "sent"
    assert [m for m, _ in again.sender.sessions[0][1]] == [message_id]


def test_refused_token_is_refreshed_once(storage):
    """A token refusal triggers one forceRefresh and one retry with the new token."""
    refused = SessionError(outcomes.REFRESH, "535 5.7.8 refused", auth=True)
    rig = Rig(storage, refused, accept)
    message_id = rig.enqueue()
    assert rig.status(message_id).state == "sent"
    assert rig.tokens.calls == ["access", "refresh"]
    assert [token for token, _ in rig.sender.sessions] == ["token-0", "token-1"]


def test_refused_twice_puts_account_in_error_and_keeps_messages(storage):
    """Two refusals in a row: account 'error', the message stays queued and goes out later."""
    refused = SessionError(outcomes.REFRESH, "535 5.7.8 refused", auth=True)
    rig = Rig(storage, refused, refused, accept)
    message_id = rig.enqueue()
    status = rig.status(message_id)
    assert status.state == "queued"
    record = rig.result(rig.store.getAccount("alice"))
    assert record.state == "error" and "535" in record.last_error
    # The account is held for one backoff step (<= backoff_base here), the message
    # waits for its own next attempt; whichever is later, it goes out then.
    rig.clock.advance(max(status.next_attempt_at - rig.clock.seconds(), 60.0))
    assert rig.status(message_id).state == "sent"
    assert rig.result(rig.store.getAccount("alice")).state == "ok"


def test_account_needing_reauth_keeps_messages_queued(storage):
    """Without a usable token nothing is sent; after re-authorisation the message goes out."""
    rig = Rig(storage, start=False)
    rig.tokens.error = AccountNotAuthorised("alice", "needs re-authorisation", needs_reauth=True)
    rig.queue.startService()
    message_id = rig.enqueue()
    assert rig.sender.sessions == []
    status = rig.status(message_id)
    assert status.state == "queued" and "re-authorisation" in status.last_error
    stats = rig.result(rig.queue.stats())["alice"]
    assert stats.depth == 1 and "re-authorisation" in stats.last_error
    rig.tokens.error = None
    assert rig.result(rig.queue.retryNow("alice")) == 1
    assert rig.status(message_id).state == "sent"


def test_microsoft_smtp_auth_disabled_is_an_account_error(storage):
    """535 5.7.139 is not retried with a refresh; the account shows the plain-words reason."""
    reason = outcomes.classifyAuthFailure(535, "5.7.139 Authentication unsuccessful", False)
    rig = Rig(storage, SessionError(reason.action, reason.reason, auth=True))
    rig.enqueue()
    assert rig.tokens.calls == ["access"]
    record = rig.result(rig.store.getAccount("alice"))
    assert record.state == "error"
    assert "SmtpClientAuthentication" in record.last_error


def test_stats_report_depth_and_oldest_age(storage):
    """stats() gives the queue depth and the age of the oldest waiting message per account."""
    rig = Rig(storage, tempfail)
    rig.enqueue()
    rig.clock.advance(10)
    rig.enqueue()
    stats = rig.result(rig.queue.stats())["alice"]
    assert stats.depth == 2
    assert stats.oldest_age == pytest.approx(10)
    assert "4.3.0" in stats.last_error


def test_stop_leaves_messages_for_next_start(storage):
    """Stopping aborts the session in flight; the message is sent after the next start."""
    rig = Rig(storage, "hang")
    message_id = rig.enqueue()
    rig.result(rig.queue.stopService())
    assert rig.status(message_id).state == "sending"
    rig.sender.script = [accept]
    rig.queue.startService()
    assert rig.status(message_id).state == "sent"


def test_api_send_and_cli_helper(storage):
    """send() queues and fires with the id; sendFromCLI reads recipients from the headers."""
    rig = Rig(storage)
    message_id = rig.result(
        send(rig.queue, "alice", "alice@example.com", "bob@example.net", MESSAGE)
    )
    assert rig.status(message_id).state == "sent"
    assert envelopeRecipients(b"To: A <a@x.test>, b@x.test\r\nCc: c@x.test\r\n\r\n") == [
        "a@x.test",
        "b@x.test",
        "c@x.test",
    ]
    # Only the header section counts; 8-bit headers are read as UTF-8, so that a refused
    # address is named as written (it read "b\ufffd\ufffdb@..." before).
    assert envelopeRecipients("To: bőb@x.test\n\nCc: body@x.test\n".encode()) == ["bőb@x.test"]
    d = defer.ensureDeferred(sendFromCLI(rig.queue, account(), MESSAGE, wait=True))
    cli_id, status = rig.result(d)
    assert status.state == "sent" and status.recipients[0].address == "bob@example.net"
    assert status.mail_from == "alice@example.com" and cli_id != message_id


@pytest_twisted.ensureDeferred
async def test_queue_in_the_real_token_store(tmp_path):
    """Migration 3 creates the tables in the SQLite token store; enqueue is synced to disk."""
    from twisted.internet import reactor

    from oauthmail.db.sqlite.tokens import SQLiteTokenStore
    from oauthmail.tokens.crypto import TokenCipher

    cipher = TokenCipher.coerce(__import__("cryptography.fernet").fernet.Fernet.generate_key())
    store = SQLiteTokenStore(str(tmp_path / "t.sqlite"), cipher, reactor, reactor)
    await store.open()
    try:
        outbox = SQLiteOutbox(store.database)
        queue = OutboundQueue(outbox, FakeTokens(), {"alice": account()}, reactor)
        message_id = await queue.enqueue("alice", "alice@example.com", ["b@x.test"], MESSAGE)
        status = await queue.status(message_id)
        assert status.state == "queued" and status.recipients[0].state == "pending"

        def pragma(conn):
            return conn.execute("PRAGMA synchronous").fetchone()[0]

        assert await store.database.runWrite(pragma) == 2  # FULL
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_outbox_migrations_apply_to_a_file_without_them(tmp_path):
    """A store without the outbox's tables gains them and keeps its accounts."""
    import sqlite3

    from twisted.internet import reactor

    from oauthmail.db.sqlite.tokens import SQLiteTokenStore
    from oauthmail.tokens.crypto import TokenCipher

    cipher = TokenCipher.coerce(__import__("cryptography.fernet").fernet.Fernet.generate_key())
    path = str(tmp_path / "t.sqlite")
    store = SQLiteTokenStore(path, cipher, reactor, reactor)
    await store.open()
    await store.ensureAccount("alice", "generic")
    await store.close()
    raw = sqlite3.connect(path)
    with raw:
        raw.execute("DROP TABLE outbound_content")
        raw.execute("DROP TABLE outbound_recipients")
        raw.execute("DROP TABLE outbound")
        raw.execute("DELETE FROM schema_migrations WHERE owner = 'outbox'")
    raw.close()
    store = SQLiteTokenStore(path, cipher, reactor, reactor)
    await store.open()
    try:
        assert (await store.getAccount("alice")) is not None
        outbox = SQLiteOutbox(store.database)
        queue = OutboundQueue(outbox, FakeTokens(), {"alice": account()}, reactor)
        message_id = await queue.enqueue("alice", "alice@example.com", ["b@x.test"], MESSAGE)
        assert (await queue.status(message_id)).state == "queued"
    finally:
        await store.close()
    raw = sqlite3.connect(path)
    try:
        from oauthmail.db.sqlite.schema import OUTBOX

        rows = raw.execute("SELECT version FROM schema_migrations WHERE owner = 'outbox'")
        assert [r[0] for r in rows] == list(range(1, OUTBOX.latest + 1))
    finally:
        raw.close()


def test_without_bcc_removes_only_the_bcc_field():
    """Bcc (with folded lines) goes; every other byte stays, the body included."""
    from oauthmail.smtp.api import withoutBcc

    message = (
        b"From: a@example.com\r\nBcc: hidden@example.net,\r\n  other@example.net\r\n"
        b"To: b@example.net\r\nbcc: x@example.net\r\n\r\nBcc: in the body stays\r\n"
    )
    assert withoutBcc(message) == (
        b"From: a@example.com\r\nTo: b@example.net\r\n\r\nBcc: in the body stays\r\n"
    )


@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(["To", "Cc", "Subject", "X-Thing"]),
            st.text(alphabet="abc@. ", max_size=20),
        ),
        max_size=5,
    ),
    body=st.binary(max_size=200),
)
def test_without_bcc_keeps_messages_without_bcc(headers, body):
    """A message with no Bcc field comes back byte for byte."""
    from oauthmail.smtp.api import withoutBcc

    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
    message = head + b"\r\n" + body
    assert withoutBcc(message) == message


def test_batch_is_marked_sending_in_one_transaction_and_outcomes_group_committed(tmp_path):
    """Claiming a batch is one write transaction; outcomes arriving together share commits."""
    rig = Rig(Storage("sqlite", tmp_path), start=False)
    ids = [rig.enqueue() for _ in range(5)]
    conn = rig.storage.database.connection
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    rig.queue.startService()
    conn.set_trace_callback(None)
    begins = [s for s in statements if s.startswith("BEGIN")]
    marks = [s for s in statements if "SET state = 'sending'" in s]
    assert len(marks) == 5
    # Recovery, one claim, and (with the synchronous database) one outcome write per reply.
    assert len(begins) <= 1 + 1 + 5
    first = statements.index(marks[0])
    between = statements[first : statements.index(marks[-1])]
    assert not [s for s in between if s.startswith(("BEGIN", "COMMIT"))]
    assert all(rig.status(i).state == "sent" for i in ids)
    # The claim and outcome commits skip fsync; the connection is FULL again afterwards.
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_claim_is_one_write_on_every_outbox(storage):
    """However many messages a session claims, the outbox is written once for them."""
    rig = Rig(storage, start=False)
    for _ in range(5):
        rig.enqueue()
    claimed = rig.result(rig.outbox.claimDue("alice", rig.clock.seconds(), 10))
    assert len(claimed) == 5
    assert {s.state for s in rig.statuses()} == {"sending"}
    if storage.kind == "memory":
        assert rig.outbox.writes == 5 + 1  # five enqueues, one claim


def test_outcome_writer_merges_outcomes_queued_during_a_write(storage):
    """Outcomes that arrive while one is being written go into one transaction together."""
    rig = Rig(storage, start=False)
    ids = [rig.enqueue() for _ in range(4)]
    assert len(rig.result(rig.outbox.claimDue("alice", rig.clock.seconds(), 10))) == 4
    held: list[tuple] = []

    def slow(batch):
        d = defer.Deferred()
        held.append((d, list(batch)))
        return d

    def record(d, batch):
        real = rig.outbox.recordOutcomes(batch, rig.clock.seconds(), rig.queue.policy)
        real.chainDeferred(d)

    writer = OutcomeWriter("alice", slow, lambda statuses: None)

    def outcome(message_id):
        r = RecipientOutcome("bob@example.net", 250, "ok")
        return MessageOutcome(message_id, 250, "ok", (r,), True)

    writer.add(outcome(ids[0]))
    for message_id in ids[1:]:
        writer.add(outcome(message_id))
    assert writer.unrecorded == 4 and len(held) == 1
    gate = writer.room(0)
    assert gate is not None and not gate.called
    record(*held.pop())
    assert len(held) == 1 and len(held[0][1]) == 3  # the other three, together
    record(*held.pop())
    assert gate.called and writer.unrecorded == 0
    assert all(rig.status(i).state == "sent" for i in ids)


def test_senders_provide_the_interface():
    """The SMTP sender and the tests' fake keep the IMessageSender promise."""
    assert verifyObject(IMessageSender, SMTPSender(None))
    assert verifyObject(IMessageSender, FakeSender())


def test_policy_provides_the_interface(storage):
    """The queue's DeliveryPolicy is what an outbox applies (IDeliveryPolicy)."""
    rig = Rig(storage, start=False)
    assert verifyObject(IDeliveryPolicy, rig.queue.policy)


def test_databases_provide_the_interface(tmp_path):
    """The threaded SQLite database and its synchronous twin keep the ISQLiteDatabase promise."""
    from oauthmail.db.sqlite.database import ISQLiteDatabase, SQLiteDatabase

    assert verifyObject(ISQLiteDatabase, SQLiteDatabase(str(tmp_path / "a.sqlite"), None))
    assert verifyObject(ISQLiteDatabase, InlineSQLiteDatabase(str(tmp_path / "b.sqlite")))


# -- bounces (queue.bounce) -------------------------------------------------------------


def refuseOthers(message, token):
    """The provider takes mail for alice (the sender) and refuses everyone else for good."""
    return tuple(
        (r, 250, "2.0.0 ok") if r == "alice@example.com" else (r, 550, "5.1.1 no such user")
        for r in message.recipients
    )


def bounces(rig):
    """Every queued bounce: (id, mail_from, state, recipients, parsed message)."""
    return [
        (
            s.id,
            s.mail_from,
            s.state,
            [r.address for r in s.recipients],
            email.message_from_bytes(rig.data(s.id)),
        )
        for s in rig.statuses()
        if s.mail_from == ""
    ]


def reportFields(parsed):
    """The per-recipient blocks of a parsed delivery-status part."""
    status = parsed.get_payload()[1]
    return status.get_payload()[1:]


def test_permanent_failure_with_bounce_queues_one_bounce_to_the_sender(storage):
    """With bounce on, a 5xx queues one DSN from <> to the envelope sender, and it is sent."""
    rig = Rig(storage, refuseOthers, bounce=True)
    message_id = rig.enqueue("bob@example.net")
    assert rig.status(message_id).state == "failed"
    (bounce,) = bounces(rig)
    bounce_id, mail_from, state, recipients, parsed = bounce
    assert mail_from == "" and recipients == ["alice@example.com"]
    assert state == "sent"  # it went out over the same account, in the same session
    assert parsed.get_content_type() == "multipart/report"
    (block,) = reportFields(parsed)
    assert block["Final-Recipient"] == "rfc822; bob@example.net"
    assert block["Status"] == "5.1.1"
    assert block["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert b"hello" not in rig.data(bounce_id)
    sent = [m for _, messages in rig.sender.sessions for m, _ in messages]
    assert sent.count(bounce_id) == 1 and sent.count(message_id) == 1


def test_permanent_failure_without_bounce_queues_nothing(storage):
    """With bounce off (the default) a 5xx queues no bounce."""
    rig = Rig(storage, refuseOthers)
    message_id = rig.enqueue("bob@example.net")
    assert rig.status(message_id).state == "failed"
    assert bounces(rig) == []
    assert len(rig.statuses()) == 1


def test_partial_failure_bounces_only_the_failed_recipients(storage):
    """A message sent to some recipients and refused for others bounces only the refused ones."""
    rig = Rig(storage, refuseOthers, bounce=True)
    message_id = rig.enqueue("alice@example.com", "bob@example.net", "carol@example.net")
    assert rig.status(message_id).state == "sent"
    (bounce,) = bounces(rig)
    blocks = reportFields(bounce[4])
    assert [b["Final-Recipient"] for b in blocks] == [
        "rfc822; bob@example.net",
        "rfc822; carol@example.net",
    ]


def test_a_failed_bounce_is_never_bounced(storage):
    """When the bounce itself is refused for good, no further bounce is queued (no loop)."""
    rig = Rig(
        storage, lambda m, t: tuple((r, 550, "5.7.1 go away") for r in m.recipients), bounce=True
    )
    message_id = rig.enqueue("bob@example.net")
    rig.clock.advance(86400)
    assert rig.status(message_id).state == "failed"
    (bounce,) = bounces(rig)
    assert bounce[2] == "failed"
    assert len(rig.statuses()) == 2


def test_expiry_after_max_age_bounces_with_delivery_time_expired(storage):
    """A message given up after max_age is bounced with status 5.4.7 and the reason."""
    rig = Rig(storage, tempfail, max_age=1000.0, bounce=True)
    message_id = rig.enqueue()
    done = rig.queue.whenDelivered(message_id)
    for _ in range(50):
        if done.called:
            break
        rig.clock.advance(rig.status(message_id).next_attempt_at - rig.clock.seconds())
    assert rig.result(done).state == "failed"
    (bounce,) = bounces(rig)
    (block,) = reportFields(bounce[4])
    assert block["Status"] == "5.4.7"
    assert "Diagnostic-Code" not in block
    human = bounce[4].get_payload()[0].get_payload(decode=True).decode()
    assert "gave up" in human and "bob@example.net" in human


def test_restart_after_a_failure_does_not_bounce_again(storage):
    """The bounce is queued with the failure; a restart finds it and queues no second one."""
    rig = Rig(storage, refuseOthers, bounce=True)
    rig.enqueue("bob@example.net")
    rig.queue.stopService()
    again = OutboundQueue(
        rig.outbox,
        rig.tokens,
        {"alice": account()},
        reactor=None,
        clock=rig.clock,
        sender=rig.sender,
        bounce=True,
    )
    again.startService()
    rig.clock.advance(86400)
    again.stopService()
    assert len(bounces(rig)) == 1


def test_a_bounce_that_cannot_be_built_does_not_lose_the_failure(storage, monkeypatch):
    """If building the report fails, the failure is still recorded and says no bounce went."""
    from oauthmail.smtp.queue import policy

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(policy, "buildBounce", broken)
    rig = Rig(storage, refuseOthers, bounce=True)
    message_id = rig.enqueue("bob@example.net")
    status = rig.status(message_id)
    assert status.state == "failed"
    assert "no bounce sent: boom" in status.last_error
    assert bounces(rig) == []


# -- messages in doubt: looked for in Sent before being sent again ------------------------


@implementer(ISentFolder)
class FakeSentFolder:
    """Plays the provider's Sent folder: ``found`` holds the queue ids it has a copy of."""

    def __init__(self):
        self.found: set[str] = set()
        self.error: Exception | None = None
        self.calls: list[list[SentProbe]] = []

    def findSent(self, account_name, probes):
        self.calls.append(list(probes))
        for p in probes:  # MESSAGE has no Message-ID: the queue gave it one
            assert p.message_id == f"<{p.queue_id}.oauthmail@example.com>"
        if self.error is not None:
            return defer.fail(self.error)
        return defer.succeed({p.queue_id for p in probes if p.queue_id in self.found})


def crashWhileSending(storage, sentFolder, *recipients, behaviour="hang", untraced=False, **kwargs):
    """A queue killed while its message was 'sending'; a new one on the same file, not started.

    ``untraced``: the message was queued before trace lines existed (stored as given).
    """
    rig = Rig(storage, behaviour, start=False, sent_folder=sentFolder)
    if untraced:
        message_id = "untraced-1"
        queued = OutboxEntry(
            message_id,
            "alice",
            "alice@example.com",
            tuple(recipients) or ("bob@example.net",),
            MESSAGE,
            rig.clock.seconds(),
        )
        rig.result(rig.outbox.enqueue(queued))
    else:
        message_id = rig.enqueue(*recipients)
    rig.queue.startService()
    assert rig.status(message_id).state == "sending"
    rig.storage.crash()
    return Rig(storage, start=False, sent_folder=sentFolder, **kwargs), message_id


def test_sent_folder_fake_provides_the_interface():
    """The fake Sent folder keeps the ISentFolder promise (as the IMAP one does)."""
    assert verifyObject(ISentFolder, FakeSentFolder())


def test_crash_then_found_in_sent_is_not_sent_again(storage):
    """A message the provider filed in Sent before the crash is recorded sent, never resent."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(storage, folder)
    folder.found.add(message_id)
    again.queue.startService()
    status = again.status(message_id)
    assert status.state == "sent" and status.provider_accepted_at is not None
    assert {r.state for r in status.recipients} == {"sent"}
    assert "Sent" in status.recipients[0].text
    assert again.sender.sessions == []
    [[probe]] = folder.calls
    assert probe.queue_id == message_id
    assert probe.message_id == f"<{message_id}.oauthmail@example.com>"


def test_crash_then_not_in_sent_is_sent_again_once(storage):
    """A message not in Sent is sent again, after it was looked for, exactly once."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(storage, folder)
    again.queue.startService()
    assert again.status(message_id).state == "sent"
    assert len(folder.calls) == 1
    assert [m for m, _ in again.sender.sessions[0][1]] == [message_id]
    assert len(again.sender.sessions) == 1


def test_sent_is_searched_only_after_the_delay(storage):
    """After a restart the queue waits sent_check_delay (providers file asynchronously)."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(storage, folder, sent_check_delay=30.0)
    again.queue.startService()
    assert folder.calls == [] and again.sender.sessions == []
    again.clock.advance(30)
    assert len(folder.calls) == 1
    assert again.status(message_id).state == "sent"


def test_unsearchable_sent_delays_then_gives_up_and_sends(storage):
    """Sent out of reach: the message waits (never sent blind) until give-up, then goes out."""
    folder = FakeSentFolder()
    folder.error = SentCheckError("imap.example.com:993: connection refused")
    again, message_id = crashWhileSending(storage, folder)
    other = again.enqueue()  # a message not in doubt is not held up
    again.queue.startService()
    assert again.status(other).state == "sent"
    status = again.status(message_id)
    assert status.state == "queued" and "could not look in Sent" in status.last_error
    assert all(message_id not in [m for m, _ in s[1]] for s in again.sender.sessions)
    searched = []
    for _ in range(59):
        again.clock.advance(60)
        searched.append(len(folder.calls))
    assert again.status(message_id).state == "queued"
    # Looked for again and again, each wait longer than the one before up to its cap
    # (a sixth of the hour's give-up), not once a minute in step with every account.
    times = [60 * (i + 1) for i, n in enumerate(searched) if n > ([0] + searched)[i]]
    waits = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert 5 <= len(times) <= 15
    assert waits[-1] >= 4 * waits[0] and max(waits) <= 600 + 60
    again.clock.advance(600)
    assert again.status(message_id).state == "sent"
    assert [m for m, _ in again.sender.sessions[-1][1]] == [message_id]


def test_sent_reachable_again_before_give_up(storage):
    """Sent out of reach for a while, then found there: still never sent twice."""
    folder = FakeSentFolder()
    folder.error = SentCheckError("timeout")
    again, message_id = crashWhileSending(storage, folder)
    again.queue.startService()
    again.clock.advance(60)
    folder.error = None
    folder.found.add(message_id)
    again.clock.advance(300)
    assert again.status(message_id).state == "sent"
    assert again.sender.sessions == []


def test_connection_lost_after_the_dot_is_looked_for_first(storage):
    """No answer to the final dot: the next attempt looks in Sent before sending again."""
    folder = FakeSentFolder()
    rig = Rig(storage, Lost(), sent_folder=folder)
    message_id = rig.enqueue()
    status = rig.status(message_id)
    assert status.state == "queued" and folder.calls == []
    folder.found.add(message_id)
    rig.sender.script = [accept]
    rig.clock.advance(3600)
    assert rig.status(message_id).state == "sent"
    assert len(rig.sender.sessions) == 1  # only the attempt that lost its answer
    assert len(folder.calls) == 1


def test_without_sent_folder_a_crash_resends_without_asking(storage):
    """An account with sent_folder: none keeps at-least-once: the message is sent again."""
    again, message_id = crashWhileSending(storage, None)
    again.queue.startService()
    assert again.status(message_id).state == "sent"
    assert len(again.sender.sessions) == 1


def test_message_without_trace_line_is_sent_again(storage):
    """A message queued before trace lines existed cannot be recognised: it is resent."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(storage, folder, untraced=True)
    assert again.data(message_id) == MESSAGE
    folder.found.add(message_id)
    again.queue.startService()
    assert folder.calls == []
    assert again.status(message_id).state == "sent"
    assert len(again.sender.sessions) == 1


def test_stop_while_searching_sent_keeps_the_doubt(storage):
    """Stopping during a slow Sent search ends at once; the next start looks again."""
    folder = FakeSentFolder()
    hanging: list[defer.Deferred] = []
    folder.findSent = lambda name, probes: hanging.append(defer.Deferred()) or hanging[-1]
    again, message_id = crashWhileSending(storage, folder)
    again.queue.startService()
    assert len(hanging) == 1
    stopped = again.queue.stopService()
    assert stopped.called
    assert hanging[0].called  # cancelled
    status = again.status(message_id)
    assert status.state == "queued" and again.sender.sessions == []
    folder2 = FakeSentFolder()
    folder2.found.add(message_id)
    again.storage.crash()
    last = Rig(storage, start=False, sent_folder=folder2)
    last.queue.startService()
    assert last.status(message_id).state == "sent"
    assert last.sender.sessions == []


def refuse(*codes):
    """A provider answering the recipients with ``codes`` in order (then 250 for the rest)."""

    def behaviour(message, token):
        replies = []
        for i, r in enumerate(message.recipients):
            code = codes[i] if i < len(codes) else 250
            replies.append((r, code, "2.0.0 ok" if code == 250 else f"{code} no"))
        return tuple(replies)

    return behaviour


def recipientStates(status):
    return {r.address: r.state for r in status.recipients}


def test_copy_from_an_earlier_partial_attempt_proves_nothing(storage):
    """Bob got it, Carol was refused for now; a crash retrying Carol: she is sent again."""
    folder = FakeSentFolder()
    rig = Rig(storage, refuse(250, 452), "hang", sent_folder=folder)
    message_id = rig.enqueue("bob@example.net", "carol@example.net")
    assert recipientStates(rig.status(message_id))["bob@example.net"] == "sent"
    rig.clock.advance(3600)  # the retry for Carol hangs: then the process dies
    assert rig.status(message_id).state == "sending"
    rig.storage.crash()
    folder.found.add(message_id)  # the copy filed when Bob got it
    again = Rig(storage, start=False, sent_folder=folder)
    again.queue.startService()
    assert folder.calls == []  # not even asked: Sent cannot tell the attempts apart
    assert recipientStates(again.status(message_id)) == {
        "bob@example.net": "sent",
        "carol@example.net": "sent",
    }
    assert [r for _, r in again.sender.sessions[0][1]] == [("carol@example.net",)]


def test_recipients_refused_before_a_lost_answer_are_not_counted_as_sent(storage):
    """Answer lost after Carol 452 and Dave 550 at RCPT: found means Bob only; Carol retried."""
    folder = FakeSentFolder()
    rig = Rig(
        storage,
        Lost(("carol@example.net", 452, "later"), ("dave@example.net", 550, "no such user")),
        accept,
        sent_folder=folder,
        bounce=True,
    )
    message_id = rig.enqueue("bob@example.net", "carol@example.net", "dave@example.net")
    assert recipientStates(rig.status(message_id)) == {
        "bob@example.net": "pending",
        "carol@example.net": "deferred",
        "dave@example.net": "failed",
    }
    folder.found.add(message_id)
    rig.clock.advance(3600)  # Sent searched: Bob had it; Carol is retried later
    assert recipientStates(rig.status(message_id))["bob@example.net"] == "sent"
    rig.clock.advance(3600)
    status = rig.status(message_id)
    assert status.state == "sent"
    assert recipientStates(status) == {
        "bob@example.net": "sent",
        "carol@example.net": "sent",
        "dave@example.net": "failed",
    }
    assert [r for _, r in rig.sender.sessions[1][1]][0] == ("carol@example.net",)
    # Dave's failure is reported to the sender, once, although Sent settled the message.
    assert len(bounces(rig)) == 1


def test_refusals_recorded_before_the_content_survive_a_crash(storage):
    """Killed after Carol was refused at RCPT: found in Sent means Bob got it, Carol did not."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(
        storage,
        folder,
        "bob@example.net",
        "carol@example.net",
        behaviour=Hang(("carol@example.net", 451, "later")),
    )
    folder.found.add(message_id)
    again.queue.startService()
    again.clock.advance(3600)
    assert recipientStates(again.status(message_id)) == {
        "bob@example.net": "sent",
        "carol@example.net": "sent",
    }
    assert [r for _, r in again.sender.sessions[0][1]] == [("carol@example.net",)]
    assert "Sent" in again.status(message_id).recipients[0].text


def test_retry_now_still_waits_for_the_provider_to_file_its_copy(storage):
    """Re-authorisation (retryNow) does not search Sent before sent_check_delay."""
    folder = FakeSentFolder()
    again, message_id = crashWhileSending(storage, folder, sent_check_delay=30.0)
    again.queue.startService()
    again.result(again.queue.retryNow("alice"))
    assert folder.calls == [] and again.sender.sessions == []
    again.clock.advance(30)
    assert len(folder.calls) == 1


def test_lost_answer_waits_sent_check_delay_before_searching(storage):
    """After a lost answer the search waits sent_check_delay even if the retry is due sooner."""
    folder = FakeSentFolder()
    rig = Rig(storage, Lost(), accept, sent_folder=folder, sent_check_delay=600.0)
    message_id = rig.enqueue()
    rig.clock.advance(300)
    assert folder.calls == [] and len(rig.sender.sessions) == 1
    rig.clock.advance(300)
    assert len(folder.calls) == 1
    assert rig.status(message_id).state == "sent"


def test_a_sent_folder_that_raises_is_treated_as_unreachable(storage):
    """A search that raises at once is a failed search (the message waits), not a stuck loop."""
    folder = FakeSentFolder()

    def boom(name, probes):
        raise RuntimeError("bug")

    folder.findSent = boom
    again, message_id = crashWhileSending(storage, folder)
    again.queue.startService()
    status = again.status(message_id)
    assert status.state == "queued" and "could not look in Sent" in status.last_error


def test_refused_token_holds_the_account_with_growing_steps(storage):
    """A token refused after its refresh holds all sending: one refresh per growing step."""
    refused = SessionError(outcomes.REFRESH, "535 5.7.8 refused", auth=True)
    rig = Rig(storage, *([refused] * 40))
    rig.enqueue()
    refreshes = []
    for _ in range(6):
        before = rig.tokens.calls.count("refresh")
        rig.clock.advance(4 * 3600.0 / 6)
        refreshes.append(rig.tokens.calls.count("refresh") - before)
        record = rig.result(rig.store.getAccount("alice"))
        assert record.state == "error"
    total = rig.tokens.calls.count("refresh")
    # Steps of 60 s doubling to the 3600 s cap: about 10 in 4 h, never one per poll.
    assert 3 <= total <= 14, refreshes


def test_a_server_that_cannot_be_reached_holds_new_messages_too(storage):
    """Connection refused: messages queued meanwhile wait in a growing hold, not each a session.

    Each new message woke the queue and opened a connection to the server that
    was down: the attempts grew with the rate of enqueues.
    """
    down = SessionError(outcomes.TEMPORARY, "cannot connect to smtp.example.com:587: refused")
    rig = Rig(storage, down, down, down, accept)
    first = rig.enqueue()
    assert len(rig.sender.sessions) == 1
    for _ in range(20):  # a busy client during the outage
        rig.enqueue()
        rig.clock.advance(1.0)
    assert len(rig.sender.sessions) == 1
    record = rig.result(rig.store.getAccount("alice"))
    assert record.state == "retrying" and "cannot connect" in record.last_error
    rig.clock.advance(60.0)  # the first hold: 30-60 s
    assert len(rig.sender.sessions) == 2
    rig.clock.advance(60.0)  # the second: 60-120 s, so not yet everywhere
    rig.clock.advance(60.0)
    assert len(rig.sender.sessions) == 3
    rig.clock.advance(240.0)  # the third: 120-240 s; then the server answers
    assert len(rig.sender.sessions) == 4
    assert rig.status(first).state == "sent"
    assert {s.state for s in rig.statuses()} == {"sent"}
    rig.enqueue()  # the hold ended with the good session: the next goes at once
    assert len(rig.sender.sessions) == 5


def test_a_session_that_took_mail_before_its_421_holds_nothing(storage):
    """A provider that ends each session with a 421 after taking a message is not an outage."""
    rig = Rig(storage, ACCEPT_ONE_THEN_421)
    first = rig.enqueue()
    assert rig.status(first).state == "sent"
    second = rig.enqueue()  # goes at once: no hold after a session that delivered
    assert len(rig.sender.sessions) == 2
    assert rig.status(second).state == "sent"


def test_quota_reply_pauses_the_account_and_keeps_the_message(storage):
    """A quota reply pauses sending (no bounce, no failure); the message goes out after."""
    quota = SessionError(outcomes.QUOTA, "554 5.2.0 SubmissionQuotaExceededException", pause=3600.0)
    rig = Rig(storage, quota, accept, bounce=True)
    message_id = rig.enqueue()
    status = rig.status(message_id)
    assert status.state == "queued"
    record = rig.result(rig.store.getAccount("alice"))
    assert record.state == "paused" and "SubmissionQuota" in record.last_error
    rig.clock.advance(1800)
    assert rig.status(message_id).state == "queued"
    assert len(rig.sender.sessions) == 1
    rig.clock.advance(3 * 3600)
    assert rig.status(message_id).state == "sent"
    assert len(rig.sender.sessions) == 2
    assert rig.result(rig.store.getAccount("alice")).state == "ok"


def test_an_account_needing_a_person_is_held_and_said_once(storage):
    """No token: the messages wait, the account is asked at most once a minute, logged once."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rig = Rig(storage, start=False)
        rig.tokens.error = AccountNotAuthorised(
            "alice", "needs re-authorisation", needs_reauth=True
        )
        rig.queue.startService()
        ids = [rig.enqueue() for _ in range(5)]
        for _ in range(60):
            rig.clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(events.append)
    asked = rig.tokens.calls.count("access")
    assert 1 <= asked <= 62, asked  # an hour: once a minute at the most, not once per retry
    said = [e for e in events if "sending failed" in str(e.get("log_format", ""))]
    assert len(said) == 1
    rig.tokens.error = None
    assert rig.result(rig.queue.retryNow("alice")) == 5
    assert {rig.status(m).state for m in ids} == {"sent"}


def test_claims_are_tended_on_a_shared_outbox():
    """claim_tend: every tick the queue tends the outbox's claims, then looks for due mail."""
    from oauthmail.smtp.queue.records import Recovery

    clock = Clock()

    class Tended:
        """A MemoryOutbox that counts tendClaims and dueAccounts (one dead node's claim first)."""

        def __init__(self):
            self.memory = MemoryOutbox()
            self.tends = 0
            self.polls = 0

        def __getattr__(self, name):
            return getattr(self.memory, name)

        def tendClaims(self, now, policy):
            self.tends += 1
            return defer.succeed(Recovery(0, 1 if self.tends == 1 else 0))

        def dueAccounts(self, now):
            self.polls += 1
            return self.memory.dueAccounts(now)

    outbox = Tended()
    queue = OutboundQueue(
        outbox,
        FakeTokens(),
        {"alice": account()},
        reactor=None,
        clock=clock,
        sender=FakeSender(),
        poll_interval=60.0,
        claim_tend=2.0,
    )
    queue.startService()
    polls = outbox.polls
    clock.advance(2.0)
    assert (outbox.tends, outbox.polls) == (1, polls + 1)
    clock.advance(2.0)
    assert (outbox.tends, outbox.polls) == (2, polls + 2)
    queue.stopService()
    clock.advance(10.0)
    assert outbox.tends == 2


def test_a_store_out_of_reach_is_said_once_per_outage_by_the_polls():
    """Polls and claim tending failing on a store error: one warning per outage, no traceback."""
    from twisted.logger import globalLogPublisher

    from oauthmail.db.errors import StoreUnwritable
    from oauthmail.smtp.queue.records import Recovery

    clock = Clock()

    class Away:
        """A MemoryOutbox whose shared-store calls fail while ``down``."""

        def __init__(self):
            self.memory = MemoryOutbox()
            self.down = False

        def __getattr__(self, name):
            return getattr(self.memory, name)

        def _fail(self):
            return defer.fail(StoreUnwritable("PostgreSQL db:5432/mail: cannot connect"))

        def tendClaims(self, now, policy):
            return self._fail() if self.down else defer.succeed(Recovery(0, 0))

        def dueAccounts(self, now):
            return self._fail() if self.down else self.memory.dueAccounts(now)

    outbox = Away()
    queue = OutboundQueue(
        outbox,
        FakeTokens(),
        {"alice": account()},
        reactor=None,
        clock=clock,
        sender=FakeSender(),
        poll_interval=1.0,
        claim_tend=1.0,
    )
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        queue.startService()
        for down in (True, False, True):
            outbox.down = down
            for _ in range(5):
                clock.advance(1.0)
        queue.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e for e in events if "outbound queue:" in str(e.get("log_format", ""))]
    assert len(said) == 2, [e.get("log_format") for e in said]
    assert [e for e in events if e.get("log_failure") is not None] == []
