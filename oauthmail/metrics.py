"""The daemon's Prometheus metrics: counters of what happened, gauges of how things stand.

``/metrics`` (text format 0.0.4) is served by :class:`MetricsPage` under the
console. Rules a reader must not break:

- Every daemon has its own :class:`~prometheus_client.CollectorRegistry` (never
  the library's global one): tests run several daemons in one process.
- Counters and histograms are process metrics: they start at zero with the
  process. Ages, depths and expiry times come from the store and the running
  parts, read just before each scrape (:meth:`DaemonMetrics.refresh`), so
  they survive a restart.
- Nothing here sits on the mail path: counters are fed from the message log's
  entries (:class:`MeteredRecorder`), refresh outcomes from the refresher's
  observer, provider latency from a wrapper around the queue's
  :class:`~oauthmail.interfaces.IMessageSender` (a dict insert and a histogram
  observation per message).
- No label carries a secret: accounts, folders and profile names only.

Why not ``prometheus_client.twisted.MetricsResource``: it runs on the global
reactor's thread pool, and the store's figures need an asynchronous read first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from oauthmail.interfaces import IAccountHealth, IMessageSender, ITokenStore
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.records import DEFERRED, DELIVERED, FAILED, IN, SENT, LogEntry
from oauthmail.smtp.queue.records import SessionHooks
from oauthmail.text import describeFailure

__all__ = ["DaemonMetrics", "MeteredRecorder", "MeteredSender", "MetricsPage"]

log = Logger()

#: Seconds: a token refresh (request and durable write) and a provider's answer to a message.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Watcher states in which the folder's connection is up.
_CONNECTED = frozenset({"authenticating", "selecting", "syncing", "waiting"})


class DaemonMetrics:
    """Every metric of one daemon, in its own registry."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        per = ["account"]
        self.received = Counter(
            "oauthmail_messages_received", "Messages delivered into a sink", per, registry=registry
        )
        self.sent = Counter(
            "oauthmail_messages_sent", "Messages the provider accepted", per, registry=registry
        )
        self.failed = Counter(
            "oauthmail_messages_failed",
            "Messages that failed for good (sent) or that a sink refused (received)",
            ["account", "direction"],
            registry=registry,
        )
        self.deferred = Counter(
            "oauthmail_messages_deferred",
            "Sending attempts that failed for now (retried later)",
            per,
            registry=registry,
        )
        self.refreshes = Counter(
            "oauthmail_token_refreshes",
            "Token refreshes by the background refresher, by result (ok, failed)",
            ["account", "result"],
            registry=registry,
        )
        self.refreshSeconds = Histogram(
            "oauthmail_token_refresh_seconds",
            "Time to refresh a token and store it",
            ["profile"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.providerSeconds = Histogram(
            "oauthmail_provider_seconds",
            "Time from a message's content going out to the provider's answer",
            per,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokenExpiry = Gauge(
            "oauthmail_token_expires_at_seconds",
            "When the account's access token expires (Unix time)",
            per,
            registry=registry,
        )
        self.accountOk = Gauge(
            "oauthmail_account_ok", "1 when every part of the account is ok", per, registry=registry
        )
        self.imapConnected = Gauge(
            "oauthmail_imap_connected",
            "1 while the folder's IMAP connection is up",
            ["account", "folder"],
            registry=registry,
        )
        self.idleActive = Gauge(
            "oauthmail_imap_idle_active",
            "1 while the folder waits in IMAP IDLE",
            ["account", "folder"],
            registry=registry,
        )
        self.queueDepth = Gauge(
            "oauthmail_queue_depth", "Messages queued or being sent", per, registry=registry
        )
        self.queueOldest = Gauge(
            "oauthmail_queue_oldest_age_seconds",
            "Age of the oldest message queued or being sent (0 when none)",
            per,
            registry=registry,
        )
        self.queueFailed = Gauge(
            "oauthmail_queue_failed_messages",
            "Messages failed for good still kept in the queue",
            per,
            registry=registry,
        )
        self.scrapeErrors = Counter(
            "oauthmail_metrics_refresh_errors",
            "Scrapes whose store figures could not be read",
            registry=registry,
        )
        self._profiles: dict[str, str] = {}

    # -- process counters ---------------------------------------------------------------

    def profiles(self, byAccount: Mapping[str, str]) -> None:
        """Which profile each account uses (the refresh histogram's label)."""
        self._profiles.update(byAccount)

    def count(self, entry: LogEntry) -> None:
        """Count one message-log entry."""
        account = entry.account
        if entry.direction == IN:
            if entry.outcome == DELIVERED:
                self.received.labels(account).inc()
            else:
                self.failed.labels(account, IN).inc()
        elif entry.outcome == SENT:
            self.sent.labels(account).inc()
        elif entry.outcome == FAILED:
            self.failed.labels(account, "out").inc()
        elif entry.outcome == DEFERRED:
            self.deferred.labels(account).inc()

    def refreshed(self, account: str, ok: bool, seconds: float) -> None:
        """The refresher's observer: one refresh of ``account`` ended."""
        self.refreshes.labels(account, "ok" if ok else "failed").inc()
        self.refreshSeconds.labels(self._profiles.get(account, "?")).observe(max(0.0, seconds))

    # -- figures read at scrape time -------------------------------------------------------

    async def refresh(
        self,
        accounts: Sequence[str],
        store: ITokenStore,
        queue: Any = None,
        watchers: Mapping[str, Any] | None = None,
        health: IAccountHealth | None = None,
    ) -> None:
        """Read the gauges' values from the store and the running parts."""
        configured = set(accounts)
        for expiry in await store.listExpiries():
            if expiry.account in configured and expiry.expires_at is not None:
                self.tokenExpiry.labels(expiry.account).set(expiry.expires_at)
        if health is not None:
            for name in accounts:
                self.accountOk.labels(name).set(1 if health.view(name).ok else 0)
        for name, watcher in (watchers or {}).items():
            for folder in watcher.status().get("folders", []):
                up = folder["state"] in _CONNECTED
                self.imapConnected.labels(name, folder["folder"]).set(1 if up else 0)
                self.idleActive.labels(name, folder["folder"]).set(1 if folder.get("idle") else 0)
        if queue is not None:
            for name, stats in (await queue.stats()).items():
                self.queueDepth.labels(name).set(stats.depth)
                self.queueOldest.labels(name).set(stats.oldest_age or 0.0)
                self.queueFailed.labels(name).set(stats.failed)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@implementer(IMessageRecorder)
class MeteredRecorder:
    """Counts each message-log entry, then hands it on to ``inner`` (the log's writer)."""

    def __init__(self, metrics: DaemonMetrics, inner: IMessageRecorder | None = None) -> None:
        self._metrics = metrics
        self._inner = inner

    def add(self, entry: LogEntry) -> None:
        try:
            self._metrics.count(entry)
        except Exception:  # a metric must never cost a message its log entry
            log.failure("counting a message-log entry failed")
        if self._inner is not None:
            self._inner.add(entry)


@implementer(IMessageSender)
class MeteredSender:
    """An ``IMessageSender`` that times each message from its content to its answer."""

    def __init__(self, inner: Any, metrics: DaemonMetrics, clock: IReactorTime) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    def send(
        self,
        account: Any,
        token: Any,
        messages: Any,
        hooks: SessionHooks,
    ) -> defer.Deferred[Any]:
        started: dict[str, float] = {}
        histogram = self._metrics.providerSeconds.labels(account.name)
        clock = self._clock

        def timedBeforeData(message: Any, *args: Any) -> Any:
            started[message.id] = clock.seconds()
            return hooks.beforeData(message, *args)

        def timedOutcome(outcome: Any) -> None:
            began = started.pop(outcome.message_id, None)
            if began is not None:
                histogram.observe(max(0.0, clock.seconds() - began))
            hooks.onOutcome(outcome)

        timed = replace(hooks, beforeData=timedBeforeData, onOutcome=timedOutcome)
        return self._inner.send(account, token, messages, timed)

    def close(self) -> defer.Deferred[None]:
        return defer.maybeDeferred(self._inner.close)


class MetricsPage(Resource):
    """``GET /metrics``: read the store's figures, then render the registry."""

    isLeaf = True

    def __init__(self, metrics: DaemonMetrics, gather: Callable[[], Any]) -> None:
        super().__init__()
        self._metrics = metrics
        self._gather = gather

    def render_GET(self, request: Any) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def failed(failure: Any) -> None:
            self._metrics.scrapeErrors.inc()
            log.warn(
                "metrics: the store's figures could not be read: {why}",
                why=describeFailure(failure),
            )

        def written(_: object) -> None:
            if gone:
                return
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(self._metrics.render())
            request.finish()

        d = defer.ensureDeferred(self._gather())
        d.addErrback(failed)
        d.addCallback(written)
        return NOT_DONE_YET
