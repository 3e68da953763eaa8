"""Receiving mail: IMAP client protocol and the folder watcher."""
