"""A server certificate's problem in words, not service_identity's repr or OpenSSL's codes."""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived

from oauthmail.text import describeFailure, innermost
from oauthmail.tls import certificateProblem

MISMATCH = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("mail.example.com"))])
UNTRUSTED = SSL.Error([("SSL routines", "", "certificate verify failed")])


def test_a_name_mismatch_is_said_in_words() -> None:
    assert certificateProblem(MISMATCH, "mail.example.com") == (
        "not valid for mail.example.com (the certificate names other hosts)"
    )
    assert "VerificationError" in str(MISMATCH)  # what the line used to show


def test_an_untrusted_certificate_and_other_errors() -> None:
    assert certificateProblem(UNTRUSTED, "x") == "not trusted: unknown CA"
    other = SSL.Error([("SSL routines", "", "wrong version number")])
    assert certificateProblem(other, "x") is None
    assert certificateProblem(ConnectionRefusedError(), "x") is None


def test_innermost_finds_the_error_in_twisted_http_wrappers() -> None:
    wrapped = ResponseNeverReceived([Failure(MISMATCH)])
    assert innermost(Failure(wrapped)) is MISMATCH
    assert innermost(ResponseNeverReceived([])).__class__ is ResponseNeverReceived
    assert describeFailure(ResponseNeverReceived([])) == "ResponseNeverReceived"
