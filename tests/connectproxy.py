"""A small HTTP CONNECT proxy on loopback, for the proxy tests.

It reads one ``CONNECT host:port`` request (bounded), optionally checks
``Proxy-Authorization``, resolves the host through its own table (so a test
can use a name, ``mail.test``, that only the proxy knows) and relays bytes
both ways. It records every tunnel it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint


@dataclass
class Tunnel:
    target: str
    authorization: str | None


@dataclass
class ConnectProxy:
    """The proxy's settings and what it saw."""

    hosts: dict[str, str] = field(default_factory=dict)
    credentials: str | None = None  # the Proxy-Authorization value it demands
    refuse: int | None = None  # answer every CONNECT with this status
    tunnels: list[Tunnel] = field(default_factory=list)
    port: object = None

    def listen(self) -> int:
        factory = protocol.Factory.forProtocol(lambda: _ProxyProtocol(self))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self.port.getHost().port

    def stop(self) -> defer.Deferred:
        return defer.maybeDeferred(self.port.stopListening)


class _Relay(protocol.Protocol):
    def __init__(self, peer: _ProxyProtocol) -> None:
        self.peer = peer

    def connectionMade(self) -> None:
        self.peer.relayReady(self)

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason=None) -> None:
        self.peer.transport.loseConnection()


class _ProxyProtocol(protocol.Protocol):
    def __init__(self, proxy: ConnectProxy) -> None:
        self.proxy = proxy
        self.buffer = b""
        self.relay: _Relay | None = None
        self.pending = b""

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.relay.transport.write(data)
            return
        if self.buffer is None:  # waiting for the upstream connection
            self.pending += data
            return
        self.buffer += data
        if len(self.buffer) > 8192:
            self.transport.loseConnection()
            return
        if b"\r\n\r\n" not in self.buffer:
            return
        head, rest = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        auth = headers.get("proxy-authorization")
        self.proxy.tunnels.append(Tunnel(target, auth))
        if method != "CONNECT":
            self.answer(405, "Method Not Allowed")
            return
        if self.proxy.refuse is not None:
            self.answer(self.proxy.refuse, "Refused")
            return
        if self.proxy.credentials is not None and auth != self.proxy.credentials:
            self.answer(407, "Proxy Authentication Required")
            return
        host, _, port = target.rpartition(":")
        host = self.proxy.hosts.get(host.strip("[]"), host.strip("[]"))
        self.buffer = None
        self.pending = rest
        d = TCP4ClientEndpoint(reactor, host, int(port)).connect(
            protocol.Factory.forProtocol(lambda: _Relay(self))
        )
        d.addErrback(lambda _: self.answer(502, "Bad Gateway"))

    def relayReady(self, relay: _Relay) -> None:
        self.relay = relay
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self.pending:
            relay.transport.write(self.pending)
            self.pending = b""

    def answer(self, code: int, reason: str) -> None:
        self.transport.write(f"HTTP/1.1 {code} {reason}\r\nContent-Length: 0\r\n\r\n".encode())
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self.relay is not None:
            self.relay.transport.loseConnection()
