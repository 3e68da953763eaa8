"""The chaos test (issue 14): faults everywhere at random while mail flows both ways.

For two minutes a real ``twistd oauthmail`` receives and sends through a real
Dovecot while a seeded random plan

- flaps the test OAuth provider: ``/token`` errors (``setErrorRate``), a
  hanging ``/token`` (``setHang``), failing or hanging introspection
  (``setIntrospectionFault``, so Dovecot refuses or holds logins);
- restarts Dovecot (same ports, same mail);
- SIGKILLs the daemon and starts it again at once.

Mail flows all the while: messages are appended to the receiving accounts'
INBOXes, and submitted to the daemon's submission server with ``smtplib`` (a
``250`` is an acknowledgement), going out through Dovecot's submission service
to the final hop, which files a copy in the sender's Sent as Gmail does (so a
message in doubt is looked for there before it is sent again).

Then every fault is healed and the test proves from the sinks and the final
hop that nothing was lost and nothing arrived twice: every appended message is
in the Maildirs exactly once (by Message-ID), every acknowledged submission
reached the final hop exactly once. An operation whose outcome the client could
not see (the append or the submission failed mid-way: Dovecot or the daemon
died under it) is *in doubt*: it may have arrived, but never twice.

The seed is printed (``OAUTHMAIL_CHAOS_SEED=N`` replays a plan), and so is one
line of figures at the end.

The provider does not rotate refresh tokens (as Google): with single-use
rotation, a SIGKILL after the provider answered a refresh and before the
answer reached the store loses the grant (the old refresh token is dead, the
new one never arrived), which no client can prevent and a person must
authorise again. The plan makes that likely (a hung ``/token`` released right
before a kill), and its cost is a re-authorisation, not mail: this test is
about the mail.
"""

from __future__ import annotations

import imaplib
import os
import random
import re
import shutil
import smtplib
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, threads

from oauthmail.passwords import ScryptParameters, hashPassword
from oauthmail.testing.certs import TestCertificates
from oauthmail.testing.dovecot import DovecotServer
from oauthmail.testing.finalhop import FinalHop, RelayedMessage
from oauthmail.testing.provider import TestOAuthProvider

from .conftest import CLIENT_ID, CLIENT_SECRET, TEMPLATES, requireDovecot
from .daemon import Daemon, freePort, profile, sleep, waitFor
from .test_daemon_receive import maildirIDs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Seconds of faults while mail flows; then everything heals and the mail must settle.
CHAOS = 120.0
#: How long the mail may take to settle once every fault is healed.
SETTLE = 120.0
KILLS = 4
DOVECOT_RESTARTS = 3
RECEIVERS = ("rx1", "rx2")
SENDERS = ("tx1", "tx2")
#: A message appended, and one submitted, about this often.
APPEND_EVERY = 0.5
SUBMIT_EVERY = 0.5
PASSWORD = "chaos-submission-password"
CHEAP = ScryptParameters(n=2**4, r=8, p=1)
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def address(account: str) -> str:
    return f"{account}@chaos.test"


# -- the plan ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Event:
    """One thing the plan does at ``at`` seconds into the chaos."""

    at: float
    kind: str  # fault-on, fault-off, restart-dovecot, kill
    fault: str = ""
    status: int = 0
    rate: float = 0.0


def makePlan(rng: random.Random) -> list[Event]:
    """Kills, Dovecot restarts and one provider fault at a time, at random moments."""
    events = [Event(rng.uniform(8.0, CHAOS - 5.0), "kill") for _ in range(KILLS)]
    events += [
        Event(rng.uniform(5.0, CHAOS - 15.0), "restart-dovecot") for _ in range(DOVECOT_RESTARTS)
    ]
    t = rng.uniform(1.0, 4.0)
    while t < CHAOS - 8.0:
        fault = rng.choice(
            ("token-errors", "token-hang", "introspection-errors", "introspection-hang")
        )
        status = rng.choice((429, 500, 503)) if fault == "token-errors" else 503
        rate = rng.choice((0.5, 0.8, 1.0))
        events.append(Event(t, "fault-on", fault, status, rate))
        t += rng.uniform(2.0, 7.0)
        events.append(Event(t, "fault-off", fault))
        t += rng.uniform(2.0, 6.0)
    return sorted(events)


# -- the world --------------------------------------------------------------------------


class Mailhost:
    """The one Dovecot of the test, restarted on the same ports and the same mail folder."""

    def __init__(self, certs: TestCertificates, provider: TestOAuthProvider, hop: FinalHop) -> None:
        self.certs = certs
        self.provider = provider
        self.hop = hop
        self.workDir = Path(tempfile.mkdtemp(prefix="oauthmail-chaos-"))
        self.current = self._new(None)
        self.restarts = 0

    def _new(self, ports: Any) -> DovecotServer:
        return DovecotServer(
            TEMPLATES,
            self.provider.introspection_endpoint,
            self.certs,
            workDir=self.workDir,
            relayHost=self.hop.host,
            relayPort=self.hop.port,
            ports=ports,
        )

    def start(self) -> None:
        self.current.start()

    def restart(self) -> None:
        """Stop Dovecot (every connection drops) and start it again (blocking)."""
        ports = self.current.ports
        self.current.stop()
        self.current = self._new(ports)
        self.current.start()
        self.restarts += 1

    def stop(self) -> None:
        self.current.stop()
        shutil.rmtree(self.workDir, ignore_errors=True)


class MasterIMAP:
    """APPENDs as Dovecot's master user, one connection per mail user, made anew when broken."""

    def __init__(self, mailhost: Mailhost) -> None:
        self.mailhost = mailhost
        self.lock = threading.Lock()
        self.clients: dict[str, imaplib.IMAP4_SSL] = {}

    def append(self, user: str, mailbox: str, data: bytes) -> None:
        """One APPEND (blocking); any failure drops the connection and raises."""
        with self.lock:
            client = self.clients.pop(user, None)
            try:
                if client is None:
                    dovecot = self.mailhost.current
                    client = dovecot.imapClient(timeout=4)
                    client.login(f"{user}*{dovecot.masterUser}", dovecot.masterPassword)
                status, reply = client.append(mailbox, None, None, data)
                if status != "OK":
                    raise RuntimeError(f"APPEND to {mailbox} of {user}: {reply!r}")
            except BaseException:
                if client is not None:
                    try:
                        client.shutdown()
                    except Exception:  # noqa: S110 - it is broken already
                        pass
                raise
            self.clients[user] = client

    def close(self) -> None:
        with self.lock:
            for client in self.clients.values():
                try:
                    client.logout()
                except Exception:  # noqa: S110 - best effort at the end
                    pass
            self.clients.clear()


class PatientSentFiler:
    """The final hop's Sent filing (as Gmail's), patient through Dovecot restarts.

    The copy must be in Sent before the final hop keeps the message and answers
    250, or a message the provider has could look unsent; so a failed APPEND is
    tried again (on a new connection) until Dovecot is back. A retried APPEND
    may leave two copies in Sent, which is harmless: the daemon only asks
    whether there is one. A Dovecot restart holds filing back a few seconds, so
    the daemon's Sent search keeps its default delay (30 s after it finds the
    message in doubt): with a 3 s delay, a copy filed late under heavy load made
    the search miss a message the final hop had kept, and it was sent twice.
    """

    def __init__(self, imap: MasterIMAP, patience: float = 60.0) -> None:
        self.imap = imap
        self.patience = patience
        self.filed = 0

    def _file(self, message: RelayedMessage) -> None:
        deadline = time.monotonic() + self.patience
        while True:
            try:
                self.imap.append(message.mailFrom, "Sent", message.data)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            else:
                self.filed += 1
                return

    def __call__(self, message: RelayedMessage) -> defer.Deferred[None]:
        return threads.deferToThread(self._file, message)


@dataclass
class Ledger:
    """What the clients know: acknowledged, and in doubt (may have arrived, never twice)."""

    done: list[bytes] = field(default_factory=list)
    doubt: list[bytes] = field(default_factory=list)
    refused: int = 0


@pytest.fixture
def chaos(certs: TestCertificates) -> Iterator[dict[str, Any]]:
    """A provider, a final hop and a Dovecot of the test's own (it flaps and restarts them)."""
    requireDovecot()
    provider = TestOAuthProvider(access_token_lifetime=60.0, rotate_refresh_tokens=False)
    provider.registerClient(CLIENT_ID, CLIENT_SECRET)
    provider.listen(_reactor())
    hop = FinalHop()
    hop.listen(_reactor())
    mailhost = Mailhost(certs, provider, hop)
    pytest_twisted.blockon(threads.deferToThread(mailhost.start))
    imap = MasterIMAP(mailhost)
    hop.fileSent = PatientSentFiler(imap)
    try:
        yield {"provider": provider, "hop": hop, "mailhost": mailhost, "imap": imap}
    finally:
        hop.fileSent = None
        provider.setHang(False)
        provider.setIntrospectionFault()
        imap.close()
        mailhost.stop()
        pytest_twisted.blockon(hop.stop())
        pytest_twisted.blockon(provider.stop())


def configuration(provider: TestOAuthProvider, dovecot: DovecotServer, md: Path) -> dict[str, Any]:
    accounts: list[dict[str, Any]] = [
        {
            "name": name,
            "address": address(name),
            "profile": "test",
            "imap": {
                "folders": [{"name": "INBOX", "disposition": "delete"}],
                "sink": {"maildir": str(md / name)},
                "poll_interval": "20s",
            },
        }
        for name in RECEIVERS
    ]
    accounts += [
        {
            "name": name,
            "address": address(name),
            "profile": "test",
            "smtp": {"sent_folder": "auto"},
        }
        for name in SENDERS
    ]
    return {
        "profiles": {"test": profile(provider, dovecot)},
        "accounts": accounts,
        # 60 s tokens refreshed within 45 s of their end: about every 15 s, through the faults.
        "refresher": {"interval": "2s", "margin": "45s"},
        # The Sent search waits the default 30 s: longer than the final hop may take to
        # file a copy (PatientSentFiler), or a message it kept could look unsent.
        "queue": {"retry_min": "1s", "retry_max": "4s"},
        "submission": {
            "bind": "127.0.0.1",
            "port": freePort(),
            "users": [
                {
                    "name": "app",
                    "password_hash": hashPassword(PASSWORD, CHEAP),
                    "allowed_senders": list(SENDERS),
                }
            ],
        },
    }


# -- mail flowing both ways --------------------------------------------------------------


def inbound(i: int, user: str) -> bytes:
    return (
        f"From: friend@example.net\r\nTo: {user}\r\nSubject: in {i}\r\n"
        f"Message-ID: <in-{i}@chaos.test>\r\n\r\nbody {i}\r\n"
    ).encode()


def outbound(i: int, sender: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: friend@example.net\r\nSubject: out {i}\r\n"
        f"Message-ID: <out-{i}@chaos.test>\r\n\r\nline one\r\n.a dot line\r\nbye\r\n"
    ).encode()


async def appendLoop(imap: MasterIMAP, ledger: Ledger, until: float) -> None:
    """Append to the receivers' INBOXes until ``until``; a failed APPEND is in doubt."""
    i = 0
    while time.monotonic() < until:
        user = address(RECEIVERS[i % len(RECEIVERS)])
        mid = f"<in-{i}@chaos.test>".encode()
        try:
            await threads.deferToThread(imap.append, user, "INBOX", inbound(i, user))
        except Exception:
            ledger.doubt.append(mid)
            await sleep(0.5)
        else:
            ledger.done.append(mid)
        i += 1
        await sleep(APPEND_EVERY)


class Submitter:
    """Submits through the daemon's submission server with smtplib, reconnecting as needed."""

    def __init__(self, port: int, ledger: Ledger) -> None:
        self.port = port
        self.ledger = ledger
        self.client: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        try:
            client.ehlo("chaos.test")
            client.login("app", PASSWORD)
        except BaseException:
            client.close()
            raise
        return client

    def send(self, i: int) -> str:
        """Submit message ``i`` (blocking): ``acked``, ``doubt`` or ``not-sent``."""
        if self.client is None:
            try:
                self.client = self._connect()
            except (OSError, smtplib.SMTPException):
                return "not-sent"  # no transaction began: nothing can have arrived
        sender = address(SENDERS[i % len(SENDERS)])
        try:
            refused = self.client.sendmail(sender, ["friend@example.net"], outbound(i, sender))
        except (OSError, smtplib.SMTPException):
            self.close()
            return "doubt"
        return "doubt" if refused else "acked"

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: S110 - it is broken already
                pass


async def submitLoop(submitter: Submitter, ledger: Ledger, until: float) -> None:
    i = 0
    while time.monotonic() < until:
        outcome = await threads.deferToThread(submitter.send, i)
        mid = f"<out-{i}@chaos.test>".encode()
        if outcome == "not-sent":
            ledger.refused += 1
            await sleep(0.5)
            continue  # the same message again, later
        (ledger.done if outcome == "acked" else ledger.doubt).append(mid)
        i += 1
        await sleep(SUBMIT_EVERY)
    await threads.deferToThread(submitter.close)


# -- the faults ------------------------------------------------------------------------


def setFault(provider: TestOAuthProvider, event: Event, seed: int) -> None:
    if event.fault == "token-errors":
        if event.kind == "fault-on":
            provider.setErrorRate(event.rate, event.status, seed=seed)
        else:
            provider.setErrorRate(0.0)
    elif event.fault == "token-hang":
        provider.setHang(event.kind == "fault-on")
    elif event.fault == "introspection-errors":
        if event.kind == "fault-on":
            provider.setIntrospectionFault(status=event.status)
        else:
            provider.setIntrospectionFault()
    elif event.fault == "introspection-hang":
        if event.kind == "fault-on":
            provider.setIntrospectionFault(hang=True)
        else:
            provider.setIntrospectionFault()


async def runPlan(
    plan: list[Event], started: float, world: dict[str, Any], daemon: Daemon, seed: int
) -> Counter[str]:
    """Carry out the plan on time (each step after the one before it); what was done."""
    provider, mailhost = world["provider"], world["mailhost"]
    done: Counter[str] = Counter()
    for event in plan:
        wait = started + event.at - time.monotonic()
        if wait > 0:
            await sleep(wait)
        if event.kind == "kill":
            daemon.kill()
            daemon.start()
            await daemon.waitReady(60.0)
            done["kills"] += 1
        elif event.kind == "restart-dovecot":
            await threads.deferToThread(mailhost.restart)
            done["dovecot restarts"] += 1
        else:
            setFault(provider, event, seed)
            if event.kind == "fault-on":
                done[event.fault] += 1
    provider.setErrorRate(0.0)
    provider.setHang(False)
    provider.setIntrospectionFault()
    return done


# -- the proof -------------------------------------------------------------------------


def relayedIDs(hop: FinalHop) -> Counter[bytes]:
    found: Counter[bytes] = Counter()
    for m in hop.messages:
        found.update(mid for mid in _MESSAGE_ID.findall(m.data) if mid.startswith(b"<out-"))
    return found


def receivedIDs(md: Path) -> Counter[bytes]:
    found: Counter[bytes] = Counter()
    for name in RECEIVERS:
        found.update(maildirIDs(md / name))
    return found


def problems(ledger: Ledger, arrived: Counter[bytes]) -> tuple[list[bytes], list[bytes]]:
    """(lost: acknowledged but not arrived, duplicated: arrived more than once)."""
    lost = [mid for mid in ledger.done if arrived[mid] == 0]
    duplicated = sorted(mid for mid, n in arrived.items() if n > 1)
    return lost, duplicated


@pytest.mark.timeout(480)
@pytest_twisted.ensureDeferred
async def test_chaos_loses_and_duplicates_nothing(chaos, tmp_path):
    """Provider flaps, Dovecot restarts, SIGKILLs, mail both ways: none lost, none twice."""
    seed = int(os.environ.get("OAUTHMAIL_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\nchaos seed {seed} (OAUTHMAIL_CHAOS_SEED={seed} replays this plan)")
    rng = random.Random(seed)
    plan = makePlan(rng)
    provider, hop, mailhost = chaos["provider"], chaos["hop"], chaos["mailhost"]
    md = tmp_path / "md"
    config = configuration(provider, mailhost.current, md)
    daemon = Daemon(tmp_path / "daemon", config)
    daemon.secrets.add(PASSWORD)
    accounts = {a["name"]: a["address"] for a in config["accounts"]}
    await daemon.authorise(provider, accounts)
    daemon.start()
    received, sent = Ledger(), Ledger()
    submitter = Submitter(config["submission"]["port"], sent)
    try:
        await daemon.waitReady()
        started = time.monotonic()
        until = started + CHAOS
        flows = [
            defer.ensureDeferred(appendLoop(chaos["imap"], received, until)),
            defer.ensureDeferred(submitLoop(submitter, sent, until)),
        ]
        faults = await runPlan(plan, started, chaos, daemon, seed)
        await defer.gatherResults(flows, consumeErrors=True)

        def settled() -> bool:
            return set(received.done) <= set(receivedIDs(md)) and set(sent.done) <= set(
                relayedIDs(hop)
            )

        await waitFor(settled, SETTLE, 0.2)
        await sleep(2.0)  # let a duplicate that is on its way arrive
        arrivedIn, arrivedOut = receivedIDs(md), relayedIDs(hop)
        health = await daemon.health()
    finally:
        await daemon.stop()
    await daemon.collectStoredSecrets(list(accounts))

    lostIn, twiceIn = problems(received, arrivedIn)
    lostOut, twiceOut = problems(sent, arrivedOut)
    kinds = ("token-errors", "token-hang", "introspection-errors", "introspection-hang")
    faultText = " ".join(f"{kind}={faults[kind]}" for kind in kinds)
    print(
        f"chaos figures: seed={seed} received={len(received.done)}"
        f" (+{sum(arrivedIn[m] > 0 for m in received.doubt)} of {len(received.doubt)} in doubt)"
        f" sent={len(sent.done)}"
        f" (+{sum(arrivedOut[m] > 0 for m in sent.doubt)} of {len(sent.doubt)} in doubt)"
        f" faults: {faultText} dovecot-restarts={faults['dovecot restarts']}"
        f" kills={faults['kills']} lost={len(lostIn) + len(lostOut)}"
        f" duplicated={len(twiceIn) + len(twiceOut)}"
    )
    log = daemon.log()
    assert faults["kills"] == KILLS and faults["dovecot restarts"] == DOVECOT_RESTARTS
    assert (lostIn, lostOut) == ([], []), (
        f"lost {lostIn[:5]} {lostOut[:5]}; health {health}\n{log[-4000:]}"
    )
    assert (twiceIn, twiceOut) == ([], []), f"duplicated {twiceIn[:5]} {twiceOut[:5]}"
    assert len(received.done) > 100 and len(sent.done) > 100
    assert daemon.leakedSecrets() == []
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:5000]
