"""The IMAP side of ``oauthmail test``: one session for the login, the folders and the waiting.

The session is opened as the watcher and the Sent check open theirs
(:func:`oauthmail.imap.connect.connectIMAP`: verified TLS; then
:func:`oauthmail.imap.auth.authenticateRefreshingOnce`: a refused token is
refreshed once and tried again). Messages are looked for as the Sent check
looks for them (:func:`oauthmail.imap.sentfolder.searchByMessageID`), read-only
(``EXAMINE``, ``BODY.PEEK``): the test changes nothing in the mailbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from oauthmail.config import AccountConfig, ServerConfig
from oauthmail.imap.auth import authenticateRefreshingOnce
from oauthmail.imap.connect import connectIMAP
from oauthmail.imap.errors import IMAPCommandError
from oauthmail.imap.sentfolder import findSentMailbox, searchByMessageID, usesGmailSearch
from oauthmail.interfaces import IIMAPSession, ITokenSource
from oauthmail.secret import Secret

__all__ = ["MailboxProbe", "imapMechanism", "sentMailbox"]


def imapMechanism(account: AccountConfig) -> str:
    """The SASL mechanism of the account's IMAP logins (the watcher's, else the Sent check's)."""
    if account.imap is not None:
        return account.imap.mechanism
    return account.smtp.mechanism if account.smtp is not None else "xoauth2"


class MailboxProbe:
    """An authenticated IMAP session of one account, kept for the whole test."""

    def __init__(
        self,
        reactor: Any,
        account: AccountConfig,
        tokens: ITokenSource,
        connect: Callable[..., defer.Deferred[IIMAPSession]] = connectIMAP,
        timeout: float = 30.0,
    ) -> None:
        self.reactor = reactor
        self.account = account
        self.tokens = tokens
        self._connect = connect
        self.timeout = timeout
        self.client: IIMAPSession | None = None
        self.refreshed = False

    @property
    def server(self) -> ServerConfig:
        server = self.account.profile.imap
        assert server is not None
        return server

    async def login(self, token: Secret) -> Secret:
        """Connect and authenticate; fire with the token that worked (a refreshed one, maybe)."""
        server = self.server
        client = self.client = await self._connect(self.reactor, server, self.timeout)
        client.commandTimeout = self.timeout

        def refreshed(_: object) -> None:
            self.refreshed = True

        return await authenticateRefreshingOnce(
            client,
            self.tokens,
            self.account.name,
            imapMechanism(self.account),
            self.account.sasl_user,
            token,
            server.server_name or server.host,
            server.port,
            f"oauthmail test {self.account.name}",
            onRefreshed=refreshed,
            providerKind=self.account.profile.kind,
        )

    @property
    def gmailSearch(self) -> bool:
        """Whether messages are looked for with Gmail's X-GM-RAW (the server offers X-GM-EXT-1)."""
        return self.client is not None and usesGmailSearch(self.client)

    async def mailboxes(self) -> list[tuple[tuple[str, ...], str]]:
        """Every mailbox with its attributes (``LIST "" "*"``)."""
        assert self.client is not None
        return await self.client.listMailboxes()

    async def find(self, folder: str, messageID: str) -> bytes | None:
        """The header of the message ``messageID`` in ``folder``, or ``None`` (not there yet)."""
        client = self.client
        assert client is not None
        try:
            await client.examineFolder(folder)
        except IMAPCommandError:
            return None
        uids = await searchByMessageID(client, messageID)
        if not uids:
            return None
        for _, header in await client.fetchHeaders(uids[-1:]):
            return header
        return None

    async def waitFor(
        self, folder: str, messageID: str, clock: IReactorTime, deadline: float, every: float = 2.0
    ) -> bytes | None:
        """:meth:`find`, asked again every ``every`` seconds until ``deadline`` (clock time)."""
        while True:
            header = await self.find(folder, messageID)
            if header is not None or clock.seconds() >= deadline:
                return header
            pause = min(every, max(0.0, deadline - clock.seconds()))
            await task.deferLater(clock, pause, lambda: None)

    async def close(self) -> None:
        """``LOGOUT`` and close (abort when the server does not answer)."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            await client.logout()
        except Exception:
            client.abort()
            return
        client.close()


def sentMailbox(
    account: AccountConfig, mailboxes: list[tuple[tuple[str, ...], str]]
) -> tuple[str | None, str]:
    """The Sent folder the queue would search, and how it was found (one phrase)."""
    folder = account.smtp.sent_folder if account.smtp is not None else "none"
    if folder not in ("auto", "none"):
        names = [name for _, name in mailboxes]
        return (folder if folder in names else None), "smtp.sent_folder"
    found = findSentMailbox(mailboxes)
    return found, "marked \\Sent"
