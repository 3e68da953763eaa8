"""``authorize``: consent on the command line (paste-back or device code)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oauthmail.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    accountSubcommand,
    runInReactor,
)
from oauthmail.cli.session import Session
from oauthmail.config import AccountConfig, Config, deviceGrantProblem


def deviceArgument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        action="store_true",
        help="use the device authorization grant (enter a code on another device)",
    )


@accountSubcommand(
    "authorize",
    help="authorise an account: open a URL and paste back where the browser ended (a"
    " device_code account: enter a code on another device; client_credentials: fetch a token)",
    arguments=deviceArgument,
)
def authorize(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """Browser (paste the redirect URL), device code, or client credentials."""
    problem = deviceGrantProblem(account.profile) if args.device else None
    if problem is not None:
        print(f"--device cannot be used for {account.name}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.tokens.authorize import describeAuthorized
        from oauthmail.tokens.errors import AuthorizationFailed

        try:
            async with Session(config, reactor, create=True) as session:
                # the row first, as the daemon's start-up makes it: a refusal is kept there
                await session.store.ensureAccount(account.name, account.profile.kind)
                result = await _authorizeWith(session, account, args.device)
        except AuthorizationFailed as e:
            print(f"authorisation of {account.name} failed: {e.reason}", file=sys.stderr)
            return EXIT_FAILED
        if result is None:
            return EXIT_FAILED
        print(describeAuthorized(result, reactor.seconds()), flush=True)
        return EXIT_OK

    return runInReactor(work)


def readLine(reactor: Any) -> Any:
    """One line of stdin, read in a daemon thread; a Deferred.

    Not the reactor's thread pool: its threads are joined at shutdown, so a person
    pressing Ctrl-C at the prompt would leave the process waiting for a line.
    """
    import threading

    from twisted.internet import defer

    d: defer.Deferred[str] = defer.Deferred()

    def read() -> None:
        try:
            line = sys.stdin.readline()
        except Exception:  # a closed or unreadable stdin: no answer
            line = ""
        reactor.callFromThread(d.callback, line)

    threading.Thread(target=read, name="oauthmail-stdin", daemon=True).start()
    return d


def _troubleReporter(expires_at: float) -> Any:
    """A line on stderr when the token endpoint stops answering the polls, and when it is back."""
    import time

    until = time.strftime("%H:%M UTC", time.gmtime(expires_at))

    def report(reason: str | None) -> None:
        if reason is None:
            print("the token endpoint answers again; still waiting", file=sys.stderr, flush=True)
        else:
            print(
                f"the token endpoint cannot be reached for now ({reason});"
                f" still trying until the code expires at {until}",
                file=sys.stderr,
                flush=True,
            )

    return report


async def _authorizeWith(session: Session, account: AccountConfig, device: bool) -> Any:
    """Run the flow for the account's grant; ``None`` if the person gave no answer."""
    from oauthmail.tokens.identity import accountIdentity
    from oauthmail.web.authorize import callbackURI

    authorizer = session.authorizer
    name, person = account.name, accountIdentity(account)
    if account.grant == "client_credentials":
        print(f"{name} uses client credentials: asking for a token...", flush=True)
        return await authorizer.authorizeApp(name)
    if device or account.grant == "device_code":
        auth = await authorizer.beginDevice(name)
        print(f"To authorise {name}, open {auth.verification_uri}", flush=True)
        print(f"and enter the code: {auth.user_code}", flush=True)
        if auth.verification_uri_complete:
            print(f"(or open {auth.verification_uri_complete})", flush=True)
        print(f"Sign in there as {person}. Waiting (Ctrl-C to give up)...", flush=True)
        return await authorizer.completeDevice(name, auth, _troubleReporter(auth.expires_at))
    url, pending = authorizer.begin(name, callbackURI(session.config, profile=account.profile))
    print(f"To authorise {name}, open this address in a browser, sign in as {person}:\n")
    print(url, flush=True)
    print(
        f"\nThe browser then goes to {pending.request.redirect_uri}. If that page does not"
        " load (or shows an error), copy the whole address from the address bar.\n"
        "Paste it here and press Enter:",
        flush=True,
    )
    line = await readLine(session.reactor)
    if not line.strip():
        print("no address was pasted: nothing was authorised", file=sys.stderr)
        return None
    return await authorizer.complete(line.strip())
