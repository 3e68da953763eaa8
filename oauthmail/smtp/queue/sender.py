"""The queue's default :class:`~oauthmail.interfaces.IMessageSender`: one SMTP session.

The seam between the queue and a provider: the queue hands claimed messages
(:class:`~oauthmail.smtp.queue.records.OutboxMessage`) to an
``IMessageSender``; this one sends them with
:func:`oauthmail.smtp.client.sendBatch`. API transports (Graph, Gmail API)
will be senders beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.interfaces import IMessageSender
from oauthmail.secret import Secret
from oauthmail.smtp.client import OutgoingMessage, SessionResult, sendBatch
from oauthmail.smtp.queue.records import OutboxMessage, SessionHooks

__all__ = ["SMTPSender"]


def _outgoing(message: OutboxMessage) -> OutgoingMessage:
    return OutgoingMessage(message.id, message.mail_from, message.recipients, message.data)


@implementer(IMessageSender)
class SMTPSender:
    """Sends over the account's SMTP server (``profile.smtp``), one session per call."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __repr__(self) -> str:
        return "<SMTPSender>"

    def send(
        self,
        account: AccountConfig,
        token: Secret,
        messages: Sequence[OutboxMessage],
        hooks: SessionHooks,
    ) -> defer.Deferred[SessionResult]:
        def moreOutgoing() -> defer.Deferred[list[OutgoingMessage]]:
            return hooks.more().addCallback(lambda claimed: [_outgoing(m) for m in claimed])

        return sendBatch(
            self._reactor,
            account,
            token,
            [_outgoing(m) for m in messages],
            beforeData=hooks.beforeData,
            onOutcome=hooks.onOutcome,
            more=moreOutgoing,
        )
