"""Outbound HTTP beyond the token endpoints: proxies, authorised API calls, bounded answers.

- :mod:`.proxy`: which proxy (if any) a host is reached through (the profile's
  ``proxy:``, else ``https_proxy``/``no_proxy``); pure values.
- :mod:`.tunnel`: an endpoint that opens a ``CONNECT`` tunnel through a proxy.
- :mod:`.agent`: Twisted ``Agent`` objects that route every ``https`` request
  directly or through a tunnel, with verified TLS; one per proxy setting.
- :mod:`.body`: request bodies that can be sent again, and bounded answers.
- :mod:`.exchange`: one request with a deadline and a size cap, telling a lost
  answer apart from a request that never went out.
- :mod:`.authorized`: :class:`AuthorizedAgent`, an ``IAgent`` that adds one
  account's bearer token (public: ``from oauthmail import AuthorizedAgent``).

Rules a reader must not break: a token goes only over verified TLS (plain
``http`` only to a loopback address) and only to the origin it was meant for;
no header value is ever logged; every answer is read into a bounded buffer.
Nothing here imports :mod:`oauthmail.tokens` (the token side may use
:mod:`.proxy`, :mod:`.tunnel` and :mod:`.agent` without an import circle).
"""
