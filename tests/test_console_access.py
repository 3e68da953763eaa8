"""Who may use the console: host names, Origin, CSRF tokens, sessions, the login throttle."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from oauthmail.hosts import AllowedHosts, HostName, parseAllowedHost, parseHostPort
from oauthmail.passwords import ScryptParameters, hashPassword
from oauthmail.web.csrf import CSRFToken
from oauthmail.web.guard import ConsoleAccess, formActions
from oauthmail.web.sessions import LoginThrottle, SessionStore

TINY = ScryptParameters(n=16, r=1, p=1)


@pytest.mark.parametrize(
    ("bind", "local", "host", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1", b"127.0.0.1:8025", True),
        ("127.0.0.1", "127.0.0.1", b"localhost:8025", True),
        ("127.0.0.1", "127.0.0.1", b"LocalHost:8025", True),
        ("127.0.0.1", "127.0.0.1", b"evil.example:8025", False),
        ("127.0.0.1", "127.0.0.1", b"evil.localhost.example:8025", False),
        ("127.0.0.1", "127.0.0.1", b"127.0.0.1:8026", False),
        ("127.0.0.1", "127.0.0.1", b"localhost", False),  # port 80, not ours
        ("127.0.0.1", "127.0.0.1", b"[::1]:8025", False),  # not the address it came in on
        ("127.0.0.1", "127.0.0.1", b"", False),
        ("127.0.0.1", "127.0.0.1", None, False),
        ("127.0.0.1", "127.0.0.1", b"127.0.0.1:8025:1", False),
        ("127.0.0.1", "127.0.0.1", b"127.0.0.1@evil.example:8025", False),
        ("127.0.0.1", "127.0.0.1", "lo\u0441alhost:8025".encode(), False),
        ("::1", "::1", b"[::1]:8025", True),
        ("::1", "::1", b"[0:0:0:0:0:0:0:1]:8025", True),
        ("::1", "::1", b"localhost:8025", True),
        ("0.0.0.0", "192.0.2.5", b"192.0.2.5:8025", True),  # noqa: S104 - a wildcard bind
        ("0.0.0.0", "192.0.2.5", b"localhost:8025", False),  # noqa: S104
        ("0.0.0.0", "127.0.0.1", b"localhost:8025", True),  # noqa: S104 - came over loopback
        ("0.0.0.0", "::ffff:192.0.2.5", b"192.0.2.5:8025", True),  # noqa: S104
        ("192.0.2.5", "192.0.2.5", b"console.example.com:8025", False),
    ],
)
def test_host_header_must_name_the_console(bind, local, host, allowed) -> None:
    """Only the local address with its port (and localhost over loopback) pass the Host check."""
    assert AllowedHosts(bind).allowsHost(host, local, 8025) is allowed


def test_listed_names_match_any_port_or_their_own() -> None:
    """An allowed_hosts entry without a port matches every port; with one, only that port."""
    hosts = AllowedHosts(
        "127.0.0.1", ["Console.Example.com", "proxy.example:8443", "[2001:db8::1]"]
    )
    assert hosts.allowsHost(b"console.example.com", "127.0.0.1", 8025)
    assert hosts.allowsHost(b"console.example.com:9999", "127.0.0.1", 8025)
    assert hosts.allowsHost(b"proxy.example:8443", "127.0.0.1", 8025)
    assert not hosts.allowsHost(b"proxy.example", "127.0.0.1", 8025)
    assert hosts.allowsHost(b"[2001:db8:0::1]", "127.0.0.1", 8025)
    assert not hosts.allowsHost(b"evil.console.example.com", "127.0.0.1", 8025)
    assert hosts.allowsHost(b"proxy.example", "127.0.0.1", 8025, secure=False) is False


@pytest.mark.parametrize(
    "entry", ["https://console.example.com", "console.example.com/", "a b", "", "[::1", "x:0"]
)
def test_malformed_allowed_host_says_what_to_write(entry) -> None:
    """A malformed web.allowed_hosts entry is refused with the forms that work."""
    with pytest.raises(ValueError, match="name:port"):
        parseAllowedHost(entry)
    with pytest.raises(ValueError):
        ConsoleAccess(allowed_hosts=(entry,))


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (b"http://127.0.0.1:8025", True),
        (b"http://localhost:8025", True),
        (b"http://127.0.0.1:8025/some/page?x=1", True),  # a Referer
        (b"https://console.example.com", True),
        (b"null", False),
        (b"http://evil.example:8025", False),
        (b"http://127.0.0.1:8026", False),
        (b"http://127.0.0.1", False),
        (b"http://user@127.0.0.1:8025", False),
        (b"ftp://127.0.0.1:8025", False),
        (b"", False),
        (b"\xff", False),
    ],
)
def test_origin_must_name_the_console(origin, allowed) -> None:
    """A POST's Origin (or Referer) passes only when it names one of the console's hosts."""
    hosts = AllowedHosts("127.0.0.1", ["console.example.com"])
    assert hosts.allowsOrigin(origin, "127.0.0.1", 8025) is allowed


_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)


@given(_names, st.integers(1, 65535))
def test_host_port_round_trips(name: str, port: int) -> None:
    """Any DNS name with a port parses back to itself."""
    parsed = parseHostPort(f"{name}:{port}", None)
    assert parsed == HostName(name, port)
    assert str(parsed) == f"{name}:{port}"
    assert parseHostPort(name.upper(), 80) == HostName(name, 80)


@given(st.text(max_size=80))
def test_host_parser_never_raises(value: str) -> None:
    """Whatever a client sends as Host, the parser answers a name or None, never an error."""
    parsed = parseHostPort(value, 80)
    assert parsed is None or isinstance(parsed, HostName)
    AllowedHosts("127.0.0.1").allowsHost(value.encode("utf-8"), "127.0.0.1", 8025)
    AllowedHosts("127.0.0.1").allowsOrigin(value.encode("utf-8"), "127.0.0.1", 8025)


def test_csrf_tokens_are_per_session() -> None:
    """Each session has its own token; the process token is worth nothing for a session."""
    csrf = CSRFToken()
    assert csrf.check(csrf.value)
    assert csrf.forSession("") == csrf.value
    alice, bob = csrf.forSession("a" * 64), csrf.forSession("b" * 64)
    assert alice != bob != csrf.value
    assert csrf.check(alice, "a" * 64)
    assert not csrf.check(alice, "b" * 64)
    assert not csrf.check(csrf.value, "a" * 64)
    assert not csrf.check(None) and not csrf.check("")
    assert repr(csrf) == "<CSRFToken>"
    assert f"value='{alice}'" in csrf.field("a" * 64)


def test_sessions_expire_end_and_are_capped() -> None:
    """A session lives for its lifetime on the server's clock, ends at logout, oldest go first."""
    clock = Clock()
    sessions = SessionStore(clock, lifetime=100, max_sessions=2)
    first, session = sessions.create()
    assert sessions.find(first) == session
    assert sessions.find(first.encode()) == session
    assert session.key not in first and len(first) >= 43
    assert sessions.find("nope") is None and sessions.find(None) is None
    assert sessions.find(b"\xff") is None
    clock.advance(99)
    assert sessions.find(first) is not None
    clock.advance(1)
    assert sessions.find(first) is None
    a, _ = sessions.create()
    b, session_b = sessions.create()
    c, _ = sessions.create()
    assert sessions.find(a) is None and sessions.find(c) is not None
    sessions.end(session_b)
    assert sessions.find(b) is None
    assert len(sessions) == 1
    with pytest.raises(ValueError):
        SessionStore(clock, lifetime=0)


def test_login_throttle_grows_caps_and_resets_only_on_success() -> None:
    """Each failure from an address makes it wait longer (capped); waiting does not reset it."""
    clock = Clock()
    throttle = LoginThrottle(clock, base=1, cap=16, random=random.Random(1))
    assert throttle.wait("198.51.100.7") == 0
    delays = []
    for _ in range(8):
        throttle.checking("198.51.100.7")
        assert throttle.wait("198.51.100.7") >= 1  # one check at a time per address
        delays.append(throttle.failed("198.51.100.7"))
        assert throttle.wait("198.51.100.7") == pytest.approx(delays[-1])
        assert throttle.wait("203.0.113.9") == 0  # other addresses are not held back
        clock.advance(delays[-1])
        assert throttle.wait("198.51.100.7") == 0
    assert 0.5 <= delays[0] <= 1 and 8 <= delays[-1] <= 16
    assert delays[4] > delays[0]
    throttle.checking("198.51.100.7")
    throttle.succeeded("198.51.100.7")
    throttle.checking("198.51.100.7")
    assert 0.5 <= throttle.failed("198.51.100.7") <= 1


def test_login_throttle_remembers_a_bounded_number_of_addresses() -> None:
    """A flood of guessing addresses cannot grow the throttle's table past its cap."""
    throttle = LoginThrottle(Clock(), max_clients=3)
    for n in range(10):
        throttle.failed(f"192.0.2.{n}")
    assert throttle.wait("192.0.2.0") == 0
    assert throttle.wait("192.0.2.9") > 0
    assert len(throttle._clients) == 3


def test_off_loopback_bind_needs_an_admin_password() -> None:
    """A console bound off loopback without web.admin_password_hash is refused, saying why."""
    with pytest.raises(ValueError, match="admin_password_hash"):
        ConsoleAccess(bind="0.0.0.0")  # noqa: S104
    with pytest.raises(ValueError, match="malformed"):
        ConsoleAccess(bind="0.0.0.0", admin_password_hash="plain-text")  # noqa: S104
    secured = ConsoleAccess(bind="0.0.0.0", admin_password_hash=hashPassword("pw", TINY))  # noqa: S104
    assert secured.login_required
    assert "scrypt" not in repr(secured)
    assert not ConsoleAccess(bind="127.0.0.1").login_required
    assert not ConsoleAccess(bind="::1").login_required
    assert ConsoleAccess(bind="::1", admin_password_hash=hashPassword("pw", TINY)).login_required


def test_form_action_lists_the_providers_origins() -> None:
    """The CSP's form-action names each authorisation endpoint's origin once, nothing else."""
    assert formActions(
        [
            "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://login.microsoftonline.com/other/authorize",
            "http://127.0.0.1:4567/authorize",
            "http://[::1]:4567/authorize",
            None,
            "javascript:alert(1)",
            "https://evil.example;script-src *",
            "http://x:notaport/",
        ]
    ) == (
        "https://login.microsoftonline.com",
        "https://accounts.google.com",
        "http://127.0.0.1:4567",
        "http://[::1]:4567",
    )
