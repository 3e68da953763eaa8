"""``send`` and ``api``: queue a message; call an HTTP API with an account's token."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from oauthmail.cli.base import (
    EXIT_OK,
    EXIT_USAGE,
    accountSubcommand,
    configOption,
    runInReactor,
    subcommand,
    withAccount,
)
from oauthmail.cli.session import Session
from oauthmail.config import AccountConfig, Config, SubmissionConfig


def sendArguments(parser: argparse.ArgumentParser) -> None:
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


@accountSubcommand(
    "send",
    help="queue the message on standard input for sending through ACCOUNT",
    arguments=sendArguments,
)
def sendCommand(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """Put a message in the durable queue, then wake the running daemon to send it.

    The command only stores the message (synced to disk before it says
    "queued") and asks the daemon over its control socket to send now; the
    daemon owns every attempt and retry, so a message is never sent by two
    processes at once. With no daemon running it says so: the message waits.
    """
    if account.smtp is None:
        print(f"account {account.name!r} has no smtp section: it cannot send mail", file=sys.stderr)
        return EXIT_USAGE
    # The submission server's limits (35 MiB by default, lines of 64 KiB) hold
    # here too: the providers refuse larger mail, /dev/zero must not be read
    # for ever, and a message the server would refuse is not queued by the back door.
    submission = config.submission or SubmissionConfig()
    limit = submission.max_message_size
    message = sys.stdin.buffer.read(limit + 1)
    if len(message) > limit:
        print(
            f"the message is larger than {limit} bytes (submission.max_message_size):"
            " nothing was queued",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not message.strip():
        print("no message on standard input: nothing was queued", file=sys.stderr)
        return EXIT_USAGE
    from oauthmail.smtp.submission.limits import SubmissionLimits

    max_line = SubmissionLimits().max_line
    long = _longLine(message, max_line)
    if long is not None:
        print(
            f"line {long} of the message is longer than {max_line} bytes, which the"
            " submission server refuses too (SMTP allows 998): nothing was queued",
            file=sys.stderr,
        )
        return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.messagelog.writer import MessageLogWriter
        from oauthmail.smtp.api import sendFromCLI
        from oauthmail.smtp.queue.service import OutboundQueue

        async with Session(config, reactor) as session:
            recorder = MessageLogWriter(session.stores.messages, reactor)
            try:
                queue = OutboundQueue(
                    session.stores.outbox,
                    session.tokens,
                    {account.name: account},
                    reactor,
                    recorder=recorder,  # the message log's "queued" entry
                )
                try:
                    message_id, _ = await sendFromCLI(
                        queue, account, message, to=args.to, mail_from=args.mail_from
                    )
                except ValueError as e:
                    print(f"nothing was queued: {e}", file=sys.stderr)
                    return EXIT_USAGE
                record = await session.store.getAccount(account.name)
            finally:
                await recorder.stop()
        state = "unauthorised" if record is None else record.state
        if state in _NOT_SENDING:
            # Queued all the same (it leaves once the account is authorised), but not unsaid.
            print(
                f"note: {account.name} is {_NOT_SENDING[state]}: the message waits until it"
                f" is (oauthmail authorize {account.name})",
                file=sys.stderr,
            )
        from twisted.internet import threads

        from oauthmail.control import wakeDaemon

        why = await threads.deferToThread(wakeDaemon, config.queue.control_socket, account.name)
        if why is None:
            print(f"queued as {message_id}; the oauthmail daemon is sending it now")
        else:
            print(f"queued as {message_id}; {why}: it is sent once the daemon runs")
        return EXIT_OK

    return runInReactor(work)


#: Account states in which nothing is sent until a person acts, in words.
_NOT_SENDING = {"unauthorised": "not authorised", "needs_reauth": "to be authorised again"}


def _longLine(message: bytes, limit: int) -> int | None:
    """The number of the first line longer than ``limit`` bytes (line end not counted)."""
    for number, line in enumerate(message.split(b"\n"), 1):
        if len(line) - line.endswith(b"\r") > limit:
            return number
    return None


def apiArguments(parser: argparse.ArgumentParser) -> None:
    from oauthmail.http.command import addArguments

    addArguments(parser)
    configOption(parser)


@subcommand(
    "api", help="call an HTTP API with ACCOUNT's token and print the answer", arguments=apiArguments
)
@withAccount
def apiCommand(args: argparse.Namespace, config: Config, account: AccountConfig) -> int:
    """The body goes to stdout, ``HTTP STATUS`` to stderr; exit 0 only for a 2xx answer."""
    from oauthmail.http.command import runAPI

    return runAPI(args, account, lambda reactor: Session(config, reactor).open(), runInReactor)
