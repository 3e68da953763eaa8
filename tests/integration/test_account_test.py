"""``oauthmail test ACCOUNT [--send-to-self]`` against the test provider and a real Dovecot.

Dovecot plays the provider's IMAP and submission servers; the final hop behind
it files each relayed message in the sender's ``Sent`` (as Gmail and Microsoft
365 do) and delivers it to the recipient's INBOX on the same Dovecot. The test
provider answers in Google's words for a ``google`` profile and in Microsoft's
for a ``microsoft`` one. Dovecot offers no ``X-GM-EXT-1``, so the Gmail-like
run searches with ``HEADER Message-ID`` and says so (the ``X-GM-RAW`` search is
tested against the scripted Gmail-like server, ``tests/test_probe.py``).

The command runs as a child process (``python -m oauthmail.cli``), spawned on
the reactor: Dovecot asks the provider, which runs in this process, about every
token the child presents.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import yaml
from test_cli_accounts import CLIProcess

from oauthmail.config import StoreConfig
from oauthmail.db.open import openTokenStore
from oauthmail.secret import Secret
from oauthmail.testing.finalhop import InboxDeliverer, SentFiler, fileWith
from oauthmail.testing.oauth.styles import styleNamed
from oauthmail.tokens.records import TokenSet

from .conftest import CLIENT_ID, CLIENT_SECRET
from .daemon import server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def providerMail(oauth_provider, final_hop, dovecot):
    """The final hop files in Sent and delivers to INBOX; the provider's style is restored after."""
    filer, deliverer = SentFiler(dovecot), InboxDeliverer(dovecot, ["example.com"])
    before, style = final_hop.fileSent, oauth_provider.style
    final_hop.fileSent = fileWith(filer, deliverer)
    yield
    final_hop.fileSent = before
    oauth_provider.style = style
    filer.close()
    deliverer.close()


class Setup:
    """A configuration file for one account on Dovecot, its store, and the child's runs."""

    def __init__(self, tmp_path: Path, provider: Any, dovecot: Any, kind: str, user: str) -> None:
        self.provider, self.user = provider, user
        self.storeConfig = StoreConfig(
            path=str(tmp_path / "var" / "store.sqlite"), key_file=str(tmp_path / "var" / "key")
        )
        profile = {
            "provider": kind,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "authorization_endpoint": provider.authorization_endpoint,
            "token_endpoint": provider.token_endpoint,
            "scopes": ["mail", "offline_access"] if kind == "microsoft" else ["mail"],
            "imap": server(dovecot, "imap"),
            "smtp": server(dovecot, "smtp"),
        }
        config = {
            "profiles": {kind: profile},
            "accounts": [
                {
                    "name": "probe",
                    "address": user,
                    "profile": kind,
                    "imap": {"folders": ["INBOX"], "sink": {"maildir": str(tmp_path / "mail")}},
                    "smtp": {},
                }
            ],
            "store": {"path": self.storeConfig.path, "key_file": self.storeConfig.key_file},
            "web": {"bind": "127.0.0.1", "port": 8025},
        }
        self.path = tmp_path / "app.yaml"
        self.path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.secrets = [CLIENT_SECRET]

    async def authorise(self) -> None:
        """Tokens for the user, as if they had just consented."""
        answer = self.provider.issueTokens(self.user, CLIENT_ID)
        self.secrets += [answer["access_token"], answer["refresh_token"]]
        reactor = _reactor()
        store = await openTokenStore(self.storeConfig, reactor, reactor, environ={})
        try:
            await store.ensureAccount("probe", "google")
            tokens = TokenSet(
                Secret(answer["access_token"]),
                reactor.seconds() + answer["expires_in"],
                Secret(answer["refresh_token"]),
                answer["scope"],
            )
            await store.putTokens("probe", tokens, 0)
        finally:
            await store.close()

    async def proof(self) -> Any:
        reactor = _reactor()
        store = await openTokenStore(self.storeConfig, reactor, reactor, environ={})
        try:
            return await store.getSentProof("probe")
        finally:
            await store.close()

    async def run(self, *args: str) -> tuple[int, str, str]:
        """``oauthmail test probe ARGS -c FILE`` as a child; its status, stdout and stderr."""
        import os

        child = CLIProcess()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "oauthmail.cli", "test", "probe", *args, "-c", str(self.path)]
        reactor = _reactor()
        reactor.spawnProcess(child, sys.executable, argv, env=env, path=str(ROOT))
        timer = reactor.callLater(120, lambda: child.transport.signalProcess("KILL"))
        code = await child.ended
        if timer.active():
            timer.cancel()
        out, err = child.out.decode(), child.err.decode()
        for secret in self.secrets:
            assert secret not in out + err
        return code, out, err


def steps(out: str) -> dict[str, str]:
    """``{step: status}`` of the printed lines (``fix:`` lines left out)."""
    found = {}
    for line in out.splitlines():
        if line.startswith(" ") or line.endswith("every step passed"):
            continue
        step, status = line[:12].strip(), line[13:20].strip()
        found[step] = status
    return found


@pytest_twisted.ensureDeferred
async def test_gmail_like_on_dovecot_passes_and_records_the_proof(
    tmp_path, oauth_provider, dovecot, providerMail
) -> None:
    """Google-style provider, google profile, Dovecot: every step passes; the trace line is kept."""
    oauth_provider.style = styleNamed("google")
    setup = Setup(tmp_path, oauth_provider, dovecot, "google", "probe-gmail@example.com")
    await setup.authorise()
    code, out, err = await setup.run("--send-to-self", "--wait", "30")
    print(out)
    assert (code, err) == (0, ""), out + err
    assert steps(out) == {
        step: "ok"
        for step in (
            "config",
            "token",
            "imap login",
            "folders",
            "smtp login",
            "send",
            "inbox",
            "sent copy",
            "sent search",
        )
    }
    assert "Sent is 'Sent' (marked \\Sent)" in out
    assert "searched with HEADER Message-ID, as the server offers no X-GM-EXT-1" in out
    assert out.rstrip().endswith("probe: every step passed")
    proof = await setup.proof()
    assert (proof.kept, proof.folder) == (True, "Sent")


@pytest_twisted.ensureDeferred
async def test_exchange_like_on_dovecot_passes_then_fails_naming_the_step(
    tmp_path, oauth_provider, dovecot, providerMail
) -> None:
    """Microsoft style: the logins pass; once revoked, it exits 1 naming the failed steps."""
    oauth_provider.style = styleNamed("microsoft")
    user = "probe-exchange@example.com"
    setup = Setup(tmp_path, oauth_provider, dovecot, "microsoft", user)
    await setup.authorise()
    code, out, err = await setup.run()
    print(out)
    assert (code, err) == (0, ""), out + err
    assert set(steps(out).values()) == {"ok"}
    oauth_provider.revokeUser(user)  # a password change: every token of the user is dead
    code, out, err = await setup.run("--send-to-self", "--wait", "5")
    print(out + err)
    assert code == 1
    # The stored token is not due: Dovecot refuses it, the forced refresh is refused too.
    assert err.strip() == "oauthmail test: probe failed at 'imap login', 'smtp login'", err
    assert "refreshing the refused token failed: needs re-authorisation: AADSTS50173" in out
    assert out.count("fix:    authorise it again: oauthmail authorize probe") == 2
    assert steps(out)["folders"] == steps(out)["send"] == "skipped"
