"""The console's authorisation pages: the Authorise button, the callback, the device page.

``POST /authorize/<account>`` starts the flow the account's ``grant`` calls for: a 303 to
the provider (authorization code + PKCE), a device code page (device flow), or a token
request on the spot (client credentials). ``GET /callback`` is the loopback redirect URI:
it finishes the browser flow and shows a plain sentence — the account is authorised and
when its token expires, or what went wrong and what to do — and never a token or code.

The POST forms carry a per-process CSRF token, so that another site open in the same
browser cannot start (or replace) an authorisation behind the operator's back. Pages are
served with ``no-store``, ``no-referrer`` and ``frame-ancestors 'none'``: the callback URL
carries a code, which must not travel on in a ``Referer`` header or sit in a cache.
"""

from __future__ import annotations

import hmac
import html
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oauthmail.config import Config
from oauthmail.tokens.authorize import (
    AccountAuthorizationFailed,
    Authorizer,
    describeAuthorized,
    explain,
)
from oauthmail.tokens.errors import AuthorizationFailed

log = Logger()

#: Seconds between reloads of the device code page while the person has not answered.
DEVICE_PAGE_REFRESH = 5

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 42em; }
.ok { color: #17692a; } .failed { color: #a11; }
code { font-size: 1.4em; letter-spacing: .1em; }
"""


class CSRFToken:
    """One random token per process, put in every form and checked on every POST."""

    def __init__(self, value: str | None = None) -> None:
        self.value = value or secrets.token_urlsafe(32)

    def __repr__(self) -> str:
        return "<CSRFToken>"

    def check(self, given: bytes | str | None) -> bool:
        """Whether ``given`` is the token (constant-time comparison)."""
        if given is None:
            return False
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.value.encode("ascii"))

    def field(self) -> str:
        """The hidden form field."""
        return f"<input type='hidden' name='csrf' value='{html.escape(self.value)}'>"


def callbackURI(config: Config, request: Any = None) -> str:
    """``http://{web.bind}:{web.port}/callback``; port 0 means the port we listen on."""
    host = config.web.bind
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard is not an address to visit
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    port = config.web.port
    if not port and request is not None:
        port = request.getHost().port
    return f"http://{host}:{port}/callback"


def actionForm(account: str, csrf: CSRFToken, label: str) -> str:
    """The POST form of an account's Authorise / Re-authorise button (escaped)."""
    action = "/authorize/" + quote(account, safe="")
    return (
        f"<form method='post' action='{html.escape(action)}' style='margin:0'>"
        f"{csrf.field()}<button type='submit'>{html.escape(label)}</button></form>"
    )


def page(title: str, paragraphs: list[str], css: str = "", refresh: int | None = None) -> bytes:
    """A plain page; ``paragraphs`` are HTML the caller has already escaped."""
    head = f"<meta http-equiv='refresh' content='{int(refresh)}'>" if refresh else ""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)} — oauthmail</title>{head}"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1 class='{html.escape(css)}'>{html.escape(title)}</h1>{body}"
        "<p><a href='/'>Back to the console</a></p></body></html>"
    ).encode()


def _headers(request: Any) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"content-security-policy", b"frame-ancestors 'none'")


def _renderAsync(request: Any, produce: Callable[[], Awaitable[bytes | None]]) -> Any:
    """Run ``produce`` and write what it returns; a crash is a plain 500."""
    _headers(request)
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def written(data: bytes | None) -> None:
        if gone:
            return
        if data:
            request.write(data)
        request.finish()

    def failed(failure: Any) -> None:
        log.failure("authorisation page failed", failure)
        if gone:
            return
        request.setResponseCode(500)
        request.write(page("Internal error", ["See the oauthmail log."], "failed"))
        request.finish()

    d = defer.ensureDeferred(produce())  # type: ignore[arg-type]
    d.addCallbacks(written, failed)
    return NOT_DONE_YET


def _failurePage(request: Any, status: int, account: str | None, why: str) -> bytes:
    request.setResponseCode(status)
    e = html.escape
    what = f"Authorisation of {account} failed" if account else "Authorisation failed"
    return page(
        what,
        [
            e(why[:1].upper() + why[1:]) + ".",
            "What to do: go back to the console and press Authorise (or Re-authorise)"
            " again. If you started with <code>oauthmail authorize</code> on the command"
            " line, copy this page's address from the address bar and paste it there.",
        ],
        "failed",
    )


class AuthorizeResource(Resource):
    """``POST /authorize/<account>``: start the flow the account's grant calls for."""

    isLeaf = True

    def __init__(
        self, authorizer: Authorizer, config: Config, csrf: CSRFToken, clock: IReactorTime
    ) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.config = config
        self.csrf = csrf
        self.clock = clock

    def render_GET(self, request: Any) -> bytes:
        _headers(request)
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return page("Use the button", ["Start an authorisation from the console."], "failed")

    def render_POST(self, request: Any) -> Any:
        args = request.args or {}
        if not self.csrf.check((args.get(b"csrf") or [None])[0]):
            _headers(request)
            request.setResponseCode(403)
            return page(
                "Forbidden",
                ["This form is stale or did not come from the console: reload the console."],
                "failed",
            )
        segments = [s for s in request.postpath if s]
        name = segments[0].decode("utf-8", "replace") if len(segments) == 1 else ""
        try:
            account = self.config.account(name)
        except KeyError:
            _headers(request)
            request.setResponseCode(404)
            return page("No such account", [html.escape(f"{name!r} is not configured.")], "failed")
        if not account.configured:
            _headers(request)
            request.setResponseCode(409)
            return page(
                "Not configured",
                [html.escape(f"Set client_id in profiles.{account.profile.name} first.")],
                "failed",
            )
        if account.grant == "device_code":
            return _renderAsync(request, lambda: self._device(request, name))
        if account.grant == "client_credentials":
            return _renderAsync(request, lambda: self._app(request, name))
        _headers(request)
        try:
            url, _ = self.authorizer.begin(name, callbackURI(self.config, request))
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason)
        request.setResponseCode(303)
        request.setHeader(b"location", url.encode("utf-8"))
        return page("Continue at the provider", ["Your browser should go there now."])

    async def _device(self, request: Any, name: str) -> bytes | None:
        try:
            await self.authorizer.startDevice(name)
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason)
        request.setResponseCode(303)
        request.setHeader(b"location", b"/device/" + quote(name, safe="").encode("ascii"))
        return page("Device authorisation", ["Continue on the device page."])

    async def _app(self, request: Any, name: str) -> bytes:
        try:
            result = await self.authorizer.authorizeApp(name)
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason)
        return page("Authorised", [html.escape(describeAuthorized(result, self.clock.seconds()))])


class CallbackResource(Resource):
    """``GET /callback``: where the provider sends the browser back."""

    isLeaf = True

    def __init__(self, authorizer: Authorizer, clock: IReactorTime) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.clock = clock

    def render_GET(self, request: Any) -> Any:
        return _renderAsync(request, lambda: self._complete(request))

    async def _complete(self, request: Any) -> bytes:
        url = request.uri.decode("utf-8", "replace")
        if not urlsplit(url).query:
            return _failurePage(
                request, 400, None, "this address carries no answer from the provider"
            )
        try:
            result = await self.authorizer.complete(url)
        except AccountAuthorizationFailed as e:
            return _failurePage(request, 400, e.account, e.reason)
        except AuthorizationFailed as e:
            return _failurePage(request, 400, None, e.reason)
        except Exception as e:  # never a traceback, never the URL (it carries the code)
            log.error("callback failed: {why}", why=explain(e))
            return _failurePage(request, 500, None, explain(e))
        message = describeAuthorized(result, self.clock.seconds())
        return page("Authorised", [html.escape(message)], "ok")


class DevicePage(Resource):
    """``GET /device/<account>``: the user code to enter, reloading until it is answered."""

    isLeaf = True

    def __init__(self, authorizer: Authorizer, clock: IReactorTime) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.clock = clock

    def render_GET(self, request: Any) -> bytes:
        _headers(request)
        e = html.escape
        segments = [s for s in request.postpath if s]
        name = segments[0].decode("utf-8", "replace") if len(segments) == 1 else ""
        flow = self.authorizer.devices.get(name)
        if flow is None:
            request.setResponseCode(404)
            return page(
                "No device authorisation",
                [e(f"No device authorisation of {name!r} is running: start one on the console.")],
                "failed",
            )
        if flow.state == "ok":
            return page("Authorised", [e(flow.message)], "ok")
        if flow.state == "failed":
            return _failurePage(request, 200, name, flow.message)
        auth = flow.authorization
        uri = auth.verification_uri
        shown = e(uri)
        if urlsplit(uri).scheme in ("http", "https"):
            shown = f"<a href='{e(uri)}' target='_blank' rel='noopener noreferrer'>{e(uri)}</a>"
        left = max(0, int(auth.expires_at - self.clock.seconds()))
        return page(
            f"Authorise {name}",
            [
                f"Open {shown} and enter the code <code>{e(auth.user_code)}</code>.",
                e(
                    f"The code is valid for {left // 60} more minutes. This page reloads"
                    " by itself and shows the result."
                ),
            ],
            refresh=DEVICE_PAGE_REFRESH,
        )
