"""Which proxy a host is reached through: the profile's ``proxy:``, else the environment.

Pure values, no I/O. Rules (the same as curl's, where they overlap):

- A profile's ``proxy: http://HOST:PORT`` wins; ``proxy: none`` means never a
  proxy; no ``proxy`` key follows ``https_proxy`` (or ``HTTPS_PROXY``).
- ``no_proxy`` (or ``NO_PROXY``) lists hosts reached directly: ``*`` for all,
  ``example.com`` or ``.example.com`` for that domain and its subdomains, or an
  address. It applies whichever way the proxy was chosen.
- A loopback host is always reached directly: a proxy elsewhere cannot reach
  it, and plain ``http`` (allowed only to loopback) never goes through one.
- Proxy credentials are a :class:`~oauthmail.secret.Secret`; no repr shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from oauthmail.loopback import isLoopbackHost
from oauthmail.secret import Secret

__all__ = ["DIRECT", "ProxyError", "ProxyRoute", "ProxySettings", "proxySettings"]


class ProxyError(ValueError):
    """A proxy setting that cannot be used (one line, no credentials in it)."""


@dataclass(frozen=True)
class ProxyRoute:
    """An HTTP proxy that tunnels with ``CONNECT``: its host, port and credentials."""

    host: str
    port: int
    auth: Secret | None = None

    def __str__(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"


@dataclass(frozen=True)
class ProxySettings:
    """The proxy for one profile (``None``: direct) and the hosts that bypass it."""

    route: ProxyRoute | None = None
    no_proxy: tuple[str, ...] = ()

    def routeFor(self, host: str) -> ProxyRoute | None:
        """The proxy to reach ``host`` through, or ``None`` to connect directly."""
        if self.route is None or isLoopbackHost(host) or bypasses(host, self.no_proxy):
            return None
        return self.route


#: No proxy at all.
DIRECT = ProxySettings()


def bypasses(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` matches a ``no_proxy`` entry (case-insensitive, ports ignored)."""
    host = host.strip("[]").rstrip(".").lower()
    for pattern in patterns:
        if pattern == "*":
            return True
        domain = pattern.lstrip(".")
        if host == domain or host.endswith("." + domain):
            return True
    return False


def parseNoProxy(value: str) -> tuple[str, ...]:
    """``no_proxy``'s comma-separated entries, lower-case, without ports or brackets."""
    entries = []
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry.startswith("["):  # [::1]:8080
            entry = entry[1:].split("]", 1)[0]
        elif entry.count(":") == 1:  # host:port
            entry = entry.split(":", 1)[0]
        entries.append(entry.rstrip("."))
    return tuple(entries)


def parseProxyURL(value: str, auth: Secret | None = None) -> ProxyRoute:
    """``http://[user:password@]host:port`` (a bare ``host:port`` too) as a route.

    Raises :class:`ProxyError`: only ``http`` proxies are spoken to (TLS to the
    target is tunnelled through them), and a port is needed.
    """
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme.lower() != "http":
        raise ProxyError(
            f"only http proxies (tunnelling TLS with CONNECT) are supported, not {shown}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ProxyError(f"the proxy {shown} has no valid port") from None
    if not parts.hostname or port is None:
        raise ProxyError(f"the proxy URL needs a host and a port (http://HOST:PORT): {shown}")
    if parts.username is not None:
        auth = Secret(f"{unquote(parts.username)}:{unquote(parts.password or '')}")
    return ProxyRoute(parts.hostname, port, auth)


def proxySettings(
    proxy: str | None, auth: Secret | None, environ: Mapping[str, str]
) -> ProxySettings:
    """The settings for a profile's ``proxy``/``proxy_auth`` in ``environ``.

    ``proxy`` is the configuration's value: ``None`` (the environment),
    ``"none"`` or an ``http://HOST:PORT`` URL. Raises :class:`ProxyError` for
    an environment value that cannot be used.
    """
    no_proxy = parseNoProxy(environ.get("no_proxy", environ.get("NO_PROXY", "")))
    if proxy == "none":
        return DIRECT
    if proxy is not None:
        return ProxySettings(parseProxyURL(proxy, auth), no_proxy)
    value = environ.get("https_proxy", environ.get("HTTPS_PROXY", "")).strip()
    if not value:
        return DIRECT
    return ProxySettings(parseProxyURL(value), no_proxy)
