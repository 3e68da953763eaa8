"""Who may hand mail to the local submission server, and how they prove it.

A *submission user* is a local login (a program, a person's mail client) with
its own password, unrelated to any provider password or token. Each user may
send as a fixed set of oauthmail **accounts**, named by account name (the id
used by the store, the console and the queue), not by address: the account's
address can change in the configuration while the name stays. The server maps
the envelope sender address to an account and then checks this list.

The checker verifies scrypt hashes in a thread pool because scrypt is slow on
purpose, and it spends the same work on unknown users as on known ones so that
the answer time does not tell which user names exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from oauthmail.smtp.passwords import DEFAULT_PARAMETERS, formatHash, parseHash, verifyPassword

_log = Logger()


@dataclass(frozen=True)
class SubmissionUser:
    """A local login: ``name``, an scrypt ``password_hash`` and the accounts it may send as."""

    name: str
    password_hash: str = field(repr=False)
    allowed_senders: tuple[str, ...] = ()  # oauthmail account names

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError("a submission user needs a name without surrounding spaces")
        try:
            parseHash(self.password_hash)
        except ValueError as e:
            raise ValueError(f"submission user {self.name!r}: {e}") from None
        if isinstance(self.allowed_senders, str) or not all(
            isinstance(s, str) and s for s in self.allowed_senders
        ):
            raise ValueError(
                f"submission user {self.name!r}: allowed_senders is a list of account names"
            )
        object.__setattr__(self, "allowed_senders", tuple(self.allowed_senders))


@dataclass(frozen=True)
class SubmissionConfig:
    """The ``submission:`` section: where to listen, who may log in, limits and TLS."""

    bind: str = "127.0.0.1"
    port: int = 1587
    users: tuple[SubmissionUser, ...] = ()
    allow_unauthenticated_loopback: bool = False
    max_message_size: int = 35 * 1024 * 1024
    tls_cert: str | None = None  # PEM: the certificate, then any intermediates
    tls_key: str | None = None
    require_tls: bool = False  # refuse AUTH and MAIL before STARTTLS

    def __post_init__(self) -> None:
        object.__setattr__(self, "users", tuple(self.users))
        if not 0 <= self.port <= 65535:
            raise ValueError("submission port must be between 0 and 65535")
        if self.max_message_size < 1024:
            raise ValueError("submission max_message_size must be at least 1024 bytes")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("submission tls_cert and tls_key go together")
        if self.require_tls and self.tls_cert is None:
            raise ValueError("submission require_tls needs tls_cert and tls_key")
        names = [user.name for user in self.users]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"submission users named twice: {', '.join(duplicates)}")

    def user(self, name: str) -> SubmissionUser | None:
        for user in self.users:
            if user.name == name:
                return user
        return None


def _dummyHash(users: Iterable[SubmissionUser]) -> str:
    """A hash no password matches, with the parameters most users have.

    Verifying against it costs what a real user's check costs, so unknown
    and known user names take the same time to refuse.
    """
    counts = Counter(parseHash(user.password_hash).parameters for user in users)
    parameters = counts.most_common(1)[0][0] if counts else DEFAULT_PARAMETERS
    return formatHash(parameters, b"\0" * 16, b"\0" * 32)


@implementer(ICredentialsChecker)
class SubmissionUserChecker:
    """Checks ``IUsernamePassword`` against the submission users' scrypt hashes.

    The avatar id is the user's name (``str``). Every failure is the same
    ``UnauthorizedLogin``, whatever went wrong. At most ``concurrency`` hashes
    are computed at once, which bounds memory (16 MiB each by default) and
    slows down guessing.
    """

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(
        self,
        users: Iterable[SubmissionUser],
        *,
        reactor,
        threadpool: ThreadPool | None = None,
        concurrency: int = 2,
        verify: Callable[[bytes, str], bool] = verifyPassword,
    ) -> None:
        self._users = {user.name: user for user in users}
        self._dummy = _dummyHash(self._users.values())
        self._reactor = reactor
        self._threadpool = threadpool
        self._semaphore = DeferredSemaphore(concurrency)
        self._verify = verify

    def _inThread(self, password: bytes, encoded: str) -> Deferred:
        pool = self._threadpool or self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, self._verify, password, encoded)

    def requestAvatarId(self, credentials) -> Deferred:
        """Fire with the user name, or fail with ``UnauthorizedLogin``."""
        username = credentials.username
        password = credentials.password
        if isinstance(username, bytes):
            try:
                username = username.decode("utf-8")
            except UnicodeDecodeError:
                username = None
        if isinstance(password, str):
            password = password.encode("utf-8")
        user = self._users.get(username) if isinstance(username, str) else None
        encoded = user.password_hash if user is not None else self._dummy
        d = self._semaphore.run(self._inThread, password or b"", encoded)

        def decide(matched: bool) -> str:
            if matched and user is not None:
                return user.name
            raise error.UnauthorizedLogin("authentication failed")

        def hide(failure):
            # Never pass on what went wrong inside the check: one answer for all.
            failure.trap(Exception)
            if failure.check(error.UnauthorizedLogin):
                return failure
            _log.failure("submission: the password check itself failed", failure)
            raise error.UnauthorizedLogin("authentication failed")

        return d.addCallback(decide).addErrback(hide)
