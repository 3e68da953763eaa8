"""The message log's seams: where its entries are stored, and who takes them to be written.

Beside :mod:`oauthmail.interfaces` (which holds every other seam) because they
belong to one feature, the message log; the rules of :mod:`oauthmail.interfaces`
hold here too: every store method returns a Deferred, values are
:mod:`oauthmail.messagelog.records`'. This module imports nothing of oauthmail,
so that every layer may name these seams.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["IMessageLog", "IMessageRecorder"]


class IMessageLog(Interface):
    """What happened to every message in and out (owner ``messages``, :mod:`oauthmail.messagelog`).

    Every method returns a Deferred; values are :mod:`oauthmail.messagelog.records`'.
    """

    def record(entries):
        """Store ``[LogEntry]`` in ONE unsynced transaction; an outbound entry without
        ``message_id``/``size`` takes them from the first entry of its queue id that has them."""

    def recent(account, direction=None, limit=50, before=None):
        """Fire with the account's newest entries (``in``, ``out`` or both); ``before``: an id."""

    def entry(entry_id):
        """Fire with the ``LogEntry`` of that id, or ``None``."""

    def history(account, queue_id):
        """Fire with every entry of one sent message (a queue id), oldest first."""

    def lastMail(accounts):
        """Fire with a ``LastMail`` per account of ``accounts``: its newest delivery and sending."""

    def expire(before, limit):
        """Delete up to ``limit`` entries older than ``before``, oldest first; fire with a count."""


class IMessageRecorder(Interface):
    """Where the queue and the watcher hand their log entries (a buffered writer)."""

    def add(entry):
        """Take one ``LogEntry`` to be written soon; never blocks, never fails."""
