"""``oauthmail api ACCOUNT METHOD URL``: one call with the account's token, the body printed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, threads

from oauthmail.config import StoreConfig
from oauthmail.db.open import openTokenStore as openStore
from oauthmail.secret import Secret
from oauthmail.testing.graph import GraphFake
from oauthmail.tokens.records import TokenSet

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cli-api-token-0123456789abcdef"

CONFIG = """\
profiles:
  local:
    provider: generic
    authorization_endpoint: http://127.0.0.1:9/authorize
    token_endpoint: http://127.0.0.1:9/token
    client_id: oauthmail-test
    scopes: [mail]
accounts:
  - {{name: alice, address: alice@example.com, profile: local}}
store: {{path: {tmp}/store.sqlite, key_file: {tmp}/store.key}}
"""


async def configured(tmp_path: Path) -> Path:
    """The configuration file, with a live access token stored for alice."""
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    store = await openStore(
        StoreConfig(path=str(tmp_path / "store.sqlite"), key_file=str(tmp_path / "store.key")),
        clock=reactor,
        reactor=reactor,
        environ={},
    )
    try:
        await store.ensureAccount("alice", "generic")
        tokens = TokenSet(Secret(TOKEN), time.time() + 3600, Secret("refresh"), "mail")
        await store.putTokens("alice", tokens, 0)
    finally:
        await store.close()
    return config


def run(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "oauthmail.cli", "api", "--config", str(config), *args],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest_twisted.ensureDeferred
async def test_api_prints_the_body_of_graph_me(tmp_path):
    """GET {graph}/me with alice's token prints Graph's answer; the token is not printed."""
    graph = GraphFake({TOKEN: "alice@example.com"}.get)
    base = graph.listen(reactor)
    try:
        config = await configured(tmp_path)
        result = await threads.deferToThread(run, config, "alice", "get", base + "/me")
    finally:
        await graph.stop()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mail"] == "alice@example.com"
    assert result.stderr.decode().strip() == "HTTP 200"
    assert TOKEN.encode() not in result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_api_error_answer_exits_1_with_the_body(tmp_path):
    """A non-2xx answer is still printed (here Graph's 400 for a bad body); exit status 1."""
    graph = GraphFake({TOKEN: "alice@example.com"}.get)
    base = graph.listen(reactor)
    try:
        config = await configured(tmp_path)
        url = base + "/users/alice@example.com/sendMail"
        args = ("alice", "POST", url, "--data", "not base64!", "-H", "Content-Type: text/plain")
        result = await threads.deferToThread(run, config, *args)
    finally:
        await graph.stop()
    assert result.returncode == 1
    assert b"ErrorMimeContentInvalidBase64String" in result.stdout
    assert result.stderr.decode().strip() == "HTTP 400"


@pytest_twisted.ensureDeferred
async def test_refused_token_is_refreshed_and_a_failed_refresh_is_one_line(tmp_path):
    """Graph refuses the token: the command refreshes once; the refresh failing is one line."""
    graph = GraphFake({}.get)  # knows no token
    base = graph.listen(reactor)
    try:
        config = await configured(tmp_path)
        result = await threads.deferToThread(run, config, "alice", "GET", base + "/me")
    finally:
        await graph.stop()
    assert result.returncode == 1
    assert len(result.stderr.decode().strip().splitlines()) == 1
    assert b"token endpoint" in result.stderr and TOKEN.encode() not in result.stderr


def test_api_refuses_remote_plain_http_and_an_authorization_header(tmp_path):
    """No token to a remote http URL, and no Authorization header of the user's: exit 2."""
    config = tmp_path / "app.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path))
    result = run(config, "alice", "GET", "http://graph.example.com/v1.0/me")
    assert result.returncode == 2 and b"https" in result.stderr
    result = run(config, "alice", "GET", "https://x.example/", "-H", "Authorization: Bearer x")
    assert result.returncode == 2 and b"Authorization" in result.stderr


@pytest_twisted.ensureDeferred
async def test_bad_requests_and_unreachable_hosts_are_one_named_line(tmp_path):
    """Each was 'unexpected error (X); see the oauthmail log', naming nothing (a CLI has no log)."""
    import socket

    config = await configured(tmp_path)
    cases = [
        (("GE T", "http://127.0.0.1:9/"), "'GE T' is not an HTTP method"),
        (("GET", "http://127.0.0.1:9/a b"), "a space or a control character"),
        (("GET", "http://u:PWCANARY@127.0.0.1:9/"), "carries a user name or password"),
        (("GET", "http://127.0.0.1:9/", "-H", "Bad Name: v"), "is not a header name"),
        (("GET", "http://127.0.0.1:9/", "-H", "X-U: \u2603"), "must be ASCII on one line"),
        (("GET", "http://127.0.0.1:9/", "--data", "@/nonexistent"), "No such file"),
    ]
    for args, said in cases:
        result = await threads.deferToThread(run, config, "alice", *args)
        err = result.stderr.decode()
        assert result.returncode == 2 and said in err and len(err.splitlines()) == 1, err
        assert "PWCANARY" not in err
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nobody listens there now
    result = await threads.deferToThread(run, config, "alice", "GET", f"http://127.0.0.1:{port}/")
    err = result.stderr.decode().strip()
    assert result.returncode == 1
    assert err.startswith(f"oauthmail api: cannot reach 127.0.0.1:{port}")
    assert "refused" in err and len(err.splitlines()) == 1
