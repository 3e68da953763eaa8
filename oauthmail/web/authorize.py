"""The console's authorisation pages: the Authorise button, the callback, the device page.

``POST /authorize/<account>`` starts the flow the account's ``grant`` calls for: a 303 to
the provider (authorization code + PKCE), a device code page (device flow), or a token
request on the spot (client credentials). ``GET /callback`` is the loopback redirect URI:
it finishes the browser flow and shows a plain sentence — the account is authorised and
when its token expires, or what went wrong and what to do — and never a token or code.

The guard (:mod:`oauthmail.web.guard`) has checked the Host, the Origin and the CSRF
token of every POST before it reaches these pages, so another site open in the same
browser cannot start (or replace) an authorisation behind the operator's back. The
callback URL carries a code: the guard's ``no-referrer`` and ``no-store`` keep it out of
Referer headers and caches, and every provider-supplied text is escaped on the page.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource

from oauthmail.config import Config, ProfileConfig
from oauthmail.tokens.authorize import (
    FIX_CONFIGURATION,
    RETRY,
    SIGN_IN_AS_ACCOUNT,
    AccountAuthorizationFailed,
    Authorizer,
    describeAuthorized,
    explain,
    remedyOf,
)
from oauthmail.tokens.errors import AuthorizationFailed
from oauthmail.web.csrf import CSRFToken
from oauthmail.web.pages import page, renderAsync

__all__ = [
    "AuthorizeResource",
    "CSRFToken",
    "CallbackResource",
    "DevicePage",
    "actionForm",
    "callbackURI",
]

log = Logger()

#: Seconds between reloads of the device code page while the person has not answered.
DEVICE_PAGE_REFRESH = 5


def callbackURI(config: Config, request: Any = None, profile: ProfileConfig | None = None) -> str:
    """The redirect URI of an authorisation: where the provider sends the browser back.

    The profile's own when it has one (:meth:`ProfileConfig.redirectURIFor`:
    an explicit ``redirect_uri``, or ``http://localhost:{port}/callback`` for
    Microsoft, which accepts ``http`` only for ``localhost``); else
    ``http://{web.bind}:{web.port}/callback``. Port 0 means the port we listen
    on (``request``'s), so a Microsoft profile gets its localhost URI then too.
    """
    port = config.web.port
    if not port and request is not None:
        port = request.getHost().port
    if profile is not None:
        own = profile.redirectURIFor(port)
        if own is not None:
            return own
    host = config.web.bind
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard is not an address to visit
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/callback"


def actionForm(account: str, field: str, label: str) -> str:
    """The POST form of an account's Authorise / Re-authorise button.

    ``field`` is the hidden CSRF field (already HTML); the rest is escaped here.
    """
    action = "/authorize/" + quote(account, safe="")
    return (
        f"<form class='inline' method='post' action='{html.escape(action)}'>"
        f"{field}<button type='submit'>{html.escape(label)}</button></form>"
    )


def _headers(request: Any) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")


#: The page's "What to do" for each remedy (``oauthmail.tokens.authorize.remedyOf``).
_WHAT_TO_DO = {
    RETRY: "What to do: go back to the console and press Authorise (or Re-authorise)"
    " again. If you started with <code>oauthmail authorize</code> on the command"
    " line, copy this page's address from the address bar and paste it there.",
    FIX_CONFIGURATION: "What to do: this is a configuration error, and trying again fails"
    " the same way. Fix what is said above in the configuration file (or the app's"
    " registration at the provider), restart oauthmail, then authorise again.",
    SIGN_IN_AS_ACCOUNT: "Nothing was stored. What to do: press Authorise (or Re-authorise)"
    " again and, at the provider, choose or sign in to the account named above; if the"
    " provider picks another account by itself, sign out of it there first (or use a"
    " private browser window).",
}


def _failurePage(
    request: Any, status: int, account: str | None, why: str, remedy: str = RETRY
) -> bytes:
    """The failure sentence (escaped: provider text) and what to do about it."""
    request.setResponseCode(status)
    e = html.escape
    what = f"Authorisation of {account} failed" if account else "Authorisation failed"
    return page(
        what,
        [e(why[:1].upper() + why[1:]) + ".", _WHAT_TO_DO.get(remedy, _WHAT_TO_DO[RETRY])],
        "failed",
    )


class AuthorizeResource(Resource):
    """``POST /authorize/<account>``: start the flow the account's grant calls for."""

    isLeaf = True

    def __init__(self, authorizer: Authorizer, config: Config, clock: IReactorTime) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.config = config
        self.clock = clock

    def render_GET(self, request: Any) -> bytes:
        _headers(request)
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return page("Use the button", ["Start an authorisation from the console."], "failed")

    def render_POST(self, request: Any) -> Any:
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
            missing = account.profile.missingSetting
            return page(
                "Not configured",
                [html.escape(f"Set {missing} in profiles.{account.profile.name} first.")],
                "failed",
            )
        if account.grant == "device_code":
            return renderAsync(request, lambda: self._device(request, name))
        if account.grant == "client_credentials":
            return renderAsync(request, lambda: self._app(request, name))
        _headers(request)
        try:
            url, _ = self.authorizer.begin(name, callbackURI(self.config, request, account.profile))
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason, remedyOf(e))
        request.setResponseCode(303)
        request.setHeader(b"location", url.encode("utf-8"))
        return page("Continue at the provider", ["Your browser should go there now."])

    async def _device(self, request: Any, name: str) -> bytes | None:
        try:
            await self.authorizer.startDevice(name)
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason, remedyOf(e))
        request.setResponseCode(303)
        request.setHeader(b"location", b"/device/" + quote(name, safe="").encode("ascii"))
        return page("Device authorisation", ["Continue on the device page."])

    async def _app(self, request: Any, name: str) -> bytes:
        try:
            result = await self.authorizer.authorizeApp(name)
        except AuthorizationFailed as e:
            return _failurePage(request, 400, name, e.reason, remedyOf(e))
        return page("Authorised", [html.escape(describeAuthorized(result, self.clock.seconds()))])


class CallbackResource(Resource):
    """``GET /callback``: where the provider sends the browser back."""

    isLeaf = True

    def __init__(self, authorizer: Authorizer, clock: IReactorTime) -> None:
        super().__init__()
        self.authorizer = authorizer
        self.clock = clock

    def render_GET(self, request: Any) -> Any:
        return renderAsync(request, lambda: self._complete(request))

    async def _complete(self, request: Any) -> bytes:
        url = request.uri.decode("utf-8", "replace")
        if not urlsplit(url).query:
            return _failurePage(
                request, 400, None, "this address carries no answer from the provider"
            )
        try:
            result = await self.authorizer.complete(url)
        except AccountAuthorizationFailed as e:
            return _failurePage(request, 400, e.account, e.reason, e.remedy)
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
            return _failurePage(request, 200, name, flow.message, flow.remedy)
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
