"""What receiving and sending share about a message itself (no protocol, no store)."""
