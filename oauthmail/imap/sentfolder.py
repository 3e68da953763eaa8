"""Looking in an account's Sent folder over IMAP: did the provider take a message?

The outbound queue cannot tell whether a message whose final dot went out
without an answer was accepted. Gmail and Microsoft 365 file every accepted
message in Sent, so :class:`IMAPSentFolder` (the IMAP side of
:class:`~oauthmail.interfaces.ISentFolder`) opens one short session per
question: token, connect (TLS, verified), ``AUTHENTICATE``, find the folder,
``EXAMINE`` it (read-only: the check must not change the user's mailbox),
one search per probe, ``BODY.PEEK[HEADER]`` of the hits, ``LOGOUT``.

The search is ``UID SEARCH HEADER Message-ID <id>``, except on Gmail
(``X-GM-EXT-1`` advertised), whose header search misses some IDs and whose
documented way is ``UID SEARCH X-GM-RAW "rfc822msgid:<id>"``.

A hit counts only when its header carries the queue id in oauthmail's
``Received:`` line (:func:`oauthmail.mail.trace.carriesQueueId`): the user's
mail program may have put its own copy, with the same Message-ID, in Sent
before the provider ever saw the message.

Every failure, whatever its layer (refused connection, certificate,
authentication, ``NO``/``BAD``, a server that stops answering, garbage),
becomes one :class:`~oauthmail.mail.trace.SentCheckError` line naming the
account, the server and the step; the queue waits and asks again. The whole
call is bounded by ``deadline`` on top of the per-command deadline of
the :class:`~oauthmail.interfaces.IIMAPSession`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from oauthmail.config import AccountConfig, ServerConfig
from oauthmail.imap.auth import authenticateRefreshingOnce
from oauthmail.imap.connect import connectIMAP
from oauthmail.interfaces import IIMAPSession, ISentFolder, ITokenSource
from oauthmail.mail.trace import SentCheckError, SentProbe, carriesQueueId
from oauthmail.secret import plain, scrub
from oauthmail.text import cleanText

__all__ = ["IMAPSentFolder", "findSentMailbox", "searchByMessageID", "usesGmailSearch"]

_log = Logger()

#: Headers fetched per ``UID FETCH`` (a header is a few KiB; Gmail's can be 20).
FETCH_BATCH = 200

_UNSELECTABLE = {"\\noselect", "\\nonexistent"}


def findSentMailbox(mailboxes: Iterable[tuple[tuple[str, ...], str]]) -> str | None:
    """The first selectable mailbox with the ``\\Sent`` special-use attribute (RFC 6154)."""
    for attributes, name in mailboxes:
        lowered = {a.lower() for a in attributes}
        if "\\sent" in lowered and not lowered & _UNSELECTABLE:
            return name
    return None


def searchByMessageID(client: IIMAPSession, messageID: str) -> defer.Deferred[list[int]]:
    """The UIDs of the open mailbox whose Message-ID is ``messageID``, as the Sent check searches.

    Gmail (``X-GM-EXT-1`` advertised) is asked its documented way,
    ``X-GM-RAW "rfc822msgid:<id>"`` (its header search misses some IDs);
    other servers ``HEADER Message-ID <id>``. ``ValueError`` (a failed
    Deferred) for an ID that cannot be sent in a search.
    """
    if usesGmailSearch(client):
        bare = messageID.strip().removeprefix("<").removesuffix(">")
        return client.uidSearchGmailRaw(f"rfc822msgid:{bare}")
    return client.uidSearchHeader("Message-ID", messageID)


def usesGmailSearch(client: IIMAPSession) -> bool:
    """Whether the server offers Gmail's extensions (``X-GM-EXT-1``): ask it with X-GM-RAW."""
    return b"X-GM-EXT-1" in (client.capabilities or ())


def _describe(value: BaseException, secrets: Iterable[str]) -> str:
    """One printable line for an exception (IMAP4Exception carries the server's bytes)."""
    args = getattr(value, "args", ())
    if (
        type(value).__str__ is BaseException.__str__
        and len(args) == 1
        and isinstance(args[0], bytes)
    ):
        text = args[0].decode("utf-8", "replace")
    else:
        text = str(value)
    text = " ".join(scrub(text, secrets).split())
    return cleanText(text or type(value).__name__)


class _Call:
    """What one ``findSent`` call knows, for the error line and the cleanup."""

    def __init__(self, name: str, server: ServerConfig | None) -> None:
        self.name = name
        self.where = f"{server.host}:{server.port}" if server is not None else "(no IMAP server)"
        self.step = "starting"
        self.secrets: list[str] = []
        self.client: IIMAPSession | None = None

    def error(self, what: str) -> SentCheckError:
        return SentCheckError(f"Sent check for account {self.name} on {self.where}: {what}")

    def refreshed(self, token: Any) -> None:
        self.secrets.append(plain(token))
        self.step = "authenticating with a refreshed token"

    def failed(self, value: BaseException) -> SentCheckError:
        return self.error(f"failed while {self.step}: {_describe(value, self.secrets)}")


@implementer(ISentFolder)
class IMAPSentFolder:
    """:class:`~oauthmail.interfaces.ISentFolder` over IMAP: one session per ``findSent``.

    ``connect(reactor, server, timeout)`` opens a TLS-protected, greeted
    :class:`~oauthmail.interfaces.IIMAPSession` (tests pass fakes).
    ``timeout`` bounds the connection and each command; ``deadline`` (default
    four times ``timeout``) the whole call, however many probes it has.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        accounts: Mapping[str, AccountConfig],
        tokens: ITokenSource,
        connect: Callable[..., defer.Deferred[IIMAPSession]] = connectIMAP,
        timeout: float = 30.0,
        deadline: float | None = None,
    ) -> None:
        self.reactor = reactor
        self.accounts = accounts
        self.tokens = tokens
        self._connect = connect
        self.timeout = timeout
        self.deadline = deadline if deadline is not None else 4 * timeout

    def findSent(self, account_name: str, probes: Iterable[SentProbe]) -> defer.Deferred[set[str]]:
        """Fire with the queue ids of ``probes`` whose copy (with our trace) is in Sent."""
        probes = list(probes)
        account = self.accounts.get(account_name)
        call = _Call(account_name, account.profile.imap if account is not None else None)
        if not probes:
            return defer.succeed(set())
        d = defer.ensureDeferred(self._find(call, account, probes))

        def timedOut(result: Any, timeout: float) -> Failure:
            error = call.error(f"no answer within {timeout:g} s (while {call.step})")
            _log.info("{error}", error=str(error))
            return Failure(error)

        d.addTimeout(self.deadline, self.reactor, onTimeoutCancel=timedOut)
        return d

    async def _find(
        self, call: _Call, account: AccountConfig | None, probes: list[SentProbe]
    ) -> set[str]:
        if account is None:
            raise call.error("no such account")
        server = account.profile.imap
        smtp = account.smtp
        folder = smtp.sent_folder if smtp is not None else "none"
        if server is None:
            raise call.error("the account's profile has no IMAP server")
        if folder == "none":
            raise call.error("smtp.sent_folder is none: the Sent folder is not to be searched")
        try:
            found, mailbox = await self._session(call, account, server, folder, probes)
        except defer.CancelledError:
            raise  # the caller's cancel, or the deadline (which says so itself)
        except SentCheckError as e:
            _log.info("{error}", error=str(e))
            raise
        except Exception as e:
            error = call.failed(e)
            _log.info("{error}", error=str(error))
            raise error from None
        _log.info(
            "Sent check for account {account}: {found} of {probed} message(s) found in {mailbox}",
            account=call.name,
            found=len(found),
            probed=len(probes),
            mailbox=mailbox,
        )
        return found

    async def _session(
        self,
        call: _Call,
        account: AccountConfig,
        server: ServerConfig,
        folder: str,
        probes: list[SentProbe],
    ) -> tuple[set[str], str]:
        call.step = "getting an access token"
        token = await self.tokens.accessToken(call.name)
        call.secrets.append(plain(token))
        call.step = "connecting"
        client = call.client = await self._connect(self.reactor, server, self.timeout)
        client.commandTimeout = self.timeout
        done = False
        try:
            call.step = "authenticating"
            await self._authenticate(call, client, account, server, token)
            host = server.server_name or server.host
            if folder == "auto":
                call.step = "listing mailboxes"
                mailbox = findSentMailbox(await client.listMailboxes())
                if mailbox is None:
                    raise call.error(
                        f"no mailbox is marked \\Sent on {host}; set smtp.sent_folder to its name"
                    )
            else:
                mailbox = folder
            call.step = f"opening mailbox {mailbox!r}"
            await client.examineFolder(mailbox)
            found = await self._search(call, client, probes)
            call.step = "logging out"
            try:
                await client.logout()
            except Exception:  # noqa: S110 - the answer is known; the link is closed below
                pass
            done = True
            return found, mailbox
        finally:
            _close(client, gracefully=done)

    async def _authenticate(
        self,
        call: _Call,
        client: IIMAPSession,
        account: AccountConfig,
        server: ServerConfig,
        token: Any,
    ) -> None:
        """``AUTHENTICATE``; a refused token is refreshed once and tried again (as the watcher)."""
        mech = account.imap.mechanism if account.imap is not None else None
        if mech is None:
            mech = account.smtp.mechanism if account.smtp is not None else "xoauth2"
        await authenticateRefreshingOnce(
            client,
            self.tokens,
            call.name,
            mech,
            account.sasl_user,
            token,
            server.server_name or server.host,
            server.port,
            f"Sent check for account {call.name}",
            onRefreshed=call.refreshed,
            providerKind=account.profile.kind,
        )

    async def _search(self, call: _Call, client: IIMAPSession, probes: list[SentProbe]) -> set[str]:
        """The queue ids of ``probes`` with a traced copy in the open mailbox."""
        call.step = "searching by Message-ID"
        hits: dict[int, list[SentProbe]] = {}
        byMessageID: dict[str, list[SentProbe]] = {}
        for probe in probes:
            byMessageID.setdefault(probe.message_id, []).append(probe)
        for messageID, group in byMessageID.items():
            try:
                uids = await searchByMessageID(client, messageID)
            except ValueError as e:
                # Cannot be searched for, so cannot be found: the caller sends it again.
                _log.warn(
                    "Sent check for account {account}: cannot search for {mid!r}: {e}",
                    account=call.name,
                    mid=messageID,
                    e=str(e),
                )
                continue
            for uid in uids:
                hits.setdefault(uid, []).extend(group)
        found: set[str] = set()
        if not hits:
            return found
        call.step = "fetching headers"
        ordered = sorted(hits)
        for start in range(0, len(ordered), FETCH_BATCH):
            for uid, header in await client.fetchHeaders(ordered[start : start + FETCH_BATCH]):
                for probe in hits.get(uid, ()):
                    if carriesQueueId(header, probe.queue_id):
                        found.add(probe.queue_id)
        return found


def _close(client: IIMAPSession, gracefully: bool) -> None:
    """Close the connection: politely after LOGOUT, at once after an error or a cancel."""
    if gracefully:
        client.close()
    else:
        client.abort()
