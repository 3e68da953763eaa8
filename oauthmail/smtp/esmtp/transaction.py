"""One message's SMTP transaction: the replies it got and the outcome they add up to.

A :class:`Transaction` collects the replies to ``MAIL FROM``, each ``RCPT TO``,
``DATA`` and the final dot, in lock-step and pipelined mode alike, and turns
them into one :class:`~oauthmail.smtp.esmtp.results.MessageOutcome` with one
:class:`~oauthmail.smtp.esmtp.results.RecipientOutcome` per recipient, in the
message's order. Pure: no I/O, no clock.

Rules a reader must not break:

- A recipient is ``ok`` only through :meth:`Transaction.completed` with a
  ``2xx`` to the final dot, and only if its own ``RCPT`` (and the ``MAIL``) was
  accepted. Every other outcome carries an explicit, non-``ok`` kind — a ``250``
  to ``DATA`` included (:func:`oauthmail.smtp.outcomes.forStep`).
- A recipient refused at ``RCPT`` keeps that reply in every outcome, also in the
  in-doubt one: only the accepted ones may have the message.
- A ``421`` to the final dot is the server closing, not a verdict on the
  message: it is in doubt, like a connection lost there (see
  :meth:`Transaction.completed`).
- Addresses that cannot be put on the wire are refused here, locally and for
  good, before any command of the message goes out.
"""

from __future__ import annotations

from collections.abc import Callable

from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.reply import Reply
from oauthmail.smtp.esmtp.results import MessageOutcome, OutgoingMessage, RecipientOutcome
from oauthmail.smtp.esmtp.wire import mailCommand, rcptCommand
from oauthmail.smtp.outcomes import Step, Verdict

__all__ = ["Transaction"]

#: Why a message whose content went out has no answer.
IN_DOUBT = "connection lost before the server confirmed the message (it may have arrived)"
#: Why a message answered ``421`` at the final dot is in doubt.
CLOSED_IN_DOUBT = "the server closed with the message in its hands: it may have arrived"


class Transaction:
    """The commands for one message and the replies gathered so far.

    :param clean: makes a server text fit for an outcome (one line, no secret).
    """

    def __init__(self, message: OutgoingMessage, clean: Callable[[str], str]) -> None:
        self.message = message
        self._clean = clean
        #: The recipients' outcomes so far, by position (``None``: not decided yet).
        self._results: list[RecipientOutcome | None] = [None] * len(message.recipients)
        #: ``RCPT TO`` lines to send and the recipient position each one is for.
        self.rcptLines: list[bytes] = []
        self._positions: list[int] = []
        self.mail: Reply | None = None
        self.mailOk = False
        self._accepted: list[int] = []
        self.contentSent = False
        #: The first quota verdict any reply of this transaction got.
        self.quota: Verdict | None = None
        self.quotaText = ""
        try:
            self.mailLine = mailCommand(message.mail_from)
        except ValueError as e:
            self.mailLine = b""
            self._refuseAll(f"not sent: the sender address cannot be used: {e}")
            return
        for position, address in enumerate(message.recipients):
            try:
                line = rcptCommand(address)
            except ValueError as e:
                self._results[position] = RecipientOutcome(
                    address, 0, f"not sent: {e}", outcomes.PERMANENT
                )
                continue
            self.rcptLines.append(line)
            self._positions.append(position)

    @property
    def sendable(self) -> bool:
        """False when no command can go out (bad sender or no usable recipient)."""
        return bool(self.mailLine) and bool(self.rcptLines)

    @property
    def accepted(self) -> bool:
        """True once ``MAIL`` and at least one ``RCPT`` were accepted."""
        return self.mailOk and bool(self._accepted)

    # -- replies --------------------------------------------------------------------

    def mailReply(self, reply: Reply) -> None:
        self.mail = reply
        self.mailOk = self._verdict(Step.MAIL, reply).kind == outcomes.OK

    def rcptReply(self, index: int, reply: Reply) -> None:
        """The reply to the ``index``-th ``RCPT TO`` line."""
        position = self._positions[index]
        verdict = self._verdict(Step.RCPT, reply)
        if verdict.kind == outcomes.OK and self.mailOk:
            self._accepted.append(position)
            return
        if verdict.kind == outcomes.OK:  # accepted although MAIL was not: still not sent
            verdict = Verdict(outcomes.TEMPORARY, None, "MAIL FROM was not accepted")
        self._results[position] = self._outcome(position, reply, verdict)

    def refused(self) -> tuple[RecipientOutcome, ...]:
        """The recipients refused so far (at ``RCPT`` or locally), with the reason."""
        return tuple(r for r in self._results if r is not None)

    # -- outcomes -------------------------------------------------------------------

    def unsendable(self) -> MessageOutcome:
        """The outcome of a message no command could be sent for."""
        results = self._final()
        first = results[0] if results else RecipientOutcome("", 0, "no recipients")
        return MessageOutcome(self.message.id, 0, first.text, results, False)

    def mailRefused(self) -> MessageOutcome:
        """``MAIL FROM`` was refused: every recipient shares that answer."""
        assert self.mail is not None
        verdict = self._verdict(Step.MAIL, self.mail)
        for position in self._positions:
            self._results[position] = self._outcome(position, self.mail, verdict)
        return self._message(self.mail, accepted=False)

    def noneAccepted(self) -> MessageOutcome:
        """Every ``RCPT`` was refused (each keeps its own reply): nothing to send."""
        results = self._final()
        last = next((r for r in reversed(results) if r.code), None)
        code = last.code if last is not None else 0
        return MessageOutcome(self.message.id, code, "no recipient accepted", results, False)

    def dataRefused(self, reply: Reply) -> MessageOutcome:
        """``DATA`` got anything but ``354``: the content never went out."""
        self._settleAccepted(reply, self._verdict(Step.DATA, reply))
        return self._message(reply, accepted=False)

    def completed(self, reply: Reply) -> MessageOutcome:
        """The reply to the final dot: ``2xx`` means sent to every accepted recipient.

        A ``421`` ("service not available, closing") is in doubt: a server that
        relays the message on (Dovecot's submission service, a provider's front
        end) may have passed it to the next hop before it was told to shut down
        and answered ``421`` instead of the ``250``. Seen in the chaos test: the
        message sent again at once arrived twice. In doubt, it is looked for in
        Sent before it goes again; where Sent cannot be searched it is simply
        sent again, as before.
        """
        if reply.code == 421:
            said = outcomes.describe(reply.code, self._clean(reply.text))
            return self.inDoubt(f"{said}; {CLOSED_IN_DOUBT}")
        verdict = self._verdict(Step.DOT, reply)
        self._settleAccepted(reply, verdict)
        return self._message(reply, accepted=verdict.kind == outcomes.OK)

    def inDoubt(self, text: str = IN_DOUBT) -> MessageOutcome:
        """The content went out and no verdict came: the provider may have the message.

        Every accepted recipient is marked ``in_doubt`` (code 0: "no verdict");
        those refused at ``RCPT`` keep their reply and no mark. The outbox
        counts a copy found in Sent only for the marked ones. It once told them
        apart by their code instead, and a 421 here that gave the accepted
        recipients code 421 made the copy found in Sent count for nobody: the
        message went again (the chaos test's seed 168657). The server's reply
        that left the message in doubt goes in the text.
        """
        for position in self._inDoubt():
            address = self.message.recipients[position]
            self._results[position] = RecipientOutcome(
                address, 0, text, outcomes.TEMPORARY, in_doubt=True
            )
        results = self._final()
        return MessageOutcome(self.message.id, 0, text, results, False, in_doubt=True)

    def _inDoubt(self) -> list[int]:
        """The recipients the content went to without a refusal: accepted, or not answered yet.

        With CHUNKING the content leaves with ``MAIL`` and ``RCPT``, and a server
        may hold its replies until ``BDAT ... LAST`` is through (Dovecot does): a
        connection lost then leaves the ``RCPT`` unanswered although the message
        went on. Counted as refused, a copy found in Sent proved nothing for it
        and it went again (a duplicate, seen in test_daemon_send).
        """
        if self.mail is not None and not self.mailOk:
            return []  # the sender was refused: nobody can have it
        return [p for p in self._positions if p in self._accepted or self._results[p] is None]

    def notSent(self, why: str) -> MessageOutcome:
        """The content was held back locally (``beforeData`` failed): try again later."""
        for position, address in enumerate(self.message.recipients):
            if self._results[position] is None:
                self._results[position] = RecipientOutcome(address, 0, why, outcomes.TEMPORARY)
        return MessageOutcome(self.message.id, 0, why, self._final(), False)

    # -- helpers --------------------------------------------------------------------

    def _verdict(self, step: str, reply: Reply) -> Verdict:
        verdict = outcomes.forStep(step, reply.code, reply.text)
        if verdict.kind == outcomes.QUOTA and self.quota is None:
            self.quota = verdict
            self.quotaText = outcomes.describe(reply.code, self._clean(reply.text))
        return verdict

    def _outcome(self, position: int, reply: Reply, verdict: Verdict) -> RecipientOutcome:
        text = self._clean(reply.text)
        if verdict.words and not 400 <= reply.code < 600 and verdict.kind != outcomes.OK:
            text = f"{text} ({verdict.words})"  # an unexpected reply: say why it is not ok
        return RecipientOutcome(self.message.recipients[position], reply.code, text, verdict.kind)

    def _settleAccepted(self, reply: Reply, verdict: Verdict) -> None:
        for position in self._accepted:
            self._results[position] = self._outcome(position, reply, verdict)

    def _refuseAll(self, why: str) -> None:
        for position, address in enumerate(self.message.recipients):
            self._results[position] = RecipientOutcome(address, 0, why, outcomes.PERMANENT)

    def _final(self) -> tuple[RecipientOutcome, ...]:
        results = []
        for position, address in enumerate(self.message.recipients):
            result = self._results[position]
            if result is None:  # not answered at all: the session ended first
                result = RecipientOutcome(address, 0, "no reply", outcomes.TEMPORARY)
            results.append(result)
        return tuple(results)

    def _message(self, reply: Reply, *, accepted: bool) -> MessageOutcome:
        text = self._clean(reply.text)
        return MessageOutcome(self.message.id, reply.code, text, self._final(), accepted)
