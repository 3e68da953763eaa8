"""One folder of one account, watched over its own connection, forever, until stopped.

A folder watcher is an explicit state machine (``state`` is shown on the
console)::

    connecting → authenticating → selecting → syncing → waiting ─┐
        ▲                                        ▲               │ EXISTS / timer
        │ backoff (growing, capped, jittered)    └───────────────┘
        └── connection lost, BYE, protocol errors;  "error": the token was refused twice

Rules a reader must not break:

* the backoff only shrinks back after a session has **completed a sync round
  and stayed up** ``healthyAfter`` seconds (60 by default): a server that
  accepts and then drops us (after SELECT, after one batch) gets an ever
  longer wait, never a reset. A refused token costs at most one forced
  refresh per session, so refreshes follow the same backoff;
* the folder's condition (its part of the account's health, see
  :mod:`oauthmail.health`) is reported through :meth:`FolderWatcher.reportCondition`
  only: ``ok`` once a folder is selected, ``retrying`` after a failed session,
  ``error`` when the server refused a freshly refreshed token;
* one session's failure is one log line (:class:`~.report.FolderReport`);
* with an :class:`~.gate.OpeningGate` (shared by the daemon's watchers) a
  session is opened only in a slot of the gate, held from the connect until
  the folder is selected or the attempt failed: no thundering herd at start
  or after a server restart.
* under a lease (:attr:`FolderWatcher.lease`, several nodes on one database)
  every ledger write is fenced, every step on the server confirmed
  (:mod:`.lease`), and so is the sink's commit (:mod:`.deliver`); a lease
  found gone ends the loop at once (state ``lease lost``): the folder is
  another node's now.

The round itself is :mod:`.sync`, the waiting :mod:`.wait`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from oauthmail.cluster.interfaces import IFolderLease
from oauthmail.cluster.records import LeaseLost
from oauthmail.config import AccountConfig, FolderConfig
from oauthmail.db.errors import StaleLease
from oauthmail.health import imapPart
from oauthmail.imap.auth import authenticateRefreshingOnce
from oauthmail.imap.connect import connectIMAP
from oauthmail.imap.errors import IMAPAuthenticationError, IMAPProtocolError
from oauthmail.imap.limits import IMAPLimits
from oauthmail.imap.watcher.deliver import BatchDelivery
from oauthmail.imap.watcher.dispose import Disposer
from oauthmail.imap.watcher.gate import GateTicket, OpeningGate
from oauthmail.imap.watcher.lease import FencedLedger
from oauthmail.imap.watcher.report import FolderReport
from oauthmail.imap.watcher.sync import FolderSync
from oauthmail.imap.watcher.wait import MailWaiter, Stopped, sleep
from oauthmail.interfaces import IAccountHealth, IDeliveryLedger, IIMAPSession, ISink, ITokenSource
from oauthmail.messagelog.interfaces import IMessageRecorder
from oauthmail.retry import Backoff
from oauthmail.text import cleanText, describeFailure
from oauthmail.tls import TLSCertificateError
from oauthmail.tokens.errors import AccountNotAuthorised

__all__ = ["FolderWatcher", "TokenRejected"]

_log = Logger()

#: A fetch batch holds at most this many bytes of messages (and at least one message).
DEFAULT_BATCH_BYTES = 32 * 1024 * 1024


def refusedTokenAdvice(account: AccountConfig) -> str:
    """What to check when a server refuses a token the provider just issued."""
    user = account.sasl_user
    advice = (
        f"check that the tokens belong to {user} (authorise again signed in as {user}),"
        " that IMAP is enabled for the mailbox, and that the profile's scopes allow IMAP"
    )
    if account.profile.kind == "microsoft":
        advice += (
            " (Exchange: IMAP.AccessAsUser.All, and Set-CASMailbox -ImapEnabled $true;"
            " app-only tokens need IMAP.AccessAsApp and a service principal with"
            " mailbox permission)"
        )
    return advice


class TokenRejected(Exception):  # noqa: N818 - reads as what happened
    """The server refused the token, and again after a forced refresh."""


class _PolicyBackoff:
    """A :class:`~oauthmail.retry.Backoff` look-alike over ``policy(attempt)`` (tests, tools)."""

    def __init__(self, policy: Callable[[int], float]) -> None:
        self.policy = policy
        self.attempts = 0

    def next(self) -> float:
        self.attempts += 1
        return self.policy(self.attempts - 1)

    def reset(self) -> None:
        self.attempts = 0


class FolderWatcher:
    """Receives one folder of one account over one connection; see the module docstring.

    ``connect(reactor, server, timeout, limits=...)`` returns a Deferred
    :class:`~oauthmail.interfaces.IIMAPSession` (the
    :func:`~oauthmail.imap.connect.connectIMAP` signature; tests pass fakes).
    ``retryPolicy(attempt)`` replaces the jittered backoff with fixed delays
    (tests); ``limits`` bounds what the server may make us hold (its
    ``maxMessageSize`` is the account's maximum message size); ``gate``
    spaces the openings of sessions out (see the module docstring); ``recorder``
    takes the message log's entries. ``lease`` is set (by the account watcher)
    before each start when the folder is watched under a lease, ``None`` when
    the node is alone.
    """

    def __init__(
        self,
        account: AccountConfig,
        folder: FolderConfig,
        tokens: ITokenSource,
        ledger: IDeliveryLedger,
        sink: ISink,
        reactor: IReactorTime,
        health: IAccountHealth | None = None,
        connect: Callable[..., defer.Deferred[IIMAPSession]] = connectIMAP,
        retryPolicy: Callable[[int], float] | None = None,
        connectTimeout: float = 30.0,
        accountLock: defer.DeferredLock | None = None,
        limits: IMAPLimits | None = None,
        healthyAfter: float = 60.0,
        batchBytes: int = DEFAULT_BATCH_BYTES,
        backoffBase: float = 1.0,
        backoffCap: float = 300.0,
        gate: OpeningGate | None = None,
        recorder: IMessageRecorder | None = None,
    ) -> None:
        assert account.imap is not None and account.profile.imap is not None
        self.account = account
        self.folder = folder
        self.tokens = tokens
        self.reactor = reactor
        self.health = health
        self.part = imapPart(folder.name)
        self._connect = connect
        self.connectTimeout = connectTimeout
        self.limits = limits or IMAPLimits()
        self.healthyAfter = healthyAfter
        self.imap = account.imap
        self.server = account.profile.imap
        #: How often an unauthorised account looks again for tokens (no server traffic).
        self.unauthorisedRecheck = 30.0
        if retryPolicy is not None:
            self.backoff: Backoff | _PolicyBackoff = _PolicyBackoff(retryPolicy)
            self.retryBackoff: Backoff | _PolicyBackoff = _PolicyBackoff(retryPolicy)
        else:
            self.backoff = Backoff(backoffBase, backoffCap)
            self.retryBackoff = Backoff(backoffBase, backoffCap)
        self.report = FolderReport(
            f"{account.name}/{folder.name}", folder.name, f"{self.server.host}:{self.server.port}"
        )
        #: The lease this folder is watched under (None: one node alone, no lease).
        self.lease: IFolderLease | None = None
        ledger = FencedLedger(ledger, lambda: self.lease)
        disposer = Disposer(account.name, folder, ledger, self.report, self._confirmLease)
        keep = folder.disposition == "keep"
        delivery = BatchDelivery(
            account.name,
            folder.name,
            ledger,
            sink,
            reactor,
            self.report,
            keep,
            recorder,
            lease=lambda: self.lease,
        )
        self.sync = FolderSync(
            account,
            folder,
            ledger,
            delivery,
            disposer,
            self.report,
            accountLock if accountLock is not None else defer.DeferredLock(),
            self.limits.maxMessageSize,
            batchBytes,
            self.retryBackoff.next,
            self.retryBackoff.reset,
            self._checkStopping,
        )
        self.ledger = ledger
        self.waiter = MailWaiter(reactor, account.imap)
        #: The session in use (None between sessions).
        self.client: IIMAPSession | None = None
        self._stopping = False
        self._running: defer.Deferred[None] | None = None
        self._sleep: defer.Deferred[None] | None = None
        self.gate = gate
        self._ticket: GateTicket | None = None

    @property
    def name(self) -> str:
        return self.report.name

    # The console counters, as attributes for the callers that read them so.
    @property
    def state(self) -> str:
        return self.report.state

    @property
    def delivered(self) -> int:
        return self.report.delivered

    @property
    def failedPermanent(self) -> int:
        return self.report.failedPermanent

    @property
    def lastError(self) -> str | None:
        return self.report.lastError

    @property
    def sessions(self) -> int:
        return self.report.sessions

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Start watching (idempotent)."""
        if self._running is not None:
            return
        self._stopping = False
        self._running = defer.ensureDeferred(self._run())
        self._running.addErrback(
            lambda f: _log.failure("folder watcher {name} crashed", f, name=self.name)
        )

    def stop(self) -> defer.Deferred[None]:
        """Stop: end the connection and any wait; fire once the loop has ended."""
        self._stopping = True
        running, self._running = self._running, None
        self.waiter.cancel()
        if self._sleep is not None and not self._sleep.called:
            self._sleep.cancel()
        if self._ticket is not None:
            self._ticket.entered.cancel()  # waiting for a slot: stop waiting
        if self.client is not None:
            self.client.close()
        if running is None:
            return defer.succeed(None)
        return running

    def wake(self) -> None:
        """What kept us waiting is gone (a new authorisation): try now, from a fresh backoff.

        Ends a backoff sleep or the recheck of an unauthorised account; a
        session that runs is not disturbed.
        """
        self.backoff.reset()
        sleeping = self._sleep
        if sleeping is not None and not sleeping.called:
            sleeping.callback(None)

    def status(self) -> dict[str, Any]:
        """What the console shows for this folder (and the epoch of its lease, if any)."""
        status = self.report.asDict()
        status["lease_epoch"] = None if self.lease is None else self.lease.fence.epoch
        return status

    def _confirmLease(self) -> None:
        if self.lease is not None:
            self.lease.confirm()

    # -- the outer loop: sessions and backoff --------------------------------------------

    async def _run(self) -> None:
        report = self.report
        while not self._stopping:
            try:
                await self._session()
            except Stopped:
                break
            except (LeaseLost, StaleLease) as e:
                self._leaseLost(cleanText(e))
                break
            except defer.CancelledError:
                if self._stopping:
                    break
                report.error("cancelled")
            except AccountNotAuthorised as e:
                # Nothing a reconnect can fix: a person must authorise the account.
                # Say so once, then look again now and then (no server round trips).
                if report.lastError != str(e):
                    report.error(str(e))
                report.state = "unauthorised"
                try:
                    await self._sleepFor(self.unauthorisedRecheck)
                except defer.CancelledError:
                    break
                continue
            except TokenRejected:
                if self._stopping:
                    break  # reported as "error" where it was raised
            except TLSCertificateError as e:
                if self._stopping:
                    break
                # Nothing a retry fixes by itself: a person must look (name, CA, expiry).
                await self._failed(
                    str(e),
                    "error",
                    "check the server's certificate, the server_name and ca_file settings",
                )
            except IMAPProtocolError as e:
                if self._stopping:
                    break
                await self._failed(f"the server broke the IMAP protocol: {e}")
            except (ConnectionDone, ConnectionLost) as e:
                if self._stopping:
                    break
                how = "closed" if isinstance(e, ConnectionDone) else "lost"
                why = f" ({cleanText(e.args[0])})" if e.args and isinstance(e.args[0], str) else ""
                await self._failed(f"the connection was {how} while {report.state}{why}")
            except ConnectError as e:  # refused, unreachable, no such host, timed out
                if self._stopping:
                    break
                await self._failed(f"cannot connect to {report.where}: {describeFailure(e)}")
            except Exception as e:  # every failure ends in a reconnect, never a crash
                if self._stopping:
                    break
                await self._failed(describeFailure(e))
            if self._stopping:
                break
            report.state = "backoff"
            try:
                await self._sleepFor(self.backoff.next())
            except defer.CancelledError:
                break
        report.state = "stopped"

    def _provedHealthy(self) -> None:
        self.backoff.reset()
        self.report.provedHealthy()

    def _leaseLost(self, why: str) -> None:
        """The folder is no longer ours to watch: say so once and end the loop."""
        self.report.notice(f"stopped watching: {why}")
        if self.lease is not None:
            self.lease.lost(why)

    async def _failed(self, text: str, state: str = "retrying", advice: str | None = None) -> None:
        """A session failed and will be retried after the backoff: log it once, report it."""
        self.report.error(text)
        await self.reportCondition(state, text, advice)

    def _sleepFor(self, seconds: float) -> defer.Deferred[None]:
        self._sleep = sleep(self.reactor, seconds)
        return self._sleep

    def _checkStopping(self) -> None:
        if self._stopping:
            raise Stopped()

    async def _session(self) -> None:
        # Ask for a token before opening a connection: an account that is not
        # authorised (or needs a person) never bothers the server.
        report = self.report
        report.state = "connecting"
        token = await self.tokens.accessToken(self.account.name)
        self._checkStopping()
        if self.gate is not None:
            self._ticket = self.gate.enter()
            try:
                await self._ticket.entered
            except BaseException:
                self._leaveGate()
                raise
        try:
            client = await self._connect(
                self.reactor, self.server, self.connectTimeout, limits=self.limits
            )
        except BaseException:
            self._leaveGate()
            raise
        self.client = client
        report.sessions += 1
        started = self.reactor.seconds()
        healthy: IDelayedCall | None = None
        try:
            self._checkStopping()
            report.state = "authenticating"
            await self._authenticate(client, token)
            report.loggedIn(self.account.sasl_user)
            self._checkStopping()
            # Authenticating asked CAPABILITY again (they change once authenticated).
            caps = client.capabilities
            if caps is None:
                caps = await client.capability()
            report.state = "selecting"
            info = await client.selectFolder(self.folder.name)
            self._leaveGate()
            report.lastError = None
            await self.reportCondition("ok", None)
            state: tuple[int, int] | None = await self._noteUIDValidity(info.uidvalidity)
            while True:
                self._checkStopping()
                report.state = "syncing"
                retry = await self.sync.round(client, info.uidvalidity, caps, state)
                state = None  # later rounds read it: the ledger moved on
                report.alert = client.lastAlert
                if healthy is None:
                    # A completed round: the session proves healthy once it also stays up.
                    wait = max(0.0, started + self.healthyAfter - self.reactor.seconds())
                    healthy = self.reactor.callLater(wait, self._provedHealthy)
                self._checkStopping()
                report.state = "waiting"
                report.idling = self.imap.idle and b"IDLE" in caps
                await self.waiter.wait(client, caps, retry)
        finally:
            self._leaveGate()
            report.idling = False
            if healthy is not None and healthy.active():
                healthy.cancel()
            self.client = None
            client.close()

    def _leaveGate(self) -> None:
        """Give the opening slot back, if this session holds one (any number of calls)."""
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.leave()

    # -- authentication and the account's state ---------------------------------------------

    async def _authenticate(self, client: IIMAPSession, token: Any) -> None:
        host = self.server.server_name or self.server.host
        try:
            await authenticateRefreshingOnce(
                client,
                self.tokens,
                self.account.name,
                self.imap.mechanism,
                self.account.sasl_user,
                token,
                host,
                self.server.port,
                f"IMAP {self.name}",
                providerKind=self.account.profile.kind,
            )
        except IMAPAuthenticationError as e:
            if not e.token_rejected:
                raise
            message = f"the server refused a freshly refreshed token: {e}"
            self.report.error(message)
            await self.reportCondition("error", message, refusedTokenAdvice(self.account))
            raise TokenRejected(message) from None

    def reportCondition(
        self, state: str, error: str | None, advice: str | None = None
    ) -> defer.Deferred[None]:
        """The ONE place this watcher reports its folder's condition (its part of the account)."""
        if self.health is None:
            return defer.succeed(None)
        return self.health.report(self.account.name, self.part, state, error, advice)

    async def _noteUIDValidity(self, uidvalidity: int) -> tuple[int, int]:
        """Start the folder's ledger state afresh if UIDVALIDITY changed; return the state."""
        account, folder = self.account.name, self.folder.name
        state = await self.ledger.folderState(account, folder)
        if state is None or state[0] != uidvalidity:
            if state is not None:
                self.report.notice(
                    f"UIDVALIDITY changed from {state[0]} to {uidvalidity}; messages are"
                    " matched by content so none is delivered twice"
                )
            await self.ledger.setFolderState(account, folder, uidvalidity, 0)
            return (uidvalidity, 0)
        return state
