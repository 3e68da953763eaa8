"""The device authorization grant's endpoints (RFC 8628): the start and the person's page.

``POST /device_authorization`` hands out a device code and a user code;
``GET /device`` is where the person types the user code and approves or
denies. Polling ``/token`` is in ``grants.py``.

Rules: user codes avoid vowels (no words) and the 0/O confusion, and are
matched however people type them (case, dashes); the device flow never
approves itself.
"""

from __future__ import annotations

import html
import secrets
from urllib.parse import urlencode

from twisted.web import server

from oauthmail.testing.oauth.errors import OAuthError
from oauthmail.testing.oauth.http import answerJSON, page, params, requireForm
from oauthmail.testing.oauth.records import (
    DEFAULT_SCOPE,
    DEFAULT_USER,
    DEVICE_CODE_LIFETIME,
    Device,
    digest,
    normaliseUserCode,
)
from oauthmail.testing.oauth.state import Authority
from oauthmail.testing.oauth.token import clientIdOf

__all__ = ["DeviceEndpoint"]

_USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O confusion


class DeviceEndpoint:
    """``POST /device_authorization`` and the ``GET /device`` page."""

    def __init__(self, authority: Authority, verification_uri: str) -> None:
        self.authority = authority
        self.verification_uri = verification_uri

    def renderStart(self, request: server.Request) -> bytes:
        authority = self.authority
        authority.requests["device_authorization"] += 1
        try:
            requireForm(request)
            form = params(request)
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            client = authority.authenticateClient(header, form)
            refused = authority.style.deviceScopeProblem(form.get("scope") or "")
            if refused is not None:
                raise refused
        except OAuthError as e:
            e = authority.shape(e, clientIdOf(request))
            return answerJSON(request, e.status, e.body(), e.headers)
        device_code = secrets.token_urlsafe(32)
        user_code = self.newUserCode()
        device = Device(
            user_code=user_code,
            client_id=client.client_id,
            scope=form.get("scope") or DEFAULT_SCOPE,
            expires_at=authority.now() + DEVICE_CODE_LIFETIME,
            interval=authority.device_interval,
        )
        key = digest(device_code)
        authority.devices[key] = device
        authority.userCodes[normaliseUserCode(user_code)] = key
        body = {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": self.verification_uri,
            "verification_uri_complete": self.verification_uri
            + "?"
            + urlencode({"user_code": user_code}),
            "expires_in": int(DEVICE_CODE_LIFETIME),
            "interval": authority.device_interval,
        }
        return answerJSON(request, 200, body)

    def newUserCode(self) -> str:
        while True:
            raw = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
            if raw not in self.authority.userCodes:
                return f"{raw[:4]}-{raw[4:]}"

    def renderPage(self, request: server.Request) -> bytes:
        authority = self.authority
        authority.requests["device"] += 1
        try:
            query = params(request)
        except OAuthError as e:
            return page(request, 400, "Bad request", e.description)
        user_code = query.get("user_code")
        if not user_code:
            form = (
                '<form method="get" action="/device"><input name="user_code">'
                '<input name="user" value="' + html.escape(DEFAULT_USER) + '">'
                "<button>Continue</button></form>"
            )
            return page(request, 200, "Connect a device", "Enter the code.", form=form)
        try:
            if query.get("action") == "deny":
                authority.denyDevice(user_code)
                return page(request, 200, "Denied", "The device was refused.")
            # the person signed in at the provider (consent_as) approves
            authority.approveDevice(user_code, authority.consent_as or query.get("user"))
        except (KeyError, ValueError):
            return page(request, 400, "Unknown code", "That code is unknown or expired.")
        return page(request, 200, "Approved", "You can return to your device.")
