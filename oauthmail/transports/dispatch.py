"""The queue's sender: each account's session goes to the sender of its ``smtp.transport``.

:func:`buildSender` is what the daemon (``service.py``) and the CLI call: it
makes one :class:`TransportSender` holding the SMTP sender and, when some
account needs them, the Graph and Gmail API senders, which share one
:class:`~oauthmail.http.agent.AgentFactory` (an ``Agent`` per proxy setting:
the profile's ``proxy:`` or the environment's ``https_proxy``/``no_proxy``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IAgent
from zope.interface import implementer

from oauthmail.config import AccountConfig
from oauthmail.http.agent import AgentFactory
from oauthmail.http.proxy import DIRECT, ProxyError, ProxySettings, proxySettings
from oauthmail.interfaces import IMessageSender
from oauthmail.secret import Secret
from oauthmail.smtp.client import SessionResult
from oauthmail.smtp.queue.records import OutboxMessage, SessionHooks
from oauthmail.smtp.queue.sender import SMTPSender
from oauthmail.transports.gmail_api import GmailAPISender
from oauthmail.transports.graph import GraphSender

__all__ = ["TransportSender", "buildSender", "proxyFor"]

log = Logger()


def proxyFor(account: AccountConfig, environ: Mapping[str, str]) -> ProxySettings:
    """The account's proxy settings; an unusable environment value is logged, then direct."""
    profile = account.profile
    try:
        return proxySettings(profile.proxy, profile.proxy_auth, environ)
    except ProxyError as e:
        log.error("{account}: ignoring the proxy: {why}", account=account.name, why=str(e))
        return DIRECT


@implementer(IMessageSender)
class TransportSender:
    """Hands each session to the sender named by the account's ``smtp.transport``."""

    def __init__(self, senders: Mapping[str, IMessageSender], agents: AgentFactory | None) -> None:
        self._senders = dict(senders)
        self._agents = agents

    def __repr__(self) -> str:
        return f"<TransportSender {', '.join(sorted(self._senders))}>"

    def senderFor(self, account: AccountConfig) -> IMessageSender:
        transport = account.smtp.transport if account.smtp is not None else "smtp"
        return self._senders[transport]

    def send(
        self,
        account: AccountConfig,
        token: Secret,
        messages: Sequence[OutboxMessage],
        hooks: SessionHooks,
    ) -> defer.Deferred[SessionResult]:
        return self.senderFor(account).send(account, token, messages, hooks)

    def close(self) -> defer.Deferred[None]:
        """Close the API senders' idle connections (at stop)."""
        return self._agents.close() if self._agents is not None else defer.succeed(None)


def buildSender(
    reactor: Any,
    accounts: Iterable[AccountConfig],
    *,
    environ: Mapping[str, str] | None = None,
    ca_file: str | None = None,
    clock: IReactorTime | None = None,
    **apiSettings: Any,
) -> TransportSender:
    """The sender for ``accounts``; ``apiSettings`` go to the API senders (``timeout``, ...).

    ``clock`` times the API senders' deadlines and throttling waits (``reactor`` by default).
    """
    environ = os.environ if environ is None else environ
    senders: dict[str, IMessageSender] = {"smtp": SMTPSender(reactor)}
    used = {a.smtp.transport for a in accounts if a.smtp is not None}
    if not used - {"smtp"}:
        return TransportSender(senders, None)
    factory = AgentFactory(reactor, ca_file=ca_file)
    settings: dict[str, ProxySettings] = {}

    def agentFor(account: AccountConfig) -> IAgent:
        if account.name not in settings:
            settings[account.name] = proxyFor(account, environ)
        return factory.agent(settings[account.name])

    clock = clock if clock is not None else reactor
    senders["graph"] = GraphSender(agentFor, clock, **apiSettings)
    senders["gmail_api"] = GmailAPISender(agentFor, clock, **apiSettings)
    return TransportSender(senders, factory)
