"""The ESMTP session with nothing to send: what ``checkLogin`` (``oauthmail test``) runs.

An empty batch opens the session exactly as a sending one does (greeting,
EHLO, AUTH with the token), then says ``QUIT`` at once: no MAIL, no RCPT, no
DATA; a refused AUTH ends it with the same error a sending session reports.
"""

from __future__ import annotations

from esmtp_script import Script

from oauthmail.smtp import outcomes


def test_an_empty_batch_authenticates_then_quits() -> None:
    """After 235 the client sends QUIT and nothing else; the session ends without error."""
    s = Script([])
    assert s.login_() == [b"QUIT"]
    s.say(b"221 2.0.0 bye")
    s.lose()
    assert s.result.error is None and s.result.outcomes == []


def test_a_refused_login_is_the_sessions_error() -> None:
    """535 5.7.139 to AUTH: the session's error says so (permanent, auth), and nothing is sent."""
    s = Script([])
    assert s.say(b"220 mail.test ESMTP") == [b"EHLO client.test"]
    assert s.say(b"250-mail.test", b"250 AUTH XOAUTH2") == [b"AUTH XOAUTH2"]
    s.say(b"334 ")
    sent = s.say(b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled")
    assert sent == [b"QUIT"]
    s.lose()
    error = s.result.error
    assert error is not None and error.auth and error.action == outcomes.PERMANENT
    assert "5.7.139" in error.reason
