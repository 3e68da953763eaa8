"""The oauthmail service tree: what ``twistd oauthmail`` runs and what a ``.tac`` embeds.

``OAuthMailService`` owns the token store and starts the parts that need it
(token source and refresher, one IMAP watcher per receiving account, the web
console) only once the store is open, so that nothing ever runs against a
store whose key was not checked. An account whose part cannot be built (a
sink command that does not exist, say) is marked ``error`` with the reason;
the other accounts start as usual.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger

from oauthmail.config import Config
from oauthmail.db.open import Stores
from oauthmail.interfaces import ITokenStore
from oauthmail.text import describeFailure


class OAuthMailService(MultiService):
    """Everything oauthmail runs for one configuration.

    Child services are added once the store is open; ``whenReady`` lets
    callers (tests, embedding applications) wait for that moment.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        stores: Stores | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.config = config
        self.reactor = reactor
        self.stores = stores
        self.store: ITokenStore | None = None if stores is None else stores.tokens
        self.console_port = None
        self.transport: Any = None
        self.tokens: Any = None
        self.refresher: Any = None
        self.watchers: dict[str, Any] = {}
        self.queue: Any = None
        self.submission_port: Any = None
        self.authorizer: Any = None
        self._sinks: list[Any] = []
        self._ready: list[defer.Deferred] = []
        self._is_ready = False
        self._starting: defer.Deferred | None = None

    def whenReady(self) -> defer.Deferred:
        """Fire once the store is open and the console listens."""
        if self._is_ready:
            return defer.succeed(self)
        d: defer.Deferred = defer.Deferred()
        self._ready.append(d)
        return d

    def startService(self) -> None:
        super().startService()
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._startFailed)

    async def _start(self) -> None:
        if self.stores is None:
            from oauthmail.db.open import openStores

            self.stores = await openStores(
                self.config.store, clock=self.reactor, reactor=self.reactor
            )
            self.store = self.stores.tokens
        else:
            await self.stores.tokens.open()
        for account in self.config.accounts:
            await self.store.ensureAccount(account.name, account.profile.kind)
        self._startTokens()
        for account in self.config.accounts:
            if account.configured and account.imap is not None:
                await self._startWatcher(account)
        self._startQueue()
        if self.config.submission is not None:
            await self._listenSubmission()
        self._listenConsole()
        self.log.info(
            "oauthmail ready: {count} account(s), console on http://{bind}:{port}/",
            count=len(self.config.accounts),
            bind=self.config.web.bind,
            port=self.console_port.getHost().port,
        )
        self._is_ready = True
        ready, self._ready = self._ready, []
        for d in ready:
            d.callback(self)

    def _startTokens(self) -> None:
        from oauthmail.tokens.http import AgentTransport
        from oauthmail.tokens.notify import CommandNotifier
        from oauthmail.tokens.refresher import TokenRefresher
        from oauthmail.tokens.source import TokenSource

        refresher = self.config.refresher
        configured = [a for a in self.config.accounts if a.configured]
        # Keep as many connections to the token endpoint as refreshes may run at once.
        self.transport = AgentTransport(
            self.reactor, maxPersistentPerHost=max(16, refresher.concurrency)
        )
        notifier = (
            CommandNotifier(self.reactor, refresher.notify_command)
            if refresher.notify_command
            else None
        )
        self.tokens = TokenSource(
            self.store,
            {a.name: a for a in configured},
            self.transport,
            self.reactor,
            margin=refresher.margin,
            notifier=notifier,
        )
        self.refresher = TokenRefresher(
            self.tokens,
            self.store,
            configured,
            self.reactor,
            interval=refresher.interval,
            margin=refresher.margin,
            concurrency=refresher.concurrency,
        )
        self.refresher.setServiceParent(self)

    async def _startWatcher(self, account: Any) -> None:
        from oauthmail.imap.watcher import AccountWatcher
        from oauthmail.sinks.factory import makeSink

        try:
            sink = makeSink(account.imap.sink, self.reactor)
            ledger = self.stores.ledger
            watcher = AccountWatcher(account, self.tokens, ledger, sink, self.reactor, self.store)
        except Exception as e:
            reason = f"cannot receive mail: {describeFailure(e)}"
            self.log.error("account {account}: {reason}", account=account.name, reason=reason)
            await self.store.setAccountState(account.name, "error", reason)
            return
        self._sinks.append(sink)
        self.watchers[account.name] = watcher
        watcher.setServiceParent(self)

    def _startQueue(self) -> None:
        from oauthmail.imap.sentfolder import IMAPSentFolder
        from oauthmail.smtp.queue.service import OutboundQueue

        sending = {a.name: a for a in self.config.accounts if a.configured and a.smtp is not None}
        looking = {
            name: a
            for name, a in sending.items()
            if a.smtp is not None and a.smtp.sent_folder != "none"
        }
        queue = self.config.queue
        self.queue = OutboundQueue(
            self.stores.outbox,
            self.tokens,
            sending,
            self.reactor,
            store=self.store,
            max_age=queue.max_age,
            backoff_base=queue.retry_min,
            backoff_max=queue.retry_max,
            bounce=queue.bounce,
            sent_folder=IMAPSentFolder(self.reactor, looking, self.tokens) if looking else None,
            sent_check_delay=queue.sent_check_delay,
            sent_check_give_up=queue.sent_check_give_up,
        )
        self.queue.setServiceParent(self)

    async def _listenSubmission(self) -> None:
        from oauthmail.smtp.submission import SenderDirectory, listenSubmission

        senders = SenderDirectory.fromAccounts(
            a for a in self.config.accounts if a.configured and a.smtp is not None
        )
        self.submission_port = await listenSubmission(
            self.reactor, self.config.submission, senders, self.queue
        )

    def _listenConsole(self) -> None:
        from oauthmail.tokens.authorize import Authorizer
        from oauthmail.web.console import ConsoleResource, LiveParts
        from oauthmail.web.site import ConsoleSite

        reactor: IReactorTCP = self.reactor
        self.authorizer = Authorizer(self.tokens, self.reactor, queue=self.queue)
        site = ConsoleSite(
            ConsoleResource(
                self.config,
                self.store,
                clock=self.reactor,
                live=LiveParts(self.watchers, self.queue),
                authorizer=self.authorizer,
            )
        )
        self.console_port = reactor.listenTCP(
            self.config.web.port, site, interface=self.config.web.bind
        )

    def _startFailed(self, failure: Any) -> None:
        self.log.critical("oauthmail could not start: {reason}", reason=describeFailure(failure))
        ready, self._ready = self._ready, []
        for d in ready:
            d.errback(failure)
        clock: IReactorTime = self.reactor
        if getattr(self.reactor, "running", False):
            clock.callLater(0, self.reactor.stop)

    async def _stop(self) -> None:
        if self._starting is not None and not self._starting.called:
            self._starting.cancel()
        if self.submission_port is not None:
            await self.submission_port.stopListening()
            self.submission_port = None
        if self.console_port is not None:
            await self.console_port.stopListening()
            self.console_port = None
        if self.authorizer is not None:
            self.authorizer.stop()
        for sink in self._sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                await defer.maybeDeferred(close)
        self._sinks = []
        if self.transport is not None:
            await self.transport.close()
            self.transport = None
        if self.stores is not None:
            await self.stores.close()

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: defer.ensureDeferred(self._stop()))
        return d
