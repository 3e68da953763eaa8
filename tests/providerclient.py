"""HTTP helpers for the tests of the test OAuth provider: one request, one answer.

Shared by ``test_provider*.py``; each request goes through a fresh ``Agent``
over real loopback HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from io import BytesIO
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.internet import reactor
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

REDIRECT = "http://127.0.0.1/callback"


class Answer:
    """One HTTP answer: status, headers and body (JSON decoded when it is JSON)."""

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def json(self):
        return json.loads(self.body)


async def http(method, url, form=None, headers=None, raw=None, content_type=None) -> Answer:
    """Send one request through a fresh Agent and read the whole answer."""
    hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
    producer = None
    if form is not None:
        raw = urlencode(form).encode()
        content_type = content_type or "application/x-www-form-urlencoded"
    if raw is not None:
        producer = FileBodyProducer(BytesIO(raw))
    if content_type:
        hdrs.setRawHeaders("Content-Type", [content_type])
    response = await Agent(reactor).request(method.encode(), url.encode(), hdrs, producer)
    body = await readBody(response)
    return Answer(response.code, response.headers, body)


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def authorize(p, client="pub", challenge=None, method="S256", **extra) -> Answer:
    params = {
        "response_type": "code",
        "client_id": client,
        "redirect_uri": REDIRECT,
        "scope": "mail offline_access",
        "state": "xyz",
        **extra,
    }
    if challenge is not None:
        params.update(code_challenge=challenge, code_challenge_method=method)
    return await http("GET", p.authorization_endpoint + "?" + urlencode(params))


def redirected(answer: Answer) -> dict[str, str]:
    assert answer.status == 302
    location = answer.header("Location")
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def codeTokens(p, **extra) -> dict:
    verifier, challenge = pkce()
    code = redirected(await authorize(p, challenge=challenge, **extra))["code"]
    answer = await http(
        "POST",
        p.token_endpoint,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": "pub",
            "code_verifier": verifier,
        },
    )
    assert answer.status == 200, answer.body
    return answer.json


async def refresh(p, token, client="pub", **extra) -> Answer:
    form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client, **extra}
    return await http("POST", p.token_endpoint, form)


async def introspect(p, token) -> dict:
    answer = await http("POST", p.introspection_endpoint, {"token": token})
    assert answer.status == 200
    return answer.json
