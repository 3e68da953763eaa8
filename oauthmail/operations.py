"""The operator's side of the daemon, built once: message log, metrics, notifications.

:func:`buildOperations` puts together, for one configuration and its stores,
the message log's buffered writer and sweep, the metrics, and the notifiers,
and the chain of recorders the queue and the watchers hand their entries to::

    queue / watcher ──► NotifyingRecorder ──► MeteredRecorder ──► MessageLogWriter ──► IMessageLog
                         (failed: notice)      (counters)          (batched writes)

The daemon (:mod:`oauthmail.service`) owns the life cycle: start the sweep with
the other services, flush the writer and close the notifiers before the stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from oauthmail.config import Config
from oauthmail.db.open import Stores
from oauthmail.interfaces import IAccountHealth
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.messagelog.sweep import MessageLogSweeper
from oauthmail.messagelog.writer import MessageLogWriter
from oauthmail.metrics import DaemonMetrics, MeteredRecorder
from oauthmail.notifications.hub import NotificationHub, NotifyingRecorder
from oauthmail.notifications.mail import MailNotifier
from oauthmail.notifications.webhook import WebhookNotifier

__all__ = ["Operations", "buildOperations"]

log = Logger()


@dataclass
class Operations:
    """What :func:`buildOperations` made; ``recorder`` is what the queue and watchers get."""

    writer: MessageLogWriter
    sweeper: MessageLogSweeper
    metrics: DaemonMetrics
    hub: NotificationHub
    recorder: IMessageRecorder

    def attachQueue(self, queue: Any, config: Config) -> None:
        """Add the admin mail notifier once the queue exists (it is sent through the queue)."""
        notify = config.notify
        if notify.mail_to is None or notify.mail_account is None or queue is None:
            return
        sender = config.account(notify.mail_account).address
        self.hub.notifiers.append(MailNotifier(queue, notify.mail_account, sender, notify.mail_to))

    async def close(self) -> None:
        """Write what the log still holds and stop the notifiers (before the stores close)."""
        if self.sweeper.running:
            await defer.maybeDeferred(self.sweeper.stopService)
        await self.writer.stop()
        await self.hub.close()


def buildOperations(
    config: Config, stores: Stores, reactor: Any, health: IAccountHealth | None
) -> Operations:
    """The message log's writer and sweep, the metrics and the notifiers for ``config``."""
    writer = MessageLogWriter(stores.messages, reactor)
    sweeper = MessageLogSweeper(
        stores.messages, reactor, outbox=stores.outbox, retention=config.messages.retention
    )
    metrics = DaemonMetrics()
    metrics.profiles({a.name: a.profile.name for a in config.accounts})
    notifiers: list[Any] = []
    if config.notify.webhook is not None:
        notifiers.append(
            WebhookNotifier(config.notify.webhook, reactor, config.notify.webhook_secret)
        )
    hub = NotificationHub(notifiers, reactor)
    if health is not None:
        health.listen(hub.accountChanged)
    recorder = NotifyingRecorder(hub, MeteredRecorder(metrics, writer))
    return Operations(writer, sweeper, metrics, hub, recorder)
