"""Who may hand mail to the local submission server, and how they prove it.

A *submission user* is a local login (a program, a person's mail client) with
its own password, unrelated to any provider password or token. Each user may
send as a fixed set of oauthmail **accounts**, named by account name (the id
used by the store, the console and the queue), not by address: the account's
address can change in the configuration while the name stays. The server maps
the envelope sender address to an account and then checks this list.

The checker verifies scrypt hashes in a thread pool because scrypt is slow on
purpose, and it spends the same work on unknown users as on known ones so that
the answer time does not tell which user names exist. Its concurrency limit is
shared by every client; fairness between client addresses (one check at a time
per address, delays after failures) is the submission server's AUTH penalty
(:mod:`oauthmail.smtp.submission.penalty`), which calls the checker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from oauthmail.config import SubmissionUser
from oauthmail.passwords import DEFAULT_PARAMETERS, formatHash, parseHash, verifyPassword

_log = Logger()


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
