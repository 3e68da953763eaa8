"""Logs a person reads: one short line per event naming the account; JSON for shippers."""

from __future__ import annotations

import io
import json

import pytest
import test_outbound_queue as queue_rig
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger, formatEvent, globalLogPublisher

from oauthmail.logs import QuietEndpoint, eventAsJSON, jsonObserver
from oauthmail.secret import Secret
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome, SessionResult

TOKEN = "ya29.LOG-canary-1f2e3d"


@pytest.fixture
def lines():
    seen: list[str] = []

    def observe(event):
        seen.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request, tmp_path):
    return queue_rig.Storage(request.param, tmp_path)


def test_json_observer_writes_one_object_per_event_without_secrets():
    """log.format json: one JSON object per line, the account a field, a Secret never shown."""
    out = io.StringIO()
    observer = jsonObserver(out)
    log = Logger(namespace="oauthmail.test", observer=observer)
    log.info("{account}: sent {id}", account="alice", id="q1", token=Secret(TOKEN))
    log.info("Starting factory {factory!r}", factory=Factory())
    (line,) = out.getvalue().splitlines()
    event = json.loads(line)
    assert event["text"] == "alice: sent q1" and event["account"] == "alice"
    assert event["level"] == "info" and event["namespace"] == "oauthmail.test"
    assert event["token"] == "<secret>" and TOKEN not in line
    assert event["time"].endswith("+00:00")


def test_event_as_json_keeps_plain_fields_only():
    """Fields that are not plain values are left out, not repr'd."""
    text = eventAsJSON(
        {"log_format": "x {n}", "n": 3, "obj": object(), "log_time": 0.0, "log_namespace": "n"}
    )
    event = json.loads(text)
    assert event["n"] == 3 and "obj" not in event and event["text"] == "x 3"


def test_quiet_endpoint_makes_the_factory_quiet():
    """QuietEndpoint sets noisy = False before it connects: no 'Starting factory' line."""

    class Endpoint:
        def connect(self, factory):
            self.factory = factory
            return defer.succeed(None)

    inner = Endpoint()
    factory = Factory()
    assert factory.noisy
    QuietEndpoint(inner).connect(factory)
    assert inner.factory is factory and factory.noisy is False


def test_sending_logs_one_short_line_per_message_with_its_queue_id(storage, lines):
    """The provider accepting a message is one line naming the account, queue id and size."""
    rig = queue_rig.Rig(storage)
    queue_id = rig.enqueue("bob@example.net")
    assert rig.status(queue_id).state == "sent"
    (accepted,) = [line for line in lines if "accepted by the provider" in line]
    assert accepted.startswith("alice: ") and queue_id in accepted
    assert f"({len(rig.data(queue_id))} bytes, 1 recipient(s))" in accepted
    assert len(accepted) < 160


class LingeringSender:
    """Accepts each message, then asks for more and waits for the answer, as a session does."""

    def send(self, account, token, messages, hooks):
        beforeData, onOutcome, more = hooks.beforeData, hooks.onOutcome, hooks.more

        async def session():
            result = SessionResult()
            pending = list(messages)
            while pending:
                for message in pending:
                    await defer.maybeDeferred(beforeData, message)
                    ok = tuple(RecipientOutcome(r, 250, "2.0.0 ok") for r in message.recipients)
                    outcome = MessageOutcome(message.id, 250, "2.0.0 ok", ok, True)
                    result.outcomes.append(outcome)
                    onOutcome(outcome)
                pending = await more() if more is not None else []
            return result

        return defer.ensureDeferred(session())


def test_each_message_is_logged_when_accepted_not_when_the_session_ends(storage, lines):
    """A lingering session logs every accepted message at once; stopping it loses no line."""
    rig = queue_rig.Rig(storage, sender=LingeringSender())
    first = rig.enqueue("bob@example.net")
    second = rig.enqueue("carol@example.net")  # wakes the session that lingers for more
    accepted = [line for line in lines if "accepted by the provider" in line]
    assert [first in accepted[0], second in accepted[1]] == [True, True]
    # The clock has not moved: the session still lingers for more (0.5 s), and stops now.
    rig.result(rig.queue.stopService())
    assert [line for line in lines if "accepted by the provider" in line] == accepted


def test_failed_for_good_line_is_short_and_names_the_account(storage, lines):
    """A failure for good is one line starting with the account, under 160 characters."""
    rig = queue_rig.Rig(
        storage, lambda m, t: tuple((r, 550, "5.1.1 " + "x" * 400) for r in m.recipients)
    )
    queue_id = rig.enqueue()
    (failed,) = [line for line in lines if "failed for good" in line]
    assert failed.startswith(f"alice: {queue_id} failed for good: ") and len(failed) < 170
