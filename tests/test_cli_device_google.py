"""``oauthmail authorize ACCOUNT --device`` refuses Google before asking (issue 16 finding 5).

Google answers ``invalid_scope`` when its device flow is asked for
``https://mail.google.com/``; the configuration loader refuses a Google
``device_code`` account, and the ``--device`` flag must be refused the same
way, with the same sentence, before any request leaves (the preset's device
endpoint is Google's own: a request would go to the internet).
"""

from __future__ import annotations

import pytest_twisted
from test_cli_accounts import CLIWorld

GOOGLE_PROFILE = """\
  gmail-profile:
    provider: google
    client_id: google-client-id
    client_secret: google-client-secret
"""
GOOGLE_ACCOUNT = "  - {name: gmailbox, address: gmailbox@example.com, profile: gmail-profile}\n"


@pytest_twisted.ensureDeferred
async def test_device_flag_on_a_google_account_is_refused_with_the_loader_sentence(tmp_path):
    """`authorize --device` on a Google account: exit 2, Google's reason and the fix, no request."""
    from twisted.internet import reactor

    world = CLIWorld(reactor, tmp_path)
    text = world.path.read_text()
    text = text.replace("profiles:\n", "profiles:\n" + GOOGLE_PROFILE, 1)
    text = text.replace("accounts:\n", "accounts:\n" + GOOGLE_ACCOUNT, 1)
    world.path.write_text(text)
    world.secrets.append("google-client-secret")
    try:
        code, out, err = await world.run("authorize", "gmailbox", "--device", "-c", str(world.path))
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            "--device cannot be used for gmailbox: Google's device flow does not grant the"
            " Gmail scope; use grant: authorization_code"
        ]
        world.assertNoSecrets()
    finally:
        await world.stop()
