"""The console's ``Site``: an access log that never writes a query string.

Twisted's default access log writes every request line in full, and the
OAuth redirect back to ``/callback?code=...&state=...`` carries an
authorization code. This log keeps the method, the path without its query,
and the status; no Referer or User-Agent either.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.server import Site


class ConsoleSite(Site):
    """A ``Site`` with tracebacks hidden and a query-free access log."""

    displayTracebacks = False
    _log = Logger()

    def log(self, request: Any) -> None:
        path = (request.path or b"").decode("ascii", "replace")
        method = (request.method or b"").decode("ascii", "replace")
        self._log.info(
            "console {method} {path} {code}", method=method, path=path, code=request.code
        )
