"""A bound on the header section of every HTTP answer, which Twisted's client does not have.

Twisted's HTTP client keeps every header line of an answer (each line is
limited, their number is not), so a token endpoint, an API or a webhook
receiver that sends header lines without end would fill the daemon's memory
before any body limit (:func:`~oauthmail.http.body.readBounded`) is reached.

:class:`HeaderBoundEndpoint` wraps a client endpoint (outside TLS, so it
counts plaintext) and watches the bytes as they arrive, without parsing
anything Twisted parses: from the start of an answer to the blank line that
ends its header section (an interim ``1xx`` answer and the one after it count
as one), at most :data:`MAX_RESPONSE_HEADERS` bytes; the next request on the
connection starts the count again. More than that and the connection is dropped, and the
request fails with :class:`ResponseHeadersTooLargeError`, which names the bound.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IAddress, IProtocol, IStreamClientEndpoint, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["MAX_RESPONSE_HEADERS", "HeaderBoundEndpoint", "ResponseHeadersTooLargeError"]

#: Bytes an answer's status line and header lines may take together (real
#: servers send a few KiB; Node.js refuses more than 16 KiB).
MAX_RESPONSE_HEADERS = 64 * 1024

#: The blank line that ends a header section (Twisted accepts bare LF too).
_END = re.compile(rb"\r?\n\r?\n")


class ResponseHeadersTooLargeError(Exception):
    """The server sent a longer header section than :data:`MAX_RESPONSE_HEADERS`."""


class _HeaderBound(Protocol):
    """Counts each answer's header bytes; drops the connection past the bound.

    It stands between the transport and the HTTP client on the way in only:
    the client is connected to the transport itself, so its writes, producer
    calls and pauses (several per request, every token refresh) go straight
    there, not through a wrapper as with Twisted's ``ProtocolWrapper``.
    """

    def __init__(self, wrappedProtocol: IProtocol, limit: int) -> None:
        self.wrappedProtocol = wrappedProtocol
        self._limit = limit
        self._counting = True
        self._size = 0
        self._tail = b""  # the last bytes seen, to find a blank line split across reads
        self._start = b""  # the first bytes of the answer: its status code
        self._refused: ResponseHeadersTooLargeError | None = None

    def makeConnection(self, transport: ITransport) -> None:
        super().makeConnection(transport)
        self.wrappedProtocol.makeConnection(transport)

    def logPrefix(self) -> str:
        """The client's own, so that Twisted's log lines for the connection name it."""
        prefix = getattr(self.wrappedProtocol, "logPrefix", None)
        return prefix() if prefix is not None else self.wrappedProtocol.__class__.__name__

    def requestStarts(self) -> None:
        """A request begins: the next bytes in are the header section of its answer."""
        self._counting = True
        self._size = 0
        self._tail = self._start = b""

    def dataReceived(self, data: bytes) -> None:
        if self._counting:
            if (
                # The usual case, in three C calls: a whole header section at the
                # start of one read, and not an interim (1xx) answer.
                not self._size
                and not self._start
                and 0 <= data.find(b"\r\n\r\n") <= self._limit - 4
                and data[9:10] != b"1"
            ):
                self._counting = False
            elif not self._count(data):
                if self._refused is None:
                    self._refused = ResponseHeadersTooLargeError(
                        f"the server sent more than {self._limit // 1024} KiB of response headers"
                    )
                    self.transport.abortConnection()
                return
        self.wrappedProtocol.dataReceived(data)

    def _count(self, data: bytes) -> bool:
        """Follow ``data`` through header sections; False once one is over the bound."""
        if self._refused is not None:
            return False
        pos = 0
        while pos < len(data):
            if len(self._start) < 12:
                self._start += data[pos : pos + 12 - len(self._start)]
            end = -1
            if self._tail:  # a blank line split between two reads
                found = _END.search(self._tail + data[pos : pos + 3])
                if found is not None:
                    end = pos + found.end() - len(self._tail)
            if end < 0:
                found = _END.search(data, pos)
                if found is None:
                    self._size += len(data) - pos
                    self._tail = (self._tail + data[pos:])[-3:]
                    return self._size <= self._limit
                end = found.end()
            self._size += end - pos
            if self._size > self._limit:
                return False
            pos = end
            self._tail = b""
            if self._start[9:10] != b"1":
                self._counting = False  # the body follows: not counted
                return True
            self._start = b""  # an interim answer: counted with the one after
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._refused is not None:
            reason = Failure(self._refused)
        self.connected = 0
        self.wrappedProtocol.connectionLost(reason)


class _BoundFactory(Factory):
    """Builds the client's protocol with its bound in front; starts and stops with it."""

    def __init__(self, wrappedFactory: Factory, limit: int) -> None:
        self.wrappedFactory = wrappedFactory
        self.limit = limit
        self.noisy = getattr(wrappedFactory, "noisy", False)

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress) -> _HeaderBound | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        bound = _HeaderBound(wrapped, self.limit)
        bound.factory = self
        return bound


@implementer(IStreamClientEndpoint)
class HeaderBoundEndpoint:
    """``endpoint``, with each answer's header section bounded (see the module docstring).

    ``connect`` fires with the protocol ``factory`` built, as the wrapped
    endpoint would: the HTTP client never sees the wrapper.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, limit: int = MAX_RESPONSE_HEADERS) -> None:
        self._endpoint = endpoint
        self._limit = limit

    def connect(self, protocolFactory: Factory) -> defer.Deferred[Any]:
        wrapping = _BoundFactory(protocolFactory, self._limit)
        return self._endpoint.connect(wrapping).addCallback(_startsCount)


def _startsCount(wrapper: _HeaderBound) -> Any:
    """The client protocol, whose ``request`` now starts the count of each answer.

    Not a write: a request's body may still be going out when its answer
    comes (a server that answers early), and its bytes are no new request.
    ``request`` is the public method ``Agent`` calls for every request on a
    connection (``HTTP11ClientProtocol.request``).
    """
    client = wrapper.wrappedProtocol
    request = getattr(client, "request", None)
    if request is None:  # not an HTTP client: its first answer is counted, as ever
        return client

    def counted(*args: Any, **kwargs: Any) -> Any:
        wrapper.requestStarts()
        return request(*args, **kwargs)

    client.request = counted
    return client
