"""What ``oauthmail api ACCOUNT METHOD URL`` does: one API call with the account's token.

The command (in :mod:`oauthmail.cli`) opens the store and the token source;
:func:`callAPI` makes the request through an :class:`AuthorizedAgent` (the
account's proxy settings, verified TLS, one refresh on a refused token,
redirects followed within the origin) and reads the answer into a bounded
buffer. The token is never printed.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.interfaces import IReactorTCP
from twisted.web.client import ResponseFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers

from oauthmail.config import AccountConfig
from oauthmail.http.agent import AgentFactory
from oauthmail.http.authorized import AuthorizedAgent, checkURL
from oauthmail.http.body import BytesBody, readBounded
from oauthmail.http.proxy import proxySettings
from oauthmail.interfaces import ITokenSource
from oauthmail.text import cleanText, describeFailure, innermost
from oauthmail.tls import certificateProblem

__all__ = ["APIAnswer", "addArguments", "callAPI", "parseHeaders", "runAPI"]

#: The most ``oauthmail api`` prints: an API answer bigger than this is cut off with an error.
MAX_ANSWER = 16 * 1024 * 1024


@dataclass(frozen=True)
class APIAnswer:
    status: int
    body: bytes


def parseHeaders(lines: Sequence[str]) -> list[tuple[str, str]]:
    """``"Name: value"`` arguments as pairs; ``ValueError`` for one without a colon.

    ``Authorization`` is refused: the account's token is what authorises.
    """
    pairs = []
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"a header is 'Name: value', not {line!r}")
        if not _TOKEN.fullmatch(name.strip()):
            raise ValueError(f"{name.strip()!r} is not a header name (RFC 9110 token)")
        if any(c in value for c in "\r\n\x00") or not value.isascii():
            raise ValueError(f"the value of {name.strip()!r} must be ASCII on one line")
        if name.strip().lower() == "authorization":
            raise ValueError("the account's token is the Authorization header; do not give one")
        pairs.append((name.strip(), value.strip()))
    return pairs


#: Failures of the network, not of the request: one line naming the host.
_UNREACHABLE = (
    error.ConnectError,
    error.DNSLookupError,
    error.TimeoutError,
    defer.TimeoutError,
    ResponseFailed,
    ResponseNeverReceived,
)

#: RFC 9110's token: what a method or a header name may be.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def checkRequest(method: str, url: str) -> None:
    """``ValueError`` for a method or URL that cannot go out as one HTTP request line."""
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"{method!r} is not an HTTP method")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("the URL has a space or a control character in it")
    if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
        raise ValueError("the URL carries a user name or password: give none, the token is it")


async def callAPI(
    reactor: IReactorTCP,
    tokens: ITokenSource,
    account: AccountConfig,
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    data: bytes | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> APIAnswer:
    """Send one request with ``account``'s token; its status and body (bounded)."""
    checkURL(url)
    profile = account.profile
    proxy = proxySettings(
        profile.proxy, profile.proxy_auth, os.environ if environ is None else environ
    )
    factory = AgentFactory(reactor)
    agent = AuthorizedAgent(factory.agent(proxy), tokens, account.name, followRedirects=True)
    raw = Headers()
    for name, value in headers:
        raw.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))

    async def call() -> APIAnswer:
        body = BytesBody(data) if data is not None else None
        response = await agent.request(method.encode("ascii"), url.encode("ascii"), raw, body)
        return APIAnswer(response.code, await readBounded(response, MAX_ANSWER))

    try:
        return await defer.ensureDeferred(call()).addTimeout(timeout, reactor)
    finally:
        await factory.close()


def addArguments(parser: argparse.ArgumentParser) -> None:
    """``ACCOUNT METHOD URL [--data ...] [-H ...]`` (the CLI adds ``--config``)."""
    parser.add_argument("account", metavar="ACCOUNT", help="the account whose token to use")
    parser.add_argument("method", metavar="METHOD", type=str.upper, help="GET, POST, ...")
    parser.add_argument("url", metavar="URL", help="the API's https URL")
    parser.add_argument("--data", metavar="TEXT|@FILE", help="the request body (@- for stdin)")
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable); not Authorization: the account's token is that",
    )


def readData(value: str | None) -> bytes | None:
    """``--data``: the text itself, ``@FILE``'s bytes, or stdin's for ``@-``."""
    if value is None or not value.startswith("@"):
        return None if value is None else value.encode("utf-8")
    if value == "@-":
        return sys.stdin.buffer.read()
    with open(value[1:], "rb") as f:
        return f.read()


def runAPI(
    args: argparse.Namespace,
    account: AccountConfig,
    openSession: Callable[[Any], Awaitable[Any]],
    runInReactor: Callable[[Callable[[Any], Awaitable[int]]], int],
) -> int:
    """The ``api`` subcommand once its account is known (exit 0, 1 or 2 as the CLI's)."""
    try:
        headers = parseHeaders(args.header)
        checkRequest(args.method, args.url)
        checkURL(args.url)
    except ValueError as e:  # InsecureURLError is a ValueError
        print(f"oauthmail api: {cleanText(e, 300)}", file=sys.stderr)
        return 2
    try:
        data = readData(args.data)
    except OSError as e:
        print(f"oauthmail api: --data {args.data}: {e.strerror or e}", file=sys.stderr)
        return 2

    async def work(reactor: Any) -> int:
        session = await openSession(reactor)
        try:
            answer = await callAPI(
                reactor, session.tokens, account, args.method, args.url, headers=headers, data=data
            )
        except _UNREACHABLE as e:
            parts = urlsplit(args.url)
            problem = certificateProblem(innermost(e), parts.hostname or parts.netloc)
            why = f"its TLS certificate is {problem}" if problem else describeFailure(e, 200)
            print(f"oauthmail api: cannot reach {parts.netloc}: {why}", file=sys.stderr)
            return 1
        finally:
            await session.close()
        sys.stdout.buffer.write(answer.body)
        sys.stdout.flush()
        print(f"HTTP {answer.status}", file=sys.stderr)
        return 0 if 200 <= answer.status < 300 else 1

    return runInReactor(work)
