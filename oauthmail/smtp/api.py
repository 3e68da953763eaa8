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
from email.utils import getaddresses
from typing import Any

from twisted.internet import defer

from oauthmail.mail.addresses import AddressSyntaxError, checkMailbox
from oauthmail.mail.trace import headerBlock, headerValues
from oauthmail.smtp.queue.records import DeliveryStatus
from oauthmail.smtp.queue.service import OutboundQueue

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
    Fails with ``UnknownAccount``, ``ValueError`` (no recipients, or an
    address that is not an RFC 5321 mailbox: a recipient without a domain is
    refused now rather than failing at the provider later) or a store error;
    nothing is queued then. ``mail_from`` may be empty (the null reverse-path).
    """
    if isinstance(recipients, str):
        recipients = [recipients]
    try:
        if mail_from:
            try:
                checkMailbox(mail_from.encode("utf-8"))
            except AddressSyntaxError as e:
                raise AddressSyntaxError(f"sender {mail_from!r}: {e}") from None
        for recipient in recipients:
            try:
                checkMailbox(recipient.encode("utf-8"))
            except AddressSyntaxError as e:
                raise AddressSyntaxError(f"recipient {recipient!r}: {e}") from None
    except AddressSyntaxError as e:
        return defer.fail(e)
    return queue.enqueue(account, mail_from, list(recipients), message)


def envelopeRecipients(message: bytes) -> list[str]:
    """The addresses in the ``To``, ``Cc`` and ``Bcc`` headers (for ``send`` without ``--to``)."""
    # mail.trace reads 8-bit header bytes as UTF-8 (what they are in practice), so a
    # non-ASCII address is named as written when it is refused, not as U+FFFD.
    header = headerBlock(message)
    fields = [v for name in ("to", "cc", "bcc") for v in headerValues(header, name)]
    return [address for _, address in getaddresses(fields) if address]


def withoutBcc(message: bytes) -> bytes:
    """``message`` without its ``Bcc`` header fields (folded lines included), else byte-exact.

    What ``sendmail -t`` does: the envelope carries the blind copies, the
    header must not show them to every recipient.
    """
    lines = message.splitlines(keepends=True)
    out: list[bytes] = []
    dropping = False
    for index, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):  # end of the header section: the rest as is
            out.extend(lines[index:])
            break
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                out.append(line)
            continue
        dropping = line.split(b":", 1)[0].strip().lower() == b"bcc"
        if not dropping:
            out.append(line)
    return b"".join(out)


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
    ``To``/``Cc``/``Bcc``, and then the ``Bcc`` field is removed from the
    message (as ``sendmail -t`` does). Returns ``(message id, final status or
    None)``. The queue must be running (``startService``) for ``wait`` to end.
    """
    recipients = list(to)
    if not recipients:
        recipients = envelopeRecipients(message)
        message = withoutBcc(message)
    if not recipients:
        raise ValueError("no recipients: pass --to or put To/Cc/Bcc headers in the message")
    message_id = await send(queue, account.name, mail_from or account.address, recipients, message)
    if not wait:
        return message_id, None
    status = await queue.whenDelivered(message_id)
    return message_id, status
