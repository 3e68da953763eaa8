"""The web console: status pages, health JSON."""
