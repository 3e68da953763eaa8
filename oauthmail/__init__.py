"""oauthmail: IMAP and SMTP through OAuth 2.0 mail providers, on Twisted."""

__version__ = "0.1.0"
