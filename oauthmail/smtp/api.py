"""Sending mail from Python (and from the ``oauthmail send`` command).

``send()`` is the library entry point: it fires as soon as the message is
durably queued, with the id that :meth:`OutboundQueue.whenDelivered` and
:meth:`OutboundQueue.status` take. The queue does the rest (token, TLS,
retries), so a caller that got an id may forget the message.

:func:`sendFromCLI` is what the CLI's ``send ACCOUNT --to ... < message.eml``
calls: it reads the message, derives the envelope sender from the account when
not given, queues it and, when asked to, waits for the outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from typing import Any

from twisted.internet import defer

from oauthmail.smtp.queue import DeliveryStatus, OutboundQueue

__all__ = ["envelopeRecipients", "send", "sendFromCLI"]


def send(
    queue: OutboundQueue,
    account: str,
    mail_from: str,
    recipients: Sequence[str],
    message: bytes,
) -> defer.Deferred[str]:
    """Queue ``message`` for sending through ``account``; fire with its id once it is on disk.

    ``recipients`` is the envelope (``To``/``Cc``/``Bcc`` headers are not
    read); ``message`` the complete message with headers, any line ends.
    Fails with ``UnknownAccount``, ``ValueError`` (no recipients) or a store
    error; nothing is queued then.
    """
    if isinstance(recipients, str):
        recipients = [recipients]
    return queue.enqueue(account, mail_from, list(recipients), message)


def envelopeRecipients(message: bytes) -> list[str]:
    """The addresses in the ``To``, ``Cc`` and ``Bcc`` headers (for ``send`` without ``--to``)."""
    headers = BytesHeaderParser().parsebytes(message)
    fields = [v for name in ("to", "cc", "bcc") for v in headers.get_all(name, [])]
    return [address for _, address in getaddresses(fields) if address]


async def sendFromCLI(
    queue: OutboundQueue,
    account: Any,
    message: bytes,
    to: Sequence[str] = (),
    mail_from: str | None = None,
    wait: bool = False,
) -> tuple[str, DeliveryStatus | None]:
    """Queue a message for ``oauthmail send``; optionally wait until it is sent or failed.

    ``account`` is the :class:`~oauthmail.config.AccountConfig`; the envelope
    sender defaults to its address and the recipients to the message's
    ``To``/``Cc``/``Bcc``. A ``Bcc`` header is *not* removed: callers that
    want it hidden must strip it first. Returns ``(message id, final status or
    None)``. The queue must be running (``startService``) for ``wait`` to end.
    """
    recipients = list(to) or envelopeRecipients(message)
    if not recipients:
        raise ValueError("no recipients: pass --to or put To/Cc/Bcc headers in the message")
    message_id = await send(queue, account.name, mail_from or account.address, recipients, message)
    if not wait:
        return message_id, None
    status = await queue.whenDelivered(message_id)
    return message_id, status
