"""The console's gate: every request passes here before any page runs.

In this order, for every request:

1. the security headers (CSP without script, no framing, no sniffing, no referrer, no
   caching) go on the response, so that even a refusal carries them;
2. the ``Host`` check (:mod:`oauthmail.hosts`): a foreign name is answered 421;
3. for a POST, the ``Origin`` (or ``Referer``) must name the console, then
4. the login: when one is required (a bind off loopback, or an admin password set), a
   request without a live session goes to ``/login`` (a POST is refused), except
   :data:`OPEN_PATHS`;
5. for a POST, the CSRF token of the session (:mod:`oauthmail.web.csrf`).

Anything refused changes nothing: the resource that would have acted never runs.

Why ``/callback`` is open without a login: the provider sends the browser there from
its own site, and a ``SameSite=Strict`` session cookie does not travel on such a
cross-site redirect, so a login check would always fail. The callback acts only for a
``state`` that a logged-in POST created (32 random bytes, once, for ten minutes) and
holds no PKCE verifier: a visitor without a login cannot start, guess or replay one,
and a code minted for any other request fails at the token endpoint. It never shows a
token or a code. ``/health`` and ``/metrics`` are open for monitoring (a scraper has no
session; they show states, counts and times, never a token, a message or an address
beyond account names), ``/style.css`` and ``/login`` for the login page itself. The Host
check applies to them as to every page.
"""

from __future__ import annotations

import html
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.web.resource import Resource

from oauthmail.hosts import AllowedHosts
from oauthmail.loopback import isLoopbackHost
from oauthmail.passwords import parseHash
from oauthmail.web.csrf import CSRFToken
from oauthmail.web.pages import page
from oauthmail.web.sessions import SESSION_LIFETIME, Session, SessionStore

__all__ = ["COOKIE", "OPEN_PATHS", "ConsoleAccess", "Guard", "RequestAccess", "formActions"]

#: The session cookie's name.
COOKIE = b"oauthmail_session"

#: First path segments reachable without a login (see the module docstring).
OPEN_PATHS = frozenset({b"health", b"metrics", b"callback", b"style.css", b"login"})


@dataclass(frozen=True)
class ConsoleAccess:
    """Who may use the console: the ``web.*`` settings the guard enforces.

    :param bind: ``web.bind``; off loopback a login is required.
    :param allowed_hosts: ``web.allowed_hosts``: more names (a reverse proxy's).
    :param admin_password_hash: ``web.admin_password_hash`` (``oauthmail hash-password``);
        when set, a login is required on loopback too.
    :param session_lifetime: ``web.session_lifetime``, seconds from login.

    A bind off loopback without a password hash is refused with ``ValueError``.
    """

    bind: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()
    admin_password_hash: str | None = field(default=None, repr=False)
    session_lifetime: float = SESSION_LIFETIME

    def __post_init__(self) -> None:
        if not isLoopbackHost(self.bind) and not self.admin_password_hash:
            raise ValueError(
                f"web.bind {self.bind!r} is not loopback: set web.admin_password_hash"
                " (make one with: oauthmail hash-password) or bind to 127.0.0.1"
            )
        if self.admin_password_hash:
            parseHash(self.admin_password_hash)  # ValueError naming what is wrong, never the hash
        if self.session_lifetime <= 0:
            raise ValueError("web.session_lifetime must be positive")
        AllowedHosts(self.bind, self.allowed_hosts)  # ValueError for a malformed entry

    @property
    def login_required(self) -> bool:
        return bool(self.admin_password_hash) or not isLoopbackHost(self.bind)


@dataclass(frozen=True)
class RequestAccess:
    """What the guard found out about one request, for the pages to use."""

    csrf: CSRFToken
    session: Session | None = None
    login_required: bool = False

    @property
    def sessionKey(self) -> str:
        return self.session.key if self.session is not None else ""

    def field(self) -> str:
        """The hidden CSRF field for forms on this request's page."""
        return self.csrf.field(self.sessionKey)


def formActions(endpoints: Iterable[str | None]) -> tuple[str, ...]:
    """CSP sources for the providers' authorisation endpoints.

    Browsers apply ``form-action`` to the redirects that follow a form's POST too, and the
    Authorise button's POST is answered with a redirect to the provider.
    """
    sources = []
    for endpoint in endpoints:
        if not endpoint:
            continue
        try:
            url = urlsplit(endpoint)
            port = url.port
        except ValueError:
            continue
        host = url.hostname or ""
        if url.scheme not in ("http", "https") or not host:
            continue
        if not all(c.isalnum() or c in ".-:" for c in host):
            continue
        netloc = f"[{host}]" if ":" in host else host
        source = f"{url.scheme}://{netloc}" + (f":{port}" if port else "")
        if source not in sources:
            sources.append(source)
    return tuple(sources)


class Refusal(Resource):
    """A short plain page with a status, answered instead of the resource asked for."""

    isLeaf = True

    def __init__(self, code: int, title: str, text: str, location: bytes | None = None) -> None:
        super().__init__()
        self.code, self.title, self.text, self.location = code, title, text, location

    def render(self, request: Any) -> bytes:
        request.setResponseCode(self.code)
        if self.location is not None:
            request.setHeader(b"location", self.location)
        if self.code == 421:
            request.setHeader(b"connection", b"close")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"{self.title}: {self.text}\n".encode()
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page(self.title, [html.escape(self.text)], "failed", back=self.code != 303)


class Guard:
    """Runs the checks of the module docstring for the console's root resource."""

    def __init__(
        self,
        access: ConsoleAccess,
        csrf: CSRFToken,
        sessions: SessionStore,
        form_actions: Iterable[str] = (),
    ) -> None:
        self.access = access
        self.csrf = csrf
        self.sessions = sessions
        self.hosts = AllowedHosts(access.bind, access.allowed_hosts)
        forms = " ".join(("'self'", *form_actions))
        self.policy = (
            f"default-src 'none'; style-src 'self'; form-action {forms}; "
            "frame-ancestors 'none'; base-uri 'none'"
        ).encode("ascii")
        self._found: weakref.WeakKeyDictionary[Any, RequestAccess] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<Guard {self.hosts!r} login={self.access.login_required}>"

    def accessOf(self, request: Any) -> RequestAccess:
        """What the guard found for ``request`` (no session when it never saw it)."""
        return self._found.get(request) or RequestAccess(self.csrf)

    def headers(self, request: Any) -> None:
        """The security headers every response carries."""
        request.setHeader(b"content-security-policy", self.policy)
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"cross-origin-resource-policy", b"same-origin")
        request.setHeader(b"cache-control", b"no-store")

    def check(self, segment: bytes, request: Any) -> Resource | None:
        """``None`` to go on to the page; else the resource that answers instead."""
        self.headers(request)
        local = request.getHost()
        host = request.requestHeaders.getRawHeaders(b"host") or []
        secure = bool(request.isSecure())
        if len(host) != 1 or not self.hosts.allowsHost(host[0], local.host, local.port, secure):
            return Refusal(421, "Misdirected request", "this server does not answer to that name.")
        post = request.method not in (b"GET", b"HEAD")
        if post and not self._sameOrigin(request, local):
            return Refusal(403, "Forbidden", "This form did not come from the console.")
        session = None
        if self.access.login_required:
            cookie = request.getCookie(COOKIE)
            session = self.sessions.find(cookie)
            if session is None and segment not in OPEN_PATHS:
                if post:
                    return Refusal(403, "Log in first", "Your session has ended: log in again.")
                return Refusal(303, "Log in", "Log in first.", location=b"/login")
        found = RequestAccess(self.csrf, session, self.access.login_required)
        self._found[request] = found
        key = "" if segment == b"login" else found.sessionKey
        if post and not self.csrf.check((request.args.get(b"csrf") or [None])[0], key):
            return Refusal(
                403,
                "Forbidden",
                "This form is stale or did not come from the console: reload the console.",
            )
        return None

    def _sameOrigin(self, request: Any, local: Any) -> bool:
        origin = request.requestHeaders.getRawHeaders(b"origin")
        if origin is None:
            origin = request.requestHeaders.getRawHeaders(b"referer")
            if origin is None:
                return True  # not a browser (or a very old one): the CSRF token decides
        if len(origin) != 1:
            return False
        return self.hosts.allowsOrigin(origin[0], local.host, local.port)
