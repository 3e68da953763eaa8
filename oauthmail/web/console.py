"""The operator's web console: one page of account states and a health JSON.

It answers the questions an operator has at 3 a.m.: is each account
authorised, when does its token expire, what went wrong last, and what to do
next. It reads states and expiry times from the store and never a token.
It binds to loopback by default. When it is given an ``Authorizer`` each
configured account gets an Authorise / Re-authorise button (a POST form with
a CSRF token) and the authorisation pages of :mod:`oauthmail.web.authorize`
are mounted; without one the pages are read-only.

Every request passes the guard (:mod:`oauthmail.web.guard`: Host, Origin, login,
CSRF, security headers) in :meth:`ConsoleResource.getChildWithDefault` before any
page runs, whatever ``Site`` serves the resource. Off loopback (or with an admin
password set) the login pages of :mod:`oauthmail.web.login` are mounted too.
"""

from __future__ import annotations

import datetime
import functools
import html
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from oauthmail.cluster.interfaces import ILeaseStore
from oauthmail.cluster.view import collectCluster
from oauthmail.config import Config
from oauthmail.interfaces import IOutbox, ITokenStore
from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.metrics import MetricsPage
from oauthmail.text import describeFailure, describeWhen
from oauthmail.web.authorize import (
    AuthorizeResource,
    CallbackResource,
    DevicePage,
    actionForm,
)
from oauthmail.web.cluster import renderCluster
from oauthmail.web.csrf import CSRFToken
from oauthmail.web.guard import ConsoleAccess, Guard, formActions
from oauthmail.web.login import (
    IAdminPassword,
    LoginPage,
    LogoutResource,
    ScryptAdminPassword,
    logoutForm,
)
from oauthmail.web.messages import MessagesPage, OutboxPage, messagesLink
from oauthmail.web.pages import StylesheetResource, formPage, htmlDocument
from oauthmail.web.remove import RemovePage, removeLink
from oauthmail.web.sessions import LoginThrottle, SessionStore
from oauthmail.web.status import AccountStatus, accountStatus

#: The button's label per state; states not listed get no button.
BUTTON_LABELS = {
    "unauthorised": "Authorise",
    "needs_reauth": "Re-authorise",
    "error": "Re-authorise",
    "ok": "Re-authorise",
    "refreshing": "Re-authorise",
    "starting": "Re-authorise",
    "retrying": "Re-authorise",
    "paused": "Re-authorise",
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


@dataclass(frozen=True)
class LiveParts:
    """The running parts the console reports on besides the store.

    ``watchers`` maps account names to their IMAP ``AccountWatcher`` (with a
    ``status()`` dict); ``queue`` is the ``OutboundQueue`` (with ``stats()``);
    ``health`` the daemon's :class:`~oauthmail.interfaces.IAccountHealth`;
    with several nodes on one store, ``cluster`` is this node's
    :class:`~oauthmail.cluster.keeper.LeaseKeeper` and ``leases`` the lease
    store. All are optional so the console also runs over a bare store.
    """

    watchers: Mapping[str, Any] = field(default_factory=dict)
    queue: Any = None
    health: Any = None
    #: The message log (last mail in/out after a restart, the message pages).
    messages: IMessageLog | None = None
    #: The outbox (the message pages' queue listing and headers).
    outbox: IOutbox | None = None
    #: The daemon's metrics (``/metrics``); ``None``: no such page.
    metrics: Any = None
    cluster: Any = None
    leases: ILeaseStore | None = None


async def collectStatuses(
    config: Config, store: ITokenStore, live: LiveParts | None = None, now: float | None = None
) -> list[AccountStatus]:
    """Every configured account's status, in configuration order."""
    live = live or LiveParts()
    sending = await live.queue.stats() if live.queue is not None else {}
    last = {}
    if live.messages is not None:
        names = [a.name for a in config.accounts]
        last = {m.account: m for m in await live.messages.lastMail(names)}
    statuses = []
    for account in config.accounts:
        record = await store.getAccount(account.name)
        tokens = await store.getTokens(account.name)
        watcher = live.watchers.get(account.name)
        receiving = watcher.status() if watcher is not None else None
        view = live.health.view(account.name) if live.health is not None else None
        status = accountStatus(
            account, record, tokens, receiving, sending.get(account.name), view, now
        )
        mail = last.get(account.name)
        if mail is not None:  # what the log remembers from before a restart
            status = replace(
                status,
                last_delivery_at=status.last_delivery_at or mail.received_at,
                last_sent_at=mail.sent_at,
            )
        statuses.append(status)
    return statuses


class _AsyncPage(Resource):
    """A leaf whose body comes from a coroutine; failures become a plain 500."""

    isLeaf = True
    log = Logger()
    content_type = b"text/html; charset=utf-8"

    def __init__(
        self,
        statuses: Callable[[float], Awaitable[list[AccountStatus]]],
        clock: IReactorTime,
        live: LiveParts | None,
    ) -> None:
        super().__init__()
        #: The accounts' statuses at a time (the console's :func:`collectStatuses`).
        self.statuses = statuses
        self.clock = clock
        self.live = live

    async def body(self, request: Any) -> bytes:
        raise NotImplementedError

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", self.content_type)
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
    #: Set by ``ConsoleResource``: what the guard found (the CSRF field, the session).
    guard: Guard | None = None
    #: Set by ``ConsoleResource`` when authorisation is possible (Authorise buttons).
    buttons = False

    async def body(self, request: Any) -> bytes:
        statuses = await self.statuses(self.clock.seconds())
        access = self.guard.accessOf(request) if self.guard is not None else None
        buttons = None
        if self.buttons and access is not None:
            buttons = {}
            for status in statuses:
                label = BUTTON_LABELS.get(status.state)
                if label is not None:
                    buttons[status.name] = actionForm(status.name, access.field(), label)
                    buttons[status.name] += removeLink(status.name)
        logout = ""
        if access is not None and access.session is not None:
            logout = logoutForm(access.field())
        if buttons or logout:
            formPage(request)
        live = self.live or LiveParts()
        cluster = renderCluster(await collectCluster(live.leases, live.cluster))
        return renderStatusPage(statuses, self.clock.seconds(), buttons, logout, cluster).encode()


class HealthPage(_AsyncPage):
    """Machine-readable status for monitoring.

    200 ``ok`` only when there is at least one configured account and every
    configured account is fully ok (tokens, every folder, SMTP); 503
    ``degraded`` otherwise; 503 ``unconfigured`` when no account is
    configured at all (a daemon that can do nothing is not healthy); 503
    ``store_unreachable`` when the store does not answer, or (several nodes)
    this node's last heartbeat failed: it lost its database, its folders are
    stopping or stopped, other nodes take them over.
    """

    content_type = b"application/json"

    async def body(self, request: Any) -> bytes:
        now = self.clock.seconds()
        keeper = self.live.cluster if self.live is not None else None
        node = keeper.status() if keeper is not None else None
        if keeper is not None and keeper.cutOff:
            return self._unavailable(request, now, node["error"], node)
        try:
            statuses = await self.statuses(now)
        except Exception as e:  # the store (a PostgreSQL server, a disk) does not answer
            return self._unavailable(request, now, describeFailure(e), node)
        configured = [s for s in statuses if s.state != "not_configured"]
        healthy = bool(configured) and all(s.state in ("ok", "refreshing") for s in configured)
        if not healthy:
            request.setResponseCode(503)
        status = "ok" if healthy else "degraded" if configured else "unconfigured"
        payload: dict[str, Any] = {
            "status": status,
            "now": self.clock.seconds(),
            "accounts": [s.asJSON() for s in statuses],
        }
        if node is not None:
            payload["node"] = node
        return json.dumps(payload, indent=2).encode("utf-8") + b"\n"

    @staticmethod
    def _unavailable(request: Any, now: float, error: str, node: Any) -> bytes:
        request.setResponseCode(503)
        payload = {
            "status": "store_unreachable",
            "now": now,
            "error": error,
            "node": node,
            "accounts": [],
        }
        return json.dumps(payload, indent=2).encode("utf-8") + b"\n"


def accessFromConfig(config: Config) -> ConsoleAccess:
    """Who may use the console, as the ``web:`` section says."""
    web = config.web
    return ConsoleAccess(
        bind=web.bind,
        allowed_hosts=web.allowed_hosts,
        admin_password_hash=web.admin_password_hash,
        session_lifetime=web.session_lifetime,
    )


class ConsoleResource(Resource):
    """The root of the console site.

    ``authorizer`` (an :class:`oauthmail.tokens.authorize.Authorizer`) turns on the
    Authorise buttons and mounts ``/authorize/<account>``, ``/callback`` and
    ``/device/<account>``; ``csrf`` may be given to share one token (tests).
    ``access`` says who may use the console (default: ``web.bind`` from ``config``,
    no password); ``admin_password`` replaces the scrypt check of
    ``access.admin_password_hash`` (tests), which runs in ``clock``'s thread pool.
    """

    def __init__(
        self,
        config: Config,
        store: ITokenStore,
        clock: IReactorTime,
        live: LiveParts | None = None,
        authorizer: Any = None,
        csrf: CSRFToken | None = None,
        *,
        access: ConsoleAccess | None = None,
        admin_password: IAdminPassword | None = None,
    ) -> None:
        super().__init__()
        self.access = access if access is not None else accessFromConfig(config)
        self.csrf = csrf if csrf is not None else CSRFToken()
        self.sessions = SessionStore(clock, self.access.session_lifetime)
        endpoints = (p.authorization_endpoint for p in config.profiles.values())
        self.guard = Guard(self.access, self.csrf, self.sessions, formActions(endpoints))
        statuses = functools.partial(collectStatuses, config, store, live)
        self._status = StatusPage(statuses, clock, live)
        self._status.guard = self.guard
        self.putChild(b"health", HealthPage(statuses, clock, live))
        self.putChild(b"style.css", StylesheetResource())
        self._mountOperatorPages(config, store, clock, live)
        if authorizer is not None:
            self._status.buttons = True
            self.putChild(b"authorize", AuthorizeResource(authorizer, config, clock))
            self.putChild(b"callback", CallbackResource(authorizer, clock))
            self.putChild(b"device", DevicePage(authorizer, clock))
            queue = live.queue if live is not None else None
            self.putChild(b"remove", RemovePage(authorizer.tokens, queue, clock, self.guard))
        if self.access.login_required:
            if admin_password is None:
                assert self.access.admin_password_hash is not None  # ConsoleAccess checked
                admin_password = ScryptAdminPassword(
                    self.access.admin_password_hash,
                    clock,  # type: ignore[arg-type]
                )
            throttle = LoginThrottle(clock)
            login = LoginPage(self.guard, admin_password, self.sessions, throttle)
            self.putChild(b"login", login)
            self.putChild(b"logout", LogoutResource(self.guard, self.sessions))

    def _mountOperatorPages(
        self, config: Config, store: ITokenStore, clock: IReactorTime, live: LiveParts | None
    ) -> None:
        """The message pages and ``/metrics`` (see :mod:`oauthmail.web.messages`)."""
        live = live or LiveParts()
        pages = (live.messages, live.outbox, self.guard, clock, live.queue)
        self.putChild(b"messages", MessagesPage(config, *pages))
        self.putChild(b"outbox", OutboxPage(config, *pages))
        if live.metrics is not None:
            metrics = live.metrics
            names = [a.name for a in config.accounts]

            async def gather() -> None:
                await metrics.refresh(names, store, live.queue, live.watchers, live.health)

            self.putChild(b"metrics", MetricsPage(metrics, gather))

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        refused = self.guard.check(path, request)
        if refused is not None:
            return refused
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Any) -> Resource:
        if path == b"":
            return self._status
        return notFound("No such page", "The console has no page at this address.")


def _isoTime(when: float | None) -> str:
    if when is None:
        return ""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )


def _received(s: AccountStatus, now: float) -> str:
    if s.delivered is None and s.last_delivery_at is None and s.last_sent_at is None:
        return "—"
    parts = []
    if s.delivered is not None or s.last_delivery_at is not None:
        when = describeWhen(s.last_delivery_at, now) if s.last_delivery_at else "none yet"
        since = f" ({s.delivered} since start)" if s.delivered is not None else ""
        parts.append(f"in: {when}{since}")
    if s.last_sent_at is not None:
        parts.append(f"out: {describeWhen(s.last_sent_at, now)}")
    return "<br>".join(html.escape(p) for p in parts)


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
    statuses: list[AccountStatus],
    now: float,
    buttons: Mapping[str, str] | None = None,
    logout: str = "",
    cluster: str = "",
) -> str:
    """The HTML page; every value from config or the store is escaped.

    ``buttons`` maps an account to the (already escaped) HTML of its action form;
    ``logout`` is the (already escaped) Log out form, shown in a logged-in session;
    ``cluster`` the (already escaped) nodes and folders section, if any.
    """
    e = html.escape
    rows = []
    for s in statuses:
        action = (buttons or {}).get(s.name, "")
        rows.append(
            "<tr>"
            f"<td>{messagesLink(s.name)}<div class='hint'>{e(s.address)}</div></td>"
            f"<td>{e(s.profile)}</td>"
            f"<td class='state {e(s.state)}'>{e(STATE_LABELS.get(s.state, s.state))}"
            "</td>"
            f"<td title='{e(_isoTime(s.expires_at))}'>{e(describeWhen(s.expires_at, now))}</td>"
            f"<td title='{e(_isoTime(s.last_refresh_at))}'>"
            f"{e(describeWhen(s.last_refresh_at, now))}</td>"
            f"<td>{_received(s, now)}</td>"
            f"<td>{_outbox(s, now)}</td>"
            f"<td>{e(s.last_error or '')}<div class='hint'>{e(s.next_step)}</div>"
            f"{_partsHint(s)}</td>"
            + (f"<td>{action}</td>" if buttons is not None else "")
            + "</tr>"
        )
    if not rows:
        rows.append("<tr><td colspan='8'>No accounts are configured yet.</td></tr>")
    return htmlDocument(
        "oauthmail",
        f"<header><h1>oauthmail</h1>{logout}</header>"
        "<table><thead><tr><th>Account</th><th>Profile</th><th>State</th>"
        "<th>Token expires</th><th>Last refresh</th><th>Last mail</th><th>Outbox</th>"
        "<th>Last error / next step</th>"
        + ("<th></th>" if buttons is not None else "")
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + cluster
        + f"<p class='hint'>As of {e(_isoTime(now))}. An account's name leads to its messages."
        " Machine-readable: <a href='/health'>/health</a>, <a href='/metrics'>/metrics</a></p>",
    )
