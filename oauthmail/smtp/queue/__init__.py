"""The durable outbound queue: accepted mail is kept until the provider takes it or refuses it.

Messages live in an :class:`~oauthmail.interfaces.IOutbox` (the SQLite one:
tables ``outbound``, ``outbound_recipients`` and ``outbound_content``, written in one
transaction; the content apart, so that a state change does not rewrite it).
:meth:`OutboundQueue.enqueue` fires only once the outbox says the message is
durable (SQLite: a ``COMMIT`` with ``synchronous = FULL``), so the message is
on disk before the submission server answers ``250``.

Message states::

    queued ──(claimed for a session)──► sending ──(250 after DATA)──► sent
       ▲                                   │
       └──(4xx, network, no answer: backoff)──┘     5xx / max_age ──► failed

Exactly once, as far as SMTP allows:

- A session claims its messages in one write that marks them all
  ``sending`` (and claims more, the same way, when it has sent them and more
  are due). Outcomes are recorded as they come, without the client waiting,
  and merged: the outcomes that arrive while one write is in the database
  go into the next (group commit, :mod:`.writer`). A recipient that got a
  ``250`` is never sent to again; only recipients still ``pending`` are
  retried.
- Claims and outcomes need not be synced (SQLite: WAL, ``synchronous =
  NORMAL``): a killed process keeps them; a power failure may lose those
  written since the last synced commit (every enqueue is one), and such a
  message is simply ``queued`` again. Enqueues are always synced.
- After a crash (or SIGKILL) a ``sending`` message goes back to ``queued``.
  SMTP leaves one window (RFC 1047): "the provider answered ``250`` (or was
  about to) and its outcome was not committed yet". With the default
  ``max_unrecorded = 0`` the client does not send a message's content while
  an earlier outcome is still unwritten, so the window stays one message. A
  connection lost after the end of ``DATA`` but before the reply is the same
  window, and so is a ``421`` there (a relaying server may have passed the
  message on before it closed): the client reports that outcome ``in_doubt``.
- Messages in that window are *in doubt* (``in_doubt_since``). For an account
  whose provider files accepted mail in Sent (``smtp.sent_folder``, on by
  default for Gmail and Microsoft 365), the loop asks an
  :class:`~oauthmail.interfaces.ISentFolder` before it claims anything: a
  message found there (its Message-ID *and* the queue id in the ``Received:``
  line :func:`~oauthmail.mail.trace.stamp` put on it at enqueue) is recorded
  ``sent`` and never sent again; one not found is sent again. While Sent
  cannot be searched the message waits (it is never sent blind) for up to
  ``sent_check_give_up``, then it is sent again: at least once beats at most
  once. For other accounts a message in doubt is simply sent again. Messages
  claimed but not yet tried are in doubt too (a crash cannot tell them
  apart); they are simply not found. Recipients refused at ``RCPT`` are
  recorded (``failed``, or ``deferred`` for ``4xx``) before the content goes
  out, so a copy found in Sent counts only for the accepted ones. A message
  some recipients took in an earlier attempt is not searched for (its earlier
  copy would match): sent again to those still open.

Each account has one delivery loop (never two connections for one account at
once). It is woken by :meth:`enqueue`, by a timer at the next due retry and by
a periodic poll (which also sees messages queued by another process, e.g. the
``oauthmail send`` command). A loop claims the due messages, gets a token,
sends them over one connection and records every recipient's outcome:
``2xx`` sent, ``5xx`` failed for good, ``4xx``/network retried with exponential
backoff and jitter until ``max_age`` (5 days), then failed. A refused token is
refreshed once (``forceRefresh``) and the batch tried once more; a second
refusal puts the account in ``error`` — the messages stay queued and go out
once the account works again. One account's trouble never stops another's.

The rooms: ``service`` (the API and the loops' life cycle), ``loop`` (one
account's runs), ``session`` (one sending session), ``writer`` (outcomes'
group commit), ``doubt`` (the Sent search), ``policy`` (retry, give-up and
bounce rules), ``sender`` (the default :class:`~oauthmail.interfaces.IMessageSender`:
SMTP), ``records`` (the values). No SQL here: storage is the outbox's.
This package's ``__init__`` imports nothing, so that the outboxes can use
``records`` without loading the queue.
"""
