"""What the local fakes of Microsoft Graph and the Gmail API share: tokens, faults, records.

:class:`MailAPIFake` is the common half of :class:`oauthmail.testing.graph.GraphFake`
and :class:`oauthmail.testing.gmail_api.GmailAPIFake`: it listens on loopback,
checks every bearer token (against the test OAuth provider's introspection, in
process, or a callable), keeps every message it accepted, and produces the
failures real APIs produce when a test asks for them (:meth:`failNext`,
:meth:`hangNext`, :meth:`dropNext`). Each fake adds its own routes and the
shapes of its answers.

Rules: faults are consumed in order, one per send request; a fault applies
before the token is even looked at (a test may want a 401 from a good token);
no access log (a URL may carry a secret); :meth:`stop` closes every
connection, held requests included.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.web import server
from twisted.web.resource import Resource

from oauthmail.testing.oauth.http import Site, page

__all__ = ["Fault", "MailAPIFake", "SentMessage", "TokenCheck", "notFound"]

#: ``token -> user`` (``None``: the token is not valid).
TokenCheck = Callable[[str], "str | None"]


@dataclass(frozen=True)
class SentMessage:
    """A message a fake accepted: for whom, its raw MIME bytes, the id it answered with."""

    user: str
    raw: bytes
    id: str
    route: str  # which endpoint took it ("sendMail", "send", "upload")

    @property
    def mailFrom(self) -> str:  # noqa: N802 - what oauthmail.testing.finalhop.SentFiler reads
        return self.user

    @property
    def data(self) -> bytes:
        return self.raw


@dataclass
class Fault:
    """One failure to produce for one send request.

    ``status``: answer with that error (the API's own shape, ``code`` as its
    error code, ``retry_after`` as ``Retry-After``). ``hang``: never answer.
    ``drop``: close the connection without an answer once the request is read.
    ``accept``: with ``hang``/``drop``, take the message first (the client
    cannot know: the case a Sent search is for).
    """

    status: int | None = None
    code: str | None = None
    message: str | None = None
    retry_after: str | None = None
    hang: bool = False
    drop: bool = False
    accept: bool = False


@dataclass
class _Faults:
    queue: list[tuple[Fault, int | None]] = field(default_factory=list)

    def take(self) -> Fault | None:
        if not self.queue:
            return None
        fault, times = self.queue[0]
        if times is not None:
            if times <= 1:
                self.queue.pop(0)
            else:
                self.queue[0] = (fault, times - 1)
        return fault


class MailAPIFake:
    """The shared half of the mail API fakes (see the module docstring).

    :param tokens: a :class:`~oauthmail.testing.provider.TestOAuthProvider`
        (its introspection decides, in process) or a ``token -> user`` callable.
    :param onAccept: called with each accepted :class:`SentMessage` before the
        answer goes out (may return a Deferred; e.g. a ``SentFiler`` that files
        it in a Dovecot Sent folder, as the real providers do).
    """

    #: The path every route hangs under (``/v1.0`` for Graph).
    prefix = ""

    def __init__(
        self,
        tokens: Any,
        *,
        onAccept: Callable[[SentMessage], Any] | None = None,
    ) -> None:
        if callable(getattr(tokens, "introspect", None)):
            provider = tokens
            self._check: TokenCheck = lambda token: _activeUser(provider.introspect(token))
        else:
            self._check = tokens
        self.onAccept = onAccept
        self.messages: list[SentMessage] = []
        #: Send requests seen (answered or not), faults included.
        self.attempts = 0
        self.hung: list[server.Request] = []
        self._faults = _Faults()
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []
        self._port: IListeningPort | None = None
        self._site: Site | None = None
        self.base_url = ""

    # -- life cycle ----------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        """Answer one request (each fake dispatches on method and path)."""
        raise NotImplementedError

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> str:
        """Listen now; return (and keep in ``base_url``) the URL to configure as ``base_url``."""
        self._site = Site(_Leaf(self.render), reactor)
        self._port = reactor.listenTCP(port, self._site, interface=interface)
        host = self._port.getHost()
        shown = f"[{host.host}]" if ":" in host.host else host.host
        self.base_url = f"http://{shown}:{host.port}{self.prefix}"
        return self.base_url

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and close every connection (hung requests included)."""
        port, site, self._port = self._port, self._site, None
        self.hung.clear()
        if port is None:
            return defer.succeed(None)
        waits = [defer.maybeDeferred(port.stopListening)]
        if site is not None:
            waits.append(site.closeAll())
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    # -- the test API ----------------------------------------------------------------

    def failNext(
        self,
        status: int,
        times: int | None = 1,
        *,
        retry_after: str | float | None = None,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``times`` send requests (``None``: all) with ``status``."""
        after = None if retry_after is None else _seconds(retry_after)
        self._faults.queue.append((Fault(status, code, message, after), times))

    def hangNext(self, times: int | None = 1, *, accept: bool = False) -> None:
        """Never answer the next ``times`` send requests (taking the message if ``accept``)."""
        self._faults.queue.append((Fault(hang=True, accept=accept), times))

    def dropNext(self, times: int | None = 1, *, accept: bool = False) -> None:
        """Close the connection of the next ``times`` send requests once read, no answer."""
        self._faults.queue.append((Fault(drop=True, accept=accept), times))

    def clearFaults(self) -> None:
        self._faults.queue.clear()

    def clear(self) -> None:
        """Forget the messages and attempts (not the faults)."""
        self.messages.clear()
        self.attempts = 0

    def whenReceived(self, count: int) -> defer.Deferred[None]:
        """Fires once ``count`` messages in all were accepted."""
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.messages) >= count:
            d.callback(None)
        else:
            self._waiters.append((count, d))
        return d

    def raws(self) -> list[bytes]:
        return [m.raw for m in self.messages]

    # -- for the fakes ----------------------------------------------------------------

    def user(self, request: server.Request) -> str | None:
        """The user of the request's bearer token, or ``None``."""
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._check(token.strip())

    def nextFault(self) -> Fault | None:
        self.attempts += 1
        return self._faults.take()

    def accept(self, user: str, raw: bytes, route: str) -> tuple[SentMessage, defer.Deferred[Any]]:
        """Keep a message; fire once ``onAccept`` is done with it."""
        message = SentMessage(user, raw, uuid.uuid4().hex[:16], route)
        self.messages.append(message)
        ready = [(n, d) for n, d in self._waiters if len(self.messages) >= n]
        self._waiters = [(n, d) for n, d in self._waiters if len(self.messages) < n]
        filed: defer.Deferred[Any] = defer.succeed(None)
        if self.onAccept is not None:
            filed = defer.maybeDeferred(self.onAccept, message)
        for _, d in ready:
            d.callback(None)
        return message, filed

    def applyFault(
        self, fault: Fault, request: server.Request, raw: Callable[[], tuple[str, bytes] | None]
    ) -> bool:
        """Hang or drop ``request`` as ``fault`` says (taking the message first if asked).

        ``raw()`` reads the message for ``accept`` (``(user, bytes)`` or ``None``).
        Returns True when the request was dealt with this way.
        """
        if not (fault.hang or fault.drop):
            return False
        if fault.accept:
            found = raw()
            if found is not None:
                self.accept(found[0], found[1], "faulted")
        if fault.hang:
            self.hung.append(request)
        else:
            request.transport.abortConnection()
        return True


class _Leaf(Resource):
    """Every path to one render function."""

    isLeaf = True

    def __init__(self, answer: Callable[[server.Request], Any]) -> None:
        super().__init__()
        self._answer = answer

    def render(self, request: server.Request) -> Any:
        return self._answer(request)


def notFound(request: server.Request) -> bytes:
    return page(request, 404, "Not found", "There is nothing here.")


def _activeUser(answer: dict[str, Any]) -> str | None:
    return answer.get("username") if answer.get("active") else None


def _seconds(value: str | float) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)
