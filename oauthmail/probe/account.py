"""The steps of ``oauthmail test ACCOUNT`` in order (see :mod:`oauthmail.probe`).

:class:`AccountProbe` runs them against the account's real provider with the
daemon's own parts (token source, IMAP session, ESMTP client, the queue's
sender) and hands each :class:`~oauthmail.probe.report.StepResult` to
``emit`` as soon as it is known, so a person watching sees which step is
waiting. A step that needs a failed one is reported ``skipped`` with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

from twisted.internet import defer

from oauthmail.config import AccountConfig, ServerConfig
from oauthmail.db.errors import StoreError
from oauthmail.interfaces import IMessageSender, ITokenSource, ITokenStore
from oauthmail.mail.trace import carriesQueueId, stamp
from oauthmail.probe import advice
from oauthmail.probe.mailbox import MailboxProbe, imapMechanism, sentMailbox
from oauthmail.probe.report import FAILED, NOTE, OK, SKIPPED, StepResult
from oauthmail.secret import Secret
from oauthmail.smtp import outcomes
from oauthmail.smtp.client import SessionError, SessionResult, checkLogin
from oauthmail.smtp.queue.records import OutboxMessage, SessionHooks
from oauthmail.smtp.queue.sentsearch import decideSentSearch
from oauthmail.text import describeFailure, describeWhen
from oauthmail.tokens.errors import TokenError

__all__ = ["AccountProbe", "selfMessage"]

#: The steps, in the order they run.
STEPS = ("config", "token", "imap login", "folders", "smtp login")
SEND_STEPS = ("send", "inbox", "sent copy", "sent search")


def _where(server: ServerConfig) -> str:
    security = "implicit TLS" if server.security == "implicit" else "STARTTLS"
    return f"{server.host}:{server.port} ({security})"


def selfMessage(account: AccountConfig, queue_id: str, now: float) -> tuple[bytes, str]:
    """The message to the account's own address, stamped as the queue does; and its Message-ID."""
    address = account.address
    domain = address.rpartition("@")[2] or "localhost"
    message_id = f"<oauthmail-test-{queue_id}@{domain}>"
    date = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    text = (
        f"From: <{address}>\r\nTo: <{address}>\r\nSubject: oauthmail test {queue_id}\r\n"
        f"Date: {date}\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Sent by 'oauthmail test {account.name} --send-to-self' to check that this account\r\n"
        "can send, receive, and find what it sent in its Sent folder. It may be deleted.\r\n"
    )
    return stamp(text.encode("utf-8"), queue_id, now, address), message_id


class AccountProbe:
    """Runs the steps for one account; ``emit`` gets each result as it is known.

    ``tokens`` is the daemon's token source, ``store`` its token store (the
    Sent proof is recorded there), ``reactor`` connects and keeps time.
    ``sender`` sends the test message (the queue's sender for the account's
    transport by default); ``connect`` opens IMAP sessions; ``wait`` bounds,
    in seconds, how long the message may take to arrive in INBOX and in Sent.
    """

    def __init__(
        self,
        account: AccountConfig,
        tokens: ITokenSource,
        store: ITokenStore,
        reactor: Any,
        *,
        emit: Callable[[StepResult], None] = lambda result: None,
        wait: float = 120.0,
        sender: IMessageSender | None = None,
        connect: Callable[..., Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.account = account
        self.tokens = tokens
        self.store = store
        self.reactor = reactor
        self.emit = emit
        self.wait = wait
        self.sender = sender
        self.timeout = timeout
        self.results: list[StepResult] = []
        self._connect = connect
        self._token: Secret | None = None
        self._imap: MailboxProbe | None = None
        self._sentFolder: str | None = None
        self._smtpWorks = False
        #: Why there is no IMAP session although none failed (``None``: one was tried).
        self._imapSkipped: str | None = None

    # -- running ---------------------------------------------------------------------

    def _report(self, step: str, status: str, line: str, fix: str | None = None) -> bool:
        result = StepResult(step, status, line, fix)
        self.results.append(result)
        self.emit(result)
        return status in (OK, NOTE)

    def _skipRest(self, steps: tuple[str, ...], why: str) -> None:
        for step in steps:
            self._report(step, SKIPPED, why)

    @property
    def failed(self) -> list[str]:
        """The steps that failed, in order."""
        return [r.step for r in self.results if r.failed]

    async def run(self, sendToSelf: bool = False) -> list[StepResult]:
        """Every step; fires with the results (also given to ``emit`` one by one)."""
        rest = SEND_STEPS if sendToSelf else ()
        self._config()
        if not await self._tokenStep():
            self._skipRest((*STEPS[2:], *rest), "needs a token")
            return self.results
        try:
            await self._imapLogin(sendToSelf)
            await self._folders(sendToSelf)
            await self._smtpLogin()
            if sendToSelf:
                await self._sendToSelf()
        finally:
            if self._imap is not None:
                await self._imap.close()
        return self.results

    # -- the steps -------------------------------------------------------------------

    def _config(self) -> None:
        account, profile = self.account, self.account.profile
        client = "confidential" if profile.sendsSecret else "public"
        if profile.kind == "google" and profile.client_type:
            client += f" {profile.client_type}"
        transport = account.smtp.transport if account.smtp is not None else "nothing"
        receives = "no folder"
        if account.imap is not None:
            receives = ", ".join(folder.name for folder in account.imap.folders)
        self._report(
            "config",
            OK,
            f"{account.name} <{account.address}>: {profile.kind} profile {profile.name!r}"
            f" ({client} client), grant {account.grant}; watches {receives};"
            f" sends through {transport}",
        )

    async def _tokenStep(self) -> bool:
        name = self.account.name
        try:
            before = await self.store.getTokens(name)
            self._token = await self.tokens.accessToken(name)
            after = await self.store.getTokens(name)
        except TokenError as e:
            from oauthmail.tokens.authorize import explain

            return self._report("token", FAILED, explain(e), advice.tokenFix(e, self.account))
        except StoreError as e:
            return self._report(
                "token", FAILED, f"the store cannot be used: {e}", "check the store settings"
            )
        now = self.reactor.seconds()
        refreshed = before is None or after is None or before.version != after.version
        expires = after.expires_at if after is not None else None
        line = "no expiry given" if expires is None else f"expires {describeWhen(expires, now)}"
        if refreshed:
            line += " (refreshed now)"
        return self._report("token", OK, f"access token {line}")

    async def _imapLogin(self, sendToSelf: bool) -> None:
        account, server = self.account, self.account.profile.imap
        if server is None:
            self._imapSkipped = "the profile has no IMAP server"
        elif account.smtp is not None and account.smtp.transport == "graph":
            self._imapSkipped = (
                "the account holds a Microsoft Graph token, which IMAP refuses"
                " (test the account that receives)"
            )
        elif account.imap is None and not sendToSelf and not self._searchesSent:
            self._imapSkipped = "not used: the account watches no folder and searches no Sent"
        if self._imapSkipped is not None:
            self._report("imap login", SKIPPED, self._imapSkipped)
            return
        assert server is not None and self._token is not None
        connect = {"connect": self._connect} if self._connect is not None else {}
        probe = MailboxProbe(self.reactor, account, self.tokens, timeout=self.timeout, **connect)
        try:
            self._token = await probe.login(self._token)
        except TokenError as e:
            await probe.close()
            from oauthmail.tokens.authorize import explain

            why = f"{_where(server)}: refreshing the refused token failed: {explain(e)}"
            self._report("imap login", FAILED, why, advice.tokenFix(e, account))
            return
        except Exception as e:
            await probe.close()
            why = f"{_where(server)}: {describeFailure(e)}"
            self._report("imap login", FAILED, why, advice.imapFix(e, account))
            return
        self._imap = probe
        line = f"{_where(server)}, {imapMechanism(account).upper()} as {account.sasl_user}"
        if probe.refreshed:
            line += " (the first token was refused; a refreshed one worked)"
        if probe.gmailSearch:
            line += "; offers X-GM-EXT-1"
        self._report("imap login", OK, line)

    @property
    def _searchesSent(self) -> bool:
        smtp = self.account.smtp
        return smtp is not None and smtp.sent_folder != "none"

    async def _folders(self, sendToSelf: bool) -> None:
        account, imap = self.account, self._imap
        if imap is None:
            self._report("folders", SKIPPED, self._imapSkipped or "needs the IMAP login")
            return
        try:
            mailboxes = await imap.mailboxes()
        except Exception as e:
            self._report("folders", FAILED, f"LIST failed: {describeFailure(e)}")
            return
        names = [name for _, name in mailboxes]
        known = {name.upper() if name.upper() == "INBOX" else name for name in names}

        def exists(name: str) -> bool:
            return (name.upper() if name.upper() == "INBOX" else name) in known

        parts, missing = [], []
        if account.imap is not None:
            watched = [f.name for f in account.imap.folders]
            targets = [f.move_to for f in account.imap.folders if f.move_to]
            missing = [n for n in [*watched, *targets] if not exists(n)]
            parts.append("watches " + ", ".join(watched))
            if targets:
                parts.append("moves to " + ", ".join(dict.fromkeys(targets)))
        searches = self._searchesSent
        sent, how = sentMailbox(account, mailboxes)
        self._sentFolder = sent
        if searches or sendToSelf:
            parts.append(f"Sent is {sent!r} ({how})" if sent else "no Sent folder found")
        if missing:
            line = "; ".join(parts) + f"; missing: {', '.join(missing)}"
            fix = advice.folderFix(missing, names, "imap.folders (and move_to)")
            self._report("folders", FAILED, line, fix)
            return
        if searches and sent is None:
            fix = advice.folderFix(
                [account.smtp.sent_folder if account.smtp else "Sent"],
                names,
                "smtp.sent_folder (its name, or none)",
            )
            self._report("folders", FAILED, "; ".join(parts), fix)
            return
        self._report(
            "folders", OK, "; ".join(parts) + " (all exist)" if parts else "nothing to watch"
        )

    async def _smtpLogin(self) -> None:
        account, server = self.account, self.account.profile.smtp
        if account.smtp is None:
            self._report("smtp login", SKIPPED, "the account sends nothing (no smtp section)")
            return
        if account.smtp.transport != "smtp":
            self._report(
                "smtp login",
                SKIPPED,
                f"transport {account.smtp.transport} sends over HTTPS (--send-to-self tries it)",
            )
            self._smtpWorks = True
            return
        assert server is not None and self._token is not None
        result = await checkLogin(self.reactor, account, self._token)
        if result.error is not None and result.error.action == outcomes.REFRESH:
            try:
                self._token = await self.tokens.forceRefresh(account.name)
            except TokenError as e:
                from oauthmail.tokens.authorize import explain

                why = f"{_where(server)}: {result.error.reason}; refreshing it failed: {explain(e)}"
                self._report("smtp login", FAILED, why, advice.tokenFix(e, account))
                return
            result = await checkLogin(self.reactor, account, self._token)
        if result.error is not None:
            error = result.error
            line = f"{_where(server)}: {error.reason}"
            self._report("smtp login", FAILED, line, advice.smtpFix(error, account))
            return
        self._smtpWorks = True
        mechanism = account.smtp.mechanism.upper()
        self._report(
            "smtp login",
            OK,
            f"{_where(server)}, {mechanism} as {account.sasl_user}; nothing sent (QUIT)",
        )

    # -- --send-to-self ----------------------------------------------------------------

    async def _sendToSelf(self) -> None:
        if not self._smtpWorks:
            self._skipRest(SEND_STEPS, "needs a working SMTP login")
            return
        imap = self._imap
        if imap is None and self._imapSkipped is None:  # failed: fix that first
            self._skipRest(SEND_STEPS, "needs the IMAP login to look for the message")
            return
        queue_id = uuid.uuid4().hex
        data, message_id = selfMessage(self.account, queue_id, self.reactor.seconds())
        if not await self._send(queue_id, data):
            self._skipRest(SEND_STEPS[1:], "needs the message sent")
            return
        if imap is None:
            self._skipRest(SEND_STEPS[1:], f"cannot look for it: {self._imapSkipped}")
            return
        started = self.reactor.seconds()
        deadline = started + self.wait
        try:
            header = await imap.waitFor("INBOX", message_id, self.reactor, deadline)
        except Exception as e:
            self._report("inbox", FAILED, f"looking in INBOX failed: {describeFailure(e)}")
            self._skipRest(SEND_STEPS[2:], "needs the IMAP session")
            return
        took = f"{self.reactor.seconds() - started:.0f} s"
        if header is None:
            self._report(
                "inbox",
                FAILED,
                f"{message_id} did not arrive in INBOX within {self.wait:g} s",
                "the provider accepted it: look in the junk folder, or run again with a"
                " longer --wait",
            )
        else:
            self._report("inbox", OK, f"{message_id} arrived in INBOX after {took}")
        await self._sentCopy(imap, queue_id, message_id, max(deadline, self.reactor.seconds() + 5))

    async def _send(self, queue_id: str, data: bytes) -> bool:
        account = self.account
        assert self._token is not None
        sender, close = self.sender, None
        if sender is None:
            from oauthmail.transports.dispatch import buildSender

            built = buildSender(self.reactor, [account])
            sender, close = built, built.close
        message = OutboxMessage(queue_id, account.address, (account.address,), data)
        try:
            result = await self._sendOnce(sender, message)
            if result.error is not None and result.error.action == outcomes.REFRESH:
                self._token = await self.tokens.forceRefresh(account.name)
                result = await self._sendOnce(sender, message)
        except TokenError as e:
            from oauthmail.tokens.authorize import explain

            return self._report("send", FAILED, explain(e), advice.tokenFix(e, account))
        finally:
            if close is not None:
                await close()
        outcome = result.outcomes[0] if result.outcomes else None
        if outcome is not None and outcome.accepted:
            reply = outcomes.describe(outcome.code, outcome.text) if outcome.code else "accepted"
            return self._report("send", OK, f"queue id {queue_id} to {account.address}: {reply}")
        if outcome is not None and outcome.code:
            reply = outcomes.describe(outcome.code, outcome.text)
            kinds = {r.status for r in outcome.recipients}
            if (
                outcomes.QUOTA in kinds
                or outcomes.verdict(outcome.code, outcome.text).kind == outcomes.QUOTA
            ):
                fix = advice.quotaFix(account)
            elif self._overAPI:
                fix = advice.apiFix(account)
            else:
                fix = advice.smtpFix(SessionError(outcomes.PERMANENT, reply), account)
            return self._report("send", FAILED, f"refused: {reply}", fix)
        error = result.error or SessionError(outcomes.TEMPORARY, "no answer to the message")
        if self._overAPI and error.action != outcomes.QUOTA:
            return self._report("send", FAILED, error.reason, advice.apiFix(account))
        return self._report("send", FAILED, error.reason, advice.smtpFix(error, account))

    @property
    def _overAPI(self) -> bool:
        smtp = self.account.smtp
        return smtp is not None and smtp.transport != "smtp"

    def _sendOnce(
        self, sender: IMessageSender, message: OutboxMessage
    ) -> defer.Deferred[SessionResult]:
        return sender.send(
            self.account,
            self._token,
            [message],
            SessionHooks(
                lambda message, refused=(): None,
                lambda outcome: None,
                lambda: defer.succeed([]),
            ),
        )

    async def _sentCopy(
        self, imap: MailboxProbe, queue_id: str, message_id: str, deadline: float
    ) -> None:
        folder = self._sentFolder
        if folder is None:
            self._report("sent copy", NOTE, "no Sent folder to look in")
            await self._sentSearch(False, "")
            return
        started = self.reactor.seconds()
        try:
            header = await imap.waitFor(folder, message_id, self.reactor, deadline)
        except Exception as e:
            self._report("sent copy", FAILED, f"looking in {folder!r} failed: {describeFailure(e)}")
            self._skipRest(SEND_STEPS[3:], "needs the IMAP session")
            return
        how = "X-GM-RAW rfc822msgid" if imap.gmailSearch else "HEADER Message-ID"
        if self.account.profile.kind == "google" and not imap.gmailSearch:
            how += ", as the server offers no X-GM-EXT-1"
        if header is None:
            self._report(
                "sent copy",
                NOTE,
                f"no copy of {message_id} in {folder!r} within {self.wait:g} s (searched with"
                f" {how}): the provider does not file it there, or not in time",
            )
            await self._sentSearch(False, folder)
            return
        took = f"{self.reactor.seconds() - started:.0f} s"
        kept = carriesQueueId(header, queue_id)
        if kept:
            line = (
                f"found in {folder!r} (searched with {how}) after {took}; it keeps the"
                f" Received: line naming queue id {queue_id}"
            )
            self._report("sent copy", OK, line)
        else:
            line = (
                f"found in {folder!r} (searched with {how}) after {took}, without the Received:"
                f" line naming queue id {queue_id}: the provider rewrites the copy"
            )
            self._report("sent copy", NOTE, line)
        await self._sentSearch(kept, folder)

    async def _sentSearch(self, kept: bool, folder: str) -> None:
        name = self.account.name
        try:
            proof = await self.store.recordSentProof(name, kept, folder)
        except StoreError as e:
            self._report("sent search", FAILED, f"the finding could not be recorded: {e}")
            return
        decision = decideSentSearch(self.account, proof)
        why = decision.why.removeprefix(f"{name}: ")
        status = OK if decision.searches else NOTE
        self._report("sent search", status, f"recorded: {why}; the daemon reads it when it starts")
