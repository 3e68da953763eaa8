"""Tests for oauthmail.imap.watcher: the folder state machine against an in-memory IMAP fake."""
# The fake session below stands in for oauthmail.imap.session.IMAPSession behind
# IIMAPSession; tests/test_imap_hostile.py runs the real one against real sockets.

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.cluster.records import LeaseLost
from oauthmail.config import (
    AccountConfig,
    AccountImapConfig,
    FolderConfig,
    ProfileConfig,
    ServerConfig,
    SinkConfig,
)
from oauthmail.digest import messageDigest
from oauthmail.health import AccountHealth
from oauthmail.imap.errors import IMAPAuthenticationError, IMAPCommandError, IMAPServerBye
from oauthmail.imap.idle import IdleEvent
from oauthmail.imap.ledger import DELIVERED, FAILED_PERMANENT, HANDED
from oauthmail.imap.session import SelectInfo
from oauthmail.imap.watcher import AccountWatcher, FolderWatcher
from oauthmail.interfaces import IBatchSink
from oauthmail.secret import Secret
from oauthmail.sinks.errors import PermanentSinkError, TemporarySinkError
from oauthmail.testing.memory_ledger import MemoryDeliveryLedger
from oauthmail.testing.memory_store import MemoryTokenStore


def makeAccount(disposition="seen", idle=True, batch_size=100, move_to=None) -> AccountConfig:
    server = ServerConfig("127.0.0.1", 993, "implicit", server_name="mail.test")
    profile = ProfileConfig(
        name="p",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint="https://t",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id="c",
        client_secret=None,
        scopes=("mail",),
        imap=server,
    )
    folder = FolderConfig("INBOX", disposition, move_to)
    imap = AccountImapConfig(
        folders=(folder,),
        sink=SinkConfig("maildir", path="x"),
        idle=idle,
        poll_interval=60.0,
        batch_size=batch_size,
    )
    return AccountConfig(name="alice", address="alice@example.com", profile=profile, imap=imap)


class FakeServer:
    """One mailbox account: folders of {uid: bytes}, flags, tokens it accepts."""

    def __init__(self):
        self.uidvalidity = 1
        self.folders = {"INBOX": {}, "Archive": {}}
        self.flags = {}
        self.nextUID = 1
        self.valid = set()
        self.auths = []
        self.clients = []
        self.caps = {b"IDLE", b"MOVE", b"UIDPLUS"}
        self.failDispose = False

    def add(self, body: bytes, folder="INBOX") -> int:
        uid = self.nextUID
        self.nextUID += 1
        self.folders[folder][uid] = body
        for c in self.clients:
            c.notifyExists()
        return uid

    def renumber(self):
        """A new UIDVALIDITY: same messages, new UIDs."""
        self.uidvalidity += 1
        old = self.folders["INBOX"]
        self.folders["INBOX"] = {}
        for uid in sorted(old):
            self.folders["INBOX"][self.nextUID] = old[uid]
            self.flags[self.nextUID] = self.flags.pop(uid, set())
            self.nextUID += 1

    def connect(self, reactor, server, timeout, **kw):
        client = FakeClient(self)
        self.clients.append(client)
        return defer.succeed(client)


class FakeTransport:
    def __init__(self, client):
        self.client = client

    def loseConnection(self):
        self.client.drop(ConnectionLost("closed"))


class FakeIdle:
    def __init__(self, onEvent):
        self.onEvent = onEvent
        self.ended = False
        self._end = defer.Deferred()

    def whenEnded(self):
        d = defer.Deferred()
        self._end.addBoth(
            lambda r: (d.callback(None) if not isinstance(r, Failure) else d.errback(r)) or r
        )
        return d

    def done(self):
        self.finish(None)
        return defer.succeed(None)

    def finish(self, result):
        if not self.ended:
            self.ended = True
            self._end.callback(None) if result is None else self._end.errback(result)
            self._end.addErrback(lambda f: None)


class FakeClient:
    """An in-memory IIMAPSession over a FakeServer."""

    def __init__(self, server: FakeServer):
        self.server = server
        self.transport = FakeTransport(self)
        self.lost = defer.Deferred()
        self.existsSeen = 0
        self.byeText = None
        self.lastAlert = None
        self.capabilities = None
        self.session = None
        self.connected = True
        self.selected = None
        self.sizeOverride = {}  # uid -> RFC822.SIZE to report instead of the real one

    def whenLost(self):
        d = defer.Deferred()
        self.lost.addCallback(lambda reason: d.callback(reason) or reason)
        return d

    def close(self):
        self.transport.loseConnection()

    abort = close

    def notifyExists(self):
        self.existsSeen += 1
        if self.session is not None and not self.session.ended:
            self.session.onEvent(IdleEvent("EXISTS", 1))

    def drop(self, reason):
        if not self.connected:
            return
        self.connected = False
        self.server.clients.remove(self)
        if self.session is not None:
            self.session.finish(Failure(reason))
        self.lost.callback(reason)

    def bye(self, text):
        self.byeText = text
        self.drop(IMAPServerBye(text))

    def _check(self):
        if not self.connected:
            raise ConnectionLost("gone")

    def authenticate(self, mech, user, token, host=None, port=None, providerKind="generic"):
        value = token.reveal()
        self.server.auths.append(value)
        if value not in self.server.valid:
            return defer.fail(IMAPAuthenticationError("AUTHENTICATIONFAILED", token_rejected=True))
        return defer.succeed({})

    def capability(self):
        self.capabilities = frozenset(self.server.caps)
        return defer.succeed(self.capabilities)

    def selectFolder(self, name):
        self.selected = name
        box = self.server.folders[name]
        return defer.succeed(SelectInfo(self.server.uidvalidity, len(box), self.server.nextUID))

    def uidSearchFrom(self, first):
        self._check()
        return defer.succeed(sorted(u for u in self.server.folders[self.selected] if u >= first))

    def fetchSizes(self, uids):
        self._check()
        box = self.server.folders[self.selected]
        return defer.succeed(
            {u: self.sizeOverride.get(u, len(box[u])) for u in sorted(uids) if u in box}
        )

    def fetchMessages(self, uids):
        self._check()
        box = self.server.folders[self.selected]
        return defer.succeed([(u, box[u]) for u in sorted(uids) if u in box])

    def _dispose(self):
        self._check()
        if self.server.failDispose:
            self.drop(ConnectionLost("cut before disposition"))
            raise ConnectionLost("cut")

    def uidStore(self, uids, flags, add=True):
        self._dispose()
        for u in uids:
            if u in self.server.folders[self.selected]:
                self.server.flags.setdefault(u, set()).add(flags)
        return defer.succeed(None)

    def uidMove(self, uids, target):
        self._dispose()
        box = self.server.folders[self.selected]
        for u in uids:
            if u in box:
                self.server.folders[target][u] = box.pop(u)
        return defer.succeed(None)

    def uidCopy(self, uids, target):
        raise AssertionError("MOVE is offered")

    def uidExpunge(self, uids):
        self._dispose()
        box = self.server.folders[self.selected]
        for u in uids:
            if b"\\Deleted" in self.server.flags.get(u, ()):
                box.pop(u, None)
        return defer.succeed(None)

    def idle(self, onEvent):
        self._check()
        self.session = FakeIdle(onEvent)
        return defer.succeed(self.session)


class FakeTokens:
    """An ITokenSource whose tokens the FakeServer accepts unless told otherwise."""

    def __init__(self, server: FakeServer, refreshWorks=True):
        self.server = server
        self.n = 0
        self.current = self._mint()
        self.refreshes = 0
        self.refreshWorks = refreshWorks

    def _mint(self, valid=True):
        self.n += 1
        token = f"tok{self.n}"
        if valid:
            self.server.valid.add(token)
        return token

    def accessToken(self, account):
        return defer.succeed(Secret(self.current))

    def forceRefresh(self, account):
        self.refreshes += 1
        self.current = self._mint(valid=self.refreshWorks)
        return defer.succeed(Secret(self.current))


@implementer(IBatchSink)
class FakeSink:
    def __init__(self):
        self.messages = []
        self.verdicts = {}  # body -> exception to raise once (or always if permanent)
        self.hooks = []  # the beforeCommit of each batch (None: not under a lease)
        self.digests = []  # the digests each batch came with

    def deliverBatch(self, items, beforeCommit=None, digests=None):
        self.hooks.append(beforeCommit)
        self.digests.append(digests)
        if beforeCommit is not None:
            beforeCommit()  # a refusal fails the batch: nothing is kept
        out = []
        for body, _account, _folder in items:
            error = self.verdicts.get(body)
            if error is not None:
                if isinstance(error, TemporarySinkError):
                    del self.verdicts[body]
                out.append(error)
            else:
                self.messages.append(body)
                out.append("new/x")
        return defer.succeed(out)


def setup(
    account=None, ledger=None, tokens=None, server=None, store=None, recorder=None, clock=None
):
    clock = clock or Clock()
    server = server or FakeServer()
    tokens = tokens or FakeTokens(server)
    ledger = ledger or MemoryDeliveryLedger(clock)
    sink = FakeSink()
    account = account or makeAccount()
    watcher = FolderWatcher(
        account,
        account.imap.folders[0],
        tokens,
        ledger,
        sink,
        clock,
        health=AccountHealth(store, clock) if store is not None else None,
        connect=server.connect,
        retryPolicy=lambda attempt: 5.0 * (attempt + 1),
        recorder=recorder,
    )
    return watcher, server, tokens, ledger, sink, clock


def test_delivers_then_marks_seen_in_order():
    """Messages go to the sink, the ledger, then get \\Seen; IDLE EXISTS brings new mail."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"one")
    server.add(b"two")
    watcher.start()
    assert sink.messages == [b"one", b"two"]
    # The digests the ledger recorded go with the batch: the sink need not hash again.
    assert sink.digests == [[messageDigest(b"one"), messageDigest(b"two")]]
    assert server.flags == {1: {b"\\Seen"}, 2: {b"\\Seen"}}
    assert ledger.folders[("alice", "INBOX")] == (1, 2)
    assert watcher.state == "waiting"
    server.add(b"three")
    assert sink.messages == [b"one", b"two", b"three"]
    assert watcher.delivered == 3
    watcher.stop()
    assert watcher.state == "stopped"


class CountingLedger(MemoryDeliveryLedger):
    """The memory ledger, counting the reads a session makes of the folder's state."""

    def __init__(self, clock):
        super().__init__(clock)
        self.stateReads = 0

    def folderState(self, account, folder):
        self.stateReads += 1
        return super().folderState(account, folder)


def test_mail_arriving_during_delivery_is_taken_in_the_same_round():
    """Mail that lands while a batch is delivered goes in the same round; the folder's
    ledger state is read once for the session's first round, not again after each pass."""
    clock = Clock()
    ledger = CountingLedger(clock)
    watcher, server, tokens, ledger, sink, clock = setup(ledger=ledger, clock=clock)
    server.add(b"one")
    server.add(b"two")
    deliverBatch = sink.deliverBatch
    late = [b"late 1", b"late 2"]

    def arriving(items, beforeCommit=None, digests=None):
        if late:
            server.add(late.pop(0))  # EXISTS while the batch is delivered
        return deliverBatch(items, beforeCommit, digests)

    sink.deliverBatch = arriving
    watcher.start()
    assert sink.messages == [b"one", b"two", b"late 1", b"late 2"]
    assert watcher.state == "waiting"
    assert ledger.stateReads == 1
    assert ledger.folders[("alice", "INBOX")] == (1, 4)
    assert server.flags == {uid: {b"\\Seen"} for uid in (1, 2, 3, 4)}
    # A later round (IDLE's EXISTS) reads it again: the ledger is the authority.
    server.add(b"five")
    assert sink.messages[-1] == b"five"
    assert ledger.stateReads == 2
    watcher.stop()


def test_token_rejected_refresh_once_then_success():
    """A rejected token is force-refreshed once and the retry succeeds."""
    server = FakeServer()
    tokens = FakeTokens(server)
    server.valid.clear()  # the cached token is stale; the refreshed one works
    watcher, server, tokens, ledger, sink, clock = setup(server=server, tokens=tokens)
    server.add(b"m")
    watcher.start()
    assert tokens.refreshes == 1
    assert server.auths == ["tok1", "tok2"]
    assert sink.messages == [b"m"]
    watcher.stop()


def test_token_rejected_twice_sets_error_and_backs_off():
    """Rejected again after the refresh: account state error with the server's words, backoff."""
    server = FakeServer()
    tokens = FakeTokens(server, refreshWorks=False)
    server.valid.clear()
    clock = Clock()
    store = MemoryTokenStore(clock)
    store.ensureAccount("alice", "generic")
    watcher, server, tokens, ledger, sink, clock = setup(server=server, tokens=tokens, store=store)
    watcher.start()
    assert tokens.refreshes == 1
    account = []
    store.getAccount("alice").addCallback(account.append)
    assert account[0].state == "error"
    assert "AUTHENTICATIONFAILED" in account[0].last_error
    assert watcher.state == "backoff"
    assert len(server.auths) == 2
    clock.advance(4.9)
    assert len(server.auths) == 2
    clock.advance(0.2)
    assert len(server.auths) == 4  # a new session: one more try, one more refresh
    tokens.refreshWorks = True
    clock.advance(10.0)
    assert watcher.state == "waiting"
    account.clear()
    store.getAccount("alice").addCallback(account.append)
    assert account[0].state == "ok"
    watcher.stop()


def test_temporary_sink_failure_leaves_message_and_retries():
    """A temporary sink failure: only 'handed' in the ledger, not flagged, delivered on retry."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"a")
    server.add(b"b")
    sink.verdicts[b"b"] = TemporarySinkError("disk full")
    watcher.start()
    assert sink.messages == [b"a"]
    assert server.flags == {1: {b"\\Seen"}}
    assert ledger.rows[("alice", "INBOX", 1, 2)][1] == HANDED
    assert "disk full" in watcher.lastError
    clock.advance(5.0)
    assert sink.messages == [b"a", b"b"]
    assert server.flags[2] == {b"\\Seen"}
    watcher.stop()


def test_a_temporary_failure_in_a_later_pass_keeps_the_bound_below_it():
    """Mail landing during a pass fails for now in the next pass of the same round: the
    folder's bound stays at the last UID the first pass recorded, and the retry delivers it."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"one")
    server.add(b"two")
    deliverBatch = sink.deliverBatch
    late = [b"late"]

    def arriving(items, beforeCommit=None, digests=None):
        if late:
            body = late.pop(0)
            sink.verdicts[body] = TemporarySinkError("disk full")
            server.add(body)  # UID 3, while UIDs 1 and 2 are delivered
        return deliverBatch(items, beforeCommit, digests)

    sink.deliverBatch = arriving
    watcher.start()
    assert sink.messages == [b"one", b"two"]
    assert ledger.folders[("alice", "INBOX")] == (1, 2)
    assert ledger.rows[("alice", "INBOX", 1, 3)][1] == HANDED
    assert 3 not in server.flags
    clock.advance(5.0)
    assert sink.messages == [b"one", b"two", b"late"]
    assert ledger.folders[("alice", "INBOX")] == (1, 3)
    assert server.flags[3] == {b"\\Seen"}
    watcher.stop()


def test_permanent_failure_recorded_and_folder_continues():
    """A permanent failure is recorded, left unflagged on the server, and later mail flows."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"bad")
    server.add(b"good")
    sink.verdicts[b"bad"] = PermanentSinkError("malformed")
    watcher.start()
    assert sink.messages == [b"good"]
    assert ledger.rows[("alice", "INBOX", 1, 1)][1] == FAILED_PERMANENT
    assert 1 not in server.flags
    server.add(b"later")
    assert sink.messages == [b"good", b"later"]
    assert watcher.failedPermanent == 1
    watcher.stop()


def test_crash_between_sink_and_disposition():
    """Delivered+recorded but not disposed: the next session disposes and never redelivers."""
    account = makeAccount(disposition="delete")
    watcher, server, tokens, ledger, sink, clock = setup(account=account)
    server.add(b"x")
    server.add(b"y")
    server.failDispose = True
    watcher.start()
    assert sink.messages == [b"x", b"y"]
    assert ledger.rows[("alice", "INBOX", 1, 1)][1] == DELIVERED
    assert server.folders["INBOX"]  # still there
    assert watcher.state == "backoff"
    server.failDispose = False
    # A new watcher (process restart) on the same ledger.
    watcher.stop()
    again, _, _, _, sink2, clock2 = setup(account=account, ledger=ledger, server=server)
    again.start()
    assert sink2.messages == []
    assert server.folders["INBOX"] == {}
    assert ledger.pendingDisposition("alice", "INBOX", 1).result == []
    again.stop()


def test_uidvalidity_change_dedupes_by_digest():
    """After the server renumbers the folder, only messages not delivered before go out."""
    account = makeAccount(disposition="keep")
    watcher, server, tokens, ledger, sink, clock = setup(account=account)
    server.add(b"old1")
    server.add(b"old2")
    watcher.start()
    watcher.stop()
    server.renumber()
    server.add(b"new")
    again, _, _, _, sink2, _ = setup(account=account, ledger=ledger, server=server)
    again.start()
    assert sink2.messages == [b"new"]
    assert ledger.folders[("alice", "INBOX")][0] == 2
    again.stop()


def test_bye_reconnects_with_fresh_token():
    """BYE (AccessTokenExpired) while idling: reconnect after backoff with a refreshed token."""
    watcher, server, tokens, ledger, sink, clock = setup()
    watcher.start()
    assert watcher.state == "waiting"
    server.clients[0].bye("Session invalidated - AccessTokenExpired")
    assert watcher.state == "backoff"
    assert "AccessTokenExpired" in watcher.lastError
    server.valid.discard("tok1")  # expired at the server
    clock.advance(5.0)
    assert watcher.state == "waiting"
    assert tokens.refreshes == 1
    server.add(b"after")
    assert sink.messages == [b"after"]
    watcher.stop()


def test_move_disposition_and_poll_mode():
    """Without IDLE the folder is polled; move puts delivered mail in the target folder."""
    account = makeAccount(disposition="move", move_to="Archive", idle=False, batch_size=2)
    watcher, server, tokens, ledger, sink, clock = setup(account=account)
    for i in range(5):
        server.add(b"m%d" % i)
    watcher.start()
    assert sink.messages == [b"m%d" % i for i in range(5)]
    assert sorted(server.folders["Archive"]) == [1, 2, 3, 4, 5]
    server.add(b"polled")
    assert len(sink.messages) == 5
    clock.advance(60.0)
    assert sink.messages[-1] == b"polled"
    watcher.stop()


def test_account_watcher_status_and_isolation():
    """An AccountWatcher service runs its folders and reports counters."""
    server = FakeServer()
    account = makeAccount()
    account = replace(
        account,
        imap=replace(account.imap, folders=(FolderConfig("INBOX"), FolderConfig("Archive"))),
    )
    clock = Clock()
    service = AccountWatcher(
        account,
        FakeTokens(server),
        MemoryDeliveryLedger(),
        FakeSink(),
        clock,
        connect=server.connect,
    )
    server.add(b"hello")
    service.startService()
    status = service.status()
    assert status["delivered"] == 1
    assert [f["state"] for f in status["folders"]] == ["waiting", "waiting"]
    service.stopService()
    assert [f["state"] for f in service.status()["folders"]] == ["stopped", "stopped"]


def test_imap_error_in_round_reconnects():
    """A NO from the server mid-round ends the session; backoff then a fresh session."""
    watcher, server, tokens, ledger, sink, clock = setup()
    client_search = FakeClient.uidSearchFrom
    calls = []

    def failing(self, first):
        calls.append(first)
        if len(calls) == 1:
            return defer.fail(IMAPCommandError("UID SEARCH", "NO", "busy"))
        return client_search(self, first)

    FakeClient.uidSearchFrom = failing
    try:
        server.add(b"m")
        watcher.start()
        assert watcher.state == "backoff"
        clock.advance(5.0)
        assert sink.messages == [b"m"]
    finally:
        FakeClient.uidSearchFrom = client_search
        watcher.stop()


class UnauthorisedTokens(FakeTokens):
    """No tokens until ``authorise()``: what a freshly configured account looks like."""

    authorised = False

    def accessToken(self, account):
        if not self.authorised:
            from oauthmail.tokens.errors import AccountNotAuthorised

            return defer.fail(AccountNotAuthorised(account, "not authorised yet"))
        return super().accessToken(account)


def test_unauthorised_account_never_connects_and_starts_once_authorised():
    """Without tokens the watcher opens no connection; once authorised it delivers."""
    server = FakeServer()
    tokens = UnauthorisedTokens(server)
    watcher, server, tokens, ledger, sink, clock = setup(server=server, tokens=tokens)
    server.add(b"one")
    watcher.start()
    clock.advance(0)
    assert watcher.state == "unauthorised"
    for _ in range(5):
        clock.advance(watcher.unauthorisedRecheck)
    assert server.clients == []
    assert "not authorised yet" in watcher.lastError
    tokens.authorised = True
    clock.advance(watcher.unauthorisedRecheck)
    assert len(server.clients) == 1
    assert sink.messages == [b"one"]
    watcher.stop()


def test_identical_copies_in_one_batch_share_the_outcome():
    """Two byte-identical messages: a temporary failure leaves both; the retry settles both."""
    watcher, server, tokens, ledger, sink, clock = setup(account=makeAccount("delete"))
    server.add(b"same")
    server.add(b"same")
    sink.verdicts[b"same"] = TemporarySinkError("disk full")
    watcher.start()
    assert sink.messages == []
    assert sorted(server.folders["INBOX"]) == [1, 2]  # nothing disposed
    clock.advance(5.0)
    assert sink.messages == [b"same"]  # delivered once
    assert server.folders["INBOX"] == {}
    assert {state for _, state in ledger.rows.values()} == {"disposed"}
    watcher.stop()


class RecoverableSink(FakeSink):
    """A sink that holds some messages already (as a Maildir does after a crash)."""

    def __init__(self, holding):
        super().__init__()
        self.holding = {messageDigest(body) for body in holding}
        self.asked = []

    def findDelivered(self, digests):
        digests = set(digests)
        self.asked.append(digests)
        return defer.succeed(digests & self.holding)


def test_handed_batch_after_a_crash_is_not_delivered_again():
    """Messages handed to the sink before a crash and held by it are recorded, not redelivered."""
    from zope.interface import directlyProvides

    from oauthmail.interfaces import IRecoverableSink

    clock = Clock()
    server = FakeServer()
    ledger = MemoryDeliveryLedger(clock)
    server.add(b"held")
    server.add(b"lost")
    # What the crashed run left behind: both handed, the sink only got "held".
    ledger.recordHanded("alice", "INBOX", 1, [(1, messageDigest(b"held"))])
    ledger.recordHanded("alice", "INBOX", 1, [(2, messageDigest(b"lost"))])
    sink = RecoverableSink([b"held"])
    directlyProvides(sink, IRecoverableSink)
    account = makeAccount("delete")
    watcher = FolderWatcher(
        account,
        account.imap.folders[0],
        FakeTokens(server),
        ledger,
        sink,
        clock,
        connect=server.connect,
    )
    watcher.start()
    assert sink.messages == [b"lost"]  # only the one the sink did not hold
    assert server.folders["INBOX"] == {}
    assert {state for _, state in ledger.rows.values()} == {"disposed"}
    watcher.stop()


def test_a_body_missing_from_fetch_is_fetched_again_then_left_on_the_server():
    """An empty FETCH is retried; after 3 it is reported once and left, never blocking others."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"one")
    server.add(b"two")
    fetched = []
    original = FakeClient.fetchMessages

    def withoutUID1(self, uids):
        fetched.append(list(uids))
        return original(self, uids).addCallback(lambda ms: [m for m in ms if m[0] != 1])

    FakeClient.fetchMessages = withoutUID1
    try:
        watcher.start()
        assert sink.messages == [b"two"]  # the others are not held back
        assert watcher.lastError is None  # not reported yet: it may come next time
        assert ledger.folders[("alice", "INBOX")] == (1, 0)  # the bound waits below UID 1
        clock.advance(5.0)  # the next round comes by itself, without new mail
        assert fetched[-1] == [1]
        assert watcher.lastError is None
        clock.advance(10.0)
        assert fetched[-1] == [1]
        assert "no body for UID(s) 1 3 times; left on the server" in watcher.lastError
        assert ledger.rows[("alice", "INBOX", 1, 1)] == (None, FAILED_PERMANENT)
        assert 1 not in server.flags  # left untouched for a person to look at
        assert watcher.status()["unfetchable"] == [1]
        count = len(fetched)
        server.add(b"three")
        assert sink.messages == [b"two", b"three"]
        assert [1] not in fetched[count:]  # never fetched again
    finally:
        FakeClient.fetchMessages = original
        watcher.stop()


def test_a_body_that_comes_back_resets_the_count():
    """Two empty answers, then the body: delivered, nothing reported."""
    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"one")
    empty = [2]
    original = FakeClient.fetchMessages

    def flaky(self, uids):
        if empty[0]:
            empty[0] -= 1
            return defer.succeed([])
        return original(self, uids)

    FakeClient.fetchMessages = flaky
    try:
        watcher.start()
        clock.advance(5.0)
        assert sink.messages == []
        clock.advance(10.0)
        assert sink.messages == [b"one"]
        assert watcher.lastError is None
        assert server.flags[1] == {b"\\Seen"}
    finally:
        FakeClient.fetchMessages = original
        watcher.stop()


def test_idle_is_reissued_before_25_minutes():
    """An idle connection ends IDLE and starts a new one every 25 minutes at most."""
    watcher, server, tokens, ledger, sink, clock = setup()
    sessions = []
    original = FakeClient.idle

    def counting(self, onEvent):
        d = original(self, onEvent)
        sessions.append(self.session)
        return d

    FakeClient.idle = counting
    try:
        watcher.start()
        assert len(sessions) == 1
        clock.advance(25 * 60 - 1)
        assert len(sessions) == 1
        clock.advance(1)
        assert sessions[0].ended
        assert len(sessions) == 2
        assert len(server.clients) == 1  # same connection, a fresh IDLE
    finally:
        FakeClient.idle = original
        watcher.stop()


# ---- bounds: message size, protocol errors, backoff ----


def test_a_message_over_the_size_limit_is_left_on_the_server_and_reported_once():
    """RFC822.SIZE above the limit: never fetched, recorded, reported once, bound moves on."""
    from oauthmail.imap.limits import IMAPLimits

    clock = Clock()
    server = FakeServer()
    ledger = MemoryDeliveryLedger(clock)
    account = makeAccount()
    sink = FakeSink()
    watcher = FolderWatcher(
        account,
        account.imap.folders[0],
        FakeTokens(server),
        ledger,
        sink,
        clock,
        connect=server.connect,
        retryPolicy=lambda attempt: 5.0,
        limits=IMAPLimits(maxMessageSize=100),
    )
    server.add(b"small")
    server.add(b"x" * 101)
    server.add(b"also small")
    fetched = []
    original = FakeClient.fetchMessages

    def recording(self, uids):
        fetched.append(list(uids))
        return original(self, uids)

    FakeClient.fetchMessages = recording
    try:
        watcher.start()
        assert sink.messages == [b"small", b"also small"]
        assert all(2 not in batch for batch in fetched)
        assert ledger.rows[("alice", "INBOX", 1, 2)] == (None, FAILED_PERMANENT)
        assert ledger.folders[("alice", "INBOX")] == (1, 3)
        assert "UID 2 (101 bytes) larger than the limit of 100 bytes" in watcher.lastError
        assert watcher.status()["too_large"] == [{"uid": 2, "size": 101, "limit": 100}]
        assert 2 not in server.flags
        server.add(b"later")  # a new round: the big one is not looked at again
        assert sink.messages[-1] == b"later"
        assert all(2 not in batch for batch in fetched)
    finally:
        FakeClient.fetchMessages = original
        watcher.stop()


def test_a_literal_over_the_limit_ends_the_session_and_the_message_is_skipped():
    """RFC822.SIZE lied: the refused literal's UID is recorded, the next session goes on."""
    from oauthmail.imap.errors import IMAPProtocolError

    watcher, server, tokens, ledger, sink, clock = setup()
    server.add(b"liar")
    server.add(b"fine")
    original = FakeClient.fetchMessages

    def refusing(self, uids):
        if 1 in uids:
            self.drop(ConnectionLost("aborted"))
            return defer.fail(
                IMAPProtocolError("literal of 999999999999 bytes", uid=1, size=999999999999)
            )
        return original(self, uids)

    FakeClient.fetchMessages = refusing
    try:
        watcher.start()
        assert watcher.state == "backoff"
        assert "broke the IMAP protocol" in watcher.lastError
        assert ledger.rows[("alice", "INBOX", 1, 1)] == (None, FAILED_PERMANENT)
        clock.advance(5.0)
        assert sink.messages == [b"fine"]
        assert watcher.state == "waiting"
    finally:
        FakeClient.fetchMessages = original
        watcher.stop()


def test_a_server_that_closes_after_select_never_resets_the_backoff():
    """Closing right after SELECT, again and again: the delay keeps growing (issue 14)."""
    watcher, server, tokens, ledger, sink, clock = setup()
    original = FakeClient.selectFolder

    def selectThenClose(self, name):
        d = original(self, name)
        self.drop(ConnectionLost("closed after SELECT"))
        return d

    FakeClient.selectFolder = selectThenClose
    try:
        watcher.start()
        starts = [clock.seconds()]
        for _ in range(5):
            before = len(server.auths)
            while len(server.auths) == before:
                clock.advance(1.0)
            starts.append(clock.seconds())
        gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
        assert gaps == [5.0, 10.0, 15.0, 20.0, 25.0]  # retryPolicy(attempt) grows, never resets
        assert watcher.backoff.attempts == 6
    finally:
        FakeClient.selectFolder = original
        watcher.stop()


def test_backoff_resets_only_after_a_sync_and_a_minute_up():
    """A session that synced and stayed up 60 s proves healthy: the next failure starts over."""
    watcher, server, tokens, ledger, sink, clock = setup()
    watcher.backoff.attempts = 4  # earlier failures
    watcher.start()
    assert watcher.state == "waiting"
    clock.advance(59.0)
    assert watcher.backoff.attempts == 4
    server.clients[0].drop(ConnectionLost("flap"))
    assert watcher.backoff.attempts == 5  # up 59 s: not healthy yet
    clock.advance(25.0)  # policy(4) = 25 s
    assert watcher.state == "waiting"
    clock.advance(60.0)
    assert watcher.backoff.attempts == 0
    watcher.stop()


def test_a_refused_token_costs_one_refresh_per_backoff_step():
    """Refused again and again: exactly one forced refresh per session, sessions back off."""
    server = FakeServer()
    tokens = FakeTokens(server, refreshWorks=False)
    server.valid.clear()
    watcher, server, tokens, ledger, sink, clock = setup(server=server, tokens=tokens)
    watcher.start()
    for _ in range(120):
        clock.advance(1.0)
    # delays 5, 10, 15, 20, 25, 30 (sum 105) fit in 120 s: 7 sessions in all.
    assert len(server.auths) == 14
    assert tokens.refreshes == 7
    watcher.stop()


def test_account_state_has_one_writer(monkeypatch):
    """Every report of the folder's condition goes through FolderWatcher.reportCondition."""
    server = FakeServer()
    tokens = FakeTokens(server, refreshWorks=False)
    server.valid.clear()
    clock = Clock()
    store = MemoryTokenStore(clock)
    store.ensureAccount("alice", "generic")
    writes = []
    original = store.setAccountState

    def recording(*args, **kw):
        writes.append(args)
        return original(*args, **kw)

    store.setAccountState = recording
    watcher, server, tokens, ledger, sink, clock = setup(server=server, tokens=tokens, store=store)
    via = []
    method = FolderWatcher.reportCondition

    def counted(self, state, error, advice=None):
        via.append(state)
        return method(self, state, error, advice)

    monkeypatch.setattr(FolderWatcher, "reportCondition", counted)
    watcher.start()
    tokens.refreshWorks = True
    clock.advance(5.0)
    assert [w[1] for w in writes] == ["error", "ok"]
    assert via == ["error", "ok"]
    watcher.stop()


def test_plan_batches_by_count_and_bytes():
    """Batches hold at most N messages and B bytes; a message larger than B goes alone."""
    from oauthmail.imap.watcher.sync import planBatches

    sizes = {1: 10, 2: 10, 3: 50, 4: 10, 5: 10, 6: 10}
    assert planBatches([1, 2, 3, 4, 5, 6], sizes, 3, 30) == [[1, 2], [3], [4, 5, 6]]
    assert planBatches([1, 2, 3, 4, 5, 6], sizes, 2, 1000) == [[1, 2], [3, 4], [5, 6]]
    assert planBatches([], sizes, 2, 10) == []


def test_the_waiter_says_whether_the_server_accepted_idle():
    """waiter.idling is True only while an accepted IDLE runs: not after BYE, not when stopped."""
    watcher, server, tokens, ledger, sink, clock = setup()
    assert not watcher.waiter.idling
    watcher.start()
    assert watcher.waiter.idling
    server.clients[0].bye("going away")
    assert watcher.state == "backoff" and not watcher.waiter.idling
    clock.advance(5.0)
    assert watcher.waiter.idling
    watcher.stop()
    assert not watcher.waiter.idling


# -- under a lease (several nodes on one database) ----------------------------------------


class LeaseOwner:
    """Stands in for the lease keeper: remembers what the watcher reported."""

    def __init__(self):
        self.lost = []

    def leaseLost(self, lease, reason):
        lease.gone = reason
        self.lost.append(reason)


def leased(deadline, disposition="seen"):
    """A watcher under node a's lease of alice/INBOX (3 s in the store), believed until deadline."""
    from oauthmail.cluster.keeper import FolderLease
    from oauthmail.testing.memory_leases import MemoryLeaseStore

    clock = Clock()
    leases = MemoryLeaseStore(clock)
    ledger = MemoryDeliveryLedger(clock, leases)
    (held,) = leases.heartbeat("a", "i1", [("alice", "INBOX")], 3.0).result.held
    owner = LeaseOwner()
    lease = FolderLease(held, deadline, 1.0, clock, owner)
    parts = setup(account=makeAccount(disposition), ledger=ledger, clock=clock)
    parts[0].lease = lease
    return (*parts, leases, owner)


def test_a_leased_watcher_writes_under_its_fence():
    """Under a held lease mail flows as usual, every ledger write fenced by its epoch."""
    watcher, server, tokens, ledger, sink, clock, leases, owner = leased(deadline=1000.0)
    server.add(b"one")
    watcher.start()
    assert sink.messages == [b"one"] and server.flags == {1: {b"\\Seen"}}
    assert ledger.rows[("alice", "INBOX", 1, 1)][1] == "disposed"
    assert watcher.status()["lease_epoch"] == 1
    watcher.stop()


def test_the_sink_confirms_the_lease_before_commit_and_only_under_one():
    """Under a lease the sink gets a beforeCommit that confirms it; alone, it gets None."""
    watcher, server, tokens, ledger, sink, clock, leases, owner = leased(deadline=5.0)
    server.add(b"one")
    watcher.start()
    (hook,) = sink.hooks
    assert hook is not None and sink.messages == [b"one"]
    clock.advance(4.5)  # within the lease's safety margin of its deadline
    with pytest.raises(LeaseLost):
        hook()
    watcher.stop()
    alone = setup()
    alone[1].add(b"one")
    alone[0].start()
    assert alone[4].hooks == [None]
    alone[0].stop()


def test_after_a_takeover_the_old_holder_delivers_and_disposes_nothing():
    """Another node took the folder: the old holder's write is refused, it stops, mail untouched."""
    watcher, server, tokens, ledger, sink, clock, leases, owner = leased(deadline=1000.0)
    server.add(b"one")
    watcher.start()
    clock.advance(4.0)  # the lease expired in the database (this node still believes in it)
    leases.heartbeat("b", "i2", [("alice", "INBOX")], 3.0)
    server.add(b"two")
    assert sink.messages == [b"one"]
    assert server.flags == {1: {b"\\Seen"}}
    assert watcher.state == "stopped"
    assert len(owner.lost) == 1 and "no longer valid" in owner.lost[0]
    assert ("alice", "INBOX", 1, 2) not in ledger.rows
    watcher.stop()


def test_a_paused_node_hands_nothing_to_the_sink_after_its_lease_ran_out():
    """Woken after its lease's time: no batch goes to the sink, nothing is flagged."""
    watcher, server, tokens, ledger, sink, clock, leases, owner = leased(deadline=5.0)
    server.add(b"one")
    watcher.start()
    clock.advance(10.0)  # paused: the lease ran out meanwhile
    server.add(b"two")
    assert sink.messages == [b"one"]
    assert server.flags == {1: {b"\\Seen"}}
    assert watcher.state == "stopped"
    assert "could not be renewed in time" in owner.lost[0]
    watcher.stop()


def test_a_lease_that_ran_out_disposes_nothing_left_from_before():
    """Delivered but not yet disposed, then the lease runs out: the server is not touched."""
    watcher, server, tokens, ledger, sink, clock, leases, owner = leased(deadline=5.0)
    server.add(b"one")
    server.failDispose = True  # the connection breaks before the \\Seen flag
    watcher.start()
    assert sink.messages == [b"one"] and server.flags == {}
    assert ledger.rows[("alice", "INBOX", 1, 1)][1] == "delivered"
    server.failDispose = False
    clock.advance(10.0)  # the reconnect comes after the lease's time
    assert server.flags == {}
    assert watcher.state == "stopped" and owner.lost
    watcher.stop()


def test_a_leased_account_watcher_runs_only_the_folders_it_holds():
    """leased=True: nothing starts by itself; hold starts a folder, drop and stop end it."""
    from oauthmail.cluster.keeper import FolderLease
    from oauthmail.cluster.records import Lease

    server = FakeServer()
    account = makeAccount()
    account = replace(
        account,
        imap=replace(account.imap, folders=(FolderConfig("INBOX"), FolderConfig("Archive"))),
    )
    clock = Clock()
    service = AccountWatcher(
        account,
        FakeTokens(server),
        MemoryDeliveryLedger(clock),
        FakeSink(),
        clock,
        connect=server.connect,
        leased=True,
    )
    server.add(b"hello")
    service.startService()
    assert [f["state"] for f in service.status()["folders"]] == ["stopped", "stopped"]
    lease = FolderLease(Lease("alice", "Archive", "n1", 4, 30.0), 1000.0, 10.0, clock, LeaseOwner())
    service.hold("Archive", lease)
    states = {f["folder"]: (f["state"], f["lease_epoch"]) for f in service.status()["folders"]}
    assert states == {"INBOX": ("stopped", None), "Archive": ("waiting", 4)}
    assert service.drop("Archive").called
    assert [f["state"] for f in service.status()["folders"]] == ["stopped", "stopped"]
    service.hold("Archive", lease)
    service.stopService()
    assert [f["state"] for f in service.status()["folders"]] == ["stopped", "stopped"]


def test_the_fenced_ledger_is_a_ledger():
    """FencedLedger keeps the IDeliveryLedger promise; without a lease it adds no fence."""
    from zope.interface.verify import verifyObject

    from oauthmail.imap.watcher.lease import FencedLedger
    from oauthmail.interfaces import IDeliveryLedger

    inner = MemoryDeliveryLedger()
    ledger = FencedLedger(inner, lambda: None)
    assert verifyObject(IDeliveryLedger, ledger)
    ledger.setFolderState("alice", "INBOX", 3, 9)
    assert inner.folders[("alice", "INBOX")] == (3, 9)
