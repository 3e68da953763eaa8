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
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTCP
from twisted.web.http_headers import Headers

from oauthmail.config import AccountConfig
from oauthmail.http.agent import AgentFactory
from oauthmail.http.authorized import AuthorizedAgent, checkURL
from oauthmail.http.body import BytesBody, readBounded
from oauthmail.http.proxy import proxySettings
from oauthmail.interfaces import ITokenSource

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
        if name.strip().lower() == "authorization":
            raise ValueError("the account's token is the Authorization header; do not give one")
        pairs.append((name.strip(), value.strip()))
    return pairs


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
        data = readData(args.data)
        checkURL(args.url)
    except (ValueError, OSError) as e:  # InsecureURLError is a ValueError
        print(f"oauthmail api: {e}", file=sys.stderr)
        return 2

    async def work(reactor: Any) -> int:
        session = await openSession(reactor)
        try:
            answer = await callAPI(
                reactor, session.tokens, account, args.method, args.url, headers=headers, data=data
            )
        finally:
            await session.close()
        sys.stdout.buffer.write(answer.body)
        sys.stdout.flush()
        print(f"HTTP {answer.status}", file=sys.stderr)
        return 0 if 200 <= answer.status < 300 else 1

    return runInReactor(work)
