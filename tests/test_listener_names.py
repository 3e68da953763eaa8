"""Twisted's "... starting on PORT" lines name what listens, not a class nobody knows."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactor

from oauthmail.control import ControlFactory
from oauthmail.listeners import bindEarly


def test_each_port_is_named_for_what_it_serves() -> None:
    reactor = MemoryReactor()
    _, console = bindEarly(reactor, "web.port", "127.0.0.1", 8025)
    _, submission = bindEarly(reactor, "submission.port", "127.0.0.1", 1587)
    assert console.logPrefix() == "oauthmail console"
    assert submission.logPrefix() == "oauthmail submission server"
    assert ControlFactory(lambda account: None).logPrefix() == "oauthmail control socket"
