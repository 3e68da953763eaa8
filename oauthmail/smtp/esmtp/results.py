"""What the outbound client takes and gives back: messages, outcomes, session errors.

These are the values the outbound queue sees (through :mod:`oauthmail.smtp.client`).
Rules a reader must not break:

- A :class:`RecipientOutcome` whose ``status`` is :data:`~oauthmail.smtp.outcomes.OK`
  makes the queue record the recipient ``sent``: only a ``2xx`` to the final dot
  may produce one. Replies that do not mean what their first digit says (a ``250``
  to ``DATA``) carry an explicit ``kind``.
- Texts here come from servers: they are cleaned and scrubbed of the token
  before they are put in these values.
- Only a recipient marked ``in_doubt`` may count as sent when a message in
  doubt turns up in Sent. The mark is explicit, never read from a code: a
  recipient built without it is sent again, which at worst duplicates, where
  a refused recipient taken for one in doubt would silently lose its mail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from oauthmail.smtp import outcomes

__all__ = [
    "MessageOutcome",
    "OutgoingMessage",
    "RecipientOutcome",
    "SessionError",
    "SessionResult",
]


@dataclass(frozen=True)
class OutgoingMessage:
    """One message to send: envelope and the message bytes (any line ends)."""

    id: str
    mail_from: str
    recipients: tuple[str, ...]
    data: bytes


@dataclass(frozen=True)
class RecipientOutcome:
    """The final reply concerning one recipient in one attempt (RCPT or DATA reply).

    ``kind`` overrides what ``code`` and ``text`` would mean by themselves; empty,
    :func:`oauthmail.smtp.outcomes.verdict` decides (``code`` 0: no reply).
    """

    address: str
    code: int
    text: str
    kind: str = ""
    #: The content went out to this recipient (its ``RCPT`` was accepted) and
    #: no verdict came: the provider may have the message for it. A recipient
    #: refused at ``RCPT`` in the same attempt is not in doubt.
    in_doubt: bool = False

    @property
    def status(self) -> str:
        """``ok``, ``temporary``, ``permanent`` or ``quota`` (keep queued, pause the account)."""
        return self.kind or outcomes.verdict(self.code, self.text).kind


@dataclass(frozen=True)
class MessageOutcome:
    """What one attempt at one message produced.

    ``code``/``text`` is the reply that ended the transaction (the answer to
    the end of ``DATA``, to ``DATA``, or to ``MAIL FROM``; 0 for "no answer").
    ``accepted`` is true when the provider took the message for at least one
    recipient (a ``2xx`` to the final dot).
    """

    message_id: str
    code: int
    text: str
    recipients: tuple[RecipientOutcome, ...]
    accepted: bool
    #: The whole message went out and no answer came: the provider may have it.
    in_doubt: bool = False


class SessionError(Exception):
    """Why a session ended before every message got an answer (or stopped early).

    ``action`` is one of :data:`outcomes.TEMPORARY`, :data:`outcomes.PERMANENT`,
    :data:`outcomes.REFRESH` or :data:`outcomes.QUOTA` (then ``pause`` suggests
    how many seconds the account's sending should wait); ``auth`` tells an
    authentication failure from a connection problem; ``tls`` a refused
    certificate or a server without TLS. The message is one line with no token
    in it.
    """

    def __init__(
        self,
        action: str,
        reason: str,
        *,
        auth: bool = False,
        tls: bool = False,
        pause: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.action = action
        self.reason = reason
        self.auth = auth
        self.tls = tls
        self.pause = pause


@dataclass
class SessionResult:
    """Everything one connection produced; ``error`` is ``None`` if it ended normally."""

    outcomes: list[MessageOutcome] = field(default_factory=list)
    error: SessionError | None = None
