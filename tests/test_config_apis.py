"""The configuration of the HTTP API work: ``transport``, ``base_url``, ``api_scopes``, ``proxy``.

The refusals are in the broken-file table (``tests/configs/broken/``); these
tests pin what a valid file turns into.
"""

from __future__ import annotations

from oauthmail.config import parseConfig
from oauthmail.config.presets import (
    GMAIL_API_BASE_URL,
    GRAPH_APP_ONLY_SCOPES,
    GRAPH_BASE_URL,
)
from oauthmail.secret import Secret

GRAPH_SCOPES = "[https://graph.microsoft.com/Mail.Send, offline_access]"


def load(text: str):
    return parseConfig(text, "test.yaml", {})


def test_smtp_is_the_default_transport():
    """An account's smtp section without transport sends over SMTP, with no base URL."""
    config = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x}}\n"
        "accounts: [{name: a, address: a@example.com, profile: g, smtp: {}}]\n"
    )
    smtp = config.account("a").smtp
    assert (smtp.transport, smtp.base_url) == ("smtp", None)


def test_graph_on_microsoft_takes_the_graph_url_and_no_sent_search():
    """transport: graph on Microsoft: Graph's URL, sent_folder none (a Graph token has no IMAP)."""
    config = load(
        f"profiles: {{m: {{provider: microsoft, client_id: abc, scopes: {GRAPH_SCOPES}}}}}\n"
        "accounts: [{name: a, address: a@example.com, profile: m, smtp: {transport: graph}}]\n"
    )
    smtp = config.account("a").smtp
    assert (smtp.transport, smtp.base_url, smtp.sent_folder) == ("graph", GRAPH_BASE_URL, "none")


def test_graph_app_only_asks_for_graph_default_scope():
    """An app-only Graph account without its own scopes asks for Graph's .default scope."""
    config = load(
        "profiles: {m: {provider: microsoft, tenant: contoso.example, client_id: abc,"
        " client_secret: s}}\n"
        "accounts: [{name: a, address: a@example.com, profile: m, grant: client_credentials,"
        " smtp: {transport: graph}}]\n"
    )
    assert config.account("a").profile.scopes == GRAPH_APP_ONLY_SCOPES


def test_gmail_api_on_google_keeps_the_sent_search():
    """transport: gmail_api on Google: the Gmail API's URL; Sent is still searched over IMAP."""
    config = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x}}\n"
        "accounts: [{name: a, address: a@example.com, profile: g,"
        " smtp: {transport: gmail_api, base_url: 'https://gmail.example.com/'}}]\n"
    )
    smtp = config.account("a").smtp
    assert smtp.transport == "gmail_api"
    assert smtp.base_url == "https://gmail.example.com"  # the trailing slash is dropped
    assert smtp.sent_folder == "auto"
    default = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x}}\n"
        "accounts: [{name: a, address: a@example.com, profile: g, smtp: {transport: gmail_api}}]\n"
    )
    assert default.account("a").smtp.base_url == GMAIL_API_BASE_URL


def test_generic_api_transport_needs_no_smtp_server():
    """A generic profile without an SMTP server may send through an API at its base_url."""
    config = load(
        "profiles: {p: {provider: generic, client_id: abc, token_endpoint:"
        " 'http://127.0.0.1:9/token', client_secret: s, scopes: [mail]}}\n"
        "accounts: [{name: a, address: a@example.com, profile: p, grant: client_credentials,"
        " smtp: {transport: graph, base_url: 'http://127.0.0.1:8/v1.0'}}]\n"
    )
    account = config.account("a")
    assert account.profile.smtp is None
    assert account.smtp.base_url == "http://127.0.0.1:8/v1.0"


def test_api_scopes_come_after_the_profile_scopes_once():
    """api_scopes are added to what authorisation asks for, after the profile's, without repeats."""
    config = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x}}\n"
        "accounts: [{name: a, address: a@example.com, profile: g, api_scopes:"
        " 'https://www.googleapis.com/auth/contacts.readonly https://mail.google.com/'}]\n"
    )
    account = config.account("a")
    assert account.api_scopes == (
        "https://www.googleapis.com/auth/contacts.readonly",
        "https://mail.google.com/",
    )
    assert account.authorization_scopes == (
        *account.profile.scopes,
        "https://www.googleapis.com/auth/contacts.readonly",
    )
    assert account.authorization_scopes.count("https://mail.google.com/") == 1


def test_proxy_credentials_are_kept_apart_and_hidden():
    """proxy: the URL without its credentials, which become a Secret no repr shows."""
    config = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x,"
        " proxy: 'http://me:p%40ss@proxy.example.com:3128/'}}\naccounts: []\n"
    )
    profile = config.profiles["g"]
    assert profile.proxy == "http://proxy.example.com:3128"
    assert profile.proxy_auth == Secret("me:p@ss")
    assert "p@ss" not in repr(profile)


def test_proxy_none_and_environment():
    """proxy: none turns proxies off; no proxy key follows the environment (None)."""
    config = load(
        "profiles: {g: {provider: google, client_id: abc, client_secret: x, proxy: None},"
        " h: {provider: google, client_id: abc, client_secret: x}}\naccounts: []\n"
    )
    assert config.profiles["g"].proxy == "none"
    assert config.profiles["h"].proxy is None
