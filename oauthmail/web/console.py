"""The operator's web console: one page of account states and a health JSON.

It answers the questions an operator has at 3 a.m.: is each account
authorised, when does its token expire, what went wrong last, and what to do
next. It reads states and expiry times from the store and never a token.
It binds to loopback by default. When it is given an ``Authorizer`` each
configured account gets an Authorise / Re-authorise button (a POST form with
a CSRF token) and the authorisation pages of :mod:`oauthmail.web.authorize`
are mounted; without one the pages are read-only.
"""

from __future__ import annotations

import datetime
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oauthmail.config import Config
from oauthmail.interfaces import ITokenStore
from oauthmail.text import describeWhen
from oauthmail.web.authorize import (
    AuthorizeResource,
    CallbackResource,
    CSRFToken,
    DevicePage,
    actionForm,
)
from oauthmail.web.status import AccountStatus, accountStatus

#: The button's label per state; states not listed get no button.
BUTTON_LABELS = {
    "unauthorised": "Authorise",
    "needs_reauth": "Re-authorise",
    "error": "Re-authorise",
    "ok": "Re-authorise",
    "refreshing": "Re-authorise",
}

STATE_LABELS = {
    "not_configured": "not configured",
    "unauthorised": "unauthorised",
    "ok": "ok",
    "refreshing": "refreshing",
    "needs_reauth": "needs re-authorisation",
    "error": "error",
    "starting": "starting",
    "retrying": "retrying",
    "paused": "paused",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .4em .8em; border-bottom: 1px solid #ddd; vertical-align: top; }
.state { font-weight: bold; }
.ok { color: #17692a; } .needs_reauth, .error { color: #a11; }
.not_configured, .unauthorised { color: #8a5a00; }
.hint { color: #555; font-size: .9em; }
"""


@dataclass(frozen=True)
class LiveParts:
    """The running parts the console reports on besides the store.

    ``watchers`` maps account names to their IMAP ``AccountWatcher`` (with a
    ``status()`` dict); ``queue`` is the ``OutboundQueue`` (with ``stats()``);
    ``health`` the daemon's :class:`~oauthmail.interfaces.IAccountHealth`. All
    are optional so the console also runs over a bare store.
    """

    watchers: Mapping[str, Any] = field(default_factory=dict)
    queue: Any = None
    health: Any = None


async def collectStatuses(
    config: Config, store: ITokenStore, live: LiveParts | None = None, now: float | None = None
) -> list[AccountStatus]:
    """Every configured account's status, in configuration order."""
    live = live or LiveParts()
    sending = await live.queue.stats() if live.queue is not None else {}
    statuses = []
    for account in config.accounts:
        record = await store.getAccount(account.name)
        tokens = await store.getTokens(account.name)
        watcher = live.watchers.get(account.name)
        receiving = watcher.status() if watcher is not None else None
        view = live.health.view(account.name) if live.health is not None else None
        statuses.append(
            accountStatus(account, record, tokens, receiving, sending.get(account.name), view, now)
        )
    return statuses


class _AsyncPage(Resource):
    """A leaf whose body comes from a coroutine; failures become a plain 500."""

    isLeaf = True
    log = Logger()
    content_type = b"text/html; charset=utf-8"

    def __init__(
        self,
        config: Config,
        store: ITokenStore,
        clock: IReactorTime,
        live: LiveParts | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.clock = clock
        self.live = live

    async def body(self, request: Any) -> bytes:
        raise NotImplementedError

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"x-frame-options", b"DENY")
        d = defer.ensureDeferred(self.body(request))

        def written(data: bytes) -> None:
            request.write(data)
            request.finish()

        def failed(failure: Any) -> None:
            self.log.failure("console page failed", failure)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"internal error; see the oauthmail log\n")
            request.finish()

        d.addCallbacks(written, failed)
        return NOT_DONE_YET


class StatusPage(_AsyncPage):
    #: Set by ``ConsoleResource`` when authorisation is possible: forms carry it.
    csrf: Any = None

    async def body(self, request: Any) -> bytes:
        statuses = await collectStatuses(self.config, self.store, self.live, self.clock.seconds())
        buttons = None
        if self.csrf is not None:
            buttons = {}
            for account in self.config.accounts:
                status = next(s for s in statuses if s.name == account.name)
                label = BUTTON_LABELS.get(status.state)
                if label is not None:
                    buttons[account.name] = actionForm(account.name, self.csrf, label)
        return renderStatusPage(statuses, self.clock.seconds(), buttons).encode("utf-8")


class HealthPage(_AsyncPage):
    """Machine-readable status for monitoring.

    200 ``ok`` only when there is at least one configured account and every
    configured account is fully ok (tokens, every folder, SMTP); 503
    ``degraded`` otherwise; 503 ``unconfigured`` when no account is
    configured at all (a daemon that can do nothing is not healthy).
    """

    content_type = b"application/json"

    async def body(self, request: Any) -> bytes:
        now = self.clock.seconds()
        statuses = await collectStatuses(self.config, self.store, self.live, now)
        configured = [s for s in statuses if s.state != "not_configured"]
        healthy = bool(configured) and all(s.state in ("ok", "refreshing") for s in configured)
        if not healthy:
            request.setResponseCode(503)
        status = "ok" if healthy else "degraded" if configured else "unconfigured"
        payload = {
            "status": status,
            "now": self.clock.seconds(),
            "accounts": [s.asJSON() for s in statuses],
        }
        return json.dumps(payload, indent=2).encode("utf-8") + b"\n"


class ConsoleResource(Resource):
    """The root of the console site.

    ``authorizer`` (an :class:`oauthmail.tokens.authorize.Authorizer`) turns on the
    Authorise buttons and mounts ``/authorize/<account>``, ``/callback`` and
    ``/device/<account>``; ``csrf`` may be given to share one token (tests).
    """

    def __init__(
        self,
        config: Config,
        store: ITokenStore,
        clock: IReactorTime,
        live: LiveParts | None = None,
        authorizer: Any = None,
        csrf: Any = None,
    ) -> None:
        super().__init__()
        self._status = StatusPage(config, store, clock, live)
        self.putChild(b"health", HealthPage(config, store, clock, live))
        self.csrf = None
        if authorizer is not None:
            self.csrf = csrf if csrf is not None else CSRFToken()
            self._status.csrf = self.csrf
            self.putChild(b"authorize", AuthorizeResource(authorizer, config, self.csrf, clock))
            self.putChild(b"callback", CallbackResource(authorizer, clock))
            self.putChild(b"device", DevicePage(authorizer, clock))

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self._status
        return super().getChild(path, request)


def _isoTime(when: float | None) -> str:
    if when is None:
        return ""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def _received(s: AccountStatus, now: float) -> str:
    if s.delivered is None:
        return "—"
    when = describeWhen(s.last_delivery_at, now) if s.last_delivery_at else "none yet"
    return html.escape(f"{when} ({s.delivered} since start)")


def _partsHint(s: AccountStatus) -> str:
    """The parts that are not ok, under the account's state: where to look."""
    troubled = [f"{p.part}: {p.state}" for p in s.parts if p.state != "ok"]
    if not troubled:
        return ""
    return f"<div class='hint'>{html.escape(', '.join(troubled))}</div>"


def _outbox(s: AccountStatus, now: float) -> str:
    if s.queued is None:
        return "—"
    if not s.queued:
        text = "empty"
    else:
        oldest = describeWhen(now - (s.oldest_queued_age or 0.0), now)
        text = f"{s.queued} queued, oldest {oldest}"
    if s.failed_sends:
        text += f"; {s.failed_sends} failed for good"
    return html.escape(text)


def renderStatusPage(
    statuses: list[AccountStatus], now: float, buttons: Mapping[str, str] | None = None
) -> str:
    """The HTML page; every value from config or the store is escaped.

    ``buttons`` maps an account to the (already escaped) HTML of its action form.
    """
    e = html.escape
    rows = []
    for s in statuses:
        action = (buttons or {}).get(s.name, "")
        rows.append(
            "<tr>"
            f"<td>{e(s.name)}<div class='hint'>{e(s.address)}</div></td>"
            f"<td>{e(s.profile)}</td>"
            f"<td class='state {e(s.state)}'>{e(STATE_LABELS.get(s.state, s.state))}"
            f"{_partsHint(s)}</td>"
            f"<td title='{e(_isoTime(s.expires_at))}'>{e(describeWhen(s.expires_at, now))}</td>"
            f"<td title='{e(_isoTime(s.last_refresh_at))}'>"
            f"{e(describeWhen(s.last_refresh_at, now))}</td>"
            f"<td>{_received(s, now)}</td>"
            f"<td>{_outbox(s, now)}</td>"
            f"<td>{e(s.last_error or '')}<div class='hint'>{e(s.next_step)}</div></td>"
            + (f"<td>{action}</td>" if buttons is not None else "")
            + "</tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='8'>No accounts are configured yet.</td></tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<title>oauthmail</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>oauthmail</h1>"
        "<table><thead><tr><th>Account</th><th>Profile</th><th>State</th>"
        "<th>Token expires</th><th>Last refresh</th><th>Last mail</th><th>Outbox</th>"
        "<th>Last error / next step</th>"
        + ("<th></th>" if buttons is not None else "")
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        f"<p class='hint'>As of {e(_isoTime(now))}. Machine-readable: "
        "<a href='/health'>/health</a></p>"
        "</body></html>"
    )
