"""oauthmail.http.bounded: an answer's header section is bounded, over real loopback HTTP."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.web import resource, server

from oauthmail.http.bounded import (
    MAX_RESPONSE_HEADERS,
    HeaderBoundEndpoint,
    _BoundFactory,
)
from oauthmail.notifications.events import Notice
from oauthmail.notifications.webhook import WebhookNotifier
from oauthmail.sinks.errors import TemporarySinkError
from oauthmail.sinks.webhook import WebhookSink
from oauthmail.tokens.http import AgentTransport, TransportError


class _Endless(protocol.Protocol):
    """A server whose answer is a status line, then header lines without end."""

    def dataReceived(self, data: bytes) -> None:
        if self.transport.producer is None and b"\r\n\r\n" in data:
            self.transport.registerProducer(self, True)
            self.sent = 0
            self.transport.write(b"HTTP/1.1 200 OK\r\n")
            self.resumeProducing()

    def resumeProducing(self) -> None:
        # 1 MiB at most, so that a client without the bound would still end.
        if self.sent < 1024 * 1024:
            self.sent += 8000
            self.transport.write(b"X-Filler: " + b"y" * 7988 + b"\r\n")
            reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.sent = 1 << 40


class _Fine(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        # Just under the bound, over several reads.
        for i in range(7):
            request.setHeader(b"X-Big-%d" % i, b"z" * 8000)
        return b"ok"

    def render_POST(self, request):
        return b"ok"


@pytest.fixture
def endless():
    factory = protocol.Factory.forProtocol(_Endless)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def fine():
    port = reactor.listenTCP(0, server.Site(_Fine()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_endless_headers_end_the_request_with_one_line(endless):
    """Header lines without end: the request fails naming the bound, and the link is cut."""
    transport = AgentTransport(reactor, persistent=False)
    with pytest.raises(TransportError) as info:
        await transport.request("GET", endless + "/token", {}, None)
    assert str(info.value) == (
        "ResponseHeadersTooLargeError: the server sent more than 64 KiB of response headers"
    )


@pytest_twisted.ensureDeferred
async def test_headers_under_the_bound_and_keep_alive_still_work(fine):
    """56 KiB of headers pass; a kept-alive connection counts each answer afresh."""
    transport = AgentTransport(reactor, maxPersistentPerHost=1)
    try:
        for _ in range(3):
            answer = await transport.request("GET", fine + "/", {}, None)
            assert answer.status == 200 and answer.body == b"ok"
            assert len(answer.header("x-big-6")) == 8000
    finally:
        await transport.close()


@pytest_twisted.ensureDeferred
async def test_a_notification_receiver_with_endless_headers_is_given_up(endless):
    """The notifier's agent goes through the same bound, and says so when it gives up."""
    notifier = WebhookNotifier(endless + "/hook", reactor, timeout=600, max_attempts=1)
    try:
        with capturedLogs() as events:
            notifier.notify(Notice("token_refused", "alice", 0.0, "refused"))
            await notifier.whenIdle()
        assert notifier.dropped == 1 and notifier.delivered == 0
        said = " ".join(formatEvent(e) for e in events)
        assert "more than 64 KiB of response headers" in said
    finally:
        await notifier.close()


@pytest_twisted.ensureDeferred
async def test_a_webhook_sink_with_endless_headers_is_a_temporary_failure(endless):
    """The sink's agent too: a temporary failure that names the bound."""
    sink = WebhookSink(endless + "/in", reactor, timeout=600)
    try:
        with pytest.raises(TemporarySinkError, match="more than 64 KiB of response headers"):
            await sink.deliver(b"Subject: x\r\n\r\nhi\r\n", "alice", "INBOX")
    finally:
        await sink.close()


def _wrapped(limit: int = 100) -> tuple[protocol.Protocol, list[bytes], StringTransport]:
    received: list[bytes] = []

    class Inner(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    factory = _BoundFactory(protocol.Factory.forProtocol(Inner), limit)
    wrapper = factory.buildProtocol(None)
    transport = StringTransport()
    wrapper.makeConnection(transport)
    return wrapper, received, transport


@given(
    st.binary(max_size=150).filter(lambda b: b"\n" not in b and b"\r" not in b),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
    st.sampled_from([b"\r\n", b"\n"]),
)
def test_the_bound_does_not_depend_on_how_tcp_cuts_the_stream(filler, cuts, interim, nl):
    """However the answer is split into reads, the same bytes pass or the same cut happens."""
    head = b"HTTP/1.1 100 Continue" + nl + nl if interim else b""
    header = b"HTTP/1.1 200 OK" + nl + b"X: " + filler + nl + nl
    answer = head + header + b"body\n\n" * 30
    ends = len(head) + len(header)
    wrapper, received, transport = _wrapped(limit=100)
    last = 0
    for cut in sorted({c % (len(answer) + 1) for c in cuts}) + [len(answer)]:
        wrapper.dataReceived(answer[last:cut])
        last = cut
    if ends <= 100:
        assert b"".join(received) == answer and not transport.disconnecting
    else:  # cut before the section ends, whatever the reads: nothing after it passes
        assert len(b"".join(received)) < ends and transport.disconnecting


def test_a_new_request_starts_the_count_again():
    """Bytes of a body are never counted; the next request's answer is counted from 0."""
    wrapper, received, transport = _wrapped(limit=100)
    wrapper.requestStarts()
    wrapper.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n" + b"x" * 500)
    # The client writes to the transport itself (no wrapper on the way out), and
    # what it writes is no new request: no count.
    assert wrapper.wrappedProtocol.transport is transport
    assert wrapper.logPrefix() == "Inner"  # Twisted's log lines name the client, not the bound
    wrapper.wrappedProtocol.transport.write(b"more of the same request's body")
    wrapper.dataReceived(b"x" * 300)
    assert not transport.disconnecting
    wrapper.requestStarts()
    wrapper.dataReceived(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 100 + b"\r\n\r\n")
    assert len(b"".join(received)) == 40 + 500 + 300
    assert transport.disconnecting


class _EarlyAnswer(protocol.Protocol):
    """Answers as soon as a request starts, with a body of 200 KB and no blank line."""

    answered = False

    def dataReceived(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            body = b"x" * 200_000
            self.transport.write(
                b"HTTP/1.1 413 Too Large\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            self.transport.write(body)


class _SlowBody:
    """A request body of 1 MB, written 64 KB per reactor turn (so the answer comes first)."""

    length = 1024 * 1024

    def startProducing(self, consumer):
        sent = defer.Deferred()

        def more(left: int) -> None:
            if left <= 0:
                sent.callback(None)
                return
            consumer.write(b"z" * min(left, 65536))
            reactor.callLater(0.001, more, left - 65536)

        more(self.length)
        return sent

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


@pytest_twisted.ensureDeferred
async def test_an_answer_that_comes_while_the_body_is_written_is_read_whole():
    """A server that answers early: its body is not taken for a header section."""
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, readBody

    from oauthmail.http.agent import RoutingEndpointFactory

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(_EarlyAnswer), interface="127.0.0.1")
    routes = RoutingEndpointFactory(reactor, BrowserLikePolicyForHTTPS())
    agent = Agent.usingEndpointFactory(reactor, routes)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/in".encode()
        response = await agent.request(b"POST", url, None, _SlowBody())
        assert response.code == 413
        assert len(await readBody(response)) == 200_000
    finally:
        await port.stopListening()


def test_the_endpoint_hands_back_the_protocol_it_was_asked_for():
    """The HTTP client sees its own protocol, not the wrapper."""
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.testing import MemoryReactor

    memory = MemoryReactor()
    endpoint = HeaderBoundEndpoint(TCP4ClientEndpoint(memory, "127.0.0.1", 1))
    inner = protocol.Protocol()
    d = endpoint.connect(protocol.Factory.forProtocol(lambda: inner))
    factory = memory.tcpClients[0][2]
    factory.buildProtocol(None).makeConnection(StringTransport())
    got = []
    d.addCallback(got.append)
    assert got == [inner]
    assert MAX_RESPONSE_HEADERS == 64 * 1024
