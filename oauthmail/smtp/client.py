"""The outbound ESMTP client as the queue sees it: send a batch over one OAuth session.

This module is the small public face of :mod:`oauthmail.smtp.esmtp`, where the
client lives as an explicit state machine on public Twisted APIs. Callers (the
outbound queue) import only these names:

- :func:`sendBatch` connects (verified TLS, implicit or STARTTLS), authenticates
  with XOAUTH2 or OAUTHBEARER and sends a batch, pipelined when the server offers
  ``PIPELINING``, reporting one :class:`MessageOutcome` per answered message
  (``onOutcome``) and a :class:`SessionResult`; it never fails except when
  cancelled.
- :func:`checkLogin` opens the same session (TLS, AUTH) and says ``QUIT``
  without sending anything: ``oauthmail test`` proves a login with it.
- :class:`OutgoingMessage`, :class:`MessageOutcome`, :class:`RecipientOutcome`,
  :class:`SessionError`, :class:`SessionResult`: the values it takes and gives.
- :func:`wireData`: a message as it goes out after ``DATA`` (CRLF, dot-stuffed).

The rules that keep mail from being lost (only ``354`` lets content out, only a
``2xx`` to the final dot means sent, bounded replies, per-reply and per-session
deadlines) are stated in the modules that keep them.
"""

from __future__ import annotations

from oauthmail.smtp.esmtp import results
from oauthmail.smtp.esmtp.connect import checkLogin, sendBatch
from oauthmail.smtp.esmtp.results import *  # noqa: F403 - the names are results.__all__
from oauthmail.smtp.esmtp.wire import wireData

__all__ = [*results.__all__, "checkLogin", "sendBatch", "wireData"]
