"""Hostile peers on real loopback sockets: scripted IMAP and SMTP servers, bad token endpoints.

Issue 14's world: a server or provider that is broken or malicious in one way.
The unit tests (``tests/test_imap_hostile.py``, ``tests/test_esmtp_hostile.py``)
run one of these against one client; the daemon test
(``tests/integration/test_hostile_daemon.py``) runs one of each kind beside a
healthy account in a real ``twistd oauthmail``. Both use the same classes, so a
misbehaviour is written once.

Every peer counts its connections (and the token endpoints their requests), so
a test can compare "sessions" with the log lines they cost. IMAP and SMTP speak
implicit TLS when given server options (the daemon verifies certificates), or
plain TCP for the unit tests' ``allowCleartext`` clients. Token endpoints are
plain HTTP on loopback (the configuration allows ``http://127.0.0.1``).

Rules: these run on the test's reactor; nothing here blocks; every peer stops
with the connections it still holds (a hanging peer must not outlive its test).
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.interfaces import IListeningPort
from twisted.protocols import policies
from twisted.protocols.basic import LineOnlyReceiver
from twisted.web import resource, server

__all__ = [
    "CAPS",
    "CloseAfterSelect",
    "ExistsFlood",
    "FetchWithoutBody",
    "HostileFactory",
    "HostileServer",
    "HostileTokenEndpoint",
    "HugeLiteral",
    "LongerLiteral",
    "ScriptedIMAP",
    "StreamStopper",
    "World",
    "listenIMAP",
    "listenSMTP",
]

CAPS = b"IMAP4rev1 AUTH=XOAUTH2 SASL-IR IDLE UIDPLUS MOVE"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _listen(reactor: Any, factory: protocol.Factory, tlsOptions: Any) -> IListeningPort:
    """127.0.0.1, any free port; implicit TLS with ``tlsOptions``, else plain TCP."""
    if tlsOptions is None:
        return reactor.listenTCP(0, factory, interface="127.0.0.1")
    return reactor.listenSSL(0, factory, tlsOptions, interface="127.0.0.1")


# -- IMAP -------------------------------------------------------------------------------


class World:
    """What the scripted server knows: the mailbox, and the misbehaviour hooks tests override."""

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = dict(messages)
        self.connections: list[float] = []
        self.lost: list[float] = []
        self.commands: list[bytes] = []
        #: The connections still open (stopped with the listening port).
        self.open: set[ScriptedIMAP] = set()

    def greeting(self, server: ScriptedIMAP) -> None:
        server.write(b"* OK [CAPABILITY " + CAPS + b"] hostile test server\r\n")

    def select(self, server: ScriptedIMAP, tag: bytes) -> None:
        server.write(
            b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n" % len(self.messages)
            + tag
            + b" OK [READ-WRITE] done\r\n"
        )

    def search(self, server: ScriptedIMAP, tag: bytes, first: int) -> None:
        uids = b"".join(b" %d" % u for u in sorted(self.messages) if u >= first)
        server.write(b"* SEARCH" + uids + b"\r\n" + tag + b" OK done\r\n")

    def fetchBody(self, server: ScriptedIMAP, seq: int, uid: int) -> bytes:
        body = self.messages[uid]
        return b"* %d FETCH (UID %d RFC822.SIZE %d BODY[] {%d}\r\n%s)\r\n" % (
            seq,
            uid,
            len(body),
            len(body),
            body,
        )


def _uids(spec: bytes) -> list[int]:
    out: list[int] = []
    for part in spec.split(b","):
        a, _, b = part.partition(b":")
        out.extend(range(int(a), int(b or a) + 1))
    return out


class ScriptedIMAP(protocol.Protocol):
    """One connection of the scripted server; answers what :class:`World` says."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.buffer = b""
        self.idleTag: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def connectionMade(self) -> None:
        self.world.connections.append(time.monotonic())
        self.world.open.add(self)
        self.world.greeting(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.world.open.discard(self)
        self.world.lost.append(time.monotonic())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.line(line)

    def line(self, line: bytes) -> None:
        if self.idleTag is not None and line.upper() == b"DONE":
            self.write(self.idleTag + b" OK idle done\r\n")
            self.idleTag = None
            return
        tag, _, rest = line.partition(b" ")
        words = rest.split(b" ")
        command = words[0].upper()
        if command == b"UID":
            command = b"UID " + words[1].upper()
        self.world.commands.append(command)
        w = self.world
        if command == b"CAPABILITY":
            self.write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
        elif command in (b"AUTHENTICATE", b"NOOP", b"UID STORE", b"UID EXPUNGE"):
            self.write(tag + b" OK done\r\n")
        elif command == b"SELECT":
            w.select(self, tag)
        elif command == b"UID SEARCH":
            w.search(self, tag, int(words[3].split(b":")[0]))
        elif command == b"UID FETCH":
            uids = [u for u in _uids(words[2]) if u in w.messages]
            if rest.endswith(b"(UID RFC822.SIZE)"):
                out = b"".join(
                    b"* %d FETCH (UID %d RFC822.SIZE %d)\r\n" % (u, u, len(w.messages[u]))
                    for u in uids
                )
                self.write(out + tag + b" OK done\r\n")
            else:
                for u in uids:
                    self.write(w.fetchBody(self, u, u))
                if self.transport is not None and not self.transport.disconnecting:
                    self.write(tag + b" OK done\r\n")
        elif command == b"IDLE":
            self.idleTag = tag
            self.write(b"+ idling\r\n")
        elif command == b"LOGOUT":
            self.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
            self.transport.loseConnection()
        else:
            self.write(tag + b" BAD unknown\r\n")


class StreamStopper:
    """Stops a garbage stream when the connection goes (an IPushProducer on the transport)."""

    def __init__(self, loop: task.LoopingCall) -> None:
        self.loop = loop

    def stopProducing(self) -> None:
        if self.loop.running:
            self.loop.stop()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class HugeLiteral(World):
    """UID 1 is announced as a ``{999999999999}`` literal; garbage streams while the link is up."""

    def fetchBody(self, server: ScriptedIMAP, seq: int, uid: int) -> bytes:
        if uid != 1:
            return super().fetchBody(server, seq, uid)
        stream = task.LoopingCall(lambda: server.write(b"\0" * 256 * 1024))
        stream.clock = _reactor()
        stream.start(0.01, now=False).addErrback(lambda f: None)
        server.transport.registerProducer(StreamStopper(stream), True)
        return b"* 1 FETCH (UID 1 RFC822.SIZE 10 BODY[] {999999999999}\r\n"


class ExistsFlood(World):
    """``flood`` bytes of untagged ``* 7 EXISTS`` during every ``UID SEARCH``, then the answer."""

    def __init__(self, messages: dict[int, bytes], flood: int) -> None:
        super().__init__(messages)
        self.flood = flood
        #: Bytes of EXISTS lines written so far, over all sessions.
        self.flooded = 0

    def search(self, server: ScriptedIMAP, tag: bytes, first: int) -> None:
        chunk = b"* 7 EXISTS\r\n" * (64 * 1024 // 12)
        sent = [0]

        def tick() -> None:
            if server.transport is None or server.transport.disconnected:
                loop.stop()
                return
            if sent[0] >= self.flood:
                loop.stop()
                World.search(self, server, tag, first)
                return
            server.write(chunk)
            sent[0] += len(chunk)
            self.flooded += len(chunk)

        loop = task.LoopingCall(tick)
        loop.clock = _reactor()
        loop.start(0.005)


class LongerLiteral(World):
    """Every body is announced as ``{5}`` and followed by more than five bytes."""

    def fetchBody(self, server: ScriptedIMAP, seq: int, uid: int) -> bytes:
        return b"* %d FETCH (UID %d RFC822.SIZE 5 BODY[] {5}\r\nhello secret-words)\r\n" % (
            seq,
            uid,
        )


class CloseAfterSelect(World):
    """Answers SELECT, then closes the connection: every session, forever."""

    def select(self, server: ScriptedIMAP, tag: bytes) -> None:
        World.select(self, server, tag)
        server.transport.loseConnection()


class FetchWithoutBody(World):
    """UID 1 is answered with flags only, never a body; the others are served normally."""

    def fetchBody(self, server: ScriptedIMAP, seq: int, uid: int) -> bytes:
        if uid == 1:
            return b"* %d FETCH (UID 1 FLAGS (\\Seen))\r\n" % seq
        return super().fetchBody(server, seq, uid)


class _IMAPFactory(protocol.ServerFactory):
    noisy = False

    def __init__(self, world: World) -> None:
        self.world = world

    def buildProtocol(self, addr: Any) -> ScriptedIMAP:
        p = ScriptedIMAP(self.world)
        p.factory = self
        return p


class _ClosingPort:
    """A listening port that also closes the connections its peer still holds when stopped."""

    def __init__(self, port: IListeningPort, connections: Any) -> None:
        self._port = port
        self._connections = connections

    def getHost(self) -> Any:
        return self._port.getHost()

    def stopListening(self) -> defer.Deferred[None]:
        for connection in list(self._connections()):
            if connection.transport is not None:
                connection.transport.abortConnection()
        return defer.maybeDeferred(self._port.stopListening)


def listenIMAP(world: World, tlsOptions: Any = None, reactor: Any = None) -> Any:
    """Serve ``world`` on 127.0.0.1 (implicit TLS with ``tlsOptions``); ``.stopListening()``."""
    port = _listen(reactor or _reactor(), _IMAPFactory(world), tlsOptions)
    return _ClosingPort(port, lambda: world.open)


# -- SMTP -------------------------------------------------------------------------------


class HostileServer(LineOnlyReceiver):
    """Greets, then does what ``behaviour`` says; records every line it receives.

    ``data-250`` (any behaviour not named below) answers ``DATA`` with ``250``
    instead of ``354``; ``endless`` and ``endless-long-lines`` send a multi-line
    greeting that never ends; ``huge-line`` a 1 MB greeting line; ``trickle``
    one greeting line a second.
    """

    MAX_LENGTH = 1 << 20

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.received: list[bytes] = []
        self.loop: task.LoopingCall | None = None

    def _stream(self, data: bytes, every: float) -> None:
        self.loop = task.LoopingCall(self.transport.write, data)
        self.loop.clock = _reactor()
        self.loop.start(every)

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.factory.open.add(self)
        if self.behaviour == "endless":
            self._stream(b"220-more and more\r\n" * 200, 0.001)
        elif self.behaviour == "endless-long-lines":
            self._stream(b"220-" + b"w" * 1800 + b"\r\n", 0.001)
        elif self.behaviour == "huge-line":
            self.transport.write(b"220 " + b"x" * (1 << 20) + b"\r\n")
        elif self.behaviour == "trickle":
            self._stream(b"220-one line a second\r\n", 1.0)
        else:
            self.sendLine(b"220 mail.test ESMTP hostile")

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open.discard(self)
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if not self.factory.lost.called:
            self.factory.lost.callback(None)

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line)
        command = line.split(b" ", 1)[0].upper()
        if command == b"EHLO":
            self.sendLine(b"250-mail.test")
            self.sendLine(b"250 AUTH XOAUTH2")
        elif command == b"AUTH":
            self.sendLine(b"334 ")
        elif self.received[-2:-1] == [b"AUTH XOAUTH2"]:
            self.sendLine(b"235 2.7.0 ok")
        elif command in (b"MAIL", b"RCPT", b"RSET"):
            self.sendLine(b"250 ok")
        elif command == b"DATA":
            self.sendLine(b"250 2.0.0 thanks, all done")  # the lie: it should be 354
        elif command == b"QUIT":
            self.sendLine(b"221 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"250 ok")  # anything else, e.g. a body line, is "fine" too


class HostileFactory(protocol.ServerFactory):
    """Builds :class:`HostileServer` connections; ``lost`` fires when the first one closes."""

    noisy = False

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.connections: list[HostileServer] = []
        self.open: set[HostileServer] = set()
        self.lost: defer.Deferred[None] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> HostileServer:
        p = HostileServer(self.behaviour)
        p.factory = self
        return p


def listenSMTP(factory: HostileFactory, tlsOptions: Any, reactor: Any = None) -> Any:
    """Serve ``factory`` on 127.0.0.1 with implicit TLS; ``.stopListening()`` closes all."""
    port = _listen(reactor or _reactor(), factory, tlsOptions)
    return _ClosingPort(port, lambda: factory.open)


# -- token endpoints --------------------------------------------------------------------

#: What a :class:`HostileTokenEndpoint` does with each ``POST /token``.
TOKEN_BEHAVIOURS = ("huge-expiry", "echo", "hang", "retry-after")


class _Parked:
    """A request the hanging endpoint holds; ``waiting`` until answered or disconnected."""

    def __init__(self, request: Any, body: bytes) -> None:
        self.request = request
        self.body = body
        self.waiting = True
        request.notifyFinish().addBoth(self._ended)

    def _ended(self, _: object) -> None:
        self.waiting = False


class _TokenResource(resource.Resource):
    isLeaf = True

    def __init__(self, endpoint: HostileTokenEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render_POST(self, request: Any) -> bytes | int:  # noqa: N802 - twisted.web's name
        endpoint = self.endpoint
        endpoint.requests.append(time.monotonic())
        body = request.content.read()
        if endpoint.behaviour == "hang":
            endpoint.hung.append(_Parked(request, body))
            return server.NOT_DONE_YET
        return endpoint.answer(request, body)


class _QuietSite(server.Site):
    """No access log: a token endpoint's URL or body may carry secrets."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class _CountingFactory(policies.WrappingFactory):
    """Counts connections; ``protocols`` holds the open ones (closed when the endpoint stops)."""

    noisy = False

    def __init__(self, endpoint: HostileTokenEndpoint, site: server.Site) -> None:
        super().__init__(site)
        self.endpoint = endpoint

    def buildProtocol(self, addr: Any) -> Any:
        self.endpoint.connections.append(time.monotonic())
        return super().buildProtocol(addr)


class HostileTokenEndpoint:
    """A token endpoint on http://127.0.0.1 that misbehaves as ``behaviour`` says.

    ``huge-expiry``: a valid answer with ``expires_in: 1e300``. ``echo``: 400
    ``invalid_request`` whose ``error_description`` repeats the request (its
    ``Authorization`` header and form body: refresh token and client secret).
    ``hang``: never answers. ``retry-after``: 503 with ``Retry-After: 999999``.
    """

    def __init__(self, behaviour: str) -> None:
        if behaviour not in TOKEN_BEHAVIOURS:
            raise ValueError(f"unknown token endpoint behaviour {behaviour!r}")
        self.behaviour = behaviour
        self.requests: list[float] = []
        self.connections: list[float] = []
        self.hung: list[Any] = []
        self.issued = 0
        self._factory = _CountingFactory(self, _QuietSite(_TokenResource(self)))
        self._port: IListeningPort | None = None
        self.url = ""

    def answer(self, request: Any, body: bytes) -> bytes:
        """Set the status and headers of ``request`` and return the body to answer."""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if self.behaviour == "retry-after":
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"999999")
            return json.dumps({"error": "temporarily_unavailable"}).encode()
        if self.behaviour == "echo":
            # Everything the client sent, secrets included, as providers sometimes do.
            auth = request.getHeader(b"authorization") or b""
            echoed = f"bad request: {auth.decode('latin-1')} {body.decode('latin-1')}"
            request.setResponseCode(400)
            return json.dumps({"error": "invalid_request", "error_description": echoed}).encode()
        self.issued += 1  # huge-expiry
        return json.dumps(
            {
                "access_token": f"huge-expiry-access-{self.issued}",
                "token_type": "Bearer",
                "expires_in": 1e300,
                "refresh_token": f"huge-expiry-refresh-{self.issued}",
                "scope": "mail",
            }
        ).encode()

    def become(self, behaviour: str) -> None:
        """Behave as ``behaviour`` from now on; hung requests get that answer now."""
        if behaviour not in TOKEN_BEHAVIOURS:
            raise ValueError(f"unknown token endpoint behaviour {behaviour!r}")
        self.behaviour = behaviour
        if behaviour == "hang":
            return
        hung, self.hung = self.hung, []
        for parked in hung:
            if parked.waiting:
                parked.request.write(self.answer(parked.request, parked.body))
                parked.request.finish()

    def listen(self, reactor: Any = None) -> HostileTokenEndpoint:
        self._port = (reactor or _reactor()).listenTCP(0, self._factory, interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self._port.getHost().port}/token"
        return self

    def stop(self) -> defer.Deferred[None]:
        for connection in list(self._factory.protocols):
            connection.transport.abortConnection()
        port, self._port = self._port, None
        return defer.succeed(None) if port is None else defer.maybeDeferred(port.stopListening)
