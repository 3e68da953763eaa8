"""The test provider's command line: ``python -m oauthmail.testing.provider``.

Rule: only the command-line mode owns a reactor (the global one); everything
else takes the reactor it is given.
"""

from __future__ import annotations

import argparse

from oauthmail.testing.oauth.provider import TestOAuthProvider
from oauthmail.testing.oauth.styles import STYLES

__all__ = ["main"]


def _parseArgs(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m oauthmail.testing.provider",
        description="Run the oauthmail test OAuth 2.0 provider on loopback until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=8999, help="TCP port (0: any free one)")
    parser.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--no-rotate", action="store_true", help="keep refresh tokens (Google)")
    parser.add_argument("--access-lifetime", type=float, default=3600.0, metavar="SECONDS")
    parser.add_argument("--refresh-lifetime", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--device-interval", type=int, default=5, metavar="SECONDS")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID[:SECRET]",
        help="register a client (public without SECRET); repeatable; default: test-client",
    )
    parser.add_argument(
        "--redirect-uri", action="append", default=[], help="registered redirect URI (all clients)"
    )
    parser.add_argument(
        "--style",
        choices=sorted(STYLES),
        default="rfc6749",
        help="word the answers like this provider (default: plain RFC 6749)",
    )
    parser.add_argument(
        "--consent-as",
        metavar="USER",
        default=None,
        help="every consent is given by USER, whoever the client asked for",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the provider on the global reactor and print one line describing it."""
    from twisted.internet import reactor  # only the command-line mode owns a reactor

    options = _parseArgs(argv)
    provider = TestOAuthProvider(
        rotate_refresh_tokens=not options.no_rotate,
        access_token_lifetime=options.access_lifetime,
        refresh_token_lifetime=options.refresh_lifetime,
        device_interval=options.device_interval,
        style=options.style,
        consent_as=options.consent_as,
    )
    clients = options.client or ["test-client"]
    for spec in clients:
        client_id, _, secret = spec.partition(":")
        provider.registerClient(client_id, secret or None, options.redirect_uri or None)
    provider.listen(reactor, options.port, options.interface)
    names = ",".join(spec.partition(":")[0] for spec in clients)
    print(
        f"oauthmail test provider at {provider.base_url} "
        f"authorize={provider.authorization_endpoint} token={provider.token_endpoint} "
        f"device={provider.device_endpoint} introspect={provider.introspection_endpoint} "
        f"revoke={provider.revocation_endpoint} verification={provider.verification_uri} "
        f"faults={provider.faults_endpoint} userinfo={provider.userinfo_endpoint} "
        f"jwks={provider.jwks_uri} style={provider.style.name} clients={names}",
        flush=True,
    )
    reactor.run()
    return 0
