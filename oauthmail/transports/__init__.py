"""The outbound queue's senders besides SMTP: Microsoft Graph and the Gmail API.

Each is an :class:`~oauthmail.interfaces.IMessageSender`, so API mail rides the
same durable queue as SMTP mail: the same claims, retries, bounces, in-doubt
rules and Sent search. The rooms:

- :mod:`.recipients`: an API sends to the message's ``To``/``Cc``/``Bcc``, not
  to an envelope; how the queue's envelope is made to hold (pure).
- :mod:`.answers`: what an HTTP answer means for a queued message, in the
  queue's words (``ok``, ``temporary``, ``permanent``, ``quota``, a refused
  token), and ``Retry-After`` (pure).
- :mod:`.session`: :class:`~.session.APISender`, one "session" = the batch sent
  one request at a time, with the queue's ``beforeData`` bound honoured and
  throttling waited out.
- :mod:`.graph`, :mod:`.gmail_api`: the two APIs' request shapes and limits.
- :mod:`.dispatch`: the sender the queue gets, picking per account by
  ``smtp.transport``.

Rules a reader must not break (the same as SMTP's, in HTTP terms):

- Only a ``2xx`` answer to the send request means "sent" for every recipient.
- A request whose body went out in full and whose answer was lost is *in
  doubt* (the provider may have the message), never "not sent".
- A refused token ends the session with ``REFRESH`` (the queue refreshes once
  and sends the rest again); nothing here refreshes by itself.
- ``Retry-After`` is waited out (capped) before the next request for the
  account; a peer cannot make us wait longer than the cap, nor retry faster.
"""
