"""Reading the operator's sections: ``messages`` (the message log), ``notify`` and ``log``.

Each reader takes the section's node and returns its frozen value with the
documented defaults; an absent section is all defaults (no notifications, text
logs, a 30-day message log). A webhook secret is checked without being repeated.
"""

from __future__ import annotations

from collections.abc import Iterable

from oauthmail.config.model import AccountConfig, LogConfig, MessagesConfig, NotifyConfig
from oauthmail.config.nodes import Node, suggest
from oauthmail.config.schema import LOG_FORMATS, LOG_KEYS, MESSAGES_KEYS, NOTIFY_KEYS

__all__ = ["readLog", "readMessages", "readNotify"]


def readMessages(at: Node) -> MessagesConfig:
    if at.isNull:
        return MessagesConfig()
    m = at.mapping(MESSAGES_KEYS, what="a mapping (retention)")
    defaults = MessagesConfig()
    return MessagesConfig(retention=m["retention"].duration(defaults.retention, positive=True))


def readNotify(at: Node, accounts: Iterable[AccountConfig]) -> NotifyConfig:
    if at.isNull:
        return NotifyConfig()
    n = at.mapping(NOTIFY_KEYS, what="a mapping (webhook, webhook_secret, mail_to, mail_account)")
    webhook = n["webhook"].webURL() if n.present("webhook") else None
    secret = n["webhook_secret"].secret()
    if secret is not None and webhook is None:
        n["webhook_secret"].fail("webhook_secret signs the webhook's requests: set webhook too")
    mail_to = n["mail_to"].string(None, what="an email address")
    mail_to = mail_to.strip() if mail_to else None
    if mail_to is not None and ("@" not in mail_to or any(c.isspace() for c in mail_to)):
        n["mail_to"].fail(f"expected an email address such as admin@example.com, got {mail_to!r}")
    sending = [a.name for a in accounts if a.smtp is not None]
    mail_account = n["mail_account"].string(None, what="an account name")
    if mail_to is not None and mail_account is None:
        n["mail_account"].fail(
            "mail_to needs mail_account: the account the notification is sent through"
            + (f" (one of {', '.join(sending)})" if sending else "")
        )
    if mail_account is not None:
        if mail_to is None:
            n["mail_account"].fail("mail_account sends the notifications to mail_to: set it too")
        if mail_account not in sending:
            n["mail_account"].fail(
                f"no account named {mail_account!r} sends mail{suggest(mail_account, sending)}"
            )
    return NotifyConfig(
        webhook=webhook, webhook_secret=secret, mail_to=mail_to, mail_account=mail_account
    )


def readLog(at: Node) -> LogConfig:
    if at.isNull:
        return LogConfig()
    g = at.mapping(LOG_KEYS, what="a mapping (format)")
    return LogConfig(format=g["format"].choice(LOG_FORMATS, "text", what="log format"))
