"""Benchmark (issue 3): one refresher pass over 10,000 accounts whose tokens expire together.

**Ours**: the real :class:`~oauthmail.tokens.source.TokenSource` and
:class:`~oauthmail.tokens.refresher.TokenRefresher` (``concurrency`` from
``RefresherConfig``, 10 by default; ``--concurrency`` to change it, jitter 0
because the jitter is a deliberate spread, not work), the real
``AgentTransport`` and the real encrypted ``SQLiteTokenStore`` in a temporary
folder. The store is filled beforehand (every account ``ok``, its access
token expiring in five minutes), as a daemon finds it after a restart; the
clock runs from ``startService()`` until every account has been refreshed and
its new tokens written (checked afterwards: every row at version 2).

**Baseline**: the same number of ``refresh_token`` POSTs with the same form
body, at the same concurrency, with plain ``twisted.web.client.Agent`` (a
persistent ``HTTPConnectionPool`` sized to the concurrency, a
``DeferredSemaphore``), reading each body and checking for ``200``; no
parsing, no store.

Both talk to the test provider (``TestOAuthProvider``, rotation on) running in
a **separate process**, a fresh one per side with the same 10,000 freshly
minted refresh tokens, so the provider's CPU is not ours. Each side runs in
its own Python process (:func:`bench._rig.runChild`), so ``rss_mb`` is the
peak RSS of the process that ran oauthmail's refresher, store filling
excluded (the parent fills it).

Usage::

    .venv/bin/python -m bench.refresh             # 10,000 accounts, concurrency 10
    .venv/bin/python -m bench.refresh --quick     # 300 accounts, a few seconds
    .venv/bin/python -m bench.refresh --concurrency 50 --profile /tmp/refresh.prof

The last line is ``bench refresh: ratio=R ours=X baseline=Y unit=accounts/s rss_mb=M``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` and ``oauthmail`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import defer, task

from bench._rig import (
    CLIENT_ID,
    CLIENT_SECRET,
    PYTHON,
    ROOT,
    emitChildResult,
    printResult,
    readChildInput,
    runChild,
)

NAME = "refresh"
UNIT = "accounts/s"
FULL_ACCOUNTS = 10_000
QUICK_ACCOUNTS = 300
#: Access tokens in the store expire this long after the run starts: all due at once.
EXPIRES_IN = 300.0


def _user(i: int) -> str:
    return f"user{i}@example.com"


def _account(i: int) -> str:
    return f"acct{i:05d}"


# -- the provider process -------------------------------------------------------------------


def serveProvider(count: int) -> int:
    """Run the test provider (rotation on), mint ``count`` token sets, hand them over on stdout.

    The first stdout line is JSON with the token endpoint and the refresh
    tokens; the provider then serves until its stdin is closed, and finally
    prints one more JSON line with what it saw (requests, connections).
    """
    import threading

    from twisted.internet import reactor

    from oauthmail.testing.provider import TestOAuthProvider

    provider = TestOAuthProvider(rotate_refresh_tokens=True)
    provider.registerClient(CLIENT_ID, CLIENT_SECRET)
    port = provider.listen(reactor)
    connections = [0]
    factory = port.factory
    original = factory.buildProtocol

    def buildProtocol(addr):  # noqa: ANN001, ANN202 - count TCP connections, for diagnosis
        connections[0] += 1
        return original(addr)

    factory.buildProtocol = buildProtocol
    refresh = [provider.issueTokens(_user(i), CLIENT_ID)["refresh_token"] for i in range(count)]
    sys.stdout.write(
        json.dumps({"token_endpoint": provider.token_endpoint, "refresh_tokens": refresh}) + "\n"
    )
    sys.stdout.flush()
    del refresh

    def waitForEOF() -> None:
        sys.stdin.read()
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=waitForEOF, daemon=True).start()
    reactor.run()
    stats = {
        "requests": provider.requests.get("token:refresh_token", 0),
        "connections": connections[0],
        "reused_refresh_tokens": provider.reused_refresh_tokens,
    }
    sys.stdout.write(json.dumps(stats) + "\n")
    sys.stdout.flush()
    return 0


class ProviderProcess:
    """The parent's handle on one provider process."""

    def __init__(self, count: int) -> None:
        self._proc = subprocess.Popen(
            [PYTHON, "-m", "bench.refresh", "--role", "provider", "--count", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            text=True,
        )
        line = self._proc.stdout.readline()
        if not line:
            self._proc.kill()
            raise RuntimeError("the provider process did not start")
        answer = json.loads(line)
        self.token_endpoint: str = answer["token_endpoint"]
        self.refresh_tokens: list[str] = answer["refresh_tokens"]

    def stop(self) -> dict[str, Any]:
        """Close its stdin (it stops), return its statistics."""
        try:
            out, _ = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
            return {}
        lines = [line for line in out.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}


# -- filling the store (parent) -----------------------------------------------------------


async def fillStore(
    reactor: Any, path: str, key: str, refresh_tokens: list[str], expires_at: float
) -> None:
    """Create the store with every account ``ok`` and tokens expiring at ``expires_at``.

    Through the public store API, 50 operations in flight at a time (they run
    one by one in the store's thread anyway).
    """
    from oauthmail.db.sqlite.tokens import SQLiteTokenStore
    from oauthmail.secret import Secret
    from oauthmail.tokens.records import TokenSet

    store = SQLiteTokenStore(path, key, clock=reactor, reactor=reactor)
    await store.open()
    semaphore = defer.DeferredSemaphore(50)

    async def one(i: int, refresh: str) -> None:
        name = _account(i)
        await store.ensureAccount(name, "generic")
        tokens = TokenSet(Secret(f"stale-{i}"), expires_at, Secret(refresh), "mail")
        await store.putTokens(name, tokens, 0)
        await store.setAccountState(name, "ok", None)

    try:
        await defer.gatherResults(
            [
                semaphore.run(lambda i=i, r=r: defer.ensureDeferred(one(i, r)))
                for i, r in enumerate(refresh_tokens)
            ],
            consumeErrors=True,
        )
    finally:
        await store.close()


# -- the two sides (each in its own process) ---------------------------------------------


async def runOurs(reactor: Any, params: dict[str, Any]) -> dict[str, Any]:
    """One refresher pass with the real token source, transport and store."""
    from oauthmail.config import AccountConfig, ProfileConfig
    from oauthmail.db.sqlite.tokens import SQLiteTokenStore
    from oauthmail.secret import Secret
    from oauthmail.tokens.http import AgentTransport
    from oauthmail.tokens.refresher import TokenRefresher
    from oauthmail.tokens.source import TokenSource

    count = params["count"]
    profile = ProfileConfig(
        name="bench",
        kind="generic",
        authorization_endpoint=None,
        token_endpoint=params["token_endpoint"],
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=CLIENT_ID,
        client_secret=Secret(CLIENT_SECRET),
        scopes=("mail",),
    )
    accounts = [AccountConfig(_account(i), _user(i), profile) for i in range(count)]
    store = SQLiteTokenStore(params["store"], params["key"], clock=reactor, reactor=reactor)
    await store.open()
    # As the daemon builds it (oauthmail/service.py): keep-alive pool sized to the concurrency.
    transport = AgentTransport(reactor, maxPersistentPerHost=max(16, params["concurrency"]))
    source = TokenSource(store, {a.name: a for a in accounts}, transport, reactor, margin=900.0)
    refresher = TokenRefresher(
        source,
        store,
        accounts,
        reactor,
        interval=60.0,
        margin=900.0,
        concurrency=params["concurrency"],
        jitter=0.0,
    )
    profiler = None
    if params.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started, cpu = time.perf_counter(), time.process_time()
    refresher.startService()
    while refresher.refreshed + refresher.failures < count:
        await task.deferLater(reactor, 0.01, lambda: None)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(params["profile"])
    await defer.maybeDeferred(refresher.stopService)

    def versions(conn: Any) -> list[tuple[int, int]]:
        return conn.execute("SELECT version, COUNT(*) FROM tokens GROUP BY version").fetchall()

    rows = dict(await store.database.runRead(versions))
    await transport.close()
    await store.close()
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "done": rows.get(2, 0),
        "failures": refresher.failures,
        "peak_concurrency": refresher.peak_concurrency,
    }


async def runBaseline(reactor: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The same POSTs with plain ``Agent``: no token parsing, no store."""
    from urllib.parse import urlencode

    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IBodyProducer
    from zope.interface import implementer

    @implementer(IBodyProducer)
    class Body:
        def __init__(self, data: bytes) -> None:
            self._data = data
            self.length = len(data)

        def startProducing(self, consumer: Any) -> defer.Deferred[None]:
            consumer.write(self._data)
            return defer.succeed(None)

        def pauseProducing(self) -> None:
            pass

        def resumeProducing(self) -> None:
            pass

        def stopProducing(self) -> None:
            pass

    # Twisted warns that a pooled connection's transport has no abortConnection; harmless here.
    warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)
    concurrency = params["concurrency"]
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = concurrency
    agent = Agent(reactor, pool=pool)
    url = params["token_endpoint"].encode("ascii")
    headers = Headers(
        {
            b"Content-Type": [b"application/x-www-form-urlencoded"],
            b"Accept": [b"application/json"],
        }
    )
    semaphore = defer.DeferredSemaphore(concurrency)
    ok = [0]

    async def post(refresh: str) -> None:
        body = urlencode(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh,
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
            }
        ).encode()
        response = await agent.request(b"POST", url, headers, Body(body))
        await readBody(response)
        if response.code == 200:
            ok[0] += 1

    started, cpu = time.perf_counter(), time.process_time()
    await defer.gatherResults(
        [
            semaphore.run(lambda r=r: defer.ensureDeferred(post(r)))
            for r in params["refresh_tokens"]
        ],
        consumeErrors=True,
    )
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await pool.closeCachedConnections()
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "done": ok[0],
        "failures": params["count"] - ok[0],
    }


def runSide(role: str) -> int:
    """Child entry point: read the parameters from stdin, run one side, report."""
    params = readChildInput()
    body = runOurs if role == "ours" else runBaseline

    async def main(reactor: Any) -> None:
        result = await body(reactor, params)
        emitChildResult(result)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    return 0


# -- the parent ----------------------------------------------------------------------------


async def measure(reactor: Any, options: argparse.Namespace) -> None:
    from oauthmail.tokens.crypto import generateKey

    count = options.accounts
    common = {"count": count, "concurrency": options.concurrency}
    workdir = tempfile.mkdtemp(prefix="oauthmail-bench-refresh-")
    results: dict[str, dict[str, Any]] = {}
    try:
        for side in ("baseline", "ours"):
            provider = ProviderProcess(count)
            try:
                params = dict(common, token_endpoint=provider.token_endpoint)
                if side == "ours":
                    key = generateKey()
                    path = os.path.join(workdir, "tokens.sqlite")
                    filling = time.perf_counter()
                    await fillStore(
                        reactor, path, key, provider.refresh_tokens, time.time() + EXPIRES_IN
                    )
                    print(
                        f"refresh: filled the store with {count} accounts in "
                        f"{time.perf_counter() - filling:.1f} s",
                        file=sys.stderr,
                    )
                    params.update(store=path, key=key, profile=options.profile)
                else:
                    params.update(
                        refresh_tokens=provider.refresh_tokens,
                    )
                provider.refresh_tokens = []
                result = await runChild(["-m", "bench.refresh", "--role", side], params)
            finally:
                stats = provider.stop()
            result["provider"] = stats
            results[side] = result
            print(
                f"refresh: {side}: {result['done']}/{count} refreshed in "
                f"{result['seconds']:.2f} s ({count / result['seconds']:.0f}/s), "
                f"failures={result['failures']}, rss={result['rss_mb']:.1f} MiB, "
                f"cpu={result['cpu_seconds'] * 1e6 / count:.0f} us/account, "
                f"provider saw {stats.get('requests')} refresh requests over "
                f"{stats.get('connections')} connections",
                file=sys.stderr,
            )
            if result["done"] != count or result["failures"]:
                raise RuntimeError(f"{side}: only {result['done']} of {count} accounts refreshed")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if options.profile:
        import pstats

        print(f"refresh: profile of ours written to {options.profile}", file=sys.stderr)
        pstats.Stats(options.profile, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    ours, baseline = results["ours"], results["baseline"]
    printResult(NAME, count / ours["seconds"], count / baseline["seconds"], UNIT, ours["rss_mb"])


def parseArgs(argv: list[str] | None = None) -> argparse.Namespace:
    from oauthmail.config import RefresherConfig

    parser = argparse.ArgumentParser(
        prog="python -m bench.refresh", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ACCOUNTS} accounts only")
    parser.add_argument("--accounts", type=int, default=None, help=f"default {FULL_ACCOUNTS}")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=RefresherConfig().concurrency,
        help="refreshes in flight, both sides (default: the refresher's default)",
    )
    parser.add_argument("--profile", default=None, metavar="FILE", help="cProfile ours to FILE")
    parser.add_argument("--role", choices=("provider", "ours", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.accounts is None:
        options.accounts = QUICK_ACCOUNTS if options.quick else FULL_ACCOUNTS
    return options


def main(argv: list[str] | None = None) -> int:
    options = parseArgs(argv)
    if options.role == "provider":
        return serveProvider(options.count)
    if options.role in ("ours", "baseline"):
        return runSide(options.role)
    task.react(lambda reactor: defer.ensureDeferred(measure(reactor, options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
