"""Deliver received mail by running a command with the message on stdin.

The contract is the one mail delivery agents have used for decades (procmail,
maildrop, ``sendmail``'s ``|program``): exit 0 means the message is taken,
exit 75 (``EX_TEMPFAIL`` from ``sysexits.h``) means "not now, try again", and
anything else means the command will never take this message.

The command gets ``OAUTHMAIL_ACCOUNT`` and ``OAUTHMAIL_FOLDER`` in its
environment. Every other ``OAUTHMAIL_*`` variable of the daemon (such as
``OAUTHMAIL_KEY``, the token store's encryption key) is removed first, so no
secret of ours reaches the command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail import environment
from oauthmail.interfaces import ISink
from oauthmail.sinks.commit import BeforeCommit
from oauthmail.sinks.errors import (
    PermanentSinkError,
    SinkConfigurationError,
    TemporarySinkError,
    shorten,
)

EX_TEMPFAIL = 75
STDERR_KEPT = 4096  # bytes of the end of stderr kept for the error message


def childEnvironment(
    account: str, folder: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for one delivery: the allow-list of ``oauthmail.environment``, plus two.

    Never the daemon's whole environment: it holds the store key and the
    variables client secrets are read from.
    """
    return environment.childEnvironment(
        {"OAUTHMAIL_ACCOUNT": account, "OAUTHMAIL_FOLDER": folder}, base
    )


def lastLine(data: bytes) -> str:
    """The last non-empty line of ``data``, decoded leniently and shortened."""
    for line in reversed(data.splitlines()):
        text = line.decode("utf-8", "replace").strip()
        if text:
            return shorten(text)
    return ""


class _DeliveryProtocol(protocol.ProcessProtocol):
    """Feeds the message to stdin, keeps the tail of stderr, reports the exit."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.stderrTail = b""
        self.ended: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.message)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        """Output on stdout is not ours to interpret; drop it."""

    def errReceived(self, data: bytes) -> None:
        self.stderrTail = (self.stderrTail + data)[-STDERR_KEPT:]

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


def findExecutable(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The program ``argv`` runs, found as the sink will run it, or a clear error."""
    if not argv or not argv[0]:
        raise SinkConfigurationError("command sink: the command is empty")
    executable = shutil.which(argv[0], path=(environ or os.environ).get("PATH"))
    if executable is None:
        raise SinkConfigurationError(f"command sink: {argv[0]!r} is not an executable")
    return executable


@implementer(ISink)
class CommandSink:
    """Runs ``argv`` once per message, message on stdin.

    :param argv: the command and its arguments (no shell is involved).
    :param reactor: an ``IReactorProcess`` and ``IReactorTime`` provider.
    :param timeout: seconds before the command is killed (a temporary failure).
    :param environ: the base environment (``os.environ`` when not given).
    """

    def __init__(
        self,
        argv: Sequence[str],
        reactor,
        timeout: float = 60.0,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        argv = tuple(argv)
        self.argv = argv
        self.executable = findExecutable(argv, environ)
        self.name = f"command:{os.path.basename(argv[0])}"
        self._reactor = reactor
        self._timeout = timeout
        self._environ = environ

    def deliver(
        self, message: bytes, account: str, folder: str, beforeCommit: BeforeCommit = None
    ) -> defer.Deferred:
        """Run the command; fire with ``None`` when it exits 0.

        ``beforeCommit`` (see ``ISink``) is called before the command starts:
        once it runs, what it does with the message is its own.
        """
        return defer.ensureDeferred(self._deliver(message, account, folder, beforeCommit))

    async def _deliver(
        self,
        message: bytes,
        account: str,
        folder: str,
        beforeCommit: BeforeCommit = None,
    ) -> None:
        if not isinstance(message, bytes):
            raise PermanentSinkError(f"{self.name}: a message must be bytes")
        if beforeCommit is not None:
            beforeCommit()
        proto = _DeliveryProtocol(message)
        try:
            transport = self._reactor.spawnProcess(
                proto,
                self.executable,
                self.argv,
                env=childEnvironment(account, folder, self._environ),
            )
        except OSError as e:
            raise TemporarySinkError(
                f"{self.name}: cannot start: {e.strerror or type(e).__name__}"
            ) from None

        timedOut = []

        def onTimeout(result, timeout):
            timedOut.append(True)
            try:
                transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            transport.loseConnection()  # do not wait for grandchildren holding pipes
            return result

        ended = proto.ended
        ended.addTimeout(self._timeout, self._reactor, onTimeoutCancel=onTimeout)
        try:
            reason = await ended
        except defer.CancelledError:
            raise TemporarySinkError(
                f"{self.name}: no answer after {self._timeout:g}s; killed"
            ) from None
        self._judge(reason, lastLine(proto.stderrTail))

    def _judge(self, reason: BaseException, stderr: str) -> None:
        said = f": {stderr}" if stderr else ""
        if isinstance(reason, error.ProcessDone):
            return
        if isinstance(reason, error.ProcessTerminated):
            if reason.signal is not None:
                raise PermanentSinkError(f"{self.name}: killed by signal {reason.signal}{said}")
            if reason.exitCode == EX_TEMPFAIL:
                raise TemporarySinkError(f"{self.name}: exit {EX_TEMPFAIL} (try later){said}")
            raise PermanentSinkError(f"{self.name}: exit {reason.exitCode}{said}")
        raise PermanentSinkError(f"{self.name}: ended oddly ({type(reason).__name__}){said}")
