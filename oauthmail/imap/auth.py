"""OAuth ``AUTHENTICATE`` for IMAP: the SASL exchange, what a refusal means, one retry.

The strings come from :mod:`oauthmail.sasl` (pure); this module decides how
they go on the wire (one line: SASL-IR when offered, else after ``+``), how
the error continuation is answered (empty line for XOAUTH2, ``AQ==`` for
OAUTHBEARER), and what a refusal means:

* the token was refused (error challenge 400/401/``invalid_token``,
  ``[AUTHENTICATIONFAILED]``, or Exchange's bare ``NO AUTHENTICATE failed.`` on
  a Microsoft profile): refresh once and retry (:func:`authenticateRefreshingOnce`);
* the server cannot check tokens now (``[UNAVAILABLE]``): retry later;
* anything else: report it.

No text made here ever contains the token or the encoded response.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger

from oauthmail import sasl
from oauthmail.imap.command import Command
from oauthmail.imap.errors import (
    CleartextAuthenticationRefused,
    IMAPAuthenticationError,
    IMAPCommandError,
    MechanismNotOffered,
)
from oauthmail.interfaces import ITokenSource
from oauthmail.secret import plain, scrub
from oauthmail.text import cleanText

if TYPE_CHECKING:
    from oauthmail.imap.protocol import IMAPClientProtocol
    from oauthmail.interfaces import IIMAPSession

__all__ = [
    "AuthExchange",
    "authenticateOAuth",
    "authenticateRefreshingOnce",
    "classifyRefusal",
    "refusalError",
]

_log = Logger()

#: Exchange Online's whole answer to a bad token: no challenge, no response code.
_EXCHANGE_BARE_REFUSAL = re.compile(r"AUTHENTICATE failed\.?\Z", re.IGNORECASE)


def classifyRefusal(
    text: str, code: str | None, serverError: dict[str, Any] | None, providerKind: str
) -> tuple[bool, bool]:
    """``(token_rejected, temporary)`` for a ``NO``/``BAD`` answer to ``AUTHENTICATE``.

    ``text`` is the server's words after the status (with any response code);
    ``providerKind`` the profile's ``kind`` (``"microsoft"``, ``"google"``, ...).
    """
    upper = text.upper()
    temporary = code == "UNAVAILABLE" or "[UNAVAILABLE]" in upper
    rejected = (
        sasl.isTokenRejected(serverError)
        or code == "AUTHENTICATIONFAILED"
        or "[AUTHENTICATIONFAILED]" in upper
    )
    if (
        not rejected
        and not temporary
        and providerKind == "microsoft"
        and serverError is None
        and code is None
        and _EXCHANGE_BARE_REFUSAL.match(text.strip())
    ):
        # Exchange says nothing more for an expired or revoked token.
        rejected = True
    return rejected, temporary


class AuthExchange:
    """The client side of one ``AUTHENTICATE`` exchange: answers each ``+`` line.

    ``sendLine`` writes one line (CRLF added by the caller's protocol).
    """

    def __init__(
        self,
        mechanism: bytes,
        response: bytes,
        sentInitial: bool,
        sendLine: Callable[[bytes], None],
    ) -> None:
        self.mechanism = mechanism
        self.response = response
        self.sentInitial = sentInitial
        self.sendLine = sendLine
        self.answeredError = False
        self.serverError: dict[str, Any] | None = None

    def continuation(self, rest: bytes) -> None:
        """Answer one ``+`` line: initial response, error response, then cancel."""
        if not self.sentInitial:
            self.sentInitial = True
            self.sendLine(self.response)
        elif not self.answeredError:
            self.answeredError = True
            self.serverError = sasl.parseErrorChallenge(rest)
            self.sendLine(base64.b64encode(sasl.errorResponse(self.mechanism)))
        else:
            # A third round is not part of either mechanism: cancel (RFC 3501 6.2.2).
            self.sendLine(b"*")


def refusalError(
    error: IMAPCommandError,
    exchange: AuthExchange,
    secrets: tuple[str, ...],
    providerKind: str,
) -> IMAPAuthenticationError:
    """The :class:`IMAPAuthenticationError` for a refused ``AUTHENTICATE``."""
    words = cleanText(scrub(error.raw.decode("utf-8", "replace") or error.text, secrets))
    serverError = exchange.serverError
    mechName = exchange.mechanism.decode("ascii")
    message = f"{mechName} authentication failed: {words or '(no text)'}"
    if serverError:
        status = serverError.get("status", serverError.get("raw"))
        message += scrub(cleanText(f" (server error: {status})"), secrets)
    rejected, temporary = classifyRefusal(words, error.code, serverError, providerKind)
    return IMAPAuthenticationError(
        message, server_error=serverError, token_rejected=rejected, temporary=temporary
    )


def _refuseCleartext(protocol: IMAPClientProtocol) -> None:
    if protocol.allow_cleartext or ISSLTransport.providedBy(protocol.transport):
        return
    raise CleartextAuthenticationRefused(
        "refusing to send an OAuth token over a connection without TLS "
        "(use implicit TLS or STARTTLS first)"
    )


async def authenticateOAuth(
    protocol: IMAPClientProtocol,
    mechanism: str | bytes,
    user: str,
    token: sasl.TokenLike,
    host: str | None,
    port: int | None,
    providerKind: str,
) -> frozenset[bytes]:
    """The ``AUTHENTICATE`` exchange on ``protocol``; the capabilities asked again after it.

    Nothing is sent when the input is unusable (``ValueError``), the
    connection is not TLS-protected, or the server lacks the mechanism.
    """
    mech = sasl.normaliseMechanism(mechanism)
    raw = sasl.initialResponse(mech, user, token, host, port)
    _refuseCleartext(protocol)
    response = base64.b64encode(raw)
    secrets = (plain(token), response.decode("ascii"))
    caps = protocol.capabilities
    if caps is None:
        caps = await protocol.capability()
    if b"AUTH=" + mech not in caps:
        offered = sorted(c[5:].decode("ascii", "replace") for c in caps if c[:5] == b"AUTH=")
        raise MechanismNotOffered(mech.decode("ascii"), offered)
    _refuseCleartext(protocol)
    saslIR = b"SASL-IR" in caps
    exchange = AuthExchange(mech, response, saslIR, protocol.sendLine)
    args = mech + b" " + response if saslIR else mech
    try:
        await protocol.execute(Command(b"AUTHENTICATE", args, continuation=exchange.continuation))
    except IMAPCommandError as e:
        raise refusalError(e, exchange, secrets, providerKind) from None
    protocol.capabilities = None
    return await protocol.capability()


async def authenticateRefreshingOnce(
    client: IIMAPSession,
    tokens: ITokenSource,
    account_name: str,
    mechanism: str,
    user: str,
    token: Any,
    host: str | None,
    port: int | None,
    who: str,
    onRefreshed: Callable[[Any], object] | None = None,
    providerKind: str = "generic",
) -> Any:
    """``AUTHENTICATE``; a token the server refuses is refreshed once and tried again.

    Fires with the token that worked. Fails with the server's
    :class:`IMAPAuthenticationError`: ``token_rejected`` on it then means that
    even a freshly refreshed token was refused (a real account problem, not an
    expired token). ``who`` names the caller in the log line; ``onRefreshed``
    sees the new token (to scrub it from later error texts).
    """
    try:
        await client.authenticate(mechanism, user, token, host, port, providerKind)
        return token
    except IMAPAuthenticationError as e:
        if not e.token_rejected:
            raise
    _log.info("{who}: token rejected, refreshing once", who=who)
    token = await tokens.forceRefresh(account_name)
    if onRefreshed is not None:
        onRefreshed(token)
    await client.authenticate(mechanism, user, token, host, port, providerKind)
    return token
