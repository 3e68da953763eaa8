"""``python -m oauthmail.testing.demo``: oauthmail's main job, self-contained, on one machine.

What ``scripts/run`` starts when given no configuration. It brings up, on free
loopback ports:

1. the project's test OAuth 2.0 provider (PKCE, rotating refresh tokens,
   device flow, RFC 7662 introspection);
2. a private Dovecot that validates every XOAUTH2 login against that provider
   and relays submitted mail to a final hop, which files a copy in the
   sender's Sent folder and delivers it into the recipient's INBOX;
3. the oauthmail daemon itself (``twistd oauthmail --config conf/demo.yaml``,
   a separate process, SQLite store under ``var/demo/``).

Then it does what a new user would: authorises ``alice`` through the console's
Authorise button (authorization code with PKCE, consenting on the provider's
page) and ``bob`` with the device flow (entering the code at the provider),
waits for ``/health`` to say every account is ok, drops a welcome message in
alice's mailbox and sends one from alice to bob through the local submission
server, and waits until both sit in ``var/demo/mail/*/new/``. It prints where
to look and keeps everything running until Ctrl-C or SIGTERM, when it stops
everything it started.

The browser's part is played by plain HTTP requests, so the demo runs
headless; open the printed console URL to watch it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import signal
import smtplib
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html import unescape
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode, urljoin

from twisted.internet import defer, protocol, threads
from twisted.internet.error import ConnectError, ProcessDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, ResponseNeverReceived, readBody
from twisted.web.http_headers import Headers

from oauthmail.testing.certs import generateTestCertificates
from oauthmail.testing.dovecot import PACKAGED_TEMPLATES, DovecotServer
from oauthmail.testing.finalhop import FinalHop, InboxDeliverer, SentFiler, fileWith
from oauthmail.testing.provider import TestOAuthProvider

T = TypeVar("T")

CLIENT_ID = "oauthmail-demo"
CLIENT_SECRET = "demo-client-secret"  # noqa: S105 - a demo provider's made-up client secret
DOMAIN = "demo.test"
ACCOUNTS = {"alice": f"alice@{DOMAIN}", "bob": f"bob@{DOMAIN}"}

#: How long each step may take before the demo gives up and says which one failed.
STEP_TIMEOUT = 90.0
#: After Ctrl-C, how long the daemon (signalled by the terminal too) may take to end by itself.
INTERRUPT_GRACE = 5.0


class DemoFailed(Exception):  # noqa: N818 - reads as what happened
    """A step of the demo did not happen in time; the message says which and where to look."""


def _say(started: float, text: str) -> None:
    print(f"[demo {time.monotonic() - started:5.1f}s] {text}", flush=True)


class Browser:
    """Just enough of a browser for the demo: GET, POST a form, read a redirect.

    No cookies, no scripts, never follows a redirect by itself: the demo reads
    each ``Location`` and decides, as the steps of a consent flow need.
    """

    def __init__(self, reactor: Any) -> None:
        self._agent = Agent(reactor)

    async def request(
        self, method: bytes, url: str, form: dict[str, str] | None = None
    ) -> tuple[int, str | None, str]:
        headers = Headers({b"user-agent": [b"oauthmail-demo"]})
        body = None
        if form is not None:
            headers.addRawHeader(b"content-type", b"application/x-www-form-urlencoded")
            body = FileBodyProducer(io.BytesIO(urlencode(form).encode("ascii")))
        response = await self._agent.request(method, url.encode("ascii"), headers, body)
        data = await readBody(response)
        location = response.headers.getRawHeaders(b"location", [None])[0]
        where = urljoin(url, location.decode("ascii")) if location else None
        return response.code, where, data.decode("utf-8", "replace")

    def get(self, url: str) -> Awaitable[tuple[int, str | None, str]]:
        return self.request(b"GET", url)

    def post(self, url: str, form: dict[str, str]) -> Awaitable[tuple[int, str | None, str]]:
        return self.request(b"POST", url, form)


def _field(html: str, name: str) -> str:
    """The value of the form field ``name`` on a page (the demo's pages are simple)."""
    m = re.search(r"name=['\"]" + re.escape(name) + r"['\"][^>]*value=['\"]([^'\"]*)", html)
    if m is None:
        raise DemoFailed(f"the page has no form field {name!r}")
    return unescape(m.group(1))


class _Daemon(protocol.ProcessProtocol):
    """The daemon's process: output into a log file, a Deferred for its end."""

    def __init__(self, log: Path) -> None:
        self._log = log.open("ab")
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)
        self._log.flush()

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        self._log.close()
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", 1)
        self.ended.callback(code if code is not None else 1)


class Demo:
    """Everything the demo starts, in the order it starts it; :meth:`stop` undoes it."""

    def __init__(
        self,
        reactor: Any,
        root: Path,
        var: Path,
        config: Path,
        webPort: int,
        submissionPort: int,
    ) -> None:
        self.reactor = reactor
        self.root = root
        self.var = var
        self.config = config
        self.webPort = webPort
        self.submissionPort = submissionPort
        self.started = time.monotonic()
        self.provider: TestOAuthProvider | None = None
        self.hop: FinalHop | None = None
        self.dovecot: DovecotServer | None = None
        self.daemon: _Daemon | None = None
        self._daemonTransport: Any = None
        self._filers: list[Any] = []
        self.browser = Browser(reactor)

    @property
    def console(self) -> str:
        return f"http://127.0.0.1:{self.webPort}"

    def say(self, text: str) -> None:
        _say(self.started, text)

    async def run(self) -> None:
        """Start everything, authorise both accounts, let mail flow both ways."""
        self._freshVar()
        await self._startPeers()
        self._startDaemon()
        await self._within("the console to answer", self._consoleUp)
        await self._authoriseAlice()
        await self._authoriseBob()
        await self._within("/health to say every account is ok", self._healthy)
        self.say("both accounts are authorised; /health says ok")
        await self._welcomeAlice()
        await self._aliceWritesToBob()
        self.say(
            f"all done. Console: {self.console}/  Health: {self.console}/health\n"
            f"  received mail: {self.var / 'mail'}/{{alice,bob}}/new/\n"
            f"  daemon log:    {self.var / 'daemon.log'}\n"
            f"  send more:     any SMTP client to 127.0.0.1:{self.submissionPort}"
            " (no login needed from this machine), From alice@demo.test or bob@demo.test\n"
            "  Ctrl-C stops the daemon, Dovecot and the provider."
        )
        print("demo ready", flush=True)

    # -- starting -------------------------------------------------------------------

    def _freshVar(self) -> None:
        # The demo's state is throw-away: every run starts from nothing.
        if self.var.exists():
            shutil.rmtree(self.var)
        self.var.mkdir(parents=True)
        self.var.chmod(0o700)

    async def _startPeers(self) -> None:
        provider = self.provider = TestOAuthProvider(auto_approve=False)  # a real consent page
        provider.registerClient(CLIENT_ID, CLIENT_SECRET)
        provider.listen(self.reactor)
        self.say(f"test OAuth provider at {provider.base_url}")
        hop = self.hop = FinalHop()
        hop.listen(self.reactor)
        certificates = generateTestCertificates(self.var / "certs")
        dovecot = self.dovecot = DovecotServer(
            PACKAGED_TEMPLATES,
            provider.introspection_endpoint,
            certificates,
            relayHost=hop.host,
            relayPort=hop.port,
        )
        await threads.deferToThread(dovecot.start)
        ports = dovecot.ports
        assert ports is not None
        sent, inbox = SentFiler(dovecot), InboxDeliverer(dovecot, [DOMAIN])
        self._filers = [sent, inbox]
        hop.fileSent = fileWith(sent, inbox)
        self.say(
            f"private Dovecot: IMAPS 127.0.0.1:{ports.imaps}, submissions {ports.submissions}"
            f" (pid {dovecot.masterPID})"
        )

    def _environment(self) -> dict[str, str]:
        provider, dovecot = self.provider, self.dovecot
        assert provider is not None and dovecot is not None and dovecot.ports is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("OAUTHMAIL_DEMO_")}
        env.update(
            OAUTHMAIL_DEMO_VAR=str(self.var),
            OAUTHMAIL_DEMO_AUTHORIZE=provider.authorization_endpoint,
            OAUTHMAIL_DEMO_TOKEN=provider.token_endpoint,
            OAUTHMAIL_DEMO_DEVICE=provider.device_endpoint,
            OAUTHMAIL_DEMO_REVOKE=provider.revocation_endpoint,
            OAUTHMAIL_DEMO_CLIENT_SECRET=CLIENT_SECRET,
            OAUTHMAIL_DEMO_IMAPS_PORT=str(dovecot.ports.imaps),
            OAUTHMAIL_DEMO_SUBMISSIONS_PORT=str(dovecot.ports.submissions),
            OAUTHMAIL_DEMO_WEB_PORT=str(self.webPort),
            OAUTHMAIL_DEMO_SUBMISSION_PORT=str(self.submissionPort),
        )
        return env

    def _startDaemon(self) -> None:
        argv = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "oauthmail.logs.textLogger",  # as scripts/run starts it
            "oauthmail",
            "--config",
            str(self.config),
        ]
        self.daemon = _Daemon(self.var / "daemon.log")
        self._daemonTransport = self.reactor.spawnProcess(
            self.daemon, sys.executable, argv, env=self._environment(), path=str(self.root)
        )
        self.say(
            f"daemon started: twistd oauthmail --config {self.config}"
            f" (pid {self._daemonTransport.pid}, log: daemon.log)"
        )

    # -- waiting ---------------------------------------------------------------------

    async def _within(
        self, what: str, check: Callable[[], Awaitable[bool]], interval: float = 0.5
    ) -> None:
        """Poll ``check`` until it is true; fail naming ``what`` after :data:`STEP_TIMEOUT`."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while True:
            if self.daemon is not None and self.daemon.ended.called:
                raise DemoFailed(f"the daemon exited while waiting for {what}: {self._logTail()}")
            try:
                if await check():
                    return
            except (ConnectionError, OSError, ConnectError, ResponseNeverReceived):
                pass  # not listening yet, or listening but not serving yet
            if time.monotonic() > deadline:
                raise DemoFailed(f"no {what} after {STEP_TIMEOUT:.0f}s: {self._logTail()}")
            await _sleep(self.reactor, interval)

    def _logTail(self) -> str:
        try:
            lines = (self.var / "daemon.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no daemon log"
        return "last daemon log lines:\n  " + "\n  ".join(lines[-8:])

    async def _consoleUp(self) -> bool:
        status, _, _ = await self.browser.get(self.console + "/health")
        return status in (200, 503)

    async def _healthy(self) -> bool:
        status, _, body = await self.browser.get(self.console + "/health")
        if status != 200:
            return False
        accounts = json.loads(body).get("accounts", [])
        return bool(accounts) and all(a.get("state") == "ok" for a in accounts)

    # -- authorising, as a person at a browser would -----------------------------------

    async def _csrf(self) -> str:
        _, _, page = await self.browser.get(self.console + "/")
        return _field(page, "csrf")

    async def _authoriseAlice(self) -> None:
        csrf = await self._csrf()
        status, to_provider, _ = await self.browser.post(
            self.console + "/authorize/alice", {"csrf": csrf}
        )
        if status != 303 or to_provider is None:
            raise DemoFailed(f"the Authorise button of alice answered {status}")
        status, _, consent = await self.browser.get(to_provider)
        if status != 200:
            raise DemoFailed(f"the provider's consent page answered {status}")
        decision = urljoin(to_provider, "/authorize/decision")
        form = {"consent": _field(consent, "consent"), "user": ACCOUNTS["alice"]}
        status, back, _ = await self.browser.post(decision, {**form, "decision": "approve"})
        if back is None or not back.startswith(self.console + "/callback"):
            raise DemoFailed(
                f"the provider did not send the browser back to the console ({status})"
            )
        status, _, page = await self.browser.get(back)
        if status != 200:
            raise DemoFailed(f"the console's callback answered {status}: {_text(page)}")
        self.say("alice authorised: authorization code with PKCE, consent given as alice@demo.test")

    async def _authoriseBob(self) -> None:
        csrf = await self._csrf()
        status, device_page, _ = await self.browser.post(
            self.console + "/authorize/bob", {"csrf": csrf}
        )
        if status != 303 or device_page is None:
            raise DemoFailed(f"the Authorise button of bob answered {status}")
        _, _, page = await self.browser.get(device_page)
        m = re.search(r"href='([^']+)'.*?<code>([^<]+)</code>", page, re.S)
        if m is None:
            raise DemoFailed(f"the device page shows no code: {_text(page)}")
        verification, code = unescape(m.group(1)), unescape(m.group(2))
        self.say(f"bob: the console shows code {code}; entering it at {verification}")
        query = urlencode({"user_code": code, "user": ACCOUNTS["bob"]})
        status, _, _ = await self.browser.get(f"{verification}?{query}")
        if status != 200:
            raise DemoFailed(f"the provider refused the device code ({status})")

        async def authorised() -> bool:
            _, _, page = await self.browser.get(device_page)
            if "Authorisation of bob failed" in page:
                raise DemoFailed(f"device authorisation failed: {_text(page)}")
            return "<h1 class='ok'>Authorised" in page

        await self._within("device authorisation of bob", authorised, interval=1.0)
        self.say("bob authorised: device code, approved as bob@demo.test")

    # -- mail both ways ----------------------------------------------------------------

    async def _waitForMail(self, account: str, what: str) -> Path:
        new = self.var / "mail" / account / "new"
        found: list[Path] = []

        async def arrived() -> bool:
            found[:] = sorted(new.glob("*")) if new.is_dir() else []
            return bool(found)

        await self._within(what, arrived)
        return found[0]

    async def _welcomeAlice(self) -> None:
        dovecot = self.dovecot
        assert dovecot is not None
        welcome = _message(
            "oauthmail demo <demo@demo.test>",
            ACCOUNTS["alice"],
            "Welcome to oauthmail",
            "This message was put in alice's INBOX on the demo Dovecot. oauthmail logged in\n"
            "with an OAuth 2.0 token (XOAUTH2), fetched it, wrote it to this Maildir, and\n"
            "only then marked it seen on the server.\n",
        )
        await threads.deferToThread(dovecot.appendMessage, ACCOUNTS["alice"], welcome)
        path = await self._waitForMail("alice", "the welcome message in alice's Maildir")
        self.say(f"received: {path}")

    async def _aliceWritesToBob(self) -> None:
        message = _message(
            ACCOUNTS["alice"],
            ACCOUNTS["bob"],
            "Hello from alice",
            "Sent through oauthmail's local submission server, queued durably, relayed to\n"
            "the provider's submission server with alice's OAuth token, and received again\n"
            "by bob's watcher.\n",
        )

        def submit() -> None:
            with smtplib.SMTP("127.0.0.1", self.submissionPort, timeout=30) as smtp:
                smtp.sendmail(ACCOUNTS["alice"], [ACCOUNTS["bob"]], message)

        await threads.deferToThread(submit)
        self.say("alice -> bob handed to the submission server (250: it is on disk)")
        path = await self._waitForMail("bob", "alice's message in bob's Maildir")
        self.say(f"received: {path}")

    # -- stopping ------------------------------------------------------------------------

    async def stop(self, grace: float = 0.0) -> None:
        """Stop whatever was started, newest first; safe to call at any point.

        ``grace``: seconds the daemon gets to end by itself first. Ctrl-C in a
        terminal signals the whole process group, so the daemon is already
        stopping; a ``TERM`` on top would only add a line ("SIGTERM again")
        to daemon.log.
        """
        deadline = self.reactor.seconds() + grace
        while (
            self.daemon is not None
            and not self.daemon.ended.called
            and self.reactor.seconds() < deadline
        ):
            await _sleep(self.reactor, 0.1)
        if self.daemon is not None and not self.daemon.ended.called:
            try:
                self._daemonTransport.signalProcess("TERM")
            except Exception:  # noqa: S110 - already gone
                pass
            timer = self.reactor.callLater(15, self._killDaemon)
            await self.daemon.ended
            if timer.active():
                timer.cancel()
        for filer in self._filers:
            await threads.deferToThread(filer.close)
        if self.dovecot is not None:
            await threads.deferToThread(self.dovecot.stop)
        if self.hop is not None:
            await self.hop.stop()
        if self.provider is not None:
            await self.provider.stop()
        self.say("stopped: daemon, Dovecot, provider")

    def _killDaemon(self) -> None:
        try:
            self._daemonTransport.signalProcess("KILL")
        except Exception:  # noqa: S110 - already gone
            pass


def _message(sender: str, recipient: str, subject: str, text: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=DOMAIN)
    message.set_content(text)
    return message.as_bytes().replace(b"\n", b"\r\n")


def _text(page: str) -> str:
    """A page's words, for an error line."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", page)).split())[:200]


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _parseArgs(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oauthmail.testing.demo",
        description="oauthmail end to end on this machine: test provider, private Dovecot,"
        " the daemon, two accounts authorised, mail both ways. Ctrl-C stops it all.",
    )
    parser.add_argument("--var", type=Path, default=Path("var/demo"), help="state (wiped first)")
    parser.add_argument("--config", type=Path, default=Path("conf/demo.yaml"))
    parser.add_argument("--web-port", type=int, default=8025, help="the console's port")
    parser.add_argument("--submission-port", type=int, default=1587)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the demo on the global reactor until Ctrl-C or SIGTERM; 1 if a step failed."""
    from twisted.internet import reactor  # only this command-line entry owns a reactor

    options = _parseArgs(argv)
    # Twisted's readBody warns about its own HTTP client's transport; nothing to act on here.
    warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)
    root = Path.cwd()
    demo = Demo(
        reactor,
        root,
        (root / options.var).resolve(),
        options.config,
        options.web_port,
        options.submission_port,
    )
    outcome = {"code": 0, "stopping": 0, "signal": 0}

    def failed(failure: Failure) -> None:
        outcome["code"] = 1
        reason = failure.value if isinstance(failure.value, DemoFailed) else failure.getTraceback()
        print(f"demo failed: {reason}", file=sys.stderr, flush=True)
        stopOnce()

    def stopOnce() -> None:
        # A second Ctrl-C (or Ctrl-C followed by SIGTERM) must not make Twisted
        # complain that the reactor is already stopping.
        if not outcome.get("stopping"):
            outcome["stopping"] = 1
            reactor.stop()

    def started() -> None:
        def stopping(signum: int, frame: object) -> None:
            outcome["signal"] = outcome["signal"] or signum
            reactor.callFromThread(stopOnce)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stopping)
        defer.ensureDeferred(demo.run()).addErrback(failed)

    def stopDemo() -> defer.Deferred[None]:
        # After Ctrl-C the daemon got SIGINT too: let it end by itself first.
        grace = INTERRUPT_GRACE if outcome["signal"] == signal.SIGINT else 0.0
        return defer.ensureDeferred(demo.stop(grace))

    reactor.addSystemEventTrigger("before", "shutdown", stopDemo)
    reactor.callWhenRunning(started)
    reactor.run()
    return outcome["code"]


if __name__ == "__main__":
    sys.exit(main())
