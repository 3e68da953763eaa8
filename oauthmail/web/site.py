"""The console's ``Site``: bounded request bodies and an access log without query strings.

Twisted's default access log writes every request line in full, and the
OAuth redirect back to ``/callback?code=...&state=...`` carries an
authorization code. This log keeps the method, the path without its query,
and the status; no Referer or User-Agent either.

Twisted keeps a request's whole body (in memory, or a temporary file past
100 kB) before any resource sees it. The console's forms are a few hundred
bytes, so :class:`BoundedRequest` keeps at most :data:`MAX_BODY` bytes of a
body, drops the rest as it arrives, and answers such a request 413 without
running any resource.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request, Site

__all__ = ["MAX_BODY", "BoundedRequest", "ConsoleSite"]

#: The largest request body the console reads (its forms need well under 1 kB).
MAX_BODY = 64 * 1024


class BoundedRequest(Request):
    """A request that keeps at most :data:`MAX_BODY` bytes of its body."""

    bodyTooLarge = False
    _kept = 0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self.bodyTooLarge = length is not None and length > MAX_BODY
        self._kept = 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        self._kept += len(data)
        if self._kept > MAX_BODY:
            self.bodyTooLarge = True
            self.content = io.BytesIO()
            return
        self.content.write(data)

    def process(self) -> None:
        if self.bodyTooLarge:
            self.site = self.channel.site
            self.setResponseCode(413)
            self.setHeader(b"content-type", b"text/plain; charset=utf-8")
            self.setHeader(b"connection", b"close")
            self.write(b"request body too large\n")
            self.finish()
            return
        super().process()


class ConsoleSite(Site):
    """A ``Site`` with tracebacks hidden, bounded bodies and a query-free access log."""

    displayTracebacks = False
    requestFactory = BoundedRequest
    noisy = False  # the port's own "starting on" line says it all
    _log = Logger()

    def log(self, request: Any) -> None:
        path = (request.path or b"").decode("ascii", "replace")
        method = (request.method or b"").decode("ascii", "replace")
        self._log.info(
            "console {method} {path} {code}", method=method, path=path, code=request.code
        )
