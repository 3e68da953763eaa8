"""``oauthmail remove``: revoke at the provider, delete the tokens, report the queued mail.

The CLI runs as a real subprocess against the test provider in this process (see
``test_cli_accounts.py``); the provider's introspection (with
``token_type_hint=refresh_token``) tells whether the refresh token still works.
"""

from __future__ import annotations

import pytest_twisted
from test_cli_accounts import CLIWorld

from oauthmail.db.open import openStores
from oauthmail.removal import DROPPED
from oauthmail.smtp.queue.records import OutboxEntry


def _withRevocation(world: CLIWorld) -> None:
    """Give the profile the provider's revocation endpoint."""
    text = world.path.read_text()
    endpoint = f"    revocation_endpoint: {world.provider.revocation_endpoint}\n"
    world.path.write_text(
        text.replace("    scopes: [mail]\n  later:", f"    scopes: [mail]\n{endpoint}  later:")
    )


async def _queue(world: CLIWorld, account: str, count: int) -> None:
    stores = await openStores(world.config.store, clock=world.reactor, reactor=world.reactor)
    try:
        for n in range(count):
            entry = OutboxEntry(
                f"q{n}",
                account,
                "helpdesk@example.com",
                ("to@example.org",),
                b"Subject: hi\r\n\r\nbody\r\n",
                world.reactor.seconds(),
            )
            await stores.outbox.enqueue(entry)
    finally:
        await stores.close()


async def _statuses(world: CLIWorld, account: str):
    stores = await openStores(world.config.store, clock=world.reactor, reactor=world.reactor)
    try:
        return await stores.outbox.listStatuses(account)
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_remove_revokes_at_the_provider_and_deletes_the_tokens(tmp_path) -> None:
    """After remove the provider's introspection says the refresh token is inactive."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    _withRevocation(world)
    try:
        await world.seed("helpdesk", "ok")
        _, before = await world.stored("helpdesk")
        refresh = before.refresh_token
        assert world.provider.introspect(refresh, "refresh_token")["active"] is True
        code, out, err = await world.run("remove", "helpdesk", "-c", str(world.path))
        assert code == 0, out + err
        assert "helpdesk: the refresh token was revoked at the provider" in out
        assert "helpdesk: its tokens were deleted from the store" in out
        assert world.provider.introspect(refresh, "refresh_token") == {"active": False}
        assert world.provider.introspect(before.access_token)["active"] is False
        record, tokens = await world.stored("helpdesk")
        assert tokens is None
        assert record.state == "unauthorised" and "oauthmail remove" in record.last_error
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_remove_of_an_account_without_tokens_leaves_its_state_alone(tmp_path) -> None:
    """Nothing removed: the account is not said to have had its tokens removed."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    _withRevocation(world)
    try:
        store = await world.openStore()  # as the daemon's first start would
        await store.close()
        code, out, _ = await world.run("remove", "helpdesk", "-c", str(world.path))
        assert code == 0
        assert "helpdesk had no tokens: nothing was revoked or deleted" in out
        record, tokens = await world.stored("helpdesk")
        assert tokens is None
        assert record is None or "oauthmail remove" not in (record.last_error or "")
        assert world.provider.requests["revoke"] == 0
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_remove_with_the_provider_down_deletes_and_says_so(tmp_path) -> None:
    """Provider unreachable: exit 1, the tokens are gone, the revocation did not happen."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    _withRevocation(world)
    try:
        await world.seed("helpdesk", "ok")
        _, before = await world.stored("helpdesk")
        await world.provider.stop()
        code, out, err = await world.run("remove", "helpdesk", "-c", str(world.path))
        assert code == 1, out + err
        assert "the revocation did not happen" in out
        assert "helpdesk: its tokens were deleted from the store" in out
        _, tokens = await world.stored("helpdesk")
        assert tokens is None
        assert world.provider.introspect(before.refresh_token, "refresh_token")["active"] is True
        world.assertNoSecrets()
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_remove_keeps_queued_mail_unless_asked_to_drop_it(tmp_path) -> None:
    """Queued mail is reported and kept; --drop-queue fails it for good, saying why."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    _withRevocation(world)
    try:
        await world.seed("helpdesk", "ok")
        await _queue(world, "helpdesk", 2)
        code, out, _ = await world.run("remove", "helpdesk", "-c", str(world.path))
        assert code == 0
        assert "helpdesk: 2 message(s) still wait in the outbound queue" in out
        assert "--drop-queue" in out
        assert [s.state for s in await _statuses(world, "helpdesk")] == ["queued", "queued"]
        code, out, _ = await world.run("remove", "helpdesk", "--drop-queue", "-c", str(world.path))
        assert code == 0
        assert "helpdesk had no tokens: nothing was revoked or deleted" in out
        assert "helpdesk: 2 queued message(s) dropped: they will not be sent" in out
        statuses = await _statuses(world, "helpdesk")
        assert [s.state for s in statuses] == ["failed", "failed"]
        assert all(DROPPED in (s.recipients[0].text or "") for s in statuses)
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_remove_without_a_revocation_endpoint_says_where_to_revoke(tmp_path) -> None:
    """A profile without revocation_endpoint: tokens deleted, the user told, exit 0."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        await world.seed("helpdesk", "ok")
        code, out, err = await world.run("remove", "helpdesk", "-c", str(world.path))
        assert code == 0, out + err
        assert "names no revocation_endpoint, so the refresh token could not be revoked" in out
        assert world.provider.requests["revoke"] == 0
        _, tokens = await world.stored("helpdesk")
        assert tokens is None
    finally:
        await world.stop()


@pytest_twisted.ensureDeferred
async def test_remove_refuses_an_unknown_account(tmp_path) -> None:
    """An unknown account is bad input: exit 2, one line naming the known accounts."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    try:
        code, _, err = await world.run("remove", "nobody", "-c", str(world.path))
        assert code == 2
        assert "no account named 'nobody'" in err
    finally:
        await world.stop()
