"""One "session" of an API transport: the queue's batch, one HTTP request per message.

:class:`APISender` is the :class:`~oauthmail.interfaces.IMessageSender` both
API transports share; :class:`~.graph.GraphSender` and
:class:`~.gmail_api.GmailAPISender` only say how a message becomes a request
and how big it may be. Rules a reader must not break:

- ``beforeData(message)`` is awaited before a message's request goes out: it
  is what keeps the queue's at-least-once window at ``max_unrecorded``.
- Every answered message gets exactly one outcome (``onOutcome`` and the
  result); a message the session stops before is left without one, and the
  queue retries it. A request whose body went out and whose answer was lost
  is reported *in doubt*.
- Throttling (``429``, ``503``, ``504``, Gmail's rate-limit ``403``) is waited
  out on the injected clock before the next request for the account, for
  ``Retry-After`` seconds or a growing, jittered backoff, never longer than
  ``max_wait``; after ``max_throttles`` in a row the session ends with a
  ``QUOTA`` error (the messages wait in the queue). The wait outlives the
  session: the account's next session waits too.
- Server texts are scrubbed of the token before they go anywhere.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.http.body import BytesBody
from oauthmail.http.exchange import Answer, ExchangeFailed, exchange
from oauthmail.interfaces import IMessageSender
from oauthmail.retry import Backoff
from oauthmail.secret import Secret, scrub
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import MessageOutcome, RecipientOutcome, SessionError, SessionResult
from oauthmail.smtp.queue.records import OutboxMessage, SessionHooks
from oauthmail.transports.answers import judge
from oauthmail.transports.recipients import prepare

__all__ = ["APIRequest", "APISender", "IN_DOUBT"]

log = Logger()

#: The outcome text of a request whose answer was lost after it went out.
IN_DOUBT = "the request went out and its answer was lost (the provider may have the message)"


@dataclass(frozen=True)
class APIRequest:
    """One HTTP request that sends one message."""

    method: bytes
    url: str
    headers: Mapping[str, str]
    body: bytes


@implementer(IMessageSender)
class APISender:
    """Sends the queue's messages through an HTTP mail API (see the module's rules).

    :param agents: the ``IAgent`` for an account (its proxy settings decide).
    :param clock: for request deadlines and throttling waits.
    :param timeout: seconds for one request (sending the message and its answer).
    :param max_wait: the longest wait a ``Retry-After`` (or the backoff) may impose.
    :param max_throttles: throttled answers in a row before the session gives up.
    """

    #: The API's name in texts ("Microsoft Graph", "the Gmail API").
    api = "the API"

    def __init__(
        self,
        agents: Callable[[AccountConfig], IAgent],
        clock: IReactorTime,
        *,
        timeout: float = 120.0,
        max_wait: float = 300.0,
        max_throttles: int = 5,
        random: _random.Random | None = None,
    ) -> None:
        self._agents = agents
        self._clock = clock
        self.timeout = timeout
        self.max_wait = max_wait
        self.max_throttles = max_throttles
        self._random = random if random is not None else _random.Random()  # noqa: S311 - jitter
        self._notBefore: dict[str, float] = {}
        self._backoffs: dict[str, Backoff] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    # -- what each API says ---------------------------------------------------------------

    def tooLarge(self, data: bytes) -> str | None:
        """Why ``data`` cannot go through this API at all (one line), or ``None``."""
        return None

    def request(self, account: AccountConfig, token: Secret, data: bytes) -> APIRequest:
        raise NotImplementedError

    def accepted(self, answer: Answer) -> str:
        """The outcome text of a ``2xx`` answer (the API's message id where it gives one)."""
        return f"2.0.0 accepted by {self.api} (HTTP {answer.status})"

    # -- the session ------------------------------------------------------------------------

    def send(
        self,
        account: AccountConfig,
        token: Secret,
        messages: Sequence[OutboxMessage],
        hooks: SessionHooks,
    ) -> defer.Deferred[SessionResult]:
        return defer.ensureDeferred(self._session(account, token, list(messages), hooks))

    async def _session(
        self,
        account: AccountConfig,
        token: Secret,
        batch: list[OutboxMessage],
        hooks: SessionHooks,
    ) -> SessionResult:
        result = SessionResult()

        def report(outcome: MessageOutcome) -> None:
            result.outcomes.append(outcome)
            hooks.onOutcome(outcome)

        agent = self._agents(account)
        while batch:
            for message in batch:
                error = await self._one(agent, account, token, message, hooks.beforeData, report)
                if error is not None:
                    result.error = error
                    return result
            batch = await hooks.more()
        return result

    async def _one(
        self,
        agent: IAgent,
        account: AccountConfig,
        token: Secret,
        message: OutboxMessage,
        beforeData: Callable[..., defer.Deferred[None] | None],
        report: Callable[[MessageOutcome], None],
    ) -> SessionError | None:
        """Send one message; its outcome goes to ``report``; an error ends the session."""
        prepared = prepare(message.data, message.recipients)
        refusal = prepared.refusal or self.tooLarge(prepared.data)
        if refusal is not None:
            code, text = (552, "5.3.4 ") if prepared.refusal is None else (554, "5.6.0 ")
            report(_outcome(message, code, text + refusal, outcomes.PERMANENT))
            return None
        request = self.request(account, token, prepared.data)
        body = BytesBody(request.body)
        throttles = 0
        while True:
            await self._waitTurn(account.name)
            room = beforeData(message, ())
            if room is not None:
                await room
            try:
                answer = await exchange(
                    agent,
                    request.method,
                    request.url,
                    clock=self._clock,
                    headers=request.headers,
                    body=body.replay(),
                    timeout=self.timeout,
                )
            except ExchangeFailed as e:
                reason = scrub(e.reason, [token.reveal()])
                if e.sent:
                    report(_outcome(message, 0, IN_DOUBT, outcomes.TEMPORARY, inDoubt=True))
                return SessionError(outcomes.TEMPORARY, reason, tls=e.tls)
            verdict = judge(
                self.api,
                answer.status,
                answer.body,
                answer.header("retry-after"),
                self._clock.seconds(),
            )
            verdict = replace(verdict, text=scrub(verdict.text, [token.reveal()]))
            if verdict.throttled:
                throttles += 1
                pause = self._throttled(account.name, verdict.pause)
                if throttles < self.max_throttles:
                    log.info(
                        "{account}: {api} is throttling ({status}); waiting {pause:.1f} s",
                        account=account.name,
                        api=self.api,
                        status=answer.status,
                        pause=pause,
                    )
                    continue
                return SessionError(verdict.kind, verdict.text, pause=pause)
            if verdict.kind == outcomes.OK:
                # Only an accepted message ends the throttling: a refusal or a
                # 500 between two 429s must not bring the wait back to its floor.
                self._backoff(account.name).reset()
                report(_outcome(message, 250, self.accepted(answer), outcomes.OK))
                return None
            if verdict.account:
                return SessionError(verdict.kind, verdict.text, auth=True)
            report(_outcome(message, verdict.code, verdict.text, verdict.kind))
            if verdict.ends:
                return SessionError(verdict.kind, verdict.text, pause=verdict.pause)
            return None

    # -- throttling -------------------------------------------------------------------------

    def _backoff(self, account: str) -> Backoff:
        backoff = self._backoffs.get(account)
        if backoff is None:
            base = min(1.0, self.max_wait)
            backoff = self._backoffs[account] = Backoff(base, self.max_wait, self._random)
        return backoff

    def _throttled(self, account: str, asked: float | None) -> float:
        """Record the account's wait: the next backoff delay, longer if ``Retry-After`` says so.

        ``Retry-After`` is a floor, never the wait itself: an API answering
        ``Retry-After: 0`` to every request was asked again at once.
        """
        grown = self._backoff(account).next()
        pause = min(self.max_wait, max(asked, grown)) if asked is not None else grown
        self._notBefore[account] = max(
            self._notBefore.get(account, 0.0), self._clock.seconds() + pause
        )
        return pause

    async def _waitTurn(self, account: str) -> None:
        until = self._notBefore.get(account)
        if until is None:
            return
        delay = until - self._clock.seconds()
        if delay <= 0:
            del self._notBefore[account]
            return
        await task.deferLater(self._clock, delay, lambda: None)


def _outcome(
    message: OutboxMessage, code: int, text: str, kind: str, inDoubt: bool = False
) -> MessageOutcome:
    recipients = tuple(
        RecipientOutcome(address, code, text, kind, in_doubt=inDoubt)
        for address in message.recipients
    )
    return MessageOutcome(
        message.id, code, text, recipients, accepted=kind == outcomes.OK, in_doubt=inDoubt
    )
