"""Obtaining and keeping OAuth 2.0 tokens: flows, HTTP, refresher, store, crypto."""
