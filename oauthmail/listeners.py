"""Listening ports bound before anything starts, their protocols attached once ready.

A daemon that cannot listen where its configuration says must stop before it
touches a mailbox: otherwise its IMAP watchers run while nobody can reach the
console or hand it mail, and its supervisor believes it started. So the
service binds every port first (:func:`bindEarly`, in ``privilegedStartService``
under twistd) and fails with one line naming the configuration key; the
factory that serves a port (:class:`LateFactory`) gets its real factory once
the store is open and the parts exist. A connection that arrives in between
is closed at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTCP
from twisted.internet.protocol import Factory, ServerFactory

__all__ = ["LateFactory", "StartupError", "bindEarly"]


class StartupError(Exception):
    """The daemon cannot start as configured; the message is one line naming the key."""


class LateFactory(ServerFactory):
    """Serves a port bound early: no protocol until :meth:`attach`, then the real factory's."""

    noisy = False

    def __init__(self, what: str = "oauthmail") -> None:
        self.target: Factory | None = None
        self.what = what

    def logPrefix(self) -> str:
        """Twisted's "... starting on PORT" line names this, not the class ``LateFactory``."""
        return self.what

    def attach(self, target: Factory) -> None:
        """From now on, connections are the real factory's."""
        target.doStart()
        self.target = target

    def buildProtocol(self, addr: IAddress) -> Any:
        if self.target is None:
            return None  # not ready yet: the connection is closed at once
        return self.target.buildProtocol(addr)

    def stopFactory(self) -> None:
        target, self.target = self.target, None
        if target is not None:
            target.doStop()


#: What each early-bound port serves, for Twisted's "... starting on PORT" line.
_LISTENERS = {"web.port": "console", "submission.port": "submission server"}


def bindEarly(
    reactor: IReactorTCP, key: str, interface: str, port: int
) -> tuple[IListeningPort, LateFactory]:
    """Listen on ``interface:port`` now; :class:`StartupError` naming ``key`` if it cannot."""
    factory = LateFactory(f"oauthmail {_LISTENERS.get(key, key)}")
    try:
        listening = reactor.listenTCP(port, factory, interface=interface)
    except CannotListenError as e:
        why = e.socketError
        reason = getattr(why, "strerror", None) or str(why)
        raise StartupError(f"{key}: cannot listen on {interface}:{port}: {reason}") from None
    return listening, factory
