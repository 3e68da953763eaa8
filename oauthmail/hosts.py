"""The names the console answers to: the Host check against DNS rebinding, and Origin.

A web page on any site can point its own name at 127.0.0.1 (DNS rebinding); the browser
then sends the page's requests to the console and lets the page read the answers, since
to the browser they come from the page's own origin. Such requests carry the page's name
in ``Host``. So the console answers a request only when its ``Host`` names the console:

- the address the request arrived on (the bind address, or the interface a wildcard bind
  accepted it on) with the port it arrived on, as an IP literal (``127.0.0.1:8025``,
  ``[::1]:8025``);
- ``localhost`` with that port, when the console is bound to loopback or the request came
  over loopback (Microsoft accepts ``http://`` redirect URIs only for ``localhost``);
- the names an operator lists (``web.allowed_hosts``) for a reverse proxy: ``name`` (any
  port) or ``name:port``.

A POST's ``Origin`` (or, without it, its ``Referer``) must name one of the same hosts.

Rules a reader must not break: everything here is pure (no request, no reactor), so that
the parsers can be property-tested; a value that does not parse is refused, never
repaired; names compare lower-cased and IPv6 literals in their compressed form.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from oauthmail.loopback import isLoopbackHost

__all__ = ["AllowedHosts", "HostName", "parseAllowedHost", "parseHostPort"]

_HOSTPORT = re.compile(r"(\[[0-9A-Fa-f:.]{2,45}\]|[^:\[\]/@\s]{1,253})(?::([0-9]{1,5}))?")
_LABELS = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class HostName:
    """A host name or IP literal, and a port (``None``: any port, for listed names only)."""

    name: str
    port: int | None

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"


def _normaliseName(name: str) -> str | None:
    """Lower-case name, dotted IPv4, or ``[compressed IPv6]``; ``None`` when it is none of these."""
    name = name.lower()
    if name.startswith("["):
        try:
            return f"[{ipaddress.IPv6Address(name[1:-1]).compressed}]"
        except ValueError:
            return None
    if not _LABELS.fullmatch(name) or ".." in name:
        return None
    return name


def parseHostPort(value: str, default_port: int | None) -> HostName | None:
    """``name``, ``name:port``, ``[v6]`` or ``[v6]:port``; ``None`` for anything else."""
    match = _HOSTPORT.fullmatch(value.strip())
    if match is None:
        return None
    name = _normaliseName(match[1])
    if name is None:
        return None
    if match[2] is None:
        return HostName(name, default_port)
    port = int(match[2])
    if not 0 < port < 65536:
        return None
    return HostName(name, port)


def parseAllowedHost(entry: str) -> HostName:
    """An operator's ``web.allowed_hosts`` entry, or ``ValueError`` saying what to write."""
    parsed = parseHostPort(entry, None) if isinstance(entry, str) else None
    if parsed is None:
        raise ValueError(
            f"{entry!r} is not a host name: write name, name:port or [IPv6]:port,"
            " without http:// or a path"
        )
    return parsed


def _literal(host: str) -> str | None:
    """The Host-header spelling of a local address: ``127.0.0.1`` or ``[::1]``."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return _normaliseName(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return f"[{address.compressed}]"
    return str(address)


class AllowedHosts:
    """Decides whether a ``Host`` or ``Origin`` names this console.

    :param bind: the configured ``web.bind``.
    :param extra: the operator's ``web.allowed_hosts`` entries (``ValueError`` if malformed).
    """

    def __init__(self, bind: str, extra: Iterable[str] = ()) -> None:
        self.bind = bind
        self.extra = tuple(parseAllowedHost(e) for e in extra)

    def __repr__(self) -> str:
        return f"<AllowedHosts bind={self.bind!r} extra={[str(e) for e in self.extra]}>"

    def localNames(self, local_host: str, local_port: int) -> list[HostName]:
        """The names a request that arrived on ``local_host:local_port`` may carry."""
        names = []
        literal = _literal(local_host)
        if literal is not None:
            names.append(HostName(literal, local_port))
        if isLoopbackHost(self.bind) or isLoopbackHost(local_host):
            names.append(HostName("localhost", local_port))
        return names

    def allows(self, name: HostName | None, local_host: str, local_port: int) -> bool:
        """Whether ``name`` (parsed, with its port) is one of the console's names."""
        if name is None or name.port is None:
            return False
        if name in self.localNames(local_host, local_port):
            return True
        return any(e.name == name.name and e.port in (None, name.port) for e in self.extra)

    def allowsHost(
        self, header: bytes | None, local_host: str, local_port: int, secure: bool = False
    ) -> bool:
        """The Host check: ``header`` is the raw ``Host`` value (``None`` when absent)."""
        if header is None:
            return False
        try:
            value = header.decode("ascii")
        except UnicodeDecodeError:
            return False
        default = _DEFAULT_PORTS["https" if secure else "http"]
        return self.allows(parseHostPort(value, default), local_host, local_port)

    def allowsOrigin(self, origin: bytes, local_host: str, local_port: int) -> bool:
        """Whether an ``Origin`` (``scheme://host[:port]``) or ``Referer`` URL names us.

        ``null`` (a sandboxed frame, a ``file:`` page, a no-referrer page) is refused.
        """
        try:
            url = urlsplit(origin.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            return False
        default = _DEFAULT_PORTS.get(url.scheme)
        if default is None or "@" in url.netloc:
            return False
        return self.allows(parseHostPort(url.netloc, default), local_host, local_port)
