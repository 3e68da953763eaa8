"""The outbound ESMTP client, one module per job; :mod:`oauthmail.smtp.client` is its face.

- :mod:`.reply` — bounded, pure parser of server replies;
- :mod:`.wire` — command and DATA encoding (pure);
- :mod:`.results` — the values the queue sees (messages, outcomes, session errors);
- :mod:`.channel` — the seam between the connection and the conversations;
- :mod:`.session` — greeting, EHLO, STARTTLS, AUTH;
- :mod:`.transaction` — one message's replies and the outcome they add up to (pure);
- :mod:`.pipeline` — MAIL/RCPT/DATA in lock-step or pipelined (RFC 2920);
- :mod:`.protocol` — the connection: framing, deadlines, endings;
- :mod:`.connect` — endpoints, TLS and the session deadline (:func:`sendBatch`).

Only public Twisted APIs are used (``Protocol``, ``ITLSTransport.startTLS``,
endpoints); the reply classification lives in :mod:`oauthmail.smtp.outcomes`.
"""
