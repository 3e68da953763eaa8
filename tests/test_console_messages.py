"""Console: message pages, Retry/Delete through the guard, /metrics, /health without a store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from test_console import _config, _Request
from twisted.internet.task import Clock

from oauthmail.messagelog.records import DELIVERED, IN, OUT, QUEUED, LogEntry
from oauthmail.metrics import DaemonMetrics, MeteredRecorder
from oauthmail.smtp.queue.records import OutboxEntry, QueueStats
from oauthmail.testing.memory_messages import MemoryMessageLog
from oauthmail.testing.memory_outbox import MemoryOutbox
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.web.console import ConsoleResource, LiveParts
from oauthmail.web.csrf import CSRFToken

NOW = 1_800_000_000.0
DATA = (
    b"Received: by localhost (oauthmail) id q1;\r\n\tdate\r\n"
    b"Message-ID: <hello@x>\r\nSubject: <script>alert(1)</script>\r\n\r\nSECRET BODY\r\n"
)


class Queue:
    """What the pages use of the queue: retry, delete, stats."""

    def __init__(self, outbox: MemoryOutbox, clock: Clock) -> None:
        self.outbox, self.clock, self.woken = outbox, clock, []

    def retryMessage(self, queue_id):
        d = self.outbox.retryMessage(queue_id, self.clock.seconds(), 0.0)
        return d.addCallback(lambda s: self.woken.append(queue_id) or s)

    def deleteMessage(self, queue_id):
        return self.outbox.deleteMessage(queue_id)

    def stats(self):
        from twisted.internet import defer

        return defer.succeed({"helpdesk": QueueStats("helpdesk", 1, 5.0, 0, None)})


async def world():
    clock = Clock()
    clock.advance(NOW)
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    outbox, messages = MemoryOutbox(), MemoryMessageLog()
    await outbox.enqueue(
        OutboxEntry("q1", "helpdesk", "helpdesk@example.com", ("a@x.test",), DATA, NOW - 60)
    )
    await messages.record(
        [
            LogEntry(NOW - 60, "helpdesk", OUT, QUEUED, "<hello@x>", len(DATA), queue_id="q1"),
            LogEntry(NOW - 30, "helpdesk", IN, DELIVERED, "<in@x>", 99, "INBOX", 7),
        ]
    )
    queue = Queue(outbox, clock)
    metrics = DaemonMetrics()
    csrf = CSRFToken("fixed-token")
    live = LiveParts(queue=queue, messages=messages, outbox=outbox, metrics=metrics)
    resource = ConsoleResource(config, store, clock, live=live, csrf=csrf)
    return SimpleNamespace(
        clock=clock,
        store=store,
        outbox=outbox,
        messages=messages,
        queue=queue,
        metrics=metrics,
        resource=resource,
        csrf=csrf,
    )


async def render(resource, segments, method=b"GET", origin=None, csrf=None):
    request = _Request(list(segments[1:]) or [b""])
    request.method = method
    if origin is not None:
        request.requestHeaders.addRawHeader(b"origin", origin)
    if csrf is not None:
        request.args[b"csrf"] = [csrf]
    child = resource.getChildWithDefault(segments[0], request)
    finished = request.notifyFinish()
    body = child.render(request)
    if not isinstance(body, bytes):
        await finished
        body = b"".join(request.written)
    return request.responseCode or 200, body, request


@pytest_twisted.ensureDeferred
async def test_account_page_lists_queue_and_log_escaped():
    """/messages/<account>: waiting messages with buttons, entries in and out, all escaped."""
    w = await world()
    status, body, _ = await render(w.resource, [b"messages", b"helpdesk"])
    page = body.decode()
    assert status == 200
    assert "/outbox/q1" in page and "Retry now" in page and "Delete" in page
    assert "&lt;hello@x&gt;" in page and "INBOX/7" in page and "&lt;in@x&gt;" in page
    assert "name='csrf' value='fixed-token'" in page
    status, _, _ = await render(w.resource, [b"messages", b"nobody"])
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_message_detail_shows_headers_never_the_body():
    """/outbox/<id>: facts, recipients, history and the header section only (escaped)."""
    w = await world()
    status, body, _ = await render(w.resource, [b"outbox", b"q1"])
    page = body.decode()
    assert status == 200
    assert "Subject: &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>" not in page and "SECRET BODY" not in page
    assert "a@x.test" in page and "queued" in page
    status, _, _ = await render(w.resource, [b"outbox", b"nope"])
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_retry_and_delete_need_the_csrf_token_and_our_origin():
    """A POST without the token or from a foreign origin changes nothing; a good one acts."""
    w = await world()
    ours = b"http://127.0.0.1"
    for origin, token in ((ours, None), (ours, b"wrong"), (b"http://evil.example", b"fixed-token")):
        status, _, _ = await render(
            w.resource, [b"outbox", b"q1", b"delete"], b"POST", origin, token
        )
        assert status == 403
        assert (await w.outbox.status("q1")) is not None
    status, _, request = await render(
        w.resource, [b"outbox", b"q1", b"retry"], b"POST", ours, b"fixed-token"
    )
    assert status == 303 and request.responseHeaders.getRawHeaders(b"location") == [
        b"/messages/helpdesk"
    ]
    assert w.queue.woken == ["q1"]
    status, _, _ = await render(
        w.resource, [b"outbox", b"q1", b"delete"], b"POST", ours, b"fixed-token"
    )
    assert status == 303 and (await w.outbox.status("q1")) is None


@pytest_twisted.ensureDeferred
async def test_metrics_page_parses_with_per_account_series():
    """/metrics is Prometheus text that prometheus_client's parser reads, per account."""
    w = await world()
    recorder = MeteredRecorder(w.metrics)
    recorder.add(LogEntry(NOW, "helpdesk", IN, DELIVERED, folder="INBOX", uid=1))
    recorder.add(LogEntry(NOW, "helpdesk", OUT, "sent", queue_id="q9"))
    w.metrics.refreshed("helpdesk", True, 0.3)
    w.metrics.refreshed("alerts", False, 1.2)
    status, body, request = await render(w.resource, [b"metrics"])
    assert status == 200
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("oauthmail_messages_received_total", (("account", "helpdesk"),))] == 1
    assert samples[("oauthmail_messages_sent_total", (("account", "helpdesk"),))] == 1
    ok = ("oauthmail_token_refreshes_total", (("account", "helpdesk"), ("result", "ok")))
    failed = ("oauthmail_token_refreshes_total", (("account", "alerts"), ("result", "failed")))
    assert samples[ok] == 1 and samples[failed] == 1
    assert samples[("oauthmail_queue_depth", (("account", "helpdesk"),))] == 1
    assert samples[("oauthmail_queue_oldest_age_seconds", (("account", "helpdesk"),))] == 5.0
    assert "fixed-token" not in body.decode()


@pytest_twisted.ensureDeferred
async def test_health_is_503_when_the_store_does_not_answer():
    """/health answers 503 store_unreachable when the store fails, and says why."""
    from twisted.internet import defer

    w = await world()

    def broken(*args):
        return defer.fail(ConnectionRefusedError("connection to the database refused"))

    w.store.getAccount = broken
    status, body, _ = await render(w.resource, [b"health"])
    payload = json.loads(body)
    assert status == 503 and payload["status"] == "store_unreachable"
    assert "refused" in payload["error"]


@pytest_twisted.ensureDeferred
async def test_last_mail_survives_a_restart_through_the_message_log():
    """With no watcher (a fresh start) the console's last mail in/out comes from the log."""
    w = await world()
    await w.messages.record([LogEntry(NOW - 10, "helpdesk", OUT, "sent", queue_id="q1")])
    status, body, _ = await render(w.resource, [b"health"])
    (helpdesk,) = [a for a in json.loads(body)["accounts"] if a["account"] == "helpdesk"]
    assert helpdesk["last_delivery_at"] == NOW - 30
    assert helpdesk["last_sent_at"] == NOW - 10
    _, page, _ = await render(w.resource, [b""])
    assert "in: 30 s ago" in page.decode() and "out: 10 s ago" in page.decode()
