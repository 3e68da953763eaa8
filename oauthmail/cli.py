"""The ``oauthmail`` command: one small function per subcommand.

Subcommands register themselves with :func:`subcommand`, so adding
``accounts``, ``authorize``, ``refresh``, ``send`` or ``test`` means writing
one function (and, if it takes arguments, one ``arguments`` function) without
touching :func:`main`. A subcommand returns the process exit status:
0 for success, 1 when the operation failed, 2 for bad input (a configuration
error, a bad argument). Bad input is reported as one line on stderr, never as
a traceback, because the reader is an operator at a terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from oauthmail.config import AccountConfig, Config, ConfigError, deviceGrantProblem, loadConfig
from oauthmail.text import cleanText, describeWhen

#: Where ``--config``/``FILE`` points when the user gives nothing.
DEFAULT_CONFIG = "conf/app.yaml"

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Subcommand:
    """One entry of the dispatch table."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


#: The dispatch table, in the order ``--help`` lists it.
SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register the decorated ``run(args) -> int`` as ``oauthmail NAME``."""

    def register(
        run: Callable[[argparse.Namespace], int],
    ) -> Callable[[argparse.Namespace], int]:
        if name in SUBCOMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        SUBCOMMANDS[name] = Subcommand(name=name, help=help, run=run, arguments=arguments)
        return run

    return register


def configArgument(parser: argparse.ArgumentParser) -> None:
    """The ``FILE`` positional shared by every subcommand that reads the configuration."""
    parser.add_argument(
        "config",
        metavar="FILE",
        nargs="?",
        default=DEFAULT_CONFIG,
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )


def readConfig(path: str, stderr: TextIO | None = None) -> Config | None:
    """Load ``path``; on error print the one-line message and return ``None``.

    Subcommands call this and return :data:`EXIT_USAGE` on ``None``.
    """
    try:
        return loadConfig(path)
    except ConfigError as e:
        print(str(e), file=stderr or sys.stderr)
        return None


def accountStatus(config: Config, name: str) -> str:
    """``configured``, or what to do so that the account is."""
    profile = config.account(name).profile
    if profile.configured:
        return "configured"
    return f"not configured: set {profile.missingSetting} in profiles.{profile.name}"


@subcommand(
    "check-config",
    help="validate the configuration file and list its accounts",
    arguments=configArgument,
)
def checkConfig(args: argparse.Namespace) -> int:
    """Exit 2 with one line on stderr if the file is wrong; else list the accounts."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    out = sys.stdout
    accounts = config.accounts
    print(
        f"{config.source}: OK, {len(accounts)} account{'s' if len(accounts) != 1 else ''},"
        f" {len(config.profiles)} profile{'s' if len(config.profiles) != 1 else ''}",
        file=out,
    )
    if not accounts:
        print("  no accounts: add one under accounts:", file=out)
    width = max((len(a.name) for a in accounts), default=0)
    for account in accounts:
        services = [s for s in ("imap", "smtp") if getattr(account, s) is not None]
        print(
            f"  {account.name:<{width}}  {account.address}  profile {account.profile.name}"
            f" ({account.profile.kind}, {account.grant}"
            f"{', ' + '+'.join(services) if services else ''})"
            f"  {accountStatus(config, account.name)}",
            file=out,
        )
    for note in config.notes:
        print(f"note: {note}", file=out)
    return EXIT_OK


# -- the commands that talk to the store and the provider ------------------------------


def configOption(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, with the same default as ``check-config``'s ``FILE``."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help=f"the configuration file (default: {DEFAULT_CONFIG})",
    )


def accountArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("account", metavar="ACCOUNT", help="the account name (see: accounts)")
    configOption(parser)


def authorizeArguments(parser: argparse.ArgumentParser) -> None:
    accountArguments(parser)
    parser.add_argument(
        "--device",
        action="store_true",
        help="use the device authorization grant (enter a code on another device)",
    )


def pickAccount(config: Config, name: str) -> AccountConfig | None:
    """The configured account ``name``, or ``None`` after one line on stderr."""
    try:
        account = config.account(name)
    except KeyError:
        known = ", ".join(a.name for a in config.accounts) or "none"
        print(f"{config.source}: no account named {name!r} (accounts: {known})", file=sys.stderr)
        return None
    if not account.configured:
        print(f"account {name} is {accountStatus(config, name)}", file=sys.stderr)
        return None
    return account


def runInReactor(work: Callable[[Any], Awaitable[int]]) -> int:
    """Run ``work(reactor)`` under ``task.react`` and return its exit status.

    An unexpected exception becomes one line on stderr (its class and the cleaned
    message of a token or store error, which never carry a secret) and status 1.
    """
    from twisted.internet import defer, task

    from oauthmail.tokens.authorize import explain
    from oauthmail.tokens.store import StoreError

    status = [EXIT_FAILED]

    async def run(reactor: Any) -> None:
        try:
            status[0] = await work(reactor)
        except StoreError as e:
            print(f"oauthmail: the token store cannot be used: {e}", file=sys.stderr)
            status[0] = EXIT_FAILED
        except Exception as e:
            print(f"oauthmail: {explain(e)}", file=sys.stderr)
            status[0] = EXIT_FAILED

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit:
        pass
    return status[0]


class _Session:
    """The store, transport, token source and authorizer one command needs."""

    def __init__(self, config: Config, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.stores: Any = None
        self.store: Any = None
        self.transport: Any = None
        self.tokens: Any = None
        self.authorizer: Any = None

    async def open(self) -> _Session:
        from oauthmail.db.open import openStores
        from oauthmail.tokens.authorize import Authorizer
        from oauthmail.tokens.http import AgentTransport
        from oauthmail.tokens.source import TokenSource

        self.stores = await openStores(self.config.store, clock=self.reactor, reactor=self.reactor)
        self.store = self.stores.tokens
        self.transport = AgentTransport(self.reactor)
        configured = {a.name: a for a in self.config.accounts if a.configured}
        self.tokens = TokenSource(
            self.store,
            configured,
            self.transport,
            self.reactor,
            margin=self.config.refresher.margin,
        )
        self.authorizer = Authorizer(self.tokens, self.reactor)
        return self

    async def close(self) -> None:
        if self.authorizer is not None:
            self.authorizer.stop()
        if self.transport is not None:
            await self.transport.close()
        if self.store is not None:
            await self.store.close()


def _when(when: float | None, now: float) -> str:

    if when is None:
        return "—"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    return f"{describeWhen(when, now)} ({stamp})"


@subcommand(
    "init-store",
    help="create the store (and its key) where the configuration says, or check it",
    arguments=configOption,
)
def initStoreCommand(args: argparse.Namespace) -> int:
    """Create a missing store or replace an empty file; an existing store is only checked."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.db.open import initStore

        print(await initStore(config.store, clock=reactor, reactor=reactor))
        return EXIT_OK

    return runInReactor(work)


def migrateStoreArguments(parser: argparse.ArgumentParser) -> None:
    configOption(parser)
    parser.add_argument(
        "--to",
        metavar="DSN",
        required=True,
        help="the EMPTY PostgreSQL database to copy into (postgresql://USER@HOST:PORT/DB;"
        " give the password in PGPASSWORD or ~/.pgpass, not here)",
    )


@subcommand(
    "migrate-store",
    help="copy the SQLite store (tokens, ledger, queue) into an empty PostgreSQL database",
    arguments=migrateStoreArguments,
)
def migrateStoreCommand(args: argparse.Namespace) -> int:
    """Stop the daemon first: what it writes during the copy would not be copied."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.db.transfer import copyStore

        print(await copyStore(config.store, args.to, clock=reactor, reactor=reactor))
        return EXIT_OK

    return runInReactor(work)


@subcommand(
    "accounts",
    help="list the accounts with their state and token expiry (never a token)",
    arguments=configOption,
)
def accounts(args: argparse.Namespace) -> int:
    """A table of every account, as the console shows it."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.tokens.store import openStore
        from oauthmail.web.console import STATE_LABELS, collectStatuses

        store = await openStore(config.store, clock=reactor, reactor=reactor)
        try:
            statuses = await collectStatuses(config, store)
        finally:
            await store.close()
        now = reactor.seconds()
        header = ("ACCOUNT", "ADDRESS", "PROFILE", "STATE", "TOKEN EXPIRES", "LAST REFRESH")
        rows = [
            (
                s.name,
                s.address,
                s.profile,
                STATE_LABELS.get(s.state, s.state),
                describeWhen(s.expires_at, now),
                describeWhen(s.last_refresh_at, now),
                s.last_error or (f"next: {s.next_step}" if s.next_step else ""),
            )
            for s in statuses
        ]
        if not rows:
            print(f"{config.source}: no accounts: add one under accounts:")
            return EXIT_OK
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        titles = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
        print(f"{titles}  LAST ERROR / NEXT STEP")
        for row in rows:
            cells = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True))
            print(f"{cells}  {cleanText(row[-1])}".rstrip())
        return EXIT_OK

    return runInReactor(work)


@subcommand(
    "authorize",
    help="authorise an account: open a URL, paste back where the browser ended",
    arguments=authorizeArguments,
)
def authorize(args: argparse.Namespace) -> int:
    """Browser (paste the redirect URL), device code, or client credentials."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    account = pickAccount(config, args.account)
    if account is None:
        return EXIT_USAGE
    problem = deviceGrantProblem(account.profile) if args.device else None
    if problem is not None:
        print(f"--device cannot be used for {account.name}: {problem}", file=sys.stderr)
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.tokens.authorize import describeAuthorized
        from oauthmail.tokens.errors import AuthorizationFailed

        session = await _Session(config, reactor).open()
        try:  # the row first, as the daemon's start-up makes it: a refusal is kept there
            await session.store.ensureAccount(account.name, account.profile.kind)
            result = await _authorizeWith(session, account, args.device)
        except AuthorizationFailed as e:
            print(f"authorisation of {account.name} failed: {e.reason}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await session.close()
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


async def _authorizeWith(session: _Session, account: AccountConfig, device: bool) -> Any:
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
        return await authorizer.completeDevice(name, auth)
    url, pending = authorizer.begin(name, callbackURI(session.config))
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


@subcommand(
    "refresh",
    help="refresh an account's token now and print the new expiry (never the token)",
    arguments=accountArguments,
)
def refresh(args: argparse.Namespace) -> int:
    """Force a refresh: what the daemon would do, now."""
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    account = pickAccount(config, args.account)
    if account is None:
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.tokens.authorize import explain
        from oauthmail.tokens.errors import TokenError

        session = await _Session(config, reactor).open()
        try:
            await session.tokens.forceRefresh(account.name)
            record = await session.store.getTokens(account.name)
        except TokenError as e:
            print(f"refresh of {account.name} failed: {explain(e)}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            await session.close()
        expires = record.expires_at if record is not None else None
        if expires is None:
            print(f"{account.name}: refreshed; the new token does not expire")
        else:
            when = _when(expires, reactor.seconds())
            print(f"{account.name}: refreshed; the new token expires {when}")
        return EXIT_OK

    return runInReactor(work)


def sendArguments(parser: argparse.ArgumentParser) -> None:
    accountArguments(parser)
    parser.add_argument(
        "--to",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an envelope recipient (repeat for several; default: the To/Cc/Bcc headers)",
    )
    parser.add_argument(
        "--from",
        dest="mail_from",
        default=None,
        metavar="ADDRESS",
        help="the envelope sender (default: the account's address)",
    )


@subcommand(
    "send",
    help="queue the message on standard input for sending through ACCOUNT",
    arguments=sendArguments,
)
def sendCommand(args: argparse.Namespace) -> int:
    """Put a message in the durable queue, then wake the running daemon to send it.

    The command only stores the message (synced to disk before it says
    "queued") and asks the daemon over its control socket to send now; the
    daemon owns every attempt and retry, so a message is never sent by two
    processes at once. With no daemon running it says so: the message waits.
    """
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    account = pickAccount(config, args.account)
    if account is None:
        return EXIT_USAGE
    if account.smtp is None:
        print(f"account {account.name!r} has no smtp section: it cannot send mail", file=sys.stderr)
        return EXIT_USAGE
    message = sys.stdin.buffer.read()
    if not message.strip():
        print("no message on standard input: nothing was queued", file=sys.stderr)
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.smtp.api import sendFromCLI
        from oauthmail.smtp.queue.service import OutboundQueue

        session = await _Session(config, reactor).open()
        try:
            queue = OutboundQueue(
                session.stores.outbox, session.tokens, {account.name: account}, reactor
            )
            try:
                message_id, _ = await sendFromCLI(
                    queue, account, message, to=args.to, mail_from=args.mail_from
                )
            except ValueError as e:
                print(f"nothing was queued: {e}", file=sys.stderr)
                return EXIT_USAGE
        finally:
            await session.close()
        from twisted.internet import threads

        from oauthmail.control import wakeDaemon

        why = await threads.deferToThread(wakeDaemon, config.queue.control_socket, account.name)
        if why is None:
            print(f"queued as {message_id}; the oauthmail daemon is sending it now")
        else:
            print(f"queued as {message_id}; {why}: it is sent once the daemon runs")
        return EXIT_OK

    return runInReactor(work)


def apiArguments(parser: argparse.ArgumentParser) -> None:
    from oauthmail.http.command import addArguments

    addArguments(parser)
    configOption(parser)


@subcommand(
    "api", help="call an HTTP API with ACCOUNT's token and print the answer", arguments=apiArguments
)
def apiCommand(args: argparse.Namespace) -> int:
    """The body goes to stdout, ``HTTP STATUS`` to stderr; exit 0 only for a 2xx answer."""
    from oauthmail.http.command import runAPI

    config = readConfig(args.config)
    account = None if config is None else pickAccount(config, args.account)
    if account is None:
        return EXIT_USAGE
    return runAPI(args, account, lambda reactor: _Session(config, reactor).open(), runInReactor)


def hashPasswordArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of standard input (for scripts)",
    )


@subcommand(
    "hash-password",
    help="hash a submission password (scrypt) for the configuration",
    arguments=hashPasswordArguments,
)
def hashPasswordCommand(args: argparse.Namespace) -> int:
    """Read the password (asked twice on a terminal, else one line of stdin); print its hash."""
    import getpass

    return readAndHashPassword(
        fromStdin=args.stdin or not sys.stdin.isatty(),
        stdin=sys.stdin,
        readPassword=getpass.getpass,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )


def readAndHashPassword(
    *,
    fromStdin: bool,
    stdin: TextIO,
    readPassword: Callable[[str], str],
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """The password never comes as an argument (shell history, ``ps``); print only its hash."""
    from oauthmail.passwords import hashPassword

    if fromStdin:
        password = stdin.readline().rstrip("\r\n")
    else:
        password = readPassword("Password: ")
        if readPassword("Password again: ") != password:
            print("the passwords do not match: nothing was hashed", file=stderr)
            return EXIT_USAGE
    if not password:
        print("refusing to hash an empty password", file=stderr)
        return EXIT_USAGE
    print(hashPassword(password), file=stdout)
    return EXIT_OK


def buildParser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="oauthmail",
        description="IMAP and SMTP through OAuth 2.0 mail providers.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for entry in SUBCOMMANDS.values():
        sub = commands.add_parser(entry.name, help=entry.help, description=entry.help)
        if entry.arguments is not None:
            entry.arguments(sub)
        sub.set_defaults(run=entry.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oauthmail ARGS``; return the exit status."""
    parser = buildParser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors itself (exit 2) and --help (0)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    try:
        return args.run(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
