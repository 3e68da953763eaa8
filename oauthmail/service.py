"""The oauthmail service tree: what ``twistd oauthmail`` runs and what a ``.tac`` embeds.

Start-up order, and why:

1. **Ports first** (``privilegedStartService``): the console and the
   submission server are bound before anything else, so a port that is taken
   stops the daemon with one line naming the configuration key
   (:class:`~oauthmail.listeners.StartupError`) before any mailbox is touched.
2. **Stores**: opened (and the key checked) before any part that needs them.
3. **Account health** (:mod:`oauthmail.health`): one owner of every account's
   state; each part (tokens, each IMAP folder, SMTP) reports to it.
4. **Tokens, watchers, queue**, then the ports' protocols are attached and the
   control socket listens.

An account whose part cannot be built (a sink command that does not exist,
say) reports that part as ``error`` with the reason; the other accounts start
as usual. A new authorisation wakes the account's watchers and queue at once.

**Several nodes** (a shared PostgreSQL store, :attr:`Stores.shared
<oauthmail.db.open.Stores.shared>`): a folder is watched only while this node
holds its lease. The watchers are built for every configured folder but
started by the :class:`~oauthmail.cluster.keeper.LeaseKeeper` (``cluster:``
timings), each folder becoming a part of its account's health while it is
held here; the queue tends its claims every heartbeat. One node on SQLite
watches every folder at once, as it always did.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer, threads
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger

from oauthmail.config import AccountConfig, Config
from oauthmail.db.open import Stores
from oauthmail.health import PART_TOKENS, AccountHealth, imapPart
from oauthmail.interfaces import IClosable, ITokenStore
from oauthmail.listeners import LateFactory, StartupError, bindEarly
from oauthmail.logs import writeLinesWith
from oauthmail.text import describeFailure

__all__ = ["OAuthMailService", "StartupError"]


def accountParts(account: AccountConfig, leased: bool = False) -> list[str]:
    """The parts that must report before an account is ok: its tokens and watched folders.

    SMTP is not among them: it has nothing to say until there is mail to
    send, and then it reports (``ok``, ``retrying``, ``error``, ``paused``).
    Nor, with ``leased`` folders, are the folders: each becomes a part while
    this node holds its lease.
    """
    parts = [PART_TOKENS]
    if account.imap is not None and not leased:
        parts += [imapPart(folder.name) for folder in account.imap.folders]
    return parts


class OAuthMailService(MultiService):
    """Everything oauthmail runs for one configuration.

    Child services are added once the store is open; ``whenReady`` lets
    callers (tests, embedding applications) wait for that moment.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any, stores: Stores | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.stores = stores
        self.store: ITokenStore | None = None if stores is None else stores.tokens
        self.health: AccountHealth | None = None
        self.console_port: IListeningPort | None = None
        self.transport: Any = None
        self.tokens: Any = None
        self.refresher: Any = None
        self.watchers: dict[str, Any] = {}
        #: One gate for every IMAP watcher: sessions are opened a few at a time.
        self._openingGate: Any = None
        #: The node's lease keeper (several nodes on one database), else None.
        self.keeper: Any = None
        self.queue: Any = None
        self.sender: Any = None
        self.submission_port: IListeningPort | None = None
        self.control_port: IListeningPort | None = None
        self.authorizer: Any = None
        #: The message log's writer, metrics and notifications (:mod:`oauthmail.operations`).
        self.operations: Any = None
        self._consoleFactory: LateFactory | None = None
        self._submissionFactory: LateFactory | None = None
        self._sinks: list[Any] = []
        self._ready: list[defer.Deferred] = []
        self._is_ready = False
        self._starting: defer.Deferred | None = None
        self._storeLock: Any = None

    def whenReady(self) -> defer.Deferred:
        """Fire once the store is open and the console listens."""
        if self._is_ready:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred()
        self._ready.append(d)
        return d

    # -- start-up -------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """Bind the listening ports; :class:`StartupError` (one line) if one is taken."""
        self.bindPorts()
        super().privilegedStartService()

    def bindPorts(self) -> None:
        """Bind the console's and the submission server's ports now (idempotent)."""
        if self._consoleFactory is not None:
            return
        web = self.config.web
        self.console_port, self._consoleFactory = bindEarly(
            self.reactor, "web.port", web.bind, web.port
        )
        submission = self.config.submission
        if submission is not None:
            try:
                self.submission_port, self._submissionFactory = bindEarly(
                    self.reactor, "submission.port", submission.bind, submission.port
                )
            except StartupError:
                port, self.console_port, self._consoleFactory = self.console_port, None, None
                if port is not None:
                    port.stopListening()
                raise

    def startService(self) -> None:
        super().startService()
        writeLinesWith(self.reactor)  # twistd's log lines (--logger oauthmail.logs.*) batch now
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._startFailed)

    async def _start(self) -> None:
        self.bindPorts()  # already done under twistd; an embedding may not have called it
        if self.stores is None:
            from oauthmail.app import openConfiguredStores
            from oauthmail.db.open import daemonLock

            lock = daemonLock(self.config.store)  # one daemon per SQLite store
            if lock is not None:
                pool = self.reactor.getThreadPool()
                await threads.deferToThreadPool(self.reactor, pool, lock.acquire)
                self._storeLock = lock
            self.stores = await openConfiguredStores(self.config, self.reactor)
            self.store = self.stores.tokens
        else:
            await self.stores.tokens.open()
        assert self.store is not None
        await self._startHealth()
        self._startOperations()
        self._startTokens()
        for account in self.config.accounts:
            if account.configured and account.imap is not None:
                await self._startWatcher(account)
        if self.clustered:
            self._startKeeper()
        await self._startQueue()
        if self._submissionFactory is not None:
            self._attachSubmission()
        self._attachConsole()
        self._listenControl()
        self.log.info(
            "oauthmail ready: {count} account(s), console on http://{bind}:{port}/",
            count=len(self.config.accounts),
            bind=self.config.web.bind,
            port=self.console_port.getHost().port if self.console_port else "?",
        )
        self._is_ready = True
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(self)

    @property
    def clustered(self) -> bool:
        """Several nodes may share the store: folders are watched under leases."""
        return self.stores is not None and self.stores.shared and self.stores.leases is not None

    async def _startHealth(self) -> None:
        """One owner of account state, seeded from what the store remembers."""
        assert self.store is not None
        self.health = health = AccountHealth(self.store, self.reactor)
        for account in self.config.accounts:
            await self.store.ensureAccount(account.name, account.profile.kind)
        for record in await self.store.listAccounts():
            health.restore(record.id, record.state, record.last_error)
        for account in self.config.accounts:
            if account.configured:
                health.declare(account.name, accountParts(account, leased=self.clustered))

    def _startOperations(self) -> None:
        from oauthmail.logs import checkFormat
        from oauthmail.operations import buildOperations

        assert self.stores is not None
        self.operations = buildOperations(self.config, self.stores, self.reactor, self.health)
        self.operations.sweeper.setServiceParent(self)
        checkFormat(self.config.log.format)

    def _startTokens(self) -> None:
        from oauthmail.app import buildTokenParts
        from oauthmail.tokens.refresher import TokenRefresher

        assert self.stores is not None
        refresher = self.config.refresher
        parts = buildTokenParts(
            self.config, self.stores, self.reactor, health=self.health, notify=True
        )
        self.transport, self.tokens = parts.transport, parts.tokens
        self.tokens.onAuthorised(self._authorised)
        self.refresher = TokenRefresher(
            self.tokens,
            self.store,
            [a for a in self.config.accounts if a.configured],
            self.reactor,
            interval=refresher.interval,
            margin=refresher.margin,
            concurrency=refresher.concurrency,
            observer=self.operations.metrics.refreshed,
        )
        self.refresher.setServiceParent(self)

    def _authorised(self, account: str) -> None:
        """A person just authorised ``account``: its watchers and its mail go now."""
        watcher = self.watchers.get(account)
        if watcher is not None:
            watcher.wake()
        if self.queue is not None:
            d = self.queue.retryNow(account)
            d.addErrback(
                lambda f: self.log.warn(
                    "{account} authorised, but its outbound mail could not be woken: {why}",
                    account=account,
                    why=describeFailure(f),
                )
            )

    async def _startWatcher(self, account: AccountConfig) -> None:
        from oauthmail.imap.limits import IMAPLimits
        from oauthmail.imap.watcher import AccountWatcher
        from oauthmail.imap.watcher.gate import OpeningGate
        from oauthmail.sinks.factory import makeSink

        assert account.imap is not None and self.stores is not None
        if self._openingGate is None:
            self._openingGate = OpeningGate()
        try:
            sink = makeSink(account.imap.sink, self.reactor)
            watcher = AccountWatcher(
                account,
                self.tokens,
                self.stores.ledger,
                sink,
                self.reactor,
                health=self.health,
                limits=IMAPLimits(maxMessageSize=account.imap.max_message_size),
                gate=self._openingGate,
                leased=self.clustered,
                recorder=self.operations.recorder,
            )
        except Exception as e:
            reason = f"cannot receive mail: {describeFailure(e)}"
            self.log.error("account {account}: {reason}", account=account.name, reason=reason)
            assert self.health is not None
            for folder in account.imap.folders:
                await self.health.report(account.name, imapPart(folder.name), "error", reason)
            return
        self._sinks.append(sink)
        self.watchers[account.name] = watcher
        watcher.setServiceParent(self)

    def _startKeeper(self) -> None:
        """This node's share of the folder leases: it starts and stops the folder watchers."""
        from oauthmail.cluster.folders import LeasedFolders
        from oauthmail.cluster.keeper import LeaseKeeper

        assert self.stores is not None and self.stores.leases is not None
        cluster = self.config.cluster
        folders = [
            (name, watcher.folder.name)
            for name, account in self.watchers.items()
            for watcher in account.folders
        ]
        self.keeper = LeaseKeeper(
            self.stores.leases,
            cluster.node,
            folders,
            LeasedFolders(self.watchers, self.health),
            self.reactor,
            renew=cluster.lease_renew,
            expiry=cluster.lease_expiry,
        )
        self.keeper.setServiceParent(self)
        self.log.info(
            "node {node} shares the store's folders with the other nodes ({count} configured)",
            node=cluster.node,
            count=len(folders),
        )

    async def _startQueue(self) -> None:
        from oauthmail.imap.sentfolder import IMAPSentFolder
        from oauthmail.metrics import MeteredSender
        from oauthmail.smtp.queue.sentsearch import sentSearches
        from oauthmail.smtp.queue.service import OutboundQueue
        from oauthmail.transports.dispatch import buildSender

        assert self.stores is not None
        sending = {a.name: a for a in self.config.accounts if a.configured and a.smtp is not None}
        # Sent is searched only where 'oauthmail test --send-to-self' proved it works.
        searches = await sentSearches(self.stores.tokens, sending)
        for decision in searches.values():
            self.log.info("{why}", why=decision.why)
        looking = {name: sending[name] for name, d in searches.items() if d.searches}
        queue = self.config.queue
        # SMTP, Graph or the Gmail API, per account (smtp.transport).
        self.sender = MeteredSender(
            buildSender(self.reactor, sending.values()), self.operations.metrics, self.reactor
        )
        self.queue = OutboundQueue(
            self.stores.outbox,
            self.tokens,
            sending,
            self.reactor,
            health=self.health,
            sender=self.sender,
            max_age=queue.max_age,
            backoff_base=queue.retry_min,
            backoff_max=queue.retry_max,
            bounce=queue.bounce,
            sent_folder=IMAPSentFolder(self.reactor, looking, self.tokens) if looking else None,
            sent_check_delay=queue.sent_check_delay,
            sent_check_give_up=queue.sent_check_give_up,
            sent_search=looking,
            claim_tend=self.config.cluster.lease_renew if self.clustered else None,
            recorder=self.operations.recorder,
        )
        self.queue.setServiceParent(self)
        self.operations.attachQueue(self.queue, self.config)

    def _attachSubmission(self) -> None:
        from oauthmail.smtp.submission import (
            SenderDirectory,
            buildSubmissionFactory,
            buildSubmissionPortal,
            limitsFromConfig,
        )

        config = self.config.submission
        assert config is not None and self._submissionFactory is not None
        senders = SenderDirectory.fromAccounts(
            a for a in self.config.accounts if a.configured and a.smtp is not None
        )
        portal = buildSubmissionPortal(config, senders, self.queue, reactor=self.reactor)
        self._submissionFactory.attach(
            buildSubmissionFactory(self.reactor, config, portal, limitsFromConfig(config))
        )

    def _attachConsole(self) -> None:
        from oauthmail.tokens.authorize import Authorizer
        from oauthmail.web.console import ConsoleResource, LiveParts
        from oauthmail.web.site import ConsoleSite

        assert self._consoleFactory is not None
        self.authorizer = Authorizer(self.tokens, self.reactor)
        site = ConsoleSite(
            ConsoleResource(
                self.config,
                self.store,
                clock=self.reactor,
                live=LiveParts(
                    self.watchers,
                    self.queue,
                    self.health,
                    cluster=self.keeper,
                    leases=self.stores.leases if self.clustered and self.stores else None,
                    messages=self.stores.messages if self.stores is not None else None,
                    outbox=self.stores.outbox if self.stores is not None else None,
                    metrics=self.operations.metrics if self.operations is not None else None,
                ),
                authorizer=self.authorizer,
            )
        )
        self._consoleFactory.attach(site)

    def _listenControl(self) -> None:
        from oauthmail.control import listenControl

        path = self.config.queue.control_socket
        try:
            self.control_port = listenControl(self.reactor, path, self.queue.wake)
        except Exception as e:  # oauthmail send then waits for the poll: say so, go on
            self.log.warn(
                "no control socket at {path} ({why}): 'oauthmail send' cannot wake the queue;"
                " its mail leaves at the next poll",
                path=path,
                why=describeFailure(e),
            )

    def _startFailed(self, failure: Any) -> None:
        self.log.critical("oauthmail could not start: {reason}", reason=describeFailure(failure))
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(failure)
        clock: IReactorTime = self.reactor
        if getattr(self.reactor, "running", False):
            clock.callLater(0, self.reactor.stop)

    # -- shutting down ----------------------------------------------------------------------

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        for name in ("control_port", "submission_port", "console_port"):
            port = getattr(self, name)
            if port is not None:
                setattr(self, name, None)
                await port.stopListening()
        self._consoleFactory = self._submissionFactory = None
        if self.authorizer is not None:
            self.authorizer.stop()
        for sink in self._sinks:
            if IClosable.providedBy(sink):
                await defer.maybeDeferred(sink.close)
        self._sinks = []
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self.sender is not None:
            await self.sender.close()
            self.sender = None
        if self.health is not None:
            await self.health.whenWritten()
        if self.operations is not None:
            await self.operations.close()
        if self.stores is not None:
            await self.stores.close()
        if self._storeLock is not None:
            self._storeLock.release()
            self._storeLock = None

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: defer.ensureDeferred(self._stop()))
        d.addBoth(_linesAtOnce)
        return d


def _linesAtOnce(result: object) -> object:
    """Stopped: twistd's log lines (the shutdown's too) are written at once again."""
    writeLinesWith(None)
    return result
