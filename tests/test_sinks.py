"""Tests for the command, webhook and Python sinks, the errors and the factory."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import deferLater
from twisted.web import resource, server
from zope.interface.verify import verifyObject

from oauthmail.config import SinkConfig
from oauthmail.interfaces import ISink
from oauthmail.secret import Secret
from oauthmail.sinks.command import CommandSink, childEnvironment, lastLine
from oauthmail.sinks.errors import (
    PermanentSinkError,
    SinkConfigurationError,
    TemporarySinkError,
    redactURL,
)
from oauthmail.sinks.factory import checkSink, makeSink
from oauthmail.sinks.maildir import MaildirSink
from oauthmail.sinks.python import PythonSink, loadSink
from oauthmail.sinks.webhook import WebhookSink

MESSAGE = b"From: a@example.com\r\nSubject: test\r\n\r\nHello\r\n\x00\xff\r\n"


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# -- errors --------------------------------------------------------------------


def test_redact_url_hides_query_fragment_and_userinfo():
    """redactURL drops the query (marked), the fragment and any user:password."""
    shown = redactURL("https://user:pw@hooks.example.com:8443/in?token=abc123#frag")
    assert shown == "https://hooks.example.com:8443/in?<redacted>"
    assert redactURL(b"http://[::1]/x") == "http://[::1]/x"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1))
def test_redact_url_never_shows_the_query(value):
    """Whatever the query holds, none of it is in the redacted URL."""
    secret = "Q" + value.replace("#", "")
    shown = redactURL("https://example.com/hook?" + secret)
    assert secret not in shown


# -- command sink --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_command_accepts_and_gets_stdin_and_env(tmp_path, reactor):
    """Exit 0 accepts; the command reads the exact message and sees account and folder."""
    out, env = tmp_path / "out", tmp_path / "env"
    argv = python(
        """
        import os, sys
        open(sys.argv[1], "wb").write(sys.stdin.buffer.read())
        open(sys.argv[2], "w").write("|".join([
            os.environ["OAUTHMAIL_ACCOUNT"], os.environ["OAUTHMAIL_FOLDER"],
            str("OAUTHMAIL_KEY" in os.environ)]))
        """
    ) + [str(out), str(env)]
    sink = CommandSink(argv, reactor, 10, environ={**os.environ, "OAUTHMAIL_KEY": "k3y"})
    assert verifyObject(ISink, sink)
    await sink.deliver(MESSAGE, "alice", "INBOX/Sub")
    assert out.read_bytes() == MESSAGE
    assert env.read_text() == "alice|INBOX/Sub|False"


@pytest_twisted.ensureDeferred
async def test_command_tempfail_is_temporary(reactor):
    """Exit 75 (EX_TEMPFAIL) is a temporary failure carrying stderr's last line."""
    argv = python("import sys; sys.stdin.read(); sys.stderr.write('busy now\\n'); sys.exit(75)")
    sink = CommandSink(argv, reactor, 10)
    with pytest.raises(TemporarySinkError, match="exit 75.*busy now"):
        await sink.deliver(MESSAGE, "a", "INBOX")


@pytest_twisted.ensureDeferred
async def test_command_other_exit_is_permanent_with_bounded_stderr(reactor):
    """Exit 1 is permanent; only the (shortened) last line of stderr is shown."""
    argv = python(
        "import sys; sys.stderr.write('x' * 100000 + '\\nfirst\\n' + 'y' * 500 + '\\n\\n');"
        "sys.exit(1)"
    )
    sink = CommandSink(argv, reactor, 10)
    with pytest.raises(PermanentSinkError) as info:
        await sink.deliver(MESSAGE, "a", "INBOX")
    text = str(info.value)
    assert "exit 1" in text and "yyy" in text and "first" not in text
    assert len(text) < 300


@pytest_twisted.ensureDeferred
async def test_command_killed_by_signal_is_permanent(reactor):
    """A command that dies of a signal is a permanent failure naming the signal."""
    argv = python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    sink = CommandSink(argv, reactor, 10)
    with pytest.raises(PermanentSinkError, match="signal 9"):
        await sink.deliver(MESSAGE, "a", "INBOX")


@pytest_twisted.ensureDeferred
async def test_command_timeout_kills_and_is_temporary(reactor):
    """A command that outlives its timeout is killed; the failure is temporary."""
    argv = python("import time; time.sleep(60)")
    sink = CommandSink(argv, reactor, 0.5)
    with pytest.raises(TemporarySinkError, match="killed"):
        await sink.deliver(MESSAGE, "a", "INBOX")


def test_command_missing_executable_fails_at_construction(reactor):
    """A command that is not on PATH is a configuration error, not a failed message."""
    with pytest.raises(SinkConfigurationError, match="not an executable"):
        CommandSink(["/nonexistent/oauthmail-deliver"], reactor)
    with pytest.raises(SinkConfigurationError):
        CommandSink([], reactor)


def test_child_environment_is_an_allow_list():
    """The store key and the variables client secrets come from never reach the command."""
    base = {
        "PATH": "/bin",
        "OAUTHMAIL_KEY": "k",
        "GOOGLE_CLIENT_SECRET": "s3cret",
        "MS_CLIENT_SECRET": "s3cret",
    }
    env = childEnvironment("a", "F", base)
    assert env == {"PATH": "/bin", "OAUTHMAIL_ACCOUNT": "a", "OAUTHMAIL_FOLDER": "F"}


def test_last_line():
    """lastLine picks the last non-blank line and survives bad UTF-8."""
    assert lastLine(b"one\ntwo\n\n  \n") == "two"
    assert lastLine(b"\xff\xfe oops") == "\ufffd\ufffd oops"
    assert lastLine(b"") == ""


# -- webhook sink --------------------------------------------------------------


class Hook(resource.Resource):
    """Answers with the status named by the last path segment; records requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, dict[bytes, bytes]]] = []
        self.hanging: list = []
        self.streams: list = []

    def render_POST(self, request):
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((request.content.read(), headers))
        last = request.path.rsplit(b"/", 1)[-1]
        if last == b"hang":
            self.hanging.append(request)
            return server.NOT_DONE_YET
        if last in (b"stream", b"trickle"):
            # A status, then a body that never ends: fast (stream) or slow (trickle).
            from twisted.internet import reactor, task

            request.setResponseCode(500 if last == b"stream" else 200)
            self.hanging.append(request)
            chunk = b"x" * (16384 if last == b"stream" else 1)
            writer = task.LoopingCall(request.write, chunk)
            writer.clock = reactor
            writer.start(0.001 if last == b"stream" else 0.05)
            self.streams.append(writer)
            request.notifyFinish().addBoth(lambda _: (writer.running and writer.stop(), None))
            return server.NOT_DONE_YET
        request.setResponseCode(int(last))
        return b"answer for " + last


@pytest.fixture
def hook(reactor):
    hookResource = Hook()
    port = reactor.listenTCP(0, server.Site(hookResource), interface="127.0.0.1")
    sinks: list[WebhookSink] = []

    def url(path: str) -> str:
        return f"http://127.0.0.1:{port.getHost().port}{path}"

    def make(path: str, **kwargs) -> WebhookSink:
        sink = WebhookSink(url(path), reactor, **kwargs)
        sinks.append(sink)
        return sink

    yield hookResource, make, url
    for sink in sinks:
        pytest_twisted.blockon(sink.close())
    for request in hookResource.hanging:
        if not request.finished and not request._disconnected:
            request.finish()
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_webhook_accepts_2xx_with_body_and_headers(hook):
    """A 2xx accepts; the body is the exact message with our headers and type."""
    site, make, _ = hook
    sink = make("/in/200", headers={"Authorization": Secret("Bearer t0k")})
    assert verifyObject(ISink, sink)
    assert await sink.deliver(MESSAGE, "alice", "Lists/Twisted") == 200
    body, headers = site.received[0]
    assert body == MESSAGE
    assert headers[b"content-type"] == b"message/rfc822"
    assert headers[b"x-oauthmail-account"] == b"alice"
    assert headers[b"x-oauthmail-folder"] == b"Lists/Twisted"
    assert headers[b"authorization"] == b"Bearer t0k"
    assert "t0k" not in sink.name


@pytest_twisted.ensureDeferred
async def test_webhook_5xx_and_429_are_temporary(hook):
    """503 and 429 are temporary failures naming the status."""
    _, make, _ = hook
    for status in ("503", "429"):
        with pytest.raises(TemporarySinkError, match=f"HTTP {status}"):
            await make(f"/{status}").deliver(MESSAGE, "a", "INBOX")


@pytest_twisted.ensureDeferred
async def test_webhook_4xx_is_permanent_and_redacted(hook):
    """A 400 is permanent and the message shows the URL without its token."""
    _, make, _ = hook
    sink = make("/400?token=s3cr3t")
    with pytest.raises(PermanentSinkError) as info:
        await sink.deliver(MESSAGE, "a", "INBOX")
    assert "HTTP 400" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert "?<redacted>" in str(info.value)


@pytest_twisted.ensureDeferred
async def test_webhook_connection_refused_is_temporary(reactor):
    """Nobody listening is a temporary failure."""
    probe = reactor.listenTCP(0, server.Site(Hook()), interface="127.0.0.1")
    dead = probe.getHost().port
    await probe.stopListening()
    sink = WebhookSink(f"http://127.0.0.1:{dead}/200?k=v", reactor, 5)
    try:
        with pytest.raises(TemporarySinkError, match="ConnectionRefused") as info:
            await sink.deliver(MESSAGE, "a", "INBOX")
        assert "k=v" not in str(info.value)
    finally:
        await sink.close()


@pytest_twisted.ensureDeferred
async def test_webhook_timeout_is_temporary(hook):
    """An endpoint that never answers hits the timeout: temporary."""
    _, make, _ = hook
    with pytest.raises(TemporarySinkError, match="no answer"):
        await make("/hang", timeout=0.3).deliver(MESSAGE, "a", "INBOX")


@pytest_twisted.ensureDeferred
async def test_webhook_answer_without_end_is_cut_off(hook, reactor):
    """A body that never ends is read to 64 KiB, then the connection is closed.

    The sink read every answer to its end, keeping 512 bytes: a receiver that
    streamed without end kept each delivery reading for ever, and the
    timeout only gave up waiting, leaving the connection open.
    """
    site, make, _ = hook
    with pytest.raises(TemporarySinkError, match="HTTP 500$"):
        await make("/stream", timeout=10).deliver(MESSAGE, "a", "INBOX")
    await deferLater(reactor, 0.2, lambda: None)  # the close reaches the server
    assert site.streams and all(not writer.running for writer in site.streams)


@pytest_twisted.ensureDeferred
async def test_webhook_timeout_closes_a_trickling_answer(hook, reactor):
    """A slow endless body hits the delivery's timeout, which now closes the connection."""
    site, make, _ = hook
    with pytest.raises(TemporarySinkError, match="no answer after 0.5s"):
        await make("/trickle", timeout=0.5).deliver(MESSAGE, "a", "INBOX")
    await deferLater(reactor, 0.2, lambda: None)
    assert site.streams and all(not writer.running for writer in site.streams)


def test_webhook_rejects_other_schemes(reactor):
    """Only http and https URLs make a webhook sink."""
    with pytest.raises(SinkConfigurationError, match="not an http"):
        WebhookSink("ftp://example.com/x?token=zz", reactor)
    with pytest.raises(SinkConfigurationError) as info:
        WebhookSink("mailto:x@example.com?token=zz", reactor)
    assert "zz" not in str(info.value)


# -- python sink ---------------------------------------------------------------

USER_MODULE = """
from twisted.internet import defer
from zope.interface import implementer
from oauthmail.interfaces import ISink
from oauthmail.sinks.errors import PermanentSinkError

received = []

@implementer(ISink)
class Recorder:
    name = "recorder"
    def __init__(self, config=None):
        self.config = config
    def deliver(self, message, account, folder):
        if message == b"boom":
            raise ValueError("user code broke")
        if message == b"never":
            return defer.fail(PermanentSinkError("not for me"))
        received.append((message, account, folder))
        return defer.succeed("kept")

instance = Recorder()

class Plain:
    pass

def notASink(config):
    return Plain()

number = 42
"""


@pytest.fixture
def usermodule(tmp_path, monkeypatch):
    (tmp_path / "oauthmail_user_sinks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "oauthmail_user_sinks"
    sys.modules.pop("oauthmail_user_sinks", None)


@pytest_twisted.ensureDeferred
async def test_python_sink_instance(usermodule):
    """A module:attribute naming an ISink provider delivers to it."""
    sink = PythonSink.fromConfig(SinkConfig(kind="python", object=f"{usermodule}:instance"))
    assert verifyObject(ISink, sink)
    assert sink.name == "python:recorder"
    assert await sink.deliver(MESSAGE, "a", "INBOX") == "kept"
    assert sys.modules[usermodule].received == [(MESSAGE, "a", "INBOX")]


def test_python_sink_factory_gets_config(usermodule):
    """A callable (here a class, dotted form) is called with the SinkConfig."""
    config = SinkConfig(kind="python", object=f"{usermodule}.Recorder")
    inner = loadSink(config)
    assert inner.config is config


@pytest_twisted.ensureDeferred
async def test_python_sink_failures_keep_the_contract(usermodule):
    """A stray exception becomes temporary; a sink error passes through unchanged."""
    sink = PythonSink.fromConfig(SinkConfig(kind="python", object=f"{usermodule}:instance"))
    with pytest.raises(TemporarySinkError, match="ValueError: user code broke"):
        await sink.deliver(b"boom", "a", "INBOX")
    with pytest.raises(PermanentSinkError, match="not for me"):
        await sink.deliver(b"never", "a", "INBOX")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("oauthmail_user_sinks:notASink", "does not provide ISink"),
        ("oauthmail_user_sinks:number", "neither an ISink provider nor callable"),
        ("oauthmail_user_sinks:missing", "cannot load"),
        ("no_such_module_for_oauthmail:x", "cannot load"),
        ("", "empty"),
    ],
)
def test_python_sink_clear_errors(usermodule, spec, words):
    """Objects that are not sinks fail at start-up with a readable reason."""
    with pytest.raises(SinkConfigurationError, match=words):
        loadSink(SinkConfig(kind="python", object=spec))


def test_a_sink_module_that_fails_as_it_is_imported_is_one_clear_error(tmp_path, monkeypatch):
    """The daemon (makeSink) and check-config (checkSink) say the same line, no traceback."""
    (tmp_path / "oauthmail_half_written.py").write_text("raise RuntimeError('half-written')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = SinkConfig(kind="python", object="oauthmail_half_written:Sink")
    said = []
    try:
        for check in (lambda: makeSink(config, None), lambda: checkSink(config)):
            with pytest.raises(SinkConfigurationError) as refused:
                check()
            said.append(str(refused.value))
    finally:
        sys.modules.pop("oauthmail_half_written", None)
    line = "python sink: importing 'oauthmail_half_written:Sink' failed: RuntimeError: "
    assert said == [line + "half-written"] * 2


# -- factory -------------------------------------------------------------------


def test_factory_builds_each_kind(tmp_path, reactor, usermodule):
    """makeSink returns the right ISink for every kind."""
    maildir = makeSink(SinkConfig(kind="maildir", path=str(tmp_path / "M")), reactor)
    assert isinstance(maildir, MaildirSink)
    command = makeSink(SinkConfig(kind="command", command=(sys.executable, "-V")), reactor)
    assert isinstance(command, CommandSink)
    webhook = makeSink(SinkConfig(kind="webhook", url="https://example.com/h"), reactor)
    assert isinstance(webhook, WebhookSink)
    pythonSink = makeSink(SinkConfig(kind="python", object=f"{usermodule}:instance"), reactor)
    assert isinstance(pythonSink, PythonSink)
    for sink in (maildir, command, webhook, pythonSink):
        assert verifyObject(ISink, sink)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (SinkConfig(kind="maildir"), "'path' is required"),
        (SinkConfig(kind="command"), "'command' is required"),
        (SinkConfig(kind="webhook"), "'url' is required"),
        (SinkConfig(kind="python"), "'object' is required"),
        (SinkConfig(kind="mbox"), "unknown sink kind 'mbox'"),
    ],
)
def test_factory_errors(reactor, config, words):
    """Incomplete or unknown sink configurations fail with one readable line."""
    with pytest.raises(SinkConfigurationError, match=words):
        makeSink(config, reactor)
