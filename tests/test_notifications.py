"""Notifications: a state change is one signed webhook POST, retried after a 500; admin mail."""

from __future__ import annotations

import hashlib
import hmac
import json
import random

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import resource, server

from oauthmail.health import AccountHealth, AccountView
from oauthmail.messagelog.records import FAILED, OUT, SENT, LogEntry
from oauthmail.notifications.events import ACCOUNT_STATE, MESSAGE_FAILED, Notice
from oauthmail.notifications.hub import HOLD_MAX, NotificationHub, NotifyingRecorder
from oauthmail.notifications.mail import MailNotifier
from oauthmail.notifications.webhook import SIGNATURE_HEADER, WebhookNotifier, sign
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore

SECRET = "hook-secret-canary-42"


class Receiver(resource.Resource):
    """Answers each POST with the next status of ``statuses`` (the last repeats)."""

    isLeaf = True

    def __init__(self, *statuses: int) -> None:
        super().__init__()
        self.statuses = list(statuses) or [200]
        self.got: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.arrived: defer.Deferred[None] = defer.Deferred()
        self.wanted = 1

    def render_POST(self, request) -> bytes:
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.got.append((request.content.read(), headers))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        request.setResponseCode(status)
        if len(self.got) >= self.wanted and not self.arrived.called:
            self.arrived.callback(None)
        return b"thanks"


async def listening(receiver: Receiver):
    from twisted.internet import reactor

    port = reactor.listenTCP(0, server.Site(receiver), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}/hook?token=q"


@pytest_twisted.ensureDeferred
async def test_state_change_is_one_signed_post_retried_after_a_500():
    """An account turning needs_reauth: one JSON POST, signed; the 500 is followed by a retry."""
    from twisted.internet import reactor

    receiver = Receiver(500, 200)
    receiver.wanted = 2
    port, url = await listening(receiver)
    notifier = WebhookNotifier(
        url, reactor, Secret(SECRET), backoff_base=0.05, backoff_max=0.1, random=random.Random(1)
    )
    clock = Clock()
    health = AccountHealth(MemoryTokenStore(clock), clock)
    hub = NotificationHub([notifier], clock)
    health.listen(hub.accountChanged)
    try:
        health.declare("alice", ["tokens"])
        await health.report("alice", "tokens", "ok")  # starting → ok: not news
        await health.report("alice", "tokens", "needs_reauth", "invalid_grant: revoked")
        await receiver.arrived
        await notifier.whenIdle()
        assert len(receiver.got) == 2  # the 500, then the same notice again
        (body, headers), (again, _) = receiver.got
        assert body == again
        assert headers[SIGNATURE_HEADER.lower()] == sign(SECRET, body).encode()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert sign(SECRET, body) == expected
        notice = json.loads(body)
        assert notice["event"] == ACCOUNT_STATE and notice["account"] == "alice"
        assert (notice["state"], notice["before"]) == ("needs_reauth", "ok")
        assert "invalid_grant" in notice["error"]
        assert headers[b"content-type"] == b"application/json"
        assert SECRET.encode() not in body
        assert notifier.delivered == 1 and notifier.dropped == 0
    finally:
        await notifier.close()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_without_secret_no_signature_and_gives_up_after_max_attempts():
    """No secret: no signature header; a receiver that keeps failing is given up on (logged)."""
    from twisted.internet import reactor

    receiver = Receiver(503)
    receiver.wanted = 3
    port, url = await listening(receiver)
    notifier = WebhookNotifier(url, reactor, None, max_attempts=3, backoff_base=0.01)
    try:
        notifier.notify(Notice(MESSAGE_FAILED, "bob", 1.0, "bob: failed", {"queue_id": "q1"}))
        await receiver.arrived
        await notifier.whenIdle()
        assert len(receiver.got) == 3
        assert SIGNATURE_HEADER.lower() not in receiver.got[0][1]
        assert notifier.dropped == 1
    finally:
        await notifier.close()
        await port.stopListening()


def test_after_giving_up_the_next_notice_waits_its_turn():
    """A notice given up on is followed by the next only after the backoff, not at once.

    With a receiver down, every waiting notice used to get its first attempt
    the moment the one before it was given up.
    """
    from twisted.internet.error import ConnectionRefusedError

    class Refusing:
        calls = 0

        def request(self, *args):
            self.calls += 1
            return defer.fail(ConnectionRefusedError())

    clock = Clock()
    agent = Refusing()
    notifier = WebhookNotifier(
        "http://127.0.0.1:9/x",
        clock,
        agent=agent,
        clock=clock,
        max_attempts=1,
        backoff_base=1.0,
        backoff_max=8.0,
        random=random.Random(3),
    )
    for i in range(3):
        notifier.notify(Notice(ACCOUNT_STATE, f"a{i}", 1.0, "x"))
    assert agent.calls == 1
    clock.advance(0.49)  # the first delay is 0.5-1 s
    assert agent.calls == 1
    clock.advance(0.52)
    assert agent.calls == 2
    clock.advance(0.99)  # the second is 1-2 s: the backoff goes on growing
    assert agent.calls == 2
    clock.advance(1.02)
    assert agent.calls == 3 and notifier.dropped == 3
    notifier.close()


def test_pending_notices_are_bounded():
    """Past max_pending, the oldest waiting notice is dropped."""

    class Never:
        def request(self, *args):
            return defer.Deferred()

    clock = Clock()
    notifier = WebhookNotifier(
        "http://127.0.0.1:9/x", clock, agent=Never(), clock=clock, max_pending=2
    )
    for i in range(4):
        notifier.notify(Notice(ACCOUNT_STATE, f"a{i}", 1.0, "x"))
    assert notifier.dropped == 2
    notifier.close()


def test_failed_message_entries_make_notices_and_pass_on():
    """An outbound failed entry makes one notice; every entry reaches the inner recorder."""
    got: list[Notice] = []
    passed: list[LogEntry] = []

    class Collect:
        def notify(self, notice):
            got.append(notice)

        def close(self):
            return defer.succeed(None)

    class Inner:
        def add(self, entry):
            passed.append(entry)

    recorder = NotifyingRecorder(NotificationHub([Collect()], Clock()), Inner())
    recorder.add(LogEntry(5.0, "alice", OUT, SENT, queue_id="q0"))
    recorder.add(LogEntry(6.0, "alice", OUT, FAILED, queue_id="q1", reply="550 5.1.1 nobody"))
    assert [n.event for n in got] == [MESSAGE_FAILED]
    assert got[0].details["queue_id"] == "q1" and "550" in got[0].summary
    assert len(passed) == 2


def test_admin_mail_goes_through_the_queue_and_never_about_itself():
    """A notice becomes one short mail through the account; its own failure makes none."""
    queued: list[tuple] = []

    class Queue:
        def enqueue(self, account, mail_from, recipients, message):
            queued.append((account, mail_from, recipients, message))
            return defer.succeed(f"id{len(queued)}")

    mail = MailNotifier(Queue(), "alerts", "alerts@example.com", "admin@example.com")
    view = AccountView("error", "IMAP INBOX: login refused", "check the password")
    hub = NotificationHub([mail], Clock())
    hub.accountChanged("alice", AccountView("ok"), view)
    ((account, sender, to, data),) = queued
    assert (account, sender, to) == ("alerts", "alerts@example.com", ["admin@example.com"])
    assert b"Subject: oauthmail: alice is error" in data and b"login refused" in data
    assert b"\r\n\r\n" in data and b"Auto-Submitted: auto-generated" in data
    hub.messageFailed(LogEntry(1.0, "alerts", OUT, FAILED, queue_id="id1", reply="550"))
    assert len(queued) == 1  # the notification mail's own failure: no mail about it
    hub.messageFailed(LogEntry(1.0, "alice", OUT, FAILED, queue_id="other", reply="550"))
    assert len(queued) == 2


def test_notice_json_is_sorted_and_flat():
    """The body is one flat JSON object with sorted keys (stable to sign)."""
    body = Notice(ACCOUNT_STATE, "a", 2.0, "a is ok", {"state": "ok"}).asJSON()
    assert (
        body == b'{"account":"a","at":2.0,"event":"account_state","state":"ok","summary":"a is ok"}'
    )


class _Collect:
    """A notifier that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[Notice] = []

    def notify(self, notice: Notice) -> None:
        self.got.append(notice)

    def close(self):
        return defer.succeed(None)


def _now(d: defer.Deferred) -> None:
    """What a memory store does at once (no reactor needed)."""
    failures: list = []
    d.addErrback(failures.append)
    assert d.called and not failures


def _flapping(clock: Clock) -> tuple[AccountHealth, _Collect, NotificationHub]:
    collect = _Collect()
    health = AccountHealth(MemoryTokenStore(clock), clock)
    hub = NotificationHub([collect], clock)
    health.listen(hub.accountChanged)
    health.declare("alice", ["imap:INBOX"])
    _now(health.report("alice", "imap:INBOX", "ok"))
    return health, collect, hub


def test_a_flapping_account_makes_few_notices_and_the_last_state_is_told():
    """A server dropping every session after login: not two notices per reconnect."""
    clock = Clock()
    health, collect, hub = _flapping(clock)
    for _ in range(288):  # a day of a flap every 5 minutes
        _now(health.report("alice", "imap:INBOX", "error", "connection lost"))
        clock.advance(10)
        _now(health.report("alice", "imap:INBOX", "ok"))
        clock.advance(290)
    states = [n.details["state"] for n in collect.got]
    assert states[0] == "error" and len(states) <= 12  # of 576 changes: 7 holds up to 6 h
    assert all(a != b for a, b in zip(states, states[1:], strict=False))  # each says something new
    assert "changed" in collect.got[1].summary and collect.got[1].details["before"] == "error"
    clock.advance(HOLD_MAX)  # quiet at last: told that it is ok, then free again
    assert collect.got[-1].details["state"] == "ok"
    clock.advance(HOLD_MAX)
    told = len(collect.got)
    _now(health.report("alice", "imap:INBOX", "error", "down"))
    assert len(collect.got) == told + 1  # a change after a quiet hold goes out at once
    _now(hub.close())


def test_one_change_is_told_at_once_and_a_change_back_within_the_hold_later():
    """error now; ok two minutes later comes at the hold's end, once."""
    clock = Clock()
    health, collect, hub = _flapping(clock)
    _now(health.report("alice", "imap:INBOX", "error", "refused"))
    assert [n.details["state"] for n in collect.got] == ["error"]
    clock.advance(120)
    _now(health.report("alice", "imap:INBOX", "ok"))
    assert len(collect.got) == 1
    clock.advance(180)
    assert [n.details["state"] for n in collect.got] == ["error", "ok"]
    assert collect.got[1].summary == "alice is ok (was error; it changed once in 5 min)"
    _now(hub.close())


def test_a_new_kind_of_trouble_during_a_hold_is_told_at_once():
    """The server flaps (held), then the token is revoked: that notice does not wait."""
    clock = Clock()
    health, collect, hub = _flapping(clock)
    health.declare("alice", ["imap:INBOX", "tokens"])
    _now(health.report("alice", "tokens", "ok"))
    _now(health.report("alice", "imap:INBOX", "error", "connection lost"))
    clock.advance(10)
    _now(health.report("alice", "imap:INBOX", "ok"))  # held
    clock.advance(10)
    _now(health.report("alice", "tokens", "needs_reauth", "invalid_grant: revoked"))
    assert [n.details["state"] for n in collect.got] == ["error", "needs_reauth"]
    assert collect.got[1].details["before"] == "ok"
    _now(hub.close())
