"""Obtaining and refreshing OAuth 2.0 tokens: flows, HTTP, refresher, crypto (stored in ``db/``)."""
