"""Tell a person that an account needs them (pizauth's ``notify`` idea).

When a refresh token dies the account stops working until somebody re-authorises it;
users of other tools noticed such outages days later. The operator configures a command
(``refresher.notify_command``); we run it with two extra arguments, the account name
and the reason, e.g. ``notify-send``, ``mail -s`` or a chat webhook script.

The child gets a minimal environment (``PATH``, ``HOME``, ``LANG``) so that nothing of
ours, the store key in ``OAUTHMAIL_KEY`` above all, reaches it; no token is ever in its
arguments. A failing or hanging command is logged and killed, never raised: a broken
notifier must not break token refresh.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IReactorProcess
from twisted.logger import Logger
from twisted.python.failure import Failure

from oauthmail.environment import childEnvironment
from oauthmail.text import cleanText

log = Logger()


class _Collector(protocol.ProcessProtocol):
    """Keeps the tail of the command's stderr and fires with the exit status."""

    def __init__(self, finished: defer.Deferred[tuple[int | None, bytes]]) -> None:
        self._finished = finished
        self._stderr = b""

    def outReceived(self, data: bytes) -> None:
        pass

    def errReceived(self, data: bytes) -> None:
        self._stderr = (self._stderr + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        code = reason.value.exitCode if reason.check(error.ProcessTerminated) else 0
        self._finished.callback((code, self._stderr))


class CommandNotifier:
    """Runs ``command + [account, reason]`` for each account that needs a person.

    ``reactor`` spawns the command and times it out (``IReactorProcess`` and
    ``IReactorTime``); it is always the caller's, never the global one.
    """

    def __init__(
        self,
        reactor: IReactorProcess,
        command: Sequence[str],
        *,
        timeout: float = 60.0,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._reactor = reactor
        self.command = tuple(command)
        self._timeout = timeout
        self._env = childEnvironment(base=environ)

    def __repr__(self) -> str:
        return f"<CommandNotifier {self.command[:1]}>"

    def notify(self, account: str, reason: str) -> defer.Deferred[None]:
        """Run the command; fire with ``None`` whatever happens (failures are logged)."""
        if not self.command:
            return defer.succeed(None)
        argv = [*self.command, account, cleanText(reason)]
        finished: defer.Deferred[tuple[int | None, bytes]] = defer.Deferred()
        try:
            transport = self._reactor.spawnProcess(
                _Collector(finished), argv[0], argv, env=self._env
            )
        except Exception as e:
            log.error(
                "notify command {command} could not start for {account}: {why}",
                command=argv[0],
                account=account,
                why=cleanText(e),
            )
            return defer.succeed(None)

        def timedOut(result: object, timeout: float) -> tuple[None, bytes]:
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            return (None, b"timed out")

        finished.addTimeout(self._timeout, self._reactor, onTimeoutCancel=timedOut)

        def report(outcome: tuple[int | None, bytes]) -> None:
            code, stderr = outcome
            if code == 0:
                log.info("notified about {account}", account=account)
                return
            log.error(
                "notify command {command} failed for {account} (exit {code}): {stderr}",
                command=argv[0],
                account=account,
                code=code,
                stderr=cleanText(stderr.decode("utf-8", "replace")),
            )

        return finished.addCallback(report)


class RecordingNotifier:
    """A notifier for tests and embedding: remembers ``(account, reason)`` pairs."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def notify(self, account: str, reason: str) -> defer.Deferred[None]:
        self.calls.append((account, reason))
        return defer.succeed(None)
