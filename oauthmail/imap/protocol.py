"""The IMAP client protocol: OAuth 2.0 authentication and IDLE on top of Twisted's client.

Twisted's ``IMAP4Client.authenticate`` base64-encodes SASL responses with
``encodebytes``, which breaks every real XOAUTH2/OAUTHBEARER response into two
lines, and real servers (Dovecot, Gmail) then reject the token. It also cannot tell
"the token was refused, refresh it" from "the token endpoint behind the server is
down". :class:`OAuthIMAP4Client` drives the whole ``AUTHENTICATE`` exchange itself
(one line, SASL-IR when offered), answers the error continuation correctly, and
fails with a typed :class:`IMAPAuthenticationError` a watcher can act on.

It also adds IDLE (RFC 2177), which the stock client lacks, and turns an untagged
``BYE`` (``Session invalidated - AccessTokenExpired``) into :class:`IMAPServerBye`
so a watcher knows to reconnect with a fresh token.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.mail.imap4 import (
    Command,
    IMAP4Client,
    IMAP4Exception,
    NoSupportedAuthentication,
)
from twisted.python.failure import Failure

from oauthmail import sasl
from oauthmail.secret import plain, scrub

__all__ = [
    "CleartextAuthenticationRefused",
    "IMAPAuthenticationError",
    "IMAPServerBye",
    "IdleEvent",
    "IdleSession",
    "OAuthIMAP4Client",
]

_log = Logger()


class IMAPAuthenticationError(IMAP4Exception):
    """The server refused an OAuth ``AUTHENTICATE``.

    ``token_rejected``: the token itself was refused (a 400/401/``invalid_token``
    error challenge or ``[AUTHENTICATIONFAILED]``): refresh it once and retry.
    ``temporary``: the server could not check the token right now (``[UNAVAILABLE]``,
    e.g. Dovecot's token endpoint is down): retry later, keep the token.
    ``server_error``: the parsed error challenge, if the server sent one.
    The message quotes the server, never the token.
    """

    def __init__(
        self,
        message: str,
        server_error: dict[str, Any] | None = None,
        token_rejected: bool = False,
        temporary: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.server_error = server_error
        self.token_rejected = token_rejected
        self.temporary = temporary

    def __str__(self) -> str:
        return self.message


class CleartextAuthenticationRefused(IMAP4Exception):
    """Authentication was asked for on a connection that is not protected by TLS."""


class IMAPServerBye(IMAP4Exception):
    """The server said ``BYE`` and closed the connection.

    ``token_expired`` is True for Exchange Online's
    ``Session invalidated - AccessTokenExpired``: reconnect with a fresh token.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.token_expired = "accesstokenexpired" in text.replace(" ", "").lower()

    def __str__(self) -> str:
        return f"server said BYE: {self.text}"


@dataclass(frozen=True)
class IdleEvent:
    """One untagged response seen while idling.

    ``kind`` is ``"EXISTS"``, ``"EXPUNGE"`` (with ``number``) or ``"BYE"`` (with
    ``text``).
    """

    kind: str
    number: int | None = None
    text: str = ""


class _OAuthCommand(Command):
    """An ``AUTHENTICATE`` command whose ``repr`` hides the initial response."""

    def __repr__(self) -> str:
        return f"<imap4.Command {self.command!r} <secret>>"


def _words(line: bytes | str) -> str:
    if isinstance(line, bytes):
        return line.decode("utf-8", "replace")
    return str(line)


def _parseIdleEvent(rest: bytes) -> IdleEvent | None:
    """An :class:`IdleEvent` from an untagged response (without ``* ``), or None."""
    parts = rest.split(None, 2)
    if not parts:
        return None
    if parts[0].upper() == b"BYE":
        return IdleEvent("BYE", text=_words(rest[3:].strip()))
    if len(parts) >= 2 and parts[0].isdigit():
        kind = parts[1].upper()
        if kind in (b"EXISTS", b"EXPUNGE"):
            return IdleEvent(kind.decode("ascii"), number=int(parts[0]))
    return None


class _AuthExchange:
    """The client side of one ``AUTHENTICATE`` exchange (its continuation handler)."""

    def __init__(
        self, client: OAuthIMAP4Client, mechanism: bytes, response: bytes, sentInitial: bool
    ) -> None:
        self.client = client
        self.mechanism = mechanism
        self.response = response
        self.sentInitial = sentInitial
        self.answeredError = False
        self.serverError: dict[str, Any] | None = None

    def continuation(self, rest: bytes) -> None:
        """Answer one ``+`` line: initial response, error response, then cancel."""
        if not self.sentInitial:
            self.sentInitial = True
            self.client.sendLine(self.response)
        elif not self.answeredError:
            self.answeredError = True
            self.serverError = sasl.parseErrorChallenge(rest)
            self.client.sendLine(base64.b64encode(sasl.errorResponse(self.mechanism)))
        else:
            # A third round is not part of either mechanism: cancel (RFC 3501 6.2.2).
            self.client.sendLine(b"*")


class IdleSession:
    """One IDLE command in progress; obtained from :meth:`OAuthIMAP4Client.idle`."""

    def __init__(self, client: OAuthIMAP4Client, onEvent: Callable[[IdleEvent], object]) -> None:
        self.client = client
        self.onEvent = onEvent
        self.command: Command | None = None
        self.started = False
        self.doneSent = False
        self.doneRequested = False
        self.ended = False
        self._startD: defer.Deferred[IdleSession] = defer.Deferred()
        self._endResult: Any = None
        self._observers: list[defer.Deferred[None]] = []

    def whenEnded(self) -> defer.Deferred[None]:
        """Fire (with None) when the tagged OK ends IDLE; fail if it ends any other way.

        Failures: :class:`IMAPServerBye` (reconnect), ``ConnectionLost``, or an
        ``IMAP4Exception`` for a ``NO``/``BAD``.
        """
        d: defer.Deferred[None] = defer.Deferred()
        if self.ended:
            self._fire(d)
        else:
            self._observers.append(d)
        return d

    def done(self) -> defer.Deferred[None]:
        """Send ``DONE`` (as soon as the server's ``+`` came) and wait for the tagged OK."""
        if not self.ended:
            if self.started:
                self._sendDone()
            else:
                self.doneRequested = True
        return self.whenEnded()

    def _sendDone(self) -> None:
        if not self.doneSent:
            self.doneSent = True
            self.client.sendLine(b"DONE")

    def _fire(self, d: defer.Deferred[None]) -> None:
        if isinstance(self._endResult, Failure):
            d.errback(self._endResult)
        else:
            d.callback(None)

    def _continuation(self, rest: bytes) -> None:
        if self.started:
            return
        self.started = True
        if self.doneRequested:
            self._sendDone()
        self._startD.callback(self)

    def _event(self, event: IdleEvent) -> None:
        try:
            self.onEvent(event)
        except Exception:
            _log.failure("IDLE event handler failed for {kind}", kind=event.kind)

    def _finished(self, result: Any) -> None:
        self.ended = True
        if self.client._idle is self:
            self.client._idle = None
        self._endResult = result if isinstance(result, Failure) else None
        if not self.started:
            self.started = True
            if isinstance(result, Failure):
                self._startD.errback(result)
                return
            self._startD.callback(self)
        observers, self._observers = self._observers, []
        for d in observers:
            self._fire(d)


class OAuthIMAP4Client(IMAP4Client):
    """``IMAP4Client`` with OAuth 2.0 ``AUTHENTICATE``, IDLE and ``BYE`` reporting.

    ``allow_cleartext=True`` lets authentication run on a transport without TLS;
    only tests should set it.
    """

    def __init__(self, contextFactory: Any = None, allow_cleartext: bool = False) -> None:
        super().__init__(contextFactory)
        self.allow_cleartext = allow_cleartext
        #: The text of the last untagged ``BYE`` (``None`` if none came).
        self.byeText: str | None = None
        self._idle: IdleSession | None = None

    # -- authentication -------------------------------------------------------

    def _refuseCleartext(self) -> Failure | None:
        if self.allow_cleartext or ISSLTransport.providedBy(self.transport):
            return None
        return Failure(
            CleartextAuthenticationRefused(
                "refusing to send an OAuth token over a connection without TLS "
                "(use implicit TLS or STARTTLS first)"
            )
        )

    def authenticateOAuth(
        self,
        mechanism: str | bytes,
        user: str,
        token: sasl.TokenLike,
        host: str | None = None,
        port: int | None = None,
    ) -> defer.Deferred[dict[bytes, Any]]:
        """Authenticate with ``XOAUTH2`` or ``OAUTHBEARER`` and the access ``token``.

        Fires with the capabilities fetched again after success (they change once
        authenticated), or fails with :class:`IMAPAuthenticationError`,
        :class:`CleartextAuthenticationRefused`, ``NoSupportedAuthentication`` (the
        server does not offer the mechanism) or ``ValueError`` (unusable input).
        """
        try:
            mech = sasl.normaliseMechanism(mechanism)
            raw = sasl.initialResponse(mech, user, token, host, port)
        except (TypeError, ValueError) as e:
            return defer.fail(e)
        refused = self._refuseCleartext()
        if refused is not None:
            return defer.fail(refused)
        response = base64.b64encode(raw)
        secrets = (plain(token), response.decode("ascii"))

        d = self.getCapabilities()
        d.addCallback(self._cbOAuthCapabilities, mech, response, secrets)
        return d

    def _cbOAuthCapabilities(
        self, caps: dict[bytes, Any], mech: bytes, response: bytes, secrets: tuple[str, ...]
    ) -> defer.Deferred[dict[bytes, Any]]:
        caps = caps or {}
        offered = [a.upper() for a in (caps.get(b"AUTH") or ()) if a]
        if mech not in offered:
            return defer.fail(NoSupportedAuthentication(offered, [mech]))
        refused = self._refuseCleartext()
        if refused is not None:
            return defer.fail(refused)
        saslIR = b"SASL-IR" in caps
        exchange = _AuthExchange(self, mech, response, sentInitial=saslIR)
        args = mech + b" " + response if saslIR else mech
        d = self.sendCommand(_OAuthCommand(b"AUTHENTICATE", args, (), exchange.continuation))
        d.addCallbacks(
            self._cbOAuthAuthenticated,
            self._ebOAuthAuthenticate,
            errbackArgs=(exchange, secrets),
        )
        return d

    def _cbOAuthAuthenticated(self, result: object) -> defer.Deferred[dict[bytes, Any]]:
        self.state = "auth"
        return self.getCapabilities(useCache=False)

    def _ebOAuthAuthenticate(
        self, failure: Failure, exchange: _AuthExchange, secrets: tuple[str, ...]
    ) -> Failure:
        if not failure.check(IMAP4Exception) or failure.check(IMAPServerBye):
            return failure
        line = failure.value.args[0] if failure.value.args else b""
        words = scrub(_words(line).strip(), secrets)
        upper = words.upper()
        serverError = exchange.serverError
        mechName = exchange.mechanism.decode("ascii")
        message = f"{mechName} authentication failed: {words or '(no text)'}"
        if serverError:
            status = serverError.get("status", serverError.get("raw"))
            message += scrub(f" (server error: {status})", secrets)
        tokenRejected = sasl.isTokenRejected(serverError) or "[AUTHENTICATIONFAILED]" in upper
        temporary = "[UNAVAILABLE]" in upper
        return Failure(
            IMAPAuthenticationError(
                message,
                server_error=serverError,
                token_rejected=tokenRejected,
                temporary=temporary,
            )
        )

    # -- IDLE (RFC 2177) --------------------------------------------------------

    def idle(self, onEvent: Callable[[IdleEvent], object]) -> defer.Deferred[IdleSession]:
        """Start IDLE; fire with the :class:`IdleSession` once the server sent ``+``.

        While idling, every untagged ``EXISTS``, ``EXPUNGE`` and ``BYE`` is passed to
        ``onEvent`` (other untagged lines are dropped so a long IDLE holds no memory).
        End it with :meth:`done`; re-issue it well under 29 minutes (the caller's job).
        """
        if self._idle is not None:
            return defer.fail(IMAP4Exception("already idling"))
        caps = self._capCache
        if caps is not None and b"IDLE" not in caps:
            return defer.fail(IMAP4Exception("the server does not offer IDLE"))
        session = IdleSession(self, onEvent)
        cmd = Command(b"IDLE", None, (), session._continuation)
        session.command = cmd
        self._idle = session
        d = self.sendCommand(cmd)
        d.addBoth(session._finished)
        return session._startD

    def done(self) -> defer.Deferred[None]:
        """End the current IDLE with ``DONE``; fire when the tagged OK arrives."""
        if self._idle is None:
            return defer.fail(IMAP4Exception("not idling"))
        return self._idle.done()

    # -- untagged responses and connection end ------------------------------------

    def _defaultHandler(self, tag: bytes, rest: bytes) -> None:
        if tag == b"*":
            first = rest.split(None, 1)
            if first and first[0].upper() == b"BYE":
                self.byeText = _words(rest[3:].strip())
            session = self._idle
            if (
                session is not None
                and self.waiting is not None
                and self.tags is not None
                and self.tags.get(self.waiting) is session.command
            ):
                event = _parseIdleEvent(rest)
                if event is not None:
                    session._event(event)
                    if event.kind == "BYE" and self.transport is not None:
                        self.transport.loseConnection()
                return
        super()._defaultHandler(tag, rest)

    def connectionLost(self, reason: Failure) -> None:
        """Fail pending commands with :class:`IMAPServerBye` if the server said BYE."""
        if self.byeText is not None:
            reason = Failure(IMAPServerBye(self.byeText))
        super().connectionLost(reason)


async def authenticateRefreshingOnce(
    client: OAuthIMAP4Client,
    tokens: Any,
    account_name: str,
    mechanism: str,
    user: str,
    token: Any,
    host: str | None,
    port: int | None,
    who: str,
    onRefreshed: Callable[[Any], object] | None = None,
) -> Any:
    """``AUTHENTICATE``; a token the server refuses is refreshed once and tried again.

    Fires with the token that worked. Fails with the server's
    :class:`IMAPAuthenticationError`: ``token_rejected`` on it then means that
    even a freshly refreshed token was refused (a real account problem, not an
    expired token). ``who`` names the caller in the log line; ``onRefreshed``
    sees the new token (to scrub it from later error texts).
    """
    try:
        await client.authenticateOAuth(mechanism, user, token, host, port)
        return token
    except IMAPAuthenticationError as e:
        if not e.token_rejected:
            raise
    _log.info("{who}: token rejected, refreshing once", who=who)
    token = await tokens.forceRefresh(account_name)
    if onRefreshed is not None:
        onRefreshed(token)
    await client.authenticateOAuth(mechanism, user, token, host, port)
    return token
