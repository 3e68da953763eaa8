"""The message log: what happened to every message received and sent, and when.

Postfix answers "what happened to that message?" with one log line per event;
oauthmail keeps the same events in its store, so that the console, ``oauthmail
queue`` and ``/health`` can answer it after a restart too. One entry per event
(:class:`~oauthmail.messagelog.records.LogEntry`): a message landed in a sink or
the sink refused it; a message was queued, deferred, sent, failed for good,
bounced. Entries are kept for ``messages.retention`` (30 days by default) and
then swept away a bounded number at a time (:mod:`.sweep`).

Rules a reader must not break:

- Writing the log never slows mail down: the queue and the watcher hand entries
  to a :class:`~oauthmail.messagelog.writer.MessageLogWriter`, which writes them
  later, many per transaction, and drops them (with one warning) rather than hold
  up a delivery or grow without bound. A log entry lost in a crash is a line
  missing from a history, never a message lost.
- Storage is an :class:`~oauthmail.messagelog.interfaces.IMessageLog` (owner ``messages`` in
  :mod:`oauthmail.db`); nothing here writes SQL.
- Entries carry headers' facts (Message-ID, size) and the provider's cleaned
  reply, never a body and never a token.
- ``imap/`` and ``smtp/`` both import from here; this package imports neither.
"""
