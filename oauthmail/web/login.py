"""The console's login and logout pages, and the admin password check.

``GET /login`` shows a password field; ``POST /login`` checks the password against the
configured scrypt hash and, when it matches, starts a session (cookie ``HttpOnly;
SameSite=Strict``, plus ``Secure`` over TLS) and goes to the console. ``POST /logout``
ends the session. The guard (:mod:`oauthmail.web.guard`) has already checked the Host,
the Origin and the CSRF token of every POST that reaches these pages.

Rules a reader must not break:

- scrypt is slow on purpose: it runs in the reactor's thread pool, never on the reactor
  thread, and at most :data:`MAX_CONCURRENT_CHECKS` at once.
- An address that failed waits longer before each next try (:class:`LoginThrottle`);
  an address with a check in flight cannot start another. The wait is answered 429
  without looking at the password.
- Neither the password nor the hash nor the session id is ever logged or shown.
"""

from __future__ import annotations

import html
import math
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.web.resource import Resource
from zope.interface import Interface, implementer

from oauthmail.passwords import parseHash, verifyPassword
from oauthmail.web.guard import COOKIE, Guard
from oauthmail.web.pages import formPage, htmlDocument, renderAsync
from oauthmail.web.sessions import LoginThrottle, SessionStore

__all__ = ["IAdminPassword", "LoginPage", "LogoutResource", "ScryptAdminPassword"]

log = Logger()

#: scrypt checks running at once, whatever the number of clients.
MAX_CONCURRENT_CHECKS = 2
#: Longer passwords are refused without hashing them.
MAX_PASSWORD_BYTES = 1024


class IAdminPassword(Interface):
    """Checks the console's admin password."""

    def check(password: str) -> defer.Deferred[bool]:  # type: ignore[empty-body]  # noqa: N805
        """Fire with whether ``password`` is the admin password."""


@implementer(IAdminPassword)
class ScryptAdminPassword:
    """The admin password as an scrypt hash (``web.admin_password_hash``)."""

    def __init__(self, encoded: str, reactor: IReactorThreads) -> None:
        parseHash(encoded)  # ValueError now rather than at the first login
        self._encoded = encoded
        self._reactor = reactor
        self._running = defer.DeferredSemaphore(MAX_CONCURRENT_CHECKS)

    def __repr__(self) -> str:
        return "<ScryptAdminPassword>"

    def check(self, password: str) -> defer.Deferred[bool]:
        def run() -> defer.Deferred[bool]:
            pool = self._reactor.getThreadPool()
            return deferToThreadPool(self._reactor, pool, verifyPassword, password, self._encoded)

        return self._running.run(run)


def _clientAddress(request: Any) -> str:
    address = request.getClientAddress()
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    return "unknown"


def _loginPage(field: str, message: str = "", css: str = "") -> bytes:
    said = f"<p class='{html.escape(css)}'>{html.escape(message)}</p>" if message else ""
    return htmlDocument(
        "Log in — oauthmail",
        "<main class='narrow'><h1>oauthmail</h1>"
        "<p>This console manages the mail accounts' authorisations. Log in with the admin"
        " password (<code>web.admin_password_hash</code> in the configuration).</p>"
        f"{said}<form method='post' action='/login'>{field}"
        "<label for='password'>Admin password</label>"
        "<input type='password' id='password' name='password'"
        " autocomplete='current-password' required autofocus>"
        "<p><button type='submit' id='login'>Log in</button></p></form></main>",
    ).encode()


class LoginPage(Resource):
    """``GET /login`` (the form) and ``POST /login`` (check, start a session)."""

    isLeaf = True

    def __init__(
        self,
        guard: Guard,
        password: IAdminPassword,
        sessions: SessionStore,
        throttle: LoginThrottle,
    ) -> None:
        super().__init__()
        self.guard = guard
        self.password = password
        self.sessions = sessions
        self.throttle = throttle

    def render_GET(self, request: Any) -> bytes:
        access = self.guard.accessOf(request)
        if access.session is not None or not access.login_required:
            request.setResponseCode(303)
            request.setHeader(b"location", b"/")
            return b""
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        formPage(request)
        return _loginPage(access.csrf.field())

    def render_POST(self, request: Any) -> Any:
        return renderAsync(request, lambda: self._login(request))

    async def _login(self, request: Any) -> bytes:
        formPage(request)
        field = self.guard.accessOf(request).csrf.field()
        address = _clientAddress(request)
        wait = self.throttle.wait(address)
        if wait > 0:
            seconds = math.ceil(wait)
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(seconds).encode("ascii"))
            return _loginPage(field, f"Too many failed logins: try again in {seconds} s.", "failed")
        given = (request.args.get(b"password") or [b""])[0]
        try:
            password = given.decode("utf-8") if len(given) <= MAX_PASSWORD_BYTES else None
        except UnicodeDecodeError:
            password = None
        self.throttle.checking(address)
        try:
            right = password is not None and bool(await self.password.check(password))
        except Exception as e:
            self.throttle.abandoned(address)
            log.error("console login could not be checked: {kind}", kind=type(e).__name__)
            request.setResponseCode(500)
            return _loginPage(field, "The password could not be checked: see the log.", "failed")
        if not right:
            delay = math.ceil(self.throttle.failed(address))
            log.warn("console: failed login from {address}", address=address)
            request.setResponseCode(403)
            return _loginPage(
                field, f"Wrong password. Wait {delay} s before the next try.", "failed"
            )
        self.throttle.succeeded(address)
        session_id, _ = self.sessions.create()
        request.addCookie(
            COOKIE,
            session_id.encode("ascii"),
            path=b"/",
            httpOnly=True,
            sameSite="strict",
            secure=bool(request.isSecure()),
        )
        log.info("console: login from {address}", address=address)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""


class LogoutResource(Resource):
    """``POST /logout``: end the session and forget its cookie."""

    isLeaf = True

    def __init__(self, guard: Guard, sessions: SessionStore) -> None:
        super().__init__()
        self.guard = guard
        self.sessions = sessions

    def render_POST(self, request: Any) -> bytes:
        session = self.guard.accessOf(request).session
        if session is not None:
            self.sessions.end(session)
        request.addCookie(
            COOKIE,
            b"",
            path=b"/",
            max_age=b"0",
            httpOnly=True,
            sameSite="strict",
            secure=bool(request.isSecure()),
        )
        request.setResponseCode(303)
        request.setHeader(b"location", b"/login")
        return b""


def logoutForm(field: str) -> str:
    """The Log out button (a POST form) for the console's header."""
    return (
        f"<form class='inline' method='post' action='/logout'>{field}"
        "<button type='submit' id='logout'>Log out</button></form>"
    )
