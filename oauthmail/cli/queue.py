"""``oauthmail queue``: look into the outbound queue and act on it (like ``mailq``, ``postsuper``).

- ``oauthmail queue``: every message waiting or failed for good, oldest first:
  queue id, account, age, size, state, recipients, and the last error.
- ``oauthmail queue show ID``: one message's state, each recipient's outcome,
  its history from the message log, and its header section (never the body).
- ``oauthmail queue retry ID`` / ``oauthmail queue retry --all ACCOUNT``: send
  now (a failed message is queued again for its failed recipients).
- ``oauthmail queue delete ID``: remove a message from the queue.

The command works on the store; after a retry it asks the running daemon over
its control socket to send at once (``wake``), as ``oauthmail send`` does.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from oauthmail.cli.base import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    configOption,
    readConfig,
    runInReactor,
    subcommand,
)
from oauthmail.config import Config
from oauthmail.mail.trace import headerBlock
from oauthmail.smtp.queue.records import DeliveryStatus
from oauthmail.text import cleanText, describeWhen

#: What a queue id looks like (``uuid4().hex``); anything else is refused before the store.
QUEUE_ID = re.compile(r"[0-9a-f]{32}")

__all__ = ["formatListing", "formatMessage"]

#: The longest listing printed (the rest is counted).
LISTED = 1000


def queueArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=("list", "show", "retry", "delete"),
        help="list (default), show ID, retry ID | retry --all ACCOUNT, delete ID",
    )
    parser.add_argument("id", nargs="?", metavar="ID", help="a queue id (from the listing)")
    parser.add_argument(
        "--all", dest="all", metavar="ACCOUNT", help="retry: every waiting message of ACCOUNT"
    )
    parser.add_argument("--account", metavar="ACCOUNT", help="list: only this account's messages")
    configOption(parser)


def _age(status: DeliveryStatus, now: float) -> str:
    return describeWhen(status.created_at, now).removesuffix(" ago")


def _state(status: DeliveryStatus) -> str:
    if status.state == "queued" and status.attempts:
        return "deferred"
    return status.state


def formatListing(statuses: list[DeliveryStatus], now: float, more: bool = False) -> str:
    """The ``mailq``-like listing: one line per message, its last error indented below."""
    if not statuses:
        return "the queue is empty: no message waits and none failed for good"
    lines = [f"{'QUEUE ID':<32}  {'ACCOUNT':<12} {'AGE':>9} {'SIZE':>10}  {'STATE':<8}  RECIPIENTS"]
    for s in statuses:
        size = f"{s.size:,}" if s.size is not None else "?"
        open_ = [r.address for r in s.recipients if r.state not in ("sent",)]
        lines.append(
            f"{s.id:<32}  {s.account:<12} {_age(s, now):>9} {size:>10}  {_state(s):<8}"
            f"  {', '.join(open_) or '-'}"
        )
        if s.last_error:
            lines.append(f"    {cleanText(s.last_error, 150)}")
    waiting = sum(1 for s in statuses if s.state in ("queued", "sending"))
    failed = sum(1 for s in statuses if s.state == "failed")
    lines.append(
        f"-- {waiting} message(s) waiting, {failed} failed for good"
        + (f" (the first {len(statuses)} shown)" if more else "")
    )
    return "\n".join(lines)


def formatMessage(status: DeliveryStatus, header: bytes, history: list[Any], now: float) -> str:
    """``queue show``: facts, recipients, history, header section (never the body)."""
    lines = [
        f"queue id:   {status.id}",
        f"account:    {status.account}",
        f"state:      {_state(status)} after {status.attempts} attempt(s)",
        f"sender:     <{status.mail_from}>",
        f"queued:     {describeWhen(status.created_at, now)}",
        f"size:       {status.size if status.size is not None else '?'} bytes",
    ]
    if status.state == "queued":
        lines.append(f"next try:   {describeWhen(status.next_attempt_at, now)}")
    if status.last_error:
        lines.append(f"last error: {cleanText(status.last_error, 300)}")
    lines.append("recipients:")
    for r in status.recipients:
        reply = cleanText(" ".join(str(x) for x in (r.code, r.text) if x), 200)
        lines.append(f"  {r.address}: {r.state}" + (f" ({reply})" if reply else ""))
    if history:
        lines.append("history:")
        for entry in history:
            said = f": {cleanText(entry.reply, 150)}" if entry.reply else ""
            lines.append(f"  {describeWhen(entry.at, now):>12}  {entry.outcome}{said}")
    lines.append("header section (the body is never shown):")
    text = header.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
    shown = text.split("\n")
    # A sender's header is not the terminal's to command: each line goes through
    # cleanText like every other untrusted text (an escape sequence in a Subject
    # would clear the screen or retitle the window), and a message without a
    # header section is not printed whole.
    lines += ["  " + cleanText(line, HEADER_LINE_SHOWN) for line in shown[:HEADER_LINES_SHOWN]]
    if len(shown) > HEADER_LINES_SHOWN:
        lines.append(f"  [... {len(shown) - HEADER_LINES_SHOWN} more lines]")
    return "\n".join(lines)


HEADER_LINES_SHOWN = 200
HEADER_LINE_SHOWN = 998  # RFC 5322's line limit


@subcommand(
    "queue",
    help="list the outbound queue; show, retry or delete a message",
    arguments=queueArguments,
)
def queueCommand(args: argparse.Namespace) -> int:
    config = readConfig(args.config)
    if config is None:
        return EXIT_USAGE
    action = args.action
    if action in ("show", "delete") and not args.id:
        print(f"oauthmail queue {action} needs a queue id", file=sys.stderr)
        return EXIT_USAGE
    if action == "retry" and bool(args.id) == bool(args.all):
        print(
            "oauthmail queue retry takes a queue id or --all ACCOUNT, one of them", file=sys.stderr
        )
        return EXIT_USAGE
    if action == "list" and args.id:
        print("oauthmail queue list takes no queue id (show ID shows one)", file=sys.stderr)
        return EXIT_USAGE
    if args.id:  # pasted: a newline, capitals or a whole paragraph
        args.id = args.id.strip().lower()
        if not QUEUE_ID.fullmatch(args.id):
            shown = cleanText(args.id, 60)
            print(f"{shown!r} is not a queue id (32 hex digits, as listed)", file=sys.stderr)
            return EXIT_USAGE
    names = {a.name for a in config.accounts}
    for given in (args.all, args.account):
        if given is not None and given not in names:
            print(f"{config.source}: no account named {given!r}", file=sys.stderr)
            return EXIT_USAGE

    async def work(reactor: Any) -> int:
        from oauthmail.app import openConfiguredStores

        stores = await openConfiguredStores(config, reactor, create=False)
        try:
            return await _run(action, args, config, stores, reactor)
        finally:
            await stores.close()

    return runInReactor(work)


async def _run(
    action: str, args: argparse.Namespace, config: Config, stores: Any, clock: Any
) -> int:
    now = clock.seconds()
    outbox = stores.outbox
    if action == "list":
        found = await outbox.listMessages(args.account, limit=LISTED + 1)
        print(formatListing(found[:LISTED], now, more=len(found) > LISTED))
        return EXIT_OK
    if action == "show":
        status = await outbox.status(args.id)
        if status is None:
            return _unknown(args.id)
        header = headerBlock(await outbox.messageData(args.id) or b"")
        history = await stores.messages.history(status.account, args.id)
        print(formatMessage(status, header, history, now))
        return EXIT_OK
    if action == "delete":
        status = await outbox.deleteMessage(args.id)
        if status is None:
            return _unknown(args.id)
        note = (
            " (it was being sent: the provider may still get it)"
            if status.state == "sending"
            else ""
        )
        print(f"deleted {args.id} ({status.account}, {_state(status)}){note}")
        return EXIT_OK
    delay = config.queue.sent_check_delay
    if args.all:
        count = await outbox.makeDue(args.all, now, delay)
        account = args.all
        said = f"{count} message(s) of {account} are due now"
    else:
        status = await outbox.retryMessage(args.id, now, delay)
        if status is None:
            return _unknown(args.id)
        account = status.account
        if status.state not in ("queued",):
            print(f"{args.id} is {status.state}: nothing to retry", file=sys.stderr)
            return EXIT_FAILED
        said = f"{args.id} ({account}) is due now"
    from twisted.internet import threads

    from oauthmail.control import wakeDaemon

    why = await threads.deferToThread(wakeDaemon, config.queue.control_socket, account)
    print(f"{said}; " + ("the oauthmail daemon is sending now" if why is None else f"{why}"))
    return EXIT_OK


def _unknown(queue_id: str) -> int:
    print(f"the queue holds no message {queue_id!r}", file=sys.stderr)
    return EXIT_FAILED
