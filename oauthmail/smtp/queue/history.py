"""What the queue tells the message log: one entry per message event, built from its status.

The queue hands these to an :class:`~oauthmail.messagelog.interfaces.IMessageRecorder`
(a buffered writer): building them costs a few attribute reads, and nothing
here waits for a store. ``queued`` is written at enqueue with the message's
Message-ID and size; later entries name only the queue id (the log fills in the
rest from the ``queued`` one).
"""

from __future__ import annotations

from oauthmail.messagelog.records import (
    BOUNCED,
    DEFERRED,
    FAILED,
    OUT,
    QUEUED,
    SENT,
    LogEntry,
    cleanReply,
    messageFacts,
)
from oauthmail.smtp import outcomes
from oauthmail.smtp.queue.records import DeliveryStatus

__all__ = ["queuedEntry", "statusEntries"]


def queuedEntry(account: str, queue_id: str, data: bytes, now: float) -> LogEntry:
    """The ``queued`` entry of a message just stored (``data``: its bytes with the trace line)."""
    message_id, size = messageFacts(data)
    return LogEntry(now, account, OUT, QUEUED, message_id, size, queue_id=queue_id)


def _reply(code: int | None, text: str | None) -> str:
    """A recipient's answer; refusals get their explanation (what to do), a 250 needs none."""
    if code is not None and 200 <= code < 300:
        return f"{code} {text or ''}".rstrip()
    return outcomes.describe(code or 0, text or "")


def _replies(status: DeliveryStatus, state: str) -> str | None:
    texts = [
        f"{r.address}: {_reply(r.code, r.text)}"
        for r in status.recipients
        if r.state == state and (r.code or r.text)
    ]
    return cleanReply("; ".join(texts)) if texts else None


def statusEntries(status: DeliveryStatus, now: float, bounce: bool) -> list[LogEntry]:
    """The entries for a message whose status just changed (the queue's ``notify``)."""
    account, queue_id = status.account, status.id
    if status.state == "sent":
        entries = [
            LogEntry(now, account, OUT, SENT, queue_id=queue_id, reply=_replies(status, "sent"))
        ]
        if any(r.state == "failed" for r in status.recipients):
            entries.append(
                LogEntry(
                    now, account, OUT, FAILED, queue_id=queue_id, reply=_replies(status, "failed")
                )
            )
    elif status.state == "failed":
        entries = [
            LogEntry(
                now, account, OUT, FAILED, queue_id=queue_id, reply=cleanReply(status.last_error)
            )
        ]
    elif status.state == "queued":
        return [
            LogEntry(
                now, account, OUT, DEFERRED, queue_id=queue_id, reply=cleanReply(status.last_error)
            )
        ]
    else:
        return []
    # A bounce goes with a failure for good (policy.bounce), never about a bounce
    # itself (empty sender), and not when it could not be built (said in the error).
    failed = any(e.outcome == FAILED for e in entries)
    if bounce and failed and status.mail_from and "no bounce sent" not in (status.last_error or ""):
        entries.append(
            LogEntry(
                now,
                account,
                OUT,
                BOUNCED,
                queue_id=queue_id,
                reply=cleanReply(f"a delivery status notification went to <{status.mail_from}>"),
            )
        )
    return entries
