"""The console's message pages: what happened to each account's mail, and the queue's tools.

- ``/messages/<account>``: the account's waiting and failed outbound messages
  (with Retry and Delete buttons), then its newest log entries in and out.
- ``/outbox/<queue id>``: one queued (or finished) message: its state, each
  recipient's outcome, its history from the message log and its **header
  section** (never the body); Retry and Delete.
- ``POST /outbox/<queue id>/retry`` and ``/delete``: act, then send the browser
  back with a 303 to the account's page.

Every POST passed the guard (Host, Origin, login, CSRF) before it reaches this
module; every text from the store or a provider is escaped here.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from oauthmail.config import Config
from oauthmail.interfaces import IOutbox
from oauthmail.mail.trace import headerBlock
from oauthmail.messagelog.interfaces import IMessageLog
from oauthmail.messagelog.records import IN, LogEntry
from oauthmail.smtp.queue.records import DeliveryStatus
from oauthmail.text import cleanText, describeWhen
from oauthmail.web.guard import Guard
from oauthmail.web.pages import formPage, htmlDocument, page, renderAsync

__all__ = ["MessagesPage", "OutboxPage", "messagesLink"]

#: How many log entries an account's page shows per direction.
SHOWN = 50
#: The most header bytes a message page shows.
HEADER_LIMIT = 16 * 1024

e = html.escape


def messagesLink(account: str, text: str | None = None) -> str:
    """A link to the account's message page (escaped HTML)."""
    href = "/messages/" + quote(account, safe="")
    return f"<a href='{e(href)}'>{e(text if text is not None else account)}</a>"


def _outboxLink(queue_id: str, text: str | None = None) -> str:
    href = "/outbox/" + quote(queue_id, safe="")
    return f"<a href='{e(href)}'>{e(text if text is not None else queue_id[:12])}</a>"


def _when(at: float | None, now: float) -> str:
    return e(describeWhen(at, now)) if at is not None else "—"


def _buttons(queue_id: str, field: str, state: str) -> str:
    """Retry (queued or failed) and Delete (any) forms for one message (escaped HTML)."""
    base = "/outbox/" + quote(queue_id, safe="")
    out = []
    if state in ("queued", "failed"):
        out.append(
            f"<form class='inline' method='post' action='{e(base)}/retry'>{field}"
            "<button type='submit'>Retry now</button></form>"
        )
    out.append(
        f"<form class='inline' method='post' action='{e(base)}/delete'>{field}"
        "<button type='submit' class='danger'>Delete</button></form>"
    )
    return " ".join(out)


def _shownState(status: DeliveryStatus) -> str:
    """``deferred`` for a queued message that has been tried (as ``oauthmail queue`` says)."""
    return "deferred" if status.state == "queued" and status.attempts else status.state


def _reply(code: int | None, text: str | None) -> str:
    return cleanText(" ".join(str(x) for x in (code, text) if x), 300)


def _recipients(status: DeliveryStatus) -> str:
    return ", ".join(f"{r.address} ({r.state})" for r in status.recipients)


def _entryRow(entry: LogEntry, now: float) -> str:
    where = e(entry.where) if entry.direction == IN else _outboxLink(entry.queue_id or "?")
    size = f"{entry.size:,}" if entry.size is not None else "—"
    return (
        f"<tr><td title='{e(str(entry.at))}'>{_when(entry.at, now)}</td>"
        f"<td class='outcome {e(entry.outcome)}'>{e(entry.outcome)}</td>"
        f"<td>{where}</td><td>{e(entry.message_id or '—')}</td><td>{e(size)}</td>"
        f"<td>{e(entry.reply or '')}</td></tr>"
    )


def _entryTable(title: str, entries: list[LogEntry], now: float, css: str) -> str:
    head = (
        "<tr><th>When</th><th>Outcome</th><th>Where</th><th>Message-ID</th>"
        "<th>Bytes</th><th>Reply</th></tr>"
    )
    rows = "".join(_entryRow(x, now) for x in entries) or (
        "<tr><td colspan='6'>Nothing yet.</td></tr>"
    )
    table = f"<table class='{css}'><thead>{head}</thead><tbody>{rows}</tbody></table>"
    return f"<h2>{e(title)}</h2>{table}"


class _Page(Resource):
    """Shared: the config, the stores, the guard (for the CSRF field) and the clock."""

    isLeaf = True

    def __init__(
        self,
        config: Config,
        messages: IMessageLog | None,
        outbox: IOutbox | None,
        guard: Guard,
        clock: IReactorTime,
        queue: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.messages = messages
        self.outbox = outbox
        self.guard = guard
        self.clock = clock
        self.queue = queue

    def field(self, request: Any) -> str:
        return self.guard.accessOf(request).field()

    def segments(self, request: Any) -> list[str]:
        return [s.decode("utf-8", "replace") for s in request.postpath if s]


class MessagesPage(_Page):
    """``GET /messages/<account>``."""

    def render_GET(self, request: Any) -> Any:
        segments = self.segments(request)
        name = segments[0] if len(segments) == 1 else ""
        try:
            self.config.account(name)
        except KeyError:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return page("No such account", [e(f"{name!r} is not configured.")], "failed")
        return renderAsync(request, lambda: self._body(request, name))

    async def _body(self, request: Any, name: str) -> bytes:
        now = self.clock.seconds()
        field = self.field(request)
        waiting: list[DeliveryStatus] = []
        if self.outbox is not None:
            waiting = await self.outbox.listMessages(name, limit=200)
        received: list[LogEntry] = []
        sent: list[LogEntry] = []
        if self.messages is not None:
            received = await self.messages.recent(name, "in", SHOWN)
            sent = await self.messages.recent(name, "out", SHOWN)
        rows = []
        for s in waiting:
            state = _shownState(s)
            rows.append(
                f"<tr><td>{_outboxLink(s.id)}</td><td class='state {e(state)}'>{e(state)}</td>"
                f"<td>{_when(s.created_at, now)}</td><td>{e(_recipients(s))}</td>"
                f"<td>{s.attempts}</td><td>{e(s.last_error or '')}"
                + (
                    f"<div class='hint'>next attempt {_when(s.next_attempt_at, now)}</div>"
                    if s.state == "queued"
                    else ""
                )
                + f"</td><td class='actions'>{_buttons(s.id, field, s.state)}</td></tr>"
            )
        queue = (
            "<h2>Outbox: waiting and failed</h2><table class='outbox'><thead><tr><th>Queue id</th>"
            "<th>State</th><th>Queued</th><th>Recipients</th><th>Attempts</th>"
            "<th>Last error</th><th></th></tr></thead><tbody>"
            + ("".join(rows) or "<tr><td colspan='7'>Nothing waits.</td></tr>")
            + "</tbody></table>"
        )
        formPage(request)
        body = (
            f"<header><h1>{e(name)}: messages</h1><a href='/'>Back to the console</a></header>"
            + queue
            + _entryTable("Incoming (newest first)", received, now, "log-in")
            + _entryTable("Outgoing (newest first)", sent, now, "log-out")
            + "<p class='hint'>Kept for "
            + e(f"{self.config.messages.retention / 86400:g}")
            + " days (messages.retention). Bodies are never shown.</p>"
        )
        return htmlDocument(f"{name}: messages — oauthmail", body).encode()


class OutboxPage(_Page):
    """``GET /outbox/<id>``; ``POST /outbox/<id>/retry`` and ``/delete``."""

    def render_GET(self, request: Any) -> Any:
        segments = self.segments(request)
        if len(segments) != 1 or self.outbox is None:
            return self._missing(request, segments[0] if segments else "")
        return renderAsync(request, lambda: self._detail(request, segments[0]))

    def render_POST(self, request: Any) -> Any:
        segments = self.segments(request)
        if len(segments) != 2 or segments[1] not in ("retry", "delete") or self.queue is None:
            return self._missing(request, segments[0] if segments else "")
        return renderAsync(request, lambda: self._act(request, segments[0], segments[1]))

    def _missing(self, request: Any, queue_id: str) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return page("No such message", [e(f"The queue holds no message {queue_id!r}.")], "failed")

    async def _act(self, request: Any, queue_id: str, action: str) -> bytes | None:
        if action == "retry":
            status = await self.queue.retryMessage(queue_id)
        else:
            status = await self.queue.deleteMessage(queue_id)
        if status is None:
            return self._missing(request, queue_id)
        where = "/messages/" + quote(status.account, safe="")
        request.setResponseCode(303)
        request.setHeader(b"location", where.encode("ascii"))
        return page(
            "Done",
            [e(f"{queue_id}: {'retried' if action == 'retry' else 'deleted'}.")],
            back=True,
        )

    async def _detail(self, request: Any, queue_id: str) -> bytes:
        assert self.outbox is not None
        status = await self.outbox.status(queue_id)
        if status is None:
            return self._missing(request, queue_id)
        now = self.clock.seconds()
        data = await self.outbox.messageData(queue_id) or b""
        header = headerBlock(data)[:HEADER_LIMIT].decode("utf-8", "replace")
        history: list[LogEntry] = []
        if self.messages is not None:
            history = await self.messages.history(status.account, queue_id)
        recipients = "".join(
            f"<tr><td>{e(r.address)}</td><td class='state {e(r.state)}'>{e(r.state)}</td>"
            f"<td>{e(_reply(r.code, r.text))}</td></tr>"
            for r in status.recipients
        )
        facts = [
            ("Account", messagesLink(status.account)),
            ("Queue id", e(status.id)),
            (
                "State",
                f"<span class='state {e(_shownState(status))}'>{e(_shownState(status))}</span>",
            ),
            ("Envelope sender", e(status.mail_from or "<> (a bounce)")),
            ("Queued", _when(status.created_at, now)),
            ("Attempts", e(str(status.attempts))),
            ("Last error", e(status.last_error or "—")),
        ]
        if status.state == "queued":
            facts.append(("Next attempt", _when(status.next_attempt_at, now)))
        formPage(request)
        body = (
            f"<header><h1>Message {e(queue_id[:12])}</h1>"
            f"{_buttons(queue_id, self.field(request), status.state)}</header>"
            "<table class='facts'>"
            + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
            + "</table><h2>Recipients</h2><table class='recipients'><thead><tr><th>Recipient</th>"
            "<th>State</th><th>Last reply</th></tr></thead><tbody>"
            + recipients
            + "</tbody></table>"
            + _entryTable("History", history, now, "log-history")
            + "<h2>Header section</h2><pre class='headers'>"
            + e(header)
            + "</pre><p class='hint'>The body is never shown.</p>"
        )
        return htmlDocument(f"Message {queue_id[:12]} — oauthmail", body).encode()
