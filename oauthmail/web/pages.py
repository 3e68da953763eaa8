"""The console's page skeleton, its one stylesheet, and async rendering.

Rules a reader must not break:

- Every page is built from text the caller has already escaped (``html.escape``) or
  from constants here; provider-, config- and store-supplied text is never put in
  unescaped, because an IdP's ``error_description`` or an account name can hold markup.
- No inline script and no inline style: the Content-Security-Policy (set by
  :mod:`oauthmail.web.guard`) allows styles only from ``/style.css`` (``style-src 'self'``)
  and no script at all. Use a class from :data:`STYLESHEET` instead of ``style=``.
- A page holding a POST form calls :func:`formPage`: its ``Referrer-Policy`` becomes
  ``same-origin``. Under ``no-referrer`` browsers send ``Origin: null`` on the form's POST
  (Fetch, "serializing a request origin"), and the guard could not tell our own forms
  from a sandboxed frame on another site. ``same-origin`` still sends nothing to other
  sites, so a URL that carries a code (``/callback?code=...``) never leaves in a Referer.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

log = Logger()

#: The console's only stylesheet, served at ``/style.css``.
STYLESHEET = b"""\
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
main.narrow { max-width: 42em; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .4em .8em; border-bottom: 1px solid #ddd; vertical-align: top; }
.state { font-weight: bold; }
.ok { color: #17692a; } .needs_reauth, .error, .failed { color: #a11; }
.not_configured, .unauthorised { color: #8a5a00; }
.hint { color: #555; font-size: .9em; }
form.inline { margin: 0; display: inline; }
header { display: flex; align-items: baseline; gap: 1.5em; }
a + code { font-size: 1.4em; letter-spacing: .1em; }  /* the device page's user code */
label { display: block; margin: .6em 0 .2em; }
input[type=password] { font-size: 1.1em; padding: .3em; width: 18em; }
button { font-size: 1em; padding: .3em .9em; white-space: nowrap; }
button.danger { color: #a11; }
h2 { font-size: 1.15em; margin-top: 1.6em; }
pre.headers { background: #f6f6f6; padding: .8em; overflow-x: auto; white-space: pre-wrap; }
table.facts th { width: 10em; }
.outcome { font-weight: bold; }
.delivered, .sent { color: #17692a; } .deferred, .queued, .sending { color: #8a5a00; }
.refused, .bounced { color: #a11; }
td.actions { white-space: nowrap; }
"""


class StylesheetResource(Resource):
    """``GET /style.css``: the same bytes for everyone, cacheable (it shows no state)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/css; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=3600")
        return STYLESHEET


def formPage(request: Any) -> None:
    """Mark the response as a page holding a POST form (see the module docstring)."""
    request.setHeader(b"referrer-policy", b"same-origin")


def htmlDocument(title: str, body: str, refresh: int | None = None) -> str:
    """A whole document around ``body`` (already escaped HTML); ``title`` is escaped here."""
    head = f"<meta http-equiv='refresh' content='{int(refresh)}'>" if refresh else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>{head}"
        # Double quotes: scripts that read the device page take its first href='...'.
        '<link rel="stylesheet" href="/style.css"></head>'
        f"<body>{body}</body></html>"
    )


def page(
    title: str,
    paragraphs: list[str],
    css: str = "",
    refresh: int | None = None,
    back: bool = True,
) -> bytes:
    """A plain page of paragraphs; ``paragraphs`` are HTML the caller has already escaped."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    link = "<p><a href='/'>Back to the console</a></p>" if back else ""
    return htmlDocument(
        f"{title} — oauthmail",
        f"<main class='narrow'><h1 class='{html.escape(css)}'>{html.escape(title)}</h1>"
        f"{body}{link}</main>",
        refresh,
    ).encode()


def renderAsync(request: Any, produce: Callable[[], Awaitable[bytes | None]]) -> Any:
    """Run ``produce`` and write what it returns; a crash is a plain 500, never a traceback."""
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def written(data: bytes | None) -> None:
        if gone:
            return
        if data:
            request.write(data)
        request.finish()

    def failed(failure: Any) -> None:
        log.failure("console page failed", failure)
        if gone:
            return
        request.setResponseCode(500)
        request.write(page("Internal error", ["See the oauthmail log."], "failed"))
        request.finish()

    d = defer.ensureDeferred(produce())  # type: ignore[arg-type]
    d.addCallbacks(written, failed)
    return NOT_DONE_YET
