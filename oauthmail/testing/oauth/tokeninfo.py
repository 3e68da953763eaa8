"""What others ask about a token: introspection (RFC 7662), userinfo (OIDC), revocation (RFC 7009).

Introspection is what Dovecot's ``oauth2`` passdb calls to validate the
bearer token of an IMAP login; it accepts the token as Dovecot sends it in
each of its modes (form field, query parameter, ``Authorization: Bearer``).

The userinfo endpoint (OpenID Connect Core 1.0, section 5.3) says who an
access token belongs to, with the same claims as the ID token; it needs the
``openid`` or ``email`` scope, as Google's and Microsoft's do.

Rules: only a live access token is ever ``active``; revocation answers 200
even for a token it does not know, and a revoked refresh token takes its whole
consent with it.
"""

from __future__ import annotations

from twisted.web import server

from oauthmail.testing.oauth.errors import OAuthError
from oauthmail.testing.oauth.http import answerJSON, finishJSON, gone, params
from oauthmail.testing.oauth.records import digest
from oauthmail.testing.oauth.state import Authority
from oauthmail.testing.oauth.waiting import WaitingRoom

__all__ = ["IntrospectionEndpoint", "renderRevoke", "renderUserinfo"]


class IntrospectionEndpoint:
    """``POST``/``GET /introspect``, with its own hang and status faults."""

    def __init__(self, authority: Authority, room: WaitingRoom) -> None:
        self.authority = authority
        self.room = room

    def render(self, request: server.Request) -> int:
        self.authority.requests["introspect"] += 1
        return self.room.admit(request, self.answer, self.authority.faults.introspection_hang)

    def answer(self, request: server.Request) -> None:
        if gone(request):
            return
        status = self.authority.faults.introspection_status
        if status is not None:
            body = {"error": "temporarily_unavailable", "error_description": "injected fault"}
            finishJSON(request, status, body)
            return
        try:
            form = params(request, allow_raw_body=True)
            header = (request.getHeader(b"authorization") or b"").decode("latin-1")
            token = form.get("token")
            if token is None and header[:7].lower() == "bearer ":
                token = header[7:].strip()  # Dovecot's introspection_mode = auth
            if self.authority.require_introspection_auth:
                self.authenticateIntrospector(header, form)
            if not token:
                raise OAuthError("invalid_request", "token is missing")
        except OAuthError as e:
            finishJSON(request, e.status, e.body(), e.headers)
            return
        finishJSON(request, 200, self.authority.introspect(token, form.get("token_type_hint")))

    def authenticateIntrospector(self, header: str, form: dict[str, str]) -> None:
        """Client auth for ``/introspect``: Basic, or the body fields Dovecot sends.

        Dovecot's ``post`` mode appends ``client_id`` and ``client_secret`` to
        the body, empty when they are not configured, and may also send Basic
        credentials taken from the URL; Basic wins and empty fields are ignored.
        """
        creds: dict[str, str] = {}
        if header[:6].lower() != "basic ":
            header = ""
            creds = {k: form[k] for k in ("client_id", "client_secret") if form.get(k)}
        client = self.authority.authenticateClient(header, creds)
        if client.public:
            raise OAuthError("invalid_client", "introspection needs a confidential client", 401)


def renderRevoke(authority: Authority, request: server.Request) -> bytes:
    """``POST /revoke``: 200 for any token (RFC 7009 section 2.2).

    A client that sends credentials (Basic or body fields) is authenticated, and
    may revoke only its own tokens (section 2.1: ``unauthorized_client``
    otherwise); a request without credentials is served, as before. A revoked
    refresh token takes its grant with it, a revoked access token only itself;
    with the Google style either ends the person's whole consent to the client
    (every grant of that user and client).
    """
    authority.requests["revoke"] += 1
    try:
        form = params(request)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is missing")
        header = (request.getHeader(b"authorization") or b"").decode("latin-1")
        client = None
        if header or form.get("client_id"):
            client = authority.authenticateClient(header, form)
        key = digest(token)
        record = authority.refresh.get(key) or authority.access.get(key)
        if record is not None and client is not None and record.grant.client_id != client.client_id:
            raise OAuthError("unauthorized_client", "the token was issued to another client")
    except OAuthError as e:
        return answerJSON(request, e.status, e.body(), e.headers)
    if record is None:
        return answerJSON(request, 200, {})
    refresh = authority.refresh.get(key)
    if refresh is not None:
        refresh.state = "revoked"
        record.grant.revoked = True  # RFC 7009: the grant's tokens go with it
    access = authority.access.get(key)
    if access is not None:
        access.revoked = True
    if authority.style.revokesWholeConsent:
        grant = record.grant
        for each in authority.grants():
            if (each.user, each.client_id) == (grant.user, grant.client_id):
                each.revoked = True
    authority.revocations += 1
    return answerJSON(request, 200, {})


def renderUserinfo(authority: Authority, request: server.Request) -> bytes:
    """``GET``/``POST /userinfo`` with ``Authorization: Bearer``: the person's claims."""
    authority.requests["userinfo"] += 1
    header = (request.getHeader(b"authorization") or b"").decode("latin-1")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    access = authority.liveAccess(token) if token else None
    if access is None or not access.grant.person:
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        body = {"error": "invalid_token", "error_description": "the access token is not valid"}
        return answerJSON(request, 401, body, challenge)
    scopes = access.scope.split()
    if "openid" not in scopes and "email" not in scopes:
        challenge = {"WWW-Authenticate": 'Bearer error="insufficient_scope", scope="openid"'}
        body = {"error": "insufficient_scope", "error_description": "ask for the openid scope"}
        return answerJSON(request, 403, body, challenge)
    claims = authority.style.claims(access.grant.user, access.scope, access.grant.client_id)
    return answerJSON(request, 200, claims)
