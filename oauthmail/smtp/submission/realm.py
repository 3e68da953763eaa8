"""Who a logged-in submission client is, which accounts it may send as, and where its mail goes.

The ``twisted.cred`` side of the submission server: the realm turns a checked
user name (or the anonymous login of a trusted loopback client) into an
:class:`ISubmitter` avatar, and :func:`buildSubmissionPortal` wires the realm
to the scrypt checker of :mod:`oauthmail.smtp.users`. The protocol asks the
avatar two things only: the account an envelope sender goes out through, and
to enqueue a finished message. An embedder can hand the server a portal of its
own whose realm returns its own :class:`ISubmitter`.

Rules a reader must not break:

- Senders are matched to accounts by address, case-insensitively; a user's
  rights name accounts (``allowed_senders``), never addresses.
- A refusal is an ``SMTPServerError`` carrying the exact reply; anything else
  raised is a local error (``451``) for the protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from twisted.cred.checkers import ANONYMOUS, AllowAnonymousAccess
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorThreads
from twisted.mail.smtp import SMTPServerError
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from oauthmail.config import SubmissionConfig, SubmissionUser
from oauthmail.interfaces import ISubmissionQueue
from oauthmail.smtp.users import SubmissionUserChecker

__all__ = [
    "ISubmitter",
    "SenderDirectory",
    "SubmissionRealm",
    "Submitter",
    "buildSubmissionPortal",
]


class ISubmitter(Interface):
    """A logged-in submission client: the avatar the submission realm hands out."""

    who = Attribute("Who logged in, for the log (``str``): a user name or ``(loopback)``.")

    def accountFor(mailFrom):  # noqa: N805 - zope.interface methods have no self
        """The account name (``str``) mail from ``mailFrom`` goes out through.

        ``mailFrom`` is the envelope sender as the client wrote it (``""`` for
        ``<>``). Return the name or a Deferred firing with it; raise (or fail
        with) an ``SMTPServerError`` to refuse the sender with that reply.
        """

    def enqueue(account_name, mail_from, recipients, message):  # noqa: N805
        """Store a finished message durably: :meth:`ISubmissionQueue.enqueue`'s contract."""


class _Account(Protocol):
    name: str
    address: str


class SenderDirectory:
    """Maps envelope sender addresses (case-insensitively) to account names."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._accounts = {address.lower(): name for address, name in addresses.items()}

    @classmethod
    def fromAccounts(cls, accounts: Iterable[_Account]) -> SenderDirectory:
        """From ``AccountConfig``-like objects (``.name``, ``.address``)."""
        return cls({account.address: account.name for account in accounts})

    def accountFor(self, address: str) -> str | None:
        """The account sending as ``address``, or ``None``."""
        return self._accounts.get(address.lower())

    def accountNames(self) -> frozenset[str]:
        """Every account that has an address here."""
        return frozenset(self._accounts.values())


@implementer(ISubmitter)
class Submitter:
    """One logged-in client's right to send: as which accounts, into which queue.

    ``accounts`` is ``None`` for a trusted unauthenticated loopback client,
    which may send as every account in the directory.
    """

    def __init__(
        self,
        who: str,
        accounts: frozenset[str] | None,
        senders: SenderDirectory,
        queue: ISubmissionQueue,
    ) -> None:
        self.who = who
        self._accounts = accounts
        self._senders = senders
        self._queue = queue

    def accountFor(self, mailFrom: str) -> str:
        """The sender's account if this client may use it, else ``550 5.7.1``."""
        account = self._senders.accountFor(mailFrom) if mailFrom else None
        if account is None or (self._accounts is not None and account not in self._accounts):
            raise SMTPServerError(550, "5.7.1 Sender address not allowed for this user")
        return account

    def enqueue(
        self, account_name: str, mail_from: str, recipients: list[str], message: bytes
    ) -> defer.Deferred[str]:
        """Hand the message to the queue (``250`` waits for this Deferred)."""
        return defer.maybeDeferred(
            self._queue.enqueue, account_name, mail_from, recipients, message
        )


@implementer(IRealm)
class SubmissionRealm:
    """Turns a checked user name (or the anonymous loopback login) into a :class:`Submitter`."""

    def __init__(
        self,
        users: Iterable[SubmissionUser],
        senders: SenderDirectory,
        queue: ISubmissionQueue,
    ) -> None:
        self._users = {user.name: user for user in users}
        self._senders = senders
        self._queue = queue
        known = senders.accountNames()
        unknown = sorted(
            {name for user in self._users.values() for name in user.allowed_senders} - known
        )
        if unknown:
            raise ValueError(
                "submission users may send as accounts that do not exist: " + ", ".join(unknown)
            )

    def requestAvatar(self, avatarId, mind, *interfaces):
        """``(ISubmitter, Submitter, logout)`` for a user name or ``ANONYMOUS``."""
        if ISubmitter not in interfaces:
            raise NotImplementedError("the submission realm only hands out ISubmitter")
        if avatarId is ANONYMOUS:
            who, accounts = "(loopback)", None
        else:
            user = self._users.get(avatarId)
            if user is None:
                raise UnauthorizedLogin("authentication failed")
            who, accounts = user.name, frozenset(user.allowed_senders)
        return ISubmitter, Submitter(who, accounts, self._senders, self._queue), lambda: None


def buildSubmissionPortal(
    config: SubmissionConfig,
    senders: SenderDirectory,
    queue: ISubmissionQueue,
    *,
    reactor: IReactorThreads,
    threadpool: ThreadPool | None = None,
) -> Portal:
    """The portal for ``config``'s users (plus anonymous access if loopback is trusted)."""
    realm = SubmissionRealm(config.users, senders, queue)
    checkers: list = [SubmissionUserChecker(config.users, reactor=reactor, threadpool=threadpool)]
    if config.allow_unauthenticated_loopback:
        # Only the submission protocol ever presents Anonymous, and only for loopback peers.
        checkers.append(AllowAnonymousAccess())
    return Portal(realm, checkers)
