"""The Sent search only where ``oauthmail test --send-to-self`` proved it (issue 16 finding 7).

A provider whose Sent copy loses oauthmail's ``Received:`` trace line makes
the search useless: nothing is ever recognised and a message in doubt goes
again anyway, after a wait. So ``sent_folder: auto`` searches only once the
test recorded that the trace line survives; an explicit mailbox name is
searched unless the test found the line lost there; ``none`` never.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from oauthmail.config import AccountConfig, AccountSmtpConfig, ProfileConfig, parseConfig
from oauthmail.service import OAuthMailService
from oauthmail.smtp.queue.sentsearch import decideSentSearch, sentSearches
from oauthmail.testing.memory_store import MemoryTokenStore
from oauthmail.tokens.records import SentProof

PROFILE = ProfileConfig(
    name="g",
    kind="google",
    authorization_endpoint="https://accounts.example/authorize",
    token_endpoint="https://accounts.example/token",
    device_endpoint=None,
    revocation_endpoint=None,
    introspection_endpoint=None,
    client_id="id",
    client_secret=None,
    scopes=("https://mail.google.com/",),
)


def account(sent_folder: str, name: str = "alice") -> AccountConfig:
    smtp = AccountSmtpConfig(sent_folder=sent_folder)
    return AccountConfig(name, f"{name}@example.com", PROFILE, smtp=smtp)


KEPT = SentProof("alice", True, "[Gmail]/Sent Mail", 10.0)
LOST = SentProof("alice", False, "Sent Items", 10.0)


@pytest.mark.parametrize(
    ("folder", "proof", "searches", "words"),
    [
        ("none", None, False, "smtp.sent_folder is none: a message cut off"),
        ("none", KEPT, False, "at least once"),
        ("auto", None, False, "run 'oauthmail test alice --send-to-self' to prove"),
        ("auto", LOST, False, "lost oauthmail's trace line"),
        ("auto", KEPT, True, "'[Gmail]/Sent Mail' keeps oauthmail's trace line"),
        ("Sent", None, True, "searching 'Sent' (smtp.sent_folder)"),
        ("Sent", KEPT, True, "searching 'Sent'"),
        ("Sent", LOST, False, "at least once"),
    ],
)
def test_the_rule(folder, proof, searches, words) -> None:
    """auto needs a proof, a named mailbox needs no disproof, none never searches."""
    decision = decideSentSearch(account(folder), proof)
    assert decision.searches is searches
    assert words in decision.why
    assert decision.why.startswith("alice: ")


def test_an_account_without_smtp_never_searches() -> None:
    """An account that does not send has nothing to search for."""
    receiving = AccountConfig("r", "r@example.com", PROFILE)
    assert not decideSentSearch(receiving, KEPT).searches


@pytest_twisted.ensureDeferred
async def test_decisions_read_the_store() -> None:
    """sentSearches asks the store for each account that wants a search."""
    store = MemoryTokenStore(reactor)
    for name in ("alice", "bob", "carol"):
        await store.ensureAccount(name, "google")
    await store.recordSentProof("alice", True, "Sent")
    await store.recordSentProof("carol", True, "Sent")
    accounts = {
        "alice": account("auto", "alice"),
        "bob": account("auto", "bob"),
        "carol": account("none", "carol"),
    }
    decisions = await sentSearches(store, accounts)
    assert {name: d.searches for name, d in decisions.items()} == {
        "alice": True,
        "bob": False,
        "carol": False,
    }


def _config(tmp_path: Path):
    return parseConfig(
        f"""
profiles:
  gmail:
    provider: google
    client_id: id
    client_secret: s
    token_endpoint: http://127.0.0.1:9/token
    imap: {{host: 127.0.0.1, port: 9, security: implicit, server_name: mail.test}}
    smtp: {{host: 127.0.0.1, port: 9, security: starttls, server_name: mail.test}}
accounts:
  - {{name: proven, address: proven@example.com, profile: gmail, smtp: {{}}}}
  - {{name: unproven, address: unproven@example.com, profile: gmail, smtp: {{}}}}
  - {{name: off, address: off@example.com, profile: gmail, smtp: {{sent_folder: none}}}}
store: {{path: {tmp_path}/var/db.sqlite, key_file: {tmp_path}/var/key}}
web: {{port: 0}}
""",
        "test.yaml",
        {},
    )


@pytest_twisted.ensureDeferred
async def test_the_daemon_searches_sent_only_for_proven_accounts(tmp_path: Path) -> None:
    """The daemon's queue searches Sent for the proven account; the others go at least once."""
    from twisted.logger import formatEvent, globalLogPublisher

    config = _config(tmp_path)
    assert {a.smtp.sent_folder for a in config.accounts[:2]} == {"auto"}
    service = OAuthMailService(config, reactor)
    seen: list[str] = []

    def observer(event: dict) -> None:
        seen.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observer)
    service.startService()
    try:
        await service.whenReady()
        # The first start recorded no proof: nothing is searched yet.
        assert service.queue.policy.sent_check == frozenset()
        await service.store.recordSentProof("proven", True, "[Gmail]/Sent Mail")
    finally:
        globalLogPublisher.removeObserver(observer)
        await service.stopService()
    assert any("unproven: Sent search not proven yet" in line for line in seen)
    service = OAuthMailService(_config(tmp_path), reactor)
    service.startService()
    try:
        await service.whenReady()
        assert service.queue.policy.sent_check == frozenset({"proven"})
    finally:
        await service.stopService()
