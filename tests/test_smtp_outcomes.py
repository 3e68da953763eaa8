"""The reply classification table (oauthmail.smtp.outcomes): a test per row, and the step rules.

Each example is a reply as the provider documents it (the row's ``source``). A
test checks that every row of ``RULES`` is exercised by some example, so a new
row cannot land without one.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oauthmail.smtp import outcomes
from oauthmail.smtp.esmtp.results import RecipientOutcome
from oauthmail.smtp.outcomes import HOUR, MINUTE, OK, PERMANENT, QUOTA, TEMPORARY, Step

#: (code, text, kind, pause): one documented reply per row of RULES, plus near misses.
EXAMPLES = [
    # Exchange Online daily recipient limit
    (
        554,
        "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException;"
        " Failed to process message due to a permanent exception",
        QUOTA,
        HOUR,
    ),
    # Exchange Online sending mailbox full
    (
        554,
        "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException."
        "MapiExceptionShutoffQuotaExceeded",
        QUOTA,
        HOUR,
    ),
    # Exchange Online / Exchange Server concurrent connections
    (432, "4.3.2 Concurrent connections limit exceeded.", QUOTA, MINUTE),
    (
        421,
        "4.3.2 The maximum number of concurrent server connections has exceeded a limit,"
        " closing transmission channel",
        QUOTA,
        MINUTE,
    ),
    # Gmail daily limits
    (550, "5.4.5 Daily user sending limit exceeded.", QUOTA, HOUR),
    (550, "5.4.5 Daily sending quota exceeded. - gsmtp", QUOTA, HOUR),
    (550, "5.7.1 Daily SMTP relay limit exceeded for customer.", QUOTA, HOUR),
    (450, "4.2.1 Peak SMTP relay limit exceeded for customer.", QUOTA, 5 * MINUTE),
    (452, "4.5.3 Your message has too many recipients.", QUOTA, MINUTE),
    (421, "4.7.0 Try again later, closing connection. (EHLO)", QUOTA, 5 * MINUTE),
    (454, "4.7.0 Too many login attempts, please try again later.", QUOTA, 5 * MINUTE),
    # Microsoft 365 SMTP AUTH off (tenant, mailbox, security defaults, Conditional Access)
    (
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        PERMANENT,
        None,
    ),
    (
        535,
        "5.7.139 Authentication unsuccessful, user is locked by your organization's security"
        " defaults policy.",
        PERMANENT,
        None,
    ),
    (535, "Authentication unsuccessful, SmtpClientAuthentication is disabled", PERMANENT, None),
    # Exchange HVE token about to expire: temporary outside AUTH (a refresh inside AUTH)
    (501, "5.5.127 Authentication unsuccessful, Token will expire soon", TEMPORARY, None),
    (501, "Authentication unsuccessful, token will expire soon", TEMPORARY, None),
    # near misses: the first digit decides
    (550, "5.7.1 Message rejected as spam", PERMANENT, None),
    (550, "5.1.1 The email account that you tried to reach does not exist.", PERMANENT, None),
    (452, "4.2.2 The email account that you tried to reach is over quota.", TEMPORARY, None),
    (421, "4.4.5 Server busy, try again later.", TEMPORARY, None),
    (454, "4.7.0 Temporary authentication failure", TEMPORARY, None),
    (250, "2.0.0 OK SubmissionQuotaExceeded", OK, None),  # rules never touch a success
    (0, "connection lost", TEMPORARY, None),
]


@pytest.mark.parametrize(("code", "text", "kind", "pause"), EXAMPLES)
def test_reply_table_rows(code, text, kind, pause):
    """Each documented provider reply gets its kind and suggested pause."""
    verdict = outcomes.verdict(code, text)
    assert (verdict.kind, verdict.pause) == (kind, pause)
    if kind == QUOTA:
        assert verdict.words  # the console says what happened in plain words


def test_every_rule_has_an_example_and_a_source():
    """No row of RULES is without a documented example above and a source URL."""
    for rule in outcomes.RULES:
        assert rule.source.startswith("https://"), rule
        hit = [
            (code, text)
            for code, text, _, _ in EXAMPLES
            if 400 <= code < 600
            and rule.matches(code, outcomes.enhancedCode(text), text)
            and outcomes._rule(code, text) is rule
        ]
        assert hit, f"no example for {rule}"


def test_quota_replies_keep_the_recipient_queued():
    """A quota refusal is neither ok nor permanent for a recipient: the queue keeps it."""
    r = RecipientOutcome("a@x.test", 550, "5.4.5 Daily user sending limit exceeded.")
    assert r.status == QUOTA
    assert r.status not in (OK, PERMANENT)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (250, OK),
        (354, OK),
        (421, TEMPORARY),
        (454, TEMPORARY),
        (450, TEMPORARY),
        (0, TEMPORARY),
        (-1, TEMPORARY),
        (550, PERMANENT),
        (554, PERMANENT),
    ],
)
def test_reply_classification(code, status):
    """2xx/3xx ok, 4xx and no reply temporary, 5xx permanent."""
    assert outcomes.classify(code) == status


def test_explanations():
    """Known provider replies are explained in plain words; others are not."""
    assert (
        outcomes.explain(535, "5.7.139 Authentication unsuccessful") == outcomes.SMTP_AUTH_DISABLED
    )
    assert outcomes.explain(501, b"5.5.127 Token will expire soon") == outcomes.TOKEN_EXPIRES_SOON
    assert outcomes.explain(550, "5.1.1 unknown") is None
    assert outcomes.enhancedCode("4.7.0 Temporary") == "4.7.0"
    assert outcomes.enhancedCode("hello") is None
    assert "raise refresher.margin" in outcomes.describe(501, "5.5.127 expire")


def test_5_7_139_advice_names_the_causes_and_the_fix():
    """The 5.7.139 words name the causes and both fixes: transport: graph, or enable SMTP AUTH."""
    words = outcomes.describe(535, "5.7.139 Authentication unsuccessful")
    causes = ("tenant", "mailbox", "Security defaults", "Conditional Access")
    for part in (*causes, "enable SMTP AUTH"):
        assert part in words
    assert "API transport" in words
    assert "transport: graph" in words  # the fix oauthmail itself offers


def test_plain_535_without_json_asks_for_refresh():
    """Microsoft's plain 535 5.7.3 (no JSON challenge) still gets one refresh."""
    verdict = outcomes.classifyAuthFailure(535, "5.7.3 Authentication unsuccessful", False)
    assert verdict.action == outcomes.REFRESH
    assert outcomes.classifyAuthFailure(504, "5.5.4 unknown mechanism", False).action == (
        outcomes.PERMANENT
    )


@pytest.mark.parametrize(
    ("code", "text", "rejected", "action"),
    [
        (535, "5.7.139 Authentication unsuccessful", True, outcomes.PERMANENT),
        (501, "5.5.127 Token will expire soon", False, outcomes.REFRESH),
        (454, "4.7.0 Temporary authentication failure", True, outcomes.TEMPORARY),
        (454, "4.7.0 Too many login attempts, please try again later.", False, QUOTA),
        (535, "5.7.8 Username and Password not accepted", False, outcomes.REFRESH),
        (550, "5.7.1 nope", True, outcomes.REFRESH),
        (550, "5.7.1 nope", False, outcomes.PERMANENT),
    ],
)
def test_auth_failure_verdicts(code, text, rejected, action):
    """Authentication failures: quota pauses, 4xx waits, 5.7.139 fails, bad tokens refresh."""
    assert outcomes.classifyAuthFailure(code, text, rejected).action == action


@pytest.mark.parametrize(
    ("step", "code", "kind"),
    [
        (Step.DATA, 354, OK),
        (Step.DATA, 250, TEMPORARY),
        (Step.DATA, 221, TEMPORARY),
        (Step.DATA, 334, TEMPORARY),
        (Step.DATA, 451, TEMPORARY),
        (Step.DATA, 554, PERMANENT),
        (Step.DOT, 250, OK),
        (Step.DOT, 251, OK),
        (Step.DOT, 354, TEMPORARY),
        (Step.DOT, 199, TEMPORARY),
        (Step.DOT, 552, PERMANENT),
        (Step.MAIL, 250, OK),
        (Step.MAIL, 354, TEMPORARY),
        (Step.RCPT, 251, OK),
        (Step.RCPT, 354, TEMPORARY),
        (Step.GREETING, 220, OK),
        (Step.GREETING, 250, TEMPORARY),
        (Step.STARTTLS, 220, OK),
        (Step.STARTTLS, 250, TEMPORARY),
        (Step.AUTH, 235, OK),
    ],
)
def test_only_the_expected_reply_of_a_step_is_ok(step, code, kind):
    """354 alone lets DATA's content out, 2xx alone means sent; other codes are temporary."""
    assert outcomes.forStep(step, code, "x").kind == kind


@given(st.integers(min_value=-5, max_value=999), st.text(max_size=200))
def test_classification_never_raises_and_never_softens_success(code, text):
    """Any code and text get a verdict; a rule never turns a non-2xx/3xx into OK."""
    verdict = outcomes.verdict(code, text)
    assert verdict.kind in (OK, TEMPORARY, PERMANENT, QUOTA)
    if verdict.kind == OK:
        assert 200 <= code < 400
    for step in Step.SUCCESS:
        assert outcomes.forStep(step, code, text).kind in (OK, TEMPORARY, PERMANENT, QUOTA)
    assert len(outcomes.describe(code, text)) <= 600
