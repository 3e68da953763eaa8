"""``AuthorizedAgent``: the account's token on every request, one refresh on a refused
token, never a token to another origin, never a token in the log.

Real HTTP over loopback: two small ``twisted.web`` servers (two origins) and
the real ``Agent`` from :class:`oauthmail.http.agent.AgentFactory`.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.web import resource, server
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface.verify import verifyObject

from oauthmail import AuthorizedAgent
from oauthmail.http.agent import AgentFactory
from oauthmail.http.authorized import InsecureURLError, bearerError, checkURL
from oauthmail.http.body import BytesBody, IReplayableBody, readBounded
from oauthmail.secret import Secret

FIRST = "first-token-abcdefghijklmnop"
SECOND = "second-token-qrstuvwxyz0123"


class Tokens:
    """An ITokenSource whose forced refresh hands out the second token."""

    def __init__(self) -> None:
        self.current = FIRST
        self.refreshes = 0

    def accessToken(self, account):
        return defer.succeed(Secret(self.current))

    def forceRefresh(self, account):
        self.refreshes += 1
        self.current = SECOND
        return defer.succeed(Secret(self.current))


class API(resource.Resource):
    """Answers by path; remembers the Authorization header and body of every request."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None, bytes]] = []
        self.other = ""

    def render(self, request):
        auth = request.getHeader(b"authorization")
        self.seen.append((request.path, auth, request.content.read()))
        path = request.path
        if path == b"/me":
            return b'{"mail": "alice@example.com"}'
        if path == b"/expiring":
            if auth == f"Bearer {SECOND}".encode():
                return b"fresh"
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="x", error="invalid_token"')
            return b"expired"
        if path == b"/graph401":  # Graph's challenge names no error
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate", b'Bearer realm="", authorization_uri="https://login"'
            )
            return b"no"
        if path == b"/badrequest":
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer error="invalid_request"')
            return b"no"
        if path in (b"/elsewhere", b"/elsewhere307"):
            request.setResponseCode(302 if path == b"/elsewhere" else 307)
            request.setHeader(b"location", self.other.encode() + b"/landing")
            return b""
        if path == b"/here":
            request.setResponseCode(301)
            request.setHeader(b"location", b"/me")
            return b""
        if path == b"/landing":
            return b"landed"
        request.setResponseCode(404)
        return b""


@pytest.fixture
def apis():
    """Two servers on two origins; stopped after the test."""
    first, second = API(), API()
    ports = [
        reactor.listenTCP(0, server.Site(first), interface="127.0.0.1"),
        reactor.listenTCP(0, server.Site(second), interface="127.0.0.1"),
    ]
    first.base = f"http://127.0.0.1:{ports[0].getHost().port}"
    second.base = f"http://127.0.0.1:{ports[1].getHost().port}"
    first.other, second.other = second.base, first.base
    factory = AgentFactory(reactor)
    yield first, second, factory
    pytest_twisted.blockon(factory.close())
    for port in ports:
        pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


async def get(agent, url, method=b"GET", body=None, headers=None):
    response = await agent.request(method, url.encode(), headers, body)
    return response.code, await readBounded(response, 1 << 20)


def test_agent_provides_iagent():
    """AuthorizedAgent is an IAgent; BytesBody is a replayable body."""
    agent = AuthorizedAgent(AgentFactory(reactor).agent(), Tokens(), "alice")
    verifyObject(IAgent, agent)
    verifyObject(IReplayableBody, BytesBody(b"x"))


@pytest_twisted.ensureDeferred
async def test_token_is_added(apis):
    """The request carries Authorization: Bearer with the account's token."""
    first, _, factory = apis
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice")
    assert await get(agent, first.base + "/me") == (200, b'{"mail": "alice@example.com"}')
    assert first.seen == [(b"/me", f"Bearer {FIRST}".encode(), b"")]


@pytest_twisted.ensureDeferred
async def test_callers_headers_are_kept_and_not_changed(apis):
    """The caller's headers go along; their object never receives the token."""
    first, _, factory = apis
    headers = Headers({b"accept": [b"application/json"], b"authorization": [b"Basic x"]})
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice")
    await get(agent, first.base + "/me", headers=headers)
    assert headers.getRawHeaders(b"authorization") == [b"Basic x"]
    assert first.seen[0][1] == f"Bearer {FIRST}".encode()


@pytest_twisted.ensureDeferred
async def test_refused_token_is_refreshed_once_and_the_request_retried(apis):
    """401 invalid_token: one forced refresh, the same request again with the new token."""
    first, _, factory = apis
    tokens = Tokens()
    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    assert await get(agent, first.base + "/expiring") == (200, b"fresh")
    assert tokens.refreshes == 1
    assert [auth for _, auth, _ in first.seen] == [
        f"Bearer {FIRST}".encode(),
        f"Bearer {SECOND}".encode(),
    ]


@pytest_twisted.ensureDeferred
async def test_a_post_body_is_sent_again_after_the_refresh(apis):
    """A BytesBody goes out again, whole, with the refreshed token."""
    first, _, factory = apis
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice")
    code, _ = await get(agent, first.base + "/expiring", b"POST", BytesBody(b'{"a": 1}'))
    assert code == 200
    assert [body for _, _, body in first.seen] == [b'{"a": 1}', b'{"a": 1}']


@pytest_twisted.ensureDeferred
async def test_a_body_that_cannot_be_replayed_gets_the_401(apis):
    """A producer that cannot be made again: no refresh, the 401 comes back to the caller."""
    import io

    first, _, factory = apis
    tokens = Tokens()
    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    body = FileBodyProducer(io.BytesIO(b"once"), cooperator=_Immediate())
    code, _ = await get(agent, first.base + "/expiring", b"POST", body)
    assert code == 401
    assert tokens.refreshes == 0


@pytest_twisted.ensureDeferred
async def test_second_refusal_is_returned_not_retried_again(apis):
    """Refreshed once and refused again: the 401 is the answer, no second refresh."""
    first, _, factory = apis
    tokens = Tokens()
    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    code, _ = await get(agent, first.base + "/graph401")
    assert code == 401
    assert tokens.refreshes == 1
    assert len(first.seen) == 2


@pytest_twisted.ensureDeferred
async def test_a_refused_refreshed_token_is_not_refreshed_with_every_request(apis):
    """An API that refuses fresh tokens costs the provider one refresh, not one per request.

    Once a new token comes from elsewhere (the refresher), its refusal earns one more.
    """
    first, _, factory = apis
    tokens = Tokens()
    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    for _ in range(3):
        assert (await get(agent, first.base + "/graph401"))[0] == 401
    assert tokens.refreshes == 1
    assert [auth for _, auth, _ in first.seen] == [
        f"Bearer {FIRST}".encode(),
        f"Bearer {SECOND}".encode(),
        f"Bearer {SECOND}".encode(),
        f"Bearer {SECOND}".encode(),
    ]
    tokens.current = FIRST  # rotated meanwhile, as the refresher would
    assert (await get(agent, first.base + "/graph401"))[0] == 401
    assert tokens.refreshes == 2


@pytest_twisted.ensureDeferred
async def test_other_bearer_errors_do_not_refresh(apis):
    """401 with error="invalid_request" is not about the token: no refresh."""
    first, _, factory = apis
    tokens = Tokens()
    agent = AuthorizedAgent(factory.agent(), tokens, "alice")
    assert (await get(agent, first.base + "/badrequest"))[0] == 401
    assert tokens.refreshes == 0


@pytest_twisted.ensureDeferred
async def test_redirects_are_not_followed_by_default(apis):
    """Without followRedirects the 302 itself is the answer; nothing reaches the other host."""
    first, second, factory = apis
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice")
    assert (await get(agent, first.base + "/elsewhere"))[0] == 302
    assert second.seen == []


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("path", ["/elsewhere", "/elsewhere307"])
async def test_no_token_on_a_cross_origin_redirect(apis, path):
    """Following a redirect to another origin: the request arrives there without the token."""
    first, second, factory = apis
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice", followRedirects=True)
    assert await get(agent, first.base + path) == (200, b"landed")
    assert first.seen[0][1] == f"Bearer {FIRST}".encode()
    assert second.seen == [(b"/landing", None, b"")]


@pytest_twisted.ensureDeferred
async def test_same_origin_redirect_keeps_the_token(apis):
    """A redirect within the origin keeps the token."""
    first, _, factory = apis
    agent = AuthorizedAgent(factory.agent(), Tokens(), "alice", followRedirects=True)
    assert (await get(agent, first.base + "/here"))[0] == 200
    assert [auth for _, auth, _ in first.seen] == [f"Bearer {FIRST}".encode()] * 2


@pytest_twisted.ensureDeferred
async def test_no_token_in_the_log(apis):
    """Refreshing, redirecting and failing: no token value in any log event."""
    first, _, factory = apis
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        agent = AuthorizedAgent(factory.agent(), Tokens(), "alice", followRedirects=True)
        await get(agent, first.base + "/expiring")
        await get(agent, first.base + "/elsewhere")
        await get(agent, first.base + "/graph401")
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("refused the access token" in e.get("log_format", "") for e in events)
    text = repr(events)
    assert FIRST not in text and SECOND not in text


def test_insecure_urls_are_refused():
    """No token over plain http to a remote host, nor to another scheme."""
    for url in ("http://graph.example.com/me", "ftp://x/y", "https:///x"):
        with pytest.raises(InsecureURLError):
            checkURL(url)
    assert checkURL("https://Graph.Microsoft.com/v1.0/me") == ("https", "graph.microsoft.com", 443)


@pytest_twisted.ensureDeferred
async def test_request_to_remote_http_fails_before_asking_for_a_token(apis):
    """A remote http URL fails with InsecureURLError; the token source is not even asked."""
    _, _, factory = apis

    class NoTokens(Tokens):
        def accessToken(self, account):
            raise AssertionError("asked for a token")

    agent = AuthorizedAgent(factory.agent(), NoTokens(), "alice")
    with pytest.raises(InsecureURLError):
        await agent.request(b"GET", b"http://graph.example.com/me")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['Bearer realm="x", error="invalid_token"'], "invalid_token"),
        (["Bearer error=invalid_token"], "invalid_token"),
        (['Bearer realm=""'], ""),
        (['Basic realm="x"', 'Bearer error="insufficient_scope"'], "insufficient_scope"),
        (['Basic realm="x"'], None),
        ([], None),
    ],
)
def test_bearer_error(values, expected):
    """The error of the Bearer challenge, "" when it names none, None without one."""
    assert bearerError(values) == expected


@given(st.text(max_size=80))
def test_bearer_error_never_fails(text):
    """Any header text parses to a string or None."""
    assert bearerError([text]) is None or isinstance(bearerError([text]), str)


class _Immediate:
    """A cooperator for FileBodyProducer that runs its work at once (no global reactor)."""

    def cooperate(self, iterator):
        for _ in iterator:
            pass
        return _Task()


class _Task:
    def whenDone(self):
        return defer.succeed(None)

    def pause(self):
        pass

    def resume(self):
        pass

    def stop(self):
        pass


def test_a_url_without_a_host_is_shown_without_its_secrets():
    """The refusal names the URL as given, never its user:password or its query."""
    from oauthmail.http.authorized import InsecureURLError, checkURL

    with pytest.raises(InsecureURLError) as refused:
        checkURL("https://user:hunter2@/x?access_token=abc")
    assert str(refused.value) == "not a URL with a host: 'https:///x'"
    with pytest.raises(InsecureURLError, match="^not a URL with a host: 'not-a-url'$"):
        checkURL("not-a-url")
