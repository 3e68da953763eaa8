"""Every bound of the submission server in one place, and the connection caps.

:class:`SubmissionLimits` holds the numbers (each documented where it is
defined); :class:`ConnectionCounter` enforces the caps on concurrent
connections, in total and per client address. The AUTH penalty, which uses
the same client addresses, is :mod:`.penalty`.

Rules a reader must not break:

- A client address is what :func:`clientKey` makes of it: IPv6 clients are
  counted by their /64, because one host usually owns a whole /64.
- Exceeding a bound is logged once when it starts to bite (naming the client
  address and the bound) and once when it is over (the address has no
  connection left; the total has fallen to half the cap), never once per
  refused connection: a flood must not become a flood of log lines.
- Memory stays bounded by the caps themselves: the counter keeps an entry only
  for an address with an open connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from twisted.logger import Logger

__all__ = ["ConnectionCounter", "SubmissionLimits", "clientKey"]

_log = Logger()


@dataclass(frozen=True)
class SubmissionLimits:
    """The submission server's bounds; the defaults suit a server for one machine or a LAN."""

    #: Connections open at once, from everybody (``421 4.7.0`` beyond).
    max_connections: int = 100
    #: Connections open at once from one client address (``421 4.7.0`` beyond).
    max_connections_per_address: int = 10
    #: Seconds without a byte from the client before ``421 4.4.2`` and close
    #: (RFC 5321 §4.5.3.2.7 asks for at least five minutes).
    idle_timeout: float = 600.0
    #: Octets in one line, command or message, CRLF not counted (``500 5.5.6`` and close).
    #: Far beyond RFC 5321's 1000: some programs send very long lines.
    max_line: int = 65536
    #: Octets a pipelining client may send while an answer is pending before
    #: reading pauses; the same in lines, whichever comes first.
    pause_after_bytes: int = 65536
    pause_after_lines: int = 64
    #: Recipients in one transaction (``452 4.5.3`` beyond).
    max_recipients: int = 1000
    #: Failed AUTH attempts on one connection; the last one is answered
    #: ``421 4.7.0`` and the connection closed.
    max_auth_failures_per_connection: int = 3
    #: The AUTH penalty of one client address: its n-th recent failure is
    #: answered after a delay growing from ``auth_penalty_base`` seconds to
    #: ``auth_penalty_max`` (doubling, jittered between half and all of it).
    auth_penalty_base: float = 2.0
    auth_penalty_max: float = 15.0
    #: This many failures within ``auth_failure_window`` seconds block the
    #: address's AUTH for ``auth_block`` seconds (``421 4.7.0``). A failure
    #: older than the window is forgotten, and so is the penalty.
    auth_failures_before_block: int = 10
    auth_failure_window: float = 600.0
    auth_block: float = 600.0
    #: Password checks of one client address running at once: the others wait,
    #: so that guessers cannot take every check slot from other addresses.
    auth_checks_per_address: int = 1
    #: Client addresses whose AUTH failures are remembered (least recently seen dropped).
    tracked_addresses: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_connections_per_address",
            "max_line",
            "pause_after_bytes",
            "pause_after_lines",
            "max_recipients",
            "max_auth_failures_per_connection",
            "auth_failures_before_block",
            "auth_checks_per_address",
            "tracked_addresses",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"submission limit {name} must be at least 1")
        for name in ("idle_timeout", "auth_penalty_base", "auth_failure_window", "auth_block"):
            if not getattr(self, name) > 0:
                raise ValueError(f"submission limit {name} must be positive")
        if self.auth_penalty_max < self.auth_penalty_base:
            raise ValueError("submission limit auth_penalty_max is below auth_penalty_base")


def clientKey(host: str) -> str:
    """The address a client is counted by: its IP, or its /64 for IPv6 (IPv4-mapped unwrapped)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host  # not an IP (a UNIX socket, a test transport): count it as it is
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class ConnectionCounter:
    """Admits a connection if neither the total nor its address's cap is reached."""

    def __init__(self, maxTotal: int, maxPerAddress: int) -> None:
        self._maxTotal = maxTotal
        self._maxPerAddress = maxPerAddress
        self._total = 0
        self._open: dict[str, int] = {}
        self._refusedTotal: int | None = None  # refusals while the total cap bites
        self._refusedByKey: dict[str, int] = {}  # the same per address

    @property
    def total(self) -> int:
        """Connections open now."""
        return self._total

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key``, or return the reason (a reply text) to refuse it."""
        if self._total >= self._maxTotal:
            if self._refusedTotal is None:
                self._refusedTotal = 0
                _log.warn(
                    "submission: refusing connections (first from {address}): {n} are open,"
                    " the limit max_connections",
                    address=key,
                    n=self._total,
                )
            self._refusedTotal += 1
            return "4.7.0 Too many connections, try again later"
        count = self._open.get(key, 0)
        if count >= self._maxPerAddress:
            if key not in self._refusedByKey:
                self._refusedByKey[key] = 0
                _log.warn(
                    "submission: refusing connections from {address}: {n} are open from it,"
                    " the limit max_connections_per_address",
                    address=key,
                    n=count,
                )
            self._refusedByKey[key] += 1
            return "4.7.0 Too many connections from your address, try again later"
        self._total += 1
        self._open[key] = count + 1
        return None

    def release(self, key: str) -> None:
        """An admitted connection from ``key`` has closed."""
        count = self._open.get(key, 0) - 1
        if count < 0:
            return
        self._total -= 1
        if count:
            self._open[key] = count
        else:
            del self._open[key]
            refused = self._refusedByKey.pop(key, None)
            if refused is not None:
                _log.info(
                    "submission: {address} has no connection open any more"
                    " ({n} refused at max_connections_per_address)",
                    address=key,
                    n=refused,
                )
        if self._refusedTotal is not None and self._total <= self._maxTotal // 2:
            _log.info(
                "submission: accepting connections again ({n} refused at max_connections)",
                n=self._refusedTotal,
            )
            self._refusedTotal = None
