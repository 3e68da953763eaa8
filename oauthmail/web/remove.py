"""The console's Remove button: a confirmation page, then revoke and delete the tokens.

``GET /remove/<account>`` shows what removing does (revoke the refresh token at the
provider where it offers revocation, delete the tokens, keep the queued mail) and a
POST form to confirm; ``POST /remove/<account>`` does it through
:func:`oauthmail.removal.removeAccount` and shows, line by line, what happened —
including that the revocation did not happen, and where to revoke by hand.

The guard (:mod:`oauthmail.web.guard`) has checked the Host, the Origin and the CSRF
token of the POST before this page runs, so another site cannot remove an account
behind the operator's back; a GET changes nothing. Queued mail is kept here:
dropping it is ``oauthmail remove ACCOUNT --drop-queue``, a deliberate command.
Every text from the configuration or a provider is escaped.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from oauthmail.removal import removeAccount
from oauthmail.tokens.errors import AccountNotAuthorised
from oauthmail.tokens.revocation import manualRevocation
from oauthmail.tokens.source import TokenSource
from oauthmail.web.guard import Guard
from oauthmail.web.pages import formPage, page, renderAsync

__all__ = ["RemovePage", "removeLink"]


def removeLink(account: str) -> str:
    """The link to an account's confirmation page (next to its Authorise button)."""
    href = html.escape("/remove/" + quote(account, safe=""))
    return f" <a class='hint' href='{href}'>Remove…</a>"


def _what(tokens: TokenSource, name: str) -> str:
    """What removing will do at this account's provider, escaped."""
    profile = tokens.account(name).profile
    if profile.revocation_endpoint:
        said = "Its refresh token is revoked at the provider, then its tokens are deleted."
    elif profile.kind == "microsoft":
        said = (
            "Its tokens are deleted. Microsoft has no revocation endpoint: remove the app's"
            " permissions at https://myapps.microsoft.com afterwards."
        )
    else:
        manual = manualRevocation(profile)
        said = "Its tokens are deleted; its profile names no revocation endpoint" + (
            f": revoke by hand at {manual}." if manual else "."
        )
    return html.escape(said)


class RemovePage(Resource):
    """``/remove/<account>``: GET the confirmation, POST to remove.

    :param tokens: the daemon's token source (it revokes, deletes and reports).
    :param queue: the ``OutboundQueue`` (its ``stats()`` counts the mail kept), or ``None``.
    :param guard: the console's guard, for the confirmation form's CSRF field.
    """

    isLeaf = True

    def __init__(self, tokens: TokenSource, queue: Any, clock: IReactorTime, guard: Guard) -> None:
        super().__init__()
        self.tokens = tokens
        self.queue = queue
        self.clock = clock
        self.guard = guard

    def _name(self, request: Any) -> str | None:
        segments = [s for s in request.postpath if s]
        if len(segments) != 1:
            return None
        name = segments[0].decode("utf-8", "replace")
        try:
            self.tokens.account(name)
        except AccountNotAuthorised:
            return None
        return name

    def _unknown(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setResponseCode(404)
        return page("No such account", ["No configured account has that name."], "failed")

    async def _waiting(self, name: str) -> int:
        if self.queue is None:
            return 0
        stats = (await self.queue.stats()).get(name)
        return stats.depth if stats is not None else 0

    def render_GET(self, request: Any) -> Any:
        name = self._name(request)
        if name is None:
            return self._unknown(request)
        return renderAsync(request, lambda: self._confirm(request, name))

    async def _confirm(self, request: Any, name: str) -> bytes:
        e = html.escape
        waiting = await self._waiting(name)
        kept = (
            f"Its {waiting} queued message(s) are kept and leave once it is authorised"
            f" again (to drop them: <code>oauthmail remove {e(name)} --drop-queue</code>)."
            if waiting
            else "It has no queued mail."
        )
        action = e("/remove/" + quote(name, safe=""))
        field = self.guard.accessOf(request).field()
        formPage(request)
        return page(
            f"Remove {name}?",
            [
                _what(self.tokens, name),
                kept,
                "The account stays in the configuration file: authorise it again, or delete"
                " it there.",
                f"<form class='inline' method='post' action='{action}'>{field}"
                f"<button type='submit'>Remove {e(name)}</button></form>"
                " <a href='/'>Cancel</a>",
            ],
            back=False,
        )

    def render_POST(self, request: Any) -> Any:
        name = self._name(request)
        if name is None:
            return self._unknown(request)
        return renderAsync(request, lambda: self._remove(request, name))

    async def _remove(self, request: Any, name: str) -> bytes:
        removal = await removeAccount(
            self.tokens, None, name, drop_queue=False, now=self.clock.seconds()
        )
        lines = removal.lines()
        waiting = await self._waiting(name)
        if waiting:
            lines.insert(
                -1,
                f"{name}: {waiting} message(s) still wait in the outbound queue; they are"
                " kept and leave once the account is authorised again",
            )
        failed = removal.revocationFailed
        title = f"{name} removed" + (", not revoked" if failed else "")
        return page(title, [html.escape(line) for line in lines], "failed" if failed else "ok")
