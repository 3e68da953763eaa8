"""Deliver received mail to Python code named in the configuration.

``object: "package.module:attribute"`` (or the dotted ``package.module.attribute``)
names either an :class:`~oauthmail.interfaces.ISink` provider or a callable
(a class, a factory function) that is called with the
:class:`~oauthmail.config.SinkConfig` and returns one.

The user's sink is wrapped so the watcher can rely on the contract even when
the code does not: a synchronous return or exception becomes a Deferred, and
an exception that is neither sink error counts as temporary (the message stays
on the server and the error is shown) rather than silently skipping mail.
"""

from __future__ import annotations

import importlib

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny
from zope.interface import implementer

from oauthmail.config import SinkConfig
from oauthmail.interfaces import ISink
from oauthmail.sinks.commit import BeforeCommit
from oauthmail.sinks.errors import (
    PermanentSinkError,
    SinkConfigurationError,
    SinkError,
    TemporarySinkError,
    shorten,
)


def resolveObject(spec: str):
    """Import ``module:attribute`` or ``dotted.module.attribute`` and return it."""
    if not spec or not spec.strip():
        raise SinkConfigurationError("python sink: 'object' is empty")
    spec = spec.strip()
    try:
        if ":" in spec:
            moduleName, _, attributes = spec.partition(":")
            found = importlib.import_module(moduleName)
            for attribute in attributes.split("."):
                found = getattr(found, attribute)
            return found
        return namedAny(spec)
    except (ImportError, AttributeError, ValueError) as e:
        raise SinkConfigurationError(
            f"python sink: cannot load {spec!r}: {type(e).__name__}: {shorten(str(e))}"
        ) from None
    except Exception as e:  # a module that fails as it is imported (the user's code)
        raise SinkConfigurationError(
            f"python sink: importing {spec!r} failed: {type(e).__name__}: {shorten(str(e))}"
        ) from None


def sinkObject(spec: str):
    """What ``spec`` names, if it can be a sink: an ``ISink`` provider or a callable.

    A callable is a factory, called with the sink's configuration by
    :func:`loadSink` only (``check-config`` stops here).
    """
    found = resolveObject(spec)
    if not ISink.providedBy(found) and not callable(found):
        raise SinkConfigurationError(
            f"python sink: {spec!r} is neither an ISink provider nor callable"
        )
    return found


def loadSink(config: SinkConfig) -> ISink:
    """The ``ISink`` provider that ``config.object`` names, or a clear error."""
    spec = config.object or ""
    found = sinkObject(spec)
    if not ISink.providedBy(found):
        try:
            found = found(config)
        except Exception as e:
            raise SinkConfigurationError(
                f"python sink: calling {spec!r} failed: {type(e).__name__}: {shorten(str(e))}"
            ) from None
        if not ISink.providedBy(found):
            raise SinkConfigurationError(
                f"python sink: {spec!r} returned {type(found).__name__}, which does not "
                "provide ISink (use @implementer(ISink))"
            )
    return found


@implementer(ISink)
class PythonSink:
    """Wraps the user's ``ISink`` so its failures keep to the sink contract."""

    def __init__(self, inner: ISink, spec: str = "") -> None:
        self.inner = inner
        innerName = getattr(inner, "name", None)
        self.name = f"python:{innerName or spec or type(inner).__name__}"

    @classmethod
    def fromConfig(cls, config: SinkConfig) -> PythonSink:
        """Load ``config.object`` and wrap it."""
        return cls(loadSink(config), config.object or "")

    def deliver(
        self, message: bytes, account: str, folder: str, beforeCommit: BeforeCommit = None
    ) -> defer.Deferred:
        """Hand the message to the user's sink; normalise how it fails.

        ``beforeCommit`` (see ``ISink``) is called before the user's code
        gets the message: what that code makes visible, and when, is its own.
        Its refusal fails the call as it is, not as a sink error.
        """
        if beforeCommit is not None:
            try:
                beforeCommit()
            except Exception:
                return defer.fail()
        d = defer.maybeDeferred(self.inner.deliver, message, account, folder)
        return d.addErrback(self._normalise)

    def _normalise(self, failure: Failure):
        if failure.check(TemporarySinkError, PermanentSinkError):
            return failure
        if failure.check(SinkError):
            raise TemporarySinkError(f"{self.name}: {shorten(str(failure.value))}")
        raise TemporarySinkError(
            f"{self.name}: {failure.type.__name__}: {shorten(str(failure.value))}"
        )
