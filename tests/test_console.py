"""The console tells the operator the state of each account and never a token."""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from oauthmail.config import AccountConfig, Config, ProfileConfig
from oauthmail.secret import Secret
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.text import describeWhen
from oauthmail.tokens.records import TokenSet
from oauthmail.web.console import ConsoleResource, renderStatusPage
from oauthmail.web.status import accountStatus


def _profile(name: str, client_id: str = "cid") -> ProfileConfig:
    return ProfileConfig(
        name=name,
        kind="generic",
        authorization_endpoint="https://auth.example/authorize",
        token_endpoint="https://auth.example/token",
        device_endpoint=None,
        revocation_endpoint=None,
        introspection_endpoint=None,
        client_id=client_id,
        client_secret=Secret("client-secret-xyz"),
        scopes=("mail",),
    )


def _config() -> Config:
    ready = _profile("ready")
    later = _profile("later", client_id="")
    return Config(
        source="test.yaml",
        profiles={"ready": ready, "later": later},
        accounts=(
            AccountConfig(name="helpdesk", address="helpdesk@example.com", profile=ready),
            AccountConfig(name="alerts", address="alerts@example.com", profile=ready),
            AccountConfig(name="gmail", address="<b>x</b>@example.com", profile=later),
        ),
    )


async def _render(resource: ConsoleResource, path: bytes) -> tuple[int, bytes]:
    request = DummyRequest([path] if path else [b""])
    child = resource.getChildWithDefault(path, request)
    finished = request.notifyFinish()
    child.render(request)
    await finished
    return request.responseCode or 200, b"".join(request.written)


@pytest_twisted.ensureDeferred
async def test_status_page_shows_states_and_expiry_never_tokens() -> None:
    """Each account shows its state and token expiry; the token values never appear."""
    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
    await store.putTokens(
        "helpdesk",
        TokenSet(Secret("ACCESS-abc"), clock.seconds() + 3000, Secret("REFRESH-def"), "mail"),
        0,
    )
    await store.setAccountState("helpdesk", "ok")
    await store.setAccountState("alerts", "needs_reauth", "invalid_grant: token revoked")
    status, body = await _render(ConsoleResource(config, store, clock), b"")
    page = body.decode()
    assert status == 200
    assert "in 50 min" in page
    assert "needs re-authorisation" in page
    assert "invalid_grant: token revoked" in page
    assert "not configured" in page
    assert "&lt;b&gt;x&lt;/b&gt;@example.com" in page
    for secret in ("ACCESS-abc", "REFRESH-def", "client-secret-xyz"):
        assert secret not in page


@pytest_twisted.ensureDeferred
async def test_health_is_503_while_an_account_needs_a_person() -> None:
    """/health answers 503 with per-account states when any account needs attention."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
    status, body = await _render(ConsoleResource(config, store, clock), b"health")
    health = json.loads(body)
    assert status == 503
    assert health["status"] == "degraded"
    assert [a["state"] for a in health["accounts"]] == [
        "unauthorised",
        "unauthorised",
        "not_configured",
    ]


@pytest_twisted.ensureDeferred
async def test_health_is_200_when_every_account_is_ok() -> None:
    """/health answers 200 when every configured account is ok."""
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    status, body = await _render(ConsoleResource(config, store, clock), b"health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def test_not_configured_account_says_what_to_do() -> None:
    """An account without a client id is 'not configured' and names the profile to fill in."""
    config = _config()
    status = accountStatus(config.account("gmail"), None, None)
    assert status.state == "not_configured"
    assert "client_id" in status.next_step and "later" in status.next_step


def test_empty_config_page_says_so() -> None:
    """A configuration with no accounts renders a page that says so."""
    assert "No accounts are configured yet." in renderStatusPage([], 0.0)


def test_describe_when_reads_naturally() -> None:
    """Relative times read as a person says them."""
    assert describeWhen(None, 0) == "—"
    assert describeWhen(30, 0) == "in 30 s"
    assert describeWhen(0, 600) == "10 min ago"
    assert describeWhen(7200, 0) == "in 2.0 h"
    assert describeWhen(0, 3 * 86400) == "3.0 days ago"


class _FakeQueue:
    """Just the stats() the console reads from an OutboundQueue."""

    def __init__(self, stats):
        self._stats = stats

    def stats(self):
        from twisted.internet import defer

        return defer.succeed(self._stats)


@pytest_twisted.ensureDeferred
async def test_outbox_shows_depth_age_and_send_errors() -> None:
    """The outbox column shows queue depth, oldest age and the last send error."""
    from oauthmail.smtp.queue.records import QueueStats
    from oauthmail.web.console import LiveParts

    clock = Clock()
    clock.advance(1_800_000_000)
    store = MemoryTokenStore(clock=clock)
    config = _config()
    for account in config.accounts:
        await store.ensureAccount(account.name, account.profile.name)
        await store.setAccountState(account.name, "ok")
    queue = _FakeQueue(
        {
            "helpdesk": QueueStats("helpdesk", 3, 1200.0, 1, "451 4.3.0 try again later"),
            "alerts": QueueStats("alerts", 0, None, 0, None),
        }
    )
    resource = ConsoleResource(config, store, clock, live=LiveParts(queue=queue))
    status, body = await _render(resource, b"")
    page = body.decode()
    assert "3 queued, oldest 20 min ago; 1 failed for good" in page
    assert "451 4.3.0 try again later" in page
    assert "empty" in page
    status, body = await _render(resource, b"health")
    helpdesk = json.loads(body)["accounts"][0]
    assert (helpdesk["queued"], helpdesk["oldest_queued_age"]) == (3, 1200.0)
