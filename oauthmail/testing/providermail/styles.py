"""How Gmail and Exchange Online word their IMAP and SMTP answers (as documented or observed).

Sources, per field: Google "OAuth 2.0 Mechanism" (the XOAUTH2 error challenge
``{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}``,
then ``NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)`` and SMTP
``535-5.7.8 Username and Password not accepted``); Gmail's IMAP extensions
(``X-GM-EXT-1``, ``[Gmail]/Sent Mail`` marked ``\\Sent``); Gmail's sending
limits (``550 5.4.5 Daily user sending limit exceeded``). Microsoft
"Authenticate an IMAP, POP or SMTP connection using OAuth" and the
Exchange Online troubleshooting articles (``NO AUTHENTICATE failed.``;
``535 5.7.3 Authentication unsuccessful``; ``535 5.7.139 Authentication
unsuccessful, SmtpClientAuthentication is disabled for the Tenant``;
``554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException``;
``Sent Items`` marked ``\\Sent``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

__all__ = ["EXCHANGE", "GMAIL", "MailStyle"]


@dataclass(frozen=True)
class MailStyle:
    """One provider's wording, mailbox names and habits."""

    name: str
    host: str
    #: IMAP capabilities after the greeting and after login (without AUTH=).
    capabilities: tuple[bytes, ...]
    #: The ``AUTH=`` capabilities before login, and the EHLO ``AUTH`` line.
    imapAuth: tuple[bytes, ...]
    smtpAuth: bytes
    greeting: bytes
    sentFolder: str
    #: Other mailboxes every user has (besides INBOX and the Sent folder).
    otherFolders: tuple[str, ...]
    #: The IMAP error challenge for a refused token (``None``: no challenge).
    imapChallenge: bytes | None
    imapRefusal: bytes
    #: The SMTP error challenge (after the initial response) and the final reply.
    smtpChallenge: bytes | None
    smtpRefusal: bytes
    smtpAuthDisabled: bytes
    quotaReply: bytes
    accepted: bytes
    #: Whether the copy filed in Sent keeps the submitted header (our trace line).
    sentKeepsTrace: bool


def _challenge(status: str, scope: str) -> bytes:
    body = {"status": status, "schemes": "Bearer", "scope": scope}
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode())


GMAIL = MailStyle(
    name="gmail",
    host="imap.gmail.test",
    capabilities=(
        b"IMAP4rev1",
        b"UNSELECT",
        b"IDLE",
        b"NAMESPACE",
        b"QUOTA",
        b"ID",
        b"XLIST",
        b"CHILDREN",
        b"X-GM-EXT-1",
        b"UIDPLUS",
        b"COMPRESS=DEFLATE",
        b"ENABLE",
        b"MOVE",
        b"CONDSTORE",
        b"ESEARCH",
        b"UTF8=ACCEPT",
        b"LIST-EXTENDED",
        b"LIST-STATUS",
        b"LITERAL-",
        b"SPECIAL-USE",
        b"APPENDLIMIT=35651584",
    ),  # fmt: skip
    imapAuth=(b"AUTH=XOAUTH2", b"AUTH=PLAIN", b"AUTH=PLAIN-CLIENTTOKEN", b"AUTH=OAUTHBEARER"),
    smtpAuth=b"AUTH LOGIN PLAIN XOAUTH2 PLAIN-CLIENTTOKEN OAUTHBEARER XOAUTH",
    greeting=b"220 smtp.gmail.test ESMTP a1-20020a05600c000000b0000000000000sm0000000wmb.0 - gsmtp",
    sentFolder="[Gmail]/Sent Mail",
    otherFolders=("[Gmail]/All Mail", "[Gmail]/Drafts", "[Gmail]/Spam", "[Gmail]/Trash"),
    imapChallenge=_challenge("400", "https://mail.google.com/"),
    imapRefusal=b"NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)",
    smtpChallenge=_challenge("400", "https://mail.google.com/"),
    smtpRefusal=b"535-5.7.8 Username and Password not accepted. For more information, go to\r\n"
    b"535 5.7.8  https://support.google.com/mail/?p=BadCredentials",
    smtpAuthDisabled=b"535 5.7.8 Username and Password not accepted.",
    quotaReply=b"550 5.4.5 Daily user sending limit exceeded. For more information on Gmail"
    b" sending limits go to https://support.google.com/a/answer/166852",
    accepted=b"250 2.0.0 OK  1700000000 a1-20020a05600c000000b00000000000000sm0000000wmb.0 - gsmtp",
    sentKeepsTrace=True,
)

EXCHANGE = MailStyle(
    name="exchange",
    host="outlook.office365.test",
    capabilities=(
        b"IMAP4",
        b"IMAP4rev1",
        b"SASL-IR",
        b"UIDPLUS",
        b"MOVE",
        b"ID",
        b"UNSELECT",
        b"CHILDREN",
        b"IDLE",
        b"NAMESPACE",
        b"LITERAL+",
    ),  # fmt: skip
    imapAuth=(b"AUTH=PLAIN", b"AUTH=XOAUTH2"),
    smtpAuth=b"AUTH LOGIN XOAUTH2",
    greeting=b"220 AM0PR00CA0000.outlook.office365.test Microsoft ESMTP MAIL Service ready",
    sentFolder="Sent Items",
    otherFolders=("Archive", "Deleted Items", "Drafts", "Junk Email", "Outbox"),
    imapChallenge=None,
    imapRefusal=b"NO AUTHENTICATE failed.",
    smtpChallenge=None,
    smtpRefusal=b"535 5.7.3 Authentication unsuccessful [AM0PR00CA0000.eurprd00.prod.outlook.com]",
    smtpAuthDisabled=b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is"
    b" disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information."
    b" [AM0PR00CA0000.eurprd00.prod.outlook.com]",
    quotaReply=b"554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException;"
    b" Failed to process message due to a permanent exception with message"
    b" [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]",
    accepted=b"250 2.0.0 OK <queued@outlook.office365.test> [Hostname=AM0PR00MB0000.test]",
    # Not promised by Microsoft (Graph documents no internet headers on Sent
    # Items): the fake loses the trace line, so the at-least-once path is tested.
    sentKeepsTrace=False,
)
