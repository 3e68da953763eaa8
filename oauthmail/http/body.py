"""Request bodies that can be sent again, and answers read whole into a bounded buffer.

A request may be sent twice (a refreshed token, a redirect that keeps the
method) only if its body can be produced again: :class:`BytesBody` can, and
says whether its last attempt was handed to the connection in full — what
tells "the answer was lost" (the server may have acted) from "the request
never went out". Twisted's own producers (``FileBodyProducer``) cannot be
replayed; callers using them get no retry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from twisted.internet import defer
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

__all__ = [
    "Answer",
    "BytesBody",
    "HeaderMap",
    "IReplayableBody",
    "IncompleteAnswer",
    "ResponseTooLarge",
    "discardBody",
    "readBounded",
]


class IReplayableBody(IBodyProducer):
    """A body producer that can make a fresh copy of itself for another attempt."""

    def replay():
        """A new producer of the same bytes (the same :class:`Transmission`)."""


class _Transmission:
    """Whether the latest attempt of a body was handed to the connection in full."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False


@implementer(IReplayableBody)
class BytesBody:
    """A request body of known bytes; ``replay()`` makes another attempt's producer."""

    def __init__(self, data: bytes, transmission: _Transmission | None = None) -> None:
        self.data = data
        self.length = len(data)
        self._transmission = transmission if transmission is not None else _Transmission()

    def __repr__(self) -> str:
        return f"<BytesBody {self.length} bytes>"

    @property
    def written(self) -> bool:
        """The latest attempt's bytes were all handed to the connection."""
        return self._transmission.complete

    def replay(self) -> BytesBody:
        return BytesBody(self.data, self._transmission)

    def startProducing(self, consumer: IConsumer) -> defer.Deferred[None]:
        self._transmission.complete = False
        consumer.write(self.data)
        self._transmission.complete = True
        return defer.succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@dataclass(frozen=True)
class Answer:
    """A complete HTTP answer: status, headers (lower-case names) and body.

    Its ``repr`` never shows the body: a token answer's body is secret.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def __repr__(self) -> str:
        return f"<Answer {self.status} {len(self.body)} bytes>"


class ResponseTooLarge(Exception):  # noqa: N818 - reads better where it is raised
    """An answer body grew past its cap; the connection was dropped."""


class IncompleteAnswer(Exception):  # noqa: N818
    """The connection ended in the middle of an answer body."""


class _BoundedReader(Protocol):
    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(ResponseTooLarge(f"answer larger than {self._limit} bytes"))
            self.transport.stopProducing()
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self._finished.called:
            return
        if reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._chunks))
        else:
            self._finished.errback(
                IncompleteAnswer(f"answer cut short: {reason.getErrorMessage()}")
            )


def readBounded(response: IResponse, limit: int) -> defer.Deferred[bytes]:
    """The whole body of ``response``; fails with :class:`ResponseTooLarge` past ``limit``."""
    reader: _BoundedReader | None = None

    def cancel(d: defer.Deferred[bytes]) -> None:
        if reader is not None and reader.transport is not None:
            reader.transport.stopProducing()

    finished: defer.Deferred[bytes] = defer.Deferred(cancel)
    reader = _BoundedReader(finished, limit)
    response.deliverBody(reader)
    return finished


def discardBody(response: IResponse, limit: int = 64 * 1024) -> defer.Deferred[None]:
    """Read and drop a body we will not use (a small one keeps the connection reusable)."""
    d = readBounded(response, limit)
    d.addBoth(lambda _: None)
    return d


class HeaderMap(Mapping[str, str]):
    """Response headers by lower-case name, repeated ones joined with ``", "``.

    Converted on first look: most answers (a token refresh's) are read for
    their body only, and building the dictionary for each was work nobody used.
    """

    __slots__ = ("_raw", "_headers")

    def __init__(self, raw: Headers) -> None:
        self._raw = raw
        self._headers: dict[str, str] | None = None

    def _converted(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {
                name.decode("latin-1").lower(): ", ".join(v.decode("latin-1") for v in values)
                for name, values in self._raw.getAllRawHeaders()
            }
        return self._headers

    def __getitem__(self, name: str) -> str:
        return self._converted()[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._converted())

    def __len__(self) -> int:
        return len(self._converted())

    def __repr__(self) -> str:
        return f"<HeaderMap {sorted(self._converted())}>"
