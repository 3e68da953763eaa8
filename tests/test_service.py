"""OAuthMailService embedded in a process, as a ``.tac`` or a larger application runs it."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.web.client import Agent, readBody

from oauthmail.config import parseConfig
from oauthmail.service import OAuthMailService


def _config(tmp_path: Path):
    return parseConfig(
        f"""
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: oauthmail-test
    scopes: [mail]
    imap: {{host: 127.0.0.1, port: 9, security: implicit, server_name: mail.test}}
    smtp: {{host: 127.0.0.1, port: 9, security: starttls, server_name: mail.test}}
accounts:
  - name: helpdesk
    address: helpdesk@example.com
    profile: local
    imap: {{folders: [INBOX], sink: {{maildir: {tmp_path}/mail}}}}
    smtp: {{}}
store: {{path: {tmp_path}/var/db.sqlite, key_file: {tmp_path}/var/key}}
web: {{port: 0}}
""",
        "test.yaml",
        {},
    )


@pytest_twisted.ensureDeferred
async def test_service_starts_every_part_and_stops_cleanly(tmp_path: Path) -> None:
    """Ready means store, refresher, watcher, queue and console run; stop closes them all."""
    service = OAuthMailService(_config(tmp_path), reactor)
    service.startService()
    try:
        await service.whenReady()
        assert set(service.watchers) == {"helpdesk"}
        assert service.queue is not None and service.queue.running
        assert service.refresher is not None and service.refresher.running
        port = service.console_port.getHost().port
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/".encode())
        page = (await readBody(response)).decode()
        assert "helpdesk@example.com" in page
        assert "Authorise" in page
        assert service.watchers["helpdesk"].folders[0].state == "unauthorised"
    finally:
        await service.stopService()
    assert service.console_port is None
    assert service.transport is None
    assert not service.queue.running
    assert not service.store.database.isOpen


@pytest_twisted.ensureDeferred
async def test_console_access_log_never_writes_a_query_string(tmp_path: Path) -> None:
    """The OAuth redirect's code in /callback?code=... never reaches the log."""
    from twisted.logger import formatEvent, globalLogPublisher

    seen: list[str] = []

    def observer(event: dict) -> None:
        seen.append(formatEvent(event) or "")
        seen.append(repr(event))

    service = OAuthMailService(_config(tmp_path), reactor)
    service.startService()
    globalLogPublisher.addObserver(observer)
    try:
        await service.whenReady()
        port = service.console_port.getHost().port
        url = f"http://127.0.0.1:{port}/callback?code=SECRET-CODE-123&state=abc"
        response = await Agent(reactor).request(b"GET", url.encode())
        await readBody(response)
    finally:
        globalLogPublisher.removeObserver(observer)
        await service.stopService()
    assert any("console GET /callback" in line for line in seen)
    assert not any("SECRET-CODE-123" in line for line in seen)


@pytest_twisted.ensureDeferred
async def test_on_a_shared_store_folders_are_watched_under_leases(tmp_path: Path, postgres_dsn):
    """On PostgreSQL the node watches the folders it holds leases for, shows it, gives them back."""
    import json

    from twisted.internet import task

    config = parseConfig(
        f"""
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: oauthmail-test
    scopes: [mail]
    imap: {{host: 127.0.0.1, port: 9, security: implicit, server_name: mail.test}}
accounts:
  - name: helpdesk
    address: helpdesk@example.com
    profile: local
    imap: {{folders: [INBOX, Lists], sink: {{maildir: {tmp_path}/mail}}}}
store: {{backend: postgresql, dsn: "{postgres_dsn}", key_file: {tmp_path}/var/key}}
web: {{port: 0}}
cluster: {{node: node-1, lease_renew: 1s, lease_expiry: 6s}}
queue: {{control_socket: {tmp_path}/var/sock}}
""",
        "test.yaml",
        {},
    )
    service = OAuthMailService(config, reactor)
    service.startService()
    try:
        await service.whenReady()
        assert service.keeper is not None and service.queue._claimTend == 1.0
        folders = service.watchers["helpdesk"].folders
        for _ in range(100):  # the second heartbeat takes them (the first registers)
            if all(f.lease is not None for f in folders):
                break
            await task.deferLater(reactor, 0.1, lambda: None)
        assert [f.status()["lease_epoch"] for f in folders] == [1, 1]
        port = service.console_port.getHost().port
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/health".encode())
        health = json.loads(await readBody(response))
        assert health["node"]["node"] == "node-1" and health["node"]["leases"] == 2
        response = await Agent(reactor).request(b"GET", f"http://127.0.0.1:{port}/".encode())
        page = (await readBody(response)).decode()
        assert "node-1 (this node)" in page and "helpdesk/Lists" in page
    finally:
        await service.stopService()
    assert all(f.state == "stopped" for f in folders)
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        owners = conn.execute("SELECT owner FROM leases").fetchall()
        gone = conn.execute("SELECT gone FROM nodes WHERE name = 'node-1'").fetchone()
    assert owners == [(None,), (None,)] and gone == (True,)
