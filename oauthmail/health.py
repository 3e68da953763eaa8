"""One owner of account health: each part reports its own condition, the account is the worst.

An account has parts that fail independently: its tokens, each watched IMAP
folder, and sending over SMTP. Each part reports *only its own* condition
here (:meth:`AccountHealth.report`), and nothing else ever writes an
account's state. The account's state is derived: the worst of its parts
(:data:`SEVERITY`), with that part's error and advice. So a token refresh
that succeeds cannot hide an IMAP login the server keeps refusing, and an
IMAP reconnect cannot clear a dead refresh token.

Rules a reader must not break:

* a part reports its own condition and never another part's;
* the store's account state is written here and only here, whenever the
  derived state or error changes, one write at a time per account, in order;
* listeners hear about changes of the derived state, not about every report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from oauthmail.interfaces import IAccountHealth
from oauthmail.text import cleanText

__all__ = [
    "PART_SMTP",
    "PART_TOKENS",
    "SEVERITY",
    "AccountHealth",
    "AccountView",
    "Condition",
    "imapPart",
    "partLabel",
]

_log = Logger()

PART_TOKENS = "tokens"
PART_SMTP = "smtp"
_IMAP_PREFIX = "imap:"

#: Part states from best to worst; an account is in the worst state of its parts.
#: ``starting``: not yet known (a watcher still connecting). ``paused``: waiting
#: on purpose (a provider quota). ``retrying``: a failure that is being retried
#: with backoff. ``error``: a failure a person should look at. ``needs_reauth``
#: and ``unauthorised``: nothing works until a person authorises the account.
SEVERITY: tuple[str, ...] = (
    "ok",
    "starting",
    "paused",
    "retrying",
    "error",
    "needs_reauth",
    "unauthorised",
)
_RANK = {state: rank for rank, state in enumerate(SEVERITY)}


def imapPart(folder: str) -> str:
    """The part name of one watched IMAP folder."""
    return _IMAP_PREFIX + folder


def partLabel(part: str) -> str:
    """How a part is named to a person: ``token``, ``SMTP``, ``IMAP INBOX``."""
    if part == PART_TOKENS:
        return "token"
    if part == PART_SMTP:
        return "SMTP"
    if part.startswith(_IMAP_PREFIX):
        return "IMAP " + part[len(_IMAP_PREFIX) :]
    return part


def _order(part: str) -> tuple[int, str]:
    """Tokens first, then SMTP, then folders by name: who is named when parts tie."""
    if part == PART_TOKENS:
        return (0, "")
    if part == PART_SMTP:
        return (1, "")
    return (2, part)


@dataclass(frozen=True)
class Condition:
    """One part's condition, as that part last reported it."""

    state: str
    error: str | None = None
    #: What a person can do about it, when there is something to do.
    advice: str | None = None
    #: When the part entered this state (seconds since the epoch).
    since: float = 0.0
    #: For ``paused``: when the part means to try again.
    until: float | None = None


@dataclass(frozen=True)
class AccountView:
    """An account's derived health: its worst part, and every part's condition."""

    state: str
    error: str | None = None
    advice: str | None = None
    #: The part whose condition decided ``state`` (``None`` when every part is ok).
    worst: str | None = None
    parts: Mapping[str, Condition] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.state == "ok"


class _StateWriter(Protocol):
    def setAccountState(
        self, account_id: str, state: str, last_error: str | None = None
    ) -> defer.Deferred[None]: ...


#: Listener of derived changes: ``(account, before, after)``.
Listener = Callable[[str, AccountView, AccountView], object]


def derive(parts: Mapping[str, Condition]) -> AccountView:
    """The account's view from its parts' conditions (pure: the rule in one place)."""
    if not parts:
        return AccountView("starting")
    worstRank = max(_RANK[c.state] for c in parts.values())
    # Among equally bad parts the first in (tokens, smtp, folders) order is named.
    worst = min((p for p in parts if _RANK[parts[p].state] == worstRank), key=_order)
    condition = parts[worst]
    if condition.state == "ok":
        return AccountView("ok", parts=dict(parts))
    error = condition.error
    if error and worst != PART_TOKENS:  # token errors name the token endpoint themselves
        error = f"{partLabel(worst)}: {error}"
    return AccountView(condition.state, error, condition.advice, worst, dict(parts))


@implementer(IAccountHealth)
class AccountHealth:
    """Keeps every part's condition in memory and the derived account state in the store.

    :param store: anything with ``setAccountState(account, state, last_error)``
        (the token store): the only writer of that column is this object.
    :param clock: for the ``since`` of each condition.
    """

    def __init__(self, store: _StateWriter, clock: IReactorTime) -> None:
        self._store = store
        self._clock = clock
        self._parts: dict[str, dict[str, Condition]] = {}
        self._written: dict[str, tuple[str, str | None]] = {}
        self._writes: dict[str, defer.Deferred[None]] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener(account, before, after)`` whenever an account's derived state changes."""
        self._listeners.append(listener)

    def declare(self, account: str, parts: Iterable[str]) -> None:
        """The parts ``account`` has (tokens, its folders, SMTP): unreported ones are ``starting``.

        Without it, an account whose token is fine would look ok before its
        IMAP watcher ever connected.
        """
        known = self._parts.setdefault(account, {})
        now = self._clock.seconds()
        for part in parts:
            known.setdefault(part, Condition("starting", since=now))

    def restore(self, account: str, state: str, error: str | None = None) -> None:
        """Seed the tokens part from the state the store remembers, without writing it back.

        An account that needs a person (``unauthorised``, ``needs_reauth``)
        still does after a restart; any other stored state means its tokens
        were working, so the tokens part starts ``ok`` (the refresher reports
        otherwise at its next pass). Everything else starts over and is
        reported again by the part itself.
        """
        tokens = state if state in ("unauthorised", "needs_reauth") else "ok"
        kept = error if tokens != "ok" else None
        self._parts.setdefault(account, {})[PART_TOKENS] = Condition(
            tokens, kept, since=self._clock.seconds()
        )
        view = self.view(account)
        self._written[account] = (_stored(view.state), view.error)

    def report(
        self,
        account: str,
        part: str,
        state: str,
        error: str | None = None,
        advice: str | None = None,
        until: float | None = None,
    ) -> defer.Deferred[None]:
        """Record ``part``'s own condition; persist and announce the account's if it changed.

        Fires once the store holds the account's resulting state (at once when
        it did not change); never fails (a store that refuses is logged).
        """
        if state not in _RANK:
            raise ValueError(f"unknown part state {state!r}")
        parts = self._parts.setdefault(account, {})
        before = derive(parts)
        previous = parts.get(part)
        error = cleanText(error) if error else None
        advice = cleanText(advice) if advice else None
        since = (
            previous.since
            if previous is not None and previous.state == state
            else self._clock.seconds()
        )
        parts[part] = Condition(state, error, advice, since, until)
        after = derive(parts)
        self._persist(account, after)
        if (before.state, before.error) != (after.state, after.error):
            for listener in list(self._listeners):
                try:
                    listener(account, before, after)
                except Exception:
                    _log.failure("an account health listener failed for {account}", account=account)
        return self.whenWritten(account)

    def forget(self, account: str, part: str) -> None:
        """A part that no longer exists (a folder no longer watched) stops counting."""
        parts = self._parts.get(account)
        if parts is not None and parts.pop(part, None) is not None:
            self._persist(account, derive(parts))

    def condition(self, account: str, part: str) -> Condition | None:
        """The part's last reported condition, or ``None``."""
        return self._parts.get(account, {}).get(part)

    def view(self, account: str) -> AccountView:
        """The account's derived health."""
        return derive(self._parts.get(account, {}))

    def accounts(self) -> Iterable[str]:
        """Every account some part has reported for."""
        return list(self._parts)

    def whenWritten(self, account: str | None = None) -> defer.Deferred[None]:
        """Fire once the store holds the latest derived state (of ``account``, or of all)."""
        names = [account] if account is not None else list(self._writes)
        pending = [self._writes[n] for n in names if n in self._writes]
        waits = [_observe(d) for d in pending]
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def _persist(self, account: str, view: AccountView) -> None:
        wanted = (_stored(view.state), view.error)
        if self._written.get(account) == wanted:
            return
        self._written[account] = wanted
        previous = self._writes.get(account)

        def write(_: object = None) -> defer.Deferred[None]:
            d = defer.maybeDeferred(self._store.setAccountState, account, *wanted)
            return d.addErrback(self._writeFailed, account)

        d = write() if previous is None or previous.called else previous.addCallback(write)
        self._writes[account] = d

    def _writeFailed(self, failure: object, account: str) -> None:
        # The next change writes again; a store that cannot be written is
        # reported by the store's own users, not once more per state change.
        self._written.pop(account, None)
        _log.warn(
            "could not record the state of {account}: {why}",
            account=account,
            why=cleanText(getattr(failure, "value", failure)),
        )


def _stored(state: str) -> str:
    """The store's vocabulary for a derived state (older stores know five states)."""
    return state


def _observe(d: defer.Deferred[None]) -> defer.Deferred[None]:
    """A Deferred that fires when ``d`` does, without taking ``d``'s result from others."""
    out: defer.Deferred[None] = defer.Deferred()

    def passOn(result: object) -> object:
        out.callback(None)
        return result

    d.addBoth(passOn)
    return out
