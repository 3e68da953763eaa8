"""The metrics' timing sender: it times each message and hands every hook on unchanged."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from oauthmail.interfaces import IMessageSender
from oauthmail.metrics import DaemonMetrics, MeteredSender
from oauthmail.smtp.queue.records import SessionHooks


@implementer(IMessageSender)
class _ClockedSender:
    """Sends each message 0.25 s after its ``beforeData``, then asks for more once."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.hooks: SessionHooks | None = None

    def send(self, account, token, messages, hooks):
        self.hooks = hooks
        gates = []
        for message in messages:
            gates.append(hooks.beforeData(message, ()))
            self.clock.advance(0.25)
            hooks.onOutcome(SimpleNamespace(message_id=message.id))
        return hooks.more().addCallback(lambda more: (gates, more))

    def close(self):
        return defer.succeed(None)


def test_eachMessageIsTimedAndTheHooksReachTheQueue() -> None:
    clock = Clock()
    metrics = DaemonMetrics()
    inner = _ClockedSender(clock)
    sender = MeteredSender(inner, metrics, clock)
    verifyObject(IMessageSender, sender)
    gate: defer.Deferred[None] = defer.Deferred()
    calls: list[object] = []

    def more() -> defer.Deferred[list[object]]:
        return defer.succeed(["next"])

    hooks = SessionHooks(
        beforeData=lambda message, refused=(): calls.append(("before", message.id)) or gate,
        onOutcome=lambda outcome: calls.append(("outcome", outcome.message_id)),
        more=more,
    )
    done = sender.send(
        SimpleNamespace(name="alice"),
        None,
        [SimpleNamespace(id="m1"), SimpleNamespace(id="m2")],
        hooks,
    )

    gates, claimed = done.result
    assert gates == [gate, gate]  # the queue's bound is what the inner sender waits for
    assert claimed == ["next"]
    assert inner.hooks is not None and inner.hooks.more is more
    assert calls == [("before", "m1"), ("outcome", "m1"), ("before", "m2"), ("outcome", "m2")]
    count = metrics.registry.get_sample_value(
        "oauthmail_provider_seconds_count", {"account": "alice"}
    )
    total = metrics.registry.get_sample_value(
        "oauthmail_provider_seconds_sum", {"account": "alice"}
    )
    assert (count, total) == (2.0, 0.5)
