"""Opening an SMTP session: greeting, EHLO, STARTTLS, AUTH XOAUTH2 or OAUTHBEARER.

:class:`SessionOpening` is a small state machine (:class:`Opening`) that reads one
reply per step through an :class:`~oauthmail.smtp.esmtp.channel.ICommandChannel`
and, once authenticated, hands the server's extensions to ``onOpened``.

Rules a reader must not break:

- TLS is mandatory before AUTH: on a cleartext connection the client sends
  ``STARTTLS`` (RFC 3207) and starts again with EHLO; a server that does not
  offer it never sees the token. The extensions of the EHLO before STARTTLS
  are forgotten.
- Only the configured mechanism is used. The initial response goes out after
  the server's first ``334`` (as Microsoft documents it); a second ``334``
  carries the server's error report (base64 JSON) and is answered with the
  mechanism's error response — an empty line for XOAUTH2, ``AQ==`` (``\\x01``)
  for OAUTHBEARER (RFC 7628 3.2.3) — after which the server sends its final
  ``535``. Whether that report said "bad token" decides ``REFRESH``.
- Every text from the server goes through ``channel.clean`` (one line, token
  scrubbed) before it reaches an error. No sent line is kept anywhere.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable
from dataclasses import dataclass

from oauthmail import sasl
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.channel import ICommandChannel
from oauthmail.smtp.esmtp.reply import Reply
from oauthmail.smtp.esmtp.results import SessionError
from oauthmail.smtp.outcomes import Step

__all__ = ["Login", "Opening", "SessionOpening", "parseExtensions"]


@dataclass(frozen=True)
class Login:
    """Who authenticates and how: one SASL mechanism, the user and the access token."""

    mechanism: bytes  # b"XOAUTH2" or b"OAUTHBEARER"
    user: str
    token: Secret
    #: OAUTHBEARER's optional ``host``/``port`` (RFC 7628).
    host: str | None = None
    port: int | None = None

    def initialResponse(self) -> bytes:
        """The raw initial client response; ``ValueError`` for a token that cannot be sent."""
        return sasl.initialResponse(self.mechanism, self.user, self.token, self.host, self.port)

    def errorResponse(self) -> bytes:
        """The raw answer to the server's error challenge."""
        return sasl.errorResponse(self.mechanism)

    def secrets(self) -> list[str]:
        """Every form of the token a server could echo: raw and inside the base64 response."""
        raw = self.token.reveal()
        found = [raw] if raw else []
        try:
            found.append(base64.b64encode(self.initialResponse()).decode("ascii"))
        except ValueError:
            pass
        return found


class Opening(enum.Enum):
    """Where the opening stands; each state waits for the reply named."""

    GREETING = "greeting"
    EHLO = "EHLO reply"
    STARTTLS = "STARTTLS reply"
    AUTH = "AUTH reply"
    AUTH_RESPONSE = "reply to the initial response"
    AUTH_ERROR = "final reply after the error challenge"
    OPEN = "open"
    FAILED = "failed"


def parseExtensions(reply: Reply) -> dict[bytes, bytes]:
    """The EHLO keywords (upper case) and their parameters; the first line is the greeting.

    The obsolete ``AUTH=MECH`` form some servers still send counts as ``AUTH MECH``.
    """
    extensions: dict[bytes, bytes] = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(b" ")
        keyword = keyword.upper()
        if keyword.startswith(b"AUTH="):
            params = keyword[5:] + b" " + params
            keyword = b"AUTH"
        if keyword in extensions and keyword == b"AUTH":
            params = extensions[keyword] + b" " + params
        extensions[keyword] = params.strip()
    return extensions


class SessionOpening:
    """Greets, says EHLO, upgrades to TLS when needed and authenticates.

    :param channel: the connection.
    :param login: the mechanism, user and token.
    :param identity: the name said in EHLO.
    :param canStartTLS: whether the connection can be upgraded (TLS options are at hand).
    :param onOpened: called with the extensions of the last EHLO once AUTH succeeded.
    """

    def __init__(
        self,
        channel: ICommandChannel,
        login: Login,
        *,
        identity: str,
        canStartTLS: bool,
        onOpened: Callable[[dict[bytes, bytes]], None],
    ) -> None:
        self._channel = channel
        self._login = login
        self._identity = identity.encode("ascii", "replace")
        self._canStartTLS = canStartTLS
        self._onOpened = onOpened
        self._extensions: dict[bytes, bytes] = {}
        self._tokenRejected = False
        self._initial = b""
        self.state = Opening.GREETING

    def start(self) -> None:
        """Wait for the greeting."""
        self.state = Opening.GREETING
        self._channel.expect(self._greeting)

    # -- replies, one method per state -------------------------------------------------

    def _greeting(self, reply: Reply) -> None:
        if reply.code != 220:
            self._refused(reply, Step.GREETING, f"{self._channel.where} refused the session")
            return
        self._ehlo()

    def _ehlo(self) -> None:
        self.state = Opening.EHLO
        self._channel.send(b"EHLO " + self._identity, self._ehloReply)

    def _ehloReply(self, reply: Reply) -> None:
        if outcomes.forStep(Step.EHLO, reply.code, "").kind != outcomes.OK:
            self._refused(reply, Step.EHLO, "EHLO refused")
            return
        self._extensions = parseExtensions(reply)
        if not self._channel.secure:
            if b"STARTTLS" not in self._extensions or not self._canStartTLS:
                self._endWith(
                    SessionError(
                        outcomes.PERMANENT,
                        f"{self._channel.where} does not offer STARTTLS:"
                        " the token is never sent in cleartext",
                        tls=True,
                    )
                )
                return
            self.state = Opening.STARTTLS
            self._channel.send(b"STARTTLS", self._startTLSReply)
            return
        self._authenticate()

    def _startTLSReply(self, reply: Reply) -> None:
        if reply.code != 220:
            described = outcomes.describe(reply.code, self._channel.clean(reply.text))
            reason = f"STARTTLS refused by {self._channel.where}: {described}"
            self._endWith(SessionError(outcomes.TEMPORARY, reason, tls=True))
            return
        self._channel.startTLS()
        self._extensions = {}
        self._ehlo()

    def _authenticate(self) -> None:
        mechanism = self._login.mechanism
        offered = self._extensions.get(b"AUTH", b"").upper().split()
        if mechanism not in offered:
            name = mechanism.decode("ascii")
            self._endWith(
                SessionError(
                    outcomes.PERMANENT,
                    f"the server does not offer AUTH {name}: check smtp.mechanism",
                    auth=True,
                )
            )
            return
        try:
            self._initial = base64.b64encode(self._login.initialResponse())
        except ValueError as e:  # sasl's messages never quote the token
            self._endWith(
                SessionError(outcomes.REFRESH, f"the access token cannot be sent: {e}", auth=True)
            )
            return
        self.state = Opening.AUTH
        self._channel.send(b"AUTH " + mechanism, self._authReply)

    def _authReply(self, reply: Reply) -> None:
        if reply.code == 334:
            self.state = Opening.AUTH_RESPONSE
            initial, self._initial = self._initial, b""
            self._channel.send(initial, self._authResponseReply)
            return
        self._authEnded(reply)

    def _authResponseReply(self, reply: Reply) -> None:
        if reply.code == 334:
            # The server's error report; answer it so that it sends its final reply.
            report = sasl.parseErrorChallenge(reply.lines[0] if reply.lines else b"")
            self._tokenRejected = sasl.isTokenRejected(report)
            self.state = Opening.AUTH_ERROR
            answer = base64.b64encode(self._login.errorResponse())
            self._channel.send(answer, self._authErrorReply)
            return
        self._authEnded(reply)

    def _authErrorReply(self, reply: Reply) -> None:
        if reply.code == 334:
            self._endWith(
                SessionError(
                    outcomes.TEMPORARY,
                    f"authentication failed: {self._channel.where} kept challenging",
                    auth=True,
                ),
                quit=False,
            )
            return
        self._authEnded(reply)

    def _authEnded(self, reply: Reply) -> None:
        if reply.code == 235:
            self.state = Opening.OPEN
            self._onOpened(self._extensions)
            return
        text = self._channel.clean(reply.text)
        if not 400 <= reply.code < 600:
            described = outcomes.describe(reply.code, text)
            self._endWith(
                SessionError(
                    outcomes.TEMPORARY,
                    f"authentication failed: {described} (unexpected reply to AUTH)",
                    auth=True,
                )
            )
            return
        verdict = outcomes.classifyAuthFailure(reply.code, text, self._tokenRejected)
        self._endWith(
            SessionError(
                verdict.action,
                f"authentication failed: {verdict.reason}",
                auth=True,
                pause=verdict.pause,
            )
        )

    # -- endings ----------------------------------------------------------------------

    def _refused(self, reply: Reply, step: str, what: str) -> None:
        text = self._channel.clean(reply.text)
        verdict = outcomes.forStep(step, reply.code, text)
        reason = f"{what}: {outcomes.describe(reply.code, text)}"
        if verdict.words and verdict.words not in reason:
            reason = f"{reason} ({verdict.words})"
        self._endWith(SessionError(verdict.kind, reason, pause=verdict.pause))

    def _endWith(self, error: SessionError, quit: bool = True) -> None:
        self.state = Opening.FAILED
        self._channel.fail(error, quit)
