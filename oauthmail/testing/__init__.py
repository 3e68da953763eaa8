"""Test doubles that are real peers: the test OAuth provider and a Dovecot launcher."""
