"""Where received mail goes: Maildir, command, webhook, Python."""
