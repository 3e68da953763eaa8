"""Watch IMAP folders and hand every message to the sink exactly once.

One :class:`AccountWatcher` (a ``Service``) per account runs one
:class:`FolderWatcher` per configured folder, each with **its own connection**:
IDLE only watches the selected mailbox, so one connection per folder is the
only way to hear about every folder at once; the cost is one connection per
folder (Dovecot allows 10 per user and address by default, Gmail 15).

A folder watcher is an explicit state machine (``state`` is shown on the
console)::

    connecting → authenticating → selecting → syncing → waiting ─┐
        ▲                                        ▲               │ EXISTS / timer
        │ backoff (jittered, reset after a       └───────────────┘
        │ successful SELECT)
        └── connection lost, BYE, errors;  "error": the token was refused twice

The order inside ``syncing`` is the whole point:

1. apply the disposition of messages the ledger has as *delivered but not
   disposed* (a crash after the sink took them): never deliver those again;
2. ``UID SEARCH`` for UIDs above ``last_delivered_uid``, drop those in the
   ledger, fetch the rest in batches of ``batch_size``;
3. drop messages whose sha256 the ledger already knows for the account (a
   changed UIDVALIDITY renumbers a folder: the bytes, not the UIDs, tell us
   what was delivered; a ``move`` into another watched folder is caught too);
4. hand the batch to the sink (``deliverBatch``: one group commit);
5. record the batch in the ledger in one transaction;
6. only then flag/move/delete on the server, and mark the rows disposed.

A temporary sink failure leaves the message untouched on the server and
unrecorded; the folder retries it after a backoff. A permanent failure is
recorded as ``failed_permanent`` (so it is not retried), logged, and the
message is **left on the server untouched** for a person to look at: it was not
delivered, so flagging or deleting it would lose it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.mail.imap4 import IMAP4Exception
from twisted.python.failure import Failure

from oauthmail.config import AccountConfig, FolderConfig
from oauthmail.digest import messageDigest
from oauthmail.imap.connect import connectIMAP
from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT
from oauthmail.imap.protocol import (
    IdleEvent,
    IMAPAuthenticationError,
    IMAPServerBye,
    authenticateRefreshingOnce,
)
from oauthmail.interfaces import IDeliveryLedger, IRecoverableSink
from oauthmail.sinks.errors import PermanentSinkError, SinkError, TemporarySinkError
from oauthmail.text import describeFailure
from oauthmail.tokens.errors import AccountNotAuthorised

__all__ = ["AccountWatcher", "FolderWatcher", "TokenRejected"]

_log = Logger()

#: Re-issue IDLE well under the 29 minutes after which servers may drop it.
IDLE_RENEW = 25 * 60.0


class TokenRejected(Exception):  # noqa: N818 - reads as what happened
    """The server refused the token, and again after a forced refresh."""


class _Stopped(Exception):  # noqa: N818 - control flow, not an error
    pass


def _keepForAwait(failure: Failure) -> Failure:
    """Leave a prefetch's failure for whoever awaits it (and say so to Deferred's GC check)."""
    return failure


async def _settled(d: defer.Deferred[Any]) -> None:
    """Wait for ``d`` whatever its outcome (a prefetch nobody will use)."""
    try:
        await d
    except Exception:  # noqa: S110 - the result is discarded on purpose
        pass


def _uidList(uids: Sequence[int]) -> str:
    shown = ", ".join(str(u) for u in uids[:10])
    return shown + (f" and {len(uids) - 10} more" if len(uids) > 10 else "")


@contextlib.asynccontextmanager
async def _locked(lock: defer.DeferredLock) -> Any:
    await lock.acquire()
    try:
        yield
    finally:
        lock.release()


class FolderWatcher:
    """Receives one folder of one account over one connection, forever, until stopped.

    ``connect(reactor, server, timeout)`` returns a Deferred client (the
    :func:`~oauthmail.imap.connect.connectIMAP` signature; tests pass fakes).
    ``retryPolicy(attempt)`` gives the seconds to wait before reconnect number
    ``attempt`` (0-based); it restarts at 0 after every successful SELECT.
    """

    def __init__(
        self,
        account: AccountConfig,
        folder: FolderConfig,
        tokens: Any,
        ledger: IDeliveryLedger,
        sink: Any,
        reactor: Any,
        store: Any = None,
        connect: Callable[..., defer.Deferred[Any]] = connectIMAP,
        retryPolicy: Callable[[int], float] | None = None,
        connectTimeout: float = 30.0,
        accountLock: defer.DeferredLock | None = None,
    ) -> None:
        assert account.imap is not None and account.profile.imap is not None
        #: Shared by the folders of one account (see ``_batch``).
        self.accountLock = accountLock if accountLock is not None else defer.DeferredLock()
        self.account = account
        self.folder = folder
        self.tokens = tokens
        self.ledger = ledger
        self.sink = sink
        self.reactor = reactor
        self.store = store
        self._connect = connect
        self.retryPolicy = retryPolicy or backoffPolicy(initialDelay=1.0, maxDelay=300.0)
        #: How often an unauthorised account looks again for tokens (no server traffic).
        self.unauthorisedRecheck = 30.0
        self.connectTimeout = connectTimeout
        self.imap = account.imap
        self.server = account.profile.imap
        # Console counters.
        self.state = "stopped"
        self.delivered = 0
        self.failedPermanent = 0
        self.lastDeliveryAt: float | None = None
        self.lastError: str | None = None
        self.sessions = 0
        # Run-time.
        self.client: Any = None
        self._stopping = False
        self._running: defer.Deferred[None] | None = None
        self._sleep: defer.Deferred[Any] | None = None
        self._wake: defer.Deferred[Any] | None = None
        self._attempt = 0
        self._retryDelay: float | None = None
        self._tempAttempt = 0
        self._forceRefresh = False
        self._markedError = False

    @property
    def name(self) -> str:
        return f"{self.account.name}/{self.folder.name}"

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
        for d in (self._sleep, self._wake):
            if d is not None and not d.called:
                d.cancel()
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.loseConnection()
        if running is None:
            return defer.succeed(None)
        return running

    def status(self) -> dict[str, Any]:
        """What the console shows for this folder."""
        return {
            "folder": self.folder.name,
            "state": self.state,
            "delivered": self.delivered,
            "failed_permanent": self.failedPermanent,
            "last_delivery_at": self.lastDeliveryAt,
            "last_error": self.lastError,
        }

    # -- the outer loop: sessions and backoff --------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._session()
            except _Stopped:
                break
            except defer.CancelledError:
                if self._stopping:
                    break
                self._error("cancelled")
            except TokenRejected as e:
                self._error(str(e))
            except AccountNotAuthorised as e:
                # Nothing a reconnect can fix: a person must authorise the account.
                # Say so once, then look again now and then (no server round trips).
                if self.lastError != str(e):
                    self._error(str(e))
                self.state = "unauthorised"
                try:
                    await self._sleepFor(self.unauthorisedRecheck)
                except defer.CancelledError:
                    break
                continue
            except Exception as e:  # every failure ends in a reconnect, never a crash
                if self._stopping:
                    break
                self._error(describeFailure(e))
            if self._stopping:
                break
            delay = self.retryPolicy(self._attempt)
            self._attempt += 1
            self.state = "backoff"
            try:
                await self._sleepFor(delay)
            except defer.CancelledError:
                break
        self.state = "stopped"

    def _error(self, text: str) -> None:
        self.lastError = text
        _log.warn("IMAP {name}: {error}", name=self.name, error=text)

    def _sleepFor(self, seconds: float) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        call = self.reactor.callLater(seconds, lambda: d.called or d.callback(None))

        def cancelled(f: Failure) -> Failure:
            if call.active():
                call.cancel()
            return f

        d.addErrback(cancelled)
        self._sleep = d
        return d

    def _checkStopping(self) -> None:
        if self._stopping:
            raise _Stopped()

    async def _session(self) -> None:
        # Ask for a token before opening a connection: an account that is not
        # authorised (or needs a person) never bothers the server.
        self.state = "connecting"
        token = await self._token()
        self._checkStopping()
        client = await self._connect(self.reactor, self.server, self.connectTimeout)
        self.client = client
        self.sessions += 1
        try:
            self._checkStopping()
            self.state = "authenticating"
            await self._authenticate(client, token)
            self._checkStopping()
            caps = await client.getCapabilities(useCache=False) or {}
            self.state = "selecting"
            info = await client.selectFolder(self.folder.name)
            self._attempt = 0
            self.lastError = None
            uidvalidity = info.uidvalidity
            await self._noteUIDValidity(uidvalidity)
            while True:
                self._checkStopping()
                self.state = "syncing"
                await self._round(client, uidvalidity, caps)
                self._checkStopping()
                self.state = "waiting"
                await self._wait(client, caps)
        finally:
            self.client = None
            transport = getattr(client, "transport", None)
            if transport is not None:
                transport.loseConnection()

    # -- authentication ---------------------------------------------------------------

    async def _token(self) -> Any:
        name = self.account.name
        if self._forceRefresh:
            self._forceRefresh = False
            return await self.tokens.forceRefresh(name)
        return await self.tokens.accessToken(name)

    async def _authenticate(self, client: Any, token: Any) -> None:
        name = self.account.name
        host = self.server.server_name or self.server.host
        mech = self.imap.mechanism
        user = self.account.sasl_user
        try:
            await authenticateRefreshingOnce(
                client,
                self.tokens,
                name,
                mech,
                user,
                token,
                host,
                self.server.port,
                f"IMAP {self.name}",
            )
        except IMAPAuthenticationError as e:
            if not e.token_rejected:
                raise
            message = f"IMAP server refused a freshly refreshed token: {e}"
            await self._setAccountState("error", message)
            raise TokenRejected(message) from None
        if self._markedError:
            await self._setAccountState("ok", None)

    async def _setAccountState(self, state: str, error: str | None) -> None:
        self._markedError = state == "error"
        if self.store is None:
            return
        try:
            await self.store.setAccountState(self.account.name, state, error)
        except Exception:
            _log.failure("could not record the state of account {a}", a=self.account.name)

    # -- one round: pending dispositions, then new mail -----------------------------------

    async def _noteUIDValidity(self, uidvalidity: int) -> None:
        state = await self.ledger.folderState(self.account.name, self.folder.name)
        if state is None or state[0] != uidvalidity:
            if state is not None:
                _log.warn(
                    "IMAP {name}: UIDVALIDITY changed from {old} to {new}; messages are"
                    " matched by content so none is delivered twice",
                    name=self.name,
                    old=state[0],
                    new=uidvalidity,
                )
            await self.ledger.setFolderState(self.account.name, self.folder.name, uidvalidity, 0)

    async def _round(self, client: Any, uidvalidity: int, caps: dict[bytes, Any]) -> None:
        account, folder = self.account.name, self.folder.name
        pending = await self.ledger.pendingDisposition(account, folder, uidvalidity)
        if pending:
            _log.info(
                "IMAP {name}: applying the disposition of {n} message(s) delivered earlier",
                name=self.name,
                n=len(pending),
            )
            await self._dispose(client, pending, caps, uidvalidity)
        self._retryDelay = None
        while True:
            self._checkStopping()
            existsBefore = getattr(client, "existsSeen", 0)
            state = await self.ledger.folderState(account, folder)
            last = state[1] if state is not None and state[0] == uidvalidity else 0
            uids = await client.uidSearchFrom(last + 1)
            if uids:
                done = await self.ledger.deliveredUIDs(account, folder, uidvalidity, uids)
                uids = [u for u in uids if u not in done]
            if not uids:
                if getattr(client, "existsSeen", 0) == existsBefore:
                    return
                continue
            size = max(1, self.imap.batch_size)
            batches = [uids[i : i + size] for i in range(0, len(uids), size)]
            blocked: int | None = None
            # The next batch is fetched while this one goes to the sink and the
            # ledger (the server and the disk work at the same time); at most two
            # batches are in memory.
            fetching = client.fetchMessages(batches[0])
            for index, batch in enumerate(batches):
                messages = await fetching
                if index + 1 < len(batches):
                    fetching = client.fetchMessages(batches[index + 1])
                    fetching.addErrback(_keepForAwait)
                try:
                    temporary = await self._batch(client, uidvalidity, batch, caps, messages)
                except BaseException:
                    if index + 1 < len(batches):
                        fetching.addErrback(lambda _: None)  # the session ends anyway
                    raise
                if temporary:
                    if index + 1 < len(batches):
                        await _settled(fetching)  # prefetched but not used: fetched again later
                    blocked = min(temporary)
                    break
            if blocked is not None:
                delay = self.retryPolicy(self._tempAttempt)
                self._tempAttempt += 1
                self._retryDelay = delay
                await self.ledger.setFolderState(
                    account, folder, uidvalidity, max(last, blocked - 1)
                )
                return
            self._tempAttempt = 0

    async def _batch(
        self,
        client: Any,
        uidvalidity: int,
        uids: Sequence[int],
        caps: dict[bytes, Any],
        messages: Sequence[tuple[int, bytes]],
    ) -> list[int]:
        """Deliver, record, dispose one fetched batch; return the UIDs that failed temporarily.

        The account lock covers the stretch from "which digests are known" to
        "outcomes recorded", so two folders of one account (Gmail labels) never
        both deliver the same bytes.
        """
        missing = sorted(set(uids) - {uid for uid, _ in messages})
        if missing:
            self._error(
                f"the server returned no body for UID(s) {_uidList(missing)}; left on the server"
            )
        async with _locked(self.accountLock):
            entries, temporary = await self._deliverAndRecord(uidvalidity, messages, uids[-1])
        if self.folder.disposition != "keep":
            toDispose = [uid for uid, _, state in entries if state == DELIVERED]
            if toDispose:
                await self._dispose(client, toDispose, caps, uidvalidity)
        return temporary

    async def _deliverAndRecord(
        self, uidvalidity: int, messages: Sequence[tuple[int, bytes]], lastUID: int
    ) -> tuple[list[tuple[int, str, str]], list[int]]:
        account, folder = self.account.name, self.folder.name
        digests = [messageDigest(body) for _, body in messages]
        known = await self.ledger.knownDigests(account, digests)
        entries: list[tuple[int, str, str]] = []
        # One delivery per distinct digest ("leader"); byte-identical copies in
        # the same batch ("followers") share the leader's outcome.
        leaders: dict[str, tuple[int, bytes]] = {}
        followers: list[tuple[int, str]] = []
        for (uid, body), digest in zip(messages, digests, strict=True):
            if digest in known:
                entries.append((uid, digest, DELIVERED))  # delivered before: record, dispose
            elif digest in leaders:
                followers.append((uid, digest))
            else:
                leaders[digest] = (uid, body)
        outcome: dict[str, SinkError | None] = {}
        handed = await self.ledger.handedDigests(account, leaders)
        if handed and IRecoverableSink.providedBy(self.sink):
            # An earlier run handed these to the sink and died before recording
            # the outcome: whatever the sink holds is delivered, not redone.
            for digest in await self.sink.findDelivered(handed):
                outcome[digest] = None
        fresh = [(uid, body, d) for d, (uid, body) in leaders.items() if d not in outcome]
        if fresh:
            await self.ledger.recordHanded(
                account, folder, uidvalidity, [(uid, d) for uid, _, d in fresh]
            )
            results = await self._deliver([body for _, body, _ in fresh])
            for (_, _, digest), error in zip(fresh, results, strict=True):
                outcome[digest] = error
        temporary: list[int] = []
        delivered = 0
        everyone = [(uid, d) for d, (uid, _) in leaders.items()] + followers
        for uid, digest in everyone:
            error = outcome[digest]
            if error is None:
                entries.append((uid, digest, DELIVERED))
                delivered += 1 if leaders[digest][0] == uid else 0
            elif isinstance(error, PermanentSinkError):
                entries.append((uid, digest, FAILED_PERMANENT))
                self.failedPermanent += 1
                self._error(f"UID {uid} refused for good by the sink (left on the server): {error}")
            else:
                temporary.append(uid)
                self._error(f"UID {uid} not delivered, will retry: {error}")
        # One transaction: the outcomes, and (when nothing waits for a retry) the
        # folder's new lower bound; with "keep" there is nothing left to dispose.
        entries.sort()
        await self.ledger.recordDeliveries(
            account,
            folder,
            uidvalidity,
            entries,
            last_delivered_uid=None if temporary else lastUID,
            disposed=self.folder.disposition == "keep",
        )
        if delivered:
            self.delivered += delivered
            self.lastDeliveryAt = self.reactor.seconds()
        return entries, temporary

    async def _deliver(self, bodies: list[bytes]) -> list[SinkError | None]:
        """The sink's verdict per message: None (taken durably) or the SinkError."""
        if not bodies:
            return []
        account, folder = self.account.name, self.folder.name
        batch = getattr(self.sink, "deliverBatch", None)
        if batch is not None:
            try:
                results = await batch([(body, account, folder) for body in bodies])
            except SinkError as e:
                return [e] * len(bodies)
            except Exception as e:
                return [TemporarySinkError(describeFailure(e))] * len(bodies)
            out: list[SinkError | None] = []
            for r in results:
                if isinstance(r, SinkError):
                    out.append(r)
                elif isinstance(r, BaseException):
                    out.append(TemporarySinkError(describeFailure(r)))
                else:
                    out.append(None)
            return out
        verdicts: list[SinkError | None] = []
        for body in bodies:
            try:
                await self.sink.deliver(body, account, folder)
                verdicts.append(None)
            except SinkError as e:
                verdicts.append(e)
            except Exception as e:
                verdicts.append(TemporarySinkError(describeFailure(e)))
        return verdicts

    async def _dispose(
        self, client: Any, uids: Sequence[int], caps: dict[bytes, Any], uidvalidity: int
    ) -> None:
        """Apply the folder's disposition to delivered UIDs, then mark them disposed."""
        how = self.folder.disposition
        uids = sorted(uids)
        if how == "seen":
            await client.uidStore(uids, b"\\Seen")
        elif how == "move":
            target = self.folder.move_to or ""
            if b"MOVE" in caps:
                await self._withCreate(client, lambda: client.uidMove(uids, target), target)
            else:
                await self._withCreate(client, lambda: client.uidCopy(uids, target), target)
                await self._delete(client, uids, caps)
        elif how == "delete":
            await self._delete(client, uids, caps)
        await self.ledger.markDisposed(self.account.name, self.folder.name, uidvalidity, uids)

    async def _delete(self, client: Any, uids: Sequence[int], caps: dict[bytes, Any]) -> None:
        await client.uidStore(uids, b"\\Deleted")
        if b"UIDPLUS" in caps:
            await client.uidExpunge(uids)
        else:
            # A plain EXPUNGE would also remove what other clients flagged \Deleted.
            _log.warn(
                "IMAP {name}: the server lacks UIDPLUS; messages stay flagged \\Deleted",
                name=self.name,
            )

    async def _withCreate(
        self, client: Any, action: Callable[[], defer.Deferred[None]], target: str
    ) -> None:
        try:
            await action()
        except IMAP4Exception as e:
            if "TRYCREATE" not in describeFailure(e).upper():
                raise
            await client.createMailbox(target)
            await action()

    # -- waiting: IDLE or poll ------------------------------------------------------------

    async def _wait(self, client: Any, caps: dict[bytes, Any]) -> None:
        """Return when new mail may be there (or a retry is due); raise if the connection ends."""
        timeout = self._retryDelay if self._retryDelay is not None else None
        lost = getattr(client, "lost", None)
        if self.imap.idle and b"IDLE" in caps:
            woke: defer.Deferred[Any] = defer.Deferred()
            self._wake = woke

            def onEvent(event: IdleEvent) -> None:
                if event.kind == "EXISTS" and not woke.called:
                    woke.callback("exists")

            session = await client.idle(onEvent)
            limit = IDLE_RENEW if timeout is None else min(timeout, IDLE_RENEW)
            call = self.reactor.callLater(limit, lambda: woke.called or woke.callback("timer"))
            ended = session.whenEnded()
            try:
                await defer.DeferredList(
                    [woke, ended], fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True
                ).addErrback(lambda f: f.value.subFailure)
            except defer.CancelledError:
                raise _Stopped() from None
            finally:
                self._wake = None
                if call.active():
                    call.cancel()
            if session.ended:
                await ended  # raises if IDLE ended by BYE or a lost connection
                raise ConnectionDone("IDLE ended by the server")
            await session.done()
            return
        # Polling: wait, unless the connection ends first.
        delay = self.imap.poll_interval if timeout is None else timeout
        sleep = self._sleepFor(delay)
        waits = [sleep]
        if lost is not None:
            waits.append(lost)
        try:
            index = await _first(waits)
        except defer.CancelledError:
            raise _Stopped() from None
        if index != 0:
            sleep.cancel()
            bye = getattr(client, "byeText", None)
            raise IMAPServerBye(bye) if bye else ConnectionDone("connection lost while polling")


async def _first(ds: list[defer.Deferred[Any]]) -> int:
    """The index of the first of ``ds`` to fire (their results are consumed)."""
    result: defer.Deferred[int] = defer.Deferred()
    for i, d in enumerate(ds):

        def fired(value: Any, i: int = i) -> Any:
            if not result.called:
                if isinstance(value, Failure) and value.check(defer.CancelledError):
                    result.errback(value)
                else:
                    result.callback(i)
            return None

        d.addBoth(fired)
    return await result


class AccountWatcher(MultiService):
    """The ``Service`` that receives one account's mail: a :class:`FolderWatcher` per folder.

    One account's failure never touches another's: each has its own watchers,
    connections and backoff; nothing here is shared but the sink and ledger objects.
    """

    def __init__(
        self,
        account: AccountConfig,
        tokens: Any,
        ledger: IDeliveryLedger,
        sink: Any,
        reactor: Any,
        store: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if account.imap is None:
            raise ValueError(f"account {account.name} has no imap section")
        self.account = account
        self.setName(f"imap:{account.name}")
        lock = defer.DeferredLock()
        self.folders = [
            FolderWatcher(
                account,
                folder,
                tokens,
                ledger,
                sink,
                reactor,
                store=store,
                accountLock=lock,
                **kwargs,
            )
            for folder in account.imap.folders
        ]
        for watcher in self.folders:
            _FolderService(watcher).setServiceParent(self)

    def status(self) -> dict[str, Any]:
        """Counters for the console: totals plus one entry per folder."""
        folders = [w.status() for w in self.folders]
        times = [f["last_delivery_at"] for f in folders if f["last_delivery_at"] is not None]
        errors = [f["last_error"] for f in folders if f["last_error"]]
        return {
            "account": self.account.name,
            "delivered": sum(f["delivered"] for f in folders),
            "last_delivery_at": max(times) if times else None,
            "last_error": errors[0] if errors else None,
            "folders": folders,
        }


class _FolderService(Service):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def startService(self) -> None:
        super().startService()
        self.watcher.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.watcher.stop()
